//! A private MariaDB server for the demo's canary (`demo.rs`): made with `mariadb-install-db`
//! in the demo's directory and run by `mariadbd` on a free 127.0.0.1 port, as root when the
//! demo runs as root. Only when Debian's `mariadb-server` is installed; the demo runs without
//! it (and without a canary) otherwise. Dropping the handle stops the server.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn find(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A running private server.
#[derive(Debug)]
pub struct PrivateMariaDb {
    /// TCP port on 127.0.0.1.
    pub port: u16,
    child: Child,
}

impl PrivateMariaDb {
    /// Makes a data directory under `dir` (once) and starts the server; waits until it is
    /// ready (at most 30 s). `Err` says why not (not installed, failed to start).
    pub fn start(dir: &Path) -> Result<PrivateMariaDb, String> {
        let mariadbd = find(&["/usr/sbin/mariadbd", "/usr/bin/mariadbd"])
            .ok_or("mariadbd is not installed (apt-get install mariadb-server)")?;
        let install = find(&["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"])
            .ok_or("mariadb-install-db is not installed (apt-get install mariadb-server)")?;
        let data = dir.join("mariadb-data");
        if !data.join("mysql").is_dir() {
            let mut cmd = Command::new(install);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--innodb-log-file-size=4M",
                    "--innodb-buffer-pool-size=16M",
                ]);
            if is_root() {
                cmd.arg("--user=root");
            }
            let out = cmd
                .output()
                .map_err(|e| format!("mariadb-install-db: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "mariadb-install-db failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let err_log = dir.join("mariadb-error.log");
        let _ = std::fs::remove_file(&err_log);
        let mut cmd = Command::new(mariadbd);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.join("mariadb.sock").display()))
            .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
            .arg(format!("--log-error={}", err_log.display()))
            .args([
                "--innodb-log-file-size=4M",
                "--innodb-buffer-pool-size=16M",
                "--performance-schema=OFF",
                "--skip-name-resolve",
                "--max-connections=20",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            cmd.arg("--user=root");
        }
        let mut child = cmd.spawn().map_err(|e| format!("mariadbd: {e}"))?;
        let t0 = Instant::now();
        loop {
            let log = std::fs::read_to_string(&err_log).unwrap_or_default();
            if log.contains("ready for connections") {
                return Ok(PrivateMariaDb { port, child });
            }
            if matches!(child.try_wait(), Ok(Some(_))) || t0.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                let last = log.lines().last().unwrap_or("").to_string();
                return Err(format!("mariadbd did not start ({last})"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PrivateMariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
