//! The canary's data path for the tests: two private MariaDB servers, the second a replica
//! of the first through MariaDB's own replication (standing in for gravity's source →
//! target), the gravity double as gravity with a config naming them (the canary table
//! routed), and a feeder that pins the double's stream watermark to the replica's real
//! input progress (docs/canary.md, "What is a double here"). Include it next to `common`
//! and `mariadb`:
//!
//! ```ignore
//! mod common;
//! #[path = "common/mariadb.rs"] mod mariadb;
//! #[path = "common/replica.rs"] mod replica;
//! ```
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gravity_exporter::probe::mysql::MySqlConn;

use crate::common;
use crate::mariadb::{exec, MariaDb};

pub const CANARY_USER: &str = "gx_canary";
pub const CANARY_PW: &str = "Canary-Pw-5d2e";
pub const READ_USER: &str = "gx_read";
pub const READ_PW: &str = "Read-Pw-9a1f";
pub const PIPELINE: &str = "mysql2mysqlDemo";

fn gravity_config(dir: &Path, src: u16, dst: u16) -> PathBuf {
    let text = std::fs::read_to_string(common::fixtures().join("configs/mysql2mysql-stream.toml"))
        .unwrap()
        .replace("port = 3306", &format!("port = {src}"))
        .replace("port = 3307", &format!("port = {dst}"))
        + "\n[[output.config.routes]]\nmatch-schema = \"gravity_canary\"\nmatch-table = \"heartbeat\"\n";
    let p = dir.join("config.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

async fn source_pos(c: &mut MySqlConn) -> Option<(String, u64)> {
    let rs = c.query("SHOW MASTER STATUS").await.ok()?;
    Some((
        rs.value(0, "File")?.to_string(),
        rs.value(0, "Position")?.parse().ok()?,
    ))
}

async fn replica_read_pos(c: &mut MySqlConn) -> Option<(String, u64)> {
    let rs = c.query("SHOW SLAVE STATUS").await.ok()?;
    if rs.value(0, "Slave_IO_Running") != Some("Yes") {
        return None;
    }
    Some((
        rs.value(0, "Master_Log_File")?.to_string(),
        rs.value(0, "Read_Master_Log_Pos")?.parse().ok()?,
    ))
}

/// Pins the double's watermark to the replica's input progress every 100 ms until `stop`.
fn feeder(src: u16, replica: u16, double_port: u16, stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        let ep = |p| gravity_exporter::probe::Endpoint::new("127.0.0.1", p);
        let login = |p| async move {
            MySqlConn::connect(&ep(p), "root", &Default::default(), Duration::from_secs(10))
                .await
                .unwrap()
        };
        let mut s = login(src).await;
        let mut r = login(replica).await;
        let mut event = SystemTime::now();
        let mut process = SystemTime::now();
        while !stop.load(Ordering::Relaxed) {
            let t = SystemTime::now();
            if let (Some(sp), Some(rp)) = (source_pos(&mut s).await, replica_read_pos(&mut r).await)
            {
                if rp >= sp {
                    event = t;
                }
                process = SystemTime::now();
            }
            common::post(
                double_port,
                &format!(
                    "/_double/watermark?event={}&process={}",
                    unix(event),
                    unix(process)
                ),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

/// The running data path; everything stops when it is dropped.
pub struct DataPath {
    pub src: MariaDb,
    pub replica: MariaDb,
    /// gravity's HTTP port (the double).
    pub gravity_port: u16,
    pub dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    _sup: gravity_double::Supervisor,
    config: PathBuf,
}

impl Drop for DataPath {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl DataPath {
    /// Stops the feeder first (it must not post to a double that is gone), then the rest.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        // the feeder's round: at most one request and a 100 ms sleep
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    /// Starts both servers (users: replication, the canary's, a reader at the target),
    /// replication, the double and the feeder.
    pub async fn start() -> DataPath {
        let src = MariaDb::start();
        let replica = MariaDb::start_with(&["--server-id=2".into()]);
        let mut s = src.root().await;
        exec(
            &mut s,
            &[
                "CREATE USER 'repl'@'%' IDENTIFIED BY 'Repl-Pw-1'",
                "GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'",
                &format!("CREATE USER '{CANARY_USER}'@'%' IDENTIFIED BY '{CANARY_PW}'"),
                &format!(
                    "GRANT SELECT, INSERT, UPDATE, CREATE ON gravity_canary.* TO '{CANARY_USER}'@'%'"
                ),
                &format!("CREATE USER '{READ_USER}'@'%' IDENTIFIED BY '{READ_PW}'"),
                &format!("GRANT SELECT ON gravity_canary.* TO '{READ_USER}'@'%'"),
            ],
        )
        .await;
        let mut r = replica.root().await;
        exec(
            &mut r,
            &[
                &format!("CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl', MASTER_PASSWORD='Repl-Pw-1', MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1", src.port),
                "START SLAVE",
            ],
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let config = gravity_config(dir.path(), src.port, replica.port);
        let exe = gravity_double::binary().unwrap();
        let link = gravity_double::install_gravity_link(&exe, dir.path()).unwrap();
        let gravity_port = common::free_port();
        let mut cfg = gravity_double::SupervisorConfig::new(
            &link,
            dir.path(),
            &config,
            format!("127.0.0.1:{gravity_port}"),
        );
        cfg.log_file = Some(dir.path().join("gravity.log"));
        let sup = gravity_double::Supervisor::start(cfg).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        feeder(src.port, replica.port, gravity_port, stop.clone());
        std::fs::write(dir.path().join("canary.pw"), format!("{CANARY_PW}\n")).unwrap();
        std::fs::write(dir.path().join("read.pw"), READ_PW).unwrap();
        DataPath {
            src,
            replica,
            gravity_port,
            dir,
            stop,
            _sup: sup,
            config,
        }
    }

    /// The exporter's flags: find the double, collect every 200 ms, a canary every
    /// `interval` with its own login, the reader at the target.
    pub fn exporter_flags(&self, interval: &str, timeout: &str) -> Vec<String> {
        let pattern = format!(
            "/gravity --config={}( |$)",
            regex::escape(self.config.to_str().unwrap())
        );
        let pw = self.dir.path().join("canary.pw");
        let rpw = self.dir.path().join("read.pw");
        [
            "--gravity.process-pattern",
            &pattern,
            "--collector.interval",
            "200ms",
            "--gravity.timeout",
            "1s",
            "--probe.interval",
            "0s",
            "--canary.interval",
            interval,
            "--canary.timeout",
            timeout,
            "--canary.username",
            CANARY_USER,
            "--canary.password-file",
            pw.to_str().unwrap(),
            "--target.username",
            READ_USER,
            "--target.password-file",
            rpw.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    }
}
