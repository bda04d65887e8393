//! gravity's command line, parsed the way Go's `flag` package parses it (`-config x`,
//! `--config x`, `-config=x`, `--config=x`, `--` ends the flags), with the same flag set,
//! error texts and usage text as `gravity` (pkg/config/config.go `NewConfig`).

use thiserror::Error;

/// The flags gravity defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flags {
    /// `-V`: print version and exit.
    pub version: bool,
    /// `-config`: path to the pipeline config file (required to run).
    pub config: String,
    /// `-L`: log level (default `info`).
    pub level: String,
    /// `-log-file`: log file path (default: stderr).
    pub log_file: String,
    /// `-log-format`: `json` (default), `text`, `console`.
    pub log_format: String,
    /// `-http-addr`: listen address (default `:8080`).
    pub http_addr: String,
    /// `-block-profile-rate` (accepted, unused).
    pub block_profile_rate: i64,
    /// `-mutex-profile-fraction` (accepted, unused).
    pub mutex_profile_fraction: i64,
}

impl Default for Flags {
    fn default() -> Self {
        Flags {
            version: false,
            config: String::new(),
            level: "info".to_string(),
            log_file: String::new(),
            log_format: "json".to_string(),
            http_addr: ":8080".to_string(),
            block_profile_rate: 0,
            mutex_profile_fraction: 0,
        }
    }
}

/// Why the command line was rejected; `Display` is Go's message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FlagError {
    /// `-h` / `-help`: Go prints the usage and gravity exits 0.
    #[error("flag: help requested")]
    Help,
    /// Any parse failure, with Go's text (`flag provided but not defined: -x`, ...).
    #[error("{0}")]
    Invalid(String),
    /// A positional argument: gravity's own check (`'x' is an invalid flag`).
    #[error("'{0}' is an invalid flag")]
    Positional(String),
}

impl FlagError {
    /// Whether Go's flag package printed the usage for this error.
    pub fn prints_usage(&self) -> bool {
        !matches!(self, FlagError::Positional(_))
    }
}

/// The usage text Go's `flag.FlagSet.PrintDefaults` prints for gravity's flag set.
pub fn usage() -> String {
    concat!(
        "Usage of gravity:\n",
        "  -L string\n",
        "    \tlog level: debug, info, warn, error, fatal (default 'info') (default \"info\")\n",
        "  -V\tprint version and exit\n",
        "  -block-profile-rate int\n",
        "    \tset block profile rate\n",
        "  -config string\n",
        "    \tpath to config file\n",
        "  -http-addr string\n",
        "    \thttp-addr (default \":8080\")\n",
        "  -log-file string\n",
        "    \tlog file path\n",
        "  -log-format string\n",
        "    \tlog format (default \"json\")\n",
        "  -mutex-profile-fraction int\n",
        "    \tset mutex profile fraction\n",
    )
    .to_string()
}

fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `strconv.ParseInt(s, 0, 64)`: optional sign, `0x`/`0o`/`0b`/leading-`0` prefixes, `_` separators.
fn parse_go_int(v: &str) -> Option<i64> {
    let (neg, body) = match v.as_bytes().first() {
        Some(b'-') => (true, &v[1..]),
        Some(b'+') => (false, &v[1..]),
        _ => (false, v),
    };
    let lower = body.to_ascii_lowercase();
    let (radix, digits) = if let Some(r) = lower.strip_prefix("0x") {
        (16, r.to_string())
    } else if let Some(r) = lower.strip_prefix("0b") {
        (2, r.to_string())
    } else if let Some(r) = lower.strip_prefix("0o") {
        (8, r.to_string())
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string())
    } else {
        (10, lower.clone())
    };
    let has_sep = digits.contains('_');
    if has_sep && (digits.starts_with('_') || digits.ends_with('_') || digits.contains("__")) {
        return None;
    }
    let digits: String = digits.chars().filter(|&c| c != '_').collect();
    if digits.is_empty() {
        return None;
    }
    let mag = i128::from_str_radix(&digits, radix).ok()?;
    let val = if neg { -mag } else { mag };
    i64::try_from(val).ok()
}

/// Parses gravity's arguments (without argv\[0\]) like `flag.FlagSet.Parse` plus gravity's
/// positional-argument check.
pub fn parse(args: &[String]) -> Result<Flags, FlagError> {
    let mut f = Flags::default();
    let mut i = 0;
    while let Some(s) = args.get(i) {
        if s.len() < 2 || !s.starts_with('-') {
            break;
        }
        let mut minuses = 1;
        if s.as_bytes().get(1) == Some(&b'-') {
            minuses = 2;
            if s.len() == 2 {
                i += 1;
                break;
            }
        }
        let mut name = &s[minuses..];
        if name.is_empty() || name.starts_with('-') || name.starts_with('=') {
            return Err(FlagError::Invalid(format!("bad flag syntax: {s}")));
        }
        i += 1;
        let mut value: Option<String> = None;
        // '=' cannot be the first character of the name (rejected above).
        if let Some((eq, _)) = name.char_indices().skip(1).find(|&(_, c)| c == '=') {
            value = Some(name[eq + 1..].to_string());
            name = &name[..eq];
        }
        match name {
            "V" => match value {
                None => f.version = true,
                Some(v) => {
                    f.version = parse_go_bool(&v).ok_or_else(|| {
                        FlagError::Invalid(format!(
                            "invalid boolean value {} for -V: parse error",
                            super::gofmt::quote(&v)
                        ))
                    })?;
                }
            },
            "config"
            | "L"
            | "log-file"
            | "log-format"
            | "http-addr"
            | "block-profile-rate"
            | "mutex-profile-fraction" => {
                let v = match value {
                    Some(v) => v,
                    None => match args.get(i) {
                        Some(next) => {
                            i += 1;
                            next.clone()
                        }
                        None => {
                            return Err(FlagError::Invalid(format!(
                                "flag needs an argument: -{name}"
                            )))
                        }
                    },
                };
                let bad_int = || {
                    FlagError::Invalid(format!(
                        "invalid value {} for flag -{name}: parse error",
                        super::gofmt::quote(&v)
                    ))
                };
                match name {
                    "config" => f.config = v.clone(),
                    "L" => f.level = v.clone(),
                    "log-file" => f.log_file = v.clone(),
                    "log-format" => f.log_format = v.clone(),
                    "http-addr" => f.http_addr = v.clone(),
                    "block-profile-rate" => {
                        f.block_profile_rate = parse_go_int(&v).ok_or_else(bad_int)?
                    }
                    _ => f.mutex_profile_fraction = parse_go_int(&v).ok_or_else(bad_int)?,
                }
            }
            "h" | "help" => return Err(FlagError::Help),
            other => {
                return Err(FlagError::Invalid(format!(
                    "flag provided but not defined: -{other}"
                )))
            }
        }
    }
    if let Some(extra) = args.get(i) {
        return Err(FlagError::Positional(extra.clone()));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Flags, FlagError> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn every_go_spelling_is_accepted() {
        for args in [
            &["-config", "/a.toml"][..],
            &["--config", "/a.toml"],
            &["-config=/a.toml"],
            &["--config=/a.toml"],
        ] {
            assert_eq!(p(args).map(|f| f.config), Ok("/a.toml".to_string()));
        }
        let f = p(&[
            "--config=/x/c.toml",
            "--http-addr=127.0.0.1:18080",
            "-log-file",
            "/x/g.log",
            "--log-format=text",
            "-L",
            "debug",
        ])
        .unwrap_or_default();
        assert_eq!(f.http_addr, "127.0.0.1:18080");
        assert_eq!(f.log_file, "/x/g.log");
        assert_eq!(f.log_format, "text");
        assert_eq!(f.level, "debug");
        assert_eq!(p(&["-V"]).map(|f| f.version), Ok(true));
        assert_eq!(p(&["-V=false"]).map(|f| f.version), Ok(false));
        assert_eq!(
            p(&["-block-profile-rate=0x10"]).map(|f| f.block_profile_rate),
            Ok(16)
        );
        // `--` ends the flags, a value may start with '-' and may hold '='.
        assert_eq!(
            p(&["-config", "-x=y", "--"]).map(|f| f.config),
            Ok("-x=y".into())
        );
        assert_eq!(p(&["-config=a=b"]).map(|f| f.config), Ok("a=b".into()));
    }

    #[test]
    fn errors_have_go_texts() {
        assert_eq!(
            p(&["-bogus"]).map(|_| ()).unwrap_err().to_string(),
            "flag provided but not defined: -bogus"
        );
        assert_eq!(
            p(&["--config"]).unwrap_err().to_string(),
            "flag needs an argument: -config"
        );
        assert_eq!(
            p(&["---x"]).unwrap_err().to_string(),
            "bad flag syntax: ---x"
        );
        assert_eq!(
            p(&["-block-profile-rate", "x"]).unwrap_err().to_string(),
            "invalid value \"x\" for flag -block-profile-rate: parse error"
        );
        assert_eq!(
            p(&["-V=maybe"]).unwrap_err().to_string(),
            "invalid boolean value \"maybe\" for -V: parse error"
        );
        assert_eq!(p(&["-h"]), Err(FlagError::Help));
        assert_eq!(
            p(&["-config", "a", "extra"]),
            Err(FlagError::Positional("extra".into()))
        );
        assert!(usage().starts_with("Usage of gravity:\n  -L string\n"));
    }
}
