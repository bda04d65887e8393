//! The supervisor against a running exporter beside a real gravity double: every background
//! task is up with its series at 0 restarts, and stopping the exporter cancels and joins
//! every one of them within the drain (none left to abort).

mod common;

use std::time::Duration;

use common::{metric, owned, start_double, wait_for};
use gravity_double::supervisor::Restart;
use gravity_exporter::supervise::TASKS;

fn task(t: &str) -> String {
    format!("task=\"{t}\"")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_exporter_ends_every_task() {
    let d = start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let r = common::start(common::settings(&owned(&d.exporter_flags()))).await;
    let all_up = wait_for(Duration::from_secs(20), || async {
        let mut ok =
            metric(r.addr, "gravity_up", &["pipeline=\"mysql2mysqlDemo\""]).await == Some(1.0);
        for t in TASKS {
            ok &= metric(r.addr, "gravity_exporter_task_up", &[&task(t)]).await == Some(1.0);
            ok &= metric(r.addr, "gravity_exporter_task_restarts_total", &[&task(t)]).await
                == Some(0.0);
        }
        // The cyclic tasks have finished a cycle (the watcher a look, the prober a round).
        for t in ["watcher", "log", "connections"] {
            ok &= metric(
                r.addr,
                "gravity_exporter_task_last_success_timestamp_seconds",
                &[&task(t)],
            )
            .await
            .is_some_and(|v| v > 0.0);
        }
        ok
    })
    .await;
    if all_up.is_none() {
        let (_, m) = common::get(r.addr, "/metrics").await;
        panic!("not every task up:\n{m}");
    }
    let mut running = r.exp.pipeline_supervisor().running();
    running.sort_unstable();
    let mut want = TASKS.to_vec();
    want.sort_unstable();
    assert_eq!(running, want);
    let sup = r.exp.pipeline_supervisor();
    let store = r.exp.ctx.store.clone();
    let report = r.shutdown().await;
    assert!(
        report.still_running.is_empty(),
        "aborted after the drain: {report:?}"
    );
    assert!(sup.running().is_empty(), "{:?}", sup.running());
    assert!(sup.token().is_cancelled());
    let text = store.render();
    for t in TASKS {
        assert_eq!(
            common::sample(&text, "gravity_exporter_task_up", &[&task(t)]),
            Some(0.0),
            "{t}: {text}"
        );
    }
}
