//! The overview of every pipeline the exporter watches (`/` when there are several, and
//! `/api/pipelines`): one row per pipeline with its verdict, lag, rows per second and
//! restarts, each linking to the pipeline's own page (`/?pipeline=NAME`). Every figure comes
//! from the same view as the pipeline's page ([`super::view`]).

use std::fmt::Write as _;

use serde::Serialize;

use super::html::{esc, fmt_rate, fmt_secs, verdict_class};
use crate::fleet::Fleet;

/// One pipeline's row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Its name.
    pub pipeline: String,
    /// OK, WARNING, CRITICAL or UNKNOWN (as `check` says).
    pub verdict: &'static str,
    /// The Nagios code of the verdict.
    pub nagios_code: i32,
    /// `gravity_up`.
    pub gravity_up: bool,
    /// The largest lag over its streams, in seconds (`None`: none known).
    pub lag_seconds: Option<f64>,
    /// Rows per second out (`None`: not measured yet).
    pub rows_out_per_second: Option<f64>,
    /// Restarts seen.
    pub restarts: u64,
    /// Where its page is.
    pub page: String,
}

/// The rows, sorted by name; the worst verdict first would hide the names' order, which
/// people look for.
pub fn rows(fleet: &Fleet) -> Vec<Row> {
    fleet
        .contexts()
        .iter()
        .map(|ctx| {
            let v = super::view(ctx);
            Row {
                page: format!("/?pipeline={}", url_component(&v.pipeline)),
                lag_seconds: v.lag.iter().map(|s| s.lag_seconds).reduce(f64::max),
                rows_out_per_second: v.throughput.rows_out,
                restarts: v.process.restarts,
                gravity_up: v.gravity_up,
                verdict: v.verdict,
                nagios_code: v.nagios_code,
                pipeline: v.pipeline,
            }
        })
        .collect()
}

/// Percent-encodes a query value.
pub fn url_component(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// `/api/pipelines`: the worst verdict and the rows.
pub fn json(fleet: &Fleet) -> String {
    let rows = rows(fleet);
    let worst = rows
        .iter()
        .map(|r| worst_rank(r.nagios_code))
        .max()
        .unwrap_or(0);
    let verdict = rows
        .iter()
        .find(|r| worst_rank(r.nagios_code) == worst)
        .map(|r| r.verdict)
        .unwrap_or("UNKNOWN");
    serde_json::json!({ "verdict": verdict, "pipelines": rows }).to_string()
}

/// Orders Nagios codes by badness: OK < WARNING < UNKNOWN < CRITICAL.
pub fn worst_rank(code: i32) -> u8 {
    match code {
        0 => 0,
        1 => 1,
        2 => 3,
        _ => 2,
    }
}

/// The overview page.
pub fn html(fleet: &Fleet) -> String {
    let rows = rows(fleet);
    let worst = rows
        .iter()
        .max_by_key(|r| worst_rank(r.nagios_code))
        .map(|r| (r.verdict, r.nagios_code))
        .unwrap_or(("UNKNOWN", 3));
    let failing = rows.iter().filter(|r| r.nagios_code != 0).count();
    let tp = esc(&fleet.settings().telemetry_path);
    let mut o = String::with_capacity(8 * 1024);
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"{r}\">\
<title>{v} · {n} pipelines · gravity-exporter</title><style>{css}</style></head><body>\
<header class=\"banner {vc}\" id=\"verdict\" data-verdict=\"{v}\"><div class=\"verdict\">{v}</div>\
<div class=\"who\"><div class=\"pl\">{n} gravity pipelines on this host</div><div class=\"why\">{why}</div></div></header>\
<nav><a href=\"{tp}\">Metrics</a><a href=\"/healthz\">Exporter health</a><a href=\"/-/ready\">Ready</a>\
<a href=\"/api/pipelines\">JSON</a><span class=\"muted noprint\">refreshes every {r} s</span></nav><main>\
<section id=\"pipelines\"><h2>Pipelines</h2><div class=\"scroll\"><table><thead><tr><th>pipeline</th><th>verdict</th>\
<th>gravity</th><th>lag</th><th>rows/s out</th><th>restarts</th></tr></thead><tbody>",
        r = super::REFRESH_SECONDS,
        css = super::html::CSS,
        v = worst.0,
        vc = verdict_class(worst.1),
        n = rows.len(),
        why = if failing == 0 {
            "every pipeline passes its health checks".to_string()
        } else {
            format!("{failing} of {} pipelines fail a health check", rows.len())
        },
    );
    for r in &rows {
        let _ = write!(
            o,
            "<tr data-pipeline=\"{name}\"><td><a href=\"{page}\">{name}</a></td>\
<td class=\"{vc}\">{v}</td><td>{up}</td><td>{lag}</td><td>{rate}</td><td>{restarts}</td></tr>",
            name = esc(&r.pipeline),
            page = esc(&r.page),
            vc = verdict_class(r.nagios_code),
            v = r.verdict,
            up = if r.gravity_up { "up" } else { "down" },
            lag = r.lag_seconds.map(fmt_secs).unwrap_or_else(|| "—".into()),
            rate = r
                .rows_out_per_second
                .map(fmt_rate)
                .unwrap_or_else(|| "—".into()),
            restarts = r.restarts,
        );
    }
    let _ = write!(
        o,
        "</tbody></table></div></section><footer>gravity-exporter {} · one exporter, {} pipelines · the same data as JSON: <a href=\"/api/pipelines\">/api/pipelines</a></footer></main></body></html>",
        env!("CARGO_PKG_VERSION"),
        rows.len()
    );
    o
}
