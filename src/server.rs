//! The exporter's HTTP server, on hyper 1.
//!
//! It takes an already bound [`TcpListener`] (tests bind `127.0.0.1:0`), serves
//! the telemetry path, the status page at `/` (and its data as JSON at `/api/status`),
//! and the exporter's own `/healthz` and `/-/ready`. `/metrics` renders the latest snapshot at once and never waits for a
//! collection. On the shutdown signal it stops accepting, lets open requests finish for
//! at most the drain period, then returns.
//!
//! Bounds ([`Limits`]): at most 1,024 connections at once and 64 per peer address; a
//! request's headers must arrive within 10 s; a keep-alive connection idle for 60 s is
//! closed; only `GET`/`HEAD`. When a limit is reached, an *idle* connection (no request in
//! progress; first the oldest that never sent a request, so a scraper's keep-alive one is
//! kept) of that peer, or of all peers, is closed to make room, so idle or
//! slow sockets cannot lock scrapes out; only when every slot is busy with a request is
//! the new connection refused. Evictions and refusals are counted
//! (`gravity_exporter_connections_evicted_total`, `..._rejected_total`).
//! `/metrics` is rendered on the exporter's render thread, never on the runtime's worker thread.
//!
//! With `--web.config.file` ([`crate::web_config`]) every connection may be TLS (the
//! handshake runs in the connection's own task, under the header timeout) and every request
//! passes the web config's rate limit, headers and basic auth first; the file in force is
//! re-read on change.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::base::lock;
use crate::collector::Context;
use crate::fleet::Fleet;
use crate::metrics::TEXT_CONTENT_TYPE;
use crate::web_config::{WebHandle, WebIo};

/// Most connections served at once (see [`Limits`]).
pub const MAX_CONNECTIONS: usize = 1024;

/// How long open connections may take to finish after the shutdown signal.
pub const DRAIN: Duration = Duration::from_secs(5);

/// Connection limits of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most connections at once.
    pub max_connections: usize,
    /// Most connections at once from one peer address.
    pub per_peer: usize,
    /// A request's headers must arrive within this (also the first request's, from accept).
    pub header_timeout: Duration,
    /// A keep-alive connection without a request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: MAX_CONNECTIONS,
            per_peer: 64,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// One open connection, as the admission table sees it.
#[derive(Debug)]
struct Slot {
    id: u64,
    peer: IpAddr,
    /// Requests in progress (0: idle, may be evicted).
    busy: AtomicU64,
    /// Whether it has served a request (a scraper's keep-alive connection): evicted only
    /// after every idle connection that never sent one.
    served: AtomicBool,
    /// Milliseconds since `epoch` of the last activity (accept or end of a request).
    last_active_ms: AtomicU64,
    /// Asks the connection to close (after the request in progress, if any).
    close: Notify,
    closed: AtomicBool,
    epoch: Instant,
}

impl Slot {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_active_ms.store(ms, Ordering::SeqCst);
    }
    fn idle(&self) -> bool {
        self.busy.load(Ordering::SeqCst) == 0
    }
    fn last_active(&self) -> Instant {
        let ms = self.last_active_ms.load(Ordering::SeqCst);
        self.epoch
            .checked_add(Duration::from_millis(ms))
            .unwrap_or(self.epoch)
    }
    fn evict(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.close.notify_one();
    }
}

/// Open connections by peer, oldest first.
#[derive(Debug, Default)]
struct Table {
    by_peer: HashMap<IpAddr, VecDeque<Arc<Slot>>>,
    total: usize,
}

impl Table {
    fn remove(&mut self, slot: &Slot) {
        if let Some(q) = self.by_peer.get_mut(&slot.peer) {
            let before = q.len();
            q.retain(|s| s.id != slot.id);
            self.total = self.total.saturating_sub(before.saturating_sub(q.len()));
            if q.is_empty() {
                self.by_peer.remove(&slot.peer);
            }
        }
    }

    /// Evicts an idle connection of `peer` (or of anyone, with `None`): the oldest that
    /// never sent a request, else the one idle the longest.
    fn evict_idle(&mut self, peer: Option<IpAddr>) -> bool {
        let key = |s: &Arc<Slot>| {
            (
                s.served.load(Ordering::SeqCst),
                s.last_active_ms.load(Ordering::SeqCst),
            )
        };
        let victim = match peer {
            Some(p) => self.by_peer.get(&p).and_then(|q| {
                q.iter()
                    .filter(|s| s.idle())
                    .min_by_key(|s| key(s))
                    .cloned()
            }),
            None => self
                .by_peer
                .values()
                .flat_map(|q| q.iter())
                .filter(|s| s.idle())
                .min_by_key(|s| key(s))
                .cloned(),
        };
        match victim {
            Some(v) => {
                v.evict();
                self.remove(&v);
                true
            }
            None => false,
        }
    }
}

/// Server-side bookkeeping shared by the accept loop and the connections.
struct Conns {
    table: Mutex<Table>,
    limits: Limits,
    epoch: Instant,
    next_id: AtomicU64,
    evicted: IntCounter,
    rejected: IntCounter,
    open: IntGauge,
}

impl Conns {
    fn new(store: &crate::metrics::Store, limits: Limits) -> Conns {
        let reg = store.registry();
        let evicted = IntCounter::new(
            "gravity_exporter_connections_evicted_total",
            "Idle connections to the exporter closed to make room for a new one (per-peer or total limit reached).",
        )
        .expect("metric names in this crate are valid");
        let rejected = IntCounter::new(
            "gravity_exporter_connections_rejected_total",
            "Connections to the exporter refused because every slot was busy with a request.",
        )
        .expect("metric names in this crate are valid");
        let open = IntGauge::new(
            "gravity_exporter_connections_open",
            "Connections to the exporter open now.",
        )
        .expect("metric names in this crate are valid");
        // A second server in the same process (tests) shares the first one's series.
        let _ = reg.register(Box::new(evicted.clone()));
        let _ = reg.register(Box::new(rejected.clone()));
        let _ = reg.register(Box::new(open.clone()));
        Conns {
            table: Mutex::new(Table::default()),
            limits,
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            evicted,
            rejected,
            open,
        }
    }

    /// Admits a connection from `peer`, evicting an idle one if a limit is reached.
    fn admit(&self, peer: IpAddr) -> Option<Arc<Slot>> {
        let mut t = lock(&self.table);
        let mine = t.by_peer.get(&peer).map_or(0, VecDeque::len);
        if mine >= self.limits.per_peer.max(1) {
            if !t.evict_idle(Some(peer)) {
                self.rejected.inc();
                return None;
            }
            self.evicted.inc();
        } else if t.total >= self.limits.max_connections.max(1) {
            if !t.evict_idle(None) {
                self.rejected.inc();
                return None;
            }
            self.evicted.inc();
        }
        let slot = Arc::new(Slot {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            peer,
            busy: AtomicU64::new(0),
            served: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(0),
            close: Notify::new(),
            closed: AtomicBool::new(false),
            epoch: self.epoch,
        });
        slot.touch();
        t.by_peer.entry(peer).or_default().push_back(slot.clone());
        t.total = t.total.saturating_add(1);
        self.open.set(i64::try_from(t.total).unwrap_or(i64::MAX));
        Some(slot)
    }

    fn release(&self, slot: &Slot) {
        let mut t = lock(&self.table);
        t.remove(slot);
        self.open.set(i64::try_from(t.total).unwrap_or(i64::MAX));
    }
}

/// Serves until `shutdown` resolves, then drains, with the default [`Limits`]. With
/// `--web.config.file` in the settings, serves with it; if it cannot be loaded, nothing is
/// served (fail closed, logged).
pub async fn serve(listener: TcpListener, fleet: Arc<Fleet>, shutdown: impl Future<Output = ()>) {
    let web = match fleet.settings().web_config_file.clone() {
        None => None,
        Some(p) => match WebHandle::load(&p) {
            Ok(h) => Some(h),
            Err(e) => {
                tracing::error!(error = %e, "cannot load the web config; not serving");
                return;
            }
        },
    };
    serve_web(listener, fleet, web, shutdown).await
}

/// [`serve`] with an already loaded web config (TLS, basic auth), watched for changes
/// while the server runs (every `web_config::POLL_INTERVAL`).
pub async fn serve_web(
    listener: TcpListener,
    fleet: Arc<Fleet>,
    web: Option<Arc<WebHandle>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_with(listener, fleet, Limits::default(), web, shutdown).await
}

/// Serves until `shutdown` resolves, then drains (at most [`DRAIN`]).
pub async fn serve_with(
    listener: TcpListener,
    fleet: Arc<Fleet>,
    limits: Limits,
    web: Option<Arc<WebHandle>>,
    shutdown: impl Future<Output = ()>,
) {
    let conns = Arc::new(Conns::new(&fleet.exporter, limits));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    // The web config is watched for changes by a task of this server (joined by its drain);
    // SIGHUP reaches it through the application's one signal listener ([`WebHandle::check`]).
    if let Some(w) = &web {
        w.register(fleet.exporter.registry());
        tasks.spawn(Arc::clone(w).watch(stop_rx.clone()));
    }
    tokio::pin!(shutdown);
    loop {
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
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
        let Some(slot) = conns.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        // TLS: the web config in force at accept; credentials, headers and rate limit: the
        // one in force at each request (a changed password applies to open connections too).
        let io = WebIo::new(stream, web.as_ref().map(|w| w.current()).as_deref());
        tasks.spawn(serve_conn(
            TokioIo::new(io),
            fleet.clone(),
            conns.clone(),
            slot,
            web.clone(),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("connections still open after the drain period; closing");
        tasks.abort_all();
    }
}

/// Serves one admitted connection (any byte stream: plain TCP, or TLS wrapped around it)
/// until the peer closes it, it stays idle too long, it is evicted, or the server stops.
async fn serve_conn<I>(
    io: I,
    fleet: Arc<Fleet>,
    conns: Arc<Conns>,
    slot: Arc<Slot>,
    web: Option<Arc<WebHandle>>,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let limits = conns.limits;
    let s2 = slot.clone();
    let svc = service_fn(move |req| {
        let fleet = fleet.clone();
        let slot = s2.clone();
        let web_now = web.as_ref().map(|w| w.current());
        async move {
            slot.busy.fetch_add(1, Ordering::SeqCst);
            slot.served.store(true, Ordering::SeqCst);
            let r = crate::web_config::serve_request(web_now, req, |req| {
                respond(fleet, req, slot.peer)
            })
            .await;
            slot.touch();
            slot.busy.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(r)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, svc);
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        // While a request runs, the idle clock does not: look again a whole period later.
        let from = if slot.idle() {
            slot.last_active()
        } else {
            Instant::now()
        };
        let idle_deadline = from
            .checked_add(limits.idle_timeout)
            .unwrap_or_else(Instant::now);
        tokio::select! {
            _ = conn.as_mut() => break,
            _ = slot.close.notified(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tokio::time::sleep_until(idle_deadline.into()), if !closing => {
                if slot.idle() && slot.last_active().elapsed() >= limits.idle_timeout {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
    if !slot.closed.load(Ordering::SeqCst) {
        conns.release(&slot);
    }
}

/// Answers one request: `/metrics` rendered on the render thread, the rest by [`route`].
async fn respond(fleet: Arc<Fleet>, req: Request<Incoming>, peer: IpAddr) -> Response<Full<Bytes>> {
    let telemetry = (req.method() == Method::GET || req.method() == Method::HEAD)
        && req.uri().path() == fleet.settings().telemetry_path;
    if !telemetry {
        return route(&fleet, req);
    }
    // A scrape is a read: without it the collectors fall to --collector.idle-interval
    // (60 s) two minutes after start although Prometheus scrapes every 15 s. Each scraper
    // (by address) is a reader whose pace the collectors follow.
    fleet.mark_read_by(crate::collector::Reader::Scrape(peer));
    let f = fleet.clone();
    match fleet
        .workers
        .run(crate::collector::Worker::Render, move || f.render())
        .await
    {
        Some(body) => text(StatusCode::OK, TEXT_CONTENT_TYPE, body),
        None => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain; charset=utf-8",
            "rendering failed\n",
        ),
    }
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// The value of `key` in a query string (`a=1&pipeline=orders`), percent-decoded.
pub fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0usize;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| {
            b.get(j)
                .and_then(|h| (*h as char).to_digit(16))
                .and_then(|d| u8::try_from(d).ok())
        };
        match c {
            b'%' => match (hex(i.saturating_add(1)), hex(i.saturating_add(2))) {
                (Some(h), Some(l)) => {
                    out.push(h.wrapping_mul(16).wrapping_add(l));
                    i = i.saturating_add(3);
                    continue;
                }
                _ => out.push(c),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i = i.saturating_add(1);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The pipeline a request names (`?pipeline=NAME`), else the only one. `Err`: the answer
/// (404 for an unknown name, 400 when several run and none is named), in JSON.
fn pick(
    fleet: &Fleet,
    req: &Request<Incoming>,
) -> Result<Arc<Context>, Box<Response<Full<Bytes>>>> {
    let json_err = |status: StatusCode, msg: String| {
        let names: Vec<String> = fleet
            .contexts()
            .iter()
            .map(|c| c.target().pipeline.clone())
            .collect();
        let body = serde_json::json!({ "error": msg, "pipelines": names }).to_string();
        Box::new(text(status, "application/json", body))
    };
    // Grafana's "All" of a pipeline variable (`.*`, `$__all`) names none
    let named = query_param(req.uri().query(), "pipeline")
        .filter(|n| !(n.is_empty() || n == ".*" || n == "$__all"));
    match named {
        Some(name) => fleet.find(&name).ok_or_else(|| {
            json_err(
                StatusCode::NOT_FOUND,
                format!("no pipeline named {}", crate::base::cut(&name, 256)),
            )
        }),
        None => fleet.only().ok_or_else(|| {
            json_err(
                StatusCode::BAD_REQUEST,
                "several pipelines: name one with ?pipeline=NAME (see /api/pipelines)".into(),
            )
        }),
    }
}

/// Routes one request other than a scrape of the telemetry path (served by `respond` on
/// the render thread).
pub fn route(fleet: &Fleet, req: Request<Incoming>) -> Response<Full<Bytes>> {
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
    let path = req.uri().path();
    let json = |body: String| text(StatusCode::OK, "application/json", body);
    match path {
        "/" => {
            let named = query_param(req.uri().query(), "pipeline").is_some();
            if !named && fleet.only().is_none() {
                fleet.mark_read();
                return text(
                    StatusCode::OK,
                    "text/html; charset=utf-8",
                    crate::page::overview::html(fleet),
                );
            }
            match pick(fleet, &req) {
                Ok(ctx) => {
                    ctx.mark_read();
                    text(
                        StatusCode::OK,
                        "text/html; charset=utf-8",
                        crate::page::landing_in(&ctx, fleet.len()),
                    )
                }
                Err(r) => *r,
            }
        }
        "/api/pipelines" => {
            fleet.mark_read();
            json(crate::page::overview::json(fleet))
        }
        "/api/status" => match pick(fleet, &req) {
            Ok(ctx) => {
                ctx.mark_read();
                json(crate::page::api_status(&ctx))
            }
            Err(r) => *r,
        },
        "/api/diagnosis" => match pick(fleet, &req) {
            Ok(ctx) => {
                ctx.mark_read();
                json(crate::page::api_diagnosis(&ctx))
            }
            Err(r) => *r,
        },
        "/api/topology" => match pick(fleet, &req) {
            Ok(ctx) => {
                ctx.mark_read();
                json(crate::page::topology::api_topology(&ctx))
            }
            Err(r) => *r,
        },
        "/healthz" => {
            // Every pipeline's collection loop, at its own cadence: the idle interval while
            // nobody reads (a liveness probe is not a reader).
            let stale: Vec<String> = fleet
                .contexts()
                .iter()
                .filter(|ctx| {
                    let cadence = ctx.cadence();
                    !ctx.last_cycle
                        .read()
                        .ok()
                        .and_then(|g| *g)
                        .is_some_and(|t| {
                            t.elapsed()
                                < cadence
                                    .saturating_mul(3)
                                    .saturating_add(Duration::from_secs(5))
                        })
                })
                .map(|c| c.target().pipeline.clone())
                .collect();
            if stale.is_empty() {
                text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n")
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!(
                        "collection loop has not completed recently: {}\n",
                        stale.join(", ")
                    ),
                )
            }
        }
        "/-/ready" => {
            let ready = fleet
                .contexts()
                .iter()
                .all(|c| c.last_cycle.read().ok().and_then(|g| *g).is_some());
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn ctx() -> Arc<Context> {
        let s = crate::config::Settings::from_flags(crate::config::Flags::default()).unwrap();
        let (_tx, rx) = watch::channel(Arc::new(s));
        Context::new(rx, Arc::new(crate::metrics::Store::new()))
    }

    /// Reads until the server closes the socket; false if it is still open after 10 s.
    async fn closed_by_server(s: &mut tokio::net::TcpStream) -> bool {
        let mut buf = vec![0u8; 65536];
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
        false
    }

    #[tokio::test]
    async fn silent_and_idle_keep_alive_connections_are_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            Arc::new(Fleet::of_one(ctx())),
            limits,
            None,
            async move {
                let _ = rx.await;
            },
        ));
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /-/ready HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        kept.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 503");
        assert!(
            closed_by_server(&mut silent).await,
            "silent socket left open"
        );
        assert!(
            closed_by_server(&mut kept).await,
            "idle keep-alive socket left open"
        );
        let _ = tx.send(());
        server.await.unwrap();
    }

    /// A scrape of /metrics (served on the render thread) counts as a read, so the
    /// collectors keep --collector.interval while Prometheus scrapes.
    #[tokio::test]
    async fn a_scrape_counts_as_a_read() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = ctx();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with(
            listener,
            Arc::new(Fleet::of_one(c.clone())),
            Limits::default(),
            None,
            async move {
                let _ = rx.await;
            },
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = c.reads.since_last();
        assert!(before >= Duration::from_millis(250), "{before:?}");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        assert!(
            c.reads.since_last() < Duration::from_millis(200),
            "a scrape was not counted as a read"
        );
        let _ = tx.send(());
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_full_table_evicts_the_oldest_idle_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let c = ctx();
        let limits = Limits {
            max_connections: 3,
            per_peer: 100,
            ..Limits::default()
        };
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let fleet = Arc::new(Fleet::of_one(c.clone()));
        let server = tokio::spawn(serve_with(
            listener,
            fleet.clone(),
            limits,
            None,
            async move {
                let _ = rx.await;
            },
        ));
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut rest = Vec::new();
        for _ in 0..3 {
            rest.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        assert!(
            closed_by_server(&mut first).await,
            "oldest idle socket kept"
        );
        let text = fleet.render();
        assert!(
            text.contains("gravity_exporter_connections_evicted_total 1"),
            "{text}"
        );
        let _ = tx.send(());
        server.await.unwrap();
    }
}
