//! The tracer provider over OTLP: installed as the global provider (so other code's
//! `opentelemetry::global::tracer("gravity-exporter")` spans are exported), the exporter's
//! slow operations as spans with their outcome, and the spans still queued at shutdown
//! flushed by the drain. Its own test binary: the provider is process-global.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gravity_double::otlp::{Mode, Receiver};
use opentelemetry::trace::{Span, Tracer, TracerProvider};
use opentelemetry_proto::tonic::common::v1::any_value;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_tracer_and_slow_operations_are_exported_and_flushed_at_shutdown() {
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
