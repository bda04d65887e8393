//! The running double: shared state behind the HTTP handlers, the 100 ms ticker that moves
//! the simulation and writes gravity's periodic log lines (retries, DDLs, stall and probe
//! warnings, batch completion), signal handling, the config-file watch and the accept loop.

use super::config::{InputMode, InputType, OutputType, PipelineSpec};
use super::expo;
use super::flags::Flags;
use super::gofmt;
use super::logw::{at, Caller, Format, Level, Logger};
use super::server;
use super::sim::{Case, Mode, Now, Settings, Sim, Unhealthy};
use super::status;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// Most simultaneous HTTP connections served.
const MAX_CONNECTIONS: usize = 1024;

/// Kinds of error lines `POST /_double/errors` writes, in gravity's real shapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// MySQL 1213, a sync-output retry.
    Deadlock,
    /// MySQL 1205, a sync-output retry.
    LockWait,
    /// MySQL 1062, a sync-output retry.
    DuplicateKey,
    /// `dial tcp ...: connect: connection refused` from the binlog probe.
    ConnectionRefused,
    /// `dial tcp ...: i/o timeout`, a sync-output retry.
    IoTimeout,
    /// `invalid connection`, a sync-output retry.
    InvalidConnection,
    /// sarama: out of brokers (error, no retry counter).
    KafkaBrokers,
    /// MySQL 1146 (error).
    MissingTable,
    /// MySQL 1064 on a DDL: fatal, gravity exits.
    DdlSyntax,
    /// TiKV 9003, a sync-output retry.
    TikvBusy,
}

impl ErrorKind {
    /// All kinds.
    pub const ALL: [ErrorKind; 10] = [
        ErrorKind::Deadlock,
        ErrorKind::LockWait,
        ErrorKind::DuplicateKey,
        ErrorKind::ConnectionRefused,
        ErrorKind::IoTimeout,
        ErrorKind::InvalidConnection,
        ErrorKind::KafkaBrokers,
        ErrorKind::MissingTable,
        ErrorKind::DdlSyntax,
        ErrorKind::TikvBusy,
    ];

    /// Name used by the control endpoint.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Deadlock => "deadlock",
            ErrorKind::LockWait => "lock_wait",
            ErrorKind::DuplicateKey => "duplicate_key",
            ErrorKind::ConnectionRefused => "connection_refused",
            ErrorKind::IoTimeout => "io_timeout",
            ErrorKind::InvalidConnection => "invalid_connection",
            ErrorKind::KafkaBrokers => "kafka_brokers",
            ErrorKind::MissingTable => "missing_table",
            ErrorKind::DdlSyntax => "ddl_syntax",
            ErrorKind::TikvBusy => "tikv_busy",
        }
    }

    /// Parses a kind name.
    pub fn parse(s: &str) -> Option<ErrorKind> {
        let s = s.trim().to_ascii_lowercase().replace('-', "_");
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Whether gravity counts this in `gravity_scheduler_retry_counter`.
    pub fn is_retry(self) -> bool {
        matches!(
            self,
            ErrorKind::Deadlock
                | ErrorKind::LockWait
                | ErrorKind::DuplicateKey
                | ErrorKind::IoTimeout
                | ErrorKind::InvalidConnection
                | ErrorKind::TikvBusy
        )
    }

    /// The log line `(level, caller, message)` as gravity writes it.
    pub fn line(self, spec: &PipelineSpec) -> (Level, Caller, String) {
        const RETRY: &str = "error execute sync output, retry. ";
        let sched = at("batch_table_scheduler.go", 251);
        let table = spec
            .tables
            .first()
            .map_or("test_db.orders".to_string(), |t| {
                format!("{}.{}", t.db, t.table)
            });
        match self {
            ErrorKind::Deadlock => (
                Level::Warning,
                sched,
                format!("{RETRY}Error 1213: Deadlock found when trying to get lock; try restarting transaction"),
            ),
            ErrorKind::LockWait => (
                Level::Warning,
                sched,
                format!("{RETRY}Error 1205: Lock wait timeout exceeded; try restarting transaction"),
            ),
            ErrorKind::DuplicateKey => (
                Level::Warning,
                sched,
                format!("{RETRY}Error 1062: Duplicate entry '1001' for key 'PRIMARY'"),
            ),
            ErrorKind::IoTimeout => (
                Level::Warning,
                sched,
                format!("{RETRY}dial tcp {}: i/o timeout", spec.target_addr),
            ),
            ErrorKind::InvalidConnection => {
                (Level::Warning, sched, format!("{RETRY}invalid connection"))
            }
            ErrorKind::TikvBusy => (
                Level::Warning,
                sched,
                format!("{RETRY}Error 9003: TiKV server is busy"),
            ),
            ErrorKind::ConnectionRefused => (
                Level::Warning,
                at("checker.go", 201),
                format!(
                    "[binlog_checker] failed probe: dial tcp {}: connect: connection refused",
                    spec.source_addr
                ),
            ),
            ErrorKind::KafkaBrokers => (
                Level::Error,
                at("async_kafka.go", 133),
                "[output_async_kafka] kafka: client has run out of available brokers to talk to (Is your cluster reachable?)".to_string(),
            ),
            ErrorKind::MissingTable => (
                Level::Error,
                at("batch_table_scheduler.go", 261),
                format!("[batchScheduler] err: Error 1146: Table '{table}_archive' doesn't exist"),
            ),
            ErrorKind::DdlSyntax => (
                Level::Fatal,
                at("mysql.go", 352),
                "[output-mysql] error exec ddl: create index idx on hello (id,status,size) lock=none. err: Error 1064: You have an error in your SQL syntax; check the manual that corresponds to your MySQL server version for the right syntax to use near 'lock=none' at line 1".to_string(),
            ),
        }
    }
}

/// State shared by the HTTP handlers and the background tasks.
pub struct App {
    sim: Mutex<Sim>,
    log: Logger,
    mode_tx: watch::Sender<Mode>,
    exit_tx: watch::Sender<Option<i32>>,
    marker_dir: PathBuf,
    config_path: String,
    config_hash: String,
    /// The Kafka data path (`GRAVITY_DOUBLE_KAFKA_PRODUCE=1`, [`super::kafka_out`]).
    pub kafka_out: Arc<super::kafka_out::State>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("config_path", &self.config_path)
            .finish()
    }
}

impl App {
    fn sim(&self) -> MutexGuard<'_, Sim> {
        self.sim.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A receiver that sees mode changes.
    pub fn mode_rx(&self) -> watch::Receiver<Mode> {
        self.mode_tx.subscribe()
    }

    /// Current mode.
    pub fn mode(&self) -> Mode {
        self.sim().mode()
    }

    /// Counts a `/metrics` answer by status code (promhttp's counter).
    pub fn count_scrape(&self, code: u16) {
        let mut sim = self.sim();
        let idx = match code {
            200 => 0,
            500 => 1,
            _ => 2,
        };
        if let Some(n) = sim.scrapes.get_mut(idx) {
            *n += 1;
        }
    }

    /// Renders `/metrics` now.
    pub fn render_metrics(&self) -> String {
        let ps = expo::proc_self();
        let now = Now::current();
        let mut sim = self.sim();
        sim.in_flight += 1;
        sim.update_hists(now);
        let body = expo::render_metrics(&sim, now, &ps);
        sim.in_flight -= 1;
        sim.scrapes[0] += 1;
        body
    }

    /// Renders `/status` now, or `None` (HTTP 500, logged) while no position is stored.
    pub fn render_status(&self) -> Option<String> {
        let now = Now::current();
        let body = {
            let sim = self.sim();
            sim.position_stored.then(|| status::status_json(&sim, now))
        };
        if body.is_none() {
            self.log.log(
                Level::Error,
                at("main.go", 203),
                "[statusHandler] failed to get positionRepoModel, exist: false, err: <nil>",
            );
        }
        body
    }

    /// gravity's `Healthy()`, logging the warning gravity logs when not healthy.
    pub fn healthz(&self) -> bool {
        let now = Now::current();
        let verdict = self.sim().healthy(now);
        let msg = match verdict {
            Ok(()) => return true,
            Err(Unhealthy::Window { key, age }) => format!(
                "[batchScheduler.Healthy] sliding window {key} not healthy, watermark: {}",
                gofmt::format_duration(age)
            ),
            Err(Unhealthy::NoWindow(up)) => format!(
                "[batchScheduler.Healthy] no window for {}",
                gofmt::format_duration(up)
            ),
        };
        self.log
            .log(Level::Warning, at("batch_table_scheduler.go", 162), &msg);
        false
    }

    /// `/reset` was called: record it (stderr line + marker file) and exit 1 like gravity.
    pub fn reset_called(&self) {
        eprintln!("RESET CALLED");
        let marker = self.marker_dir.join("reset-called");
        let _ = std::fs::write(
            &marker,
            format!(
                "RESET CALLED pid={} at={}\n",
                std::process::id(),
                gofmt::rfc3339_nano(
                    std::time::SystemTime::now(),
                    gofmt::ZoneOffset { seconds: 0 }
                )
            ),
        );
        self.log.log(
            Level::Info,
            at("batch_table_scheduler.go", 270),
            "[batchScheduler] closing scheduler",
        );
        self.exit(1);
    }

    /// Asks the runtime to exit with `code` (the first request wins).
    pub fn exit(&self, code: i32) {
        self.exit_tx.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(code);
                true
            } else {
                false
            }
        });
    }

    fn crash(&self) {
        let spec = self.sim().spec.clone();
        let (caller, msg) = match spec.input {
            InputType::Mysql => (
                at("binlog_tailer.go", 415),
                format!(
                    "[binlogTailer] failed to flush position cache, err: dial tcp {}: connect: connection refused",
                    spec.source_addr
                ),
            ),
            InputType::Mongo => (
                at("oplog_tailer.go", 182),
                format!(
                    "[oplog_tailer] failed to flush position cache, err: dial tcp {}: connect: connection refused",
                    spec.source_addr
                ),
            ),
        };
        self.log.log(Level::Fatal, caller, &msg);
        self.exit(1);
    }

    fn close_lines(&self) {
        for m in [
            "[batchScheduler] closing scheduler",
            "[batchScheduler] table buffer closed",
            "[batchScheduler] worker closed",
            "[batchScheduler] sliding window closed",
        ] {
            self.log
                .log(Level::Info, at("batch_table_scheduler.go", 270), m);
        }
    }

    fn exit0(&self) {
        self.close_lines();
        self.exit(0);
    }

    /// What the Go runtime writes on an unrecovered panic (to stderr, which is gravity's
    /// log when it runs without `--log-file` under systemd or nohup), then exit code 2.
    fn panic(&self) {
        self.log.raw(
            "panic: runtime error: invalid memory address or nil pointer dereference\n\
             [signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x8a5f3e]\n\n\
             goroutine 1 [running]:\n\
             github.com/moiot/gravity/pkg/outputs/mysql.(*MySQLOutput).Execute(0xc0001b2000, 0xc0004a6000, 0x1, 0x1, 0x0, 0x0)\n\
             \t/go/src/github.com/moiot/gravity/pkg/outputs/mysql/mysql.go:211 +0x3e\n",
        );
        self.exit(2);
    }

    /// Allocates and touches memory until 1 GiB is held (bounded), on its own thread.
    fn memory_hog(&self) {
        const CHUNK: usize = 8 << 20;
        const CHUNKS: usize = 128;
        std::thread::spawn(|| {
            let mut held: Vec<Vec<u8>> = Vec::with_capacity(CHUNKS);
            for _ in 0..CHUNKS {
                // non-zero fill: every page is touched, so it is resident
                held.push(vec![1u8; CHUNK]);
                std::thread::sleep(Duration::from_millis(5));
            }
            loop {
                std::thread::sleep(Duration::from_secs(60));
                std::hint::black_box(&held);
            }
        });
    }

    /// Switches the fault mode; `crash`, `panic` and `exit0` act 50 ms later so the caller gets an answer.
    pub fn set_mode(self: &Arc<Self>, mode: Mode) {
        match mode {
            Mode::MemoryHog => self.memory_hog(),
            Mode::Crash | Mode::Exit0 | Mode::Panic => {
                let app = Arc::clone(self);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    match mode {
                        Mode::Crash => app.crash(),
                        Mode::Panic => app.panic(),
                        _ => app.exit0(),
                    }
                });
            }
            m => {
                self.sim().set_mode(m, Now::current());
                self.mode_tx.send_replace(m);
            }
        }
    }

    /// Switches the diagnosis case (`POST /_double/diagnosis?case=`). A stuck window stalls
    /// the pipeline: the mode watchers learn it like a `stall` fault.
    pub fn set_case(&self, case: super::sim::Case) {
        let mode = {
            let mut sim = self.sim();
            sim.set_case(case, Now::current());
            sim.mode()
        };
        self.mode_tx.send_replace(mode);
    }

    /// Changes the row rate.
    pub fn set_rate(&self, rate: f64) {
        self.sim().set_rate(rate, Now::current());
    }

    /// Pins the stream watermark to times of a real data path (`None`: simulated again).
    pub fn set_watermark(&self, w: Option<(std::time::SystemTime, std::time::SystemTime)>) {
        self.sim().external_watermark = w;
    }

    /// Changes the mean lag.
    pub fn set_lag(&self, lag: f64) {
        self.sim().set_lag_mean(lag);
    }

    /// Writes `n` lines of `kind`; returns (lines written, retries counted). A fatal kind
    /// writes one line and exits 1 (gravity's behaviour) unless `exit` is false.
    pub fn write_errors(self: &Arc<Self>, kind: ErrorKind, n: u64, exit: bool) -> (u64, u64) {
        let spec = self.sim().spec.clone();
        let (level, caller, msg) = kind.line(&spec);
        let fatal = level == Level::Fatal;
        let n = if fatal && exit { n.min(1) } else { n };
        let mut retries = 0;
        for _ in 0..n {
            self.log.log(level, caller, &msg);
            if kind.is_retry() {
                self.sim().retries += 1;
                retries += 1;
            }
        }
        if fatal && exit && n > 0 {
            let app = Arc::clone(self);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                app.exit(1);
            });
        }
        (n, retries)
    }

    /// `GET /_double/state`: the truth about the simulation.
    pub fn state_json(&self, now: Now) -> serde_json::Value {
        let sim = self.sim();
        let c = sim.counts(now);
        let rates: Vec<serde_json::Value> = sim
            .true_rates(now)
            .into_iter()
            .filter_map(|(i, op, r)| {
                let t = sim.spec.tables.get(i)?;
                Some(serde_json::json!({
                    "db": t.db, "table": t.table, "op": op, "rows_per_second": r,
                    "share": sim.weights().get(i).copied().unwrap_or(0.0),
                }))
            })
            .collect();
        let tables: Vec<serde_json::Value> = sim
            .spec
            .tables
            .iter()
            .zip(c.tables.iter())
            .map(|(t, tc)| {
                serde_json::json!({
                    "db": t.db, "table": t.table,
                    "input": {"insert": tc.input[0], "update": tc.input[1], "delete": tc.input[2]},
                    "output": {"insert": tc.output[0], "update": tc.output[1], "delete": tc.output[2]},
                    "ddl": tc.ddl, "scanned": tc.scanned, "total": tc.total, "done": tc.done,
                })
            })
            .collect();
        let b = sim.binlog(now);
        let flowing = sim.mode().flows();
        serde_json::json!({
            "pid": std::process::id(),
            "mode": sim.mode().as_str(),
            "diagnosis_case": sim.case().as_str(),
            "diagnosis_case_seconds": sim.case_for(now),
            "stuck_item": sim.stuck_item(now).map(|(seq, stream, waited)| serde_json::json!({"seq": seq, "stream": stream, "waited_seconds": waited})),
            "sliding_window_waiting": sim.window_waiting(now),
            "pipeline": sim.spec.name,
            "input": match sim.spec.input { InputType::Mysql => "mysql", InputType::Mongo => "mongo" },
            "input_mode": match sim.spec.mode { InputMode::Stream => "stream", InputMode::Batch => "batch" },
            "output": match sim.spec.output { OutputType::Mysql => "mysql", OutputType::Kafka => "async-kafka", OutputType::Elasticsearch => "elasticsearch" },
            "uptime_seconds": sim.uptime(now),
            "kafka_out": self.kafka_out.json(),
            "rows_per_second_setting": sim.rate(),
            "rows_per_second": if flowing { sim.rate() } else { 0.0 },
            "flowing": flowing,
            "heartbeat_rows_per_second": sim.heartbeat_rate(),
            "lag_seconds": sim.lag(now),
            "lag_mean_seconds": sim.lag_mean(),
            "stalled_seconds": sim.stalled_for(now),
            "healthy_threshold_seconds": sim.spec.scheduler.healthy_threshold,
            "position_stored": sim.position_stored,
            "rates": rates,
            "tables": tables,
            "counters": {
                "input_rows": c.input_total,
                "output_rows": c.output_total,
                "heartbeat_rows": c.heartbeat,
                "ddl": c.ddl_total,
                "retries": sim.retries,
                "flow_units": c.units,
                "output_flow_units": c.out_units,
                "flow_seconds": c.flow_secs,
            },
            "binlog": {"name": b.name, "pos": b.pos, "gtid": b.gtid},
            "log_file": self.log.path(),
        })
    }
}

/// Per-ticker bookkeeping for the periodic log lines.
struct TickState {
    initial_done: bool,
    next_retry: f64,
    retry_idx: usize,
    ddl_logged: u64,
    next_stall_log: f64,
    next_probe_log: Option<f64>,
    last_config_check: f64,
    /// Uptime of the next line of a diagnosis case (retries, `item not ack`, `latch for long`).
    next_case_log: f64,
    case_idx: usize,
}

/// The retry causes of the `retries` case, in turn: deadlocks, and a lock wait.
const CASE_RETRIES: [ErrorKind; 3] = [
    ErrorKind::Deadlock,
    ErrorKind::Deadlock,
    ErrorKind::LockWait,
];

const RETRY_CYCLE: [ErrorKind; 6] = [
    ErrorKind::Deadlock,
    ErrorKind::LockWait,
    ErrorKind::InvalidConnection,
    ErrorKind::IoTimeout,
    ErrorKind::DuplicateKey,
    ErrorKind::TikvBusy,
];

async fn ticker(app: Arc<App>, settings: Settings) {
    let mut iv = tokio::time::interval(Duration::from_millis(100));
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut st = TickState {
        initial_done: false,
        next_retry: settings.retry_every.unwrap_or(f64::INFINITY),
        retry_idx: 0,
        ddl_logged: 0,
        next_stall_log: 1.0,
        next_probe_log: None,
        last_config_check: 0.0,
        next_case_log: 0.0,
        case_idx: 0,
    };
    let delay = settings.position_delay.as_secs_f64();
    loop {
        iv.tick().await;
        let now = Now::current();
        let mut lines: Vec<(Level, Caller, String)> = Vec::new();
        let mut action: Option<Mode> = None;
        let up;
        {
            let mut sim = app.sim();
            let spec = sim.spec.clone();
            sim.update_hists(now);
            sim.note_done(now);
            up = sim.uptime(now);
            if !sim.position_stored && !settings.no_position && up >= delay {
                sim.position_stored = true;
            }
            if !st.initial_done && up >= delay + 0.2 {
                st.initial_done = true;
                if matches!(
                    settings.initial_mode,
                    Mode::Crash | Mode::Exit0 | Mode::Panic | Mode::MemoryHog
                ) {
                    action = Some(settings.initial_mode);
                }
            }
            if sim.batch_finished(now) {
                action = Some(Mode::Exit0);
            }
            if let Some(every) = settings.retry_every {
                let mut guard = 0;
                while up >= st.next_retry && guard < 1000 {
                    guard += 1;
                    st.next_retry += every;
                    if !sim.mode().flows() {
                        continue;
                    }
                    let kind = if spec.output == OutputType::Mysql {
                        RETRY_CYCLE
                            .get(st.retry_idx % RETRY_CYCLE.len())
                            .copied()
                            .unwrap_or(ErrorKind::Deadlock)
                    } else {
                        ErrorKind::KafkaBrokers
                    };
                    st.retry_idx += 1;
                    lines.push(kind.line(&spec));
                    if kind.is_retry() {
                        sim.retries += 1;
                    }
                }
            }
            let c = sim.counts(now);
            if c.ddl_total > st.ddl_logged + 100 {
                st.ddl_logged = c.ddl_total - 100;
            }
            if spec.output != OutputType::Mysql {
                st.ddl_logged = c.ddl_total;
            }
            while st.ddl_logged < c.ddl_total {
                let n = spec.tables.len().max(1) as u64;
                if let Some(t) = spec.tables.get((st.ddl_logged % n) as usize) {
                    let col = st.ddl_logged / n + 1;
                    lines.push((
                        Level::Info,
                        at("mysql.go", 327),
                        format!(
                            "[output-mysql] executed ddl: ALTER TABLE `{}`.`{}` ADD COLUMN `c_{col}` INT",
                            t.target_db, t.target_table
                        ),
                    ));
                }
                st.ddl_logged += 1;
            }
            // The lines of a diagnosis case, once a second (gravity's sliding window warns
            // every second while an item waits past 30 s; a retry is one failed attempt of a
            // sync output batch, `retry-sleep` (1 s) apart).
            if up >= st.next_case_log {
                st.next_case_log = up.floor() + 1.0;
                match sim.case() {
                    Case::Retries if spec.output == OutputType::Mysql && sim.mode().flows() => {
                        let kind = CASE_RETRIES
                            .get(st.case_idx % CASE_RETRIES.len())
                            .copied()
                            .unwrap_or(ErrorKind::Deadlock);
                        st.case_idx += 1;
                        lines.push(kind.line(&spec));
                        sim.retries += 1;
                    }
                    Case::StuckWindow => {
                        if let Some((seq, key, waited)) = sim.stuck_item(now) {
                            if waited > super::sim::PROCESS_DELAY_WARNING {
                                lines.push((
                                    Level::Warning,
                                    at("sliding_window.go", 97),
                                    format!(
                                        "[sliding_window] item not ack after {waited:.6} seconds. {key} seq {seq}"
                                    ),
                                ));
                            }
                        }
                    }
                    Case::HotRows if sim.mode().flows() => {
                        // a latched key waits past 5 s: gravity warns
                        if st.case_idx % 5 == 0 {
                            if let Some(t) = spec.tables.first() {
                                lines.push((
                                    Level::Warning,
                                    at("table_latch.go", 64),
                                    format!(
                                        "[batchScheduler] latch for long: {}.{}",
                                        t.db, t.table
                                    ),
                                ));
                            }
                        }
                        st.case_idx += 1;
                    }
                    _ => st.case_idx = 0,
                }
            }
            if sim.mode() == Mode::Stall && sim.case() != Case::StuckWindow {
                let stalled = sim.stalled_for(now);
                if stalled >= st.next_stall_log {
                    let period = (spec.scheduler.healthy_threshold / 2.0).clamp(1.0, 10.0);
                    st.next_stall_log = stalled + period;
                    let key = sim
                        .watermarks(now)
                        .first()
                        .map_or_else(|| sim.stream_key().to_string(), |w| w.key.clone());
                    lines.push((
                        Level::Warning,
                        at("sliding_window.go", 97),
                        format!(
                            "[sliding_window] item not ack after {stalled:.6} seconds. {key} seq {}",
                            c.input_total + c.heartbeat + 1
                        ),
                    ));
                }
            } else {
                st.next_stall_log = 1.0;
            }
            if sim.mode() == Mode::HeartbeatBroken {
                let next = *st.next_probe_log.get_or_insert(up + 1.0);
                if up >= next {
                    st.next_probe_log = Some(up + 5.0);
                    lines.push(match spec.input {
                        InputType::Mysql => ErrorKind::ConnectionRefused.line(&spec),
                        InputType::Mongo => (
                            Level::Error,
                            at("oplog_checker.go", 58),
                            "[oplog_checker] failed to update heartbeat: no reachable servers"
                                .to_string(),
                        ),
                    });
                }
            } else {
                st.next_probe_log = None;
            }
        }
        for (level, caller, msg) in lines {
            app.log.log(level, caller, &msg);
        }
        match action {
            Some(Mode::Crash) => app.crash(),
            Some(Mode::Panic) => app.panic(),
            Some(Mode::MemoryHog) => app.memory_hog(),
            Some(Mode::Exit0) => app.exit0(),
            _ => {}
        }
        if up - st.last_config_check >= 1.0 {
            st.last_config_check = up;
            check_config(&app);
        }
    }
}

/// gravity watches its config file and quits when it changes (the supervisor restarts it).
fn check_config(app: &App) {
    let event = match std::fs::read(&app.config_path) {
        Ok(bytes) if super::config::hash_config(&bytes) == app.config_hash => return,
        Ok(_) => "WRITE",
        Err(_) => "REMOVE",
    };
    app.log.log(
        Level::Info,
        at("main.go", 137),
        &format!(
            "config file event: {}: {event}",
            gofmt::quote(&app.config_path)
        ),
    );
    app.log.log(
        Level::Info,
        at("main.go", 151),
        "config file updated, quit...",
    );
    app.exit(0);
}

async fn signals(app: Arc<App>) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::terminate(), "terminated"),
        (SignalKind::interrupt(), "interrupt"),
        (SignalKind::hangup(), "hangup"),
        (SignalKind::quit(), "quit"),
    ];
    let mut streams = Vec::new();
    for (k, name) in kinds {
        if let Ok(s) = signal(k) {
            streams.push((s, name));
        }
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(4);
    for (mut s, name) in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            if s.recv().await.is_some() {
                let _ = tx.send(name).await;
            }
        });
    }
    drop(tx);
    if let Some(name) = rx.recv().await {
        app.log.log(
            Level::Info,
            at("main.go", 128),
            &format!("[gravity] stop with signal {name}"),
        );
        app.close_lines();
        app.exit(0);
    }
}

async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    if let Some(port) = addr.strip_prefix(':') {
        match tokio::net::TcpListener::bind(format!("[::]:{port}")).await {
            Ok(l) => Ok(l),
            Err(_) => tokio::net::TcpListener::bind(format!("0.0.0.0:{port}")).await,
        }
    } else {
        tokio::net::TcpListener::bind(addr).await
    }
}

async fn serve(app: Arc<App>, listener: tokio::net::TcpListener) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let app = Arc::clone(&app);
                async move { Ok::<_, std::convert::Infallible>(server::handle(app, req).await) }
            });
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
            drop(permit);
        });
    }
}

/// Runs the double until something asks it to exit; returns the exit code.
pub async fn run(flags: Flags, spec: PipelineSpec, settings: Settings) -> i32 {
    let log_file = (!flags.log_file.is_empty()).then(|| PathBuf::from(&flags.log_file));
    let log = match Logger::new(
        log_file.clone(),
        Format::parse(&flags.log_format),
        Level::parse(&flags.level),
        &spec.name,
        settings.zone,
        settings.log_max_bytes,
    ) {
        Ok(l) => l,
        Err(e) => {
            eprintln!(
                "{}",
                super::logw::render(
                    Format::Json,
                    &gofmt::rfc3339(std::time::SystemTime::now(), settings.zone),
                    Level::Fatal,
                    None,
                    &format!("[logutil] failed to open log file {}: {e}", flags.log_file),
                    None,
                )
                .trim_end()
            );
            return 1;
        }
    };
    // Startup lines, as gravity prints them.
    log.log_bare(Level::Info, "xxhash backend: GoUnsafe");
    log.log(Level::Info, at("printer.go", 41), "Welcome to gravity.");
    let sc = &spec.scheduler;
    log.log(
        Level::Info,
        at("batch_table_scheduler.go", 148),
        &format!(
            "[batchScheduler] &{{NrWorker:{} MaxBatchPerWorker:{} QueueSize:{} SlidingWindowSize:{} NrRetries:{} RetrySleepString:{} HealthyThreshold:{} RetrySleep:{}}}",
            sc.nr_worker,
            sc.batch_size,
            sc.queue_size,
            sc.sliding_window_size,
            sc.nr_retries,
            sc.retry_sleep,
            sc.healthy_threshold as i64,
            sc.retry_sleep
        ),
    );
    let now = Now::current();
    let sim = Sim::new(spec.clone(), settings.clone(), now);
    match (spec.input, spec.mode) {
        (InputType::Mysql, InputMode::Stream) => {
            let b = sim.binlog(now);
            log.log(
                Level::Info,
                at("binlog_tailer.go", 212),
                &format!("[binlogTailer] start from position: {}:{}", b.name, b.pos),
            );
        }
        (InputType::Mongo, _) => log.log(
            Level::Info,
            at("oplog_tailer.go", 96),
            &format!("[oplog_tailer] start from position: {}", sim.mongo_ts(now)),
        ),
        (InputType::Mysql, InputMode::Batch) => log.log(
            Level::Info,
            at("input.go", 95),
            &format!("[mysqlbatch] start scan {} tables", spec.tables.len()),
        ),
    }
    let listener = match bind(&flags.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            log.log(
                Level::Fatal,
                at("main.go", 96),
                &format!(
                    "http error: listen tcp {}: bind: {}",
                    flags.http_addr,
                    io_text(&e)
                ),
            );
            return 1;
        }
    };
    let marker_dir = log_file
        .as_deref()
        .and_then(Path::parent)
        .or_else(|| Path::new(&flags.config).parent())
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let config_hash = std::fs::read(&flags.config)
        .map(|b| super::config::hash_config(&b))
        .unwrap_or_else(|_| spec.config_hash.clone());
    let initial = sim.mode();
    let (mode_tx, _) = watch::channel(initial);
    let (exit_tx, mut exit_rx) = watch::channel(None);
    let app = Arc::new(App {
        sim: Mutex::new(sim),
        log,
        mode_tx,
        exit_tx,
        marker_dir,
        config_path: flags.config.clone(),
        config_hash,
        kafka_out: Arc::default(),
    });
    if spec.output == OutputType::Kafka
        && std::env::var("GRAVITY_DOUBLE_KAFKA_PRODUCE").is_ok_and(|v| v == "1")
    {
        let a = Arc::clone(&app);
        tokio::spawn(super::kafka_out::run(
            flags.config.clone(),
            Arc::clone(&app.kafka_out),
            move |event, process| a.set_watermark(Some((event, process))),
        ));
    }
    tokio::spawn(ticker(Arc::clone(&app), settings));
    tokio::spawn(signals(Arc::clone(&app)));
    tokio::spawn(serve(Arc::clone(&app), listener));
    loop {
        if let Some(code) = *exit_rx.borrow_and_update() {
            return code;
        }
        if exit_rx.changed().await.is_err() {
            return 1;
        }
    }
}

/// Go's text for common listen errors.
fn io_text(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        std::io::ErrorKind::AddrNotAvailable => "cannot assign requested address".into(),
        _ => e.to_string(),
    }
}
