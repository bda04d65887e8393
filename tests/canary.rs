//! The end-to-end canary against real servers: two private MariaDB servers, the second a
//! replica of the first through MariaDB's own replication, stand in for gravity's data
//! path (source → target). The gravity double serves `/status` with its stream watermark
//! pinned to the replica's real progress: a feeder compares the replica's read position
//! (its I/O thread, gravity's input) with the source's binlog position and moves the
//! watermark's EventTime to the moment the replica had read everything the source had
//! written (docs/canary.md, "What is a double here").
//!
//! Canaries written by the exporter must arrive with a measured lag; with the replica's SQL
//! thread stopped (the input still reads, so the double still looks healthy: silent loss)
//! `gravity_canary_lost_total` grows; started again, canaries arrive again. A read-only
//! source and a revoked grant stop the writer with their reasons. A real Prometheus with the
//! shipped rules (only `for:` shortened) scrapes the exporter: the silent loss fires the P0
//! `GravityCanaryLost` while nothing says gravity is down or stalled.

mod common;
#[path = "common/mariadb.rs"]
mod mariadb;
#[path = "common/replica.rs"]
mod replica;
#[path = "common/rules.rs"]
mod rules;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gravity_exporter::probe::mysql::MySqlConn;
use mariadb::exec;
use replica::{CANARY_PW, CANARY_USER, PIPELINE};

const WAIT: Duration = Duration::from_secs(60);
/// Kills the child on drop.
struct Proc(std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A real Prometheus scraping `exporter` every second with the shipped recording and alert
/// rules (`for:` shortened to 3 s; the expressions, their `[5m]` windows included, as shipped).
fn prometheus(dir: &Path, exporter: SocketAddr) -> Option<(Proc, SocketAddr)> {
    let bin = PathBuf::from("/usr/bin/prometheus");
    if !bin.exists() {
        if std::env::var("GX_SKIP_PROMTOOL").as_deref() == Ok("1") {
            eprintln!("SKIP: prometheus missing and GX_SKIP_PROMTOOL=1");
            return None;
        }
        panic!("/usr/bin/prometheus not found: run scripts/test.sh (installs prometheus)");
    }
    let rec = dir.join("recording.yml");
    let alerts = dir.join("alerts.yml");
    std::fs::write(&rec, rules::read(rules::RECORDING_RULES)).unwrap();
    std::fs::write(
        &alerts,
        rules::shorten_for(&rules::read(rules::ALERT_RULES), "3s"),
    )
    .unwrap();
    let port = common::free_port();
    let yml = dir.join("prometheus.yml");
    std::fs::write(
        &yml,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n  - {}\nscrape_configs:\n  - job_name: gravity-exporter\n    static_configs:\n      - targets: ['{exporter}']\n",
            rec.display(),
            alerts.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .arg(format!("--config.file={}", yml.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    Some((Proc(child), format!("127.0.0.1:{port}").parse().unwrap()))
}

/// The alerts in `state` whose name is `name`, from Prometheus' `ALERTS` series.
async fn alerts(prom: SocketAddr, name: &str, state: &str) -> usize {
    let q = format!("ALERTS{{alertname=\"{name}\",alertstate=\"{state}\"}}");
    series(prom, &q).await
}

/// How many series Prometheus answers for the instant query `q`.
async fn series(prom: SocketAddr, q: &str) -> usize {
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (code, body) = common::get(prom, &format!("/api/v1/query?query={enc}")).await;
    if code != 200 {
        return 0;
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["result"].as_array().map_or(0, Vec::len)
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

/// The replica's own lag: a row written at the source, polled for at the replica every
/// millisecond; the median of `n`.
async fn replica_own_lag(src: &mut MySqlConn, rep: &mut MySqlConn, n: u32) -> f64 {
    let mut v = Vec::new();
    for i in 0..n {
        let t0 = Instant::now();
        src.query(&format!("INSERT INTO lagprobe.t VALUES ({i})"))
            .await
            .unwrap();
        loop {
            let rs = rep
                .query(&format!("SELECT id FROM lagprobe.t WHERE id = {i}"))
                .await
                .unwrap();
            if !rs.rows.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < WAIT,
                "probe row {i} never reached the replica"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        v.push(t0.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canaries_arrive_through_a_replica_and_loss_is_counted() {
    if !mariadb::require() {
        return;
    }
    // Two MariaDB servers in replication, the double as gravity with the canary table
    // routed, and the feeder pinning its watermark (tests/common/replica.rs).
    let path = replica::DataPath::start().await;
    let mut s = path.src.root().await;
    exec(
        &mut s,
        &[
            "CREATE DATABASE lagprobe",
            "CREATE TABLE lagprobe.t (id INT PRIMARY KEY)",
        ],
    )
    .await;
    let mut r = path.replica.root().await;
    let dir = &path.dir;
    let port = path.gravity_port;
    let owned = path.exporter_flags("1s", "6s");
    let flags = common::owned(&owned);
    let run = common::start(common::settings(&flags)).await;
    let addr = run.addr;
    let prom = prometheus(dir.path(), addr);

    // 1. Canaries flow: the table is created on first use, rows arrive, lag is measured.
    let body = wait(addr, "five canaries never arrived", |b| {
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
    // The row at the target carries the canary's trace id.
    let rs = r
        .query("SELECT seq, trace_id, span_id, written_at FROM gravity_canary.heartbeat")
        .await
        .unwrap();
    assert_eq!(rs.rows.len(), 1, "one row per pipeline, never more");
    let trace = rs.value(0, "trace_id").unwrap();
    assert_eq!(trace.len(), 32);
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(
        rs.value(0, "written_at").unwrap().contains('.'),
        "microseconds"
    );
    // Measured: the canary's e2e lag against the replica's own lag.
    let own = replica_own_lag(&mut s, &mut r, 15).await;
    let body = common::get(addr, "/metrics").await.1;
    let sum = v(
        &body,
        "gravity_data_lag_seconds_sum",
        &["schema=\"gravity_canary\"", "table=\"heartbeat\""],
    );
    let n = v(
        &body,
        "gravity_data_lag_seconds_count",
        &["schema=\"gravity_canary\"", "table=\"heartbeat\""],
    );
    eprintln!(
        "MEASURED: canary e2e lag last {:.4} s, mean {:.4} s over {n} canaries; the replica's own lag (median of 15 probes polled every 1 ms) {own:.4} s",
        v(&body, "gravity_canary_e2e_lag_seconds", &[]),
        sum / n
    );

    // 2. Silent loss: the replica's SQL thread stops, its I/O thread still reads (the
    //    double's watermark stays fresh and /healthz says healthy); canaries are lost.
    // Prometheus has seen canaries arrive (so the P0 below has to wait out the rule's
    // 5-minute window, as it would in production, and does not fire on a short history).
    if let Some((_proc, prom)) = &prom {
        let seen = common::wait_for(Duration::from_secs(120), || async {
            series(*prom, "increase(gravity_canary_arrived_total[5m]) > 0").await > 0
        })
        .await;
        assert!(seen.is_some(), "Prometheus never saw a canary arrive");
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let body = common::get(addr, "/metrics").await.1;
    let lost0 = v(&body, "gravity_canary_lost_total", &[]);
    exec(&mut r, &["STOP SLAVE SQL_THREAD"]).await;
    let stopped = Instant::now();
    let body = wait(
        addr,
        "no canary counted lost with the SQL thread stopped",
        |b| v(b, "gravity_canary_lost_total", &[]) > lost0,
    )
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
    // ... and on a live Prometheus with the shipped rules the P0 fires: canaries lost and
    // none arrived for the rule's 5 minutes, while gravity is up and its watermarks move
    // (so neither GravityDown nor GravityPipelineStalled is firing).
    if let Some((_proc, prom)) = &prom {
        let fired = common::wait_for(Duration::from_secs(600), || async {
            alerts(*prom, "GravityCanaryLost", "firing").await > 0
        })
        .await;
        assert!(
            fired.is_some(),
            "GravityCanaryLost never fired; see {}",
            dir.path().join("prometheus.log").display()
        );
        for quiet in ["GravityDown", "GravityPipelineStalled"] {
            assert_eq!(alerts(*prom, quiet, "firing").await, 0, "{quiet} fires");
        }
        eprintln!(
            "MEASURED: GravityCanaryLost fired {:.0} s after the SQL thread stopped",
            stopped.elapsed().as_secs_f64()
        );
    }

    // 3. Recovery: the SQL thread runs again, canaries arrive again.
    let arrived1 = v(&body, "gravity_canary_arrived_total", &[]);
    exec(&mut r, &["START SLAVE SQL_THREAD"]).await;
    wait(
        addr,
        "canaries did not arrive again after START SLAVE",
        |b| v(b, "gravity_canary_arrived_total", &[]) >= arrived1 + 3.0,
    )
    .await;

    // 4. A read-only source: the writer stops with reason read_only, and goes on after.
    exec(&mut s, &["SET GLOBAL read_only = 1"]).await;
    let body = wait(addr, "writer state never read_only", |b| {
        v(b, "gravity_canary_writer_state", &["reason=\"read_only\""]) == 1.0
    })
    .await;
    let sent = v(&body, "gravity_canary_sent_total", &[]);
    let seq_before = s
        .query("SELECT seq FROM gravity_canary.heartbeat")
        .await
        .unwrap();
    // Three intervals later nothing more was written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let body = common::get(addr, "/metrics").await.1;
    assert_eq!(v(&body, "gravity_canary_sent_total", &[]), sent);
    assert_eq!(
        s.query("SELECT seq FROM gravity_canary.heartbeat")
            .await
            .unwrap(),
        seq_before
    );
    exec(&mut s, &["SET GLOBAL read_only = 0"]).await;
    wait(addr, "writer did not resume after read_only = 0", |b| {
        v(b, "gravity_canary_sent_total", &[]) > sent
            && v(b, "gravity_canary_writer_state", &["reason=\"ok\""]) == 1.0
    })
    .await;

    // 5. The grant is revoked: reason privilege.
    exec(
        &mut s,
        &[&format!(
            "REVOKE INSERT, UPDATE ON gravity_canary.* FROM '{CANARY_USER}'@'%'"
        )],
    )
    .await;
    wait(addr, "writer state never privilege", |b| {
        v(b, "gravity_canary_writer_state", &["reason=\"privilege\""]) == 1.0
    })
    .await;

    // The canary's password is nowhere in what the exporter serves.
    for path in ["/metrics", "/", "/api/status"] {
        let (_, body) = common::get(addr, path).await;
        assert!(
            !body.contains(CANARY_PW),
            "{path} shows the canary password"
        );
    }
    let (_, page) = common::get(addr, "/api/status").await;
    assert!(
        page.contains("canary"),
        "status JSON has the canary section"
    );

    let report = run.shutdown().await;
    path.stop().await;
    assert!(report.still_running.is_empty(), "{report:?}");
}
