//! Sending OTLP export requests: gRPC through tonic's generated clients (a lazily connected
//! channel, rustls with the *ring* provider, gzip) or HTTP/protobuf through the exporter's one
//! HTTP client ([`crate::http_client`], with the `--otlp.tls.*` rustls configuration; POST to
//! `/v1/{metrics,logs,traces}`, `application/x-protobuf`, gzip). Every export has a deadline
//! (`--otlp.timeout`); headers are sent as sensitive values and never appear in an error.
#![warn(clippy::arithmetic_side_effects)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_client::LogsServiceClient, ExportLogsServiceRequest,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    trace_service_client::TraceServiceClient, ExportTraceServiceRequest,
};
use prost::Message;

use crate::config::otlp::read_tls_file as read;
pub use crate::config::otlp::{check_tls, SetupError};
use crate::config::otlp::{rustls_config, OtlpSettings, Protocol};
use crate::http_client::{self, HttpClient, HttpError};
use crate::redact::Secret;

/// Longest response body of an HTTP export read (the rest is dropped).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Metrics.
    Metrics,
    /// Logs.
    Logs,
    /// Traces.
    Traces,
}

impl Signal {
    /// All of them, in label order.
    pub const ALL: [Signal; 3] = [Signal::Logs, Signal::Metrics, Signal::Traces];

    /// The `signal` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
            Signal::Traces => "traces",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
            Signal::Traces => "/v1/traces",
        }
    }
}

/// One export request.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Metrics.
    Metrics(ExportMetricsServiceRequest),
    /// Logs.
    Logs(ExportLogsServiceRequest),
    /// Traces.
    Traces(ExportTraceServiceRequest),
}

impl Payload {
    /// Its signal.
    pub fn signal(&self) -> Signal {
        match self {
            Payload::Metrics(_) => Signal::Metrics,
            Payload::Logs(_) => Signal::Logs,
            Payload::Traces(_) => Signal::Traces,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            Payload::Metrics(r) => r.encode_to_vec(),
            Payload::Logs(r) => r.encode_to_vec(),
            Payload::Traces(r) => r.encode_to_vec(),
        }
    }
}

/// Why an export failed (never carries a header value).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No answer within `--otlp.timeout`.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The gRPC call failed.
    #[error("gRPC status {code:?}: {message}")]
    Grpc {
        /// The status code.
        code: tonic::Code,
        /// Its message (cut to 200 bytes).
        message: String,
    },
    /// The HTTP answer was not 2xx.
    #[error("HTTP status {0}")]
    Http(u16),
    /// The connection or request failed.
    #[error("{0}")]
    Transport(String),
}

enum Kind {
    Grpc(tonic::transport::Channel),
    Http {
        client: Box<HttpClient>,
        urls: Box<[Uri; 3]>,
    },
}

/// Sends export requests to the configured endpoint.
pub struct Transport {
    kind: Kind,
    headers: Vec<(String, Secret)>,
    timeout: Duration,
    gzip: bool,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("headers", &self.headers.len())
            .field("timeout", &self.timeout)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

fn signal_url(s: &OtlpSettings, signal: Signal) -> Result<Uri, SetupError> {
    let given = match signal {
        Signal::Metrics => &s.metrics_endpoint,
        Signal::Logs => &s.logs_endpoint,
        Signal::Traces => &s.traces_endpoint,
    };
    let url = match given {
        Some(u) => u.clone(),
        None => format!("{}{}", s.endpoint.trim_end_matches('/'), signal.path()),
    };
    url.parse()
        .map_err(|_| SetupError::Endpoint(format!("{url:?} is not a URL")))
}

impl Transport {
    /// Sets the transport up; connects lazily (nothing is dialled here). Needs a tokio runtime.
    pub fn new(s: &OtlpSettings) -> Result<Transport, SetupError> {
        let kind = match s.protocol {
            Protocol::Grpc => {
                let mut ep = tonic::transport::Endpoint::from_shared(s.endpoint.clone())
                    .map_err(|e| SetupError::Endpoint(e.to_string()))?
                    .connect_timeout(s.timeout)
                    .timeout(s.timeout);
                if s.endpoint.starts_with("https://") {
                    let mut tls = tonic::transport::ClientTlsConfig::new();
                    match &s.ca_file {
                        Some(p) => {
                            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(read(
                                "otlp.tls.ca-file",
                                p,
                            )?))
                        }
                        None => tls = tls.with_webpki_roots(),
                    }
                    if let (Some(c), Some(k)) = (&s.cert_file, &s.key_file) {
                        tls = tls.identity(tonic::transport::Identity::from_pem(
                            read("otlp.tls.cert-file", c)?,
                            read("otlp.tls.key-file", k)?,
                        ));
                    }
                    ep = ep.tls_config(tls).map_err(|e| SetupError::Tls {
                        key: "otlp.tls",
                        reason: e.to_string(),
                    })?;
                }
                Kind::Grpc(ep.connect_lazy())
            }
            Protocol::HttpProtobuf => {
                // the exporter's one HTTP client, with the --otlp.tls.* configuration
                let client = HttpClient::new(http_client::Options {
                    tls: Some(Arc::new(rustls_config(s)?)),
                    max_idle_per_host: 1,
                    idle_timeout: Duration::from_secs(90),
                    connect_timeout: s.timeout,
                });
                Kind::Http {
                    client: Box::new(client),
                    urls: Box::new([
                        signal_url(s, Signal::Metrics)?,
                        signal_url(s, Signal::Logs)?,
                        signal_url(s, Signal::Traces)?,
                    ]),
                }
            }
        };
        Ok(Transport {
            kind,
            headers: s.headers.clone(),
            timeout: s.timeout,
            gzip: s.gzip,
        })
    }

    /// The deadline of one export.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request within the deadline.
    pub async fn send(&self, payload: Payload) -> Result<(), ExportError> {
        match tokio::time::timeout(self.timeout, self.send_inner(payload)).await {
            Ok(r) => r,
            Err(_) => Err(ExportError::Timeout(self.timeout)),
        }
    }

    fn grpc_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        for (k, v) in &self.headers {
            let (Ok(key), Ok(mut val)) = (
                tonic::metadata::MetadataKey::from_bytes(k.as_bytes()),
                tonic::metadata::MetadataValue::try_from(v.expose()),
            ) else {
                continue;
            };
            val.set_sensitive(true);
            req.metadata_mut().insert(key, val);
        }
        req
    }

    async fn send_inner(&self, payload: Payload) -> Result<(), ExportError> {
        match &self.kind {
            Kind::Grpc(ch) => {
                let gz = tonic::codec::CompressionEncoding::Gzip;
                let res = match payload {
                    Payload::Metrics(r) => {
                        let mut c = MetricsServiceClient::new(ch.clone());
                        if self.gzip {
                            c = c.send_compressed(gz);
                        }
                        c.export(self.grpc_request(r)).await.map(|_| ())
                    }
                    Payload::Logs(r) => {
                        let mut c = LogsServiceClient::new(ch.clone());
                        if self.gzip {
                            c = c.send_compressed(gz);
                        }
                        c.export(self.grpc_request(r)).await.map(|_| ())
                    }
                    Payload::Traces(r) => {
                        let mut c = TraceServiceClient::new(ch.clone());
                        if self.gzip {
                            c = c.send_compressed(gz);
                        }
                        c.export(self.grpc_request(r)).await.map(|_| ())
                    }
                };
                res.map_err(|st| ExportError::Grpc {
                    code: st.code(),
                    message: crate::base::cut(st.message(), 200).to_string(),
                })
            }
            Kind::Http { client, urls } => {
                let signal = payload.signal();
                let url = match signal {
                    Signal::Metrics => &urls[0],
                    Signal::Logs => &urls[1],
                    Signal::Traces => &urls[2],
                };
                // encoding and compressing is CPU work: off the runtime threads
                let gzip = self.gzip;
                let body = tokio::task::spawn_blocking(move || {
                    let raw = payload.encode();
                    if gzip {
                        use std::io::Write;
                        let mut enc = flate2::write::GzEncoder::new(
                            Vec::with_capacity(raw.len() / 4),
                            flate2::Compression::fast(),
                        );
                        enc.write_all(&raw).and_then(|()| enc.finish())
                    } else {
                        Ok(raw)
                    }
                })
                .await
                .map_err(|e| ExportError::Transport(e.to_string()))?
                .map_err(|e| ExportError::Transport(e.to_string()))?;
                let mut req = hyper::Request::post(url.clone())
                    .header(hyper::header::CONTENT_TYPE, "application/x-protobuf");
                if gzip {
                    req = req.header(hyper::header::CONTENT_ENCODING, "gzip");
                }
                for (k, v) in &self.headers {
                    if let Ok(mut val) = hyper::header::HeaderValue::from_str(v.expose()) {
                        val.set_sensitive(true);
                        req = req.header(k.as_str(), val);
                    }
                }
                let req = req
                    .body(Full::new(Bytes::from(body)))
                    .map_err(|e| ExportError::Transport(e.to_string()))?;
                // read (a bounded part of) the answer so the connection can be reused
                let res = client
                    .send(
                        req,
                        self.timeout,
                        http_client::Body::Drain(MAX_RESPONSE_BYTES),
                    )
                    .await
                    .map_err(|e| match e {
                        HttpError::Timeout(t) => ExportError::Timeout(t),
                        other => ExportError::Transport(other.to_string()),
                    })?;
                let status = res.status;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(ExportError::Http(status.as_u16()))
                }
            }
        }
    }
}
