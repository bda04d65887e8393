//! The `/healthz` collector: gravity's own health verdict (200 when every sliding
//! window's watermark ProcessTime is younger than the scheduler's healthy-threshold,
//! else 500), the request latency, and whether gravity's API answers at all (which feeds
//! `gravity_up`).
#![warn(clippy::arithmetic_side_effects)]

use std::sync::Arc;

use super::{BoxFuture, CollectError, Collector, Context};
use crate::metrics::Families;

/// Largest `/healthz` body read (gravity sends an empty one).
const BODY_LIMIT: usize = 64 * 1024;

/// Builds the families from one answer (pure): `status` is the HTTP status, if any answer came.
pub fn parse_healthz(status: Option<u16>, latency_seconds: f64, pipeline: &str) -> Families {
    let p = [("pipeline", pipeline)];
    let mut f = Families::new();
    f.gauge(
        "gravity_healthz",
        "1 when gravity's /healthz answers 200 (every sliding window's watermark is fresh), else 0.",
        &p,
        if status == Some(200) { 1.0 } else { 0.0 },
    );
    if status.is_some() {
        f.gauge(
            "gravity_healthz_request_duration_seconds",
            "How long gravity's /healthz took to answer on the last check.",
            &p,
            latency_seconds,
        );
    }
    f
}

/// The collector.
#[derive(Debug, Default)]
pub struct HealthzCollector;

impl Collector for HealthzCollector {
    fn name(&self) -> &'static str {
        "healthz"
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let target = ctx.target();
            let timeout = ctx.settings().gravity_timeout;
            // A zombie gravity cannot answer: skip the request. Without a visible process
            // (gravity in another container, `--gravity.url` remote mode, or between an
            // exit and the next start) the API is asked: it is the only sign of life.
            if target.process.is_some_and(|p| !p.is_alive()) {
                if ctx.up.set_api(false) {
                    ctx.publish_up();
                }
                return Err(CollectError::Unavailable(
                    "gravity process not running".into(),
                ));
            }
            match ctx
                .gravity
                .get(&target.url, "/healthz", timeout, BODY_LIMIT)
                .await
            {
                Ok(r) => {
                    if ctx.up.set_api(true) {
                        ctx.publish_up();
                    }
                    ctx.state.healthz.set(Some(crate::state::Healthz {
                        ok: r.status.as_u16() == 200,
                        latency_seconds: r.elapsed.as_secs_f64(),
                    }));
                    Ok(parse_healthz(
                        Some(r.status.as_u16()),
                        r.elapsed.as_secs_f64(),
                        &target.pipeline,
                    ))
                }
                Err(e) => {
                    if ctx.up.set_api(false) {
                        ctx.publish_up();
                    }
                    Err(CollectError::Unavailable(e.to_string()))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_verdicts() {
        let f = parse_healthz(Some(200), 0.01, "p");
        assert_eq!(f.value("gravity_healthz", &[("pipeline", "p")]), Some(1.0));
        assert_eq!(
            f.value("gravity_healthz_request_duration_seconds", &[]),
            Some(0.01)
        );
        let f = parse_healthz(Some(500), 0.01, "p");
        assert_eq!(f.value("gravity_healthz", &[]), Some(0.0));
        let f = parse_healthz(None, 0.0, "p");
        assert_eq!(f.value("gravity_healthz", &[]), Some(0.0));
        assert_eq!(
            f.value("gravity_healthz_request_duration_seconds", &[]),
            None
        );
    }
}
