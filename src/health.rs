//! The health verdict (SPEC §5): the seeds' `health_check.sh`, done properly.
//!
//! Seven checks, each a metric `gravity_health_check{pipeline,check}` (1 pass, 0 fail); their
//! sum is `gravity_health_score`. [`evaluate`] is pure: it reads what the collectors last
//! published (the metric snapshots and gravity_up's state). The `health` collector exports
//! it; `gravity-exporter check` prints the same verdict once with Nagios exit codes; the
//! status page shows it.
//!
//! | check | passes when |
//! | --- | --- |
//! | `process_running` | the gravity process exists and is not a zombie (or, with no process visible, its API answers) |
//! | `api_answering` | gravity's HTTP API answered the last check |
//! | `watermarks_advancing` | every watermark's ProcessTime is younger than the stall threshold (60 s, gravity's healthy-threshold default) and `/healthz` is 200 |
//! | `source_reachable` | every source endpoint answers its protocol probe (passes with a note when probes are off or the config names none) |
//! | `target_reachable` | every MySQL target answers, and at least one Kafka broker / Elasticsearch node of each kind does |
//! | `log_healthy` | no error, fatal or panic line in gravity's log in the last 5 minutes |
//! | `resources_ok` | open fds below 80 % of the limit |
#![warn(clippy::arithmetic_side_effects)]

use std::sync::Arc;
use std::time::Duration;

use crate::collector::{BoxFuture, CollectError, Collector, Context};
use crate::metrics::Families;

/// Stall age above which watermarks are not advancing.
pub const STALL_THRESHOLD_SECONDS: f64 = 60.0;
/// Window for "no errors recently".
pub const ERROR_WINDOW: Duration = Duration::from_secs(300);
/// Share of the fd limit above which resources are under pressure.
pub const FD_PRESSURE: f64 = 0.8;

/// One check's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// Name (the `check` label).
    pub name: &'static str,
    /// Whether it passes.
    pub ok: bool,
    /// One line for people.
    pub detail: String,
    /// Whether a failure is critical (else a warning).
    pub critical: bool,
}

/// What the checks read.
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// The process lives.
    pub process_alive: bool,
    /// The API answered its last check (`None`: not checked yet).
    pub api_answered: Option<bool>,
    /// Snapshots: status, healthz, connections, process.
    pub status: Option<Families>,
    /// `/healthz` snapshot.
    pub healthz: Option<Families>,
    /// Connection probe snapshot (None: probes off).
    pub connections: Option<Families>,
    /// Process snapshot.
    pub process: Option<Families>,
    /// Seconds since `/status` was last read successfully (the stall grows while it cannot be read).
    pub status_age_seconds: f64,
    /// Whether a log is being read.
    pub log_known: bool,
    /// Error lines seen in the window.
    pub recent_errors: u64,
}

fn check(name: &'static str, ok: bool, critical: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
        critical,
    }
}

fn endpoints_ok(conns: &Families, components: &[&str], need_all: bool) -> Option<(bool, String)> {
    let mut seen = 0usize;
    let mut healthy = 0usize;
    let mut bad = Vec::new();
    for (labels, v) in conns.samples("gravity_connection_health") {
        let comp = labels
            .iter()
            .find(|(k, _)| k == "component")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if !components.contains(&comp) {
            continue;
        }
        seen = seen.saturating_add(1);
        if v >= 1.0 {
            healthy = healthy.saturating_add(1);
        } else {
            let ep = labels
                .iter()
                .find(|(k, _)| k == "endpoint")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            bad.push(format!("{comp} {ep}"));
        }
    }
    if seen == 0 {
        return None;
    }
    let ok = if need_all {
        healthy == seen
    } else {
        healthy > 0
    };
    let detail = if bad.is_empty() {
        format!("{healthy}/{seen} endpoints answer")
    } else {
        format!(
            "{healthy}/{seen} endpoints answer; failing: {}",
            bad.join(", ")
        )
    };
    Some((ok, detail))
}

/// Evaluates the seven checks (pure).
pub fn evaluate(i: &Inputs) -> Vec<Check> {
    let mut out = Vec::with_capacity(7);
    let remote_ok = !i.process_alive && i.api_answered == Some(true);
    out.push(check(
        "process_running",
        i.process_alive || remote_ok,
        true,
        if i.process_alive {
            "gravity process running".to_string()
        } else if remote_ok {
            "no process visible here, but its API answers".to_string()
        } else {
            "gravity process not running".to_string()
        },
    ));
    out.push(check(
        "api_answering",
        i.api_answered == Some(true),
        true,
        match i.api_answered {
            Some(true) => "gravity's API answers",
            Some(false) => "gravity's API does not answer",
            None => "gravity's API not checked yet",
        },
    ));
    let stall = i.status.as_ref().map(|s| {
        s.samples("gravity_watermark_stall_seconds")
            .into_iter()
            .map(|(_, v)| v)
            .fold(f64::NEG_INFINITY, f64::max)
    });
    let healthz = i
        .healthz
        .as_ref()
        .and_then(|h| h.value("gravity_healthz", &[]));
    let (ok, detail) =
        match (stall, healthz) {
            (None, _) => (false, "no /status read yet".to_string()),
            (Some(s), _) if s == f64::NEG_INFINITY => (
                healthz != Some(0.0),
                "no watermarks reported yet".to_string(),
            ),
            (Some(s), h) => {
                (
                    s + i.status_age_seconds < STALL_THRESHOLD_SECONDS && h != Some(0.0),
                    format!(
                "oldest watermark moved {:.1} s ago (threshold {STALL_THRESHOLD_SECONDS} s){}",
                        s + i.status_age_seconds,
                if h == Some(0.0) { "; /healthz says unhealthy" } else { "" }
            ),
                )
            }
        };
    out.push(check("watermarks_advancing", ok, true, detail));
    let reach = |name: &'static str, comps: &[&str]| -> Check {
        match &i.connections {
            None => check(name, true, true, "connection probes are off"),
            Some(c) => {
                let mut parts = Vec::new();
                let mut all_ok = true;
                let mut any = false;
                for (comp, need_all) in comps
                    .iter()
                    .map(|c| (*c, *c != "kafka" && *c != "elasticsearch"))
                {
                    if let Some((ok, d)) = endpoints_ok(c, &[comp], need_all) {
                        any = true;
                        all_ok &= ok;
                        parts.push(format!("{comp}: {d}"));
                    }
                }
                if any {
                    check(name, all_ok, true, parts.join("; "))
                } else {
                    check(name, true, true, "no such endpoint in gravity's config")
                }
            }
        }
    };
    out.push(reach("source_reachable", &["source"]));
    out.push(reach(
        "target_reachable",
        &["target", "kafka", "elasticsearch"],
    ));
    out.push(if !i.log_known {
        check(
            "log_healthy",
            true,
            false,
            "gravity's log is not read (no log file known)",
        )
    } else {
        check(
            "log_healthy",
            i.recent_errors == 0,
            false,
            format!(
                "{} error lines in the last {} minutes",
                i.recent_errors,
                ERROR_WINDOW.as_secs() / 60
            ),
        )
    });
    let fds = i.process.as_ref().and_then(|p| {
        Some((
            p.value("gravity_process_open_fds", &[])?,
            p.value("gravity_process_max_fds", &[])?,
        ))
    });
    out.push(match fds {
        Some((open, max)) if max > 0.0 => check(
            "resources_ok",
            open / max < FD_PRESSURE,
            false,
            format!("{open:.0} of {max:.0} fds open"),
        ),
        _ => check(
            "resources_ok",
            true,
            false,
            "no fd figures (process not visible)",
        ),
    });
    out
}

/// The families for a verdict.
pub fn families(checks: &[Check], pipeline: &str) -> Families {
    let mut f = Families::new();
    for c in checks {
        f.gauge(
            "gravity_health_check",
            "1 when the health check passes, 0 when it fails (process_running, api_answering, watermarks_advancing, source_reachable, target_reachable, log_healthy, resources_ok).",
            &[("pipeline", pipeline), ("check", c.name)],
            if c.ok { 1.0 } else { 0.0 },
        );
    }
    f.gauge(
        "gravity_health_score",
        "Number of health checks that pass (of gravity_health_checks).",
        &[("pipeline", pipeline)],
        checks.iter().filter(|c| c.ok).count() as f64,
    );
    f.gauge(
        "gravity_health_checks",
        "Number of health checks evaluated.",
        &[("pipeline", pipeline)],
        checks.len() as f64,
    );
    f
}

/// Nagios verdict: 0 OK, 1 WARNING, 2 CRITICAL.
pub fn nagios_code(checks: &[Check]) -> i32 {
    if checks.iter().any(|c| !c.ok && c.critical) {
        2
    } else if checks.iter().any(|c| !c.ok) {
        1
    } else {
        0
    }
}

/// Reads what the checks need from the context.
pub fn inputs(ctx: &Context, recent_errors: u64) -> Inputs {
    let target = ctx.target();
    Inputs {
        process_alive: ctx.up.process_alive(),
        api_answered: ctx.up.api_state(),
        status: ctx.store.snapshot("status"),
        healthz: ctx.store.snapshot("healthz"),
        connections: ctx
            .settings()
            .probe_interval
            .and(ctx.store.snapshot(crate::collector::connections::SNAPSHOT)),
        process: ctx.store.snapshot("process"),
        status_age_seconds: ctx
            .last_status()
            .map(|st| st.at.elapsed().as_secs_f64())
            .unwrap_or(0.0),
        log_known: target.log_file.is_some(),
        recent_errors,
    }
}

/// The collector: evaluates the verdict from the others' last snapshots. The error count of
/// the window comes from the log watcher's per-10-second error buckets (`Context::recent`),
/// the same history the status page reads, so the metric and the page agree.
#[derive(Debug, Default)]
pub struct HealthCollector;

impl Collector for HealthCollector {
    fn name(&self) -> &'static str {
        "health"
    }

    fn derived(&self) -> bool {
        true
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let recent = ctx
                .recent
                .errors_within(ERROR_WINDOW, crate::collector::unix_now());
            let checks = evaluate(&inputs(&ctx, recent));
            Ok(families(&checks, &ctx.target().pipeline))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> Inputs {
        let mut status = Families::new();
        status.gauge(
            "gravity_watermark_stall_seconds",
            "h",
            &[("stream", "mysqlstream")],
            0.5,
        );
        let mut healthz = Families::new();
        healthz.gauge("gravity_healthz", "h", &[], 1.0);
        let mut conns = Families::new();
        conns.gauge(
            "gravity_connection_health",
            "h",
            &[("component", "source"), ("endpoint", "db:3306")],
            1.0,
        );
        conns.gauge(
            "gravity_connection_health",
            "h",
            &[("component", "target"), ("endpoint", "db2:3306")],
            1.0,
        );
        conns.gauge(
            "gravity_connection_health",
            "h",
            &[("component", "kafka"), ("endpoint", "k1:9092")],
            0.0,
        );
        conns.gauge(
            "gravity_connection_health",
            "h",
            &[("component", "kafka"), ("endpoint", "k2:9092")],
            1.0,
        );
        let mut process = Families::new();
        process.gauge("gravity_process_open_fds", "h", &[], 57.0);
        process.gauge("gravity_process_max_fds", "h", &[], 1024.0);
        Inputs {
            process_alive: true,
            api_answered: Some(true),
            status: Some(status),
            healthz: Some(healthz),
            connections: Some(conns),
            process: Some(process),
            log_known: true,
            recent_errors: 0,
            status_age_seconds: 1.0,
        }
    }

    #[test]
    fn stall_grows_while_status_cannot_be_read() {
        let mut i = healthy();
        assert!(evaluate(&i)[2].ok);
        i.status_age_seconds = 120.0; // gravity gone two minutes ago: its last stall was 0.5 s
        let w = &evaluate(&i)[2];
        assert_eq!(w.name, "watermarks_advancing");
        assert!(!w.ok, "{w:?}");
    }

    #[test]
    fn all_pass_when_healthy() {
        let c = evaluate(&healthy());
        assert_eq!(c.len(), 7);
        assert!(c.iter().all(|c| c.ok), "{c:?}");
        assert_eq!(nagios_code(&c), 0);
        let f = families(&c, "p");
        assert_eq!(f.value("gravity_health_score", &[]), Some(7.0));
    }

    #[test]
    fn each_failure_is_seen() {
        type Breaker = Box<dyn Fn(&mut Inputs)>;
        let cases: Vec<(&str, Breaker, i32)> = vec![
            (
                "process_running",
                Box::new(|i: &mut Inputs| {
                    // gone: no process and no API (an answering API alone is remote mode)
                    i.process_alive = false;
                    i.api_answered = Some(false);
                }),
                2,
            ),
            (
                "api_answering",
                Box::new(|i: &mut Inputs| i.api_answered = Some(false)),
                2,
            ),
            (
                "watermarks_advancing",
                Box::new(|i: &mut Inputs| {
                    let mut s = Families::new();
                    s.gauge(
                        "gravity_watermark_stall_seconds",
                        "h",
                        &[("stream", "mysqlstream")],
                        75.0,
                    );
                    i.status = Some(s);
                }),
                2,
            ),
            (
                "source_reachable",
                Box::new(|i: &mut Inputs| {
                    let mut c = Families::new();
                    c.gauge(
                        "gravity_connection_health",
                        "h",
                        &[("component", "source"), ("endpoint", "db:3306")],
                        0.0,
                    );
                    i.connections = Some(c);
                }),
                2,
            ),
            (
                "target_reachable",
                Box::new(|i: &mut Inputs| {
                    let mut c = Families::new();
                    c.gauge(
                        "gravity_connection_health",
                        "h",
                        &[("component", "kafka"), ("endpoint", "k1:9092")],
                        0.0,
                    );
                    i.connections = Some(c);
                }),
                2,
            ),
            (
                "log_healthy",
                Box::new(|i: &mut Inputs| i.recent_errors = 3),
                1,
            ),
            (
                "resources_ok",
                Box::new(|i: &mut Inputs| {
                    let mut p = Families::new();
                    p.gauge("gravity_process_open_fds", "h", &[], 900.0);
                    p.gauge("gravity_process_max_fds", "h", &[], 1024.0);
                    i.process = Some(p);
                }),
                1,
            ),
        ];
        for (name, breaker, code) in cases {
            let mut i = healthy();
            breaker(&mut i);
            let c = evaluate(&i);
            let failing: Vec<&str> = c.iter().filter(|c| !c.ok).map(|c| c.name).collect();
            let want: &[&str] = if name == "process_running" {
                &["process_running", "api_answering"]
            } else {
                &[name]
            };
            assert_eq!(failing, want, "{name}: {c:?}");
            assert_eq!(nagios_code(&c), code, "{name}");
        }
    }

    #[test]
    fn healthz_500_fails_watermarks_and_probes_off_pass() {
        let mut i = healthy();
        let mut h = Families::new();
        h.gauge("gravity_healthz", "h", &[], 0.0);
        i.healthz = Some(h);
        i.connections = None;
        let c = evaluate(&i);
        let w = c.iter().find(|c| c.name == "watermarks_advancing").unwrap();
        assert!(!w.ok && w.detail.contains("/healthz"), "{w:?}");
        assert!(c.iter().find(|c| c.name == "source_reachable").unwrap().ok);
    }
}
