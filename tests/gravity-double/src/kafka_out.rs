//! The double as gravity's data path for an `async-kafka` output (opt-in:
//! `GRAVITY_DOUBLE_KAFKA_PRODUCE=1`): it reads new rows of the routed source tables from
//! the real MySQL/MariaDB source named in gravity's config and produces gravity's JSON
//! messages (`pkg/core/encoding`, schema version 0.1) to the Kafka brokers of the config,
//! with its TLS and SASL settings, and keeps the double's `/status` watermark honest.
//!
//! - **Reading.** Not the binlog: every [`POLL`] the double selects the rows of each source
//!   table that a route matches (at most [`MAX_TABLES`] tables, [`MAX_ROWS`] rows each, by
//!   primary key) and compares them with the previous look: a new key is an `insert`, a
//!   changed row an `update` (with `old`), a key gone a `delete`. The first look is the
//!   starting position (nothing is sent for rows already there), as gravity starts from the
//!   current binlog position. Several changes of one row between two looks are seen as one.
//! - **Producing.** One Kafka connection per broker (the exporter's client code does the
//!   TLS and SASL login), `Metadata` for the topic's partitions, `Produce` (acks = all, as
//!   gravity's Sarama producer is set up) of one record batch v2 per partition, snappy
//!   compressed like Sarama's; the partition is a hash of the primary key (gravity sends a
//!   key's changes to one worker and `workerIndex % partitions`). Messages that cannot be
//!   sent stay queued (at most [`MAX_QUEUE`]) and are retried.
//! - **Watermark.** EventTime is when the double saw the change (a poll interval after
//!   its commit at most), ProcessTime when its message was acknowledged; with nothing new
//!   both follow the clock, as gravity's own heartbeat keeps its watermark fresh. While
//!   messages cannot be sent the watermark stands still, so `/healthz` turns 500 after the
//!   healthy threshold, as gravity's does.
//! - **Silent loss.** `POST /_double/kafka?produce=off` drops the messages instead of
//!   sending them while the watermark goes on as if they had been sent (gravity acked them):
//!   `/healthz` stays 200. `produce=on` sends again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{
    metadata_request, produce_request, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use serde::Serialize;

use gravity_exporter::gravity_config::{self, EndpointRole, GravityConfig, Protocol};
use gravity_exporter::probe::kafka::{connect, Connection, KafkaSecurity};
use gravity_exporter::probe::mysql::MySqlConn;
use gravity_exporter::probe::Endpoint;

/// How often the source tables are read.
pub const POLL: Duration = Duration::from_millis(100);
/// Most tables followed.
pub const MAX_TABLES: usize = 16;
/// Most rows read per table and look.
pub const MAX_ROWS: usize = 1000;
/// Most messages waiting to be sent.
pub const MAX_QUEUE: usize = 10_000;
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the data path did, for `/_double/state` and the switch.
#[derive(Debug, Default)]
pub struct State {
    /// Send messages (false: drop them, silently).
    pub paused: AtomicBool,
    /// Messages acknowledged by the broker.
    pub produced: AtomicU64,
    /// Messages dropped while paused.
    pub dropped: AtomicU64,
    /// The last error (no secrets: errors name users and codes only).
    pub last_error: Mutex<String>,
}

impl State {
    /// The JSON of `/_double/state`.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "produce": !self.paused.load(Ordering::Relaxed),
            "produced": self.produced.load(Ordering::Relaxed),
            "dropped": self.dropped.load(Ordering::Relaxed),
            "last_error": self.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
        })
    }

    fn error(&self, e: String) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = e;
        }
    }
}

/// gravity's `DmlStringMsg_0_1`: the header fields in Go's struct order, maps with sorted
/// keys (Go's encoding/json sorts map keys), every value a string or null.
#[derive(Debug, Serialize)]
pub struct Msg01 {
    /// `0.1`.
    pub version: &'static str,
    /// Source schema.
    pub database: String,
    /// Source table.
    pub table: String,
    /// `insert`, `update`, `delete`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Event time, Unix seconds.
    pub ts: i64,
    /// Always `Asia/Shanghai` in gravity 0.9.
    pub time_zone: &'static str,
    /// The source host.
    pub host: String,
    /// The row.
    pub data: BTreeMap<String, Option<String>>,
    /// The row before an update (empty otherwise).
    pub old: BTreeMap<String, Option<String>>,
    /// The primary key.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pks: BTreeMap<String, Option<String>>,
}

type Row = BTreeMap<String, Option<String>>;

/// One change seen at the source.
#[derive(Debug, Clone)]
struct Change {
    topic: String,
    key: String,
    value: Vec<u8>,
    seen: SystemTime,
}

/// The messages for what changed between two looks at one table.
pub fn changes(
    schema: &str,
    table: &str,
    host: &str,
    pk: &[String],
    before: &BTreeMap<String, Row>,
    after: &BTreeMap<String, Row>,
    ts: i64,
) -> Vec<(String, Msg01)> {
    let pks = |row: &Row| -> Row {
        pk.iter()
            .map(|k| (k.clone(), row.get(k).cloned().flatten()))
            .collect()
    };
    let msg = |kind, data: &Row, old: Row| Msg01 {
        version: "0.1",
        database: schema.to_string(),
        table: table.to_string(),
        kind,
        ts,
        time_zone: "Asia/Shanghai",
        host: host.to_string(),
        pks: pks(data),
        data: data.clone(),
        old,
    };
    let mut out = Vec::new();
    for (key, row) in after {
        match before.get(key) {
            None => out.push((key.clone(), msg("insert", row, Row::new()))),
            Some(old) if old != row => out.push((key.clone(), msg("update", row, old.clone()))),
            Some(_) => {}
        }
    }
    for (key, row) in before {
        if !after.contains_key(key) {
            out.push((key.clone(), msg("delete", row, Row::new())));
        }
    }
    out
}

fn quote(id: &str) -> String {
    format!("`{}`", id.replace('`', "``"))
}

fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''"))
}

/// A table followed: its primary key and the rows at the last look.
struct Followed {
    schema: String,
    table: String,
    topic: String,
    pk: Vec<String>,
    rows: Option<BTreeMap<String, Row>>,
}

struct Producer {
    brokers: Vec<Endpoint>,
    security: KafkaSecurity,
    conn: Option<Connection>,
    partitions: HashMap<String, usize>,
}

impl Producer {
    async fn conn(&mut self) -> Result<&mut Connection, String> {
        if self.conn.is_none() {
            let mut last = String::from("no broker in gravity's config");
            for b in &self.brokers {
                match connect(b, &self.security, TIMEOUT).await {
                    Ok(c) => {
                        self.conn = Some(c);
                        break;
                    }
                    Err(e) => last = format!("{b}: {e}"),
                }
            }
            if self.conn.is_none() {
                return Err(last);
            }
        }
        self.conn
            .as_mut()
            .ok_or_else(|| "no connection".to_string())
    }

    async fn partitions(&mut self, topic: &str) -> Result<usize, String> {
        if let Some(n) = self.partitions.get(topic) {
            return Ok(*n);
        }
        let conn = self.conn().await?;
        let v = conn.version(3, 1..=8).ok_or("no Metadata version")?;
        let req = MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(TopicName(StrBytes::from_string(topic.to_string()))))]));
        let mut body = BytesMut::new();
        req.encode(&mut body, v).map_err(|e| e.to_string())?;
        let mut frame = conn
            .call(3, v, &body, 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let resp = MetadataResponse::decode(&mut frame, v).map_err(|e| e.to_string())?;
        let t = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .ok_or("topic missing from Metadata")?;
        if t.error_code != 0 || t.partitions.is_empty() {
            return Err(format!("kafka: topic {topic}: error code {}", t.error_code));
        }
        self.partitions
            .insert(topic.to_string(), t.partitions.len());
        Ok(t.partitions.len())
    }

    /// Sends `batch` (all for one topic), one record batch per partition; Ok when acked.
    async fn send(&mut self, topic: &str, batch: &[Change]) -> Result<(), String> {
        let n = self.partitions(topic).await?;
        let mut by_part: BTreeMap<i32, Vec<Record>> = BTreeMap::new();
        for c in batch {
            let part = i32::try_from(fnv(c.key.as_bytes()) % (n as u64)).unwrap_or(0);
            let ms = c
                .seen
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0);
            let recs = by_part.entry(part).or_default();
            recs.push(Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: -1,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: i64::try_from(recs.len()).unwrap_or(0),
                // offset − sequence constant: one batch (base sequence -1, no idempotence)
                sequence: i32::try_from(recs.len()).unwrap_or(0) - 1,
                timestamp: ms,
                key: None,
                value: Some(Bytes::from(c.value.clone())),
                headers: Default::default(),
            });
        }
        let mut data = Vec::new();
        for (part, recs) in by_part {
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &recs,
                &RecordEncodeOptions {
                    version: 2,
                    compression: Compression::Snappy,
                },
            )
            .map_err(|e| e.to_string())?;
            data.push(
                produce_request::PartitionProduceData::default()
                    .with_index(part)
                    .with_records(Some(buf.freeze())),
            );
        }
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![produce_request::TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(data)]);
        let conn = self.conn().await?;
        let v = conn.version(0, 3..=8).ok_or("no Produce version")?;
        let mut body = BytesMut::new();
        req.encode(&mut body, v).map_err(|e| e.to_string())?;
        let mut frame = conn
            .call(0, v, &body, 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        let resp = ProduceResponse::decode(&mut frame, v).map_err(|e| e.to_string())?;
        for t in &resp.responses {
            for p in &t.partition_responses {
                if p.error_code != 0 {
                    return Err(format!(
                        "kafka: produce to {topic}/{}: error code {}",
                        p.index, p.error_code
                    ));
                }
            }
        }
        Ok(())
    }
}

/// FNV-1a 64.
fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, x| {
        (h ^ u64::from(*x)).wrapping_mul(0x0100_0000_01b3)
    })
}

async fn tables(conn: &mut MySqlConn, cfg: &GravityConfig) -> Result<Vec<Followed>, String> {
    let rs = conn
        .query("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys') ORDER BY 1, 2")
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for row in &rs.rows {
        let (Some(Some(s)), Some(Some(t))) = (row.first(), row.get(1)) else {
            continue;
        };
        if s.eq_ignore_ascii_case(&cfg.internal_db_name) {
            continue;
        }
        let Some(route) = cfg.routes.iter().find(|r| r.matches(s, t)) else {
            continue;
        };
        let Some(topic) = route.dml_topic.clone() else {
            continue;
        };
        let pk = conn
            .query(&format!(
                "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE WHERE CONSTRAINT_NAME = 'PRIMARY' AND TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
                literal(s),
                literal(t)
            ))
            .await
            .map_err(|e| e.to_string())?;
        let pk: Vec<String> = pk
            .rows
            .iter()
            .filter_map(|r| r.first().cloned().flatten())
            .collect();
        if pk.is_empty() {
            continue;
        }
        out.push(Followed {
            schema: s.clone(),
            table: t.clone(),
            topic,
            pk,
            rows: None,
        });
        if out.len() >= MAX_TABLES {
            break;
        }
    }
    Ok(out)
}

async fn read_rows(conn: &mut MySqlConn, f: &Followed) -> Result<BTreeMap<String, Row>, String> {
    let order: Vec<String> = f.pk.iter().map(|c| quote(c)).collect();
    let rs = conn
        .query(&format!(
            "SELECT * FROM {}.{} ORDER BY {} LIMIT {MAX_ROWS}",
            quote(&f.schema),
            quote(&f.table),
            order.join(", ")
        ))
        .await
        .map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    for r in rs.rows {
        let row: Row = rs.columns.iter().cloned().zip(r).collect();
        let key: Vec<String> =
            f.pk.iter()
                .map(|k| row.get(k).cloned().flatten().unwrap_or_default())
                .collect();
        out.insert(key.join("\u{1}"), row);
    }
    Ok(out)
}

/// Runs the data path until the process ends; `watermark` pins the double's `/status`.
pub async fn run(
    config_path: String,
    state: Arc<State>,
    watermark: impl Fn(SystemTime, SystemTime) + Send + 'static,
) {
    let mut queue: VecDeque<Change> = VecDeque::new();
    let mut followed: Vec<Followed> = Vec::new();
    let mut source: Option<MySqlConn> = None;
    let mut producer: Option<Producer> = None;
    let mut last_tables = SystemTime::UNIX_EPOCH;
    let mut cfg: Option<GravityConfig> = None;
    loop {
        tokio::time::sleep(POLL).await;
        if cfg.is_none() {
            match gravity_config::read(std::path::Path::new(&config_path)) {
                Ok(c) => cfg = Some(c),
                Err(e) => {
                    state.error(format!("config: {e}"));
                    continue;
                }
            }
        }
        let Some(c) = cfg.as_ref() else { continue };
        let Some(src) = c
            .endpoint(EndpointRole::Source)
            .filter(|e| e.protocol == Protocol::Mysql)
        else {
            state.error("no MySQL source in gravity's config".into());
            continue;
        };
        if producer.is_none() {
            let brokers: Vec<&gravity_config::Endpoint> = c
                .endpoints
                .iter()
                .filter(|e| e.role == EndpointRole::Kafka)
                .collect();
            let Some(first) = brokers.first() else {
                state.error("no Kafka brokers in gravity's config".into());
                continue;
            };
            producer = Some(Producer {
                brokers: brokers
                    .iter()
                    .map(|e| Endpoint::new(e.host.clone(), e.port))
                    .collect(),
                security: gravity_exporter::collector::connections::kafka_security(first),
                conn: None,
                partitions: HashMap::new(),
            });
        }
        if source.is_none() {
            let ep = Endpoint::new(src.host.clone(), src.port);
            match MySqlConn::connect(
                &ep,
                src.user.as_deref().unwrap_or("root"),
                &src.password,
                TIMEOUT,
            )
            .await
            {
                Ok(conn) => source = Some(conn),
                Err(e) => {
                    state.error(format!("source: {e}"));
                    continue;
                }
            }
        }
        let Some(conn) = source.as_mut() else {
            continue;
        };
        let now = SystemTime::now();
        // New tables are looked for every 2 s.
        if now.duration_since(last_tables).unwrap_or_default() >= Duration::from_secs(2) {
            last_tables = now;
            match tables(conn, c).await {
                Ok(list) => {
                    for t in list {
                        if !followed
                            .iter()
                            .any(|f| f.schema == t.schema && f.table == t.table)
                        {
                            followed.push(t);
                        }
                    }
                }
                Err(e) => {
                    state.error(format!("source: {e}"));
                    source = None;
                    continue;
                }
            }
        }
        let seen = SystemTime::now();
        let ts = seen
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(0))
            .unwrap_or(0);
        let mut failed = false;
        for f in followed.iter_mut() {
            let rows = match read_rows(conn, f).await {
                Ok(r) => r,
                Err(e) => {
                    state.error(format!("source: {e}"));
                    failed = true;
                    break;
                }
            };
            if let Some(before) = &f.rows {
                for (key, m) in changes(&f.schema, &f.table, &src.host, &f.pk, before, &rows, ts) {
                    if queue.len() >= MAX_QUEUE {
                        queue.pop_front();
                    }
                    if let Ok(value) = serde_json::to_vec(&m) {
                        queue.push_back(Change {
                            topic: f.topic.clone(),
                            key,
                            value,
                            seen,
                        });
                    }
                }
            }
            f.rows = Some(rows);
        }
        if failed {
            source = None;
            continue;
        }
        if state.paused.load(Ordering::Relaxed) {
            // Silent loss: acknowledged as if sent, never in the topic.
            state
                .dropped
                .fetch_add(queue.len() as u64, Ordering::Relaxed);
            queue.clear();
        }
        let Some(p) = producer.as_mut() else { continue };
        let mut ok = true;
        while let Some(topic) = queue.front().map(|c| c.topic.clone()) {
            let n = queue
                .iter()
                .take_while(|c| c.topic == topic)
                .count()
                .min(500);
            let batch: Vec<Change> = queue.iter().take(n).cloned().collect();
            match p.send(&topic, &batch).await {
                Ok(()) => {
                    queue.drain(..n);
                    state.produced.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    state.error(e);
                    p.conn = None;
                    p.partitions.clear();
                    ok = false;
                    break;
                }
            }
        }
        if ok && queue.is_empty() {
            // Everything seen up to `seen` is in the topic (or dropped while paused).
            watermark(seen, SystemTime::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Option<&str>)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
            .collect()
    }

    #[test]
    fn messages_have_gravitys_0_1_shape() {
        let before: BTreeMap<String, Row> = [(
            "p1".to_string(),
            row(&[("pipeline", Some("p1")), ("seq", Some("41"))]),
        )]
        .into();
        let after: BTreeMap<String, Row> = [
            (
                "p1".to_string(),
                row(&[("pipeline", Some("p1")), ("seq", Some("42"))]),
            ),
            (
                "p2".to_string(),
                row(&[("pipeline", Some("p2")), ("seq", None)]),
            ),
        ]
        .into();
        let pk = vec!["pipeline".to_string()];
        let m = changes(
            "gravity_canary",
            "heartbeat",
            "db1",
            &pk,
            &before,
            &after,
            1_796_450_401,
        );
        let json: Vec<String> = m
            .iter()
            .map(|(_, m)| serde_json::to_string(m).unwrap())
            .collect();
        assert_eq!(
            json,
            [
                r#"{"version":"0.1","database":"gravity_canary","table":"heartbeat","type":"update","ts":1796450401,"time_zone":"Asia/Shanghai","host":"db1","data":{"pipeline":"p1","seq":"42"},"old":{"pipeline":"p1","seq":"41"},"pks":{"pipeline":"p1"}}"#,
                r#"{"version":"0.1","database":"gravity_canary","table":"heartbeat","type":"insert","ts":1796450401,"time_zone":"Asia/Shanghai","host":"db1","data":{"pipeline":"p2","seq":null},"old":{},"pks":{"pipeline":"p2"}}"#,
            ]
        );
        let gone = changes("s", "t", "h", &pk, &after, &BTreeMap::new(), 1);
        assert_eq!(gone.len(), 2);
        assert!(gone.iter().all(|(_, m)| m.kind == "delete"));
    }
}
