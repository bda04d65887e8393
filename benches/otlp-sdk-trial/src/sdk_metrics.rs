//! The OTLP metrics path of the trial: the SDK's `SdkMeterProvider` with a `PeriodicReader`
//! at `--otlp.interval`, exporting through `opentelemetry-otlp`'s tonic (gRPC) exporter.
//! Every family the exporter serves is an observable instrument whose callback reads the
//! state (the very families `/metrics` renders, `Fleet::gather_one`) at each collection.
//!
//! What the SDK cannot express (docs/performance.md, "OTLP: own path vs opentelemetry-otlp"):
//!
//! - **Histograms**: the SDK has no observable histogram, and its synchronous one records
//!   single values, so a pre-aggregated Prometheus histogram (bucket counts and a sum) cannot
//!   be handed over. It goes out as the Prometheus series: `<name>_bucket{le}`, `<name>_sum`
//!   and `<name>_count` as monotonic sums.
//! - **Summaries** (pass-through only): `<name>{quantile}` as gauges, `_sum` and `_count` as
//!   monotonic sums.
//! - **Instruments are registered ahead of a collection**, and not from inside one (the
//!   pipeline's lock is held while callbacks run): a family that appears later is registered
//!   after the collection that first saw it and goes out from the next one on.
//! - **One resource per provider**, fixed when it is built: the pipeline name is waited for
//!   at start; several pipelines would need one provider (a reader thread and a gRPC client)
//!   each.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gravity_exporter::config::otlp::OtlpSettings;
use gravity_exporter::fleet::Fleet;
use gravity_exporter::otlp::convert;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::Resource;
use prometheus::proto::{MetricFamily, MetricType};

/// How an instrument goes out.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    /// A monotonic cumulative sum.
    Counter,
    /// A gauge.
    Gauge,
}

/// One instrument's data points of a moment.
struct Series {
    kind: Kind,
    help: String,
    points: Vec<(f64, Vec<KeyValue>)>,
}

/// The state read at one collection: the points of every instrument by name.
#[derive(Default)]
struct Snapshot {
    at: Option<Instant>,
    series: HashMap<String, Series>,
}

/// What the callbacks share: the fleet they read, the snapshot of the current collection,
/// and the names seen but not registered yet.
struct Shared {
    fleet: Arc<Fleet>,
    passthrough: bool,
    /// A snapshot younger than this serves the rest of a collection's callbacks.
    fresh: Duration,
    snapshot: Mutex<Snapshot>,
    /// The names with an instrument.
    registered: Mutex<HashSet<String>>,
    pending: Mutex<Vec<(String, Kind, String)>>,
    wake: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn attrs(m: &prometheus::proto::Metric, extra: Option<(&'static str, String)>) -> Vec<KeyValue> {
    let mut v: Vec<KeyValue> = m
        .get_label()
        .iter()
        .map(|l| KeyValue::new(l.name().to_string(), l.value().to_string()))
        .collect();
    if let Some((k, val)) = extra {
        v.push(KeyValue::new(k, val));
    }
    v
}

/// The families of this moment as instrument series (one pipeline: the exporter's families
/// and the pipeline's, merged by name, as `/metrics` serves them).
fn read_state(fleet: &Fleet, passthrough: bool) -> HashMap<String, Series> {
    let mut families: Vec<MetricFamily> = fleet.gather_one(None).0;
    for ctx in fleet.contexts() {
        let (own, pass) = fleet.gather_one(Some(ctx.as_ref()));
        families.extend(own);
        if passthrough && !pass.is_empty() {
            families.extend(convert::passthrough_families(&pass));
        }
    }
    let mut out: HashMap<String, Series> = HashMap::new();
    let mut put = |name: String, kind: Kind, help: &str, v: f64, a: Vec<KeyValue>| {
        out.entry(name)
            .or_insert_with(|| Series {
                kind,
                help: help.to_string(),
                points: Vec::new(),
            })
            .points
            .push((v, a));
    };
    for mf in &families {
        let (name, help) = (mf.name(), mf.help());
        let sub = |suffix: &str| format!("{name}_{suffix}");
        for m in mf.get_metric() {
            match mf.get_field_type() {
                MetricType::COUNTER => put(
                    name.into(),
                    Kind::Counter,
                    help,
                    m.get_counter().get_value(),
                    attrs(m, None),
                ),
                MetricType::GAUGE | MetricType::UNTYPED => put(
                    name.into(),
                    Kind::Gauge,
                    help,
                    m.get_gauge().get_value(),
                    attrs(m, None),
                ),
                MetricType::HISTOGRAM => {
                    let h = m.get_histogram();
                    for b in h
                        .get_bucket()
                        .iter()
                        .filter(|b| b.upper_bound().is_finite())
                    {
                        let le = Some(("le", b.upper_bound().to_string()));
                        let c = b.cumulative_count() as f64;
                        put(sub("bucket"), Kind::Counter, help, c, attrs(m, le));
                    }
                    let inf = Some(("le", "+Inf".to_string()));
                    let count = h.get_sample_count() as f64;
                    put(sub("bucket"), Kind::Counter, help, count, attrs(m, inf));
                    put(sub("count"), Kind::Counter, help, count, attrs(m, None));
                    let sum = h.get_sample_sum();
                    put(sub("sum"), Kind::Counter, help, sum, attrs(m, None));
                }
                MetricType::SUMMARY => {
                    let s = m.get_summary();
                    for q in s.get_quantile() {
                        let quantile = Some(("quantile", q.quantile().to_string()));
                        put(
                            name.into(),
                            Kind::Gauge,
                            help,
                            q.value(),
                            attrs(m, quantile),
                        );
                    }
                    let count = s.sample_count() as f64;
                    put(sub("count"), Kind::Counter, help, count, attrs(m, None));
                    put(
                        sub("sum"),
                        Kind::Counter,
                        help,
                        s.sample_sum(),
                        attrs(m, None),
                    );
                }
            }
        }
    }
    out
}

impl Shared {
    /// The points of `name` at this collection: the first callback of a collection reads the
    /// state (and counts as a reader, like a scrape), the others reuse what it read.
    fn points(&self, name: &str, each: &mut dyn FnMut(f64, &[KeyValue])) {
        let mut snap = lock(&self.snapshot);
        if snap.at.is_none_or(|t| t.elapsed() > self.fresh) {
            self.fleet.mark_read();
            snap.series = read_state(&self.fleet, self.passthrough);
            snap.at = Some(Instant::now());
            self.note_new(&snap.series);
        }
        if let Some(s) = snap.series.get(name) {
            for (v, a) in &s.points {
                each(*v, a);
            }
        }
    }

    /// Queues the names not registered yet for the registering task.
    fn note_new(&self, series: &HashMap<String, Series>) {
        let registered = lock(&self.registered);
        let new: Vec<(String, Kind, String)> = series
            .iter()
            .filter(|(n, _)| !registered.contains(*n))
            .map(|(n, s)| (n.clone(), s.kind, s.help.clone()))
            .collect();
        if !new.is_empty() {
            lock(&self.pending).extend(new);
            self.wake.notify_one();
        }
    }
}

/// Registers one observable instrument reading `name` from the shared snapshot.
fn register(meter: &Meter, shared: &Arc<Shared>, name: String, kind: Kind, help: String) {
    let unit = convert::unit_of(&name);
    let s = Arc::clone(shared);
    let n = name.clone();
    match kind {
        Kind::Counter => {
            meter
                .f64_observable_counter(name)
                .with_description(help)
                .with_unit(unit)
                .with_callback(move |o| s.points(&n, &mut |v, a| o.observe(v, a)))
                .build();
        }
        Kind::Gauge => {
            meter
                .f64_observable_gauge(name)
                .with_description(help)
                .with_unit(unit)
                .with_callback(move |o| s.points(&n, &mut |v, a| o.observe(v, a)))
                .build();
        }
    }
}

/// The running SDK metrics path.
pub struct SdkMetrics {
    /// The provider, shut down (last export included) at the end.
    pub provider: SdkMeterProvider,
}

/// Builds the exporter, the provider and the instruments of the families known now; a task
/// registers the instruments of families that appear later. Must run inside the tokio
/// runtime (tonic's channel).
pub async fn start(fleet: &Arc<Fleet>, o: &OtlpSettings) -> anyhow::Result<SdkMetrics> {
    let mut exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(o.endpoint.clone())
        .with_timeout(o.timeout);
    if !o.headers.is_empty() {
        let mut md = tonic::metadata::MetadataMap::new();
        for (k, v) in &o.headers {
            let key = tonic::metadata::MetadataKey::from_bytes(k.as_bytes())?;
            md.insert(key, v.expose().parse()?);
        }
        exporter = exporter.with_metadata(md);
    }
    let reader = PeriodicReader::builder(exporter.build()?)
        .with_interval(o.interval)
        .build();
    // the resource is fixed when the provider is built: wait (a while) for the pipeline name
    let port = fleet.settings().listen.port();
    let mut pipeline = String::new();
    for _ in 0..50 {
        pipeline = fleet
            .contexts()
            .first()
            .map(|c| c.target().pipeline.clone())
            .unwrap_or_default();
        if !pipeline.is_empty() && pipeline != "unknown" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let attributes =
        gravity_exporter::otlp::resource_attributes(&pipeline, port, &|k| std::env::var(k).ok());
    let resource = Resource::builder_empty()
        .with_attributes(attributes.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .build();
    let provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .build();
    let scope = InstrumentationScope::builder(gravity_exporter::otlp::SCOPE)
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let meter = provider.meter_with_scope(scope);
    let shared = Arc::new(Shared {
        fleet: Arc::clone(fleet),
        passthrough: o.passthrough,
        fresh: o.interval.checked_div(2).unwrap_or(o.interval),
        snapshot: Mutex::default(),
        registered: Mutex::default(),
        pending: Mutex::default(),
        wake: tokio::sync::Notify::new(),
    });
    for (name, s) in read_state(fleet, o.passthrough) {
        lock(&shared.registered).insert(name.clone());
        register(&meter, &shared, name, s.kind, s.help);
    }
    tokio::spawn(async move {
        loop {
            shared.wake.notified().await;
            let new: Vec<(String, Kind, String)> = lock(&shared.pending).drain(..).collect();
            for (name, kind, help) in new {
                if lock(&shared.registered).insert(name.clone()) {
                    // the pipeline's lock is held while a collection runs: off the runtime
                    let (m, s) = (meter.clone(), Arc::clone(&shared));
                    let _ = tokio::task::spawn_blocking(move || register(&m, &s, name, kind, help))
                        .await;
                }
            }
        }
    });
    Ok(SdkMetrics { provider })
}
