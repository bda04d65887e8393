//! Protocol-level connection probes for the systems a gravity pipeline talks to.
//!
//! A gravity pipeline reads from MySQL or MongoDB and writes to MySQL or Kafka. When it
//! stalls, the first question is "can the endpoints be reached at all, and do they let us
//! in?". This module answers it with one short exchange per endpoint:
//!
//! * [`mysql`]: MySQL/MariaDB through the `mysql_async` driver (login, `SELECT 1`,
//!   `COM_QUIT`), with connections shared between the probe and the source collector;
//! * [`kafka`]: a Kafka `ApiVersions` v0 request;
//! * [`mongo`]: a MongoDB `hello` command over `OP_MSG`.
//! * [`http`]: an HTTP `GET /` with basic auth (Elasticsearch).
//!
//! The Kafka and MongoDB probes, which speak their protocols over their own connections,
//! fail with one error type, [`WireError`] (its protocol-specific variants say which).
//!
//! Why speak the protocols instead of just opening a TCP connection: a bare TCP connect to
//! MySQL that never completes the handshake counts toward the server's
//! `max_connect_errors`, and after enough of them the server blocks the exporter's host
//! (the problem reported in prometheus/blackbox_exporter issue 505). A protocol-level probe
//! also tells an authentication failure apart from a dead server.
//!
//! Every probe takes an overall deadline, enforced with [`tokio::time::timeout`] around the
//! whole exchange (DNS, connect, handshake, query), and returns a [`ProbeOutcome`] whose
//! `reason` is one of ten fixed [`FailureReason`]s (safe to use as a metric label) and
//! whose `detail` is a short human-readable string that never contains a password.
//! Passwords travel in a [`Secret`], whose `Debug` is redacted and which has no `Display`.

mod error;
pub mod http;
pub mod kafka;
pub mod kafka_topic;
pub mod mongo;
pub mod mysql;
pub mod scram;
pub use crate::tls;
pub use error::WireError;

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Longest `detail` string a [`ProbeOutcome`] carries, in characters.
pub const DETAIL_MAX_CHARS: usize = 200;

/// Most addresses tried for one host name (a DNS answer is outside input: bound it).
const MAX_ADDRS: usize = 16;

/// Why a probe failed. A closed set, so it can be a Prometheus label value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureReason {
    /// Nothing accepted the TCP connection (refused, unreachable, reset while connecting).
    Refused,
    /// The deadline passed before the exchange finished.
    Timeout,
    /// The server answered but rejected the credentials.
    Auth,
    /// The peer answered with something other than the expected protocol, an error, or
    /// a feature this probe does not implement.
    Protocol,
    /// The host name could not be resolved.
    Dns,
    /// The server demands TLS (MySQL `require_secure_transport`, a `REQUIRE SSL` user)
    /// and the login, made without TLS like gravity's, was refused for that.
    TlsRequired,
    /// The account's authentication plugin is not one the client can speak.
    AuthPluginUnsupported,
    /// A connection limit of the server or of the user is reached.
    TooManyConnections,
    /// Logged in, but a privilege needed for the check is missing.
    Privilege,
    /// The TLS handshake failed: the server's certificate is not trusted (unknown CA,
    /// expired, wrong name), the client certificate was refused, or the peer does not
    /// speak TLS where gravity's config says it does.
    Tls,
}

impl FailureReason {
    /// Every reason, in a fixed order (handy to pre-create metric label values).
    pub const ALL: [FailureReason; 10] = [
        FailureReason::Refused,
        FailureReason::Timeout,
        FailureReason::Auth,
        FailureReason::Protocol,
        FailureReason::Dns,
        FailureReason::TlsRequired,
        FailureReason::AuthPluginUnsupported,
        FailureReason::TooManyConnections,
        FailureReason::Privilege,
        FailureReason::Tls,
    ];

    /// The lowercase label value: `refused`, `timeout`, `auth`, `protocol`, `dns`,
    /// `tls_required`, `auth_plugin_unsupported`, `too_many_connections`, `privilege` or
    /// `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::Refused => "refused",
            FailureReason::Timeout => "timeout",
            FailureReason::Auth => "auth",
            FailureReason::Protocol => "protocol",
            FailureReason::Dns => "dns",
            FailureReason::TlsRequired => "tls_required",
            FailureReason::AuthPluginUnsupported => "auth_plugin_unsupported",
            FailureReason::TooManyConnections => "too_many_connections",
            FailureReason::Privilege => "privilege",
            FailureReason::Tls => "tls",
        }
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeOutcome {
    /// `true` when the whole exchange succeeded.
    pub ok: bool,
    /// Why it failed; `None` exactly when `ok` is true.
    pub reason: Option<FailureReason>,
    /// Time from the start of the probe (before DNS) to success or failure.
    pub latency: Duration,
    /// Short human-readable description (at most [`DETAIL_MAX_CHARS`] characters, no
    /// control characters, never a password).
    pub detail: String,
}

impl ProbeOutcome {
    /// A successful outcome; `detail` is sanitised and shortened.
    pub fn success(latency: Duration, detail: &str) -> Self {
        ProbeOutcome {
            ok: true,
            reason: None,
            latency,
            detail: sanitize(detail, DETAIL_MAX_CHARS),
        }
    }

    /// A failed outcome; `detail` is sanitised and shortened.
    pub fn failure(reason: FailureReason, latency: Duration, detail: &str) -> Self {
        ProbeOutcome {
            ok: false,
            reason: Some(reason),
            latency,
            detail: sanitize(detail, DETAIL_MAX_CHARS),
        }
    }
}

/// A host and port to probe. `host` is a DNS name or an IP literal (IPv6 without brackets).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Builds an endpoint; surrounding brackets of an IPv6 literal are removed.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        let host: String = host.into();
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(inner) => inner.to_string(),
            None => host,
        };
        Endpoint { host, port }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a `host:port` string could not be parsed into an [`Endpoint`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointParseError {
    /// No `:port` suffix.
    #[error("missing port (expected host:port)")]
    MissingPort,
    /// The port is not a number in 1..=65535.
    #[error("invalid port")]
    InvalidPort,
    /// The host part is empty or malformed (e.g. an unclosed `[`).
    #[error("invalid host")]
    InvalidHost,
}

impl FromStr for Endpoint {
    type Err = EndpointParseError;

    /// Parses `host:port`, `1.2.3.4:port` or `[v6]:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, after) = rest
                .split_once(']')
                .ok_or(EndpointParseError::InvalidHost)?;
            let port = after
                .strip_prefix(':')
                .ok_or(EndpointParseError::MissingPort)?;
            (host, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or(EndpointParseError::MissingPort)?;
            if host.contains(':') {
                // A bare IPv6 literal without brackets is ambiguous.
                return Err(EndpointParseError::InvalidHost);
            }
            (host, port)
        };
        if host.is_empty() {
            return Err(EndpointParseError::InvalidHost);
        }
        let port: u16 = port.parse().map_err(|_| EndpointParseError::InvalidPort)?;
        if port == 0 {
            return Err(EndpointParseError::InvalidPort);
        }
        Ok(Endpoint::new(host, port))
    }
}

pub use crate::redact::Secret;

/// Failure to open a TCP connection. Messages name the endpoint, never credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The host name did not resolve (or resolved to no address).
    #[error("cannot resolve {host}: {message}")]
    Dns {
        /// The host name.
        host: String,
        /// The resolver's message.
        message: String,
    },
    /// The peer actively refused the connection.
    #[error("connection refused by {endpoint}")]
    Refused {
        /// `host:port`.
        endpoint: String,
    },
    /// Connecting took longer than allowed.
    #[error("connect to {endpoint} timed out after {after_ms} ms")]
    Timeout {
        /// `host:port`.
        endpoint: String,
        /// The time allowed, in milliseconds.
        after_ms: u128,
    },
    /// Any other connect failure (unreachable network or host, reset, ...).
    #[error("cannot connect to {endpoint}: {kind}")]
    Other {
        /// `host:port`.
        endpoint: String,
        /// What the operating system reported.
        kind: io::ErrorKind,
    },
}

impl ConnectError {
    /// The [`FailureReason`] for this error. Unreachable hosts count as `Refused`: in both
    /// cases nothing could be connected to.
    pub fn reason(&self) -> FailureReason {
        match self {
            ConnectError::Dns { .. } => FailureReason::Dns,
            ConnectError::Refused { .. } | ConnectError::Other { .. } => FailureReason::Refused,
            ConnectError::Timeout { .. } => FailureReason::Timeout,
        }
    }

    fn from_io(endpoint: &Endpoint, err: &io::Error, timeout: Duration) -> Self {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused {
                endpoint: endpoint.to_string(),
            },
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ConnectError::Timeout {
                endpoint: endpoint.to_string(),
                after_ms: timeout.as_millis(),
            },
            kind => ConnectError::Other {
                endpoint: endpoint.to_string(),
                kind,
            },
        }
    }
}

/// Resolves `endpoint` and opens a TCP connection (with `TCP_NODELAY`) to the first address
/// that accepts, all within `timeout`. Resolution failures map to [`ConnectError::Dns`],
/// `ECONNREFUSED` to [`ConnectError::Refused`], expiry of `timeout` to
/// [`ConnectError::Timeout`].
pub async fn connect_tcp(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let attempt = async {
        let addrs: Vec<SocketAddr> =
            match tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port)).await {
                Ok(found) => found.take(MAX_ADDRS).collect(),
                Err(e) => {
                    return Err(ConnectError::Dns {
                        host: sanitize(&endpoint.host, 100),
                        message: sanitize(&e.to_string(), 100),
                    })
                }
            };
        let mut last_err: Option<io::Error> = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(stream) => {
                    // Small request/response exchanges: do not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last_err = Some(e),
            }
        }
        match last_err {
            Some(e) => Err(ConnectError::from_io(endpoint, &e, timeout)),
            None => Err(ConnectError::Dns {
                host: sanitize(&endpoint.host, 100),
                message: "no addresses found".to_string(),
            }),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ConnectError::Timeout {
            endpoint: endpoint.to_string(),
            after_ms: timeout.as_millis(),
        }),
    }
}

/// Maps an I/O error seen in the middle of a protocol exchange: refusals and timeouts keep
/// their meaning, anything else (EOF, reset) means the peer did not follow the protocol.
pub(crate) fn io_reason(kind: io::ErrorKind) -> FailureReason {
    match kind {
        io::ErrorKind::ConnectionRefused => FailureReason::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => FailureReason::Timeout,
        _ => FailureReason::Protocol,
    }
}

/// Runs one probe exchange under an overall `deadline` and turns its result into a
/// [`ProbeOutcome`]. `exchange` yields a success detail or a (reason, detail) pair.
pub(crate) async fn run_probe<F>(deadline: Duration, exchange: F) -> ProbeOutcome
where
    F: Future<Output = Result<String, (FailureReason, String)>>,
{
    let start = Instant::now();
    match tokio::time::timeout(deadline, exchange).await {
        Ok(Ok(detail)) => ProbeOutcome::success(start.elapsed(), &detail),
        Ok(Err((reason, detail))) => ProbeOutcome::failure(reason, start.elapsed(), &detail),
        Err(_) => ProbeOutcome::failure(
            FailureReason::Timeout,
            start.elapsed(),
            &format!("no complete answer within {} ms", deadline.as_millis()),
        ),
    }
}

pub(crate) use crate::base::sanitize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_have_fixed_labels() {
        let labels: Vec<&str> = FailureReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "refused",
                "timeout",
                "auth",
                "protocol",
                "dns",
                "tls_required",
                "auth_plugin_unsupported",
                "too_many_connections",
                "privilege",
                "tls"
            ]
        );
        assert_eq!(FailureReason::Auth.to_string(), "auth");
    }

    #[test]
    fn endpoint_display_and_parse() {
        assert_eq!(Endpoint::new("db1", 3306).to_string(), "db1:3306");
        assert_eq!(Endpoint::new("::1", 27017).to_string(), "[::1]:27017");
        assert_eq!(Endpoint::new("[::1]", 27017).host, "::1");
        assert_eq!(
            "[fe80::1]:9092".parse::<Endpoint>(),
            Ok(Endpoint::new("fe80::1", 9092))
        );
        assert_eq!(
            "kafka-1.internal:9092".parse::<Endpoint>(),
            Ok(Endpoint::new("kafka-1.internal", 9092))
        );
        assert_eq!(
            "host".parse::<Endpoint>(),
            Err(EndpointParseError::MissingPort)
        );
        assert_eq!(
            "host:99999".parse::<Endpoint>(),
            Err(EndpointParseError::InvalidPort)
        );
        assert_eq!(
            "host:0".parse::<Endpoint>(),
            Err(EndpointParseError::InvalidPort)
        );
        assert_eq!(
            ":1".parse::<Endpoint>(),
            Err(EndpointParseError::InvalidHost)
        );
        assert_eq!(
            "::1:80".parse::<Endpoint>(),
            Err(EndpointParseError::InvalidHost)
        );
        assert_eq!(
            "[::1:80".parse::<Endpoint>(),
            Err(EndpointParseError::InvalidHost)
        );
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
        assert_eq!(format!("{s:#?}"), "Secret(<redacted>)");
        assert_eq!(s.expose(), "hunter2-very-secret");
        assert!(!s.is_empty());
        assert!(Secret::default().is_empty());
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            user: String,
            password: Secret,
        }
        let h = Holder {
            user: "repl".into(),
            password: Secret::from("hunter2-very-secret"),
        };
        let dbg = format!("{h:?} {h:#?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("repl"));
    }

    #[test]
    fn sanitize_strips_controls_and_bounds_length() {
        assert_eq!(sanitize("a\nb\tc", 10), "a b c");
        assert_eq!(sanitize("abcdef", 3), "abc...");
        assert_eq!(sanitize("héllo", 5), "héllo");
        let long = "x".repeat(1000);
        let out = ProbeOutcome::failure(FailureReason::Protocol, Duration::ZERO, &long);
        assert_eq!(out.detail.chars().count(), DETAIL_MAX_CHARS + 3);
        assert_eq!(out.reason, Some(FailureReason::Protocol));
        assert!(!out.ok);
    }

    #[tokio::test]
    async fn connect_refused_on_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = connect_tcp(&Endpoint::new("127.0.0.1", port), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(err.reason(), FailureReason::Refused, "{err}");
        assert!(err.to_string().contains(&port.to_string()));
    }

    #[tokio::test]
    async fn connect_dns_failure() {
        // `.invalid` is reserved (RFC 2606) and never resolves; the resolver may still be
        // slow, so the test only insists on Dns or, if resolution hangs, Timeout.
        let err = connect_tcp(
            &Endpoint::new("no-such-host.invalid", 3306),
            Duration::from_secs(3),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err.reason(), FailureReason::Dns | FailureReason::Timeout),
            "{err}"
        );
    }

    #[tokio::test]
    async fn run_probe_enforces_deadline() {
        let deadline = Duration::from_millis(50);
        let start = Instant::now();
        let out = run_probe(deadline, async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok("never".to_string())
        })
        .await;
        assert!(!out.ok);
        assert_eq!(out.reason, Some(FailureReason::Timeout));
        assert!(start.elapsed() < deadline + Duration::from_millis(100));
        assert!(out.latency >= deadline);
    }
}
