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
    /// Returns true when the watch is new (another directory or descriptor than before):
    /// whatever changed before it existed raised no event, so the caller looks once more.
    pub fn watch(&mut self, dir: &Path) -> io::Result<bool> {
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
                let mut new = true;
                if let Some((old_dir, old)) = self.watched.take() {
                    if old != wd {
                        let _ = inotify::remove_watch(self.fd.get_ref(), old);
                    } else {
                        new = old_dir != dir;
                    }
                }
                self.watched = Some((dir.to_path_buf(), wd));
                Ok(new)
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

    /// Waits until an event concerns the followed log: a file whose name begins with
    /// `stem` (the log, its rotated siblings `gravity-<time>.log`, `gravity.log.1`), the
    /// directory itself, or a queue overflow. Events about other files in the directory are
    /// read and dropped without waking the follower, so a busy neighbour costs no polls.
    pub async fn changed(&self, stem: &str) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        loop {
            let mut guard = self.fd.readable().await?;
            let mut relevant = false;
            // Bounded: a directory written faster than it is read cannot keep this loop busy.
            for _ in 0..MAX_READS_PER_WAKE {
                match rustix::io::read(self.fd.get_ref(), &mut buf) {
                    Ok(0) => break,
                    Ok(n) => relevant |= concerns(buf.get(..n).unwrap_or_default(), stem),
                    Err(rustix::io::Errno::AGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(e) => return Err(errno(e)),
                }
            }
            if relevant {
                return Ok(());
            }
        }
    }
}

/// At most this many reads of the event queue per wake-up.
const MAX_READS_PER_WAKE: usize = 16;
/// `IN_Q_OVERFLOW`: events were lost.
const IN_Q_OVERFLOW: u32 = 0x4000;

/// Whether a buffer of `struct inotify_event`s holds one about the log: a name beginning with
/// `stem`, an event on the directory itself (no name), or an overflow. Parsed by hand from the
/// bytes (wd, mask, cookie, len, then `len` bytes of NUL-padded name), bounds-checked.
pub fn concerns(mut events: &[u8], stem: &str) -> bool {
    const HEADER: usize = 16;
    let u32_at = |b: &[u8], i: usize| {
        b.get(i..i + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_ne_bytes)
    };
    while events.len() >= HEADER {
        let (Some(mask), Some(len)) = (u32_at(events, 4), u32_at(events, 12)) else {
            return true;
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let Some(name) = events.get(HEADER..HEADER.saturating_add(len)) else {
            return true; // malformed: better poll once
        };
        let name = name.split(|&b| b == 0).next().unwrap_or_default();
        if mask & IN_Q_OVERFLOW != 0 || name.is_empty() || name.starts_with(stem.as_bytes()) {
            return true;
        }
        events = events.get(HEADER.saturating_add(len)..).unwrap_or_default();
    }
    false
}

/// The part of the log's file name that its rotated copies share: up to the first `.`
/// (`gravity.log` → `gravity`, matching `gravity-2026-11-22T14-00-00.000.log` and `gravity.log.1`).
pub fn stem(log: &Path) -> String {
    let name = log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.split('.').next().unwrap_or_default().to_string()
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
        // A neighbour file written in the same directory does not wake the follower.
        std::fs::write(dir.path().join("state.json"), b"{}").unwrap();
        // Quiet: no wake-up.
        assert!(
            tokio::time::timeout(Duration::from_millis(200), w.changed("gravity"))
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
        tokio::time::timeout(Duration::from_secs(10), w.changed("gravity"))
            .await
            .expect("woken by the write")
            .unwrap();
        // A rename wakes it too.
        std::fs::rename(&log, dir.path().join("gravity.log.1")).unwrap();
        tokio::time::timeout(Duration::from_secs(10), w.changed("gravity"))
            .await
            .expect("woken by the rename")
            .unwrap();
        assert!(w.watch(&dir.path().join("missing")).is_err());
        assert_eq!(w.watched(), None);
    }

    #[tokio::test]
    async fn a_new_watch_is_told_apart_from_the_same_one() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let mut w = DirWatch::new().unwrap();
        assert!(w.watch(a.path()).unwrap(), "first watch");
        assert!(!w.watch(a.path()).unwrap(), "the same watch again");
        assert!(w.watch(b.path()).unwrap(), "another directory");
        assert!(!w.watch(b.path()).unwrap());
        // the same directory under another spelling (e.g. /proc/<pid>/root/...)
        let link = a.path().join("b-link");
        std::os::unix::fs::symlink(b.path(), &link).unwrap();
        assert!(w.watch(&link).unwrap(), "another spelling: look once more");
        assert!(!w.watch(&link).unwrap());
    }

    fn event(mask: u32, name: &str) -> Vec<u8> {
        let mut padded = name.as_bytes().to_vec();
        if !padded.is_empty() {
            padded.resize(name.len().div_ceil(16) * 16 + 16, 0);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&1i32.to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&(padded.len() as u32).to_ne_bytes());
        b.extend_from_slice(&padded);
        b
    }

    #[test]
    fn only_events_about_the_log_wake() {
        assert_eq!(stem(Path::new("/var/log/gravity.log")), "gravity");
        let other = event(2, "state.json");
        assert!(!concerns(&other, "gravity"));
        assert!(concerns(
            &[other.clone(), event(2, "gravity.log")].concat(),
            "gravity"
        ));
        assert!(concerns(
            &event(0x100, "gravity-2026-11-22T14-00-00.000.log"),
            "gravity"
        ));
        assert!(
            concerns(&event(0x400, ""), "gravity"),
            "the directory itself"
        );
        assert!(concerns(&event(IN_Q_OVERFLOW, ""), "gravity"));
        // truncated or garbage buffers never panic
        let g = event(2, "gravity.log");
        for n in 0..g.len() {
            let _ = concerns(&g[..n], "gravity");
        }
        assert!(concerns(
            &[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 255, 255, 255, 255],
            "x"
        ));
    }
}
