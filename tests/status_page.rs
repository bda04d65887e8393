//! The status page in a real browser (Debian's headless Chromium) against the gravity double:
//! pipeline, stage, lag, every health check with PASS/FAIL, connections and the injected
//! error types are on the rendered page, a password planted in gravity's log never is, the
//! screenshot is a real PNG; then gravity is killed and the page turns CRITICAL with
//! process_running FAIL.
//!
//! Chromium is required (scripts/test.sh installs Debian's `chromium`) unless
//! GX_SKIP_CHROMIUM=1; each browser run is bounded by a timeout and its process group killed
//! on expiry. Screenshots are kept under `CARGO_TARGET_TMPDIR` for people to look at.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{get, owned, start_double, wait_for};
use gravity_double::supervisor::{Restart, Signal};

const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(60);
/// The double's config passwords, and two only the planted log line knows.
const SECRETS: [&str; 4] = [
    "s3cret-source-pw",
    "s3cret-target-pw",
    "planted-dsn-pw",
    "planted-kv-pw",
];
const CHECKS: [&str; 7] = [
    "process_running",
    "api_answering",
    "watermarks_advancing",
    "source_reachable",
    "target_reachable",
    "log_healthy",
    "resources_ok",
];

fn chromium() -> Option<PathBuf> {
    let p = PathBuf::from(CHROMIUM);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("GX_SKIP_CHROMIUM").as_deref() == Ok("1") {
        return None;
    }
    panic!("{CHROMIUM} not found: run scripts/test.sh (installs Debian's chromium) or set GX_SKIP_CHROMIUM=1");
}

/// Runs headless Chromium with `extra` on `url` in a fresh profile; kills its whole process
/// group when it takes longer than [`BROWSER_TIMEOUT`].
async fn browse(bin: &Path, extra: &[String], url: &str) -> std::process::Output {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(extra)
    .arg(url)
    .env("HOME", profile.path())
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0)
    .kill_on_drop(true);
    let child = cmd.spawn().expect("chromium starts");
    let pgid = child.id().expect("chromium has a pid");
    let res = tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output()).await;
    // Helpers (zygote, renderer) share the group: end them too, whatever happened.
    let _ = std::process::Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
    match res {
        Ok(out) => out.expect("chromium output"),
        Err(_) => panic!("chromium did not finish within {BROWSER_TIMEOUT:?}"),
    }
}

/// The rendered DOM of the page.
async fn dom(bin: &Path, url: &str) -> String {
    let out = browse(bin, &["--dump-dom".into()], url).await;
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        dom.contains("</html>"),
        "no DOM from chromium ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// Takes a screenshot and checks it is a real PNG of some substance.
async fn screenshot(bin: &Path, url: &str, name: &str, size: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let png = dir.join(name);
    let _ = std::fs::remove_file(&png);
    let out = browse(
        bin,
        &[
            format!("--screenshot={}", png.display()),
            format!("--window-size={size}"),
        ],
        url,
    )
    .await;
    let bytes = std::fs::read(&png).unwrap_or_else(|e| {
        panic!(
            "no screenshot at {} ({e}); chromium said: {}",
            png.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {}",
        png.display()
    );
    assert!(
        bytes.len() > 10 * 1024,
        "screenshot is only {} bytes",
        bytes.len()
    );
    png
}

/// The text a reader sees: no style, tags as spaces, entities decoded, whitespace collapsed.
fn visible_text(dom: &str) -> String {
    let no_style = regex::Regex::new(r"(?s)<style.*?</style>|<title>.*?</title>")
        .unwrap()
        .replace_all(dom, " ");
    let no_tags = regex::Regex::new(r"<[^>]*>")
        .unwrap()
        .replace_all(&no_style, " ");
    let decoded = no_tags
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The result word of a check in the rendered text (`PASS` or `FAIL`).
fn check_result(text: &str, name: &str) -> Option<String> {
    let re = regex::Regex::new(&format!(r"(PASS|FAIL)(?: critical| warning)? {name} ")).unwrap();
    re.captures(text).map(|c| c[1].to_string())
}

fn no_secrets(what: &str, s: &str) {
    for secret in SECRETS {
        assert!(!s.contains(secret), "{secret} reached the {what}");
    }
}

async fn api(addr: std::net::SocketAddr) -> serde_json::Value {
    let (code, body) = get(addr, "/api/status").await;
    assert_eq!(code, 200);
    serde_json::from_str(&body).expect("/api/status is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_headless_chromium() {
    let Some(bin) = chromium() else {
        eprintln!("GX_SKIP_CHROMIUM=1 and no chromium: skipped");
        return;
    };
    let d = start_double(Restart::No, Duration::from_millis(100), &[]);
    d.wait_api().await;
    let mut flags = d.exporter_flags();
    flags.extend(["--probe.timeout".to_string(), "1s".to_string()]);
    let r = common::start(common::settings(&owned(&flags))).await;
    let url = format!("http://{}/", r.addr);

    // gravity up, /status read, a few lag and throughput samples for the sparklines
    let ready = wait_for(Duration::from_secs(15), || async {
        let v = api(r.addr).await;
        v["gravity_up"] == true
            && v["status"]["stage"] == "Incremental"
            && v["lag"][0]["history"]
                .as_array()
                .is_some_and(|h| h.len() >= 4)
            && v["throughput"]["history_in"]
                .as_array()
                .is_some_and(|h| h.len() >= 3)
            && v["connections"]["endpoints"]
                .as_array()
                .is_some_and(|e| e.iter().all(|e| e["healthy"].is_boolean()) && e.len() >= 2)
    })
    .await;
    assert!(ready.is_some(), "never ready: {:#}", api(r.addr).await);

    // errors: through the double, and a line with passwords planted directly in the log
    d.control("/_double/errors?n=3&kind=deadlock").await;
    d.control("/_double/errors?n=1&kind=lock_wait").await;
    d.control("/_double/errors?n=1&kind=missing_table").await;
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let planted = serde_json::json!({
        "file": "mysql.go", "level": "error", "line": 88,
        "msg": "[output-mysql] <b>bold</b> open writer:s3cret-target-pw@tcp(127.0.0.1:3307)/db: Error 1045: Access denied (using password: YES); pw s3cret-source-pw; repl:planted-dsn-pw@tcp(h:3306)/ password=planted-kv-pw",
        "pipeline": "mysql2mysqlDemo", "time": now,
    });
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&d.log)
        .unwrap();
    f.write_all(format!("{planted}\n").as_bytes()).unwrap();
    drop(f);
    let shown = wait_for(Duration::from_secs(10), || async {
        let v = api(r.addr).await;
        let types: Vec<String> = v["errors"]["last"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["error_type"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        types.iter().filter(|t| *t == "deadlock").count() == 3
            && ["lock_wait", "missing_table", "auth"]
                .iter()
                .all(|t| types.iter().any(|x| x == t))
    })
    .await;
    assert!(
        shown.is_some(),
        "errors never showed: {:#}",
        api(r.addr).await
    );

    // the JSON and the served HTML carry no secret
    let (_, json) = get(r.addr, "/api/status").await;
    no_secrets("/api/status", &json);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let auth = v["errors"]["last"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["error_type"] == "auth")
        .unwrap();
    let msg = auth["message"].as_str().unwrap();
    assert!(
        msg.contains("writer:***@tcp(127.0.0.1:3307)") && msg.contains("(using password: YES)"),
        "{msg}"
    );
    let (code, html) = get(r.addr, "/").await;
    assert_eq!(code, 200);
    no_secrets("page", &html);
    assert!(
        html.contains("&lt;b&gt;bold&lt;/b&gt;"),
        "message not escaped"
    );

    // in the browser
    let dom_ok = dom(&bin, &url).await;
    no_secrets("rendered page", &dom_ok);
    let text = visible_text(&dom_ok);
    for want in [
        "gravity pipeline mysql2mysqlDemo",
        "Incremental",
        "Health checks",
        "Connections",
        "Last errors",
        "mysql-bin.",
        "writer:***@tcp",
        "<b>bold</b>",
    ] {
        assert!(text.contains(want), "{want:?} not on the page: {text}");
    }
    let verdict = ["OK", "WARNING", "CRITICAL"]
        .into_iter()
        .find(|w| dom_ok.contains(&format!("data-verdict=\"{w}\"")))
        .expect("a verdict");
    assert!(text.starts_with(verdict), "{text}");
    // the lag figure of the stream, as a number with its unit
    let lag = regex::Regex::new(r"mysqlstream (−?\d+(?:\.\d+)?) s ")
        .unwrap()
        .captures(&text)
        .unwrap_or_else(|| panic!("no lag figure: {text}"));
    let lag: f64 = lag[1].replace('−', "-").parse().unwrap();
    assert!((-1.0..30.0).contains(&lag), "lag {lag}");
    assert!(dom_ok.matches("<svg").count() >= 3, "sparklines missing");
    for name in CHECKS {
        assert!(
            check_result(&text, name).is_some(),
            "no PASS/FAIL for {name}: {text}"
        );
    }
    assert_eq!(
        check_result(&text, "process_running").as_deref(),
        Some("PASS")
    );
    assert_eq!(
        check_result(&text, "api_answering").as_deref(),
        Some("PASS")
    );
    // the warnings just injected fail the log check (a warning, not critical)
    assert!(
        text.contains("FAIL warning log_healthy"),
        "log_healthy should fail: {text}"
    );
    for want in [
        "source 127.0.0.1:3306",
        "target 127.0.0.1:3307",
        "deadlock",
        "lock_wait",
        "missing_table",
        "auth",
    ] {
        assert!(text.contains(want), "{want:?} not on the page: {text}");
    }
    screenshot(&bin, &url, "status-page.png", "1280,1600").await;

    // gravity dies: CRITICAL, process_running FAIL, watermarks marked as old
    d.sup.kill(Signal::Kill).unwrap();
    let critical = wait_for(Duration::from_secs(5), || async {
        let (_, h) = get(r.addr, "/").await;
        h.contains("data-verdict=\"CRITICAL\"")
            && h.contains("data-check=\"process_running\" data-ok=\"false\"")
    })
    .await;
    assert!(critical.is_some(), "{}", get(r.addr, "/").await.1);
    let dom_dead = dom(&bin, &url).await;
    let text = visible_text(&dom_dead);
    assert!(text.starts_with("CRITICAL"), "{text}");
    assert_eq!(
        check_result(&text, "process_running").as_deref(),
        Some("FAIL")
    );
    assert!(text.contains("FAIL critical process_running"), "{text}");
    assert!(
        text.contains("health checks fail: process_running"),
        "{text}"
    );
    assert!(text.contains("0 down"), "{text}");
    assert!(text.contains("gravity not answering"), "{text}");
    no_secrets("rendered page", &dom_dead);
    screenshot(&bin, &url, "status-page-critical.png", "1280,1600").await;
    screenshot(&bin, &url, "status-page-phone.png", "390,1800").await;
    r.stop().await;
}
