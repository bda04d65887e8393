//! gravity's `/status` answer, parsed: its position (binlog, batch table stats, Mongo
//! timestamp), its watermarks, its name, stage, version and config hash. Pure functions; the
//! collector that reads it is [`crate::collector::status`].

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `/status` answered something that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct StatusError(pub String);

/// Largest `/status` body read (a batch pipeline with many tables carries a stats entry per table).
pub const BODY_LIMIT: usize = 16 * 1024 * 1024;
/// Most watermark streams / full-dump tables exported; the rest are counted as dropped.
pub const MAX_STREAMS: usize = 1000;

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
/// watermark keys) to [`crate::bounds::MAX_LABEL_VALUE_BYTES`], counting each cut, so a
/// hostile answer (a 15 MB version string, 10 KB stream names) is not kept in memory.
pub fn bound_status(st: &mut Status) {
    let max = crate::bounds::MAX_LABEL_VALUE_BYTES;
    let cut = |s: &mut String| {
        let keep = crate::base::cut(s, max).len();
        if keep < s.len() {
            s.truncate(keep);
            s.shrink_to_fit();
            crate::bounds::count_truncated(crate::bounds::Truncated::LabelValue, 1);
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
pub fn parse_status(body: &[u8]) -> Result<Status, StatusError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        StatusError(format!(
            "/status is not JSON (line {} column {})",
            e.line(),
            e.column()
        ))
    })?;
    let obj = v
        .as_object()
        .ok_or_else(|| StatusError("/status is not a JSON object".into()))?;
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
        return Err(StatusError(
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
