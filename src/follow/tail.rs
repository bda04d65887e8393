//! A robust follower of gravity's log file (synchronous `std::fs`; the caller polls it from a
//! blocking task on an interval).
//!
//! gravity writes its log through lumberjack, which rotates by renaming the file aside
//! (`gravity-2026-11-22T14-00-00.000.log` next to it) and creating a new one under the original
//! name. Operators also use logrotate's `copytruncate`, delete files by hand, or restart the
//! exporter. Each poll reads whatever is new and hands every complete line to a callback,
//! exactly once and in order:
//!
//! * **Rename rotation**: the open handle keeps pointing at the old inode. When it is read to
//!   its end and the path now names another inode, the files rotated aside after it meanwhile
//!   (a second rotation between two looks) are read, then the new file from offset 0, and the
//!   old one is kept *draining*: a writer that still holds it (a logger that reopens late)
//!   may go on writing to it, and every poll reads what it adds, until it has not grown for
//!   `drain_grace` (10 s); only then is its handle released (at most [`MAX_DRAINING`] files
//!   drain at once).
//! * **copytruncate**: the file shrinks below the read offset, or its first bytes are no
//!   longer the ones read before (a truncation followed by more writes than were read) →
//!   reading restarts at 0 (`truncations`). What the writer wrote between the copy and the
//!   truncation and what was not read before the copy cannot be read by anyone: that window
//!   is inherent to copytruncate.
//! * **Deletion**: while the path is absent, `file_missing` is reported (no error). A deleted
//!   file is drained like a renamed one (a writer may still hold it); its handle is released
//!   once it has not grown for `drain_grace`, so its disk space can be freed. A re-created
//!   file is read from offset 0.
//! * **Another spelling of the same file**: [`Tailer::set_path`] changes the path (gravity's
//!   log seen through `/proc/<pid>/root/<path>` while it runs, `<path>` while it is down).
//!   A file is one device + inode whatever its path: same inode, same handle and offset;
//!   a path that does not exist for a while (gravity down in a sidecar) keeps the handle.
//! * **Partial last line**: bytes after the last newline wait (bounded by `max_line_bytes`)
//!   for their newline. When the file is rotated away, they are handed over as a last line.
//! * **Oversized line**: a line longer than `max_line_bytes` is skipped up to its newline and
//!   counted in `oversized`; memory stays bounded whatever its length.
//! * **Invalid UTF-8**: the line is handed over lossily converted and counted.
//! * **Restart**: [`TailState`] (device, inode, offset of the first unread line) is saved by
//!   the caller. On start with the same device+inode, reading resumes at the offset (from 0 if
//!   the file is now smaller). If the inode differs, the state is from before a rotation: the
//!   old file is looked for by inode among its siblings and drained from the offset first; then
//!   the files rotated aside after it while the exporter was down (lumberjack's
//!   `<stem>-<time><ext>`, logrotate's `<name>.N` and `<name>-<date>`, uncompressed, last
//!   written after the old file), oldest first, and the file the path names, each from 0. At
//!   most [`MAX_BACKLOG`] of them are kept (the newest).
//! * **First start without state**: `start_at_end` begins at the current end (old history is
//!   not re-counted); otherwise at 0. A file that does not exist yet is read from 0 when it
//!   appears, and so is a file born after the exporter started (`new_if_born_after`, checked
//!   on the open file: one that appears between the tailer's creation and its first poll
//!   holds only new lines too).
//!
//! Every poll reads at most `max_read_per_poll` bytes, so one call never runs away on a huge
//! backlog; the rest is read by the next polls.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// Size of the read buffer.
const READ_CHUNK: usize = 64 * 1024;
/// At most this many directory entries are examined when looking for a rotated file.
const MAX_SIBLINGS: usize = 10_000;
/// At most this many file switches (rotations) are followed in one poll.
const MAX_SWITCHES_PER_POLL: usize = 8;
/// At most this many rotated or deleted files are drained at once (the oldest is released).
pub const MAX_DRAINING: usize = 4;
/// At most this many files rotated aside while the exporter was down are read after the saved
/// one (the newest are kept).
pub const MAX_BACKLOG: usize = 16;
/// How many released files are remembered (see `Tailer::released`).
const MAX_RELEASED: usize = 64;
/// Bytes at the start of a file remembered to recognise it after a copytruncate.
const HEAD_BYTES: usize = 128;

/// What to follow and the bounds to keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailConfig {
    /// The log file (gravity's `--log-file`).
    pub path: PathBuf,
    /// Without a saved state, begin at the current end of the file (true) or at its start.
    pub start_at_end: bool,
    /// Longest line handed over; longer lines are skipped and counted as oversized.
    pub max_line_bytes: usize,
    /// Most bytes read by one poll.
    pub max_read_per_poll: usize,
    /// How long a rotated or deleted file is kept open after it last grew.
    pub drain_grace: Duration,
    /// With `start_at_end`: a file created (birth time) at or after this instant holds only
    /// lines written since the exporter started, and is read from its start. Decided when
    /// the file is first opened, so a log that appears between the tailer's creation and its
    /// first poll is not skipped.
    pub new_if_born_after: Option<SystemTime>,
}

impl TailConfig {
    /// Default `max_line_bytes`: 64 KiB.
    pub const DEFAULT_MAX_LINE_BYTES: usize = 64 * 1024;
    /// Default `max_read_per_poll`: 8 MiB.
    pub const DEFAULT_MAX_READ_PER_POLL: usize = 8 * 1024 * 1024;
    /// Default `drain_grace`: 10 s.
    pub const DEFAULT_DRAIN_GRACE: Duration = Duration::from_secs(10);

    /// A config with the defaults: start at the end, 64 KiB lines, 8 MiB per poll.
    pub fn new(path: impl Into<PathBuf>) -> TailConfig {
        TailConfig {
            path: path.into(),
            start_at_end: true,
            max_line_bytes: Self::DEFAULT_MAX_LINE_BYTES,
            max_read_per_poll: Self::DEFAULT_MAX_READ_PER_POLL,
            drain_grace: Self::DEFAULT_DRAIN_GRACE,
            new_if_born_after: None,
        }
    }
}

/// Where the tailer is: the file's device and inode and the offset of the first line not yet
/// handed over. Saved by the caller (see [`TailState::to_json`]) to resume after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TailState {
    /// `st_dev` of the file.
    pub dev: u64,
    /// `st_ino` of the file.
    pub ino: u64,
    /// Byte offset of the first line not yet handed over.
    pub offset: u64,
}

impl TailState {
    /// `{"dev":N,"ino":N,"offset":N}`.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"dev\":{},\"ino\":{},\"offset\":{}}}",
            self.dev, self.ino, self.offset
        )
    }

    /// Parses what [`TailState::to_json`] wrote.
    pub fn from_json(s: &str) -> Result<TailState, TailError> {
        let v: serde_json::Value =
            serde_json::from_str(s).map_err(|_| TailError::State("not valid JSON"))?;
        let field = |k: &'static str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .ok_or(TailError::State("missing or non-integer field"))
        };
        Ok(TailState {
            dev: field("dev")?,
            ino: field("ino")?,
            offset: field("offset")?,
        })
    }
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Lines handed to the callback.
    pub lines: u64,
    /// Bytes read from files.
    pub bytes: u64,
    /// Lines skipped because they were longer than `max_line_bytes`.
    pub oversized: u64,
    /// Rename rotations followed (the path came to name a new file).
    pub rotations: u64,
    /// Times the file shrank below the read offset (copytruncate) and reading restarted at 0.
    pub truncations: u64,
    /// Lines that were not valid UTF-8 (handed over lossily converted).
    pub invalid_utf8: u64,
    /// The path did not exist during this poll.
    pub file_missing: bool,
    /// The read budget ran out before the end of the data: poll again at once.
    pub more: bool,
}

/// A failure that stops a poll. A missing file is not an error (see `file_missing`).
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The file exists but cannot be opened (permissions, not a file, ...).
    #[error("cannot open log file {}: {source}", path.display())]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Reading, seeking or stat-ing the file failed.
    #[error("cannot read log file {}: {source}", path.display())]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A saved state could not be parsed.
    #[error("invalid tail state: {0}")]
    State(&'static str),
}

/// The file being read.
struct Current {
    file: File,
    dev: u64,
    ino: u64,
    /// Offset of the next byte to read.
    read_pos: u64,
    /// The file's first bytes as read (at most [`HEAD_BYTES`]), to see a copytruncate that was
    /// followed by more writes than were read before it.
    head: Vec<u8>,
}

impl Current {
    /// A file just opened, read from its start.
    fn opened(file: File, dev: u64, ino: u64) -> Current {
        Current {
            file,
            dev,
            ino,
            read_pos: 0,
            head: Vec::new(),
        }
    }

    /// Whether the file was truncated under the read offset (or truncated and re-written).
    fn truncated(&mut self) -> io::Result<bool> {
        let len = self.file.metadata()?.len();
        if len < self.read_pos {
            return Ok(true);
        }
        if !self.head.is_empty() {
            let mut now = vec![0; self.head.len()];
            self.file.read_exact_at(&mut now, 0)?;
            if now != self.head {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Remembers the first bytes read, once there are [`HEAD_BYTES`] (or more than before).
    fn remember_head(&mut self) {
        let want = usize::try_from(self.read_pos)
            .unwrap_or(usize::MAX)
            .min(HEAD_BYTES);
        if want > self.head.len() {
            let mut h = vec![0; want];
            if self.file.read_exact_at(&mut h, 0).is_ok() {
                self.head = h;
            }
        }
    }
}

/// Whether `candidate` is named as a rotated copy of the log `name`, uncompressed:
/// lumberjack's `<stem>-<time><ext>` (`gravity-2026-11-22T14-00-00.000.log` for
/// `gravity.log`), logrotate's `<name>.<N>` and `<name>-<digits>` (`dateext`).
pub fn is_rotation_of(name: &str, candidate: &str) -> bool {
    if candidate == name {
        return false;
    }
    let (stem, ext) = match name.find('.') {
        Some(i) => name.split_at(i),
        None => (name, ""),
    };
    let lumberjack = candidate
        .strip_prefix(stem)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(ext))
        .is_some_and(|time| {
            time.bytes().any(|b| b.is_ascii_digit())
                && time
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'T' | b'.' | b'_'))
        });
    let logrotate = candidate
        .strip_prefix(name)
        .and_then(|r| r.strip_prefix('.').or_else(|| r.strip_prefix('-')))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    lumberjack || logrotate
}

/// A rotated or deleted file still read while its writer may add to it.
struct Drain {
    cur: Current,
    lines: Lines,
    /// Last time it grew (or was retired).
    grew_at: Instant,
}

/// How to begin on the first poll.
#[derive(Debug, Clone, Copy)]
enum Initial {
    Saved(TailState),
    End,
    Start,
}

/// Splits bytes into lines with bounded memory.
struct Lines {
    max: usize,
    /// An incomplete line (at most `max` bytes).
    pending: Vec<u8>,
    /// Skipping the rest of an oversized line.
    discarding: bool,
    /// File offset where the next line begins (the resume offset).
    line_start: u64,
}

impl Lines {
    fn new(max: usize) -> Lines {
        Lines {
            max,
            pending: Vec::new(),
            discarding: false,
            line_start: 0,
        }
    }

    fn reset(&mut self, offset: u64) {
        self.pending.clear();
        self.discarding = false;
        self.line_start = offset;
    }

    /// Hands over an unfinished last line (the file it came from will not grow any more).
    fn finish(&mut self, report: &mut PollReport, f: &mut dyn FnMut(&str)) {
        if !self.discarding && !self.pending.is_empty() {
            emit(&self.pending, report, f);
        }
        self.pending.clear();
        self.discarding = false;
    }

    /// Feeds a chunk read at file offset `base`.
    fn feed(&mut self, chunk: &[u8], base: u64, report: &mut PollReport, f: &mut dyn FnMut(&str)) {
        let mut start = 0;
        while let Some(rel) = chunk
            .get(start..)
            .and_then(|c| c.iter().position(|&b| b == b'\n'))
        {
            let end = start + rel;
            let seg = chunk.get(start..end).unwrap_or(&[]);
            if self.discarding {
                self.discarding = false; // the oversized line ends here (already counted)
            } else if self.pending.is_empty() {
                if seg.len() > self.max {
                    report.oversized += 1;
                } else {
                    emit(seg, report, f);
                }
            } else if self.pending.len() + seg.len() > self.max {
                report.oversized += 1;
                self.pending.clear();
            } else {
                self.pending.extend_from_slice(seg);
                emit(&self.pending, report, f);
                self.pending.clear();
            }
            start = end + 1;
            self.line_start = base + start as u64;
        }
        let rest = chunk.get(start..).unwrap_or(&[]);
        if rest.is_empty() || self.discarding {
            return;
        }
        if self.pending.len() + rest.len() > self.max {
            report.oversized += 1;
            self.pending.clear();
            self.discarding = true;
        } else {
            self.pending.extend_from_slice(rest);
        }
    }
}

fn emit(line: &[u8], report: &mut PollReport, f: &mut dyn FnMut(&str)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    report.lines += 1;
    match std::str::from_utf8(line) {
        Ok(s) => f(s),
        Err(_) => {
            report.invalid_utf8 += 1;
            f(&String::from_utf8_lossy(line));
        }
    }
}

/// Offset just after the last newline within the last `window` bytes before `len`; 0 when the
/// whole (short) file has no newline; `None` when the tail is one line longer than `window`.
fn last_line_start(file: &mut File, len: u64, window: usize) -> io::Result<Option<u64>> {
    let window = (window as u64).saturating_add(1).min(len);
    let from = len - window;
    file.seek(SeekFrom::Start(from))?;
    let mut tail = Vec::new();
    file.by_ref().take(window).read_to_end(&mut tail)?;
    Ok(match tail.iter().rposition(|&c| c == b'\n') {
        Some(p) => Some(from + p as u64 + 1),
        None if from == 0 => Some(0),
        None => None,
    })
}

/// Follows one log file across rotations, truncations and restarts. See the module doc.
pub struct Tailer {
    cfg: TailConfig,
    cur: Option<Current>,
    lines: Lines,
    /// Rotated or deleted files still read (oldest first).
    draining: Vec<Drain>,
    buf: Vec<u8>,
    initial: Option<Initial>,
    /// Device and inode of the last file read (kept while the path is missing, for `state`).
    ident: Option<(u64, u64)>,
    /// Files to read after the current one, each from 0 (oldest first), before the path is
    /// looked at again: those rotated aside while the exporter was down or between two looks.
    backlog: std::collections::VecDeque<Current>,
    /// Device and inode of the last files read to their end and released (at most
    /// [`MAX_RELEASED`]): never taken for a file rotated aside and not read yet.
    released: std::collections::VecDeque<(u64, u64)>,
}

impl fmt::Debug for Tailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tailer")
            .field("path", &self.cfg.path)
            .field("state", &self.state())
            .field("open", &self.cur.is_some())
            .field("pending_bytes", &self.lines.pending.len())
            .field("draining", &self.draining.len())
            .field("backlog", &self.backlog.len())
            .finish()
    }
}

impl Tailer {
    /// A tailer for `cfg.path`; `saved` is the state from a previous run, if any.
    /// Nothing is opened until the first [`Tailer::poll`].
    pub fn new(cfg: TailConfig, saved: Option<TailState>) -> Tailer {
        let initial = match saved {
            Some(s) => Initial::Saved(s),
            None if cfg.start_at_end => Initial::End,
            None => Initial::Start,
        };
        let max = cfg.max_line_bytes.max(1);
        Tailer {
            lines: Lines::new(max),
            draining: Vec::new(),
            buf: vec![0; READ_CHUNK],
            cur: None,
            initial: Some(initial),
            ident: saved.map(|s| (s.dev, s.ino)),
            backlog: std::collections::VecDeque::new(),
            released: std::collections::VecDeque::new(),
            cfg,
        }
    }

    /// Follows the same file under another path (`/proc/<pid>/root/<path>` ↔ `<path>`).
    /// Nothing is reset: the open file keeps its handle and offset as long as the new path
    /// names the same device + inode, or does not exist; if it names another file, that is
    /// a rotation (the old file drains, the new one is read from its start).
    pub fn set_path(&mut self, path: &Path) {
        if self.cfg.path != path {
            self.cfg.path = path.to_path_buf();
        }
    }

    /// The path followed.
    pub fn path(&self) -> &Path {
        &self.cfg.path
    }

    /// Positions in the rotated or deleted files still draining, to save with [`Tailer::state`].
    pub fn draining_states(&self) -> Vec<TailState> {
        self.draining
            .iter()
            .map(|d| TailState {
                dev: d.cur.dev,
                ino: d.cur.ino,
                offset: d.lines.line_start,
            })
            .collect()
    }

    /// After a restart: drains the rotated files of a saved state ([`Tailer::draining_states`])
    /// that are still found next to the path (by device + inode), from their saved offsets.
    pub fn resume_draining(&mut self, saved: &[TailState]) {
        for st in saved.iter().take(MAX_DRAINING) {
            if self
                .draining
                .iter()
                .any(|d| d.cur.dev == st.dev && d.cur.ino == st.ino)
            {
                continue;
            }
            let Some(mut cur) = self.find_rotated(*st) else {
                continue;
            };
            if cur.file.seek(SeekFrom::Start(st.offset)).is_err() {
                continue;
            }
            cur.read_pos = st.offset;
            let mut lines = Lines::new(self.lines.max);
            lines.reset(st.offset);
            self.draining.push(Drain {
                cur,
                lines,
                grew_at: Instant::now(),
            });
        }
    }

    /// Moves the current file to the draining list (a rotation or deletion).
    fn retire_current(&mut self, f: &mut dyn FnMut(&str), report: &mut PollReport) {
        let Some(cur) = self.cur.take() else { return };
        // Its position is now in `draining_states`; the next file is read from its start.
        self.ident = None;
        let max = self.lines.max;
        let lines = std::mem::replace(&mut self.lines, Lines::new(max));
        self.draining.push(Drain {
            cur,
            lines,
            grew_at: Instant::now(),
        });
        while self.draining.len() > MAX_DRAINING {
            let mut oldest = self.draining.remove(0);
            oldest.lines.finish(report, f);
            self.remember_released(&oldest.cur);
        }
    }

    fn remember_released(&mut self, cur: &Current) {
        self.released.push_back((cur.dev, cur.ino));
        while self.released.len() > MAX_RELEASED {
            self.released.pop_front();
        }
    }

    /// Reads what the draining files added; releases those quiet for `drain_grace`.
    /// Returns false when the read budget ran out.
    fn drain_old(
        &mut self,
        budget: &mut u64,
        report: &mut PollReport,
        f: &mut dyn FnMut(&str),
    ) -> Result<bool, TailError> {
        let mut i = 0;
        while let Some(d) = self.draining.get_mut(i) {
            let before = report.bytes;
            let done = read_file(
                &mut d.cur,
                &mut d.lines,
                &mut self.buf,
                budget,
                report,
                f,
                &self.cfg.path,
            )?;
            if !done {
                return Ok(false);
            }
            if report.bytes > before {
                d.grew_at = Instant::now();
                i += 1;
            } else if d.grew_at.elapsed() >= self.cfg.drain_grace {
                let mut d = self.draining.remove(i);
                d.lines.finish(report, f);
                self.remember_released(&d.cur);
            } else {
                i += 1;
            }
        }
        Ok(true)
    }

    /// The position to save for a restart: the last file read and the offset of the first
    /// line not yet handed over. `None` before any file was seen.
    pub fn state(&self) -> Option<TailState> {
        self.ident.map(|(dev, ino)| TailState {
            dev,
            ino,
            offset: self.lines.line_start,
        })
    }

    /// Reads everything new since the last poll (up to `max_read_per_poll` bytes) and hands
    /// each complete line to `f`; returns what happened.
    pub fn poll(&mut self, f: &mut dyn FnMut(&str)) -> Result<PollReport, TailError> {
        let mut report = PollReport::default();
        let mut budget = self.cfg.max_read_per_poll.max(1) as u64;
        if let Some(init) = self.initial.take() {
            self.begin(init, &mut report)?;
        }
        if !self.drain_old(&mut budget, &mut report, f)? {
            report.more = true;
            return Ok(report); // budget used up: continue on the next poll
        }
        for _ in 0..MAX_SWITCHES_PER_POLL {
            if self.cur.is_none() {
                if let Some(next) = self.backlog.pop_front() {
                    self.switch_to(next, 0)?;
                    continue;
                }
                match self.open_path()? {
                    Some(cur) => self.switch_to(cur, 0)?,
                    None => {
                        report.file_missing = true;
                        return Ok(report);
                    }
                }
            }
            self.check_truncation(&mut report)?;
            if !self.read_available(&mut budget, &mut report, f)? {
                report.more = true;
                return Ok(report); // budget used up: continue on the next poll
            }
            // Catching up: the next file rotated aside meanwhile comes from the backlog at
            // the top of the loop (the current one drains, in case its writer still adds).
            if !self.backlog.is_empty() {
                self.retire_current(f, &mut report);
                report.rotations += 1;
                continue;
            }
            // At the end of the current file: does the path still name it?
            match fs::metadata(&self.cfg.path) {
                Ok(m) if self.is_current(m.dev(), m.ino()) => return Ok(report),
                Ok(_) => {
                    // Rotated: read writes that raced the rename, keep the old file draining
                    // (late writes), move to the new file.
                    if !self.read_available(&mut budget, &mut report, f)? {
                        report.more = true;
                        return Ok(report);
                    }
                    // The path's file is opened first, then the files rotated aside after
                    // this one are looked for: a rotation between the look above and the
                    // open (or several since the last poll) is among them, read before it.
                    let opened = self.open_path()?;
                    let between = match &self.cur {
                        Some(cur) => self.rotated_after(cur, opened),
                        None => opened.into_iter().collect(),
                    };
                    self.retire_current(f, &mut report);
                    self.backlog.extend(between);
                    report.rotations += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    report.file_missing = true;
                    let deleted = match &self.cur {
                        Some(c) => c.file.metadata().map(|m| m.nlink() == 0).unwrap_or(true),
                        None => true,
                    };
                    // A file that still has a name elsewhere is kept (the path is another
                    // spelling that does not exist right now, e.g. gravity's /proc root while
                    // it is down). A deleted one drains while its writer may still add to it.
                    if deleted {
                        self.retire_current(f, &mut report);
                    }
                    return Ok(report);
                }
                Err(e) => return Err(self.read_err(e)),
            }
        }
        Ok(report)
    }

    fn is_current(&self, dev: u64, ino: u64) -> bool {
        self.cur
            .as_ref()
            .is_some_and(|c| c.dev == dev && c.ino == ino)
    }

    fn read_err(&self, source: io::Error) -> TailError {
        TailError::Read {
            path: self.cfg.path.clone(),
            source,
        }
    }

    /// The first poll: apply the saved state or `start_at_end`.
    fn begin(&mut self, init: Initial, report: &mut PollReport) -> Result<(), TailError> {
        let opened = self.open_path()?;
        match (init, opened) {
            (Initial::Saved(st), Some(cur)) if cur.dev == st.dev && cur.ino == st.ino => {
                let len = cur.file.metadata().map_err(|e| self.read_err(e))?.len();
                if len < st.offset {
                    report.truncations += 1;
                    self.switch_to(cur, 0)
                } else {
                    self.switch_to(cur, st.offset)
                }
            }
            (Initial::Saved(st), opened) => {
                // The state is from before a rotation. If the old file still sits next to the
                // path, finish it first; the rotation check in `poll` then moves on to the new
                // file. Otherwise start the new file at 0.
                if let Some(old) = self.find_rotated(st) {
                    self.backlog = self.rotated_after(&old, opened);
                    return self.switch_to(old, st.offset);
                }
                match opened {
                    Some(cur) => self.switch_to(cur, 0),
                    None => Ok(()),
                }
            }
            (Initial::End, Some(cur)) if self.born_after_start(&cur) => self.switch_to(cur, 0),
            (Initial::End, Some(mut cur)) => {
                let len = cur.file.metadata().map_err(|e| self.read_err(e))?.len();
                // Begin at the start of the last, unfinished line (if any), so that it is
                // handed over whole once its newline arrives, never as a fragment.
                let start = last_line_start(&mut cur.file, len, self.lines.max)
                    .map_err(|e| self.read_err(e))?;
                self.switch_to(cur, start.unwrap_or(len))?;
                if start.is_none() && len > 0 {
                    self.lines.discarding = true; // mid-way through an oversized line
                }
                Ok(())
            }
            (Initial::Start, Some(cur)) => self.switch_to(cur, 0),
            (_, None) => Ok(()), // appears later: read from 0 then
        }
    }

    /// The file was created at or after `new_if_born_after` (it holds only new lines).
    fn born_after_start(&self, cur: &Current) -> bool {
        let Some(since) = self.cfg.new_if_born_after else {
            return false;
        };
        cur.file
            .metadata()
            .and_then(|m| m.created())
            .is_ok_and(|t| t >= since)
    }

    fn switch_to(&mut self, mut cur: Current, offset: u64) -> Result<(), TailError> {
        cur.file
            .seek(SeekFrom::Start(offset))
            .map_err(|e| self.read_err(e))?;
        cur.read_pos = offset;
        self.lines.reset(offset);
        self.ident = Some((cur.dev, cur.ino));
        self.cur = Some(cur);
        Ok(())
    }

    /// Opens the path; `None` when it does not exist.
    fn open_path(&self) -> Result<Option<Current>, TailError> {
        let file = match File::open(&self.cfg.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(TailError::Open {
                    path: self.cfg.path.clone(),
                    source,
                })
            }
        };
        let meta = file.metadata().map_err(|e| self.read_err(e))?;
        if !meta.is_file() {
            return Err(TailError::Open {
                path: self.cfg.path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        Ok(Some(Current::opened(file, meta.dev(), meta.ino())))
    }

    /// The directory holding the log.
    fn log_dir(&self) -> &Path {
        match self.cfg.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        }
    }

    /// Looks for the file with the saved device+inode among the path's siblings whose name
    /// starts like the log's (lumberjack: `gravity-<time>.log`; logrotate: `gravity.log.1`).
    /// A compressed copy has another inode and is never picked.
    fn find_rotated(&self, st: TailState) -> Option<Current> {
        let dir = self.log_dir();
        let name = self.cfg.path.file_name()?.to_str()?;
        let stem = name.split('.').next().unwrap_or(name);
        for entry in fs::read_dir(dir).ok()?.take(MAX_SIBLINGS) {
            let Ok(entry) = entry else { continue };
            let file_name = entry.file_name();
            let Some(n) = file_name.to_str() else {
                continue;
            };
            if n == name || !n.starts_with(stem) {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_file()
                && meta.dev() == st.dev
                && meta.ino() == st.ino
                && meta.len() >= st.offset
            {
                let file = File::open(entry.path()).ok()?;
                return Some(Current::opened(file, st.dev, st.ino));
            }
        }
        None
    }

    /// The files rotated aside after `old` while nobody read them (after a restart, `old` is
    /// the saved state's file found by [`Tailer::find_rotated`]; live, the file just seen
    /// rotated when the path was rotated more than once between two looks), oldest first,
    /// then `current` (after a restart, the file the path names now): opened now, so a
    /// rotation during the catch-up loses none. Candidates are the path's siblings named as a
    /// rotation of it ([`is_rotation_of`]), last written at or after `old` was, and neither
    /// `old`, `current`, a draining, queued or recently released file.
    fn rotated_after(
        &self,
        old: &Current,
        current: Option<Current>,
    ) -> std::collections::VecDeque<Current> {
        let mut out = std::collections::VecDeque::new();
        let (Some(name), Ok(old_meta)) = (
            self.cfg.path.file_name().and_then(|n| n.to_str()),
            old.file.metadata(),
        ) else {
            return out;
        };
        let since = old_meta.modified().ok();
        let dir = self.log_dir();
        let skip = |dev: u64, ino: u64| {
            (dev == old.dev && ino == old.ino)
                || current
                    .as_ref()
                    .is_some_and(|c| c.dev == dev && c.ino == ino)
                || self
                    .draining
                    .iter()
                    .any(|d| d.cur.dev == dev && d.cur.ino == ino)
                || self.backlog.iter().any(|c| c.dev == dev && c.ino == ino)
                || self.released.contains(&(dev, ino))
        };
        let mut found: Vec<(SystemTime, String, PathBuf)> = Vec::new();
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.take(MAX_SIBLINGS).flatten() {
                let file_name = entry.file_name();
                let Some(n) = file_name.to_str() else {
                    continue;
                };
                if !is_rotation_of(name, n) {
                    continue;
                }
                let Ok(meta) = entry.metadata() else { continue };
                let Ok(mtime) = meta.modified() else { continue };
                if !meta.is_file()
                    || skip(meta.dev(), meta.ino())
                    || since.is_none_or(|t| mtime < t)
                {
                    continue;
                }
                found.push((mtime, n.to_string(), entry.path()));
            }
        }
        found.sort();
        let keep_from = found.len().saturating_sub(MAX_BACKLOG);
        for (_, _, path) in found.into_iter().skip(keep_from) {
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let Ok(meta) = file.metadata() else { continue };
            if skip(meta.dev(), meta.ino()) {
                continue;
            }
            out.push_back(Current::opened(file, meta.dev(), meta.ino()));
        }
        if let Some(c) = current {
            out.push_back(c);
        }
        out
    }

    fn check_truncation(&mut self, report: &mut PollReport) -> Result<(), TailError> {
        let Some(cur) = self.cur.as_mut() else {
            return Ok(());
        };
        let err = |source| TailError::Read {
            path: self.cfg.path.clone(),
            source,
        };
        if cur.truncated().map_err(err)? {
            report.truncations += 1;
            cur.file.seek(SeekFrom::Start(0)).map_err(err)?;
            cur.read_pos = 0;
            cur.head.clear();
            self.lines.reset(0);
        }
        Ok(())
    }

    /// Reads the current file to its end or until the budget is used up. Returns true when
    /// the end was reached.
    fn read_available(
        &mut self,
        budget: &mut u64,
        report: &mut PollReport,
        f: &mut dyn FnMut(&str),
    ) -> Result<bool, TailError> {
        let Tailer {
            cur,
            lines,
            buf,
            cfg,
            ..
        } = self;
        match cur.as_mut() {
            Some(cur) => read_file(cur, lines, buf, budget, report, f, &cfg.path),
            None => Ok(true),
        }
    }
}

/// Reads `cur` to its end or until the budget is used up, feeding `lines`. Returns true when
/// the end was reached.
fn read_file(
    cur: &mut Current,
    lines: &mut Lines,
    buf: &mut [u8],
    budget: &mut u64,
    report: &mut PollReport,
    f: &mut dyn FnMut(&str),
    path: &Path,
) -> Result<bool, TailError> {
    let res = loop {
        if *budget == 0 {
            break Ok(false);
        }
        let want = buf
            .len()
            .min(usize::try_from(*budget).unwrap_or(usize::MAX));
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = match cur.file.read(chunk) {
            Ok(0) => break Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                break Err(TailError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let base = cur.read_pos;
        cur.read_pos = cur.read_pos.saturating_add(n as u64);
        *budget = budget.saturating_sub(n as u64);
        report.bytes = report.bytes.saturating_add(n as u64);
        lines.feed(chunk.get(..n).unwrap_or_default(), base, report, f);
    };
    cur.remember_head();
    res
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn cfg(path: &Path) -> TailConfig {
        TailConfig {
            path: path.to_path_buf(),
            start_at_end: false,
            max_line_bytes: TailConfig::DEFAULT_MAX_LINE_BYTES,
            max_read_per_poll: TailConfig::DEFAULT_MAX_READ_PER_POLL,
            drain_grace: Duration::ZERO,
            new_if_born_after: None,
        }
    }

    fn append(path: &Path, data: &[u8]) {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(data).unwrap();
    }

    fn append_lines(path: &Path, from: usize, to: usize) {
        let mut s = String::new();
        for i in from..to {
            s.push_str(&format!("{{\"level\":\"info\",\"msg\":\"line {i}\"}}\n"));
        }
        append(path, s.as_bytes());
    }

    fn expected(from: usize, to: usize) -> Vec<String> {
        (from..to)
            .map(|i| format!("{{\"level\":\"info\",\"msg\":\"line {i}\"}}"))
            .collect()
    }

    fn poll(t: &mut Tailer, seen: &mut Vec<String>) -> PollReport {
        t.poll(&mut |l| seen.push(l.to_owned())).unwrap()
    }

    #[test]
    fn reads_new_lines_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 3);
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.file_missing), (3, false));
        append_lines(&p, 3, 5);
        assert_eq!(poll(&mut t, &mut seen).lines, 2);
        assert_eq!(poll(&mut t, &mut seen), PollReport::default());
        assert_eq!(seen, expected(0, 5));
        let st = t.state().unwrap();
        assert_eq!(st.offset, fs::metadata(&p).unwrap().len());
    }

    /// The decision "a file born after the exporter started holds only new lines" is taken
    /// when the file is opened, not before: a log created between the tailer's creation and
    /// its first poll was read from its end, and its first lines were lost for good.
    #[test]
    fn a_log_born_after_the_start_is_read_from_its_start_even_when_it_appears_late() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        let mut c = cfg(&p);
        c.start_at_end = true;
        c.new_if_born_after = Some(std::time::SystemTime::now() - Duration::from_secs(1));
        // the tailer is made while the log does not exist yet ...
        let mut t = Tailer::new(c, None);
        // ... and the log appears (with lines) before the first poll
        append_lines(&p, 0, 3);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 3);
        assert_eq!(seen, expected(0, 3));
    }

    /// A log that existed before the exporter started is still read from its end.
    #[test]
    fn a_log_born_before_the_start_is_read_from_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 3);
        let mut c = cfg(&p);
        c.start_at_end = true;
        c.new_if_born_after = Some(std::time::SystemTime::now() + Duration::from_secs(3600));
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
        append_lines(&p, 3, 4);
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        assert_eq!(seen, expected(3, 4));
    }

    #[test]
    fn start_at_end_skips_history() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 5);
        let mut c = cfg(&p);
        c.start_at_end = true;
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
        append_lines(&p, 5, 7);
        assert_eq!(poll(&mut t, &mut seen).lines, 2);
        assert_eq!(seen, expected(5, 7));
    }

    #[test]
    fn start_at_end_keeps_an_unfinished_last_line_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append(&p, b"old 1\nold 2\nunfinis");
        let mut c = cfg(&p);
        c.start_at_end = true;
        let mut t = Tailer::new(c.clone(), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
        append(&p, b"hed\nnew\n");
        assert_eq!(poll(&mut t, &mut seen).lines, 2);
        assert_eq!(seen, ["unfinished", "new"]);
        // A file that is one unfinished line from its start is read whole too.
        let q = dir.path().join("other.log");
        append(&q, b"abc");
        c.path = q.clone();
        let mut t = Tailer::new(c.clone(), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
        append(&q, b"def\n");
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        assert_eq!(seen, ["abcdef"]);
        // Mid-way through an oversized tail: its end is skipped, not handed over.
        let r = dir.path().join("big.log");
        append(&r, b"x\n");
        append(&r, &[b'y'; 100]);
        c.path = r.clone();
        c.max_line_bytes = 10;
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
        append(&r, b"yyy\nz\n");
        let rep = poll(&mut t, &mut seen);
        assert_eq!((rep.lines, rep.oversized), (1, 0));
        assert_eq!(seen, ["z"]);
    }

    #[test]
    fn file_created_after_start_is_read_from_zero_even_with_start_at_end() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        let mut c = cfg(&p);
        c.start_at_end = true;
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        assert!(poll(&mut t, &mut seen).file_missing);
        assert_eq!(t.state(), None);
        append_lines(&p, 0, 4);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.file_missing), (4, false));
        assert_eq!(seen, expected(0, 4));
    }

    #[test]
    fn lumberjack_rename_rotation_loses_and_repeats_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 1);
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        append_lines(&p, 1, 60);
        assert_eq!(poll(&mut t, &mut seen).lines, 59);
        // 41 more lines in the old file, one of them written through a handle opened before
        // the rename and written after it (the write races the rotation).
        append_lines(&p, 60, 100);
        let mut racing = fs::OpenOptions::new().append(true).open(&p).unwrap();
        fs::rename(&p, dir.path().join("gravity-2026-11-22T14-00-00.000.log")).unwrap();
        racing
            .write_all(b"{\"level\":\"info\",\"msg\":\"line 100\"}\n")
            .unwrap();
        drop(racing);
        append_lines(&p, 101, 151); // the new file
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations, r.truncations), (91, 1, 0));
        assert_eq!(seen, expected(0, 151));
        assert_eq!(poll(&mut t, &mut seen), PollReport::default());
        append_lines(&p, 151, 152);
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        assert_eq!(seen, expected(0, 152));
    }

    #[test]
    fn rotation_100_then_50_in_one_poll() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        fs::write(&p, b"").unwrap();
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
        append_lines(&p, 0, 100);
        fs::rename(&p, dir.path().join("gravity-2026-11-22T14-00-00.000.log")).unwrap();
        append_lines(&p, 100, 150);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations), (150, 1));
        assert_eq!(seen, expected(0, 150));
    }

    /// Two rotations between two looks: the file rotated aside in between is read too.
    #[test]
    fn two_rotations_between_two_polls_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = d.join("gravity.log");
        append_lines(&p, 0, 10);
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        poll(&mut t, &mut seen);
        append_lines(&p, 10, 12);
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-00.000.log")).unwrap();
        append_lines(&p, 12, 15);
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-00.400.log")).unwrap();
        append_lines(&p, 15, 18);
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-00.800.log")).unwrap();
        append_lines(&p, 18, 20);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations), (10, 3));
        assert_eq!(seen, expected(0, 20));
        // and the files read are not read again at the next rotation
        append_lines(&p, 20, 21);
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-01.200.log")).unwrap();
        append_lines(&p, 21, 22);
        for _ in 0..3 {
            poll(&mut t, &mut seen);
        }
        assert_eq!(seen, expected(0, 22));
    }

    /// A writer rotating every two lines (often several times between two polls, and
    /// between a poll's look at the path and its open) while the tailer polls: each line
    /// once, in order.
    #[test]
    fn fast_rotations_while_polling_lose_and_repeat_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let p = d.join("gravity.log");
        fs::write(&p, b"").unwrap();
        let mut c = cfg(&p);
        c.drain_grace = Duration::from_millis(300);
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        poll(&mut t, &mut seen);
        let writer = {
            let p = p.clone();
            let d = d.clone();
            std::thread::spawn(move || {
                for i in 0..300 {
                    append_lines(&p, i, i + 1);
                    if i % 2 == 1 {
                        let name =
                            format!("gravity-2026-11-22T14-{:02}-{:02}.000.log", i / 60, i % 60);
                        // lumberjack: rename aside, create the new file at once
                        fs::rename(&p, d.join(name)).unwrap();
                        fs::write(&p, b"").unwrap();
                    }
                    std::thread::sleep(Duration::from_micros(300 + (i as u64 * 7919) % 700));
                }
            })
        };
        while !writer.is_finished() {
            poll(&mut t, &mut seen);
            std::thread::sleep(Duration::from_millis(1));
        }
        writer.join().unwrap();
        for _ in 0..50 {
            poll(&mut t, &mut seen);
        }
        let nums: Vec<String> = seen
            .iter()
            .map(|l| {
                l.trim_start_matches("{\"level\":\"info\",\"msg\":\"line ")
                    .trim_end_matches("\"}")
                    .to_string()
            })
            .collect();
        assert!(seen == expected(0, 300), "{}", nums.join(" "));
    }

    #[test]
    fn unterminated_last_line_of_rotated_file_is_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append(&p, b"a\nb-without-newline");
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        fs::rename(&p, dir.path().join("gravity.log.1")).unwrap();
        append(&p, b"c\n");
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations), (1, 1));
        // Once the renamed file has been quiet for the drain grace (0 here), its unfinished
        // last line is handed over.
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        assert_eq!(seen, ["a", "c", "b-without-newline"]);
    }

    #[test]
    fn copytruncate_restarts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 10);
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 10);
        fs::copy(&p, dir.path().join("gravity.log.1")).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        append_lines(&p, 10, 13);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.truncations, r.rotations), (3, 1, 0));
        assert_eq!(seen, expected(0, 13));
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
    }

    #[test]
    fn delete_then_recreate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 5);
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 5);
        let before = t.state().unwrap();
        fs::remove_file(&p).unwrap();
        for _ in 0..3 {
            let r = poll(&mut t, &mut seen);
            assert!(r.file_missing);
            assert_eq!(r.lines, 0);
        }
        assert!(t.cur.is_none(), "the deleted file's handle is released");
        assert!(t.draining.is_empty(), "and not kept draining");
        assert_eq!(t.state(), None, "the next file is read from its start");
        assert!(before.offset > 0);
        append_lines(&p, 5, 9);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.file_missing), (4, false));
        assert_eq!(seen, expected(0, 9));
    }

    #[test]
    fn deleted_file_still_written_is_drained() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        let mut w = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        w.write_all(b"1\n").unwrap();
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        fs::remove_file(&p).unwrap();
        w.write_all(b"2\n").unwrap();
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.file_missing), (1, true));
        assert_eq!(seen, ["1", "2"]);
    }

    #[test]
    fn partial_line_waits_for_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append(&p, b"first\nsec");
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        assert_eq!(
            t.state().unwrap().offset,
            6,
            "resume at the partial line's start"
        );
        append(&p, b"ond");
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
        append(&p, b"\r\nthird\n");
        assert_eq!(poll(&mut t, &mut seen).lines, 2);
        assert_eq!(seen, ["first", "second", "third"]);
        assert_eq!(t.state().unwrap().offset, 20);
    }

    #[test]
    fn ten_megabyte_line_is_skipped_with_bounded_memory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        let mut data = b"before\n".to_vec();
        data.extend(std::iter::repeat_n(b'x', 10 * 1024 * 1024));
        data.extend_from_slice(b"\nafter\n");
        fs::write(&p, &data).unwrap();
        let mut c = cfg(&p);
        c.max_read_per_poll = 1024 * 1024;
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        let mut total = PollReport::default();
        for _ in 0..20 {
            let r = poll(&mut t, &mut seen);
            assert!(r.bytes <= 1024 * 1024);
            total.lines += r.lines;
            total.oversized += r.oversized;
            total.bytes += r.bytes;
            assert!(t.lines.pending.capacity() <= TailConfig::DEFAULT_MAX_LINE_BYTES * 2);
        }
        assert_eq!(seen, ["before", "after"]);
        assert_eq!((total.lines, total.oversized), (2, 1));
        assert_eq!(total.bytes, data.len() as u64);
    }

    #[test]
    fn oversized_line_inside_one_chunk_and_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        let mut c = cfg(&p);
        c.max_line_bytes = 8;
        append(&p, b"12345678\n123456789\nok\n");
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.oversized), (2, 1));
        assert_eq!(seen, ["12345678", "ok"]);
        // Oversized across polls: pending grows past the limit, then the newline arrives.
        append(&p, b"abcde");
        assert_eq!(poll(&mut t, &mut seen).oversized, 0);
        append(&p, b"fghij");
        assert_eq!(poll(&mut t, &mut seen).oversized, 1);
        append(&p, b"klm\nnext\n");
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.oversized), (1, 0));
        assert_eq!(seen, ["12345678", "ok", "next"]);
    }

    #[test]
    fn invalid_utf8_is_converted_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append(&p, b"ok\nbad \xff\xfe end\n\xe4\xb8\xad\n");
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.invalid_utf8), (3, 1));
        assert_eq!(seen, ["ok", "bad \u{fffd}\u{fffd} end", "中"]);
    }

    #[test]
    fn read_budget_spreads_a_backlog_over_polls() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 1000);
        let mut c = cfg(&p);
        c.max_read_per_poll = 1000;
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        let mut polls = 0;
        let mut more = 0;
        loop {
            polls += 1;
            let r = poll(&mut t, &mut seen);
            assert!(r.bytes <= 1000);
            more += u32::from(r.more);
            if !r.more {
                break;
            }
        }
        // every poll but the last says there is more: the watcher polls again at once
        assert!(polls > 30, "{polls}");
        assert_eq!(more, polls - 1);
        assert_eq!(seen, expected(0, 1000));
    }

    #[test]
    fn restart_resumes_from_saved_state() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 10);
        append(&p, b"{\"partial");
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 10);
        let json = t.state().unwrap().to_json();
        drop(t);
        let saved = TailState::from_json(&json).unwrap();
        append(&p, b"\":1}\n");
        append_lines(&p, 10, 15);
        // start_at_end must not matter when there is a state.
        let mut c = cfg(&p);
        c.start_at_end = true;
        let mut t = Tailer::new(c, Some(saved));
        let mut seen2 = Vec::new();
        let r = poll(&mut t, &mut seen2);
        assert_eq!((r.lines, r.truncations, r.rotations), (6, 0, 0));
        assert_eq!(seen2[0], "{\"partial\":1}");
        assert_eq!(seen2[1..], expected(10, 15)[..]);
    }

    #[test]
    fn restart_with_state_of_a_truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 10);
        let mut t = Tailer::new(cfg(&p), None);
        poll(&mut t, &mut Vec::new());
        let saved = t.state().unwrap();
        fs::write(&p, b"").unwrap(); // same inode, truncated
        append_lines(&p, 0, 2);
        let mut t = Tailer::new(cfg(&p), Some(saved));
        let mut seen = Vec::new();
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.truncations), (2, 1));
        assert_eq!(seen, expected(0, 2));
    }

    #[test]
    fn restart_after_rotation_drains_the_renamed_file_first() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 10);
        let mut t = Tailer::new(cfg(&p), None);
        poll(&mut t, &mut Vec::new());
        let saved = t.state().unwrap();
        drop(t);
        // While the exporter is down: 5 more lines, rotation, 7 lines in the new file.
        append_lines(&p, 10, 15);
        fs::rename(&p, dir.path().join("gravity-2026-11-22T14-00-00.000.log")).unwrap();
        append_lines(&p, 15, 22);
        fs::write(dir.path().join("unrelated.log"), b"x\n").unwrap();
        let mut t = Tailer::new(cfg(&p), Some(saved));
        let mut seen = Vec::new();
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations), (12, 1));
        assert_eq!(seen, expected(10, 22));
    }

    /// An exporter down through three lumberjack rotations: on restart the saved file, the
    /// two files rotated aside after it and the current one are read, in order, each line
    /// once; an older rotation, a compressed copy and a file of another name are not.
    #[test]
    fn restart_after_several_rotations_reads_every_file_rotated_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = d.join("gravity.log");
        let ancient = d.join("gravity-2026-11-21T00-00-00.000.log");
        append_lines(&ancient, 900, 905);
        fs::File::options()
            .write(true)
            .open(&ancient)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        append_lines(&p, 0, 10);
        let mut t = Tailer::new(cfg(&p), None);
        poll(&mut t, &mut Vec::new());
        let saved = t.state().unwrap();
        drop(t);
        append_lines(&p, 10, 15);
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-00.000.log")).unwrap();
        append_lines(&p, 15, 20);
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-01.000.log")).unwrap();
        append_lines(&p, 20, 27);
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-02.000.log")).unwrap();
        append_lines(&p, 27, 30);
        append_lines(&d.join("gravity-2026-11-22T14-00-01.000.log.gz"), 700, 702);
        append_lines(&d.join("gravity-exporter.json"), 800, 802);
        let mut t = Tailer::new(cfg(&p), Some(saved));
        let mut seen = Vec::new();
        let mut rotations = 0;
        for _ in 0..3 {
            rotations += poll(&mut t, &mut seen).rotations;
        }
        assert_eq!(seen, expected(10, 30));
        assert_eq!(rotations, 3);
        // it follows on as usual
        append_lines(&p, 30, 32);
        poll(&mut t, &mut seen);
        assert_eq!(seen, expected(10, 32));
    }

    /// The catch-up is read a few bytes per poll while gravity rotates again: still each
    /// line once, in order.
    #[test]
    fn a_rotation_during_the_catch_up_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let p = d.join("gravity.log");
        append_lines(&p, 0, 5);
        let mut t = Tailer::new(cfg(&p), None);
        poll(&mut t, &mut Vec::new());
        let saved = t.state().unwrap();
        drop(t);
        append_lines(&p, 5, 20);
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-00.000.log")).unwrap();
        append_lines(&p, 20, 40);
        let mut c = cfg(&p);
        c.max_read_per_poll = 100;
        let mut t = Tailer::new(c, Some(saved));
        let mut seen = Vec::new();
        poll(&mut t, &mut seen);
        assert!(seen.len() < 35, "{}", seen.len());
        // rotated again before the catch-up reached the file that was current at restart
        fs::rename(&p, d.join("gravity-2026-11-22T14-00-05.000.log")).unwrap();
        append_lines(&p, 40, 45);
        for _ in 0..200 {
            poll(&mut t, &mut seen);
        }
        assert_eq!(seen, expected(5, 45));
    }

    #[test]
    fn rotated_names_are_recognised() {
        for (name, candidate, yes) in [
            ("gravity.log", "gravity-2026-11-22T14-00-00.000.log", true),
            (
                "gravity.log",
                "gravity-2026-11-22T14-00-00.000.log.gz",
                false,
            ),
            ("gravity.log", "gravity.log.1", true),
            ("gravity.log", "gravity.log.1.gz", false),
            ("gravity.log", "gravity.log-20261122", true),
            ("gravity.log", "gravity.log", false),
            ("gravity.log", "gravity-exporter.log", false),
            ("gravity.log", "gravity-.log", false),
            ("gravity.log", "other-2026-11-22T14-00-00.000.log", false),
            ("gravity", "gravity-2026-11-22T14-00-00.000", true),
            ("gravity", "gravity-state.json", false),
        ] {
            assert_eq!(is_rotation_of(name, candidate), yes, "{name} / {candidate}");
        }
    }

    #[test]
    fn restart_after_rotation_without_the_old_file_starts_new_file_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 10);
        let mut t = Tailer::new(cfg(&p), None);
        poll(&mut t, &mut Vec::new());
        let saved = t.state().unwrap();
        // Create the new file before removing the old one so that the inode cannot be reused.
        let tmp = dir.path().join("new.tmp");
        append_lines(&tmp, 100, 103);
        fs::remove_file(&p).unwrap();
        fs::rename(&tmp, &p).unwrap();
        let mut t = Tailer::new(cfg(&p), Some(saved));
        let mut seen = Vec::new();
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations, r.truncations), (3, 0, 0));
        assert_eq!(seen, expected(100, 103));
    }

    #[test]
    fn state_json_roundtrip_and_errors() {
        let s = TailState {
            dev: 2049,
            ino: u64::MAX,
            offset: 12345,
        };
        assert_eq!(
            s.to_json(),
            "{\"dev\":2049,\"ino\":18446744073709551615,\"offset\":12345}"
        );
        assert_eq!(TailState::from_json(&s.to_json()).unwrap(), s);
        for bad in [
            "",
            "{",
            "{\"dev\":1,\"ino\":2}",
            "{\"dev\":-1,\"ino\":2,\"offset\":3}",
            "[]",
        ] {
            assert!(
                matches!(TailState::from_json(bad), Err(TailError::State(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn unreadable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tailer::new(cfg(dir.path()), None);
        let e = t.poll(&mut |_| {}).unwrap_err();
        assert!(matches!(e, TailError::Open { .. }), "{e}");
        assert!(e.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn late_writes_to_a_renamed_file_are_read_until_it_is_quiet() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        let old_name = dir.path().join("gravity-2026-11-22T14-00-00.000.log");
        append_lines(&p, 0, 2);
        let mut c = cfg(&p);
        c.drain_grace = Duration::from_secs(3600);
        let mut t = Tailer::new(c, None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 2);
        let mut late = fs::OpenOptions::new().append(true).open(&p).unwrap();
        fs::rename(&p, &old_name).unwrap();
        append_lines(&p, 100, 102);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations), (2, 1));
        // The writer goes on writing to the renamed file for a while, without a newline at
        // first: the line is handed over whole once finished.
        late.write_all(b"{\"level\":\"info\",\"msg\":\"line 2\"}\n{\"le")
            .unwrap();
        append_lines(&p, 102, 103);
        assert_eq!(poll(&mut t, &mut seen).lines, 2);
        late.write_all(b"vel\":\"info\",\"msg\":\"line 3\"}\n")
            .unwrap();
        assert_eq!(poll(&mut t, &mut seen).lines, 1);
        let mut got = seen.clone();
        got.sort();
        let mut want = [expected(0, 4), expected(100, 103)].concat();
        want.sort();
        assert_eq!(got, want);
        assert_eq!(t.draining_states().len(), 1);
        // Quiet for the grace period: released.
        t.cfg.drain_grace = Duration::ZERO;
        assert_eq!(poll(&mut t, &mut seen).lines, 0);
        assert!(t.draining.is_empty());
    }

    #[test]
    fn a_saved_draining_file_is_resumed_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        let old_name = dir.path().join("gravity.log.1");
        append_lines(&p, 0, 2);
        let mut c = cfg(&p);
        c.drain_grace = Duration::from_secs(3600);
        let mut t = Tailer::new(c.clone(), None);
        let mut seen = Vec::new();
        poll(&mut t, &mut seen);
        let mut late = fs::OpenOptions::new().append(true).open(&p).unwrap();
        fs::rename(&p, &old_name).unwrap();
        append_lines(&p, 100, 101);
        poll(&mut t, &mut seen);
        let (main, draining) = (t.state(), t.draining_states());
        drop(t);
        late.write_all(b"{\"level\":\"info\",\"msg\":\"line 2\"}\n")
            .unwrap();
        append_lines(&p, 101, 102);
        let mut t = Tailer::new(c, main);
        t.resume_draining(&draining);
        let mut seen2 = Vec::new();
        assert_eq!(poll(&mut t, &mut seen2).lines, 2);
        seen2.sort();
        let mut want = [expected(2, 3), expected(101, 102)].concat();
        want.sort();
        assert_eq!(seen2, want);
    }

    #[test]
    fn another_spelling_of_the_same_file_keeps_handle_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        // `root` stands for /proc/<pid>/root: another path to the same directory.
        std::os::unix::fs::symlink(dir.path(), dir.path().join("root")).unwrap();
        let via_root = dir.path().join("root").join("gravity.log");
        append_lines(&p, 0, 3);
        let mut t = Tailer::new(cfg(&via_root), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 3);
        append_lines(&p, 3, 5);
        t.set_path(&p);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations, r.truncations), (2, 0, 0));
        // gravity down in a sidecar: its root is gone, the file is still written.
        t.set_path(&dir.path().join("gone").join("gravity.log"));
        append_lines(&p, 5, 6);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.file_missing, r.rotations), (1, true, 0));
        assert!(t.cur.is_some(), "handle kept while the path is missing");
        append_lines(&p, 6, 7);
        t.set_path(&via_root);
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.rotations, r.truncations), (1, 0, 0));
        assert_eq!(seen, expected(0, 7));
    }

    #[test]
    fn copytruncate_followed_by_a_longer_rewrite_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gravity.log");
        append_lines(&p, 0, 3);
        let mut t = Tailer::new(cfg(&p), None);
        let mut seen = Vec::new();
        assert_eq!(poll(&mut t, &mut seen).lines, 3);
        fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(0)
            .unwrap();
        append_lines(&p, 10, 20); // more than was read before the truncation
        let r = poll(&mut t, &mut seen);
        assert_eq!((r.lines, r.truncations), (10, 1));
        assert_eq!(seen, [expected(0, 3), expected(10, 20)].concat());
    }
}
