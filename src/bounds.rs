//! The exporter's byte and count bounds, and the process-wide counters of what they cut
//! short or dropped (rendered by [`crate::metrics`] as `gravity_exporter_truncated_total` and
//! `gravity_exporter_dropped_total`). Imports nothing from the crate.

use std::sync::atomic::{AtomicU64, Ordering};

/// Longest label value the exporter emits (bytes); longer values (a 10 KB watermark name,
/// a 15 MB version string) are cut at a character boundary and counted in
/// `gravity_exporter_truncated_total{what="label_value"}`.
pub const MAX_LABEL_VALUE_BYTES: usize = 256;
/// Largest pass-through text kept (bytes); series beyond it are dropped and counted in
/// `gravity_exporter_dropped_total{what="passthrough_bytes"}`.
pub const MAX_PASSTHROUGH_BYTES: usize = 8 << 20;
/// Largest `/metrics` answer (bytes): when the exporter's own families and the pass-through
/// together would exceed it, the pass-through is left out of that scrape (counted in
/// `gravity_exporter_dropped_total{what="exposition_bytes"}`).
pub const MAX_EXPOSITION_BYTES: usize = 16 << 20;

/// What a byte bound cut short (`gravity_exporter_truncated_total{what}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncated {
    /// A label value longer than [`MAX_LABEL_VALUE_BYTES`].
    LabelValue,
}

/// What a bound dropped (`gravity_exporter_dropped_total{what}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// A gravity answer over its body cap (the whole answer).
    ApiBody,
    /// A pass-through sample or HELP line longer than the line limit (series).
    PassthroughLine,
    /// Pass-through series beyond [`MAX_PASSTHROUGH_BYTES`] (series).
    PassthroughBytes,
    /// A pass-through family named like one of the exporter's own (families).
    PassthroughFamilyCollision,
    /// The pass-through left out of a scrape to keep it under [`MAX_EXPOSITION_BYTES`] (scrapes).
    ExpositionBytes,
    /// A pipeline left out of a scrape because an earlier one has its name (scrapes).
    PipelineNameCollision,
}

pub(crate) const TRUNCATED_WHAT: [&str; 1] = ["label_value"];
pub(crate) const DROPPED_WHAT: [&str; 6] = [
    "api_body",
    "passthrough_line",
    "passthrough_bytes",
    "passthrough_family_collision",
    "exposition_bytes",
    "pipeline_name_collision",
];
pub(crate) static TRUNCATED_COUNT: [AtomicU64; 1] = [AtomicU64::new(0)];
pub(crate) static DROPPED_COUNT: [AtomicU64; 6] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];

fn add(c: &AtomicU64, n: u64) {
    // saturating: a counter stops at u64::MAX instead of wrapping
    let _ = c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(n))
    });
}

/// Counts something cut short by a byte bound (process-wide).
pub fn count_truncated(what: Truncated, n: u64) {
    let i = match what {
        Truncated::LabelValue => 0,
    };
    add(&TRUNCATED_COUNT[i], n);
}

/// Counts something dropped by a bound (process-wide).
pub fn count_dropped(what: Dropped, n: u64) {
    let i = match what {
        Dropped::ApiBody => 0,
        Dropped::PassthroughLine => 1,
        Dropped::PassthroughBytes => 2,
        Dropped::PassthroughFamilyCollision => 3,
        Dropped::ExpositionBytes => 4,
        Dropped::PipelineNameCollision => 5,
    };
    add(&DROPPED_COUNT[i], n);
}
