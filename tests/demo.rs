//! The README's first command, `gravity-double demo`, end to end: the simulated gravity is
//! watched (gravity up, rows flowing) and, with MariaDB installed, canaries flow through the
//! demo's private server (docs/canary.md).

mod common;
#[path = "common/mariadb.rs"]
mod mariadb;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Stops the demo on drop: SIGTERM, so that it stops what it started (Prometheus,
/// Alertmanager, its MariaDB), then SIGKILL if it is still there after 20 s.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_watches_its_pipeline_and_canaries_flow() {
    if !mariadb::require() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let exe = gravity_double::binary().unwrap();
    let demo = Proc(
        Command::new(exe)
            .arg("demo")
            .arg("--demo.duration=180")
            .arg(format!("--demo.dir={}", dir.path().display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::fs::File::create(dir.path().join("demo.out")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let ok = common::wait_for(Duration::from_secs(120), || async {
        // the demo makes its MariaDB first: its port answers a few seconds later
        if std::net::TcpStream::connect(addr).is_err() {
            return false;
        }
        let (code, body) = common::get(addr, "/metrics").await;
        code == 200
            && value(&body, "gravity_up") == Some(1.0)
            && value(&body, "gravity_canary_arrived_total").unwrap_or(0.0) >= 3.0
    })
    .await;
    let out = std::fs::read_to_string(dir.path().join("demo.out")).unwrap_or_default();
    assert!(
        ok.is_some(),
        "the demo never showed gravity up with three canaries arrived; it printed:\n{out}"
    );
    assert!(
        out.contains("canary:") && out.contains("private MariaDB"),
        "{out}"
    );
    let (_, body) = common::get(addr, "/metrics").await;
    assert_eq!(
        value(&body, "gravity_canary_lost_total"),
        Some(0.0),
        "{body}"
    );
    let (_, page) = common::get(addr, "/").await;
    assert!(page.contains("anary"), "the status page shows the canaries");
    // Stopped with SIGTERM, the demo stops what it started: Prometheus and Alertmanager
    // (when installed) no longer answer.
    let helpers: Vec<String> = out
        .lines()
        .filter(|l| l.contains("Prometheus:") || l.contains("Alertmanager:"))
        .filter_map(|l| l.split("http://").nth(1))
        .filter_map(|u| u.split('/').next())
        .map(str::to_string)
        .collect();
    drop(demo);
    for h in &helpers {
        assert!(
            std::net::TcpStream::connect(h.as_str()).is_err(),
            "{h} still answers after the demo stopped"
        );
    }
}
