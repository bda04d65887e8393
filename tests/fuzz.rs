//! Fuzz harnesses for every parser of outside input, on stable Rust (issue 10).
//!
//! Each test feeds one parser a stream of inputs made by mutating real inputs (the fixtures
//! under `tests/fixtures`, plus a few built here): bit flips, random and "interesting" bytes,
//! inserted tokens (huge numbers, `NaN`, escapes, delimiters), deleted, duplicated and
//! spliced ranges, truncation, and digit runs replaced by extreme numbers. A hand-rolled
//! xorshift generator keeps it deterministic and fast: a run is reproduced by its seed.
//!
//! Every harness asserts that the parser does not panic (each case runs under
//! `catch_unwind`; a crashing input is written to `target/fuzz-crashes/` and the test fails
//! naming the file) and that its output is bounded by its input; the Prometheus text format
//! also round-trips: what parses re-renders (HELP, TYPE and sample lines as kept for the
//! pass-through) to text that parses strictly to the same exposition.
//!
//! Case counts: `FUZZ_CASES` (per harness; default 2,000, 1,000 for the two config
//! parsers and expfmt, whose seeds are up to 64 KiB), seed `FUZZ_SEED` (default fixed). The default run takes a few
//! seconds; `scripts/fuzz.sh` runs 1M cases per parser in release mode with overflow checks
//! on. Results: `docs/reliability.md`, section "Fuzzing".
//!
//! Not here: MySQL replies. The probe, the source checks and the consistency checker talk to
//! MySQL through the `mysql_async` driver; no reply parser of this crate exists to fuzz
//! (the driver's known limit is in `docs/architecture.md`).

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use gravity_exporter::collector::{cgroup, gravity_metrics, process, sockets, status};
use gravity_exporter::expfmt::{self, Exposition};
use gravity_exporter::gravity_config;
use gravity_exporter::log::classify;
use gravity_exporter::log::record::{self, LogFormat};
use gravity_exporter::metrics::Families;
use gravity_exporter::probe::{kafka, kafka_topic, mongo};
use gravity_exporter::web_config::{self, WebConfig};

/// Number of series of a parsed exposition.
fn series_count(e: &Exposition<'_>) -> usize {
    e.families.iter().map(|f| f.samples.len()).sum()
}

/// The value of the one series of `name` carrying `labels` (the crate keeps no such lookup
/// outside its own tests: read from the families as a scrape would).
trait FamiliesExt {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64>;
}

impl FamiliesExt for Families {
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mf = self
            .clone()
            .into_vec()
            .into_iter()
            .find(|f| f.name() == name)?;
        mf.get_metric().iter().find_map(|m| {
            let has = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|lp| lp.name() == *k && lp.value() == *v)
            });
            if !has {
                return None;
            }
            match mf.get_field_type() {
                prometheus::proto::MetricType::COUNTER => Some(m.get_counter().get_value()),
                prometheus::proto::MetricType::GAUGE => Some(m.get_gauge().get_value()),
                _ => None,
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The mutator

/// xorshift64*: small, fast, good enough to drive mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Tokens every text parser gets inserted: delimiters, escapes, extreme numbers, odd Unicode.
const COMMON_TOKENS: &[&str] = &[
    "\n",
    "\r\n",
    "\t",
    " ",
    "\"",
    "\\",
    "\\\"",
    "\\n",
    "\\u0000",
    "\\ud800",
    "\\uDBFF\\uDFFF",
    "{",
    "}",
    "[",
    "]",
    "=",
    ":",
    ",",
    "#",
    "0",
    "-1",
    "-0",
    "1e308",
    "1e309",
    "-1e309",
    "4.9e-324",
    "NaN",
    "+Inf",
    "-Inf",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "4294967295",
    "4294967296",
    "65535",
    "65536",
    "99999999999999999999999999999999",
    "0x7fffffff",
    "\u{feff}",
    "\u{1b}[31m",
    "é",
    "\u{10ffff}",
    "\u{fffd}",
    "\0",
];

/// Numbers a digit run is replaced by.
const EXTREME_NUMBERS: &[&str] = &[
    "0",
    "1",
    "255",
    "256",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999",
];

/// Integers written in binary, for the binary protocols.
const EXTREME_WORDS: &[u32] = &[
    0,
    1,
    0x7f,
    0x80,
    0xff,
    0x7fff,
    0x8000,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
];

/// One parser's seeds and dictionary.
struct Corpus {
    seeds: Vec<Vec<u8>>,
    tokens: Vec<Vec<u8>>,
    max_len: usize,
}

impl Corpus {
    fn new(seeds: Vec<Vec<u8>>, extra_tokens: &[&str], max_len: usize) -> Corpus {
        assert!(!seeds.is_empty(), "a corpus needs seeds");
        let tokens = COMMON_TOKENS
            .iter()
            .chain(extra_tokens)
            .map(|t| t.as_bytes().to_vec())
            .collect();
        Corpus {
            seeds,
            tokens,
            max_len,
        }
    }

    /// A new input: a seed (sometimes spliced with another) under 1 to 8 mutations.
    fn generate(&self, rng: &mut Rng, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.seeds[rng.below(self.seeds.len())]);
        let rounds = 1 + rng.below(8);
        for _ in 0..rounds {
            self.mutate(rng, out);
        }
        out.truncate(self.max_len);
    }

    fn mutate(&self, rng: &mut Rng, buf: &mut Vec<u8>) {
        let len = buf.len();
        let at = |rng: &mut Rng| if len == 0 { 0 } else { rng.below(len + 1) };
        match rng.below(13) {
            // flip a bit
            0 if len > 0 => {
                let i = rng.below(len);
                buf[i] ^= 1 << rng.below(8);
            }
            // a random byte
            1 if len > 0 => {
                let i = rng.below(len);
                buf[i] = rng.next() as u8;
            }
            // insert a token
            2 | 3 => {
                let t = &self.tokens[rng.below(self.tokens.len())];
                let i = at(rng);
                buf.splice(i..i, t.iter().copied());
            }
            // delete a range
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                buf.drain(i..i + n);
            }
            // duplicate a range (repeated lines, fields, labels)
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let copy = buf[i..i + n].to_vec();
                let to = at(rng);
                for _ in 0..1 + rng.below(4) {
                    buf.splice(to..to, copy.iter().copied());
                }
            }
            // splice in a range of another seed
            6 => {
                let other = &self.seeds[rng.below(self.seeds.len())];
                if !other.is_empty() {
                    let i = rng.below(other.len());
                    let n = 1 + rng.below((other.len() - i).min(512));
                    let to = at(rng);
                    buf.splice(to..to, other[i..i + n].iter().copied());
                }
            }
            // truncate
            7 if len > 0 => buf.truncate(rng.below(len)),
            // replace a digit run with an extreme number
            8 | 9 if len > 0 => {
                let start = rng.below(len);
                if let Some(off) = buf[start..].iter().position(u8::is_ascii_digit) {
                    let s = start + off;
                    let e = buf[s..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(buf.len(), |n| s + n);
                    let n = EXTREME_NUMBERS[rng.below(EXTREME_NUMBERS.len())];
                    buf.splice(s..e, n.bytes());
                }
            }
            // an extreme binary word (both byte orders)
            10 if len >= 4 => {
                let i = rng.below(len - 3);
                let w = EXTREME_WORDS[rng.below(EXTREME_WORDS.len())];
                let b = if rng.chance(2) {
                    w.to_le_bytes()
                } else {
                    w.to_be_bytes()
                };
                buf[i..i + 4].copy_from_slice(&b);
            }
            // swap two bytes
            11 if len > 1 => {
                let (i, j) = (rng.below(len), rng.below(len));
                buf.swap(i, j);
            }
            // a long run of one byte
            _ => {
                let b = if rng.chance(2) {
                    rng.next() as u8
                } else {
                    let pick = b"a0 {\"\\\n";
                    pick[rng.below(pick.len())]
                };
                let most = if rng.chance(16) { 100_000 } else { 64 };
                let n = 1 + rng.below(most);
                let to = at(rng);
                buf.splice(to..to, std::iter::repeat_n(b, n));
            }
        }
    }
}

fn cases(default: u64) -> u64 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6772_6176_6974_7921)
        | 1
}

fn crash_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-crashes")
}

/// Runs `check` on every seed as is, then on `n` generated inputs. A panic is a failure:
/// the input is saved and the test panics naming it.
fn run(name: &str, corpus: &Corpus, default_cases: u64, check: impl Fn(&[u8])) {
    let n = cases(default_cases);
    let seed = seed();
    let mut rng = Rng(seed ^ fnv(name));
    let mut input = Vec::new();
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 0..(corpus.seeds.len() as u64 + n) {
        match corpus.seeds.get(i as usize) {
            Some(s) => {
                input.clear();
                input.extend_from_slice(s);
            }
            None => corpus.generate(&mut rng, &mut input),
        }
        bytes += input.len() as u64;
        if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
            let dir = crash_dir();
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("{name}-{seed}-{i}.bin"));
            std::fs::write(&file, &input).unwrap();
            panic!(
                "fuzz {name}: case {i} (FUZZ_SEED={seed}) panicked; input saved to {}",
                file.display()
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // One line per harness; scripts/fuzz.sh collects them.
    eprintln!(
        "FUZZ-RESULT {name} cases={n} seeds={} secs={secs:.1} mean_input_bytes={} crashes=0",
        corpus.seeds.len(),
        bytes / (corpus.seeds.len() as u64 + n).max(1),
    );
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn fixture(rel: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The input as text, as the exporter's I/O shells make it (invalid UTF-8 replaced).
fn text(b: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(b)
}

/// At most the first `max` bytes of `s`, cut at a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `part` lies inside `whole` (a borrowed slice of it).
fn inside(whole: &str, part: &str) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

// ---------------------------------------------------------------------------------------------
// expfmt: gravity's /metrics

/// What the pass-through keeps of an exposition, as text: HELP, TYPE and sample lines.
/// The pass-through's text of `exp`, or `None` when its byte bounds cut something (a line
/// over `MAX_PASSTHROUGH_LINE_BYTES`, the total over `MAX_PASSTHROUGH_BYTES`): then only the
/// bound is checked, as the round trip cannot hold for what was left out.
fn render(exp: &Exposition<'_>) -> Option<String> {
    let (fams, c) = gravity_metrics::passthrough_families(exp, usize::MAX, |_| false);
    assert_eq!(c.capped, 0);
    assert!(c.kept <= series_count(exp));
    let text: String = fams.into_iter().map(|f| f.text).collect();
    assert!(text.len() <= gravity_exporter::metrics::MAX_PASSTHROUGH_BYTES);
    if c.long_lines > 0 || c.over_bytes > 0 {
        return None;
    }
    assert_eq!(c.kept, series_count(exp));
    Some(text)
}

/// Equality of two expositions, NaN values included (compared by bits). Families without
/// samples (a HELP or TYPE line alone) are left out: the pass-through does not write them.
fn same(a: &Exposition<'_>, b: &Exposition<'_>) -> bool {
    let af: Vec<_> = a
        .families
        .iter()
        .filter(|f| !f.samples.is_empty())
        .collect();
    let bf: Vec<_> = b
        .families
        .iter()
        .filter(|f| !f.samples.is_empty())
        .collect();
    af.len() == bf.len()
        && af.iter().zip(&bf).all(|(f, g)| {
            f.name == g.name
                && f.help == g.help
                && f.kind == g.kind
                && f.help_raw == g.help_raw
                && f.type_raw == g.type_raw
                && f.samples.len() == g.samples.len()
                && f.samples.iter().zip(&g.samples).all(|(s, t)| {
                    s.name == t.name
                        && s.labels == t.labels
                        && s.value.to_bits() == t.value.to_bits()
                        && s.timestamp_ms == t.timestamp_ms
                        && s.raw == t.raw
                })
        })
}

fn single<'a>(f: &expfmt::Family<'a>) -> Exposition<'a> {
    Exposition {
        families: vec![f.clone()],
    }
}

fn check_exposition(input: &str, exp: &Exposition<'_>) {
    let lines = input.split('\n').count();
    assert!(series_count(exp) <= lines, "more series than lines");
    assert!(exp.families.len() <= lines, "more families than lines");
    let mut names = HashSet::new();
    for f in &exp.families {
        assert!(names.insert(f.name), "family {:?} twice", f.name);
        assert!(inside(input, f.name));
        for raw in [f.help_raw, f.type_raw].into_iter().flatten() {
            assert!(inside(input, raw) && !raw.contains('\n'));
        }
        let _ = f.help_text();
        for s in &f.samples {
            assert!(inside(input, s.raw) && !s.raw.contains('\n'));
            assert!(inside(input, s.name));
            for (n, v) in &s.labels {
                assert!(inside(input, n));
                assert!(v.len() <= s.raw.len());
            }
            let _ = (s.le(), s.quantile());
        }
    }
    // what parses re-renders to text that parses strictly to the same exposition
    let Some(again) = render(exp) else {
        return;
    };
    let re = match expfmt::parse(&again) {
        Ok(re) => re,
        Err(e) => panic!("re-rendered exposition does not parse: {e}\n{again}"),
    };
    if !same(exp, &re) {
        let diff = exp
            .families
            .iter()
            .zip(&re.families)
            .find(|(f, g)| !same(&single(f), &single(g)));
        panic!(
            "round trip changed the exposition: {} vs {} families, first difference {diff:#?}",
            exp.families.len(),
            re.families.len()
        );
    }
}

#[test]
fn fuzz_expfmt() {
    let seeds = vec![
        fixture("metrics.prom"),
        fixture("metrics-40-tables.prom"),
        // the 10k-series fixture, cut to its first 64 KiB
        fixture("metrics-10k.prom")
            .into_iter()
            .take(64 * 1024)
            .collect(),
        b"# HELP h Help with \\\\ and \\n.\n# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5e-07\nh_count 2\n# TYPE s summary\ns{quantile=\"0.99\"} NaN\ns_sum 1\ns_count 1\nu{a=\"x\\\"y\\\\z\\n\",b=\"\"} -Inf 1700000000000\n".to_vec(),
    ];
    let corpus = Corpus::new(
        seeds,
        &[
            "# HELP ",
            "# TYPE ",
            " counter\n",
            " gauge\n",
            " histogram\n",
            " summary\n",
            " untyped\n",
            "_bucket",
            "_sum",
            "_count",
            "{le=\"+Inf\"}",
            "{quantile=\"0.5\"}",
            "le=\"",
            "__name__",
            "\\\\",
            ",}",
            " 1e+06",
            " 0x1p-3",
        ],
        256 * 1024,
    );
    run("expfmt", &corpus, 1000, |b| {
        let input = text(b);
        if let Ok(exp) = expfmt::parse(&input) {
            check_exposition(&input, &exp);
        }
        let (exp, errors) = expfmt::parse_lossy(&input);
        assert!(errors.len() <= expfmt::MAX_LOSSY_ERRORS);
        for e in &errors {
            assert!(e.line() >= 1 && e.to_string().len() < 200);
        }
        check_exposition(&input, &exp);
        // the collector's reading of it
        let flows = [
            gravity_metrics::input_flows(&exp),
            gravity_metrics::output_flows(&exp),
        ];
        for f in &flows {
            let rates = gravity_metrics::rates(f, f, 5.0, false);
            assert!(
                gravity_metrics::cap_flows(rates, 100).len()
                    <= 100 + gravity_metrics::MAX_OTHER_OPS
            );
        }
        let (_, kept, _) = gravity_metrics::passthrough(&exp, 1000, &HashSet::new());
        assert!(kept <= 1000);
        let fb = gravity_metrics::process_fallback(&exp, "p");
        assert!(fb.len() <= 16);
        // the streaming sieve in front of the parse: the same whatever the pieces, within
        // its budget, and what it keeps parses within the caps
        let keep = expfmt::Keep {
            wanted: |n| n.starts_with("gravity_") || n.starts_with('h'),
            wanted_per_family: 50,
            others: 100,
        };
        let sieve = |piece: usize| {
            let mut s = expfmt::Sieve::new(keep, 4096, 64 * 1024);
            for p in b.chunks(piece) {
                s.push(p);
            }
            s.finish()
        };
        let whole = sieve(b.len().max(1));
        assert_eq!(whole, sieve(1 + b.len() % 97));
        assert!(whole.text.len() <= 64 * 1024);
        let (exp, _, _) = expfmt::parse_lossy_capped(&whole.text, keep);
        assert!(series_count(&exp) <= 100 + 50 * exp.families.len());
    });
}

// ---------------------------------------------------------------------------------------------
// gravity's /status

#[test]
fn fuzz_status_json() {
    let mut seeds: Vec<Vec<u8>> = [
        "status-full.json",
        "status-incremental.json",
        "status-mongo.json",
        "status-no-sliding-window.json",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    // the inner position JSON on its own too: the parser reads it from a string field
    seeds.push(br#"{"name":"p","stage":"Incremental","position":"{\"current_position\":{\"binlog-name\":\"mysql-bin.000042\",\"binlog-pos\":4,\"binlog-gtid\":\"\"},\"start_position\":null}","watermarks":{"a.b":{"ProcessTime":"9999-12-31T23:59:59.999999999+23:59","EventTime":"0000-01-01T00:00:00-23:59"}}}"#.to_vec());
    let corpus = Corpus::new(
        seeds,
        &[
            "\"position\":",
            "\"watermarks\":",
            "\"table-stats\":",
            "\"current_position\":",
            "\"start_position\":",
            "\"binlog-pos\":",
            "\"ProcessTime\":\"9999-12-31T23:59:59.999999999-23:59\"",
            "\"EventTime\":\"0000-01-01T00:00:00+23:59\"",
            "\"stage\":\"Full\"",
            "\"estimated-count\":",
            "\"scanned-count\":",
            "null",
            "true",
            "1.5",
            "-0.0",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        ],
        256 * 1024,
    );
    let now = time::OffsetDateTime::now_utc();
    run("status", &corpus, 2000, |b| {
        // the streaming shortener in front of the parse: the same whatever the pieces, and
        // valid JSON stays valid
        let shorten = |piece: usize| {
            let mut sh = status::Shortener::new();
            for p in b.chunks(piece) {
                sh.push(p);
            }
            sh.into_bytes()
        };
        let short = shorten(b.len().max(1));
        assert_eq!(short, shorten(1 + b.len() % 89));
        assert!(short.len() <= b.len());
        if serde_json::from_slice::<serde_json::Value>(b).is_ok() {
            assert!(serde_json::from_slice::<serde_json::Value>(&short).is_ok());
        }
        let input = text(b);
        let _ = status::parse_position(&input);
        match status::parse_status(b) {
            Ok(st) => {
                assert!(st.watermarks.len() <= b.len() / 8);
                assert!(st.name.len() <= b.len() && st.version.len() <= b.len());
                for w in &st.watermarks {
                    let _ = status::lag_labels(&st.stage, &w.key);
                }
                // the derived families, at the extremes of time too
                for t in [
                    now,
                    time::OffsetDateTime::UNIX_EPOCH,
                    time::macros::datetime!(9999-12-31 23:59:59.999999999 UTC),
                    time::macros::datetime!(0000-01-01 0:00 UTC),
                ] {
                    let f = status::status_families(&st, t, "p");
                    assert!(f.len() <= 64 + st.watermarks.len() * 8);
                }
            }
            Err(e) => assert!(e.to_string().len() < 200),
        }
    });
}

// ---------------------------------------------------------------------------------------------
// gravity's config (TOML and JSON)

#[test]
fn fuzz_gravity_config() {
    let toml_seeds: Vec<Vec<u8>> = [
        "mongo2kafka.toml",
        "mysql-full-dump.toml",
        "mysql2es.toml",
        "mysql2kafka-stream.toml",
        "mysql2mysql-stream.toml",
    ]
    .iter()
    .map(|f| fixture(&format!("configs/{f}")))
    .chain([fixture("proc/4242/root/etc/gravity/config.toml")])
    .collect();
    // the same configs as JSON (gravity reads either)
    let json_seeds: Vec<Vec<u8>> = toml_seeds
        .iter()
        .map(|t| {
            let v: toml::Table = toml::from_str(std::str::from_utf8(t).unwrap()).unwrap();
            serde_json::to_vec_pretty(&v).unwrap()
        })
        .collect();
    let tokens = [
        "[input.config.source]",
        "[output.config.target]",
        "host = ",
        "port = ",
        "password = ",
        "\"host\": ",
        "\"port\": ",
        "\"password\": ",
        "[[output.config.routes]]",
        "match-schema = \"*\"",
        "match-table = \"t?\"",
        "kafka-global-config",
        "brokers = [\"k:9092\", \"[::1]:70000\", \"h:\"]",
        "urls = [\"https://u:p@es:9200\"]",
        "'''",
        "\"\"\"",
        "1979-05-27T07:32:00Z",
        "inf",
        "nan",
    ];
    for (name, seeds, json) in [
        ("gravity_config_toml", toml_seeds, false),
        ("gravity_config_json", json_seeds, true),
    ] {
        let corpus = Corpus::new(seeds, &tokens, 256 * 1024);
        run(name, &corpus, 1000, |b| {
            let input = text(b);
            match gravity_config::parse(&input, json) {
                Ok(cfg) => {
                    assert!(cfg.endpoints.len() <= input.len());
                    assert!(cfg.routes.len() <= gravity_config::MAX_ROUTES);
                    let shown = format!("{cfg:?}");
                    for e in &cfg.endpoints {
                        let _ = e.address();
                        let pw = e.password.expose();
                        // a password long enough not to occur by chance, and only in its
                        // own field of the input (the mutator copies text into host names
                        // too), is never printed
                        if pw.len() >= 12 && input.matches(pw).count() == 1 {
                            assert!(!shown.contains(pw), "password in Debug output");
                        }
                    }
                    for r in &cfg.routes {
                        let _ = r.matches("db", "table");
                        let _ = gravity_config::glob_match(&r.match_table, prefix(&input, 300));
                    }
                }
                Err(e) => assert!(e.len() < 200, "long error: {e}"),
            }
            let _ = gravity_config::split_host_port(prefix(&input, 1000), 3306);
        });
    }
}

// ---------------------------------------------------------------------------------------------
// gravity's log: the three formats, format detection, classification

#[test]
fn fuzz_log_records() {
    let seeds: Vec<Vec<u8>> = ["gravity.log", "gravity-text.log", "gravity-console.log"]
        .iter()
        .flat_map(|f| {
            let all = fixture(f);
            // seeds of up to 8 lines each: whole files are mostly lines already tried
            let lines: Vec<Vec<u8>> = all.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
            lines
                .chunks(8)
                .map(|c| c.join(&b'\n'))
                .collect::<Vec<_>>()
        })
        .chain([
            b"panic: runtime error: index out of range [3] with length 3\n\ngoroutine 1 [running]:\nmain.main()\n\t/src/main.go:12 +0x1d\nexit status 2".to_vec(),
            b"fatal error: concurrent map writes".to_vec(),
            br#"{"level":"error","msg":"[output.mysql] Error 1213: Deadlock found \u00e9 \ud83d\ude00","time":"2024-01-01T00:00:00Z","file":"x.go","line":4294967296,"pipeline":"p"}"#.to_vec(),
        ])
        .collect();
    let corpus = Corpus::new(
        seeds,
        &[
            "level=",
            "msg=",
            "time=",
            "\"level\":\"fatal\"",
            "\"msg\":\"",
            "\"line\":",
            "[error]",
            "[fatal]",
            "ERRO",
            "FATA",
            "panic: ",
            "goroutine ",
            "Error 1045",
            "Error 2013",
            "[mysql]",
            "[kafka]",
            "retry",
            "\u{1b}[0m",
        ],
        64 * 1024,
    );
    run("log_records", &corpus, 2000, |b| {
        let input = text(b);
        let _ = record::detect_format_votes(input.lines(), 100);
        for line in input.lines() {
            let _ = record::detect_format(line);
            for format in [LogFormat::Json, LogFormat::Text, LogFormat::Console] {
                match record::parse_line(line, format) {
                    Ok(rec) => {
                        for part in [rec.time, rec.file, rec.pipeline].into_iter().flatten() {
                            assert!(inside(line, part), "field not from the line");
                        }
                        // unescaping grows a message by at most a replacement character
                        // per escape
                        assert!(rec.msg.len() <= 2 * line.len() + 4, "message grew");
                        let c = classify::classify(&rec);
                        let _ = (c.component.as_str(), c.error_type.as_str());
                    }
                    Err(e) => assert!(e.to_string().len() < 120),
                }
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// /proc and cgroup files

#[test]
fn fuzz_proc_files() {
    // the four files of /proc/<pid> parse_process reads, as one input split at NUL bytes
    let files = ["stat", "status", "io", "limits"];
    let mut seeds = Vec::new();
    for pid in ["4242", "4343", "1"] {
        let mut s = Vec::new();
        for f in files {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/proc")
                .join(pid)
                .join(f);
            s.extend(std::fs::read(p).unwrap_or_default());
            s.push(0);
        }
        seeds.push(s);
    }
    seeds.push(fixture("proc/stat"));
    let corpus = Corpus::new(
        seeds,
        &[
            "\0",
            ") ",
            "(",
            "btime ",
            "Max open files ",
            "unlimited",
            "read_bytes: ",
            "voluntary_ctxt_switches:\t",
            "Z ",
        ],
        64 * 1024,
    );
    let hosts = [
        process::HostInfo {
            ticks_per_second: 100,
            page_size: 4096,
            boot_time: 1_700_000_000,
        },
        process::HostInfo {
            ticks_per_second: 0,
            page_size: u64::MAX,
            boot_time: u64::MAX,
        },
    ];
    run("proc", &corpus, 2000, |b| {
        let mut parts = b.split(|c| *c == 0).map(|p| text(p).into_owned());
        let mut next = || parts.next();
        let pf = process::ProcFiles {
            stat: next().unwrap_or_default(),
            status: next(),
            io: next(),
            limits: next(),
            fd_count: Some(b.len() as u64),
        };
        for h in &hosts {
            if let Ok(f) = process::parse_process(&pf, h, "p") {
                assert!(f.len() <= 32);
            }
        }
        let whole = text(b);
        let _ = process::parse_btime(&whole);
    });
}

#[test]
fn fuzz_cgroup_files() {
    let seeds = vec![
        fixture("proc/4242/cgroup"),
        fixture("proc/4343/cgroup"),
        fixture("proc/4343/root/sys/fs/cgroup/memory.events"),
        fixture("proc/4343/root/sys/fs/cgroup/memory.max"),
        b"12:memory:/docker/abc\n11:cpu,cpuacct:/x\n0::/system.slice/gravity.service\n".to_vec(),
        b"oom_kill_disable 0\nunder_oom 0\noom_kill 3\n".to_vec(),
        b"9223372036854771712\n".to_vec(),
    ];
    let corpus = Corpus::new(
        seeds,
        &["0::", ":memory:", "oom_kill ", "max", "/../"],
        16 * 1024,
    );
    run("cgroup", &corpus, 2000, |b| {
        let input = text(b);
        let paths = cgroup::parse_proc_cgroup(&input);
        for p in [&paths.v2, &paths.v1_memory].into_iter().flatten() {
            assert!(p.len() <= input.len());
        }
        let _ = cgroup::parse_memory_max(&input);
        let _ = cgroup::parse_limit_in_bytes(&input);
        let _ = cgroup::parse_oom_kills(&input);
    });
}

#[test]
fn fuzz_net_tcp() {
    let seeds = vec![fixture("proc/4242/net/tcp"), fixture("proc/4242/net/tcp6")];
    let corpus = Corpus::new(
        seeds,
        &[
            ": ",
            "0100007F:0CEA",
            "00000000000000000000FFFF0100007F:1F90",
            " 01 ",
            " 0A ",
            "socket:[",
        ],
        256 * 1024,
    );
    run("net_tcp", &corpus, 2000, |b| {
        let input = text(b);
        let entries = sockets::parse_net_tcp(&input);
        assert!(entries.len() <= input.lines().count());
        let inodes: HashSet<u64> = entries.iter().map(|e| e.inode).collect();
        let ips: Vec<_> = entries.iter().take(4).map(|e| e.remote.ip()).collect();
        let n = sockets::count_established(&entries, &inodes, &ips, 3306);
        assert!(n as usize <= entries.len());
        for word in input.split_whitespace().take(64) {
            let _ = sockets::parse_hex_addr(word);
            let _ = sockets::socket_inode(word);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// --web.config.file

struct Pki {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    hash: String,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let mut p =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, "fuzz");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.self_signed(&key).unwrap();
        Pki {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            hash: bcrypt::hash("fuzz-password", 4).unwrap(),
        }
    })
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

/// Web config keys whose bad values the error quotes on purpose: none holds a secret.
const ECHOED_KEYS: &[&str] = &[
    "tls_server_config.cipher_suites",
    "tls_server_config.curve_preferences",
    "tls_server_config.min_version",
    "tls_server_config.max_version",
    "tls_server_config.client_auth_type",
    "tls_server_config.client_allowed_sans",
    "http_server_config.headers",
    "rate_limit.interval",
];

#[test]
fn fuzz_web_config() {
    let pki = pki();
    let tls = format!(
        "tls_server_config:\n  cert: |\n{}  key: |\n{}",
        indent(&pki.cert_pem),
        indent(&pki.key_pem)
    );
    let seeds: Vec<Vec<u8>> = [
        format!(
            "{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca: |\n{}  client_allowed_sans: [localhost, \"127.0.0.1\"]\n  min_version: TLS12\n  max_version: TLS13\n  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305]\n  curve_preferences: [X25519, CurveP256]\n  prefer_server_cipher_suites: true\n",
            indent(&pki.cert_pem)
        ),
        format!(
            "basic_auth_users:\n  alice: {}\n  bob: '{}'\nhttp_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n    X-Content-Type-Options: nosniff\nrate_limit:\n  interval: 100ms\n  burst: 10\n",
            pki.hash, pki.hash
        ),
        format!("{tls}basic_auth_users:\n  alice: \"{}\"\n", pki.hash),
        "tls_server_config:\n  cert_file: tests/fixtures/does-not-exist.pem\n  key_file: k.pem\n".to_string(),
        "{}\n".to_string(),
        "rate_limit: {interval: 1h, burst: 4294967295}\n".to_string(),
    ]
    .into_iter()
    .map(String::into_bytes)
    .collect();
    let corpus = Corpus::new(
        seeds,
        &[
            "tls_server_config:\n",
            "basic_auth_users:\n",
            "  client_auth_type: ",
            "RequireAnyClientCert",
            "VerifyClientCertIfGiven",
            "TLS10",
            "TLS13",
            "$2y$04$",
            "$2b$31$",
            "-----BEGIN CERTIFICATE-----\n",
            "-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\n",
            "MIIB",
            ": |\n",
            ": >-\n",
            "&a ",
            "*a",
            "!!binary ",
            "- ",
            "~",
            "9999999999999999999h",
            "5000000000000000000s",
        ],
        64 * 1024,
    );
    let path = Path::new("web-config.yml");
    // the key's base64 lines: none may be quoted back, whole or in part
    let key_body: Vec<&str> = pki
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.as_bytes().chunks(16))
        .filter(|c| c.len() == 16)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    run("web_config", &corpus, 1000, |b| {
        let input = text(b);
        match WebConfig::from_text(path, &input) {
            Ok(c) => assert!(c.summary().len() < 1000),
            // a file that cannot be read is named: the path is the user's own, not a secret
            Err(web_config::WebConfigError::Read { .. }) => {}
            // a bad value of a key that holds no secret (a suite, a version, a header) is
            // named in the error on purpose; the fuzzer splices key text into any of them
            Err(web_config::WebConfigError::Invalid { key, .. })
                if ECHOED_KEYS.iter().any(|k| key.starts_with(k)) => {}
            Err(e) => {
                let msg = e.to_string();
                // the key is never quoted back
                assert!(
                    !key_body.iter().any(|l| msg.contains(l)),
                    "error quotes the key: {msg}"
                );
                assert!(!msg.contains(&pki.hash), "error quotes a hash: {msg}");
            }
        }
    });

    // the certificate readers, on mutated DER
    let mut corpus = Corpus::new(vec![pki.cert_der.clone()], &[], 16 * 1024);
    // DER headers: a long SEQUENCE, the subjectAltName OID
    corpus.tokens.push(vec![0x30, 0x82]);
    corpus.tokens.push(vec![0x06, 0x03, 0x55, 0x1d, 0x11]);
    corpus.tokens.push(vec![0x84, 0xff, 0xff, 0xff, 0xff]);
    run("cert_der", &corpus, 2000, |b| {
        if let Some(sans) = web_config::cert_sans(b) {
            assert!(sans.iter().map(String::len).sum::<usize>() <= b.len() * 4);
        }
        let _ = web_config::cert_not_after(b);
    });

    // the Authorization header
    let corpus = Corpus::new(
        vec![
            b"Basic YWxpY2U6ZnV6ei1wYXNzd29yZA==".to_vec(),
            b"basic Ym9iOg==".to_vec(),
        ],
        &["=", "Basic ", ":", "\u{80}"],
        8 * 1024,
    );
    run("basic_auth_header", &corpus, 2000, |b| {
        if let Ok(v) = hyper::header::HeaderValue::from_bytes(b) {
            if let Some((user, pass)) = web_config::parse_basic(&v) {
                assert!(user.len() + pass.len() <= b.len());
            }
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Kafka and Mongo replies

fn kafka_frame(correlation_id: i32, error: i16, keys: &[(i16, i16, i16)]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&correlation_id.to_be_bytes());
    f.extend_from_slice(&error.to_be_bytes());
    f.extend_from_slice(&(keys.len() as i32).to_be_bytes());
    for (k, lo, hi) in keys {
        for v in [k, lo, hi] {
            f.extend_from_slice(&v.to_be_bytes());
        }
    }
    f
}

#[test]
fn fuzz_kafka_reply() {
    let seeds = vec![
        kafka_frame(7, 0, &[(0, 0, 9), (1, 0, 13), (3, 0, 12), (18, 0, 3)]),
        kafka_frame(7, 35, &[]),
        kafka_frame(7, 0, &[(18, 0, 0)]),
    ];
    let corpus = Corpus::new(seeds, &[], 64 * 1024);
    run(
        "kafka_reply",
        &corpus,
        2000,
        |b| match kafka::decode_response(b, 7) {
            Ok(keys) => {
                assert!(!keys.is_empty() && keys.len() <= kafka::MAX_API_KEYS);
                assert_eq!(keys.len() * 6 + 10, b.len());
                assert!(keys.iter().any(|k| k.api_key == kafka::API_VERSIONS_KEY));
            }
            Err(e) => {
                let _ = e.reason();
                assert!(e.to_string().len() < 200);
            }
        },
    );
}

/// The (API key, version) of a topic-reader reply, from its first byte: Metadata v1..=8,
/// ListOffsets v1..=5, Fetch v4..=11 (the versions `kafka_topic` requests).
fn topic_api(selector: u8) -> (i16, i16) {
    let all: Vec<(i16, i16)> = (1..=8)
        .map(|v| (3, v))
        .chain((1..=5).map(|v| (2, v)))
        .chain((4..=11).map(|v| (1, v)))
        .collect();
    all[usize::from(selector) % all.len()]
}

/// Replies of the topic reader, each its selector byte (see [`topic_api`]) then the body:
/// Metadata v1 and v8, ListOffsets v1 and v5, Fetch v4 and v11.
fn topic_reply_seeds() -> Vec<Vec<u8>> {
    use kafka_protocol::messages::{
        fetch_response as f, list_offsets_response as l, metadata_response as m, BrokerId,
        TopicName,
    };
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let name = || TopicName(StrBytes::from_static_str("canary"));
    let seed = |selector: u8, msg: &dyn Fn(i16) -> Vec<u8>| {
        let mut s = vec![selector];
        s.extend(msg(topic_api(selector).1));
        s
    };
    fn enc<T: Encodable>(msg: T, v: i16) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        msg.encode(&mut b, v).unwrap();
        b.to_vec()
    }
    let metadata = |v: i16| {
        let mut p = m::MetadataResponsePartition::default()
            .with_leader_id(BrokerId(1))
            .with_replica_nodes(vec![BrokerId(1), BrokerId(2)])
            .with_isr_nodes(vec![BrokerId(1)]);
        if v >= 5 {
            p = p.with_offline_replicas(vec![BrokerId(2)]);
        }
        let broker = m::MetadataResponseBroker::default()
            .with_node_id(BrokerId(1))
            .with_host(StrBytes::from_static_str("kafka"))
            .with_port(9092);
        let topic = m::MetadataResponseTopic::default()
            .with_name(Some(name()))
            .with_partitions(vec![p.clone(), p.with_partition_index(1)]);
        enc(
            m::MetadataResponse::default()
                .with_brokers(vec![broker.clone(), broker.with_node_id(BrokerId(2))])
                .with_topics(vec![topic]),
            v,
        )
    };
    let list_offsets = |v: i16| {
        let p = l::ListOffsetsPartitionResponse::default().with_offset(42);
        enc(
            l::ListOffsetsResponse::default().with_topics(vec![
                l::ListOffsetsTopicResponse::default()
                    .with_name(name())
                    .with_partitions(vec![p.clone(), p.with_partition_index(1)]),
            ]),
            v,
        )
    };
    let fetch = |v: i16| {
        let p = f::PartitionData::default()
            .with_aborted_transactions(Some(vec![f::AbortedTransaction::default()]))
            .with_records(Some(bytes::Bytes::from_static(b"not a batch")));
        enc(
            f::FetchResponse::default().with_responses(vec![f::FetchableTopicResponse::default()
                .with_topic(name())
                .with_partitions(vec![p.clone(), p.with_partition_index(1)])]),
            v,
        )
    };
    vec![
        seed(0, &metadata),
        seed(7, &metadata),
        seed(8, &list_offsets),
        seed(12, &list_offsets),
        seed(13, &fetch),
        seed(20, &fetch),
    ]
}

#[test]
fn fuzz_kafka_topic_reply() {
    let seeds = topic_reply_seeds();
    for s in &seeds {
        let (api, v) = topic_api(s[0]);
        kafka_topic::decode_response(api, v, bytes::Bytes::copy_from_slice(&s[1..])).unwrap();
    }
    let corpus = Corpus::new(seeds, &[], 64 * 1024);
    run("kafka_topic_reply", &corpus, 2000, |b| {
        let Some((&selector, body)) = b.split_first() else {
            return;
        };
        let (api, v) = topic_api(selector);
        if let Err(e) = kafka_topic::decode_response(api, v, bytes::Bytes::copy_from_slice(body)) {
            assert!(e.to_string().len() < 200, "{e}");
        }
    });
}

/// A BSON document of `(type, name, value bytes)` elements.
fn bson(elements: &[(u8, &str, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (t, name, v) in elements {
        body.push(*t);
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(v);
    }
    let mut d = ((body.len() + 5) as i32).to_le_bytes().to_vec();
    d.extend(body);
    d.push(0);
    d
}

fn bson_str(s: &str) -> Vec<u8> {
    let mut v = ((s.len() + 1) as i32).to_le_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    v
}

fn op_msg(response_to: i32, flags: u32, sections: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&[0; 4]);
    m.extend_from_slice(&99i32.to_le_bytes());
    m.extend_from_slice(&response_to.to_le_bytes());
    m.extend_from_slice(&2013i32.to_le_bytes());
    m.extend_from_slice(&flags.to_le_bytes());
    for (kind, payload) in sections {
        m.push(*kind);
        m.extend_from_slice(payload);
    }
    if flags & 1 != 0 {
        m.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    }
    let len = (m.len() as i32).to_le_bytes();
    m[..4].copy_from_slice(&len);
    m
}

#[test]
fn fuzz_mongo_reply() {
    let hello = bson(&[
        (0x08, "isWritablePrimary", vec![0]),
        (0x08, "secondary", vec![1]),
        (0x02, "setName", bson_str("rs0")),
        (0x10, "maxWireVersion", 21i32.to_le_bytes().to_vec()),
        (
            0x03,
            "nested",
            bson(&[(0x04, "arr", bson(&[(0x02, "0", bson_str("a"))]))]),
        ),
        (
            0x05,
            "bin",
            [&3i32.to_le_bytes()[..], &[4, 1, 2, 3]].concat(),
        ),
        (0x07, "oid", vec![7; 12]),
        (0x11, "ts", vec![1, 0, 0, 0, 2, 0, 0, 0]),
        (0x09, "dt", (-5i64).to_le_bytes().to_vec()),
        (0x0a, "nothing", vec![]),
        (0x12, "big", i64::MIN.to_le_bytes().to_vec()),
        (0x01, "ok", 1.0f64.to_le_bytes().to_vec()),
    ]);
    let legacy = bson(&[
        (0x08, "ismaster", vec![1]),
        (0x02, "msg", bson_str("isdbgrid")),
        (0x10, "ok", 1i32.to_le_bytes().to_vec()),
    ]);
    let failed = bson(&[
        (0x01, "ok", 0.0f64.to_le_bytes().to_vec()),
        (
            0x02,
            "errmsg",
            bson_str("command hello requires authentication"),
        ),
        (0x10, "code", 13i32.to_le_bytes().to_vec()),
        (0x02, "codeName", bson_str("Unauthorized")),
    ]);
    let mut sequence = 20i32.to_le_bytes().to_vec();
    sequence.extend_from_slice(b"documents\0");
    sequence.extend_from_slice(&[5, 0, 0, 0, 0, 0]);
    let seeds = vec![
        op_msg(5, 0, &[(0, hello.clone())]),
        op_msg(5, 1, &[(1, sequence), (0, legacy)]),
        op_msg(5, 2, &[(0, failed)]),
    ];
    let corpus = Corpus::new(seeds, &["\x02", "\x03", "\x04", "\x10", "\x12"], 64 * 1024);
    run(
        "mongo_reply",
        &corpus,
        2000,
        |b| match mongo::decode_reply(b, 5) {
            Ok(r) => {
                if let Some(s) = &r.set_name {
                    assert!(s.len() <= 4 * 64);
                }
            }
            Err(e) => {
                let _ = e.reason();
                assert!(e.to_string().len() < 4 * 300);
            }
        },
    );
}

// ---------------------------------------------------------------------------------------------
// Regressions: what the harnesses above found, each as a plain test

/// `/proc/<pid>/stat` with CPU times and a resident size whose products and sums do not fit
/// in 64 bits: the process collector panicked ("attempt to multiply with overflow") where
/// overflow checks are on, and wrapped to a wrong figure where they are off.
#[test]
fn regression_proc_stat_huge_values() {
    let max = u64::MAX;
    let stat = format!(
        "4242 (gravity) S 1 4242 4242 0 -1 4194560 1 0 0 0 {max} {max} 0 0 20 0 12 0 {max} {max} {max} 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
    );
    let files = process::ProcFiles {
        stat,
        ..Default::default()
    };
    let host = process::HostInfo {
        ticks_per_second: 100,
        page_size: 4096,
        boot_time: 1_700_000_000,
    };
    let f = process::parse_process(&files, &host, "p").unwrap();
    let rss = f
        .value(
            "gravity_process_resident_memory_bytes",
            &[("pipeline", "p")],
        )
        .unwrap();
    assert!(rss >= 4096.0 * 1.8e19, "resident size wrapped: {rss}");
    let cpu = f
        .value("gravity_process_cpu_seconds_total", &[("pipeline", "p")])
        .unwrap();
    assert!(cpu >= 3.6e17, "CPU time wrapped: {cpu}");
}

/// serde's type errors quote the offending scalar: a web config that is one string (a key
/// pasted at the wrong indentation, say) or a bcrypt hash where a map belongs had it quoted
/// back in the error, which is logged.
#[test]
fn regression_web_config_errors_do_not_quote_values() {
    let path = Path::new("web-config.yml");
    let hash = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi";
    for (text, secret) in [
        (
            "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg",
            "MIGHAgEAMBMGByqGSM49",
        ),
        (&*format!("basic_auth_users: \"{hash}\"\n"), hash),
        // FUZZ_SEED=7 case 496: a hash folded into a user name
        (
            &*format!("basic_auth_users:\n  \"alice  {hash}\": 1\n"),
            "QOauhQNbBCuQ",
        ),
        (
            "tls_server_config:\n  cert_file: \"c.pem\"\n  key_file: [\"s3cr3t-in-a-list\"]\n",
            "s3cr3t-in-a-list",
        ),
        (
            "rate_limit: \"hunter2-as-a-string\"\n",
            "hunter2-as-a-string",
        ),
        // a key line that became a field name
        (
            "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg: 1\n",
            "MIGHAgEAMBMGByqGSM49",
        ),
    ] {
        let Err(e) = WebConfig::from_text(path, text) else {
            panic!("{text:?} was accepted");
        };
        let msg = e.to_string();
        assert!(!msg.contains(secret), "error quotes {secret:?}: {msg}");
        assert!(msg.contains("web-config.yml"), "error lost its file: {msg}");
    }
}

/// gravity's output counter's `cat2` label is copied as the flow's operation: past the cap
/// of `{schema,table,op}` keys, one `_other` series was made per distinct operation, so a
/// gravity with many distinct `cat2` values got unbounded series past the cap.
#[test]
fn regression_flow_cap_bounds_other_series() {
    let rates: Vec<(gravity_metrics::FlowKey, f64)> = (0..10_000)
        .map(|i| {
            (
                gravity_metrics::FlowKey {
                    schema: format!("s{i}"),
                    table: "t".into(),
                    op: format!("op{i}"),
                },
                1.0,
            )
        })
        .collect();
    let capped = gravity_metrics::cap_flows(rates, 100);
    assert!(
        capped.len() <= 100 + gravity_metrics::MAX_OTHER_OPS,
        "{} series",
        capped.len()
    );
    let total: f64 = capped.iter().map(|(_, v)| v).sum();
    assert_eq!(total, 10_000.0, "the overflow is summed, not dropped");
}

/// A histogram's `_bucket` samples written after its HELP line but before its TYPE line
/// went to an untyped family `x_bucket`; the pass-through then wrote the histogram's HELP
/// and TYPE lines first and the bucket lines after them, where they read as the histogram's
/// samples: the exposition passed on was not the one parsed. A TYPE line after samples of
/// the family's suffixed names is now rejected, like one after the family's own samples.
#[test]
fn regression_expfmt_type_after_suffixed_samples() {
    for input in [
        "# HELP x h\nx_bucket{le=\"1\"} 1\n# TYPE x histogram\n",
        "# HELP y h\ny_count 1\ny_sum 2\n# TYPE y summary\ny{quantile=\"0.5\"} 1\n",
    ] {
        let err = expfmt::parse(input).unwrap_err();
        assert_eq!(err.reason(), "TYPE line after the family's samples");
        let (exp, errors) = expfmt::parse_lossy(input);
        assert_eq!(errors.len(), 1);
        check_exposition(input, &exp);
    }
}

/// A `/proc/<pid>/limits` line with fewer than three fields: procfs' parser subtracted
/// past zero (a panic where overflow checks are on). The soft limit of open files is now
/// read by the exporter's own total parser.
#[test]
fn regression_proc_limits_short_line() {
    let files = process::ProcFiles {
        stat: String::from_utf8(fixture("proc/4242/stat")).unwrap(),
        limits: Some(
            "Limit                     Soft Limit           Hard Limit           Units\nMax stack size\nMax open files            1024                 4096                 files\n"
                .to_string(),
        ),
        ..Default::default()
    };
    let host = process::HostInfo {
        ticks_per_second: 100,
        page_size: 4096,
        boot_time: 0,
    };
    let f = process::parse_process(&files, &host, "p").unwrap();
    assert_eq!(
        f.value("gravity_process_max_fds", &[("pipeline", "p")]),
        Some(1024.0)
    );
    for (limits, want) in [
        (
            "Max open files            unlimited            unlimited            files\n",
            Some(f64::INFINITY),
        ),
        ("Max open files\n", None),
        ("Max open files            x  y  files\n", None),
    ] {
        assert_eq!(process::parse_max_open_files(limits), want, "{limits:?}");
    }
}

/// `/proc/<pid>/stat` texts procfs' `Stat` parser slices out of bounds on (a panic in every
/// build): the comm's parentheses first, reversed, or last. They are now refused as
/// invalid before procfs sees them.
#[test]
fn regression_proc_stat_bad_parentheses() {
    let host = process::HostInfo {
        ticks_per_second: 100,
        page_size: 4096,
        boot_time: 0,
    };
    for stat in [
        "1 (systemd)",
        "(gravity) S 1",
        "4242 )gravity( S 1",
        "1 (",
        "4242 (g)x",
        "1 \u{fffd}(systemd) S 0 1",
        "1 (systemd)\u{fffd} S 0 1",
    ] {
        let files = process::ProcFiles {
            stat: stat.to_string(),
            ..Default::default()
        };
        assert!(
            process::parse_process(&files, &host, "p").is_err(),
            "{stat:?} accepted"
        );
    }
}

/// `/proc/<pid>/io` with a field name ending in a multi-byte character: procfs' `Io` parser
/// cut the name's last byte off (a panic in every build). `io` and `status` are now read
/// by the exporter's own total parsers.
#[test]
fn regression_proc_io_multibyte_field() {
    let host = process::HostInfo {
        ticks_per_second: 100,
        page_size: 4096,
        boot_time: 0,
    };
    let files = process::ProcFiles {
        stat: String::from_utf8(fixture("proc/4242/stat")).unwrap(),
        io: Some("rchar: 1\nread_bytes: 7\nwrite_bytes: 9\n\u{e9}\u{e9} 3\n".to_string()),
        status: Some("Name:\tgravity\nvoluntary_ctxt_switches:\t5\n\u{e9}:\t1\nnonvoluntary_ctxt_switches:\t6\n".to_string()),
        ..Default::default()
    };
    let f = process::parse_process(&files, &host, "p").unwrap();
    let p = [("pipeline", "p")];
    assert_eq!(
        f.value("gravity_process_io_read_bytes_total", &p),
        Some(7.0)
    );
    assert_eq!(
        f.value("gravity_process_io_write_bytes_total", &p),
        Some(9.0)
    );
    assert_eq!(
        f.value(
            "gravity_process_context_switches_total",
            &[("pipeline", "p"), ("kind", "involuntary")]
        ),
        Some(6.0)
    );
}

/// The name of an unknown field is cut at the fixed text after it, not at the next
/// backquote: a name holding backquotes (key text spliced into a line) was quoted in part.
#[test]
fn regression_web_config_unknown_field_with_backquotes() {
    let text = "rate_limit:\n  a`b`MIGHAgEAMBMGByqGSM49AgEGCCqGSM49`AwEHBG0w: 1\n";
    let msg = WebConfig::from_text(Path::new("w.yml"), text)
        .unwrap_err()
        .to_string();
    assert!(!msg.contains("MIGHAgEAMBMG"), "{msg}");
    assert!(!msg.contains("AwEHBG0w"), "{msg}");
    assert!(msg.contains("expected `interval` or `burst`"), "{msg}");
}

/// A HELP line for `h_sum`, then a histogram `h` whose `h_sum` sample comes after other
/// families: the sample went to the HELP-only untyped family `h_sum`, and the pass-through
/// then wrote it before `h`'s TYPE line, where it no longer parses. A sample now goes to a
/// histogram or summary it fits before a family of its exact name that has nothing but a
/// HELP line.
#[test]
fn regression_expfmt_help_only_family_of_a_suffixed_name() {
    let input = "# HELP h_sum Help.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nother 1\nh_sum 3.5\nh_count 2\n";
    let exp = expfmt::parse(input).unwrap();
    let h = exp.family("h").unwrap();
    assert_eq!(h.samples.len(), 3, "{h:?}");
    check_exposition(input, &exp);
}
