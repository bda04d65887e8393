//! Kafka broker probe: `ApiVersions`, then, when gravity's config uses them, TLS and SASL
//! (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) exactly as gravity's client would log in.
//!
//! `ApiVersions` is the first request every modern Kafka client sends, it needs no
//! authentication (it is allowed before SASL), every broker since 0.10 answers it, and
//! KIP-896 (Kafka 4.0) keeps version 0. A correct answer proves the broker process is up and
//! speaking the Kafka protocol, which a bare TCP connect does not.
//!
//! With `cert-file`, `key-file` and `ca-file` in gravity's `kafka-global-config` the
//! connection is TLS first (gravity enables TLS only when all three are set, with the client
//! certificate; see [`crate::gravity_config`] for `verify-ssl`). With `net.sasl.enable` the
//! probe then authenticates: `SaslHandshake` v1 naming the mechanism, and `SaslAuthenticate`
//! v0 rounds carrying the mechanism's messages (KIP-152, Kafka ≥ 1.0): one round for PLAIN
//! (`\0user\0password`, RFC 4616), two for SCRAM (RFC 5802/7677, [`super::scram`]), whose
//! server signature is checked before the login counts.
//!
//! Wire format, from the Kafka protocol guide (<https://kafka.apache.org/protocol.html>,
//! sections "Common Request and Response Structure", "Headers", "ApiVersions API",
//! "SaslHandshake API", "SaslAuthenticate API"); all integers are big-endian:
//!
//! ```text
//! Request  => Size:INT32 RequestHeader(v1) Body
//!   RequestHeader v1 => request_api_key:INT16 request_api_version:INT16
//!                       correlation_id:INT32 client_id:NULLABLE_STRING(INT16 length + bytes)
//!   ApiVersionsRequest v0      => (empty)
//!   SaslHandshakeRequest v1    => mechanism:STRING
//!   SaslAuthenticateRequest v0 => auth_bytes:BYTES(INT32 length + bytes)
//! Response => Size:INT32 ResponseHeader(v0: correlation_id:INT32) Body
//!   ApiVersionsResponse v0      => error_code:INT16 api_keys:ARRAY(INT32 count) of
//!                                  [api_key:INT16 min_version:INT16 max_version:INT16]
//!   SaslHandshakeResponse v1    => error_code:INT16 mechanisms:ARRAY of STRING
//!   SaslAuthenticateResponse v0 => error_code:INT16 error_message:NULLABLE_STRING
//!                                  auth_bytes:BYTES
//! ```
//!
//! Every response is checked strictly: matching correlation id, bounded sizes, fields that
//! fill the frame exactly. These few fixed messages are encoded here rather than with the
//! `kafka-protocol` crate, whose generated code for every API would add megabytes of code
//! for three message types (docs/architecture.md).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::scram::{self, ScramClient, ScramError, ScramHash};
use super::tls::{self, TlsError, TlsOptions};
use super::{
    connect_tcp, io_reason, run_probe, sanitize, ConnectError, Endpoint, FailureReason,
    ProbeOutcome, Secret,
};

/// API key of `ApiVersions`.
pub const API_VERSIONS_KEY: i16 = 18;
/// API key of `SaslHandshake`.
pub const SASL_HANDSHAKE_KEY: i16 = 17;
/// API key of `SaslAuthenticate`.
pub const SASL_AUTHENTICATE_KEY: i16 = 36;
/// `client_id` sent in the request header.
pub const CLIENT_ID: &str = "gravity-exporter";
/// Largest response frame accepted (a real ApiVersions v0 answer is well under 1 KiB).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Largest `api_keys` array accepted (Kafka 4 defines fewer than 100 APIs).
pub const MAX_API_KEYS: usize = 1000;
/// Most SASL mechanisms read from a handshake answer.
pub const MAX_MECHANISMS: usize = 64;

static NEXT_CORRELATION_ID: AtomicI32 = AtomicI32::new(1);

/// One entry of the broker's `api_keys` array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiKeyRange {
    /// The API key (0 Produce, 1 Fetch, 3 Metadata, 18 ApiVersions, ...).
    pub api_key: i16,
    /// Lowest supported version.
    pub min_version: i16,
    /// Highest supported version.
    pub max_version: i16,
}

/// A SASL mechanism gravity's Kafka client can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaslMechanism {
    /// SASL/PLAIN (RFC 4616): user and password in the clear, so normally over TLS.
    Plain,
    /// SCRAM-SHA-256 (RFC 7677).
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

impl SaslMechanism {
    /// The mechanism's name on the wire (and in gravity's config).
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }

    /// Parses a mechanism name (case-insensitive).
    pub fn parse(name: &str) -> Option<SaslMechanism> {
        match name.trim().to_ascii_uppercase().as_str() {
            "PLAIN" => Some(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Some(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Some(SaslMechanism::ScramSha512),
            _ => None,
        }
    }
}

/// SASL login of the probe (gravity's `net.sasl`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sasl {
    /// The mechanism.
    pub mechanism: SaslMechanism,
    /// User name.
    pub user: String,
    /// Password (never printed).
    pub password: Secret,
}

/// How the probe connects: TLS and SASL as gravity's config says (both off by default).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KafkaSecurity {
    /// TLS before anything else.
    pub tls: Option<TlsOptions>,
    /// SASL authentication after ApiVersions.
    pub sasl: Option<Sasl>,
}

/// Errors of the Kafka probe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// The TCP connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// TLS could not be set up or its handshake failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The broker answered a plaintext request with a TLS alert: the listener wants TLS.
    #[error("the listener speaks TLS, gravity's config has no TLS for Kafka (cert-file, key-file, ca-file)")]
    TlsRequired,
    /// The deadline passed.
    #[error("no answer within {after_ms} ms")]
    Timeout {
        /// The time allowed, in milliseconds.
        after_ms: u128,
    },
    /// The connection failed mid-exchange (EOF, reset, ...).
    #[error("connection lost: {0}")]
    Io(io::ErrorKind),
    /// The answer is not a valid response.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The broker answered with a non-zero error code.
    #[error("broker returned error code {code} ({})", error_name(*code))]
    Broker {
        /// The Kafka error code (35 UNSUPPORTED_VERSION, 58 SASL_AUTHENTICATION_FAILED, ...).
        code: i16,
    },
    /// The broker does not enable the configured SASL mechanism.
    #[error("the broker does not enable SASL mechanism {wanted} (enabled: {enabled})")]
    MechanismUnsupported {
        /// What gravity's config asks for.
        wanted: &'static str,
        /// What the broker listed, sanitised.
        enabled: String,
    },
    /// SaslAuthenticate failed: the credentials were rejected.
    #[error("SASL {mechanism} login of user {user} failed: error code {code} ({}){}", error_name(*code), if message.is_empty() { String::new() } else { format!(": {message}") })]
    SaslFailed {
        /// The mechanism.
        mechanism: &'static str,
        /// The user (from gravity's config; never the password).
        user: String,
        /// The Kafka error code (58 SASL_AUTHENTICATION_FAILED).
        code: i16,
        /// The broker's error message, sanitised.
        message: String,
    },
    /// The SCRAM exchange failed on the client's side (bad server signature, bad message).
    #[error(transparent)]
    Scram(#[from] ScramError),
}

impl KafkaError {
    /// The probe [`FailureReason`]: rejected credentials and authorization error codes are
    /// `Auth`, a mechanism the broker does not enable is `AuthPluginUnsupported`, TLS
    /// failures are `Tls` or `TlsRequired`, other error codes and malformed answers are
    /// `Protocol`.
    pub fn reason(&self) -> FailureReason {
        match self {
            KafkaError::Connect(e) => e.reason(),
            KafkaError::Tls(e) => e.reason(),
            KafkaError::TlsRequired => FailureReason::TlsRequired,
            KafkaError::Timeout { .. } => FailureReason::Timeout,
            KafkaError::Io(kind) => io_reason(*kind),
            KafkaError::Broker { code: 29..=31 | 58 } | KafkaError::SaslFailed { .. } => {
                FailureReason::Auth
            }
            KafkaError::MechanismUnsupported { .. } | KafkaError::Broker { code: 33 } => {
                FailureReason::AuthPluginUnsupported
            }
            KafkaError::Scram(ScramError::BadServerSignature | ScramError::Server(_)) => {
                FailureReason::Auth
            }
            KafkaError::Scram(_) | KafkaError::Protocol(_) | KafkaError::Broker { .. } => {
                FailureReason::Protocol
            }
        }
    }
}

impl From<io::Error> for KafkaError {
    fn from(e: io::Error) -> Self {
        KafkaError::Io(e.kind())
    }
}

/// Names of the error codes a broker may plausibly return here.
fn error_name(code: i16) -> &'static str {
    match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        30 => "GROUP_AUTHORIZATION_FAILED",
        31 => "CLUSTER_AUTHORIZATION_FAILED",
        33 => "UNSUPPORTED_SASL_MECHANISM",
        34 => "ILLEGAL_SASL_STATE",
        35 => "UNSUPPORTED_VERSION",
        42 => "INVALID_REQUEST",
        58 => "SASL_AUTHENTICATION_FAILED",
        _ => "see the Kafka protocol guide",
    }
}

/// Sends ApiVersions v0 to `endpoint` (plaintext, no SASL) and returns the broker's
/// supported API ranges, all within `deadline`.
pub async fn api_versions(
    endpoint: &Endpoint,
    deadline: Duration,
) -> Result<Vec<ApiKeyRange>, KafkaError> {
    let work = async {
        let mut stream = connect_tcp(endpoint, deadline).await?;
        request_api_versions(&mut stream).await
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(KafkaError::Timeout {
            after_ms: deadline.as_millis(),
        }),
    }
}

/// Connects like gravity (TLS, SASL per `security`), runs ApiVersions and the SASL login,
/// and describes the success, all within `deadline`.
pub async fn check(
    endpoint: &Endpoint,
    security: &KafkaSecurity,
    deadline: Duration,
) -> Result<String, KafkaError> {
    let work = async {
        let tcp = connect_tcp(endpoint, deadline).await?;
        match &security.tls {
            Some(opts) => {
                let config = tls::client_config_async(opts).await?;
                let mut stream = tls::connect(tcp, &endpoint.host, config).await?;
                session(&mut stream, security.sasl.as_ref())
                    .await
                    .map(|d| format!("TLS, {d}"))
            }
            None => {
                let mut stream = tcp;
                session(&mut stream, security.sasl.as_ref()).await
            }
        }
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(KafkaError::Timeout {
            after_ms: deadline.as_millis(),
        }),
    }
}

/// Probes a Kafka broker (plaintext, no SASL) with ApiVersions v0 within `deadline`.
pub async fn probe(endpoint: &Endpoint, deadline: Duration) -> ProbeOutcome {
    probe_with(endpoint, &KafkaSecurity::default(), deadline).await
}

/// Probes a Kafka broker as gravity would connect (`security`) within `deadline`.
pub async fn probe_with(
    endpoint: &Endpoint,
    security: &KafkaSecurity,
    deadline: Duration,
) -> ProbeOutcome {
    run_probe(deadline, async {
        check(endpoint, security, deadline)
            .await
            .map_err(|e| (e.reason(), e.to_string()))
    })
    .await
}

/// ApiVersions, then the SASL login when configured.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    sasl: Option<&Sasl>,
) -> Result<String, KafkaError> {
    let keys = request_api_versions(stream).await?;
    let Some(sasl) = sasl else {
        return Ok(format!("ApiVersions ok, {} api keys", keys.len()));
    };
    let supports = |key: i16, version: i16| {
        keys.iter()
            .any(|k| k.api_key == key && (k.min_version..=k.max_version).contains(&version))
    };
    if !supports(SASL_HANDSHAKE_KEY, 1) || !supports(SASL_AUTHENTICATE_KEY, 0) {
        return Err(KafkaError::Protocol(
            "the broker lacks SaslHandshake v1 / SaslAuthenticate (Kafka older than 1.0)"
                .to_string(),
        ));
    }
    let mechanism = sasl.mechanism.name();
    let mut body = Vec::with_capacity(2 + mechanism.len());
    put_string(&mut body, mechanism);
    let frame = round_trip(stream, SASL_HANDSHAKE_KEY, 1, &body).await?;
    decode_handshake(&frame, mechanism)?;
    let failed = |code: i16, message: String| KafkaError::SaslFailed {
        mechanism,
        user: sanitize(&sasl.user, 64),
        code,
        message,
    };
    match sasl.mechanism {
        SaslMechanism::Plain => {
            let mut token = Vec::with_capacity(2 + sasl.user.len() + sasl.password.expose().len());
            token.push(0);
            token.extend_from_slice(sasl.user.as_bytes());
            token.push(0);
            token.extend_from_slice(sasl.password.expose().as_bytes());
            authenticate(stream, &token)
                .await
                .map_err(|e| e.into_error(failed))?;
        }
        SaslMechanism::ScramSha256 | SaslMechanism::ScramSha512 => {
            let hash = if sasl.mechanism == SaslMechanism::ScramSha256 {
                ScramHash::Sha256
            } else {
                ScramHash::Sha512
            };
            // Kafka's ScramFormatter takes the UTF-8 password as it is (no SASLprep).
            let client = ScramClient::new(
                hash,
                &sasl.user,
                sasl.password.expose().as_bytes(),
                &scram::new_nonce()?,
            );
            let server_first = authenticate(stream, client.client_first().as_bytes())
                .await
                .map_err(|e| e.into_error(failed))?;
            let (client_final, signature) =
                tokio::task::spawn_blocking(move || client.client_final(&server_first))
                    .await
                    .map_err(|e| KafkaError::Protocol(format!("SCRAM task failed: {e}")))??;
            let server_final = authenticate(stream, client_final.as_bytes())
                .await
                .map_err(|e| e.into_error(failed))?;
            scram::check_server_final(&server_final, &signature)?;
        }
    }
    Ok(format!(
        "ApiVersions ok, {} api keys, SASL {mechanism} login ok",
        keys.len()
    ))
}

/// A SaslAuthenticate failure: a broker error (turned into [`KafkaError::SaslFailed`] by
/// the caller, who knows the mechanism and user) or anything else.
enum AuthFailure {
    Rejected(i16, String),
    Other(KafkaError),
}

impl AuthFailure {
    fn into_error(self, failed: impl Fn(i16, String) -> KafkaError) -> KafkaError {
        match self {
            AuthFailure::Rejected(code, message) => failed(code, message),
            AuthFailure::Other(e) => e,
        }
    }
}

impl From<KafkaError> for AuthFailure {
    fn from(e: KafkaError) -> Self {
        AuthFailure::Other(e)
    }
}

/// One SaslAuthenticate v0 round: sends `token`, returns the server's bytes.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: &[u8],
) -> Result<Vec<u8>, AuthFailure> {
    let mut body = Vec::with_capacity(4 + token.len());
    let len = i32::try_from(token.len())
        .map_err(|_| KafkaError::Protocol("SASL token too long".to_string()))?;
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(token);
    let frame = round_trip(stream, SASL_AUTHENTICATE_KEY, 0, &body).await?;
    decode_authenticate(&frame)
}

/// Sends one request and reads the answer to it (correlation id checked, header removed).
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    api_key: i16,
    api_version: i16,
    body: &[u8],
) -> Result<Vec<u8>, KafkaError> {
    let correlation_id = NEXT_CORRELATION_ID.fetch_add(1, Ordering::Relaxed);
    stream
        .write_all(&encode(api_key, api_version, correlation_id, body))
        .await?;
    stream.flush().await?;
    let mut frame = read_frame(stream).await?;
    let got = frame
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(i32::from_be_bytes)
        .ok_or_else(|| KafkaError::Protocol("truncated response".to_string()))?;
    if got != correlation_id {
        return Err(KafkaError::Protocol(format!(
            "correlation id {got}, expected {correlation_id}"
        )));
    }
    frame.drain(..4);
    Ok(frame)
}

async fn request_api_versions<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Vec<ApiKeyRange>, KafkaError> {
    let correlation_id = NEXT_CORRELATION_ID.fetch_add(1, Ordering::Relaxed);
    stream.write_all(&encode_request(correlation_id)).await?;
    stream.flush().await?;
    let frame = read_frame(stream).await?;
    decode_response(&frame, correlation_id)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    // Only short constants and config values go through here; cut rather than overflow.
    let bytes = s
        .as_bytes()
        .get(..s.len().min(i16::MAX as usize))
        .unwrap_or_default();
    out.extend_from_slice(&(bytes.len() as i16).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A complete, size-prefixed request with header v1.
fn encode(api_key: i16, api_version: i16, correlation_id: i32, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + CLIENT_ID.len() + payload.len());
    body.extend_from_slice(&api_key.to_be_bytes());
    body.extend_from_slice(&api_version.to_be_bytes());
    body.extend_from_slice(&correlation_id.to_be_bytes());
    put_string(&mut body, CLIENT_ID);
    body.extend_from_slice(payload);
    let mut out = Vec::with_capacity(4 + body.len());
    // Bodies are a few hundred bytes at most (SASL tokens of config values).
    out.extend_from_slice(&(i32::try_from(body.len()).unwrap_or(i32::MAX)).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The complete, size-prefixed ApiVersions v0 request.
fn encode_request(correlation_id: i32) -> Vec<u8> {
    encode(API_VERSIONS_KEY, 0, correlation_id, &[])
}

/// Reads one size-prefixed frame of at most [`MAX_RESPONSE_BYTES`]. A TLS alert record
/// where the size should be means a TLS-only listener.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, KafkaError> {
    let mut size = [0u8; 4];
    reader.read_exact(&mut size).await?;
    if tls::looks_like_tls_alert(&size) {
        return Err(KafkaError::TlsRequired);
    }
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| (10..=MAX_RESPONSE_BYTES).contains(&s))
        .ok_or_else(|| KafkaError::Protocol(format!("implausible response size {size}")))?;
    let mut frame = Vec::with_capacity(size.min(4096));
    let got = reader.take(size as u64).read_to_end(&mut frame).await?;
    if got != size {
        return Err(KafkaError::Io(io::ErrorKind::UnexpectedEof));
    }
    Ok(frame)
}

/// Decodes SaslHandshakeResponse v1 (after the header): error 0 and the mechanism listed.
fn decode_handshake(body: &[u8], wanted: &'static str) -> Result<Vec<String>, KafkaError> {
    let mut r = Reader { buf: body, pos: 0 };
    let error_code = r.i16()?;
    let count = r.i32()?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| n <= MAX_MECHANISMS)
        .ok_or_else(|| KafkaError::Protocol(format!("implausible mechanisms length {count}")))?;
    let mut mechanisms = Vec::with_capacity(count);
    for _ in 0..count {
        mechanisms.push(sanitize(&String::from_utf8_lossy(r.string()?), 32));
    }
    if r.remaining() != 0 {
        return Err(KafkaError::Protocol(
            "trailing bytes after SaslHandshake response".to_string(),
        ));
    }
    if error_code == 33 || (error_code == 0 && !mechanisms.iter().any(|m| m == wanted)) {
        return Err(KafkaError::MechanismUnsupported {
            wanted,
            enabled: sanitize(&mechanisms.join(", "), 100),
        });
    }
    if error_code != 0 {
        return Err(KafkaError::Broker { code: error_code });
    }
    Ok(mechanisms)
}

/// Decodes SaslAuthenticateResponse v0 (after the header): the server's bytes, or the
/// broker's error code and message.
fn decode_authenticate(body: &[u8]) -> Result<Vec<u8>, AuthFailure> {
    let mut r = Reader { buf: body, pos: 0 };
    let error_code = r.i16()?;
    let message = r
        .nullable_string()?
        .map(|m| sanitize(&String::from_utf8_lossy(m), 160));
    let bytes = r.bytes()?.to_vec();
    if r.remaining() != 0 {
        return Err(AuthFailure::Other(KafkaError::Protocol(
            "trailing bytes after SaslAuthenticate response".to_string(),
        )));
    }
    if error_code != 0 {
        return Err(AuthFailure::Rejected(
            error_code,
            message.unwrap_or_default(),
        ));
    }
    Ok(bytes)
}

/// Decodes ResponseHeader v0 + ApiVersionsResponse v0 (without the size prefix).
///
/// Public as the entry point of the fuzz harness (`tests/fuzz.rs`): it is the code that
/// reads the first bytes a broker sent.
pub fn decode_response(frame: &[u8], correlation_id: i32) -> Result<Vec<ApiKeyRange>, KafkaError> {
    let mut r = Reader { buf: frame, pos: 0 };
    let got_id = r.i32()?;
    if got_id != correlation_id {
        return Err(KafkaError::Protocol(format!(
            "correlation id {got_id}, expected {correlation_id}"
        )));
    }
    let error_code = r.i16()?;
    if error_code != 0 {
        return Err(KafkaError::Broker { code: error_code });
    }
    let count = r.i32()?;
    let count = usize::try_from(count)
        .ok()
        .filter(|&n| (1..=MAX_API_KEYS).contains(&n))
        .ok_or_else(|| KafkaError::Protocol(format!("implausible api_keys length {count}")))?;
    if r.remaining() != count * 6 {
        return Err(KafkaError::Protocol(format!(
            "api_keys array of {count} entries does not fill the {} byte frame",
            frame.len()
        )));
    }
    let mut keys = Vec::with_capacity(count);
    for _ in 0..count {
        let key = ApiKeyRange {
            api_key: r.i16()?,
            min_version: r.i16()?,
            max_version: r.i16()?,
        };
        if key.api_key < 0 || key.min_version < 0 || key.min_version > key.max_version {
            return Err(KafkaError::Protocol(format!(
                "invalid api_keys entry {}: versions {}..{}",
                key.api_key, key.min_version, key.max_version
            )));
        }
        keys.push(key);
    }
    if !keys.iter().any(|k| k.api_key == API_VERSIONS_KEY) {
        return Err(KafkaError::Protocol(
            "api_keys does not list ApiVersions".to_string(),
        ));
    }
    Ok(keys)
}

/// Bounds-checked big-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], KafkaError> {
        let bytes = self
            .buf
            .get(self.pos..self.pos.saturating_add(N))
            .and_then(|s| <[u8; N]>::try_from(s).ok())
            .ok_or_else(|| KafkaError::Protocol("truncated response".to_string()))?;
        self.pos += N;
        Ok(bytes)
    }

    fn i16(&mut self) -> Result<i16, KafkaError> {
        Ok(i16::from_be_bytes(self.take()?))
    }

    fn i32(&mut self) -> Result<i32, KafkaError> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    fn slice(&mut self, len: usize) -> Result<&[u8], KafkaError> {
        let end = self
            .pos
            .checked_add(len)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| KafkaError::Protocol("truncated response".to_string()))?;
        let s = self.buf.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(s)
    }

    /// STRING: INT16 length (not negative) + bytes.
    fn string(&mut self) -> Result<&[u8], KafkaError> {
        self.nullable_string()?
            .ok_or_else(|| KafkaError::Protocol("null where a string is required".to_string()))
    }

    /// NULLABLE_STRING: INT16 length (-1 for null) + bytes.
    fn nullable_string(&mut self) -> Result<Option<&[u8]>, KafkaError> {
        let len = self.i16()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len)
            .map_err(|_| KafkaError::Protocol(format!("negative string length {len}")))?;
        self.slice(len).map(Some)
    }

    /// BYTES: INT32 length (not negative) + bytes.
    fn bytes(&mut self) -> Result<&[u8], KafkaError> {
        let len = self.i32()?;
        let len = usize::try_from(len)
            .map_err(|_| KafkaError::Protocol(format!("negative bytes length {len}")))?;
        self.slice(len)
    }
}

/// A fake Kafka broker for tests: answers ApiVersions (v0..=v3 requests get a v0-format
/// body, as brokers do for v0) exactly as the protocol guide describes, or misbehaves on
/// request. With [`Security`] it listens with real TLS (rustls) and/or demands a real SASL
/// login (PLAIN checked against its user and password, SCRAM verified from the stored keys
/// as Kafka's `ScramSaslServer` does), following Kafka's `SaslServerAuthenticator`: before
/// the login only ApiVersions, SaslHandshake and SaslAuthenticate are served, any other
/// request closes the connection, and a failed login is answered with
/// SASL_AUTHENTICATION_FAILED (58) and then closed. Not part of the exporter's runtime;
/// public so integration tests can use it.
#[doc(hidden)]
#[cfg(any(test, feature = "test-servers"))]
pub mod testserver {
    use std::io;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::task::{JoinHandle, JoinSet};
    use tokio_rustls::TlsAcceptor;

    use super::{ApiKeyRange, API_VERSIONS_KEY, SASL_AUTHENTICATE_KEY, SASL_HANDSHAKE_KEY};
    use crate::probe::scram::server::ScramServer;
    use crate::probe::scram::ScramHash;
    use crate::probe::Endpoint;

    /// How the fake broker answers.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mode {
        /// A correct ApiVersions v0 response.
        Ok,
        /// A well-formed response carrying this error code and no api keys.
        ErrorCode(i16),
        /// Reads the request, answers with HTTP text, closes.
        Garbage,
        /// Reads the request, never answers, keeps the connection open.
        Hang,
        /// A correct response with the wrong correlation id.
        WrongCorrelationId,
        /// Accepts and closes immediately.
        Close,
    }

    /// The SASL users of a broker with `sasl.enabled.mechanisms`.
    #[derive(Clone)]
    pub struct SaslUsers {
        /// Enabled mechanisms (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`).
        pub mechanisms: Vec<&'static str>,
        /// The one user.
        pub user: String,
        /// Its password.
        pub password: String,
        /// SCRAM iteration count of the stored credentials (Kafka's default: 4096).
        pub iterations: u32,
    }

    impl std::fmt::Debug for SaslUsers {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("SaslUsers")
                .field("mechanisms", &self.mechanisms)
                .field("user", &self.user)
                .finish_non_exhaustive()
        }
    }

    /// TLS and SASL of the fake broker's listener (`SASL_SSL`, `SSL`, `SASL_PLAINTEXT`).
    #[derive(Clone, Default)]
    pub struct Security {
        /// Listen with TLS.
        pub tls: Option<TlsAcceptor>,
        /// Demand a SASL login.
        pub sasl: Option<SaslUsers>,
    }

    impl std::fmt::Debug for Security {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Security")
                .field("tls", &self.tls.is_some())
                .field("sasl", &self.sasl)
                .finish()
        }
    }

    /// A request header as the broker decoded it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ReceivedRequest {
        /// `request_api_key`.
        pub api_key: i16,
        /// `request_api_version`.
        pub api_version: i16,
        /// `correlation_id`.
        pub correlation_id: i32,
        /// `client_id` (`None` for a null string).
        pub client_id: Option<String>,
    }

    /// The api keys the fake advertises (a Kafka 2.8 subset).
    pub const ADVERTISED: [ApiKeyRange; 8] = [
        ApiKeyRange {
            api_key: 0,
            min_version: 0,
            max_version: 9,
        },
        ApiKeyRange {
            api_key: 1,
            min_version: 0,
            max_version: 12,
        },
        ApiKeyRange {
            api_key: 2,
            min_version: 0,
            max_version: 6,
        },
        ApiKeyRange {
            api_key: 3,
            min_version: 0,
            max_version: 11,
        },
        ApiKeyRange {
            api_key: 17,
            min_version: 0,
            max_version: 1,
        },
        ApiKeyRange {
            api_key: 18,
            min_version: 0,
            max_version: 3,
        },
        ApiKeyRange {
            api_key: 19,
            min_version: 0,
            max_version: 7,
        },
        ApiKeyRange {
            api_key: 36,
            min_version: 0,
            max_version: 2,
        },
    ];

    const MAX_REQUEST_BYTES: usize = 64 * 1024;
    const MAX_RECORDED: usize = 1000;

    /// A running fake broker on 127.0.0.1; stops (closing all connections) when dropped.
    #[derive(Debug)]
    pub struct FakeBroker {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<ReceivedRequest>>>,
        logins: Arc<Mutex<Vec<String>>>,
        task: JoinHandle<()>,
    }

    impl FakeBroker {
        /// Binds 127.0.0.1:0 and starts serving in `mode` (plaintext, no SASL).
        pub async fn start(mode: Mode) -> io::Result<FakeBroker> {
            Self::start_secure(mode, Security::default()).await
        }

        /// Binds 127.0.0.1:0 and starts serving in `mode` behind `security`.
        pub async fn start_secure(mode: Mode, security: Security) -> io::Result<FakeBroker> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let requests = Arc::new(Mutex::new(Vec::new()));
            let logins = Arc::new(Mutex::new(Vec::new()));
            let recorded = Arc::clone(&requests);
            let logged = Arc::clone(&logins);
            let task = tokio::spawn(async move {
                // Dropping the JoinSet (when this task is aborted) aborts every connection.
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    let security = security.clone();
                    let recorded = Arc::clone(&recorded);
                    let logged = Arc::clone(&logged);
                    connections.spawn(async move {
                        let _ = stream.set_nodelay(true);
                        match &security.tls {
                            Some(acceptor) => {
                                // A failed handshake gets rustls's alert, then the close.
                                if let Ok(tls) = acceptor.accept(stream).await {
                                    serve(tls, mode, security.sasl, recorded, logged).await;
                                }
                            }
                            None => serve(stream, mode, security.sasl, recorded, logged).await,
                        }
                    });
                    while connections.try_join_next().is_some() {}
                }
            });
            Ok(FakeBroker {
                addr,
                requests,
                logins,
                task,
            })
        }

        /// The listening address.
        pub fn addr(&self) -> SocketAddr {
            self.addr
        }

        /// The listening address as an [`Endpoint`].
        pub fn endpoint(&self) -> Endpoint {
            Endpoint::new(self.addr.ip().to_string(), self.addr.port())
        }

        /// Request headers received so far.
        pub fn requests(&self) -> Vec<ReceivedRequest> {
            self.requests.lock().map(|r| r.clone()).unwrap_or_default()
        }

        /// Successful SASL logins so far, as `MECHANISM:user`.
        pub fn logins(&self) -> Vec<String> {
            self.logins.lock().map(|r| r.clone()).unwrap_or_default()
        }
    }

    impl Drop for FakeBroker {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// Where a connection's SASL login stands.
    enum Auth {
        /// No SASL on this listener, or logged in.
        Done,
        /// Waiting for SaslHandshake.
        Handshake,
        /// Mechanism chosen, waiting for the first SaslAuthenticate.
        Mechanism(&'static str),
        /// SCRAM: the server-first message was sent.
        ScramFinal(Box<ScramServer>, &'static str),
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        mut stream: S,
        mode: Mode,
        sasl: Option<SaslUsers>,
        recorded: Arc<Mutex<Vec<ReceivedRequest>>>,
        logins: Arc<Mutex<Vec<String>>>,
    ) {
        if mode == Mode::Close {
            return;
        }
        let mut auth = if sasl.is_some() {
            Auth::Handshake
        } else {
            Auth::Done
        };
        // A broker serves any number of requests on one connection.
        while let Some((request, body)) = read_request(&mut stream).await {
            if let Ok(mut r) = recorded.lock() {
                if r.len() < MAX_RECORDED {
                    r.push(request.clone());
                }
            }
            let id = request.correlation_id;
            let response = match mode {
                Mode::Garbage => {
                    let _ = stream
                        .write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                Mode::Hang => {
                    std::future::pending::<()>().await;
                    return;
                }
                Mode::Close => return,
                _ if request.api_key == API_VERSIONS_KEY => match mode {
                    Mode::ErrorCode(code) => response(id, code, &[]),
                    Mode::WrongCorrelationId => response(id.wrapping_add(1), 0, &ADVERTISED),
                    // KIP-511: an unsupported version gets UNSUPPORTED_VERSION in the v0
                    // format, listing the supported ApiVersions range.
                    _ if !(0..=3).contains(&request.api_version) => {
                        response(id, 35, &ADVERTISED[5..6])
                    }
                    _ => response(id, 0, &ADVERTISED),
                },
                _ => {
                    let Some(users) = &sasl else {
                        // A real broker closes the connection on an API it does not serve.
                        return;
                    };
                    let (answer, next, close) = sasl_step(&request, &body, auth, users, &logins);
                    auth = next;
                    let Some(answer) = answer else { return };
                    if stream.write_all(&answer).await.is_err() || close {
                        return;
                    }
                    continue;
                }
            };
            if stream.write_all(&response).await.is_err() {
                return;
            }
        }
    }

    /// One SASL request: the answer (`None`: close at once), the next state, and whether to
    /// close after answering.
    fn sasl_step(
        request: &ReceivedRequest,
        body: &[u8],
        auth: Auth,
        users: &SaslUsers,
        logins: &Mutex<Vec<String>>,
    ) -> (Option<Vec<u8>>, Auth, bool) {
        let id = request.correlation_id;
        let fail = |message: &str| {
            (
                Some(authenticate_response(id, 58, Some(message), &[])),
                Auth::Done,
                true,
            )
        };
        match (request.api_key, auth) {
            (SASL_HANDSHAKE_KEY, Auth::Handshake) if (0..=1).contains(&request.api_version) => {
                let wanted = kafka_string(body).unwrap_or_default();
                match users.mechanisms.iter().find(|m| **m == wanted) {
                    Some(m) => (
                        Some(handshake_response(id, 0, &users.mechanisms)),
                        Auth::Mechanism(m),
                        false,
                    ),
                    None => (
                        Some(handshake_response(id, 33, &users.mechanisms)),
                        Auth::Handshake,
                        true,
                    ),
                }
            }
            (SASL_AUTHENTICATE_KEY, Auth::Mechanism(mechanism)) => {
                let Some(token) = kafka_bytes(body) else {
                    return (None, Auth::Done, true);
                };
                if mechanism == "PLAIN" {
                    // authzid NUL authcid NUL passwd (RFC 4616)
                    let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
                    return match parts.as_slice() {
                        [_, user, pw]
                            if *user == users.user.as_bytes()
                                && *pw == users.password.as_bytes() =>
                        {
                            record(logins, mechanism, &users.user);
                            (
                                Some(authenticate_response(id, 0, None, &[])),
                                Auth::Done,
                                false,
                            )
                        }
                        _ => fail("Authentication failed: Invalid username or password"),
                    };
                }
                let hash = if mechanism == "SCRAM-SHA-512" {
                    ScramHash::Sha512
                } else {
                    ScramHash::Sha256
                };
                let invalid = format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}");
                match ScramServer::start(
                    hash,
                    users.password.as_bytes(),
                    b"fake-broker-salt",
                    users.iterations,
                    token,
                ) {
                    Ok((server, first)) if server.user() == users.user => (
                        Some(authenticate_response(id, 0, None, first.as_bytes())),
                        Auth::ScramFinal(Box::new(server), mechanism),
                        false,
                    ),
                    _ => fail(&invalid),
                }
            }
            (SASL_AUTHENTICATE_KEY, Auth::ScramFinal(server, mechanism)) => {
                let invalid = format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}");
                match kafka_bytes(body).map(|t| server.finish(t)) {
                    Some(Ok(last)) => {
                        record(logins, mechanism, server.user());
                        (
                            Some(authenticate_response(id, 0, None, last.as_bytes())),
                            Auth::Done,
                            false,
                        )
                    }
                    _ => fail(&invalid),
                }
            }
            // Anything else before the login ends (Kafka: "Unexpected Kafka request of
            // type ... during SASL handshake") closes the connection.
            (_, Auth::Done) if request.api_key != SASL_HANDSHAKE_KEY => (None, Auth::Done, true),
            _ => (None, Auth::Done, true),
        }
    }

    fn record(logins: &Mutex<Vec<String>>, mechanism: &str, user: &str) {
        if let Ok(mut l) = logins.lock() {
            if l.len() < MAX_RECORDED {
                l.push(format!("{mechanism}:{user}"));
            }
        }
    }

    fn kafka_string(body: &[u8]) -> Option<String> {
        let len = usize::try_from(i16::from_be_bytes([*body.first()?, *body.get(1)?])).ok()?;
        Some(String::from_utf8_lossy(body.get(2..2 + len)?).into_owned())
    }

    fn kafka_bytes(body: &[u8]) -> Option<&[u8]> {
        let len = usize::try_from(i32::from_be_bytes([
            *body.first()?,
            *body.get(1)?,
            *body.get(2)?,
            *body.get(3)?,
        ]))
        .ok()?;
        body.get(4..4 + len)
    }

    async fn read_request<S: AsyncRead + Unpin>(
        stream: &mut S,
    ) -> Option<(ReceivedRequest, Vec<u8>)> {
        let size = usize::try_from(stream.read_i32().await.ok()?).ok()?;
        if !(10..=MAX_REQUEST_BYTES).contains(&size) {
            return None;
        }
        let mut body = vec![0u8; size];
        stream.read_exact(&mut body).await.ok()?;
        let api_key = i16::from_be_bytes([*body.first()?, *body.get(1)?]);
        let api_version = i16::from_be_bytes([*body.get(2)?, *body.get(3)?]);
        let correlation_id =
            i32::from_be_bytes([*body.get(4)?, *body.get(5)?, *body.get(6)?, *body.get(7)?]);
        let id_len = i16::from_be_bytes([*body.get(8)?, *body.get(9)?]);
        let (client_id, rest) = match usize::try_from(id_len) {
            Ok(n) => (
                Some(String::from_utf8_lossy(body.get(10..10 + n)?).into_owned()),
                10 + n,
            ),
            Err(_) if id_len == -1 => (None, 10),
            Err(_) => return None,
        };
        let payload = body.get(rest..)?.to_vec();
        Some((
            ReceivedRequest {
                api_key,
                api_version,
                correlation_id,
                client_id,
            },
            payload,
        ))
    }

    fn frame(body: Vec<u8>) -> Vec<u8> {
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// Size + ResponseHeader v0 + ApiVersionsResponse v0.
    fn response(correlation_id: i32, error_code: i16, keys: &[ApiKeyRange]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&correlation_id.to_be_bytes());
        body.extend_from_slice(&error_code.to_be_bytes());
        // At most ADVERTISED.len() entries.
        body.extend_from_slice(&(keys.len() as i32).to_be_bytes());
        for k in keys {
            body.extend_from_slice(&k.api_key.to_be_bytes());
            body.extend_from_slice(&k.min_version.to_be_bytes());
            body.extend_from_slice(&k.max_version.to_be_bytes());
        }
        frame(body)
    }

    /// Size + ResponseHeader v0 + SaslHandshakeResponse v1.
    fn handshake_response(correlation_id: i32, error_code: i16, mechanisms: &[&str]) -> Vec<u8> {
        let mut body = correlation_id.to_be_bytes().to_vec();
        body.extend_from_slice(&error_code.to_be_bytes());
        body.extend_from_slice(&(mechanisms.len() as i32).to_be_bytes());
        for m in mechanisms {
            body.extend_from_slice(&(m.len() as i16).to_be_bytes());
            body.extend_from_slice(m.as_bytes());
        }
        frame(body)
    }

    /// Size + ResponseHeader v0 + SaslAuthenticateResponse v0.
    fn authenticate_response(
        correlation_id: i32,
        error_code: i16,
        message: Option<&str>,
        bytes: &[u8],
    ) -> Vec<u8> {
        let mut body = correlation_id.to_be_bytes().to_vec();
        body.extend_from_slice(&error_code.to_be_bytes());
        match message {
            Some(m) => {
                body.extend_from_slice(&(m.len() as i16).to_be_bytes());
                body.extend_from_slice(m.as_bytes());
            }
            None => body.extend_from_slice(&(-1i16).to_be_bytes()),
        }
        body.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        body.extend_from_slice(bytes);
        frame(body)
    }
}

#[cfg(test)]
mod tests {
    use super::testserver::{self, FakeBroker, Mode, ADVERTISED};
    use super::*;
    use std::time::Instant;

    const D: Duration = Duration::from_secs(3);

    #[test]
    fn request_bytes_match_the_spec() {
        let req = encode_request(0x0102_0304);
        let mut want = vec![0, 0, 0, 26, 0, 18, 0, 0, 1, 2, 3, 4, 0, 16];
        want.extend_from_slice(b"gravity-exporter");
        assert_eq!(req, want);
    }

    fn valid_frame(correlation_id: i32) -> Vec<u8> {
        let mut f = correlation_id.to_be_bytes().to_vec();
        f.extend_from_slice(&[0, 0, 0, 0, 0, 2]); // error 0, 2 entries
        f.extend_from_slice(&[0, 0, 0, 0, 0, 9]); // Produce 0..9
        f.extend_from_slice(&[0, 18, 0, 0, 0, 3]); // ApiVersions 0..3
        f
    }

    #[test]
    fn response_decoding() {
        let keys = decode_response(&valid_frame(7), 7).unwrap();
        assert_eq!(
            keys,
            [
                ApiKeyRange {
                    api_key: 0,
                    min_version: 0,
                    max_version: 9
                },
                ApiKeyRange {
                    api_key: 18,
                    min_version: 0,
                    max_version: 3
                },
            ]
        );
        assert!(matches!(
            decode_response(&valid_frame(7), 8),
            Err(KafkaError::Protocol(_))
        ));
        let f = valid_frame(7);
        for n in 0..f.len() {
            assert!(decode_response(&f[..n], 7).is_err(), "prefix {n}");
        }
        let mut extra = f.clone();
        extra.push(0);
        assert!(decode_response(&extra, 7).is_err(), "trailing byte");
        let mut huge = f.clone();
        huge[6..10].copy_from_slice(&i32::MAX.to_be_bytes());
        assert!(decode_response(&huge, 7).is_err());
        let mut negative = f.clone();
        negative[6..10].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(decode_response(&negative, 7).is_err());
        let mut inverted = f.clone();
        inverted[13] = 10; // Produce min 10 > max 9
        assert!(decode_response(&inverted, 7).is_err());
        let mut no_self = f.clone();
        no_self[17] = 19; // ApiVersions entry becomes key 19
        assert!(decode_response(&no_self, 7).is_err());
        let mut err = f;
        err[5] = 35;
        let e = decode_response(&err, 7).unwrap_err();
        assert!(matches!(e, KafkaError::Broker { code: 35 }));
        assert!(e.to_string().contains("UNSUPPORTED_VERSION"), "{e}");
    }

    #[tokio::test]
    async fn frame_size_is_bounded() {
        let mut huge = &[0x7F, 0xFF, 0xFF, 0xFF, 0, 0][..];
        assert!(matches!(
            read_frame(&mut huge).await,
            Err(KafkaError::Protocol(_))
        ));
        let mut http = &b"HTTP/1.1 400 Bad Request"[..];
        assert!(matches!(
            read_frame(&mut http).await,
            Err(KafkaError::Protocol(_))
        ));
        let mut short = &[0, 0, 0, 20, 1, 2][..];
        let e = read_frame(&mut short).await.unwrap_err();
        assert_eq!(e.reason(), FailureReason::Protocol);
    }

    #[tokio::test]
    async fn probe_ok_against_fake_broker() {
        let broker = FakeBroker::start(Mode::Ok).await.unwrap();
        let out = probe(&broker.endpoint(), D).await;
        assert!(out.ok, "{out:?}");
        assert!(out.latency > Duration::ZERO);
        assert_eq!(
            out.detail,
            format!("ApiVersions ok, {} api keys", ADVERTISED.len())
        );
        let keys = api_versions(&broker.endpoint(), D).await.unwrap();
        assert_eq!(keys, ADVERTISED);
        let seen = broker.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(seen[0].api_key, 18);
        assert_eq!(seen[0].api_version, 0);
        assert_eq!(seen[0].client_id.as_deref(), Some("gravity-exporter"));
        assert_ne!(seen[0].correlation_id, seen[1].correlation_id);
    }

    #[tokio::test]
    async fn probe_error_codes() {
        let broker = FakeBroker::start(Mode::ErrorCode(35)).await.unwrap();
        let out = probe(&broker.endpoint(), D).await;
        assert_eq!(out.reason, Some(FailureReason::Protocol), "{out:?}");
        assert!(out.detail.contains("35"), "{}", out.detail);
        let broker = FakeBroker::start(Mode::ErrorCode(58)).await.unwrap();
        let out = probe(&broker.endpoint(), D).await;
        assert_eq!(out.reason, Some(FailureReason::Auth), "{out:?}");
    }

    #[tokio::test]
    async fn probe_garbage_wrong_id_and_close_are_protocol() {
        for mode in [Mode::Garbage, Mode::WrongCorrelationId, Mode::Close] {
            let broker = FakeBroker::start(mode).await.unwrap();
            let out = probe(&broker.endpoint(), D).await;
            assert_eq!(
                out.reason,
                Some(FailureReason::Protocol),
                "{mode:?}: {out:?}"
            );
        }
    }

    #[tokio::test]
    async fn probe_hang_times_out_within_deadline() {
        let broker = FakeBroker::start(Mode::Hang).await.unwrap();
        let deadline = Duration::from_millis(300);
        let start = Instant::now();
        let out = probe(&broker.endpoint(), deadline).await;
        let took = start.elapsed();
        assert_eq!(out.reason, Some(FailureReason::Timeout), "{out:?}");
        assert!(
            took >= deadline && took < deadline + Duration::from_millis(100),
            "{took:?}"
        );
        // The broker did get the request: the hang is in the answer, not the connect.
        assert_eq!(broker.requests().len(), 1);
    }

    #[tokio::test]
    async fn probe_closed_port_is_refused() {
        let broker = FakeBroker::start(Mode::Ok).await.unwrap();
        let endpoint = broker.endpoint();
        drop(broker);
        tokio::task::yield_now().await;
        let out = probe(&endpoint, D).await;
        assert_eq!(out.reason, Some(FailureReason::Refused), "{out:?}");
    }

    fn sasl(mechanism: SaslMechanism, user: &str, pw: &str) -> Sasl {
        Sasl {
            mechanism,
            user: user.into(),
            password: Secret::new(pw),
        }
    }

    fn users(mechanisms: Vec<&'static str>) -> testserver::SaslUsers {
        testserver::SaslUsers {
            mechanisms,
            user: "gravity".into(),
            password: "sasl-pw-Xy9".into(),
            iterations: 4096,
        }
    }

    #[tokio::test]
    async fn sasl_plain_and_scram_logins_are_verified() {
        use testserver::Security;
        let broker = FakeBroker::start_secure(
            Mode::Ok,
            Security {
                tls: None,
                sasl: Some(users(vec!["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])),
            },
        )
        .await
        .unwrap();
        for m in [
            SaslMechanism::Plain,
            SaslMechanism::ScramSha256,
            SaslMechanism::ScramSha512,
        ] {
            let ok = KafkaSecurity {
                tls: None,
                sasl: Some(sasl(m, "gravity", "sasl-pw-Xy9")),
            };
            let out = probe_with(&broker.endpoint(), &ok, D).await;
            assert!(out.ok, "{m:?}: {out:?}");
            assert!(out.detail.contains(m.name()), "{}", out.detail);
            for (user, pw) in [("gravity", "wrong-pw-Q7"), ("nobody", "sasl-pw-Xy9")] {
                let bad = KafkaSecurity {
                    tls: None,
                    sasl: Some(sasl(m, user, pw)),
                };
                let out = probe_with(&broker.endpoint(), &bad, D).await;
                assert_eq!(
                    out.reason,
                    Some(FailureReason::Auth),
                    "{m:?} {user}: {out:?}"
                );
                assert!(out.detail.contains("58"), "{}", out.detail);
                assert!(!out.detail.contains(pw), "{}", out.detail);
            }
        }
        assert_eq!(
            broker.logins(),
            [
                "PLAIN:gravity",
                "SCRAM-SHA-256:gravity",
                "SCRAM-SHA-512:gravity"
            ]
        );
        // Without SASL the broker closes the connection on anything but the login APIs;
        // ApiVersions alone still answers.
        let out = probe(&broker.endpoint(), D).await;
        assert!(out.ok, "{out:?}");
    }

    #[tokio::test]
    async fn sasl_mechanism_not_enabled_is_auth_plugin_unsupported() {
        let broker = FakeBroker::start_secure(
            Mode::Ok,
            testserver::Security {
                tls: None,
                sasl: Some(users(vec!["SCRAM-SHA-512"])),
            },
        )
        .await
        .unwrap();
        let sec = KafkaSecurity {
            tls: None,
            sasl: Some(sasl(SaslMechanism::Plain, "gravity", "sasl-pw-Xy9")),
        };
        let out = probe_with(&broker.endpoint(), &sec, D).await;
        assert_eq!(
            out.reason,
            Some(FailureReason::AuthPluginUnsupported),
            "{out:?}"
        );
        assert!(out.detail.contains("SCRAM-SHA-512"), "{}", out.detail);
        // A broker without SASL on that listener: the handshake closes the connection.
        let plain = FakeBroker::start(Mode::Ok).await.unwrap();
        let out = probe_with(&plain.endpoint(), &sec, D).await;
        assert_eq!(out.reason, Some(FailureReason::Protocol), "{out:?}");
    }

    #[tokio::test]
    async fn tls_listener_success_and_each_failure_reason() {
        use crate::probe::tls::testpki::Pki;
        let pki = Pki::new();
        let sasl_ssl = FakeBroker::start_secure(
            Mode::Ok,
            testserver::Security {
                tls: Some(pki.acceptor(false)),
                sasl: Some(users(vec!["SCRAM-SHA-256"])),
            },
        )
        .await
        .unwrap();
        let scram = Some(sasl(SaslMechanism::ScramSha256, "gravity", "sasl-pw-Xy9"));
        let good = KafkaSecurity {
            tls: Some(pki.options()),
            sasl: scram.clone(),
        };
        let out = probe_with(&sasl_ssl.endpoint(), &good, D).await;
        assert!(out.ok, "{out:?}");
        assert!(out.detail.starts_with("TLS, "), "{}", out.detail);
        // Untrusted certificate.
        let mut other = good.clone();
        other.tls = Some(TlsOptions {
            ca_file: Some(pki.other_ca_file.clone()),
            ..Default::default()
        });
        let out = probe_with(&sasl_ssl.endpoint(), &other, D).await;
        assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
        assert!(out.detail.contains("certificate"), "{}", out.detail);
        // gravity's verify-ssl = true (verification off) accepts it.
        other.tls.as_mut().unwrap().insecure_skip_verify = true;
        assert!(probe_with(&sasl_ssl.endpoint(), &other, D).await.ok);
        // Plaintext client on the TLS listener: the broker's alert says TLS is required.
        let plain = KafkaSecurity {
            tls: None,
            sasl: scram.clone(),
        };
        let out = probe_with(&sasl_ssl.endpoint(), &plain, D).await;
        assert_eq!(out.reason, Some(FailureReason::TlsRequired), "{out:?}");
        // TLS client on a plaintext listener.
        let plaintext = FakeBroker::start(Mode::Ok).await.unwrap();
        let out = probe_with(&plaintext.endpoint(), &good, D).await;
        assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
        // A CA file that does not exist is a TLS setup failure, named in the detail.
        let mut missing = good.clone();
        missing.tls.as_mut().unwrap().ca_file = Some(pki.dir.path().join("nope.pem"));
        let out = probe_with(&sasl_ssl.endpoint(), &missing, D).await;
        assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
        assert!(out.detail.contains("nope.pem"), "{}", out.detail);
    }

    #[tokio::test]
    async fn mutual_tls_needs_the_client_certificate() {
        use crate::probe::tls::testpki::Pki;
        let pki = Pki::new();
        let broker = FakeBroker::start_secure(
            Mode::Ok,
            testserver::Security {
                tls: Some(pki.acceptor(true)),
                sasl: None,
            },
        )
        .await
        .unwrap();
        let mut sec = KafkaSecurity {
            tls: Some(pki.options()),
            sasl: None,
        };
        let out = probe_with(&broker.endpoint(), &sec, D).await;
        assert!(!out.ok, "{out:?}");
        assert!(
            matches!(
                out.reason,
                Some(FailureReason::Tls | FailureReason::Protocol)
            ),
            "{out:?}"
        );
        let tls = sec.tls.as_mut().unwrap();
        tls.cert_file = Some(pki.client_cert_file.clone());
        tls.key_file = Some(pki.client_key_file.clone());
        let out = probe_with(&broker.endpoint(), &sec, D).await;
        assert!(out.ok, "{out:?}");
    }

    #[test]
    fn sasl_answers_are_decoded_strictly() {
        let mut hs = vec![0, 0, 0, 0, 0, 2];
        for m in ["PLAIN", "SCRAM-SHA-256"] {
            hs.extend_from_slice(&(m.len() as i16).to_be_bytes());
            hs.extend_from_slice(m.as_bytes());
        }
        assert_eq!(decode_handshake(&hs, "PLAIN").unwrap().len(), 2);
        assert!(matches!(
            decode_handshake(&hs, "SCRAM-SHA-512"),
            Err(KafkaError::MechanismUnsupported { .. })
        ));
        for n in 0..hs.len() {
            assert!(decode_handshake(&hs[..n], "PLAIN").is_err(), "prefix {n}");
        }
        let mut long = hs.clone();
        long.push(0);
        assert!(decode_handshake(&long, "PLAIN").is_err());
        let mut auth = vec![0, 58, 0, 3, b'b', b'a', b'd', 0, 0, 0, 0];
        assert!(matches!(
            decode_authenticate(&auth),
            Err(AuthFailure::Rejected(58, ref m)) if m == "bad"
        ));
        auth[1] = 0;
        assert_eq!(decode_authenticate(&auth).ok(), Some(vec![]));
        for n in 0..auth.len() {
            assert!(decode_authenticate(&auth[..n]).is_err(), "prefix {n}");
        }
        let negative = [0, 0, 0xff, 0xff, 0x80, 0, 0, 0];
        assert!(decode_authenticate(&negative).is_err());
    }

    #[test]
    fn errors_never_show_secrets() {
        // Error messages hold codes, the user and the broker's words, never the password.
        let e = KafkaError::Broker { code: 58 };
        assert_eq!(
            e.to_string(),
            "broker returned error code 58 (SASL_AUTHENTICATION_FAILED)"
        );
        assert_eq!(e.reason(), FailureReason::Auth);
    }
}
