//! The diagnosis end to end: the gravity double set to a case (its `/_double/diagnosis`
//! control), the exporter reading it, and what `/api/diagnosis`, `/metrics` and
//! `/api/topology` then say. The rules themselves are tested case by case on recorded
//! windows in `src/diagnosis/tests.rs` and against the double's figures in
//! `tests/gravity-double/tests/diagnosis_cases.rs`.

mod common;

use std::time::Duration;

use common::{get, owned, sample, start_double, wait_for};
use gravity_double::supervisor::Restart;

async fn diagnosis(addr: std::net::SocketAddr) -> serde_json::Value {
    let (code, body) = get(addr, "/api/diagnosis").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Waits until the diagnosis names `stage`; returns it (or the last one, for the message).
async fn wait_for_stage(
    addr: std::net::SocketAddr,
    stage: &str,
    within: Duration,
) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        let d = diagnosis(addr).await;
        if d["bottleneck"] == stage || t0.elapsed() > within {
            return d;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_of_the_double_is_named_with_gravitys_setting_to_change() {
    let d = start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let mut flags = d.exporter_flags();
    // a window of 6 readings 3 s apart (lag must grow by 5 s to count as growing)
    if let Some(i) = flags.iter().position(|f| f == "--collector.interval") {
        flags[i + 1] = "3s".into();
    }
    flags.extend(["--probe.interval".into(), "0s".into()]);
    let r = common::start(common::settings(&owned(&flags))).await;

    // before two readings: not ready, every stage present at 0
    let first = diagnosis(r.addr).await;
    if first["ready"] == false {
        assert_eq!(first["bottleneck"], "none");
        assert!(first["suggestions"].as_array().unwrap().is_empty());
    }
    // healthy: none, never a suggestion
    let healthy = wait_for(Duration::from_secs(30), || async {
        diagnosis(r.addr).await["ready"] == true
    })
    .await;
    assert!(
        healthy.is_some(),
        "no diagnosis after 30 s: {}",
        diagnosis(r.addr).await
    );
    let h = diagnosis(r.addr).await;
    assert_eq!(h["bottleneck"], "none", "{h}");
    assert!(h["suggestions"].as_array().unwrap().is_empty(), "{h}");

    // hot rows: the scheduler, the table named, more workers will not help
    d.control("/_double/diagnosis?case=hot_rows").await;
    let hot = wait_for_stage(r.addr, "scheduler", Duration::from_secs(60)).await;
    assert_eq!(hot["bottleneck"], "scheduler", "{hot:#}");
    assert_eq!(hot["case"], "hot_rows", "{hot:#}");
    let text = hot.to_string();
    assert!(text.contains('.'), "the hot table is named: {hot:#}");
    // /metrics says the same, with bounded labels
    let (_, m) = get(r.addr, "/metrics").await;
    assert_eq!(
        sample(&m, "gravity_pipeline_bottleneck", &["stage=\"scheduler\""]),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "gravity_pipeline_bottleneck", &["stage=\"output\""]),
        Some(0.0)
    );
    assert!(
        m.contains("gravity_pipeline_diagnosis_info{") && m.contains("case=\"hot_rows\""),
        "{m}"
    );
    // the topology marks the scheduler
    let (_, t) = get(r.addr, "/api/topology").await;
    let t: serde_json::Value = serde_json::from_str(&t).unwrap();
    let sched = t["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "scheduler")
        .unwrap();
    assert_eq!(sched["detail__state"], "warn", "{t:#}");
    assert_eq!(sched["arc__warn"], 1.0);

    // stuck window: the output, the item named
    d.control("/_double/diagnosis?case=stuck_window").await;
    let stuck = wait_for_stage(r.addr, "output", Duration::from_secs(60)).await;
    assert_eq!(stuck["case"], "stuck_window", "{stuck:#}");
    let (_, m) = get(r.addr, "/metrics").await;
    let fill = sample(
        &m,
        "gravity_sliding_window_fill_ratio",
        &["stream=\"mysqlstream\""],
    );
    assert!(
        fill.is_some_and(|f| f > 0.9),
        "the window reads full: {fill:?}"
    );

    // back to normal: none again, no suggestion
    d.control("/_double/diagnosis?case=none").await;
    let back = wait_for_stage(r.addr, "none", Duration::from_secs(60)).await;
    assert_eq!(back["bottleneck"], "none", "{back:#}");
    assert!(
        back["suggestions"].as_array().unwrap().is_empty(),
        "{back:#}"
    );
    r.stop().await;
}
