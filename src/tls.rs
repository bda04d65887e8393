//! TLS for the Kafka, MongoDB and HTTP probes: rustls with the ring provider, configured the
//! way gravity's own client is (CA file, client certificate, verification on or off), and
//! failures turned into precise reasons:
//!
//! * a handshake or certificate failure (untrusted or expired certificate, wrong host name,
//!   the peer does not speak TLS) is `FailureReason::Tls` with what rustls reported;
//! * a plaintext client answered with a TLS alert record is `FailureReason::TlsRequired`
//!   (see [`looks_like_tls_alert`]).
//!
//! Building a configuration reads files: [`client_config`] runs on a blocking thread.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::base::sanitize;

/// How to set up TLS to an endpoint (from gravity's config).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust; `None`: the system's trust store (the
    /// Mozilla roots when it is empty).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain (mutual TLS), with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
    /// Skip certificate verification (what gravity does in that configuration).
    pub insecure_skip_verify: bool,
}

/// Why TLS could not be set up or the handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file named in the config could not be read or holds no usable PEM.
    #[error("TLS setup: {0}")]
    Setup(String),
    /// The handshake failed (certificate, protocol, alert from the server).
    #[error("TLS handshake failed: {0}")]
    Handshake(String),
}

/// Builds a rustls client configuration (ring provider, TLS 1.2 and 1.3). Reads the files:
/// call it from a blocking thread (see [`client_config_async`]).
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = if opts.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match &opts.ca_file {
            Some(path) => {
                let certs = read_certs(path)?;
                let (added, _) = roots.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(TlsError::Setup(format!(
                        "no usable CA certificate in {}",
                        sanitize(&path.display().to_string(), 100)
                    )));
                }
            }
            None => {
                // The system's trust store, as gravity's Go runtime uses; the Mozilla roots
                // when the system has none.
                let native = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(native.certs);
                if added == 0 {
                    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                }
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&opts.cert_file, &opts.key_file) {
        (Some(cert), Some(key)) => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                TlsError::Setup(format!(
                    "cannot read the client key {}: {}",
                    sanitize(&key.display().to_string(), 100),
                    sanitize(&e.to_string(), 80)
                ))
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| TlsError::Setup(format!("client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// [`client_config`] on a blocking thread.
pub async fn client_config_async(opts: &TlsOptions) -> Result<Arc<ClientConfig>, TlsError> {
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || client_config(&opts))
        .await
        .map_err(|e| TlsError::Setup(format!("TLS setup task failed: {e}")))?
}

fn read_certs(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let shown = || sanitize(&path.display().to_string(), 100);
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| {
            TlsError::Setup(format!(
                "cannot read {}: {}",
                shown(),
                sanitize(&e.to_string(), 80)
            ))
        })?
        .take(1000)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            TlsError::Setup(format!(
                "bad PEM in {}: {}",
                shown(),
                sanitize(&e.to_string(), 80)
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError::Setup(format!("no certificate in {}", shown())));
    }
    Ok(certs)
}

/// TLS handshake over `stream` to `host` (a DNS name or an IP literal).
pub async fn connect(
    stream: TcpStream,
    host: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsStream<TcpStream>, TlsError> {
    let name = ServerName::try_from(host.to_string()).map_err(|_| {
        TlsError::Setup(format!(
            "{} is not a valid TLS server name",
            sanitize(host, 100)
        ))
    })?;
    TlsConnector::from(config)
        .connect(name, stream)
        .await
        .map_err(|e| TlsError::Handshake(describe_io(&e)))
}

/// Words for a handshake failure: rustls's own error when there is one.
pub fn describe_io(e: &std::io::Error) -> String {
    let text = match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(err) => describe_rustls(err),
        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the handshake".to_string()
        }
        None => e.to_string(),
    };
    sanitize(&text, 160)
}

/// Words for rustls's error of a failed handshake (also used by [`crate::http_client`]).
pub fn describe_rustls(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => format!("server certificate rejected: {c:?}"),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server does not speak TLS on this port".to_string()
        }
        other => other.to_string(),
    }
}

/// Whether `first_bytes` of an answer to a plaintext request are a TLS alert record
/// (content type 21, version 3.x): a TLS-only listener refusing a plaintext client. Used by
/// the Kafka and Mongo probes and by [`crate::http_client`].
pub fn looks_like_tls_alert(first_bytes: &[u8]) -> bool {
    matches!(first_bytes, [0x15, 0x03, 0x00..=0x04, ..])
}

/// The verifier of `insecure_skip_verify`: accepts any certificate, still checks the
/// handshake signatures (as Go's `InsecureSkipVerify` does).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
