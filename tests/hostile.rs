//! Hostile and unusual conditions, end to end: remote mode (gravity's /proc not visible),
//! a gravity that hangs after it answered, pass-through families named like the exporter's
//! own, oversized answers, 1,000 idle sockets on the exporter's port, out-of-range
//! durations, and a slow source database. docs/reliability.md ("Hostile input") lists
//! the figures measured for each.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get, owned, require_promtool, sample, settings, start, wait_metrics};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gravity API double for these tests: `/healthz`, `/status` and `/metrics` from the
/// fixtures (or a given /metrics body); `hang` makes every request wait forever.
struct Gravity {
    addr: SocketAddr,
    hang: Arc<AtomicBool>,
}

async fn gravity(metrics: String) -> Gravity {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hang = Arc::new(AtomicBool::new(false));
    let status = std::fs::read_to_string(common::fixtures().join("status-incremental.json"))
        .unwrap()
        .into_bytes();
    let metrics = Arc::new(metrics.into_bytes());
    let status = Arc::new(status);
    let h = hang.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let (metrics, status, hang) = (metrics.clone(), status.clone(), h.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                    if n == buf.len() {
                        return;
                    }
                }
                if hang.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let body: &[u8] = match path.as_str() {
                    "/metrics" => &metrics,
                    "/status" => &status,
                    _ => b"",
                };
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body).await;
            });
        }
    });
    Gravity { addr, hang }
}

fn fixture_metrics() -> String {
    std::fs::read_to_string(common::fixtures().join("metrics.prom")).unwrap()
}

/// Flags of an exporter that sees no gravity process (an empty procfs root) and reads
/// gravity's API at `g`.
fn remote_flags(g: &Gravity, proc_root: &std::path::Path) -> Vec<String> {
    vec![
        "--gravity.url".into(),
        format!("http://{}", g.addr),
        "--path.procfs".into(),
        proc_root.display().to_string(),
        "--gravity.pid".into(),
        "4194000".into(),
        "--collector.interval".into(),
        "200ms".into(),
        "--gravity.timeout".into(),
        "300ms".into(),
        "--probe.interval".into(),
        "0s".into(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_mode_gravity_up_from_the_api() {
    let g = gravity(fixture_metrics()).await;
    let proc_root = tempfile::tempdir().unwrap();
    let flags = remote_flags(&g, proc_root.path());
    let r = start(settings(&owned(&flags))).await;
    let body = wait_metrics(
        r.addr,
        Duration::from_secs(15),
        "gravity_up 1 in remote mode",
        |b| sample(b, "gravity_up", &[]) == Some(1.0),
    )
    .await;
    assert_eq!(sample(&body, "gravity_process_up", &[]), Some(0.0));
    assert_eq!(sample(&body, "gravity_healthz", &[]), Some(1.0), "{body}");
    // the API stops answering: gravity_up goes back to 0
    g.hang.store(true, Ordering::SeqCst);
    wait_metrics(
        r.addr,
        Duration::from_secs(15),
        "gravity_up 0 once the API hangs",
        |b| sample(b, "gravity_up", &[]) == Some(0.0),
    )
    .await;
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_gravity_pass_through_goes_stale_and_source_ages_grow() {
    let metrics = format!(
        "{}# HELP hostile_marker x\n# TYPE hostile_marker gauge\nhostile_marker 1\n",
        fixture_metrics()
    );
    let g = gravity(metrics).await;
    let proc_root = tempfile::tempdir().unwrap();
    let flags = remote_flags(&g, proc_root.path());
    let r = start(settings(&owned(&flags))).await;
    let fresh = |b: &str| {
        ["status", "healthz", "gravity_metrics"].iter().all(|src| {
            sample(
                b,
                "gravity_exporter_source_age_seconds",
                &[&format!("source=\"{src}\"")],
            )
            .is_some_and(|a| a < 5.0)
        })
    };
    wait_metrics(
        r.addr,
        Duration::from_secs(15),
        "pass-through served, every source read",
        |b| b.contains("\nhostile_marker 1\n") && fresh(b),
    )
    .await;
    g.hang.store(true, Ordering::SeqCst);
    let body = wait_metrics(
        r.addr,
        Duration::from_secs(20),
        "pass-through dropped while gravity hangs",
        |b| !b.contains("hostile_marker"),
    )
    .await;
    let body = if sample(
        &body,
        "gravity_exporter_source_age_seconds",
        &["source=\"gravity_metrics\""],
    )
    .is_some_and(|a| a >= 1.0)
    {
        body
    } else {
        wait_metrics(r.addr, Duration::from_secs(10), "age grows", |b| {
            sample(
                b,
                "gravity_exporter_source_age_seconds",
                &["source=\"gravity_metrics\""],
            )
            .is_some_and(|a| a >= 1.0)
        })
        .await
    };
    assert!(
        sample(&body, "gravity_exporter_passthrough_stale", &[]) == Some(1.0),
        "{body}"
    );
    r.stop().await;
}

/// Runs `promtool check metrics` on a text; panics with its output when it fails.
fn promtool_ok(text: &str) {
    let Some(promtool) = require_promtool() else {
        return;
    };
    let (code, msg) = common::promtool_check_metrics(&promtool, text);
    // promtool exits 3 for lint findings only (e.g. a counter without _total in gravity's own
    // names); an invalid exposition (a family twice) is exit 1.
    assert!(
        code != Some(1) && !msg.contains("error while linting"),
        "promtool: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_pass_through_families_are_dropped_and_counted() {
    let metrics = format!(
        "{}# HELP gravity_up gravity's own\n# TYPE gravity_up gauge\ngravity_up 1\n# HELP gravity_exporter_collector_success x\n# TYPE gravity_exporter_collector_success gauge\ngravity_exporter_collector_success{{collector=\"x\"}} 1\n",
        fixture_metrics()
    );
    let g = gravity(metrics).await;
    let proc_root = tempfile::tempdir().unwrap();
    let flags = remote_flags(&g, proc_root.path());
    let r = start(settings(&owned(&flags))).await;
    let body = wait_metrics(r.addr, Duration::from_secs(15), "collision counted", |b| {
        sample(
            b,
            "gravity_exporter_dropped_total",
            &["what=\"passthrough_family_collision\""],
        )
        .is_some_and(|v| v >= 2.0)
            && b.contains("gravity_scheduler_retry_counter")
    })
    .await;
    assert_eq!(
        body.matches("# TYPE gravity_up ").count(),
        1,
        "gravity_up once:\n{body}"
    );
    assert_eq!(
        body.matches("# TYPE gravity_exporter_collector_success ")
            .count(),
        1
    );
    promtool_ok(&body);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_are_cut_to_byte_bounds_and_counted() {
    // 3,000 series of 5 KB each and 3,000 of 3 KB (under the series cap): a 24 MB
    // pass-through without byte bounds
    let long = "x".repeat(5000);
    let mut m = String::from("# HELP hostile_wide x\n# TYPE hostile_wide gauge\n");
    for i in 0..3_000 {
        m.push_str(&format!("hostile_wide{{i=\"{i}\",v=\"{long}\"}} 1\n"));
    }
    let mid = "y".repeat(3000);
    m.push_str("# HELP hostile_mid x\n# TYPE hostile_mid gauge\n");
    for i in 0..3_000 {
        m.push_str(&format!("hostile_mid{{i=\"{i}\",v=\"{mid}\"}} 1\n"));
    }
    m.push_str("# HELP hostile_small x\n# TYPE hostile_small gauge\n");
    for i in 0..20_000 {
        m.push_str(&format!("hostile_small{{i=\"{i}\"}} 1\n"));
    }
    let g = gravity(m).await;
    let proc_root = tempfile::tempdir().unwrap();
    let mut flags = remote_flags(&g, proc_root.path());
    flags.extend([
        "--gravity.metrics-passthrough-max-series".into(),
        "1000000".into(),
    ]);
    let r = start(settings(&owned(&flags))).await;
    let body = wait_metrics(
        r.addr,
        Duration::from_secs(30),
        "bounded pass-through",
        |b| {
            let dropped = |what: &str| {
                sample(
                    b,
                    "gravity_exporter_dropped_total",
                    &[&format!("what=\"{what}\"")],
                )
                .unwrap_or(0.0)
            };
            dropped("passthrough_line") >= 3_000.0
                && dropped("passthrough_bytes") >= 1.0
                && b.contains("hostile_mid{i=\"0\"")
        },
    )
    .await;
    assert!(
        !body.contains("hostile_wide{"),
        "5 KB lines are not passed through"
    );
    assert!(body.len() <= 16 << 20, "exposition of {} bytes", body.len());
    let longest = body.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= 4096, "a line of {longest} bytes");
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_series_answer_keeps_only_the_series_cap() {
    let mut m = fixture_metrics();
    m.push_str("# HELP hostile_series x\n# TYPE hostile_series gauge\n");
    for i in 0..1_000_000 {
        m.push_str(&format!("hostile_series{{i=\"{i}\"}} 1\n"));
    }
    let g = gravity(m).await;
    let proc_root = tempfile::tempdir().unwrap();
    let mut flags = remote_flags(&g, proc_root.path());
    // a debug build parses slower than the release one: room for one collection
    let i = flags.iter().position(|f| f == "--gravity.timeout").unwrap();
    flags[i + 1] = "20s".into();
    let r = start(settings(&owned(&flags))).await;
    let body = wait_metrics(
        r.addr,
        Duration::from_secs(60),
        "pass-through capped",
        |b| {
            // the counter moves during the collection, the gauge with its snapshot after it
            sample(b, "gravity_exporter_passthrough_dropped_series_total", &[])
                .is_some_and(|v| v >= 990_000.0)
                && sample(b, "gravity_exporter_passthrough_series", &[]).is_some()
        },
    )
    .await;
    assert_eq!(
        sample(&body, "gravity_exporter_passthrough_series", &[]),
        Some(10_000.0)
    );
    // the fixture's own families are still read (the row counters come before the flood)
    assert!(body.contains("gravity_process_metrics_source"), "{body}");
    r.stop().await;
}

/// An answer that announces a body over the cap is refused on its head: not read, not
/// waited for (the double announces 40 MB, sends none of it and keeps the connection open,
/// under a 30 s request timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_announcing_more_than_the_cap_is_refused_on_its_head() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                while !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") && n < buf.len() {
                    match s.read(&mut buf[n..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(k) => n += k,
                    }
                }
                let head = "HTTP/1.1 200 OK\r\ncontent-length: 41943040\r\n\r\n";
                let _ = s.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(3600)).await;
            });
        }
    });
    let g = Gravity {
        addr,
        hang: Arc::new(AtomicBool::new(false)),
    };
    let proc_root = tempfile::tempdir().unwrap();
    let mut flags = remote_flags(&g, proc_root.path());
    let i = flags.iter().position(|f| f == "--gravity.timeout").unwrap();
    flags[i + 1] = "30s".into();
    let started = Instant::now();
    let r = start(settings(&owned(&flags))).await;
    wait_metrics(
        r.addr,
        Duration::from_secs(20),
        "both answers refused",
        |b| {
            sample(b, "gravity_exporter_dropped_total", &["what=\"api_body\""])
                .is_some_and(|v| v >= 2.0)
        },
    )
    .await;
    // not the request timeout: the refusal came on the head
    assert!(started.elapsed() < Duration::from_secs(30));
    r.stop().await;
}

/// Soft limit on open files of this process.
fn nofile_soft() -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_are_served_with_1000_idle_sockets_open() {
    let g = gravity(fixture_metrics()).await;
    let proc_root = tempfile::tempdir().unwrap();
    let flags = remote_flags(&g, proc_root.path());
    let r = start(settings(&owned(&flags))).await;
    // Each idle socket costs two descriptors in this process (client and server end, the
    // server's until it evicts it): with a low limit, open fewer (documented in
    // docs/reliability.md).
    let want = 1000u64.min(nofile_soft().saturating_sub(300) / 2).max(100);
    let addr = r.addr;
    // The attacker (from 127.0.0.2, another peer than the scraper) keeps `want` idle
    // sockets open, re-opening each one the server closes.
    let connect = move || async move {
        let s = tokio::net::TcpSocket::new_v4()?;
        s.bind("127.0.0.2:0".parse().unwrap())?;
        s.connect(addr).await
    };
    let attack = tokio::spawn(async move {
        let mut socks = Vec::new();
        for _ in 0..want {
            socks.push(connect().await.unwrap());
        }
        loop {
            for s in socks.iter_mut() {
                let mut b = [0u8; 1];
                if let Ok(Ok(0)) =
                    tokio::time::timeout(Duration::from_micros(1), s.read(&mut b)).await
                {
                    if let Ok(n) = connect().await {
                        *s = n;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // wait until they are all open
    tokio::time::sleep(Duration::from_millis(500)).await;
    // scrapes get through (common::get has a 5 s timeout and panics on error), for longer
    // than the 10 s header timeout that would otherwise free slots
    let t0 = Instant::now();
    let mut scrapes = 0;
    while t0.elapsed() < Duration::from_secs(12) {
        let (code, body) = get(r.addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("gravity_exporter_connections_evicted_total"));
        scrapes += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(scrapes >= 5);
    attack.abort();
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_peer_limit_evicts_idle_connections_not_requests() {
    let g = gravity(fixture_metrics()).await;
    let proc_root = tempfile::tempdir().unwrap();
    let flags = remote_flags(&g, proc_root.path());
    let r = start(settings(&owned(&flags))).await;
    // the default per-peer limit is 64: the oldest six of 70 idle sockets are closed
    let mut socks = Vec::new();
    for _ in 0..70 {
        socks.push(tokio::net::TcpStream::connect(r.addr).await.unwrap());
    }
    let mut closed = 0;
    for s in socks.iter_mut().take(6) {
        let mut b = [0u8; 16];
        // within 2 s: well before the 10 s header timeout would close them
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 6);
    let (code, _) = get(r.addr, "/metrics").await;
    assert_eq!(code, 200);
    drop(socks);
    r.stop().await;
}

/// Runs the binary with `args`; returns its exit code and stderr, or None if it was still
/// running after 20 s (then it is killed).
fn run_binary(args: &[&str]) -> Option<(Option<i32>, String)> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gravity-exporter"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            let out = child.wait_with_output().unwrap();
            return Some((
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        if t0.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn out_of_range_durations_are_rejected_with_exit_2() {
    for (flag, value) in [
        ("--collector.interval", "7000000000000000000s"),
        (
            "--collector.interval",
            "5000000000000000000s5000000000000000000s",
        ),
        (
            "--gravity.timeout",
            "5000000000000000000s5000000000000000000s",
        ),
        ("--gravity.timeout", "2h"),
        ("--collector.process-watch-interval", "400d"),
        ("--probe.interval", "1e300s"),
        ("--consistency.interval", "1000000d"),
        ("--consistency.recheck-delay", "100000000000000000000s"),
    ] {
        let arg = format!("{flag}={value}");
        let got = run_binary(&["--web.listen-address", "127.0.0.1:0", &arg]);
        let (code, stderr) = got.unwrap_or_else(|| panic!("{arg}: accepted (still running)"));
        assert_eq!(code, Some(2), "{arg}: exit {code:?}: {stderr}");
        let key = flag.trim_start_matches("--");
        assert!(stderr.contains(key), "{arg}: {stderr}");
    }
}

/// A TCP proxy to `upstream` that delays every chunk the server sends by `delay`, and
/// counts the connections it accepted.
async fn slow_proxy(upstream: SocketAddr, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = l.accept().await else {
                return;
            };
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let mut buf = vec![0u8; 65536];
                loop {
                    match sr.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            tokio::time::sleep(delay).await;
                            if cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                up.abort();
            });
        }
    });
    (addr, conns)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_collector_keeps_its_connection_to_a_slow_database() {
    use gravity_exporter::collector::source::SourceCollector;
    use gravity_exporter::collector::{Collector, Context, Runner};
    if std::env::var("GX_SKIP_MARIADB").as_deref() == Ok("1") {
        eprintln!("skipped: GX_SKIP_MARIADB=1");
        return;
    }
    let mariadb: SocketAddr = "127.0.0.1:3306".parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&mariadb, Duration::from_secs(2)).is_ok(),
        "MariaDB is not listening on 127.0.0.1:3306 (set GX_SKIP_MARIADB=1 to skip)"
    );
    // every answer of the server comes 1.2 s late: a login (two answers) takes ~2.4 s and
    // each query ~1.2 s, each under the 3 s probe timeout, together over it
    let (proxy, conns) = slow_proxy(mariadb, Duration::from_millis(1200)).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gravity.toml");
    std::fs::write(
        &cfg,
        format!(
            "name = \"slowdb\"\n[input]\ntype = \"mysql\"\nmode = \"stream\"\n[input.config.source]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"root\"\npassword = \"\"\n[output]\ntype = \"mysql\"\n[output.config.target]\nhost = \"127.0.0.1\"\nport = 3306\nusername = \"root\"\npassword = \"\"\n",
            proxy.port()
        ),
    )
    .unwrap();
    let s = settings(&[
        "--gravity.config",
        cfg.to_str().unwrap(),
        "--path.procfs",
        dir.path().to_str().unwrap(),
        "--probe.timeout",
        "3s",
        "--probe.interval",
        "1s",
    ]);
    let timeout = s.gravity_timeout + Duration::from_secs(1);
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(s));
    let ctx = Context::new(rx, Arc::new(gravity_exporter::metrics::Store::new()));
    let c: Arc<dyn Collector> = Arc::new(SourceCollector::default());
    let runner = Runner::new(ctx.clone(), vec![c]);
    for round in 0..2 {
        runner.run_once(timeout).await;
        let text = ctx.store.render();
        assert_eq!(
            sample(
                &text,
                "gravity_exporter_collector_success",
                &["collector=\"source\""]
            ),
            Some(1.0),
            "round {round}:\n{text}"
        );
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one login for both rounds");
}
