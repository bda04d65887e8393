//! The status page at `/` and the same data as JSON at `/api/status`.
//!
//! Built for an engineer woken at night: one glance tells whether the pipeline is OK and, if
//! not, why. [`view`] gathers what the exporter already knows — the process watcher's state,
//! the collectors' last snapshots, gravity's last `/status`, the health verdict
//! ([`crate::health::evaluate`], re-evaluated at render time so an exit shows at once), the
//! last connection probes and the last classified error lines of gravity's log — into a
//! [`StatusView`]; [`html::render`] turns that into plain HTML with inline SVG sparklines and
//! inline CSS (no external assets, no script: it refreshes itself with a meta refresh).
//!
//! Secrets never reach the page: endpoints are `host:port`, every free text from outside
//! (log messages, probe details, config errors, URLs) goes through [`crate::redact::Redactor`], and
//! everything is HTML-escaped. Rendering is cheap and bounded: it reads snapshots and rings of
//! fixed size ([`MAX_STREAM_ROWS`] lag rows, [`recent::ERROR_EVENTS`] error lines, at most
//! [`crate::collector::connections::MAX_ENDPOINTS`] connections).

pub mod html;
pub mod overview;
pub mod svg;
pub mod topology;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub use html::esc;

use crate::base::unix_now;
use crate::collector::Context;
use crate::health;
use crate::redact::{clean, Redactor};
use crate::state::recent::{ErrorEvent, ProbeView};

/// Most watermark streams listed (the rest are counted; the largest lags come first).
pub const MAX_STREAM_ROWS: usize = 50;
/// Longest free text shown (probe details, config errors), in characters.
pub const TEXT_CHARS: usize = 200;
/// Seconds between automatic refreshes of the page.
pub const REFRESH_SECONDS: u32 = 10;

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// When the view was built (RFC 3339, UTC).
    pub generated_at: String,
    /// The exporter's version.
    pub exporter_version: &'static str,
    /// Pipeline name.
    pub pipeline: String,
    /// `OK`, `WARNING` or `CRITICAL`.
    pub verdict: &'static str,
    /// Nagios code of the verdict (0, 1, 2).
    pub nagios_code: i32,
    /// gravity_up.
    pub gravity_up: bool,
    /// The gravity process.
    pub process: ProcessView,
    /// What gravity's last `/status` said (`None`: not read yet, or no position stored).
    pub status: Option<StatusInfo>,
    /// Lag per watermark stream, largest first (at most [`MAX_STREAM_ROWS`]).
    pub lag: Vec<StreamView>,
    /// Watermark streams in gravity's last `/status` (may exceed the rows listed).
    pub lag_streams_total: usize,
    /// Rows per second in and out.
    pub throughput: ThroughputView,
    /// The seven health checks.
    pub checks: Vec<CheckView>,
    /// Endpoints: probe results and gravity's own connections.
    pub connections: ConnectionsView,
    /// The last classified error lines of gravity's log.
    pub errors: ErrorsView,
    /// The opt-in canary: writer state, counters, the last canaries (`None` while off).
    pub canary: Option<CanaryView>,
    /// What was discovered about gravity (never a password).
    pub discovered: Vec<Fact>,
    /// The exporter's metrics path.
    pub telemetry_path: String,
    /// Which stage holds the pipeline back and what to change (`None`: fewer than two
    /// readings of gravity's `/metrics` yet).
    pub diagnosis: Option<crate::diagnosis::Diagnosis>,
    /// Each input stream's sliding-window fill (waiting / `sliding-window-size`).
    pub window_fill: Vec<(String, f64)>,
    /// Source database(s) → gravity's stages → target(s).
    pub topology: topology::Topology,
}

/// The canary section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CanaryView {
    /// Writer state (`ok`, `read_only`, `privilege`, ...).
    pub state: &'static str,
    /// Why, when not ok (masked).
    pub detail: String,
    /// Why the target (MySQL table or Kafka topic) could not be read at the last look
    /// (masked); empty when it could.
    pub target_error: String,
    /// Canaries written.
    pub sent: u64,
    /// Canaries seen at the target.
    pub arrived: u64,
    /// Canaries not seen within the timeout.
    pub lost: u64,
    /// On their way now.
    pub pending: usize,
    /// End-to-end lag of the last arrival, seconds.
    pub last_lag_seconds: Option<f64>,
    /// Which part of the path took longer for the last arrived canary whose gravity
    /// ProcessTime was known: `gravity.input` (write → ProcessTime) or `gravity.output`
    /// (ProcessTime → visible at the target).
    pub bottleneck: Option<&'static str>,
    /// The last canaries, newest first.
    pub recent: Vec<CanaryRowView>,
}

/// One recent canary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CanaryRowView {
    /// Sequence number.
    pub seq: u64,
    /// Trace id (also in the row and in the log lines about it).
    pub trace_id: String,
    /// Written at (RFC 3339).
    pub written_at: String,
    /// `arrived` or `lost`.
    pub outcome: &'static str,
    /// End-to-end lag, seconds.
    pub lag_seconds: Option<f64>,
    /// Write → gravity's ProcessTime, seconds.
    pub input_seconds: Option<f64>,
    /// gravity's ProcessTime → arrival, seconds.
    pub output_seconds: Option<f64>,
}

fn canary_view(ctx: &Context, red: &Redactor) -> Option<CanaryView> {
    let v = ctx.canary.view()?;
    let bottleneck = v
        .recent
        .iter()
        .find_map(|f| Some((f.input?, f.output?)))
        .map(|(i, o)| {
            if i >= o {
                "gravity.input"
            } else {
                "gravity.output"
            }
        });
    Some(CanaryView {
        state: v.state.as_str(),
        detail: clean(red, &v.detail, 300),
        target_error: clean(red, &v.target_error, 300),
        sent: v.sent,
        arrived: v.arrived,
        lost: v.lost,
        pending: v.pending,
        last_lag_seconds: v.last_lag,
        bottleneck,
        recent: v
            .recent
            .iter()
            .map(|f| CanaryRowView {
                seq: f.seq,
                trace_id: f.trace_id.clone(),
                written_at: time::OffsetDateTime::from_unix_timestamp_nanos(
                    (f.written_at * 1e9) as i128,
                )
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default(),
                outcome: if f.lag.is_some() { "arrived" } else { "lost" },
                lag_seconds: f.lag,
                input_seconds: f.input,
                output_seconds: f.output,
            })
            .collect(),
    })
}

/// The gravity process.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessView {
    /// Whether it lives (and is not a zombie).
    pub alive: bool,
    /// Its pid, when one was found.
    pub pid: Option<i32>,
    /// Its state (`running`, `sleeping`, `zombie`, ...).
    pub state: Option<String>,
    /// Seconds since it started.
    pub uptime_seconds: Option<f64>,
    /// Restarts counted.
    pub restarts: u64,
    /// Exits counted.
    pub exits: u64,
    /// Seconds since the last exit seen.
    pub last_exit_seconds_ago: Option<f64>,
    /// Whether gravity's API answered its last check (`None`: not checked since it started).
    pub api_answered: Option<bool>,
}

/// gravity's last `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusInfo {
    /// `Incremental` or `Full`.
    pub stage: String,
    /// gravity's version.
    pub version: String,
    /// Config hash.
    pub config_hash: String,
    /// Position, for people (`mysql-bin.000042:1234`, `3/5 tables done`, ...).
    pub position: String,
    /// Seconds since it was read.
    pub read_seconds_ago: f64,
    /// Whether it is older than the collection cycle (gravity not answering).
    pub stale: bool,
}

/// One watermark stream.
#[derive(Debug, Clone, Serialize)]
pub struct StreamView {
    /// Stream key (`mysqlstream`, `mongooplog`, or `db.table` during a full dump).
    pub stream: String,
    /// now − EventTime.
    pub lag_seconds: f64,
    /// now − ProcessTime.
    pub stall_seconds: f64,
    /// Lag at the last collections, oldest first (at most [`recent::LAG_SAMPLES`]).
    pub history: Vec<f64>,
}

/// Rows per second.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ThroughputView {
    /// Rows/s gravity's input received over the last collection window (`None`: not measured yet).
    pub rows_in: Option<f64>,
    /// Rows/s gravity's output sent.
    pub rows_out: Option<f64>,
    /// Rows/s in at the last collections, oldest first.
    pub history_in: Vec<f64>,
    /// Rows/s out at the last collections, oldest first.
    pub history_out: Vec<f64>,
}

/// One health check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckView {
    /// Check name.
    pub name: &'static str,
    /// Whether it passes.
    pub ok: bool,
    /// Whether it could be evaluated (else "not checked": neither pass nor fail).
    pub evaluated: bool,
    /// Whether its failure is critical (else a warning).
    pub critical: bool,
    /// One line for people.
    pub detail: String,
}

/// The endpoints around the pipeline.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionsView {
    /// Whether connection probes are on.
    pub probes_on: bool,
    /// One row per endpoint.
    pub endpoints: Vec<ConnView>,
    /// Privileges the exporter's source user lacks (`gravity_source_privilege_missing`).
    pub missing_privileges: Vec<String>,
}

/// One endpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ConnView {
    /// `source`, `probe_db`, `target`, `kafka`, `elasticsearch`.
    pub component: String,
    /// `host:port`.
    pub endpoint: String,
    /// Whether the last probe succeeded (`None`: not probed).
    pub healthy: Option<bool>,
    /// Why it failed (`refused`, `timeout`, `auth`, `tls_required`, `tls`, `auth_plugin_unsupported`,
    /// `too_many_connections`, `privilege`, `protocol`, `dns`).
    pub reason: Option<String>,
    /// Probe latency in milliseconds.
    pub latency_ms: Option<f64>,
    /// The probe's description (redacted).
    pub detail: Option<String>,
    /// gravity's own ESTABLISHED connections to it.
    pub established: Option<u64>,
}

/// Error lines.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ErrorsView {
    /// Error lines in the health check's window (5 minutes).
    pub recent: u64,
    /// Error lines counted since the exporter started.
    pub total: u64,
    /// The last ones, newest first.
    pub last: Vec<ErrorEvent>,
}

/// A discovered fact.
#[derive(Debug, Clone, Serialize)]
pub struct Fact {
    /// What.
    pub key: String,
    /// Its value.
    pub value: String,
}

/// The name of a process state letter.
pub fn state_name(c: char) -> String {
    crate::collector::process::STATES
        .iter()
        .find(|(l, _)| *l == c)
        .map(|(_, n)| (*n).to_string())
        .unwrap_or_else(|| c.to_string())
}

/// The Nagios verdict's name.
pub fn verdict_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "WARNING",
        2 => "CRITICAL",
        _ => "UNKNOWN",
    }
}

fn position_text(st: &crate::collector::status::Status) -> String {
    use crate::collector::status::Position;
    match &st.position {
        Position::MysqlStream { current, .. } => current
            .as_ref()
            .map(|b| format!("{}:{}", b.file, b.pos))
            .unwrap_or_else(|| "no binlog position yet".into()),
        Position::MysqlBatch { tables, .. } => {
            let done = tables.iter().filter(|t| t.done).count();
            format!("full dump: {done}/{} tables done", tables.len())
        }
        Position::Mongo { current: Some(ts) } => {
            let secs = (ts >> 32) as i64;
            OffsetDateTime::from_unix_timestamp(secs)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .map(|t| format!("oplog {t} #{}", ts & 0xffff_ffff))
                .unwrap_or_else(|| format!("oplog {ts}"))
        }
        Position::Mongo { current: None } => "no oplog position yet".into(),
        Position::Unknown => "unknown shape".into(),
    }
}

/// Gathers the view (reads snapshots and rings; no I/O), as of now.
pub fn view(ctx: &Context) -> StatusView {
    view_at(ctx, OffsetDateTime::now_utc())
}

/// Gathers the view as of `now`: lag and stall are evaluated at it ([`crate::state::lag_seconds`]).
pub fn view_at(ctx: &Context, now: OffsetDateTime) -> StatusView {
    let settings = ctx.settings();
    let target = ctx.target();
    let red = target.redactor();
    let now_unix = unix_now();
    let recent = &ctx.recent;

    let errors_recent = health::recent_errors(ctx, now);
    let seen = ctx.last_status();
    // Stall ages as of now: while gravity does not answer, its watermarks keep ageing.
    let inputs = health::inputs_at(ctx, errors_recent, now);
    let checks = health::evaluate(&inputs);
    let code = health::nagios_code(&checks);

    let look = target.process;
    let alive = ctx.up.process_alive();
    let uptime = ctx
        .state
        .process
        .get()
        .map(|p| p.start_time_seconds)
        .filter(|_| alive)
        .map(|start| (now_unix - start).max(0.0));
    let last_exit = ctx.up.last_exit_unix().map(|t| (now_unix - t).max(0.0));
    let process = ProcessView {
        alive,
        pid: look.map(|l| l.id.pid),
        state: look.map(|l| state_name(l.state)),
        uptime_seconds: uptime,
        restarts: ctx.up.restarts(),
        exits: ctx.up.exits(),
        last_exit_seconds_ago: last_exit,
        api_answered: ctx.up.api_state(),
    };

    // Lag from gravity's last watermarks: it keeps growing while gravity does not answer.
    let stale_after = ctx
        .cadence()
        .saturating_mul(2)
        .saturating_add(settings.gravity_timeout)
        .saturating_add(Duration::from_secs(1));
    let status = seen.as_ref().map(|s| StatusInfo {
        stage: clean(&red, &s.status.stage, 40),
        version: clean(&red, &s.status.version, 80),
        config_hash: clean(&red, &s.status.config_hash, 80),
        position: clean(&red, &position_text(&s.status), TEXT_CHARS),
        read_seconds_ago: s.at.elapsed().as_secs_f64(),
        stale: s.at.elapsed() > stale_after || !ctx.up.is_up(),
    });
    let mut rows: Vec<(&str, StreamView)> = seen
        .as_ref()
        .map(|s| {
            s.status
                .watermarks
                .iter()
                .map(|w| {
                    let v = StreamView {
                        stream: clean(&red, &w.key, 120),
                        lag_seconds: crate::state::lag_seconds(w, now),
                        stall_seconds: crate::state::stall_seconds(w, now),
                        history: Vec::new(),
                    };
                    (w.key.as_str(), v)
                })
                .collect()
        })
        .unwrap_or_default();
    let lag_streams_total = rows.len();
    rows.sort_by(|a, b| b.1.lag_seconds.total_cmp(&a.1.lag_seconds));
    rows.truncate(MAX_STREAM_ROWS);
    let lag: Vec<StreamView> = rows
        .into_iter()
        .map(|(key, mut v)| {
            v.history = recent.lag_history(key);
            v
        })
        .collect();

    let rows = ctx.state.rows.get().map(|r| *r);
    let (history_in, history_out) = recent.throughput_history();
    let throughput = ThroughputView {
        rows_in: rows.and_then(|r| r.rows_in),
        rows_out: rows.and_then(|r| r.rows_out),
        history_in,
        history_out,
    };

    let connections = connections_view(ctx, &settings, &red);

    let errors = ErrorsView {
        recent: errors_recent,
        total: ctx.log_errors_seen(),
        last: recent.errors(),
    };

    StatusView {
        generated_at: now.format(&Rfc3339).unwrap_or_default(),
        exporter_version: env!("CARGO_PKG_VERSION"),
        pipeline: clean(&red, &target.pipeline, 120),
        verdict: verdict_name(code),
        nagios_code: code,
        gravity_up: ctx.up.is_up(),
        process,
        status,
        lag,
        lag_streams_total,
        throughput,
        checks: checks
            .into_iter()
            .map(|c| CheckView {
                name: c.name,
                ok: c.ok,
                evaluated: c.evaluated,
                critical: c.critical,
                detail: clean(&red, &c.detail, 300),
            })
            .collect(),
        connections,
        errors,
        canary: canary_view(ctx, &red),
        discovered: discovered(ctx, &red),
        telemetry_path: settings.telemetry_path.clone(),
        diagnosis: ctx.state.diagnosis.get().map(|d| d.as_ref().clone()),
        window_fill: ctx
            .state
            .window_fill
            .get()
            .map(|f| f.as_ref().clone())
            .unwrap_or_default(),
        topology: topology::topology(ctx),
    }
}

fn connections_view(
    ctx: &Context,
    settings: &crate::config::Settings,
    red: &Redactor,
) -> ConnectionsView {
    let probes_on = settings.probe_interval.is_some();
    let probes: Vec<ProbeView> = if probes_on {
        ctx.recent.probes().unwrap_or_default()
    } else {
        Vec::new()
    };
    let conns = ctx.state.endpoints.get().filter(|_| probes_on);
    let mut established: BTreeMap<(String, String), u64> = ctx
        .state
        .established
        .get()
        .map(|e| e.as_ref().clone())
        .unwrap_or_default();
    let mut rows: Vec<ConnView> = Vec::new();
    for p in &probes {
        let key = (p.component.to_string(), p.endpoint.clone());
        rows.push(ConnView {
            component: p.component.to_string(),
            endpoint: p.endpoint.clone(),
            healthy: Some(p.ok),
            reason: p.reason.map(str::to_string),
            latency_ms: Some(p.latency_seconds * 1000.0),
            detail: Some(clean(red, &p.detail, TEXT_CHARS)).filter(|d| !d.is_empty()),
            established: established.remove(&key),
        });
    }
    if probes.is_empty() {
        // No probe round recorded for the page (or probes off): the last round's endpoints.
        for e in conns.as_deref().map(Vec::as_slice).unwrap_or_default() {
            let key = (e.component.to_string(), e.endpoint.clone());
            rows.push(ConnView {
                component: key.0.clone(),
                endpoint: key.1.clone(),
                healthy: Some(e.healthy),
                reason: None,
                latency_ms: None,
                detail: None,
                established: established.remove(&key),
            });
        }
    }
    if rows.is_empty() {
        // Probes off: the endpoints of gravity's config, with gravity's own connections.
        let t = ctx.target();
        if let Some(c) = &t.config {
            for e in crate::collector::connections::probe_targets(c) {
                let key = (e.role.as_str().to_string(), e.address());
                rows.push(ConnView {
                    component: key.0.clone(),
                    endpoint: key.1.clone(),
                    healthy: None,
                    reason: None,
                    latency_ms: None,
                    detail: None,
                    established: established.remove(&key),
                });
            }
        }
    }
    for ((component, endpoint), n) in established {
        rows.push(ConnView {
            component,
            endpoint,
            healthy: None,
            reason: None,
            latency_ms: None,
            detail: None,
            established: Some(n),
        });
    }
    rows.truncate(crate::collector::connections::MAX_ENDPOINTS);
    let missing_privileges = ctx
        .state
        .source
        .get()
        .map(|s| s.missing())
        .unwrap_or_default();
    ConnectionsView {
        missing_privileges,
        probes_on,
        endpoints: rows,
    }
}

fn discovered(ctx: &Context, red: &Redactor) -> Vec<Fact> {
    let t = ctx.target();
    let mut rows = Vec::new();
    let mut row = |k: &str, v: String| {
        rows.push(Fact {
            key: k.to_string(),
            value: clean(red, &v, TEXT_CHARS),
        })
    };
    row("pipeline", t.pipeline.clone());
    row(
        "gravity process",
        match t.process {
            Some(p) if p.is_alive() => format!("pid {} (state {})", p.id.pid, p.state),
            Some(p) => format!("pid {} is a zombie: down", p.id.pid),
            None => "not found".into(),
        },
    );
    row(
        "gravity_up",
        if ctx.up.is_up() { "1" } else { "0" }.to_string(),
    );
    row(
        "gravity API",
        format!("{} (from {})", t.url, t.url_origin.as_str()),
    );
    row(
        "gravity config",
        match (&t.config_path, &t.config_error) {
            (Some(p), None) => p.display().to_string(),
            (Some(p), Some(e)) => format!("{} (unreadable: {e})", p.display()),
            (None, _) => "unknown".into(),
        },
    );
    row(
        "gravity log",
        t.log_file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "stderr (not tailed)".into()),
    );
    if let Some(c) = &t.config {
        for e in &c.endpoints {
            row(&format!("endpoint: {}", e.role.as_str()), e.address());
        }
    }
    rows
}

/// The status page (HTML).
pub fn landing(ctx: &Context) -> String {
    html::render(&view(ctx))
}

/// The status page of one of `pipelines` pipelines: with several, its links name it
/// (`?pipeline=`) and it links back to the overview.
pub fn landing_in(ctx: &Context, pipelines: usize) -> String {
    let page = landing(ctx);
    if pipelines <= 1 {
        return page;
    }
    let q = format!(
        "?pipeline={}",
        overview::url_component(&ctx.target().pipeline)
    );
    let mut page = page;
    for api in ["/api/status", "/api/diagnosis", "/api/topology"] {
        page = page.replace(
            &format!("href=\"{api}\""),
            &format!("href=\"{api}{}\"", esc(&q)),
        );
    }
    page.replacen("<nav>", "<nav><a href=\"/\">All pipelines</a>", 1)
}

/// The status as JSON (`/api/status`).
/// `/api/diagnosis`: the last diagnosis as JSON (`bottleneck`, `case`, `finding`, `stages`,
/// `evidence`, `suggestions` with `setting`, `current`, `suggested`, `direction`, `reason`),
/// or `"ready": false` with why there is none yet.
pub fn api_diagnosis(ctx: &Context) -> String {
    let fill = ctx
        .state
        .window_fill
        .get()
        .map(|f| f.as_ref().clone())
        .unwrap_or_default();
    let v = match ctx.state.diagnosis.get() {
        Some(d) => {
            let mut v = serde_json::to_value(d.as_ref()).unwrap_or_default();
            if let Some(o) = v.as_object_mut() {
                o.insert("ready".into(), true.into());
                o.insert("pipeline".into(), ctx.target().pipeline.clone().into());
                o.insert("sliding_window_fill".into(), serde_json::json!(fill));
            }
            v
        }
        None => serde_json::json!({
            "ready": false,
            "pipeline": ctx.target().pipeline,
            "bottleneck": "none",
            "reason": "a diagnosis needs two readings of gravity's /metrics (rates and deltas over a window of collections)",
            "stages": [],
            "evidence": [],
            "suggestions": [],
            "sliding_window_fill": fill,
        }),
    };
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_else(|_| "{}".into());
    s.push('\n');
    s
}

/// `/api/status`: the page's view as JSON.
pub fn api_status(ctx: &Context) -> String {
    let mut s = serde_json::to_string_pretty(&view(ctx)).unwrap_or_else(|e| {
        // Serialising plain structs of strings and numbers does not fail; say so if it does.
        format!("{{\"error\":{:?}}}", e.to_string())
    });
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collector::status::{parse_status, StatusSeen};
    use crate::log::record::{parse_line, LogFormat};
    use std::sync::Arc;

    const M2M: &str = include_str!("../../tests/fixtures/configs/mysql2mysql-stream.toml");
    const INCR: &str = include_str!("../../tests/fixtures/status-incremental.json");

    fn ctx() -> Arc<Context> {
        let settings =
            crate::config::Settings::from_flags(crate::config::Flags::default()).unwrap();
        let mut t = crate::discovery::Target::from_settings(&settings);
        t.config = Some(crate::gravity_config::parse(M2M, false).unwrap());
        t.pipeline = "mysql2mysqlDemo".into();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings));
        let ctx = Context::new(rx, Arc::new(crate::metrics::Store::new()));
        ctx.set_target(t);
        ctx
    }

    #[test]
    fn view_from_context_redacts_and_evaluates() {
        let ctx = ctx();
        ctx.set_last_status(Some(StatusSeen {
            at: std::time::Instant::now(),
            status: parse_status(INCR.as_bytes()).unwrap(),
        }));
        ctx.recent
            .record_lag([("mysqlstream", 1.0), ("mysqlstream", 2.0)]);
        let line = r#"{"level":"error","msg":"[output-mysql] dial writer:s3cret-target-pw@tcp(127.0.0.1:3307)/ and s3cret-source-pw","time":"2026-11-22T14:05:33+08:00"}"#;
        let rec = parse_line(line, LogFormat::Json).unwrap();
        let red = ctx.target().redactor();
        ctx.recent.record_error(ErrorEvent::from_record(
            &rec,
            crate::log::classify::classify(&rec),
            &red,
            unix_now(),
        ));
        let v = view(&ctx);
        assert_eq!(v.pipeline, "mysql2mysqlDemo");
        assert_eq!(v.checks.len(), 7);
        // no process, no API: critical
        assert_eq!((v.verdict, v.nagios_code), ("CRITICAL", 2));
        assert!(!v.checks[0].ok && v.checks[0].name == "process_running");
        let st = v.status.as_ref().unwrap();
        assert_eq!(st.stage, "Incremental");
        assert!(st.position.starts_with("mysql-bin."), "{}", st.position);
        assert_eq!(v.lag.len(), 1);
        assert!(v.lag[0].lag_seconds > 0.0);
        assert_eq!(v.errors.last.len(), 1);
        assert_eq!(v.errors.recent, 1);
        assert!(v
            .discovered
            .iter()
            .any(|f| f.key == "endpoint: target" && f.value == "127.0.0.1:3307"));
        // probes have not run: the config's endpoints, not probed
        assert_eq!(v.connections.endpoints.len(), 2, "{:?}", v.connections);
        let json = api_status(&ctx);
        let html = landing(&ctx);
        for s in ["s3cret-target-pw", "s3cret-source-pw"] {
            assert!(!json.contains(s) && !html.contains(s), "{s} leaked");
        }
        assert!(
            json.contains("writer:***@tcp(127.0.0.1:3307)/ and ***"),
            "{json}"
        );
        let back: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["checks"].as_array().map(Vec::len), Some(7));
        assert_eq!(back["verdict"], "CRITICAL");
    }
}
