//! The exporter's own configuration: command-line flags, the optional TOML file given
//! with `--config.file`, and their validation into [`Settings`].
//!
//! Flags follow the Prometheus exporter-toolkit spelling (`--web.listen-address`). Every
//! flag can also be a key of the TOML file, where the dots make tables, so
//! `web.listen-address = ":9810"` and `[web]` / `listen-address = ":9810"` are the same
//! key. A flag given on the command line wins over the file; the file wins over the
//! default. Validation errors name the key and are printed as one line; the binary then
//! exits with code 2.
//!
//! `SIGHUP` re-reads the file ([`Settings::reload`]); a bad file is rejected and the
//! settings in force stay.
#![warn(clippy::arithmetic_side_effects)]

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use hyper::Uri;
use regex::Regex;
use serde::{Deserialize, Serialize};

pub mod consistency;
mod error;
pub mod otlp;

use consistency::{parse_tables, TableSpec, MAX_CHUNK_SIZE};

/// Default listen address, from the Prometheus port allocation wiki range.
pub const DEFAULT_LISTEN: &str = ":9810";

pub use error::ConfigError;

/// A MySQL login the exporter uses instead of gravity's own (`--source.username`,
/// `--source.password-file`, same for target). The password is read when the settings are
/// loaded (again on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorLogin {
    /// User name.
    pub user: String,
    /// Password (redacted `Debug`).
    pub password: crate::redact::Secret,
}

/// Longest password file read, in bytes.
const MAX_PASSWORD_FILE: u64 = 4096;

fn monitor_login(
    side: &str,
    user: Option<&str>,
    password_file: Option<&std::path::Path>,
) -> Result<Option<MonitorLogin>, ConfigError> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        if password_file.is_some() {
            return Err(invalid(
                &format!("{side}.password-file"),
                format!("needs {side}.username"),
            ));
        }
        return Ok(None);
    };
    let password = match password_file {
        None => String::new(),
        Some(path) => {
            let key = format!("{side}.password-file");
            let len = std::fs::metadata(path)
                .map_err(|e| invalid(&key, format!("{}: {e}", path.display())))?
                .len();
            if len > MAX_PASSWORD_FILE {
                return Err(invalid(
                    &key,
                    format!(
                        "{} is larger than {MAX_PASSWORD_FILE} bytes",
                        path.display()
                    ),
                ));
            }
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(&key, format!("{}: {e}", path.display())))?;
            text.trim_end_matches(['\n', '\r']).to_string()
        }
    };
    Ok(Some(MonitorLogin {
        user: user.to_string(),
        password: crate::redact::Secret::new(password),
    }))
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "gravity-exporter",
    version,
    about = "Prometheus exporter sidecar for gravity replication pipelines",
    long_about = None
)]
pub struct Cli {
    /// What to run; without a subcommand the exporter serves metrics.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Flags shared by every subcommand.
    #[command(flatten)]
    pub flags: Flags,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a simulated gravity pipeline and the exporter watching it, and print where to look.
    Demo(DemoArgs),
    /// Run every health check once and exit with a Nagios code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
    Check(CheckArgs),
}

/// Flags of `check`.
#[derive(Debug, Args, Clone)]
pub struct CheckArgs {
    /// Output: `text` (a Nagios status line with perfdata, then one line per check) or `json`.
    #[arg(long = "format", default_value = "text", value_parser = ["text", "json"])]
    pub format: String,
    /// Check only the pipeline of this name (several on the host); default: every one,
    /// the worst verdict wins.
    #[arg(long = "pipeline")]
    pub pipeline: Option<String>,
}

/// Flags of `demo`.
#[derive(Debug, Args, Clone)]
pub struct DemoArgs {
    /// Rows per second the simulated pipeline replicates.
    #[arg(long = "demo.rate", default_value_t = 200)]
    pub rate: u32,
    /// Port of the simulated gravity's HTTP API (0 picks a free one).
    #[arg(long = "demo.gravity-port", default_value_t = 0)]
    pub gravity_port: u16,
    /// Directory for the demo's files (default: a new temporary directory).
    #[arg(long = "demo.dir")]
    pub dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long = "demo.duration")]
    pub duration: Option<u64>,
    /// Simulated pipelines behind the one exporter (each its own gravity, config, port and
    /// log, found through `--gravity.config='<dir>/pipelines/*.toml'`).
    #[arg(long = "demo.pipelines", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub pipelines: u32,
}

/// Every flag, all optional so that the config file can supply what the command line does not.
/// (serde: the field-by-field merge of the command line over the file, [`Flags::or`].)
#[derive(Debug, Args, Clone, Default, Serialize, Deserialize)]
pub struct Flags {
    /// TOML file with any of these flags as keys (flags given on the command line win).
    #[arg(long = "config.file", global = true)]
    pub config_file: Option<PathBuf>,
    /// Address to listen on for the web interface and telemetry [default: :9810].
    #[arg(long = "web.listen-address", global = true)]
    pub listen_address: Option<String>,
    /// Path under which to expose metrics [default: /metrics].
    #[arg(long = "web.telemetry-path", global = true)]
    pub telemetry_path: Option<String>,
    /// gravity's HTTP base URL [default: discovered from --http-addr, else http://127.0.0.1:8080].
    #[arg(long = "gravity.url", global = true)]
    pub gravity_url: Option<String>,
    /// File holding gravity's pid (re-read on every check, so restarts are followed).
    #[arg(long = "gravity.pid-file", global = true)]
    pub pid_file: Option<PathBuf>,
    /// gravity's pid (fixed: a restarted gravity is not followed).
    #[arg(long = "gravity.pid", global = true)]
    pub pid: Option<i64>,
    /// Regex matched against the command line of every process to find gravity
    /// [default: the process whose executable is named gravity].
    #[arg(long = "gravity.process-pattern", global = true)]
    pub process_pattern: Option<String>,
    /// gravity's config file (TOML or JSON) [default: discovered from --config]. A glob
    /// (`/etc/gravity/*.toml`) or the flag repeated watches one pipeline per file.
    #[arg(long = "gravity.config", global = true, action = clap::ArgAction::Append, value_delimiter = ',')]
    pub gravity_config: Option<Vec<PathBuf>>,
    /// gravity's log file [default: discovered from --log-file].
    #[arg(long = "gravity.log-file", global = true)]
    pub log_file: Option<PathBuf>,
    /// File where the log read offset is kept across exporter restarts; "none" turns it
    /// off [default: log-state-<hash of the log path>.json in $STATE_DIRECTORY, else in
    /// /var/lib/gravity-exporter when writable, else under $XDG_STATE_HOME, ~/.local/state
    /// or the temp dir].
    #[arg(long = "gravity.log-state-file", global = true)]
    pub log_state_file: Option<PathBuf>,
    /// Where to start reading an existing log the first time: end or beginning [default: end].
    #[arg(long = "gravity.log-start", global = true)]
    pub log_start: Option<String>,
    /// Format of gravity's log: json, text or console [default: detect].
    #[arg(long = "gravity.log-format", global = true)]
    pub log_format: Option<String>,
    /// Pass gravity's own /metrics families through unchanged [default: true].
    #[arg(long = "gravity.metrics-passthrough", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub passthrough: Option<bool>,
    /// Most series of gravity's /metrics passed through; the rest are dropped and counted [default: 10000].
    #[arg(long = "gravity.metrics-passthrough-max-series", global = true)]
    pub passthrough_max_series: Option<usize>,
    /// Timeout of each request to gravity's HTTP API [default: 2s].
    #[arg(long = "gravity.timeout", global = true)]
    pub gravity_timeout: Option<String>,
    /// How often the collectors run [default: 5s].
    #[arg(long = "collector.interval", global = true)]
    pub interval: Option<String>,
    /// How often the collectors run while nobody reads (no scrape of /metrics, no status
    /// page, no /api/status for twice this long); a read makes them run at once and at
    /// --collector.interval again. 0s: always --collector.interval [default: 60s].
    #[arg(long = "collector.idle-interval", global = true)]
    pub idle_interval: Option<String>,
    /// Time collections to the readers: when a reader (a Prometheus scraping /metrics, an
    /// OTLP export) comes at a steady pace slower than --collector.interval, collect just
    /// before each of its reads instead of every --collector.interval; false: always
    /// --collector.interval while someone reads [default: true].
    #[arg(long = "collector.follow-readers", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub follow_readers: Option<bool>,
    /// How often the process watcher looks at gravity's pid where no pidfd is available
    /// (with one, gravity's exit is an event) [default: 100ms].
    #[arg(long = "collector.process-watch-interval", global = true)]
    pub watch_interval: Option<String>,
    /// How often the connection probes run; 0s turns off every check that logs in to
    /// gravity's databases (connection probes and source binlog checks) [default: 15s].
    #[arg(long = "probe.interval", global = true)]
    pub probe_interval: Option<String>,
    /// Deadline of each connection probe and source query [default: 3s].
    #[arg(long = "probe.timeout", global = true)]
    pub probe_timeout: Option<String>,
    /// Tables the opt-in consistency checker compares between gravity's MySQL source and
    /// target: `schema.table` or `schema.table=target_schema.target_table`, comma-separated
    /// [default: none, the checker is off].
    #[arg(long = "consistency.tables", global = true)]
    pub consistency_tables: Option<String>,
    /// How often a consistency run starts [default: 10m].
    #[arg(long = "consistency.interval", global = true)]
    pub consistency_interval: Option<String>,
    /// Rows per compared chunk [default: 1000].
    #[arg(long = "consistency.chunk-size", global = true)]
    pub consistency_chunk_size: Option<usize>,
    /// Deadline of each consistency query [default: 30s].
    #[arg(long = "consistency.timeout", global = true)]
    pub consistency_timeout: Option<String>,
    /// Wait before comparing a differing chunk again [default: 10s].
    #[arg(long = "consistency.recheck-delay", global = true)]
    pub consistency_recheck_delay: Option<String>,
    /// How often the opt-in canary writes one row into gravity's MySQL source and follows
    /// it to the target (docs/canary.md); 0s turns it off [default: 0s, off].
    #[arg(long = "canary.interval", global = true)]
    pub canary_interval: Option<String>,
    /// The canary table on gravity's source, `schema.table` (`db.collection` for a Mongo
    /// source), in a schema of its own [default: gravity_canary.heartbeat].
    #[arg(long = "canary.table", global = true)]
    pub canary_table: Option<String>,
    /// Create the canary schema and table on first use when they are missing [default: true].
    #[arg(long = "canary.create", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub canary_create: Option<bool>,
    /// MySQL user the canary writes with (needs INSERT, UPDATE, SELECT on the canary table;
    /// CREATE for --canary.create), or MongoDB user (readWrite on the canary database, in
    /// gravity's auth database); required when the canary is on.
    #[arg(long = "canary.username", global = true)]
    pub canary_username: Option<String>,
    /// File holding the password of `--canary.username` (one line) [default: empty].
    #[arg(long = "canary.password-file", global = true)]
    pub canary_password_file: Option<PathBuf>,
    /// A canary not seen at the target within this time counts as lost [default: 60s].
    #[arg(long = "canary.timeout", global = true)]
    pub canary_timeout: Option<String>,
    /// MySQL user the exporter logs in to gravity's source with, instead of gravity's own
    /// user (see docs/connections.md for the grants) [default: gravity's user].
    #[arg(long = "source.username", global = true)]
    pub source_username: Option<String>,
    /// File holding the password of `--source.username` (one line) [default: empty].
    #[arg(long = "source.password-file", global = true)]
    pub source_password_file: Option<PathBuf>,
    /// MySQL user the exporter logs in to gravity's target with, instead of gravity's own
    /// [default: gravity's user].
    #[arg(long = "target.username", global = true)]
    pub target_username: Option<String>,
    /// File holding the password of `--target.username` (one line) [default: empty].
    #[arg(long = "target.password-file", global = true)]
    pub target_password_file: Option<PathBuf>,
    /// Root of the proc filesystem [default: /proc].
    #[arg(long = "path.procfs", global = true)]
    pub proc_root: Option<PathBuf>,
    /// The exporter's own log level: debug, info, warn, error [default: info].
    #[arg(long = "log.level", global = true)]
    pub log_level: Option<String>,
    /// The exporter's own log format: logfmt or json [default: logfmt].
    #[arg(long = "log.format", global = true)]
    pub log_fmt: Option<String>,
    /// Web config file (Prometheus exporter-toolkit format) enabling TLS, client certificates
    /// and basic auth on the exporter's port; re-read on change [default: none, plain HTTP].
    #[arg(long = "web.config.file", global = true)]
    pub web_config_file: Option<PathBuf>,
    /// OpenTelemetry export (`--otlp.*`) and `--log-entries.file`.
    #[command(flatten)]
    pub otlp: crate::config::otlp::OtlpFlags,
}

/// The `--config.file` TOML read by the same clap definitions as the command line: every
/// key is a flag's long name (dots make tables, so `[gravity] url = ...` is
/// `--gravity.url`), turned into `--key=value`. One declaration per setting (the field of
/// [`Flags`]), whichever way it is given.
#[derive(Debug, Parser)]
#[command(
    name = "config.file",
    no_binary_name = true,
    disable_help_flag = true,
    disable_version_flag = true
)]
struct FileArgs {
    #[command(flatten)]
    flags: Flags,
}

impl Flags {
    /// Fills every flag not given here from `other` (command-line flags win over the file),
    /// field by field through the flags' serde form, so no setting is listed twice.
    fn or(self, other: Flags) -> Result<Flags, ConfigError> {
        fn merge(a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
            use serde_json::Value;
            match (a, b) {
                (Value::Object(mut a), Value::Object(b)) => {
                    for (k, bv) in b {
                        let av = a.remove(&k).unwrap_or(Value::Null);
                        a.insert(k, merge(av, bv));
                    }
                    Value::Object(a)
                }
                (Value::Null, b) => b,
                (a, _) => a,
            }
        }
        let form = |f: &Flags| {
            serde_json::to_value(f).map_err(|e| ConfigError::Invalid {
                key: "config.file".into(),
                reason: format!("a flag cannot be merged with the file: {e}"),
            })
        };
        let merged = merge(form(&self)?, form(&other)?);
        serde_json::from_value(merged).map_err(|e| ConfigError::Invalid {
            key: "config.file".into(),
            reason: format!("a flag cannot be merged with the file: {e}"),
        })
    }
}

/// How the exporter finds its pipelines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineMode {
    /// One pipeline: one `--gravity.config` file (no glob), or a pid, pid file, pattern or
    /// URL that names one gravity.
    Single,
    /// One pipeline per file matching `--gravity.config` (a glob, or the flag repeated).
    Configs,
    /// No flag names gravity: every gravity process of the host is a pipeline, one per
    /// config file it runs with.
    Auto,
}

/// Whether a path holds glob characters.
pub fn is_glob(p: &Path) -> bool {
    p.to_string_lossy().contains(['*', '?', '['])
}

fn pipeline_mode(
    configs: &[PathBuf],
    gravity_url: bool,
    f_pid: bool,
    f_pid_file: bool,
    f_log_file: bool,
    selector: &ProcessSelector,
) -> Result<PipelineMode, ConfigError> {
    let several = configs.len() > 1 || configs.iter().any(|p| is_glob(p));
    if several {
        let one_only = [
            ("gravity.pid", f_pid),
            ("gravity.pid-file", f_pid_file),
            ("gravity.url", gravity_url),
            ("gravity.log-file", f_log_file),
        ];
        if let Some((key, _)) = one_only.iter().find(|(_, given)| *given) {
            return Err(invalid(
                key,
                "names one gravity; with several gravity.config files each pipeline's comes from its own process (leave it out, or run one exporter per pipeline)",
            ));
        }
        return Ok(PipelineMode::Configs);
    }
    let names_one = !configs.is_empty()
        || gravity_url
        || f_log_file
        || !matches!(selector, ProcessSelector::Default);
    Ok(if names_one {
        PipelineMode::Single
    } else {
        PipelineMode::Auto
    })
}

/// How the gravity process is found.
#[derive(Debug, Clone)]
pub enum ProcessSelector {
    /// A fixed pid.
    Pid(i32),
    /// A pid file, re-read on every look.
    PidFile(PathBuf),
    /// A regex on the command line (arguments joined by spaces).
    Pattern(Regex),
    /// The process whose executable (comm or argv\[0\]) is named `gravity`.
    Default,
}

/// Format of gravity's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GravityLogFormat {
    /// logrus JSON (gravity's default).
    Json,
    /// gravity's `text` format (also `highlight`, the same with colours).
    Text,
    /// logrus text formatter (`console`).
    Console,
}

impl GravityLogFormat {
    /// Parses gravity's `--log-format` values.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Self::Json),
            "text" => Some(Self::Text),
            "console" => Some(Self::Console),
            // gravity's `highlight` is its text format with colours (pkg/logutil)
            "highlight" => Some(Self::Text),
            _ => None,
        }
    }
}

/// The exporter's own log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnLogFormat {
    /// `key=value` lines.
    Logfmt,
    /// One JSON object per line.
    Json,
}

/// Settings of the opt-in consistency checker (off while `tables` is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencySettings {
    /// Tables to compare.
    pub tables: Vec<TableSpec>,
    /// How often a run starts.
    pub interval: Duration,
    /// Rows per chunk.
    pub chunk_size: usize,
    /// Deadline of each query (and of each login).
    pub timeout: Duration,
    /// Wait before comparing a differing chunk again.
    pub recheck_delay: Duration,
}

/// Settings of the opt-in canary (off while `interval` is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanarySettings {
    /// One row per interval; `None`: off.
    pub interval: Option<Duration>,
    /// Schema of the canary table on the source.
    pub schema: String,
    /// The canary table.
    pub table: String,
    /// Whether the schema and table may be created when missing.
    pub create: bool,
    /// The canary's own login (required when on).
    pub login: Option<MonitorLogin>,
    /// A canary not seen at the target within this time counts as lost.
    pub timeout: Duration,
}

impl CanarySettings {
    /// Whether the canary runs.
    pub fn enabled(&self) -> bool {
        self.interval.is_some()
    }
}

/// Schemas the canary never writes into: gravity's own (`_gravity`, and its
/// `internal-db-name` is checked at run time), and the server's (MySQL's, MongoDB's).
pub const CANARY_FORBIDDEN_SCHEMAS: [&str; 9] = [
    "_gravity",
    "mysql",
    "information_schema",
    "performance_schema",
    "sys",
    "drc",
    "admin",
    "local",
    "config",
];

/// Default canary table.
pub const DEFAULT_CANARY_TABLE: &str = "gravity_canary.heartbeat";

fn canary_settings(f: &Flags) -> Result<CanarySettings, ConfigError> {
    let interval = match f.canary_interval.as_deref().map(str::trim) {
        None | Some("0" | "0s" | "") => None,
        Some(_) => Some(dur(
            "canary.interval",
            f.canary_interval.clone(),
            Duration::from_secs(10),
            Duration::from_millis(100),
            max::INTERVAL,
        )?),
    };
    let name = f.canary_table.as_deref().unwrap_or(DEFAULT_CANARY_TABLE);
    let (schema, table) = match name.trim().split_once('.') {
        Some((a, b))
            if !a.trim().is_empty()
                && !b.trim().is_empty()
                && !b.contains('.')
                && a.len() <= 64
                && b.len() <= 64 =>
        {
            (a.trim().to_string(), b.trim().to_string())
        }
        _ => {
            return Err(invalid(
                "canary.table",
                format!("{name:?} is not schema.table (each at most 64 bytes)"),
            ))
        }
    };
    if CANARY_FORBIDDEN_SCHEMAS
        .iter()
        .any(|s| s.eq_ignore_ascii_case(&schema))
    {
        return Err(invalid(
            "canary.table",
            format!("{schema:?} is gravity's or the server's own schema: give the canary a schema of its own"),
        ));
    }
    let login = monitor_login(
        "canary",
        f.canary_username.as_deref(),
        f.canary_password_file.as_deref(),
    )?;
    if interval.is_some() && login.is_none() {
        return Err(invalid(
            "canary.username",
            "the canary writes with a login of its own: give canary.username (and canary.password-file)",
        ));
    }
    let timeout = dur(
        "canary.timeout",
        f.canary_timeout.clone(),
        Duration::from_secs(60),
        Duration::from_millis(100),
        max::INTERVAL,
    )?;
    Ok(CanarySettings {
        interval,
        schema,
        table,
        create: f.canary_create.unwrap_or(true),
        login,
        timeout,
    })
}

/// Validated settings in force.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file they came from, for reloads.
    pub config_file: Option<PathBuf>,
    /// Listen address.
    pub listen: SocketAddr,
    /// Metrics path.
    pub telemetry_path: String,
    /// gravity's HTTP base URL given by the user (else discovered).
    pub gravity_url: Option<Uri>,
    /// How to find gravity.
    pub selector: ProcessSelector,
    /// gravity's config file of this pipeline: given by the user (one file), set per
    /// pipeline from `gravity_configs` (several), else discovered from the process.
    pub gravity_config: Option<PathBuf>,
    /// `--gravity.config` as given: paths or globs, one pipeline per matching file.
    pub gravity_configs: Vec<PathBuf>,
    /// How pipelines are found ([`PipelineMode`]).
    pub pipeline_mode: PipelineMode,
    /// The process of this pipeline must run with `gravity_config` as its `--config`
    /// (several pipelines on one host); otherwise a process with another `--config` is
    /// still not taken, but one whose config cannot be told is.
    pub config_strict: bool,
    /// gravity's log file given by the user (else discovered).
    pub log_file: Option<PathBuf>,
    /// gravity's log format given by the user (else discovered, else detected).
    pub log_format: Option<GravityLogFormat>,
    /// Where the log offset is saved.
    pub log_state_file: Option<PathBuf>,
    /// Without `--gravity.log-state-file`: the directory of the default state files, one per
    /// followed log ([`Settings::log_state_file_for`]).
    pub log_state_dir: Option<PathBuf>,
    /// Start at the end of an existing log the first time (else at its beginning).
    pub log_start_at_end: bool,
    /// Timeout of each gravity API request.
    pub gravity_timeout: Duration,
    /// Pass gravity's families through.
    pub passthrough: bool,
    /// Series cap of the pass-through.
    pub passthrough_max_series: usize,
    /// Collection interval.
    pub interval: Duration,
    /// Collection interval while nobody reads (`None`: always `interval`); never below
    /// `interval`.
    pub idle_interval: Option<Duration>,
    /// Time collections to steady readers slower than `interval` (`--collector.follow-readers`).
    pub follow_readers: bool,
    /// Process watch interval.
    pub watch_interval: Duration,
    /// Connection probe interval; `None` when probes and source checks are turned off (`0s`).
    pub probe_interval: Option<Duration>,
    /// Deadline of each connection probe and source query.
    pub probe_timeout: Duration,
    /// The opt-in consistency checker.
    pub consistency: ConsistencySettings,
    /// The opt-in canary.
    pub canary: CanarySettings,
    /// Monitoring login for gravity's MySQL source (`--source.username`), else gravity's.
    pub source_login: Option<MonitorLogin>,
    /// Monitoring login for gravity's MySQL target (`--target.username`), else gravity's.
    pub target_login: Option<MonitorLogin>,
    /// Root of procfs.
    pub proc_root: PathBuf,
    /// Own log level.
    pub log_level: tracing::Level,
    /// Own log format.
    pub log_fmt: OwnLogFormat,
    /// `--web.config.file`: TLS and basic auth on the exporter's port (validated at start;
    /// the server watches it for changes).
    pub web_config_file: Option<PathBuf>,
    /// OpenTelemetry export and the LogEntry JSON lines (`--otlp.*`, `--log-entries.file`).
    pub telemetry: crate::config::otlp::TelemetrySettings,
    /// The command-line flags these came from (kept so that a reload lets them win again).
    cli_flags: Flags,
}

impl Settings {
    /// Builds settings from command-line flags, reading `--config.file` if given.
    pub fn from_flags(cli: Flags) -> Result<Settings, ConfigError> {
        let file_flags = match &cli.config_file {
            Some(path) => read_file(path)?,
            None => Flags::default(),
        };
        let mut s = validate(cli.clone().or(file_flags)?)?;
        s.cli_flags = cli;
        Ok(s)
    }

    /// Re-reads the config file; the command-line flags still win.
    pub fn reload(&self) -> Result<Settings, ConfigError> {
        Settings::from_flags(self.cli_flags.clone())
    }

    /// Settings that differ from `self` in a way that needs a restart of the exporter.
    pub fn restart_needed_for(&self, new: &Settings) -> Vec<&'static str> {
        let mut v = Vec::new();
        if self.listen != new.listen {
            v.push("web.listen-address");
        }
        if self.telemetry_path != new.telemetry_path {
            v.push("web.telemetry-path");
        }
        if self.proc_root != new.proc_root {
            v.push("path.procfs");
        }
        if self.web_config_file != new.web_config_file {
            v.push("web.config.file");
        }
        if self.telemetry != new.telemetry {
            v.push("otlp");
        }
        v
    }
}

fn read_file(path: &Path) -> Result<Flags, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let syntax = |reason: String| ConfigError::Syntax {
        path: path.to_path_buf(),
        reason,
    };
    let table: toml::Table =
        toml::from_str(&text).map_err(|e| syntax(toml_error_line(&text, &e)))?;
    let mut keys = Vec::new();
    flatten_keys("", &table, &mut keys);
    let mut argv = Vec::with_capacity(keys.len());
    for (key, value) in keys {
        let at = |msg: &str| match line_of_key(&text, &key) {
            Some(line) => format!("line {line}, key {key}: {msg}"),
            None => format!("key {key}: {msg}"),
        };
        let value = value.map_err(|m| syntax(at(m)))?;
        if key == "config.file" {
            return Err(syntax(at("a config file cannot name another one")));
        }
        let arg = format!("--{key}={value}");
        // Each key alone first, so an error names its key and line.
        if let Err(e) = FileArgs::try_parse_from([&arg]) {
            let msg = match e.kind() {
                clap::error::ErrorKind::UnknownArgument => "unknown key".to_string(),
                _ => clap_message(&e),
            };
            return Err(syntax(at(&msg)));
        }
        argv.push(arg);
    }
    FileArgs::try_parse_from(argv)
        .map(|a| a.flags)
        .map_err(|e| syntax(clap_message(&e)))
}

/// A clap error on one line, without its "error: " prefix and usage tips.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").trim().to_string()
}

/// The file's keys as flag names (`a.b.c`) with their values as a flag takes them: strings
/// as they are, numbers and booleans printed, lists joined with commas.
fn flatten_keys(
    prefix: &str,
    table: &toml::Table,
    out: &mut Vec<(String, Result<String, &'static str>)>,
) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => flatten_keys(&key, t, out),
            toml::Value::Array(items) => {
                let parts: Result<Vec<String>, &'static str> = items.iter().map(scalar).collect();
                out.push((key, parts.map(|p| p.join(","))));
            }
            v => out.push((key, scalar(v))),
        }
    }
}

fn scalar(v: &toml::Value) -> Result<String, &'static str> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            Err("takes a string, a number, a boolean or a list of them")
        }
    }
}

/// The 1-based line that sets the dotted `key` (under its table header), if written plainly.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    (1..=text.lines().count()).find(|&l| key_at_line(text, l).as_deref() == Some(key))
}

/// One line out of a toml error: "line N, key K: message".
fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map(|p| p.matches('\n').count().saturating_add(1))
                .unwrap_or(1);
            match key_at_line(text, line) {
                Some(key) => format!("line {line}, key {key}: {}", msg.trim()),
                None => format!("line {line}: {}", msg.trim()),
            }
        }
        None => msg.trim().to_string(),
    }
}

/// The dotted key set on 1-based `line` of a TOML text, with the table header above it.
fn key_at_line(text: &str, line: usize) -> Option<String> {
    let mut table = String::new();
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if i.saturating_add(1) == line {
            let (k, _) = t.split_once('=')?;
            let k = k.trim().trim_matches('"');
            return Some(if table.is_empty() {
                k.to_string()
            } else {
                format!("{table}.{k}")
            });
        }
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
    }
    None
}

pub use crate::base::parse_duration;

/// Registers the exporter's own secrets: the user info of `--gravity.url` (its password, and
/// user:password as written) and the passwords of the monitoring logins
/// (`--source.password-file`, `--target.password-file`, `--canary.password-file`).
pub fn register_secrets(s: &Settings) {
    for login in [&s.source_login, &s.target_login, &s.canary.login]
        .into_iter()
        .flatten()
    {
        crate::redact::register_secret(login.password.expose());
    }
    if let Some(u) = &s.gravity_url {
        if let Some(info) = u
            .authority()
            .and_then(|a| a.as_str().rsplit_once('@'))
            .map(|(i, _)| i)
        {
            if let Some((_, pw)) = info.split_once(':') {
                crate::redact::register_secret(pw);
            }
            if info.contains(':') {
                crate::redact::register_secret(info);
            }
        }
    }
}

/// Parses a listen address the way Go and the exporter-toolkit accept it: `:9810`, `host:port`, `[::1]:9810`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| format!("bad port in {s:?}"))?;
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    // host:port with a name: resolve once, at start.
    match s.to_socket_addrs() {
        Ok(mut it) => it
            .next()
            .ok_or_else(|| format!("{s:?} resolves to no address")),
        Err(e) => Err(format!("{s:?} is not host:port ({e})")),
    }
}

/// Upper bounds of the duration flags: a value above is rejected at start (exit 2), so no
/// later arithmetic on a duration (sums, multiples, deadlines) can overflow.
pub mod max {
    use std::time::Duration;
    /// `gravity.timeout` and `probe.timeout`.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
    /// `collector.interval` and `probe.interval`.
    pub const INTERVAL: Duration = Duration::from_secs(24 * 3600);
    /// `collector.process-watch-interval`.
    pub const WATCH_INTERVAL: Duration = Duration::from_secs(3600);
    /// `consistency.interval`.
    pub const CONSISTENCY_INTERVAL: Duration = Duration::from_secs(7 * 24 * 3600);
    /// `consistency.timeout`.
    pub const CONSISTENCY_TIMEOUT: Duration = Duration::from_secs(600);
    /// `consistency.recheck-delay`.
    pub const RECHECK_DELAY: Duration = Duration::from_secs(24 * 3600);
}

fn dur(
    key: &str,
    v: Option<String>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => {
            let d = parse_duration(&s).ok_or_else(|| {
                invalid(
                    key,
                    format!("{s:?} is not a duration like 500ms, 5s or 1m (at most {max:?})"),
                )
            })?;
            if d < min {
                return Err(invalid(
                    key,
                    format!("{s:?} is below the minimum of {min:?}"),
                ));
            }
            if d > max {
                return Err(invalid(
                    key,
                    format!("{s:?} is above the maximum of {max:?}"),
                ));
            }
            Ok(d)
        }
    }
}

fn validate(f: Flags) -> Result<Settings, ConfigError> {
    let canary = canary_settings(&f)?;
    let listen = parse_listen(f.listen_address.as_deref().unwrap_or(DEFAULT_LISTEN))
        .map_err(|r| invalid("web.listen-address", r))?;
    let telemetry_path = f.telemetry_path.unwrap_or_else(|| "/metrics".into());
    if !telemetry_path.starts_with('/') || telemetry_path == "/" {
        return Err(invalid(
            "web.telemetry-path",
            format!("{telemetry_path:?} must start with / and not be / (the landing page)"),
        ));
    }
    let gravity_url = match f.gravity_url {
        None => None,
        Some(u) => Some(parse_gravity_url(&u).map_err(|r| invalid("gravity.url", r))?),
    };
    let given = [
        f.pid.is_some(),
        f.pid_file.is_some(),
        f.process_pattern.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given > 1 {
        return Err(invalid(
            "gravity.pid",
            "give only one of gravity.pid, gravity.pid-file and gravity.process-pattern",
        ));
    }
    let pid_file_given = f.pid_file.is_some();
    let selector = if let Some(pid) = f.pid {
        if !(1..=i64::from(i32::MAX)).contains(&pid) {
            return Err(invalid("gravity.pid", format!("{pid} is not a valid pid")));
        }
        // The range check above makes the conversion infallible.
        ProcessSelector::Pid(i32::try_from(pid).unwrap_or(1))
    } else if let Some(p) = f.pid_file {
        ProcessSelector::PidFile(p)
    } else if let Some(pat) = f.process_pattern {
        let re = Regex::new(&pat).map_err(|e| {
            invalid(
                "gravity.process-pattern",
                e.to_string()
                    .lines()
                    .last()
                    .unwrap_or("bad regex")
                    .trim()
                    .to_string(),
            )
        })?;
        ProcessSelector::Pattern(re)
    } else {
        ProcessSelector::Default
    };
    let pipeline_mode = pipeline_mode(
        f.gravity_config.as_deref().unwrap_or_default(),
        gravity_url.is_some(),
        f.pid.is_some(),
        pid_file_given,
        f.log_file.is_some(),
        &selector,
    )?;
    let log_format = match f.log_format.as_deref() {
        None | Some("") | Some("detect") => None,
        Some(s) => Some(GravityLogFormat::parse(s).ok_or_else(|| {
            invalid(
                "gravity.log-format",
                format!("{s:?} is not one of json, text, console"),
            )
        })?),
    };
    let gravity_timeout = dur(
        "gravity.timeout",
        f.gravity_timeout,
        Duration::from_secs(2),
        Duration::from_millis(10),
        max::REQUEST_TIMEOUT,
    )?;
    let interval = dur(
        "collector.interval",
        f.interval,
        Duration::from_secs(5),
        Duration::from_millis(100),
        max::INTERVAL,
    )?;
    let idle_interval = match f.idle_interval.as_deref().map(str::trim) {
        Some("0" | "0s") => None,
        _ => Some(
            dur(
                "collector.idle-interval",
                f.idle_interval,
                Duration::from_secs(60),
                Duration::from_millis(100),
                max::INTERVAL,
            )?
            .max(interval),
        ),
    };
    let watch_interval = dur(
        "collector.process-watch-interval",
        f.watch_interval,
        Duration::from_millis(100),
        Duration::from_millis(10),
        max::WATCH_INTERVAL,
    )?;
    let probe_interval = match f.probe_interval.as_deref().map(str::trim) {
        Some("0" | "0s") => None,
        _ => Some(dur(
            "probe.interval",
            f.probe_interval,
            Duration::from_secs(15),
            Duration::from_millis(100),
            max::INTERVAL,
        )?),
    };
    let probe_timeout = dur(
        "probe.timeout",
        f.probe_timeout,
        Duration::from_secs(3),
        Duration::from_millis(10),
        max::REQUEST_TIMEOUT,
    )?;
    let consistency = ConsistencySettings {
        tables: parse_tables(f.consistency_tables.as_deref().unwrap_or(""))
            .map_err(|e| invalid("consistency.tables", e))?,
        interval: dur(
            "consistency.interval",
            f.consistency_interval,
            Duration::from_secs(600),
            Duration::from_secs(1),
            max::CONSISTENCY_INTERVAL,
        )?,
        chunk_size: match f.consistency_chunk_size {
            None => 1000,
            Some(n) if (1..=MAX_CHUNK_SIZE).contains(&n) => n,
            Some(n) => {
                return Err(invalid(
                    "consistency.chunk-size",
                    format!("{n} is not between 1 and {MAX_CHUNK_SIZE}"),
                ))
            }
        },
        timeout: dur(
            "consistency.timeout",
            f.consistency_timeout,
            Duration::from_secs(30),
            Duration::from_millis(10),
            max::CONSISTENCY_TIMEOUT,
        )?,
        recheck_delay: dur(
            "consistency.recheck-delay",
            f.consistency_recheck_delay,
            Duration::from_secs(10),
            Duration::from_millis(1),
            max::RECHECK_DELAY,
        )?,
    };
    let log_level = match f.log_level.as_deref().unwrap_or("info") {
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" | "warning" => tracing::Level::WARN,
        "error" => tracing::Level::ERROR,
        other => {
            return Err(invalid(
                "log.level",
                format!("{other:?} is not one of debug, info, warn, error"),
            ))
        }
    };
    let log_fmt = match f.log_fmt.as_deref().unwrap_or("logfmt") {
        "logfmt" => OwnLogFormat::Logfmt,
        "json" => OwnLogFormat::Json,
        other => {
            return Err(invalid(
                "log.format",
                format!("{other:?} is not one of logfmt, json"),
            ))
        }
    };
    let log_start_at_end = match f.log_start.as_deref().unwrap_or("end") {
        "end" => true,
        "beginning" => false,
        other => {
            return Err(invalid(
                "gravity.log-start",
                format!("{other:?} is not one of end, beginning"),
            ))
        }
    };
    if let Some(p) = &f.web_config_file {
        // The whole file is checked at start (TLS files, hashes); errors name its key.
        crate::web_config::WebConfig::load(p)
            .map_err(|e| invalid("web.config.file", e.to_string()))?;
    }
    let telemetry = crate::config::otlp::validate(f.otlp, &|k| std::env::var(k).ok())?;
    Ok(Settings {
        telemetry,
        web_config_file: f.web_config_file,
        config_file: f.config_file,
        log_state_dir: match f.log_state_file {
            None => Some(default_log_state_dir()),
            Some(_) => None,
        },
        log_state_file: match f.log_state_file {
            Some(p) if p.as_os_str().is_empty() || p.as_os_str() == "none" => None,
            p => p,
        },
        log_start_at_end,
        listen,
        telemetry_path,
        gravity_url,
        selector,
        gravity_config: match (&pipeline_mode, f.gravity_config.as_deref()) {
            (PipelineMode::Single, Some([one])) => Some(one.clone()),
            _ => None,
        },
        gravity_configs: f.gravity_config.clone().unwrap_or_default(),
        pipeline_mode,
        config_strict: false,
        log_file: f.log_file,
        log_format,
        gravity_timeout,
        passthrough: f.passthrough.unwrap_or(true),
        follow_readers: f.follow_readers.unwrap_or(true),
        passthrough_max_series: match f.passthrough_max_series {
            Some(0) => {
                return Err(invalid(
                    "gravity.metrics-passthrough-max-series",
                    "must be at least 1 (turn pass-through off with gravity.metrics-passthrough = false)",
                ))
            }
            Some(n) => n,
            None => 10_000,
        },
        interval,
        idle_interval,
        watch_interval,
        probe_interval,
        probe_timeout,
        consistency,
        canary,
        source_login: monitor_login(
            "source",
            f.source_username.as_deref(),
            f.source_password_file.as_deref(),
        )?,
        target_login: monitor_login(
            "target",
            f.target_username.as_deref(),
            f.target_password_file.as_deref(),
        )?,
        proc_root: f.proc_root.unwrap_or_else(|| PathBuf::from("/proc")),
        log_level,
        log_fmt,
        cli_flags: Flags::default(),
    })
}

/// Parses gravity's base URL: `http://host:port` (a path prefix is kept).
pub fn parse_gravity_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("{s:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "scheme {other:?} not supported; gravity serves plain http"
            ))
        }
        None => return Err(format!("{s:?} has no scheme; write http://host:port")),
    }
    if uri.host().is_none() {
        return Err(format!("{s:?} has no host"));
    }
    Ok(uri)
}

/// The default directory of the log state files: systemd's `$STATE_DIRECTORY` (first entry)
/// when set, else `/var/lib/gravity-exporter` when that directory is writable, else
/// `$XDG_STATE_HOME/gravity-exporter`, `~/.local/state/gravity-exporter` or, without a home,
/// `gravity-exporter-<uid>` in the temp dir. It is created when the state is first saved.
pub fn default_log_state_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    default_log_state_dir_from(
        env("STATE_DIRECTORY"),
        env("XDG_STATE_HOME"),
        env("HOME"),
        |d| d.is_dir() && rustix::fs::access(d, rustix::fs::Access::WRITE_OK).is_ok(),
    )
}

/// [`default_log_state_dir`] with its environment given (pure but for `writable`).
pub fn default_log_state_dir_from(
    state_directory: Option<PathBuf>,
    xdg_state_home: Option<PathBuf>,
    home: Option<PathBuf>,
    writable: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(d) = state_directory {
        // systemd joins several StateDirectory= entries with ':'.
        return d
            .to_str()
            .and_then(|s| s.split(':').next())
            .map(PathBuf::from)
            .unwrap_or(d);
    }
    let var_lib = Path::new("/var/lib/gravity-exporter");
    if writable(var_lib) {
        return var_lib.to_path_buf();
    }
    if let Some(d) = xdg_state_home.filter(|d| d.is_absolute()) {
        return d.join("gravity-exporter");
    }
    if let Some(h) = home.filter(|h| h.is_absolute()) {
        return h.join(".local/state/gravity-exporter");
    }
    std::env::temp_dir().join(format!(
        "gravity-exporter-{}",
        rustix::process::getuid().as_raw()
    ))
}

impl Settings {
    /// Where the read position of the log `log` (as configured or discovered) is saved:
    /// `--gravity.log-state-file`, else `log-state-<FNV-1a of the path>.json` in the default
    /// directory, so that several exporters on one host (one per pipeline) never share one.
    pub fn log_state_file_for(&self, log: &Path) -> Option<PathBuf> {
        if let Some(f) = &self.log_state_file {
            return Some(f.clone());
        }
        let dir = self.log_state_dir.as_ref()?;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in log.as_os_str().as_encoded_bytes() {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        Some(dir.join(format!("log-state-{h:016x}.json")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn flags(args: &[&str]) -> Flags {
        let mut v = vec!["gravity-exporter"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).map(|c| c.flags).unwrap_or_default()
    }

    #[test]
    fn defaults() {
        let s = Settings::from_flags(Flags::default()).unwrap();
        assert_eq!(s.listen, "0.0.0.0:9810".parse().unwrap());
        assert_eq!(s.telemetry_path, "/metrics");
        assert!(matches!(s.selector, ProcessSelector::Default));
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.watch_interval, Duration::from_millis(100));
        assert_eq!(s.proc_root, PathBuf::from("/proc"));
        assert!(s.passthrough);
        assert_eq!(s.passthrough_max_series, 10_000);
        let s = Settings::from_flags(flags(&["--gravity.metrics-passthrough=false"])).unwrap();
        assert!(!s.passthrough);
        let s = Settings::from_flags(flags(&["--gravity.metrics-passthrough"])).unwrap();
        assert!(s.passthrough);
        assert_eq!(s.probe_interval, Some(Duration::from_secs(15)));
        assert_eq!(s.probe_timeout, Duration::from_secs(3));
    }

    #[test]
    fn probe_flags_and_file_keys() {
        let s = Settings::from_flags(flags(&["--probe.interval", "1m", "--probe.timeout=500ms"]))
            .unwrap();
        assert_eq!(s.probe_interval, Some(Duration::from_secs(60)));
        assert_eq!(s.probe_timeout, Duration::from_millis(500));
        let s = Settings::from_flags(flags(&["--probe.interval", "0s"])).unwrap();
        assert_eq!(s.probe_interval, None, "0s turns probes off");
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[probe]\ninterval = \"30s\"\ntimeout = \"2s\"").unwrap();
        let p = f.path().to_str().unwrap().to_string();
        let s = Settings::from_flags(flags(&["--config.file", &p])).unwrap();
        assert_eq!(s.probe_interval, Some(Duration::from_secs(30)));
        assert_eq!(s.probe_timeout, Duration::from_secs(2));
        let s =
            Settings::from_flags(flags(&["--config.file", &p, "--probe.timeout", "1s"])).unwrap();
        assert_eq!(
            s.probe_timeout,
            Duration::from_secs(1),
            "flag wins over file"
        );
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "probe.interval = \"0s\"\nprobe.timeout = \"250ms\"").unwrap();
        let p = f.path().to_str().unwrap().to_string();
        let s = Settings::from_flags(flags(&["--config.file", &p])).unwrap();
        assert_eq!(s.probe_interval, None);
        assert_eq!(s.probe_timeout, Duration::from_millis(250));
        for (args, key) in [
            (&["--probe.interval", "often"][..], "probe.interval"),
            (&["--probe.interval", "1ms"][..], "probe.interval"),
            (&["--probe.timeout", "1ms"][..], "probe.timeout"),
            (&["--probe.timeout", "2m"][..], "probe.timeout"),
        ] {
            let e = Settings::from_flags(flags(args)).unwrap_err().to_string();
            assert!(e.contains(key), "{args:?}: {e}");
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[probe]\ninterval = \"5s\"\ntimeot = \"1s\"").unwrap();
        let p = f.path().to_str().unwrap().to_string();
        let e = Settings::from_flags(flags(&["--config.file", &p]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("timeot") && e.contains("line 3"), "{e}");
    }

    #[test]
    fn consistency_flags_and_file() {
        let s = Settings::from_flags(flags(&[])).unwrap();
        assert!(s.consistency.tables.is_empty(), "off by default");
        assert_eq!(s.consistency.interval, Duration::from_secs(600));
        assert_eq!(s.consistency.chunk_size, 1000);
        let s = Settings::from_flags(flags(&[
            "--consistency.tables",
            "shop.orders,shop.users=copy.users",
            "--consistency.interval=1m",
            "--consistency.chunk-size=50",
            "--consistency.recheck-delay=100ms",
        ]))
        .unwrap();
        assert_eq!(s.consistency.tables.len(), 2);
        assert_eq!(
            s.consistency.tables[1].target,
            Some(("copy".to_string(), "users".to_string()))
        );
        assert_eq!(s.consistency.interval, Duration::from_secs(60));
        assert_eq!(s.consistency.chunk_size, 50);
        assert_eq!(s.consistency.recheck_delay, Duration::from_millis(100));
        for (args, key) in [
            (
                &["--consistency.tables", "orders"][..],
                "consistency.tables",
            ),
            (
                &["--consistency.chunk-size", "0"][..],
                "consistency.chunk-size",
            ),
            (
                &["--consistency.interval", "10ms"][..],
                "consistency.interval",
            ),
            (&["--consistency.timeout", "1h"][..], "consistency.timeout"),
        ] {
            let e = Settings::from_flags(flags(args)).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[consistency]\ntables = [\"a.b\", \"c.d=e.f\"]\nchunk-size = 10\ntimeout = \"5s\""
        )
        .unwrap();
        let s =
            Settings::from_flags(flags(&["--config.file", f.path().to_str().unwrap()])).unwrap();
        assert_eq!(s.consistency.tables.len(), 2);
        assert_eq!(s.consistency.chunk_size, 10);
        assert_eq!(s.consistency.timeout, Duration::from_secs(5));
    }

    #[test]
    fn canary_flags_and_file() {
        let s = Settings::from_flags(flags(&[])).unwrap();
        assert!(!s.canary.enabled(), "off by default");
        assert_eq!(
            (s.canary.schema.as_str(), s.canary.table.as_str()),
            ("gravity_canary", "heartbeat")
        );
        assert!(s.canary.create);
        assert_eq!(s.canary.timeout, Duration::from_secs(60));
        let mut pw = tempfile::NamedTempFile::new().unwrap();
        writeln!(pw, "Canary-Pw-1").unwrap();
        let pwp = pw.path().to_str().unwrap().to_string();
        let s = Settings::from_flags(flags(&[
            "--canary.interval=2s",
            "--canary.table",
            "probe.beat",
            "--canary.create=false",
            "--canary.username",
            "canary",
            "--canary.password-file",
            &pwp,
            "--canary.timeout=30s",
        ]))
        .unwrap();
        assert_eq!(s.canary.interval, Some(Duration::from_secs(2)));
        assert_eq!(
            (s.canary.schema.as_str(), s.canary.table.as_str()),
            ("probe", "beat")
        );
        assert!(!s.canary.create);
        let login = s.canary.login.as_ref().unwrap();
        assert_eq!(login.user, "canary");
        assert_eq!(login.password.expose(), "Canary-Pw-1");
        assert!(!format!("{s:?}").contains("Canary-Pw-1"), "masked in Debug");
        assert_eq!(s.canary.timeout, Duration::from_secs(30));
        for (args, key) in [
            (&["--canary.interval", "5s"][..], "canary.username"),
            (&["--canary.table", "nodot"][..], "canary.table"),
            (&["--canary.table", "_gravity.x"][..], "canary.table"),
            (&["--canary.table", "mysql.user"][..], "canary.table"),
            (&["--canary.interval", "1ms"][..], "canary.interval"),
        ] {
            let e = Settings::from_flags(flags(args)).unwrap_err().to_string();
            assert!(e.contains(key), "{args:?}: {e}");
        }
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "[canary]\ninterval = \"10s\"\ntable = \"c.t\"\nusername = \"cu\"\npassword-file = \"{pwp}\"\ntimeout = \"20s\"\ncreate = false"
        )
        .unwrap();
        let s =
            Settings::from_flags(flags(&["--config.file", f.path().to_str().unwrap()])).unwrap();
        assert_eq!(s.canary.interval, Some(Duration::from_secs(10)));
        assert_eq!(s.canary.table, "t");
        assert_eq!(s.canary.timeout, Duration::from_secs(20));
        assert!(!s.canary.create);
        let s = Settings::from_flags(flags(&[
            "--config.file",
            f.path().to_str().unwrap(),
            "--canary.interval=0s",
        ]))
        .unwrap();
        assert!(!s.canary.enabled(), "the flag wins and turns it off");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn file_keys_dotted_and_tables_and_flags_win() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(
            f,
            "web.listen-address = \"127.0.0.1:9999\"\n[gravity]\nurl = \"http://127.0.0.1:8081\"\nlog-format = \"text\"\n[collector]\ninterval = \"2s\""
        )
        .unwrap();
        let p = f.path().to_str().unwrap().to_string();
        let s =
            Settings::from_flags(flags(&["--config.file", &p, "--collector.interval=3s"])).unwrap();
        assert_eq!(s.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(s.gravity_url.unwrap().port_u16(), Some(8081));
        assert_eq!(s.log_format, Some(GravityLogFormat::Text));
        assert_eq!(s.interval, Duration::from_secs(3), "flag wins over file");
    }

    /// Every flag is a key of the file, by the same declaration (no second list of keys to
    /// forget a new flag in), and the file's values go through the flags' own parsers.
    #[test]
    fn every_flag_is_a_file_key_and_file_values_parse_like_flags() {
        use clap::CommandFactory;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let cmd = FileArgs::command();
        let longs: Vec<String> = cmd
            .get_arguments()
            .filter_map(|a| a.get_long().map(str::to_string))
            .collect();
        assert!(longs.len() > 40, "{longs:?}");
        for long in longs.iter().filter(|l| *l != "config.file") {
            std::fs::write(&p, format!("{long} = \"x\"\n")).unwrap();
            let r = read_file(&p);
            if let Err(e) = r {
                let e = e.to_string();
                assert!(!e.contains("unknown key"), "{long}: {e}");
                assert!(e.contains(long.as_str()) && e.contains("line 1"), "{e}");
            }
        }
        std::fs::write(&p, "[config]\nfile = \"/x\"\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 2, key config.file"), "{e}");
        // a list joins like the flag's comma-separated form; numbers and booleans print
        std::fs::write(
            &p,
            "[consistency]\ntables = [\"a.b\", \"c.d=e.f\"]\nchunk-size = 50\n[gravity]\nmetrics-passthrough = false\n",
        )
        .unwrap();
        let f = read_file(&p).unwrap();
        assert_eq!(f.consistency_tables.as_deref(), Some("a.b,c.d=e.f"));
        assert_eq!(f.consistency_chunk_size, Some(50));
        assert_eq!(f.passthrough, Some(false));
        // a value the flag refuses is refused in the file, naming key and line
        std::fs::write(&p, "\n[otlp]\ntraces-sampler-ratio = nan\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 3, key otlp.traces-sampler-ratio"), "{e}");
        std::fs::write(&p, "[canary]\ncreate = \"maybe\"\n").unwrap();
        let e = read_file(&p).unwrap_err().to_string();
        assert!(e.contains("line 2, key canary.create"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    /// The command line wins field by field, nested (`--otlp.*`) flags included.
    #[test]
    fn merge_is_field_by_field() {
        let cli = flags(&["--otlp.endpoint=http://a:4317", "--gravity.pid=7"]);
        let mut file = Flags::default();
        file.otlp.endpoint = Some("http://b:4317".into());
        file.otlp.compression = Some("gzip".into());
        file.pid = Some(9);
        file.log_level = Some("debug".into());
        let m = cli.or(file).unwrap();
        assert_eq!(m.otlp.endpoint.as_deref(), Some("http://a:4317"));
        assert_eq!(m.otlp.compression.as_deref(), Some("gzip"));
        assert_eq!(m.pid, Some(7));
        assert_eq!(m.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&[&str], &str)] = &[
            (&["--web.listen-address", "nonsense"], "web.listen-address"),
            (&["--web.telemetry-path", "metrics"], "web.telemetry-path"),
            (&["--gravity.url", "ftp://x:1"], "gravity.url"),
            (&["--gravity.pid", "0"], "gravity.pid"),
            (
                &["--gravity.process-pattern", "(unclosed"],
                "gravity.process-pattern",
            ),
            (&["--gravity.log-format", "xml"], "gravity.log-format"),
            (&["--collector.interval", "fast"], "collector.interval"),
            (&["--log.level", "loud"], "log.level"),
            (
                &["--gravity.pid", "5", "--gravity.pid-file", "/x"],
                "gravity.pid",
            ),
        ];
        for (args, key) in cases {
            let e = Settings::from_flags(flags(args)).unwrap_err().to_string();
            assert!(e.contains(key), "{args:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn file_errors_are_one_line_with_key_and_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[web]\nlisten-address = \":1\"\nlisten-adress = \":2\"").unwrap();
        let p = f.path().to_str().unwrap().to_string();
        let e = Settings::from_flags(flags(&["--config.file", &p]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen-adress"), "{e}");
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = Settings::from_flags(flags(&["--config.file", "/nonexistent/x.toml"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/x.toml"), "{e}");
    }

    #[test]
    fn reload_keeps_cli_flags_winning() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "collector.interval = \"2s\"\nlog.level = \"debug\"").unwrap();
        let ps = p.to_str().unwrap().to_string();
        let s =
            Settings::from_flags(flags(&["--config.file", &ps, "--log.level", "warn"])).unwrap();
        assert_eq!(s.log_level, tracing::Level::WARN);
        std::fs::write(&p, "collector.interval = \"7s\"\nlog.level = \"debug\"").unwrap();
        let s2 = s.reload().unwrap();
        assert_eq!(s2.interval, Duration::from_secs(7));
        assert_eq!(s2.log_level, tracing::Level::WARN);
        std::fs::write(&p, "collector.interval = 7").unwrap();
        assert!(s.reload().is_err());
    }

    #[test]
    fn web_config_file_from_flag_and_toml_is_validated_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let web = dir.path().join("web.yml");
        std::fs::write(&web, "basic_auth_users:\n  prometheus: not-a-hash\n").unwrap();
        let e = Settings::from_flags(flags(&["--web.config.file", web.to_str().unwrap()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("web.config.file") && e.contains("basic_auth_users.prometheus"),
            "{e}"
        );
        assert!(!e.contains("not-a-hash"), "{e}");
        std::fs::write(&web, "").unwrap();
        let toml = dir.path().join("c.toml");
        std::fs::write(
            &toml,
            format!("[web.config]\nfile = {:?}\n", web.to_str().unwrap()),
        )
        .unwrap();
        let s = Settings::from_flags(flags(&["--config.file", toml.to_str().unwrap()])).unwrap();
        assert_eq!(s.web_config_file.as_deref(), Some(web.as_path()));
    }

    #[test]
    fn log_state_file_is_on_by_default_in_a_sensible_place() {
        let no = |_: &Path| false;
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(
            default_log_state_dir_from(p("/var/lib/ge:/other"), p("/x"), p("/root"), no),
            PathBuf::from("/var/lib/ge")
        );
        assert_eq!(
            default_log_state_dir_from(None, p("/x"), p("/root"), |_| true),
            PathBuf::from("/var/lib/gravity-exporter")
        );
        assert_eq!(
            default_log_state_dir_from(None, p("/x"), p("/root"), no),
            PathBuf::from("/x/gravity-exporter")
        );
        assert_eq!(
            default_log_state_dir_from(None, p("rel"), p("/home/u"), no),
            PathBuf::from("/home/u/.local/state/gravity-exporter")
        );
        assert!(default_log_state_dir_from(None, None, None, no).starts_with(std::env::temp_dir()));
        let on = Settings::from_flags(flags(&[])).unwrap();
        let a = on.log_state_file_for(Path::new("/a/gravity.log")).unwrap();
        let b = on.log_state_file_for(Path::new("/b/gravity.log")).unwrap();
        assert_ne!(a, b, "one state file per log");
        assert!(a.starts_with(on.log_state_dir.as_ref().unwrap()));
        let off = Settings::from_flags(flags(&["--gravity.log-state-file", "none"])).unwrap();
        assert_eq!(off.log_state_file_for(Path::new("/a/gravity.log")), None);
        let s = Settings::from_flags(flags(&["--gravity.log-state-file", "/s/x.json"])).unwrap();
        assert_eq!(
            s.log_state_file_for(Path::new("/a/gravity.log")),
            Some(PathBuf::from("/s/x.json"))
        );
    }
}
