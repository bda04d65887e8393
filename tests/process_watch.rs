//! The process watch against a real gravity double process: up while running, 0 within
//! 1 s of a kill, every restart counted (three quick ones add three), a zombie is down,
//! and a hung API takes gravity_up to 0 although the process lives.

mod common;

use std::time::{Duration, Instant};

use common::{metric, owned, start_double, wait_for};
use gravity_double::supervisor::{Restart, Signal};

const P: &str = "pipeline=\"mysql2mysqlDemo\"";

async fn up(addr: std::net::SocketAddr) -> Option<f64> {
    metric(addr, "gravity_up", &[P]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_then_down_within_a_second_after_kill() {
    let d = start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&d.exporter_flags()))).await;
    let took = wait_for(Duration::from_secs(10), || async {
        up(r.addr).await == Some(1.0)
    })
    .await;
    if took.is_none() {
        let (_, page) = common::get(r.addr, "/").await;
        let (_, m) = common::get(r.addr, "/metrics").await;
        panic!(
            "gravity_up never 1; flags {:?}\n{page}\n{m}",
            d.exporter_flags()
        );
    }
    let healthz = wait_for(Duration::from_secs(5), || async {
        metric(r.addr, "gravity_healthz", &[P]).await == Some(1.0)
            && metric(r.addr, "gravity_process_cpu_seconds_total", &[P])
                .await
                .is_some()
    })
    .await;
    assert!(
        healthz.is_some(),
        "healthz and process figures never showed"
    );
    d.sup.kill(Signal::Kill).unwrap();
    let t0 = Instant::now();
    let took = wait_for(Duration::from_secs(3), || async {
        up(r.addr).await == Some(0.0)
    })
    .await;
    let took = took.expect("gravity_up did not drop to 0");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "exit visible after {took:?}"
    );
    assert_eq!(
        metric(r.addr, "gravity_process_exits_total", &[P]).await,
        Some(1.0)
    );
    assert_eq!(
        metric(r.addr, "gravity_process_restarts_total", &[P]).await,
        Some(0.0)
    );
    r.stop().await;
}

async fn restarts(addr: std::net::SocketAddr) -> f64 {
    metric(addr, "gravity_process_restarts_total", &[P])
        .await
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_restart_adds_one_and_three_quick_restarts_add_three() {
    let d = start_double(Restart::Always, Duration::from_millis(150), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&d.exporter_flags()))).await;
    assert!(wait_for(Duration::from_secs(10), || async {
        up(r.addr).await == Some(1.0)
    })
    .await
    .is_some());
    assert_eq!(restarts(r.addr).await, 0.0);

    // A restarted gravity is killed as soon as its API answers: a crash loop far faster
    // than any scrape interval. (A process that dies within the watch interval, 100 ms,
    // before it could even serve its API, may be missed: see docs/metrics.md.)
    async fn kill_and_wait_new_process(d: &common::Double) {
        let before = d.sup.pid();
        d.sup.kill(Signal::Kill).unwrap();
        d.sup
            .wait_until(Duration::from_secs(5), |s| {
                s.pid.is_some() && s.pid != before
            })
            .expect("supervisor did not restart gravity");
        d.wait_api().await;
    }
    kill_and_wait_new_process(&d).await;
    let ok = wait_for(Duration::from_secs(3), || async {
        restarts(r.addr).await == 1.0
    })
    .await;
    assert!(
        ok.is_some(),
        "restart not counted: {}",
        restarts(r.addr).await
    );

    // three quick restarts, all before the next collection would even run
    let t0 = Instant::now();
    for _ in 0..3 {
        kill_and_wait_new_process(&d).await;
    }
    let three_took = t0.elapsed();
    assert!(
        three_took < Duration::from_secs(5),
        "restarts were not quick: {three_took:?}"
    );
    let ok = wait_for(Duration::from_secs(3), || async {
        restarts(r.addr).await == 4.0
    })
    .await;
    assert!(
        ok.is_some(),
        "three restarts must add three: {}",
        restarts(r.addr).await
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(restarts(r.addr).await, 4.0, "no extra counts");
    assert_eq!(
        metric(r.addr, "gravity_process_exits_total", &[P]).await,
        Some(4.0)
    );
    // gravity is back and answering
    assert!(wait_for(Duration::from_secs(5), || async {
        up(r.addr).await == Some(1.0)
    })
    .await
    .is_some());
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zombie_reads_as_down() {
    let d = start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&d.exporter_flags()))).await;
    assert!(wait_for(Duration::from_secs(10), || async {
        up(r.addr).await == Some(1.0)
    })
    .await
    .is_some());
    let pid = d.sup.pid().unwrap();
    d.sup.set_reaping(false);
    d.sup.kill(Signal::Kill).unwrap();
    let zombie = wait_for(Duration::from_secs(3), || async {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    })
    .await;
    assert!(zombie.is_some(), "child did not become a zombie");
    let t0 = Instant::now();
    let down = wait_for(Duration::from_secs(3), || async {
        up(r.addr).await == Some(0.0)
            && metric(r.addr, "gravity_process_up", &[P]).await == Some(0.0)
    })
    .await;
    assert!(down.is_some(), "zombie not read as down");
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t0.elapsed()
    );
    let (_, page) = common::get(r.addr, "/").await;
    assert!(page.contains("zombie"), "{page}");
    d.sup.set_reaping(true);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_api_means_not_up_and_recovers() {
    let d = start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&d.exporter_flags()))).await;
    assert!(wait_for(Duration::from_secs(10), || async {
        up(r.addr).await == Some(1.0)
    })
    .await
    .is_some());
    d.control("/_double/fault?mode=hang").await;
    let t0 = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || async {
        up(r.addr).await == Some(0.0)
    })
    .await
    .is_some());
    // /metrics stays fast while gravity hangs
    let t = Instant::now();
    let _ = common::get(r.addr, "/metrics").await;
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "/metrics slow: {:?}",
        t.elapsed()
    );
    assert_eq!(metric(r.addr, "gravity_process_up", &[P]).await, Some(1.0));
    assert_eq!(
        metric(
            r.addr,
            "gravity_exporter_collector_success",
            &["collector=\"status\""]
        )
        .await,
        Some(0.0)
    );
    assert!(t0.elapsed() < Duration::from_secs(5));
    d.control("/_double/fault?mode=none").await;
    assert!(wait_for(Duration::from_secs(5), || async {
        up(r.addr).await == Some(1.0)
    })
    .await
    .is_some());
    r.stop().await;
}

/// gravity's exit reaches the watcher through a pidfd, not through its polling interval:
/// with the poll fallback set to a minute, the exit and the supervisor's restart are still
/// counted within seconds (the polling watcher of before saw neither for a minute). Runs
/// only where the kernel offers pidfds (Linux 5.3+), which it says when it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_and_restart_seen_without_polling() {
    let d = start_double(Restart::Always, Duration::from_millis(150), &[]);
    d.wait_api().await;
    let pid = d.sup.pid().expect("double runs");
    let pidfd_ok = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap())
        .map(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).is_ok())
        .unwrap_or(false);
    if !pidfd_ok {
        eprintln!("skipped: this kernel has no pidfd_open");
        return;
    }
    let mut flags = d.exporter_flags();
    flags.extend(["--collector.process-watch-interval".into(), "60s".into()]);
    let r = common::start(common::settings(&owned(&flags))).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            metric(r.addr, "gravity_process_up", &[P]).await == Some(1.0)
        })
        .await
        .is_some(),
        "gravity_process_up never 1"
    );
    d.sup.kill(Signal::Kill).unwrap();
    let exited = wait_for(Duration::from_secs(10), || async {
        metric(r.addr, "gravity_process_exits_total", &[P]).await == Some(1.0)
            && restarts(r.addr).await == 1.0
    })
    .await;
    let (_, m) = common::get(r.addr, "/metrics").await;
    assert!(
        exited.is_some(),
        "exit and restart not counted without polling:\n{}",
        m.lines()
            .filter(|l| l.starts_with("gravity_process_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    r.stop().await;
}

/// A crash loop that starts after gravity was stopped for a while: every incarnation is
/// counted, although each lives only ~300 ms. (A watcher that backs its scans off to a
/// second while gravity is away misses the first ones, as the live-stack crash-loop alert
/// showed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_after_a_long_absence_counts_every_restart() {
    let mut d = start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&d.exporter_flags()))).await;
    assert!(
        wait_for(Duration::from_secs(10), || async {
            metric(r.addr, "gravity_process_up", &[P]).await == Some(1.0)
        })
        .await
        .is_some(),
        "gravity_process_up never 1"
    );
    d.sup.stop();
    assert!(
        wait_for(Duration::from_secs(5), || async {
            metric(r.addr, "gravity_process_up", &[P]).await == Some(0.0)
        })
        .await
        .is_some(),
        "stop not seen"
    );
    // The scenario, not a synchronisation: gravity stays away for 25 s (long enough for a
    // watcher that backs off to be at its slowest).
    tokio::time::sleep(Duration::from_secs(25)).await;
    let mut cfg = gravity_double::SupervisorConfig::new(
        d.dir.path().join("gravity"),
        d.dir.path(),
        &d.config,
        format!("127.0.0.1:{}", d.port),
    );
    cfg.log_file = Some(d.log.clone());
    cfg.restart = Restart::Always;
    cfg.restart_sec = Duration::from_millis(300);
    cfg.start_limit_burst = 100;
    let sup = gravity_double::Supervisor::start(cfg).unwrap();
    let crashes = 4;
    for _ in 0..crashes {
        d.wait_api().await;
        // each incarnation lives ~300 ms: longer than the watcher's slowest look (100 ms)
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = sup.pid();
        d.control("/_double/fault?mode=crash").await;
        sup.wait_until(Duration::from_secs(5), |s| {
            s.pid.is_some() && s.pid != before
        })
        .unwrap();
    }
    // The first process, then `crashes` + 1 new ones after it.
    let want = f64::from(crashes + 1);
    let counted = wait_for(Duration::from_secs(10), || async {
        restarts(r.addr).await == want
    })
    .await;
    assert!(
        counted.is_some(),
        "restarts {} of {want}",
        restarts(r.addr).await
    );
    r.stop().await;
}
