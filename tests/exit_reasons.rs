//! `gravity_process_last_exit_info{reason,cause}` against a real gravity double process
//! under a restarting supervisor (it is back within 100 ms, before the log follower has
//! read the last lines of the incarnation that ended): a fatal line gives `fatal` with its
//! classified cause, a Go panic gives `panic`, SIGTERM and SIGINT (gravity logs its stop)
//! give `signal`, SIGKILL (nothing logged) gives `unknown`.

mod common;

use std::time::Duration;

use common::{metric, owned, start_double, wait_for, wait_metrics};
use gravity_double::supervisor::{Restart, Signal};

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

/// A memory cgroup with a limit, made below the test's own (v1 `memory` controller or
/// v2), removed again at the end. `None` where this host does not let the test make one.
struct LimitedCgroup {
    dir: std::path::PathBuf,
    procs: &'static str,
}

impl LimitedCgroup {
    fn new(limit: u64) -> Option<LimitedCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let name = format!("gravity-exporter-exit-test-{}", std::process::id());
        let v1 = own.lines().find_map(|l| {
            let mut p = l.splitn(3, ':');
            let (_, ctrls, path) = (p.next()?, p.next()?, p.next()?);
            ctrls
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        });
        let (dir, limit_file) = match v1 {
            Some(path) => (
                std::path::Path::new("/sys/fs/cgroup/memory")
                    .join(path.trim_start_matches('/'))
                    .join(&name),
                "memory.limit_in_bytes",
            ),
            None => {
                let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
                (
                    std::path::Path::new("/sys/fs/cgroup")
                        .join(path.trim_start_matches('/'))
                        .join(&name),
                    "memory.max",
                )
            }
        };
        std::fs::create_dir(&dir).ok()?;
        let cg = LimitedCgroup {
            dir,
            procs: "cgroup.procs",
        };
        std::fs::write(cg.dir.join(limit_file), limit.to_string()).ok()?;
        Some(cg)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.dir.join(self.procs), pid.to_string()).unwrap();
    }
}

impl Drop for LimitedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_kill_in_gravitys_cgroup_reads_as_oom_killed() {
    const LIMIT: u64 = 96 * 1024 * 1024;
    let Some(cg) = LimitedCgroup::new(LIMIT) else {
        eprintln!(
            "cannot make a memory cgroup on this host (not root, or cgroupfs read-only): skipped"
        );
        return;
    };
    let d = start_double(Restart::Always, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&d.exporter_flags()))).await;
    let up = wait_for(Duration::from_secs(15), || async {
        metric(r.addr, "gravity_up", &[P]).await == Some(1.0)
    })
    .await;
    assert!(up.is_some(), "gravity_up never 1");
    cg.add(d.sup.pid().unwrap());
    // the exporter reads gravity's cgroup: its limit, and 0 OOM kills
    wait_metrics(
        r.addr,
        Duration::from_secs(15),
        "gravity's cgroup limit never read",
        |body| {
            common::sample(body, "gravity_process_memory_limit_bytes", &[P]) == Some(LIMIT as f64)
                && common::sample(body, "gravity_process_oom_kills_total", &[P]) == Some(0.0)
        },
    )
    .await;
    // gravity also logged a fatal line earlier in this incarnation: the OOM kill wins
    d.control("/_double/errors?kind=ddl_syntax&n=1&exit=0")
        .await;
    d.control("/_double/fault?mode=memory_hog").await;
    expect_reason(&r, &d, 1.0, "oom_killed", "").await;
    r.stop().await;
    drop(d);
}
