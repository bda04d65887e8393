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
//! fill the frame exactly. These few fixed handshake messages stay encoded here (checked
//! byte for byte, fuzzed through [`decode_response`]); the canary's reads of a topic
//! (Metadata, ListOffsets, Fetch, record batches) use the `kafka-protocol` crate over a
//! [`Connection`] that went through this handshake ([`super::kafka_topic`]).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::scram::{self, ScramClient, ScramError, ScramHash};
use super::{
    connect_tcp, io_reason, run_probe, sanitize, ConnectError, Endpoint, FailureReason,
    ProbeOutcome, Secret,
};
use crate::tls::{self, TlsError, TlsOptions};

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

pub use crate::gravity_config::SaslMechanism;

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
            KafkaError::Tls(_) => FailureReason::Tls,
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
#[cfg(test)]
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

/// A byte stream to a broker: TCP, or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection to a broker that went through gravity's handshake: TLS and the SASL login
/// as gravity's config says, and `ApiVersions`. Further requests go through [`Self::call`]
/// (the canary's topic reader, `collector::canary`).
pub struct Connection {
    stream: Box<dyn Io>,
    api_keys: Vec<ApiKeyRange>,
    detail: String,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("detail", &self.detail)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// What the handshake found (`TLS, ApiVersions ok, N api keys, SASL ... login ok`).
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The broker's supported API ranges.
    pub fn api_keys(&self) -> &[ApiKeyRange] {
        &self.api_keys
    }

    /// The highest version of `api_key` in `ours` that the broker supports.
    pub fn version(&self, api_key: i16, ours: std::ops::RangeInclusive<i16>) -> Option<i16> {
        let k = self.api_keys.iter().find(|k| k.api_key == api_key)?;
        let hi = (*ours.end()).min(k.max_version);
        let lo = (*ours.start()).max(k.min_version);
        (lo <= hi).then_some(hi)
    }

    /// Sends one request (request header v1: only non-flexible versions) and returns the
    /// response body after the header v0, at most `max_frame` bytes; no deadline of its
    /// own (the caller's).
    pub async fn call(
        &mut self,
        api_key: i16,
        api_version: i16,
        body: &[u8],
        max_frame: usize,
    ) -> Result<Vec<u8>, KafkaError> {
        round_trip_max(&mut self.stream, api_key, api_version, body, max_frame).await
    }
}

/// Connects like gravity (TLS, SASL per `security`), runs ApiVersions and the SASL login,
/// all within `deadline`, and keeps the connection.
pub async fn connect(
    endpoint: &Endpoint,
    security: &KafkaSecurity,
    deadline: Duration,
) -> Result<Connection, KafkaError> {
    let work = async {
        let tcp = connect_tcp(endpoint, deadline).await?;
        let (mut stream, tls): (Box<dyn Io>, bool) = match &security.tls {
            Some(opts) => {
                let config = tls::client_config_async(opts).await?;
                (
                    Box::new(tls::connect(tcp, &endpoint.host, config).await?),
                    true,
                )
            }
            None => (Box::new(tcp), false),
        };
        let (api_keys, detail) = session(&mut stream, security.sasl.as_ref()).await?;
        Ok(Connection {
            stream,
            api_keys,
            detail: if tls {
                format!("TLS, {detail}")
            } else {
                detail
            },
        })
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
    connect(endpoint, security, deadline)
        .await
        .map(|c| c.detail)
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
) -> Result<(Vec<ApiKeyRange>, String), KafkaError> {
    let keys = request_api_versions(stream).await?;
    let Some(sasl) = sasl else {
        let detail = format!("ApiVersions ok, {} api keys", keys.len());
        return Ok((keys, detail));
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
    let detail = format!(
        "ApiVersions ok, {} api keys, SASL {mechanism} login ok",
        keys.len()
    );
    Ok((keys, detail))
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
    round_trip_max(stream, api_key, api_version, body, MAX_RESPONSE_BYTES).await
}

/// [`round_trip`] with a frame of at most `max_frame` bytes.
async fn round_trip_max<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    api_key: i16,
    api_version: i16,
    body: &[u8],
    max_frame: usize,
) -> Result<Vec<u8>, KafkaError> {
    let correlation_id = NEXT_CORRELATION_ID.fetch_add(1, Ordering::Relaxed);
    stream
        .write_all(&encode(api_key, api_version, correlation_id, body))
        .await?;
    stream.flush().await?;
    let mut frame = read_frame_bounded(stream, 4, max_frame).await?;
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
    read_frame_bounded(reader, 10, MAX_RESPONSE_BYTES).await
}

/// Reads one size-prefixed frame of `min..=max` bytes.
async fn read_frame_bounded<R: AsyncRead + Unpin>(
    reader: &mut R,
    min: usize,
    max: usize,
) -> Result<Vec<u8>, KafkaError> {
    let mut size = [0u8; 4];
    reader.read_exact(&mut size).await?;
    if tls::looks_like_tls_alert(&size) {
        return Err(KafkaError::TlsRequired);
    }
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| (min..=max).contains(&s))
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

#[cfg(test)]
mod tests {
    use super::*;

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
