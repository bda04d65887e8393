//! TLS for the fake servers of the tests: a rustls acceptor (ring provider) and a throw-away
//! PKI made with rcgen (a CA, a server certificate for 127.0.0.1/localhost, a client
//! certificate, and an unrelated CA), written as PEM files the way gravity's config names
//! them (`ca-file`, `cert-file`, `key-file`).

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// Server-side TLS with `cert_chain` and `key`; with `client_ca`, a client certificate
/// signed by it is required (mutual TLS).
pub fn acceptor(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<CertificateDer<'static>>,
) -> Result<TlsAcceptor, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca).map_err(|e| e.to_string())?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(cert_chain, key)
        .map_err(|e| e.to_string())?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A test PKI in a temporary directory (removed when dropped).
pub struct Pki {
    /// The directory holding the PEM files.
    pub dir: tempfile::TempDir,
    /// The CA that signed the server and client certificates.
    pub ca_file: PathBuf,
    /// A CA that signed nothing here (an untrusted server certificate for clients trusting it).
    pub other_ca_file: PathBuf,
    /// Client certificate (CN gravity), signed by the CA.
    pub client_cert_file: PathBuf,
    /// Its private key.
    pub client_key_file: PathBuf,
    ca_der: CertificateDer<'static>,
    server_der: CertificateDer<'static>,
    server_key: Vec<u8>,
}

fn new_ca() -> Result<(rcgen::Certificate, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    Ok((p.self_signed(&key)?, key))
}

impl Pki {
    /// Makes the PKI.
    pub fn new() -> Result<Pki, String> {
        let e = |e: rcgen::Error| e.to_string();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let (ca, ca_key) = new_ca().map_err(e)?;
        let (other, _) = new_ca().map_err(e)?;
        let server_key = KeyPair::generate().map_err(e)?;
        let server = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .map_err(e)?
            .signed_by(&server_key, &ca, &ca_key)
            .map_err(e)?;
        let client_key = KeyPair::generate().map_err(e)?;
        let client = CertificateParams::new(vec!["gravity".into()])
            .map_err(e)?
            .signed_by(&client_key, &ca, &ca_key)
            .map_err(e)?;
        let write = |name: &str, text: String| -> Result<PathBuf, String> {
            let p = dir.path().join(name);
            std::fs::write(&p, text).map_err(|e| e.to_string())?;
            Ok(p)
        };
        Ok(Pki {
            ca_file: write("ca.pem", ca.pem())?,
            other_ca_file: write("other-ca.pem", other.pem())?,
            client_cert_file: write("client.pem", client.pem())?,
            client_key_file: write("client.key", client_key.serialize_pem())?,
            ca_der: ca.der().clone(),
            server_der: server.der().clone(),
            server_key: server_key.serialize_der(),
            dir,
        })
    }

    /// The server side; `mutual`: a client certificate signed by the CA is required.
    pub fn acceptor(&self, mutual: bool) -> Result<TlsAcceptor, String> {
        acceptor(
            vec![self.server_der.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone())),
            mutual.then(|| self.ca_der.clone()),
        )
    }

    /// Client options trusting this CA (no client certificate).
    pub fn options(&self) -> gravity_exporter::tls::TlsOptions {
        gravity_exporter::tls::TlsOptions {
            ca_file: Some(self.ca_file.clone()),
            ..Default::default()
        }
    }

    /// Client options trusting this CA and presenting the client certificate (what gravity
    /// does with cert-file, key-file and ca-file).
    pub fn mutual_options(&self) -> gravity_exporter::tls::TlsOptions {
        gravity_exporter::tls::TlsOptions {
            ca_file: Some(self.ca_file.clone()),
            cert_file: Some(self.client_cert_file.clone()),
            key_file: Some(self.client_key_file.clone()),
            insecure_skip_verify: false,
        }
    }
}
