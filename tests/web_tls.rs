//! `--web.config.file` on the exporter's own port, end to end: a CA, a server and a client
//! certificate made here (rcgen), the exporter serving with TLS, client certificates and
//! bcrypt basic auth, and
//! - Debian's real Prometheus scraping it over https with `tls_config` and `basic_auth`
//!   (`up == 1`; the same target with a wrong password is `up == 0`);
//! - a Rust https client (hyper over tokio-rustls) for: no credentials, wrong password,
//!   unknown user → 401 with `WWW-Authenticate: Basic` on every endpoint; the right ones → 200;
//! - plain HTTP to the TLS port → Go's one-line 400 and the connection closed, while the
//!   server keeps serving; an idle socket does not hold anything up;
//! - `RequireAndVerifyClientCert` with no client certificate, or one from another CA, and a
//!   TLS 1.2 client against `min_version: TLS13` → no answer (handshake refused);
//! - a changed password hash (and a rotated certificate) takes effect without a restart;
//! - the binary with a bad web config exits 2 with one line naming the key, no secret in it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_gravity-exporter");

/// A CA and what it signed, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = make_ca("gx test CA");
        let (other_ca, other_key) = make_ca("some other CA");
        let w = |n: &str, t: String| std::fs::write(dir.path().join(n), t).unwrap();
        w("ca.pem", ca.pem());
        // server: localhost and 127.0.0.1
        let (c, k) = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
            &ca_key,
        );
        w("server.pem", c);
        w("server-key.pem", k);
        // a second server certificate, for rotation
        let (c, k) = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
            &ca_key,
        );
        w("server2.pem", c);
        w("server2-key.pem", k);
        // Prometheus' client certificate
        let (c, k) = leaf(
            &["prometheus"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
            &ca_key,
        );
        w("client.pem", c);
        w("client-key.pem", k);
        // a client certificate from a CA the exporter does not trust
        let (c, k) = leaf(
            &["intruder"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &other_ca,
            &other_key,
        );
        w("intruder.pem", c);
        w("intruder-key.pem", k);
        Pki { dir }
    }
}

fn make_ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    (p.self_signed(&key).unwrap(), key)
}

fn leaf(
    names: &[&str],
    eku: ExtendedKeyUsagePurpose,
    ca: &rcgen::Certificate,
    ca_key: &KeyPair,
) -> (String, String) {
    let mut p =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    p.distinguished_name.push(DnType::CommonName, names[0]);
    p.extended_key_usages = vec![eku];
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca, ca_key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn hash(pw: &str) -> String {
    // cost 4 keeps the test fast; production hashes use 10 or more
    bcrypt::hash(pw, 4).unwrap()
}

/// Writes the web config atomically (rename), as a config management tool would.
fn write_web_config(pki: &Pki, extra_tls: &str, users: &[(&str, &str)]) -> PathBuf {
    let mut y =
        String::from("tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n");
    y.push_str(extra_tls);
    if !users.is_empty() {
        y.push_str("basic_auth_users:\n");
        for (u, pw) in users {
            y.push_str(&format!("  {u}: '{}'\n", hash(pw)));
        }
    }
    y.push_str("http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n");
    let tmp = pki.path("web.yml.tmp");
    std::fs::write(&tmp, y).unwrap();
    let p = pki.path("web.yml");
    std::fs::rename(&tmp, &p).unwrap();
    p
}

const MTLS: &str = "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n";

async fn start_exporter(web: &Path) -> common::Running {
    common::start(common::settings(&[
        "--gravity.url",
        "http://127.0.0.1:9",
        "--probe.interval",
        "0s",
        "--web.config.file",
        web.to_str().unwrap(),
    ]))
    .await
}

struct Client {
    cert: Option<(&'static str, &'static str)>,
    versions: &'static [&'static rustls::SupportedProtocolVersion],
}

const TLS12_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

const WITH_CERT: Client = Client {
    cert: Some(("client.pem", "client-key.pem")),
    versions: rustls::DEFAULT_VERSIONS,
};

fn tls_client(pki: &Pki, c: &Client) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(c.versions)
    .unwrap()
    .with_root_certificates(roots);
    let cfg = match c.cert {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(pki.path(cert))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(pki.path(key)).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// One HTTPS GET; Err when the TLS handshake or the exchange fails. Status, a header, body.
async fn https_get(
    pki: &Pki,
    client: &Client,
    addr: SocketAddr,
    path: &str,
    auth: Option<(&str, &str)>,
) -> Result<(u16, hyper::HeaderMap, String), String> {
    let fut = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = tls_client(pki, client)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("http handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path).header("host", "localhost");
        if let Some((u, p)) = auth {
            let e = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            req = req.header("authorization", format!("Basic {e}"));
        }
        let resp = send
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, headers, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// `promtool check metrics` has nothing to say about the web config's families.
fn lint(body: &str) {
    let Some(promtool) = common::require_promtool() else {
        return;
    };
    let (_, complaints) = common::promtool_check_metrics(&promtool, body);
    assert!(
        !complaints.contains("gravity_exporter_web"),
        "promtool check metrics: {complaints}"
    );
}

/// Kills the child on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn prometheus_bin() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/prometheus");
    if p.exists() {
        return Some(p);
    }
    if std::env::var("GX_SKIP_PROMTOOL").as_deref() == Ok("1") {
        eprintln!("SKIP: /usr/bin/prometheus missing and GX_SKIP_PROMTOOL=1");
        return None;
    }
    panic!("/usr/bin/prometheus not found: run scripts/test.sh (installs Debian's prometheus)");
}

async fn prom_query(port: u16, q: &str) -> Vec<serde_json::Value> {
    let c = gravity_exporter::gravity_api::GravityClient::new();
    let base = format!("http://127.0.0.1:{port}").parse().unwrap();
    let enc: String = q
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Ok(r) = c
        .get(
            &base,
            &format!("/api/v1/query?query={enc}"),
            Duration::from_secs(5),
            1 << 20,
        )
        .await
    else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_over_tls_with_client_cert_and_basic_auth() {
    let Some(prometheus) = prometheus_bin() else {
        return;
    };
    let pki = Pki::new();
    let web = write_web_config(&pki, MTLS, &[("prometheus", "scrape-pw")]);
    let exp = start_exporter(&web).await;
    let prom_port = common::free_port();
    let tls = format!(
        "    tls_config:\n      ca_file: {ca}\n      cert_file: {c}\n      key_file: {k}\n      server_name: localhost\n",
        ca = pki.path("ca.pem").display(),
        c = pki.path("client.pem").display(),
        k = pki.path("client-key.pem").display(),
    );
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: gx\n    scheme: https\n{tls}    basic_auth:\n      username: prometheus\n      password: scrape-pw\n    static_configs:\n      - targets: ['{a}']\n  - job_name: gx_wrong_password\n    scheme: https\n{tls}    basic_auth:\n      username: prometheus\n      password: not-the-password\n    static_configs:\n      - targets: ['{a}']\n",
        a = exp.addr
    );
    std::fs::write(pki.path("prometheus.yml"), cfg).unwrap();
    let data = pki.path("data");
    let _prom = Proc(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                pki.path("prometheus.yml").display()
            ))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let val = |v: &[serde_json::Value]| {
        v.first()
            .and_then(|s| s["value"][1].as_str().map(str::to_string))
    };
    let t0 = std::time::Instant::now();
    loop {
        let good = prom_query(prom_port, "up{job=\"gx\"}").await;
        let bad = prom_query(prom_port, "up{job=\"gx_wrong_password\"}").await;
        if val(&good).as_deref() == Some("1") && val(&bad).as_deref() == Some("0") {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "Prometheus never saw up==1 (and up==0 with a wrong password): {good:?} {bad:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the scrape really got the exporter's metrics through TLS
    let samples = prom_query(prom_port, "gravity_exporter_build_info{job=\"gx\"}").await;
    assert_eq!(samples.len(), 1, "{samples:?}");
    // for the record: what a scrape over TLS + basic auth costs (includes connection reuse)
    let d = prom_query(prom_port, "scrape_duration_seconds{job=\"gx\"}").await;
    eprintln!(
        "scrape_duration_seconds over TLS with client certificate and basic auth: {:?}",
        d.first().map(|s| s["value"][1].clone())
    );
    exp.stop().await;
}

#[tokio::test]
async fn every_endpoint_needs_the_right_credentials() {
    let pki = Pki::new();
    let web = write_web_config(&pki, "", &[("prometheus", "scrape-pw"), ("ops", "ops-pw")]);
    let exp = start_exporter(&web).await;
    let c = Client {
        cert: None,
        versions: rustls::DEFAULT_VERSIONS,
    };
    for path in [
        "/metrics",
        "/",
        "/api/status",
        "/healthz",
        "/-/ready",
        "/nope",
    ] {
        for auth in [
            None,
            Some(("prometheus", "wrong")),
            Some(("prometheus", "")),
            Some(("nobody", "scrape-pw")),
            Some(("ops", "scrape-pw")),
        ] {
            let (status, headers, _) = https_get(&pki, &c, exp.addr, path, auth).await.unwrap();
            assert_eq!(status, 401, "{path} {auth:?}");
            assert_eq!(headers["www-authenticate"], "Basic", "{path}");
            assert_eq!(headers["x-content-type-options"], "nosniff", "{path}");
        }
    }
    let (status, headers, body) = https_get(
        &pki,
        &c,
        exp.addr,
        "/metrics",
        Some(("prometheus", "scrape-pw")),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(body.contains("gravity_exporter_build_info"), "{body}");
    // 6 paths x 5 refused credentials
    assert_eq!(
        common::sample(
            &body,
            "gravity_exporter_web_requests_refused_total",
            &["unauthorized"]
        ),
        Some(30.0),
        "{body}"
    );
    assert_eq!(
        common::sample(
            &body,
            "gravity_exporter_web_config_last_reload_successful",
            &[]
        ),
        Some(1.0)
    );
    let not_after = common::sample(
        &body,
        "gravity_exporter_web_tls_certificate_not_after_timestamp_seconds",
        &[],
    )
    .unwrap();
    let der = CertificateDer::from_pem_file(pki.path("server.pem")).unwrap();
    assert_eq!(
        Some(not_after as i64),
        gravity_exporter::web_config::cert_not_after(der.as_ref())
    );
    lint(&body);
    let (status, _, body) = https_get(&pki, &c, exp.addr, "/api/status", Some(("ops", "ops-pw")))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    // a second request with the same credentials is served from the cache of successes
    let (status, _, _) = https_get(&pki, &c, exp.addr, "/", Some(("ops", "ops-pw")))
        .await
        .unwrap();
    assert_eq!(status, 200);
    exp.stop().await;
}

#[tokio::test]
async fn plain_http_to_the_tls_port_is_refused_and_the_server_keeps_serving() {
    let pki = Pki::new();
    let web = write_web_config(&pki, "", &[("prometheus", "pw")]);
    let exp = start_exporter(&web).await;
    // an idle socket that never says anything
    let _idle = tokio::net::TcpStream::connect(exp.addr).await.unwrap();
    // plain HTTP: Go's answer, then the connection is closed
    let mut s = tokio::net::TcpStream::connect(exp.addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the server closes a plain HTTP connection")
        .ok();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.0 400 Bad Request"), "{got}");
    assert!(
        got.contains("Client sent an HTTP request to an HTTPS server."),
        "{got}"
    );
    assert!(
        !got.contains("gravity_"),
        "no metrics over plain HTTP: {got}"
    );
    // the exporter's own plain HTTP client gets no metrics either
    let c = gravity_exporter::gravity_api::GravityClient::new();
    let base = format!("http://{}", exp.addr).parse().unwrap();
    if let Ok(r) = c
        .get(&base, "/metrics", Duration::from_secs(5), 1 << 20)
        .await
    {
        assert_eq!(r.status.as_u16(), 400);
    }
    // binary garbage: closed without an answer
    let mut s = tokio::net::TcpStream::connect(exp.addr).await.unwrap();
    s.write_all(&[0u8, 1, 2, 3, 0xff]).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut got))
        .await
        .expect("the server closes a non-TLS connection")
        .ok();
    assert!(got.is_empty(), "{got:?}");
    // and TLS clients are still served, with the idle socket still open
    let c = Client {
        cert: None,
        versions: rustls::DEFAULT_VERSIONS,
    };
    let (status, _, body) = https_get(&pki, &c, exp.addr, "/metrics", Some(("prometheus", "pw")))
        .await
        .unwrap();
    assert_eq!(status, 200);
    // the raw plain HTTP request, the plain HTTP client, the garbage
    assert_eq!(
        common::sample(
            &body,
            "gravity_exporter_web_connections_refused_total",
            &["not_tls"]
        ),
        Some(3.0),
        "{body}"
    );
    exp.stop().await;
}

#[tokio::test]
async fn client_certificates_and_tls_versions_are_enforced() {
    let pki = Pki::new();
    let web = write_web_config(&pki, MTLS, &[]);
    let exp = start_exporter(&web).await;
    let (status, _, _) = https_get(&pki, &WITH_CERT, exp.addr, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    for client in [
        Client {
            cert: None,
            versions: rustls::DEFAULT_VERSIONS,
        },
        Client {
            cert: Some(("intruder.pem", "intruder-key.pem")),
            versions: rustls::DEFAULT_VERSIONS,
        },
        // TLS 1.2: the refusal comes in the handshake itself
        Client {
            cert: None,
            versions: TLS12_ONLY,
        },
    ] {
        let r = https_get(&pki, &client, exp.addr, "/metrics", None).await;
        assert!(r.is_err(), "{:?}: {r:?}", client.cert);
        assert_ne!(r.as_ref().err().map(String::as_str), Some("timed out"));
    }
    let (_, _, body) = https_get(&pki, &WITH_CERT, exp.addr, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(
        common::sample(
            &body,
            "gravity_exporter_web_connections_refused_total",
            &["tls_handshake"]
        ),
        Some(3.0),
        "{body}"
    );
    exp.stop().await;

    // min_version TLS13: a TLS 1.2-only client is refused, a TLS 1.3 one served
    let web = write_web_config(&pki, "  min_version: TLS13\n", &[]);
    let exp = start_exporter(&web).await;
    let only12 = Client {
        cert: None,
        versions: TLS12_ONLY,
    };
    let r = https_get(&pki, &only12, exp.addr, "/metrics", None).await;
    assert!(r.is_err(), "{r:?}");
    let only13 = Client {
        cert: None,
        versions: TLS13_ONLY,
    };
    let (status, _, _) = https_get(&pki, &only13, exp.addr, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    exp.stop().await;

    // client_allowed_sans: the client certificate (SAN DNS "prometheus") must name one
    let web = write_web_config(
        &pki,
        &format!("{MTLS}  client_allowed_sans: [someone-else, 10.0.0.1]\n"),
        &[],
    );
    let exp = start_exporter(&web).await;
    let r = https_get(&pki, &WITH_CERT, exp.addr, "/metrics", None).await;
    assert!(r.is_err(), "{r:?}");
    exp.stop().await;
    let web = write_web_config(
        &pki,
        &format!("{MTLS}  client_allowed_sans: [someone-else, prometheus]\n"),
        &[],
    );
    let exp = start_exporter(&web).await;
    let (status, _, _) = https_get(&pki, &WITH_CERT, exp.addr, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    exp.stop().await;

    // cipher_suites: TLS 1.2 with only the listed suite
    let web = write_web_config(
        &pki,
        "  max_version: TLS12\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256]\n",
        &[],
    );
    let exp = start_exporter(&web).await;
    let (status, _, _) = https_get(&pki, &only12, exp.addr, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    exp.stop().await;
}

#[tokio::test]
async fn a_changed_password_hash_and_a_rotated_certificate_take_effect_without_restart() {
    let pki = Pki::new();
    let web = write_web_config(&pki, "", &[("prometheus", "old-pw")]);
    let exp = start_exporter(&web).await;
    let c = Client {
        cert: None,
        versions: rustls::DEFAULT_VERSIONS,
    };
    let get = |pw: &'static str| {
        let (pki, c, addr) = (&pki, &c, exp.addr);
        async move {
            https_get(pki, c, addr, "/metrics", Some(("prometheus", pw)))
                .await
                .map(|r| r.0)
                .unwrap_or(0)
        }
    };
    assert_eq!(get("old-pw").await, 200);
    assert_eq!(get("new-pw").await, 401);
    write_web_config(&pki, "", &[("prometheus", "new-pw")]);
    let took = common::wait_for(Duration::from_secs(15), || async {
        get("new-pw").await == 200 && get("old-pw").await == 401
    })
    .await;
    assert!(took.is_some(), "the new password hash never took effect");

    // an open keep-alive connection (as Prometheus keeps between scrapes) follows the change
    // too: credentials are checked against the config in force at each request
    let tcp = tokio::net::TcpStream::connect(exp.addr).await.unwrap();
    let tls = tls_client(&pki, &c)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut on_conn = |pw: &str| {
        let e = base64::engine::general_purpose::STANDARD.encode(format!("prometheus:{pw}"));
        let req = hyper::Request::get("/metrics")
            .header("host", "localhost")
            .header("authorization", format!("Basic {e}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        let fut = send.send_request(req);
        async move {
            let r = fut.await.unwrap();
            let st = r.status().as_u16();
            let _ = r.into_body().collect().await;
            st
        }
    };
    assert_eq!(on_conn("new-pw").await, 200);
    write_web_config(&pki, "", &[("prometheus", "newer-pw")]);
    let t0 = std::time::Instant::now();
    loop {
        if on_conn("new-pw").await == 401 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "a keep-alive connection kept accepting the old password"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(on_conn("newer-pw").await, 200);

    // certificate rotation: new files at the same paths (rename, as cert-manager does)
    let served_cert = || async {
        let tcp = tokio::net::TcpStream::connect(exp.addr).await.unwrap();
        let tls = tls_client(&pki, &c)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };
    let first = served_cert().await;
    let second_der = CertificateDer::from_pem_file(pki.path("server2.pem"))
        .unwrap()
        .to_vec();
    assert_ne!(first, second_der);
    std::fs::copy(pki.path("server2-key.pem"), pki.path("key.tmp")).unwrap();
    std::fs::copy(pki.path("server2.pem"), pki.path("cert.tmp")).unwrap();
    std::fs::rename(pki.path("key.tmp"), pki.path("server-key.pem")).unwrap();
    std::fs::rename(pki.path("cert.tmp"), pki.path("server.pem")).unwrap();
    let took = common::wait_for(Duration::from_secs(15), || async {
        served_cert().await == second_der
    })
    .await;
    assert!(took.is_some(), "the rotated certificate was never served");
    assert_eq!(get("newer-pw").await, 200);
    exp.stop().await;
}

#[test]
fn a_bad_web_config_at_start_exits_2_naming_the_key_without_secrets() {
    let pki = Pki::new();
    let cases = [
        (
            "basic_auth_users:\n  prometheus: my-plain-secret\n".to_string(),
            "basic_auth_users.prometheus",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  min_version: TLS9\n".to_string(),
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: client-key.pem\n".to_string(),
            "tls_server_config.key_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n  client_auth_type: RequireAndVerifyClientCert\n".to_string(),
            "tls_server_config.client_ca_file",
        ),
    ];
    let key_pem = std::fs::read_to_string(pki.path("client-key.pem")).unwrap();
    let key_line = key_pem.lines().nth(1).unwrap();
    for (yaml, key) in cases {
        let p = pki.path("bad.yml");
        std::fs::write(&p, &yaml).unwrap();
        let out = Command::new(BIN)
            .args(["--web.listen-address", "127.0.0.1:0", "--web.config.file"])
            .arg(&p)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{yaml}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(
            err.contains("web.config.file") && err.contains(key),
            "{err}"
        );
        assert!(
            !err.contains("my-plain-secret") && !err.contains(key_line),
            "{err}"
        );
    }
}

#[test]
fn the_shipped_example_web_config_loads() {
    // docker/web-config.example.yml with the files it names (tls.crt, tls.key, ca.crt)
    let pki = Pki::new();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/docker/web-config.example.yml");
    std::fs::copy(example, pki.path("web.yml")).unwrap();
    std::fs::copy(pki.path("server.pem"), pki.path("tls.crt")).unwrap();
    std::fs::copy(pki.path("server-key.pem"), pki.path("tls.key")).unwrap();
    std::fs::copy(pki.path("ca.pem"), pki.path("ca.crt")).unwrap();
    let c = gravity_exporter::web_config::WebConfig::load(&pki.path("web.yml")).unwrap();
    assert!(c.tls() && c.basic_auth(), "{c:?}");
    assert!(c.summary().contains("RequireAndVerifyClientCert"), "{c:?}");
}
