//! The pipelines one exporter watches: one [`Context`] (typed state, store, process watch,
//! collectors, log follower, probes, canary, checker) per gravity pipeline of the host.
//!
//! gravity runs one process per pipeline, each with its own `--config`. Pipelines come from
//! configuration and processes are matched to them ([`crate::config::PipelineMode`]):
//! - one pipeline: today's flags (one `--gravity.config` file, a pid, pid file, pattern or
//!   URL);
//! - `--gravity.config` given as a glob or repeated: one pipeline per matching file, named by
//!   its `name`; its process is the gravity running with that file as `--config`; it stays
//!   known while the file exists (`gravity_up 0` while its process is gone), and ends with
//!   the file. Two files with one name are refused at start ([`plan`]); on a later look the
//!   second is logged and left out;
//! - no flag naming gravity: every gravity process of the host is a pipeline, one per config
//!   file they run with (the first keeps to the file its first process ran with, each new
//!   one gets a pipeline of its own).
//!
//! This module holds the set and what can be said of it without running anything: expanding
//! the globs, the names, the settings each pipeline runs with. Starting and stopping a
//! pipeline's tasks is the application's ([`crate::app`]). The views read the set: `/metrics`
//! ([`Fleet::render`]), the overview page, `/api/*?pipeline=`, `check`, OTLP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::collector::{Context, Workers};
use crate::config::{PipelineMode, Settings};
use crate::discovery::FileId;
use crate::metrics::{Part, Store};

/// Most pipelines one exporter watches (a glob matching more is cut, logged).
pub const MAX_PIPELINES: usize = 64;

/// Why the pipelines cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// Two config files name the same pipeline.
    #[error("pipeline {name:?} is named by two config files: {} and {}", first.display(), second.display())]
    DuplicateName {
        /// The name.
        name: String,
        /// The first file.
        first: PathBuf,
        /// The second file.
        second: PathBuf,
    },
    /// A glob cannot be read.
    #[error("gravity.config {pattern:?}: {reason}")]
    Pattern {
        /// The glob as given.
        pattern: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where a pipeline comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The only pipeline, from today's flags.
    Only,
    /// A config file matching `--gravity.config`.
    ConfigFile(PathBuf),
    /// A gravity process found running with this config file (no flag naming gravity).
    Discovered(FileId),
}

/// One pipeline: its context and the settings it runs with.
#[derive(Debug)]
pub struct Pipeline {
    /// What every producer of this pipeline looks at and writes.
    pub ctx: Arc<Context>,
    /// Where it comes from.
    pub origin: Origin,
    settings_tx: watch::Sender<Arc<Settings>>,
}

impl Pipeline {
    /// A pipeline of `origin` running with the exporter's settings `base`, with its own
    /// store and the exporter's worker threads.
    pub fn new(base: &Settings, origin: Origin, workers: Arc<Workers>, store: Store) -> Pipeline {
        let (tx, rx) = watch::channel(Arc::new(settings_for(base, &origin)));
        let ctx = Context::with_workers(rx, Arc::new(store), workers);
        if let Origin::Discovered(id) = &origin {
            let _ = ctx.pin.set(*id);
        }
        Pipeline {
            ctx,
            origin,
            settings_tx: tx,
        }
    }

    /// Its name (its config's `name`; `unknown` until known).
    pub fn name(&self) -> String {
        self.ctx.target().pipeline.clone()
    }

    /// Applies a reload of the exporter's settings.
    pub fn apply(&self, base: &Settings) {
        let _ = self
            .settings_tx
            .send(Arc::new(settings_for(base, &self.origin)));
    }
}

/// The settings a pipeline of `origin` runs with: the exporter's, with its own config file.
/// With several pipelines a `--gravity.log-state-file` names the directory of the state files
/// (one per log; a file names the directory holding it), not one file for all.
pub fn settings_for(base: &Settings, origin: &Origin) -> Settings {
    let mut s = base.clone();
    match origin {
        Origin::Only => return s,
        Origin::ConfigFile(p) => {
            s.gravity_config = Some(p.clone());
            s.config_strict = true;
        }
        Origin::Discovered(_) => {
            s.gravity_config = None;
            s.config_strict = true;
        }
    }
    if let Some(f) = s.log_state_file.take() {
        // a directory names itself; a file, the directory holding it
        s.log_state_dir = Some(if f.is_dir() {
            f
        } else {
            f.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."))
        });
    }
    s
}

/// The files `--gravity.config` names now: each glob expanded, in order, each file once
/// (by identity), at most [`MAX_PIPELINES`]. A plain path is kept even while it does not
/// exist (its pipeline shows as down).
pub fn expand(patterns: &[PathBuf]) -> Result<Vec<PathBuf>, FleetError> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut ids: Vec<FileId> = Vec::new();
    for pat in patterns {
        let mut files: Vec<PathBuf> = if crate::config::is_glob(pat) {
            let text = pat.to_string_lossy();
            glob::glob(&text)
                .map_err(|e| FleetError::Pattern {
                    pattern: text.to_string(),
                    reason: e.to_string(),
                })?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect()
        } else {
            vec![pat.clone()]
        };
        files.sort();
        for f in files {
            if let Some(id) = crate::discovery::file_id(&f) {
                if ids.contains(&id) {
                    continue;
                }
                ids.push(id);
            } else if out.contains(&f) {
                continue;
            }
            if out.len() >= MAX_PIPELINES {
                tracing::warn!(file = %f.display(), max = MAX_PIPELINES, "too many gravity config files; this one is left out");
                continue;
            }
            out.push(f);
        }
    }
    Ok(out)
}

/// The name a config file gives its pipeline (`unknown` when it names none or cannot be
/// read: the pipeline still shows, as down or with its error).
pub fn name_of(path: &Path) -> String {
    crate::gravity_config::read(path)
        .ok()
        .and_then(|c| c.name)
        .unwrap_or_else(|| "unknown".to_string())
}

/// The pipelines of these files by name: an error names both files of a name given twice.
pub fn plan(files: &[PathBuf]) -> Result<Vec<(String, PathBuf)>, FleetError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut out = Vec::new();
    for f in files {
        let name = name_of(f);
        if let Some(first) = by_name.get(&name) {
            return Err(FleetError::DuplicateName {
                name,
                first: first.clone(),
                second: f.clone(),
            });
        }
        by_name.insert(name.clone(), f.clone());
        out.push((name, f.clone()));
    }
    Ok(out)
}

/// The pipelines of the exporter, and the store of what belongs to the whole exporter.
#[derive(Debug)]
pub struct Fleet {
    /// The exporter's own families (server, build, export, bound counters).
    pub exporter: Arc<Store>,
    /// The parse and render threads, shared by every pipeline.
    pub workers: Arc<Workers>,
    /// How the pipelines are found.
    pub mode: PipelineMode,
    /// The exporter's settings in force (each pipeline's derive from them).
    pub settings: watch::Receiver<Arc<Settings>>,
    pipelines: RwLock<Vec<Arc<Pipeline>>>,
}

impl Fleet {
    /// An empty set.
    pub fn new(
        settings: watch::Receiver<Arc<Settings>>,
        exporter: Arc<Store>,
        workers: Arc<Workers>,
    ) -> Fleet {
        let mode = settings.borrow().pipeline_mode;
        Fleet {
            exporter,
            workers,
            mode,
            settings,
            pipelines: RwLock::new(Vec::new()),
        }
    }

    /// Every pipeline, in the order they were added.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        match self.pipelines.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Every pipeline's context, sorted by name.
    pub fn contexts(&self) -> Vec<Arc<Context>> {
        let mut v: Vec<(String, Arc<Context>)> = self
            .pipelines()
            .into_iter()
            .map(|p| (p.name(), p.ctx.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.into_iter().map(|(_, c)| c).collect()
    }

    /// The exporter's settings in force.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.borrow().clone()
    }

    /// A fleet of one pipeline around an existing context (tests, `check`).
    pub fn of_one(ctx: Arc<Context>) -> Fleet {
        let (tx, _) = watch::channel(ctx.settings());
        let settings = ctx.settings.clone();
        let fleet = Fleet::new(
            settings,
            Arc::new(Store::exporter()),
            Arc::clone(&ctx.workers),
        );
        fleet.insert(Arc::new(Pipeline {
            ctx,
            origin: Origin::Only,
            settings_tx: tx,
        }));
        fleet
    }

    /// How many pipelines there are.
    pub fn len(&self) -> usize {
        self.pipelines().len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pipeline of this name.
    pub fn find(&self, name: &str) -> Option<Arc<Context>> {
        self.pipelines()
            .into_iter()
            .find(|p| p.name() == name)
            .map(|p| p.ctx.clone())
    }

    /// The pipeline when there is exactly one.
    pub fn only(&self) -> Option<Arc<Context>> {
        let v = self.pipelines();
        match v.as_slice() {
            [one] => Some(one.ctx.clone()),
            _ => None,
        }
    }

    /// Adds a pipeline.
    pub fn insert(&self, p: Arc<Pipeline>) {
        match self.pipelines.write() {
            Ok(mut g) => g.push(p),
            Err(e) => e.into_inner().push(p),
        }
    }

    /// Removes the pipeline of this origin; returns it.
    pub fn remove(&self, origin: &Origin) -> Option<Arc<Pipeline>> {
        let mut g = match self.pipelines.write() {
            Ok(g) => g,
            Err(e) => e.into_inner(),
        };
        let i = g.iter().position(|p| &p.origin == origin)?;
        Some(g.remove(i))
    }

    /// A view was read: every pipeline's collectors keep their full pace.
    pub fn mark_read(&self) {
        self.mark_read_by(crate::collector::Reader::View);
    }

    /// A read by a known reader (a scrape from its address, an OTLP export): every
    /// pipeline's collectors follow its pace ([`crate::collector::pace`]).
    pub fn mark_read_by(&self, who: crate::collector::Reader) {
        for p in self.pipelines() {
            p.ctx.mark_read_by(who);
        }
    }

    /// The whole exposition: the exporter's families and every pipeline's
    /// ([`crate::metrics::render_fleet`]).
    pub fn render(&self) -> String {
        let ctxs = self.contexts();
        let names: Vec<String> = ctxs.iter().map(|c| c.target().pipeline.clone()).collect();
        let parts: Vec<Part<'_>> = ctxs
            .iter()
            .zip(names.iter())
            .map(|(c, n)| Part {
                pipeline: n,
                store: &c.store,
            })
            .collect();
        crate::metrics::render_fleet(&self.exporter, &parts)
    }

    /// The families and pass-through text of [`Fleet::render`], for one pipeline (`None`:
    /// the exporter's own only), for the OTLP export's resource of that pipeline.
    pub fn gather_one(
        &self,
        ctx: Option<&Context>,
    ) -> (Vec<prometheus::proto::MetricFamily>, String) {
        match ctx {
            None => crate::metrics::gather_fleet(Some(&self.exporter), &[]),
            Some(c) => {
                let name = c.target().pipeline.clone();
                crate::metrics::gather_fleet(
                    None,
                    &[Part {
                        pipeline: &name,
                        store: &c.store,
                    }],
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, file: &str, name: &str) -> PathBuf {
        let p = dir.join(file);
        std::fs::write(
            &p,
            format!("name = \"{name}\"\nversion = \"1.0\"\n[input]\ntype = \"mysql\"\n"),
        )
        .unwrap();
        p
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gx-fleet-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn globs_expand_sorted_once_each_and_plain_paths_stay() {
        let d = tmp("glob");
        write(&d, "b.toml", "b");
        write(&d, "a.toml", "a");
        std::fs::write(d.join("notes.txt"), "x").unwrap();
        let glob = d.join("*.toml");
        let missing = d.join("gone.toml");
        let files = expand(&[glob.clone(), d.join("a.toml"), missing.clone()]).unwrap();
        assert_eq!(files, vec![d.join("a.toml"), d.join("b.toml"), missing]);
        assert!(expand(&[d.join("[")]).is_err());
    }

    #[test]
    fn two_files_with_one_name_are_refused_naming_both() {
        let d = tmp("dup");
        let a = write(&d, "a.toml", "orders");
        let b = write(&d, "b.toml", "orders");
        let c = write(&d, "c.toml", "users");
        let e = plan(&[a.clone(), c.clone(), b.clone()]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("orders") && msg.contains("a.toml") && msg.contains("b.toml"));
        let ok = plan(&[a, c]).unwrap();
        assert_eq!(
            ok.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["orders", "users"]
        );
    }

    #[test]
    fn each_pipeline_keeps_to_its_file_and_gets_its_own_state_files() {
        let cli = <crate::config::Cli as clap::Parser>::try_parse_from([
            "gravity-exporter",
            "--gravity.config=/etc/gravity/*.toml",
            "--gravity.log-state-file=/var/lib/gx/state.json",
        ])
        .unwrap();
        let base = Settings::from_flags(cli.flags).unwrap();
        assert_eq!(base.pipeline_mode, PipelineMode::Configs);
        let s = settings_for(&base, &Origin::ConfigFile("/etc/gravity/a.toml".into()));
        assert_eq!(s.gravity_config, Some(PathBuf::from("/etc/gravity/a.toml")));
        assert!(s.config_strict);
        assert_eq!(s.log_state_file, None);
        assert_eq!(s.log_state_dir, Some(PathBuf::from("/var/lib/gx")));
        let only = settings_for(&base, &Origin::Only);
        assert!(!only.config_strict);
    }
}
