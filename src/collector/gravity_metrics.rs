//! The gravity `/metrics` collector: gravity's own exposition, read with the crate's
//! text parser ([`crate::expfmt`]), turned into
//! - `gravity_throughput_rows_per_second{pipeline,schema,table,operation}` from
//!   `gravity_input_counter` (operation insert/update/delete for dml, `ddl`; gravity's own
//!   heartbeat `ctl` rows are left out), and `gravity_output_rows_per_second` from
//!   `gravity_output_counter`, over the window between two collections, correct across
//!   counter resets (a gravity restart is detected by `process_start_time_seconds`
//!   changing, or by a counter going down);
//! - `gravity_input_rows_total{pipeline,schema,table,operation}` and
//!   `gravity_output_rows_total{pipeline,schema,table}`: the same counters as ours, kept
//!   counting upward across gravity's restarts (each increase is added, a reset counts from
//!   zero), with the same cardinality cap (`_other`); a sample that is not a plausible
//!   counter value (NaN, ±Inf, negative, above 2^53) is skipped and counted in
//!   `gravity_exporter_invalid_samples_total`, so one bad value neither hangs the
//!   collector nor poisons a total;
//! - increases of `gravity_scheduler_retry_counter` into `gravity_retry_total` (see
//!   [`crate::retry`]), so retries keep counting upward across gravity restarts;
//! - a pass-through of every family, unchanged, so existing gravity dashboards keep
//!   working through the sidecar, with a series cap and a dropped-series counter;
//! - process figures from gravity's own `process_*` families when its `/proc` cannot be
//!   read (separate container, no shared pid namespace), with
//!   `gravity_process_metrics_source` saying which source is in use.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::IntCounter;

use super::{BoxFuture, CollectError, Collector, Context};
use crate::base::lock;
use crate::expfmt::{self, Exposition};
use crate::metrics::Families;

/// Largest gravity `/metrics` body read.
pub const BODY_LIMIT: usize = 32 * 1024 * 1024;
/// Most `{schema,table,operation}` throughput series; the rest are summed into `_other`.
pub const MAX_FLOW_SERIES: usize = 2000;
/// Largest increase of a counter of gravity's taken from one collection (a bigger jump,
/// e.g. to 1e300, is garbage from a broken or hostile gravity: it counts this much).
pub const MAX_COUNTER_DELTA: u64 = 1 << 32;
/// Most series kept of each family the collector reads (row counters, retry counter,
/// `process_*`); more are parsed and dropped (counted as pass-through series dropped).
pub const MAX_WANTED_SERIES: usize = 100_000;

/// Key of a row-flow series.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowKey {
    /// Schema (output: schema or topic).
    pub schema: String,
    /// Table (output: table or partition).
    pub table: String,
    /// insert/update/delete/ddl (input) or dml/ddl (output).
    pub op: String,
}

/// Counter values by key.
pub type Flows = BTreeMap<FlowKey, f64>;

/// Input row counters by schema, table and operation (heartbeat `ctl` rows excluded).
pub fn input_flows(exp: &Exposition<'_>) -> Flows {
    let mut out = Flows::new();
    let Some(f) = exp.family("gravity_input_counter") else {
        return out;
    };
    for s in &f.samples {
        let op = match (s.label("type"), s.label("subtype")) {
            (Some("dml"), Some(sub @ ("insert" | "update" | "delete"))) => sub,
            (Some("ddl"), _) => "ddl",
            _ => continue,
        };
        let key = FlowKey {
            schema: s.label("db").unwrap_or("").to_string(),
            table: s.label("table").unwrap_or("").to_string(),
            op: op.to_string(),
        };
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// Output row counters by target schema/topic, table/partition and kind (dml or ddl), summed over the engine label.
pub fn output_flows(exp: &Exposition<'_>) -> Flows {
    let mut out = Flows::new();
    let Some(f) = exp.family("gravity_output_counter") else {
        return out;
    };
    for s in &f.samples {
        let key = FlowKey {
            schema: s.label("cat0").unwrap_or("").to_string(),
            table: s.label("cat1").unwrap_or("").to_string(),
            op: s.label("cat2").unwrap_or("").to_string(),
        };
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}

/// Largest counter value taken as real: 2^53, where f64 stops counting in ones. No row
/// or retry counter gets there; a value beyond it is a broken exposition.
pub const MAX_PLAUSIBLE_COUNTER: f64 = 9_007_199_254_740_992.0;

/// Whether `v` can be a counter's value (finite, not negative, not absurdly large).
pub fn plausible(v: f64) -> bool {
    v.is_finite() && (0.0..=MAX_PLAUSIBLE_COUNTER).contains(&v)
}

/// The increase of a counter from `prev` to `cur` (O(1), total). A reset (gravity
/// restarted, or the value went down) counts from zero; no previous reading counts from
/// zero too (gravity creates a series at its first row). `None` when `cur` is not a
/// plausible counter value: the sample is skipped. An implausible `prev` counts as a reset.
pub fn delta(prev: Option<f64>, cur: f64, reset: bool) -> Option<f64> {
    if !plausible(cur) {
        return None;
    }
    match prev.filter(|p| plausible(*p)) {
        Some(p) if !reset && cur >= p => Some(cur - p),
        _ => Some(cur),
    }
}

/// Per-second rates between two readings `dt` seconds apart (see [`delta`]); series whose
/// current value is not plausible are left out.
pub fn rates(prev: &Flows, cur: &Flows, dt: f64, reset: bool) -> Vec<(FlowKey, f64)> {
    if dt <= 0.0 {
        return Vec::new();
    }
    let mut keys: Vec<&FlowKey> = cur.keys().chain(prev.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter_map(|k| {
            let c = cur.get(k).copied().unwrap_or(0.0);
            let inc = delta(prev.get(k).copied(), c, reset)?;
            Some((k.clone(), inc / dt))
        })
        .collect()
}

/// Row totals that keep counting across gravity's restarts, capped at `max` keys: a key
/// first seen when the cap is full counts into the `_other` key of its operation.
#[derive(Debug, Default, Clone)]
pub struct RowTotals {
    totals: Flows,
}

impl RowTotals {
    /// Adds `inc` to `key` (or to its `_other` bucket when `max` keys are taken).
    pub fn add(&mut self, key: &FlowKey, inc: f64, max: usize) {
        if let Some(v) = self.totals.get_mut(key) {
            *v += inc;
            return;
        }
        let named = self.totals.keys().filter(|k| k.schema != "_other").count();
        let k = if named < max {
            key.clone()
        } else {
            FlowKey {
                schema: "_other".into(),
                table: "_other".into(),
                op: key.op.clone(),
            }
        };
        *self.totals.entry(k).or_insert(0.0) += inc;
    }

    /// Adds the increases from `prev` to `cur`; returns how many samples were skipped as
    /// implausible (their previous value is kept in `cur`, so the next good one counts
    /// only what is new).
    pub fn absorb(
        &mut self,
        prev: &Flows,
        cur: &mut Flows,
        first: bool,
        reset: bool,
        max: usize,
    ) -> u64 {
        let mut skipped = 0u64;
        for (k, c) in cur.iter_mut() {
            let p = prev.get(k).copied();
            match delta(p, *c, reset) {
                // the first reading's past is not ours to count: the series starts at 0
                Some(_) if first => self.add(k, 0.0, max),
                Some(inc) => self.add(k, inc, max),
                None => {
                    skipped = skipped.saturating_add(1);
                    *c = p.unwrap_or(0.0);
                }
            }
        }
        skipped
    }

    /// The totals.
    pub fn iter(&self) -> impl Iterator<Item = (&FlowKey, f64)> {
        self.totals.iter().map(|(k, v)| (k, *v))
    }
}

/// Output flows summed over the kind (the counter has schema and table only).
pub fn without_kind(flows: &Flows) -> Flows {
    let mut out = Flows::new();
    for (k, v) in flows {
        let key = FlowKey {
            schema: k.schema.clone(),
            table: k.table.clone(),
            op: String::new(),
        };
        *out.entry(key).or_insert(0.0) += v;
    }
    out
}

/// Most `_other` series [`cap_flows`] adds (one per operation; operations past the first
/// `MAX_OTHER_OPS - 1` share the operation `_other`).
pub const MAX_OTHER_OPS: usize = 8;

/// Caps the number of distinct keys, summing the rest into `_other`.
pub fn cap_flows(rates: Vec<(FlowKey, f64)>, max: usize) -> Vec<(FlowKey, f64)> {
    if rates.len() <= max {
        return rates;
    }
    let mut out: Vec<(FlowKey, f64)> = Vec::with_capacity(max.saturating_add(1));
    let mut other: BTreeMap<String, f64> = BTreeMap::new();
    for (i, (k, v)) in rates.into_iter().enumerate() {
        if i < max {
            out.push((k, v));
        } else {
            let op = if other.len().saturating_add(1) < MAX_OTHER_OPS || other.contains_key(&k.op) {
                k.op
            } else {
                "_other".to_string()
            };
            *other.entry(op).or_insert(0.0) += v;
        }
    }
    for (op, v) in other {
        out.push((
            FlowKey {
                schema: "_other".into(),
                table: "_other".into(),
                op,
            },
            v,
        ));
    }
    out
}

/// The value of an unlabelled sample.
pub fn scalar(exp: &Exposition<'_>, name: &str) -> Option<f64> {
    exp.family(name)?.samples.first().map(|s| s.value)
}

/// Sum of a counter family's samples.
pub fn sum(exp: &Exposition<'_>, name: &str) -> Option<f64> {
    let f = exp.family(name)?;
    Some(f.samples.iter().map(|s| s.value).sum())
}

/// The pass-through text: every family as gravity sent it (HELP, TYPE and sample lines
/// unchanged), at most `cap` series. Families whose name is in `skip` are left out.
/// Returns the text, the series kept and the series dropped by the cap.
pub fn passthrough(
    exp: &Exposition<'_>,
    cap: usize,
    skip: &HashSet<&str>,
) -> (String, usize, usize) {
    let (fams, b) = passthrough_families(exp, cap, |n| skip.contains(n));
    (fams.into_iter().map(|f| f.text).collect(), b.kept, b.capped)
}

/// Longest pass-through line (bytes): a longer sample line is dropped (a longer HELP line
/// is left out), counted in `gravity_exporter_dropped_total{what="passthrough_line"}`.
pub const MAX_PASSTHROUGH_LINE_BYTES: usize = 4096;

/// What [`passthrough_families`] kept and left out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassCounts {
    /// Series kept.
    pub kept: usize,
    /// Series over the series cap.
    pub capped: usize,
    /// Series (and HELP lines) over [`MAX_PASSTHROUGH_LINE_BYTES`].
    pub long_lines: usize,
    /// Series beyond [`crate::metrics::MAX_PASSTHROUGH_BYTES`].
    pub over_bytes: usize,
    /// Families left out because `skip` named them.
    pub skipped_families: usize,
}

/// The pass-through, family by family: at most `cap` series, no line over
/// [`MAX_PASSTHROUGH_LINE_BYTES`], at most [`crate::metrics::MAX_PASSTHROUGH_BYTES`] in all;
/// families for which `skip` is true are left out.
pub fn passthrough_families(
    exp: &Exposition<'_>,
    cap: usize,
    skip: impl Fn(&str) -> bool,
) -> (Vec<crate::metrics::PassFamily>, PassCounts) {
    let mut out = Vec::new();
    let mut c = PassCounts::default();
    let mut bytes = 0usize;
    let budget = crate::metrics::MAX_PASSTHROUGH_BYTES;
    for f in &exp.families {
        if skip(f.name) {
            c.skipped_families = c.skipped_families.saturating_add(1);
            continue;
        }
        let mut text = String::new();
        let line_ok = |l: &str| l.len() <= MAX_PASSTHROUGH_LINE_BYTES;
        for l in [f.help_raw, f.type_raw].into_iter().flatten() {
            if line_ok(l) {
                text.push_str(l);
                text.push('\n');
            } else {
                c.long_lines = c.long_lines.saturating_add(1);
            }
        }
        let mut n = 0usize;
        for s in &f.samples {
            if !line_ok(s.raw) {
                c.long_lines = c.long_lines.saturating_add(1);
            } else if c.kept >= cap {
                c.capped = c.capped.saturating_add(1);
            } else if bytes
                .saturating_add(text.len())
                .saturating_add(s.raw.len())
                .saturating_add(1)
                > budget
            {
                c.over_bytes = c.over_bytes.saturating_add(1);
            } else {
                text.push_str(s.raw);
                text.push('\n');
                c.kept = c.kept.saturating_add(1);
                n = n.saturating_add(1);
            }
        }
        if n > 0 {
            bytes = bytes.saturating_add(text.len());
            out.push(crate::metrics::PassFamily {
                name: f.name.to_string(),
                text,
            });
        }
    }
    (out, c)
}

/// Process figures from gravity's own `process_*` families (the fallback when its `/proc` cannot be read).
pub fn process_fallback(exp: &Exposition<'_>, pipeline: &str) -> Families {
    let p = [("pipeline", pipeline)];
    let mut f = Families::new();
    let map: [(&str, &str, &str, bool); 6] = [
        (
            "process_cpu_seconds_total",
            "gravity_process_cpu_seconds_total",
            "User and system CPU time gravity has used, in seconds.",
            true,
        ),
        (
            "process_resident_memory_bytes",
            "gravity_process_resident_memory_bytes",
            "gravity's resident memory size in bytes.",
            false,
        ),
        (
            "process_virtual_memory_bytes",
            "gravity_process_virtual_memory_bytes",
            "gravity's virtual memory size in bytes.",
            false,
        ),
        (
            "process_open_fds",
            "gravity_process_open_fds",
            "Number of open file descriptors of gravity.",
            false,
        ),
        (
            "process_max_fds",
            "gravity_process_max_fds",
            "gravity's limit on open file descriptors (soft).",
            false,
        ),
        (
            "process_start_time_seconds",
            "gravity_process_start_time_seconds",
            "When gravity started, Unix time in seconds.",
            false,
        ),
    ];
    for (src, dst, help, counter) in map {
        if let Some(v) = scalar(exp, src) {
            if counter {
                f.counter(dst, help, &p, v);
            } else {
                f.gauge(dst, help, &p, v);
            }
        }
    }
    if let Some(v) = scalar(exp, "go_threads") {
        f.gauge(
            "gravity_process_threads",
            "Number of OS threads in gravity.",
            &p,
            v,
        );
    }
    f
}

/// gravity's per-stage latency histograms, in the order of the data path, and the stage
/// names the canary's spans and the status page use.
pub const STAGES: [(&str, &str); 5] = [
    ("gravity_input_latency", "input"),
    ("gravity_emitter_latency", "emitter"),
    ("gravity_scheduler_submit_latency", "scheduler_submit"),
    ("gravity_scheduler_ack_latency", "scheduler_ack"),
    ("gravity_output_latency", "output"),
];

/// `(stage, Σ _sum, Σ _count)` per stage.
pub type StageTotals = Vec<(&'static str, f64, f64)>;

/// `(stage, Σ _sum, Σ _count)` of each stage histogram gravity serves (summed over its
/// label sets; a family with an implausible total is left out).
pub fn stage_totals(exp: &Exposition<'_>) -> Vec<(&'static str, f64, f64)> {
    let mut out = Vec::new();
    for (family, stage) in STAGES {
        let Some(f) = exp.family(family) else {
            continue;
        };
        let (mut sum, mut count) = (0.0, 0.0);
        for s in &f.samples {
            match s.name.strip_prefix(family) {
                Some("_sum") => sum += s.value,
                Some("_count") => count += s.value,
                _ => {}
            }
        }
        if sum.is_finite() && count.is_finite() && sum >= 0.0 && plausible(count) {
            out.push((stage, sum, count));
        }
    }
    out
}

pub use crate::state::stages::{QueueLength, Queues, StageLatency, StageWindow};

/// Most queue types kept (gravity has six; the rest of an odd exposition is left out).
pub const MAX_QUEUE_KINDS: usize = 16;
/// gravity's queue gauge families, read into [`Queues`].
const QUEUE_FAMILIES: [&str; 3] = [
    "gravity_queue_length",
    "gravity_scheduler_batch_size",
    "gravity_scheduler_nr_worker",
];

fn plausible_gauge(v: f64) -> bool {
    v.is_finite() && (0.0..=1e15).contains(&v)
}

/// gravity's queue gauges of one exposition (pure): `gravity_queue_length` per `type`
/// (Σ and max over `subtype`; a type label reduced to `[a-z0-9_]`, at most 32 bytes,
/// [`MAX_QUEUE_KINDS`] types), the batch sizes' mean and max, the worker count. Values
/// that are not finite or negative are left out.
pub fn queue_lengths(exp: &Exposition<'_>) -> Queues {
    let mut q = Queues::default();
    if let Some(f) = exp.family("gravity_queue_length") {
        for s in &f.samples {
            if !plausible_gauge(s.value) {
                continue;
            }
            let raw = s.label("type").unwrap_or("");
            let kind: String = raw
                .chars()
                .take(32)
                .map(|c| match c {
                    'a'..='z' | '0'..='9' => c,
                    'A'..='Z' => c.to_ascii_lowercase(),
                    _ => '_',
                })
                .collect();
            let kind = if kind.is_empty() {
                "unknown".into()
            } else {
                kind
            };
            let room = q.lengths.len() < MAX_QUEUE_KINDS;
            match q.lengths.iter_mut().find(|l| l.kind == kind) {
                Some(l) => {
                    l.total += s.value;
                    l.max = l.max.max(s.value);
                    l.queues = l.queues.saturating_add(1);
                }
                None if room => q.lengths.push(QueueLength {
                    kind,
                    total: s.value,
                    max: s.value,
                    queues: 1,
                }),
                None => {}
            }
        }
    }
    if let Some(f) = exp.family("gravity_scheduler_batch_size") {
        let v: Vec<f64> = f
            .samples
            .iter()
            .map(|s| s.value)
            .filter(|v| plausible_gauge(*v))
            .collect();
        if !v.is_empty() {
            q.batch_size_mean = Some(v.iter().sum::<f64>() / v.len() as f64);
            q.batch_size_max = v.iter().copied().reduce(f64::max);
        }
    }
    q.workers = exp
        .family("gravity_scheduler_nr_worker")
        .and_then(|f| f.samples.first())
        .map(|s| s.value)
        .filter(|v| plausible_gauge(*v));
    q
}

/// The stages' mean latencies between two readings of [`stage_totals`] (pure); a stage
/// whose count went back (gravity restarted) or did not move is left out.
pub fn stage_window(
    prev: &[(&'static str, f64, f64)],
    cur: &[(&'static str, f64, f64)],
) -> Vec<StageLatency> {
    cur.iter()
        .filter_map(|(stage, sum, count)| {
            let (_, psum, pcount) = prev.iter().find(|(s, _, _)| s == stage)?;
            let (ds, dc) = (sum - psum, count - pcount);
            (dc >= 1.0 && ds >= 0.0).then(|| StageLatency {
                stage,
                mean_seconds: ds / dc,
                events: dc,
            })
        })
        .collect()
}

#[derive(Debug, Default)]
struct Prev {
    at: Option<Instant>,
    input: Flows,
    output: Flows,
    retry: Option<f64>,
    start_time: Option<f64>,
    /// Restarts seen through process_start_time_seconds changing.
    restarts: u64,
    /// Output counters summed over the kind, as last absorbed.
    output_rows: Flows,
    input_totals: RowTotals,
    output_totals: RowTotals,
}

/// The collector.
pub struct GravityMetricsCollector {
    prev: Mutex<Prev>,
    /// The last stage totals and when they were read.
    stage_prev: Mutex<Option<(Instant, StageTotals)>>,
    dropped: IntCounter,
    invalid: IntCounter,
}

impl GravityMetricsCollector {
    /// Registers the dropped-series counter.
    pub fn new(store: &crate::metrics::Store) -> GravityMetricsCollector {
        let dropped = IntCounter::new(
            "gravity_exporter_passthrough_dropped_series_total",
            "Series of gravity's /metrics not passed through because of the series cap.",
        )
        .expect("metric names in this crate are valid");
        let _ = store.registry().register(Box::new(dropped.clone()));
        let invalid = IntCounter::new(
            "gravity_exporter_invalid_samples_total",
            "Samples of gravity's row and retry counters skipped because their value cannot be a counter's (NaN, Inf, negative, above 2^53).",
        )
        .expect("metric names in this crate are valid");
        let _ = store.registry().register(Box::new(invalid.clone()));
        GravityMetricsCollector {
            prev: Mutex::new(Prev::default()),
            stage_prev: Mutex::new(None),
            dropped,
            invalid,
        }
    }

    /// Turns one exposition into families, updating rates and retry state (pure but for that state).
    pub fn process(
        &self,
        exp: &Exposition<'_>,
        now: Instant,
        pipeline: &str,
        retries: &crate::retry::RetryLedger,
    ) -> Families {
        self.process_with_rates(exp, now, pipeline, retries).0
    }

    /// [`GravityMetricsCollector::process`], with the total input and output rows per second
    /// of the window (the typed state the status page reads; `None` before a second
    /// reading or without flows).
    pub fn process_with_rates(
        &self,
        exp: &Exposition<'_>,
        now: Instant,
        pipeline: &str,
        retries: &crate::retry::RetryLedger,
    ) -> (Families, crate::state::RowRates) {
        let mut f = Families::new();
        let mut rows = crate::state::RowRates::default();
        let mut input = input_flows(exp);
        let output = output_flows(exp);
        // A counter that is not a plausible number (NaN, ±Inf, 1e300 from a broken gravity) is
        // skipped and counted by `delta` below; the last good reading stays the base.
        let retry = sum(exp, "gravity_scheduler_retry_counter");
        let start_time = scalar(exp, "process_start_time_seconds");
        let mut prev = lock(&self.prev);
        let restarted = match (prev.start_time, start_time) {
            (Some(a), Some(b)) => (a - b).abs() > 0.5,
            _ => false,
        };
        if let Some(at) = prev.at {
            let dt = now.saturating_duration_since(at).as_secs_f64();
            let flows_in = cap_flows(rates(&prev.input, &input, dt, restarted), MAX_FLOW_SERIES);
            let flows_out = cap_flows(rates(&prev.output, &output, dt, restarted), MAX_FLOW_SERIES);
            let total = |flows: &[(FlowKey, f64)]| {
                (!flows.is_empty()).then(|| flows.iter().map(|(_, v)| v).sum::<f64>())
            };
            rows.rows_in = total(&flows_in);
            rows.rows_out = total(&flows_out);
            for (k, v) in flows_in {
                f.gauge(
                    "gravity_throughput_rows_per_second",
                    "Rows per second gravity's input received over the last collection window (gravity_input_counter), by operation.",
                    &[("pipeline", pipeline), ("schema", &k.schema), ("table", &k.table), ("operation", &k.op)],
                    v,
                );
            }
            for (k, v) in flows_out {
                f.gauge(
                    "gravity_output_rows_per_second",
                    "Rows per second gravity's output sent over the last collection window (gravity_output_counter), by target schema/topic, table/partition and kind.",
                    &[("pipeline", pipeline), ("schema", &k.schema), ("table", &k.table), ("kind", &k.op)],
                    v,
                );
            }
        }
        let first = prev.at.is_none();
        let mut skipped = 0u64;
        let mut retry = retry;
        if let Some(r) = retry {
            match delta(prev.retry, r, restarted) {
                // first reading: its past is not ours to count
                Some(_) if prev.retry.is_none() => {}
                // whole retries only; bounded by the plausibility cap
                Some(inc) if inc >= 1.0 => {
                    // bounded: a jump counts at most MAX_COUNTER_DELTA, in one step
                    let n = if inc >= MAX_COUNTER_DELTA as f64 {
                        MAX_COUNTER_DELTA
                    } else {
                        inc as u64
                    };
                    retries.scheduler_increase(pipeline, n)
                }
                Some(_) => {}
                None => {
                    skipped = skipped.saturating_add(1);
                    retry = None;
                }
            }
        }
        let st = &mut *prev;
        skipped = skipped.saturating_add(st.input_totals.absorb(
            &st.input,
            &mut input,
            first,
            restarted,
            MAX_FLOW_SERIES,
        ));
        let mut out_cur = without_kind(&output);
        skipped = skipped.saturating_add(st.output_totals.absorb(
            &st.output_rows,
            &mut out_cur,
            first,
            restarted,
            MAX_FLOW_SERIES,
        ));
        self.invalid.inc_by(skipped);
        for (k, v) in st.input_totals.iter() {
            f.counter(
                "gravity_input_rows_total",
                "Rows gravity's input received (gravity_input_counter, heartbeat rows excluded), by operation; keeps counting across gravity restarts.",
                &[("pipeline", pipeline), ("schema", &k.schema), ("table", &k.table), ("operation", &k.op)],
                v,
            );
        }
        for (k, v) in st.output_totals.iter() {
            f.counter(
                "gravity_output_rows_total",
                "Rows gravity's output sent (gravity_output_counter), by target schema/topic and table/partition; keeps counting across gravity restarts.",
                &[("pipeline", pipeline), ("schema", &k.schema), ("table", &k.table)],
                v,
            );
        }
        let input_totals = std::mem::take(&mut st.input_totals);
        let output_totals = std::mem::take(&mut st.output_totals);
        *prev = Prev {
            at: Some(now),
            input,
            output,
            retry: retry.or(prev.retry),
            start_time: start_time.or(prev.start_time),
            restarts: prev.restarts.saturating_add(u64::from(restarted)),
            output_rows: out_cur,
            input_totals,
            output_totals,
        };
        (f, rows)
    }
}

impl Collector for GravityMetricsCollector {
    fn name(&self) -> &'static str {
        "gravity_metrics"
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let target = ctx.target();
            let settings = ctx.settings();
            if !ctx.up.process_alive() && target.process.is_some() {
                ctx.store.set_passthrough(String::new());
                return Err(CollectError::Unavailable(
                    "gravity process not running".into(),
                ));
            }
            // The answer is sieved as it arrives (never held whole): only what the parse
            // below keeps, bounded in bytes, on the parse thread.
            let sieve =
                expfmt::Sieve::new(keep(&settings), MAX_PASSTHROUGH_LINE_BYTES, SIEVE_BUDGET);
            let (status, sieve, _) =
                super::feed(&ctx, "/metrics", BODY_LIMIT, sieve, expfmt::Sieve::push).await?;
            if !status.is_success() {
                return Err(CollectError::Invalid(format!(
                    "/metrics answered HTTP {}",
                    status.as_u16()
                )));
            }
            let me = self.clone();
            let c = Arc::clone(&ctx);
            ctx.workers
                .run(super::Worker::Parse, move || {
                    me.digest_sieved(&c, sieve.finish())
                })
                .await
                .ok_or(CollectError::Panicked)?
        })
    }
}

/// Bytes of gravity's `/metrics` kept for parsing (the rest is counted and dropped as it
/// arrives): the pass-through's byte cap plus as much again for the families read here.
pub const SIEVE_BUDGET: usize = 2 * crate::metrics::MAX_PASSTHROUGH_BYTES;

/// What of gravity's `/metrics` is parsed: the families read here in full (bounded), of the
/// rest no more than the pass-through passes on.
fn keep(settings: &crate::config::Settings) -> expfmt::Keep {
    expfmt::Keep {
        wanted: |n| {
            matches!(
                n,
                "gravity_input_counter"
                    | "gravity_output_counter"
                    | "gravity_scheduler_retry_counter"
                    | "go_threads"
            ) || n.starts_with("process_")
                || STAGES.iter().any(|(f, _)| *f == n)
                || QUEUE_FAMILIES.contains(&n)
        },
        wanted_per_family: MAX_WANTED_SERIES,
        // nothing of the rest is needed when nothing is passed through
        others: if settings.passthrough {
            settings.passthrough_max_series
        } else {
            0
        },
    }
}

impl GravityMetricsCollector {
    /// Everything after the request: parse, rates, retries, process fallback, pass-through.
    #[cfg(test)]
    fn digest(&self, ctx: &Context, body: &[u8]) -> Result<Families, CollectError> {
        let mut sieve = expfmt::Sieve::new(
            keep(&ctx.settings()),
            MAX_PASSTHROUGH_LINE_BYTES,
            SIEVE_BUDGET,
        );
        sieve.push(body);
        self.digest_sieved(ctx, sieve.finish())
    }

    /// [`Self::digest`] of what the sieve kept of the answer.
    fn digest_sieved(
        &self,
        ctx: &Context,
        sieved: expfmt::Sieved,
    ) -> Result<Families, CollectError> {
        let target = ctx.target();
        let settings = ctx.settings();
        if sieved.not_utf8 {
            return Err(CollectError::Invalid("/metrics is not UTF-8".into()));
        }
        let (exp, errors, not_kept) = expfmt::parse_lossy_capped(&sieved.text, keep(&settings));
        let not_kept = not_kept.saturating_add(sieved.not_kept);
        if exp.families.is_empty() {
            let why = errors
                .first()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "no metric families".into());
            return Err(CollectError::Invalid(format!("/metrics: {why}")));
        }
        let pipeline = target.pipeline.as_str();
        let restarts_before = lock(&self.prev).restarts;
        // gravity answered: its pipeline name is as known as it gets.
        ctx.retries.seed(pipeline);
        let now = Instant::now();
        let (mut f, rows) = self.process_with_rates(&exp, now, pipeline, &ctx.retries);
        // gravity's stage latencies over this window, typed, for the canary's traces and the
        // status page (never read back from rendered text).
        let totals = stage_totals(&exp);
        let queues = queue_lengths(&exp);
        // the diagnosis' window of readings (collector::diagnosis)
        ctx.diag_window.push(ctx, &exp, now);
        {
            let mut sp = lock(&self.stage_prev);
            let (window_seconds, stages) = match sp.as_ref() {
                Some((at, prev)) => (
                    now.saturating_duration_since(*at).as_secs_f64(),
                    stage_window(prev, &totals),
                ),
                None => (0.0, Vec::new()),
            };
            if !stages.is_empty() || !queues.is_empty() {
                ctx.set_stage_window(StageWindow {
                    at: now,
                    window_seconds,
                    stages,
                    queues,
                });
            }
            *sp = Some((now, totals));
        }
        match (rows.rows_in, rows.rows_out) {
            (None, None) => {}
            (i, o) => ctx
                .recent
                .record_throughput(i.unwrap_or(0.0), o.unwrap_or(0.0)),
        }
        ctx.state.rows.set(Some(rows));
        // Remote mode: gravity's /proc was never visible. A moment without a process after
        // an exit (the watcher has not found the new one yet) is not: the watcher counts
        // that restart, and counting it here from the new start time too would count it twice.
        let remote = target.process.is_none() && !ctx.up.procfs_seen();
        if remote {
            f.extend(process_fallback(&exp, pipeline));
            // Without /proc, a restart shows as a new process_start_time_seconds.
            if lock(&self.prev).restarts > restarts_before {
                ctx.up.count_restart();
                ctx.publish_up();
            }
        }
        for (source, on) in [("procfs", !remote), ("gravity_metrics", remote)] {
            f.gauge(
                "gravity_process_metrics_source",
                "1 for where process figures come from: procfs (gravity's /proc) or gravity_metrics (gravity's own process_* families, when its /proc cannot be read).",
                &[("pipeline", pipeline), ("source", source)],
                if on { 1.0 } else { 0.0 },
            );
        }
        if settings.passthrough {
            // A family named like one of the exporter's own would be served twice (an
            // invalid exposition): left out and counted.
            let own = ctx.store.own_names();
            let mine =
                |n: &str| own.contains(n) || n.starts_with("gravity_exporter_") || f.has_family(n);
            let (fams, c) = passthrough_families(&exp, settings.passthrough_max_series, mine);
            ctx.store.set_passthrough_families(fams);
            self.dropped
                .inc_by((c.capped as u64).saturating_add(not_kept as u64));
            use crate::bounds::{count_dropped, Dropped};
            count_dropped(
                Dropped::PassthroughLine,
                (c.long_lines as u64).saturating_add(sieved.long_lines as u64),
            );
            count_dropped(
                Dropped::PassthroughBytes,
                (c.over_bytes as u64).saturating_add(sieved.over_bytes as u64),
            );
            count_dropped(
                Dropped::PassthroughFamilyCollision,
                c.skipped_families as u64,
            );
            f.gauge(
                "gravity_exporter_passthrough_series",
                "Series of gravity's /metrics passed through on the last collection.",
                &[],
                c.kept as f64,
            );
        } else {
            ctx.store.set_passthrough(String::new());
        }
        if !errors.is_empty() {
            f.gauge(
                "gravity_exporter_passthrough_parse_errors",
                "Lines of gravity's /metrics that could not be parsed on the last collection.",
                &[],
                errors.len() as f64,
            );
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn answer(start: f64) -> String {
        format!("# TYPE gravity_scheduler_retry_counter counter\ngravity_scheduler_retry_counter{{pipeline=\"p\"}} 1\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}\n")
    }

    fn remote_ctx() -> Arc<Context> {
        let settings =
            crate::config::Settings::from_flags(crate::config::Flags::default()).unwrap();
        let t = crate::discovery::Target::from_settings(&settings);
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings));
        let ctx = Context::new(rx, Arc::new(crate::metrics::Store::new()));
        ctx.set_target(t);
        ctx
    }

    #[test]
    fn a_new_start_time_is_a_restart_only_in_remote_mode() {
        // remote: gravity's /proc never seen, the start time is all there is
        let ctx = remote_ctx();
        let c = GravityMetricsCollector::new(&ctx.store);
        c.digest(&ctx, answer(100.0).as_bytes()).unwrap();
        c.digest(&ctx, answer(200.0).as_bytes()).unwrap();
        assert_eq!(ctx.up.restarts(), 1);

        // gravity was seen through /proc and has just exited; the new incarnation answers
        // before the watcher found it: the watcher counts that restart, not this collector
        let ctx = remote_ctx();
        let c = GravityMetricsCollector::new(&ctx.store);
        ctx.up.set_process(true, true);
        c.digest(&ctx, answer(100.0).as_bytes()).unwrap();
        ctx.up.set_process(false, false);
        c.digest(&ctx, answer(200.0).as_bytes()).unwrap();
        assert_eq!(ctx.up.restarts(), 0, "counted twice");
    }

    const M: &str = include_str!("../../tests/fixtures/metrics.prom");
    const M40: &str = include_str!("../../tests/fixtures/metrics-40-tables.prom");

    fn fk(s: &str, t: &str, op: &str) -> FlowKey {
        FlowKey {
            schema: s.into(),
            table: t.into(),
            op: op.into(),
        }
    }

    #[test]
    fn queue_lengths_from_the_reference_exposition() {
        let exp = expfmt::parse(M).unwrap();
        let q = queue_lengths(&exp);
        let kinds: Vec<&str> = q.lengths.iter().map(|l| l.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "input_buffer",
                "worker",
                "sliding_window_ready_chan",
                "sliding_window_ready_heap",
                "sliding_window_waiting_chan",
                "table_buffer",
                "table_latch",
                "table_latch_ack",
                "table_queue"
            ]
        );
        let get = |k: &str| q.lengths.iter().find(|l| l.kind == k).unwrap();
        // the reference metrics.prom: table-buffer 7 + 7 + 7, table-latch 1024 + 7 + 0
        assert_eq!(
            (get("table_buffer").total, get("table_buffer").max),
            (21.0, 7.0)
        );
        assert_eq!(
            (get("table_latch").total, get("table_latch").max),
            (1031.0, 1024.0)
        );
        assert_eq!(get("table_latch").queues, 3);
        assert_eq!((get("worker").total, get("worker").queues), (3.0, 3));
        assert_eq!(get("input_buffer").total, 0.0);
        assert_eq!(q.batch_size_mean, Some(7.0));
        assert_eq!(q.batch_size_max, Some(10.0));
        assert_eq!(q.workers, Some(20.0));
        // bounded and sanitised: odd types, NaN and negative values
        let odd = "# TYPE gravity_queue_length gauge\ngravity_queue_length{type=\"A b\"} 2\ngravity_queue_length{type=\"x\"} NaN\ngravity_queue_length{type=\"y\"} -1\n";
        let q = queue_lengths(&expfmt::parse(odd).unwrap());
        assert_eq!(q.lengths.len(), 1);
        assert_eq!(q.lengths[0].kind, "a_b");
        let many: String = (0..40)
            .map(|i| format!("gravity_queue_length{{type=\"t{i}\"}} 1\n"))
            .collect();
        let q = queue_lengths(&expfmt::parse(&many).unwrap());
        assert_eq!(q.lengths.len(), MAX_QUEUE_KINDS);
        assert!(queue_lengths(&expfmt::parse("up 1\n").unwrap()).is_empty());
    }

    #[test]
    fn flows_from_fixture() {
        let exp = expfmt::parse(M).unwrap();
        let inp = input_flows(&exp);
        assert_eq!(inp.get(&fk("test_db", "users", "delete")), Some(&1534000.0));
        assert_eq!(inp.get(&fk("test_db", "t_2", "delete")), Some(&48213377.0));
        assert_eq!(inp.get(&fk("test_db", "orders", "ddl")), Some(&3.0));
        assert!(
            inp.keys().all(|k| k.schema != "_gravity"),
            "heartbeat rows excluded"
        );
        let out = output_flows(&exp);
        assert_eq!(out.get(&fk("test_db", "users", "dml")), Some(&1534000.0));
        assert_eq!(out.get(&fk("test_db", "orders", "ddl")), Some(&3.0));
        let exp40 = expfmt::parse(M40).unwrap();
        assert!(input_flows(&exp40).len() > 40);
    }

    #[test]
    fn rates_handle_resets_and_new_series() {
        let mut a = Flows::new();
        a.insert(fk("d", "t", "insert"), 100.0);
        a.insert(fk("d", "u", "insert"), 50.0);
        let mut b = Flows::new();
        b.insert(fk("d", "t", "insert"), 300.0);
        b.insert(fk("d", "u", "insert"), 10.0); // went down: reset
        b.insert(fk("d", "v", "delete"), 20.0); // new
        let r: BTreeMap<FlowKey, f64> = rates(&a, &b, 2.0, false).into_iter().collect();
        assert_eq!(r[&fk("d", "t", "insert")], 100.0);
        assert_eq!(r[&fk("d", "u", "insert")], 5.0);
        assert_eq!(r[&fk("d", "v", "delete")], 10.0);
        let r: BTreeMap<FlowKey, f64> = rates(&a, &b, 2.0, true).into_iter().collect();
        assert_eq!(
            r[&fk("d", "t", "insert")],
            150.0,
            "restart: counts from zero"
        );
        assert!(rates(&a, &b, 0.0, false).is_empty());
    }

    #[test]
    fn cap_sums_the_rest() {
        let v: Vec<(FlowKey, f64)> = (0..10)
            .map(|i| (fk("d", &format!("t{i}"), "insert"), 1.0))
            .collect();
        let c = cap_flows(v, 4);
        assert_eq!(c.len(), 5);
        assert_eq!(c[4], (fk("_other", "_other", "insert"), 6.0));
    }

    #[test]
    fn passthrough_is_unchanged_and_capped() {
        let exp = expfmt::parse(M).unwrap();
        let (text, kept, dropped) = passthrough(&exp, usize::MAX, &HashSet::new());
        assert_eq!(dropped, 0);
        assert_eq!(kept, exp.series_count());
        // every line of the original is there, byte for byte
        for line in M.lines() {
            assert!(text.contains(line), "missing: {line}");
        }
        let (_, kept, dropped) = passthrough(&exp, 10, &HashSet::new());
        assert_eq!((kept, dropped), (10, exp.series_count() - 10));
        let skip: HashSet<&str> = ["go_info"].into_iter().collect();
        let (text, _, _) = passthrough(&exp, usize::MAX, &skip);
        assert!(!text.contains("go_info"));
    }

    #[test]
    fn throughput_and_retries_across_restart() {
        let store = crate::metrics::Store::new();
        let ledger = crate::retry::RetryLedger::new(&store);
        let c = GravityMetricsCollector::new(&store);
        let t0 = Instant::now();
        let mk = |ins: u64, retry: u64, start: f64| {
            format!(
                "# TYPE gravity_input_counter counter\ngravity_input_counter{{db=\"d\",pipeline=\"p\",subtype=\"insert\",table=\"t\",type=\"dml\"}} {ins}\n# TYPE gravity_scheduler_retry_counter counter\ngravity_scheduler_retry_counter{{pipeline=\"p\"}} {retry}\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}\n"
            )
        };
        let a = mk(1000, 40, 100.0);
        let f = c.process(&expfmt::parse(&a).unwrap(), t0, "p", &ledger);
        assert_eq!(
            f.value("gravity_throughput_rows_per_second", &[]),
            None,
            "no window yet"
        );
        let b = mk(1500, 42, 100.0);
        let f = c.process(
            &expfmt::parse(&b).unwrap(),
            t0 + Duration::from_secs(5),
            "p",
            &ledger,
        );
        assert_eq!(
            f.value(
                "gravity_throughput_rows_per_second",
                &[("operation", "insert")]
            ),
            Some(100.0)
        );
        assert_eq!(ledger.get("p", "scheduler", "other"), 2);
        // gravity restarts: counters start again from zero, start time changes
        let r = mk(200, 3, 200.0);
        let f = c.process(
            &expfmt::parse(&r).unwrap(),
            t0 + Duration::from_secs(10),
            "p",
            &ledger,
        );
        assert_eq!(
            f.value(
                "gravity_throughput_rows_per_second",
                &[("operation", "insert")]
            ),
            Some(40.0)
        );
        assert_eq!(
            ledger.get("p", "scheduler", "other"),
            5,
            "retry total keeps counting upward"
        );
    }

    fn input(ins: &str, out: &str, retry: &str, start: f64) -> String {
        format!(
            "# TYPE gravity_input_counter counter\ngravity_input_counter{{db=\"d\",pipeline=\"p\",subtype=\"insert\",table=\"t\",type=\"dml\"}} {ins}\ngravity_input_counter{{db=\"_gravity\",pipeline=\"p\",subtype=\"update\",table=\"gravity_heartbeat_v2\",type=\"ctl\"}} 7\n# TYPE gravity_output_counter counter\ngravity_output_counter{{cat0=\"d\",cat1=\"t\",cat2=\"dml\",cat3=\"\",cat4=\"mysql\",pipeline=\"p\"}} {out}\ngravity_output_counter{{cat0=\"d\",cat1=\"t\",cat2=\"ddl\",cat3=\"\",cat4=\"mysql\",pipeline=\"p\"}} 1\n# TYPE gravity_scheduler_retry_counter counter\ngravity_scheduler_retry_counter{{pipeline=\"p\"}} {retry}\n# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}\n"
        )
    }

    #[test]
    fn row_counters_keep_counting_across_restarts() {
        let store = crate::metrics::Store::new();
        let ledger = crate::retry::RetryLedger::new(&store);
        let c = GravityMetricsCollector::new(&store);
        let t0 = Instant::now();
        let step = |i: u64, text: String| {
            c.process(
                &expfmt::parse(&text).unwrap(),
                t0 + Duration::from_secs(5 * i),
                "p",
                &ledger,
            )
        };
        let ins = |f: &Families| {
            f.value(
                "gravity_input_rows_total",
                &[("schema", "d"), ("table", "t"), ("operation", "insert")],
            )
        };
        let out = |f: &Families| {
            f.value(
                "gravity_output_rows_total",
                &[("schema", "d"), ("table", "t")],
            )
        };
        let f = step(0, input("1000", "900", "0", 100.0));
        assert_eq!(ins(&f), Some(0.0), "present at 0 from the first reading");
        assert_eq!(out(&f), Some(0.0));
        assert!(
            f.samples("gravity_input_rows_total")
                .iter()
                .all(|(l, _)| !l.iter().any(|(_, v)| v == "_gravity")),
            "heartbeat rows excluded"
        );
        let f = step(1, input("1500", "1400", "0", 100.0));
        assert_eq!(ins(&f), Some(500.0));
        assert_eq!(out(&f), Some(500.0));
        // gravity restarts: its counters start again from zero
        let f = step(2, input("200", "150", "0", 200.0));
        assert_eq!(ins(&f), Some(700.0), "a reset is absorbed");
        // 150 dml rows plus the ddl row gravity counts again after its restart
        assert_eq!(out(&f), Some(651.0));
        // a reset without a start time (counter went down) is absorbed too
        let f = step(3, input("50", "50", "0", 200.0));
        assert_eq!(ins(&f), Some(750.0));
    }

    #[test]
    fn non_finite_and_absurd_values_are_skipped_and_counted() {
        let store = crate::metrics::Store::new();
        let ledger = crate::retry::RetryLedger::new(&store);
        let c = GravityMetricsCollector::new(&store);
        let t0 = Instant::now();
        let mut i = 0u64;
        let mut step = |text: String| {
            i += 1;
            c.process(
                &expfmt::parse(&text).unwrap(),
                t0 + Duration::from_secs(5 * i),
                "p",
                &ledger,
            )
        };
        step(input("100", "100", "10", 100.0));
        step(input("200", "200", "12", 100.0));
        for bad in ["NaN", "+Inf", "-Inf", "1e300", "-5"] {
            let f = step(input(bad, bad, bad, 100.0));
            assert_eq!(
                f.value("gravity_input_rows_total", &[("operation", "insert")]),
                Some(100.0),
                "{bad} must not change the total"
            );
            assert_eq!(
                f.value("gravity_output_rows_total", &[("table", "t")]),
                Some(100.0),
                "{bad}"
            );
        }
        // after the bad readings the next good one counts only what is new
        let f = step(input("260", "230", "15", 100.0));
        assert_eq!(
            f.value("gravity_input_rows_total", &[("operation", "insert")]),
            Some(160.0)
        );
        assert_eq!(
            f.value("gravity_output_rows_total", &[("table", "t")]),
            Some(130.0)
        );
        assert_eq!(ledger.get("p", "scheduler", "other"), 5);
        // 5 bad readings x (input, output, retry)
        assert_eq!(c.invalid.get(), 15);
        let text = store.render();
        assert!(
            text.contains("gravity_exporter_invalid_samples_total 15"),
            "{text}"
        );
    }

    #[test]
    fn row_totals_are_capped_into_other() {
        let mut t = RowTotals::default();
        for i in 0..10 {
            t.add(&fk("d", &format!("t{i}"), "insert"), 1.0, 4);
        }
        t.add(&fk("d", "t0", "insert"), 1.0, 4);
        t.add(&fk("d", "late", "delete"), 2.0, 4);
        let m: BTreeMap<FlowKey, f64> = t.iter().map(|(k, v)| (k.clone(), v)).collect();
        assert_eq!(m.len(), 6);
        assert_eq!(m[&fk("d", "t0", "insert")], 2.0);
        assert_eq!(m[&fk("_other", "_other", "insert")], 6.0);
        assert_eq!(m[&fk("_other", "_other", "delete")], 2.0);
        assert_eq!(delta(Some(5.0), f64::NAN, false), None);
        assert_eq!(delta(Some(f64::INFINITY), 3.0, false), Some(3.0));
    }

    #[test]
    fn fallback_process_figures() {
        let exp = expfmt::parse(M).unwrap();
        let f = process_fallback(&exp, "p");
        assert_eq!(
            f.value("gravity_process_cpu_seconds_total", &[]),
            Some(4182.37)
        );
        assert_eq!(f.value("gravity_process_max_fds", &[]), Some(1048576.0));
        assert_eq!(f.value("gravity_process_threads", &[]), Some(23.0));
        assert_eq!(
            f.value("gravity_process_start_time_seconds", &[]),
            Some(1.76379054912e9)
        );
    }

    #[test]
    fn non_finite_and_huge_retry_counters_are_bounded() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let store = crate::metrics::Store::new();
            let ledger = crate::retry::RetryLedger::new(&store);
            let c = GravityMetricsCollector::new(&store);
            let t0 = Instant::now();
            for (i, v) in ["1", "+Inf", "NaN", "1e300", "-Inf", "1e300", "7"]
                .iter()
                .enumerate()
            {
                let text = format!(
                    "# TYPE gravity_scheduler_retry_counter counter\ngravity_scheduler_retry_counter{{pipeline=\"p\"}} {v}\n"
                );
                let exp = expfmt::parse(&text).unwrap();
                c.process(&exp, t0 + Duration::from_secs(i as u64 + 1), "p", &ledger);
            }
            let _ = tx.send(ledger.get("p", "scheduler", "other"));
        });
        let got = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the retry ledger did not return");
        // 1: first reading; +Inf, NaN, 1e300, -Inf: implausible, skipped (and counted as
        // invalid samples); 7: six more than the last good reading
        assert_eq!(got, 6);
    }
}
