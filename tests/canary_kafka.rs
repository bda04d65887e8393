//! The end-to-end canary with a Kafka target: a real private MariaDB as gravity's source,
//! the gravity double as gravity's data path (`GRAVITY_DOUBLE_KAFKA_PRODUCE=1`: it reads the
//! routed source tables and produces gravity's JSON messages, `gravity_double::kafka_out`),
//! and the fake broker of the tests (`gravity_double::kafka`; no Kafka server can be
//! installed here) behind TLS with a client certificate and SASL SCRAM-SHA-256, as gravity's
//! config says. The exporter must find each canary as a message in the route's topic.
//!
//! Canaries arrive with a measured lag and are observed in `gravity_data_lag_seconds`;
//! with the double's producer switched off (it goes on acknowledging, so `/healthz` stays
//! 200: silent loss) `gravity_canary_lost_total` grows; switched on, canaries arrive again.
//! A wrong SASL password in gravity's config gives a clear reason.

mod common;
#[path = "common/mariadb.rs"]
mod mariadb;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gravity_double::kafka::{FakeBroker, Mode, SaslUsers, Security};
use gravity_double::tls::Pki;
use mariadb::{exec, MariaDb};

const WAIT: Duration = Duration::from_secs(60);
const CANARY_USER: &str = "gx_canary";
const CANARY_PW: &str = "Canary-Pw-5d2e";
const SASL_PW: &str = "Sasl-Pw-7b1c";
const PIPELINE: &str = "orders-to-kafka";
const TOPIC: &str = "gravity.canary.heartbeat";

/// gravity's mysql2kafka config (tests/fixtures) pointed at the private source and the fake
/// broker, with TLS files and SCRAM-SHA-256, and a route of the canary table to [`TOPIC`].
fn gravity_config(
    dir: &Path,
    src: u16,
    broker: SocketAddr,
    pki: Option<&Pki>,
    sasl_pw: &str,
) -> PathBuf {
    let mut text = std::fs::read_to_string(
        common::fixtures().join("configs/mysql2kafka-stream.toml"),
    )
    .unwrap()
    .replace("host = \"mysql-primary.internal\"", "host = \"127.0.0.1\"")
    .replace("port = 3306", &format!("port = {src}"))
    .replace(
        "broker-addrs = [\"kafka-1.internal:9092\", \"kafka-2.internal:9092\", \"127.0.0.1:9092\"]",
        &format!("broker-addrs = [\"{broker}\"]"),
    )
    .replace(
        "password = \"sasl-pw\"",
        &format!("password = \"{sasl_pw}\"\nmechanism = \"SCRAM-SHA-256\""),
    );
    if let Some(pki) = pki {
        text = text.replace(
            "mode = \"async\"",
            &format!(
                "mode = \"async\"\ncert-file = \"{}\"\nkey-file = \"{}\"\nca-file = \"{}\"",
                pki.client_cert_file.display(),
                pki.client_key_file.display(),
                pki.ca_file.display()
            ),
        );
    }
    text.push_str(&format!(
        "\n[[output.config.routes]]\nmatch-schema = \"gravity_canary\"\nmatch-table = \"heartbeat\"\ndml-topic = \"{TOPIC}\"\n"
    ));
    assert!(
        text.contains(&broker.to_string()) && text.contains("SCRAM-SHA-256"),
        "{text}"
    );
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn users() -> SaslUsers {
    SaslUsers {
        mechanisms: vec!["SCRAM-SHA-256", "SCRAM-SHA-512"],
        user: "gravity".into(),
        password: SASL_PW.into(),
        iterations: 4096,
    }
}

fn v(body: &str, name: &str, extra: &[&str]) -> f64 {
    let p = format!("pipeline=\"{PIPELINE}\"");
    let mut needles = vec![p.as_str()];
    needles.extend_from_slice(extra);
    common::sample(body, name, &needles).unwrap_or(-1.0)
}

async fn wait(addr: SocketAddr, what: &str, f: impl FnMut(&str) -> bool) -> String {
    common::wait_metrics(addr, WAIT, what, f).await
}

async fn source_users(src: &MariaDb) {
    let mut s = src.root().await;
    exec(
        &mut s,
        &[
            // gravity's source login (the fixture's repl / kafka-pipeline-pw): the double reads
            // the routed tables with it.
            "CREATE USER 'repl'@'%' IDENTIFIED BY 'kafka-pipeline-pw'",
            "GRANT SELECT, REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'repl'@'%'",
            &format!("CREATE USER '{CANARY_USER}'@'%' IDENTIFIED BY '{CANARY_PW}'"),
            &format!(
                "GRANT SELECT, INSERT, UPDATE, CREATE ON gravity_canary.* TO '{CANARY_USER}'@'%'"
            ),
        ],
    )
    .await;
}

fn canary_flags(pw: &Path) -> Vec<String> {
    [
        "--collector.interval",
        "200ms",
        "--gravity.timeout",
        "1s",
        "--probe.interval",
        "0s",
        "--canary.interval",
        "1s",
        "--canary.timeout",
        "6s",
        "--canary.username",
        CANARY_USER,
        "--canary.password-file",
        pw.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_arrive_through_a_kafka_topic_over_sasl_ssl_and_loss_is_counted() {
    if !mariadb::require() {
        return;
    }
    let src = MariaDb::start();
    source_users(&src).await;
    let pki = Pki::new().unwrap();
    let broker = FakeBroker::start_secure(
        Mode::Ok,
        Security {
            tls: Some(pki.acceptor(true).unwrap()),
            sasl: Some(users()),
        },
    )
    .await
    .unwrap();
    broker.create_topic(TOPIC, 3);

    // The double as gravity with this config, producing to the broker.
    let dir = tempfile::tempdir().unwrap();
    let config = gravity_config(dir.path(), src.port, broker.addr(), Some(&pki), SASL_PW);
    let exe = gravity_double::binary().unwrap();
    let link = gravity_double::install_gravity_link(&exe, dir.path()).unwrap();
    let port = common::free_port();
    let mut cfg = gravity_double::SupervisorConfig::new(
        &link,
        dir.path(),
        &config,
        format!("127.0.0.1:{port}"),
    );
    cfg.log_file = Some(dir.path().join("gravity.log"));
    cfg.env
        .push(("GRAVITY_DOUBLE_KAFKA_PRODUCE".into(), "1".into()));
    let _sup = gravity_double::Supervisor::start(cfg).unwrap();

    let pw = dir.path().join("canary.pw");
    std::fs::write(&pw, format!("{CANARY_PW}\n")).unwrap();
    let pattern = format!(
        "/gravity --config={}( |$)",
        regex::escape(config.to_str().unwrap())
    );
    let mut flags = vec!["--gravity.process-pattern".to_string(), pattern];
    flags.extend(canary_flags(&pw));
    let run = common::start(common::settings(&common::owned(&flags))).await;
    let addr = run.addr;

    // 1. Canaries flow: the table is created on first use, the double produces gravity's
    //    messages, the exporter finds them in the topic and measures the lag.
    let body = wait(addr, "five canaries never arrived through the topic", |b| {
        v(b, "gravity_canary_arrived_total", &[]) >= 5.0
    })
    .await;
    assert_eq!(
        v(&body, "gravity_canary_writer_state", &["reason=\"ok\""]),
        1.0
    );
    let lag = v(&body, "gravity_canary_e2e_lag_seconds", &[]);
    assert!(lag > 0.0, "e2e lag {lag}");
    let hist = v(
        &body,
        "gravity_data_lag_seconds_count",
        &["schema=\"gravity_canary\"", "table=\"heartbeat\""],
    );
    assert!(hist >= 5.0, "canary table lag observations: {hist}");
    let sum = v(
        &body,
        "gravity_data_lag_seconds_sum",
        &["schema=\"gravity_canary\"", "table=\"heartbeat\""],
    );
    eprintln!("MEASURED: kafka canary e2e lag last {lag:.4} s, mean {:.4} s over {hist} canaries (double polls the source every 100 ms)", sum / hist);
    // The topic holds gravity's JSON messages carrying the canaries' trace ids.
    let recs = broker.records(TOPIC);
    assert!(recs.len() >= 5, "{} messages", recs.len());
    let (_, api) = common::get(addr, "/api/status").await;
    let status: serde_json::Value = serde_json::from_str(&api).unwrap();
    let recent = status["canary"]["recent"].as_array().unwrap();
    let trace = recent
        .iter()
        .find(|c| c["outcome"] == "arrived")
        .and_then(|c| c["trace_id"].as_str())
        .unwrap()
        .to_string();
    let msg = recs
        .iter()
        .filter_map(|r| r.value.as_ref())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .find(|v| v.contains(&trace))
        .expect("the arrived canary's message is in the topic");
    assert!(msg.starts_with("{\"version\":\"0.1\",\"database\":\"gravity_canary\",\"table\":\"heartbeat\",\"type\":"), "{msg}");
    assert_eq!(status["canary"]["target_error"], "", "{api}");
    // Both ends logged in like gravity: SCRAM-SHA-256 over mutual TLS.
    let logins = broker.logins();
    assert!(
        logins.len() >= 2 && logins.iter().all(|l| l == "SCRAM-SHA-256:gravity"),
        "{logins:?}"
    );
    // Reading is bounded: the exporter's fetches come in well under the frame bound.
    assert!(broker
        .requests()
        .iter()
        .any(|r| r.api_key == 1 && r.client_id.as_deref() == Some("gravity-exporter")));

    // 2. Silent loss: the double drops its messages but acknowledges them (its watermark
    //    goes on, /healthz says healthy); canaries are lost.
    let lost0 = v(&body, "gravity_canary_lost_total", &[]);
    let off = common::post(port, "/_double/kafka?produce=off").await;
    assert!(off.contains("\"produce\":false"), "{off}");
    let body = wait(addr, "no canary counted lost with the producer off", |b| {
        v(b, "gravity_canary_lost_total", &[]) > lost0
    })
    .await;
    let healthz: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        common::get(healthz, "/healthz").await.0,
        200,
        "the double still looks healthy"
    );
    assert_eq!(
        v(&body, "gravity_canary_writer_state", &["reason=\"ok\""]),
        1.0,
        "the writer itself is fine"
    );

    // 3. Recovery.
    let arrived1 = v(&body, "gravity_canary_arrived_total", &[]);
    common::post(port, "/_double/kafka?produce=on").await;
    wait(
        addr,
        "canaries did not arrive again with the producer on",
        |b| v(b, "gravity_canary_arrived_total", &[]) >= arrived1 + 3.0,
    )
    .await;

    // No secret anywhere the exporter serves.
    for path in ["/metrics", "/", "/api/status"] {
        let (_, body) = common::get(addr, path).await;
        assert!(
            !body.contains(CANARY_PW) && !body.contains(SASL_PW),
            "{path} shows a password"
        );
    }
    let report = run.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_sasl_password_is_named_as_the_reason() {
    if !mariadb::require() {
        return;
    }
    let src = MariaDb::start();
    source_users(&src).await;
    // SASL_PLAINTEXT this time.
    let broker = FakeBroker::start_secure(
        Mode::Ok,
        Security {
            tls: None,
            sasl: Some(users()),
        },
    )
    .await
    .unwrap();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let wrong = "Wrong-Sasl-Pw-0e9";
    let config = gravity_config(dir.path(), src.port, broker.addr(), None, wrong);
    let pw = dir.path().join("canary.pw");
    std::fs::write(&pw, CANARY_PW).unwrap();
    // No gravity process: the exporter reads the config from --gravity.config.
    let gravity = common::stub_http(200).await;
    let mut flags = vec![
        "--gravity.config".to_string(),
        config.to_str().unwrap().to_string(),
        "--gravity.process-pattern".to_string(),
        "^no-such-gravity-process-for-tests$".to_string(),
        "--gravity.url".to_string(),
        format!("http://{gravity}"),
    ];
    flags.extend(canary_flags(&pw));
    let run = common::start(common::settings(&common::owned(&flags))).await;
    let addr = run.addr;
    wait(addr, "canaries were written", |b| {
        v(b, "gravity_canary_sent_total", &[]) >= 1.0
    })
    .await;
    let t0 = std::time::Instant::now();
    let api = loop {
        let api = common::get(addr, "/api/status").await.1;
        if api.contains("SASL_AUTHENTICATION_FAILED") {
            break api;
        }
        assert!(t0.elapsed() < WAIT, "no SASL reason in /api/status: {api}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let status: serde_json::Value = serde_json::from_str(&api).unwrap();
    let e = status["canary"]["target_error"].as_str().unwrap();
    assert!(
        e.starts_with(&format!(
            "kafka topic {TOPIC}: SASL SCRAM-SHA-256 login of user gravity failed"
        )),
        "{e}"
    );
    let (_, page) = common::get(addr, "/").await;
    assert!(page.contains("target not readable"), "the page shows it");
    for path in ["/metrics", "/", "/api/status"] {
        let (_, body) = common::get(addr, path).await;
        assert!(
            !body.contains(wrong) && !body.contains(CANARY_PW),
            "{path} shows a password"
        );
    }
    assert!(broker.logins().is_empty());
    let report = run.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");
}
