//! Truth from a MongoDB source: the oplog window and gravity's headroom in it, the Mongo
//! twin of the binlog purge headroom of [`super::source`].
//!
//! A replica set's oplog (`local.oplog.rs`) is a capped collection: when it is full, each
//! write removes the oldest entries. gravity tails it from its position (a BSON timestamp in
//! its `/status`, `current_position`) and can only resume while that position is still in
//! the oplog; once the oldest entry is newer than the position, the changes in between are
//! gone and the pipeline must be rebuilt from a new snapshot.
//!
//! Each collection of the source collector, for a Mongo source, logs in like gravity (TLS
//! and SCRAM from gravity's config, [`super::connections::mongo_security`]), reads the
//! oldest and newest entry's `ts` ([`crate::probe::mongo::oplog_bounds`]: two `find`s with
//! `limit` 1 and projection `ts`, within `--probe.timeout`, replies bounded to 4 MiB), and
//! compares them with gravity's position from the status collector's last typed `/status`.
//! The result is published as [`OplogWindow`] in the typed state (`ctx.state.oplog`) and the
//! families below are rendered from that value:
//!
//! * `gravity_source_oplog_window_seconds` = newest − oldest (seconds of the timestamps);
//! * `gravity_source_oplog_headroom_seconds` = gravity's position − oldest: how long the
//!   oplog may go on rolling over before gravity's position falls out of it; negative once it
//!   has (gravity cannot resume). Absent while gravity's position is not known.

use std::time::Duration;

use crate::gravity_config::Endpoint as GravityEndpoint;
use crate::metrics::Families;
use crate::probe::mongo::{self, OplogBounds};
use crate::probe::WireError;
use crate::state::OplogWindow;

use super::status::{Position, StatusSeen};

/// gravity's Mongo position in a `/status` (a BSON timestamp), if it is a Mongo stream.
pub fn gravity_position(seen: &StatusSeen) -> Option<u64> {
    match seen.status.position {
        Position::Mongo { current } => current,
        _ => None,
    }
}

/// The typed value from the source's oplog bounds and gravity's position (pure).
pub fn window(bounds: OplogBounds, gravity: Option<u64>) -> OplogWindow {
    OplogWindow {
        oldest: bounds.oldest,
        newest: bounds.newest,
        gravity,
    }
}

/// The families of an [`OplogWindow`] (pure).
pub fn oplog_families(w: &OplogWindow, pipeline: &str) -> Families {
    let p = [("pipeline", pipeline)];
    let mut f = Families::new();
    f.gauge(
        "gravity_source_oplog_window_seconds",
        "Seconds between the oldest and the newest entry of the Mongo source's oplog (local.oplog.rs): how far back a position can be and still be resumed from.",
        &p,
        w.window_seconds(),
    );
    if let Some(h) = w.headroom_seconds() {
        f.gauge(
            "gravity_source_oplog_headroom_seconds",
            "Seconds between the oldest entry of the Mongo source's oplog and gravity's position: how much longer the oplog may roll over before the position falls out of it; negative when it already has (gravity cannot resume).",
            &p,
            h,
        );
    }
    f
}

/// Logs in to the Mongo source like gravity and reads its oplog's bounds, all within
/// `timeout`. `Ok(None)`: the server has no oplog (a standalone, not a replica set member).
pub async fn read_bounds(
    src: &GravityEndpoint,
    timeout: Duration,
) -> Result<Option<OplogBounds>, WireError> {
    let endpoint = crate::probe::Endpoint::new(src.host.clone(), src.port);
    let security = super::connections::mongo_security(src);
    mongo::check_then(&endpoint, &security, timeout, |_, stream| {
        Box::pin(async move { mongo::oplog_bounds(stream).await })
    })
    .await
    .map(|(_, bounds)| bounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_the_window() {
        let ts = |s: u64| s << 32 | 1;
        let w = window(
            OplogBounds {
                oldest: ts(1_000),
                newest: ts(4_600),
            },
            Some(ts(4_000)),
        );
        let f = oplog_families(&w, "p");
        assert_eq!(
            f.value("gravity_source_oplog_window_seconds", &[("pipeline", "p")]),
            Some(3600.0)
        );
        assert_eq!(
            f.value(
                "gravity_source_oplog_headroom_seconds",
                &[("pipeline", "p")]
            ),
            Some(3000.0)
        );
        let lost = window(
            OplogBounds {
                oldest: ts(1_000),
                newest: ts(4_600),
            },
            Some(ts(900)),
        );
        assert_eq!(
            oplog_families(&lost, "p").value("gravity_source_oplog_headroom_seconds", &[]),
            Some(-100.0)
        );
        let unknown = window(
            OplogBounds {
                oldest: ts(1),
                newest: ts(2),
            },
            None,
        );
        let f = oplog_families(&unknown, "p");
        assert_eq!(f.value("gravity_source_oplog_headroom_seconds", &[]), None);
        assert_eq!(
            f.value("gravity_source_oplog_window_seconds", &[]),
            Some(1.0)
        );
    }
}
