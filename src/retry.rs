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

use std::collections::VecDeque;
use std::sync::Mutex;

use prometheus::{IntCounterVec, Opts};

use crate::metrics::{lock, Store};

/// Most pending reasons kept (a log read far ahead of the API cannot grow memory).
pub const MAX_PENDING: usize = 10_000;

/// The shared retry counter.
#[derive(Debug)]
pub struct RetryLedger {
    counter: IntCounterVec,
    pending: Mutex<VecDeque<&'static str>>,
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

    /// gravity's scheduler retry counter grew by `n`.
    pub fn scheduler_increase(&self, pipeline: &str, n: u64) {
        let mut p = lock(&self.pending);
        for _ in 0..n {
            let reason = p.pop_front().unwrap_or("other");
            self.counter
                .with_label_values(&[pipeline, "scheduler", reason])
                .inc();
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
}
