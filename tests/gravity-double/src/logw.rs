//! gravity's log writer: logrus lines in gravity's three formats (`json`, `text`, `console`),
//! written to `--log-file` (created with its directories, appended) or stderr, with a
//! lumberjack-style rotation when `GRAVITY_DOUBLE_LOG_MAX_BYTES` is set: the file is renamed
//! aside to `<name>-<UTC 2006-01-02T15-04-05.000>.<ext>` and a new one is created.

use super::gofmt::{self, ZoneOffset};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// logrus levels, in increasing severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `debug`
    Debug,
    /// `info`
    Info,
    /// `warning`
    Warning,
    /// `error`
    Error,
    /// `fatal` (gravity exits 1 after it)
    Fatal,
}

impl Level {
    /// logrus' name for the level.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Fatal => "fatal",
        }
    }

    /// Parses `-L` (`debug`, `info`, `warn`, `warning`, `error`, `fatal`); unknown → info.
    pub fn parse(s: &str) -> Level {
        match s.to_ascii_lowercase().as_str() {
            "debug" | "trace" => Level::Debug,
            "warn" | "warning" => Level::Warning,
            "error" => Level::Error,
            "fatal" | "panic" => Level::Fatal,
            _ => Level::Info,
        }
    }
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// logrus JSON, keys sorted.
    Json,
    /// gravity's text formatter: `TIME FILE:LINE: [level] msg k=v`.
    Text,
    /// logrus TextFormatter: `time="..." level=... msg="..." k=v`.
    Console,
}

impl Format {
    /// Parses `--log-format`; `highlight` is console with colours in gravity, plain here.
    pub fn parse(s: &str) -> Format {
        match s {
            "text" => Format::Text,
            "console" | "highlight" => Format::Console,
            _ => Format::Json,
        }
    }
}

/// Where a line comes from in gravity's source (`file`, `line` fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Go file name, e.g. `binlog_tailer.go`.
    pub file: &'static str,
    /// Line number.
    pub line: u32,
}

/// Shorthand for a [`Caller`].
pub const fn at(file: &'static str, line: u32) -> Caller {
    Caller { file, line }
}

enum Dest {
    Stderr,
    File {
        path: PathBuf,
        file: Option<File>,
        written: u64,
    },
}

/// The logger. Every line is written with one `write` call, unbuffered, so a crash loses nothing.
pub struct Logger {
    dest: Mutex<Dest>,
    format: Format,
    level: Level,
    pipeline: String,
    zone: ZoneOffset,
    max_bytes: Option<u64>,
}

impl std::fmt::Debug for Logger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Logger")
            .field("format", &self.format)
            .field("level", &self.level)
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

fn logrus_needs_quoting(s: &str) -> bool {
    !s.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | '@' | '^' | '+'))
}

fn console_value(s: &str) -> String {
    if logrus_needs_quoting(s) {
        gofmt::quote(s)
    } else {
        s.to_string()
    }
}

/// Renders one line (with its trailing newline) in `format`.
pub fn render(
    format: Format,
    time: &str,
    level: Level,
    caller: Option<Caller>,
    msg: &str,
    pipeline: Option<&str>,
) -> String {
    let mut out = String::with_capacity(msg.len() + 128);
    match (format, caller) {
        (Format::Json, _) => {
            out.push('{');
            if let Some(c) = caller {
                out.push_str("\"file\":");
                gofmt::push_json_string(&mut out, c.file);
                out.push(',');
            }
            out.push_str("\"level\":");
            gofmt::push_json_string(&mut out, level.as_str());
            if let Some(c) = caller {
                out.push_str(&format!(",\"line\":{}", c.line));
            }
            out.push_str(",\"msg\":");
            gofmt::push_json_string(&mut out, msg);
            if let Some(p) = pipeline {
                out.push_str(",\"pipeline\":");
                gofmt::push_json_string(&mut out, p);
            }
            out.push_str(",\"time\":");
            gofmt::push_json_string(&mut out, time);
            out.push('}');
        }
        (Format::Text, Some(c)) => {
            out.push_str(&format!(
                "{time} {}:{}: [{}] {msg}",
                c.file,
                c.line,
                level.as_str()
            ));
            if let Some(p) = pipeline {
                out.push_str(&format!(" pipeline={}", console_value(p)));
            }
        }
        // Console, and lines logged before gravity set up its formatter (no caller): logrus'
        // default TextFormatter.
        (Format::Console, _) | (Format::Text, None) => {
            out.push_str(&format!(
                "time={} level={} msg={}",
                console_value(time),
                level.as_str(),
                console_value(msg)
            ));
            if let Some(c) = caller {
                out.push_str(&format!(" file={} line={}", console_value(c.file), c.line));
            }
            if let Some(p) = pipeline {
                out.push_str(&format!(" pipeline={}", console_value(p)));
            }
        }
    }
    out.push('\n');
    out
}

/// lumberjack's backup name: `dir/name-2006-01-02T15-04-05.000.ext` (UTC).
pub fn backup_name(path: &Path, now: SystemTime) -> PathBuf {
    let stamp = gofmt::rfc3339_nano(now, ZoneOffset { seconds: 0 });
    // "2026-11-22T06:21:07.512331904Z" -> "2026-11-22T06-21-07.512"
    let (date_time, frac) = stamp
        .trim_end_matches('Z')
        .split_once('.')
        .map_or((stamp.trim_end_matches('Z'), ""), |(a, b)| (a, b));
    let millis: String = frac.chars().chain("000".chars()).take(3).collect();
    let stamp = format!("{}.{millis}", date_time.replace(':', "-"));
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "gravity".into());
    let name = match path.extension() {
        Some(ext) => format!("{stem}-{stamp}.{}", ext.to_string_lossy()),
        None => format!("{stem}-{stamp}"),
    };
    path.with_file_name(name)
}

fn open_append(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl Logger {
    /// A logger writing to `log_file` (or stderr when `None`).
    pub fn new(
        log_file: Option<PathBuf>,
        format: Format,
        level: Level,
        pipeline: &str,
        zone: ZoneOffset,
        max_bytes: Option<u64>,
    ) -> io::Result<Logger> {
        let dest = match log_file {
            None => Dest::Stderr,
            Some(path) => {
                let file = open_append(&path)?;
                let written = file.metadata().map(|m| m.len()).unwrap_or(0);
                Dest::File {
                    path,
                    file: Some(file),
                    written,
                }
            }
        };
        Ok(Logger {
            dest: Mutex::new(dest),
            format,
            level,
            pipeline: pipeline.to_string(),
            zone,
            max_bytes: max_bytes.filter(|m| *m > 0),
        })
    }

    /// The log file, when not stderr.
    pub fn path(&self) -> Option<PathBuf> {
        match &*self.dest.lock().unwrap_or_else(|e| e.into_inner()) {
            Dest::Stderr => None,
            Dest::File { path, .. } => Some(path.clone()),
        }
    }

    /// Logs a line from `caller` with the pipeline field, as gravity's loggers do.
    pub fn log(&self, level: Level, caller: Caller, msg: &str) {
        self.write_line(level, Some(caller), msg, true);
    }

    /// Logs a line without file/line/pipeline (what logrus prints before gravity configures it).
    pub fn log_bare(&self, level: Level, msg: &str) {
        self.write_line(level, None, msg, false);
    }

    /// Writes text as it is (the Go runtime's own output, not a logrus record).
    pub fn raw(&self, text: &str) {
        self.write_raw(text);
    }

    fn write_line(&self, level: Level, caller: Option<Caller>, msg: &str, with_pipeline: bool) {
        if level < self.level {
            return;
        }
        let now = SystemTime::now();
        let time = gofmt::rfc3339(now, self.zone);
        let pipeline = with_pipeline.then_some(self.pipeline.as_str());
        let line = render(self.format, &time, level, caller, msg, pipeline);
        self.write_raw(&line);
    }

    fn write_raw(&self, line: &str) {
        let now = SystemTime::now();
        let mut dest = self.dest.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *dest {
            Dest::Stderr => {
                let _ = io::stderr().write_all(line.as_bytes());
            }
            Dest::File {
                path,
                file,
                written,
            } => {
                let len = line.len() as u64;
                if let Some(max) = self.max_bytes {
                    if *written > 0 && *written + len > max {
                        let _ = std::fs::rename(&*path, backup_name(path, now));
                        *file = None;
                    }
                }
                if file.is_none() {
                    // lumberjack creates a new file with the original name.
                    *file = OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(true)
                        .open(&*path)
                        .ok();
                    *written = 0;
                }
                if let Some(f) = file {
                    if f.write_all(line.as_bytes()).is_ok() {
                        *written += len;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = include_str!("../../fixtures/gravity.log");
    const TEXT: &str = include_str!("../../fixtures/gravity-text.log");
    const CONSOLE: &str = include_str!("../../fixtures/gravity-console.log");

    /// Re-renders every fixture line from its parts: must give the same bytes.
    #[test]
    fn json_lines_are_byte_identical_to_the_fixture() {
        let mut n = 0;
        for line in JSON.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
            let s = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            let caller = v.get("file").map(|_| Caller {
                file: Box::leak(s("file").into_boxed_str()),
                line: v.get("line").and_then(|l| l.as_u64()).unwrap_or(0) as u32,
            });
            let level = Level::parse(&s("level"));
            let pipeline = v.get("pipeline").map(|_| s("pipeline"));
            let got = render(
                Format::Json,
                &s("time"),
                level,
                caller,
                &s("msg"),
                pipeline.as_deref(),
            );
            assert_eq!(got.trim_end(), line);
            n += 1;
        }
        assert!(n > 20);
    }

    #[test]
    fn text_and_console_lines_match_the_fixtures() {
        let got = render(
            Format::Text,
            "2026-11-22T14:00:01+08:00",
            Level::Info,
            Some(at("printer.go", 41)),
            "Welcome to gravity.",
            Some("mysql2mysqlDemo"),
        );
        assert_eq!(got.trim_end(), TEXT.lines().next().unwrap_or_default());
        let got = render(
            Format::Console,
            "2026-11-22T14:09:30+08:00",
            Level::Fatal,
            Some(at("binlog_tailer.go", 415)),
            "[binlogTailer] failed to flush position cache, err: dial tcp 127.0.0.1:3306: connect: connection refused",
            Some("mysql2mysqlDemo"),
        );
        assert_eq!(got.trim_end(), CONSOLE.lines().nth(3).unwrap_or_default());
        let got = render(
            Format::Console,
            "2026-11-22T14:00:01+08:00",
            Level::Info,
            Some(at("printer.go", 41)),
            "Welcome to gravity.",
            Some("mysql2mysqlDemo"),
        );
        assert_eq!(got.trim_end(), CONSOLE.lines().next().unwrap_or_default());
    }

    #[test]
    fn rotation_renames_aside_and_recreates() -> io::Result<()> {
        let dir = std::env::temp_dir().join(format!("gd-logw-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("sub/gravity.log");
        let l = Logger::new(
            Some(path.clone()),
            Format::Json,
            Level::Info,
            "p",
            ZoneOffset::CHINA,
            Some(300),
        )?;
        for i in 0..10 {
            l.log(Level::Info, at("x.go", 1), &format!("line {i}"));
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        l.log(Level::Debug, at("x.go", 1), "filtered out");
        let names: Vec<String> = std::fs::read_dir(dir.join("sub"))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().any(|n| n == "gravity.log"));
        assert!(
            names
                .iter()
                .filter(|n| n.starts_with("gravity-") && n.ends_with(".log"))
                .count()
                >= 2
        );
        let cur = std::fs::read_to_string(&path)?;
        assert!(cur.len() <= 300 && cur.contains("line 9") && !cur.contains("filtered"));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn backup_name_is_lumberjacks() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_795_328_467_512);
        assert_eq!(
            backup_name(Path::new("/var/log/gravity.log"), t),
            PathBuf::from("/var/log/gravity-2026-11-22T06-21-07.512.log")
        );
    }
}
