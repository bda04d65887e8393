//! OTLP export over TLS, both protocols, against the tests' OTLP receiver
//! (`gravity_double::otlp`, serving TLS with certificates made here by `rcgen`):
//!
//! - a receiver with a server certificate only: the exporter with `--otlp.tls.ca-file` of
//!   the right CA exports;
//! - a receiver that requires a client certificate (mutual TLS): the exporter with the
//!   right CA and a client certificate exports; with a CA that did not sign the receiver's
//!   certificate, or without a client certificate, every export fails and is counted in
//!   `gravity_exporter_otlp_export_failures_total{signal}`, nothing arrives, and `/metrics`
//!   answers every scrape meanwhile while collection goes on.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gravity_double::otlp::{Mode, Receiver, ServerTls};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

const DEADLINE: Duration = Duration::from_secs(60);

/// A CA, a server certificate for 127.0.0.1 it signed, a client certificate it signed, and
/// another CA that signed nothing of it, as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    server: (String, String),
    ca: String,
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

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let (ca, ca_key) = make_ca("gx otlp test CA");
        let (other, _) = make_ca("some other CA");
        let w = |n: &str, t: &str| std::fs::write(dir.path().join(n), t).unwrap();
        w("ca.pem", &ca.pem());
        w("other-ca.pem", &other.pem());
        let server = leaf(
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
            &ca,
            &ca_key,
        );
        let (c, k) = leaf(
            &["gravity-exporter"],
            ExtendedKeyUsagePurpose::ClientAuth,
            &ca,
            &ca_key,
        );
        w("client.pem", &c);
        w("client-key.pem", &k);
        Pki {
            ca: ca.pem(),
            server,
            dir,
        }
    }

    fn path(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }

    fn server_tls(&self, mutual: bool) -> ServerTls {
        ServerTls {
            cert_pem: self.server.0.clone(),
            key_pem: self.server.1.clone(),
            client_ca_pem: mutual.then(|| self.ca.clone()),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    Grpc,
    Http,
}

impl Proto {
    fn flag(self) -> &'static str {
        match self {
            Proto::Grpc => "grpc",
            Proto::Http => "http/protobuf",
        }
    }

    async fn receiver(self, tls: &ServerTls) -> Receiver {
        match self {
            Proto::Grpc => Receiver::grpc_tls(Mode::Accept, tls).await,
            Proto::Http => Receiver::http_tls(Mode::Accept, tls).await,
        }
    }
}

async fn start(
    proto: Proto,
    endpoint: &str,
    ca: &Path,
    client: Option<(&Path, &Path)>,
) -> (common::Running, SocketAddr) {
    let status =
        std::fs::read_to_string(common::fixtures().join("status-incremental.json")).unwrap();
    let api = common::stub_routes(
        vec![("/status", 200, status), ("/healthz", 200, String::new())],
        404,
    )
    .await;
    let proc_root = common::fixtures().join("proc");
    let url = format!("http://{api}");
    let mut args = vec![
        "--path.procfs",
        proc_root.to_str().unwrap(),
        "--gravity.pid",
        "4242",
        "--gravity.url",
        &url,
        "--probe.interval",
        "0s",
        "--gravity.log-state-file",
        "none",
        "--collector.interval",
        "200ms",
        "--otlp.endpoint",
        endpoint,
        "--otlp.protocol",
        proto.flag(),
        "--otlp.interval",
        "200ms",
        "--otlp.timeout",
        "2s",
        "--otlp.tls.ca-file",
        ca.to_str().unwrap(),
    ];
    if let Some((c, k)) = client {
        args.extend([
            "--otlp.tls.cert-file",
            c.to_str().unwrap(),
            "--otlp.tls.key-file",
            k.to_str().unwrap(),
        ]);
    }
    (common::start(common::settings(&args)).await, api)
}

async fn counter(addr: SocketAddr, name: &str) -> f64 {
    let (status, text) = common::get(addr, "/metrics").await;
    assert_eq!(status, 200, "/metrics did not answer");
    common::sample(&text, name, &["signal=\"metrics\""]).unwrap_or(f64::NAN)
}

/// Exports arrive: the receiver holds metrics and the exporter counts them accepted.
async fn expect_exports(proto: Proto, rx: &Receiver, r: &common::Running, case: &str) {
    let addr = r.addr;
    let ok = common::wait_for(DEADLINE, || async {
        !rx.received().metrics.is_empty()
            && counter(addr, "gravity_exporter_otlp_exports_total").await >= 1.0
    })
    .await;
    assert!(ok.is_some(), "{proto:?} {case}: no export arrived over TLS");
    assert_eq!(
        counter(addr, "gravity_exporter_otlp_export_failures_total").await,
        0.0,
        "{proto:?} {case}"
    );
}

/// Every export fails and is counted; nothing arrives; `/metrics` answers each scrape
/// (asserted in `counter`) and collection goes on.
async fn expect_failures(proto: Proto, rx: &Receiver, r: &common::Running, case: &str) {
    let addr = r.addr;
    let collected = || async {
        common::sample(
            &common::get(addr, "/metrics").await.1,
            "gravity_exporter_collector_last_success_timestamp_seconds",
            &["collector=\"status\""],
        )
        .unwrap_or(0.0)
    };
    let before = collected().await;
    let mut slowest = Duration::ZERO;
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < DEADLINE,
            "{proto:?} {case}: failed exports not counted"
        );
        let s = Instant::now();
        let failures = counter(addr, "gravity_exporter_otlp_export_failures_total").await;
        slowest = slowest.max(s.elapsed());
        if failures >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        counter(addr, "gravity_exporter_otlp_exports_total").await,
        0.0,
        "{proto:?} {case}: an export was accepted"
    );
    assert!(
        rx.received().metrics.is_empty(),
        "{proto:?} {case}: the receiver got metrics"
    );
    assert!(
        collected().await > before,
        "{proto:?} {case}: collection stalled behind the failing exports"
    );
    // a figure, not an assertion (no wall-clock limits in tests)
    eprintln!(
        "MEASURED: {proto:?} {case}: slowest /metrics scrape while exports failed: {slowest:?}"
    );
    if proto == Proto::Http {
        assert!(
            rx.received().tls_failures >= 1,
            "{proto:?} {case}: the failure was not the TLS handshake"
        );
    }
}

async fn tls_cases(proto: Proto) {
    let pki = Pki::new();
    let ca = pki.path("ca.pem");
    let other = pki.path("other-ca.pem");
    let client = (pki.path("client.pem"), pki.path("client-key.pem"));
    let client = Some((client.0.as_path(), client.1.as_path()));

    // server TLS only: the right CA is enough
    let rx = proto.receiver(&pki.server_tls(false)).await;
    assert!(rx.endpoint().starts_with("https://"));
    let (r, _api) = start(proto, &rx.endpoint(), &ca, None).await;
    expect_exports(proto, &rx, &r, "server TLS, right CA").await;
    r.stop().await;

    // mutual TLS: right CA and a client certificate
    let rx = proto.receiver(&pki.server_tls(true)).await;
    let (r, _api) = start(proto, &rx.endpoint(), &ca, client).await;
    expect_exports(proto, &rx, &r, "mutual TLS").await;
    r.stop().await;

    // a CA that did not sign the receiver's certificate
    let rx = proto.receiver(&pki.server_tls(true)).await;
    let (r, _api) = start(proto, &rx.endpoint(), &other, client).await;
    expect_failures(proto, &rx, &r, "wrong CA").await;
    let report = r.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");

    // the receiver requires a client certificate, the exporter has none
    let rx = proto.receiver(&pki.server_tls(true)).await;
    let (r, _api) = start(proto, &rx.endpoint(), &ca, None).await;
    expect_failures(proto, &rx, &r, "no client certificate").await;
    let report = r.shutdown().await;
    assert!(report.still_running.is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_and_mutual_tls() {
    tls_cases(Proto::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_over_tls_and_mutual_tls() {
    tls_cases(Proto::Http).await;
}

/// A TLS file that exists but cannot be used (a key where the CA should be, a certificate
/// where the key should be) is refused at start naming its key, like every bad setting,
/// instead of leaving OTLP off with nothing counted.
#[test]
fn tls_files_that_cannot_be_used_are_refused_at_start() {
    let pki = Pki::new();
    let p = |n: &str| pki.path(n).to_str().unwrap().to_string();
    let try_flags = |extra: &[String]| {
        let mut v: Vec<String> = [
            "gravity-exporter",
            "--web.listen-address",
            "127.0.0.1:0",
            "--otlp.endpoint",
            "https://127.0.0.1:4317",
        ]
        .map(String::from)
        .to_vec();
        v.extend_from_slice(extra);
        let cli = <gravity_exporter::config::Cli as clap::Parser>::try_parse_from(v).unwrap();
        gravity_exporter::config::Settings::from_flags(cli.flags)
    };
    for proto in ["grpc", "http/protobuf"] {
        let proto = format!("--otlp.protocol={proto}");
        // the key where the CA should be
        let e = try_flags(&[
            proto.clone(),
            format!("--otlp.tls.ca-file={}", p("client-key.pem")),
        ])
        .err()
        .unwrap_or_else(|| panic!("{proto}: a CA file without a certificate was accepted"));
        assert!(e.to_string().contains("otlp.tls.ca-file"), "{e}");
        // a certificate where the key should be
        let e = try_flags(&[
            proto.clone(),
            format!("--otlp.tls.ca-file={}", p("ca.pem")),
            format!("--otlp.tls.cert-file={}", p("client.pem")),
            format!("--otlp.tls.key-file={}", p("ca.pem")),
        ])
        .err()
        .unwrap_or_else(|| panic!("{proto}: a key file without a key was accepted"));
        assert!(e.to_string().contains("otlp.tls.key-file"), "{e}");
        // and the good ones pass
        assert!(try_flags(&[
            proto.clone(),
            format!("--otlp.tls.ca-file={}", p("ca.pem")),
            format!("--otlp.tls.cert-file={}", p("client.pem")),
            format!("--otlp.tls.key-file={}", p("client-key.pem")),
        ])
        .is_ok());
    }
}
