//! Tests of the monitoring pack's alerting half: alerts/*.rules.yml, alerts/tests/,
//! alerts/alertmanager.yml, docs/runbook.md and alerts/README.md.
//!
//! promtool, amtool and Alertmanager must be installed (scripts/test.sh installs them);
//! GX_SKIP_PROMTOOL=1 skips the tests that need them.

#[path = "common/rules.rs"]
mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regex::Regex;
use rules::{read, require_tool, run};

const RUNBOOK_PREFIX: &str =
    "https://github.com/gravity-exporter/gravity-exporter/blob/main/docs/runbook.md#";
const DASHBOARD_PREFIX: &str = "https://grafana.example.com/d/";

fn priority_of(severity: &str) -> &'static str {
    match severity {
        "P0" | "P1" => "critical",
        "P2" => "warning",
        "P3" => "info",
        other => panic!("unknown severity {other}"),
    }
}

fn test_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(rules::repo_root().join("alerts/tests"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".test.yml"))
        .map(|n| format!("alerts/tests/{n}"))
        .collect();
    v.sort();
    v
}

#[test]
fn rule_files_pass_promtool_check() {
    let Some(promtool) = require_tool(&["promtool"]) else {
        return;
    };
    let (ok, out) = run(
        &promtool,
        &["check", "rules", rules::RECORDING_RULES, rules::ALERT_RULES],
    );
    assert!(ok, "promtool check rules failed:\n{out}");
    assert_eq!(out.matches("SUCCESS").count(), 2, "{out}");
    for bad in ["WARNING", "FAILED", "error"] {
        assert!(!out.contains(bad), "promtool says {bad}:\n{out}");
    }
}

#[test]
fn promtool_unit_tests_pass() {
    let Some(promtool) = require_tool(&["promtool"]) else {
        return;
    };
    let files = test_files();
    assert!(
        files.len() >= 4,
        "expected alerts/tests/*.test.yml, found {files:?}"
    );
    let mut args = vec!["test", "rules"];
    args.extend(files.iter().map(String::as_str));
    let (ok, out) = run(&promtool, &args);
    assert!(ok, "promtool test rules failed:\n{out}");
    assert_eq!(out.matches("SUCCESS").count(), files.len(), "{out}");
}

#[test]
fn shortened_rules_still_load() {
    let Some(promtool) = require_tool(&["promtool"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.rules.yml");
    std::fs::write(&short, rules::shorten_for(&read(rules::ALERT_RULES), "5s")).unwrap();
    let rec = rules::repo_root().join(rules::RECORDING_RULES);
    let (ok, out) = run(
        &promtool,
        &[
            "check",
            "rules",
            rec.to_str().unwrap(),
            short.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
}

/// One route per severity, and anything without one goes to the ticket queue.
const ROUTES: &[(&str, &[&str])] = &[
    (
        "pager",
        &[
            "severity=P0",
            "priority=critical",
            "pipeline=orders",
            "alertname=GravityDown",
        ],
    ),
    (
        "urgent",
        &[
            "severity=P1",
            "priority=critical",
            "pipeline=orders",
            "alertname=GravityReplicationLagHigh",
        ],
    ),
    (
        "ticket",
        &[
            "severity=P2",
            "priority=warning",
            "pipeline=orders",
            "alertname=GravityQueueSaturated",
        ],
    ),
    (
        "digest",
        &[
            "severity=P3",
            "priority=info",
            "pipeline=orders",
            "alertname=GravityDDLApplied",
        ],
    ),
    ("ticket", &["pipeline=orders", "alertname=NoSeverity"]),
];

#[test]
fn alertmanager_config_is_valid_and_routes_by_severity() {
    let Some(amtool) = require_tool(&["amtool"]) else {
        return;
    };
    let (ok, out) = run(&amtool, &["check-config", "alerts/alertmanager.yml"]);
    assert!(ok && out.contains("SUCCESS"), "amtool check-config:\n{out}");
    assert!(
        out.contains("9 inhibit rules") && out.contains("4 receivers"),
        "{out}"
    );
    for (want, labels) in ROUTES {
        let mut args = vec![
            "config",
            "routes",
            "test",
            "--config.file=alerts/alertmanager.yml",
        ];
        let verify = format!("--verify.receivers={want}");
        args.push(&verify);
        args.extend_from_slice(labels);
        let (ok, out) = run(&amtool, &args);
        let got = out.lines().next().unwrap_or("").trim();
        assert!(
            ok && got == *want,
            "{labels:?}: routed to {got:?}, want {want}:\n{out}"
        );
    }
    // The shell version of the same checks.
    let (ok, out) = run(std::path::Path::new("alerts/tests/amtool-routes.sh"), &[]);
    assert!(ok, "alerts/tests/amtool-routes.sh:\n{out}");
}

/// A real Alertmanager on a free loopback port, with the given configuration file.
struct LiveAlertmanager {
    addr: SocketAddr,
    _guard: KillOnDrop,
    _dir: tempfile::TempDir,
}

fn start_alertmanager(am: &std::path::Path, config_yaml: &str) -> LiveAlertmanager {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("alertmanager.yml");
    std::fs::write(&cfg, config_yaml).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(am)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
    let guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(addr, "GET", "/-/ready", "").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "alertmanager did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    LiveAlertmanager {
        addr,
        _guard: guard,
        _dir: dir,
    }
}

/// The labels of a posted alert: identity (namespace, job, pipeline), name, severity.
fn alert_json(
    ns: &str,
    job: &str,
    pipeline: &str,
    name: &str,
    ends_in: Option<Duration>,
) -> serde_json::Value {
    let severity = rules::alert_rules()
        .iter()
        .find(|r| r["alert"].as_str() == Some(name))
        .and_then(|r| r["labels"]["severity"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("no alert {name} in the rules"));
    let mut a = serde_json::json!({"labels": {
        "alertname": name, "severity": severity, "priority": priority_of(&severity),
        "namespace": ns, "job": job, "pipeline": pipeline,
    }});
    if let Some(d) = ends_in {
        let t = time::OffsetDateTime::now_utc() + d;
        a["endsAt"] = serde_json::Value::String(
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
        );
    }
    a
}

type Identity = (String, String, String);
/// (namespace, job, pipeline, alertname)
type AlertKey = (String, String, String, String);

/// (namespace, job, pipeline, alertname) -> (state, alertnames of the alerts that inhibit it)
fn alert_states(addr: SocketAddr) -> BTreeMap<AlertKey, (String, Vec<String>)> {
    let (code, text) = http(addr, "GET", "/api/v2/alerts", "").expect("get alerts");
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("alerts JSON");
    let all = v.as_array().unwrap();
    let by_fp: BTreeMap<String, (Identity, String)> = all
        .iter()
        .map(|a| {
            let l = &a["labels"];
            let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
            (
                a["fingerprint"].as_str().unwrap().to_string(),
                ((s("namespace"), s("job"), s("pipeline")), s("alertname")),
            )
        })
        .collect();
    all.iter()
        .map(|a| {
            let l = &a["labels"];
            let s = |k: &str| l[k].as_str().unwrap_or("").to_string();
            let id = (s("namespace"), s("job"), s("pipeline"));
            let by: Vec<String> = a["status"]["inhibitedBy"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|fp| by_fp.get(fp.as_str()?))
                .map(|(src_id, name)| {
                    // an inhibition across pipeline identities is a bug in itself
                    assert_eq!(
                        src_id,
                        &id,
                        "{} muted by {name} of {src_id:?}",
                        s("alertname")
                    );
                    name.clone()
                })
                .collect();
            (
                (id.0, id.1, id.2, s("alertname")),
                (a["status"]["state"].as_str().unwrap().to_string(), by),
            )
        })
        .collect()
}

/// What one rule of `inhibit_rules` must mute, and what it must not.
struct InhibitCase {
    rule: &'static str,
    /// firing on the pipeline (prod, gravity, <pipeline>)
    sources: &'static [&'static str],
    /// muted, by one of the sources
    muted: &'static [&'static str],
    /// same pipeline, still delivered
    kept: &'static [&'static str],
}

const INHIBIT_CASES: &[InhibitCase] = &[
    InhibitCase {
        rule: "1 cause first: target unreachable",
        sources: &["GravityTargetUnreachable"],
        muted: &[
            "GravityDown",
            "GravityCrashLooping",
            "GravityPipelineStalled",
            "GravityReplicationLagHigh",
            "GravityOutputStopped",
        ],
        // the cause itself pages (GravityDown used to mute it), the supervisor giving up
        // still needs a hand, the purge clocks keep running, a dead exporter is its own problem
        kept: &[
            "GravitySupervisorGaveUp",
            "GravityBinlogPurgeImminent",
            "GravityBinlogRetentionRunningOut",
            "GravityExporterDown",
        ],
    },
    InhibitCase {
        rule: "1 cause first: source unreachable",
        sources: &["GravitySourceUnreachable"],
        muted: &[
            "GravityDown",
            "GravityCrashLooping",
            "GravityBinlogPositionStalled",
            "GravityBinlogFileGapGrowing",
            "GravityReplicationLagHigh",
        ],
        kept: &["GravityBinlogPurgeImminent"],
    },
    InhibitCase {
        rule: "1 cause first: probe DB unreachable",
        sources: &["GravityProbeDBUnreachable"],
        muted: &[
            "GravityDown",
            "GravityCrashLooping",
            "GravitySlowCrashLoop",
            "GravityPipelineStalled",
            "GravityOutputStopped",
        ],
        kept: &["GravityTargetUnreachable"],
    },
    InhibitCase {
        rule: "1 cause first: binlog purged",
        sources: &["GravityBinlogPurged"],
        muted: &["GravityCrashLooping", "GravityBinlogFileGapGrowing"],
        kept: &["GravityBinlogRetentionRunningOut"],
    },
    InhibitCase {
        rule: "1 cause first: oplog position lost",
        sources: &["GravityOplogPositionLost"],
        muted: &["GravityCrashLooping", "GravityPipelineStalled"],
        kept: &["GravityOplogHeadroomLow"],
    },
    InhibitCase {
        rule: "2 crash loop replaces GravityDown",
        sources: &["GravityCrashLooping"],
        muted: &["GravityDown"],
        kept: &["GravitySourceUnreachable", "GravityBinlogPurgeImminent"],
    },
    InhibitCase {
        rule: "2+3 the supervisor gave up",
        sources: &["GravitySupervisorGaveUp"],
        muted: &["GravityDown", "GravityCrashLooping"],
        kept: &["GravityTargetUnreachable"],
    },
    InhibitCase {
        rule: "4 gravity down explains the stall",
        sources: &["GravityDown"],
        muted: &[
            "GravityPipelineStalled",
            "GravityBinlogPositionStalled",
            "GravityBinlogFileGapGrowing",
            "GravityStopped",
        ],
        kept: &[
            "GravitySourceUnreachable",
            "GravityTargetUnreachable",
            "GravityProbeDBUnreachable",
            "GravityBinlogPurgeImminent",
            "GravityBinlogPurged",
            "GravityBinlogDisabled",
        ],
    },
    InhibitCase {
        rule: "1b an unreachable source is the unreachable position DB",
        sources: &["GravitySourceUnreachable"],
        muted: &["GravityProbeDBUnreachable", "GravityCanaryLost"],
        kept: &["GravityTargetUnreachable", "GravityPipelineDark"],
    },
    InhibitCase {
        rule: "1c a purged position is no longer about to be purged",
        sources: &["GravityBinlogPurged"],
        muted: &["GravityBinlogPurgeImminent"],
        kept: &[
            "GravitySourceUnreachable",
            "GravityBinlogRetentionRunningOut",
        ],
    },
    InhibitCase {
        rule: "4b a stall is one page, not also its symptoms",
        sources: &["GravityPipelineStalled"],
        muted: &[
            "GravityBinlogPositionStalled",
            "GravityBinlogFileGapGrowing",
            "GravityCanaryLost",
            "GravityLongDDL",
        ],
        kept: &[
            "GravitySourceUnreachable",
            "GravityBinlogPurgeImminent",
            "GravityPipelineDark",
        ],
    },
    InhibitCase {
        rule: "4c a dark pipeline is one page, not also ExporterDown",
        sources: &["GravityPipelineDark"],
        muted: &["GravityExporterDown"],
        kept: &["GravityDown", "GravityPipelineStalled"],
    },
    InhibitCase {
        rule: "5 a P0 mutes the P1-P3 it explains",
        sources: &["GravityPipelineStalled"],
        muted: &[
            "GravityReplicationLagHigh",
            "GravityErrorRateHigh",
            "GravityQueueSaturated",
            "GravityRestarted",
            "GravityExporterCollectorFailing",
        ],
        kept: &["GravityBinlogRetentionRunningOut", "GravityExporterDown"],
    },
];

/// A real Alertmanager with the shipped alerts/alertmanager.yml: each inhibition rule mutes
/// what it should on the same pipeline identity, keeps what it should, and never reaches
/// another namespace, another pipeline or another job.
#[test]
fn alertmanager_inhibits_cause_first_within_one_pipeline_identity() {
    let Some(am) = require_tool(&["prometheus-alertmanager", "alertmanager"]) else {
        return;
    };
    let live = start_alertmanager(&am, &read("alerts/alertmanager.yml"));
    let mut posted = Vec::new();
    // (namespace, job, pipeline, alertname) -> (want state, allowed inhibitors)
    let mut want: BTreeMap<AlertKey, (&str, Vec<&str>)> = BTreeMap::new();
    let key = |ns: &str, job: &str, p: &str, a: &str| {
        (
            ns.to_string(),
            job.to_string(),
            p.to_string(),
            a.to_string(),
        )
    };
    // Every checked alert gets a pipeline of its own, with only the case's sources beside it,
    // so that each verdict is about one rule and one alert.
    for (i, c) in INHIBIT_CASES.iter().enumerate() {
        let with_sources = |p: &str, posted: &mut Vec<serde_json::Value>| {
            for s in c.sources {
                posted.push(alert_json("prod", "gravity", p, s, None));
            }
        };
        for (j, m) in c.muted.iter().enumerate() {
            let p = format!("c{i}-m{j}");
            with_sources(&p, &mut posted);
            for s in c.sources {
                want.insert(key("prod", "gravity", &p, s), ("active", vec![]));
            }
            posted.push(alert_json("prod", "gravity", &p, m, None));
            want.insert(
                key("prod", "gravity", &p, m),
                ("suppressed", c.sources.to_vec()),
            );
            // the same alert of the same pipeline name in another namespace, of another
            // pipeline, of another job: never muted by this pipeline's cause
            for (ns, job, pipe) in [
                ("staging", "gravity", p.clone()),
                ("prod", "gravity", format!("{p}-other")),
                ("prod", "gravity-b", p.clone()),
            ] {
                posted.push(alert_json(ns, job, &pipe, m, None));
                want.insert(key(ns, job, &pipe, m), ("active", vec![]));
            }
        }
        for (j, k) in c.kept.iter().enumerate() {
            let p = format!("c{i}-k{j}");
            with_sources(&p, &mut posted);
            posted.push(alert_json("prod", "gravity", &p, k, None));
            want.insert(key("prod", "gravity", &p, k), ("active", vec![]));
        }
    }
    let body = serde_json::Value::Array(posted).to_string();
    let r = http(live.addr, "POST", "/api/v2/alerts", &body).expect("post alerts");
    assert_eq!(r.0, 200, "{}", r.1);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = alert_states(live.addr);
        let mut diff = Vec::new();
        for (k, (state, allowed)) in &want {
            match got.get(k) {
                None => diff.push(format!("{k:?}: not in Alertmanager")),
                Some((s, by)) if s != state => {
                    diff.push(format!("{k:?}: {s} (inhibited by {by:?}), want {state}"))
                }
                Some((_, by))
                    if *state == "suppressed"
                        && !by.iter().any(|b| allowed.contains(&b.as_str())) =>
                {
                    diff.push(format!(
                        "{k:?}: inhibited by {by:?}, want one of {allowed:?}"
                    ))
                }
                Some((_, by)) if *state == "active" && !by.is_empty() => {
                    diff.push(format!("{k:?}: active but inhibitedBy {by:?}"))
                }
                _ => {}
            }
        }
        if diff.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inhibition differs from alerts/alertmanager.yml's promise (rules: {:?}):\n{}",
            INHIBIT_CASES.iter().map(|c| c.rule).collect::<Vec<_>>(),
            diff.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Issue 22: two pipelines behind ONE exporter (same namespace, job and instance; one
/// pipeline label each) page independently with the shipped alerts/alertmanager.yml. orders
/// crashes (GravityDown): its own stall and P3 are muted, as on a host of its own. billing's
/// stall pages, and its lag and collector failure are muted by that stall only (alert_states
/// fails on any inhibition across pipelines); billing2, without a P0 of its own, keeps every
/// alert active beside orders' crash.
#[test]
fn alertmanager_keeps_pipelines_of_one_exporter_apart() {
    let Some(am) = require_tool(&["prometheus-alertmanager", "alertmanager"]) else {
        return;
    };
    let live = start_alertmanager(&am, &read("alerts/alertmanager.yml"));
    let on_host = |pipeline: &str, name: &str| {
        let mut a = alert_json("prod", "gravity", pipeline, name, None);
        a["labels"]["instance"] = serde_json::Value::String("db1:9810".into());
        a
    };
    let orders = [
        ("GravityDown", "active"),
        ("GravityPipelineStalled", "suppressed"),
        ("GravityRestarted", "suppressed"),
    ];
    let billing = [
        ("GravityPipelineStalled", "active"),
        ("GravityReplicationLagHigh", "suppressed"),
        ("GravityExporterCollectorFailing", "suppressed"),
    ];
    // billing's own P0 (its stall) mutes its P1/P3 as on any host; without it, orders' crash
    // must mute nothing of billing's: a second round without billing's stall.
    let billing_alone = [
        ("GravityReplicationLagHigh", "active"),
        ("GravityExporterCollectorFailing", "active"),
        ("GravityErrorRateHigh", "active"),
    ];
    let mut posted = Vec::new();
    let mut want: BTreeMap<AlertKey, &str> = BTreeMap::new();
    for (p, alerts) in [
        ("orders", &orders[..]),
        ("billing", &billing[..]),
        ("billing2", &billing_alone[..]),
    ] {
        for (name, state) in alerts {
            posted.push(on_host(p, name));
            want.insert(
                (
                    "prod".to_string(),
                    "gravity".to_string(),
                    p.to_string(),
                    name.to_string(),
                ),
                state,
            );
        }
    }
    let body = serde_json::Value::Array(posted).to_string();
    let r = http(live.addr, "POST", "/api/v2/alerts", &body).expect("post alerts");
    assert_eq!(r.0, 200, "{}", r.1);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = alert_states(live.addr);
        let diff: Vec<String> = want
            .iter()
            .filter_map(|(k, state)| match got.get(k) {
                None => Some(format!("{k:?}: not in Alertmanager")),
                Some((s, by)) if s != state => {
                    Some(format!("{k:?}: {s} (inhibited by {by:?}), want {state}"))
                }
                _ => None,
            })
            .collect();
        if diff.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "two pipelines of one exporter do not page independently:\n{}",
            diff.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A webhook receiver for the test: records (path, body) of every POST.
struct Webhook {
    port: u16,
    got: std::sync::Arc<std::sync::Mutex<Vec<(String, serde_json::Value)>>>,
}

fn start_webhook() -> Webhook {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            // headers, then Content-Length bytes of body
            let (path, body) = loop {
                let Ok(n) = conn.read(&mut chunk) else {
                    break (String::new(), Vec::new());
                };
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
                        break (path, buf[end + 4..end + 4 + len].to_vec());
                    }
                }
            };
            let _ = conn
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) {
                sink.lock().unwrap().push((path, v));
            }
        }
    });
    Webhook { port, got }
}

/// The shipped alertmanager.yml with every receiver URL pointed at the test's webhook and
/// every route timing (group_wait, group_interval, repeat_interval) divided by `scale`, so
/// that an hour of Alertmanager time passes in seconds. Nothing else is changed.
fn shipped_config_for_test(webhook_port: u16, scale: u64) -> String {
    let url = Regex::new(r"url: http://127\.0\.0\.1:5001/").unwrap();
    let timing = Regex::new(
        r"(?m)^(\s*(?:group_wait|group_interval|repeat_interval):\s*)([0-9]+)(ms|s|m|h)\s*$",
    )
    .unwrap();
    let cfg = read("alerts/alertmanager.yml");
    assert!(
        url.is_match(&cfg),
        "receivers are no longer on 127.0.0.1:5001"
    );
    let cfg = url.replace_all(
        &cfg,
        format!("url: http://127.0.0.1:{webhook_port}/").as_str(),
    );
    timing
        .replace_all(&cfg, |c: &regex::Captures<'_>| {
            let n: u64 = c[2].parse().unwrap();
            let ms = n * match &c[3] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                _ => 3_600_000,
            };
            format!("{}{}ms", &c[1], (ms / scale).max(1))
        })
        .into_owned()
}

/// Every P3 reaches the digest receiver through the shipped routes, including short-lived
/// ones (GravityDDLApplied fires ~15 minutes, Config/VersionChanged ~35 minutes) that begin
/// after the group's first message and end before its next one. Timings are scaled 1:600
/// (group_wait 5m -> 0.5 s, group_interval 1h -> 6 s); the lifetimes below are scaled alike.
#[test]
fn every_p3_is_delivered_through_the_shipped_routes() {
    let Some(am) = require_tool(&["prometheus-alertmanager", "alertmanager"]) else {
        return;
    };
    const SCALE: u64 = 600;
    let hook = start_webhook();
    let live = start_alertmanager(&am, &shipped_config_for_test(hook.port, SCALE));
    let scaled = |minutes: u64| Duration::from_millis(minutes * 60_000 / SCALE);
    let p3: Vec<String> = rules::alert_rules()
        .iter()
        .filter(|r| r["labels"]["severity"] == "P3")
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect();
    assert!(p3.len() >= 6, "{p3:?}");
    // A long-lived P3 opens the group and gets its first message ...
    let first = alert_json(
        "prod",
        "gravity",
        "orders",
        "GravityDataConsistencyMismatch",
        None,
    );
    let r = http(
        live.addr,
        "POST",
        "/api/v2/alerts",
        &serde_json::json!([first]).to_string(),
    )
    .expect("post");
    assert_eq!(r.0, 200, "{}", r.1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !hook.got.lock().unwrap().iter().any(|(p, _)| p == "/digest") {
        assert!(Instant::now() < deadline, "no first digest");
        std::thread::sleep(Duration::from_millis(50));
    }
    // ... then every P3 fires for its usual lifetime, between two flushes of the group
    let lifetime = |name: &str| match name {
        "GravityDDLApplied" => scaled(15),
        "GravityConfigChanged" | "GravityVersionChanged" => scaled(35),
        _ => scaled(20),
    };
    let batch: Vec<serde_json::Value> = p3
        .iter()
        .filter(|n| n.as_str() != "GravityDataConsistencyMismatch")
        .map(|n| alert_json("prod", "gravity", "orders", n, Some(lifetime(n))))
        .collect();
    let r = http(
        live.addr,
        "POST",
        "/api/v2/alerts",
        &serde_json::Value::Array(batch).to_string(),
    )
    .expect("post");
    assert_eq!(r.0, 200, "{}", r.1);

    let deadline = Instant::now() + scaled(3 * 60); // three group intervals
    loop {
        let delivered: BTreeSet<String> = hook
            .got
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == "/digest")
            .flat_map(|(_, v)| v["alerts"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_string))
            .collect();
        let missing: Vec<&String> = p3.iter().filter(|n| !delivered.contains(*n)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "P3 alerts never delivered to the digest: {missing:?} (delivered {delivered:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // the digest carries the pipeline identity it was grouped by
    for (p, v) in hook.got.lock().unwrap().iter() {
        if p == "/digest" {
            assert_eq!(v["groupLabels"]["namespace"], "prod", "{v}");
            assert_eq!(v["groupLabels"]["pipeline"], "orders", "{v}");
        }
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A minimal HTTP/1.0 exchange (no chunked encoding to deal with): (status, body).
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

#[test]
fn every_alert_has_severity_priority_and_the_four_annotations() {
    let dashboards = dashboard_uids();
    let alerts = rules::alert_rules();
    assert!(
        alerts.len() >= 20,
        "expected the whole P0-P3 set, found {}",
        alerts.len()
    );
    // (topk/bottomk keep every label of the series they pick.)
    let agg = Regex::new(r"\b(sum|max|min|avg|count|group) by \(([^)]*)\)").unwrap();
    let mut by_severity: BTreeMap<String, usize> = BTreeMap::new();
    for r in &alerts {
        let name = r["alert"].as_str().unwrap();
        assert!(
            name.starts_with("Gravity"),
            "{name}: alert names start with Gravity"
        );
        let severity = r["labels"]["severity"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: no severity"));
        assert!(
            ["P0", "P1", "P2", "P3"].contains(&severity),
            "{name}: severity {severity}"
        );
        *by_severity.entry(severity.to_string()).or_default() += 1;
        assert_eq!(
            r["labels"]["priority"].as_str(),
            Some(priority_of(severity)),
            "{name}: priority must follow severity"
        );
        let labels = r["labels"].as_mapping().unwrap();
        assert_eq!(
            labels.len(),
            2,
            "{name}: only severity and priority are static labels"
        );
        let ann = |k: &str| -> String {
            r["annotations"][k]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no {k} annotation"))
                .to_string()
        };
        assert!(
            ann("summary").contains("{{ $labels.pipeline }}"),
            "{name}: summary names the pipeline"
        );
        assert!(
            ann("description").contains("$value"),
            "{name}: description must show the value"
        );
        assert_eq!(
            ann("runbook_url"),
            format!("{RUNBOOK_PREFIX}{}", name.to_lowercase()),
            "{name}: runbook_url"
        );
        let dash = ann("dashboard_url");
        let rest = dash
            .strip_prefix(DASHBOARD_PREFIX)
            .unwrap_or_else(|| panic!("{name}: dashboard_url {dash}"));
        let (uid, query) = rest.split_once('?').unwrap_or((rest, ""));
        assert!(
            dashboards.contains(uid),
            "{name}: dashboard {uid} not in dashboards/"
        );
        assert_eq!(
            query, "var-pipeline={{ $labels.pipeline }}",
            "{name}: dashboard_url query"
        );
        // The pipeline label must survive the expression: aggregations keep it.
        let expr = r["expr"].as_str().unwrap();
        for c in agg.captures_iter(expr) {
            assert!(
                c[2].split(',')
                    .any(|l| l.trim() == "pipeline" || l.trim() == "host"),
                "{name}: `{} by ({})` drops the pipeline label",
                &c[1],
                &c[2]
            );
        }
    }
    for s in ["P0", "P1", "P2", "P3"] {
        assert!(
            by_severity.get(s).copied().unwrap_or(0) >= 4,
            "few {s} alerts: {by_severity:?}"
        );
    }
}

fn dashboard_uids() -> BTreeSet<String> {
    std::fs::read_dir(rules::repo_root().join("dashboards"))
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            if p.extension()? != "json" {
                return None;
            }
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).ok()?).ok()?;
            v["uid"].as_str().map(str::to_string)
        })
        .collect()
}

/// GitHub's anchor for a Markdown heading.
fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

#[test]
fn runbook_has_a_complete_section_per_alert() {
    let runbook = read("docs/runbook.md");
    // sections by `## ` heading
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in runbook.lines() {
        if let Some(h) = line.strip_prefix("## ") {
            current = Some(github_anchor(h));
            sections.entry(current.clone().unwrap()).or_default();
        } else if let Some(c) = &current {
            let s = sections.get_mut(c).unwrap();
            s.push_str(line);
            s.push('\n');
        }
    }
    for r in rules::alert_rules() {
        let name = r["alert"].as_str().unwrap();
        let url = r["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url.rsplit_once('#').unwrap().1;
        let body = sections
            .get(anchor)
            .unwrap_or_else(|| panic!("docs/runbook.md has no section #{anchor} for {name}"));
        for part in ["**Meaning.**", "**Confirm.**", "**Act.**", "**Escalate.**"] {
            assert!(body.contains(part), "runbook #{anchor}: missing {part}");
        }
        let severity = r["labels"]["severity"].as_str().unwrap();
        assert!(
            body.contains(&format!("`{severity}`")),
            "runbook #{anchor}: severity {severity} not stated"
        );
        assert!(
            body.contains("```promql"),
            "runbook #{anchor}: no PromQL to confirm with"
        );
    }
}

#[test]
fn every_alert_is_tested_firing_and_quiet() {
    let rules_by_name: BTreeMap<String, serde_yaml::Value> = rules::alert_rules()
        .into_iter()
        .map(|r| (r["alert"].as_str().unwrap().to_string(), r))
        .collect();
    let mut fires: BTreeSet<String> = BTreeSet::new();
    let mut quiet: BTreeSet<String> = BTreeSet::new();
    let scenario = Regex::new(r"\b(idle|stopped|recovering|flapping)\b").unwrap();
    for f in test_files() {
        let doc: serde_yaml::Value = serde_yaml::from_str(&read(&f)).unwrap();
        for group in doc["tests"].as_sequence().unwrap() {
            let gname = group["name"]
                .as_str()
                .unwrap_or_else(|| panic!("{f}: every test group has a name"));
            for case in group["alert_rule_test"].as_sequence().into_iter().flatten() {
                let alert = case["alertname"].as_str().unwrap().to_string();
                let rule = rules_by_name
                    .get(&alert)
                    .unwrap_or_else(|| panic!("{f}: test of unknown alert {alert}"));
                let exp = case["exp_alerts"].as_sequence().unwrap();
                if exp.is_empty() {
                    if scenario.is_match(gname) {
                        quiet.insert(alert);
                    }
                    continue;
                }
                for e in exp {
                    let l = &e["exp_labels"];
                    assert_eq!(l["severity"], rule["labels"]["severity"], "{f}: {gname}");
                    assert_eq!(l["priority"], rule["labels"]["priority"], "{f}: {gname}");
                    assert!(
                        l["pipeline"].as_str().is_some_and(|p| !p.is_empty()),
                        "{f}: {gname}: no pipeline"
                    );
                    for k in ["summary", "description", "runbook_url", "dashboard_url"] {
                        assert!(
                            e["exp_annotations"][k].as_str().is_some(),
                            "{f}: {gname}: no exact {k}"
                        );
                    }
                }
                fires.insert(alert);
            }
        }
    }
    let all: BTreeSet<String> = rules_by_name.keys().cloned().collect();
    let never_fired: Vec<_> = all.difference(&fires).collect();
    assert!(
        never_fired.is_empty(),
        "alerts without a firing test: {never_fired:?}"
    );
    let never_quiet: Vec<_> = all.difference(&quiet).collect();
    assert!(
        never_quiet.is_empty(),
        "alerts without a quiet test named idle/stopped/recovering/flapping: {never_quiet:?}"
    );
}

#[test]
fn thresholds_live_in_recording_rules_and_are_all_used() {
    let defaults = rules::threshold_defaults();
    let recorded = rules::recorded_names();
    for n in recorded.iter().filter(|n| n.contains("threshold")) {
        assert!(
            defaults.contains_key(n),
            "{n}: default not in the `* 0 + N` form"
        );
    }
    let exprs: Vec<String> = rules::alert_rules()
        .iter()
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .chain(
            rules::rules_of(rules::RECORDING_RULES)
                .iter()
                .map(|r| r["expr"].as_str().unwrap().to_string()),
        )
        .collect();
    for n in defaults.keys() {
        let used = exprs
            .iter()
            .any(|e| e.contains(n.as_str()) && !e.contains(&format!("{n}:override")));
        assert!(used, "{n} is recorded but used by no rule");
    }
    // Alerts compare against thresholds, not literals: a comparison with a bare number
    // other than 0, 1 and the documented trend/heartbeat constants is a hidden threshold.
    let literal = Regex::new(r"(?:>|<|>=|<=|==)\s*([0-9][0-9.]*)\b").unwrap();
    for r in rules::alert_rules() {
        let name = r["alert"].as_str().unwrap();
        for c in literal.captures_iter(r["expr"].as_str().unwrap()) {
            assert!(
                ["0", "1", "120", "0.5"].contains(&&c[1]),
                "{name}: literal threshold {} (record it in {})",
                &c[1],
                rules::RECORDING_RULES
            );
        }
    }
}

#[test]
fn rules_use_only_contract_metrics() {
    let known = rules::known_metric_names();
    for f in [rules::RECORDING_RULES, rules::ALERT_RULES] {
        for r in rules::rules_of(f) {
            let expr = r["expr"].as_str().unwrap();
            let unknown = rules::unknown_metrics(expr, &known);
            assert!(
                unknown.is_empty(),
                "{f}: {:?} uses unknown metrics {unknown:?}",
                r.get("alert").or(r.get("record"))
            );
        }
    }
}

#[test]
fn alerts_readme_lists_every_alert() {
    let readme = read("alerts/README.md");
    for r in rules::alert_rules() {
        let name = r["alert"].as_str().unwrap();
        let sev = r["labels"]["severity"].as_str().unwrap();
        let line = readme
            .lines()
            .find(|l| l.contains(&format!("`{name}`")))
            .unwrap_or_else(|| panic!("alerts/README.md does not list {name}"));
        assert!(
            line.contains(sev),
            "alerts/README.md: {name} without its severity {sev}"
        );
    }
}

const IDENTITY: [&str; 4] = ["cluster", "namespace", "job", "pipeline"];

/// Pipeline identity is (cluster, namespace, job, pipeline) everywhere: no `on()`/`by()` of
/// a rule uses `instance`, every one that names `pipeline` names the whole identity (the
/// per-pipeline override lookup excepted), and Alertmanager groups and inhibits by it.
#[test]
fn pipeline_identity_never_includes_instance() {
    let list = Regex::new(r"\b(on|by|ignoring|without)\s*\(([^)]*)\)").unwrap();
    for f in [rules::RECORDING_RULES, rules::ALERT_RULES] {
        for r in rules::rules_of(f) {
            let name = r
                .get("alert")
                .or(r.get("record"))
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            let expr = r["expr"].as_str().unwrap();
            for c in list.captures_iter(expr) {
                let labels: Vec<&str> = c[2]
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                assert!(
                    !labels.contains(&"instance"),
                    "{f}: {name}: `{}` matches on instance",
                    &c[0]
                );
                if matches!(&c[1], "on" | "by") && labels.contains(&"pipeline") {
                    let override_lookup = labels == ["pipeline"] && expr.contains(":override");
                    assert!(
                        override_lookup || IDENTITY.iter().all(|l| labels.contains(l)),
                        "{f}: {name}: `{}` is not the whole pipeline identity {IDENTITY:?}",
                        &c[0]
                    );
                }
            }
        }
    }
    let am: serde_yaml::Value = serde_yaml::from_str(&read("alerts/alertmanager.yml")).unwrap();
    let strings = |v: &serde_yaml::Value| -> Vec<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    let mut group_bys = vec![strings(&am["route"]["group_by"])];
    for r in am["route"]["routes"].as_sequence().unwrap() {
        if !r["group_by"].is_null() {
            group_bys.push(strings(&r["group_by"]));
        }
    }
    for g in group_bys {
        assert!(!g.contains(&"instance".to_string()), "group_by {g:?}");
        assert!(
            IDENTITY.iter().all(|l| g.contains(&l.to_string())),
            "group_by {g:?} lacks part of {IDENTITY:?}"
        );
    }
    let rules_ = am["inhibit_rules"].as_sequence().unwrap();
    assert!(rules_.len() >= 5);
    for r in rules_ {
        assert_eq!(
            strings(&r["equal"]),
            IDENTITY.map(String::from).to_vec(),
            "{r:?}"
        );
    }
}

/// Every P0 keeps firing long enough for GravityExporterDown (2 minutes without a scrape,
/// then `for: 1m`, evaluated every minute: at most ~4 minutes) to take over when the
/// exporter dies: incidents.test.yml checks the hand-over minute by minute.
#[test]
fn every_p0_keeps_firing_until_exporter_down_takes_over() {
    let minutes = |d: &str| -> u64 {
        let (n, unit) = d.split_at(d.len() - 1);
        let n: u64 = n.parse().unwrap();
        match unit {
            "m" => n,
            "h" => n * 60,
            _ => panic!("duration {d}"),
        }
    };
    for r in rules::alert_rules() {
        if r["labels"]["severity"] != "P0" {
            continue;
        }
        let name = r["alert"].as_str().unwrap();
        let keep = r["keep_firing_for"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: P0 without keep_firing_for"));
        assert!(minutes(keep) >= 5, "{name}: keep_firing_for {keep} < 5m");
    }
}
