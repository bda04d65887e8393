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
        out.contains("4 inhibit rules") && out.contains("4 receivers"),
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

/// A real Alertmanager with alerts/alertmanager.yml: which alerts end up inhibited.
#[test]
fn alertmanager_inhibits_as_documented() {
    let Some(am) = require_tool(&["prometheus-alertmanager", "alertmanager"]) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = rules::repo_root().join("alerts/alertmanager.yml");
    let child = Command::new(am)
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--storage.path={}", dir.path().display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start alertmanager");
    let _guard = KillOnDrop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http(addr, "GET", "/-/ready", "").map(|r| r.0) != Some(200) {
        assert!(
            Instant::now() < deadline,
            "alertmanager did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // (pipeline, alertname, severity, expected state)
    let cases = [
        // crash loop: the loop replaces GravityDown, which mutes the rest but not the
        // binlog alerts
        ("a", "GravityCrashLooping", "P0", "active"),
        ("a", "GravityDown", "P0", "suppressed"),
        ("a", "GravitySourceUnreachable", "P0", "suppressed"),
        ("a", "GravityReplicationLagHigh", "P1", "suppressed"),
        ("a", "GravityBinlogPurgeImminent", "P0", "active"),
        ("a", "GravityBinlogRetentionRunningOut", "P1", "active"),
        // no P0: nothing muted
        ("b", "GravityReplicationLagHigh", "P1", "active"),
        ("b", "GravityQueueSaturated", "P2", "active"),
        // the supervisor gave up: that alone pages
        ("c", "GravitySupervisorGaveUp", "P0", "active"),
        ("c", "GravityCrashLooping", "P0", "suppressed"),
        ("c", "GravityDown", "P0", "suppressed"),
        // a P0 other than GravityDown mutes P1-P3 of its pipeline only
        ("d", "GravityPipelineStalled", "P0", "active"),
        ("d", "GravityExporterCollectorFailing", "P3", "suppressed"),
        ("d", "GravityOutputStopped", "P1", "suppressed"),
        ("e", "GravityExporterCollectorFailing", "P3", "active"),
        // gravity down, plain
        ("f", "GravityDown", "P0", "active"),
        ("f", "GravityTargetUnreachable", "P0", "suppressed"),
        ("f", "GravityHeartbeatProbeFailing", "P3", "suppressed"),
    ];
    let body = serde_json::Value::Array(
        cases
            .iter()
            .map(|(p, a, s, _)| {
                serde_json::json!({"labels": {"alertname": a, "severity": s, "priority": priority_of(s), "pipeline": p}})
            })
            .collect(),
    )
    .to_string();
    let posted = http(addr, "POST", "/api/v2/alerts", &body).expect("post alerts");
    assert_eq!(posted.0, 200, "{}", posted.1);

    let want: BTreeMap<(String, String), &str> = cases
        .iter()
        .map(|(p, a, _, st)| ((p.to_string(), a.to_string()), *st))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, text) = http(addr, "GET", "/api/v2/alerts", "").expect("get alerts");
        assert_eq!(code, 200, "{text}");
        let got: BTreeMap<(String, String), String> =
            serde_json::from_str::<serde_json::Value>(&text)
                .expect("alerts JSON")
                .as_array()
                .unwrap()
                .iter()
                .map(|a| {
                    let l = &a["labels"];
                    (
                        (
                            l["pipeline"].as_str().unwrap().to_string(),
                            l["alertname"].as_str().unwrap().to_string(),
                        ),
                        a["status"]["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
        let diff: Vec<String> = want
            .iter()
            .filter(|(k, v)| got.get(*k).map(String::as_str) != Some(**v))
            .map(|(k, v)| format!("{k:?}: got {:?}, want {v}", got.get(k)))
            .collect();
        if diff.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "inhibition differs:\n{}",
            diff.join("\n")
        );
        std::thread::sleep(Duration::from_millis(200));
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
