//! SCRAM (RFC 5802, RFC 7677): the client side used by the Kafka SASL probe
//! (SCRAM-SHA-256, SCRAM-SHA-512) and the MongoDB probe (SCRAM-SHA-1, SCRAM-SHA-256), and a
//! verifying server side for the fake Kafka broker and fake mongod of the tests.
//!
//! The cryptography is `ring`'s (HMAC, PBKDF2, SHA-1/256/512, the random nonce), the crate
//! rustls already builds; this module only does the message syntax (RFC 5802 §5, §7) and
//! the key derivation recipe (§3):
//!
//! ```text
//! SaltedPassword  = Hi(password, salt, i)               (PBKDF2 with HMAC)
//! ClientKey       = HMAC(SaltedPassword, "Client Key")
//! StoredKey       = H(ClientKey)
//! AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//! ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
//! ServerSignature = HMAC(HMAC(SaltedPassword, "Server Key"), AuthMessage)
//! ```
//!
//! Every message from the server is outside input: lengths are bounded, the server nonce must
//! extend the client's, the iteration count must lie in
//! [`MIN_ITERATIONS`]..=[`MAX_ITERATIONS`] (a lower count would let a rogue server make the
//! proof cheap to brute-force; a higher one would burn CPU), and the server's signature is
//! checked in constant time before a login counts as successful. No channel binding (`n,,`),
//! as in Kafka and MongoDB. PBKDF2 with the largest allowed count takes well under a second;
//! callers run [`ScramClient::client_final`] on a blocking thread.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};
use std::num::NonZeroU32;

/// Smallest iteration count accepted from a server (RFC 7677 §4: at least 4096).
pub const MIN_ITERATIONS: u32 = 4096;
/// Largest iteration count accepted from a server.
pub const MAX_ITERATIONS: u32 = 1_000_000;
/// Longest server message accepted, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 4096;

/// The hash function of a SCRAM mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScramHash {
    /// SCRAM-SHA-1 (RFC 5802; MongoDB's default before 4.0).
    Sha1,
    /// SCRAM-SHA-256 (RFC 7677).
    Sha256,
    /// SCRAM-SHA-512 (Kafka).
    Sha512,
}

impl ScramHash {
    /// The SASL mechanism name.
    pub fn mechanism(self) -> &'static str {
        match self {
            ScramHash::Sha1 => "SCRAM-SHA-1",
            ScramHash::Sha256 => "SCRAM-SHA-256",
            ScramHash::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            ScramHash::Sha1 => hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => hmac::HMAC_SHA256,
            ScramHash::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            ScramHash::Sha1 => pbkdf2::PBKDF2_HMAC_SHA1,
            ScramHash::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            ScramHash::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            ScramHash::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
            ScramHash::Sha256 => &digest::SHA256,
            ScramHash::Sha512 => &digest::SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

/// Why a SCRAM exchange failed. Messages never hold the password or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The server's message does not follow RFC 5802's syntax.
    #[error("malformed SCRAM server message: {0}")]
    Malformed(&'static str),
    /// The server nonce does not start with the client's.
    #[error("SCRAM server nonce does not extend the client nonce")]
    NonceMismatch,
    /// The iteration count is outside the accepted range.
    #[error("SCRAM iteration count {0} outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u64),
    /// The server answered `e=...` in its final message.
    #[error("SCRAM server error: {0}")]
    Server(String),
    /// The server's signature does not match: it does not know the password.
    #[error("SCRAM server signature does not verify (the server does not know this password)")]
    BadServerSignature,
}

/// A fresh client nonce: 24 random bytes, base64 (printable, no comma).
pub fn new_nonce() -> Result<String, ScramError> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 24];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ScramError::Malformed("no randomness for the nonce"))?;
    Ok(B64.encode(bytes))
}

/// `saslname` escaping of RFC 5802 §5.1: `=` → `=3D`, `,` → `=2C`.
pub fn escape_username(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// One client side of a SCRAM exchange. The password is held only until
/// [`ScramClient::client_final`]; its `Debug` is redacted.
pub struct ScramClient {
    hash: ScramHash,
    password: Vec<u8>,
    nonce: String,
    client_first_bare: String,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .field("password", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What the client must check in the server's final message: the key and message the
/// server's signature is the HMAC of (checked with `ring::hmac::verify`, constant time).
pub struct ServerSignature {
    key: hmac::Key,
    auth_message: Vec<u8>,
}

impl std::fmt::Debug for ServerSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSignature(<redacted>)")
    }
}

impl ScramClient {
    /// A client for `user` with the already prepared `password` bytes (Kafka: the UTF-8
    /// password; MongoDB: see `probe::mongo`), using `nonce` (from [`new_nonce`]).
    pub fn new(hash: ScramHash, user: &str, password: &[u8], nonce: &str) -> ScramClient {
        ScramClient {
            hash,
            password: password.to_vec(),
            nonce: nonce.to_string(),
            client_first_bare: format!("n={},r={nonce}", escape_username(user)),
        }
    }

    /// The mechanism's hash.
    pub fn hash(&self) -> ScramHash {
        self.hash
    }

    /// `client-first-message`: `n,,n=user,r=nonce`.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// Reads `server-first-message` and returns `client-final-message` and the signature the
    /// server must send back. Runs PBKDF2: call it off the async runtime's threads.
    pub fn client_final(
        &self,
        server_first: &[u8],
    ) -> Result<(String, ServerSignature), ScramError> {
        let server_first = message_text(server_first)?;
        let first = parse_server_first(server_first)?;
        if !first.nonce.starts_with(&self.nonce) || first.nonce.len() == self.nonce.len() {
            return Err(ScramError::NonceMismatch);
        }
        let keys = Keys::derive(self.hash, &self.password, &first.salt, first.iterations);
        let without_proof = format!("c=biws,r={}", first.nonce);
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let proof = keys.client_proof(self.hash, auth_message.as_bytes());
        Ok((
            format!("{without_proof},p={}", B64.encode(proof)),
            ServerSignature {
                key: hmac::Key::new(self.hash.hmac(), &keys.server_key),
                auth_message: auth_message.into_bytes(),
            },
        ))
    }
}

/// Checks `server-final-message` (`v=signature` or `e=error`) against `expected`.
pub fn check_server_final(
    server_final: &[u8],
    expected: &ServerSignature,
) -> Result<(), ScramError> {
    let text = message_text(server_final)?;
    let first = text.split(',').next().unwrap_or("");
    if let Some(error) = first.strip_prefix("e=") {
        return Err(ScramError::Server(super::sanitize(error, 100)));
    }
    let sig = first
        .strip_prefix("v=")
        .ok_or(ScramError::Malformed("server-final without v= or e="))?;
    let sig = B64
        .decode(sig)
        .map_err(|_| ScramError::Malformed("server signature is not base64"))?;
    hmac::verify(&expected.key, &expected.auth_message, &sig)
        .map_err(|_| ScramError::BadServerSignature)
}

fn message_text(bytes: &[u8]) -> Result<&str, ScramError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(bytes).map_err(|_| ScramError::Malformed("message is not UTF-8"))
}

struct ServerFirst {
    nonce: String,
    salt: Vec<u8>,
    iterations: u32,
}

fn parse_server_first(text: &str) -> Result<ServerFirst, ScramError> {
    let mut parts = text.split(',');
    if text.starts_with("m=") {
        return Err(ScramError::Malformed("mandatory extension not supported"));
    }
    let nonce = parts
        .next()
        .and_then(|p| p.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b)))
        .ok_or(ScramError::Malformed(
            "server-first without a valid r= nonce",
        ))?;
    let salt = parts
        .next()
        .and_then(|p| p.strip_prefix("s="))
        .ok_or(ScramError::Malformed("server-first without s= salt"))?;
    let salt = B64
        .decode(salt)
        .map_err(|_| ScramError::Malformed("salt is not base64"))?;
    if salt.is_empty() {
        return Err(ScramError::Malformed("empty salt"));
    }
    let iterations = parts
        .next()
        .and_then(|p| p.strip_prefix("i="))
        .ok_or(ScramError::Malformed("server-first without i= count"))?;
    if iterations.is_empty()
        || iterations.len() > 12
        || !iterations.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(ScramError::Malformed("iteration count is not a number"));
    }
    let iterations: u64 = iterations
        .parse()
        .map_err(|_| ScramError::Malformed("iteration count is not a number"))?;
    let iterations = u32::try_from(iterations)
        .ok()
        .filter(|i| (MIN_ITERATIONS..=MAX_ITERATIONS).contains(i))
        .ok_or(ScramError::Iterations(iterations))?;
    Ok(ServerFirst {
        nonce: nonce.to_string(),
        salt,
        iterations,
    })
}

/// The keys derived from a password (RFC 5802 §3).
struct Keys {
    client_key: Vec<u8>,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl Keys {
    fn derive(hash: ScramHash, password: &[u8], salt: &[u8], iterations: u32) -> Keys {
        let mut salted = vec![0u8; hash.len()];
        let count = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(hash.pbkdf2(), count, salt, password, &mut salted);
        let key = hmac::Key::new(hash.hmac(), &salted);
        let client_key = hmac::sign(&key, b"Client Key").as_ref().to_vec();
        let server_key = hmac::sign(&key, b"Server Key").as_ref().to_vec();
        let stored_key = digest::digest(hash.digest(), &client_key).as_ref().to_vec();
        Keys {
            client_key,
            stored_key,
            server_key,
        }
    }

    fn client_signature(&self, hash: ScramHash, auth_message: &[u8]) -> Vec<u8> {
        let key = hmac::Key::new(hash.hmac(), &self.stored_key);
        hmac::sign(&key, auth_message).as_ref().to_vec()
    }

    fn client_proof(&self, hash: ScramHash, auth_message: &[u8]) -> Vec<u8> {
        self.client_key
            .iter()
            .zip(self.client_signature(hash, auth_message))
            .map(|(a, b)| a ^ b)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 §5: SCRAM-SHA-1, user "user", password "pencil".
    #[test]
    fn rfc5802_sha1_vector() {
        let c = ScramClient::new(
            ScramHash::Sha1,
            "user",
            b"pencil",
            "fyko+d2lbbFgONRv9qkxdawL",
        );
        assert_eq!(c.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let (fin, sig) = c
            .client_final(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        check_server_final(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=", &sig).unwrap();
        assert_eq!(
            check_server_final(b"v=AAAApqV8S7suAoZWja4dJRkFsKQ=", &sig),
            Err(ScramError::BadServerSignature)
        );
    }

    /// RFC 7677 §3: SCRAM-SHA-256, user "user", password "pencil".
    #[test]
    fn rfc7677_sha256_vector() {
        let c = ScramClient::new(ScramHash::Sha256, "user", b"pencil", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(c.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let (fin, sig) = c
            .client_final(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
            .unwrap();
        assert_eq!(
            fin,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        check_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", &sig).unwrap();
        assert_eq!(
            check_server_final(b"e=invalid-proof", &sig),
            Err(ScramError::Server("invalid-proof".into()))
        );
    }

    #[test]
    fn hostile_server_first_messages_are_rejected() {
        let c = ScramClient::new(ScramHash::Sha256, "u", b"p", "abc");
        for (msg, want) in [
            (
                &b"r=abcdef,s=c2FsdA==,i=4095"[..],
                ScramError::Iterations(4095),
            ),
            (
                b"r=abcdef,s=c2FsdA==,i=1000001",
                ScramError::Iterations(1_000_001),
            ),
            (b"r=xyzdef,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
            (b"r=abc,s=c2FsdA==,i=4096", ScramError::NonceMismatch),
        ] {
            assert_eq!(c.client_final(msg).unwrap_err(), want);
        }
        for msg in [
            &b""[..],
            b"m=ext,r=abcdef,s=c2FsdA==,i=4096",
            b"r=abcdef",
            b"r=abcdef,s=!!!,i=4096",
            b"r=abcdef,s=,i=4096",
            b"r=abcdef,s=c2FsdA==,i=-1",
            b"r=abcdef,s=c2FsdA==,i=99999999999999999999",
            b"r=abcdef,s=c2FsdA==",
            b"\xff\xfe",
        ] {
            assert!(
                matches!(
                    c.client_final(msg),
                    Err(ScramError::Malformed(_) | ScramError::Iterations(_))
                ),
                "{msg:?}"
            );
        }
        let long = vec![b'r'; MAX_MESSAGE_BYTES + 1];
        assert!(c.client_final(&long).is_err());
        let dbg = format!(
            "{:?}",
            ScramClient::new(ScramHash::Sha1, "u", b"hunter2", "n")
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn usernames_are_escaped() {
        assert_eq!(escape_username("a,b=c"), "a=2Cb=3Dc");
        let n = new_nonce().unwrap();
        assert_eq!(n.len(), 32);
        assert!(!n.contains(','));
        assert_ne!(n, new_nonce().unwrap());
    }
}
