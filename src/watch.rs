//! The process watcher: a background task that looks at gravity's pid every
//! `--collector.process-watch-interval` (100 ms by default), so that an exit shows in
//! `/metrics` well within a second and every restart is counted, even several between
//! two scrapes.
//!
//! While gravity runs, a look costs one read of `/proc/<pid>/stat`. Only when gravity is
//! not running (or a pid file changed) does it search `/proc` for it. A change of pid or of
//! start time is a new incarnation: `gravity_process_restarts_total` goes up by one, the
//! target is re-discovered (gravity may have come back with another config), and the
//! collectors are kicked to run at once. A zombie counts as down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::collector::Context;
use crate::config::{ProcessSelector, Settings};
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
}

/// How often the watcher scans for new processes while gravity is not running.
pub const DOWN_SCAN_INTERVAL: Duration = Duration::from_millis(10);
/// How often, while gravity is not running, a scan examines every process (a process that
/// was running for a while may `exec` gravity).
pub const FULL_SCAN_INTERVAL: Duration = Duration::from_secs(1);

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
        }
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
        let full = reloaded
            || self
                .last_full_scan
                .is_none_or(|t| t.elapsed() >= FULL_SCAN_INTERVAL);
        if full {
            self.last_full_scan = Some(Instant::now());
        }
        let mut found = match self
            .scanner
            .find(&s.proc_root, &s.selector, self.self_pid, full)
        {
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
                self.ctx.set_target(target);
                self.ctx.kick.notify_one();
                true
            }
            (Some(_), None) => {
                up.count_exit();
                up.set_process(false, false);
                self.current = None;
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

    /// Runs forever: every watch interval while gravity runs (one file read), every
    /// [`DOWN_SCAN_INTERVAL`] while it does not (a scan of new pids only).
    pub async fn run(mut self) {
        loop {
            let interval = self.ctx.settings().watch_interval;
            // A look reads one or a few small /proc files: cheap enough for the runtime thread.
            self.tick();
            let next = if self.current.is_some() {
                interval
            } else {
                DOWN_SCAN_INTERVAL
            };
            tokio::time::sleep(next.max(Duration::from_millis(5))).await;
        }
    }
}
