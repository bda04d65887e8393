//! Wakes the log follower when gravity's log directory changes (Linux inotify through
//! `rustix`, safe), so a quiet log costs nothing: no reads until the kernel reports a write,
//! a rename, a creation or a deletion in the directory of the followed file.
//!
//! The directory is watched (not only the file) so that a rotation, a re-creation and writes
//! to a renamed file still in the directory all wake the follower. Events are not parsed:
//! any event means "poll now"; the follower's poll finds out what happened. A watch through
//! `/proc/<pid>/root/<dir>` is a watch on the directory's inode and stays valid when gravity
//! exits.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::inotify::{self, CreateFlags, WatchFlags};
use tokio::io::unix::AsyncFd;

/// An inotify instance watching at most one directory.
pub struct DirWatch {
    fd: AsyncFd<OwnedFd>,
    watched: Option<(PathBuf, i32)>,
}

impl std::fmt::Debug for DirWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirWatch")
            .field("watched", &self.watched.as_ref().map(|(p, _)| p))
            .finish()
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

impl DirWatch {
    /// A new inotify instance (non-blocking, close-on-exec), registered with the runtime.
    /// Must be called inside a Tokio runtime.
    pub fn new() -> io::Result<DirWatch> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK).map_err(errno)?;
        // `AsyncFd::new` is deprecated because a `T: AsRawFd` that does not own its fd can
        // let the fd be closed and reused while registered; an `OwnedFd` owns it for the whole
        // life of the `AsyncFd`, so this use is sound (and the replacement is `unsafe`).
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(DirWatch { fd, watched: None })
    }

    /// The directory watched, if any.
    pub fn watched(&self) -> Option<&Path> {
        self.watched.as_ref().map(|(p, _)| p.as_path())
    }

    /// Watches `dir` (and stops watching the previous directory). Called before every wait:
    /// adding a watch that exists is one cheap syscall that returns the same descriptor, and
    /// a directory deleted and re-created gets a new watch. Errors (the directory does not
    /// exist yet, no permission, the watch limit reached) leave nothing watched.
    pub fn watch(&mut self, dir: &Path) -> io::Result<()> {
        let flags = WatchFlags::MODIFY
            | WatchFlags::CREATE
            | WatchFlags::DELETE
            | WatchFlags::MOVED_FROM
            | WatchFlags::MOVED_TO
            | WatchFlags::ATTRIB
            | WatchFlags::CLOSE_WRITE
            | WatchFlags::DELETE_SELF
            | WatchFlags::MOVE_SELF
            | WatchFlags::ONLYDIR;
        match inotify::add_watch(self.fd.get_ref(), dir, flags) {
            Ok(wd) => {
                if let Some((_, old)) = self.watched.take() {
                    if old != wd {
                        let _ = inotify::remove_watch(self.fd.get_ref(), old);
                    }
                }
                self.watched = Some((dir.to_path_buf(), wd));
                Ok(())
            }
            Err(e) => {
                self.forget();
                Err(errno(e))
            }
        }
    }

    /// Forgets the watched directory (the kernel dropped the watch, e.g. it was deleted).
    pub fn forget(&mut self) {
        if let Some((_, wd)) = self.watched.take() {
            let _ = inotify::remove_watch(self.fd.get_ref(), wd);
        }
    }

    /// Waits until at least one event arrived, then discards every queued event.
    pub async fn changed(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            let mut buf = [0u8; 4096];
            loop {
                match rustix::io::read(self.fd.get_ref(), &mut buf) {
                    Ok(0) => break,
                    Ok(_) => got = true,
                    Err(rustix::io::Errno::AGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(errno(e)),
                }
            }
            if got {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_write_in_the_directory_wakes_and_quiet_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("gravity.log");
        std::fs::write(&log, b"a\n").unwrap();
        let mut w = DirWatch::new().unwrap();
        w.watch(dir.path()).unwrap();
        // Quiet: no wake-up.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.changed())
                .await
                .is_err()
        );
        let l2 = log.clone();
        let writer = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(l2).unwrap();
            f.write_all(b"b\n").unwrap();
        });
        writer.await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), w.changed())
            .await
            .expect("woken by the write")
            .unwrap();
        // A rename wakes it too.
        std::fs::rename(&log, dir.path().join("gravity.log.1")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), w.changed())
            .await
            .expect("woken by the rename")
            .unwrap();
        assert!(w.watch(&dir.path().join("missing")).is_err());
        assert_eq!(w.watched(), None);
    }
}
