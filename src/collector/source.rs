//! Truth from the MySQL source: how far gravity's binlog position is behind the source's,
//! how much binlog is left before a purge overtakes gravity, the source's retention, and
//! whether gravity has stopped moving while the source goes on.
//!
//! The collector logs in to the source with gravity's own credentials, or the monitoring
//! login of `--source.username` (which need `REPLICATION CLIENT`, called `BINLOG MONITOR`
//! on MariaDB 10.5 and later; gravity needs it itself to read the binlog), on the
//! connection it shares with the connection probe ([`Context::mysql`]), kept open between
//! collections. A missing grant is published as `gravity_source_privilege_missing`.
//! Each collection runs `SHOW MASTER STATUS` (then `SHOW BINARY LOGS`, so the list holds the
//! current file even when the server rotates in between) and reads the retention from
//! `@@binlog_expire_logs_seconds` (MariaDB 10.6+, MySQL 8), else `@@expire_logs_days`×86400.
//!
//! gravity's position comes from its `/status`, as last read by the status collector
//! ([`Context::last_status`], at most one collection interval old): the current position
//! of a binlog stream, or the start position of a full dump (streaming resumes there, so
//! it must stay retained until the dump ends). From the ordered binlog list:
//!
//! * files behind = index(source's current file) − index(gravity's file);
//! * bytes behind = the rest of gravity's file after its offset, every file in between,
//!   and the source's current offset;
//! * purge headroom = the files before gravity's file (each can be purged without harm)
//!   and their bytes plus gravity's offset. 0 files means the next purge breaks the
//!   pipeline; when gravity's file is already gone (older than the oldest retained one)
//!   both headroom figures read −1 and a warning is logged once: gravity will fail with
//!   "master has purged binary logs" (gravity issue 140) when it next reconnects.
//!
//! The stall signal ([`StallTracker`]) is 1 when the source's position moved away from
//! where it was when gravity's position last changed, and gravity's has not changed for
//! the stall window since (gravity's heartbeat writes to the source every second, so an
//! idle source still moves). `--probe.interval=0s` turns this collector off with the probes.
#![warn(clippy::arithmetic_side_effects)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{BoxFuture, CollectError, Collector, Context};
use crate::base::lock;
use crate::gravity_config::{EndpointRole, Protocol};
use crate::metrics::Families;
use crate::probe::mysql::{MySqlConn, MySqlError, ResultSet, SharedConn};

/// Default stall window.
pub const STALL_WINDOW: Duration = Duration::from_secs(60);
/// Most binlog files read from `SHOW BINARY LOGS`.
pub const MAX_BINLOGS: usize = 100_000;
/// MySQL error: access denied, you need (at least one of) the ... privilege(s).
const ER_SPECIFIC_ACCESS_DENIED: u16 = 1227;
/// MySQL error: you are not using binary logging.
const ER_NO_BINARY_LOGGING: u16 = 1381;
/// Most distinct warn-once keys remembered.
const MAX_WARNED: usize = 256;

/// One retained binlog file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinlogFile {
    /// `Log_name`.
    pub name: String,
    /// `File_size` in bytes.
    pub size: u64,
}

/// A binlog position: file name and offset.
pub type Pos = (String, u64);

/// What the source says.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceView {
    /// Retained binlogs, oldest first (`SHOW BINARY LOGS` order).
    pub files: Vec<BinlogFile>,
    /// The source's current position (`SHOW MASTER STATUS`).
    pub current: Pos,
    /// Binlog retention in seconds (0: no automatic purge), if known.
    pub retention_seconds: Option<f64>,
}

/// Parses `SHOW BINARY LOGS` (`Log_name`, `File_size`, ...).
pub fn parse_binary_logs(rs: &ResultSet) -> Result<Vec<BinlogFile>, String> {
    let (Some(ni), Some(si)) = (rs.column_index("Log_name"), rs.column_index("File_size")) else {
        return Err(format!("SHOW BINARY LOGS columns {:?}", rs.columns));
    };
    rs.rows
        .iter()
        .take(MAX_BINLOGS)
        .map(|r| {
            let name = r.get(ni).and_then(|v| v.as_deref()).unwrap_or("");
            let size = r.get(si).and_then(|v| v.as_deref()).unwrap_or("");
            match (name, size.parse::<u64>()) {
                ("", _) | (_, Err(_)) => {
                    Err("SHOW BINARY LOGS row without name or size".to_string())
                }
                (n, Ok(s)) => Ok(BinlogFile {
                    name: n.to_string(),
                    size: s,
                }),
            }
        })
        .collect()
}

/// Parses `SHOW MASTER STATUS` (`File`, `Position`); `None` when binary logging is off.
pub fn parse_master_status(rs: &ResultSet) -> Result<Option<Pos>, String> {
    if rs.rows.is_empty() {
        return Ok(None);
    }
    match (
        rs.value(0, "File"),
        rs.value(0, "Position").map(str::parse::<u64>),
    ) {
        (Some(f), Some(Ok(p))) if !f.is_empty() => Ok(Some((f.to_string(), p))),
        _ => Err(format!("SHOW MASTER STATUS columns {:?}", rs.columns)),
    }
}

/// The effective retention: `binlog_expire_logs_seconds` when set (non-zero), else
/// `expire_logs_days` × 86400, else 0 if one of them reads 0; `None` if neither is known.
pub fn retention_seconds(expire_seconds: Option<&str>, expire_days: Option<&str>) -> Option<f64> {
    let secs = expire_seconds.and_then(|v| v.trim().parse::<f64>().ok());
    let days = expire_days.and_then(|v| v.trim().parse::<f64>().ok());
    match (secs, days) {
        (Some(s), _) if s > 0.0 => Some(s),
        (_, Some(d)) if d > 0.0 => Some(d * 86400.0),
        (Some(s), _) => Some(s),
        (None, Some(d)) => Some(d),
        (None, None) => None,
    }
}

/// `mysql-bin.000042` → (`mysql-bin`, 42).
fn split_name(name: &str) -> Option<(&str, u64)> {
    let (base, num) = name.rsplit_once('.')?;
    Some((base, num.parse().ok()?))
}

/// Where gravity's file is in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// At this index.
    Listed(usize),
    /// Older than the oldest retained file: purged.
    Purged,
    /// Not comparable (another base name, or newer than the newest file).
    Unknown,
}

/// Finds gravity's binlog file in the source's list.
pub fn locate(files: &[BinlogFile], name: &str) -> Place {
    if let Some(i) = files.iter().position(|f| f.name == name) {
        return Place::Listed(i);
    }
    match (
        split_name(name),
        files.first().and_then(|f| split_name(&f.name)),
    ) {
        (Some((b, n)), Some((ob, on))) if b == ob && n < on => Place::Purged,
        _ => Place::Unknown,
    }
}

/// gravity's position against the source's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Comparison {
    /// Binlog files between gravity's file and the source's current one (if known).
    pub files_behind: Option<i64>,
    /// Bytes between gravity's position and the source's (unknown once purged).
    pub bytes_behind: Option<u64>,
    /// Retained files before gravity's file; −1 when gravity's file is purged.
    pub headroom_files: i64,
    /// Bytes from the start of the oldest retained file to gravity's position; −1 when purged.
    pub headroom_bytes: i64,
}

/// Compares gravity's position with the source's (pure). `Err` carries why they cannot be compared.
pub fn compare(view: &SourceView, gravity: &Pos) -> Result<Comparison, Place> {
    let files = &view.files;
    let (m, master_pos) = match files.iter().position(|f| f.name == view.current.0) {
        Some(m) => (m, view.current.1),
        None => match files.len().checked_sub(1) {
            Some(last) => (last, files.get(last).map(|f| f.size).unwrap_or(0)),
            None => return Err(Place::Unknown),
        },
    };
    match locate(files, &gravity.0) {
        Place::Listed(g) if g <= m => {
            let size = |i: usize| files.get(i).map(|f| f.size).unwrap_or(0);
            let bytes_behind = if g == m {
                master_pos.saturating_sub(gravity.1)
            } else {
                // sizes come from the server: saturating, never overflowing
                let middle = (g.saturating_add(1)..m)
                    .map(size)
                    .fold(0u64, u64::saturating_add);
                size(g)
                    .saturating_sub(gravity.1)
                    .saturating_add(middle)
                    .saturating_add(master_pos)
            };
            let before = (0..g).map(size).fold(0u64, u64::saturating_add);
            let offset = if g == m {
                gravity.1
            } else {
                gravity.1.min(size(g))
            };
            Ok(Comparison {
                files_behind: Some(i64::try_from(m.saturating_sub(g)).unwrap_or(i64::MAX)),
                bytes_behind: Some(bytes_behind),
                headroom_files: g as i64,
                headroom_bytes: i64::try_from(before.saturating_add(offset)).unwrap_or(i64::MAX),
            })
        }
        Place::Listed(_) => Err(Place::Unknown),
        Place::Purged => {
            let files_behind = match (split_name(&view.current.0), split_name(&gravity.0)) {
                (Some((_, cur)), Some((_, g))) if cur >= g => {
                    i64::try_from(cur.saturating_sub(g)).ok()
                }
                _ => None,
            };
            Ok(Comparison {
                files_behind,
                bytes_behind: None,
                headroom_files: -1,
                headroom_bytes: -1,
            })
        }
        Place::Unknown => Err(Place::Unknown),
    }
}

/// Builds the families (pure).
pub fn source_families(
    view: &SourceView,
    cmp: Option<&Comparison>,
    stalled: Option<bool>,
    pipeline: &str,
) -> Families {
    let p = [("pipeline", pipeline)];
    let mut f = Families::new();
    if let Some(r) = view.retention_seconds {
        f.gauge(
            "gravity_source_binlog_retention_seconds",
            "The source's binlog retention (binlog_expire_logs_seconds, else expire_logs_days×86400); 0 means no automatic purge.",
            &p,
            r,
        );
    }
    if let Some((_, idx)) = split_name(&view.current.0) {
        f.gauge(
            "gravity_source_binlog_file_index",
            "Numeric suffix of the source's current binlog file (SHOW MASTER STATUS).",
            &p,
            idx as f64,
        );
    }
    f.gauge(
        "gravity_source_binlog_offset_bytes",
        "Offset in the source's current binlog file (SHOW MASTER STATUS).",
        &p,
        view.current.1 as f64,
    );
    if let Some(c) = cmp {
        if let Some(n) = c.files_behind {
            f.gauge(
                "gravity_source_binlog_files_behind",
                "Binlog files between gravity's position and the source's current one.",
                &p,
                n as f64,
            );
        }
        if let Some(b) = c.bytes_behind {
            f.gauge(
                "gravity_source_binlog_bytes_behind",
                "Binlog bytes between gravity's position and the source's current position.",
                &p,
                b as f64,
            );
        }
        f.gauge(
            "gravity_source_binlog_purge_headroom_files",
            "Retained binlog files older than gravity's file: 0 means the next purge breaks the pipeline, -1 that gravity's file is already purged (gravity issue 140).",
            &p,
            c.headroom_files as f64,
        );
        f.gauge(
            "gravity_source_binlog_purge_headroom_bytes",
            "Binlog bytes from the start of the oldest retained file to gravity's position; -1 when gravity's file is already purged.",
            &p,
            c.headroom_bytes as f64,
        );
    }
    if let Some(s) = stalled {
        f.gauge(
            "gravity_source_position_stalled",
            "1 when the source's binlog position moved while gravity's did not, for the whole stall window.",
            &p,
            if s { 1.0 } else { 0.0 },
        );
    }
    f
}

/// Detects the source's position moving while gravity's does not.
#[derive(Debug)]
pub struct StallTracker {
    window: Duration,
    last: Option<Seen>,
}

#[derive(Debug)]
struct Seen {
    gravity: Pos,
    source_then: Pos,
    source_moved_at: Option<Instant>,
}

impl StallTracker {
    /// A tracker with this stall window.
    pub fn new(window: Duration) -> StallTracker {
        StallTracker { window, last: None }
    }

    /// Feeds one observation; returns whether the position is stalled. `behind` says
    /// whether gravity is behind the source at all.
    pub fn observe(&mut self, now: Instant, source: &Pos, gravity: &Pos, behind: bool) -> bool {
        match &mut self.last {
            Some(s) if s.gravity == *gravity => {
                if s.source_moved_at.is_none() && s.source_then != *source {
                    s.source_moved_at = Some(now);
                }
                behind
                    && s.source_moved_at
                        .is_some_and(|t| now.saturating_duration_since(t) >= self.window)
            }
            _ => {
                self.last = Some(Seen {
                    gravity: gravity.clone(),
                    source_then: source.clone(),
                    source_moved_at: None,
                });
                false
            }
        }
    }
}

/// The collector. Its connection is the one shared with the connection probe
/// ([`Context::mysql`]): one login per (endpoint, user) for both, kept between collections,
/// logged in again once when the server dropped it (`wait_timeout`), and after a failed
/// login not tried again before the next probe interval.
pub struct SourceCollector {
    shared: Mutex<Option<Arc<SharedConn>>>,
    stall: Mutex<StallTracker>,
    warned: Mutex<HashSet<String>>,
}

impl Default for SourceCollector {
    fn default() -> Self {
        Self::new(STALL_WINDOW)
    }
}

impl SourceCollector {
    /// A collector with this stall window.
    pub fn new(stall_window: Duration) -> SourceCollector {
        SourceCollector {
            shared: Mutex::new(None),
            stall: Mutex::new(StallTracker::new(stall_window)),
            warned: Mutex::new(HashSet::new()),
        }
    }

    /// True the first time `key` is seen (for warn-once logging).
    fn first(&self, key: String) -> bool {
        let mut w = lock(&self.warned);
        if w.len() >= MAX_WARNED {
            w.clear();
        }
        w.insert(key)
    }

    fn forget(&self, prefix: &str) {
        lock(&self.warned).retain(|k| !k.starts_with(prefix));
    }

    fn map_err(&self, address: &str, e: MySqlError) -> CollectError {
        match e.server_code() {
            Some(ER_SPECIFIC_ACCESS_DENIED) => {
                if self.first(format!("grant:{address}")) {
                    tracing::warn!(endpoint = %address, error = %e, "the source user lacks REPLICATION CLIENT (BINLOG MONITOR on MariaDB 10.5+): binlog headroom and lag cannot be read");
                }
                CollectError::Unavailable(format!("source {address}: {e}"))
            }
            Some(ER_NO_BINARY_LOGGING) => {
                CollectError::Invalid(format!("source {address}: binary logging is off"))
            }
            _ => CollectError::Unavailable(format!("source {address}: {e}")),
        }
    }
}

/// The privilege that lets a user read the binlog list on this server: `BINLOG MONITOR` on
/// MariaDB 10.5 and later, `REPLICATION CLIENT` elsewhere. `version` as
/// [`MySqlConn::server_version`] gives it (`MariaDB 10.11.6`).
pub fn binlog_privilege(version: &str) -> &'static str {
    let Some(v) = version.strip_prefix("MariaDB ") else {
        return "REPLICATION CLIENT";
    };
    let mut parts = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    if (major, minor) >= (10, 5) {
        "BINLOG MONITOR"
    } else {
        "REPLICATION CLIENT"
    }
}

/// The grant the exporter's Mongo login needs for the oplog window: the `read` role on the
/// `local` database (where `oplog.rs` lives).
pub const MONGO_OPLOG_PRIVILEGE: &str = "read on local";

/// Whether a failed oplog read is the missing `read` role on `local`: `Unauthorized` (13)
/// after a successful login ("not authorized on local …"), not a failed login or a command
/// run without one ("… requires authentication").
fn lacks_local_read(e: &crate::probe::WireError) -> bool {
    matches!(e, crate::probe::WireError::Command { code: 13, message, .. } if message.contains("not authorized"))
}

/// Adds `gravity_source_privilege_missing{privilege}`.
pub fn privilege_family(f: &mut Families, pipeline: &str, privilege: &str, missing: bool) {
    f.gauge(
        "gravity_source_privilege_missing",
        "1 when the user the exporter logs in to gravity's source with lacks the privilege (MySQL: REPLICATION CLIENT, BINLOG MONITOR on MariaDB 10.5+: binlog lag and purge headroom cannot be read; MongoDB: read on local: the oplog window cannot be read); 0 when it has it.",
        &[("pipeline", pipeline), ("privilege", privilege)],
        if missing { 1.0 } else { 0.0 },
    );
}

/// Gives the next query what is left of the shared `deadline` (at least a millisecond).
fn remaining(conn: &mut MySqlConn, deadline: Instant) -> &mut MySqlConn {
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    conn.set_timeout(left);
    conn
}

/// Reads the source's binlog view; every query shares one `deadline`.
async fn read_view(
    conn: &mut MySqlConn,
    deadline: Instant,
) -> Result<Result<SourceView, String>, MySqlError> {
    let status = match remaining(conn, deadline).query("SHOW MASTER STATUS").await {
        Ok(rs) => rs,
        // MySQL 8.4 renamed it
        Err(e) if e.server_code() == Some(1064) => {
            remaining(conn, deadline)
                .query("SHOW BINARY LOG STATUS")
                .await?
        }
        Err(e) => return Err(e),
    };
    let current = match parse_master_status(&status) {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(MySqlError::Server {
                code: ER_NO_BINARY_LOGGING,
                sql_state: "HY000".into(),
                message: "binary logging is off".into(),
            })
        }
        Err(e) => return Ok(Err(e)),
    };
    let logs = remaining(conn, deadline).query("SHOW BINARY LOGS").await?;
    let files = match parse_binary_logs(&logs) {
        Ok(f) => f,
        Err(e) => return Ok(Err(e)),
    };
    let var = |rs: Result<ResultSet, MySqlError>| -> Result<Option<String>, MySqlError> {
        match rs {
            Ok(rs) => Ok(rs.rows.first().and_then(|r| r.first().cloned()).flatten()),
            // unknown system variable on this version
            Err(MySqlError::Server { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    };
    let secs = var(remaining(conn, deadline)
        .query("SELECT @@binlog_expire_logs_seconds")
        .await)?;
    let days = var(remaining(conn, deadline)
        .query("SELECT @@expire_logs_days")
        .await)?;
    Ok(Ok(SourceView {
        files,
        current,
        retention_seconds: retention_seconds(secs.as_deref(), days.as_deref()),
    }))
}

impl SourceCollector {
    /// A Mongo source: its oplog window and gravity's headroom in it ([`super::oplog`]).
    async fn collect_mongo(
        &self,
        ctx: &Context,
        src: &crate::gravity_config::Endpoint,
        pipeline: &str,
    ) -> Result<Families, CollectError> {
        let s = ctx.settings();
        let address = src.address();
        let bounds = match super::oplog::read_bounds(src, s.probe_timeout).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                if self.first(format!("nooplog:{address}")) {
                    tracing::warn!(endpoint = %address, "gravity's Mongo source has no oplog (local.oplog.rs is empty or missing: not a replica set member?): the oplog window cannot be read");
                }
                ctx.state.oplog.set(None);
                return Ok(Families::new());
            }
            Err(e) if lacks_local_read(&e) => {
                // A finding, not a failure (the login worked, the grant is missing):
                // published for the status page, `check` and the alerts, like MySQL's.
                if self.first(format!("oplog-grant:{address}")) {
                    tracing::warn!(endpoint = %address, error = %e, "gravity's Mongo user cannot read local.oplog.rs (needs the read role on local): the oplog window cannot be read");
                }
                ctx.state.oplog.set(None);
                let mut f = Families::new();
                privilege_family(&mut f, pipeline, MONGO_OPLOG_PRIVILEGE, true);
                ctx.state.source.set(Some(crate::state::SourceAccess {
                    privileges: vec![(MONGO_OPLOG_PRIVILEGE.to_string(), true)],
                }));
                return Ok(f);
            }
            Err(e) => return Err(CollectError::Unavailable(format!("source {address}: {e}"))),
        };
        self.forget(&format!("nooplog:{address}"));
        self.forget(&format!("oplog-grant:{address}"));
        ctx.state.source.set(Some(crate::state::SourceAccess {
            privileges: vec![(MONGO_OPLOG_PRIVILEGE.to_string(), false)],
        }));
        let max_age = ctx
            .cadence()
            .saturating_mul(3)
            .saturating_add(s.gravity_timeout)
            .max(Duration::from_secs(15));
        let gravity = ctx
            .last_status()
            .filter(|st| st.at.elapsed() <= max_age)
            .and_then(|st| super::oplog::gravity_position(&st));
        let w = super::oplog::window(bounds, gravity);
        if w.position_lost() {
            if self.first(format!("oplog-lost:{address}")) {
                tracing::warn!(
                    endpoint = %address,
                    gravity_position = w.gravity.unwrap_or(0),
                    oldest = w.oldest,
                    "gravity's Mongo position is older than the oldest oplog entry: gravity cannot resume from it; the pipeline must be re-initialised"
                );
            }
        } else {
            self.forget("oplog-lost:");
        }
        ctx.state.oplog.set(Some(w));
        // rendered from the typed value just published
        let mut f = super::oplog::oplog_families(&w, pipeline);
        privilege_family(&mut f, pipeline, MONGO_OPLOG_PRIVILEGE, false);
        Ok(f)
    }
}

impl Collector for SourceCollector {
    fn name(&self) -> &'static str {
        "source"
    }

    /// A login (`probe.timeout`) plus the queries (one `probe.timeout` shared by all of
    /// them) plus a second: the runner never cuts a query off, which would break the kept
    /// connection and force a new login every cycle.
    fn budget(&self, s: &crate::config::Settings, default: Duration) -> Duration {
        default.max(
            s.probe_timeout
                .saturating_mul(2)
                .saturating_add(Duration::from_secs(1)),
        )
    }

    fn collect(self: Arc<Self>, ctx: Arc<Context>) -> BoxFuture<Result<Families, CollectError>> {
        Box::pin(async move {
            let s = ctx.settings();
            let target = ctx.target();
            let any_src = target
                .config
                .as_ref()
                .and_then(|c| c.endpoint(EndpointRole::Source));
            if let (Some(_), Some(m)) = (
                s.probe_interval,
                any_src.filter(|e| e.protocol == Protocol::Mongo),
            ) {
                *lock(&self.shared) = None;
                return self.collect_mongo(&ctx, m, &target.pipeline).await;
            }
            ctx.state.oplog.set(None);
            let src = any_src.filter(|e| e.protocol == Protocol::Mysql);
            let (Some(_), Some(src)) = (s.probe_interval, src) else {
                // Probes off, or no MySQL source: nothing to say; drop a held connection.
                *lock(&self.shared) = None;
                return Ok(Families::new());
            };
            let address = src.address();
            let login = super::connections::mysql_login(&s, src);
            let shared = {
                let mut held = lock(&self.shared);
                match held.as_ref() {
                    Some(c) if *c.login() == login => c.clone(),
                    _ => {
                        let c = ctx.mysql.get(login);
                        *held = Some(c.clone());
                        c
                    }
                }
            };
            // probe_interval is Some here (checked above)
            let retry_after = s.probe_interval.unwrap_or(s.interval);
            // one deadline shared by the queries of a run (the runner's budget is a login
            // plus one probe.timeout for them all, plus a second)
            let query_budget = s.probe_timeout;
            let read = shared
                .with(s.probe_timeout, retry_after, |conn| {
                    conn.set_max_rows(MAX_BINLOGS);
                    let now = Instant::now();
                    let deadline = now.checked_add(query_budget).unwrap_or(now);
                    Box::pin(read_view(conn, deadline))
                })
                .await;
            let view = match read {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return Err(CollectError::Invalid(format!("source {address}: {e}"))),
                Err(e) if e.server_code() == Some(ER_NO_BINARY_LOGGING) => {
                    // A state of the server, not a failure of the exporter: reported as a metric.
                    if self.first(format!("nobinlog:{address}")) {
                        tracing::warn!(endpoint = %address, "binary logging is off on gravity's source: a binlog stream cannot run from it");
                    }
                    let mut f = Families::new();
                    f.gauge(
                        "gravity_source_binlog_enabled",
                        "1 when binary logging is on at gravity's MySQL source, 0 when it is off (a binlog stream cannot run).",
                        &[("pipeline", target.pipeline.as_str())],
                        0.0,
                    );
                    return Ok(f);
                }
                Err(e) if e.server_code() == Some(ER_SPECIFIC_ACCESS_DENIED) => {
                    // Also a finding, not a failure: the grant is missing. Published so that
                    // the status page, `check` and an alert can say so.
                    let privilege =
                        binlog_privilege(&shared.server_version().await.unwrap_or_default());
                    if self.first(format!("grant:{address}")) {
                        tracing::warn!(endpoint = %address, privilege, error = %e, "the source user lacks a privilege: binlog headroom and lag cannot be read");
                    }
                    let mut f = Families::new();
                    privilege_family(&mut f, &target.pipeline, privilege, true);
                    ctx.state.source.set(Some(crate::state::SourceAccess {
                        privileges: vec![(privilege.to_string(), true)],
                    }));
                    return Ok(f);
                }
                Err(e) => return Err(self.map_err(&address, e)),
            };
            self.forget(&format!("nobinlog:{address}"));
            self.forget(&format!("grant:{address}"));

            // gravity's position, if /status was read recently.
            let max_age = ctx
                .cadence()
                .saturating_mul(3)
                .saturating_add(s.gravity_timeout)
                .max(Duration::from_secs(15));
            let seen = ctx.last_status().filter(|st| st.at.elapsed() <= max_age);
            let gravity = seen.as_ref().and_then(|st| {
                st.binlog_position()
                    .map(|p| ((p.file.clone(), p.pos), st.is_streaming()))
            });
            let (cmp, stalled) = match gravity {
                Some((gpos, streaming)) => match compare(&view, &gpos) {
                    Ok(c) => {
                        if c.headroom_files < 0 {
                            if self.first(format!("purged:{}", gpos.0)) {
                                tracing::warn!(
                                    gravity_file = %gpos.0,
                                    oldest = %view.files.first().map(|f| f.name.as_str()).unwrap_or(""),
                                    "gravity's binlog file is already purged on the source: gravity will fail with \"master has purged binary logs\" when it reconnects"
                                );
                            }
                        } else {
                            self.forget("purged:");
                        }
                        let stalled = streaming.then(|| {
                            lock(&self.stall).observe(
                                Instant::now(),
                                &view.current,
                                &gpos,
                                c.bytes_behind.is_none_or(|b| b > 0),
                            )
                        });
                        (Some(c), stalled)
                    }
                    Err(_) => {
                        if self.first(format!("unknown:{}", gpos.0)) {
                            tracing::warn!(
                                gravity_file = %gpos.0,
                                source_current = %view.current.0,
                                "gravity's binlog file is not among the source's binlogs (another server, or the source was reset?): cannot compare positions"
                            );
                        }
                        (None, None)
                    }
                },
                None => (None, None),
            };
            ctx.state
                .binlog_bytes_behind
                .set(cmp.as_ref().and_then(|c| c.bytes_behind));
            let mut f = source_families(&view, cmp.as_ref(), stalled, &target.pipeline);
            let privilege = binlog_privilege(&shared.server_version().await.unwrap_or_default());
            privilege_family(&mut f, &target.pipeline, privilege, false);
            ctx.state.source.set(Some(crate::state::SourceAccess {
                privileges: vec![(privilege.to_string(), false)],
            }));
            f.gauge(
                "gravity_source_binlog_enabled",
                "1 when binary logging is on at gravity's MySQL source, 0 when it is off (a binlog stream cannot run).",
                &[("pipeline", target.pipeline.as_str())],
                1.0,
            );
            Ok(f)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(v: &[(&str, u64)]) -> Vec<BinlogFile> {
        v.iter()
            .map(|(n, s)| BinlogFile {
                name: n.to_string(),
                size: *s,
            })
            .collect()
    }

    fn view() -> SourceView {
        SourceView {
            files: files(&[
                ("mysql-bin.000040", 1000),
                ("mysql-bin.000041", 2000),
                ("mysql-bin.000042", 3000),
                ("mysql-bin.000043", 500),
            ]),
            current: ("mysql-bin.000043".into(), 500),
            retention_seconds: Some(604800.0),
        }
    }

    fn pos(f: &str, p: u64) -> Pos {
        (f.to_string(), p)
    }

    #[test]
    fn behind_and_headroom() {
        let v = view();
        // gravity in 41 at 1500: behind = (2000-1500) + 3000 + 500; headroom = 1 file, 1000+1500 bytes
        let c = compare(&v, &pos("mysql-bin.000041", 1500)).unwrap();
        assert_eq!(
            c,
            Comparison {
                files_behind: Some(2),
                bytes_behind: Some(4000),
                headroom_files: 1,
                headroom_bytes: 2500,
            }
        );
        // caught up
        let c = compare(&v, &pos("mysql-bin.000043", 500)).unwrap();
        assert_eq!(
            (
                c.files_behind,
                c.bytes_behind,
                c.headroom_files,
                c.headroom_bytes
            ),
            (Some(0), Some(0), 3, 6500)
        );
        // in the oldest file: the next purge breaks the pipeline
        let c = compare(&v, &pos("mysql-bin.000040", 4)).unwrap();
        assert_eq!(
            (c.headroom_files, c.headroom_bytes, c.files_behind),
            (0, 4, Some(3))
        );
        assert_eq!(c.bytes_behind, Some(996 + 2000 + 3000 + 500));
        // already purged: unmistakable −1
        let c = compare(&v, &pos("mysql-bin.000038", 4)).unwrap();
        assert_eq!(
            (
                c.headroom_files,
                c.headroom_bytes,
                c.files_behind,
                c.bytes_behind
            ),
            (-1, -1, Some(5), None)
        );
        // not comparable
        assert_eq!(
            compare(&v, &pos("other-bin.000041", 4)),
            Err(Place::Unknown)
        );
        assert_eq!(
            compare(&v, &pos("mysql-bin.000099", 4)),
            Err(Place::Unknown)
        );
        assert_eq!(compare(&v, &pos("garbage", 4)), Err(Place::Unknown));
        let empty = SourceView {
            files: vec![],
            ..v.clone()
        };
        assert_eq!(
            compare(&empty, &pos("mysql-bin.000041", 4)),
            Err(Place::Unknown)
        );
        // the source's current file missing from the list: the last listed file stands in
        let mut odd = v.clone();
        odd.current = pos("mysql-bin.000044", 10);
        let c = compare(&odd, &pos("mysql-bin.000042", 1000)).unwrap();
        assert_eq!(
            (c.files_behind, c.bytes_behind),
            (Some(1), Some(2000 + 500))
        );
        // an offset past the file's size (status older than a rotation) does not underflow
        let c = compare(&v, &pos("mysql-bin.000042", 9999)).unwrap();
        assert_eq!(c.bytes_behind, Some(500));
        assert_eq!(c.headroom_bytes, 1000 + 2000 + 3000);
    }

    #[test]
    fn families_and_retention() {
        let v = view();
        let c = compare(&v, &pos("mysql-bin.000041", 1500)).unwrap();
        let f = source_families(&v, Some(&c), Some(false), "p");
        let g = |n: &str| f.value(n, &[("pipeline", "p")]);
        assert_eq!(g("gravity_source_binlog_files_behind"), Some(2.0));
        assert_eq!(g("gravity_source_binlog_bytes_behind"), Some(4000.0));
        assert_eq!(g("gravity_source_binlog_purge_headroom_files"), Some(1.0));
        assert_eq!(
            g("gravity_source_binlog_purge_headroom_bytes"),
            Some(2500.0)
        );
        assert_eq!(g("gravity_source_binlog_retention_seconds"), Some(604800.0));
        assert_eq!(g("gravity_source_binlog_file_index"), Some(43.0));
        assert_eq!(g("gravity_source_binlog_offset_bytes"), Some(500.0));
        assert_eq!(g("gravity_source_position_stalled"), Some(0.0));
        let f = source_families(&v, None, None, "p");
        assert_eq!(
            f.value("gravity_source_binlog_purge_headroom_files", &[]),
            None
        );
        assert_eq!(f.value("gravity_source_position_stalled", &[]), None);

        assert_eq!(
            retention_seconds(Some("86400"), Some("1.000000")),
            Some(86400.0)
        );
        assert_eq!(retention_seconds(Some("0"), Some("7")), Some(7.0 * 86400.0));
        assert_eq!(retention_seconds(Some("0"), Some("0.000000")), Some(0.0));
        assert_eq!(retention_seconds(None, Some("10")), Some(864000.0));
        assert_eq!(retention_seconds(Some("3600"), None), Some(3600.0));
        assert_eq!(retention_seconds(None, None), None);
        assert_eq!(retention_seconds(Some("x"), None), None);
    }

    #[test]
    fn parse_result_sets() {
        let rs = ResultSet {
            columns: vec!["Log_name".into(), "File_size".into(), "Encrypted".into()],
            rows: vec![
                vec![
                    Some("b.000001".into()),
                    Some("325".into()),
                    Some("No".into()),
                ],
                vec![
                    Some("b.000002".into()),
                    Some("1024".into()),
                    Some("No".into()),
                ],
            ],
        };
        assert_eq!(
            parse_binary_logs(&rs).unwrap(),
            files(&[("b.000001", 325), ("b.000002", 1024)])
        );
        let bad = ResultSet {
            columns: vec!["Log_name".into(), "File_size".into()],
            rows: vec![vec![Some("b.000001".into()), None]],
        };
        assert!(parse_binary_logs(&bad).is_err());
        assert!(parse_binary_logs(&ResultSet::default()).is_err());
        let st = ResultSet {
            columns: vec![
                "File".into(),
                "Position".into(),
                "Binlog_Do_DB".into(),
                "Binlog_Ignore_DB".into(),
            ],
            rows: vec![vec![
                Some("b.000002".into()),
                Some("1024".into()),
                Some("".into()),
                Some("".into()),
            ]],
        };
        assert_eq!(parse_master_status(&st), Ok(Some(pos("b.000002", 1024))));
        let off = ResultSet {
            columns: st.columns.clone(),
            rows: vec![],
        };
        assert_eq!(parse_master_status(&off), Ok(None));
        let junk = ResultSet {
            columns: st.columns.clone(),
            rows: vec![vec![Some("b.000002".into()), Some("x".into()), None, None]],
        };
        assert!(parse_master_status(&junk).is_err());
    }

    #[test]
    fn stall_needs_the_source_moving_for_the_whole_window() {
        let w = Duration::from_secs(60);
        let mut t = StallTracker::new(w);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let g = pos("b.000010", 100);
        let src = |p: u64| pos("b.000010", p);
        assert!(!t.observe(at(0), &src(100), &g, false));
        // idle source for a long time: not stalled
        assert!(!t.observe(at(300), &src(100), &g, false));
        // the source moves: not stalled before the window has passed since it moved
        assert!(!t.observe(at(305), &src(200), &g, true));
        assert!(!t.observe(at(360), &src(300), &g, true));
        assert!(t.observe(at(365), &src(400), &g, true));
        // gravity moves: cleared
        let g2 = pos("b.000010", 400);
        assert!(!t.observe(at(370), &src(400), &g2, false));
        assert!(
            !t.observe(at(500), &src(400), &g2, false),
            "caught up and idle"
        );
        // caught up → never stalled even if the window passes with the source moving... while behind is false
        assert!(!t.observe(at(501), &src(500), &g2, true));
        assert!(t.observe(at(561), &src(600), &g2, true));
        assert!(
            !t.observe(at(562), &src(600), &g2, false),
            "not behind: not stalled"
        );
    }
}
