//! gravity's HTTP API through the exporter, against the double: lag within 1 s of the
//! watermarks it serves, throughput within 2 % of the rate it produces, a counter reset
//! on restart handled, retries counted across restarts, and what lag shows on an idle
//! source (fresh heartbeat) versus a broken heartbeat (gravity issue #226).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{metric, owned, start_double, wait_for};
use gravity_double::supervisor::{Restart, Signal};

const P: &str = "pipeline=\"mysql2mysqlDemo\"";

async fn double_state(d: &common::Double) -> serde_json::Value {
    let c = gravity_exporter::gravity_api::GravityClient::new();
    let r = c
        .get(
            &d.url().parse().unwrap(),
            "/_double/state",
            Duration::from_secs(2),
            1 << 20,
        )
        .await
        .unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

fn flags(d: &common::Double, interval: &str) -> Vec<String> {
    let mut f = d.exporter_flags();
    let i = f.iter().position(|x| x == "--collector.interval").unwrap();
    f[i + 1] = interval.into();
    f.extend(["--probe.interval".into(), "0s".into()]);
    f
}

/// All throughput series of one exposition: (schema, table, operation) → rows/s.
fn throughput(body: &str) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for l in body
        .lines()
        .filter(|l| l.starts_with("gravity_throughput_rows_per_second{"))
    {
        let label = |k: &str| {
            let start = l.find(&format!("{k}=\""))? + k.len() + 2;
            let end = l[start..].find('"')? + start;
            Some(l[start..end].to_string())
        };
        let v: f64 = l.rsplit_once(' ').unwrap().1.parse().unwrap();
        out.insert(
            (
                label("schema").unwrap(),
                label("table").unwrap(),
                label("operation").unwrap(),
            ),
            v,
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_matches_the_watermarks_served() {
    let d = start_double(
        Restart::No,
        Duration::from_millis(100),
        &[("GRAVITY_DOUBLE_LAG_SECONDS", "6")],
    );
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&flags(&d, "200ms")))).await;
    assert!(wait_for(Duration::from_secs(5), || async {
        metric(
            r.addr,
            "gravity_watermark_lag_seconds",
            &[P, "stream=\"mysqlstream\""],
        )
        .await
        .is_some()
    })
    .await
    .is_some());
    for _ in 0..5 {
        let served = double_state(&d).await["lag_seconds"].as_f64().unwrap();
        let exported = metric(
            r.addr,
            "gravity_watermark_lag_seconds",
            &[P, "stream=\"mysqlstream\""],
        )
        .await
        .unwrap();
        assert!(
            (served - exported).abs() < 1.0,
            "served {served} exported {exported}"
        );
        assert!(
            served > 2.0,
            "the double should serve a lag near 6 s, got {served}"
        );
        let stall = metric(
            r.addr,
            "gravity_watermark_stall_seconds",
            &[P, "stream=\"mysqlstream\""],
        )
        .await
        .unwrap();
        assert!(stall < 1.0, "stall {stall}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // the histogram has observed those lags in the stream's series
    // at least five collections (every 200 ms; a loaded machine may need longer: poll)
    let count = wait_for(Duration::from_secs(20), || async {
        metric(
            r.addr,
            "gravity_data_lag_seconds_count",
            &[P, "schema=\"\"", "table=\"\""],
        )
        .await
        .is_some_and(|c| c >= 5.0)
    })
    .await;
    assert!(count.is_some(), "fewer than 5 observations in 20 s");
    let under_1 = metric(
        r.addr,
        "gravity_data_lag_seconds_bucket",
        &[P, "le=\"0.8\""],
    )
    .await
    .unwrap();
    assert_eq!(under_1, 0.0, "lags near 6 s must not land under 0.8 s");
    assert_eq!(
        metric(
            r.addr,
            "gravity_pipeline_info",
            &[P, "stage=\"Incremental\""]
        )
        .await,
        Some(1.0)
    );
    assert!(
        metric(
            r.addr,
            "gravity_binlog_offset_bytes",
            &[P, "position=\"current\""]
        )
        .await
        .unwrap()
            > 0.0
    );
    r.stop().await;
}

/// Scheduler retries summed over every reason (each reason's series exists from the start).
async fn scheduler_retries(addr: std::net::SocketAddr) -> f64 {
    let (_, body) = common::get(addr, "/metrics").await;
    body.lines()
        .filter(|l| {
            l.starts_with("gravity_retry_total{")
                && l.contains(P)
                && l.contains("component=\"scheduler\"")
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_within_two_percent_and_counter_reset() {
    let d = start_double(
        Restart::Always,
        Duration::from_millis(200),
        &[("GRAVITY_DOUBLE_RATE", "5000")],
    );
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&flags(&d, "1s")))).await;
    let check = |body: String, state: serde_json::Value| {
        let got = throughput(&body);
        let mut checked = 0;
        for want in state["rates"].as_array().unwrap() {
            let key = (
                want["db"].as_str().unwrap().to_string(),
                want["table"].as_str().unwrap().to_string(),
                want["op"].as_str().unwrap().to_string(),
            );
            let w = want["rows_per_second"].as_f64().unwrap();
            if w < 100.0 {
                continue;
            }
            let g = *got
                .get(&key)
                .unwrap_or_else(|| panic!("no series for {key:?} in {got:?}"));
            assert!(
                (g - w).abs() / w < 0.02,
                "{key:?}: exported {g}, produced {w}"
            );
            checked += 1;
        }
        assert!(checked >= 6, "too few series checked: {checked}");
        let total: f64 = got.values().sum();
        let want_total = state["rows_per_second"].as_f64().unwrap();
        assert!(
            (total - want_total).abs() / want_total < 0.02,
            "total {total} vs {want_total}"
        );
    };
    // two full windows
    assert!(wait_for(Duration::from_secs(5), || async {
        metric(
            r.addr,
            "gravity_exporter_collector_success",
            &["collector=\"gravity_metrics\""],
        )
        .await
            == Some(1.0)
            && !throughput(&common::get(r.addr, "/metrics").await.1).is_empty()
    })
    .await
    .is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    check(
        common::get(r.addr, "/metrics").await.1,
        double_state(&d).await,
    );

    // gravity restarts: its counters start again from zero
    d.control("/_double/errors?n=3&kind=deadlock").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let counted = scheduler_retries(r.addr).await;
    assert!(counted >= 3.0, "retries before restart: {counted}");
    let before = d.sup.pid();
    d.sup.kill(Signal::Kill).unwrap();
    d.sup
        .wait_until(Duration::from_secs(5), |s| {
            s.pid.is_some() && s.pid != before
        })
        .unwrap();
    d.wait_api().await;
    // through and after the reset no rate is negative or absurd
    for _ in 0..4 {
        let got = throughput(&common::get(r.addr, "/metrics").await.1);
        for (k, v) in &got {
            assert!(*v >= 0.0 && *v < 5000.0 * 1.5, "{k:?}: {v}");
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
    }
    check(
        common::get(r.addr, "/metrics").await.1,
        double_state(&d).await,
    );
    let after = scheduler_retries(r.addr).await;
    assert!(
        after >= counted,
        "retry total went down across the restart: {counted} -> {after}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_source_keeps_lag_low_broken_heartbeat_freezes_event_time() {
    let d = start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&flags(&d, "200ms")))).await;
    assert!(wait_for(Duration::from_secs(5), || async {
        metric(r.addr, "gravity_watermark_lag_seconds", &[P])
            .await
            .is_some()
    })
    .await
    .is_some());
    d.control("/_double/fault?mode=idle").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lag = metric(
        r.addr,
        "gravity_watermark_lag_seconds",
        &[P, "stream=\"mysqlstream\""],
    )
    .await
    .unwrap();
    assert!(
        lag < 2.5,
        "idle source: the heartbeat keeps lag low, got {lag}"
    );
    let rows: f64 = throughput(&common::get(r.addr, "/metrics").await.1)
        .values()
        .sum();
    assert_eq!(rows, 0.0, "idle: no input rows");

    d.control("/_double/fault?mode=heartbeat_broken").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lag = metric(
        r.addr,
        "gravity_watermark_lag_seconds",
        &[P, "stream=\"mysqlstream\""],
    )
    .await
    .unwrap();
    let stall = metric(
        r.addr,
        "gravity_watermark_stall_seconds",
        &[P, "stream=\"mysqlstream\""],
    )
    .await
    .unwrap();
    assert!(
        lag > 3.0,
        "broken heartbeat: EventTime frozen, lag grows, got {lag}"
    );
    assert!(
        stall < 1.5,
        "broken heartbeat: ProcessTime stays fresh, stall {stall}"
    );
    r.stop().await;
}
