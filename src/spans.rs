//! The exporter's own spans through the OpenTelemetry API's global tracer provider: a no-op
//! until the OTLP export ([`crate::otlp`]) installs one. Producers record their slow
//! operations here without knowing whether OTLP is on (then it costs one atomic load).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::KeyValue;

/// The instrumentation scope of the exporter's spans, logs and metrics.
pub const SCOPE: &str = "gravity-exporter";

/// Operations longer than this (nanoseconds) become spans; `u64::MAX`: tracing off.
static SLOW_NANOS: AtomicU64 = AtomicU64::new(u64::MAX);

/// Sets `--otlp.slow-threshold` (`None`: no slow-operation spans).
pub fn set_slow_threshold(t: Option<Duration>) {
    let n = match t {
        Some(t) => u64::try_from(t.as_nanos()).unwrap_or(u64::MAX.saturating_sub(1)),
        None => u64::MAX,
    };
    SLOW_NANOS.store(n, Ordering::Relaxed);
}

/// Records an operation of the exporter that took `took` and ended now as a span, when it
/// was longer than `--otlp.slow-threshold` (and OTLP is on): name `op`, attributes
/// `outcome` (success / failure) and `duration_ms`, status error on failure.
pub fn slow_operation(op: &'static str, took: Duration, ok: bool) {
    let threshold = SLOW_NANOS.load(Ordering::Relaxed);
    if threshold == u64::MAX || took.as_nanos() < u128::from(threshold) {
        return;
    }
    let end = SystemTime::now();
    let start = end.checked_sub(took).unwrap_or(end);
    let tracer = opentelemetry::global::tracer_provider().tracer(SCOPE);
    let ms = i64::try_from(took.as_millis()).unwrap_or(i64::MAX);
    let mut span = tracer
        .span_builder(op)
        .with_start_time(start)
        .with_attributes([
            KeyValue::new("outcome", if ok { "success" } else { "failure" }),
            KeyValue::new("duration_ms", ms),
        ])
        .start(&tracer);
    span.set_status(if ok {
        Status::Ok
    } else {
        Status::error("the operation failed")
    });
    span.end_with_timestamp(end);
}

/// Trace and span id of the current span context, if one is active and valid (hex).
pub fn current_ids() -> Option<(String, String)> {
    let cx = opentelemetry::Context::current();
    let sc = cx.span().span_context().clone();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}
