//! The exporter's MongoDB client against the fake mongod of `gravity_double::mongo` (no
//! MongoDB server can be installed here): `hello`/`isMaster`, SCRAM-SHA-1/256, TLS and every
//! failure reason of the probe; the oplog bounds, the canary's upsert by `_id`, and the oplog
//! window and headroom through `/metrics`. (The prober over a Mongo source and Kafka brokers
//! is `tests/connections.rs::probes_run_concurrently_with_reasons`.)
//!
//! These tests were the unit tests of `src/probe/mongo.rs` while the fake lived in the
//! exporter's crate; the shipped crate holds the exporter only (docs/architecture.md).

mod common;

use std::time::{Duration, Instant};

use gravity_double::mongo::{bson, FakeMongod, Mode, MongoUser, OplogSpec, Security};
use gravity_exporter::probe::mongo::{check_then, oplog_bounds, FieldValue};
use gravity_exporter::probe::mongo::{hello, probe, probe_with, MongoLogin, MongoSecurity};
use gravity_exporter::probe::scram::ScramHash;
use gravity_exporter::probe::WireError;
use gravity_exporter::probe::{FailureReason, Secret};
use gravity_exporter::tls::TlsOptions;

const D: Duration = Duration::from_secs(3);

#[tokio::test]
async fn probe_primary_and_secondary() {
    let server = FakeMongod::start(Mode::Primary).await.unwrap();
    let out = probe(&server.endpoint(), D).await;
    assert!(out.ok, "{out:?}");
    assert!(out.latency > Duration::ZERO);
    assert_eq!(out.detail, "hello ok: writable primary, maxWireVersion 17");
    assert_eq!(server.commands(), ["hello"]);

    let server = FakeMongod::start(Mode::Secondary).await.unwrap();
    let reply = hello(&server.endpoint(), D).await.unwrap();
    assert!(!reply.is_writable_primary);
    assert!(reply.secondary);
    assert_eq!(reply.set_name.as_deref(), Some("rs0"));
    let out = probe(&server.endpoint(), D).await;
    assert!(out.ok, "{out:?}");
    assert_eq!(
        out.detail,
        "hello ok: secondary, set rs0, maxWireVersion 17"
    );
}

#[tokio::test]
async fn probe_falls_back_to_is_master() {
    let server = FakeMongod::start(Mode::LegacyOnly).await.unwrap();
    let reply = hello(&server.endpoint(), D).await.unwrap();
    assert!(reply.legacy && reply.is_writable_primary);
    assert_eq!(server.commands(), ["hello", "isMaster"]);
}

#[tokio::test]
async fn probe_command_error() {
    let server = FakeMongod::start(Mode::CommandError {
        code: 211,
        message: "KeyNotFound: no keys".into(),
    })
    .await
    .unwrap();
    let out = probe(&server.endpoint(), D).await;
    assert_eq!(out.reason, Some(FailureReason::Protocol), "{out:?}");
    assert!(out.detail.contains("211"), "{}", out.detail);
}

#[tokio::test]
async fn probe_garbage_and_bad_bson_are_protocol() {
    for mode in [Mode::Garbage, Mode::BadBson] {
        let server = FakeMongod::start(mode.clone()).await.unwrap();
        let out = probe(&server.endpoint(), D).await;
        assert_eq!(
            out.reason,
            Some(FailureReason::Protocol),
            "{mode:?}: {out:?}"
        );
    }
}

#[tokio::test]
async fn probe_hang_times_out_within_deadline() {
    let server = FakeMongod::start(Mode::Hang).await.unwrap();
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let out = probe(&server.endpoint(), deadline).await;
    let took = start.elapsed();
    assert_eq!(out.reason, Some(FailureReason::Timeout), "{out:?}");
    // the deadline is kept (never answered early), and a hang is cut: a bound that catches
    // a hang, not a timing target (those are in the benches)
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(10),
        "{took:?}"
    );
    assert_eq!(server.commands(), ["hello"]);
}

fn secure_user(mechanisms: Vec<ScramHash>) -> MongoUser {
    MongoUser {
        user: "reader".into(),
        password: "mongo-pw-Zq4".into(),
        db: "admin".into(),
        mechanisms,
        can_write: false,
    }
}

fn login(user: &str, pw: &str) -> MongoLogin {
    MongoLogin {
        user: user.into(),
        password: Secret::new(pw),
        auth_source: "admin".into(),
    }
}

#[tokio::test]
async fn scram_sha1_and_sha256_logins_are_verified() {
    for (mechs, want) in [
        (vec![ScramHash::Sha1, ScramHash::Sha256], "SCRAM-SHA-256"),
        (vec![ScramHash::Sha1], "SCRAM-SHA-1"),
    ] {
        let server = FakeMongod::start_secure(
            Mode::Primary,
            Security {
                tls: None,
                users: vec![secure_user(mechs)],
            },
        )
        .await
        .unwrap();
        let sec = MongoSecurity {
            tls: None,
            login: Some(login("reader", "mongo-pw-Zq4")),
        };
        let out = probe_with(&server.endpoint(), &sec, D).await;
        assert!(out.ok, "{out:?}");
        assert!(
            out.detail.contains(&format!("{want} login of reader ok")),
            "{}",
            out.detail
        );
        for (user, pw) in [("reader", "wrong-pw-K2"), ("nobody", "mongo-pw-Zq4")] {
            let sec = MongoSecurity {
                tls: None,
                login: Some(login(user, pw)),
            };
            let out = probe_with(&server.endpoint(), &sec, D).await;
            assert_eq!(out.reason, Some(FailureReason::Auth), "{user}: {out:?}");
            assert!(out.detail.contains("18"), "{}", out.detail);
            assert!(!out.detail.contains(pw), "{}", out.detail);
        }
        assert!(server.commands().iter().any(|c| c == "saslContinue"));
    }
}

#[tokio::test]
async fn mongo_tls_success_and_each_failure_reason() {
    let pki = gravity_double::tls::Pki::new().unwrap();
    let server = FakeMongod::start_secure(
        Mode::Secondary,
        Security {
            tls: Some(pki.acceptor(false).unwrap()),
            users: vec![secure_user(vec![ScramHash::Sha256])],
        },
    )
    .await
    .unwrap();
    let good = MongoSecurity {
        tls: Some(pki.options()),
        login: Some(login("reader", "mongo-pw-Zq4")),
    };
    let out = probe_with(&server.endpoint(), &good, D).await;
    assert!(out.ok, "{out:?}");
    assert!(out.detail.contains("TLS"), "{}", out.detail);
    let mut untrusted = good.clone();
    untrusted.tls = Some(TlsOptions {
        ca_file: Some(pki.other_ca_file.clone()),
        ..Default::default()
    });
    let out = probe_with(&server.endpoint(), &untrusted, D).await;
    assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
    let plain = MongoSecurity {
        tls: None,
        login: good.login.clone(),
    };
    let out = probe_with(&server.endpoint(), &plain, D).await;
    assert_eq!(out.reason, Some(FailureReason::TlsRequired), "{out:?}");
    let plaintext_server = FakeMongod::start(Mode::Primary).await.unwrap();
    let out = probe_with(&plaintext_server.endpoint(), &good, D).await;
    assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
}

fn reader_and_writer() -> Security {
    Security::users(vec![
        MongoUser::reader("reader", "mongo-pw"),
        MongoUser::writer("canary", "canary-pw"),
    ])
}

fn sec(user: &str, pw: &str) -> MongoSecurity {
    MongoSecurity {
        tls: None,
        login: Some(login(user, pw)),
    }
}

/// The oplog's bounds as the exporter reads them are the fake's, timestamps and all.
#[tokio::test]
async fn oplog_bounds_are_read_with_two_finds() {
    let server = FakeMongod::start_secure(Mode::Primary, reader_and_writer())
        .await
        .unwrap();
    let (_, got) = check_then(&server.endpoint(), &sec("reader", "mongo-pw"), D, |_, s| {
        Box::pin(async move { oplog_bounds(s).await })
    })
    .await
    .unwrap();
    let got = got.expect("the fake has an oplog");
    let (oldest, newest) = server.oplog_bounds().unwrap();
    let ts = |t: bson::Timestamp| (u64::from(t.time) << 32) | u64::from(t.increment);
    assert_eq!(got.oldest, ts(oldest));
    // the fake appends a no-op every second: the newest read lies between the two reads
    assert!(got.newest >= ts(oldest) && got.newest <= ts(server.oplog_bounds().unwrap().1));
    assert!(newest.time >= oldest.time + 3500, "{oldest:?} {newest:?}");
    let finds = server.commands().iter().filter(|c| *c == "find").count();
    assert_eq!(finds, 2);
}

/// Upsert by `_id`: one document however often it is written; the writer needs the
/// grant (`Unauthorized`, 13) and a writable primary (`NotWritablePrimary`, 10107).
#[tokio::test]
async fn upsert_by_id_keeps_one_document_and_reports_refusals() {
    use gravity_exporter::probe::mongo::{find_i64_by_id, upsert_by_id};
    let server = FakeMongod::start_secure(Mode::Primary, reader_and_writer())
        .await
        .unwrap();
    for seq in 1..=3 {
        let fields = vec![
            ("pipeline", FieldValue::String("p1".into())),
            ("seq", FieldValue::Int64(seq)),
        ];
        check_then(
            &server.endpoint(),
            &sec("canary", "canary-pw"),
            D,
            |_, s| {
                Box::pin(async move {
                    upsert_by_id(s, "gravity_canary", "heartbeat", "p1", &fields).await
                })
            },
        )
        .await
        .unwrap();
    }
    let docs = server.documents("gravity_canary.heartbeat");
    assert_eq!(docs.len(), 1, "{docs:?}");
    assert_eq!(docs[0].get_i64("seq").unwrap(), 3);
    assert_eq!(docs[0].get_str("_id").unwrap(), "p1");
    let (_, seq) = check_then(&server.endpoint(), &sec("reader", "mongo-pw"), D, |_, s| {
        Box::pin(async move { find_i64_by_id(s, "gravity_canary", "heartbeat", "p1", "seq").await })
    })
    .await
    .unwrap();
    assert_eq!(seq, Some(3));
    // the writes are in the oplog: one insert (the upsert), then updates
    let ops: Vec<String> = server
        .oplog()
        .into_iter()
        .filter(|e| e.ns == "gravity_canary.heartbeat")
        .map(|e| e.op)
        .collect();
    assert_eq!(ops, ["i", "u", "u"]);

    let fields = vec![("seq", FieldValue::Int64(9))];
    let e = check_then(&server.endpoint(), &sec("reader", "mongo-pw"), D, |_, s| {
        Box::pin(async move { upsert_by_id(s, "gravity_canary", "heartbeat", "p1", &fields).await })
    })
    .await
    .unwrap_err();
    assert!(matches!(e, WireError::Command { code: 13, .. }), "{e:?}");
    assert_eq!(e.reason(), FailureReason::Auth);

    server.set_writable(false);
    let fields = vec![("seq", FieldValue::Int64(9))];
    let e = check_then(
        &server.endpoint(),
        &sec("canary", "canary-pw"),
        D,
        |_, s| {
            Box::pin(
                async move { upsert_by_id(s, "gravity_canary", "heartbeat", "p1", &fields).await },
            )
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, WireError::Command { code: 10107, .. }), "{e:?}");
    assert_eq!(
        server.documents("gravity_canary.heartbeat")[0]
            .get_i64("seq")
            .unwrap(),
        3
    );
}

fn mongo_status(pipeline: &str, position: u64) -> String {
    format!(
        "{{\"name\":\"{pipeline}\",\"configHash\":\"x\",\"position\":\"{{\\\"start_position\\\":null,\\\"current_position\\\":{position}}}\",\"watermarks\":null,\"stage\":\"Incremental\",\"version\":\"v0.9.54\"}}"
    )
}

/// The oplog window and gravity's headroom in it, end to end through /metrics: against the
/// fake's real timestamps, then after the oplog rolled over past gravity's position.
#[tokio::test]
async fn oplog_window_and_headroom_through_metrics() {
    let server = FakeMongod::start_with(
        Mode::Primary,
        common::mongo_reader(),
        OplogSpec {
            // no no-ops while the test runs: the window stays put
            tick: Duration::from_secs(3600),
            ..OplogSpec::default()
        },
    )
    .await
    .unwrap();
    let (oldest, newest) = server.oplog_bounds().unwrap();
    let position_secs = oldest.time + 1800;
    let position = (u64::from(position_secs) << 32) | 5;
    let api = common::stub_routes(
        vec![
            ("/status", 200, mongo_status("oplogtest", position)),
            ("/healthz", 200, String::new()),
        ],
        404,
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gravity.toml");
    std::fs::write(
        &cfg,
        format!(
            "name = \"oplogtest\"\n[input]\ntype = \"mongo\"\nmode = \"stream\"\n[input.config.source]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"reader\"\npassword = \"mongo-pw\"\n[output]\ntype = \"async-kafka\"\n[output.config.kafka-global-config]\nbroker-addrs = [\"127.0.0.1:9\"]\n",
            server.addr().port()
        ),
    )
    .unwrap();
    let r = common::start(common::settings(&[
        "--gravity.config",
        cfg.to_str().unwrap(),
        "--gravity.process-pattern",
        "^no-such-gravity-process-for-tests$",
        "--gravity.url",
        &format!("http://{api}"),
        "--collector.interval",
        "200ms",
        "--probe.interval",
        "200ms",
        "--probe.timeout",
        "2s",
    ]))
    .await;
    let want_window = f64::from(newest.time - oldest.time);
    let body = common::wait_metrics(
        r.addr,
        Duration::from_secs(20),
        "oplog headroom 1800",
        |b| common::sample(b, "gravity_source_oplog_headroom_seconds", &[]) == Some(1800.0),
    )
    .await;
    assert_eq!(
        common::sample(
            &body,
            "gravity_source_oplog_window_seconds",
            &["pipeline=\"oplogtest\""]
        ),
        Some(want_window)
    );
    // The oplog rolls over past gravity's position: 100 s of it gone.
    server.truncate_oplog_before(bson::Timestamp {
        time: position_secs + 100,
        increment: 0,
    });
    let (new_oldest, _) = server.oplog_bounds().unwrap();
    let want = -f64::from(new_oldest.time - position_secs);
    assert!(want <= -100.0, "{want}");
    let body = common::wait_metrics(
        r.addr,
        Duration::from_secs(20),
        "oplog headroom negative",
        |b| common::sample(b, "gravity_source_oplog_headroom_seconds", &[]) == Some(want),
    )
    .await;
    assert_eq!(
        common::sample(&body, "gravity_source_oplog_window_seconds", &[]),
        Some(f64::from(newest.time - new_oldest.time))
    );
    let missing = |b: &str| {
        common::sample(
            b,
            "gravity_source_privilege_missing",
            &["pipeline=\"oplogtest\"", "privilege=\"read on local\""],
        )
    };
    assert_eq!(missing(&body), Some(0.0));
    // The read role on local is taken: a finding (the metric, the page), not a failing
    // collector; the oplog figures are gone rather than stale.
    server.set_can_read_local("reader", false);
    let body = common::wait_metrics(
        r.addr,
        Duration::from_secs(20),
        "read on local missing",
        |b| missing(b) == Some(1.0),
    )
    .await;
    assert_eq!(
        common::sample(&body, "gravity_source_oplog_window_seconds", &[]),
        None
    );
    assert_eq!(
        common::sample(
            &body,
            "gravity_exporter_collector_success",
            &["collector=\"source\""]
        ),
        Some(1.0)
    );
    let (code, api) = common::get(r.addr, "/api/status").await;
    assert_eq!(code, 200);
    assert!(api.contains("read on local"), "{api}");
    // given back: the window returns
    server.set_can_read_local("reader", true);
    common::wait_metrics(
        r.addr,
        Duration::from_secs(20),
        "read on local given back",
        |b| {
            missing(b) == Some(0.0)
                && common::sample(b, "gravity_source_oplog_window_seconds", &[]).is_some()
        },
    )
    .await;
}
