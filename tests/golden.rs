//! Golden-file test of the exporter's own /metrics output against a fixture /proc tree
//! and a stub gravity /healthz, linted by `promtool check metrics`.
//! Regenerate with `UPDATE_GOLDEN=1 cargo test --test golden`.

mod common;

use std::time::Duration;

/// Replaces values that change from run to run (durations, timestamps) with a placeholder.
fn normalise(text: &str) -> String {
    const VOLATILE: &[&str] = &[
        "gravity_exporter_collector_duration_seconds",
        "gravity_exporter_collector_last_success_timestamp_seconds",
        "gravity_process_last_seen_start_timestamp_seconds",
        "gravity_healthz_request_duration_seconds",
        "gravity_exporter_build_info",
        "gravity_status_request_duration_seconds",
        // lag and stall are now − fixture times: they grow with the date the test runs
        "gravity_watermark_lag_seconds",
        "gravity_watermark_stall_seconds",
        "gravity_data_lag_seconds_bucket",
        "gravity_data_lag_seconds_sum",
        // statvfs of the filesystem the fixture log is on: the test host's disk
        "gravity_log_filesystem_avail_bytes",
        "gravity_log_filesystem_size_bytes",
        // seconds since each source's last read; connections open while the test scrapes
        "gravity_exporter_source_age_seconds",
        "gravity_exporter_connections_open",
        // the background tasks' cycles: how long the last one took, when one last succeeded,
        // and whether one has finished by the time the test scrapes
        "gravity_exporter_task_cycle_duration_seconds",
        "gravity_exporter_task_last_success_timestamp_seconds",
        "gravity_exporter_task_success",
    ];
    text.lines()
        .map(|l| {
            if !l.starts_with('#') && VOLATILE.iter().any(|v| l.starts_with(v)) {
                match l.rsplit_once(' ') {
                    Some((series, _)) => format!("{series} <volatile>"),
                    None => l.to_string(),
                }
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[tokio::test]
async fn golden_metrics_output() {
    let status =
        std::fs::read_to_string(common::fixtures().join("status-incremental.json")).unwrap();
    let healthz = common::stub_routes(
        vec![
            ("/status", 200, status),
            ("/healthz", 200, String::new()),
            (
                "/metrics",
                200,
                std::fs::read_to_string(common::fixtures().join("metrics.prom")).unwrap(),
            ),
        ],
        404,
    )
    .await;
    let proc_root = common::fixtures().join("proc");
    let s = common::settings(&[
        "--path.procfs",
        proc_root.to_str().unwrap(),
        "--gravity.pid",
        "4242",
        "--gravity.url",
        &format!("http://{healthz}"),
        // gravity's own families are not linted (real gravity names counters *_counter);
        // the pass-through has its own tests.
        "--gravity.metrics-passthrough=false",
        // no logins to databases: the output must not depend on what runs on this host
        "--probe.interval",
        "0s",
        // no log state shared with other runs (the default state file is keyed by gravity's
        // log path, which every run of this fixture shares): the fixture log is followed
        // from its end, as on a first start
        "--gravity.log-state-file",
        "none",
    ]);
    let r = common::start(s).await;
    let ready = common::wait_for(Duration::from_secs(10), || async {
        common::get(r.addr, "/-/ready").await.0 == 200
    })
    .await;
    assert!(ready.is_some(), "exporter never became ready");
    let (status, body) = common::get(r.addr, "/metrics").await;
    assert_eq!(status, 200);
    let got = normalise(&body);
    let path = common::fixtures().join("../golden/metrics.prom");
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 to create)");
    if got != want {
        let diff: Vec<String> = want
            .lines()
            .zip(got.lines())
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("- {a}\n+ {b}"))
            .collect();
        panic!(
            "/metrics differs from tests/golden/metrics.prom ({} vs {} lines):\n{}",
            want.lines().count(),
            got.lines().count(),
            diff.join("\n")
        );
    }
    if let Some(promtool) = common::require_promtool() {
        let (code, complaints) = common::promtool_check_metrics(&promtool, &body);
        assert!(
            code == Some(0) && complaints.trim().is_empty(),
            "promtool check metrics: {complaints}"
        );
    }
    r.stop().await;
}
