//! `gravity-exporter check`: every health check once, for a person, a script or Nagios.
//!
//! It finds gravity like the exporter does, runs each collector once (process, `/healthz`,
//! `/status`, gravity's `/metrics`, sockets, the source's binlogs), probes the endpoints once
//! (unless `--probe.interval 0s`), counts the error lines of the last 5 minutes in gravity's
//! log, and evaluates the same seven checks as `gravity_health_check` ([`crate::health`]).
//!
//! Text output is a Nagios plugin's: one status line with perfdata, then one line per
//! check. Exit codes: 0 OK, 1 WARNING (only the log or resource checks fail), 2 CRITICAL,
//! 3 UNKNOWN (the check itself could not run, e.g. a bad flag).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::collector::connections::ConnectionProber;
use crate::collector::{Context, Runner};
use crate::config::Settings;
use crate::health::{self, Check, ERROR_WINDOW};
use crate::log::record::{detect_format_votes, LogFormat};
use crate::metrics::Store;
use crate::watch::Watcher;

/// Most bytes read from the end of gravity's log to count recent errors.
pub const LOG_TAIL_BYTES: u64 = 4 * 1024 * 1024;

/// The verdict of one run.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// Pipeline.
    pub pipeline: String,
    /// The checks.
    pub checks: Vec<Check>,
    /// Figures for perfdata: (name, value, unit).
    pub perf: Vec<(String, f64, &'static str)>,
}

impl Verdict {
    /// Nagios code.
    pub fn code(&self) -> i32 {
        health::nagios_code(&self.checks)
    }

    fn word(&self) -> &'static str {
        match self.code() {
            0 => "OK",
            1 => "WARNING",
            _ => "CRITICAL",
        }
    }

    /// A Nagios plugin's output: status line with perfdata, then one line per check.
    pub fn text(&self) -> String {
        let passing = self.checks.iter().filter(|c| c.ok).count();
        let failing: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} ({})", c.name, c.detail.replace('|', "/")))
            .collect();
        let mut perf = vec![format!("score={passing};;;0;{}", self.checks.len())];
        perf.extend(self.perf.iter().map(|(n, v, u)| format!("{n}={v}{u}")));
        let mut out = format!(
            "GRAVITY {} - pipeline {}: {passing}/{} checks pass{} | {}\n",
            self.word(),
            self.pipeline.replace('|', "/"),
            self.checks.len(),
            if failing.is_empty() {
                String::new()
            } else {
                format!("; failing: {}", failing.join("; "))
            },
            perf.join(" ")
        );
        for c in &self.checks {
            out.push_str(&format!(
                "{} {}: {}\n",
                if c.ok {
                    "PASS"
                } else if c.critical {
                    "FAIL(critical)"
                } else {
                    "FAIL(warning)"
                },
                c.name,
                c.detail
            ));
        }
        out
    }

    /// The same as JSON.
    pub fn json(&self) -> String {
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "critical": c.critical, "detail": c.detail}))
            .collect();
        let perf: serde_json::Map<String, serde_json::Value> = self
            .perf
            .iter()
            .map(|(n, v, _)| (n.clone(), serde_json::json!(v)))
            .collect();
        serde_json::json!({
            "status": self.word(),
            "code": self.code(),
            "pipeline": self.pipeline,
            "score": self.checks.iter().filter(|c| c.ok).count(),
            "checks_total": self.checks.len(),
            "checks": checks,
            "perfdata": perf,
        })
        .to_string()
    }
}

/// Counts error lines (as `gravity_error_total` counts them) written in the last `window`,
/// from the last [`LOG_TAIL_BYTES`] of the log (pure but for the file read).
pub fn recent_errors(
    path: &Path,
    format: Option<LogFormat>,
    now: OffsetDateTime,
    window: Duration,
) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return 0;
    }
    let mut buf = Vec::with_capacity(usize::try_from(len - start).unwrap_or(0));
    if f.take(LOG_TAIL_BYTES).read_to_end(&mut buf).is_err() {
        return 0;
    }
    let text = String::from_utf8_lossy(&buf);
    // a partial first line when starting mid-file
    let body = if start > 0 {
        text.split_once('\n').map(|(_, b)| b).unwrap_or("")
    } else {
        &text
    };
    let format = format
        .or_else(|| detect_format_votes(body.lines(), 50))
        .unwrap_or(LogFormat::Json);
    let since = now - window;
    body.lines()
        .filter_map(|l| crate::log::record::parse_line(l, format).ok())
        .filter(|r| {
            r.time
                .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok())
                .is_some_and(|t| t >= since)
        })
        .filter(|r| crate::log::classify::classify(r).counts_as_error)
        .count() as u64
}

/// Runs every check once.
pub async fn run(settings: Settings) -> Verdict {
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings.clone()));
    let ctx = Context::new(rx, Arc::new(Store::new()));
    let mut watcher = Watcher::new(ctx.clone());
    watcher.tick();
    let collectors: Vec<_> = crate::app::collectors(&ctx.store)
        .into_iter()
        .filter(|c| !c.derived())
        .collect();
    let runner = Runner::new(ctx.clone(), collectors);
    let prober = ConnectionProber::new(ctx.clone());
    let timeout = settings.gravity_timeout + Duration::from_secs(1);
    if settings.probe_interval.is_some() {
        // the status read first (the source check compares with gravity's position), probes alongside
        tokio::join!(
            runner.run_once(timeout),
            prober.probe_once(settings.probe_timeout)
        );
    } else {
        runner.run_once(timeout).await;
    }
    let target = ctx.target();
    let recent = target
        .log_path(&settings.proc_root)
        .map(|p| {
            recent_errors(
                &p,
                target.log_format.map(crate::log::parser_format),
                OffsetDateTime::now_utc(),
                ERROR_WINDOW,
            )
        })
        .unwrap_or(0);
    let checks = health::evaluate(&health::inputs(&ctx, recent));
    let mut perf = Vec::new();
    if let Some(st) = ctx.store.snapshot("status") {
        let max = |name: &str| {
            st.samples(name)
                .into_iter()
                .map(|(_, v)| v)
                .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
        };
        if let Some(v) = max("gravity_watermark_lag_seconds") {
            perf.push((
                "lag_seconds".to_string(),
                (v * 1000.0).round() / 1000.0,
                "s",
            ));
        }
        if let Some(v) = max("gravity_watermark_stall_seconds") {
            perf.push((
                "stall_seconds".to_string(),
                (v * 1000.0).round() / 1000.0,
                "s",
            ));
        }
    }
    // Privileges the exporter's source user lacks (gravity_source_privilege_missing).
    if let Some(src) = ctx.store.snapshot("source") {
        for (l, v) in src.samples("gravity_source_privilege_missing") {
            let privilege = l
                .iter()
                .find(|(k, _)| k == "privilege")
                .map(|(_, v)| v.to_lowercase().replace(' ', "_"))
                .unwrap_or_default();
            perf.push((format!("source_missing_{privilege}"), v, ""));
        }
    }
    // COM_QUIT on the MySQL connections this run opened.
    ctx.mysql.close_all(settings.probe_timeout).await;
    perf.push(("up".to_string(), if ctx.up.is_up() { 1.0 } else { 0.0 }, ""));
    perf.push(("recent_errors".to_string(), recent as f64, ""));
    Verdict {
        pipeline: target.pipeline.clone(),
        checks,
        perf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn recent_errors_counts_the_window_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("g.log");
        std::fs::write(&p, include_str!("../tests/fixtures/gravity.log")).unwrap();
        // the fixture's lines run 14:00–14:16 +08:00 (06:00–06:16Z)
        let all = recent_errors(
            &p,
            None,
            datetime!(2026-11-22 06:20 UTC),
            Duration::from_secs(3600),
        );
        let last5 = recent_errors(
            &p,
            None,
            datetime!(2026-11-22 06:16:30 UTC),
            Duration::from_secs(300),
        );
        let none = recent_errors(
            &p,
            None,
            datetime!(2026-11-22 08:00 UTC),
            Duration::from_secs(300),
        );
        assert!(all > last5 && last5 > 0, "{all} {last5}");
        // 14:12–14:16:30: the sliding_window warning and the 1146 error
        assert_eq!(last5, 2);
        assert_eq!(none, 0);
        assert_eq!(
            recent_errors(
                &d.path().join("missing"),
                None,
                datetime!(2026-11-22 08:00 UTC),
                Duration::from_secs(300)
            ),
            0
        );
    }

    #[test]
    fn text_is_a_nagios_status_line() {
        let v = Verdict {
            pipeline: "p".into(),
            checks: vec![
                Check {
                    name: "process_running",
                    ok: true,
                    detail: "ok".into(),
                    critical: true,
                },
                Check {
                    name: "log_healthy",
                    ok: false,
                    detail: "3 error lines | x".into(),
                    critical: false,
                },
            ],
            perf: vec![("lag_seconds".into(), 0.8, "s")],
        };
        assert_eq!(v.code(), 1);
        let t = v.text();
        let first = t.lines().next().unwrap();
        assert!(
            first
                .starts_with("GRAVITY WARNING - pipeline p: 1/2 checks pass; failing: log_healthy"),
            "{first}"
        );
        assert_eq!(
            first.matches('|').count(),
            1,
            "one perfdata separator: {first}"
        );
        assert!(
            first.ends_with("| score=1;;;0;2 lag_seconds=0.8s"),
            "{first}"
        );
        let j: serde_json::Value = serde_json::from_str(&v.json()).unwrap();
        assert_eq!(j["status"], "WARNING");
        assert_eq!(j["checks"][1]["ok"], false);
    }
}
