//! HTTPS through the exporter's one HTTP client (`gravity_exporter::http_client`) and the
//! Elasticsearch/HTTP probe built on it, against a TLS server with the test PKI of the fake
//! servers (`gravity_double::tls`): whose certificates are trusted, which failure a wrong
//! trust or plain http to a TLS port gives, and that the basic-auth password stays out of
//! what a failure says. (These were unit tests beside a second copy of the test PKI.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gravity_double::tls::Pki;
use gravity_exporter::http_client::{Body, HttpClient, HttpError, Options};
use gravity_exporter::probe::http::{probe, probe_with};
use gravity_exporter::probe::{Endpoint, FailureReason, Secret};
use gravity_exporter::tls::{client_config, TlsOptions};
use http_body_util::Full;
use hyper::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const T: Duration = Duration::from_secs(5);

fn get(url: &str) -> Request<Full<Bytes>> {
    Request::get(url).body(Full::new(Bytes::new())).unwrap()
}

/// A TLS server with the PKI's server certificate answering `answer` to every
/// connection's first read; what it read last is kept in the returned string.
async fn tls_server(pki: &Pki, answer: &'static [u8]) -> (u16, Arc<Mutex<String>>) {
    let acceptor = pki.acceptor(false).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(String::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let acceptor = acceptor.clone();
            let s2 = s2.clone();
            tokio::spawn(async move {
                let Ok(mut s) = acceptor.accept(s).await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                *s2.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = s.write_all(answer).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, seen)
}

/// HTTPS with the caller's rustls configuration: trusted CA → answer; another CA →
/// `Tls` with rustls's words; plain http to the TLS port → `TlsRequired`.
#[tokio::test]
async fn https_uses_the_callers_trust() {
    let pki = Pki::new().unwrap();
    let (port, _) = tls_server(&pki, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let addr = format!("127.0.0.1:{port}");
    let trusted = HttpClient::new(Options {
        tls: Some(client_config(&pki.options()).unwrap()),
        ..Options::default()
    });
    let r = trusted
        .send(get(&format!("https://{addr}/")), T, Body::UpTo(2))
        .await
        .unwrap();
    assert_eq!(&r.body[..], b"ok");
    let other = HttpClient::new(Options {
        tls: Some(
            client_config(&TlsOptions {
                ca_file: Some(pki.other_ca_file.clone()),
                ..Default::default()
            })
            .unwrap(),
        ),
        ..Options::default()
    });
    let e = other
        .send(get(&format!("https://{addr}/")), T, Body::Discard)
        .await
        .unwrap_err();
    match e {
        HttpError::Tls(words) => assert!(words.contains("certificate"), "{words}"),
        other => panic!("{other:?}"),
    }
    let e = trusted
        .send(get(&format!("http://{addr}/")), T, Body::Discard)
        .await
        .unwrap_err();
    assert_eq!(e, HttpError::TlsRequired);
}

/// The HTTP probe against an https server with the test CA: trusted → healthy over TLS
/// with the basic auth header; the system's roots (which do not hold the test CA) → reason
/// `tls`, not healthy, the password nowhere in the detail; plain http → `tls_required`.
#[tokio::test]
async fn https_probe_verifies_the_certificate() {
    let pki = Pki::new().unwrap();
    let (port, seen) = tls_server(&pki, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n").await;
    let ep = Endpoint::new("127.0.0.1", port);
    let pw = Secret::new("es-pw-T5");
    let out = probe_with(&ep, Some(&pki.options()), Some("elastic"), &pw, T).await;
    assert!(out.ok, "{out:?}");
    assert!(
        out.detail.starts_with("TLS, GET / answered HTTP 200"),
        "{}",
        out.detail
    );
    assert!(seen.lock().unwrap().contains("Authorization: Basic "));
    let out = probe(&ep, true, Some("elastic"), &pw, T).await;
    assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
    assert!(!out.detail.contains("es-pw-T5"));
    let out = probe(&ep, false, None, &pw, T).await;
    assert_eq!(out.reason, Some(FailureReason::TlsRequired), "{out:?}");
}
