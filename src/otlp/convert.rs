//! The `/metrics` families as OTLP metrics: a pure conversion of the store's gathered
//! families (prometheus proto `MetricFamily`) into OTLP data points, so the export is a view
//! of the same state as `/metrics`.
//!
//! Names: the OTLP name *is* the Prometheus family name, and the unit is the UCUM unit of
//! the name's unit token (`seconds` → `s`, `bytes` → `By`, `ratio` → `1`, else none).
//! Prometheus' OTLP translation (the Collector's `prometheus`/`prometheusremotewrite`
//! exporters and Prometheus' own OTLP receiver) adds a unit suffix only when the name does
//! not already contain that unit and `_total` only to monotonic sums not already ending in
//! it, so the series names it produces are exactly those of `/metrics` (with the
//! `NoTranslation`/`NoUTF8EscapingWithSuffixes` strategies as well). `tests/otlp.rs` checks
//! this for every family of the golden output.
//!
//! Types: counter → monotonic cumulative Sum, gauge and untyped → Gauge, histogram →
//! explicit-bucket Histogram with the same bounds (cumulative), summary → Summary.
#![warn(clippy::arithmetic_side_effects)]

use std::borrow::Cow;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    self as pm, metric::Data, number_data_point, summary_data_point::ValueAtQuantile,
    AggregationTemporality, HistogramDataPoint, NumberDataPoint, SummaryDataPoint,
};
use prometheus::proto::{MetricFamily, MetricType};

/// A string attribute.
pub fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// The UCUM unit of a Prometheus family name (from its unit token).
pub fn unit_of(name: &str) -> &'static str {
    let mut unit = "";
    for t in name.split('_') {
        match t {
            "seconds" => unit = "s",
            "bytes" => unit = "By",
            "ratio" => unit = "1",
            _ => {}
        }
    }
    unit
}

/// Times of one export: the start of the cumulative series and now (Unix nanoseconds).
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// When the exporter started counting.
    pub start_unix_nano: u64,
    /// Now.
    pub now_unix_nano: u64,
}

fn attrs(m: &prometheus::proto::Metric) -> Vec<KeyValue> {
    m.get_label()
        .iter()
        .map(|lp| kv(lp.name(), lp.value()))
        .collect()
}

fn number(m: &prometheus::proto::Metric, v: f64, t: Times, start: bool) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs(m),
        start_time_unix_nano: if start { t.start_unix_nano } else { 0 },
        time_unix_nano: t.now_unix_nano,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

/// A non-negative float count as an integer (NaN and negatives: 0).
fn count(v: f64) -> u64 {
    if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    }
}

/// One family as an OTLP metric (`None`: no samples).
pub fn metric(mf: &MetricFamily, t: Times) -> Option<pm::Metric> {
    let ms = mf.get_metric();
    if ms.is_empty() {
        return None;
    }
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match mf.get_field_type() {
        MetricType::COUNTER => Data::Sum(pm::Sum {
            data_points: ms
                .iter()
                .map(|m| number(m, m.get_counter().get_value(), t, true))
                .collect(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        MetricType::GAUGE => Data::Gauge(pm::Gauge {
            data_points: ms
                .iter()
                .map(|m| number(m, m.get_gauge().get_value(), t, false))
                .collect(),
        }),
        // never built: the registry has no untyped metrics, the pass-through's become gauges
        MetricType::UNTYPED => return None,
        MetricType::HISTOGRAM => Data::Histogram(pm::Histogram {
            data_points: ms
                .iter()
                .map(|m| {
                    let h = m.get_histogram();
                    let mut bounds = Vec::with_capacity(h.get_bucket().len());
                    let mut counts = Vec::with_capacity(h.get_bucket().len().saturating_add(1));
                    let mut prev = 0u64;
                    for b in h.get_bucket() {
                        let ub = b.upper_bound();
                        if ub.is_infinite() && ub > 0.0 {
                            continue;
                        }
                        let c = b.cumulative_count();
                        bounds.push(ub);
                        counts.push(c.saturating_sub(prev));
                        prev = c.max(prev);
                    }
                    let total = h.get_sample_count();
                    counts.push(total.saturating_sub(prev));
                    HistogramDataPoint {
                        attributes: attrs(m),
                        start_time_unix_nano: t.start_unix_nano,
                        time_unix_nano: t.now_unix_nano,
                        count: total,
                        sum: Some(h.get_sample_sum()),
                        bucket_counts: counts,
                        explicit_bounds: bounds,
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
        MetricType::SUMMARY => Data::Summary(pm::Summary {
            data_points: ms
                .iter()
                .map(|m| {
                    let s = m.get_summary();
                    SummaryDataPoint {
                        attributes: attrs(m),
                        start_time_unix_nano: t.start_unix_nano,
                        time_unix_nano: t.now_unix_nano,
                        count: s.sample_count(),
                        sum: s.sample_sum(),
                        quantile_values: s
                            .get_quantile()
                            .iter()
                            .map(|q| ValueAtQuantile {
                                quantile: q.quantile(),
                                value: q.value(),
                            })
                            .collect(),
                        ..Default::default()
                    }
                })
                .collect(),
        }),
    };
    Some(pm::Metric {
        name: mf.name().to_string(),
        description: mf.help().to_string(),
        unit: unit_of(mf.name()).to_string(),
        data: Some(data),
        ..Default::default()
    })
}

/// gravity's pass-through text (already validated and capped) as metric families, in the
/// prometheus proto model, so they take the same conversion path as the exporter's own.
pub fn passthrough_families(text: &str) -> Vec<MetricFamily> {
    use crate::expfmt::MetricType as T;
    use prometheus::proto::{
        Bucket, Counter, Gauge, Histogram, LabelPair, Metric, Quantile, Summary,
    };
    let (expo, _) = crate::expfmt::parse_lossy(text);
    let mut out = Vec::with_capacity(expo.families.len());
    for fam in expo.families {
        let mut mf = MetricFamily::default();
        mf.set_name(fam.name.to_string());
        mf.set_help(fam.help_text().map(Cow::into_owned).unwrap_or_default());
        let labels = |l: &[(&str, Cow<'_, str>)], skip: &str| -> Vec<LabelPair> {
            l.iter()
                .filter(|(n, _)| *n != skip)
                .map(|(n, v)| {
                    let mut lp = LabelPair::default();
                    lp.set_name((*n).to_string());
                    lp.set_value(v.to_string());
                    lp
                })
                .collect()
        };
        match fam.kind {
            T::Counter | T::Gauge | T::Untyped => {
                // untyped samples are exported as gauges
                mf.set_field_type(match fam.kind {
                    T::Counter => MetricType::COUNTER,
                    _ => MetricType::GAUGE,
                });
                for s in &fam.samples {
                    let mut m = Metric::default();
                    m.set_label(labels(&s.labels, ""));
                    match fam.kind {
                        T::Counter => {
                            let mut c = Counter::default();
                            c.set_value(s.value);
                            m.set_counter(c);
                        }
                        _ => {
                            let mut g = Gauge::default();
                            g.set_value(s.value);
                            m.set_gauge(g);
                        }
                    }
                    mf.mut_metric().push(m);
                }
            }
            T::Histogram | T::Summary => {
                let hist = fam.kind == T::Histogram;
                mf.set_field_type(if hist {
                    MetricType::HISTOGRAM
                } else {
                    MetricType::SUMMARY
                });
                // one series per label set without `le`/`quantile`, in order of appearance
                let skip = if hist { "le" } else { "quantile" };
                #[allow(clippy::type_complexity)]
                let mut series: Vec<(
                    Vec<LabelPair>,
                    Histogram,
                    Summary,
                    Vec<Bucket>,
                    Vec<Quantile>,
                )> = Vec::new();
                for s in &fam.samples {
                    let key = labels(&s.labels, skip);
                    let i = match series.iter().position(|(k, ..)| *k == key) {
                        Some(i) => i,
                        None => {
                            series.push((
                                key,
                                Histogram::default(),
                                Summary::default(),
                                Vec::new(),
                                Vec::new(),
                            ));
                            series.len().saturating_sub(1)
                        }
                    };
                    let Some((_, h, sm, buckets, quantiles)) = series.get_mut(i) else {
                        continue;
                    };
                    let suffix = s.name.strip_prefix(fam.name).unwrap_or("");
                    if hist {
                        match suffix {
                            "_bucket" => {
                                if let Some(le) = s.le() {
                                    let mut b = Bucket::default();
                                    b.set_upper_bound(le);
                                    b.set_cumulative_count(count(s.value));
                                    buckets.push(b);
                                }
                            }
                            "_sum" => h.set_sample_sum(s.value),
                            "_count" => h.set_sample_count(count(s.value)),
                            _ => {}
                        }
                    } else {
                        match suffix {
                            "" => {
                                if let Some(q) = s.quantile() {
                                    let mut qv = Quantile::default();
                                    qv.set_quantile(q);
                                    qv.set_value(s.value);
                                    quantiles.push(qv);
                                }
                            }
                            "_sum" => sm.set_sample_sum(s.value),
                            "_count" => sm.set_sample_count(count(s.value)),
                            _ => {}
                        }
                    }
                }
                mf.set_metric(
                    series
                        .into_iter()
                        .map(|(labels, mut h, mut sm, buckets, quantiles)| {
                            let mut m = Metric::default();
                            m.set_label(labels);
                            if hist {
                                h.set_bucket(buckets);
                                m.set_histogram(h);
                            } else {
                                sm.set_quantile(quantiles);
                                m.set_summary(sm);
                            }
                            m
                        })
                        .collect(),
                );
            }
        }
        out.push(mf);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_come_from_the_name() {
        assert_eq!(unit_of("gravity_process_cpu_seconds_total"), "s");
        assert_eq!(unit_of("gravity_process_io_read_bytes_total"), "By");
        assert_eq!(unit_of("gravity_log_lines_total"), "");
        assert_eq!(
            unit_of("gravity_exporter_task_last_success_timestamp_seconds"),
            "s"
        );
    }

    #[test]
    fn histogram_buckets_become_explicit_bounds() {
        let text = "# HELP h_seconds H.\n# TYPE h_seconds histogram\nh_seconds_bucket{x=\"a\",le=\"0.1\"} 2\nh_seconds_bucket{x=\"a\",le=\"1\"} 5\nh_seconds_bucket{x=\"a\",le=\"+Inf\"} 6\nh_seconds_sum{x=\"a\"} 3.5\nh_seconds_count{x=\"a\"} 6\n# TYPE c_total counter\nc_total 7\n";
        let fams = passthrough_families(text);
        assert_eq!(fams.len(), 2);
        let t = Times {
            start_unix_nano: 1,
            now_unix_nano: 2,
        };
        let h = metric(&fams[0], t).unwrap();
        assert_eq!(h.unit, "s");
        let Some(Data::Histogram(h)) = h.data else {
            panic!()
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 1.0]);
        assert_eq!(p.bucket_counts, vec![2, 3, 1]);
        assert_eq!(p.count, 6);
        assert_eq!(p.sum, Some(3.5));
        assert_eq!(p.attributes, vec![kv("x", "a")]);
        let c = metric(&fams[1], t).unwrap();
        let Some(Data::Sum(s)) = c.data else { panic!() };
        assert!(s.is_monotonic);
        assert_eq!(
            s.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        assert_eq!(s.data_points[0].start_time_unix_nano, 1);
    }
}
