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
use crate::config::Settings;
use crate::discovery::{self, Target};
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
}

/// A running exporter, for tests and the demo.
pub struct Exporter {
    /// Shared context.
    pub ctx: Arc<Context>,
    /// Settings publisher (SIGHUP or tests replace them).
    pub settings_tx: watch::Sender<Arc<Settings>>,
    /// The supervisor of the background tasks (watcher, log, collectors, connections, consistency).
    pub supervisor: Arc<Supervisor>,
    /// The log watcher (shared with its task), closed at shutdown.
    log: Arc<std::sync::Mutex<crate::follow::LogWatcher>>,
    /// The OpenTelemetry export and LogEntry writer while one is on, flushed at shutdown.
    telemetry: Option<Arc<crate::otlp::Telemetry>>,
}

impl Exporter {
    /// Cancels every background task and waits at most `drain` for them to end; the report
    /// names the tasks that had to be aborted (none after a clean stop).
    /// The shared MySQL connections get `COM_QUIT` afterwards (each within 1 s), so the
    /// server counts no aborted client although the tasks that held them are gone.
    pub async fn shutdown(&self, drain: std::time::Duration) -> ShutdownReport {
        let held = self.ctx.mysql.live();
        let mut report = self.supervisor.shutdown(drain).await;
        // A log poll still running on the blocking pool (its task was cancelled while it
        // waited for it) finishes and saves its position before this returns; none reads
        // after it. Bounded like the drain.
        let log = Arc::clone(&self.log);
        let closed = tokio::task::spawn_blocking(move || crate::follow::LogWatcher::close(&log));
        if tokio::time::timeout(drain, closed).await.is_err() {
            tracing::warn!("the log watcher's last poll did not end within the drain");
        }
        // the tasks are gone: the parse and render threads get no more work
        report.threads_running = self
            .supervisor
            .join_threads(self.ctx.workers.stop(), drain)
            .await;
        // the last OTLP export and the LogEntry lines still queued, bounded by the drain
        if let Some(t) = &self.telemetry {
            t.flush(&self.ctx, drain).await;
        }
        for shared in held {
            shared.close(std::time::Duration::from_secs(1)).await;
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

/// Starts the watcher and runner tasks and returns the handle; the server is started by [`serve`].
pub fn start(settings: Settings) -> Exporter {
    crate::config::register_secrets(&settings);
    let store = Arc::new(Store::new());
    build_info(&store);
    let (tx, rx) = watch::channel(Arc::new(settings));
    let ctx = Context::new(rx, store);
    let mut watcher = Watcher::new(ctx.clone());
    // First look before the first collection, so it already knows the process.
    watcher.tick();
    let sup = Arc::new(Supervisor::new(&ctx.store));
    // The parse and render threads, joined by the supervisor at shutdown.
    if let Err(e) = ctx.workers.start() {
        tracing::warn!(error = %e, "cannot start the worker threads; the blocking pool does their work");
    }
    // OpenTelemetry export and LogEntry lines: nothing starts while both are off.
    let telemetry = crate::otlp::start(&ctx).map(|(t, tasks)| {
        for (name, make) in tasks {
            sup.spawn(name, make);
        }
        t
    });
    if let Some(t) = &telemetry {
        let sink: Arc<dyn crate::log::entry::EntrySink> = Arc::new(t.logs.clone());
        let _ = ctx.entries.set(sink);
    }
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
    Exporter {
        ctx,
        settings_tx: tx,
        supervisor: sup,
        log,
        telemetry,
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

/// Applies a reload of the config file (SIGHUP): a bad file is rejected and the old settings stay.
pub fn reload(exp: &Exporter) {
    let cur = exp.ctx.settings();
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
            let new = Arc::new(new);
            let _ = exp.settings_tx.send(new.clone());
            // Re-derive the target: the gravity URL, config or log given may have changed.
            let look = exp.ctx.target().process;
            let target = match look {
                Some(l) if l.is_alive() => discovery::discover(&new, l),
                _ => {
                    let mut t = Target::from_settings(&new);
                    t.process = look;
                    t
                }
            };
            exp.ctx.set_target(target);
            tracing::info!("config reloaded");
            exp.ctx.kick.notify_one();
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
    let exp = start(settings);
    let ctx = exp.ctx.clone();
    // One signal cancels the token: the server drains and every background task stops.
    let token = exp.supervisor.token().clone();
    tokio::join!(
        crate::server::serve_web(
            listener,
            ctx.clone(),
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
