//! Each diagnosis control of the double, read the way the exporter reads gravity: two
//! `/metrics` expositions of the double 60 s apart (and the watermark lag, and the log lines
//! the double writes for the case) through `gravity_exporter::diagnosis`, and the verdict.
//! Pure: the simulation is a function of time, no process is started.

use std::time::Duration;

use gravity_double::config;
use gravity_double::expo::{render_metrics, ProcStats};
use gravity_double::sim::{Case, Mode, Now, Settings, Sim, PROCESS_DELAY_WARNING};
use gravity_exporter::diagnosis::{
    self, build_input, diagnose, parse_samples, Diagnosis, Facts, LogWindow, Reading, Stage,
};

const M2M: &str = include_str!("../../fixtures/configs/mysql2mysql-stream.toml");
const DUMP: &str = include_str!("../../fixtures/configs/mysql-full-dump.toml");

fn settings_of(text: &str) -> diagnosis::Settings {
    let v: toml::Value = toml::from_str(text).unwrap_or_else(|e| panic!("toml: {e}"));
    let json = serde_json::to_value(v).unwrap_or_else(|e| panic!("json: {e}"));
    diagnosis::Settings::from_config_value(&json)
}

fn at(t0: Now, secs: f64) -> Now {
    t0.plus(Duration::from_secs_f64(secs))
}

fn event_lag(sim: &Sim, now: Now) -> f64 {
    sim.watermarks(now)
        .first()
        .and_then(|w| now.wall.duration_since(w.event_time).ok())
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Runs `case` from t0 + 10 s and diagnoses the window [t0 + 15 s, t0 + 75 s]. The log lines
/// the double's ticker writes for the case are replayed second by second.
fn window(config_text: &str, settings: Settings, case: Case, batch: bool) -> (Sim, Diagnosis) {
    window_probe(config_text, settings, case, batch, 0.004)
}

/// [`window`] with the target probe's latency as the exporter measured it.
fn window_probe(
    config_text: &str,
    settings: Settings,
    case: Case,
    batch: bool,
    probe: f64,
) -> (Sim, Diagnosis) {
    let spec = config::parse("c.toml", config_text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let t0 = Now::current();
    let mut sim = Sim::new(spec, settings, t0);
    let start = at(t0, 10.0);
    sim.update_hists(start);
    sim.set_case(case, start);
    let (a, b) = (15.0, 75.0);
    let mut log = LogWindow::default();
    let mut readings = Vec::new();
    let mut lags = Vec::new();
    let mut second = 11.0;
    for t in [a, b] {
        // the ticker's lines up to t (only those inside the window count)
        while second <= t {
            let now = at(t0, second);
            sim.update_hists(now);
            match case {
                Case::Retries => {
                    sim.retries += 1;
                    if second > a {
                        log.note("error execute sync output, retry. Error 1213: Deadlock found when trying to get lock; try restarting transaction");
                    }
                }
                Case::StuckWindow => {
                    if let Some((seq, key, waited)) = sim.stuck_item(now) {
                        if waited > PROCESS_DELAY_WARNING && second > a {
                            log.note(&format!(
                                "[sliding_window] item not ack after {waited:.6} seconds. {key} seq {seq}"
                            ));
                        }
                    }
                }
                _ => {}
            }
            second += 1.0;
        }
        let now = at(t0, t);
        sim.update_hists(now);
        let text = render_metrics(&sim, now, &ProcStats::default());
        readings.push(Reading {
            at_seconds: t,
            samples: parse_samples(&text),
        });
        lags.push(event_lag(&sim, now));
    }
    let end = at(t0, b);
    let left = sim.counts(end).tables.iter().filter(|t| !t.done).count();
    let facts = Facts {
        mode: if batch {
            diagnosis::Mode::Batch
        } else {
            diagnosis::Mode::Stream
        },
        settings: settings_of(config_text),
        event_lag_seconds: if batch {
            None
        } else {
            Some((lags[0], lags[1]))
        },
        target_probe_latency_seconds: Some(probe),
        target_connections: Some(4.0),
        tables_remaining: batch.then(|| u32::try_from(left).unwrap_or(u32::MAX)),
        log,
        ..Facts::default()
    };
    let input = build_input(&readings, &facts).unwrap_or_else(|e| panic!("{e}"));
    (sim, diagnose(&input))
}

fn stream(case: Case) -> Diagnosis {
    window(M2M, Settings::default(), case, false).1
}

#[test]
fn no_case_is_healthy() {
    let d = stream(Case::None);
    assert_eq!(d.bottleneck, Stage::None, "{d:#?}");
    assert!(d.suggestions.is_empty());
}

#[test]
fn slow_writes_is_the_output() {
    let d = stream(Case::SlowWrites);
    assert_eq!(d.bottleneck, Stage::Output, "{d:#?}");
    let settings: Vec<Option<&str>> = d.suggestions.iter().map(|s| s.setting).collect();
    assert_eq!(
        settings,
        [Some("nr-worker"), Some("max-open"), Some("batch-size")]
    );
}

#[test]
fn slow_writes_to_a_slow_target_is_the_target() {
    let (_, d) = window_probe(M2M, Settings::default(), Case::SlowWrites, false, 0.12);
    // batches are full: batch-size is still worth raising; the target has no headroom
    assert_eq!(d.bottleneck, Stage::Output, "{d:#?}");
    let settings: Vec<Option<&str>> = d.suggestions.iter().map(|s| s.setting).collect();
    assert_eq!(settings, [Some("batch-size")]);
}

#[test]
fn hot_rows_is_the_scheduler_and_names_the_table() {
    let d = stream(Case::HotRows);
    assert_eq!(d.bottleneck, Stage::Scheduler, "{d:#?}");
    assert!(d.finding.contains("test_db."), "{}", d.finding);
}

#[test]
fn slow_reading_is_the_source() {
    let d = stream(Case::SlowReading);
    assert_eq!(d.bottleneck, Stage::Source, "{d:#?}");
}

#[test]
fn stuck_window_names_the_item() {
    let (sim, d) = window(M2M, Settings::default(), Case::StuckWindow, false);
    assert_eq!(sim.mode(), Mode::Stall);
    assert_eq!(d.bottleneck, Stage::Output, "{d:#?}");
    assert!(d.finding.contains("of stream mysqlstream"), "{}", d.finding);
}

#[test]
fn retries_are_the_target_with_their_cause() {
    let d = stream(Case::Retries);
    assert_eq!(d.bottleneck, Stage::Target, "{d:#?}");
    assert!(d.finding.contains("deadlock"), "{}", d.finding);
}

#[test]
fn slow_dump_is_the_input_at_its_throttle() {
    let settings = Settings {
        batch_rows: 50_000_000,
        ..Settings::default()
    };
    let (sim, d) = window(DUMP, settings, Case::SlowDump, true);
    // one table left would be 10000 rows/s; three tables: 3 × 10000 × 1
    assert!(
        (sim.rate() - 0.96 * 30_000.0).abs() < 1e-6,
        "{}",
        sim.rate()
    );
    assert_eq!(d.bottleneck, Stage::Input, "{d:#?}");
    let settings: Vec<Option<&str>> = d.suggestions.iter().map(|s| s.setting).collect();
    assert!(
        settings.contains(&Some("batch-per-second-limit")),
        "{settings:?}"
    );
}

/// The JSON of each case, for docs/diagnosis.md:
/// `cargo test -p gravity-double --test diagnosis_cases -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_examples() {
    for case in Case::ALL {
        let d = if case == Case::SlowDump {
            let s = Settings {
                batch_rows: 50_000_000,
                ..Settings::default()
            };
            window(DUMP, s, case, true).1
        } else {
            stream(case)
        };
        println!(
            "=== {}\n{}",
            case.as_str(),
            serde_json::to_string_pretty(&d).unwrap_or_default()
        );
    }
    let (_, d) = window_probe(M2M, Settings::default(), Case::SlowWrites, false, 0.12);
    println!(
        "=== slow_writes_slow_target\n{}",
        serde_json::to_string_pretty(&d).unwrap_or_default()
    );
}
