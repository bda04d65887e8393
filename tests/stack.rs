//! Proof on a real stack: Debian's Prometheus scrapes two exporters, each watching a gravity
//! double, with the shipped rules loaded (a test-only copy with short `for:`); Debian's
//! Alertmanager, configured from the shipped example, sends to a webhook this test runs.
//!
//! - Pipelines `stack-healthy` (MySQL stream; its source goes idle half-way), `stack-mongo`
//!   (Mongo → Kafka, against the protocol-faithful fake mongod and broker) and `stack-batch`
//!   (a full dump in progress) stay healthy: no alert, the whole run. `stack-healthy` runs
//!   the consistency checker on a table of the MariaDB (compared with itself: score 1).
//! - Pipeline `stack-faulty` gets faults; each must reach the webhook: stalled watermarks →
//!   GravityPipelineStalled; an error burst in the log → GravityErrorRateHigh; gravity
//!   stopped → GravityDown; a crash loop → GravityCrashLooping; gravity down, then its
//!   exporter dies → GravityDown keeps firing (keep_firing_for) until GravityExporterDown
//!   has taken over, checked every 250 ms for a gap (ExporterDown's 2 minutes scaled to
//!   10 s, keep_firing_for to 20 s). Times are printed.
//! - Every dashboard panel query, with its variables substituted, returns data.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::wait_for;
use gravity_double::kafka::{FakeBroker, Mode as KafkaMode};
use gravity_double::mongo::{FakeMongod, Mode as MongoMode};
use gravity_double::supervisor::Restart;
use gravity_double::{install_gravity_link, Supervisor, SupervisorConfig};
use gravity_exporter::gravity_api::GravityClient;

type Hooks = Arc<Mutex<Vec<(String, serde_json::Value, Instant)>>>;

#[path = "common/mariadb.rs"]
mod mariadb;
#[path = "common/rules.rs"]
mod rules;

/// Kills the child on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn require(bin: &str) -> Option<PathBuf> {
    let p = PathBuf::from(bin);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("GX_SKIP_PROMTOOL").as_deref() == Ok("1") {
        eprintln!("SKIP: {bin} missing and GX_SKIP_PROMTOOL=1");
        return None;
    }
    panic!(
        "{bin} not found: run scripts/test.sh (installs prometheus and prometheus-alertmanager)"
    );
}

fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                o.push(b as char)
            }
            _ => o.push_str(&format!("%{b:02X}")),
        }
    }
    o
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let c = GravityClient::new();
    let base = format!("http://127.0.0.1:{port}").parse().ok()?;
    let r = c
        .get(&base, path, Duration::from_secs(5), 16 << 20)
        .await
        .ok()?;
    Some((
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body).into_owned(),
    ))
}

async fn query(prom: u16, q: &str) -> Vec<serde_json::Value> {
    let Some((200, body)) = http_get(prom, &format!("/api/v1/query?query={}", enc(q))).await else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// A webhook receiver: every POST body, with its path.
async fn webhook() -> (u16, Hooks) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let g = g.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(h) = text.find("\r\n\r\n") {
                        let len = text[..h]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= h + 4 + len {
                            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                            let body: serde_json::Value =
                                serde_json::from_slice(&buf[h + 4..h + 4 + len])
                                    .unwrap_or_default();
                            g.lock().unwrap().push((path, body, Instant::now()));
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, got)
}

/// (receiver path, alertname, pipeline, status) of every alert notified so far.
fn notified(got: &Hooks) -> Vec<(String, String, String, String, Instant)> {
    let g = got.lock().unwrap();
    let mut out = Vec::new();
    for (path, body, at) in g.iter() {
        for a in body["alerts"].as_array().cloned().unwrap_or_default() {
            out.push((
                path.clone(),
                a["labels"]["alertname"].as_str().unwrap_or("").to_string(),
                a["labels"]["pipeline"].as_str().unwrap_or("").to_string(),
                a["status"].as_str().unwrap_or("").to_string(),
                *at,
            ));
        }
    }
    out
}

fn mysql_stream_config(name: &str, db: u16) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0\"\n\n[input]\ntype = \"mysql\"\nmode = \"stream\"\n\n[input.config.source]\nhost = \"127.0.0.1\"\nusername = \"gx_stack\"\npassword = \"gx-stack-pw\"\nport = {db}\n\n[output]\ntype = \"mysql\"\n\n[output.config.target]\nhost = \"127.0.0.1\"\nusername = \"gx_stack\"\npassword = \"gx-stack-pw\"\nport = {db}\n\n[[output.config.routes]]\nmatch-schema = \"test_db\"\nmatch-table = \"*\"\n"
    )
}

fn mysql_batch_config(name: &str, db: u16) -> String {
    mysql_stream_config(name, db).replace("mode = \"stream\"", "mode = \"batch\"")
        + "\n[[input.config.table-configs]]\nschema = \"shop\"\ntable = \"order*\"\n"
}

fn mongo_kafka_config(name: &str, mongo: u16, broker: u16) -> String {
    format!(
        "name = \"{name}\"\nversion = \"1.0\"\n\n[input]\ntype = \"mongo\"\nmode = \"stream\"\n\n[input.config.source]\nhost = \"127.0.0.1\"\nport = {mongo}\nusername = \"reader\"\npassword = \"mongo-pw\"\n\n[output]\ntype = \"async-kafka\"\n\n[output.config.kafka-global-config]\nbroker-addrs = [\"127.0.0.1:{broker}\"]\nmode = \"async\"\n\n[[output.config.routes]]\nmatch-schema = \"app\"\nmatch-table = \"*\"\ndml-topic = \"oplog.app\"\n"
    )
}

fn supervise(dir: &Path, config: &Path, port: u16, env: &[(&str, &str)]) -> Supervisor {
    let exe = gravity_double::binary().expect("the gravity-double binary");
    let link = install_gravity_link(&exe, dir).unwrap_or_else(|_| dir.join("gravity"));
    let mut cfg = SupervisorConfig::new(&link, dir, config, format!("127.0.0.1:{port}"));
    cfg.log_file = Some(dir.join("gravity.log"));
    cfg.restart = Restart::Always;
    cfg.restart_sec = Duration::from_millis(300);
    cfg.start_limit_burst = 100;
    cfg.env = env
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    Supervisor::start(cfg).unwrap()
}

fn start_pipeline(
    dir: &Path,
    config_text: &str,
    env: &[(&str, &str)],
) -> (Supervisor, PathBuf, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text).unwrap();
    let port = common::free_port();
    (supervise(dir, &config, port, env), config, port)
}

fn exporter_flags(config: &Path) -> Vec<String> {
    vec![
        "--gravity.process-pattern".into(),
        format!(
            "/gravity --config={}( |$)",
            regex::escape(config.to_str().unwrap())
        ),
        "--collector.interval".into(),
        "1s".into(),
        "--gravity.timeout".into(),
        "500ms".into(),
        "--probe.interval".into(),
        "2s".into(),
    ]
}

async fn control(port: u16, path: &str) {
    let _ = common::post(port, path).await;
}

/// Waits until the webhook received a firing `alertname` for `pipeline`; returns how long it took.
async fn wait_alert(
    got: &Hooks,
    alertname: &str,
    pipeline: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    let ok = wait_for(limit, || async {
        notified(got).iter().any(|(_, a, p, st, at)| {
            a == alertname && p == pipeline && st == "firing" && *at >= since
        })
    })
    .await;
    match ok {
        Some(_) => notified(got)
            .iter()
            .filter(|(_, a, p, st, at)| {
                a == alertname && p == pipeline && st == "firing" && *at >= since
            })
            .map(|(.., at)| at.duration_since(since))
            .min()
            .unwrap_or_default(),
        None => panic!(
            "{alertname} for {pipeline} never reached the webhook; got {:?}",
            notified(got)
                .iter()
                .map(|n| (&n.1, &n.2, &n.3))
                .collect::<Vec<_>>()
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_dashboards_on_a_real_stack() {
    let (Some(prometheus), Some(alertmanager)) = (
        require("/usr/bin/prometheus"),
        require("/usr/bin/prometheus-alertmanager"),
    ) else {
        return;
    };
    let t_run = Instant::now();
    // gravity's source and target: a MariaDB with binary logs, a user like gravity's, and
    // gravity's position among its binlogs (file 3 of 6, time-based retention)
    let db = mariadb::MariaDb::start();
    let mut root = db.root().await;
    let mut stmts = vec![
        "CREATE USER IF NOT EXISTS 'gx_stack'@'%' IDENTIFIED BY 'gx-stack-pw'".to_string(),
        "CREATE USER IF NOT EXISTS 'gx_stack'@'localhost' IDENTIFIED BY 'gx-stack-pw'".to_string(),
        "GRANT SELECT, REPLICATION CLIENT ON *.* TO 'gx_stack'@'%'".to_string(),
        "GRANT SELECT, REPLICATION CLIENT ON *.* TO 'gx_stack'@'localhost'".to_string(),
        "SET GLOBAL binlog_expire_logs_seconds = 604800".to_string(),
        // a table for the consistency checker of stack-healthy (source and target are the
        // same server here, so it compares the table with itself: score 1, no alert)
        "CREATE DATABASE IF NOT EXISTS test_db".to_string(),
        "CREATE TABLE IF NOT EXISTS test_db.stack_orders (id INT PRIMARY KEY, v VARCHAR(20))"
            .to_string(),
        "INSERT IGNORE INTO test_db.stack_orders VALUES (1, 'a'), (2, 'b'), (3, NULL)".to_string(),
        // the canary of stack-healthy: its own login and schema; source and target are the
        // same server, so each canary is visible at the target as soon as it is written
        "CREATE USER IF NOT EXISTS 'gx_canary'@'%' IDENTIFIED BY 'gx-canary-pw'".to_string(),
        "CREATE USER IF NOT EXISTS 'gx_canary'@'localhost' IDENTIFIED BY 'gx-canary-pw'"
            .to_string(),
        "GRANT CREATE, INSERT, UPDATE, SELECT ON gravity_canary.* TO 'gx_canary'@'%'".to_string(),
        "GRANT CREATE, INSERT, UPDATE, SELECT ON gravity_canary.* TO 'gx_canary'@'localhost'"
            .to_string(),
    ];
    stmts.extend(std::iter::repeat_n("FLUSH BINARY LOGS".to_string(), 5));
    mariadb::exec(
        &mut root,
        &stmts.iter().map(String::as_str).collect::<Vec<_>>(),
    )
    .await;
    let binlog_env = [
        ("GRAVITY_DOUBLE_BINLOG_BASENAME", mariadb::BINLOG_BASE),
        ("GRAVITY_DOUBLE_BINLOG_FIRST_INDEX", "3"),
        ("GRAVITY_DOUBLE_BINLOG_FILE_BYTES", "1000000000000"),
    ];
    let mongod = FakeMongod::start_secure(MongoMode::Primary, common::mongo_reader())
        .await
        .unwrap();
    let broker = FakeBroker::start(KafkaMode::Ok).await.unwrap();

    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let mut env_h = binlog_env.to_vec();
    env_h.extend([
        ("GRAVITY_DOUBLE_RATE", "300"),
        ("GRAVITY_DOUBLE_RETRY_EVERY", "30"),
    ]);
    let (sup_h, cfg_h, port_h) = start_pipeline(
        &w.join("healthy"),
        &mysql_stream_config("stack-healthy", db.port),
        &env_h,
    );
    let mut env_f = binlog_env.to_vec();
    env_f.extend([
        ("GRAVITY_DOUBLE_RATE", "300"),
        ("GRAVITY_DOUBLE_RETRY_EVERY", "2"),
        ("GRAVITY_DOUBLE_DDL_EVERY", "4"),
    ]);
    let (mut sup_f, cfg_f, port_f) = start_pipeline(
        &w.join("faulty"),
        &mysql_stream_config("stack-faulty", db.port),
        &env_f,
    );
    let (sup_m, cfg_m, _) = start_pipeline(
        &w.join("mongo"),
        &mongo_kafka_config("stack-mongo", mongod.addr().port(), broker.addr().port()),
        &[("GRAVITY_DOUBLE_RATE", "100")],
    );
    let (sup_b, cfg_b, _) = start_pipeline(
        &w.join("batch"),
        &mysql_batch_config("stack-batch", db.port),
        &[
            ("GRAVITY_DOUBLE_RATE", "200"),
            ("GRAVITY_DOUBLE_BATCH_ROWS", "1000000000"),
        ],
    );
    let canary_pw = w.join("canary.pw");
    std::fs::write(&canary_pw, "gx-canary-pw\n").unwrap();
    let mut flags_h = exporter_flags(&cfg_h);
    flags_h.extend([
        "--consistency.tables".to_string(),
        "test_db.stack_orders".to_string(),
        "--consistency.interval".to_string(),
        "5s".to_string(),
        "--canary.interval".to_string(),
        "1s".to_string(),
        "--canary.username".to_string(),
        "gx_canary".to_string(),
        "--canary.password-file".to_string(),
        canary_pw.to_str().unwrap().to_string(),
    ]);
    let exp_h = common::start(common::settings(&common::owned(&flags_h))).await;
    let exp_f = common::start(common::settings(&common::owned(&exporter_flags(&cfg_f)))).await;
    let exp_m = common::start(common::settings(&common::owned(&exporter_flags(&cfg_m)))).await;
    let exp_b = common::start(common::settings(&common::owned(&exporter_flags(&cfg_b)))).await;
    let exporters = [exp_h.addr, exp_f.addr, exp_m.addr, exp_b.addr];
    let healthy = ["stack-healthy", "stack-mongo", "stack-batch"];

    // Alertmanager from the shipped example: webhooks to this test, short timers
    let (hook, got) = webhook().await;
    let am_port = common::free_port();
    let am_cfg = rules::read("alerts/alertmanager.yml").replace(
        "http://127.0.0.1:5001/",
        &format!("http://127.0.0.1:{hook}/"),
    );
    let am_cfg = regex::Regex::new(r"(?m)^(\s*)group_wait: \S+")
        .unwrap()
        .replace_all(&am_cfg, "${1}group_wait: 1s");
    let am_cfg = regex::Regex::new(r"(?m)^(\s*)group_interval: \S+")
        .unwrap()
        .replace_all(&am_cfg, "${1}group_interval: 1s");
    let am_cfg = regex::Regex::new(r"(?m)^(\s*)repeat_interval: \S+")
        .unwrap()
        .replace_all(&am_cfg, "${1}repeat_interval: 1h");
    std::fs::write(work.path().join("am.yml"), am_cfg.as_ref()).unwrap();
    let _am = Proc(
        Command::new(&alertmanager)
            .arg(format!(
                "--config.file={}",
                work.path().join("am.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                work.path().join("am-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("am.log")).unwrap())
            .spawn()
            .unwrap(),
    );

    // Prometheus with a test-only copy of the shipped rules (short `for:`), plus overrides
    let rec = work.path().join("recording.yml");
    let alerts = work.path().join("alerts.yml");
    std::fs::write(&rec, rules::read(rules::RECORDING_RULES)).unwrap();
    std::fs::write(
        &alerts,
        // short `for:`, P0s that resolve 20 s (not 10 min) after their cause is gone, and an
        // exporter missed after 10 s (not 2 min): the hand-over scenario (e) scaled down
        exporter_down_after(
            &rules::shorten_keep_firing_for(
                &rules::shorten_for(&rules::read(rules::ALERT_RULES), "3s"),
                "20s",
            ),
            10,
        ),
    )
    .unwrap();
    let overrides = work.path().join("overrides.yml");
    std::fs::write(
        &overrides,
        // a stop by signal pages after 2 s, not 15 min, so the stopped pipeline reaches GravityDown;
        // the test host's own disk is not under test: no log-disk threshold
        "groups:\n  - name: test-overrides\n    rules:\n      - record: gravity:stall_threshold_seconds:override\n        expr: max by (pipeline) (gravity_up{pipeline=\"stack-faulty\"}) * 0 + 5\n      - record: gravity:stop_grace_seconds:override\n        expr: max by (pipeline) (gravity_up{pipeline=\"stack-faulty\"}) * 0 + 2\n      - record: gravity:log_disk_free_threshold_ratio:override\n        expr: max by (pipeline) (gravity_up) * 0\n",
    )
    .unwrap();
    let prom_port = common::free_port();
    let targets: Vec<String> = exporters.iter().map(|a| format!("'{a}'")).collect();
    let prom_yml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n  - {}\n  - {}\nalerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{am_port}']\nscrape_configs:\n  - job_name: gravity-exporter\n    static_configs:\n      - targets: [{}]\n",
        rec.display(),
        alerts.display(),
        overrides.display(),
        targets.join(", "),
    );
    // Last week's recorded rates, so the "same hour last week" panels have something to
    // compare with: backfilled as TSDB blocks before Prometheus starts.
    let week_ago = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 7 * 86400;
    let mut rows = String::from("# TYPE gravity:output_rows_per_second:rate1h gauge\n");
    let mut lat = String::from("# TYPE gravity:output_latency_seconds:p99_1h gauge\n");
    let names = [
        "stack-healthy",
        "stack-faulty",
        "stack-mongo",
        "stack-batch",
    ];
    for (addr, pipeline) in exporters.iter().zip(names) {
        for k in 0..=120u64 {
            let ts = week_ago - 3600 + k * 60;
            let l =
                format!("{{job=\"gravity-exporter\",instance=\"{addr}\",pipeline=\"{pipeline}\"}}");
            rows.push_str(&format!(
                "gravity:output_rows_per_second:rate1h{l} 300 {ts}\n"
            ));
            lat.push_str(&format!(
                "gravity:output_latency_seconds:p99_1h{l} 1 {ts}\n"
            ));
        }
    }
    std::fs::write(w.join("lastweek.om"), format!("{rows}{lat}# EOF\n")).unwrap();
    if let Some(promtool) = require("/usr/bin/promtool") {
        let bf = Command::new(promtool)
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(w.join("lastweek.om"))
            .arg(w.join("prom-data"))
            .output()
            .unwrap();
        assert!(
            bf.status.success(),
            "backfill: {}",
            String::from_utf8_lossy(&bf.stderr)
        );
    }
    std::fs::write(work.path().join("prometheus.yml"), prom_yml).unwrap();
    let _prom = Proc(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                work.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                work.path().join("prom-data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.path().join("prometheus.log")).unwrap())
            .spawn()
            .unwrap(),
    );
    let ready = wait_for(Duration::from_secs(30), || async {
        matches!(http_get(prom_port, "/-/ready").await, Some((200, _)))
            && matches!(http_get(am_port, "/-/ready").await, Some((200, _)))
    })
    .await;
    assert!(
        ready.is_some(),
        "Prometheus/Alertmanager not ready; see {}",
        work.path().display()
    );
    let scraped = wait_for(Duration::from_secs(30), || async {
        query(prom_port, "gravity_up == 1").await.len() == 4
    })
    .await;
    assert!(
        scraped.is_some(),
        "Prometheus never saw the four pipelines up"
    );

    // (c) healthy for a while, then the healthy pipeline's source goes idle: no alert at all
    tokio::time::sleep(Duration::from_secs(10)).await;
    control(port_h, "/_double/fault?mode=idle").await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    for p in healthy {
        let a = query(prom_port, &format!("ALERTS{{pipeline=\"{p}\"}}")).await;
        assert!(a.is_empty(), "alerts on healthy {p}: {a:?}");
    }
    let quiet = !notified(&got)
        .iter()
        .any(|n| healthy.contains(&n.2.as_str()));
    assert!(quiet, "{:?}", notified(&got));

    let mut timings: BTreeMap<&str, Duration> = BTreeMap::new();
    // (b1) stalled watermarks
    let t = Instant::now();
    control(port_f, "/_double/fault?mode=stall").await;
    timings.insert(
        "stall → GravityPipelineStalled (P0)",
        wait_alert(
            &got,
            "GravityPipelineStalled",
            "stack-faulty",
            t,
            Duration::from_secs(60),
        )
        .await,
    );
    control(port_f, "/_double/fault?mode=none").await;
    let resolved = wait_for(Duration::from_secs(60), || async {
        query(
            prom_port,
            "ALERTS{pipeline=\"stack-faulty\",severity=\"P0\"}",
        )
        .await
        .is_empty()
    })
    .await;
    assert!(resolved.is_some(), "stall alert did not resolve");
    tokio::time::sleep(Duration::from_secs(3)).await; // Alertmanager sees the resolution: no inhibition left

    // (b2) an error burst in the log
    let t = Instant::now();
    // error-level lines (retry warnings do not count toward the error rate)
    control(port_f, "/_double/errors?n=100&kind=missing_table").await;
    control(port_f, "/_double/errors?n=100&kind=kafka_brokers").await;
    timings.insert(
        "error burst → GravityErrorRateHigh (P1)",
        wait_alert(
            &got,
            "GravityErrorRateHigh",
            "stack-faulty",
            t,
            Duration::from_secs(60),
        )
        .await,
    );

    // (b3) gravity stopped
    let t = Instant::now();
    sup_f.stop();
    timings.insert(
        "gravity stopped → GravityDown (P0)",
        wait_alert(
            &got,
            "GravityDown",
            "stack-faulty",
            t,
            Duration::from_secs(60),
        )
        .await,
    );

    // (b4) crash loop: the supervisor restarts it, it keeps dying
    let t = Instant::now();
    let sup_f2 = supervise(&w.join("faulty"), &cfg_f, port_f, &env_f);
    for _ in 0..4 {
        let up = wait_for(Duration::from_secs(10), || async {
            http_get(port_f, "/healthz").await.is_some()
        })
        .await;
        assert!(up.is_some(), "restarted gravity never answered");
        let before = sup_f2.pid();
        // gravity logs a fatal line and exits 1, as when it loses its source
        control(port_f, "/_double/fault?mode=crash").await;
        sup_f2
            .wait_until(Duration::from_secs(5), |s| {
                s.pid.is_some() && s.pid != before
            })
            .unwrap();
    }
    timings.insert(
        "crash loop → GravityCrashLooping (P0)",
        wait_alert(
            &got,
            "GravityCrashLooping",
            "stack-faulty",
            t,
            Duration::from_secs(60),
        )
        .await,
    );

    // the healthy pipelines raised nothing, the whole run
    for p in healthy {
        let q = format!("count_over_time(ALERTS{{pipeline=\"{p}\"}}[30m])");
        let a = query(prom_port, &q).await;
        assert!(a.is_empty(), "{p} alerted: {a:?}");
        assert!(
            !notified(&got).iter().any(|n| n.2 == p),
            "{p} notified: {:?}",
            notified(&got)
        );
    }
    // receivers by severity
    let by_receiver: Vec<(String, String)> =
        notified(&got).into_iter().map(|n| (n.0, n.1)).collect();
    assert!(
        by_receiver
            .iter()
            .any(|(r, a)| r == "/pager" && a == "GravityDown"),
        "{by_receiver:?}"
    );
    assert!(
        by_receiver
            .iter()
            .any(|(r, a)| r == "/urgent" && a == "GravityErrorRateHigh"),
        "{by_receiver:?}"
    );

    // (a) every dashboard panel query returns data
    let mut empty = Vec::new();
    let mut total = 0;
    for entry in std::fs::read_dir(rules::repo_root().join("dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut panels: Vec<serde_json::Value> =
            dash["panels"].as_array().cloned().unwrap_or_default();
        let mut i = 0;
        while i < panels.len() {
            let nested = panels[i]["panels"].as_array().cloned().unwrap_or_default();
            panels.extend(nested);
            i += 1;
        }
        for p in &panels {
            for t in p["targets"].as_array().cloned().unwrap_or_default() {
                let Some(expr) = t["expr"].as_str() else {
                    continue;
                };
                total += 1;
                let q = expr
                    .replace("${datasource}", "")
                    .replace("$job", "gravity-exporter")
                    .replace("$instance", ".+")
                    .replace("$pipeline", "stack-.*")
                    .replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m")
                    .replace("$__range", "30m");
                if query(prom_port, &q).await.is_empty() {
                    let panel = format!(
                        "{} / {}",
                        path.file_name().unwrap().to_string_lossy(),
                        p["title"].as_str().unwrap_or("?")
                    );
                    empty.push((panel, q));
                }
            }
        }
    }
    // A query that came back empty is asked again for up to 10 s: one answer can be lost to
    // a slow HTTP exchange with a loaded Prometheus (which `query` reports as no data). Each
    // one is printed, so a panel that only recovers on retry stays visible in the output.
    for (panel, q) in &empty {
        println!("stack test: empty at first, asking again: {panel}: {q}");
    }
    let retry_until = Instant::now() + Duration::from_secs(10);
    while !empty.is_empty() && Instant::now() < retry_until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut still = Vec::new();
        for (panel, q) in empty {
            if query(prom_port, &q).await.is_empty() {
                still.push((panel, q));
            }
        }
        empty = still;
    }
    let empty: Vec<String> = empty.iter().map(|(p, q)| format!("{p}: {q}")).collect();
    println!(
        "stack test: {total} panel queries checked in {:?}",
        t_run.elapsed()
    );
    for (k, v) in &timings {
        println!("  {k}: {:.1} s", v.as_secs_f64());
    }
    std::fs::write(
        rules::repo_root().join("target/stack-timings.txt"),
        timings
            .iter()
            .map(|(k, v)| format!("{k}: {:.1} s\n", v.as_secs_f64()))
            .collect::<String>(),
    )
    .ok();
    // (e) gravity down, then its exporter dies: GravityDown stays firing until
    // GravityExporterDown has taken over, with no gap (checked every 250 ms).
    let mut sup_f2 = sup_f2;
    sup_f2.stop();
    // Down in Prometheus' view for longer than GravityDown's `for:` (3 s here), so that the
    // alert fires for this outage and not only kept from the crash loop before it.
    let stopped = wait_for(Duration::from_secs(60), || async {
        !query(
            prom_port,
            "max_over_time(gravity_up{pipeline=\"stack-faulty\"}[6s]) == 0",
        )
        .await
        .is_empty()
    })
    .await;
    assert!(
        stopped.is_some(),
        "gravity_up of the stopped pipeline never stayed 0"
    );
    let down = wait_for(Duration::from_secs(60), || async {
        !query(
            prom_port,
            "ALERTS{alertname=\"GravityDown\",pipeline=\"stack-faulty\",alertstate=\"firing\"}",
        )
        .await
        .is_empty()
    })
    .await;
    assert!(
        down.is_some(),
        "GravityDown never fired for the stopped pipeline"
    );
    println!("  gravity down for 6 s after {stopped:?}, GravityDown firing {down:?} later");
    let t = Instant::now();
    exp_f.stop().await;
    println!("  exporter stopped in {:.1} s", t.elapsed().as_secs_f64());
    let firing = |name: &'static str| {
        format!(
            "count(ALERTS{{alertname=\"{name}\",pipeline=\"stack-faulty\",alertstate=\"firing\"}}) or vector(0)"
        )
    };
    let count = |v: Vec<serde_json::Value>| -> Option<f64> {
        v.first()?["value"][1].as_str()?.parse().ok()
    };
    let mut took_over = None;
    while t.elapsed() < Duration::from_secs(60) {
        // one answer each; a lost HTTP exchange (no answer) is asked again, not a gap
        let (Some(gd), Some(ed)) = (
            count(query(prom_port, &firing("GravityDown")).await),
            count(query(prom_port, &firing("GravityExporterDown")).await),
        ) else {
            continue;
        };
        assert!(
            gd > 0.0 || ed > 0.0,
            "{:.1} s after the exporter died neither GravityDown nor GravityExporterDown fires: a gap",
            t.elapsed().as_secs_f64()
        );
        if ed > 0.0 {
            took_over = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let took_over = took_over.expect("GravityExporterDown never fired after the exporter died");
    println!(
        "  exporter died during an outage → GravityExporterDown (P1), GravityDown firing meanwhile: {:.1} s",
        took_over.as_secs_f64()
    );

    assert!(
        empty.is_empty(),
        "{} of {total} panel queries returned no data:\n{}",
        empty.len(),
        empty.join("\n")
    );
    drop((sup_h, sup_m, sup_b, sup_f2));
    for e in [exp_h, exp_m, exp_b] {
        e.stop().await;
    }
}

/// The rules with GravityExporterDown's 2-minute threshold replaced by `secs` (test only).
fn exporter_down_after(rules_yaml: &str, secs: u32) -> String {
    let from = "max_over_time(gravity:exporter_last_seen_timestamp_seconds[1d]) > 120";
    assert!(
        rules_yaml.contains(from),
        "GravityExporterDown changed: {from}"
    );
    rules_yaml.replace(
        from,
        &format!("max_over_time(gravity:exporter_last_seen_timestamp_seconds[1d]) > {secs}"),
    )
}
