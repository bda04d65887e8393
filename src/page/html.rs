//! Renders a [`StatusView`] as one self-contained HTML page: inline CSS, inline SVG, no
//! script, no external asset. It refreshes itself every [`REFRESH_SECONDS`] with a meta
//! refresh, reads on a phone (tables scroll sideways, facts wrap), and prints in black and
//! white (every state has a word as well as a colour). Every value is HTML-escaped.

use std::fmt::Write;

use super::svg::sparkline;
use super::{StatusView, REFRESH_SECONDS};
use crate::health::STALL_THRESHOLD_SECONDS;

/// Lag above which the lag figure is amber.
pub const LAG_WARN_SECONDS: f64 = 60.0;
/// Lag above which the lag figure is red (the default threshold of the lag alert).
pub const LAG_HIGH_SECONDS: f64 = 300.0;

/// Escapes text for HTML (element content and quoted attribute values).
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// A duration for people: `0.82 s`, `12.4 s`, `3 min 05 s`, `2 h 07 min`, `3 d 4 h`.
pub fn fmt_secs(s: f64) -> String {
    if !s.is_finite() {
        return "–".into();
    }
    let sign = if s < 0.0 { "−" } else { "" };
    let a = s.abs();
    let body = if a < 10.0 {
        format!("{a:.2} s")
    } else if a < 60.0 {
        format!("{a:.1} s")
    } else if a < 3600.0 {
        let t = a as u64;
        format!("{} min {:02} s", t / 60, t % 60)
    } else if a < 86400.0 {
        let t = a as u64;
        format!("{} h {:02} min", t / 3600, t % 3600 / 60)
    } else {
        let t = a as u64;
        format!("{} d {} h", t / 86400, t % 86400 / 3600)
    };
    format!("{sign}{body}")
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// gravity's log time for people: RFC 3339 as `2026-11-22 14:05:33 +08:00` (gravity's own
/// zone kept); any other shape as it was written.
pub fn display_time(raw: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory]:[offset_minute]"
    );
    time::OffsetDateTime::parse(raw, &Rfc3339)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| raw.to_string())
}

/// Rows per second for people.
pub fn fmt_rate(r: f64) -> String {
    if !r.is_finite() {
        "–".into()
    } else if r >= 100.0 {
        format!("{r:.0}")
    } else {
        format!("{r:.1}")
    }
}

/// The badge of a check: a colour class and a word (never colour alone).
pub fn check_mark(ok: bool, critical: bool) -> (&'static str, &'static str) {
    match (ok, critical) {
        (true, _) => ("pass", "✔ PASS"),
        (false, true) => ("fail", "✘ FAIL"),
        (false, false) => ("warn", "✘ FAIL"),
    }
}

/// The colour class of a verdict.
pub fn verdict_class(code: i32) -> &'static str {
    match code {
        0 => "ok",
        1 => "warning",
        2 => "critical",
        _ => "unknown",
    }
}

fn lag_class(lag: f64) -> &'static str {
    if lag > LAG_HIGH_SECONDS {
        "bad"
    } else if lag > LAG_WARN_SECONDS {
        "meh"
    } else {
        "good"
    }
}

pub(crate) const CSS: &str = "\
:root{--ok:#1a7f37;--warn:#9a6700;--bad:#cf222e;--mute:#57606a;--line:#d0d7de;--bg2:#f6f8fa}\
*{box-sizing:border-box}\
body{font-family:system-ui,-apple-system,'Segoe UI','DejaVu Sans',Roboto,sans-serif;margin:0;color:#1f2328;background:#fff;font-size:15px;line-height:1.4}\
main{max-width:1180px;margin:0 auto;padding:0 16px 24px}\
.banner{display:flex;flex-wrap:wrap;align-items:center;gap:8px 20px;padding:14px 16px;color:#fff}\
.banner.ok{background:var(--ok)}.banner.warning{background:#bf8700;color:#1f2328}.banner.critical{background:var(--bad)}.banner.unknown{background:var(--mute)}\
.verdict{font-size:34px;font-weight:800;letter-spacing:.04em;padding:2px 14px;border:3px solid currentColor;border-radius:8px}\
.who{flex:1 1 320px;min-width:0}.who .pl{font-size:22px;font-weight:700;overflow-wrap:anywhere}.who .why{font-size:15px;opacity:.95;overflow-wrap:anywhere}\
nav{padding:8px 16px;background:var(--bg2);border-bottom:1px solid var(--line);font-size:14px}nav a,nav span{display:inline-block;white-space:nowrap;margin-right:14px}\
h2{font-size:18px;margin:22px 0 8px;padding-bottom:4px;border-bottom:1px solid var(--line)}h2 small{font-weight:400;color:var(--mute);font-size:14px;margin-left:8px}\
.facts{display:grid;grid-template-columns:repeat(auto-fill,minmax(210px,1fr));gap:8px;margin-top:14px}\
.fact{border:1px solid var(--line);border-radius:6px;padding:6px 10px;background:#fff;min-width:0}\
.fact .k{font-size:12px;color:var(--mute);text-transform:uppercase;letter-spacing:.04em}\
.fact .v{font-size:18px;font-weight:600;overflow-wrap:anywhere}.fact .v.mono{font-size:14px;padding-top:3px}.fact .s{font-size:12px;color:var(--mute);overflow-wrap:anywhere}\
.tw{overflow-x:auto}\
table{border-collapse:collapse;width:100%;font-size:14px}\
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:middle}\
th{background:var(--bg2);font-weight:600;white-space:nowrap}\
td.num,th.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}\
tr.failrow td{background:#fff5f5}tr.warnrow td{background:#fff8e5}\
.b{display:inline-block;font-weight:700;font-size:13px;padding:1px 8px;border-radius:10px;white-space:nowrap;border:1px solid currentColor}\
.b.pass{color:var(--ok);background:#dafbe1}.b.fail{color:var(--bad);background:#ffebe9}.b.warn{color:var(--warn);background:#fff8c5}.b.none{color:var(--mute);background:var(--bg2)}\
.good{color:var(--ok)}.meh{color:var(--warn)}.bad{color:var(--bad)}.muted,.sev{color:var(--mute)}.sev{font-size:12px;margin-left:4px}\
code,.mono{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:13px}\
td.msg{font-family:ui-monospace,'DejaVu Sans Mono',monospace;font-size:12.5px;overflow-wrap:anywhere;min-width:280px}\
.lvl-fatal,.lvl-panic{color:var(--bad);font-weight:700}.lvl-error{color:var(--bad)}.lvl-warning{color:var(--warn)}\
.spark{vertical-align:middle;display:block}.nowrap{white-space:nowrap}\
.stale{display:inline-block;margin-left:6px;font-size:12px;font-weight:600;color:var(--warn)}\
footer{margin-top:24px;color:var(--mute);font-size:13px}\
@media (max-width:600px){.verdict{font-size:26px}.who .pl{font-size:19px}.facts{grid-template-columns:1fr 1fr}.fact .v{font-size:16px}table.stack thead{display:none}table.stack tr{display:block;border-bottom:1px solid var(--line);padding:4px 0}table.stack td{display:inline-block;border:none;padding:2px 6px;vertical-align:baseline}table.stack td.wide{display:block}td.msg{min-width:0}.spark{width:110px;height:28px}table.stack tr.failrow{background:#fff5f5}table.stack tr.warnrow{background:#fff8e5}\
table.stack tr td{background:none}table.stack td[data-l]::before{content:attr(data-l) \": \";color:var(--mute);font-size:12px}}\
@media print{nav,.noprint{display:none}.banner{color:#000!important;background:none!important;border:3px solid #000}\
.b{background:none!important}body{font-size:12px}.tw{overflow:visible}a{color:#000;text-decoration:none}}";

fn fact(out: &mut String, key: &str, value: &str, class: &str, sub: &str) {
    let _ = write!(
        out,
        "<div class=\"fact\"><div class=\"k\">{}</div><div class=\"v {}\">{}</div>{}</div>",
        esc(key),
        class,
        esc(value),
        if sub.is_empty() {
            String::new()
        } else {
            format!("<div class=\"s\">{}</div>", esc(sub))
        }
    );
}

/// Renders the page.
pub fn render(v: &StatusView) -> String {
    let mut o = String::with_capacity(32 * 1024);
    let vclass = verdict_class(v.nagios_code);
    let failing: Vec<&str> = v.checks.iter().filter(|c| !c.ok).map(|c| c.name).collect();
    let pipeline = if v.pipeline.is_empty() {
        "(pipeline unknown)"
    } else {
        v.pipeline.as_str()
    };
    let why = if failing.is_empty() {
        format!("all {} health checks pass", v.checks.len())
    } else {
        format!(
            "{} of {} health checks fail: {}",
            failing.len(),
            v.checks.len(),
            failing.join(", ")
        )
    };
    let _ = write!(
        o,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
<title>{verdict} · {pl} · gravity-exporter</title><style>{CSS}</style></head><body>\
<header class=\"banner {vclass}\" id=\"verdict\" data-verdict=\"{verdict}\"><div class=\"verdict\">{verdict}</div>\
<div class=\"who\"><div class=\"pl\">gravity pipeline {pl}</div><div class=\"why\">{why}</div></div></header>\
<nav><a href=\"{tp}\">Metrics</a><a href=\"/healthz\">Exporter health</a><a href=\"/-/ready\">Ready</a>\
<a href=\"/api/status\">JSON</a><span class=\"muted noprint\">refreshes every {REFRESH_SECONDS} s</span></nav><main>",
        verdict = v.verdict,
        pl = esc(pipeline),
        why = esc(&why),
        tp = esc(&v.telemetry_path),
    );

    // Header facts
    o.push_str("<section class=\"facts\" id=\"facts\">");
    fact(
        &mut o,
        "gravity_up",
        if v.gravity_up { "1 up" } else { "0 down" },
        if v.gravity_up { "good" } else { "bad" },
        match v.process.api_answered {
            Some(true) => "API answers",
            Some(false) => "API does not answer",
            None => "API not checked yet",
        },
    );
    let stale_note = |stale: bool, ago: f64| {
        if stale {
            format!("as of {} ago", fmt_secs(ago))
        } else {
            String::new()
        }
    };
    match &v.status {
        Some(s) => {
            let stage_class = if s.stage == "Full" { "meh" } else { "" };
            fact(
                &mut o,
                "stage",
                if s.stage.is_empty() { "–" } else { &s.stage },
                stage_class,
                &stale_note(s.stale, s.read_seconds_ago),
            );
        }
        None => fact(&mut o, "stage", "unknown", "muted", "no /status read yet"),
    }
    let max_lag = v.lag.first();
    match max_lag {
        Some(l) => fact(
            &mut o,
            "lag (max)",
            &fmt_secs(l.lag_seconds),
            lag_class(l.lag_seconds),
            &format!("stall {}", fmt_secs(l.stall_seconds)),
        ),
        None => fact(&mut o, "lag (max)", "–", "muted", "no watermarks"),
    }
    fact(
        &mut o,
        "rows/s in → out",
        &format!(
            "{} → {}",
            v.throughput.rows_in.map(fmt_rate).unwrap_or("–".into()),
            v.throughput.rows_out.map(fmt_rate).unwrap_or("–".into())
        ),
        "",
        "from gravity's /metrics",
    );
    let p = &v.process;
    fact(
        &mut o,
        "process",
        &match p.pid {
            Some(pid) => format!("pid {pid}"),
            None => "not found".into(),
        },
        if p.alive { "" } else { "bad" },
        &match (&p.state, p.uptime_seconds) {
            (Some(st), Some(up)) if p.alive => format!("{st}, up {}", fmt_secs(up)),
            (Some(st), _) if p.alive => st.clone(),
            (Some(st), _) => format!("{st}: not running"),
            (None, _) => "not running".into(),
        },
    );
    fact(
        &mut o,
        "restarts",
        &p.restarts.to_string(),
        if p.restarts > 0 { "meh" } else { "" },
        &match p.last_exit_seconds_ago {
            Some(a) => format!("{}, last {} ago", plural(p.exits, "exit"), fmt_secs(a)),
            None => plural(p.exits, "exit"),
        },
    );
    if let Some(s) = &v.status {
        fact(
            &mut o,
            "version",
            if s.version.is_empty() {
                "–"
            } else {
                &s.version
            },
            "mono",
            &format!("config hash {}", s.config_hash),
        );
        fact(&mut o, "position", &s.position, "mono", "");
    }
    o.push_str("</section>");

    // Lag
    let _ = write!(
        o,
        "<section id=\"lag\"><h2>Lag<small>now − EventTime per watermark stream; stall: now − ProcessTime</small>{}</h2>",
        v.status
            .as_ref()
            .filter(|s| s.stale)
            .map(|s| format!(
                "<span class=\"stale\">⚠ gravity not answering: watermarks as of {} ago</span>",
                esc(&fmt_secs(s.read_seconds_ago))
            ))
            .unwrap_or_default()
    );
    o.push_str("<div class=\"tw\"><table><thead><tr><th>stream</th><th class=\"num\">lag</th><th class=\"num\">stall</th><th>last collections</th></tr></thead><tbody>");
    if v.lag.is_empty() {
        o.push_str("<tr><td colspan=\"4\" class=\"muted\">no watermarks reported (yet)</td></tr>");
    }
    for s in &v.lag {
        let stall_class = if s.stall_seconds >= STALL_THRESHOLD_SECONDS {
            "bad"
        } else {
            "good"
        };
        let hmax = s.history.iter().copied().fold(0.0_f64, f64::max);
        let label = format!(
            "lag of {}, last {} collections, max {}",
            s.stream,
            s.history.len(),
            fmt_secs(hmax)
        );
        let color = match lag_class(s.lag_seconds) {
            "bad" => "#cf222e",
            "meh" => "#9a6700",
            _ => "#0969da",
        };
        let _ = write!(
            o,
            "<tr data-stream=\"{st}\"><td class=\"mono\">{st}</td><td class=\"num {lc}\" data-lag-seconds=\"{lag:.3}\">{lagt}</td><td class=\"num {sc}\">{stall}</td><td>{svg}</td></tr>",
            st = esc(&s.stream),
            lc = lag_class(s.lag_seconds),
            lag = s.lag_seconds,
            lagt = esc(&fmt_secs(s.lag_seconds)),
            sc = stall_class,
            stall = esc(&fmt_secs(s.stall_seconds)),
            svg = sparkline(&s.history, &label, color),
        );
    }
    o.push_str("</tbody></table></div>");
    if v.lag_streams_total > v.lag.len() {
        let _ = write!(
            o,
            "<p class=\"muted\">{} more streams not listed (largest lags shown).</p>",
            v.lag_streams_total - v.lag.len()
        );
    }
    let t = &v.throughput;
    let _ = write!(
        o,
        "<div class=\"tw\"><table><thead><tr><th>throughput</th><th class=\"num\">rows/s now</th><th>last collections</th></tr></thead><tbody>\
<tr><td>in (gravity's input)</td><td class=\"num\">{}</td><td>{}</td></tr>\
<tr><td>out (gravity's output)</td><td class=\"num\">{}</td><td>{}</td></tr></tbody></table></div></section>",
        t.rows_in.map(fmt_rate).unwrap_or("–".into()),
        sparkline(&t.history_in, "rows per second in, last collections", "#1a7f37"),
        t.rows_out.map(fmt_rate).unwrap_or("–".into()),
        sparkline(&t.history_out, "rows per second out, last collections", "#8250df"),
    );

    // Health checks
    let passing = v.checks.iter().filter(|c| c.evaluated && c.ok).count();
    let evaluated = v.checks.iter().filter(|c| c.evaluated).count();
    let unchecked = v.checks.len().saturating_sub(evaluated);
    let _ = write!(
        o,
        "<section id=\"checks\"><h2>Health checks<small>{passing} of {evaluated} evaluated pass{}</small></h2><div class=\"tw\"><table class=\"stack\"><thead><tr><th>result</th><th>check</th><th>detail</th></tr></thead><tbody>",
        if unchecked > 0 {
            format!(" · {unchecked} not checked")
        } else {
            String::new()
        }
    );
    for c in &v.checks {
        let (class, word) = if c.evaluated {
            check_mark(c.ok, c.critical)
        } else {
            ("none", "– NOT CHECKED")
        };
        let row = match class {
            "fail" => " class=\"failrow\"",
            "warn" => " class=\"warnrow\"",
            _ => "",
        };
        let sev = if c.ok {
            String::new()
        } else if c.critical {
            "<span class=\"sev\">critical</span>".into()
        } else {
            "<span class=\"sev\">warning</span>".into()
        };
        let _ = write!(
            o,
            "<tr{row} data-check=\"{n}\" data-ok=\"{ok}\" data-evaluated=\"{ev}\"><td><span class=\"b {class}\">{word}</span>{sev}</td><td class=\"mono\">{n}</td><td class=\"wide\">{d}</td></tr>",
            n = esc(c.name),
            ok = c.ok,
            ev = c.evaluated,
            d = esc(&c.detail),
        );
    }
    o.push_str("</tbody></table></div></section>");

    // Diagnosis and topology
    {
        let d = v.diagnosis.as_ref();
        let holding = d.map(|d| d.bottleneck.as_str()).unwrap_or("none");
        let _ = write!(
            o,
            "<section id=\"diagnosis\"><h2>Diagnosis<small>which stage holds the pipeline back, over the last window of collections · <a href=\"/api/diagnosis\">/api/diagnosis</a> · <a href=\"/api/topology\">/api/topology</a></small></h2>{}",
            super::topology::svg(&v.topology)
        );
        match d {
            None => o.push_str("<p class=\"muted\">No diagnosis yet: it needs two readings of gravity's /metrics.</p>"),
            Some(d) => {
                let _ = write!(
                    o,
                    "<p><b>bottleneck: {}</b> — {}</p>",
                    esc(holding),
                    esc(&d.finding)
                );
                if !d.suggestions.is_empty() {
                    o.push_str("<div class=\"tw\"><table class=\"stack\"><thead><tr><th>setting</th><th class=\"num\">in force</th><th class=\"num\">suggested</th><th>why</th></tr></thead><tbody>");
                    for s in &d.suggestions {
                        let num = |x: Option<f64>| x.map(|x| format!("{x}")).unwrap_or_default();
                        let _ = write!(
                            o,
                            "<tr><td class=\"mono\">{}</td><td class=\"num\">{}{}</td><td class=\"num\">{}</td><td>{}{}</td></tr>",
                            esc(s.setting.unwrap_or("(nothing to tune in gravity)")),
                            esc(&num(s.current)),
                            if s.from_config == Some(false) { " (default)" } else { "" },
                            esc(&num(s.suggested)),
                            esc(&s.reason),
                            s.look_at.as_deref().map(|l| format!(" Look at: {}", esc(l))).unwrap_or_default(),
                        );
                    }
                    o.push_str("</tbody></table></div>");
                }
            }
        }
        o.push_str("</section>");
    }

    // Connections
    let _ = write!(
        o,
        "<section id=\"connections\"><h2>Connections<small>{}</small></h2>",
        if v.connections.probes_on {
            "protocol-level probes of gravity's endpoints, and gravity's own ESTABLISHED connections"
        } else {
            "probes are off (--probe.interval=0s); gravity's own ESTABLISHED connections"
        }
    );
    o.push_str("<div class=\"tw\"><table class=\"stack\"><thead><tr><th>component</th><th>endpoint</th><th>health</th><th>failure</th><th class=\"num\">probe latency</th><th class=\"num\">gravity's connections</th><th>detail</th></tr></thead><tbody>");
    if v.connections.endpoints.is_empty() {
        o.push_str("<tr><td colspan=\"7\" class=\"muted\">no endpoints known (gravity's config not read yet)</td></tr>");
    }
    for c in &v.connections.endpoints {
        let (class, word) = match c.healthy {
            Some(true) => ("pass", "✔ UP"),
            Some(false) => ("fail", "✘ DOWN"),
            None => ("none", "– not probed"),
        };
        let _ = write!(
            o,
            "<tr{row} data-endpoint=\"{ep}\"><td>{comp}</td><td class=\"mono\">{ep}</td><td><span class=\"b {class}\">{word}</span></td><td class=\"bad\">{reason}</td><td class=\"num\" data-l=\"probe\">{lat}</td><td class=\"num\" data-l=\"gravity's connections\">{est}</td><td class=\"muted wide\">{detail}</td></tr>",
            row = if c.healthy == Some(false) { " class=\"failrow\"" } else { "" },
            comp = esc(&c.component),
            ep = esc(&c.endpoint),
            reason = esc(c.reason.as_deref().unwrap_or("")),
            lat = c
                .latency_ms
                .map(|ms| if ms < 10.0 { format!("{ms:.1} ms") } else { format!("{ms:.0} ms") })
                .unwrap_or_else(|| "–".into()),
            est = c.established.map(|n| n.to_string()).unwrap_or_else(|| "–".into()),
            detail = esc(c.detail.as_deref().unwrap_or("")),
        );
    }
    o.push_str("</tbody></table></div>");
    for p in &v.connections.missing_privileges {
        let _ = write!(
            o,
            "<p class=\"bad\" id=\"missing-privilege\">The exporter's source user lacks <code>{p}</code>: binlog lag and purge headroom cannot be read. Grant it: <code>GRANT {p} ON *.* TO …</code> (docs/connections.md).</p>",
            p = esc(p)
        );
    }
    o.push_str("</section>");

    // Canary
    if let Some(c) = &v.canary {
        let _ = write!(
            o,
            "<section id=\"canary\"><h2>Canary<small>one marked row per interval, source → gravity → target · writer {state} · {sent} sent, {arrived} arrived, {lost} lost, {pending} on the way{lag}{neck}</small></h2>",
            state = esc(c.state),
            sent = c.sent,
            arrived = c.arrived,
            lost = c.lost,
            pending = c.pending,
            lag = c
                .last_lag_seconds
                .map(|l| format!(" · last e2e lag {l:.3} s"))
                .unwrap_or_default(),
            neck = c
                .bottleneck
                .map(|b| format!(" · slowest stage: {b}"))
                .unwrap_or_default(),
        );
        if !c.detail.is_empty() {
            let _ = write!(o, "<p class=\"bad\">{}</p>", esc(&c.detail));
        }
        if !c.target_error.is_empty() {
            let _ = write!(
                o,
                "<p class=\"bad\">target not readable: {}</p>",
                esc(&c.target_error)
            );
        }
        o.push_str("<div class=\"tw\"><table class=\"stack\"><thead><tr><th class=\"num\">seq</th><th>written</th><th>outcome</th><th class=\"num\">e2e lag</th><th class=\"num\">gravity.input</th><th class=\"num\">gravity.output</th><th>trace id</th></tr></thead><tbody>");
        if c.recent.is_empty() {
            o.push_str("<tr><td colspan=\"7\" class=\"muted\">no canary finished yet</td></tr>");
        }
        let secs = |v: Option<f64>| v.map(|s| format!("{s:.3} s")).unwrap_or_else(|| "–".into());
        for r in &c.recent {
            let _ = write!(
                o,
                "<tr{row}><td class=\"num\">{seq}</td><td class=\"mono\">{at}</td><td>{out}</td><td class=\"num\">{lag}</td><td class=\"num\">{i}</td><td class=\"num\">{op}</td><td class=\"mono\">{t}</td></tr>",
                row = if r.outcome == "lost" { " class=\"failrow\"" } else { "" },
                seq = r.seq,
                at = esc(&r.written_at),
                out = r.outcome,
                lag = secs(r.lag_seconds),
                i = secs(r.input_seconds),
                op = secs(r.output_seconds),
                t = esc(&r.trace_id),
            );
        }
        o.push_str("</tbody></table></div></section>");
    }

    // Errors
    let e = &v.errors;
    let now_unix = crate::base::unix_now();
    let _ = write!(
        o,
        "<section id=\"errors\"><h2>Last errors<small>{} in the last 5 minutes · {} since the exporter started · newest first</small></h2>",
        e.recent, e.total
    );
    o.push_str("<div class=\"tw\"><table class=\"stack\"><thead><tr><th>time</th><th>level</th><th>component</th><th>error type</th><th>message</th></tr></thead><tbody>");
    if e.last.is_empty() {
        o.push_str("<tr><td colspan=\"5\" class=\"muted\">no error lines read from gravity's log</td></tr>");
    }
    for ev in &e.last {
        let _ = write!(
            o,
            "<tr data-error-type=\"{et}\"><td class=\"mono nowrap\">{time}<div class=\"sev\">read {ago} ago</div></td><td class=\"lvl-{lvl}\">{lvl}{retry}</td><td>{comp}</td><td class=\"mono\">{et}</td><td class=\"msg wide\">{msg}</td></tr>",
            et = esc(ev.error_type),
            time = esc(&display_time(&ev.time)),
            ago = esc(&fmt_secs((now_unix - ev.seen_unix).max(0.0))),
            lvl = esc(ev.level),
            retry = if ev.retry { " <span class=\"sev\">retry</span>" } else { "" },
            comp = esc(ev.component),
            msg = esc(&ev.message),
        );
    }
    o.push_str("</tbody></table></div></section>");

    // Discovered
    o.push_str("<section id=\"discovered\"><h2>Discovered</h2><div class=\"tw\"><table><tbody>");
    for f in &v.discovered {
        let _ = write!(
            o,
            "<tr><th>{}</th><td class=\"mono\">{}</td></tr>",
            esc(&f.key),
            esc(&f.value)
        );
    }
    let _ = writeln!(
        o,
        "</tbody></table></div></section><footer>gravity-exporter {} · generated {} · verdict as <code>gravity-exporter check</code> computes it (Nagios {}) · the same data as JSON: <a href=\"/api/status\">/api/status</a></footer></main></body></html>",
        esc(v.exporter_version),
        esc(&v.generated_at),
        v.nagios_code,
    );
    o
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use super::*;
    use crate::state::recent::ErrorEvent;

    pub(crate) fn sample_view() -> StatusView {
        StatusView {
            generated_at: "2026-01-01T00:00:00Z".into(),
            exporter_version: "0.1.0",
            pipeline: "orders<script>".into(),
            verdict: "WARNING",
            nagios_code: 1,
            gravity_up: true,
            process: ProcessView {
                alive: true,
                pid: Some(4242),
                state: Some("sleeping".into()),
                uptime_seconds: Some(3725.0),
                restarts: 2,
                exits: 2,
                last_exit_seconds_ago: Some(600.0),
                api_answered: Some(true),
            },
            status: Some(StatusInfo {
                stage: "Incremental".into(),
                version: "v0.9.77".into(),
                config_hash: "abc123".into(),
                position: "mysql-bin.000042:1234".into(),
                read_seconds_ago: 0.2,
                stale: false,
            }),
            lag: vec![StreamView {
                stream: "mysqlstream".into(),
                lag_seconds: 0.81,
                stall_seconds: 0.4,
                history: vec![0.5, 0.9, 0.8],
            }],
            lag_streams_total: 3,
            throughput: ThroughputView {
                rows_in: Some(200.0),
                rows_out: Some(198.5),
                history_in: vec![200.0, 201.0],
                history_out: vec![],
            },
            checks: vec![
                CheckView {
                    name: "process_running",
                    ok: true,
                    evaluated: true,
                    critical: true,
                    detail: "gravity process running".into(),
                },
                CheckView {
                    name: "log_healthy",
                    ok: false,
                    evaluated: true,
                    critical: false,
                    detail: "3 error lines in the last 5 minutes".into(),
                },
            ],
            connections: ConnectionsView {
                missing_privileges: Vec::new(),
                probes_on: true,
                endpoints: vec![ConnView {
                    component: "target".into(),
                    endpoint: "db2:3306".into(),
                    healthy: Some(false),
                    reason: Some("refused".into()),
                    latency_ms: Some(1.234),
                    detail: Some("connect: connection refused".into()),
                    established: Some(0),
                }],
            },
            errors: ErrorsView {
                recent: 3,
                total: 7,
                last: vec![ErrorEvent {
                    time: "2026-11-22T14:05:33+08:00".into(),
                    seen_unix: 1.0,
                    level: "warning",
                    component: "scheduler",
                    error_type: "deadlock",
                    retry: true,
                    message: "a <b>bold</b> & 'quoted' \"msg\"".into(),
                }],
            },
            canary: Some(CanaryView {
                state: "ok",
                detail: String::new(),
                target_error: String::new(),
                sent: 12,
                arrived: 10,
                lost: 1,
                pending: 1,
                last_lag_seconds: Some(0.25),
                bottleneck: Some("gravity.output"),
                recent: vec![CanaryRowView {
                    seq: 11,
                    trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
                    written_at: "2026-11-22T06:05:33Z".into(),
                    outcome: "arrived",
                    lag_seconds: Some(0.25),
                    input_seconds: Some(0.05),
                    output_seconds: Some(0.2),
                }],
            }),
            discovered: vec![Fact {
                key: "gravity API".into(),
                value: "http://127.0.0.1:8080/ (from flag)".into(),
            }],
            telemetry_path: "/metrics".into(),
            diagnosis: None,
            window_fill: Vec::new(),
            topology: crate::page::topology::Topology {
                nodes: Vec::new(),
                edges: Vec::new(),
            },
        }
    }

    #[test]
    fn escapes_everything_from_outside() {
        let h = render(&sample_view());
        assert!(!h.contains("<script>"), "unescaped pipeline name");
        assert!(h.contains("orders&lt;script&gt;"));
        assert!(h.contains("a &lt;b&gt;bold&lt;/b&gt; &amp; &#39;quoted&#39; &quot;msg&quot;"));
        assert!(!h.contains("<b>bold"));
        assert_eq!(
            esc("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }

    #[test]
    fn verdict_and_marks_have_colour_and_words() {
        let h = render(&sample_view());
        assert!(h.contains("<header class=\"banner warning\""), "{h}");
        assert!(h.contains("<div class=\"verdict\">WARNING</div>"));
        assert!(h.contains("1 of 2 health checks fail: log_healthy"));
        assert!(h.contains(
            "<span class=\"b pass\">✔ PASS</span></td><td class=\"mono\">process_running"
        ));
        assert!(
            h.contains("<span class=\"b warn\">✘ FAIL</span><span class=\"sev\">warning</span>")
        );
        assert!(h.contains("✘ DOWN") && h.contains(">refused<") && h.contains("1.2 ms"));
        assert!(h.contains("<meta http-equiv=\"refresh\" content=\"10\">"));
        assert!(h.contains("2 more streams not listed"));
        assert_eq!(check_mark(false, true), ("fail", "✘ FAIL"));
        assert_eq!(
            [0, 1, 2, 3].map(verdict_class),
            ["ok", "warning", "critical", "unknown"]
        );
        let mut v = sample_view();
        v.verdict = "CRITICAL";
        v.nagios_code = 2;
        v.checks[0].ok = false;
        let h = render(&v);
        assert!(h.contains("banner critical"));
        assert!(
            h.contains("<span class=\"b fail\">✘ FAIL</span><span class=\"sev\">critical</span>")
        );
    }

    #[test]
    fn no_external_assets_and_balanced_markup() {
        let h = render(&sample_view());
        for bad in ["src=", "<link", "<script", "@import", "url("] {
            assert!(!h.contains(bad), "{bad} in page");
        }
        // every href is local
        for part in h.split("href=\"").skip(1) {
            assert!(part.starts_with('/'), "{part}");
        }
        // the SVGs are well-formed
        for svg in h.split("<svg").skip(1) {
            let end = svg.find("</svg>").unwrap();
            let s = format!("<svg{}</svg>", &svg[..end]);
            crate::page::svg::tests::well_formed(&s).unwrap();
        }
        assert_eq!(
            h.matches("<svg").count(),
            3,
            "lag and rows in; one sample out; the topology"
        );
        for tag in ["table", "tr", "section", "div", "td"] {
            assert_eq!(
                h.matches(&format!("<{tag}>")).count() + h.matches(&format!("<{tag} ")).count(),
                h.matches(&format!("</{tag}>")).count(),
                "<{tag}> balance"
            );
        }
    }

    #[test]
    fn durations_and_rates() {
        assert_eq!(fmt_secs(0.812), "0.81 s");
        assert_eq!(fmt_secs(42.26), "42.3 s");
        assert_eq!(fmt_secs(185.0), "3 min 05 s");
        assert_eq!(fmt_secs(7500.0), "2 h 05 min");
        assert_eq!(fmt_secs(3.0 * 86400.0 + 7200.0), "3 d 2 h");
        assert_eq!(fmt_secs(-0.5), "−0.50 s");
        assert_eq!(fmt_secs(f64::NAN), "–");
        assert_eq!(fmt_rate(198.4), "198");
        assert_eq!(
            display_time("2026-11-22T14:05:33.123+08:00"),
            "2026-11-22 14:05:33 +08:00"
        );
        assert_eq!(display_time("Nov 22 14:05:33"), "Nov 22 14:05:33");
        assert_eq!(fmt_rate(2.26), "2.3");
    }
}
