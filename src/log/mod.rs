//! gravity's log, turned into classified errors, retries and exit causes.
//!
//! gravity has no error metric: its errors are log lines and exits. This module follows the
//! log ([`tail`]), parses each line in gravity's json, text or console format ([`record`]),
//! classifies warnings and errors by component and cause ([`classify`]), and exports:
//! - `gravity_error_total{pipeline,component,error_type,level}`: error, fatal and panic lines,
//!   plus warnings that carry a cause;
//! - `gravity_retry_total` (through [`crate::retry::RetryLedger`]): retry lines; the
//!   scheduler's sync-output retries lend their cause to gravity's own retry counter, the
//!   others (Kafka, binlog reconnects) count directly;
//! - `gravity_log_lines_total{pipeline,level}`, the time of the last log write, tailer events;
//! - `gravity_last_fatal_info{pipeline,component,error_type}` and its time: why the last
//!   crash happened, so a crash loop shows why it dies;
//! - for the status page, the last classified error lines, passwords masked, in
//!   [`crate::page::recent::Recent`].
//!
//! Labels come only from closed enums, so cardinality is bounded whatever the log holds.
//! The read offset is saved to `--gravity.log-state-file` after each poll (atomically), so
//! an exporter restart neither misses nor double-counts a line.

pub mod classify;
pub mod record;
pub mod tail;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts};

use crate::collector::{unix_now, Context};
use crate::config::GravityLogFormat;
use crate::metrics::Families;
use classify::{classify, Classification, Component};
use record::{detect_format_votes, parse_line, Level, LogFormat};
use tail::{PollReport, TailConfig, TailState, Tailer};

/// How often the log is polled.
pub const POLL_INTERVAL: Duration = Duration::from_millis(500);
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

/// Reads a saved tail state (a missing or bad file means none).
pub fn load_state(path: &Path) -> Option<TailState> {
    let text = std::fs::read_to_string(path).ok()?;
    TailState::from_json(&text).ok()
}

/// Saves the tail state atomically (temp file + rename).
pub fn save_state(path: &Path, st: &TailState) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, st.to_json())?;
    std::fs::rename(&tmp, path)
}

/// The log follower task.
pub struct LogWatcher {
    ctx: Arc<Context>,
    counters: Counters,
    tailer: Option<(PathBuf, Tailer)>,
    format: Option<LogFormat>,
    last_fatal: Option<Fatal>,
    last_write: Option<f64>,
    last_saved: Option<TailState>,
    warned: Option<String>,
    /// Pipelines whose `gravity_error_total{error_type="other"}` and `gravity_log_lines_total` series exist at 0.
    seeded: std::collections::HashSet<String>,
}

impl LogWatcher {
    /// Registers the log metrics.
    pub fn new(ctx: Arc<Context>) -> LogWatcher {
        let counters = Counters::new(&ctx.store);
        LogWatcher {
            ctx,
            counters,
            tailer: None,
            format: None,
            last_fatal: None,
            last_write: None,
            last_saved: None,
            warned: None,
            seeded: Default::default(),
        }
    }

    fn warn_once(&mut self, msg: String) {
        if self.warned.as_deref() != Some(&msg) {
            tracing::warn!(error = %msg, "gravity log");
            self.warned = Some(msg);
        }
    }

    /// One poll: reads what is new and counts it.
    pub fn poll(&mut self) {
        crate::collector::exit::tick(&self.ctx);
        let target = self.ctx.target();
        let settings = self.ctx.settings();
        let Some(path) = target.log_path(&settings.proc_root) else {
            self.tailer = None;
            return;
        };
        if self
            .tailer
            .as_ref()
            .map(|(p, _)| p != &path)
            .unwrap_or(true)
        {
            // The same file under another path (gravity restarted: /proc/<new pid>/root/...)
            // goes on from where the last tailer was, not from the end: the last lines of
            // the incarnation that ended are what says why it ended.
            let same_file = |st: &TailState| {
                use std::os::unix::fs::MetadataExt;
                std::fs::metadata(&path).is_ok_and(|m| m.dev() == st.dev && m.ino() == st.ino)
            };
            let saved = self
                .tailer
                .as_ref()
                .and_then(|(_, t)| t.state())
                .filter(same_file)
                .or_else(|| settings.log_state_file.as_deref().and_then(load_state));
            let mut cfg = TailConfig::new(&path);
            cfg.start_at_end = settings.log_start_at_end;
            tracing::info!(path = %path.display(), resume = saved.is_some(), "following gravity's log");
            self.tailer = Some((path.clone(), Tailer::new(cfg, saved)));
            self.format = target.log_format.map(parser_format);
        }
        let pipeline = target.pipeline.clone();
        let Some((_, tailer)) = self.tailer.as_mut() else {
            return;
        };
        let mut lines: Vec<String> = Vec::new();
        let res = tailer.poll(&mut |l: &str| {
            // Bounded by the tailer's per-poll read limit.
            lines.push(l.to_string());
        });
        let state = tailer.state();
        match res {
            Ok(report) => {
                let redactor = crate::page::redact::Redactor::from_target(&target);
                self.count(&pipeline, &lines, &report, &redactor);
                if report.file_missing {
                    self.warn_once(format!("{} does not exist (yet)", path.display()));
                }
            }
            Err(e) => {
                self.warn_once(e.to_string());
                return;
            }
        }
        if let (Some(sf), Some(st)) = (settings.log_state_file.as_deref(), state) {
            if self.last_saved.as_ref() != Some(&st) {
                match save_state(sf, &st) {
                    Ok(()) => self.last_saved = Some(st),
                    Err(e) => self.warn_once(format!(
                        "cannot save the log state to {}: {e}",
                        sf.display()
                    )),
                }
            }
        }
        self.publish(&pipeline);
    }

    fn count(
        &mut self,
        pipeline: &str,
        lines: &[String],
        report: &PollReport,
        redactor: &crate::page::redact::Redactor,
    ) {
        if self.format.is_none() && !lines.is_empty() {
            self.format = detect_format_votes(lines.iter().map(String::as_str), 50);
        }
        let format = self.format.unwrap_or(LogFormat::Json);
        // Not under the placeholder name used before gravity was found.
        let known = pipeline != "unknown" || self.ctx.up.is_up();
        if known
            && self.seeded.len() < crate::retry::MAX_SEEDED_PIPELINES
            && self.seeded.insert(pipeline.to_string())
        {
            for c in Component::ALL {
                let other = classify::ErrorType::Other.as_str();
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
        for line in lines {
            match parse_line(line, format) {
                Ok(rec) => {
                    let ev = Event {
                        level: rec.level,
                        class: classify(&rec),
                    };
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
                        self.ctx
                            .recent
                            .record_error(crate::page::recent::ErrorEvent::from_record(
                                &rec,
                                ev.class,
                                redactor,
                                unix_now(),
                            ));
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

    /// Runs forever, polling in a blocking task (file I/O).
    pub async fn run(self) {
        let mut me = Some(self);
        loop {
            let Some(w) = me.take() else { return };
            match tokio::task::spawn_blocking(move || {
                let mut w = w;
                w.poll();
                w
            })
            .await
            {
                Ok(w) => me = Some(w),
                Err(e) => {
                    tracing::error!(error = %e, "log watcher failed; log metrics stop");
                    return;
                }
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use classify::ErrorType;

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
        let p = d.path().join("state.json");
        assert!(load_state(&p).is_none());
        let st = TailState {
            dev: 1,
            ino: 2,
            offset: 3,
        };
        save_state(&p, &st).unwrap();
        assert_eq!(load_state(&p), Some(st));
        std::fs::write(&p, "garbage").unwrap();
        assert!(load_state(&p).is_none());
    }
}
