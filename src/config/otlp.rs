//! `--otlp.*` and `--log-entries.file`: flags, TOML keys and the standard
//! `OTEL_EXPORTER_OTLP_*` / `OTEL_TRACES_SAMPLER*` / `OTEL_METRIC_EXPORT_INTERVAL` environment
//! variables, validated into [`OtlpSettings`]. Precedence: command line, then the config file,
//! then the environment, then the default. OTLP is off unless an endpoint is given (flag, key
//! or `OTEL_EXPORTER_OTLP_ENDPOINT`/`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`).
#![warn(clippy::arithmetic_side_effects)]

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::ConfigError;
use crate::base::parse_duration;
use crate::redact::Secret;

/// Longest headers file read, in bytes.
const MAX_HEADERS_FILE: u64 = 64 * 1024;
/// Most headers sent.
const MAX_HEADERS: usize = 64;
/// Longest TLS file read (CA, certificate, key), in bytes.
pub const MAX_TLS_FILE: u64 = 1 << 20;

/// The `--otlp.*` and `--log-entries.*` flags (all optional: the file and the environment
/// supply what the command line does not).
#[derive(Debug, Args, Clone, Default, Serialize, Deserialize)]
pub struct OtlpFlags {
    /// OTLP endpoint (gRPC: http[s]://host:4317; http/protobuf: http[s]://host:4318, the
    /// signal paths /v1/metrics, /v1/logs, /v1/traces are added) [default: off, or
    /// OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(id = "otlp.endpoint", long = "otlp.endpoint", global = true)]
    pub endpoint: Option<String>,
    /// OTLP protocol: grpc or http/protobuf [default: grpc, or OTEL_EXPORTER_OTLP_PROTOCOL].
    #[arg(id = "otlp.protocol", long = "otlp.protocol", global = true)]
    pub protocol: Option<String>,
    /// Headers sent with every export, `key=value,key2=value2` (values are secrets: never
    /// logged) [default: OTEL_EXPORTER_OTLP_HEADERS].
    #[arg(id = "otlp.headers", long = "otlp.headers", global = true)]
    pub headers: Option<String>,
    /// File with more headers, one `key=value` per line (for tokens; read at start).
    #[arg(id = "otlp.headers-file", long = "otlp.headers-file", global = true)]
    pub headers_file: Option<PathBuf>,
    /// How often metrics are exported [default: 10s, or OTEL_METRIC_EXPORT_INTERVAL].
    #[arg(id = "otlp.interval", long = "otlp.interval", global = true)]
    pub interval: Option<String>,
    /// Deadline of each export [default: 10s, or OTEL_EXPORTER_OTLP_TIMEOUT].
    #[arg(id = "otlp.timeout", long = "otlp.timeout", global = true)]
    pub timeout: Option<String>,
    /// Compression of each export: gzip or none [default: none, or OTEL_EXPORTER_OTLP_COMPRESSION].
    #[arg(id = "otlp.compression", long = "otlp.compression", global = true)]
    pub compression: Option<String>,
    /// CA certificate (PEM) for an https endpoint [default: the webpki roots, or
    /// OTEL_EXPORTER_OTLP_CERTIFICATE].
    #[arg(id = "otlp.tls.ca-file", long = "otlp.tls.ca-file", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) [default: none, or OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE].
    #[arg(id = "otlp.tls.cert-file", long = "otlp.tls.cert-file", global = true)]
    pub cert_file: Option<PathBuf>,
    /// Client key (PEM) [default: none, or OTEL_EXPORTER_OTLP_CLIENT_KEY].
    #[arg(id = "otlp.tls.key-file", long = "otlp.tls.key-file", global = true)]
    pub key_file: Option<PathBuf>,
    /// Also export gravity's own (passed-through) /metrics families [default: false].
    #[arg(id = "otlp.passthrough", long = "otlp.passthrough", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub passthrough: Option<bool>,
    /// Export gravity's classified log records as OTLP logs [default: true when OTLP is on].
    #[arg(id = "otlp.logs", long = "otlp.logs", global = true, num_args = 0..=1, default_missing_value = "true")]
    pub logs: Option<bool>,
    /// Most log records exported (and written to --log-entries.file) per second; the rest
    /// are dropped and counted [default: 100].
    #[arg(
        id = "otlp.logs-rate-limit",
        long = "otlp.logs-rate-limit",
        global = true
    )]
    pub logs_rate_limit: Option<u32>,
    /// Share of new traces sampled, 0 to 1 (parent-based) [default: 1, or OTEL_TRACES_SAMPLER
    /// and OTEL_TRACES_SAMPLER_ARG].
    #[arg(
        id = "otlp.traces-sampler-ratio",
        long = "otlp.traces-sampler-ratio",
        global = true,
        value_parser = parse_ratio
    )]
    pub traces_sampler_ratio: Option<f64>,
    /// A collector cycle, probe round or consistency pass that takes longer becomes a span
    /// [default: 1s].
    #[arg(
        id = "otlp.slow-threshold",
        long = "otlp.slow-threshold",
        global = true
    )]
    pub slow_threshold: Option<String>,
    /// Write every classified gravity log record as a JSON line (the LogEntry shape) to this
    /// file, or `-` for stdout; reopened when rotated away [default: none].
    #[arg(id = "log-entries.file", long = "log-entries.file", global = true)]
    pub log_entries_file: Option<PathBuf>,
}

/// A sampler ratio: a finite number (range-checked with the other settings).
fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() => Ok(r),
        _ => Err(format!("{s:?} is not a number between 0 and 1")),
    }
}

/// The OTLP wire protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with binary protobuf bodies.
    HttpProtobuf,
}

impl Protocol {
    /// The spelling of the flag and of `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The sampler of the tracer provider.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    /// Every span.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// A share of trace ids.
    Ratio(f64),
    /// The parent's decision; for root spans the inner one.
    ParentBased(ParentRoot),
}

/// The root decision of a parent-based sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParentRoot {
    /// Every root span.
    AlwaysOn,
    /// No root span.
    AlwaysOff,
    /// A share of root spans.
    Ratio(f64),
}

/// Validated OTLP settings (present only while OTLP is on).
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpSettings {
    /// Base endpoint (no signal path), e.g. `http://collector:4317`.
    pub endpoint: String,
    /// Per-signal endpoints from `OTEL_EXPORTER_OTLP_{METRICS,LOGS,TRACES}_ENDPOINT`, used as
    /// they are (with http/protobuf: no path added).
    pub metrics_endpoint: Option<String>,
    /// See `metrics_endpoint`.
    pub logs_endpoint: Option<String>,
    /// See `metrics_endpoint`.
    pub traces_endpoint: Option<String>,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Headers sent with every export (values redacted in `Debug`).
    pub headers: Vec<(String, Secret)>,
    /// Metric export interval.
    pub interval: Duration,
    /// Deadline of each export.
    pub timeout: Duration,
    /// gzip each export.
    pub gzip: bool,
    /// CA certificate file.
    pub ca_file: Option<PathBuf>,
    /// Client certificate file.
    pub cert_file: Option<PathBuf>,
    /// Client key file.
    pub key_file: Option<PathBuf>,
    /// Export gravity's passed-through families too.
    pub passthrough: bool,
    /// Export log records.
    pub logs: bool,
    /// The tracer provider's sampler.
    pub sampler: SamplerSetting,
    /// Operations slower than this become spans.
    pub slow_threshold: Duration,
}

/// Where `--log-entries.file` writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntriesTarget {
    /// Standard output.
    Stdout,
    /// A file, appended to and reopened when rotated away.
    File(PathBuf),
}

/// Validated `--otlp.*` and `--log-entries.*`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TelemetrySettings {
    /// OTLP export (`None`: off).
    pub otlp: Option<OtlpSettings>,
    /// JSON lines of the LogEntry records (`None`: off).
    pub log_entries: Option<LogEntriesTarget>,
    /// Most log records per second (OTLP and JSON lines).
    pub logs_rate_limit: u32,
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Upper bound of `otlp.timeout`.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound of `otlp.interval`.
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);

fn env_millis(key: &str, v: &str) -> Result<Duration, ConfigError> {
    let ms: u64 = v
        .trim()
        .parse()
        .map_err(|_| invalid(key, format!("{v:?} is not a number of milliseconds")))?;
    Ok(Duration::from_millis(ms))
}

fn bounded(key: &str, d: Duration, min: Duration, max: Duration) -> Result<Duration, ConfigError> {
    if d < min || d > max {
        return Err(invalid(
            key,
            format!("{d:?} is not between {min:?} and {max:?}"),
        ));
    }
    Ok(d)
}

fn flag_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    parse_duration(s)
        .ok_or_else(|| invalid(key, format!("{s:?} is not a duration like 500ms, 5s or 1m")))
}

/// Parses `key=value,key2=value2` (values percent-decoded as the OTel spec asks); `what` names
/// the key in errors. A value is never quoted in an error.
pub fn parse_headers(what: &str, s: &str) -> Result<Vec<(String, Secret)>, ConfigError> {
    let mut out = Vec::new();
    for part in s.split([',', '\n']) {
        let part = part.trim();
        if part.is_empty() || part.starts_with('#') {
            continue;
        }
        let Some((k, v)) = part.split_once('=') else {
            return Err(invalid(what, "a header is not key=value"));
        };
        let k = k.trim().to_ascii_lowercase();
        if k.is_empty()
            || !k
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(invalid(what, format!("{k:?} is not a header name")));
        }
        let v = percent_decode(v.trim());
        if v.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err(invalid(
                what,
                format!("the value of header {k:?} has control characters"),
            ));
        }
        out.push((k, Secret::new(v)));
    }
    if out.len() > MAX_HEADERS {
        return Err(invalid(what, format!("more than {MAX_HEADERS} headers")));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| {
            b.get(j)
                .and_then(|h| (*h as char).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        if c == b'%' {
            if let (Some(h), Some(l)) = (hex(i.saturating_add(1)), hex(i.saturating_add(2))) {
                out.push(h.wrapping_shl(4) | l);
                i = i.saturating_add(3);
                continue;
            }
        }
        out.push(c);
        i = i.saturating_add(1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn sampler_from_env(
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SamplerSetting>, ConfigError> {
    let Some(name) = env("OTEL_TRACES_SAMPLER") else {
        return Ok(None);
    };
    let arg = env("OTEL_TRACES_SAMPLER_ARG");
    let ratio = || -> Result<f64, ConfigError> {
        match arg.as_deref() {
            None => Ok(1.0),
            Some(a) => a
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| {
                    invalid(
                        "OTEL_TRACES_SAMPLER_ARG",
                        format!("{a:?} is not a ratio between 0 and 1"),
                    )
                }),
        }
    };
    Ok(Some(match name.trim() {
        "always_on" => SamplerSetting::AlwaysOn,
        "always_off" => SamplerSetting::AlwaysOff,
        "traceidratio" => SamplerSetting::Ratio(ratio()?),
        "parentbased_always_on" => SamplerSetting::ParentBased(ParentRoot::AlwaysOn),
        "parentbased_always_off" => SamplerSetting::ParentBased(ParentRoot::AlwaysOff),
        "parentbased_traceidratio" => SamplerSetting::ParentBased(ParentRoot::Ratio(ratio()?)),
        other => {
            return Err(invalid(
                "OTEL_TRACES_SAMPLER",
                format!("{other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio"),
            ))
        }
    }))
}

fn read_small(key: &str, p: &std::path::Path, max: u64) -> Result<String, ConfigError> {
    let len = std::fs::metadata(p)
        .map_err(|e| invalid(key, format!("{}: {e}", p.display())))?
        .len();
    if len > max {
        return Err(invalid(
            key,
            format!("{} is larger than {max} bytes", p.display()),
        ));
    }
    std::fs::read_to_string(p).map_err(|e| invalid(key, format!("{}: {e}", p.display())))
}

fn check_endpoint(key: &str, e: &str) -> Result<String, ConfigError> {
    let e = e.trim();
    let uri: hyper::Uri = e
        .parse()
        .map_err(|_| invalid(key, format!("{e:?} is not a URL")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(
                key,
                format!("{e:?} must start with http:// or https://"),
            ))
        }
    }
    if uri.host().is_none() {
        return Err(invalid(key, format!("{e:?} has no host")));
    }
    Ok(e.to_string())
}

/// Validates the flags (already merged with the file) against the environment `env`.
pub fn validate(
    f: OtlpFlags,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TelemetrySettings, ConfigError> {
    let env_nonempty = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let disabled =
        env_nonempty("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let logs_rate_limit = match f.logs_rate_limit {
        None => 100,
        Some(0) => return Err(invalid("otlp.logs-rate-limit", "must be at least 1")),
        Some(n) if n > 100_000 => {
            return Err(invalid("otlp.logs-rate-limit", "must be at most 100000"))
        }
        Some(n) => n,
    };
    let log_entries = match f.log_entries_file {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(LogEntriesTarget::Stdout),
        Some(p) if p.as_os_str().is_empty() => None,
        Some(p) => Some(LogEntriesTarget::File(p)),
    };
    let metrics_endpoint = env_nonempty("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT");
    let endpoint = match (f.endpoint, env_nonempty("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        (Some(e), _) => Some(("otlp.endpoint", e)),
        (None, Some(e)) if !disabled => Some(("OTEL_EXPORTER_OTLP_ENDPOINT", e)),
        (None, None) if !disabled => metrics_endpoint
            .clone()
            .map(|e| ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", e)),
        _ => None,
    };
    let Some((endpoint_key, endpoint)) = endpoint.filter(|(_, e)| !e.trim().is_empty()) else {
        return Ok(TelemetrySettings {
            otlp: None,
            log_entries,
            logs_rate_limit,
        });
    };
    let endpoint = check_endpoint(endpoint_key, &endpoint)?;
    let signal_endpoint = |k: &str| -> Result<Option<String>, ConfigError> {
        env_nonempty(k).map(|e| check_endpoint(k, &e)).transpose()
    };
    let protocol = match (f.protocol, env_nonempty("OTEL_EXPORTER_OTLP_PROTOCOL")) {
        (Some(p), _) => Some(("otlp.protocol", p)),
        (None, Some(p)) => Some(("OTEL_EXPORTER_OTLP_PROTOCOL", p)),
        (None, None) => None,
    };
    let protocol = match protocol {
        None => Protocol::Grpc,
        Some((key, p)) => match p.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => {
                return Err(invalid(
                    key,
                    format!(
                        "{other:?} is not one of grpc, http/protobuf (http/json is not supported)"
                    ),
                ))
            }
        },
    };
    let mut headers = match (f.headers, env_nonempty("OTEL_EXPORTER_OTLP_HEADERS")) {
        (Some(h), _) => parse_headers("otlp.headers", &h)?,
        (None, Some(h)) => parse_headers("OTEL_EXPORTER_OTLP_HEADERS", &h)?,
        (None, None) => Vec::new(),
    };
    if let Some(p) = &f.headers_file {
        let text = read_small("otlp.headers-file", p, MAX_HEADERS_FILE)?;
        headers.extend(parse_headers("otlp.headers-file", &text)?);
    }
    let interval = match (f.interval, env_nonempty("OTEL_METRIC_EXPORT_INTERVAL")) {
        (Some(s), _) => flag_duration("otlp.interval", &s)?,
        (None, Some(v)) => env_millis("OTEL_METRIC_EXPORT_INTERVAL", &v)?,
        (None, None) => Duration::from_secs(10),
    };
    let interval = bounded(
        "otlp.interval",
        interval,
        Duration::from_millis(100),
        MAX_INTERVAL,
    )?;
    let timeout = match (f.timeout, env_nonempty("OTEL_EXPORTER_OTLP_TIMEOUT")) {
        (Some(s), _) => flag_duration("otlp.timeout", &s)?,
        (None, Some(v)) => env_millis("OTEL_EXPORTER_OTLP_TIMEOUT", &v)?,
        (None, None) => Duration::from_secs(10),
    };
    let timeout = bounded(
        "otlp.timeout",
        timeout,
        Duration::from_millis(10),
        MAX_TIMEOUT,
    )?;
    let gzip = match (
        f.compression,
        env_nonempty("OTEL_EXPORTER_OTLP_COMPRESSION"),
    ) {
        (Some(c), _) => Some(("otlp.compression", c)),
        (None, Some(c)) => Some(("OTEL_EXPORTER_OTLP_COMPRESSION", c)),
        (None, None) => None,
    };
    let gzip = match gzip {
        None => false,
        Some((key, c)) => match c.trim() {
            "gzip" => true,
            "none" | "" => false,
            other => return Err(invalid(key, format!("{other:?} is not one of gzip, none"))),
        },
    };
    let pick =
        |flag: Option<PathBuf>, var: &str| flag.or_else(|| env_nonempty(var).map(PathBuf::from));
    let ca_file = pick(f.ca_file, "OTEL_EXPORTER_OTLP_CERTIFICATE");
    let cert_file = pick(f.cert_file, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE");
    let key_file = pick(f.key_file, "OTEL_EXPORTER_OTLP_CLIENT_KEY");
    if cert_file.is_some() != key_file.is_some() {
        return Err(invalid(
            "otlp.tls.cert-file",
            "a client certificate needs otlp.tls.key-file and the other way round",
        ));
    }
    for (key, p) in [
        ("otlp.tls.ca-file", &ca_file),
        ("otlp.tls.cert-file", &cert_file),
        ("otlp.tls.key-file", &key_file),
    ] {
        if let Some(p) = p {
            read_small(key, p, MAX_TLS_FILE)?;
        }
    }
    let sampler = match f.traces_sampler_ratio {
        Some(r) if (0.0..=1.0).contains(&r) => SamplerSetting::ParentBased(ParentRoot::Ratio(r)),
        Some(r) => {
            return Err(invalid(
                "otlp.traces-sampler-ratio",
                format!("{r} is not between 0 and 1"),
            ))
        }
        None => sampler_from_env(env)?.unwrap_or(SamplerSetting::ParentBased(ParentRoot::AlwaysOn)),
    };
    let slow_threshold = match f.slow_threshold {
        None => Duration::from_secs(1),
        Some(s) => bounded(
            "otlp.slow-threshold",
            flag_duration("otlp.slow-threshold", &s)?,
            Duration::ZERO,
            MAX_INTERVAL,
        )?,
    };
    let otlp = OtlpSettings {
        endpoint,
        metrics_endpoint: signal_endpoint("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")?,
        logs_endpoint: signal_endpoint("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT")?,
        traces_endpoint: signal_endpoint("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")?,
        protocol,
        headers,
        interval,
        timeout,
        gzip,
        ca_file,
        cert_file,
        key_file,
        passthrough: f.passthrough.unwrap_or(false),
        logs: f.logs.unwrap_or(true),
        sampler,
        slow_threshold,
    };
    // The TLS files must be usable now (PEM with a certificate, a private key), else the
    // transport could not be set up at start and OTLP would stay off with nothing counted.
    check_tls(&otlp).map_err(|e| match e {
        SetupError::Tls { key, reason } => invalid(key, reason),
        SetupError::Endpoint(r) => invalid("otlp.endpoint", r),
    })?;
    Ok(TelemetrySettings {
        otlp: Some(otlp),
        log_entries,
        logs_rate_limit,
    })
}

/// Why the transport cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A TLS file or setting cannot be used.
    #[error("{key}: {reason}")]
    Tls {
        /// The setting.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The endpoint is not usable.
    #[error("otlp.endpoint: {0}")]
    Endpoint(String),
}

pub(crate) fn read_tls_file(key: &'static str, p: &std::path::Path) -> Result<Vec<u8>, SetupError> {
    let tls = |reason: String| SetupError::Tls { key, reason };
    let len = std::fs::metadata(p)
        .map_err(|e| tls(format!("{}: {e}", p.display())))?
        .len();
    if len > MAX_TLS_FILE {
        return Err(tls(format!(
            "{} is larger than {MAX_TLS_FILE} bytes",
            p.display()
        )));
    }
    std::fs::read(p).map_err(|e| tls(format!("{}: {e}", p.display())))
}

pub(crate) fn rustls_config(s: &OtlpSettings) -> Result<rustls::ClientConfig, SetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls {
            key: "otlp.tls",
            reason: e.to_string(),
        })?;
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_file {
        Some(p) => {
            let pem = read_tls_file("otlp.tls.ca-file", p)?;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| SetupError::Tls {
                    key: "otlp.tls.ca-file",
                    reason: format!("bad PEM: {e}"),
                })?;
                roots.add(c).map_err(|e| SetupError::Tls {
                    key: "otlp.tls.ca-file",
                    reason: e.to_string(),
                })?;
            }
            if roots.is_empty() {
                return Err(SetupError::Tls {
                    key: "otlp.tls.ca-file",
                    reason: "no PEM CERTIFICATE block found".into(),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let builder = builder.with_root_certificates(roots);
    match (&s.cert_file, &s.key_file) {
        (Some(c), Some(k)) => {
            let cert_pem = read_tls_file("otlp.tls.cert-file", c)?;
            let key_pem = read_tls_file("otlp.tls.key-file", k)?;
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| SetupError::Tls {
                    key: "otlp.tls.cert-file",
                    reason: format!("bad PEM: {e}"),
                })?;
            let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| SetupError::Tls {
                key: "otlp.tls.key-file",
                reason: "no usable PEM private key".into(),
            })?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| SetupError::Tls {
                    key: "otlp.tls.cert-file",
                    reason: e.to_string(),
                })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

/// Checks that the TLS files of the settings can be used (a CA bundle with a certificate, a
/// client certificate with its private key): the same parsing [`Transport::new`] does, so
/// that a file that is not what its key says is refused at start.
pub fn check_tls(s: &OtlpSettings) -> Result<(), SetupError> {
    rustls_config(s).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn off_without_an_endpoint() {
        let t = validate(OtlpFlags::default(), &env(&[])).unwrap();
        assert!(t.otlp.is_none());
        let t = validate(
            OtlpFlags::default(),
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_SDK_DISABLED", "true"),
            ]),
        )
        .unwrap();
        assert!(t.otlp.is_none());
    }

    #[test]
    fn environment_is_honoured_and_flags_win() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcr3t,x-tenant=a"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "30000"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ]);
        let o = validate(OtlpFlags::default(), &e).unwrap().otlp.unwrap();
        assert_eq!(o.endpoint, "http://env:4318");
        assert_eq!(o.protocol, Protocol::HttpProtobuf);
        assert_eq!(o.headers[0].0, "api-key");
        assert_eq!(o.headers[0].1.expose(), "s=cr3t");
        assert_eq!(o.timeout, Duration::from_millis(2500));
        assert_eq!(o.interval, Duration::from_secs(30));
        assert!(o.gzip);
        assert_eq!(o.sampler, SamplerSetting::Ratio(0.25));
        let flags = OtlpFlags {
            endpoint: Some("https://flag:4317".into()),
            protocol: Some("grpc".into()),
            headers: Some("authorization=Bearer x".into()),
            timeout: Some("1s".into()),
            compression: Some("none".into()),
            interval: Some("5s".into()),
            traces_sampler_ratio: Some(0.5),
            ..OtlpFlags::default()
        };
        let o = validate(flags, &e).unwrap().otlp.unwrap();
        assert_eq!(o.endpoint, "https://flag:4317");
        assert_eq!(o.protocol, Protocol::Grpc);
        assert_eq!(o.headers.len(), 1);
        assert_eq!(o.timeout, Duration::from_secs(1));
        assert_eq!(o.interval, Duration::from_secs(5));
        assert!(!o.gzip);
        assert_eq!(
            o.sampler,
            SamplerSetting::ParentBased(ParentRoot::Ratio(0.5))
        );
    }

    #[test]
    fn header_values_never_reach_an_error_or_debug() {
        let e = validate(
            OtlpFlags {
                endpoint: Some("http://c:4317".into()),
                headers: Some("authorization=Bearer hunter2-token\u{1}".into()),
                ..OtlpFlags::default()
            },
            &env(&[]),
        )
        .unwrap_err()
        .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let o = validate(
            OtlpFlags {
                endpoint: Some("http://c:4317".into()),
                headers: Some("authorization=Bearer hunter2-token".into()),
                ..OtlpFlags::default()
            },
            &env(&[]),
        )
        .unwrap()
        .otlp
        .unwrap();
        assert!(!format!("{o:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_name_their_key() {
        for (flags, key) in [
            (
                OtlpFlags {
                    endpoint: Some("collector:4317".into()),
                    ..Default::default()
                },
                "otlp.endpoint",
            ),
            (
                OtlpFlags {
                    endpoint: Some("http://c:4317".into()),
                    protocol: Some("http/json".into()),
                    ..Default::default()
                },
                "otlp.protocol",
            ),
            (
                OtlpFlags {
                    endpoint: Some("http://c:4317".into()),
                    timeout: Some("5m".into()),
                    ..Default::default()
                },
                "otlp.timeout",
            ),
            (
                OtlpFlags {
                    endpoint: Some("http://c:4317".into()),
                    compression: Some("zstd".into()),
                    ..Default::default()
                },
                "otlp.compression",
            ),
            (
                OtlpFlags {
                    endpoint: Some("http://c:4317".into()),
                    traces_sampler_ratio: Some(2.0),
                    ..Default::default()
                },
                "otlp.traces-sampler-ratio",
            ),
            (
                OtlpFlags {
                    endpoint: Some("http://c:4317".into()),
                    cert_file: Some("/x".into()),
                    ..Default::default()
                },
                "otlp.tls.cert-file",
            ),
            (
                OtlpFlags {
                    endpoint: Some("http://c:4317".into()),
                    headers: Some("novalue".into()),
                    ..Default::default()
                },
                "otlp.headers",
            ),
        ] {
            let e = validate(flags, &env(&[])).unwrap_err().to_string();
            assert!(e.contains(key), "{e}");
        }
    }
}

#[cfg(test)]
mod file_tests {
    use crate::config::{Cli, Settings};

    #[test]
    fn toml_keys_and_flags_win() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("exporter.toml");
        std::fs::write(
            &cfg,
            "[otlp]\nendpoint = \"http://collector:4318\"\nprotocol = \"http/protobuf\"\npassthrough = true\ninterval = \"30s\"\nslow-threshold = \"2s\"\n[log-entries]\nfile = \"-\"\n",
        )
        .unwrap();
        let parse = |extra: &[&str]| {
            let mut v = vec!["gravity-exporter", "--config.file", cfg.to_str().unwrap()];
            v.extend_from_slice(extra);
            let cli = <Cli as clap::Parser>::try_parse_from(v).unwrap();
            Settings::from_flags(cli.flags).unwrap()
        };
        let s = parse(&[]);
        let o = s.telemetry.otlp.clone().unwrap();
        assert_eq!(o.endpoint, "http://collector:4318");
        assert_eq!(o.protocol, super::Protocol::HttpProtobuf);
        assert!(o.passthrough);
        assert_eq!(o.interval, std::time::Duration::from_secs(30));
        assert_eq!(o.slow_threshold, std::time::Duration::from_secs(2));
        assert_eq!(
            s.telemetry.log_entries,
            Some(super::LogEntriesTarget::Stdout)
        );
        let s = parse(&["--otlp.protocol", "grpc", "--otlp.passthrough=false"]);
        let o = s.telemetry.otlp.unwrap();
        assert_eq!(o.protocol, super::Protocol::Grpc);
        assert!(!o.passthrough);
        std::fs::write(&cfg, "[otlp]\nendpont = \"x\"\n").unwrap();
        let cli = <Cli as clap::Parser>::try_parse_from([
            "gravity-exporter",
            "--config.file",
            cfg.to_str().unwrap(),
        ])
        .unwrap();
        let e = Settings::from_flags(cli.flags).unwrap_err().to_string();
        assert!(e.contains("endpont"), "{e}");
    }
}
