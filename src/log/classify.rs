//! A log [`Record`] → which part of gravity it is about ([`Component`]), what kind of failure
//! it reports ([`ErrorType`]), whether it is a retry, and whether it counts as an error.
//!
//! gravity has no error metric: its errors are log lines and exits. This module turns them into
//! the labels of `gravity_error_total{component,error_type}` and
//! `gravity_retry_total{component,reason}`. Every label value comes from the closed enums
//! below (`as_str()`), so cardinality is bounded by construction: no text from the log ever
//! becomes a label.
//!
//! ## Component
//! Decided from the bracket tag that starts most messages (`[binlogTailer] ...`), else from the
//! Go file name gravity's logrus hook adds, following gravity's source layout. A tag wins over
//! the file (`[statusHandler]` is logged from `main.go`). A record with neither (start-up
//! output before the hook is installed, Go runtime `panic:`/`fatal error:` lines) is `process`.
//!
//! | component | tags (case, `_`, `-` ignored; text before a `.` used) | files (base name) | gravity source |
//! | --- | --- | --- | --- |
//! | `probe` | `*checker*`, `*probe*`, `*heartbeat*` (`[binlog_checker]`) | `checker.go`, `*_checker.go` | `pkg/inputs/helper/binlog_checker`, `mongo*/oplog_checker.go` |
//! | `status_api` | `[statusHandler]`, `[status]`, `[healthz]`, `[reset]` | — | HTTP handlers in `cmd/gravity/main.go` |
//! | `position_store` | `*position*` (`[positionCache]`, `[position_store]`) | `cache.go`, `repo.go`, `*_repo.go`, `position*.go`, `*_position_store.go` | `pkg/position_store`, `pkg/position_cache`, `pkg/position_repos`, `inputs/*/position*.go` |
//! | `scheduler` | `*scheduler*`, `*window*` (`[batchScheduler]`, `[batchScheduler.Healthy]`, `[sliding_window]`) | `batch_table_scheduler.go`, `working_set.go`, `*_scheduler.go`, `*sliding_window.go`, `heap.go`, `sequence.go` | `pkg/schedulers`, `pkg/sliding_window` |
//! | `output` | `output*`, `*output` (`[output-mysql]`, `[output_async_kafka]`), `*esmodel*`, `*elasticsearch*` | `mysql.go`, `async_kafka.go`, `elasticsearch.go`, `esmodel.go`, `stdout.go`, `dump_output.go`, `add_missing_column.go`, `cast_default_data.go`, `restore.go`, `*_router.go`, `*_output.go`, `*_engine.go` | `pkg/outputs`, `pkg/outputs/routers`, `pkg/sql_execution` |
//! | `filter` | `*filter*`, `*emitter*` | `filters.go`, `*_filter.go`, `emitter.go`, `*filter_server.go` | `pkg/filters`, `pkg/emitter` |
//! | `input` | `*tailer*`, `*input*`, `*scanner*`, `*binlog*`, `*oplog*` (`[binlogTailer]`) | `input.go`, `*_input.go`, `*_tailer.go`, `*_scanner.go`, `mysql_common.go`, `kafka_offset_store.go`, go-mysql's `binlogsyncer.go`/`binlogstreamer.go` | `pkg/inputs` |
//! | `process` | `[gravity]`, `[main]`, `[app]`, `[server]` | `main.go`, `server.go`, `printer.go`, `config*.go`, `single_binary.go`, `log.go` | `cmd/gravity`, `pkg/app`, `pkg/config`, `pkg/logutil`, `pkg/utils/printer.go`; also records with no tag and no file |
//! | `other` | anything else | anything else | e.g. `pkg/utils/db.go`, `pkg/schema_store` (shared by input and output) |
//!
//! The retry line `error execute sync output, retry. <cause>` is always `scheduler` (it comes
//! from the batch scheduler's retry loop around the synchronous output, the same place as
//! gravity's `gravity_scheduler_retry_counter`); so is `[batchScheduler] output exec error`, the
//! fatal line logged when those retries run out.
//!
//! ## Error type
//! The first rule that matches the message wins:
//! 1. `[sliding_window] item not ack after N seconds` → `timeout`.
//! 2. A MySQL/TiDB error number (`Error NNNN:`, `Error NNNN (SQLSTATE):`, `ERROR NNNN (...)`),
//!    see [`mysql_error_type`]; unknown numbers are ignored (the text rules decide).
//! 3. Server messages that may lack the number (`Deadlock found`, `Lock wait timeout`,
//!    `Duplicate entry`, `server is busy`, `Too many connections`, `Access denied`,
//!    `doesn't exist`, `Unknown database`, SQL syntax error).
//! 4. Kafka / sarama: `kafka:`, `kafka server:`, `run out of available brokers`,
//!    `Message was too large`, `not leader`, `not the leader`, `sarama` → `kafka`.
//! 5. Network: `connection refused|reset`, `broken pipe`, `invalid connection`,
//!    `bad connection`, `connection was bad`, `no route to host`, `no such host`,
//!    `network is unreachable`, `server has gone away`, `lost connection`,
//!    `use of closed network connection` → `connection`.
//! 6. `i/o timeout`, `deadline exceeded`, `timeout`, `timed out` → `timeout`.
//! 7. `EOF`, `dial tcp`, `getsockopt` (a network failure without a clearer cause) → `connection`.
//! 8. `authentication`, `SASL`, `unauthorized`, `x509:` → `auth`.
//! 9. Only on the first line of the message (the rest is usually a stack trace whose paths
//!    would match anything): `failed to get table def` → `missing_table`; `config`, `toml`,
//!    `flag provided but not defined`, `unknown ... type` → `config`; `ddl` → `ddl`;
//!    `dml` → `dml`.
//! 10. Otherwise: `crash` for `fatal` and `panic` records, `other` for the rest.
//!
//! A `panic` is always `crash`, whatever its text. Causes are looked for only in records that
//! can count (warning and above) or are retries; for other records `error_type` is `other`.
//!
//! Matching is case-sensitive as gravity and its drivers spell things; where both cases occur
//! the first letter is left out of the phrase (`imeout`, `onfig`, `ost connection`), so
//! `Timeout`/`timeout` and `Config`/`config` both match. All phrases are found in one pass over
//! the message (three table lookups per byte, candidates verified in full; the order of the
//! private `PHRASES` table is the precedence above), which keeps classification at a few
//! hundred nanoseconds a line.
//!
//! ## Counts as error
//! `error`, `fatal`, `panic`: always — with one exception: `panic: (*logrus.Entry) 0x...`, the
//! Go runtime's echo of a `log.Panic` record that was already logged (and counted) at level
//! panic. `warning`: only when it carries a cause (a rule above matched) or is a retry line.
//! `info`, `debug`: never. Two warnings are decided explicitly:
//! * `[sliding_window] item not ack after 60 seconds` counts (`scheduler`, `timeout`): the
//!   sliding window's watchdog logs it on its own schedule when an event is stuck.
//! * `[batchScheduler.Healthy] sliding window ... not healthy` does NOT count (`scheduler`,
//!   `other`): gravity logs it only when something polls `/healthz`, so its rate measures the
//!   pollers (the exporter included), not gravity. `gravity_healthz` reports that state.
//!
//! ## Retries
//! * `error execute sync output, retry. <cause>`: the scheduler's retry; reason = cause type.
//! * `[binlogTailer] BinlogSyncerTimeout try to reopen` (info): input, `timeout`.
//! * go-mysql's `begin to re-sync from ...` (one per binlog reconnect attempt): input,
//!   reason from the text, else `connection`; and `receive EOF packet, retry ReadPacket`.
//!   go-mysql's `retry sync err: ...` is the failure of an attempt already counted by its
//!   `begin to re-sync` line, so it is an error (at level error) but not another retry.
//! * Generic wording: `, retry`, `retrying`, `reconnect` → a retry, reason from the text.
//!
//! `is_retry` is independent of `counts_as_error`: an `info` retry line is a retry and not an
//! error; a `warning` retry line is both.

use super::record::{Level, Record};

/// Which part of gravity a record is about. Closed set: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Component {
    /// The source reader: binlog tailer, oplog tailer, table scanner (`pkg/inputs`).
    Input,
    /// Filters and the emitter that runs them (`pkg/filters`, `pkg/emitter`).
    Filter,
    /// The batch table scheduler and its sliding windows (`pkg/schedulers`, `pkg/sliding_window`).
    Scheduler,
    /// The target writer: MySQL, Kafka, Elasticsearch (`pkg/outputs`).
    Output,
    /// Where gravity keeps its position (`pkg/position_store`, `position_cache`, `position_repos`).
    PositionStore,
    /// gravity's heartbeat probe on the source (`binlog_checker`, `oplog_checker`).
    Probe,
    /// gravity's HTTP handlers (`/status`, `/healthz`, `/reset`).
    StatusApi,
    /// The process as a whole: start-up, config, signals, Go runtime panics.
    Process,
    /// Not attributable to one of the above.
    Other,
}

impl Component {
    /// Every component, in label order (for pre-registering series).
    pub const ALL: [Component; 9] = [
        Component::Input,
        Component::Filter,
        Component::Scheduler,
        Component::Output,
        Component::PositionStore,
        Component::Probe,
        Component::StatusApi,
        Component::Process,
        Component::Other,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Input => "input",
            Component::Filter => "filter",
            Component::Scheduler => "scheduler",
            Component::Output => "output",
            Component::PositionStore => "position_store",
            Component::Probe => "probe",
            Component::StatusApi => "status_api",
            Component::Process => "process",
            Component::Other => "other",
        }
    }
}

/// The kind of failure a record reports. Closed set: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorType {
    /// Connection refused / reset / lost / invalid, DNS failure, EOF.
    Connection,
    /// I/O timeout, deadline exceeded, a stuck sliding-window item.
    Timeout,
    /// Access denied, authentication failure.
    Auth,
    /// SQL syntax / unsupported or failed DDL (1064, 1050, 1054, ...).
    Ddl,
    /// Data errors on DML (1366, 1264, 1406, ...).
    Dml,
    /// Duplicate key (1062).
    DuplicateKey,
    /// Deadlock (1213).
    Deadlock,
    /// Lock wait timeout (1205).
    LockWait,
    /// Missing table or database (1146, 1049).
    MissingTable,
    /// Server busy / overloaded (TiKV 9003, too many connections 1040).
    ServerBusy,
    /// Kafka client / broker errors.
    Kafka,
    /// Configuration problems.
    Config,
    /// A fatal exit without a known cause, or a panic.
    Crash,
    /// Anything else (never dropped).
    Other,
}

impl ErrorType {
    /// Every error type, in label order (for pre-registering series).
    pub const ALL: [ErrorType; 14] = [
        ErrorType::Connection,
        ErrorType::Timeout,
        ErrorType::Auth,
        ErrorType::Ddl,
        ErrorType::Dml,
        ErrorType::DuplicateKey,
        ErrorType::Deadlock,
        ErrorType::LockWait,
        ErrorType::MissingTable,
        ErrorType::ServerBusy,
        ErrorType::Kafka,
        ErrorType::Config,
        ErrorType::Crash,
        ErrorType::Other,
    ];

    /// The label value (snake_case).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Connection => "connection",
            ErrorType::Timeout => "timeout",
            ErrorType::Auth => "auth",
            ErrorType::Ddl => "ddl",
            ErrorType::Dml => "dml",
            ErrorType::DuplicateKey => "duplicate_key",
            ErrorType::Deadlock => "deadlock",
            ErrorType::LockWait => "lock_wait",
            ErrorType::MissingTable => "missing_table",
            ErrorType::ServerBusy => "server_busy",
            ErrorType::Kafka => "kafka",
            ErrorType::Config => "config",
            ErrorType::Crash => "crash",
            ErrorType::Other => "other",
        }
    }
}

/// The verdict on one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Classification {
    /// Which part of gravity the record is about.
    pub component: Component,
    /// The cause (for retries: the retry's reason).
    pub error_type: ErrorType,
    /// The record reports a retry attempt.
    pub is_retry: bool,
    /// The record counts towards `gravity_error_total`.
    pub counts_as_error: bool,
}

/// Classifies one record. Pure, allocation-free, and total: every record gets an answer.
pub fn classify(rec: &Record<'_>) -> Classification {
    let msg: &str = &rec.msg;
    let tag = leading_tag(msg);
    let mut component = tag
        .and_then(component_from_tag)
        .or_else(|| rec.file.and_then(component_from_file))
        .unwrap_or(if tag.is_none() && rec.file.is_none() {
            Component::Process
        } else {
            Component::Other
        });

    let level = rec.level;
    if level == Level::Panic {
        let echo = msg.starts_with("(*logrus.Entry)");
        return Classification {
            component,
            error_type: ErrorType::Crash,
            is_retry: false,
            counts_as_error: !echo,
        };
    }

    if level <= Level::Info && !may_be_retry(msg.as_bytes()) {
        return Classification {
            component,
            error_type: ErrorType::Other,
            is_retry: false,
            counts_as_error: false,
        };
    }
    let hits = scan(msg.as_bytes());
    let (is_retry, cause) = if let Some(end) = hits.sync_retry_end {
        // `error execute sync output, retry. <cause>`: the cause is what follows the marker.
        component = Component::Scheduler;
        let cause = if end == SYNC_OUTPUT_RETRY.len() {
            hits.cause() // the marker starts the message: every cause hit lies after it
        } else {
            scan(msg.as_bytes().get(end..).unwrap_or_default()).cause()
        };
        (true, cause)
    } else if let Some(default_reason) = hits.retry_default() {
        (true, hits.cause().or(default_reason))
    } else {
        (
            false,
            if level >= Level::Warning {
                hits.cause()
            } else {
                None
            },
        )
    };

    let counts_as_error = match level {
        Level::Debug | Level::Info => false,
        Level::Warning => {
            (cause.is_some() || is_retry)
                && !(hits.has(R_HEALTH) || msg.starts_with("[batchScheduler.Healthy]"))
        }
        // gravity logs this at error level whenever something calls /status before its first
        // position is stored: the exporter's own polling would count as gravity errors, and
        // the condition itself is reported as gravity_position_stored 0.
        Level::Error if is_no_position_yet(msg) => false,
        Level::Error | Level::Fatal | Level::Panic => true,
    };
    let error_type = match cause {
        Some(t) => t,
        None if level == Level::Fatal => ErrorType::Crash,
        None => ErrorType::Other,
    };
    Classification {
        component,
        error_type,
        is_retry,
        counts_as_error,
    }
}

/// `[statusHandler] failed to get positionRepoModel, exist: false, err: <nil>`: no position stored yet.
fn is_no_position_yet(msg: &str) -> bool {
    msg.starts_with("[statusHandler] failed to get positionRepoModel, exist: false")
}

/// The MySQL/TiDB error numbers this module knows, and their type. Unknown numbers → `None`.
pub fn mysql_error_type(code: u32) -> Option<ErrorType> {
    use ErrorType::*;
    Some(match code {
        // Access denied (user, db, table, column, privilege), auth plugin problems.
        1044 | 1045 | 1142 | 1143 | 1227 | 1251 | 1370 | 1698 | 1820 | 2049 => Auth,
        // Duplicate key.
        1022 | 1062 | 1586 => DuplicateKey,
        // Syntax error, unsupported / conflicting DDL, TiDB "unsupported DDL" (8200).
        1050 | 1051 | 1054 | 1060 | 1061 | 1064 | 1067 | 1068 | 1091 | 1101 | 1846 | 8200 => Ddl,
        // Missing table / database.
        1049 | 1146 => MissingTable,
        1205 => LockWait,
        1213 => Deadlock,
        // TiKV write conflict: a lock conflict gravity retries like a lock wait.
        9007 => LockWait,
        // Overloaded server: too many connections, out of memory, TiKV busy, region unavailable.
        1040 | 1041 | 1203 | 9003 | 9005 => ServerBusy,
        // Timeouts: net read/write timeout, max_execution_time, PD / TiKV server timeout.
        1159 | 1161 | 3024 | 9001 | 9002 => Timeout,
        // Connection: shutdown, aborted, net errors, client-side "can't connect / gone away / lost".
        1053 | 1152 | 1153 | 1156 | 1157 | 1158 | 1160 | 2002 | 2003 | 2005 | 2006 | 2013
        | 2055 => Connection,
        // Data errors on DML: bad value, out of range, too long, truncated, NULL, FK, no default.
        1048 | 1136 | 1264 | 1265 | 1292 | 1364 | 1366 | 1406 | 1451 | 1452 => Dml,
        _ => return None,
    })
}

/// The bracket tag at the start of a message: `[binlogTailer] ...` → `binlogTailer`.
fn leading_tag(msg: &str) -> Option<&str> {
    let rest = msg.strip_prefix('[')?;
    let end = rest.as_bytes().iter().take(48).position(|&c| c == b']')?;
    let tag = rest.get(..end)?;
    let ok = !tag.is_empty()
        && tag
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.' | b' '));
    ok.then_some(tag)
}

fn component_from_tag(tag: &str) -> Option<Component> {
    let head = tag.split('.').next().unwrap_or(tag);
    // gravity's own tags, spelled as in its source: decided without normalising.
    match head {
        "binlogTailer" | "binlog_tailer" => return Some(Component::Input),
        "batchScheduler" | "sliding_window" => return Some(Component::Scheduler),
        "output-mysql" | "output_async_kafka" => return Some(Component::Output),
        "binlog_checker" => return Some(Component::Probe),
        "statusHandler" => return Some(Component::StatusApi),
        "gravity" => return Some(Component::Process),
        _ => {}
    }
    // Anything else: lower case, without '_', '-' and ' ', matched by substring.
    let mut buf = [0u8; 48];
    let mut n = 0;
    for c in head.bytes() {
        if matches!(c, b'_' | b'-' | b' ') {
            continue;
        }
        // `leading_tag` caps tags at 48 bytes, so `n` stays in bounds; `get_mut` anyway.
        *buf.get_mut(n)? = c.to_ascii_lowercase();
        n += 1;
    }
    let t = std::str::from_utf8(buf.get(..n)?).ok()?;
    let has = |p: &str| t.contains(p);
    Some(if has("checker") || has("probe") || has("heartbeat") {
        Component::Probe
    } else if has("statushandler")
        || matches!(
            t,
            "status" | "healthz" | "healthzhandler" | "reset" | "resethandler"
        )
    {
        Component::StatusApi
    } else if has("position") {
        Component::PositionStore
    } else if has("scheduler") || has("window") {
        Component::Scheduler
    } else if t.starts_with("output")
        || t.ends_with("output")
        || has("esmodel")
        || has("elasticsearch")
    {
        Component::Output
    } else if has("filter") || has("emitter") {
        Component::Filter
    } else if has("tailer") || has("input") || has("scanner") || has("binlog") || has("oplog") {
        Component::Input
    } else if matches!(t, "gravity" | "main" | "app" | "server") {
        Component::Process
    } else {
        return None;
    })
}

fn component_from_file(file: &str) -> Option<Component> {
    let base = match file.as_bytes().iter().rposition(|&c| c == b'/') {
        Some(i) => file.get(i + 1..).unwrap_or(file),
        None => file,
    };
    let f = base.strip_suffix(".go")?;
    let ends = |s: &str| f.ends_with(s);
    Some(match f {
        "checker" | "heartbeat" => Component::Probe,
        _ if ends("_checker") => Component::Probe,
        "main" | "server" | "printer" | "config" | "config_v2" | "config_v3" | "single_binary"
        | "log" => Component::Process,
        "batch_table_scheduler"
        | "working_set"
        | "scheduler"
        | "schedulers"
        | "heap"
        | "sequence" => Component::Scheduler,
        _ if ends("_scheduler") || ends("sliding_window") => Component::Scheduler,
        "mysql" | "async_kafka" | "elasticsearch" | "esmodel" | "stdout" | "dump_output"
        | "output" | "outputs" | "add_missing_column" | "cast_default_data" | "restore" => {
            Component::Output
        }
        _ if ends("_router") || ends("_output") || ends("_engine") => Component::Output,
        "filters" | "filter" | "emitter" => Component::Filter,
        _ if ends("_filter") || ends("filter_server") => Component::Filter,
        "cache"
        | "repo"
        | "position"
        | "position_value"
        | "position_store"
        | "position_repos"
        | "position_cache_creator" => Component::PositionStore,
        _ if ends("_repo") || ends("_position_store") => Component::PositionStore,
        "input" | "inputs" | "mysql_common" | "kafka_offset_store" | "binlogsyncer"
        | "binlogstreamer" => Component::Input,
        _ if ends("_input") || ends("_tailer") || ends("_scanner") => Component::Input,
        _ => return None,
    })
}

/// What a phrase means when it is found.
#[derive(Clone, Copy)]
enum Kind {
    /// A cause anywhere in the message.
    Cause(ErrorType),
    /// A cause, but only on the first line of the message.
    FirstLine(ErrorType),
    /// `Error ` / `ERROR `: a cause if a known MySQL error number follows.
    MySqlNumber,
    /// `unknown `: a config cause if ` type` follows on the first line.
    UnknownType,
    /// A retry (or health-poll) marker: bit number in [`Hits::markers`].
    Marker(u8),
}

const R_SYNC: u8 = 0;
const R_SYNC_ERR: u8 = 1;
const R_REOPEN: u8 = 2;
const R_RESYNC: u8 = 3;
const R_READ_PACKET: u8 = 4;
const R_GENERIC: u8 = 5;
const R_HEALTH: u8 = 6;

const SYNC_OUTPUT_RETRY: &str = "error execute sync output, retry.";

/// Every phrase, in precedence order for causes (the lowest index found wins). Phrases are
/// case-sensitive; a leading letter is dropped where both cases occur (`imeout` matches
/// `timeout` and `BinlogSyncerTimeout`). At most 64 phrases of at least 3 bytes.
const PHRASES: &[(&str, Kind)] = &[
    // 1. A stuck sliding-window item.
    ("item not ack after", Kind::Cause(ErrorType::Timeout)),
    // 2. MySQL / TiDB error numbers.
    ("Error ", Kind::MySqlNumber),
    ("ERROR ", Kind::MySqlNumber),
    // 3. Server messages that may come without their number.
    ("Deadlock found", Kind::Cause(ErrorType::Deadlock)),
    ("Lock wait timeout", Kind::Cause(ErrorType::LockWait)),
    ("Duplicate entry", Kind::Cause(ErrorType::DuplicateKey)),
    ("server is busy", Kind::Cause(ErrorType::ServerBusy)),
    ("Too many connections", Kind::Cause(ErrorType::ServerBusy)),
    ("Access denied", Kind::Cause(ErrorType::Auth)),
    ("doesn't exist", Kind::Cause(ErrorType::MissingTable)),
    ("Unknown database", Kind::Cause(ErrorType::MissingTable)),
    ("error in your SQL syntax", Kind::Cause(ErrorType::Ddl)),
    // 4. Kafka (sarama).
    ("kafka:", Kind::Cause(ErrorType::Kafka)),
    ("kafka server:", Kind::Cause(ErrorType::Kafka)),
    (
        "run out of available brokers",
        Kind::Cause(ErrorType::Kafka),
    ),
    ("Message was too large", Kind::Cause(ErrorType::Kafka)),
    ("not leader", Kind::Cause(ErrorType::Kafka)),
    ("not the leader", Kind::Cause(ErrorType::Kafka)),
    ("sarama", Kind::Cause(ErrorType::Kafka)),
    // 5. Network failures with a clear name.
    ("connection refused", Kind::Cause(ErrorType::Connection)),
    ("connection reset", Kind::Cause(ErrorType::Connection)),
    ("broken pipe", Kind::Cause(ErrorType::Connection)),
    ("invalid connection", Kind::Cause(ErrorType::Connection)),
    ("bad connection", Kind::Cause(ErrorType::Connection)),
    ("connection was bad", Kind::Cause(ErrorType::Connection)),
    ("no route to host", Kind::Cause(ErrorType::Connection)),
    ("no such host", Kind::Cause(ErrorType::Connection)),
    ("network is unreachable", Kind::Cause(ErrorType::Connection)),
    ("server has gone away", Kind::Cause(ErrorType::Connection)),
    ("ost connection", Kind::Cause(ErrorType::Connection)),
    (
        "use of closed network connection",
        Kind::Cause(ErrorType::Connection),
    ),
    // 6. Timeouts.
    ("i/o timeout", Kind::Cause(ErrorType::Timeout)),
    ("deadline exceeded", Kind::Cause(ErrorType::Timeout)),
    ("imeout", Kind::Cause(ErrorType::Timeout)),
    ("timed out", Kind::Cause(ErrorType::Timeout)),
    // 7. Network failures without a clearer cause.
    ("EOF", Kind::Cause(ErrorType::Connection)),
    ("dial tcp", Kind::Cause(ErrorType::Connection)),
    ("getsockopt", Kind::Cause(ErrorType::Connection)),
    // 8. Authentication.
    ("uthentication", Kind::Cause(ErrorType::Auth)),
    ("SASL", Kind::Cause(ErrorType::Auth)),
    ("sasl", Kind::Cause(ErrorType::Auth)),
    ("nauthorized", Kind::Cause(ErrorType::Auth)),
    ("x509:", Kind::Cause(ErrorType::Auth)),
    // 9. First line only.
    (
        "failed to get table def",
        Kind::FirstLine(ErrorType::MissingTable),
    ),
    ("onfig", Kind::FirstLine(ErrorType::Config)),
    ("toml", Kind::FirstLine(ErrorType::Config)),
    (
        "flag provided but not defined",
        Kind::FirstLine(ErrorType::Config),
    ),
    ("unknown ", Kind::UnknownType),
    ("ddl", Kind::FirstLine(ErrorType::Ddl)),
    ("DDL", Kind::FirstLine(ErrorType::Ddl)),
    ("dml", Kind::FirstLine(ErrorType::Dml)),
    ("DML", Kind::FirstLine(ErrorType::Dml)),
    // Retry and health-poll markers (no cause of their own).
    (SYNC_OUTPUT_RETRY, Kind::Marker(R_SYNC)),
    ("retry sync err", Kind::Marker(R_SYNC_ERR)),
    ("try to reopen", Kind::Marker(R_REOPEN)),
    ("begin to re-sync from", Kind::Marker(R_RESYNC)),
    ("retry ReadPacket", Kind::Marker(R_READ_PACKET)),
    (", retry", Kind::Marker(R_GENERIC)),
    ("retrying", Kind::Marker(R_GENERIC)),
    ("reconnect", Kind::Marker(R_GENERIC)),
    (" not healthy, watermark", Kind::Marker(R_HEALTH)),
];

/// For each byte value, the set of phrases (bit = index in `PHRASES`) having that byte at
/// position 0, 1 and 2. ANDing the sets of three consecutive bytes of the message gives the
/// phrases that may start there: one pass, one table row per byte, and the (rare) candidates
/// are verified in full.
struct Tables {
    rows: [[u64; 3]; 256],
    /// Second filter, applied to candidates only: phrases whose 4th / 5th byte is this byte
    /// (phrases that short are in every entry).
    fourth: [u64; 256],
    fifth: [u64; 256],
}

const fn build_tables() -> Tables {
    assert!(PHRASES.len() <= 64, "the candidate sets are u64 bit masks");
    let mut rows = [[0u64; 3]; 256];
    let mut fourth = [0u64; 256];
    let mut fifth = [0u64; 256];
    let mut i = 0;
    while i < PHRASES.len() {
        let p = PHRASES[i].0.as_bytes();
        assert!(p.len() >= 3, "phrases need at least three bytes");
        let bit = 1u64 << i;
        let mut k = 0;
        while k < 3 {
            rows[p[k] as usize][k] |= bit;
            k += 1;
        }
        let mut c = 0;
        while c < 256 {
            if p.len() <= 3 || p[3] as usize == c {
                fourth[c] |= bit;
            }
            if p.len() <= 4 || p[4] as usize == c {
                fifth[c] |= bit;
            }
            c += 1;
        }
        i += 1;
    }
    Tables {
        rows,
        fourth,
        fifth,
    }
}

/// Phrases of at most `n` bytes (they need no `n+1`-th byte).
const fn short_phrases(n: usize) -> u64 {
    let mut m = 0u64;
    let mut i = 0;
    while i < PHRASES.len() {
        if PHRASES[i].0.len() <= n {
            m |= 1 << i;
        }
        i += 1;
    }
    m
}

static TABLES: Tables = build_tables();

/// What one pass over a message found.
#[derive(Clone, Copy, Default)]
struct Hits {
    /// The cause with the lowest precedence index, and that index.
    best: Option<(usize, ErrorType)>,
    /// Bit set of `R_*` markers found.
    markers: u8,
    /// End of the first `error execute sync output, retry.` marker.
    sync_retry_end: Option<usize>,
}

impl Hits {
    fn has(&self, marker: u8) -> bool {
        self.markers & (1 << marker) != 0
    }

    /// `Some(default reason)` when a retry marker other than the scheduler's was found.
    fn retry_default(&self) -> Option<Option<ErrorType>> {
        if self.has(R_SYNC_ERR) {
            None // the failure of an attempt already counted by its "begin to re-sync" line
        } else if self.has(R_REOPEN) {
            Some(Some(ErrorType::Timeout))
        } else if self.has(R_RESYNC) || self.has(R_READ_PACKET) {
            Some(Some(ErrorType::Connection))
        } else if self.has(R_GENERIC) {
            Some(None)
        } else {
            None
        }
    }

    fn offer(&mut self, index: usize, t: ErrorType) {
        let better = match self.best {
            None => true,
            Some((best, _)) => index < best,
        };
        if better {
            self.best = Some((index, t));
        }
    }

    /// The cause found first in precedence order.
    fn cause(&self) -> Option<ErrorType> {
        self.best.map(|(_, t)| t)
    }
}

/// One pass over the message: every cause phrase, MySQL error number and retry marker.
fn scan(msg: &[u8]) -> Hits {
    let mut hits = Hits::default();
    let rows = &TABLES.rows;
    // Rolling window: `pair` = phrases whose first two bytes match the previous two bytes,
    // `first` = phrases whose first byte matches the previous byte. Two bytes per round.
    let (mut pair, mut first) = (0u64, 0u64);
    let mut chunks = msg.chunks_exact(2);
    let mut i = 0usize;
    for c in &mut chunks {
        let (r0, r1) = (&rows[usize::from(c[0])], &rows[usize::from(c[1])]);
        let c0 = pair & r0[2];
        let c1 = first & r0[1] & r1[2];
        pair = r0[0] & r1[1];
        first = r1[0];
        if (c0 | c1) != 0 {
            // A phrase ending its third byte at `i` starts at `i - 2` (never below 0: the
            // window is empty for the first two bytes).
            candidates(msg, i.wrapping_sub(2), c0, &mut hits);
            candidates(msg, i.wrapping_sub(1), c1, &mut hits);
        }
        i += 2;
    }
    if let [x] = chunks.remainder() {
        let c0 = pair & rows[usize::from(*x)][2];
        candidates(msg, i.wrapping_sub(2), c0, &mut hits);
    }
    hits
}

#[inline]
fn candidates(msg: &[u8], start: usize, mut cand: u64, hits: &mut Hits) {
    if cand == 0 {
        return;
    }
    // Most candidates are ruled out by their 4th or 5th byte, without a call.
    const UP_TO_3: u64 = short_phrases(3);
    const UP_TO_4: u64 = short_phrases(4);
    cand &= match msg.get(start.wrapping_add(3)) {
        Some(&x) => TABLES.fourth[usize::from(x)],
        None => UP_TO_3,
    };
    cand &= match msg.get(start.wrapping_add(4)) {
        Some(&x) => TABLES.fifth[usize::from(x)],
        None => UP_TO_4,
    };
    while cand != 0 {
        let index = cand.trailing_zeros() as usize;
        cand &= cand - 1;
        verify(msg, start, index, hits);
    }
}

/// Cheap pre-check for records that can only be retries (info, debug): every retry wording
/// contains `re`. Eight bytes at a time: bytes equal to `r` whose next byte is `e`.
fn may_be_retry(msg: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    // 0x80 in each byte of `v` that is zero, exactly (no false positives).
    fn zero_bytes(v: u64) -> u64 {
        !(((v & LOW7).wrapping_add(LOW7)) | v | LOW7)
    }
    let mut i = 0;
    // Windows of 8 bytes advancing by 7, so that a pair across two windows is not missed.
    while let Some(w) = msg.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(w);
        let v = u64::from_le_bytes(word);
        let r = zero_bytes(v ^ (LO * u64::from(b'r')));
        let e = zero_bytes(v ^ (LO * u64::from(b'e')));
        if r & (e >> 8) != 0 {
            return true;
        }
        i += 7;
    }
    msg.get(i..)
        .unwrap_or_default()
        .windows(2)
        .any(|w| w == b"re")
}

#[cold]
#[inline(never)]
fn verify(msg: &[u8], i: usize, index: usize, hits: &mut Hits) {
    let Some(&(phrase, kind)) = PHRASES.get(index) else {
        return;
    };
    let p = phrase.as_bytes();
    let end = i + p.len();
    let Some(m) = msg.get(i..end) else {
        return;
    };
    // Most false candidates differ within the first eight bytes: compare those as integers.
    if let (Some(a), Some(b)) = (m.get(..8), p.get(..8)) {
        let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
        x.copy_from_slice(a);
        y.copy_from_slice(b);
        if x != y {
            return;
        }
    }
    if m != p {
        return;
    }
    let first_line = || !msg.get(..i).unwrap_or_default().contains(&b'\n');
    match kind {
        Kind::Cause(t) => hits.offer(index, t),
        Kind::FirstLine(t) => {
            if first_line() {
                hits.offer(index, t);
            }
        }
        Kind::MySqlNumber => {
            if let Some(t) =
                mysql_number_at(msg.get(end..).unwrap_or_default()).and_then(mysql_error_type)
            {
                hits.offer(index, t);
            }
        }
        Kind::UnknownType => {
            let rest = msg.get(end..).unwrap_or_default();
            let line = rest.split(|&c| c == b'\n').next().unwrap_or_default();
            if first_line() && line.windows(5).any(|w| w == b" type") {
                hits.offer(index, ErrorType::Config);
            }
        }
        Kind::Marker(m) => {
            hits.markers |= 1 << m;
            if m == R_SYNC && hits.sync_retry_end.is_none() {
                hits.sync_retry_end = Some(end);
            }
        }
    }
}

/// `NNNN:` or `NNNN (` (1 to 5 digits) at the start of `rest` → the number.
fn mysql_number_at(rest: &[u8]) -> Option<u32> {
    let digits = rest
        .iter()
        .take(6)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=5).contains(&digits) {
        return None;
    }
    let after = rest.get(digits..).unwrap_or_default();
    if !(after.starts_with(b":") || after.starts_with(b" (")) {
        return None;
    }
    rest.get(..digits)?.iter().try_fold(0u32, |n, &c| {
        n.checked_mul(10)?.checked_add(u32::from(c - b'0'))
    })
}

/// The cause named by a message, if any (rules 1–9 of the module doc).
#[cfg(test)]
fn detect_cause(msg: &str) -> Option<ErrorType> {
    scan(msg.as_bytes()).cause()
}

#[cfg(test)]
mod tests {
    use super::super::record::{parse_line, LogFormat};
    use super::*;
    use std::borrow::Cow;
    use Component as C;
    use ErrorType as E;

    const JSON_LOG: &str = include_str!("../../tests/fixtures/gravity.log");
    const TEXT_LOG: &str = include_str!("../../tests/fixtures/gravity-text.log");
    const CONSOLE_LOG: &str = include_str!("../../tests/fixtures/gravity-console.log");

    type Expect = (Level, Component, ErrorType, bool, bool);
    use Level::{Error as Err_, Fatal, Info, Warning as Warn};

    fn check(log: &str, format: LogFormat, expected: &[Expect]) {
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(
            lines.len(),
            expected.len(),
            "{format:?}: one expectation per line"
        );
        for (n, (line, exp)) in lines.iter().zip(expected).enumerate() {
            let rec = parse_line(line, format).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
            let c = classify(&rec);
            let got = (
                rec.level,
                c.component,
                c.error_type,
                c.is_retry,
                c.counts_as_error,
            );
            assert_eq!(got, *exp, "{format:?} line {}: {}", n + 1, rec.msg);
        }
    }

    #[test]
    fn every_json_fixture_line() {
        // (level, component, error_type, is_retry, counts_as_error)
        let expected: [Expect; 28] = [
            (Info, C::Process, E::Other, false, false), // xxhash backend (no file: start-up)
            (Info, C::Process, E::Other, false, false), // Welcome (printer.go)
            (Info, C::Scheduler, E::Other, false, false), // [batchScheduler] config dump (NrRetries)
            (Info, C::Input, E::Other, false, false),     // [binlogTailer] start from position
            (Warn, C::Probe, E::Connection, false, true), // [binlog_checker] failed probe: refused
            (Warn, C::Scheduler, E::Deadlock, true, true), // retry. Error 1213
            (Warn, C::Scheduler, E::LockWait, true, true), // retry. Error 1205
            (Warn, C::Scheduler, E::Connection, true, true), // retry. invalid connection
            (Warn, C::Scheduler, E::Timeout, true, true), // retry. dial tcp: i/o timeout
            (Warn, C::Scheduler, E::DuplicateKey, true, true), // retry. Error 1062
            (Warn, C::Scheduler, E::ServerBusy, true, true), // retry. Error 9003
            (Fatal, C::Scheduler, E::ServerBusy, false, true), // output exec error: 9003
            (Warn, C::Scheduler, E::Timeout, false, true), // item not ack after 60 s
            (Warn, C::Scheduler, E::Other, false, false), // Healthy: not healthy (poll-driven)
            (Err_, C::StatusApi, E::Other, false, false), // [statusHandler] no position yet: our own /status polling
            (Warn, C::Input, E::MissingTable, false, true), // failed to get table def
            (Warn, C::Output, E::Other, false, false),    // large msg size (no cause)
            (Err_, C::Output, E::Kafka, false, true),     // run out of available brokers
            (Err_, C::Probe, E::Other, false, true),      // BinlogChecker type conversion error
            (Fatal, C::Output, E::Ddl, false, true),      // error exec ddl: Error 1064
            (Info, C::Process, E::Other, false, false),   // xxhash backend
            (Info, C::Process, E::Other, false, false),   // Welcome
            (Fatal, C::Input, E::Connection, false, true), // flush position cache: refused
            (Info, C::Process, E::Other, false, false),   // config file event
            (Info, C::Process, E::Other, false, false),   // config file updated, quit...
            (Info, C::Process, E::Other, false, false),   // [gravity] stop with signal
            (Warn, C::Scheduler, E::Timeout, false, true), // item not ack (Chinese table)
            (Err_, C::Scheduler, E::MissingTable, false, true), // Error 1146
        ];
        check(JSON_LOG, LogFormat::Json, &expected);
    }

    #[test]
    fn every_text_fixture_line() {
        check(
            TEXT_LOG,
            LogFormat::Text,
            &[
                (Info, C::Process, E::Other, false, false),
                (Warn, C::Scheduler, E::Deadlock, true, true),
                (Warn, C::Scheduler, E::Connection, true, true),
                (Err_, C::StatusApi, E::Other, false, false), // no position yet
                (Fatal, C::Output, E::Ddl, false, true),
            ],
        );
    }

    #[test]
    fn every_console_fixture_line() {
        check(
            CONSOLE_LOG,
            LogFormat::Console,
            &[
                (Info, C::Process, E::Other, false, false),
                (Warn, C::Scheduler, E::Deadlock, true, true),
                (Err_, C::Output, E::Kafka, false, true),
                (Fatal, C::Input, E::Connection, false, true),
            ],
        );
    }

    fn rec(level: Level, file: Option<&'static str>, msg: &'static str) -> Record<'static> {
        Record {
            level,
            time: None,
            file,
            line: None,
            msg: Cow::Borrowed(msg),
            pipeline: None,
        }
    }

    fn cls(level: Level, file: Option<&'static str>, msg: &'static str) -> Classification {
        classify(&rec(level, file, msg))
    }

    #[test]
    fn mysql_numbers() {
        for (msg, t) in [
            ("Error 1045: Access denied for user 'u'@'h'", E::Auth),
            ("ERROR 1045 (28000): Access denied", E::Auth),
            ("Error 1142 (42000): INSERT command denied", E::Auth),
            (
                "Error 1062 (23000): Duplicate entry '1' for key 'PRIMARY'",
                E::DuplicateKey,
            ),
            ("Error 1064: You have an error in your SQL syntax", E::Ddl),
            ("Error 1146: Table 'a.b' doesn't exist", E::MissingTable),
            ("Error 1049: Unknown database 'x'", E::MissingTable),
            ("Error 1205: Lock wait timeout exceeded", E::LockWait),
            ("Error 1213: Deadlock found", E::Deadlock),
            ("Error 9003: TiKV server is busy", E::ServerBusy),
            ("Error 1040: Too many connections", E::ServerBusy),
            ("Error 2006: MySQL server has gone away", E::Connection),
            (
                "Error 2013: Lost connection to MySQL server during query",
                E::Connection,
            ),
            ("Error 1366: Incorrect string value", E::Dml),
            ("Error 1406: Data too long for column 'c'", E::Dml),
            ("Error 1054: Unknown column 'c' in 'field list'", E::Ddl),
            (
                "Error 1091: Can't DROP 'k'; check that column/key exists",
                E::Ddl,
            ),
            // Unknown number: the text decides; nothing in the text → other.
            ("Error 1105: unknown error", E::Other),
            (
                "Error 1236: could not find first log file; dial tcp x: EOF",
                E::Connection,
            ),
            // Not an error number.
            ("Error 12345678: x", E::Other),
            ("Errors 1062: x", E::Other),
        ] {
            assert_eq!(cls(Err_, None, msg).error_type, t, "{msg}");
        }
        assert_eq!(
            detect_cause("a Error 42 b Error 1105: x Error 1213: c"),
            Some(E::Deadlock)
        );
        assert_eq!(mysql_error_type(1), None);
    }

    #[test]
    fn text_causes_and_precedence() {
        for (msg, t) in [
            (
                "dial tcp 10.0.0.1:3306: connect: connection refused",
                E::Connection,
            ),
            (
                "read tcp 1.2.3.4:5->6.7.8.9:3306: read: connection reset by peer",
                E::Connection,
            ),
            ("write: broken pipe", E::Connection),
            ("[mysql] packets.go:36: unexpected EOF", E::Connection),
            ("driver: bad connection", E::Connection),
            ("dial tcp: lookup db.example: no such host", E::Connection),
            ("dial tcp 10.0.0.1:3306: i/o timeout", E::Timeout),
            ("context deadline exceeded", E::Timeout),
            (
                "kafka: client has run out of available brokers to talk to",
                E::Kafka,
            ),
            (
                "kafka server: Message was too large, server rejected it",
                E::Kafka,
            ),
            ("kafka: dial tcp b:9092: i/o timeout", E::Kafka),
            ("failed to parse toml: line 3", E::Config),
            ("invalid output config", E::Config),
            ("unknown input plugin type mysqlx", E::Config),
            (
                "Error 1146: Table 'a.b' doesn't exist; dial tcp: i/o timeout",
                E::MissingTable,
            ),
            ("Deadlock found when trying to get lock", E::Deadlock),
            ("x509: certificate signed by unknown authority", E::Auth),
            ("error exec ddl: alter table t drop x", E::Ddl),
            (
                "wrapped\n/gravity/pkg/config/config.go:12: something",
                E::Other,
            ),
            ("just words", E::Other),
        ] {
            assert_eq!(cls(Err_, None, msg).error_type, t, "{msg}");
        }
    }

    #[test]
    fn levels_and_counting() {
        // info never counts, even with a cause; error always counts, even without one.
        let c = cls(Info, Some("mysql.go"), "dial tcp: connection refused");
        assert_eq!((c.counts_as_error, c.error_type), (false, E::Other));
        let c = cls(Level::Debug, Some("mysql.go"), "Error 1062: dup");
        assert!(!c.counts_as_error);
        let c = cls(Err_, Some("mysql.go"), "something odd");
        assert_eq!(
            (c.counts_as_error, c.error_type, c.component),
            (true, E::Other, C::Output)
        );
        // warning: only with a cause.
        assert!(!cls(Warn, Some("mysql.go"), "something odd").counts_as_error);
        assert!(cls(Warn, Some("mysql.go"), "x: i/o timeout").counts_as_error);
        // fatal without cause → crash; panic → crash whatever the text.
        assert_eq!(cls(Fatal, None, "boom").error_type, E::Crash);
        let c = cls(Level::Panic, None, "dial tcp: connection refused");
        assert_eq!(
            (c.error_type, c.component, c.counts_as_error),
            (E::Crash, C::Process, true)
        );
        // The Go runtime's echo of a logrus panic record was already counted.
        let c = cls(Level::Panic, None, "(*logrus.Entry) 0xc0000f6000");
        assert!(!c.counts_as_error);
    }

    #[test]
    fn go_runtime_lines_are_process_crashes() {
        for line in [
            "panic: runtime error: index out of range [3] with length 3",
            "fatal error: concurrent map writes",
        ] {
            let r = parse_line(line, LogFormat::Json).unwrap();
            let c = classify(&r);
            assert_eq!(
                (c.component, c.error_type, c.counts_as_error, c.is_retry),
                (C::Process, E::Crash, true, false),
                "{line}"
            );
        }
    }

    #[test]
    fn retries() {
        let c = cls(
            Info,
            Some("binlog_tailer.go"),
            "[binlogTailer] BinlogSyncerTimeout try to reopen",
        );
        assert_eq!(
            (c.component, c.error_type, c.is_retry, c.counts_as_error),
            (C::Input, E::Timeout, true, false)
        );
        let c = cls(
            Info,
            Some("binlogsyncer.go"),
            "begin to re-sync from (mysql.000003, 2492)",
        );
        assert_eq!(
            (c.component, c.error_type, c.is_retry),
            (C::Input, E::Connection, true)
        );
        let c = cls(
            Info,
            Some("binlogsyncer.go"),
            "receive EOF packet, retry ReadPacket",
        );
        assert_eq!((c.error_type, c.is_retry), (E::Connection, true));
        let c = cls(
            Err_,
            Some("binlogsyncer.go"),
            "retry sync err: dial tcp [::1]:3306: getsockopt: connection refused, wait 1s and retry again",
        );
        assert_eq!(
            (c.component, c.error_type, c.is_retry, c.counts_as_error),
            (C::Input, E::Connection, false, true)
        );
        // The scheduler retry without a recognisable cause: still a counted retry, reason other.
        let c = cls(Warn, None, "error execute sync output, retry. weird");
        assert_eq!(
            (c.component, c.error_type, c.is_retry, c.counts_as_error),
            (C::Scheduler, E::Other, true, true)
        );
        let c = cls(
            Warn,
            Some("async_kafka.go"),
            "[output_async_kafka] retrying send: kafka: x",
        );
        assert_eq!(
            (c.component, c.error_type, c.is_retry),
            (C::Output, E::Kafka, true)
        );
        // Words that merely look like retries.
        assert!(!cls(Info, None, "retrySyncGTIDs done").is_retry);
        assert!(!cls(Info, None, "[batchScheduler] &{NrRetries:3 RetrySleep:1s}").is_retry);
    }

    #[test]
    fn components() {
        for (tag_or_file, msg, c) in [
            (None, "[binlogTailer] x", C::Input),
            (None, "[binlog_tailer] x", C::Input),
            (None, "[binlog_checker] x", C::Probe),
            (None, "[batchScheduler.SubmitMsg] x", C::Scheduler),
            (None, "[sliding_window] x", C::Scheduler),
            (None, "[output-mysql] x", C::Output),
            (None, "[output_async_kafka] x", C::Output),
            (None, "[statusHandler] x", C::StatusApi),
            (None, "[reset] failed to clear position", C::StatusApi),
            (None, "[positionCache] x", C::PositionStore),
            (None, "[gravity] stop", C::Process),
            (None, "[unknownThing] x", C::Other),
            (Some("binlog_tailer.go"), "x", C::Input),
            (Some("mysql_table_scanner.go"), "x", C::Input),
            (Some("checker.go"), "x", C::Probe),
            (Some("oplog_checker.go"), "x", C::Probe),
            (Some("batch_table_scheduler.go"), "x", C::Scheduler),
            (Some("static_sliding_window.go"), "x", C::Scheduler),
            (Some("mysql.go"), "x", C::Output),
            (Some("async_kafka.go"), "x", C::Output),
            (Some("esmodel_router.go"), "x", C::Output),
            (Some("reject_filter.go"), "x", C::Filter),
            (Some("emitter.go"), "x", C::Filter),
            (Some("mysql_repo.go"), "x", C::PositionStore),
            (Some("cache.go"), "x", C::PositionStore),
            (Some("main.go"), "x", C::Process),
            (Some("server.go"), "x", C::Process),
            (Some("db.go"), "x", C::Other),
            (Some("binlog_tailer.go"), "[statusHandler] x", C::StatusApi),
            (Some("binlog_tailer.go"), "[1 2 3] x", C::Input),
            (None, "no tag, no file", C::Process),
        ] {
            assert_eq!(
                cls(Err_, tag_or_file, msg).component,
                c,
                "{tag_or_file:?} {msg}"
            );
        }
    }

    #[test]
    fn label_values_are_snake_case_and_unique() {
        let comps: Vec<&str> = Component::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            comps,
            [
                "input",
                "filter",
                "scheduler",
                "output",
                "position_store",
                "probe",
                "status_api",
                "process",
                "other"
            ]
        );
        let types: Vec<&str> = ErrorType::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "connection",
                "timeout",
                "auth",
                "ddl",
                "dml",
                "duplicate_key",
                "deadlock",
                "lock_wait",
                "missing_table",
                "server_busy",
                "kafka",
                "config",
                "crash",
                "other"
            ]
        );
    }

    /// The matcher's reference: each phrase in precedence order, found with `str::match_indices`.
    fn naive_cause(msg: &str) -> Option<ErrorType> {
        let nl = msg.find('\n').unwrap_or(msg.len());
        for &(p, kind) in PHRASES {
            for (pos, _) in msg.match_indices(p) {
                let rest = &msg[pos + p.len()..];
                let found = match kind {
                    Kind::Cause(t) => Some(t),
                    Kind::FirstLine(t) => (pos < nl).then_some(t),
                    Kind::MySqlNumber => {
                        mysql_number_at(rest.as_bytes()).and_then(mysql_error_type)
                    }
                    Kind::UnknownType => (pos < nl
                        && rest.split('\n').next().unwrap_or("").contains(" type"))
                    .then_some(E::Config),
                    Kind::Marker(_) => None,
                };
                if found.is_some() {
                    return found;
                }
            }
        }
        None
    }

    fn naive_markers(msg: &str) -> u8 {
        PHRASES
            .iter()
            .filter_map(|&(p, kind)| match kind {
                Kind::Marker(m) if msg.contains(p) => Some(1u8 << m),
                _ => None,
            })
            .fold(0, |a, b| a | b)
    }

    #[test]
    fn matcher_agrees_with_reference_on_fixtures_and_edges() {
        let mut msgs: Vec<String> = JSON_LOG
            .lines()
            .chain(TEXT_LOG.lines())
            .map(|l| parse_line(l, LogFormat::Json).map_or(l.to_owned(), |r| r.msg.into_owned()))
            .collect();
        for p in PHRASES {
            msgs.push(p.0.to_owned());
            msgs.push(format!("x{}", p.0));
            msgs.push(format!("{}1: x", p.0));
            msgs.push(p.0[..p.0.len() - 1].to_owned());
        }
        for m in &msgs {
            let hits = scan(m.as_bytes());
            assert_eq!(hits.cause(), naive_cause(m), "{m:?}");
            assert_eq!(hits.markers, naive_markers(m), "{m:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn classify_is_total(msg in "(?s).{0,200}", file in proptest::option::of("[a-z_]{0,12}\\.go")) {
            for level in [Level::Debug, Info, Warn, Err_, Fatal, Level::Panic] {
                let r = Record { level, time: None, file: file.as_deref(), line: None, msg: Cow::Borrowed(&msg), pipeline: None };
                let c = classify(&r);
                proptest::prop_assert!(Component::ALL.contains(&c.component));
                proptest::prop_assert!(ErrorType::ALL.contains(&c.error_type));
                if level >= Err_ && !msg.starts_with("(*logrus.Entry)") {
                    proptest::prop_assert!(c.counts_as_error);
                }
                if level <= Info {
                    proptest::prop_assert!(!c.counts_as_error);
                }
            }
        }

        #[test]
        fn matcher_agrees_with_reference(parts in proptest::collection::vec(proptest::sample::select(vec![
            "Error ", "ERROR ", "1062", "1213: ", "9003 (", "123456:", "4242:", ": ", " ", "\n", "connection ",
            "refused", "reset", "con", "timeout", "Timeout", "i/o ", "EOF", "kafka", ":", "dial tcp",
            "unknown ", "type", " type", "config", "ddl", "DML", "x509:", "item not ack after", "not ",
            "leader", "the ", "é", "中", "retry", ", retry", "retrying", "re-sync", "begin to re-sync from",
            "Deadlock found", "Lock wait timeout", "sasl", "SASL", "ost connection", "err", "e", "r", "a",
            "error execute sync output, retry.", "retry sync err", " not healthy, watermark",
        ]), 0..16)) {
            let msg = parts.concat();
            let hits = scan(msg.as_bytes());
            proptest::prop_assert_eq!(hits.cause(), naive_cause(&msg), "{:?}", msg);
            proptest::prop_assert_eq!(hits.markers, naive_markers(&msg), "{:?}", msg);
        }
    }
}
