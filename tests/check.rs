//! `gravity-exporter check`: the same seven checks once, as a Nagios plugin.

mod common;

use std::process::Command;
use std::time::Duration;

use gravity_double::supervisor::{Restart, Signal};

const BIN: &str = env!("CARGO_BIN_EXE_gravity-exporter");

fn check(args: &[String]) -> (i32, String) {
    let out = Command::new(BIN).arg("check").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ok_then_critical_after_a_kill_and_unknown_on_bad_flags() {
    let d = common::start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    // settle past the double's first position
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut args = d.exporter_flags();
    args.extend(["--probe.interval".into(), "0s".into()]);
    let (code, out) = check(&args);
    assert_eq!(code, 0, "{out}");
    let first = out.lines().next().unwrap();
    assert!(
        // probes off: the two reachability checks are not checked, and the score says of how many
        first.starts_with("GRAVITY OK - pipeline mysql2mysqlDemo: 5/5 checks pass (2 not checked: source_reachable, target_reachable) | score=5;;;0;5"),
        "{first}"
    );
    assert!(
        first.contains("lag_seconds=") && first.contains("up=1"),
        "{first}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("PASS ")).count(),
        5,
        "{out}"
    );
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("NOT CHECKED ") && l.contains("connection probes are off"))
            .count(),
        2,
        "{out}"
    );
    // two readings of gravity's /metrics: a diagnosis line
    assert!(
        out.lines().any(|l| l.starts_with("DIAGNOSIS bottleneck=")),
        "{out}"
    );

    let mut json_args = args.clone();
    json_args.extend(["--format".into(), "json".into()]);
    let (code, out) = check(&json_args);
    assert_eq!(code, 0, "{out}");
    let j: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(j["status"], "OK");
    assert_eq!(j["checks"].as_array().unwrap().len(), 7);
    assert_eq!(
        (j["score"].as_u64(), j["checks_evaluated"].as_u64()),
        (Some(5), Some(5))
    );
    assert!(j["diagnosis"]["bottleneck"].is_string(), "{j}");

    // errors in the log: WARNING (log_healthy fails, nothing critical)
    d.control("/_double/errors?n=3&kind=missing_table").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, out) = check(&args);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL(warning) log_healthy: 3 error lines"),
        "{out}"
    );

    d.sup.kill(Signal::Kill).unwrap();
    d.sup
        .wait_until(Duration::from_secs(5), |s| s.pid.is_none())
        .unwrap();
    let (code, out) = check(&args);
    assert_eq!(code, 2, "{out}");
    assert!(out.starts_with("GRAVITY CRITICAL"), "{out}");
    assert!(out.contains("FAIL(critical) process_running"), "{out}");

    let (code, out) = check(&["--collector.interval".into(), "soon".into()]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.starts_with("GRAVITY UNKNOWN - ") && out.contains("collector.interval"),
        "{out}"
    );
}
