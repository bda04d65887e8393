//! The rules over recorded windows (tests/fixtures/diagnosis/<case>.{a,b}.prom: two readings
//! 60 s apart, shaped like gravity-reference/metrics.prom), and the property that a healthy,
//! idle, down or stopped pipeline never gets a suggestion.

use super::*;
use proptest::prelude::*;

macro_rules! fixture {
    ($case:literal) => {
        (
            include_str!(concat!("../../tests/fixtures/diagnosis/", $case, ".a.prom")),
            include_str!(concat!("../../tests/fixtures/diagnosis/", $case, ".b.prom")),
        )
    };
}

const STREAM_TOML: &str = include_str!("../../tests/fixtures/configs/mysql2mysql-stream.toml");
const DUMP_TOML: &str = include_str!("../../tests/fixtures/configs/mysql-full-dump.toml");

fn settings_of(toml_text: &str) -> Settings {
    let v: toml::Value = toml::from_str(toml_text).expect("fixture config parses");
    let json = serde_json::to_value(v).expect("toml converts to json");
    Settings::from_config_value(&json)
}

fn window((a, b): (&str, &str)) -> Vec<Reading> {
    vec![
        Reading {
            at_seconds: 1000.0,
            samples: parse_samples(a),
        },
        Reading {
            at_seconds: 1060.0,
            samples: parse_samples(b),
        },
    ]
}

fn stream_facts() -> Facts {
    Facts {
        settings: settings_of(STREAM_TOML),
        event_lag_seconds: Some((0.8, 0.9)),
        binlog_bytes_behind: Some((20_000.0, 21_000.0)),
        target_probe_latency_seconds: Some(0.004),
        target_connections: Some(12.0),
        ..Facts::default()
    }
}

fn log(lines: &[(&str, usize)]) -> LogWindow {
    let mut l = LogWindow::default();
    for (msg, n) in lines {
        for _ in 0..*n {
            l.note(msg);
        }
    }
    l
}

fn run(readings: (&str, &str), facts: &Facts) -> Diagnosis {
    let input = build_input(&window(readings), facts).expect("two readings");
    diagnose(&input)
}

type Row<'a> = (Option<&'a str>, Option<f64>, Option<f64>, Direction);

fn json(d: &Diagnosis) -> serde_json::Value {
    serde_json::to_value(d).expect("serialises")
}

#[test]
fn settings_in_force_from_config_and_defaults() {
    let s = settings_of(STREAM_TOML);
    assert_eq!(
        s.nr_worker,
        Setting {
            value: 20.0,
            from_config: true
        }
    );
    assert_eq!((s.batch_size.value, s.queue_size.value), (10.0, 1024.0));
    assert_eq!(s.sliding_window_size.value, 1024.0);
    assert_eq!(
        s.max_open.map(|m| (m.value, m.from_config)),
        Some((20.0, true))
    );
    // omitted: gravity's defaults
    assert_eq!((s.nr_retries.value, s.nr_retries.from_config), (3.0, false));
    assert_eq!(s.retry_sleep_seconds.value, 1.0);
    assert_eq!(s.healthy_threshold_seconds.value, 60.0);
    let d = settings_of(DUMP_TOML);
    assert_eq!(d.nr_worker.value, 10.0);
    assert!(!d.nr_worker.from_config);
    assert_eq!(d.batch_size.value, 1.0);
    assert_eq!(d.sliding_window_size.value, 10240.0);
    assert_eq!(
        (
            d.nr_scanner.value,
            d.table_scan_batch.value,
            d.batch_per_second_limit.value
        ),
        (10.0, 10000.0, 1.0)
    );
    // a MySQL target without max-open: gravity's DBConfig default 200
    assert_eq!(
        d.max_open.map(|m| (m.value, m.from_config)),
        Some((200.0, false))
    );
    // Kafka output: no max-open
    let k = settings_of(include_str!(
        "../../tests/fixtures/configs/mysql2kafka-stream.toml"
    ));
    assert_eq!(k.max_open, None);
    // zero and negatives are replaced by gravity's defaults; a Go duration for retry-sleep
    let j = serde_json::json!({"scheduler": {"config": {"nr-worker": 0, "batch-size": -3, "retry-sleep": "500ms"}}});
    let z = Settings::from_config_value(&j);
    assert_eq!((z.nr_worker.value, z.nr_worker.from_config), (10.0, false));
    assert_eq!(z.batch_size.value, 1.0);
    assert_eq!(z.retry_sleep_seconds.value, 0.5);
}

#[test]
fn figures_of_a_window() {
    let i = build_input(&window(fixture!("slow_writes")), &stream_facts()).expect("input");
    assert_eq!(i.window_seconds, 60.0);
    assert_eq!(i.readings, 2);
    let out = i.latency.output.expect("output latency");
    assert!((out.mean_seconds - 2.0).abs() < 1e-6, "{out:?}");
    assert_eq!(out.events, 900.0);
    assert!((i.rows_in_per_second.expect("rate") - 400.0).abs() < 1e-6);
    assert!((i.rows_out_per_second.expect("rate") - 150.0).abs() < 1e-6);
    assert_eq!(i.queues.workers.len(), 20);
    assert_eq!(i.queues.workers.first().map(|w| w.0), Some(0));
    assert_eq!(i.queues.workers.last().map(|w| w.0), Some(19));
    let w = i.queues.window_fill().expect("window");
    assert_eq!(w.stream, "mysqlstream");
    assert_eq!(w.waiting.mean, 750.0);
    // the fill is computed from waiting-chan / sliding-window-size, not gravity's integer ratio (0)
    assert!((w.fill.mean - 750.0 / 1024.0).abs() < 1e-9);
    assert_eq!(i.batch_size.map(|b| b.mean), Some(10.0));
    assert_eq!(i.nr_worker_reported, Some(20.0));
    assert_eq!(i.retries, Some(0.0));
    assert!(i
        .event_lag_change_seconds
        .is_some_and(|d| (d - 0.1).abs() < 1e-9));
}

#[test]
fn needs_two_readings_in_time_order() {
    let (a, _) = fixture!("healthy");
    let one = vec![Reading {
        at_seconds: 1.0,
        samples: parse_samples(a),
    }];
    assert_eq!(
        build_input(&one, &Facts::default()).err(),
        Some(DiagnosisError::TooFewReadings(1))
    );
    let mut two = window(fixture!("healthy"));
    two.reverse();
    assert_eq!(
        build_input(&two, &Facts::default()).err(),
        Some(DiagnosisError::NotInTimeOrder)
    );
}

#[test]
fn healthy_pipeline_none() {
    let d = run(fixture!("healthy"), &stream_facts());
    assert_eq!((d.bottleneck, d.case), (Stage::None, Case::Healthy));
    assert!(d.suggestions.is_empty());
    assert_eq!(d.stages.len(), 6);
}

#[test]
fn idle_pipeline_none() {
    let facts = Facts {
        event_lag_seconds: Some((1.0, 1.2)),
        ..stream_facts()
    };
    let d = run(fixture!("idle"), &facts);
    assert_eq!((d.bottleneck, d.case), (Stage::None, Case::Idle));
    assert!(d.suggestions.is_empty());
}

#[test]
fn down_or_stopped_none_whatever_the_figures() {
    for process in [Process::Down, Process::Stopped] {
        let facts = Facts {
            process,
            event_lag_seconds: Some((20.0, 45.0)),
            ..stream_facts()
        };
        let d = run(fixture!("slow_writes"), &facts);
        assert_eq!(d.bottleneck, Stage::None);
        assert!(d.suggestions.is_empty());
    }
}

#[test]
fn slow_writes_raise_workers_max_open_and_batch_size() {
    let facts = Facts {
        event_lag_seconds: Some((20.0, 45.0)),
        binlog_bytes_behind: Some((1e6, 9e6)),
        target_connections: Some(19.0),
        ..stream_facts()
    };
    let d = run(fixture!("slow_writes"), &facts);
    assert_eq!(
        (d.bottleneck, d.case),
        (Stage::Output, Case::Writes),
        "{d:#?}"
    );
    let s: Vec<Row> = d
        .suggestions
        .iter()
        .map(|s| (s.setting, s.current, s.suggested, s.direction))
        .collect();
    assert_eq!(
        s,
        [
            (Some("nr-worker"), Some(20.0), Some(40.0), Direction::Raise),
            (Some("max-open"), Some(20.0), Some(40.0), Direction::Raise),
            (Some("batch-size"), Some(10.0), Some(20.0), Direction::Raise),
        ]
    );
    let output = d
        .stages
        .iter()
        .find(|s| s.stage == Stage::Output)
        .expect("output");
    assert!(output.share_of_time.is_some_and(|s| s > 0.5));
    assert!(output.queue_fill.is_some_and(|f| f > 0.9));
    let j = json(&d);
    assert_eq!(j["bottleneck"], "output");
    assert_eq!(j["suggestions"][0]["setting"], "nr-worker");
    assert_eq!(j["suggestions"][0]["current"], 20.0);
    assert_eq!(j["suggestions"][0]["suggested"], 40.0);
    assert!(j["suggestions"][0]["reason"].is_string());
    assert!(j["evidence"]
        .as_array()
        .is_some_and(|e| e.iter().any(|x| x["name"] == "worker_queue_fill")));
}

#[test]
fn slow_target_is_the_target() {
    let facts = Facts {
        event_lag_seconds: Some((20.0, 45.0)),
        target_probe_latency_seconds: Some(0.12),
        target_connections: Some(19.0),
        ..stream_facts()
    };
    let d = run(fixture!("target_limit"), &facts);
    assert_eq!(
        (d.bottleneck, d.case),
        (Stage::Target, Case::TargetLimit),
        "{d:#?}"
    );
    assert_eq!(d.suggestions.len(), 1);
    assert_eq!(d.suggestions[0].setting, Some("nr-worker"));
    assert_eq!(d.suggestions[0].direction, Direction::Keep);
    assert!(d.suggestions[0]
        .look_at
        .as_deref()
        .is_some_and(|l| l.contains("target")));
}

#[test]
fn hot_rows_name_the_table() {
    let facts = Facts {
        event_lag_seconds: Some((10.0, 40.0)),
        log: log(&[("[batchScheduler] latch for long: test_db.orders", 3)]),
        ..stream_facts()
    };
    let d = run(fixture!("hot_rows"), &facts);
    assert_eq!(
        (d.bottleneck, d.case),
        (Stage::Scheduler, Case::HotRows),
        "{d:#?}"
    );
    assert!(d.finding.contains("test_db.orders"));
    assert_eq!(d.suggestions.len(), 1);
    assert_eq!(d.suggestions[0].setting, Some("nr-worker"));
    assert_eq!(d.suggestions[0].direction, Direction::Keep);
    assert!(d.suggestions[0].reason.contains("will not help"));
}

#[test]
fn slow_reading_is_the_source() {
    let facts = Facts {
        event_lag_seconds: Some((5.0, 65.0)),
        binlog_bytes_behind: Some((2e6, 4e7)),
        ..stream_facts()
    };
    let d = run(fixture!("slow_reading"), &facts);
    assert_eq!(
        (d.bottleneck, d.case),
        (Stage::Source, Case::Reading),
        "{d:#?}"
    );
    assert_eq!(d.suggestions.len(), 1);
    assert_eq!(d.suggestions[0].setting, None);
    assert_eq!(d.suggestions[0].direction, Direction::NothingToTune);
    assert!(d.suggestions[0]
        .look_at
        .as_deref()
        .is_some_and(|l| l.contains("network")));
}

#[test]
fn stuck_window_names_the_item() {
    let lines: Vec<String> = (0..30)
        .map(|s| {
            format!(
                "[sliding_window] item not ack after {}.000000 seconds. mysqlstream seq 118293",
                31 + s
            )
        })
        .collect();
    let mut l = LogWindow::default();
    for m in &lines {
        l.note(m);
    }
    let facts = Facts {
        event_lag_seconds: Some((40.0, 100.0)),
        log: l,
        ..stream_facts()
    };
    let d = run(fixture!("stuck_window"), &facts);
    assert_eq!(
        (d.bottleneck, d.case),
        (Stage::Output, Case::StuckWindow),
        "{d:#?}"
    );
    assert!(
        d.finding.contains("seq 118293 of stream mysqlstream"),
        "{}",
        d.finding
    );
    assert!(d.finding.contains("100 % full"), "{}", d.finding);
    assert_eq!(d.suggestions[0].setting, Some("sliding-window-size"));
    assert_eq!(d.suggestions[0].direction, Direction::Keep);
    let sched = d
        .stages
        .iter()
        .find(|s| s.stage == Stage::Scheduler)
        .expect("scheduler");
    assert_eq!(sched.queue_fill, Some(1.0));
}

#[test]
fn a_full_window_with_nothing_written_is_stuck_before_the_first_line() {
    // the stuck fixture without gravity's `item not ack` lines (the item waits < 30 s)
    let facts = Facts {
        event_lag_seconds: Some((5.0, 25.0)),
        ..stream_facts()
    };
    let d = run(fixture!("stuck_window"), &facts);
    assert_eq!(
        (d.bottleneck, d.case),
        (Stage::Output, Case::StuckWindow),
        "{d:#?}"
    );
    assert!(d.finding.contains("an item"), "{}", d.finding);
    assert_eq!(d.suggestions[0].direction, Direction::Keep);
}

#[test]
fn retries_name_the_cause() {
    let facts = Facts {
        event_lag_seconds: Some((5.0, 20.0)),
        log: log(&[
            (
                "error execute sync output, retry. Error 1213: Deadlock found when trying to get lock; try restarting transaction",
                12,
            ),
            (
                "error execute sync output, retry. Error 1205: Lock wait timeout exceeded; try restarting transaction",
                6,
            ),
        ]),
        ..stream_facts()
    };
    let d = run(fixture!("retries"), &facts);
    assert_eq!(
        (d.bottleneck, d.case),
        (Stage::Target, Case::Retries),
        "{d:#?}"
    );
    assert!(d.finding.contains("18 retries"), "{}", d.finding);
    assert!(d.finding.contains("deadlock"), "{}", d.finding);
    assert_eq!(d.suggestions[0].setting, Some("nr-worker"));
    assert_eq!(d.suggestions[0].direction, Direction::Keep);
}

#[test]
fn full_dump_at_its_throttle() {
    let facts = Facts {
        mode: Mode::Batch,
        settings: settings_of(DUMP_TOML),
        tables_remaining: Some(1),
        target_probe_latency_seconds: Some(0.004),
        ..Facts::default()
    };
    let d = run(fixture!("dump_pace"), &facts);
    assert_eq!(
        (d.bottleneck, d.case),
        (Stage::Input, Case::DumpPace),
        "{d:#?}"
    );
    let s: Vec<(Option<&str>, Option<f64>, Option<f64>)> = d
        .suggestions
        .iter()
        .map(|s| (s.setting, s.current, s.suggested))
        .collect();
    assert_eq!(
        s,
        [
            (Some("batch-per-second-limit"), Some(1.0), Some(2.0)),
            (Some("table-scan-batch"), Some(10000.0), Some(20000.0)),
        ]
    );
    // Many tables left: the same rate is far from the ceiling (10 scanners): healthy.
    let many = Facts {
        tables_remaining: Some(40),
        ..facts
    };
    let d = run(fixture!("dump_pace"), &many);
    assert_eq!(d.case, Case::Healthy);
    assert!(d.suggestions.is_empty());
}

#[test]
fn log_lines_are_classified() {
    let mut l = LogWindow::default();
    l.note("error execute sync output, retry. Error 9003: TiKV server is busy");
    l.note("error execute sync output, retry. invalid connection");
    l.note("[sliding_window] item not ack after 60.000000 seconds. 中文表.订单 seq 7");
    l.note("[sliding_window] item not ack after 61.000000 seconds. 中文表.订单 seq 7");
    l.note("something else");
    assert_eq!(l.retry_causes.get(&RetryCause::TargetBusy), Some(&1));
    assert_eq!(l.retry_causes.get(&RetryCause::Connection), Some(&1));
    assert_eq!(l.item_not_ack, 2);
    assert_eq!(
        l.stuck,
        [StuckItem {
            stream: "中文表.订单".into(),
            seq: 7,
            waited_seconds: 61.0
        }]
    );
    assert_eq!(
        parse_item_not_ack("item not ack after x seconds. a seq 1"),
        None
    );
}

#[test]
fn parser_reads_the_reference_exposition() {
    let s = parse_samples(include_str!("../../tests/fixtures/metrics.prom"));
    let w: Vec<&Sample> = s
        .iter()
        .filter(|s| s.name == "gravity_queue_length" && s.label("type") == Some("worker"))
        .collect();
    assert_eq!(w.len(), 3);
    assert_eq!(w[0].label("subtype"), Some("0"));
    let inf = s
        .iter()
        .find(|s| s.name == "gravity_output_latency_bucket" && s.label("le") == Some("+Inf"))
        .expect("+Inf bucket");
    assert!(inf.value > 0.0);
    assert!(parse_samples("x{a=\"b\\\"c\",d=\"\"} 1\nbad{ 2\n# c\n").len() == 1);
}

/// A window of a pipeline that keeps up: lag small and steady, queues well below full, no
/// stuck item; every other figure anything at all.
fn healthy_input() -> impl Strategy<Value = DiagnosisInput> {
    let opt = |r: std::ops::Range<f64>| proptest::option::of(r);
    let lat = || {
        proptest::option::of((0.0..1e4f64, 1.0..1e7f64).prop_map(|(m, e)| MeanLatency {
            mean_seconds: m,
            events: e,
        }))
    };
    (
        (
            10.0..600.0f64,
            0.0..50.0f64,
            -5.0..4.9f64,
            proptest::bool::ANY,
        ),
        (lat(), lat(), lat(), lat(), lat()),
        (
            opt(0.0..1e6),
            opt(0.0..1e6),
            opt(0.0..1e4),
            opt(0.0..1e9),
            opt(-1e9..1e6),
        ),
        (
            opt(0.0..10.0),
            opt(0.0..1e4),
            1u32..64,
            0.0..0.79f64,
            0.0..0.89f64,
        ),
        (
            proptest::collection::vec(("[a-z]{1,8}", 0.0..1e5f64, 0.0..1e5f64), 0..6),
            0u64..1000,
            0u64..100,
            proptest::collection::vec(0u64..50, 6),
        ),
    )
        .prop_map(
            |(
                (window, lag, lag_change, batch),
                (inp, em, sub, ack, out),
                (rin, rout, retries, binlog, binlog_change),
                (probe, conns, workers, wfill, sfill),
                (tables, latch_lines, batch_rows, causes),
            )| {
                let facts = Facts {
                    mode: if batch { Mode::Batch } else { Mode::Stream },
                    ..Facts::default()
                };
                let s = facts.settings.clone();
                let qs = s.queue_size.value;
                let window_change = lag_change.min(0.099 * window);
                let causes = [
                    RetryCause::Deadlock,
                    RetryCause::LockWait,
                    RetryCause::TargetBusy,
                    RetryCause::DuplicateKey,
                    RetryCause::Connection,
                    RetryCause::Other,
                ]
                .into_iter()
                .zip(causes)
                .filter(|(_, n)| *n > 0)
                .collect();
                DiagnosisInput {
                    window_seconds: window,
                    readings: 2,
                    mode: facts.mode,
                    process: Process::Up,
                    idle: false,
                    settings: s.clone(),
                    latency: StageLatencies {
                        input: inp,
                        emitter: em,
                        scheduler_submit: sub,
                        scheduler_ack: ack,
                        output: out,
                        event_time: None,
                    },
                    // a full dump below its throttle's ceiling (defaults: 10 × 10000 × 1)
                    rows_in_per_second: rin.map(|r| if batch { r.min(79_000.0) } else { r }),
                    rows_out_per_second: rout,
                    event_lag_seconds: Some(lag),
                    event_lag_change_seconds: Some(window_change),
                    queues: QueueFigures {
                        input_buffer: None,
                        workers: (0..workers)
                            .map(|i| {
                                (
                                    i,
                                    Gauge {
                                        mean: wfill * qs,
                                        max: qs,
                                    },
                                )
                            })
                            .collect(),
                        tables: tables
                            .into_iter()
                            .map(|(t, q, l)| TableQueues {
                                table: t,
                                queue: Gauge { mean: q, max: q },
                                buffer: Gauge::default(),
                                latch: Gauge { mean: l, max: l },
                            })
                            .collect(),
                        windows: vec![WindowQueues {
                            stream: "mysqlstream".into(),
                            waiting: Gauge {
                                mean: sfill * s.sliding_window_size.value,
                                max: s.sliding_window_size.value,
                            },
                            fill: Gauge {
                                mean: sfill,
                                max: 1.0,
                            },
                        }],
                    },
                    batch_size: Some(Gauge {
                        mean: batch_rows as f64,
                        max: batch_rows as f64,
                    }),
                    nr_worker_reported: Some(s.nr_worker.value),
                    retries,
                    retry_causes: causes,
                    item_not_ack_lines: 0,
                    stuck_items: Vec::new(),
                    latch_for_long_lines: latch_lines,
                    binlog_bytes_behind: binlog,
                    binlog_bytes_behind_change: binlog_change
                        .map(|c| c.min(BINLOG_GROWTH_MIN_BYTES - 1.0)),
                    target_probe_latency_seconds: probe,
                    target_connections: conns,
                    tables_remaining: None,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_healthy_pipeline_never_gets_a_suggestion(i in healthy_input()) {
        let d = diagnose(&i);
        prop_assert_eq!(d.bottleneck, Stage::None);
        prop_assert!(d.suggestions.is_empty());
    }

    #[test]
    fn idle_down_or_stopped_never_get_a_suggestion(i in healthy_input(), which in 0u8..3, lag in 0.0..1e5f64, fill in 0.0..2.0f64, lines in 0u64..100) {
        // whatever else the figures say (even a stuck window), these three are `none`
        let mut i = i;
        i.event_lag_change_seconds = Some(lag);
        i.item_not_ack_lines = lines;
        for w in &mut i.queues.windows { w.fill.mean = fill; }
        match which {
            0 => i.idle = true,
            1 => i.process = Process::Down,
            _ => i.process = Process::Stopped,
        }
        let d = diagnose(&i);
        prop_assert_eq!(d.bottleneck, Stage::None);
        prop_assert!(d.suggestions.is_empty());
    }

    #[test]
    fn building_never_panics(
        values in proptest::collection::vec((0usize..8, 0usize..6, proptest::num::f64::ANY), 0..200),
        t1 in proptest::num::f64::ANY,
    ) {
        const NAMES: [&str; 8] = [
            "gravity_queue_length", "gravity_output_latency_sum", "gravity_output_latency_count",
            "gravity_input_counter", "gravity_scheduler_batch_size", "gravity_scheduler_retry_counter",
            "gravity_output_counter", "gravity_scheduler_nr_worker",
        ];
        const TYPES: [&str; 6] = ["worker", "table-queue", "table-latch", "sliding-window-waiting-chan", "input-buffer", "x"];
        let samples: Vec<Sample> = values.iter().map(|(n, t, v)| Sample {
            name: NAMES[*n].into(),
            labels: vec![("type".into(), TYPES[*t].into()), ("subtype".into(), format!("{}", t))],
            value: *v,
        }).collect();
        let half = samples.len() / 2;
        let r = vec![
            Reading { at_seconds: 0.0, samples: samples[..half].to_vec() },
            Reading { at_seconds: t1, samples: samples[half..].to_vec() },
        ];
        if let Ok(i) = build_input(&r, &Facts::default()) {
            let _ = serde_json::to_string(&diagnose(&i));
        }
    }
}

/// The JSON of the target-limit fixture, for docs/diagnosis.md:
/// `cargo test --lib diagnosis::tests::print_target_limit -- --ignored --nocapture`.
#[test]
#[ignore]
fn print_target_limit() {
    let facts = Facts {
        event_lag_seconds: Some((20.0, 45.0)),
        target_probe_latency_seconds: Some(0.12),
        target_connections: Some(19.0),
        ..stream_facts()
    };
    let d = run(fixture!("target_limit"), &facts);
    println!(
        "=== target_limit\n{}",
        serde_json::to_string_pretty(&d).unwrap_or_default()
    );
}
