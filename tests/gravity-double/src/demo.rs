//! `gravity-double demo` (and `gravity-exporter demo`, which hands over to it): the first
//! thing a new user runs.
//!
//! It starts the gravity double (the `gravity-double` binary, linked as `gravity`) as a live pipeline
//! under a systemd-like supervisor — rows flowing, lag varying, an occasional retry and
//! warning in its log — and the exporter (in this process, through the `gravity_exporter`
//! library) watching it, then prints where to look. When
//! Debian's `prometheus` and `prometheus-alertmanager` are installed, it also starts them,
//! scraping the exporter with the shipped alert rules loaded.
//! Ctrl-C, SIGTERM or the end of `--demo.duration` stops everything it started.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gravity_exporter::config::{DemoArgs, MonitorLogin, ProcessSelector, Settings};

use crate::supervisor::{install_gravity_link, Restart, Supervisor, SupervisorConfig};

/// The gravity config the demo pipeline runs with (the reference mysql2mysql stream config).
pub const DEMO_CONFIG: &str = include_str!("../../fixtures/configs/mysql2mysql-stream.toml");
/// The shipped recording rules, loaded into the demo's Prometheus.
pub const RECORDING_RULES: &str = include_str!("../../../alerts/gravity-recording.rules.yml");
/// The shipped alert rules.
pub const ALERT_RULES: &str = include_str!("../../../alerts/gravity-alerts.rules.yml");
/// The shipped Alertmanager example.
pub const ALERTMANAGER: &str = include_str!("../../../alerts/alertmanager.yml");

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// File system.
    #[error("demo: {what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Error.
        source: std::io::Error,
    },
    /// The supervisor could not start the double.
    #[error("demo: cannot start the simulated gravity: {0}")]
    Supervisor(String),
    /// The exporter could not start.
    #[error(transparent)]
    App(#[from] gravity_exporter::app::AppError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DemoError {
    let what = what.into();
    move |source| DemoError::Io { what, source }
}

fn free_port() -> Result<u16, DemoError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// A helper process the demo started (Prometheus, Alertmanager); killed on drop.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Runs the demo until Ctrl-C or the duration ends.
pub async fn run(mut settings: Settings, args: DemoArgs) -> Result<(), DemoError> {
    let (dir, _keep) = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
            (d.clone(), None)
        }
        None => {
            let t =
                std::env::temp_dir().join(format!("gravity-exporter-demo-{}", std::process::id()));
            std::fs::create_dir_all(&t).map_err(io(format!("creating {}", t.display())))?;
            (t.clone(), Some(t))
        }
    };
    let exe = std::env::current_exe().map_err(io("finding this executable"))?;
    let link = install_gravity_link(&exe, &dir).map_err(io("linking the simulated gravity"))?;
    // Several pipelines: every gravity config in one directory, one glob for the exporter.
    let config = if args.pipelines > 1 {
        let pdir = dir.join("pipelines");
        std::fs::create_dir_all(&pdir).map_err(io("creating the pipelines directory"))?;
        pdir.join("pipeline-1.toml")
    } else {
        dir.join("config.toml")
    };
    // The canary (docs/canary.md) needs a real MySQL server: a private MariaDB when
    // Debian's mariadb-server is installed, else the demo runs without one.
    let canary = if settings.canary.enabled() {
        Err("configured by your --canary.* flags".to_string())
    } else if args.pipelines > 1 {
        Err("one private database cannot serve several demo pipelines' canaries".to_string())
    } else {
        match crate::mariadb::PrivateMariaDb::start(&dir) {
            Ok(db) => prepare_canary(db).await,
            Err(e) => Err(e),
        }
    };
    let config_text = match &canary {
        Ok((db, _)) => demo_config_with_database(db.port),
        Err(_) => DEMO_CONFIG.to_string(),
    };
    std::fs::write(&config, config_text).map_err(io("writing the gravity config"))?;
    let log = dir.join("gravity.log");
    let gport = if args.gravity_port == 0 {
        free_port()?
    } else {
        args.gravity_port
    };
    let mut cfg = SupervisorConfig::new(&link, &dir, &config, format!("127.0.0.1:{gport}"));
    cfg.log_file = Some(log.clone());
    cfg.restart = Restart::Always;
    cfg.restart_sec = Duration::from_secs(1);
    cfg.env = vec![
        ("GRAVITY_DOUBLE_RATE".into(), args.rate.to_string().into()),
        ("GRAVITY_DOUBLE_RETRY_EVERY".into(), "20".into()),
        ("GRAVITY_DOUBLE_DDL_EVERY".into(), "120".into()),
        ("GRAVITY_DOUBLE_LOG_MAX_BYTES".into(), "10485760".into()),
    ];
    let mut sup = Supervisor::start(cfg).map_err(|e| DemoError::Supervisor(e.to_string()))?;
    // More pipelines: each a gravity of its own (config named pipeline-N, its own port and
    // log) under its own supervisor; the exporter finds them all through a glob.
    let mut more = Vec::new();
    let mut more_lines = Vec::new();
    if args.pipelines > 1 {
        let pdir = dir.join("pipelines");
        for n in 2..=args.pipelines {
            let name = format!("mysql2mysqlDemo{n}");
            let text = DEMO_CONFIG.replacen(
                "name = \"mysql2mysqlDemo\"",
                &format!("name = \"{name}\""),
                1,
            );
            let cfile = pdir.join(format!("pipeline-{n}.toml"));
            std::fs::write(&cfile, text).map_err(io("writing a gravity config"))?;
            let port = free_port()?;
            let plog = dir.join(format!("gravity-{n}.log"));
            let pwork = dir.join(format!("pipeline-{n}"));
            let mut c = SupervisorConfig::new(&link, &pwork, &cfile, format!("127.0.0.1:{port}"));
            c.log_file = Some(plog.clone());
            c.restart = Restart::Always;
            c.restart_sec = Duration::from_secs(1);
            c.env = vec![
                ("GRAVITY_DOUBLE_RATE".into(), args.rate.to_string().into()),
                ("GRAVITY_DOUBLE_RETRY_EVERY".into(), "30".into()),
                ("GRAVITY_DOUBLE_LOG_MAX_BYTES".into(), "10485760".into()),
            ];
            let s = Supervisor::start(c).map_err(|e| DemoError::Supervisor(e.to_string()))?;
            more_lines.push(format!(
                "  simulated gravity {n}: http://127.0.0.1:{port}/status  (pipeline {name}, pid {}, log {})",
                s.pid().unwrap_or(0),
                plog.display()
            ));
            more.push(s);
        }
    }

    // The demo pipeline's databases do not exist: probing them would page about a
    // "lost" source and target that were never there.
    settings.probe_interval = None;
    // Watch exactly the demo's gravity, whatever else runs on this host.
    let pattern = format!(
        "/gravity --config={}( |$)",
        regex::escape(&config.to_string_lossy())
    );
    settings.selector = match regex::Regex::new(&pattern) {
        Ok(re) => ProcessSelector::Pattern(re),
        Err(_) => ProcessSelector::Default,
    };
    settings.pipeline_mode = gravity_exporter::config::PipelineMode::Single;
    if args.pipelines > 1 {
        // The first pipeline's config is the one its gravity runs with; the others are in
        // the same directory: one glob names them all.
        settings.gravity_configs = vec![dir.join("pipelines").join("*.toml")];
        settings.gravity_config = None;
        settings.pipeline_mode = gravity_exporter::config::PipelineMode::Configs;
        settings.selector = ProcessSelector::Default;
    }
    let canary_line = match &canary {
        Ok((db, login)) => {
            settings.canary.interval = Some(Duration::from_secs(2));
            settings.canary.timeout = Duration::from_secs(20);
            settings.canary.login = Some(login.clone());
            format!(
                "  canary:             one row every 2 s into gravity_canary.heartbeat on a private MariaDB (127.0.0.1:{}); source and target are that one server here, so the lag shown is the exporter's own round trip (docs/canary.md)",
                db.port
            )
        }
        Err(why) => format!("  canary:             off ({why})"),
    };
    let _db = canary.ok().map(|(db, _)| db);
    let listener = gravity_exporter::app::bind(&settings).await?;
    let local = listener
        .local_addr()
        .map_err(io("reading the listen address"))?;
    let exp = gravity_exporter::app::start(settings.clone());

    let shown = if local.ip().is_unspecified() {
        format!("127.0.0.1:{}", local.port())
    } else {
        local.to_string()
    };
    let mut helpers = Vec::new();
    let mut lines = vec![
        "gravity-exporter demo is running.".to_string(),
        format!(
            "  simulated gravity:  http://127.0.0.1:{gport}/status  (pid {})",
            sup.pid().unwrap_or(0)
        ),
        format!("  gravity's log:      {}", log.display()),
    ];
    lines.extend(more_lines);
    lines.extend([
        format!(
            "  pipelines:          {} behind this one exporter{}",
            args.pipelines,
            if args.pipelines > 1 {
                " (the page opens on their overview)"
            } else {
                ""
            }
        ),
        "  connection probes:  off (the demo pipeline has no real databases; see docs/connections.md)".to_string(),
        format!(
            "  exporter metrics:   http://{shown}{}",
            settings.telemetry_path
        ),
        format!("  exporter page:      http://{shown}/"),
        canary_line,
    ]);
    if let Some(o) = &settings.telemetry.otlp {
        lines.push(format!(
            "  OTLP export:        {} ({}, every {:?}; docs/opentelemetry.md)",
            o.endpoint,
            o.protocol.as_str(),
            o.interval
        ));
    }
    let am = start_alertmanager(&dir);
    let am_port = am.as_ref().map(|(_, p)| *p);
    if let Some((h, p)) = am {
        helpers.push(h);
        lines.push(format!("  Alertmanager:       http://127.0.0.1:{p}/  (the shipped example; its webhook receivers are placeholders)"));
    }
    if let Some((h, l)) = start_prometheus(&dir, &shown, &settings.telemetry_path, am_port) {
        helpers.push(h);
        lines.push(l);
    } else {
        lines.push("  Prometheus:         not installed (apt-get install prometheus to have the demo start it)".into());
    }
    lines.push(format!(
        "  try a fault:        curl -XPOST 'http://127.0.0.1:{gport}/_double/fault?mode=stall'   (modes: crash, hang, stall, http500, garbage, idle, none)"
    ));
    lines.push("Ctrl-C stops everything.".into());
    println!("{}", lines.join("\n"));

    // Ctrl-C, SIGTERM (a service manager, a test) or the duration: everything the demo
    // started is stopped on the way out.
    let stop = async {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let timer = async {
            match args.duration {
                Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
            _ = timer => {}
        }
    };
    gravity_exporter::server::serve(listener, exp.fleet.clone(), stop).await;
    sup.stop();
    for mut s in more {
        s.stop();
    }
    drop(helpers);
    println!("demo stopped; its files are in {}", dir.display());
    Ok(())
}

/// Starts Debian's Alertmanager with the shipped example config, if installed.
fn start_alertmanager(dir: &Path) -> Option<(Helper, u16)> {
    let bin = which("prometheus-alertmanager").or_else(|| which("alertmanager"))?;
    let port = free_port().ok()?;
    let yml = dir.join("alertmanager.yml");
    std::fs::write(&yml, ALERTMANAGER).ok()?;
    let child = Command::new(bin)
        .arg(format!("--config.file={}", yml.display()))
        .arg(format!(
            "--storage.path={}",
            dir.join("alertmanager-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("alertmanager.log")).ok()?)
        .spawn()
        .ok()?;
    Some((Helper(child), port))
}

/// Starts Debian's Prometheus scraping the exporter with the shipped rules, if installed.
fn start_prometheus(
    dir: &Path,
    exporter: &str,
    path: &str,
    am_port: Option<u16>,
) -> Option<(Helper, String)> {
    let bin = which("prometheus")?;
    let port = free_port().ok()?;
    let yml = dir.join("prometheus.yml");
    let rec = dir.join("gravity-recording.rules.yml");
    let alerts = dir.join("gravity-alerts.rules.yml");
    std::fs::write(&rec, RECORDING_RULES).ok()?;
    std::fs::write(&alerts, ALERT_RULES).ok()?;
    let alerting = am_port
        .map(|p| format!("alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{p}']\n"))
        .unwrap_or_default();
    let text = format!(
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\nrule_files:\n  - {}\n  - {}\n{alerting}scrape_configs:\n  - job_name: gravity-exporter\n    metrics_path: {path}\n    static_configs:\n      - targets: ['{exporter}']\n",
        rec.display(),
        alerts.display()
    );
    std::fs::write(&yml, text).ok()?;
    let child = Command::new(bin)
        .arg(format!("--config.file={}", yml.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prometheus-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("prometheus.log")).ok()?)
        .spawn()
        .ok()?;
    Some((
        Helper(child),
        format!("  Prometheus:         http://127.0.0.1:{port}/"),
    ))
}

/// The demo's gravity config with its source and target on the private server (one server
/// for both), and a route for the canary table.
fn demo_config_with_database(port: u16) -> String {
    DEMO_CONFIG
        .replace("port = 3306", &format!("port = {port}"))
        .replace("port = 3307", &format!("port = {port}"))
        + "\n[[output.config.routes]]\nmatch-schema = \"gravity_canary\"\nmatch-table = \"heartbeat\"\n"
}

/// Makes the logins the canary needs on the private server: the canary's own writer and
/// gravity's target user of the demo config (the exporter reads the target as gravity).
async fn prepare_canary(
    db: crate::mariadb::PrivateMariaDb,
) -> Result<(crate::mariadb::PrivateMariaDb, MonitorLogin), String> {
    use gravity_exporter::probe::mysql::MySqlConn;
    use gravity_exporter::probe::{Endpoint, Secret};
    let ep = Endpoint::new("127.0.0.1", db.port);
    let mut root = MySqlConn::connect(&ep, "root", &Secret::default(), Duration::from_secs(10))
        .await
        .map_err(|e| format!("private MariaDB: {e}"))?;
    // a password of this run only, handed to the exporter in memory
    let pw = format!("demo-canary-{:x}", std::process::id() ^ u32::from(db.port));
    for stmt in [
        format!("CREATE USER IF NOT EXISTS 'gx_canary'@'%' IDENTIFIED BY '{pw}'"),
        "GRANT CREATE, INSERT, UPDATE, SELECT ON gravity_canary.* TO 'gx_canary'@'%'".to_string(),
        "CREATE USER IF NOT EXISTS 'writer'@'%' IDENTIFIED BY 's3cret-target-pw'".to_string(),
        "GRANT SELECT ON gravity_canary.* TO 'writer'@'%'".to_string(),
    ] {
        root.query(&stmt)
            .await
            .map_err(|e| format!("private MariaDB: {e}"))?;
    }
    Ok((
        db,
        MonitorLogin {
            user: "gx_canary".into(),
            password: Secret::new(pw),
        },
    ))
}
