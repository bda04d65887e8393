//! The shipped systemd files of `docker/systemd/`: every unit parses (sections, `Key=value`
//! lines), starts the binary it is for, and the templates (`*@.service`) use their instance
//! name where it matters. The template of the exporter keeps every setting of the
//! one-per-host unit but those that name the instance, so that its hardening cannot drift.
//! The exporter's example config files are accepted by the exporter itself.
//! (`docker/check.sh` also runs `systemd-analyze verify` and `security` on them.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use gravity_exporter::config::{Cli, Settings};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docker/systemd")
}

/// A unit file: section -> list of (key, value), in order (a key may repeat).
type Unit = BTreeMap<String, Vec<(String, String)>>;

fn parse_unit(name: &str, text: &str) -> Unit {
    let mut unit = Unit::new();
    let mut section: Option<String> = None;
    let mut continued = false;
    for (n, line) in text.lines().enumerate() {
        let at = format!("{name}:{}", n + 1);
        let t = line.trim();
        if continued {
            continued = t.ends_with('\\');
            continue;
        }
        if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
            continue;
        }
        if let Some(s) = t.strip_prefix('[') {
            let s = s
                .strip_suffix(']')
                .unwrap_or_else(|| panic!("{at}: bad section header {t:?}"));
            assert!(
                ["Unit", "Service", "Install"].contains(&s),
                "{at}: unexpected section [{s}]"
            );
            assert!(!unit.contains_key(s), "{at}: section [{s}] twice");
            unit.insert(s.to_string(), Vec::new());
            section = Some(s.to_string());
            continue;
        }
        let sec = section
            .as_ref()
            .unwrap_or_else(|| panic!("{at}: {t:?} before any section"));
        let (k, v) = t
            .split_once('=')
            .unwrap_or_else(|| panic!("{at}: not Key=value: {t:?}"));
        let k = k.trim();
        assert!(
            !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric()),
            "{at}: bad key {k:?}"
        );
        continued = v.ends_with('\\');
        unit.get_mut(sec)
            .unwrap()
            .push((k.to_string(), v.trim().to_string()));
    }
    unit
}

fn get<'a>(unit: &'a Unit, section: &str, key: &str) -> Vec<&'a str> {
    unit.get(section)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .collect()
}

fn units() -> Vec<(String, Unit)> {
    let mut v: Vec<(String, Unit)> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let unit = parse_unit(&name, &text);
            (name, unit)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn every_shipped_unit_parses_and_starts_its_binary() {
    let units = units();
    let names: Vec<&str> = units.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "gravity-exporter.service",
        "gravity-exporter@.service",
        "gravity.service",
        "gravity@.service",
    ] {
        assert!(
            names.contains(&want),
            "docker/systemd/{want} missing: {names:?}"
        );
    }
    for (name, unit) in &units {
        for s in ["Unit", "Service", "Install"] {
            assert!(unit.contains_key(s), "{name}: no [{s}] section");
        }
        assert_eq!(get(unit, "Unit", "Description").len(), 1, "{name}");
        assert_eq!(
            get(unit, "Install", "WantedBy"),
            ["multi-user.target"],
            "{name}"
        );
        let exec = get(unit, "Service", "ExecStart");
        assert_eq!(exec.len(), 1, "{name}: one ExecStart, got {exec:?}");
        let binary = exec[0].split_whitespace().next().unwrap();
        let want = if name.starts_with("gravity-exporter") {
            "/usr/local/bin/gravity-exporter"
        } else {
            "/usr/local/bin/gravity"
        };
        assert_eq!(binary, want, "{name}: ExecStart {:?}", exec[0]);
        let template = name.ends_with("@.service");
        assert_eq!(
            exec[0].contains("%i"),
            template,
            "{name}: a template's ExecStart names its instance (%i), a plain unit's does not: {:?}",
            exec[0]
        );
        if template {
            assert!(
                get(unit, "Unit", "Description")[0].contains("%i"),
                "{name}: the Description names the instance"
            );
        }
        if name.starts_with("gravity-exporter") {
            for k in ["User", "Group", "StateDirectory", "ExecReload"] {
                assert_eq!(get(unit, "Service", k).len(), 1, "{name}: {k}");
            }
        }
    }
}

#[test]
fn the_exporter_template_is_one_exporter_per_pipeline_with_the_same_hardening() {
    let units: BTreeMap<String, Unit> = units().into_iter().collect();
    let host = &units["gravity-exporter.service"];
    let tpl = &units["gravity-exporter@.service"];
    assert_eq!(
        get(host, "Service", "ExecStart"),
        ["/usr/local/bin/gravity-exporter --config.file=/etc/gravity-exporter/gravity-exporter.toml"]
    );
    assert_eq!(
        get(tpl, "Service", "ExecStart"),
        ["/usr/local/bin/gravity-exporter --config.file=/etc/gravity-exporter/%i.toml"]
    );
    // each instance its own state directory (log offsets)
    assert_eq!(
        get(tpl, "Service", "StateDirectory"),
        ["gravity-exporter/%i"]
    );
    // every other setting identical, in the same order
    let rest = |u: &Unit, s: &str| -> Vec<(String, String)> {
        u[s].iter()
            .filter(|(k, _)| !["ExecStart", "StateDirectory", "Description"].contains(&k.as_str()))
            .cloned()
            .collect()
    };
    for s in ["Unit", "Service", "Install"] {
        assert_eq!(
            rest(host, s),
            rest(tpl, s),
            "[{s}] of gravity-exporter@.service differs from gravity-exporter.service"
        );
    }
    // and never bound to gravity: the exporter outlives a dead gravity
    for u in [host, tpl] {
        for k in ["Requires", "BindsTo", "PartOf"] {
            assert!(get(u, "Unit", k).is_empty(), "{k}= on the exporter's unit");
        }
    }
}

#[test]
fn the_gravity_template_gives_each_pipeline_its_config_port_and_log() {
    let units: BTreeMap<String, Unit> = units().into_iter().collect();
    let tpl = &units["gravity@.service"];
    let exec = get(tpl, "Service", "ExecStart")[0];
    for want in [
        "--config=/etc/gravity/%i.toml",
        "--http-addr=${GRAVITY_HTTP_ADDR}",
        "--log-file=/var/log/gravity/%i.log",
    ] {
        assert!(
            exec.contains(want),
            "gravity@.service ExecStart lacks {want}: {exec}"
        );
    }
    assert_eq!(
        get(tpl, "Service", "EnvironmentFile"),
        ["/etc/gravity/%i.env"]
    );
    // the restart policy the crash-loop alerts are written for, as in gravity.service
    let one = &units["gravity.service"];
    for (s, k) in [
        ("Unit", "StartLimitIntervalSec"),
        ("Unit", "StartLimitBurst"),
        ("Service", "Restart"),
        ("Service", "RestartSec"),
        ("Service", "User"),
        ("Service", "CapabilityBoundingSet"),
        ("Service", "LimitNOFILE"),
    ] {
        assert_eq!(get(tpl, s, k), get(one, s, k), "gravity@.service {k}");
    }
}

/// The example config files load as the exporter's `--config.file`: the one-per-host file
/// (a glob: several pipelines) and the per-instance file (one config: one pipeline).
#[test]
fn the_example_exporter_configs_are_accepted() {
    for (file, glob) in [
        ("gravity-exporter.toml", true),
        ("gravity-exporter-instance.toml", false),
    ] {
        let p = dir().join(file);
        let cli = Cli::try_parse_from([
            "gravity-exporter".to_string(),
            format!("--config.file={}", p.display()),
        ])
        .unwrap_or_else(|e| panic!("{file}: {e}"));
        let s = Settings::from_flags(cli.flags).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(
            s.gravity_configs.len(),
            1,
            "{file}: {:?}",
            s.gravity_configs
        );
        assert_eq!(
            s.gravity_configs[0].to_string_lossy().contains('*'),
            glob,
            "{file}: {:?}",
            s.gravity_configs
        );
    }
}
