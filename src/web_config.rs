//! `--web.config.file`: TLS and basic auth on the exporter's own port, in the format of the
//! Prometheus [exporter-toolkit] (`tls_server_config`, `http_server_config`,
//! `basic_auth_users`, `rate_limit`), so the same file works for node_exporter and for us.
//!
//! - **TLS** with rustls and its *ring* provider: `cert_file`/`key_file` (or inline `cert`/`key`),
//!   `client_auth_type` (all five Go policies), `client_ca_file`/`client_ca`,
//!   `min_version`/`max_version`, `cipher_suites` (Go names; they apply to TLS 1.2 as in Go),
//!   `curve_preferences`, `prefer_server_cipher_suites`, `client_allowed_sans` (DNS, e-mail,
//!   IP and URI names of the client certificate as Go spells them, read with the
//!   `x509-parser` crate, [`cert_sans`]). Relative paths are relative to the
//!   web config file, as in the toolkit. TLS 1.0/1.1, CBC and RSA-key-exchange suites and
//!   P-521 are not offered by rustls: naming them as the only choice is an error that says so.
//! - **Basic auth** with bcrypt hashes: the user name is compared in constant time against
//!   every configured name, an unknown user is verified against a fixed dummy hash so both
//!   paths cost one bcrypt, and the result is `valid_user & password_ok` without short
//!   circuit. bcrypt runs on tokio's blocking pool, one at a time (the runtime has one worker),
//!   and successful verifications are cached under a SHA-256 of user, hash and password
//!   (at most [`AUTH_CACHE_SIZE`] entries), as the toolkit does, so Prometheus' scrapes cost
//!   one bcrypt per credential rather than one per scrape. Failures answer 401 with
//!   `WWW-Authenticate: Basic`. Every endpoint is behind it, as in the toolkit.
//! - **Reload**: the file and the certificate, key and CA files it names are watched
//!   (device, inode, size and mtime, once a second, and at once on `SIGHUP`); a change is
//!   loaded whole; users, headers and rate limit apply from the next request (open keep-alive
//!   connections included), TLS settings to new connections. A bad reload keeps the config in force and
//!   is logged once per change of the files. At start a bad file is a one-line error naming
//!   the key ([`crate::config`] turns it into exit code 2).
//! - **Secrets**: key material and passwords never reach a log line or an error message;
//!   errors about them name the key and the file, never the content.
//! - **Plain HTTP to the TLS port** gets the same one-line 400 as Go's server
//!   ("Client sent an HTTP request to an HTTPS server.") and the connection is closed; the
//!   handshake runs inside the connection's first read, so it is bounded by the same header
//!   read timeout as any request and never holds up the accept loop.
//! - **Metrics** ([`WebMetrics`], registered only with a web config): refused requests and
//!   connections by reason, whether the last reload succeeded and when, and the served
//!   certificate's expiry (read from its DER with the same crate, [`cert_not_after`]).
//!
//! [exporter-toolkit]: https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

/// Largest web config file, and largest certificate, key or CA file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// Successful credential checks remembered (SHA-256 of user, hash and password).
pub const AUTH_CACHE_SIZE: usize = 100;

/// bcrypt costs above this get a warning at load: each step doubles the time of a check.
const MAX_QUICK_BCRYPT_COST: u32 = 14;

/// How often the web config file and the files it names are looked at for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Largest `Authorization` header looked at; longer ones are refused without decoding.
const MAX_AUTHORIZATION_BYTES: usize = 4096;

/// bcrypt of "fakepassword" at cost 10, verified for unknown users so that a wrong user name
/// costs the same as a wrong password (the exporter-toolkit's own dummy).
const DUMMY_HASH: &str = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";

/// What Go's HTTP server answers to plain HTTP on a TLS port.
const PLAIN_HTTP_ANSWER: &[u8] =
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// The headers `http_server_config.headers` may set, with their allowed values (empty: any).
/// The same closed list as the exporter-toolkit's.
const ALLOWED_HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

/// Why a web config file cannot be used. Messages are one line, name the key, and never
/// contain a password, a hash or key material.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file (or one it names) cannot be read.
    #[error("{file}: key {key}: cannot read {path}: {source}")]
    Read {
        /// The web config file.
        file: PathBuf,
        /// The key naming the file read (`web.config.file` for the file itself).
        key: String,
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A key has a bad value, or the YAML does not parse.
    #[error("{file}: key {key}: {reason}")]
    Invalid {
        /// The web config file.
        file: PathBuf,
        /// The key, e.g. `tls_server_config.min_version`.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

// ---------------------------------------------------------------------------------------------
// The file

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    tls_server_config: Option<FileTls>,
    #[serde(default)]
    http_server_config: Option<FileHttp>,
    #[serde(default)]
    // Values as YAML values: a password typed as a number must not be quoted back in a
    // type error (serde quotes integers it did not expect).
    basic_auth_users: Option<BTreeMap<String, serde_yaml::Value>>,
    #[serde(default)]
    rate_limit: Option<FileRateLimit>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileRateLimit {
    interval: Option<String>,
    burst: Option<u32>,
}

/// Client certificate policy, with Go's names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `NoClientCert` (default): none asked for.
    NoClientCert,
    /// `RequestClientCert`: asked for, not required, not verified.
    RequestClientCert,
    /// `RequireAnyClientCert` (also `RequireClientCert`): required, not verified.
    RequireAnyClientCert,
    /// `VerifyClientCertIfGiven`: verified against the client CA when given.
    VerifyClientCertIfGiven,
    /// `RequireAndVerifyClientCert`: required and verified against the client CA.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "NoClientCert" => Self::NoClientCert,
            "RequestClientCert" => Self::RequestClientCert,
            "RequireAnyClientCert" | "RequireClientCert" => Self::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => Self::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => Self::RequireAndVerifyClientCert,
            _ => return None,
        })
    }
}

/// TLS versions by Go name, as numbers that order.
fn tls_version(s: &str) -> Option<u16> {
    match s {
        "TLS10" => Some(0x0301),
        "TLS11" => Some(0x0302),
        "TLS12" => Some(0x0303),
        "TLS13" => Some(0x0304),
        _ => None,
    }
}

/// Go's cipher suite names (from `tls.CipherSuites()` and `tls.InsecureCipherSuites()`) that
/// rustls with *ring* offers. TLS 1.3 suites are listed for completeness: as in Go, they are
/// always enabled with TLS 1.3 and the list only chooses the TLS 1.2 suites.
fn cipher_suite(name: &str) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite as cs;
    Some(match name {
        "TLS_AES_128_GCM_SHA256" => cs::TLS13_AES_128_GCM_SHA256,
        "TLS_AES_256_GCM_SHA384" => cs::TLS13_AES_256_GCM_SHA384,
        "TLS_CHACHA20_POLY1305_SHA256" => cs::TLS13_CHACHA20_POLY1305_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        | "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        }
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" | "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => {
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
        }
        _ => return None,
    })
}

/// Go cipher suite names that exist but that rustls does not implement.
const GO_SUITES_NOT_OFFERED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

fn curve(name: &str) -> Result<&'static dyn rustls::crypto::SupportedKxGroup, String> {
    use rustls::crypto::ring::kx_group;
    match name {
        "X25519" => Ok(kx_group::X25519),
        "CurveP256" => Ok(kx_group::SECP256R1),
        "CurveP384" => Ok(kx_group::SECP384R1),
        "CurveP521" | "X25519MLKEM768" => Err(format!(
            "{name} is not offered by this exporter's TLS library; use X25519, CurveP256 or CurveP384"
        )),
        _ => Err(format!(
            "unknown curve {name:?} (one of X25519, CurveP256, CurveP384)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics (registered only when a web config is in use, so plain-HTTP exporters expose none)

/// The web config's own metrics.
pub struct WebMetrics {
    requests_refused: prometheus::IntCounterVec,
    connections_refused: prometheus::IntCounterVec,
    reload_ok: prometheus::IntGauge,
    reload_ts: prometheus::Gauge,
    cert_not_after: prometheus::GaugeVec,
}

/// `reason` values of `gravity_exporter_web_requests_refused_total`.
pub const REQUEST_REFUSALS: [&str; 2] = ["unauthorized", "rate_limited"];
/// `reason` values of `gravity_exporter_web_connections_refused_total`.
pub const CONNECTION_REFUSALS: [&str; 2] = ["tls_handshake", "not_tls"];

impl WebMetrics {
    fn new() -> WebMetrics {
        use prometheus::{Gauge, GaugeVec, IntCounterVec, IntGauge, Opts};
        // The names and help texts are constants of this crate.
        let m = WebMetrics {
            requests_refused: IntCounterVec::new(
                Opts::new(
                    "gravity_exporter_web_requests_refused_total",
                    "Requests to the exporter refused by the web config: unauthorized (no or wrong basic auth credentials, answered 401) or rate_limited (429).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            connections_refused: IntCounterVec::new(
                Opts::new(
                    "gravity_exporter_web_connections_refused_total",
                    "Connections to the exporter's TLS port closed before a request: tls_handshake (failed handshake: no or untrusted client certificate, no common version or cipher, client gave up) or not_tls (plain HTTP or other bytes).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            reload_ok: IntGauge::new(
                "gravity_exporter_web_config_last_reload_successful",
                "1 if the last load of --web.config.file (and the certificate files it names) succeeded; 0 if it was rejected and the previous config is still in force.",
            )
            .expect("valid metric"),
            reload_ts: Gauge::new(
                "gravity_exporter_web_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful load of --web.config.file.",
            )
            .expect("valid metric"),
            cert_not_after: GaugeVec::new(
                Opts::new(
                    "gravity_exporter_web_tls_certificate_not_after_timestamp_seconds",
                    "Expiry (notAfter, Unix time) of the TLS certificate the exporter serves; absent without TLS.",
                ),
                &[],
            )
            .expect("valid metric"),
        };
        for r in REQUEST_REFUSALS {
            m.requests_refused.with_label_values(&[r]);
        }
        for r in CONNECTION_REFUSALS {
            m.connections_refused.with_label_values(&[r]);
        }
        m
    }

    fn refused_request(&self, reason: &str) {
        self.requests_refused.with_label_values(&[reason]).inc();
    }

    fn refused_connection(&self, reason: &str) {
        self.connections_refused.with_label_values(&[reason]).inc();
    }

    fn loaded(&self, cfg: &WebConfig) {
        self.reload_ok.set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.reload_ts.set(now);
        match cfg.cert_not_after {
            // seconds since 1970 as f64: exact far beyond any certificate's lifetime
            Some(t) => self
                .cert_not_after
                .with_label_values::<&str>(&[])
                .set(t as f64),
            None => self.cert_not_after.reset(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated config

/// A validated web config, ready to serve with.
pub struct WebConfig {
    tls: Option<TlsAcceptor>,
    tls_summary: Option<String>,
    cert_not_after: Option<i64>,
    metrics: Option<Arc<WebMetrics>>,
    users: Vec<(String, String)>,
    headers: Vec<(HeaderName, HeaderValue)>,
    limiter: Option<Mutex<Bucket>>,
    cache: Mutex<HashSet<[u8; 32]>>,
    bcrypt_gate: Arc<Semaphore>,
    /// The files read for it (the config first, then cert, key, client CA), each with its
    /// stamp taken just before it was read: a change after that is seen by the watcher.
    files: Vec<(PathBuf, Stamp)>,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary())
    }
}

impl WebConfig {
    /// Reads and validates a web config file. Blocking (file reads, key parsing).
    pub fn load(path: &Path) -> Result<WebConfig, WebConfigError> {
        load(path, Arc::new(Semaphore::new(1)), &mut Vec::new()).map(|(c, _)| c)
    }

    /// Validates `text` as if it were the content of the web config file `path` (files it
    /// names are read relative to the working directory, like [`WebConfig::load`]'s). Blocking.
    ///
    /// Public as the entry point of the fuzz harness (`tests/fuzz.rs`): the YAML and
    /// everything validated from it, without a file write per case.
    pub fn from_text(path: &Path, text: &str) -> Result<WebConfig, WebConfigError> {
        load_text(path, text, Arc::new(Semaphore::new(1)), &mut Vec::new()).map(|(c, _)| c)
    }

    /// Whether connections are TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether requests need basic auth.
    pub fn basic_auth(&self) -> bool {
        !self.users.is_empty()
    }

    /// One line for logs: TLS settings, the number of users, no secrets.
    pub fn summary(&self) -> String {
        format!(
            "tls={} basic_auth_users={} headers={} rate_limit={}",
            self.tls_summary.as_deref().unwrap_or("off"),
            self.users.len(),
            self.headers.len(),
            if self.limiter.is_some() { "on" } else { "off" }
        )
    }
}

/// A user name as errors and warnings show it: up to the first `$`, blank or control
/// character and at most 64 characters, `…` marking a cut. A broken YAML line can fold the
/// bcrypt hash (or a password) into the name; it is never quoted back.
fn shown_user(name: &str) -> String {
    let end = name
        .find(|c: char| c == '$' || c.is_whitespace() || c.is_control())
        .unwrap_or(name.len());
    let mut shown: String = name
        .get(..end)
        .unwrap_or_default()
        .chars()
        .take(64)
        .collect();
    if shown.len() < name.len() {
        shown.push('…');
    }
    shown
}

fn invalid(file: &Path, key: &str, reason: impl Into<String>) -> WebConfigError {
    WebConfigError::Invalid {
        file: file.to_path_buf(),
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// Reads at most [`MAX_FILE_BYTES`] of a file.
fn read_bounded(file: &Path, key: &str, path: &Path) -> Result<Vec<u8>, WebConfigError> {
    use std::io::Read;
    let read_err = |source| WebConfigError::Read {
        file: file.to_path_buf(),
        key: key.to_string(),
        path: path.to_path_buf(),
        source,
    };
    let f = std::fs::File::open(path).map_err(read_err)?;
    let mut buf = Vec::new();
    f.take(MAX_FILE_BYTES.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(read_err)?;
    if u64::try_from(buf.len()).unwrap_or(u64::MAX) > MAX_FILE_BYTES {
        return Err(invalid(
            file,
            key,
            format!("{} is larger than {MAX_FILE_BYTES} bytes", path.display()),
        ));
    }
    Ok(buf)
}

/// A relative path is relative to the web config file's directory (as in the toolkit).
fn join_dir(file: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    file.parent()
        .map(|d| d.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

/// The PEM text of `inline` or of the file `path` (relative to the config), never both.
fn pem_source(
    file: &Path,
    inline_key: &str,
    inline: Option<String>,
    path_key: &str,
    path: Option<String>,
    files: &mut Vec<(PathBuf, Stamp)>,
) -> Result<Option<Vec<u8>>, WebConfigError> {
    let inline = inline.filter(|s| !s.is_empty());
    let path = path.filter(|s| !s.is_empty());
    match (inline, path) {
        (Some(_), Some(_)) => Err(invalid(
            file,
            path_key,
            format!("give only one of {path_key} and {inline_key}"),
        )),
        (Some(text), None) => Ok(Some(text.into_bytes())),
        (None, Some(p)) => {
            let full = join_dir(file, &p);
            files.push((full.clone(), stamp(&full)));
            read_bounded(file, path_key, &full).map(Some)
        }
        (None, None) => Ok(None),
    }
}

fn certs(
    file: &Path,
    key: &str,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let mut v = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem) {
        v.push(c.map_err(|e| invalid(file, key, format!("bad PEM: {e}")))?);
    }
    if v.is_empty() {
        return Err(invalid(file, key, "no PEM CERTIFICATE block found"));
    }
    Ok(v)
}

/// Loads and validates; also returns whether TLS 1.0/1.1 were asked for (logged by callers).
/// `files` receives every file read (with its stamp), also when loading fails.
fn load(
    path: &Path,
    gate: Arc<Semaphore>,
    files: &mut Vec<(PathBuf, Stamp)>,
) -> Result<(WebConfig, Vec<String>), WebConfigError> {
    files.push((path.to_path_buf(), stamp(path)));
    let text = read_bounded(path, "web.config.file", path)?;
    let text = String::from_utf8(text)
        .map_err(|_| invalid(path, "web.config.file", "the file is not UTF-8"))?;
    load_text(path, &text, gate, files)
}

/// serde's messages with every double-quoted value (`invalid type: string "..."`) shown as
/// `"…"`, and the name of an unknown field or variant shown as `` `…` `` unless it looks like
/// a key of this file (lowercase, digits, `_`, `-`, at most 32 characters): the text could
/// be a key pasted at the wrong place, a hash, a password.
fn mask_quoted(msg: &str) -> String {
    // serde writes such a name between backquotes without escaping it, so its end is found
    // from the fixed text after it, not from the next backquote
    let mut msg = msg.to_string();
    for prefix in ["unknown field `", "unknown variant `"] {
        let Some(start) = msg.find(prefix).map(|i| i + prefix.len()) else {
            continue;
        };
        let end = ["`, expected", "`, there are no"]
            .iter()
            .filter_map(|t| msg.get(start..).and_then(|rest| rest.rfind(t)))
            .max()
            .map_or(msg.len(), |e| start + e);
        let name = msg.get(start..end).unwrap_or("");
        let plain = name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !plain {
            msg.replace_range(start..end, "…");
        }
    }
    let mut out = String::with_capacity(msg.len().min(512));
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            // skip to the closing quote (serde writes the value with Rust's escapes)
            let mut escaped = false;
            for d in chars.by_ref() {
                match d {
                    '\\' if !escaped => escaped = true,
                    '"' if !escaped => break,
                    _ => escaped = false,
                }
            }
            out.push_str("…\"");
        }
    }
    out
}

/// [`load`] after the read: validates `text` as the content of `path`.
fn load_text(
    path: &Path,
    text: &str,
    gate: Arc<Semaphore>,
    files: &mut Vec<(PathBuf, Stamp)>,
) -> Result<(WebConfig, Vec<String>), WebConfigError> {
    let doc: FileDoc = if text.trim().is_empty() {
        FileDoc::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| {
            let msg = mask_quoted(&e.to_string().replace('\n', " "));
            // serde names the unknown or mistyped field in the message; the key is the path
            // serde_norway reports before the colon, when there is one.
            let key = msg
                .split_once(": ")
                .map(|(k, _)| k)
                .filter(|k| !k.contains(' ') && !k.is_empty())
                .unwrap_or("web.config.file")
                .to_string();
            invalid(path, &key, msg)
        })?
    };

    let mut warnings = Vec::new();

    // basic_auth_users: bcrypt hashes only
    let mut users = Vec::new();
    for (name, hash) in doc.basic_auth_users.unwrap_or_default() {
        let key = format!("basic_auth_users.{}", shown_user(&name));
        let hash = match hash {
            serde_yaml::Value::String(s) => s,
            _ => String::new(),
        };
        let Ok(parts) = hash.parse::<bcrypt::HashParts>() else {
            return Err(invalid(
                path,
                &key,
                "not a bcrypt hash: store the hash ($2y$..., e.g. from `htpasswd -nBC 10 \"\" | tr -d ':\\n'`), never the password",
            ));
        };
        if parts.get_cost() > MAX_QUICK_BCRYPT_COST {
            warnings.push(format!(
                "{key}: bcrypt cost {} makes each new credential cost seconds of CPU (and they are checked one at a time); 10 to 12 is enough",
                parts.get_cost()
            ));
        }
        users.push((name, hash));
    }

    // http_server_config
    let mut headers = Vec::new();
    if let Some(http) = doc.http_server_config {
        // http2: accepted for compatibility; this server speaks HTTP/1.1 only (ALPN http/1.1).
        let _ = http.http2;
        for (name, value) in http.headers.unwrap_or_default() {
            let key = format!("http_server_config.headers.{name}");
            let Some((canon, allowed)) = ALLOWED_HEADERS.iter().find(|(h, _)| *h == name) else {
                return Err(invalid(
                    path,
                    &key,
                    format!(
                        "HTTP header {name:?} can not be configured (one of {})",
                        ALLOWED_HEADERS
                            .iter()
                            .map(|(h, _)| *h)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            };
            if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
                return Err(invalid(
                    path,
                    &key,
                    format!("{value:?} is not one of {allowed:?}"),
                ));
            }
            if value.is_empty() {
                continue;
            }
            let v = HeaderValue::from_str(&value)
                .map_err(|_| invalid(path, &key, "not a valid header value"))?;
            let n = HeaderName::from_bytes(canon.as_bytes())
                .map_err(|_| invalid(path, &key, "not a valid header name"))?;
            headers.push((n, v));
        }
    }

    // rate_limit
    let limiter = match doc.rate_limit {
        None => None,
        Some(r) => {
            let interval = match r.interval.as_deref() {
                None | Some("0" | "0s" | "") => Duration::ZERO,
                Some(s) => crate::base::parse_duration(s).ok_or_else(|| {
                    invalid(
                        path,
                        "rate_limit.interval",
                        format!("{s:?} is not a duration like 100ms or 1s"),
                    )
                })?,
            };
            if interval.is_zero() {
                None
            } else {
                let burst = r.burst.unwrap_or(0);
                if burst == 0 {
                    return Err(invalid(
                        path,
                        "rate_limit.burst",
                        "must be at least 1 when rate_limit.interval is set (0 would refuse every request)",
                    ));
                }
                Some(Mutex::new(Bucket::new(interval, burst)))
            }
        }
    };

    // tls_server_config
    let (tls, tls_summary, cert_not_after) = match doc.tls_server_config {
        None => (None, None, None),
        Some(t) => match build_tls(path, t, files, &mut warnings)? {
            None => (None, None, None),
            Some((cfg, summary, not_after)) => (
                Some(TlsAcceptor::from(Arc::new(cfg))),
                Some(summary),
                not_after,
            ),
        },
    };

    Ok((
        WebConfig {
            tls,
            tls_summary,
            cert_not_after,
            metrics: None,
            users,
            headers,
            limiter,
            cache: Mutex::new(HashSet::new()),
            bcrypt_gate: gate,
            files: files.clone(),
        },
        warnings,
    ))
}

fn build_tls(
    path: &Path,
    t: FileTls,
    files: &mut Vec<(PathBuf, Stamp)>,
    warnings: &mut Vec<String>,
) -> Result<Option<(rustls::ServerConfig, String, Option<i64>)>, WebConfigError> {
    let nonempty = |o: &Option<String>| o.as_deref().is_some_and(|s| !s.is_empty());
    let enabled = nonempty(&t.cert)
        || nonempty(&t.key)
        || nonempty(&t.cert_file)
        || nonempty(&t.key_file)
        || nonempty(&t.client_ca)
        || nonempty(&t.client_ca_file)
        || nonempty(&t.client_auth_type);
    if !enabled {
        // As in the toolkit: a tls_server_config without any of these is plain HTTP.
        return Ok(None);
    }
    let allowed_sans = t.client_allowed_sans.filter(|v| !v.is_empty());
    let cert_pem = pem_source(
        path,
        "tls_server_config.cert",
        t.cert,
        "tls_server_config.cert_file",
        t.cert_file,
        files,
    )?
    .ok_or_else(|| {
        invalid(
            path,
            "tls_server_config.cert_file",
            "missing: give cert_file (or cert)",
        )
    })?;
    let key_pem = pem_source(
        path,
        "tls_server_config.key",
        t.key,
        "tls_server_config.key_file",
        t.key_file,
        files,
    )?
    .ok_or_else(|| {
        invalid(
            path,
            "tls_server_config.key_file",
            "missing: give key_file (or key)",
        )
    })?;
    let chain = certs(path, "tls_server_config.cert_file", &cert_pem)?;
    let not_after = chain.first().and_then(|c| cert_not_after(c.as_ref()));
    // Never the parser's message for the key: it could quote part of the file.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
        invalid(
            path,
            "tls_server_config.key_file",
            "no PEM private key found (PKCS#8, PKCS#1 RSA or SEC1 EC)",
        )
    })?;

    // versions
    let min_s = t.min_version.unwrap_or_else(|| "TLS12".into());
    let max_s = t.max_version.unwrap_or_else(|| "TLS13".into());
    let min = tls_version(&min_s).ok_or_else(|| {
        invalid(
            path,
            "tls_server_config.min_version",
            format!("unknown TLS version {min_s:?} (one of TLS10, TLS11, TLS12, TLS13)"),
        )
    })?;
    let max = tls_version(&max_s).ok_or_else(|| {
        invalid(
            path,
            "tls_server_config.max_version",
            format!("unknown TLS version {max_s:?} (one of TLS10, TLS11, TLS12, TLS13)"),
        )
    })?;
    if max < 0x0303 {
        return Err(invalid(
            path,
            "tls_server_config.max_version",
            format!("{max_s}: TLS 1.0 and 1.1 are not offered (rustls); allow TLS12 or TLS13"),
        ));
    }
    if min > max {
        return Err(invalid(
            path,
            "tls_server_config.min_version",
            format!("{min_s} is above max_version {max_s}"),
        ));
    }
    let tls12 = min <= 0x0303 && 0x0303 <= max;
    let tls13 = max >= 0x0304;
    if min < 0x0303 {
        warnings.push(format!(
            "tls_server_config.min_version {min_s}: TLS 1.0 and 1.1 are not offered; the lowest version served is TLS 1.2"
        ));
    }
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    if tls13 {
        versions.push(&rustls::version::TLS13);
    }
    if tls12 {
        versions.push(&rustls::version::TLS12);
    }

    // provider: cipher suites (TLS 1.2 ones chosen by the list; TLS 1.3 ones always) and curves
    let mut provider = rustls::crypto::ring::default_provider();
    let probe_key = rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
        .map_err(|e| {
            invalid(
                path,
                "tls_server_config.key_file",
                format!(
                    "the key does not fit cert_file or is not supported: {}",
                    tls_error_kind(&e)
                ),
            )
        })?;
    let key_alg = probe_key.key.algorithm();
    if let Some(names) = t.cipher_suites.filter(|v| !v.is_empty()) {
        let mut tls12_suites = Vec::new();
        for n in &names {
            match cipher_suite(n) {
                Some(s) => {
                    if s.version() == &rustls::version::TLS12 && !tls12_suites.contains(&s) {
                        tls12_suites.push(s);
                    }
                }
                None if GO_SUITES_NOT_OFFERED.contains(&n.as_str()) => {
                    return Err(invalid(
                        path,
                        "tls_server_config.cipher_suites",
                        format!("{n} is not offered by this exporter's TLS library (only ECDHE with AES-GCM or ChaCha20-Poly1305)"),
                    ))
                }
                None => {
                    return Err(invalid(
                        path,
                        "tls_server_config.cipher_suites",
                        format!("unknown cipher: {n}"),
                    ))
                }
            }
        }
        if tls12
            && !tls12_suites
                .iter()
                .any(|s| s.usable_for_signature_algorithm(key_alg))
        {
            return Err(invalid(
                path,
                "tls_server_config.cipher_suites",
                format!(
                    "no TLS 1.2 suite listed that works with the {key_alg:?} key of cert_file, while TLS 1.2 is allowed; list one or set min_version: TLS13"
                ),
            ));
        }
        let mut suites: Vec<_> = provider
            .cipher_suites
            .iter()
            .copied()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .collect();
        suites.extend(tls12_suites);
        provider.cipher_suites = suites;
    }
    if let Some(names) = t.curve_preferences.filter(|v| !v.is_empty()) {
        let mut groups = Vec::new();
        for n in &names {
            let g =
                curve(n).map_err(|r| invalid(path, "tls_server_config.curve_preferences", r))?;
            if !groups
                .iter()
                .any(|x: &&dyn rustls::crypto::SupportedKxGroup| x.name() == g.name())
            {
                groups.push(g);
            }
        }
        provider.kx_groups = groups;
    }
    let provider = Arc::new(provider);

    // client certificates
    let auth_s = t.client_auth_type.unwrap_or_default();
    let auth = ClientAuth::parse(&auth_s).ok_or_else(|| {
        invalid(
            path,
            "tls_server_config.client_auth_type",
            format!("invalid ClientAuth {auth_s:?} (one of NoClientCert, RequestClientCert, RequireAnyClientCert, VerifyClientCertIfGiven, RequireAndVerifyClientCert)"),
        )
    })?;
    let ca_pem = pem_source(
        path,
        "tls_server_config.client_ca",
        t.client_ca,
        "tls_server_config.client_ca_file",
        t.client_ca_file,
        files,
    )?;
    let roots = match &ca_pem {
        None => None,
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for c in certs(path, "tls_server_config.client_ca_file", pem)? {
                roots.add(c).map_err(|e| {
                    invalid(
                        path,
                        "tls_server_config.client_ca_file",
                        format!("not a usable CA certificate: {}", tls_error_kind(&e)),
                    )
                })?;
            }
            Some(Arc::new(roots))
        }
    };
    if roots.is_some() && auth == ClientAuth::NoClientCert {
        return Err(invalid(
            path,
            "tls_server_config.client_auth_type",
            "client CAs have been configured without a client auth policy (set RequireAndVerifyClientCert)",
        ));
    }
    let verifier: Arc<dyn ClientCertVerifier> = match (auth, roots) {
        (ClientAuth::NoClientCert, _) => WebPkiClientVerifier::no_client_auth(),
        (ClientAuth::RequestClientCert, _) => Arc::new(AnyClientCert {
            mandatory: false,
            provider: provider.clone(),
        }),
        (ClientAuth::RequireAnyClientCert, _) => Arc::new(AnyClientCert {
            mandatory: true,
            provider: provider.clone(),
        }),
        (ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert, None) => {
            return Err(invalid(
                path,
                "tls_server_config.client_ca_file",
                format!("missing: {auth_s} needs client_ca_file (or client_ca)"),
            ))
        }
        (ClientAuth::VerifyClientCertIfGiven, Some(roots)) => {
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .allow_unauthenticated()
                .build()
                .map_err(|e| invalid(path, "tls_server_config.client_ca_file", e.to_string()))?
        }
        (ClientAuth::RequireAndVerifyClientCert, Some(roots)) => {
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| invalid(path, "tls_server_config.client_ca_file", e.to_string()))?
        }
    };

    let verifier = match allowed_sans {
        None => verifier,
        Some(_) if auth == ClientAuth::NoClientCert => {
            return Err(invalid(
                path,
                "tls_server_config.client_allowed_sans",
                "needs a client certificate: set client_auth_type (RequireAndVerifyClientCert) and client_ca_file",
            ))
        }
        Some(allowed) => Arc::new(AllowedSans {
            inner: verifier,
            allowed,
        }),
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(|e| invalid(path, "tls_server_config.min_version", e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| {
            invalid(
                path,
                "tls_server_config.key_file",
                format!("the key does not fit cert_file: {}", tls_error_kind(&e)),
            )
        })?;
    cfg.ignore_client_order = t.prefer_server_cipher_suites.unwrap_or(true);
    // HTTP/1.1 only (http_server_config.http2 has no effect here).
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let summary = format!(
        "on(versions={}{}{} client_auth={auth:?})",
        if tls12 { "TLS12" } else { "" },
        if tls12 && tls13 { "," } else { "" },
        if tls13 { "TLS13" } else { "" },
    );
    Ok(Some((cfg, summary, not_after)))
}

/// A rustls error as words, without any payload it may carry.
fn tls_error_kind(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InconsistentKeys(_) => {
            "the private key does not match the certificate".into()
        }
        rustls::Error::General(s) => s.clone(),
        other => format!("{other}"),
    }
}

/// `RequestClientCert` / `RequireAnyClientCert`: any certificate is accepted (not verified
/// against a CA, exactly as in Go), but the handshake signature is still checked.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `client_allowed_sans`: after the inner verifier accepted the client certificate, one of
/// its subject alternative names (DNS, e-mail, IP, URI) must equal an allowed entry, as
/// the toolkit's `VerifyPeerCertificate` does.
#[derive(Debug)]
struct AllowedSans {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for AllowedSans {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let sans = cert_sans(end_entity.as_ref()).ok_or(rustls::Error::InvalidCertificate(
            rustls::CertificateError::BadEncoding,
        ))?;
        if sans.iter().any(|s| self.allowed.contains(s)) {
            Ok(ok)
        } else {
            tracing::debug!(sans = ?sans, "client certificate has none of client_allowed_sans");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The subject alternative names of a DER certificate as Go's x509 package spells them
/// (DNS names, e-mail addresses, IP addresses, URIs, in the certificate's order); None when
/// it does not parse (the `x509-parser` crate), including a repeated or malformed
/// subjectAltName extension.
pub fn cert_sans(cert: &[u8]) -> Option<Vec<String>> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    let mut out = Vec::new();
    let Some(san) = cert.subject_alternative_name().ok()? else {
        return Some(out);
    };
    for name in &san.value.general_names {
        match name {
            GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                out.push((*s).to_string())
            }
            // rfc822Name [1], dNSName [2], uniformResourceIdentifier [6] that are not
            // IA5String: kept, with replacement characters (never matches an allowed name
            // written in the config)
            GeneralName::Invalid(tag, v) if matches!(tag.0, 1 | 2 | 6) => {
                out.push(String::from_utf8_lossy(v).into_owned())
            }
            GeneralName::IPAddress(v) => {
                let ip = match v.len() {
                    4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*v).ok()?),
                    // Go prints an IPv4-mapped IPv6 address as IPv4
                    16 => std::net::IpAddr::from(<[u8; 16]>::try_from(*v).ok()?).to_canonical(),
                    _ => continue,
                };
                out.push(ip.to_string());
            }
            _ => {}
        }
    }
    Some(out)
}

/// A certificate's notAfter as Unix time (the `x509-parser` crate); None when the
/// certificate does not parse.
pub fn cert_not_after(cert: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert).ok()?;
    Some(cert.validity().not_after.timestamp())
}

// ---------------------------------------------------------------------------------------------
// Rate limit (token bucket, like golang.org/x/time/rate with rate 1/interval and a burst)

struct Bucket {
    per_token: Duration,
    burst: u32,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(per_token: Duration, burst: u32) -> Self {
        Bucket {
            per_token,
            burst,
            tokens: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let gained = now.saturating_duration_since(self.last).as_secs_f64()
            / self.per_token.as_secs_f64().max(f64::MIN_POSITIVE);
        self.tokens = (self.tokens + gained).min(f64::from(self.burst));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Basic auth

/// Constant-time equality of two byte strings (the length is not hidden).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

/// `Authorization: Basic base64(user:password)`, or None.
pub fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let v = value.as_bytes();
    if v.len() > MAX_AUTHORIZATION_BYTES {
        return None;
    }
    let v = std::str::from_utf8(v).ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let raw = String::from_utf8(raw).ok()?;
    let (u, p) = raw.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn cache_key(user: &str, hash: &str, pass: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    for part in [user, hash, pass] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

impl WebConfig {
    /// Checks `Authorization` against `basic_auth_users`; true when no users are configured.
    pub async fn authorized(&self, auth: Option<&HeaderValue>) -> bool {
        if self.users.is_empty() {
            return true;
        }
        let Some((user, pass)) = auth.and_then(parse_basic) else {
            return false;
        };
        // Every configured name is compared, each in constant time.
        let mut found: Option<&str> = None;
        for (name, hash) in &self.users {
            let eq = ct_eq(name.as_bytes(), user.as_bytes());
            if eq && found.is_none() {
                found = Some(hash);
            }
        }
        let valid_user = found.is_some();
        let hash = found.unwrap_or(DUMMY_HASH).to_string();
        let key = cache_key(&user, &hash, &pass);
        if valid_user && self.cache.lock().is_ok_and(|c| c.contains(&key)) {
            return true;
        }
        // One bcrypt at a time, on the blocking pool: the runtime has a single worker.
        // The permit goes with the blocking task: a client that hangs up mid-check does not
        // let a second bcrypt start while the first still runs.
        let Ok(permit) = self.bcrypt_gate.clone().acquire_owned().await else {
            return false;
        };
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::verify(pass, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        // No short circuit: both facts are evaluated, then combined.
        let authorized = std::hint::black_box(valid_user) & std::hint::black_box(ok);
        if authorized {
            if let Ok(mut c) = self.cache.lock() {
                if c.len() >= AUTH_CACHE_SIZE {
                    // HashSet iteration order is random per set: an arbitrary victim.
                    if let Some(victim) = c.iter().next().copied() {
                        c.remove(&victim);
                    }
                }
                c.insert(key);
            }
        }
        authorized
    }

    /// Applies the rate limit, the configured headers and basic auth around `handler`.
    pub async fn serve<B, F, Fut>(&self, req: Request<B>, handler: F) -> Response<Full<Bytes>>
    where
        F: FnOnce(Request<B>) -> Fut,
        Fut: std::future::Future<Output = Response<Full<Bytes>>>,
    {
        let mut resp = if self
            .limiter
            .as_ref()
            .is_some_and(|l| l.lock().is_ok_and(|mut b| !b.allow()))
        {
            if let Some(m) = &self.metrics {
                m.refused_request("rate_limited");
            }
            plain(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests\n")
        } else if self.authorized(req.headers().get(AUTHORIZATION)).await {
            handler(req).await
        } else {
            if let Some(m) = &self.metrics {
                m.refused_request("unauthorized");
            }
            let mut r = plain(StatusCode::UNAUTHORIZED, "Unauthorized\n");
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
            r
        };
        for (n, v) in &self.headers {
            resp.headers_mut().insert(n.clone(), v.clone());
        }
        resp
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves one request: straight to `handler` without a web config, else through
/// [`WebConfig::serve`].
pub async fn serve_request<B, F, Fut>(
    web: Option<Arc<WebConfig>>,
    req: Request<B>,
    handler: F,
) -> Response<Full<Bytes>>
where
    F: FnOnce(Request<B>) -> Fut,
    Fut: std::future::Future<Output = Response<Full<Bytes>>>,
{
    match web {
        None => handler(req).await,
        Some(w) => w.serve(req, handler).await,
    }
}

// ---------------------------------------------------------------------------------------------
// The connection: plain, or TLS with the handshake driven by the first read or write

/// An accepted connection, plain or TLS. The TLS handshake happens inside the first
/// read/write, so it runs in the connection's task under the server's timeouts.
pub struct WebIo {
    state: IoState,
    metrics: Option<Arc<WebMetrics>>,
}

enum IoState {
    /// No TLS configured.
    Plain(TcpStream),
    /// TLS configured; looking at the first byte (a TLS handshake record starts with 0x16).
    Sniff(Option<TcpStream>, TlsAcceptor),
    /// TLS handshake in progress.
    Handshake(Box<tokio_rustls::Accept<TcpStream>>),
    /// TLS established.
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// Closed (peer went away before a byte, or the handshake failed).
    Closed,
}

impl WebIo {
    /// Wraps an accepted stream for the config in force.
    pub fn new(stream: TcpStream, web: Option<&WebConfig>) -> WebIo {
        let metrics = web.and_then(|w| w.metrics.clone());
        let state = match web.and_then(|w| w.tls.clone()) {
            None => IoState::Plain(stream),
            Some(acceptor) => IoState::Sniff(Some(stream), acceptor),
        };
        WebIo { state, metrics }
    }

    fn refused(&self, reason: &str) {
        if let Some(m) = &self.metrics {
            m.refused_connection(reason);
        }
    }

    /// Drives the connection until it is plain, TLS or closed.
    fn poll_established(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                IoState::Plain(_) | IoState::Tls(_) | IoState::Closed => {
                    return Poll::Ready(Ok(()))
                }
                IoState::Sniff(stream, acceptor) => {
                    let Some(s) = stream.as_mut() else {
                        self.state = IoState::Closed;
                        continue;
                    };
                    let mut first = [0u8; 1];
                    let mut buf = ReadBuf::new(&mut first);
                    match s.poll_peek(cx, &mut buf) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(e)) => {
                            self.state = IoState::Closed;
                            return Poll::Ready(Err(e));
                        }
                        Poll::Ready(Ok(0)) => {
                            // the peer closed without a byte: nothing was refused
                            self.state = IoState::Closed;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Ok(_)) => {}
                    }
                    let acceptor = acceptor.clone();
                    let Some(s) = stream.take() else {
                        self.state = IoState::Closed;
                        continue;
                    };
                    if first[0] == 0x16 {
                        self.state = IoState::Handshake(Box::new(acceptor.accept(s)));
                        continue;
                    }
                    // Not TLS: answer like Go's server does (best effort) and close.
                    if first[0].is_ascii_alphabetic() {
                        let _ = s.try_write(PLAIN_HTTP_ANSWER);
                    }
                    tracing::debug!(peer = ?s.peer_addr().ok(), "plain HTTP (or other non-TLS bytes) on the TLS port; closed");
                    self.state = IoState::Closed;
                    self.refused("not_tls");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "client sent an HTTP request to an HTTPS server",
                    )));
                }
                IoState::Handshake(accept) => match Pin::new(accept.as_mut()).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(tls)) => self.state = IoState::Tls(Box::new(tls)),
                    Poll::Ready(Err(e)) => {
                        tracing::debug!(error = %e, "TLS handshake failed");
                        self.state = IoState::Closed;
                        self.refused("tls_handshake");
                        return Poll::Ready(Err(e));
                    }
                },
            }
        }
    }
}

impl AsyncRead for WebIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_established(cx) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        match &mut this.state {
            IoState::Plain(s) => Pin::new(s).poll_read(cx, buf),
            IoState::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncWrite for WebIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.poll_established(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        match &mut this.state {
            IoState::Plain(s) => Pin::new(s).poll_write(cx, buf),
            IoState::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            IoState::Plain(s) => Pin::new(s).poll_flush(cx),
            IoState::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().state {
            IoState::Plain(s) => Pin::new(s).poll_shutdown(cx),
            IoState::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The handle: the config in force, reloaded on change

/// Identity of a file for change detection: device, inode, size, mtime (ns).
type Stamp = Option<(u64, u64, u64, i128)>;

fn stamp(p: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    let mtime = i128::from(m.mtime())
        .saturating_mul(1_000_000_000)
        .saturating_add(i128::from(m.mtime_nsec()));
    Some((m.dev(), m.ino(), m.size(), mtime))
}

struct Watched {
    /// The files of the last attempt (config first), with their stamps.
    stamps: Vec<(PathBuf, Stamp)>,
}

/// The web config in force, watched for changes.
pub struct WebHandle {
    path: PathBuf,
    current: RwLock<Arc<WebConfig>>,
    watched: Mutex<Watched>,
    gate: Arc<Semaphore>,
    metrics: Arc<WebMetrics>,
}

impl std::fmt::Debug for WebHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WebHandle({})", self.path.display())
    }
}

/// What a reload check found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// Nothing changed.
    Unchanged,
    /// A new config is in force.
    Applied,
    /// The files changed but do not validate; the previous config stays.
    Rejected,
}

impl WebHandle {
    /// Loads the file (blocking); errors are the same as at start.
    pub fn load(path: &Path) -> Result<Arc<WebHandle>, WebConfigError> {
        let gate = Arc::new(Semaphore::new(1));
        let (mut cfg, warnings) = load(path, gate.clone(), &mut Vec::new())?;
        for w in warnings {
            tracing::warn!("web config: {w}");
        }
        let metrics = Arc::new(WebMetrics::new());
        metrics.loaded(&cfg);
        cfg.metrics = Some(metrics.clone());
        let stamps = cfg.files.clone();
        Ok(Arc::new(WebHandle {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(cfg)),
            watched: Mutex::new(Watched { stamps }),
            gate,
            metrics,
        }))
    }

    /// The config in force.
    pub fn current(&self) -> Arc<WebConfig> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reloads when the file or a file it names changed (or always with `force`). Blocking.
    /// A bad file is logged once per change and the config in force stays.
    pub fn check(&self, force: bool) -> Reload {
        let Ok(mut w) = self.watched.lock() else {
            return Reload::Unchanged;
        };
        let changed = w.stamps.iter().any(|(p, s)| stamp(p) != *s);
        if !changed && !force {
            return Reload::Unchanged;
        }
        let mut seen = Vec::new();
        match load(&self.path, self.gate.clone(), &mut seen) {
            Ok((mut cfg, warnings)) => {
                for warning in warnings {
                    tracing::warn!("web config: {warning}");
                }
                w.stamps = seen;
                self.metrics.loaded(&cfg);
                cfg.metrics = Some(self.metrics.clone());
                tracing::info!(file = %self.path.display(), config = %cfg.summary(), "web config reloaded");
                if let Ok(mut cur) = self.current.write() {
                    *cur = Arc::new(cfg);
                }
                Reload::Applied
            }
            Err(e) => {
                // Remember the stamps of what failed, so the same bad files are not re-read
                // and logged every second, and keep watching the files in force too.
                for (p, st) in &self.current().files {
                    if !seen.iter().any(|(q, _)| q == p) {
                        seen.push((p.clone(), *st));
                    }
                }
                w.stamps = seen;
                self.metrics.reload_ok.set(0);
                tracing::error!(error = %e, "web config reload rejected; the previous web config stays in force");
                Reload::Rejected
            }
        }
    }

    /// Registers the web config's metrics (once; later calls are no-ops).
    pub fn register(&self, registry: &prometheus::Registry) {
        let m = &self.metrics;
        let _ = registry.register(Box::new(m.requests_refused.clone()));
        let _ = registry.register(Box::new(m.connections_refused.clone()));
        let _ = registry.register(Box::new(m.reload_ok.clone()));
        let _ = registry.register(Box::new(m.reload_ts.clone()));
        let _ = registry.register(Box::new(m.cert_not_after.clone()));
    }

    /// Watches the files for changes every [`POLL_INTERVAL`] (on the blocking pool) until
    /// `stop` turns true or its sender is gone. SIGHUP is handled by the application's
    /// signal listener, which calls [`WebHandle::check`] with `force`.
    pub async fn watch(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return;
                    }
                    continue;
                }
            }
            let h = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || h.check(false)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_name_holding_a_hash_is_cut_in_errors() {
        let d = tempfile::tempdir().unwrap();
        let hash = "$2b$04$mDRyDF.QpW5B3.tEpFD81uvfSoG10kT0RAArYMvYmS81Acp148HT";
        let text = format!("basic_auth_users:\n  \"alice  {hash}\": nope\n");
        let e = WebConfig::from_text(&d.path().join("w.yml"), &text)
            .err()
            .unwrap()
            .to_string();
        assert!(!e.contains("mDRyDF"), "{e}");
        assert!(e.contains("basic_auth_users.alice…"), "{e}");
        assert_eq!(shown_user("bob"), "bob");
        assert_eq!(shown_user(&"x".repeat(100)), format!("{}…", "x".repeat(64)));
    }
    use std::io::Write;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        p
    }

    fn err(dir: &Path, yaml: &str) -> String {
        let p = write(dir, "web.yml", yaml);
        match WebConfig::load(&p) {
            Ok(_) => panic!("accepted: {yaml}"),
            Err(e) => e.to_string(),
        }
    }

    fn self_signed(dir: &Path) -> (String, String) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = ck.cert.pem();
        let key = ck.key_pair.serialize_pem();
        write(dir, "cert.pem", &cert);
        write(dir, "key.pem", &key);
        (cert, key)
    }

    #[test]
    fn empty_file_is_plain_http_without_auth() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "web.yml", "");
        let c = WebConfig::load(&p).unwrap();
        assert!(!c.tls() && !c.basic_auth());
    }

    #[test]
    fn errors_name_the_key_and_are_one_line() {
        let d = tempfile::tempdir().unwrap();
        self_signed(d.path());
        let cases: &[(&str, &str)] = &[
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  min_version: TLS14\n", "tls_server_config.min_version"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  max_version: TLS11\n", "tls_server_config.max_version"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  min_version: TLS13\n  max_version: TLS12\n", "tls_server_config.min_version"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  cipher_suites: [TLS_RSA_WITH_AES_128_CBC_SHA]\n", "tls_server_config.cipher_suites"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  cipher_suites: [NOPE]\n", "tls_server_config.cipher_suites"),
            // the key is ECDSA: RSA-only TLS 1.2 suites cannot serve it
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  cipher_suites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n", "tls_server_config.cipher_suites"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  curve_preferences: [CurveP521]\n", "tls_server_config.curve_preferences"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_auth_type: Sometimes\n", "tls_server_config.client_auth_type"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_auth_type: RequireAndVerifyClientCert\n", "tls_server_config.client_ca_file"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_ca_file: cert.pem\n", "tls_server_config.client_auth_type"),
            ("tls_server_config:\n  cert_file: cert.pem\n", "tls_server_config.key_file"),
            ("tls_server_config:\n  cert_file: missing.pem\n  key_file: key.pem\n", "tls_server_config.cert_file"),
            ("tls_server_config:\n  cert_file: key.pem\n  key_file: key.pem\n", "tls_server_config.cert_file"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: cert.pem\n", "tls_server_config.key_file"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_allowed_sans: [a]\n", "tls_server_config.client_allowed_sans"),
            ("tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_auth_type: NoClientCert\n  client_allowed_sans: [a]\n", "tls_server_config.client_allowed_sans"),
            ("http_server_config:\n  headers:\n    X-Powered-By: me\n", "http_server_config.headers.X-Powered-By"),
            ("http_server_config:\n  headers:\n    X-Frame-Options: allow\n", "http_server_config.headers.X-Frame-Options"),
            ("rate_limit:\n  interval: 1s\n", "rate_limit.burst"),
            ("rate_limit:\n  interval: soon\n  burst: 1\n", "rate_limit.interval"),
            ("basic_auth_users:\n  alice: s3cret-plain\n", "basic_auth_users.alice"),
            ("tls_server_config:\n  cert_fil: cert.pem\n", "tls_server_config"),
            ("bogus: 1\n", "bogus"),
        ];
        for (yaml, key) in cases {
            let e = err(d.path(), yaml);
            assert!(
                e.contains(&format!("key {key}")) || e.contains(key),
                "{yaml}: {e}"
            );
            assert!(!e.contains('\n'), "{e}");
        }
    }

    #[test]
    fn errors_never_quote_passwords_or_key_material() {
        let d = tempfile::tempdir().unwrap();
        let (_, key) = self_signed(d.path());
        let e = err(d.path(), "basic_auth_users:\n  alice: hunter2-plain\n");
        assert!(!e.contains("hunter2"), "{e}");
        for typed in ["12345678", "[12345678]", "{pw: 12345678}", "true"] {
            let e = err(d.path(), &format!("basic_auth_users:\n  alice: {typed}\n"));
            assert!(
                !e.contains("12345678") && e.contains("basic_auth_users.alice"),
                "{e}"
            );
        }
        // a key file whose body is damaged
        let body: Vec<&str> = key.lines().collect();
        let broken = format!("{}\n{}!!\n{}\n", body[0], body[1], body[body.len() - 1]);
        write(d.path(), "bad.pem", &broken);
        let e = err(
            d.path(),
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: bad.pem\n",
        );
        assert!(!e.contains(&body[1][..20]), "{e}");
        assert!(e.contains("tls_server_config.key_file"), "{e}");
    }

    #[test]
    fn a_costly_bcrypt_hash_is_warned_about() {
        let d = tempfile::tempdir().unwrap();
        let costly = DUMMY_HASH.replace("$10$", "$15$");
        let p = write(
            d.path(),
            "web.yml",
            &format!("basic_auth_users:\n  a: '{costly}'\n  b: '{DUMMY_HASH}'\n"),
        );
        let (_, warnings) = load(&p, Arc::new(Semaphore::new(1)), &mut Vec::new()).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("basic_auth_users.a") && warnings[0].contains("cost 15"));
        assert!(!warnings[0].contains(&costly));
    }

    #[test]
    fn full_config_builds() {
        let d = tempfile::tempdir().unwrap();
        self_signed(d.path());
        let hash = bcrypt::hash("pw", 4).unwrap();
        let p = write(
            d.path(),
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: cert.pem\n  min_version: TLS12\n  max_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256]\n  curve_preferences: [X25519, CurveP256]\n  prefer_server_cipher_suites: true\nhttp_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\nbasic_auth_users:\n  prometheus: '{hash}'\nrate_limit:\n  interval: 10ms\n  burst: 100\n"
            ),
        );
        let c = WebConfig::load(&p).unwrap();
        assert!(c.tls() && c.basic_auth());
        let s = c.summary();
        assert!(
            s.contains("RequireAndVerifyClientCert") && s.contains("basic_auth_users=1"),
            "{s}"
        );
        assert!(!s.contains(&hash));
        assert_eq!(c.headers.len(), 2);
        assert_eq!(c.files.len(), 4, "the config, cert, key and client CA");
    }

    #[test]
    fn sans_of_a_certificate_as_go_spells_them() {
        use rcgen::{CertificateParams, KeyPair, SanType};
        let mut p = CertificateParams::new(vec!["prometheus.example".to_string()]).unwrap();
        p.subject_alt_names.extend([
            SanType::IpAddress("10.1.2.3".parse().unwrap()),
            SanType::IpAddress("::ffff:10.9.9.9".parse().unwrap()),
            SanType::IpAddress("2001:db8::1".parse().unwrap()),
            SanType::Rfc822Name("ops@example.com".try_into().unwrap()),
            SanType::URI(
                "spiffe://cluster/ns/monitoring/sa/prometheus"
                    .try_into()
                    .unwrap(),
            ),
        ]);
        let key = KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        let sans = cert_sans(cert.der()).unwrap();
        assert_eq!(
            sans,
            [
                "prometheus.example",
                "10.1.2.3",
                "10.9.9.9",
                "2001:db8::1",
                "ops@example.com",
                "spiffe://cluster/ns/monitoring/sa/prometheus"
            ]
        );
        // no SAN extension at all
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "x");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(cert_sans(cert.der()).unwrap(), Vec::<String>::new());
        assert_eq!(cert_sans(b""), None);
        assert_eq!(cert_sans(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn sans_other_names_are_skipped_and_bad_san_extensions_refused() {
        use rcgen::{CertificateParams, CustomExtension, KeyPair, OtherNameValue, SanType};
        let key = KeyPair::generate().unwrap();
        // an otherName (a UPN) is no name Go's x509 lists; the DNS name after it is
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.subject_alt_names = vec![
            SanType::OtherName((
                vec![1, 3, 6, 1, 4, 1, 311, 20, 2, 3],
                OtherNameValue::Utf8String("ops@corp".to_string()),
            )),
            SanType::DnsName("b.example".try_into().unwrap()),
        ];
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(cert_sans(cert.der()).unwrap(), ["b.example"]);
        // subjectAltName (2.5.29.17) whose value is no GeneralNames sequence
        let san_oid = [2, 5, 29, 17];
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &san_oid,
            vec![0x04, 0x01, 0x00],
        )];
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(cert_sans(cert.der()), None);
        // two subjectAltName extensions (Go refuses duplicate extensions too)
        let mut p = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        p.custom_extensions = vec![CustomExtension::from_oid_content(
            &san_oid,
            vec![0x30, 0x03, 0x82, 0x01, b'c'],
        )];
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(cert_sans(cert.der()), None);
    }

    #[test]
    fn not_after_of_a_certificate() {
        use rcgen::{CertificateParams, KeyPair};
        let key = KeyPair::generate().unwrap();
        for (y, m, d, want) in [
            (2031, 2, 3, 1_927_843_200i64), // UTCTime
            (2051, 12, 31, 2_587_593_600),  // GeneralizedTime (from 2050 on)
        ] {
            let mut p = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
            p.not_after = rcgen::date_time_ymd(y, m, d);
            let cert = p.self_signed(&key).unwrap();
            assert_eq!(cert_not_after(cert.der()), Some(want), "{y}-{m}-{d}");
        }
        assert_eq!(cert_not_after(b"\x30\x00"), None);
    }

    #[test]
    fn metrics_count_refusals_and_reloads() {
        let d = tempfile::tempdir().unwrap();
        self_signed(d.path());
        let p = write(
            d.path(),
            "web.yml",
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n",
        );
        let h = WebHandle::load(&p).unwrap();
        let reg = prometheus::Registry::new();
        h.register(&reg);
        h.register(&reg);
        let text = || {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &reg.gather(), &mut buf)
                .unwrap();
            String::from_utf8(buf).unwrap()
        };
        let t = text();
        for line in [
            "gravity_exporter_web_requests_refused_total{reason=\"unauthorized\"} 0",
            "gravity_exporter_web_requests_refused_total{reason=\"rate_limited\"} 0",
            "gravity_exporter_web_connections_refused_total{reason=\"tls_handshake\"} 0",
            "gravity_exporter_web_connections_refused_total{reason=\"not_tls\"} 0",
            "gravity_exporter_web_config_last_reload_successful 1",
            "gravity_exporter_web_tls_certificate_not_after_timestamp_seconds ",
        ] {
            assert!(t.contains(line), "{line}\n{t}");
        }
        write(d.path(), "web.yml", "basic_auth_users:\n  a: plain\n");
        assert_eq!(h.check(false), Reload::Rejected);
        assert!(text().contains("gravity_exporter_web_config_last_reload_successful 0"));
        // without TLS the certificate expiry disappears
        write(d.path(), "web.yml", "");
        assert_eq!(h.check(false), Reload::Applied);
        let t = text();
        assert!(
            t.contains("gravity_exporter_web_config_last_reload_successful 1"),
            "{t}"
        );
        assert!(
            !t.contains("gravity_exporter_web_tls_certificate_not_after_timestamp_seconds "),
            "{t}"
        );
    }

    proptest::proptest! {
        #[test]
        fn cert_not_after_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = cert_not_after(&bytes);
        }

        #[test]
        fn cert_sans_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = cert_sans(&bytes);
        }

        #[test]
        fn cert_sans_never_panics_on_damaged_certificates(pos in 0usize..2000, byte in proptest::num::u8::ANY, cut in 0usize..2000) {
            let ck = rcgen::generate_simple_self_signed(vec!["a.example".into(), "10.0.0.1".into()]).unwrap();
            let mut der = ck.cert.der().to_vec();
            let n = der.len();
            der[pos % n] = byte;
            der.truncate(cut % (n + 1));
            let _ = cert_sans(&der);
            let _ = cert_not_after(&der);
        }
    }

    #[test]
    fn basic_header_parsing() {
        let hv = |s: &str| HeaderValue::from_str(s).unwrap();
        let enc = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        assert_eq!(
            parse_basic(&hv(&format!("Basic {}", enc("u:p:q")))),
            Some(("u".into(), "p:q".into()))
        );
        assert_eq!(
            parse_basic(&hv(&format!("basic {}", enc("u:")))),
            Some(("u".into(), "".into()))
        );
        assert_eq!(parse_basic(&hv(&format!("Bearer {}", enc("u:p")))), None);
        assert_eq!(parse_basic(&hv("Basic !!!")), None);
        assert_eq!(parse_basic(&hv(&format!("Basic {}", enc("nocolon")))), None);
        let long = format!("Basic {}", enc(&"a:".repeat(3000)));
        assert_eq!(parse_basic(&hv(&long)), None);
    }

    #[test]
    fn ct_eq_compares() {
        assert!(ct_eq(b"alice", b"alice"));
        assert!(!ct_eq(b"alice", b"alicf"));
        assert!(!ct_eq(b"alice", b"alic"));
        assert!(ct_eq(b"", b""));
    }

    fn auth_header(u: &str, p: &str) -> HeaderValue {
        let e = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        HeaderValue::from_str(&format!("Basic {e}")).unwrap()
    }

    #[tokio::test]
    async fn basic_auth_checks_and_caches_successes_only() {
        let d = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("right", 4).unwrap();
        let p = write(
            d.path(),
            "web.yml",
            &format!(
                "basic_auth_users:\n  alice: '{hash}'\n  bob: '{}'\n",
                bcrypt::hash("bobpw", 4).unwrap()
            ),
        );
        let c = WebConfig::load(&p).unwrap();
        assert!(!c.authorized(None).await);
        assert!(!c.authorized(Some(&auth_header("alice", "wrong"))).await);
        assert!(!c.authorized(Some(&auth_header("mallory", "right"))).await);
        assert!(!c.authorized(Some(&auth_header("alice", ""))).await);
        assert_eq!(c.cache.lock().unwrap().len(), 0, "failures are not cached");
        assert!(c.authorized(Some(&auth_header("alice", "right"))).await);
        assert!(c.authorized(Some(&auth_header("bob", "bobpw"))).await);
        assert_eq!(c.cache.lock().unwrap().len(), 2);
        // cached: still right, and a wrong password for a cached user still fails
        assert!(c.authorized(Some(&auth_header("alice", "right"))).await);
        assert!(!c.authorized(Some(&auth_header("alice", "righT"))).await);
        // bob's password is not alice's
        assert!(!c.authorized(Some(&auth_header("alice", "bobpw"))).await);
    }

    /// On a single-threaded runtime (the exporter has one worker): while one bcrypt runs,
    /// a request whose credentials are cached is still answered.
    #[tokio::test(flavor = "current_thread")]
    async fn bcrypt_runs_off_the_async_worker() {
        let d = tempfile::tempdir().unwrap();
        let fast = bcrypt::hash("fast", 4).unwrap();
        let slow = bcrypt::hash("slow", 10).unwrap();
        let p = write(
            d.path(),
            "web.yml",
            &format!("basic_auth_users:\n  fast: '{fast}'\n  slow: '{slow}'\n"),
        );
        let c = Arc::new(WebConfig::load(&p).unwrap());
        assert!(c.authorized(Some(&auth_header("fast", "fast"))).await);
        let c2 = c.clone();
        let slow_task =
            tokio::spawn(async move { c2.authorized(Some(&auth_header("slow", "wrong"))).await });
        // let it start: it holds the bcrypt gate while bcrypt runs
        while !slow_task.is_finished() && c.bcrypt_gate.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        assert!(c.authorized(Some(&auth_header("fast", "fast"))).await);
        assert!(
            !slow_task.is_finished(),
            "the cached request waited for a bcrypt run: bcrypt ran on the async worker"
        );
        assert!(!slow_task.await.unwrap());

        // a client that hangs up mid-check: the gate stays taken until bcrypt is done
        let c3 = c.clone();
        let hung_up =
            tokio::spawn(async move { c3.authorized(Some(&auth_header("slow", "wrong"))).await });
        while c.bcrypt_gate.available_permits() == 1 {
            tokio::task::yield_now().await;
        }
        hung_up.abort();
        let _ = hung_up.await;
        assert_eq!(
            c.bcrypt_gate.available_permits(),
            0,
            "the running bcrypt still holds the gate"
        );
        let t0 = Instant::now();
        while c.bcrypt_gate.available_permits() == 0 {
            assert!(t0.elapsed() < Duration::from_secs(60));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn auth_cache_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        let p = write(
            d.path(),
            "web.yml",
            &format!("basic_auth_users:\n  a: '{hash}'\n"),
        );
        let c = WebConfig::load(&p).unwrap();
        // fill the cache directly with distinct keys, then add a real success
        {
            let mut cache = c.cache.lock().unwrap();
            for i in 0..AUTH_CACHE_SIZE {
                cache.insert(cache_key("x", &hash, &i.to_string()));
            }
        }
        assert!(c.authorized(Some(&auth_header("a", "pw"))).await);
        assert_eq!(c.cache.lock().unwrap().len(), AUTH_CACHE_SIZE);
    }

    #[tokio::test]
    async fn responses_carry_headers_and_401_asks_for_basic() {
        let d = tempfile::tempdir().unwrap();
        let hash = bcrypt::hash("pw", 4).unwrap();
        let p = write(
            d.path(),
            "web.yml",
            &format!("basic_auth_users:\n  a: '{hash}'\nhttp_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n"),
        );
        let c = WebConfig::load(&p).unwrap();
        let ok = |_r: Request<()>| async { plain(StatusCode::OK, "ok") };
        let r = c.serve(Request::new(()), ok).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[WWW_AUTHENTICATE], "Basic");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let mut req = Request::new(());
        req.headers_mut()
            .insert(AUTHORIZATION, auth_header("a", "pw"));
        let r = c.serve(req, ok).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    }

    #[tokio::test]
    async fn rate_limit_answers_429_past_the_burst() {
        let d = tempfile::tempdir().unwrap();
        let p = write(
            d.path(),
            "web.yml",
            "rate_limit:\n  interval: 1h\n  burst: 2\n",
        );
        let c = WebConfig::load(&p).unwrap();
        let ok = |_r: Request<()>| async { plain(StatusCode::OK, "ok") };
        assert_eq!(c.serve(Request::new(()), ok).await.status(), StatusCode::OK);
        assert_eq!(c.serve(Request::new(()), ok).await.status(), StatusCode::OK);
        assert_eq!(
            c.serve(Request::new(()), ok).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn reload_applies_changes_and_keeps_the_old_config_on_error() {
        let d = tempfile::tempdir().unwrap();
        let h1 = bcrypt::hash("one", 4).unwrap();
        let p = write(
            d.path(),
            "web.yml",
            &format!("basic_auth_users:\n  a: '{h1}'\n"),
        );
        let h = WebHandle::load(&p).unwrap();
        assert_eq!(h.check(false), Reload::Unchanged);
        write(
            d.path(),
            "web.yml",
            "basic_auth_users:\n  a: plain-password\n",
        );
        assert_eq!(h.check(false), Reload::Rejected);
        assert_eq!(h.current().users[0].1, h1, "old config stays");
        // the same bad file is not re-read (and re-logged) on the next look
        assert_eq!(h.check(false), Reload::Unchanged);
        let h2 = bcrypt::hash("two", 4).unwrap();
        write(
            d.path(),
            "web.yml",
            &format!("basic_auth_users:\n  a: '{h2}'\n  b: '{h2}'\n"),
        );
        assert_eq!(h.check(false), Reload::Applied);
        assert_eq!(h.current().users.len(), 2);
        assert_eq!(h.check(true), Reload::Applied, "SIGHUP re-reads");
    }

    #[test]
    fn reload_follows_the_certificate_files() {
        let d = tempfile::tempdir().unwrap();
        self_signed(d.path());
        let p = write(
            d.path(),
            "web.yml",
            "tls_server_config:\n  cert_file: cert.pem\n  key_file: key.pem\n",
        );
        let h = WebHandle::load(&p).unwrap();
        assert_eq!(h.check(false), Reload::Unchanged);
        // rotate the certificate (new file, new inode: what cert-manager and k8s do)
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        write(d.path(), "cert.new", &ck.cert.pem());
        write(d.path(), "key.new", &ck.key_pair.serialize_pem());
        std::fs::rename(d.path().join("cert.new"), d.path().join("cert.pem")).unwrap();
        // key not yet rotated: the pair does not match, the old one stays
        assert_eq!(h.check(false), Reload::Rejected);
        std::fs::rename(d.path().join("key.new"), d.path().join("key.pem")).unwrap();
        assert_eq!(h.check(false), Reload::Applied);
        // the config now names files that do not exist yet: rejected, and their appearance
        // alone (the config is not touched again) is seen and loads
        write(
            d.path(),
            "web.yml",
            "tls_server_config:\n  cert_file: later.pem\n  key_file: later.key\n",
        );
        assert_eq!(h.check(false), Reload::Rejected);
        assert_eq!(h.check(false), Reload::Unchanged);
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        write(d.path(), "later.pem", &ck.cert.pem());
        assert_eq!(h.check(false), Reload::Rejected, "key still missing");
        write(d.path(), "later.key", &ck.key_pair.serialize_pem());
        assert_eq!(h.check(false), Reload::Applied);
    }
}
