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

/// The families only a Mongo source gives (the oplog window and gravity's headroom in it),
/// against the fake mongod of `gravity_double::mongo` with a still oplog and a stub
/// `/status` whose position lies 1800 s after the oldest entry: the output of the source
/// collector's families for it, compared with tests/golden/source-mongo.prom and linted by
/// `promtool check metrics`.
#[tokio::test]
async fn golden_mongo_source_families() {
    use gravity_double::mongo::{FakeMongod, Mode, OplogSpec};
    let server = FakeMongod::start_with(
        Mode::Primary,
        common::mongo_reader(),
        OplogSpec {
            tick: Duration::from_secs(3600),
            ..OplogSpec::default()
        },
    )
    .await
    .unwrap();
    let (oldest, _) = server.oplog_bounds().unwrap();
    let position = (u64::from(oldest.time + 1800) << 32) | 1;
    let status = format!(
        "{{\"name\":\"golden-mongo\",\"configHash\":\"x\",\"position\":\"{{\\\"start_position\\\":null,\\\"current_position\\\":{position}}}\",\"watermarks\":null,\"stage\":\"Incremental\",\"version\":\"v0.9.54\"}}"
    );
    let api = common::stub_routes(vec![("/status", 200, status)], 404).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gravity.toml");
    std::fs::write(
        &cfg,
        format!(
            "name = \"golden-mongo\"\n[input]\ntype = \"mongo\"\nmode = \"stream\"\n[input.config.source]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"reader\"\npassword = \"mongo-pw\"\n[output]\ntype = \"async-kafka\"\n[output.config.kafka-global-config]\nbroker-addrs = [\"127.0.0.1:9\"]\n",
            server.addr().port()
        ),
    )
    .unwrap();
    let r = common::start(common::settings(&[
        "--gravity.config",
        cfg.to_str().unwrap(),
        "--gravity.process-pattern",
        "^no-such-gravity-process-for-tests$",
        "--gravity.url",
        &format!("http://{api}"),
        "--collector.interval",
        "200ms",
        "--probe.interval",
        "200ms",
        "--gravity.log-state-file",
        "none",
    ]))
    .await;
    let body = common::wait_metrics(r.addr, Duration::from_secs(20), "oplog families", |b| {
        common::sample(b, "gravity_source_oplog_headroom_seconds", &[]).is_some()
    })
    .await;
    let got: String = body
        .lines()
        .filter(|l| l.contains("gravity_source_oplog_"))
        .map(|l| format!("{l}\n"))
        .collect();
    let path = common::fixtures().join("../golden/source-mongo.prom");
    if std::env::var("UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (UPDATE_GOLDEN=1 to create)");
    assert_eq!(
        got, want,
        "/metrics differs from tests/golden/source-mongo.prom"
    );
    if let Some(promtool) = common::require_promtool() {
        let (code, complaints) = common::promtool_check_metrics(&promtool, &got);
        assert!(
            code == Some(0) && complaints.trim().is_empty(),
            "promtool check metrics: {complaints}"
        );
    }
    r.stop().await;
}
