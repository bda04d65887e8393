//! gravity's log, turned into classified errors, retries and exit causes.
//!
//! gravity has no error metric: its errors are log lines and exits. This module follows the
//! log ([`tail`]), parses each line in gravity's json, text or console format ([`crate::log::record`]),
//! classifies warnings and errors by component and cause ([`crate::log::classify`]), and exports:
//! - `gravity_error_total{pipeline,component,error_type,level}`: error, fatal and panic lines,
//!   plus warnings that carry a cause;
//! - `gravity_retry_total` (through [`crate::retry::RetryLedger`]): retry lines; the
//!   scheduler's sync-output retries lend their cause to gravity's own retry counter, the
//!   others (Kafka, binlog reconnects) count directly;
//! - `gravity_log_lines_total{pipeline,level}`, the time of the last log write, tailer events;
//! - `gravity_last_fatal_info{pipeline,component,error_type}` and its time: why the last
//!   crash happened, so a crash loop shows why it dies;
//! - for the status page, the last classified error lines, passwords masked, in
//!   [`crate::state::recent::Recent`].
//!
//! Labels come only from closed enums, so cardinality is bounded whatever the log holds.
//! The read position ([`LogState`]) is saved after each poll that moved it (atomically) to
//! `--gravity.log-state-file`, by default a file per log in the exporter's state directory
//! ([`crate::config::Settings::log_state_file_for`]), so an exporter restart neither misses
//! nor double-counts a line. One [`Tailer`] follows the log for the exporter's whole life,
//! whatever path spelling reaches it (`/proc/<pid>/root/<path>` while gravity runs, `<path>`
//! while it is down), so gravity's restarts and crash loops lose nothing. The follower is
//! woken by inotify ([`notify`]) and supervised: a panic is counted in
//! `gravity_exporter_task_restarts_total{task="log"}` and the watcher goes on with its state.

pub mod notify;
pub mod tail;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::{IntCounterVec, Opts};

use crate::base::unix_now;
use crate::collector::Context;
use crate::config::GravityLogFormat;
use crate::log::classify::{classify, Classification, Component};
use crate::log::record::{detect_format_votes, parse_line, Level, LogFormat};
use crate::metrics::Families;
use tail::{PollReport, TailConfig, TailState, Tailer};

/// How often the log is polled when inotify is not available.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// With inotify: how often the log is polled without any event (a safety net: a new log path
/// after gravity's restart, a rotated file moved to another directory, the end of a drain).
pub const SAFETY_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// With inotify: writes within this time after an event are read by one poll.
pub const COALESCE: Duration = Duration::from_millis(50);
/// Name of the snapshot this module publishes.
pub const SNAPSHOT: &str = "log";

/// Maps the exporter's `--gravity.log-format` to the parser's.
pub fn parser_format(f: GravityLogFormat) -> LogFormat {
    match f {
        GravityLogFormat::Json => LogFormat::Json,
        GravityLogFormat::Text => LogFormat::Text,
        GravityLogFormat::Console => LogFormat::Console,
    }
}

/// One classified line worth counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Level.
    pub level: Level,
    /// Classification.
    pub class: Classification,
}

/// Parses and classifies one line (pure). `None` for blank lines, stack traces and lines
/// that are not records; those still count in `gravity_log_lines_total` as level `unknown`.
pub fn ingest(line: &str, format: LogFormat) -> Result<Event, bool> {
    match parse_line(line, format) {
        Ok(rec) => Ok(Event {
            level: rec.level,
            class: classify(&rec),
        }),
        Err(e) => Err(e.is_quiet()),
    }
}

/// The stateful counters.
struct Counters {
    errors: IntCounterVec,
    lines: IntCounterVec,
    oversized: IntCounterVec,
    rotations: IntCounterVec,
    truncations: IntCounterVec,
}

fn counter_vec(
    store: &crate::metrics::Store,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric names in this crate are valid");
    let _ = store.registry().register(Box::new(v.clone()));
    v
}

impl Counters {
    fn new(store: &crate::metrics::Store) -> Counters {
        Counters {
            errors: counter_vec(
                store,
                "gravity_error_total",
                "gravity's errors from its log: error, fatal and panic lines, and warnings that carry a cause, by component, cause and level.",
                &["pipeline", "component", "error_type", "level"],
            ),
            lines: counter_vec(store, "gravity_log_lines_total", "Lines read from gravity's log, by level (unknown: not a log record).", &["pipeline", "level"]),
            oversized: counter_vec(store, "gravity_log_oversized_lines_total", "Log lines longer than the line limit, skipped.", &["pipeline"]),
            rotations: counter_vec(store, "gravity_log_rotations_total", "Rotations of gravity's log seen (rename and re-create).", &["pipeline"]),
            truncations: counter_vec(store, "gravity_log_truncations_total", "Truncations of gravity's log seen (copytruncate).", &["pipeline"]),
        }
    }
}

/// Where the last fatal line came from.
#[derive(Debug, Clone, Copy)]
struct Fatal {
    class: Classification,
    at: f64,
}

/// What is saved in `--gravity.log-state-file`: which log (as gravity names it), the position
/// in the file being read, and in the rotated or deleted files still draining.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogState {
    /// The log's path as configured or discovered (not the `/proc/<pid>/root` spelling);
    /// a state saved for another log is not used.
    pub path: Option<PathBuf>,
    /// The file being read (`None` between a deletion and the next file).
    pub main: Option<TailState>,
    /// Rotated or deleted files still read.
    pub draining: Vec<TailState>,
}

fn tail_state_json(st: &TailState) -> serde_json::Value {
    serde_json::json!({"dev": st.dev, "ino": st.ino, "offset": st.offset})
}

impl LogState {
    /// `{"path":…,"dev":…,"ino":…,"offset":…,"draining":[{"dev":…,"ino":…,"offset":…}]}`;
    /// a file written by an older exporter (`{"dev","ino","offset"}` only) still reads.
    pub fn to_json(&self) -> String {
        let mut v = match &self.main {
            Some(m) => tail_state_json(m),
            None => serde_json::json!({}),
        };
        if let Some(o) = v.as_object_mut() {
            if let Some(p) = self.path.as_ref().and_then(|p| p.to_str()) {
                o.insert("path".into(), p.into());
            }
            o.insert(
                "draining".into(),
                self.draining.iter().map(tail_state_json).collect(),
            );
        }
        v.to_string()
    }

    /// Parses what [`LogState::to_json`] wrote (`None` for anything else).
    pub fn from_json(text: &str) -> Option<LogState> {
        let v: serde_json::Value = serde_json::from_str(text).ok()?;
        let o = v.as_object()?;
        let main = if o.contains_key("dev") {
            Some(TailState::from_json(text).ok()?)
        } else {
            None
        };
        let draining = match o.get("draining") {
            None => Vec::new(),
            Some(d) => d
                .as_array()?
                .iter()
                .take(tail::MAX_DRAINING)
                .map(|e| TailState::from_json(&e.to_string()).ok())
                .collect::<Option<Vec<_>>>()?,
        };
        Some(LogState {
            path: o.get("path").and_then(|p| p.as_str()).map(PathBuf::from),
            main,
            draining,
        })
    }
}

/// Reads a saved state (a missing or bad file means none).
pub fn load_state(path: &Path) -> Option<LogState> {
    let text = std::fs::read_to_string(path).ok()?;
    if text.len() > 64 * 1024 {
        return None;
    }
    LogState::from_json(&text)
}

/// Saves the state atomically (temp file + rename), creating the directory if needed.
pub fn save_state(path: &Path, st: &LogState) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, st.to_json())?;
    std::fs::rename(&tmp, path)
}

/// The file followed: the log's path as gravity names it and the tailer.
struct Follow {
    logical: PathBuf,
    tailer: Tailer,
}

/// The log follower task.
pub struct LogWatcher {
    ctx: Arc<Context>,
    counters: Counters,
    restarts: IntCounterVec,
    tailer: Option<Follow>,
    format: Option<LogFormat>,
    last_fatal: Option<Fatal>,
    last_write: Option<f64>,
    last_saved: Option<LogState>,
    warned: Option<String>,
    /// Pipelines whose `gravity_error_total{error_type="other"}` and `gravity_log_lines_total` series exist at 0.
    seeded: std::collections::HashSet<String>,
    /// Lines read but not yet counted: a panic while counting one loses only that line, the
    /// rest are counted after the restart (and none twice: the tailer has moved past them).
    pending: VecDeque<String>,
    /// When the exporter started: a log file created later is read from its start.
    started: SystemTime,
    /// The directory to watch for changes (the followed file's).
    watch_dir: Option<PathBuf>,
    /// What the names of the log and its rotated copies begin with.
    watch_stem: String,
    /// The last poll stopped at its read budget: poll again at once.
    more: bool,
    /// Set by [`LogWatcher::close`] at shutdown: no poll reads anything afterwards (a poll
    /// queued on the blocking pool before the task was cancelled would otherwise still run,
    /// and move the saved position of an exporter that has already stopped).
    closed: bool,
    #[cfg(test)]
    panic_on: Option<String>,
}

/// `gravity_exporter_task_restarts_total{task}` (the supervisor's family), `task="log"` at 0.
fn task_restarts(store: &crate::metrics::Store) -> IntCounterVec {
    let v = store.tasks().restarts.clone();
    v.with_label_values(&["log"]).inc_by(0);
    v
}

impl LogWatcher {
    /// Registers the log metrics.
    pub fn new(ctx: Arc<Context>) -> LogWatcher {
        let counters = Counters::new(&ctx.store);
        let restarts = task_restarts(&ctx.store);
        LogWatcher {
            ctx,
            counters,
            restarts,
            tailer: None,
            format: None,
            last_fatal: None,
            last_write: None,
            last_saved: None,
            warned: None,
            seeded: Default::default(),
            pending: VecDeque::new(),
            started: SystemTime::now(),
            watch_dir: None,
            watch_stem: String::new(),
            more: false,
            closed: false,
            #[cfg(test)]
            panic_on: None,
        }
    }

    /// Ends the watcher for good (at shutdown, after its task was cancelled): a poll still
    /// on the blocking pool has finished when this returns (it holds the same lock), its
    /// position is saved, and no later poll reads anything.
    pub fn close(shared: &Mutex<LogWatcher>) {
        let mut g = shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        g.closed = true;
    }

    fn warn_once(&mut self, msg: String) {
        if self.warned.as_deref() != Some(&msg) {
            tracing::warn!(error = %msg, "gravity log");
            self.warned = Some(msg);
        }
    }

    /// The tailer for `logical`, resuming a saved state of the same log.
    fn new_tailer(&self, logical: &Path, path: &Path, state_file: Option<&Path>) -> Tailer {
        let settings = self.ctx.settings();
        let saved = state_file
            .and_then(load_state)
            .filter(|s| s.path.as_deref().is_none_or(|p| p == logical));
        let mut cfg = TailConfig::new(path);
        // A log created after the exporter started holds nothing but new lines. File times
        // are coarser than the clock (kernel ticks): a second of slack.
        let since = self
            .started
            .checked_sub(Duration::from_secs(1))
            .unwrap_or(self.started);
        // Decided by the tailer when it opens the file: the file may appear between now and
        // the first poll.
        cfg.new_if_born_after = Some(since);
        cfg.start_at_end = settings.log_start_at_end && saved.is_none();
        tracing::info!(path = %path.display(), resume = saved.is_some(), "following gravity's log");
        let (main, draining) = match saved {
            Some(s) => (s.main, s.draining),
            None => (None, Vec::new()),
        };
        let mut t = Tailer::new(cfg, main);
        t.resume_draining(&draining);
        t
    }

    /// One poll: reads what is new and counts it.
    pub fn poll(&mut self) {
        self.more = false;
        if self.closed {
            return;
        }
        crate::collector::exit::tick(&self.ctx);
        // Lines left over by a panic are counted first.
        let target = self.ctx.target();
        let pipeline = target.pipeline.clone();
        let redactor = target.redactor();
        if !self.pending.is_empty() {
            self.count(&pipeline, &PollReport::default(), &redactor);
        }
        let settings = self.ctx.settings();
        // While gravity's log is not known (any more), the last one is kept: never a reset
        // because gravity is down.
        let Some(logical) = target.log_file.clone() else {
            return;
        };
        let path = target
            .log_path(&settings.proc_root)
            .unwrap_or_else(|| logical.clone());
        let state_file = settings.log_state_file_for(&logical);
        let state_file = state_file.as_deref();
        match self.tailer.as_mut() {
            // The same log, maybe spelled differently (`/proc/<pid>/root/<path>` ↔ `<path>`):
            // the tailer knows the file by device + inode.
            Some(f) if f.logical == logical => f.tailer.set_path(&path),
            _ => {
                let tailer = self.new_tailer(&logical, &path, state_file);
                self.tailer = Some(Follow {
                    logical: logical.clone(),
                    tailer,
                });
                self.format = target.log_format.map(parser_format);
            }
        }
        let Some(follow) = self.tailer.as_mut() else {
            return;
        };
        let pending = &mut self.pending;
        let res = follow.tailer.poll(&mut |l: &str| {
            // Bounded by the tailer's per-poll read limit.
            pending.push_back(l.to_string());
        });
        let state = LogState {
            path: Some(logical),
            main: follow.tailer.state(),
            draining: follow.tailer.draining_states(),
        };
        self.watch_dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map(Path::to_path_buf);
        self.watch_stem = notify::stem(&path);
        match res {
            Ok(report) => {
                self.more = report.more;
                self.count(&pipeline, &report, &redactor);
                self.publish(&pipeline);
                if report.file_missing && state.main.is_none() && state.draining.is_empty() {
                    self.warn_once(format!("{} does not exist (yet)", path.display()));
                }
            }
            Err(e) => {
                // What was read before the error is still counted.
                self.count(&pipeline, &PollReport::default(), &redactor);
                self.publish(&pipeline);
                self.warn_once(e.to_string());
                return;
            }
        }
        if let Some(sf) = state_file {
            if self.last_saved.as_ref() != Some(&state) {
                match save_state(sf, &state) {
                    Ok(()) => self.last_saved = Some(state),
                    Err(e) => self.warn_once(format!(
                        "cannot save the log state to {}: {e}",
                        sf.display()
                    )),
                }
            }
        }
    }

    fn count(&mut self, pipeline: &str, report: &PollReport, redactor: &crate::redact::Redactor) {
        if self.format.is_none() && !self.pending.is_empty() {
            self.format = detect_format_votes(self.pending.iter().map(String::as_str), 50);
        }
        let format = self.format.unwrap_or(LogFormat::Json);
        // Not under the placeholder name used before gravity was found.
        let known = pipeline != "unknown" || self.ctx.up.is_up();
        if known
            && self.seeded.len() < crate::retry::MAX_SEEDED_PIPELINES
            && self.seeded.insert(pipeline.to_string())
        {
            for c in Component::ALL {
                let other = crate::log::classify::ErrorType::Other.as_str();
                self.counters
                    .errors
                    .with_label_values(&[pipeline, c.as_str(), other, "error"]);
            }
            let levels = [Level::Debug, Level::Info, Level::Warning, Level::Error];
            let levels = levels.into_iter().chain([Level::Fatal, Level::Panic]);
            for l in levels.map(Level::as_str).chain(["unknown"]) {
                self.counters.lines.with_label_values(&[pipeline, l]);
            }
        }
        while let Some(line) = self.pending.pop_front() {
            #[cfg(test)]
            if self.panic_on.as_deref().is_some_and(|p| line.contains(p)) {
                panic!("injected panic in the log watcher");
            }
            match parse_line(&line, format) {
                Ok(rec) => {
                    // the diagnosis counts retry causes and stuck-window / latch lines
                    crate::base::lock(&self.ctx.diag_log).note(&rec.msg);
                    let ev = Event {
                        level: rec.level,
                        class: classify(&rec),
                    };
                    if let Some(t) = self.ctx.entries.get().filter(|t| t.is_on()) {
                        t.submit(crate::log::entry::LogEntry::new(
                            &rec, ev.class, pipeline, &line, redactor,
                        ));
                    }
                    if let Some(e) = crate::collector::exit::evidence(rec.level, &rec.msg, ev.class)
                    {
                        let written = crate::collector::exit::record_time(rec.time);
                        self.ctx
                            .up
                            .exit
                            .observe_written(e, std::time::Instant::now(), written);
                    }
                    if ev.class.counts_as_error {
                        // For the status page: redacted and shortened before it is kept.
                        self.ctx.recent.record_error(
                            crate::state::recent::ErrorEvent::from_record(
                                &rec,
                                ev.class,
                                redactor,
                                unix_now(),
                            ),
                        );
                    }
                    self.event(pipeline, ev)
                }
                Err(e) if e.is_quiet() => {}
                Err(_) => self
                    .counters
                    .lines
                    .with_label_values(&[pipeline, "unknown"])
                    .inc(),
            }
        }
        if report.lines > 0 || report.bytes > 0 {
            self.last_write = Some(unix_now());
        }
        let p = [pipeline];
        self.counters
            .oversized
            .with_label_values(&p)
            .inc_by(report.oversized);
        self.counters
            .rotations
            .with_label_values(&p)
            .inc_by(report.rotations);
        self.counters
            .truncations
            .with_label_values(&p)
            .inc_by(report.truncations);
    }

    fn event(&mut self, pipeline: &str, ev: Event) {
        self.counters
            .lines
            .with_label_values(&[pipeline, ev.level.as_str()])
            .inc();
        let c = ev.class;
        if c.counts_as_error {
            self.ctx
                .log_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.counters
                .errors
                .with_label_values(&[
                    pipeline,
                    c.component.as_str(),
                    c.error_type.as_str(),
                    ev.level.as_str(),
                ])
                .inc();
        }
        if c.is_retry {
            if c.component == Component::Scheduler {
                self.ctx.retries.scheduler_reason(c.error_type.as_str());
            } else {
                self.ctx
                    .retries
                    .log_retry(pipeline, c.component.as_str(), c.error_type.as_str());
            }
        }
        if matches!(ev.level, Level::Fatal | Level::Panic) {
            self.last_fatal = Some(Fatal {
                class: c,
                at: unix_now(),
            });
        }
    }

    fn publish(&self, pipeline: &str) {
        let mut f = Families::new();
        let p = [("pipeline", pipeline)];
        if let Some(t) = self.last_write {
            f.gauge(
                "gravity_log_last_write_timestamp_seconds",
                "When gravity's log last grew (Unix time, as seen by the exporter).",
                &p,
                t,
            );
        }
        if let Some(fatal) = self.last_fatal {
            f.gauge(
                "gravity_last_fatal_info",
                "Always 1: the classified cause of gravity's last fatal or panic log line (why the last crash happened).",
                &[
                    ("pipeline", pipeline),
                    ("component", fatal.class.component.as_str()),
                    ("error_type", fatal.class.error_type.as_str()),
                ],
                1.0,
            );
            f.gauge(
                "gravity_last_fatal_timestamp_seconds",
                "When the exporter read gravity's last fatal or panic log line (Unix time).",
                &p,
                fatal.at,
            );
        }
        self.ctx.store.set_snapshot(SNAPSHOT, f);
    }

    /// Runs forever: each poll in a blocking task (file I/O), woken by inotify when the log's
    /// directory changes, else every [`SAFETY_POLL_INTERVAL`] (every [`POLL_INTERVAL`] when
    /// inotify is not available). A panic in a poll is caught: the watcher goes on with the
    /// same state (offsets, counters, lines not yet counted) and
    /// `gravity_exporter_task_restarts_total{task="log"}` counts it.
    pub async fn run(self) {
        Self::run_shared(Arc::new(Mutex::new(self))).await
    }

    /// [`LogWatcher::run`] on a shared watcher, so that the supervisor can start it again
    /// after a panic with the same state; each poll is a cycle of task `log`.
    pub async fn run_shared(shared: Arc<Mutex<LogWatcher>>) {
        let (restarts, ctx) = {
            let g = shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (g.restarts.clone(), g.ctx.clone())
        };
        let tasks = ctx.store.tasks().clone();
        // Ends when the settings' sender is gone (the exporter was stopped).
        let mut settings = ctx.settings.clone();
        let mut notify = match notify::DirWatch::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "inotify not available; polling gravity's log every 500 ms");
                None
            }
        };
        loop {
            let w = Arc::clone(&shared);
            let started = std::time::Instant::now();
            let polled = tokio::task::spawn_blocking(move || {
                let mut g = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                g.poll();
                (g.watch_dir.clone(), g.watch_stem.clone(), g.more)
            })
            .await;
            tasks.cycle("log", started.elapsed(), polled.is_ok());
            let (dir, stem, more) = match polled {
                Ok(watch) => watch,
                Err(e) if e.is_panic() => {
                    shared.clear_poison();
                    restarts.with_label_values(&["log"]).inc();
                    tracing::error!(
                        "log watcher panicked; restarted with its state (offsets kept)"
                    );
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "log watcher cancelled");
                    return;
                }
            };
            if more {
                // A backlog (exporter restart, burst): the next slice at once, not at the
                // next event or safety poll.
                tokio::task::yield_now().await;
                continue;
            }
            let mut fresh = false;
            let watching = match (notify.as_mut(), dir) {
                (Some(n), Some(d)) => match n.watch(&d) {
                    Ok(new) => {
                        fresh = new;
                        true
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, dir = %d.display(), "cannot watch the log directory; polling");
                        false
                    }
                },
                _ => false,
            };
            if fresh {
                // Changes between the poll and the new watch raised no event: look again
                // now rather than at the safety poll.
                continue;
            }
            let stopped = match notify.as_ref() {
                Some(n) if watching => {
                    tokio::select! {
                        r = n.changed(&stem) => {
                            if let Err(e) = r {
                                tracing::warn!(error = %e, "inotify failed; polling gravity's log every 500 ms");
                                notify = None;
                            } else {
                                // Coalesce a burst of writes into one poll.
                                tokio::time::sleep(COALESCE).await;
                            }
                            false
                        }
                        r = settings.changed() => r.is_err(),
                        _ = tokio::time::sleep(SAFETY_POLL_INTERVAL) => false,
                    }
                }
                _ => tokio::select! {
                    r = settings.changed() => r.is_err(),
                    _ = tokio::time::sleep(POLL_INTERVAL) => false,
                },
            };
            if stopped {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::classify::ErrorType;

    #[test]
    fn ingest_reference_lines() {
        let log = include_str!("../../tests/fixtures/gravity.log");
        let events: Vec<Event> = log
            .lines()
            .filter_map(|l| ingest(l, LogFormat::Json).ok())
            .collect();
        assert_eq!(events.len(), log.lines().count());
        let fatals: Vec<&Event> = events.iter().filter(|e| e.level == Level::Fatal).collect();
        assert_eq!(fatals.len(), 3);
        assert_eq!(fatals[0].class.error_type, ErrorType::ServerBusy);
        assert_eq!(fatals[1].class.error_type, ErrorType::Ddl);
        assert_eq!(fatals[2].class.error_type, ErrorType::Connection);
        let retries = events.iter().filter(|e| e.class.is_retry).count();
        assert_eq!(retries, 6);
    }

    #[test]
    fn state_file_roundtrip_is_atomic() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub").join("state.json");
        assert!(load_state(&p).is_none());
        let ts = |dev, ino, offset| TailState { dev, ino, offset };
        let st = LogState {
            path: Some("/var/log/gravity.log".into()),
            main: Some(ts(1, 2, 3)),
            draining: vec![ts(1, 7, 9)],
        };
        save_state(&p, &st).unwrap();
        assert_eq!(load_state(&p), Some(st));
        // between a deletion and the next file
        let gap = LogState {
            path: None,
            main: None,
            draining: vec![],
        };
        save_state(&p, &gap).unwrap();
        assert_eq!(load_state(&p), Some(gap));
        // what an older exporter wrote still reads
        std::fs::write(&p, ts(4, 5, 6).to_json()).unwrap();
        assert_eq!(
            load_state(&p),
            Some(LogState {
                path: None,
                main: Some(ts(4, 5, 6)),
                draining: vec![]
            })
        );
        std::fs::write(&p, "garbage").unwrap();
        assert!(load_state(&p).is_none());
        std::fs::write(&p, r#"{"dev":1,"ino":2,"offset":3,"draining":[{"dev":1}]}"#).unwrap();
        assert!(load_state(&p).is_none());
    }

    /// A context and its settings' sender (the watcher stops when the sender is dropped).
    fn context(
        args: &[&str],
    ) -> (
        Arc<Context>,
        tokio::sync::watch::Sender<Arc<crate::config::Settings>>,
    ) {
        let mut v = vec!["gravity-exporter"];
        v.extend_from_slice(args);
        let cli = <crate::config::Cli as clap::Parser>::try_parse_from(v).unwrap();
        let settings = crate::config::Settings::from_flags(cli.flags).unwrap();
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(settings));
        (Context::new(rx, Arc::new(crate::metrics::Store::new())), tx)
    }

    fn sample(ctx: &Context, name: &str, needle: &str) -> Option<f64> {
        ctx.store
            .render()
            .lines()
            .find(|l| l.starts_with(name) && l.contains(needle))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse().ok())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_restarts_the_watcher_with_its_state() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("gravity.log");
        let state = d.path().join("state.json");
        let (ctx, tx) = context(&[
            "--gravity.pid-file",
            "/nonexistent/gravity.pid",
            "--gravity.log-file",
            log.to_str().unwrap(),
            "--gravity.log-state-file",
            state.to_str().unwrap(),
        ]);
        let mut w = LogWatcher::new(ctx.clone());
        assert_eq!(
            sample(&ctx, "gravity_exporter_task_restarts_total", "task=\"log\""),
            Some(0.0)
        );
        w.panic_on = Some("POISON".into());
        let line = |level: &str, msg: &str| {
            format!("{{\"level\":\"{level}\",\"msg\":\"{msg}\",\"time\":\"2026-11-22T14:05:33+08:00\"}}\n")
        };
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&line("info", &format!("before {i}")));
        }
        text.push_str(&line("error", "POISON"));
        for i in 0..10 {
            text.push_str(&line("warning", &format!("after {i}")));
        }
        std::fs::write(&log, text).unwrap();
        let task = tokio::spawn(w.run());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while sample(&ctx, "gravity_log_lines_total", "level=\"warning\"") != Some(10.0) {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                ctx.store.render()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            sample(&ctx, "gravity_exporter_task_restarts_total", "task=\"log\""),
            Some(1.0)
        );
        // Nothing counted twice, nothing but the poisoned line lost.
        assert_eq!(
            sample(&ctx, "gravity_log_lines_total", "level=\"info\""),
            Some(10.0)
        );
        assert_eq!(
            sample(&ctx, "gravity_log_lines_total", "level=\"error\""),
            None
        );
        // And it keeps following.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .and_then(|mut f| std::io::Write::write_all(&mut f, line("info", "later").as_bytes()))
            .unwrap();
        while sample(&ctx, "gravity_log_lines_total", "level=\"info\"") != Some(11.0) {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                ctx.store.render()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Stopping the exporter (its settings' sender gone) ends the watcher.
        drop(tx);
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("the watcher ends with the exporter")
            .unwrap();
    }
}
