//! The collectors follow a steady scraper (`--collector.follow-readers`, the default): scraped
//! every 3 s with `--collector.interval 1s`, the exporter asks gravity's API once per scrape,
//! just before it, instead of three times; with the flag off, every second as before.
//! gravity's API is a stub that notes when each `/healthz` request (one per collection) came.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A gravity API stub: every request answered 200 with an empty body; the instants of the
/// `/healthz` requests kept.
async fn counting_gravity() -> (std::net::SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    let req = String::from_utf8_lossy(&buf[..n]);
                    if req.split_whitespace().nth(1) == Some("/healthz") {
                        seen.lock().unwrap().push(Instant::now());
                    }
                    let resp = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collections_follow_a_steady_scraper() {
    let (g_on, seen_on) = counting_gravity().await;
    let (g_off, seen_off) = counting_gravity().await;
    let flags = |g: std::net::SocketAddr, follow: &str| {
        common::settings(&[
            "--gravity.url",
            &format!("http://{g}"),
            "--collector.interval",
            "1s",
            "--probe.interval",
            "0s",
            "--collector.follow-readers",
            follow,
        ])
    };
    let on = common::start(flags(g_on, "true")).await;
    let off = common::start(flags(g_off, "false")).await;
    let mut scrapes = Vec::new();
    for _ in 0..8 {
        let t = Instant::now();
        let (a, b) = tokio::join!(
            common::get(on.addr, "/metrics"),
            common::get(off.addr, "/metrics")
        );
        assert_eq!((a.0, b.0), (200, 200));
        scrapes.push(t);
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(t.elapsed())).await;
    }
    let between = |seen: &Arc<Mutex<Vec<Instant>>>, from: Instant, to: Instant| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|t| **t > from && **t <= to)
            .count()
    };
    // the reader is steady from its third scrape on: count the last three gaps (9 s)
    let last = &scrapes[4..];
    let count = |seen| {
        last.windows(2)
            .map(|w| between(seen, w[0], w[1]))
            .sum::<usize>()
    };
    let (n_on, n_off) = (count(&seen_on), count(&seen_off));
    assert!(
        n_off >= 7,
        "without following, a collection every second: {n_off} in 9 s (following: {n_on})"
    );
    assert!(
        n_on <= 4,
        "following a 3 s scraper: one collection per scrape, not {n_on} in 9 s"
    );
    // each of those scrapes found figures collected just before it (under a second old;
    // a collection timed after the scrape would leave them about 3 s old)
    for s in &last[1..] {
        let newest = seen_on
            .lock()
            .unwrap()
            .iter()
            .filter(|t| *t <= s)
            .max()
            .copied()
            .unwrap();
        let age = s.duration_since(newest);
        assert!(
            age < Duration::from_secs(1),
            "figures {age:?} old at a scrape"
        );
    }
    on.stop().await;
    off.stop().await;
}
