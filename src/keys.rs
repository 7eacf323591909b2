//! Ed25519 keys (ring): generation from the system RNG, PKCS#8 storage, signing and
//! verification, and the one public-key encoding vmledger uses everywhere: standard
//! base64 (with padding) of the raw 32-byte key.
//!
//! Key material never leaves this module in printable form: [`SigningKey`]'s `Debug`
//! prints only the public key, and nothing here logs.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::fsutil;

/// Length of a raw Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Problems with key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("key file {path} is not a valid Ed25519 PKCS#8 key; restore it from a backup")]
    Invalid { path: String },
    #[error("the system random number generator failed")]
    Rng,
    #[error("{what}: not a base64-encoded 32-byte Ed25519 public key")]
    BadPublicKey { what: String },
}

/// An Ed25519 signing key. `Debug` shows the public key only.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("public_key", &self.public_key_b64())
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl SigningKey {
    /// A fresh key from the system's secure random number generator.
    pub fn generate() -> Result<SigningKey, KeyError> {
        let rng = SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Rng)?;
        let pkcs8 = doc.as_ref().to_vec();
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyError::Rng)?;
        Ok(SigningKey { pair, pkcs8 })
    }

    /// A key from a 32-byte seed: for golden test vectors and simulations only.
    pub fn from_seed(seed: &[u8; 32]) -> SigningKey {
        let pair = Ed25519KeyPair::from_seed_unchecked(seed).expect("any 32-byte seed is valid");
        SigningKey {
            pair,
            pkcs8: Vec::new(),
        }
    }

    /// Load a PKCS#8 key file written by [`SigningKey::save`].
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let pkcs8 = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8))
            .map_err(|_| KeyError::Invalid {
                path: path.display().to_string(),
            })?;
        Ok(SigningKey { pair, pkcs8 })
    }

    /// Write the key as PKCS#8 DER, atomically, mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        fsutil::write_private_atomic(path, &self.pkcs8).map_err(|source| KeyError::Write {
            path: path.display().to_string(),
            source,
        })
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        let mut out = [0u8; PUBLIC_KEY_LEN];
        out.copy_from_slice(self.pair.public_key().as_ref());
        out
    }

    /// The public key in vmledger's encoding (standard base64 of the raw bytes).
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.public_key())
    }

    /// Sign `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(self.pair.sign(message).as_ref());
        out
    }
}

/// Verify an Ed25519 signature over `message` by the raw public key `public_key`.
pub fn verify(public_key: &[u8; PUBLIC_KEY_LEN], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(message, signature)
        .is_ok()
}

/// Decode a public key in vmledger's encoding; `what` names it in the error.
pub fn decode_public_key(b64: &str, what: &str) -> Result<[u8; PUBLIC_KEY_LEN], KeyError> {
    let bytes = B64.decode(b64.trim()).map_err(|_| KeyError::BadPublicKey {
        what: what.to_string(),
    })?;
    bytes.try_into().map_err(|_| KeyError::BadPublicKey {
        what: what.to_string(),
    })
}

/// Standard base64 with padding, the encoding of signatures and public keys.
pub fn b64_encode(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Decode standard base64 with padding; `None` when malformed.
pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    B64.decode(text).ok()
}

/// `n` random bytes from the system's secure RNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], KeyError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| KeyError::Rng)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secret() {
        let k = SigningKey::from_seed(&[7u8; 32]);
        let dbg = format!("{k:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&hex::encode([7u8; 32])));
    }

    #[test]
    fn sign_verify_round_trip_and_save_load() {
        let dir = tempfile::tempdir().unwrap();
        let k = SigningKey::generate().unwrap();
        let p = dir.path().join("k");
        k.save(&p).unwrap();
        let k2 = SigningKey::load(&p).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let sig = k2.sign(b"msg");
        assert!(verify(&k.public_key(), b"msg", &sig));
        assert!(!verify(&k.public_key(), b"msh", &sig));
        let pk = decode_public_key(&k.public_key_b64(), "test").unwrap();
        assert_eq!(pk, k.public_key());
        assert!(decode_public_key("AAAA", "test").is_err());
    }
}
