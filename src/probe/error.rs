//! [`WireError`]: the one error type of the probes that speak their protocol themselves,
//! Kafka ([`super::kafka`], [`super::kafka_topic`]) and MongoDB ([`super::mongo`]).
//!
//! Both go through the same steps (TCP, TLS, a size-prefixed request/response exchange, a
//! SCRAM login) and fail in the same ways; the variants that belong to one protocol say so
//! ([`WireError::Broker`], [`WireError::MechanismUnsupported`] and [`WireError::SaslFailed`]
//! for Kafka, [`WireError::Command`] and [`WireError::PasswordPrep`] for MongoDB).
//! [`WireError::reason`] gives the probe's [`FailureReason`], the `reason` label of the
//! connection metrics; the message, the probe's `detail`, names codes and users, never a
//! password.

use std::io;

use super::scram::ScramError;
use super::{io_reason, ConnectError, FailureReason};
use crate::tls::TlsError;

/// Errors of the Kafka and MongoDB probes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The TCP connection could not be opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// TLS could not be set up or its handshake failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A plaintext request was answered with a TLS alert: the peer wants TLS, and gravity's
    /// config has none for it.
    #[error("{message}")]
    TlsRequired {
        /// What to tell (the protocol's words: which settings of gravity's config are missing).
        message: &'static str,
    },
    /// The deadline passed.
    #[error("no answer within {after_ms} ms")]
    Timeout {
        /// The time allowed, in milliseconds.
        after_ms: u128,
    },
    /// The connection failed mid-exchange (EOF, reset, ...).
    #[error("connection lost: {0}")]
    Io(io::ErrorKind),
    /// The answer is not a valid response (Kafka message, OP_MSG, BSON).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The SCRAM exchange failed on the client's side (bad server signature, bad message).
    #[error(transparent)]
    Scram(#[from] ScramError),
    /// Kafka: the broker answered with a non-zero error code.
    #[error("broker returned error code {code} ({})", kafka_error_name(*code))]
    Broker {
        /// The Kafka error code (35 UNSUPPORTED_VERSION, 58 SASL_AUTHENTICATION_FAILED, ...).
        code: i16,
    },
    /// Kafka: the broker does not enable the configured SASL mechanism.
    #[error("the broker does not enable SASL mechanism {wanted} (enabled: {enabled})")]
    MechanismUnsupported {
        /// What gravity's config asks for.
        wanted: &'static str,
        /// What the broker listed, sanitised.
        enabled: String,
    },
    /// Kafka: SaslAuthenticate failed, the credentials were rejected.
    #[error("SASL {mechanism} login of user {user} failed: error code {code} ({}){}", kafka_error_name(*code), if message.is_empty() { String::new() } else { format!(": {message}") })]
    SaslFailed {
        /// The mechanism.
        mechanism: &'static str,
        /// The user (from gravity's config; never the password).
        user: String,
        /// The Kafka error code (58 SASL_AUTHENTICATION_FAILED).
        code: i16,
        /// The broker's error message, sanitised.
        message: String,
    },
    /// MongoDB: the password cannot be prepared for SCRAM-SHA-256 (SASLprep, RFC 4013).
    #[error("the password is not valid for SCRAM-SHA-256 (SASLprep refused it)")]
    PasswordPrep,
    /// MongoDB: the server answered `ok: 0`.
    #[error("command failed: code {code} {code_name}: {message}")]
    Command {
        /// `code` (0 when absent).
        code: i32,
        /// `codeName`, sanitised (empty when absent).
        code_name: String,
        /// `errmsg`, sanitised and shortened.
        message: String,
    },
}

impl WireError {
    /// The probe [`FailureReason`]: rejected credentials, Kafka's authorization error codes
    /// and MongoDB's Unauthorized (13) and AuthenticationFailed (18) are `Auth`; a SASL
    /// mechanism the broker does not enable (Kafka 33) or the account has no credentials for
    /// (MongoDB MechanismUnavailable, 334) is `AuthPluginUnsupported`; TLS failures are
    /// `Tls` or `TlsRequired`; other error codes and malformed answers are `Protocol`.
    pub fn reason(&self) -> FailureReason {
        match self {
            WireError::Connect(e) => e.reason(),
            WireError::Tls(_) => FailureReason::Tls,
            WireError::TlsRequired { .. } => FailureReason::TlsRequired,
            WireError::Timeout { .. } => FailureReason::Timeout,
            WireError::Io(kind) => io_reason(*kind),
            WireError::Broker { code: 29..=31 | 58 }
            | WireError::SaslFailed { .. }
            | WireError::Command { code: 13 | 18, .. }
            | WireError::PasswordPrep
            | WireError::Scram(ScramError::BadServerSignature | ScramError::Server(_)) => {
                FailureReason::Auth
            }
            WireError::MechanismUnsupported { .. }
            | WireError::Broker { code: 33 }
            | WireError::Command { code: 334, .. } => FailureReason::AuthPluginUnsupported,
            WireError::Scram(_)
            | WireError::Protocol(_)
            | WireError::Broker { .. }
            | WireError::Command { .. } => FailureReason::Protocol,
        }
    }
}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e.kind())
    }
}

/// Names of the Kafka error codes a broker may plausibly return to the probe.
fn kafka_error_name(code: i16) -> &'static str {
    match code {
        -1 => "UNKNOWN_SERVER_ERROR",
        29 => "TOPIC_AUTHORIZATION_FAILED",
        30 => "GROUP_AUTHORIZATION_FAILED",
        31 => "CLUSTER_AUTHORIZATION_FAILED",
        33 => "UNSUPPORTED_SASL_MECHANISM",
        34 => "ILLEGAL_SASL_STATE",
        35 => "UNSUPPORTED_VERSION",
        42 => "INVALID_REQUEST",
        58 => "SASL_AUTHENTICATION_FAILED",
        _ => "see the Kafka protocol guide",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `reason` labels of both protocols, as the Kafka and Mongo errors gave them before
    /// they were one type.
    #[test]
    fn reasons_of_both_protocols() {
        use FailureReason::*;
        let cases: Vec<(WireError, FailureReason)> = vec![
            (WireError::TlsRequired { message: "x" }, TlsRequired),
            (WireError::Timeout { after_ms: 5 }, Timeout),
            (WireError::Io(io::ErrorKind::UnexpectedEof), Protocol),
            (WireError::Io(io::ErrorKind::ConnectionRefused), Refused),
            (WireError::Protocol("x".into()), Protocol),
            (WireError::Scram(ScramError::BadServerSignature), Auth),
            (WireError::Broker { code: 58 }, Auth),
            (WireError::Broker { code: 29 }, Auth),
            (WireError::Broker { code: 31 }, Auth),
            (WireError::Broker { code: 33 }, AuthPluginUnsupported),
            (WireError::Broker { code: 35 }, Protocol),
            (
                WireError::MechanismUnsupported {
                    wanted: "PLAIN",
                    enabled: String::new(),
                },
                AuthPluginUnsupported,
            ),
            (
                WireError::SaslFailed {
                    mechanism: "PLAIN",
                    user: "u".into(),
                    code: 58,
                    message: String::new(),
                },
                Auth,
            ),
            (WireError::PasswordPrep, Auth),
            (command(13), Auth),
            (command(18), Auth),
            (command(334), AuthPluginUnsupported),
            (command(59), Protocol),
            (command(33), Protocol),
        ];
        for (e, want) in cases {
            assert_eq!(e.reason(), want, "{e:?}");
        }
    }

    fn command(code: i32) -> WireError {
        WireError::Command {
            code,
            code_name: String::new(),
            message: String::new(),
        }
    }

    #[test]
    fn messages() {
        assert_eq!(
            WireError::Broker { code: 35 }.to_string(),
            "broker returned error code 35 (UNSUPPORTED_VERSION)"
        );
        let e = WireError::SaslFailed {
            mechanism: "SCRAM-SHA-256",
            user: "gravity".into(),
            code: 58,
            message: "bad".into(),
        };
        assert_eq!(
            e.to_string(),
            "SASL SCRAM-SHA-256 login of user gravity failed: error code 58 (SASL_AUTHENTICATION_FAILED): bad"
        );
        assert_eq!(
            WireError::TlsRequired {
                message: "wants TLS"
            }
            .to_string(),
            "wants TLS"
        );
        assert_eq!(
            command(13).to_string(),
            "command failed: code 13 : ",
            "an absent codeName and errmsg stay empty"
        );
    }
}
