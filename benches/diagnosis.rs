//! What the diagnosis adds to one collection: `cargo bench --bench diagnosis`.
//!
//! Per collection the `/metrics` collector parses gravity's exposition (measured here as the
//! parse of a 40-table fixture, the cheapest part of its work) and, since issue 20, keeps
//! the samples the rules read ([`reading_of`]); the derived collector then builds the input
//! of a 6-reading window and applies the rules. Prints both costs and their ratio. Not a
//! timed test (`cargo test --all-targets` runs it once, quickly, without measuring).

use std::time::Instant;

use gravity_exporter::collector::diagnosis::reading_of;
use gravity_exporter::diagnosis::{build_input, diagnose, Facts};

const FIXTURE: &str = include_str!("../tests/fixtures/metrics-40-tables.prom");

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let rounds = if measuring { 2000 } else { 3 };
    // the parse every collection does anyway
    let t0 = Instant::now();
    let mut series = 0usize;
    for _ in 0..rounds {
        let e = gravity_exporter::expfmt::parse(FIXTURE).expect("fixture parses");
        series = series.wrapping_add(e.families.len());
    }
    let parse = t0.elapsed().as_secs_f64() / f64::from(rounds);
    // what the diagnosis adds: the reading kept, and the window diagnosed
    let e = gravity_exporter::expfmt::parse(FIXTURE).expect("fixture parses");
    let t1 = Instant::now();
    let mut readings = Vec::new();
    let mut keep = 0.0;
    for i in 0..rounds {
        let k = Instant::now();
        let r = reading_of(&e, f64::from(i) * 15.0);
        keep += k.elapsed().as_secs_f64();
        if readings.len() == 6 {
            readings.remove(0);
        }
        readings.push(r);
        if readings.len() >= 2 {
            let input = build_input(&readings, &Facts::default()).expect("window");
            std::hint::black_box(diagnose(&input));
        }
    }
    let diag = t1.elapsed().as_secs_f64() / f64::from(rounds);
    let keep = keep / f64::from(rounds);
    if !measuring {
        println!("diagnosis bench: ok ({series} families); run `cargo bench --bench diagnosis` to measure");
        return;
    }
    println!(
        "per collection: parse of gravity's /metrics (40 tables) {:.1} µs; diagnosis {:.1} µs (reading kept {:.1} µs, 6-reading window diagnosed {:.1} µs); {:.0} % of the parse",
        parse * 1e6,
        diag * 1e6,
        keep * 1e6,
        (diag - keep) * 1e6,
        diag / parse * 100.0
    );
}
