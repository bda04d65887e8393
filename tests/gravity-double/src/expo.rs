//! `/metrics`: the Prometheus text exposition a gravity process serves through client_golang
//! 1.11's promhttp: gravity's families, the Go and process collectors and promhttp's own
//! counters. Families are sorted by name, series by label values, label pairs by name with
//! `le`/`quantile` last, numbers in Go's `%g` shortest form. `process_*` are this process's
//! real figures from `/proc/self`.

use super::config::{InputType, OutputType};
use super::gofmt::format_float;
use super::sim::{Histogram, Now, Sim};
use std::fmt::Write as _;

/// Content-Type promhttp sends for the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

enum Body<'a> {
    Value(f64),
    Histogram(&'a Histogram),
    Summary {
        quantiles: Vec<(&'static str, f64)>,
        sum: f64,
        count: u64,
    },
}

struct Metric<'a> {
    labels: Vec<(String, String)>,
    body: Body<'a>,
}

/// One family under construction.
struct Family<'a> {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    metrics: Vec<Metric<'a>>,
}

impl<'a> Family<'a> {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            kind,
            metrics: Vec::new(),
        }
    }
    fn add(&mut self, labels: &[(&str, &str)], body: Body<'a>) {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.metrics.push(Metric { labels, body });
    }
    fn value(mut self, labels: &[(&str, &str)], v: f64) -> Self {
        self.add(labels, Body::Value(v));
        self
    }
}

fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn write_labels(out: &mut String, labels: &[(String, String)], last: Option<(&str, &str)>) {
    if labels.is_empty() && last.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    let extra = last.map(|(k, v)| (k.to_string(), v.to_string()));
    for (k, v) in labels.iter().chain(extra.iter()) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        escape_label(v, out);
        out.push('"');
    }
    out.push('}');
}

fn render(mut families: Vec<Family<'_>>) -> String {
    families.retain(|f| !f.metrics.is_empty());
    families.sort_by(|a, b| a.name.cmp(b.name));
    let mut out = String::with_capacity(32 * 1024);
    for f in &mut families {
        f.metrics.sort_by(|a, b| {
            let av = a.labels.iter().map(|(_, v)| v);
            let bv = b.labels.iter().map(|(_, v)| v);
            av.cmp(bv)
        });
        let help = f.help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(out, "# HELP {} {help}", f.name);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for m in &f.metrics {
            match &m.body {
                Body::Value(v) => {
                    out.push_str(f.name);
                    write_labels(&mut out, &m.labels, None);
                    let _ = writeln!(out, " {}", format_float(*v));
                }
                Body::Histogram(h) => {
                    let mut cum = 0u64;
                    for (b, c) in h.buckets.iter().zip(h.counts.iter()) {
                        cum += c;
                        let _ = write!(out, "{}_bucket", f.name);
                        write_labels(&mut out, &m.labels, Some(("le", &format_float(*b))));
                        let _ = writeln!(out, " {}", format_float(cum as f64));
                    }
                    let _ = write!(out, "{}_bucket", f.name);
                    write_labels(&mut out, &m.labels, Some(("le", "+Inf")));
                    let _ = writeln!(out, " {}", format_float(h.count as f64));
                    let _ = write!(out, "{}_sum", f.name);
                    write_labels(&mut out, &m.labels, None);
                    let _ = writeln!(out, " {}", format_float(h.sum));
                    let _ = write!(out, "{}_count", f.name);
                    write_labels(&mut out, &m.labels, None);
                    let _ = writeln!(out, " {}", format_float(h.count as f64));
                }
                Body::Summary {
                    quantiles,
                    sum,
                    count,
                } => {
                    for (q, v) in quantiles {
                        out.push_str(f.name);
                        write_labels(&mut out, &m.labels, Some(("quantile", q)));
                        let _ = writeln!(out, " {}", format_float(*v));
                    }
                    let _ = write!(out, "{}_sum", f.name);
                    write_labels(&mut out, &m.labels, None);
                    let _ = writeln!(out, " {}", format_float(*sum));
                    let _ = write!(out, "{}_count", f.name);
                    write_labels(&mut out, &m.labels, None);
                    let _ = writeln!(out, " {}", format_float(*count as f64));
                }
            }
        }
    }
    out
}

/// Figures client_golang's process collector reads from `/proc/self`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcStats {
    /// utime + stime in seconds.
    pub cpu_seconds: Option<f64>,
    /// Resident set size in bytes.
    pub resident_bytes: Option<f64>,
    /// Virtual memory size in bytes.
    pub virtual_bytes: Option<f64>,
    /// Process start, seconds since the epoch.
    pub start_time: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// Soft limit on open files (-1: unlimited).
    pub max_fds: Option<f64>,
    /// Soft limit on address space (-1: unlimited).
    pub max_virtual: Option<f64>,
    /// OS threads.
    pub threads: Option<f64>,
}

/// procfs' USER_HZ, which client_golang's procfs assumes too.
const USER_HZ: f64 = 100.0;

fn limit(limits: &str, name: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with(name))?;
    let soft = line[name.len()..].split_whitespace().next()?;
    if soft == "unlimited" {
        Some(-1.0)
    } else {
        soft.parse().ok()
    }
}

/// Reads `/proc/self` (missing figures stay `None`).
pub fn proc_self() -> ProcStats {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut s = ProcStats::default();
    if let Some(stat) = read("/proc/self/stat") {
        let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(u), Some(st)) = (num(11), num(12)) {
            s.cpu_seconds = Some((u + st) / USER_HZ);
        }
        s.virtual_bytes = num(20);
        let btime = read("/proc/stat").and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(b), Some(start)) = (btime, num(19)) {
            s.start_time = Some(b + start / USER_HZ);
        }
    }
    if let Some(status) = read("/proc/self/status") {
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        s.resident_bytes = field("VmRSS:").map(|kb| kb * 1024.0);
        s.threads = field("Threads:");
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        s.open_fds = Some(dir.count() as f64);
    }
    if let Some(limits) = read("/proc/self/limits") {
        s.max_fds = limit(&limits, "Max open files");
        s.max_virtual = limit(&limits, "Max address space");
    }
    s
}

/// Renders the whole exposition at `now` (call [`Sim::update_hists`] first).
pub fn render_metrics(sim: &Sim, now: Now, proc_stats: &ProcStats) -> String {
    let p = sim.spec.name.as_str();
    let c = sim.counts(now);
    let h = &sim.hists;
    let mut fams: Vec<Family<'_>> = Vec::new();

    // Flow counters.
    let mut input = Family::new(
        "gravity_input_counter",
        "counter",
        "Number of message input received(generated)",
    );
    for (t, tc) in sim.spec.tables.iter().zip(c.tables.iter()) {
        for (j, (op, _)) in super::sim::OP_SHARES.iter().enumerate() {
            let v = tc.input.get(j).copied().unwrap_or(0);
            if v > 0 {
                input.add(
                    &[
                        ("pipeline", p),
                        ("db", &t.db),
                        ("table", &t.table),
                        ("type", "dml"),
                        ("subtype", op),
                    ],
                    Body::Value(v as f64),
                );
            }
        }
        if tc.ddl + tc.ddl_pending > 0 {
            input.add(
                &[
                    ("pipeline", p),
                    ("db", &t.db),
                    ("table", &t.table),
                    ("type", "ddl"),
                    ("subtype", ""),
                ],
                Body::Value((tc.ddl + tc.ddl_pending) as f64),
            );
        }
    }
    if c.heartbeat > 0 {
        let table = match sim.spec.input {
            InputType::Mysql => "gravity_heartbeat_v2",
            InputType::Mongo => "heartbeat",
        };
        input.add(
            &[
                ("pipeline", p),
                ("db", &sim.spec.internal_db),
                ("table", table),
                ("type", "ctl"),
                ("subtype", ""),
            ],
            Body::Value(c.heartbeat as f64),
        );
    }
    fams.push(input);
    let pl = [("pipeline", p)];
    let started = c.input_total > 0;
    if started {
        fams.push(
            Family::new(
                "gravity_input_emitter_counter",
                "counter",
                "Number of message input sends to emitter",
            )
            .value(&pl, c.input_total as f64),
        );
        fams.push(
            Family::new(
                "gravity_emitter_scheduler_counter",
                "counter",
                "Number of message emitter sends to scheduler",
            )
            .value(&pl, c.input_total as f64),
        );
    }
    if c.output_total > 0 {
        fams.push(
            Family::new(
                "gravity_scheduler_output_counter",
                "counter",
                "Number of message scheduler sends to output",
            )
            .value(&pl, c.output_total as f64),
        );
    }
    // Synchronous (MySQL) output: the retry counter is exported from the start.
    if sim.spec.output == OutputType::Mysql || sim.retries > 0 {
        fams.push(
            Family::new(
                "gravity_scheduler_retry_counter",
                "counter",
                "Number of retries scheduler attempt",
            )
            .value(&pl, sim.retries as f64),
        );
    }
    let mut out = Family::new(
        "gravity_output_counter",
        "counter",
        "Number of message output sends",
    );
    for (k, v) in sim.output_series(&c) {
        out.add(
            &[
                ("pipeline", p),
                ("cat0", &k[0]),
                ("cat1", &k[1]),
                ("cat2", &k[2]),
                ("cat3", &k[3]),
            ],
            Body::Value(v as f64),
        );
    }
    fams.push(out);
    if sim.spec.output == OutputType::Kafka {
        let mut size = Family::new(
            "gravity_output_async_kafka_binlog_msg_size",
            "gauge",
            "binlog msg size",
        );
        let mut topics: Vec<&str> = Vec::new();
        for (t, tc) in sim.spec.tables.iter().zip(c.tables.iter()) {
            if tc.output.iter().sum::<u64>() > 0 && !topics.contains(&t.topic.as_str()) {
                topics.push(&t.topic);
                let v = 380 + super::sim::mix(topics.len() as u64, c.output_total) % 400;
                size.add(
                    &[("pipeline", p), ("topic", &t.topic)],
                    Body::Value(v as f64),
                );
            }
        }
        fams.push(size);
    }

    // Latency histograms (a child exists once something was observed).
    let hists: [(&'static str, &'static str, &Histogram); 10] = [
        (
            "gravity_input_probe_latency",
            "Latency of input probe in seconds.",
            &h.probe,
        ),
        (
            "gravity_input_latency",
            "Latency of input in seconds.",
            &h.input,
        ),
        (
            "gravity_input_after_commit_latency",
            "Latency of after commit callback in seconds.",
            &h.after_commit,
        ),
        (
            "gravity_emitter_latency",
            "Latency of emitter in seconds.",
            &h.emitter,
        ),
        (
            "gravity_scheduler_total_latency",
            "Latency of scheduler from the beginning of submit to the end of ack in seconds.",
            &h.sched_total,
        ),
        (
            "gravity_scheduler_submit_latency",
            "Latency of scheduler submit phrase in seconds.",
            &h.sched_submit,
        ),
        (
            "gravity_scheduler_ack_latency",
            "Latency of scheduler ack phrase in seconds.",
            &h.sched_ack,
        ),
        (
            "gravity_output_latency",
            "Latency of output in seconds.",
            &h.output,
        ),
        (
            "gravity_event_time_latency",
            "Latency of end to end event time in seconds.",
            &h.event_time,
        ),
        (
            "gravity_process_time_latency",
            "Latency of end to end process time in seconds.",
            &h.process_time,
        ),
    ];
    for (name, help, hg) in hists {
        let mut f = Family::new(name, "histogram", help);
        if hg.count > 0 {
            f.add(&pl, Body::Histogram(hg));
        }
        fams.push(f);
    }

    // Gauges.
    let mut q = Family::new("gravity_queue_length", "gauge", "Length of specific queue.");
    for (typ, sub, v) in sim.queues(now) {
        q.add(
            &[("pipeline", p), ("type", &typ), ("subtype", &sub)],
            Body::Value(v),
        );
    }
    fams.push(q);
    fams.push(
        Family::new("gravity_scheduler_nr_worker", "gauge", "number of workers")
            .value(&pl, sim.spec.scheduler.nr_worker as f64),
    );
    let mut bs = Family::new("gravity_scheduler_batch_size", "gauge", "batch size");
    if started {
        for (idx, v) in sim.batch_sizes(now) {
            bs.add(&[("pipeline", p), ("idx", &idx)], Body::Value(v));
        }
    }
    fams.push(bs);
    let mut sw = Family::new(
        "gravity_scheduler_sliding_window_ratio",
        "gauge",
        "sliding window ratio",
    );
    if started {
        for (key, v) in sim.window_ratios(now) {
            sw.add(
                &[("pipeline", p), ("input_stream_key", &key)],
                Body::Value(v),
            );
        }
    }
    fams.push(sw);

    // client_golang's Go collector: plausible figures for a gravity of this size.
    let up = sim.uptime(now);
    let gc_count = (up / 7.0).floor() as u64 + 1;
    fams.push({
        let mut f = Family::new(
            "go_gc_duration_seconds",
            "summary",
            "A summary of the pause duration of garbage collection cycles.",
        );
        f.add(
            &[],
            Body::Summary {
                quantiles: vec![
                    ("0", 2.3e-05),
                    ("0.25", 4.1e-05),
                    ("0.5", 6.2e-05),
                    ("0.75", 0.000101),
                    ("1", 0.004519),
                ],
                sum: gc_count as f64 * 8.3e-05,
                count: gc_count,
            },
        );
        f
    });
    let n_tables = sim.spec.tables.len() as f64;
    let goroutines = 40.0
        + 4.0 * n_tables
        + sim.spec.scheduler.nr_worker.min(1024) as f64
        + (up as u64 % 7) as f64;
    fams.push(
        Family::new(
            "go_goroutines",
            "gauge",
            "Number of goroutines that currently exist.",
        )
        .value(&[], goroutines),
    );
    fams.push(
        Family::new("go_info", "gauge", "Information about the Go environment.")
            .value(&[("version", "go1.16.15")], 1.0),
    );
    let alloc = 8_000_000.0 + ((up * 173_000.0) % 4_000_000.0).floor();
    fams.push(
        Family::new(
            "go_memstats_alloc_bytes",
            "gauge",
            "Number of bytes allocated and still in use.",
        )
        .value(&[], alloc),
    );
    fams.push(
        Family::new(
            "go_memstats_heap_inuse_bytes",
            "gauge",
            "Number of heap bytes that are in use.",
        )
        .value(&[], ((alloc * 1.08) / 8192.0).ceil() * 8192.0),
    );
    fams.push(
        Family::new("go_threads", "gauge", "Number of OS threads created.")
            .value(&[], proc_stats.threads.unwrap_or(9.0)),
    );

    // Process collector: real figures of this process.
    let pv = |name: &'static str, kind: &'static str, help: &'static str, v: Option<f64>| {
        let f = Family::new(name, kind, help);
        match v {
            Some(v) => f.value(&[], v),
            None => f,
        }
    };
    let ps = proc_stats;
    fams.push(pv(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        ps.cpu_seconds,
    ));
    fams.push(pv(
        "process_max_fds",
        "gauge",
        "Maximum number of open file descriptors.",
        ps.max_fds,
    ));
    fams.push(pv(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        ps.open_fds,
    ));
    fams.push(pv(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        ps.resident_bytes,
    ));
    fams.push(pv(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        ps.start_time,
    ));
    fams.push(pv(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        ps.virtual_bytes,
    ));
    fams.push(pv(
        "process_virtual_memory_max_bytes",
        "gauge",
        "Maximum amount of virtual memory available in bytes.",
        ps.max_virtual,
    ));

    // promhttp's own instrumentation.
    fams.push(
        Family::new(
            "promhttp_metric_handler_requests_in_flight",
            "gauge",
            "Current number of scrapes being served.",
        )
        .value(&[], sim.in_flight as f64),
    );
    fams.push(
        Family::new(
            "promhttp_metric_handler_requests_total",
            "counter",
            "Total number of scrapes by HTTP status code.",
        )
        .value(&[("code", "200")], sim.scrapes[0] as f64)
        .value(&[("code", "500")], sim.scrapes[1] as f64)
        .value(&[("code", "503")], sim.scrapes[2] as f64),
    );
    render(fams)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::config;
    use super::super::sim::Settings;
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    /// Family name → (HELP, TYPE, label names), from a text exposition. Test-only splitter.
    pub(crate) fn families(text: &str) -> BTreeMap<String, (String, String, BTreeSet<String>)> {
        let mut out: BTreeMap<String, (String, String, BTreeSet<String>)> = BTreeMap::new();
        let mut current = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                current = name.to_string();
                out.entry(current.clone()).or_default().0 = help.to_string();
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, t) = rest.split_once(' ').unwrap_or((rest, ""));
                out.entry(name.to_string()).or_default().1 = t.to_string();
            } else if !line.is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                assert!(line[..name_end].starts_with(current.as_str()), "{line}");
                if let Some(open) = line.find('{') {
                    let close = line.rfind('}').unwrap_or(line.len());
                    for pair in line[open + 1..close].split("\",") {
                        if let Some((k, _)) = pair.split_once('=') {
                            out.entry(current.clone())
                                .or_default()
                                .2
                                .insert(k.to_string());
                        }
                    }
                }
            }
        }
        out
    }

    fn sim_for(text: &str) -> Sim {
        let spec = config::parse("c.toml", text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        Sim::new(spec, Settings::default(), Now::current())
    }

    #[test]
    fn same_families_help_types_and_labels_as_the_fixture() {
        let fixture = include_str!("../../fixtures/metrics.prom");
        let mut sim = sim_for(include_str!(
            "../../fixtures/configs/mysql2mysql-stream.toml"
        ));
        let now = sim.start.plus(Duration::from_secs(2));
        sim.update_hists(now);
        let body = render_metrics(&sim, now, &proc_self());
        let want = families(fixture);
        let got = families(&body);
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>()
        );
        for (name, w) in &want {
            assert_eq!(got.get(name), Some(w), "family {name}");
        }
        // family order is by name, as client_golang writes it
        let order: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .map(|l| l.split(' ').next().unwrap_or_default())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(order, sorted);
    }

    #[test]
    fn lines_are_shaped_like_client_golang() {
        let mut sim = sim_for(include_str!(
            "../../fixtures/configs/mysql2mysql-stream.toml"
        ));
        let now = sim.start.plus(Duration::from_secs(10_000));
        sim.update_hists(now);
        let body = render_metrics(&sim, now, &proc_self());
        // large counts print in Go's exponent form; le comes last
        let emitted = body
            .lines()
            .find_map(|l| {
                l.strip_prefix("gravity_input_emitter_counter{pipeline=\"mysql2mysqlDemo\"} ")
            })
            .unwrap_or_default();
        assert!(
            emitted.starts_with("1.99999") && emitted.ends_with("e+06"),
            "{emitted}"
        );
        assert!(body.contains(
            "gravity_input_counter{db=\"_gravity\",pipeline=\"mysql2mysqlDemo\",subtype=\"\",table=\"gravity_heartbeat_v2\",type=\"ctl\"} 10001\n"
        ));
        assert!(body.contains(
            "gravity_event_time_latency_bucket{pipeline=\"mysql2mysqlDemo\",le=\"536870.912\"} "
        ));
        assert!(body.contains("gravity_output_counter{cat0=\"test_db\",cat1=\"orders\",cat2=\"dml\",cat3=\"mysql-replace-engine\",pipeline=\"mysql2mysqlDemo\"} "));
        assert!(body.contains(
            "gravity_queue_length{pipeline=\"mysql2mysqlDemo\",subtype=\"19\",type=\"worker\"} "
        ));
        // series sorted by label values within a family
        let inputs: Vec<&str> = body
            .lines()
            .filter(|l| l.starts_with("gravity_input_counter{"))
            .collect();
        let mut sorted = inputs.clone();
        sorted.sort();
        assert_eq!(inputs, sorted);
        let ps = proc_self();
        assert!(ps.open_fds.unwrap_or(0.0) > 0.0);
        assert!(ps.resident_bytes.unwrap_or(0.0) > 1e5);
        let start = ps.start_time.unwrap_or(0.0);
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        assert!(start > now_s - 3600.0 && start <= now_s + 1.0, "{start}");
    }

    #[test]
    fn kafka_and_mongo_families() {
        let mut sim = sim_for(include_str!("../../fixtures/configs/mongo2kafka.toml"));
        let now = sim.start.plus(Duration::from_secs(3));
        sim.update_hists(now);
        let body = render_metrics(&sim, now, &ProcStats::default());
        assert!(body.contains("gravity_output_counter{cat0=\"oplog.app\",cat1=\"0\",cat2=\"\",cat3=\"\",pipeline=\"mongo2kafka\"} "));
        assert!(body.contains("table=\"heartbeat\",type=\"ctl\"} 4\n"));
        assert!(body.contains("gravity_output_async_kafka_binlog_msg_size{pipeline=\"mongo2kafka\",topic=\"oplog.app\"} "));
        assert!(body.contains("input_stream_key=\"mongooplog\""));
        assert!(!body.contains("gravity_scheduler_retry_counter"));
        assert!(
            !body.contains("process_open_fds"),
            "missing figures are left out"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        write_labels(
            &mut s,
            &[("a".into(), "x\"y\\z\nw".into())],
            Some(("le", "1")),
        );
        assert_eq!(s, "{a=\"x\\\"y\\\\z\\nw\",le=\"1\"}");
    }
}
