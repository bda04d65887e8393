//! `gravity_data_lag_seconds`: the histogram of replication lag, observed by the status
//! collector at each collection (per watermark, [`crate::state::lag_seconds`]) and by the
//! canary (its measured end-to-end lag per table). One histogram, one cap of label sets.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{HistogramOpts, HistogramVec};
use time::OffsetDateTime;

use crate::base::lock;
use crate::gravity_api::status::{lag_labels, Status};
use crate::metrics::Store;

/// Most `{schema,table}` series of `gravity_data_lag_seconds`; the rest go to `_other`.
pub const MAX_LAG_SERIES: usize = 1000;

/// The lag histogram and the label sets it has (bounded).
#[derive(Debug)]
pub struct LagHistogram {
    lag: HistogramVec,
    series: Mutex<HashSet<(String, String)>>,
}

impl LagHistogram {
    /// Registers the histogram in the store's registry.
    pub fn new(store: &Store) -> LagHistogram {
        let buckets = prometheus::exponential_buckets(0.1, 2.0, 15).unwrap_or_default();
        let lag = HistogramVec::new(
            HistogramOpts::new(
                "gravity_data_lag_seconds",
                "How far gravity's output is behind its source (now − watermark EventTime), observed at each collection; per table in batch mode, schema=\"\" table=\"\" for the stream.",
            )
            .buckets(buckets),
            &["pipeline", "schema", "table"],
        )
        .expect("metric names in this crate are valid");
        let _ = store.registry().register(Box::new(lag.clone()));
        LagHistogram {
            lag,
            series: Mutex::new(HashSet::new()),
        }
    }

    /// The label set to use: itself while under the cap or already known, else `_other`.
    fn labels(&self, schema: &str, table: &str) -> (String, String) {
        let mut seen = lock(&self.series);
        let key = (schema.to_string(), table.to_string());
        if seen.contains(&key) || seen.len() < MAX_LAG_SERIES {
            seen.insert(key.clone());
            key
        } else {
            ("_other".into(), "_other".into())
        }
    }

    /// Observes the lag of every watermark of a `/status` at `now` (negative lag, a source
    /// clock ahead of this host's, counts as 0).
    pub fn observe_status(&self, st: &Status, now: OffsetDateTime, pipeline: &str) {
        for w in &st.watermarks {
            let (schema, table) = lag_labels(&st.stage, &w.key);
            let (schema, table) = self.labels(&schema, &table);
            self.lag
                .with_label_values(&[pipeline, &schema, &table])
                .observe(super::lag_seconds(w, now).max(0.0));
        }
    }

    /// Observes one measured lag of a table (the canary's end-to-end lag for its table).
    pub fn observe_table(&self, pipeline: &str, schema: &str, table: &str, lag: f64) {
        let (schema, table) = self.labels(schema, table);
        self.lag
            .with_label_values(&[pipeline, &schema, &table])
            .observe(lag.max(0.0));
    }

    /// How many label sets are in use (at most [`MAX_LAG_SERIES`]).
    pub fn series(&self) -> usize {
        lock(&self.series).len()
    }
}
