//! Throughput of the log layer: `parse_line` + `classify` over gravity's JSON log.
//!
//! Builds a 200k-line log by cycling through tests/fixtures/gravity.log, splits it into lines
//! once, and runs `parse_line` + `classify` over those lines repeatedly for at least two
//! seconds. Target: >= 1.75M lines per CPU-second (4x mtail).
//! The rate is computed from the thread's CPU time (Linux `/proc/thread-self/schedstat`), so
//! time spent waiting for a CPU on a busy machine is not counted; wall-clock time is the
//! fallback and is printed too.
//! Run with `cargo bench --bench logparse`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gravity_exporter::log::classify::classify;
use gravity_exporter::log::record::{parse_line, LogFormat};

const FIXTURE: &str = include_str!("../tests/fixtures/gravity.log");
const LINES: usize = 200_000;
const MIN_RUN: Duration = Duration::from_secs(2);

/// Nanoseconds this thread has spent on a CPU, if the kernel tells.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

fn pass(log: &[&str]) -> (u64, u64) {
    let (mut lines, mut flagged) = (0u64, 0u64);
    for &line in log {
        if let Ok(rec) = parse_line(black_box(line), LogFormat::Json) {
            let c = black_box(classify(&rec));
            flagged += u64::from(c.counts_as_error || c.is_retry);
        }
        lines += 1;
    }
    (lines, flagged)
}

fn main() {
    let fixture: Vec<&str> = FIXTURE.lines().filter(|l| !l.is_empty()).collect();
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --all-targets` runs harness-less benches without `--bench`: check the
        // fixture classifies, measure nothing.
        let n = fixture
            .iter()
            .filter(|l| parse_line(l, LogFormat::Json).is_ok())
            .count();
        println!("logparse: fixture ok ({n} lines); run `cargo bench --bench logparse` to measure");
        return;
    }
    let mut log = String::new();
    for line in fixture.iter().cycle().take(LINES) {
        log.push_str(line);
        log.push('\n');
    }

    // Splitting the text into lines is the tailer's job, not measured here.
    let log: Vec<&str> = log.lines().collect();
    black_box(pass(&log)); // warm-up
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let (mut lines, mut flagged) = (0u64, 0u64);
    while start.elapsed() < MIN_RUN {
        let (n, f) = pass(&log);
        lines += n;
        flagged += f;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => wall,
    };
    black_box(flagged);
    println!(
        "logparse: {lines} lines, {:.0} lines/s (one core)",
        lines as f64 / cpu
    );
    println!(
        "logparse: {:.2} s CPU in {:.2} s wall ({:.0} lines/s wall-clock)",
        cpu,
        wall,
        lines as f64 / wall
    );
}
