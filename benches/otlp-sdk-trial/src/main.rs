//! `otlp-sdk-trial`: the gravity exporter of the root crate, same flags, with its OTLP
//! metrics sent through `opentelemetry-otlp` and the SDK's `SdkMeterProvider`
//! ([`sdk_metrics`]) instead of `src/otlp`'s own conversion and transport. Logs and spans
//! go as in the shipped exporter. A trial for `scripts/bench-otlp-sdk.sh`, never shipped.
//!
//! Only what the bench needs: one pipeline, `--otlp.protocol grpc` without TLS or gzip, no
//! `--web.config.file`, no `check` or `demo`.
#![forbid(unsafe_code)]

mod sdk_metrics;

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use gravity_exporter::config::otlp::Protocol;
use gravity_exporter::config::{Cli, OwnLogFormat, Settings};
use gravity_exporter::{app, redact, server, supervise};

/// The shipped binary's glibc malloc settings (src/main.rs), so the two compare.
const TUNABLES: &str = "glibc.malloc.mmap_threshold=131072:glibc.malloc.arena_max=2";

/// As src/main.rs: re-executes itself once with [`TUNABLES`] unless `GLIBC_TUNABLES` is set.
fn tune_allocator() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let _failed = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env("GLIBC_TUNABLES", TUNABLES)
        .exec();
}

fn init_logging(s: &Settings) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(s.log_level)
        .with_writer(|| redact::RedactingWriter(std::io::stderr()))
        .with_target(false);
    match s.log_fmt {
        OwnLogFormat::Json => builder.json().init(),
        OwnLogFormat::Logfmt => builder.init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.command.is_none(), "the trial runs the exporter only");
    let mut settings = Settings::from_flags(cli.flags).map_err(|e| anyhow::anyhow!("{e}"))?;
    gravity_exporter::config::register_secrets(&settings);
    anyhow::ensure!(
        settings.web_config_file.is_none(),
        "the trial has no --web.config.file"
    );
    let otlp = settings
        .telemetry
        .otlp
        .clone()
        .context("the trial needs --otlp.endpoint")?;
    anyhow::ensure!(
        otlp.protocol == Protocol::Grpc,
        "the trial exports over gRPC only"
    );
    // Logs and spans go through the library as today; its own metrics export is held off
    // (one interval of a day, never reached in a bench) and the SDK's takes its place.
    if let Some(o) = settings.telemetry.otlp.as_mut() {
        o.interval = Duration::from_secs(24 * 3600);
    }
    tune_allocator();
    init_logging(&settings);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(run(settings, otlp))
}

/// `app::run`, with the SDK's meter provider beside the exporter.
async fn run(
    settings: Settings,
    otlp: gravity_exporter::config::otlp::OtlpSettings,
) -> anyhow::Result<()> {
    let listener = app::bind(&settings).await?;
    let exp = app::try_start(settings)?;
    let sdk = sdk_metrics::start(&exp.fleet, &otlp).await?;
    tracing::info!(endpoint = %otlp.endpoint, "exporting metrics through opentelemetry-otlp");
    let token = exp.supervisor.token().clone();
    tokio::join!(
        server::serve_web(
            listener,
            exp.fleet.clone(),
            None,
            token.clone().cancelled_owned()
        ),
        async {
            tokio::select! {
                _ = app::signals(&exp, None) => token.cancel(),
                _ = token.cancelled() => {}
            }
        },
    );
    exp.shutdown(supervise::DRAIN).await;
    // the last export; not from a runtime worker (the reader's thread blocks on it)
    let provider = sdk.provider;
    let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
    Ok(())
}
