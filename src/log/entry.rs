//! The unified LogEntry record: one of gravity's classified log lines, or one of the
//! exporter's own records (a canary), masked and bounded. Built by the producers, handed to
//! an [`EntrySink`] (the OTLP logs export and the `--log-entries.file` writer,
//! [`crate::otlp::logs`]) when one is on.

use std::time::SystemTime;

use serde::Serialize;

use super::classify::Classification;
use super::record::{Level, Record};
use crate::redact::Redactor;

/// Longest message kept (characters), after redaction.
pub const MESSAGE_CHARS: usize = 2048;
/// Longest extra field value kept (bytes).
pub const FIELD_BYTES: usize = 256;

/// Where the producers hand LogEntry records over (the OTLP export and the LogEntry file,
/// installed at start while one of them is on).
pub trait EntrySink: Send + Sync + std::fmt::Debug {
    /// Whether anything takes entries (else a producer need not build them).
    fn is_on(&self) -> bool;
    /// Hands one entry over without waiting (dropped and counted when over a bound).
    fn submit(&self, e: LogEntry);
}

/// The classified error of a record.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorInfo {
    /// The classified cause (`gravity_error_total`'s `error_type`).
    pub error_type: &'static str,
    /// The error text gravity gave (redacted), when the record has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// Where the record came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Metadata {
    /// Go source file (gravity's logrus hook).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Go source line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The record reports a retry attempt.
    pub retry: bool,
    /// What wrote the record: `gravity` (its log), or `gravity-exporter` (the exporter's
    /// own records about what it traces, e.g. a canary).
    pub source: &'static str,
}

/// One log record in the unified LogEntry shape.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogEntry {
    /// RFC 3339 time (gravity's, else when it was read).
    pub timestamp: String,
    /// Unix nanoseconds of `timestamp`.
    #[serde(skip)]
    pub time_unix_nano: u64,
    /// `debug`, `info`, `warning`, `error`, `fatal`, `panic`.
    pub level: &'static str,
    /// OpenTelemetry severity number (5 debug, 9 info, 13 warn, 17 error, 21 fatal, 24 panic).
    pub severity_number: i32,
    /// The pipeline.
    pub pipeline: String,
    /// The classified component.
    pub component: &'static str,
    /// Trace id (32 hex digits) when the record belongs to a trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// Span id (16 hex digits) when the record belongs to a trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
    /// The message, redacted as on the status page, one line.
    pub message: String,
    /// Schema the record is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Table the record is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// Operation (insert, update, delete, ddl, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// Duration the record reports, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<f64>,
    /// The classified error (errors, fatals, panics, retries).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
    /// Source file and line, retry flag.
    pub metadata: Metadata,
}

fn severity(l: Level) -> i32 {
    match l {
        Level::Debug => 5,
        Level::Info => 9,
        Level::Warning => 13,
        Level::Error => 17,
        Level::Fatal => 21,
        Level::Panic => 24,
    }
}

/// Fields of a record beyond those the parser keeps, read from the raw line: JSON keys, or
/// `key=value` pairs of the text formats.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extras {
    pub(crate) trace_id: Option<String>,
    pub(crate) span_id: Option<String>,
    pub(crate) schema: Option<String>,
    pub(crate) table: Option<String>,
    pub(crate) operation: Option<String>,
    pub(crate) duration_ms: Option<f64>,
    pub(crate) error: Option<String>,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Extras {
    fn set(&mut self, key: &str, value: &str) {
        let v = || Some(crate::base::cut(value, FIELD_BYTES).to_string());
        match key {
            "trace_id" | "traceID" | "traceId" | "trace.id" if is_hex(value, 32) => {
                self.trace_id = Some(value.to_ascii_lowercase())
            }
            "span_id" | "spanID" | "spanId" | "span.id" if is_hex(value, 16) => {
                self.span_id = Some(value.to_ascii_lowercase())
            }
            "schema" | "db" | "database" => self.schema = v(),
            "table" | "tbl" => self.table = v(),
            "operation" | "op" | "dml" => self.operation = v(),
            "duration_ms" => self.duration_ms = value.parse().ok().filter(|d: &f64| d.is_finite()),
            "duration" => {
                self.duration_ms = crate::base::parse_duration(value)
                    .map(|d| d.as_secs_f64() * 1000.0)
                    .or(self.duration_ms)
            }
            "error" | "err" => self.error = v(),
            _ => {}
        }
    }

    /// Reads the extra fields of `line`.
    pub fn from_line(line: &str) -> Extras {
        let mut x = Extras::default();
        let t = line.trim_start();
        if t.starts_with('{') {
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(t) {
                for (k, v) in m.iter().take(64) {
                    match v {
                        serde_json::Value::String(s) => x.set(k, s),
                        serde_json::Value::Number(n) => x.set(k, &n.to_string()),
                        _ => {}
                    }
                }
            }
            return x;
        }
        // text / console: key=value or key="quoted value"
        let mut rest = t;
        let mut n = 0u32;
        while let Some(eq) = rest.find('=') {
            n = n.saturating_add(1);
            if n > 64 {
                break;
            }
            let key = rest[..eq].rsplit(' ').next().unwrap_or("");
            let after = &rest[eq.saturating_add(1)..];
            let (value, next) = if let Some(q) = after.strip_prefix('"') {
                match q.find('"') {
                    Some(end) => (&q[..end], &q[end.saturating_add(1)..]),
                    None => (q, ""),
                }
            } else {
                let end = after.find(' ').unwrap_or(after.len());
                (&after[..end], &after[end..])
            };
            x.set(key, value);
            rest = next;
        }
        x
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl LogEntry {
    /// The entry of one classified record; `line` is the raw line (for the extra fields).
    pub fn new(
        rec: &Record<'_>,
        class: Classification,
        pipeline: &str,
        line: &str,
        redactor: &Redactor,
    ) -> LogEntry {
        let x = Extras::from_line(line);
        let written = rec.time.and_then(|t| {
            time::OffsetDateTime::parse(
                t.trim_matches('"'),
                &time::format_description::well_known::Rfc3339,
            )
            .ok()
        });
        let (timestamp, nanos) = match written {
            Some(dt) => (
                dt.format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                u64::try_from(dt.unix_timestamp_nanos()).unwrap_or(0),
            ),
            None => {
                let now = SystemTime::now();
                (rfc3339(now), crate::base::unix_nanos(now))
            }
        };
        let message = crate::redact::clean(redactor, &rec.msg, MESSAGE_CHARS);
        let is_error = class.counts_as_error || class.is_retry;
        let clean = |s: &str| crate::redact::clean(redactor, s, FIELD_BYTES);
        LogEntry {
            timestamp,
            time_unix_nano: nanos,
            level: rec.level.as_str(),
            severity_number: severity(rec.level),
            pipeline: pipeline.to_string(),
            component: class.component.as_str(),
            trace_id: x.trace_id,
            span_id: x.span_id,
            message,
            schema: x.schema.as_deref().map(clean),
            table: x.table.as_deref().map(clean),
            operation: x.operation.as_deref().map(clean),
            duration_ms: x.duration_ms,
            error: is_error.then(|| ErrorInfo {
                error_type: class.error_type.as_str(),
                cause: x.error.as_deref().map(clean),
            }),
            metadata: Metadata {
                file: rec
                    .file
                    .map(|f| crate::base::cut(f, FIELD_BYTES).to_string()),
                line: rec.line,
                retry: class.is_retry,
                source: "gravity",
            },
        }
    }

    /// A record of the exporter's own (not gravity's): `metadata.source` is
    /// `gravity-exporter`, the time is now, and the trace and span id are those of the
    /// OpenTelemetry span current on this thread (`opentelemetry::Context::current()`: the
    /// caller attaches the span's context around the call), none outside a span. The
    /// message and fields are masked like gravity's.
    pub fn own(
        level: Level,
        component: &'static str,
        pipeline: &str,
        message: &str,
        fields: OwnFields,
    ) -> LogEntry {
        let now = SystemTime::now();
        let (trace_id, span_id) = match crate::spans::current_ids() {
            Some((t, s)) => (Some(t), Some(s)),
            None => (None, None),
        };
        let clean =
            |s: &str| crate::base::cut(&crate::redact::redact_known(s), FIELD_BYTES).to_string();
        let message = crate::redact::redact_known(message);
        LogEntry {
            timestamp: rfc3339(now),
            time_unix_nano: crate::base::unix_nanos(now),
            level: level.as_str(),
            severity_number: severity(level),
            pipeline: pipeline.to_string(),
            component,
            trace_id,
            span_id,
            message: crate::base::cut(&message, MESSAGE_CHARS).to_string(),
            schema: fields.schema.as_deref().map(clean),
            table: fields.table.as_deref().map(clean),
            operation: fields.operation.as_deref().map(clean),
            duration_ms: fields.duration_ms.filter(|d| d.is_finite()),
            error: None,
            metadata: Metadata {
                file: None,
                line: None,
                retry: false,
                source: "gravity-exporter",
            },
        }
    }
}

/// What a record of the exporter's own says beyond its message (see [`LogEntry::own`]).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct OwnFields {
    /// Schema the record is about.
    pub schema: Option<String>,
    /// Table the record is about.
    pub table: Option<String>,
    /// Operation.
    pub operation: Option<String>,
    /// A duration the record reports, in milliseconds.
    pub duration_ms: Option<f64>,
}
