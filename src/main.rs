//! The `gravity-exporter` binary: the exporter, `check`, and `demo` (which hands over to the
//! `gravity-double` binary installed next to this one; the double is not part of this
//! binary).
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use gravity_exporter::config::{Cli, Command, OwnLogFormat, Settings};
use gravity_exporter::page::redact;

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
    redact::register_settings(&settings);
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
        let v = rt.block_on(gravity_exporter::check::run(settings));
        if args.format == "json" {
            println!("{}", redact::redact_known(&v.json()));
        } else {
            print!("{}", redact::redact_known(&v.text()));
        }
        return ExitCode::from(u8::try_from(v.code()).unwrap_or(3));
    }
    init_logging(&settings);
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
