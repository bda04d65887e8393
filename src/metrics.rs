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
//! [`Store::render`] merges everything into one exposition in the text format.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Registry, TextEncoder};

/// Content type of the text exposition format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Locks a mutex, recovering the data if a panicking thread poisoned it (a collector
/// panic must not take `/metrics` down with it).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

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
                lp.set_value((*v).to_string());
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

    /// Value of the first sample of a family whose labels include all of `labels` (for tests and the status page).
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

/// The whole store: stateful registry, collector snapshots, pass-through text.
#[derive(Debug)]
pub struct Store {
    registry: Registry,
    snapshots: Mutex<BTreeMap<&'static str, Families>>,
    passthrough: Mutex<String>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store {
            registry: Registry::new(),
            snapshots: Mutex::new(BTreeMap::new()),
            passthrough: Mutex::new(String::new()),
        }
    }

    /// The registry for stateful metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Replaces the snapshot of one collector.
    pub fn set_snapshot(&self, collector: &'static str, fams: Families) {
        lock(&self.snapshots).insert(collector, fams);
    }

    /// A copy of one collector's last snapshot.
    pub fn snapshot(&self, collector: &'static str) -> Option<Families> {
        lock(&self.snapshots).get(collector).cloned()
    }

    /// Replaces the pass-through text (gravity's own families, already validated and capped).
    pub fn set_passthrough(&self, text: String) {
        *lock(&self.passthrough) = text;
    }

    /// Renders the exposition.
    pub fn render(&self) -> String {
        let mut mfs = self.registry.gather();
        {
            let snaps = lock(&self.snapshots);
            let mut merged = Families::new();
            for f in snaps.values() {
                merged.extend(f.clone());
            }
            mfs.extend(merged.into_vec());
        }
        mfs.retain(|mf| !mf.get_metric().is_empty());
        mfs.sort_by(|a, b| a.name().cmp(b.name()));
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on inconsistent families (a summary without
        // quantiles, etc.), which this crate never builds; fall back to what was written.
        let _ = TextEncoder::new().encode(&mfs, &mut buf);
        let mut out = String::from_utf8(buf)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        let pt = lock(&self.passthrough);
        out.push_str(&pt);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
