//! The typed state of the pipeline: what each producer last found, in Rust types.
//!
//! Producers (the collectors, the connection prober, the watcher through
//! [`crate::collector::Up`]) set their slot when they publish; the views read the slots:
//! the health verdict ([`crate::health::inputs`]), the status page and `/api/status`
//! ([`crate::page::view`]) and `gravity-exporter check`. `/metrics` renders the same values
//! from the same place (each collector builds its families from the typed value it stores
//! here). Nothing reads a value back from rendered metrics by name: a renamed metric cannot
//! make a health check pass silently.
//!
//! Each slot keeps the last value its producer published: a failing collector keeps its last
//! good value, as its `/metrics` snapshot does, and `gravity_exporter_collector_success`
//! says it is stale.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use time::OffsetDateTime;

use crate::gravity_api::status::{secs_between, BinlogPos, Position, Status, Watermark};

pub mod lag;
pub mod recent;
pub mod stages;

/// One producer's last value.
#[derive(Debug)]
pub struct Slot<T>(RwLock<Option<Arc<T>>>);

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot(RwLock::new(None))
    }
}

impl<T> Slot<T> {
    /// The last value published, if any.
    pub fn get(&self) -> Option<Arc<T>> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Publishes a value (`None`: nothing known, e.g. the process is down).
    pub fn set(&self, v: Option<T>) {
        let v = v.map(Arc::new);
        match self.0.write() {
            Ok(mut g) => *g = v,
            Err(p) => *p.into_inner() = v,
        }
    }
}

/// gravity's `/healthz` on its last successful check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Healthz {
    /// It answered 200 (every sliding window's watermark is fresh).
    pub ok: bool,
    /// How long it took.
    pub latency_seconds: f64,
}

/// Rows per second over the last collection window, summed over every flow.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowRates {
    /// gravity's input (`gravity_throughput_rows_per_second`).
    pub rows_in: Option<f64>,
    /// gravity's output (`gravity_output_rows_per_second`).
    pub rows_out: Option<f64>,
}

/// One endpoint's result in the last probe round (`gravity_connection_health`).
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointHealth {
    /// source, target, kafka, elasticsearch, ...
    pub component: &'static str,
    /// host:port.
    pub endpoint: String,
    /// The probe succeeded.
    pub healthy: bool,
}

/// What the source collector learnt about its own access.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceAccess {
    /// Each privilege checked, and whether the source login lacks it
    /// (`gravity_source_privilege_missing`).
    pub privileges: Vec<(String, bool)>,
}

impl SourceAccess {
    /// The privileges the source login lacks.
    pub fn missing(&self) -> Vec<String> {
        self.privileges
            .iter()
            .filter(|(_, m)| *m)
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// A Mongo source's oplog (`local.oplog.rs`) against gravity's position, as the source
/// collector last read it. Timestamps are BSON timestamps (`seconds << 32 | ordinal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OplogWindow {
    /// `ts` of the oldest entry still in the capped oplog.
    pub oldest: u64,
    /// `ts` of the newest entry.
    pub newest: u64,
    /// gravity's position from its last `/status` (`None`: not known or too old).
    pub gravity: Option<u64>,
}

impl OplogWindow {
    /// Seconds between the oldest and the newest entry (`gravity_source_oplog_window_seconds`).
    pub fn window_seconds(&self) -> f64 {
        (self.newest >> 32).saturating_sub(self.oldest >> 32) as f64
    }

    /// Seconds between the oldest entry and gravity's position
    /// (`gravity_source_oplog_headroom_seconds`): how much longer the oplog may roll over
    /// before gravity's position falls out of it. Negative when it already has (gravity's
    /// position is older than the oldest entry; at least −1 even within the same second):
    /// gravity cannot resume.
    pub fn headroom_seconds(&self) -> Option<f64> {
        let g = self.gravity?;
        let (gs, os) = (g >> 32, self.oldest >> 32);
        Some(if g >= self.oldest {
            gs.saturating_sub(os) as f64
        } else {
            -(os.saturating_sub(gs).max(1) as f64)
        })
    }

    /// Whether gravity's position is out of the window (older than the oldest entry).
    pub fn position_lost(&self) -> bool {
        self.gravity.is_some_and(|g| g < self.oldest)
    }
}

/// gravity's own established connections per (component, endpoint).
pub type Established = BTreeMap<(String, String), u64>;

/// gravity's process figures, as read from `/proc/<pid>`: the typed state the process
/// collector publishes ([`crate::state`]) and renders as families.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProcessFigures {
    /// User + system CPU seconds.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub resident_bytes: f64,
    /// Virtual memory in bytes.
    pub virtual_bytes: f64,
    /// OS threads.
    pub threads: f64,
    /// Start time, Unix seconds.
    pub start_time_seconds: f64,
    /// The state letter of `stat` (`R`, `S`, ...).
    pub state: char,
    /// Open file descriptors, when `fd/` could be listed.
    pub open_fds: Option<f64>,
    /// The soft limit on open files, when `limits` has it.
    pub max_fds: Option<f64>,
    /// Bytes read from and written to storage, when `io` could be read.
    pub io_bytes: Option<(f64, f64)>,
    /// Voluntary and involuntary context switches, each when `status` has it.
    pub context_switches: [Option<f64>; 2],
}

/// The replication lag of one watermark as of `now`: `now − EventTime`, in seconds (how far
/// the output is behind the source, in event time). The one definition: `/metrics`
/// (`gravity_watermark_lag_seconds`, `gravity_data_lag_seconds`), the status page and its
/// history, `/api/status`, `check` and OTLP all evaluate this, each at its own `now` (the
/// page at render time, so lag keeps growing while gravity is silent).
pub fn lag_seconds(w: &Watermark, now: OffsetDateTime) -> f64 {
    secs_between(now, w.event_time)
}

/// How long a watermark has not moved as of `now`: `now − ProcessTime`, in seconds (the
/// stall; gravity's heartbeat moves it every few seconds while the pipeline runs). The one
/// definition, like [`lag_seconds`].
pub fn stall_seconds(w: &Watermark, now: OffsetDateTime) -> f64 {
    secs_between(now, w.process_time)
}

/// A parsed `/status` and when it was read, kept in the state for collectors that
/// compare gravity's position with the source's.
#[derive(Debug, Clone)]
pub struct StatusSeen {
    /// When the answer arrived.
    pub at: std::time::Instant,
    /// What it said.
    pub status: Status,
}

impl StatusSeen {
    /// The largest stall of the watermarks as of `now` (`now − ProcessTime`: it keeps
    /// growing while gravity does not answer); `None` without watermarks.
    pub fn max_stall_seconds(&self, now: OffsetDateTime) -> Option<f64> {
        self.status
            .watermarks
            .iter()
            .map(|w| stall_seconds(w, now))
            .reduce(f64::max)
    }

    /// The largest lag of the watermarks as of `now` (`now − EventTime`).
    pub fn max_lag_seconds(&self, now: OffsetDateTime) -> Option<f64> {
        self.status
            .watermarks
            .iter()
            .map(|w| lag_seconds(w, now))
            .reduce(f64::max)
    }

    /// gravity's binlog position to compare with the source: the current position of a
    /// binlog stream, or the start position of a full dump (where streaming resumes, so it
    /// must stay retained until the dump is done).
    pub fn binlog_position(&self) -> Option<&BinlogPos> {
        match &self.status.position {
            Position::MysqlStream { current, .. } => current.as_ref(),
            Position::MysqlBatch { start_binlog, .. } => start_binlog.as_ref(),
            _ => None,
        }
    }

    /// Whether gravity is streaming the binlog (its position is expected to move).
    pub fn is_streaming(&self) -> bool {
        matches!(self.status.position, Position::MysqlStream { .. })
    }
}

/// The typed state of the pipeline (see the module doc).
#[derive(Debug, Default)]
pub struct PipelineState {
    /// gravity's process figures (`None` while it is down or not visible).
    pub process: Slot<ProcessFigures>,
    /// gravity's `/healthz`.
    pub healthz: Slot<Healthz>,
    /// gravity's last parsed `/status` and when it was read (`None` also while gravity
    /// answers that it has no position stored yet).
    pub status: Slot<StatusSeen>,
    /// When `/status` last answered at all, with a position or with "none stored yet".
    pub status_answered: Slot<std::time::Instant>,
    /// Throughput from gravity's `/metrics`.
    pub rows: Slot<RowRates>,
    /// The last connection-probe round (`None`: probes off).
    pub endpoints: Slot<Vec<EndpointHealth>>,
    /// gravity's own TCP connections.
    pub established: Slot<Established>,
    /// The source collector's access.
    pub source: Slot<SourceAccess>,
    /// A Mongo source's oplog window against gravity's position (`None`: not a Mongo
    /// source, no oplog, or not read yet).
    pub oplog: Slot<OplogWindow>,
    /// Bytes between gravity's binlog position and the MySQL source's current one, as the
    /// source collector last compared them (`None`: unknown).
    pub binlog_bytes_behind: Slot<u64>,
    /// Which stage holds the pipeline back and what to change, over the last window of
    /// collections (`None`: not enough readings yet, or gravity's `/metrics` not read).
    pub diagnosis: Slot<crate::diagnosis::Diagnosis>,
    /// The fill of each input stream's sliding window (waiting / `sliding-window-size`) at
    /// the last reading.
    pub window_fill: Slot<Vec<(String, f64)>>,
    /// gravity's per-stage latencies over the last `/metrics` window (from the
    /// gravity_metrics collector; interval aggregates over all events).
    pub stages: Slot<stages::StageWindow>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_keeps_the_last_value_until_replaced() {
        let s: Slot<u32> = Slot::default();
        assert_eq!(s.get(), None);
        s.set(Some(3));
        assert_eq!(s.get().as_deref(), Some(&3));
        s.set(None);
        assert_eq!(s.get(), None);
    }

    #[test]
    fn oplog_window_and_headroom() {
        let ts = |secs: u64, ord: u64| (secs << 32) | ord;
        let mut w = OplogWindow {
            oldest: ts(1000, 3),
            newest: ts(4600, 1),
            gravity: Some(ts(4000, 7)),
        };
        assert_eq!(w.window_seconds(), 3600.0);
        assert_eq!(w.headroom_seconds(), Some(3000.0));
        assert!(!w.position_lost());
        // at the oldest entry: still resumable, no headroom left
        w.gravity = Some(ts(1000, 3));
        assert_eq!(w.headroom_seconds(), Some(0.0));
        assert!(!w.position_lost());
        // same second, an earlier ordinal: out of the window
        w.gravity = Some(ts(1000, 2));
        assert_eq!(w.headroom_seconds(), Some(-1.0));
        assert!(w.position_lost());
        w.gravity = Some(ts(400, 1));
        assert_eq!(w.headroom_seconds(), Some(-600.0));
        w.gravity = None;
        assert_eq!(w.headroom_seconds(), None);
        // a reset clock never underflows
        let odd = OplogWindow {
            oldest: ts(10, 0),
            newest: ts(5, 0),
            gravity: None,
        };
        assert_eq!(odd.window_seconds(), 0.0);
    }
}
