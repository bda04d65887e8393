//! The client for gravity's API (`/status`, `/healthz`, `/metrics`): a thin wrapper over
//! the exporter's one HTTP client ([`crate::http_client`]), plain HTTP.
//!
//! Every request has a total timeout (connect, headers and body) and a cap on the body
//! size, so a gravity that hangs or answers 100 MB costs the exporter a bounded amount of
//! time and memory. It only ever issues `GET`s to the paths the collectors name, and it
//! refuses gravity's destructive `/reset` outright.
#![warn(clippy::arithmetic_side_effects)]

pub mod status;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;

pub use crate::http_client::Response;
use crate::http_client::{Body, HttpClient, HttpError, Options};

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
    /// gravity's destructive `/reset`, which the exporter never calls.
    #[error("{path}: the exporter never calls gravity's /reset")]
    Refused {
        /// Path requested.
        path: String,
    },
    /// The URL cannot be built.
    #[error("bad URL for {path}")]
    BadUrl {
        /// Path requested.
        path: String,
    },
}

/// Client for gravity's API.
#[derive(Debug, Clone)]
pub struct GravityClient {
    http: HttpClient,
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

/// Whether `path` is gravity's destructive `/reset` (in any spelling of the path).
fn is_reset(path: &str) -> bool {
    let p = path.split(['?', '#']).next().unwrap_or_default();
    p.trim_end_matches('/')
        .rsplit('/')
        .next()
        .is_some_and(|last| last.eq_ignore_ascii_case("reset"))
}

/// Idle connections kept to gravity's API: one per request of a collection.
pub const POOL_IDLE: usize = 4;
/// How long an idle connection to gravity's API is kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl GravityClient {
    /// A client with a small keep-alive pool: [`POOL_IDLE`] idle connections, kept
    /// [`POOL_IDLE_TIMEOUT`], so that a collection's concurrent requests (`/status`,
    /// `/healthz`, `/metrics`) reuse the last one's connections even when collections follow
    /// a scraper that comes once a minute.
    pub fn new() -> GravityClient {
        GravityClient {
            http: HttpClient::new(Options {
                max_idle_per_host: POOL_IDLE,
                idle_timeout: POOL_IDLE_TIMEOUT,
                ..Options::default()
            }),
        }
    }

    /// `GET base+path` with a total timeout and a body cap. `/reset` is never sent.
    pub async fn get(
        &self,
        base: &Uri,
        path: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<Response, ApiError> {
        let req = request(base, path)?;
        self.http
            .send(req, timeout, Body::UpTo(limit))
            .await
            .map_err(|e| api_error(path, e))
    }

    /// `GET base+path` whose body is read piece by piece ([`Answer::chunk`]), never held
    /// whole: at most `limit` bytes, all within `timeout`. `/reset` is never sent.
    pub async fn open(
        &self,
        base: &Uri,
        path: &str,
        timeout: Duration,
        limit: usize,
    ) -> Result<Answer, ApiError> {
        let req = request(base, path)?;
        let inner = self
            .http
            .open(req, timeout, limit)
            .await
            .map_err(|e| api_error(path, e))?;
        Ok(Answer {
            path: path.into(),
            inner,
        })
    }
}

/// An answer from gravity read piece by piece ([`GravityClient::open`]).
#[derive(Debug)]
pub struct Answer {
    path: String,
    inner: crate::http_client::Streaming,
}

impl Answer {
    /// HTTP status.
    pub fn status(&self) -> hyper::StatusCode {
        self.inner.status
    }

    /// The next piece of the body, `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ApiError> {
        self.inner
            .chunk()
            .await
            .map_err(|e| api_error(&self.path, e))
    }

    /// Time since the request was sent.
    pub fn elapsed(&self) -> Duration {
        self.inner.elapsed()
    }
}

/// `GET base+path`; `/reset` in any spelling is refused here, before anything is sent.
fn request(base: &Uri, path: &str) -> Result<hyper::Request<Full<Bytes>>, ApiError> {
    if is_reset(path) {
        return Err(ApiError::Refused { path: path.into() });
    }
    let uri = join(base, path).ok_or_else(|| ApiError::BadUrl { path: path.into() })?;
    hyper::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|_| ApiError::BadUrl { path: path.into() })
}

fn api_error(path: &str, e: HttpError) -> ApiError {
    match e {
        HttpError::Timeout(timeout) => ApiError::Timeout {
            path: path.into(),
            timeout,
        },
        HttpError::TooLarge(limit) => ApiError::TooLarge {
            path: path.into(),
            limit,
        },
        HttpError::Request(_) => ApiError::BadUrl { path: path.into() },
        other => ApiError::Connect {
            path: path.into(),
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

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

    /// `/reset` (in any spelling) is refused before anything is sent: a listener that
    /// records connections sees none.
    #[tokio::test]
    async fn reset_is_never_sent() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c = GravityClient::new();
        let base: Uri = format!("http://{addr}").parse().unwrap();
        for path in ["/reset", "/reset/", "/RESET", "/reset?now=1", "/api/reset"] {
            let e = c
                .get(&base, path, Duration::from_millis(200), 1024)
                .await
                .unwrap_err();
            assert!(matches!(e, ApiError::Refused { .. }), "{path}: {e}");
            let e = c
                .open(&base, path, Duration::from_millis(200), 1024)
                .await
                .unwrap_err();
            assert!(matches!(e, ApiError::Refused { .. }), "{path}: {e}");
        }
        let accepted = tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
        assert!(accepted.is_err(), "a connection was made");
        assert!(!is_reset("/status") && !is_reset("/metrics") && !is_reset("/healthz"));
    }
}
