//! OpenTelemetry export end to end: the real exporter (in-process, as in the other tests)
//! sends to the OTLP receiver of `gravity_double::otlp` (gRPC and HTTP/protobuf, a double
//! because no collector can be installed here). Checked: every family's name survives
//! Prometheus' OTLP translation; metric names, types, units, attributes and values equal
//! `/metrics` of the same moment; the LogEntry fields of classified log lines (password
//! redacted, header token never leaked); a collector that is down, slow or refusing leaves
//! `/metrics` answering and is counted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use gravity_double::otlp::{prometheus_name, Kind, Mode, Receiver};
use gravity_exporter::expfmt::{self, MetricType};
use gravity_exporter::otlp::convert::unit_of;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point, Metric};

const DEADLINE: Duration = Duration::from_secs(60);

/// Families whose values change between an export and a scrape (as in tests/golden.rs).
const VOLATILE: &[&str] = &[
    "gravity_exporter_collector_duration_seconds",
    "gravity_exporter_collector_last_success_timestamp_seconds",
    "gravity_process_last_seen_start_timestamp_seconds",
    "gravity_healthz_request_duration_seconds",
    "gravity_status_request_duration_seconds",
    "gravity_watermark_lag_seconds",
    "gravity_watermark_stall_seconds",
    "gravity_data_lag_seconds",
    "gravity_log_filesystem_avail_bytes",
    "gravity_log_filesystem_size_bytes",
    "gravity_exporter_source_age_seconds",
    "gravity_exporter_connections_open",
    "gravity_exporter_task_cycle_duration_seconds",
    "gravity_exporter_task_last_success_timestamp_seconds",
    "gravity_exporter_task_success",
    "gravity_exporter_otlp_exports_total",
    "gravity_exporter_connections_evicted_total",
    "gravity_health_check",
    "gravity_health_check_evaluated",
    "gravity_health_checks",
    // the diagnosis over a window of collections: it changes as readings come in
    "gravity_pipeline_bottleneck",
    "gravity_pipeline_diagnosis_info",
    "gravity_pipeline_diagnosis_suggestions",
    "gravity_sliding_window_fill_ratio",
    "gravity_health_score",
    "gravity_exporter_collector_success",
    "gravity_exporter_collector_failures_total",
];

fn kind_of(t: MetricType) -> Kind {
    match t {
        MetricType::Counter => Kind::MonotonicSum,
        MetricType::Histogram => Kind::Histogram,
        MetricType::Summary => Kind::Summary,
        MetricType::Gauge | MetricType::Untyped => Kind::Gauge,
    }
}

/// Every family of the golden `/metrics`, and the OTLP families that appear only with OTLP
/// on, come out of Prometheus' OTLP translation under their own name.
#[test]
fn every_golden_family_keeps_its_name_through_prometheus_otlp_translation() {
    // metrics.prom, and the families only a Mongo source gives (tests/golden.rs)
    let golden = std::fs::read_to_string(common::fixtures().join("../golden/metrics.prom"))
        .unwrap()
        + &std::fs::read_to_string(common::fixtures().join("../golden/source-mongo.prom")).unwrap();
    let mut n = 0;
    for line in golden.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, t) = rest.split_once(' ').unwrap();
        let kind = kind_of(MetricType::from_keyword(t).unwrap());
        assert_eq!(
            prometheus_name(name, unit_of(name), kind),
            name,
            "{name} ({t}, unit {:?})",
            unit_of(name)
        );
        n += 1;
    }
    assert!(n > 60, "only {n} families in the golden file");
    for name in [
        "gravity_exporter_otlp_exports_total",
        "gravity_exporter_otlp_export_failures_total",
        "gravity_exporter_otlp_dropped_total",
    ] {
        assert_eq!(
            prometheus_name(name, unit_of(name), Kind::MonotonicSum),
            name
        );
    }
}

fn attr_map(attrs: &[KeyValue]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => *d,
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        None => f64::NAN,
    }
}

fn same(a: f64, b: f64) -> bool {
    a == b || (a.is_nan() && b.is_nan()) || ((a - b).abs() <= 1e-9 * a.abs().max(1.0))
}

/// Compares one export with `/metrics` text; `Err` names the first difference.
fn compare(metrics: &[Metric], text: &str) -> Result<usize, String> {
    let expo = expfmt::parse(text).map_err(|e| format!("/metrics does not parse: {e:?}"))?;
    let want: BTreeSet<&str> = expo.families.iter().map(|f| f.name).collect();
    let mut got = BTreeSet::new();
    for m in metrics {
        let (kind, ok_type) = match &m.data {
            Some(Data::Sum(s)) => (
                if s.is_monotonic {
                    Kind::MonotonicSum
                } else {
                    Kind::Sum
                },
                s.aggregation_temporality == 2,
            ),
            Some(Data::Gauge(_)) => (Kind::Gauge, true),
            Some(Data::Histogram(h)) => (Kind::Histogram, h.aggregation_temporality == 2),
            Some(Data::Summary(_)) => (Kind::Summary, true),
            other => return Err(format!("{}: unexpected data {other:?}", m.name)),
        };
        if !ok_type {
            return Err(format!("{}: not cumulative", m.name));
        }
        let prom = prometheus_name(&m.name, &m.unit, kind);
        if !got.insert(prom.clone()) {
            return Err(format!("{prom} exported twice"));
        }
        let Some(fam) = expo.family(&prom) else {
            return Err(format!(
                "{prom} (from OTLP {} unit {:?}) is not in /metrics",
                m.name, m.unit
            ));
        };
        if kind_of(fam.kind) != kind {
            return Err(format!("{prom}: OTLP {kind:?} but /metrics {:?}", fam.kind));
        }
        if fam.help_text().as_deref() != Some(m.description.as_str()) {
            return Err(format!("{prom}: description differs from HELP"));
        }
        let volatile = VOLATILE.contains(&fam.name);
        // series of /metrics: labels → value (histograms: bucket le → cumulative count)
        let series = |s: &expfmt::Sample<'_>, skip: &str| -> BTreeMap<String, String> {
            s.labels
                .iter()
                .filter(|(k, _)| *k != skip)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        match &m.data {
            Some(Data::Sum(s)) => check_numbers(
                &prom,
                fam,
                s.data_points
                    .iter()
                    .map(|p| (attr_map(&p.attributes), number(&p.value))),
                volatile,
                &series,
            )?,
            Some(Data::Gauge(g)) => check_numbers(
                &prom,
                fam,
                g.data_points
                    .iter()
                    .map(|p| (attr_map(&p.attributes), number(&p.value))),
                volatile,
                &series,
            )?,
            Some(Data::Histogram(h)) => {
                for p in &h.data_points {
                    let labels = attr_map(&p.attributes);
                    let buckets: Vec<(f64, f64)> = fam
                        .samples
                        .iter()
                        .filter(|s| s.name.ends_with("_bucket") && series(s, "le") == labels)
                        .map(|s| (s.le().unwrap(), s.value))
                        .collect();
                    let bounds: Vec<f64> = buckets
                        .iter()
                        .map(|b| b.0)
                        .filter(|b| b.is_finite())
                        .collect();
                    if bounds != p.explicit_bounds {
                        return Err(format!(
                            "{prom}{labels:?}: bounds {:?} vs {bounds:?}",
                            p.explicit_bounds
                        ));
                    }
                    if !volatile {
                        let mut cum = 0u64;
                        for (i, c) in p.bucket_counts.iter().enumerate() {
                            cum += c;
                            if !same(cum as f64, buckets[i].1) {
                                return Err(format!(
                                    "{prom}{labels:?}: bucket {i} {cum} vs {}",
                                    buckets[i].1
                                ));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let missing: Vec<_> = want.iter().filter(|n| !got.contains(**n)).collect();
    if !missing.is_empty() {
        return Err(format!("in /metrics but not exported: {missing:?}"));
    }
    Ok(got.len())
}

fn check_numbers(
    prom: &str,
    fam: &expfmt::Family<'_>,
    points: impl Iterator<Item = (BTreeMap<String, String>, f64)>,
    volatile: bool,
    series: &dyn Fn(&expfmt::Sample<'_>, &str) -> BTreeMap<String, String>,
) -> Result<(), String> {
    let want: BTreeMap<BTreeMap<String, String>, f64> = fam
        .samples
        .iter()
        .map(|s| (series(s, ""), s.value))
        .collect();
    let got: BTreeMap<BTreeMap<String, String>, f64> = points.collect();
    if want.keys().collect::<Vec<_>>() != got.keys().collect::<Vec<_>>() {
        return Err(format!(
            "{prom}: attribute sets {:?} vs label sets {:?}",
            got.keys(),
            want.keys()
        ));
    }
    if !volatile {
        for (k, v) in &got {
            if !same(*v, want[k]) {
                return Err(format!("{prom}{k:?}: OTLP {v} vs /metrics {}", want[k]));
            }
        }
    }
    Ok(())
}

async fn golden_setup(extra: &[&str]) -> (common::Running, std::net::SocketAddr) {
    let status =
        std::fs::read_to_string(common::fixtures().join("status-incremental.json")).unwrap();
    let api = common::stub_routes(
        vec![
            ("/status", 200, status),
            ("/healthz", 200, String::new()),
            (
                "/metrics",
                200,
                std::fs::read_to_string(common::fixtures().join("metrics.prom")).unwrap(),
            ),
        ],
        404,
    )
    .await;
    let proc_root = common::fixtures().join("proc");
    let url = format!("http://{api}");
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    let r = common::start(common::settings(&args)).await;
    (r, api)
}

/// gRPC with gzip: the export of a moment equals `/metrics` of that moment family by
/// family (names through Prometheus' translation, types, units, HELP, attributes, values,
/// histogram bounds), with the resource attributes; gravity's pass-through only with the switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_metrics_equal_metrics_of_the_same_moment() {
    let rx = Receiver::grpc(Mode::Accept).await;
    let ep = rx.endpoint();
    let (r, _api) = golden_setup(&[
        "--gravity.metrics-passthrough=false",
        "--otlp.endpoint",
        &ep,
        "--otlp.interval",
        "300ms",
        "--otlp.compression",
        "gzip",
    ])
    .await;
    let t0 = Instant::now();
    let mut last_err = String::new();
    let compared = loop {
        assert!(
            t0.elapsed() < DEADLINE,
            "no export equal to /metrics: {last_err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let before = rx.received().metrics.len();
        if before < 3 {
            continue;
        }
        let (status, text) = common::get(r.addr, "/metrics").await;
        assert_eq!(status, 200);
        let got = rx.received();
        // an export of the same moment: the last one before the scrape, none after it
        if got.metrics.len() != before {
            continue;
        }
        let req = got.metrics.last().unwrap();
        let rm = &req.resource_metrics[0];
        let res = attr_map(&rm.resource.as_ref().unwrap().attributes);
        assert_eq!(res.get("service.name").map(String::as_str), Some("gravity"));
        assert!(
            res.contains_key("host.name") && res.contains_key("service.instance.id"),
            "{res:?}"
        );
        assert!(res.contains_key("gravity.pipeline"), "{res:?}");
        let metrics = &rm.scope_metrics[0].metrics;
        match compare(metrics, &text) {
            Ok(n) => break n,
            Err(e) => last_err = e,
        }
    };
    assert!(compared > 60, "{compared} families compared");
    let got = rx.received();
    assert!(got.gzipped > 0, "no gzip-compressed export");
    // units follow the names
    let metrics = &got.metrics.last().unwrap().resource_metrics[0].scope_metrics[0].metrics;
    let unit = |n: &str| metrics.iter().find(|m| m.name == n).map(|m| m.unit.clone());
    assert_eq!(
        unit("gravity_process_cpu_seconds_total").as_deref(),
        Some("s")
    );
    assert_eq!(
        unit("gravity_process_resident_memory_bytes").as_deref(),
        Some("By")
    );
    assert_eq!(unit("gravity_log_lines_total").as_deref(), Some(""));
    // the failure counter exists at 0 for each signal while OTLP is on
    let (_, text) = common::get(r.addr, "/metrics").await;
    for s in ["metrics", "logs", "traces"] {
        assert_eq!(
            common::sample(
                &text,
                "gravity_exporter_otlp_export_failures_total",
                &[&format!("signal=\"{s}\"")]
            ),
            Some(0.0),
            "{text}"
        );
    }
    let report = r.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");
}

/// `--otlp.passthrough` adds gravity's own families, with the types of its exposition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_families_only_with_the_switch() {
    let rx = Receiver::grpc(Mode::Accept).await;
    let ep = rx.endpoint();
    let (r, _api) = golden_setup(&[
        "--otlp.endpoint",
        &ep,
        "--otlp.interval",
        "300ms",
        "--otlp.passthrough",
    ])
    .await;
    let fixture = std::fs::read_to_string(common::fixtures().join("metrics.prom")).unwrap();
    let expo = expfmt::parse(&fixture).unwrap();
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < DEADLINE, "gravity's families never exported");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (_, text) = common::get(r.addr, "/metrics").await;
        let got = rx.received();
        let Some(req) = got.metrics.last() else {
            continue;
        };
        let metrics = &req.resource_metrics[0].scope_metrics[0].metrics;
        // a histogram family of gravity, with its bounds
        let Some(h) = expo.families.iter().find(|f| {
            f.kind == MetricType::Histogram
                && text.contains(&format!("# TYPE {} histogram", f.name))
        }) else {
            continue;
        };
        let Some(m) = metrics.iter().find(|m| m.name == h.name) else {
            continue;
        };
        assert!(matches!(m.data, Some(Data::Histogram(_))), "{m:?}");
        break;
    }
    r.stop().await;
}

fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// HTTP/protobuf with gzip and a header token from a file: a classified error line becomes
/// an OTLP LogRecord and a JSON line with the LogEntry fields, the DSN password masked; the
/// token reaches the receiver and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_logs_carry_the_log_entry_fields_with_the_password_masked() {
    let rx = Receiver::http(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gravity.log");
    std::fs::write(&log, "").unwrap();
    let token = "Bearer tok-9f8e7d6c5b4a";
    let headers = dir.path().join("otlp-headers");
    std::fs::write(&headers, format!("authorization={token}\nx-tenant=data\n")).unwrap();
    let entries = dir.path().join("entries.jsonl");
    let mut f = common::log_file_flags(&log);
    f.extend(
        [
            "--gravity.log-state-file",
            "none",
            "--gravity.log-start",
            "beginning",
            "--otlp.endpoint",
            &rx.endpoint(),
            "--otlp.protocol",
            "http/protobuf",
            "--otlp.compression",
            "gzip",
            "--otlp.interval",
            "300ms",
            "--otlp.headers-file",
            headers.to_str().unwrap(),
            "--log-entries.file",
            entries.to_str().unwrap(),
        ]
        .map(String::from),
    );
    let r = common::start(common::settings(&common::owned(&f))).await;
    let password = "Sup3rS3cretPw";
    let line = format!(
        r#"{{"file":"mysql_output.go","line":311,"level":"error","msg":"[output-mysql] exec failed on root:{password}@tcp(10.0.0.5:3306)/shop: Error 1213: Deadlock found when trying to get lock","pipeline":"mysql2mysqlDemo","time":"2026-12-05T10:00:00.5+08:00","schema":"shop","table":"orders","operation":"update","duration_ms":120,"trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7"}}"#
    );
    append(&log, &format!("{line}\n"));
    let t0 = Instant::now();
    let rec = loop {
        assert!(t0.elapsed() < DEADLINE, "no log record received");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let got = rx.received();
        if let Some(rec) = got
            .logs
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .find(|l| attr_map(&l.attributes).get("table").map(String::as_str) == Some("orders"))
        {
            break rec.clone();
        }
    };
    let a = attr_map(&rec.attributes);
    assert_eq!(rec.severity_number, 17);
    assert_eq!(rec.severity_text, "error");
    assert_eq!(a["pipeline"], "mysql2mysqlDemo");
    assert_eq!(a["component"], "output");
    assert_eq!(a["schema"], "shop");
    assert_eq!(a["operation"], "update");
    assert_eq!(a["duration_ms"], "120");
    assert_eq!(a["error.type"], "deadlock");
    assert_eq!(a["metadata.file"], "mysql_output.go");
    assert_eq!(a["metadata.line"], "311");
    assert_eq!(hex(&rec.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&rec.span_id), "00f067aa0ba902b7");
    // 2026-12-05T02:00:00.5Z
    assert_eq!(rec.time_unix_nano, 1_796_436_000_500_000_000);
    let body = match rec.body.as_ref().and_then(|b| b.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        other => panic!("body {other:?}"),
    };
    assert!(body.contains("Deadlock found"), "{body}");
    assert!(!body.contains(password), "{body}");
    // the JSON line: the same entry
    let ok = common::wait_for(DEADLINE, || async {
        std::fs::read_to_string(&entries).is_ok_and(|t| t.contains("orders"))
    })
    .await;
    assert!(ok.is_some(), "no JSON line written");
    let text = std::fs::read_to_string(&entries).unwrap();
    assert!(!text.contains(password), "{text}");
    let v: serde_json::Value =
        serde_json::from_str(text.lines().find(|l| l.contains("orders")).unwrap()).unwrap();
    assert_eq!(v["level"], "error");
    assert_eq!(v["severity_number"], 17);
    assert_eq!(v["pipeline"], "mysql2mysqlDemo");
    assert_eq!(v["component"], "output");
    assert_eq!(v["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(v["span_id"], "00f067aa0ba902b7");
    assert_eq!(v["schema"], "shop");
    assert_eq!(v["table"], "orders");
    assert_eq!(v["operation"], "update");
    assert_eq!(v["duration_ms"], 120.0);
    assert_eq!(v["error"]["error_type"], "deadlock");
    assert_eq!(v["metadata"]["file"], "mysql_output.go");
    assert_eq!(v["metadata"]["line"], 311);
    assert_eq!(v["timestamp"], "2026-12-05T10:00:00.5+08:00");
    // the header token: sent with every request, never in /metrics, the JSON lines or the page
    let ok = common::wait_for(DEADLINE, || async { !rx.received().metrics.is_empty() }).await;
    assert!(ok.is_some(), "no metrics over HTTP");
    let got = rx.received();
    assert!(got.gzipped > 0);
    assert!(got
        .headers
        .iter()
        .all(|h| h.iter().any(|(k, v)| k == "authorization" && v == token)));
    assert!(got
        .headers
        .iter()
        .all(|h| h.iter().any(|(k, v)| k == "x-tenant" && v == "data")));
    for path in ["/metrics", "/", "/api/status"] {
        let (_, body) = common::get(r.addr, path).await;
        assert!(!body.contains("tok-9f8e7d6c5b4a"), "{path} shows the token");
        assert!(!body.contains(password), "{path} shows the password");
    }
    assert!(!text.contains("tok-9f8e7d6c5b4a"));
    let report = r.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn failures(addr: std::net::SocketAddr, signal: &str) -> f64 {
    let (status, text) = common::get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics did not answer");
    common::sample(
        &text,
        "gravity_exporter_otlp_export_failures_total",
        &[&format!("signal=\"{signal}\"")],
    )
    .unwrap_or(f64::NAN)
}

async fn exports(addr: std::net::SocketAddr, signal: &str) -> f64 {
    let (_, text) = common::get(addr, "/metrics").await;
    common::sample(
        &text,
        "gravity_exporter_otlp_exports_total",
        &[&format!("signal=\"{signal}\"")],
    )
    .unwrap_or(f64::NAN)
}

/// Refusing, slow (10 s, over the 1 s export deadline) and down: every scrape of `/metrics`
/// answers, collection goes on, each failed export is counted, a working collector again
/// gets the exports, and the shutdown drain ends with the collector down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_slow_or_down_collector_leaves_metrics_answering_and_is_counted() {
    let rx = Receiver::grpc(Mode::Fail).await;
    let ep = rx.endpoint();
    let (r, _api) = golden_setup(&[
        "--gravity.metrics-passthrough=false",
        "--otlp.endpoint",
        &ep,
        "--otlp.interval",
        "200ms",
        "--otlp.timeout",
        "1s",
        "--collector.interval",
        "200ms",
    ])
    .await;
    let addr = r.addr;
    // refusing
    let ok = common::wait_for(DEADLINE, || async {
        failures(addr, "metrics").await >= 2.0
    })
    .await;
    assert!(ok.is_some(), "refused exports not counted");
    assert!(rx.received().refused >= 2);
    assert_eq!(exports(addr, "metrics").await, 0.0);
    // slow: 10 s per answer, the exports time out after 1 s
    rx.set_mode(Mode::Slow(Duration::from_secs(10)));
    let base = failures(addr, "metrics").await;
    let cycles_before = common::sample(
        &common::get(addr, "/metrics").await.1,
        "gravity_exporter_collector_last_success_timestamp_seconds",
        &["collector=\"status\""],
    )
    .unwrap();
    let ok = common::wait_for(DEADLINE, || async {
        // every one of these scrapes must answer 200 (asserted in failures())
        failures(addr, "metrics").await >= base + 2.0
    })
    .await;
    assert!(ok.is_some(), "timed-out exports not counted");
    // collection went on meanwhile
    let cycles_after = common::sample(
        &common::get(addr, "/metrics").await.1,
        "gravity_exporter_collector_last_success_timestamp_seconds",
        &["collector=\"status\""],
    )
    .unwrap();
    assert!(
        cycles_after > cycles_before,
        "collection stalled behind the slow collector"
    );
    // working again
    rx.set_mode(Mode::Accept);
    let ok = common::wait_for(DEADLINE, || async { exports(addr, "metrics").await >= 1.0 }).await;
    assert!(ok.is_some(), "exports did not resume");
    // down
    drop(rx);
    let base = failures(addr, "metrics").await;
    let ok = common::wait_for(DEADLINE, || async {
        failures(addr, "metrics").await >= base + 2.0
    })
    .await;
    assert!(
        ok.is_some(),
        "exports to a collector that is down not counted"
    );
    // the drain, with its final export to a collector that is down, ends in time
    let report = r.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");
}
