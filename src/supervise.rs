//! The supervisor of the exporter's background tasks (the producers): the process watcher,
//! the log watcher, the collector runner, the connection prober and the consistency checker.
//!
//! Every task is spawned the same way, through one [`TaskTracker`] and one
//! [`CancellationToken`]:
//!
//! - each run of a task is its own tokio task, so a panic is caught by its `JoinHandle`; a
//!   task that panicked is started again after a back-off (100 ms, doubling up to 30 s, back
//!   to 100 ms once a run lasted a minute) and `gravity_exporter_task_restarts_total{task}`
//!   counts it;
//! - `gravity_exporter_task_up{task}` is 1 while a run of the task is in progress and 0
//!   while it waits to be restarted or after it ended;
//! - tasks that work in cycles (watcher, log, connections, consistency) report each one
//!   through [`TaskMetrics::cycle`]: `gravity_exporter_task_cycle_duration_seconds{task}`,
//!   `gravity_exporter_task_success{task}` and
//!   `gravity_exporter_task_last_success_timestamp_seconds{task}`;
//! - [`Supervisor::shutdown`] cancels the token (each task is dropped at its next await
//!   point), waits for the tracker with a bounded drain, aborts what is left and reports it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First wait before a panicked task is started again.
pub const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest wait before a panicked task is started again.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A run that lasted this long resets the back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// How long [`Supervisor::shutdown`] waits by default before aborting what is left.
pub const DRAIN: Duration = Duration::from_secs(5);

pub use crate::metrics::{TaskMetrics, CYCLIC_TASKS, TASKS};

/// What [`Supervisor::shutdown`] found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ShutdownReport {
    /// Tasks still running when the drain ended (aborted then); empty after a clean stop.
    pub still_running: Vec<&'static str>,
    /// Threads that had not ended when the drain ended (left to end with the process).
    pub threads_running: Vec<&'static str>,
}

/// Spawns, restarts and stops the background tasks.
pub struct Supervisor {
    tracker: TaskTracker,
    token: CancellationToken,
    metrics: TaskMetrics,
    /// Tasks whose supervising loop has not ended, with how many of each name.
    running: Arc<Mutex<BTreeMap<&'static str, usize>>>,
    handles: Mutex<Vec<AbortHandle>>,
    #[cfg(test)]
    hooks: Mutex<BTreeMap<&'static str, Arc<tokio::sync::Notify>>>,
}

impl Supervisor {
    /// A supervisor whose metrics are the store's.
    pub fn new(store: &crate::metrics::Store) -> Supervisor {
        Self::with_token(store, CancellationToken::new())
    }

    /// A supervisor (one pipeline's) whose tasks also stop when `parent` (the exporter's
    /// shutdown signal) is cancelled.
    pub fn child_of(store: &crate::metrics::Store, parent: &CancellationToken) -> Supervisor {
        Self::with_token(store, parent.child_token())
    }

    fn with_token(store: &crate::metrics::Store, token: CancellationToken) -> Supervisor {
        Supervisor {
            tracker: TaskTracker::new(),
            token,
            metrics: store.tasks().clone(),
            running: Arc::new(Mutex::new(BTreeMap::new())),
            handles: Mutex::new(Vec::new()),
            #[cfg(test)]
            hooks: Mutex::new(BTreeMap::new()),
        }
    }

    /// The token cancelled at shutdown.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tasks whose supervising loop has not ended yet.
    pub fn running(&self) -> Vec<&'static str> {
        crate::base::lock(&self.running).keys().copied().collect()
    }

    /// Runs `make()` as task `name` until it returns or the token is cancelled; a run that
    /// panics is counted and started again (a new `make()`) after a bounded back-off.
    pub fn spawn<F, Fut>(&self, name: &'static str, mut make: F)
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let restarts = self.metrics.restarts.with_label_values(&[name]);
        restarts.inc_by(0);
        let up = self.metrics.up.with_label_values(&[name]);
        // Up from the spawn on: a scrape right after the start sees every task running.
        up.set(1);
        let token = self.token.clone();
        let running = Arc::clone(&self.running);
        {
            let mut r = crate::base::lock(&running);
            let n = r.entry(name).or_insert(0);
            *n = n.saturating_add(1);
        }
        #[cfg(test)]
        let hook = Arc::clone(
            crate::base::lock(&self.hooks)
                .entry(name)
                .or_insert_with(|| Arc::new(tokio::sync::Notify::new())),
        );
        let handle = self.tracker.spawn(async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                if token.is_cancelled() {
                    break;
                }
                let fut = make();
                #[cfg(test)]
                let fut = {
                    let hook = Arc::clone(&hook);
                    async move {
                        tokio::select! {
                            _ = fut => {}
                            _ = hook.notified() => panic!("injected panic"),
                        }
                    }
                };
                let started = Instant::now();
                up.set(1);
                let mut inner = tokio::spawn(fut);
                let res = tokio::select! {
                    r = &mut inner => r,
                    _ = token.cancelled() => {
                        inner.abort();
                        let _ = inner.await;
                        break;
                    }
                };
                up.set(0);
                match res {
                    Ok(()) => {
                        tracing::debug!(task = name, "background task ended");
                        break;
                    }
                    Err(e) if e.is_panic() => {
                        if started.elapsed() >= BACKOFF_RESET {
                            backoff = BACKOFF_MIN;
                        }
                        restarts.inc();
                        tracing::error!(
                            task = name,
                            restart_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
                            "background task panicked; restarting it"
                        );
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = token.cancelled() => break,
                        }
                        backoff = backoff.saturating_mul(2).min(BACKOFF_MAX);
                    }
                    Err(e) => {
                        tracing::warn!(task = name, error = %e, "background task cancelled");
                        break;
                    }
                }
            }
            up.set(0);
            let mut r = crate::base::lock(&running);
            if let Some(n) = r.get_mut(name) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    r.remove(name);
                }
            }
        });
        crate::base::lock(&self.handles).push(handle.abort_handle());
    }

    /// Cancels every task and waits at most `drain` for all of them to end; what is left
    /// then is aborted, logged and reported.
    pub async fn shutdown(&self, drain: Duration) -> ShutdownReport {
        self.token.cancel();
        self.tracker.close();
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_ok()
        {
            return ShutdownReport::default();
        }
        let still_running = self.running();
        tracing::warn!(tasks = ?still_running, drain_ms = u64::try_from(drain.as_millis()).unwrap_or(u64::MAX), "background tasks did not stop within the drain; aborting them");
        for h in crate::base::lock(&self.handles).iter() {
            h.abort();
        }
        ShutdownReport {
            still_running,
            threads_running: Vec::new(),
        }
    }

    /// Joins the exporter's own threads (the parse and render workers, their queues already
    /// closed) on the blocking pool, waiting at most `within`; names those still running.
    pub async fn join_threads(
        &self,
        threads: Vec<(&'static str, std::thread::JoinHandle<()>)>,
        within: Duration,
    ) -> Vec<&'static str> {
        let mut left = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        for (name, h) in threads {
            let joined = tokio::task::spawn_blocking(move || h.join());
            if tokio::time::timeout_at(deadline, joined).await.is_err() {
                tracing::warn!(thread = name, "thread did not end within the drain");
                left.push(name);
            }
        }
        left
    }

    /// Test hook: makes the current run of task `name` panic at its next await point.
    #[cfg(test)]
    pub fn inject_panic(&self, name: &'static str) {
        if let Some(h) = crate::base::lock(&self.hooks).get(name) {
            h.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(text: &str, name: &str, task: &str) -> Option<f64> {
        // `task="x"` alone, or beside the `pipeline` label a pipeline's tasks get
        let label = format!("task=\"{task}\"");
        text.lines().find_map(|l| {
            let (series, v) = l.rsplit_once(' ')?;
            let labels = series
                .strip_prefix(name)?
                .get(1..series.len() - name.len() - 1)?;
            labels
                .split(',')
                .any(|kv| kv == label)
                .then(|| v.parse().ok())?
        })
    }

    #[tokio::test]
    async fn a_panicking_task_is_restarted_and_counted_until_shutdown() {
        let store = crate::metrics::Store::new();
        let sup = Supervisor::new(&store);
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        sup.spawn("watcher", move || {
            let n = r.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n < 2 {
                    panic!("run {n} fails");
                }
                std::future::pending::<()>().await;
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while runs.load(std::sync::atomic::Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "{}", store.render());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let text = store.render();
        assert_eq!(
            sample(&text, "gravity_exporter_task_restarts_total", "watcher"),
            Some(2.0),
            "{text}"
        );
        // Every task's series exist at 0 from the start.
        assert_eq!(
            sample(&text, "gravity_exporter_task_restarts_total", "consistency"),
            Some(0.0)
        );
        assert_eq!(sup.running(), vec!["watcher"]);
        let report = sup.shutdown(DRAIN).await;
        assert_eq!(report, ShutdownReport::default());
        assert!(sup.running().is_empty());
        let text = store.render();
        assert_eq!(
            sample(&text, "gravity_exporter_task_up", "watcher"),
            Some(0.0)
        );
    }

    #[tokio::test]
    async fn every_task_stops_at_its_next_await_on_shutdown() {
        let store = crate::metrics::Store::new();
        let sup = Supervisor::new(&store);
        for name in TASKS {
            sup.spawn(name, || async {
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
        assert_eq!(sup.running().len(), TASKS.len());
        let report = sup.shutdown(DRAIN).await;
        assert!(report.still_running.is_empty(), "{report:?}");
        assert!(sup.running().is_empty());
    }

    /// A task that blocks its worker thread cannot be dropped at an await point: the drain
    /// ends anyway, and the report names it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_drain_is_bounded_and_names_what_was_left() {
        let store = crate::metrics::Store::new();
        let sup = Supervisor::new(&store);
        let entered = Arc::new(tokio::sync::Notify::new());
        let e = Arc::clone(&entered);
        sup.spawn("consistency", move || {
            let e = Arc::clone(&e);
            async move {
                e.notify_one();
                // Blocking without an await point, as a misbehaving task would.
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        sup.spawn("watcher", std::future::pending::<()>);
        entered.notified().await;
        let report = sup.shutdown(Duration::from_millis(100)).await;
        assert_eq!(report.still_running, vec!["consistency"]);
    }

    /// A panic injected into a task of a running exporter: restarted, counted, and
    /// `/metrics` keeps answering meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_injected_panic_restarts_the_task_while_metrics_answer() {
        use crate::config::Cli;
        let cli = <Cli as clap::Parser>::try_parse_from([
            "gravity-exporter",
            "--web.listen-address",
            "127.0.0.1:0",
            "--gravity.pid-file",
            "/nonexistent/gravity.pid",
        ])
        .unwrap();
        let settings = crate::config::Settings::from_flags(cli.flags).unwrap();
        let exp = crate::app::start(settings);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = exp.supervisor.token().clone();
        let server = tokio::spawn(crate::server::serve(
            listener,
            exp.fleet.clone(),
            token.cancelled_owned(),
        ));
        let client = crate::gravity_api::GravityClient::new();
        let base: hyper::Uri = format!("http://{addr}").parse().unwrap();
        let scrape = || async {
            let r = client
                .get(&base, "/metrics", Duration::from_secs(5), 64 << 20)
                .await
                .unwrap();
            assert_eq!(r.status.as_u16(), 200);
            String::from_utf8_lossy(&r.body).into_owned()
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = scrape().await;
            if TASKS
                .iter()
                .all(|t| sample(&text, "gravity_exporter_task_up", t) == Some(1.0))
            {
                assert_eq!(
                    sample(&text, "gravity_exporter_task_restarts_total", "watcher"),
                    Some(0.0)
                );
                break;
            }
            assert!(Instant::now() < deadline, "{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        exp.pipeline_supervisor().inject_panic("watcher");
        loop {
            let text = scrape().await;
            if sample(&text, "gravity_exporter_task_restarts_total", "watcher") == Some(1.0)
                && sample(&text, "gravity_exporter_task_up", "watcher") == Some(1.0)
            {
                break;
            }
            assert!(Instant::now() < deadline, "{text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The restarted watcher works: its looks are counted as cycles again.
        let before = sample(
            &scrape().await,
            "gravity_exporter_task_last_success_timestamp_seconds",
            "watcher",
        );
        loop {
            let text = scrape().await;
            let now = sample(
                &text,
                "gravity_exporter_task_last_success_timestamp_seconds",
                "watcher",
            );
            if now > before {
                break;
            }
            assert!(Instant::now() < deadline, "{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report = exp.shutdown(DRAIN).await;
        assert!(report.still_running.is_empty(), "{report:?}");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops with the token")
            .unwrap();
    }
}
