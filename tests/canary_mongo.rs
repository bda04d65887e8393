//! The end-to-end canary with a Mongo source: the fake mongod of `gravity_double::mongo` (no
//! MongoDB server can be installed here) as gravity's source, a private MariaDB server as
//! its MySQL target, and `gravity_double::mongo::DataPath` as gravity's data path: it tails
//! the fake's oplog, writes each canary document into the target table the way gravity's
//! MySQL output writes a Mongo document (one column per top-level field), and pins the
//! gravity double's `/status` watermark to what it has read (docs/canary.md).
//!
//! Canaries written by the exporter must arrive with a measured lag, observed in
//! `gravity_data_lag_seconds{schema,table}`; with the data path's output paused (its input
//! still reads, so the double still looks healthy: silent loss) `gravity_canary_lost_total`
//! grows; resumed, canaries arrive again. A node that takes no writes and a revoked write
//! role stop the writer with reasons `read_only` and `privilege`.

mod common;
#[path = "common/mariadb.rs"]
mod mariadb;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gravity_double::mongo::{DataPath, FakeMongod, Mode, MongoUser, MysqlTarget, Security};
use mariadb::{exec, MariaDb};

const WAIT: Duration = Duration::from_secs(60);
const CANARY_USER: &str = "gx_canary";
const CANARY_PW: &str = "Canary-Mongo-Pw-7c1";
const PIPELINE: &str = "mongo2mysqlCanary";
const NS: &str = "gravity_canary.heartbeat";

fn v(body: &str, name: &str, extra: &[&str]) -> f64 {
    let p = format!("pipeline=\"{PIPELINE}\"");
    let mut needles = vec![p.as_str()];
    needles.extend_from_slice(extra);
    common::sample(body, name, &needles).unwrap_or(-1.0)
}

async fn wait(addr: SocketAddr, what: &str, f: impl FnMut(&str) -> bool) -> String {
    common::wait_metrics(addr, WAIT, what, f).await
}

fn gravity_config(dir: &Path, mongo: u16, target: u16) -> std::path::PathBuf {
    let text = format!(
        "name = \"{PIPELINE}\"\n\n[input]\ntype = \"mongo\"\nmode = \"stream\"\n\n[input.config.source]\nhost = \"127.0.0.1\"\nport = {mongo}\nusername = \"reader\"\npassword = \"mongo-pw\"\n\n[output]\ntype = \"mysql\"\n\n[output.config.target]\nhost = \"127.0.0.1\"\nport = {target}\nusername = \"root\"\npassword = \"\"\n\n[[output.config.routes]]\nmatch-schema = \"gravity_canary\"\nmatch-table = \"heartbeat\"\n"
    );
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongo_canaries_arrive_at_a_mysql_target_and_loss_is_counted() {
    if !mariadb::require() {
        return;
    }
    let mongod = FakeMongod::start_secure(
        Mode::Primary,
        Security::users(vec![
            MongoUser::reader("reader", "mongo-pw"),
            MongoUser::writer(CANARY_USER, CANARY_PW),
        ]),
    )
    .await
    .unwrap();
    // The target table as gravity's MySQL output needs it: a column per document field.
    let target = MariaDb::start();
    let mut t = target.root().await;
    exec(
        &mut t,
        &[
            "CREATE DATABASE gravity_canary",
            "CREATE TABLE gravity_canary.heartbeat (_id VARCHAR(64) NOT NULL PRIMARY KEY, pipeline VARCHAR(64) NOT NULL, seq BIGINT UNSIGNED NOT NULL, trace_id CHAR(32) NOT NULL, span_id CHAR(16) NOT NULL, written_us BIGINT NOT NULL, UNIQUE KEY (pipeline))",
        ],
    )
    .await;

    // The double as gravity (Mongo → MySQL), its data path fed from the fake's oplog.
    let dir = tempfile::tempdir().unwrap();
    let config = gravity_config(dir.path(), mongod.addr().port(), target.port);
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
    let _sup = gravity_double::Supervisor::start(cfg).unwrap();
    let path = DataPath::start(
        &mongod,
        NS,
        MysqlTarget {
            endpoint: gravity_exporter::probe::Endpoint::new("127.0.0.1", target.port),
            user: "root".into(),
            password: String::new(),
            schema: "gravity_canary".into(),
            table: "heartbeat".into(),
        },
        port,
    );

    let pw = dir.path().join("canary.pw");
    std::fs::write(&pw, format!("{CANARY_PW}\n")).unwrap();
    let pattern = format!(
        "/gravity --config={}( |$)",
        regex::escape(config.to_str().unwrap())
    );
    let flags = [
        "--gravity.process-pattern",
        &pattern,
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
        "--canary.table",
        NS,
        "--canary.username",
        CANARY_USER,
        "--canary.password-file",
        pw.to_str().unwrap(),
    ];
    let run = common::start(common::settings(&flags)).await;
    let addr = run.addr;

    // 1. Canaries flow: documents are upserted, rows arrive, lag is measured.
    let body = wait(addr, "five Mongo canaries never arrived", |b| {
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
    assert!(hist >= 5.0, "canary collection lag observations: {hist}");
    // One document per pipeline at the source, one row at the target, with the trace id.
    let docs = mongod.documents(NS);
    assert_eq!(
        docs.len(),
        1,
        "one document per pipeline, never more: {docs:?}"
    );
    assert_eq!(docs[0].get_str("_id").unwrap(), PIPELINE);
    assert!(docs[0].get_i64("written_us").unwrap() > 1_700_000_000_000_000);
    let rs = t
        .query("SELECT _id, seq, trace_id, span_id, written_us FROM gravity_canary.heartbeat")
        .await
        .unwrap();
    assert_eq!(rs.rows.len(), 1, "one row per pipeline, never more");
    let trace = rs.value(0, "trace_id").unwrap();
    assert_eq!(trace.len(), 32);
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()));
    eprintln!(
        "MEASURED: Mongo canary e2e lag last {:.4} s, mean {:.4} s over {} canaries (data path polls every 100 ms, the canary's target read every 200 ms)",
        lag,
        v(
            &body,
            "gravity_data_lag_seconds_sum",
            &["schema=\"gravity_canary\"", "table=\"heartbeat\""]
        ) / hist,
        hist
    );

    // 2. Silent loss: the data path's output stops, its input goes on reading the oplog
    //    (the double's watermark stays fresh and /healthz says healthy); canaries are lost.
    let lost0 = v(&body, "gravity_canary_lost_total", &[]);
    path.pause(true);
    let body = wait(addr, "no canary counted lost with the output paused", |b| {
        v(b, "gravity_canary_lost_total", &[]) > lost0
    })
    .await;
    let double: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert_eq!(
        common::get(double, "/healthz").await.0,
        200,
        "the double still looks healthy"
    );
    assert_eq!(
        v(&body, "gravity_canary_writer_state", &["reason=\"ok\""]),
        1.0,
        "the writer itself is fine"
    );

    // 3. Recovery: canaries arrive again.
    let arrived1 = v(&body, "gravity_canary_arrived_total", &[]);
    path.pause(false);
    wait(addr, "canaries did not arrive again after the pause", |b| {
        v(b, "gravity_canary_arrived_total", &[]) >= arrived1 + 3.0
    })
    .await;

    // 4. The node takes no writes (a step-down: NotWritablePrimary): reason read_only,
    //    nothing written meanwhile; then it goes on.
    mongod.set_writable(false);
    let body = wait(addr, "writer state never read_only", |b| {
        v(b, "gravity_canary_writer_state", &["reason=\"read_only\""]) == 1.0
    })
    .await;
    let sent = v(&body, "gravity_canary_sent_total", &[]);
    let seq = mongod.documents(NS)[0].get_i64("seq").unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = common::get(addr, "/metrics").await.1;
    assert_eq!(v(&body, "gravity_canary_sent_total", &[]), sent);
    assert_eq!(mongod.documents(NS)[0].get_i64("seq").unwrap(), seq);
    mongod.set_writable(true);
    wait(
        addr,
        "writer did not resume after the node took writes again",
        |b| {
            v(b, "gravity_canary_sent_total", &[]) > sent
                && v(b, "gravity_canary_writer_state", &["reason=\"ok\""]) == 1.0
        },
    )
    .await;

    // 5. The write role is revoked (Unauthorized, code 13): reason privilege.
    mongod.set_can_write(CANARY_USER, false);
    let body = wait(addr, "writer state never privilege", |b| {
        v(b, "gravity_canary_writer_state", &["reason=\"privilege\""]) == 1.0
    })
    .await;
    assert_eq!(
        v(&body, "gravity_canary_writer_state", &["reason=\"ok\""]),
        0.0
    );

    // The canary's password is nowhere in what the exporter serves.
    for p in ["/metrics", "/", "/api/status"] {
        let (_, body) = common::get(addr, p).await;
        assert!(!body.contains(CANARY_PW), "{p} shows the canary password");
    }
    assert!(path.written() >= 5);
    let report = run.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");
}
