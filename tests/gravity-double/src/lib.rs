//! A test double of gravity (github.com/moiot/gravity): the exporter's tests and its demo run
//! against this instead of the real Go program, which cannot be built here.
//!
//! This crate is a member of the gravity-exporter workspace and never part of the shipped
//! exporter. Its binary `gravity-double` is started through a symlink named `gravity`
//! ([`install_gravity_link`]) and runs [`main_from_args`], so the process's `comm` and command
//! line are gravity's:
//! `gravity --config=/x/config.toml --http-addr=127.0.0.1:18080 --log-file=/x/gravity.log`.
//! The double then behaves like a gravity pipeline built from that config file:
//!
//! * the same command line (Go `flag` rules), startup log lines, log formats and rotation;
//! * `/metrics` with every family of a real gravity, counters that are exact functions of time
//!   (`floor(share × R × t)`, see [`sim`]), real `process_*` figures from `/proc/self`;
//! * `/status` and `/healthz` shaped like gravity's, `/reset` recorded and fatal;
//! * fault modes and error injection through `/_double/*` (which real gravity does not have);
//! * exit codes like gravity's: fatal → 1, batch done or signal → 0, config file changed → 0.
//!
//! [`Supervisor`] restarts the double like systemd's `Restart=always` would.
//!
//! Environment knobs: `GRAVITY_DOUBLE_RATE` (rows/s, default 200), `GRAVITY_DOUBLE_LAG_SECONDS`
//! (mean lag, 0.8), `GRAVITY_DOUBLE_DDL_EVERY` (s), `GRAVITY_DOUBLE_RETRY_EVERY` (s),
//! `GRAVITY_DOUBLE_NO_POSITION=1`, `GRAVITY_DOUBLE_TZ_OFFSET` (+08:00), `GRAVITY_DOUBLE_LOG_MAX_BYTES`,
//! `GRAVITY_DOUBLE_FAULT` (initial mode), `GRAVITY_DOUBLE_BINLOG_FILE_BYTES` (1 MiB),
//! `GRAVITY_DOUBLE_BATCH_ROWS` (12000), `GRAVITY_DOUBLE_POSITION_DELAY_MS` (300),
//! `GRAVITY_DOUBLE_KAFKA_PRODUCE=1` (an `async-kafka` config: be gravity's data path to the
//! brokers, [`kafka_out`]).
//!
//! The fake servers of the tests live here too: the Kafka broker ([`kafka`], with [`tls`] and
//! [`scram`]) and, re-exported, the fake mongod.

#![forbid(unsafe_code)]

mod app;
pub mod config;
pub mod demo;
pub mod expo;
pub mod flags;
pub mod gofmt;
pub mod kafka;
pub mod kafka_out;
pub mod logw;
pub mod mariadb;
pub mod mongo;
pub mod otlp;
pub mod scram;
pub mod server;
pub mod sim;
pub mod status;
pub mod supervisor;
pub mod tls;

pub use app::ErrorKind;
pub use sim::Mode;
pub use supervisor::{
    install_gravity_link, ExitRecord, Restart, Signal, Supervisor, SupervisorConfig,
    SupervisorError, SupervisorStatus,
};

use std::ffi::OsString;
use std::io::Write;
use std::time::{Duration, SystemTime};

fn fatal_to_stderr(zone: gofmt::ZoneOffset, msg: &str) {
    let line = logw::render(
        logw::Format::Json,
        &gofmt::rfc3339(SystemTime::now(), zone),
        logw::Level::Fatal,
        None,
        msg,
        None,
    );
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Runs the double with gravity's command line (`args[0]` is the program name) and returns
/// the process exit code: 0 after a signal, a finished batch or a config change; 1 after a
/// fatal condition (crash fault, `/reset`, bad config, port in use); 1 for a bad command
/// line too (gravity `log.Fatal`s on it), 0 for `-h`/`-V`.
pub fn main_from_args(args: Vec<OsString>) -> i32 {
    let settings = sim::Settings::from_lookup(|k| std::env::var(k).ok());
    let zone = settings.zone;
    let args: Vec<String> = args
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let flags = match flags::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            if e.prints_usage() {
                let mut err = std::io::stderr();
                if !matches!(e, flags::FlagError::Help) {
                    let _ = writeln!(err, "{e}");
                }
                let _ = err.write_all(flags::usage().as_bytes());
            }
            if matches!(e, flags::FlagError::Help) {
                return 0;
            }
            fatal_to_stderr(zone, &format!("parse cmd flags errors: {e}\n"));
            return 1;
        }
    };
    if flags.version {
        println!(
            "Release Version (gravity): {}\nGit Commit Hash: 0000000000000000000000000000000000000000\nGit Branch: gravity-exporter-double\nUTC Build Time: 2026-01-01 00:00:00",
            status::VERSION
        );
        return 0;
    }
    if flags.config.is_empty() {
        fatal_to_stderr(zone, "config must not be empty");
        return 1;
    }
    let spec = match config::load(&flags.config) {
        Ok(s) => s,
        Err(config::ConfigError::Read { path, source }) => {
            fatal_to_stderr(
                zone,
                &format!(
                    "failed to load config from file: open {path}: {}",
                    go_io_text(&source)
                ),
            );
            return 1;
        }
        Err(e) => {
            fatal_to_stderr(zone, &format!("failed to load config from file: {e}"));
            return 1;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("gravity-double")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            fatal_to_stderr(zone, &format!("runtime: {e}"));
            return 1;
        }
    };
    let code = rt.block_on(app::run(flags, spec, settings));
    rt.shutdown_timeout(Duration::from_millis(200));
    code
}

fn go_io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// The `gravity-double` executable for tests of this workspace, built when needed.
///
/// `GRAVITY_DOUBLE_BIN` names it explicitly. Otherwise it is the binary of the same cargo
/// profile as the running test (`target/<profile>/gravity-double`), brought up to date once
/// per test process with `cargo build -p gravity-double` (a no-op when it is fresh), so that
/// `cargo test -p gravity-exporter --test x` from a clean clone works and never runs a stale
/// double.
pub fn binary() -> Result<std::path::PathBuf, String> {
    use std::path::PathBuf;
    use std::sync::OnceLock;
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("GRAVITY_DOUBLE_BIN") {
            return Ok(PathBuf::from(p));
        }
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .filter(|d| d.file_name().is_some_and(|n| n == "deps"))
            .and_then(|d| d.parent())
            .or_else(|| exe.parent())
            .ok_or("cannot place the test executable in a target directory")?
            .to_path_buf();
        let bin = profile_dir.join("gravity-double");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "gravity-double",
            "--bin",
            "gravity-double",
        ])
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        if let Some(target) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target);
        }
        match cmd.status() {
            Ok(s) if s.success() && bin.is_file() => Ok(bin),
            Ok(s) => Err(format!(
                "`cargo build -p gravity-double` failed ({s}); build it, or set GRAVITY_DOUBLE_BIN"
            )),
            Err(e) => Err(format!(
                "cannot run cargo to build gravity-double ({e}); set GRAVITY_DOUBLE_BIN"
            )),
        }
    })
    .clone()
}
