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
    let mongo = FakeMongod::start_secure(MongoMode::Secondary, common::mongo_reader())
        .await
        .unwrap();
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
        // hello and gravity's SCRAM login, and the oplog window's reads (`find` on
        // local.oplog.rs by the source collector); never a write
        mongo
            .commands()
            .iter()
            .all(|c| ["hello", "saslStart", "saslContinue", "find"].contains(&c.as_str())),
        "{:?}",
        mongo.commands()
    );
    assert!(
        broker.requests().iter().all(|q| q.api_key == 18),
        "ApiVersions only"
    );
    // Mongo source: no binlog checks; the oplog window instead (no gravity position from
    // the stub API, so no headroom).
    assert_eq!(
        val(&body, "gravity_source_binlog_retention_seconds", &[]),
        None
    );
    let body = common::wait_metrics(r.addr, WAIT, "oplog window", |b| {
        val(b, "gravity_source_oplog_window_seconds", &[]).is_some()
    })
    .await;
    assert_eq!(
        val(&body, "gravity_source_oplog_headroom_seconds", &[]),
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

// ----- issue 12: precise reasons, TLS, ed25519, limits, connection budget -------------

use gravity_exporter::probe::mysql::{self as my, Login, MySqlConn, SharedConn};
use gravity_exporter::probe::{Endpoint, FailureReason, Secret};

const D: Duration = Duration::from_secs(5);

fn login(port: u16, user: &str, password: &str) -> Login {
    Login {
        endpoint: Endpoint::new("127.0.0.1", port),
        user: user.into(),
        password: Secret::new(password),
    }
}

async fn global_status(root: &mut MySqlConn, name: &str) -> u64 {
    let rs = root
        .query(&format!("SHOW GLOBAL STATUS LIKE '{name}'"))
        .await
        .unwrap();
    rs.rows[0][1].as_deref().unwrap().parse().unwrap()
}

async fn sessions_of(root: &mut MySqlConn, user: &str) -> usize {
    let rs = root
        .query(&format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = '{user}'"
        ))
        .await
        .unwrap();
    rs.rows[0][0].as_deref().unwrap().parse().unwrap()
}

/// A server with TLS: a `REQUIRE SSL` user is `tls_required` (not `auth`), a wrong password
/// of that user stays `auth`; an ed25519 user logs in; `MAX_USER_CONNECTIONS` reached is
/// `too_many_connections`. (`auth_plugin_unsupported` is tested against the fake server in
/// `probe::mysql`: MariaDB's PAM plugin answers a client without `dialog` with 1045.)
#[tokio::test]
async fn mysql_reasons_tls_user_ed25519_limits_plugins() {
    if !mariadb::require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(tls) = mariadb::tls_options(dir.path()) else {
        eprintln!("SKIP: openssl CLI missing, cannot make a test certificate");
        return;
    };
    let db = MariaDb::start_with(&tls);
    let mut root = db.root().await;
    exec(
        &mut root,
        &[
            "CREATE USER 'tlsuser'@'%' IDENTIFIED BY 'Tls-Pw-1' REQUIRE SSL",
            "CREATE USER 'limuser'@'%' IDENTIFIED BY 'Lim-Pw-3' WITH MAX_USER_CONNECTIONS 1",
        ],
    )
    .await;
    let ep = db.endpoint();

    let tls_user = my::probe(&ep, "tlsuser", &Secret::new("Tls-Pw-1"), D).await;
    assert_eq!(
        tls_user.reason,
        Some(FailureReason::TlsRequired),
        "{tls_user:?}"
    );
    assert!(
        tls_user.detail.contains("requires TLS"),
        "{}",
        tls_user.detail
    );
    let wrong = my::probe(&ep, "tlsuser", &Secret::new("Not-The-Pw"), D).await;
    assert_eq!(wrong.reason, Some(FailureReason::Auth), "{wrong:?}");
    for o in [&tls_user, &wrong] {
        assert!(!o.detail.contains("Tls-Pw-1") && !o.detail.contains("Not-The-Pw"));
    }

    // MAX_USER_CONNECTIONS 1: one session held, the probe is refused for the limit.
    let held = MySqlConn::connect(&ep, "limuser", &Secret::new("Lim-Pw-3"), D)
        .await
        .unwrap();
    let lim = my::probe(&ep, "limuser", &Secret::new("Lim-Pw-3"), D).await;
    assert_eq!(
        lim.reason,
        Some(FailureReason::TooManyConnections),
        "{lim:?}"
    );
    assert!(lim.detail.contains("connection limit"), "{}", lim.detail);
    held.close().await.unwrap();

    if mariadb::has_plugin("auth_ed25519") {
        exec(
            &mut root,
            &[
                "INSTALL SONAME 'auth_ed25519'",
                "CREATE USER 'eduser'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('Ed-Pw-2')",
            ],
        )
        .await;
        let ed = my::probe(&ep, "eduser", &Secret::new("Ed-Pw-2"), D).await;
        assert!(ed.ok, "{ed:?}");
        let ed_wrong = my::probe(&ep, "eduser", &Secret::new("Ed-Wrong"), D).await;
        assert_eq!(ed_wrong.reason, Some(FailureReason::Auth), "{ed_wrong:?}");
    } else {
        eprintln!("SKIP (ed25519 part): auth_ed25519.so is not installed");
    }

    root.close().await.unwrap();
}

/// `require_secure_transport=ON` on a second, private server: gravity's config has no TLS,
/// so the source is reported `tls_required` in /metrics and on the status page, with words
/// that do not send the operator to rotate passwords.
#[tokio::test]
async fn require_secure_transport_is_tls_required_on_metrics_and_page() {
    if !mariadb::require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(mut opts) = mariadb::tls_options(dir.path()) else {
        eprintln!("SKIP: openssl CLI missing, cannot make a test certificate");
        return;
    };
    opts.push("--require-secure-transport=ON".into());
    let db = MariaDb::start_with(&opts);
    let ep = db.endpoint();
    let direct = my::probe(&ep, "root", &Secret::default(), D).await;
    assert_eq!(
        direct.reason,
        Some(FailureReason::TlsRequired),
        "{direct:?}"
    );
    let plain = MySqlConn::connect_tls(&ep, "root", &Secret::default(), None, my::Tls::Off, D)
        .await
        .unwrap_err();
    eprintln!("require_secure_transport=ON, plain login: {plain}");

    let cfg = write(
        dir.path(),
        "gravity.toml",
        &mysql_config("tlsreq", (db.port, "root", ""), None),
    );
    let api = common::stub_http(404).await;
    let r = common::start(settings(&cfg, api, "2s")).await;
    let epl = format!("endpoint=\"127.0.0.1:{}\"", db.port);
    wait_value(
        r.addr,
        "gravity_connection_failure_reason",
        &[
            "component=\"source\"",
            epl.as_str(),
            "reason=\"tls_required\"",
        ],
        1.0,
    )
    .await;
    let (code, page) = common::get(r.addr, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("tls_required"), "{page}");
    assert!(page.contains("requires TLS"), "{page}");
    r.stop().await;
}

/// `wait_timeout` shorter than the time between uses: the shared connection is dropped by
/// the server, and the next use logs in again instead of failing.
#[tokio::test]
async fn short_wait_timeout_costs_a_login_not_a_failure() {
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start_with(&["--wait-timeout=1".to_string()]);
    let mut root = db.root().await;
    // root's own session would be dropped too: keep it alive with its own longer timeout
    exec(&mut root, &["SET SESSION wait_timeout = 600"]).await;
    let shared = SharedConn::new(login(db.port, "root", ""));
    let retry = Duration::from_secs(10);
    for round in 0..3 {
        let o = shared.probe(D, retry).await;
        assert!(o.ok, "round {round}: {o:?}");
        let id = shared.connection_id().await.unwrap();
        // Wait until the server has dropped that session.
        let t0 = std::time::Instant::now();
        loop {
            let rs = root
                .query(&format!(
                    "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {id}"
                ))
                .await
                .unwrap();
            if rs.rows[0][0].as_deref() == Some("0") {
                break;
            }
            assert!(t0.elapsed() < WAIT, "the server never dropped session {id}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let o = shared.probe(D, retry).await;
    assert!(o.ok, "{o:?}");
    assert_eq!(shared.logins().await, 4);
    shared.close(D).await;
    root.close().await.unwrap();
}

/// The connection budget: gravity's user has `MAX_USER_CONNECTIONS 2`; the exporter probes
/// the source and the probe DB (same server, same user) and runs the source collector on
/// one shared connection; at shutdown it sends COM_QUIT (no aborted client).
#[tokio::test]
async fn one_connection_per_endpoint_and_com_quit() {
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start();
    let mut root = db.root().await;
    exec(
        &mut root,
        &[
            "CREATE USER 'grav'@'%' IDENTIFIED BY 'Grav-Pw-9' WITH MAX_USER_CONNECTIONS 2",
            "GRANT REPLICATION CLIENT, REPLICATION SLAVE ON *.* TO 'grav'@'%'",
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = mysql_config("budget", (db.port, "grav", "Grav-Pw-9"), None);
    text.push_str(&format!(
        "[input.config.source-probe-config.mysql]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"grav\"\npassword = \"Grav-Pw-9\"\n",
        db.port
    ));
    let cfg = write(dir.path(), "gravity.toml", &text);
    let api = common::stub_http(404).await;
    let aborted_before = global_status(&mut root, "Aborted_clients").await;
    let r = common::start(settings(&cfg, api, "2s")).await;
    let epl = format!("endpoint=\"127.0.0.1:{}\"", db.port);
    wait_value(
        r.addr,
        "gravity_connection_health",
        &["component=\"source\"", epl.as_str()],
        1.0,
    )
    .await;
    wait_value(
        r.addr,
        "gravity_connection_health",
        &["component=\"probe_db\"", epl.as_str()],
        1.0,
    )
    .await;
    wait_value(
        r.addr,
        "gravity_source_privilege_missing",
        &["privilege=\"BINLOG MONITOR\""],
        0.0,
    )
    .await;
    let mut most = 0;
    for _ in 0..20 {
        most = most.max(sessions_of(&mut root, "grav").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        most, 1,
        "the exporter held {most} sessions of gravity's user"
    );
    // gravity's own second connection still fits under MAX_USER_CONNECTIONS 2.
    let gravity_side =
        MySqlConn::connect(&db.endpoint(), "grav", &Secret::new("Grav-Pw-9"), D).await;
    assert!(gravity_side.is_ok(), "{gravity_side:?}");
    gravity_side.unwrap().close().await.unwrap();

    // Shutdown as app::run does it: COM_QUIT on the shared connections. The server ends
    // the session gravity's side just closed on its own time: wait (bounded) until only
    // the exporter's is listed.
    let mut ids: Vec<String> = Vec::new();
    for _ in 0..50 {
        let rs = root
            .query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = 'grav'")
            .await
            .unwrap();
        ids = rs.rows.iter().map(|r| r[0].clone().unwrap()).collect();
        if ids.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(ids.len(), 1, "sessions of gravity's user: {ids:?}");
    let ctx = r.exp.ctx.clone();
    r.stop().await;
    ctx.mysql.close_all(D).await;
    let t0 = std::time::Instant::now();
    loop {
        let rs = root
            .query(&format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {}",
                ids[0]
            ))
            .await
            .unwrap();
        if rs.rows[0][0].as_deref() == Some("0") {
            break;
        }
        assert!(t0.elapsed() < WAIT, "the exporter's session stayed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let aborted_after = global_status(&mut root, "Aborted_clients").await;
    assert_eq!(aborted_after, aborted_before, "aborted clients");
    root.close().await.unwrap();
}

/// A source user without REPLICATION CLIENT / BINLOG MONITOR: the finding is a metric (and
/// so on the status page and in `check`), not only a log line.
#[tokio::test]
async fn missing_binlog_grant_is_a_metric() {
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start();
    let mut root = db.root().await;
    exec(
        &mut root,
        &["CREATE USER 'nogrant'@'%' IDENTIFIED BY 'No-Grant-1'"],
    )
    .await;
    root.close().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "gravity.toml",
        &mysql_config("nogrant", (db.port, "nogrant", "No-Grant-1"), None),
    );
    let api = common::stub_http(404).await;
    let r = common::start(settings(&cfg, api, "2s")).await;
    let body = wait_value(
        r.addr,
        "gravity_source_privilege_missing",
        &["pipeline=\"nogrant\"", "privilege=\"BINLOG MONITOR\""],
        1.0,
    )
    .await;
    // The login itself works: the probe is healthy.
    let epl = format!("endpoint=\"127.0.0.1:{}\"", db.port);
    assert_eq!(
        val(
            &body,
            "gravity_connection_health",
            &["component=\"source\"", epl.as_str()]
        ),
        Some(1.0)
    );
    let (_, page) = common::get(r.addr, "/").await;
    assert!(page.contains("BINLOG MONITOR"), "{page}");
    r.stop().await;
}

/// `--source.username` / `--source.password-file`: the exporter logs in with its own
/// monitoring user, not gravity's (whose password in the config is wrong here, so a probe
/// with gravity's user would fail).
#[tokio::test]
async fn monitoring_login_replaces_gravitys_user() {
    if !mariadb::require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // The flags are validated: a password file needs a user name.
    let pw = write(dir.path(), "monitor.pw", "Mon-Pw-5\n");
    let cli = <gravity_exporter::config::Cli as clap::Parser>::try_parse_from([
        "gravity-exporter",
        "--source.password-file",
        pw.to_str().unwrap(),
    ])
    .unwrap();
    let err = gravity_exporter::config::Settings::from_flags(cli.flags).unwrap_err();
    assert!(err.to_string().contains("source.password-file"), "{err}");

    let db = MariaDb::start();
    let mut root = db.root().await;
    exec(
        &mut root,
        &[
            "CREATE USER 'gx_monitor'@'%' IDENTIFIED BY 'Mon-Pw-5'",
            "GRANT BINLOG MONITOR ON *.* TO 'gx_monitor'@'%'",
        ],
    )
    .await;
    let cfg = write(
        dir.path(),
        "gravity.toml",
        &mysql_config("mon", (db.port, "gravity_user", "Not-Known-Here"), None),
    );
    let api = common::stub_http(404).await;
    let mut s = settings(&cfg, api, "2s");
    let monitor = common::settings(&[
        "--source.username",
        "gx_monitor",
        "--source.password-file",
        pw.to_str().unwrap(),
    ]);
    let login = monitor.source_login.clone().unwrap();
    assert_eq!(login.user, "gx_monitor");
    assert_eq!(login.password, Secret::new("Mon-Pw-5"));
    assert!(!format!("{monitor:?}").contains("Mon-Pw-5"));
    s.source_login = monitor.source_login;
    let r = common::start(s).await;
    let epl = format!("endpoint=\"127.0.0.1:{}\"", db.port);
    wait_value(
        r.addr,
        "gravity_connection_health",
        &["component=\"source\"", epl.as_str()],
        1.0,
    )
    .await;
    wait_value(
        r.addr,
        "gravity_source_privilege_missing",
        &["privilege=\"BINLOG MONITOR\""],
        0.0,
    )
    .await;
    assert_eq!(sessions_of(&mut root, "gx_monitor").await, 1);
    assert_eq!(sessions_of(&mut root, "gravity_user").await, 0);
    r.stop().await;
    root.close().await.unwrap();
}

/// (Moved from the prober's unit tests with the fake broker.) Kafka and Mongo doubles, a
/// hanging broker and a closed port, probed concurrently, each with its reason.
#[tokio::test]
async fn probes_run_concurrently_with_reasons() {
    use gravity_exporter::collector::connections::{probe_all, probe_targets};
    use gravity_exporter::probe::FailureReason;
    use std::time::Instant;
    // Kafka and Mongo doubles (built from the protocol specs), a hanging broker, and a
    // closed port.
    let kafka = FakeBroker::start(KafkaMode::Ok).await.unwrap();
    let hang = FakeBroker::start(KafkaMode::Hang).await.unwrap();
    // gravity's Mongo login (user u) is checked with SCRAM, as mongod does.
    let mongo = FakeMongod::start_secure(
        MongoMode::Primary,
        gravity_double::mongo::Security::users(vec![gravity_double::mongo::MongoUser {
            user: "u".into(),
            password: "mongo-secret".into(),
            db: "admin".into(),
            mechanisms: vec![gravity_exporter::probe::scram::ScramHash::Sha256],
            can_write: false,
        }]),
    )
    .await
    .unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = format!(
        r#"name = "k"
[input]
type = "mongo"
[input.config.source]
host = "127.0.0.1"
port = {mongo}
username = "u"
password = "mongo-secret"
[output]
type = "async-kafka"
[output.config.kafka-global-config]
broker-addrs = ["{kafka}", "{hang}", "127.0.0.1:{closed}"]
"#,
        mongo = mongo.addr().port(),
        kafka = kafka.addr(),
        hang = hang.addr(),
    );
    let c = gravity_exporter::gravity_config::parse(&text, false).unwrap();
    let eps = probe_targets(&c);
    let t0 = Instant::now();
    let timeout = Duration::from_millis(400);
    let r = probe_all(&eps, timeout).await;
    // concurrently: the hanging broker costs one timeout, not one per endpoint
    assert!(
        t0.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t0.elapsed()
    );
    let got: Vec<(&str, bool, Option<FailureReason>)> = r
        .iter()
        .map(|r| (r.component, r.outcome.ok, r.outcome.reason))
        .collect();
    assert_eq!(
        got,
        [
            ("source", true, None),
            ("kafka", true, None),
            ("kafka", false, Some(FailureReason::Timeout)),
            ("kafka", false, Some(FailureReason::Refused)),
        ]
    );
    assert_eq!(kafka.requests().len(), 1);
    assert_eq!(mongo.commands(), ["hello", "saslStart", "saslContinue"]);
}
