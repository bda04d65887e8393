//! A private MariaDB server for tests that need binary logging or must stop, pause or kill
//! their server (the machine's shared MariaDB runs without `log_bin` and must not be
//! disturbed).
//!
//! The data directory is made once per target directory with `mariadb-install-db`
//! (about 5 s; kept under `CARGO_TARGET_TMPDIR` and reused) and copied for each server
//! (about 20 MB). Each server runs `mariadbd --log-bin` on a free 127.0.0.1 port with its
//! socket, pid file and error log in its own temporary directory, as root when the tests
//! run as root. Readiness is the error log's "ready for connections" line, so no bare TCP
//! connect is needed. Dropping the handle kills the server; a small shell watchdog kills it
//! too if the test process dies without dropping it.
//!
//! Tests that need it fail unless `mariadbd` is installed (`scripts/test.sh` installs
//! `mariadb-server`), or skip when `GX_SKIP_MARIADB=1`.
#![allow(dead_code)]

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gravity_exporter::probe::mysql::{MySqlConn, ResultSet};
use gravity_exporter::probe::{Endpoint, Secret};

/// Base name of the binlog files (`gx-bin.000001`, ...).
pub const BINLOG_BASE: &str = "gx-bin";

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

fn mariadbd() -> Option<PathBuf> {
    find(&[
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadbd",
        "/usr/local/bin/mariadbd",
        "/usr/local/sbin/mariadbd",
    ])
}

fn install_db() -> Option<PathBuf> {
    find(&[
        "/usr/bin/mariadb-install-db",
        "/usr/local/bin/mariadb-install-db",
        "/usr/bin/mysql_install_db",
    ])
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Whether MariaDB tests can run: panics when mariadbd is missing, unless GX_SKIP_MARIADB=1.
pub fn require() -> bool {
    if mariadbd().is_some() && install_db().is_some() {
        return true;
    }
    if std::env::var("GX_SKIP_MARIADB").as_deref() == Ok("1") {
        eprintln!("SKIP: mariadbd not installed (GX_SKIP_MARIADB=1)");
        return false;
    }
    panic!("mariadbd / mariadb-install-db not found: run scripts/test.sh (installs mariadb-server) or set GX_SKIP_MARIADB=1");
}

/// The template data directory, made once.
fn template() -> &'static PathBuf {
    static T: OnceLock<PathBuf> = OnceLock::new();
    T.get_or_init(|| {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let dst = base.join("mariadb-template");
        if dst.join("mysql").is_dir() {
            return dst;
        }
        let tmp = base.join(format!("mariadb-template.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let mut cmd = Command::new(install_db().expect("checked by require()"));
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", tmp.display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--innodb-log-file-size=4M",
                "--innodb-buffer-pool-size=16M",
            ]);
        if is_root() {
            cmd.arg("--user=root");
        }
        let out = cmd.output().expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Another test binary may have won the race: use its template.
        if std::fs::rename(&tmp, &dst).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        assert!(
            dst.join("mysql").is_dir(),
            "no template at {}",
            dst.display()
        );
        dst
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running private server.
pub struct MariaDb {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    child: Child,
    watchdog: Option<Child>,
    dir: tempfile::TempDir,
    dead: bool,
}

impl MariaDb {
    /// Starts a server with binary logging and waits until it is ready (at most 30 s).
    pub fn start() -> MariaDb {
        Self::start_with(&[])
    }

    /// Like [`MariaDb::start`], with extra `mariadbd` options (TLS certificates,
    /// `--require-secure-transport=ON`, `--wait-timeout=1` ...): a private server, so its
    /// global settings concern this test only.
    pub fn start_with(extra: &[String]) -> MariaDb {
        let tpl = template();
        let mut last_log = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("gx-mariadb")
                .tempdir()
                .unwrap();
            let data = dir.path().join("data");
            let st = Command::new("cp")
                .arg("-a")
                .arg(tpl)
                .arg(&data)
                .status()
                .unwrap();
            assert!(st.success(), "copying the template data directory failed");
            let port = free_port();
            let err_log = dir.path().join("error.log");
            let mut cmd = Command::new(mariadbd().expect("checked by require()"));
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--socket={}", dir.path().join("s.sock").display()))
                .arg(format!("--pid-file={}", dir.path().join("m.pid").display()))
                .arg(format!("--log-error={}", err_log.display()))
                .arg(format!("--log-bin={}", data.join(BINLOG_BASE).display()))
                .args([
                    "--server-id=1",
                    "--innodb-log-file-size=4M",
                    "--innodb-buffer-pool-size=16M",
                    "--performance-schema=OFF",
                    "--skip-name-resolve",
                    "--max-connections=40",
                ])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if is_root() {
                cmd.arg("--user=root");
            }
            let mut child = cmd.spawn().expect("spawn mariadbd");
            let watchdog = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null",
                    std::process::id(),
                    child.id()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok();
            let t0 = Instant::now();
            loop {
                let log = std::fs::read_to_string(&err_log).unwrap_or_default();
                if log.contains("ready for connections") {
                    return MariaDb {
                        port,
                        child,
                        watchdog,
                        dir,
                        dead: false,
                    };
                }
                let exited = matches!(child.try_wait(), Ok(Some(_)));
                if exited || t0.elapsed() > Duration::from_secs(30) {
                    let _ = child.kill();
                    let _ = child.wait();
                    if let Some(mut w) = watchdog {
                        let _ = w.kill();
                        let _ = w.wait();
                    }
                    last_log = log;
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Port taken between picking and binding: try another one.
        }
        panic!("mariadbd did not start; last error log:\n{last_log}");
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `127.0.0.1:port`.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new("127.0.0.1", self.port)
    }

    /// The data directory (binlogs live here).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(st.success(), "kill -{sig} failed");
    }

    /// Pauses the server with SIGSTOP: connections are accepted by the kernel, never answered.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Resumes it with SIGCONT.
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Kills the server (SIGKILL) and waits for it: its port is then closed.
    pub fn kill(&mut self) {
        if self.dead {
            return;
        }
        let _ = Command::new("kill")
            .arg("-CONT")
            .arg(self.pid().to_string())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.dead = true;
    }

    /// A root connection (root has no password in these servers).
    pub async fn root(&self) -> MySqlConn {
        MySqlConn::connect(
            &self.endpoint(),
            "root",
            &Secret::default(),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|e| panic!("root login to the test server failed: {e}"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
        if let Some(w) = self.watchdog.as_mut() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// Runs statements one after another, panicking with the statement on error.
pub async fn exec(conn: &mut MySqlConn, statements: &[&str]) -> Vec<ResultSet> {
    let mut out = Vec::new();
    for s in statements {
        out.push(conn.query(s).await.unwrap_or_else(|e| panic!("{s}: {e}")));
    }
    out
}

/// `path` as a `&str` (test paths are UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A self-signed certificate and key for 127.0.0.1 made with the `openssl` CLI in `dir`, as
/// `mariadbd` options; `None` (the caller skips, saying so) without `openssl`.
pub fn tls_options(dir: &Path) -> Option<Vec<String>> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(vec![
        format!("--ssl-cert={}", cert.display()),
        format!("--ssl-key={}", key.display()),
    ])
}

/// Whether MariaDB's `auth_ed25519` plugin file is installed.
pub fn has_plugin(name: &str) -> bool {
    [
        "/usr/lib/mysql/plugin",
        "/usr/lib/x86_64-linux-gnu/mariadb19/plugin",
        "/usr/local/mysql/lib/plugin",
    ]
    .iter()
    .any(|d| Path::new(d).join(format!("{name}.so")).exists())
}
