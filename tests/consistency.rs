//! The opt-in consistency checker end to end against a real MariaDB: a source schema and
//! a target schema that gravity's routes map it to, compared chunk by chunk through the
//! exporter's /metrics; differences made by hand (changed value, NULL against '', extra
//! row, composite keys), a difference repaired before the recheck, a table without a
//! primary key, and a target login that fails.

mod common;
#[path = "common/mariadb.rs"]
mod mariadb;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mariadb::{exec, MariaDb};

const WAIT: Duration = Duration::from_secs(20);
const USER: &str = "gx_chk";
const PASSWORD: &str = "Chk-Pw-7c1";

fn gravity_config(dir: &Path, port: u16, target_password: &str) -> PathBuf {
    let text = format!(
        "name = \"chk\"\n[input]\ntype = \"mysql\"\nmode = \"stream\"\n[input.config.source]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n[output]\ntype = \"mysql\"\n[output.config.target]\nhost = \"127.0.0.1\"\nport = {port}\nusername = \"{USER}\"\npassword = \"{target_password}\"\n\n[[output.config.routes]]\nmatch-schema = \"src\"\nmatch-table = \"*\"\ntarget-schema = \"dst\"\n"
    );
    let p = dir.join("gravity.toml");
    std::fs::write(&p, text).unwrap();
    p
}

async fn start(
    config: &Path,
    api: SocketAddr,
    tables: &str,
    interval: &str,
    recheck: &str,
) -> common::Running {
    common::start(common::settings(&[
        "--gravity.config",
        config.to_str().unwrap(),
        "--gravity.process-pattern",
        "^no-such-gravity-process-for-tests$",
        "--gravity.url",
        &format!("http://{api}"),
        "--collector.interval",
        "200ms",
        "--probe.interval",
        "0s",
        "--consistency.tables",
        tables,
        "--consistency.interval",
        interval,
        "--consistency.chunk-size",
        "1000",
        "--consistency.recheck-delay",
        recheck,
    ]))
    .await
}

fn labels(table: &str) -> Vec<String> {
    vec![
        "pipeline=\"chk\"".to_string(),
        "schema=\"src\"".to_string(),
        format!("table=\"{table}\""),
    ]
}

/// Waits until the checker has completed a check of `table` that started after `after`
/// (Unix seconds), and returns /metrics then.
async fn next_run(addr: SocketAddr, table: &str, after: f64) -> String {
    let l = labels(table);
    let needles: Vec<&str> = l.iter().map(String::as_str).collect();
    common::wait_metrics(
        addr,
        WAIT,
        &format!("no consistency run of {table} after {after}"),
        |body| {
            let ended = common::sample(
                body,
                "gravity_data_consistency_last_run_timestamp_seconds",
                &needles,
            );
            let took = common::sample(
                body,
                "gravity_data_consistency_check_duration_seconds",
                &needles,
            );
            matches!((ended, took), (Some(e), Some(d)) if e - d > after)
        },
    )
    .await
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn v(body: &str, name: &str, table: &str, extra: &[&str]) -> Option<f64> {
    let l = labels(table);
    let mut needles: Vec<&str> = l.iter().map(String::as_str).collect();
    needles.extend_from_slice(extra);
    common::sample(body, name, &needles)
}

async fn setup(db: &MariaDb) -> gravity_exporter::probe::mysql::MySqlConn {
    let mut root = db.root().await;
    let mut stmts: Vec<String> = vec![
        "SET SESSION max_recursive_iterations = 100000".into(),
        format!("CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'"),
        "CREATE DATABASE src".into(),
        "CREATE DATABASE dst".into(),
        format!("GRANT SELECT ON src.* TO '{USER}'@'%'"),
        format!("GRANT SELECT ON dst.* TO '{USER}'@'%'"),
        // 2500 rows: chunks (..1000], (1000..2000], (2000..; a BIGINT key past 2^53
        "CREATE TABLE src.orders (id BIGINT UNSIGNED PRIMARY KEY, v VARCHAR(40) NOT NULL, note VARCHAR(20) NULL, amount DECIMAL(10,2), at DATETIME)".into(),
        "CREATE TABLE src.items (a INT, b VARCHAR(10), qty INT, PRIMARY KEY (a, b))".into(),
        "CREATE TABLE src.nopk (x INT)".into(),
    ];
    // Rows through a recursive CTE (MariaDB 10.2+).
    stmts.push(
        "INSERT INTO src.orders WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2499) SELECT i, CONCAT('row-', i, ' it''s'), IF(i % 7 = 0, NULL, 'n'), i * 1.25, '2026-11-22 10:00:00' FROM n".into(),
    );
    stmts.push("INSERT INTO src.orders VALUES (9007199254740993, 'big', NULL, 1, NULL)".into());
    stmts.push(
        "INSERT INTO src.items WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200) SELECT i DIV 3, CONCAT('k', i % 3), i FROM n".into(),
    );
    for t in ["orders", "items", "nopk"] {
        stmts.push(format!("CREATE TABLE dst.{t} LIKE src.{t}"));
        stmts.push(format!("INSERT INTO dst.{t} SELECT * FROM src.{t}"));
    }
    let refs: Vec<&str> = stmts.iter().map(String::as_str).collect();
    exec(&mut root, &refs).await;
    root
}

#[tokio::test]
async fn chunks_compared_and_differences_found() {
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start();
    let mut root = setup(&db).await;
    let api = common::stub_http(404).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = gravity_config(dir.path(), db.port, PASSWORD);
    let r = start(&cfg, api, "src.orders, src.items, src.nopk", "1s", "20ms").await;

    // Equal copies: every chunk matches.
    let body = next_run(r.addr, "orders", 0.0).await;
    let score = "gravity_data_consistency_score";
    let chunks = "gravity_data_consistency_chunks";
    let rows = "gravity_data_consistency_rows";
    assert_eq!(v(&body, score, "orders", &[]), Some(1.0), "{body}");
    assert_eq!(v(&body, chunks, "orders", &["result=\"match\""]), Some(3.0));
    assert_eq!(
        v(&body, chunks, "orders", &["result=\"mismatch\""]),
        Some(0.0)
    );
    assert_eq!(v(&body, rows, "orders", &["side=\"source\""]), Some(2500.0));
    assert_eq!(v(&body, rows, "orders", &["side=\"target\""]), Some(2500.0));
    let body = next_run(r.addr, "items", 0.0).await;
    assert_eq!(v(&body, score, "items", &[]), Some(1.0), "{body}");
    assert_eq!(v(&body, chunks, "items", &["result=\"match\""]), Some(2.0));
    assert_eq!(v(&body, rows, "items", &["side=\"target\""]), Some(1200.0));
    // No primary key: reported as a failed check (after items, in flag order), never as a
    // score.
    let body = common::wait_metrics(r.addr, WAIT, "no failed check of nopk", |body| {
        v(body, "gravity_data_consistency_check_success", "nopk", &[]) == Some(0.0)
    })
    .await;
    assert_eq!(v(&body, score, "nopk", &[]), None);
    assert_eq!(
        v(
            &body,
            "gravity_data_consistency_check_success",
            "orders",
            &[]
        ),
        Some(1.0)
    );

    // One changed value in the middle chunk.
    exec(
        &mut root,
        &["UPDATE dst.orders SET v = 'changed' WHERE id = 1500"],
    )
    .await;
    let body = next_run(r.addr, "orders", now()).await;
    assert_eq!(
        v(&body, chunks, "orders", &["result=\"mismatch\""]),
        Some(1.0)
    );
    let s = v(&body, score, "orders", &[]).unwrap();
    assert!((s - 2.0 / 3.0).abs() < 1e-9, "{s}");

    // NULL on the source, '' on the target, in the first chunk; the middle one repaired.
    exec(
        &mut root,
        &[
            "UPDATE dst.orders SET v = CONCAT('row-', id, ' it''s') WHERE id = 1500",
            "UPDATE dst.orders SET note = '' WHERE id = 700",
        ],
    )
    .await;
    let body = next_run(r.addr, "orders", now()).await;
    assert_eq!(
        v(&body, chunks, "orders", &["result=\"mismatch\""]),
        Some(1.0)
    );
    assert_eq!(v(&body, rows, "orders", &["side=\"target\""]), Some(2500.0));

    // Repaired; then a row only the target has, past the source's last key; and a
    // deleted row in a composite-key table.
    exec(
        &mut root,
        &[
            "UPDATE dst.orders SET note = NULL WHERE id = 700",
            "INSERT INTO dst.orders VALUES (18446744073709551615, 'extra', NULL, 0, NULL)",
            "DELETE FROM dst.items WHERE a = 250 AND b = 'k1'",
        ],
    )
    .await;
    let t = now();
    let body = next_run(r.addr, "orders", t).await;
    assert_eq!(v(&body, rows, "orders", &["side=\"target\""]), Some(2501.0));
    assert_eq!(v(&body, rows, "orders", &["side=\"source\""]), Some(2500.0));
    assert_eq!(
        v(&body, chunks, "orders", &["result=\"mismatch\""]),
        Some(1.0)
    );
    let body = next_run(r.addr, "items", t).await;
    assert_eq!(
        v(&body, chunks, "items", &["result=\"mismatch\""]),
        Some(1.0)
    );
    assert_eq!(v(&body, score, "items", &[]), Some(0.5));
    assert_eq!(v(&body, rows, "items", &["side=\"target\""]), Some(1199.0));

    // The password is nowhere in /metrics.
    assert!(!body.contains(PASSWORD));
    root.close().await.unwrap();
    r.stop().await;
}

#[tokio::test]
async fn a_difference_repaired_before_the_recheck_is_a_match() {
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start();
    let mut root = setup(&db).await;
    exec(
        &mut root,
        &["UPDATE dst.orders SET amount = 0 WHERE id = 10"],
    )
    .await;
    let api = common::stub_http(404).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = gravity_config(dir.path(), db.port, PASSWORD);
    // One run (interval 1h); a differing chunk is compared again after 3 s.
    let r = start(&cfg, api, "src.orders", "1h", "3s").await;
    // gravity "applies" the change while the checker waits to compare again.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    exec(
        &mut root,
        &["UPDATE dst.orders SET amount = 12.50 WHERE id = 10"],
    )
    .await;
    let body = next_run(r.addr, "orders", 0.0).await;
    assert_eq!(
        v(&body, "gravity_data_consistency_score", "orders", &[]),
        Some(1.0),
        "{body}"
    );
    root.close().await.unwrap();
    r.stop().await;
}

#[tokio::test]
async fn failed_target_login_is_a_failed_check_without_score() {
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start();
    let root = setup(&db).await;
    let api = common::stub_http(404).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = gravity_config(dir.path(), db.port, "wrong-Pw-x");
    let r = start(&cfg, api, "src.orders", "1s", "20ms").await;
    let l = labels("orders");
    let needles: Vec<&str> = l.iter().map(String::as_str).collect();
    let body = common::wait_metrics(r.addr, WAIT, "no failed check of orders", |body| {
        common::sample(body, "gravity_data_consistency_check_success", &needles) == Some(0.0)
    })
    .await;
    assert_eq!(
        common::sample(&body, "gravity_data_consistency_score", &needles),
        None
    );
    assert!(!body.contains("wrong-Pw-x") && !body.contains(PASSWORD));
    root.close().await.unwrap();
    r.stop().await;
}

/// `Handler_read_*` of this session (the checker's queries are run here, on our own
/// connection, so the session counters are exactly theirs).
async fn handler_reads(conn: &mut gravity_exporter::probe::mysql::MySqlConn) -> u64 {
    let rs = conn
        .query("SHOW SESSION STATUS WHERE Variable_name IN ('Handler_read_next', 'Handler_read_key', 'Handler_read_first', 'Handler_read_prev')")
        .await
        .unwrap();
    rs.rows
        .iter()
        .filter_map(|r| r.get(1).cloned().flatten())
        .map(|v| v.parse::<u64>().unwrap())
        .sum()
}

/// Rows a query reads, from the session's handler counters (`SHOW STATUS` itself reads
/// no index, so it adds nothing here).
async fn rows_read(conn: &mut gravity_exporter::probe::mysql::MySqlConn, sql: &str) -> u64 {
    let before = handler_reads(conn).await;
    conn.query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    handler_reads(conn).await - before
}

/// Issue 12, finding 6: with 300,000 rows and a composite primary key, one 1000-row chunk
/// must read O(chunk) rows (the row-comparison form read the whole index per chunk), and a
/// whole pass must take about as long as with a single-column key.
#[tokio::test]
async fn composite_key_chunks_read_only_their_rows() {
    use gravity_exporter::collector::consistency::{
        boundary_sql, checksum_sql, range_predicate, KeyColumn,
    };
    if !mariadb::require() {
        return;
    }
    let db = MariaDb::start();
    let mut root = setup(&db).await;
    const N: u64 = 300_000;
    exec(
        &mut root,
        &[
            "CREATE TABLE src.big1 (id INT PRIMARY KEY, v VARCHAR(20) NOT NULL)",
            "CREATE TABLE src.big2 (a INT, b INT, v VARCHAR(20) NOT NULL, PRIMARY KEY (a, b))",
            "INSERT INTO src.big1 SELECT seq, CONCAT('v', seq) FROM mysql.seq_1_to_300000",
            "INSERT INTO src.big2 SELECT seq DIV 100, seq MOD 100, CONCAT('v', seq) FROM mysql.seq_1_to_300000",
            "CREATE TABLE dst.big1 LIKE src.big1",
            "CREATE TABLE dst.big2 LIKE src.big2",
            "INSERT INTO dst.big1 SELECT * FROM src.big1",
            "INSERT INTO dst.big2 SELECT * FROM src.big2",
            "ANALYZE TABLE src.big1, src.big2, dst.big1, dst.big2",
        ],
    )
    .await;

    // One chunk in the middle of the composite-key table, with the checker's own SQL.
    let pk = vec![
        KeyColumn {
            name: "a".into(),
            numeric: true,
        },
        KeyColumn {
            name: "b".into(),
            numeric: true,
        },
    ];
    let lo = vec!["1500".to_string(), "42".to_string()];
    let bound = boundary_sql("src", "big2", &pk, Some(&lo), 1000);
    let hi_rs = root.query(&bound).await.unwrap();
    let hi: Vec<String> = hi_rs.rows[0].iter().map(|v| v.clone().unwrap()).collect();
    assert_eq!(hi, ["1510", "42"]);
    let cols = vec!["a".to_string(), "b".to_string(), "v".to_string()];
    let sum = checksum_sql("src", "big2", &cols, &pk, Some(&lo), Some(&hi));
    let rs = root.query(&sum).await.unwrap();
    assert_eq!(rs.value(0, "n"), Some("1000"));

    let explain = root
        .query(&format!(
            "EXPLAIN SELECT COUNT(*) FROM src.big2 WHERE {}",
            range_predicate(&pk, Some(&lo), Some(&hi))
        ))
        .await
        .unwrap();
    assert_eq!(explain.value(0, "type"), Some("range"), "{explain:?}");
    let estimated: u64 = explain.value(0, "rows").unwrap().parse().unwrap();
    assert!(
        estimated < 5_000,
        "EXPLAIN estimates {estimated} rows: {explain:?}"
    );

    let read_bound = rows_read(&mut root, &bound).await;
    let read_sum = rows_read(&mut root, &sum).await;
    eprintln!("composite key, one 1000-row chunk: boundary query reads {read_bound} rows, checksum {read_sum}");
    assert!(read_bound <= 1_100, "boundary query read {read_bound} rows");
    assert!(read_sum <= 1_100, "checksum query read {read_sum} rows");
    // The row-comparison form that was used before reads the whole index: the test can
    // tell the two apart.
    let old = format!(
        "SELECT COUNT(*) FROM src.big2 WHERE (a, b) > ({}, {}) AND (a, b) <= ({}, {})",
        lo[0], lo[1], hi[0], hi[1]
    );
    let read_old = rows_read(&mut root, &old).await;
    eprintln!("row-comparison form of the same chunk reads {read_old} rows");
    assert!(read_old > N / 2, "{read_old}");

    // Whole passes through the exporter: single-column key, then composite key.
    let api = common::stub_http(404).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = gravity_config(dir.path(), db.port, PASSWORD);
    // a pass that failed on a loaded machine (a query over its timeout) is tried again soon
    let r = start(&cfg, api, "src.big1, src.big2", "10s", "20ms").await;
    let mut took = Vec::new();
    for table in ["big1", "big2"] {
        let l = labels(table);
        let needles: Vec<&str> = l.iter().map(String::as_str).collect();
        let body = common::wait_metrics(
            r.addr,
            Duration::from_secs(120),
            &format!("no consistency run of {table}"),
            |body| common::sample(body, "gravity_data_consistency_score", &needles).is_some(),
        )
        .await;
        assert_eq!(
            v(&body, "gravity_data_consistency_score", table, &[]),
            Some(1.0)
        );
        assert_eq!(
            v(
                &body,
                "gravity_data_consistency_rows",
                table,
                &["side=\"source\""]
            ),
            Some(N as f64)
        );
        took.push(
            v(
                &body,
                "gravity_data_consistency_check_duration_seconds",
                table,
                &[],
            )
            .unwrap(),
        );
    }
    eprintln!(
        "pass over {N} rows, chunks of 1000: single-column key {:.2} s, composite key {:.2} s ({:.2}x)",
        took[0],
        took[1],
        took[1] / took[0]
    );
    root.close().await.unwrap();
    r.stop().await;
}
