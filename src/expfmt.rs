//! Parser for the Prometheus text exposition format (version 0.0.4), as written by
//! client_golang's text encoder.
//!
//! gravity serves its `/metrics` page in this format (client_golang 1.11). The exporter
//! scrapes that page on every Prometheus scrape, so the parser has to be fast, must not
//! allocate per sample more than it has to, and must never panic on whatever bytes a
//! misbehaving (or hostile) endpoint returns.
//!
//! Design:
//! - Zero-copy: names, label names, raw lines and HELP text borrow from the input. Label
//!   values are `Cow::Borrowed` unless they contain escape sequences. A sample's only
//!   allocation is its label vector, normally sized exactly on the first try.
//! - Byte-oriented: lines are found, and label values and values scanned, eight bytes at
//!   a time (SWAR, std only). client_golang repeats the family name and the label names
//!   of the previous sample, so those are compared as a whole first and classified byte
//!   by byte only when they differ. Slices are only cut at ASCII delimiters, which are
//!   always UTF-8 character boundaries, and are taken with `str::get`, so that even a
//!   logic error cannot panic in release builds.
//! - Grouping follows Go's `expfmt.TextParser`: `_bucket`/`_sum`/`_count` samples belong
//!   to the histogram family of the base name, `_sum`/`_count` and the `quantile` samples
//!   to a summary family; a sample with no matching `# TYPE`/`# HELP` forms an untyped
//!   family of its own name. Samples of a family that reappear later are merged into it.
//!   Counter names are kept as they are (gravity's counters end in `_counter`).
//! - Two entry points: [`parse`] stops at the first malformed line, [`parse_lossy`] skips
//!   malformed lines and reports up to [`MAX_LOSSY_ERRORS`] errors.
//!
//! Accepted syntax (Go's `TextParser` unless noted):
//! - `# HELP name text` (escapes `\\`, `\n`; others are errors), `# TYPE name kind`
//!   (kind case-insensitive), any other `#` line is a comment, blank lines are ignored,
//!   `\r\n` line ends are accepted.
//! - `name{a="x",b="y",} value [timestamp_ms]`: blanks/tabs allowed before the name,
//!   around label names, `=`, values and separators; trailing comma and `{}` allowed;
//!   label escapes `\\`, `\"`, `\n`. Values use Go's float syntax (`+Inf`, `NaN`, ...).
//! - Deliberately strict: a metric name must be followed by a blank or `{`; a histogram
//!   bucket needs a numeric `le` and a summary quantile sample a numeric `quantile`; a
//!   TYPE line needs a kind; a second HELP or TYPE for a family, or a TYPE after its
//!   samples, is an error. Deliberately lenient: blanks after the value or timestamp.
//!
//! Input size is the caller's business (bound the HTTP body); memory use is linear in it.
//! Error messages carry the line number and a fixed reason only, never input text, so
//! that nothing scraped from the target ends up in logs by accident.

use std::borrow::Cow;
use std::collections::HashMap;

/// Most errors [`parse_lossy`] collects; further bad lines are still skipped, silently.
pub const MAX_LOSSY_ERRORS: usize = 100;

/// The type of a metric family, from its `# TYPE` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricType {
    /// `counter`: a monotonically increasing value.
    Counter,
    /// `gauge`: a value that can go up and down.
    Gauge,
    /// `histogram`: `_bucket{le=..}`, `_sum` and `_count` samples.
    Histogram,
    /// `summary`: `{quantile=..}`, `_sum` and `_count` samples.
    Summary,
    /// `untyped`, or no `# TYPE` line at all.
    Untyped,
}

impl MetricType {
    /// The keyword used for this type in a `# TYPE` line.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
            MetricType::Histogram => "histogram",
            MetricType::Summary => "summary",
            MetricType::Untyped => "untyped",
        }
    }

    /// Parses a `# TYPE` keyword, ignoring ASCII case (as Go's parser does).
    pub fn from_keyword(s: &str) -> Option<MetricType> {
        [
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
            MetricType::Summary,
            MetricType::Untyped,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(s))
    }
}

/// One sample line: a series and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample<'a> {
    /// Full sample name, e.g. `gravity_output_latency_bucket`.
    pub name: &'a str,
    /// Label pairs in input order; values are unescaped (`\\`, `\"`, `\n`).
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    /// The sample value (may be NaN or ±Inf).
    pub value: f64,
    /// Optional timestamp in milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    /// The exact input line, without its line terminator (`\n` or `\r\n`), for pass-through.
    pub raw: &'a str,
}

impl<'a> Sample<'a> {
    /// The (unescaped) value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The `le` label as a number (histogram buckets; `+Inf` for the last bucket).
    pub fn le(&self) -> Option<f64> {
        self.label("le").and_then(parse_f64)
    }

    /// The `quantile` label as a number (summary quantile samples).
    pub fn quantile(&self) -> Option<f64> {
        self.label("quantile").and_then(parse_f64)
    }
}

/// A metric family: its HELP and TYPE metadata and all its samples, in input order.
#[derive(Debug, Clone, PartialEq)]
pub struct Family<'a> {
    /// Family name (the base name for histograms and summaries).
    pub name: &'a str,
    /// HELP text exactly as written, i.e. still escaped (`\\`, `\n`); see [`Family::help_text`].
    /// `None` without a HELP line.
    pub help: Option<&'a str>,
    /// Type from the TYPE line; [`MetricType::Untyped`] without one.
    pub kind: MetricType,
    /// Samples in input order.
    pub samples: Vec<Sample<'a>>,
    /// The raw `# HELP` line, if any (without line terminator).
    pub help_raw: Option<&'a str>,
    /// The raw `# TYPE` line, if any (without line terminator).
    pub type_raw: Option<&'a str>,
}

impl<'a> Family<'a> {
    /// HELP text with its escapes (`\\`, `\n`) resolved; borrowed when there are none.
    pub fn help_text(&self) -> Option<Cow<'a, str>> {
        self.help.map(unescape_help)
    }

    fn new(name: &'a str) -> Self {
        Family {
            name,
            help: None,
            kind: MetricType::Untyped,
            samples: Vec::new(),
            help_raw: None,
            type_raw: None,
        }
    }
}

/// A parsed exposition: metric families in order of first appearance.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exposition<'a> {
    /// The families, in order of first appearance; names are unique.
    pub families: Vec<Family<'a>>,
}

impl<'a> Exposition<'a> {
    /// The family called `name` (the base name for histograms and summaries).
    pub fn family(&self, name: &str) -> Option<&Family<'a>> {
        self.families.iter().find(|f| f.name == name)
    }

    /// Number of series (sample lines) across all families.
    #[cfg(test)]
    pub fn series_count(&self) -> usize {
        self.families.iter().map(|f| f.samples.len()).sum()
    }
}

/// Why a line was rejected. Every variant carries the 1-based line number and a short,
/// fixed reason (never text from the input).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Metric name missing or not `[a-zA-Z_:][a-zA-Z0-9_:]*` (sample, HELP or TYPE line).
    #[error("line {line}: invalid metric name: {reason}")]
    InvalidMetricName {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// Label name not `[a-zA-Z_][a-zA-Z0-9_]*`, or the reserved `__name__`.
    #[error("line {line}: invalid label name: {reason}")]
    InvalidLabelName {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// Label value not quoted, unterminated, or with an escape other than `\\`, `\"`, `\n`.
    #[error("line {line}: invalid label value: {reason}")]
    InvalidLabelValue {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// The same label name twice in one sample.
    #[error("line {line}: duplicate label: {reason}")]
    DuplicateLabel {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// Malformed label set: missing `=`, `,` or `}`.
    #[error("line {line}: syntax error: {reason}")]
    Syntax {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// Sample value missing or not a float.
    #[error("line {line}: invalid sample value: {reason}")]
    InvalidValue {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// Timestamp not a 64-bit integer.
    #[error("line {line}: invalid timestamp: {reason}")]
    InvalidTimestamp {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// Text after the timestamp.
    #[error("line {line}: trailing data: {reason}")]
    TrailingData {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// Bad escape in HELP text, or a second HELP line for a family.
    #[error("line {line}: invalid HELP line: {reason}")]
    InvalidHelp {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// Missing or unknown type, a second TYPE line, or TYPE after the family's samples.
    #[error("line {line}: invalid TYPE line: {reason}")]
    InvalidType {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
    /// A sample that breaks its family's shape: a histogram sample without a suffix, a
    /// bucket without a numeric `le`, a summary quantile without a numeric `quantile`.
    #[error("line {line}: sample does not fit its family: {reason}")]
    FamilyMismatch {
        /// 1-based line number.
        line: usize,
        /// Short fixed description.
        reason: &'static str,
    },
}

impl ParseError {
    /// The 1-based line number of the offending line.
    pub fn line(&self) -> usize {
        self.parts().0
    }

    /// The short fixed reason.
    pub fn reason(&self) -> &'static str {
        self.parts().1
    }

    fn parts(&self) -> (usize, &'static str) {
        match *self {
            ParseError::InvalidMetricName { line, reason }
            | ParseError::InvalidLabelName { line, reason }
            | ParseError::InvalidLabelValue { line, reason }
            | ParseError::DuplicateLabel { line, reason }
            | ParseError::Syntax { line, reason }
            | ParseError::InvalidValue { line, reason }
            | ParseError::InvalidTimestamp { line, reason }
            | ParseError::TrailingData { line, reason }
            | ParseError::InvalidHelp { line, reason }
            | ParseError::InvalidType { line, reason }
            | ParseError::FamilyMismatch { line, reason } => (line, reason),
        }
    }
}

/// Parses a whole exposition; the first malformed line aborts with its error.
pub fn parse(input: &str) -> Result<Exposition<'_>, ParseError> {
    let mut b = Builder::new();
    for (lineno, line) in Lines::new(input) {
        b.line(line, lineno)?;
    }
    Ok(b.finish())
}

/// Parses a whole exposition, skipping malformed lines. Returns everything that parsed and
/// the errors of the first [`MAX_LOSSY_ERRORS`] skipped lines. A skipped line leaves no
/// trace in the result.
pub fn parse_lossy(input: &str) -> (Exposition<'_>, Vec<ParseError>) {
    let mut b = Builder::new();
    let mut errors = Vec::new();
    for (lineno, line) in Lines::new(input) {
        if let Err(e) = b.line(line, lineno) {
            if errors.len() < MAX_LOSSY_ERRORS {
                errors.push(e);
            }
        }
    }
    (b.finish(), errors)
}

/// Bounds on the samples [`parse_lossy_capped`] keeps: a hostile 1e6-series answer must not
/// become a million parsed samples in memory when only a few families are read and at most
/// the pass-through cap is passed on.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Families whose samples are needed (derived metrics): kept up to `wanted_per_family` each.
    pub wanted: fn(&str) -> bool,
    /// Cap per wanted family.
    pub wanted_per_family: usize,
    /// Cap on the samples of all other families together.
    pub others: usize,
}

/// [`parse_lossy`] that keeps at most what `keep` allows; returns also how many samples
/// were parsed and not kept. Every line is still checked.
pub fn parse_lossy_capped(input: &str, keep: Keep) -> (Exposition<'_>, Vec<ParseError>, usize) {
    let mut b = Builder::new();
    b.keep = Some(keep);
    let mut errors = Vec::new();
    for (lineno, line) in Lines::new(input) {
        if let Err(e) = b.line(line, lineno) {
            if errors.len() < MAX_LOSSY_ERRORS {
                errors.push(e);
            }
        }
    }
    let skipped = b.skipped;
    (b.finish(), errors, skipped)
}

// ---------------------------------------------------------------------------------------
// Line splitting
// ---------------------------------------------------------------------------------------

/// Iterator over `(1-based line number, line)`; lines lose their `\n` or `\r\n`.
struct Lines<'a> {
    s: &'a str,
    pos: usize,
    lineno: usize,
}

impl<'a> Lines<'a> {
    fn new(s: &'a str) -> Self {
        Lines {
            s,
            pos: 0,
            lineno: 0,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = (usize, &'a str);

    #[inline]
    fn next(&mut self) -> Option<(usize, &'a str)> {
        let bytes = self.s.as_bytes();
        if self.pos >= bytes.len() {
            return None;
        }
        let start = self.pos;
        let nl = find_newline(bytes, start);
        self.pos = nl + 1;
        self.lineno += 1;
        let mut end = nl;
        if end > start && bytes.get(end - 1) == Some(&b'\r') {
            end -= 1;
        }
        Some((self.lineno, sub(self.s, start, end)))
    }
}

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `x` that is zero. Bits above the lowest hit may be false
/// positives (borrow), but the lowest set bit always marks the first zero byte exactly.
#[inline(always)]
fn zero_bytes(x: u64) -> u64 {
    x.wrapping_sub(LO) & !x & HI
}

/// Index of the first byte at or after `from` that is `n1` or `n2`, or `b.len()`.
/// Scans eight bytes at a time (SWAR) with a byte-wise tail.
#[inline(always)]
fn find2(b: &[u8], from: usize, n1: u8, n2: u8) -> usize {
    let p1 = LO * u64::from(n1);
    let p2 = LO * u64::from(n2);
    let tail = b.get(from..).unwrap_or(&[]);
    let mut chunks = tail.chunks_exact(8);
    let mut off = from;
    for chunk in &mut chunks {
        if let Ok(arr) = <[u8; 8]>::try_from(chunk) {
            let w = u64::from_le_bytes(arr);
            let found = zero_bytes(w ^ p1) | zero_bytes(w ^ p2);
            if found != 0 {
                return off + (found.trailing_zeros() / 8) as usize;
            }
        }
        off += 8;
    }
    for &c in chunks.remainder() {
        if c == n1 || c == n2 {
            return off;
        }
        off += 1;
    }
    b.len()
}

/// Index of the first `\n` at or after `from`, or `b.len()`.
#[inline]
fn find_newline(b: &[u8], from: usize) -> usize {
    find2(b, from, b'\n', b'\n')
}

// ---------------------------------------------------------------------------------------
// Byte classes and small helpers
// ---------------------------------------------------------------------------------------

const METRIC_START: u8 = 1; // [a-zA-Z_:]
const METRIC_CHAR: u8 = 2; // [a-zA-Z0-9_:]
const LABEL_START: u8 = 4; // [a-zA-Z_]
const LABEL_CHAR: u8 = 8; // [a-zA-Z0-9_]

static CLASS: [u8; 256] = build_classes();

const fn build_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let alpha = c.is_ascii_alphabetic() || c == b'_';
        let digit = c.is_ascii_digit();
        let mut v = 0;
        if alpha || c == b':' {
            v |= METRIC_START | METRIC_CHAR;
        }
        if digit {
            v |= METRIC_CHAR | LABEL_CHAR;
        }
        if alpha {
            v |= LABEL_START | LABEL_CHAR;
        }
        t[i] = v;
        i += 1;
    }
    t
}

#[inline]
fn has_class(c: u8, class: u8) -> bool {
    CLASS[c as usize] & class != 0
}

#[inline]
fn is_blank(c: u8) -> bool {
    c == b' ' || c == b'\t'
}

/// Sub-slice between byte offsets that the caller found at ASCII bytes or at the ends of
/// `s`, which are always char boundaries. Never panics: yields "" if that ever fails to
/// hold (and trips a debug assertion in tests).
#[inline]
fn sub(s: &str, a: usize, b: usize) -> &str {
    debug_assert!(
        s.get(a..b).is_some(),
        "sub({a}, {b}) not on char boundaries"
    );
    s.get(a..b).unwrap_or("")
}

/// `b[at..]` starts with `prefix`.
#[inline(always)]
fn starts_with_at(b: &[u8], at: usize, prefix: &[u8]) -> bool {
    b.get(at..)
        .and_then(|r| r.get(..prefix.len()))
        .is_some_and(|head| head == prefix)
}

#[inline]
fn skip_blanks(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(&c) if is_blank(c)) {
        i += 1;
    }
    i
}

/// Advances past a run of non-blank bytes.
#[inline]
fn skip_token(b: &[u8], i: usize) -> usize {
    find2(b, i, b' ', b'\t')
}

#[inline]
fn skip_class(b: &[u8], mut i: usize, class: u8) -> usize {
    while matches!(b.get(i), Some(&c) if has_class(c, class)) {
        i += 1;
    }
    i
}

/// Parses a sample value the way Go's `strconv.ParseFloat` accepts client_golang output:
/// `1.534e+06`, `-1`, `0.0263671875`, `NaN`, `+Inf`, `-Inf`, `Inf` (and `inf`, `nan`, ...).
#[inline]
fn parse_f64(s: &str) -> Option<f64> {
    let b = s.as_bytes();
    // Fast path: short plain integers are exact in f64 (< 2^53).
    if !b.is_empty() && b.len() <= 15 {
        let mut v: u64 = 0;
        let mut all_digits = true;
        for &c in b {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                all_digits = false;
                break;
            }
            v = v * 10 + u64::from(d);
        }
        if all_digits {
            return Some(v as f64);
        }
    }
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust's float grammar covers Go's decimal forms, including case-insensitive
        // inf/infinity/nan; it rejects Go's hex floats, which client_golang never writes.
        _ => s.parse::<f64>().ok(),
    }
}

/// Resolves `\\` and `\n` in HELP text. Unknown escapes (rejected while parsing) and a
/// lone trailing backslash are kept verbatim.
fn unescape_help(s: &str) -> Cow<'_, str> {
    if !s.as_bytes().contains(&b'\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// True if HELP text only uses the escapes `\\` and `\n`.
fn help_escapes_valid(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'\\' {
            match b.get(i + 1) {
                Some(b'\\') | Some(b'n') => i += 2,
                _ => return false,
            }
        } else {
            i += 1;
        }
    }
    true
}

// ---------------------------------------------------------------------------------------
// Sample and label parsing
// ---------------------------------------------------------------------------------------

type Label<'a> = (&'a str, Cow<'a, str>);

/// A sample line's parts, before it is attached to a family.
struct RawSample<'a> {
    name: &'a str,
    labels: Vec<Label<'a>>,
    /// The name starts with the hinted (current family's) name.
    hinted: bool,
    value: f64,
    timestamp_ms: Option<i64>,
}

/// Parses `name [{labels}] value [timestamp]` starting at `start` (after leading blanks).
/// `name_hint` and `prev_labels` are the name and labels of the previous sample's family
/// and sample: the common case is that this line repeats them, which is checked first.
#[inline]
fn parse_sample_line<'a>(
    raw: &'a str,
    start: usize,
    line: usize,
    name_hint: &str,
    prev_labels: &[Label<'_>],
) -> Result<RawSample<'a>, ParseError> {
    let b = raw.as_bytes();
    let mut i = start;
    // Most lines start with the name of the previous line's family, a valid metric name:
    // compare those bytes at once instead of classifying them one by one.
    let hinted = !name_hint.is_empty() && starts_with_at(b, start, name_hint.as_bytes());
    if hinted {
        i += name_hint.len();
    } else {
        match b.get(i) {
            Some(&c) if has_class(c, METRIC_START) => i += 1,
            _ => {
                return Err(ParseError::InvalidMetricName {
                    line,
                    reason: "must start with a letter, '_' or ':'",
                })
            }
        }
    }
    i = skip_class(b, i, METRIC_CHAR);
    let name = sub(raw, start, i);
    match b.get(i) {
        None => {
            return Err(ParseError::InvalidValue {
                line,
                reason: "missing value",
            })
        }
        Some(&c) if is_blank(c) || c == b'{' => {}
        Some(_) => {
            return Err(ParseError::InvalidMetricName {
                line,
                reason: "invalid character in metric name",
            })
        }
    }
    i = skip_blanks(b, i);
    let mut labels = Vec::new();
    if b.get(i) == Some(&b'{') {
        // Usually exactly as many labels as the previous sample: one exact allocation.
        labels.reserve_exact(prev_labels.len());
        i = parse_labels(raw, i + 1, line, prev_labels, &mut labels)?;
        i = skip_blanks(b, i);
    }

    let vs = i;
    i = skip_token(b, i);
    if i == vs {
        return Err(ParseError::InvalidValue {
            line,
            reason: "missing value",
        });
    }
    let value = parse_f64(sub(raw, vs, i)).ok_or(ParseError::InvalidValue {
        line,
        reason: "not a number",
    })?;

    i = skip_blanks(b, i);
    let timestamp_ms = if i < b.len() {
        let ts = i;
        i = skip_token(b, i);
        let t = sub(raw, ts, i)
            .parse::<i64>()
            .map_err(|_| ParseError::InvalidTimestamp {
                line,
                reason: "not a 64-bit integer",
            })?;
        if skip_blanks(b, i) < b.len() {
            return Err(ParseError::TrailingData {
                line,
                reason: "unexpected text after timestamp",
            });
        }
        Some(t)
    } else {
        None
    };
    Ok(RawSample {
        name,
        labels,
        hinted,
        value,
        timestamp_ms,
    })
}

const UNTERMINATED_SET: &str = "unterminated label set";

/// Parses label pairs from just after `{` up to and including `}`; returns the offset
/// after `}`. `prev` holds the labels of the family's previous sample: client_golang
/// repeats the same names in the same order, which is tried first.
#[inline]
fn parse_labels<'a>(
    raw: &'a str,
    mut i: usize,
    line: usize,
    prev: &[Label<'_>],
    out: &mut Vec<Label<'a>>,
) -> Result<usize, ParseError> {
    let b = raw.as_bytes();
    // True while every label name so far equals the previous sample's at the same index.
    let mut same_as_prev = true;
    loop {
        // Fast path: the previous sample's name at this index, directly followed by `="`.
        let hinted = prev.get(out.len()).and_then(|(pn, _)| {
            let end = i + pn.len();
            let hit = !pn.is_empty()
                && starts_with_at(b, i, pn.as_bytes())
                && b.get(end) == Some(&b'=')
                && b.get(end + 1) == Some(&b'"');
            hit.then(|| (sub(raw, i, end), end + 2))
        });
        let (lname, value_start) = match hinted {
            Some(found) => found,
            None => {
                same_as_prev = false;
                i = skip_blanks(b, i);
                if b.get(i) == Some(&b'}') {
                    return Ok(i + 1);
                }
                parse_label_name(raw, i, line)?
            }
        };
        // A previous sample with the same names so far passed these checks already.
        if !same_as_prev {
            if lname == "__name__" {
                return Err(ParseError::InvalidLabelName {
                    line,
                    reason: "label name __name__ is reserved",
                });
            }
            if out.iter().any(|(n, _)| *n == lname) {
                return Err(ParseError::DuplicateLabel {
                    line,
                    reason: "label name repeated in one sample",
                });
            }
        }
        let (value, next) = parse_label_value(raw, value_start, line)?;
        out.push((lname, value));
        i = next;
        if b.get(i) != Some(&b',') && b.get(i) != Some(&b'}') {
            i = skip_blanks(b, i);
        }
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => return Ok(i + 1),
            None => {
                return Err(ParseError::Syntax {
                    line,
                    reason: UNTERMINATED_SET,
                })
            }
            Some(_) => {
                return Err(ParseError::Syntax {
                    line,
                    reason: "expected ',' or '}' after label value",
                })
            }
        }
    }
}

/// Parses `name = "` from `ns` (at a non-blank byte); returns the name and the offset
/// just after the opening quote of the value.
fn parse_label_name(raw: &str, ns: usize, line: usize) -> Result<(&str, usize), ParseError> {
    let b = raw.as_bytes();
    match b.get(ns) {
        Some(&c) if has_class(c, LABEL_START) => {}
        None => {
            return Err(ParseError::Syntax {
                line,
                reason: UNTERMINATED_SET,
            })
        }
        Some(_) => {
            return Err(ParseError::InvalidLabelName {
                line,
                reason: "must start with a letter or '_'",
            })
        }
    }
    let mut i = skip_class(b, ns + 1, LABEL_CHAR);
    let lname = sub(raw, ns, i);
    match b.get(i) {
        Some(&c) if c == b'=' || is_blank(c) => {}
        None => {
            return Err(ParseError::Syntax {
                line,
                reason: UNTERMINATED_SET,
            })
        }
        Some(b'}') | Some(b',') | Some(b'"') => {
            return Err(ParseError::Syntax {
                line,
                reason: "expected '=' after label name",
            })
        }
        Some(_) => {
            return Err(ParseError::InvalidLabelName {
                line,
                reason: "invalid character in label name",
            })
        }
    }
    i = skip_blanks(b, i);
    if b.get(i) != Some(&b'=') {
        return Err(ParseError::Syntax {
            line,
            reason: "expected '=' after label name",
        });
    }
    i = skip_blanks(b, i + 1);
    if b.get(i) != Some(&b'"') {
        return Err(ParseError::InvalidLabelValue {
            line,
            reason: "expected '\"' at start of label value",
        });
    }
    Ok((lname, i + 1))
}

/// Parses a label value from just after its opening quote; returns the value and the
/// offset after the closing quote.
#[inline]
fn parse_label_value(
    raw: &str,
    start: usize,
    line: usize,
) -> Result<(Cow<'_, str>, usize), ParseError> {
    let unterminated = || ParseError::InvalidLabelValue {
        line,
        reason: "unterminated label value",
    };
    let b = raw.as_bytes();
    // Fast path: no escapes.
    let mut i = find2(b, start, b'"', b'\\');
    match b.get(i) {
        Some(b'"') => return Ok((Cow::Borrowed(sub(raw, start, i)), i + 1)),
        Some(_) => {} // a backslash
        None => return Err(unterminated()),
    }
    // Slow path: copy, resolving escapes.
    let mut out = String::with_capacity(i - start + 16);
    out.push_str(sub(raw, start, i));
    loop {
        match b.get(i) {
            Some(b'"') => return Ok((Cow::Owned(out), i + 1)),
            Some(b'\\') => {
                match b.get(i + 1) {
                    Some(b'\\') => out.push('\\'),
                    Some(b'"') => out.push('"'),
                    Some(b'n') => out.push('\n'),
                    None => return Err(unterminated()),
                    Some(_) => {
                        return Err(ParseError::InvalidLabelValue {
                            line,
                            reason: "invalid escape sequence",
                        })
                    }
                }
                i += 2;
            }
            Some(_) => {
                let run = i;
                i = find2(b, i, b'"', b'\\');
                out.push_str(sub(raw, run, i));
            }
            None => return Err(unterminated()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Grouping samples into families
// ---------------------------------------------------------------------------------------

/// What a sample is within its family.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Plain,
    Bucket,
    Quantile,
    SumOrCount,
}

enum Fit {
    Yes(Role),
    No,
    /// The name is the family's, but the family cannot have such a sample.
    Misfit,
}

#[inline]
fn fit(kind: MetricType, family: &str, sample: &str) -> Fit {
    match sample.strip_prefix(family) {
        Some(rest) => fit_rest(kind, rest),
        None => Fit::No,
    }
}

/// Like [`fit`], given what follows the family name in the sample name.
#[inline]
fn fit_rest(kind: MetricType, rest: &str) -> Fit {
    match (kind, rest) {
        (MetricType::Histogram, "") => Fit::Misfit,
        (MetricType::Summary, "") => Fit::Yes(Role::Quantile),
        (_, "") => Fit::Yes(Role::Plain),
        (MetricType::Histogram, "_bucket") => Fit::Yes(Role::Bucket),
        (MetricType::Histogram | MetricType::Summary, "_sum" | "_count") => {
            Fit::Yes(Role::SumOrCount)
        }
        _ => Fit::No,
    }
}

fn require_numeric_label(
    labels: &[Label<'_>],
    name: &str,
    line: usize,
    reason: &'static str,
) -> Result<(), ParseError> {
    // client_golang puts le / quantile last: search from the end.
    let ok = labels
        .iter()
        .rev()
        .find(|(n, _)| *n == name)
        .is_some_and(|(_, v)| parse_f64(v).is_some());
    if ok {
        Ok(())
    } else {
        Err(ParseError::FamilyMismatch { line, reason })
    }
}

struct Builder<'a> {
    families: Vec<Family<'a>>,
    index: HashMap<&'a str, usize>,
    current: Option<usize>,
    keep: Option<Keep>,
    others_kept: usize,
    skipped: usize,
}

impl<'a> Builder<'a> {
    fn new() -> Self {
        Builder {
            families: Vec::new(),
            index: HashMap::new(),
            current: None,
            keep: None,
            others_kept: 0,
            skipped: 0,
        }
    }

    fn finish(self) -> Exposition<'a> {
        Exposition {
            families: self.families,
        }
    }

    /// Handles one line. On error nothing has been changed.
    #[inline]
    fn line(&mut self, raw: &'a str, line: usize) -> Result<(), ParseError> {
        let b = raw.as_bytes();
        let start = skip_blanks(b, 0);
        match b.get(start) {
            None => Ok(()),
            Some(b'#') => self.comment(raw, start + 1, line),
            Some(_) => self.sample(raw, start, line),
        }
    }

    fn sample(&mut self, raw: &'a str, start: usize, line: usize) -> Result<(), ParseError> {
        let current = self.current.and_then(|c| self.families.get(c));
        let hint = current.map_or("", |f| f.name);
        let prev_labels = current
            .and_then(|f| f.samples.last())
            .map_or(&[][..], |s| &s.labels[..]);
        let s = parse_sample_line(raw, start, line, hint, prev_labels)?;
        let (target, role) = self.resolve(s.name, s.hinted, line)?;
        match role {
            Role::Bucket => {
                require_numeric_label(&s.labels, "le", line, "bucket without numeric le")?
            }
            Role::Quantile => require_numeric_label(
                &s.labels,
                "quantile",
                line,
                "quantile without numeric quantile",
            )?,
            Role::Plain | Role::SumOrCount => {}
        }
        let idx = match target {
            Some(idx) => idx,
            None => self.new_family(s.name),
        };
        self.current = Some(idx);
        let sample = Sample {
            name: s.name,
            labels: s.labels,
            value: s.value,
            timestamp_ms: s.timestamp_ms,
            raw,
        };
        if let Some(f) = self.families.get_mut(idx) {
            if let Some(k) = self.keep {
                let allowed = if (k.wanted)(f.name) {
                    f.samples.len() < k.wanted_per_family
                } else if self.others_kept < k.others {
                    self.others_kept = self.others_kept.saturating_add(1);
                    true
                } else {
                    false
                };
                if !allowed {
                    self.skipped = self.skipped.saturating_add(1);
                    return Ok(());
                }
            }
            f.samples.push(sample);
        }
        Ok(())
    }

    /// Finds the family a sample belongs to: `Some(index)` or `None` for a new untyped one.
    #[inline]
    fn resolve(
        &self,
        name: &str,
        hinted: bool,
        line: usize,
    ) -> Result<(Option<usize>, Role), ParseError> {
        const MISFIT: &str = "histogram sample without _bucket, _sum or _count suffix";
        // Fast path: the family of the previous line.
        if let Some(f) = self
            .current
            .and_then(|c| self.families.get(c).map(|f| (c, f)))
        {
            let fits = if hinted {
                // `name` starts with the family name already (checked while scanning).
                fit_rest(f.1.kind, name.get(f.1.name.len()..).unwrap_or(""))
            } else {
                fit(f.1.kind, f.1.name, name)
            };
            match fits {
                Fit::Yes(role) => return Ok((Some(f.0), role)),
                Fit::Misfit => {
                    return Err(ParseError::FamilyMismatch {
                        line,
                        reason: MISFIT,
                    })
                }
                Fit::No => {}
            }
        }
        // A family seen before, by exact name, then by histogram/summary base name.
        let candidates = [
            Some(name),
            name.strip_suffix("_bucket"),
            name.strip_suffix("_sum"),
            name.strip_suffix("_count"),
        ];
        // A family of the exact name that has only a HELP line yields to a histogram or
        // summary the sample fits (else the pass-through, which writes families whole, would
        // move the sample before that family's TYPE line).
        let mut help_only = None;
        for base in candidates.into_iter().flatten() {
            let Some(&idx) = self.index.get(base) else {
                continue;
            };
            let Some(f) = self.families.get(idx) else {
                continue;
            };
            if base.len() == name.len()
                && f.kind == MetricType::Untyped
                && f.type_raw.is_none()
                && f.samples.is_empty()
            {
                help_only = Some(idx);
                continue;
            }
            match fit(f.kind, f.name, name) {
                Fit::Yes(role) => return Ok((Some(idx), role)),
                Fit::Misfit => {
                    return Err(ParseError::FamilyMismatch {
                        line,
                        reason: MISFIT,
                    })
                }
                Fit::No => {}
            }
        }
        Ok((help_only, Role::Plain))
    }

    fn new_family(&mut self, name: &'a str) -> usize {
        let idx = self.families.len();
        self.families.push(Family::new(name));
        self.index.insert(name, idx);
        idx
    }

    /// The existing family called exactly `name`.
    fn lookup(&self, name: &str) -> Option<usize> {
        if let Some(c) = self.current {
            if self.families.get(c).is_some_and(|f| f.name == name) {
                return Some(c);
            }
        }
        self.index.get(name).copied()
    }

    /// Handles a `#` line; `i` is the offset just after `#`.
    fn comment(&mut self, raw: &'a str, i: usize, line: usize) -> Result<(), ParseError> {
        let b = raw.as_bytes();
        let ks = skip_blanks(b, i);
        let ke = skip_token(b, ks);
        let is_help = match sub(raw, ks, ke) {
            "HELP" => true,
            "TYPE" => false,
            _ => return Ok(()), // plain comment
        };
        let ns = skip_blanks(b, ke);
        if ns >= b.len() {
            return Ok(()); // "# HELP" alone: a comment, as in Go's parser
        }
        let bad_name = ParseError::InvalidMetricName {
            line,
            reason: if is_help {
                "bad metric name in HELP line"
            } else {
                "bad metric name in TYPE line"
            },
        };
        match b.get(ns) {
            Some(&c) if has_class(c, METRIC_START) => {}
            _ => return Err(bad_name),
        }
        let ne = skip_class(b, ns + 1, METRIC_CHAR);
        if matches!(b.get(ne), Some(&c) if !is_blank(c)) {
            return Err(bad_name);
        }
        let name = sub(raw, ns, ne);
        let rest = sub(raw, skip_blanks(b, ne), b.len());
        if is_help {
            self.help(name, rest, raw, line)
        } else {
            self.type_line(name, rest, raw, line)
        }
    }

    fn help(
        &mut self,
        name: &'a str,
        text: &'a str,
        raw: &'a str,
        line: usize,
    ) -> Result<(), ParseError> {
        if !help_escapes_valid(text) {
            return Err(ParseError::InvalidHelp {
                line,
                reason: "invalid escape sequence (only \\\\ and \\n)",
            });
        }
        let idx = match self.lookup(name) {
            Some(idx) => {
                if self.families.get(idx).is_some_and(|f| f.help_raw.is_some()) {
                    return Err(ParseError::InvalidHelp {
                        line,
                        reason: "second HELP line for the same family",
                    });
                }
                idx
            }
            None => self.new_family(name),
        };
        if let Some(f) = self.families.get_mut(idx) {
            f.help = Some(text);
            f.help_raw = Some(raw);
        }
        self.current = Some(idx);
        Ok(())
    }

    fn type_line(
        &mut self,
        name: &'a str,
        rest: &'a str,
        raw: &'a str,
        line: usize,
    ) -> Result<(), ParseError> {
        let keyword = rest.trim_end_matches([' ', '\t']);
        if keyword.is_empty() {
            return Err(ParseError::InvalidType {
                line,
                reason: "missing type",
            });
        }
        let kind = MetricType::from_keyword(keyword).ok_or(ParseError::InvalidType {
            line,
            reason: "unknown type (counter, gauge, histogram, summary, untyped)",
        })?;
        // Samples of the suffixed names, read before this line, went to untyped families of
        // their own; as the family's samples they would have to follow this line.
        let suffixes: &[&str] = match kind {
            MetricType::Histogram => &["_bucket", "_sum", "_count"],
            MetricType::Summary => &["_sum", "_count"],
            _ => &[],
        };
        for suffix in suffixes {
            let full = format!("{name}{suffix}");
            if self
                .lookup(&full)
                .and_then(|i| self.families.get(i))
                .is_some_and(|f| !f.samples.is_empty())
            {
                return Err(ParseError::InvalidType {
                    line,
                    reason: "TYPE line after the family's samples",
                });
            }
        }
        let idx = match self.lookup(name) {
            Some(idx) => {
                let f = self.families.get(idx);
                if f.is_some_and(|f| f.type_raw.is_some()) {
                    return Err(ParseError::InvalidType {
                        line,
                        reason: "second TYPE line for the same family",
                    });
                }
                if f.is_some_and(|f| !f.samples.is_empty()) {
                    return Err(ParseError::InvalidType {
                        line,
                        reason: "TYPE line after the family's samples",
                    });
                }
                idx
            }
            None => self.new_family(name),
        };
        if let Some(f) = self.families.get_mut(idx) {
            f.kind = kind;
            f.type_raw = Some(raw);
        }
        self.current = Some(idx);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Streaming pre-filter
// ---------------------------------------------------------------------------------------

/// Longest line a [`Sieve`] reads; a longer one is dropped as it streams by (counted).
pub const SIEVE_MAX_LINE: usize = 64 * 1024;

/// Most wanted families a [`Sieve`] counts separately; the samples of more are treated as
/// the others' (so a hostile answer cannot grow the table).
pub const SIEVE_MAX_WANTED_FAMILIES: usize = 1024;

/// What a [`Sieve`] kept of an answer, and what it left out.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sieved {
    /// The lines kept, in the order they came, each ending in `\n`.
    pub text: String,
    /// Sample lines left out by the caps of [`Keep`].
    pub not_kept: usize,
    /// Lines left out for their length: over [`SIEVE_MAX_LINE`], or over the line limit for
    /// families that are not wanted.
    pub long_lines: usize,
    /// Sample lines left out because the kept text reached its byte budget.
    pub over_bytes: usize,
    /// A line was not UTF-8: the answer as a whole is unusable.
    pub not_utf8: bool,
}

/// A line-by-line pre-filter over an exposition that arrives in pieces: it keeps what
/// [`parse_lossy_capped`] with the same [`Keep`] keeps (and the HELP and TYPE lines of those
/// families), within a byte budget, so that a 1e6-series or 30 MB answer is never held
/// whole; the kept text is then parsed as usual. It looks at names only: a line it keeps
/// may still be malformed (the parser skips it then), a malformed sample line counts
/// against the caps like a good one.
#[derive(Debug)]
pub struct Sieve {
    keep: Keep,
    other_line_max: usize,
    budget: usize,
    out: Sieved,
    /// The start of a line whose end has not arrived yet.
    carry: Vec<u8>,
    /// Inside a line over [`SIEVE_MAX_LINE`]: bytes are dropped up to its end.
    skipping: bool,
    wanted_seen: HashMap<String, usize>,
    others_kept: usize,
}

impl Sieve {
    /// A sieve keeping what `keep` allows; lines of families that are not wanted are kept
    /// only up to `other_line_max` bytes, and at most `budget` bytes are kept in all.
    pub fn new(keep: Keep, other_line_max: usize, budget: usize) -> Sieve {
        Sieve {
            keep,
            other_line_max,
            budget,
            out: Sieved::default(),
            carry: Vec::new(),
            skipping: false,
            wanted_seen: HashMap::new(),
            others_kept: 0,
        }
    }

    /// Takes the next piece of the answer (cut anywhere, even inside a character).
    pub fn push(&mut self, piece: &[u8]) {
        let mut from = 0usize;
        while from < piece.len() {
            let nl = find_newline(piece, from);
            let part = piece.get(from..nl).unwrap_or_default();
            if nl >= piece.len() {
                // no line end in the rest: keep it for the next piece
                if !self.skipping {
                    if self.carry.len().saturating_add(part.len()) > SIEVE_MAX_LINE {
                        self.carry.clear();
                        self.skipping = true;
                    } else {
                        self.carry.extend_from_slice(part);
                    }
                }
                return;
            }
            from = nl.saturating_add(1);
            if self.skipping {
                self.skipping = false;
                self.out.long_lines = self.out.long_lines.saturating_add(1);
            } else if self.carry.is_empty() {
                self.line(part);
            } else if self.carry.len().saturating_add(part.len()) > SIEVE_MAX_LINE {
                self.carry.clear();
                self.out.long_lines = self.out.long_lines.saturating_add(1);
            } else {
                let mut whole = std::mem::take(&mut self.carry);
                whole.extend_from_slice(part);
                self.line(&whole);
                whole.clear();
                self.carry = whole;
            }
        }
    }

    /// The end of the answer: what was kept and what was left out.
    pub fn finish(mut self) -> Sieved {
        if self.skipping {
            self.out.long_lines = self.out.long_lines.saturating_add(1);
        } else if !self.carry.is_empty() {
            let last = std::mem::take(&mut self.carry);
            self.line(&last);
        }
        self.out
    }

    /// The family a sample named `name` is counted under when it is wanted.
    fn wanted_family<'n>(&self, name: &'n str) -> Option<&'n str> {
        if (self.keep.wanted)(name) {
            return Some(name);
        }
        ["_bucket", "_sum", "_count"]
            .into_iter()
            .filter_map(|s| name.strip_suffix(s))
            .find(|base| (self.keep.wanted)(base))
    }

    /// Counts a kept sample of wanted family `family`; `false` when its cap is reached (or
    /// the family table is full: the sample is then one of the others).
    fn take_wanted(&mut self, family: &str) -> Option<bool> {
        if let Some(n) = self.wanted_seen.get_mut(family) {
            if *n >= self.keep.wanted_per_family {
                return Some(false);
            }
            *n = n.saturating_add(1);
            return Some(true);
        }
        if self.wanted_seen.len() >= SIEVE_MAX_WANTED_FAMILIES {
            return None;
        }
        if self.keep.wanted_per_family == 0 {
            return Some(false);
        }
        self.wanted_seen.insert(family.to_string(), 1);
        Some(true)
    }

    fn fits(&self, line: &str) -> bool {
        self.out
            .text
            .len()
            .saturating_add(line.len())
            .saturating_add(1)
            <= self.budget
    }

    fn keep_line(&mut self, line: &str) {
        self.out.text.push_str(line);
        self.out.text.push('\n');
    }

    fn line(&mut self, raw: &[u8]) {
        if raw.len() > SIEVE_MAX_LINE {
            self.out.long_lines = self.out.long_lines.saturating_add(1);
            return;
        }
        let Ok(line) = std::str::from_utf8(raw) else {
            self.out.not_utf8 = true;
            return;
        };
        let t = line.trim_start_matches([' ', '\t']);
        if t.is_empty() || t == "\r" {
            return;
        }
        if let Some(comment) = t.strip_prefix('#') {
            // HELP and TYPE name a family; other comments mean nothing to the parser
            let mut words = comment.split_ascii_whitespace();
            let (Some("HELP" | "TYPE"), Some(name)) = (words.next(), words.next()) else {
                return;
            };
            let wanted = self.wanted_family(name).is_some();
            if !wanted && line.len() > self.other_line_max {
                self.out.long_lines = self.out.long_lines.saturating_add(1);
            } else if (wanted || self.others_kept < self.keep.others) && self.fits(line) {
                self.keep_line(line);
            }
            return;
        }
        let end = t.find(['{', ' ', '\t']).unwrap_or(t.len());
        let name = t.get(..end).unwrap_or_default();
        let wanted = match self.wanted_family(name) {
            Some(family) => self.take_wanted(family),
            None => None,
        };
        let take = match wanted {
            Some(taken) => taken,
            None => {
                if line.len() > self.other_line_max {
                    self.out.long_lines = self.out.long_lines.saturating_add(1);
                    return;
                }
                let room = self.others_kept < self.keep.others;
                if room {
                    self.others_kept = self.others_kept.saturating_add(1);
                }
                room
            }
        };
        if !take {
            self.out.not_kept = self.out.not_kept.saturating_add(1);
        } else if !self.fits(line) {
            self.out.over_bytes = self.out.over_bytes.saturating_add(1);
        } else {
            self.keep_line(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const METRICS: &str = include_str!("../tests/fixtures/metrics.prom");
    const METRICS_40: &str = include_str!("../tests/fixtures/metrics-40-tables.prom");
    const METRICS_10K: &str = include_str!("../tests/fixtures/metrics-10k.prom");

    fn ok(input: &str) -> Exposition<'_> {
        match parse(input) {
            Ok(e) => e,
            Err(e) => panic!("unexpected parse error: {e}"),
        }
    }

    fn err(input: &str) -> ParseError {
        match parse(input) {
            Ok(e) => panic!("expected an error, parsed {} series", e.series_count()),
            Err(e) => e,
        }
    }

    fn fam<'e, 'a>(e: &'e Exposition<'a>, name: &str) -> &'e Family<'a> {
        e.family(name)
            .unwrap_or_else(|| panic!("family {name} missing"))
    }

    /// The one sample of `f` whose labels include all of `want`.
    fn find<'f, 'a>(f: &'f Family<'a>, name: &str, want: &[(&str, &str)]) -> &'f Sample<'a> {
        let mut hits = f
            .samples
            .iter()
            .filter(|s| s.name == name && want.iter().all(|(k, v)| s.label(k) == Some(*v)));
        let hit = hits.next().expect("no matching sample");
        assert!(hits.next().is_none(), "more than one matching sample");
        hit
    }

    /// Independent, naive reading of a fixture sample line (fixtures have no escapes,
    /// commas or spaces inside label values).
    fn naive(line: &str) -> (&str, Vec<(&str, &str)>, f64) {
        let (series, value) = line.rsplit_once(' ').expect("no value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().expect("bad value"),
        };
        match series.split_once('{') {
            None => (series, vec![], value),
            Some((name, rest)) => {
                let inner = rest.strip_suffix('}').expect("no }");
                let labels = inner
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("no =");
                        (k, v.trim_matches('"'))
                    })
                    .collect();
                (name, labels, value)
            }
        }
    }

    /// Checks every HELP, TYPE and sample line of a client_golang fixture against an
    /// independent naive reading, plus histogram invariants.
    fn check_fixture_exhaustively(text: &str) -> Exposition<'_> {
        let e = ok(text);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .collect();
        let samples: Vec<&Sample> = e.families.iter().flat_map(|f| &f.samples).collect();
        assert_eq!(e.series_count(), lines.len());
        assert_eq!(samples.len(), lines.len());
        for (s, l) in samples.iter().zip(&lines) {
            assert_eq!(s.raw, *l);
            let (name, labels, value) = naive(l);
            assert_eq!(s.name, name, "{l}");
            assert_eq!(s.value, value, "{l}");
            assert_eq!(s.timestamp_ms, None);
            assert_eq!(s.labels.len(), labels.len(), "{l}");
            for ((n, v), (want_n, want_v)) in s.labels.iter().zip(&labels) {
                assert_eq!(n, want_n);
                assert_eq!(v, want_v);
                assert!(matches!(v, Cow::Borrowed(_)), "needless copy in {l}");
            }
        }
        let mut types = 0;
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE");
                let f = fam(&e, name);
                assert_eq!(f.kind.as_str(), kind);
                assert_eq!(f.type_raw, Some(l));
                types += 1;
            } else if let Some(rest) = l.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP");
                let f = fam(&e, name);
                assert_eq!(f.help, Some(help));
                assert_eq!(f.help_raw, Some(l));
            }
        }
        assert_eq!(e.families.len(), types);
        let mut names = HashSet::new();
        for f in &e.families {
            assert!(names.insert(f.name), "family {} twice", f.name);
            assert!(!f.samples.is_empty());
            for s in &f.samples {
                let rest = s
                    .name
                    .strip_prefix(f.name)
                    .expect("sample outside its family");
                let allowed: &[&str] = match f.kind {
                    MetricType::Histogram => &["_bucket", "_sum", "_count"],
                    MetricType::Summary => &["", "_sum", "_count"],
                    _ => &[""],
                };
                assert!(allowed.contains(&rest), "{} in {}", s.name, f.name);
            }
        }
        // Histograms: per series, le strictly increasing up to +Inf, cumulative counts
        // non-decreasing, and _count equal to the +Inf bucket.
        for f in e
            .families
            .iter()
            .filter(|f| f.kind == MetricType::Histogram)
        {
            let mut prev: Option<(f64, f64)> = None;
            let mut inf_buckets = Vec::new();
            for s in f.samples.iter().filter(|s| s.name.ends_with("_bucket")) {
                let le = s.le().expect("le");
                if let Some((ple, pv)) = prev {
                    assert!(le > ple, "{}: le not ascending", s.raw);
                    assert!(s.value >= pv, "{}: bucket count decreasing", s.raw);
                }
                assert_eq!(s.labels.last().map(|l| l.0), Some("le"));
                prev = if le == f64::INFINITY {
                    inf_buckets.push(s);
                    None
                } else {
                    Some((le, s.value))
                };
            }
            assert!(prev.is_none(), "{}: last bucket is not +Inf", f.name);
            let counts: Vec<&Sample> = f
                .samples
                .iter()
                .filter(|s| s.name.ends_with("_count"))
                .collect();
            assert_eq!(counts.len(), inf_buckets.len());
            for (c, b) in counts.iter().zip(&inf_buckets) {
                assert_eq!(c.value, b.value, "{}", c.raw);
                assert_eq!(&b.labels[..b.labels.len() - 1], &c.labels[..]);
            }
        }
        let (lossy, errors) = parse_lossy(text);
        assert!(errors.is_empty());
        assert_eq!(lossy, e);
        e
    }

    #[test]
    fn metrics_fixture_every_line() {
        let e = check_fixture_exhaustively(METRICS);
        assert_eq!(e.families.len(), 35);
        assert_eq!(e.series_count(), 263);
        assert_eq!(e.families[0].name, "go_gc_duration_seconds");
        assert_eq!(
            e.families.last().map(|f| f.name),
            Some("promhttp_metric_handler_requests_total")
        );
    }

    #[test]
    fn metrics_fixture_spot_values() {
        let e = ok(METRICS);

        let input = fam(&e, "gravity_input_counter");
        assert_eq!(input.kind, MetricType::Counter);
        assert_eq!(
            input.help,
            Some("Number of message input received(generated)")
        );
        assert_eq!(input.samples.len(), 8);
        let users = find(
            input,
            "gravity_input_counter",
            &[("db", "test_db"), ("table", "users"), ("subtype", "delete")],
        );
        assert_eq!(users.value, 1_534_000.0);
        let names: Vec<&str> = users.labels.iter().map(|l| l.0).collect();
        assert_eq!(names, ["db", "pipeline", "subtype", "table", "type"]);
        assert_eq!(users.label("pipeline"), Some("mysql2mysqlDemo"));
        assert_eq!(users.label("nope"), None);
        let t2 = find(
            input,
            "gravity_input_counter",
            &[("table", "t_2"), ("subtype", "delete")],
        );
        assert_eq!(t2.value, 48_213_377.0);
        let ctl = find(input, "gravity_input_counter", &[("type", "ctl")]);
        assert_eq!(ctl.label("subtype"), Some(""));
        assert_eq!(ctl.value, 86400.0);

        let out = fam(&e, "gravity_output_latency");
        assert_eq!(out.kind, MetricType::Histogram);
        let les: Vec<f64> = out.samples.iter().filter_map(|s| s.le()).collect();
        let mut want = vec![0.0005];
        for _ in 0..17 {
            want.push(want.last().copied().unwrap_or(0.0) * 2.0);
        }
        want.push(f64::INFINITY);
        assert_eq!(les.len(), 19);
        for (got, w) in les.iter().zip(&want) {
            assert!((got - w).abs() < 1e-9 || got == w, "{got} vs {w}");
        }
        let b = find(out, "gravity_output_latency_bucket", &[("le", "0.016")]);
        assert_eq!(b.value, 1_948_118.0);
        let inf = find(out, "gravity_output_latency_bucket", &[("le", "+Inf")]);
        assert_eq!(inf.value, 4_976_037.0);
        assert_eq!(
            find(out, "gravity_output_latency_sum", &[]).value,
            138333.96855115367
        );
        assert_eq!(
            find(out, "gravity_output_latency_count", &[]).value,
            4_976_037.0
        );

        let gc = fam(&e, "go_gc_duration_seconds");
        assert_eq!(gc.kind, MetricType::Summary);
        let q: Vec<(f64, f64)> = gc
            .samples
            .iter()
            .filter_map(|s| s.quantile().map(|q| (q, s.value)))
            .collect();
        assert_eq!(
            q,
            [
                (0.0, 2.3e-05),
                (0.25, 4.1e-05),
                (0.5, 6.2e-05),
                (0.75, 0.000101),
                (1.0, 0.004519)
            ]
        );
        assert_eq!(
            find(gc, "go_gc_duration_seconds_sum", &[]).value,
            0.731945918
        );
        assert_eq!(find(gc, "go_gc_duration_seconds_count", &[]).value, 8812.0);

        let vmax = fam(&e, "process_virtual_memory_max_bytes");
        assert_eq!(vmax.kind, MetricType::Gauge);
        assert_eq!(vmax.samples[0].value, -1.0);
        assert!(vmax.samples[0].labels.is_empty());
        assert_eq!(vmax.samples[0].raw, "process_virtual_memory_max_bytes -1");
        assert_eq!(
            fam(&e, "process_start_time_seconds").samples[0].value,
            1_763_790_549.12
        );
        assert_eq!(fam(&e, "process_max_fds").samples[0].value, 1_048_576.0);
        assert_eq!(
            fam(&e, "process_cpu_seconds_total").kind,
            MetricType::Counter
        );
        let ratio = fam(&e, "gravity_scheduler_sliding_window_ratio");
        // gravity's ratio is an integer division (WaitingQueueLen() / Size()): 0 until full
        assert_eq!(ratio.samples[0].value, 0.0);
        assert_eq!(
            ratio.samples[0].label("input_stream_key"),
            Some("mysqlstream")
        );
        assert_eq!(
            fam(&e, "gravity_scheduler_retry_counter").samples[0].value,
            42.0
        );
        let q = fam(&e, "gravity_queue_length");
        // worker subtypes "0".."2" and the stream's three sliding-window queues
        assert_eq!(q.samples.len(), 19);
        assert_eq!(
            find(
                q,
                "gravity_queue_length",
                &[("subtype", "0"), ("type", "worker")]
            )
            .value,
            3.0
        );
        assert_eq!(
            find(
                q,
                "gravity_queue_length",
                &[
                    ("subtype", "mysqlstream"),
                    ("type", "sliding-window-waiting-chan")
                ]
            )
            .value,
            27.0
        );
        assert_eq!(
            find(
                q,
                "gravity_queue_length",
                &[("subtype", "test_db.orders"), ("type", "table-latch")]
            )
            .value,
            1024.0
        );
        let batch = fam(&e, "gravity_scheduler_batch_size");
        assert_eq!(
            batch.samples.iter().map(|s| s.value).collect::<Vec<_>>(),
            [10.0, 10.0, 1.0]
        );
        assert_eq!(fam(&e, "gravity_output_counter").samples.len(), 4);
        assert_eq!(
            fam(&e, "go_info").samples[0].label("version"),
            Some("go1.16.15")
        );
        let http = fam(&e, "promhttp_metric_handler_requests_total");
        assert_eq!(find(http, http.name, &[("code", "200")]).value, 5760.0);
        assert_eq!(gc.type_raw, Some("# TYPE go_gc_duration_seconds summary"));
        assert_eq!(
            gc.help_raw,
            Some("# HELP go_gc_duration_seconds A summary of the pause duration of garbage collection cycles.")
        );
    }

    #[test]
    fn metrics_40_tables_fixture() {
        let e = check_fixture_exhaustively(METRICS_40);
        assert_eq!(e.families.len(), 35);
        assert_eq!(e.series_count(), 537);
        let input = fam(&e, "gravity_input_counter");
        assert_eq!(input.samples.len(), 97);
        assert!(input
            .samples
            .iter()
            .all(|s| s.label("pipeline") == Some("orders-to-kafka")));
        let t30 = find(
            input,
            input.name,
            &[("table", "t_30"), ("subtype", "delete")],
        );
        assert_eq!(t30.value, 1_534_000.0);
        assert_eq!(
            find(
                input,
                input.name,
                &[("table", "t_30"), ("subtype", "update")]
            )
            .value,
            1.0
        );
        assert_eq!(fam(&e, "gravity_output_counter").samples.len(), 41);
        let q = fam(&e, "gravity_queue_length");
        assert_eq!(q.samples.len(), 167);
        assert_eq!(
            find(
                q,
                q.name,
                &[("subtype", "test_db.orders"), ("type", "table-latch")]
            )
            .value,
            1.0
        );
        let il = fam(&e, "gravity_input_latency");
        assert_eq!(
            find(il, "gravity_input_latency_sum", &[]).value,
            1.2120260602462078e+06
        );
        let ol = fam(&e, "gravity_output_latency");
        assert_eq!(
            find(ol, "gravity_output_latency_count", &[]).value,
            8.4286025e+07
        );
        let em = fam(&e, "gravity_emitter_latency");
        assert_eq!(
            find(em, "gravity_emitter_latency_bucket", &[("le", "+Inf")]).value,
            842_860_256.0
        );
    }

    #[test]
    fn generated_10k_fixture() {
        let e = check_fixture_exhaustively(METRICS_10K);
        assert_eq!(e.families.len(), 35);
        assert_eq!(e.series_count(), 10810);
        assert_eq!(fam(&e, "gravity_queue_length").samples.len(), 5607);
        let input = fam(&e, "gravity_input_counter");
        assert_eq!(
            find(
                input,
                input.name,
                &[("table", "t_777"), ("subtype", "delete")]
            )
            .value,
            1_534_000.0
        );
    }

    #[test]
    fn general_path_agrees_with_fast_path() {
        // Spacing defeats the "same label names as the previous sample" shortcut, so
        // every label goes through the general path; the result must not change.
        for text in [METRICS, METRICS_40] {
            let spaced = text
                .replace("{", "{ ")
                .replace("=\"", " = \"")
                .replace("\",", "\" ,\t");
            let (a, b) = (ok(text), ok(&spaced));
            assert_eq!(a.families.len(), b.families.len());
            for (fa, fb) in a.families.iter().zip(&b.families) {
                assert_eq!((fa.name, fa.kind, fa.help), (fb.name, fb.kind, fb.help));
                assert_eq!(fa.samples.len(), fb.samples.len());
                for (sa, sb) in fa.samples.iter().zip(&fb.samples) {
                    assert_eq!(sa.raw == sb.raw, sa.labels.is_empty());
                    assert_eq!(
                        (sa.name, &sa.labels, sa.value),
                        (sb.name, &sb.labels, sb.value)
                    );
                }
            }
        }
    }

    #[test]
    fn escapes_in_label_values_and_help() {
        let text = concat!(
            "# HELP esc A \\\\ backslash and\\nnewline\n",
            "# TYPE esc gauge\n",
            "esc{path=\"C:\\\\dir\",quote=\"say \\\"hi\\\"\",nl=\"a\\nb\",plain=\"x\",u=\"Zürich ☃ 𝄞\",mix=\"é\\\"𝄞\"} 1\n",
        );
        let e = ok(text);
        let f = fam(&e, "esc");
        assert_eq!(f.help, Some("A \\\\ backslash and\\nnewline"));
        assert_eq!(
            f.help_text().as_deref(),
            Some("A \\ backslash and\nnewline")
        );
        let s = &f.samples[0];
        assert_eq!(s.label("path"), Some("C:\\dir"));
        assert_eq!(s.label("quote"), Some("say \"hi\""));
        assert_eq!(s.label("nl"), Some("a\nb"));
        assert_eq!(s.label("plain"), Some("x"));
        assert_eq!(s.label("u"), Some("Zürich ☃ 𝄞"));
        assert_eq!(s.label("mix"), Some("é\"𝄞"));
        let borrowed: Vec<bool> = s
            .labels
            .iter()
            .map(|(_, v)| matches!(v, Cow::Borrowed(_)))
            .collect();
        assert_eq!(borrowed, [false, false, false, true, true, false]);
        assert_eq!(
            fam(&ok("# HELP h plain\n"), "h").help_text().as_deref(),
            Some("plain")
        );
    }

    #[test]
    fn special_and_go_formatted_numbers() {
        let cases: &[(&str, f64)] = &[
            ("+Inf", f64::INFINITY),
            ("-Inf", f64::NEG_INFINITY),
            ("Inf", f64::INFINITY),
            ("inf", f64::INFINITY),
            ("1.534e+06", 1_534_000.0),
            ("4.8213377e+07", 48_213_377.0),
            ("-1", -1.0),
            ("0.0263671875", 0.0263671875),
            ("2.3e-05", 0.000023),
            ("1.76379054912e+09", 1_763_790_549.12),
            (".5", 0.5),
            ("-0", 0.0),
            ("+7", 7.0),
            ("1E3", 1000.0),
            ("123456789012345", 123_456_789_012_345.0),
            ("12345678901234567890", 12_345_678_901_234_567_890.0),
            ("9007199254740993", 9_007_199_254_740_992.0),
        ];
        for (text, want) in cases {
            let line = format!("m {text}\n");
            let e = ok(&line);
            assert_eq!(e.families[0].samples[0].value, *want, "{text}");
        }
        for nan in ["NaN", "nan", "-NaN"] {
            let line = format!("m{{quantile=\"0.5\"}} {nan}\n");
            assert!(ok(&line).families[0].samples[0].value.is_nan(), "{nan}");
        }
        let e = ok("# TYPE h histogram\nh_bucket{le=\"+Inf\"} NaN\nh_bucket{le=\"-Inf\"} 0\n");
        assert_eq!(e.families[0].samples[0].le(), Some(f64::INFINITY));
        assert_eq!(e.families[0].samples[1].le(), Some(f64::NEG_INFINITY));
    }

    #[test]
    fn timestamps() {
        let e =
            ok("a 1 1700000000123\nb{x=\"y\"} 2 -5\nc\t3\t+7\nd 4 9223372036854775807  \ne 5\n");
        let ts: Vec<Option<i64>> = e
            .families
            .iter()
            .map(|f| f.samples[0].timestamp_ms)
            .collect();
        assert_eq!(
            ts,
            [
                Some(1_700_000_000_123),
                Some(-5),
                Some(7),
                Some(i64::MAX),
                None
            ]
        );
        assert_eq!(e.families[2].samples[0].value, 3.0);
    }

    #[test]
    fn whitespace_crlf_comments_and_blank_lines() {
        let text = "# a comment\r\n\r\n   \t\r\n#\r\n# EOF\r\n  lead{ a = \"x\" , b=\"y\", } 1  \r\nlead{} 2\r\nlead {a=\"z\"}3\r\nlead\t{a=\"t\"}\t4\r\n#HELP lead h\r\n  # TYPE other gauge\r\nother 5";
        let e = ok(text);
        assert_eq!(e.families.len(), 2);
        let lead = fam(&e, "lead");
        assert_eq!(lead.kind, MetricType::Untyped);
        assert_eq!(lead.help, Some("h"));
        assert_eq!(lead.help_raw, Some("#HELP lead h"));
        let vals: Vec<f64> = lead.samples.iter().map(|s| s.value).collect();
        assert_eq!(vals, [1.0, 2.0, 3.0, 4.0]);
        let s = &lead.samples[0];
        assert_eq!(s.raw, "  lead{ a = \"x\" , b=\"y\", } 1  ");
        assert_eq!(s.label("a"), Some("x"));
        assert_eq!(s.label("b"), Some("y"));
        assert!(lead.samples[1].labels.is_empty());
        assert_eq!(lead.samples[3].label("a"), Some("t"));
        let other = fam(&e, "other");
        assert_eq!(other.kind, MetricType::Gauge);
        assert_eq!(other.type_raw, Some("  # TYPE other gauge"));
        assert_eq!(other.samples[0].raw, "other 5");
        // TYPE keywords are case-insensitive and may carry trailing blanks.
        assert_eq!(
            fam(&ok("# TYPE x COUNTER \nx 1\n"), "x").kind,
            MetricType::Counter
        );
        // "# HELP" / "# TYPE" without a name are plain comments.
        assert!(ok("# HELP\n# TYPE  \n").families.is_empty());
        assert!(ok("").families.is_empty());
        assert!(ok("\n\n").families.is_empty());
    }

    #[test]
    fn grouping_into_families() {
        let text = "\
plain 1
plain{a=\"b\"} 2
other 3
# TYPE h histogram
h_bucket{le=\"1\"} 1
h_bucket{le=\"+Inf\"} 2
h_sum 3
h_count 2
# TYPE c counter
c 5
c_sum 6
h_count{x=\"late\"} 1
# TYPE s summary
s{quantile=\"0.5\"} 1
s_sum 2
s_count 3
s_bucket 4
# HELP only Help but no type.
only 7
# TYPE y gauge
# HELP y Type before help.
y 8
";
        let e = ok(text);
        let got: Vec<(&str, MetricType, usize)> = e
            .families
            .iter()
            .map(|f| (f.name, f.kind, f.samples.len()))
            .collect();
        use MetricType::*;
        assert_eq!(
            got,
            [
                ("plain", Untyped, 2),
                ("other", Untyped, 1),
                ("h", Histogram, 5),
                ("c", Counter, 1),
                ("c_sum", Untyped, 1),
                ("s", Summary, 3),
                ("s_bucket", Untyped, 1),
                ("only", Untyped, 1),
                ("y", Gauge, 1),
            ]
        );
        assert_eq!(e.series_count(), 16);
        let h = fam(&e, "h");
        assert_eq!(h.samples[4].label("x"), Some("late"));
        assert_eq!(fam(&e, "only").help, Some("Help but no type."));
        let y = fam(&e, "y");
        assert_eq!(y.help, Some("Type before help."));
        assert!(y.type_raw.is_some() && y.help_raw.is_some());
        assert!(e.family("h_bucket").is_none());
        // gravity's counters keep their names; no _total handling.
        let g = ok("# TYPE gravity_input_counter counter\ngravity_input_counter 1\ngravity_input_counter_total 2\n");
        assert_eq!(fam(&g, "gravity_input_counter").samples.len(), 1);
        assert_eq!(
            fam(&g, "gravity_input_counter_total").kind,
            MetricType::Untyped
        );
    }

    #[test]
    fn every_error_variant_with_its_line() {
        use ParseError as P;
        type Check = fn(&ParseError) -> bool;
        let cases: &[(&str, Check, usize)] = &[
            ("1a 1", |e| matches!(e, P::InvalidMetricName { .. }), 1),
            (
                "ok 1\nbad-name 1",
                |e| matches!(e, P::InvalidMetricName { .. }),
                2,
            ),
            (
                "ok 1\n\nok 2\n{a=\"b\"} 1",
                |e| matches!(e, P::InvalidMetricName { .. }),
                4,
            ),
            ("é 1", |e| matches!(e, P::InvalidMetricName { .. }), 1),
            ("aé 1", |e| matches!(e, P::InvalidMetricName { .. }), 1),
            (
                "# HELP 1a x",
                |e| matches!(e, P::InvalidMetricName { .. }),
                1,
            ),
            (
                "x 1\r\n# TYPE a-b gauge",
                |e| matches!(e, P::InvalidMetricName { .. }),
                2,
            ),
            (
                "a{1x=\"y\"} 1",
                |e| matches!(e, P::InvalidLabelName { .. }),
                1,
            ),
            (
                "a 1\na{x-y=\"z\"} 1",
                |e| matches!(e, P::InvalidLabelName { .. }),
                2,
            ),
            (
                "a{__name__=\"z\"} 1",
                |e| matches!(e, P::InvalidLabelName { .. }),
                1,
            ),
            (
                "a{é=\"z\"} 1",
                |e| matches!(e, P::InvalidLabelName { .. }),
                1,
            ),
            ("a{,} 1", |e| matches!(e, P::InvalidLabelName { .. }), 1),
            ("a{x=y} 1", |e| matches!(e, P::InvalidLabelValue { .. }), 1),
            (
                "#\na{x=\"y} 1",
                |e| matches!(e, P::InvalidLabelValue { .. }),
                2,
            ),
            (
                "a{x=\"\\t\"} 1",
                |e| matches!(e, P::InvalidLabelValue { .. }),
                1,
            ),
            (
                "a{x=\"y\\\"} 1",
                |e| matches!(e, P::InvalidLabelValue { .. }),
                1,
            ),
            ("a{x=\"y\\", |e| matches!(e, P::InvalidLabelValue { .. }), 1),
            (
                "a{x=\"1\",x=\"2\"} 1",
                |e| matches!(e, P::DuplicateLabel { .. }),
                1,
            ),
            ("a{x} 1", |e| matches!(e, P::Syntax { .. }), 1),
            ("a{x=\"y\" z=\"w\"} 1", |e| matches!(e, P::Syntax { .. }), 1),
            ("a 1\nb 2\na{x=\"y\"", |e| matches!(e, P::Syntax { .. }), 3),
            ("a{x=\"y\",", |e| matches!(e, P::Syntax { .. }), 1),
            ("a{x", |e| matches!(e, P::Syntax { .. }), 1),
            ("a", |e| matches!(e, P::InvalidValue { .. }), 1),
            ("a{}", |e| matches!(e, P::InvalidValue { .. }), 1),
            ("a{x=\"y\"}   ", |e| matches!(e, P::InvalidValue { .. }), 1),
            ("a 1\na abc", |e| matches!(e, P::InvalidValue { .. }), 2),
            ("a 1,5", |e| matches!(e, P::InvalidValue { .. }), 1),
            ("a 0x10", |e| matches!(e, P::InvalidValue { .. }), 1),
            ("a 1 1.5", |e| matches!(e, P::InvalidTimestamp { .. }), 1),
            ("a 1 x", |e| matches!(e, P::InvalidTimestamp { .. }), 1),
            (
                "a 1 99999999999999999999",
                |e| matches!(e, P::InvalidTimestamp { .. }),
                1,
            ),
            ("a 1 2 3", |e| matches!(e, P::TrailingData { .. }), 1),
            ("a 1\r\na 1 2 x", |e| matches!(e, P::TrailingData { .. }), 2),
            (
                "# HELP a x\n# HELP a y",
                |e| matches!(e, P::InvalidHelp { .. }),
                2,
            ),
            (
                "# HELP a bad \\t escape",
                |e| matches!(e, P::InvalidHelp { .. }),
                1,
            ),
            (
                "# HELP a trailing \\",
                |e| matches!(e, P::InvalidHelp { .. }),
                1,
            ),
            ("# TYPE a foo", |e| matches!(e, P::InvalidType { .. }), 1),
            (
                "# TYPE a gauge extra",
                |e| matches!(e, P::InvalidType { .. }),
                1,
            ),
            ("# TYPE a", |e| matches!(e, P::InvalidType { .. }), 1),
            (
                "# TYPE a gauge\n# TYPE a gauge",
                |e| matches!(e, P::InvalidType { .. }),
                2,
            ),
            (
                "a 1\n# TYPE a gauge",
                |e| matches!(e, P::InvalidType { .. }),
                2,
            ),
            (
                "# TYPE h histogram\nh 1",
                |e| matches!(e, P::FamilyMismatch { .. }),
                2,
            ),
            (
                "# TYPE h histogram\nh_sum 1\nx 1\nh 2",
                |e| matches!(e, P::FamilyMismatch { .. }),
                4,
            ),
            (
                "# TYPE h histogram\nh_bucket{a=\"b\"} 1",
                |e| matches!(e, P::FamilyMismatch { .. }),
                2,
            ),
            (
                "# TYPE h histogram\nh_bucket{le=\"x\"} 1",
                |e| matches!(e, P::FamilyMismatch { .. }),
                2,
            ),
            (
                "# TYPE s summary\ns{a=\"b\"} 1",
                |e| matches!(e, P::FamilyMismatch { .. }),
                2,
            ),
            (
                "# TYPE s summary\ns{quantile=\"\"} 1",
                |e| matches!(e, P::FamilyMismatch { .. }),
                2,
            ),
        ];
        for (input, check, line) in cases {
            let e = err(input);
            assert!(check(&e), "{input:?} gave {e:?}");
            assert_eq!(e.line(), *line, "{input:?} gave {e:?}");
            let (_, lossy) = parse_lossy(input);
            assert_eq!(lossy.first(), Some(&e), "{input:?}");
        }
    }

    #[test]
    fn error_messages_name_the_line_but_not_the_input() {
        let e = err("ok 1\nsecret{password=\"hunter2} 1");
        let msg = e.to_string();
        assert!(msg.starts_with("line 2: invalid label value"), "{msg}");
        assert!(!msg.contains("hunter2") && !msg.contains("password"));
        assert_eq!(e.reason(), "unterminated label value");
    }

    #[test]
    fn lossy_keeps_good_lines_around_bad_ones() {
        let text = "\
# TYPE a gauge
a 1
a{b=\"unterminated} 2
a{b=\"ok\"} 3
bad-name 4
# TYPE a counter
z 5
# TYPE h histogram
h_bucket{le=\"1\"} 1
h_bucket 1
h_count 1
";
        let strict = err(text);
        assert_eq!(strict.line(), 3);
        let (e, errors) = parse_lossy(text);
        let lines: Vec<usize> = errors.iter().map(ParseError::line).collect();
        assert_eq!(lines, [3, 5, 6, 10]);
        assert!(matches!(errors[2], ParseError::InvalidType { .. }));
        let a = fam(&e, "a");
        assert_eq!(a.kind, MetricType::Gauge);
        assert_eq!(
            a.samples.iter().map(|s| s.value).collect::<Vec<_>>(),
            [1.0, 3.0]
        );
        assert_eq!(a.samples[1].label("b"), Some("ok"));
        assert_eq!(fam(&e, "z").samples[0].value, 5.0);
        let h = fam(&e, "h");
        assert_eq!(
            h.samples.iter().map(|s| s.name).collect::<Vec<_>>(),
            ["h_bucket", "h_count"]
        );
        assert_eq!(e.series_count(), 5);
    }

    #[test]
    fn lossy_caps_collected_errors() {
        let mut text = String::new();
        for i in 0..150 {
            text.push_str(&format!("good{{i=\"{i}\"}} {i}\nbad{{ {i}\n"));
        }
        text.push_str("last 1\n");
        let (e, errors) = parse_lossy(&text);
        assert_eq!(errors.len(), MAX_LOSSY_ERRORS);
        assert_eq!(errors[0].line(), 2);
        assert_eq!(errors[99].line(), 200);
        assert_eq!(fam(&e, "good").samples.len(), 150);
        assert_eq!(fam(&e, "last").samples[0].value, 1.0);
    }

    #[test]
    fn metric_type_keywords_round_trip() {
        for t in [
            MetricType::Counter,
            MetricType::Gauge,
            MetricType::Histogram,
            MetricType::Summary,
            MetricType::Untyped,
        ] {
            assert_eq!(MetricType::from_keyword(t.as_str()), Some(t));
        }
        assert_eq!(MetricType::from_keyword("Gauge"), Some(MetricType::Gauge));
        assert_eq!(MetricType::from_keyword("gauges"), None);
    }

    #[test]
    fn find2_matches_naive_search() {
        let hay = b"0123456789abcdef\"ghij\\klmnopqrstuvwxyz\n";
        for from in 0..=hay.len() {
            for (n1, n2) in [(b'"', b'\\'), (b'\n', b'\n'), (b'z', b'0'), (0u8, 0xff)] {
                let naive = hay
                    .iter()
                    .skip(from)
                    .position(|&c| c == n1 || c == n2)
                    .map_or(hay.len(), |p| p + from);
                assert_eq!(find2(hay, from, n1, n2), naive, "{from} {n1} {n2}");
            }
        }
        assert_eq!(find2(hay, hay.len() + 5, b'a', b'a'), hay.len());
        // High bytes must not produce false hits (borrow propagation).
        let tricky = [0x80u8, 0x0a + 1, 0x0a, 0x81, 0x0b, 0x09, 0xff, 0x0a];
        assert_eq!(find_newline(&tricky, 0), 2);
        assert_eq!(find_newline(&tricky, 3), 7);
    }

    /// `parse` and `parse_lossy` agree, and the result is well formed.
    fn check_consistent(input: &str) {
        let strict = parse(input);
        let (lossy, errors) = parse_lossy(input);
        assert!(errors.len() <= MAX_LOSSY_ERRORS);
        assert!(errors.windows(2).all(|w| w[0].line() < w[1].line()));
        match &strict {
            // Debug, not ==: NaN values are not equal to themselves.
            Ok(e) => {
                assert!(errors.is_empty());
                assert_eq!(format!("{e:?}"), format!("{lossy:?}"));
            }
            Err(e) => assert_eq!(errors.first(), Some(e)),
        }
        let base = input.as_ptr() as usize;
        let within = |s: &str| {
            let p = s.as_ptr() as usize;
            p >= base && p + s.len() <= base + input.len()
        };
        let mut names = HashSet::new();
        for f in &lossy.families {
            assert!(names.insert(f.name), "family {} twice", f.name);
            assert!(within(f.name));
            for s in &f.samples {
                assert!(s.name.starts_with(f.name));
                assert!(within(s.raw) && within(s.name));
                assert!(!s.raw.contains('\n'));
            }
        }
    }

    const INTERESTING: &[u8] = b"\"\\{}=,# \t\n\r.-+eE0129_:aHELPTYPEle";
    const CHARS: &[char] = &['é', '€', '𝄞', '\u{0}', '\u{feff}', '☃', '"', '\\'];

    /// Byte-level mutations; the result is made valid UTF-8 again (invalid sequences
    /// become U+FFFD, which is multi-byte, so boundaries get exercised too).
    fn mutate(text: &str, muts: &[(usize, u8, u8)]) -> String {
        let mut b = text.as_bytes().to_vec();
        for &(pos, op, byte) in muts {
            let p = if b.is_empty() { 0 } else { pos % b.len() };
            let pick = INTERESTING[usize::from(byte) % INTERESTING.len()];
            match op % 6 {
                0 if p < b.len() => b[p] = byte,
                1 if p < b.len() => b[p] = pick,
                2 => b.insert(p, pick),
                3 if p < b.len() => {
                    b.remove(p);
                }
                4 => {
                    let mut buf = [0u8; 4];
                    let c = CHARS[usize::from(byte) % CHARS.len()].encode_utf8(&mut buf);
                    for (k, x) in c.bytes().enumerate() {
                        b.insert(p + k, x);
                    }
                }
                _ => b.truncate(p.max(b.len().saturating_sub(usize::from(byte)))),
            }
        }
        String::from_utf8_lossy(&b).into_owned()
    }

    fn token_soup() -> impl Strategy<Value = String> {
        let tokens = prop_oneof![
            Just("m"),
            Just("_bucket"),
            Just("_sum"),
            Just("_count"),
            Just("{"),
            Just("}"),
            Just("le"),
            Just("quantile"),
            Just("="),
            Just("\""),
            Just("\\"),
            Just(","),
            Just(" "),
            Just("\t"),
            Just("\n"),
            Just("\r\n"),
            Just("# HELP m "),
            Just("# TYPE m histogram"),
            Just("# TYPE m summary"),
            Just("1"),
            Just("-1.5e+06"),
            Just("+Inf"),
            Just("NaN"),
            Just("é"),
            Just("𝄞"),
        ];
        proptest::collection::vec(tokens, 0..80).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_strings(s in any::<String>()) {
            check_consistent(&s);
        }

        #[test]
        fn never_panics_on_token_soup(s in token_soup()) {
            check_consistent(&s);
        }

        #[test]
        fn never_panics_on_mutated_fixtures(
            which in any::<bool>(),
            muts in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..12),
        ) {
            let text = mutate(if which { METRICS } else { METRICS_40 }, &muts);
            check_consistent(&text);
        }
    }

    #[test]
    fn capped_parse_keeps_wanted_families_and_bounds_the_rest() {
        let mut text = String::from("# TYPE noise gauge\n");
        for i in 0..1000 {
            text.push_str(&format!("noise{{i=\"{i}\"}} 1\n"));
        }
        text.push_str("# TYPE wanted_total counter\n");
        for i in 0..50 {
            text.push_str(&format!("wanted_total{{i=\"{i}\"}} 1\n"));
        }
        let keep = Keep {
            wanted: |n| n == "wanted_total",
            wanted_per_family: 40,
            others: 100,
        };
        let (exp, errors, skipped) = parse_lossy_capped(&text, keep);
        assert!(errors.is_empty());
        assert_eq!(exp.family("noise").unwrap().samples.len(), 100);
        assert_eq!(exp.family("wanted_total").unwrap().samples.len(), 40);
        assert_eq!(skipped, 900 + 10);
    }

    /// The kept families and samples (name, raw line) of a capped parse.
    fn kept(input: &str, keep: Keep) -> (Vec<(String, Vec<String>)>, usize) {
        let (exp, _, skipped) = parse_lossy_capped(input, keep);
        let fams = exp
            .families
            .iter()
            .map(|f| {
                (
                    f.name.to_string(),
                    f.samples.iter().map(|s| s.raw.to_string()).collect(),
                )
            })
            .collect();
        (fams, skipped)
    }

    fn sieve_in_pieces(input: &[u8], keep: Keep, piece: usize, budget: usize) -> Sieved {
        let mut s = Sieve::new(keep, 4096, budget);
        for p in input.chunks(piece.max(1)) {
            s.push(p);
        }
        s.finish()
    }

    fn wanted_gravity(n: &str) -> bool {
        n == "gravity_input_counter"
            || n.starts_with("process_")
            || n.ends_with("_duration_seconds")
    }

    #[test]
    fn sieve_then_parse_keeps_what_the_capped_parse_keeps() {
        for input in [METRICS, METRICS_40, METRICS_10K] {
            for (per_family, others) in [
                (0, 0),
                (1, 5),
                (3, 100),
                (usize::MAX, 1000),
                (usize::MAX, usize::MAX),
            ] {
                let keep = Keep {
                    wanted: wanted_gravity,
                    wanted_per_family: per_family,
                    others,
                };
                let (want, skipped) = kept(input, keep);
                for piece in [1, 7, 4096, input.len()] {
                    let sieved = sieve_in_pieces(input.as_bytes(), keep, piece, usize::MAX);
                    assert!(!sieved.not_utf8 && sieved.long_lines == 0 && sieved.over_bytes == 0);
                    let (got, skipped_after) = kept(&sieved.text, keep);
                    // families left with no sample may differ (their HELP/TYPE lines are
                    // dropped once the cap is reached); everything with samples is the same
                    let nonempty = |v: Vec<(String, Vec<String>)>| {
                        v.into_iter()
                            .filter(|f| !f.1.is_empty())
                            .collect::<Vec<_>>()
                    };
                    assert_eq!(
                        nonempty(got),
                        nonempty(want.clone()),
                        "{per_family} {others} {piece}"
                    );
                    assert_eq!(
                        sieved.not_kept + skipped_after,
                        skipped,
                        "{per_family} {others} {piece}"
                    );
                    assert!(sieved.text.len() <= input.len() + 1);
                }
            }
        }
    }

    #[test]
    fn sieve_drops_long_lines_as_they_stream_by() {
        let keep = Keep {
            wanted: |n| n == "w",
            wanted_per_family: usize::MAX,
            others: usize::MAX,
        };
        let huge = "x".repeat(SIEVE_MAX_LINE + 10);
        let mid = "y".repeat(5000);
        let input = format!(
            "# TYPE a gauge\na 1\nb{{v=\"{huge}\"}} 1\nc{{v=\"{mid}\"}} 1\nw{{v=\"{mid}\"}} 2\n# HELP d {mid}\nd 3\ne{{v=\"{huge}\"}} 1"
        );
        for piece in [1, 100, 70_000, input.len()] {
            let s = sieve_in_pieces(input.as_bytes(), keep, piece, usize::MAX);
            // the 64 KiB lines (one unterminated), the 5000-byte line of another family and
            // the 5000-byte HELP line; the wanted family's long line is kept
            assert_eq!(s.long_lines, 4, "{piece}");
            assert_eq!(
                s.text,
                format!("# TYPE a gauge\na 1\nw{{v=\"{mid}\"}} 2\nd 3\n"),
                "{piece}"
            );
        }
    }

    #[test]
    fn sieve_keeps_within_its_byte_budget_and_flags_bytes_that_are_not_utf8() {
        let keep = Keep {
            wanted: |_| false,
            wanted_per_family: 0,
            others: usize::MAX,
        };
        let s = sieve_in_pieces(b"a 1\nb 2\nc 3\n", keep, 5, 8);
        assert_eq!((s.text.as_str(), s.over_bytes), ("a 1\nb 2\n", 1));
        let s = sieve_in_pieces(b"a 1\nb\xff 2\nc 3", keep, 3, usize::MAX);
        assert!(s.not_utf8);
        assert_eq!(s.text, "a 1\nc 3\n");
        // a character cut between two pieces is whole again
        let s = sieve_in_pieces("a{x=\"é€\"} 1\n".as_bytes(), keep, 1, usize::MAX);
        assert!(!s.not_utf8);
        assert_eq!(s.text, "a{x=\"é€\"} 1\n");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// However an answer is cut into pieces, the sieve keeps the same lines, and never
        /// more than its budget.
        #[test]
        fn sieve_result_does_not_depend_on_the_pieces(
            body in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'#'), Just(b' '), Just(b'a'), Just(b'{'), any::<u8>()], 0..400),
            piece in 1usize..64,
            budget in 0usize..200,
            others in 0usize..8,
        ) {
            let keep = Keep { wanted: |n| n == "a", wanted_per_family: 3, others };
            let whole = sieve_in_pieces(&body, keep, body.len(), budget);
            let cut = sieve_in_pieces(&body, keep, piece, budget);
            prop_assert_eq!(&whole, &cut);
            prop_assert!(whole.text.len() <= budget);
        }
    }
}
