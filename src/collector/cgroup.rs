//! gravity's memory cgroup: its limit (`gravity_process_memory_limit_bytes`) and the OOM
//! kills in it (`gravity_process_oom_kills_total`), so a memory alert can use the limit of
//! the pod or unit gravity runs in, and an exit can be told apart as `oom_killed`.
//!
//! Where: `/proc/<pid>/cgroup` names gravity's cgroup (`0::/path` on cgroup v2, a line with
//! the `memory` controller on v1). Its files are looked for, first found wins, under
//! 1. the cgroup mount next to `--path.procfs` (`/proc` → `/sys/fs/cgroup`,
//!    `/host/proc` → `/host/sys/fs/cgroup`) plus that path;
//! 2. gravity's own view, `/proc/<pid>/root/sys/fs/cgroup`, plus that path;
//! 3. the root of gravity's own view: in a container with its own cgroup namespace (a
//!    Kubernetes sidecar), gravity's cgroup is the root of what it sees, and the path we
//!    read starts with `/..`, which is never followed.
//!
//! v2: `memory.max` (`max` = unlimited: no limit series), `memory.events` `oom_kill`.
//! v1: `memory.limit_in_bytes` (a value of 2^62 or more = unlimited), `memory.oom_control`
//! `oom_kill` (kernels from 4.13). Parsing is pure and tested on a fixture tree.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use crate::collector::exit::OomWatch;
use crate::metrics::Families;

/// Largest cgroup or `/proc/<pid>/cgroup` file read.
pub const FILE_LIMIT: u64 = 64 * 1024;
/// A v1 limit at or above this is "unlimited" (the kernel writes `PAGE_COUNTER_MAX` pages).
pub const V1_UNLIMITED: u64 = 1 << 62;

/// Reads at most [`FILE_LIMIT`] bytes of a small text file.
pub fn read_small(path: &Path) -> std::io::Result<String> {
    let mut s = String::new();
    std::fs::File::open(path)?
        .take(FILE_LIMIT)
        .read_to_string(&mut s)?;
    Ok(s)
}

/// gravity's cgroup paths from `/proc/<pid>/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupPaths {
    /// The unified (v2) path, from the `0::` line.
    pub v2: Option<String>,
    /// The v1 memory controller's path.
    pub v1_memory: Option<String>,
}

/// Parses `/proc/<pid>/cgroup` (pure).
pub fn parse_proc_cgroup(text: &str) -> CgroupPaths {
    let mut out = CgroupPaths::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" && ctrls.is_empty() {
            out.v2 = Some(path.to_string());
        } else if ctrls.split(',').any(|c| c == "memory") {
            out.v1_memory = Some(path.to_string());
        }
    }
    out
}

/// v2 `memory.max`: `None` when unlimited (`max`) or not a number.
pub fn parse_memory_max(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// v1 `memory.limit_in_bytes`: `None` when unlimited or not a number.
pub fn parse_limit_in_bytes(text: &str) -> Option<u64> {
    text.trim().parse().ok().filter(|v| *v < V1_UNLIMITED)
}

/// `oom_kill N` of v2 `memory.events` or v1 `memory.oom_control`.
pub fn parse_oom_kills(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|v| v.trim().parse().ok())
}

/// The cgroup version found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// Unified hierarchy.
    V2,
    /// Legacy memory controller.
    V1,
}

/// gravity's memory cgroup as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupDir {
    /// The directory of gravity's cgroup.
    pub dir: PathBuf,
    /// Its parent, when it has the same files (the pod's cgroup, a systemd slice).
    pub parent: Option<PathBuf>,
    /// Which hierarchy.
    pub version: Version,
}

impl CgroupDir {
    fn limit_file(&self) -> &'static str {
        match self.version {
            Version::V2 => "memory.max",
            Version::V1 => "memory.limit_in_bytes",
        }
    }

    fn events_file(&self) -> &'static str {
        match self.version {
            Version::V2 => "memory.events",
            Version::V1 => "memory.oom_control",
        }
    }

    /// The OOM-kill files to watch: gravity's cgroup, then its parent.
    pub fn oom_files(&self) -> Vec<PathBuf> {
        std::iter::once(&self.dir)
            .chain(self.parent.as_ref())
            .map(|d| d.join(self.events_file()))
            .collect()
    }
}

/// `rel` below `root`, if it never climbs (`..`).
fn below(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel.trim_start_matches('/'));
    if rel.components().all(|c| matches!(c, Component::Normal(_))) {
        Some(root.join(rel))
    } else {
        None
    }
}

/// The cgroup mount next to the procfs root (`/proc` → `/sys/fs/cgroup`).
pub fn sys_cgroup_root(proc_root: &Path) -> PathBuf {
    proc_root
        .parent()
        .unwrap_or(Path::new("/"))
        .join("sys/fs/cgroup")
}

/// Finds gravity's memory cgroup directory (see the module docs for the order).
pub fn locate(proc_root: &Path, pid: i32) -> Option<CgroupDir> {
    let text = read_small(&proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    let paths = parse_proc_cgroup(&text);
    let own = proc_root.join(pid.to_string()).join("root/sys/fs/cgroup");
    let roots = [sys_cgroup_root(proc_root), own.clone()];
    let tries: [(Version, Option<&String>, &str, &str); 2] = [
        (Version::V2, paths.v2.as_ref(), "", "memory.events"),
        (
            Version::V1,
            paths.v1_memory.as_ref(),
            "memory",
            "memory.limit_in_bytes",
        ),
    ];
    for (version, path, sub, probe) in tries {
        let Some(path) = path else { continue };
        let mut candidates: Vec<(PathBuf, PathBuf)> = roots
            .iter()
            .filter_map(|r| {
                let base = r.join(sub);
                below(&base, path).map(|d| (base, d))
            })
            .collect();
        candidates.push((own.join(sub), own.join(sub)));
        for (base, dir) in candidates {
            if dir.join(probe).is_file() {
                let parent = dir
                    .parent()
                    .filter(|p| p.starts_with(&base) && *p != dir && p.join(probe).is_file())
                    .map(Path::to_path_buf);
                return Some(CgroupDir {
                    dir,
                    parent,
                    version,
                });
            }
        }
    }
    None
}

/// What the cgroup says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// The limit in bytes (`None`: unlimited or unreadable).
    pub limit: Option<u64>,
    /// OOM kills in gravity's cgroup.
    pub oom_kills: Option<u64>,
    /// The files to watch for the next exit, with their counts.
    pub watch: OomWatch,
}

/// Reads the limit and the OOM-kill counts of a located cgroup.
pub fn read_memory(c: &CgroupDir) -> Memory {
    let limit = read_small(&c.dir.join(c.limit_file()))
        .ok()
        .and_then(|t| match c.version {
            Version::V2 => parse_memory_max(&t),
            Version::V1 => parse_limit_in_bytes(&t),
        });
    let files: Vec<(PathBuf, u64)> = c
        .oom_files()
        .into_iter()
        .filter_map(|p| {
            let n = read_small(&p).ok().and_then(|t| parse_oom_kills(&t))?;
            Some((p, n))
        })
        .collect();
    let oom_kills = files
        .first()
        .filter(|(p, _)| p.parent() == Some(c.dir.as_path()))
        .map(|(_, n)| *n);
    Memory {
        limit,
        oom_kills,
        watch: OomWatch { files },
    }
}

/// The families of a cgroup reading (pure).
pub fn families(m: &Memory, pipeline: &str) -> Families {
    let p = [("pipeline", pipeline)];
    let mut f = Families::new();
    if let Some(l) = m.limit {
        f.gauge(
            "gravity_process_memory_limit_bytes",
            "gravity's cgroup memory limit in bytes (cgroup v2 memory.max, v1 memory.limit_in_bytes); absent when unlimited.",
            &p,
            l as f64,
        );
    }
    if let Some(n) = m.oom_kills {
        f.counter(
            "gravity_process_oom_kills_total",
            "Processes the kernel's OOM killer killed in gravity's cgroup (memory.events oom_kill).",
            &p,
            n as f64,
        );
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
    }

    #[test]
    fn parses_proc_cgroup_v1_and_v2() {
        let v2 = parse_proc_cgroup("0::/system.slice/gravity.service\n");
        assert_eq!(v2.v2.as_deref(), Some("/system.slice/gravity.service"));
        assert_eq!(v2.v1_memory, None);
        let v1 = parse_proc_cgroup(
            "12:pids:/docker/abc\n11:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n",
        );
        assert_eq!(v1.v1_memory.as_deref(), Some("/docker/abc"));
        assert_eq!(parse_proc_cgroup("garbage\n"), CgroupPaths::default());
    }

    #[test]
    fn limits_and_oom_kills() {
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("2147483648\n"), Some(2147483648));
        assert_eq!(parse_limit_in_bytes("9223372036854771712\n"), None);
        assert_eq!(parse_limit_in_bytes("1073741824\n"), Some(1073741824));
        let events = "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n";
        assert_eq!(parse_oom_kills(events), Some(2));
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 7\n";
        assert_eq!(parse_oom_kills(v1), Some(7));
        assert_eq!(parse_oom_kills("oom 1\n"), None);
    }

    #[test]
    fn climbing_paths_are_never_followed() {
        assert!(below(Path::new("/sys/fs/cgroup"), "/../../etc").is_none());
        assert_eq!(
            below(Path::new("/r"), "/a/b"),
            Some(PathBuf::from("/r/a/b"))
        );
    }

    #[test]
    fn locates_v2_cgroup_in_fixture_tree() {
        let proc_root = fixtures().join("proc");
        let c = locate(&proc_root, 4242).unwrap();
        assert_eq!(c.version, Version::V2);
        assert!(
            c.dir
                .ends_with("sys/fs/cgroup/system.slice/gravity.service"),
            "{c:?}"
        );
        assert!(c
            .parent
            .as_ref()
            .unwrap()
            .ends_with("sys/fs/cgroup/system.slice"));
        let m = read_memory(&c);
        assert_eq!(m.limit, Some(2147483648));
        assert_eq!(m.oom_kills, Some(1));
        assert_eq!(m.watch.files.len(), 2);
        let f = families(&m, "p");
        assert_eq!(
            f.value("gravity_process_memory_limit_bytes", &[]),
            Some(2147483648.0)
        );
        assert_eq!(f.value("gravity_process_oom_kills_total", &[]), Some(1.0));
    }

    #[test]
    fn namespaced_cgroup_is_read_through_gravitys_root_and_unlimited_is_absent() {
        // 4343's path starts with /.. (another cgroup namespace): its own root is used.
        let proc_root = fixtures().join("proc");
        let c = locate(&proc_root, 4343).unwrap();
        assert!(c.dir.ends_with("4343/root/sys/fs/cgroup"), "{c:?}");
        assert_eq!(c.parent, None);
        let m = read_memory(&c);
        assert_eq!(m.limit, None, "max = unlimited");
        assert_eq!(m.oom_kills, Some(0));
        let f = families(&m, "p");
        assert_eq!(f.value("gravity_process_memory_limit_bytes", &[]), None);
        assert_eq!(f.value("gravity_process_oom_kills_total", &[]), Some(0.0));
        assert!(locate(&proc_root, 1_000_000).is_none());
    }
}
