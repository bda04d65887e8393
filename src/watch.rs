//! The process watcher: a background task that follows gravity's pid, so that an exit shows
//! in `/metrics` well within a second and every restart is counted, even several between two
//! scrapes.
//!
//! While gravity runs, its exit is awaited through a pidfd (`pidfd_open(2)`, readable when
//! the process exits) registered with the runtime's reactor: no polling. A slow look once a
//! collection interval (one read of `/proc/<pid>/stat`, see [`PIDFD_RECHECK`]; once a minute
//! while nobody reads) still notices a pid file that points elsewhere, and a reload wakes it
//! at once for a reload that selects another process. Where no pidfd can be had (kernel
//! before 5.3, seccomp, or a `--path.procfs` other than `/proc`, whose pids may belong to
//! another pid namespace) the watcher falls back to that one read every
//! `--collector.process-watch-interval` (100 ms).
//!
//! While gravity is not running the watcher looks for it: every [`DOWN_SCAN_INTERVAL`] right
//! after an exit (a supervisor restarting it), backing off to one look per [`DOWN_SCAN_MAX`]
//! (see [`down_scan_interval`]), so a gravity that lives 100 ms is always seen. A look first
//! reads the last pid the kernel handed out (`/proc/loadavg`); the `/proc` scan is skipped
//! when no process was created since the last look and no recent one may still `exec`. A change of pid or of start
//! time is a new incarnation: `gravity_process_restarts_total` goes up by one, the target is
//! re-discovered (gravity may have come back with another config), and the collectors are
//! kicked to run at once. A zombie counts as down. Every look runs on the blocking pool,
//! never on the runtime thread.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use crate::collector::Context;
use crate::config::{PipelineMode, ProcessSelector, Settings};
use crate::discovery::{self, ProcIdentity, ProcLook, Target};

/// The watcher's state.
pub struct Watcher {
    ctx: Arc<Context>,
    current: Option<ProcIdentity>,
    ever_seen: bool,
    last_error: Option<String>,
    last_logged: Option<String>,
    /// The settings of the last look: a reload may select another process.
    last_settings: Option<Arc<Settings>>,
    scanner: discovery::Scanner,
    last_full_scan: Option<Instant>,
    self_pid: i32,
    /// Since when gravity is not running (or since the start): sets the scan back-off.
    down_since: Instant,
    /// The kernel's last pid at the last scan (`/proc/loadavg`), when `/proc` is ours.
    last_pid: Option<i32>,
}

/// The fastest scan for new processes while gravity is not running: right after it exited.
pub const DOWN_SCAN_INTERVAL: Duration = Duration::from_millis(10);
/// The slowest look while gravity is not running, reached 2 s after it went down: a gravity
/// that lives this long is always seen, also at the start of a crash loop after a long
/// absence.
pub const DOWN_SCAN_MAX: Duration = Duration::from_millis(100);
/// The shortest time, while gravity is not running, between two scans that examine every
/// process (a process that was running for a while may `exec` gravity, which creates no
/// pid); it grows with a tenth of the time gravity has been gone, up to [`FULL_SCAN_MAX`].
pub const FULL_SCAN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest time between two full scans while gravity is not running.
pub const FULL_SCAN_MAX: Duration = Duration::from_secs(30);
/// While gravity's exit is awaited through a pidfd: the shortest time between two looks at
/// its `/proc/<pid>/stat` (a pid file that points elsewhere while the old process lives on).
/// The recheck follows the collection cadence ([`Context::cadence`]: the interval, or the idle
/// interval while nobody reads), at least this; a reload wakes the watcher at once.
pub const PIDFD_RECHECK: Duration = Duration::from_secs(1);

/// How long to wait before the next look when gravity went down `down_for` ago: a twentieth
/// of that, between [`DOWN_SCAN_INTERVAL`] and [`DOWN_SCAN_MAX`]. A supervisor's restart
/// within the first 200 ms is looked for every 10 ms; after 2 s of absence ten looks a second
/// remain, most of them one read of `/proc/loadavg`.
pub fn down_scan_interval(down_for: Duration) -> Duration {
    (down_for / 20).clamp(DOWN_SCAN_INTERVAL, DOWN_SCAN_MAX)
}

impl Watcher {
    /// A watcher over the context's settings.
    pub fn new(ctx: Arc<Context>) -> Watcher {
        ctx.publish_up();
        Watcher {
            ctx,
            current: None,
            ever_seen: false,
            last_error: None,
            last_logged: None,
            last_settings: None,
            scanner: discovery::Scanner::default(),
            last_full_scan: None,
            self_pid: i32::try_from(std::process::id()).unwrap_or(0),
            down_since: Instant::now(),
            last_pid: None,
        }
    }

    /// The process being followed, if gravity runs.
    pub fn current(&self) -> Option<ProcIdentity> {
        self.current
    }

    /// How long to wait before the next scan while gravity is not running.
    pub fn down_interval(&self) -> Duration {
        down_scan_interval(self.down_since.elapsed())
    }

    /// One look. Returns true if something changed.
    pub fn tick(&mut self) -> bool {
        let s = self.ctx.settings();
        let reloaded = self
            .last_settings
            .as_ref()
            .is_some_and(|l| !Arc::ptr_eq(l, &s));
        self.last_settings = Some(s.clone());
        // Cheap path: the known process is still the same live incarnation.
        // The process we know: the current one, or the zombie it left behind.
        let known_id = self
            .current
            .or_else(|| {
                self.ctx
                    .target()
                    .process
                    .filter(|p| !p.is_alive())
                    .map(|p| p.id)
            })
            .filter(|_| !reloaded);
        let known =
            known_id.and_then(|id| discovery::look(&s.proc_root, id.pid).filter(|l| l.id == id));
        if let (Some(cur), Some(l)) = (self.current, known) {
            let same_pid = match &s.selector {
                ProcessSelector::PidFile(p) => {
                    std::fs::read_to_string(p)
                        .ok()
                        .and_then(|t| t.trim().parse::<i32>().ok())
                        == Some(cur.pid)
                }
                _ => true,
            };
            if same_pid && l.is_alive() {
                return false;
            }
        }
        let full_every = (self.down_since.elapsed() / 10).clamp(FULL_SCAN_INTERVAL, FULL_SCAN_MAX);
        let full = reloaded
            || self
                .last_full_scan
                .is_none_or(|t| t.elapsed() >= full_every);
        // No process created since the last scan and none young enough to exec: a scan would
        // find what the last one found. Only for a /proc of our own pid namespace.
        let scans = matches!(
            s.selector,
            ProcessSelector::Pattern(_) | ProcessSelector::Default
        );
        if self.current.is_none() && scans && s.proc_root == Path::new("/proc") {
            let last_pid = std::fs::read_to_string(s.proc_root.join("loadavg"))
                .ok()
                .and_then(|t| discovery::parse_loadavg_last_pid(&t));
            let unchanged = last_pid.is_some() && last_pid == self.last_pid;
            self.last_pid = last_pid;
            if unchanged && !full && !self.scanner.has_young(Instant::now()) {
                return false;
            }
        }
        if full {
            self.last_full_scan = Some(Instant::now());
        }
        let filter = config_filter(&self.ctx, &s);
        let looked = match &filter {
            // this pipeline's config file is gone: no process runs with it
            Some(None) => Ok(None),
            Some(Some(f)) => {
                self.scanner
                    .find(&s.proc_root, &s.selector, self.self_pid, full, Some(f))
            }
            None => self
                .scanner
                .find(&s.proc_root, &s.selector, self.self_pid, full, None),
        };
        let mut found = match looked {
            Ok(f) => {
                self.last_error = None;
                f
            }
            Err(e) => {
                let msg = e.to_string();
                if self.last_error.as_deref() != Some(&msg) {
                    tracing::warn!(error = %msg, "cannot look for gravity");
                    self.last_error = Some(msg);
                }
                None
            }
        };
        // A zombie has no command line for a pattern to match: keep our own, known one.
        if !found.is_some_and(|f| f.is_alive()) {
            if let Some(z) = known.filter(|l| !l.is_alive()) {
                found = Some(z);
            }
        }
        self.observe(found, &s)
    }

    fn observe(&mut self, found: Option<ProcLook>, s: &Settings) -> bool {
        let live = found.filter(ProcLook::is_alive);
        let up = &self.ctx.up;
        match (self.current, live) {
            (Some(cur), Some(l)) if cur == l.id => false,
            (prev, Some(l)) => {
                if prev.is_some() {
                    up.count_exit();
                }
                if self.ever_seen {
                    up.count_restart();
                }
                self.ever_seen = true;
                self.current = Some(l.id);
                let target = discovery::discover(s, l);
                let described = target.describe();
                if self.last_logged.as_deref() != Some(described.as_str()) {
                    tracing::info!(discovered = %described, "gravity found");
                    self.last_logged = Some(described);
                }
                if let Some(e) = &target.config_error {
                    tracing::warn!(error = %e, "cannot read gravity's config");
                }
                up.set_process(true, true);
                // Every gravity of the host is a pipeline: this one keeps to the config
                // file its first process ran with (the others get pipelines of their own).
                if s.pipeline_mode == PipelineMode::Auto && self.ctx.pin.get().is_none() {
                    if let Some(id) = discovery::process_config(&s.proc_root, l.id.pid)
                        .and_then(|p| discovery::file_id(&p))
                    {
                        let _ = self.ctx.pin.set(id);
                    }
                }
                self.ctx.set_target(target);
                self.ctx.kick.notify_one();
                true
            }
            (Some(_), None) => {
                up.count_exit();
                up.set_process(false, false);
                self.current = None;
                self.down_since = Instant::now();
                let mut t: Target = (*self.ctx.target()).clone();
                t.process = found; // a zombie stays visible as such
                self.ctx.set_target(t);
                tracing::warn!("gravity process is gone");
                self.ctx.kick.notify_one();
                true
            }
            (None, None) => {
                let t = self.ctx.target();
                if t.process != found {
                    let mut t2: Target = (*t).clone();
                    t2.process = found;
                    self.ctx.set_target(t2);
                }
                false
            }
        }
    }

    /// Runs forever: one look, then wait for gravity's exit (pidfd) or the next look.
    pub async fn run(self) {
        Self::run_shared(Arc::new(Mutex::new(self))).await
    }

    /// [`Watcher::run`] on a shared watcher, so that the supervisor can start it again after
    /// a panic with the same state; each look is a cycle of task `watcher`.
    pub async fn run_shared(shared: Arc<Mutex<Watcher>>) {
        let proc_root_is_proc = |p: &Path| p == Path::new("/proc");
        let ctx = lock(&shared).ctx.clone();
        let tasks = ctx.store.tasks().clone();
        let mut exit_fd: Option<ExitFd> = None;
        // An incarnation whose pidfd fired while /proc still showed it alive: poll it instead.
        let mut no_pidfd_for: Option<ProcIdentity> = None;
        let mut settings_rx = ctx.settings.clone();
        loop {
            let w = shared.clone();
            let started = Instant::now();
            // The look reads /proc: on the blocking pool, not the runtime thread.
            let looked = tokio::task::spawn_blocking(move || {
                let mut g = lock(&w);
                g.tick();
                (g.current, g.down_interval())
            })
            .await;
            tasks.cycle("watcher", started.elapsed(), looked.is_ok());
            let (current, down_wait) = match looked {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "process watcher look failed");
                    (lock(&shared).current, DOWN_SCAN_MAX)
                }
            };
            let s = ctx.settings();
            let poll = s.watch_interval.max(Duration::from_millis(5));
            let Some(id) = current else {
                exit_fd = None;
                tokio::time::sleep(down_wait).await;
                continue;
            };
            if exit_fd.as_ref().map(|e| e.id) != Some(id)
                && no_pidfd_for != Some(id)
                && proc_root_is_proc(&s.proc_root)
            {
                exit_fd = ExitFd::open(&s.proc_root, id);
            }
            let fired = match exit_fd.as_ref().filter(|e| e.id == id) {
                // At rest an idle exporter wakes once a collection interval for this, not
                // once a second (issue 9: idle CPU).
                Some(e) => tokio::select! {
                    r = e.fd.readable() => r.is_ok(),
                    _ = tokio::time::sleep(ctx.cadence().max(PIDFD_RECHECK).max(poll)) => false,
                    _ = settings_rx.changed() => false,
                },
                None => {
                    tokio::time::sleep(poll).await;
                    false
                }
            };
            if fired {
                // gravity exited: look at once. Should it still look alive, this incarnation
                // is polled from now on (a readable pidfd would wake the loop for ever).
                exit_fd = None;
                no_pidfd_for = Some(id);
            }
        }
    }
}

/// Which process may be this pipeline's (see [`discovery::ConfigFilter`]): `None` any the
/// selector finds, `Some(None)` none (its config file is gone), `Some(Some(f))` one running
/// with its config file. A pipeline pinned to a config file keeps to it; several pipelines
/// from `--gravity.config` keep to their own file strictly; one pipeline given one file
/// takes a process whose config cannot be told (only with the default selector: a pattern
/// or pid file says which process it is).
pub fn config_filter(ctx: &Context, s: &Settings) -> Option<Option<discovery::ConfigFilter>> {
    if !matches!(
        s.selector,
        ProcessSelector::Default | ProcessSelector::Pattern(_)
    ) {
        return None;
    }
    if let Some(id) = ctx.pin.get() {
        return Some(Some(discovery::ConfigFilter {
            id: *id,
            strict: true,
        }));
    }
    let path = s.gravity_config.as_ref()?;
    let strict = s.config_strict;
    if !strict && !matches!(s.selector, ProcessSelector::Default) {
        return None;
    }
    match discovery::file_id(path) {
        Some(id) => Some(Some(discovery::ConfigFilter { id, strict })),
        None if strict => Some(None),
        None => None,
    }
}

fn lock(w: &Mutex<Watcher>) -> std::sync::MutexGuard<'_, Watcher> {
    // A panic inside a look leaves the state as it was before that look: keep using it.
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// A pidfd of one gravity incarnation, registered with the runtime's reactor.
struct ExitFd {
    id: ProcIdentity,
    fd: AsyncFd<OwnedFd>,
}

impl ExitFd {
    /// Opens a pidfd for `id`, or `None` where the kernel or sandbox offers none (then the
    /// watcher polls). The pid is looked at again after the open, so a pid reused in between
    /// is never followed.
    fn open(proc_root: &Path, id: ProcIdentity) -> Option<ExitFd> {
        let pid = rustix::process::Pid::from_raw(id.pid)?;
        let fd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::debug!(error = %e, pid = id.pid, "no pidfd for gravity; polling its /proc/<pid>/stat");
                return None;
            }
        };
        if discovery::look(proc_root, id.pid).map(|l| l.id) != Some(id) {
            return None;
        }
        // tokio 1.5x deprecates the safe constructors because an arbitrary `AsRawFd` may not
        // own its descriptor (tokio#8587); an `OwnedFd` moved into the `AsyncFd` does, so the
        // registration cannot outlive the descriptor. Kept over `unsafe` register (the crate
        // forbids unsafe code).
        #[allow(deprecated)]
        let registered = AsyncFd::with_interest(fd, tokio::io::Interest::READABLE);
        match registered {
            Ok(fd) => Some(ExitFd { id, fd }),
            Err(e) => {
                tracing::debug!(error = %e, "cannot register gravity's pidfd; polling");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_scans_start_fast_and_back_off_to_100_ms() {
        assert_eq!(down_scan_interval(Duration::ZERO), DOWN_SCAN_INTERVAL);
        assert_eq!(
            down_scan_interval(Duration::from_millis(150)),
            DOWN_SCAN_INTERVAL
        );
        assert_eq!(
            down_scan_interval(Duration::from_secs(1)),
            Duration::from_millis(50)
        );
        assert_eq!(down_scan_interval(Duration::from_secs(2)), DOWN_SCAN_MAX);
        assert_eq!(DOWN_SCAN_MAX, Duration::from_millis(100));
        assert_eq!(
            down_scan_interval(Duration::from_secs(86_400)),
            DOWN_SCAN_MAX
        );
        let mut last = Duration::ZERO;
        for ms in (0..30_000).step_by(250) {
            let d = down_scan_interval(Duration::from_millis(ms));
            assert!(d >= last, "not monotone at {ms} ms");
            last = d;
        }
    }

    #[test]
    fn loadavg_last_pid() {
        assert_eq!(
            discovery::parse_loadavg_last_pid("0.52 0.58 0.59 2/1130 40721\n"),
            Some(40721)
        );
        assert_eq!(discovery::parse_loadavg_last_pid("0.52 0.58"), None);
        assert_eq!(discovery::parse_loadavg_last_pid(""), None);
    }
}
