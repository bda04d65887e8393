//! Wiring: builds the store, context, collectors, watcher and server, handles SIGHUP
//! reloads and the shutdown signal. Every background task runs under the
//! [`Supervisor`](crate::supervise::Supervisor): restarted after a panic, cancelled and
//! joined (bounded drain) at shutdown.

use std::sync::Arc;

use prometheus::IntGaugeVec;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::collector::connections::ConnectionProber;
use crate::collector::gravity_metrics::GravityMetricsCollector;
use crate::collector::healthz::HealthzCollector;
use crate::collector::process::ProcessCollector;
use crate::collector::sockets::SocketsCollector;
use crate::collector::source::SourceCollector;
use crate::collector::status::StatusCollector;
use crate::collector::{Collector, Context, Runner};
use crate::config::{PipelineMode, Settings};
use crate::discovery::{self, Target};
use crate::fleet::{Fleet, Origin, Pipeline};
use crate::metrics::Store;
use crate::supervise::{ShutdownReport, Supervisor};
use crate::watch::Watcher;

/// Why the exporter could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Could not bind the listen address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Error.
        source: std::io::Error,
    },
    /// The `--web.config.file` cannot be used.
    #[error("invalid value for web.config.file: {0}")]
    WebConfig(#[from] crate::web_config::WebConfigError),
    /// The pipelines cannot be set up (two config files naming one pipeline).
    #[error(transparent)]
    Pipelines(#[from] PipelinesError),
}

/// One pipeline's running tasks.
struct PipelineRun {
    pipeline: Arc<Pipeline>,
    supervisor: Arc<Supervisor>,
    /// The log watcher (shared with its task), closed when the pipeline stops.
    log: Arc<std::sync::Mutex<crate::follow::LogWatcher>>,
}

impl PipelineRun {
    /// Cancels the pipeline's tasks, waits at most `drain`, closes its log watcher and its
    /// shared MySQL connections (`COM_QUIT`, so the server counts no aborted client).
    async fn stop(&self, drain: std::time::Duration) -> ShutdownReport {
        let held = self.pipeline.ctx.mysql.live();
        let report = self.supervisor.shutdown(drain).await;
        // A log poll still running on the blocking pool (its task was cancelled while it
        // waited for it) finishes and saves its position before this returns; none reads
        // after it. Bounded like the drain.
        let log = Arc::clone(&self.log);
        let closed = tokio::task::spawn_blocking(move || crate::follow::LogWatcher::close(&log));
        if tokio::time::timeout(drain, closed).await.is_err() {
            tracing::warn!("the log watcher's last poll did not end within the drain");
        }
        for shared in held {
            shared.close(std::time::Duration::from_secs(1)).await;
        }
        report
    }
}

/// A running exporter, for tests and the demo.
pub struct Exporter {
    /// The first pipeline's context (the only one unless several are watched).
    pub ctx: Arc<Context>,
    /// Every pipeline, read by the views.
    pub fleet: Arc<Fleet>,
    /// Settings publisher (SIGHUP or tests replace them): the exporter's; each pipeline
    /// runs with its own derived from them.
    pub settings_tx: watch::Sender<Arc<Settings>>,
    /// The supervisor of the exporter-wide tasks (OTLP export, the pipelines' upkeep); its
    /// token is the one shutdown signal: every pipeline's supervisor is its child.
    pub supervisor: Arc<Supervisor>,
    /// The running pipelines.
    runs: Arc<std::sync::Mutex<Vec<Arc<PipelineRun>>>>,
    /// The OpenTelemetry export and LogEntry writer while one is on, flushed at shutdown.
    telemetry: Option<Arc<crate::otlp::Telemetry>>,
}

impl Exporter {
    /// The supervisor of the first pipeline's tasks (watcher, log, collectors, ...).
    pub fn pipeline_supervisor(&self) -> Arc<Supervisor> {
        crate::base::lock(&self.runs)
            .first()
            .map(|r| Arc::clone(&r.supervisor))
            .unwrap_or_else(|| Arc::clone(&self.supervisor))
    }

    /// Cancels every background task and waits at most `drain` for them to end; the report
    /// names the tasks that had to be aborted (none after a clean stop).
    /// The shared MySQL connections get `COM_QUIT` afterwards (each within 1 s), so the
    /// server counts no aborted client although the tasks that held them are gone.
    pub async fn shutdown(&self, drain: std::time::Duration) -> ShutdownReport {
        // the exporter-wide tasks first: no pipeline is added while the others stop
        let mut report = self.supervisor.shutdown(drain).await;
        let runs: Vec<Arc<PipelineRun>> = crate::base::lock(&self.runs).drain(..).collect();
        let mut stops = tokio::task::JoinSet::new();
        for r in runs {
            stops.spawn(async move { r.stop(drain).await });
        }
        while let Some(r) = stops.join_next().await {
            if let Ok(r) = r {
                report.still_running.extend(r.still_running);
            }
        }
        // the tasks are gone: the parse and render threads get no more work
        report.threads_running = self
            .supervisor
            .join_threads(self.fleet.workers.stop(), drain)
            .await;
        // the last OTLP export and the LogEntry lines still queued, bounded by the drain
        if let Some(t) = &self.telemetry {
            t.flush(drain).await;
        }
        report
    }
}

fn build_info(store: &Store) {
    let g = IntGaugeVec::new(
        prometheus::Opts::new(
            "gravity_exporter_build_info",
            "A metric with a constant '1' value labelled by version and the Rust version of the build.",
        ),
        &["version", "rustc"],
    )
    .expect("metric names in this crate are valid");
    g.with_label_values(&[
        env!("CARGO_PKG_VERSION"),
        option_env!("GX_RUSTC_VERSION").unwrap_or("unknown"),
    ])
    .set(1);
    let _ = store.registry().register(Box::new(g));
}

/// The collectors, in run order.
pub fn collectors(store: &Store) -> Vec<Arc<dyn Collector>> {
    vec![
        Arc::new(ProcessCollector::default()),
        Arc::new(HealthzCollector),
        Arc::new(StatusCollector),
        Arc::new(GravityMetricsCollector::new(store)),
        Arc::new(crate::health::HealthCollector),
        Arc::new(crate::collector::diagnosis::DiagnosisCollector),
        Arc::new(SocketsCollector::default()),
        Arc::new(SourceCollector::default()),
    ]
}

/// Starts one pipeline's tasks under a supervisor of its own, a child of `root`'s token.
fn start_pipeline(
    pipeline: Arc<Pipeline>,
    root: &Supervisor,
    entries: Option<&Arc<dyn crate::log::entry::EntrySink>>,
) -> Arc<PipelineRun> {
    let ctx = pipeline.ctx.clone();
    if let Some(sink) = entries {
        let _ = ctx.entries.set(Arc::clone(sink));
    }
    let mut watcher = Watcher::new(ctx.clone());
    // First look before the first collection, so it already knows the process.
    watcher.tick();
    let sup = Arc::new(Supervisor::child_of(&ctx.store, root.token()));
    // The watcher and the log watcher keep their state across a restart after a panic.
    let watcher = Arc::new(std::sync::Mutex::new(watcher));
    sup.spawn("watcher", move || Watcher::run_shared(watcher.clone()));
    let log = Arc::new(std::sync::Mutex::new(crate::follow::LogWatcher::new(
        ctx.clone(),
    )));
    let log_task = Arc::clone(&log);
    sup.spawn("log", move || {
        crate::follow::LogWatcher::run_shared(log_task.clone())
    });
    let runner = Arc::new(Runner::new(ctx.clone(), collectors(&ctx.store)));
    sup.spawn("collectors", move || runner.clone().run());
    // Connection probes run on their own schedule (--probe.interval).
    let prober = Arc::new(ConnectionProber::new(ctx.clone()));
    sup.spawn("connections", move || prober.clone().run());
    // The opt-in consistency checker runs on its own schedule (--consistency.interval).
    let c = ctx.clone();
    sup.spawn("consistency", move || {
        crate::collector::consistency::ConsistencyChecker::new(c.clone()).run()
    });
    // The opt-in canary runs on its own schedule (--canary.interval); its counters and
    // pending canaries live in the context, so a restart after a panic keeps them.
    let c = ctx.clone();
    sup.spawn("canary", move || {
        crate::collector::canary::Canary::new(c.clone()).run()
    });
    Arc::new(PipelineRun {
        pipeline,
        supervisor: sup,
        log,
    })
}

/// Why the exporter cannot start its pipelines.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct PipelinesError(#[from] crate::fleet::FleetError);

/// The pipelines to start with: one per `--gravity.config` file (names checked), one per
/// gravity process running (no flag naming gravity), or the only one.
pub fn initial_pipelines(settings: &Settings) -> Result<Vec<Origin>, PipelinesError> {
    match settings.pipeline_mode {
        PipelineMode::Single => Ok(vec![Origin::Only]),
        PipelineMode::Configs => {
            let files = crate::fleet::expand(&settings.gravity_configs)?;
            let planned = crate::fleet::plan(&files)?;
            Ok(planned
                .into_iter()
                .map(|(_, f)| Origin::ConfigFile(f))
                .collect())
        }
        PipelineMode::Auto => {
            let self_pid = i32::try_from(std::process::id()).unwrap_or(0);
            let found = discovery::list_processes(
                &settings.proc_root,
                &crate::config::ProcessSelector::Default,
                self_pid,
            )
            .unwrap_or_default();
            let mut ids = Vec::new();
            let mut names = Vec::new();
            for (_, config) in found {
                let Some(path) = config else { continue };
                let Some(id) = discovery::file_id(&path) else {
                    continue;
                };
                let name = crate::fleet::name_of(&path);
                if ids.contains(&id) || names.contains(&name) {
                    continue;
                }
                ids.push(id);
                names.push(name);
            }
            // none running: one pipeline that takes the first gravity to appear
            if ids.is_empty() {
                return Ok(vec![Origin::Only]);
            }
            Ok(ids.into_iter().map(Origin::Discovered).collect())
        }
    }
}

/// Starts the watcher and runner tasks and returns the handle; the server is started by
/// [`serve`]. Two `--gravity.config` files naming one pipeline are refused.
pub fn try_start(settings: Settings) -> Result<Exporter, PipelinesError> {
    crate::config::register_secrets(&settings);
    let origins = initial_pipelines(&settings)?;
    let several = settings.pipeline_mode != PipelineMode::Single;
    let exporter_store = Arc::new(Store::exporter());
    build_info(&exporter_store);
    let workers: Arc<crate::collector::Workers> = Arc::default();
    let (tx, rx) = watch::channel(Arc::new(settings.clone()));
    let fleet = Arc::new(Fleet::new(
        rx,
        Arc::clone(&exporter_store),
        Arc::clone(&workers),
    ));
    let root = Arc::new(Supervisor::new(&exporter_store));
    // The parse and render threads, joined by the supervisor at shutdown.
    if let Err(e) = workers.start() {
        tracing::warn!(error = %e, "cannot start the worker threads; the blocking pool does their work");
    }
    let pipelines: Vec<Arc<Pipeline>> = origins
        .into_iter()
        .map(|o| {
            Arc::new(Pipeline::new(
                &settings,
                o,
                Arc::clone(&workers),
                Store::pipeline(),
            ))
        })
        .collect();
    let first = pipelines.first().map(|p| p.ctx.clone()).unwrap_or_else(|| {
        Context::with_workers(
            watch::channel(Arc::new(settings.clone())).1,
            Arc::new(Store::pipeline()),
            Arc::clone(&workers),
        )
    });
    // OpenTelemetry export and LogEntry lines: nothing starts while both are off.
    let telemetry = crate::otlp::start(&first, &fleet).map(|(t, tasks)| {
        for (name, make) in tasks {
            root.spawn(name, make);
        }
        t
    });
    let entries: Option<Arc<dyn crate::log::entry::EntrySink>> = telemetry
        .as_ref()
        .map(|t| Arc::new(t.logs.clone()) as Arc<dyn crate::log::entry::EntrySink>);
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    for p in pipelines {
        fleet.insert(Arc::clone(&p));
        let run = start_pipeline(p, &root, entries.as_ref());
        crate::base::lock(&runs).push(run);
    }
    if several {
        let upkeep = Arc::new(Upkeep {
            fleet: Arc::clone(&fleet),
            runs: Arc::clone(&runs),
            root: Arc::clone(&root),
            entries,
            settings: tx.subscribe(),
            ignored: std::sync::Mutex::new(Vec::new()),
        });
        root.spawn("pipelines", move || Arc::clone(&upkeep).run());
    }
    Ok(Exporter {
        ctx: first,
        fleet,
        settings_tx: tx,
        supervisor: root,
        runs,
        telemetry,
    })
}

/// [`try_start`] for settings that name no pipeline twice (the demo, tests); two config
/// files naming one pipeline end the process with exit code 2, as at the command line.
pub fn start(settings: Settings) -> Exporter {
    match try_start(settings) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("gravity-exporter: {e}");
            std::process::exit(2)
        }
    }
}

/// How often the pipelines' config globs are looked at again (and at SIGHUP).
pub const CONFIG_RESCAN: std::time::Duration = std::time::Duration::from_secs(10);
/// How often the host is looked at for gravity processes of new pipelines (no flag naming
/// gravity).
pub const PROCESS_RESCAN: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps the pipelines in step with the config files (or the gravity processes running).
struct Upkeep {
    fleet: Arc<Fleet>,
    runs: Arc<std::sync::Mutex<Vec<Arc<PipelineRun>>>>,
    root: Arc<Supervisor>,
    entries: Option<Arc<dyn crate::log::entry::EntrySink>>,
    settings: watch::Receiver<Arc<Settings>>,
    /// Config files (or processes' config files) left out for a duplicate name, logged once.
    ignored: std::sync::Mutex<Vec<Origin>>,
}

impl Upkeep {
    async fn run(self: Arc<Self>) {
        let mut rx = self.settings.clone();
        loop {
            let wait = match self.fleet.mode {
                PipelineMode::Auto => PROCESS_RESCAN,
                _ => CONFIG_RESCAN,
            };
            // A reload (`reload`) has already handed the pipelines their new settings; the
            // upkeep only looks at the globs again. A new value would wake each pipeline's
            // watcher for a full look, not to be paid every rescan.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                r = rx.changed() => if r.is_err() { return },
            }
            let s = rx.borrow_and_update().clone();
            let me = Arc::clone(&self);
            let wanted = tokio::task::spawn_blocking(move || me.wanted(&s)).await;
            if let Ok(Some(wanted)) = wanted {
                self.apply(wanted).await;
            }
        }
    }

    /// The pipelines there should be now (`None`: cannot tell, keep them).
    fn wanted(&self, s: &Settings) -> Option<Vec<Origin>> {
        match self.fleet.mode {
            PipelineMode::Single => None,
            PipelineMode::Configs => match crate::fleet::expand(&s.gravity_configs) {
                Ok(files) => Some(files.into_iter().map(Origin::ConfigFile).collect()),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look at the gravity config files; the pipelines stay");
                    None
                }
            },
            PipelineMode::Auto => {
                let mut out: Vec<Origin> = self
                    .fleet
                    .pipelines()
                    .iter()
                    .map(|p| p.origin.clone())
                    .collect();
                // while a pipeline has not pinned its config yet, it may take any gravity
                if self
                    .fleet
                    .pipelines()
                    .iter()
                    .any(|p| p.ctx.pin.get().is_none())
                {
                    return Some(out);
                }
                let pinned: Vec<crate::discovery::FileId> = self
                    .fleet
                    .pipelines()
                    .iter()
                    .filter_map(|p| p.ctx.pin.get().copied())
                    .collect();
                let self_pid = i32::try_from(std::process::id()).unwrap_or(0);
                let found = discovery::list_processes(
                    &s.proc_root,
                    &crate::config::ProcessSelector::Default,
                    self_pid,
                )
                .ok()?;
                let mut names: Vec<String> =
                    self.fleet.pipelines().iter().map(|p| p.name()).collect();
                for (_, config) in found {
                    let Some(path) = config else { continue };
                    let Some(id) = discovery::file_id(&path) else {
                        continue;
                    };
                    let o = Origin::Discovered(id);
                    if pinned.contains(&id)
                        || out.contains(&o)
                        || crate::base::lock(&self.ignored).contains(&o)
                    {
                        continue;
                    }
                    let name = crate::fleet::name_of(&path);
                    if names.contains(&name) {
                        tracing::error!(pipeline = %name, config = %path.display(), "another gravity runs a pipeline of this name; it is left out");
                        crate::base::lock(&self.ignored).push(o);
                        continue;
                    }
                    names.push(name);
                    out.push(o);
                }
                Some(out)
            }
        }
    }

    /// Starts the pipelines wanted and not running, stops those running and not wanted.
    async fn apply(&self, wanted: Vec<Origin>) {
        let base = self.settings.borrow().clone();
        let have = self.fleet.pipelines();
        // gone: its config file no longer matches (a discovered pipeline stays)
        for p in &have {
            if matches!(p.origin, Origin::ConfigFile(_)) && !wanted.contains(&p.origin) {
                tracing::info!(pipeline = %p.name(), "gravity config file gone; the pipeline's series end");
                self.fleet.remove(&p.origin);
                let run = {
                    let mut runs = crate::base::lock(&self.runs);
                    let i = runs.iter().position(|r| r.pipeline.origin == p.origin);
                    i.map(|i| runs.remove(i))
                };
                if let Some(run) = run {
                    let _ = run.stop(crate::supervise::DRAIN).await;
                }
            }
        }
        let names: Vec<String> = self.fleet.pipelines().iter().map(|p| p.name()).collect();
        for o in wanted {
            if have.iter().any(|p| p.origin == o) || crate::base::lock(&self.ignored).contains(&o) {
                continue;
            }
            let name = match &o {
                Origin::ConfigFile(f) => crate::fleet::name_of(f),
                Origin::Discovered(_) | Origin::Only => String::new(),
            };
            if !name.is_empty() && names.contains(&name) {
                tracing::error!(pipeline = %name, origin = ?o, "a second gravity config names this pipeline; it is left out");
                crate::base::lock(&self.ignored).push(o);
                continue;
            }
            let p = Arc::new(Pipeline::new(
                &base,
                o,
                Arc::clone(&self.fleet.workers),
                Store::pipeline(),
            ));
            self.fleet.insert(Arc::clone(&p));
            let run = start_pipeline(p, &self.root, self.entries.as_ref());
            tracing::info!(pipeline = %run.pipeline.name(), "pipeline added");
            crate::base::lock(&self.runs).push(run);
        }
    }
}

/// Binds the listen address of the settings.
pub async fn bind(settings: &Settings) -> Result<TcpListener, AppError> {
    TcpListener::bind(settings.listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: settings.listen,
            source,
        })
}

/// Applies a reload of the config file (SIGHUP): a bad file is rejected and the old settings
/// stay. Every pipeline gets the new settings and re-derives its target; the pipelines'
/// upkeep looks at the config globs again at once.
pub fn reload(exp: &Exporter) {
    let cur = exp.settings_tx.borrow().clone();
    match cur.reload() {
        Ok(new) => {
            for key in cur.restart_needed_for(&new) {
                tracing::warn!(key, "changed in the config file but needs a restart of the exporter; keeping the old value");
            }
            // A password file may hold a new password: mask it by value from now on.
            crate::config::register_secrets(&new);
            let mut new = new;
            new.listen = cur.listen;
            new.telemetry_path = cur.telemetry_path.clone();
            new.proc_root = cur.proc_root.clone();
            new.web_config_file = cur.web_config_file.clone();
            new.telemetry = cur.telemetry.clone();
            new.pipeline_mode = cur.pipeline_mode;
            let new = Arc::new(new);
            let _ = exp.settings_tx.send(new.clone());
            for p in exp.fleet.pipelines() {
                p.apply(&new);
                let ctx = &p.ctx;
                let s = ctx.settings();
                // Re-derive the target: the gravity URL, config or log given may have changed.
                let look = ctx.target().process;
                let target = match look {
                    Some(l) if l.is_alive() => discovery::discover(&s, l),
                    _ => {
                        let mut t = Target::from_settings(&s);
                        t.process = look;
                        t
                    }
                };
                ctx.set_target(target);
                ctx.kick.notify_one();
            }
            tracing::info!("config reloaded");
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; the previous config stays in force")
        }
    }
}

/// Waits for SIGTERM or SIGINT, handling SIGHUP reloads meanwhile (the settings, and the
/// web config's files when there is one): the exporter's one signal listener.
pub async fn signals(exp: &Exporter, web: Option<&Arc<crate::web_config::WebHandle>>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        std::future::pending::<()>().await;
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return; }
            _ = hup.recv() => {
                reload(exp);
                if let Some(w) = web {
                    let w = Arc::clone(w);
                    let _ = tokio::task::spawn_blocking(move || w.check(true)).await;
                }
            }
        }
    }
}

/// Runs the exporter until SIGTERM/SIGINT.
pub async fn run(settings: Settings) -> Result<(), AppError> {
    let web = match &settings.web_config_file {
        None => None,
        Some(p) => Some(crate::web_config::WebHandle::load(p)?),
    };
    let listener = bind(&settings).await?;
    match &web {
        Some(w) => {
            tracing::info!(address = %settings.listen, path = %settings.telemetry_path, web = %w.current().summary(), "listening")
        }
        None => {
            tracing::info!(address = %settings.listen, path = %settings.telemetry_path, "listening (plain HTTP, no authentication: see --web.config.file)")
        }
    }
    let exp = try_start(settings)?;
    let fleet = exp.fleet.clone();
    // One signal cancels the token: the server drains and every background task stops.
    let token = exp.supervisor.token().clone();
    tokio::join!(
        crate::server::serve_web(
            listener,
            fleet,
            web.clone(),
            token.clone().cancelled_owned()
        ),
        async {
            tokio::select! {
                _ = signals(&exp, web.as_ref()) => token.cancel(),
                _ = token.cancelled() => {}
            }
        },
    );
    // Stops every task, then COM_QUIT on the shared MySQL connections, so the server counts
    // no aborted client.
    let report = exp.shutdown(crate::supervise::DRAIN).await;
    if report.still_running.is_empty() {
        tracing::info!("every background task stopped");
    }
    Ok(())
}
