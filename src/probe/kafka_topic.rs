//! Reading the newest messages of one Kafka topic, for the canary's Kafka target
//! (docs/canary.md): `Metadata` (partitions and their leaders), `ListOffsets` (the end of
//! each partition when a canary is written) and `Fetch` from there, with record batches v2
//! decoded by the maintained `kafka-protocol` crate. Connections go through
//! [`super::kafka::connect`]: TLS and the SASL login exactly as gravity's config says.
//!
//! Everything is bounded: at most [`MAX_PARTITIONS`] partitions, one `Fetch` per leader and
//! poll of at most [`MAX_FETCH_BYTES`] ([`PARTITION_MAX_BYTES`] per partition, a response
//! frame of at most [`MAX_FRAME_BYTES`]) with a broker-side wait of [`FETCH_WAIT_MS`], at
//! most [`MAX_SCANNED`] records looked at per poll, batches of at most
//! [`MAX_RECORDS_PER_BATCH`] records that decompress to at most [`MAX_DECOMPRESSED`] bytes
//! (a batch over a bound is skipped and counted, never allocated). Each call has the
//! caller's deadline.
//!
//! Only non-flexible versions are spoken (request header v1): Metadata v1..=8, ListOffsets
//! v1..=5, Fetch v4..=11, each the highest the broker supports (Kafka 0.11 to 4.x).
//!
//! Every array count of a response is checked before `kafka-protocol` sees the body. Its
//! array decoder sizes a vector from the INT32 count (`Vec::with_capacity`) before it reads
//! an element, so a small frame claiming 2^31−1 elements (a broken or hostile broker, or a
//! man-in-the-middle on a plaintext connection) would make that allocation fail and abort
//! the whole exporter. A bounds-checked walker over the layout of exactly the versions
//! spoken here ([`Guarded`]) refuses a count over [`MAX_ARRAY_LEN`] or over what the bytes
//! left can hold (at the element's smallest encoded size) as an undecodable answer
//! ([`TopicError::Decode`]), which the canary reports like any other protocol failure. The
//! record batches of a Fetch are a length-prefixed bytes field the walker skips
//! ([`decode_batch`] bounds them).

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{
    fetch_request, list_offsets_request, metadata_request, BrokerId, FetchRequest, FetchResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{Compression, RecordBatchDecoder};

use super::kafka::{connect, Connection, KafkaSecurity};
use super::{Endpoint, WireError};

/// Most partitions of the topic read.
pub const MAX_PARTITIONS: usize = 64;
/// `max_bytes` of one Fetch (all partitions of one leader).
pub const MAX_FETCH_BYTES: i32 = 1024 * 1024;
/// `partition_max_bytes` of each partition in a Fetch.
pub const PARTITION_MAX_BYTES: i32 = 256 * 1024;
/// Largest response frame read (a broker returns one whole batch even when larger than
/// `max_bytes`; gravity's producer caps a message at 1 MiB).
pub const MAX_FRAME_BYTES: usize = 2 * 1024 * 1024 + 64 * 1024;
/// `max_wait_ms` of a Fetch: how long the broker may wait for new data.
pub const FETCH_WAIT_MS: i32 = 100;
/// Most records looked at per poll.
pub const MAX_SCANNED: usize = 20_000;
/// Most records in one batch.
pub const MAX_RECORDS_PER_BATCH: i32 = 20_000;
/// Most bytes one batch may decompress to.
pub const MAX_DECOMPRESSED: usize = 16 * 1024 * 1024;
/// Largest Metadata / ListOffsets answer.
const MAX_SMALL_FRAME: usize = 1024 * 1024;
/// Most elements of any array of a Metadata, ListOffsets or Fetch answer (brokers, topics,
/// partitions, replicas, aborted transactions); each must also fit the bytes left.
pub const MAX_ARRAY_LEN: usize = 100_000;

const METADATA: i16 = 3;
const LIST_OFFSETS: i16 = 2;
const FETCH: i16 = 1;

/// Errors of the topic reader: a connection or protocol error, or a per-topic error code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Connecting, the login, or a request failed.
    #[error(transparent)]
    Kafka(#[from] WireError),
    /// The broker cannot serve the API in a version this reader speaks.
    #[error("the broker supports no version of {api} in {ours} (Kafka older than 0.11?)")]
    Version {
        /// The API.
        api: &'static str,
        /// Our range.
        ours: &'static str,
    },
    /// The broker's answer could not be decoded.
    #[error("undecodable {api} response: {detail}")]
    Decode {
        /// The API.
        api: &'static str,
        /// What the decoder said.
        detail: String,
    },
    /// The topic does not exist, or its metadata carries an error code.
    #[error("topic {topic}: error code {code}{}", if *code == 3 { " (UNKNOWN_TOPIC_OR_PARTITION: not created yet?)" } else if *code == 29 { " (TOPIC_AUTHORIZATION_FAILED)" } else { "" })]
    Topic {
        /// The topic.
        topic: String,
        /// The Kafka error code.
        code: i16,
    },
    /// No broker of gravity's config could be reached.
    #[error("no broker of gravity's config answered")]
    NoBroker,
    /// The deadline passed.
    #[error("no answer within {after_ms} ms")]
    Timeout {
        /// The time allowed, in milliseconds.
        after_ms: u128,
    },
}

/// One record read from the topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms since the epoch; CreateTime of the producer or LogAppendTime).
    pub timestamp: i64,
    /// The value (`None` for a tombstone).
    pub value: Option<Bytes>,
}

/// Why a batch was skipped without being decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Shorter than a batch header, or a length that does not fit.
    #[error("truncated batch")]
    Truncated,
    /// Message format v0/v1 (brokers before 0.11 or a down-converted log).
    #[error("message format v{0} (only record batches v2 are read)")]
    Magic(i8),
    /// More records than [`MAX_RECORDS_PER_BATCH`], or a negative count.
    #[error("batch of {0} records")]
    Records(i32),
    /// A codec this build does not carry (lz4, zstd) or an unknown one.
    #[error("compression codec {0} not supported (gravity's producer uses snappy)")]
    Codec(i16),
    /// Decompresses to more than [`MAX_DECOMPRESSED`] bytes, or is not valid.
    #[error("compressed records: {0}")]
    Decompress(String),
    /// The decoder refused it (CRC, varints, ...).
    #[error("undecodable batch: {0}")]
    Decode(String),
}

/// One batch of a Fetch answer, split off without decoding: (base offset, offset after the
/// last record, the batch's bytes).
pub fn split_batches(mut records: &[u8]) -> Vec<(i64, i64, &[u8])> {
    let mut out = Vec::new();
    // A Fetch answer may end in a partial batch (cut at max_bytes): it is left for the next
    // fetch, which starts at its offset.
    while records.len() >= 12 {
        let base = i64::from_be_bytes(records[..8].try_into().unwrap_or_default());
        let len = i32::from_be_bytes(records[8..12].try_into().unwrap_or_default());
        let Some(total) = usize::try_from(len).ok().and_then(|l| l.checked_add(12)) else {
            break;
        };
        let Some(batch) = records.get(..total) else {
            break;
        };
        // lastOffsetDelta at 23..27 (v2); v0/v1 message sets hold one message per entry.
        let next = batch
            .get(23..27)
            .filter(|_| batch.get(16) == Some(&2))
            .map(|d| i32::from_be_bytes(d.try_into().unwrap_or_default()))
            .map(|d| base.saturating_add(i64::from(d.max(0))).saturating_add(1))
            .unwrap_or_else(|| base.saturating_add(1));
        out.push((base, next, batch));
        records = &records[total..];
    }
    out
}

/// Decompresses the records of a batch with [`MAX_DECOMPRESSED`] as the bound: snappy in
/// the xerial framing Kafka's Java and Go clients write (or raw snappy), gzip.
pub fn decompress(data: &[u8], codec: Compression) -> Result<Bytes, BatchError> {
    const XERIAL: &[u8; 8] = b"\x82SNAPPY\x00";
    let too_big = || BatchError::Decompress(format!("more than {MAX_DECOMPRESSED} bytes"));
    match codec {
        Compression::None => Ok(Bytes::copy_from_slice(data)),
        Compression::Snappy => {
            let raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), BatchError> {
                let n = snap::raw::decompress_len(block)
                    .map_err(|e| BatchError::Decompress(e.to_string()))?;
                if out.len().saturating_add(n) > MAX_DECOMPRESSED {
                    return Err(too_big());
                }
                let start = out.len();
                out.resize(start + n, 0);
                snap::raw::Decoder::new()
                    .decompress(block, &mut out[start..])
                    .map_err(|e| BatchError::Decompress(e.to_string()))?;
                Ok(())
            };
            let mut out = Vec::new();
            if data.len() >= 16 && data.starts_with(XERIAL) {
                let mut rest = &data[16..];
                while !rest.is_empty() {
                    let len = rest
                        .get(..4)
                        .map(|b| u32::from_be_bytes(b.try_into().unwrap_or_default()))
                        .ok_or(BatchError::Truncated)?;
                    let len = usize::try_from(len).map_err(|_| BatchError::Truncated)?;
                    let block = rest
                        .get(4..4usize.saturating_add(len))
                        .ok_or(BatchError::Truncated)?;
                    raw(block, &mut out)?;
                    rest = &rest[4 + len..];
                }
            } else {
                raw(data, &mut out)?;
            }
            Ok(Bytes::from(out))
        }
        Compression::Gzip => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(data)
                .take(
                    u64::try_from(MAX_DECOMPRESSED)
                        .unwrap_or(u64::MAX)
                        .saturating_add(1),
                )
                .read_to_end(&mut out)
                .map_err(|e| BatchError::Decompress(e.to_string()))?;
            if out.len() > MAX_DECOMPRESSED {
                return Err(too_big());
            }
            Ok(Bytes::from(out))
        }
        Compression::Lz4 => Err(BatchError::Codec(3)),
        Compression::Zstd => Err(BatchError::Codec(4)),
    }
}

/// Decodes one batch (from [`split_batches`]) after checking its header against the bounds.
pub fn decode_batch(batch: &[u8]) -> Result<Vec<TopicRecord>, BatchError> {
    if batch.len() < 61 {
        return Err(BatchError::Truncated);
    }
    let magic = i8::from_be_bytes([batch[16]]);
    if magic != 2 {
        return Err(BatchError::Magic(magic));
    }
    let attributes = i16::from_be_bytes([batch[21], batch[22]]);
    let codec = attributes & 0x7;
    if !matches!(codec, 0..=2) {
        return Err(BatchError::Codec(codec));
    }
    let count = i32::from_be_bytes([batch[57], batch[58], batch[59], batch[60]]);
    if !(0..=MAX_RECORDS_PER_BATCH).contains(&count) {
        return Err(BatchError::Records(count));
    }
    let mut buf = Bytes::copy_from_slice(batch);
    let set = RecordBatchDecoder::decode_with_custom_compression(
        &mut buf,
        Some(|data: &mut Bytes, c: Compression| {
            decompress(data, c).map_err(|e| anyhow::anyhow!(e.to_string()))
        }),
    )
    .map_err(|e| BatchError::Decode(format!("{e:#}")))?;
    Ok(set
        .records
        .into_iter()
        .filter(|r| !r.control)
        .map(|r| TopicRecord {
            partition: 0,
            offset: r.offset,
            timestamp: r.timestamp,
            value: r.value,
        })
        .collect())
}

/// What one poll looked at.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollStats {
    /// Records looked at.
    pub scanned: usize,
    /// Batches skipped (over a bound, or undecodable), with the last reason.
    pub skipped: usize,
    /// Why the last batch was skipped.
    pub last_skip: Option<String>,
}

/// Scans the records of one partition's Fetch answer from `cursor` on: calls `f` for each
/// record at or after `cursor` (at most `budget`), and returns the new cursor (after the
/// last record looked at, or after a skipped batch).
pub fn scan_partition(
    partition: i32,
    records: &[u8],
    mut cursor: i64,
    budget: usize,
    stats: &mut PollStats,
    f: &mut (dyn FnMut(&TopicRecord) + Send),
) -> i64 {
    for (_, next, batch) in split_batches(records) {
        if next <= cursor {
            continue;
        }
        if stats.scanned >= budget {
            break;
        }
        match decode_batch(batch) {
            Ok(recs) => {
                let from = cursor;
                for mut r in recs.into_iter().filter(|r| r.offset >= from) {
                    if stats.scanned >= budget {
                        return cursor;
                    }
                    r.partition = partition;
                    stats.scanned += 1;
                    cursor = r.offset.saturating_add(1);
                    f(&r);
                }
                // Records removed by compaction or control records: on past the batch.
                cursor = cursor.max(next);
            }
            Err(e) => {
                stats.skipped += 1;
                stats.last_skip = Some(e.to_string());
                cursor = cursor.max(next);
            }
        }
    }
    cursor
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn encode<T: Encodable>(msg: &T, version: i16, api: &'static str) -> Result<Vec<u8>, TopicError> {
    let mut b = BytesMut::new();
    msg.encode(&mut b, version)
        .map_err(|e| TopicError::Decode {
            api,
            detail: format!("encoding: {e}"),
        })?;
    Ok(b.to_vec())
}

fn decode<T: Guarded>(frame: Bytes, version: i16, api: &'static str) -> Result<T, TopicError> {
    T::walk(
        &mut Walk {
            body: &frame,
            at: 0,
        },
        version,
    )
    .map_err(|detail| TopicError::Decode { api, detail })?;
    let mut b = frame;
    let v = T::decode(&mut b, version).map_err(|e| TopicError::Decode {
        api,
        detail: e.to_string(),
    })?;
    if b.has_remaining() {
        return Err(TopicError::Decode {
            api,
            detail: format!("{} trailing bytes", b.remaining()),
        });
    }
    Ok(v)
}

/// A bounds-checked cursor over a response body, for [`Guarded::walk`]: every read is
/// checked, nothing is allocated, and an error is the detail of a [`TopicError::Decode`].
struct Walk<'a> {
    body: &'a [u8],
    at: usize,
}

impl Walk<'_> {
    fn left(&self) -> usize {
        self.body.len().saturating_sub(self.at)
    }

    fn skip(&mut self, n: usize) -> Result<(), String> {
        match self.at.checked_add(n) {
            Some(end) if end <= self.body.len() => {
                self.at = end;
                Ok(())
            }
            _ => Err(format!("truncated at byte {}", self.at)),
        }
    }

    fn int<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self
            .at
            .checked_add(N)
            .and_then(|end| self.body.get(self.at..end))
            .and_then(|b| <[u8; N]>::try_from(b).ok())
            .ok_or_else(|| format!("truncated at byte {}", self.at))?;
        self.skip(N)?;
        Ok(b)
    }

    /// STRING or NULLABLE_STRING: INT16 length (-1: null), then the bytes.
    fn string(&mut self) -> Result<(), String> {
        match i16::from_be_bytes(self.int()?) {
            -1 => Ok(()),
            n => self.skip(usize::try_from(n).map_err(|_| format!("string length {n}"))?),
        }
    }

    /// BYTES or NULLABLE_BYTES: INT32 length (-1: null), then the bytes.
    fn bytes(&mut self) -> Result<(), String> {
        match i32::from_be_bytes(self.int()?) {
            -1 => Ok(()),
            n => self.skip(usize::try_from(n).map_err(|_| format!("bytes length {n}"))?),
        }
    }

    /// An ARRAY's INT32 count (-1, null, counts as 0), checked against [`MAX_ARRAY_LEN`]
    /// and against the bytes left for elements of at least `min` bytes each.
    fn array(&mut self, field: &str, min: usize) -> Result<usize, String> {
        let n = i32::from_be_bytes(self.int()?);
        if n == -1 {
            return Ok(0);
        }
        let left = self.left();
        match usize::try_from(n) {
            Ok(count)
                if count <= MAX_ARRAY_LEN && count.checked_mul(min).is_some_and(|b| b <= left) =>
            {
                Ok(count)
            }
            _ => Err(format!(
                "implausible {field} array length {n} ({left} bytes left)"
            )),
        }
    }

    /// An ARRAY of `size`-byte fixed elements.
    fn fixed_array(&mut self, field: &str, size: usize) -> Result<(), String> {
        let n = self.array(field, size)?;
        self.skip(n.saturating_mul(size))
    }
}

/// A response this module decodes, with a walk over its layout (the versions it requests,
/// per kafka-protocol's generated `messages/*_response.rs`) that checks every array count
/// before the decoder sizes a vector from it.
trait Guarded: Decodable {
    fn walk(w: &mut Walk<'_>, version: i16) -> Result<(), String>;
}

impl Guarded for MetadataResponse {
    /// Metadata v1..=8.
    fn walk(w: &mut Walk<'_>, v: i16) -> Result<(), String> {
        if !(1..=8).contains(&v) {
            return Err(format!("version {v} not walked"));
        }
        let if_v = |since: i16, n: usize| if v >= since { n } else { 0 };
        // throttle_time_ms (v3); brokers: node_id, host, port, rack
        w.skip(if_v(3, 4))?;
        for _ in 0..w.array("brokers", 12)? {
            w.skip(4)?;
            w.string()?;
            w.skip(4)?;
            w.string()?;
        }
        if v >= 2 {
            w.string()?; // cluster_id
        }
        // controller_id; topics: error_code, name, is_internal, partitions,
        // topic_authorized_operations (v8)
        w.skip(4)?;
        for _ in 0..w.array("topics", 9 + if_v(8, 4))? {
            w.skip(2)?;
            w.string()?;
            w.skip(1)?;
            // error_code, partition_index, leader_id, leader_epoch (v7), replica_nodes,
            // isr_nodes, offline_replicas (v5)
            let partition = 18 + if_v(7, 4) + if_v(5, 4);
            for _ in 0..w.array("partitions", partition)? {
                w.skip(10 + if_v(7, 4))?;
                w.fixed_array("replica_nodes", 4)?;
                w.fixed_array("isr_nodes", 4)?;
                if v >= 5 {
                    w.fixed_array("offline_replicas", 4)?;
                }
            }
            w.skip(if_v(8, 4))?;
        }
        w.skip(if_v(8, 4)) // cluster_authorized_operations
    }
}

impl Guarded for ListOffsetsResponse {
    /// ListOffsets v1..=5.
    fn walk(w: &mut Walk<'_>, v: i16) -> Result<(), String> {
        if !(1..=5).contains(&v) {
            return Err(format!("version {v} not walked"));
        }
        if v >= 2 {
            w.skip(4)?; // throttle_time_ms
        }
        // name, partitions
        for _ in 0..w.array("topics", 6)? {
            w.string()?;
            // partition_index, error_code, timestamp, offset, leader_epoch (v4)
            w.fixed_array("partitions", 22 + if v >= 4 { 4 } else { 0 })?;
        }
        Ok(())
    }
}

impl Guarded for FetchResponse {
    /// Fetch v4..=11.
    fn walk(w: &mut Walk<'_>, v: i16) -> Result<(), String> {
        if !(4..=11).contains(&v) {
            return Err(format!("version {v} not walked"));
        }
        let if_v = |since: i16, n: usize| if v >= since { n } else { 0 };
        // throttle_time_ms, error_code and session_id (v7); responses: topic, partitions
        w.skip(4 + if_v(7, 6))?;
        for _ in 0..w.array("responses", 6)? {
            w.string()?;
            // partition_index, error_code, high_watermark, last_stable_offset,
            // log_start_offset (v5), aborted_transactions, preferred_read_replica (v11),
            // records
            let partition = 30 + if_v(5, 8) + if_v(11, 4);
            for _ in 0..w.array("partitions", partition)? {
                w.skip(22 + if_v(5, 8))?;
                // producer_id, first_offset
                w.fixed_array("aborted_transactions", 16)?;
                w.skip(if_v(11, 4))?;
                w.bytes()?; // the record batches, split and bounded by `decode_batch`
            }
        }
        Ok(())
    }
}

/// Decodes the body (after the response header) of a Metadata (API key 3), ListOffsets (2)
/// or Fetch (1) answer of `version` as [`TopicReader`] does, array counts checked first;
/// for the fuzz tests.
#[doc(hidden)]
pub fn decode_response(api_key: i16, version: i16, body: Bytes) -> Result<(), TopicError> {
    match api_key {
        METADATA => decode::<MetadataResponse>(body, version, "Metadata").map(drop),
        LIST_OFFSETS => decode::<ListOffsetsResponse>(body, version, "ListOffsets").map(drop),
        FETCH => decode::<FetchResponse>(body, version, "Fetch").map(drop),
        _ => Err(TopicError::Decode {
            api: "unknown",
            detail: format!("API key {api_key} (only 1, 2, 3 are read)"),
        }),
    }
}

/// Follows the end of one topic: where each partition's next unread record is.
pub struct TopicReader {
    brokers: Vec<Endpoint>,
    security: KafkaSecurity,
    topic: String,
    /// Partition → leader node.
    leaders: BTreeMap<i32, i32>,
    /// Node → address.
    nodes: HashMap<i32, Endpoint>,
    conns: HashMap<i32, Connection>,
    bootstrap: Option<Connection>,
    cursors: BTreeMap<i32, i64>,
}

impl std::fmt::Debug for TopicReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicReader")
            .field("topic", &self.topic)
            .field("cursors", &self.cursors)
            .finish_non_exhaustive()
    }
}

async fn within<T>(
    deadline: Duration,
    f: impl std::future::Future<Output = Result<T, TopicError>>,
) -> Result<T, TopicError> {
    tokio::time::timeout(deadline, f)
        .await
        .unwrap_or(Err(TopicError::Timeout {
            after_ms: deadline.as_millis(),
        }))
}

impl TopicReader {
    /// A reader of `topic` through gravity's `brokers` (at most 64 tried) and security.
    pub fn new(brokers: Vec<Endpoint>, security: KafkaSecurity, topic: String) -> TopicReader {
        TopicReader {
            brokers,
            security,
            topic,
            leaders: BTreeMap::new(),
            nodes: HashMap::new(),
            conns: HashMap::new(),
            bootstrap: None,
            cursors: BTreeMap::new(),
        }
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Whether this reader reads `topic` through `brokers` with `security`.
    pub fn same(&self, brokers: &[Endpoint], security: &KafkaSecurity, topic: &str) -> bool {
        self.brokers == brokers && &self.security == security && self.topic == topic
    }

    /// The next offset to read per partition.
    pub fn cursors(&self) -> &BTreeMap<i32, i64> {
        &self.cursors
    }

    /// Forgets the connections (after an error: the next call reconnects).
    pub fn disconnect(&mut self) {
        self.conns.clear();
        self.bootstrap = None;
    }

    async fn metadata(&mut self, deadline: Duration) -> Result<(), TopicError> {
        let mut last = None;
        if self.bootstrap.is_none() {
            for b in self.brokers.iter().take(64) {
                match connect(b, &self.security, deadline).await {
                    Ok(c) => {
                        self.bootstrap = Some(c);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
        }
        let Some(conn) = self.bootstrap.as_mut() else {
            return Err(last.map(TopicError::Kafka).unwrap_or(TopicError::NoBroker));
        };
        let v = conn.version(METADATA, 1..=8).ok_or(TopicError::Version {
            api: "Metadata",
            ours: "v1..=8",
        })?;
        let req = MetadataRequest::default()
            .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
            )
            .with_name(Some(topic_name(&self.topic)))]))
            .with_allow_auto_topic_creation(false);
        let frame = conn
            .call(METADATA, v, &encode(&req, v, "Metadata")?, MAX_SMALL_FRAME)
            .await?;
        let resp: MetadataResponse = decode(frame, v, "Metadata")?;
        self.nodes = resp
            .brokers
            .iter()
            .take(1024)
            .filter_map(|b| {
                Some((
                    b.node_id.0,
                    Endpoint::new(b.host.as_str().to_string(), u16::try_from(b.port).ok()?),
                ))
            })
            .collect();
        let t = resp
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == self.topic))
            .ok_or(TopicError::Topic {
                topic: self.topic.clone(),
                code: 3,
            })?;
        if t.error_code != 0 {
            return Err(TopicError::Topic {
                topic: self.topic.clone(),
                code: t.error_code,
            });
        }
        self.leaders = t
            .partitions
            .iter()
            .filter(|p| p.partition_index >= 0)
            .map(|p| (p.partition_index, p.leader_id.0))
            .take(MAX_PARTITIONS)
            .collect();
        // Partitions gone from the topic are forgotten.
        let leaders = &self.leaders;
        self.cursors.retain(|p, _| leaders.contains_key(p));
        Ok(())
    }

    async fn leader(
        &mut self,
        node: i32,
        deadline: Duration,
    ) -> Result<&mut Connection, TopicError> {
        if !self.conns.contains_key(&node) {
            let ep = self.nodes.get(&node).cloned().ok_or(TopicError::Topic {
                topic: self.topic.clone(),
                // LEADER_NOT_AVAILABLE
                code: 5,
            })?;
            let c = connect(&ep, &self.security, deadline).await?;
            self.conns.insert(node, c);
        }
        self.conns.get_mut(&node).ok_or(TopicError::NoBroker)
    }

    /// Partitions by leader.
    fn by_leader(&self, only: impl Fn(i32) -> bool) -> BTreeMap<i32, Vec<i32>> {
        let mut m: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
        for (p, n) in &self.leaders {
            if only(*p) {
                m.entry(*n).or_default().push(*p);
            }
        }
        m
    }

    /// Marks the end of the topic: each partition's cursor becomes its latest offset
    /// (`all`), or only those of partitions without a cursor. Metadata is refreshed first.
    pub async fn mark_end(&mut self, all: bool, deadline: Duration) -> Result<(), TopicError> {
        let reused = self.bootstrap.is_some();
        let mut r = within(deadline, self.mark_end_inner(all, deadline)).await;
        if r.is_err() {
            self.disconnect();
            // A kept connection the broker closed meanwhile (connections.max.idle.ms): once
            // more on fresh ones.
            if reused && matches!(r, Err(TopicError::Kafka(WireError::Io(_)))) {
                r = within(deadline, self.mark_end_inner(all, deadline)).await;
                if r.is_err() {
                    self.disconnect();
                }
            }
        }
        r
    }

    async fn mark_end_inner(&mut self, all: bool, deadline: Duration) -> Result<(), TopicError> {
        self.metadata(deadline).await?;
        let cursors = self.cursors.clone();
        for (node, parts) in self.by_leader(|p| all || !cursors.contains_key(&p)) {
            let topic = self.topic.clone();
            let conn = self.leader(node, deadline).await?;
            let v = conn
                .version(LIST_OFFSETS, 1..=5)
                .ok_or(TopicError::Version {
                    api: "ListOffsets",
                    ours: "v1..=5",
                })?;
            let req = ListOffsetsRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
                    .with_name(topic_name(&topic))
                    .with_partitions(
                        parts
                            .iter()
                            .map(|p| {
                                list_offsets_request::ListOffsetsPartition::default()
                                    .with_partition_index(*p)
                                    .with_current_leader_epoch(-1)
                                    .with_timestamp(-1)
                            })
                            .collect(),
                    )]);
            let frame = conn
                .call(
                    LIST_OFFSETS,
                    v,
                    &encode(&req, v, "ListOffsets")?,
                    MAX_SMALL_FRAME,
                )
                .await?;
            let resp: ListOffsetsResponse = decode(frame, v, "ListOffsets")?;
            for t in resp.topics.iter().filter(|t| t.name.0.as_str() == topic) {
                for p in &t.partitions {
                    if p.error_code != 0 {
                        return Err(TopicError::Topic {
                            topic: topic.clone(),
                            code: p.error_code,
                        });
                    }
                    if parts.contains(&p.partition_index) && p.offset >= 0 {
                        self.cursors.insert(p.partition_index, p.offset);
                    }
                }
            }
        }
        Ok(())
    }

    /// Fetches from every partition's cursor (partitions without one are marked at their
    /// end first), calls `f` for each record, and moves the cursors past what was read.
    pub async fn poll(
        &mut self,
        deadline: Duration,
        f: &mut (dyn FnMut(&TopicRecord) + Send),
    ) -> Result<PollStats, TopicError> {
        let reused = !self.conns.is_empty();
        let mut r = within(deadline, self.poll_inner(deadline, &mut *f)).await;
        if r.is_err() {
            self.disconnect();
            // A kept connection the broker closed meanwhile: once more on fresh ones (the
            // cursors only move past what was handed to `f`).
            if reused && matches!(r, Err(TopicError::Kafka(WireError::Io(_)))) {
                r = within(deadline, self.poll_inner(deadline, f)).await;
                if r.is_err() {
                    self.disconnect();
                }
            }
        }
        r
    }

    async fn poll_inner(
        &mut self,
        deadline: Duration,
        f: &mut (dyn FnMut(&TopicRecord) + Send),
    ) -> Result<PollStats, TopicError> {
        if self.leaders.is_empty() || self.leaders.keys().any(|p| !self.cursors.contains_key(p)) {
            self.mark_end_inner(false, deadline).await?;
        }
        let mut stats = PollStats::default();
        let mut reset = Vec::new();
        for (node, parts) in self.by_leader(|_| true) {
            if stats.scanned >= MAX_SCANNED {
                break;
            }
            let topic = self.topic.clone();
            let cursors = self.cursors.clone();
            let conn = self.leader(node, deadline).await?;
            let v = conn.version(FETCH, 4..=11).ok_or(TopicError::Version {
                api: "Fetch",
                ours: "v4..=11",
            })?;
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(FETCH_WAIT_MS)
                .with_min_bytes(1)
                .with_max_bytes(MAX_FETCH_BYTES)
                .with_isolation_level(0)
                .with_session_id(0)
                .with_session_epoch(-1)
                .with_topics(vec![fetch_request::FetchTopic::default()
                    .with_topic(topic_name(&topic))
                    .with_partitions(
                        parts
                            .iter()
                            .map(|p| {
                                fetch_request::FetchPartition::default()
                                    .with_partition(*p)
                                    .with_current_leader_epoch(-1)
                                    .with_fetch_offset(cursors.get(p).copied().unwrap_or(0))
                                    .with_log_start_offset(-1)
                                    .with_partition_max_bytes(PARTITION_MAX_BYTES)
                            })
                            .collect(),
                    )]);
            let frame = conn
                .call(FETCH, v, &encode(&req, v, "Fetch")?, MAX_FRAME_BYTES)
                .await?;
            let resp: FetchResponse = decode(frame, v, "Fetch")?;
            if resp.error_code != 0 {
                return Err(TopicError::Topic {
                    topic,
                    code: resp.error_code,
                });
            }
            for t in resp
                .responses
                .iter()
                .filter(|t| t.topic.0.as_str() == topic)
            {
                for p in &t.partitions {
                    let Some(cursor) = self.cursors.get(&p.partition_index).copied() else {
                        continue;
                    };
                    match p.error_code {
                        0 => {}
                        // OFFSET_OUT_OF_RANGE: the log was truncated or deleted; start again
                        // at the end.
                        1 => {
                            reset.push(p.partition_index);
                            continue;
                        }
                        code => return Err(TopicError::Topic { topic, code }),
                    }
                    let records = p.records.as_deref().unwrap_or_default();
                    let next = scan_partition(
                        p.partition_index,
                        records,
                        cursor,
                        MAX_SCANNED,
                        &mut stats,
                        f,
                    );
                    self.cursors.insert(p.partition_index, next);
                }
            }
        }
        for p in reset {
            self.cursors.remove(&p);
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

    /// A record of a batch starting at `base` (the base sequence -1 of a producer without
    /// idempotence; kafka-protocol puts records in one batch while offset − sequence stays).
    fn record(base: i64, offset: i64, value: &str) -> Record {
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: (offset - base) as i32 - 1,
            timestamp: 1_800_000_000_000 + offset,
            key: None,
            value: Some(Bytes::from(value.to_string())),
            headers: Default::default(),
        }
    }

    /// One batch v2 of `n` records from `base`, with `codec`.
    fn batch(base: i64, n: i64, codec: Compression) -> Vec<u8> {
        let recs: Vec<Record> = (base..base + n)
            .map(|o| record(base, o, &format!("v{o}")))
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode_with_custom_compression(
            &mut buf,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression: codec,
            },
            Some(
                |b: &mut BytesMut, out: &mut BytesMut, c: Compression| -> anyhow::Result<()> {
                    match c {
                        Compression::None => out.extend_from_slice(b),
                        Compression::Snappy => {
                            // xerial framing, as Sarama and the Java client write it
                            out.extend_from_slice(
                                b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01",
                            );
                            let z = snap::raw::Encoder::new().compress_vec(b)?;
                            out.extend_from_slice(&(z.len() as u32).to_be_bytes());
                            out.extend_from_slice(&z);
                        }
                        Compression::Gzip => {
                            use std::io::Write as _;
                            let mut e = flate2::write::GzEncoder::new(
                                Vec::new(),
                                flate2::Compression::fast(),
                            );
                            e.write_all(b)?;
                            out.extend_from_slice(&e.finish()?);
                        }
                        _ => anyhow::bail!("no"),
                    }
                    Ok(())
                },
            ),
        )
        .unwrap();
        buf.to_vec()
    }

    fn scan_all(bytes: &[u8], cursor: i64, budget: usize) -> (Vec<i64>, i64, PollStats) {
        let mut seen = Vec::new();
        let mut stats = PollStats::default();
        let next = scan_partition(2, bytes, cursor, budget, &mut stats, &mut |r| {
            assert_eq!(r.partition, 2);
            assert_eq!(
                r.value.as_deref(),
                Some(format!("v{}", r.offset).as_bytes())
            );
            seen.push(r.offset)
        });
        (seen, next, stats)
    }

    #[test]
    fn batches_of_each_codec_are_read_from_the_cursor() {
        for codec in [Compression::None, Compression::Snappy, Compression::Gzip] {
            let mut bytes = batch(10, 3, codec);
            bytes.extend(batch(13, 2, codec));
            let (seen, next, stats) = scan_all(&bytes, 11, 100);
            assert_eq!(seen, [11, 12, 13, 14], "{codec:?}");
            assert_eq!(next, 15);
            assert_eq!(stats.skipped, 0);
        }
    }

    #[test]
    fn batches_of_the_crates_own_encoder_are_read() {
        // kafka-protocol's own snappy/gzip (the tests turn its codecs on): xerial framing.
        for codec in [Compression::None, Compression::Snappy, Compression::Gzip] {
            let recs: Vec<Record> = (0..3).map(|o| record(0, o, &format!("v{o}"))).collect();
            let mut buf = BytesMut::new();
            RecordBatchEncoder::encode(
                &mut buf,
                &recs,
                &RecordEncodeOptions {
                    version: 2,
                    compression: codec,
                },
            )
            .unwrap();
            assert_eq!(split_batches(&buf).len(), 1, "one batch");
            let (seen, next, stats) = scan_all(&buf, 0, 100);
            assert_eq!(
                (seen, next, stats.skipped),
                (vec![0, 1, 2], 3, 0),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn a_partial_batch_at_the_end_is_left_for_the_next_fetch() {
        let mut bytes = batch(0, 2, Compression::None);
        let second = batch(2, 2, Compression::None);
        bytes.extend_from_slice(&second[..second.len() - 5]);
        let (seen, next, _) = scan_all(&bytes, 0, 100);
        assert_eq!(seen, [0, 1]);
        assert_eq!(next, 2);
        assert_eq!(split_batches(&bytes).len(), 1);
        assert!(split_batches(&bytes[..11]).is_empty());
    }

    #[test]
    fn the_scan_budget_stops_mid_batch_and_goes_on_from_there() {
        let bytes = batch(0, 10, Compression::Snappy);
        let (seen, next, stats) = scan_all(&bytes, 0, 4);
        assert_eq!(seen, [0, 1, 2, 3]);
        assert_eq!((next, stats.scanned), (4, 4));
        let (seen, next, _) = scan_all(&bytes, next, 100);
        assert_eq!(seen, [4, 5, 6, 7, 8, 9]);
        assert_eq!(next, 10);
    }

    #[test]
    fn batches_over_a_bound_are_skipped_not_allocated() {
        // A record count of 2^31-1 in the header (CRC not even looked at).
        let mut huge = batch(0, 1, Compression::None);
        huge[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
        assert_eq!(decode_batch(&huge), Err(BatchError::Records(i32::MAX)));
        let mut neg = batch(0, 1, Compression::None);
        neg[57..61].copy_from_slice(&(-1i32).to_be_bytes());
        assert!(matches!(decode_batch(&neg), Err(BatchError::Records(-1))));
        // lz4 / zstd / unknown codecs
        for c in [3i16, 4, 7] {
            let mut b = batch(0, 1, Compression::None);
            b[21..23].copy_from_slice(&c.to_be_bytes());
            assert_eq!(decode_batch(&b), Err(BatchError::Codec(c)));
        }
        // an old message set (magic 1)
        let mut old = batch(0, 1, Compression::None);
        old[16] = 1;
        assert_eq!(decode_batch(&old), Err(BatchError::Magic(1)));
        // a corrupted byte fails the CRC
        let mut bad = batch(5, 2, Compression::None);
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let (seen, next, stats) = scan_all(&bad, 5, 100);
        assert!(seen.is_empty());
        assert_eq!((next, stats.skipped), (7, 1), "skipped past the bad batch");
        assert!(stats.last_skip.unwrap().contains("undecodable"));
        // snappy that claims more than the bound
        let mut claim = Vec::new();
        let mut n = (MAX_DECOMPRESSED as u64) + 1;
        while n >= 0x80 {
            claim.push((n as u8) | 0x80);
            n >>= 7;
        }
        claim.push(n as u8);
        claim.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decompress(&claim, Compression::Snappy),
            Err(BatchError::Decompress(_))
        ));
        // a gzip bomb stops at the bound
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(&vec![0u8; MAX_DECOMPRESSED + 10]).unwrap();
        let bomb = e.finish().unwrap();
        assert!(matches!(
            decompress(&bomb, Compression::Gzip),
            Err(BatchError::Decompress(_))
        ));
    }

    /// An encoded answer of a version and the offsets (and field names) of its array counts.
    type Built = fn(i16) -> (Vec<u8>, Vec<(usize, &'static str)>);

    /// `b` up to the end of the first `pat` (where the array count after it starts).
    fn after(b: &[u8], pat: &[u8]) -> usize {
        b.windows(pat.len()).position(|w| w == pat).unwrap() + pat.len()
    }

    fn encoded<T: Encodable>(msg: &T, v: i16) -> Vec<u8> {
        let mut b = BytesMut::new();
        msg.encode(&mut b, v).unwrap();
        b.to_vec()
    }

    /// A Metadata answer of version `v` (fields of later versions left at their defaults)
    /// and the offsets of its array counts.
    fn metadata(v: i16) -> (Vec<u8>, Vec<(usize, &'static str)>) {
        use kafka_protocol::messages::metadata_response::*;
        let broker = |n: i32| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(n))
                .with_host(StrBytes::from_static_str("broker.example"))
                .with_port(9092)
                .with_rack(Some(StrBytes::from_static_str("r1")))
        };
        let mut part = MetadataResponsePartition::default()
            .with_partition_index(1)
            .with_leader_id(BrokerId(0x1e1e_1e1e))
            .with_replica_nodes(vec![BrokerId(0x5151_5151), BrokerId(2)])
            .with_isr_nodes(vec![BrokerId(0x5252_5252)]);
        if v >= 7 {
            part = part.with_leader_epoch(0x2f2f_2f2f);
        }
        if v >= 5 {
            part = part.with_offline_replicas(vec![BrokerId(0x5353_5353)]);
        }
        let mut resp = MetadataResponse::default()
            .with_brokers(vec![broker(1), broker(2)])
            .with_controller_id(BrokerId(0x0c0c_0c0c))
            .with_topics(vec![MetadataResponseTopic::default()
                .with_name(Some(topic_name("canary.topic")))
                .with_partitions(vec![part.clone(), part.with_partition_index(0)])]);
        if v >= 2 {
            resp = resp.with_cluster_id(Some(StrBytes::from_static_str("cluster")));
        }
        let b = encoded(&resp, v);
        let leader = if v >= 7 { 0x2f2f_2f2f } else { 0x1e1e_1e1e_i32 };
        let mut counts = vec![
            (if v >= 3 { 4 } else { 0 }, "brokers"),
            (after(&b, &0x0c0c_0c0c_i32.to_be_bytes()), "topics"),
            (after(&b, b"canary.topic") + 1, "partitions"),
            (after(&b, &leader.to_be_bytes()), "replica_nodes"),
            (after(&b, &[0x51; 4]) + 4, "isr_nodes"),
        ];
        if v >= 5 {
            counts.push((after(&b, &[0x52; 4]), "offline_replicas"));
        }
        (b, counts)
    }

    fn list_offsets(v: i16) -> (Vec<u8>, Vec<(usize, &'static str)>) {
        use kafka_protocol::messages::list_offsets_response::*;
        let part = |p: i32| {
            let r = ListOffsetsPartitionResponse::default()
                .with_partition_index(p)
                .with_offset(42);
            if v >= 4 {
                r.with_leader_epoch(3)
            } else {
                r
            }
        };
        let resp =
            ListOffsetsResponse::default().with_topics(vec![ListOffsetsTopicResponse::default()
                .with_name(topic_name("canary.topic"))
                .with_partitions(vec![part(0), part(1)])]);
        let b = encoded(&resp, v);
        let counts = vec![
            (if v >= 2 { 4 } else { 0 }, "topics"),
            (after(&b, b"canary.topic"), "partitions"),
        ];
        (b, counts)
    }

    fn fetch(v: i16) -> (Vec<u8>, Vec<(usize, &'static str)>) {
        use kafka_protocol::messages::fetch_response::*;
        let mut part = PartitionData::default()
            .with_partition_index(0)
            .with_high_watermark(10)
            .with_last_stable_offset(0x3a3a_3a3a_3a3a_3a3a)
            .with_aborted_transactions(Some(vec![AbortedTransaction::default()
                .with_producer_id(kafka_protocol::messages::ProducerId(7))
                .with_first_offset(3)]))
            .with_records(Some(Bytes::from(batch(0, 2, Compression::None))));
        if v >= 5 {
            part = part.with_log_start_offset(0x4c4c_4c4c_4c4c_4c4c);
        }
        if v >= 11 {
            part = part.with_preferred_read_replica(BrokerId(1));
        }
        let mut resp =
            FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                .with_topic(topic_name("canary.topic"))
                .with_partitions(vec![
                    part.clone(),
                    part.with_partition_index(1)
                        .with_aborted_transactions(None)
                        .with_records(None),
                ])]);
        if v >= 7 {
            resp = resp.with_session_id(5);
        }
        let b = encoded(&resp, v);
        let before_aborted: &[u8] = if v >= 5 { &[0x4c; 8] } else { &[0x3a; 8] };
        let counts = vec![
            (if v >= 7 { 10 } else { 4 }, "responses"),
            (after(&b, b"canary.topic"), "partitions"),
            (after(&b, before_aborted), "aborted_transactions"),
        ];
        (b, counts)
    }

    #[test]
    fn valid_answers_are_walked_to_their_end_and_decoded() {
        let cases: [(i16, std::ops::RangeInclusive<i16>, Built); 3] = [
            (METADATA, 1..=8, metadata),
            (LIST_OFFSETS, 1..=5, list_offsets),
            (FETCH, 4..=11, fetch),
        ];
        for (api, versions, build) in cases {
            for v in versions {
                let (b, _) = build(v);
                let mut w = Walk { body: &b, at: 0 };
                let walked = match api {
                    METADATA => MetadataResponse::walk(&mut w, v),
                    LIST_OFFSETS => ListOffsetsResponse::walk(&mut w, v),
                    _ => FetchResponse::walk(&mut w, v),
                };
                assert_eq!(walked, Ok(()), "api {api} v{v}");
                assert_eq!(w.at, b.len(), "api {api} v{v}: walked to the end");
                decode_response(api, v, Bytes::from(b)).unwrap();
            }
        }
        let (b, _) = metadata(8);
        let resp: MetadataResponse = decode(Bytes::from(b), 8, "Metadata").unwrap();
        assert_eq!(resp.brokers.len(), 2);
        assert_eq!(
            resp.topics[0].partitions[1].isr_nodes,
            [BrokerId(0x5252_5252)]
        );
        let (b, _) = fetch(11);
        let resp: FetchResponse = decode(Bytes::from(b), 11, "Fetch").unwrap();
        let p = &resp.responses[0].partitions;
        assert_eq!(p[0].aborted_transactions.as_ref().map(Vec::len), Some(1));
        assert_eq!(split_batches(p[0].records.as_deref().unwrap()).len(), 1);
        assert_eq!(
            (p[1].aborted_transactions.is_none(), p[1].records.is_none()),
            (true, true)
        );
    }

    #[test]
    fn implausible_array_counts_are_refused_before_the_decoder_allocates() {
        let cases: [(i16, &str, [i16; 2], Built); 3] = [
            (METADATA, "Metadata", [1, 8], metadata),
            (LIST_OFFSETS, "ListOffsets", [1, 5], list_offsets),
            (FETCH, "Fetch", [4, 11], fetch),
        ];
        for (api, name, versions, build) in cases {
            for v in versions {
                let (b, counts) = build(v);
                assert!(counts.len() >= 2);
                for (at, field) in counts {
                    let left = b.len() - at - 4;
                    for n in [i32::MAX, left as i32 + 1, -2] {
                        let mut bad = b.clone();
                        bad[at..at + 4].copy_from_slice(&n.to_be_bytes());
                        let e = decode_response(api, v, Bytes::from(bad)).unwrap_err();
                        let TopicError::Decode { api: a, detail } = &e else {
                            panic!("{e:?}");
                        };
                        assert_eq!(*a, name);
                        assert!(
                            detail.contains(&format!("implausible {field} array length {n}")),
                            "{name} v{v} {field} {n}: {detail}"
                        );
                        assert!(e.to_string().starts_with("undecodable "), "{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn any_count_anywhere_and_any_cut_is_an_error_not_an_abort() {
        // 2^31-1 written at every offset of each answer, and every truncation: an error or
        // (where it lands on a plain INT field) a valid answer, never a huge allocation.
        for (api, v, (b, _)) in [
            (METADATA, 1, metadata(1)),
            (METADATA, 8, metadata(8)),
            (LIST_OFFSETS, 5, list_offsets(5)),
            (FETCH, 4, fetch(4)),
            (FETCH, 11, fetch(11)),
        ] {
            for at in 0..b.len().saturating_sub(3) {
                let mut bad = b.clone();
                bad[at..at + 4].copy_from_slice(&i32::MAX.to_be_bytes());
                let _ = decode_response(api, v, Bytes::from(bad));
            }
            for cut in 0..b.len() {
                assert!(decode_response(api, v, Bytes::copy_from_slice(&b[..cut])).is_err());
            }
        }
        assert!(decode_response(0, 0, Bytes::new()).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..200usize {
            let b: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let mut stats = PollStats::default();
            let _ = scan_partition(0, &b, 0, 10, &mut stats, &mut |_| {});
        }
    }
}
