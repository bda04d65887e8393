//! The pipeline's topology: source database(s) → input → emitter → scheduler → output →
//! target(s), with rows per second on the edges, latency and queue fill on gravity's stages,
//! and each component's state from the probes, the checks and the diagnosis. Served as
//! `/api/topology` in the shape of Grafana's Node Graph data frames (nodes: `id`, `title`,
//! `subtitle`, `mainstat`, `secondarystat`, `arc__ok`, `arc__warn`, `arc__fail`,
//! `arc__unknown`, `detail__*`; edges: `id`, `source`, `target`, `mainstat`,
//! `secondarystat`), and drawn on the status page as SVG without script.

use std::fmt::Write as _;

use serde::Serialize;

use crate::collector::Context;
use crate::diagnosis::{Diagnosis, Stage};
use crate::gravity_config::EndpointRole;

/// Most database nodes drawn (endpoints of gravity's config).
pub const MAX_ENDPOINT_NODES: usize = 16;

/// One node of the graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// Unique id (`source:host:port`, `input`, …).
    pub id: String,
    /// What it is.
    pub title: String,
    /// Its kind or address.
    pub subtitle: String,
    /// Latency (stages) or probe latency (databases).
    pub mainstat: String,
    /// Queue fill (stages) or connections (databases).
    pub secondarystat: String,
    /// Share of "ok" in the node's ring.
    #[serde(rename = "arc__ok")]
    pub arc_ok: f64,
    /// Share of "warn" (the stage the diagnosis names).
    #[serde(rename = "arc__warn")]
    pub arc_warn: f64,
    /// Share of "fail" (unreachable, gravity down).
    #[serde(rename = "arc__fail")]
    pub arc_fail: f64,
    /// Share of "unknown" (not probed, not read yet).
    #[serde(rename = "arc__unknown")]
    pub arc_unknown: f64,
    /// The state in one word (ok, warn, fail, unknown).
    #[serde(rename = "detail__state")]
    pub detail_state: &'static str,
    /// Why (the diagnosis' finding on the holding stage, a probe failure, …).
    #[serde(rename = "detail__why")]
    pub detail_why: String,
}

/// One edge.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Edge {
    /// `source->target`.
    pub id: String,
    /// Node id it leaves.
    pub source: String,
    /// Node id it enters.
    pub target: String,
    /// Rows per second.
    pub mainstat: String,
    /// What the rate counts.
    pub secondarystat: String,
}

/// The graph.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Topology {
    /// Nodes, source to target.
    pub nodes: Vec<Node>,
    /// Edges.
    pub edges: Vec<Edge>,
}

#[derive(Clone, Copy, PartialEq)]
enum State {
    Ok,
    Warn,
    Fail,
    Unknown,
}

fn node(id: &str, title: &str, subtitle: &str, state: State, why: String) -> Node {
    let (ok, warn, fail, unknown, word) = match state {
        State::Ok => (1.0, 0.0, 0.0, 0.0, "ok"),
        State::Warn => (0.0, 1.0, 0.0, 0.0, "warn"),
        State::Fail => (0.0, 0.0, 1.0, 0.0, "fail"),
        State::Unknown => (0.0, 0.0, 0.0, 1.0, "unknown"),
    };
    Node {
        id: id.to_string(),
        title: title.to_string(),
        subtitle: subtitle.to_string(),
        mainstat: String::new(),
        secondarystat: String::new(),
        arc_ok: ok,
        arc_warn: warn,
        arc_fail: fail,
        arc_unknown: unknown,
        detail_state: word,
        detail_why: why,
    }
}

fn ms(s: f64) -> String {
    if s < 1.0 {
        format!("{:.1} ms", s * 1000.0)
    } else {
        format!("{s:.2} s")
    }
}

fn rate(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.1} rows/s")).unwrap_or_default()
}

/// The topology of the context, from the typed state (pure: no I/O).
pub fn topology(ctx: &Context) -> Topology {
    let target = ctx.target();
    let st = &ctx.state;
    let up = ctx.up.is_up();
    let diagnosis: Option<std::sync::Arc<Diagnosis>> = st.diagnosis.get();
    let holding = diagnosis.as_ref().map(|d| d.bottleneck);
    let finding = diagnosis
        .as_ref()
        .map(|d| d.finding.clone())
        .unwrap_or_default();
    let stages = st.stages.get();
    let rows = st.rows.get();
    let probes = ctx.recent.probes();
    let established = st.established.get();
    let fill = st.window_fill.get();

    // the databases around gravity, from its config
    let mut sources = Vec::new();
    let mut targets = Vec::new();
    for e in target
        .config
        .iter()
        .flat_map(|c| c.endpoints.iter())
        .take(MAX_ENDPOINT_NODES)
    {
        let component = e.role.as_str();
        let address = format!("{}:{}", e.host, e.port);
        let probe = probes.as_ref().and_then(|p| {
            p.iter()
                .find(|p| p.component == component && p.endpoint == address)
        });
        let conns = established
            .as_ref()
            .and_then(|m| m.get(&(component.to_string(), address.clone())).copied());
        let stage = if e.role == EndpointRole::Source {
            Stage::Source
        } else {
            Stage::Target
        };
        let (state, why) = match probe {
            Some(p) if !p.ok => (State::Fail, p.detail.clone()),
            _ if holding == Some(stage) => (State::Warn, finding.clone()),
            Some(_) => (State::Ok, String::new()),
            None => (State::Unknown, "not probed".to_string()),
        };
        let mut n = node(
            &format!("{component}:{address}"),
            component,
            &format!("{:?} {address}", e.protocol).to_lowercase(),
            state,
            why,
        );
        n.mainstat = probe.map(|p| ms(p.latency_seconds)).unwrap_or_default();
        n.secondarystat = conns.map(|c| format!("{c} conns")).unwrap_or_default();
        match e.role {
            EndpointRole::Source => sources.push(n),
            EndpointRole::ProbeDb => {}
            _ => targets.push(n),
        }
    }

    // gravity's stages
    let latency = |names: &[&str]| -> Option<f64> {
        let w = stages.as_ref()?;
        let v: f64 = w
            .stages
            .iter()
            .filter(|s| names.contains(&s.stage))
            .map(|s| s.mean_seconds)
            .sum();
        w.stages
            .iter()
            .any(|s| names.contains(&s.stage))
            .then_some(v)
    };
    let queue = |kinds: &[&str]| -> Option<f64> {
        let w = stages.as_ref()?;
        let q: Vec<f64> = w
            .queues
            .lengths
            .iter()
            .filter(|q| kinds.contains(&q.kind.as_str()))
            .map(|q| q.total)
            .collect();
        (!q.is_empty()).then(|| q.iter().sum())
    };
    let max_fill = fill
        .as_ref()
        .and_then(|f| f.iter().map(|(_, r)| *r).reduce(f64::max));
    let mut gravity = Vec::new();
    for (id, title, stage, lat, second) in [
        (
            "input",
            "input",
            Stage::Input,
            latency(&["input"]),
            queue(&["input_buffer"]).map(|q| format!("{q:.0} buffered")),
        ),
        (
            "emitter",
            "emitter",
            Stage::Emitter,
            latency(&["emitter"]),
            None,
        ),
        (
            "scheduler",
            "scheduler",
            Stage::Scheduler,
            latency(&["scheduler_submit", "scheduler_ack"]),
            max_fill.map(|f| format!("window {:.0} %", f * 100.0)),
        ),
        (
            "output",
            "output",
            Stage::Output,
            latency(&["output"]),
            queue(&["worker"]).map(|q| format!("{q:.0} in worker queues")),
        ),
    ] {
        let (state, why) = if !up {
            (State::Fail, "gravity is not up".to_string())
        } else if holding == Some(stage) {
            (State::Warn, finding.clone())
        } else if stages.is_none() {
            (
                State::Unknown,
                "gravity's /metrics not read yet".to_string(),
            )
        } else {
            (State::Ok, String::new())
        };
        let mut n = node(id, title, "gravity", state, why);
        n.mainstat = lat.map(ms).unwrap_or_default();
        n.secondarystat = second.unwrap_or_default();
        gravity.push(n);
    }

    let rows_in = rows.as_ref().and_then(|r| r.rows_in);
    let rows_out = rows.as_ref().and_then(|r| r.rows_out);
    let mut edges = Vec::new();
    let mut edge = |a: &str, b: &str, main: String, second: &str| {
        edges.push(Edge {
            id: format!("{a}->{b}"),
            source: a.to_string(),
            target: b.to_string(),
            mainstat: main,
            secondarystat: second.to_string(),
        });
    };
    for s in &sources {
        edge(&s.id, "input", rate(rows_in), "rows read");
    }
    edge("input", "emitter", rate(rows_in), "rows in");
    edge("emitter", "scheduler", rate(rows_in), "rows in");
    edge("scheduler", "output", rate(rows_out), "rows out");
    for t in &targets {
        edge("output", &t.id, rate(rows_out), "rows written");
    }
    let mut nodes = sources;
    nodes.extend(gravity);
    nodes.extend(targets);
    Topology { nodes, edges }
}

/// `/api/topology`: the graph as JSON (`{"nodes": [...], "edges": [...]}`: in Grafana's
/// Infinity data source, one query with root `nodes` as the nodes frame and one with root
/// `edges` as the edges frame).
pub fn api_topology(ctx: &Context) -> String {
    serde_json::to_string_pretty(&topology(ctx)).unwrap_or_else(|_| "{}".into())
}

fn color(n: &Node) -> &'static str {
    match n.detail_state {
        "ok" => "#2e7d32",
        "warn" => "#ef6c00",
        "fail" => "#c62828",
        _ => "#757575",
    }
}

/// The graph as an SVG for the status page (no script): one row of boxes, source to target,
/// each with its state colour, latency and queue figure, the rates above the arrows.
pub fn svg(t: &Topology) -> String {
    use super::html::esc;
    const W: usize = 150;
    const GAP: usize = 52;
    const H: usize = 74;
    let n = t.nodes.len().max(1);
    let width = n * W + (n - 1) * GAP + 8;
    let mut o = String::new();
    let _ = write!(
        o,
        "<svg class=\"topology\" role=\"img\" aria-label=\"pipeline topology\" viewBox=\"0 0 {width} {}\" width=\"100%\" preserveAspectRatio=\"xMinYMin meet\" xmlns=\"http://www.w3.org/2000/svg\">",
        H + 30
    );
    let x_of = |i: usize| 4 + i * (W + GAP);
    let index = |id: &str| t.nodes.iter().position(|n| n.id == id);
    for e in &t.edges {
        let (Some(a), Some(b)) = (index(&e.source), index(&e.target)) else {
            continue;
        };
        let (x1, x2) = (x_of(a) + W, x_of(b));
        let y = 24 + H / 2;
        let _ = write!(
            o,
            "<line x1=\"{x1}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"#555\" stroke-width=\"2\"/><polygon points=\"{},{} {x2},{y} {},{}\" fill=\"#555\"/><text x=\"{}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            x2.saturating_sub(6),
            x2.saturating_sub(7),
            y.saturating_sub(4),
            x2.saturating_sub(7),
            y + 4,
            (x1 + x2) / 2,
            y.saturating_sub(6),
            esc(&e.mainstat.replace(" rows/s", "/s")),
        );
    }
    for (i, nd) in t.nodes.iter().enumerate() {
        let x = x_of(i);
        let _ = write!(
            o,
            "<g><title>{}</title><rect x=\"{x}\" y=\"24\" width=\"{W}\" height=\"{H}\" rx=\"8\" fill=\"#fff\" stroke=\"{c}\" stroke-width=\"3\"/><text x=\"{}\" y=\"42\" font-size=\"13\" font-weight=\"bold\" text-anchor=\"middle\">{}</text><text x=\"{}\" y=\"57\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{}</text><text x=\"{}\" y=\"72\" font-size=\"11\" text-anchor=\"middle\">{}</text><text x=\"{}\" y=\"87\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{}</text><text x=\"{}\" y=\"16\" font-size=\"10\" text-anchor=\"middle\" fill=\"{c}\">{}</text></g>",
            esc(&format!("{}: {} {}", nd.title, nd.detail_state, nd.detail_why)),
            x + W / 2,
            esc(crate::base::cut(&nd.title, 24)),
            x + W / 2,
            esc(crate::base::cut(&nd.subtitle, 28)),
            x + W / 2,
            esc(&nd.mainstat),
            x + W / 2,
            esc(crate::base::cut(&nd.secondarystat, 28)),
            x + W / 2,
            nd.detail_state,
            c = color(nd),
        );
    }
    o.push_str("</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const M2M: &str = include_str!("../../tests/fixtures/configs/mysql2mysql-stream.toml");

    fn ctx() -> Arc<Context> {
        let settings =
            crate::config::Settings::from_flags(crate::config::Flags::default()).unwrap();
        let mut t = crate::discovery::Target::from_settings(&settings);
        t.config = Some(crate::gravity_config::parse(M2M, false).unwrap());
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(settings));
        let ctx = Context::new(rx, Arc::new(crate::metrics::Store::new()));
        ctx.set_target(t);
        ctx
    }

    #[test]
    fn the_chain_runs_from_the_source_to_the_target() {
        let ctx = ctx();
        ctx.state.rows.set(Some(crate::state::RowRates {
            rows_in: Some(120.0),
            rows_out: Some(118.5),
        }));
        let t = topology(&ctx);
        let ids: Vec<&str> = t.nodes.iter().map(|n| n.id.as_str()).collect();
        assert_eq!(ids.len(), 6, "{ids:?}");
        assert!(ids[0].starts_with("source:"), "{ids:?}");
        assert_eq!(&ids[1..5], ["input", "emitter", "scheduler", "output"]);
        assert!(ids[5].starts_with("target:"), "{ids:?}");
        assert_eq!(t.edges.len(), 5);
        assert!(t
            .edges
            .iter()
            .all(|e| ids.contains(&e.source.as_str()) && ids.contains(&e.target.as_str())));
        assert_eq!(t.edges[4].mainstat, "118.5 rows/s");
        // gravity is not up (no process): its stages fail; the databases are not probed
        assert_eq!(t.nodes[1].detail_state, "fail");
        assert_eq!(t.nodes[0].detail_state, "unknown");
        for n in &t.nodes {
            assert_eq!(n.arc_ok + n.arc_warn + n.arc_fail + n.arc_unknown, 1.0);
        }
        // Grafana's field names
        let json: serde_json::Value = serde_json::from_str(&api_topology(&ctx)).unwrap();
        for k in [
            "id",
            "title",
            "subtitle",
            "mainstat",
            "secondarystat",
            "arc__ok",
            "arc__fail",
            "detail__state",
        ] {
            assert!(json["nodes"][0].get(k).is_some(), "{k}");
        }
        for k in ["id", "source", "target", "mainstat", "secondarystat"] {
            assert!(json["edges"][0].get(k).is_some(), "{k}");
        }
        // no password of the config anywhere
        let text = api_topology(&ctx) + &svg(&t);
        for e in ctx.target().config.iter().flat_map(|c| c.endpoints.iter()) {
            if !e.password.is_empty() {
                assert!(!text.contains(e.password.expose()));
            }
        }
        assert!(svg(&t).starts_with("<svg") && !svg(&t).contains("<script"));
    }
}
