//! A tiny process supervisor for the demo and the tests: runs the `gravity` double the way
//! systemd would run gravity with `Restart=always`, `RestartSec=`, `StartLimitBurst=` and
//! `StartLimitIntervalSec=`: restart after each exit, give up after too many starts within the
//! interval. The child is reaped within ~20 ms of exiting (unless reaping is paused to leave a
//! zombie for a test) and killed when the supervisor is dropped. A plain thread does the
//! watching, so it works with or without a tokio runtime.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use thiserror::Error;

/// How often the watcher polls the child.
const POLL: Duration = Duration::from_millis(20);
/// How long `stop()` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Exit records kept.
const MAX_EXITS: usize = 64;

/// Creates `dir/gravity` as a symlink to `exe` (replacing an old link) and returns its path.
pub fn install_gravity_link(exe: &Path, dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let link = dir.join("gravity");
    match std::fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() || m.is_file() => std::fs::remove_file(&link)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a file", link.display()),
            ))
        }
        Err(_) => {}
    }
    std::os::unix::fs::symlink(exe, &link)?;
    Ok(link)
}

/// systemd's `Restart=` choices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Restart after every exit.
    Always,
    /// Restart after a non-zero exit or a signal.
    OnFailure,
    /// Never restart.
    No,
}

/// Signals the tests send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM
    Term,
    /// SIGKILL (through `Child::kill`)
    Kill,
    /// SIGINT
    Int,
    /// SIGHUP
    Hup,
    /// SIGQUIT
    Quit,
    /// SIGSTOP
    Stop,
    /// SIGCONT
    Cont,
    /// SIGUSR1
    Usr1,
}

impl Signal {
    /// Name for `kill -s`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "TERM",
            Signal::Kill => "KILL",
            Signal::Int => "INT",
            Signal::Hup => "HUP",
            Signal::Quit => "QUIT",
            Signal::Stop => "STOP",
            Signal::Cont => "CONT",
            Signal::Usr1 => "USR1",
        }
    }
}

/// What to run and how to restart it.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The executable, normally a link named `gravity` ([`install_gravity_link`]).
    pub program: PathBuf,
    /// Working directory of the child (created if missing).
    pub work_dir: PathBuf,
    /// Passed as `--config=`.
    pub config_file: PathBuf,
    /// Passed as `--http-addr=`.
    pub http_addr: String,
    /// Passed as `--log-file=` when set (else the child logs to stderr).
    pub log_file: Option<PathBuf>,
    /// Passed as `--log-format=` when set.
    pub log_format: Option<String>,
    /// More arguments, after the above.
    pub extra_args: Vec<OsString>,
    /// Environment added to the child's (e.g. `GRAVITY_DOUBLE_RATE`).
    pub env: Vec<(OsString, OsString)>,
    /// `Restart=` (default `Always`).
    pub restart: Restart,
    /// `RestartSec=` (default 100 ms, systemd's default).
    pub restart_sec: Duration,
    /// `StartLimitBurst=` (default 5).
    pub start_limit_burst: u32,
    /// `StartLimitIntervalSec=` (default 10 s).
    pub start_limit_interval: Duration,
    /// Where the child's stdout and stderr go (appended); default `work_dir/gravity.stdio`.
    pub stdio_file: Option<PathBuf>,
}

impl SupervisorConfig {
    /// A config with systemd's defaults for everything but the essentials.
    pub fn new(
        program: impl Into<PathBuf>,
        work_dir: impl Into<PathBuf>,
        config_file: impl Into<PathBuf>,
        http_addr: impl Into<String>,
    ) -> Self {
        SupervisorConfig {
            program: program.into(),
            work_dir: work_dir.into(),
            config_file: config_file.into(),
            http_addr: http_addr.into(),
            log_file: None,
            log_format: None,
            extra_args: Vec::new(),
            env: Vec::new(),
            restart: Restart::Always,
            restart_sec: Duration::from_millis(100),
            start_limit_burst: 5,
            start_limit_interval: Duration::from_secs(10),
            stdio_file: None,
        }
    }

    /// The command line the child gets (without the program).
    pub fn args(&self) -> Vec<OsString> {
        let mut a: Vec<OsString> = Vec::new();
        let mut flag = |name: &str, v: &std::ffi::OsStr| {
            let mut s = OsString::from(format!("--{name}="));
            s.push(v);
            a.push(s);
        };
        flag("config", self.config_file.as_os_str());
        flag("http-addr", std::ffi::OsStr::new(&self.http_addr));
        if let Some(l) = &self.log_file {
            flag("log-file", l.as_os_str());
        }
        if let Some(f) = &self.log_format {
            flag("log-format", std::ffi::OsStr::new(f));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    fn stdio_path(&self) -> PathBuf {
        self.stdio_file
            .clone()
            .unwrap_or_else(|| self.work_dir.join("gravity.stdio"))
    }
}

/// Why the supervisor could not start.
#[derive(Debug, Error)]
pub enum SupervisorError {
    /// The work directory or stdio file could not be prepared.
    #[error("prepare {path}: {source}")]
    Prepare {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The first start failed.
    #[error("spawn {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
}

/// One exit of the child.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExitRecord {
    /// Its pid.
    pub pid: u32,
    /// Exit code, when it exited.
    pub code: Option<i32>,
    /// Signal number, when a signal ended it.
    pub signal: Option<i32>,
    /// When it was reaped.
    pub at: SystemTime,
    /// How long it ran.
    pub ran_for: Duration,
}

/// A snapshot of the supervisor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SupervisorStatus {
    /// The running child's pid.
    pub pid: Option<u32>,
    /// Starts so far (the first included).
    pub starts: u32,
    /// Restarts so far (`starts - 1`).
    pub restarts: u32,
    /// The start limit was hit: no more restarts.
    pub gave_up: bool,
    /// `stop()` was called.
    pub stopped: bool,
    /// Recent exits, oldest first.
    pub exits: Vec<ExitRecord>,
    /// Last spawn failure.
    pub spawn_error: Option<String>,
}

struct State {
    child: Option<(Child, Instant)>,
    start_times: VecDeque<Instant>,
    starts: u32,
    exits: VecDeque<ExitRecord>,
    stopping: bool,
    gave_up: bool,
    reaping: bool,
    spawn_error: Option<String>,
}

struct Shared {
    cfg: SupervisorConfig,
    state: Mutex<State>,
    cv: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, st: &mut State) -> io::Result<()> {
        let cfg = &self.cfg;
        let stdio = OpenOptions::new()
            .create(true)
            .append(true)
            .open(cfg.stdio_path())?;
        let child = Command::new(&cfg.program)
            .args(cfg.args())
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&cfg.work_dir)
            .stdin(Stdio::null())
            .stdout(stdio.try_clone()?)
            .stderr(stdio)
            .spawn()?;
        let now = Instant::now();
        st.child = Some((child, now));
        st.start_times.push_back(now);
        st.starts += 1;
        st.spawn_error = None;
        self.cv.notify_all();
        Ok(())
    }

    fn record(st: &mut State, pid: u32, started: Instant, status: ExitStatus) {
        if st.exits.len() >= MAX_EXITS {
            st.exits.pop_front();
        }
        st.exits.push_back(ExitRecord {
            pid,
            code: status.code(),
            signal: status.signal(),
            at: SystemTime::now(),
            ran_for: started.elapsed(),
        });
    }

    fn snapshot(st: &State) -> SupervisorStatus {
        SupervisorStatus {
            pid: st.child.as_ref().map(|(c, _)| c.id()),
            starts: st.starts,
            restarts: st.starts.saturating_sub(1),
            gave_up: st.gave_up,
            stopped: st.stopping,
            exits: st.exits.iter().cloned().collect(),
            spawn_error: st.spawn_error.clone(),
        }
    }

    /// The watcher: wait for the child to exit, then restart it like systemd.
    fn watch(self: Arc<Self>) {
        loop {
            // Wait for the current child to end.
            let mut st = self.lock();
            loop {
                if st.stopping {
                    return;
                }
                let reaping = st.reaping;
                match st.child.as_mut() {
                    None => break,
                    Some((child, started)) if reaping => {
                        let (pid, started) = (child.id(), *started);
                        match child.try_wait() {
                            Ok(Some(status)) => {
                                st.child = None;
                                Shared::record(&mut st, pid, started, status);
                                self.cv.notify_all();
                                break;
                            }
                            Ok(None) => {}
                            Err(_) => {
                                st.child = None;
                                break;
                            }
                        }
                    }
                    Some(_) => {}
                }
                st = self
                    .cv
                    .wait_timeout(st, POLL)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            // Restart policy.
            let failed = st
                .exits
                .back()
                .is_none_or(|e| e.code != Some(0) || e.signal.is_some());
            match self.cfg.restart {
                Restart::No => return,
                Restart::OnFailure if !failed => return,
                _ => {}
            }
            // RestartSec.
            let deadline = Instant::now() + self.cfg.restart_sec;
            loop {
                if st.stopping {
                    return;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = self
                    .cv
                    .wait_timeout(st, deadline - now)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            // StartLimitBurst within StartLimitIntervalSec.
            let now = Instant::now();
            while st
                .start_times
                .front()
                .is_some_and(|t| now.duration_since(*t) > self.cfg.start_limit_interval)
            {
                st.start_times.pop_front();
            }
            if st.start_times.len() >= self.cfg.start_limit_burst.max(1) as usize {
                st.gave_up = true;
                self.cv.notify_all();
                return;
            }
            if let Err(e) = self.spawn(&mut st) {
                st.spawn_error = Some(e.to_string());
                st.start_times.push_back(Instant::now());
                self.cv.notify_all();
            }
        }
    }
}

/// Runs and restarts the `gravity` double. Dropping it kills the child.
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("program", &self.shared.cfg.program)
            .field("status", &self.status())
            .finish()
    }
}

impl Supervisor {
    /// Starts the first child (errors surface here) and the watcher thread.
    pub fn start(cfg: SupervisorConfig) -> Result<Supervisor, SupervisorError> {
        std::fs::create_dir_all(&cfg.work_dir).map_err(|source| SupervisorError::Prepare {
            path: cfg.work_dir.clone(),
            source,
        })?;
        let shared = Arc::new(Shared {
            cfg,
            state: Mutex::new(State {
                child: None,
                start_times: VecDeque::new(),
                starts: 0,
                exits: VecDeque::new(),
                stopping: false,
                gave_up: false,
                reaping: true,
                spawn_error: None,
            }),
            cv: Condvar::new(),
        });
        {
            let mut st = shared.lock();
            shared
                .spawn(&mut st)
                .map_err(|source| SupervisorError::Spawn {
                    program: shared.cfg.program.clone(),
                    source,
                })?;
        }
        let watcher = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("gravity-supervisor".into())
            .spawn(move || watcher.watch())
            .map_err(|source| SupervisorError::Prepare {
                path: shared.cfg.work_dir.clone(),
                source,
            })?;
        Ok(Supervisor {
            shared,
            thread: Some(thread),
        })
    }

    /// The running child's pid.
    pub fn pid(&self) -> Option<u32> {
        self.status().pid
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u32 {
        self.status().restarts
    }

    /// A snapshot of the state.
    pub fn status(&self) -> SupervisorStatus {
        Shared::snapshot(&self.shared.lock())
    }

    /// Waits up to `timeout` for `pred` to hold; returns the status that satisfied it.
    pub fn wait_until(
        &self,
        timeout: Duration,
        pred: impl Fn(&SupervisorStatus) -> bool,
    ) -> Option<SupervisorStatus> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            let snap = Shared::snapshot(&st);
            if pred(&snap) {
                return Some(snap);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            st = self
                .shared
                .cv
                .wait_timeout(st, (deadline - now).min(POLL))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Pauses (`false`) or resumes reaping, e.g. to leave a zombie for a test to observe.
    pub fn set_reaping(&self, on: bool) {
        self.shared.lock().reaping = on;
        self.shared.cv.notify_all();
    }

    /// Sends `sig` to the running child (SIGKILL through `Child::kill`, others through `kill`).
    pub fn kill(&self, sig: Signal) -> io::Result<()> {
        let mut st = self.shared.lock();
        let Some((child, _)) = st.child.as_mut() else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no child running"));
        };
        let res = if sig == Signal::Kill {
            child.kill()
        } else {
            let status = Command::new("kill")
                .arg("-s")
                .arg(sig.name())
                .arg(child.id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?;
            if status.success() {
                Ok(())
            } else {
                Err(io::Error::other(format!(
                    "kill -s {} failed: {status}",
                    sig.name()
                )))
            }
        };
        self.shared.cv.notify_all();
        res
    }

    fn shutdown(&mut self, grace: Duration) {
        let child = {
            let mut st = self.shared.lock();
            st.stopping = true;
            st.child.take()
        };
        self.shared.cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some((mut child, started)) = child {
            let pid = child.id();
            let mut status = None;
            if grace > Duration::ZERO {
                let _ = Command::new("kill")
                    .args(["-s", "TERM", &pid.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline {
                    if let Ok(Some(s)) = child.try_wait() {
                        status = Some(s);
                        break;
                    }
                    std::thread::sleep(POLL);
                }
            }
            if status.is_none() {
                let _ = child.kill();
                status = child.wait().ok();
            }
            if let Some(s) = status {
                Shared::record(&mut self.shared.lock(), pid, started, s);
            }
        }
    }

    /// Stops restarting, sends SIGTERM, waits up to 5 s, then SIGKILLs; the child is reaped.
    pub fn stop(&mut self) -> SupervisorStatus {
        self.shutdown(STOP_GRACE);
        self.status()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown(Duration::ZERO);
    }
}
