//! Connection probes: is every endpoint around the pipeline reachable, and does it let
//! gravity's credentials in?
//!
//! The endpoints come from gravity's config ([`crate::gravity_config`]): the source (MySQL
//! or Mongo), gravity's probe DB (`source-probe-config`), the MySQL target, each Kafka
//! broker and each Elasticsearch URL. Each is probed at the protocol level with
//! [`crate::probe`] (MySQL: handshake, login with gravity's user and password, `SELECT 1`;
//! Kafka: `ApiVersions`; Mongo: `hello`; Elasticsearch: `GET /` with basic auth), never
//! with a bare TCP connect: a connect that never completes the MySQL handshake counts
//! towards the server's `max_connect_errors` and eventually gets the exporter's host
//! blocked (prometheus/blackbox_exporter issue 505). docs/connections.md has the details.
//!
//! The [`ConnectionProber`] runs on its own schedule (`--probe.interval`, default 15 s),
//! not in the collector runner: a round probes every endpoint concurrently, each bounded by
//! `--probe.timeout` (default 3 s), then publishes the `connections` snapshot
//! (`gravity_connection_health`, `gravity_connection_failure_reason`) and updates the
//! stateful `gravity_connection_probe_duration_seconds` histogram and
//! `gravity_connection_probe_failures_total` counter. `--probe.interval=0s` turns probes off.
//!
//! Label cardinality: at most [`MAX_ENDPOINTS`] endpoints; label sets of endpoints that
//! leave the config are removed from the stateful metrics. Passwords are read from the
//! [`Secret`](crate::redact::Secret) only by the probes themselves and never reach a label,
//! log line or detail string.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

use super::Context;
use crate::base::lock;
use crate::config::Settings;
use crate::gravity_config::{Endpoint, EndpointRole, GravityConfig, Protocol};
use crate::metrics::Families;
use crate::probe::mysql::{Login, SharedConn};
use crate::probe::{self, FailureReason, ProbeOutcome};

/// Name of the snapshot in the store.
pub const SNAPSHOT: &str = "connections";
/// Most endpoints probed (and labelled).
pub const MAX_ENDPOINTS: usize = 64;
/// Buckets of the probe duration histogram, in seconds.
pub const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The endpoints to probe, in config order: duplicates of (component, address) dropped,
/// at most [`MAX_ENDPOINTS`].
pub fn probe_targets(cfg: &GravityConfig) -> Vec<Endpoint> {
    let mut seen = HashSet::new();
    cfg.endpoints
        .iter()
        .filter(|e| seen.insert((e.role, e.address())))
        .take(MAX_ENDPOINTS)
        .cloned()
        .collect()
}

/// The result of probing one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// `component` label (source, probe_db, target, kafka, elasticsearch).
    pub component: &'static str,
    /// `endpoint` label (host:port).
    pub endpoint: String,
    /// What the probe found.
    pub outcome: ProbeOutcome,
}

/// Builds the snapshot from a round's results (pure).
pub fn connection_families(results: &[ProbeResult], pipeline: &str) -> Families {
    let mut f = Families::new();
    for r in results {
        let l = [
            ("pipeline", pipeline),
            ("component", r.component),
            ("endpoint", r.endpoint.as_str()),
        ];
        f.gauge(
            "gravity_connection_health",
            "1 when the last protocol-level probe of the endpoint succeeded (MySQL login + SELECT 1, Kafka ApiVersions + SASL login, Mongo hello + SCRAM login, Elasticsearch GET /; over TLS where gravity's config uses it), else 0.",
            &l,
            if r.outcome.ok { 1.0 } else { 0.0 },
        );
        if let Some(reason) = r.outcome.reason {
            f.gauge(
                "gravity_connection_failure_reason",
                "1 for why the last probe of the endpoint failed (refused, timeout, auth, tls_required, tls, auth_plugin_unsupported, too_many_connections, privilege, protocol, dns); absent while it is healthy.",
                &[
                    ("pipeline", pipeline),
                    ("component", r.component),
                    ("endpoint", r.endpoint.as_str()),
                    ("reason", reason.as_str()),
                ],
                1.0,
            );
        }
    }
    f
}

/// The MySQL login the exporter uses for `e`: the monitoring login of `--source.username`
/// / `--target.username` when given for the endpoint's role, else gravity's own user.
pub fn mysql_login(s: &Settings, e: &Endpoint) -> Login {
    let monitor = match e.role {
        EndpointRole::Source => s.source_login.as_ref(),
        EndpointRole::Target => s.target_login.as_ref(),
        _ => None,
    };
    let (user, password) = match monitor {
        Some(m) => (m.user.clone(), m.password.clone()),
        None => (e.user.clone().unwrap_or_default(), e.password.clone()),
    };
    Login {
        endpoint: probe::Endpoint::new(e.host.clone(), e.port),
        user,
        password,
    }
}

/// TLS and SASL of a Kafka endpoint, as gravity's config sets them.
pub fn kafka_security(e: &Endpoint) -> probe::kafka::KafkaSecurity {
    probe::kafka::KafkaSecurity {
        tls: e.tls.then(|| e.tls_options.clone()),
        sasl: e.sasl.map(|mechanism| probe::kafka::Sasl {
            mechanism,
            user: e.user.clone().unwrap_or_default(),
            password: e.password.clone(),
        }),
    }
}

/// TLS and login of a Mongo endpoint, as gravity's config sets them: gravity (mgo) logs in
/// when both user and password are set, in `database` (default `admin`).
pub fn mongo_security(e: &Endpoint) -> probe::mongo::MongoSecurity {
    let user = e.user.clone().filter(|u| !u.is_empty());
    probe::mongo::MongoSecurity {
        tls: e.tls.then(|| e.tls_options.clone()),
        login: user
            .filter(|_| !e.password.is_empty())
            .map(|user| probe::mongo::MongoLogin {
                user,
                password: e.password.clone(),
                auth_source: e.auth_source.clone().unwrap_or_else(|| "admin".to_string()),
            }),
    }
}

/// Probes one endpoint at the protocol level, within `timeout`. A MySQL endpoint with a
/// shared connection is probed on it (`SELECT 1`, logging in only when needed); without
/// one, with a new login.
pub async fn probe_endpoint(
    e: &Endpoint,
    shared: Option<&SharedConn>,
    timeout: Duration,
    retry_after: Duration,
) -> ProbeOutcome {
    let pe = probe::Endpoint::new(e.host.clone(), e.port);
    match e.protocol {
        Protocol::Mysql => match shared {
            Some(conn) => conn.probe(timeout, retry_after).await,
            None => {
                probe::mysql::probe(&pe, e.user.as_deref().unwrap_or(""), &e.password, timeout)
                    .await
            }
        },
        Protocol::Kafka => probe::kafka::probe_with(&pe, &kafka_security(e), timeout).await,
        Protocol::Mongo => probe::mongo::probe_with(&pe, &mongo_security(e), timeout).await,
        Protocol::Http => {
            probe::http::probe(&pe, e.tls, e.user.as_deref(), &e.password, timeout).await
        }
    }
}

/// Probes every endpoint concurrently, each on a new connection; each probe is bounded by
/// `timeout` (plus a margin for a probe that overran its own deadline). Results come back
/// in `endpoints` order.
pub async fn probe_all(endpoints: &[Endpoint], timeout: Duration) -> Vec<ProbeResult> {
    probe_all_shared(endpoints, &[], timeout, Duration::ZERO).await
}

/// Like [`probe_all`], MySQL endpoint `i` probed on `shared[i]` when that is `Some`.
pub async fn probe_all_shared(
    endpoints: &[Endpoint],
    shared: &[Option<Arc<SharedConn>>],
    timeout: Duration,
    retry_after: Duration,
) -> Vec<ProbeResult> {
    let mut set = tokio::task::JoinSet::new();
    for (i, e) in endpoints.iter().enumerate() {
        let e = e.clone();
        let conn = shared.get(i).cloned().flatten();
        set.spawn(async move {
            let start = Instant::now();
            let outcome = match tokio::time::timeout(
                timeout * 2 + Duration::from_millis(500),
                probe_endpoint(&e, conn.as_deref(), timeout, retry_after),
            )
            .await
            {
                Ok(o) => o,
                Err(_) => ProbeOutcome::failure(
                    FailureReason::Timeout,
                    start.elapsed(),
                    "probe overran its deadline",
                ),
            };
            (i, outcome)
        });
    }
    let mut outcomes: Vec<Option<ProbeOutcome>> = vec![None; endpoints.len()];
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, o)) => {
                if let Some(slot) = outcomes.get_mut(i) {
                    *slot = Some(o);
                }
            }
            Err(e) => tracing::error!(error = %e, "connection probe task failed"),
        }
    }
    endpoints
        .iter()
        .zip(outcomes)
        .map(|(e, o)| ProbeResult {
            component: e.role.as_str(),
            endpoint: e.address(),
            outcome: o.unwrap_or_else(|| {
                ProbeOutcome::failure(FailureReason::Protocol, Duration::ZERO, "probe task failed")
            }),
        })
        .collect()
}

/// Delays before each new probe of an endpoint that was healthy and failed this round: the
/// failure is exported only when every probe fails (about 3 s of failures plus the probes'
/// own time), so that `gravity_connection_health` 0 is a confirmed outage and the alerts'
/// `for:` can be short (alerts/README.md). Endpoints already failing, or not probed
/// before, are not probed again within the round.
pub const CONFIRM_DELAYS: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(2)];

/// Confirms the failures of a round: each failed result for which `confirm` is true is
/// probed again with `reprobe` after each of `delays`; the first success replaces the
/// failure. Bounded by `delays.len()` new probes per endpoint.
pub async fn confirm_failures<F, Fut>(
    mut results: Vec<ProbeResult>,
    endpoints: &[Endpoint],
    confirm: impl Fn(&ProbeResult) -> bool,
    delays: &[Duration],
    mut reprobe: F,
) -> Vec<ProbeResult>
where
    F: FnMut(Vec<Endpoint>) -> Fut,
    Fut: std::future::Future<Output = Vec<ProbeResult>>,
{
    let mut pending: Vec<usize> = results
        .iter()
        .enumerate()
        .filter(|(i, r)| !r.outcome.ok && confirm(r) && *i < endpoints.len())
        .map(|(i, _)| i)
        .collect();
    for d in delays {
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(*d).await;
        let eps: Vec<Endpoint> = pending
            .iter()
            .filter_map(|&i| endpoints.get(i).cloned())
            .collect();
        let again = reprobe(eps).await;
        let mut still = Vec::new();
        for (&i, r) in pending
            .iter()
            .zip(again.into_iter().map(Some).chain(std::iter::repeat(None)))
        {
            match (r, results.get_mut(i)) {
                (Some(r), Some(slot)) if r.outcome.ok => *slot = r,
                _ => still.push(i),
            }
        }
        pending = still;
    }
    results
}

type LabelKey = (String, &'static str, String);

/// Runs the probes on their own schedule and publishes the results.
pub struct ConnectionProber {
    ctx: Arc<Context>,
    duration: HistogramVec,
    failures: IntCounterVec,
    /// Label sets (pipeline, component, endpoint) present in the stateful metrics.
    known: Mutex<HashSet<LabelKey>>,
    /// Last health per label set, to log changes only.
    last: Mutex<HashMap<LabelKey, bool>>,
    /// The shared MySQL connections of the endpoints probed last (kept open between rounds).
    held: Mutex<Vec<Arc<SharedConn>>>,
}

impl ConnectionProber {
    /// Registers the histogram and the failure counter in the store's registry.
    pub fn new(ctx: Arc<Context>) -> ConnectionProber {
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "gravity_connection_probe_duration_seconds",
                "How long each protocol-level probe of the endpoint took (to success or failure).",
            )
            .buckets(BUCKETS.to_vec()),
            &["pipeline", "component", "endpoint"],
        )
        .expect("metric names in this crate are valid");
        let failures = IntCounterVec::new(
            Opts::new(
                "gravity_connection_probe_failures_total",
                "Failed protocol-level probes of the endpoint, by reason (refused, timeout, auth, tls_required, tls, auth_plugin_unsupported, too_many_connections, privilege, protocol, dns).",
            ),
            &["pipeline", "component", "endpoint", "reason"],
        )
        .expect("metric names in this crate are valid");
        let reg = ctx.store.registry();
        let _ = reg.register(Box::new(duration.clone()));
        let _ = reg.register(Box::new(failures.clone()));
        ConnectionProber {
            ctx,
            duration,
            failures,
            known: Mutex::new(HashSet::new()),
            last: Mutex::new(HashMap::new()),
            held: Mutex::new(Vec::new()),
        }
    }

    /// The endpoints to probe now, from the current target's config.
    fn endpoints(&self) -> (String, Vec<Endpoint>) {
        let t = self.ctx.target();
        let eps = t.config.as_ref().map(probe_targets).unwrap_or_default();
        (t.pipeline.clone(), eps)
    }

    /// Runs one round: probes, records, publishes. Returns the results.
    pub async fn probe_once(&self, timeout: Duration) -> Vec<ProbeResult> {
        let (pipeline, endpoints) = self.endpoints();
        let s = self.ctx.settings();
        let shared: Vec<Option<Arc<SharedConn>>> = endpoints
            .iter()
            .map(|e| {
                (e.protocol == Protocol::Mysql).then(|| self.ctx.mysql.get(mysql_login(&s, e)))
            })
            .collect();
        *lock(&self.held) = shared.iter().flatten().cloned().collect();
        // A failed login is tried again at the next round, not before.
        let retry_after = s
            .probe_interval
            .map(|i| i.mul_f64(0.9))
            .unwrap_or(Duration::ZERO);
        let results = probe_all_shared(&endpoints, &shared, timeout, retry_after).await;
        // A newly failing endpoint (healthy in the last round) is probed again on a new
        // connection before its failure is published.
        let was_healthy: HashSet<(&'static str, String)> = lock(&self.last)
            .iter()
            .filter(|(k, ok)| **ok && k.0 == pipeline)
            .map(|(k, _)| (k.1, k.2.clone()))
            .collect();
        let results = confirm_failures(
            results,
            &endpoints,
            |r| was_healthy.contains(&(r.component, r.endpoint.clone())),
            &CONFIRM_DELAYS,
            |eps| async move { probe_all(&eps, timeout).await },
        )
        .await;
        self.record(&pipeline, &results);
        results
    }

    fn record(&self, pipeline: &str, results: &[ProbeResult]) {
        let current: HashSet<LabelKey> = results
            .iter()
            .map(|r| (pipeline.to_string(), r.component, r.endpoint.clone()))
            .collect();
        self.forget_except(&current);
        {
            let mut known = lock(&self.known);
            let mut last = lock(&self.last);
            for r in results {
                let l = [pipeline, r.component, r.endpoint.as_str()];
                let key = (pipeline.to_string(), r.component, r.endpoint.clone());
                if known.insert(key.clone()) {
                    // Every reason from the start, so rate() sees the first failure.
                    for reason in FailureReason::ALL {
                        self.failures.with_label_values(&[
                            pipeline,
                            r.component,
                            &r.endpoint,
                            reason.as_str(),
                        ]);
                    }
                }
                self.duration
                    .with_label_values(&l)
                    .observe(r.outcome.latency.as_secs_f64());
                if let Some(reason) = r.outcome.reason {
                    self.failures
                        .with_label_values(&[pipeline, r.component, &r.endpoint, reason.as_str()])
                        .inc();
                }
                let before = last.insert(key, r.outcome.ok);
                let o = &r.outcome;
                match (before, o.ok) {
                    (Some(true) | None, false) => tracing::warn!(
                        component = r.component,
                        endpoint = %r.endpoint,
                        reason = o.reason.map(FailureReason::as_str).unwrap_or(""),
                        detail = %o.detail,
                        "connection probe failed"
                    ),
                    (Some(false), true) => tracing::info!(
                        component = r.component,
                        endpoint = %r.endpoint,
                        "connection probe succeeds again"
                    ),
                    (None, true) => tracing::info!(
                        component = r.component,
                        endpoint = %r.endpoint,
                        detail = %o.detail,
                        "connection probe succeeded"
                    ),
                    _ => tracing::debug!(
                        component = r.component,
                        endpoint = %r.endpoint,
                        ok = o.ok,
                        latency_ms = o.latency.as_millis() as u64,
                        detail = %o.detail,
                        "connection probe"
                    ),
                }
            }
        }
        self.ctx
            .store
            .set_snapshot(SNAPSHOT, connection_families(results, pipeline));
        self.ctx.state.endpoints.set(Some(
            results
                .iter()
                .map(|r| crate::state::EndpointHealth {
                    component: r.component,
                    endpoint: r.endpoint.clone(),
                    healthy: r.outcome.ok,
                })
                .collect(),
        ));
        self.ctx.recent.record_probes(
            results
                .iter()
                .map(|r| crate::state::recent::ProbeView {
                    component: r.component,
                    endpoint: r.endpoint.clone(),
                    ok: r.outcome.ok,
                    reason: r.outcome.reason.map(FailureReason::as_str),
                    latency_seconds: r.outcome.latency.as_secs_f64(),
                    detail: r.outcome.detail.clone(),
                })
                .collect(),
        );
    }

    /// Drops the stateful series of label sets not in `keep`.
    fn forget_except(&self, keep: &HashSet<LabelKey>) {
        let mut known = lock(&self.known);
        let gone: Vec<LabelKey> = known.difference(keep).cloned().collect();
        for k in gone {
            let (p, c, e) = (&k.0, k.1, &k.2);
            let _ = self.duration.remove_label_values(&[p, c, e]);
            for reason in FailureReason::ALL {
                let _ = self
                    .failures
                    .remove_label_values(&[p, c, e, reason.as_str()]);
            }
            known.remove(&k);
            lock(&self.last).remove(&k);
        }
    }

    /// Runs forever: a round every `--probe.interval`, or at once when the endpoint list
    /// changes (gravity found, config reloaded). With probes off, publishes nothing. Each
    /// round is a cycle of task `connections`. Shared, so that the supervisor can start it
    /// again after a panic.
    pub async fn run(self: Arc<Self>) {
        let tasks = self.ctx.store.tasks().clone();
        loop {
            let s = self.ctx.settings();
            let Some(interval) = s.probe_interval else {
                self.forget_except(&HashSet::new());
                self.ctx.store.set_snapshot(SNAPSHOT, Families::new());
                self.ctx.state.endpoints.set(None);
                self.ctx.recent.clear_probes();
                // Off: nothing to do until the settings change (SIGHUP); no timer.
                let mut settings = self.ctx.settings.clone();
                settings.mark_unchanged();
                if self.ctx.settings().probe_interval.is_some() {
                    continue; // changed since the look above
                }
                if settings.changed().await.is_err() {
                    return; // the exporter is stopping
                }
                continue;
            };
            // subscribed before the list is read: a change from here on wakes the wait below
            let mut target = self.ctx.target_seq.subscribe();
            let (_, probed) = self.endpoints();
            let start = Instant::now();
            self.probe_once(s.probe_timeout).await;
            // A round that ran is a success of the task; the endpoints' health is its result.
            tasks.cycle("connections", start.elapsed(), true);
            crate::spans::slow_operation("probe round", start.elapsed(), true);
            // Until the next round: woken early only by a new target or new settings (no
            // polling: an idle exporter wakes once a probe interval for this).
            let next = tokio::time::Instant::from_std(start)
                .checked_add(interval)
                .unwrap_or_else(tokio::time::Instant::now);
            let mut settings = self.ctx.settings.clone();
            settings.mark_unchanged();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    r = target.changed() => {
                        if r.is_err() {
                            return; // the exporter is stopping
                        }
                    }
                    r = settings.changed() => {
                        if r.is_err() {
                            return; // the exporter is stopping
                        }
                    }
                }
                let (_, now) = self.endpoints();
                if now != probed || self.ctx.settings().probe_interval != Some(interval) {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gravity_config;

    const M2K: &str = include_str!("../../tests/fixtures/configs/mysql2kafka-stream.toml");

    fn outcome(ok: bool, reason: Option<FailureReason>) -> ProbeOutcome {
        match reason {
            None if ok => ProbeOutcome::success(Duration::from_millis(3), "ok"),
            r => ProbeOutcome::failure(
                r.unwrap_or(FailureReason::Protocol),
                Duration::from_millis(3),
                "x",
            ),
        }
    }

    /// A new target (gravity found again with another config, a reload) wakes the prober at
    /// once, with an hour to the next round: no polling in between.
    #[tokio::test]
    async fn a_new_endpoint_list_is_probed_at_once() {
        let flags = crate::config::Flags {
            probe_interval: Some("1h".into()),
            probe_timeout: Some("200ms".into()),
            ..Default::default()
        };
        let settings = crate::config::Settings::from_flags(flags).unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings.clone()));
        let ctx = Context::new(rx, Arc::new(crate::metrics::Store::new()));
        let with = |text: &str| {
            let mut t = crate::discovery::Target::from_settings(&settings);
            t.config = Some(gravity_config::parse(text, false).unwrap());
            t
        };
        ctx.set_target(with(M2K));
        let prober = Arc::new(ConnectionProber::new(ctx.clone()));
        let task = tokio::spawn(prober.run());
        let probed = |host: &'static str| {
            let ctx = ctx.clone();
            async move {
                for _ in 0..200 {
                    let seen = ctx.state.endpoints.get().unwrap_or_default();
                    if seen.iter().any(|e| e.endpoint.starts_with(host)) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                false
            }
        };
        assert!(probed("mysql-primary.internal").await);
        ctx.set_target(with(&M2K.replace("mysql-primary.internal", "127.0.0.2")));
        assert!(
            probed("127.0.0.2").await,
            "the new endpoint list was not probed"
        );
        task.abort();
    }

    /// A failure of a healthy endpoint is probed again before it is published: a blip
    /// (the second probe succeeds) reads healthy, a lasting failure is confirmed after every
    /// delay, and an endpoint that was already failing is not probed again.
    #[tokio::test(start_paused = true)]
    async fn failures_are_confirmed_before_they_are_published() {
        let c = gravity_config::parse(M2K, false).unwrap();
        let eps = probe_targets(&c);
        assert!(eps.len() >= 2, "{eps:?}");
        let res = |e: &Endpoint, ok: bool| ProbeResult {
            component: e.role.as_str(),
            endpoint: e.address(),
            outcome: outcome(ok, (!ok).then_some(FailureReason::Refused)),
        };
        let first: Vec<ProbeResult> = eps.iter().map(|e| res(e, false)).collect();
        // the last endpoint (an address of its own) fails once, the others every time
        let last = eps.len() - 1;
        let blip = eps[last].address();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let start = tokio::time::Instant::now();
        let out = confirm_failures(
            first.clone(),
            &eps,
            |_| true,
            &CONFIRM_DELAYS,
            |again: Vec<Endpoint>| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let r: Vec<ProbeResult> =
                    again.iter().map(|e| res(e, e.address() == blip)).collect();
                async move { r }
            },
        )
        .await;
        assert!(
            out[last].outcome.ok,
            "a blip reads healthy: {:?}",
            out[last]
        );
        assert!(out[..last].iter().all(|r| !r.outcome.ok), "{out:?}");
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 2);
        assert_eq!(start.elapsed(), Duration::from_secs(3), "1 s, then 2 s");

        // already failing (or never probed): published as they are, at once
        let start = tokio::time::Instant::now();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let out = confirm_failures(
            first.clone(),
            &eps,
            |_| false,
            &CONFIRM_DELAYS,
            |_| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async { Vec::new() }
            },
        )
        .await;
        assert_eq!(out, first);
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[test]
    fn targets_deduplicated_and_capped() {
        let c = gravity_config::parse(M2K, false).unwrap();
        let t = probe_targets(&c);
        let labels: Vec<(&str, String)> =
            t.iter().map(|e| (e.role.as_str(), e.address())).collect();
        assert_eq!(
            labels,
            [
                ("source", "mysql-primary.internal:3306".to_string()),
                ("probe_db", "mysql-primary.internal:3306".to_string()),
                ("kafka", "kafka-1.internal:9092".to_string()),
                ("kafka", "kafka-2.internal:9092".to_string()),
                ("kafka", "127.0.0.1:9092".to_string()),
            ]
        );
        let mut big = c.clone();
        let k = big.endpoints[2].clone();
        big.endpoints.extend((0..200).map(|i| {
            let mut e = k.clone();
            e.port = 10000 + i;
            e
        }));
        big.endpoints.push(k); // a duplicate
        assert_eq!(probe_targets(&big).len(), MAX_ENDPOINTS);
    }

    #[test]
    fn families_from_results() {
        let results = vec![
            ProbeResult {
                component: "source",
                endpoint: "db:3306".into(),
                outcome: outcome(true, None),
            },
            ProbeResult {
                component: "target",
                endpoint: "db2:3306".into(),
                outcome: outcome(false, Some(FailureReason::Auth)),
            },
        ];
        let f = connection_families(&results, "p");
        assert_eq!(
            f.value(
                "gravity_connection_health",
                &[
                    ("component", "source"),
                    ("endpoint", "db:3306"),
                    ("pipeline", "p")
                ]
            ),
            Some(1.0)
        );
        assert_eq!(
            f.value("gravity_connection_health", &[("component", "target")]),
            Some(0.0)
        );
        assert_eq!(
            f.value(
                "gravity_connection_failure_reason",
                &[("component", "target"), ("reason", "auth")]
            ),
            Some(1.0)
        );
        assert_eq!(
            f.value(
                "gravity_connection_failure_reason",
                &[("component", "source")]
            ),
            None
        );
    }

    #[tokio::test]
    async fn prober_records_and_forgets_label_sets() {
        let settings =
            crate::config::Settings::from_flags(crate::config::Flags::default()).unwrap();
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings));
        let ctx = Context::new(rx, Arc::new(crate::metrics::Store::new()));
        let p = ConnectionProber::new(ctx.clone());
        let ok = ProbeResult {
            component: "source",
            endpoint: "db:3306".into(),
            outcome: outcome(true, None),
        };
        let bad = ProbeResult {
            component: "kafka",
            endpoint: "k:9092".into(),
            outcome: outcome(false, Some(FailureReason::Refused)),
        };
        p.record("p", &[ok.clone(), bad.clone()]);
        p.record("p", &[ok.clone(), bad.clone()]);
        let text = ctx.store.render();
        let k = "component=\"kafka\",endpoint=\"k:9092\",pipeline=\"p\"";
        assert!(
            text.contains(&format!(
                "gravity_connection_probe_failures_total{{{k},reason=\"refused\"}} 2"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "gravity_connection_probe_failures_total{{{k},reason=\"auth\"}} 0"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "gravity_connection_probe_duration_seconds_count{{{k}}} 2"
            )),
            "{text}"
        );
        assert!(text.contains("gravity_connection_failure_reason{pipeline=\"p\",component=\"kafka\",endpoint=\"k:9092\",reason=\"refused\"} 1"), "{text}");
        assert!(text.contains("gravity_connection_health{pipeline=\"p\",component=\"source\",endpoint=\"db:3306\"} 1"), "{text}");
        // the broker leaves the config: all its series go
        p.record("p", &[ok]);
        let text = ctx.store.render();
        assert!(!text.contains("k:9092"), "{text}");
        assert!(text.contains("endpoint=\"db:3306\""), "{text}");
    }
}
