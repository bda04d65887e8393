//! A small HTTP client for gravity's API (`/status`, `/healthz`, `/metrics`).
//!
//! Every request has a total timeout (connect, headers and body) and a cap on the body
//! size, so a gravity that hangs or answers 100 MB costs the exporter a bounded amount of
//! time and memory. It only ever issues `GET`s to the paths the collectors name; in
//! particular it never calls gravity's destructive `/reset`.
#![warn(clippy::arithmetic_side_effects)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Not answered within the timeout.
    #[error("{path}: no answer within {timeout:?}")]
    Timeout {
        /// Path requested.
        path: String,
        /// Timeout.
        timeout: Duration,
    },
    /// Could not connect or the connection broke.
    #[error("{path}: {reason}")]
    Connect {
        /// Path requested.
        path: String,
        /// What happened.
        reason: String,
    },
    /// Body over the cap.
    #[error("{path}: body larger than {limit} bytes")]
    TooLarge {
        /// Path requested.
        path: String,
        /// The cap.
        limit: usize,
    },
    /// The URL cannot be built.
    #[error("bad URL for {path}")]
    BadUrl {
        /// Path requested.
        path: String,
    },
}

/// A response: status, body and how long it took.
#[derive(Debug)]
pub struct Response {
    /// HTTP status.
    pub status: StatusCode,
    /// Body (at most the cap).
    pub body: Bytes,
    /// Time to the end of the body.
    pub elapsed: Duration,
}

/// Client for gravity's API.
#[derive(Debug, Clone)]
pub struct GravityClient {
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Default for GravityClient {
    fn default() -> Self {
        Self::new()
    }
}

/// Joins a base URL and a path.
pub fn join(base: &Uri, path: &str) -> Option<Uri> {
    let mut parts = base.clone().into_parts();
    let prefix = parts
        .path_and_query
        .as_ref()
        .map(|p| p.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    parts.path_and_query = format!("{prefix}{path}").parse().ok();
    Uri::from_parts(parts).ok()
}

impl GravityClient {
    /// A client with a small keep-alive pool.
    pub fn new() -> GravityClient {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(Duration::from_secs(2)));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(conn);
        GravityClient { client }
    }

    /// `GET base+path` with a total timeout and a body cap.
    pub async fn get(
        &self,
        base: &Uri,
        path: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<Response, ApiError> {
        debug_assert!(path != "/reset", "the exporter never calls /reset");
        let uri = join(base, path).ok_or_else(|| ApiError::BadUrl { path: path.into() })?;
        let start = Instant::now();
        let fut = async {
            let resp = self.client.get(uri).await.map_err(|e| ApiError::Connect {
                path: path.into(),
                reason: short_error(&e),
            })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        ApiError::TooLarge {
                            path: path.into(),
                            limit,
                        }
                    } else {
                        ApiError::Connect {
                            path: path.into(),
                            reason: format!("reading body: {e}"),
                        }
                    }
                })?
                .to_bytes();
            Ok(Response {
                status,
                body,
                elapsed: start.elapsed(),
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::Timeout {
                path: path.into(),
                timeout,
            }),
        }
    }
}

/// The innermost cause of an error, on one line.
fn short_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string().replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_paths() {
        let b: Uri = "http://127.0.0.1:8080".parse().unwrap();
        assert_eq!(
            join(&b, "/status").unwrap().to_string(),
            "http://127.0.0.1:8080/status"
        );
        let b: Uri = "http://h:1/prefix/".parse().unwrap();
        assert_eq!(
            join(&b, "/metrics").unwrap().to_string(),
            "http://h:1/prefix/metrics"
        );
    }

    #[tokio::test]
    async fn timeout_and_refused_are_errors_not_hangs() {
        // a listener that never answers
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c = GravityClient::new();
        let base: Uri = format!("http://{addr}").parse().unwrap();
        let t0 = Instant::now();
        let e = c
            .get(&base, "/status", Duration::from_millis(200), 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Timeout { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(1));
        drop(l);
        let e = c
            .get(&base, "/status", Duration::from_millis(500), 1024)
            .await
            .unwrap_err();
        assert!(matches!(e, ApiError::Connect { .. }), "{e}");
    }
}
