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
//! The messages are the `kafka-protocol` crate's (generated from Kafka's own message
//! definitions): `RequestHeader` v1, `ApiVersionsRequest`/`Response` v0,
//! `SaslHandshakeRequest`/`Response` v1 and `SaslAuthenticateRequest`/`Response` v0, all
//! non-flexible versions whose responses carry `ResponseHeader` v0. This module keeps the
//! framing (a big-endian INT32 size, then header and body; see "Common Request and
//! Response Structure" in <https://kafka.apache.org/protocol.html>) with a byte cap on the
//! answer's size, the deadline, and the strictness of the checks: matching correlation id,
//! an array count checked before the decoder sizes a vector from it ([`MAX_API_KEYS`],
//! [`MAX_MECHANISMS`]), and a message that fills its frame exactly. The canary's reads of a
//! topic (Metadata, ListOffsets, Fetch, record batches) go over a [`Connection`] that went
//! through this handshake ([`super::kafka_topic`]).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
    SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::scram::{self, ScramClient, ScramHash};
use super::{connect_tcp, run_probe, sanitize, Endpoint, ProbeOutcome, Secret, WireError};
use crate::tls::{self, TlsOptions};

/// API key of `ApiVersions` (18).
pub const API_VERSIONS_KEY: i16 = ApiKey::ApiVersions as i16;
/// API key of `SaslHandshake` (17).
pub const SASL_HANDSHAKE_KEY: i16 = ApiKey::SaslHandshake as i16;
/// API key of `SaslAuthenticate` (36).
pub const SASL_AUTHENTICATE_KEY: i16 = ApiKey::SaslAuthenticate as i16;
/// Version of `ApiVersions` sent (every broker since 0.10 answers v0; KIP-896 keeps it).
const API_VERSIONS_VERSION: i16 = 0;
/// Version of `SaslHandshake` sent (v1: the mechanism's messages go in SaslAuthenticate).
const SASL_HANDSHAKE_VERSION: i16 = 1;
/// Version of `SaslAuthenticate` sent (KIP-152, Kafka 1.0).
const SASL_AUTHENTICATE_VERSION: i16 = 0;
/// Request header version: v1 (client id, no tagged fields) for non-flexible requests.
const REQUEST_HEADER_VERSION: i16 = 1;
/// Response header version of non-flexible responses (and of every ApiVersions answer).
const RESPONSE_HEADER_VERSION: i16 = 0;
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

/// What the probe says when a plaintext request is answered with a TLS alert.
const TLS_REQUIRED: &str =
    "the listener speaks TLS, gravity's config has no TLS for Kafka (cert-file, key-file, ca-file)";

/// Sends ApiVersions v0 to `endpoint` (plaintext, no SASL) and returns the broker's
/// supported API ranges, all within `deadline`.
#[cfg(test)]
pub async fn api_versions(
    endpoint: &Endpoint,
    deadline: Duration,
) -> Result<Vec<ApiKeyRange>, WireError> {
    let work = async {
        let mut stream = connect_tcp(endpoint, deadline).await?;
        request_api_versions(&mut stream).await
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(WireError::Timeout {
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

    /// Sends one request (an encoded body, behind request header v1: only non-flexible
    /// versions) and returns the response body after the header v0, from a frame of at
    /// most `max_frame` bytes; no deadline of its own (the caller's).
    pub async fn call(
        &mut self,
        api_key: i16,
        api_version: i16,
        body: &[u8],
        max_frame: usize,
    ) -> Result<Bytes, WireError> {
        let correlation_id = send(&mut self.stream, api_key, api_version, body).await?;
        let frame = read_frame_bounded(&mut self.stream, 4, max_frame).await?;
        body_of(frame, correlation_id)
    }
}

/// Connects like gravity (TLS, SASL per `security`), runs ApiVersions and the SASL login,
/// all within `deadline`, and keeps the connection.
pub async fn connect(
    endpoint: &Endpoint,
    security: &KafkaSecurity,
    deadline: Duration,
) -> Result<Connection, WireError> {
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
        Err(_) => Err(WireError::Timeout {
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
) -> Result<String, WireError> {
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
) -> Result<(Vec<ApiKeyRange>, String), WireError> {
    let keys = request_api_versions(stream).await?;
    let Some(sasl) = sasl else {
        let detail = format!("ApiVersions ok, {} api keys", keys.len());
        return Ok((keys, detail));
    };
    let supports = |key: i16, version: i16| {
        keys.iter()
            .any(|k| k.api_key == key && (k.min_version..=k.max_version).contains(&version))
    };
    if !supports(SASL_HANDSHAKE_KEY, SASL_HANDSHAKE_VERSION)
        || !supports(SASL_AUTHENTICATE_KEY, SASL_AUTHENTICATE_VERSION)
    {
        return Err(WireError::Protocol(
            "the broker lacks SaslHandshake v1 / SaslAuthenticate (Kafka older than 1.0)"
                .to_string(),
        ));
    }
    let mechanism = sasl.mechanism.name();
    let handshake =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    let body = exchange(
        stream,
        SASL_HANDSHAKE_KEY,
        &handshake,
        SASL_HANDSHAKE_VERSION,
    )
    .await?;
    decode_handshake(body, mechanism)?;
    let failed = |code: i16, message: String| WireError::SaslFailed {
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
                    .map_err(|e| WireError::Protocol(format!("SCRAM task failed: {e}")))??;
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

/// A SaslAuthenticate failure: a broker error (turned into [`WireError::SaslFailed`] by
/// the caller, who knows the mechanism and user) or anything else.
enum AuthFailure {
    Rejected(i16, String),
    Other(WireError),
}

impl AuthFailure {
    fn into_error(self, failed: impl Fn(i16, String) -> WireError) -> WireError {
        match self {
            AuthFailure::Rejected(code, message) => failed(code, message),
            AuthFailure::Other(e) => e,
        }
    }
}

impl From<WireError> for AuthFailure {
    fn from(e: WireError) -> Self {
        AuthFailure::Other(e)
    }
}

/// One SaslAuthenticate v0 round: sends `token`, returns the server's bytes.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    token: &[u8],
) -> Result<Bytes, AuthFailure> {
    let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token));
    let body = exchange(
        stream,
        SASL_AUTHENTICATE_KEY,
        &request,
        SASL_AUTHENTICATE_VERSION,
    )
    .await?;
    decode_authenticate(body)
}

/// Sends `request` (API `api_key`) in `version` and returns the body of the answer to it
/// (correlation id checked, header removed), from a frame of at most [`MAX_RESPONSE_BYTES`].
/// (The crate's `Request` trait, which pairs a message with its key, is only built with its
/// `broker` feature, which the shipped binary does not enable.)
async fn exchange<S, R>(
    stream: &mut S,
    api_key: i16,
    request: &R,
    version: i16,
) -> Result<Bytes, WireError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: Encodable,
{
    let mut body = BytesMut::new();
    request
        .encode(&mut body, version)
        .map_err(|e| cannot_encode(&e))?;
    let correlation_id = send(stream, api_key, version, &body).await?;
    let frame = read_frame_bounded(stream, 4, MAX_RESPONSE_BYTES).await?;
    body_of(frame, correlation_id)
}

/// Sends ApiVersions v0 and decodes the answer.
async fn request_api_versions<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<Vec<ApiKeyRange>, WireError> {
    let mut body = BytesMut::new();
    ApiVersionsRequest::default()
        .encode(&mut body, API_VERSIONS_VERSION)
        .map_err(|e| cannot_encode(&e))?;
    let correlation_id = send(stream, API_VERSIONS_KEY, API_VERSIONS_VERSION, &body).await?;
    let frame = read_frame(stream).await?;
    api_versions_of(frame, correlation_id)
}

/// Writes one request (a fresh correlation id, `body` already encoded) and returns its
/// correlation id.
async fn send<S: AsyncWrite + Unpin>(
    stream: &mut S,
    api_key: i16,
    api_version: i16,
    body: &[u8],
) -> Result<i32, WireError> {
    let correlation_id = NEXT_CORRELATION_ID.fetch_add(1, Ordering::Relaxed);
    stream
        .write_all(&frame_request(api_key, api_version, correlation_id, body)?)
        .await?;
    stream.flush().await?;
    Ok(correlation_id)
}

/// A complete, size-prefixed request: `RequestHeader` v1 naming [`CLIENT_ID`], then `body`.
fn frame_request(
    api_key: i16,
    api_version: i16,
    correlation_id: i32,
    body: &[u8],
) -> Result<BytesMut, WireError> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key)
        .with_request_api_version(api_version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
    let mut out = BytesMut::with_capacity(body.len().saturating_add(64));
    out.put_i32(0); // the size, filled in below
    header
        .encode(&mut out, REQUEST_HEADER_VERSION)
        .map_err(|e| cannot_encode(&e))?;
    out.put_slice(body);
    let size = i32::try_from(out.len().saturating_sub(4))
        .map_err(|_| WireError::Protocol("request too long".to_string()))?;
    if let Some(prefix) = out.get_mut(..4) {
        prefix.copy_from_slice(&size.to_be_bytes());
    }
    Ok(out)
}

fn cannot_encode(e: &anyhow::Error) -> WireError {
    WireError::Protocol(format!(
        "cannot encode the request: {}",
        sanitize(&e.to_string(), 100)
    ))
}

/// Reads one size-prefixed frame of at most [`MAX_RESPONSE_BYTES`]. A TLS alert record
/// where the size should be means a TLS-only listener.
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Bytes, WireError> {
    read_frame_bounded(reader, 10, MAX_RESPONSE_BYTES).await
}

/// Reads one size-prefixed frame of `min..=max` bytes.
async fn read_frame_bounded<R: AsyncRead + Unpin>(
    reader: &mut R,
    min: usize,
    max: usize,
) -> Result<Bytes, WireError> {
    let mut size = [0u8; 4];
    reader.read_exact(&mut size).await?;
    if tls::looks_like_tls_alert(&size) {
        return Err(WireError::TlsRequired {
            message: TLS_REQUIRED,
        });
    }
    let size = i32::from_be_bytes(size);
    let size = usize::try_from(size)
        .ok()
        .filter(|&s| (min..=max).contains(&s))
        .ok_or_else(|| WireError::Protocol(format!("implausible response size {size}")))?;
    let mut frame = Vec::with_capacity(size.min(4096));
    let got = reader.take(size as u64).read_to_end(&mut frame).await?;
    if got != size {
        return Err(WireError::Io(io::ErrorKind::UnexpectedEof));
    }
    Ok(Bytes::from(frame))
}

/// The body of a response frame after its `ResponseHeader` v0, whose correlation id must
/// be the request's.
fn body_of(mut frame: Bytes, correlation_id: i32) -> Result<Bytes, WireError> {
    let header = ResponseHeader::decode(&mut frame, RESPONSE_HEADER_VERSION)
        .map_err(|e| undecodable("response header", &e))?;
    if header.correlation_id != correlation_id {
        return Err(WireError::Protocol(format!(
            "correlation id {}, expected {correlation_id}",
            header.correlation_id
        )));
    }
    Ok(frame)
}

/// Decodes a whole response body: the message must fill it exactly.
fn decode_body<T: Decodable>(
    mut body: Bytes,
    version: i16,
    what: &'static str,
) -> Result<T, WireError> {
    let message = T::decode(&mut body, version).map_err(|e| undecodable(what, &e))?;
    if body.has_remaining() {
        return Err(WireError::Protocol(format!(
            "{} trailing bytes after the {what} response",
            body.remaining()
        )));
    }
    Ok(message)
}

fn undecodable(what: &str, e: &anyhow::Error) -> WireError {
    WireError::Protocol(format!(
        "undecodable {what}: {}",
        sanitize(&e.to_string(), 100)
    ))
}

/// kafka-protocol sizes an array's vector from its count before it reads an element: the
/// count, an INT32 at `at` in `body`, is refused over `max` before decoding. A body too
/// short to hold the count is left to the decoder, which reports it truncated.
fn check_array_len(body: &[u8], at: usize, max: usize, field: &str) -> Result<(), WireError> {
    let count = body
        .get(at..at.saturating_add(4))
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(i32::from_be_bytes);
    match count {
        Some(n) if usize::try_from(n).is_ok_and(|n| n > max) => Err(WireError::Protocol(format!(
            "implausible {field} length {n}"
        ))),
        _ => Ok(()),
    }
}

/// Decodes SaslHandshakeResponse v1 (after the header): error 0 and the mechanism listed.
fn decode_handshake(body: Bytes, wanted: &'static str) -> Result<Vec<String>, WireError> {
    check_array_len(&body, 2, MAX_MECHANISMS, "mechanisms")?;
    let response: SaslHandshakeResponse =
        decode_body(body, SASL_HANDSHAKE_VERSION, "SaslHandshake")?;
    let mechanisms: Vec<String> = response
        .mechanisms
        .iter()
        .map(|m| sanitize(m.as_str(), 32))
        .collect();
    let error_code = response.error_code;
    if error_code == 33 || (error_code == 0 && !mechanisms.iter().any(|m| m == wanted)) {
        return Err(WireError::MechanismUnsupported {
            wanted,
            enabled: sanitize(&mechanisms.join(", "), 100),
        });
    }
    if error_code != 0 {
        return Err(WireError::Broker { code: error_code });
    }
    Ok(mechanisms)
}

/// Decodes SaslAuthenticateResponse v0 (after the header): the server's bytes, or the
/// broker's error code and message.
fn decode_authenticate(body: Bytes) -> Result<Bytes, AuthFailure> {
    let response: SaslAuthenticateResponse =
        decode_body(body, SASL_AUTHENTICATE_VERSION, "SaslAuthenticate")?;
    if response.error_code != 0 {
        return Err(AuthFailure::Rejected(
            response.error_code,
            response
                .error_message
                .map(|m| sanitize(m.as_str(), 160))
                .unwrap_or_default(),
        ));
    }
    Ok(response.auth_bytes)
}

/// Decodes ResponseHeader v0 + ApiVersionsResponse v0 (without the size prefix).
///
/// Public as the entry point of the fuzz harness (`tests/fuzz.rs`): it is the code that
/// reads the first bytes a broker sent.
pub fn decode_response(frame: &[u8], correlation_id: i32) -> Result<Vec<ApiKeyRange>, WireError> {
    api_versions_of(Bytes::copy_from_slice(frame), correlation_id)
}

/// [`decode_response`] of a frame already in a [`Bytes`].
fn api_versions_of(frame: Bytes, correlation_id: i32) -> Result<Vec<ApiKeyRange>, WireError> {
    let body = body_of(frame, correlation_id)?;
    check_array_len(&body, 2, MAX_API_KEYS, "api_keys")?;
    let response: ApiVersionsResponse = decode_body(body, API_VERSIONS_VERSION, "ApiVersions")?;
    if response.error_code != 0 {
        return Err(WireError::Broker {
            code: response.error_code,
        });
    }
    if response.api_keys.is_empty() {
        return Err(WireError::Protocol(
            "implausible api_keys length 0".to_string(),
        ));
    }
    let mut keys = Vec::with_capacity(response.api_keys.len());
    for k in &response.api_keys {
        let key = ApiKeyRange {
            api_key: k.api_key,
            min_version: k.min_version,
            max_version: k.max_version,
        };
        if key.api_key < 0 || key.min_version < 0 || key.min_version > key.max_version {
            return Err(WireError::Protocol(format!(
                "invalid api_keys entry {}: versions {}..{}",
                key.api_key, key.min_version, key.max_version
            )));
        }
        keys.push(key);
    }
    if !keys.iter().any(|k| k.api_key == API_VERSIONS_KEY) {
        return Err(WireError::Protocol(
            "api_keys does not list ApiVersions".to_string(),
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::FailureReason;

    #[test]
    fn request_bytes_match_the_spec() {
        // Size, RequestHeader v1 (key, version, correlation id, client id), ApiVersions v0.
        let req = frame_request(API_VERSIONS_KEY, 0, 0x0102_0304, &[]).unwrap();
        let mut want = vec![0, 0, 0, 26, 0, 18, 0, 0, 1, 2, 3, 4, 0, 16];
        want.extend_from_slice(b"gravity-exporter");
        assert_eq!(&req[..], &want[..]);
        // SaslHandshake v1: mechanism as STRING; SaslAuthenticate v0: auth_bytes as BYTES.
        let mut b = BytesMut::new();
        SaslHandshakeRequest::default()
            .with_mechanism(StrBytes::from_static_str("PLAIN"))
            .encode(&mut b, SASL_HANDSHAKE_VERSION)
            .unwrap();
        assert_eq!(&b[..], b"\0\x05PLAIN");
        let mut b = BytesMut::new();
        SaslAuthenticateRequest::default()
            .with_auth_bytes(Bytes::from_static(b"\0u\0p"))
            .encode(&mut b, SASL_AUTHENTICATE_VERSION)
            .unwrap();
        assert_eq!(&b[..], b"\0\0\0\x04\0u\0p");
        assert_eq!(
            (API_VERSIONS_KEY, SASL_HANDSHAKE_KEY, SASL_AUTHENTICATE_KEY),
            (18, 17, 36)
        );
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
            Err(WireError::Protocol(_))
        ));
        let f = valid_frame(7);
        for n in 0..f.len() {
            let e = decode_response(&f[..n], 7).unwrap_err();
            assert_eq!(e.reason(), FailureReason::Protocol, "prefix {n}: {e}");
        }
        let mut extra = f.clone();
        extra.push(0);
        assert!(decode_response(&extra, 7).is_err(), "trailing byte");
        // A count of 2^31-1 is refused before the decoder sizes a vector from it.
        let mut huge = f.clone();
        huge[6..10].copy_from_slice(&i32::MAX.to_be_bytes());
        let e = decode_response(&huge, 7).unwrap_err();
        assert!(e.to_string().contains("implausible api_keys length"), "{e}");
        let mut negative = f.clone();
        negative[6..10].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(decode_response(&negative, 7).is_err());
        let mut empty = f[..10].to_vec();
        empty[9] = 0;
        assert!(decode_response(&empty, 7).is_err(), "no api keys");
        let mut inverted = f.clone();
        inverted[13] = 10; // Produce min 10 > max 9
        assert!(decode_response(&inverted, 7).is_err());
        let mut no_self = f.clone();
        no_self[17] = 19; // ApiVersions entry becomes key 19
        assert!(decode_response(&no_self, 7).is_err());
        let mut err = f;
        err[5] = 35;
        let e = decode_response(&err, 7).unwrap_err();
        assert!(matches!(e, WireError::Broker { code: 35 }));
        assert!(e.to_string().contains("UNSUPPORTED_VERSION"), "{e}");
    }

    #[tokio::test]
    async fn frame_size_is_bounded() {
        let mut huge = &[0x7F, 0xFF, 0xFF, 0xFF, 0, 0][..];
        assert!(matches!(
            read_frame(&mut huge).await,
            Err(WireError::Protocol(_))
        ));
        let mut http = &b"HTTP/1.1 400 Bad Request"[..];
        assert!(matches!(
            read_frame(&mut http).await,
            Err(WireError::Protocol(_))
        ));
        let mut alert = &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46][..];
        assert!(matches!(
            read_frame(&mut alert).await,
            Err(WireError::TlsRequired { .. })
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
        let handshake = |b: &[u8], wanted| decode_handshake(Bytes::copy_from_slice(b), wanted);
        assert_eq!(handshake(&hs, "PLAIN").unwrap().len(), 2);
        assert!(matches!(
            handshake(&hs, "SCRAM-SHA-512"),
            Err(WireError::MechanismUnsupported { .. })
        ));
        for n in 0..hs.len() {
            assert!(handshake(&hs[..n], "PLAIN").is_err(), "prefix {n}");
        }
        let mut long = hs.clone();
        long.push(0);
        assert!(handshake(&long, "PLAIN").is_err());
        let mut many = hs.clone();
        many[2..6].copy_from_slice(&i32::MAX.to_be_bytes());
        let e = handshake(&many, "PLAIN").unwrap_err();
        assert!(
            e.to_string().contains("implausible mechanisms length"),
            "{e}"
        );
        let mut unsupported = hs.clone();
        unsupported[1] = 33;
        assert_eq!(
            handshake(&unsupported, "PLAIN").unwrap_err().reason(),
            FailureReason::AuthPluginUnsupported
        );
        let authenticate = |b: &[u8]| decode_authenticate(Bytes::copy_from_slice(b));
        let mut auth = vec![0, 58, 0, 3, b'b', b'a', b'd', 0, 0, 0, 0];
        assert!(matches!(
            authenticate(&auth),
            Err(AuthFailure::Rejected(58, ref m)) if m == "bad"
        ));
        auth[1] = 0;
        assert_eq!(authenticate(&auth).ok(), Some(Bytes::new()));
        for n in 0..auth.len() {
            assert!(authenticate(&auth[..n]).is_err(), "prefix {n}");
        }
        let negative = [0, 0, 0xff, 0xff, 0x80, 0, 0, 0];
        assert!(authenticate(&negative).is_err());
        // A BYTES length of 2^31-1 over a short frame is truncation, not an allocation.
        let huge = [0, 0, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff, 1];
        assert!(matches!(
            authenticate(&huge),
            Err(AuthFailure::Other(WireError::Protocol(_)))
        ));
    }

    #[test]
    fn errors_never_show_secrets() {
        // Error messages hold codes, the user and the broker's words, never the password.
        let e = WireError::Broker { code: 58 };
        assert_eq!(
            e.to_string(),
            "broker returned error code 58 (SASL_AUTHENTICATION_FAILED)"
        );
        assert_eq!(e.reason(), FailureReason::Auth);
    }
}
