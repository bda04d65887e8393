//! The tracer provider over OTLP: installed as the global provider (so other code's
//! `opentelemetry::global::tracer("gravity-exporter")` spans are exported), the exporter's
//! slow operations as spans with their outcome, and the spans still queued at shutdown
//! flushed by the drain. Its own test binary: the provider is process-global, so the tests
//! of this binary run one at a time ([`SERIAL`]).
//!
//! And the canary's traces end to end: the exporter against the gravity double and two
//! real MariaDB servers in replication (tests/common/replica.rs) exports one trace per
//! canary to the tests' receiver, with the row's trace id, and LogEntry records about the
//! canary with the same ids.

mod common;
#[path = "common/mariadb.rs"]
mod mariadb;
#[path = "common/replica.rs"]
mod replica;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gravity_double::otlp::{Mode, Receiver};
use opentelemetry::trace::{Span, Tracer, TracerProvider};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;

fn spans(rx: &Receiver) -> Vec<(BTreeMap<String, String>, ProtoSpan)> {
    rx.received()
        .traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| {
            let res: BTreeMap<String, String> = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                    _ => None,
                })
                .collect();
            rs.scope_spans
                .iter()
                .flat_map(|s| s.spans.clone())
                .map(move |s| (res.clone(), s))
        })
        .collect()
}

/// The global tracer provider is the process's: one test at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_tracer_and_slow_operations_are_exported_and_flushed_at_shutdown() {
    let _one_at_a_time = SERIAL.lock().await;
    let rx = Receiver::grpc(Mode::Accept).await;
    let ep = rx.endpoint();
    let status =
        std::fs::read_to_string(common::fixtures().join("status-incremental.json")).unwrap();
    let api = common::stub_routes(
        vec![("/status", 200, status), ("/healthz", 200, String::new())],
        404,
    )
    .await;
    let url = format!("http://{api}");
    let proc_root = common::fixtures().join("proc");
    let r = common::start(common::settings(&[
        "--path.procfs",
        proc_root.to_str().unwrap(),
        "--gravity.pid",
        "4242",
        "--gravity.url",
        &url,
        "--probe.interval",
        "0s",
        "--gravity.log-state-file",
        "none",
        "--collector.interval",
        "200ms",
        "--otlp.endpoint",
        &ep,
        // every collector cycle is "slow"
        "--otlp.slow-threshold",
        "0s",
    ]))
    .await;
    // a span of other code through the global provider (as the canary will make them)
    {
        let tracer = opentelemetry::global::tracer_provider().tracer("gravity-exporter");
        let mut span = tracer.start("canary round trip");
        span.set_attribute(opentelemetry::KeyValue::new("canary.table", "shop.canary"));
        span.end();
    }
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "spans never arrived"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let got = spans(&rx);
        let canary = got.iter().any(|(_, s)| s.name == "canary round trip");
        let cycle = got.iter().find(|(_, s)| s.name == "collector cycle");
        if let (true, Some((res, s))) = (canary, cycle) {
            assert_eq!(res.get("service.name").map(String::as_str), Some("gravity"));
            let outcome =
                s.attributes
                    .iter()
                    .find(|kv| kv.key == "outcome")
                    .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                        any_value::Value::StringValue(v) => Some(v.clone()),
                        _ => None,
                    });
            assert_eq!(outcome.as_deref(), Some("success"));
            assert!(s.end_time_unix_nano >= s.start_time_unix_nano);
            assert_eq!(s.trace_id.len(), 16);
            break;
        }
    }
    // a span ended right before the shutdown is flushed by the drain (the batch processor
    // would otherwise wait its 5 s schedule)
    {
        let tracer = opentelemetry::global::tracer_provider().tracer("gravity-exporter");
        let mut span = tracer.start("last words");
        span.end();
    }
    let report = r.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");
    assert!(
        spans(&rx).iter().any(|(_, s)| s.name == "last words"),
        "the span queued at shutdown was not flushed"
    );
    // after the shutdown the global provider is a no-op again: nothing more is sent
    let n = rx.received().traces.len();
    {
        let tracer = opentelemetry::global::tracer_provider().tracer("gravity-exporter");
        tracer.start("after shutdown").end();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.received().traces.len(), n);
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    let kv = attrs.iter().find(|kv| kv.key == key)?;
    Some(match kv.value.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One trace per canary, received over OTLP/gRPC from the exporter running against the
/// gravity double and a real MariaDB replica: root `gravity.canary` with `source.write`,
/// `gravity.input`, `gravity.output` (or one `gravity` span) as its children, the db.*,
/// stage and queue attributes; the trace id and root span id are the row's at the target;
/// the exporter's LogEntry records about the canary carry the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_traces_arrive_with_the_row_ids_and_the_log_entries_correlate() {
    let _one_at_a_time = SERIAL.lock().await;
    if !mariadb::require() {
        return;
    }
    let path = replica::DataPath::start().await;
    let rx = Receiver::grpc(Mode::Accept).await;
    let ep = rx.endpoint();
    let mut flags = path.exporter_flags("1s", "30s");
    flags.extend(["--otlp.endpoint", &ep, "--otlp.interval", "1s"].map(String::from));
    let run = common::start(common::settings(&common::owned(&flags))).await;
    let addr = run.addr;
    let pipeline = format!("pipeline=\"{}\"", replica::PIPELINE);
    common::wait_metrics(
        addr,
        Duration::from_secs(90),
        "three canaries never arrived",
        |b| common::sample(b, "gravity_canary_arrived_total", &[&pipeline]).unwrap_or(0.0) >= 3.0,
    )
    .await;
    // the row at the target now, and wait until the exporter has seen that one arrive (the
    // status page lists it by its trace id)
    let mut r = path.replica.root().await;
    let rs = r
        .query("SELECT seq, trace_id, span_id FROM gravity_canary.heartbeat")
        .await
        .unwrap();
    assert_eq!(rs.rows.len(), 1, "one row per pipeline");
    let row_seq = rs.value(0, "seq").unwrap().to_string();
    let row_trace = rs.value(0, "trace_id").unwrap().to_string();
    let row_span = rs.value(0, "span_id").unwrap().to_string();
    let seen = common::wait_for(Duration::from_secs(30), || async {
        common::get(addr, "/api/status")
            .await
            .1
            .contains(&row_trace)
    })
    .await;
    assert!(
        seen.is_some(),
        "the exporter never saw canary {row_seq} arrive"
    );
    // the shutdown flushes the spans and the log records still queued
    let report = run.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");

    let got = spans(&rx);
    let mut traces: BTreeMap<String, Vec<ProtoSpan>> = BTreeMap::new();
    for (res, s) in got {
        assert_eq!(res.get("service.name").map(String::as_str), Some("gravity"));
        traces.entry(hex(&s.trace_id)).or_default().push(s);
    }
    let mut seqs = std::collections::BTreeSet::new();
    let mut arrived = 0;
    for (trace, spans) in &traces {
        let roots: Vec<_> = spans
            .iter()
            .filter(|s| s.name == "gravity.canary")
            .collect();
        if roots.is_empty() {
            continue; // a slow-operation span of its own trace
        }
        assert_eq!(roots.len(), 1, "trace {trace}: {spans:#?}");
        let root = roots[0];
        assert!(root.parent_span_id.is_empty(), "the root has no parent");
        let seq = attr(&root.attributes, "canary.seq").expect("canary.seq");
        assert!(seqs.insert(seq.clone()), "canary {seq} in two traces");
        assert_eq!(
            attr(&root.attributes, "canary.table").as_deref(),
            Some("gravity_canary.heartbeat")
        );
        assert_eq!(
            attr(&root.attributes, "gravity.pipeline").as_deref(),
            Some(replica::PIPELINE)
        );
        let outcome = attr(&root.attributes, "canary.outcome");
        if outcome.as_deref() != Some("arrived") {
            continue;
        }
        arrived += 1;
        let mut names: Vec<&str> = spans
            .iter()
            .filter(|s| s.name != "gravity.canary")
            .map(|s| s.name.as_str())
            .collect();
        names.sort();
        assert!(
            names == ["gravity.input", "gravity.output", "source.write"]
                || names == ["gravity", "source.write"],
            "trace {trace}: children {names:?}"
        );
        for c in spans.iter().filter(|s| s.name != "gravity.canary") {
            assert_eq!(c.parent_span_id, root.span_id, "{} under the root", c.name);
            assert!(
                c.start_time_unix_nano >= root.start_time_unix_nano,
                "{}",
                c.name
            );
            assert!(
                c.end_time_unix_nano <= root.end_time_unix_nano,
                "{}",
                c.name
            );
        }
        let write = spans.iter().find(|s| s.name == "source.write").unwrap();
        assert_eq!(
            attr(&write.attributes, "db.system.name").as_deref(),
            Some("mysql")
        );
        assert_eq!(
            attr(&write.attributes, "db.namespace").as_deref(),
            Some("gravity_canary")
        );
        assert_eq!(
            attr(&write.attributes, "db.collection.name").as_deref(),
            Some("heartbeat")
        );
        let lag: f64 = attr(&root.attributes, "canary.e2e_lag_seconds")
            .expect("canary.e2e_lag_seconds")
            .parse()
            .unwrap();
        assert!(lag > 0.0 && lag < 30.0, "lag {lag}");
    }
    assert!(
        arrived >= 3,
        "{arrived} arrived canaries traced of {}",
        traces.len()
    );

    // the canary at the target: its trace, under the row's ids
    let spans = traces
        .get(&row_trace)
        .unwrap_or_else(|| panic!("no trace {row_trace} (the row's) among {:?}", traces.keys()));
    let root = spans.iter().find(|s| s.name == "gravity.canary").unwrap();
    assert_eq!(
        hex(&root.span_id),
        row_span,
        "the row holds the root span id"
    );
    assert_eq!(attr(&root.attributes, "canary.seq"), Some(row_seq.clone()));
    assert_eq!(
        attr(&root.attributes, "canary.outcome").as_deref(),
        Some("arrived")
    );
    // gravity's stage latencies (interval aggregates) and queue lengths, from the double's
    // /metrics of that moment
    assert!(
        attr(&root.attributes, "gravity.stages.aggregation").is_some(),
        "{:?}",
        root.attributes
    );
    for stage in [
        "input",
        "emitter",
        "scheduler_submit",
        "scheduler_ack",
        "output",
    ] {
        let mean: f64 = attr(
            &root.attributes,
            &format!("gravity.stage.{stage}.mean_seconds"),
        )
        .unwrap_or_else(|| panic!("no {stage} latency"))
        .parse()
        .unwrap();
        assert!(mean >= 0.0, "{stage} {mean}");
    }
    assert!(attr(&root.attributes, "gravity.stage.slowest").is_some());
    for q in [
        "input_buffer",
        "table_buffer",
        "table_latch",
        "table_latch_ack",
        "table_queue",
        "worker",
    ] {
        let v: f64 = attr(&root.attributes, &format!("gravity.queue.{q}"))
            .unwrap_or_else(|| panic!("no queue {q}: {:?}", root.attributes))
            .parse()
            .unwrap();
        assert!(v >= 0.0, "{q} {v}");
        assert!(attr(&root.attributes, &format!("gravity.queue.{q}.max")).is_some());
    }
    assert!(attr(&root.attributes, "gravity.scheduler.batch_size.max").is_some());
    assert!(attr(&root.attributes, "gravity.scheduler.workers").is_some());

    // the exporter's LogEntry records about that canary: same trace, the root's span id
    let records: Vec<_> = rx
        .received()
        .logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| s.log_records.clone())
        .filter(|l| attr(&l.attributes, "metadata.source").as_deref() == Some("gravity-exporter"))
        .collect();
    let body = |l: &opentelemetry_proto::tonic::logs::v1::LogRecord| {
        attr(
            &[KeyValue {
                key: "b".into(),
                value: l.body.clone(),
                ..Default::default()
            }],
            "b",
        )
        .unwrap_or_default()
    };
    for what in ["canary written", "canary arrived"] {
        let l = records
            .iter()
            .find(|l| body(l).starts_with(what) && hex(&l.trace_id) == row_trace)
            .unwrap_or_else(|| {
                panic!(
                    "no {what:?} record with trace {row_trace}: {:?}",
                    records
                        .iter()
                        .map(|l| (body(l), hex(&l.trace_id)))
                        .collect::<Vec<_>>()
                )
            });
        assert_eq!(hex(&l.span_id), row_span, "{what}");
        assert_eq!(attr(&l.attributes, "component").as_deref(), Some("canary"));
        assert_eq!(l.severity_text, "debug");
    }
    // every canary record is inside a canary's trace
    for l in &records {
        assert_eq!(l.trace_id.len(), 16, "{}", body(l));
        assert!(
            traces.contains_key(&hex(&l.trace_id)) || body(l).starts_with("canary written"),
            "{} has trace {} that was not exported",
            body(l),
            hex(&l.trace_id)
        );
    }
    path.stop().await;
}
