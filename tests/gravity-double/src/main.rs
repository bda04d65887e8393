//! The `gravity-double` binary.
//!
//! * `gravity-double demo [exporter flags] [--demo.* flags]`: the demo (README's first
//!   command): the double under a supervisor, the exporter watching it in this process,
//!   Prometheus and Alertmanager when installed.
//! * anything else: the gravity double itself, with gravity's command line. Tests and the
//!   demo start it through a symlink named `gravity`, so `comm` and argv look like gravity's.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::process::ExitCode;

use gravity_exporter::config::{Cli, Command, OwnLogFormat, Settings};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "demo") {
        return demo(args);
    }
    let code = gravity_double::main_from_args(args);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `gravity-double demo …`: parsed exactly like `gravity-exporter demo …`.
fn demo(args: Vec<OsString>) -> ExitCode {
    let mut argv: Vec<OsString> = vec!["gravity-exporter".into()];
    argv.extend(args.into_iter().skip(1));
    let cli = <Cli as clap::Parser>::parse_from(argv);
    let Some(Command::Demo(demo_args)) = cli.command else {
        eprintln!("gravity-double: usage: gravity-double demo [flags]");
        return ExitCode::from(2);
    };
    let settings = match Settings::from_flags(cli.flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("gravity-double demo: {e}");
            return ExitCode::from(2);
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(settings.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    match settings.log_fmt {
        OwnLogFormat::Json => builder.json().init(),
        OwnLogFormat::Logfmt => builder.init(),
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gravity-double demo: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(gravity_double::demo::run(settings, demo_args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gravity-double demo: {e}");
            ExitCode::from(1)
        }
    }
}
