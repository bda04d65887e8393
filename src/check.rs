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
#![warn(clippy::arithmetic_side_effects)]

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
    /// Which stage holds the pipeline back, over the check's own short window (two readings
    /// of gravity's `/metrics` [`DIAGNOSIS_GAP`] apart); `None`: gravity's `/metrics` was not read.
    pub diagnosis: Option<crate::diagnosis::Diagnosis>,
}

/// Time between the check's two readings of gravity's `/metrics` for the diagnosis.
pub const DIAGNOSIS_GAP: Duration = Duration::from_secs(2);

/// One line for a diagnosis: the stage, the rule, the finding, the first suggestion.
pub fn diagnosis_line(d: &crate::diagnosis::Diagnosis) -> String {
    let case = serde_json::to_value(d.case)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut line = format!(
        "DIAGNOSIS bottleneck={} case={case}: {}",
        d.bottleneck.as_str(),
        d.finding
    );
    if let Some(s) = d.suggestions.first() {
        let num = |x: Option<f64>| x.map(|x| format!("{x}")).unwrap_or_else(|| "?".into());
        match s.setting {
            Some(name) => line.push_str(&format!(
                " | suggest {name} {} -> {} ({})",
                num(s.current),
                num(s.suggested),
                s.reason
            )),
            None => line.push_str(&format!(" | {}", s.reason)),
        }
    }
    line.replace('\n', " ")
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
        let passing = health::score(&self.checks);
        let evaluated = health::evaluated(&self.checks);
        let not_checked: Vec<&str> = self
            .checks
            .iter()
            .filter(|c| !c.evaluated)
            .map(|c| c.name)
            .collect();
        let failing: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{} ({})", c.name, c.detail.replace('|', "/")))
            .collect();
        let mut perf = vec![format!("score={passing};;;0;{evaluated}")];
        perf.extend(self.perf.iter().map(|(n, v, u)| format!("{n}={v}{u}")));
        let mut out = format!(
            "GRAVITY {} - pipeline {}: {passing}/{evaluated} checks pass{}{} | {}\n",
            self.word(),
            self.pipeline.replace('|', "/"),
            if not_checked.is_empty() {
                String::new()
            } else {
                format!(
                    " ({} not checked: {})",
                    not_checked.len(),
                    not_checked.join(", ")
                )
            },
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
                if !c.evaluated {
                    "NOT CHECKED"
                } else if c.ok {
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
        if let Some(d) = &self.diagnosis {
            out.push_str(&diagnosis_line(d));
            out.push('\n');
        }
        out
    }

    /// The same as JSON.
    pub fn json(&self) -> String {
        let checks: Vec<serde_json::Value> = self
            .checks
            .iter()
            .map(|c| serde_json::json!({"name": c.name, "ok": c.ok, "evaluated": c.evaluated, "critical": c.critical, "detail": c.detail}))
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
            "score": health::score(&self.checks),
            "checks_evaluated": health::evaluated(&self.checks),
            "checks_total": self.checks.len(),
            "checks": checks,
            "perfdata": perf,
            "diagnosis": self.diagnosis,
        })
        .to_string()
    }
}

/// Counts error lines (as `gravity_error_total` counts them) written in the last `window`,
/// from the last [`LOG_TAIL_BYTES`] of the log (pure but for the file read).
///
/// Record times: RFC 3339 (any zone), or gravity's default `2006/01/02 15:04:05[.000]`
/// without a zone, whose zone is taken from the file: the newest such stamp was written
/// when the file was last modified, so `mtime − stamp` (rounded to 15 minutes) is the
/// zone's offset. A record without a time it can read (a Go `panic:` or `fatal error:`
/// line, an unknown stamp) takes the time of the next record that has one, and at the end
/// of the file its modification time: never older than it can be, so a crash at the tail
/// of the log always counts as recent.
pub fn recent_errors(
    path: &Path,
    format: Option<LogFormat>,
    now: OffsetDateTime,
    window: Duration,
) -> u64 {
    let Ok(mut f) = std::fs::File::open(path) else {
        return 0;
    };
    let meta = f.metadata().ok();
    let len = meta.as_ref().map(|m| m.len()).unwrap_or(0);
    let mtime = meta
        .and_then(|m| m.modified().ok())
        .map(OffsetDateTime::from)
        .unwrap_or(now);
    let start = len.saturating_sub(LOG_TAIL_BYTES);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return 0;
    }
    let mut buf = Vec::with_capacity(usize::try_from(len.saturating_sub(start)).unwrap_or(0));
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
    let since = i64::try_from(window.as_secs())
        .ok()
        .and_then(|w| now.checked_sub(time::Duration::seconds(w)))
        .unwrap_or(now);
    // (time as written, counts as an error)
    let records: Vec<(Option<Stamp>, bool)> = body
        .lines()
        .filter_map(|l| crate::log::record::parse_line(l, format).ok())
        .map(|r| {
            (
                r.time.and_then(Stamp::parse),
                crate::log::classify::classify(&r).counts_as_error,
            )
        })
        .collect();
    let offset = records
        .iter()
        .rev()
        .find_map(|(t, _)| match t {
            Some(Stamp::Local(p)) => Some(zone_from_mtime(*p, mtime)),
            _ => None,
        })
        .unwrap_or(time::UtcOffset::UTC);
    let mut next = mtime;
    let mut count = 0u64;
    for (t, is_error) in records.iter().rev() {
        let at = match t {
            Some(Stamp::Zoned(t)) => *t,
            Some(Stamp::Local(p)) => p.assume_offset(offset),
            None => next,
        };
        next = at;
        if *is_error && at >= since {
            count = count.saturating_add(1);
        }
    }
    count
}

/// A record's time as written.
#[derive(Debug, Clone, Copy)]
enum Stamp {
    /// RFC 3339.
    Zoned(OffsetDateTime),
    /// gravity's default `2006/01/02 15:04:05.000` (the zone is gravity's local one).
    Local(time::PrimitiveDateTime),
}

impl Stamp {
    fn parse(s: &str) -> Option<Stamp> {
        let s = s.trim();
        if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
            return Some(Stamp::Zoned(t));
        }
        let go = time::macros::format_description!(
            "[year]/[month]/[day] [hour]:[minute]:[second][optional [.[subsecond]]]"
        );
        time::PrimitiveDateTime::parse(s, go).ok().map(Stamp::Local)
    }
}

/// The zone offset that makes the zoneless `newest` stamp the file's modification time,
/// rounded to 15 minutes; UTC if that is not a real zone (more than 14 hours).
fn zone_from_mtime(newest: time::PrimitiveDateTime, mtime: OffsetDateTime) -> time::UtcOffset {
    // Both are within the time crate's ±9999 years: the difference always fits.
    #[allow(clippy::arithmetic_side_effects)]
    let diff = newest.assume_utc() - mtime;
    let quarter = (diff.whole_seconds() as f64 / 900.0).round() as i64;
    let secs = quarter.saturating_mul(900);
    if secs.abs() > 14 * 3600 {
        return time::UtcOffset::UTC;
    }
    i32::try_from(secs)
        .ok()
        .and_then(|s| time::UtcOffset::from_whole_seconds(s).ok())
        .unwrap_or(time::UtcOffset::UTC)
}

/// What `check` found: one verdict per pipeline checked, or why none could be.
#[derive(Debug, Clone)]
pub struct Report {
    /// The verdicts, sorted by pipeline.
    pub verdicts: Vec<Verdict>,
    /// Why nothing could be checked (UNKNOWN): a pipeline named that does not exist, two
    /// config files naming one pipeline.
    pub unknown: Option<String>,
}

impl Report {
    /// The worst code of all (CRITICAL over UNKNOWN over WARNING over OK).
    pub fn code(&self) -> i32 {
        if self.unknown.is_some() {
            return 3;
        }
        self.verdicts
            .iter()
            .map(Verdict::code)
            .max_by_key(|c| crate::page::overview::worst_rank(*c))
            .unwrap_or(3)
    }

    fn word(&self) -> &'static str {
        match self.code() {
            0 => "OK",
            1 => "WARNING",
            2 => "CRITICAL",
            _ => "UNKNOWN",
        }
    }

    /// One pipeline: its verdict as a Nagios plugin writes it. Several: a status line with
    /// the worst verdict and one line per pipeline, then each pipeline's checks.
    pub fn text(&self) -> String {
        if let Some(why) = &self.unknown {
            return format!("GRAVITY UNKNOWN - {}\n", why.replace('\n', " "));
        }
        if let [one] = self.verdicts.as_slice() {
            return one.text();
        }
        let count = |code: i32| self.verdicts.iter().filter(|v| v.code() == code).count();
        let mut out = format!(
            "GRAVITY {} - {} pipelines: {} OK, {} WARNING, {} CRITICAL | pipelines={} critical={} warning={}\n",
            self.word(),
            self.verdicts.len(),
            count(0),
            count(1),
            count(2),
            self.verdicts.len(),
            count(2),
            count(1)
        );
        for v in &self.verdicts {
            out.push_str(&format!(
                "PIPELINE {} {}: {}/{} checks pass\n",
                v.pipeline.replace(['|', '\n'], "/"),
                v.word(),
                health::score(&v.checks),
                health::evaluated(&v.checks)
            ));
        }
        for v in &self.verdicts {
            out.push_str(&v.text());
        }
        out
    }

    /// JSON: one pipeline's object as before; several: `status`, `code` and `pipelines`.
    pub fn json(&self) -> String {
        if let Some(why) = &self.unknown {
            return serde_json::json!({"status": "UNKNOWN", "code": 3, "error": why}).to_string();
        }
        if let [one] = self.verdicts.as_slice() {
            return one.json();
        }
        let each: Vec<serde_json::Value> = self
            .verdicts
            .iter()
            .filter_map(|v| serde_json::from_str(&v.json()).ok())
            .collect();
        serde_json::json!({"status": self.word(), "code": self.code(), "pipelines": each})
            .to_string()
    }
}

/// Checks every pipeline the exporter would watch with these settings (one per
/// `--gravity.config` file, one per gravity process running, or the only one), each once
/// and all at the same time; with `only`, just the pipeline of that name.
pub async fn run_all(settings: Settings, only: Option<String>) -> Report {
    let origins = match crate::app::initial_pipelines(&settings) {
        Ok(o) => o,
        Err(e) => {
            return Report {
                verdicts: Vec::new(),
                unknown: Some(e.to_string()),
            }
        }
    };
    let mut set = tokio::task::JoinSet::new();
    for origin in origins {
        // a config file says its name: the others need not be checked
        if let (Some(want), crate::fleet::Origin::ConfigFile(f)) = (&only, &origin) {
            if &crate::fleet::name_of(f) != want {
                continue;
            }
        }
        let s = crate::fleet::settings_for(&settings, &origin);
        let pin = match origin {
            crate::fleet::Origin::Discovered(id) => Some(id),
            _ => None,
        };
        set.spawn(run_pinned(s, pin));
    }
    let mut verdicts = Vec::new();
    while let Some(v) = set.join_next().await {
        if let Ok(v) = v {
            verdicts.push(v);
        }
    }
    verdicts.sort_by(|a, b| a.pipeline.cmp(&b.pipeline));
    if let Some(want) = &only {
        let names: Vec<String> = verdicts.iter().map(|v| v.pipeline.clone()).collect();
        verdicts.retain(|v| &v.pipeline == want);
        if verdicts.is_empty() {
            return Report {
                verdicts,
                unknown: Some(format!(
                    "no pipeline named {want}; pipelines: {}",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                )),
            };
        }
    }
    Report {
        verdicts,
        unknown: None,
    }
}

/// Runs every check once, for the one pipeline of the settings.
pub async fn run(settings: Settings) -> Verdict {
    run_pinned(settings, None).await
}

/// [`run`] for a pipeline that keeps to the config file `pin` (one of several found running).
async fn run_pinned(settings: Settings, pin: Option<crate::discovery::FileId>) -> Verdict {
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings.clone()));
    let ctx = Context::new(rx, Arc::new(Store::new()));
    if let Some(id) = pin {
        let _ = ctx.pin.set(id);
    }
    let mut watcher = Watcher::new(ctx.clone());
    watcher.tick();
    let collectors: Vec<_> = crate::app::collectors(&ctx.store)
        .into_iter()
        .filter(|c| !c.derived())
        .collect();
    let runner = Runner::new(ctx.clone(), collectors);
    let prober = ConnectionProber::new(ctx.clone());
    let timeout = settings
        .gravity_timeout
        .saturating_add(Duration::from_secs(1));
    if settings.probe_interval.is_some() {
        // the status read first (the source check compares with gravity's position), probes alongside
        tokio::join!(
            runner.run_once(timeout),
            prober.probe_once(settings.probe_timeout)
        );
    } else {
        runner.run_once(timeout).await;
    }
    // A second reading of gravity's /metrics, for the diagnosis' window (rates and deltas).
    if lock_len(&ctx) == 1 {
        tokio::time::sleep(DIAGNOSIS_GAP).await;
        let again = Runner::new(
            ctx.clone(),
            vec![Arc::new(
                crate::collector::gravity_metrics::GravityMetricsCollector::new(&ctx.store),
            )],
        );
        again.run_once(timeout).await;
    }
    ctx.state
        .diagnosis
        .set(crate::collector::diagnosis::diagnose_window(&ctx));
    let target = ctx.target();
    let recent = target
        .log_path(&settings.proc_root)
        .map(|p| {
            recent_errors(
                &p,
                target.log_format.map(crate::follow::parser_format),
                OffsetDateTime::now_utc(),
                ERROR_WINDOW,
            )
        })
        .unwrap_or(0);
    let verdict = verdict_at(&ctx, recent, OffsetDateTime::now_utc());
    // COM_QUIT on the MySQL connections this run opened.
    ctx.mysql.close_all(settings.probe_timeout).await;
    verdict
}

fn lock_len(ctx: &Context) -> usize {
    ctx.diag_window.len()
}

/// The verdict of what the context holds, as of `now` (pure: reads the state).
pub fn verdict_at(ctx: &Context, recent: u64, now: OffsetDateTime) -> Verdict {
    let target = ctx.target();
    let checks = health::evaluate(&health::inputs_at(ctx, recent, now));
    let mut perf = Vec::new();
    if let Some(seen) = ctx.state.status.get() {
        if let Some(v) = seen.max_lag_seconds(now) {
            perf.push((
                "lag_seconds".to_string(),
                (v * 1000.0).round() / 1000.0,
                "s",
            ));
        }
        if let Some(v) = seen.max_stall_seconds(now) {
            perf.push((
                "stall_seconds".to_string(),
                (v * 1000.0).round() / 1000.0,
                "s",
            ));
        }
    }
    // Privileges the exporter's source user lacks (gravity_source_privilege_missing).
    if let Some(src) = ctx.state.source.get() {
        for (privilege, missing) in &src.privileges {
            let privilege = privilege.to_lowercase().replace(' ', "_");
            let v = if *missing { 1.0 } else { 0.0 };
            perf.push((format!("source_missing_{privilege}"), v, ""));
        }
    }
    perf.push(("up".to_string(), if ctx.up.is_up() { 1.0 } else { 0.0 }, ""));
    perf.push(("recent_errors".to_string(), recent as f64, ""));
    Verdict {
        pipeline: target.pipeline.clone(),
        checks,
        perf,
        diagnosis: ctx.state.diagnosis.get().map(|d| d.as_ref().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    /// One definition per value: lag, stall, up and the verdict read the same from
    /// `/metrics` (and OTLP, converted from the same families), the status page and
    /// `/api/status`, and `check`, when each is evaluated at the same moment.
    #[test]
    fn every_view_reads_the_same_lag_stall_up_and_verdict() {
        use crate::gravity_api::status::parse_status;
        use crate::otlp::convert::{metric, Times};
        use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point::Value};
        let settings =
            crate::config::Settings::from_flags(crate::config::Flags::default()).unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings));
        let ctx = Context::new(rx, Arc::new(Store::new()));
        let st = parse_status(include_bytes!("../tests/fixtures/status-incremental.json")).unwrap();
        ctx.set_last_status(Some(crate::state::StatusSeen {
            at: std::time::Instant::now(),
            status: st.clone(),
        }));
        let now = datetime!(2026-11-22 06:25:00 UTC);
        let pipeline = ctx.target().pipeline.clone();
        // /metrics
        let fams = crate::collector::status::status_families(&st, now, &pipeline);
        let m_lag = fams.value("gravity_watermark_lag_seconds", &[]).unwrap();
        let m_stall = fams.value("gravity_watermark_stall_seconds", &[]).unwrap();
        // OTLP: the same families, converted
        let gauge = |name: &str| {
            let mf = fams
                .clone()
                .into_vec()
                .into_iter()
                .find(|f| f.name() == name)
                .unwrap();
            let t = Times {
                start_unix_nano: 0,
                now_unix_nano: 1,
            };
            match metric(&mf, t).unwrap().data.unwrap() {
                Data::Gauge(g) => match g.data_points[0].value.unwrap() {
                    Value::AsDouble(v) => v,
                    Value::AsInt(v) => v as f64,
                },
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(gauge("gravity_watermark_lag_seconds"), m_lag);
        assert_eq!(gauge("gravity_watermark_stall_seconds"), m_stall);
        // the page and /api/status (its JSON is the page's view)
        let v = crate::page::view_at(&ctx, now);
        assert_eq!(v.lag[0].lag_seconds, m_lag);
        assert_eq!(v.lag[0].stall_seconds, m_stall);
        let json: serde_json::Value = serde_json::to_value(&v).unwrap();
        assert_eq!(json["lag"][0]["lag_seconds"].as_f64(), Some(m_lag));
        // check (perfdata rounded to the millisecond)
        let c = verdict_at(&ctx, 0, now);
        let perf = |k: &str| c.perf.iter().find(|(n, _, _)| n == k).map(|(_, v, _)| *v);
        assert_eq!(perf("lag_seconds"), Some((m_lag * 1000.0).round() / 1000.0));
        assert_eq!(
            perf("stall_seconds"),
            Some((m_stall * 1000.0).round() / 1000.0)
        );
        // the health verdict's stall input
        let i = health::inputs_at(&ctx, 0, now);
        assert_eq!(i.stall_seconds, Some(Some(m_stall)));
        // up and the verdict
        let up = ctx.up.families(&pipeline).value("gravity_up", &[]).unwrap();
        assert_eq!(perf("up"), Some(up));
        assert_eq!(v.gravity_up, up == 1.0);
        assert_eq!(v.nagios_code, c.code());
        assert_eq!(v.checks.len(), c.checks.len());
        for (a, b) in v.checks.iter().zip(&c.checks) {
            assert_eq!((a.name, a.ok), (b.name, b.ok));
        }
        let score = crate::health::families(&c.checks, &pipeline)
            .value("gravity_health_score", &[])
            .unwrap();
        assert_eq!(score, health::score(&c.checks) as f64);
        assert_eq!(
            v.checks.iter().filter(|k| !k.evaluated).count(),
            c.checks.iter().filter(|k| !k.evaluated).count()
        );
    }

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
                    evaluated: true,
                },
                Check {
                    name: "log_healthy",
                    ok: false,
                    detail: "3 error lines | x".into(),
                    critical: false,
                    evaluated: true,
                },
                Check {
                    name: "source_reachable",
                    ok: true,
                    detail: "not checked: connection probes are off".into(),
                    critical: true,
                    evaluated: false,
                },
            ],
            perf: vec![("lag_seconds".into(), 0.8, "s")],
            diagnosis: None,
        };
        assert_eq!(v.code(), 1);
        let t = v.text();
        let first = t.lines().next().unwrap();
        assert!(
            first
                .starts_with("GRAVITY WARNING - pipeline p: 1/2 checks pass (1 not checked: source_reachable); failing: log_healthy"),
            "{first}"
        );
        assert!(
            t.contains("NOT CHECKED source_reachable: not checked: connection probes are off"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&v.json()).unwrap();
        assert_eq!(
            (
                j["score"].as_u64(),
                j["checks_evaluated"].as_u64(),
                j["checks_total"].as_u64()
            ),
            (Some(1), Some(2), Some(3))
        );
        assert_eq!(j["checks"][2]["evaluated"], false);
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

    /// `YYYY/MM/DD HH:MM:SS.000` of `t` as seen in a zone `offset_h` hours east of UTC
    /// (gravity's default TimestampFormat carries no zone).
    fn go_stamp(t: OffsetDateTime, offset_h: i8) -> String {
        let t = t.to_offset(time::UtcOffset::from_hms(offset_h, 0, 0).unwrap());
        format!(
            "{:04}/{:02}/{:02} {:02}:{:02}:{:02}.000",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        )
    }

    #[test]
    fn records_without_an_rfc3339_time_are_not_ignored() {
        let d = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let window = Duration::from_secs(300);
        // a Go runtime panic on stderr, no time at all, written just now
        let p = d.path().join("panic.log");
        std::fs::write(
            &p,
            "panic: runtime error: invalid memory address or nil pointer dereference\n[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x0]\n\ngoroutine 1 [running]:\nmain.main()\n\t/go/src/main.go:9 +0x1d\n",
        )
        .unwrap();
        assert_eq!(recent_errors(&p, Some(LogFormat::Text), now, window), 1);
        // gravity's default stamps, in a zone eight hours east: two errors a minute ago
        let p = d.path().join("go.log");
        let t = now - time::Duration::minutes(1);
        let lines = format!(
            "{s} mysql.go:352: [error] first pipeline=p\n{s} mysql.go:352: [error] second pipeline=p\n{s} printer.go:41: [info] fine pipeline=p\n",
            s = go_stamp(t, 8)
        );
        std::fs::write(&p, &lines).unwrap();
        assert_eq!(recent_errors(&p, Some(LogFormat::Text), now, window), 2);
        // the same lines an hour old (file last written an hour ago): outside the window
        let old = now - time::Duration::hours(1);
        let p = d.path().join("old.log");
        std::fs::write(
            &p,
            format!(
                "{s} mysql.go:352: [error] old pipeline=p\npanic: late\n",
                s = go_stamp(old, 8)
            ),
        )
        .unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(std::time::SystemTime::from(old)).unwrap();
        drop(f);
        assert_eq!(recent_errors(&p, Some(LogFormat::Text), now, window), 0);
    }
}
