//! The health verdict (SPEC §5): the seeds' `health_check.sh`, done properly.
//!
//! Seven checks, each a metric `gravity_health_check{pipeline,check}` (1 pass, 0 fail); their
//! sum is `gravity_health_score`. [`evaluate`] is pure: it reads what the producers last
//! published in the typed state ([`crate::state`]) and gravity_up's state, never a rendered
//! metric. The `health` collector exports
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

use time::OffsetDateTime;

use crate::collector::{BoxFuture, CollectError, Collector, Context};
use crate::metrics::Families;
use crate::state::EndpointHealth;

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
    /// Whether it could be evaluated: a check without its input (probes off, no log file
    /// known, no fd figures) is "not checked": it does not fail the verdict, does not count
    /// in the score, and says so everywhere.
    pub evaluated: bool,
}

/// Every check, in the verdict's order.
pub const CHECKS: [&str; 7] = [
    "process_running",
    "api_answering",
    "watermarks_advancing",
    "source_reachable",
    "target_reachable",
    "log_healthy",
    "resources_ok",
];

/// What the checks read: typed facts from [`crate::state`] (see [`inputs`]).
#[derive(Debug, Default, Clone)]
pub struct Inputs {
    /// The process lives.
    pub process_alive: bool,
    /// The API answered its last check (`None`: not checked yet).
    pub api_answered: Option<bool>,
    /// What `/status` said, as of now: `None` before it ever answered; `Some(None)` when it
    /// answered without watermarks (no position stored yet); else the largest stall of its
    /// watermarks as of now (`now − ProcessTime`, growing while gravity does not answer).
    pub stall_seconds: Option<Option<f64>>,
    /// `/healthz` answered 200 on its last successful check (`None`: never answered).
    pub healthz_ok: Option<bool>,
    /// The last connection-probe round (`None`: probes off).
    pub endpoints: Option<Vec<EndpointHealth>>,
    /// Open fds and their limit, when gravity's process is visible.
    pub fds: Option<(f64, f64)>,
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
        evaluated: true,
    }
}

/// A check whose input is missing: not evaluated (neither pass nor fail).
fn not_checked(name: &'static str, critical: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok: true,
        detail: detail.into(),
        critical,
        evaluated: false,
    }
}

fn endpoints_ok(
    endpoints: &[EndpointHealth],
    components: &[&str],
    need_all: bool,
) -> Option<(bool, String)> {
    let mut seen = 0usize;
    let mut healthy = 0usize;
    let mut bad = Vec::new();
    for e in endpoints {
        if !components.contains(&e.component) {
            continue;
        }
        seen = seen.saturating_add(1);
        if e.healthy {
            healthy = healthy.saturating_add(1);
        } else {
            bad.push(format!("{} {}", e.component, e.endpoint));
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
    let healthz = i.healthz_ok;
    let unhealthy = healthz == Some(false);
    let (ok, detail) = match i.stall_seconds {
        None => (false, "no /status read yet".to_string()),
        Some(None) => (!unhealthy, "no watermarks reported yet".to_string()),
        Some(Some(s)) => (
            s < STALL_THRESHOLD_SECONDS && !unhealthy,
            format!(
                "oldest watermark moved {s:.1} s ago (threshold {STALL_THRESHOLD_SECONDS} s){}",
                if unhealthy {
                    "; /healthz says unhealthy"
                } else {
                    ""
                }
            ),
        ),
    };
    out.push(check("watermarks_advancing", ok, true, detail));
    let reach = |name: &'static str, comps: &[&str]| -> Check {
        match &i.endpoints {
            None => not_checked(name, true, "not checked: connection probes are off"),
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
                    not_checked(
                        name,
                        true,
                        "not checked: no such endpoint in gravity's config",
                    )
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
        not_checked(
            "log_healthy",
            false,
            "not checked: gravity's log is not read (no log file known)",
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
    out.push(match i.fds {
        Some((open, max)) if max > 0.0 => check(
            "resources_ok",
            open / max < FD_PRESSURE,
            false,
            format!("{open:.0} of {max:.0} fds open"),
        ),
        _ => not_checked(
            "resources_ok",
            false,
            "not checked: no fd figures (process not visible)",
        ),
    });
    out
}

/// The families for a verdict: `gravity_health_check` for the checks that were evaluated,
/// `gravity_health_check_evaluated` for all seven, the score out of the evaluated ones.
pub fn families(checks: &[Check], pipeline: &str) -> Families {
    let mut f = Families::new();
    for c in checks.iter().filter(|c| c.evaluated) {
        f.gauge(
            "gravity_health_check",
            "1 when the health check passes, 0 when it fails (process_running, api_answering, watermarks_advancing, source_reachable, target_reachable, log_healthy, resources_ok); absent while the check cannot be evaluated (gravity_health_check_evaluated 0).",
            &[("pipeline", pipeline), ("check", c.name)],
            if c.ok { 1.0 } else { 0.0 },
        );
    }
    for name in CHECKS {
        let evaluated = checks.iter().any(|c| c.name == name && c.evaluated);
        f.gauge(
            "gravity_health_check_evaluated",
            "1 when the health check could be evaluated, 0 when its input is missing (probes off, no log file known, no fd figures): then it neither passes nor fails.",
            &[("pipeline", pipeline), ("check", name)],
            if evaluated { 1.0 } else { 0.0 },
        );
    }
    f.gauge(
        "gravity_health_score",
        "Number of evaluated health checks that pass (out of gravity_health_checks).",
        &[("pipeline", pipeline)],
        score(checks) as f64,
    );
    f.gauge(
        "gravity_health_checks",
        "Number of health checks evaluated (of the seven; the others lack their input).",
        &[("pipeline", pipeline)],
        evaluated(checks) as f64,
    );
    f
}

/// Evaluated checks that pass.
pub fn score(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.evaluated && c.ok).count()
}

/// Checks that were evaluated.
pub fn evaluated(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.evaluated).count()
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

/// Reads what the checks need from the typed state, as of `now`.
pub fn inputs_at(ctx: &Context, recent_errors: u64, now: OffsetDateTime) -> Inputs {
    let target = ctx.target();
    let st = &ctx.state;
    let stall_seconds = match (st.status.get(), st.status_answered.get()) {
        (Some(seen), _) => Some(seen.max_stall_seconds(now)),
        (None, Some(_)) => Some(None),
        (None, None) => None,
    };
    Inputs {
        process_alive: ctx.up.process_alive(),
        api_answered: ctx.up.api_state(),
        stall_seconds,
        healthz_ok: st.healthz.get().map(|h| h.ok),
        endpoints: ctx
            .settings()
            .probe_interval
            .and_then(|_| st.endpoints.get())
            .map(|e| e.as_ref().clone()),
        fds: st
            .process
            .get()
            .filter(|_| ctx.up.process_alive())
            .and_then(|p| Some((p.open_fds?, p.max_fds?))),
        log_known: target.log_file.is_some(),
        recent_errors,
    }
}

/// The classified error lines of gravity's log within [`ERROR_WINDOW`] before `now`, from
/// the log watcher's per-10-second buckets (`Context::recent`): the one count the health
/// collector, the page and the agreement test read.
pub fn recent_errors(ctx: &Context, now: OffsetDateTime) -> u64 {
    let now_unix = now.unix_timestamp_nanos() as f64 / 1e9;
    ctx.recent.errors_within(ERROR_WINDOW, now_unix)
}

/// [`inputs_at`] now.
pub fn inputs(ctx: &Context, recent_errors: u64) -> Inputs {
    inputs_at(ctx, recent_errors, OffsetDateTime::now_utc())
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
            let now = OffsetDateTime::now_utc();
            let checks = evaluate(&inputs_at(&ctx, recent_errors(&ctx, now), now));
            Ok(families(&checks, &ctx.target().pipeline))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(component: &'static str, endpoint: &str, healthy: bool) -> EndpointHealth {
        EndpointHealth {
            component,
            endpoint: endpoint.into(),
            healthy,
        }
    }

    fn healthy() -> Inputs {
        Inputs {
            process_alive: true,
            api_answered: Some(true),
            stall_seconds: Some(Some(1.5)),
            healthz_ok: Some(true),
            endpoints: Some(vec![
                ep("source", "db:3306", true),
                ep("target", "db2:3306", true),
                ep("kafka", "k1:9092", false),
                ep("kafka", "k2:9092", true),
            ]),
            fds: Some((57.0, 1024.0)),
            log_known: true,
            recent_errors: 0,
        }
    }

    #[test]
    fn stall_grows_while_status_cannot_be_read() {
        use crate::collector::status::{Position, Status, StatusSeen, Watermark};
        let read = OffsetDateTime::now_utc();
        let seen = StatusSeen {
            at: std::time::Instant::now(),
            status: Status {
                watermarks: vec![Watermark {
                    key: "mysqlstream".into(),
                    event_time: read - time::Duration::milliseconds(500),
                    process_time: read - time::Duration::milliseconds(500),
                }],
                position: Position::Unknown,
                name: String::new(),
                config_hash: String::new(),
                version: String::new(),
                stage: String::new(),
            },
        };
        let mut i = healthy();
        i.stall_seconds = Some(seen.max_stall_seconds(read));
        assert!(evaluate(&i)[2].ok);
        // gravity gone two minutes ago: its last stall was 0.5 s
        i.stall_seconds = Some(seen.max_stall_seconds(read + time::Duration::seconds(120)));
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
    fn no_position_stored_yet_is_not_a_stall() {
        let mut i = healthy();
        i.stall_seconds = Some(None);
        let w = &evaluate(&i)[2];
        assert!(w.ok && w.detail.contains("no watermarks"), "{w:?}");
        i.stall_seconds = None;
        let w = &evaluate(&i)[2];
        assert!(!w.ok && w.detail.contains("no /status"), "{w:?}");
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
                Box::new(|i: &mut Inputs| i.stall_seconds = Some(Some(75.0))),
                2,
            ),
            (
                "source_reachable",
                Box::new(|i: &mut Inputs| i.endpoints = Some(vec![ep("source", "db:3306", false)])),
                2,
            ),
            (
                "target_reachable",
                Box::new(|i: &mut Inputs| i.endpoints = Some(vec![ep("kafka", "k1:9092", false)])),
                2,
            ),
            (
                "log_healthy",
                Box::new(|i: &mut Inputs| i.recent_errors = 3),
                1,
            ),
            (
                "resources_ok",
                Box::new(|i: &mut Inputs| i.fds = Some((900.0, 1024.0))),
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
    fn healthz_500_fails_watermarks_and_probes_off_are_not_checked() {
        let mut i = healthy();
        i.healthz_ok = Some(false);
        i.endpoints = None;
        let c = evaluate(&i);
        let w = c.iter().find(|c| c.name == "watermarks_advancing").unwrap();
        assert!(!w.ok && w.detail.contains("/healthz"), "{w:?}");
        let s = c.iter().find(|c| c.name == "source_reachable").unwrap();
        // not evaluated: it neither passes nor fails, and says so
        assert!(
            !s.evaluated && s.ok && s.detail.starts_with("not checked"),
            "{s:?}"
        );
        assert_eq!(evaluated(&c), 5);
        assert_eq!(score(&c), 4);
        let f = families(&c, "p");
        assert_eq!(f.value("gravity_health_checks", &[]), Some(5.0));
        assert_eq!(f.value("gravity_health_score", &[]), Some(4.0));
        assert_eq!(
            f.value("gravity_health_check", &[("check", "source_reachable")]),
            None
        );
        assert_eq!(
            f.value(
                "gravity_health_check_evaluated",
                &[("check", "source_reachable")]
            ),
            Some(0.0)
        );
        assert_eq!(
            f.value(
                "gravity_health_check_evaluated",
                &[("check", "process_running")]
            ),
            Some(1.0)
        );
        assert_eq!(
            f.value("gravity_health_check", &[("check", "watermarks_advancing")]),
            Some(0.0)
        );
    }

    /// The verdict is read from the typed state the producers publish, never from the
    /// rendered metrics: a snapshot saying otherwise changes nothing.
    #[tokio::test]
    async fn the_verdict_reads_the_typed_state_not_the_metrics() {
        let cli = <crate::config::Cli as clap::Parser>::try_parse_from([
            "gravity-exporter",
            "--probe.interval",
            "15s",
        ])
        .unwrap();
        let settings = crate::config::Settings::from_flags(cli.flags).unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings));
        let ctx = Context::new(rx, Arc::new(crate::metrics::Store::new()));
        ctx.up.set_process(true, true);
        ctx.up.set_api(true);
        let mut lying = Families::new();
        lying.gauge("gravity_process_open_fds", "h", &[], 1.0);
        lying.gauge("gravity_process_max_fds", "h", &[], 1024.0);
        ctx.store.set_snapshot("process", lying);
        ctx.state
            .process
            .set(Some(crate::collector::process::ProcessFigures {
                open_fds: Some(1000.0),
                max_fds: Some(1024.0),
                ..Default::default()
            }));
        ctx.state
            .endpoints
            .set(Some(vec![ep("source", "db:3306", false)]));
        let c = evaluate(&inputs(&ctx, 0));
        let failing: Vec<&str> = c.iter().filter(|c| !c.ok).map(|c| c.name).collect();
        assert!(failing.contains(&"resources_ok"), "{c:?}");
        assert!(failing.contains(&"source_reachable"), "{c:?}");
    }
}
