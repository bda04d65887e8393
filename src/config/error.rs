//! The error of reading and validating the settings.

use std::path::PathBuf;

/// A configuration error: the key (flag name without `--`) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value does not validate.
    #[error("invalid value for {key}: {reason}")]
    Invalid {
        /// The key, e.g. `web.listen-address`.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key.
    #[error("config file {path}: {reason}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the line number and key.
        reason: String,
    },
}
