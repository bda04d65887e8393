//! gravity-exporter: a Prometheus exporter sidecar for [gravity] replication pipelines.
//!
//! One binary runs beside gravity (one process per pipeline: one pipeline, or every
//! pipeline of the host, [`fleet`]) and turns what can be known about each pipeline into
//! metrics, a status page, a health verdict and OpenTelemetry.
//!
//! ## Layers
//!
//! The modules form six layers. A module imports only from the layers above it in this
//! table and from the modules listed before it in its own layer: producers write the typed
//! state, views read it, the application wires them. `tests/layers.rs` checks every
//! `crate::` path of `src/` against this table (test code excepted), and
//! `docs/architecture.md` draws it from here.
//!
//! | layer | module | what it does |
//! | --- | --- | --- |
//! | foundations | [`base`] | the clock, poison-proof locks, byte-bounded cuts, durations, boxed tasks |
//! | foundations | [`bounds`] | byte and count bounds, and the counters of what they cut or dropped |
//! | foundations | [`redact`] | secrets (`Secret`) and masking by value and by pattern |
//! | foundations | [`spans`] | the exporter's own spans through the OpenTelemetry API (no-op until OTLP is on) |
//! | foundations | [`tls`] | TLS client options and rustls configurations, handshake failures in words |
//! | foundations | [`expfmt`] | a fast, panic-free parser of the Prometheus text format as client_golang writes it |
//! | foundations | [`log`] | gravity's log lines: parsing (json/text/console), classification, the LogEntry record |
//! | foundations | [`diagnosis`] | which stage holds the pipeline back and which of gravity's settings to change: pure rules over a window of readings |
//! | foundations | [`web_config`] | `--web.config.file` (exporter-toolkit format): TLS, client certificates, bcrypt basic auth |
//! | foundations | [`gravity_config`] | gravity's own config: pipeline name, endpoints, scheduler settings; passwords as `Secret` |
//! | foundations | [`config`] | flags and the `--config.file` TOML, validated into `Settings` |
//! | clients | [`http_client`] | the one HTTP client (hyper-util + hyper-rustls): total timeout, body cap, typed failures |
//! | clients | [`probe`] | protocol-level probes: MySQL, Kafka, Mongo, Elasticsearch |
//! | clients | [`gravity_api`] | gravity's API (never `/reset`) and its `/status` model |
//! | clients | [`discovery`] | finds the gravity process and reads its command line and config |
//! | state | [`metrics`] | the metric store: registry, producers' snapshots, text rendering |
//! | state | [`retry`] | `gravity_retry_total`, fed by gravity's retry counter and its log |
//! | state | [`state`] | the typed pipeline state, the one definition of lag and stall, recent history |
//! | producers | [`collector`] | the collector runner, one collector per source, the probers, the canary |
//! | producers | [`watch`] | the process watcher: exits through a pidfd, restarts and exits counted |
//! | producers | [`fleet`] | the pipelines of the host: one context each, from config globs or running processes |
//! | producers | [`follow`] | follows gravity's log (rotation, truncation, state file) into errors and retries |
//! | views | [`health`] | the health verdict: checks, score, Nagios codes |
//! | views | [`page`] | the status page and `/api/status` JSON (passwords masked) |
//! | views | [`otlp`] | OpenTelemetry export: metrics, logs, the tracer provider |
//! | app | [`supervise`] | the supervisor: one tracker and token, restarts with back-off, bounded drain |
//! | app | [`server`] | hyper 1 server: `/metrics`, `/`, `/api/*`, `/healthz`; bound listener; graceful drain |
//! | app | [`app`] | wiring, signals, reloads |
//! | app | [`check`] | `gravity-exporter check`: every check once, Nagios status line and codes, or JSON |
//!
//! [gravity]: https://github.com/moiot/gravity
#![forbid(unsafe_code)]

pub mod app;
pub mod base;
pub mod bounds;
pub mod check;
pub mod collector;
pub mod config;
pub mod diagnosis;
pub mod discovery;
pub mod expfmt;
pub mod fleet;
pub mod follow;
pub mod gravity_api;
pub mod gravity_config;
pub mod health;
pub mod http_client;
pub mod log;
pub mod metrics;
pub mod otlp;
pub mod page;
pub mod probe;
pub mod redact;
pub mod retry;
pub mod server;
pub mod spans;
pub mod state;
pub mod supervise;
pub mod tls;
pub mod watch;
pub mod web_config;
