//! Connection health, failure reasons and source binlog truth, end to end through the
//! exporter's /metrics, against real MariaDB servers (private ones with binary logging,
//! started per test, see common/mariadb.rs) and against the Kafka and MongoDB protocol
//! doubles of `gravity_double::{kafka,mongo}` (neither server can be
//! installed here).

mod common;
#[path = "common/mariadb.rs"]
mod mariadb;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gravity_double::kafka::{FakeBroker, Mode as KafkaMode};
use gravity_double::mongo::{FakeMongod, Mode as MongoMode};
use mariadb::{exec, MariaDb};

const WAIT: Duration = Duration::from_secs(15);

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Exporter settings for a gravity config, with no gravity process (probes and source
/// checks do not need one) and fast schedules.
fn settings(
    config: &Path,
    gravity_url: SocketAddr,
    probe_timeout: &str,
) -> gravity_exporter::config::Settings {
    common::settings(&[
        "--gravity.config",
        config.to_str().unwrap(),
        "--gravity.process-pattern",
        "^no-such-gravity-process-for-tests$",
        "--gravity.url",
        &format!("http://{gravity_url}"),
        "--collector.interval",
        "200ms",
        "--probe.interval",
        "200ms",
        "--probe.timeout",
        probe_timeout,
    ])
}

fn mysql_config(
    name: &str,
    source: (u16, &str, &str),
    target: Option<(u16, &str, &str)>,
) -> String {
    let mut t = format!(
        "name = \"{name}\"\n[input]\ntype = \"mysql\"\nmode = \"stream\"\n[input.config.source]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"{}\"\npassword = \"{}\"\n",
        source.0, source.1, source.2
    );
    if let Some((port, user, pw)) = target {
        t.push_str(&format!(
            "[output]\ntype = \"mysql\"\n[output.config.target]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{user}\"\npassword = \"{pw}\"\n"
        ));
    }
    t
}

/// Waits until `/metrics` has `name` with all `needles` at `want`; returns the whole body.
async fn wait_value(addr: SocketAddr, name: &str, needles: &[&str], want: f64) -> String {
    common::wait_metrics(
        addr,
        WAIT,
        &format!("{name}{needles:?} never became {want}"),
        |body| common::sample(body, name, needles) == Some(want),
    )
    .await
}

fn val(body: &str, name: &str, needles: &[&str]) -> Option<f64> {
    common::sample(body, name, needles)
}

#[tokio::test]
async fn mysql_up_wrong_password_and_closed_port() {
    if !mariadb::require() {
        return;
    }
    let mut db = MariaDb::start();
    let mut root = db.root().await;
    exec(
        &mut root,
        &[
            "CREATE USER 'repl'@'%' IDENTIFIED BY 'Src-Pw-4711'",
            "GRANT REPLICATION CLIENT, REPLICATION SLAVE ON *.* TO 'repl'@'%'",
        ],
    )
    .await;
    root.close().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Same server as source (right password) and as target (wrong password).
    let cfg = write(
        dir.path(),
        "gravity.toml",
        &mysql_config(
            "mysqltest",
            (db.port, "repl", "Src-Pw-4711"),
            Some((db.port, "repl", "Wrong-Pw-0815")),
        ),
    );
    let api = common::stub_http(404).await;
    let r = common::start(settings(&cfg, api, "2s")).await;
    let ep = format!("endpoint=\"127.0.0.1:{}\"", db.port);
    let src = ["component=\"source\"", ep.as_str()];
    let tgt = ["component=\"target\"", ep.as_str()];

    // Source up: health 1. Target: reachable but the password is wrong: 0, reason auth.
    wait_value(r.addr, "gravity_connection_health", &src, 1.0).await;
    let body = wait_value(r.addr, "gravity_connection_health", &tgt, 0.0).await;
    let body = if val(
        &body,
        "gravity_connection_failure_reason",
        &[tgt[0], tgt[1], "reason=\"auth\""],
    ) == Some(1.0)
    {
        body
    } else {
        wait_value(
            r.addr,
            "gravity_connection_failure_reason",
            &[tgt[0], tgt[1], "reason=\"auth\""],
            1.0,
        )
        .await
    };
    assert_eq!(
        val(&body, "gravity_connection_failure_reason", &src),
        None,
        "healthy source has no reason"
    );
    assert!(
        val(
            &body,
            "gravity_connection_probe_failures_total",
            &[tgt[0], "reason=\"auth\""]
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        val(
            &body,
            "gravity_connection_probe_failures_total",
            &[src[0], "reason=\"auth\""]
        ),
        Some(0.0)
    );
    assert!(
        val(
            &body,
            "gravity_connection_probe_duration_seconds_count",
            &src
        )
        .unwrap()
            >= 1.0
    );
    // The source user has REPLICATION CLIENT: the source collector reads the retention.
    wait_value(
        r.addr,
        "gravity_exporter_collector_success",
        &["collector=\"source\""],
        1.0,
    )
    .await;
    let body = common::get(r.addr, "/metrics").await.1;
    assert_eq!(
        val(&body, "gravity_source_binlog_retention_seconds", &[]),
        Some(0.0)
    );
    for secret in ["Src-Pw-4711", "Wrong-Pw-0815"] {
        assert!(!body.contains(secret), "{secret} in /metrics");
        assert!(
            !common::get(r.addr, "/").await.1.contains(secret),
            "{secret} on the landing page"
        );
    }

    // Port closed: health 0, reason refused.
    db.kill();
    wait_value(
        r.addr,
        "gravity_connection_failure_reason",
        &[src[0], src[1], "reason=\"refused\""],
        1.0,
    )
    .await;
    let body = common::get(r.addr, "/metrics").await.1;
    assert_eq!(val(&body, "gravity_connection_health", &src), Some(0.0));
    assert!(
        val(
            &body,
            "gravity_connection_probe_failures_total",
            &[src[0], "reason=\"refused\""]
        )
        .unwrap()
            >= 1.0
    );
    r.stop().await;
}

#[tokio::test]
async fn mysql_paused_with_sigstop_times_out_and_recovers() {
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gravity.toml",
        &mysql_config("paused", (db.port, "root", ""), None),
    );
    let api = common::stub_http(404).await;
    let r = common::start(settings(&cfg, api, "500ms")).await;
    let ep = format!("endpoint=\"127.0.0.1:{}\"", db.port);
    let src = ["component=\"source\"", ep.as_str()];
    wait_value(r.addr, "gravity_connection_health", &src, 1.0).await;
    db.pause();
    // The kernel still accepts the connection; the greeting never comes: timeout.
    wait_value(
        r.addr,
        "gravity_connection_failure_reason",
        &[src[0], src[1], "reason=\"timeout\""],
        1.0,
    )
    .await;
    let body = common::get(r.addr, "/metrics").await.1;
    assert_eq!(val(&body, "gravity_connection_health", &src), Some(0.0));
    assert!(
        val(
            &body,
            "gravity_connection_probe_failures_total",
            &[src[0], "reason=\"timeout\""]
        )
        .unwrap()
            >= 1.0
    );
    db.resume();
    wait_value(r.addr, "gravity_connection_health", &src, 1.0).await;
    r.stop().await;
}

fn status_json(file: &str, pos: u64) -> String {
    let position = format!(
        "{{\"current_position\":{{\"binlog-name\":\"{file}\",\"binlog-pos\":{pos},\"binlog-gtid\":\"0-1-42\"}},\"start_position\":null}}"
    );
    serde_json::json!({
        "name": "binlogtest",
        "configHash": "h1",
        "position": position,
        "watermarks": null,
        "stage": "Incremental",
        "version": "v0.9.54",
    })
    .to_string()
}

/// Wait until the active binlog `file` carries the Binlog_checkpoint event
/// that names itself: after that, nothing but new transactions moves it.
async fn wait_checkpoint(root: &mut gravity_exporter::probe::mysql::MySqlConn, file: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ev = root
            .query(&format!("SHOW BINLOG EVENTS IN '{file}'"))
            .await
            .unwrap();
        let done = (0..ev.rows.len()).any(|i| {
            ev.value(i, "Event_type") == Some("Binlog_checkpoint")
                && ev.value(i, "Info").is_some_and(|info| info.contains(file))
        });
        if done {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no Binlog_checkpoint for {file} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn binlog_headroom_matches_hand_count_after_flush_and_purge() {
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start();
    let mut root = db.root().await;
    exec(
        &mut root,
        &[
            "CREATE USER 'repl'@'%' IDENTIFIED BY 'Bl-Pw-1'",
            "GRANT REPLICATION CLIENT ON *.* TO 'repl'@'%'",
            "SET GLOBAL binlog_expire_logs_seconds = 7200",
            "CREATE DATABASE gx",
            "CREATE TABLE gx.t (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(200))",
        ],
    )
    .await;
    // Files 1..5 of different sizes, then purge file 1.
    for round in 1..=4 {
        for _ in 0..round * 3 {
            exec(
                &mut root,
                &["INSERT INTO gx.t (v) VALUES (REPEAT('x', 150))"],
            )
            .await;
        }
        exec(&mut root, &["FLUSH BINARY LOGS"]).await;
    }
    exec(&mut root, &["INSERT INTO gx.t (v) VALUES ('tail')"]).await;
    let b = mariadb::BINLOG_BASE;
    exec(&mut root, &[&format!("PURGE BINARY LOGS TO '{b}.000002'")]).await;
    // MariaDB appends a Binlog_checkpoint event (40 bytes here) to the active
    // file asynchronously, once the previous file's transactions are durable.
    // Count by hand only after it has landed, or the server grows under us.
    wait_checkpoint(&mut root, &format!("{b}.000005")).await;

    // The hand count.
    let logs = root.query("SHOW BINARY LOGS").await.unwrap();
    let sizes: Vec<(String, u64)> = logs
        .rows
        .iter()
        .map(|r| {
            (
                r[0].clone().unwrap(),
                r[1].clone().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let names: Vec<&str> = sizes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("{b}.000002"),
            format!("{b}.000003"),
            format!("{b}.000004"),
            format!("{b}.000005")
        ],
    );
    let st = root.query("SHOW MASTER STATUS").await.unwrap();
    let (cur_file, cur_pos): (String, u64) = (
        st.value(0, "File").unwrap().to_string(),
        st.value(0, "Position").unwrap().parse().unwrap(),
    );
    assert_eq!(cur_file, format!("{b}.000005"));
    // gravity is half-way through file 3.
    let size = |i: usize| sizes[i].1;
    let g_off = size(1) / 2;
    let want_headroom_files = 1.0; // file 2 lies before gravity's file 3
    let want_headroom_bytes = (size(0) + g_off) as f64;
    let want_files_behind = 2.0; // 3 → 5
    let want_bytes_behind = ((size(1) - g_off) + size(2) + cur_pos) as f64;

    let api = common::stub_routes(
        vec![
            ("/status", 200, status_json(&format!("{b}.000003"), g_off)),
            ("/healthz", 200, String::new()),
        ],
        404,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gravity.toml",
        &mysql_config("binlogtest", (db.port, "repl", "Bl-Pw-1"), None),
    );
    let r = common::start(settings(&cfg, api, "2s")).await;
    let body = wait_value(
        r.addr,
        "gravity_source_binlog_purge_headroom_files",
        &[],
        want_headroom_files,
    )
    .await;
    assert_eq!(
        val(&body, "gravity_source_binlog_purge_headroom_bytes", &[]),
        Some(want_headroom_bytes)
    );
    assert_eq!(
        val(&body, "gravity_source_binlog_files_behind", &[]),
        Some(want_files_behind)
    );
    assert_eq!(
        val(&body, "gravity_source_binlog_bytes_behind", &[]),
        Some(want_bytes_behind)
    );
    assert_eq!(
        val(&body, "gravity_source_binlog_retention_seconds", &[]),
        Some(7200.0)
    );
    assert_eq!(
        val(&body, "gravity_source_binlog_file_index", &[]),
        Some(5.0)
    );
    assert_eq!(
        val(&body, "gravity_source_binlog_offset_bytes", &[]),
        Some(cur_pos as f64)
    );
    assert_eq!(
        val(
            &body,
            "gravity_source_position_stalled",
            &["pipeline=\"binlogtest\""]
        ),
        Some(0.0)
    );

    // Purge past gravity's file: the unmistakable −1.
    exec(&mut root, &[&format!("PURGE BINARY LOGS TO '{b}.000004'")]).await;
    let body = wait_value(
        r.addr,
        "gravity_source_binlog_purge_headroom_files",
        &[],
        -1.0,
    )
    .await;
    assert_eq!(
        val(&body, "gravity_source_binlog_purge_headroom_bytes", &[]),
        Some(-1.0)
    );
    assert_eq!(
        val(&body, "gravity_source_binlog_files_behind", &[]),
        Some(2.0)
    );
    assert_eq!(
        val(&body, "gravity_source_binlog_bytes_behind", &[]),
        None,
        "unknown once purged"
    );
    root.close().await.unwrap();
    r.stop().await;
}

#[tokio::test]
async fn kafka_and_mongo_against_protocol_doubles() {
    let broker = FakeBroker::start(KafkaMode::Ok).await.unwrap();
    let bad_broker = FakeBroker::start(KafkaMode::Garbage).await.unwrap();
    let mongo = FakeMongod::start(MongoMode::Secondary).await.unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gravity.toml",
        &format!(
            "name = \"m2k\"\n[input]\ntype = \"mongo\"\nmode = \"stream\"\n[input.config.source]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"reader\"\npassword = \"mongo-pw\"\n[output]\ntype = \"async-kafka\"\n[output.config.kafka-global-config]\nbroker-addrs = [\"{}\", \"{}\", \"127.0.0.1:{closed}\"]\n",
            mongo.addr().port(),
            broker.addr(),
            bad_broker.addr()
        ),
    );
    let api = common::stub_http(404).await;
    let r = common::start(settings(&cfg, api, "1s")).await;
    let m = format!("endpoint=\"{}\"", mongo.addr());
    wait_value(
        r.addr,
        "gravity_connection_health",
        &["component=\"source\"", &m],
        1.0,
    )
    .await;
    let k = format!("endpoint=\"{}\"", broker.addr());
    wait_value(
        r.addr,
        "gravity_connection_health",
        &["component=\"kafka\"", &k],
        1.0,
    )
    .await;
    let g = format!("endpoint=\"{}\"", bad_broker.addr());
    wait_value(
        r.addr,
        "gravity_connection_failure_reason",
        &[&g, "reason=\"protocol\""],
        1.0,
    )
    .await;
    let c = format!("endpoint=\"127.0.0.1:{closed}\"");
    let body = wait_value(
        r.addr,
        "gravity_connection_failure_reason",
        &[&c, "reason=\"refused\""],
        1.0,
    )
    .await;
    assert_eq!(val(&body, "gravity_connection_health", &[&c]), Some(0.0));
    assert!(
        mongo.commands().iter().all(|c| c == "hello"),
        "{:?}",
        mongo.commands()
    );
    assert!(
        broker.requests().iter().all(|q| q.api_key == 18),
        "ApiVersions only"
    );
    // Mongo source: no binlog checks.
    assert_eq!(
        val(&body, "gravity_source_binlog_retention_seconds", &[]),
        None
    );
    r.stop().await;
}

#[tokio::test]
async fn gravity_own_connections_counted_from_proc() {
    // The test process plays gravity: it holds two connections to a "broker" listener.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let broker = l.local_addr().unwrap();
    let c1 = std::net::TcpStream::connect(broker).unwrap();
    let c2 = std::net::TcpStream::connect(broker).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gravity.toml",
        &format!(
            "name = \"own\"\n[input]\ntype = \"mysql\"\n[output]\ntype = \"async-kafka\"\n[output.config.kafka-global-config]\nbroker-addrs = [\"localhost:{}\", \"127.0.0.1:1\"]\n",
            broker.port()
        ),
    );
    let api = common::stub_http(404).await;
    let pid = std::process::id().to_string();
    let s = common::settings(&[
        "--gravity.config",
        cfg.to_str().unwrap(),
        "--gravity.pid",
        &pid,
        "--gravity.url",
        &format!("http://{api}"),
        "--collector.interval",
        "200ms",
        // no probes: their own connections would be counted as "gravity's" here
        "--probe.interval",
        "0s",
    ]);
    let r = common::start(s).await;
    // `localhost` resolves (to 127.0.0.1 and maybe ::1) and matches the IPv4 connections.
    let ep = format!("endpoint=\"localhost:{}\"", broker.port());
    wait_value(
        r.addr,
        "gravity_connections_established",
        &["component=\"kafka\"", &ep],
        2.0,
    )
    .await;
    let body = common::get(r.addr, "/metrics").await.1;
    assert_eq!(
        val(
            &body,
            "gravity_connections_established",
            &["endpoint=\"127.0.0.1:1\""]
        ),
        Some(0.0)
    );
    assert_eq!(
        val(&body, "gravity_connection_health", &[]),
        None,
        "probes are off"
    );
    drop(c1);
    wait_value(
        r.addr,
        "gravity_connections_established",
        &["component=\"kafka\"", &ep],
        1.0,
    )
    .await;
    drop(c2);
    wait_value(
        r.addr,
        "gravity_connections_established",
        &["component=\"kafka\"", &ep],
        0.0,
    )
    .await;
    r.stop().await;
}
