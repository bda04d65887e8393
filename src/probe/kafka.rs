//! Kafka broker probe: one `ApiVersions` v0 round trip.
//!
//! `ApiVersions` is the first request every modern Kafka client sends, it needs no
//! authentication (it is allowed before SASL), every broker since 0.10 answers it, and
//! KIP-896 (Kafka 4.0) keeps version 0. A correct answer proves the broker process is up and
//! speaking the Kafka protocol, which a bare TCP connect does not.
//!
//! Wire format, from the Kafka protocol guide (<https://kafka.apache.org/protocol.html>,
//! sections "Common Request and Response Structure", "Headers" and "ApiVersions API"); all
//! integers are big-endian:
//!
//! ```text
//! Request  => Size:INT32 RequestHeader(v1) ApiVersionsRequest(v0)
//!   RequestHeader v1 => request_api_key:INT16(=18) request_api_version:INT16(=0)
//!                       correlation_id:INT32 client_id:NULLABLE_STRING(INT16 length + bytes)
//!   ApiVersionsRequest v0 => (empty)
//! Response => Size:INT32 ResponseHeader(v0) ApiVersionsResponse(v0)
//!   ResponseHeader v0 => correlation_id:INT32
//!   ApiVersionsResponse v0 => error_code:INT16 api_keys:ARRAY(INT32 count) of
//!                             [api_key:INT16 min_version:INT16 max_version:INT16]
//! ```
//!
//! The response is checked strictly: matching correlation id, error code 0, a bounded
//! non-empty `api_keys` array whose entries fill the frame exactly, `min <= max`, and an
//! entry for `ApiVersions` itself. TLS listeners are not supported (the probe speaks
//! plaintext; a TLS listener fails it with reason `protocol`).

use std::io;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::{
    connect_tcp, io_reason, run_probe, ConnectError, Endpoint, FailureReason, ProbeOutcome,
};

/// API key of `ApiVersions`.
pub const API_VERSIONS_KEY: i16 = 18;
/// `client_id` sent in the request header.
pub const CLIENT_ID: &str = "gravity-exporter";
/// Largest response frame accepted (a real ApiVersions v0 answer is well under 1 KiB).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Largest `api_keys` array accepted (Kafka 4 defines fewer than 100 APIs).
pub const MAX_API_KEYS: usize = 1000;

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

/// Errors of the Kafka probe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// The TCP connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The deadline passed.
    #[error("no answer within {after_ms} ms")]
    Timeout {
        /// The time allowed, in milliseconds.
        after_ms: u128,
    },
    /// The connection failed mid-exchange (EOF, reset, ...).
    #[error("connection lost: {0}")]
    Io(io::ErrorKind),
    /// The answer is not a valid ApiVersions v0 response.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The broker answered with a non-zero error code.
    #[error("broker returned error code {code} ({})", error_name(*code))]
    Broker {
        /// The Kafka error code (35 UNSUPPORTED_VERSION, 58 SASL_AUTHENTICATION_FAILED, ...).
        code: i16,
    },
}

impl KafkaError {
    /// The probe [`FailureReason`]: authorization/authentication error codes are `Auth`,
    /// other error codes and malformed answers are `Protocol`.
    pub fn reason(&self) -> FailureReason {
        match self {
            KafkaError::Connect(e) => e.reason(),
            KafkaError::Timeout { .. } => FailureReason::Timeout,
            KafkaError::Io(kind) => io_reason(*kind),
            KafkaError::Broker { code: 29..=31 | 58 } => FailureReason::Auth,
            KafkaError::Protocol(_) | KafkaError::Broker { .. } => FailureReason::Protocol,
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

/// Sends ApiVersions v0 to `endpoint` and returns the broker's supported API ranges,
/// all within `deadline`.
pub async fn api_versions(
    endpoint: &Endpoint,
    deadline: Duration,
) -> Result<Vec<ApiKeyRange>, KafkaError> {
    let work = async {
        let mut stream = connect_tcp(endpoint, deadline).await?;
        let correlation_id = NEXT_CORRELATION_ID.fetch_add(1, Ordering::Relaxed);
        stream.write_all(&encode_request(correlation_id)).await?;
        stream.flush().await?;
        let frame = read_frame(&mut stream).await?;
        decode_response(&frame, correlation_id)
    };
    match tokio::time::timeout(deadline, work).await {
        Ok(result) => result,
        Err(_) => Err(KafkaError::Timeout {
            after_ms: deadline.as_millis(),
        }),
    }
}

/// Probes a Kafka broker with ApiVersions v0 within `deadline`.
pub async fn probe(endpoint: &Endpoint, deadline: Duration) -> ProbeOutcome {
    run_probe(deadline, async {
        match api_versions(endpoint, deadline).await {
            Ok(keys) => Ok(format!("ApiVersions ok, {} api keys", keys.len())),
            Err(e) => Err((e.reason(), e.to_string())),
        }
    })
    .await
}

/// The complete, size-prefixed ApiVersions v0 request.
fn encode_request(correlation_id: i32) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + CLIENT_ID.len());
    body.extend_from_slice(&API_VERSIONS_KEY.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes()); // request_api_version
    body.extend_from_slice(&correlation_id.to_be_bytes());
    // CLIENT_ID is a short constant, its length fits in an INT16.
    body.extend_from_slice(&(CLIENT_ID.len() as i16).to_be_bytes());
    body.extend_from_slice(CLIENT_ID.as_bytes());
    let mut out = Vec::with_capacity(4 + body.len());
    // The body is a few dozen bytes.
    out.extend_from_slice(&(body.len() as i32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads one size-prefixed frame of at most [`MAX_RESPONSE_BYTES`].
async fn read_frame<R: AsyncRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, KafkaError> {
    let mut size = [0u8; 4];
    reader.read_exact(&mut size).await?;
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

/// Decodes ResponseHeader v0 + ApiVersionsResponse v0 (without the size prefix).
///
/// Public as the entry point of the fuzz harness (`tests/fuzz.rs`): it is the only code that
/// reads bytes a broker sent.
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
}

/// A fake Kafka broker for tests: answers ApiVersions (v0..=v3 requests get a v0-format
/// body, as brokers do for v0) exactly as the protocol guide describes, or misbehaves on
/// request. Not part of the exporter's runtime; public so integration tests can use it.
#[doc(hidden)]
#[cfg(any(test, feature = "test-servers"))]
pub mod testserver {
    use std::io;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::{JoinHandle, JoinSet};

    use super::{ApiKeyRange, API_VERSIONS_KEY};
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
        task: JoinHandle<()>,
    }

    impl FakeBroker {
        /// Binds 127.0.0.1:0 and starts serving in `mode`.
        pub async fn start(mode: Mode) -> io::Result<FakeBroker> {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let requests = Arc::new(Mutex::new(Vec::new()));
            let recorded = Arc::clone(&requests);
            let task = tokio::spawn(async move {
                // Dropping the JoinSet (when this task is aborted) aborts every connection.
                let mut connections = JoinSet::new();
                while let Ok((stream, _)) = listener.accept().await {
                    connections.spawn(serve(stream, mode, Arc::clone(&recorded)));
                    while connections.try_join_next().is_some() {}
                }
            });
            Ok(FakeBroker {
                addr,
                requests,
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
    }

    impl Drop for FakeBroker {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve(mut stream: TcpStream, mode: Mode, recorded: Arc<Mutex<Vec<ReceivedRequest>>>) {
        if mode == Mode::Close {
            return;
        }
        // A broker serves any number of requests on one connection.
        while let Some(request) = read_request(&mut stream).await {
            if let Ok(mut r) = recorded.lock() {
                if r.len() < MAX_RECORDED {
                    r.push(request.clone());
                }
            }
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
                // A real broker closes the connection on an API it does not know.
                _ if request.api_key != API_VERSIONS_KEY => return,
                Mode::ErrorCode(code) => response(request.correlation_id, code, &[]),
                Mode::WrongCorrelationId => {
                    response(request.correlation_id.wrapping_add(1), 0, &ADVERTISED)
                }
                // KIP-511: an unsupported version gets UNSUPPORTED_VERSION in the v0
                // format, listing the supported ApiVersions range.
                Mode::Ok if !(0..=3).contains(&request.api_version) => {
                    response(request.correlation_id, 35, &ADVERTISED[5..6])
                }
                Mode::Ok => response(request.correlation_id, 0, &ADVERTISED),
            };
            if stream.write_all(&response).await.is_err() {
                return;
            }
        }
    }

    async fn read_request(stream: &mut TcpStream) -> Option<ReceivedRequest> {
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
        let client_id = match usize::try_from(id_len) {
            Ok(n) => Some(String::from_utf8_lossy(body.get(10..10 + n)?).into_owned()),
            Err(_) if id_len == -1 => None,
            Err(_) => return None,
        };
        Some(ReceivedRequest {
            api_key,
            api_version,
            correlation_id,
            client_id,
        })
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
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::testserver::{FakeBroker, Mode, ADVERTISED};
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

    #[test]
    fn errors_never_show_secrets() {
        // The Kafka probe takes no credentials; its messages only hold codes and sizes.
        let e = KafkaError::Broker { code: 58 };
        assert_eq!(
            e.to_string(),
            "broker returned error code 58 (SASL_AUTHENTICATION_FAILED)"
        );
        assert_eq!(e.reason(), FailureReason::Auth);
    }
}
