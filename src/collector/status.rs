//! The `/status` collector: gravity's stage, version, config hash, position and
//! watermarks, turned into lag, stall, binlog position and full-dump progress.
//!
//! gravity's `/status` (see `tests/fixtures/status-*.json`) holds `position` as a string
//! that itself holds JSON, in one of three shapes (MySQL stream, MySQL batch with
//! `table-stats`, Mongo stream with a BSON timestamp), and `watermarks` per input stream
//! key (`mysqlstream`, `mongooplog`, or `db.table` in batch mode) or `null`. While no
//! position is stored yet, gravity answers HTTP 500 with an empty body: that is a state
//! (`gravity_position_stored` 0), not a failure.
//!
//! Lag is `now − EventTime`: how far the output is behind the source in event time.
//! Stall age is `now − ProcessTime`: how long since the pipeline last moved a watermark.
//! On an idle source gravity's heartbeat probe writes to its own table every second, so
//! EventTime stays fresh and lag stays near zero; when the heartbeat cannot write (gravity
//! issue #226), EventTime freezes while ProcessTime stays fresh — docs/metrics.md explains
//! how to tell that apart from real lag.
#![warn(clippy::arithmetic_side_effects)]

use std::sync::Arc;

use time::OffsetDateTime;

use super::{BoxFuture, CollectError, Collector, Context};
use crate::metrics::Families;

pub use crate::gravity_api::status::*;

pub use crate::state::StatusSeen;

/// Builds the const families from a parsed status (pure).
pub fn status_families(st: &Status, now: OffsetDateTime, pipeline: &str) -> Families {
    let mut f = Families::new();
    let p = [("pipeline", pipeline)];
    f.gauge(
        "gravity_position_stored",
        "1 once gravity has stored a position (its /status answers), 0 while /status answers 500 with an empty body.",
        &p,
        1.0,
    );
    f.gauge(
        "gravity_pipeline_info",
        "Pipeline facts from gravity's /status: stage (Incremental or Full), version and config hash. Always 1.",
        &[
            ("pipeline", pipeline),
            ("stage", &st.stage),
            ("version", &st.version),
            ("config_hash", &st.config_hash),
        ],
        1.0,
    );
    f.gauge(
        "gravity_full_dump",
        "1 while gravity is in the Full (batch, full-dump) stage, 0 in Incremental.",
        &p,
        if st.stage == "Full" { 1.0 } else { 0.0 },
    );
    f.gauge(
        "gravity_watermarks",
        "Number of watermark streams gravity's /status reports (0 when watermarks is null).",
        &p,
        st.watermarks.len() as f64,
    );
    for w in st.watermarks.iter().take(MAX_STREAMS) {
        let l = [("pipeline", pipeline), ("stream", w.key.as_str())];
        f.gauge(
            "gravity_watermark_lag_seconds",
            "now − EventTime of the stream's watermark: how far the output is behind the source, in event time.",
            &l,
            crate::state::lag_seconds(w, now),
        );
        f.gauge(
            "gravity_watermark_stall_seconds",
            "now − ProcessTime of the stream's watermark: how long since the pipeline last moved it.",
            &l,
            crate::state::stall_seconds(w, now),
        );
        f.gauge(
            "gravity_watermark_event_timestamp_seconds",
            "EventTime of the stream's watermark (Unix time).",
            &l,
            w.event_time.unix_timestamp_nanos() as f64 / 1e9,
        );
        f.gauge(
            "gravity_watermark_process_timestamp_seconds",
            "ProcessTime of the stream's watermark (Unix time).",
            &l,
            w.process_time.unix_timestamp_nanos() as f64 / 1e9,
        );
    }
    let binlog = |f: &mut Families, which: &str, b: &BinlogPos| {
        let l = [("pipeline", pipeline), ("position", which)];
        if let Some(i) = b.file_index() {
            f.gauge(
                "gravity_binlog_file_index",
                "Numeric suffix of the binlog file of gravity's position (mysql-bin.000042 → 42); position is current or start.",
                &l,
                i as f64,
            );
        }
        f.gauge(
            "gravity_binlog_offset_bytes",
            "Offset in the binlog file of gravity's position; position is current or start.",
            &l,
            b.pos as f64,
        );
    };
    match &st.position {
        Position::MysqlStream { current, start } => {
            if let Some(b) = current {
                binlog(&mut f, "current", b);
            }
            if let Some(b) = start {
                binlog(&mut f, "start", b);
            }
        }
        Position::MysqlBatch {
            start_binlog,
            tables,
        } => {
            if let Some(b) = start_binlog {
                binlog(&mut f, "start", b);
            }
            let done = tables.iter().filter(|t| t.done).count();
            f.gauge(
                "gravity_full_dump_tables",
                "Tables of the full dump, by state (done or pending).",
                &[("pipeline", pipeline), ("state", "done")],
                done as f64,
            );
            f.gauge(
                "gravity_full_dump_tables",
                "Tables of the full dump, by state (done or pending).",
                &[("pipeline", pipeline), ("state", "pending")],
                tables.len().saturating_sub(done) as f64,
            );
            for t in tables.iter().take(MAX_STREAMS) {
                let l = [
                    ("pipeline", pipeline),
                    ("schema", t.schema.as_str()),
                    ("table", t.table.as_str()),
                ];
                f.gauge(
                    "gravity_full_dump_rows_scanned",
                    "Rows the full dump has scanned in the table.",
                    &l,
                    t.scanned as f64,
                );
                f.gauge(
                    "gravity_full_dump_rows_estimated",
                    "Rows the table is estimated to hold (from table statistics; can be below the rows scanned).",
                    &l,
                    t.estimated as f64,
                );
                f.gauge(
                    "gravity_full_dump_progress_ratio",
                    "Full-dump progress of the table, 0..1: 1 when done, else scanned/estimated held below 1.",
                    &l,
                    t.progress(),
                );
                f.gauge(
                    "gravity_full_dump_table_done",
                    "1 when the full dump of the table is done.",
                    &l,
                    if t.done { 1.0 } else { 0.0 },
                );
            }
        }
        Position::Mongo { current: Some(ts) } => {
            let secs = ts >> 32;
            f.gauge(
                "gravity_oplog_position_timestamp_seconds",
                "Time of gravity's Mongo oplog position (the seconds of the BSON timestamp).",
                &p,
                secs as f64,
            );
        }
        Position::Mongo { current: None } | Position::Unknown => {}
    }
    f
}

/// The families while no position is stored yet (HTTP 500 with an empty body).
pub fn no_position_families(pipeline: &str) -> Families {
    let mut f = Families::new();
    f.gauge(
        "gravity_position_stored",
        "1 once gravity has stored a position (its /status answers), 0 while /status answers 500 with an empty body.",
        &[("pipeline", pipeline)],
        0.0,
    );
    f
}

/// The collector of gravity's `/status`.
#[derive(Debug, Default)]
pub struct StatusCollector;

impl Collector for StatusCollector {
    fn name(&self) -> &'static str {
        "status"
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let target = ctx.target();
            if !ctx.up.process_alive() && target.process.is_some() {
                return Err(CollectError::Unavailable(
                    "gravity process not running".into(),
                ));
            }
            // Strings are cut as the answer arrives (never held whole), on the parse thread.
            let (code, json, elapsed) = super::feed(
                &ctx,
                "/status",
                BODY_LIMIT,
                Shortener::new(),
                Shortener::push,
            )
            .await?;
            let pipeline = target.pipeline.as_str();
            if code.as_u16() == 500 && json.blank() {
                ctx.set_last_status(None);
                ctx.state
                    .status_answered
                    .set(Some(std::time::Instant::now()));
                ctx.recent.record_lag([]);
                return Ok(no_position_families(pipeline));
            }
            if !code.is_success() {
                return Err(CollectError::Invalid(format!(
                    "/status answered HTTP {}",
                    code.as_u16()
                )));
            }
            let mut st = ctx
                .workers
                .run(super::Worker::Parse, move || {
                    parse_status(&json.into_bytes())
                })
                .await
                .ok_or(CollectError::Panicked)??;
            bound_status(&mut st);
            let at = std::time::Instant::now();
            ctx.set_last_status(Some(StatusSeen {
                at,
                status: st.clone(),
            }));
            ctx.state.status_answered.set(Some(at));
            let now = OffsetDateTime::now_utc();
            ctx.lag.observe_status(&st, now, pipeline);
            ctx.recent.record_lag(
                st.watermarks
                    .iter()
                    .map(|w| (w.key.as_str(), crate::state::lag_seconds(w, now))),
            );
            let mut f = status_families(&st, now, pipeline);
            f.gauge(
                "gravity_status_request_duration_seconds",
                "How long gravity's /status took to answer on the last collection.",
                &[("pipeline", pipeline)],
                elapsed.as_secs_f64(),
            );
            Ok(f)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use time::macros::datetime;

    const INCR: &str = include_str!("../../tests/fixtures/status-incremental.json");
    const FULL: &str = include_str!("../../tests/fixtures/status-full.json");
    const MONGO: &str = include_str!("../../tests/fixtures/status-mongo.json");
    const NOSW: &str = include_str!("../../tests/fixtures/status-no-sliding-window.json");

    #[test]
    fn incremental_mysql() {
        let st = parse_status(INCR.as_bytes()).unwrap();
        assert_eq!(
            (st.name.as_str(), st.stage.as_str(), st.version.as_str()),
            ("mysql2mysqlDemo", "Incremental", "v0.9.54")
        );
        let Position::MysqlStream {
            current: Some(c),
            start: None,
        } = &st.position
        else {
            panic!("{:?}", st.position)
        };
        assert_eq!((c.file_index(), c.pos), (Some(42), 193842));
        assert!(c.gtid.contains("3e11fa47"));
        // 14:21:06+08:00 = 06:21:06Z; now 06:21:16Z → lag 10 s; ProcessTime 14:21:07.512331904 → stall 8.487668096 s
        let now = datetime!(2026-11-22 06:21:16 UTC);
        let f = status_families(&st, now, "p");
        assert_eq!(
            f.value(
                "gravity_watermark_lag_seconds",
                &[("stream", "mysqlstream")]
            ),
            Some(10.0)
        );
        let stall = f
            .value(
                "gravity_watermark_stall_seconds",
                &[("stream", "mysqlstream")],
            )
            .unwrap();
        assert!((stall - 8.487668096).abs() < 1e-6, "{stall}");
        assert_eq!(
            f.value("gravity_binlog_file_index", &[("position", "current")]),
            Some(42.0)
        );
        assert_eq!(
            f.value("gravity_binlog_offset_bytes", &[("position", "current")]),
            Some(193842.0)
        );
        assert_eq!(
            f.value(
                "gravity_pipeline_info",
                &[("config_hash", "x7b52ghk49"), ("stage", "Incremental")]
            ),
            Some(1.0)
        );
        assert_eq!(f.value("gravity_full_dump", &[]), Some(0.0));
        // no GTID anywhere in the labels
        let text = {
            let s = crate::metrics::Store::new();
            s.set_snapshot("status", f);
            s.render()
        };
        assert!(!text.contains("3e11fa47"), "{text}");
    }

    #[test]
    fn full_dump_progress_copes_with_low_estimates() {
        let st = parse_status(FULL.as_bytes()).unwrap();
        let Position::MysqlBatch {
            start_binlog: Some(b),
            tables,
        } = &st.position
        else {
            panic!("{:?}", st.position)
        };
        assert_eq!(b.file_index(), Some(40));
        assert_eq!(tables.len(), 3);
        let now = datetime!(2026-11-22 06:30:00 UTC);
        let f = status_families(&st, now, "p");
        let prog = |t: &str| {
            f.value(
                "gravity_full_dump_progress_ratio",
                &[("schema", "shop"), ("table", t)],
            )
            .unwrap()
        };
        assert!((prog("order_items") - 41187201.0 / 98000000.0).abs() < 1e-9);
        assert_eq!(prog("orders"), 1.0, "done although scanned > estimated");
        assert_eq!(prog("users"), 1.0, "done with estimated 0");
        assert_eq!(
            f.value("gravity_full_dump_rows_scanned", &[("table", "orders")]),
            Some(30119874.0)
        );
        assert_eq!(
            f.value("gravity_full_dump_tables", &[("state", "done")]),
            Some(2.0)
        );
        assert_eq!(
            f.value("gravity_full_dump_tables", &[("state", "pending")]),
            Some(1.0)
        );
        assert_eq!(f.value("gravity_full_dump", &[]), Some(1.0));
        // per-table watermarks, labelled by table for the histogram
        assert_eq!(
            lag_labels(&st.stage, "shop.orders"),
            ("shop".into(), "orders".into())
        );
        assert_eq!(
            lag_labels("Incremental", "mysqlstream"),
            (String::new(), String::new())
        );
        let lag = f
            .value(
                "gravity_watermark_lag_seconds",
                &[("stream", "shop.orders")],
            )
            .unwrap();
        // EventTime 13:58:39.998+08:00 = 05:58:39.998Z → 1880.002 s before 06:30:00Z
        assert!((lag - 1880.002).abs() < 1e-6, "{lag}");
        // a table still dumping, estimated < scanned: held below 1
        let t = TableStat {
            schema: "a".into(),
            table: "b".into(),
            estimated: 10,
            scanned: 20,
            done: false,
        };
        assert_eq!(t.progress(), 0.99);
    }

    #[test]
    fn mongo_and_null_watermarks() {
        let st = parse_status(MONGO.as_bytes()).unwrap();
        assert_eq!(
            st.position,
            Position::Mongo {
                current: Some(7575430962696159244)
            }
        );
        let f = status_families(&st, datetime!(2026-11-22 06:21:10 UTC), "p");
        assert_eq!(
            f.value("gravity_oplog_position_timestamp_seconds", &[]),
            Some((7575430962696159244u64 >> 32) as f64)
        );
        assert_eq!(
            f.value("gravity_watermark_lag_seconds", &[("stream", "mongooplog")]),
            Some(3.0)
        );
        let st = parse_status(NOSW.as_bytes()).unwrap();
        assert!(st.watermarks.is_empty());
        let f = status_families(&st, datetime!(2026-11-22 06:21:10 UTC), "p");
        assert_eq!(f.value("gravity_watermarks", &[]), Some(0.0));
        assert_eq!(
            f.value("gravity_binlog_offset_bytes", &[("position", "current")]),
            Some(4.0)
        );
        assert_eq!(
            f.value("gravity_pipeline_info", &[("version", "None")]),
            Some(1.0)
        );
    }

    #[test]
    fn unknown_fields_and_bad_bodies() {
        let st = parse_status(br#"{"name":"x","stage":"Incremental","position":"{\"new\":1}","watermarks":{},"extra":{"a":[1,2]}}"#).unwrap();
        assert_eq!(st.position, Position::Unknown);
        for bad in [
            &b""[..],
            b"<html>",
            b"[1,2]",
            b"{}",
            b"\xff\xfe",
            b"{\"name\":",
        ] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
        // a watermark with an unparseable time is skipped, not fatal
        let st = parse_status(br#"{"name":"x","watermarks":{"a":{"ProcessTime":"yesterday","EventTime":"2026-11-22T14:21:06+08:00"}}}"#).unwrap();
        assert!(st.watermarks.is_empty());
    }

    #[test]
    fn histogram_observes_and_caps_series() {
        let store = crate::metrics::Store::new();
        let c = crate::state::lag::LagHistogram::new(&store);
        let st = parse_status(FULL.as_bytes()).unwrap();
        c.observe_status(&st, datetime!(2026-11-22 06:30:00 UTC), "p");
        let text = store.render();
        assert!(text.contains("gravity_data_lag_seconds_bucket{pipeline=\"p\",schema=\"shop\",table=\"orders\",le=\"0.1\"} 0"), "{text}");
        assert!(text.contains("gravity_data_lag_seconds_bucket{pipeline=\"p\",schema=\"shop\",table=\"orders\",le=\"1638.4\"} 0"));
        assert!(text.contains(
            "gravity_data_lag_seconds_count{pipeline=\"p\",schema=\"shop\",table=\"orders\"} 1"
        ));
        let st = parse_status(INCR.as_bytes()).unwrap();
        c.observe_status(&st, datetime!(2026-11-22 06:21:16 UTC), "p");
        let text = store.render();
        assert!(text.contains("gravity_data_lag_seconds_bucket{pipeline=\"p\",schema=\"\",table=\"\",le=\"12.8\"} 1"), "{text}");
        assert!(text.contains(
            "gravity_data_lag_seconds_bucket{pipeline=\"p\",schema=\"\",table=\"\",le=\"6.4\"} 0"
        ));
        // cap
        use crate::state::lag::MAX_LAG_SERIES;
        let many: Vec<Watermark> = (0..MAX_LAG_SERIES + 5)
            .map(|i| Watermark {
                key: format!("db.t{i}"),
                process_time: datetime!(2026-11-22 06:30:00 UTC),
                event_time: datetime!(2026-11-22 06:30:00 UTC),
            })
            .collect();
        let st = Status {
            name: "x".into(),
            config_hash: "h".into(),
            version: "v".into(),
            stage: "Full".into(),
            position: Position::Unknown,
            watermarks: many,
        };
        c.observe_status(&st, datetime!(2026-11-22 06:30:00 UTC), "p");
        assert!(c.series() <= MAX_LAG_SERIES);
        assert!(store.render().contains("table=\"_other\""));
    }

    #[test]
    fn hostile_strings_are_cut_before_they_are_kept() {
        let mut st = parse_status(INCR.as_bytes()).unwrap();
        st.version = "v".repeat(15_000_000);
        st.watermarks[0].key = "k".repeat(10_000);
        bound_status(&mut st);
        assert_eq!(st.version.len(), crate::bounds::MAX_LABEL_VALUE_BYTES);
        assert!(st.version.capacity() < 2 * crate::bounds::MAX_LABEL_VALUE_BYTES);
        assert_eq!(
            st.watermarks[0].key.len(),
            crate::bounds::MAX_LABEL_VALUE_BYTES
        );
    }

    fn shorten(body: &[u8], piece: usize) -> Shortener {
        let mut sh = Shortener::new();
        for p in body.chunks(piece.max(1)) {
            sh.push(p);
        }
        sh
    }

    #[test]
    fn the_shortener_leaves_gravitys_answers_as_they_are() {
        for body in [INCR, FULL, MONGO, NOSW] {
            for piece in [1, 3, 1000, body.len()] {
                let sh = shorten(body.as_bytes(), piece);
                assert_eq!((sh.cut(), sh.blank()), (0, false));
                assert_eq!(sh.into_bytes(), body.as_bytes());
            }
        }
        assert!(shorten(b" \r\n\t ", 2).blank());
        assert!(shorten(b"", 2).blank());
    }

    #[test]
    fn the_shortener_cuts_a_huge_version_and_long_stream_names() {
        let mut st: Value = serde_json::from_str(INCR).unwrap();
        st["version"] = Value::String("v".repeat(15_000_000));
        let wm = st["watermarks"]["mysqlstream"].clone();
        let names: serde_json::Map<String, Value> = (0..1000)
            .map(|i| (format!("w{i:04}{}", "x".repeat(10_000)), wm.clone()))
            .collect();
        st["watermarks"] = Value::Object(names);
        let body = serde_json::to_vec(&st).unwrap();
        let sh = shorten(&body, 65_536);
        assert_eq!(sh.cut(), 1001);
        let out = sh.into_bytes();
        assert!(
            out.len() < 1000 * (JSON_MAX_KEY + 200) + JSON_MAX_STRING + 2000,
            "{}",
            out.len()
        );
        let parsed = parse_status(&out).unwrap();
        assert_eq!(parsed.version.len(), JSON_MAX_STRING);
        assert_eq!(parsed.watermarks.len(), 1000);
        assert!(parsed
            .watermarks
            .iter()
            .all(|w| w.key.len() == JSON_MAX_KEY));
        assert!(matches!(
            parsed.position,
            Position::MysqlStream {
                current: Some(_),
                ..
            }
        ));
    }

    /// Cuts land on character boundaries, never inside an escape or between the halves
    /// of a surrogate pair, wherever the limit falls and however the answer is split.
    #[test]
    fn a_cut_string_is_still_valid_json_and_a_prefix_of_the_original() {
        let units = [
            "a",
            "é",
            "€",
            "😀",
            "\\u00e9",
            "\\\"",
            "\\\\",
            "\\n",
            "\\ud83d\\ude00",
        ];
        for (i, unit) in units.iter().enumerate() {
            for lead in 0..7 {
                let value = format!("{}{}", "b".repeat(lead), unit.repeat(JSON_MAX_STRING + 1));
                let key = format!("{}{}", "k".repeat(lead), unit.repeat(JSON_MAX_KEY + 1));
                let body = format!("{{\"{key}\":[\"{value}\",1],\"s\":\"{unit}\"}}");
                for piece in [1, 7, body.len()] {
                    let sh = shorten(body.as_bytes(), piece);
                    assert_eq!(sh.cut(), 2, "{i} {lead} {piece}");
                    let out: Value = serde_json::from_slice(&sh.into_bytes())
                        .unwrap_or_else(|e| panic!("{i} {lead} {piece}: {e}"));
                    let orig: Value = serde_json::from_str(&body).unwrap();
                    let first = |v: &Value| {
                        let (k, v) = v
                            .as_object()
                            .unwrap()
                            .iter()
                            .find(|(k, _)| *k != "s")
                            .unwrap();
                        (k.clone(), v.clone())
                    };
                    let ((ok, ov), (rk, rv)) = (first(&out), first(&orig));
                    assert!(
                        rk.starts_with(ok.as_str()) && ok.len() < rk.len(),
                        "{i} {lead}"
                    );
                    let (os, rs) = (ov[0].as_str().unwrap(), rv[0].as_str().unwrap());
                    assert!(
                        rs.starts_with(os)
                            && os.len() < rs.len()
                            && os.len() >= JSON_MAX_STRING / 6
                    );
                    assert_eq!(out["s"], orig["s"]);
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// The output does not depend on how the answer is split, and valid JSON stays
        /// valid JSON.
        #[test]
        fn the_shortener_does_not_depend_on_the_pieces(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            piece in 1usize..40,
        ) {
            let whole = shorten(&body, body.len()).into_bytes();
            proptest::prop_assert_eq!(&whole, &shorten(&body, piece).into_bytes());
            if serde_json::from_slice::<Value>(&body).is_ok() {
                proptest::prop_assert!(serde_json::from_slice::<Value>(&whole).is_ok());
            }
        }
    }
}
