//! OpenTelemetry export (off by default; docs/opentelemetry.md).
//!
//! - **Metrics**: every `--otlp.interval` the store's families of that moment (the very
//!   ones `/metrics` renders, [`crate::metrics::Store::gather`]) are converted
//!   ([`convert`]) and sent; gravity's pass-through families too with `--otlp.passthrough`.
//! - **Logs**: each gravity log record the log watcher classifies becomes a [`logs::LogEntry`],
//!   handed over without waiting (bounded channels, rate limit; drops counted) to the OTLP
//!   log exporter and to the `--log-entries.file` writer.
//! - **Traces**: a tracer provider on the same settings, installed as the global one, so
//!   `opentelemetry::global::tracer("gravity-exporter")` spans are exported; the
//!   exporter's own slow operations become spans ([`crate::spans::slow_operation`]).
//!
//! Nothing of it runs while OTLP and `--log-entries.file` are off: no task, no thread, no
//! metric. An unreachable or slow collector costs each export its `--otlp.timeout`, never a
//! scrape or a collection; failures are counted in
//! `gravity_exporter_otlp_export_failures_total{signal}` and logged once per change of state.
#![warn(clippy::arithmetic_side_effects)]

pub mod convert;
pub mod logs;
pub use crate::config::otlp as settings;
pub mod trace;
pub mod transport;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{ResourceMetrics, ScopeMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::{IntCounterVec, Opts};

use crate::base::{BoxFuture, Tasks};
use crate::collector::Context;
use crate::fleet::Fleet;
use settings::OtlpSettings;
use transport::{ExportError, Payload, Signal, Transport};

/// The instrumentation scope of everything the exporter sends.
pub use crate::spans::SCOPE;

pub use crate::base::unix_nanos;

/// The `gravity_exporter_otlp_*` families (registered only while OTLP or the LogEntry file is on).
#[derive(Clone)]
pub struct OtlpMetrics {
    /// `gravity_exporter_otlp_exports_total{signal}`.
    pub exports: IntCounterVec,
    /// `gravity_exporter_otlp_export_failures_total{signal}`.
    pub failures: IntCounterVec,
    /// `gravity_exporter_otlp_dropped_total{signal}`.
    pub dropped: IntCounterVec,
}

impl OtlpMetrics {
    fn register(store: &crate::metrics::Store) -> OtlpMetrics {
        let vec = |name: &str, help: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &["signal"])
                .expect("metric names in this crate are valid");
            for s in Signal::ALL {
                v.with_label_values(&[s.as_str()]).inc_by(0);
            }
            let _ = store.registry().register(Box::new(v.clone()));
            v
        };
        OtlpMetrics {
            exports: vec(
                "gravity_exporter_otlp_exports_total",
                "OTLP export requests the collector accepted, by signal (metrics, logs, traces).",
            ),
            failures: vec(
                "gravity_exporter_otlp_export_failures_total",
                "OTLP export requests that failed (unreachable, timed out, refused), by signal.",
            ),
            dropped: vec(
                "gravity_exporter_otlp_dropped_total",
                "Records not exported, by signal: logs over the rate limit or a full queue, log records and spans of failed exports, spans the batch processor dropped.",
            ),
        }
    }
}

impl std::fmt::Debug for OtlpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpMetrics").finish_non_exhaustive()
    }
}

/// Export outcome bookkeeping shared by the three signals: counters, and one log line per
/// change of state (failing ↔ working) per signal.
#[derive(Debug)]
pub struct Outcomes {
    metrics: OtlpMetrics,
    failing: [AtomicBool; 3],
}

impl Outcomes {
    fn index(s: Signal) -> usize {
        match s {
            Signal::Logs => 0,
            Signal::Metrics => 1,
            Signal::Traces => 2,
        }
    }

    /// Counts one export and logs a change of state.
    pub fn record(&self, signal: Signal, result: &Result<(), ExportError>, records: u64) {
        let l = [signal.as_str()];
        let flag = &self.failing[Self::index(signal)];
        match result {
            Ok(()) => {
                self.metrics.exports.with_label_values(&l).inc();
                if flag.swap(false, Ordering::Relaxed) {
                    tracing::info!(signal = signal.as_str(), "OTLP export works again");
                }
            }
            Err(e) => {
                self.metrics.failures.with_label_values(&l).inc();
                if signal != Signal::Metrics {
                    self.metrics.dropped.with_label_values(&l).inc_by(records);
                }
                if !flag.swap(true, Ordering::Relaxed) {
                    // the error never carries a header value (transport::ExportError)
                    tracing::warn!(signal = signal.as_str(), error = %e, "OTLP export failing; counting failures in gravity_exporter_otlp_export_failures_total until it works again");
                }
            }
        }
    }

    /// Counts records dropped before an export.
    pub fn dropped(&self, signal: Signal, n: u64) {
        self.metrics
            .dropped
            .with_label_values(&[signal.as_str()])
            .inc_by(n);
    }
}

/// The running telemetry export: present only while OTLP or `--log-entries.file` is on.
pub struct Telemetry {
    /// Export counters and state.
    pub outcomes: Arc<Outcomes>,
    /// The OTLP side (`None`: only `--log-entries.file`).
    otlp: Option<Arc<OtlpSide>>,
    /// Where classified log records go.
    pub logs: logs::LogSink,
    /// The pipelines whose metrics are exported.
    fleet: Arc<Fleet>,
}

struct OtlpSide {
    settings: OtlpSettings,
    transport: Arc<Transport>,
    start_unix_nano: u64,
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("otlp", &self.otlp.is_some())
            .finish_non_exhaustive()
    }
}

/// The host name (`/proc/sys/kernel/hostname`, else `$HOSTNAME`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| crate::base::cut(&s, 255).to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Kubernetes attributes from the downward-API environment variables, when present.
const K8S_ENV: [(&str, [&str; 2]); 5] = [
    ("k8s.pod.name", ["K8S_POD_NAME", "POD_NAME"]),
    (
        "k8s.namespace.name",
        ["K8S_NAMESPACE_NAME", "POD_NAMESPACE"],
    ),
    ("k8s.node.name", ["K8S_NODE_NAME", "NODE_NAME"]),
    ("k8s.pod.uid", ["K8S_POD_UID", "POD_UID"]),
    (
        "k8s.container.name",
        ["K8S_CONTAINER_NAME", "CONTAINER_NAME"],
    ),
];

/// The resource attributes: `service.name=gravity`, `service.instance.id`, `host.name`,
/// `gravity.pipeline`, Kubernetes attributes from the downward API; then
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` override (the OTel spec's order).
pub fn resource_attributes(
    pipeline: &str,
    listen_port: u16,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let host = host_name();
    let mut attrs: Vec<(String, String)> = vec![
        ("service.name".into(), "gravity".into()),
        ("host.name".into(), host.clone()),
        ("gravity.pipeline".into(), pipeline.to_string()),
        ("telemetry.sdk.language".into(), "rust".into()),
        ("service.version".into(), env!("CARGO_PKG_VERSION").into()),
    ];
    let mut pod = None;
    for (key, vars) in K8S_ENV {
        if let Some(v) = vars
            .iter()
            .find_map(|k| env(k))
            .filter(|v| !v.trim().is_empty())
        {
            let v = crate::base::cut(v.trim(), 255).to_string();
            if key == "k8s.pod.name" {
                pod = Some(v.clone());
            }
            attrs.push((key.into(), v));
        }
    }
    let instance = format!("{}:{listen_port}", pod.unwrap_or(host));
    attrs.push(("service.instance.id".into(), instance));
    let set = |attrs: &mut Vec<(String, String)>, k: String, v: String| match attrs
        .iter_mut()
        .find(|(ek, _)| *ek == k)
    {
        Some(e) => e.1 = v,
        None => attrs.push((k, v)),
    };
    if let Some(raw) = env("OTEL_RESOURCE_ATTRIBUTES") {
        // key=value pairs, values percent-encoded; at most 64, each cut to 255 bytes
        if let Ok(pairs) = settings::parse_headers("OTEL_RESOURCE_ATTRIBUTES", &raw) {
            for (k, v) in pairs.into_iter().take(64) {
                let v = crate::base::cut(v.expose(), 255).to_string();
                set(&mut attrs, k, v);
            }
        } else {
            tracing::warn!("OTEL_RESOURCE_ATTRIBUTES is not a list of key=value pairs; ignored");
        }
    }
    if let Some(name) = env("OTEL_SERVICE_NAME").filter(|v| !v.trim().is_empty()) {
        set(
            &mut attrs,
            "service.name".into(),
            crate::base::cut(name.trim(), 255).to_string(),
        );
    }
    attrs
}

fn proto_resource(attrs: &[(String, String)]) -> Resource {
    Resource {
        attributes: attrs.iter().map(|(k, v)| convert::kv(k, v)).collect(),
        ..Default::default()
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE.into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The resource of one pipeline (`""`: the exporter's own families, which belong to no
/// pipeline when it watches several).
fn resource_of(pipeline: &str, port: u16) -> Resource {
    let mut attrs = resource_attributes(pipeline, port, &|k| std::env::var(k).ok());
    if pipeline.is_empty() {
        attrs.retain(|(k, _)| k != "gravity.pipeline");
    }
    proto_resource(&attrs)
}

/// One resource's part of a metrics export: its families and gravity's pass-through text.
pub struct ResourcePart {
    /// The resource.
    pub resource: Resource,
    /// The families ([`crate::fleet::Fleet::gather_one`]).
    pub families: Vec<prometheus::proto::MetricFamily>,
    /// The pass-through text (empty: none).
    pub passthrough: String,
}

/// The metrics export request of this moment: one resource per pipeline (its families, and
/// the pass-through with `passthrough`), converted. CPU work: runs on the blocking pool.
pub fn metrics_request(
    parts: Vec<ResourcePart>,
    passthrough: bool,
    start_unix_nano: u64,
) -> ExportMetricsServiceRequest {
    let times = convert::Times {
        start_unix_nano,
        now_unix_nano: unix_nanos(SystemTime::now()),
    };
    let resource_metrics = parts
        .into_iter()
        .map(|part| {
            let mut fams = part.families;
            if passthrough && !part.passthrough.is_empty() {
                fams.extend(convert::passthrough_families(&part.passthrough));
            }
            let metrics = fams
                .iter()
                .filter_map(|mf| convert::metric(mf, times))
                .collect();
            ResourceMetrics {
                resource: Some(part.resource),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest { resource_metrics }
}

/// The parts of this moment: with one pipeline, one resource holding everything (as
/// `/metrics` serves it); with several, one per pipeline and one for the exporter's own.
fn fleet_parts(fleet: &Fleet) -> Vec<ResourcePart> {
    let port = fleet.settings().listen.port();
    let ctxs = fleet.contexts();
    if let [only] = ctxs.as_slice() {
        let (mut families, _) = fleet.gather_one(None);
        let (own, passthrough) = fleet.gather_one(Some(only));
        families.extend(own);
        return vec![ResourcePart {
            families: merge_families(families),
            resource: resource_of(&only.target().pipeline, port),
            passthrough,
        }];
    }
    let (families, passthrough) = fleet.gather_one(None);
    let mut parts = vec![ResourcePart {
        resource: resource_of("", port),
        families,
        passthrough,
    }];
    for c in &ctxs {
        let (families, passthrough) = fleet.gather_one(Some(c));
        parts.push(ResourcePart {
            resource: resource_of(&c.target().pipeline, port),
            families,
            passthrough,
        });
    }
    parts
}

/// Families sorted by name, those of one name (the exporter's own and a pipeline's
/// series of one family, such as `gravity_exporter_task_restarts_total`) merged into one,
/// as `/metrics` serves them.
fn merge_families(
    mut families: Vec<prometheus::proto::MetricFamily>,
) -> Vec<prometheus::proto::MetricFamily> {
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out: Vec<prometheus::proto::MetricFamily> = Vec::with_capacity(families.len());
    for mf in families {
        match out.last_mut() {
            Some(last) if last.name() == mf.name() => {
                last.mut_metric().extend(mf.get_metric().iter().cloned());
            }
            _ => out.push(mf),
        }
    }
    out
}

/// Sets the telemetry export up when `--otlp.*` or `--log-entries.file` asks for it, with
/// the tasks the application runs under its supervisor (`otlp_metrics`, `otlp_logs`,
/// `log_entries`). `None` (nothing set up, nothing registered) while both are off.
pub fn start(ctx: &Arc<Context>, fleet: &Arc<Fleet>) -> Option<(Arc<Telemetry>, Tasks)> {
    let s = ctx.settings();
    let t = &s.telemetry;
    if t.otlp.is_none() && t.log_entries.is_none() {
        return None;
    }
    let outcomes = Arc::new(Outcomes {
        metrics: OtlpMetrics::register(&fleet.exporter),
        failing: Default::default(),
    });
    for (k, _) in t.otlp.iter().flat_map(|o| o.headers.iter()) {
        tracing::debug!(header = %k, "OTLP header configured (value not logged)");
    }
    for (_, v) in t.otlp.iter().flat_map(|o| o.headers.iter()) {
        crate::redact::register_secret(v.expose());
    }
    let otlp = match &t.otlp {
        None => None,
        Some(o) => match Transport::new(o) {
            Ok(tr) => {
                let transport = Arc::new(tr);
                let tracer = trace::install(ctx, o, Arc::clone(&transport), Arc::clone(&outcomes));
                Some(Arc::new(OtlpSide {
                    settings: o.clone(),
                    transport,
                    start_unix_nano: unix_nanos(SystemTime::now()),
                    tracer: Some(tracer),
                }))
            }
            Err(e) => {
                // validated at start, so only a file that vanished since gets here
                tracing::error!(error = %e, "OTLP export cannot be set up; it stays off");
                None
            }
        },
    };
    let mut tasks = Tasks::new();
    let logs = logs::LogSink::start(
        ctx,
        &mut tasks,
        t,
        otlp.as_ref()
            .map(|o| (Arc::clone(&o.transport), o.settings.logs)),
        Arc::clone(&outcomes),
    );
    if let Some(o) = &otlp {
        tracing::info!(endpoint = %o.settings.endpoint, protocol = o.settings.protocol.as_str(), interval_ms = u64::try_from(o.settings.interval.as_millis()).unwrap_or(u64::MAX), "exporting over OTLP");
        let o = Arc::clone(o);
        let fleet = Arc::clone(fleet);
        let out = Arc::clone(&outcomes);
        tasks.push((
            "otlp_metrics",
            Box::new(move || {
                Box::pin(metrics_loop(
                    Arc::clone(&fleet),
                    Arc::clone(&o),
                    Arc::clone(&out),
                )) as BoxFuture<()>
            }),
        ));
    }
    let telemetry = Arc::new(Telemetry {
        outcomes,
        otlp,
        logs,
        fleet: Arc::clone(fleet),
    });
    Some((telemetry, tasks))
}

async fn export_metrics(fleet: &Arc<Fleet>, o: &OtlpSide, out: &Outcomes) {
    // An OTLP export is a reader like a scrape: collection follows its pace.
    fleet.mark_read_by(crate::collector::Reader::Otlp);
    let f = Arc::clone(fleet);
    let pass = o.settings.passthrough;
    let start = o.start_unix_nano;
    let Ok(req) =
        tokio::task::spawn_blocking(move || metrics_request(fleet_parts(&f), pass, start)).await
    else {
        return;
    };
    let res = o.transport.send(Payload::Metrics(req)).await;
    out.record(Signal::Metrics, &res, 0);
}

async fn metrics_loop(fleet: Arc<Fleet>, o: Arc<OtlpSide>, out: Arc<Outcomes>) {
    let mut tick = tokio::time::interval(o.settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // the first tick is immediate: wait one interval so the first export has collected data
    tick.tick().await;
    loop {
        tick.tick().await;
        // one export at a time: a slow collector delays the next one, never piles them up
        export_metrics(&fleet, &o, &out).await;
    }
}

impl Telemetry {
    /// The last export at shutdown, within `budget`: the metrics of this moment, the log
    /// records still queued, the spans the batch processor holds. Called after the
    /// supervisor stopped the tasks.
    pub async fn flush(&self, budget: Duration) {
        let work = async {
            self.logs.flush().await;
            if let Some(o) = &self.otlp {
                export_metrics(&self.fleet, o, &self.outcomes).await;
            }
        };
        if tokio::time::timeout(budget, work).await.is_err() {
            tracing::warn!(
                budget_ms = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX),
                "OTLP flush at shutdown did not finish in time"
            );
        }
        if let Some(tp) = self.otlp.as_ref().and_then(|o| o.tracer.clone()) {
            trace::uninstall();
            let half = budget.checked_div(2).unwrap_or(budget);
            let _ = tokio::task::spawn_blocking(move || tp.shutdown_with_timeout(half)).await;
        }
    }
}

/// Attribute list helper for callers building proto records.
pub fn attrs(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs.iter().map(|(k, v)| convert::kv(k, v)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_of_one_name_merge_into_one() {
        let fam = |name: &str, n: usize| {
            let mut mf = prometheus::proto::MetricFamily::default();
            mf.set_name(name.to_string());
            for _ in 0..n {
                mf.mut_metric().push(prometheus::proto::Metric::default());
            }
            mf
        };
        let merged = merge_families(vec![fam("b", 2), fam("a", 1), fam("b", 3)]);
        let got: Vec<(String, usize)> = merged
            .iter()
            .map(|m| (m.name().to_string(), m.get_metric().len()))
            .collect();
        assert_eq!(got, vec![("a".to_string(), 1), ("b".to_string(), 5)]);
    }

    #[test]
    fn resource_has_the_service_and_k8s_attributes_and_env_overrides() {
        let env = |k: &str| match k {
            "POD_NAME" => Some("gravity-0".to_string()),
            "POD_NAMESPACE" => Some("etl".to_string()),
            "OTEL_RESOURCE_ATTRIBUTES" => {
                Some("deployment.environment=prod,team=data%20eng".to_string())
            }
            _ => None,
        };
        let a = resource_attributes("p1", 9810, &env);
        let get = |k: &str| a.iter().find(|(ek, _)| ek == k).map(|(_, v)| v.as_str());
        assert_eq!(get("service.name"), Some("gravity"));
        assert_eq!(get("service.instance.id"), Some("gravity-0:9810"));
        assert_eq!(get("k8s.pod.name"), Some("gravity-0"));
        assert_eq!(get("k8s.namespace.name"), Some("etl"));
        assert_eq!(get("gravity.pipeline"), Some("p1"));
        assert_eq!(get("team"), Some("data eng"));
        assert_eq!(get("deployment.environment"), Some("prod"));
        assert!(get("host.name").is_some());
        let env2 = |k: &str| (k == "OTEL_SERVICE_NAME").then(|| "g2".to_string());
        let a = resource_attributes("p1", 1, &env2);
        assert!(a.contains(&("service.name".into(), "g2".into())));
    }
}
