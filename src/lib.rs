//! gravity-exporter: a Prometheus exporter sidecar for [gravity] replication pipelines.
//!
//! One binary runs beside one gravity process and turns what can be known about that
//! pipeline into metrics. The modules:
//!
//! | module | what it does |
//! | --- | --- |
//! | [`config`] | flags and the `--config.file` TOML, validated into `Settings`; SIGHUP reloads |
//! | [`discovery`] | finds the gravity process (pid, pid file, regex, default) and reads its command line (Go flag spellings) |
//! | [`gravity_config`] | reads gravity's own config: pipeline name and endpoints; passwords held as `Secret` |
//! | [`log`] | gravity's log: tailing (rotation, truncation, state file), parsing (json/text/console), classification → errors, retries, last fatal cause |
//! | [`health`] | the health verdict: seven checks as `gravity_health_check{check}`, their sum `gravity_health_score`, Nagios codes for `check` |
//! | [`watch`] | background process watcher: exits through a pidfd, at once; restarts and exits counted |
//! | [`collector`] | the collector runner (timed, isolated, snapshot per collector), one collector per source, and the background probers (connections, the opt-in consistency checker) |
//! | [`http_client`] | the one HTTP client (hyper-util + hyper-rustls): total timeout, body cap, small pool, typed failures; used by `gravity_api`, the Elasticsearch probe and OTLP http/protobuf |
//! | [`gravity_api`] | gravity's API through `http_client`, with timeouts and body caps (never calls `/reset`) |
//! | [`expfmt`] | a fast, panic-free parser of the Prometheus text format as client_golang writes it |
//! | [`retry`] | `gravity_retry_total`, fed by gravity's scheduler retry counter and by retry lines in its log |
//! | [`metrics`] | the metric store: registry for stateful metrics, const snapshots, text rendering |
//! | [`server`] | hyper 1 server: `/metrics`, `/`, `/api/status`, `/healthz`, `/-/ready`; bound listener; graceful drain |
//! | [`page`] | the status page (verdict, lag, checks, connections, last errors; passwords masked) and its JSON |
//! | [`probe`] | protocol-level probes: MySQL handshake + login + `SELECT 1`, Kafka ApiVersions, Mongo `hello` |
//! | [`app`] | wiring, signals, reloads |
//! | [`supervise`] | the supervisor of the background tasks (producers): one task tracker and cancellation token, restart after a panic with a bounded back-off, `gravity_exporter_task_*` metrics, bounded drain at shutdown |
//! | [`check`] | `gravity-exporter check`: every check once, Nagios status line and codes, or JSON |
//! | [`otlp`] | OpenTelemetry export (off by default): the `/metrics` families as OTLP metrics, gravity's classified log records as OTLP logs and LogEntry JSON lines, a tracer provider for slow operations |
//! | [`web_config`] | `--web.config.file` (exporter-toolkit format): TLS, client certificates, bcrypt basic auth, reloaded on change |
//!
//! [gravity]: https://github.com/moiot/gravity
#![forbid(unsafe_code)]

pub mod app;
pub mod check;
pub mod collector;
pub mod config;
pub mod diagnosis;
pub mod discovery;
pub mod expfmt;
pub mod gravity_api;
pub mod gravity_config;
pub mod health;
pub mod http_client;
pub mod log;
pub mod metrics;
pub mod otlp;
pub mod page;
pub mod probe;
pub mod retry;
pub mod server;
pub mod state;
pub mod supervise;
pub mod watch;
pub mod web_config;
