//! `/status`: gravity's `TaskReportStatus` JSON, key for key and in the same order as the
//! fixtures (`name`, `configHash`, `position`, `watermarks`, `stage`, `version`), with
//! `position` a string holding the position JSON of the input (MySQL stream, MySQL batch,
//! Mongo oplog) and watermark times in Go's RFC3339Nano.

use super::config::{InputMode, InputType};
use super::gofmt::{push_json_string, rfc3339_nano};
use super::sim::{Now, Sim};
use std::fmt::Write as _;

/// The version string the double reports.
pub const VERSION: &str = "v0.9.54";

fn binlog_json(out: &mut String, name: &str, pos: u64, gtid: &str) {
    out.push_str("{\"binlog-name\":");
    push_json_string(out, name);
    let _ = write!(out, ",\"binlog-pos\":{pos},\"binlog-gtid\":");
    push_json_string(out, gtid);
    out.push('}');
}

fn id_bound(out: &mut String, v: Option<u64>) {
    match v {
        Some(v) => {
            let _ = write!(
                out,
                "[{{\"value\":{v},\"type\":\"int\",\"column\":\"id\"}}]"
            );
        }
        None => out.push_str("null"),
    }
}

/// The `position` value (JSON text) at `now`.
pub fn position_json(sim: &Sim, now: Now) -> String {
    let mut p = String::with_capacity(512);
    match (sim.spec.input, sim.spec.mode) {
        (InputType::Mongo, _) => {
            let _ = write!(
                p,
                "{{\"start_position\":null,\"current_position\":{}}}",
                sim.mongo_ts(now)
            );
        }
        (InputType::Mysql, InputMode::Stream) => {
            let b = sim.binlog(now);
            p.push_str("{\"current_position\":");
            binlog_json(&mut p, &b.name, b.pos, &b.gtid);
            p.push_str(",\"start_position\":null}");
        }
        (InputType::Mysql, InputMode::Batch) => {
            let b = sim.binlog(now);
            p.push_str("{\"schema-version\":\"v1.0\",\"start-binlog\":");
            binlog_json(&mut p, &b.name, b.pos, &b.gtid);
            p.push_str(",\"table-stats\":{");
            let c = sim.counts(now);
            let mut rows: Vec<(String, &super::sim::TableCounts)> = sim
                .spec
                .tables
                .iter()
                .zip(c.tables.iter())
                .map(|(t, tc)| (format!("{}.{}", t.db, t.table), tc))
                .collect();
            rows.sort_by(|a, b| a.0.cmp(&b.0));
            for (i, (key, tc)) in rows.iter().enumerate() {
                if i > 0 {
                    p.push(',');
                }
                push_json_string(&mut p, key);
                p.push_str(":{\"max\":");
                // ids start at 1 and have a few gaps.
                let max = (tc.total > 0).then(|| tc.total + tc.total / 2500);
                id_bound(&mut p, max);
                p.push_str(",\"min\":");
                id_bound(&mut p, max.map(|_| 1));
                p.push_str(",\"current\":");
                let current = max.map(|m| {
                    if tc.done {
                        m
                    } else {
                        (tc.scanned + tc.scanned / 2500).min(m)
                    }
                });
                id_bound(&mut p, current);
                let _ = write!(
                    p,
                    ",\"estimated-count\":{},\"scanned-count\":{},\"done\":{}}}",
                    tc.estimated, tc.scanned, tc.done
                );
            }
            p.push_str("}}");
        }
    }
    p
}

/// The whole `/status` body at `now`.
pub fn status_json(sim: &Sim, now: Now) -> String {
    let mut out = String::with_capacity(1024);
    out.push_str("{\"name\":");
    push_json_string(&mut out, &sim.spec.name);
    out.push_str(",\"configHash\":");
    push_json_string(&mut out, &sim.spec.config_hash);
    out.push_str(",\"position\":");
    push_json_string(&mut out, &position_json(sim, now));
    out.push_str(",\"watermarks\":");
    if sim.spec.scheduler.sliding_window_size == 0 {
        out.push_str("null");
    } else {
        out.push('{');
        for (i, w) in sim.watermarks(now).iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, &w.key);
            out.push_str(":{\"ProcessTime\":");
            push_json_string(&mut out, &rfc3339_nano(w.process_time, sim.settings.zone));
            out.push_str(",\"EventTime\":");
            push_json_string(&mut out, &rfc3339_nano(w.event_time, sim.settings.zone));
            out.push('}');
        }
        out.push('}');
    }
    out.push_str(",\"stage\":");
    out.push_str(match sim.spec.mode {
        InputMode::Stream => "\"Incremental\"",
        InputMode::Batch => "\"Full\"",
    });
    out.push_str(",\"version\":");
    push_json_string(&mut out, VERSION);
    out.push('}');
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::config;
    use super::super::sim::Settings;
    use super::*;
    use serde_json::Value;
    use std::time::Duration;

    /// Compares the JSON structure (keys, key order of objects, value kinds) of `got` with
    /// `want`; objects under `watermarks` and `table-stats` are maps, so each of their values is
    /// compared with the fixture's first value. Test-only; `position` strings are parsed.
    pub(crate) fn same_shape(want: &str, got: &str) -> Result<(), String> {
        fn keys_in_order(raw: &str) -> Vec<String> {
            // top-level keys in textual order
            let mut out = Vec::new();
            let mut depth = 0i32;
            let mut in_str = false;
            let mut esc = false;
            let mut cur = String::new();
            let mut expect_key = false;
            for c in raw.chars() {
                if in_str {
                    if esc {
                        esc = false;
                        cur.push(c);
                    } else if c == '\\' {
                        esc = true;
                    } else if c == '"' {
                        in_str = false;
                        if depth == 1 && expect_key {
                            out.push(cur.clone());
                            expect_key = false;
                        }
                    } else {
                        cur.push(c);
                    }
                    continue;
                }
                match c {
                    '"' => {
                        in_str = true;
                        cur.clear();
                    }
                    '{' | '[' => {
                        depth += 1;
                        if depth == 1 {
                            expect_key = true;
                        }
                    }
                    '}' | ']' => depth -= 1,
                    ',' if depth == 1 => expect_key = true,
                    _ => {}
                }
            }
            out
        }
        fn walk(w: &Value, g: &Value, path: &str, map_like: bool) -> Result<(), String> {
            match (w, g) {
                (Value::Object(wm), Value::Object(gm)) if map_like => {
                    let first = wm
                        .values()
                        .next()
                        .ok_or(format!("{path}: empty in fixture"))?;
                    if gm.is_empty() {
                        return Err(format!("{path}: empty"));
                    }
                    for (k, v) in gm {
                        walk(first, v, &format!("{path}.{k}"), false)?;
                    }
                    Ok(())
                }
                (Value::Object(wm), Value::Object(gm)) => {
                    let wk: Vec<&String> = wm.keys().collect();
                    let gk: Vec<&String> = gm.keys().collect();
                    if wk != gk {
                        return Err(format!("{path}: keys {gk:?} != {wk:?}"));
                    }
                    for (k, wv) in wm {
                        let ml = k == "watermarks" || k == "table-stats";
                        walk(wv, &gm[k], &format!("{path}.{k}"), ml)?;
                    }
                    Ok(())
                }
                (Value::Array(wa), Value::Array(ga)) => match (wa.first(), ga.first()) {
                    (Some(a), Some(b)) => walk(a, b, &format!("{path}[0]"), false),
                    _ => Ok(()),
                },
                (Value::String(ws), Value::String(gs)) if path.ends_with("position") => {
                    let wv: Value = serde_json::from_str(ws).map_err(|e| e.to_string())?;
                    let gv: Value = serde_json::from_str(gs).map_err(|e| format!("{path}: {e}"))?;
                    same_shape(ws, gs)?;
                    walk(&wv, &gv, &format!("{path}>"), false)
                }
                (Value::Number(a), Value::Number(b)) => {
                    if a.is_u64() == b.is_u64() {
                        Ok(())
                    } else {
                        Err(format!("{path}: number kinds differ ({a} vs {b})"))
                    }
                }
                (Value::Null, Value::Null)
                | (Value::Bool(_), Value::Bool(_))
                | (Value::String(_), Value::String(_)) => Ok(()),
                _ => Err(format!("{path}: {w} vs {g}")),
            }
        }
        if keys_in_order(want) != keys_in_order(got) {
            return Err(format!(
                "key order {:?} != {:?}",
                keys_in_order(got),
                keys_in_order(want)
            ));
        }
        let w: Value = serde_json::from_str(want).map_err(|e| format!("fixture: {e}"))?;
        let g: Value = serde_json::from_str(got).map_err(|e| format!("got: {e}"))?;
        walk(&w, &g, "$", false)
    }

    fn check(config_text: &str, fixture: &str) {
        let spec =
            config::parse("c.toml", config_text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let sim = Sim::new(spec, Settings::default(), Now::current());
        let now = sim.start.plus(Duration::from_secs(5));
        let got = status_json(&sim, now);
        if let Err(e) = same_shape(fixture, &got) {
            panic!("{e}\n{got}");
        }
    }

    #[test]
    fn shapes_match_the_fixtures() {
        check(
            include_str!("../../fixtures/configs/mysql2mysql-stream.toml"),
            include_str!("../../fixtures/status-incremental.json"),
        );
        check(
            include_str!("../../fixtures/configs/mysql-full-dump.toml"),
            include_str!("../../fixtures/status-full.json"),
        );
        check(
            include_str!("../../fixtures/configs/mongo2kafka.toml"),
            include_str!("../../fixtures/status-mongo.json"),
        );
    }

    #[test]
    fn shape_checker_can_fail() {
        let inc = include_str!("../../fixtures/status-incremental.json");
        let mongo = include_str!("../../fixtures/status-mongo.json");
        assert!(same_shape(inc, mongo).is_err());
        assert!(same_shape(inc, &inc.replace("\"stage\"", "\"Stage\"")).is_err());
        assert!(same_shape(inc, inc).is_ok());
    }

    #[test]
    fn mongo_position_is_a_bson_timestamp() {
        let spec = config::parse(
            "c.toml",
            include_str!("../../fixtures/configs/mongo2kafka.toml").as_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let sim = Sim::new(spec, Settings::default(), Now::current());
        let now = sim.start.plus(Duration::from_secs(2));
        let v: Value = serde_json::from_str(&position_json(&sim, now)).unwrap_or_default();
        let ts = v["current_position"].as_u64().unwrap_or(0);
        let wall = now
            .wall
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        assert!((ts >> 32) <= wall && (ts >> 32) + 5 >= wall);
        assert!(ts & 0xffff_ffff >= 1);
    }
}
