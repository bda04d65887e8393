//! Collectors and the runner that drives them, in node_exporter's manner.
//!
//! Each source has one collector in its own file, with a pure `parse_*` function tested
//! against fixtures and a thin I/O shell. The [`Runner`] runs every collector on an
//! interval (or at once when kicked, e.g. after gravity restarted), concurrently, each in
//! its own task under a timeout. It records
//! `gravity_exporter_collector_duration_seconds{collector}` and
//! `gravity_exporter_collector_success{collector}`; a collector that fails, times out or
//! panics keeps its last good snapshot (marked stale by `success` 0) and never fails a scrape.

pub mod canary;
pub mod cgroup;
pub mod connections;
pub mod consistency;
pub mod diagnosis;
pub mod exit;
pub mod gravity_metrics;
pub mod healthz;
pub mod logfs;
pub mod oplog;
pub mod pace;
pub mod process;
pub mod sockets;
pub mod source;
pub mod status;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounterVec, Opts};
use tokio::sync::{watch, Notify};

use crate::base::unix_now;
use crate::config::Settings;
use crate::discovery::Target;
use crate::gravity_api::GravityClient;
use crate::metrics::{Families, Store};
pub use pace::{next_wait, Reader, Reads};

/// A boxed future, for object-safe async collectors.
pub use crate::base::BoxFuture;

/// Why a collector run failed.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// The source is not there (process down, file missing, connection refused).
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// The source answered something that cannot be used.
    #[error("bad data from source: {0}")]
    Invalid(String),
    /// The run took longer than its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The collector task panicked (a bug; the scrape goes on).
    #[error("collector panicked")]
    Panicked,
}

impl From<crate::gravity_api::status::StatusError> for CollectError {
    fn from(e: crate::gravity_api::status::StatusError) -> Self {
        CollectError::Invalid(e.0)
    }
}

/// A source of metrics.
pub trait Collector: Send + Sync + 'static {
    /// Name used in the `collector` label.
    fn name(&self) -> &'static str;
    /// Reads the source once and returns the snapshot of const families.
    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>>;
    /// A derived collector (the health verdict) reads the others' snapshots: it runs
    /// after they finish in the same cycle.
    fn derived(&self) -> bool {
        false
    }
    /// How long one run may take: `default` (the request timeout plus a second) unless the
    /// collector's own timeouts add up to more (the runner must never cut a collector off
    /// in the middle of a request it bounds itself).
    fn budget(&self, _settings: &Settings, default: Duration) -> Duration {
        default
    }
}

/// Whether gravity is up (its process lives and its API answers), with the watcher's
/// restart and exit counts. Kept in atomics and published as the `watch` snapshot, labelled
/// with the current pipeline, whenever it changes, so an exit shows in `/metrics` at once.
#[derive(Debug, Default)]
pub struct Up {
    process: AtomicBool,
    /// 0 unknown (not checked since the process started), 1 answers, 2 does not.
    api: AtomicU8,
    restarts: AtomicU64,
    exits: AtomicU64,
    /// Unix time in milliseconds of the last exit seen (0: never).
    last_exit_ms: AtomicU64,
    /// Unix time in milliseconds when the current process was first seen.
    seen_start_ms: AtomicU64,
    /// Why each incarnation ended (`gravity_process_last_exit_info`).
    pub exit: exit::ExitLedger,
    /// Whether gravity's process was ever seen through `/proc`: then the watcher counts its
    /// restarts, and a moment without a process (an exit, the new one not yet found) is not
    /// remote mode.
    procfs_seen: AtomicBool,
}

/// Name of the snapshot the watcher state is published under.
pub const WATCH_SNAPSHOT: &str = "watch";

impl Up {
    /// Sets whether the process lives. A new process's API state, and a gone one's, is
    /// unknown until checked again.
    pub fn set_process(&self, alive: bool, new_incarnation: bool) {
        if new_incarnation {
            self.seen_start_ms.store(unix_now_ms(), Ordering::SeqCst);
            self.exit.started();
        }
        if new_incarnation || !alive {
            self.api.store(0, Ordering::SeqCst);
        }
        if alive {
            self.procfs_seen.store(true, Ordering::SeqCst);
        }
        self.process.store(alive, Ordering::SeqCst);
    }

    /// Whether gravity's process was ever seen through `/proc` (see [`Up::set_process`]).
    pub fn procfs_seen(&self) -> bool {
        self.procfs_seen.load(Ordering::SeqCst)
    }

    /// Sets whether the API answered; returns true if that changed gravity_up.
    pub fn set_api(&self, answered: bool) -> bool {
        let before = self.is_up();
        self.api
            .store(if answered { 1 } else { 2 }, Ordering::SeqCst);
        before != self.is_up()
    }

    /// Counts a restart.
    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::SeqCst);
    }

    /// Counts an exit.
    pub fn count_exit(&self) {
        self.exits.fetch_add(1, Ordering::SeqCst);
        self.last_exit_ms.store(unix_now_ms(), Ordering::SeqCst);
        self.exit.exited(Instant::now());
    }

    /// Whether the API answered its last check (`None`: not checked since the process started).
    pub fn api_state(&self) -> Option<bool> {
        match self.api.load(Ordering::SeqCst) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// Whether the process is alive.
    pub fn process_alive(&self) -> bool {
        self.process.load(Ordering::SeqCst)
    }

    /// gravity_up. With gravity's process visible: it lives and its API has not failed
    /// since it started. Without (gravity in another container with no shared pid
    /// namespace): its API answered on the last check.
    pub fn is_up(&self) -> bool {
        let api = self.api.load(Ordering::SeqCst);
        if self.process_alive() {
            api != 2
        } else {
            api == 1
        }
    }

    /// Restarts counted so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::SeqCst)
    }

    /// Exits counted so far.
    pub fn exits(&self) -> u64 {
        self.exits.load(Ordering::SeqCst)
    }

    /// When the last exit was seen (Unix seconds), if ever.
    pub fn last_exit_unix(&self) -> Option<f64> {
        let ms = self.last_exit_ms.load(Ordering::SeqCst);
        (ms > 0).then(|| ms as f64 / 1000.0)
    }

    /// The families for the current state.
    pub fn families(&self, pipeline: &str) -> Families {
        let p = [("pipeline", pipeline)];
        let b = |v: bool| if v { 1.0 } else { 0.0 };
        let mut f = Families::new();
        f.gauge(
            "gravity_up",
            "1 while the gravity process exists (not a zombie) and its HTTP API answers.",
            &p,
            b(self.is_up()),
        );
        f.gauge(
            "gravity_process_up",
            "1 while the gravity process exists and is not a zombie.",
            &p,
            b(self.process_alive()),
        );
        f.counter(
            "gravity_process_restarts_total",
            "Times a new gravity process (new pid or start time) appeared after an earlier one was seen.",
            &p,
            self.restarts.load(Ordering::SeqCst) as f64,
        );
        f.counter(
            "gravity_process_exits_total",
            "Times the watched gravity process went away or became a zombie.",
            &p,
            self.exits.load(Ordering::SeqCst) as f64,
        );
        f.gauge(
            "gravity_process_last_exit_timestamp_seconds",
            "When the watcher last saw gravity exit (Unix time); 0 if never.",
            &p,
            self.last_exit_ms.load(Ordering::SeqCst) as f64 / 1000.0,
        );
        let seen = self.seen_start_ms.load(Ordering::SeqCst);
        if seen > 0 {
            f.gauge(
                "gravity_process_last_seen_start_timestamp_seconds",
                "When the watcher first saw the current gravity process (Unix time).",
                &p,
                seen as f64 / 1000.0,
            );
        }
        f
    }
}

fn unix_now_ms() -> u64 {
    (unix_now() * 1000.0) as u64
}

/// Everything a collector may look at.
#[derive(Debug)]
pub struct Context {
    /// Settings in force (replaced on SIGHUP).
    pub settings: watch::Receiver<Arc<Settings>>,
    /// What is known about gravity (replaced by the process watcher).
    pub target: RwLock<Arc<Target>>,
    /// The metric store.
    pub store: Arc<Store>,
    /// gravity_up bookkeeping.
    pub up: Up,
    /// Wakes the runner for an immediate collection.
    pub kick: Notify,
    /// Counts target replacements (gravity found again, config reloaded): the connection
    /// prober and the canary wait on it ([`watch::Sender::subscribe`]) instead of polling.
    pub target_seq: watch::Sender<u64>,
    /// HTTP client for gravity's API.
    pub gravity: GravityClient,
    /// The parse and render threads (one pair for every pipeline of the exporter).
    pub workers: Arc<Workers>,
    /// The config file this pipeline keeps to, once pinned: with no flag naming gravity,
    /// the one its first process ran with ([`crate::config::PipelineMode::Auto`]).
    pub pin: std::sync::OnceLock<crate::discovery::FileId>,
    /// The last readings of gravity's `/metrics` for the diagnosis ([`diagnosis`]).
    pub diag_window: diagnosis::Window,
    /// gravity's log lines the diagnosis counts (retry causes, `item not ack`, `latch for
    /// long`), noted by the log follower since the last reading.
    pub diag_log: std::sync::Mutex<crate::diagnosis::LogWindow>,
    /// `gravity_data_lag_seconds`, observed by the status collector and the canary.
    pub lag: crate::state::lag::LagHistogram,
    /// `gravity_retry_total`, fed by the /metrics and log collectors.
    pub retries: crate::retry::RetryLedger,
    /// Error lines the log watcher has counted (for the health verdict's error window).
    pub log_errors: AtomicU64,
    /// When the runner last finished a cycle (for the exporter's own /healthz).
    pub last_cycle: RwLock<Option<Instant>>,
    /// The typed state of the pipeline: what each producer last found, read by every view
    /// (health verdict, status page, JSON, `check`; [`crate::state`]).
    pub state: crate::state::PipelineState,
    /// When the views were last read (the runner's cadence follows the readers).
    pub reads: Reads,
    /// Bounded recent history for the status page: lag and throughput per collection, the
    /// last error lines of gravity's log (redacted), the last connection probes.
    pub recent: crate::state::recent::Recent,
    /// Shared MySQL connections: one per (endpoint, user), used by the connection probe
    /// and the source collector (`probe::mysql::Hub`).
    pub mysql: crate::probe::mysql::Hub,
    /// The opt-in canary's counters, pending canaries and last results (kept across a
    /// restart of its task; read by the status page).
    pub canary: canary::Shared,
    /// Where LogEntry records go (the OTLP logs export and the LogEntry file), set once at
    /// start while one is on; unset, no entry is built.
    pub entries: std::sync::OnceLock<Arc<dyn crate::log::entry::EntrySink>>,
}

impl Context {
    /// Builds a context with worker threads of its own.
    pub fn new(settings: watch::Receiver<Arc<Settings>>, store: Arc<Store>) -> Arc<Context> {
        Self::with_workers(settings, store, Arc::default())
    }

    /// Builds a context sharing the exporter's worker threads.
    pub fn with_workers(
        settings: watch::Receiver<Arc<Settings>>,
        store: Arc<Store>,
        workers: Arc<Workers>,
    ) -> Arc<Context> {
        let s = settings.borrow().clone();
        let target = Target::from_settings(&s);
        Arc::new(Context {
            up: Up::default(),
            gravity: GravityClient::new(),
            retries: crate::retry::RetryLedger::new(&store),
            lag: crate::state::lag::LagHistogram::new(&store),
            workers,
            pin: std::sync::OnceLock::new(),
            diag_window: Default::default(),
            diag_log: Default::default(),
            log_errors: AtomicU64::new(0),
            settings,
            target: RwLock::new(Arc::new(target)),
            store,
            kick: Notify::new(),
            target_seq: watch::Sender::new(0),
            last_cycle: RwLock::new(None),
            state: Default::default(),
            reads: Reads::default(),
            recent: Default::default(),
            mysql: Default::default(),
            canary: Default::default(),
            entries: std::sync::OnceLock::new(),
        })
    }

    /// gravity's stage latencies over the last `/metrics` window, if known.
    pub fn stage_window(&self) -> Option<Arc<gravity_metrics::StageWindow>> {
        self.state.stages.get()
    }

    /// Stores the stage latencies of the last `/metrics` window.
    pub fn set_stage_window(&self, w: gravity_metrics::StageWindow) {
        self.state.stages.set(Some(w));
    }

    /// gravity's last parsed `/status`, if any.
    pub fn last_status(&self) -> Option<Arc<status::StatusSeen>> {
        self.state.status.get()
    }

    /// Records gravity's last parsed `/status` (`None`: no position stored yet).
    pub fn set_last_status(&self, seen: Option<status::StatusSeen>) {
        self.state.status.set(seen);
    }

    /// A view was read (a scrape of /metrics, the status page, /api/status, an OTLP
    /// export): wakes the runner at once if it was idle.
    pub fn mark_read(&self) {
        self.mark_read_by(Reader::View);
    }

    /// A read by a known reader (a scrape from its address, an OTLP export): the runner's
    /// pace follows it ([`pace`]); wakes the runner at once if it was idle.
    pub fn mark_read_by(&self, who: Reader) {
        if self.reads.mark(who) {
            self.kick.notify_one();
        }
    }

    /// How often the runner collects right now: `--collector.interval`, or the idle interval
    /// while nobody reads. Ages ("stale after three missed collections") are measured in it.
    pub fn cadence(&self) -> Duration {
        let interval = self.settings.borrow().interval;
        self.reads.current_wait().unwrap_or(interval).max(interval)
    }

    /// Error lines counted from gravity's log so far.
    pub fn log_errors_seen(&self) -> u64 {
        self.log_errors.load(Ordering::Relaxed)
    }

    /// Current settings.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.borrow().clone()
    }

    /// Current target.
    pub fn target(&self) -> Arc<Target> {
        self.target
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Replaces the target and republishes the watch state (the pipeline label may change).
    pub fn set_target(&self, t: Target) {
        match self.target.write() {
            Ok(mut g) => *g = Arc::new(t),
            Err(p) => *p.into_inner() = Arc::new(t),
        }
        self.target_seq.send_modify(|n| *n = n.wrapping_add(1));
        self.publish_up();
    }

    /// Publishes the up/restart/exit state as the `watch` snapshot.
    pub fn publish_up(&self) {
        let t = self.target();
        self.store
            .set_snapshot(WATCH_SNAPSHOT, self.up.families(&t.pipeline));
    }
}

type Job = Box<dyn FnOnce() + Send + 'static>;

/// The exporter's two worker threads for heavy work off the runtime's worker thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worker {
    /// Parsing big answers from gravity (`/metrics`, `/status`).
    Parse,
    /// Rendering `/metrics`.
    Render,
}

/// One worker thread: its queue and its handle (joined at shutdown).
#[derive(Debug)]
struct WorkerThread {
    tx: std::sync::mpsc::Sender<Job>,
    handle: std::thread::JoinHandle<()>,
}

/// The exporter's two worker threads ([`Worker`]), started by the application at start
/// ([`Workers::start`]) and stopped and joined by its supervisor at shutdown
/// ([`Workers::stop`], `Supervisor::join_threads`).
///
/// Big answers from gravity are parsed, and `/metrics` is rendered, there: never on the
/// runtime's worker thread, and always on the same thread for the same kind of work, so the
/// memory a big answer needed is reused by the next one instead of staying resident in one
/// allocator arena per blocking-pool thread (measured: 69–188 MB left resident after a
/// 1e6-series answer on the blocking pool, 3 MB over the baseline on one thread). While the
/// threads are not running (before start, after stop, in unit tests), work goes to the
/// blocking pool.
#[derive(Debug, Default)]
pub struct Workers {
    parse: std::sync::Mutex<Option<WorkerThread>>,
    render: std::sync::Mutex<Option<WorkerThread>>,
}

impl Workers {
    fn slot(&self, w: Worker) -> &std::sync::Mutex<Option<WorkerThread>> {
        match w {
            Worker::Parse => &self.parse,
            Worker::Render => &self.render,
        }
    }

    /// Starts the threads that are not running.
    pub fn start(&self) -> std::io::Result<()> {
        for (w, name) in [(Worker::Parse, "gx-parse"), (Worker::Render, "gx-render")] {
            let mut slot = crate::base::lock(self.slot(w));
            if slot.is_some() {
                continue;
            }
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    // ends when the queue closes (stop); a panicking job is contained
                    while let Ok(job) = rx.recv() {
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })?;
            *slot = Some(WorkerThread { tx, handle });
        }
        Ok(())
    }

    /// Closes the threads' queues: each ends after the job it runs. Returns their handles
    /// to join.
    pub fn stop(&self) -> Vec<(&'static str, std::thread::JoinHandle<()>)> {
        let mut out = Vec::new();
        for (w, name) in [(Worker::Parse, "gx-parse"), (Worker::Render, "gx-render")] {
            if let Some(t) = crate::base::lock(self.slot(w)).take() {
                drop(t.tx);
                out.push((name, t.handle));
            }
        }
        out
    }

    /// Runs `f` on the worker thread and waits for it without blocking the runtime (on the
    /// blocking pool while the thread is not running). `None` if `f` panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        worker: Worker,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        let unsent = match crate::base::lock(self.slot(worker)).as_ref() {
            Some(t) => {
                t.tx.send(job)
                    .err()
                    .map(|std::sync::mpsc::SendError(job)| job)
            }
            None => Some(job),
        };
        if let Some(job) = unsent {
            tokio::task::spawn_blocking(job).await.ok()?;
        }
        rx.await.ok()
    }
}

/// Bytes of an answer handed to the parse thread at once by [`feed`].
pub const FEED_BATCH: usize = 256 * 1024;

/// Opens `GET path` on gravity and reads the answer's body into `state` with `push`, on the
/// parse thread, in batches of about [`FEED_BATCH`] bytes as they arrive: the body is
/// never held whole (a 30 MB answer needs no 30 MB buffer, which the allocator would keep
/// afterwards), nothing is parsed on the runtime's thread, and each batch is a short job,
/// so a slow answer does not hold other parsing up. A body over `limit` is counted in
/// `gravity_exporter_dropped_total{what="api_body"}`. Returns the HTTP status, the state
/// and the time the answer took.
pub async fn feed<S: Send + 'static>(
    ctx: &Context,
    path: &str,
    limit: usize,
    state: S,
    push: fn(&mut S, &[u8]),
) -> Result<(hyper::StatusCode, S, Duration), CollectError> {
    let unavailable = |e: crate::gravity_api::ApiError| {
        if matches!(e, crate::gravity_api::ApiError::TooLarge { .. }) {
            crate::bounds::count_dropped(crate::bounds::Dropped::ApiBody, 1);
        }
        CollectError::Unavailable(e.to_string())
    };
    let target = ctx.target();
    let timeout = ctx.settings().gravity_timeout;
    let mut answer = ctx
        .gravity
        .open(&target.url, path, timeout, limit)
        .await
        .map_err(unavailable)?;
    let mut state = state;
    let mut batch: Vec<bytes::Bytes> = Vec::new();
    let mut size = 0usize;
    loop {
        let chunk = answer.chunk().await.map_err(unavailable)?;
        let end = chunk.is_none();
        if let Some(c) = chunk {
            size = size.saturating_add(c.len());
            batch.push(c);
        }
        if size >= FEED_BATCH || (end && !batch.is_empty()) {
            let pieces = std::mem::take(&mut batch);
            size = 0;
            let mut s = state;
            state = ctx
                .workers
                .run(Worker::Parse, move || {
                    for p in &pieces {
                        push(&mut s, p);
                    }
                    s
                })
                .await
                .ok_or(CollectError::Panicked)?;
        }
        if end {
            return Ok((answer.status(), state, answer.elapsed()));
        }
    }
}

/// Runs collectors.
pub struct Runner {
    collectors: Vec<Arc<dyn Collector>>,
    ctx: Arc<Context>,
    duration: GaugeVec,
    success: GaugeVec,
    last_success: GaugeVec,
    failures: IntCounterVec,
    /// Collectors failing on their last run, with the error logged (a failure is logged
    /// once when it starts and once when it ends, not per cycle).
    failing: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>>,
}

impl Runner {
    /// Registers the meta metrics and returns a runner.
    pub fn new(ctx: Arc<Context>, collectors: Vec<Arc<dyn Collector>>) -> Runner {
        let reg = ctx.store.registry();
        let duration = GaugeVec::new(
            Opts::new(
                "gravity_exporter_collector_duration_seconds",
                "How long the collector's last run took.",
            ),
            &["collector"],
        )
        .expect("metric names in this crate are valid");
        let success = GaugeVec::new(
            Opts::new(
                "gravity_exporter_collector_success",
                "1 if the collector's last run succeeded; 0 means its metrics are the last good (stale) values.",
            ),
            &["collector"],
        )
        .expect("metric names in this crate are valid");
        let last_success = GaugeVec::new(
            Opts::new(
                "gravity_exporter_collector_last_success_timestamp_seconds",
                "When the collector last succeeded (Unix time).",
            ),
            &["collector"],
        )
        .expect("metric names in this crate are valid");
        let failures = IntCounterVec::new(
            Opts::new(
                "gravity_exporter_collector_failures_total",
                "Collector runs that failed, timed out or panicked.",
            ),
            &["collector"],
        )
        .expect("metric names in this crate are valid");
        for m in [&duration, &success, &last_success] {
            let _ = reg.register(Box::new(m.clone()));
        }
        let _ = reg.register(Box::new(failures.clone()));
        for c in &collectors {
            failures.with_label_values(&[c.name()]);
        }
        Runner {
            collectors,
            ctx,
            duration,
            success,
            last_success,
            failures,
            failing: Default::default(),
        }
    }

    /// Runs every collector once, each under `timeout` (or its own larger
    /// [`Collector::budget`]): the source collectors concurrently, then the derived ones
    /// (which read what the others just stored). Returns how long the cycle took.
    pub async fn run_once(&self, timeout: Duration) -> Duration {
        // (the cadence follows the readers: see `Context::cadence`)
        let started = Instant::now();
        // gravity's pass-through is withheld once it missed three collections.
        self.ctx.store.set_passthrough_max_age(Some(
            self.ctx.cadence().saturating_mul(3).saturating_add(timeout),
        ));
        for derived in [false, true] {
            let batch: Vec<Arc<dyn Collector>> = self
                .collectors
                .iter()
                .filter(|c| c.derived() == derived)
                .cloned()
                .collect();
            self.run_batch(&batch, timeout).await;
        }
        if let Ok(mut g) = self.ctx.last_cycle.write() {
            *g = Some(Instant::now());
        }
        let took = started.elapsed();
        crate::spans::slow_operation("collector cycle", took, true);
        took
    }

    async fn run_batch(&self, batch: &[Arc<dyn Collector>], default: Duration) {
        let mut set = tokio::task::JoinSet::new();
        let settings = self.ctx.settings();
        for c in batch {
            let c2 = c.clone();
            let ctx = self.ctx.clone();
            let name = c.name();
            let timeout = c.budget(&settings, default);
            set.spawn(async move {
                let start = Instant::now();
                let res = match tokio::time::timeout(timeout, c2.collect(ctx)).await {
                    Ok(r) => r,
                    Err(_) => Err(CollectError::Timeout(timeout)),
                };
                (name, start.elapsed(), res)
            });
        }
        let mut seen = Vec::with_capacity(batch.len());
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((name, took, res)) => {
                    seen.push(name);
                    self.duration
                        .with_label_values(&[name])
                        .set(took.as_secs_f64());
                    self.record(name, res);
                }
                Err(e) => {
                    tracing::error!(error = %e, "collector task failed");
                }
            }
        }
        // A panicked task does not report its name: mark every collector not seen as failed.
        for c in batch.iter().filter(|c| !seen.contains(&c.name())) {
            self.record(c.name(), Err(CollectError::Panicked));
        }
    }

    fn record(&self, name: &'static str, res: Result<Families, CollectError>) {
        match res {
            Ok(f) => {
                self.ctx.store.set_snapshot(name, f);
                self.success.with_label_values(&[name]).set(1.0);
                self.last_success.with_label_values(&[name]).set(unix_now());
                if let Some(was) = crate::base::lock(&self.failing).remove(name) {
                    tracing::info!(collector = name, last_error = %was, "collector recovered");
                }
            }
            Err(e) => {
                let msg = e.to_string();
                let first = crate::base::lock(&self.failing)
                    .insert(name, msg.clone())
                    .is_none();
                if first {
                    if matches!(e, CollectError::Panicked) {
                        tracing::error!(collector = name, error = %msg, "collector failing; its metrics are stale until it recovers");
                    } else {
                        tracing::warn!(collector = name, error = %msg, "collector failing; its metrics are stale until it recovers");
                    }
                } else {
                    tracing::debug!(collector = name, error = %msg, "collector still failing");
                }
                self.success.with_label_values(&[name]).set(0.0);
                self.failures.with_label_values(&[name]).inc();
            }
        }
    }

    /// Runs forever: on every interval tick, or at once when kicked. Shared, so that the
    /// supervisor can start it again after a panic.
    pub async fn run(self: Arc<Self>) {
        // A kick stored before the first run (the watcher's first look) is covered by it.
        let _ = tokio::time::timeout(Duration::ZERO, self.ctx.kick.notified()).await;
        loop {
            let s = self.ctx.settings();
            // Each collector bounds its own requests by gravity.timeout; this outer bound
            // only catches a collector that does not, so it must be longer than that.
            let timeout = s.gravity_timeout.saturating_add(Duration::from_secs(1));
            let took = self.run_once(timeout).await;
            let (mut wait, idle) = next_wait(
                &s,
                self.ctx.reads.since_last(),
                &self.ctx.reads.paces(),
                took,
            );
            self.ctx.reads.idle.store(idle, Ordering::SeqCst);
            // A read between the check above and the store found the flag still clear and
            // kicked nobody: look once more.
            if idle && !next_wait(&s, self.ctx.reads.since_last(), &[], took).1 {
                self.ctx.reads.idle.store(false, Ordering::SeqCst);
                wait = s.interval;
            }
            self.ctx.reads.wait_ms.store(
                u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
                Ordering::SeqCst,
            );
            self.ctx.store.set_passthrough_max_age(Some(
                self.ctx.cadence().saturating_mul(3).saturating_add(timeout),
            ));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.ctx.kick.notified() => {}
            }
            self.ctx.reads.idle.store(false, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            crate::base::lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failures_are_logged_at_warn_once_per_change() {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || w.clone())
            .finish();
        let settings = Settings::from_flags(crate::config::Flags::default()).unwrap();
        let (_tx, rx) = watch::channel(Arc::new(settings));
        let ctx = Context::new(rx, Arc::new(Store::new()));
        let runner = Runner::new(ctx, vec![]);
        tracing::subscriber::with_default(sub, || {
            for _ in 0..3 {
                runner.record("status", Err(CollectError::Invalid("bad json".into())));
            }
            for _ in 0..2 {
                runner.record("status", Ok(Families::new()));
            }
            for _ in 0..2 {
                runner.record("status", Err(CollectError::Timeout(Duration::from_secs(1))));
            }
        });
        let text = String::from_utf8(crate::base::lock(&buf.0).clone()).unwrap();
        let warns = text.lines().filter(|l| l.contains("WARN")).count();
        let recovered = text
            .lines()
            .filter(|l| l.contains("INFO") && l.contains("recovered"))
            .count();
        assert_eq!((warns, recovered), (2, 1), "{text}");
        assert!(
            text.contains("bad json") && text.contains("timed out"),
            "{text}"
        );
    }

    struct Counting(Arc<AtomicU64>);

    impl Collector for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn collect(
            self: Arc<Self>,
            _ctx: Arc<Context>,
        ) -> BoxFuture<Result<Families, CollectError>> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(Families::new()) })
        }
    }

    #[test]
    fn the_wait_follows_the_readers() {
        let flags = |args: &[&str]| {
            let mut v = vec!["gravity-exporter"];
            v.extend_from_slice(args);
            let cli = <crate::config::Cli as clap::Parser>::try_parse_from(v).unwrap();
            Settings::from_flags(cli.flags).unwrap()
        };
        let s = flags(&[]);
        let z = Duration::ZERO;
        let (i, idle) = (Duration::from_secs(5), Duration::from_secs(60));
        assert_eq!(next_wait(&s, Duration::ZERO, &[], z), (i, false));
        assert_eq!(next_wait(&s, Duration::from_secs(119), &[], z), (i, false));
        assert_eq!(
            next_wait(&s, Duration::from_secs(120), &[], z),
            (idle, true)
        );
        let off = flags(&["--collector.idle-interval", "0s"]);
        assert_eq!(
            next_wait(&off, Duration::from_secs(86_400), &[], z),
            (i, false)
        );
        // never slower than the interval itself
        let slow = flags(&[
            "--collector.interval",
            "2m",
            "--collector.idle-interval",
            "1m",
        ]);
        assert_eq!(
            next_wait(&slow, Duration::from_secs(86_400), &[], z),
            (Duration::from_secs(120), true)
        );
    }

    /// Nobody reads: after twice the idle interval the runner collects once a minute, not
    /// every 5 s; a read wakes it at once and brings the 5 s cadence back.
    #[tokio::test(start_paused = true)]
    async fn collection_slows_down_while_nobody_reads_and_a_read_wakes_it() {
        let settings = Settings::from_flags(crate::config::Flags::default()).unwrap();
        let (_tx, rx) = watch::channel(Arc::new(settings));
        let ctx = Context::new(rx, Arc::new(Store::new()));
        let n = Arc::new(AtomicU64::new(0));
        let runner = Arc::new(Runner::new(
            ctx.clone(),
            vec![Arc::new(Counting(n.clone()))],
        ));
        let task = tokio::spawn(runner.run());
        let count = || n.load(Ordering::SeqCst);
        // 0..120 s: the start counts as a read, every 5 s
        tokio::time::sleep(Duration::from_millis(119_500)).await;
        assert_eq!(count(), 24, "every 5 s at first");
        // nobody reads: 10 more minutes bring only about 10 more cycles (one a minute)
        tokio::time::sleep(Duration::from_secs(600)).await;
        let idle = count() - 24;
        assert!((9..=11).contains(&idle), "{idle} cycles in 10 idle minutes");
        assert!(ctx.reads.is_idle());
        // a scrape: a cycle at once, then every 5 s again
        let before = count();
        ctx.mark_read();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(), before + 1, "a read wakes the runner at once");
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(count(), before + 7, "every 5 s again");
        assert!(!ctx.reads.is_idle());
        task.abort();
    }
}
