//! Integration tests of the gravity double (this crate), run against its real binary
//! symlinked as `gravity`, over HTTP on 127.0.0.1, the way the exporter will see it.

use gravity_double::{install_gravity_link, Restart, Signal, Supervisor, SupervisorConfig};
use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

const M2M: &str = include_str!("../../fixtures/configs/mysql2mysql-stream.toml");
const MONGO: &str = include_str!("../../fixtures/configs/mongo2kafka.toml");
const FULL: &str = include_str!("../../fixtures/configs/mysql-full-dump.toml");
const METRICS: &str = include_str!("../../fixtures/metrics.prom");
const STATUS_INC: &str = include_str!("../../fixtures/status-incremental.json");
const STATUS_FULL: &str = include_str!("../../fixtures/status-full.json");
const STATUS_MONGO: &str = include_str!("../../fixtures/status-mongo.json");

type TestResult = Result<(), Box<dyn std::error::Error>>;

// ---------------------------------------------------------------- tiny HTTP/1.1 client

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    body_len: u64,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection; bodies over `keep` bytes are counted, not kept.
fn request(
    addr: &str,
    method: &str,
    path: &str,
    timeout: Duration,
    keep: u64,
) -> std::io::Result<Resp> {
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut s = TcpStream::connect_timeout(&sa, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut r = BufReader::with_capacity(1 << 16, s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("status line {line:?}"),
            )
        })?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut body = Vec::new();
    let mut body_len = 0u64;
    let mut take = |chunk: &[u8], body: &mut Vec<u8>| {
        body_len += chunk.len() as u64;
        if (body.len() as u64) < keep {
            body.extend_from_slice(chunk);
        }
    };
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut buf = vec![0u8; 1 << 16];
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            if size == 0 {
                break;
            }
            let mut left = size;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = r.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                take(&buf[..n], &mut body);
                left -= n as u64;
            }
            line.clear();
            r.read_line(&mut line)?;
        }
    } else {
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            take(&buf[..n], &mut body);
        }
    }
    Ok(Resp {
        status,
        headers,
        body,
        body_len,
    })
}

fn get(addr: &str, path: &str) -> std::io::Result<Resp> {
    request(addr, "GET", path, Duration::from_secs(5), 1 << 24)
}

fn post(addr: &str, path: &str) -> std::io::Result<Resp> {
    request(addr, "POST", path, Duration::from_secs(5), 1 << 20)
}

// ---------------------------------------------------------------- running a double

fn gravity_link(dir: &Path) -> PathBuf {
    let exe = Path::new(env!("CARGO_BIN_EXE_gravity-double"));
    install_gravity_link(exe, dir).unwrap_or_else(|e| panic!("symlink: {e}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

struct Double {
    child: Child,
    dir: tempfile::TempDir,
    addr: String,
    link: PathBuf,
    args: Vec<String>,
}

impl Double {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gravity.log")).unwrap_or_default()
    }
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
    fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
    /// Waits until /status answers 200 (a position is stored).
    fn wait_position(&self) -> Resp {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(r) = get(&self.addr, "/status") {
                if r.status == 200 || Instant::now() > deadline {
                    return r;
                }
            }
            assert!(Instant::now() < deadline, "no position within 5 s");
            std::thread::sleep(Duration::from_millis(30));
        }
    }
    fn metrics(&self) -> String {
        get(&self.addr, "/metrics")
            .map(|r| r.text())
            .unwrap_or_default()
    }
    fn status(&self) -> serde_json::Value {
        get(&self.addr, "/status")
            .ok()
            .and_then(|r| serde_json::from_slice(&r.body).ok())
            .unwrap_or_default()
    }
    fn fault(&self, mode: &str) {
        let r = post(&self.addr, &format!("/_double/fault?mode={mode}"));
        assert_eq!(r.map(|r| r.status).ok(), Some(200), "fault {mode}");
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a double for `config` (written as config.toml) with `env`, waits until its HTTP
/// server answers. Retries on another port if the port was taken meanwhile.
fn start(config: &str, env: &[(&str, &str)], extra: &[&str]) -> Double {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let link = gravity_link(dir.path());
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, config).unwrap_or_else(|e| panic!("write config: {e}"));
        let addr = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            format!("--config={}", cfg.display()),
            format!("--http-addr={addr}"),
            format!("--log-file={}", dir.path().join("gravity.log").display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let stderr = std::fs::File::create(dir.path().join("stderr"))
            .unwrap_or_else(|e| panic!("stderr file: {e}"));
        let child = Command::new(&link)
            .args(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn: {e}"));
        let mut d = Double {
            child,
            dir,
            addr,
            link,
            args,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if get(&d.addr, "/_double/state").is_ok_and(|r| r.status == 200) {
                return d;
            }
            if d.wait_exit(Duration::from_millis(20)).is_some() {
                break;
            }
        }
        assert!(
            d.log().contains("address already in use"),
            "double did not come up: {}{}",
            d.log(),
            d.stderr()
        );
    }
    panic!("no free port after 5 attempts");
}

// ---------------------------------------------------------------- small parsers

/// family → (HELP, TYPE, label names).
fn families(text: &str) -> BTreeMap<String, (String, String, BTreeSet<String>)> {
    let mut out: BTreeMap<String, (String, String, BTreeSet<String>)> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            current = name.to_string();
            out.entry(current.clone()).or_default().0 = help.to_string();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, t) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_string()).or_default().1 = t.to_string();
        } else if let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) {
            for pair in line[open + 1..close].split("\",") {
                if let Some((k, _)) = pair.split_once('=') {
                    out.entry(current.clone())
                        .or_default()
                        .2
                        .insert(k.to_string());
                }
            }
        }
    }
    out
}

/// Sum of the samples whose line starts with `prefix` and contains every `needles`.
fn sum(text: &str, prefix: &str, needles: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix) && needles.iter().all(|n| l.contains(n)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn json_keys(v: &serde_json::Value) -> Vec<String> {
    v.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Top-level key order of a JSON object text.
fn key_order(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut depth, mut in_str, mut esc, mut expect) = (0, false, false, false);
    let mut cur = String::new();
    for c in raw.chars() {
        if in_str {
            match (esc, c) {
                (true, _) => {
                    esc = false;
                    cur.push(c)
                }
                (false, '\\') => esc = true,
                (false, '"') => {
                    in_str = false;
                    if depth == 1 && expect {
                        out.push(cur.clone());
                        expect = false;
                    }
                }
                _ => cur.push(c),
            }
            continue;
        }
        match c {
            '"' => {
                in_str = true;
                cur.clear()
            }
            '{' | '[' => {
                depth += 1;
                if depth == 1 {
                    expect = true
                }
            }
            '}' | ']' => depth -= 1,
            ',' if depth == 1 => expect = true,
            _ => {}
        }
    }
    out
}

/// Same keys in the same order at the top, and in `position`; watermark entries keyed alike.
fn assert_status_shape(fixture: &str, got: &str) {
    assert_eq!(key_order(got), key_order(fixture), "top-level keys: {got}");
    let f: serde_json::Value = serde_json::from_str(fixture).unwrap_or_default();
    let g: serde_json::Value = serde_json::from_str(got).unwrap_or_else(|e| panic!("{e}: {got}"));
    let fp = f["position"].as_str().unwrap_or_default();
    let gp = g["position"]
        .as_str()
        .unwrap_or_else(|| panic!("position is not a string: {got}"));
    assert_eq!(key_order(gp), key_order(fp), "position keys: {gp}");
    let fpv: serde_json::Value = serde_json::from_str(fp).unwrap_or_default();
    let gpv: serde_json::Value = serde_json::from_str(gp).unwrap_or_else(|e| panic!("{e}: {gp}"));
    for (k, fv) in fpv.as_object().into_iter().flatten() {
        let gv = &gpv[k];
        match fv {
            serde_json::Value::Object(m) if k == "table-stats" => {
                let first = m.values().next().map(json_keys).unwrap_or_default();
                let gm = gv
                    .as_object()
                    .unwrap_or_else(|| panic!("table-stats: {gp}"));
                assert!(!gm.is_empty());
                for e in gm.values() {
                    assert_eq!(json_keys(e), first);
                    assert!(e["scanned-count"].is_u64() && e["estimated-count"].is_u64());
                    assert!(e["done"].is_boolean());
                }
            }
            serde_json::Value::Object(_) => assert_eq!(json_keys(gv), json_keys(fv), "{k}"),
            serde_json::Value::Number(_) => assert!(gv.is_u64(), "{k} in {gp}"),
            serde_json::Value::Null => assert!(gv.is_null(), "{k}"),
            _ => assert_eq!(gv.is_string(), fv.is_string(), "{k}"),
        }
    }
    let wm = g["watermarks"]
        .as_object()
        .unwrap_or_else(|| panic!("watermarks: {got}"));
    assert!(!wm.is_empty());
    for (k, w) in wm {
        assert_eq!(json_keys(w), ["EventTime", "ProcessTime"], "{k}");
        for t in ["ProcessTime", "EventTime"] {
            let s = w[t].as_str().unwrap_or_default();
            assert!(parse_time(s).is_some(), "{k}.{t} = {s}");
            assert!(s.ends_with("+08:00"), "{s}");
        }
    }
    assert_eq!(g["version"], f["version"]);
    assert_eq!(g["stage"], f["stage"]);
}

fn parse_time(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = t.unix_timestamp_nanos();
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(u64::try_from(nanos).ok()?))
}

fn age(s: &serde_json::Value) -> Duration {
    s.as_str()
        .and_then(parse_time)
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default()
}

fn with_threshold(config: &str, secs: u32) -> String {
    // The fixture ends inside [scheduler.config].
    format!("{config}\nhealthy-threshold = {secs}\n")
}

// ---------------------------------------------------------------- tests

#[test]
fn metrics_have_the_fixtures_families_help_types_and_labels() -> TestResult {
    let d = start(M2M, &[], &[]);
    d.wait_position();
    std::thread::sleep(Duration::from_millis(300));
    let r = get(&d.addr, "/metrics")?;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let got = families(&r.text());
    let want = families(METRICS);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (name, w) in &want {
        assert_eq!(got.get(name), Some(w), "family {name}");
    }
    // process_* are this process's real figures.
    let text = r.text();
    let start_time = sum(&text, "process_start_time_seconds ", &[]);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs_f64();
    assert!((now - start_time).abs() < 30.0, "{start_time} vs {now}");
    assert!(sum(&text, "process_open_fds ", &[]) >= 3.0);
    assert!(sum(&text, "process_resident_memory_bytes ", &[]) > 1e5);
    // every number is in Go's format: no Rust-style exponents
    assert!(!text
        .lines()
        .any(|l| !l.starts_with('#') && l.contains("e6")));
    Ok(())
}

#[test]
fn status_is_500_until_a_position_exists_then_shaped_like_the_fixtures() -> TestResult {
    let never = start(M2M, &[("GRAVITY_DOUBLE_NO_POSITION", "1")], &[]);
    let stream = start(M2M, &[], &[]);
    let mongo = start(MONGO, &[], &[]);
    let batch = start(FULL, &[("GRAVITY_DOUBLE_BATCH_ROWS", "100000")], &[]);
    for _ in 0..3 {
        let r = get(&never.addr, "/status")?;
        assert_eq!(r.status, 500);
        assert!(r.body.is_empty());
    }
    assert!(never.wait_log(
        "[statusHandler] failed to get positionRepoModel, exist: false, err: \\u003cnil\\u003e",
        Duration::from_secs(2)
    ));
    for (d, fixture) in [
        (&stream, STATUS_INC),
        (&mongo, STATUS_MONGO),
        (&batch, STATUS_FULL),
    ] {
        let r = d.wait_position();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_status_shape(fixture, &r.text());
    }
    // binlog position advances; mongo position is seconds << 32 | ordinal
    let pos = |d: &Double| -> serde_json::Value {
        serde_json::from_str(d.status()["position"].as_str().unwrap_or("null")).unwrap_or_default()
    };
    let p1 = pos(&stream)["current_position"]["binlog-pos"]
        .as_u64()
        .unwrap_or(0);
    std::thread::sleep(Duration::from_millis(300));
    let p2 = pos(&stream)["current_position"]["binlog-pos"]
        .as_u64()
        .unwrap_or(0);
    assert!(p2 > p1, "{p1} -> {p2}");
    let ts = pos(&mongo)["current_position"].as_u64().unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .as_secs();
    assert!((ts >> 32) + 10 > now && (ts >> 32) <= now, "{ts}");
    Ok(())
}

#[test]
fn counters_grow_at_the_configured_rate() -> TestResult {
    let rate = 5000.0;
    let d = start(M2M, &[("GRAVITY_DOUBLE_RATE", "5000")], &[]);
    d.wait_position();
    let read = || -> (f64, f64) {
        let t0 = Instant::now();
        let text = d.metrics();
        let mid = t0.elapsed().as_secs_f64() / 2.0;
        (sum(&text, "gravity_input_counter{", &["type=\"dml\""]), mid)
    };
    let t0 = Instant::now();
    let (a, ma) = read();
    std::thread::sleep(Duration::from_secs(2));
    let t1 = t0.elapsed().as_secs_f64();
    let (b, mb) = read();
    let dt = t1 + mb - ma;
    let want = rate * dt;
    assert!(
        ((b - a) - want).abs() <= want * 0.01,
        "delta {} want {want} over {dt}s",
        b - a
    );
    // and /_double/state tells the same truth, table by table
    let state: serde_json::Value = serde_json::from_slice(&get(&d.addr, "/_double/state")?.body)?;
    let total: f64 = state["rates"]
        .as_array()
        .map(|a| a.iter().filter_map(|r| r["rows_per_second"].as_f64()).sum())
        .unwrap_or(0.0);
    assert!((total - rate).abs() < 1e-6, "{total}");
    Ok(())
}

#[test]
fn crash_logs_a_fatal_line_and_exits_1() -> TestResult {
    let mut d = start(M2M, &[], &[]);
    d.fault("crash");
    let st = d.wait_exit(Duration::from_secs(3)).ok_or("did not exit")?;
    assert_eq!(st.code(), Some(1));
    let last = d.log().lines().last().unwrap_or_default().to_string();
    assert!(last.contains("\"level\":\"fatal\""), "{last}");
    assert!(
        last.contains("[binlogTailer] failed to flush position cache"),
        "{last}"
    );
    Ok(())
}

#[test]
fn hang_never_answers_but_the_control_endpoint_does() -> TestResult {
    let d = start(M2M, &[], &[]);
    d.fault("hang");
    let t0 = Instant::now();
    let r = request(&d.addr, "GET", "/metrics", Duration::from_millis(800), 1024);
    assert!(r.is_err(), "answered while hung");
    assert!(t0.elapsed() >= Duration::from_millis(700));
    assert!(request(&d.addr, "GET", "/healthz", Duration::from_millis(300), 0).is_err());
    let state: serde_json::Value = serde_json::from_slice(&get(&d.addr, "/_double/state")?.body)?;
    assert_eq!(state["mode"], "hang");
    d.fault("none");
    assert_eq!(get(&d.addr, "/healthz")?.status, 200);
    Ok(())
}

#[test]
fn stall_freezes_watermarks_counters_and_fails_healthz_past_the_threshold() -> TestResult {
    let d = start(&with_threshold(M2M, 1), &[], &[]);
    d.wait_position();
    assert_eq!(get(&d.addr, "/healthz")?.status, 200);
    d.fault("stall");
    let s1 = d.status();
    let m1 = d.metrics();
    std::thread::sleep(Duration::from_millis(1300));
    let s2 = d.status();
    let m2 = d.metrics();
    let wm = |s: &serde_json::Value, k: &str| s["watermarks"]["mysqlstream"][k].clone();
    assert_eq!(wm(&s1, "ProcessTime"), wm(&s2, "ProcessTime"));
    assert_eq!(wm(&s1, "EventTime"), wm(&s2, "EventTime"));
    assert_eq!(s1["position"], s2["position"]);
    assert!(age(&wm(&s2, "ProcessTime")) >= Duration::from_secs(1));
    for m in ["gravity_input_counter{", "gravity_output_counter{"] {
        assert_eq!(sum(&m1, m, &[]), sum(&m2, m, &[]), "{m}");
    }
    let h = get(&d.addr, "/healthz")?;
    assert_eq!(h.status, 500);
    assert!(h.body.is_empty());
    assert!(d.wait_log(
        "[batchScheduler.Healthy] sliding window mysqlstream not healthy, watermark: 1.",
        Duration::from_secs(2)
    ));
    assert!(d.wait_log(
        "[sliding_window] item not ack after ",
        Duration::from_secs(2)
    ));
    d.fault("none");
    assert_eq!(get(&d.addr, "/healthz")?.status, 200);
    Ok(())
}

#[test]
fn http500_garbage_and_huge_answers() -> TestResult {
    let d = start(M2M, &[], &[]);
    d.wait_position();
    d.fault("http500");
    for p in ["/metrics", "/status", "/healthz"] {
        let r = get(&d.addr, p)?;
        assert_eq!(r.status, 500, "{p}");
        assert!(!r.body.is_empty(), "{p}");
    }
    d.fault("garbage");
    let r = get(&d.addr, "/metrics")?;
    assert_eq!(r.status, 200);
    assert!(r.body.len() >= 4096 && !r.body.starts_with(b"# HELP"));
    let r = get(&d.addr, "/status")?;
    assert_eq!(r.status, 200);
    assert!(serde_json::from_slice::<serde_json::Value>(&r.body).is_err());
    d.fault("huge");
    for p in ["/metrics", "/status"] {
        let r = request(&d.addr, "GET", p, Duration::from_secs(20), 4096)?;
        assert_eq!(r.status, 200);
        assert_eq!(r.body_len, 100 * 1024 * 1024, "{p}");
    }
    assert_eq!(
        get(&d.addr, "/healthz")?.status,
        200,
        "huge only hits /metrics and /status"
    );
    d.fault("none");
    assert!(d.metrics().starts_with("# HELP go_gc_duration_seconds"));
    Ok(())
}

#[test]
fn idle_keeps_watermarks_fresh_and_heartbeat_broken_freezes_event_time() -> TestResult {
    let d = start(M2M, &[], &[]);
    d.wait_position();
    let ctl = |m: &str| sum(m, "gravity_input_counter{", &["type=\"ctl\""]);
    let dml = |m: &str| sum(m, "gravity_input_counter{", &["type=\"dml\""]);
    d.fault("idle");
    let (m1, s1) = (d.metrics(), d.status());
    std::thread::sleep(Duration::from_millis(1300));
    let (m2, s2) = (d.metrics(), d.status());
    assert_eq!(dml(&m1), dml(&m2));
    assert!(ctl(&m2) > ctl(&m1), "heartbeat continues");
    let wm = |s: &serde_json::Value, k: &str| s["watermarks"]["mysqlstream"][k].clone();
    assert_ne!(wm(&s1, "EventTime"), wm(&s2, "EventTime"));
    assert!(age(&wm(&s2, "EventTime")) < Duration::from_secs(3));
    assert!(age(&wm(&s2, "ProcessTime")) < Duration::from_secs(1));
    assert_eq!(get(&d.addr, "/healthz")?.status, 200);

    d.fault("heartbeat_broken");
    let (m3, s3) = (d.metrics(), d.status());
    std::thread::sleep(Duration::from_millis(1300));
    let (m4, s4) = (d.metrics(), d.status());
    assert_eq!(ctl(&m3), ctl(&m4), "heartbeat stopped");
    assert_eq!(dml(&m3), dml(&m4));
    assert_eq!(wm(&s3, "EventTime"), wm(&s4, "EventTime"));
    assert_ne!(wm(&s3, "ProcessTime"), wm(&s4, "ProcessTime"));
    assert!(age(&wm(&s4, "EventTime")) >= Duration::from_secs(1));
    assert!(age(&wm(&s4, "ProcessTime")) < Duration::from_secs(1));
    assert!(d.wait_log(
        "[binlog_checker] failed probe: dial tcp 127.0.0.1:3306: connect: connection refused",
        Duration::from_secs(3)
    ));
    Ok(())
}

#[test]
fn retries_and_injected_errors_match_the_retry_counter() -> TestResult {
    let d = start(M2M, &[("GRAVITY_DOUBLE_RETRY_EVERY", "0.25")], &[]);
    d.wait_position();
    std::thread::sleep(Duration::from_millis(800));
    d.fault("idle"); // scheduled retries happen only while rows flow
    std::thread::sleep(Duration::from_millis(150));
    let retry_lines = |log: &str| log.matches("error execute sync output, retry. ").count() as f64;
    let counter = |m: &str| sum(m, "gravity_scheduler_retry_counter{", &[]);
    let c1 = counter(&d.metrics());
    assert!(c1 >= 2.0, "{c1}");
    assert_eq!(retry_lines(&d.log()), c1);
    let r = post(&d.addr, "/_double/errors?n=3&kind=deadlock")?;
    assert_eq!(r.status, 200);
    let r = post(&d.addr, "/_double/errors?n=2&kind=kafka_brokers")?;
    assert_eq!(r.status, 200);
    assert_eq!(post(&d.addr, "/_double/errors?kind=nope")?.status, 400);
    let c2 = counter(&d.metrics());
    assert_eq!(c2, c1 + 3.0);
    let log = d.log();
    assert_eq!(retry_lines(&log), c2);
    assert!(log.matches("Error 1213: Deadlock found").count() >= 3);
    assert_eq!(
        log.matches("client has run out of available brokers")
            .count(),
        2
    );
    Ok(())
}

#[test]
fn supervisor_restarts_after_a_crash_and_gives_up_after_the_burst() -> TestResult {
    let dir = tempfile::tempdir()?;
    let link = gravity_link(dir.path());
    let cfg = dir.path().join("config.toml");
    std::fs::write(&cfg, M2M)?;

    // A crash loop: every start dies ~0.15 s in; 3 starts allowed within 30 s.
    let mut c = SupervisorConfig::new(
        &link,
        dir.path().join("loop"),
        &cfg,
        format!("127.0.0.1:{}", free_port()),
    );
    c.log_file = Some(dir.path().join("loop/gravity.log"));
    c.env = vec![
        ("GRAVITY_DOUBLE_FAULT".into(), "crash".into()),
        ("GRAVITY_DOUBLE_POSITION_DELAY_MS".into(), "0".into()),
    ];
    c.restart_sec = Duration::from_millis(100);
    c.start_limit_burst = 3;
    c.start_limit_interval = Duration::from_secs(30);
    let sup = Supervisor::start(c)?;
    let st = sup
        .wait_until(Duration::from_secs(10), |s| s.gave_up)
        .ok_or("never gave up")?;
    assert_eq!(st.starts, 3);
    assert_eq!(st.restarts, 2);
    assert_eq!(st.pid, None);
    assert_eq!(st.exits.len(), 3);
    assert!(st.exits.iter().all(|e| e.code == Some(1)), "{:?}", st.exits);
    for e in &st.exits {
        assert!(
            !Path::new(&format!("/proc/{}", e.pid)).exists(),
            "pid {} not reaped",
            e.pid
        );
    }
    let log = std::fs::read_to_string(dir.path().join("loop/gravity.log"))?;
    assert_eq!(log.matches("\"level\":\"fatal\"").count(), 3);
    drop(sup);

    // A healthy one: crash it through the control endpoint, it comes back with a new pid.
    let addr = format!("127.0.0.1:{}", free_port());
    let mut c = SupervisorConfig::new(&link, dir.path().join("ok"), &cfg, addr.clone());
    c.restart = Restart::Always;
    c.restart_sec = Duration::from_millis(100);
    let mut sup = Supervisor::start(c)?;
    let first = sup.pid().ok_or("no pid")?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&addr, "/_double/state").is_err() {
        assert!(Instant::now() < deadline, "double never answered");
        std::thread::sleep(Duration::from_millis(30));
    }
    assert_eq!(post(&addr, "/_double/fault?mode=crash")?.status, 200);
    let st = sup
        .wait_until(Duration::from_secs(5), |s| {
            s.restarts == 1 && s.pid.is_some()
        })
        .ok_or("not restarted")?;
    assert_ne!(st.pid, Some(first));
    assert_eq!(st.exits.last().and_then(|e| e.code), Some(1));
    // wait for the new process to serve (and so to handle signals) before signalling it
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state: serde_json::Value = get(&addr, "/_double/state")
            .ok()
            .and_then(|r| serde_json::from_slice(&r.body).ok())
            .unwrap_or_default();
        if state["pid"].as_u64().map(|p| p as u32) == st.pid {
            break;
        }
        assert!(Instant::now() < deadline, "restarted double never answered");
        std::thread::sleep(Duration::from_millis(30));
    }
    sup.kill(Signal::Stop)?;
    sup.kill(Signal::Cont)?;
    let st = sup.stop();
    assert_eq!(
        st.exits.last().and_then(|e| e.code),
        Some(0),
        "SIGTERM exits 0"
    );
    assert_eq!(st.pid, None);
    Ok(())
}

#[test]
fn reset_is_recorded_and_exits_1() -> TestResult {
    let mut d = start(M2M, &[], &[]);
    d.wait_position();
    let r = request(&d.addr, "GET", "/reset", Duration::from_secs(3), 1024);
    assert!(r.is_err(), "gravity exits without answering");
    let st = d.wait_exit(Duration::from_secs(3)).ok_or("did not exit")?;
    assert_eq!(st.code(), Some(1));
    assert!(d.dir.path().join("reset-called").exists());
    assert!(d.stderr().contains("RESET CALLED"));
    Ok(())
}

#[test]
fn looks_like_gravity_to_proc_and_exits_0_on_sigterm() -> TestResult {
    let mut d = start(M2M, &[], &[]);
    let pid = d.child.id();
    assert_eq!(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))?,
        "gravity\n"
    );
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let mut want = vec![d.link.display().to_string()];
    want.extend(d.args.iter().cloned());
    assert_eq!(argv, want);
    assert!(d.log().contains("\"msg\":\"Welcome to gravity.\""));
    let st = Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .status()?;
    assert!(st.success());
    let st = d.wait_exit(Duration::from_secs(3)).ok_or("did not exit")?;
    assert_eq!(st.code(), Some(0));
    assert!(d
        .log()
        .contains("\"msg\":\"[gravity] stop with signal terminated\""));
    Ok(())
}

#[test]
fn command_line_errors_are_gos_and_log_formats_follow_the_flag() -> TestResult {
    let dir = tempfile::tempdir()?;
    let link = gravity_link(dir.path());
    let out = Command::new(&link).arg("-bogus").output()?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("flag provided but not defined: -bogus\nUsage of gravity:\n"),
        "{err}"
    );
    assert!(err
        .contains("\"msg\":\"parse cmd flags errors: flag provided but not defined: -bogus\\n\""));
    let out = Command::new(&link)
        .arg("--config=/nonexistent/x.toml")
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed to load config from file"));
    assert_eq!(
        Command::new(&link).arg("-V").output()?.status.code(),
        Some(0)
    );

    let text = start(M2M, &[], &["--log-format=text"]);
    let console = start(M2M, &[], &["-log-format", "console"]);
    assert!(text.wait_log(
        ": [info] Welcome to gravity. pipeline=mysql2mysqlDemo\n",
        Duration::from_secs(2)
    ));
    assert!(text
        .log()
        .lines()
        .any(|l| l.contains(" printer.go:41: [info] Welcome")));
    assert!(console.wait_log(
        " level=info msg=\"Welcome to gravity.\" file=printer.go line=41 pipeline=mysql2mysqlDemo\n",
        Duration::from_secs(2)
    ));
    Ok(())
}

#[test]
fn batch_pipeline_finishes_and_exits_0() -> TestResult {
    let mut d = start(
        FULL,
        &[
            ("GRAVITY_DOUBLE_RATE", "2000"),
            ("GRAVITY_DOUBLE_BATCH_ROWS", "600"),
        ],
        &[],
    );
    let s = d.wait_position();
    assert_eq!(s.status, 200);
    let st = d
        .wait_exit(Duration::from_secs(5))
        .ok_or("batch never finished")?;
    assert_eq!(st.code(), Some(0));
    assert!(d.log().contains("[batchScheduler] closing scheduler"));
    Ok(())
}

/// The value of the first sample line starting with `prefix`.
fn value_of(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn queue_gauges_are_shaped_like_gravitys() -> TestResult {
    let d = start(M2M, &[], &[]);
    d.wait_position();
    std::thread::sleep(Duration::from_millis(1200));
    let m = d.metrics();
    // worker subtypes are the worker indexes "0".."N-1" (nr-worker 20 in the config)
    let q = "gravity_queue_length{pipeline=\"mysql2mysqlDemo\",";
    assert!(value_of(&m, &format!("{q}subtype=\"0\",type=\"worker\"}} ")).is_some());
    assert!(value_of(&m, &format!("{q}subtype=\"19\",type=\"worker\"}} ")).is_some());
    assert!(!m.contains("subtype=\"worker-"));
    // the sliding window's queues per input stream
    for t in ["waiting-chan", "ready-chan", "ready-heap"] {
        let line = format!("{q}subtype=\"mysqlstream\",type=\"sliding-window-{t}\"}} ");
        assert!(value_of(&m, &line).is_some(), "{line}");
    }
    // WaitingQueueLen() / Size() as an integer division: 0 until the window is full
    let ratio = "gravity_scheduler_sliding_window_ratio{input_stream_key=\"mysqlstream\",pipeline=\"mysql2mysqlDemo\"} ";
    assert_eq!(value_of(&m, ratio), Some(0.0));
    assert_eq!(
        value_of(
            &m,
            "gravity_scheduler_nr_worker{pipeline=\"mysql2mysqlDemo\"} "
        ),
        Some(20.0)
    );
    assert!(value_of(
        &m,
        "gravity_scheduler_batch_size{idx=\"19\",pipeline=\"mysql2mysqlDemo\"} "
    )
    .is_some());
    Ok(())
}

#[test]
fn diagnosis_controls_shape_the_figures_and_the_log() -> TestResult {
    let d = start(M2M, &[], &[]);
    d.wait_position();
    assert_eq!(post(&d.addr, "/_double/diagnosis?case=nope")?.status, 400);
    assert_eq!(get(&d.addr, "/_double/diagnosis?case=retries")?.status, 405);
    let q = "gravity_queue_length{pipeline=\"mysql2mysqlDemo\",";
    let waiting = format!("{q}subtype=\"mysqlstream\",type=\"sliding-window-waiting-chan\"}} ");
    let ratio = "gravity_scheduler_sliding_window_ratio{input_stream_key=\"mysqlstream\",pipeline=\"mysql2mysqlDemo\"} ";
    let state = |d: &Double| -> serde_json::Value {
        get(&d.addr, "/_double/state")
            .ok()
            .and_then(|r| serde_json::from_slice(&r.body).ok())
            .unwrap_or_default()
    };

    // slow writes: worker queues near queue-size (1024), full batches (batch-size 10)
    assert_eq!(
        post(&d.addr, "/_double/diagnosis?case=slow_writes")?.status,
        200
    );
    std::thread::sleep(Duration::from_millis(1100));
    let m = d.metrics();
    let w0 = value_of(&m, &format!("{q}subtype=\"0\",type=\"worker\"}} ")).unwrap_or(0.0);
    assert!(w0 >= 1000.0, "{w0}");
    assert_eq!(
        value_of(
            &m,
            "gravity_scheduler_batch_size{idx=\"3\",pipeline=\"mysql2mysqlDemo\"} "
        ),
        Some(10.0)
    );
    assert_eq!(
        value_of(&m, ratio),
        Some(0.0),
        "three quarters full reads 0"
    );

    // retries with a deadlock cause: one a second, counted and logged
    let retry_lines = |log: &str| log.matches("error execute sync output, retry. ").count() as f64;
    assert_eq!(
        post(&d.addr, "/_double/diagnosis?case=retries")?.status,
        200
    );
    assert!(d.wait_log("Error 1213: Deadlock found", Duration::from_secs(3)));
    std::thread::sleep(Duration::from_millis(2100));
    let m = d.metrics();
    let counter = sum(&m, "gravity_scheduler_retry_counter{", &[]);
    assert!(counter >= 2.0, "{counter}");
    assert_eq!(retry_lines(&d.log()), counter);

    // hot rows: `latch for long` on the first table, its table-queue long, workers idle
    assert_eq!(
        post(&d.addr, "/_double/diagnosis?case=hot_rows")?.status,
        200
    );
    assert!(d.wait_log("latch for long: test_db.", Duration::from_secs(3)));
    let m = d.metrics();
    let latch = sum(&m, "gravity_queue_length{", &["type=\"table-latch\""]);
    assert!(latch >= 1024.0, "{latch}");

    // stuck window: the pipeline stalls, the window is full (ratio 1), and gravity's warning
    // shows at once (the item has waited past 30 s), every second
    assert_eq!(
        post(&d.addr, "/_double/diagnosis?case=stuck_window")?.status,
        200
    );
    assert!(d.wait_log(
        "[sliding_window] item not ack after 4",
        Duration::from_secs(3)
    ));
    std::thread::sleep(Duration::from_millis(1100));
    let m = d.metrics();
    assert_eq!(value_of(&m, &waiting), Some(1024.0));
    assert_eq!(value_of(&m, ratio), Some(1.0));
    let s = state(&d);
    assert_eq!(s["mode"], "stall");
    assert_eq!(s["diagnosis_case"], "stuck_window");
    assert!(s["stuck_item"]["seq"].as_u64().is_some());
    let lines = d.log().matches("item not ack after").count();
    assert!(lines >= 2, "{lines}");

    // none: the pipeline flows again
    assert_eq!(post(&d.addr, "/_double/diagnosis?case=none")?.status, 200);
    let s = state(&d);
    assert_eq!(s["mode"], "none");
    assert_eq!(s["diagnosis_case"], "none");
    Ok(())
}

#[test]
fn slow_dump_runs_at_the_scanners_throttle() -> TestResult {
    let d = start(FULL, &[("GRAVITY_DOUBLE_BATCH_ROWS", "100000000")], &[]);
    d.wait_position();
    assert_eq!(
        post(&d.addr, "/_double/diagnosis?case=slow_dump")?.status,
        200
    );
    let s: serde_json::Value = serde_json::from_slice(&get(&d.addr, "/_double/state")?.body)?;
    // three tables, defaults nr-scanner 10, table-scan-batch 10000, batch-per-second-limit 1
    assert_eq!(s["rows_per_second_setting"], 0.96 * 30_000.0);
    assert_eq!(s["diagnosis_case"], "slow_dump");
    Ok(())
}
