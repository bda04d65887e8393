//! A fake Kafka broker for the tests (no Kafka server can be installed here): one broker,
//! node 0, on 127.0.0.1, whose messages are encoded and decoded with the maintained
//! `kafka-protocol` crate (independently of the exporter's own client code):
//!
//! - **Handshake and login**, following Kafka's `SaslServerAuthenticator`: `ApiVersions`
//!   (any version 0..=3 gets a v0-format answer), then with [`SaslUsers`] `SaslHandshake`
//!   v0/v1 and `SaslAuthenticate` rounds: PLAIN checked against its user and password,
//!   SCRAM-SHA-256/512 verified from the stored keys ([`crate::scram`]). Before the login only
//!   those APIs are served, anything else closes the connection; a failed login is answered
//!   with SASL_AUTHENTICATION_FAILED (58) and then closed. With a TLS acceptor
//!   ([`crate::tls`]) the listener speaks TLS first.
//! - **A log per topic partition**: `Produce` (v3+, record batches v2, acks honoured)
//!   appends each batch as the producer sent it with the broker's base offset written in
//!   (a real broker does the same: the CRC does not cover the base offset), `ListOffsets`
//!   answers earliest (0) and latest (the high watermark), `Fetch` (v4+) returns whole
//!   batches from the one holding the fetch offset, up to the partition's `max_bytes` (at
//!   least one batch, as Kafka does), and waits up to `max_wait_ms` (at most 1 s here) for
//!   data; `Metadata` lists the broker and the topics with their partitions, led by node 0.
//!   Topics exist when made with [`FakeBroker::create_topic`] (no auto-creation).
//! - **Faults** ([`Mode`]): error codes, garbage, a hang, a wrong correlation id, a close.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    api_versions_response::ApiVersion, fetch_response, list_offsets_response, metadata_response,
    produce_response, ApiKey, ApiVersionsResponse, BrokerId, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, SaslAuthenticateRequest,
    SaslAuthenticateResponse, SaslHandshakeRequest, SaslHandshakeResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
use kafka_protocol::records::RecordBatchDecoder;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::scram::{ScramHash, ScramServer};
pub use gravity_exporter::probe::kafka::ApiKeyRange;
use gravity_exporter::probe::Endpoint;

const API_VERSIONS: i16 = 18;
const SASL_HANDSHAKE: i16 = 17;
const SASL_AUTHENTICATE: i16 = 36;

/// How the fake broker answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Correct answers.
    Ok,
    /// ApiVersions answers this error code and no api keys.
    ErrorCode(i16),
    /// Reads the request, answers with HTTP text, closes.
    Garbage,
    /// Reads the request, never answers, keeps the connection open.
    Hang,
    /// ApiVersions answers with the wrong correlation id.
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

/// The api keys the fake advertises: what it serves (a Kafka 2.8 subset, within the versions
/// `kafka-protocol` knows).
pub const ADVERTISED: [ApiKeyRange; 7] = [
    ApiKeyRange {
        api_key: 0,
        min_version: 3,
        max_version: 9,
    },
    ApiKeyRange {
        api_key: 1,
        min_version: 4,
        max_version: 12,
    },
    ApiKeyRange {
        api_key: 2,
        min_version: 1,
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
        api_key: 36,
        min_version: 0,
        max_version: 2,
    },
];

/// Largest request accepted (a produced batch of gravity's is at most 1 MiB).
const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;
const MAX_RECORDED: usize = 10_000;
/// Longest wait of a Fetch for data.
const MAX_FETCH_WAIT: Duration = Duration::from_secs(1);
/// Most bytes kept per partition (older batches are dropped: the log's retention).
const MAX_PARTITION_BYTES: usize = 64 * 1024 * 1024;

/// One stored record batch.
#[derive(Debug, Clone)]
struct Batch {
    base: i64,
    /// Offset after the batch's last record.
    next: i64,
    bytes: Bytes,
}

#[derive(Debug, Default)]
struct PartitionLog {
    batches: Vec<Batch>,
    start: i64,
    end: i64,
    bytes: usize,
}

#[derive(Debug, Default)]
struct Logs {
    topics: BTreeMap<String, Vec<PartitionLog>>,
}

/// One record as stored, for the tests to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp (ms).
    pub timestamp: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub value: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
struct Shared {
    /// Bumped by [`FakeBroker::close_connections`]: older connections close at their next
    /// request without answering it.
    generation: std::sync::atomic::AtomicU64,
    requests: Mutex<Vec<ReceivedRequest>>,
    logins: Mutex<Vec<String>>,
    logs: Mutex<Logs>,
}

/// A running fake broker on 127.0.0.1; stops (closing all connections) when dropped.
#[derive(Debug)]
pub struct FakeBroker {
    addr: SocketAddr,
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared::default());
        let sh = Arc::clone(&shared);
        let task = tokio::spawn(async move {
            // Dropping the JoinSet (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let security = security.clone();
                let sh = Arc::clone(&sh);
                connections.spawn(async move {
                    let _ = stream.set_nodelay(true);
                    match &security.tls {
                        Some(acceptor) => {
                            // A failed handshake gets rustls's alert, then the close.
                            if let Ok(tls) = acceptor.accept(stream).await {
                                serve(tls, mode, security.sasl, addr, sh).await;
                            }
                        }
                        None => serve(stream, mode, security.sasl, addr, sh).await,
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(FakeBroker { addr, shared, task })
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
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Successful SASL logins so far, as `MECHANISM:user`.
    pub fn logins(&self) -> Vec<String> {
        self.shared
            .logins
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// Creates `topic` with `partitions` empty partitions (kept when it exists).
    pub fn create_topic(&self, topic: &str, partitions: usize) {
        if let Ok(mut l) = self.shared.logs.lock() {
            l.topics.entry(topic.to_string()).or_insert_with(|| {
                (0..partitions.max(1))
                    .map(|_| PartitionLog::default())
                    .collect()
            });
        }
    }

    /// Appends one record batch v2 of `values` to `topic`/`partition` with `compression`
    /// (what a Produce of them does); returns the base offset, `None` without the partition.
    pub fn append(
        &self,
        topic: &str,
        partition: i32,
        values: &[&[u8]],
        compression: kafka_protocol::records::Compression,
    ) -> Option<i64> {
        use kafka_protocol::records::{
            Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(0))
            .unwrap_or(0);
        let recs: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i64::try_from(i).unwrap_or(0),
                // offset − sequence constant: one batch (base sequence -1, no idempotence)
                sequence: i32::try_from(i).unwrap_or(0) - 1,
                timestamp: now,
                key: None,
                value: Some(Bytes::copy_from_slice(v)),
                headers: Default::default(),
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .ok()?;
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_topic_data(vec![
                kafka_protocol::messages::produce_request::TopicProduceData::default()
                    .with_name(topic_name(topic))
                    .with_partition_data(vec![
                        kafka_protocol::messages::produce_request::PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(buf.freeze())),
                    ]),
            ]);
        let resp = produce(&req, &self.shared);
        let p = resp.responses.first()?.partition_responses.first()?;
        (p.error_code == 0).then_some(p.base_offset)
    }

    /// Closes every open connection at its next request, unanswered (what a broker's
    /// `connections.max.idle.ms` or a restart does to a kept connection).
    pub fn close_connections(&self) {
        self.shared
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every record of `topic` (the log start moves to the end, as after retention).
    pub fn truncate(&self, topic: &str) {
        if let Ok(mut l) = self.shared.logs.lock() {
            if let Some(ps) = l.topics.get_mut(topic) {
                for p in ps.iter_mut() {
                    p.batches.clear();
                    p.bytes = 0;
                    p.start = p.end;
                }
            }
        }
    }

    /// The high watermark of each partition of `topic`.
    pub fn end_offsets(&self, topic: &str) -> Vec<i64> {
        self.shared
            .logs
            .lock()
            .ok()
            .and_then(|l| {
                l.topics
                    .get(topic)
                    .map(|ps| ps.iter().map(|p| p.end).collect())
            })
            .unwrap_or_default()
    }

    /// Every record stored for `topic`, decoded, in partition and offset order.
    pub fn records(&self, topic: &str) -> Vec<StoredRecord> {
        let batches: Vec<(i32, Bytes)> = match self.shared.logs.lock() {
            Ok(l) => l
                .topics
                .get(topic)
                .map(|ps| {
                    ps.iter()
                        .enumerate()
                        .flat_map(|(i, p)| {
                            p.batches.iter().map(move |b| {
                                (i32::try_from(i).unwrap_or(i32::MAX), b.bytes.clone())
                            })
                        })
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => return Vec::new(),
        };
        let mut out = Vec::new();
        for (partition, mut bytes) in batches {
            if let Ok(set) = RecordBatchDecoder::decode(&mut bytes) {
                for r in set.records {
                    out.push(StoredRecord {
                        partition,
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key.map(|k| k.to_vec()),
                        value: r.value.map(|v| v.to_vec()),
                    });
                }
            }
        }
        out
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

fn record<T: Clone>(v: &Mutex<Vec<T>>, item: T) {
    if let Ok(mut r) = v.lock() {
        if r.len() < MAX_RECORDED {
            r.push(item);
        }
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mode: Mode,
    sasl: Option<SaslUsers>,
    addr: SocketAddr,
    shared: Arc<Shared>,
) {
    if mode == Mode::Close {
        return;
    }
    let mut auth = if sasl.is_some() {
        Auth::Handshake
    } else {
        Auth::Done
    };
    let generation = shared.generation.load(std::sync::atomic::Ordering::SeqCst);
    // A broker serves any number of requests on one connection.
    while let Some(frame) = read_frame(&mut stream).await {
        if shared.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            return;
        }
        let Some((header, body)) = decode_header(frame) else {
            return;
        };
        let request = ReceivedRequest {
            api_key: header.request_api_key,
            api_version: header.request_api_version,
            correlation_id: header.correlation_id,
            client_id: header.client_id.as_ref().map(|s| s.as_str().to_string()),
        };
        record(&shared.requests, request.clone());
        match mode {
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
            _ => {}
        }
        let answer = if request.api_key == API_VERSIONS {
            api_versions(&request, mode)
        } else if !matches!(auth, Auth::Done) || request.api_key == SASL_HANDSHAKE {
            let Some(users) = &sasl else {
                // A real broker closes the connection on an API it does not serve.
                return;
            };
            let (answer, next, close) = sasl_step(&request, body, auth, users, &shared.logins);
            auth = next;
            let Some(answer) = answer else { return };
            if stream.write_all(&answer).await.is_err() || close {
                return;
            }
            continue;
        } else {
            match data_api(&request, body, addr, &shared).await {
                Some(a) => a,
                None => return,
            }
        };
        if stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Reads one size-prefixed request of at most [`MAX_REQUEST_BYTES`].
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Bytes> {
    let size = usize::try_from(stream.read_i32().await.ok()?).ok()?;
    if !(8..=MAX_REQUEST_BYTES).contains(&size) {
        return None;
    }
    let mut body = vec![0u8; size];
    stream.read_exact(&mut body).await.ok()?;
    Some(Bytes::from(body))
}

/// The request header (its version from the API key and version), and the body after it.
fn decode_header(mut frame: Bytes) -> Option<(RequestHeader, Bytes)> {
    if frame.len() < 4 {
        return None;
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let header_version = ApiKey::try_from(key)
        .ok()
        .map(|k| k.request_header_version(version))
        .unwrap_or(1);
    let header = RequestHeader::decode(&mut frame, header_version).ok()?;
    Some((header, frame))
}

/// Size + response header (version per API) + body.
fn respond<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    version: i16,
    body: &R,
) -> Option<Vec<u8>> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, R::header_version(version))
        .ok()?;
    body.encode(&mut buf, version).ok()?;
    let size = i32::try_from(buf.len() - 4).ok()?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Some(buf.to_vec())
}

fn api_versions(request: &ReceivedRequest, mode: Mode) -> Vec<u8> {
    let keys = |ks: &[ApiKeyRange]| -> Vec<ApiVersion> {
        ks.iter()
            .map(|k| {
                ApiVersion::default()
                    .with_api_key(k.api_key)
                    .with_min_version(k.min_version)
                    .with_max_version(k.max_version)
            })
            .collect()
    };
    let (id, code, list) = match mode {
        Mode::ErrorCode(code) => (request.correlation_id, code, Vec::new()),
        Mode::WrongCorrelationId => (request.correlation_id.wrapping_add(1), 0, keys(&ADVERTISED)),
        // KIP-511: an unsupported version gets UNSUPPORTED_VERSION in the v0 format,
        // listing the supported ApiVersions range.
        _ if !(0..=3).contains(&request.api_version) => {
            (request.correlation_id, 35, keys(&ADVERTISED[5..6]))
        }
        _ => (request.correlation_id, 0, keys(&ADVERTISED)),
    };
    let body = ApiVersionsResponse::default()
        .with_error_code(code)
        .with_api_keys(list);
    // Every version is answered in the v0 format (what a broker does for v0 and for an
    // unsupported version; the exporter sends v0).
    respond(id, 0, &body).unwrap_or_default()
}

/// One SASL request: the answer (`None`: close at once), the next state, and whether to
/// close after answering.
fn sasl_step(
    request: &ReceivedRequest,
    body: Bytes,
    auth: Auth,
    users: &SaslUsers,
    logins: &Mutex<Vec<String>>,
) -> (Option<Vec<u8>>, Auth, bool) {
    let id = request.correlation_id;
    let version = request.api_version;
    let auth_response = |code: i16, message: Option<&str>, bytes: &[u8]| {
        respond(
            id,
            version,
            &SaslAuthenticateResponse::default()
                .with_error_code(code)
                .with_error_message(message.map(|m| StrBytes::from_string(m.to_string())))
                .with_auth_bytes(Bytes::copy_from_slice(bytes)),
        )
    };
    let fail = |message: &str| (auth_response(58, Some(message), &[]), Auth::Done, true);
    let mechanisms: Vec<StrBytes> = users
        .mechanisms
        .iter()
        .map(|m| StrBytes::from_static_str(m))
        .collect();
    match (request.api_key, auth) {
        (SASL_HANDSHAKE, Auth::Handshake) if (0..=1).contains(&version) => {
            let Ok(req) = SaslHandshakeRequest::decode(&mut body.clone(), version) else {
                return (None, Auth::Done, true);
            };
            let wanted = req.mechanism.as_str().to_string();
            let answer = |code: i16| {
                respond(
                    id,
                    version,
                    &SaslHandshakeResponse::default()
                        .with_error_code(code)
                        .with_mechanisms(mechanisms.clone()),
                )
            };
            match users.mechanisms.iter().find(|m| **m == wanted) {
                Some(m) => (answer(0), Auth::Mechanism(m), false),
                None => (answer(33), Auth::Handshake, true),
            }
        }
        (SASL_AUTHENTICATE, Auth::Mechanism(mechanism)) if (0..=2).contains(&version) => {
            let Ok(req) = SaslAuthenticateRequest::decode(&mut body.clone(), version) else {
                return (None, Auth::Done, true);
            };
            let token = req.auth_bytes;
            if mechanism == "PLAIN" {
                // authzid NUL authcid NUL passwd (RFC 4616)
                let parts: Vec<&[u8]> = token.split(|b| *b == 0).collect();
                return match parts.as_slice() {
                    [_, user, pw]
                        if *user == users.user.as_bytes() && *pw == users.password.as_bytes() =>
                    {
                        record(logins, format!("{mechanism}:{}", users.user));
                        (auth_response(0, None, &[]), Auth::Done, false)
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
                &token,
            ) {
                Ok((server, first)) if server.user() == users.user => (
                    auth_response(0, None, first.as_bytes()),
                    Auth::ScramFinal(Box::new(server), mechanism),
                    false,
                ),
                _ => fail(&invalid),
            }
        }
        (SASL_AUTHENTICATE, Auth::ScramFinal(server, mechanism)) if (0..=2).contains(&version) => {
            let invalid = format!("Authentication failed during authentication due to invalid credentials with SASL mechanism {mechanism}");
            let got = SaslAuthenticateRequest::decode(&mut body.clone(), version)
                .ok()
                .map(|r| server.finish(&r.auth_bytes));
            match got {
                Some(Ok(last)) => {
                    record(logins, format!("{mechanism}:{}", server.user()));
                    (auth_response(0, None, last.as_bytes()), Auth::Done, false)
                }
                _ => fail(&invalid),
            }
        }
        // Anything else during the login ("Unexpected Kafka request of type ... during SASL
        // handshake") closes the connection.
        _ => (None, Auth::Done, true),
    }
}

fn supported(key: i16, version: i16) -> bool {
    ADVERTISED
        .iter()
        .any(|k| k.api_key == key && (k.min_version..=k.max_version).contains(&version))
}

/// Produce, Fetch, ListOffsets, Metadata; `None` closes the connection (an API or version
/// not served, an undecodable body).
async fn data_api(
    request: &ReceivedRequest,
    mut body: Bytes,
    addr: SocketAddr,
    shared: &Shared,
) -> Option<Vec<u8>> {
    let (id, v) = (request.correlation_id, request.api_version);
    if !supported(request.api_key, v) {
        return None;
    }
    match ApiKey::try_from(request.api_key).ok()? {
        ApiKey::Metadata => {
            let req = MetadataRequest::decode(&mut body, v).ok()?;
            respond(id, v, &metadata(&req, addr, shared))
        }
        ApiKey::ListOffsets => {
            let req = ListOffsetsRequest::decode(&mut body, v).ok()?;
            respond(id, v, &list_offsets(&req, shared))
        }
        ApiKey::Produce => {
            let req = ProduceRequest::decode(&mut body, v).ok()?;
            let resp = produce(&req, shared);
            if req.acks == 0 {
                // acks=0: no answer at all.
                return Some(Vec::new());
            }
            respond(id, v, &resp)
        }
        ApiKey::Fetch => {
            let req = FetchRequest::decode(&mut body, v).ok()?;
            let wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0))
                .min(MAX_FETCH_WAIT);
            let until = Instant::now() + wait;
            loop {
                let (resp, any) = fetch(&req, shared);
                if any || Instant::now() >= until {
                    return respond(id, v, &resp);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        _ => None,
    }
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn metadata(req: &MetadataRequest, addr: SocketAddr, shared: &Shared) -> MetadataResponse {
    let logs = shared.logs.lock().ok();
    let names: Vec<String> = match &req.topics {
        Some(ts) => ts
            .iter()
            .filter_map(|t| t.name.as_ref().map(|n| n.0.as_str().to_string()))
            .collect(),
        None => logs
            .as_ref()
            .map(|l| l.topics.keys().cloned().collect())
            .unwrap_or_default(),
    };
    let topics = names
        .iter()
        .map(|name| {
            let parts = logs.as_ref().and_then(|l| l.topics.get(name).map(Vec::len));
            let t = metadata_response::MetadataResponseTopic::default()
                .with_name(Some(topic_name(name)));
            match parts {
                // UNKNOWN_TOPIC_OR_PARTITION
                None => t.with_error_code(3),
                Some(n) => t.with_partitions(
                    (0..n)
                        .map(|i| {
                            metadata_response::MetadataResponsePartition::default()
                                .with_partition_index(i32::try_from(i).unwrap_or(i32::MAX))
                                .with_leader_id(BrokerId(0))
                                .with_replica_nodes(vec![BrokerId(0)])
                                .with_isr_nodes(vec![BrokerId(0)])
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(vec![metadata_response::MetadataResponseBroker::default()
            .with_node_id(BrokerId(0))
            .with_host(StrBytes::from_string(addr.ip().to_string()))
            .with_port(i32::from(addr.port()))])
        .with_cluster_id(Some(StrBytes::from_static_str("gravity-double")))
        .with_controller_id(BrokerId(0))
        .with_topics(topics)
}

fn list_offsets(req: &ListOffsetsRequest, shared: &Shared) -> ListOffsetsResponse {
    let logs = shared.logs.lock().ok();
    let topics = req
        .topics
        .iter()
        .map(|t| {
            let log = logs.as_ref().and_then(|l| l.topics.get(t.name.0.as_str()));
            list_offsets_response::ListOffsetsTopicResponse::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let r = list_offsets_response::ListOffsetsPartitionResponse::default()
                                .with_partition_index(p.partition_index)
                                .with_timestamp(-1);
                            match log.and_then(|l| {
                                usize::try_from(p.partition_index)
                                    .ok()
                                    .and_then(|i| l.get(i))
                            }) {
                                None => r.with_error_code(3).with_offset(-1),
                                // -2 earliest, -1 latest (anything else: latest too here)
                                Some(pl) if p.timestamp == -2 => r.with_offset(pl.start),
                                Some(pl) => r.with_offset(pl.end),
                            }
                        })
                        .collect(),
                )
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// Checks a produced record set and counts its records: exactly one record batch v2 (what
/// Kafka demands of Produce v3+), CRC checked by the decoder. `Err` is the error code:
/// CORRUPT_MESSAGE (2), INVALID_RECORD (87) for more than one batch or none.
fn batch_records(bytes: &Bytes) -> Result<i64, i16> {
    let mut b = bytes.clone();
    let set = RecordBatchDecoder::decode(&mut b).map_err(|_| 2i16)?;
    if b.has_remaining() || set.records.is_empty() {
        return Err(87);
    }
    i64::try_from(set.records.len()).map_err(|_| 87)
}

fn produce(req: &ProduceRequest, shared: &Shared) -> ProduceResponse {
    let mut logs = shared.logs.lock().ok();
    let responses = req
        .topic_data
        .iter()
        .map(|t| {
            let parts = t
                .partition_data
                .iter()
                .map(|p| {
                    let r = produce_response::PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_log_append_time_ms(-1);
                    let Some(pl) = logs
                        .as_mut()
                        .and_then(|l| l.topics.get_mut(t.name.0.as_str()))
                        .and_then(|ps| usize::try_from(p.index).ok().and_then(|i| ps.get_mut(i)))
                    else {
                        return r.with_error_code(3).with_base_offset(-1);
                    };
                    let Some(records) = &p.records else {
                        return r.with_error_code(87).with_base_offset(-1);
                    };
                    let count = match batch_records(records) {
                        Ok(n) => n,
                        Err(code) => return r.with_error_code(code).with_base_offset(-1),
                    };
                    let base = pl.end;
                    let mut stored = BytesMut::from(&records[..]);
                    // the base offset is not covered by the CRC
                    stored[..8].copy_from_slice(&base.to_be_bytes());
                    pl.end = base.saturating_add(count);
                    pl.bytes = pl.bytes.saturating_add(stored.len());
                    pl.batches.push(Batch {
                        base,
                        next: pl.end,
                        bytes: stored.freeze(),
                    });
                    while pl.bytes > MAX_PARTITION_BYTES && pl.batches.len() > 1 {
                        let old = pl.batches.remove(0);
                        pl.bytes = pl.bytes.saturating_sub(old.bytes.len());
                        pl.start = old.next;
                    }
                    r.with_base_offset(base).with_log_start_offset(pl.start)
                })
                .collect();
            produce_response::TopicProduceResponse::default()
                .with_name(t.name.clone())
                .with_partition_responses(parts)
        })
        .collect();
    ProduceResponse::default().with_responses(responses)
}

/// The Fetch answer, and whether it holds any record.
fn fetch(req: &FetchRequest, shared: &Shared) -> (FetchResponse, bool) {
    let logs = shared.logs.lock().ok();
    let mut any = false;
    let mut left = usize::try_from(req.max_bytes).unwrap_or(0).max(1);
    let responses = req
        .topics
        .iter()
        .map(|t| {
            let log = logs.as_ref().and_then(|l| l.topics.get(t.topic.0.as_str()));
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    let r =
                        fetch_response::PartitionData::default().with_partition_index(p.partition);
                    let Some(pl) =
                        log.and_then(|l| usize::try_from(p.partition).ok().and_then(|i| l.get(i)))
                    else {
                        return r.with_error_code(3).with_high_watermark(-1);
                    };
                    let r = r
                        .with_high_watermark(pl.end)
                        .with_last_stable_offset(pl.end)
                        .with_log_start_offset(pl.start);
                    if p.fetch_offset < pl.start || p.fetch_offset > pl.end {
                        // OFFSET_OUT_OF_RANGE
                        return r.with_error_code(1);
                    }
                    let max = usize::try_from(p.partition_max_bytes).unwrap_or(0);
                    let mut out = BytesMut::new();
                    for b in pl.batches.iter().filter(|b| b.next > p.fetch_offset) {
                        // at least one whole batch, then only what fits
                        if !out.is_empty()
                            && (out.len() + b.bytes.len() > max || b.bytes.len() > left)
                        {
                            break;
                        }
                        out.extend_from_slice(&b.bytes);
                        left = left.saturating_sub(b.bytes.len());
                        let _ = b.base;
                    }
                    any |= !out.is_empty();
                    r.with_records(Some(out.freeze()))
                })
                .collect();
            fetch_response::FetchableTopicResponse::default()
                .with_topic(t.topic.clone())
                .with_partitions(parts)
        })
        .collect();
    (FetchResponse::default().with_responses(responses), any)
}
