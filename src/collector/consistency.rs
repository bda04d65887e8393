//! The opt-in consistency checker: does the target hold what the source holds?
//!
//! For each table named in `--consistency.tables`, the checker walks the source table in
//! primary-key order, chunk by chunk (`--consistency.chunk-size` rows), and computes the
//! same checksum over the same key range on the source and on the target:
//! `COUNT(*)` and the XOR of a 64-bit slice of `MD5` over every column of each row (in the
//! manner of pt-table-checksum and TiDB's sync-diff-inspector, read-only, one statement
//! per chunk and side). The last chunk is open-ended, so rows the target holds beyond the
//! source's last key count as a difference too.
//!
//! gravity applies changes a moment after the source makes them, so a chunk written to
//! recently can differ for a while. A chunk that differs is compared again after
//! `--consistency.recheck-delay`, up to [`RECHECKS`] times, and counts as a mismatch only
//! if it differs every time. A pipeline that lags by more than that shows mismatches until
//! it catches up; GravityDataConsistencyMismatch waits 30 minutes (several runs) for that.
//!
//! Load: one connection per side; after each chunk the checker pauses as long as the chunk
//! took, so it keeps each server busy for at most half of the time it runs, and a run
//! starts at most every `--consistency.interval`.
//!
//! The target table of a source table comes from `schema.table=target_schema.target_table`
//! in the flag, else from the first of gravity's `[[output.config.routes]]` that matches it
//! (`target-schema`/`target-table`), else the same name. It logs in with gravity's own
//! source and target users from gravity's config (or the monitoring logins of
//! `--source.username` / `--target.username`), which need `SELECT` on the tables.
//!
//! Chunk bounds are written column by column (`a > x OR (a = x AND b > y)`), so MariaDB
//! reads a chunk through an index range: a chunk costs O(chunk) rows with a composite key
//! too (`tests/consistency.rs`, 300,000 rows).
//!
//! Metrics (label sets capped at [`MAX_TABLES`] tables):
//! `gravity_data_consistency_score{pipeline,schema,table}` (share of chunks that match,
//! 0..1, from the last completed run), `gravity_data_consistency_chunks{...,result}`,
//! `gravity_data_consistency_rows{...,side}`, `gravity_data_consistency_check_success`,
//! `gravity_data_consistency_last_run_timestamp_seconds` and
//! `gravity_data_consistency_check_duration_seconds`. schema and table are the source's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Context;
use crate::base::unix_now;
use crate::gravity_config::{EndpointRole, GravityConfig, Protocol};
use crate::metrics::Families;
use crate::probe::mysql::{MySqlConn, MySqlError, ResultSet};

/// Name of the snapshot in the store.
pub const SNAPSHOT: &str = "consistency";
/// Further comparisons of a chunk that differs before it counts as a mismatch.
pub const RECHECKS: usize = 2;
/// Most columns of a checked table.
pub const MAX_COLUMNS: usize = 4096;
/// Most chunks of one table in one run (with the default chunk size, 100 million rows).
pub const MAX_CHUNKS: u64 = 100_000;

pub use crate::config::consistency::{parse_tables, TableSpec, MAX_CHUNK_SIZE, MAX_TABLES};

/// Quotes an identifier with backticks.
pub fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Quotes a string literal for a session with `NO_BACKSLASH_ESCAPES` (which the checker
/// sets): only `'` needs doubling.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A primary-key column and whether it is an exact numeric type (its values are written
/// as numbers, not strings, so that a BIGINT bound is not compared as a double).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyColumn {
    /// Column name.
    pub name: String,
    /// INT types and DECIMAL.
    pub numeric: bool,
}

fn is_exact_numeric(data_type: &str) -> bool {
    matches!(
        data_type.to_ascii_lowercase().as_str(),
        "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" | "decimal"
    )
}

/// A decimal number as the server prints one: `-12`, `3.50`.
fn plain_number(v: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let d = v.strip_prefix('-').unwrap_or(v);
    match d.split_once('.') {
        Some((i, f)) => digits(i) && digits(f),
        None => digits(d),
    }
}

fn literal(col: &KeyColumn, v: &str) -> String {
    if col.numeric && plain_number(v) {
        v.to_string()
    } else {
        quote_literal(v)
    }
}

/// `key > vals` (`strict`) or `key <= vals` written out column by column:
/// `(a > x OR (a = x AND b > y) OR (a = x AND b = y AND c > z))`. MariaDB does not turn a
/// row comparison `(a, b) > (x, y)` into an index range (it scans the whole index for each
/// chunk, a cost that grows with the square of the table size); this form it does, and
/// the leading `a >= x` (`a <= x`) gives the range on the first column even to an
/// optimiser that does not merge the disjunction.
fn expanded_comparison(pk: &[KeyColumn], vals: &[String], lower: bool) -> String {
    let pairs: Vec<(String, String)> = pk
        .iter()
        .zip(vals)
        .map(|(c, v)| (quote_ident(&c.name), literal(c, v)))
        .collect();
    let (strict, last) = if lower { (">", ">") } else { ("<", "<=") };
    let Some(((first_col, first_val), _)) = pairs.split_first() else {
        return "1 = 1".to_string();
    };
    if pairs.len() == 1 {
        return format!("{first_col} {last} {first_val}");
    }
    let mut terms = Vec::with_capacity(pairs.len());
    for i in 0..pairs.len() {
        let mut t: Vec<String> = pairs[..i]
            .iter()
            .map(|(c, v)| format!("{c} = {v}"))
            .collect();
        let (c, v) = &pairs[i];
        let op = if i + 1 == pairs.len() { last } else { strict };
        t.push(format!("{c} {op} {v}"));
        terms.push(if t.len() == 1 {
            t.remove(0)
        } else {
            format!("({})", t.join(" AND "))
        });
    }
    let wide = if lower { ">=" } else { "<=" };
    format!(
        "({first_col} {wide} {first_val} AND ({}))",
        terms.join(" OR ")
    )
}

/// The `WHERE` clause of a key range `(lo, hi]`; `None` bounds are open. Composite keys
/// are compared column by column (see [`expanded_comparison`]) so the index range is used.
pub fn range_predicate(pk: &[KeyColumn], lo: Option<&[String]>, hi: Option<&[String]>) -> String {
    let mut parts = Vec::new();
    if let Some(lo) = lo {
        parts.push(expanded_comparison(pk, lo, true));
    }
    if let Some(hi) = hi {
        parts.push(expanded_comparison(pk, hi, false));
    }
    if parts.is_empty() {
        "1 = 1".to_string()
    } else {
        parts.join(" AND ")
    }
}

/// The query that finds the upper key of the chunk after `lo`: the `chunk`-th row.
pub fn boundary_sql(
    schema: &str,
    table: &str,
    pk: &[KeyColumn],
    lo: Option<&[String]>,
    chunk: usize,
) -> String {
    let cols: Vec<String> = pk.iter().map(|c| quote_ident(&c.name)).collect();
    format!(
        "SELECT {cols} FROM {s}.{t} WHERE {w} ORDER BY {cols} LIMIT 1 OFFSET {off}",
        cols = cols.join(", "),
        s = quote_ident(schema),
        t = quote_ident(table),
        w = range_predicate(pk, lo, None),
        off = chunk.saturating_sub(1),
    )
}

/// The checksum query of a key range: `COUNT(*)` and the XOR over rows of the first 64
/// bits of `MD5` of all columns (as utf8mb4 text, `#`-separated, with a NULL mask so that
/// NULL and '' differ).
pub fn checksum_sql(
    schema: &str,
    table: &str,
    columns: &[String],
    pk: &[KeyColumn],
    lo: Option<&[String]>,
    hi: Option<&[String]>,
) -> String {
    let conv: Vec<String> = columns
        .iter()
        .map(|c| format!("CONVERT({} USING utf8mb4)", quote_ident(c)))
        .collect();
    let nulls: Vec<String> = columns
        .iter()
        .map(|c| format!("ISNULL({})", quote_ident(c)))
        .collect();
    format!(
        "SELECT COUNT(*) AS n, COALESCE(BIT_XOR(CAST(CONV(SUBSTRING(MD5(CONCAT_WS('#', {cols}, CONCAT({nulls}))), 1, 16), 16, 10) AS UNSIGNED)), 0) AS crc FROM {s}.{t} WHERE {w}",
        cols = conv.join(", "),
        nulls = nulls.join(", "),
        s = quote_ident(schema),
        t = quote_ident(table),
        w = range_predicate(pk, lo, hi),
    )
}

/// The checksum of one chunk on one side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSum {
    /// Rows in the range.
    pub rows: u64,
    /// XOR of the row hashes (decimal text).
    pub crc: String,
}

/// Parses the result of [`checksum_sql`].
pub fn parse_checksum(rs: &ResultSet) -> Result<ChunkSum, String> {
    let rows = rs
        .value(0, "n")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| format!("checksum result without a row count: {:?}", rs.columns))?;
    let crc = rs
        .value(0, "crc")
        .filter(|v| v.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| "checksum result without a checksum".to_string())?;
    Ok(ChunkSum {
        rows,
        crc: crc.to_string(),
    })
}

/// The result of checking one table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableResult {
    /// Chunks compared.
    pub chunks: u64,
    /// Chunks that differed on every comparison.
    pub mismatched: u64,
    /// Rows counted on the source.
    pub source_rows: u64,
    /// Rows counted on the target.
    pub target_rows: u64,
}

impl TableResult {
    /// Share of chunks that match (1 for a table without chunks).
    pub fn score(&self) -> f64 {
        if self.chunks == 0 {
            1.0
        } else {
            (self.chunks - self.mismatched) as f64 / self.chunks as f64
        }
    }
}

/// What is known of one table: the last completed result and the last attempt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TableState {
    /// Last completed check.
    pub result: Option<TableResult>,
    /// Whether the last attempt completed.
    pub last_ok: bool,
    /// When the last completed check ended (Unix seconds).
    pub finished_at: f64,
    /// How long the last completed check took.
    pub duration: Duration,
}

/// Builds the snapshot (pure). `tables` are in flag order.
pub fn consistency_families(
    tables: &[(TableSpec, Option<&TableState>)],
    pipeline: &str,
) -> Families {
    let mut f = Families::new();
    for (spec, state) in tables {
        let Some(state) = state else { continue };
        let l = [
            ("pipeline", pipeline),
            ("schema", spec.schema.as_str()),
            ("table", spec.table.as_str()),
        ];
        f.gauge(
            "gravity_data_consistency_check_success",
            "1 when the last consistency check of the table completed, 0 when it failed (login, missing table, no primary key, timeout).",
            &l,
            if state.last_ok { 1.0 } else { 0.0 },
        );
        let Some(r) = &state.result else { continue };
        f.gauge(
            "gravity_data_consistency_score",
            "Share of compared chunks whose checksum matches between source and target (0..1), from the last completed consistency check.",
            &l,
            r.score(),
        );
        for (result, n) in [
            ("match", r.chunks - r.mismatched),
            ("mismatch", r.mismatched),
        ] {
            f.gauge(
                "gravity_data_consistency_chunks",
                "Chunks compared by the last completed consistency check, by result (match, mismatch).",
                &[l[0], l[1], l[2], ("result", result)],
                n as f64,
            );
        }
        for (side, n) in [("source", r.source_rows), ("target", r.target_rows)] {
            f.gauge(
                "gravity_data_consistency_rows",
                "Rows counted by the last completed consistency check, by side (source, target).",
                &[l[0], l[1], l[2], ("side", side)],
                n as f64,
            );
        }
        f.gauge(
            "gravity_data_consistency_last_run_timestamp_seconds",
            "When the last completed consistency check of the table ended (Unix time).",
            &l,
            state.finished_at,
        );
        f.gauge(
            "gravity_data_consistency_check_duration_seconds",
            "How long the last completed consistency check of the table took.",
            &l,
            state.duration.as_secs_f64(),
        );
    }
    f
}

/// Why a table could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A query failed.
    #[error("{side} {what}: {source}")]
    Query {
        /// source or target.
        side: &'static str,
        /// What was being read.
        what: &'static str,
        /// The error.
        source: MySqlError,
    },
    /// The table cannot be checked as it is.
    #[error("{0}")]
    Unsupported(String),
}

fn q(side: &'static str, what: &'static str) -> impl FnOnce(MySqlError) -> CheckError {
    move |source| CheckError::Query { side, what, source }
}

/// Reads the primary key and the columns of a source table.
async fn describe(
    conn: &mut MySqlConn,
    schema: &str,
    table: &str,
) -> Result<(Vec<KeyColumn>, Vec<String>), CheckError> {
    let cols = conn
        .query(&format!(
            "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_KEY FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            quote_literal(schema),
            quote_literal(table)
        ))
        .await
        .map_err(q("source", "columns"))?;
    if cols.rows.is_empty() {
        return Err(CheckError::Unsupported(format!(
            "source table {schema}.{table} not found (or no privilege on it)"
        )));
    }
    let columns: Vec<String> = (0..cols.rows.len())
        .filter_map(|i| cols.value(i, "COLUMN_NAME").map(str::to_string))
        .take(MAX_COLUMNS)
        .collect();
    let keys = conn
        .query(&format!(
            "SELECT k.COLUMN_NAME, c.DATA_TYPE FROM information_schema.KEY_COLUMN_USAGE k JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = k.TABLE_SCHEMA AND c.TABLE_NAME = k.TABLE_NAME AND c.COLUMN_NAME = k.COLUMN_NAME WHERE k.TABLE_SCHEMA = {} AND k.TABLE_NAME = {} AND k.CONSTRAINT_NAME = 'PRIMARY' ORDER BY k.ORDINAL_POSITION",
            quote_literal(schema),
            quote_literal(table)
        ))
        .await
        .map_err(q("source", "primary key"))?;
    let pk: Vec<KeyColumn> = (0..keys.rows.len())
        .filter_map(|i| {
            Some(KeyColumn {
                name: keys.value(i, "COLUMN_NAME")?.to_string(),
                numeric: is_exact_numeric(keys.value(i, "DATA_TYPE").unwrap_or("")),
            })
        })
        .collect();
    if pk.is_empty() {
        return Err(CheckError::Unsupported(format!(
            "source table {schema}.{table} has no primary key: it cannot be compared in chunks"
        )));
    }
    Ok((pk, columns))
}

/// Session settings of a checker connection: literals are quoted without backslash escapes.
pub async fn prepare(conn: &mut MySqlConn, side: &'static str) -> Result<(), CheckError> {
    conn.query("SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',NO_BACKSLASH_ESCAPES')")
        .await
        .map_err(q(side, "session"))?;
    Ok(())
}

/// Compares one table chunk by chunk, over connections set up by [`prepare`].
pub async fn check_table(
    src: &mut MySqlConn,
    dst: &mut MySqlConn,
    spec: &TableSpec,
    target: (&str, &str),
    chunk_size: usize,
    recheck_delay: Duration,
) -> Result<TableResult, CheckError> {
    let (pk, columns) = describe(src, &spec.schema, &spec.table).await?;
    let chunk_size = chunk_size.clamp(1, MAX_CHUNK_SIZE);
    let mut res = TableResult::default();
    let mut lo: Option<Vec<String>> = None;
    loop {
        let started = Instant::now();
        let b = src
            .query(&boundary_sql(
                &spec.schema,
                &spec.table,
                &pk,
                lo.as_deref(),
                chunk_size,
            ))
            .await
            .map_err(q("source", "chunk boundary"))?;
        let hi: Option<Vec<String>> = match b.rows.first() {
            None => None,
            Some(row) => {
                let vals: Option<Vec<String>> = row.iter().cloned().collect();
                let vals = vals.ok_or_else(|| {
                    CheckError::Unsupported("NULL in a primary key value".to_string())
                })?;
                if vals.iter().any(|v| v.contains('\u{FFFD}')) {
                    return Err(CheckError::Unsupported(format!(
                        "primary key of {}.{} holds bytes that are not UTF-8; it cannot be chunked",
                        spec.schema, spec.table
                    )));
                }
                Some(vals)
            }
        };
        let mut attempt = 0;
        let (s, d) = loop {
            let s = src
                .query(&checksum_sql(
                    &spec.schema,
                    &spec.table,
                    &columns,
                    &pk,
                    lo.as_deref(),
                    hi.as_deref(),
                ))
                .await
                .map_err(q("source", "checksum"))?;
            let d = dst
                .query(&checksum_sql(
                    target.0,
                    target.1,
                    &columns,
                    &pk,
                    lo.as_deref(),
                    hi.as_deref(),
                ))
                .await
                .map_err(q("target", "checksum"))?;
            let s = parse_checksum(&s).map_err(CheckError::Unsupported)?;
            let d = parse_checksum(&d).map_err(CheckError::Unsupported)?;
            if s == d || attempt == RECHECKS {
                break (s, d);
            }
            attempt += 1;
            tokio::time::sleep(recheck_delay).await;
        };
        res.chunks += 1;
        res.source_rows += s.rows;
        res.target_rows += d.rows;
        if s != d {
            res.mismatched += 1;
            // Key values are table data: only at debug level, never in a metric.
            tracing::debug!(
                schema = %spec.schema,
                table = %spec.table,
                chunk = res.chunks,
                after_key = %lo.as_ref().map(|v| v.join(",")).unwrap_or_default(),
                up_to_key = %hi.as_ref().map(|v| v.join(",")).unwrap_or_default(),
                source_rows = s.rows,
                target_rows = d.rows,
                "consistency: chunk differs"
            );
        }
        match hi {
            None => break,
            Some(h) => lo = Some(h),
        }
        if res.chunks >= MAX_CHUNKS {
            return Err(CheckError::Unsupported(format!(
                "more than {MAX_CHUNKS} chunks: raise --consistency.chunk-size"
            )));
        }
        // Leave the servers at least half of the time.
        tokio::time::sleep(started.elapsed().min(Duration::from_secs(10))).await;
    }
    Ok(res)
}

/// The background task: a run over every table each `--consistency.interval`.
pub struct ConsistencyChecker {
    ctx: Arc<Context>,
    states: HashMap<TableSpec, TableState>,
    warned: Option<String>,
}

impl ConsistencyChecker {
    /// A checker for this context.
    pub fn new(ctx: Arc<Context>) -> ConsistencyChecker {
        ConsistencyChecker {
            ctx,
            states: HashMap::new(),
            warned: None,
        }
    }

    fn publish(&self, tables: &[TableSpec], pipeline: &str) {
        let list: Vec<(TableSpec, Option<&TableState>)> = tables
            .iter()
            .map(|t| (t.clone(), self.states.get(t)))
            .collect();
        self.ctx
            .store
            .set_snapshot(SNAPSHOT, consistency_families(&list, pipeline));
    }

    fn warn_once(&mut self, msg: String) {
        if self.warned.as_deref() != Some(msg.as_str()) {
            tracing::warn!("consistency checker: {msg}");
            self.warned = Some(msg);
        }
    }

    async fn connect(
        settings: &crate::config::Settings,
        cfg: &GravityConfig,
        role: EndpointRole,
        timeout: Duration,
    ) -> Result<MySqlConn, String> {
        let Some(e) = cfg.endpoint(role).filter(|e| e.protocol == Protocol::Mysql) else {
            return Err(format!(
                "gravity's config names no MySQL {} (the checker compares MySQL source and MySQL target)",
                role.as_str()
            ));
        };
        // gravity's user, or the monitoring login of --source.username / --target.username
        let login = super::connections::mysql_login(settings, e);
        let side = role.as_str();
        let mut conn = MySqlConn::connect(&login.endpoint, &login.user, &login.password, timeout)
            .await
            .map_err(|err| format!("{side} {}: {err}", e.address()))?;
        // The session is prepared once per connection, not per table.
        prepare(&mut conn, side)
            .await
            .map_err(|err| format!("{}: {err}", e.address()))?;
        Ok(conn)
    }

    /// One run over every configured table; true if every table was checked.
    pub async fn run_once(&mut self) -> bool {
        let s = self.ctx.settings();
        let c = s.consistency.clone();
        let target = self.ctx.target();
        let pipeline = target.pipeline.clone();
        self.states.retain(|k, _| c.tables.contains(k));
        let Some(cfg) = target.config.clone() else {
            self.warn_once("gravity's config is not known yet".into());
            return false;
        };
        let (mut src, mut dst) = match tokio::join!(
            Self::connect(&s, &cfg, EndpointRole::Source, c.timeout),
            Self::connect(&s, &cfg, EndpointRole::Target, c.timeout),
        ) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) | (_, Err(e)) => {
                self.warn_once(e);
                for t in &c.tables {
                    self.states.entry(t.clone()).or_default().last_ok = false;
                }
                self.publish(&c.tables, &pipeline);
                return false;
            }
        };
        self.warned = None;
        for spec in &c.tables {
            let (ts, tt) = spec.target_in(&cfg.routes);
            let started = Instant::now();
            let outcome = check_table(
                &mut src,
                &mut dst,
                spec,
                (&ts, &tt),
                c.chunk_size,
                c.recheck_delay,
            )
            .await;
            let st = self.states.entry(spec.clone()).or_default();
            match outcome {
                Ok(r) => {
                    if r.mismatched > 0 {
                        tracing::warn!(
                            schema = %spec.schema,
                            table = %spec.table,
                            target = %format!("{ts}.{tt}"),
                            chunks = r.chunks,
                            mismatched = r.mismatched,
                            source_rows = r.source_rows,
                            target_rows = r.target_rows,
                            "consistency: source and target differ"
                        );
                    }
                    st.result = Some(r);
                    st.last_ok = true;
                    st.finished_at = unix_now();
                    st.duration = started.elapsed();
                }
                Err(e) => {
                    tracing::warn!(schema = %spec.schema, table = %spec.table, error = %e, "consistency check failed");
                    st.last_ok = false;
                    if matches!(e, CheckError::Query { ref source, .. } if !matches!(source, MySqlError::Server { .. }))
                    {
                        // The connection is gone or timed out: stop this run.
                        break;
                    }
                }
            }
            self.publish(&c.tables, &pipeline);
        }
        self.publish(&c.tables, &pipeline);
        let _ = src.close().await;
        let _ = dst.close().await;
        c.tables
            .iter()
            .all(|t| self.states.get(t).is_some_and(|st| st.last_ok))
    }

    /// Runs until the process ends; idle while no table is configured. Each run over the
    /// tables is a cycle of task `consistency`.
    pub async fn run(mut self) {
        let tasks = self.ctx.store.tasks().clone();
        loop {
            let c = self.ctx.settings().consistency.clone();
            if c.tables.is_empty() {
                self.states.clear();
                self.ctx.store.set_snapshot(SNAPSHOT, Families::new());
                // Off: nothing to do until the settings change (SIGHUP); no timer.
                let mut settings = self.ctx.settings.clone();
                settings.mark_unchanged();
                if !self.ctx.settings().consistency.tables.is_empty() {
                    continue; // changed since the look above
                }
                if settings.changed().await.is_err() {
                    return; // the exporter is stopping
                }
                continue;
            }
            let start = Instant::now();
            let ok = self.run_once().await;
            tasks.cycle("consistency", start.elapsed(), ok);
            crate::spans::slow_operation("consistency pass", start.elapsed(), ok);
            while start.elapsed() < c.interval {
                tokio::time::sleep(Duration::from_millis(250).min(c.interval)).await;
                if self.ctx.settings().consistency != c {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gravity_config::Route;

    fn spec(s: &str, t: &str) -> TableSpec {
        TableSpec {
            schema: s.into(),
            table: t.into(),
            target: None,
        }
    }

    #[test]
    fn table_lists() {
        assert_eq!(
            parse_tables(" shop.orders , shop.users=copy.users_v2,shop.orders ,").unwrap(),
            vec![
                spec("shop", "orders"),
                TableSpec {
                    schema: "shop".into(),
                    table: "users".into(),
                    target: Some(("copy".into(), "users_v2".into())),
                },
            ]
        );
        assert_eq!(parse_tables("").unwrap(), vec![]);
        for bad in ["orders", "a.b.c", ".t", "s.", "a.b=c", "a.b=.d"] {
            assert!(parse_tables(bad).is_err(), "{bad}");
        }
        let many: Vec<String> = (0..=MAX_TABLES).map(|i| format!("s.t{i}")).collect();
        assert!(parse_tables(&many.join(",")).is_err());
    }

    #[test]
    fn targets_from_flag_routes_or_same_name() {
        let routes = vec![
            Route {
                match_schema: "shop".into(),
                match_table: "order*".into(),
                target_schema: Some("shop_copy".into()),
                target_table: None,
                dml_topic: None,
            },
            Route {
                match_schema: "shop".into(),
                match_table: "*".into(),
                target_schema: None,
                target_table: None,
                dml_topic: None,
            },
        ];
        assert_eq!(
            spec("shop", "orders").target_in(&routes),
            ("shop_copy".into(), "orders".into())
        );
        assert_eq!(
            spec("shop", "users").target_in(&routes),
            ("shop".into(), "users".into())
        );
        let mut explicit = spec("shop", "orders");
        explicit.target = Some(("x".into(), "y".into()));
        assert_eq!(explicit.target_in(&routes), ("x".into(), "y".into()));
    }

    #[test]
    fn sql_quoting_and_ranges() {
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
        assert_eq!(quote_literal("it's \\ fine"), "'it''s \\ fine'");
        let pk = vec![
            KeyColumn {
                name: "id".into(),
                numeric: true,
            },
            KeyColumn {
                name: "code".into(),
                numeric: false,
            },
        ];
        let lo = vec!["18446744073709551615".to_string(), "a'b".to_string()];
        let hi = vec!["-5".to_string(), "10".to_string()];
        assert_eq!(
            range_predicate(&pk, Some(&lo), Some(&hi)),
            "(`id` >= 18446744073709551615 AND (`id` > 18446744073709551615 OR (`id` = 18446744073709551615 AND `code` > 'a''b'))) AND (`id` <= -5 AND (`id` < -5 OR (`id` = -5 AND `code` <= '10')))"
        );
        assert_eq!(range_predicate(&pk, None, None), "1 = 1");
        // a value that is not a plain number is quoted even for a numeric column
        let one = &pk[..1];
        assert_eq!(
            range_predicate(one, Some(&["1; DROP TABLE x".to_string()]), None),
            "`id` > '1; DROP TABLE x'"
        );
        assert_eq!(
            range_predicate(one, Some(&["12.50".to_string()]), None),
            "`id` > 12.50"
        );
        // three columns: one term per column, each fixing the columns before it
        let mut three = pk.clone();
        three.push(KeyColumn {
            name: "n".into(),
            numeric: true,
        });
        let v3 = vec!["1".to_string(), "x".to_string(), "7".to_string()];
        assert_eq!(
            range_predicate(&three, Some(&v3), None),
            "(`id` >= 1 AND (`id` > 1 OR (`id` = 1 AND `code` > 'x') OR (`id` = 1 AND `code` = 'x' AND `n` > 7)))"
        );
        assert_eq!(
            range_predicate(&three, None, Some(&v3)),
            "(`id` <= 1 AND (`id` < 1 OR (`id` = 1 AND `code` < 'x') OR (`id` = 1 AND `code` = 'x' AND `n` <= 7)))"
        );
        for odd in ["", "-", "1.", ".5", "1e5", "--1"] {
            assert_eq!(literal(&pk[0], odd), quote_literal(odd), "{odd}");
        }
        assert_eq!(
            boundary_sql("s", "t", one, None, 1000),
            "SELECT `id` FROM `s`.`t` WHERE 1 = 1 ORDER BY `id` LIMIT 1 OFFSET 999"
        );
        let sql = checksum_sql(
            "s",
            "t",
            &["id".into(), "v".into()],
            one,
            None,
            Some(&hi[..1]),
        );
        assert!(
            sql.starts_with("SELECT COUNT(*) AS n, COALESCE(BIT_XOR("),
            "{sql}"
        );
        assert!(sql.contains("CONCAT_WS('#', CONVERT(`id` USING utf8mb4), CONVERT(`v` USING utf8mb4), CONCAT(ISNULL(`id`), ISNULL(`v`)))"), "{sql}");
        assert!(sql.ends_with("FROM `s`.`t` WHERE `id` <= -5"), "{sql}");
    }

    #[test]
    fn checksum_results() {
        let rs = |n: Option<&str>, c: Option<&str>| ResultSet {
            columns: vec!["n".into(), "crc".into()],
            rows: vec![vec![n.map(str::to_string), c.map(str::to_string)]],
        };
        assert_eq!(
            parse_checksum(&rs(Some("3"), Some("123"))).unwrap(),
            ChunkSum {
                rows: 3,
                crc: "123".into()
            }
        );
        assert!(parse_checksum(&rs(None, Some("1"))).is_err());
        assert!(parse_checksum(&rs(Some("1"), Some("x"))).is_err());
        assert!(parse_checksum(&ResultSet::default()).is_err());
    }

    #[test]
    fn families_and_score() {
        let r = TableResult {
            chunks: 4,
            mismatched: 1,
            source_rows: 4000,
            target_rows: 3999,
        };
        assert_eq!(r.score(), 0.75);
        let empty = TableResult {
            chunks: 0,
            mismatched: 0,
            source_rows: 0,
            target_rows: 0,
        };
        assert_eq!(empty.score(), 1.0);
        let ok = TableState {
            result: Some(r),
            last_ok: true,
            finished_at: 1_700_000_000.0,
            duration: Duration::from_millis(1500),
        };
        let failed = TableState {
            result: None,
            last_ok: false,
            finished_at: 0.0,
            duration: Duration::ZERO,
        };
        let f = consistency_families(
            &[
                (spec("shop", "orders"), Some(&ok)),
                (spec("shop", "users"), Some(&failed)),
                (spec("shop", "new"), None),
            ],
            "p",
        );
        let orders = [("pipeline", "p"), ("schema", "shop"), ("table", "orders")];
        let users = [("pipeline", "p"), ("schema", "shop"), ("table", "users")];
        let with = |l: &[(&'static str, &'static str)], extra: (&'static str, &'static str)| {
            let mut v = l.to_vec();
            v.push(extra);
            v
        };
        assert_eq!(
            f.value("gravity_data_consistency_score", &orders),
            Some(0.75)
        );
        assert_eq!(
            f.value(
                "gravity_data_consistency_chunks",
                &with(&orders, ("result", "mismatch"))
            ),
            Some(1.0)
        );
        assert_eq!(
            f.value(
                "gravity_data_consistency_chunks",
                &with(&orders, ("result", "match"))
            ),
            Some(3.0)
        );
        assert_eq!(
            f.value(
                "gravity_data_consistency_rows",
                &with(&orders, ("side", "target"))
            ),
            Some(3999.0)
        );
        assert_eq!(
            f.value("gravity_data_consistency_check_duration_seconds", &orders),
            Some(1.5)
        );
        assert_eq!(
            f.value("gravity_data_consistency_check_success", &orders),
            Some(1.0)
        );
        assert_eq!(
            f.value("gravity_data_consistency_check_success", &users),
            Some(0.0)
        );
        assert_eq!(
            f.value("gravity_data_consistency_score", &users),
            None,
            "never completed"
        );
        assert!(f
            .samples("gravity_data_consistency_check_success")
            .iter()
            .all(|(l, _)| !l.iter().any(|(_, v)| v == "new")));
    }
}
