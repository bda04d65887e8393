//! Several pipelines on one host behind one exporter (issue 22): gravity doubles, each with
//! its own config file (its own pipeline name), port and log, found through one
//! `--gravity.config` glob. Each pipeline shows in one `/metrics` (a valid exposition), one
//! pipeline's crash shows within a second while the other answers 100 MB of junk, the views
//! name their pipeline, a removed config file ends its pipeline's series, two files naming one
//! pipeline are refused at start, `check` checks each, and each pipeline's log is counted
//! exactly across rotations and an exporter restart (one state file per log).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{get, sample, wait_for, wait_metrics};
use gravity_double::supervisor::{Restart, Signal};

/// A gravity double running with config `dir/conf/<file>` (pipeline `name`).
struct Named {
    sup: gravity_double::Supervisor,
    port: u16,
    config: PathBuf,
}

fn start_named(dir: &Path, file: &str, name: &str, restart: Restart) -> Named {
    start_named_with(dir, file, name, restart, &[])
}

/// [`start_named`] with extra environment for the double (`GRAVITY_DOUBLE_*`).
fn start_named_with(
    dir: &Path,
    file: &str,
    name: &str,
    restart: Restart,
    env: &[(&str, &str)],
) -> Named {
    use gravity_double::{install_gravity_link, Supervisor, SupervisorConfig};
    let exe = gravity_double::binary().unwrap();
    let work = dir.join(format!("work-{name}"));
    std::fs::create_dir_all(&work).unwrap();
    let link = install_gravity_link(&exe, &work).unwrap();
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let config = conf.join(file);
    let text = std::fs::read_to_string(common::fixtures().join("configs/mysql2mysql-stream.toml"))
        .unwrap()
        .replacen(
            "name = \"mysql2mysqlDemo\"",
            &format!("name = \"{name}\""),
            1,
        );
    std::fs::write(&config, text).unwrap();
    let port = common::free_port();
    let mut cfg = SupervisorConfig::new(&link, &work, &config, format!("127.0.0.1:{port}"));
    cfg.log_file = Some(work.join("gravity.log"));
    cfg.restart = restart;
    cfg.restart_sec = Duration::from_millis(200);
    cfg.start_limit_burst = 100;
    cfg.env = env
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let sup = Supervisor::start(cfg).unwrap();
    Named { sup, port, config }
}

fn flags(glob: &Path) -> Vec<String> {
    vec![
        format!("--gravity.config={}", glob.display()),
        "--collector.interval".into(),
        "200ms".into(),
        "--gravity.timeout".into(),
        "500ms".into(),
        "--probe.interval".into(),
        "0s".into(),
        "--gravity.log-state-file".into(),
        "none".into(),
    ]
}

fn up(text: &str, pipeline: &str) -> Option<f64> {
    sample(text, "gravity_up", &[&format!("pipeline=\"{pipeline}\"")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_behind_one_exporter_are_seen_apart_and_isolated() {
    let dir = tempfile::tempdir().unwrap();
    let mut alpha = start_named(dir.path(), "a.toml", "alpha", Restart::No);
    let mut beta = start_named(dir.path(), "b.toml", "beta", Restart::Always);
    let glob = dir.path().join("conf").join("*.toml");
    let args = flags(&glob);
    let r = common::start(common::settings(&common::owned(&args))).await;
    assert_eq!(r.exp.fleet.len(), 2);

    // both pipelines in one exposition, each with its own series
    let body = wait_metrics(r.addr, Duration::from_secs(20), "both pipelines up", |t| {
        up(t, "alpha") == Some(1.0)
            && up(t, "beta") == Some(1.0)
            && t.contains("gravity_throughput_rows_per_second{")
    })
    .await;
    for p in ["alpha", "beta"] {
        assert!(
            sample(
                &body,
                "gravity_exporter_collector_success",
                &["collector=\"status\"", &format!("pipeline=\"{p}\"")]
            )
            .is_some(),
            "the exporter's per-pipeline series carry the pipeline: {body}"
        );
    }
    // HELP/TYPE once per family, no series twice
    let mut seen = std::collections::HashSet::new();
    for l in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        assert!(seen.insert(l.to_string()), "family declared twice: {l}");
    }
    let mut series = std::collections::HashSet::new();
    for l in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let key = l.rsplit_once(' ').map(|(k, _)| k).unwrap_or(l);
        assert!(series.insert(key.to_string()), "series twice: {l}");
    }
    if let Some(promtool) = common::promtool() {
        // gravity's own names (pass-through) break promtool's naming lint (counters without
        // _total): allowed; a parse error (a family declared twice, a bad label) is not,
        // and the exporter's own families lint clean
        let (code, out) = common::promtool_check_metrics(&promtool, &body);
        assert!(
            code == Some(0)
                || (!out.contains("error")
                    && !out.contains("parsing")
                    && !out.contains("gravity_exporter_")),
            "promtool check metrics: {out}"
        );
    }

    // the views name their pipeline
    let (code, text) = get(r.addr, "/api/status").await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("alpha") && text.contains("beta"), "{text}");
    let (code, text) = get(r.addr, "/api/status?pipeline=alpha").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["pipeline"], "alpha");
    let (code, _) = get(r.addr, "/api/diagnosis?pipeline=nope").await;
    assert_eq!(code, 404);
    let (code, text) = get(r.addr, "/api/pipelines").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = v["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pipeline"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    let (_, page) = get(r.addr, "/").await;
    assert!(
        page.contains("href=\"/?pipeline=alpha\"") && page.contains("href=\"/?pipeline=beta\""),
        "{page}"
    );
    let (_, page) = get(r.addr, "/?pipeline=beta").await;
    assert!(page.contains("gravity pipeline beta"), "{page}");
    assert!(page.contains("/api/status?pipeline=beta"), "{page}");
    assert!(page.contains("All pipelines"), "{page}");

    // beta answers 100 MB of junk; alpha's crash still shows within a second
    let head = common::post(beta.port, "/_double/fault?mode=huge").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    alpha.sup.kill(Signal::Kill).unwrap();
    let t0 = Instant::now();
    let seen = wait_for(Duration::from_secs(5), || async {
        let (_, t) = get(r.addr, "/metrics").await;
        up(&t, "alpha") == Some(0.0)
    })
    .await
    .expect("alpha's crash never showed");
    assert!(
        seen < Duration::from_secs(1),
        "alpha's crash took {seen:?} to show while beta answered 100 MB"
    );
    let (_, t) = get(r.addr, "/metrics").await;
    assert_eq!(
        sample(&t, "gravity_process_up", &["pipeline=\"beta\""]),
        Some(1.0),
        "beta's process is still up: {t}"
    );
    let _ = t0;
    let head = common::post(beta.port, "/_double/fault?mode=none").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // alpha's process is gone but its config stays: it stays known, down
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, t) = get(r.addr, "/metrics").await;
    assert_eq!(up(&t, "alpha"), Some(0.0), "{t}");

    // its config file removed: its series end; beta's stay
    std::fs::remove_file(&alpha.config).unwrap();
    wait_metrics(
        r.addr,
        Duration::from_secs(30),
        "alpha's series end after its config file is removed",
        |t| up(t, "alpha").is_none() && up(t, "beta").is_some(),
    )
    .await;
    assert_eq!(r.exp.fleet.len(), 1);
    r.stop().await;
    alpha.sup.stop();
    beta.sup.stop();
}

#[test]
fn two_config_files_naming_one_pipeline_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("configs/mysql2mysql-stream.toml"))
        .unwrap();
    std::fs::write(conf.join("one.toml"), &text).unwrap();
    std::fs::write(conf.join("two.toml"), &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gravity-exporter"))
        .arg(format!("--gravity.config={}/*.toml", conf.display()))
        .arg("--web.listen-address=127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("one.toml") && err.contains("two.toml") && err.contains("mysql2mysqlDemo"),
        "{err}"
    );
}

#[test]
fn check_checks_every_pipeline_or_the_one_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut alpha = start_named(dir.path(), "a.toml", "alpha", Restart::Always);
    // beta's gravity never runs: CRITICAL, and the worst verdict wins
    let conf = dir.path().join("conf");
    let text = std::fs::read_to_string(common::fixtures().join("configs/mysql2mysql-stream.toml"))
        .unwrap()
        .replacen("name = \"mysql2mysqlDemo\"", "name = \"beta\"", 1);
    std::fs::write(conf.join("b.toml"), text).unwrap();
    let glob = format!("--gravity.config={}/*.toml", conf.display());
    // alpha's API up first
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", alpha.port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "alpha never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gravity-exporter"))
            .arg("check")
            .arg(&glob)
            .args(["--probe.interval", "0s", "--gravity.timeout", "2s"])
            .args(extra)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&[]);
    assert_eq!(code, Some(2), "{out}");
    let first = out.lines().next().unwrap_or_default();
    assert!(first.starts_with("GRAVITY CRITICAL - 2 pipelines"), "{out}");
    assert!(out.contains("PIPELINE alpha "), "{out}");
    assert!(out.contains("PIPELINE beta CRITICAL"), "{out}");
    let (code, out) = run(&["--pipeline", "alpha"]);
    assert!(
        out.starts_with("GRAVITY ") && out.contains("pipeline alpha") && !out.contains("beta"),
        "{out}"
    );
    assert_ne!(code, Some(3), "{out}");
    let (code, out) = run(&["--pipeline", "nope"]);
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("no pipeline named nope"), "{out}");
    let (_, out) = run(&["--format", "json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["status"], "CRITICAL");
    assert_eq!(v["pipelines"].as_array().map(|a| a.len()), Some(2));
    alpha.sup.stop();
}

/// With no flag naming gravity, every gravity process of the host is a pipeline: those
/// running at start, and one started later (found within the rescan). Other tests of this
/// binary run doubles too; only this test's pipelines are looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_flag_every_gravity_of_the_host_is_a_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = start_named(dir.path(), "auto-a.toml", "autoA", Restart::No);
    let mut b = start_named(dir.path(), "auto-b.toml", "autoB", Restart::Always);
    // both listening before the exporter looks
    for port in [a.port, b.port] {
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t0.elapsed() < Duration::from_secs(10), "never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let r = common::start(common::settings(&[
        "--collector.interval",
        "200ms",
        "--gravity.timeout",
        "500ms",
        "--probe.interval",
        "0s",
        "--gravity.log-state-file",
        "none",
    ]))
    .await;
    assert_eq!(
        r.exp.fleet.mode,
        gravity_exporter::config::PipelineMode::Auto
    );
    wait_metrics(r.addr, Duration::from_secs(20), "autoA and autoB up", |t| {
        up(t, "autoA") == Some(1.0) && up(t, "autoB") == Some(1.0)
    })
    .await;
    // a third gravity started later gets a pipeline of its own
    let mut c = start_named(dir.path(), "auto-c.toml", "autoC", Restart::Always);
    wait_metrics(
        r.addr,
        gravity_exporter::app::PROCESS_RESCAN + Duration::from_secs(15),
        "autoC found by the rescan",
        |t| up(t, "autoC") == Some(1.0),
    )
    .await;
    // autoA's process ends: it stays known, down; the others stay up
    a.sup.kill(Signal::Kill).unwrap();
    wait_metrics(
        r.addr,
        Duration::from_secs(5),
        "autoA down, others up",
        |t| {
            up(t, "autoA") == Some(0.0)
                && up(t, "autoB") == Some(1.0)
                && up(t, "autoC") == Some(1.0)
        },
    )
    .await;
    r.stop().await;
    a.sup.stop();
    b.sup.stop();
    c.sup.stop();
}

/// The upkeep's rescan of the config globs (every `app::CONFIG_RESCAN`) hands a running
/// pipeline no new settings: a new value would wake its watcher for a full look through
/// /proc and its collectors every 10 s (the idle cost of ten pipelines was 27× one's). A
/// reload does hand them over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_leaves_the_settings_of_running_pipelines_alone() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    let text = std::fs::read_to_string(common::fixtures().join("configs/mysql2mysql-stream.toml"))
        .unwrap();
    std::fs::write(conf.join("a.toml"), &text).unwrap();
    let args = flags(&conf.join("*.toml"));
    let r = common::start(common::settings(&common::owned(&args))).await;
    let ctx = r.exp.fleet.contexts()[0].clone();
    let before = ctx.settings();
    tokio::time::sleep(gravity_exporter::app::CONFIG_RESCAN + Duration::from_secs(2)).await;
    assert!(
        std::sync::Arc::ptr_eq(&before, &ctx.settings()),
        "a rescan replaced the pipeline's settings"
    );
    gravity_exporter::app::reload(&r.exp);
    let ok = wait_for(Duration::from_secs(5), || {
        let same = std::sync::Arc::ptr_eq(&before, &ctx.settings());
        async move { !same }
    })
    .await;
    assert!(ok.is_some(), "a reload did not reach the pipeline");
    r.stop().await;
}

/// Every line of the logs under `work` (the current file and the rotated ones).
fn lines_on_disk(work: &Path) -> (u64, usize) {
    let mut lines = 0u64;
    let mut files = 0usize;
    for e in std::fs::read_dir(work).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().to_string();
        if n.starts_with("gravity") && n.ends_with(".log") {
            files += 1;
            let data = std::fs::read(e.path()).unwrap();
            lines += data.iter().filter(|b| **b == b'\n').count() as u64;
        }
    }
    (lines, files)
}

/// `gravity_log_lines_total` of one pipeline, all levels.
fn log_lines(text: &str, pipeline: &str) -> u64 {
    let want = format!("pipeline=\"{pipeline}\"");
    text.lines()
        .filter(|l| l.starts_with("gravity_log_lines_total{") && l.contains(&want))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum::<f64>() as u64
}

/// Each pipeline's line count once it stopped changing (its gravity quiet): the same in
/// four reads over two seconds.
async fn settled_counts(addr: std::net::SocketAddr) -> (u64, u64) {
    let mut last = (u64::MAX, u64::MAX);
    let mut same = 0;
    for _ in 0..90 {
        let (_, t) = get(addr, "/metrics").await;
        let now = (log_lines(&t, "alpha"), log_lines(&t, "beta"));
        if now == last {
            same += 1;
            if same == 3 {
                return now;
            }
        } else {
            same = 0;
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    panic!("the line counts never settled: {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pipeline_counts_its_log_exactly_across_rotations_and_an_exporter_restart() {
    let dir = tempfile::tempdir().unwrap();
    // alpha rotates its log past 600 bytes (every two or three lines), beta never; both log
    // a retry about three times a second
    let alpha = start_named_with(
        dir.path(),
        "a.toml",
        "alpha",
        Restart::No,
        &[
            ("GRAVITY_DOUBLE_RETRY_EVERY", "0.3"),
            ("GRAVITY_DOUBLE_LOG_MAX_BYTES", "600"),
        ],
    );
    let beta = start_named_with(
        dir.path(),
        "b.toml",
        "beta",
        Restart::No,
        &[("GRAVITY_DOUBLE_RETRY_EVERY", "0.3")],
    );
    let (work_a, work_b) = (dir.path().join("work-alpha"), dir.path().join("work-beta"));
    let glob = dir.path().join("conf").join("*.toml");
    let mut args = flags(&glob);
    let state_dir = dir.path().join("state");
    let i = args.iter().position(|a| a == "none").unwrap();
    args[i] = state_dir.join("log-state.json").display().to_string();
    // quiet (idle source: no retries to log) or flowing again; the double's own switch, not
    // SIGSTOP, which would make it log every missed retry at once on SIGCONT
    let (port_a, port_b) = (alpha.port, beta.port);
    let pause = |quiet: bool| async move {
        let q = if quiet { "idle" } else { "none" };
        for port in [port_a, port_b] {
            let head = common::post(port, &format!("/_double/fault?mode={q}")).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
    };

    let r = common::start(common::settings(&common::owned(&args))).await;
    wait_metrics(r.addr, Duration::from_secs(30), "both logs followed", |t| {
        log_lines(t, "alpha") > 0 && log_lines(t, "beta") > 0
    })
    .await;
    // a baseline with both gravitys paused: what is on disk against what was counted
    pause(true).await;
    let base = settled_counts(r.addr).await;
    let (disk_a0, files_a0) = lines_on_disk(&work_a);
    let (disk_b0, _) = lines_on_disk(&work_b);
    pause(false).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    pause(true).await;
    let first = settled_counts(r.addr).await;
    let (disk_a1, files_a1) = lines_on_disk(&work_a);
    let (disk_b1, _) = lines_on_disk(&work_b);
    assert!(files_a1 > files_a0, "alpha rotated while followed");
    assert_eq!(
        (first.0 - base.0, first.1 - base.1),
        (disk_a1 - disk_a0, disk_b1 - disk_b0),
        "the first run counted what was written while it followed"
    );
    r.stop().await;

    // the exporter is down while both write and alpha rotates several times
    pause(false).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    pause(true).await;
    let (_, files_a2) = lines_on_disk(&work_a);
    assert!(
        files_a2 >= files_a1 + 2,
        "alpha rotated at least twice while the exporter was down: {files_a1} -> {files_a2}"
    );
    let states = std::fs::read_dir(&state_dir).unwrap().count();
    assert_eq!(states, 2, "one state file per log");

    let r = common::start(common::settings(&common::owned(&args))).await;
    pause(false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    pause(true).await;
    wait_metrics(
        r.addr,
        Duration::from_secs(30),
        "both logs followed again",
        |t| log_lines(t, "alpha") > 0 && log_lines(t, "beta") > 0,
    )
    .await;
    let second = settled_counts(r.addr).await;
    let (disk_a, _) = lines_on_disk(&work_a);
    let (disk_b, _) = lines_on_disk(&work_b);
    assert_eq!(
        second,
        (disk_a - disk_a1, disk_b - disk_b1),
        "the second run counted what was written while the exporter was down and after"
    );
    assert_eq!(
        (first.0 - base.0) + second.0,
        disk_a - disk_a0,
        "alpha: every line written since the baseline counted once ({base:?} {first:?} {second:?})"
    );
    assert_eq!(
        (first.1 - base.1) + second.1,
        disk_b - disk_b0,
        "beta: every line written since the baseline counted once ({base:?} {first:?} {second:?})"
    );
    let (_, t) = get(r.addr, "/metrics").await;
    assert_eq!(
        sample(&t, "gravity_log_rotations_total", &["pipeline=\"beta\""]),
        Some(0.0),
        "beta never rotated: {t}"
    );
    pause(false).await;
    r.stop().await;
    let (mut alpha, mut beta) = (alpha, beta);
    alpha.sup.stop();
    beta.sup.stop();
}
