//! `gravity_process_last_exit_info{reason,cause}` against a real gravity double process
//! under a restarting supervisor (it is back within 100 ms, before the log follower has
//! read the last lines of the incarnation that ended): a fatal line gives `fatal` with its
//! classified cause, a Go panic gives `panic`, SIGTERM and SIGINT (gravity logs its stop)
//! give `signal`, SIGKILL (nothing logged) gives `unknown`.

mod common;

use std::time::Duration;

use common::{metric, owned, start_double, wait_for, wait_metrics};
use gravity_exporter::double::supervisor::{Restart, Signal};

const P: &str = "pipeline=\"mysql2mysqlDemo\"";

async fn exits(addr: std::net::SocketAddr) -> f64 {
    metric(addr, "gravity_process_exits_total", &[P])
        .await
        .unwrap_or(0.0)
}

/// Waits until gravity is up again after `n` exits, then for the decision on the last.
async fn expect_reason(r: &common::Running, d: &common::Double, n: f64, reason: &str, cause: &str) {
    let want = [
        P.to_string(),
        format!("reason=\"{reason}\""),
        format!("cause=\"{cause}\""),
    ];
    let needles: Vec<&str> = want.iter().map(String::as_str).collect();
    wait_metrics(
        r.addr,
        Duration::from_secs(15),
        &format!("exit {n} never read as reason={reason} cause={cause}"),
        |body| {
            common::sample(body, "gravity_process_exits_total", &[P]) == Some(n)
                && common::sample(body, "gravity_process_last_exit_info", &needles) == Some(1.0)
        },
    )
    .await;
    // exactly one exit-info series
    let (_, body) = common::get(r.addr, "/metrics").await;
    let series = body
        .lines()
        .filter(|l| l.starts_with("gravity_process_last_exit_info{"))
        .count();
    assert_eq!(series, 1, "{body}");
    d.wait_api().await;
    let up = wait_for(Duration::from_secs(15), || async {
        metric(r.addr, "gravity_up", &[P]).await == Some(1.0)
    })
    .await;
    assert!(up.is_some(), "gravity never came back after exit {n}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_exit_is_read_with_its_reason() {
    let d = start_double(Restart::Always, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&d.exporter_flags()))).await;
    let up = wait_for(Duration::from_secs(15), || async {
        metric(r.addr, "gravity_up", &[P]).await == Some(1.0)
    })
    .await;
    assert!(up.is_some(), "gravity_up never 1");
    let (_, body) = common::get(r.addr, "/metrics").await;
    assert!(
        !body.contains("gravity_process_last_exit_info"),
        "no exit info before an exit:\n{body}"
    );
    assert_eq!(exits(r.addr).await, 0.0);

    // fatal: the double logs gravity's "failed to flush position cache ... connection refused" and exits 1
    d.control("/_double/fault?mode=crash").await;
    expect_reason(&r, &d, 1.0, "fatal", "connection").await;

    // a Go panic
    d.control("/_double/fault?mode=panic").await;
    expect_reason(&r, &d, 2.0, "panic", "").await;

    // a deliberate stop: gravity logs "[gravity] stop with signal terminated"
    d.sup.kill(Signal::Term).unwrap();
    expect_reason(&r, &d, 3.0, "signal", "").await;

    d.sup.kill(Signal::Int).unwrap();
    expect_reason(&r, &d, 4.0, "signal", "").await;

    // SIGKILL: nothing logged, no OOM kill in the cgroup
    d.sup.kill(Signal::Kill).unwrap();
    expect_reason(&r, &d, 5.0, "unknown", "").await;

    r.stop().await;
}
