//! Diagnosis: which stage of a gravity pipeline holds it back, and which of gravity's
//! settings to change (issue 20, SPEC §8).
//!
//! Self-contained on purpose (nothing from `crate::`): its input is a window of readings of
//! gravity's `/metrics` as plain `(name, labels, value)` samples plus facts the exporter
//! measures itself (event-time lag, binlog bytes behind, target probe latency and
//! connections, counted log lines, gravity's settings in force). Everything here is pure:
//! [`build_input`] turns readings and facts into a [`DiagnosisInput`] (rates and histogram
//! deltas over the window, gauges averaged and maxed over it, never one gauge reading), and
//! [`diagnose`] applies the rules, each commented with the gravity fact behind it.
//!
//! Rules, in order (docs/diagnosis.md): down/stopped/idle/healthy → `none` and no
//! suggestion; a stuck sliding window; retries on the target (with their cause); hot rows
//! (one table's messages wait on latches while workers idle); writes are the limit (worker
//! queues near `queue-size`, output latency dominant: `nr-worker`, `batch-size`, `max-open`,
//! else the target itself); reading is the limit (queues empty, lag and binlog bytes behind
//! growing: the source or the network); the pace of a full dump (batch mode: `nr-scanner`,
//! `table-scan-batch`, `batch-per-second-limit`).

use std::collections::BTreeMap;

use serde::Serialize;
use thiserror::Error;

// ---------------------------------------------------------------------------------------
// Thresholds (each rule names the gravity fact it rests on)
// ---------------------------------------------------------------------------------------

/// Worker queues at least this full (mean length over `queue-size`) are "near queue-size".
pub const WORKER_QUEUE_FULL: f64 = 0.8;
/// A sliding window at least this full (waiting-chan over `sliding-window-size`) applies
/// backpressure: gravity's submit blocks once it is full.
pub const WINDOW_FULL: f64 = 0.9;
/// Queues at least this full while the output dominates: rows queue up for the writes.
pub const WRITES_QUEUED: f64 = 0.3;
/// Queues below this fill count as empty.
pub const QUEUES_EMPTY: f64 = 0.1;
/// Worker queues below this fill count as idle workers (hot-rows rule).
pub const WORKERS_IDLE: f64 = 0.2;
/// A stage holding at least this share of the time a row spends in gravity dominates.
pub const DOMINANT_SHARE: f64 = 0.5;
/// Target probe latency under which the target has headroom: gravity's maintainers quote
/// p80 < 50 ms for the write side.
pub const TARGET_SLOW_SECONDS: f64 = 0.05;
/// Connections at or above this share of `max-open` leave no headroom.
pub const CONNECTIONS_NEAR_MAX: f64 = 0.8;
/// Workers' batches at least this share of `batch-size` are full.
pub const BATCH_FULL: f64 = 0.9;
/// Event-time lag growing by at least this many seconds over the window (and by
/// [`LAG_GROWTH_FRACTION`] of the window) is "growing".
pub const LAG_GROWTH_MIN_SECONDS: f64 = 5.0;
/// Lag growth as a share of the window's length that counts as growing.
pub const LAG_GROWTH_FRACTION: f64 = 0.1;
/// Binlog bytes behind growing by at least this many bytes over the window is "growing".
pub const BINLOG_GROWTH_MIN_BYTES: f64 = 1_048_576.0;
/// Rows per second (heartbeat rows excluded) under which a pipeline is idle.
pub const IDLE_ROWS_PER_SECOND: f64 = 0.05;
/// Messages waiting for one table (mean `table-queue`) that count as a hot table.
pub const HOT_TABLE_QUEUE: f64 = 100.0;
/// Input rate at least this share of the full dump's throttle ceiling is "at the ceiling".
pub const DUMP_AT_CEILING: f64 = 0.8;

/// Most tables, workers, streams and stuck items tracked (the input comes from outside).
const MAX_TABLES: usize = 4096;
const MAX_WORKERS: usize = 1024;
const MAX_STREAMS: usize = 64;
const MAX_STUCK: usize = 16;
/// Largest gauge/counter value accepted.
const MAX_PLAUSIBLE: f64 = 1e15;

// ---------------------------------------------------------------------------------------
// Readings
// ---------------------------------------------------------------------------------------

/// One sample of an exposition: metric name (with `_sum`/`_count`/`_bucket`), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Sample name as exposed (`gravity_output_latency_sum`, `gravity_queue_length`, …).
    pub name: String,
    /// Label pairs, in any order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of one label.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One reading of gravity's `/metrics`: when (seconds on any monotonic clock) and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// Seconds on a monotonic clock (only differences are used).
    pub at_seconds: f64,
    /// The samples (one pipeline's).
    pub samples: Vec<Sample>,
}

/// Parses Prometheus text format as client_golang writes it into samples (comments and
/// blank lines skipped, a line that does not parse skipped): for fixtures and tools; the
/// exporter feeds the samples of its own parser.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = line.get(..name_end)?;
    if name.is_empty() {
        return None;
    }
    let mut rest = line.get(name_end..)?;
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        let mut chars = r.char_indices();
        let mut key = String::new();
        let mut val = String::new();
        // 0: key, 1: after '=' expecting '"', 2: in value, 3: after value
        let mut state = 0u8;
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match state {
                0 => match c {
                    '=' => state = 1,
                    '}' if key.trim().is_empty() => {
                        end = Some(i);
                        break;
                    }
                    ',' | ' ' => {}
                    _ => key.push(c),
                },
                1 => {
                    if c != '"' {
                        return None;
                    }
                    state = 2;
                }
                2 => match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => val.push('\n'),
                        Some((_, other)) => val.push(other),
                        None => return None,
                    },
                    '"' => {
                        labels.push((
                            std::mem::take(&mut key).trim().to_string(),
                            std::mem::take(&mut val),
                        ));
                        state = 3;
                    }
                    _ => val.push(c),
                },
                _ => match c {
                    ',' => state = 0,
                    '}' => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                },
            }
        }
        let end = end?;
        rest = r.get(end + 1..)?;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse::<f64>().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

// ---------------------------------------------------------------------------------------
// Settings in force
// ---------------------------------------------------------------------------------------

/// One of gravity's settings as in force: its value and whether the config set it (else
/// gravity's default from its code).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Setting {
    /// The value in force.
    pub value: f64,
    /// Whether gravity's config file set it (false: gravity's default).
    pub from_config: bool,
}

impl Setting {
    const fn default_of(value: f64) -> Setting {
        Setting {
            value,
            from_config: false,
        }
    }
}

/// gravity's settings that shape the pipeline, with gravity's defaults where the config
/// omits them (`[scheduler.config]` in `batch_table_scheduler.go`; MySQL target
/// `pkg/utils/db.go`; batch input `mysqlbatch` plugin config).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Settings {
    /// `nr-worker` (default 10).
    pub nr_worker: Setting,
    /// `batch-size`: most rows per worker batch (default 1).
    pub batch_size: Setting,
    /// `queue-size`: capacity of each worker queue (default 1024).
    pub queue_size: Setting,
    /// `sliding-window-size` (default 10240).
    pub sliding_window_size: Setting,
    /// `nr-retries` (default 3).
    pub nr_retries: Setting,
    /// `retry-sleep` in seconds (default 1 s).
    pub retry_sleep_seconds: Setting,
    /// `healthy-threshold` in seconds (default 60).
    pub healthy_threshold_seconds: Setting,
    /// MySQL target `max-open`: gravity's `DBConfig.ValidateAndSetDefault` sets 200 when the
    /// config leaves it 0. `None`: not a MySQL target (unknown).
    pub max_open: Option<Setting>,
    /// Batch input `nr-scanner` (default 10).
    pub nr_scanner: Setting,
    /// Batch input `table-scan-batch` (default 10000).
    pub table_scan_batch: Setting,
    /// Batch input `batch-per-second-limit` (default 1).
    pub batch_per_second_limit: Setting,
}

/// gravity's default `max-open` of a MySQL target (`pkg/utils/db.go`).
pub const DEFAULT_MAX_OPEN: f64 = 200.0;

impl Default for Settings {
    /// gravity's defaults, none from a config; `max_open` unknown (no MySQL target known).
    fn default() -> Self {
        Settings {
            nr_worker: Setting::default_of(10.0),
            batch_size: Setting::default_of(1.0),
            queue_size: Setting::default_of(1024.0),
            sliding_window_size: Setting::default_of(10240.0),
            nr_retries: Setting::default_of(3.0),
            retry_sleep_seconds: Setting::default_of(1.0),
            healthy_threshold_seconds: Setting::default_of(60.0),
            max_open: None,
            nr_scanner: Setting::default_of(10.0),
            table_scan_batch: Setting::default_of(10000.0),
            batch_per_second_limit: Setting::default_of(1.0),
        }
    }
}

fn lookup<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// A positive number from the config (gravity replaces 0 and negatives by its default).
fn positive(v: &serde_json::Value, path: &[&str]) -> Option<f64> {
    lookup(v, path)
        .and_then(serde_json::Value::as_f64)
        .filter(|x| x.is_finite() && *x > 0.0 && *x <= MAX_PLAUSIBLE)
}

/// Go duration strings as gravity's `retry-sleep` uses them (`1s`, `500ms`, `2m`).
fn go_duration_seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    Some(n * scale).filter(|x| x.is_finite() && *x > 0.0)
}

impl Settings {
    /// The settings in force for gravity's config, given as a JSON value (gravity's TOML
    /// converted, or its JSON config): `scheduler.config.*`, `output.config.target.max-open`
    /// (a MySQL output only), `input.config.{nr-scanner,table-scan-batch,batch-per-second-limit}`.
    pub fn from_config_value(cfg: &serde_json::Value) -> Settings {
        let mut s = Settings::default();
        let set = |slot: &mut Setting, path: &[&str]| {
            if let Some(v) = positive(cfg, path) {
                *slot = Setting {
                    value: v,
                    from_config: true,
                };
            }
        };
        let sched = |k: &'static str| ["scheduler", "config", k];
        set(&mut s.nr_worker, &sched("nr-worker"));
        set(&mut s.batch_size, &sched("batch-size"));
        set(&mut s.queue_size, &sched("queue-size"));
        set(&mut s.sliding_window_size, &sched("sliding-window-size"));
        set(&mut s.nr_retries, &sched("nr-retries"));
        set(
            &mut s.healthy_threshold_seconds,
            &sched("healthy-threshold"),
        );
        if let Some(d) = lookup(cfg, &sched("retry-sleep"))
            .and_then(serde_json::Value::as_str)
            .and_then(go_duration_seconds)
        {
            s.retry_sleep_seconds = Setting {
                value: d,
                from_config: true,
            };
        }
        let input = |k: &'static str| ["input", "config", k];
        set(&mut s.nr_scanner, &input("nr-scanner"));
        set(&mut s.table_scan_batch, &input("table-scan-batch"));
        set(
            &mut s.batch_per_second_limit,
            &input("batch-per-second-limit"),
        );
        let mysql_target =
            lookup(cfg, &["output", "type"]).and_then(serde_json::Value::as_str) == Some("mysql");
        if mysql_target {
            s.max_open = Some(
                positive(cfg, &["output", "config", "target", "max-open"]).map_or(
                    Setting::default_of(DEFAULT_MAX_OPEN),
                    |v| Setting {
                        value: v,
                        from_config: true,
                    },
                ),
            );
        }
        s
    }
}

// ---------------------------------------------------------------------------------------
// Facts beside /metrics, and the log lines over the window
// ---------------------------------------------------------------------------------------

/// Input mode of the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Incremental (binlog/oplog stream).
    #[default]
    Stream,
    /// Full dump (`mode = "batch"`).
    Batch,
}

/// The gravity process as the exporter sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Process {
    /// Running.
    #[default]
    Up,
    /// Gone (crashed, killed, not started).
    Down,
    /// Exited on purpose (a finished batch, a stop).
    Stopped,
}

/// Why a synchronous output retried (the cause in gravity's `error execute sync output,
/// retry. <cause>` warning).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryCause {
    /// MySQL `Error 1213`: deadlock.
    Deadlock,
    /// MySQL `Error 1205`: lock wait timeout.
    LockWait,
    /// TiDB `Error 9003`: TiKV server is busy.
    TargetBusy,
    /// MySQL `Error 1062`: duplicate key.
    DuplicateKey,
    /// `invalid connection`, `i/o timeout`, `connection refused`, `broken pipe`.
    Connection,
    /// Anything else.
    Other,
}

impl RetryCause {
    /// Classifies the cause text of a retry warning.
    pub fn classify(msg: &str) -> RetryCause {
        if msg.contains("Error 1213") || msg.contains("Deadlock found") {
            RetryCause::Deadlock
        } else if msg.contains("Error 1205") || msg.contains("Lock wait timeout") {
            RetryCause::LockWait
        } else if msg.contains("Error 9003") || msg.contains("server is busy") {
            RetryCause::TargetBusy
        } else if msg.contains("Error 1062") {
            RetryCause::DuplicateKey
        } else if [
            "invalid connection",
            "i/o timeout",
            "connection refused",
            "broken pipe",
        ]
        .iter()
        .any(|p| msg.contains(p))
        {
            RetryCause::Connection
        } else {
            RetryCause::Other
        }
    }

    /// Name as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryCause::Deadlock => "deadlock",
            RetryCause::LockWait => "lock_wait",
            RetryCause::TargetBusy => "target_busy",
            RetryCause::DuplicateKey => "duplicate_key",
            RetryCause::Connection => "connection",
            RetryCause::Other => "other",
        }
    }

    /// Whether the cause is contention on the target (locks, an overloaded TiKV).
    pub fn is_contention(self) -> bool {
        matches!(
            self,
            RetryCause::Deadlock | RetryCause::LockWait | RetryCause::TargetBusy
        )
    }
}

/// An item of a sliding window gravity reports as not acknowledged
/// (`[sliding_window] item not ack after N seconds. <stream> seq <seq>`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StuckItem {
    /// The input stream key (`mysqlstream`, `mongooplog`, `db.table` in batch mode).
    pub stream: String,
    /// The item's sequence number.
    pub seq: u64,
    /// Seconds it has waited, as last logged.
    pub waited_seconds: f64,
}

/// Parses a `[sliding_window] item not ack after N seconds. <stream> seq <seq>` message.
pub fn parse_item_not_ack(msg: &str) -> Option<StuckItem> {
    let rest = msg.split("item not ack after ").nth(1)?;
    let (secs, rest) = rest.split_once(" seconds.")?;
    let waited_seconds: f64 = secs.trim().parse().ok().filter(|v: &f64| v.is_finite())?;
    let rest = rest.trim();
    let (stream, seq) = rest.rsplit_once(" seq ")?;
    let seq: u64 = seq.trim().parse().ok()?;
    let stream: String = stream.trim().chars().take(128).collect();
    Some(StuckItem {
        stream,
        seq,
        waited_seconds,
    })
}

/// gravity's log lines over the window, counted for the diagnosis. Feed it the message of
/// each log record ([`LogWindow::note`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogWindow {
    /// Retry warnings per cause.
    pub retry_causes: BTreeMap<RetryCause, u64>,
    /// `item not ack after N seconds` lines.
    pub item_not_ack: u64,
    /// The items those lines named (last line per stream and seq; at most 16).
    pub stuck: Vec<StuckItem>,
    /// `latch for long` lines.
    pub latch_for_long: u64,
}

impl LogWindow {
    /// Counts one log message.
    pub fn note(&mut self, msg: &str) {
        if let Some(cause) = msg.strip_prefix("error execute sync output, retry.") {
            let n = self
                .retry_causes
                .entry(RetryCause::classify(cause))
                .or_insert(0);
            *n = n.saturating_add(1);
        } else if msg.contains("item not ack after") {
            self.item_not_ack = self.item_not_ack.saturating_add(1);
            if let Some(item) = parse_item_not_ack(msg) {
                let room = self.stuck.len() < MAX_STUCK;
                match self
                    .stuck
                    .iter_mut()
                    .find(|s| s.stream == item.stream && s.seq == item.seq)
                {
                    Some(s) => s.waited_seconds = s.waited_seconds.max(item.waited_seconds),
                    None if room => self.stuck.push(item),
                    None => {}
                }
            }
        } else if msg.contains("latch for long") {
            self.latch_for_long = self.latch_for_long.saturating_add(1);
        }
    }
}

/// What the exporter knows beside gravity's `/metrics` over the same window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// Stream or batch.
    pub mode: Mode,
    /// The process.
    pub process: Process,
    /// Whether the exporter judged the pipeline idle; `None`: judged here from the rates.
    pub idle: Option<bool>,
    /// gravity's settings in force.
    pub settings: Settings,
    /// Event-time lag (`now - EventTime` of the watermark) at the window's start and end.
    pub event_lag_seconds: Option<(f64, f64)>,
    /// Source binlog bytes behind at the window's start and end.
    pub binlog_bytes_behind: Option<(f64, f64)>,
    /// The target probe's latency (mean over the window).
    pub target_probe_latency_seconds: Option<f64>,
    /// gravity's connections to the target (mean over the window).
    pub target_connections: Option<f64>,
    /// Batch mode: tables not yet fully scanned (from `/status` table-stats).
    pub tables_remaining: Option<u32>,
    /// gravity's log lines over the window.
    pub log: LogWindow,
}

// ---------------------------------------------------------------------------------------
// The input of the diagnosis
// ---------------------------------------------------------------------------------------

/// A gauge over the window: mean and largest value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Gauge {
    /// Mean over the readings.
    pub mean: f64,
    /// Largest reading.
    pub max: f64,
}

/// The mean latency of a stage over the window (Δsum/Δcount of gravity's histogram).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanLatency {
    /// Seconds.
    pub mean_seconds: f64,
    /// Observations in the window (Δcount).
    pub events: f64,
}

/// Mean latency per stage over the window.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct StageLatencies {
    /// `gravity_input_latency`.
    pub input: Option<MeanLatency>,
    /// `gravity_emitter_latency`.
    pub emitter: Option<MeanLatency>,
    /// `gravity_scheduler_submit_latency` (grows with backpressure).
    pub scheduler_submit: Option<MeanLatency>,
    /// `gravity_scheduler_ack_latency`.
    pub scheduler_ack: Option<MeanLatency>,
    /// `gravity_output_latency` (inside the output's write).
    pub output: Option<MeanLatency>,
    /// `gravity_event_time_latency` (end to end, event time).
    pub event_time: Option<MeanLatency>,
}

/// One table's queues over the window.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct TableQueues {
    /// `db.table`.
    pub table: String,
    /// `table-queue`: messages waiting for the table's goroutine.
    pub queue: Gauge,
    /// `table-buffer`: the batch being built.
    pub buffer: Gauge,
    /// `table-latch`: row keys in flight.
    pub latch: Gauge,
}

/// One input stream's sliding window over the window.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct WindowQueues {
    /// The input stream key (`mysqlstream`, …).
    pub stream: String,
    /// `sliding-window-waiting-chan`.
    pub waiting: Gauge,
    /// Fill: waiting / `sliding-window-size` (computed here, never gravity's integer ratio).
    pub fill: Gauge,
}

/// gravity's queues over the window.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct QueueFigures {
    /// `input-buffer`.
    pub input_buffer: Option<Gauge>,
    /// `worker` per index `"0"`…`"N-1"` (length at the worker's last dequeue).
    pub workers: Vec<(u32, Gauge)>,
    /// Per `db.table`.
    pub tables: Vec<TableQueues>,
    /// Per input stream.
    pub windows: Vec<WindowQueues>,
}

impl QueueFigures {
    /// Mean fill of the worker queues (mean length over `queue-size`), and the fullest one.
    pub fn worker_fill(&self, queue_size: f64) -> Option<Gauge> {
        if self.workers.is_empty() || queue_size <= 0.0 {
            return None;
        }
        let n = self.workers.len() as f64;
        let mean = self.workers.iter().map(|(_, g)| g.mean).sum::<f64>() / n / queue_size;
        let max = self.workers.iter().map(|(_, g)| g.max).fold(0.0, f64::max) / queue_size;
        Some(Gauge { mean, max })
    }

    /// The fullest sliding window.
    pub fn window_fill(&self) -> Option<&WindowQueues> {
        self.windows
            .iter()
            .max_by(|a, b| a.fill.mean.total_cmp(&b.fill.mean))
    }
}

/// The figures over a window of collections that [`diagnose`] reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DiagnosisInput {
    /// Seconds between the first and the last reading.
    pub window_seconds: f64,
    /// Readings in the window.
    pub readings: usize,
    /// Stream or batch.
    pub mode: Mode,
    /// The process.
    pub process: Process,
    /// Idle: no source rows (heartbeat rows aside) in or out over the window.
    pub idle: bool,
    /// gravity's settings in force.
    pub settings: Settings,
    /// Mean latency per stage.
    pub latency: StageLatencies,
    /// Source rows into gravity per second (`gravity_input_counter`, heartbeat `ctl` rows aside).
    pub rows_in_per_second: Option<f64>,
    /// Rows written per second (`gravity_output_counter`).
    pub rows_out_per_second: Option<f64>,
    /// Event-time lag at the window's end.
    pub event_lag_seconds: Option<f64>,
    /// Its change over the window.
    pub event_lag_change_seconds: Option<f64>,
    /// Queues.
    pub queues: QueueFigures,
    /// Workers' last batch sizes (`gravity_scheduler_batch_size{idx}`), over workers and readings.
    pub batch_size: Option<Gauge>,
    /// `gravity_scheduler_nr_worker` as gravity reports it.
    pub nr_worker_reported: Option<f64>,
    /// `gravity_scheduler_retry_counter` increase over the window.
    pub retries: Option<f64>,
    /// Retry warnings per cause over the window.
    pub retry_causes: Vec<(RetryCause, u64)>,
    /// `item not ack after N seconds` lines over the window.
    pub item_not_ack_lines: u64,
    /// The items they named.
    pub stuck_items: Vec<StuckItem>,
    /// `latch for long` lines over the window.
    pub latch_for_long_lines: u64,
    /// Source binlog bytes behind at the window's end.
    pub binlog_bytes_behind: Option<f64>,
    /// Its change over the window.
    pub binlog_bytes_behind_change: Option<f64>,
    /// Target probe latency.
    pub target_probe_latency_seconds: Option<f64>,
    /// gravity's connections to the target.
    pub target_connections: Option<f64>,
    /// Batch mode: tables not yet fully scanned.
    pub tables_remaining: Option<u32>,
}

/// Why a window could not be turned into a [`DiagnosisInput`].
#[derive(Debug, Clone, PartialEq, Error)]
pub enum DiagnosisError {
    /// A diagnosis needs at least two readings (rates and deltas, never one gauge reading).
    #[error("a diagnosis needs at least two readings, got {0}")]
    TooFewReadings(usize),
    /// Readings must be in time order with time passing between them.
    #[error("readings are not in increasing time order")]
    NotInTimeOrder,
}

/// The first `n` characters of `s` (a prefix: no allocation).
fn first_chars(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

fn plausible(v: f64) -> bool {
    v.is_finite() && (0.0..=MAX_PLAUSIBLE).contains(&v)
}

/// Σ of the samples named `name` in a reading, only when at least one is plausible.
fn sum_of(r: &Reading, name: &str, keep: impl Fn(&Sample) -> bool) -> Option<f64> {
    let mut seen = false;
    let mut total = 0.0;
    for s in r.samples.iter().filter(|s| s.name == name && keep(s)) {
        if plausible(s.value) {
            total += s.value;
            seen = true;
        }
    }
    seen.then_some(total)
}

/// Increase of a counter over the window: Σ of non-negative steps between consecutive
/// readings (a step back is a restart of gravity: that step is left out), with the seconds
/// the counted steps cover.
fn increase(values: &[Option<f64>], times: &[f64]) -> Option<(f64, f64)> {
    let mut inc = 0.0;
    let mut secs = 0.0;
    let mut any = false;
    for (i, pair) in values.windows(2).enumerate() {
        if let [Some(a), Some(b)] = pair {
            if b >= a {
                inc += b - a;
                if let (Some(t0), Some(t1)) = (times.get(i), times.get(i + 1)) {
                    secs += t1 - t0;
                }
                any = true;
            }
        }
    }
    any.then_some((inc, secs))
}

fn rate(values: &[Option<f64>], times: &[f64]) -> Option<f64> {
    increase(values, times)
        .filter(|(_, secs)| *secs > 0.0)
        .map(|(inc, secs)| inc / secs)
}

fn mean_latency(readings: &[Reading], family: &str) -> Option<MeanLatency> {
    let sum_name = format!("{family}_sum");
    let count_name = format!("{family}_count");
    let sums: Vec<Option<f64>> = readings
        .iter()
        .map(|r| sum_of(r, &sum_name, |_| true))
        .collect();
    let counts: Vec<Option<f64>> = readings
        .iter()
        .map(|r| sum_of(r, &count_name, |_| true))
        .collect();
    // Both must step forward together; a step where either went back is left out.
    let (mut ds, mut dc) = (0.0, 0.0);
    for i in 1..readings.len() {
        let (Some(Some(s0)), Some(Some(s1)), Some(Some(c0)), Some(Some(c1))) = (
            sums.get(i - 1),
            sums.get(i),
            counts.get(i - 1),
            counts.get(i),
        ) else {
            continue;
        };
        if s1 >= s0 && c1 >= c0 {
            ds += s1 - s0;
            dc += c1 - c0;
        }
    }
    (dc >= 1.0).then(|| MeanLatency {
        mean_seconds: ds / dc,
        events: dc,
    })
}

#[derive(Default)]
struct Acc {
    sum: f64,
    n: u32,
    max: f64,
}

impl Acc {
    fn add(&mut self, v: f64) {
        self.sum += v;
        self.n = self.n.saturating_add(1);
        self.max = self.max.max(v);
    }
    fn gauge(&self) -> Gauge {
        Gauge {
            mean: if self.n == 0 {
                0.0
            } else {
                self.sum / f64::from(self.n)
            },
            max: self.max,
        }
    }
}

/// Builds the figures of a window from two or more readings of gravity's `/metrics` and
/// the exporter's own facts over the same window (pure).
pub fn build_input(readings: &[Reading], facts: &Facts) -> Result<DiagnosisInput, DiagnosisError> {
    if readings.len() < 2 {
        return Err(DiagnosisError::TooFewReadings(readings.len()));
    }
    let times: Vec<f64> = readings.iter().map(|r| r.at_seconds).collect();
    let ordered = times.windows(2).all(|w| matches!(w, [a, b] if b > a));
    if times.iter().any(|t| !t.is_finite()) || !ordered {
        return Err(DiagnosisError::NotInTimeOrder);
    }
    let window_seconds =
        times.last().copied().unwrap_or(0.0) - times.first().copied().unwrap_or(0.0);
    let settings = facts.settings.clone();

    let latency = StageLatencies {
        input: mean_latency(readings, "gravity_input_latency"),
        emitter: mean_latency(readings, "gravity_emitter_latency"),
        scheduler_submit: mean_latency(readings, "gravity_scheduler_submit_latency"),
        scheduler_ack: mean_latency(readings, "gravity_scheduler_ack_latency"),
        output: mean_latency(readings, "gravity_output_latency"),
        event_time: mean_latency(readings, "gravity_event_time_latency"),
    };

    // Heartbeat rows (`type="ctl"`) arrive every few seconds even from an idle source.
    let rows_in: Vec<Option<f64>> = readings
        .iter()
        .map(|r| {
            sum_of(r, "gravity_input_counter", |s| {
                s.label("type") != Some("ctl")
            })
        })
        .collect();
    let rows_out: Vec<Option<f64>> = readings
        .iter()
        .map(|r| sum_of(r, "gravity_output_counter", |_| true))
        .collect();
    let retries_v: Vec<Option<f64>> = readings
        .iter()
        .map(|r| sum_of(r, "gravity_scheduler_retry_counter", |_| true))
        .collect();
    let rows_in_per_second = rate(&rows_in, &times);
    let rows_out_per_second = rate(&rows_out, &times);
    let retries = increase(&retries_v, &times).map(|(inc, _)| inc);

    // Gauges: averaged and maxed over the readings.
    let mut input_buffer: Option<Acc> = None;
    let mut workers: BTreeMap<u32, Acc> = BTreeMap::new();
    let mut tables: BTreeMap<String, [Acc; 3]> = BTreeMap::new();
    let mut windows: BTreeMap<String, Acc> = BTreeMap::new();
    let mut batch = Acc::default();
    let mut nr_worker = Acc::default();
    for r in readings {
        for s in &r.samples {
            if !plausible(s.value) {
                continue;
            }
            match s.name.as_str() {
                "gravity_queue_length" => {
                    let sub = s.label("subtype").unwrap_or("");
                    match s.label("type").unwrap_or("") {
                        "input-buffer" => {
                            input_buffer.get_or_insert_with(Acc::default).add(s.value)
                        }
                        "worker" => {
                            // gravity's worker subtype is the worker's index "0".."N-1".
                            if let Ok(idx) = sub.parse::<u32>() {
                                if workers.len() < MAX_WORKERS || workers.contains_key(&idx) {
                                    workers.entry(idx).or_default().add(s.value);
                                }
                            }
                        }
                        t @ ("table-queue" | "table-buffer" | "table-latch") => {
                            // looked up without allocating; a new key is made once
                            let key = first_chars(sub, 256);
                            if !tables.contains_key(key) && tables.len() < MAX_TABLES {
                                tables.insert(key.to_string(), Default::default());
                            }
                            if let Some(slot) = tables.get_mut(key) {
                                let i = match t {
                                    "table-queue" => 0,
                                    "table-buffer" => 1,
                                    _ => 2,
                                };
                                if let Some(a) = slot.get_mut(i) {
                                    a.add(s.value);
                                }
                            }
                        }
                        "sliding-window-waiting-chan" => {
                            let key = first_chars(sub, 256);
                            if !windows.contains_key(key) && windows.len() < MAX_STREAMS {
                                windows.insert(key.to_string(), Acc::default());
                            }
                            if let Some(a) = windows.get_mut(key) {
                                a.add(s.value);
                            }
                        }
                        _ => {}
                    }
                }
                "gravity_scheduler_batch_size" => batch.add(s.value),
                "gravity_scheduler_nr_worker" => nr_worker.add(s.value),
                _ => {}
            }
        }
    }
    let size = settings.sliding_window_size.value.max(1.0);
    let queues = QueueFigures {
        input_buffer: input_buffer.map(|a| a.gauge()),
        workers: workers.into_iter().map(|(i, a)| (i, a.gauge())).collect(),
        tables: tables
            .into_iter()
            .map(|(table, [q, b, l])| TableQueues {
                table,
                queue: q.gauge(),
                buffer: b.gauge(),
                latch: l.gauge(),
            })
            .collect(),
        windows: windows
            .into_iter()
            .map(|(stream, a)| {
                let waiting = a.gauge();
                WindowQueues {
                    stream,
                    waiting,
                    // Computed here: gravity's own ratio is an integer division (0 until full).
                    fill: Gauge {
                        mean: waiting.mean / size,
                        max: waiting.max / size,
                    },
                }
            })
            .collect(),
    };

    let pair = |p: Option<(f64, f64)>| {
        p.filter(|(a, b)| a.is_finite() && b.is_finite())
            .map(|(a, b)| (b, b - a))
    };
    let lag = pair(facts.event_lag_seconds);
    let binlog = pair(facts.binlog_bytes_behind);
    // Idle: no rows either way, and nothing waiting (a full window with nothing going out
    // is a stall, not an idle source; so is a lag that grows).
    let idle = facts.idle.unwrap_or_else(|| {
        rows_in_per_second.is_some_and(|r| r < IDLE_ROWS_PER_SECOND)
            && rows_out_per_second.is_none_or(|r| r < IDLE_ROWS_PER_SECOND)
            && facts.log.item_not_ack == 0
            && lag.is_none_or(|(_, d)| d < LAG_GROWTH_MIN_SECONDS)
            && queues
                .window_fill()
                .is_none_or(|w| w.fill.mean < WINDOW_FULL)
    });
    let finite = |v: Option<f64>| v.filter(|x| plausible(*x));
    Ok(DiagnosisInput {
        window_seconds,
        readings: readings.len(),
        mode: facts.mode,
        process: facts.process,
        idle,
        settings,
        latency,
        rows_in_per_second,
        rows_out_per_second,
        // Without watermarks, the window's mean end-to-end latency stands in for the lag.
        event_lag_seconds: lag
            .map(|(now, _)| now)
            .or(latency.event_time.map(|m| m.mean_seconds)),
        event_lag_change_seconds: lag.map(|(_, d)| d),
        queues,
        batch_size: (batch.n > 0).then(|| batch.gauge()),
        nr_worker_reported: (nr_worker.n > 0).then(|| nr_worker.gauge().max),
        retries,
        retry_causes: facts
            .log
            .retry_causes
            .iter()
            .map(|(c, n)| (*c, *n))
            .collect(),
        item_not_ack_lines: facts.log.item_not_ack,
        stuck_items: facts.log.stuck.clone(),
        latch_for_long_lines: facts.log.latch_for_long,
        binlog_bytes_behind: binlog.map(|(now, _)| now),
        binlog_bytes_behind_change: binlog.map(|(_, d)| d),
        target_probe_latency_seconds: finite(facts.target_probe_latency_seconds),
        target_connections: finite(facts.target_connections),
        tables_remaining: facts.tables_remaining,
    })
}

// ---------------------------------------------------------------------------------------
// The diagnosis
// ---------------------------------------------------------------------------------------

/// A stage of the pipeline, from the source database to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// The source database (or the network to it).
    Source,
    /// gravity's input (binlog/oplog reader, table scanners).
    Input,
    /// gravity's emitter (filters, routes).
    Emitter,
    /// gravity's scheduler (sliding window, table queues, latches, worker queues).
    Scheduler,
    /// gravity's output (the workers' writes).
    Output,
    /// The target (MySQL, Kafka, Elasticsearch) itself.
    Target,
    /// Nothing holds the pipeline back (healthy, idle, down or stopped).
    None,
}

impl Stage {
    /// Every stage, in path order (`none` last).
    pub const ALL: [Stage; 7] = [
        Stage::Source,
        Stage::Input,
        Stage::Emitter,
        Stage::Scheduler,
        Stage::Output,
        Stage::Target,
        Stage::None,
    ];

    /// Name as in JSON and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Input => "input",
            Stage::Emitter => "emitter",
            Stage::Scheduler => "scheduler",
            Stage::Output => "output",
            Stage::Target => "target",
            Stage::None => "none",
        }
    }
}

/// Which rule decided (a bounded name, fit for a label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Case {
    /// The process is gone.
    Down,
    /// The process exited on purpose.
    Stopped,
    /// No rows to move.
    Idle,
    /// Keeping up.
    Healthy,
    /// An item of the sliding window is not acknowledged.
    StuckWindow,
    /// The output retries on the target.
    Retries,
    /// One table's rows wait on latches.
    HotRows,
    /// Writes are the limit and gravity can write more in parallel or in larger batches.
    Writes,
    /// Writes are the limit and the target has no headroom.
    TargetLimit,
    /// Reading is the limit.
    Reading,
    /// A full dump runs at its throttle's ceiling.
    DumpPace,
    /// Falling behind, no rule matched.
    Unclear,
}

/// Figures of one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageFigures {
    /// The stage.
    pub stage: Stage,
    /// Its share of the time a row spends inside gravity (stage means over their sum).
    pub share_of_time: Option<f64>,
    /// How full its queues are (0..1): scheduler the sliding window, output the worker queues.
    pub queue_fill: Option<f64>,
    /// Its mean latency over the window (seconds).
    pub mean_seconds: Option<f64>,
}

/// One figure behind the finding.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evidence {
    /// What it is (`worker_queue_fill`, `event_lag_change_seconds`, …).
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// Which way to move a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Raise it.
    Raise,
    /// Lower it.
    Lower,
    /// Leave it: changing it will not help.
    Keep,
    /// gravity has nothing to tune here; `look_at` names what to look at.
    NothingToTune,
}

/// A suggestion: gravity's setting, its value in force, the direction and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Suggestion {
    /// gravity's setting (`nr-worker`, …); `None` when gravity has nothing to tune.
    pub setting: Option<&'static str>,
    /// Its value in force (config or gravity's default); `None`: unknown.
    pub current: Option<f64>,
    /// Whether that value comes from gravity's config (else gravity's default).
    pub from_config: Option<bool>,
    /// The value suggested.
    pub suggested: Option<f64>,
    /// Which way.
    pub direction: Direction,
    /// Why, with the figures.
    pub reason: String,
    /// What to look at instead or as well.
    pub look_at: Option<String>,
}

/// The verdict over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnosis {
    /// The stage that holds the pipeline back.
    pub bottleneck: Stage,
    /// The rule that decided.
    pub case: Case,
    /// One sentence.
    pub finding: String,
    /// Per stage, in path order.
    pub stages: Vec<StageFigures>,
    /// The figures behind the finding.
    pub evidence: Vec<Evidence>,
    /// What to change (empty for `none`).
    pub suggestions: Vec<Suggestion>,
}

fn ev(name: &str, value: f64) -> Evidence {
    Evidence {
        name: name.to_string(),
        value,
    }
}

fn fmt_ms(s: f64) -> String {
    format!("{:.1} ms", s * 1000.0)
}

/// Suggest `setting` be changed from `s` to `to`.
fn change(setting: &'static str, s: Setting, to: f64, reason: String) -> Suggestion {
    Suggestion {
        setting: Some(setting),
        current: Some(s.value),
        from_config: Some(s.from_config),
        suggested: Some(to),
        direction: if to > s.value {
            Direction::Raise
        } else {
            Direction::Lower
        },
        reason,
        look_at: None,
    }
}

fn keep(setting: &'static str, s: Setting, reason: String, look_at: String) -> Suggestion {
    Suggestion {
        setting: Some(setting),
        current: Some(s.value),
        from_config: Some(s.from_config),
        suggested: Some(s.value),
        direction: Direction::Keep,
        reason,
        look_at: Some(look_at),
    }
}

fn nothing(reason: String, look_at: String) -> Suggestion {
    Suggestion {
        setting: None,
        current: None,
        from_config: None,
        suggested: None,
        direction: Direction::NothingToTune,
        reason,
        look_at: Some(look_at),
    }
}

/// Derived figures shared by the rules.
struct View {
    shares: [(Stage, Option<f64>, Option<f64>); 4],
    worker_fill: Option<Gauge>,
    window: Option<(String, Gauge)>,
    lag_growing: bool,
    binlog_growing: bool,
}

fn share_of(view: &View, stage: Stage) -> f64 {
    view.shares
        .iter()
        .find(|(s, _, _)| *s == stage)
        .and_then(|(_, sh, _)| *sh)
        .unwrap_or(0.0)
}

fn view_of(i: &DiagnosisInput) -> View {
    let l = &i.latency;
    let m = |x: Option<MeanLatency>| x.map(|m| m.mean_seconds).filter(|v| plausible(*v));
    let sched = match (m(l.scheduler_submit), m(l.scheduler_ack)) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
    };
    let means = [
        (Stage::Input, m(l.input)),
        (Stage::Emitter, m(l.emitter)),
        (Stage::Scheduler, sched),
        (Stage::Output, m(l.output)),
    ];
    let total: f64 = means.iter().filter_map(|(_, v)| *v).sum();
    let shares = means.map(|(s, v)| {
        let share = v.filter(|_| total > 0.0).map(|v| v / total);
        (s, share, v)
    });
    let window_s = i.window_seconds.max(0.0);
    // gravity's event-time lag rises when rows leave the window slower than they enter.
    let lag_growing = i
        .event_lag_change_seconds
        .is_some_and(|d| d >= LAG_GROWTH_MIN_SECONDS && d >= LAG_GROWTH_FRACTION * window_s);
    let binlog_growing = i
        .binlog_bytes_behind_change
        .is_some_and(|d| d >= BINLOG_GROWTH_MIN_BYTES);
    View {
        shares,
        worker_fill: i.queues.worker_fill(i.settings.queue_size.value),
        window: i.queues.window_fill().map(|w| (w.stream.clone(), w.fill)),
        lag_growing,
        binlog_growing,
    }
}

fn stage_figures(v: &View) -> Vec<StageFigures> {
    Stage::ALL
        .iter()
        .filter(|s| **s != Stage::None)
        .map(|&stage| {
            let (share, mean) = v
                .shares
                .iter()
                .find(|(s, _, _)| *s == stage)
                .map_or((None, None), |(_, sh, m)| (*sh, *m));
            let queue_fill = match stage {
                Stage::Scheduler => v.window.as_ref().map(|(_, g)| g.mean),
                Stage::Output => v.worker_fill.map(|g| g.mean),
                _ => None,
            };
            StageFigures {
                stage,
                share_of_time: share,
                queue_fill,
                mean_seconds: mean,
            }
        })
        .collect()
}

fn evidence_of(i: &DiagnosisInput, v: &View) -> Vec<Evidence> {
    let mut e = vec![ev("window_seconds", i.window_seconds)];
    let mut opt = |name: &str, x: Option<f64>| {
        if let Some(x) = x.filter(|x| x.is_finite()) {
            e.push(ev(name, x));
        }
    };
    opt("rows_in_per_second", i.rows_in_per_second);
    opt("rows_out_per_second", i.rows_out_per_second);
    opt("event_lag_seconds", i.event_lag_seconds);
    opt("event_lag_change_seconds", i.event_lag_change_seconds);
    opt("worker_queue_fill", v.worker_fill.map(|g| g.mean));
    opt("worker_queue_fill_max", v.worker_fill.map(|g| g.max));
    opt(
        "sliding_window_fill",
        v.window.as_ref().map(|(_, g)| g.mean),
    );
    for (stage, share, _) in &v.shares {
        let name = format!("{}_share_of_time", stage.as_str());
        opt(&name, *share);
    }
    opt(
        "output_mean_seconds",
        i.latency.output.map(|m| m.mean_seconds),
    );
    opt("batch_size_mean", i.batch_size.map(|g| g.mean));
    opt("retries", i.retries);
    opt("binlog_bytes_behind", i.binlog_bytes_behind);
    opt("binlog_bytes_behind_change", i.binlog_bytes_behind_change);
    opt(
        "target_probe_latency_seconds",
        i.target_probe_latency_seconds,
    );
    opt("target_connections", i.target_connections);
    if i.item_not_ack_lines > 0 {
        e.push(ev("item_not_ack_lines", i.item_not_ack_lines as f64));
    }
    if i.latch_for_long_lines > 0 {
        e.push(ev("latch_for_long_lines", i.latch_for_long_lines as f64));
    }
    e
}

fn verdict(
    i: &DiagnosisInput,
    v: &View,
    bottleneck: Stage,
    case: Case,
    finding: String,
    suggestions: Vec<Suggestion>,
) -> Diagnosis {
    Diagnosis {
        bottleneck,
        case,
        finding,
        stages: stage_figures(v),
        evidence: evidence_of(i, v),
        suggestions,
    }
}

/// The diagnosis of one window (pure). Never a suggestion for a down, stopped, idle or
/// healthy pipeline.
pub fn diagnose(i: &DiagnosisInput) -> Diagnosis {
    let v = view_of(i);
    let s = &i.settings;
    let none =
        |case: Case, finding: &str| verdict(i, &v, Stage::None, case, finding.into(), Vec::new());

    // Down, stopped, idle: other alerts own those (gravity exits on purpose in many
    // situations, and a batch pipeline exits 0 when done); nothing to diagnose.
    match i.process {
        Process::Down => return none(Case::Down, "gravity is not running"),
        Process::Stopped => return none(Case::Stopped, "gravity has stopped"),
        Process::Up => {}
    }
    if i.idle {
        // gravity's heartbeat (a ctl row every 3 s) keeps watermarks fresh while the source is idle.
        return none(Case::Idle, "no source rows to move");
    }

    let worker_fill = v.worker_fill.map_or(0.0, |g| g.mean);
    let window_fill = v.window.as_ref().map_or(0.0, |(_, g)| g.mean);
    // gravity's submit blocks while the sliding window or a table's queue is full, and a
    // worker queue holds at most queue-size batches: full queues are backpressure.
    let backpressure = worker_fill >= WORKER_QUEUE_FULL || window_fill >= WINDOW_FULL;
    // A full window with nothing written is stuck before gravity's first `item not ack`
    // line (30 s after the item entered).
    let stuck = i.item_not_ack_lines > 0
        || (window_fill >= WINDOW_FULL
            && i.rows_out_per_second
                .is_some_and(|r| r < IDLE_ROWS_PER_SECOND));
    let behind = match i.mode {
        Mode::Stream => {
            v.lag_growing
                || v.binlog_growing
                || backpressure
                || stuck
                || i.event_lag_seconds
                    .is_some_and(|l| l >= s.healthy_threshold_seconds.value)
        }
        // A full dump has no event-time lag to fall behind on: only its queues and pace say.
        Mode::Batch => backpressure || stuck || dump_at_ceiling(i).is_some(),
    };
    if !behind {
        return none(Case::Healthy, "keeping up");
    }

    if stuck {
        return stuck_window(i, &v);
    }
    if let Some(d) = retries_rule(i, &v) {
        return d;
    }
    if let Some(d) = hot_rows(i, &v, worker_fill) {
        return d;
    }
    let output_share = share_of(&v, Stage::Output);
    // Output dominating alone is gravity's normal profile (mostly the write side): writes are
    // the limit when it dominates and rows queue up in front of the workers.
    let writes = worker_fill >= WORKER_QUEUE_FULL
        || window_fill >= WINDOW_FULL
        || (output_share >= DOMINANT_SHARE
            && (worker_fill >= WRITES_QUEUED || window_fill >= WRITES_QUEUED));
    if writes {
        return writes_rule(i, &v, worker_fill, output_share);
    }
    if i.mode == Mode::Stream
        && worker_fill < QUEUES_EMPTY
        && window_fill < QUEUES_EMPTY
        && (v.lag_growing || v.binlog_growing)
    {
        return reading_rule(i, &v);
    }
    if i.mode == Mode::Batch {
        if let Some((rate, ceiling, scanners)) = dump_at_ceiling(i) {
            return dump_pace(i, &v, rate, ceiling, scanners);
        }
    }
    let slowest = v
        .shares
        .iter()
        .filter_map(|(st, sh, _)| sh.map(|x| (*st, x)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map_or(Stage::None, |(st, _)| st);
    verdict(
        i,
        &v,
        slowest,
        Case::Unclear,
        format!(
            "falling behind; no rule matched, the slowest stage is {}",
            slowest.as_str()
        ),
        Vec::new(),
    )
}

/// gravity's sliding window commits items in order: one item not acknowledged holds every
/// later one, the window fills, submit blocks, and after 30 s (`ProcessDelayWarningThreshold`)
/// gravity logs `[sliding_window] item not ack after N seconds. <stream> seq <seq>` every second.
fn stuck_window(i: &DiagnosisInput, v: &View) -> Diagnosis {
    let s = &i.settings;
    let item = i
        .stuck_items
        .iter()
        .max_by(|a, b| a.waited_seconds.total_cmp(&b.waited_seconds));
    let named = item.map_or_else(
        || "an item".to_string(),
        |it| {
            format!(
                "item seq {} of stream {} (not acknowledged for {:.0} s)",
                it.seq, it.stream, it.waited_seconds
            )
        },
    );
    let fill = v.window.as_ref().map_or(0.0, |(_, g)| g.mean);
    let finding = format!(
        "stuck sliding window: {named}; the window is {:.0} % full behind it",
        fill * 100.0
    );
    let sugg = vec![keep(
        "sliding-window-size",
        s.sliding_window_size,
        format!(
            "{named} holds the window: gravity commits in order, so a larger window only delays the stall ({} lines in the window)",
            i.item_not_ack_lines
        ),
        "the worker writing that item: the target's processlist, long transactions or metadata locks on its table, a hung connection".into(),
    )];
    verdict(i, v, Stage::Output, Case::StuckWindow, finding, sugg)
}

/// gravity's MySQL output retries a failed batch `nr-retries` times, `retry-sleep` apart,
/// counting `gravity_scheduler_retry_counter` and logging the cause; deadlocks and lock
/// waits are contention on the target, which more workers make worse.
fn retries_rule(i: &DiagnosisInput, v: &View) -> Option<Diagnosis> {
    let logged: u64 = i.retry_causes.iter().map(|(_, n)| *n).sum();
    let counted = i.retries.unwrap_or(0.0);
    if counted < 1.0 && logged == 0 {
        return None;
    }
    let cause = i
        .retry_causes
        .iter()
        .max_by_key(|(_, n)| *n)
        .map(|(c, _)| *c);
    let s = &i.settings;
    let n = counted.max(logged as f64);
    let cause_txt = cause.map_or("unknown (no retry line in the log)", RetryCause::as_str);
    let finding = format!("{n:.0} retries on the target in the window, cause {cause_txt}");
    let sugg = if cause.is_some_and(RetryCause::is_contention) {
        vec![keep(
            "nr-worker",
            s.nr_worker,
            format!(
                "the retries are contention on the target ({cause_txt}); more workers write more rows at once and contend more; each retry waits retry-sleep {} s, up to nr-retries {} times",
                s.retry_sleep_seconds.value, s.nr_retries.value
            ),
            "the target's lock waits and deadlocks (SHOW ENGINE INNODB STATUS), other writers on the same rows, unique keys".into(),
        )]
    } else {
        vec![nothing(
            format!(
                "the target fails writes ({cause_txt}); gravity has no setting that prevents that"
            ),
            "the target's error log, the network to it, its connection limits".into(),
        )]
    };
    Some(verdict(i, v, Stage::Target, Case::Retries, finding, sugg))
}

/// gravity latches each row key in flight (`table-latch`): a message whose key is latched
/// waits in its table's queue; gravity logs `latch for long` after 5 s. Rows of one table
/// spread over all workers unless their keys conflict, so hot keys serialise that table and
/// more workers do not help.
fn hot_rows(i: &DiagnosisInput, v: &View, worker_fill: f64) -> Option<Diagnosis> {
    if worker_fill >= WORKERS_IDLE {
        return None;
    }
    let total: f64 = i.queues.tables.iter().map(|t| t.queue.mean).sum();
    let hot = i
        .queues
        .tables
        .iter()
        .filter(|t| t.latch.max > 0.0)
        .max_by(|a, b| a.queue.mean.total_cmp(&b.queue.mean))?;
    let dominant = total > 0.0 && hot.queue.mean >= 0.5 * total;
    if !(dominant && (hot.queue.mean >= HOT_TABLE_QUEUE || i.latch_for_long_lines > 0)) {
        return None;
    }
    let s = &i.settings;
    let finding = format!(
        "hot rows on {}: {:.0} messages wait for latched keys ({:.0} keys in flight) while the workers' queues are {:.0} % full",
        hot.table,
        hot.queue.mean,
        hot.latch.mean,
        worker_fill * 100.0
    );
    let sugg = vec![keep(
        "nr-worker",
        s.nr_worker,
        format!(
            "rows of {} wait on their own keys, not on workers: more workers will not help",
            hot.table
        ),
        format!(
            "the application's writes to {}: the same rows updated again and again (counters, status rows)",
            hot.table
        ),
    )];
    Some(verdict(
        i,
        v,
        Stage::Scheduler,
        Case::HotRows,
        finding,
        sugg,
    ))
}

/// Writes are the limit: worker queues (capacity `queue-size`) near full, or the output's
/// write (`gravity_output_latency`, worker start to ack) dominating the time in gravity.
/// Batches go to workers round-robin, so `nr-worker` multiplies write concurrency while the
/// target has headroom; `batch-size` caps the rows of one worker batch.
fn writes_rule(i: &DiagnosisInput, v: &View, worker_fill: f64, output_share: f64) -> Diagnosis {
    let s = &i.settings;
    let probe_ok = i
        .target_probe_latency_seconds
        .is_none_or(|l| l < TARGET_SLOW_SECONDS);
    let conns_ok = match (i.target_connections, s.max_open) {
        (Some(c), Some(m)) => c < CONNECTIONS_NEAR_MAX * m.value,
        _ => true,
    };
    let batch_full = i
        .batch_size
        .is_some_and(|b| b.mean >= BATCH_FULL * s.batch_size.value);
    let mut sugg = Vec::new();
    let why = format!(
        "worker queues {:.0} % of queue-size {}, output {:.0} % of the time in gravity",
        worker_fill * 100.0,
        s.queue_size.value,
        output_share * 100.0
    );
    // The target answers quickly: it has room for more concurrent writes. Each worker holds
    // one of gravity's connections while it writes (the pool is capped at max-open), so
    // more workers need max-open to follow.
    if probe_ok {
        let to = s.nr_worker.value * 2.0;
        sugg.push(change(
            "nr-worker",
            s.nr_worker,
            to,
            format!(
                "{why}; the target has headroom (probe {}, connections {} of max-open {})",
                i.target_probe_latency_seconds
                    .map_or("unknown".into(), fmt_ms),
                i.target_connections
                    .map_or("unknown".into(), |c| format!("{c:.0}")),
                s.max_open
                    .map_or("unknown".into(), |m| format!("{:.0}", m.value)),
            ),
        ));
        if let Some(m) = s.max_open {
            let need = if conns_ok { to } else { to.max(m.value * 2.0) };
            if need > m.value {
                sugg.push(change(
                    "max-open",
                    m,
                    need,
                    format!(
                        "gravity's connection pool to the target (max-open {:.0}) must hold nr-worker {to:.0} writers{}",
                        m.value,
                        if conns_ok {
                            String::new()
                        } else {
                            format!(
                                "; its connections ({:.0}) are already near max-open",
                                i.target_connections.unwrap_or(0.0)
                            )
                        }
                    ),
                ));
            }
        }
    }
    if batch_full {
        sugg.push(change(
            "batch-size",
            s.batch_size,
            s.batch_size.value * 2.0,
            format!(
                "the workers' batches are full ({:.1} rows of batch-size {}): larger batches write more rows per statement",
                i.batch_size.map_or(0.0, |b| b.mean),
                s.batch_size.value
            ),
        ));
    }
    if sugg.is_empty() {
        // No headroom on the target and batches not full: the target itself is the limit.
        let finding = format!(
            "the target is the limit: {why}; probe {}, connections {}",
            i.target_probe_latency_seconds
                .map_or("unknown".into(), fmt_ms),
            i.target_connections
                .map_or("unknown".into(), |c| format!("{c:.0}"))
        );
        sugg.push(keep(
            "nr-worker",
            s.nr_worker,
            "the target answers slowly or gravity's connections are at max-open; more workers add load to it".into(),
            "the target itself: its latency, locks, disk and CPU, other load on it".into(),
        ));
        return verdict(i, v, Stage::Target, Case::TargetLimit, finding, sugg);
    }
    let finding = format!("writes are the limit: {why}");
    verdict(i, v, Stage::Output, Case::Writes, finding, sugg)
}

/// Reading is the limit: gravity's queues are empty (the scheduler waits for rows) while
/// the event-time lag or the source's binlog bytes behind grow.
fn reading_rule(i: &DiagnosisInput, v: &View) -> Diagnosis {
    let input_share = share_of(v, Stage::Input);
    let stage = if input_share >= DOMINANT_SHARE && !v.binlog_growing {
        Stage::Input
    } else {
        Stage::Source
    };
    let mut growth = Vec::new();
    if let Some(d) = i.event_lag_change_seconds {
        growth.push(format!("event-time lag {d:+.1} s"));
    }
    if let Some(d) = i.binlog_bytes_behind_change {
        growth.push(format!("binlog bytes behind {d:+.0}"));
    }
    let finding = format!(
        "reading is the limit: gravity's queues are empty while {} over the window",
        growth.join(" and ")
    );
    let sugg = vec![nothing(
        "the scheduler and the workers wait for rows; none of gravity's settings makes a binlog stream read faster".into(),
        "the source (its load, binlog dump thread), the network between source and gravity, gravity's CPU".into(),
    )];
    verdict(i, v, stage, Case::Reading, finding, sugg)
}

/// A full dump's throttle: each of up to `nr-scanner` scanners (one table each) reads
/// `table-scan-batch` rows per batch and at most `batch-per-second-limit` batches a second.
/// `(rate, ceiling, active scanners)` when the input runs at that ceiling.
fn dump_at_ceiling(i: &DiagnosisInput) -> Option<(f64, f64, f64)> {
    if i.mode != Mode::Batch {
        return None;
    }
    let s = &i.settings;
    let rate = i.rows_in_per_second?;
    let scanners = i
        .tables_remaining
        .map_or(s.nr_scanner.value, |t| f64::from(t).min(s.nr_scanner.value))
        .max(1.0);
    let ceiling = scanners * s.table_scan_batch.value * s.batch_per_second_limit.value;
    (ceiling > 0.0 && rate >= DUMP_AT_CEILING * ceiling).then_some((rate, ceiling, scanners))
}

fn dump_pace(i: &DiagnosisInput, v: &View, rate: f64, ceiling: f64, scanners: f64) -> Diagnosis {
    let s = &i.settings;
    let finding = format!(
        "full dump at its throttle: {rate:.0} rows/s of a ceiling of {ceiling:.0} ({scanners:.0} scanners × table-scan-batch {} × batch-per-second-limit {})",
        s.table_scan_batch.value, s.batch_per_second_limit.value
    );
    let mut sugg = vec![change(
        "batch-per-second-limit",
        s.batch_per_second_limit,
        s.batch_per_second_limit.value * 2.0,
        "each scanner waits for its throttle between batches; the source and target have room while the queues stay low".into(),
    )];
    sugg.push(change(
        "table-scan-batch",
        s.table_scan_batch,
        s.table_scan_batch.value * 2.0,
        "more rows per scan query for the same number of batches a second".into(),
    ));
    if let Some(t) = i.tables_remaining {
        let t = f64::from(t);
        if t > s.nr_scanner.value {
            sugg.push(change(
                "nr-scanner",
                s.nr_scanner,
                t.min(s.nr_scanner.value * 2.0),
                format!("{t:.0} tables remain for {} scanners", s.nr_scanner.value),
            ));
        }
    }
    verdict(i, v, Stage::Input, Case::DumpPace, finding, sugg)
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests;
