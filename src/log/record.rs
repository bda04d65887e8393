//! One line of gravity's log → one [`Record`].
//!
//! gravity logs through logrus, configured by `pkg/logutil` with `--log-format`:
//!
//! | flag value  | formatter                          | one line looks like |
//! | ----------- | ---------------------------------- | ------------------- |
//! | `json` (default) | `logrus.JSONFormatter`, keys sorted | `{"file":"mysql.go","level":"fatal","line":352,"msg":"...","pipeline":"p","time":"..."}` |
//! | `text`      | gravity's own `textFormatter`      | `TIME FILE:LINE: [level] message pipeline=p` |
//! | `highlight` | the same `textFormatter` with ANSI colours | `ESC[0;36m TIME FILE:LINE: [info] message pipeline=p` |
//! | `console`   | `logrus.TextFormatter`             | `time="..." level=info msg="..." file=x.go line=41 pipeline=p` |
//!
//! gravity's source (`stringToLogFormatter`) makes `highlight` the *text* format with colours,
//! so [`LogFormat::from_name`] maps it to [`LogFormat::Text`]; both key=value parsers strip ANSI
//! colour sequences anyway. The timestamp is whatever gravity printed (RFC 3339 in the
//! reference logs, `2006/01/02 15:04:05.000` with gravity's default `TimestampFormat`); it is
//! handed over verbatim and never interpreted here.
//!
//! Besides log records, the same stream can hold what the Go runtime writes on stderr when the
//! log goes to stderr: `panic: ...` (→ a [`Level::Panic`] record), `fatal error: ...`
//! (a runtime throw → a [`Level::Fatal`] record), and goroutine dumps / stack frames, which are
//! reported as [`RecordError::StackTrace`] so callers can skip them quietly. In the `text`
//! format a multi-line message (gravity logs `errors.ErrorStack(err)`) continues on lines that
//! are also reported as [`RecordError::StackTrace`].
//!
//! Speed matters (the exporter must keep up with a busy pipeline at a fraction of a core), so
//! the JSON path does not build a `serde_json::Value`: a derived `Deserialize` struct borrows
//! gravity's fields from the line and copies `msg` only when it holds an escape.

use std::borrow::Cow;

/// The format of gravity's log, as chosen with gravity's `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// logrus JSON, one object per line (gravity's default).
    Json,
    /// gravity's `textFormatter`: `TIME FILE:LINE: [level] message k=v ...` (also `highlight`).
    Text,
    /// logrus `TextFormatter`: `time="..." level=... msg="..." file=... line=... pipeline=...`.
    Console,
}

impl LogFormat {
    /// Maps a `--log-format` value (`json`, `text`, `console`, `highlight`; any case) to a format.
    /// `highlight` is gravity's text format with colours, so it maps to [`LogFormat::Text`].
    pub fn from_name(name: &str) -> Option<LogFormat> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("json") {
            Some(LogFormat::Json)
        } else if name.eq_ignore_ascii_case("text") || name.eq_ignore_ascii_case("highlight") {
            Some(LogFormat::Text)
        } else if name.eq_ignore_ascii_case("console") {
            Some(LogFormat::Console)
        } else {
            None
        }
    }

    /// The canonical flag value: `json`, `text` or `console`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
            LogFormat::Console => "console",
        }
    }
}

/// A logrus level. Ordered from least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// `debug` (and `trace`, which gravity never enables).
    Debug,
    /// `info`.
    Info,
    /// `warning` (logrus' spelling; `warn` is accepted too).
    Warning,
    /// `error`.
    Error,
    /// `fatal`: gravity exits with status 1 right after logging it.
    Fatal,
    /// `panic`: logged by `log.Panic` or written by the Go runtime as `panic: ...`.
    Panic,
}

impl Level {
    /// Parses a level name as logrus writes it: `debug`, `info`, `warning`, `error`, `fatal`,
    /// `panic`, plus `warn` and `trace` (→ `Debug`), in any case, and the four-letter upper-case
    /// abbreviations of logrus' coloured output (`INFO`, `WARN`, `ERRO`, `FATA`, `PANI`, `DEBU`, `TRAC`).
    pub fn parse(s: &str) -> Option<Level> {
        // Compare as one integer (no memcmp): lower-cased bytes packed into a u64.
        let b = s.as_bytes();
        if b.is_empty() || b.len() > 7 {
            return None;
        }
        let mut key = 0u64;
        for (k, &c) in b.iter().enumerate() {
            key |= u64::from(c.to_ascii_lowercase()) << (8 * k);
        }
        const DEBUG: u64 = pack(b"debug");
        const DEBU: u64 = pack(b"debu");
        const TRACE: u64 = pack(b"trace");
        const TRAC: u64 = pack(b"trac");
        const INFO: u64 = pack(b"info");
        const WARNING: u64 = pack(b"warning");
        const WARN: u64 = pack(b"warn");
        const ERROR: u64 = pack(b"error");
        const ERRO: u64 = pack(b"erro");
        const FATAL: u64 = pack(b"fatal");
        const FATA: u64 = pack(b"fata");
        const PANIC: u64 = pack(b"panic");
        const PANI: u64 = pack(b"pani");
        match key {
            INFO => Some(Level::Info),
            WARNING | WARN => Some(Level::Warning),
            ERROR | ERRO => Some(Level::Error),
            DEBUG | DEBU | TRACE | TRAC => Some(Level::Debug),
            FATAL | FATA => Some(Level::Fatal),
            PANIC | PANI => Some(Level::Panic),
            _ => None,
        }
    }

    /// The logrus name: `debug`, `info`, `warning`, `error`, `fatal`, `panic`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warning => "warning",
            Level::Error => "error",
            Level::Fatal => "fatal",
            Level::Panic => "panic",
        }
    }
}

/// One parsed log record. Fields borrow from the line; only `msg` may be owned (when it had
/// escapes). A field whose raw value needed unescaping (other than `msg`) is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// The record's level.
    pub level: Level,
    /// The timestamp exactly as gravity wrote it (not interpreted).
    pub time: Option<&'a str>,
    /// Go source file base name (`binlog_tailer.go`), added by gravity's logrus hook.
    pub file: Option<&'a str>,
    /// Go source line.
    pub line: Option<u32>,
    /// The message, unescaped.
    pub msg: Cow<'a, str>,
    /// The pipeline name gravity's hook adds to every record after start-up.
    pub pipeline: Option<&'a str>,
}

/// Why a line is not a log record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The line is empty or whitespace only.
    #[error("blank line")]
    Blank,
    /// Go runtime output that is not a record by itself: a goroutine header, a stack frame,
    /// a `[signal ...]` line, or a continuation line of a multi-line message. Skip quietly.
    #[error("stack trace or continuation line")]
    StackTrace,
    /// The line does not have the shape of the given format.
    #[error("not a {format} log record: {reason}", format = .format.as_str())]
    Malformed {
        /// The format the line was parsed as.
        format: LogFormat,
        /// What was wrong (a fixed text: no part of the line is copied into errors).
        reason: &'static str,
    },
}

impl RecordError {
    /// True for lines a caller should skip without counting them as parse failures
    /// ([`RecordError::Blank`] and [`RecordError::StackTrace`]).
    pub fn is_quiet(&self) -> bool {
        matches!(self, RecordError::Blank | RecordError::StackTrace)
    }
}

/// Parses one line (without its newline; a trailing `\r` is ignored) in the given format.
///
/// Lines written by the Go runtime are recognised in every format: `panic: X` gives a
/// [`Level::Panic`] record with message `X`, `fatal error: X` a [`Level::Fatal`] record, and
/// stack lines give [`RecordError::StackTrace`].
pub fn parse_line(line: &str, format: LogFormat) -> Result<Record<'_>, RecordError> {
    let line = line.strip_prefix('\u{feff}').unwrap_or(line);
    let parsed = match format {
        LogFormat::Json => {
            let t = line.trim_matches(is_ws);
            if t.as_bytes().first() == Some(&b'{') {
                return json::parse(t);
            }
            None
        }
        LogFormat::Text => text::parse(line),
        LogFormat::Console => console::parse(line),
    };
    match parsed {
        Some(rec) => Ok(rec),
        None => runtime_line(line, format),
    }
}

/// Guesses the format of one line; `None` when the line is not recognisably a record.
pub fn detect_format(line: &str) -> Option<LogFormat> {
    let s = trim_ansi(line);
    let b = s.as_bytes();
    if b.first() == Some(&b'{') && b.last() == Some(&b'}') {
        return Some(LogFormat::Json);
    }
    if s.starts_with("time=")
        || s.starts_with("level=")
        || (s.contains(" level=") && s.contains(" msg="))
    {
        return Some(LogFormat::Console);
    }
    if text::find_level_marker(s).is_some() {
        return Some(LogFormat::Text);
    }
    None
}

/// Detects the format by majority vote over at most `max_lines` lines (blank and
/// unrecognised lines do not vote). Ties go to JSON, then text, then console.
pub fn detect_format_votes<'a, I>(lines: I, max_lines: usize) -> Option<LogFormat>
where
    I: IntoIterator<Item = &'a str>,
{
    let mut votes = [0usize; 3];
    for line in lines.into_iter().take(max_lines) {
        match detect_format(line) {
            Some(LogFormat::Json) => votes[0] += 1,
            Some(LogFormat::Text) => votes[1] += 1,
            Some(LogFormat::Console) => votes[2] += 1,
            None => {}
        }
    }
    let formats = [LogFormat::Json, LogFormat::Text, LogFormat::Console];
    let mut best: Option<(usize, LogFormat)> = None;
    for (n, f) in votes.into_iter().zip(formats) {
        if n > 0 && best.is_none_or(|(b, _)| n > b) {
            best = Some((n, f));
        }
    }
    best.map(|(_, f)| f)
}

/// Packs up to eight bytes into a little-endian u64 (for memcmp-free comparisons).
const fn pack(b: &[u8]) -> u64 {
    let mut v = 0u64;
    let mut k = 0;
    while k < b.len() && k < 8 {
        v |= (b[k] as u64) << (8 * k);
        k += 1;
    }
    v
}

/// Parses hexadecimal digits only (no sign, unlike `from_str_radix`).
fn parse_hex(h: &str) -> Option<u32> {
    if h.is_empty() || h.len() > 8 || !h.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(h, 16).ok()
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// Strips ANSI CSI sequences (`ESC [ ... letter`) and whitespace from both ends.
fn trim_ansi(s: &str) -> &str {
    let mut s = s.trim_matches(is_ws);
    loop {
        let before = s.len();
        if let Some(rest) = s.strip_prefix('\u{1b}') {
            s = skip_csi(rest).trim_start_matches(is_ws);
        }
        if let Some(idx) = s.rfind('\u{1b}') {
            // A trailing sequence: ESC [ params final-letter at the very end.
            let tail = &s[idx + 1..];
            if skip_csi(tail).is_empty() {
                s = s[..idx].trim_end_matches(is_ws);
            }
        }
        if s.len() == before {
            return s;
        }
    }
}

/// Given the text right after an ESC, skips one CSI sequence (`[` params final byte).
fn skip_csi(s: &str) -> &str {
    let b = s.as_bytes();
    if b.first() != Some(&b'[') {
        return s;
    }
    for (i, &c) in b.iter().enumerate().skip(1) {
        if (0x40..=0x7e).contains(&c) {
            return &s[i + 1..];
        }
        if !(0x20..=0x3f).contains(&c) {
            return &s[i..];
        }
    }
    ""
}

/// Removes every ANSI CSI sequence from the middle of a message.
fn strip_ansi_all(s: &str) -> Cow<'_, str> {
    if !s.contains('\u{1b}') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(idx) = rest.find('\u{1b}') {
        out.push_str(&rest[..idx]);
        rest = skip_csi(&rest[idx + 1..]);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Lines written by the Go runtime (or a continuation line), after the format parser failed.
fn runtime_line(line: &str, format: LogFormat) -> Result<Record<'_>, RecordError> {
    let s = trim_ansi(line);
    if s.is_empty() {
        return Err(RecordError::Blank);
    }
    if let Some(msg) = s.strip_prefix("panic: ") {
        return Ok(Record {
            level: Level::Panic,
            time: None,
            file: None,
            line: None,
            msg: Cow::Borrowed(msg),
            pipeline: None,
        });
    }
    if let Some(msg) = s.strip_prefix("fatal error: ") {
        return Ok(Record {
            level: Level::Fatal,
            time: None,
            file: None,
            line: None,
            msg: Cow::Borrowed(msg),
            pipeline: None,
        });
    }
    let raw_first = line.as_bytes().first().copied();
    if raw_first == Some(b'\t') || raw_first == Some(b' ') || looks_like_stack(s) {
        return Err(RecordError::StackTrace);
    }
    if format == LogFormat::Text {
        // gravity's text formatter writes multi-line messages verbatim: any line that does not
        // start a record continues the previous one.
        return Err(RecordError::StackTrace);
    }
    Err(RecordError::Malformed {
        format,
        reason: match format {
            LogFormat::Json => "not a JSON object",
            _ => "no level field",
        },
    })
}

/// Goroutine headers, stack frames, `[signal ...]`, `created by`, `exit status N`, juju
/// `file.go:NN:` trace lines and Go signal dumps.
fn looks_like_stack(s: &str) -> bool {
    if s.starts_with("goroutine ")
        || s.starts_with("created by ")
        || s.starts_with("[signal ")
        || s.starts_with("exit status ")
        || s.starts_with("...additional frames elided...")
        || s.starts_with("[recovered]")
    {
        return true;
    }
    // `SIGSEGV: segmentation violation`, `SIGQUIT: quit`
    if let Some(rest) = s.strip_prefix("SIG") {
        if let Some((name, _)) = rest.split_once(':') {
            if !name.is_empty() && name.bytes().all(|c| c.is_ascii_uppercase()) {
                return true;
            }
        }
    }
    // A frame: `pkg/path.Func(args)` or `github.com/x/y.(*T).M` — one token before `(` args.
    let head = match s.find(' ') {
        Some(i) => &s[..i],
        None => s,
    };
    if head.contains(".go:") {
        return true; // `/gravity/pkg/x.go:441` or `x.go:12: message` (juju ErrorStack)
    }
    let func_end = head.find('(').unwrap_or(head.len());
    let func = &head[..func_end];
    if func.is_empty() {
        return false;
    }
    let ident_like = func
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'/' | b'_' | b'-' | b'*'));
    if !ident_like || !(func.contains('.') || func == "panic") {
        return false;
    }
    // Either the whole line is one token (`github.com/x.(*T).M`) or it is `func(args...)`.
    s.len() == head.len() || head.len() > func_end
}

/// Extracts `pipeline=NAME` from the trailing ` k=v` fields of a text-format message and
/// returns (message without those fields, pipeline).
fn split_text_fields(rest: &str) -> (&str, Option<&str>) {
    // Walk the trailing tokens from the end while they look like `key=value`; if one of them
    // is `pipeline=`, cut the message right before it.
    let mut end = rest.len();
    let mut cut: Option<(usize, &str)> = None;
    let mut guard = 0;
    while guard < 16 {
        guard += 1;
        let head = rest[..end].trim_end_matches(' ');
        let start = match head.rfind(' ') {
            Some(i) => i + 1,
            None => 0,
        };
        let tok = &head[start..];
        let Some((key, value)) = tok.split_once('=') else {
            break;
        };
        if key.is_empty()
            || !key
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
        {
            break;
        }
        if key == "pipeline" {
            cut = Some((start, value));
        }
        if start == 0 {
            break;
        }
        end = start;
    }
    match cut {
        Some((start, value)) => {
            let msg = rest[..start].trim_end_matches(' ');
            (msg, (!value.is_empty()).then_some(value))
        }
        None => (rest, None),
    }
}

mod text {
    //! gravity's `textFormatter`: `[ESC[..m ][TIME ][FILE:LINE:] [level] message k=v ...`.
    use super::*;

    /// Finds ` [level] ` near the start of the line: returns (index of `[`, level, index just
    /// after `]`).
    pub(super) fn find_level_marker(s: &str) -> Option<(usize, Level, usize)> {
        let b = s.as_bytes();
        let mut from = 0;
        // The prefix is at most a timestamp and a `file.go:line:`; never look past 160 bytes.
        while from < b.len().min(160) {
            let idx = from + b.get(from..)?.iter().position(|&c| c == b'[')?;
            from = idx + 1;
            if idx > 160 {
                return None;
            }
            if idx > 0 && b.get(idx - 1) != Some(&b' ') {
                continue;
            }
            let Some(close_rel) = b.get(idx + 1..)?.iter().take(8).position(|&c| c == b']') else {
                continue;
            };
            let close = idx + 1 + close_rel;
            let Some(level) = s.get(idx + 1..close).and_then(Level::parse) else {
                continue;
            };
            let after = close + 1;
            if !matches!(b.get(after), None | Some(b' ')) {
                continue;
            }
            let prefix = s[..idx].trim_end_matches(' ');
            let plausible = prefix.is_empty()
                || prefix.ends_with(':')
                || prefix.as_bytes().first().is_some_and(u8::is_ascii_digit);
            if !plausible {
                return None;
            }
            return Some((idx, level, after));
        }
        None
    }

    pub(super) fn parse(line: &str) -> Option<Record<'_>> {
        let s = trim_ansi(line);
        let (idx, level, after) = find_level_marker(s)?;
        let mut prefix = s[..idx].trim_matches(' ');
        let mut file = None;
        let mut line_no = None;
        if let Some(p) = prefix.strip_suffix(':') {
            let tok_start = p.rfind(' ').map_or(0, |i| i + 1);
            if let Some((f, l)) = p[tok_start..].rsplit_once(':') {
                if !f.is_empty() && !l.is_empty() && l.bytes().all(|c| c.is_ascii_digit()) {
                    file = Some(f);
                    line_no = l.parse().ok();
                    prefix = p[..tok_start].trim_end_matches(' ');
                }
            }
        }
        let rest = s.get(after..).unwrap_or("").trim_start_matches(' ');
        let (msg, pipeline) = split_text_fields(rest);
        Some(Record {
            level,
            time: (!prefix.is_empty()).then_some(prefix),
            file,
            line: line_no,
            msg: strip_ansi_all(msg),
            pipeline,
        })
    }
}

mod console {
    //! logrus `TextFormatter`: `time="..." level=info msg="..." file=x.go line=41 pipeline=p`.
    use super::*;

    pub(super) fn parse(line: &str) -> Option<Record<'_>> {
        let s = trim_ansi(line);
        let b = s.as_bytes();
        let mut i = 0;
        let mut level = None;
        let mut time = None;
        let mut file = None;
        let mut line_no = None;
        let mut msg: Option<Cow<'_, str>> = None;
        let mut pipeline = None;
        let mut pairs = 0;
        while i < b.len() {
            while b.get(i) == Some(&b' ') {
                i += 1;
            }
            if i >= b.len() {
                break;
            }
            let key_start = i;
            while i < b.len() && b[i] != b'=' && b[i] != b' ' {
                i += 1;
            }
            if b.get(i) != Some(&b'=') {
                // A bare word: not logrus key=value output.
                if pairs == 0 {
                    return None;
                }
                continue;
            }
            let key = &s[key_start..i];
            i += 1;
            let (raw, escaped) = if b.get(i) == Some(&b'"') {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                loop {
                    match b.get(j) {
                        None => return None, // unterminated quote
                        Some(b'\\') => {
                            escaped = true;
                            j += 2;
                        }
                        Some(b'"') => break,
                        Some(_) => j += 1,
                    }
                }
                i = j + 1;
                (s.get(start..j)?, escaped)
            } else {
                let start = i;
                while i < b.len() && b[i] != b' ' {
                    i += 1;
                }
                (&s[start..i], false)
            };
            pairs += 1;
            let plain = (!escaped).then_some(raw);
            match key {
                "level" => level = Some(Level::parse(plain?)?),
                "msg" => {
                    msg = Some(if escaped {
                        Cow::Owned(unquote_go(raw))
                    } else {
                        strip_ansi_all(raw)
                    })
                }
                "time" => time = plain,
                "file" => file = plain,
                "line" => line_no = plain.and_then(|l| l.parse().ok()),
                "pipeline" => pipeline = plain,
                _ => {}
            }
        }
        Some(Record {
            level: level?,
            time,
            file,
            line: line_no,
            msg: msg.unwrap_or(Cow::Borrowed("")),
            pipeline,
        })
    }

    /// Undoes Go's `%q` quoting (`strconv.Quote`): `\" \\ \n \t \r \a \b \f \v \' \xHH \ooo
    /// \uHHHH \UHHHHHHHH`. Invalid UTF-8 produced by `\x` escapes is replaced lossily.
    pub(super) fn unquote_go(raw: &str) -> String {
        let b = raw.as_bytes();
        let mut out: Vec<u8> = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            let c = b[i];
            if c != b'\\' {
                out.push(c);
                i += 1;
                continue;
            }
            let Some(&e) = b.get(i + 1) else {
                out.push(c);
                break;
            };
            i += 2;
            match e {
                b'n' => out.push(b'\n'),
                b't' => out.push(b'\t'),
                b'r' => out.push(b'\r'),
                b'a' => out.push(0x07),
                b'b' => out.push(0x08),
                b'f' => out.push(0x0c),
                b'v' => out.push(0x0b),
                b'x' | b'u' | b'U' => {
                    let n = match e {
                        b'x' => 2,
                        b'u' => 4,
                        _ => 8,
                    };
                    let hex = raw.get(i..i + n).and_then(parse_hex);
                    match hex {
                        Some(v) if e == b'x' => {
                            out.push(v as u8);
                            i += n;
                        }
                        Some(v) => {
                            let ch = char::from_u32(v).unwrap_or('\u{fffd}');
                            let mut tmp = [0u8; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut tmp).as_bytes());
                            i += n;
                        }
                        None => {
                            out.push(b'\\');
                            out.push(e);
                        }
                    }
                }
                b'0'..=b'7' => {
                    let oct = raw
                        .get(i - 1..i + 2)
                        .and_then(|o| u32::from_str_radix(o, 8).ok())
                        .filter(|v| *v <= 0xff);
                    match oct {
                        Some(v) => {
                            out.push(v as u8);
                            i += 2;
                        }
                        None => {
                            out.push(b'\\');
                            out.push(e);
                        }
                    }
                }
                other => out.push(other), // \" \\ \' and anything unknown
            }
        }
        match String::from_utf8(out) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }
    }
}

mod json {
    //! logrus JSON through serde_json: a derived, borrowing `Deserialize` struct that reads
    //! only gravity's six fields and skips everything else. Fields are lenient (a field of an
    //! unexpected type counts as absent instead of failing the record); a line serde refuses
    //! outright (a duplicated key, say) goes through a `serde_json::Value` once more.
    //! (`benches/logparse.rs` measures this path at about 3 M lines per CPU-second with the
    //! classifier, 7x the mtail reference; the hand-written scanner it replaced was about
    //! twice as fast, which is not needed: issue 9.)
    use std::fmt;

    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
    use serde::Deserialize;

    use super::*;

    const MALFORMED: RecordError = RecordError::Malformed {
        format: LogFormat::Json,
        reason: "invalid JSON object",
    };
    const NO_LEVEL: RecordError = RecordError::Malformed {
        format: LogFormat::Json,
        reason: "no valid \"level\" field",
    };

    /// gravity's fields of one record.
    #[derive(Deserialize)]
    struct Raw<'a> {
        #[serde(borrow, default)]
        level: Text<'a>,
        #[serde(borrow, default)]
        msg: Text<'a>,
        #[serde(borrow, default)]
        time: Text<'a>,
        #[serde(borrow, default)]
        file: Text<'a>,
        #[serde(default)]
        line: LineNo,
        #[serde(borrow, default)]
        pipeline: Text<'a>,
    }

    /// A string field: borrowed from the line when it holds no escape; any other JSON type
    /// is read and dropped (`None`).
    #[derive(Default)]
    struct Text<'a>(Option<Cow<'a, str>>);

    impl<'a> Text<'a> {
        /// The field when it could be borrowed (an escaped `time`, `file` or `pipeline` is
        /// dropped rather than kept as a copy: the record borrows those from the line).
        fn borrowed(&self) -> Option<&'a str> {
            match self.0 {
                Some(Cow::Borrowed(s)) => Some(s),
                _ => None,
            }
        }
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Text<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                    Ok(Text(Some(Cow::Borrowed(v))))
                }
                fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                    Ok(Text(Some(Cow::Owned(v.to_owned()))))
                }
                fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                    Ok(Text(Some(Cow::Owned(v))))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(Text(None))
                }
                fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                    Ok(Text(None))
                }
                fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                    Ok(Text(None))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(Text(None))
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(Text(None))
                }
                fn visit_none<E>(self) -> Result<Self::Value, E> {
                    Ok(Text(None))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                    while a.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Text(None))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                    while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Text(None))
                }
            }
            d.deserialize_any(V)
        }
    }

    /// The Go source line: a number that fits a `u32`, else absent.
    #[derive(Default)]
    struct LineNo(Option<u32>);

    impl<'de> Deserialize<'de> for LineNo {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = LineNo;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("any JSON value")
                }
                fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                    Ok(LineNo(u32::try_from(v).ok()))
                }
                fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                    Ok(LineNo(u32::try_from(v).ok()))
                }
                fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                    Ok(LineNo(None))
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                    Ok(LineNo(None))
                }
                fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                    Ok(LineNo(None))
                }
                fn visit_unit<E>(self) -> Result<Self::Value, E> {
                    Ok(LineNo(None))
                }
                fn visit_none<E>(self) -> Result<Self::Value, E> {
                    Ok(LineNo(None))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                    while a.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(LineNo(None))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                    while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(LineNo(None))
                }
            }
            d.deserialize_any(V)
        }
    }

    pub(super) fn parse(line: &str) -> Result<Record<'_>, RecordError> {
        let raw: Raw = match serde_json::from_str(line) {
            Ok(raw) => raw,
            Err(e) if e.is_data() => return fallback(line),
            Err(_) => return Err(MALFORMED),
        };
        let level = raw
            .level
            .0
            .as_deref()
            .and_then(Level::parse)
            .ok_or(NO_LEVEL)?;
        Ok(Record {
            level,
            time: raw.time.borrowed(),
            file: raw.file.borrowed(),
            line: raw.line.0,
            msg: raw.msg.0.unwrap_or_default(),
            pipeline: raw.pipeline.borrowed(),
        })
    }

    /// A valid JSON line that does not fit [`Raw`] (a key given twice, or not an object):
    /// judged through a `serde_json::Value`, the last of duplicated keys winning. Only
    /// `level`, `msg` and `line` are recovered here, which is enough.
    fn fallback(line: &str) -> Result<Record<'_>, RecordError> {
        let v: serde_json::Value = serde_json::from_str(line).map_err(|_| MALFORMED)?;
        let obj = v.as_object().ok_or(MALFORMED)?;
        let level = obj
            .get("level")
            .and_then(|l| l.as_str())
            .and_then(Level::parse)
            .ok_or(NO_LEVEL)?;
        let msg = obj
            .get("msg")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_owned();
        Ok(Record {
            level,
            time: None,
            file: None,
            line: obj
                .get("line")
                .and_then(|l| l.as_u64())
                .and_then(|l| u32::try_from(l).ok()),
            msg: Cow::Owned(msg),
            pipeline: None,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const JSON_LOG: &str = include_str!("../../tests/fixtures/gravity.log");

        #[test]
        fn reordered_keys_whitespace_and_extra_fields_give_the_same_record() {
            for line in JSON_LOG.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let obj = v.as_object().unwrap();
                // Keys in reverse order, spaces everywhere, an extra nested field.
                let mut parts: Vec<String> = obj
                    .iter()
                    .rev()
                    .map(|(k, v)| format!(" {} :\t{} ", serde_json::json!(k), v))
                    .collect();
                parts.insert(
                    1,
                    r#" "fields" : { "a" : [ 1 , "x\"y" , null ] } "#.to_owned(),
                );
                let shuffled = format!(" {{{}}} ", parts.join(","));
                let a = parse(line).unwrap();
                let b = parse(shuffled.trim()).unwrap();
                assert_eq!(a, b, "{shuffled}");
            }
        }

        #[test]
        fn odd_field_types_and_duplicates() {
            let r = parse(r#"{"level":"info","msg":{"a":1},"line":"12","file":7}"#).unwrap();
            assert_eq!((r.msg.as_ref(), r.line, r.file), ("", None, None));
            let r = parse(r#"{"level":"info","line":99999999999,"msg":"m"}"#).unwrap();
            assert_eq!(r.line, None);
            // duplicated keys: valid JSON, the last one wins
            let r = parse(r#"{"level":"info","msg":"a","msg":"b","level":"error"}"#).unwrap();
            assert_eq!((r.level, r.msg.as_ref()), (Level::Error, "b"));
            assert!(parse(r#"["level","info"]"#).is_err());
            assert!(parse(r#"{"level":7,"msg":"m"}"#).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON_LOG: &str = include_str!("../../tests/fixtures/gravity.log");
    const TEXT_LOG: &str = include_str!("../../tests/fixtures/gravity-text.log");
    const CONSOLE_LOG: &str = include_str!("../../tests/fixtures/gravity-console.log");

    fn rec(line: &str, f: LogFormat) -> Record<'_> {
        match parse_line(line, f) {
            Ok(r) => r,
            Err(e) => panic!("{line:?}: {e}"),
        }
    }

    #[test]
    fn every_fixture_line_parses_in_its_format() {
        for (log, f, n) in [
            (JSON_LOG, LogFormat::Json, 28),
            (TEXT_LOG, LogFormat::Text, 5),
            (CONSOLE_LOG, LogFormat::Console, 4),
        ] {
            let mut count = 0;
            for line in log.lines() {
                let r = rec(line, f);
                assert!(!r.msg.is_empty(), "{line}");
                assert!(r.time.is_some(), "{line}");
                count += 1;
            }
            assert_eq!(count, n);
        }
    }

    #[test]
    fn json_fields_and_escapes() {
        let lines: Vec<&str> = JSON_LOG.lines().collect();
        let r = rec(lines[0], LogFormat::Json);
        assert_eq!(r.level, Level::Info);
        assert_eq!(r.msg, "xxhash backend: GoUnsafe");
        assert_eq!((r.file, r.line, r.pipeline), (None, None, None));
        assert_eq!(r.time, Some("2026-11-22T14:00:01+08:00"));

        let r = rec(lines[2], LogFormat::Json);
        assert!(
            r.msg.starts_with("[batchScheduler] &{NrWorker:20"),
            "{}",
            r.msg
        );
        assert!(matches!(r.msg, Cow::Owned(_)));

        let r = rec(lines[11], LogFormat::Json);
        assert_eq!(r.level, Level::Fatal);
        assert_eq!(r.file, Some("batch_table_scheduler.go"));
        assert_eq!(r.line, Some(257));
        assert_eq!(r.pipeline, Some("mysql2mysqlDemo"));
        assert_eq!(
            r.msg,
            "[batchScheduler] output exec error: Error 9003: TiKV server is busy\n\
             github.com/moiot/gravity/pkg/outputs/mysql.(*MySQLOutput).Execute\n\
             \t/gravity/pkg/outputs/mysql/mysql.go:441"
        );

        let r = rec(lines[14], LogFormat::Json);
        assert_eq!(
            r.msg,
            "[statusHandler] failed to get positionRepoModel, exist: false, err: <nil>"
        );
        let r = rec(lines[23], LogFormat::Json);
        assert_eq!(
            r.msg,
            "config file event: \"/etc/gravity/config.toml\": WRITE"
        );
        let r = rec(lines[26], LogFormat::Json);
        assert_eq!(
            r.msg,
            "[sliding_window] item not ack after 60.000000 seconds. 中文表.订单 seq 7"
        );
        assert!(matches!(r.msg, Cow::Borrowed(_)));
    }

    #[test]
    fn json_path_agrees_with_serde_json_value_on_every_fixture_line() {
        for line in JSON_LOG.lines() {
            let r = rec(line, LogFormat::Json);
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(r.msg, v["msg"].as_str().unwrap());
            assert_eq!(r.level.as_str(), v["level"].as_str().unwrap());
            assert_eq!(r.time, v["time"].as_str());
            assert_eq!(r.file, v["file"].as_str());
            assert_eq!(r.pipeline, v["pipeline"].as_str());
            assert_eq!(r.line.map(u64::from), v["line"].as_u64());
        }
    }

    #[test]
    fn json_unusual_shapes() {
        let r = rec(
            r#" { "msg" : "a\ud83d\ude00b\u00e9" , "level":"warn", "extra":{"x":[1,2,{"y":null}]},"line":7 } "#,
            LogFormat::Json,
        );
        assert_eq!(r.level, Level::Warning);
        assert_eq!(r.msg, "a😀bé");
        assert_eq!(r.line, Some(7));
        // Escaped borrowed field: dropped, not mangled.
        let r = rec(
            r#"{"level":"error","msg":"m","pipeline":"a\"b"}"#,
            LogFormat::Json,
        );
        assert_eq!(r.pipeline, None);
        assert_eq!(r.msg, "m");
        let r = rec(r#"{"level":"trace","msg":null}"#, LogFormat::Json);
        assert_eq!((r.level, r.msg.as_ref()), (Level::Debug, ""));
    }

    #[test]
    fn json_errors() {
        for bad in [
            r#"{"level":"info","msg":"unterminated}"#,
            r#"{"level":"info","msg":"x"} trailing"#,
            r#"{"level":"info" "msg":"x"}"#,
            r#"{"msg":"x"}"#,
            r#"{"level":"loud","msg":"x"}"#,
            "{",
            "not json at all",
        ] {
            let e = parse_line(bad, LogFormat::Json).unwrap_err();
            assert!(matches!(e, RecordError::Malformed { .. }), "{bad}: {e:?}");
            assert!(!e.is_quiet());
        }
        assert_eq!(parse_line("   ", LogFormat::Json), Err(RecordError::Blank));
    }

    #[test]
    fn text_lines() {
        let lines: Vec<&str> = TEXT_LOG.lines().collect();
        let r = rec(lines[0], LogFormat::Text);
        assert_eq!(r.time, Some("2026-11-22T14:00:01+08:00"));
        assert_eq!((r.file, r.line), (Some("printer.go"), Some(41)));
        assert_eq!(r.level, Level::Info);
        assert_eq!(r.msg, "Welcome to gravity.");
        assert_eq!(r.pipeline, Some("mysql2mysqlDemo"));
        let r = rec(lines[3], LogFormat::Text);
        assert_eq!(r.level, Level::Error);
        assert_eq!(
            r.msg,
            "[statusHandler] failed to get positionRepoModel, exist: false, err: <nil>"
        );

        // gravity's real default timestamp, highlight colours, go-mysql's go-log lines.
        let r = rec(
            "\u{1b}[0m\u{1b}[0;33m 2026/11/22 14:05:33.120 batch_table_scheduler.go:251: [warning] error execute sync output, retry. invalid connection pipeline=p1",
            LogFormat::Text,
        );
        assert_eq!(r.time, Some("2026/11/22 14:05:33.120"));
        assert_eq!(r.level, Level::Warning);
        assert_eq!(
            r.msg,
            "error execute sync output, retry. invalid connection"
        );
        assert_eq!(r.pipeline, Some("p1"));
        let r = rec(
            "2017/02/08 08:31:40 binlogsyncer.go:502: [error] retry sync err: dial tcp [::1]:3306: getsockopt: connection refused, wait 1s and retry again",
            LogFormat::Text,
        );
        assert_eq!(r.file, Some("binlogsyncer.go"));
        assert_eq!(r.pipeline, None);
        assert!(r.msg.ends_with("retry again"));
        // Trailing fields before pipeline= stay in the message; after it they are cut.
        let r = rec(
            "t x.go:1: [info] added window, key=mysqlstream pipeline=p other=1",
            LogFormat::Text,
        );
        assert_eq!(r.msg, "added window, key=mysqlstream");
        assert_eq!(r.pipeline, Some("p"));
        // No timestamp, no file.
        let r = rec(" [fatal] boom", LogFormat::Text);
        assert_eq!((r.time, r.file, r.level), (None, None, Level::Fatal));
    }

    #[test]
    fn text_multiline_message_continuations_are_quiet() {
        let block = "2026/11/22 14:06:18.000 batch_table_scheduler.go:257: [fatal] [batchScheduler] output exec error: Error 9003: TiKV server is busy\n\
github.com/moiot/gravity/pkg/outputs/mysql.(*MySQLOutput).Execute\n\
\t/gravity/pkg/outputs/mysql/mysql.go:441 pipeline=p";
        let mut it = block.lines();
        let first = rec(it.next().unwrap(), LogFormat::Text);
        assert_eq!(first.level, Level::Fatal);
        for l in it {
            assert_eq!(
                parse_line(l, LogFormat::Text),
                Err(RecordError::StackTrace),
                "{l}"
            );
        }
    }

    #[test]
    fn console_lines() {
        let lines: Vec<&str> = CONSOLE_LOG.lines().collect();
        let r = rec(lines[0], LogFormat::Console);
        assert_eq!(r.time, Some("2026-11-22T14:00:01+08:00"));
        assert_eq!(r.msg, "Welcome to gravity.");
        assert_eq!((r.file, r.line), (Some("printer.go"), Some(41)));
        assert_eq!(r.pipeline, Some("mysql2mysqlDemo"));
        let r = rec(lines[2], LogFormat::Console);
        assert_eq!(r.level, Level::Error);
        assert_eq!(r.pipeline, Some("mysql2kafka"));
        let r = rec(
            r#"time="2026/11/22 14:12:00.000" level=info msg="config file event: \"/etc/gravity/config.toml\": WRITE\n\tx \x41\u00e9" file=main.go line=137 pipeline=p"#,
            LogFormat::Console,
        );
        assert_eq!(r.time, Some("2026/11/22 14:12:00.000"));
        assert_eq!(
            r.msg,
            "config file event: \"/etc/gravity/config.toml\": WRITE\n\tx Aé"
        );
        assert_eq!(r.line, Some(137));
        let r = rec("level=warning msg=bare file=a.go", LogFormat::Console);
        assert_eq!(
            (r.level, r.msg.as_ref(), r.time),
            (Level::Warning, "bare", None)
        );
        assert!(matches!(
            parse_line(r#"time="x" msg="no level""#, LogFormat::Console),
            Err(RecordError::Malformed { .. })
        ));
        assert!(matches!(
            parse_line(
                r#"time="x" level=info msg="unterminated"#,
                LogFormat::Console
            ),
            Err(RecordError::Malformed { .. })
        ));
    }

    #[test]
    fn go_runtime_output() {
        for f in [LogFormat::Json, LogFormat::Text, LogFormat::Console] {
            let r = rec(
                "panic: runtime error: invalid memory address or nil pointer dereference",
                f,
            );
            assert_eq!(r.level, Level::Panic);
            assert_eq!(
                r.msg,
                "runtime error: invalid memory address or nil pointer dereference"
            );
            let r = rec("fatal error: concurrent map writes", f);
            assert_eq!(
                (r.level, r.msg.as_ref()),
                (Level::Fatal, "concurrent map writes")
            );
            for l in [
                "goroutine 1 [running]:",
                "[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x8a3f1c]",
                "main.main()",
                "github.com/moiot/gravity/pkg/outputs/mysql.(*MySQLOutput).Execute(0xc000, 0x1)",
                "github.com/moiot/gravity/pkg/outputs/mysql.(*MySQLOutput).Execute",
                "\t/gravity/pkg/outputs/mysql/mysql.go:441 +0x2a5",
                "created by github.com/moiot/gravity/pkg/app.(*Server).Start",
                "panic(0x1234560, 0xc0000a2000)",
                "exit status 2",
                "SIGQUIT: quit",
            ] {
                let e = parse_line(l, f).unwrap_err();
                assert_eq!(e, RecordError::StackTrace, "{f:?} {l}");
                assert!(e.is_quiet());
            }
        }
        assert!(matches!(
            parse_line("some random words", LogFormat::Console),
            Err(RecordError::Malformed { .. })
        ));
    }

    #[test]
    fn levels() {
        for (s, l) in [
            ("debug", Level::Debug),
            ("trace", Level::Debug),
            ("TRAC", Level::Debug),
            ("info", Level::Info),
            ("INFO", Level::Info),
            ("warn", Level::Warning),
            ("warning", Level::Warning),
            ("WARN", Level::Warning),
            ("error", Level::Error),
            ("ERRO", Level::Error),
            ("fatal", Level::Fatal),
            ("panic", Level::Panic),
        ] {
            assert_eq!(Level::parse(s), Some(l), "{s}");
        }
        assert_eq!(Level::parse("verbose"), None);
        assert_eq!(Level::parse(""), None);
        assert!(Level::Warning < Level::Error && Level::Fatal < Level::Panic);
    }

    #[test]
    fn format_names_and_detection() {
        assert_eq!(LogFormat::from_name("JSON"), Some(LogFormat::Json));
        assert_eq!(LogFormat::from_name("highlight"), Some(LogFormat::Text));
        assert_eq!(LogFormat::from_name("console"), Some(LogFormat::Console));
        assert_eq!(LogFormat::from_name("xml"), None);
        for l in JSON_LOG.lines() {
            assert_eq!(detect_format(l), Some(LogFormat::Json));
        }
        for l in TEXT_LOG.lines() {
            assert_eq!(detect_format(l), Some(LogFormat::Text));
        }
        for l in CONSOLE_LOG.lines() {
            assert_eq!(detect_format(l), Some(LogFormat::Console));
        }
        assert_eq!(detect_format("goroutine 1 [running]:"), None);
        assert_eq!(detect_format("hello [info] world"), None);
        let mixed = format!(
            "panic: x\n{TEXT_LOG}{}",
            CONSOLE_LOG.lines().next().unwrap()
        );
        assert_eq!(
            detect_format_votes(mixed.lines(), 100),
            Some(LogFormat::Text)
        );
        assert_eq!(
            detect_format_votes(JSON_LOG.lines(), 3),
            Some(LogFormat::Json)
        );
        assert_eq!(detect_format_votes(["", "x"], 10), None);
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            for f in [LogFormat::Json, LogFormat::Text, LogFormat::Console] {
                let _ = parse_line(&s, f);
            }
            let _ = detect_format(&s);
        }

        #[test]
        fn json_msg_roundtrips(msg in "(?s).{0,64}", pipeline in "[a-zA-Z0-9_-]{0,12}") {
            let line = serde_json::json!({"level":"error","msg":msg,"pipeline":pipeline}).to_string();
            let r = parse_line(&line, LogFormat::Json).unwrap();
            proptest::prop_assert_eq!(r.msg.as_ref(), msg.as_str());
            proptest::prop_assert_eq!(r.pipeline, Some(pipeline.as_str()));
        }

        #[test]
        fn console_msg_roundtrips(msg in "[ -~é中\\n\\t\"\\\\]{0,40}") {
            // Go's %q for these characters: escape \ " \n \t, keep printable runes.
            let mut q = String::from("\"");
            for c in msg.chars() {
                match c {
                    '"' => q.push_str("\\\""),
                    '\\' => q.push_str("\\\\"),
                    '\n' => q.push_str("\\n"),
                    '\t' => q.push_str("\\t"),
                    c => q.push(c),
                }
            }
            q.push('"');
            let line = format!("time=\"t\" level=error msg={q} file=a.go");
            let r = parse_line(&line, LogFormat::Console).unwrap();
            proptest::prop_assert_eq!(r.msg.as_ref(), msg.as_str());
            proptest::prop_assert_eq!(r.file, Some("a.go"));
        }
    }
}
