//! Scrapes a /metrics URL N times over one keep-alive connection and prints latency
//! percentiles: `cargo bench --bench scrape -- http://127.0.0.1:9810/metrics 1000 [pause_ms]`
//! (an optional pause between scrapes, as a scraper on an interval would leave).
//! Used by scripts/bench-vs-peers.sh and scripts/hostile.py; not a timed test.

use std::time::{Duration, Instant};

use gravity_exporter::gravity_api::GravityClient;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let (Some(url), n) = (
        args.first(),
        args.get(1)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(1000),
    ) else {
        // `cargo test --all-targets` runs harness-less benches without arguments: nothing to do.
        println!("scrape: no URL given (scripts/bench-vs-peers.sh passes one); nothing to measure");
        return;
    };
    let pause = Duration::from_millis(args.get(2).and_then(|p| p.parse().ok()).unwrap_or(0));
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        eprintln!("bad URL {url}");
        std::process::exit(2);
    };
    let path = uri.path().to_string();
    let base: hyper::Uri = match format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or("")
    )
    .parse()
    {
        Ok(b) => b,
        Err(_) => std::process::exit(2),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => std::process::exit(1),
    };
    rt.block_on(async {
        let c = GravityClient::new();
        let mut lat = Vec::with_capacity(n);
        let mut bytes = 0usize;
        for _ in 0..n {
            let t = Instant::now();
            match c.get(&base, &path, Duration::from_secs(10), 64 << 20).await {
                Ok(r) if r.status.is_success() => bytes = r.body.len(),
                Ok(r) => {
                    eprintln!("HTTP {}", r.status);
                    std::process::exit(1);
                }
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
            lat.push(t.elapsed());
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
        }
        lat.sort();
        let pct =
            |p: f64| lat[((lat.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1000.0;
        println!(
            "scrapes={n} bytes={bytes} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3}",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            pct(1.0)
        );
    });
}
