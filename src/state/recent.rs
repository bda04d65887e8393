//! Recent history for the status page, in bounded rings kept in the [`Context`].
//!
//! The metrics show the present; the page also shows the last few minutes so that an engineer
//! woken at night sees a trend at a glance. Everything here is bounded: [`LAG_SAMPLES`]
//! collections of lag per stream for at most [`MAX_LAG_STREAMS`] streams, as many throughput
//! samples, the last [`ERROR_EVENTS`] classified error lines of gravity's log (already redacted
//! and shortened by the log watcher), per-10-second error counts over
//! [`crate::health::ERROR_WINDOW`], and the last round of connection probes.
//!
//! [`Context`]: crate::collector::Context

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::base::lock;
use crate::log::classify::Classification;
use crate::log::record::Record;
use crate::redact::{clean, Redactor};

/// Lag (and throughput) samples kept per stream: one per collection.
pub const LAG_SAMPLES: usize = 120;
/// Most watermark streams with a lag history (a full dump reports one per table).
pub const MAX_LAG_STREAMS: usize = 32;
/// Classified error lines kept.
pub const ERROR_EVENTS: usize = 20;
/// Width of the error-count buckets, in seconds.
const BUCKET_SECONDS: u64 = 10;
/// Error-count buckets kept (a little more than the health check's 5-minute window).
const MAX_BUCKETS: usize = 32;

/// One classified error line of gravity's log, redacted and shortened.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorEvent {
    /// The time as gravity wrote it (shortened, no control characters).
    pub time: String,
    /// When the exporter read it (Unix time).
    pub seen_unix: f64,
    /// Log level (`warning`, `error`, `fatal`, `panic`).
    pub level: &'static str,
    /// Component label.
    pub component: &'static str,
    /// Cause label.
    pub error_type: &'static str,
    /// Whether the line reports a retry.
    pub retry: bool,
    /// The message: first line, passwords masked, at most about 200 characters.
    pub message: String,
}

/// Longest message kept, in characters.
pub const MESSAGE_CHARS: usize = 200;

impl ErrorEvent {
    /// The event for a classified record: the message's first line with every password
    /// masked (see [`super::redact`]), cut to [`MESSAGE_CHARS`].
    pub fn from_record(
        rec: &Record<'_>,
        class: Classification,
        redactor: &Redactor,
        now_unix: f64,
    ) -> ErrorEvent {
        ErrorEvent {
            time: clean(redactor, rec.time.unwrap_or(""), 40),
            seen_unix: now_unix,
            level: rec.level.as_str(),
            component: class.component.as_str(),
            error_type: class.error_type.as_str(),
            retry: class.is_retry,
            message: clean(redactor, &rec.msg, MESSAGE_CHARS),
        }
    }
}

/// The last probe of one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeView {
    /// `component` label.
    pub component: &'static str,
    /// `host:port`.
    pub endpoint: String,
    /// Whether the probe succeeded.
    pub ok: bool,
    /// Why it failed.
    pub reason: Option<&'static str>,
    /// How long it took, in seconds.
    pub latency_seconds: f64,
    /// The probe's own one-line description (never a password).
    pub detail: String,
}

/// The rings.
#[derive(Debug, Default)]
pub struct Recent {
    lag: Mutex<BTreeMap<String, VecDeque<f64>>>,
    throughput: Mutex<VecDeque<(f64, f64)>>,
    errors: Mutex<VecDeque<ErrorEvent>>,
    /// (bucket index = unix seconds / BUCKET_SECONDS, errors in it), oldest first.
    buckets: Mutex<VecDeque<(u64, u64)>>,
    probes: Mutex<Option<Vec<ProbeView>>>,
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    while q.len() >= cap {
        q.pop_front();
    }
    q.push_back(v);
}

impl Recent {
    /// Records one collection's lag per stream. Streams no longer reported lose their history;
    /// beyond [`MAX_LAG_STREAMS`] the streams that sort first are kept.
    pub fn record_lag<'a>(&self, samples: impl IntoIterator<Item = (&'a str, f64)>) {
        let samples: Vec<(&str, f64)> = samples.into_iter().collect();
        let mut m = lock(&self.lag);
        m.retain(|k, _| samples.iter().any(|(s, _)| s == k));
        for (stream, lag) in samples {
            let lag = if lag.is_finite() { lag } else { 0.0 };
            if let Some(q) = m.get_mut(stream) {
                push_bounded(q, lag, LAG_SAMPLES);
            } else if m.len() < MAX_LAG_STREAMS {
                let mut q = VecDeque::with_capacity(LAG_SAMPLES);
                q.push_back(lag);
                m.insert(stream.to_string(), q);
            }
        }
    }

    /// The lag history of one stream, oldest first.
    pub fn lag_history(&self, stream: &str) -> Vec<f64> {
        lock(&self.lag)
            .get(stream)
            .map(|q| q.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Records one collection's total rows/s in and out.
    pub fn record_throughput(&self, rows_in: f64, rows_out: f64) {
        let clean = |v: f64| if v.is_finite() { v.max(0.0) } else { 0.0 };
        push_bounded(
            &mut lock(&self.throughput),
            (clean(rows_in), clean(rows_out)),
            LAG_SAMPLES,
        );
    }

    /// Throughput history (in, out), oldest first.
    pub fn throughput_history(&self) -> (Vec<f64>, Vec<f64>) {
        lock(&self.throughput).iter().copied().unzip()
    }

    /// Records one classified error line (already redacted).
    pub fn record_error(&self, ev: ErrorEvent) {
        let bucket = (ev.seen_unix.max(0.0) as u64) / BUCKET_SECONDS;
        {
            let mut b = lock(&self.buckets);
            match b.back_mut() {
                Some((i, n)) if *i == bucket => *n += 1,
                _ => push_bounded(&mut b, (bucket, 1), MAX_BUCKETS),
            }
        }
        push_bounded(&mut lock(&self.errors), ev, ERROR_EVENTS);
    }

    /// The last error lines, newest first.
    pub fn errors(&self) -> Vec<ErrorEvent> {
        lock(&self.errors).iter().rev().cloned().collect()
    }

    /// Error lines seen in the last `window` before `now_unix` (10-second granularity).
    pub fn errors_within(&self, window: Duration, now_unix: f64) -> u64 {
        let now = now_unix.max(0.0) as u64;
        let first = now.saturating_sub(window.as_secs()) / BUCKET_SECONDS;
        lock(&self.buckets)
            .iter()
            .filter(|(i, _)| *i >= first)
            .map(|(_, n)| n)
            .sum()
    }

    /// Records the last round of connection probes.
    pub fn record_probes(&self, probes: Vec<ProbeView>) {
        *lock(&self.probes) = Some(probes);
    }

    /// The last round of connection probes (`None`: none ran yet, or probes are off).
    pub fn probes(&self) -> Option<Vec<ProbeView>> {
        lock(&self.probes).clone()
    }

    /// Forgets the probes (probes were turned off).
    pub fn clear_probes(&self) {
        *lock(&self.probes) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: usize, at: f64) -> ErrorEvent {
        ErrorEvent {
            time: format!("t{i}"),
            seen_unix: at,
            level: "error",
            component: "output",
            error_type: "deadlock",
            retry: false,
            message: format!("m{i}"),
        }
    }

    #[test]
    fn lag_rings_are_bounded_and_follow_the_streams() {
        let r = Recent::default();
        for i in 0..500 {
            r.record_lag([("mysqlstream", i as f64), ("other", f64::NAN)]);
        }
        let h = r.lag_history("mysqlstream");
        assert_eq!(h.len(), LAG_SAMPLES);
        assert_eq!(h.first(), Some(&380.0));
        assert_eq!(h.last(), Some(&499.0));
        assert_eq!(r.lag_history("other").last(), Some(&0.0));
        r.record_lag([("mysqlstream", 1.0)]);
        assert!(r.lag_history("other").is_empty());
        let names: Vec<String> = (0..100).map(|i| format!("db.t{i:03}")).collect();
        r.record_lag(names.iter().map(|n| (n.as_str(), 1.0)));
        assert_eq!(lock(&r.lag).len(), MAX_LAG_STREAMS);
    }

    #[test]
    fn error_ring_keeps_the_last_twenty_newest_first() {
        let r = Recent::default();
        for i in 0..50 {
            r.record_error(ev(i, 1_000_000.0 + i as f64));
        }
        let e = r.errors();
        assert_eq!(e.len(), ERROR_EVENTS);
        assert_eq!(e[0].message, "m49");
        assert_eq!(e[19].message, "m30");
        assert_eq!(r.errors_within(Duration::from_secs(300), 1_000_050.0), 50);
        // ten minutes later, none is recent
        assert_eq!(r.errors_within(Duration::from_secs(300), 1_000_650.0), 0);
        for i in 0..1000 {
            r.record_error(ev(i, 2_000_000.0 + 10.0 * i as f64));
        }
        assert!(lock(&r.buckets).len() <= MAX_BUCKETS);
    }

    #[test]
    fn events_from_records_are_redacted_and_short() {
        use crate::log::record::{parse_line, LogFormat};
        let line = r#"{"file":"mysql.go","level":"error","line":9,"msg":"[output-mysql] open writer:s3cret-target-pw@tcp(db:3307)/x failed; retry with password=other-pw and s3cret-source-pw \u003cb\u003e","time":"2026-11-22T14:05:33+08:00"}"#;
        let rec = parse_line(line, LogFormat::Json).unwrap();
        let class = crate::log::classify::classify(&rec);
        let r = Redactor::new(["s3cret-target-pw", "s3cret-source-pw"]);
        let ev = ErrorEvent::from_record(&rec, class, &r, 5.0);
        assert_eq!(ev.time, "2026-11-22T14:05:33+08:00");
        assert_eq!(ev.level, "error");
        assert_eq!(ev.component, "output");
        assert_eq!(
            ev.message,
            "[output-mysql] open writer:***@tcp(db:3307)/x failed; retry with password=*** and *** <b>"
        );
        let long = format!(
            r#"{{"level":"fatal","msg":"{} tail","time":"t"}}"#,
            "z".repeat(5000)
        );
        let rec = parse_line(&long, LogFormat::Json).unwrap();
        let ev = ErrorEvent::from_record(&rec, crate::log::classify::classify(&rec), &r, 5.0);
        assert_eq!(ev.message.chars().count(), MESSAGE_CHARS + 1);
    }

    #[test]
    fn throughput_ring_is_bounded() {
        let r = Recent::default();
        for i in 0..300 {
            r.record_throughput(i as f64, -1.0);
        }
        let (i, o) = r.throughput_history();
        assert_eq!((i.len(), o.len()), (LAG_SAMPLES, LAG_SAMPLES));
        assert_eq!(o[0], 0.0);
    }
}
