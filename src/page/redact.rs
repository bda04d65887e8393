//! Masks secrets in free text from gravity (log messages, error strings) before the exporter
//! keeps or shows it.
//!
//! gravity's messages can carry credentials: Go MySQL DSNs (`user:password@tcp(host:3306)/db`),
//! URLs with user info (`mongodb://user:pw@host`), config structs dumped with `%+v`
//! (`Password:xyz`), key/value pairs (`password=xyz`) and replicated DDL
//! (`IDENTIFIED BY 'xyz'`). [`Redactor::redact`] masks, in this order:
//! 1. every password known from gravity's config (the endpoints' `Secret`s), wherever it appears;
//! 2. `IDENTIFIED BY <value>`;
//! 3. the password of DSN-like `user:<password>@` text;
//! 4. the value after `password`/`passwd`/`pwd`/`secret`/`token` and `:` or `=` (MySQL's
//!    `using password: YES/NO` is kept: it says whether a password was sent, not which).
//!
//! Every mask is `***`. Redaction runs on the whole (bounded) text before it is shortened,
//! so a cut never leaves part of a secret behind.

use std::sync::LazyLock;

use regex::{Captures, Regex};

use crate::discovery::Target;

/// What a masked secret reads as.
pub const MASK: &str = "***";

static IDENTIFIED_BY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(identified\s+(?:with\s+\S+\s+)?by\s+(?:password\s+)?)('[^']*'|"[^"]*"|\S+)"#)
        .expect("static regex is valid")
});
static DSN: LazyLock<Regex> = LazyLock::new(|| {
    // optional URL scheme, user, then the password up to the last `@` of the word (Go's DSN
    // parser splits at the last `@` too)
    Regex::new(r#"([A-Za-z][A-Za-z0-9+.-]*://)?([^\s:@/()'"]*):\S*@"#)
        .expect("static regex is valid")
});
static KEY_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r#"(?i)(pass(?:word|wd)?|pwd|secret|token)(["']?\s*[:=]\s*["']?)([^\s,;&"'})\]]+)"#)
        .expect("static regex is valid")
});

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

impl Redactor {
    /// A redactor for these known passwords (empty ones are ignored; longest masked first).
    pub fn new<I, S>(secrets: I) -> Redactor
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// A redactor for the passwords of gravity's config, as far as it is known.
    pub fn from_target(t: &Target) -> Redactor {
        Redactor::new(
            t.config
                .iter()
                .flat_map(|c| c.endpoints.iter())
                .map(|e| e.password.expose().to_string()),
        )
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
        let s = DSN.replace_all(&s, |c: &Captures<'_>| {
            let scheme = c.get(1).map_or("", |m| m.as_str());
            format!("{scheme}{}:{MASK}@", &c[2])
        });
        let s = KEY_VALUE.replace_all(&s, |c: &Captures<'_>| {
            let v = &c[3];
            if v.eq_ignore_ascii_case("yes") || v.eq_ignore_ascii_case("no") || v == MASK {
                c[0].to_string()
            } else {
                format!("{}{}{MASK}", &c[1], &c[2])
            }
        });
        s.into_owned()
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
            ("PWD = x1, token: tkn", "PWD = ***, token: ***"),
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
        assert!(d.contains("2 redacted"), "{d}");
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
}
