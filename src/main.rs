//! The `gravity-exporter` binary: the exporter, `check`, and `demo` (which hands over to the
//! `gravity-double` binary installed next to this one; the double is not part of this
//! binary).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use gravity_exporter::config::{Cli, Command, OwnLogFormat, Settings};
use gravity_exporter::redact;

fn init_logging(s: &Settings) {
    let builder = tracing_subscriber::fmt()
        .with_max_level(s.log_level)
        // Every line goes out with the known secrets and password patterns masked.
        .with_writer(|| redact::RedactingWriter(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match s.log_fmt {
        OwnLogFormat::Json => builder.json().init(),
        OwnLogFormat::Logfmt => builder.init(),
    }
}

/// glibc malloc settings of the exporter (docs/architecture.md, "Bounds"): a fixed mmap
/// threshold of 128 KiB, so that every block over it is returned to the system when freed
/// (glibc otherwise raises the threshold up to 32 MB after a big block is freed, and the
/// buffers of one hostile answer stay resident for good), and two arenas instead of one
/// per thread.
const TUNABLES: &str = "glibc.malloc.mmap_threshold=131072:glibc.malloc.arena_max=2";

/// glibc reads its tunables at process start only, and setting them from inside the
/// process needs `unsafe` FFI (`mallopt`), which this crate forbids. So the exporter
/// re-executes itself once (same pid, same arguments, before any thread is started) with
/// [`TUNABLES`] in `GLIBC_TUNABLES`. Nothing happens when `GLIBC_TUNABLES` is already set
/// (by the first run, or by the user, whose settings then apply as given: set it empty to
/// keep glibc's defaults), on other C libraries, or when `/proc/self/exe` cannot be
/// executed (the exporter then runs with glibc's defaults).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        if std::env::var_os("GLIBC_TUNABLES").is_some() {
            return;
        }
        let mut args = std::env::args_os();
        let argv0 = args.next().unwrap_or_default();
        // `exec` returns only when it failed: go on with glibc's defaults
        let _failed = std::process::Command::new("/proc/self/exe")
            .arg0(argv0)
            .args(args)
            .env("GLIBC_TUNABLES", TUNABLES)
            .exec();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Some(Command::Demo(_))) {
        return demo();
    }
    let is_check = matches!(cli.command, Some(Command::Check(_)));
    let settings = match Settings::from_flags(cli.flags) {
        Ok(s) => s,
        Err(e) if is_check => {
            // Nagios: the check could not run at all
            println!("GRAVITY UNKNOWN - {}", redact::redact_known(&e.to_string()));
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("gravity-exporter: {}", redact::redact_known(&e.to_string()));
            return ExitCode::from(2);
        }
    };
    // The exporter's own secrets (the password in --gravity.url) are masked by value in
    // every output from here on.
    gravity_exporter::config::register_secrets(&settings);
    if let Some(Command::Check(args)) = &cli.command {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                println!("GRAVITY UNKNOWN - cannot start the runtime: {e}");
                return ExitCode::from(3);
            }
        };
        let v = rt.block_on(gravity_exporter::check::run_all(
            settings,
            args.pipeline.clone(),
        ));
        if args.format == "json" {
            println!("{}", redact::redact_known(&v.json()));
        } else {
            print!("{}", redact::redact_known(&v.text()));
        }
        return ExitCode::from(u8::try_from(v.code()).unwrap_or(3));
    }
    // Two gravity config files naming one pipeline: refused before anything starts.
    if cli.command.is_none() {
        if let Err(e) = gravity_exporter::app::initial_pipelines(&settings) {
            eprintln!("gravity-exporter: {}", redact::redact_known(&e.to_string()));
            return ExitCode::from(2);
        }
    }
    tune_allocator();
    init_logging(&settings);
    if let Some(t) = std::env::var_os("GLIBC_TUNABLES") {
        tracing::debug!(tunables = %t.to_string_lossy(), "glibc malloc tunables");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gravity-exporter: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let res: anyhow::Result<()> = rt.block_on(async {
        match cli.command {
            None => gravity_exporter::app::run(settings).await?,
            Some(Command::Demo(_)) | Some(Command::Check(_)) => {}
        }
        Ok(())
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "gravity-exporter: {}",
                redact::redact_known(&format!("{e:#}"))
            );
            ExitCode::from(1)
        }
    }
}

/// `gravity-exporter demo`: the simulated gravity is not part of this binary. The demo is run
/// by the `gravity-double` binary of this repository's workspace; when it is installed next
/// to this executable it takes over (same flags), otherwise this says how to get it.
fn demo() -> ExitCode {
    use std::os::unix::process::CommandExt;
    let double = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("gravity-double")))
        .filter(|p| p.is_file());
    let Some(double) = double else {
        eprintln!(
            "gravity-exporter demo: the demo runs a simulated gravity, which is not part of this binary.\n\
             From a clone of the repository run:\n\
             \n    cargo run --release -p gravity-double -- demo\n\n\
             or install the double next to gravity-exporter (cargo install --path tests/gravity-double)\n\
             and run `gravity-exporter demo` again."
        );
        return ExitCode::from(2);
    };
    // Same flags, with `demo` first: `gravity-double demo [flags]`.
    let mut rest: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if let Some(i) = rest.iter().position(|a| a == "demo") {
        rest.remove(i);
    }
    let err = std::process::Command::new(&double)
        .arg("demo")
        .args(rest)
        .exec();
    eprintln!(
        "gravity-exporter demo: cannot run {}: {err}",
        double.display()
    );
    ExitCode::from(1)
}
