//! The simulated pipeline: what a gravity process would have counted, at any instant.
//!
//! Everything is an exact function of a "flow clock" so tests can compute the truth:
//! the pipeline has moved `F` rows, with `F` growing by `R` rows per second while rows flow
//! and frozen otherwise; table `i` gets share `w_i` (harmonic weights), operations insert,
//! update, delete get 60/30/10 %, so a counter is `floor(w_i × s_op × F)`. The output side
//! follows with a delay of [`OUTPUT_DELAY`]; the heartbeat probe adds one `ctl` row per second
//! while the probe works. Fault modes change which clocks run ([`Mode`]).

use super::config::{InputMode, InputType, OutputType, PipelineSpec, MAX_WORKERS};
use std::time::{Duration, Instant, SystemTime};

/// How far (in seconds of flow) the output side trails the input side.
pub const OUTPUT_DELAY: f64 = 0.25;
/// Operation shares of DML rows in stream mode.
pub const OP_SHARES: [(&str, f64); 3] = [("insert", 0.6), ("update", 0.3), ("delete", 0.1)];
/// Partitions per simulated Kafka topic.
pub const KAFKA_PARTITIONS: usize = 3;
/// Binlog bytes per DML row, heartbeat and DDL.
const BYTES_PER_ROW: f64 = 230.0;
const BYTES_PER_HEARTBEAT: u64 = 180;
const BYTES_PER_DDL: u64 = 350;
/// First binlog file index and the GTID the simulated source starts from.
const FIRST_BINLOG: u64 = 42;
const GTID_UUID: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
const GTID_START: u64 = 5117;

/// The double's fault mode (`POST /_double/fault?mode=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Healthy.
    None,
    /// Fatal log line, exit 1.
    Crash,
    /// Batch done: exit 0.
    Exit0,
    /// gravity endpoints accept but never answer.
    Hang,
    /// Pipeline stuck: watermarks, counters, position freeze.
    Stall,
    /// Every gravity endpoint answers 500.
    Http500,
    /// Endpoints answer random bytes with 200.
    Garbage,
    /// `/metrics` and `/status` answer 100 MB of junk.
    Huge,
    /// Source has no writes; heartbeat keeps watermarks fresh.
    Idle,
    /// Idle and the heartbeat probe fails: EventTime freezes.
    HeartbeatBroken,
    /// A Go runtime panic (`panic: ...` and the goroutine dump where the log goes), exit 2.
    Panic,
    /// Memory grows by 8 MiB every 5 ms up to 1 GiB and is held: under a cgroup memory
    /// limit the kernel's OOM killer ends it (SIGKILL, nothing logged).
    MemoryHog,
    /// A long DDL being applied: one DDL enters (input `type="ddl"` +1), the watermark's
    /// ProcessTime and the output stop while the heartbeat is still read; leaving the mode
    /// applies the DDL (output +1) and the pipeline moves on.
    LongDdl,
}

impl Mode {
    /// All modes, for error messages and tests.
    pub const ALL: [Mode; 13] = [
        Mode::None,
        Mode::Crash,
        Mode::Exit0,
        Mode::Hang,
        Mode::Stall,
        Mode::Http500,
        Mode::Garbage,
        Mode::Huge,
        Mode::Idle,
        Mode::HeartbeatBroken,
        Mode::Panic,
        Mode::MemoryHog,
        Mode::LongDdl,
    ];

    /// Name used by the control endpoint and `GRAVITY_DOUBLE_FAULT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Crash => "crash",
            Mode::Exit0 => "exit0",
            Mode::Hang => "hang",
            Mode::Stall => "stall",
            Mode::Http500 => "http500",
            Mode::Garbage => "garbage",
            Mode::Huge => "huge",
            Mode::Idle => "idle",
            Mode::HeartbeatBroken => "heartbeat_broken",
            Mode::Panic => "panic",
            Mode::MemoryHog => "memory_hog",
            Mode::LongDdl => "long_ddl",
        }
    }

    /// Parses a mode name (case-insensitive, `-` accepted for `_`).
    pub fn parse(s: &str) -> Option<Mode> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether source rows flow through the pipeline in this mode.
    pub fn flows(self) -> bool {
        !matches!(
            self,
            Mode::Stall | Mode::Idle | Mode::HeartbeatBroken | Mode::LongDdl
        )
    }

    /// Whether the heartbeat probe's rows arrive.
    pub fn heartbeats(self) -> bool {
        !matches!(self, Mode::Stall | Mode::HeartbeatBroken)
    }
}

/// A diagnosis case the double imitates (`POST /_double/diagnosis?case=`,
/// `GRAVITY_DOUBLE_DIAGNOSIS`): the shape gravity's figures take when that stage holds the
/// pipeline back (docs/diagnosis.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Case {
    /// No case: the figures of the fault mode alone.
    None,
    /// Slow target writes: output latency 2 s, worker queues near `queue-size`, full batches,
    /// the sliding window three quarters full, lag growing.
    SlowWrites,
    /// Hot rows on the first table: its `table-queue` long and `table-latch` 1024 keys while
    /// the workers idle, `latch for long` lines, lag growing.
    HotRows,
    /// Slow reading: every queue empty, input latency up, lag growing.
    SlowReading,
    /// A stuck window: one item not acknowledged (the pipeline stalls), the window full,
    /// `[sliding_window] item not ack after N seconds` every second once N > 30.
    StuckWindow,
    /// Retries with a deadlock cause: a retry a second (deadlock, deadlock, lock wait),
    /// counted in `gravity_scheduler_retry_counter`, lag growing.
    Retries,
    /// A full dump at its throttle: rows in at 96 % of scanners × `table-scan-batch` ×
    /// `batch-per-second-limit` (batch mode).
    SlowDump,
}

impl Case {
    /// All cases.
    pub const ALL: [Case; 7] = [
        Case::None,
        Case::SlowWrites,
        Case::HotRows,
        Case::SlowReading,
        Case::StuckWindow,
        Case::Retries,
        Case::SlowDump,
    ];

    /// Name used by the control endpoint and `GRAVITY_DOUBLE_DIAGNOSIS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Case::None => "none",
            Case::SlowWrites => "slow_writes",
            Case::HotRows => "hot_rows",
            Case::SlowReading => "slow_reading",
            Case::StuckWindow => "stuck_window",
            Case::Retries => "retries",
            Case::SlowDump => "slow_dump",
        }
    }

    /// Parses a case name (case-insensitive, `-` accepted for `_`).
    pub fn parse(s: &str) -> Option<Case> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        Case::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// Seconds of event-time lag the case adds per second while it lasts.
    pub fn lag_growth(self) -> f64 {
        match self {
            Case::SlowWrites | Case::HotRows | Case::Retries => 0.5,
            Case::SlowReading => 0.8,
            // the stall freezes the watermark's EventTime: the lag grows by itself
            Case::None | Case::StuckWindow | Case::SlowDump => 0.0,
        }
    }
}

/// How long the stuck item of [`Case::StuckWindow`] has already waited when the case starts,
/// so that gravity's warning (past `ProcessDelayWarningThreshold`, 30 s) shows at once.
pub const STUCK_HEAD_START: f64 = 45.0;
/// gravity's `ProcessDelayWarningThreshold`: `item not ack` lines once an item waits longer.
pub const PROCESS_DELAY_WARNING: f64 = 30.0;

/// Knobs from the environment (`GRAVITY_DOUBLE_*`).
#[derive(Clone, Debug)]
pub struct Settings {
    /// `GRAVITY_DOUBLE_RATE`: rows per second (default 200).
    pub rate: f64,
    /// `GRAVITY_DOUBLE_LAG_SECONDS`: mean replication lag (default 0.8).
    pub lag_mean: f64,
    /// `GRAVITY_DOUBLE_DDL_EVERY`: seconds of flow between DDLs (None: never).
    pub ddl_every: Option<f64>,
    /// `GRAVITY_DOUBLE_RETRY_EVERY`: seconds between simulated retries (None: never).
    pub retry_every: Option<f64>,
    /// `GRAVITY_DOUBLE_NO_POSITION=1`: `/status` stays 500.
    pub no_position: bool,
    /// `GRAVITY_DOUBLE_TZ_OFFSET`: zone of printed times (default +08:00).
    pub zone: super::gofmt::ZoneOffset,
    /// `GRAVITY_DOUBLE_LOG_MAX_BYTES`: rotate the log file past this size.
    pub log_max_bytes: Option<u64>,
    /// `GRAVITY_DOUBLE_FAULT`: initial mode.
    pub initial_mode: Mode,
    /// `GRAVITY_DOUBLE_BINLOG_FILE_BYTES` (or `GRAVITY_DOUBLE_BINLOG_MB`): binlog file size
    /// before rolling over (default 1 MiB).
    pub binlog_file_bytes: u64,
    /// `GRAVITY_DOUBLE_BATCH_ROWS`: rows a batch pipeline copies in total (default 12000).
    pub batch_rows: u64,
    /// `GRAVITY_DOUBLE_BINLOG_BASENAME`: binlog file base name (default `mysql-bin`), so a
    /// test can put the simulated position among a real server's binlogs.
    pub binlog_base: String,
    /// `GRAVITY_DOUBLE_BINLOG_FIRST_INDEX`: index of the first binlog file (default 42).
    pub binlog_first_index: u64,
    /// `GRAVITY_DOUBLE_POSITION_DELAY_MS`: time until the first position is stored (default 300).
    pub position_delay: Duration,
    /// `GRAVITY_DOUBLE_DIAGNOSIS`: initial diagnosis case (default none).
    pub initial_case: Case,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            rate: 200.0,
            lag_mean: 0.8,
            ddl_every: None,
            retry_every: None,
            no_position: false,
            zone: super::gofmt::ZoneOffset::CHINA,
            log_max_bytes: None,
            initial_mode: Mode::None,
            binlog_file_bytes: 1 << 20,
            batch_rows: 12_000,
            position_delay: Duration::from_millis(300),
            binlog_base: "mysql-bin".into(),
            binlog_first_index: FIRST_BINLOG,
            initial_case: Case::None,
        }
    }
}

impl Settings {
    /// Reads the settings through `get` (the environment in production).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Settings {
        let d = Settings::default();
        let num = |k: &str| {
            get(k)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v >= 0.0)
        };
        Settings {
            rate: num("GRAVITY_DOUBLE_RATE").map_or(d.rate, |v| v.min(1e9)),
            lag_mean: num("GRAVITY_DOUBLE_LAG_SECONDS").map_or(d.lag_mean, |v| v.min(1e7)),
            ddl_every: num("GRAVITY_DOUBLE_DDL_EVERY").filter(|v| *v > 0.0),
            retry_every: num("GRAVITY_DOUBLE_RETRY_EVERY").filter(|v| *v > 0.0),
            no_position: get("GRAVITY_DOUBLE_NO_POSITION")
                .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes")),
            zone: get("GRAVITY_DOUBLE_TZ_OFFSET")
                .and_then(|v| super::gofmt::ZoneOffset::parse(&v))
                .unwrap_or(d.zone),
            log_max_bytes: num("GRAVITY_DOUBLE_LOG_MAX_BYTES")
                .map(|v| v as u64)
                .filter(|v| *v > 0),
            initial_mode: get("GRAVITY_DOUBLE_FAULT")
                .and_then(|v| Mode::parse(&v))
                .unwrap_or(Mode::None),
            binlog_file_bytes: num("GRAVITY_DOUBLE_BINLOG_FILE_BYTES")
                .or_else(|| num("GRAVITY_DOUBLE_BINLOG_MB").map(|mb| mb * 1_048_576.0))
                .map_or(d.binlog_file_bytes, |v| (v.min(1e15) as u64).max(4096)),
            batch_rows: num("GRAVITY_DOUBLE_BATCH_ROWS").map_or(d.batch_rows, |v| v as u64),
            binlog_base: get("GRAVITY_DOUBLE_BINLOG_BASENAME")
                .map(|v| v.trim().to_string())
                .filter(|v| {
                    !v.is_empty()
                        && v.len() <= 64
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
                .unwrap_or(d.binlog_base),
            binlog_first_index: num("GRAVITY_DOUBLE_BINLOG_FIRST_INDEX")
                .map_or(d.binlog_first_index, |v| (v as u64).clamp(1, 999_999)),
            position_delay: num("GRAVITY_DOUBLE_POSITION_DELAY_MS").map_or(d.position_delay, |v| {
                Duration::from_millis(v.min(3.6e6) as u64)
            }),
            initial_case: get("GRAVITY_DOUBLE_DIAGNOSIS")
                .and_then(|v| Case::parse(&v))
                .unwrap_or(Case::None),
        }
    }
}

/// One instant, on both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic.
    pub mono: Instant,
    /// Wall clock.
    pub wall: SystemTime,
}

impl Now {
    /// The current instant.
    pub fn current() -> Now {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// This instant plus `d` (for tests).
    pub fn plus(self, d: Duration) -> Now {
        Now {
            mono: self.mono + d,
            wall: self.wall + d,
        }
    }
}

/// The flow clocks, checkpointed whenever the mode or the rate changes.
#[derive(Clone, Debug)]
struct Flow {
    at: Instant,
    units: f64,
    out_units: f64,
    flow_secs: f64,
    hb_secs: f64,
    rate: f64,
    mode: Mode,
    heartbeat: bool,
}

impl Flow {
    fn dt(&self, now: Instant) -> f64 {
        now.saturating_duration_since(self.at).as_secs_f64()
    }
    fn units(&self, now: Instant) -> f64 {
        if self.mode.flows() {
            self.units + self.rate * self.dt(now)
        } else {
            self.units
        }
    }
    fn out_units(&self, now: Instant) -> f64 {
        let f = self.units(now);
        match self.mode {
            Mode::Stall | Mode::LongDdl => self.out_units,
            m if m.flows() => (f - self.rate * OUTPUT_DELAY).max(self.out_units).min(f),
            _ => f,
        }
    }
    fn flow_secs(&self, now: Instant) -> f64 {
        self.flow_secs + if self.mode.flows() { self.dt(now) } else { 0.0 }
    }
    fn hb_secs(&self, now: Instant) -> f64 {
        let on = self.heartbeat && self.mode.heartbeats();
        self.hb_secs + if on { self.dt(now) } else { 0.0 }
    }
    fn checkpoint(&mut self, now: Instant) {
        let (u, o, f, h) = (
            self.units(now),
            self.out_units(now),
            self.flow_secs(now),
            self.hb_secs(now),
        );
        self.units = u;
        self.out_units = o;
        self.flow_secs = f;
        self.hb_secs = h;
        self.at = now;
    }
}

/// A histogram with client_golang's semantics (cumulative buckets on output).
#[derive(Clone, Debug)]
pub struct Histogram {
    /// Upper bounds, ascending.
    pub buckets: Vec<f64>,
    /// Non-cumulative counts per bucket, plus one for +Inf.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// `prometheus.ExponentialBuckets(start, factor, count)`.
pub fn exp_buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    (0..count).map(|i| start * factor.powi(i as i32)).collect()
}

/// Multipliers of a log-normal spread (σ = 0.5) at eight fixed quantiles.
const SPREAD: [f64; 8] = [0.465, 0.641, 0.783, 0.923, 1.083, 1.277, 1.560, 2.150];

impl Histogram {
    /// An empty histogram with these buckets.
    pub fn new(buckets: Vec<f64>) -> Histogram {
        let n = buckets.len() + 1;
        Histogram {
            buckets,
            counts: vec![0; n],
            sum: 0.0,
            count: 0,
        }
    }

    /// Observes `v`, `n` times.
    pub fn observe_n(&mut self, v: f64, n: u64) {
        if n == 0 {
            return;
        }
        let idx = self
            .buckets
            .iter()
            .position(|b| v <= *b)
            .unwrap_or(self.buckets.len());
        if let Some(c) = self.counts.get_mut(idx) {
            *c += n;
        }
        self.sum += v * n as f64;
        self.count += n;
    }

    /// Observes observations number `from..to` (of a running total) around `typical`:
    /// observation `k` gets multiplier `SPREAD[k % 8]`, so the layout depends only on the totals.
    pub fn observe_range(&mut self, typical: f64, from: u64, to: u64) {
        if to <= from {
            return;
        }
        let below = |n: u64, k: u64| (n + 7 - k) / 8; // #r in [0,n) with r % 8 == k
        for (k, m) in SPREAD.iter().enumerate() {
            let k = k as u64;
            self.observe_n(typical * m, below(to, k) - below(from, k));
        }
    }
}

/// The latency histograms gravity exports.
#[derive(Clone, Debug)]
pub struct Hists {
    /// `gravity_input_probe_latency`
    pub probe: Histogram,
    /// `gravity_input_latency`
    pub input: Histogram,
    /// `gravity_input_after_commit_latency`
    pub after_commit: Histogram,
    /// `gravity_emitter_latency`
    pub emitter: Histogram,
    /// `gravity_scheduler_total_latency`
    pub sched_total: Histogram,
    /// `gravity_scheduler_submit_latency`
    pub sched_submit: Histogram,
    /// `gravity_scheduler_ack_latency`
    pub sched_ack: Histogram,
    /// `gravity_output_latency`
    pub output: Histogram,
    /// `gravity_event_time_latency`
    pub event_time: Histogram,
    /// `gravity_process_time_latency`
    pub process_time: Histogram,
    seen_in: u64,
    seen_out: u64,
    seen_batches: u64,
    seen_hb: u64,
    seen_commits: u64,
}

impl Hists {
    fn new() -> Hists {
        let eb = || exp_buckets(0.0005, 2.0, 15);
        let mut ev = exp_buckets(0.0005, 2.0, 15);
        ev.extend(exp_buckets(0.0005 * f64::from(1u32 << 15), 8.0, 6));
        Hists {
            probe: Histogram::new(exp_buckets(0.0005, 2.0, 22)),
            input: Histogram::new(eb()),
            after_commit: Histogram::new(eb()),
            emitter: Histogram::new(eb()),
            sched_total: Histogram::new(eb()),
            sched_submit: Histogram::new(eb()),
            sched_ack: Histogram::new(eb()),
            output: Histogram::new(exp_buckets(0.0005, 2.0, 18)),
            event_time: Histogram::new(ev),
            process_time: Histogram::new(exp_buckets(0.0005, 2.0, 19)),
            seen_in: 0,
            seen_out: 0,
            seen_batches: 0,
            seen_hb: 0,
            seen_commits: 0,
        }
    }
}

/// Counts of one table at an instant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableCounts {
    /// Input rows per operation (insert, update, delete).
    pub input: [u64; 3],
    /// Output rows per operation.
    pub output: [u64; 3],
    /// DDL statements seen (input) and applied (output).
    pub ddl: u64,
    /// Batch: rows scanned.
    pub scanned: u64,
    /// Batch: rows the table holds.
    pub total: u64,
    /// Batch: estimated-count gravity reports.
    pub estimated: u64,
    /// Batch: scanning finished.
    pub done: bool,
    /// DDL read but not yet applied (input only; [`Mode::LongDdl`]).
    pub ddl_pending: u64,
}

/// Everything countable at an instant.
#[derive(Clone, Debug, Default)]
pub struct Counts {
    /// Per table, same order as the spec's tables.
    pub tables: Vec<TableCounts>,
    /// Heartbeat (`ctl`) rows received.
    pub heartbeat: u64,
    /// DML + DDL rows received.
    pub input_total: u64,
    /// DML + DDL rows written.
    pub output_total: u64,
    /// DDL statements.
    pub ddl_total: u64,
    /// Flow units (rows) on the input clock.
    pub units: f64,
    /// Flow units on the output clock.
    pub out_units: f64,
    /// Seconds rows flowed.
    pub flow_secs: f64,
}

/// A watermark of one input stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Watermark {
    /// Input stream key (`mysqlstream`, `mongooplog`, `db.table`).
    pub key: String,
    /// Last time the stream's items were processed.
    pub process_time: SystemTime,
    /// Source time of the last processed item.
    pub event_time: SystemTime,
    /// Batch: the stream is closed (table done), ignored by `/healthz`.
    pub closed: bool,
}

/// Why gravity's `Healthy()` says no.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unhealthy {
    /// A sliding window's ProcessTime is older than the threshold.
    Window {
        /// Input stream key.
        key: String,
        /// Age of its ProcessTime.
        age: Duration,
    },
    /// No window at all, longer than the threshold after start.
    NoWindow(Duration),
}

/// Binlog coordinates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinlogPos {
    /// `mysql-bin.000042`
    pub name: String,
    /// Offset in the file.
    pub pos: u64,
    /// Executed GTID set.
    pub gtid: String,
}

/// The simulated gravity process.
#[derive(Debug)]
pub struct Sim {
    /// From the config file.
    pub spec: PipelineSpec,
    /// From the environment.
    pub settings: Settings,
    /// Process start.
    pub start: Now,
    flow: Flow,
    weights: Vec<f64>,
    process_frozen: Option<SystemTime>,
    event_frozen: Option<SystemTime>,
    /// `gravity_scheduler_retry_counter`.
    pub retries: u64,
    lag_mean: f64,
    /// Latency histograms.
    pub hists: Hists,
    done_at: Vec<Option<SystemTime>>,
    /// Scrapes of /metrics answered, by code 200, 500, 503.
    pub scrapes: [u64; 3],
    /// /metrics requests being served.
    pub in_flight: u64,
    /// Whether a position has been stored (gates `/status`).
    pub position_stored: bool,
    /// A stream watermark pinned from outside (`POST /_double/watermark`): (EventTime,
    /// ProcessTime) of a real data path the double stands in for (a MariaDB replica).
    pub external_watermark: Option<(SystemTime, SystemTime)>,
    case: Case,
    case_since: Now,
    /// `(seq, stream)` of the item [`Case::StuckWindow`] holds.
    stuck_item: Option<(u64, String)>,
    /// DDLs applied after a [`Mode::LongDdl`] (table 0).
    ddl_applied: u64,
}

/// Harmonic table weights `1/(i+1)`, normalised.
fn weights(n: usize) -> Vec<f64> {
    let raw: Vec<f64> = (0..n).map(|i| 1.0 / (i as f64 + 1.0)).collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|w| w / sum).collect()
}

fn floor_u64(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.floor() as u64
    } else {
        0
    }
}

/// A small deterministic hash for gauge jitter.
pub fn mix(a: u64, b: u64) -> u64 {
    let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_add(0x632B_E59B_D9B4_E019);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

impl Sim {
    /// A fresh simulation starting at `now`.
    pub fn new(spec: PipelineSpec, settings: Settings, now: Now) -> Sim {
        let n = spec.tables.len();
        let heartbeat = spec.mode == InputMode::Stream;
        let mode = match settings.initial_mode {
            Mode::Crash | Mode::Exit0 | Mode::Panic | Mode::MemoryHog => Mode::None,
            m => m,
        };
        let lag_mean = settings.lag_mean;
        let mut sim = Sim {
            flow: Flow {
                at: now.mono,
                units: 0.0,
                out_units: 0.0,
                flow_secs: 0.0,
                hb_secs: 0.0,
                rate: settings.rate,
                mode: Mode::None,
                heartbeat,
            },
            weights: weights(n),
            spec,
            settings,
            start: now,
            process_frozen: None,
            event_frozen: None,
            external_watermark: None,
            retries: 0,
            lag_mean,
            hists: Hists::new(),
            done_at: vec![None; n],
            scrapes: [0; 3],
            in_flight: 0,
            position_stored: false,
            case: Case::None,
            case_since: now,
            stuck_item: None,
            ddl_applied: 0,
        };
        sim.set_mode(mode, now);
        let case = sim.settings.initial_case;
        sim.set_case(case, now);
        sim
    }

    /// The diagnosis case in force.
    pub fn case(&self) -> Case {
        self.case
    }

    /// Seconds since the case was set.
    pub fn case_for(&self, now: Now) -> f64 {
        now.mono
            .saturating_duration_since(self.case_since.mono)
            .as_secs_f64()
    }

    /// Switches the diagnosis case at `now`. A stuck window stalls the pipeline (mode
    /// `stall`, gravity's window waits for the item); leaving it thaws the pipeline. A slow
    /// dump sets the row rate to 96 % of the full dump's throttle ceiling.
    pub fn set_case(&mut self, case: Case, now: Now) {
        let was = self.case;
        self.case = case;
        self.case_since = now;
        self.stuck_item = None;
        if case == Case::StuckWindow {
            let c = self.counts(now);
            let key = self
                .watermarks(now)
                .first()
                .map_or_else(|| self.stream_key().to_string(), |w| w.key.clone());
            self.stuck_item = Some((c.input_total + c.heartbeat + 1, key));
            self.set_mode(Mode::Stall, now);
        } else if was == Case::StuckWindow && self.mode() == Mode::Stall {
            self.set_mode(Mode::None, now);
        }
        if case == Case::SlowDump {
            let rate = 0.96 * self.dump_ceiling(now);
            self.set_rate(rate, now);
        }
    }

    /// A full dump's throttle: each of `min(nr-scanner, tables left)` scanners reads
    /// `table-scan-batch` rows per batch, at most `batch-per-second-limit` batches a second.
    pub fn dump_ceiling(&self, now: Now) -> f64 {
        let b = &self.spec.batch_input;
        let left = self.counts(now).tables.iter().filter(|t| !t.done).count() as u64;
        let scanners = b.nr_scanner.min(left.max(1));
        (scanners * b.table_scan_batch * b.batch_per_second_limit) as f64
    }

    /// The item a stuck window waits for: `(seq, stream, seconds waited)`.
    pub fn stuck_item(&self, now: Now) -> Option<(u64, String, f64)> {
        let (seq, key) = self.stuck_item.clone()?;
        Some((seq, key, STUCK_HEAD_START + self.case_for(now)))
    }

    /// Current fault mode.
    pub fn mode(&self) -> Mode {
        self.flow.mode
    }

    /// Current rows-per-second setting.
    pub fn rate(&self) -> f64 {
        self.flow.rate
    }

    /// Table weights (shares of the row rate).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// Switches the fault mode at `now`, freezing or thawing the clocks.
    pub fn set_mode(&mut self, mode: Mode, now: Now) {
        let lag_now = self.lag(now);
        self.flow.checkpoint(now.mono);
        let old = self.flow.mode;
        self.flow.mode = mode;
        let event_now = now.wall.checked_sub(secs(lag_now)).unwrap_or(now.wall);
        if old == Mode::LongDdl && mode != Mode::LongDdl {
            self.ddl_applied += 1;
        }
        match mode {
            Mode::Stall | Mode::LongDdl => {
                if old != mode {
                    self.process_frozen = Some(now.wall);
                    if self.event_frozen.is_none() {
                        self.event_frozen = Some(event_now);
                    }
                }
            }
            Mode::HeartbeatBroken => {
                self.process_frozen = None;
                if self.event_frozen.is_none() {
                    self.event_frozen = Some(event_now);
                }
            }
            _ => {
                self.process_frozen = None;
                self.event_frozen = None;
            }
        }
    }

    /// Changes the row rate at `now`.
    pub fn set_rate(&mut self, rate: f64, now: Now) {
        self.flow.checkpoint(now.mono);
        self.flow.rate = rate.clamp(0.0, 1e9);
    }

    /// Changes the mean lag.
    pub fn set_lag_mean(&mut self, lag: f64) {
        self.lag_mean = lag.clamp(0.0, 1e7);
    }

    /// Mean lag in use.
    pub fn lag_mean(&self) -> f64 {
        self.lag_mean
    }

    /// Seconds since start.
    pub fn uptime(&self, now: Now) -> f64 {
        now.mono
            .saturating_duration_since(self.start.mono)
            .as_secs_f64()
    }

    /// The replication lag at `now`: varies smoothly around the mean.
    pub fn lag(&self, now: Now) -> f64 {
        let u = self.uptime(now);
        let tau = std::f64::consts::TAU;
        let wave = 1.0 + 0.3 * (tau * u / 47.0).sin() + 0.1 * (tau * u / 11.0).sin();
        (self.lag_mean * wave).max(0.0) + self.case.lag_growth() * self.case_for(now)
    }

    /// Seconds the pipeline has been stalled (0 when not stalled).
    pub fn stalled_for(&self, now: Now) -> f64 {
        self.process_frozen
            .and_then(|t| now.wall.duration_since(t).ok())
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// Batch: rows per table (reversed weights, so tables finish at different times).
    fn batch_totals(&self) -> Vec<u64> {
        self.weights
            .iter()
            .rev()
            .map(|u| ((self.settings.batch_rows as f64 * u).round() as u64).max(1))
            .collect()
    }

    /// All counters at `now`.
    pub fn counts(&self, now: Now) -> Counts {
        let units = self.flow.units(now.mono);
        let out_units = self.flow.out_units(now.mono);
        let flow_secs = self.flow.flow_secs(now.mono);
        // The probe fires once at start, then every second.
        let heartbeat = if self.flow.heartbeat {
            floor_u64(self.flow.hb_secs(now.mono)) + 1
        } else {
            0
        };
        let n = self.weights.len() as u64;
        let ddl_total = match (self.spec.mode, self.settings.ddl_every) {
            (InputMode::Stream, Some(every)) => floor_u64(flow_secs / every),
            _ => 0,
        };
        let mut c = Counts {
            heartbeat,
            ddl_total,
            units,
            out_units,
            flow_secs,
            ..Counts::default()
        };
        let totals = self.batch_totals();
        for (i, w) in self.weights.iter().enumerate() {
            let mut t = TableCounts::default();
            match self.spec.mode {
                InputMode::Stream => {
                    let slots = t.input.iter_mut().zip(t.output.iter_mut());
                    for ((inp, outp), (_, s)) in slots.zip(OP_SHARES.iter()) {
                        *inp = floor_u64(w * s * units);
                        *outp = floor_u64(w * s * out_units);
                    }
                    if i == 0 {
                        t.ddl_pending = u64::from(self.flow.mode == Mode::LongDdl);
                        t.ddl += self.ddl_applied;
                    }
                    let i = i as u64;
                    t.ddl += ddl_total / n + u64::from(i < ddl_total % n);
                }
                InputMode::Batch => {
                    let total = totals.get(i).copied().unwrap_or(1);
                    t.total = total;
                    t.scanned = floor_u64(w * units).min(total);
                    t.input = [t.scanned, 0, 0];
                    t.output = [floor_u64(w * out_units).min(total), 0, 0];
                    t.done = t.scanned >= total;
                    // estimated-count comes from table statistics: off by a few percent,
                    // sometimes below what is really there.
                    const FACTORS: [f64; 4] = [0.985, 1.02, 0.97, 1.01];
                    let factor = FACTORS.get(i % FACTORS.len()).copied().unwrap_or(1.0);
                    t.estimated = (total as f64 * factor).round() as u64;
                }
            }
            c.input_total += t.input.iter().sum::<u64>() + t.ddl + t.ddl_pending;
            c.output_total += t.output.iter().sum::<u64>() + t.ddl;
            c.tables.push(t);
        }
        c
    }

    /// Rows per second per table and operation right now (the truth a test compares with).
    pub fn true_rates(&self, now: Now) -> Vec<(usize, &'static str, f64)> {
        let flowing = self.flow.mode.flows();
        let rate = if flowing { self.flow.rate } else { 0.0 };
        let c = self.counts(now);
        let mut out = Vec::new();
        for (i, w) in self.weights.iter().enumerate() {
            match self.spec.mode {
                InputMode::Stream => {
                    for (op, s) in OP_SHARES {
                        out.push((i, op, rate * w * s));
                    }
                }
                InputMode::Batch => {
                    let done = c.tables.get(i).is_some_and(|t| t.done);
                    out.push((i, "insert", if done { 0.0 } else { rate * w }));
                }
            }
        }
        out
    }

    /// Heartbeat rows per second right now.
    pub fn heartbeat_rate(&self) -> f64 {
        if self.flow.heartbeat && self.flow.mode.heartbeats() {
            1.0
        } else {
            0.0
        }
    }

    /// Whether every batch table has been copied and written (the pipeline then exits 0).
    pub fn batch_finished(&self, now: Now) -> bool {
        self.spec.mode == InputMode::Batch
            && self
                .counts(now)
                .tables
                .iter()
                .all(|t| t.done && t.output[0] >= t.total)
    }

    /// Records when batch tables finished (for their frozen watermarks).
    pub fn note_done(&mut self, now: Now) {
        if self.spec.mode != InputMode::Batch {
            return;
        }
        let c = self.counts(now);
        for (i, t) in c.tables.iter().enumerate() {
            if let Some(slot) = self.done_at.get_mut(i) {
                if t.done && t.output[0] >= t.total && slot.is_none() {
                    *slot = Some(now.wall);
                }
            }
        }
    }

    /// Brings the histograms up to date with the counters at `now`.
    pub fn update_hists(&mut self, now: Now) {
        let c = self.counts(now);
        let lag = self.lag(now).max(0.0004);
        let batch = self.spec.scheduler.batch_size.max(1);
        let batches = c.output_total / batch;
        let commits = c.output_total / 100 + c.heartbeat;
        let h = &mut self.hists;
        let (si, so, sb, sh, sc) = (
            h.seen_in,
            h.seen_out,
            h.seen_batches,
            h.seen_hb,
            h.seen_commits,
        );
        // Typical latencies (input, emitter, submit, ack, total, output) per diagnosis case:
        // submit grows with backpressure (a full window or table queue), output is the
        // time inside the write.
        let (t_in, t_em, t_sub, t_ack, t_tot, t_out) = match self.case {
            Case::SlowWrites => (0.001, 0.0008, 0.4, 0.005, 2.4, 2.0),
            Case::HotRows => (0.001, 0.0008, 0.9, 0.005, 0.92, 0.01),
            Case::SlowReading => (0.004, 0.0008, 0.001, 0.005, 0.03, 0.02),
            Case::StuckWindow => (0.001, 0.0008, 6.0, 0.005, 6.0, 0.02),
            Case::Retries => (0.001, 0.0008, 0.2, 0.005, 0.5, 0.3),
            Case::None | Case::SlowDump => (0.001, 0.0008, 0.001, 0.005, 0.01, 0.02),
        };
        if c.input_total > si {
            h.input.observe_range(t_in, si, c.input_total);
            h.emitter.observe_range(t_em, si, c.input_total);
            h.sched_submit.observe_range(t_sub, si, c.input_total);
            h.seen_in = c.input_total;
        }
        if c.output_total > so {
            h.sched_total.observe_range(t_tot, so, c.output_total);
            h.sched_ack.observe_range(t_ack, so, c.output_total);
            h.event_time.observe_range(lag, so, c.output_total);
            h.process_time.observe_range(0.05, so, c.output_total);
            h.seen_out = c.output_total;
        }
        if batches > sb {
            h.output.observe_range(t_out, sb, batches);
            h.seen_batches = batches;
        }
        if c.heartbeat > sh {
            h.probe.observe_range(0.02, sh, c.heartbeat);
            h.seen_hb = c.heartbeat;
        }
        if commits > sc {
            h.after_commit.observe_range(0.002, sc, commits);
            h.seen_commits = commits;
        }
    }

    /// The input stream key of a stream pipeline.
    pub fn stream_key(&self) -> &'static str {
        match self.spec.input {
            InputType::Mysql => "mysqlstream",
            InputType::Mongo => "mongooplog",
        }
    }

    /// Watermarks at `now`, sorted by key.
    pub fn watermarks(&self, now: Now) -> Vec<Watermark> {
        if let (Some((event, process)), InputMode::Stream) =
            (self.external_watermark, self.spec.mode)
        {
            return vec![Watermark {
                key: self.stream_key().to_string(),
                process_time: process,
                event_time: event.min(process),
                closed: false,
            }];
        }
        let fresh_process = now
            .wall
            .checked_sub(Duration::from_millis(3))
            .unwrap_or(now.wall);
        let process = self.process_frozen.unwrap_or(fresh_process);
        let lag = secs(self.lag(now));
        let event = self
            .event_frozen
            .unwrap_or_else(|| now.wall.checked_sub(lag).unwrap_or(now.wall));
        match self.spec.mode {
            InputMode::Stream => vec![Watermark {
                key: self.stream_key().to_string(),
                process_time: process,
                event_time: event.min(process),
                closed: false,
            }],
            InputMode::Batch => {
                let c = self.counts(now);
                let mut out: Vec<Watermark> = self
                    .spec
                    .tables
                    .iter()
                    .zip(c.tables.iter())
                    .zip(self.done_at.iter())
                    .filter(|((_, tc), _)| tc.scanned > 0)
                    .map(|((t, _), done)| {
                        let pt = done.unwrap_or(process);
                        Watermark {
                            key: format!("{}.{}", t.db, t.table),
                            process_time: pt,
                            event_time: pt.checked_sub(Duration::from_micros(1219)).unwrap_or(pt),
                            closed: done.is_some(),
                        }
                    })
                    .collect();
                out.sort_by(|a, b| a.key.cmp(&b.key));
                out
            }
        }
    }

    /// gravity's `Healthy()`: `Err((key, age))` for the first window older than the threshold.
    pub fn healthy(&self, now: Now) -> Result<(), Unhealthy> {
        if self.spec.scheduler.sliding_window_size == 0 {
            return Ok(());
        }
        let threshold = self.spec.scheduler.healthy_threshold;
        let marks: Vec<Watermark> = self
            .watermarks(now)
            .into_iter()
            .filter(|w| !w.closed)
            .collect();
        for w in &marks {
            let age = now.wall.duration_since(w.process_time).unwrap_or_default();
            if age.as_secs_f64() >= threshold {
                return Err(Unhealthy::Window {
                    key: w.key.clone(),
                    age,
                });
            }
        }
        let up = self.uptime(now);
        if marks.is_empty() && up > threshold {
            return Err(Unhealthy::NoWindow(secs(up)));
        }
        Ok(())
    }

    /// MySQL binlog position at `now` (stream: current; batch: where the dump started).
    pub fn binlog(&self, now: Now) -> BinlogPos {
        if self.spec.mode == InputMode::Batch {
            return BinlogPos {
                name: "mysql-bin.000040".into(),
                pos: 4,
                gtid: format!("{GTID_UUID}:1-4980"),
            };
        }
        let c = self.counts(now);
        let bytes = floor_u64(c.units * BYTES_PER_ROW)
            + c.heartbeat * BYTES_PER_HEARTBEAT
            + c.ddl_total * BYTES_PER_DDL;
        let cap = self.settings.binlog_file_bytes.max(4096) - 4;
        let txns = floor_u64(c.units / 4.0) + c.heartbeat + c.ddl_total;
        BinlogPos {
            name: format!(
                "{}.{:06}",
                self.settings.binlog_base,
                self.settings.binlog_first_index + bytes / cap
            ),
            pos: 4 + bytes % cap,
            gtid: format!("{GTID_UUID}:1-{}", GTID_START + txns),
        }
    }

    /// Mongo oplog position: BSON timestamp `seconds << 32 | ordinal` of the last event.
    pub fn mongo_ts(&self, now: Now) -> u64 {
        let marks = self.watermarks(now);
        let et = marks
            .first()
            .and_then(|w| w.event_time.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs());
        let c = self.counts(now);
        let ordinal = 1 + (floor_u64(c.units) + c.heartbeat) % 1000;
        (et << 32) | ordinal
    }

    /// Worker batches taken so far: batches go to the workers round-robin, so worker `w` has
    /// taken one once more than `w` batches went out.
    fn batches_taken(&self, now: Now) -> u64 {
        self.counts(now).output_total / self.spec.scheduler.batch_size.max(1)
    }

    /// Queue gauges `(type, subtype, value)` as gravity sets them: `input-buffer`; per table
    /// `table-buffer`, `table-latch`, `table-latch-ack`, `table-queue`; `worker` per index
    /// `"0"`…`"N-1"` once that worker took a batch, holding the length at its last dequeue
    /// (it moves only while rows flow); per input stream the sliding window's
    /// `sliding-window-waiting-chan`, `-ready-chan`, `-ready-heap`, set every second.
    pub fn queues(&self, now: Now) -> Vec<(String, String, f64)> {
        let stalled = matches!(self.mode(), Mode::Stall | Mode::LongDdl);
        let case = self.case;
        let tick = self.uptime(now) as u64;
        // a worker's gauge changes when it dequeues: on the flow clock, frozen while idle
        let batch_tick = self.flow.flow_secs(now.mono) as u64;
        let sc = &self.spec.scheduler;
        const JITTER: [u64; 6] = [0, 0, 0, 1, 2, 7];
        let jitter = |a: u64, b: u64| {
            let idx = (mix(a, b ^ tick) % JITTER.len() as u64) as usize;
            JITTER.get(idx).copied().unwrap_or(0)
        };
        let flowing = self.mode().flows();
        let quiet = matches!(case, Case::SlowReading | Case::StuckWindow);
        let mut q = vec![(
            "input-buffer".to_string(),
            String::new(),
            if flowing && !quiet {
                jitter(1, 0) as f64
            } else {
                0.0
            },
        )];
        // the stuck item holds one key of the first table
        let stuck_table = self
            .stuck_item
            .as_ref()
            .and_then(|_| self.spec.tables.first())
            .map(|t| format!("{}.{}", t.db, t.table));
        for ((i, t), w) in self.spec.tables.iter().enumerate().zip(self.weights.iter()) {
            let key = format!("{}.{}", t.db, t.table);
            let first = i == 0;
            let i = i as u64 + 10;
            let full = (sc.batch_size * 10) as f64;
            let latched = (self.stalled_for(now) * self.rate() * w)
                .min(sc.sliding_window_size as f64)
                .floor();
            let (buf, latch, ack, queue) = match case {
                // one table's keys stay latched: its messages queue while workers idle
                Case::HotRows if first => (
                    sc.batch_size as f64,
                    1024.0,
                    0.0,
                    (880 + mix(i, tick) % 150) as f64,
                ),
                Case::StuckWindow => {
                    let held = stuck_table.as_deref() == Some(key.as_str());
                    (0.0, if held { 1.0 } else { 0.0 }, 0.0, 0.0)
                }
                Case::SlowReading => (0.0, 0.0, 0.0, 0.0),
                _ if stalled => (full, latched, 0.0, full),
                _ if flowing => (
                    jitter(i, 1) as f64,
                    jitter(i, 2) as f64,
                    jitter(i, 3).min(1) as f64,
                    jitter(i, 4) as f64,
                ),
                _ => (0.0, 0.0, 0.0, 0.0),
            };
            q.push(("table-buffer".into(), key.clone(), buf));
            q.push(("table-latch".into(), key.clone(), latch));
            q.push(("table-latch-ack".into(), key.clone(), ack));
            q.push(("table-queue".into(), key, queue));
        }
        let taken = self.batches_taken(now);
        let qs = sc.queue_size as f64;
        for w in 0..(sc.nr_worker as usize).min(MAX_WORKERS) {
            if taken <= w as u64 {
                break;
            }
            let wu = w as u64;
            let v = match case {
                Case::SlowWrites => (qs - ((mix(wu, batch_tick) % 3) * 8) as f64).max(0.0),
                Case::Retries => (qs / 5.0).floor() + wu as f64,
                Case::HotRows | Case::SlowReading => (mix(wu, batch_tick) % 4 == 0) as u8 as f64,
                Case::StuckWindow => (w == 0) as u8 as f64,
                _ if stalled => qs,
                _ => {
                    if mix(wu, batch_tick) % 3 == 2 {
                        3.0
                    } else {
                        0.0
                    }
                }
            };
            q.push(("worker".into(), w.to_string(), v));
        }
        if sc.sliding_window_size > 0 {
            let size = sc.sliding_window_size as f64;
            let waiting = self.window_waiting(now);
            let heap = if case == Case::StuckWindow {
                (size - 1.0).max(0.0)
            } else {
                (waiting / 7.0).floor()
            };
            for key in self.window_keys(now) {
                q.push(("sliding-window-waiting-chan".into(), key.clone(), waiting));
                q.push(("sliding-window-ready-chan".into(), key.clone(), 0.0));
                q.push(("sliding-window-ready-heap".into(), key, heap));
            }
        }
        q
    }

    /// Input stream keys with an open sliding window (`mysqlstream`, `mongooplog`, `db.table`).
    fn window_keys(&self, now: Now) -> Vec<String> {
        self.watermarks(now)
            .into_iter()
            .filter(|w| !w.closed)
            .map(|w| w.key)
            .collect()
    }

    /// Items in a sliding window waiting for their ack, at the last whole second (gravity
    /// sets the gauge once a second).
    pub fn window_waiting(&self, now: Now) -> f64 {
        let size = self.spec.scheduler.sliding_window_size as f64;
        let tick = self.uptime(now) as u64;
        let v = match self.case {
            Case::SlowWrites => 0.75 * size + (mix(7, tick) % 16) as f64,
            Case::HotRows => 0.6 * size + (mix(8, tick) % 16) as f64,
            Case::StuckWindow => size,
            Case::Retries => 0.3 * size,
            Case::SlowReading => 2.0,
            _ if matches!(self.mode(), Mode::Stall | Mode::LongDdl) => {
                self.stalled_for(now).floor() * self.rate()
            }
            _ if self.mode().flows() => (self.rate() * 0.05).floor(),
            _ => 0.0,
        };
        v.min(size).max(0.0).floor()
    }

    /// `gravity_scheduler_batch_size{idx}` values: the size of each worker's last batch,
    /// once it took one.
    pub fn batch_sizes(&self, now: Now) -> Vec<(String, f64)> {
        let sc = &self.spec.scheduler;
        let batch_tick = self.flow.flow_secs(now.mono) as u64;
        let taken = self.batches_taken(now);
        (0..(sc.nr_worker as usize).min(MAX_WORKERS))
            .take_while(|w| taken > *w as u64)
            .map(|w| {
                let v = match self.case {
                    // writes are slow, rows pile up: every batch leaves full
                    Case::SlowWrites => sc.batch_size.max(1),
                    Case::HotRows | Case::SlowReading | Case::StuckWindow => 1,
                    _ => 1 + mix(w as u64 + 99, batch_tick) % sc.batch_size.max(1),
                };
                (w.to_string(), v as f64)
            })
            .collect()
    }

    /// `gravity_scheduler_sliding_window_ratio{input_stream_key}` values: gravity computes
    /// `WaitingQueueLen() / Size()` as an integer division, so it reads 0 until the window is
    /// full.
    pub fn window_ratios(&self, now: Now) -> Vec<(String, f64)> {
        let size = self.spec.scheduler.sliding_window_size;
        if size == 0 {
            return Vec::new();
        }
        let waiting = self.window_waiting(now) as u64;
        self.window_keys(now)
            .into_iter()
            .map(|k| (k, (waiting / size) as f64))
            .collect()
    }

    /// Output counter series `(cat0, cat1, cat2, cat3, value)` for the configured output.
    pub fn output_series(&self, c: &Counts) -> Vec<([String; 4], u64)> {
        let mut out: Vec<([String; 4], u64)> = Vec::new();
        let mut add = |k: [String; 4], v: u64| {
            if v == 0 {
                return;
            }
            if let Some(e) = out.iter_mut().find(|(key, _)| *key == k) {
                e.1 += v;
            } else {
                out.push((k, v));
            }
        };
        for (t, tc) in self.spec.tables.iter().zip(c.tables.iter()) {
            let dml: u64 = tc.output.iter().sum();
            match self.spec.output {
                OutputType::Mysql => {
                    add(
                        [
                            t.target_db.clone(),
                            t.target_table.clone(),
                            "dml".into(),
                            self.spec.engine.clone(),
                        ],
                        dml,
                    );
                    add(
                        [
                            t.target_db.clone(),
                            t.target_table.clone(),
                            "ddl".into(),
                            "alter-table".into(),
                        ],
                        tc.ddl,
                    );
                }
                OutputType::Kafka => {
                    // sarama's manual partitioner: worker index % partitions; spread evenly.
                    let p = KAFKA_PARTITIONS as u64;
                    for part in 0..p {
                        let share = dml / p + u64::from(part < dml % p);
                        add(
                            [
                                t.topic.clone(),
                                part.to_string(),
                                String::new(),
                                String::new(),
                            ],
                            share,
                        );
                    }
                }
                OutputType::Elasticsearch => {
                    add(
                        [t.table.clone(), "index".into(), "201".into(), String::new()],
                        dml,
                    );
                }
            }
        }
        out
    }
}

/// Seconds as a `Duration`, saturating.
pub fn secs(s: f64) -> Duration {
    if s.is_finite() && s > 0.0 {
        Duration::from_secs_f64(s.min(1e9))
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::super::config;
    use super::*;

    fn spec(name: &str) -> PipelineSpec {
        let text = match name {
            "m2m" => include_str!("../../fixtures/configs/mysql2mysql-stream.toml"),
            "m2k" => include_str!("../../fixtures/configs/mysql2kafka-stream.toml"),
            "mongo" => include_str!("../../fixtures/configs/mongo2kafka.toml"),
            _ => include_str!("../../fixtures/configs/mysql-full-dump.toml"),
        };
        config::parse("c.toml", text.as_bytes()).unwrap_or_else(|e| panic!("fixture: {e}"))
    }

    #[test]
    fn counters_are_floor_of_share_times_rate_times_time() {
        let t0 = Now::current();
        let s = Settings {
            rate: 1000.0,
            ..Settings::default()
        };
        let sim = Sim::new(spec("m2m"), s, t0);
        for secs_ in [0.5, 1.0, 7.25, 100.0] {
            let now = t0.plus(Duration::from_secs_f64(secs_));
            let c = sim.counts(now);
            for (i, w) in sim.weights().iter().enumerate() {
                for (j, (_, share)) in OP_SHARES.iter().enumerate() {
                    let want = (w * share * 1000.0 * secs_).floor() as u64;
                    assert_eq!(c.tables[i].input[j], want, "t={secs_} table {i} op {j}");
                }
            }
            assert_eq!(c.heartbeat, secs_.floor() as u64 + 1);
            // output trails by OUTPUT_DELAY seconds of flow
            let out_units = (1000.0 * (secs_ - OUTPUT_DELAY)).max(0.0);
            assert!((c.out_units - out_units).abs() < 1e-6);
            assert!(c.output_total <= c.input_total);
        }
    }

    #[test]
    fn a_long_ddl_holds_the_watermark_and_the_output_but_not_the_heartbeat() {
        let t0 = Now::current();
        let mut sim = Sim::new(spec("m2m"), Settings::default(), t0);
        let t1 = t0.plus(Duration::from_secs(10));
        sim.set_mode(Mode::LongDdl, t1);
        let c1 = sim.counts(t1);
        let t2 = t1.plus(Duration::from_secs(30));
        let c2 = sim.counts(t2);
        assert_eq!(c2.tables[0].ddl_pending, 1, "the DDL was read");
        assert_eq!(c2.input_total, c1.input_total);
        assert_eq!(
            c2.output_total, c1.output_total,
            "nothing written behind the DDL"
        );
        assert_eq!(
            c2.heartbeat,
            c1.heartbeat + 30,
            "the heartbeat is still read"
        );
        assert_eq!(sim.watermarks(t2)[0].process_time, t1.wall);
        sim.set_mode(Mode::None, t2);
        let c3 = sim.counts(t2.plus(Duration::from_secs(1)));
        assert_eq!(c3.tables[0].ddl_pending, 0);
        assert_eq!(
            c3.tables[0].ddl,
            c2.tables[0].ddl + 1,
            "applied when it ends"
        );
    }

    #[test]
    fn modes_freeze_the_right_clocks() {
        let t0 = Now::current();
        let mut sim = Sim::new(spec("m2m"), Settings::default(), t0);
        let t1 = t0.plus(Duration::from_secs(10));
        sim.set_mode(Mode::Stall, t1);
        let frozen = sim.counts(t1);
        let pos = sim.binlog(t1);
        let t2 = t1.plus(Duration::from_secs(30));
        let c2 = sim.counts(t2);
        assert_eq!(c2.input_total, frozen.input_total);
        assert_eq!(c2.output_total, frozen.output_total);
        assert_eq!(c2.heartbeat, frozen.heartbeat);
        assert_eq!(sim.binlog(t2), pos);
        let w = &sim.watermarks(t2)[0];
        assert_eq!(w.process_time, t1.wall);
        assert!(sim.healthy(t2.plus(Duration::from_secs(30))).is_err());
        assert!(sim.healthy(t2).is_ok(), "30 s < 60 s threshold");

        sim.set_mode(Mode::Idle, t2);
        let t3 = t2.plus(Duration::from_secs(5));
        let c3 = sim.counts(t3);
        assert_eq!(c3.input_total, c2.input_total);
        assert_eq!(c3.heartbeat, c2.heartbeat + 5);
        assert_eq!(c3.output_total, c3.input_total, "idle output catches up");
        let w = &sim.watermarks(t3)[0];
        assert!(t3.wall.duration_since(w.event_time).unwrap_or_default() < Duration::from_secs(3));

        sim.set_mode(Mode::HeartbeatBroken, t3);
        let t4 = t3.plus(Duration::from_secs(20));
        let w4 = &sim.watermarks(t4)[0];
        assert_eq!(sim.counts(t4).heartbeat, c3.heartbeat);
        assert!(
            t4.wall.duration_since(w4.event_time).unwrap_or_default() >= Duration::from_secs(20)
        );
        assert!(
            t4.wall.duration_since(w4.process_time).unwrap_or_default() < Duration::from_secs(1)
        );
        assert!(sim.healthy(t4).is_ok());

        sim.set_mode(Mode::None, t4);
        let t5 = t4.plus(Duration::from_secs(1));
        assert!(sim.counts(t5).input_total > c3.input_total);
    }

    #[test]
    fn binlog_basename_and_first_index_from_env() {
        let s = Settings::from_lookup(|k| match k {
            "GRAVITY_DOUBLE_BINLOG_BASENAME" => Some("gx-bin".into()),
            "GRAVITY_DOUBLE_BINLOG_FIRST_INDEX" => Some("3".into()),
            _ => None,
        });
        let t0 = Now::current();
        let sim = Sim::new(spec("m2m"), s, t0);
        assert_eq!(
            sim.binlog(t0.plus(Duration::from_millis(100))).name,
            "gx-bin.000003"
        );
        let bad = Settings::from_lookup(|k| {
            (k == "GRAVITY_DOUBLE_BINLOG_BASENAME").then(|| "../x".into())
        });
        assert_eq!(bad.binlog_base, "mysql-bin");
    }

    #[test]
    fn binlog_rolls_over() {
        let t0 = Now::current();
        let s = Settings {
            rate: 10_000.0,
            binlog_file_bytes: 1 << 20,
            ..Settings::default()
        };
        let sim = Sim::new(spec("m2m"), s, t0);
        let a = sim.binlog(t0.plus(Duration::from_millis(100)));
        let b = sim.binlog(t0.plus(Duration::from_secs(1)));
        assert_eq!(a.name, "mysql-bin.000042");
        assert_eq!(b.name, "mysql-bin.000044"); // 2.3 MB at 230 B/row
        assert!(b
            .gtid
            .starts_with("3e11fa47-71ca-11e1-9e33-c80aa9429562:1-"));
    }

    #[test]
    fn batch_progresses_and_finishes() {
        let t0 = Now::current();
        let s = Settings {
            rate: 1000.0,
            batch_rows: 3000,
            ..Settings::default()
        };
        let mut sim = Sim::new(spec("full"), s, t0);
        let c = sim.counts(t0.plus(Duration::from_millis(500)));
        assert!(c.tables.iter().all(|t| !t.done && t.scanned > 0));
        assert_eq!(c.heartbeat, 0);
        let mid = t0.plus(Duration::from_secs(3));
        sim.note_done(mid);
        let c = sim.counts(mid);
        assert!(c.tables[0].done && !c.tables[2].done);
        assert!(c
            .tables
            .iter()
            .any(|t| t.estimated < t.scanned || t.estimated < t.total));
        let marks = sim.watermarks(mid);
        assert!(marks.iter().any(|w| w.closed));
        assert!(!sim.batch_finished(mid));
        assert!(sim.batch_finished(t0.plus(Duration::from_secs(60))));
    }

    #[test]
    fn histograms_follow_the_counters() {
        let t0 = Now::current();
        let mut sim = Sim::new(spec("m2m"), Settings::default(), t0);
        let t1 = t0.plus(Duration::from_secs(10));
        sim.update_hists(t1);
        let c = sim.counts(t1);
        assert_eq!(sim.hists.input.count, c.input_total);
        assert_eq!(sim.hists.event_time.count, c.output_total);
        assert_eq!(sim.hists.probe.count, 11);
        assert_eq!(
            sim.hists.input.counts.iter().sum::<u64>(),
            sim.hists.input.count
        );
        // typical event latency 0.8 s: most observations between 0.256 and 2.048 s
        let ev = &sim.hists.event_time;
        let mid: u64 = ev
            .buckets
            .iter()
            .zip(ev.counts.iter())
            .filter(|(b, _)| **b > 0.256 && **b <= 2.048)
            .map(|(_, c)| c)
            .sum();
        assert!(mid * 4 >= ev.count * 3, "{mid} of {}", ev.count);
    }

    #[test]
    fn kafka_output_uses_topic_and_partition() {
        let t0 = Now::current();
        let sim = Sim::new(spec("m2k"), Settings::default(), t0);
        let c = sim.counts(t0.plus(Duration::from_secs(5)));
        let series = sim.output_series(&c);
        assert_eq!(series.len(), KAFKA_PARTITIONS);
        assert!(series
            .iter()
            .all(|(k, _)| k[0] == "binlog.shop.orders" && k[2].is_empty()));
        let total: u64 = series.iter().map(|(_, v)| v).sum();
        let dml: u64 = c.tables.iter().map(|t| t.output.iter().sum::<u64>()).sum();
        assert_eq!(total, dml);
    }

    #[test]
    fn settings_from_env_lookup() {
        let s = Settings::from_lookup(|k| match k {
            "GRAVITY_DOUBLE_RATE" => Some("50".into()),
            "GRAVITY_DOUBLE_FAULT" => Some("heartbeat-broken".into()),
            "GRAVITY_DOUBLE_TZ_OFFSET" => Some("Z".into()),
            "GRAVITY_DOUBLE_LAG_SECONDS" => Some("-3".into()),
            _ => None,
        });
        assert_eq!(s.rate, 50.0);
        assert_eq!(s.initial_mode, Mode::HeartbeatBroken);
        assert_eq!(s.zone.seconds, 0);
        assert_eq!(s.lag_mean, 0.8, "negative values are ignored");
    }
}
