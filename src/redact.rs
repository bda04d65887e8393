//! Masks secrets in free text from gravity (log messages, error strings) and in the
//! exporter's own outputs before anyone sees them.
//!
//! gravity's messages can carry credentials: Go MySQL DSNs (`user:password@tcp(host:3306)/db`),
//! URLs with user info (`mongodb://user:pw@host`), config structs dumped with `%+v`
//! (`Password:xyz`), key/value pairs (`password=xyz`, `"password":"x y"`) and replicated DDL
//! (`IDENTIFIED BY 'xyz'`). [`Redactor::redact`] masks, in this order:
//! 1. **by value**, every secret known: the passwords of gravity's config (the endpoints'
//!    `Secret`s) and the exporter's own (the password of `--gravity.url`'s user info), each
//!    also in its percent-decoded, JSON-escaped and `Debug`-escaped spellings, wherever they
//!    appear (see [`register_secret`]);
//! 2. `IDENTIFIED BY <value>` and `SET PASSWORD … = <value>`, quoted values with SQL's `''`
//!    and backslash escapes;
//! 3. the password of DSN-like `user:<password>@` text, also with spaces when the DSN goes on
//!    with `@tcp(`, `@unix(` or `@udp(`;
//! 4. the value after `password`/`passwd`/`pwd`/`passphrase`/`secret`/`token`/`api_key`/
//!    `access_key`/`private_key`/`secret_key`/`credential(s)` and `:` or `=`: a quoted value whole (spaces,
//!    commas, escapes), an unquoted one up to the next blank (commas included). MySQL's
//!    `using password: YES/NO` is kept: it says whether a password was sent, not which;
//! 5. `Authorization: Basic|Bearer <credentials>`, `Bearer <token>`, `--password <value>`.
//!
//! Every mask is `***`. Redaction runs on the whole (bounded) text before it is shortened,
//! so a cut never leaves part of a secret behind. The exporter's own log goes through
//! [`redact_known`] too ([`RedactingWriter`]), as do `check`'s outputs.

use std::borrow::Cow;
use std::io::{self, Write};
use std::sync::{LazyLock, RwLock};

use regex::{Captures, Regex};
use std::fmt;

/// What a masked secret reads as.
pub const MASK: &str = "***";

/// Known secrets shorter than this are only masked by the patterns (masking every "ab" in a
/// log would make it unreadable without hiding much).
pub const MIN_KNOWN_LEN: usize = 3;
/// At most this many secret spellings are kept in the process-wide list.
const MAX_KNOWN: usize = 512;

/// A double-quoted value with backslash escapes, or a single-quoted one with SQL's `''` or
/// backslash escapes.
const QUOTED: &str = r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|''|\\.)*'"#;

static IDENTIFIED_BY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(?i)(identified\s+(?:with\s+\S+\s+)?by\s+(?:password\s+)?)({QUOTED}|\S+)"#
    ))
    .expect("static regex is valid")
});
static SET_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(?i)(set\s+password\b[^=;]{{0,200}}=\s*(?:password\s*\(\s*)?)({QUOTED}|[^\s;)]+)"#
    ))
    .expect("static regex is valid")
});
static DSN_SPACED: LazyLock<Regex> = LazyLock::new(|| {
    // Go's DSN `user:pass word@tcp(host)/db`: a password with blanks, ended by the protocol.
    // No parentheses in it: otherwise `tcp(127.0.0.1:3307)/db: Error …; u:p@tcp(` would mask
    // the host and the server's error text between two DSNs of one message.
    Regex::new(r#"([^\s:@/()'"]+):(\S[^@\n()]*?)@((?:tcp|unix|udp)\()"#)
        .expect("static regex is valid")
});
static DSN: LazyLock<Regex> = LazyLock::new(|| {
    // optional URL scheme, user, then the password up to the last `@` of the word (Go's DSN
    // parser splits at the last `@` too)
    Regex::new(r#"([A-Za-z][A-Za-z0-9+.-]*://)?([^\s:@/()'"]*):\S*@"#)
        .expect("static regex is valid")
});
static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(?i)((?:(?:api|access|private|secret)[_-]?key|pass(?:word|wd|phrase)?|pwd|secret|token|credentials?))(\\?["']?\s*[:=]\s*)({QUOTED}|\\"(?:[^"\\]|\\[^"])*\\"|["']?[^\s"'&]+)"#
    ))
    .expect("static regex is valid")
});
static AUTHORIZATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)((?:authorization\s*["']?\s*[:=]\s*["']?\s*(?:basic|bearer|token|digest)?|\bbearer)\s+)([A-Za-z0-9+/=._~-]+)"#)
        .expect("static regex is valid")
});
static DASH_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r#"(?i)((?:^|\s)--?(?:password|passwd|pwd)\s+)({QUOTED}|\S+)"#
    ))
    .expect("static regex is valid")
});

/// Secrets known to the whole process (the exporter's own flags, gravity's config).
static KNOWN: LazyLock<RwLock<Vec<String>>> = LazyLock::new(|| RwLock::new(Vec::new()));

/// The spellings under which `secret` may appear in text: as is, percent-decoded, JSON- and
/// `Debug`-escaped.
fn spellings(secret: &str) -> Vec<String> {
    let mut v = vec![secret.to_string()];
    if let Some(d) = percent_decode(secret) {
        v.push(d);
    }
    for s in v.clone() {
        if let Ok(j) = serde_json::to_string(&s) {
            v.push(j.trim_matches('"').to_string());
        }
        let d = format!("{s:?}");
        v.push(d.trim_matches('"').to_string());
    }
    v.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    v.dedup();
    v
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |k: usize| b.get(k).and_then(|h| (*h as char).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok().filter(|d| d != s)
}

/// Adds a secret to the process-wide list masked by value everywhere (the exporter's log,
/// the status page, `/api/status`, `check`). Secrets shorter than [`MIN_KNOWN_LEN`] are left
/// to the patterns.
pub fn register_secret(secret: &str) {
    if secret.chars().count() < MIN_KNOWN_LEN {
        return;
    }
    let new = spellings(secret);
    let mut known = match KNOWN.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let mut changed = false;
    for s in new {
        if known.len() < MAX_KNOWN && s.chars().count() >= MIN_KNOWN_LEN && !known.contains(&s) {
            known.push(s);
            changed = true;
        }
    }
    if changed {
        known.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    }
}

/// Registers passwords (gravity's config's) unless already known.
pub fn register_passwords<'a>(passwords: impl IntoIterator<Item = &'a Secret>) {
    for p in passwords {
        let pw = p.expose();
        let known = KNOWN
            .read()
            .map(|k| k.iter().any(|s| s == pw))
            .unwrap_or(false);
        if !known {
            register_secret(pw);
        }
    }
}

fn known() -> Vec<String> {
    match KNOWN.read() {
        Ok(g) => g.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// Masks the process-wide known secrets and the patterns (for the exporter's own log and
/// `check`'s output).
pub fn redact_known(text: &str) -> String {
    Redactor::new(Vec::<String>::new()).redact(text)
}

/// Masks passwords; holds the known ones (its `Debug` never shows them).
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .finish()
    }
}

fn quoted_mask(v: &str) -> String {
    if v.starts_with("\\\"") {
        format!("\\\"{MASK}\\\"")
    } else if v.starts_with('"') && v.len() > 1 && v.ends_with('"') {
        format!("\"{MASK}\"")
    } else if v.starts_with('\'') && v.len() > 1 && v.ends_with('\'') {
        format!("'{MASK}'")
    } else {
        MASK.to_string()
    }
}

fn is_masked(v: &str) -> bool {
    v.trim_matches(|c| c == '"' || c == '\'' || c == '\\') == MASK
}

impl Redactor {
    /// A redactor for these known passwords (empty ones are ignored; longest masked first),
    /// in addition to the process-wide ones ([`register_secret`]).
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .flat_map(|s| spellings(&s))
            .chain(known())
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// A redactor for these passwords (gravity's config's, as far as it is known; registered
    /// process-wide) and the process-wide ones.
    pub fn for_passwords<'a>(passwords: impl IntoIterator<Item = &'a Secret> + Clone) -> Redactor {
        register_passwords(passwords.clone());
        Redactor::new(passwords.into_iter().map(|p| p.expose().to_string()))
    }

    /// The text with every secret masked.
    pub fn redact(&self, text: &str) -> String {
        let mut s = text.to_string();
        for secret in &self.secrets {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), MASK);
            }
        }
        let s = IDENTIFIED_BY.replace_all(&s, |c: &Captures<'_>| format!("{}'{MASK}'", &c[1]));
        let s = SET_PASSWORD.replace_all(&s, |c: &Captures<'_>| format!("{}'{MASK}'", &c[1]));
        let s =
            DSN_SPACED.replace_all(&s, |c: &Captures<'_>| format!("{}:{MASK}@{}", &c[1], &c[3]));
        let s = DSN.replace_all(&s, |c: &Captures<'_>| {
            let scheme = c.get(1).map_or("", |m| m.as_str());
            format!("{scheme}{}:{MASK}@", &c[2])
        });
        let s = KEY_VALUE.replace_all(&s, |c: &Captures<'_>| {
            let v = &c[3];
            let bare = v
                .trim_matches(|c| c == '"' || c == '\'')
                .trim_end_matches([')', ']', '}', ',', ';', '.']);
            if bare.eq_ignore_ascii_case("yes") || bare.eq_ignore_ascii_case("no") || is_masked(v) {
                c[0].to_string()
            } else {
                format!("{}{}{}", &c[1], &c[2], quoted_mask(v))
            }
        });
        let s = AUTHORIZATION.replace_all(&s, |c: &Captures<'_>| {
            if is_masked(&c[2]) {
                c[0].to_string()
            } else {
                format!("{}{MASK}", &c[1])
            }
        });
        let s = DASH_PASSWORD.replace_all(&s, |c: &Captures<'_>| {
            format!("{}{}", &c[1], quoted_mask(&c[2]))
        });
        s.into_owned()
    }
}

/// A writer for the exporter's own log: each write (one formatted event) goes out with the
/// known secrets and the patterns masked ([`redact_known`]).
#[derive(Debug)]
pub struct RedactingWriter<W>(pub W);

impl<W: Write> Write for RedactingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text: Cow<'_, str> = String::from_utf8_lossy(buf);
        self.0.write_all(redact_known(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// The first line of `text`, control characters replaced by spaces, cut to at most `max`
/// characters (an ellipsis marks a cut or dropped lines).
pub fn one_line(text: &str, max: usize) -> String {
    let mut lines = text.trim().lines();
    let first = lines.next().unwrap_or("").trim_end();
    let more = lines.next().is_some();
    let mut out = String::with_capacity(first.len().min(max * 4));
    let mut cut = false;
    for (n, c) in first.chars().enumerate() {
        if n >= max {
            cut = true;
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    if cut || more {
        out.push('…');
    }
    out
}

/// Redacts, then keeps the first line shortened to `max` characters. Long input is cut to a
/// bound first; the cut lies far beyond what is kept, so no part of a secret survives it.
pub fn clean(r: &Redactor, text: &str, max: usize) -> String {
    let bound = max.saturating_mul(16).max(1024);
    let head = match text.char_indices().nth(bound) {
        Some((i, _)) => text.get(..i).unwrap_or(text),
        None => text,
    };
    let mut lines = head.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or("");
    let more = lines.next().is_some() || head.len() < text.len();
    let mut s = one_line(&r.redact(first), max);
    if more && !s.ends_with('…') {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r() -> Redactor {
        Redactor::new(["s3cret-source-pw", "", "pw with spaces"])
    }

    #[test]
    fn known_passwords_are_masked_anywhere() {
        let out = r().redact("login failed for repl (s3cret-source-pw) and pw with spaces!");
        assert_eq!(out, "login failed for repl (***) and ***!");
    }

    #[test]
    fn dsn_and_urls() {
        let cases = [
            (
                "dial error: writer:hunter2@tcp(10.0.0.1:3306)/db?charset=utf8",
                "dial error: writer:***@tcp(10.0.0.1:3306)/db?charset=utf8",
            ),
            (
                "mongodb://admin:p%40ss:w0rd@mongo-1:27017/admin",
                "mongodb://admin:***@mongo-1:27017/admin",
            ),
            ("root:@tcp(db:3306)/", "root:***@tcp(db:3306)/"),
            ("u:p@ss@tcp(db:3306)/x", "u:***@tcp(db:3306)/x"),
            // not DSNs: left alone
            (
                "dial tcp 127.0.0.1:3306: connect: connection refused",
                "dial tcp 127.0.0.1:3306: connect: connection refused",
            ),
            (
                "Error 1045: Access denied for user 'repl'@'10.0.0.5' (using password: YES)",
                "Error 1045: Access denied for user 'repl'@'10.0.0.5' (using password: YES)",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(r().redact(input), want, "{input}");
        }
    }

    #[test]
    fn key_values_structs_and_ddl() {
        let cases = [
            ("password=hunter2 user=x", "password=*** user=x"),
            (
                "&{Host:db Username:root Password:topsecret Port:3306}",
                "&{Host:db Username:root Password:*** Port:3306}",
            ),
            (
                r#"{"password":"abc123","x":1}"#,
                r#"{"password":"***","x":1}"#,
            ),
            // an unquoted value runs to the next blank, commas included
            ("PWD = x1, token: tkn", "PWD = *** token: ***"),
            (
                "exec ddl: CREATE USER 'a'@'%' IDENTIFIED BY 'Zz9!';",
                "exec ddl: CREATE USER 'a'@'%' IDENTIFIED BY '***';",
            ),
            (
                "ALTER USER u IDENTIFIED WITH mysql_native_password BY \"q w\"",
                "ALTER USER u IDENTIFIED WITH mysql_native_password BY '***'",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(r().redact(input), want, "{input}");
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let d = format!("{:?}", r());
        assert!(!d.contains("s3cret"), "{d}");
        assert!(d.contains(" redacted]"), "{d}");
    }

    #[test]
    fn clean_cuts_after_redacting() {
        let long = format!("{} s3cret-source-pw tail", "x".repeat(195));
        let c = clean(&r(), &long, 200);
        assert!(!c.contains("s3cret"), "{c}");
        assert!(c.ends_with('…'));
        assert_eq!(c.chars().count(), 201);
        let multi = "first line\n\tgithub.com/x.go:12\nmore";
        assert_eq!(clean(&r(), multi, 200), "first line…");
        assert_eq!(clean(&r(), "a\u{7}b", 200), "a b");
        // a huge line is bounded before the regexes run
        let huge = "y".repeat(10 << 20);
        assert_eq!(clean(&r(), &huge, 200).chars().count(), 201);
    }

    proptest::proptest! {
        #[test]
        fn known_secret_never_survives(prefix in "\\PC{0,300}", suffix in "\\PC{0,300}") {
            let text = format!("{prefix}s3cret-source-pw{suffix}");
            let out = clean(&r(), &text, 200);
            proptest::prop_assert!(!out.contains("s3cret-source-pw"));
            proptest::prop_assert!(out.chars().count() <= 201);
        }
    }

    /// The shared table of secret forms (also asserted against every output of the binary in
    /// `tests/secrets.rs`): none of their fragments survives the redactor.
    #[test]
    fn every_secret_form_of_the_table_is_masked() {
        let table = include_str!("../tests/fixtures/secret-forms.txt");
        let r = Redactor::new(["cfg Pw, with comma Zq35", "urlflag-Zq36"]);
        let mut n = 0;
        for line in table
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (fragments, text) = line.split_once('\t').unwrap();
            let out = r.redact(text);
            for f in fragments.split('|') {
                assert!(
                    !out.contains(f),
                    "{f:?} survives in {out:?} (from {text:?})"
                );
            }
            assert!(out.contains(MASK), "{out:?}");
            n += 1;
        }
        assert!(n >= 30, "only {n} forms");
    }

    #[test]
    fn process_wide_secrets_in_their_spellings() {
        register_secret("p%40ss \"w0rd\" Zq-global");
        let r = Redactor::default();
        assert!(r.secrets.is_empty(), "default holds nothing");
        for text in [
            r#"x p%40ss "w0rd" Zq-global y"#,
            r#"x p@ss "w0rd" Zq-global y"#,
            r#"{"msg":"x p@ss \"w0rd\" Zq-global y"}"#,
        ] {
            let out = redact_known(text);
            assert!(!out.contains("Zq-global"), "{out}");
        }
        register_secret("ab");
        assert_eq!(redact_known("ab cd"), "ab cd", "too short to mask by value");
        let mut w = RedactingWriter(Vec::new());
        w.write_all(b"url=http://u:p%40ss \"w0rd\" Zq-global@h\n")
            .unwrap();
        let out = String::from_utf8(w.0).unwrap();
        assert!(!out.contains("Zq-global"), "{out}");
    }

    #[test]
    fn two_dsns_in_one_message_keep_the_host_and_error_between_them() {
        let r = Redactor::default();
        let out = r.redact(
            "open writer:s3cret@tcp(127.0.0.1:3307)/db: Error 1045: Access denied (using password: YES); repl:pl4nted@tcp(h:3306)/",
        );
        assert!(
            out.contains("writer:***@tcp(127.0.0.1:3307)/db: Error 1045")
                && out.contains("(using password: YES)")
                && out.contains("repl:***@tcp(h:3306)"),
            "{out}"
        );
        assert!(!out.contains("s3cret") && !out.contains("pl4nted"), "{out}");
    }

    #[test]
    fn monitoring_login_passwords_from_files_are_masked_by_value() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "mon1tor Sec,ret-Qx7\n").unwrap();
        let cli = <crate::config::Cli as clap::Parser>::try_parse_from([
            "gravity-exporter",
            "--source.username",
            "monitor",
            "--source.password-file",
            pw.to_str().unwrap(),
        ])
        .unwrap();
        let s = crate::config::Settings::from_flags(cli.flags).unwrap();
        let leak = "login failed for monitor with mon1tor Sec,ret-Qx7 at db:3306";
        assert!(redact_known(leak).contains("Sec,ret-Qx7"), "not yet known");
        crate::config::register_secrets(&s);
        let out = redact_known(leak);
        assert!(
            !out.contains("Sec,ret-Qx7") && !out.contains("mon1tor"),
            "{out}"
        );
    }

    #[test]
    fn words_that_only_begin_like_a_key_are_left_alone() {
        for text in [
            "passthrough=true max_series=10000",
            "tokens_total=5",
            "using password: YES",
            "secretary: alice",
        ] {
            assert_eq!(r().redact(text), text);
        }
        assert_eq!(r().redact("secret_key=abc"), "secret_key=***");
    }
}

/// A password or other secret. `Debug` prints a placeholder; there is no `Display`, so it
/// cannot end up in a log line or an error message by accident. Read it with
/// [`Secret::expose`] only where the protocol needs the bytes.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Only for feeding it to an authentication algorithm.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret is the empty string (an account without password).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}
