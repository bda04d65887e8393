//! One definition per value: lag, stall, up and the verdict are each computed by one function
//! of the state (`state::lag_seconds`, `state::stall_seconds`, `health::evaluate`), and every
//! view evaluates it at its own time. Read together, `/metrics`, `/api/status`, the status
//! page, `check` (its pure final step on the running state, and the CLI's own one-shot run)
//! and the OTLP export agree: lag and stall within the time between the reads, the checks
//! and the verdict exactly. The case is chosen so a second definition would show: lag and
//! stall differ by 600 s (gravity's watermark pinned 10 minutes behind, stalled), then
//! gravity exits.

mod common;

use std::time::{Duration, Instant};

use common::{get, sample, wait_metrics};
use gravity_double::otlp::{prometheus_name, Kind, Mode, Receiver};
use gravity_double::supervisor::Restart;
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use time::OffsetDateTime;

/// The largest value of an OTLP gauge in the last export that holds it (`name` as
/// Prometheus translates it; an export may come in several requests).
fn otlp_gauge(rx: &Receiver, name: &str) -> Option<f64> {
    let got = rx.received();
    got.metrics.iter().rev().find_map(|req| {
        req.resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .filter(|m| prometheus_name(&m.name, &m.unit, Kind::Gauge) == name)
            .filter_map(|m| match &m.data {
                Some(Data::Gauge(g)) => Some(g.data_points.iter()),
                _ => None,
            })
            .flatten()
            .filter_map(|p| match p.value {
                Some(number_data_point::Value::AsDouble(v)) => Some(v),
                Some(number_data_point::Value::AsInt(v)) => Some(v as f64),
                None => None,
            })
            .reduce(f64::max)
    })
}

/// Pass/fail of each evaluated check, as `/metrics` shows them.
fn metric_checks(text: &str) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("gravity_health_check{"))
        .filter_map(|l| {
            let (labels, v) = l.rsplit_once(' ')?;
            let name = labels.split("check=\"").nth(1)?.split('"').next()?;
            Some((name.to_string(), v.trim() == "1"))
        })
        .collect();
    out.sort();
    out
}

fn json_checks(v: &serde_json::Value) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["evaluated"] == true)
        .map(|c| {
            (
                c["name"].as_str().unwrap_or("").to_string(),
                c["ok"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

fn verdict_checks(v: &gravity_exporter::check::Verdict) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = v
        .checks
        .iter()
        .filter(|c| c.evaluated)
        .map(|c| (c.name.to_string(), c.ok))
        .collect();
    out.sort();
    out
}

/// The log errors of the health window, as the page and the health collector count them.
fn recent_errors(ctx: &gravity_exporter::collector::Context, now: OffsetDateTime) -> u64 {
    gravity_exporter::health::recent_errors(ctx, now)
}

fn perf(v: &gravity_exporter::check::Verdict, name: &str) -> Option<f64> {
    v.perf
        .iter()
        .find(|(n, _, _)| n == name)
        .map(|(_, v, _)| *v)
}

fn close(what: &str, a: f64, b: f64, tolerance: f64) {
    assert!(
        (a - b).abs() <= tolerance,
        "{what}: {a} and {b} differ by more than {tolerance} s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_api_page_check_and_otlp_agree() {
    let double = common::start_double(Restart::No, Duration::from_millis(200), &[]);
    double.wait_api().await;
    let rx = Receiver::grpc(Mode::Accept).await;
    let ep = rx.endpoint();
    let mut args = double.exporter_flags();
    args.extend(
        [
            "--probe.interval",
            "0s",
            "--gravity.log-state-file",
            "none",
            "--otlp.endpoint",
            &ep,
            "--otlp.interval",
            "200ms",
        ]
        .map(String::from),
    );
    let settings = common::settings(&common::owned(&args));
    let check_settings = settings.clone();
    let r = common::start(settings).await;

    // gravity's watermark pinned: its event time 605 s ago, moved 5 s ago (behind its source
    // by 600 s, stalled since)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    double
        .control(&format!(
            "/_double/watermark?event={:.3}&process={:.3}",
            now - 605.0,
            now - 5.0
        ))
        .await;
    wait_metrics(
        r.addr,
        Duration::from_secs(20),
        "the pinned watermark",
        |t| sample(t, "gravity_watermark_lag_seconds", &[]).is_some_and(|v| v > 600.0),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(30);
    while !otlp_gauge(&rx, "gravity_watermark_lag_seconds").is_some_and(|v| v > 600.0) {
        assert!(Instant::now() < deadline, "OTLP never exported the lag");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // every view, read one after the other
    let t0 = Instant::now();
    let (_, metrics) = get(r.addr, "/metrics").await;
    let (_, api) = get(r.addr, "/api/status").await;
    let api: serde_json::Value = serde_json::from_str(&api).unwrap();
    let (_, page) = get(r.addr, "/").await;
    let ctx = r.exp.ctx.clone();
    let now = OffsetDateTime::now_utc();
    let verdict = gravity_exporter::check::verdict_at(&ctx, recent_errors(&ctx, now), now);
    let otlp_lag = otlp_gauge(&rx, "gravity_watermark_lag_seconds");
    let otlp_stall = otlp_gauge(&rx, "gravity_watermark_stall_seconds");
    let cli = gravity_exporter::check::run_all(check_settings.clone(), None).await;
    // a value read at the start and one read at the end differ by the time between, plus
    // the collection interval (/metrics and OTLP show the last collection), plus the
    // granularity of gravity's timestamps
    let tol = t0.elapsed().as_secs_f64() + 0.2 + 1.0;

    let m_lag = sample(&metrics, "gravity_watermark_lag_seconds", &[]).unwrap();
    let m_stall = sample(&metrics, "gravity_watermark_stall_seconds", &[]).unwrap();
    let a_lag = api["lag"][0]["lag_seconds"].as_f64().unwrap();
    let a_stall = api["lag"][0]["stall_seconds"].as_f64().unwrap();
    let c_lag = perf(&verdict, "lag_seconds").unwrap();
    let c_stall = perf(&verdict, "stall_seconds").unwrap();
    let o_lag = otlp_lag.expect("OTLP exported the lag");
    let o_stall = otlp_stall.expect("OTLP exported the stall");
    assert_eq!(cli.verdicts.len(), 1, "{}", cli.text());
    let cli_lag = perf(&cli.verdicts[0], "lag_seconds").unwrap();
    let cli_stall = perf(&cli.verdicts[0], "stall_seconds").unwrap();
    for (what, v) in [
        ("api lag", a_lag),
        ("check lag", c_lag),
        ("otlp lag", o_lag),
        ("cli check lag", cli_lag),
    ] {
        close(&format!("/metrics lag vs {what}"), m_lag, v, tol);
    }
    for (what, v) in [
        ("api stall", a_stall),
        ("check stall", c_stall),
        ("otlp stall", o_stall),
        ("cli check stall", cli_stall),
    ] {
        close(&format!("/metrics stall vs {what}"), m_stall, v, tol);
    }
    // the same definition everywhere: lag − stall is the 600 s gravity is behind
    for (what, lag, stall) in [
        ("/metrics", m_lag, m_stall),
        ("/api/status", a_lag, a_stall),
        ("check", c_lag, c_stall),
        ("otlp", o_lag, o_stall),
    ] {
        close(
            &format!("{what} lag − stall vs 600 s"),
            lag - stall,
            600.0,
            2.0,
        );
    }
    // the checks and the verdict: identical
    let m_checks = metric_checks(&metrics);
    assert!(!m_checks.is_empty(), "{metrics}");
    assert_eq!(m_checks, json_checks(&api), "/metrics vs /api/status");
    assert_eq!(m_checks, verdict_checks(&verdict), "/metrics vs check");
    assert_eq!(
        api["verdict"].as_str(),
        Some(gravity_exporter::page::verdict_name(verdict.code()))
    );
    assert!(
        page.contains(api["verdict"].as_str().unwrap()),
        "the page shows the verdict"
    );
    assert_eq!(sample(&metrics, "gravity_up", &[]), Some(1.0), "{metrics}");
    assert_eq!(api["gravity_up"], true);

    // gravity exits: up 0 and CRITICAL in every view. The exit's log lines reach the state a
    // moment after the exit does; once they have, every view shows the same checks.
    double.control("/_double/fault?mode=crash").await;
    wait_metrics(r.addr, Duration::from_secs(10), "gravity down", |t| {
        sample(t, "gravity_up", &[]) == Some(0.0)
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let (metrics, api, verdict) = loop {
        let (_, metrics) = get(r.addr, "/metrics").await;
        let (_, api) = get(r.addr, "/api/status").await;
        let api: serde_json::Value = serde_json::from_str(&api).unwrap();
        let now = OffsetDateTime::now_utc();
        let recent = recent_errors(&ctx, now);
        let verdict = gravity_exporter::check::verdict_at(&ctx, recent, now);
        let m = metric_checks(&metrics);
        if m == json_checks(&api) && m == verdict_checks(&verdict) {
            break (metrics, api, verdict);
        }
        assert!(
            Instant::now() < deadline,
            "the views never agree on the checks: /metrics {m:?}, /api/status {:?}, check {:?}",
            json_checks(&api),
            verdict_checks(&verdict)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let cli = gravity_exporter::check::run_all(check_settings, None).await;
    assert_eq!(api["gravity_up"], false);
    assert_eq!(perf(&verdict, "up"), Some(0.0));
    assert_eq!(api["verdict"], "CRITICAL");
    assert_eq!(verdict.code(), 2);
    assert_eq!(cli.code(), 2, "{}", cli.text());
    assert!(
        metric_checks(&metrics).contains(&("process_running".to_string(), false)),
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while otlp_gauge(&rx, "gravity_up") != Some(0.0) {
        assert!(
            Instant::now() < deadline,
            "OTLP never exported gravity_up 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    r.stop().await;
}
