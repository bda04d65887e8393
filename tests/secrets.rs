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

/// The table of secret forms shared with the redactor's unit test: (fragments, text).
fn secret_forms() -> Vec<(Vec<String>, String)> {
    let table = std::fs::read_to_string(common::fixtures().join("secret-forms.txt")).unwrap();
    table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (f, t) = l.split_once('\t').unwrap();
            (f.split('|').map(String::from).collect(), t.to_string())
        })
        .collect()
}

async fn try_get(addr: std::net::SocketAddr, path: &str) -> Option<String> {
    gravity_exporter::gravity_api::GravityClient::new()
        .get(
            &format!("http://{addr}").parse().unwrap(),
            path,
            Duration::from_secs(2),
            64 << 20,
        )
        .await
        .ok()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
}

fn assert_clean(what: &str, text: &str, forms: &[(Vec<String>, String)]) {
    for (fragments, form) in forms {
        for f in fragments {
            assert!(
                !text.contains(f.as_str()),
                "{what}: {f:?} of {form:?} leaked:\n{text}"
            );
        }
    }
}

/// At least 30 forms of secrets, each in an error line of gravity's log, one a password of
/// gravity's config and one the password of `--gravity.url`: none reaches the status page,
/// `/api/status`, `/metrics`, the exporter's stderr (debug level, with gravity discovered so
/// its URL is logged) or `check` (text and JSON). The page shows every line (by its marker),
/// so a form that were not masked would be seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_forms_masked_in_every_output() {
    use gravity_double::supervisor::Restart;
    let forms = secret_forms();
    assert!(forms.len() >= 30, "{} forms", forms.len());
    let d = common::start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let dir = tempfile::tempdir().unwrap();
    // gravity's config with a password known only by value (commas and blanks in it)
    let cfg = dir.path().join("gravity.toml");
    let text = std::fs::read_to_string(common::fixtures().join("configs/mysql2mysql-stream.toml"))
        .unwrap()
        .replace("s3cret-source-pw", "cfg Pw, with comma Zq35");
    std::fs::write(&cfg, text).unwrap();
    let log = dir.path().join("gravity.log");
    let url = format!("http://repl:urlflag-Zq36@127.0.0.1:{}", d.port);
    let port = common::free_port();
    let mut args: Vec<String> = d.exporter_flags();
    args.extend([
        "--web.listen-address".into(),
        format!("127.0.0.1:{port}"),
        "--log.level".into(),
        "debug".into(),
        "--gravity.url".into(),
        url.clone(),
        "--gravity.config".into(),
        cfg.to_str().unwrap().into(),
        "--gravity.log-file".into(),
        log.to_str().unwrap().into(),
        "--gravity.log-state-file".into(),
        "none".into(),
        "--probe.interval".into(),
        "300ms".into(),
        "--probe.timeout".into(),
        "300ms".into(),
    ]);
    let mut child = Command::new(BIN)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let line = |i: usize, text: &str| {
        serde_json::json!({
            "file": "x.go", "level": "error", "line": 1,
            "msg": format!("form-{i:02} {text}"),
            "pipeline": "mysql2mysqlDemo", "time": "2026-11-22T14:05:33+08:00"
        })
        .to_string()
            + "\n"
    };
    // The page keeps the last 20 error lines: two rounds.
    let mut outputs = Vec::new();
    for chunk in forms.chunks(19).enumerate() {
        let (k, chunk) = chunk;
        let mut text = String::new();
        for (j, (_, form)) in chunk.iter().enumerate() {
            text.push_str(&line(k * 19 + j + 1, form));
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        let last = format!("form-{:02}", k * 19 + chunk.len());
        let ok = common::wait_for(Duration::from_secs(20), || async {
            try_get(addr, "/").await.is_some_and(|p| p.contains(&last))
        })
        .await;
        assert!(ok.is_some(), "{last} never on the page");
        let page = common::get(addr, "/").await.1;
        for j in 0..chunk.len() {
            let marker = format!("form-{:02}", k * 19 + j + 1);
            assert!(page.contains(&marker), "{marker} not on the page:\n{page}");
        }
        outputs.push(("status page", page));
        outputs.push(("/api/status", common::get(addr, "/api/status").await.1));
        outputs.push(("/metrics", common::get(addr, "/metrics").await.1));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
    let stderr = reader.join().unwrap();
    assert!(
        stderr.contains(&format!("127.0.0.1:{}", d.port)),
        "gravity's URL never logged, the test would not see it leak:\n{stderr}"
    );
    outputs.push(("stderr", stderr));
    for format in ["text", "json"] {
        let out = Command::new(BIN)
            .arg("check")
            .args(["--format", format])
            .args(&args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("GRAVITY") || text.contains("checks"),
            "{text}"
        );
        outputs.push((
            if format == "text" {
                "check"
            } else {
                "check --format json"
            },
            text,
        ));
    }
    for (what, text) in &outputs {
        assert_clean(what, text, &forms);
    }
}
