//! The filesystem holding gravity's log: `gravity_log_filesystem_avail_bytes` and
//! `gravity_log_filesystem_size_bytes`, from `statvfs(2)` (through `rustix`, no `unsafe`)
//! of the log file as the exporter reads it (through `/proc/<pid>/root` in a sidecar with
//! a shared pid namespace), or of its directory when the file is not there. A disk-full
//! alert then works in a pod without node_exporter and without guessing the host from
//! `instance`. Read by the process collector in its blocking task, never in a scrape.

use std::path::Path;

use crate::metrics::Families;

/// Space on one filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer can still use (`f_bavail * f_frsize`).
    pub avail: u64,
    /// Size of the filesystem (`f_blocks * f_frsize`).
    pub size: u64,
}

/// Space from raw statvfs fields (pure; saturating, so a bogus filesystem cannot overflow).
pub fn space(frsize: u64, blocks: u64, bavail: u64) -> Space {
    Space {
        avail: bavail.saturating_mul(frsize),
        size: blocks.saturating_mul(frsize),
    }
}

/// statvfs of `path`, or of its parent directory when `path` does not exist.
pub fn statvfs(path: &Path) -> Option<Space> {
    let st = match rustix::fs::statvfs(path) {
        Ok(st) => st,
        Err(_) => rustix::fs::statvfs(path.parent()?).ok()?,
    };
    Some(space(st.f_frsize, st.f_blocks, st.f_bavail))
}

/// The families (pure).
pub fn families(s: Space, pipeline: &str) -> Families {
    let p = [("pipeline", pipeline)];
    let mut f = Families::new();
    f.gauge(
        "gravity_log_filesystem_avail_bytes",
        "Bytes still available to gravity on the filesystem holding its log (statvfs f_bavail).",
        &p,
        s.avail as f64,
    );
    f.gauge(
        "gravity_log_filesystem_size_bytes",
        "Size in bytes of the filesystem holding gravity's log (statvfs f_blocks).",
        &p,
        s.size as f64,
    );
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_multiplies_by_fragment_size_and_saturates() {
        assert_eq!(
            space(4096, 1000, 250),
            Space {
                avail: 1_024_000,
                size: 4_096_000
            }
        );
        assert_eq!(space(u64::MAX, 2, 2).size, u64::MAX);
    }

    #[test]
    fn statvfs_of_a_file_and_of_a_missing_file_in_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("gravity.log");
        std::fs::write(&log, "x\n").unwrap();
        let a = statvfs(&log).unwrap();
        assert!(a.size > 0 && a.avail <= a.size, "{a:?}");
        let b = statvfs(&d.path().join("rotated-away.log")).unwrap();
        assert_eq!(a.size, b.size, "same filesystem through the directory");
        assert!(statvfs(Path::new("/nonexistent-dir-xyz/gravity.log")).is_none());
        let f = families(a, "p");
        assert_eq!(
            f.value("gravity_log_filesystem_size_bytes", &[]),
            Some(a.size as f64)
        );
    }
}
