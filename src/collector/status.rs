//! The `/status` collector: gravity's stage, version, config hash, position and
//! watermarks, turned into lag, stall, binlog position and full-dump progress.
//!
//! gravity's `/status` (see `tests/fixtures/status-*.json`) holds `position` as a string
//! that itself holds JSON, in one of three shapes (MySQL stream, MySQL batch with
//! `table-stats`, Mongo stream with a BSON timestamp), and `watermarks` per input stream
//! key (`mysqlstream`, `mongooplog`, or `db.table` in batch mode) or `null`. While no
//! position is stored yet, gravity answers HTTP 500 with an empty body: that is a state
//! (`gravity_position_stored` 0), not a failure.
//!
//! Lag is `now − EventTime`: how far the output is behind the source in event time.
//! Stall age is `now − ProcessTime`: how long since the pipeline last moved a watermark.
//! On an idle source gravity's heartbeat probe writes to its own table every second, so
//! EventTime stays fresh and lag stays near zero; when the heartbeat cannot write (gravity
//! issue #226), EventTime freezes while ProcessTime stays fresh — docs/metrics.md explains
//! how to tell that apart from real lag.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use prometheus::{HistogramOpts, HistogramVec};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{BoxFuture, CollectError, Collector, Context};
use crate::base::lock;
use crate::metrics::Families;

/// Largest `/status` body read (a batch pipeline with many tables carries a stats entry per table).
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Most watermark streams / full-dump tables exported; the rest are counted as dropped.
pub const MAX_STREAMS: usize = 1000;
/// Most `{schema,table}` series of `gravity_data_lag_seconds`.
pub const MAX_LAG_SERIES: usize = 1000;

/// A binlog position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogPos {
    /// File name, e.g. `mysql-bin.000042`.
    pub file: String,
    /// Offset in the file.
    pub pos: u64,
    /// GTID set (never exported as a label).
    pub gtid: String,
}

impl BinlogPos {
    /// The numeric suffix of the file name (`mysql-bin.000042` → 42).
    pub fn file_index(&self) -> Option<u64> {
        self.file.rsplit('.').next()?.parse().ok()
    }
}

/// Full-dump progress of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableStat {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// Estimated rows (can be below scanned).
    pub estimated: u64,
    /// Rows scanned so far.
    pub scanned: u64,
    /// Whether this table is done.
    pub done: bool,
}

impl TableStat {
    /// Progress 0..1: 1 when done; else scanned/estimated, held below 1 while not done
    /// (the estimate is a guess from table statistics and can be below the truth).
    pub fn progress(&self) -> f64 {
        if self.done {
            1.0
        } else if self.estimated == 0 {
            0.0
        } else {
            (self.scanned as f64 / self.estimated as f64).min(0.99)
        }
    }
}

/// gravity's position, by shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// MySQL binlog stream.
    MysqlStream {
        /// Current position.
        current: Option<BinlogPos>,
        /// Start position.
        start: Option<BinlogPos>,
    },
    /// MySQL batch (full dump).
    MysqlBatch {
        /// Binlog position at the start of the dump.
        start_binlog: Option<BinlogPos>,
        /// Per-table progress.
        tables: Vec<TableStat>,
    },
    /// Mongo oplog stream: a BSON timestamp (seconds << 32 | ordinal).
    Mongo {
        /// Current oplog timestamp.
        current: Option<u64>,
    },
    /// A shape this exporter does not know (kept, not fatal).
    Unknown,
}

/// One watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// Input stream key.
    pub key: String,
    /// When the pipeline last processed an event of this stream.
    pub process_time: OffsetDateTime,
    /// The source time of that event.
    pub event_time: OffsetDateTime,
}

/// A parsed `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Pipeline name.
    pub name: String,
    /// Config hash.
    pub config_hash: String,
    /// Version.
    pub version: String,
    /// Stage: `Incremental` or `Full`.
    pub stage: String,
    /// Position.
    pub position: Position,
    /// Watermarks (empty when `null`).
    pub watermarks: Vec<Watermark>,
}

fn parse_binlog(v: Option<&Value>) -> Option<BinlogPos> {
    let v = v?;
    Some(BinlogPos {
        file: v.get("binlog-name")?.as_str()?.to_string(),
        pos: v.get("binlog-pos").and_then(Value::as_u64).unwrap_or(0),
        gtid: v
            .get("binlog-gtid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    })
}

/// Cuts the free-text fields of a parsed `/status` (name, config hash, version, stage,
/// watermark keys) to [`crate::metrics::MAX_LABEL_VALUE_BYTES`], counting each cut, so a
/// hostile answer (a 15 MB version string, 10 KB stream names) is not kept in memory.
pub fn bound_status(st: &mut Status) {
    let max = crate::metrics::MAX_LABEL_VALUE_BYTES;
    let cut = |s: &mut String| {
        let keep = crate::base::cut(s, max).len();
        if keep < s.len() {
            s.truncate(keep);
            s.shrink_to_fit();
            crate::metrics::count_truncated(crate::metrics::Truncated::LabelValue, 1);
        }
    };
    cut(&mut st.name);
    cut(&mut st.config_hash);
    cut(&mut st.version);
    cut(&mut st.stage);
    for w in &mut st.watermarks {
        cut(&mut w.key);
    }
}

/// Longest object key a [`Shortener`] keeps whole (stream, table and collection names are
/// far shorter; the exporter cuts label values to 256 bytes anyway).
pub const JSON_MAX_KEY: usize = 1024;

/// Longest string value a [`Shortener`] keeps whole (gravity's `position` is a JSON document
/// in a string, with GTID sets).
pub const JSON_MAX_STRING: usize = 64 * 1024;

/// Deepest nesting a [`Shortener`] tracks (serde_json refuses deeper documents anyway).
const JSON_MAX_DEPTH: usize = 256;

/// Where a [`Shortener`] is inside a string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    /// Not in an escape sequence.
    None,
    /// Just after a backslash.
    Start,
    /// In the hex digits of `\uXXXX`: digits still to come and the value so far.
    Hex(u8, u16),
}

/// A byte-level pass over a JSON answer arriving in pieces that cuts every string longer
/// than its limit ([`JSON_MAX_KEY`] for object keys, [`JSON_MAX_STRING`] for values) at a
/// character boundary, never inside an escape sequence or between the halves of a
/// surrogate pair: a hostile `/status` (a 15 MB version string, 1,000 stream names of
/// 10 KB) never becomes big strings in memory, and the output is valid JSON whenever the
/// input is. Anything else passes unchanged.
#[derive(Debug)]
pub struct Shortener {
    out: Vec<u8>,
    blank: bool,
    in_string: bool,
    key: bool,
    kept: usize,
    escape: Escape,
    high_surrogate: bool,
    cutting: bool,
    /// Open containers: `true` for an object.
    stack: Vec<bool>,
    /// Containers opened beyond [`JSON_MAX_DEPTH`].
    deeper: usize,
    expect_key: bool,
    cut: usize,
}

impl Default for Shortener {
    fn default() -> Self {
        Shortener::new()
    }
}

impl Shortener {
    /// A shortener at the start of an answer.
    pub fn new() -> Shortener {
        Shortener {
            out: Vec::new(),
            blank: true,
            in_string: false,
            key: false,
            kept: 0,
            escape: Escape::None,
            high_surrogate: false,
            cutting: false,
            stack: Vec::new(),
            deeper: 0,
            expect_key: false,
            cut: 0,
        }
    }

    /// Takes the next piece of the answer (cut anywhere).
    pub fn push(&mut self, piece: &[u8]) {
        self.out.reserve(piece.len().min(64 * 1024));
        for &b in piece {
            if !b.is_ascii_whitespace() {
                self.blank = false;
            }
            if self.in_string {
                self.string_byte(b);
            } else {
                self.structure_byte(b);
                self.out.push(b);
            }
        }
    }

    fn structure_byte(&mut self, b: u8) {
        match b {
            b'{' | b'[' => {
                if self.stack.len() < JSON_MAX_DEPTH {
                    self.stack.push(b == b'{');
                } else {
                    self.deeper = self.deeper.saturating_add(1);
                }
                self.expect_key = b == b'{';
            }
            b'}' | b']' => {
                if self.deeper > 0 {
                    self.deeper = self.deeper.saturating_sub(1);
                } else {
                    self.stack.pop();
                }
                self.expect_key = false;
            }
            b':' => self.expect_key = false,
            b',' => self.expect_key = self.deeper == 0 && self.stack.last() == Some(&true),
            b'"' => {
                self.in_string = true;
                self.key = self.expect_key;
                self.kept = 0;
                self.escape = Escape::None;
                self.high_surrogate = false;
                self.cutting = false;
            }
            _ => {}
        }
    }

    fn string_byte(&mut self, b: u8) {
        match self.escape {
            Escape::Start => {
                self.escape = if b == b'u' {
                    Escape::Hex(4, 0)
                } else {
                    self.high_surrogate = false;
                    Escape::None
                };
                self.keep(b);
                return;
            }
            Escape::Hex(left, value) => {
                let digit = (b as char).to_digit(16).unwrap_or(0) as u16;
                let value = value.wrapping_mul(16).wrapping_add(digit);
                let left = left.saturating_sub(1);
                self.escape = if left == 0 {
                    self.high_surrogate = (0xD800..=0xDBFF).contains(&value);
                    Escape::None
                } else {
                    Escape::Hex(left, value)
                };
                self.keep(b);
                return;
            }
            Escape::None => {}
        }
        if b == b'"' {
            self.in_string = false;
            self.out.push(b);
            return;
        }
        let max = if self.key {
            JSON_MAX_KEY
        } else {
            JSON_MAX_STRING
        };
        // a cut only where a character (or an escape, or a surrogate pair) begins
        if !self.cutting && self.kept >= max && !(0x80..0xC0).contains(&b) && !self.high_surrogate {
            self.cutting = true;
            self.cut = self.cut.saturating_add(1);
        }
        if b == b'\\' {
            self.escape = Escape::Start;
        } else {
            self.high_surrogate = false;
        }
        self.keep(b);
    }

    fn keep(&mut self, b: u8) {
        if !self.cutting {
            self.out.push(b);
            self.kept = self.kept.saturating_add(1);
        }
    }

    /// Whether the answer so far is empty or only white space.
    pub fn blank(&self) -> bool {
        self.blank
    }

    /// Strings cut so far.
    pub fn cut(&self) -> usize {
        self.cut
    }

    /// The answer with its long strings cut.
    pub fn into_bytes(self) -> Vec<u8> {
        self.out
    }
}

/// Parses the inner position JSON.
pub fn parse_position(text: &str) -> Position {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return Position::Unknown;
    };
    if let Some(stats) = v.get("table-stats").and_then(Value::as_object) {
        let mut tables: Vec<TableStat> = stats
            .iter()
            .map(|(k, s)| {
                let (schema, table) = k.split_once('.').unwrap_or(("", k.as_str()));
                TableStat {
                    schema: schema.to_string(),
                    table: table.to_string(),
                    estimated: s
                        .get("estimated-count")
                        .and_then(Value::as_u64)
                        .unwrap_or(0),
                    scanned: s.get("scanned-count").and_then(Value::as_u64).unwrap_or(0),
                    done: s.get("done").and_then(Value::as_bool).unwrap_or(false),
                }
            })
            .collect();
        tables.sort_by(|a, b| (&a.schema, &a.table).cmp(&(&b.schema, &b.table)));
        return Position::MysqlBatch {
            start_binlog: parse_binlog(v.get("start-binlog")),
            tables,
        };
    }
    match v.get("current_position") {
        Some(Value::Number(n)) => Position::Mongo {
            current: n.as_u64(),
        },
        Some(Value::Object(_)) => Position::MysqlStream {
            current: parse_binlog(v.get("current_position")),
            start: parse_binlog(v.get("start_position")),
        },
        Some(Value::Null) if v.get("start_position").is_some() => Position::Mongo { current: None },
        _ => Position::Unknown,
    }
}

fn parse_time(v: Option<&Value>) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(v?.as_str()?, &Rfc3339).ok()
}

/// Parses a `/status` body.
pub fn parse_status(body: &[u8]) -> Result<Status, CollectError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        CollectError::Invalid(format!(
            "/status is not JSON (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| CollectError::Invalid("/status is not a JSON object".into()))?;
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let position = match obj.get("position") {
        Some(Value::String(p)) => parse_position(p),
        _ => Position::Unknown,
    };
    let mut watermarks = Vec::new();
    if let Some(w) = obj.get("watermarks").and_then(Value::as_object) {
        for (k, m) in w {
            if let (Some(process_time), Some(event_time)) = (
                parse_time(m.get("ProcessTime")),
                parse_time(m.get("EventTime")),
            ) {
                watermarks.push(Watermark {
                    key: k.clone(),
                    process_time,
                    event_time,
                });
            }
        }
    }
    watermarks.sort_by(|a, b| a.key.cmp(&b.key));
    if !obj.contains_key("name") && !obj.contains_key("position") && !obj.contains_key("stage") {
        return Err(CollectError::Invalid(
            "/status has none of name, position, stage".into(),
        ));
    }
    Ok(Status {
        name: s("name"),
        config_hash: s("configHash"),
        version: s("version"),
        stage: s("stage"),
        position,
        watermarks,
    })
}

/// `now − then` in seconds.
pub fn secs_between(now: OffsetDateTime, then: OffsetDateTime) -> f64 {
    // Both are within the time crate's ±9999 years: the difference always fits.
    #[allow(clippy::arithmetic_side_effects)]
    let d = now - then;
    d.as_seconds_f64()
}

/// The `{schema, table}` a watermark's lag is observed under: empty for the stream keys.
pub fn lag_labels(stage: &str, key: &str) -> (String, String) {
    if stage == "Full" {
        if let Some((s, t)) = key.split_once('.') {
            return (s.to_string(), t.to_string());
        }
    }
    (String::new(), String::new())
}

/// A parsed `/status` and when it was read, kept in the [`Context`] for collectors that
/// compare gravity's position with the source's.
#[derive(Debug, Clone)]
pub struct StatusSeen {
    /// When the answer arrived.
    pub at: std::time::Instant,
    /// What it said.
    pub status: Status,
}

impl StatusSeen {
    /// The largest stall of the watermarks as of `now` (`now − ProcessTime`: it keeps
    /// growing while gravity does not answer); `None` without watermarks.
    pub fn max_stall_seconds(&self, now: OffsetDateTime) -> Option<f64> {
        self.status
            .watermarks
            .iter()
            .map(|w| secs_between(now, w.process_time))
            .reduce(f64::max)
    }

    /// The largest lag of the watermarks as of `now` (`now − EventTime`).
    pub fn max_lag_seconds(&self, now: OffsetDateTime) -> Option<f64> {
        self.status
            .watermarks
            .iter()
            .map(|w| secs_between(now, w.event_time))
            .reduce(f64::max)
    }

    /// gravity's binlog position to compare with the source: the current position of a
    /// binlog stream, or the start position of a full dump (where streaming resumes, so it
    /// must stay retained until the dump is done).
    pub fn binlog_position(&self) -> Option<&BinlogPos> {
        match &self.status.position {
            Position::MysqlStream { current, .. } => current.as_ref(),
            Position::MysqlBatch { start_binlog, .. } => start_binlog.as_ref(),
            _ => None,
        }
    }

    /// Whether gravity is streaming the binlog (its position is expected to move).
    pub fn is_streaming(&self) -> bool {
        matches!(self.status.position, Position::MysqlStream { .. })
    }
}

/// Builds the const families from a parsed status (pure).
pub fn status_families(st: &Status, now: OffsetDateTime, pipeline: &str) -> Families {
    let mut f = Families::new();
    let p = [("pipeline", pipeline)];
    f.gauge(
        "gravity_position_stored",
        "1 once gravity has stored a position (its /status answers), 0 while /status answers 500 with an empty body.",
        &p,
        1.0,
    );
    f.gauge(
        "gravity_pipeline_info",
        "Pipeline facts from gravity's /status: stage (Incremental or Full), version and config hash. Always 1.",
        &[
            ("pipeline", pipeline),
            ("stage", &st.stage),
            ("version", &st.version),
            ("config_hash", &st.config_hash),
        ],
        1.0,
    );
    f.gauge(
        "gravity_full_dump",
        "1 while gravity is in the Full (batch, full-dump) stage, 0 in Incremental.",
        &p,
        if st.stage == "Full" { 1.0 } else { 0.0 },
    );
    f.gauge(
        "gravity_watermarks",
        "Number of watermark streams gravity's /status reports (0 when watermarks is null).",
        &p,
        st.watermarks.len() as f64,
    );
    for w in st.watermarks.iter().take(MAX_STREAMS) {
        let l = [("pipeline", pipeline), ("stream", w.key.as_str())];
        f.gauge(
            "gravity_watermark_lag_seconds",
            "now − EventTime of the stream's watermark: how far the output is behind the source, in event time.",
            &l,
            secs_between(now, w.event_time),
        );
        f.gauge(
            "gravity_watermark_stall_seconds",
            "now − ProcessTime of the stream's watermark: how long since the pipeline last moved it.",
            &l,
            secs_between(now, w.process_time),
        );
        f.gauge(
            "gravity_watermark_event_timestamp_seconds",
            "EventTime of the stream's watermark (Unix time).",
            &l,
            w.event_time.unix_timestamp_nanos() as f64 / 1e9,
        );
        f.gauge(
            "gravity_watermark_process_timestamp_seconds",
            "ProcessTime of the stream's watermark (Unix time).",
            &l,
            w.process_time.unix_timestamp_nanos() as f64 / 1e9,
        );
    }
    let binlog = |f: &mut Families, which: &str, b: &BinlogPos| {
        let l = [("pipeline", pipeline), ("position", which)];
        if let Some(i) = b.file_index() {
            f.gauge(
                "gravity_binlog_file_index",
                "Numeric suffix of the binlog file of gravity's position (mysql-bin.000042 → 42); position is current or start.",
                &l,
                i as f64,
            );
        }
        f.gauge(
            "gravity_binlog_offset_bytes",
            "Offset in the binlog file of gravity's position; position is current or start.",
            &l,
            b.pos as f64,
        );
    };
    match &st.position {
        Position::MysqlStream { current, start } => {
            if let Some(b) = current {
                binlog(&mut f, "current", b);
            }
            if let Some(b) = start {
                binlog(&mut f, "start", b);
            }
        }
        Position::MysqlBatch {
            start_binlog,
            tables,
        } => {
            if let Some(b) = start_binlog {
                binlog(&mut f, "start", b);
            }
            let done = tables.iter().filter(|t| t.done).count();
            f.gauge(
                "gravity_full_dump_tables",
                "Tables of the full dump, by state (done or pending).",
                &[("pipeline", pipeline), ("state", "done")],
                done as f64,
            );
            f.gauge(
                "gravity_full_dump_tables",
                "Tables of the full dump, by state (done or pending).",
                &[("pipeline", pipeline), ("state", "pending")],
                tables.len().saturating_sub(done) as f64,
            );
            for t in tables.iter().take(MAX_STREAMS) {
                let l = [
                    ("pipeline", pipeline),
                    ("schema", t.schema.as_str()),
                    ("table", t.table.as_str()),
                ];
                f.gauge(
                    "gravity_full_dump_rows_scanned",
                    "Rows the full dump has scanned in the table.",
                    &l,
                    t.scanned as f64,
                );
                f.gauge(
                    "gravity_full_dump_rows_estimated",
                    "Rows the table is estimated to hold (from table statistics; can be below the rows scanned).",
                    &l,
                    t.estimated as f64,
                );
                f.gauge(
                    "gravity_full_dump_progress_ratio",
                    "Full-dump progress of the table, 0..1: 1 when done, else scanned/estimated held below 1.",
                    &l,
                    t.progress(),
                );
                f.gauge(
                    "gravity_full_dump_table_done",
                    "1 when the full dump of the table is done.",
                    &l,
                    if t.done { 1.0 } else { 0.0 },
                );
            }
        }
        Position::Mongo { current: Some(ts) } => {
            let secs = ts >> 32;
            f.gauge(
                "gravity_oplog_position_timestamp_seconds",
                "Time of gravity's Mongo oplog position (the seconds of the BSON timestamp).",
                &p,
                secs as f64,
            );
        }
        Position::Mongo { current: None } | Position::Unknown => {}
    }
    f
}

/// The families while no position is stored yet (HTTP 500 with an empty body).
pub fn no_position_families(pipeline: &str) -> Families {
    let mut f = Families::new();
    f.gauge(
        "gravity_position_stored",
        "1 once gravity has stored a position (its /status answers), 0 while /status answers 500 with an empty body.",
        &[("pipeline", pipeline)],
        0.0,
    );
    f
}

/// The collector; owns the `gravity_data_lag_seconds` histogram.
pub struct StatusCollector {
    lag: HistogramVec,
    lag_series: Mutex<HashSet<(String, String)>>,
}

impl StatusCollector {
    /// Registers the histogram in the store's registry.
    pub fn new(store: &crate::metrics::Store) -> StatusCollector {
        let buckets = prometheus::exponential_buckets(0.1, 2.0, 15).unwrap_or_default();
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "gravity_data_lag_seconds",
                "How far gravity's output is behind its source (now − watermark EventTime), observed at each collection; per table in batch mode, schema=\"\" table=\"\" for the stream.",
            )
            .buckets(buckets),
            &["pipeline", "schema", "table"],
        )
        .expect("metric names in this crate are valid");
        let _ = store.registry().register(Box::new(lag.clone()));
        StatusCollector {
            lag,
            lag_series: Mutex::new(HashSet::new()),
        }
    }

    /// Observes the lag of every watermark (bounded to [`MAX_LAG_SERIES`] label sets).
    pub fn observe(&self, st: &Status, now: OffsetDateTime, pipeline: &str) {
        let mut seen = lock(&self.lag_series);
        for w in &st.watermarks {
            let (mut schema, mut table) = lag_labels(&st.stage, &w.key);
            let key = (schema.clone(), table.clone());
            if !seen.contains(&key) {
                if seen.len() >= MAX_LAG_SERIES {
                    schema = "_other".into();
                    table = "_other".into();
                } else {
                    seen.insert(key);
                }
            }
            let lag = secs_between(now, w.event_time).max(0.0);
            self.lag
                .with_label_values(&[pipeline, &schema, &table])
                .observe(lag);
        }
    }
}

impl StatusCollector {
    /// Observes one measured lag of a table (the canary's end-to-end lag for its table),
    /// under the same cap of label sets as the watermarks.
    pub fn observe_table(&self, pipeline: &str, schema: &str, table: &str, lag: f64) {
        let mut seen = lock(&self.lag_series);
        let key = (schema.to_string(), table.to_string());
        let (schema, table) = if seen.contains(&key) || seen.len() < MAX_LAG_SERIES {
            seen.insert(key);
            (schema, table)
        } else {
            ("_other", "_other")
        };
        self.lag
            .with_label_values(&[pipeline, schema, table])
            .observe(lag.max(0.0));
    }
}

impl Collector for StatusCollector {
    fn name(&self) -> &'static str {
        "status"
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let target = ctx.target();
            if !ctx.up.process_alive() && target.process.is_some() {
                return Err(CollectError::Unavailable(
                    "gravity process not running".into(),
                ));
            }
            // Strings are cut as the answer arrives (never held whole), on the parse thread.
            let (code, json, elapsed) = super::feed(
                &ctx,
                "/status",
                BODY_LIMIT,
                Shortener::new(),
                Shortener::push,
            )
            .await?;
            let pipeline = target.pipeline.as_str();
            if code.as_u16() == 500 && json.blank() {
                ctx.set_last_status(None);
                ctx.state
                    .status_answered
                    .set(Some(std::time::Instant::now()));
                ctx.recent.record_lag([]);
                return Ok(no_position_families(pipeline));
            }
            if !code.is_success() {
                return Err(CollectError::Invalid(format!(
                    "/status answered HTTP {}",
                    code.as_u16()
                )));
            }
            let mut st = super::offload(super::Worker::Parse, move || {
                parse_status(&json.into_bytes())
            })
            .await
            .ok_or(CollectError::Panicked)??;
            bound_status(&mut st);
            let at = std::time::Instant::now();
            ctx.set_last_status(Some(StatusSeen {
                at,
                status: st.clone(),
            }));
            ctx.state.status_answered.set(Some(at));
            let now = OffsetDateTime::now_utc();
            self.observe(&st, now, pipeline);
            ctx.recent.record_lag(
                st.watermarks
                    .iter()
                    .map(|w| (w.key.as_str(), secs_between(now, w.event_time))),
            );
            let mut f = status_families(&st, now, pipeline);
            f.gauge(
                "gravity_status_request_duration_seconds",
                "How long gravity's /status took to answer on the last collection.",
                &[("pipeline", pipeline)],
                elapsed.as_secs_f64(),
            );
            Ok(f)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const INCR: &str = include_str!("../../tests/fixtures/status-incremental.json");
    const FULL: &str = include_str!("../../tests/fixtures/status-full.json");
    const MONGO: &str = include_str!("../../tests/fixtures/status-mongo.json");
    const NOSW: &str = include_str!("../../tests/fixtures/status-no-sliding-window.json");

    #[test]
    fn incremental_mysql() {
        let st = parse_status(INCR.as_bytes()).unwrap();
        assert_eq!(
            (st.name.as_str(), st.stage.as_str(), st.version.as_str()),
            ("mysql2mysqlDemo", "Incremental", "v0.9.54")
        );
        let Position::MysqlStream {
            current: Some(c),
            start: None,
        } = &st.position
        else {
            panic!("{:?}", st.position)
        };
        assert_eq!((c.file_index(), c.pos), (Some(42), 193842));
        assert!(c.gtid.contains("3e11fa47"));
        // 14:21:06+08:00 = 06:21:06Z; now 06:21:16Z → lag 10 s; ProcessTime 14:21:07.512331904 → stall 8.487668096 s
        let now = datetime!(2026-11-22 06:21:16 UTC);
        let f = status_families(&st, now, "p");
        assert_eq!(
            f.value(
                "gravity_watermark_lag_seconds",
                &[("stream", "mysqlstream")]
            ),
            Some(10.0)
        );
        let stall = f
            .value(
                "gravity_watermark_stall_seconds",
                &[("stream", "mysqlstream")],
            )
            .unwrap();
        assert!((stall - 8.487668096).abs() < 1e-6, "{stall}");
        assert_eq!(
            f.value("gravity_binlog_file_index", &[("position", "current")]),
            Some(42.0)
        );
        assert_eq!(
            f.value("gravity_binlog_offset_bytes", &[("position", "current")]),
            Some(193842.0)
        );
        assert_eq!(
            f.value(
                "gravity_pipeline_info",
                &[("config_hash", "x7b52ghk49"), ("stage", "Incremental")]
            ),
            Some(1.0)
        );
        assert_eq!(f.value("gravity_full_dump", &[]), Some(0.0));
        // no GTID anywhere in the labels
        let text = {
            let s = crate::metrics::Store::new();
            s.set_snapshot("status", f);
            s.render()
        };
        assert!(!text.contains("3e11fa47"), "{text}");
    }

    #[test]
    fn full_dump_progress_copes_with_low_estimates() {
        let st = parse_status(FULL.as_bytes()).unwrap();
        let Position::MysqlBatch {
            start_binlog: Some(b),
            tables,
        } = &st.position
        else {
            panic!("{:?}", st.position)
        };
        assert_eq!(b.file_index(), Some(40));
        assert_eq!(tables.len(), 3);
        let now = datetime!(2026-11-22 06:30:00 UTC);
        let f = status_families(&st, now, "p");
        let prog = |t: &str| {
            f.value(
                "gravity_full_dump_progress_ratio",
                &[("schema", "shop"), ("table", t)],
            )
            .unwrap()
        };
        assert!((prog("order_items") - 41187201.0 / 98000000.0).abs() < 1e-9);
        assert_eq!(prog("orders"), 1.0, "done although scanned > estimated");
        assert_eq!(prog("users"), 1.0, "done with estimated 0");
        assert_eq!(
            f.value("gravity_full_dump_rows_scanned", &[("table", "orders")]),
            Some(30119874.0)
        );
        assert_eq!(
            f.value("gravity_full_dump_tables", &[("state", "done")]),
            Some(2.0)
        );
        assert_eq!(
            f.value("gravity_full_dump_tables", &[("state", "pending")]),
            Some(1.0)
        );
        assert_eq!(f.value("gravity_full_dump", &[]), Some(1.0));
        // per-table watermarks, labelled by table for the histogram
        assert_eq!(
            lag_labels(&st.stage, "shop.orders"),
            ("shop".into(), "orders".into())
        );
        assert_eq!(
            lag_labels("Incremental", "mysqlstream"),
            (String::new(), String::new())
        );
        let lag = f
            .value(
                "gravity_watermark_lag_seconds",
                &[("stream", "shop.orders")],
            )
            .unwrap();
        // EventTime 13:58:39.998+08:00 = 05:58:39.998Z → 1880.002 s before 06:30:00Z
        assert!((lag - 1880.002).abs() < 1e-6, "{lag}");
        // a table still dumping, estimated < scanned: held below 1
        let t = TableStat {
            schema: "a".into(),
            table: "b".into(),
            estimated: 10,
            scanned: 20,
            done: false,
        };
        assert_eq!(t.progress(), 0.99);
    }

    #[test]
    fn mongo_and_null_watermarks() {
        let st = parse_status(MONGO.as_bytes()).unwrap();
        assert_eq!(
            st.position,
            Position::Mongo {
                current: Some(7575430962696159244)
            }
        );
        let f = status_families(&st, datetime!(2026-11-22 06:21:10 UTC), "p");
        assert_eq!(
            f.value("gravity_oplog_position_timestamp_seconds", &[]),
            Some((7575430962696159244u64 >> 32) as f64)
        );
        assert_eq!(
            f.value("gravity_watermark_lag_seconds", &[("stream", "mongooplog")]),
            Some(3.0)
        );
        let st = parse_status(NOSW.as_bytes()).unwrap();
        assert!(st.watermarks.is_empty());
        let f = status_families(&st, datetime!(2026-11-22 06:21:10 UTC), "p");
        assert_eq!(f.value("gravity_watermarks", &[]), Some(0.0));
        assert_eq!(
            f.value("gravity_binlog_offset_bytes", &[("position", "current")]),
            Some(4.0)
        );
        assert_eq!(
            f.value("gravity_pipeline_info", &[("version", "None")]),
            Some(1.0)
        );
    }

    #[test]
    fn unknown_fields_and_bad_bodies() {
        let st = parse_status(br#"{"name":"x","stage":"Incremental","position":"{\"new\":1}","watermarks":{},"extra":{"a":[1,2]}}"#).unwrap();
        assert_eq!(st.position, Position::Unknown);
        for bad in [
            &b""[..],
            b"<html>",
            b"[1,2]",
            b"{}",
            b"\xff\xfe",
            b"{\"name\":",
        ] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
        // a watermark with an unparseable time is skipped, not fatal
        let st = parse_status(br#"{"name":"x","watermarks":{"a":{"ProcessTime":"yesterday","EventTime":"2026-11-22T14:21:06+08:00"}}}"#).unwrap();
        assert!(st.watermarks.is_empty());
    }

    #[test]
    fn histogram_observes_and_caps_series() {
        let store = crate::metrics::Store::new();
        let c = StatusCollector::new(&store);
        let st = parse_status(FULL.as_bytes()).unwrap();
        c.observe(&st, datetime!(2026-11-22 06:30:00 UTC), "p");
        let text = store.render();
        assert!(text.contains("gravity_data_lag_seconds_bucket{pipeline=\"p\",schema=\"shop\",table=\"orders\",le=\"0.1\"} 0"), "{text}");
        assert!(text.contains("gravity_data_lag_seconds_bucket{pipeline=\"p\",schema=\"shop\",table=\"orders\",le=\"1638.4\"} 0"));
        assert!(text.contains(
            "gravity_data_lag_seconds_count{pipeline=\"p\",schema=\"shop\",table=\"orders\"} 1"
        ));
        let st = parse_status(INCR.as_bytes()).unwrap();
        c.observe(&st, datetime!(2026-11-22 06:21:16 UTC), "p");
        let text = store.render();
        assert!(text.contains("gravity_data_lag_seconds_bucket{pipeline=\"p\",schema=\"\",table=\"\",le=\"12.8\"} 1"), "{text}");
        assert!(text.contains(
            "gravity_data_lag_seconds_bucket{pipeline=\"p\",schema=\"\",table=\"\",le=\"6.4\"} 0"
        ));
        // cap
        let many: Vec<Watermark> = (0..MAX_LAG_SERIES + 5)
            .map(|i| Watermark {
                key: format!("db.t{i}"),
                process_time: datetime!(2026-11-22 06:30:00 UTC),
                event_time: datetime!(2026-11-22 06:30:00 UTC),
            })
            .collect();
        let st = Status {
            name: "x".into(),
            config_hash: "h".into(),
            version: "v".into(),
            stage: "Full".into(),
            position: Position::Unknown,
            watermarks: many,
        };
        c.observe(&st, datetime!(2026-11-22 06:30:00 UTC), "p");
        assert!(lock(&c.lag_series).len() <= MAX_LAG_SERIES);
        assert!(store.render().contains("table=\"_other\""));
    }

    #[test]
    fn hostile_strings_are_cut_before_they_are_kept() {
        let mut st = parse_status(INCR.as_bytes()).unwrap();
        st.version = "v".repeat(15_000_000);
        st.watermarks[0].key = "k".repeat(10_000);
        bound_status(&mut st);
        assert_eq!(st.version.len(), crate::metrics::MAX_LABEL_VALUE_BYTES);
        assert!(st.version.capacity() < 2 * crate::metrics::MAX_LABEL_VALUE_BYTES);
        assert_eq!(
            st.watermarks[0].key.len(),
            crate::metrics::MAX_LABEL_VALUE_BYTES
        );
    }

    fn shorten(body: &[u8], piece: usize) -> Shortener {
        let mut sh = Shortener::new();
        for p in body.chunks(piece.max(1)) {
            sh.push(p);
        }
        sh
    }

    #[test]
    fn the_shortener_leaves_gravitys_answers_as_they_are() {
        for body in [INCR, FULL, MONGO, NOSW] {
            for piece in [1, 3, 1000, body.len()] {
                let sh = shorten(body.as_bytes(), piece);
                assert_eq!((sh.cut(), sh.blank()), (0, false));
                assert_eq!(sh.into_bytes(), body.as_bytes());
            }
        }
        assert!(shorten(b" \r\n\t ", 2).blank());
        assert!(shorten(b"", 2).blank());
    }

    #[test]
    fn the_shortener_cuts_a_huge_version_and_long_stream_names() {
        let mut st: Value = serde_json::from_str(INCR).unwrap();
        st["version"] = Value::String("v".repeat(15_000_000));
        let wm = st["watermarks"]["mysqlstream"].clone();
        let names: serde_json::Map<String, Value> = (0..1000)
            .map(|i| (format!("w{i:04}{}", "x".repeat(10_000)), wm.clone()))
            .collect();
        st["watermarks"] = Value::Object(names);
        let body = serde_json::to_vec(&st).unwrap();
        let sh = shorten(&body, 65_536);
        assert_eq!(sh.cut(), 1001);
        let out = sh.into_bytes();
        assert!(
            out.len() < 1000 * (JSON_MAX_KEY + 200) + JSON_MAX_STRING + 2000,
            "{}",
            out.len()
        );
        let parsed = parse_status(&out).unwrap();
        assert_eq!(parsed.version.len(), JSON_MAX_STRING);
        assert_eq!(parsed.watermarks.len(), 1000);
        assert!(parsed
            .watermarks
            .iter()
            .all(|w| w.key.len() == JSON_MAX_KEY));
        assert!(matches!(
            parsed.position,
            Position::MysqlStream {
                current: Some(_),
                ..
            }
        ));
    }

    /// Cuts land on character boundaries, never inside an escape or between the halves
    /// of a surrogate pair, wherever the limit falls and however the answer is split.
    #[test]
    fn a_cut_string_is_still_valid_json_and_a_prefix_of_the_original() {
        let units = [
            "a",
            "é",
            "€",
            "😀",
            "\\u00e9",
            "\\\"",
            "\\\\",
            "\\n",
            "\\ud83d\\ude00",
        ];
        for (i, unit) in units.iter().enumerate() {
            for lead in 0..7 {
                let value = format!("{}{}", "b".repeat(lead), unit.repeat(JSON_MAX_STRING + 1));
                let key = format!("{}{}", "k".repeat(lead), unit.repeat(JSON_MAX_KEY + 1));
                let body = format!("{{\"{key}\":[\"{value}\",1],\"s\":\"{unit}\"}}");
                for piece in [1, 7, body.len()] {
                    let sh = shorten(body.as_bytes(), piece);
                    assert_eq!(sh.cut(), 2, "{i} {lead} {piece}");
                    let out: Value = serde_json::from_slice(&sh.into_bytes())
                        .unwrap_or_else(|e| panic!("{i} {lead} {piece}: {e}"));
                    let orig: Value = serde_json::from_str(&body).unwrap();
                    let first = |v: &Value| {
                        let (k, v) = v
                            .as_object()
                            .unwrap()
                            .iter()
                            .find(|(k, _)| *k != "s")
                            .unwrap();
                        (k.clone(), v.clone())
                    };
                    let ((ok, ov), (rk, rv)) = (first(&out), first(&orig));
                    assert!(
                        rk.starts_with(ok.as_str()) && ok.len() < rk.len(),
                        "{i} {lead}"
                    );
                    let (os, rs) = (ov[0].as_str().unwrap(), rv[0].as_str().unwrap());
                    assert!(
                        rs.starts_with(os)
                            && os.len() < rs.len()
                            && os.len() >= JSON_MAX_STRING / 6
                    );
                    assert_eq!(out["s"], orig["s"]);
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// The output does not depend on how the answer is split, and valid JSON stays
        /// valid JSON.
        #[test]
        fn the_shortener_does_not_depend_on_the_pieces(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            piece in 1usize..40,
        ) {
            let whole = shorten(&body, body.len()).into_bytes();
            proptest::prop_assert_eq!(&whole, &shorten(&body, piece).into_bytes());
            if serde_json::from_slice::<Value>(&body).is_ok() {
                proptest::prop_assert!(serde_json::from_slice::<Value>(&whole).is_ok());
            }
        }
    }
}
