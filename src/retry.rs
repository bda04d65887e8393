//! `gravity_retry_total{pipeline,component,reason}`: one counter fed from two sources.
//!
//! - gravity's `gravity_scheduler_retry_counter` (from its `/metrics`) counts the failed
//!   attempts of a synchronous output. It resets when gravity restarts; the `/metrics`
//!   collector adds each increase here, so our counter keeps counting upward.
//! - Each such attempt is also logged as `error execute sync output, retry. <cause>`. The
//!   log collector classifies the cause and leaves it here as a *pending reason*; the next
//!   scheduler increase is attributed to the pending reasons in arrival order (the rest to
//!   `other`). Scheduler retry lines are not counted a second time.
//! - Retries that only show in the log (Kafka, binlog reconnects: any other component) are
//!   counted straight from the log.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

use prometheus::{IntCounterVec, Opts};

use crate::base::lock;
use crate::metrics::Store;

/// Most pending reasons kept (a log read far ahead of the API cannot grow memory).
pub const MAX_PENDING: usize = 10_000;
/// Most pipelines whose known series are created at 0 (the label normally has one value).
pub const MAX_SEEDED_PIPELINES: usize = 16;

/// The shared retry counter.
#[derive(Debug)]
pub struct RetryLedger {
    counter: IntCounterVec,
    pending: Mutex<VecDeque<&'static str>>,
    seeded: Mutex<HashSet<String>>,
}

impl RetryLedger {
    /// Registers `gravity_retry_total`.
    pub fn new(store: &Store) -> RetryLedger {
        let counter = IntCounterVec::new(
            Opts::new(
                "gravity_retry_total",
                "Retries gravity made: its scheduler's retry counter (kept counting across gravity restarts) plus retry lines in its log, by component and cause.",
            ),
            &["pipeline", "component", "reason"],
        )
        .expect("metric names in this crate are valid");
        let _ = store.registry().register(Box::new(counter.clone()));
        RetryLedger {
            counter,
            pending: Mutex::new(VecDeque::new()),
            seeded: Mutex::new(HashSet::new()),
        }
    }

    /// Creates the known series of `pipeline` at 0, once: every component with reason
    /// `other`, and the scheduler with every cause, so that `rate()` and `increase()` see
    /// the first retry after a start. Bounded by [`MAX_SEEDED_PIPELINES`].
    pub fn seed(&self, pipeline: &str) {
        use crate::log::classify::{Component, ErrorType};
        let mut seeded = lock(&self.seeded);
        if seeded.contains(pipeline) || seeded.len() >= MAX_SEEDED_PIPELINES {
            return;
        }
        seeded.insert(pipeline.to_string());
        for c in Component::ALL {
            self.counter
                .with_label_values(&[pipeline, c.as_str(), ErrorType::Other.as_str()]);
        }
        for e in ErrorType::ALL {
            self.counter
                .with_label_values(&[pipeline, Component::Scheduler.as_str(), e.as_str()]);
        }
    }

    /// A scheduler retry line was read from the log with this reason.
    pub fn scheduler_reason(&self, reason: &'static str) {
        let mut p = lock(&self.pending);
        if p.len() >= MAX_PENDING {
            p.pop_front();
        }
        p.push_back(reason);
    }

    /// gravity's scheduler retry counter grew by `n`. At most [`MAX_PENDING`] pending
    /// reasons are taken (one step each); the rest of `n` goes to `other` in one addition,
    /// so a huge `n` costs no more than a small one. Every series saturates at `u64::MAX`.
    pub fn scheduler_increase(&self, pipeline: &str, n: u64) {
        let mut p = lock(&self.pending);
        let take = p.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        let mut by_reason: Vec<(&'static str, u64)> = Vec::new();
        for reason in p.drain(..take) {
            match by_reason.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, c)) => *c = c.saturating_add(1),
                None => by_reason.push((reason, 1)),
            }
        }
        drop(p);
        let rest = n.saturating_sub(u64::try_from(take).unwrap_or(u64::MAX));
        if rest > 0 {
            by_reason.push(("other", rest));
        }
        for (reason, k) in by_reason {
            add_saturating(
                &self
                    .counter
                    .with_label_values(&[pipeline, "scheduler", reason]),
                k,
            );
        }
    }

    /// A retry that only shows in the log (not the scheduler's).
    pub fn log_retry(&self, pipeline: &str, component: &str, reason: &str) {
        self.counter
            .with_label_values(&[pipeline, component, reason])
            .inc();
    }

    /// Current value of one series (for tests and the status page).
    pub fn get(&self, pipeline: &str, component: &str, reason: &str) -> u64 {
        self.counter
            .with_label_values(&[pipeline, component, reason])
            .get()
    }
}

/// Adds `n` to a counter, stopping at `u64::MAX` instead of wrapping.
fn add_saturating(c: &prometheus::IntCounter, n: u64) {
    let room = u64::MAX.saturating_sub(c.get());
    c.inc_by(n.min(room));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_attributed_in_order_rest_other() {
        let s = Store::new();
        let r = RetryLedger::new(&s);
        r.scheduler_reason("deadlock");
        r.scheduler_reason("lock_wait");
        r.scheduler_increase("p", 3);
        assert_eq!(r.get("p", "scheduler", "deadlock"), 1);
        assert_eq!(r.get("p", "scheduler", "lock_wait"), 1);
        assert_eq!(r.get("p", "scheduler", "other"), 1);
        r.log_retry("p", "output", "kafka");
        assert_eq!(r.get("p", "output", "kafka"), 1);
        for _ in 0..MAX_PENDING + 10 {
            r.scheduler_reason("timeout");
        }
        assert_eq!(lock(&r.pending).len(), MAX_PENDING);
    }

    #[test]
    fn a_huge_increase_is_one_step_not_a_loop() {
        let s = Store::new();
        let r = RetryLedger::new(&s);
        r.scheduler_reason("deadlock");
        // gravity's counter jumping by 1e300 saturates to u64::MAX: this must not loop.
        r.scheduler_increase("p", u64::MAX);
        assert_eq!(r.get("p", "scheduler", "deadlock"), 1);
        assert_eq!(r.get("p", "scheduler", "other"), u64::MAX - 1);
    }

    #[test]
    fn known_series_exist_at_zero() {
        let s = Store::new();
        let r = RetryLedger::new(&s);
        r.seed("p");
        let text = s.render();
        for c in crate::log::classify::Component::ALL {
            let line = format!(
                "gravity_retry_total{{component=\"{}\",pipeline=\"p\",reason=\"other\"}} 0",
                c.as_str()
            );
            assert!(text.contains(&line), "missing {line}\n{text}");
        }
        assert!(text.contains(
            "gravity_retry_total{component=\"scheduler\",pipeline=\"p\",reason=\"deadlock\"} 0"
        ));
        r.seed("p");
        for i in 0..MAX_SEEDED_PIPELINES + 5 {
            r.seed(&format!("x{i}"));
        }
        assert_eq!(lock(&r.seeded).len(), MAX_SEEDED_PIPELINES);
    }

    /// Runs `f` on its own thread and waits for it at most a minute (a hang fails the test
    /// instead of stalling the suite).
    fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("did not return: a loop per increment?")
    }

    #[test]
    fn a_huge_increase_is_counted_at_once_and_saturates() {
        let (got, pending) = within_a_minute(|| {
            let s = Store::new();
            let r = RetryLedger::new(&s);
            r.scheduler_reason("deadlock");
            r.scheduler_increase("p", u64::MAX);
            r.scheduler_increase("p", u64::MAX);
            let pending = lock(&r.pending).len();
            (
                (
                    r.get("p", "scheduler", "deadlock"),
                    r.get("p", "scheduler", "other"),
                ),
                pending,
            )
        });
        assert_eq!(got, (1, u64::MAX), "saturated, not wrapped");
        assert_eq!(pending, 0);
    }
}
