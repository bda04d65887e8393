//! Nothing of gravity's log lost or counted twice, with the exporter's default log flags
//! (no `--gravity.log-state-file` given, start at the end): gravity crash loops (the path
//! switches between `/proc/<pid>/root/<path>` and `<path>` while gravity is up or down),
//! rename rotation with late writes to the old file, delete + re-create with a gap.
//!
//! Every test compares the exporter's per-level line counts with the log file itself, parsed
//! by the same library: equal means no line was lost and none was counted twice.

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{metric, wait_for};
use gravity_double::supervisor::Restart;
use gravity_double::{install_gravity_link, Supervisor, SupervisorConfig};
use gravity_exporter::log::record::LogFormat;

const P: &str = "pipeline=\"mysql2mysqlDemo\"";

/// Lines per level of the given log texts, the way the exporter counts them.
fn expected(texts: &[String]) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    for t in texts {
        for l in t.lines() {
            let level = match gravity_exporter::follow::ingest(l, LogFormat::Json) {
                Ok(ev) => ev.level.as_str().to_string(),
                Err(true) => continue,
                Err(false) => "unknown".to_string(),
            };
            *m.entry(level).or_insert(0.0) += 1.0;
        }
    }
    m
}

/// The exporter's `gravity_log_lines_total` per level.
async fn counted(addr: std::net::SocketAddr) -> BTreeMap<String, f64> {
    let (_, body) = common::get(addr, "/metrics").await;
    let mut m = BTreeMap::new();
    for l in body.lines() {
        let Some(rest) = l.strip_prefix("gravity_log_lines_total{") else {
            continue;
        };
        let Some(level) = rest
            .split("level=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
        else {
            continue;
        };
        let Some(v) = l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()) else {
            continue;
        };
        if v > 0.0 {
            *m.entry(level.to_string()).or_insert(0.0) += v;
        }
    }
    m
}

/// Waits until the exporter's counts equal what the files hold; panics with both otherwise.
async fn assert_counts_match(addr: std::net::SocketAddr, files: &[PathBuf]) {
    let read = || {
        files
            .iter()
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let ok = wait_for(Duration::from_secs(30), || async {
        expected(&read()) == counted(addr).await
    })
    .await;
    assert!(
        ok.is_some(),
        "lines lost or counted twice:\n in the files: {:?}\n counted:      {:?}",
        expected(&read()),
        counted(addr).await
    );
    // The figures docs/reliability.md quotes (`cargo test --test log_follow -- --nocapture`).
    eprintln!("measured: every line counted once: {:?}", expected(&read()));
}

async fn api_up(port: u16) -> bool {
    gravity_exporter::gravity_api::GravityClient::new()
        .get(
            &format!("http://127.0.0.1:{port}").parse().unwrap(),
            "/healthz",
            Duration::from_millis(300),
            1024,
        )
        .await
        .is_ok()
}

fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

fn line(level: &str, i: usize) -> String {
    format!(
        "{{\"file\":\"x.go\",\"level\":\"{level}\",\"line\":1,\"msg\":\"line {i}\",\"pipeline\":\"mysql2mysqlDemo\",\"time\":\"2026-11-22T14:05:33+08:00\"}}\n"
    )
}

fn lines(level: &str, from: usize, to: usize) -> String {
    (from..to).map(|i| line(level, i)).collect()
}

/// A crash loop of the double: 6 incarnations each write their start-up info lines, an error
/// line and a fatal line, then exit and are restarted. Every line of every incarnation is
/// counted once, and the last fatal cause is exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_every_line_of_every_incarnation() {
    let dir = tempfile::tempdir().unwrap();
    let exe = gravity_double::binary().unwrap();
    let link = install_gravity_link(&exe, dir.path()).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::copy(
        common::fixtures().join("configs/mysql2mysql-stream.toml"),
        &config,
    )
    .unwrap();
    let log = dir.path().join("gravity.log");
    let port = common::free_port();

    // The exporter first, with the default log flags: the log does not exist yet.
    let flags = vec![
        "--gravity.process-pattern".to_string(),
        format!(
            "/gravity --config={}( |$)",
            regex::escape(config.to_str().unwrap())
        ),
        "--gravity.log-file".into(),
        log.to_str().unwrap().into(),
        "--collector.interval".into(),
        "200ms".into(),
        "--gravity.timeout".into(),
        "500ms".into(),
        "--probe.interval".into(),
        "0s".into(),
    ];
    let r = common::start(common::settings(&common::owned(&flags))).await;

    let mut cfg = SupervisorConfig::new(&link, dir.path(), &config, format!("127.0.0.1:{port}"));
    cfg.log_file = Some(log.clone());
    cfg.restart = Restart::Always;
    cfg.restart_sec = Duration::from_millis(300);
    cfg.start_limit_burst = 100;
    let sup = Supervisor::start(cfg).unwrap();
    for round in 0..6u32 {
        assert!(
            sup.wait_until(Duration::from_secs(10), |s| s.pid.is_some()
                && s.restarts == round)
                .is_some(),
            "incarnation {round} did not start"
        );
        let ok = wait_for(Duration::from_secs(10), || async { api_up(port).await }).await;
        assert!(ok.is_some(), "incarnation {round}: API never answered");
        let head = common::post(port, "/_double/errors?kind=missing_table&n=1&exit=0").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let head = common::post(port, "/_double/errors?kind=ddl_syntax&n=1").await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            sup.wait_until(Duration::from_secs(10), |s| s.restarts == round + 1)
                .is_some(),
            "incarnation {round} did not exit and restart"
        );
    }
    assert_counts_match(r.addr, std::slice::from_ref(&log)).await;
    let fatal = counted(r.addr).await.get("fatal").copied();
    assert_eq!(fatal, Some(6.0), "one fatal line per incarnation");
    assert_eq!(
        metric(
            r.addr,
            "gravity_last_fatal_info",
            &[P, "error_type=\"ddl\""]
        )
        .await,
        Some(1.0)
    );
    drop(sup);
    r.stop().await;
}

/// Rename rotation while the writer keeps writing to the old file for a while (a logger that
/// reopens late): the old handle is drained, then released; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_rotation_with_late_writes_to_the_old_file() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gravity.log");
    let rotated = dir.path().join("gravity-2026-11-22T15-00-00.000.log");
    let r = common::start(common::settings(&common::owned(&common::log_file_flags(
        &log,
    ))))
    .await;
    // The log does not exist yet, so it is read from its start when it appears.
    append(&log, &lines("info", 0, 1));
    // as long as the counts are given below (a loaded CI machine: a first poll, a missed
    // inotify event and the 5 s safety poll must all fit)
    let ok = wait_for(Duration::from_secs(30), || async {
        counted(r.addr).await.get("info") == Some(&1.0)
    })
    .await;
    assert!(ok.is_some(), "never followed the log");
    let mut old = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    old.write_all(lines("info", 1, 1000).as_bytes()).unwrap();
    std::fs::rename(&log, &rotated).unwrap();
    append(&log, &lines("warning", 0, 1000));
    // Late writes to the renamed file, for about 2 s.
    for k in 0..20 {
        old.write_all(lines("error", k * 100, k * 100 + 100).as_bytes())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        append(&log, &lines("warning", 1000 + k * 10, 1010 + k * 10));
    }
    drop(old);
    assert_counts_match(r.addr, &[rotated, log]).await;
    r.stop().await;
}

/// The log is deleted, and re-created 2 s later; lines in the new file are all counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_and_recreate_with_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gravity.log");
    let r = common::start(common::settings(&common::owned(&common::log_file_flags(
        &log,
    ))))
    .await;
    // The log does not exist yet, so it is read from its start when it appears.
    append(&log, &lines("info", 0, 1));
    // as long as the counts are given below (a loaded CI machine: a first poll, a missed
    // inotify event and the 5 s safety poll must all fit)
    let ok = wait_for(Duration::from_secs(30), || async {
        counted(r.addr).await.get("info") == Some(&1.0)
    })
    .await;
    assert!(ok.is_some(), "never followed the log");
    append(&log, &lines("info", 1, 500));
    let first = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for k in 0..10 {
        append(&log, &lines("error", k * 1000, k * 1000 + 1000));
    }
    let keep = dir.path().join("first.copy");
    std::fs::write(&keep, first).unwrap();
    assert_counts_match(r.addr, &[keep, log]).await;
    r.stop().await;
}

/// Exporter restarts with the default flags: the state file is on by default (one per log in
/// the exporter's state directory), so the lines written while it was down are counted by the
/// next run and none of the first run's lines again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exporter_restart_with_default_flags() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gravity.log");
    let flags = common::log_file_flags(&log);
    let settings = common::settings(&common::owned(&flags));
    let state = settings
        .log_state_file_for(&log)
        .expect("state file on by default");
    let r = common::start(settings).await;
    append(&log, &lines("info", 0, 300));
    assert_counts_match(r.addr, std::slice::from_ref(&log)).await;
    let first = counted(r.addr).await;
    r.stop().await;
    assert!(state.exists(), "no state saved at {}", state.display());

    // Written while the exporter is down, and rotated once.
    append(&log, &lines("error", 0, 200));
    let rotated = dir.path().join("gravity.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    append(&log, &lines("warning", 0, 100));
    let r = common::start(common::settings(&common::owned(&flags))).await;
    let want = BTreeMap::from([("error".to_string(), 200.0), ("warning".to_string(), 100.0)]);
    let ok = wait_for(Duration::from_secs(30), || async {
        counted(r.addr).await == want
    })
    .await;
    assert!(
        ok.is_some(),
        "second run counted {:?} (first run: {first:?})",
        counted(r.addr).await
    );
    r.stop().await;
    let _ = std::fs::remove_file(&state);
}
