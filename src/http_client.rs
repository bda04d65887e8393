//! The exporter's one HTTP client: hyper 1 with hyper-util's client over an HTTP-or-HTTPS
//! connector (hyper-rustls, *ring* provider, the caller's rustls [`ClientConfig`]).
//!
//! Users: [`crate::gravity_api::GravityClient`] (gravity's `/status`, `/healthz`, `/metrics`,
//! plain HTTP), the Elasticsearch probe ([`crate::probe::http`], `GET /` over HTTP or HTTPS
//! with the probe's trust store) and the OTLP http/protobuf transport
//! ([`crate::otlp`], `POST /v1/*` with the `--otlp.tls.*` CA and client certificate).
//!
//! What every request gets, whoever sends it:
//!
//! * **a total timeout** ([`HttpClient::send`]): connect, TLS handshake, request, response
//!   head and the body read, under one deadline;
//! * **a byte cap on the body** ([`Body`]): the body is read up to a cap and refused beyond
//!   it, drained up to a cap and dropped, or not read at all;
//! * **a small pool**: at most [`Options::max_idle_per_host`] idle connections per host,
//!   closed after [`Options::idle_timeout`]; nothing is retried except what hyper-util
//!   retries by design (a request that never left on a reused connection that was closed);
//! * **only the caller's request**: no redirects are followed and nothing else is ever
//!   sent (the gravity wrapper additionally refuses gravity's destructive `/reset`);
//! * **typed failures** ([`HttpError`]): name resolution, TCP connect (with the OS error
//!   kind), the TLS handshake (with rustls's words), a TLS-only server answering a plain
//!   `http://` request with a TLS alert ([`HttpError::TlsRequired`], seen from the first
//!   bytes the peer sent), an answer that is not HTTP/1.x, and the timeout. The connector
//!   marks which layer failed (a resolver and a TCP connector of our own around hyper-util's,
//!   whose errors are found again by type in the error's source chain), so no error text
//!   is ever parsed.
#![warn(clippy::arithmetic_side_effects)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::http::uri::Scheme;
use hyper::{Request, StatusCode};
use hyper_util::client::legacy::connect::dns::{GaiAddrs, GaiResolver, Name};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::tls::{describe_rustls, looks_like_tls_alert};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many of the first bytes a peer sends are kept, to recognise a TLS alert record.
const SNIFF_BYTES: usize = 5;

/// How a client is set up.
#[derive(Clone)]
pub struct Options {
    /// TLS for `https://` URLs (the caller's trust store, client certificate, verification);
    /// `None`: `https://` URLs are refused ([`HttpError::Request`]).
    pub tls: Option<Arc<ClientConfig>>,
    /// Idle connections kept per host (0: none; each request has its own connection).
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Longest TCP connect (per address tried); the request's total timeout bounds it too.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("tls", &self.tls.is_some())
            .field("max_idle_per_host", &self.max_idle_per_host)
            .field("idle_timeout", &self.idle_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl Default for Options {
    /// Plain HTTP, two idle connections per host for 30 s, 2 s connect timeout.
    fn default() -> Self {
        Options {
            tls: None,
            max_idle_per_host: 2,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// How much of the response body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// None of it: the response is dropped after its head (the connection is not reused).
    Discard,
    /// All of it, at most this many bytes; more is [`HttpError::TooLarge`].
    UpTo(usize),
    /// Read and dropped, at most this many bytes (so the connection can be reused); a
    /// longer body or a broken one is not an error. [`Response::body`] is empty.
    Drain(usize),
}

/// A response: status, body (as [`Body`] says) and how long it took.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Body (at most the cap; empty unless [`Body::UpTo`]).
    pub body: Bytes,
    /// Time to the end of what was read.
    pub elapsed: Duration,
}

/// Why a request failed. Messages never hold a header value or a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// Not done within the total timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The host name did not resolve.
    #[error("cannot resolve the host name: {0}")]
    Dns(String),
    /// The TCP connection could not be opened.
    #[error("{detail}")]
    Connect {
        /// What the operating system reported.
        kind: io::ErrorKind,
        /// Its words.
        detail: String,
    },
    /// The TLS handshake failed (certificate not trusted, expired or for another name,
    /// client certificate refused, the peer does not speak TLS).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// A plain `http://` request was answered with a TLS alert: the server speaks TLS only.
    #[error("the server answered a plain HTTP request with a TLS alert: it speaks https only")]
    TlsRequired,
    /// The connection broke during the exchange, or the answer is not HTTP/1.x.
    #[error("{detail}")]
    Exchange {
        /// The I/O error kind when the connection broke, `None` when the answer was wrong.
        kind: Option<io::ErrorKind>,
        /// What happened.
        detail: String,
    },
    /// The body is longer than the cap of [`Body::UpTo`].
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The request cannot be sent as given (URL, scheme without TLS set up).
    #[error("{0}")]
    Request(String),
}

/// The exporter's HTTP client (cheap to clone; clones share the pool).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    tls: bool,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

/// The connector: TCP only, or TCP with TLS for `https://` (hyper-rustls).
#[derive(Clone)]
enum Connector {
    Plain(Tcp),
    Tls(hyper_rustls::HttpsConnector<Tcp>),
}

type Stream = hyper_rustls::MaybeHttpsStream<TokioIo<Sniff>>;

impl tower_service::Service<hyper::Uri> for Connector {
    type Response = Stream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Connector::Plain(t) => t.poll_ready(cx).map_err(Into::into),
            Connector::Tls(t) => t.poll_ready(cx),
        }
    }

    fn call(&mut self, dst: hyper::Uri) -> Self::Future {
        match self {
            Connector::Plain(t) => {
                let f = t.call(dst);
                Box::pin(async move { Ok(hyper_rustls::MaybeHttpsStream::Http(f.await?)) })
            }
            Connector::Tls(t) => t.call(dst),
        }
    }
}

impl HttpClient {
    /// A client; connects lazily. Needs a tokio runtime when a request is sent.
    pub fn new(options: Options) -> HttpClient {
        let mut http = HttpConnector::new_with_resolver(Resolver(GaiResolver::new()));
        // https:// URLs reach the TLS layer above; the TCP layer takes both schemes
        http.enforce_http(false);
        http.set_connect_timeout(Some(options.connect_timeout));
        http.set_nodelay(true);
        let tls = options.tls.is_some();
        let connector = match options.tls {
            Some(config) => Connector::Tls(hyper_rustls::HttpsConnector::from((Tcp(http), config))),
            None => Connector::Plain(Tcp(http)),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(options.idle_timeout)
            .pool_max_idle_per_host(options.max_idle_per_host)
            // `Host`, `Authorization` as Go and curl write them
            .http1_title_case_headers(true)
            .build(connector);
        HttpClient { client, tls }
    }

    /// Whether `req` goes over plain HTTP (`false`: TLS); an error for a scheme this client
    /// cannot serve.
    fn plain(&self, req: &Request<Full<Bytes>>) -> Result<bool, HttpError> {
        match req.uri().scheme() {
            Some(s) if *s == Scheme::HTTP => Ok(true),
            Some(s) if *s == Scheme::HTTPS => {
                if self.tls {
                    Ok(false)
                } else {
                    Err(HttpError::Request(
                        "https:// is not set up for this client".into(),
                    ))
                }
            }
            _ => Err(HttpError::Request(
                "the URL must be http:// or https://".into(),
            )),
        }
    }

    /// Sends `req` and returns the answer's head; its body is then read piece by piece
    /// ([`Streaming::chunk`]) and never held whole, at most `limit` bytes, everything within
    /// `timeout` of now. An answer that announces a longer body is refused at once.
    pub async fn open(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Streaming, HttpError> {
        let plain = self.plain(&req)?;
        let start = Instant::now();
        // timeouts are validated (at most a day): the sum always fits
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or(now);
        let resp = match tokio::time::timeout_at(deadline, self.client.request(req)).await {
            Ok(r) => r.map_err(|e| classify(&e, plain))?,
            Err(_) => return Err(HttpError::Timeout(timeout)),
        };
        let status = resp.status();
        let body = resp.into_body();
        if hyper::body::Body::size_hint(&body)
            .exact()
            .is_some_and(|n| n > limit as u64)
        {
            return Err(HttpError::TooLarge(limit));
        }
        Ok(Streaming {
            status,
            body,
            deadline,
            timeout,
            limit,
            read: 0,
            start,
        })
    }

    /// Sends `req` and reads the answer as `body` says, all within `timeout`.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
        body: Body,
    ) -> Result<Response, HttpError> {
        let plain = self.plain(&req)?;
        let start = Instant::now();
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| classify(&e, plain))?;
            let status = resp.status();
            let bytes = match body {
                Body::Discard => Bytes::new(),
                Body::UpTo(limit) => Limited::new(resp.into_body(), limit)
                    .collect()
                    .await
                    .map_err(|e| {
                        if e.downcast_ref::<http_body_util::LengthLimitError>()
                            .is_some()
                        {
                            HttpError::TooLarge(limit)
                        } else {
                            HttpError::Exchange {
                                kind: find::<io::Error>(&*e).map(io::Error::kind),
                                detail: format!("reading the body: {}", innermost(&*e)),
                            }
                        }
                    })?
                    .to_bytes(),
                Body::Drain(limit) => {
                    let _ = Limited::new(resp.into_body(), limit).collect().await;
                    Bytes::new()
                }
            };
            Ok(Response {
                status,
                body: bytes,
                elapsed: start.elapsed(),
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout(timeout)),
        }
    }
}

/// An answer whose body is read piece by piece ([`HttpClient::open`]).
#[derive(Debug)]
pub struct Streaming {
    /// HTTP status.
    pub status: StatusCode,
    body: hyper::body::Incoming,
    deadline: tokio::time::Instant,
    timeout: Duration,
    limit: usize,
    read: usize,
    start: Instant,
}

impl Streaming {
    /// The next piece of the body as it arrived (hyper's frames, not bigger than its read
    /// buffer), `None` at the end. [`HttpError::TooLarge`] once more than the cap has
    /// arrived, [`HttpError::Timeout`] past the request's deadline.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, HttpError> {
        loop {
            let frame = match tokio::time::timeout_at(self.deadline, self.body.frame()).await {
                Err(_) => return Err(HttpError::Timeout(self.timeout)),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(HttpError::Exchange {
                        kind: find::<io::Error>(&e).map(io::Error::kind),
                        detail: format!("reading the body: {}", innermost(&e)),
                    })
                }
                Ok(Some(Ok(f))) => f,
            };
            // trailers carry nothing the exporter reads
            let Ok(data) = frame.into_data() else {
                continue;
            };
            self.read = self.read.saturating_add(data.len());
            if self.read > self.limit {
                return Err(HttpError::TooLarge(self.limit));
            }
            if !data.is_empty() {
                return Ok(Some(data));
            }
        }
    }

    /// Bytes of the body read so far.
    pub fn read(&self) -> usize {
        self.read
    }

    /// Time since the request was sent.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Sorts a client error into the layer that failed.
fn classify(e: &hyper_util::client::legacy::Error, plain: bool) -> HttpError {
    if plain && first_bytes(e).is_some_and(|b| looks_like_tls_alert(&b)) {
        return HttpError::TlsRequired;
    }
    if let Some(dns) = find::<DnsError>(e) {
        return HttpError::Dns(one_line(&dns.0.to_string()));
    }
    if let Some(tcp) = find::<TcpError>(e) {
        return HttpError::Connect {
            kind: find::<io::Error>(&*tcp.0).map_or(io::ErrorKind::Other, io::Error::kind),
            detail: innermost(&*tcp.0),
        };
    }
    if e.is_connect() {
        // not resolution, not TCP: the TLS layer
        return HttpError::Tls(tls_words(e));
    }
    if let Some(h) = find::<hyper::Error>(e) {
        if h.is_parse() || h.is_parse_status() {
            return HttpError::Exchange {
                kind: None,
                detail: format!("the answer is not HTTP/1.x ({h})"),
            };
        }
        if h.is_incomplete_message() {
            return HttpError::Exchange {
                kind: None,
                detail: "connection closed before an HTTP status line".into(),
            };
        }
    }
    HttpError::Exchange {
        kind: find::<io::Error>(e).map(io::Error::kind),
        detail: innermost(e),
    }
}

/// The first bytes the peer sent on the connection the error happened on.
fn first_bytes(e: &hyper_util::client::legacy::Error) -> Option<Vec<u8>> {
    let mut ext = hyper::http::Extensions::new();
    e.connect_info()?.get_extras(&mut ext);
    ext.get::<FirstBytes>().map(FirstBytes::get)
}

/// Words for a failed handshake: rustls's own error when there is one.
fn tls_words(e: &(dyn std::error::Error + 'static)) -> String {
    let text = match find::<rustls::Error>(e) {
        Some(err) => describe_rustls(err),
        None if chain(e).any(|x| {
            x.downcast_ref::<io::Error>()
                .is_some_and(|i| i.kind() == io::ErrorKind::UnexpectedEof)
        }) =>
        {
            "the server closed the connection during the handshake".to_string()
        }
        None => innermost(e),
    };
    cut(&text, 160)
}

/// Every error in `e`'s chain, `e` first. An `io::Error` wrapping another error is followed
/// into it (its `source()` skips the wrapped error itself).
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    // bounded: a cyclic or absurd chain ends after 32 links
    std::iter::successors(Some(e), |cur| {
        match cur.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => cur.source(),
        }
    })
    .take(32)
}

/// The first error of type `T` in `e`'s chain.
fn find<'a, T: std::error::Error + 'static>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<&'a T> {
    chain(e).find_map(|x| x.downcast_ref::<T>())
}

/// The innermost cause, on one line.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let last = chain(e).last().unwrap_or(e);
    one_line(&last.to_string())
}

fn one_line(s: &str) -> String {
    cut(&s.replace(['\n', '\r'], " "), 300)
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", s.get(..i).unwrap_or_default()),
        None => s.to_string(),
    }
}

/// A resolution failure, marked so that it is found again in the error chain.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DnsError(io::Error);

/// hyper-util's resolver (`getaddrinfo` on the blocking pool), its errors marked.
#[derive(Clone)]
struct Resolver(GaiResolver);

impl tower_service::Service<Name> for Resolver {
    type Response = GaiAddrs;
    type Error = DnsError;
    type Future = Pin<Box<dyn Future<Output = Result<GaiAddrs, DnsError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), DnsError>> {
        self.0.poll_ready(cx).map_err(DnsError)
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let f = self.0.call(name);
        Box::pin(async move { f.await.map_err(DnsError) })
    }
}

/// A TCP connect failure, marked so that it is told apart from a TLS one.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TcpError(#[source] BoxError);

/// hyper-util's TCP connector (happy eyeballs, connect timeout, `TCP_NODELAY`), its errors
/// marked and its streams wrapped in [`Sniff`].
#[derive(Clone)]
struct Tcp(HttpConnector<Resolver>);

impl tower_service::Service<hyper::Uri> for Tcp {
    type Response = TokioIo<Sniff>;
    type Error = TcpError;
    type Future = Pin<Box<dyn Future<Output = Result<TokioIo<Sniff>, TcpError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TcpError>> {
        self.0.poll_ready(cx).map_err(|e| TcpError(e.into()))
    }

    fn call(&mut self, dst: hyper::Uri) -> Self::Future {
        let f = self.0.call(dst);
        Box::pin(async move {
            let io = f.await.map_err(|e| TcpError(e.into()))?;
            Ok(TokioIo::new(Sniff {
                io: io.into_inner(),
                first: FirstBytes::default(),
                seen: 0,
            }))
        })
    }
}

/// The first [`SNIFF_BYTES`] bytes read from a connection, shared with the connection's
/// info (hyper-util hands it back with an error).
#[derive(Clone, Default)]
struct FirstBytes(Arc<Mutex<Vec<u8>>>);

impl FirstBytes {
    fn get(&self) -> Vec<u8> {
        self.0.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// A TCP stream that keeps the first bytes it reads.
struct Sniff {
    io: TcpStream,
    first: FirstBytes,
    seen: usize,
}

impl Connection for Sniff {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.first.clone())
    }
}

impl AsyncRead for Sniff {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.io).poll_read(cx, buf);
        if self.seen < SNIFF_BYTES {
            if let Poll::Ready(Ok(())) = res {
                let new = buf.filled().get(before..).unwrap_or_default();
                let want = SNIFF_BYTES.saturating_sub(self.seen).min(new.len());
                if want > 0 {
                    if let Ok(mut kept) = self.first.0.lock() {
                        kept.extend_from_slice(new.get(..want).unwrap_or_default());
                    }
                    self.seen = self.seen.saturating_add(want);
                }
            }
        }
        res
    }
}

impl AsyncWrite for Sniff {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(5);

    fn get(url: &str) -> Request<Full<Bytes>> {
        Request::get(url).body(Full::new(Bytes::new())).unwrap()
    }

    /// A server that answers every request head on a connection with `answer` (keeping
    /// the connection open unless `close`), counting the connections it accepted.
    async fn server(answer: &'static [u8], close: bool) -> (String, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let a2 = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                a2.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            got.drain(..end.saturating_add(4));
                            if s.write_all(answer).await.is_err() || close {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    #[tokio::test]
    async fn body_is_capped_and_read_as_asked() {
        let (url, _) = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123456789",
            false,
        )
        .await;
        let c = HttpClient::new(Options::default());
        let r = c.send(get(&url), T, Body::UpTo(10)).await.unwrap();
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"0123456789"[..]));
        let e = c.send(get(&url), T, Body::UpTo(9)).await.unwrap_err();
        assert_eq!(e, HttpError::TooLarge(9));
        let r = c.send(get(&url), T, Body::Drain(4)).await.unwrap();
        assert!(r.body.is_empty() && r.status.is_success());
        let r = c.send(get(&url), T, Body::Discard).await.unwrap();
        assert!(r.body.is_empty() && r.status.is_success());
    }

    /// Sequential requests reuse one pooled connection; with no idle pool each has its own.
    /// Read piece by piece: the pieces make the body; more than the cap (chunked, so not
    /// announced) is `TooLarge`; an announced body over the cap is refused on the head; a
    /// body that stops coming is a `Timeout` at the request's deadline.
    #[tokio::test]
    async fn streaming_bodies_are_capped_and_timed() {
        let c = HttpClient::new(Options::default());
        let all = |mut s: Streaming| async move {
            let mut body = Vec::new();
            loop {
                match s.chunk().await {
                    Ok(Some(b)) => body.extend_from_slice(&b),
                    Ok(None) => return Ok(body),
                    Err(e) => return Err(e),
                }
            }
        };
        let (url, _) = server(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
            false,
        )
        .await;
        let s = c.open(get(&url), T, 11).await.unwrap();
        assert_eq!(s.status, StatusCode::OK);
        assert_eq!(all(s).await.unwrap(), b"hello world");
        let s = c.open(get(&url), T, 10).await.unwrap();
        assert_eq!(all(s).await.unwrap_err(), HttpError::TooLarge(10));
        let (url, _) = server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world",
            false,
        )
        .await;
        let e = c.open(get(&url), T, 10).await.unwrap_err();
        assert_eq!(e, HttpError::TooLarge(10));
        // announces 11 bytes, sends 5 and stops
        let (url, _) = server(b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello", false).await;
        let short = Duration::from_millis(300);
        let started = Instant::now();
        let s = c.open(get(&url), short, 100).await.unwrap();
        assert_eq!(all(s).await.unwrap_err(), HttpError::Timeout(short));
        assert!(started.elapsed() < T);
    }

    #[tokio::test]
    async fn pool_is_bounded() {
        let (url, accepted) = server(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let c = HttpClient::new(Options::default());
        for _ in 0..5 {
            c.send(get(&url), T, Body::UpTo(0)).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        let (url, accepted) = server(b"HTTP/1.1 204 No Content\r\n\r\n", false).await;
        let c = HttpClient::new(Options {
            max_idle_per_host: 0,
            ..Options::default()
        });
        for _ in 0..3 {
            c.send(get(&url), T, Body::UpTo(0)).await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn failures_are_typed() {
        let c = HttpClient::new(Options::default());
        // a TLS alert record answering plain HTTP
        let (url, _) = server(b"\x15\x03\x03\x00\x02\x02\x46", true).await;
        let e = c.send(get(&url), T, Body::Discard).await.unwrap_err();
        assert_eq!(e, HttpError::TlsRequired);
        // not HTTP, not TLS
        let (url, _) = server(b"SSH-2.0-OpenSSH_9\r\n", true).await;
        let e = c.send(get(&url), T, Body::Discard).await.unwrap_err();
        assert!(matches!(e, HttpError::Exchange { kind: None, .. }), "{e:?}");
        // nothing listening
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = c
            .send(get(&format!("http://127.0.0.1:{port}/")), T, Body::Discard)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                HttpError::Connect {
                    kind: io::ErrorKind::ConnectionRefused,
                    ..
                }
            ),
            "{e:?}"
        );
        // a name that cannot resolve (RFC 6761 .invalid)
        let e = c
            .send(get("http://no-such-host.invalid/"), T, Body::Discard)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Dns(_)), "{e:?}");
        // https without TLS set up: refused before connecting
        let e = c
            .send(get("https://127.0.0.1:1/"), T, Body::Discard)
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::Request(_)), "{e:?}");
        // a server that never answers: the total timeout
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", l.local_addr().unwrap());
        let e = c
            .send(get(&url), Duration::from_millis(200), Body::Discard)
            .await
            .unwrap_err();
        assert_eq!(e, HttpError::Timeout(Duration::from_millis(200)));
    }
}
