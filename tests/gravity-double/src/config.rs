//! Reads the part of a gravity pipeline config (TOML, or JSON when the path ends in `.json`)
//! the double needs to look like that pipeline: name, input type and mode, tables, routes,
//! output type, scheduler settings. Unknown keys are ignored, as gravity ignores them.
//! Passwords are never read into these types.

use serde_json::Value;
use thiserror::Error;

/// Most tables the double simulates (label cardinality cap).
pub const MAX_TABLES: usize = 40;
/// Most scheduler workers the double reports gauges for.
pub const MAX_WORKERS: usize = 64;

/// Why a config file could not be used; the text follows gravity's fatal messages.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("fail to read file {path}. err: {source}")]
    Read {
        /// Path given on the command line.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Neither `.toml` nor `.json`.
    #[error("unrecognized path {0}")]
    UnrecognizedPath(String),
    /// Syntax error in the file.
    #[error("{0}")]
    Syntax(String),
    /// A value gravity would refuse.
    #[error("{0}")]
    Invalid(String),
}

/// Source kind of the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputType {
    /// MySQL binlog / table scan.
    Mysql,
    /// MongoDB oplog.
    Mongo,
}

/// `[input] mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputMode {
    /// Incremental (binlog / oplog).
    Stream,
    /// Full dump, exits 0 when done.
    Batch,
}

/// Output plugin family, which decides the `gravity_output_counter` labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputType {
    /// `mysql`: cat0..3 = target schema, table, dml|ddl, engine.
    Mysql,
    /// `async-kafka`: cat0..1 = topic, partition.
    Kafka,
    /// `elasticsearch` / `esmodel`: cat0..2 = index, action, status.
    Elasticsearch,
}

/// One simulated table.
#[derive(Clone, Debug, PartialEq)]
pub struct TableSpec {
    /// Source schema.
    pub db: String,
    /// Source table.
    pub table: String,
    /// Target schema (MySQL output).
    pub target_db: String,
    /// Target table (MySQL output).
    pub target_table: String,
    /// Kafka topic (Kafka output).
    pub topic: String,
}

/// Scheduler settings (`[scheduler.config]`), with gravity's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerSpec {
    /// `nr-worker` (default 10).
    pub nr_worker: u64,
    /// `batch-size` (default 1).
    pub batch_size: u64,
    /// `queue-size` (default 1024).
    pub queue_size: u64,
    /// `sliding-window-size` (default 10240).
    pub sliding_window_size: u64,
    /// `nr-retries` (default 3).
    pub nr_retries: u64,
    /// `retry-sleep` (default `1s`).
    pub retry_sleep: String,
    /// `healthy-threshold` as written (0 when absent).
    pub healthy_threshold_raw: i64,
    /// Effective healthy threshold in seconds (default 60).
    pub healthy_threshold: f64,
}

/// Batch input settings (`[input.config]` of a `mode = "batch"` MySQL input), with gravity's
/// defaults (`nr-scanner` 10, `table-scan-batch` 10000, `batch-per-second-limit` 1; values
/// of 0 or less are replaced by the default, as gravity's `ValidateAndSetDefault` does).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchInputSpec {
    /// `nr-scanner`: tables scanned at once.
    pub nr_scanner: u64,
    /// `table-scan-batch`: rows per scan query.
    pub table_scan_batch: u64,
    /// `batch-per-second-limit`: batches a scanner sends per second at most.
    pub batch_per_second_limit: u64,
}

impl Default for BatchInputSpec {
    fn default() -> Self {
        BatchInputSpec {
            nr_scanner: 10,
            table_scan_batch: 10000,
            batch_per_second_limit: 1,
        }
    }
}

/// Everything the double takes from the config file.
#[derive(Clone, Debug)]
pub struct PipelineSpec {
    /// `name`.
    pub name: String,
    /// `internal-db-name` (default `_gravity`).
    pub internal_db: String,
    /// `[input] type`.
    pub input: InputType,
    /// `[input] mode`.
    pub mode: InputMode,
    /// Source `host:port` (for log messages; never credentials).
    pub source_addr: String,
    /// Target `host:port` for MySQL output.
    pub target_addr: String,
    /// `[output] type`.
    pub output: OutputType,
    /// `[output.config.sql-engine-config] type` (default `mysql-replace-engine`).
    pub engine: String,
    /// Simulated tables (at most [`MAX_TABLES`]).
    pub tables: Vec<TableSpec>,
    /// Scheduler settings.
    pub scheduler: SchedulerSpec,
    /// Batch input settings (used in batch mode).
    pub batch_input: BatchInputSpec,
    /// gravity's `core.HashConfig` of the file bytes.
    pub config_hash: String,
}

/// gravity's `core.HashConfig`: FNV-1a 32 of the bytes, printed in decimal, each digit mapped
/// through `alphanums[digit % 27]`.
pub fn hash_config(content: &[u8]) -> String {
    const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut h: u32 = 0x811c_9dc5;
    for b in content {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string()
        .bytes()
        .map(|b| {
            let idx = usize::from(b) % ALPHANUMS.len();
            ALPHANUMS.get(idx).map_or('b', |&c| c as char)
        })
        .collect()
}

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(k))
}

fn get_str(v: &Value, path: &[&str]) -> Option<String> {
    get(v, path).and_then(Value::as_str).map(str::to_string)
}

fn get_int(v: &Value, path: &[&str]) -> Option<i64> {
    let x = get(v, path)?;
    x.as_i64()
        .or_else(|| x.as_f64().map(|f| f as i64))
        .or_else(|| x.as_str().and_then(|s| s.trim().parse().ok()))
}

fn host_port(v: &Value, path: &[&str], default_port: i64) -> String {
    let host = get_str(v, &[path, &["host"]].concat()).unwrap_or_else(|| "127.0.0.1".into());
    let port = get_int(v, &[path, &["port"]].concat()).unwrap_or(default_port);
    format!("{host}:{port}")
}

/// Names for a gravity match pattern (`*`, `orders*`, `t_?`, a literal).
fn names_for_pattern(pattern: &str, defaults: &[&str]) -> Vec<String> {
    let pattern = pattern.trim();
    if pattern.is_empty() || pattern == "*" {
        return defaults.iter().map(|s| s.to_string()).collect();
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        if !prefix.contains(['*', '?']) {
            let base = if prefix.ends_with('s') || prefix.ends_with('_') || prefix.is_empty() {
                prefix.trim_end_matches('_').to_string()
            } else {
                format!("{prefix}s")
            };
            let stem = prefix.trim_end_matches('_');
            return vec![base, format!("{stem}_items"), format!("{stem}_history")];
        }
    }
    vec![pattern.replace('*', "x").replace('?', "1")]
}

fn string_list(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Parses config text; `path` decides TOML or JSON as gravity does (by suffix).
pub fn parse(path: &str, content: &[u8]) -> Result<PipelineSpec, ConfigError> {
    let text = String::from_utf8_lossy(content);
    let root: Value = if path.ends_with(".toml") {
        toml::from_str(&text).map_err(|e| ConfigError::Syntax(e.message().to_string()))?
    } else if path.ends_with(".json") {
        serde_json::from_str(&text).map_err(|e| ConfigError::Syntax(e.to_string()))?
    } else {
        return Err(ConfigError::UnrecognizedPath(path.to_string()));
    };
    let name = get_str(&root, &["name"]).unwrap_or_default();
    if name.is_empty() {
        return Err(ConfigError::Invalid("pipeline name is empty".into()));
    }
    let internal_db = get_str(&root, &["internal-db-name"])
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "_gravity".into());
    let input = match get_str(&root, &["input", "type"]).as_deref() {
        Some("mysql") | Some("tidb") => InputType::Mysql,
        Some("mongo") | Some("mongooplog") => InputType::Mongo,
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "[plugin_registry] plugin type: input, name: {other} not registered"
            )))
        }
        None => return Err(ConfigError::Invalid("input plugin type is empty".into())),
    };
    let mode = match get_str(&root, &["input", "mode"]).as_deref() {
        Some("batch") => InputMode::Batch,
        Some("stream") | Some("replication") | None => InputMode::Stream,
        Some(other) => {
            return Err(ConfigError::Invalid(format!("invalid input mode: {other}")));
        }
    };
    let output = match get_str(&root, &["output", "type"]).as_deref() {
        Some("mysql") | None => OutputType::Mysql,
        Some("async-kafka") | Some("kafka") => OutputType::Kafka,
        Some("elasticsearch") | Some("esmodel") => OutputType::Elasticsearch,
        Some(other) => {
            return Err(ConfigError::Invalid(format!(
                "[plugin_registry] plugin type: output, name: {other} not registered"
            )))
        }
    };
    let default_port = if input == InputType::Mongo {
        27017
    } else {
        3306
    };
    let source_addr = host_port(&root, &["input", "config", "source"], default_port);
    let target_addr = host_port(&root, &["output", "config", "target"], 3306);
    let engine = get_str(&root, &["output", "config", "sql-engine-config", "type"])
        .unwrap_or_else(|| "mysql-replace-engine".into());

    let defaults: &[&str] = &["orders", "users", "t_2"];
    let routes: Vec<&Value> = get(&root, &["output", "config", "routes"])
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let mut tables: Vec<TableSpec> = Vec::new();
    let push = |tables: &mut Vec<TableSpec>, db: &str, t: &str, route: Option<&Value>| {
        if tables.len() >= MAX_TABLES || tables.iter().any(|x| x.db == db && x.table == t) {
            return;
        }
        let r = |k: &str| route.and_then(|r| r.get(k)).and_then(Value::as_str);
        let topic = r("dml-topic")
            .map(str::to_string)
            .unwrap_or_else(|| format!("{db}.{t}"));
        tables.push(TableSpec {
            db: db.to_string(),
            table: t.to_string(),
            target_db: r("target-schema")
                .filter(|s| !s.is_empty() && !s.contains('*'))
                .unwrap_or(db)
                .to_string(),
            target_table: r("target-table")
                .filter(|s| !s.is_empty() && !s.contains('*'))
                .unwrap_or(t)
                .to_string(),
            topic,
        });
    };
    let route_for = |db: &str| {
        routes.iter().copied().find(|r| {
            let s = r.get("match-schema").and_then(Value::as_str).unwrap_or("*");
            s == "*" || s == db
        })
    };
    // Batch mode scans `table-configs` (array of tables, or a map) when present.
    let table_configs: Vec<&Value> = match get(&root, &["input", "config", "table-configs"]) {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => Vec::new(),
    };
    if mode == InputMode::Batch && !table_configs.is_empty() {
        for tc in table_configs {
            let db = tc
                .get("schema")
                .and_then(Value::as_str)
                .unwrap_or("test_db");
            for pat in string_list(tc.get("table")) {
                for t in names_for_pattern(&pat, defaults) {
                    push(&mut tables, db, &t, route_for(db));
                }
            }
        }
    }
    if tables.is_empty() {
        for r in &routes {
            let db = r
                .get("match-schema")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && *s != "*")
                .unwrap_or("test_db");
            let pats = string_list(r.get("match-table"));
            let pats = if pats.is_empty() {
                vec!["*".to_string()]
            } else {
                pats
            };
            for pat in pats {
                for t in names_for_pattern(&pat, defaults) {
                    push(&mut tables, db, &t, Some(r));
                }
            }
        }
    }
    if tables.is_empty() {
        for t in defaults {
            push(&mut tables, "test_db", t, None);
        }
    }

    let sc = |k: &str| get(&root, &["scheduler", "config", k]);
    let uint = |k: &str, d: u64| {
        sc(k)
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .filter(|v| *v >= 0)
            .map_or(d, |v| v as u64)
    };
    let healthy_threshold_raw =
        get_int(&root, &["scheduler", "config", "healthy-threshold"]).unwrap_or(0);
    let scheduler = SchedulerSpec {
        nr_worker: uint("nr-worker", 10).clamp(1, 1024),
        batch_size: uint("batch-size", 1).max(1),
        queue_size: uint("queue-size", 1024),
        sliding_window_size: uint("sliding-window-size", 10240),
        nr_retries: uint("nr-retries", 3),
        retry_sleep: sc("retry-sleep")
            .and_then(Value::as_str)
            .unwrap_or("1s")
            .to_string(),
        healthy_threshold_raw,
        healthy_threshold: if healthy_threshold_raw > 0 {
            healthy_threshold_raw as f64
        } else {
            60.0
        },
    };
    let input_uint = |k: &str, d: u64| {
        get(&root, &["input", "config", k])
            .and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            })
            .filter(|v| *v > 0)
            .map_or(d, |v| v as u64)
    };
    let bd = BatchInputSpec::default();
    let batch_input = BatchInputSpec {
        nr_scanner: input_uint("nr-scanner", bd.nr_scanner).min(1024),
        table_scan_batch: input_uint("table-scan-batch", bd.table_scan_batch).min(10_000_000),
        batch_per_second_limit: input_uint("batch-per-second-limit", bd.batch_per_second_limit)
            .min(1_000_000),
    };
    Ok(PipelineSpec {
        name,
        internal_db,
        input,
        mode,
        source_addr,
        target_addr,
        output,
        engine,
        tables,
        scheduler,
        batch_input,
        config_hash: hash_config(content),
    })
}

/// Reads and parses the file at `path`.
pub fn load(path: &str) -> Result<PipelineSpec, ConfigError> {
    if !path.ends_with(".toml") && !path.ends_with(".json") {
        return Err(ConfigError::UnrecognizedPath(path.to_string()));
    }
    let content = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_string(),
        source,
    })?;
    parse(path, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M2M: &str = include_str!("../../fixtures/configs/mysql2mysql-stream.toml");
    const M2K: &str = include_str!("../../fixtures/configs/mysql2kafka-stream.toml");
    const MONGO: &str = include_str!("../../fixtures/configs/mongo2kafka.toml");
    const FULL: &str = include_str!("../../fixtures/configs/mysql-full-dump.toml");

    fn names(p: &PipelineSpec) -> Vec<String> {
        p.tables
            .iter()
            .map(|t| format!("{}.{}", t.db, t.table))
            .collect()
    }

    #[test]
    fn fixture_configs_parse() -> Result<(), ConfigError> {
        let p = parse("a.toml", M2M.as_bytes())?;
        assert_eq!(p.name, "mysql2mysqlDemo");
        assert_eq!(
            (p.input, p.mode, p.output),
            (InputType::Mysql, InputMode::Stream, OutputType::Mysql)
        );
        assert_eq!(
            names(&p),
            ["test_db.orders", "test_db.users", "test_db.t_2"]
        );
        assert_eq!(p.scheduler.nr_worker, 20);
        assert_eq!(p.scheduler.batch_size, 10);
        assert_eq!(p.scheduler.sliding_window_size, 1024);
        assert_eq!(p.scheduler.healthy_threshold, 60.0);
        assert_eq!(p.engine, "mysql-replace-engine");
        assert_eq!(p.source_addr, "127.0.0.1:3306");
        assert_eq!(p.internal_db, "_gravity");

        let p = parse("a.toml", M2K.as_bytes())?;
        assert_eq!(p.output, OutputType::Kafka);
        assert_eq!(p.internal_db, "_gravity_orders");
        assert_eq!(
            names(&p),
            ["shop.orders", "shop.orders_items", "shop.orders_history"]
        );
        assert!(p.tables.iter().all(|t| t.topic == "binlog.shop.orders"));
        assert_eq!(p.source_addr, "mysql-primary.internal:3306");

        let p = parse("a.toml", MONGO.as_bytes())?;
        assert_eq!((p.input, p.output), (InputType::Mongo, OutputType::Kafka));
        assert_eq!(names(&p), ["app.orders", "app.users", "app.t_2"]);
        assert_eq!(p.tables[0].topic, "oplog.app");
        assert_eq!(p.source_addr, "127.0.0.1:27017");

        let p = parse("a.toml", FULL.as_bytes())?;
        assert_eq!(p.mode, InputMode::Batch);
        assert_eq!(
            names(&p),
            ["shop.orders", "shop.order_items", "shop.order_history"]
        );
        assert_eq!(p.target_addr, "127.0.0.1:3307");
        Ok(())
    }

    #[test]
    fn secrets_do_not_reach_the_spec() -> Result<(), ConfigError> {
        for c in [M2M, M2K, MONGO, FULL] {
            let p = parse("a.toml", c.as_bytes())?;
            let dump = format!("{p:?}");
            for secret in [
                "s3cret",
                "kafka-pipeline-pw",
                "probe-pw",
                "sasl-pw",
                "mongo-pw",
            ] {
                assert!(!dump.contains(secret), "{secret} leaked");
            }
        }
        Ok(())
    }

    #[test]
    fn json_healthy_threshold_and_errors() {
        let j = br#"{"name":"j","input":{"type":"mysql","mode":"stream"},
            "scheduler":{"config":{"healthy-threshold":2}},"unknown":{"x":1}}"#;
        let p = parse("c.json", j);
        assert!(matches!(&p, Ok(p) if p.scheduler.healthy_threshold == 2.0 && p.tables.len() == 3));
        assert!(matches!(
            parse("c.yaml", j),
            Err(ConfigError::UnrecognizedPath(_))
        ));
        assert!(matches!(
            parse("c.toml", b"name = "),
            Err(ConfigError::Syntax(_))
        ));
        assert!(matches!(
            parse("c.json", br#"{"input":{"type":"mysql"}}"#),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn hash_is_gravitys_alphabet() {
        let h = hash_config(M2M.as_bytes());
        assert!(!h.is_empty() && h.len() <= 10);
        assert!(h.chars().all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
        assert_ne!(h, hash_config(b"other"));
        // FNV-1a("") = 2166136261 -> digits 2,1,6,6,1,3,6,2,6,1
        assert_eq!(hash_config(b""), "65bb57b6b5");
    }
}
