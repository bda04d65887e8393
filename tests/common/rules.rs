//! Helpers for the tests of alerts/ and dashboards/: the live-stack test's `shorten_for`,
//! loading the rule files, the recorded alert thresholds, the metric names the contract
//! allows, and finding promtool/amtool.
//!
//! Included with `#[path = "common/rules.rs"] mod rules;` by tests/alerts.rs and
//! tests/dashboards.rs; tests/common/mod.rs can also declare it (`pub mod rules;`).
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// Rewrites every `for:` of a Prometheus rule file to `to` (for example `"5s"`), so that a
/// live-stack test sees alerts fire within seconds. Only the rule key is touched:
/// `keep_firing_for:`, and "for" in expressions or annotations, are left alone. A comment
/// after the value is kept. Lines of a block scalar that themselves start with `for:`
/// would be rewritten too; the rule files have none.
pub fn shorten_for(rules_yaml: &str, to: &str) -> String {
    let re = Regex::new(r"(?m)^([ \t]*(?:-[ \t]+)?)for:[ \t]*[^\s#]+").expect("valid regex");
    re.replace_all(rules_yaml, |c: &regex::Captures<'_>| {
        format!("{}for: {to}", &c[1])
    })
    .into_owned()
}

/// Rewrites every `keep_firing_for:` of a Prometheus rule file to `to`, so that a live-stack
/// test sees a P0 resolve within seconds of its cause. Nothing else is touched.
pub fn shorten_keep_firing_for(rules_yaml: &str, to: &str) -> String {
    let re =
        Regex::new(r"(?m)^([ \t]*(?:-[ \t]+)?)keep_firing_for:[ \t]*[^\s#]+").expect("valid regex");
    re.replace_all(rules_yaml, |c: &regex::Captures<'_>| {
        format!("{}keep_firing_for: {to}", &c[1])
    })
    .into_owned()
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn read(rel: &str) -> String {
    let p = repo_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

pub const RECORDING_RULES: &str = "alerts/gravity-recording.rules.yml";
pub const ALERT_RULES: &str = "alerts/gravity-alerts.rules.yml";

/// Every rule (recording and alerting) of a rule file, as YAML mappings.
pub fn rules_of(rel: &str) -> Vec<serde_yaml::Value> {
    let doc: serde_yaml::Value =
        serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let groups = doc["groups"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{rel}: no groups"));
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .collect()
}

pub fn alert_rules() -> Vec<serde_yaml::Value> {
    rules_of(ALERT_RULES)
}

pub fn alert_names() -> BTreeSet<String> {
    alert_rules()
        .iter()
        .map(|r| r["alert"].as_str().expect("alert name").to_string())
        .collect()
}

pub fn recorded_names() -> BTreeSet<String> {
    rules_of(RECORDING_RULES)
        .iter()
        .filter_map(|r| r["record"].as_str().map(str::to_string))
        .collect()
}

/// The default of every `gravity:*_threshold_*` (and capacity) rule: the number after
/// `* 0 +` in `... or on (pipeline) (max by (pipeline) (gravity_up) * 0 + N)`.
pub fn threshold_defaults() -> BTreeMap<String, f64> {
    let re = Regex::new(r"\* 0 \+ ([0-9.eE+-]+)\)\s*$").unwrap();
    rules_of(RECORDING_RULES)
        .iter()
        .filter_map(|r| {
            let name = r["record"].as_str()?;
            let expr = r["expr"].as_str()?;
            let n = re.captures(expr.trim())?[1].parse::<f64>().ok()?;
            Some((name.to_string(), n))
        })
        .collect()
}

/// Metric names the contract allows in rules and dashboards: docs/metrics.md, gravity's
/// own families (tests/fixtures/metrics.prom, as passed through), the recording rules,
/// node_exporter's filesystem families, and SPEC §3 names not yet in docs/metrics.md.
pub fn known_metric_names() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    // docs/metrics.md: the first column of the tables; "`a` / `_b`" abbreviates a name
    // whose last segments `_b` replaces.
    let tick = Regex::new(r"`([a-z_:][a-z0-9_:]*)`").unwrap();
    for line in read("docs/metrics.md").lines() {
        let Some(first) = line.strip_prefix('|').and_then(|l| l.split('|').next()) else {
            continue;
        };
        let mut last_full: Option<String> = None;
        for c in tick.captures_iter(first) {
            let n = c[1].to_string();
            if let (Some(stripped), Some(full)) = (n.strip_prefix('_'), &last_full) {
                let k = stripped.split('_').count();
                let segs: Vec<&str> = full.split('_').collect();
                let base = segs[..segs.len().saturating_sub(k)].join("_");
                names.insert(format!("{base}_{stripped}"));
            } else if n.starts_with("gravity") {
                names.insert(n.clone());
                last_full = Some(n);
            }
        }
    }
    for line in read("tests/fixtures/metrics.prom").lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some(n) = rest.split_whitespace().next() {
                names.insert(n.to_string());
            }
        }
    }
    names.extend(recorded_names());
    for n in ["node_filesystem_avail_bytes", "node_filesystem_size_bytes"] {
        names.insert(n.to_string());
    }
    names.extend(EXIT_METRICS_CONTRACT.iter().map(|n| n.to_string()));
    names
}

/// Series of the metric contract of issue 11 (exit causes, cgroup memory, log filesystem,
/// row counters) that the alerts and dashboards use. The exporter side adds them to
/// docs/metrics.md; listed here too so the rules can be checked on their own.
pub const EXIT_METRICS_CONTRACT: &[&str] = &[
    "gravity_process_last_exit_info",
    "gravity_process_memory_limit_bytes",
    "gravity_process_oom_kills_total",
    "gravity_log_filesystem_avail_bytes",
    "gravity_log_filesystem_size_bytes",
    "gravity_input_rows_total",
    "gravity_output_rows_total",
];

/// Metric names a PromQL expression refers to (gravity_*, gravity:*, node_*), with
/// histogram suffixes removed; quoted strings are skipped.
pub fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let quoted = Regex::new(r#""(?:[^"\\]|\\.)*"|`[^`]*`"#).unwrap();
    let stripped = quoted.replace_all(expr, "\"\"");
    let name = Regex::new(r"\b((?:gravity[_:]|node_)[a-zA-Z0-9_:]*)").unwrap();
    name.captures_iter(&stripped)
        .map(|c| {
            let n = c[1].to_string();
            for suffix in ["_bucket", "_count", "_sum"] {
                if let Some(base) = n.strip_suffix(suffix) {
                    if !n.contains(':') {
                        return base.to_string();
                    }
                }
            }
            n
        })
        .collect()
}

/// Unknown metric names of an expression (after allowing `<recorded>:override`).
pub fn unknown_metrics(expr: &str, known: &BTreeSet<String>) -> Vec<String> {
    metric_names_in(expr)
        .into_iter()
        .filter(|n| !known.contains(n))
        .filter(|n| {
            !n.strip_suffix(":override")
                .is_some_and(|b| known.contains(b))
        })
        .collect()
}

/// The path of an executable on PATH, if any.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The path of a required tool, or `None` when it is missing and GX_SKIP_PROMTOOL=1
/// (then the test says so and returns). Missing without that variable fails the test:
/// scripts/test.sh installs promtool (prometheus) and amtool (prometheus-alertmanager).
pub fn require_tool(names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = names.iter().find_map(|n| which(n)) {
        return Some(p);
    }
    if std::env::var("GX_SKIP_PROMTOOL").as_deref() == Ok("1") {
        eprintln!(
            "skipped: {} not installed and GX_SKIP_PROMTOOL=1",
            names.join("/")
        );
        return None;
    }
    panic!(
        "{} not found on PATH: install it (Debian: apt-get install prometheus prometheus-alertmanager; \
         scripts/test.sh does) or set GX_SKIP_PROMTOOL=1 to skip",
        names.join(" or ")
    );
}

/// Runs a tool in the repository root; returns (success, stdout + stderr).
pub fn run(tool: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(tool)
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", tool.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shorten_for_rewrites_only_the_for_key() {
        let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 10m\n        keep_firing_for: 5m\n        annotations:\n          description: down for 10m\n      - alert: B\n        expr: up == 0\n        for: \"1h\" # an hour\n      - for: 2m\n        alert: C\n        expr: vector(1)\n";
        let got = shorten_for(yaml, "5s");
        assert!(
            got.contains("        for: 5s\n        keep_firing_for: 5m\n"),
            "{got}"
        );
        assert!(got.contains("        for: 5s # an hour\n"), "{got}");
        assert!(got.contains("      - for: 5s\n        alert: C\n"), "{got}");
        assert!(got.contains("description: down for 10m"), "{got}");
        assert_eq!(got.lines().count(), yaml.lines().count());
        assert_eq!(got.matches("for: 5s").count(), 3);
        // idempotent, and without a `for:` nothing changes
        assert_eq!(shorten_for(&got, "5s"), got);
        assert_eq!(shorten_for("groups: []\n", "1s"), "groups: []\n");
    }

    #[test]
    fn shorten_for_covers_every_alert_of_the_real_rules() {
        let src = read(ALERT_RULES);
        let got = shorten_for(&src, "1s");
        let fors = src
            .lines()
            .filter(|l| l.trim_start().starts_with("for:"))
            .count();
        assert!(fors > 10, "expected many `for:` in {ALERT_RULES}");
        assert_eq!(got.matches("for: 1s\n").count(), fors);
        let doc: serde_yaml::Value = serde_yaml::from_str(&got).expect("still YAML");
        for g in doc["groups"].as_sequence().unwrap() {
            for r in g["rules"].as_sequence().unwrap() {
                if let Some(f) = r.get("for") {
                    assert_eq!(f.as_str(), Some("1s"));
                }
            }
        }
    }

    #[test]
    fn shorten_keep_firing_for_rewrites_only_that_key() {
        let yaml = "      - alert: A\n        expr: up == 0\n        for: 10m\n        keep_firing_for: 10m\n        annotations:\n          description: keep_firing_for: 10m in text\n";
        let got = shorten_keep_firing_for(yaml, "5s");
        assert!(
            got.contains("        for: 10m\n        keep_firing_for: 5s\n"),
            "{got}"
        );
        assert!(
            got.contains("description: keep_firing_for: 10m in text"),
            "{got}"
        );
        let real = shorten_keep_firing_for(&read(ALERT_RULES), "5s");
        assert!(!real.contains("keep_firing_for: 10m"));
        assert!(real.matches("keep_firing_for: 5s").count() >= 8);
    }

    #[test]
    fn metric_names_are_found_and_known() {
        let got = metric_names_in(
            r#"histogram_quantile(0.99, sum by (le) (rate(gravity_output_latency_bucket{db="gravity_x"}[5m]))) / gravity:lag_threshold_seconds"#,
        );
        let want: BTreeSet<String> = ["gravity_output_latency", "gravity:lag_threshold_seconds"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(got, want);
        let known = known_metric_names();
        for n in [
            "gravity_up",
            "gravity_process_max_fds",
            "gravity_process_io_write_bytes_total",
            "gravity_source_binlog_bytes_behind",
            "gravity_source_binlog_purge_headroom_bytes",
            "gravity_watermark_process_timestamp_seconds",
            "gravity_full_dump_rows_estimated",
            "gravity_log_truncations_total",
            "gravity_input_counter",
            "gravity_exporter_collector_success",
        ] {
            assert!(known.contains(n), "{n} should be known");
        }
        assert_eq!(
            unknown_metrics(
                "gravity_upp + gravity:lag_threshold_seconds:override",
                &known
            ),
            vec!["gravity_upp"]
        );
    }
}
