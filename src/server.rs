//! The exporter's HTTP server, on hyper 1.
//!
//! It takes an already bound [`TcpListener`] (tests bind `127.0.0.1:0`), serves
//! the telemetry path, the status page at `/` (and its data as JSON at `/api/status`),
//! and the exporter's own `/healthz` and `/-/ready`. `/metrics` renders the latest snapshot at once and never waits for a
//! collection. On the shutdown signal it stops accepting, lets open requests finish for
//! at most the drain period, then returns.
//!
//! Bounds: at most [`MAX_CONNECTIONS`] connections at once, a header read timeout, and
//! only `GET`/`HEAD`.
//!
//! With `--web.config.file` ([`crate::web_config`]) every connection may be TLS (the
//! handshake runs in the connection's own task) and every request passes the web config's
//! rate limit, headers and basic auth first; the file in force is re-read on change.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::collector::Context;
use crate::metrics::TEXT_CONTENT_TYPE;
use crate::web_config::{WebHandle, WebIo};

/// Most connections served at once; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 256;

/// How long open connections may take to finish after the shutdown signal.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Serves until `shutdown` resolves, then drains. With `--web.config.file` in the settings,
/// serves with it; if it cannot be loaded, nothing is served (fail closed, logged).
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let web = match ctx.settings().web_config_file.clone() {
        None => None,
        Some(p) => match WebHandle::load(&p) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the web config; not serving");
                return;
            }
        },
    };
    serve_web(listener, ctx, web, shutdown).await
}

/// [`serve`] with an already loaded web config (TLS, basic auth), watched for changes
/// while the server runs.
pub async fn serve_web(
    listener: TcpListener,
    ctx: Arc<Context>,
    web: Option<Arc<WebHandle>>,
    shutdown: impl Future<Output = ()>,
) {
    if let Some(w) = &web {
        w.register(ctx.store.registry());
        w.spawn_watch();
    }
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // TLS: the web config in force at accept; credentials, headers and rate limit: the
        // one in force at each request (a changed password applies to open connections too).
        let io = WebIo::new(stream, web.as_ref().map(|w| w.current()).as_deref());
        let ctx = ctx.clone();
        let web = web.clone();
        let svc = service_fn(move |req| {
            let ctx = ctx.clone();
            let web_now = web.as_ref().map(|w| w.current());
            async move {
                let resp =
                    crate::web_config::serve_request(web_now, req, |req| route(&ctx, req)).await;
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(io), svc);
        let fut = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = fut.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!("connections still open after the drain period; closing");
        }
    }
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Routes one request.
pub fn route(ctx: &Context, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "method not allowed\n",
        );
        r.headers_mut()
            .insert("allow", HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let settings = ctx.settings();
    let path = req.uri().path();
    if path == settings.telemetry_path {
        return text(StatusCode::OK, TEXT_CONTENT_TYPE, ctx.store.render());
    }
    match path {
        "/" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            crate::page::landing(ctx),
        ),
        "/api/status" => text(
            StatusCode::OK,
            "application/json",
            crate::page::api_status(ctx),
        ),
        "/healthz" => {
            let fresh = ctx
                .last_cycle
                .read()
                .ok()
                .and_then(|g| *g)
                .is_some_and(|t| t.elapsed() < settings.interval * 3 + Duration::from_secs(5));
            if fresh {
                text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "collection loop has not completed recently\n",
                )
            }
        }
        "/-/ready" => {
            let ready = ctx.last_cycle.read().ok().and_then(|g| *g).is_some();
            if ready {
                text(StatusCode::OK, "text/plain; charset=utf-8", "ready\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    "not ready: first collection running\n",
                )
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found\n",
        ),
    }
}
