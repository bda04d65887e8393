//! The diagnosis producer ([`crate::diagnosis`] holds the rules; `docs/diagnosis.md`).
//!
//! The `/metrics` collector hands each reading of gravity's exposition to the context's
//! [`Window`] (only the families the rules read, histograms as `_sum`/`_count`), with what
//! the exporter knew at that moment: the watermark lag, the source's binlog bytes behind,
//! the target probe's latency, gravity's connections to the target, and the log lines the
//! follower noted since the last reading. The derived [`DiagnosisCollector`] turns the
//! window (at most [`WINDOW_READINGS`] readings: rates and deltas, never one gauge reading)
//! into a [`Diagnosis`] in the typed state and renders it:
//! `gravity_pipeline_bottleneck{stage}` (every stage, 1 on the holding one),
//! `gravity_pipeline_diagnosis_info{stage,case,setting,direction}` (bounded labels: no text)
//! and `gravity_sliding_window_fill_ratio{stream}` (waiting / `sliding-window-size`, never
//! gravity's integer ratio).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use super::{BoxFuture, CollectError, Collector, Context};
use crate::base::lock;
use crate::diagnosis::{
    build_input, diagnose, Diagnosis, Facts, LogWindow, Mode, Process, Reading, Sample, Stage,
};
use crate::expfmt::Exposition;
use crate::gravity_api::status::Position;
use crate::metrics::Families;

/// Readings kept: the window spans the last `WINDOW_READINGS − 1` collection intervals.
pub const WINDOW_READINGS: usize = 6;
/// Most sliding-window streams exported.
pub const MAX_STREAMS: usize = 64;
/// Most samples kept of one reading (a pipeline with thousands of tables still fits).
const MAX_SAMPLES: usize = 20_000;

/// The families of gravity's `/metrics` the rules read.
const FAMILIES: [&str; 12] = [
    "gravity_input_latency",
    "gravity_emitter_latency",
    "gravity_scheduler_submit_latency",
    "gravity_scheduler_ack_latency",
    "gravity_output_latency",
    "gravity_event_time_latency",
    "gravity_input_counter",
    "gravity_output_counter",
    "gravity_queue_length",
    "gravity_scheduler_batch_size",
    "gravity_scheduler_nr_worker",
    "gravity_scheduler_retry_counter",
];

fn monotonic_seconds(at: Instant) -> f64 {
    static START: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_secs_f64()
}

/// The families the rules read per label set (queues per type and subtype, batch sizes per
/// worker); the others are kept as one sum per reading (the rules only ever add them up).
const PER_SERIES: [&str; 3] = [
    "gravity_queue_length",
    "gravity_scheduler_batch_size",
    "gravity_scheduler_nr_worker",
];
/// Labels the per-series families keep.
const KEEP_LABELS: [&str; 3] = ["type", "subtype", "idx"];

fn plausible(v: f64) -> bool {
    v.is_finite() && (0.0..=1e15).contains(&v)
}

/// The samples of one exposition the rules read (pure): histograms' `_sum` and `_count`
/// and the row and retry counters as one sum each (the input counter without gravity's
/// heartbeat rows, `type="ctl"`, which the rules leave out too), the queue and batch gauges
/// per label set with only the labels the rules read. Implausible values are left out, as
/// the rules would.
pub fn reading_of(exp: &Exposition<'_>, at_seconds: f64) -> Reading {
    let mut samples = Vec::new();
    let mut sums: Vec<(&str, f64)> = Vec::new();
    for f in exp.families.iter().filter(|f| FAMILIES.contains(&f.name)) {
        let per_series = PER_SERIES.contains(&f.name);
        for s in &f.samples {
            if s.name.ends_with("_bucket") || !plausible(s.value) {
                continue;
            }
            if !per_series {
                if s.name == "gravity_input_counter" && s.label("type") == Some("ctl") {
                    continue;
                }
                match sums.iter_mut().find(|(n, _)| *n == s.name) {
                    Some((_, v)) => *v += s.value,
                    None => sums.push((s.name, s.value)),
                }
                continue;
            }
            if samples.len() >= MAX_SAMPLES {
                continue;
            }
            // queue types the rules read (table-latch-ack and the ready queues are not)
            if f.name == "gravity_queue_length"
                && !matches!(
                    s.label("type"),
                    Some(
                        "input-buffer"
                            | "worker"
                            | "table-queue"
                            | "table-buffer"
                            | "table-latch"
                            | "sliding-window-waiting-chan"
                    )
                )
            {
                continue;
            }
            samples.push(Sample {
                name: s.name.to_string(),
                labels: s
                    .labels
                    .iter()
                    .filter(|(k, _)| KEEP_LABELS.contains(k))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                value: s.value,
            });
        }
    }
    samples.extend(sums.into_iter().map(|(name, value)| Sample {
        name: name.to_string(),
        labels: Vec::new(),
        value,
    }));
    Reading {
        at_seconds,
        samples,
    }
}

/// What the exporter knew at one reading, beside gravity's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Moment {
    lag: Option<f64>,
    binlog_bytes_behind: Option<f64>,
    probe_latency: Option<f64>,
    target_connections: Option<f64>,
    log: LogWindow,
}

/// The last readings and what was known at each (bounded to [`WINDOW_READINGS`]).
#[derive(Debug, Default)]
pub struct Window {
    readings: Mutex<VecDeque<(Reading, Moment)>>,
}

impl Window {
    /// Adds a reading of gravity's `/metrics` taken at `at`, with the context's facts of
    /// that moment; the oldest reading beyond [`WINDOW_READINGS`] is dropped.
    pub fn push(&self, ctx: &Context, exp: &Exposition<'_>, at: Instant) {
        let reading = reading_of(exp, monotonic_seconds(at));
        let now = time::OffsetDateTime::now_utc();
        let lag = ctx.last_status().and_then(|s| s.max_lag_seconds(now));
        let probes = ctx.recent.probes().unwrap_or_default();
        let target: Vec<f64> = probes
            .iter()
            .filter(|p| p.ok && p.component == "target")
            .map(|p| p.latency_seconds)
            .collect();
        let probe_latency =
            (!target.is_empty()).then(|| target.iter().sum::<f64>() / target.len() as f64);
        let target_connections = ctx.state.established.get().map(|e| {
            e.iter()
                .filter(|((component, _), _)| component == "target")
                .map(|(_, n)| *n as f64)
                .sum()
        });
        let moment = Moment {
            lag,
            binlog_bytes_behind: ctx.state.binlog_bytes_behind.get().map(|b| *b as f64),
            probe_latency,
            target_connections,
            log: std::mem::take(&mut *lock(&ctx.diag_log)),
        };
        let mut r = lock(&self.readings);
        if r.len() >= WINDOW_READINGS {
            r.pop_front();
        }
        r.push_back((reading, moment));
    }

    /// Readings in the window.
    pub fn len(&self) -> usize {
        lock(&self.readings).len()
    }

    /// Whether the window has no reading.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets the readings (a new gravity incarnation starts a new window).
    pub fn clear(&self) {
        lock(&self.readings).clear();
    }

    fn snapshot(&self) -> Vec<(Reading, Moment)> {
        lock(&self.readings).iter().cloned().collect()
    }
}

/// Adds `b`'s counts to `a`.
fn merge(a: &mut LogWindow, b: &LogWindow) {
    for (cause, n) in &b.retry_causes {
        let e = a.retry_causes.entry(*cause).or_insert(0);
        *e = e.saturating_add(*n);
    }
    a.item_not_ack = a.item_not_ack.saturating_add(b.item_not_ack);
    a.latch_for_long = a.latch_for_long.saturating_add(b.latch_for_long);
    for item in &b.stuck {
        if a.stuck.len() < 16 && !a.stuck.contains(item) {
            a.stuck.push(item.clone());
        }
    }
}

fn first_last(xs: impl Iterator<Item = Option<f64>>) -> Option<(f64, f64)> {
    let known: Vec<f64> = xs.flatten().collect();
    Some((*known.first()?, *known.last()?))
}

fn mean(xs: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let known: Vec<f64> = xs.flatten().collect();
    (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
}

/// The diagnosis of the context's window, as of now (`None`: fewer than two readings).
pub fn diagnose_window(ctx: &Context) -> Option<Diagnosis> {
    let window = ctx.diag_window.snapshot();
    if window.len() < 2 {
        return None;
    }
    let target = ctx.target();
    let seen = ctx.last_status();
    let config = target.config.as_ref();
    let batch = seen.as_ref().is_some_and(|s| s.status.stage == "Full")
        || config.and_then(|c| c.input_mode.as_deref()) == Some("batch");
    let process = if ctx.up.process_alive() || target.process.is_none() {
        Process::Up
    } else {
        Process::Down
    };
    let tables_remaining = seen.as_ref().and_then(|s| match &s.status.position {
        Position::MysqlBatch { tables, .. } => {
            Some(u32::try_from(tables.iter().filter(|t| !t.done).count()).unwrap_or(u32::MAX))
        }
        _ => None,
    });
    let mut log = LogWindow::default();
    for (_, m) in window.iter().skip(1) {
        merge(&mut log, &m.log);
    }
    let facts = Facts {
        mode: if batch { Mode::Batch } else { Mode::Stream },
        process,
        idle: None,
        settings: config.map(|c| c.settings.clone()).unwrap_or_default(),
        event_lag_seconds: first_last(window.iter().map(|(_, m)| m.lag)),
        binlog_bytes_behind: first_last(window.iter().map(|(_, m)| m.binlog_bytes_behind)),
        target_probe_latency_seconds: mean(window.iter().map(|(_, m)| m.probe_latency)),
        target_connections: mean(window.iter().map(|(_, m)| m.target_connections)),
        tables_remaining,
        log,
    };
    let readings: Vec<Reading> = window.into_iter().map(|(r, _)| r).collect();
    build_input(&readings, &facts).ok().map(|i| diagnose(&i))
}

/// Each input stream's sliding-window fill at the last reading: `sliding-window-waiting-chan`
/// over `sliding-window-size` (gravity's own `gravity_scheduler_sliding_window_ratio` is an
/// integer division and reads 0 until the window is full).
pub fn window_fill(ctx: &Context) -> Vec<(String, f64)> {
    let size = ctx
        .target()
        .config
        .as_ref()
        .map(|c| c.settings.sliding_window_size.value)
        .unwrap_or(10240.0);
    let r = lock(&ctx.diag_window.readings);
    let Some((last, _)) = r.back() else {
        return Vec::new();
    };
    let mut out: Vec<(String, f64)> = last
        .samples
        .iter()
        .filter(|s| {
            s.name == "gravity_queue_length"
                && s.label("type") == Some("sliding-window-waiting-chan")
        })
        .filter(|s| s.value.is_finite() && s.value >= 0.0 && size > 0.0)
        .map(|s| (s.label("subtype").unwrap_or("").to_string(), s.value / size))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out.truncate(MAX_STREAMS);
    out
}

/// A bounded label for an enum that serializes to one word.
fn word<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The families of a diagnosis (pure): every stage of `gravity_pipeline_bottleneck` (all 0
/// while no diagnosis could be made), the finding's bounded facts, the windows' fill.
pub fn diagnosis_families(
    d: Option<&Diagnosis>,
    fill: &[(String, f64)],
    pipeline: &str,
) -> Families {
    let mut f = Families::new();
    let holding = d.map(|d| d.bottleneck);
    for stage in Stage::ALL {
        f.gauge(
            "gravity_pipeline_bottleneck",
            "1 on the stage that holds the pipeline back over the last window of collections (source, input, emitter, scheduler, output, target; none: nothing does), 0 on the others; all 0 until two readings of gravity's /metrics make a window.",
            &[("pipeline", pipeline), ("stage", stage.as_str())],
            if holding == Some(stage) { 1.0 } else { 0.0 },
        );
    }
    if let Some(d) = d {
        let first = d.suggestions.first();
        let direction = first.map(|s| word(&s.direction)).unwrap_or_default();
        f.gauge(
            "gravity_pipeline_diagnosis_info",
            "Always 1: the rule that decided the diagnosis (case), the stage it names, and the first suggestion's gravity setting and direction (empty when none). The reasons and figures are in /api/diagnosis.",
            &[
                ("pipeline", pipeline),
                ("stage", d.bottleneck.as_str()),
                ("case", &word(&d.case)),
                ("setting", first.and_then(|s| s.setting).unwrap_or("")),
                ("direction", &direction),
            ],
            1.0,
        );
        f.gauge(
            "gravity_pipeline_diagnosis_suggestions",
            "Suggestions of the last diagnosis (0 for a healthy, idle, down or stopped pipeline).",
            &[("pipeline", pipeline)],
            d.suggestions.len() as f64,
        );
    }
    for (stream, ratio) in fill {
        f.gauge(
            "gravity_sliding_window_fill_ratio",
            "How full the input stream's sliding window is: items waiting (sliding-window-waiting-chan) over sliding-window-size, at the last reading (gravity's own ratio is an integer division).",
            &[("pipeline", pipeline), ("stream", stream)],
            *ratio,
        );
    }
    f
}

/// The derived collector: diagnoses the window after the others have run.
#[derive(Debug, Default)]
pub struct DiagnosisCollector;

impl Collector for DiagnosisCollector {
    fn name(&self) -> &'static str {
        "diagnosis"
    }

    fn derived(&self) -> bool {
        true
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let c = Arc::clone(&ctx);
            let (d, fill) = ctx
                .workers
                .run(super::Worker::Parse, move || {
                    (diagnose_window(&c), window_fill(&c))
                })
                .await
                .ok_or(CollectError::Panicked)?;
            let f = diagnosis_families(d.as_ref(), &fill, &ctx.target().pipeline);
            ctx.state.diagnosis.set(d);
            ctx.state.window_fill.set(Some(fill));
            Ok(f)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = include_str!("../../tests/fixtures/metrics.prom");

    #[test]
    fn a_reading_keeps_only_what_the_rules_read() {
        let exp = crate::expfmt::parse(M).unwrap();
        let r = reading_of(&exp, 1.0);
        assert!(!r.samples.is_empty());
        assert!(r.samples.iter().all(|s| !s.name.ends_with("_bucket")));
        assert!(r
            .samples
            .iter()
            .all(|s| FAMILIES.iter().any(|f| s.name.starts_with(f))));
        assert!(r
            .samples
            .iter()
            .any(|s| s.name == "gravity_output_latency_sum"));
    }

    /// The reading kept (sums and the labels the rules read) gives the same input, and so
    /// the same diagnosis, as every sample of the expositions, for each recorded case.
    #[test]
    fn the_kept_reading_diagnoses_like_the_whole_exposition() {
        use crate::diagnosis::parse_samples;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diagnosis");
        let mut cases = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let a = entry.unwrap().path();
            let name = a.file_name().unwrap().to_str().unwrap().to_string();
            let Some(case) = name.strip_suffix(".a.prom") else {
                continue;
            };
            let b = dir.join(format!("{case}.b.prom"));
            let (ta, tb) = (
                std::fs::read_to_string(&a).unwrap(),
                std::fs::read_to_string(&b).unwrap(),
            );
            let whole = [
                Reading {
                    at_seconds: 0.0,
                    samples: parse_samples(&ta),
                },
                Reading {
                    at_seconds: 60.0,
                    samples: parse_samples(&tb),
                },
            ];
            let (ea, eb) = (
                crate::expfmt::parse(&ta).unwrap(),
                crate::expfmt::parse(&tb).unwrap(),
            );
            let kept = [reading_of(&ea, 0.0), reading_of(&eb, 60.0)];
            assert!(kept[0].samples.len() < whole[0].samples.len(), "{case}");
            let facts = Facts::default();
            let (i1, i2) = (
                build_input(&whole, &facts).unwrap(),
                build_input(&kept, &facts).unwrap(),
            );
            assert_eq!(i1, i2, "{case}");
            assert_eq!(diagnose(&i1), diagnose(&i2), "{case}");
            cases += 1;
        }
        assert!(cases >= 8, "{cases} cases");
    }

    #[test]
    fn every_stage_is_present_and_at_most_one_holds() {
        let f = diagnosis_families(None, &[], "p");
        let text = {
            let store = crate::metrics::Store::new();
            store.set_snapshot("diagnosis", f);
            store.render()
        };
        for s in Stage::ALL {
            assert!(
                text.contains(&format!(
                    "gravity_pipeline_bottleneck{{pipeline=\"p\",stage=\"{}\"}} 0",
                    s.as_str()
                )),
                "{text}"
            );
        }
        assert!(!text.contains("gravity_pipeline_diagnosis_info"));
    }

    #[test]
    fn log_windows_add_up() {
        let mut a = LogWindow::default();
        a.note(
            "error execute sync output, retry. Error 1213: Deadlock found when trying to get lock",
        );
        let mut b = LogWindow::default();
        b.note(
            "error execute sync output, retry. Error 1213: Deadlock found when trying to get lock",
        );
        b.note("[sliding_window] item not ack after 31 seconds");
        merge(&mut a, &b);
        assert_eq!(a.retry_causes.values().sum::<u64>(), 2);
        assert_eq!(a.item_not_ack, 1);
    }
}
