//! The process collector: gravity's CPU, memory, fds, threads, state, start time, I/O and
//! context switches, read from `/proc/<pid>` of gravity's pid only (so its cost does not
//! grow with the number of processes on the host).
//!
//! [`parse_process`] is pure: it takes the text of `stat`, `status`, `io`, `limits` and the
//! fd count and builds the families; the shell around it only reads the files. Up/down,
//! restarts and exits are tracked by the process watcher ([`crate::watch`]), which sees
//! every exit within its poll interval, not only at collection time.
//!
//! The same blocking task reads gravity's memory cgroup ([`super::cgroup`]: limit and OOM
//! kills, remembered while gravity is down), the filesystem of its log
//! ([`super::logfs`]: also while gravity is down, a full disk is a reason it stays down),
//! and decides a pending exit ([`crate::collector::exit::tick`]).

use std::path::Path;
use std::sync::{Arc, Mutex};

use procfs::process::Stat;
use procfs::FromRead;

use super::{BoxFuture, CollectError, Collector, Context};
use crate::metrics::Families;

/// Host facts the parse needs.
#[derive(Debug, Clone, Copy)]
pub struct HostInfo {
    /// Clock ticks per second (`getconf CLK_TCK`).
    pub ticks_per_second: u64,
    /// Page size in bytes.
    pub page_size: u64,
    /// Boot time, Unix seconds (`btime` of `/proc/stat`).
    pub boot_time: u64,
}

/// Parses `btime` out of `/proc/stat`.
pub fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit of `Max open files` in `/proc/<pid>/limits` (`unlimited` is infinity).
/// Total: a line of any shape gives `None`, never a panic (procfs' `Limits` parser
/// subtracts past zero on a line of fewer than three fields).
pub fn parse_max_open_files(limits: &str) -> Option<f64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(f64::INFINITY),
        v => v.parse::<u64>().ok().map(|v| v as f64),
    }
}

/// Whether `stat` has the shape procfs' `Stat` parser slices without a bounds check: a pid
/// and a space before the first `(`, and a space and more after the last `)`, which
/// follows it. Anything else made it panic.
fn stat_shape_ok(stat: &str) -> bool {
    let t = stat.trim();
    match (t.find('('), t.rfind(')')) {
        (Some(open), Some(close)) => {
            let b = t.as_bytes();
            // ASCII spaces around, so procfs' byte offsets are character boundaries
            open >= 2
                && close > open
                && close + 2 < t.len()
                && b.get(open - 1) == Some(&b' ')
                && b.get(close + 1) == Some(&b' ')
        }
        _ => false,
    }
}

/// The number after `name` (e.g. `read_bytes:`) on its line of a `key: value` file of
/// `/proc/<pid>` (`io`, `status`). Total, unlike procfs' `Io` parser, which cut a field
/// name's last byte off and panicked on a multi-byte character there.
pub fn proc_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|v| v.trim().parse().ok())
}

/// The raw files of one process.
#[derive(Debug, Default, Clone)]
pub struct ProcFiles {
    /// `stat`.
    pub stat: String,
    /// `status` (optional: only context switches come from it).
    pub status: Option<String>,
    /// `io` (optional: needs the same user or root).
    pub io: Option<String>,
    /// `limits`.
    pub limits: Option<String>,
    /// Entries in `fd/` (None if not readable).
    pub fd_count: Option<u64>,
}

/// The states a process can be in, always all exported so that `state` has a stable set of series.
pub const STATES: [(char, &str); 7] = [
    ('R', "running"),
    ('S', "sleeping"),
    ('D', "disk_sleep"),
    ('Z', "zombie"),
    ('T', "stopped"),
    ('t', "tracing_stop"),
    ('I', "idle"),
];

pub use crate::state::ProcessFigures;

/// Reads the process figures from the files (pure).
pub fn read_figures(files: &ProcFiles, host: &HostInfo) -> Result<ProcessFigures, CollectError> {
    if !stat_shape_ok(&files.stat) {
        return Err(CollectError::Invalid(
            "stat: no `pid (comm) state` at its start".to_string(),
        ));
    }
    let stat = Stat::from_read(files.stat.as_bytes())
        .map_err(|e| CollectError::Invalid(format!("stat: {e}")))?;
    let tps = host.ticks_per_second.max(1) as f64;
    let io_bytes = files.io.as_deref().and_then(|io| {
        Some((
            proc_field(io, "read_bytes:")? as f64,
            proc_field(io, "write_bytes:")? as f64,
        ))
    });
    let switch = |field: &str| {
        files
            .status
            .as_deref()
            .and_then(|st| proc_field(st, field))
            .map(|v| v as f64)
    };
    Ok(ProcessFigures {
        cpu_seconds: (stat.utime as f64 + stat.stime as f64) / tps,
        resident_bytes: stat.rss as f64 * host.page_size as f64,
        virtual_bytes: stat.vsize as f64,
        threads: stat.num_threads as f64,
        start_time_seconds: host.boot_time as f64 + stat.starttime as f64 / tps,
        state: stat.state,
        open_fds: files.fd_count.map(|n| n as f64),
        max_fds: files.limits.as_deref().and_then(parse_max_open_files),
        io_bytes,
        context_switches: [
            switch("voluntary_ctxt_switches:"),
            switch("nonvoluntary_ctxt_switches:"),
        ],
    })
}

/// Builds the process families (pure): [`read_figures`] rendered by [`process_families`].
pub fn parse_process(
    files: &ProcFiles,
    host: &HostInfo,
    pipeline: &str,
) -> Result<Families, CollectError> {
    read_figures(files, host).map(|fig| process_families(&fig, pipeline))
}

/// The families of the process figures (a view of the typed state).
pub fn process_families(fig: &ProcessFigures, pipeline: &str) -> Families {
    let p = [("pipeline", pipeline)];
    let mut f = Families::new();
    f.counter(
        "gravity_process_cpu_seconds_total",
        "User and system CPU time gravity has used, in seconds.",
        &p,
        fig.cpu_seconds,
    );
    f.gauge(
        "gravity_process_resident_memory_bytes",
        "gravity's resident memory size in bytes.",
        &p,
        fig.resident_bytes,
    );
    f.gauge(
        "gravity_process_virtual_memory_bytes",
        "gravity's virtual memory size in bytes.",
        &p,
        fig.virtual_bytes,
    );
    f.gauge(
        "gravity_process_threads",
        "Number of OS threads in gravity.",
        &p,
        fig.threads,
    );
    f.gauge(
        "gravity_process_start_time_seconds",
        "When gravity started, Unix time in seconds.",
        &p,
        fig.start_time_seconds,
    );
    for (c, name) in STATES {
        f.gauge(
            "gravity_process_state",
            "1 for gravity's current process state (running, sleeping, disk_sleep, zombie, stopped, tracing_stop, idle), else 0.",
            &[("pipeline", pipeline), ("state", name)],
            if fig.state == c { 1.0 } else { 0.0 },
        );
    }
    if let Some(n) = fig.open_fds {
        f.gauge(
            "gravity_process_open_fds",
            "Number of open file descriptors of gravity.",
            &p,
            n,
        );
    }
    if let Some(v) = fig.max_fds {
        f.gauge(
            "gravity_process_max_fds",
            "gravity's limit on open file descriptors (soft).",
            &p,
            v,
        );
    }
    if let Some((read, write)) = fig.io_bytes {
        f.counter(
            "gravity_process_io_read_bytes_total",
            "Bytes gravity caused to be read from storage.",
            &p,
            read,
        );
        f.counter(
            "gravity_process_io_write_bytes_total",
            "Bytes gravity caused to be written to storage.",
            &p,
            write,
        );
    }
    for (kind, v) in ["voluntary", "involuntary"]
        .into_iter()
        .zip(fig.context_switches)
    {
        if let Some(v) = v {
            f.counter(
                "gravity_process_context_switches_total",
                "Context switches of gravity, by kind.",
                &[("pipeline", pipeline), ("kind", kind)],
                v,
            );
        }
    }
    f
}

/// Reads the files of `/proc/<pid>` (bounded: each is a few KB).
pub fn read_files(proc_root: &Path, pid: i32) -> Result<ProcFiles, CollectError> {
    let dir = proc_root.join(pid.to_string());
    let stat = std::fs::read_to_string(dir.join("stat"))
        .map_err(|e| CollectError::Unavailable(format!("{}: {e}", dir.join("stat").display())))?;
    let fd_count = std::fs::read_dir(dir.join("fd"))
        .ok()
        .map(|rd| rd.count() as u64);
    Ok(ProcFiles {
        stat,
        status: std::fs::read_to_string(dir.join("status")).ok(),
        io: std::fs::read_to_string(dir.join("io")).ok(),
        limits: std::fs::read_to_string(dir.join("limits")).ok(),
        fd_count,
    })
}

/// Reads host facts (boot time from `<proc_root>/stat`).
pub fn host_info(proc_root: &Path) -> HostInfo {
    let boot_time = std::fs::read_to_string(proc_root.join("stat"))
        .ok()
        .and_then(|s| parse_btime(&s))
        .unwrap_or(0);
    HostInfo {
        ticks_per_second: procfs::ticks_per_second(),
        page_size: procfs::page_size(),
        boot_time,
    }
}

/// The collector. Remembers gravity's cgroup so its OOM kills stay visible while it is down.
#[derive(Debug, Default)]
pub struct ProcessCollector {
    cgroup: Mutex<Option<super::cgroup::CgroupDir>>,
}

impl Collector for ProcessCollector {
    fn name(&self) -> &'static str {
        "process"
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let target = ctx.target();
            let settings = ctx.settings();
            let look = target.process.filter(|l| l.is_alive());
            let root = settings.proc_root.clone();
            let pipeline = target.pipeline.clone();
            let log_path = target.log_path(&root);
            let me = self.clone();
            let ctx2 = ctx.clone();
            let (extra, res) = tokio::task::spawn_blocking(move || {
                crate::collector::exit::tick(&ctx2);
                let mut extra = Families::new();
                if let Some(space) = log_path.as_deref().and_then(super::logfs::statvfs) {
                    extra.extend(super::logfs::families(space, &pipeline));
                }
                let mut remembered = crate::base::lock(&me.cgroup);
                if let Some(l) = look {
                    if let Some(c) = super::cgroup::locate(&root, l.id.pid) {
                        *remembered = Some(c);
                    }
                }
                if let Some(c) = remembered.as_ref() {
                    let m = super::cgroup::read_memory(c);
                    // Only a reading gravity is known to have outlived moves the OOM
                    // baseline: one taken after the kernel killed it must not hide the kill.
                    let outlived = look.is_some_and(|l| {
                        crate::discovery::look(&root, l.id.pid)
                            .is_some_and(|n| n.id == l.id && n.is_alive())
                    });
                    if outlived {
                        ctx2.up
                            .exit
                            .set_oom_watch(m.watch.clone(), std::time::Instant::now());
                    }
                    extra.extend(super::cgroup::families(&m, &pipeline));
                }
                drop(remembered);
                // Down: no process figures (gravity_up says 0). Not a collector failure.
                let res = match look {
                    Some(l) => read_files(&root, l.id.pid)
                        .and_then(|files| read_figures(&files, &host_info(&root)))
                        .map(Some),
                    None => Ok(None),
                };
                (extra, res)
            })
            .await
            .map_err(|_| CollectError::Panicked)?;
            let figures = match res {
                Ok(fig) => fig,
                // It died between the watcher's look and ours: the watcher will report it.
                Err(CollectError::Unavailable(_)) if !ctx.up.process_alive() => None,
                Err(e) => return Err(e),
            };
            let mut f = figures
                .as_ref()
                .map(|fig| process_families(fig, &target.pipeline))
                .unwrap_or_default();
            ctx.state.process.set(figures);
            f.extend(extra);
            Ok(f)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn root() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc"))
    }

    #[test]
    fn parses_fixture_process() {
        let files = read_files(&root(), 4242).unwrap();
        let host = HostInfo {
            ticks_per_second: 100,
            page_size: 4096,
            boot_time: parse_btime(&std::fs::read_to_string(root().join("stat")).unwrap()).unwrap(),
        };
        assert_eq!(host.boot_time, 1763700000);
        let f = parse_process(&files, &host, "p").unwrap();
        let v = |n: &str, l: &[(&str, &str)]| f.value(n, l).unwrap();
        assert_eq!(v("gravity_process_cpu_seconds_total", &[]), 4182.37);
        assert_eq!(
            v("gravity_process_resident_memory_bytes", &[]),
            37324.0 * 4096.0
        );
        assert_eq!(v("gravity_process_virtual_memory_bytes", &[]), 2013708288.0);
        assert_eq!(v("gravity_process_threads", &[]), 23.0);
        assert_eq!(
            v("gravity_process_start_time_seconds", &[]),
            1763700000.0 + 905.12
        );
        assert_eq!(v("gravity_process_state", &[("state", "sleeping")]), 1.0);
        assert_eq!(v("gravity_process_state", &[("state", "running")]), 0.0);
        assert_eq!(v("gravity_process_open_fds", &[]), 5.0);
        assert_eq!(v("gravity_process_max_fds", &[]), 1048576.0);
        assert_eq!(v("gravity_process_io_read_bytes_total", &[]), 1_048_576.0);
        assert_eq!(v("gravity_process_io_write_bytes_total", &[]), 73_400_320.0);
        assert_eq!(
            v(
                "gravity_process_context_switches_total",
                &[("kind", "voluntary")]
            ),
            98765.0
        );
        assert_eq!(
            v(
                "gravity_process_context_switches_total",
                &[("kind", "involuntary")]
            ),
            4321.0
        );
    }

    #[test]
    fn zombie_state_and_missing_optional_files() {
        let files = read_files(&root(), 4343).unwrap();
        assert!(files.io.is_none());
        let host = HostInfo {
            ticks_per_second: 100,
            page_size: 4096,
            boot_time: 0,
        };
        let f = parse_process(&files, &host, "p").unwrap();
        assert_eq!(
            f.value("gravity_process_state", &[("state", "zombie")]),
            Some(1.0)
        );
        assert_eq!(f.value("gravity_process_io_read_bytes_total", &[]), None);
    }

    #[test]
    fn garbage_stat_is_an_error_not_a_panic() {
        let files = ProcFiles {
            stat: "garbage (".into(),
            ..Default::default()
        };
        let host = HostInfo {
            ticks_per_second: 100,
            page_size: 4096,
            boot_time: 0,
        };
        assert!(matches!(
            parse_process(&files, &host, "p"),
            Err(CollectError::Invalid(_))
        ));
        assert!(read_files(&root(), 1_000_000).is_err());
    }
}
