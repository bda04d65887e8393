//! Why gravity's last incarnation ended: `gravity_process_last_exit_info{pipeline,reason,cause}`.
//!
//! The reason is decided at each exit from what that incarnation left behind:
//! - its log lines: a `fatal` record gives `fatal` with the classified cause, a Go `panic:`
//!   (or a logrus `panic` record) gives `panic`, gravity's `[gravity] stop with signal X`
//!   line (SIGTERM, SIGINT, SIGHUP, SIGQUIT) gives `signal`, a deliberate stop;
//! - its cgroup: `oom_kill` of `memory.events` grown since the last reading gives
//!   `oom_killed`, whatever the log says (the kernel's SIGKILL leaves no log line);
//! - nothing of the above: `unknown`.
//!
//! The watcher sees an exit within 100 ms, the log follower reads the last lines up to
//! 500 ms later. So an exit waits [`SETTLE`] for its late lines before it is decided; lines
//! read in that window belong to the incarnation that exited, even if the next one has
//! started. The decision is published as the `exit` snapshot by [`tick`], which the log
//! follower calls on each poll and the process collector on each run.
//!
//! The pure parts ([`evidence`], [`decide`]) are tested on their own; the ledger only
//! keeps the evidence per incarnation.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Context;
use crate::base::lock;
use crate::log::classify::{Classification, ErrorType};
use crate::log::record::Level;
use crate::metrics::Families;

/// How long an exit waits for the log lines its incarnation wrote last.
pub const SETTLE: Duration = Duration::from_millis(2000);
/// Name of the snapshot the decision is published under.
pub const SNAPSHOT: &str = "exit";

/// Why gravity exited. Closed set: a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A `fatal` log line (gravity's `log.Fatal`: exit code 1).
    Fatal,
    /// A Go panic.
    Panic,
    /// A logged stop by SIGTERM, SIGINT, SIGHUP or SIGQUIT: someone stopped it.
    Signal,
    /// The kernel's OOM killer, seen in the cgroup's `memory.events`.
    OomKilled,
    /// None of the above.
    Unknown,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 5] = [
        Reason::Fatal,
        Reason::Panic,
        Reason::Signal,
        Reason::OomKilled,
        Reason::Unknown,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Fatal => "fatal",
            Reason::Panic => "panic",
            Reason::Signal => "signal",
            Reason::OomKilled => "oom_killed",
            Reason::Unknown => "unknown",
        }
    }
}

/// What one log record says about how the incarnation ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// A fatal record with its classified cause.
    Fatal(ErrorType),
    /// A panic.
    Panic,
    /// gravity's signal-stop line.
    Signal,
}

/// gravity's line when a signal stops it (`main.go`): `[gravity] stop with signal terminated`.
pub const SIGNAL_STOP: &str = "stop with signal";

/// What a record says about the end of its incarnation (pure).
pub fn evidence(level: Level, msg: &str, class: Classification) -> Option<Evidence> {
    match level {
        Level::Panic => Some(Evidence::Panic),
        Level::Fatal => Some(Evidence::Fatal(class.error_type)),
        _ if msg.contains(SIGNAL_STOP) => Some(Evidence::Signal),
        _ => None,
    }
}

/// A log record's time (RFC 3339, any offset, as gravity's json and text formats write it)
/// as Unix seconds; `None` when absent or in another shape.
pub fn record_time(t: Option<&str>) -> Option<f64> {
    let t = t?.trim_matches('"');
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()?;
    Some(dt.unix_timestamp_nanos() as f64 / 1e9)
}

/// The evidence of one incarnation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    /// gravity logged a signal stop.
    pub signal: bool,
    /// The last fatal or panic record.
    pub crash: Option<Evidence>,
}

impl Seen {
    /// Adds one piece of evidence.
    pub fn add(&mut self, e: Evidence) {
        match e {
            Evidence::Signal => self.signal = true,
            e => self.crash = Some(e),
        }
    }
}

/// The decision (pure): the OOM killer wins (the kernel's word), then a logged signal
/// stop (someone meant it, even if gravity fails on its way down), then the last fatal or
/// panic record. `oom_grew`: the cgroup's `oom_kill` grew over the incarnation's end.
pub fn decide(seen: Seen, oom_grew: bool) -> (Reason, &'static str) {
    if oom_grew {
        return (Reason::OomKilled, "");
    }
    if seen.signal {
        return (Reason::Signal, "");
    }
    match seen.crash {
        Some(Evidence::Fatal(t)) => (Reason::Fatal, t.as_str()),
        Some(Evidence::Panic) => (Reason::Panic, ""),
        _ => (Reason::Unknown, ""),
    }
}

/// The cgroup `memory.events` files of gravity and their `oom_kill` counts at the last
/// reading (its own cgroup's, and its parent's: in Kubernetes the container's cgroup
/// goes away with the container, the pod's stays, and `memory.events` counts descendants).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OomWatch {
    /// (`memory.events` path, `oom_kill` read there).
    pub files: Vec<(PathBuf, u64)>,
}

impl OomWatch {
    /// Whether `oom_kill` grew in the first file that can still be read; updates the counts.
    pub fn grew(&mut self, read: impl Fn(&std::path::Path) -> Option<u64>) -> bool {
        for (path, before) in &mut self.files {
            if let Some(now) = read(path) {
                let grew = now > *before;
                *before = now;
                return grew;
            }
        }
        false
    }
}

#[derive(Debug)]
struct Pending {
    at: Instant,
    seen: Seen,
    oom: OomWatch,
    /// `oom_kill` read at the exit through the files opened while gravity ran.
    at_exit: Vec<(PathBuf, u64)>,
}

#[derive(Debug, Default)]
struct State {
    current: Seen,
    /// When the running incarnation was seen to start (Unix seconds).
    current_since: Option<f64>,
    pending: Option<Pending>,
    oom: OomWatch,
    /// The files of `oom` kept open: a container's cgroup, seen through
    /// `/proc/<pid>/root`, cannot be opened by path any more once gravity is gone.
    oom_open: Vec<(PathBuf, std::fs::File)>,
    /// When a rise of `oom_kill` was first read while gravity ran (not yet the baseline).
    oom_rose_at: Option<Instant>,
    last: Option<(Reason, &'static str)>,
    changed: bool,
}

/// The evidence per incarnation and the last decision.
#[derive(Debug, Default)]
pub struct ExitLedger {
    state: Mutex<State>,
}

/// Reads `oom_kill` through an open `memory.events` file (from its start; a few hundred bytes).
fn read_open(f: &std::fs::File) -> Option<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = [0u8; 4096];
    let n = f.read_at(&mut buf, 0).ok()?;
    super::cgroup::parse_oom_kills(std::str::from_utf8(buf.get(..n)?).ok()?)
}

/// Reads `oom_kill` from a `memory.events` (or cgroup v1 `memory.oom_control`) file.
pub fn read_oom_kills(path: &std::path::Path) -> Option<u64> {
    let text = super::cgroup::read_small(path).ok()?;
    super::cgroup::parse_oom_kills(&text)
}

impl ExitLedger {
    /// A record of gravity's log without a time was read.
    pub fn observe(&self, e: Evidence, now: Instant) {
        self.observe_written(e, now, None);
    }

    /// The watcher saw gravity exit.
    pub fn exited(&self, now: Instant) {
        let mut st = lock(&self.state);
        // A second exit before the first was decided (a very quick restart): decide it now.
        if st.pending.is_some() {
            Self::finalize(&mut st, &read_oom_kills);
        }
        let seen = std::mem::take(&mut st.current);
        let oom = st.oom.clone();
        let at_exit = st
            .oom_open
            .iter()
            .filter_map(|(p, f)| Some((p.clone(), read_open(f)?)))
            .collect();
        st.pending = Some(Pending {
            at: now,
            seen,
            oom,
            at_exit,
        });
    }

    /// The watcher saw a new incarnation: what was logged before belongs to no exit of it.
    pub fn started(&self) {
        self.started_at(crate::base::unix_now());
    }

    /// [`ExitLedger::started`] at a given Unix time.
    pub fn started_at(&self, unix: f64) {
        let mut st = lock(&self.state);
        st.current = Seen::default();
        st.current_since = Some(unix);
        // A restarted unit may have a new cgroup under the same path: open it again.
        st.oom_open.clear();
    }

    /// A record written at `written` (Unix seconds, when the line carries a time) was read.
    /// Fatal, panic and signal-stop lines end an incarnation, so one written before the
    /// running incarnation was seen to start (read late: a resumed log state file, a log
    /// read from its start) belongs to an earlier one and is not kept for the next exit.
    pub fn observe_written(&self, e: Evidence, now: Instant, written: Option<f64>) {
        let mut st = lock(&self.state);
        match st.pending.as_mut() {
            Some(p) if now.saturating_duration_since(p.at) <= SETTLE => p.seen.add(e),
            _ => {
                // gravity's log times have whole seconds: one second of slack.
                let stale =
                    matches!((written, st.current_since), (Some(w), Some(s)) if w < s - 1.0);
                if !stale {
                    st.current.add(e);
                }
            }
        }
    }

    /// The process collector read gravity's cgroup at `now`. A rise of `oom_kill` becomes
    /// the new baseline only once gravity has outlived it by [`SETTLE`]: a reading taken
    /// between the kernel's kill and the watcher seeing the exit must not hide the kill,
    /// while a kill gravity survived (another process of its cgroup) is not its exit cause.
    pub fn set_oom_watch(&self, w: OomWatch, now: Instant) {
        let mut st = lock(&self.state);
        if st
            .oom_open
            .iter()
            .map(|f| &f.0)
            .ne(w.files.iter().map(|f| &f.0))
        {
            st.oom_open = w
                .files
                .iter()
                .filter_map(|(p, _)| Some((p.clone(), std::fs::File::open(p).ok()?)))
                .collect();
        }
        let same = st.oom.files.len() == w.files.len()
            && st.oom.files.iter().zip(&w.files).all(|(a, b)| a.0 == b.0);
        let rose = same && st.oom.files.iter().zip(&w.files).any(|(a, b)| b.1 > a.1);
        if !rose {
            st.oom = w;
            st.oom_rose_at = None;
            return;
        }
        match st.oom_rose_at {
            None => st.oom_rose_at = Some(now),
            Some(t) if now.saturating_duration_since(t) > SETTLE => {
                st.oom = w;
                st.oom_rose_at = None;
            }
            Some(_) => {}
        }
    }

    fn finalize(st: &mut State, read: &dyn Fn(&std::path::Path) -> Option<u64>) {
        if let Some(mut p) = st.pending.take() {
            let at_exit = std::mem::take(&mut p.at_exit);
            let grew = p.oom.grew(|path| {
                at_exit
                    .iter()
                    .find(|(q, _)| q == path)
                    .map(|(_, n)| *n)
                    .or_else(|| read(path))
            });
            if p.oom.files.first().map(|f| &f.0) == st.oom.files.first().map(|f| &f.0) {
                // Later readings start from what this exit saw.
                st.oom = p.oom;
                st.oom_rose_at = None;
            }
            st.last = Some(decide(p.seen, grew));
            st.changed = true;
        }
    }

    /// Decides a pending exit whose settle time is over. Returns true if the decision changed.
    pub fn settle(&self, now: Instant, read: &dyn Fn(&std::path::Path) -> Option<u64>) -> bool {
        let mut st = lock(&self.state);
        if st
            .pending
            .as_ref()
            .is_some_and(|p| now.saturating_duration_since(p.at) > SETTLE)
        {
            Self::finalize(&mut st, read);
        }
        std::mem::take(&mut st.changed)
    }

    /// The last decision.
    pub fn last(&self) -> Option<(Reason, &'static str)> {
        lock(&self.state).last
    }

    /// `gravity_process_last_exit_info` (absent before the first decided exit).
    pub fn families(&self, pipeline: &str) -> Families {
        let mut f = Families::new();
        if let Some((reason, cause)) = self.last() {
            f.gauge(
                "gravity_process_last_exit_info",
                "Always 1: why gravity's last incarnation ended. reason: fatal (cause: the classified error_type of its last fatal log line), panic, signal (a logged SIGTERM/SIGINT/SIGHUP/SIGQUIT stop: deliberate), oom_killed (its cgroup's memory.events oom_kill grew), unknown.",
                &[("pipeline", pipeline), ("reason", reason.as_str()), ("cause", cause)],
                1.0,
            );
        }
        f
    }
}

/// Decides a pending exit whose late lines had their time and publishes the `exit`
/// snapshot. Reads at most a few small cgroup files; call it off the request path.
pub fn tick(ctx: &Context) {
    ctx.up.exit.settle(Instant::now(), &read_oom_kills);
    // Published every time (one series at most): a renamed pipeline shows at once.
    let t = ctx.target();
    ctx.store
        .set_snapshot(SNAPSHOT, ctx.up.exit.families(&t.pipeline));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::classify::{classify, Component};
    use crate::log::record::{parse_line, LogFormat};

    fn ev_of(line: &str) -> Option<Evidence> {
        let rec = parse_line(line, LogFormat::Json).unwrap();
        evidence(rec.level, &rec.msg, classify(&rec))
    }

    #[test]
    fn evidence_from_gravitys_real_lines() {
        let log = include_str!("../../tests/fixtures/gravity.log");
        let evs: Vec<Evidence> = log.lines().filter_map(ev_of).collect();
        assert_eq!(
            evs,
            vec![
                Evidence::Fatal(ErrorType::ServerBusy),
                Evidence::Fatal(ErrorType::Ddl),
                Evidence::Fatal(ErrorType::Connection),
                Evidence::Signal,
            ]
        );
        let rec = parse_line(
            "panic: runtime error: invalid memory address or nil pointer dereference",
            LogFormat::Json,
        )
        .unwrap();
        assert_eq!(
            evidence(rec.level, &rec.msg, classify(&rec)),
            Some(Evidence::Panic)
        );
        assert_eq!(
            ev_of(
                r#"{"level":"info","msg":"[gravity] stop with signal interrupt","time":"2026-11-22T14:15:00+08:00"}"#
            ),
            Some(Evidence::Signal)
        );
        assert_eq!(
            ev_of(
                r#"{"level":"info","msg":"Welcome to gravity.","time":"2026-11-22T14:15:00+08:00"}"#
            ),
            None
        );
    }

    #[test]
    fn record_times() {
        assert_eq!(
            record_time(Some("2026-11-22T14:15:00+08:00")),
            Some(1_795_328_100.0)
        );
        assert_eq!(record_time(Some("2026/11/22 14:15:00")), None);
        assert_eq!(record_time(None), None);
    }

    #[test]
    fn decision_order() {
        let fatal = Seen {
            signal: false,
            crash: Some(Evidence::Fatal(ErrorType::Ddl)),
        };
        assert_eq!(decide(fatal, false), (Reason::Fatal, "ddl"));
        assert_eq!(decide(fatal, true), (Reason::OomKilled, ""), "oom wins");
        let mut s = Seen::default();
        assert_eq!(decide(s, false), (Reason::Unknown, ""));
        s.add(Evidence::Panic);
        assert_eq!(decide(s, false), (Reason::Panic, ""));
        s.add(Evidence::Signal);
        s.add(Evidence::Fatal(ErrorType::Connection));
        assert_eq!(
            decide(s, false),
            (Reason::Signal, ""),
            "a stop by signal is deliberate even if gravity fails on its way down"
        );
        let _ = Component::ALL;
    }

    #[test]
    fn late_lines_belong_to_the_exit_and_oom_wins() {
        let l = ExitLedger::default();
        let t0 = Instant::now();
        let none = |_: &std::path::Path| None;
        l.observe(Evidence::Fatal(ErrorType::Ddl), t0);
        l.exited(t0);
        l.started(); // the next incarnation is already up
        l.observe(Evidence::Fatal(ErrorType::Connection), t0 + SETTLE / 2); // late line
        assert!(
            !l.settle(t0 + SETTLE / 2, &none),
            "not decided before SETTLE"
        );
        assert_eq!(l.last(), None);
        assert!(l.settle(t0 + SETTLE * 2, &none));
        assert_eq!(l.last(), Some((Reason::Fatal, "connection")));
        assert!(!l.settle(t0 + SETTLE * 3, &none), "decided once");

        // a line after the settle time belongs to the running incarnation
        let t1 = t0 + SETTLE * 4;
        l.observe(Evidence::Signal, t1);
        l.exited(t1 + Duration::from_secs(1));
        l.settle(t1 + SETTLE * 2, &none);
        assert_eq!(l.last(), Some((Reason::Signal, "")));

        // the OOM killer: memory.events oom_kill grows over the exit
        l.set_oom_watch(
            OomWatch {
                files: vec![(PathBuf::from("/cg/memory.events"), 2)],
            },
            t1,
        );
        let t2 = t1 + SETTLE * 10;
        l.observe(Evidence::Fatal(ErrorType::Other), t2);
        l.exited(t2);
        l.settle(t2 + SETTLE * 2, &|_: &std::path::Path| Some(3));
        assert_eq!(l.last(), Some((Reason::OomKilled, "")));
        // the next exit without growth is not an OOM kill again
        let t3 = t2 + SETTLE * 10;
        l.exited(t3);
        l.settle(t3 + SETTLE * 2, &|_: &std::path::Path| Some(3));
        assert_eq!(l.last(), Some((Reason::Unknown, "")));
    }

    #[test]
    fn a_reading_between_the_kill_and_the_exit_does_not_hide_the_oom_kill() {
        let l = ExitLedger::default();
        let t0 = Instant::now();
        let at = |n: u64| OomWatch {
            files: vec![(PathBuf::from("/cg/memory.events"), n)],
        };
        l.set_oom_watch(at(0), t0);
        // the collector reads oom_kill 1 after the kernel killed gravity, before the
        // watcher saw it gone
        l.set_oom_watch(at(1), t0 + Duration::from_millis(50));
        l.exited(t0 + Duration::from_millis(100));
        l.settle(t0 + SETTLE * 2, &|_: &std::path::Path| Some(1));
        assert_eq!(l.last(), Some((Reason::OomKilled, "")));
        // a kill gravity survived (another process of its cgroup) is not its exit cause
        let t1 = t0 + SETTLE * 10;
        l.set_oom_watch(at(2), t1);
        l.set_oom_watch(at(2), t1 + SETTLE * 2);
        l.exited(t1 + SETTLE * 3);
        l.settle(t1 + SETTLE * 5, &|_: &std::path::Path| Some(2));
        assert_eq!(l.last(), Some((Reason::Unknown, "")));
    }

    #[test]
    fn a_stale_line_from_an_earlier_incarnation_is_not_the_next_exits_cause() {
        // The exporter resumes its log state file and reads a fatal line written before the
        // running incarnation started (gravity died while the exporter was down).
        let l = ExitLedger::default();
        let t0 = Instant::now();
        l.started_at(1000.0);
        l.observe_written(Evidence::Fatal(ErrorType::Ddl), t0, Some(900.0));
        l.exited(t0 + Duration::from_secs(1));
        l.settle(t0 + SETTLE * 2, &|_: &std::path::Path| None);
        assert_eq!(l.last(), Some((Reason::Unknown, "")));
        // a line written within the incarnation counts, and so does a line without a time
        let t1 = t0 + SETTLE * 4;
        l.started_at(2000.0);
        l.observe_written(Evidence::Fatal(ErrorType::Ddl), t1, Some(2000.5));
        l.exited(t1);
        l.settle(t1 + SETTLE * 2, &|_: &std::path::Path| None);
        assert_eq!(l.last(), Some((Reason::Fatal, "ddl")));
        let t2 = t1 + SETTLE * 4;
        l.started_at(3000.0);
        l.observe_written(Evidence::Panic, t2, None);
        l.exited(t2);
        l.settle(t2 + SETTLE * 2, &|_: &std::path::Path| None);
        assert_eq!(l.last(), Some((Reason::Panic, "")));
    }

    #[test]
    fn the_oom_kill_is_read_at_the_exit_through_the_open_file() {
        // A container's cgroup (seen through /proc/<pid>/root) is gone soon after the
        // container died: the count is read at the exit through the file opened while
        // gravity ran, not by path 2 s later.
        let d = tempfile::tempdir().unwrap();
        let events = d.path().join("memory.events");
        std::fs::write(&events, "oom 0\noom_kill 0\n").unwrap();
        let l = ExitLedger::default();
        let t0 = Instant::now();
        l.set_oom_watch(
            OomWatch {
                files: vec![(events.clone(), 0)],
            },
            t0,
        );
        // the kernel kills gravity: same file, new content
        std::fs::write(&events, "oom 1\noom_kill 1\n").unwrap();
        l.exited(t0 + Duration::from_millis(100));
        std::fs::remove_file(&events).unwrap(); // the cgroup is removed
        l.settle(t0 + SETTLE * 2, &read_oom_kills);
        assert_eq!(l.last(), Some((Reason::OomKilled, "")));
    }

    #[test]
    fn oom_watch_falls_back_to_the_parent() {
        let mut w = OomWatch {
            files: vec![
                (PathBuf::from("/gone/memory.events"), 0),
                (PathBuf::from("/pod/memory.events"), 4),
            ],
        };
        let read =
            |p: &std::path::Path| (p == std::path::Path::new("/pod/memory.events")).then_some(5);
        assert!(w.grew(read));
        assert!(!w.grew(read));
    }

    #[test]
    fn info_is_absent_before_an_exit() {
        let l = ExitLedger::default();
        assert!(l.families("p").is_empty());
        l.exited(Instant::now());
        l.settle(Instant::now() + SETTLE * 2, &|_: &std::path::Path| None);
        let f = l.families("p");
        assert_eq!(
            f.value(
                "gravity_process_last_exit_info",
                &[("reason", "unknown"), ("cause", "")]
            ),
            Some(1.0)
        );
    }
}
