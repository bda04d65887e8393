//! Finding the gravity process and what it tells about itself.
//!
//! - [`find_process`] picks gravity's pid by pid file, fixed pid, command-line regex, or by
//!   default the process whose executable is named `gravity`. A pid file or a fixed pid
//!   costs one `/proc/<pid>/stat` read; only a regex or the default needs a scan of `/proc`,
//!   and the watcher does that scan only while gravity is not known to be running.
//! - [`parse_go_flags`] reads gravity's command line the way Go's `flag` package does
//!   (`-config x`, `--config x`, `-config=x`, `--config=x`).
//! - [`discover`] turns a pid into a [`Target`]: gravity's HTTP URL, config path, log path
//!   and format, with the config file read for the pipeline name and endpoints. Relative
//!   paths are resolved against the process's cwd, and files are read through
//!   `/proc/<pid>/root` first, so a sidecar container sharing the pid namespace reads the
//!   gravity container's files.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::Uri;

use crate::config::{GravityLogFormat, ProcessSelector, Settings};
use crate::gravity_config::{self, GravityConfig};

/// Why discovery failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The proc filesystem cannot be listed.
    #[error("cannot list {path}: {source}")]
    ProcUnreadable {
        /// The proc root.
        path: PathBuf,
        /// Error.
        source: std::io::Error,
    },
    /// The pid file cannot be read or holds no pid.
    #[error("pid file {path}: {reason}")]
    PidFile {
        /// File.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One process incarnation: a pid plus its start time (a reused pid is a different incarnation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcIdentity {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_ticks: u64,
}

/// A look at one pid: who it is and its state letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcLook {
    /// Identity.
    pub id: ProcIdentity,
    /// State (`R`, `S`, `D`, `Z`, `T`, ...).
    pub state: char,
}

impl ProcLook {
    /// A zombie or dead process counts as down.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Parses `/proc/<pid>/stat` for comm, state and start time (pure; the comm may hold spaces and parentheses).
pub fn parse_stat_brief(text: &str) -> Option<(String, char, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut rest = text.get(close + 1..)?.split_ascii_whitespace();
    let state = rest.next()?.chars().next()?;
    // after state: ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
    // utime stime cutime cstime priority nice num_threads itrealvalue starttime
    let start = rest.nth(18)?.parse().ok()?;
    Some((comm, state, start))
}

/// Looks at one pid: `None` when it does not exist (or cannot be read).
pub fn look(proc_root: &Path, pid: i32) -> Option<ProcLook> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")).ok()?;
    let (_, state, start_ticks) = parse_stat_brief(&text)?;
    Some(ProcLook {
        id: ProcIdentity { pid, start_ticks },
        state,
    })
}

/// The last pid the kernel handed out (the fifth field of `/proc/loadavg`, in the reader's pid
/// namespace): unchanged means no process was created since it was last read (pure parser).
pub fn parse_loadavg_last_pid(text: &str) -> Option<i32> {
    text.split_ascii_whitespace().nth(4)?.parse().ok()
}

/// Reads `/proc/<pid>/cmdline` as arguments (empty for zombies and kernel threads).
pub fn read_cmdline(proc_root: &Path, pid: i32) -> Vec<String> {
    match std::fs::read(proc_root.join(pid.to_string()).join("cmdline")) {
        Ok(bytes) => split_cmdline(&bytes),
        Err(_) => Vec::new(),
    }
}

/// Splits NUL-separated cmdline bytes (lossy UTF-8, at most 4096 arguments).
pub fn split_cmdline(bytes: &[u8]) -> Vec<String> {
    bytes
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .take(4096)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn base_name(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Whether a process looks like gravity for the default selector.
fn default_match(comm: &str, proc_root: &Path, pid: i32) -> bool {
    if comm == "gravity" {
        return true;
    }
    // comm can be changed by the program; argv[0] is the other witness.
    read_cmdline(proc_root, pid)
        .first()
        .is_some_and(|a0| base_name(a0) == "gravity")
}

/// Finds gravity. Returns the best candidate: a live one before a zombie, then the oldest.
pub fn find_process(
    proc_root: &Path,
    selector: &ProcessSelector,
    self_pid: i32,
) -> Result<Option<ProcLook>, DiscoveryError> {
    find_filtered(proc_root, selector, self_pid, None, &mut |_| true)
}

/// A file's identity: device and inode (the same file under two paths, or seen through
/// `/proc/<pid>/root`, is one file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
}

/// The identity of the file at `path`, if it exists.
pub fn file_id(path: &Path) -> Option<FileId> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// The config file a process runs with (its `--config`), as a path readable from here
/// (relative to its cwd, through `/proc/<pid>/root`); `None` without one.
pub fn process_config(proc_root: &Path, pid: i32) -> Option<PathBuf> {
    let args = read_cmdline(proc_root, pid);
    let config = parse_go_flags(args.get(1..).unwrap_or(&[])).config?;
    let cwd = std::fs::read_link(proc_root.join(pid.to_string()).join("cwd")).ok();
    Some(resolve(
        proc_root,
        Some(pid),
        cwd.as_deref(),
        Path::new(&config),
    ))
}

/// Which process belongs to a pipeline when several run on the host: the one running
/// with the pipeline's config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigFilter {
    /// The pipeline's config file.
    pub id: FileId,
    /// A process whose config cannot be told (no `--config`, file unreadable) is not
    /// taken either (several pipelines); otherwise it is (one pipeline).
    pub strict: bool,
}

impl ConfigFilter {
    /// Whether process `pid` runs with this config file.
    pub fn matches(&self, proc_root: &Path, pid: i32) -> bool {
        match process_config(proc_root, pid).and_then(|p| file_id(&p)) {
            Some(id) => id == self.id,
            None => !self.strict,
        }
    }
}

/// Every gravity process of the host the selector matches (live ones only), oldest first,
/// with the config file each runs with, when it can be told.
pub fn list_processes(
    proc_root: &Path,
    selector: &ProcessSelector,
    self_pid: i32,
) -> Result<Vec<(ProcLook, Option<PathBuf>)>, DiscoveryError> {
    let mut found = Vec::new();
    let rd = std::fs::read_dir(proc_root).map_err(|source| DiscoveryError::ProcUnreadable {
        path: proc_root.to_path_buf(),
        source,
    })?;
    for entry in rd.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == self_pid {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some((comm, state, start_ticks)) = parse_stat_brief(&text) else {
            continue;
        };
        if !selected(selector, &comm, proc_root, pid) {
            continue;
        }
        let look = ProcLook {
            id: ProcIdentity { pid, start_ticks },
            state,
        };
        if look.is_alive() {
            found.push((look, process_config(proc_root, pid)));
        }
    }
    found.sort_by_key(|(l, _)| (l.id.start_ticks, l.id.pid));
    Ok(found)
}

fn selected(selector: &ProcessSelector, comm: &str, proc_root: &Path, pid: i32) -> bool {
    match selector {
        ProcessSelector::Pattern(re) => {
            let args = read_cmdline(proc_root, pid);
            !args.is_empty() && re.is_match(&args.join(" "))
        }
        _ => default_match(comm, proc_root, pid),
    }
}

/// How long a pid counts as young: its command line may still change (fork, then exec).
pub const YOUNG: Duration = Duration::from_secs(1);

/// Remembers the pids of earlier scans so that, while gravity is down, a scan reads only
/// new (or young) processes: cheap enough to run every few milliseconds, which is what it
/// takes to see a gravity that crashes within its first 100 ms.
#[derive(Debug, Default)]
pub struct Scanner {
    seen: HashMap<i32, Instant>,
}

impl Scanner {
    /// Whether a scan has seen a pid less than [`YOUNG`] ago: its command line may still
    /// change without any new pid being created (exec after fork).
    pub fn has_young(&self, now: Instant) -> bool {
        self.seen
            .values()
            .any(|first| now.saturating_duration_since(*first) < YOUNG)
    }
    /// Scans for gravity. `full` examines every process; otherwise only pids not seen
    /// before or first seen less than [`YOUNG`] ago. With a `filter`, only a process
    /// running with the pipeline's config file is taken.
    pub fn find(
        &mut self,
        proc_root: &Path,
        selector: &ProcessSelector,
        self_pid: i32,
        full: bool,
        filter: Option<&ConfigFilter>,
    ) -> Result<Option<ProcLook>, DiscoveryError> {
        let now = Instant::now();
        let mut listed: HashSet<i32> = HashSet::with_capacity(self.seen.len() + 16);
        let seen = &mut self.seen;
        let res = find_filtered(proc_root, selector, self_pid, filter, &mut |pid| {
            listed.insert(pid);
            let first = *seen.entry(pid).or_insert(now);
            full || now.duration_since(first) < YOUNG
        });
        if res.is_ok() {
            self.seen.retain(|pid, _| listed.contains(pid));
        }
        res
    }
}

fn find_filtered(
    proc_root: &Path,
    selector: &ProcessSelector,
    self_pid: i32,
    filter: Option<&ConfigFilter>,
    examine: &mut dyn FnMut(i32) -> bool,
) -> Result<Option<ProcLook>, DiscoveryError> {
    match selector {
        ProcessSelector::Pid(pid) => Ok(look(proc_root, *pid)),
        ProcessSelector::PidFile(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| DiscoveryError::PidFile {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let pid: i32 = text.trim().parse().map_err(|_| DiscoveryError::PidFile {
                path: path.clone(),
                reason: "does not hold a pid".into(),
            })?;
            Ok(look(proc_root, pid))
        }
        ProcessSelector::Pattern(_) | ProcessSelector::Default => {
            let rd =
                std::fs::read_dir(proc_root).map_err(|source| DiscoveryError::ProcUnreadable {
                    path: proc_root.to_path_buf(),
                    source,
                })?;
            let mut best: Option<ProcLook> = None;
            for entry in rd.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                if pid == self_pid || !examine(pid) {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(entry.path().join("stat")) else {
                    continue;
                };
                let Some((comm, state, start_ticks)) = parse_stat_brief(&text) else {
                    continue;
                };
                // A zombie has no command line left to tell its config: not taken.
                let matched = selected(selector, &comm, proc_root, pid)
                    && filter.is_none_or(|f| f.matches(proc_root, pid));
                if !matched {
                    continue;
                }
                let cand = ProcLook {
                    id: ProcIdentity { pid, start_ticks },
                    state,
                };
                best = Some(match best {
                    None => cand,
                    Some(b) => {
                        let better = (cand.is_alive(), std::cmp::Reverse(cand.id.start_ticks))
                            > (b.is_alive(), std::cmp::Reverse(b.id.start_ticks));
                        if better {
                            cand
                        } else {
                            b
                        }
                    }
                });
            }
            Ok(best)
        }
    }
}

/// gravity's own flags as found on its command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoFlags {
    /// `--config`.
    pub config: Option<String>,
    /// `--http-addr`.
    pub http_addr: Option<String>,
    /// `--log-file`.
    pub log_file: Option<String>,
    /// `--log-format`.
    pub log_format: Option<String>,
}

/// Flags of gravity that take a value (the rest are treated as booleans).
const VALUE_FLAGS: &[&str] = &[
    "config",
    "c",
    "http-addr",
    "log-file",
    "log-format",
    "L",
    "log-level",
    "cpuprofile",
    "memprofile",
];

/// Parses arguments (without argv\[0\]) like Go's `flag` package: `-f`, `--f`, `-f=v`, `--f=v`,
/// `-f v`; parsing stops at `--` or the first non-flag argument. The last occurrence wins.
pub fn parse_go_flags(args: &[String]) -> GoFlags {
    let mut out = GoFlags::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" || !a.starts_with('-') || a == "-" {
            break;
        }
        let body = a
            .strip_prefix("--")
            .unwrap_or_else(|| a.strip_prefix('-').unwrap_or(a));
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => {
                if VALUE_FLAGS.contains(&body) {
                    i += 1;
                    (body, args.get(i).cloned())
                } else {
                    (body, None)
                }
            }
        };
        match (name, value) {
            ("config" | "c", Some(v)) => out.config = Some(v),
            ("http-addr", Some(v)) => out.http_addr = Some(v),
            ("log-file", Some(v)) => out.log_file = Some(v),
            ("log-format", Some(v)) => out.log_format = Some(v),
            _ => {}
        }
        i += 1;
    }
    out
}

/// Turns gravity's `--http-addr` (`:8080`, `0.0.0.0:8080`, `[::]:8080`, `host:8080`) into a URL to reach it.
pub fn http_addr_to_url(addr: &str) -> Option<Uri> {
    let (host, port) = gravity_config::split_host_port(addr, 8080)?;
    let host = match host.as_str() {
        "" | "0.0.0.0" => "127.0.0.1".to_string(),
        "::" => "[::1]".to_string(),
        h if h.contains(':') => format!("[{h}]"),
        h => h.to_string(),
    };
    format!("http://{host}:{port}").parse().ok()
}

/// Where a value came from, for the landing page and the discovery log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Given in the exporter's flags or config file.
    Flag,
    /// Read from gravity's command line.
    Cmdline,
    /// Read from gravity's config file.
    GravityConfig,
    /// gravity's own default.
    Default,
}

impl Origin {
    /// Short name.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Flag => "flag",
            Origin::Cmdline => "gravity command line",
            Origin::GravityConfig => "gravity config",
            Origin::Default => "gravity default",
        }
    }
}

/// Everything known about the gravity being watched.
#[derive(Debug, Clone)]
pub struct Target {
    /// The process, when found.
    pub process: Option<ProcLook>,
    /// gravity's HTTP base URL.
    pub url: Uri,
    /// Where the URL came from.
    pub url_origin: Origin,
    /// Config path as gravity names it.
    pub config_path: Option<PathBuf>,
    /// Parsed config (with secrets held as `Secret`).
    pub config: Option<GravityConfig>,
    /// Why the config could not be read, if it could not.
    pub config_error: Option<String>,
    /// Log file, if gravity writes one (else it logs to stderr).
    pub log_file: Option<PathBuf>,
    /// Log format, if known.
    pub log_format: Option<GravityLogFormat>,
    /// The pipeline name (config `name`, else `--gravity.pipeline`, else unknown).
    pub pipeline: String,
}

impl Target {
    /// A redactor for the passwords of gravity's config, as far as it is known (registered
    /// process-wide), and the process-wide ones.
    pub fn redactor(&self) -> crate::redact::Redactor {
        crate::redact::Redactor::for_passwords(
            self.config
                .iter()
                .flat_map(|c| c.endpoints.iter())
                .map(|e| &e.password),
        )
    }

    /// What is known before any process is found: only what the flags say.
    pub fn from_settings(s: &Settings) -> Target {
        let (url, url_origin) = match &s.gravity_url {
            Some(u) => (u.clone(), Origin::Flag),
            None => (Uri::from_static("http://127.0.0.1:8080"), Origin::Default),
        };
        let mut t = Target {
            process: None,
            url,
            url_origin,
            config_path: s.gravity_config.clone(),
            config: None,
            config_error: None,
            log_file: s.log_file.clone(),
            log_format: s.log_format,
            pipeline: String::new(),
        };
        t.load_config(&s.proc_root, None, None);
        t
    }

    fn load_config(&mut self, proc_root: &Path, pid: Option<i32>, cwd: Option<&Path>) {
        self.config = None;
        self.config_error = None;
        if let Some(p) = &self.config_path {
            let path = resolve(proc_root, pid, cwd, p);
            match gravity_config::read(&path) {
                Ok(c) => self.config = Some(c),
                Err(e) => self.config_error = Some(e.to_string()),
            }
        }
        self.pipeline = self
            .config
            .as_ref()
            .and_then(|c| c.name.clone())
            .unwrap_or_else(|| "unknown".to_string());
    }

    /// The log path to open: through `/proc/<pid>/root` when gravity's files live in another mount namespace.
    pub fn log_path(&self, proc_root: &Path) -> Option<PathBuf> {
        let p = self.log_file.as_ref()?;
        Some(resolve(proc_root, self.process.map(|l| l.id.pid), None, p))
    }

    /// One line saying what was discovered, without secrets.
    pub fn describe(&self) -> String {
        let endpoints: Vec<String> = self
            .config
            .iter()
            .flat_map(|c| c.endpoints.iter())
            .map(|e| format!("{}={}", e.role.as_str(), e.address()))
            .collect();
        format!(
            "pid={} pipeline={} url={} ({}) config={} log_file={} log_format={} endpoints=[{}]",
            self.process
                .map(|p| p.id.pid.to_string())
                .unwrap_or_else(|| "none".into()),
            self.pipeline,
            self.url,
            self.url_origin.as_str(),
            self.config_path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "unknown".into()),
            self.log_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "stderr".into()),
            match self.log_format {
                Some(GravityLogFormat::Json) => "json",
                Some(GravityLogFormat::Text) => "text",
                Some(GravityLogFormat::Console) => "console",
                None => "detect",
            },
            endpoints.join(" "),
        )
    }
}

/// Resolves a path gravity named: relative ones against its cwd; read through `/proc/<pid>/root` when that exists.
fn resolve(proc_root: &Path, pid: Option<i32>, cwd: Option<&Path>, p: &Path) -> PathBuf {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        match cwd {
            Some(c) => c.join(p),
            None => p.to_path_buf(),
        }
    };
    if let (Some(pid), true) = (pid, abs.is_absolute()) {
        let via_root = proc_root
            .join(pid.to_string())
            .join("root")
            .join(abs.strip_prefix("/").unwrap_or(&abs));
        if via_root.exists() {
            return via_root;
        }
    }
    abs
}

/// Builds the target for a found process: flags win, then gravity's command line, then its defaults.
pub fn discover(s: &Settings, look: ProcLook) -> Target {
    let pid = look.id.pid;
    let args = read_cmdline(&s.proc_root, pid);
    let flags = parse_go_flags(args.get(1..).unwrap_or(&[]));
    let cwd = std::fs::read_link(s.proc_root.join(pid.to_string()).join("cwd")).ok();
    let mut t = Target::from_settings(s);
    t.process = Some(look);
    if s.gravity_url.is_none() {
        let (addr, origin) = match &flags.http_addr {
            Some(a) => (a.as_str(), Origin::Cmdline),
            None => (":8080", Origin::Default),
        };
        if let Some(u) = http_addr_to_url(addr) {
            t.url = u;
            t.url_origin = origin;
        }
    }
    if t.config_path.is_none() {
        t.config_path = flags.config.map(PathBuf::from);
    }
    if t.log_file.is_none() {
        t.log_file = flags.log_file.map(|f| match &cwd {
            Some(c) if !Path::new(&f).is_absolute() => c.join(f),
            _ => PathBuf::from(f),
        });
    }
    if t.log_format.is_none() {
        t.log_format = match flags.log_format.as_deref() {
            Some(f) => GravityLogFormat::parse(f),
            None => Some(GravityLogFormat::Json),
        };
    }
    t.load_config(&s.proc_root, Some(pid), cwd.as_deref());
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn go_flag_spellings() {
        for args in [
            a(&[
                "-config",
                "/c.toml",
                "-http-addr",
                ":8081",
                "-log-file",
                "/l.log",
                "-log-format",
                "text",
            ]),
            a(&[
                "--config",
                "/c.toml",
                "--http-addr",
                ":8081",
                "--log-file",
                "/l.log",
                "--log-format",
                "text",
            ]),
            a(&[
                "-config=/c.toml",
                "-http-addr=:8081",
                "-log-file=/l.log",
                "-log-format=text",
            ]),
            a(&[
                "--config=/c.toml",
                "--http-addr=:8081",
                "--log-file=/l.log",
                "--log-format=text",
            ]),
            a(&[
                "-L",
                "debug",
                "--config=/c.toml",
                "-http-addr",
                ":8081",
                "--log-file=/l.log",
                "-log-format=text",
            ]),
        ] {
            let f = parse_go_flags(&args);
            assert_eq!(f.config.as_deref(), Some("/c.toml"), "{args:?}");
            assert_eq!(f.http_addr.as_deref(), Some(":8081"), "{args:?}");
            assert_eq!(f.log_file.as_deref(), Some("/l.log"), "{args:?}");
            assert_eq!(f.log_format.as_deref(), Some("text"), "{args:?}");
        }
        // parsing stops at "--" and at the first positional
        let f = parse_go_flags(&a(&["--", "--config=/x"]));
        assert_eq!(f.config, None);
        let f = parse_go_flags(&a(&["run", "--config=/x"]));
        assert_eq!(f.config, None);
        // a boolean flag does not eat the next flag; the last occurrence wins
        let f = parse_go_flags(&a(&["-V", "--config=/a", "--config=/b"]));
        assert_eq!(f.config.as_deref(), Some("/b"));
        // missing value at the end is not a panic
        assert_eq!(parse_go_flags(&a(&["--config"])).config, None);
    }

    #[test]
    fn http_addr_urls() {
        assert_eq!(
            http_addr_to_url(":8080").unwrap().to_string(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(
            http_addr_to_url("0.0.0.0:9").unwrap().to_string(),
            "http://127.0.0.1:9/"
        );
        assert_eq!(
            http_addr_to_url("[::]:9").unwrap().to_string(),
            "http://[::1]:9/"
        );
        assert_eq!(
            http_addr_to_url("gravity.local:81").unwrap().to_string(),
            "http://gravity.local:81/"
        );
        assert!(http_addr_to_url("x:y").is_none());
    }

    #[test]
    fn stat_brief_handles_odd_comm() {
        let s = "42 (gr (a) vity) S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 7 0 12345 1000 10 18446744073709551615";
        assert_eq!(
            parse_stat_brief(s),
            Some(("gr (a) vity".into(), 'S', 12345))
        );
        assert_eq!(parse_stat_brief("garbage"), None);
        assert_eq!(parse_stat_brief("1 (x) S 1"), None);
    }

    fn fixture_root() -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc"))
    }

    #[test]
    fn finds_gravity_in_fixture_tree() {
        let root = fixture_root();
        let l = find_process(&root, &ProcessSelector::Default, 1)
            .unwrap()
            .unwrap();
        assert_eq!(
            l.id.pid, 4242,
            "live gravity preferred over the zombie 4343"
        );
        let re = regex::Regex::new(r"--config=/etc/gravity/other\.toml").unwrap();
        assert!(find_process(&root, &ProcessSelector::Pattern(re), 1)
            .unwrap()
            .is_none());
        let re = regex::Regex::new(r"^gravity .*--config=/etc/gravity/config\.toml").unwrap();
        assert_eq!(
            find_process(&root, &ProcessSelector::Pattern(re), 1)
                .unwrap()
                .unwrap()
                .id
                .pid,
            4242
        );
        let z = find_process(&root, &ProcessSelector::Pid(4343), 1)
            .unwrap()
            .unwrap();
        assert!(!z.is_alive());
        assert!(find_process(&root, &ProcessSelector::Pid(999), 1)
            .unwrap()
            .is_none());
        let e = find_process(
            &root,
            &ProcessSelector::PidFile("/nonexistent.pid".into()),
            1,
        );
        assert!(e.is_err());
    }

    #[test]
    fn scanner_skips_old_pids_unless_full() {
        let root = fixture_root();
        let mut sc = Scanner::default();
        let first = sc
            .find(&root, &ProcessSelector::Default, 1, false, None)
            .unwrap();
        assert_eq!(first.map(|l| l.id.pid), Some(4242), "new pids are examined");
        // pretend every pid was first seen long ago: a quick scan then examines none
        for t in sc.seen.values_mut() {
            *t = Instant::now()
                .checked_sub(YOUNG * 2)
                .unwrap_or_else(Instant::now);
        }
        assert_eq!(
            sc.find(&root, &ProcessSelector::Default, 1, false, None)
                .unwrap(),
            None
        );
        assert_eq!(
            sc.find(&root, &ProcessSelector::Default, 1, true, None)
                .unwrap()
                .map(|l| l.id.pid),
            Some(4242)
        );
    }

    #[test]
    fn discovers_from_cmdline_and_config() {
        let root = fixture_root();
        let mut s = Settings::from_flags(crate::config::Flags::default()).unwrap();
        s.proc_root = root.clone();
        let l = look(&root, 4242).unwrap();
        let t = discover(&s, l);
        assert_eq!(t.url.to_string(), "http://127.0.0.1:18080/");
        assert_eq!(t.url_origin, Origin::Cmdline);
        assert_eq!(t.pipeline, "mysql2mysqlDemo");
        assert_eq!(t.log_format, Some(GravityLogFormat::Json));
        assert_eq!(
            t.log_file.as_deref(),
            Some(Path::new("/var/log/gravity/gravity.log"))
        );
        let d = t.describe();
        assert!(
            d.contains("source=127.0.0.1:3306") && d.contains("target=127.0.0.1:3307"),
            "{d}"
        );
        assert!(!d.contains("s3cret"), "{d}");
    }
}
