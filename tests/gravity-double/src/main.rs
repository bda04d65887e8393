//! The `gravity-double` binary.
//!
//! * `gravity-double demo [exporter flags] [--demo.* flags]`: the demo (README's first
//!   command): the double under a supervisor, the exporter watching it in this process,
//!   Prometheus and Alertmanager when installed.
//! * `gravity-double otlp-receiver [grpc|http/protobuf] [HOST:PORT]`: the tests' OTLP
//!   receiver on its own (default `grpc` on `127.0.0.1:0`), for `scripts/bench-vs-peers.sh`:
//!   prints `listening http://HOST:PORT`, then every 10 s the requests received (which it
//!   then forgets, so its memory stays bounded).
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
    if args.get(1).is_some_and(|a| a == "otlp-receiver") {
        return otlp_receiver(args);
    }
    let code = gravity_double::main_from_args(args);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// `gravity-double otlp-receiver [grpc|http/protobuf] [HOST:PORT]`.
fn otlp_receiver(args: Vec<OsString>) -> ExitCode {
    use gravity_double::otlp::{Mode, Receiver};
    let arg = |i: usize| args.get(i).and_then(|a| a.to_str()).map(str::to_string);
    let proto = arg(2).unwrap_or_else(|| "grpc".into());
    let bind = arg(3).unwrap_or_else(|| "127.0.0.1:0".into());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gravity-double otlp-receiver: {e}");
            return ExitCode::from(1);
        }
    };
    rt.block_on(async move {
        let rx = match proto.as_str() {
            "grpc" => Receiver::grpc_on(&bind, Mode::Accept).await,
            "http/protobuf" => Receiver::http_on(&bind, Mode::Accept).await,
            other => {
                eprintln!("gravity-double otlp-receiver: unknown protocol {other:?} (grpc, http/protobuf)");
                return ExitCode::from(2);
            }
        };
        let rx = match rx {
            Ok(rx) => rx,
            Err(e) => {
                eprintln!("gravity-double otlp-receiver: bind {bind}: {e}");
                return ExitCode::from(1);
            }
        };
        println!("listening {}", rx.endpoint());
        let (mut m, mut l, mut t, mut last) = (0usize, 0usize, 0usize, (0usize, 0usize));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
                _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {}
            }
            let got = rx.take();
            m += got.metrics.len();
            l += got.logs.len();
            t += got.traces.len();
            if let Some(req) = got.metrics.last() {
                last = metric_points(req);
            }
            println!(
                "received metrics={m} logs={l} traces={t} last_metrics_request: metrics={} points={}",
                last.0, last.1
            );
        }
    })
}

/// The metrics and data points (histogram and summary points counted once) of a request.
fn metric_points(
    req: &opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest,
) -> (usize, usize) {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let metrics = req
        .resource_metrics
        .iter()
        .flat_map(|r| &r.scope_metrics)
        .flat_map(|s| &s.metrics);
    metrics.fold((0, 0), |(m, p), metric| {
        let n = match &metric.data {
            Some(Data::Gauge(g)) => g.data_points.len(),
            Some(Data::Sum(s)) => s.data_points.len(),
            Some(Data::Histogram(h)) => h.data_points.len(),
            Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
            Some(Data::Summary(s)) => s.data_points.len(),
            None => 0,
        };
        (m + 1, p + n)
    })
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
