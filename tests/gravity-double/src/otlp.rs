//! An OTLP receiver for the tests: the collector side of OTLP/gRPC (tonic, with the service
//! traits generated from the official protobuf definitions by `opentelemetry-proto`) and of
//! OTLP/HTTP with binary protobuf bodies (`POST /v1/{metrics,logs,traces}`), both accepting
//! gzip. It stands in for an OpenTelemetry Collector, which cannot be installed here: it
//! decodes and keeps what it receives, and can be switched to answer errors or to answer
//! slowly, as a failing or overloaded collector would. Both can serve TLS (rustls, the
//! *ring* provider) with a certificate the test makes, and require a client certificate
//! (mutual TLS), as a Collector's `tls` settings (`cert_file`, `key_file`, `client_ca_file`) do.
//!
//! [`prometheus_name`] is the name translation of Prometheus' OTLP receiver and the
//! Collector's Prometheus exporters (`otlptranslator`, `UnderscoreEscapingWithSuffixes`), so
//! the tests can check that the exporter's OTLP names come out as its `/metrics` names.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_server::{LogsService, LogsServiceServer},
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_server::{MetricsService, MetricsServiceServer},
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_server::{TraceService, TraceServiceServer},
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::sync::oneshot;

/// How the receiver answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accept and keep every request.
    Accept,
    /// Answer `UNAVAILABLE` (gRPC) / 503 (HTTP) and keep nothing.
    Fail,
    /// Wait this long, then accept.
    Slow(Duration),
}

/// Everything received so far.
#[derive(Debug, Default, Clone)]
pub struct Received {
    /// Metrics requests, in arrival order.
    pub metrics: Vec<ExportMetricsServiceRequest>,
    /// Logs requests.
    pub logs: Vec<ExportLogsServiceRequest>,
    /// Traces requests.
    pub traces: Vec<ExportTraceServiceRequest>,
    /// The headers (gRPC metadata) of every request, lower-case names.
    pub headers: Vec<Vec<(String, String)>>,
    /// Requests that came gzip-compressed.
    pub gzipped: u64,
    /// Requests answered with an error.
    pub refused: u64,
    /// TLS handshakes that failed (HTTP receiver only; tonic's server drops them unseen).
    pub tls_failures: u64,
}

/// TLS of a receiver: its certificate chain and key (PEM) and, for mutual TLS, the CA
/// (PEM) its clients' certificates must chain to (a client without one is refused).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Certificate chain (PEM).
    pub cert_pem: String,
    /// Private key (PEM).
    pub key_pem: String,
    /// CA of the client certificates; `None`: no client certificate asked for.
    pub client_ca_pem: Option<String>,
}

impl ServerTls {
    /// The rustls server configuration (ring provider, TLS 1.2 and 1.3, ALPN `alpn`).
    fn rustls(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions");
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(c.expect("client CA PEM")).expect("client CA");
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("server certificate PEM");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("server key PEM");
        let mut cfg = builder
            .with_single_cert(certs, key)
            .expect("server certificate and key");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

/// State shared with the servers.
#[derive(Debug)]
pub struct State {
    received: Mutex<Received>,
    mode: Mutex<Mode>,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mode(&self) -> Mode {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies the mode; `Err` when the request is to be refused.
    async fn answer(&self) -> Result<(), ()> {
        match self.mode() {
            Mode::Accept => Ok(()),
            Mode::Slow(d) => {
                tokio::time::sleep(d).await;
                Ok(())
            }
            Mode::Fail => {
                self.lock().refused += 1;
                Err(())
            }
        }
    }
}

/// A running receiver; stops when dropped.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    tls: bool,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

impl Receiver {
    /// The endpoint to give the exporter (`http://127.0.0.1:port`, `https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// A copy of everything received so far.
    pub fn received(&self) -> Received {
        self.state.lock().clone()
    }

    /// Everything received so far, which is forgotten (a long-running receiver keeps its
    /// memory bounded this way).
    pub fn take(&self) -> Received {
        std::mem::take(&mut *self.state.lock())
    }

    /// Changes how it answers from now on.
    pub fn set_mode(&self, m: Mode) {
        *self
            .state
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = m;
    }

    fn new_state(mode: Mode) -> Arc<State> {
        Arc::new(State {
            received: Mutex::new(Received::default()),
            mode: Mutex::new(mode),
        })
    }

    /// An OTLP/gRPC receiver on 127.0.0.1 (a free port).
    pub async fn grpc(mode: Mode) -> Receiver {
        Self::grpc_with(mode, None).await
    }

    /// An OTLP/gRPC receiver over TLS (tonic's rustls server; with `client_ca_pem`, mutual TLS).
    pub async fn grpc_tls(mode: Mode, tls: &ServerTls) -> Receiver {
        Self::grpc_with(mode, Some(tls)).await
    }

    /// An OTLP/gRPC receiver (no TLS) on `bind` (`host:port`), for the standalone receiver.
    pub async fn grpc_on(bind: &str, mode: Mode) -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        Ok(Self::grpc_listening(listener, mode, None))
    }

    async fn grpc_with(mode: Mode, tls: Option<&ServerTls>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::grpc_listening(listener, mode, tls)
    }

    fn grpc_listening(
        listener: tokio::net::TcpListener,
        mode: Mode,
        tls: Option<&ServerTls>,
    ) -> Receiver {
        let addr = listener.local_addr().expect("local addr");
        let state = Self::new_state(mode);
        let svc = Grpc(Arc::clone(&state));
        let gz = tonic::codec::CompressionEncoding::Gzip;
        let (tx, rx) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(t) = tls {
            let mut cfg = tonic::transport::ServerTlsConfig::new().identity(
                tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem),
            );
            if let Some(ca) = &t.client_ca_pem {
                cfg = cfg
                    .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                    .client_auth_optional(false);
            }
            builder = builder.tls_config(cfg).expect("receiver TLS config");
        }
        tokio::spawn(async move {
            let _ = builder
                .add_service(MetricsServiceServer::new(svc.clone()).accept_compressed(gz))
                .add_service(LogsServiceServer::new(svc.clone()).accept_compressed(gz))
                .add_service(TraceServiceServer::new(svc).accept_compressed(gz))
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async move {
                        let _ = rx.await;
                    },
                )
                .await;
        });
        Receiver {
            addr,
            tls: tls.is_some(),
            state,
            stop: Some(tx),
        }
    }

    /// An OTLP/HTTP (binary protobuf) receiver on 127.0.0.1 (a free port).
    pub async fn http(mode: Mode) -> Receiver {
        Self::http_with(mode, None).await
    }

    /// An OTLP/HTTP receiver over TLS (tokio-rustls; with `client_ca_pem`, mutual TLS).
    /// Failed handshakes are counted in [`Received::tls_failures`].
    pub async fn http_tls(mode: Mode, tls: &ServerTls) -> Receiver {
        Self::http_with(mode, Some(tls)).await
    }

    /// An OTLP/HTTP receiver (no TLS) on `bind` (`host:port`), for the standalone receiver.
    pub async fn http_on(bind: &str, mode: Mode) -> std::io::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        Ok(Self::http_listening(listener, mode, None))
    }

    async fn http_with(mode: Mode, tls: Option<&ServerTls>) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::http_listening(listener, mode, tls)
    }

    fn http_listening(
        listener: tokio::net::TcpListener,
        mode: Mode,
        tls: Option<&ServerTls>,
    ) -> Receiver {
        let acceptor = tls.map(|t| tokio_rustls::TlsAcceptor::from(t.rustls(&[b"http/1.1"])));
        let addr = listener.local_addr().expect("local addr");
        let state = Self::new_state(mode);
        let (tx, mut rx) = oneshot::channel::<()>();
        let st = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let conn = tokio::select! {
                    c = listener.accept() => c,
                    _ = &mut rx => return,
                };
                let Ok((stream, _)) = conn else { continue };
                let st = Arc::clone(&st);
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        None => serve_http(stream, st).await,
                        Some(a) => {
                            let hs =
                                tokio::time::timeout(Duration::from_secs(10), a.accept(stream));
                            match hs.await {
                                Ok(Ok(tls)) => serve_http(tls, st).await,
                                _ => st.lock().tls_failures += 1,
                            }
                        }
                    }
                });
            }
        });
        Receiver {
            addr,
            tls: tls.is_some(),
            state,
            stop: Some(tx),
        }
    }
}

async fn serve_http<IO>(io: IO, st: Arc<State>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let st = Arc::clone(&st);
        async move { Ok::<_, Infallible>(http_answer(&st, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
}

fn headers_of(h: &hyper::HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn http_answer(
    st: &State,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let reply = |code: u16| {
        hyper::Response::builder()
            .status(code)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::new()))
            .expect("static response")
    };
    if req.method() != hyper::Method::POST {
        return reply(405);
    }
    let path = req.uri().path().to_string();
    let headers = headers_of(req.headers());
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v.as_bytes() == b"gzip");
    let Ok(body) = Limited::new(req.into_body(), 64 << 20).collect().await else {
        return reply(400);
    };
    let mut body = body.to_bytes().to_vec();
    if gzip {
        use std::io::Read;
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return reply(400);
        }
        body = out;
    }
    if st.answer().await.is_err() {
        return reply(503);
    }
    let mut r = st.lock();
    r.headers.push(headers);
    if gzip {
        r.gzipped += 1;
    }
    let ok = match path.as_str() {
        "/v1/metrics" => ExportMetricsServiceRequest::decode(&body[..])
            .map(|m| r.metrics.push(m))
            .is_ok(),
        "/v1/logs" => ExportLogsServiceRequest::decode(&body[..])
            .map(|m| r.logs.push(m))
            .is_ok(),
        "/v1/traces" => ExportTraceServiceRequest::decode(&body[..])
            .map(|m| r.traces.push(m))
            .is_ok(),
        _ => return reply(404),
    };
    reply(if ok { 200 } else { 400 })
}

#[derive(Clone)]
struct Grpc(Arc<State>);

impl Grpc {
    async fn take<T>(&self, req: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let headers = headers_of(&req.metadata().clone().into_headers());
        let gzip = req
            .metadata()
            .get("grpc-encoding")
            .is_some_and(|v| v.as_bytes() == b"gzip");
        if self.0.answer().await.is_err() {
            return Err(tonic::Status::unavailable("receiver told to refuse"));
        }
        let mut r = self.0.lock();
        r.headers.push(headers);
        if gzip {
            r.gzipped += 1;
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.take(&request).await?;
        self.0.lock().metrics.push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.take(&request).await?;
        self.0.lock().logs.push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.take(&request).await?;
        self.0.lock().traces.push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The OTLP metric kinds that matter to the name translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Gauge.
    Gauge,
    /// Monotonic sum (a Prometheus counter).
    MonotonicSum,
    /// Non-monotonic sum (a Prometheus gauge).
    Sum,
    /// Histogram.
    Histogram,
    /// Summary.
    Summary,
}

/// UCUM units to the Prometheus suffix words (otlptranslator's `unitMap`).
fn unit_word(u: &str) -> String {
    match u {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    }
    .to_string()
}

/// The time units of a `per` unit (otlptranslator's `perUnitMap`).
fn per_word(u: &str) -> String {
    match u {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
    .to_string()
}

/// The Prometheus metric name Prometheus' OTLP translation (`otlptranslator`,
/// `UnderscoreEscapingWithSuffixes`, the default of Prometheus' OTLP receiver and of the
/// Collector's Prometheus exporters) makes of an OTLP metric: the name split into words at
/// every character that is not a letter or digit; the unit's word appended unless the name
/// already has it (`{annotations}` dropped, `a/b` → `a_per_b`); `_total` moved to the end of
/// monotonic sums; `_ratio` for gauges of unit `1`; `_` before a leading digit.
pub fn prometheus_name(name: &str, unit: &str, kind: Kind) -> String {
    let mut tokens: Vec<String> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    // drop {annotations}
    let mut clean = String::new();
    let mut depth = 0;
    for c in unit.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => clean.push(c),
            _ => {}
        }
    }
    let (main, per) = match clean.split_once('/') {
        Some((m, p)) => (m.trim().to_string(), p.trim().to_string()),
        None => (clean.trim().to_string(), String::new()),
    };
    let tidy = |s: String| -> String {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join("_")
    };
    let main = tidy(if main.is_empty() {
        String::new()
    } else {
        unit_word(&main)
    });
    let per = if per.is_empty() {
        String::new()
    } else {
        tidy(per_word(&per))
    };
    if !main.is_empty() && !tokens.contains(&main) {
        tokens.extend(main.split('_').map(str::to_string));
    }
    if !per.is_empty() && !tokens.contains(&per) {
        tokens.push("per".into());
        tokens.extend(per.split('_').map(str::to_string));
    }
    if kind == Kind::MonotonicSum {
        tokens.retain(|t| t != "total");
        tokens.push("total".into());
    }
    if unit == "1" && kind == Kind::Gauge {
        tokens.retain(|t| t != "ratio");
        tokens.push("ratio".into());
    }
    let mut out = tokens.join("_");
    if out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_matches_otlptranslator_examples() {
        assert_eq!(
            prometheus_name("system.io", "By", Kind::MonotonicSum),
            "system_io_bytes_total"
        );
        assert_eq!(
            prometheus_name("http.server.duration", "ms", Kind::Histogram),
            "http_server_duration_milliseconds"
        );
        assert_eq!(
            prometheus_name("network.transmit", "By/s", Kind::Gauge),
            "network_transmit_bytes_per_second"
        );
        assert_eq!(
            prometheus_name("cpu.utilization", "1", Kind::Gauge),
            "cpu_utilization_ratio"
        );
        assert_eq!(
            prometheus_name("requests", "{request}", Kind::MonotonicSum),
            "requests_total"
        );
        assert_eq!(
            prometheus_name("gravity_process_cpu_seconds_total", "s", Kind::MonotonicSum),
            "gravity_process_cpu_seconds_total"
        );
        assert_eq!(prometheus_name("2xx.count", "", Kind::Gauge), "_2xx_count");
    }
}
