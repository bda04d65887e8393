//! The metric store behind `/metrics`.
//!
//! Two kinds of metrics live here:
//! - *stateful* ones (counters that accumulate across gravity restarts, histograms, the
//!   exporter's own meta metrics), as `prometheus` crate objects in one [`Registry`];
//! - *snapshots*: what each collector read on its last successful run, as const metric
//!   families ([`Families`]), in the manner of node_exporter's const metrics. A collector
//!   that fails leaves its last good snapshot in place (its `..._collector_success`
//!   reads 0, which marks those values stale), so a scrape never fails.
//!
//! A gravity pass-through text block (gravity's own families, already capped and
//! validated) is appended as it is.
//!
//! [`Store::render`] merges everything into one exposition in the text format;
//! [`render_fleet`] does the same for several stores and keeps each store's snapshots
//! encoded between two changes (only the registry and the bound-keeping families, which
//! move on their own, are encoded per scrape).
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::base::{cut, lock};
use std::time::{Duration, Instant};

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

/// Content type of the text exposition format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub use crate::bounds::{
    count_dropped, count_truncated, Dropped, Truncated, MAX_EXPOSITION_BYTES,
    MAX_LABEL_VALUE_BYTES, MAX_PASSTHROUGH_BYTES,
};
use crate::bounds::{DROPPED_COUNT, DROPPED_WHAT, TRUNCATED_COUNT, TRUNCATED_WHAT};

/// A set of const metric families built by one collector run.
#[derive(Debug, Default, Clone)]
pub struct Families {
    by_name: BTreeMap<String, MetricFamily>,
}

impl Families {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str, help: &str, kind: MetricType) -> &mut MetricFamily {
        self.by_name.entry(name.to_string()).or_insert_with(|| {
            let mut mf = MetricFamily::default();
            mf.set_name(name.to_string());
            mf.set_help(help.to_string());
            mf.set_field_type(kind);
            mf
        })
    }

    fn labels(labels: &[(&str, &str)]) -> Vec<LabelPair> {
        labels
            .iter()
            .map(|(k, v)| {
                let mut lp = LabelPair::default();
                lp.set_name((*k).to_string());
                let short = cut(v, MAX_LABEL_VALUE_BYTES);
                if short.len() < v.len() {
                    count_truncated(Truncated::LabelValue, 1);
                }
                lp.set_value(short.to_string());
                lp
            })
            .collect()
    }

    /// Adds a gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let mut g = Gauge::default();
        g.set_value(value);
        let mut m = Metric::from_gauge(g);
        m.set_label(Self::labels(labels));
        self.family(name, help, MetricType::GAUGE)
            .mut_metric()
            .push(m);
    }

    /// Adds a counter sample (a value read from a source that counts, e.g. /proc).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let mut c = Counter::default();
        c.set_value(value);
        let mut m = Metric::default();
        m.set_counter(c);
        m.set_label(Self::labels(labels));
        self.family(name, help, MetricType::COUNTER)
            .mut_metric()
            .push(m);
    }

    /// Whether a family of this name is in the set.
    pub fn has_family(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Whether no family holds a sample (families without samples are not rendered).
    pub fn is_empty(&self) -> bool {
        self.by_name.values().all(|f| f.get_metric().is_empty())
    }

    /// Number of samples in all families.
    pub fn len(&self) -> usize {
        self.by_name.values().map(|f| f.get_metric().len()).sum()
    }

    /// Adds every family of `other` (samples of same-named families are merged).
    pub fn extend(&mut self, other: Families) {
        for (name, mut mf) in other.by_name {
            match self.by_name.get_mut(&name) {
                Some(existing) => {
                    let ms = mf.take_metric();
                    existing.mut_metric().extend(ms);
                }
                None => {
                    self.by_name.insert(name, mf);
                }
            }
        }
    }

    /// The families, for rendering.
    pub fn into_vec(self) -> Vec<MetricFamily> {
        self.by_name.into_values().collect()
    }

    /// Every sample of a gauge or counter family: its labels and value.
    #[cfg(test)]
    pub fn samples(&self, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
        let Some(mf) = self.by_name.get(name) else {
            return Vec::new();
        };
        mf.get_metric()
            .iter()
            .filter_map(|m| {
                let v = match mf.get_field_type() {
                    MetricType::COUNTER => m.get_counter().get_value(),
                    MetricType::GAUGE => m.get_gauge().get_value(),
                    _ => return None,
                };
                let labels = m
                    .get_label()
                    .iter()
                    .map(|lp| (lp.name().to_string(), lp.value().to_string()))
                    .collect();
                Some((labels, v))
            })
            .collect()
    }

    /// Value of the first sample of a family whose labels include all of `labels` (tests).
    #[cfg(test)]
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mf = self.by_name.get(name)?;
        mf.get_metric().iter().find_map(|m| {
            let ok = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|lp| lp.name() == *k && lp.value() == *v)
            });
            if !ok {
                return None;
            }
            match mf.get_field_type() {
                MetricType::COUNTER => Some(m.get_counter().get_value()),
                MetricType::GAUGE => Some(m.get_gauge().get_value()),
                _ => None,
            }
        })
    }
}

/// One family of gravity's own exposition, passed through as text.
#[derive(Debug, Clone, Default)]
pub struct PassFamily {
    /// The family name (to keep it out when the exporter serves the same name).
    pub name: String,
    /// HELP, TYPE and sample lines, each ending in a newline.
    pub text: String,
}

#[derive(Debug, Default)]
struct Passthrough {
    /// Shared with the renders reading it (a render takes a reference, not a copy).
    families: Arc<Vec<PassFamily>>,
    /// When it was read (`None`: never, or set empty).
    at: Option<Instant>,
}

/// The whole store: stateful registry, collector snapshots, pass-through text.
///
/// Read order: a producer writes the registry (the lag histogram, task and retry figures)
/// before it publishes its snapshot, so a view reads the snapshots first and gathers the
/// registry after them. A rendered snapshot is then never newer than the registry beside
/// it: `gravity_canary_arrived_total` (snapshot) never runs ahead of the canary table's
/// `gravity_data_lag_seconds_count` (registry), as it could when the registry was gathered
/// first and an arrival landed between the two reads.
#[derive(Debug)]
pub struct Store {
    registry: Registry,
    snapshots: Mutex<BTreeMap<&'static str, Families>>,
    /// Bumped, under the `snapshots` lock, by every [`Store::set_snapshot`].
    snapshot_generation: AtomicU64,
    /// The snapshots encoded for `/metrics` ([`render_fleet`]), derived from them only.
    render_cache: Mutex<Option<RenderCache>>,
    passthrough: Mutex<Passthrough>,
    /// Older pass-through is not served (`None`: no limit).
    passthrough_max_age: Mutex<Option<Duration>>,
    /// When each source was last read successfully (its snapshot set).
    fresh: Mutex<BTreeMap<&'static str, Instant>>,
    created: Instant,
    /// The supervisor's metric families, registered once (`TaskMetrics`).
    tasks: std::sync::OnceLock<TaskMetrics>,
    /// Which bound-keeping families it renders.
    scope: Scope,
}

/// What a store holds of the exporter: everything (one store alone), what belongs to the
/// whole exporter (several pipelines), or one pipeline's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Whole,
    Exporter,
    Pipeline,
}

/// Snapshot names that are not a source read (the watcher's state, published on change
/// only; the health verdict, derived from the others).
const NOT_A_SOURCE: [&str; 2] = ["watch", "health"];

/// Sources that always have a `gravity_exporter_source_age_seconds` series (never read:
/// the exporter's uptime), so the label set is known from the start.
pub const KNOWN_SOURCES: [&str; 9] = [
    "connections",
    "consistency",
    "gravity_metrics",
    "healthz",
    "log",
    "process",
    "sockets",
    "source",
    "status",
];

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store that renders the whole exposition alone.
    pub fn new() -> Self {
        Self::scoped(Scope::Whole)
    }

    /// The store of what belongs to the whole exporter beside its pipelines' stores (its own
    /// server, build, export and bound counters): rendered with them by [`render_fleet`].
    pub fn exporter() -> Self {
        Self::scoped(Scope::Exporter)
    }

    /// The store of one pipeline among several ([`render_fleet`]): its collectors' snapshots,
    /// gravity's pass-through and its stateful families; its sources' ages; not the
    /// exporter-wide counters.
    pub fn pipeline() -> Self {
        Self::scoped(Scope::Pipeline)
    }

    fn scoped(scope: Scope) -> Self {
        Store {
            scope,
            registry: Registry::new(),
            snapshots: Mutex::new(BTreeMap::new()),
            snapshot_generation: AtomicU64::new(0),
            render_cache: Mutex::new(None),
            passthrough: Mutex::new(Passthrough::default()),
            passthrough_max_age: Mutex::new(None),
            fresh: Mutex::new(BTreeMap::new()),
            created: Instant::now(),
            tasks: std::sync::OnceLock::new(),
        }
    }

    /// The background tasks' metrics (`gravity_exporter_task_*`), registered on first use.
    pub fn tasks(&self) -> &TaskMetrics {
        self.tasks.get_or_init(|| {
            // the exporter's own store runs no pipeline task: none of them is made up at 0
            let known: &[&str] = if self.scope == Scope::Exporter {
                &[]
            } else {
                &TASKS
            };
            TaskMetrics::register_known(&self.registry, known)
        })
    }

    /// The registry for stateful metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Replaces the snapshot of one collector: a successful read of that source, which
    /// resets its `gravity_exporter_source_age_seconds`.
    pub fn set_snapshot(&self, collector: &'static str, fams: Families) {
        let old = {
            let mut snaps = lock(&self.snapshots);
            let old = snaps.insert(collector, fams);
            self.snapshot_generation.fetch_add(1, Ordering::Release);
            old
        };
        drop(old);
        if !NOT_A_SOURCE.contains(&collector) {
            self.mark_fresh(collector);
        }
    }

    /// Records a successful read of `source` now.
    pub fn mark_fresh(&self, source: &'static str) {
        lock(&self.fresh).insert(source, Instant::now());
    }

    /// Seconds since each source was last read successfully (never: since the store was
    /// made), for every one of [`KNOWN_SOURCES`] and any other that was read.
    pub fn source_ages(&self) -> Vec<(&'static str, f64)> {
        let fresh = lock(&self.fresh);
        let mut out: BTreeMap<&'static str, f64> = KNOWN_SOURCES
            .iter()
            .map(|k| (*k, self.created.elapsed().as_secs_f64()))
            .collect();
        for (k, t) in fresh.iter() {
            out.insert(k, t.elapsed().as_secs_f64());
        }
        out.into_iter().collect()
    }

    /// Names of every family the exporter itself serves now (registry and snapshots), with
    /// the sample names a histogram or summary adds: a pass-through family must not use one.
    pub fn own_names(&self) -> HashSet<String> {
        let mut out = HashSet::new();
        let mut add = |mf: &MetricFamily| {
            let n = mf.name();
            if matches!(
                mf.get_field_type(),
                MetricType::HISTOGRAM | MetricType::SUMMARY
            ) {
                for suffix in ["_bucket", "_sum", "_count"] {
                    out.insert(format!("{n}{suffix}"));
                }
            }
            out.insert(n.to_string());
        };
        for mf in self.registry.gather() {
            add(&mf);
        }
        for f in lock(&self.snapshots).values() {
            for mf in f.by_name.values() {
                add(mf);
            }
        }
        out
    }

    /// Sets how old the pass-through may be and still be served (`None`: any age).
    pub fn set_passthrough_max_age(&self, max: Option<Duration>) {
        *lock(&self.passthrough_max_age) = max;
    }

    /// A copy of one collector's last snapshot.
    #[cfg(test)]
    pub fn snapshot(&self, collector: &'static str) -> Option<Families> {
        lock(&self.snapshots).get(collector).cloned()
    }

    /// Replaces the pass-through text (gravity's own families, already validated and capped).
    pub fn set_passthrough(&self, text: String) {
        let families = if text.is_empty() {
            Vec::new()
        } else {
            vec![PassFamily {
                name: String::new(),
                text,
            }]
        };
        self.set_passthrough_families(families);
    }

    /// Replaces the pass-through, family by family (already validated and capped); read now.
    pub fn set_passthrough_families(&self, mut families: Vec<PassFamily>) {
        // Keep no spare capacity from a big answer around.
        families.shrink_to_fit();
        for f in &mut families {
            f.text.shrink_to_fit();
        }
        let at = (!families.is_empty()).then(Instant::now);
        let families = Arc::new(families);
        // the old text is freed outside the lock (or by the last render reading it)
        let old = std::mem::replace(&mut *lock(&self.passthrough), Passthrough { families, at });
        drop(old);
    }

    /// The exporter's own families as `/metrics` serves them (registry, snapshots and the
    /// bound-keeping families; sorted, empty ones left out), and whether the pass-through is
    /// withheld as stale. `/metrics` and the OTLP export are both views of this.
    fn own_families(&self) -> (Vec<MetricFamily>, bool, bool) {
        // snapshots read before the registry (the read order on [`Store`]), rendered after it
        let (_, merged) = self.merged_snapshots();
        let mut mfs = self.registry.gather();
        mfs.extend(merged.into_vec());
        let (stale, pass_present) = self.passthrough_state();
        mfs.extend(self.bound_families(stale).into_vec());
        mfs.retain(|mf| !mf.get_metric().is_empty());
        mfs.sort_by(|a, b| a.name().cmp(b.name()));
        (mfs, stale, pass_present)
    }

    /// The collectors' snapshots merged in collector order, and the generation they are of
    /// (read under the snapshots' lock).
    fn merged_snapshots(&self) -> (u64, Families) {
        let snaps = lock(&self.snapshots);
        let mut merged = Families::new();
        for f in snaps.values() {
            merged.extend(f.clone());
        }
        (self.snapshot_generation.load(Ordering::Acquire), merged)
    }

    /// Whether the pass-through is withheld as stale, and whether there is one.
    fn passthrough_state(&self) -> (bool, bool) {
        let max_age = *lock(&self.passthrough_max_age);
        let (pass_age, pass_present) = {
            let pt = lock(&self.passthrough);
            (pt.at.map(|t| t.elapsed()), !pt.families.is_empty())
        };
        let stale = pass_present && matches!((pass_age, max_age), (Some(a), Some(m)) if a > m);
        (stale, pass_present)
    }

    /// The snapshots merged (as [`Store::own_families`] merges them), labelled with
    /// `pipeline` (if any) and encoded: from the cache while no snapshot changed and the
    /// pipeline is the one it was built for, else built anew (the old copy dropped first).
    /// `None`: they cannot be encoded family by family (the caller renders without cache).
    fn encoded_snapshots(&self, pipeline: Option<&str>) -> Option<Arc<Encoded>> {
        let mut cache = lock(&self.render_cache);
        let now = self.snapshot_generation.load(Ordering::Acquire);
        if let Some(c) = cache.as_ref() {
            if c.generation == now && c.pipeline.as_deref() == pipeline {
                return c.families.clone();
            }
        }
        *cache = None;
        let (generation, merged) = self.merged_snapshots();
        let mut mfs = merged.into_vec();
        if let Some(p) = pipeline {
            label_pipeline(&mut mfs, p);
        }
        let families = encode_families(&mfs).map(Arc::new);
        *cache = Some(RenderCache {
            generation,
            pipeline: pipeline.map(str::to_string),
            families: families.clone(),
        });
        families
    }

    /// What one scrape renders of this store, encoded: the registry's and the bound-keeping
    /// families of this moment, the snapshots from the cache; and whether the pass-through is
    /// stale, and present. `None`: not every family can be encoded alone.
    fn scrape_view(&self, pipeline: Option<&str>) -> Option<(StoreView, bool, bool)> {
        // snapshots read before the registry (the read order on [`Store`])
        let snapshots = self.encoded_snapshots(pipeline)?;
        let mut registry = self.registry.gather();
        let (stale, present) = self.passthrough_state();
        let mut bounds = self.bound_families(stale).into_vec();
        if let Some(p) = pipeline {
            label_pipeline(&mut registry, p);
            label_pipeline(&mut bounds, p);
        }
        let view = StoreView {
            registry: encode_families(&registry)?,
            snapshots,
            bounds: encode_families(&bounds)?,
        };
        Some((view, stale, present))
    }

    /// The exporter's own families of this moment, exactly those `/metrics` renders (for
    /// the OTLP export: one source of truth).
    pub fn gather(&self) -> Vec<MetricFamily> {
        self.own_families().0
    }

    /// The pass-through text `/metrics` would append now (`None`: none, stale, or left out),
    /// given the names of the own families.
    fn passthrough_for(&self, own: &[MetricFamily], own_len: usize) -> Option<String> {
        let pt = lock(&self.passthrough);
        let own: HashSet<&str> = own.iter().map(|mf| mf.name()).collect();
        let keep = |f: &&PassFamily| f.name.is_empty() || !own.contains(f.name.as_str());
        let size: usize = pt.families.iter().filter(keep).map(|f| f.text.len()).sum();
        if own_len.saturating_add(size) > MAX_EXPOSITION_BYTES {
            return None;
        }
        let mut out = String::with_capacity(size);
        for f in pt.families.iter().filter(keep) {
            out.push_str(&f.text);
        }
        Some(out)
    }

    /// The own families and gravity's pass-through text of this moment (stale or oversized
    /// pass-through left out, as in [`Store::render`]).
    pub fn gather_with_passthrough(&self) -> (Vec<MetricFamily>, Option<String>) {
        let (mfs, stale, present) = self.own_families();
        if stale || !present {
            return (mfs, None);
        }
        let text = self.passthrough_for(&mfs, 0);
        (mfs, text)
    }

    /// Renders the exposition: the exporter's own families, then gravity's pass-through
    /// (unless it is stale, collides with an own name, or would exceed
    /// [`MAX_EXPOSITION_BYTES`]).
    pub fn render(&self) -> String {
        let (mfs, stale, pass_present) = self.own_families();
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on inconsistent families (a summary without
        // quantiles, etc.), which this crate never builds; fall back to what was written.
        let _ = TextEncoder::new().encode(&mfs, &mut buf);
        let mut out = String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        if stale || !pass_present {
            return out;
        }
        match self.passthrough_for(&mfs, out.len()) {
            Some(text) => out.push_str(&text),
            None => count_dropped(Dropped::ExpositionBytes, 1),
        }
        out
    }

    /// The bound-keeping families: what was cut or dropped (every `what` from 0), how old
    /// each source's last read is, and whether the pass-through is being withheld as stale.
    fn bound_families(&self, stale: bool) -> Families {
        let mut f = Families::new();
        if self.scope != Scope::Pipeline {
            f.extend(global_bound_families());
        }
        if self.scope == Scope::Exporter {
            return f;
        }
        for (source, age) in self.source_ages() {
            f.gauge(
                "gravity_exporter_source_age_seconds",
                "Seconds since the source (a collector, the log watcher, the connection prober) was last read successfully.",
                &[("source", source)],
                age,
            );
        }
        f.gauge(
            "gravity_exporter_passthrough_stale",
            "1 while gravity's pass-through families are withheld because their last successful read is older than three collection intervals plus the request timeout.",
            &[],
            if stale { 1.0 } else { 0.0 },
        );
        f
    }
}

/// What was cut or dropped to keep the byte bounds (every `what` from 0): counted for the
/// whole exporter.
fn global_bound_families() -> Families {
    let mut f = Families::new();
    {
        for (what, c) in TRUNCATED_WHAT.iter().zip(TRUNCATED_COUNT.iter()) {
            f.counter(
                "gravity_exporter_truncated_total",
                "Values the exporter cut short to keep its byte bounds, by what (label_value: a label value over 256 bytes).",
                &[("what", what)],
                c.load(Ordering::Relaxed) as f64,
            );
        }
        for (what, c) in DROPPED_WHAT.iter().zip(DROPPED_COUNT.iter()) {
            f.counter(
                "gravity_exporter_dropped_total",
                "What the exporter dropped to keep its bounds, by what: api_body (gravity answers over their byte cap), passthrough_line (pass-through series with a line over 4 KiB), passthrough_bytes (pass-through series beyond 8 MiB), passthrough_family_collision (pass-through families named like the exporter's own), exposition_bytes (scrapes that left the pass-through out to stay under 16 MiB), pipeline_name_collision (scrapes that left out a pipeline named like another).",
                &[("what", what)],
                c.load(Ordering::Relaxed) as f64,
            );
        }
    }
    f
}

/// One pipeline's part of a fleet exposition: its name (the `pipeline` label its series
/// get when they lack one) and its store.
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    /// The pipeline's name.
    pub pipeline: &'a str,
    /// Its store ([`Store::pipeline`]).
    pub store: &'a Store,
}

/// Adds `pipeline="name"` to every sample without a `pipeline` label (labels kept sorted).
fn label_pipeline(mfs: &mut [MetricFamily], pipeline: &str) {
    for mf in mfs.iter_mut() {
        for m in mf.mut_metric().iter_mut() {
            if m.get_label().iter().any(|l| l.name() == "pipeline") {
                continue;
            }
            let mut lp = LabelPair::default();
            lp.set_name("pipeline".to_string());
            lp.set_value(cut(pipeline, MAX_LABEL_VALUE_BYTES).to_string());
            let mut labels = m.take_label();
            labels.push(lp);
            labels.sort_by(|a, b| a.name().cmp(b.name()));
            m.set_label(labels);
        }
    }
}

/// Escapes a label value for the text format.
fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A pass-through sample line with `pipeline="name"` added when it has no `pipeline`
/// label (a gravity's `go_*` and `process_*` families carry none; gravity's own do).
pub fn label_passthrough_line(line: &str, escaped_pipeline: &str) -> String {
    let end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, rest) = line.split_at(end);
    if let Some(labels) = rest.strip_prefix('{') {
        let close = labels.find('}').unwrap_or(labels.len());
        let block = labels.get(..close).unwrap_or_default();
        if block.starts_with("pipeline=\"") || block.contains(",pipeline=\"") {
            return line.to_string();
        }
        let sep = if block.trim().is_empty() { "" } else { "," };
        format!("{name}{{pipeline=\"{escaped_pipeline}\"{sep}{labels}")
    } else {
        format!("{name}{{pipeline=\"{escaped_pipeline}\"}}{rest}")
    }
}

/// Families of one contributor (a store's registry, snapshots or bound-keeping families),
/// each encoded alone as [`TextEncoder`] encodes it, one after the other in one text.
#[derive(Debug, Default)]
struct Encoded {
    text: String,
    /// In `text` order, which is by name (strictly ascending).
    families: Vec<EncodedFamily>,
}

/// Where one family is in [`Encoded::text`]: its `# HELP` (when it has a help text) and
/// `# TYPE` lines from `start` to `head_end`, its sample lines from there to `end`.
#[derive(Debug)]
struct EncodedFamily {
    kind: MetricType,
    start: usize,
    name_start: usize,
    name_end: usize,
    head_end: usize,
    end: usize,
}

impl Encoded {
    fn name(&self, f: &EncodedFamily) -> &str {
        self.text.get(f.name_start..f.name_end).unwrap_or_default()
    }

    fn head(&self, f: &EncodedFamily) -> &str {
        self.text.get(f.start..f.head_end).unwrap_or_default()
    }

    fn samples(&self, f: &EncodedFamily) -> &str {
        self.text.get(f.head_end..f.end).unwrap_or_default()
    }
}

/// A store's snapshots as [`render_fleet`] renders them, for one pipeline label.
#[derive(Debug)]
struct RenderCache {
    /// The [`Store::set_snapshot`] count it was built after.
    generation: u64,
    /// The pipeline label it was built with (`None`: none, the exporter's own store).
    pipeline: Option<String>,
    /// `None`: not every family can be encoded alone (rendered without cache).
    families: Option<Arc<Encoded>>,
}

/// One store's part of a scrape, encoded.
#[derive(Debug)]
struct StoreView {
    registry: Encoded,
    snapshots: Arc<Encoded>,
    bounds: Encoded,
}

/// Encodes each family with samples alone, in order (those without are left out, as
/// [`Store::own_families`] leaves them out). `None` when one cannot be encoded alone so that
/// its samples cut from its head join another family's exactly (no name, a name with a
/// line break, an encoder error), or the names are not strictly ascending.
fn encode_families(mfs: &[MetricFamily]) -> Option<Encoded> {
    const TYPE: &str = "# TYPE ";
    // about 100 bytes a line, a few hundred for a head: one allocation as a rule
    let lines: usize = mfs
        .iter()
        .map(|mf| {
            let per_metric = match mf.get_field_type() {
                MetricType::HISTOGRAM => mf
                    .get_metric()
                    .first()
                    .map_or(0, |m| m.get_histogram().get_bucket().len())
                    .saturating_add(3),
                MetricType::SUMMARY => mf
                    .get_metric()
                    .first()
                    .map_or(0, |m| m.get_summary().get_quantile().len())
                    .saturating_add(2),
                _ => 1,
            };
            per_metric
                .saturating_mul(mf.get_metric().len())
                .saturating_add(3)
        })
        .sum();
    let mut out = Encoded {
        text: String::with_capacity(lines.saturating_mul(100)),
        families: Vec::with_capacity(mfs.len()),
    };
    for mf in mfs {
        if mf.get_metric().is_empty() {
            continue;
        }
        let name = mf.name();
        if name.is_empty() || name.contains('\n') {
            return None;
        }
        let start = out.text.len();
        TextEncoder::new()
            .encode_utf8(std::slice::from_ref(mf), &mut out.text)
            .ok()?;
        let end = out.text.len();
        let line_end = |from: usize| -> Option<usize> {
            let i = out.text.get(from..)?.find('\n')?;
            Some(from.saturating_add(i).saturating_add(1))
        };
        // the help text is escaped (no line break in it): the head is one or two lines
        let type_line = if mf.help().is_empty() {
            start
        } else {
            line_end(start)?
        };
        let head_end = line_end(type_line)?;
        let name_start = type_line.saturating_add(TYPE.len());
        let name_end = name_start.saturating_add(name.len());
        let f = EncodedFamily {
            kind: mf.get_field_type(),
            start,
            name_start,
            name_end,
            head_end,
            end,
        };
        if out.text.get(type_line..name_start) != Some(TYPE) || out.name(&f) != name {
            return None;
        }
        if let Some(last) = out.families.last() {
            if out.name(last) >= name {
                return None;
            }
        }
        out.families.push(f);
    }
    Some(out)
}

/// The exposition of an exporter watching several pipelines: the exporter's own families,
/// then each pipeline's (a sample without a `pipeline` label gets its pipeline's), merged by
/// family name, then each gravity's pass-through merged by family the same way (HELP and
/// TYPE once). A pipeline named like an earlier one is left out (its series would collide)
/// and counted as `pipeline_name_collision`.
///
/// The snapshots come encoded from each store's cache (rebuilt when one changed); only the
/// registry's and the bound-keeping families are encoded per scrape. Byte for byte the text
/// of [`gather_fleet`]'s families encoded whole, which it falls back to when a family cannot
/// be joined from its encoded parts (parts of one name with different types).
pub fn render_fleet(exporter: &Store, parts: &[Part<'_>]) -> String {
    match render_fleet_cached(exporter, parts) {
        Some(out) => out,
        None => render_fleet_uncached(exporter, parts),
    }
}

/// [`render_fleet`] from [`gather_fleet`]'s families, encoded whole.
fn render_fleet_uncached(exporter: &Store, parts: &[Part<'_>]) -> String {
    let (mfs, pass) = gather_fleet(Some(exporter), parts);
    let mut buf = Vec::with_capacity(16 * 1024);
    let _ = TextEncoder::new().encode(&mfs, &mut buf);
    let mut out = String::from_utf8(buf)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    append_passthrough(&mut out, &pass);
    out
}

/// Appends the pass-through text unless it would take the exposition over
/// [`MAX_EXPOSITION_BYTES`] (counted as `exposition_bytes`).
fn append_passthrough(out: &mut String, pass: &str) {
    if pass.is_empty() {
        return;
    }
    if out.len().saturating_add(pass.len()) > MAX_EXPOSITION_BYTES {
        count_dropped(Dropped::ExpositionBytes, 1);
        return;
    }
    out.push_str(pass);
}

/// [`render_fleet`] from the encoded parts. `None` (before anything is counted): the caller
/// renders without them.
fn render_fleet_cached(exporter: &Store, parts: &[Part<'_>]) -> Option<String> {
    let mut views: Vec<StoreView> = Vec::with_capacity(parts.len().saturating_add(1));
    views.push(exporter.scrape_view(None)?.0);
    let mut seen: HashSet<&str> = HashSet::new();
    let mut collisions: u64 = 0;
    let mut passes: Vec<(String, Arc<Vec<PassFamily>>)> = Vec::new();
    for part in parts {
        if !seen.insert(part.pipeline) {
            collisions = collisions.saturating_add(1);
            continue;
        }
        let (view, stale, present) = part.store.scrape_view(Some(part.pipeline))?;
        views.push(view);
        if present && !stale {
            passes.push((
                escape_label_value(part.pipeline),
                Arc::clone(&lock(&part.store.passthrough).families),
            ));
        }
    }
    // in the order gather_fleet merges them: the exporter's store, then each pipeline's;
    // within a store its registry, its snapshots, its bound-keeping families
    let lists: Vec<&Encoded> = views
        .iter()
        .flat_map(|v| [&v.registry, &*v.snapshots, &v.bounds])
        .collect();
    let size = lists
        .iter()
        .map(|l| l.text.len())
        .chain(
            passes
                .iter()
                .flat_map(|(_, fs)| fs.iter().map(|f| f.text.len())),
        )
        .fold(0usize, usize::saturating_add);
    let mut out = String::with_capacity(size);
    // every list is by name: merged name by name, the head of the first part, then the
    // samples of each
    let mut at: Vec<usize> = vec![0; lists.len()];
    let mut own: Vec<&str> = Vec::new();
    loop {
        let mut next: Option<&str> = None;
        for (l, i) in lists.iter().zip(&at) {
            if let Some(f) = l.families.get(*i) {
                let n = l.name(f);
                if next.is_none_or(|m| n < m) {
                    next = Some(n);
                }
            }
        }
        let Some(name) = next else { break };
        let mut kind: Option<MetricType> = None;
        for (l, i) in lists.iter().zip(at.iter_mut()) {
            let Some(f) = l.families.get(*i).filter(|f| l.name(f) == name) else {
                continue;
            };
            match kind {
                None => {
                    kind = Some(f.kind);
                    out.push_str(l.head(f));
                }
                // merged whole, its samples are encoded as the first part's type
                Some(k) if k != f.kind => return None,
                Some(_) => {}
            }
            out.push_str(l.samples(f));
            *i = i.saturating_add(1);
        }
        own.push(name);
    }
    if collisions > 0 {
        count_dropped(Dropped::PipelineNameCollision, collisions);
    }
    // `own` is by name
    let own_len = out.len();
    push_passthrough(&mut out, &passes, |n| own.binary_search(&n).is_ok());
    if out.len() > own_len && out.len() > MAX_EXPOSITION_BYTES {
        out.truncate(own_len);
        count_dropped(Dropped::ExpositionBytes, 1);
    }
    Some(out)
}

/// The families and the pass-through text [`render_fleet`] renders (the OTLP export reads
/// the same, one pipeline at a time, and the exporter's own part alone).
pub fn gather_fleet(exporter: Option<&Store>, parts: &[Part<'_>]) -> (Vec<MetricFamily>, String) {
    let mut by_name: BTreeMap<String, MetricFamily> = BTreeMap::new();
    let mut add = |mfs: Vec<MetricFamily>| {
        for mut mf in mfs {
            match by_name.get_mut(mf.name()) {
                Some(existing) => {
                    let ms = mf.take_metric();
                    existing.mut_metric().extend(ms);
                }
                None => {
                    by_name.insert(mf.name().to_string(), mf);
                }
            }
        }
    };
    if let Some(e) = exporter {
        add(e.own_families().0);
    }
    let mut seen: HashSet<&str> = HashSet::new();
    let mut passes: Vec<(String, Arc<Vec<PassFamily>>)> = Vec::new();
    for part in parts {
        if !seen.insert(part.pipeline) {
            count_dropped(Dropped::PipelineNameCollision, 1);
            continue;
        }
        let (mut mfs, stale, present) = part.store.own_families();
        label_pipeline(&mut mfs, part.pipeline);
        add(mfs);
        if present && !stale {
            passes.push((
                escape_label_value(part.pipeline),
                Arc::clone(&lock(&part.store.passthrough).families),
            ));
        }
    }
    let mfs: Vec<MetricFamily> = by_name.into_values().collect();
    let own: HashSet<&str> = mfs.iter().map(|mf| mf.name()).collect();
    let mut text = String::new();
    push_passthrough(&mut text, &passes, |n| own.contains(n));
    drop(own);
    (mfs, text)
}

/// Appends the pipelines' pass-through text (each pipeline's escaped name and families),
/// families with an `own` name left out: one pipeline's as gravity sent it; several merged
/// family by family, in the order first seen, HELP and TYPE once, then every pipeline's
/// samples (with the pipeline label where they have none).
fn push_passthrough(
    text: &mut String,
    passes: &[(String, Arc<Vec<PassFamily>>)],
    own: impl Fn(&str) -> bool,
) {
    if passes.len() == 1 {
        for f in passes.iter().flat_map(|(_, fs)| fs.iter()) {
            if f.name.is_empty() || !own(f.name.as_str()) {
                text.push_str(&f.text);
            }
        }
    } else {
        // family by family, in the order first seen: HELP and TYPE once, then every
        // pipeline's samples
        let mut order: Vec<&str> = Vec::new();
        let mut groups: BTreeMap<&str, Vec<(&str, &PassFamily)>> = BTreeMap::new();
        for (p, fs) in passes {
            for f in fs.iter() {
                if f.name.is_empty() || own(f.name.as_str()) {
                    continue;
                }
                let g = groups.entry(f.name.as_str()).or_default();
                if g.is_empty() {
                    order.push(f.name.as_str());
                }
                g.push((p.as_str(), f));
            }
        }
        for name in order {
            let Some(g) = groups.get(name) else { continue };
            let mut head_done = false;
            for (p, f) in g {
                for line in f.text.lines() {
                    if line.starts_with('#') {
                        if !head_done {
                            text.push_str(line);
                            text.push('\n');
                        }
                    } else if !line.is_empty() {
                        text.push_str(&label_passthrough_line(line, p));
                        text.push('\n');
                    }
                }
                head_done = true;
            }
        }
    }
}

/// The tasks the exporter runs, each with its series present from the start.
pub const TASKS: [&str; 6] = [
    "watcher",
    "log",
    "collectors",
    "connections",
    "consistency",
    "canary",
];

/// The tasks that work in cycles and report each one through [`TaskMetrics::cycle`].
pub const CYCLIC_TASKS: [&str; 4] = ["watcher", "log", "connections", "consistency"];

/// The `gravity_exporter_task_*` families, registered once per store
/// ([`crate::metrics::Store::tasks`]).
#[derive(Clone)]
pub struct TaskMetrics {
    /// `gravity_exporter_task_restarts_total{task}`.
    pub restarts: IntCounterVec,
    /// `gravity_exporter_task_up{task}`.
    pub up: IntGaugeVec,
    /// `gravity_exporter_task_cycle_duration_seconds{task}`.
    pub duration: GaugeVec,
    /// `gravity_exporter_task_success{task}`.
    pub success: GaugeVec,
    /// `gravity_exporter_task_last_success_timestamp_seconds{task}`.
    pub last_success: GaugeVec,
}

impl std::fmt::Debug for TaskMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskMetrics").finish_non_exhaustive()
    }
}

impl TaskMetrics {
    /// Registers the families with every known task at 0.
    pub fn register(reg: &Registry) -> TaskMetrics {
        Self::register_known(reg, &TASKS)
    }

    /// Registers the families with the tasks `known` at 0 (those of them that work in
    /// cycles with their cycle series too).
    pub fn register_known(reg: &Registry, known: &[&str]) -> TaskMetrics {
        let restarts = IntCounterVec::new(
            Opts::new(
                "gravity_exporter_task_restarts_total",
                "Background tasks of the exporter restarted after a panic, by task.",
            ),
            &["task"],
        )
        .expect("metric names in this crate are valid");
        let up = IntGaugeVec::new(
            Opts::new(
                "gravity_exporter_task_up",
                "1 while the exporter's background task runs; 0 while it waits to be restarted after a panic, or after shutdown.",
            ),
            &["task"],
        )
        .expect("metric names in this crate are valid");
        let duration = GaugeVec::new(
            Opts::new(
                "gravity_exporter_task_cycle_duration_seconds",
                "How long the background task's last cycle took (watcher: a look at /proc; log: a poll; connections: a probe round; consistency: a check run).",
            ),
            &["task"],
        )
        .expect("metric names in this crate are valid");
        let success = GaugeVec::new(
            Opts::new(
                "gravity_exporter_task_success",
                "1 if the background task's last cycle succeeded, 0 if it failed or none finished yet.",
            ),
            &["task"],
        )
        .expect("metric names in this crate are valid");
        let last_success = GaugeVec::new(
            Opts::new(
                "gravity_exporter_task_last_success_timestamp_seconds",
                "When the background task's last successful cycle ended (Unix time; 0: none yet).",
            ),
            &["task"],
        )
        .expect("metric names in this crate are valid");
        for t in known {
            restarts.with_label_values(&[t]).inc_by(0);
            up.with_label_values(&[t]).set(0);
        }
        for t in CYCLIC_TASKS.iter().filter(|t| known.contains(t)) {
            duration.with_label_values(&[t]).set(0.0);
            success.with_label_values(&[t]).set(0.0);
            last_success.with_label_values(&[t]).set(0.0);
        }
        let _ = reg.register(Box::new(restarts.clone()));
        let _ = reg.register(Box::new(up.clone()));
        let _ = reg.register(Box::new(duration.clone()));
        let _ = reg.register(Box::new(success.clone()));
        let _ = reg.register(Box::new(last_success.clone()));
        TaskMetrics {
            restarts,
            up,
            duration,
            success,
            last_success,
        }
    }

    /// Records one cycle of a task: how long it took and whether it succeeded.
    pub fn cycle(&self, task: &str, took: Duration, ok: bool) {
        self.duration
            .with_label_values(&[task])
            .set(took.as_secs_f64());
        self.success
            .with_label_values(&[task])
            .set(if ok { 1.0 } else { 0.0 });
        if ok {
            self.last_success
                .with_label_values(&[task])
                .set(crate::base::unix_now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipeline_store(name: &str, up: f64, pass: &str) -> Store {
        let s = Store::pipeline();
        let mut f = Families::new();
        f.gauge("gravity_up", "up", &[("pipeline", name)], up);
        f.counter(
            "gravity_exporter_collector_failures_total",
            "failures",
            &[("collector", "status")],
            0.0,
        );
        s.set_snapshot("watch", f);
        s.set_passthrough_families(vec![
            PassFamily {
                name: "go_goroutines".into(),
                text: format!("# HELP go_goroutines Goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines {pass}\n"),
            },
            PassFamily {
                name: "gravity_input_counter".into(),
                text: format!("# TYPE gravity_input_counter counter\ngravity_input_counter{{pipeline=\"g\",type=\"insert\"}} {pass}\n"),
            },
        ]);
        s
    }

    #[test]
    fn several_pipelines_render_one_valid_exposition() {
        let exporter = Store::exporter();
        let a = pipeline_store("alpha", 1.0, "12");
        let b = pipeline_store("beta", 0.0, "7");
        let text = render_fleet(
            &exporter,
            &[
                Part {
                    pipeline: "alpha",
                    store: &a,
                },
                Part {
                    pipeline: "beta",
                    store: &b,
                },
            ],
        );
        // each family declared once, each series once
        for fam in [
            "gravity_exporter_collector_failures_total",
            "go_goroutines",
            "gravity_input_counter",
            "gravity_exporter_dropped_total",
            "gravity_exporter_source_age_seconds",
        ] {
            assert_eq!(
                text.matches(&format!("# TYPE {fam} ")).count(),
                1,
                "{fam}: {text}"
            );
        }
        assert!(text.contains(
            "gravity_exporter_collector_failures_total{collector=\"status\",pipeline=\"alpha\"} 0"
        ));
        assert!(text.contains(
            "gravity_exporter_collector_failures_total{collector=\"status\",pipeline=\"beta\"} 0"
        ));
        // a label already there is kept (gravity_up's, gravity's own)
        assert!(text.contains("gravity_up{pipeline=\"alpha\"} 1"), "{text}");
        assert!(text.contains("gravity_up{pipeline=\"beta\"} 0"), "{text}");
        assert!(
            text.contains("go_goroutines{pipeline=\"alpha\"} 12"),
            "{text}"
        );
        assert!(
            text.contains("go_goroutines{pipeline=\"beta\"} 7"),
            "{text}"
        );
        assert_eq!(
            text.matches("gravity_input_counter{pipeline=\"g\",type=\"insert\"}")
                .count(),
            2
        );
        // the exporter-wide counters once, without a pipeline
        assert_eq!(
            text.matches("gravity_exporter_dropped_total{what=\"api_body\"}")
                .count(),
            1,
            "{text}"
        );
        let mut series = HashSet::new();
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let k = l.rsplit_once(' ').map(|(k, _)| k).unwrap_or(l).to_string();
            // gravity's own series carry gravity's pipeline label ("g" in both here)
            if k.starts_with("gravity_input_counter") {
                continue;
            }
            assert!(series.insert(k.clone()), "twice: {k}");
        }
    }

    /// Today's `render_fleet` before the render cache: `gather_fleet`'s families encoded
    /// whole, then the pass-through.
    fn reference_render(exporter: &Store, parts: &[Part<'_>]) -> String {
        let (mfs, pass) = gather_fleet(Some(exporter), parts);
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&mfs, &mut buf);
        let mut out = String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        if pass.is_empty() {
            return out;
        }
        if out.len().saturating_add(pass.len()) > MAX_EXPOSITION_BYTES {
            count_dropped(Dropped::ExpositionBytes, 1);
            return out;
        }
        out.push_str(&pass);
        out
    }

    /// The text with the values that move between two renders blanked: the sources' ages
    /// (time passes) and the process-wide bound counters (other tests count meanwhile).
    fn steady(text: &str) -> String {
        let moving = [
            "gravity_exporter_source_age_seconds{",
            "gravity_exporter_dropped_total{",
            "gravity_exporter_truncated_total{",
        ];
        text.split_inclusive('\n')
            .map(|l| match l.rsplit_once(' ') {
                Some((k, _)) if moving.iter().any(|m| l.starts_with(m)) => format!("{k} _\n"),
                _ => l.to_string(),
            })
            .collect()
    }

    /// A pipeline's store with a registry family and a snapshot family of one name, a
    /// family several snapshots add to, empty families, a histogram and a pass-through
    /// (one of whose families is named like an own one).
    fn cache_fixture(name: &str, up: f64) -> Store {
        let s = pipeline_store(name, up, "5");
        let shared =
            GaugeVec::new(Opts::new("shared_gauge", "registry's help"), &["from"]).unwrap();
        s.registry().register(Box::new(shared.clone())).unwrap();
        shared.with_label_values(&["registry"]).set(1.0);
        let h = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new("req_seconds", "Requests \\ \"timed\"\nhere.")
                .buckets(vec![0.1, 1.0]),
        )
        .unwrap();
        s.registry().register(Box::new(h.clone())).unwrap();
        h.observe(0.5);
        // no series: the registry leaves it out
        let never = IntCounterVec::new(Opts::new("never_total", "never set"), &["x"]).unwrap();
        s.registry().register(Box::new(never)).unwrap();
        let empty = |n: &str, help: &str| {
            let mut mf = MetricFamily::default();
            mf.set_name(n.to_string());
            mf.set_help(help.to_string());
            mf.set_field_type(MetricType::GAUGE);
            mf
        };
        let mut a = Families::new();
        a.gauge(
            "shared_gauge",
            "snapshot's help",
            &[("from", "snap_a")],
            2.0,
        );
        a.counter("multi_total", "from a", &[("c", "a")], 3.0);
        a.by_name.insert(
            "late_gauge".into(),
            empty("late_gauge", "a's help, no sample"),
        );
        a.by_name
            .insert("empty_gauge".into(), empty("empty_gauge", "never a sample"));
        s.set_snapshot("a", a);
        let mut b = Families::new();
        b.counter("multi_total", "from b", &[("c", "b")], 4.0);
        b.gauge(
            "shared_gauge",
            "b's help",
            &[("from", "snap_b"), ("pipeline", "own")],
            5.0,
        );
        b.gauge("late_gauge", "b's help", &[], 6.0);
        b.gauge("nohelp_gauge", "", &[("q", "a\"b\\c\nd")], 7.5);
        s.set_snapshot("b", b);
        s.set_passthrough_families(vec![
            PassFamily {
                name: "go_goroutines".into(),
                text: "# HELP go_goroutines Goroutines.\n# TYPE go_goroutines gauge\ngo_goroutines 5\n".into(),
            },
            PassFamily {
                name: "multi_total".into(),
                text: "# TYPE multi_total counter\nmulti_total 9\n".into(),
            },
            PassFamily {
                name: "gravity_input_counter".into(),
                text: format!("# TYPE gravity_input_counter counter\ngravity_input_counter{{pipeline=\"{name}\",type=\"insert\"}} 8\n"),
            },
        ]);
        s
    }

    #[test]
    fn the_cached_render_is_the_uncached_one_byte_for_byte() {
        let exporter = Store::exporter();
        let c = prometheus::IntCounter::new("multi_total", "the exporter's own").unwrap();
        exporter.registry().register(Box::new(c.clone())).unwrap();
        c.inc_by(11);
        let mut f = Families::new();
        f.counter(
            "multi_total",
            "exporter's snapshot",
            &[("c", "exporter")],
            12.0,
        );
        exporter.set_snapshot("exp", f);
        let a = cache_fixture("alpha", 1.0);
        let b = cache_fixture("beta", 0.0);
        let dup = cache_fixture("dup", 1.0);
        let parts = |first: &'static str| {
            [
                Part {
                    pipeline: first,
                    store: &a,
                },
                Part {
                    pipeline: "beta",
                    store: &b,
                },
                Part {
                    pipeline: first,
                    store: &dup,
                },
            ]
        };
        let check = |parts: &[Part<'_>]| -> String {
            let want = reference_render(&exporter, parts);
            let got = render_fleet_cached(&exporter, parts).expect("rendered from the cache");
            assert_eq!(steady(&got), steady(&want));
            assert_eq!(steady(&render_fleet(&exporter, parts)), steady(&want));
            got
        };

        let text = check(&parts("alpha"));
        // what the fixture is meant to exercise is there: the exporter's families first,
        // then each pipeline's; registry before snapshots; snapshots in collector order
        let pos = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing: {text}"))
        };
        assert!(pos("multi_total 11\n") < pos("multi_total{c=\"exporter\"} 12\n"));
        assert!(
            pos("multi_total{c=\"exporter\"} 12\n")
                < pos("multi_total{c=\"a\",pipeline=\"alpha\"} 3\n")
        );
        assert!(
            pos("multi_total{c=\"b\",pipeline=\"alpha\"} 4\n")
                < pos("multi_total{c=\"a\",pipeline=\"beta\"} 3\n")
        );
        assert!(
            pos("shared_gauge{from=\"registry\",pipeline=\"alpha\"} 1\n")
                < pos("shared_gauge{from=\"snap_a\",pipeline=\"alpha\"} 2\n")
        );
        assert_eq!(text.matches("# TYPE multi_total counter").count(), 1);
        assert!(text.contains("# HELP multi_total the exporter's own\n"));
        assert!(text.contains("# HELP shared_gauge registry's help\n"));
        assert!(text.contains("# HELP late_gauge a's help, no sample\n"));
        assert!(text.contains("shared_gauge{from=\"snap_b\",pipeline=\"own\"} 5\n"));
        assert!(text.contains("req_seconds_bucket{pipeline=\"beta\",le=\"0.1\"} 0\n"));
        assert!(!text.contains("empty_gauge"));
        assert!(!text.contains("never_total"));
        assert!(!text.contains("multi_total 9"), "own name: left out");
        assert!(text.contains("go_goroutines{pipeline=\"beta\"} 5\n"));
        assert!(!text.contains("pipeline=\"dup\""), "a name taken: left out");

        // nothing changed: the same encoded copy
        let before = a.encoded_snapshots(Some("alpha")).unwrap();
        assert!(Arc::ptr_eq(
            &before,
            &a.encoded_snapshots(Some("alpha")).unwrap()
        ));

        // a new snapshot: rebuilt
        let mut f = Families::new();
        f.counter("multi_total", "from a", &[("c", "a")], 30.0);
        a.set_snapshot("a", f);
        let text = check(&parts("alpha"));
        assert!(
            text.contains("multi_total{c=\"a\",pipeline=\"alpha\"} 30\n"),
            "{text}"
        );
        assert!(!text.contains("multi_total{c=\"a\",pipeline=\"alpha\"} 3\n"));
        assert!(
            !text.contains("shared_gauge{from=\"snap_a\",pipeline=\"alpha\"}"),
            "{text}"
        );
        assert!(!Arc::ptr_eq(
            &before,
            &a.encoded_snapshots(Some("alpha")).unwrap()
        ));

        // another pipeline name: rebuilt with it
        let text = check(&parts("alpha2"));
        assert!(
            text.contains("multi_total{c=\"a\",pipeline=\"alpha2\"} 30\n"),
            "{text}"
        );
        assert!(!text.contains(",pipeline=\"alpha\"}"), "{text}");

        // one pipeline: its pass-through as gravity sent it
        let text = check(&parts("alpha2")[..1]);
        assert!(text.contains("\ngo_goroutines 5\n"), "{text}");
        // the exporter alone
        check(&[]);
    }

    /// A producer that completes one step while the registry is being gathered: it hands
    /// out its observation count as it was, then observes once more and publishes a snapshot
    /// whose arrival counter says so (the canary's order: histogram first, snapshot after).
    struct StepDuringGather {
        store: std::sync::Weak<Store>,
        observed: AtomicU64,
        desc: prometheus::core::Desc,
    }

    impl prometheus::core::Collector for StepDuringGather {
        fn desc(&self) -> Vec<&prometheus::core::Desc> {
            vec![&self.desc]
        }

        fn collect(&self) -> Vec<MetricFamily> {
            let n = self.observed.load(Ordering::SeqCst);
            let mut f = Families::new();
            f.counter("step_observed_total", "observations", &[], n as f64);
            let out = f.into_vec();
            let n = self
                .observed
                .fetch_add(1, Ordering::SeqCst)
                .saturating_add(1);
            if let Some(store) = self.store.upgrade() {
                let mut s = Families::new();
                s.counter("step_arrived_total", "arrivals", &[], n as f64);
                store.set_snapshot("canary", s);
            }
            out
        }
    }

    fn step_store(scope: fn() -> Store) -> Arc<Store> {
        let store = Arc::new(scope());
        let c = StepDuringGather {
            store: Arc::downgrade(&store),
            observed: AtomicU64::new(0),
            desc: prometheus::core::Desc::new(
                "step_observed_total".into(),
                "observations".into(),
                vec![],
                std::collections::HashMap::new(),
            )
            .unwrap(),
        };
        store.registry().register(Box::new(c)).unwrap();
        store
    }

    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| {
                let (series, v) = l.rsplit_once(' ')?;
                (series.split('{').next()? == name).then(|| v.parse().ok())?
            })
            .unwrap_or(0.0)
    }

    #[test]
    fn a_snapshot_is_never_newer_than_the_registry_beside_it() {
        // the whole store (one pipeline, render and the OTLP view of it)
        let store = step_store(Store::new);
        for _ in 0..5 {
            let text = store.render();
            assert!(
                value(&text, "step_arrived_total") <= value(&text, "step_observed_total"),
                "{text}"
            );
        }
        assert_eq!(value(&store.render(), "step_observed_total"), 5.0);
        // a pipeline store in a fleet, from the render cache and without it
        let exporter = Store::exporter();
        let p = step_store(Store::pipeline);
        let parts = [Part {
            pipeline: "p",
            store: &p,
        }];
        for _ in 0..5 {
            for text in [
                render_fleet(&exporter, &parts),
                render_fleet_uncached(&exporter, &parts),
            ] {
                assert!(
                    value(&text, "step_arrived_total") <= value(&text, "step_observed_total"),
                    "{text}"
                );
            }
        }
        let text = render_fleet(&exporter, &parts);
        assert_eq!(value(&text, "step_arrived_total"), 10.0, "{text}");
    }

    #[test]
    fn parts_of_one_name_with_different_types_are_rendered_whole() {
        let exporter = Store::exporter();
        let a = Store::pipeline();
        let c = prometheus::IntCounter::new("clash", "a counter").unwrap();
        a.registry().register(Box::new(c.clone())).unwrap();
        c.inc();
        let mut f = Families::new();
        f.gauge("clash", "a gauge", &[("x", "1")], 2.0);
        a.set_snapshot("s", f);
        let parts = [Part {
            pipeline: "p",
            store: &a,
        }];
        assert!(render_fleet_cached(&exporter, &parts).is_none());
        let text = render_fleet(&exporter, &parts);
        assert_eq!(steady(&text), steady(&reference_render(&exporter, &parts)));
        // the gauge's sample read as the first part's type, as the encoder does
        assert!(text.contains("clash{pipeline=\"p\",x=\"1\"} 0\n"), "{text}");
    }

    #[test]
    fn a_pipeline_named_like_an_earlier_one_is_left_out_and_counted() {
        let exporter = Store::exporter();
        let a = pipeline_store("same", 1.0, "1");
        let before = DROPPED_COUNT[5].load(Ordering::Relaxed);
        let text = render_fleet(
            &exporter,
            &[
                Part {
                    pipeline: "same",
                    store: &a,
                },
                Part {
                    pipeline: "same",
                    store: &a,
                },
            ],
        );
        assert_eq!(
            text.matches("go_goroutines{").count(),
            0,
            "one pipeline: as gravity sent it"
        );
        assert!(text.contains("go_goroutines 1"), "{text}");
        assert!(DROPPED_COUNT[5].load(Ordering::Relaxed) > before);
    }

    #[test]
    fn pass_through_lines_get_the_pipeline_label_once() {
        assert_eq!(label_passthrough_line("up 1", "p"), "up{pipeline=\"p\"} 1");
        assert_eq!(
            label_passthrough_line("x{a=\"1\"} 2 1700", "p"),
            "x{pipeline=\"p\",a=\"1\"} 2 1700"
        );
        assert_eq!(label_passthrough_line("x{} 2", "p"), "x{pipeline=\"p\"} 2");
        assert_eq!(
            label_passthrough_line("x{pipeline=\"g\",a=\"1\"} 2", "p"),
            "x{pipeline=\"g\",a=\"1\"} 2"
        );
        assert_eq!(
            label_passthrough_line("x{a=\"1\",pipeline=\"g\"} 2", "p"),
            "x{a=\"1\",pipeline=\"g\"} 2"
        );
        assert_eq!(escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn snapshot_and_registry_render_sorted() {
        let s = Store::new();
        let c = prometheus::IntCounter::new("b_total", "b help").unwrap();
        s.registry().register(Box::new(c.clone())).unwrap();
        c.inc();
        let mut f = Families::new();
        f.gauge("c_gauge", "c help", &[("x", "1")], 2.5);
        f.counter("a_seconds_total", "a help", &[], 7.0);
        s.set_snapshot("t", f);
        s.set_passthrough("# TYPE z untyped\nz 1\n".into());
        let out = s.render();
        let a = out.find("a_seconds_total 7").unwrap();
        let b = out.find("b_total 1").unwrap();
        let c = out.find("c_gauge{x=\"1\"} 2.5").unwrap();
        assert!(a < b && b < c, "{out}");
        assert!(out.ends_with("z 1\n"));
        assert!(out.contains("# TYPE a_seconds_total counter"));
    }

    #[test]
    fn families_value_lookup() {
        let mut f = Families::new();
        f.gauge("g", "h", &[("a", "1"), ("b", "2")], 3.0);
        f.gauge("g", "h", &[("a", "9")], 4.0);
        assert_eq!(f.value("g", &[("b", "2")]), Some(3.0));
        assert_eq!(f.value("g", &[("a", "9")]), Some(4.0));
        assert_eq!(f.value("g", &[("a", "0")]), None);
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn long_label_values_are_cut_and_counted() {
        let s = Store::new();
        let mut f = Families::new();
        let long = "é".repeat(50_000);
        f.gauge("g_long", "h", &[("stream", long.as_str())], 1.0);
        s.set_snapshot("t", f);
        let out = s.render();
        let line = out.lines().find(|l| l.starts_with("g_long{")).unwrap();
        assert!(line.len() <= 1100, "a line of {} bytes", line.len());
        let cut = out
            .lines()
            .find(|l| l.starts_with("gravity_exporter_truncated_total{what=\"label_value\"}"))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, v)| v.parse::<f64>().ok());
        assert!(cut.is_some_and(|v| v >= 1.0), "{out}");
    }
}
