//! The double's HTTP server: gravity's endpoints (`/metrics`, `/status`, `/healthz`, `/reset`,
//! `/debug/pprof/`) with the fault modes applied, and the control endpoints under `/_double/`
//! that keep working in every mode.

use super::app::{App, ErrorKind};
use super::expo;
use super::sim::{Case, Mode, Now};
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Response body type of every handler.
pub type ResBody = BoxBody<Bytes, Infallible>;

/// Size of the `huge` fault's answer: 100 MiB.
pub const HUGE_BYTES: u64 = 100 * 1024 * 1024;
/// Longest a `hang` request is held (it is released earlier when the mode changes).
const HANG_CAP: Duration = Duration::from_secs(3600);

/// A streamed body of `remaining` junk bytes, sent in 64 KiB chunks.
struct Junk {
    remaining: u64,
    chunk: Bytes,
}

impl Body for Junk {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        let data = self.chunk.slice(..n);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        // Unknown length: sent chunked, as Go does for large streamed writes.
        SizeHint::default()
    }
}

/// xorshift64* bytes; `printable` keeps them in the junk-text range.
pub fn random_bytes(seed: u64, len: usize, printable: bool) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|i| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let b = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8;
            if printable {
                if i % 61 == 60 {
                    b'\n'
                } else {
                    const JUNK: &[u8] = b"~!@%^&*()_+=|;:,.<>?/`'\"[]{}0123456789abcdefXYZ \t";
                    JUNK.get(usize::from(b) % JUNK.len())
                        .copied()
                        .unwrap_or(b'~')
                }
            } else {
                b
            }
        })
        .collect()
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64)
}

fn full(
    status: StatusCode,
    content_type: Option<&str>,
    body: impl Into<Bytes>,
) -> Response<ResBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    if let Some(ct) = content_type {
        if let Ok(v) = ct.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
    }
    r
}

fn go_error(status: StatusCode, msg: &str) -> Response<ResBody> {
    let mut r = full(
        status,
        Some("text/plain; charset=utf-8"),
        format!("{msg}\n"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        hyper::header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<ResBody> {
    full(status, Some("application/json"), format!("{v}\n"))
}

/// Parses `a=1&b=x` (with `%XX` and `+` decoding), keeping at most 16 pairs.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    fn dec(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while let Some(&c) = b.get(i) {
            match c {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = b
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok());
                    match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(v) => {
                            out.push(v);
                            i += 2;
                        }
                        None => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    q.split('&')
        .filter(|p| !p.is_empty())
        .take(16)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// Serves one request.
pub(crate) async fn handle(app: Arc<App>, req: Request<Incoming>) -> Response<ResBody> {
    let path = req.uri().path().to_string();
    if let Some(ctl) = path.strip_prefix("/_double/") {
        let q = query_pairs(req.uri().query().unwrap_or(""));
        return control(&app, req.method(), ctl, &q);
    }
    // A stuck gravity: accept, read the request, never answer (until the mode changes).
    let mut rx = app.mode_rx();
    loop {
        if *rx.borrow_and_update() != Mode::Hang {
            break;
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { break },
            _ = tokio::time::sleep(HANG_CAP) => break,
        }
    }
    let mode = app.mode();
    let gravity_path = matches!(
        path.as_str(),
        "/metrics" | "/status" | "/healthz" | "/reset"
    ) || path.starts_with("/debug/pprof");
    match mode {
        Mode::Http500 if gravity_path => {
            if path == "/metrics" {
                app.count_scrape(500);
                return go_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "An error has occurred while serving metrics:\n\n\
                     collected metric \"gravity_input_counter\" was collected before with the same name and label values",
                );
            }
            return go_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to get position: Error 1045: Access denied for user 'repl'@'10.0.0.1' (using password: YES)",
            );
        }
        Mode::Garbage if gravity_path => {
            let body = random_bytes(seed(), 4096 + (seed() % 4096) as usize, false);
            let ct = if path == "/status" {
                "application/json"
            } else {
                expo::CONTENT_TYPE
            };
            return full(StatusCode::OK, Some(ct), body);
        }
        Mode::Huge if path == "/metrics" || path == "/status" => {
            let chunk = Bytes::from(random_bytes(seed(), 64 * 1024, true));
            let mut r = Response::new(
                Junk {
                    remaining: HUGE_BYTES,
                    chunk,
                }
                .boxed(),
            );
            let ct = if path == "/status" {
                "application/json"
            } else {
                expo::CONTENT_TYPE
            };
            if let Ok(v) = ct.parse() {
                r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
            }
            return r;
        }
        _ => {}
    }
    match path.as_str() {
        "/metrics" => {
            let body = app.render_metrics();
            full(StatusCode::OK, Some(expo::CONTENT_TYPE), body)
        }
        "/status" => match app.render_status() {
            Some(body) => full(StatusCode::OK, Some("application/json"), body),
            None => full(StatusCode::INTERNAL_SERVER_ERROR, None, Bytes::new()),
        },
        "/healthz" => {
            let code = if app.healthz() {
                StatusCode::OK
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            full(code, None, Bytes::new())
        }
        "/reset" => {
            app.reset_called();
            // gravity exits without answering.
            std::future::pending::<()>().await;
            full(StatusCode::OK, None, Bytes::new())
        }
        p if p == "/debug/pprof" || p.starts_with("/debug/pprof/") => full(
            StatusCode::OK,
            Some("text/html; charset=utf-8"),
            "<html>\n<head>\n<title>/debug/pprof/</title>\n</head>\n<body>\n/debug/pprof/<br>\n\
             <br>\nTypes of profiles available:\n</body>\n</html>\n",
        ),
        _ => go_error(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

fn param<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

fn bad(msg: String) -> Response<ResBody> {
    json(
        StatusCode::BAD_REQUEST,
        &serde_json::json!({ "error": msg }),
    )
}

fn control(
    app: &Arc<App>,
    method: &Method,
    what: &str,
    q: &[(String, String)],
) -> Response<ResBody> {
    let post_only = |m: &Method| m != Method::POST;
    match what {
        "state" => json(StatusCode::OK, &app.state_json(Now::current())),
        "fault" => {
            if post_only(method) {
                return json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "use POST"}),
                );
            }
            let Some(mode) = param(q, "mode").and_then(Mode::parse) else {
                let names: Vec<&str> = Mode::ALL.iter().map(|m| m.as_str()).collect();
                return bad(format!("mode must be one of {}", names.join(", ")));
            };
            app.set_mode(mode);
            json(
                StatusCode::OK,
                &serde_json::json!({ "mode": mode.as_str() }),
            )
        }
        "errors" => {
            if post_only(method) {
                return json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "use POST"}),
                );
            }
            let n = param(q, "n").map_or(Ok(1), str::parse::<u64>);
            let Ok(n) = n else {
                return bad("n must be a non-negative integer".into());
            };
            let Some(kind) = param(q, "kind").and_then(ErrorKind::parse) else {
                let names: Vec<&str> = ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
                return bad(format!("kind must be one of {}", names.join(", ")));
            };
            let exit = param(q, "exit").is_none_or(|v| v != "0");
            let n = n.min(10_000);
            let (written, retries) = app.write_errors(kind, n, exit);
            json(
                StatusCode::OK,
                &serde_json::json!({ "kind": kind.as_str(), "written": written, "retries_added": retries }),
            )
        }
        "rate" => {
            if post_only(method) {
                return json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "use POST"}),
                );
            }
            match param(q, "rows_per_sec").and_then(|v| v.parse::<f64>().ok()) {
                Some(r) if r.is_finite() && r >= 0.0 => {
                    app.set_rate(r);
                    json(StatusCode::OK, &serde_json::json!({ "rows_per_second": r }))
                }
                _ => bad("rows_per_sec must be a non-negative number".into()),
            }
        }
        "lag" => {
            if post_only(method) {
                return json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "use POST"}),
                );
            }
            match param(q, "seconds").and_then(|v| v.parse::<f64>().ok()) {
                Some(s) if s.is_finite() && s >= 0.0 => {
                    app.set_lag(s);
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "lag_mean_seconds": s }),
                    )
                }
                _ => bad("seconds must be a non-negative number".into()),
            }
        }
        "diagnosis" => {
            if post_only(method) {
                return json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "use POST"}),
                );
            }
            // A diagnosis case: the shape of gravity's figures when one stage holds the
            // pipeline back (docs/diagnosis.md); case=none ends it.
            let Some(case) = param(q, "case").and_then(Case::parse) else {
                let names: Vec<&str> = Case::ALL.iter().map(|c| c.as_str()).collect();
                return bad(format!("case must be one of {}", names.join(", ")));
            };
            app.set_case(case);
            json(
                StatusCode::OK,
                &serde_json::json!({ "case": case.as_str(), "mode": app.mode().as_str() }),
            )
        }
        "kafka" => {
            if post_only(method) {
                return json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "use POST"}),
                );
            }
            // The Kafka data path: produce=off drops messages silently, produce=on sends.
            match param(q, "produce") {
                Some("on") | Some("off") => {
                    let off = param(q, "produce") == Some("off");
                    app.kafka_out
                        .paused
                        .store(off, std::sync::atomic::Ordering::Relaxed);
                    json(StatusCode::OK, &app.kafka_out.json())
                }
                _ => bad("produce must be on or off".into()),
            }
        }
        "watermark" => {
            if post_only(method) {
                return json(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &serde_json::json!({"error": "use POST"}),
                );
            }
            // Unix seconds (fractional) of a real data path's progress, or clear=1.
            if param(q, "clear").is_some() {
                app.set_watermark(None);
                return json(
                    StatusCode::OK,
                    &serde_json::json!({ "watermark": "simulated" }),
                );
            }
            let t = |k: &str| {
                param(q, k)
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e11)
                    .map(|v| std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(v))
            };
            match (t("event"), t("process")) {
                (Some(e), Some(p)) => {
                    app.set_watermark(Some((e, p)));
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "watermark": "pinned" }),
                    )
                }
                _ => bad("event and process must be Unix seconds (or clear=1)".into()),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            &serde_json::json!({"error": "unknown control endpoint", "endpoints": ["GET /_double/state", "POST /_double/fault?mode=", "POST /_double/errors?n=&kind=", "POST /_double/rate?rows_per_sec=", "POST /_double/lag?seconds=", "POST /_double/watermark?event=&process= (Unix seconds) or ?clear=1", "POST /_double/kafka?produce=on|off", "POST /_double/diagnosis?case=slow_writes|hot_rows|slow_reading|stuck_window|retries|slow_dump|none"]}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        assert_eq!(
            query_pairs("mode=heartbeat%5Fbroken&n=3&x&y=a+b&z=%zz&w=%4"),
            vec![
                ("mode".into(), "heartbeat_broken".into()),
                ("n".into(), "3".into()),
                ("x".into(), "".into()),
                ("y".into(), "a b".into()),
                ("z".into(), "%zz".into()),
                ("w".into(), "%4".into()),
            ]
        );
        assert_eq!(query_pairs(&"a=1&".repeat(100)).len(), 16);
    }

    #[test]
    fn junk_is_junk() {
        let b = random_bytes(42, 10_000, true);
        assert_eq!(b.len(), 10_000);
        assert!(!b.starts_with(b"# HELP"));
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_err());
        assert_ne!(random_bytes(1, 64, false), random_bytes(2, 64, false));
    }
}
