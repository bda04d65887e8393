//! Elasticsearch (HTTP) probe: one `GET /` through the exporter's HTTP client
//! ([`crate::http_client`]), its status and nothing else.
//!
//! Elasticsearch answers `GET /` with its name, cluster and version (HTTP 200) to any
//! client it lets in, and with 401 when security is on and the credentials are missing or
//! wrong. gravity's Elasticsearch output logs in with HTTP basic auth
//! (`[output.config.server.auth]`), so the probe sends the same `Authorization: Basic`
//! header. Outcomes:
//!
//! * 2xx: healthy;
//! * 401 or 403: the server is reachable but rejects gravity's credentials: reason `auth`;
//! * any other status, or something that is not HTTP/1.x: reason `protocol`;
//! * nothing accepts the connection: `refused`; no answer within the deadline: `timeout`;
//!   the host does not resolve: `dns`;
//! * a plain `http://` request answered with a TLS alert (a TLS-only server):
//!   `tls_required`.
//!
//! The request says `Connection: close`; the response head is parsed by hyper (at most its
//! default header buffer), the body is never read. For an `https://` URL the exchange runs
//! over TLS (rustls, the configuration of [`crate::tls`]: the system's trust store like
//! gravity's Go client, or gravity's CA/client certificate files): an untrusted, expired or
//! wrongly named certificate is reason `tls`, never healthy. The probe's deadline bounds the
//! whole exchange (TLS setup, connect, handshake, request, response head).

use std::io;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONNECTION, USER_AGENT};

use super::{run_probe, ConnectError, Endpoint, FailureReason, ProbeOutcome, Secret};
use crate::http_client::{Body, HttpClient, HttpError, Options};
use crate::tls::{self, TlsOptions};

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
        let config = match tls_options {
            Some(opts) => Some(
                tls::client_config_async(opts)
                    .await
                    .map_err(|e| (FailureReason::Tls, e.to_string()))?,
            ),
            None => None,
        };
        let https = config.is_some();
        // a client per probe, no idle connection kept: the request says Connection: close
        let client = HttpClient::new(Options {
            tls: config,
            max_idle_per_host: 0,
            idle_timeout: Duration::ZERO,
            connect_timeout: deadline,
        });
        let request = build_request(endpoint, https, user, password)?;
        let response = client
            .send(request, deadline, Body::Discard)
            .await
            .map_err(|e| failure(endpoint, deadline, e))?;
        let detail = classify(response.status.as_u16())?;
        Ok(if https {
            format!("TLS, {detail}")
        } else {
            detail
        })
    })
    .await
}

/// The request. The password only ever lives in the (sensitive) header value.
fn build_request(
    endpoint: &Endpoint,
    https: bool,
    user: Option<&str>,
    password: &Secret,
) -> Result<hyper::Request<Full<Bytes>>, (FailureReason, String)> {
    let scheme = if https { "https" } else { "http" };
    let uri: hyper::Uri = format!("{scheme}://{endpoint}/").parse().map_err(|_| {
        (
            FailureReason::Dns,
            format!(
                "{} is not a usable host name",
                super::sanitize(&endpoint.host, 100)
            ),
        )
    })?;
    let mut req = hyper::Request::get(uri)
        .header(
            USER_AGENT,
            concat!("gravity-exporter/", env!("CARGO_PKG_VERSION")),
        )
        .header(ACCEPT, "application/json")
        .header(CONNECTION, "close");
    if let Some(u) = user {
        let mut cred = Vec::with_capacity(u.len() + 1 + password.expose().len());
        cred.extend_from_slice(u.as_bytes());
        cred.push(b':');
        cred.extend_from_slice(password.expose().as_bytes());
        let mut value =
            HeaderValue::from_str(&format!("Basic {}", base64(&cred))).map_err(|_| {
                (
                    FailureReason::Protocol,
                    "the credentials cannot be sent in an HTTP header".to_string(),
                )
            })?;
        value.set_sensitive(true);
        req = req.header(AUTHORIZATION, value);
    }
    req.body(Full::new(Bytes::new()))
        .map_err(|_| (FailureReason::Protocol, "cannot build GET /".to_string()))
}

/// The probe's reason and words for a failed exchange.
fn failure(endpoint: &Endpoint, deadline: Duration, e: HttpError) -> (FailureReason, String) {
    match e {
        HttpError::Timeout(_) => (
            FailureReason::Timeout,
            format!("no complete answer within {} ms", deadline.as_millis()),
        ),
        HttpError::Dns(message) => {
            let e = ConnectError::Dns {
                host: super::sanitize(&endpoint.host, 100),
                message: super::sanitize(&message, 100),
            };
            (e.reason(), e.to_string())
        }
        HttpError::Connect { kind, .. } => {
            let e = ConnectError::from_io(endpoint, &io::Error::from(kind), deadline);
            (e.reason(), e.to_string())
        }
        HttpError::Tls(words) => {
            let e = tls::TlsError::Handshake(words);
            (FailureReason::Tls, e.to_string())
        }
        HttpError::TlsRequired => (
            FailureReason::TlsRequired,
            "the server speaks https only, gravity's URL says http://".to_string(),
        ),
        HttpError::Exchange {
            kind: Some(kind),
            detail,
        } => (
            super::io_reason(kind),
            format!("during GET /: {}", super::sanitize(&detail, 160)),
        ),
        HttpError::Exchange { kind: None, detail } => {
            (FailureReason::Protocol, super::sanitize(&detail, 160))
        }
        HttpError::TooLarge(_) | HttpError::Request(_) => (
            FailureReason::Protocol,
            super::sanitize(&e.to_string(), 160),
        ),
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
fn base64(input: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(input)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

    /// Status lines as hyper parses them (the hand-written parser is gone): a server answering
    /// each line, and the probe's verdict.
    #[tokio::test]
    async fn status_lines() {
        let verdict = |line: &'static [u8]| async move {
            let (ep, _) = server(line, false).await;
            probe(&ep, false, None, &Secret::default(), D).await
        };
        assert!(verdict(b"HTTP/1.1 200 OK\r\n\r\n").await.ok);
        let out = verdict(b"HTTP/1.0 401 Unauthorized\r\n\r\n").await;
        assert_eq!(out.reason, Some(FailureReason::Auth), "{out:?}");
        for bad in [
            &b"SSH-2.0-OpenSSH_9\r\n"[..],
            b"HTTP/1.1 2000 x\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"",
        ] {
            let out = verdict(bad).await;
            assert_eq!(
                out.reason,
                Some(FailureReason::Protocol),
                "{:?}: {out:?}",
                String::from_utf8_lossy(bad)
            );
        }
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
}
