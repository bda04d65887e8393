//! The `gravity-exporter` binary. Also runs as the gravity double when invoked under the
//! name `gravity` (busybox style), which is how the demo and the tests start a process
//! that looks like gravity.
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
    // Busybox-style: started as `gravity` (a symlink), this binary is the gravity double.
    let argv0_is_gravity = std::env::args_os()
        .next()
        .and_then(|a| std::path::Path::new(&a).file_name().map(|n| n == "gravity"))
        .unwrap_or(false);
    if argv0_is_gravity {
        let code = gravity_exporter::double::main_from_args(std::env::args_os().collect());
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
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
            Some(Command::Demo(args)) => gravity_exporter::demo::run(settings, args).await?,
            Some(Command::Check(_)) => {}
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
