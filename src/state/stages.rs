//! gravity's per-stage latencies and queue gauges over one collection window, as the
//! `/metrics` collector ([`crate::collector::gravity_metrics`]) publishes them.

use std::time::Instant;

/// The mean latency of one stage over the events of one collection window.
#[derive(Debug, Clone, PartialEq)]
pub struct StageLatency {
    /// Stage name (`input`, `emitter`, `scheduler_submit`, `scheduler_ack`, `output`).
    pub stage: &'static str,
    /// Δsum / Δcount of gravity's histogram over the window.
    pub mean_seconds: f64,
    /// Events the stage observed in the window (Δcount).
    pub events: f64,
}

/// gravity's stage latencies over the last collection window: aggregates over every event
/// of the pipeline in that window, not of one event; and its queue lengths at the end of it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageWindow {
    /// When the window ended.
    pub at: Instant,
    /// Its length (0 for the first reading).
    pub window_seconds: f64,
    /// Stages with events in the window, in path order.
    pub stages: Vec<StageLatency>,
    /// gravity's queue lengths and batch sizes as read at the end of the window.
    pub queues: Queues,
}

/// One type of gravity's queues (`gravity_queue_length{type}`), at one reading.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueLength {
    /// gravity's `type` label with `-` as `_` (`input_buffer`, `table_buffer`,
    /// `table_latch`, `table_latch_ack`, `table_queue`, `worker`); only `[a-z0-9_]`.
    pub kind: String,
    /// Σ of the queues of that type (over `subtype`: tables, workers).
    pub total: f64,
    /// The longest single queue of that type.
    pub max: f64,
    /// How many queues of that type gravity reported.
    pub queues: u32,
}

/// gravity's queue gauges at one reading of its `/metrics`: `gravity_queue_length`
/// summed per type, `gravity_scheduler_batch_size` (per worker) and
/// `gravity_scheduler_nr_worker`. Gauges: a moment, not a window aggregate.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Queues {
    /// Per queue type, in gravity's order of first appearance; at most `MAX_QUEUE_KINDS`.
    pub lengths: Vec<QueueLength>,
    /// Mean of the scheduler's per-worker batch sizes.
    pub batch_size_mean: Option<f64>,
    /// Largest of the scheduler's per-worker batch sizes.
    pub batch_size_max: Option<f64>,
    /// The scheduler's worker count.
    pub workers: Option<f64>,
}

impl Queues {
    /// Whether gravity served none of the queue families.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty() && self.batch_size_max.is_none() && self.workers.is_none()
    }
}

impl StageWindow {
    /// The stage with the highest mean latency in the window.
    pub fn slowest(&self) -> Option<&StageLatency> {
        self.stages
            .iter()
            .max_by(|a, b| a.mean_seconds.total_cmp(&b.mean_seconds))
    }
}
