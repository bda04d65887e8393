//! No password from gravity's config may reach /metrics, the landing page, or the
//! exporter's own log at any level. The binary runs at `--log.level debug` once per
//! reference config while its probes and source checks fail in every way they can here
//! (auth against the machine's MariaDB, refused ports, unresolvable hosts).

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_gravity-exporter");

/// Every password in the reference configs, and the basic-auth header the ES probe sends.
const SECRETS: &[&str] = &[
    "s3cret-source-pw",
    "s3cret-target-pw",
    "kafka-pipeline-pw",
    "probe-pw",
    "sasl-pw",
    "mongo-pw",
    "es-source-pw",
    "es-pw",
    "ZWxhc3RpYzplcy1wdw==", // base64("elastic:es-pw")
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_in_metrics_landing_page_or_debug_log() {
    let closed = common::free_port();
    let mut runs = Vec::new();
    for name in [
        "mysql2mysql-stream.toml",
        "mysql2kafka-stream.toml",
        "mongo2kafka.toml",
        "mysql-full-dump.toml",
        "mysql2es.toml",
    ] {
        let cfg = common::fixtures().join("configs").join(name);
        let port = common::free_port();
        let mut child = Command::new(BIN)
            .args([
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
                "--log.level",
                "debug",
                "--gravity.config",
                cfg.to_str().unwrap(),
                "--gravity.process-pattern",
                "^no-such-gravity-process-for-tests$",
                "--gravity.url",
                &format!("http://127.0.0.1:{closed}"),
                "--collector.interval",
                "200ms",
                "--probe.interval",
                "200ms",
                "--probe.timeout",
                "500ms",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Drain the log while the exporter runs, so a full pipe never blocks it.
        let mut err = child.stderr.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = Vec::new();
            let _ = err.read_to_end(&mut s);
            let _ = out.read_to_end(&mut s);
            String::from_utf8_lossy(&s).into_owned()
        });
        runs.push((name, port, child, reader));
    }
    let addr = |port: u16| -> std::net::SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    for (name, port, child, reader) in &mut runs {
        // Wait for at least a few probe rounds and source checks.
        let t0 = Instant::now();
        let mut body = String::new();
        while t0.elapsed() < Duration::from_secs(15) {
            body = match gravity_exporter::gravity_api::GravityClient::new()
                .get(
                    &format!("http://{}", addr(*port)).parse().unwrap(),
                    "/metrics",
                    Duration::from_secs(2),
                    64 << 20,
                )
                .await
            {
                Ok(r) => String::from_utf8_lossy(&r.body).into_owned(),
                Err(_) => String::new(),
            };
            if common::sample(
                &body,
                "gravity_connection_probe_duration_seconds_count",
                &[],
            )
            .is_some_and(|n| n >= 3.0)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            body.contains("gravity_connection_health{"),
            "{name}: no probes ran:\n{body}"
        );
        let page = common::get(addr(*port), "/").await.1;
        assert!(page.contains("endpoint: source"), "{name}: {page}");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let st = child.wait().unwrap();
        assert!(st.success(), "{name}: exit {st:?}");
        let log = std::mem::replace(reader, std::thread::spawn(String::new))
            .join()
            .unwrap();
        assert!(
            log.contains("DEBUG"),
            "{name}: no debug lines in the log:\n{log}"
        );
        assert!(
            log.contains("connection probe"),
            "{name}: no probe lines:\n{log}"
        );
        for s in SECRETS {
            assert!(!body.contains(s), "{name}: {s} in /metrics");
            assert!(!page.contains(s), "{name}: {s} on the landing page");
            assert!(!log.contains(s), "{name}: {s} in the log:\n{log}");
        }
    }
}
