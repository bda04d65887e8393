//! Throughput of `expfmt::parse` on a gravity-shaped exposition of about 10k series
//! (tests/fixtures/metrics-10k.prom, made with gen_metrics.py --tables 1400).
//!
//! std-only benchmark (`harness = false`): `cargo bench --bench expfmt` warms up, parses
//! for at least 2 s and prints MB/s and series/s. Without `--bench` (e.g. under
//! `cargo test --all-targets`) it only checks once that the fixture parses.

use gravity_exporter::expfmt::parse;
use std::hint::black_box;
use std::time::{Duration, Instant};

const INPUT: &str = include_str!("../tests/fixtures/metrics-10k.prom");

fn main() {
    let series = match parse(INPUT) {
        Ok(e) => e.families.iter().map(|f| f.samples.len()).sum::<usize>(),
        Err(e) => {
            eprintln!("expfmt bench: fixture does not parse: {e}");
            std::process::exit(1);
        }
    };
    if !std::env::args().any(|a| a == "--bench") {
        println!("expfmt parse: fixture ok ({series} series); run `cargo bench --bench expfmt` to measure");
        return;
    }

    let warm_up = Instant::now();
    while warm_up.elapsed() < Duration::from_millis(500) {
        black_box(parse(black_box(INPUT)).is_ok());
    }

    // Per-iteration times, bounded (2 s at >= 20 µs per parse).
    let mut times: Vec<Duration> = Vec::with_capacity(100_000);
    let cpu_start = thread_cpu_ns();
    let start = Instant::now();
    let elapsed = loop {
        let t = Instant::now();
        let result = parse(black_box(INPUT));
        black_box(&result);
        drop(result);
        if times.len() < times.capacity() {
            times.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        if elapsed >= Duration::from_secs(2) {
            break elapsed;
        }
    };
    let cpu_ns = cpu_start.and_then(|s| Some(thread_cpu_ns()?.saturating_sub(s)));
    let iterations = times.len().max(1);
    times.sort_unstable();
    let pct = |p: usize| {
        times
            .get(times.len() * p / 100)
            .copied()
            .unwrap_or_default()
    };

    let mb = INPUT.len() as f64 / 1e6;
    let secs = elapsed.as_secs_f64() / iterations as f64;
    println!(
        "expfmt parse: {series} series, {mb:.2} MB, {:.1} MB/s, {:.2}M series/s",
        mb / secs,
        series as f64 / secs / 1e6
    );
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "  ({iterations} iterations; mean {:.3} ms; min {:.3} / median {:.3} / p90 {:.3} ms; median = {:.1} MB/s)",
        secs * 1e3,
        ms(pct(0)),
        ms(pct(50)),
        ms(pct(90)),
        mb / pct(50).as_secs_f64()
    );
    if let Some(ns) = cpu_ns.filter(|&ns| ns > 0) {
        let cpu_secs = ns as f64 / 1e9;
        println!(
            "  on-CPU: {:.1} MB/s over {cpu_secs:.2} s of CPU in {:.2} s wall (the difference is time other processes had the core)",
            mb * iterations as f64 / cpu_secs,
            elapsed.as_secs_f64()
        );
    }
}

/// Nanoseconds this thread has run on a CPU, from Linux's schedstat; `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}
