//! The Kafka probe (`gravity_exporter::probe::kafka`) against the fake broker of the tests
//! (`gravity_double::kafka`, built on the `kafka-protocol` crate): ApiVersions, error codes,
//! garbage, hangs, refused ports, SASL PLAIN/SCRAM logins, TLS and mutual TLS. (These were
//! the probe's unit tests while the fake broker lived in the exporter's crate.)

use std::time::{Duration, Instant};

use gravity_double::kafka::{FakeBroker, Mode, SaslUsers, Security, ADVERTISED};
use gravity_double::tls::Pki;
use gravity_exporter::probe::kafka::{probe, probe_with, KafkaSecurity, Sasl, SaslMechanism};
use gravity_exporter::probe::{FailureReason, Secret};
use gravity_exporter::tls::TlsOptions;

const D: Duration = Duration::from_secs(3);

#[tokio::test]
async fn probe_ok_against_fake_broker() {
    let broker = FakeBroker::start(Mode::Ok).await.unwrap();
    let out = probe(&broker.endpoint(), D).await;
    assert!(out.ok, "{out:?}");
    assert!(out.latency > Duration::ZERO);
    assert_eq!(
        out.detail,
        format!("ApiVersions ok, {} api keys", ADVERTISED.len())
    );
    let seen = broker.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].api_key, 18);
    assert_eq!(seen[0].api_version, 0);
    assert_eq!(seen[0].client_id.as_deref(), Some("gravity-exporter"));
}

#[tokio::test]
async fn probe_error_codes() {
    let broker = FakeBroker::start(Mode::ErrorCode(35)).await.unwrap();
    let out = probe(&broker.endpoint(), D).await;
    assert_eq!(out.reason, Some(FailureReason::Protocol), "{out:?}");
    assert!(out.detail.contains("35"), "{}", out.detail);
    let broker = FakeBroker::start(Mode::ErrorCode(58)).await.unwrap();
    let out = probe(&broker.endpoint(), D).await;
    assert_eq!(out.reason, Some(FailureReason::Auth), "{out:?}");
}

#[tokio::test]
async fn probe_garbage_wrong_id_and_close_are_protocol() {
    for mode in [Mode::Garbage, Mode::WrongCorrelationId, Mode::Close] {
        let broker = FakeBroker::start(mode).await.unwrap();
        let out = probe(&broker.endpoint(), D).await;
        assert_eq!(
            out.reason,
            Some(FailureReason::Protocol),
            "{mode:?}: {out:?}"
        );
    }
}

#[tokio::test]
async fn probe_hang_times_out_within_deadline() {
    let broker = FakeBroker::start(Mode::Hang).await.unwrap();
    let deadline = Duration::from_millis(300);
    let start = Instant::now();
    let out = probe(&broker.endpoint(), deadline).await;
    let took = start.elapsed();
    assert_eq!(out.reason, Some(FailureReason::Timeout), "{out:?}");
    // the deadline is kept (never answered early), and a hang is cut: a bound that catches
    // a hang, not a timing target (those are in the benches)
    assert!(
        took >= deadline && took < deadline + Duration::from_secs(10),
        "{took:?}"
    );
    // The broker did get the request: the hang is in the answer, not the connect.
    assert_eq!(broker.requests().len(), 1);
}

#[tokio::test]
async fn probe_closed_port_is_refused() {
    let broker = FakeBroker::start(Mode::Ok).await.unwrap();
    let endpoint = broker.endpoint();
    drop(broker);
    tokio::task::yield_now().await;
    let out = probe(&endpoint, D).await;
    assert_eq!(out.reason, Some(FailureReason::Refused), "{out:?}");
}

fn sasl(mechanism: SaslMechanism, user: &str, pw: &str) -> Sasl {
    Sasl {
        mechanism,
        user: user.into(),
        password: Secret::new(pw),
    }
}

fn users(mechanisms: Vec<&'static str>) -> SaslUsers {
    SaslUsers {
        mechanisms,
        user: "gravity".into(),
        password: "sasl-pw-Xy9".into(),
        iterations: 4096,
    }
}

#[tokio::test]
async fn sasl_plain_and_scram_logins_are_verified() {
    use Security;
    let broker = FakeBroker::start_secure(
        Mode::Ok,
        Security {
            tls: None,
            sasl: Some(users(vec!["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])),
        },
    )
    .await
    .unwrap();
    for m in [
        SaslMechanism::Plain,
        SaslMechanism::ScramSha256,
        SaslMechanism::ScramSha512,
    ] {
        let ok = KafkaSecurity {
            tls: None,
            sasl: Some(sasl(m, "gravity", "sasl-pw-Xy9")),
        };
        let out = probe_with(&broker.endpoint(), &ok, D).await;
        assert!(out.ok, "{m:?}: {out:?}");
        assert!(out.detail.contains(m.name()), "{}", out.detail);
        for (user, pw) in [("gravity", "wrong-pw-Q7"), ("nobody", "sasl-pw-Xy9")] {
            let bad = KafkaSecurity {
                tls: None,
                sasl: Some(sasl(m, user, pw)),
            };
            let out = probe_with(&broker.endpoint(), &bad, D).await;
            assert_eq!(
                out.reason,
                Some(FailureReason::Auth),
                "{m:?} {user}: {out:?}"
            );
            assert!(out.detail.contains("58"), "{}", out.detail);
            assert!(!out.detail.contains(pw), "{}", out.detail);
        }
    }
    assert_eq!(
        broker.logins(),
        [
            "PLAIN:gravity",
            "SCRAM-SHA-256:gravity",
            "SCRAM-SHA-512:gravity"
        ]
    );
    // Without SASL the broker closes the connection on anything but the login APIs;
    // ApiVersions alone still answers.
    let out = probe(&broker.endpoint(), D).await;
    assert!(out.ok, "{out:?}");
}

#[tokio::test]
async fn sasl_mechanism_not_enabled_is_auth_plugin_unsupported() {
    let broker = FakeBroker::start_secure(
        Mode::Ok,
        Security {
            tls: None,
            sasl: Some(users(vec!["SCRAM-SHA-512"])),
        },
    )
    .await
    .unwrap();
    let sec = KafkaSecurity {
        tls: None,
        sasl: Some(sasl(SaslMechanism::Plain, "gravity", "sasl-pw-Xy9")),
    };
    let out = probe_with(&broker.endpoint(), &sec, D).await;
    assert_eq!(
        out.reason,
        Some(FailureReason::AuthPluginUnsupported),
        "{out:?}"
    );
    assert!(out.detail.contains("SCRAM-SHA-512"), "{}", out.detail);
    // A broker without SASL on that listener: the handshake closes the connection.
    let plain = FakeBroker::start(Mode::Ok).await.unwrap();
    let out = probe_with(&plain.endpoint(), &sec, D).await;
    assert_eq!(out.reason, Some(FailureReason::Protocol), "{out:?}");
}

#[tokio::test]
async fn tls_listener_success_and_each_failure_reason() {
    let pki = Pki::new().unwrap();
    let sasl_ssl = FakeBroker::start_secure(
        Mode::Ok,
        Security {
            tls: Some(pki.acceptor(false).unwrap()),
            sasl: Some(users(vec!["SCRAM-SHA-256"])),
        },
    )
    .await
    .unwrap();
    let scram = Some(sasl(SaslMechanism::ScramSha256, "gravity", "sasl-pw-Xy9"));
    let good = KafkaSecurity {
        tls: Some(pki.options()),
        sasl: scram.clone(),
    };
    let out = probe_with(&sasl_ssl.endpoint(), &good, D).await;
    assert!(out.ok, "{out:?}");
    assert!(out.detail.starts_with("TLS, "), "{}", out.detail);
    // Untrusted certificate.
    let mut other = good.clone();
    other.tls = Some(TlsOptions {
        ca_file: Some(pki.other_ca_file.clone()),
        ..Default::default()
    });
    let out = probe_with(&sasl_ssl.endpoint(), &other, D).await;
    assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
    assert!(out.detail.contains("certificate"), "{}", out.detail);
    // gravity's verify-ssl = true (verification off) accepts it.
    other.tls.as_mut().unwrap().insecure_skip_verify = true;
    assert!(probe_with(&sasl_ssl.endpoint(), &other, D).await.ok);
    // Plaintext client on the TLS listener: the broker's alert says TLS is required.
    let plain = KafkaSecurity {
        tls: None,
        sasl: scram.clone(),
    };
    let out = probe_with(&sasl_ssl.endpoint(), &plain, D).await;
    assert_eq!(out.reason, Some(FailureReason::TlsRequired), "{out:?}");
    // TLS client on a plaintext listener.
    let plaintext = FakeBroker::start(Mode::Ok).await.unwrap();
    let out = probe_with(&plaintext.endpoint(), &good, D).await;
    assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
    // A CA file that does not exist is a TLS setup failure, named in the detail.
    let mut missing = good.clone();
    missing.tls.as_mut().unwrap().ca_file = Some(pki.dir.path().join("nope.pem"));
    let out = probe_with(&sasl_ssl.endpoint(), &missing, D).await;
    assert_eq!(out.reason, Some(FailureReason::Tls), "{out:?}");
    assert!(out.detail.contains("nope.pem"), "{}", out.detail);
}

#[tokio::test]
async fn mutual_tls_needs_the_client_certificate() {
    let pki = Pki::new().unwrap();
    let broker = FakeBroker::start_secure(
        Mode::Ok,
        Security {
            tls: Some(pki.acceptor(true).unwrap()),
            sasl: None,
        },
    )
    .await
    .unwrap();
    let mut sec = KafkaSecurity {
        tls: Some(pki.options()),
        sasl: None,
    };
    let out = probe_with(&broker.endpoint(), &sec, D).await;
    assert!(!out.ok, "{out:?}");
    assert!(
        matches!(
            out.reason,
            Some(FailureReason::Tls | FailureReason::Protocol)
        ),
        "{out:?}"
    );
    let tls = sec.tls.as_mut().unwrap();
    tls.cert_file = Some(pki.client_cert_file.clone());
    tls.key_file = Some(pki.client_key_file.clone());
    let out = probe_with(&broker.endpoint(), &sec, D).await;
    assert!(out.ok, "{out:?}");
}

// ---------------------------------------------------------------------------------------
// The canary's topic reader (`probe::kafka_topic`) against the fake broker
// ---------------------------------------------------------------------------------------

use gravity_exporter::probe::kafka_topic::{TopicError, TopicReader};
use kafka_protocol::records::Compression;

async fn poll_values(r: &mut TopicReader) -> Result<Vec<(i32, i64, String)>, TopicError> {
    let mut got = Vec::new();
    r.poll(D, &mut |rec| {
        got.push((
            rec.partition,
            rec.offset,
            String::from_utf8_lossy(rec.value.as_deref().unwrap_or_default()).into_owned(),
        ))
    })
    .await?;
    got.sort();
    Ok(got)
}

#[tokio::test]
async fn topic_reader_reads_what_came_after_the_mark_over_sasl_ssl() {
    let pki = Pki::new().unwrap();
    let broker = FakeBroker::start_secure(
        Mode::Ok,
        Security {
            tls: Some(pki.acceptor(false).unwrap()),
            sasl: Some(users(vec!["SCRAM-SHA-256"])),
        },
    )
    .await
    .unwrap();
    broker.create_topic("canary", 3);
    // Old messages, before the mark: never read.
    assert_eq!(
        broker.append("canary", 0, &[b"old-0", b"old-1"], Compression::None),
        Some(0)
    );
    let sec = KafkaSecurity {
        tls: Some(pki.options()),
        sasl: Some(sasl(SaslMechanism::ScramSha256, "gravity", "sasl-pw-Xy9")),
    };
    let mut r = TopicReader::new(vec![broker.endpoint()], sec.clone(), "canary".into());
    r.mark_end(true, D).await.unwrap();
    assert_eq!(r.cursors().values().copied().collect::<Vec<_>>(), [2, 0, 0]);
    broker.append("canary", 0, &[b"a", b"b"], Compression::Snappy);
    broker.append("canary", 2, &[b"c"], Compression::Gzip);
    assert_eq!(
        poll_values(&mut r).await.unwrap(),
        [
            (0, 2, "a".to_string()),
            (0, 3, "b".to_string()),
            (2, 0, "c".to_string())
        ]
    );
    // Read once: the next poll (the broker waits FETCH_WAIT_MS for data) finds nothing.
    assert!(poll_values(&mut r).await.unwrap().is_empty());
    broker.append("canary", 1, &[b"d"], Compression::Snappy);
    assert_eq!(
        poll_values(&mut r).await.unwrap(),
        [(1, 0, "d".to_string())]
    );
    // The broker closed the kept connections (idle timeout): the next poll reconnects at
    // once, without an error.
    broker.close_connections();
    broker.append("canary", 2, &[b"f"], Compression::Snappy);
    assert_eq!(
        poll_values(&mut r).await.unwrap(),
        [(2, 1, "f".to_string())]
    );
    // The log truncated under the reader (retention): it starts again at the end.
    broker.truncate("canary");
    assert!(poll_values(&mut r).await.unwrap().is_empty());
    assert!(poll_values(&mut r).await.unwrap().is_empty());
    broker.append("canary", 0, &[b"e"], Compression::None);
    assert_eq!(
        poll_values(&mut r).await.unwrap(),
        [(0, 4, "e".to_string())]
    );
    // Every connection logged in with SCRAM over TLS.
    assert!(broker.logins().iter().all(|l| l == "SCRAM-SHA-256:gravity"));
    assert!(broker.logins().len() >= 2, "{:?}", broker.logins());

    // A topic that does not exist, a wrong password: clear errors, no secret.
    let mut missing = TopicReader::new(vec![broker.endpoint()], sec.clone(), "nope".into());
    let e = missing.mark_end(true, D).await.unwrap_err().to_string();
    assert!(e.contains("UNKNOWN_TOPIC_OR_PARTITION"), "{e}");
    let mut bad = sec.clone();
    bad.sasl = Some(sasl(SaslMechanism::ScramSha256, "gravity", "wrong-pw-Q7"));
    let mut wrong = TopicReader::new(vec![broker.endpoint()], bad, "canary".into());
    let e = poll_values(&mut wrong).await.unwrap_err().to_string();
    assert!(
        e.contains("SASL SCRAM-SHA-256 login of user gravity failed"),
        "{e}"
    );
    assert!(e.contains("SASL_AUTHENTICATION_FAILED"), "{e}");
    assert!(!e.contains("wrong-pw-Q7"), "{e}");
}
