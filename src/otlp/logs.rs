//! gravity's classified log records as [`LogEntry`] records: OTLP LogRecords and JSON lines
//! (`--log-entries.file`, a path or `-` for stdout).
//!
//! The log watcher builds each entry (message redacted as on the status page) and hands it
//! over with [`LogSink::submit`], which never waits: a token bucket (`--otlp.logs-rate-limit`
//! per second, bursts of as many) and bounded channels (1024 entries each); what does not
//! fit is dropped and counted in `gravity_exporter_otlp_dropped_total{signal="logs"}`.
#![warn(clippy::arithmetic_side_effects)]

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tokio::sync::mpsc;

use super::transport::{Payload, Signal, Transport};
use super::Outcomes;
use crate::base::lock;
use crate::base::{BoxFuture, Tasks};
use crate::collector::Context;
use crate::config::otlp::{LogEntriesTarget, TelemetrySettings};

/// Entries queued per destination.
const QUEUE: usize = 1024;
/// Most entries per OTLP export or file write.
const BATCH: usize = 512;

pub use crate::log::entry::{ErrorInfo, Extras, LogEntry, Metadata, OwnFields};

/// The entry as an OTLP LogRecord (attribute names as the JSON keys; `error.type`,
/// `error.cause`, `metadata.file`, `metadata.line`, `metadata.retry`).
pub fn to_otlp(e: &LogEntry, observed_unix_nano: u64) -> LogRecord {
    let s = |k: &str, v: &str| super::convert::kv(k, v);
    let mut attributes = vec![
        s("pipeline", &e.pipeline),
        s("component", e.component),
        s("level", e.level),
    ];
    for (k, v) in [
        ("schema", &e.schema),
        ("table", &e.table),
        ("operation", &e.operation),
    ] {
        if let Some(v) = v {
            attributes.push(s(k, v));
        }
    }
    if let Some(d) = e.duration_ms {
        attributes.push(KeyValue {
            key: "duration_ms".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::DoubleValue(d)),
            }),
            ..Default::default()
        });
    }
    if let Some(e) = &e.error {
        attributes.push(s("error.type", e.error_type));
        if let Some(c) = &e.cause {
            attributes.push(s("error.cause", c));
        }
    }
    if let Some(f) = &e.metadata.file {
        attributes.push(s("metadata.file", f));
    }
    if let Some(l) = e.metadata.line {
        attributes.push(KeyValue {
            key: "metadata.line".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(i64::from(l))),
            }),
            ..Default::default()
        });
    }
    attributes.push(s("metadata.source", e.metadata.source));
    attributes.push(KeyValue {
        key: "metadata.retry".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(e.metadata.retry)),
        }),
        ..Default::default()
    });
    let hex = |h: &Option<String>, len: usize| -> Vec<u8> {
        h.as_deref()
            .map(|h| {
                (0..len)
                    .filter_map(|i| {
                        let j = i.saturating_mul(2);
                        h.get(j..j.saturating_add(2))
                            .and_then(|b| u8::from_str_radix(b, 16).ok())
                    })
                    .collect::<Vec<u8>>()
            })
            .filter(|v| v.len() == len)
            .unwrap_or_default()
    };
    LogRecord {
        time_unix_nano: e.time_unix_nano,
        observed_time_unix_nano: observed_unix_nano,
        severity_number: e.severity_number,
        severity_text: e.level.to_string(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(e.message.clone())),
        }),
        attributes,
        trace_id: hex(&e.trace_id, 16),
        span_id: hex(&e.span_id, 8),
        ..Default::default()
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct Inner {
    rate: f64,
    bucket: Mutex<Bucket>,
    otlp_tx: Option<mpsc::Sender<LogEntry>>,
    file_tx: Option<mpsc::Sender<LogEntry>>,
    otlp_rx: Option<Arc<tokio::sync::Mutex<mpsc::Receiver<LogEntry>>>>,
    /// Entries the OTLP task took from its queue and has not had accepted or refused yet
    /// (at most 2 × [`BATCH`]): a shutdown that stops the task while it gathers or sends
    /// leaves them here for [`LogSink::flush`], instead of losing them uncounted.
    otlp_batch: Mutex<Vec<LogEntry>>,
    file_rx: Option<Arc<tokio::sync::Mutex<mpsc::Receiver<LogEntry>>>>,
    transport: Option<Arc<Transport>>,
    writer: Option<Arc<Mutex<JsonLines>>>,
    outcomes: Arc<Outcomes>,
    ctx: Arc<Context>,
}

/// Where the log watcher hands classified records over (no-op while nothing takes them).
#[derive(Clone, Default)]
pub struct LogSink {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink")
            .field("on", &self.inner.is_some())
            .finish()
    }
}

impl crate::log::entry::EntrySink for LogSink {
    fn is_on(&self) -> bool {
        LogSink::is_on(self)
    }

    fn submit(&self, e: LogEntry) {
        LogSink::submit(self, e)
    }
}

impl LogSink {
    /// Whether anything takes log entries (else the watcher need not build them).
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Starts the OTLP log exporter (`otlp_logs`) and the JSON lines writer (`log_entries`)
    /// as far as they are configured.
    pub fn start(
        ctx: &Arc<Context>,
        tasks: &mut Tasks,
        t: &TelemetrySettings,
        otlp: Option<(Arc<Transport>, bool)>,
        outcomes: Arc<Outcomes>,
    ) -> LogSink {
        let transport = otlp.and_then(|(tr, on)| on.then_some(tr));
        if transport.is_none() && t.log_entries.is_none() {
            return LogSink::default();
        }
        let (otlp_tx, otlp_rx) = match transport {
            Some(_) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                (Some(tx), Some(Arc::new(tokio::sync::Mutex::new(rx))))
            }
            None => (None, None),
        };
        let (file_tx, file_rx) = match t.log_entries {
            Some(_) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                (Some(tx), Some(Arc::new(tokio::sync::Mutex::new(rx))))
            }
            None => (None, None),
        };
        let rate = f64::from(t.logs_rate_limit);
        let inner = Arc::new(Inner {
            rate,
            bucket: Mutex::new(Bucket {
                tokens: rate,
                at: Instant::now(),
            }),
            otlp_tx,
            file_tx,
            otlp_rx,
            otlp_batch: Mutex::new(Vec::new()),
            file_rx,
            transport,
            writer: t
                .log_entries
                .clone()
                .map(|target| Arc::new(Mutex::new(JsonLines::new(target)))),
            outcomes,
            ctx: Arc::clone(ctx),
        });
        if inner.otlp_rx.is_some() {
            let i = Arc::clone(&inner);
            tasks.push((
                "otlp_logs",
                Box::new(move || Box::pin(otlp_loop(Arc::clone(&i))) as BoxFuture<()>),
            ));
        }
        if inner.file_rx.is_some() {
            let i = Arc::clone(&inner);
            tasks.push((
                "log_entries",
                Box::new(move || Box::pin(file_loop(Arc::clone(&i))) as BoxFuture<()>),
            ));
        }
        LogSink { inner: Some(inner) }
    }

    /// Hands one entry over without waiting; over the rate limit or with a full queue it is
    /// dropped and counted.
    pub fn submit(&self, e: LogEntry) {
        let Some(i) = &self.inner else { return };
        {
            let mut b = lock(&i.bucket);
            let now = Instant::now();
            let add = now.duration_since(b.at).as_secs_f64() * i.rate;
            b.tokens = (b.tokens + add).min(i.rate);
            b.at = now;
            if b.tokens < 1.0 {
                drop(b);
                i.outcomes.dropped(Signal::Logs, 1);
                return;
            }
            b.tokens -= 1.0;
        }
        match (&i.otlp_tx, &i.file_tx) {
            (Some(a), Some(b)) => {
                if a.try_send(e.clone()).is_err() {
                    i.outcomes.dropped(Signal::Logs, 1);
                }
                if b.try_send(e).is_err() {
                    i.outcomes.dropped(Signal::Logs, 1);
                }
            }
            (Some(tx), None) | (None, Some(tx)) => {
                if tx.try_send(e).is_err() {
                    i.outcomes.dropped(Signal::Logs, 1);
                }
            }
            (None, None) => {}
        }
    }

    /// Sends and writes what is still queued (shutdown; the tasks are stopped already).
    pub async fn flush(&self) {
        let Some(i) = &self.inner else { return };
        if let Some(rx) = &i.file_rx {
            let mut buf = Vec::new();
            {
                let mut rx = rx.lock().await;
                while let Ok(e) = rx.try_recv() {
                    buf.push(e);
                }
            }
            if !buf.is_empty() {
                write_batch(i, buf).await;
            }
        }
        if let Some(rx) = &i.otlp_rx {
            // what the stopped task had taken from the queue (sent again if its export was
            // cut off: at least once)
            let held = std::mem::take(&mut *lock(&i.otlp_batch));
            if !held.is_empty() {
                send_batch(i, &held).await;
            }
            loop {
                let mut buf = Vec::new();
                {
                    let mut rx = rx.lock().await;
                    while buf.len() < BATCH {
                        match rx.try_recv() {
                            Ok(e) => buf.push(e),
                            Err(_) => break,
                        }
                    }
                }
                if buf.is_empty() {
                    break;
                }
                send_batch(i, &buf).await;
            }
        }
    }
}

async fn send_batch(i: &Inner, batch: &[LogEntry]) {
    let Some(tr) = &i.transport else { return };
    let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    let observed = super::unix_nanos(SystemTime::now());
    // one resource per pipeline (several pipelines' lines may share a batch)
    let mut by_pipeline: Vec<(&str, Vec<&LogEntry>)> = Vec::new();
    for e in batch {
        match by_pipeline.iter_mut().find(|(p, _)| *p == e.pipeline) {
            Some((_, v)) => v.push(e),
            None => by_pipeline.push((e.pipeline.as_str(), vec![e])),
        }
    }
    let port = i.ctx.settings().listen.port();
    let req = ExportLogsServiceRequest {
        resource_logs: by_pipeline
            .into_iter()
            .map(|(pipeline, entries)| ResourceLogs {
                resource: Some(super::resource_of(pipeline, port)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(super::scope()),
                    log_records: entries.iter().map(|e| to_otlp(e, observed)).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    };
    let r = tr.send(Payload::Logs(req)).await;
    i.outcomes.record(Signal::Logs, &r, n);
}

async fn otlp_loop(i: Arc<Inner>) {
    let Some(rx) = i.otlp_rx.clone() else { return };
    loop {
        // entries move from the queue into `otlp_batch` and leave it only once the export
        // ended: the task may be stopped (shutdown) at any await below
        if lock(&i.otlp_batch).is_empty() {
            let mut buf = Vec::with_capacity(64);
            {
                let mut rx = rx.lock().await;
                if rx.recv_many(&mut buf, BATCH).await == 0 {
                    return;
                }
            }
            lock(&i.otlp_batch).extend(buf);
            // gather what follows shortly into the same export
            tokio::time::sleep(Duration::from_millis(200)).await;
            {
                let mut rx = rx.lock().await;
                let mut held = lock(&i.otlp_batch);
                while held.len() < BATCH {
                    match rx.try_recv() {
                        Ok(e) => held.push(e),
                        Err(_) => break,
                    }
                }
            }
        }
        // one export at a time; meanwhile the queue fills and drops what does not fit
        let batch = lock(&i.otlp_batch).clone();
        send_batch(&i, &batch).await;
        lock(&i.otlp_batch).clear();
    }
}

async fn write_batch(i: &Inner, batch: Vec<LogEntry>) {
    let Some(w) = i.writer.clone() else { return };
    let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
    let ok = tokio::task::spawn_blocking(move || lock(&w).write(&batch))
        .await
        .unwrap_or(false);
    if !ok {
        i.outcomes.dropped(Signal::Logs, n);
    }
}

async fn file_loop(i: Arc<Inner>) {
    let Some(rx) = i.file_rx.clone() else { return };
    loop {
        let mut buf = Vec::with_capacity(64);
        {
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut buf, BATCH).await == 0 {
                return;
            }
        }
        write_batch(&i, buf).await;
    }
}

/// The JSON lines writer: appends, and reopens the path when the file was rotated away
/// (renamed or deleted: the path's device and inode differ from the open file's).
pub struct JsonLines {
    target: LogEntriesTarget,
    open: Option<(std::fs::File, (u64, u64))>,
    failing: AtomicBool,
}

fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

impl JsonLines {
    /// A writer to `target` (opened at the first write).
    pub fn new(target: LogEntriesTarget) -> JsonLines {
        JsonLines {
            target,
            open: None,
            failing: AtomicBool::new(false),
        }
    }

    fn file(&mut self, path: &Path) -> std::io::Result<&mut std::fs::File> {
        let current = std::fs::metadata(path).ok().map(|m| identity(&m));
        let stale = match (&self.open, current) {
            (Some((_, id)), Some(cur)) => *id != cur,
            _ => true,
        };
        if stale {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            let id = identity(&f.metadata()?);
            self.open = Some((f, id));
        }
        match &mut self.open {
            Some((f, _)) => Ok(f),
            None => Err(std::io::Error::other("not open")),
        }
    }

    /// Writes the entries, one JSON object per line; false when they could not be written.
    pub fn write(&mut self, batch: &[LogEntry]) -> bool {
        let mut buf = Vec::with_capacity(batch.len().saturating_mul(256));
        for e in batch {
            if serde_json::to_writer(&mut buf, e).is_ok() {
                buf.push(b'\n');
            }
        }
        let res = match self.target.clone() {
            LogEntriesTarget::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf).and_then(|()| out.flush())
            }
            LogEntriesTarget::File(p) => self.write_file(&p, &buf),
        };
        match res {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("writing log entries works again");
                }
                true
            }
            Err(e) => {
                self.open = None;
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot write log entries; dropping and counting them until it works again");
                }
                false
            }
        }
    }

    fn write_file(&mut self, p: &Path, buf: &[u8]) -> std::io::Result<()> {
        let f = self.file(p)?;
        f.write_all(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::record::Level;
    use crate::log::record::LogFormat;
    use crate::redact::Redactor;

    fn entry(line: &str, format: LogFormat) -> LogEntry {
        let rec = crate::log::record::parse_line(line, format).unwrap();
        let class = crate::log::classify::classify(&rec);
        let r = Redactor::new(["s3cretPassw0rd"]);
        LogEntry::new(&rec, class, "p1", line, &r)
    }

    #[test]
    fn a_json_record_becomes_a_log_entry_with_its_fields_and_a_redacted_message() {
        let line = r#"{"file":"output.go","line":42,"level":"error","msg":"[output-mysql] exec failed: dsn root:s3cretPassw0rd@tcp(db:3306)/x password=s3cretPassw0rd","pipeline":"p1","time":"2026-12-05T10:00:00Z","schema":"shop","table":"orders","operation":"insert","duration_ms":12.5,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","error":"Error 1062: Duplicate entry"}"#;
        let e = entry(line, LogFormat::Json);
        assert_eq!(e.level, "error");
        assert_eq!(e.severity_number, 17);
        assert_eq!(e.pipeline, "p1");
        assert_eq!(e.schema.as_deref(), Some("shop"));
        assert_eq!(e.table.as_deref(), Some("orders"));
        assert_eq!(e.operation.as_deref(), Some("insert"));
        assert_eq!(e.duration_ms, Some(12.5));
        assert_eq!(
            e.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(e.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(e.metadata.file.as_deref(), Some("output.go"));
        assert_eq!(e.metadata.line, Some(42));
        assert_eq!(e.timestamp, "2026-12-05T10:00:00Z");
        assert!(e.error.is_some());
        assert!(!e.message.contains("s3cretPassw0rd"), "{}", e.message);
        let json = serde_json::to_string(&e).unwrap();
        assert!(!json.contains("s3cretPassw0rd"));
        let rec = to_otlp(&e, 1);
        assert_eq!(rec.trace_id.len(), 16);
        assert_eq!(rec.span_id.len(), 8);
        assert_eq!(rec.severity_number, 17);
    }

    #[test]
    fn own_records_carry_the_ids_of_the_current_span() {
        use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId};
        let f = || OwnFields {
            table: Some("heartbeat".into()),
            duration_ms: Some(4.5),
            ..Default::default()
        };
        let outside = LogEntry::own(Level::Debug, "canary", "p1", "canary written", f());
        assert_eq!((outside.trace_id, outside.span_id), (None, None));
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            Default::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(sc);
        let e = {
            let _g = cx.attach();
            LogEntry::own(Level::Warning, "canary", "p1", "canary lost", f())
        };
        assert_eq!(
            e.trace_id.as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(e.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(e.metadata.source, "gravity-exporter");
        assert_eq!((e.level, e.severity_number), ("warning", 13));
        assert_eq!(e.component, "canary");
        let rec = to_otlp(&e, 1);
        assert_eq!(rec.trace_id.len(), 16);
        assert_eq!(rec.span_id.len(), 8);
    }

    #[test]
    fn json_lines_are_reopened_after_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("entries.jsonl");
        let mut w = JsonLines::new(LogEntriesTarget::File(p.clone()));
        let line = r#"{"level":"warning","msg":"x","time":"2026-12-05T10:00:00Z"}"#;
        let e = entry(line, LogFormat::Json);
        assert!(w.write(std::slice::from_ref(&e)));
        std::fs::rename(&p, dir.path().join("entries.jsonl.1")).unwrap();
        assert!(w.write(std::slice::from_ref(&e)));
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(v["level"], "warning");
        assert_eq!(v["metadata"]["source"], "gravity");
    }

    #[test]
    fn text_key_values_are_read() {
        let x = Extras::from_line(
            r#"time="2026" level=info msg="done" schema=shop table="order items" duration=1.5s"#,
        );
        assert_eq!(x.schema.as_deref(), Some("shop"));
        assert_eq!(x.table.as_deref(), Some("order items"));
        assert_eq!(x.duration_ms, Some(1500.0));
    }
}
