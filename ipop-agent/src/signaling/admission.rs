//! Who may join, and how a joining node proves it, in one of two modes:
//!
//! - the shared secret (the lab default): the proof is an HMAC of the rendezvous's nonce under
//!   the overlay secret, stretched first with argon2id ([`Secret`]), so that a proof seen by
//!   whoever poses as the rendezvous costs an argon2 run per guess, not an HMAC. Every member
//!   holds the secret, so every member (and whoever runs the rendezvous) can impersonate every
//!   other;
//! - the overlay CA: the node shows its certificate and signs the nonce with the key the
//!   certificate names. The rendezvous needs no secret and cannot forge a member, and agents
//!   check each member's certificate themselves ([`check_member`]), so a rendezvous that hands
//!   out another key for a node is caught.
//!
//! Pure but for `unix_now`: the checks take the time from their caller.

use std::sync::Arc;

use ipop_cert::{CertBody, CertError, Certificate, NodeKey, PublicKey, RevocationList};

use crate::core::digest::{hex, mac, unhex};

/// The signature context of a join.
const JOIN: &str = "ipop join v1";

/// The overlay secret, stretched with argon2id before any use (the join proof, the links'
/// PSK): salted with the overlay's name, 7 MiB and 5 passes (one of OWASP's equivalent minimum
/// settings: the one with the smallest memory, which an agent's peak RSS shows), so each guess
/// at the secret costs that much memory and time. Made once at start.
#[derive(Clone)]
pub struct Secret([u8; 32]);

impl Secret {
    pub fn stretch(overlay: &str, secret: &str) -> Secret {
        use sha2::Digest as _;
        let salt = sha2::Sha256::digest([b"ipop overlay v1\0".as_slice(), overlay.as_bytes()].concat());
        let params = argon2::Params::new(7 * 1024, 5, 1, Some(32)).expect("valid argon2 parameters");
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut key = [0u8; 32];
        argon.hash_password_into(secret.as_bytes(), &salt[..16], &mut key).expect("argon2 takes any secret");
        Secret(key)
    }

    /// A key for one use (`label`), so no two uses share one.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        mac(&self.0, &[label.as_bytes()])
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// What the joining node shows.
#[derive(Clone)]
pub enum Proof {
    Secret(Secret),
    Certificate { certificate: String, key: Arc<NodeKey> },
}

impl std::fmt::Debug for Proof {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Proof::Secret(_) => "Proof::Secret(***)",
            Proof::Certificate { .. } => "Proof::Certificate",
        })
    }
}

/// The bytes a join's proof covers: the nonce and who joins where with which key.
fn joined(nonce: &str, overlay: &str, node_id: &str, public_key: &str) -> [u8; 32] {
    let parts: [&[u8]; 4] = [nonce.as_bytes(), overlay.as_bytes(), node_id.as_bytes(), public_key.as_bytes()];
    mac(b"ipop join", &parts)
}

impl Proof {
    /// The proof for `nonce`, and the certificate that goes with it.
    pub fn prove(&self, nonce: &str, overlay: &str, node_id: &str, public_key: &str) -> (String, Option<String>) {
        match self {
            Proof::Secret(secret) => (secret_proof(secret, nonce, overlay, node_id, public_key), None),
            Proof::Certificate { certificate, key } => {
                let signature = key.sign(JOIN, &joined(nonce, overlay, node_id, public_key));
                (hex(&signature), Some(certificate.clone()))
            }
        }
    }
}

/// The shared-secret proof: HMAC-SHA256 under the stretched secret.
pub fn secret_proof(secret: &Secret, nonce: &str, overlay: &str, node_id: &str, public_key: &str) -> String {
    let parts: [&[u8]; 5] =
        [b"ipop join v2", nonce.as_bytes(), overlay.as_bytes(), node_id.as_bytes(), public_key.as_bytes()];
    hex(&mac(&secret.0, &parts))
}

/// Whom the rendezvous admits.
#[derive(Clone)]
pub enum Admission {
    Secret(Secret),
    Ca(Certified),
}

/// An overlay with a CA: its key, and the revocation list in force.
#[derive(Clone)]
pub struct Certified {
    pub ca: PublicKey,
    pub revoked: Option<RevocationList>,
}

impl Certified {
    /// `check_member` under this CA and list.
    pub fn member(
        &self,
        node_id: &str,
        public_key: &str,
        certificate: Option<&str>,
        now: u64,
    ) -> Result<CertBody, String> {
        let certificate = certificate.ok_or_else(|| format!("{node_id} came without a certificate"))?;
        check_member(&self.ca, self.revoked.as_ref(), node_id, public_key, certificate, now)
    }

    /// Whether a certificate checked before still holds `now`: not expired, not revoked by the
    /// list in force (what can change after the check).
    pub fn still_holds(&self, body: &CertBody, now: u64) -> bool {
        now < body.not_after && !self.revoked.as_ref().is_some_and(|r| r.body().revoked.contains(&body.serial))
    }
}

/// One join as the rendezvous reads it.
pub struct Join<'a> {
    pub nonce: &'a str,
    pub overlay: &'a str,
    pub node_id: &'a str,
    /// The node's Noise key (X25519, hex).
    pub public_key: &'a str,
    pub proof: &'a str,
    pub certificate: Option<&'a str>,
}

impl Admission {
    /// Whether `join` proves what this mode asks (with a CA: its certificate, checked); `Err` is
    /// the reason told to the client.
    pub fn check(&self, join: &Join<'_>, overlay: &str, now: u64) -> Result<Option<CertBody>, String> {
        match self {
            Admission::Secret(secret) => {
                let expected = secret_proof(secret, join.nonce, overlay, join.node_id, join.public_key);
                // Same reason for a wrong overlay name and a wrong secret: learn nothing.
                if join.overlay != overlay || !constant_time_eq(expected.as_bytes(), join.proof.as_bytes()) {
                    return Err("not admitted: wrong overlay or secret".into());
                }
                Ok(None)
            }
            Admission::Ca(certified) => {
                if join.overlay != overlay {
                    return Err("not admitted: wrong overlay".into());
                }
                if join.certificate.is_none() {
                    return Err("not admitted: this overlay admits by certificate".into());
                }
                let body = certified.member(join.node_id, join.public_key, join.certificate, now)?;
                let message = joined(join.nonce, join.overlay, join.node_id, join.public_key);
                let sig = unhex::<{ ipop_cert::key::SIGNATURE_LEN }>(join.proof);
                if !sig.is_some_and(|s| body.public_key.verify(JOIN, &message, &s)) {
                    return Err("not admitted: the join is not signed by the certificate's key".into());
                }
                Ok(Some(body))
            }
        }
    }
}

/// A member's certificate, checked: signed by `ca`, valid `now`, not revoked, for `node_id`,
/// naming the Noise key `public_key` (X25519 hex) that the member (or the rendezvous, for an
/// agent) announces. `Err` says who claimed what.
pub fn check_member(
    ca: &PublicKey,
    revoked: Option<&RevocationList>,
    node_id: &str,
    public_key: &str,
    certificate: &str,
    now: u64,
) -> Result<CertBody, String> {
    let cert = Certificate::from_text(certificate).map_err(|e| format!("{node_id}'s certificate: {e}"))?;
    let body = cert.verify(ca, now).map_err(|e| format!("{node_id}'s certificate: {e}"))?;
    if revoked.is_some_and(|r| r.body().revoked.contains(&body.serial)) {
        return Err(format!("{node_id}'s certificate: {}", CertError::Revoked { serial: body.serial.clone() }));
    }
    if body.node_id != node_id {
        return Err(format!("{node_id} shows the certificate of {}", body.node_id));
    }
    if hex(&body.public_key.x25519()) != public_key {
        return Err(format!("the key given for {node_id} is not the one its certificate names"));
    }
    Ok(body.clone())
}

/// Unix seconds now: what certificates' validity is measured in.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use ipop_cert::CertBody;

    use super::*;

    fn certified(ca: &NodeKey, node_id: &str, not_after: u64) -> (Arc<NodeKey>, String) {
        let key = NodeKey::generate();
        let body = CertBody {
            serial: format!("serial-{node_id}"),
            node_id: node_id.into(),
            public_key: key.public(),
            ips: Vec::new(),
            macs: Vec::new(),
            not_before: 0,
            not_after,
            ca: ca.public(),
        };
        (Arc::new(key), Certificate::issue(ca, body).to_text())
    }

    fn join<'a>(proof: &'a (String, Option<String>), node_id: &'a str, key: &'a str) -> Join<'a> {
        Join { nonce: "n1", overlay: "lab", node_id, public_key: key, proof: &proof.0, certificate: proof.1.as_deref() }
    }

    #[test]
    fn a_certified_node_joins_and_nobody_else_does() {
        let ca = NodeKey::generate();
        let admit = Admission::Ca(Certified { ca: ca.public(), revoked: None });
        let (key, cert) = certified(&ca, "host-a", 1_000);
        let x = hex(&key.public().x25519());
        let proof = Proof::Certificate { certificate: cert.clone(), key: key.clone() };
        let shown = proof.prove("n1", "lab", "host-a", &x);
        let body = admit.check(&join(&shown, "host-a", &x), "lab", 10).unwrap().expect("its certificate");
        assert_eq!(body.node_id, "host-a");

        // The same certificate for another node id, or with another key.
        let as_b = proof.prove("n1", "lab", "host-b", &x);
        assert!(
            admit.check(&join(&as_b, "host-b", &x), "lab", 10).unwrap_err().contains("shows the certificate of host-a")
        );
        let other = hex(&NodeKey::generate().public().x25519());
        let with_other = proof.prove("n1", "lab", "host-a", &other);
        assert!(admit.check(&join(&with_other, "host-a", &other), "lab", 10).unwrap_err().contains("not the one"));
        // Someone holding the certificate but not the key.
        let thief = Proof::Certificate { certificate: cert, key: Arc::new(NodeKey::generate()) };
        let stolen = thief.prove("n1", "lab", "host-a", &x);
        assert!(admit.check(&join(&stolen, "host-a", &x), "lab", 10).unwrap_err().contains("not signed"));
        // Expired, revoked, and no certificate at all.
        assert!(admit.check(&join(&shown, "host-a", &x), "lab", 1_000).unwrap_err().contains("expired"));
        let revoked = RevocationList::empty(&ca, 0).with(&ca, ["serial-host-a".to_owned()], 1);
        let strict = Admission::Ca(Certified { ca: ca.public(), revoked: Some(revoked) });
        assert!(strict.check(&join(&shown, "host-a", &x), "lab", 10).unwrap_err().contains("revoked"));
        let bare = Proof::Secret(Secret::stretch("lab", "a secret")).prove("n1", "lab", "host-a", &x);
        assert!(admit.check(&join(&bare, "host-a", &x), "lab", 10).unwrap_err().contains("by certificate"));
    }

    #[test]
    fn the_shared_secret_admits_its_holders() {
        let secret = Secret::stretch("lab", "s3cret");
        let admit = Admission::Secret(secret.clone());
        let shown = Proof::Secret(secret).prove("n1", "lab", "a", "k");
        assert!(matches!(admit.check(&join(&shown, "a", "k"), "lab", 0), Ok(None)));
        let wrong = Proof::Secret(Secret::stretch("lab", "guess")).prove("n1", "lab", "a", "k");
        assert!(admit.check(&join(&wrong, "a", "k"), "lab", 0).is_err());
        assert!(admit.check(&join(&shown, "a", "k"), "other", 0).is_err(), "another overlay");
    }

    #[test]
    fn the_secret_is_stretched_per_overlay_and_kept_out_of_sight() {
        let a = Secret::stretch("lab", "s3cret");
        assert_eq!(a.0, Secret::stretch("lab", "s3cret").0, "the same secret, the same key");
        assert_ne!(a.0, Secret::stretch("lab2", "s3cret").0, "salted with the overlay's name");
        assert_ne!(a.derive("one"), a.derive("two"));
        assert_eq!(format!("{a:?} {:?}", Proof::Secret(a.clone())), "Secret(***) Proof::Secret(***)");
    }
}
