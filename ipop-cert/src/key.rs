//! A node's long-term key: one Ed25519 key pair. It signs (signals, the join at the
//! rendezvous), and mapped to X25519 (the birational map libsodium's
//! `crypto_sign_ed25519_*_to_curve25519` and age use) it is the node's Noise static key, so a
//! certificate names one public key for both.

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};

/// Bytes of a key, public or secret, and of an X25519 key.
pub const KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// Not 64 hex digits (32 bytes).
    NotHex,
    /// 32 bytes that are no Ed25519 public key.
    NotAPoint,
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyError::NotHex => "a key is 64 hex digits",
            KeyError::NotAPoint => "not an Ed25519 public key",
        })
    }
}

impl std::error::Error for KeyError {}

/// The node's secret key.
pub struct NodeKey(SigningKey);

/// Never print a secret.
impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({})", self.public())
    }
}

impl NodeKey {
    /// A new key from the system's randomness.
    pub fn generate() -> NodeKey {
        let mut seed = [0u8; KEY_LEN];
        getrandom::fill(&mut seed).expect("the system has randomness");
        NodeKey(SigningKey::from_bytes(&seed))
    }

    /// The key file's text: the 32-byte seed in hex, one line.
    pub fn to_text(&self) -> String {
        format!("{}\n", hex::encode(self.0.to_bytes()))
    }

    /// Reads the key file's text (surrounding white space ignored).
    pub fn from_text(text: &str) -> Result<NodeKey, KeyError> {
        let seed = unhex(text.trim())?;
        Ok(NodeKey(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key().to_bytes())
    }

    /// The X25519 secret for Noise: the Ed25519 scalar, which X25519 clamps as Ed25519 does.
    pub fn x25519_secret(&self) -> [u8; KEY_LEN] {
        self.0.to_scalar_bytes()
    }

    /// Signs `message` for `context` (a fixed label per use, so that a signature made for one
    /// purpose never verifies for another).
    pub fn sign(&self, context: &str, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(&labelled(context, message)).to_bytes()
    }
}

/// A node's public key: what a certificate names and peers verify. Kept as its 32 bytes
/// (checked to be a point when read), and opened into a verifying key when used.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl std::str::FromStr for PublicKey {
    type Err = KeyError;

    /// 64 hex digits, as `Display` writes them.
    fn from_str(s: &str) -> Result<Self, KeyError> {
        let bytes = unhex(s)?;
        VerifyingKey::from_bytes(&bytes).map(|_| PublicKey(bytes)).map_err(|_| KeyError::NotAPoint)
    }
}

impl PublicKey {
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    fn key(&self) -> VerifyingKey {
        VerifyingKey::from_bytes(&self.0).expect("checked to be a point when made")
    }

    /// The X25519 public key for Noise, the match of `NodeKey::x25519_secret`.
    pub fn x25519(&self) -> [u8; KEY_LEN] {
        self.key().to_montgomery().to_bytes()
    }

    /// Whether `signature` is this key's over `message` for `context`.
    pub fn verify(&self, context: &str, message: &[u8], signature: &[u8]) -> bool {
        let Ok(signature) = Signature::from_slice(signature) else { return false };
        self.key().verify(&labelled(context, message), &signature).is_ok()
    }
}

/// `context`, a zero byte, then `message`: contexts never run into messages.
fn labelled(context: &str, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(context.len() + 1 + message.len());
    out.extend_from_slice(context.as_bytes());
    out.push(0);
    out.extend_from_slice(message);
    out
}

fn unhex(s: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let mut out = [0u8; KEY_LEN];
    hex::decode_to_slice(s, &mut out).map_err(|_| KeyError::NotHex)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_text_gives_the_same_key_back() {
        let key = NodeKey::generate();
        let again = NodeKey::from_text(&key.to_text()).unwrap();
        assert_eq!(again.public(), key.public());
        assert_eq!(key.to_text().len(), 65, "64 hex digits and a line break");
        for bad in ["", "00", &"zz".repeat(32), &"00".repeat(33)] {
            assert_eq!(NodeKey::from_text(bad).unwrap_err(), KeyError::NotHex, "{bad:?}");
        }
    }

    #[test]
    fn the_x25519_pair_is_one_pair() {
        let key = NodeKey::generate();
        let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(key.x25519_secret());
        assert_eq!(public.to_bytes(), key.public().x25519());
    }

    #[test]
    fn signatures_hold_for_their_context_only() {
        let key = NodeKey::generate();
        let sig = key.sign("ipop signal v1", b"offer");
        assert!(key.public().verify("ipop signal v1", b"offer", &sig));
        assert!(!key.public().verify("ipop join v1", b"offer", &sig), "another context");
        assert!(!key.public().verify("ipop signal v1", b"offes", &sig), "another message");
        assert!(!NodeKey::generate().public().verify("ipop signal v1", b"offer", &sig), "another key");
        assert!(!key.public().verify("ipop signal v1", b"offer", &sig[..63]), "a short signature");
    }

    #[test]
    fn public_keys_read_back_from_their_text() {
        let public = NodeKey::generate().public();
        assert_eq!(public.to_string().parse::<PublicKey>().unwrap(), public);
        assert_eq!("xyz".parse::<PublicKey>().unwrap_err(), KeyError::NotHex);
        assert!(format!("{:?}", NodeKey::generate()).starts_with("NodeKey("), "no secret in Debug");
    }
}
