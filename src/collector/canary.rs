//! The opt-in end-to-end canary: one marked row per `--canary.interval` written into
//! gravity's MySQL source (or one document into its Mongo source), followed through
//! gravity's `/status` watermarks and looked for in the target table of the matching
//! gravity route, or, for an `async-kafka` output, as gravity's message in the topic of
//! that route (docs/canary.md).
//!
//! - **Mongo source.** `--canary.table` names `db.collection`. The write is one `update`
//!   with `upsert: true` and `$set` of the document `_id` = the pipeline's row key (one
//!   document per pipeline, never more), fields `pipeline` (the key again), `seq`,
//!   `trace_id`, `span_id`, `written_us` (µs since the epoch), with the canary's own login
//!   (in gravity's auth database, over gravity's TLS settings), on a new connection per
//!   interval, after `hello` says the node is a writable primary (else `read_only`);
//!   `Unauthorized` (13) or a failed login → `privilege`, `NotWritablePrimary` (10107) and
//!   its kin → `read_only`. gravity writes each top-level field of a Mongo document into the
//!   column of that name of the MySQL target row, so the target is read by the same
//!   `SELECT seq, trace_id … WHERE pipeline = key` as for a MySQL source. Following and
//!   arrival are the same code for both sources (a Mongo source is followed to a MySQL
//!   target only).
//!
//! - **Write.** With its own login (`--canary.username`), the canary upserts one row per
//!   pipeline into `--canary.table` (default `gravity_canary.heartbeat`, created on first
//!   use unless `--canary.create=false`): sequence number, trace id, span id and the write
//!   time with microseconds (UTC, the exporter's clock). One statement per interval, one
//!   row per pipeline, never more. Before each write it reads `@@GLOBAL.read_only` and
//!   does not write to a read-only server (not even as a user that could); a missing
//!   grant, a read-only server or an unreachable source stop the writes and show in
//!   `gravity_canary_writer_state{reason}` until the next interval finds them gone.
//! - **Follow.** From the status collector's last typed `/status` ([`Context::last_status`]):
//!   once the oldest watermark's EventTime reaches the canary's write second (binlog event
//!   times have whole seconds), gravity has taken it in; that watermark's ProcessTime is
//!   gravity's own time for it.
//! - **Arrival (Kafka).** Before each write the end of every partition of the route's topic
//!   is marked (`ListOffsets`); while canaries are pending, every [`POLL`] one bounded
//!   `Fetch` per leader from there ([`TopicReader`], gravity's TLS/SASL login); a message
//!   of gravity's for the canary table whose row carries a pending canary's trace id
//!   ([`kafka_canary`]) means it arrived. Why the target cannot be read is kept in
//!   [`View::target_error`] (MySQL too).
//! - **Arrival (MySQL).** While canaries are pending, every [`POLL`] one primary-key `SELECT` of
//!   the canary row in the target table (gravity's route for the canary table, else the
//!   same name), over the shared target connection with gravity's target login (or
//!   `--target.username`). A row whose sequence number reached a pending canary's means
//!   it arrived (a later update carries the earlier ones with it: gravity applies them in
//!   order). Not seen within `--canary.timeout`: lost.
//! - **Metrics.** `gravity_canary_{sent,arrived,lost}_total`, `gravity_canary_e2e_lag_seconds`,
//!   `gravity_canary_last_arrival_timestamp_seconds`, `gravity_canary_pending`,
//!   `gravity_canary_writer_state{reason}`; each arrival is also observed in
//!   `gravity_data_lag_seconds{schema,table}` of the canary table.
//! - **Traces.** One trace per canary through the global OpenTelemetry tracer (a no-op
//!   until a tracer provider is installed): root `gravity.canary` from the write to the
//!   arrival, children `source.write`, `gravity.input` (write → gravity's ProcessTime) and
//!   `gravity.output` (ProcessTime → visible at the target). The row holds the root's
//!   trace and span id (random ids of the exporter's own while no provider is installed),
//!   and so do the exporter's log lines about the canary.
//!
//! Counters, pending canaries and the recent ring live in [`Shared`] (in the [`Context`]),
//! so a restart of the task after a panic neither loses nor counts a canary twice.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::trace::{Span as _, SpanKind, Status as OtelStatus, TraceContextExt, Tracer};
use opentelemetry::{Context as OtelContext, KeyValue};
use time::OffsetDateTime;

use super::consistency::{quote_ident, quote_literal, TableSpec};
use super::status::StatusSeen;
use super::Context;
use crate::base::lock;
use crate::base::unix_now;
use crate::config::{CanarySettings, Settings};
use crate::gravity_config::{EndpointRole, GravityConfig, Protocol};
use crate::metrics::Families;
use crate::probe::kafka_topic::TopicReader;
use crate::probe::mongo::{self, FieldValue, MongoLogin, MongoSecurity};
use crate::probe::mysql::{Login, MySqlConn, MySqlError, ResultSet};
use crate::probe::FailureReason;
use crate::probe::WireError;

/// Name of the snapshot in the store.
pub const SNAPSHOT: &str = "canary";
/// How often a pending canary is looked for at the target (one primary-key read).
pub const POLL: Duration = Duration::from_millis(200);

/// Longest wait of an unsupported canary (no route, gravity's config not known yet) for a
/// new target or new settings before it looks again.
pub const UNSUPPORTED_RECHECK: Duration = Duration::from_secs(30);

/// Waits until gravity's target is replaced, the settings change, or
/// [`UNSUPPORTED_RECHECK`] passes: no timer a second while the canary cannot run.
async fn wait_for_change(
    target: &mut tokio::sync::watch::Receiver<u64>,
    settings: &mut tokio::sync::watch::Receiver<Arc<crate::config::Settings>>,
) {
    let closed = tokio::select! {
        r = target.changed() => r.is_err(),
        r = settings.changed() => r.is_err(),
        _ = tokio::time::sleep(UNSUPPORTED_RECHECK) => false,
    };
    if closed {
        // the exporter is stopping: no busy loop until the task is cancelled
        tokio::time::sleep(UNSUPPORTED_RECHECK).await;
    }
}
/// Most canaries pending at once (older ones count as lost when this is exceeded).
pub const MAX_PENDING: usize = 256;
/// Canaries kept for the status page.
pub const RECENT: usize = 10;
/// Longest row key (the pipeline name, reduced to `[A-Za-z0-9_.-]`).
pub const MAX_KEY: usize = 64;
/// Wait before a new login after a failed one.
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// Name of the tracer.
pub const TRACER: &str = "gravity-exporter";

/// Why the writer writes or not: the `reason` of `gravity_canary_writer_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterState {
    /// Writing.
    Ok,
    /// The source is read-only (`@@GLOBAL.read_only`, or the server refused the write so).
    ReadOnly,
    /// The canary login or a grant is missing (login refused, INSERT/CREATE denied).
    Privilege,
    /// The source does not answer (refused, timeout, connection lost).
    Unreachable,
    /// gravity's config names no MySQL or Mongo source and MySQL (or, for a MySQL source,
    /// Kafka) target (or is not known yet).
    Unsupported,
    /// The canary table is missing and `--canary.create=false`.
    MissingTable,
    /// `--canary.interval` is 0 (off).
    Disabled,
}

impl WriterState {
    /// Every state, in a fixed order.
    pub const ALL: [WriterState; 7] = [
        WriterState::Ok,
        WriterState::ReadOnly,
        WriterState::Privilege,
        WriterState::Unreachable,
        WriterState::Unsupported,
        WriterState::MissingTable,
        WriterState::Disabled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WriterState::Ok => "ok",
            WriterState::ReadOnly => "read_only",
            WriterState::Privilege => "privilege",
            WriterState::Unreachable => "unreachable",
            WriterState::Unsupported => "unsupported",
            WriterState::MissingTable => "missing_table",
            WriterState::Disabled => "disabled",
        }
    }
}

/// Server errors that mean the server refuses writes: `--read-only`
/// (ER_OPTION_PREVENTS_STATEMENT), a read-only transaction, `super_read_only`.
const READ_ONLY_CODES: [u16; 3] = [1290, 1792, 1836];
/// Server errors about a missing schema or table.
const MISSING_CODES: [u16; 2] = [1049, 1146];
/// Server errors about a missing privilege (table, database, global).
const DENIED_CODES: [u16; 5] = [1044, 1142, 1143, 1227, 1370];

/// The writer state an error of the canary's connection means.
pub fn classify(e: &MySqlError) -> WriterState {
    if let Some(code) = e.server_code() {
        if READ_ONLY_CODES.contains(&code) {
            return WriterState::ReadOnly;
        }
        if DENIED_CODES.contains(&code) {
            return WriterState::Privilege;
        }
        if MISSING_CODES.contains(&code) {
            return WriterState::MissingTable;
        }
    }
    match e.reason() {
        FailureReason::Auth | FailureReason::Privilege | FailureReason::AuthPluginUnsupported => {
            WriterState::Privilege
        }
        _ => WriterState::Unreachable,
    }
}

/// The row key of a pipeline: its name reduced to `[A-Za-z0-9_.-]` (other bytes become
/// `_`), at most [`MAX_KEY`] bytes, `gravity` when empty; safe to quote in any SQL mode.
pub fn row_key(pipeline: &str) -> String {
    let k: String = pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_KEY)
        .collect();
    if k.is_empty() {
        "gravity".into()
    } else {
        k
    }
}

/// `CREATE DATABASE IF NOT EXISTS` of the canary schema.
pub fn create_schema_sql(schema: &str) -> String {
    format!("CREATE DATABASE IF NOT EXISTS {}", quote_ident(schema))
}

/// `CREATE TABLE IF NOT EXISTS` of the canary table: one row per pipeline.
pub fn create_table_sql(schema: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {}.{} (pipeline VARCHAR(64) NOT NULL PRIMARY KEY, seq BIGINT UNSIGNED NOT NULL, trace_id CHAR(32) NOT NULL, span_id CHAR(16) NOT NULL, written_at DATETIME(6) NOT NULL) COMMENT = 'gravity-exporter canary: one row per pipeline, updated once per --canary.interval'",
        quote_ident(schema),
        quote_ident(table)
    )
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) for a `DATETIME(6)` literal.
pub fn datetime6(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The upsert of one canary.
pub fn write_sql(schema: &str, table: &str, key: &str, c: &CanaryRow) -> String {
    format!(
        "INSERT INTO {}.{} (pipeline, seq, trace_id, span_id, written_at) VALUES ({}, {}, {}, {}, {}) ON DUPLICATE KEY UPDATE seq = VALUES(seq), trace_id = VALUES(trace_id), span_id = VALUES(span_id), written_at = VALUES(written_at)",
        quote_ident(schema),
        quote_ident(table),
        quote_literal(key),
        c.seq,
        quote_literal(&c.trace_id),
        quote_literal(&c.span_id),
        quote_literal(&datetime6(c.written_at)),
    )
}

/// The read of the canary row (source at start, target for arrivals).
pub fn read_sql(schema: &str, table: &str, key: &str) -> String {
    format!(
        "SELECT seq, trace_id FROM {}.{} WHERE pipeline = {}",
        quote_ident(schema),
        quote_ident(table),
        quote_literal(key)
    )
}

/// The sequence number in the result of [`read_sql`] (`None` without a row).
pub fn parse_seq(rs: &ResultSet) -> Option<u64> {
    rs.value(0, "seq").and_then(|v| v.trim().parse().ok())
}

/// Whether `@@GLOBAL.read_only` reads as on (`1`, `ON`; MariaDB 11's `NO_LOCK*` too).
pub fn is_read_only(v: &str) -> bool {
    !matches!(v.trim().to_ascii_uppercase().as_str(), "0" | "OFF" | "")
}

/// What one canary row holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryRow {
    /// Sequence number (per pipeline, growing).
    pub seq: u64,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id of the root span, 16 hex digits.
    pub span_id: String,
    /// When it was written (the exporter's clock).
    pub written_at: OffsetDateTime,
}

fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    let mut filled = 0;
    // getrandom(2) returns at most the bytes asked for; a failure leaves the rest to the clock.
    for _ in 0..4 {
        if filled >= n {
            break;
        }
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(k) => filled = filled.saturating_add(k),
            Err(_) => break,
        }
    }
    if filled < n {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            .to_le_bytes();
        for (i, b) in buf.iter_mut().enumerate().skip(filled) {
            *b = nanos[i % nanos.len()] ^ (i as u8);
        }
    }
    if buf.iter().all(|b| *b == 0) {
        buf[0] = 1;
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

// ---------------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------------

/// Starts the root span of a canary at `start` and returns its context; the trace and span
/// id to store are those of the root, or random ones when the tracer records nothing (no
/// provider installed).
pub fn start_trace<T>(
    tracer: &T,
    start: SystemTime,
    attrs: Vec<KeyValue>,
) -> (OtelContext, String, String)
where
    T: Tracer,
    T::Span: Send + Sync + 'static,
{
    let span = tracer.build_with_context(
        tracer
            .span_builder("gravity.canary")
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attrs),
        &OtelContext::new(),
    );
    let sc = span.span_context().clone();
    if sc.is_valid() {
        let cx = OtelContext::new().with_span(span);
        (
            cx,
            format!("{}", sc.trace_id()),
            format!("{}", sc.span_id()),
        )
    } else {
        // Nothing recorded: the context carries the row's random ids all the same, so the
        // exporter's records made inside it (LogEntry) carry the ids of the row.
        let (t, s) = (random_hex(16), random_hex(8));
        let ids = opentelemetry::trace::TraceId::from_hex(&t)
            .ok()
            .zip(opentelemetry::trace::SpanId::from_hex(&s).ok());
        let cx = match ids {
            Some((ti, si)) => {
                OtelContext::new().with_remote_span_context(opentelemetry::trace::SpanContext::new(
                    ti,
                    si,
                    opentelemetry::trace::TraceFlags::default(),
                    false,
                    Default::default(),
                ))
            }
            None => OtelContext::new().with_span(span),
        };
        (cx, t, s)
    }
}

/// A record of the exporter's own about a canary, made inside its root span's context:
/// the exporter's log line (with the trace and span id) and, while LogEntry output is on,
/// a LogEntry carrying the same ids.
fn note(
    ctx: &Context,
    cx: &OtelContext,
    level: crate::log::record::Level,
    msg: &str,
    f: crate::log::entry::OwnFields,
) {
    let _in_span = cx.clone().attach();
    let (trace_id, span_id) = crate::spans::current_ids().unwrap_or_default();
    match level {
        crate::log::record::Level::Debug => tracing::debug!(%trace_id, %span_id, "{msg}"),
        crate::log::record::Level::Info => tracing::info!(%trace_id, %span_id, "{msg}"),
        _ => tracing::warn!(%trace_id, %span_id, "{msg}"),
    }
    // to the LogEntry outputs while one is on; the trace and span ids are the current span's
    if let Some(t) = ctx.entries.get().filter(|t| t.is_on()) {
        let pipeline = ctx.target().pipeline.clone();
        t.submit(crate::log::entry::LogEntry::own(
            level, "canary", &pipeline, msg, f,
        ));
    }
}

fn child<T: Tracer>(
    tracer: &T,
    cx: &OtelContext,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attrs: Vec<KeyValue>,
    error: Option<String>,
) {
    let mut span = tracer.build_with_context(
        tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(start)
            .with_attributes(attrs),
        cx,
    );
    if let Some(e) = error {
        span.set_status(OtelStatus::error(e));
    }
    span.end_with_timestamp(end.max(start));
}

/// The `source.write` span: the exporter's upsert, `start`..`end`.
pub fn write_span<T: Tracer>(
    tracer: &T,
    cx: &OtelContext,
    start: SystemTime,
    end: SystemTime,
    attrs: Vec<KeyValue>,
    error: Option<String>,
) {
    child(tracer, cx, "source.write", start, end, attrs, error);
}

/// Ends the trace of a canary that arrived: `gravity.input` from the end of the write to
/// gravity's ProcessTime and `gravity.output` from there to the arrival (ProcessTime held
/// inside that range); without a ProcessTime one `gravity` span covers both.
pub fn arrived_trace<T: Tracer>(
    tracer: &T,
    cx: &OtelContext,
    written: SystemTime,
    process_time: Option<SystemTime>,
    arrival: SystemTime,
    lag: f64,
) {
    let arrival = arrival.max(written);
    match process_time {
        Some(p) => {
            let p = p.clamp(written, arrival);
            child(
                tracer,
                cx,
                "gravity.input",
                written,
                p,
                vec![KeyValue::new(
                    "gravity.watermark.process_time",
                    OffsetDateTime::from(p)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                )],
                None,
            );
            child(tracer, cx, "gravity.output", p, arrival, vec![], None);
        }
        None => child(
            tracer,
            cx,
            "gravity",
            written,
            arrival,
            vec![KeyValue::new(
                "gravity.watermark",
                "no watermark reached the canary before it arrived",
            )],
            None,
        ),
    }
    let span = cx.span();
    span.set_attribute(KeyValue::new("canary.e2e_lag_seconds", lag));
    span.set_attribute(KeyValue::new("canary.outcome", "arrived"));
    span.end_with_timestamp(arrival);
}

/// Root-span attributes from gravity's stage histograms over the last collection window:
/// interval aggregates over every event of the pipeline, not of the canary alone.
pub fn stage_attributes(w: &super::gravity_metrics::StageWindow) -> Vec<KeyValue> {
    let mut v = vec![
        KeyValue::new(
            "gravity.stages.aggregation",
            "interval mean of gravity's stage latency histograms over all events, not of this canary",
        ),
        KeyValue::new("gravity.stages.window_seconds", w.window_seconds),
    ];
    for s in &w.stages {
        v.push(KeyValue::new(
            format!("gravity.stage.{}.mean_seconds", s.stage),
            s.mean_seconds,
        ));
        v.push(KeyValue::new(
            format!("gravity.stage.{}.events", s.stage),
            s.events,
        ));
    }
    if let Some(s) = w.slowest() {
        v.push(KeyValue::new("gravity.stage.slowest", s.stage));
    }
    v.extend(queue_attributes(&w.queues));
    v
}

/// Root-span attributes from gravity's queue gauges at the end of that window:
/// `gravity.queue.<type>` (Σ over the type's tables or workers) and `.max`, the
/// scheduler's batch sizes and worker count.
pub fn queue_attributes(q: &super::gravity_metrics::Queues) -> Vec<KeyValue> {
    let mut v = Vec::new();
    if q.is_empty() {
        return v;
    }
    v.push(KeyValue::new(
        "gravity.queues.aggregation",
        "gravity_queue_length gauges at the last /metrics collection: sum per type over its tables or workers, and the longest one",
    ));
    for l in &q.lengths {
        v.push(KeyValue::new(format!("gravity.queue.{}", l.kind), l.total));
        v.push(KeyValue::new(
            format!("gravity.queue.{}.max", l.kind),
            l.max,
        ));
    }
    if let Some(b) = q.batch_size_mean {
        v.push(KeyValue::new("gravity.scheduler.batch_size.mean", b));
    }
    if let Some(b) = q.batch_size_max {
        v.push(KeyValue::new("gravity.scheduler.batch_size.max", b));
    }
    if let Some(n) = q.workers {
        v.push(KeyValue::new("gravity.scheduler.workers", n));
    }
    v
}

/// Ends the trace of a lost canary with an error status at `now`.
pub fn lost_trace(cx: &OtelContext, now: SystemTime, timeout: Duration) {
    let span = cx.span();
    span.set_attribute(KeyValue::new("canary.outcome", "lost"));
    span.set_status(OtelStatus::error(format!(
        "not seen at the target within {timeout:?}"
    )));
    span.end_with_timestamp(now);
}

// ---------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------

/// One canary on its way.
#[derive(Debug, Clone)]
pub struct Pending {
    /// What was written.
    pub row: CanaryRow,
    /// When the write returned (monotonic, for the timeout).
    pub written: Instant,
    /// When the write returned (wall clock, for the spans).
    pub written_wall: SystemTime,
    /// gravity's ProcessTime of the first watermark past the canary.
    pub process_time: Option<SystemTime>,
    /// The root span's context.
    pub cx: OtelContext,
}

/// A finished canary, for the status page.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    /// Sequence number.
    pub seq: u64,
    /// Trace id.
    pub trace_id: String,
    /// When it was written (Unix seconds).
    pub written_at: f64,
    /// End-to-end lag when it arrived; `None`: lost.
    pub lag: Option<f64>,
    /// Write → gravity's ProcessTime, when known.
    pub input: Option<f64>,
    /// gravity's ProcessTime → arrival, when known.
    pub output: Option<f64>,
}

#[derive(Debug, Default)]
struct Inner {
    pending: VecDeque<Pending>,
    recent: VecDeque<Finished>,
    state: Option<WriterState>,
    detail: String,
    last_lag: Option<f64>,
    last_arrival: Option<f64>,
    next_seq: Option<u64>,
    target_error: String,
}

/// The canary's state, shared by the task (across restarts) and the status page.
#[derive(Debug, Default)]
pub struct Shared {
    sent: AtomicU64,
    arrived: AtomicU64,
    lost: AtomicU64,
    inner: Mutex<Inner>,
}

/// What the status page shows.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// Writer state and its detail.
    pub state: WriterState,
    /// Detail of the state (error text, masked).
    pub detail: String,
    /// Counters.
    pub sent: u64,
    /// Counters.
    pub arrived: u64,
    /// Counters.
    pub lost: u64,
    /// Pending now.
    pub pending: usize,
    /// Last end-to-end lag.
    pub last_lag: Option<f64>,
    /// Why the target (the MySQL table or the Kafka topic) could not be read at the last
    /// look (masked); empty when it could.
    pub target_error: String,
    /// The last canaries, newest first.
    pub recent: Vec<Finished>,
}

impl Shared {
    /// The state for the status page; `None` while the canary is off.
    pub fn view(&self) -> Option<View> {
        let i = lock(&self.inner);
        let state = i.state?;
        if state == WriterState::Disabled {
            return None;
        }
        Some(View {
            state,
            detail: i.detail.clone(),
            sent: self.sent.load(Ordering::Relaxed),
            arrived: self.arrived.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            pending: i.pending.len(),
            last_lag: i.last_lag,
            target_error: i.target_error.clone(),
            recent: i.recent.iter().rev().cloned().collect(),
        })
    }

    fn remember(&self, f: Finished) {
        let mut i = lock(&self.inner);
        if i.recent.len() >= RECENT {
            i.recent.pop_front();
        }
        i.recent.push_back(f);
    }

    /// The metric families (pure view of the state; empty while off).
    pub fn families(&self, pipeline: &str) -> Families {
        let mut f = Families::new();
        let i = lock(&self.inner);
        let Some(state) = i.state else { return f };
        if state == WriterState::Disabled {
            return f;
        }
        let p = [("pipeline", pipeline)];
        f.counter(
            "gravity_canary_sent_total",
            "Canary rows written into gravity's source.",
            &p,
            self.sent.load(Ordering::Relaxed) as f64,
        );
        f.counter(
            "gravity_canary_arrived_total",
            "Canary rows seen at gravity's target.",
            &p,
            self.arrived.load(Ordering::Relaxed) as f64,
        );
        f.counter(
            "gravity_canary_lost_total",
            "Canary rows not seen at gravity's target within --canary.timeout.",
            &p,
            self.lost.load(Ordering::Relaxed) as f64,
        );
        f.gauge(
            "gravity_canary_pending",
            "Canary rows written and not yet seen at the target nor counted lost.",
            &p,
            i.pending.len() as f64,
        );
        for s in WriterState::ALL {
            f.gauge(
                "gravity_canary_writer_state",
                "1 for the canary writer's current state (ok, read_only, privilege, unreachable, unsupported, missing_table, disabled), 0 for the others.",
                &[("pipeline", pipeline), ("reason", s.as_str())],
                if s == state { 1.0 } else { 0.0 },
            );
        }
        if let Some(l) = i.last_lag {
            f.gauge(
                "gravity_canary_e2e_lag_seconds",
                "Write at gravity's source → seen at gravity's target, of the last canary that arrived (the exporter's clock at both ends).",
                &p,
                l,
            );
        }
        if let Some(t) = i.last_arrival {
            f.gauge(
                "gravity_canary_last_arrival_timestamp_seconds",
                "When the last canary was seen at gravity's target (Unix time).",
                &p,
                t,
            );
        }
        f
    }
}

/// The oldest watermark's (EventTime, ProcessTime) of a `/status`.
fn oldest_watermark(seen: &StatusSeen) -> Option<(OffsetDateTime, OffsetDateTime)> {
    seen.status
        .watermarks
        .iter()
        .min_by_key(|w| w.event_time)
        .map(|w| (w.event_time, w.process_time))
}

/// Whether gravity has committed past a canary written at `written`: the watermark's
/// EventTime (whole seconds for binlog events) reached the canary's second.
pub fn committed_past(event_time: OffsetDateTime, written: OffsetDateTime) -> bool {
    event_time.unix_timestamp() >= written.unix_timestamp()
}

// ---------------------------------------------------------------------------------------
// The task
// ---------------------------------------------------------------------------------------

/// Where the canary is written: gravity's MySQL source (with the canary's login), or its
/// Mongo source (gravity's TLS settings, the canary's login in gravity's auth database).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    Mysql(Login),
    Mongo {
        endpoint: crate::probe::Endpoint,
        security: MongoSecurity,
    },
}

impl Source {
    fn address(&self) -> String {
        match self {
            Source::Mysql(l) => l.endpoint.to_string(),
            Source::Mongo { endpoint, .. } => endpoint.to_string(),
        }
    }
}

/// Where the canary goes, from gravity's config.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    source: Source,
    arrival: Arrival,
    internal_db: String,
}

/// Where the canary is looked for: gravity's MySQL target table, or the Kafka topic of
/// gravity's `async-kafka` route for the canary table.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Arrival {
    Mysql {
        target: Login,
        schema: String,
        table: String,
    },
    Kafka {
        brokers: Vec<crate::probe::Endpoint>,
        security: crate::probe::kafka::KafkaSecurity,
        topic: String,
    },
}

impl Arrival {
    /// The target schema (a MySQL target).
    fn schema(&self) -> Option<&str> {
        match self {
            Arrival::Mysql { schema, .. } => Some(schema),
            Arrival::Kafka { .. } => None,
        }
    }

    /// The target table (a MySQL target).
    fn table(&self) -> Option<&str> {
        match self {
            Arrival::Mysql { table, .. } => Some(table),
            Arrival::Kafka { .. } => None,
        }
    }

    /// `schema.table` at the target, or `kafka topic NAME`.
    fn describe(&self) -> String {
        match self {
            Arrival::Mysql { schema, table, .. } => format!("{schema}.{table}"),
            Arrival::Kafka { topic, .. } => format!("kafka topic {topic}"),
        }
    }
}

fn route(s: &Settings, c: &CanarySettings, cfg: &GravityConfig) -> Result<Route, String> {
    let src = cfg
        .endpoint(EndpointRole::Source)
        .filter(|e| matches!(e.protocol, Protocol::Mysql | Protocol::Mongo))
        .ok_or("gravity's config names no MySQL or Mongo source")?;
    let login = c.login.as_ref().ok_or("no canary.username")?;
    if src.protocol == Protocol::Mongo
        && cfg
            .endpoint(EndpointRole::Target)
            .is_none_or(|d| d.protocol != Protocol::Mysql)
    {
        return Err(
            "a Mongo source is followed to a MySQL target only (gravity's config names none)"
                .into(),
        );
    }
    let arrival = match cfg.endpoint(EndpointRole::Target) {
        Some(dst) if dst.protocol == Protocol::Mysql => {
            let spec = TableSpec {
                schema: c.schema.clone(),
                table: c.table.clone(),
                target: None,
            };
            let (ts, tt) = spec.target_in(&cfg.routes);
            Arrival::Mysql {
                target: super::connections::mysql_login(s, dst),
                schema: ts,
                table: tt,
            }
        }
        _ => {
            let brokers: Vec<_> = cfg
                .endpoints
                .iter()
                .filter(|e| e.role == EndpointRole::Kafka)
                .collect();
            let Some(first) = brokers.first() else {
                return Err("gravity's config names neither a MySQL target nor Kafka brokers (Mongo and Elasticsearch targets are not followed)".into());
            };
            let topic = kafka_topic(&cfg.routes, &c.schema, &c.table)?;
            Arrival::Kafka {
                brokers: brokers
                    .iter()
                    .map(|e| crate::probe::Endpoint::new(e.host.clone(), e.port))
                    .collect(),
                security: super::connections::kafka_security(first),
                topic,
            }
        }
    };
    let endpoint = crate::probe::Endpoint::new(src.host.clone(), src.port);
    let source = match src.protocol {
        Protocol::Mongo => {
            let mut security = super::connections::mongo_security(src);
            security.login = Some(MongoLogin {
                user: login.user.clone(),
                password: login.password.clone(),
                auth_source: src
                    .auth_source
                    .clone()
                    .unwrap_or_else(|| "admin".to_string()),
            });
            Source::Mongo { endpoint, security }
        }
        _ => Source::Mysql(Login {
            endpoint,
            user: login.user.clone(),
            password: login.password.clone(),
        }),
    };
    Ok(Route {
        source,
        arrival,
        internal_db: cfg.internal_db_name.clone(),
    })
}

/// The topic gravity's `async-kafka` output sends `schema.table` to: the `dml-topic` of
/// the first route that matches it (gravity's `AsyncKafka.Execute`); without a matching
/// route gravity drops the table's events, without a `dml-topic` it cannot send them.
pub fn kafka_topic(
    routes: &[crate::gravity_config::Route],
    schema: &str,
    table: &str,
) -> Result<String, String> {
    match routes.iter().find(|r| r.matches(schema, table)) {
        None => Err(format!("no route of gravity's Kafka output matches {schema}.{table}: gravity drops its events (add [[output.config.routes]] match-schema = \"{schema}\", match-table = \"{table}\", dml-topic = \"...\")")),
        Some(r) => r.dml_topic.clone().filter(|t| !t.is_empty()).ok_or_else(|| format!("the route of gravity's Kafka output for {schema}.{table} has no dml-topic")),
    }
}

/// A canary found in a Kafka message of gravity's: its sequence number and trace id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaCanary {
    /// `seq` of the row.
    pub seq: u64,
    /// `trace_id` of the row.
    pub trace_id: String,
}

/// Reads one message of gravity's Kafka output (`pkg/core/encoding`, JSON): an insert or
/// update of the canary table (`database`, `table`) whose row (`data` in schema version
/// 0.1, where every value is a string; `Data` in 2.0.alpha, typed) is the row of `key`.
/// Anything else (another table, a delete, a DDL, not JSON) is `None`.
pub fn kafka_canary(value: &[u8], schema: &str, table: &str, key: &str) -> Option<KafkaCanary> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let text = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
    if text("database")? != schema || text("table")? != table {
        return None;
    }
    if !matches!(text("type")?, "insert" | "update") {
        return None;
    }
    let data = v.get("data").or_else(|| v.get("Data"))?;
    let field = |k: &str| match data.get(k)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    if field("pipeline")? != key {
        return None;
    }
    let trace_id = field("trace_id")?;
    if trace_id.len() != 32 || !trace_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(KafkaCanary {
        seq: field("seq")?.trim().parse().ok()?,
        trace_id,
    })
}

/// Why a write did not happen: the writer state, its detail, the error of the write span,
/// and whether the sequence number must be read again (the table was dropped meanwhile).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    state: WriterState,
    detail: String,
    span_error: String,
    reread_seq: bool,
}

impl Refusal {
    fn of(state: WriterState, detail: String) -> Refusal {
        Refusal {
            state,
            span_error: detail.clone(),
            detail,
            reread_seq: false,
        }
    }
}

/// Mongo errors that mean the node takes no writes: NotWritablePrimary (10107, NotMaster
/// before 4.4), NotPrimaryNoSecondaryOk (13435), NotPrimaryOrSecondary (13436),
/// PrimarySteppedDown (189), InterruptedDueToReplStateChange (11602).
const MONGO_NOT_WRITABLE: [i32; 5] = [10107, 13435, 13436, 189, 11602];

/// The writer state a Mongo error of the canary means: `Unauthorized` (13), a failed login
/// → `privilege`; a node that takes no writes → `read_only`; the rest → `unreachable`.
pub fn classify_mongo(e: &WireError) -> WriterState {
    match e {
        WireError::Command { code, .. } if MONGO_NOT_WRITABLE.contains(code) => {
            WriterState::ReadOnly
        }
        _ => match e.reason() {
            FailureReason::Auth
            | FailureReason::Privilege
            | FailureReason::AuthPluginUnsupported => WriterState::Privilege,
            _ => WriterState::Unreachable,
        },
    }
}

/// The fields of the canary document in a Mongo source: `_id` is the pipeline's row key
/// (one document per pipeline), `pipeline` the same key again (the column the target row is
/// read by: gravity maps each top-level field of a document to the column of that name),
/// the sequence number, the trace and span id and the write time in microseconds since
/// the Unix epoch (UTC, the exporter's clock).
pub fn mongo_fields(key: &str, c: &CanaryRow) -> Vec<(&'static str, FieldValue)> {
    let micros = i64::try_from(c.written_at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX);
    vec![
        ("pipeline", FieldValue::String(key.to_string())),
        (
            "seq",
            FieldValue::Int64(i64::try_from(c.seq).unwrap_or(i64::MAX)),
        ),
        ("trace_id", FieldValue::String(c.trace_id.clone())),
        ("span_id", FieldValue::String(c.span_id.clone())),
        ("written_us", FieldValue::Int64(micros)),
    ]
}

enum WriteOutcome {
    Written,
    ReadOnly,
}

async fn write_once(conn: &mut MySqlConn, sql: String) -> Result<WriteOutcome, MySqlError> {
    let rs = conn.query("SELECT @@GLOBAL.read_only AS ro").await?;
    if rs.value(0, "ro").is_some_and(is_read_only) {
        return Ok(WriteOutcome::ReadOnly);
    }
    conn.query(&sql).await?;
    Ok(WriteOutcome::Written)
}

/// What the last look at the target found.
enum Seen {
    /// MySQL: the sequence number of the canary row at the target (a later update carries
    /// the earlier ones with it: gravity applies them in order).
    UpTo(Option<u64>),
    /// Kafka: the trace ids of the canary messages read from the topic (every canary is its
    /// own message).
    Traces(std::collections::HashSet<String>),
}

impl Seen {
    fn has(&self, row: &CanaryRow) -> bool {
        match self {
            Seen::UpTo(s) => s.is_some_and(|s| s >= row.seq),
            Seen::Traces(t) => t.contains(&row.trace_id),
        }
    }
}

/// The background task (idle while `--canary.interval` is off).
pub struct Canary {
    ctx: Arc<Context>,
    /// The reader of the canary's Kafka topic (Kafka target only).
    kafka: tokio::sync::Mutex<Option<TopicReader>>,
}

impl Canary {
    /// A canary for this context (its lags go to the state's `gravity_data_lag_seconds`).
    pub fn new(ctx: Arc<Context>) -> Canary {
        Canary {
            ctx,
            kafka: tokio::sync::Mutex::new(None),
        }
    }

    fn shared(&self) -> &Shared {
        &self.ctx.canary
    }

    fn set_state(&self, state: WriterState, detail: String) {
        let mut i = lock(&self.shared().inner);
        if i.state != Some(state) {
            if state == WriterState::Ok || state == WriterState::Disabled {
                tracing::info!(state = state.as_str(), "canary writer");
            } else {
                tracing::warn!(state = state.as_str(), detail = %crate::redact::redact_known(&detail), "canary writer stopped");
            }
        }
        i.state = Some(state);
        i.detail = crate::redact::redact_known(&detail);
    }

    fn publish(&self) {
        let pipeline = self.ctx.target().pipeline.clone();
        self.ctx
            .store
            .set_snapshot(SNAPSHOT, self.shared().families(&pipeline));
    }

    fn set_target_error(&self, error: Option<String>) {
        let text = error
            .map(|e| crate::redact::redact_known(&e))
            .unwrap_or_default();
        let mut i = lock(&self.shared().inner);
        if i.target_error != text {
            if text.is_empty() {
                tracing::info!("canary: reading the target works again");
            } else {
                tracing::warn!(error = %text, "canary: cannot read the target");
            }
        }
        i.target_error = text;
    }

    /// The reader of the route's topic (a new one when the route changed).
    fn reader<'a>(slot: &'a mut Option<TopicReader>, r: &Route) -> Option<&'a mut TopicReader> {
        let Arrival::Kafka {
            brokers,
            security,
            topic,
        } = &r.arrival
        else {
            return None;
        };
        if !slot
            .as_ref()
            .is_some_and(|k| k.same(brokers, security, topic))
        {
            *slot = Some(TopicReader::new(
                brokers.clone(),
                security.clone(),
                topic.clone(),
            ));
        }
        slot.as_mut()
    }

    /// Kafka target, before a write: the end of each partition of the topic becomes where
    /// the reader starts (all partitions while nothing is pending; otherwise it goes on
    /// from where it is, so that no pending canary is skipped).
    async fn mark_topic(&self, r: &Route, timeout: Duration) {
        let mut slot = self.kafka.lock().await;
        let Some(reader) = Self::reader(&mut slot, r) else {
            return;
        };
        let idle = lock(&self.shared().inner).pending.is_empty();
        match reader.mark_end(idle, timeout).await {
            Ok(()) => self.set_target_error(None),
            Err(e) => self.set_target_error(Some(format!("kafka topic {}: {e}", reader.topic()))),
        }
    }

    /// Kafka target: one bounded poll of the topic; the trace ids of the canaries of this
    /// pipeline found in gravity's messages.
    async fn read_topic(
        &self,
        c: &CanarySettings,
        r: &Route,
        key: &str,
        timeout: Duration,
    ) -> std::collections::HashSet<String> {
        let mut found = std::collections::HashSet::new();
        let mut slot = self.kafka.lock().await;
        let Some(reader) = Self::reader(&mut slot, r) else {
            return found;
        };
        let got = reader
            .poll(timeout, &mut |rec| {
                if let Some(k) = rec
                    .value
                    .as_deref()
                    .and_then(|v| kafka_canary(v, &c.schema, &c.table, key))
                {
                    if found.len() < MAX_PENDING {
                        found.insert(k.trace_id);
                    }
                }
            })
            .await;
        match got {
            Ok(stats) => {
                if let Some(skip) = stats.last_skip {
                    tracing::warn!(skipped = stats.skipped, reason = %skip, topic = %reader.topic(), "canary: batches of the topic skipped");
                }
                self.set_target_error(None);
            }
            Err(e) => self.set_target_error(Some(format!("kafka topic {}: {e}", reader.topic()))),
        }
        found
    }

    /// The sequence number of the first write: the one already in the source's row (or
    /// document) plus one, creating the MySQL table when missing and allowed. `None`: the
    /// writer state is set and nothing is written this interval.
    async fn first_seq(
        &self,
        c: &CanarySettings,
        r: &Route,
        key: &str,
        timeout: Duration,
    ) -> Option<u64> {
        let login = match &r.source {
            Source::Mysql(login) => login,
            Source::Mongo { endpoint, security } => {
                // A Mongo collection is created by the first upsert: nothing to create.
                let (db, coll, id) = (c.schema.clone(), c.table.clone(), key.to_string());
                let got = mongo::check_then(endpoint, security, timeout, |_, s| {
                    Box::pin(async move { mongo::find_i64_by_id(s, &db, &coll, &id, "seq").await })
                })
                .await;
                return match got {
                    Ok((_, seq)) => Some(
                        seq.and_then(|v| u64::try_from(v).ok())
                            .unwrap_or(0)
                            .saturating_add(1),
                    ),
                    Err(e) => {
                        self.set_state(classify_mongo(&e), e.to_string());
                        None
                    }
                };
            }
        };
        let conn = self.ctx.mysql.get(login.clone());
        let sql = read_sql(&c.schema, &c.table, key);
        let got = conn
            .with(timeout, RETRY_AFTER, |cn| {
                let sql = sql.clone();
                Box::pin(async move { cn.query(&sql).await })
            })
            .await;
        match got {
            Ok(rs) => Some(parse_seq(&rs).unwrap_or(0).saturating_add(1)),
            Err(e) if classify(&e) == WriterState::MissingTable => {
                if !c.create {
                    self.set_state(WriterState::MissingTable, e.to_string());
                    return None;
                }
                let stmts = [
                    create_schema_sql(&c.schema),
                    create_table_sql(&c.schema, &c.table),
                ];
                let made = conn
                    .with(timeout, RETRY_AFTER, |cn| {
                        let stmts = stmts.clone();
                        Box::pin(async move {
                            for s in &stmts {
                                cn.query(s).await?;
                            }
                            Ok(())
                        })
                    })
                    .await;
                if let Err(e) = made {
                    self.set_state(classify(&e), format!("creating the canary table: {e}"));
                    return None;
                }
                tracing::info!(schema = %c.schema, table = %c.table, "canary table created");
                Some(1)
            }
            Err(e) => {
                self.set_state(classify(&e), e.to_string());
                None
            }
        }
    }

    /// The write itself: the MySQL upsert after checking `@@GLOBAL.read_only`, or the Mongo
    /// upsert by `_id` after checking that `hello` names a writable primary.
    async fn write_row(
        &self,
        c: &CanarySettings,
        r: &Route,
        key: &str,
        row: &CanaryRow,
        timeout: Duration,
    ) -> Result<(), Refusal> {
        match &r.source {
            Source::Mysql(login) => {
                let conn = self.ctx.mysql.get(login.clone());
                let sql = write_sql(&c.schema, &c.table, key, row);
                match conn
                    .with(timeout, RETRY_AFTER, |cn| {
                        Box::pin(write_once(cn, sql.clone()))
                    })
                    .await
                {
                    Ok(WriteOutcome::Written) => Ok(()),
                    Ok(WriteOutcome::ReadOnly) => Err(Refusal {
                        state: WriterState::ReadOnly,
                        detail: "@@GLOBAL.read_only is on".into(),
                        span_error: "read_only".into(),
                        reread_seq: false,
                    }),
                    Err(e) => Err(Refusal {
                        reread_seq: classify(&e) == WriterState::MissingTable,
                        ..Refusal::of(classify(&e), e.to_string())
                    }),
                }
            }
            Source::Mongo { endpoint, security } => {
                let (db, coll, id) = (c.schema.clone(), c.table.clone(), key.to_string());
                let fields = mongo_fields(key, row);
                let res = mongo::check_then(endpoint, security, timeout, |hello, s| {
                    Box::pin(async move {
                        if !hello.is_writable_primary {
                            return Ok(false);
                        }
                        mongo::upsert_by_id(s, &db, &coll, &id, &fields).await?;
                        Ok(true)
                    })
                })
                .await;
                match res {
                    Ok((_, true)) => Ok(()),
                    Ok((report, false)) => Err(Refusal {
                        state: WriterState::ReadOnly,
                        detail: format!(
                            "the Mongo source is not a writable primary ({})",
                            if report.hello.secondary {
                                "a secondary"
                            } else {
                                "hello: not writable"
                            }
                        ),
                        span_error: "read_only".into(),
                        reread_seq: false,
                    }),
                    Err(e) => Err(Refusal::of(classify_mongo(&e), e.to_string())),
                }
            }
        }
    }

    /// Writes one canary (when the source lets it); true when written.
    async fn write(&self, c: &CanarySettings, r: &Route, timeout: Duration) -> bool {
        let key = row_key(&self.ctx.target().pipeline);
        if c.schema.eq_ignore_ascii_case(&r.internal_db) {
            self.set_state(
                WriterState::Unsupported,
                format!("canary schema {} is gravity's internal database", c.schema),
            );
            return false;
        }
        let next = lock(&self.shared().inner).next_seq;
        let seq = match next {
            Some(s) => s,
            None => match self.first_seq(c, r, &key, timeout).await {
                Some(s) => s,
                None => return false,
            },
        };
        // Kafka: where the topic ends now; the canary's message comes after it.
        self.mark_topic(r, timeout).await;
        let pipeline = self.ctx.target().pipeline.clone();
        let tracer = opentelemetry::global::tracer(TRACER);
        let start = SystemTime::now();
        let written_at = OffsetDateTime::from(start);
        let (cx, trace_id, span_id) = start_trace(
            &tracer,
            start,
            vec![
                KeyValue::new("gravity.pipeline", pipeline.clone()),
                KeyValue::new("canary.seq", i64::try_from(seq).unwrap_or(i64::MAX)),
                KeyValue::new("canary.table", format!("{}.{}", c.schema, c.table)),
                KeyValue::new("canary.target", r.arrival.describe()),
            ],
        );
        let row = CanaryRow {
            seq,
            trace_id: trace_id.clone(),
            span_id,
            written_at,
        };
        let res = self.write_row(c, r, &key, &row, timeout).await;
        let end = SystemTime::now();
        let attrs = vec![
            KeyValue::new(
                "db.system.name",
                match r.source {
                    Source::Mysql(_) => "mysql",
                    Source::Mongo { .. } => "mongodb",
                },
            ),
            KeyValue::new("db.namespace", c.schema.clone()),
            KeyValue::new("db.collection.name", c.table.clone()),
            KeyValue::new("server.address", r.source.address()),
        ];
        match res {
            Ok(()) => {
                write_span(&tracer, &cx, start, end, attrs, None);
                let cx_note = cx.clone();
                self.shared().sent.fetch_add(1, Ordering::Relaxed);
                let mut i = lock(&self.shared().inner);
                i.next_seq = Some(seq.saturating_add(1));
                if i.pending.len() >= MAX_PENDING {
                    if let Some(old) = i.pending.pop_front() {
                        self.shared().lost.fetch_add(1, Ordering::Relaxed);
                        lost_trace(&old.cx, end, c.timeout);
                    }
                }
                i.pending.push_back(Pending {
                    row,
                    written: Instant::now(),
                    written_wall: end,
                    process_time: None,
                    cx,
                });
                drop(i);
                note(
                    &self.ctx,
                    &cx_note,
                    crate::log::record::Level::Debug,
                    &format!("canary written: seq {seq}"),
                    crate::log::entry::OwnFields {
                        schema: Some(c.schema.clone()),
                        table: Some(c.table.clone()),
                        operation: Some("write".into()),
                        duration_ms: end
                            .duration_since(start)
                            .ok()
                            .map(|d| d.as_secs_f64() * 1000.0),
                    },
                );
                self.set_state(WriterState::Ok, String::new());
                true
            }
            Err(refusal) => {
                write_span(&tracer, &cx, start, end, attrs, Some(refusal.span_error));
                lost_trace(&cx, end, Duration::ZERO);
                if refusal.reread_seq {
                    // Dropped meanwhile: look again (and create) at the next interval.
                    lock(&self.shared().inner).next_seq = None;
                }
                self.set_state(refusal.state, refusal.detail);
                false
            }
        }
    }

    /// Follows the pending canaries: watermarks, the target row, the timeout.
    async fn follow(&self, c: &CanarySettings, r: &Route, timeout: Duration) {
        if lock(&self.shared().inner).pending.is_empty() {
            return;
        }
        if let Some(seen) = self.ctx.last_status() {
            if let Some((event, process)) = oldest_watermark(&seen) {
                let mut i = lock(&self.shared().inner);
                for p in i.pending.iter_mut().filter(|p| p.process_time.is_none()) {
                    if committed_past(event, p.row.written_at) {
                        p.process_time = Some(process.into());
                    }
                }
            }
        }
        let key = row_key(&self.ctx.target().pipeline);
        let seen = match &r.arrival {
            Arrival::Mysql {
                target,
                schema,
                table,
            } => {
                let sql = read_sql(schema, table, &key);
                let conn = self.ctx.mysql.get(target.clone());
                let got = conn
                    .with(timeout, RETRY_AFTER, |cn| {
                        let sql = sql.clone();
                        Box::pin(async move { cn.query(&sql).await })
                    })
                    .await;
                match got {
                    Ok(rs) => {
                        self.set_target_error(None);
                        Seen::UpTo(parse_seq(&rs))
                    }
                    Err(e) => {
                        self.set_target_error(Some(format!("{schema}.{table}: {e}")));
                        Seen::UpTo(None)
                    }
                }
            }
            Arrival::Kafka { .. } => Seen::Traces(self.read_topic(c, r, &key, timeout).await),
        };
        let now = SystemTime::now();
        let tracer = opentelemetry::global::tracer(TRACER);
        let pipeline = self.ctx.target().pipeline.clone();
        let mut done = Vec::new();
        {
            let mut i = lock(&self.shared().inner);
            let mut keep = VecDeque::with_capacity(i.pending.len());
            while let Some(p) = i.pending.pop_front() {
                if seen.has(&p.row) {
                    done.push((p, true));
                } else if p.written.elapsed() > c.timeout {
                    done.push((p, false));
                } else {
                    keep.push_back(p);
                }
            }
            i.pending = keep;
        }
        for (p, arrived) in done {
            let written = p.row.written_at;
            let written_sys: SystemTime = written.into();
            let wall = now
                .duration_since(written_sys)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let input = p.process_time.map(|pt| {
                pt.clamp(written_sys, now)
                    .duration_since(written_sys)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0)
            });
            let output = input.map(|i| (wall - i).max(0.0));
            if arrived {
                if let Some(w) = self.ctx.stage_window() {
                    let span = p.cx.span();
                    for kv in stage_attributes(&w) {
                        span.set_attribute(kv);
                    }
                }
                arrived_trace(&tracer, &p.cx, p.written_wall, p.process_time, now, wall);
                self.shared().arrived.fetch_add(1, Ordering::Relaxed);
                {
                    let mut i = lock(&self.shared().inner);
                    i.last_lag = Some(wall);
                    i.last_arrival = Some(unix_now());
                }
                {
                    self.ctx
                        .lag
                        .observe_table(&pipeline, &c.schema, &c.table, wall);
                }
                note(
                    &self.ctx,
                    &p.cx,
                    crate::log::record::Level::Debug,
                    &format!("canary arrived: seq {}, e2e lag {wall:.6} s", p.row.seq),
                    crate::log::entry::OwnFields {
                        schema: r.arrival.schema().map(str::to_string),
                        table: r.arrival.table().map(str::to_string),
                        operation: Some("arrival".into()),
                        duration_ms: Some(wall * 1000.0),
                    },
                );
            } else {
                lost_trace(&p.cx, now, c.timeout);
                self.shared().lost.fetch_add(1, Ordering::Relaxed);
                note(
                    &self.ctx,
                    &p.cx,
                    crate::log::record::Level::Warning,
                    &format!(
                        "canary lost: seq {} not seen at the target {} within {:?}",
                        p.row.seq,
                        r.arrival.describe(),
                        c.timeout
                    ),
                    crate::log::entry::OwnFields {
                        schema: r.arrival.schema().map(str::to_string),
                        table: r.arrival.table().map(str::to_string),
                        operation: Some("lost".into()),
                        duration_ms: None,
                    },
                );
            }
            self.shared().remember(Finished {
                seq: p.row.seq,
                trace_id: p.row.trace_id.clone(),
                written_at: written.unix_timestamp_nanos() as f64 / 1e9,
                lag: arrived.then_some(wall),
                input: if arrived { input } else { None },
                output: if arrived { output } else { None },
            });
        }
    }

    /// Runs until the process ends; idle while the canary is off. Each interval is a cycle
    /// of task `canary`.
    pub async fn run(self) {
        let tasks = self.ctx.store.tasks().clone();
        let mut next_write = Instant::now();
        loop {
            let s = self.ctx.settings();
            let c = s.canary.clone();
            // subscribed before the target is read: a change from here on ends a wait below
            let mut target_seq = self.ctx.target_seq.subscribe();
            let mut settings = self.ctx.settings.clone();
            settings.mark_unchanged();
            let Some(interval) = c.interval else {
                self.set_state(WriterState::Disabled, String::new());
                self.ctx.store.set_snapshot(SNAPSHOT, Families::new());
                // Off: nothing to do until the settings change (SIGHUP); no timer.
                if self.ctx.settings().canary.interval.is_none()
                    && settings.changed().await.is_err()
                {
                    return; // the exporter is stopping
                }
                continue;
            };
            let timeout = s.probe_timeout;
            let target = self.ctx.target();
            let r = match target.config.as_ref().map(|cfg| route(&s, &c, cfg)) {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    self.set_state(WriterState::Unsupported, e);
                    self.publish();
                    wait_for_change(&mut target_seq, &mut settings).await;
                    continue;
                }
                None => {
                    self.set_state(
                        WriterState::Unsupported,
                        "gravity's config is not known yet".into(),
                    );
                    self.publish();
                    wait_for_change(&mut target_seq, &mut settings).await;
                    continue;
                }
            };
            if Instant::now() >= next_write {
                let start = Instant::now();
                let ok = self.write(&c, &r, timeout).await;
                tasks.cycle("canary", start.elapsed(), ok);
                next_write = start + interval;
            }
            self.follow(&c, &r, timeout).await;
            self.publish();
            let wait = next_write.saturating_duration_since(Instant::now());
            let pending = !lock(&self.shared().inner).pending.is_empty();
            tokio::time::sleep(if pending {
                wait.min(POLL)
            } else {
                wait.min(Duration::from_secs(1))
            })
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    #[test]
    fn mongo_refusals_and_document() {
        let cmd = |code: i32| WireError::Command {
            code,
            code_name: String::new(),
            message: String::new(),
        };
        assert_eq!(classify_mongo(&cmd(13)), WriterState::Privilege);
        assert_eq!(classify_mongo(&cmd(18)), WriterState::Privilege);
        assert_eq!(classify_mongo(&cmd(10107)), WriterState::ReadOnly);
        assert_eq!(classify_mongo(&cmd(189)), WriterState::ReadOnly);
        assert_eq!(classify_mongo(&cmd(2)), WriterState::Unreachable);
        assert_eq!(
            classify_mongo(&WireError::Timeout { after_ms: 5 }),
            WriterState::Unreachable
        );
        let row = CanaryRow {
            seq: 7,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            written_at: time::macros::datetime!(2026-12-05 10:00:01.000042 UTC),
        };
        assert_eq!(
            mongo_fields("p1", &row),
            vec![
                ("pipeline", FieldValue::String("p1".into())),
                ("seq", FieldValue::Int64(7)),
                (
                    "trace_id",
                    FieldValue::String("0af7651916cd43dd8448eb211c80319c".into())
                ),
                ("span_id", FieldValue::String("b7ad6b7169203331".into())),
                ("written_us", FieldValue::Int64(1_796_464_801_000_042)),
            ]
        );
    }

    #[test]
    fn sql_builders() {
        let row = CanaryRow {
            seq: 7,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            span_id: "b7ad6b7169203331".into(),
            written_at: time::macros::datetime!(2026-12-05 10:00:01.000042 UTC),
        };
        assert_eq!(
            write_sql("gravity_canary", "heartbeat", "p1", &row),
            "INSERT INTO `gravity_canary`.`heartbeat` (pipeline, seq, trace_id, span_id, written_at) VALUES ('p1', 7, '0af7651916cd43dd8448eb211c80319c', 'b7ad6b7169203331', '2026-12-05 10:00:01.000042') ON DUPLICATE KEY UPDATE seq = VALUES(seq), trace_id = VALUES(trace_id), span_id = VALUES(span_id), written_at = VALUES(written_at)"
        );
        assert_eq!(
            read_sql("a`b", "t", "p"),
            "SELECT seq, trace_id FROM `a``b`.`t` WHERE pipeline = 'p'"
        );
        assert!(create_table_sql("s", "t").starts_with("CREATE TABLE IF NOT EXISTS `s`.`t` ("));
        assert_eq!(create_schema_sql("s"), "CREATE DATABASE IF NOT EXISTS `s`");
        let plus8 = time::macros::datetime!(2026-12-05 18:00:01.5 +08:00);
        assert_eq!(datetime6(plus8), "2026-12-05 10:00:01.500000");
    }

    #[test]
    fn row_keys_are_safe() {
        assert_eq!(row_key("mysql2mysqlDemo"), "mysql2mysqlDemo");
        assert_eq!(row_key("a'b\\c d"), "a_b_c_d");
        assert_eq!(row_key(""), "gravity");
        assert_eq!(row_key(&"x".repeat(300)).len(), MAX_KEY);
    }

    #[test]
    fn errors_classified() {
        let server = |code: u16| MySqlError::Server {
            code,
            sql_state: "HY000".into(),
            message: "m".into(),
        };
        assert_eq!(classify(&server(1290)), WriterState::ReadOnly);
        assert_eq!(classify(&server(1142)), WriterState::Privilege);
        assert_eq!(classify(&server(1044)), WriterState::Privilege);
        assert_eq!(classify(&server(1045)), WriterState::Privilege);
        assert_eq!(classify(&server(1146)), WriterState::MissingTable);
        assert_eq!(classify(&server(1049)), WriterState::MissingTable);
        assert_eq!(
            classify(&MySqlError::Timeout { after_ms: 5 }),
            WriterState::Unreachable
        );
        assert_eq!(
            classify(&MySqlError::Io(std::io::ErrorKind::ConnectionReset)),
            WriterState::Unreachable
        );
        assert!(is_read_only("1") && is_read_only("ON") && is_read_only("NO_LOCK"));
        assert!(!is_read_only("0") && !is_read_only("OFF"));
    }

    #[test]
    fn committed_past_compares_whole_seconds() {
        let w = time::macros::datetime!(2026-12-05 10:00:01.9 UTC);
        assert!(committed_past(
            time::macros::datetime!(2026-12-05 10:00:01 UTC),
            w
        ));
        assert!(committed_past(
            time::macros::datetime!(2026-12-05 18:00:02 +08:00),
            w
        ));
        assert!(!committed_past(
            time::macros::datetime!(2026-12-05 10:00:00.999 UTC),
            w
        ));
    }

    #[test]
    fn random_ids_have_the_w3c_width() {
        let a = random_hex(16);
        let b = random_hex(16);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(random_hex(8).len(), 16);
    }

    #[test]
    fn families_at_zero_from_start_and_states_exclusive() {
        let sh = Shared::default();
        assert!(
            sh.families("p").is_empty(),
            "nothing before the first state"
        );
        lock(&sh.inner).state = Some(WriterState::Ok);
        let f = sh.families("p");
        for n in [
            "gravity_canary_sent_total",
            "gravity_canary_arrived_total",
            "gravity_canary_lost_total",
        ] {
            assert_eq!(f.value(n, &[("pipeline", "p")]), Some(0.0), "{n}");
        }
        let states = f.samples("gravity_canary_writer_state");
        assert_eq!(states.len(), WriterState::ALL.len());
        assert_eq!(states.iter().filter(|(_, v)| *v == 1.0).count(), 1);
        assert_eq!(
            f.value(
                "gravity_canary_writer_state",
                &[("pipeline", "p"), ("reason", "ok")]
            ),
            Some(1.0)
        );
        assert!(!f.has_family("gravity_canary_e2e_lag_seconds"));
        lock(&sh.inner).state = Some(WriterState::Disabled);
        assert!(sh.families("p").is_empty(), "off: no canary series");
    }

    #[test]
    fn one_trace_per_canary_with_its_stages() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let tracer = provider.tracer(TRACER);
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let ms = Duration::from_millis;
        let (cx, trace_id, span_id) =
            start_trace(&tracer, t0, vec![KeyValue::new("canary.seq", 3)]);
        write_span(&tracer, &cx, t0, t0 + ms(4), vec![], None);
        arrived_trace(
            &tracer,
            &cx,
            t0 + ms(4),
            Some(t0 + ms(300)),
            t0 + ms(900),
            0.9,
        );
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 4, "{spans:?}");
        let by = |n: &str| spans.iter().find(|s| s.name == n).unwrap();
        let root = by("gravity.canary");
        assert_eq!(format!("{}", root.span_context.trace_id()), trace_id);
        assert_eq!(format!("{}", root.span_context.span_id()), span_id);
        assert_eq!(root.start_time, t0);
        assert_eq!(root.end_time, t0 + ms(900));
        for (name, start, end) in [
            ("source.write", t0, t0 + ms(4)),
            ("gravity.input", t0 + ms(4), t0 + ms(300)),
            ("gravity.output", t0 + ms(300), t0 + ms(900)),
        ] {
            let s = by(name);
            assert_eq!(s.parent_span_id, root.span_context.span_id(), "{name}");
            assert_eq!(s.span_context.trace_id(), root.span_context.trace_id());
            assert_eq!((s.start_time, s.end_time), (start, end), "{name}");
        }
        assert!(root
            .attributes
            .iter()
            .any(|kv| kv.key.as_str() == "canary.outcome" && kv.value.as_str() == "arrived"));

        // A lost canary: the root ends with an error status.
        exporter.reset();
        let (cx, _, _) = start_trace(&tracer, t0, vec![]);
        lost_trace(&cx, t0 + Duration::from_secs(60), Duration::from_secs(60));
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        assert!(matches!(spans[0].status, OtelStatus::Error { .. }));

        // ProcessTime outside write..arrival is held inside it.
        exporter.reset();
        let (cx, _, _) = start_trace(&tracer, t0, vec![]);
        arrived_trace(&tracer, &cx, t0, Some(t0 + ms(5000)), t0 + ms(900), 0.9);
        let spans = exporter.get_finished_spans().unwrap();
        let out = spans.iter().find(|s| s.name == "gravity.output").unwrap();
        assert_eq!((out.start_time, out.end_time), (t0 + ms(900), t0 + ms(900)));
    }

    #[test]
    fn stage_window_attributes() {
        use super::super::gravity_metrics::{stage_window, StageWindow};
        let prev = [("input", 1.0, 10.0), ("output", 5.0, 10.0)];
        let cur = [("input", 1.5, 20.0), ("output", 8.0, 20.0)];
        let stages = stage_window(&prev, &cur);
        assert_eq!(stages.len(), 2);
        assert!((stages[1].mean_seconds - 0.3).abs() < 1e-9);
        // a count that went back (gravity restarted) is left out
        assert!(stage_window(&cur, &prev).is_empty());
        let w = StageWindow {
            at: Instant::now(),
            window_seconds: 5.0,
            stages,
            queues: Default::default(),
        };
        let attrs = stage_attributes(&w);
        assert!(attrs
            .iter()
            .any(|kv| kv.key.as_str() == "gravity.stage.slowest" && kv.value.as_str() == "output"));
        assert!(attrs
            .iter()
            .any(|kv| kv.key.as_str() == "gravity.stage.input.mean_seconds"));
    }

    /// A message of gravity's Kafka output for the canary row, schema version 0.1 (every
    /// value a string, keys sorted as Go's encoding/json writes a map), as
    /// `tests/fixtures/kafka/canary-0.1.json` holds it.
    const MSG_01: &str = include_str!("../../tests/fixtures/kafka/canary-0.1.json");
    /// The same in schema version 2.0.alpha (typed values, `Data`).
    const MSG_20: &str = include_str!("../../tests/fixtures/kafka/canary-2.0.alpha.json");

    #[test]
    fn gravity_kafka_messages_of_the_canary_are_recognised() {
        let want = Some(KafkaCanary {
            seq: 42,
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        });
        for m in [MSG_01, MSG_20] {
            assert_eq!(
                kafka_canary(m.as_bytes(), "gravity_canary", "heartbeat", "p1"),
                want,
                "{m}"
            );
            // another pipeline's row, another table, another schema
            assert_eq!(
                kafka_canary(m.as_bytes(), "gravity_canary", "heartbeat", "p2"),
                None
            );
            assert_eq!(
                kafka_canary(m.as_bytes(), "gravity_canary", "other", "p1"),
                None
            );
            assert_eq!(kafka_canary(m.as_bytes(), "shop", "heartbeat", "p1"), None);
        }
        let delete = MSG_01.replace("\"update\"", "\"delete\"");
        assert_eq!(
            kafka_canary(delete.as_bytes(), "gravity_canary", "heartbeat", "p1"),
            None
        );
        let bad_trace = MSG_01.replace("0af7651916cd43dd8448eb211c80319c", "nothex");
        assert_eq!(
            kafka_canary(bad_trace.as_bytes(), "gravity_canary", "heartbeat", "p1"),
            None
        );
        let ddl = r#"{"version":"0.1","database":"gravity_canary","table":"heartbeat","type":"ddl","ts":1,"time_zone":"Asia/Shanghai","host":"h","sql":"ALTER TABLE x"}"#;
        assert_eq!(
            kafka_canary(ddl.as_bytes(), "gravity_canary", "heartbeat", "p1"),
            None
        );
        for junk in [&b""[..], b"{", b"null", b"[1,2]", &[0xff, 0xfe]] {
            assert_eq!(
                kafka_canary(junk, "gravity_canary", "heartbeat", "p1"),
                None
            );
        }
    }

    #[test]
    fn the_kafka_route_of_the_canary_table() {
        let cfg = crate::gravity_config::parse(
            "[output]\ntype = \"async-kafka\"\n[output.config.kafka-global-config]\nbroker-addrs = [\"k:9092\"]\n[[output.config.routes]]\nmatch-schema = \"shop\"\nmatch-table = \"*\"\ndml-topic = \"shop\"\n[[output.config.routes]]\nmatch-schema = \"gravity_canary\"\nmatch-table = \"heart*\"\ndml-topic = \"canary\"\n[[output.config.routes]]\nmatch-schema = \"nodest\"\n",
            false,
        )
        .unwrap();
        assert_eq!(
            kafka_topic(&cfg.routes, "gravity_canary", "heartbeat").unwrap(),
            "canary"
        );
        assert_eq!(
            kafka_topic(&cfg.routes, "shop", "heartbeat").unwrap(),
            "shop"
        );
        let e = kafka_topic(&cfg.routes, "other", "heartbeat").unwrap_err();
        assert!(e.contains("no route") && e.contains("dml-topic"), "{e}");
        let e = kafka_topic(&cfg.routes, "nodest", "t").unwrap_err();
        assert!(e.contains("no dml-topic"), "{e}");
    }

    #[test]
    fn without_a_provider_the_row_still_gets_ids() {
        let tracer = opentelemetry::trace::noop::NoopTracer::new();
        let (cx, t, s) = start_trace(&tracer, SystemTime::now(), vec![]);
        assert_eq!((t.len(), s.len()), (32, 16));
        assert_ne!(t, "0".repeat(32));
        // the records made inside the canary's context carry the row's ids
        let _g = cx.attach();
        assert_eq!(crate::spans::current_ids(), Some((t, s)));
    }
}
