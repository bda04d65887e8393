//! Throughput of the log layer: `parse_line` + `classify` over gravity's JSON log.
//!
//! Builds a 200k-line log by cycling through tests/fixtures/gravity.log, splits it into lines
//! once, and runs `parse_line` + `classify` over those lines repeatedly for at least two
//! seconds. Target: >= 1.75M lines per CPU-second (4x mtail).
//! The rate is computed from the thread's CPU time (Linux `/proc/thread-self/schedstat`), so
//! time spent waiting for a CPU on a busy machine is not counted; wall-clock time is the
//! fallback and is printed too.
//! Run with `cargo bench --bench logparse`.
//!
//! The same run also measures a serde_json variant of the JSON path (a derived, borrowing
//! `Deserialize` struct, then the same `Record` and `classify`), the question of issue 9:
//! is the hand-written JSON scan needed to stay at 4x mtail?

use std::borrow::Cow;
use std::hint::black_box;
use std::time::{Duration, Instant};

use gravity_exporter::log::classify::classify;
use gravity_exporter::log::record::{parse_line, Level, LogFormat, Record};

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

/// gravity's logrus JSON fields, borrowed from the line where no unescaping is needed.
#[derive(serde::Deserialize)]
struct Raw<'a> {
    #[serde(borrow)]
    level: Cow<'a, str>,
    #[serde(borrow, default)]
    msg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    file: Option<Cow<'a, str>>,
    #[serde(default)]
    line: Option<u32>,
    #[serde(borrow, default)]
    pipeline: Option<Cow<'a, str>>,
}

fn borrowed<'a>(c: &Option<Cow<'a, str>>) -> Option<&'a str> {
    match c {
        Some(Cow::Borrowed(s)) => Some(s),
        _ => None,
    }
}

fn serde_pass(log: &[&str]) -> (u64, u64) {
    let (mut lines, mut flagged) = (0u64, 0u64);
    for &line in log {
        if let Ok(raw) = serde_json::from_str::<Raw>(black_box(line)) {
            if let Some(level) = Level::parse(&raw.level) {
                let rec = Record {
                    level,
                    time: borrowed(&raw.time),
                    file: borrowed(&raw.file),
                    line: raw.line,
                    msg: raw.msg.unwrap_or_default(),
                    pipeline: borrowed(&raw.pipeline),
                };
                let c = black_box(classify(&rec));
                flagged += u64::from(c.counts_as_error || c.is_retry);
            }
        }
        lines += 1;
    }
    (lines, flagged)
}

/// Lines per CPU-second of `f` over `log`, and the wall-clock figures.
fn run(log: &[&str], f: fn(&[&str]) -> (u64, u64)) -> (u64, f64, f64) {
    black_box(f(log)); // warm-up
    let cpu0 = thread_cpu_ns();
    let start = Instant::now();
    let (mut lines, mut flagged) = (0u64, 0u64);
    while start.elapsed() < MIN_RUN {
        let (n, fl) = f(log);
        lines += n;
        flagged += fl;
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = match (cpu0, thread_cpu_ns()) {
        (Some(a), Some(b)) if b > a => (b - a) as f64 / 1e9,
        _ => wall,
    };
    black_box(flagged);
    (lines, cpu, wall)
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
    let (lines, cpu, wall) = run(&log, pass);
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
    let (lines, cpu, _) = run(&log, serde_pass);
    println!(
        "logparse serde_json variant: {lines} lines, {:.0} lines/s (one core)",
        lines as f64 / cpu
    );
}
