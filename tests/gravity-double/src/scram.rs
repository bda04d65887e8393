//! The server side of SCRAM (RFC 5802, RFC 7677) for the fake Kafka broker of the tests: it
//! verifies the client's proof from the stored credentials alone, as Kafka's
//! `ScramSaslServer` does. Written here, independently of the exporter's client
//! (`gravity_exporter::probe::scram`), from the RFC's recipe (§3):
//!
//! ```text
//! SaltedPassword  = Hi(password, salt, i)               (PBKDF2 with HMAC)
//! ClientKey       = HMAC(SaltedPassword, "Client Key")
//! StoredKey       = H(ClientKey)
//! AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//! ClientSignature = HMAC(StoredKey, AuthMessage)
//! ClientProof     = ClientKey XOR ClientSignature       (so ClientKey = proof XOR signature)
//! ServerSignature = HMAC(HMAC(SaltedPassword, "Server Key"), AuthMessage)
//! ```

use std::num::NonZeroU32;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::SecureRandom as _;
use ring::{digest, hmac, pbkdf2};

pub use gravity_exporter::probe::scram::ScramHash;

fn algorithms(
    hash: ScramHash,
) -> (
    hmac::Algorithm,
    pbkdf2::Algorithm,
    &'static digest::Algorithm,
) {
    match hash {
        ScramHash::Sha1 => (
            hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            pbkdf2::PBKDF2_HMAC_SHA1,
            &digest::SHA1_FOR_LEGACY_USE_ONLY,
        ),
        ScramHash::Sha256 => (
            hmac::HMAC_SHA256,
            pbkdf2::PBKDF2_HMAC_SHA256,
            &digest::SHA256,
        ),
        ScramHash::Sha512 => (
            hmac::HMAC_SHA512,
            pbkdf2::PBKDF2_HMAC_SHA512,
            &digest::SHA512,
        ),
    }
}

/// A server's half of one exchange, after the client's first message.
#[derive(Debug)]
pub struct ScramServer {
    hash: ScramHash,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    user: String,
    nonce: String,
    client_first_bare: String,
    server_first: String,
}

/// Why the server side rejected the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// The client's message is malformed.
    Malformed,
    /// The proof (or the nonce echo) is wrong: a wrong password.
    BadProof,
}

fn server_nonce() -> Result<String, Reject> {
    let mut b = [0u8; 18];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| Reject::Malformed)?;
    Ok(B64.encode(b))
}

impl ScramServer {
    /// Reads `client-first-message` and answers `server-first-message` for the credentials
    /// of `password` (salt and count chosen by the server).
    pub fn start(
        hash: ScramHash,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
        client_first: &[u8],
    ) -> Result<(ScramServer, String), Reject> {
        let text = std::str::from_utf8(client_first).map_err(|_| Reject::Malformed)?;
        let bare = text.strip_prefix("n,,").ok_or(Reject::Malformed)?;
        let mut parts = bare.split(',');
        let user = parts
            .next()
            .and_then(|p| p.strip_prefix("n="))
            .ok_or(Reject::Malformed)?;
        let client_nonce = parts
            .next()
            .and_then(|p| p.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(Reject::Malformed)?;
        let user = user.replace("=2C", ",").replace("=3D", "=");
        let nonce = format!("{client_nonce}{}", server_nonce()?);
        let server_first = format!("r={nonce},s={},i={iterations}", B64.encode(salt));
        let (mac, kdf, dig) = algorithms(hash);
        let mut salted = vec![0u8; dig.output_len()];
        let count = NonZeroU32::new(iterations).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(kdf, count, salt, password, &mut salted);
        let key = hmac::Key::new(mac, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let server_key = hmac::sign(&key, b"Server Key").as_ref().to_vec();
        let stored_key = digest::digest(dig, client_key.as_ref()).as_ref().to_vec();
        Ok((
            ScramServer {
                hash,
                stored_key,
                server_key,
                user,
                nonce,
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
            },
            server_first,
        ))
    }

    /// The (unescaped) user name the client sent.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Verifies `client-final-message`; on success the `server-final-message`.
    pub fn finish(&self, client_final: &[u8]) -> Result<String, Reject> {
        let text = std::str::from_utf8(client_final).map_err(|_| Reject::Malformed)?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or(Reject::Malformed)?;
        let proof = B64.decode(proof).map_err(|_| Reject::Malformed)?;
        if without_proof != format!("c=biws,r={}", self.nonce) {
            return Err(Reject::BadProof);
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first_bare, self.server_first
        );
        let (mac, _, dig) = algorithms(self.hash);
        let signature = hmac::sign(
            &hmac::Key::new(mac, &self.stored_key),
            auth_message.as_bytes(),
        );
        if proof.len() != signature.as_ref().len() {
            return Err(Reject::BadProof);
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        // A test server: a plain comparison is good enough here.
        if digest::digest(dig, &client_key).as_ref() != self.stored_key.as_slice() {
            return Err(Reject::BadProof);
        }
        let sig = hmac::sign(
            &hmac::Key::new(mac, &self.server_key),
            auth_message.as_bytes(),
        );
        Ok(format!("v={}", B64.encode(sig.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gravity_exporter::probe::scram::{check_server_final, ScramClient};

    #[test]
    fn the_exporters_client_logs_in_and_a_wrong_password_does_not() {
        for hash in [ScramHash::Sha1, ScramHash::Sha256, ScramHash::Sha512] {
            for (pw, ok) in [(&b"pencil"[..], true), (&b"pencil2"[..], false)] {
                let client = ScramClient::new(hash, "user,=x", pw, "fyko+d2lbbFgONRv9qkxdawL");
                let (server, first) = ScramServer::start(
                    hash,
                    b"pencil",
                    b"salt-x",
                    4096,
                    client.client_first().as_bytes(),
                )
                .unwrap();
                assert_eq!(server.user(), "user,=x");
                let (last, sig) = client.client_final(first.as_bytes()).unwrap();
                match server.finish(last.as_bytes()) {
                    Ok(v) => {
                        assert!(ok, "{hash:?}: a wrong password was accepted");
                        check_server_final(v.as_bytes(), &sig).unwrap();
                    }
                    Err(e) => {
                        assert!(!ok, "{hash:?}: {e:?}");
                        assert_eq!(e, Reject::BadProof);
                    }
                }
            }
        }
        assert!(ScramServer::start(ScramHash::Sha256, b"p", b"s", 4096, b"garbage").is_err());
    }
}
