//! Elasticsearch (HTTP) probe: one `GET /` and its status line.
//!
//! Elasticsearch answers `GET /` with its name, cluster and version (HTTP 200) to any
//! client it lets in, and with 401 when security is on and the credentials are missing or
//! wrong. gravity's Elasticsearch output logs in with HTTP basic auth
//! (`[output.config.server.auth]`), so the probe sends the same `Authorization: Basic`
//! header. Outcomes:
//!
//! * 2xx: healthy;
//! * 401 or 403: the server is reachable but rejects gravity's credentials: reason `auth`;
//! * any other status, or something that is not HTTP/1.x: reason `protocol`.
//!
//! The exchange is HTTP/1.1 with `Connection: close`; only the status line is read (at most
//! [`MAX_HEAD_BYTES`]), the body never. For an `https://` URL the exchange runs over TLS
//! (rustls, [`super::tls`]; the system's trust store, like gravity's Go client): an
//! untrusted, expired or wrongly named certificate is reason `tls`, never healthy.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::tls::{self, TlsOptions};
use super::{
    connect_tcp, io_reason, run_probe, sanitize, Endpoint, FailureReason, ProbeOutcome, Secret,
};

/// Most bytes read while looking for the status line.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Probes an HTTP endpoint with `GET /` (basic auth when `user` is given), within `deadline`;
/// over TLS with `tls` (the system's trust store).
pub async fn probe(
    endpoint: &Endpoint,
    tls: bool,
    user: Option<&str>,
    password: &Secret,
    deadline: Duration,
) -> ProbeOutcome {
    let options = tls.then(TlsOptions::default);
    probe_with(endpoint, options.as_ref(), user, password, deadline).await
}

/// [`probe`] with explicit TLS options (`None`: plain HTTP).
pub async fn probe_with(
    endpoint: &Endpoint,
    tls_options: Option<&TlsOptions>,
    user: Option<&str>,
    password: &Secret,
    deadline: Duration,
) -> ProbeOutcome {
    run_probe(deadline, async {
        let stream = connect_tcp(endpoint, deadline)
            .await
            .map_err(|e| (e.reason(), e.to_string()))?;
        match tls_options {
            Some(opts) => {
                let config = tls::client_config_async(opts)
                    .await
                    .map_err(|e| (e.reason(), e.to_string()))?;
                let mut stream = tls::connect(stream, &endpoint.host, config)
                    .await
                    .map_err(|e| (e.reason(), e.to_string()))?;
                exchange(&mut stream, endpoint, user, password)
                    .await
                    .map(|d| format!("TLS, {d}"))
            }
            None => {
                let mut stream = stream;
                exchange(&mut stream, endpoint, user, password).await
            }
        }
    })
    .await
}

/// `GET /` and its status line over `stream`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    endpoint: &Endpoint,
    user: Option<&str>,
    password: &Secret,
) -> Result<String, (FailureReason, String)> {
    {
        let request = build_request(&endpoint.to_string(), user, password);
        stream.write_all(&request).await.map_err(|e| {
            (
                io_reason(e.kind()),
                format!("sending the request: {}", e.kind()),
            )
        })?;
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let line = loop {
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                break buf.get(..end).unwrap_or_default().to_vec();
            }
            if buf.len() >= MAX_HEAD_BYTES {
                return Err((
                    FailureReason::Protocol,
                    format!("no HTTP status line in the first {MAX_HEAD_BYTES} bytes"),
                ));
            }
            let n = stream.read(&mut chunk).await.map_err(|e| {
                (
                    io_reason(e.kind()),
                    format!("reading the answer: {}", e.kind()),
                )
            })?;
            if n == 0 && tls::looks_like_tls_alert(&buf) {
                return Err((
                    FailureReason::TlsRequired,
                    "the server speaks https only, gravity's URL says http://".to_string(),
                ));
            }
            if n == 0 {
                return Err((
                    FailureReason::Protocol,
                    "connection closed before an HTTP status line".to_string(),
                ));
            }
            buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        };
        let code = parse_status_line(&line).map_err(|e| (FailureReason::Protocol, e))?;
        classify(code)
    }
}

/// The request bytes. The password only ever lives in this buffer and on the wire.
fn build_request(host: &str, user: Option<&str>, password: &Secret) -> Vec<u8> {
    let mut req = format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: gravity-exporter/{}\r\nAccept: application/json\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    if let Some(u) = user {
        let mut cred = Vec::with_capacity(u.len() + 1 + password.expose().len());
        cred.extend_from_slice(u.as_bytes());
        cred.push(b':');
        cred.extend_from_slice(password.expose().as_bytes());
        req.extend_from_slice(b"Authorization: Basic ");
        req.extend_from_slice(base64(&cred).as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req
}

/// Parses `HTTP/1.x NNN reason` into the status code.
pub fn parse_status_line(line: &[u8]) -> Result<u16, String> {
    let text = String::from_utf8_lossy(line);
    let mut parts = text.split(' ');
    let version = parts.next().unwrap_or("");
    if !matches!(version, "HTTP/1.0" | "HTTP/1.1") {
        return Err(format!("not an HTTP/1.x answer: {:?}", sanitize(&text, 40)));
    }
    let code = parts.next().unwrap_or("");
    match code.parse::<u16>() {
        Ok(c) if code.len() == 3 && (100..=599).contains(&c) => Ok(c),
        _ => Err(format!("bad HTTP status code {:?}", sanitize(code, 10))),
    }
}

/// Maps a status code to the probe's verdict.
pub fn classify(code: u16) -> Result<String, (FailureReason, String)> {
    match code {
        200..=299 => Ok(format!("GET / answered HTTP {code}")),
        401 | 403 => Err((
            FailureReason::Auth,
            format!("reachable, but GET / answered HTTP {code}: credentials missing or rejected"),
        )),
        _ => Err((
            FailureReason::Protocol,
            format!("GET / answered HTTP {code}"),
        )),
    }
}

/// Standard base64 with padding (RFC 4648), for the basic auth header.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sym = |i: u32| char::from(ALPHABET[(i & 63) as usize]);
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sym(n >> 18));
        out.push(sym(n >> 12));
        out.push(if chunk.len() > 1 { sym(n >> 6) } else { '=' });
        out.push(if chunk.len() > 2 { sym(n) } else { '=' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::net::TcpListener;

    const D: Duration = Duration::from_secs(2);

    #[test]
    fn base64_rfc_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("Aladdin:open sesame", "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i}");
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
    }

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK"), Ok(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 401 Unauthorized"), Ok(401));
        assert!(parse_status_line(b"SSH-2.0-OpenSSH_9").is_err());
        assert!(parse_status_line(b"HTTP/1.1 2000 x").is_err());
        assert!(parse_status_line(b"HTTP/1.1 abc").is_err());
        assert!(parse_status_line(b"").is_err());
        assert!(classify(204).is_ok());
        assert_eq!(classify(401).unwrap_err().0, FailureReason::Auth);
        assert_eq!(classify(403).unwrap_err().0, FailureReason::Auth);
        assert_eq!(classify(503).unwrap_err().0, FailureReason::Protocol);
    }

    /// A one-shot HTTP server answering `answer` and recording the request head.
    async fn server(answer: &'static [u8], hang: bool) -> (Endpoint, Arc<Mutex<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(String::new()));
        let s2 = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let s2 = s2.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    *s2.lock().unwrap() = String::from_utf8_lossy(&got).into_owned();
                    if hang {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                    let _ = s.write_all(answer).await;
                });
            }
        });
        (Endpoint::new("127.0.0.1", port), seen)
    }

    #[tokio::test]
    async fn ok_with_basic_auth() {
        let (ep, seen) = server(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{\"tagline\":\"You Know, for Search\"}",
            false,
        )
        .await;
        let out = probe(&ep, false, Some("elastic"), &Secret::new("pw"), D).await;
        assert!(out.ok, "{out:?}");
        let req = seen.lock().unwrap().clone();
        assert!(req.starts_with("GET / HTTP/1.1\r\n"), "{req}");
        assert!(
            req.contains("Authorization: Basic ZWxhc3RpYzpwdw==\r\n"),
            "{req}"
        );
        assert!(req.contains(&format!("Host: {ep}\r\n")), "{req}");
        // no auth header without a user
        let out = probe(&ep, false, None, &Secret::default(), D).await;
        assert!(out.ok, "{out:?}");
        assert!(!seen.lock().unwrap().contains("Authorization"));
    }

    #[tokio::test]
    async fn failures_have_reasons() {
        let (ep, _) = server(b"HTTP/1.1 401 Unauthorized\r\n\r\n", false).await;
        let out = probe(&ep, false, Some("u"), &Secret::new("secret-pw"), D).await;
        assert_eq!(out.reason, Some(FailureReason::Auth), "{out:?}");
        assert!(!format!("{out:?}").contains("secret-pw"));
        let (ep, _) = server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n", false).await;
        let out = probe(&ep, false, None, &Secret::default(), D).await;
        assert_eq!(out.reason, Some(FailureReason::Protocol), "{out:?}");
        // a TLS alert to plain http: the server wants https
        let (ep, _) = server(b"\x15\x03\x01\x00\x02\x02\x46", false).await;
        let out = probe(&ep, false, None, &Secret::default(), D).await;
        assert_eq!(out.reason, Some(FailureReason::TlsRequired), "{out:?}");
        let (ep, _) = server(b"HTTP/1.1 200 OK\r\n\r\n", true).await;
        let out = probe(
            &ep,
            false,
            None,
            &Secret::default(),
            Duration::from_millis(200),
        )
        .await;
        assert_eq!(out.reason, Some(FailureReason::Timeout), "{out:?}");
        // https to a peer that never answers the TLS handshake is not healthy
        let out = probe(
            &ep,
            true,
            None,
            &Secret::default(),
            Duration::from_millis(300),
        )
        .await;
        assert!(!out.ok, "{out:?}");
        // refused
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = probe(
            &Endpoint::new("127.0.0.1", port),
            false,
            None,
            &Secret::default(),
            D,
        )
        .await;
        assert_eq!(out.reason, Some(FailureReason::Refused), "{out:?}");
    }

    /// An https server with a test CA: trusted → healthy over TLS with the basic auth
    /// header; the system's roots (which do not hold the test CA) → reason `tls`, not healthy;
    /// plain http to it → `tls_required`.
    #[tokio::test]
    async fn https_certificate_is_verified() {
        use crate::probe::tls::testpki::Pki;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let pki = Pki::new();
        let acceptor = pki.acceptor(false);
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ep = Endpoint::new("127.0.0.1", l.local_addr().unwrap().port());
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
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    let _ = s.shutdown().await;
                });
            }
        });
        let pw = Secret::new("es-pw-T5");
        let out = probe_with(&ep, Some(&pki.options()), Some("elastic"), &pw, D).await;
        assert!(out.ok, "{out:?}");
        assert!(
            out.detail.starts_with("TLS, GET / answered HTTP 200"),
            "{}",
            out.detail
        );
        assert!(seen.lock().unwrap().contains("Authorization: Basic "));
        let out = probe(&ep, true, Some("elastic"), &pw, D).await;
        assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
        assert!(!out.detail.contains("es-pw-T5"));
        let out = probe(&ep, false, None, &pw, D).await;
        assert_eq!(out.reason, Some(FailureReason::TlsRequired), "{out:?}");
    }
}
