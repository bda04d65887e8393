//! Shared helpers for integration tests: start the exporter on 127.0.0.1:0, fetch and
//! parse its /metrics, find promtool.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gravity_exporter::app::{self, Exporter};
use gravity_exporter::config::{Cli, Settings};
use gravity_exporter::gravity_api::GravityClient;
use tokio::sync::oneshot;

pub struct Running {
    pub addr: SocketAddr,
    pub exp: Exporter,
    stop: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        self.shutdown().await;
    }

    /// Stops the server, then cancels and joins every background task (bounded drain).
    pub async fn shutdown(self) -> gravity_exporter::supervise::ShutdownReport {
        self.shutdown_within(gravity_exporter::supervise::DRAIN)
            .await
    }

    /// [`Running::shutdown`] with its own drain bound (a slow debug build under load).
    #[allow(dead_code)]
    pub async fn shutdown_within(
        mut self,
        drain: Duration,
    ) -> gravity_exporter::supervise::ShutdownReport {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.server).await;
        self.exp.shutdown(drain).await
    }
}

pub fn settings(args: &[&str]) -> Settings {
    let mut v = vec!["gravity-exporter", "--web.listen-address", "127.0.0.1:0"];
    v.extend_from_slice(args);
    let cli = <Cli as clap::Parser>::try_parse_from(v).expect("test flags parse");
    Settings::from_flags(cli.flags).expect("test settings valid")
}

pub async fn start(settings: Settings) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let exp = app::start(settings);
    let (tx, rx) = oneshot::channel::<()>();
    let fleet = exp.fleet.clone();
    let server = tokio::spawn(gravity_exporter::server::serve(
        listener,
        fleet,
        async move {
            let _ = rx.await;
        },
    ));
    Running {
        addr,
        exp,
        stop: Some(tx),
        server,
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let c = GravityClient::new();
    let base = format!("http://{addr}").parse().unwrap();
    let r = c
        .get(&base, path, Duration::from_secs(5), 64 << 20)
        .await
        .unwrap();
    (
        r.status.as_u16(),
        String::from_utf8_lossy(&r.body).into_owned(),
    )
}

/// The value of the first sample line `name{...}` containing every `needle` in its labels.
pub fn sample(text: &str, name: &str, needles: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let base = series.split('{').next()?;
        if base != name || !needles.iter().all(|n| series.contains(n)) {
            return None;
        }
        value.parse().ok()
    })
}

pub async fn metric(addr: SocketAddr, name: &str, needles: &[&str]) -> Option<f64> {
    let (_, body) = get(addr, "/metrics").await;
    sample(&body, name, needles)
}

/// Polls `/metrics` until `done(body)` holds and returns that body; after `deadline`
/// panics with `what` and the last body.
pub async fn wait_metrics(
    addr: SocketAddr,
    deadline: Duration,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) -> String {
    let t0 = Instant::now();
    loop {
        let (_, body) = get(addr, "/metrics").await;
        if done(&body) {
            return body;
        }
        assert!(t0.elapsed() < deadline, "{what}; last /metrics:\n{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls until `f` is true or the deadline passes; returns the time it took.
pub async fn wait_for<F, Fut>(deadline: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < deadline {
        if f().await {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

pub fn promtool() -> Option<PathBuf> {
    ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// promtool is required unless GX_SKIP_PROMTOOL=1 (the test command installs it).
pub fn require_promtool() -> Option<PathBuf> {
    match promtool() {
        Some(p) => Some(p),
        None if std::env::var("GX_SKIP_PROMTOOL").as_deref() == Ok("1") => None,
        None => panic!("promtool not found: run scripts/test.sh (installs Debian's prometheus) or set GX_SKIP_PROMTOOL=1"),
    }
}

/// Runs `promtool check metrics` on `text`: its exit code and what it printed (stdout then
/// stderr).
pub fn promtool_check_metrics(promtool: &std::path::Path, text: &str) -> (Option<i32>, String) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), printed)
}

/// Exporter flags for a gravity log file written by the test itself (no gravity process, the
/// fixture config, no probes).
pub fn log_file_flags(log: &std::path::Path) -> Vec<String> {
    let cfg = fixtures().join("configs/mysql2mysql-stream.toml");
    vec![
        "--gravity.pid-file".into(),
        "/nonexistent/gravity.pid".into(),
        "--gravity.config".into(),
        cfg.to_str().unwrap().into(),
        "--gravity.log-file".into(),
        log.to_str().unwrap().into(),
        "--probe.interval".into(),
        "0s".into(),
    ]
}

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures"))
}

/// A minimal HTTP server answering every request with `status` and an empty body.
pub async fn stub_http(status: u16) -> SocketAddr {
    stub_routes(vec![], status).await
}

/// A minimal HTTP server: `routes` are (path, status, body); anything else gets `default_status`.
pub async fn stub_routes(
    routes: Vec<(&'static str, u16, String)>,
    default_status: u16,
) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let routes = std::sync::Arc::new(routes);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let routes = routes.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let path = req.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = routes
                    .iter()
                    .find(|(p, _, _)| *p == path)
                    .map(|(_, st, b)| (*st, b.clone()))
                    .unwrap_or((default_status, String::new()));
                let resp = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

/// A gravity double running under a supervisor in its own temp dir.
pub struct Double {
    pub dir: tempfile::TempDir,
    pub sup: gravity_double::Supervisor,
    pub port: u16,
    pub config: PathBuf,
    pub log: PathBuf,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts the double (mysql2mysql stream config) with the given restart policy and env.
pub fn start_double(
    restart: gravity_double::supervisor::Restart,
    restart_sec: Duration,
    env: &[(&str, &str)],
) -> Double {
    use gravity_double::{install_gravity_link, Supervisor, SupervisorConfig};
    let dir = tempfile::tempdir().unwrap();
    let exe = gravity_double::binary().unwrap();
    let link = install_gravity_link(&exe, dir.path()).unwrap();
    let config = dir.path().join("config.toml");
    std::fs::copy(fixtures().join("configs/mysql2mysql-stream.toml"), &config).unwrap();
    let log = dir.path().join("gravity.log");
    let port = free_port();
    let mut cfg = SupervisorConfig::new(&link, dir.path(), &config, format!("127.0.0.1:{port}"));
    cfg.log_file = Some(log.clone());
    cfg.restart = restart;
    cfg.restart_sec = restart_sec;
    cfg.start_limit_burst = 100;
    cfg.env = env
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
    let sup = Supervisor::start(cfg).unwrap();
    Double {
        dir,
        sup,
        port,
        config,
        log,
    }
}

impl Double {
    /// Exporter flags that select exactly this double.
    pub fn exporter_flags(&self) -> Vec<String> {
        vec![
            "--gravity.process-pattern".into(),
            format!(
                "/gravity --config={}( |$)",
                regex::escape(self.config.to_str().unwrap())
            ),
            "--collector.interval".into(),
            "200ms".into(),
            "--gravity.timeout".into(),
            "500ms".into(),
        ]
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// POSTs to the double's control endpoint.
    pub async fn control(&self, path_and_query: &str) {
        let head = post(self.port, path_and_query).await;
        assert!(
            head.starts_with("HTTP/1.1 200"),
            "control {path_and_query}: {head}"
        );
    }

    /// Waits until the double's API answers.
    pub async fn wait_api(&self) {
        let url = self.url();
        let ok = wait_for(Duration::from_secs(10), || {
            let url = url.clone();
            async move {
                let c = GravityClient::new();
                c.get(
                    &url.parse().unwrap(),
                    "/healthz",
                    Duration::from_millis(300),
                    1024,
                )
                .await
                .is_ok()
            }
        })
        .await;
        assert!(ok.is_some(), "double API never answered");
    }
}

pub fn owned(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// POSTs an empty body to 127.0.0.1:`port` and returns what came back (the double's control endpoint).
pub async fn post(port: u16, path_and_query: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "POST {path_and_query} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// The fake mongod's security for the test configs' Mongo source: gravity's user
/// `reader`/`mongo-pw` in `admin`, SCRAM-SHA-256, no TLS.
pub fn mongo_reader() -> gravity_double::mongo::Security {
    gravity_double::mongo::Security::users(vec![gravity_double::mongo::MongoUser::reader(
        "reader", "mongo-pw",
    )])
}
