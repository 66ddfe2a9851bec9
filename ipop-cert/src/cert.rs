//! Node certificates: a small document the overlay's CA signs, binding a node id to the node's
//! public key, the addresses it may claim, and a validity window.
//!
//! A `Signed` document of kind "ipop certificate"; its body:
//! `{"serial", "node_id", "public_key", "ips", "macs", "not_before", "not_after", "ca"}`.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    key::{NodeKey, PublicKey},
    signed::{Signed, as_text},
};

const KIND: &str = "ipop certificate";

/// What a certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertBody {
    /// Random, unique: what a revocation list names.
    pub serial: String,
    pub node_id: String,
    #[serde(with = "as_text")]
    pub public_key: PublicKey,
    /// Addresses the node may claim (ARP, ND); empty: no restriction.
    pub ips: Vec<IpNet>,
    /// MAC addresses its hosts may use, lower-case `aa:bb:cc:dd:ee:ff`; empty: any.
    pub macs: Vec<String>,
    /// Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
    /// The CA's public key.
    #[serde(with = "as_text")]
    pub ca: PublicKey,
}

/// A certificate as it travels (`verify` before trusting what it says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Certificate(Signed<CertBody>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertError {
    /// Not a certificate file (its JSON, or its body's).
    Malformed(String),
    /// Signed by another CA than the one configured (its public key).
    OtherCa(String),
    /// The signature does not hold: forged or altered.
    BadSignature,
    NotYetValid {
        not_before: u64,
    },
    Expired {
        not_after: u64,
    },
    Revoked {
        serial: String,
    },
}

impl std::fmt::Display for CertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertError::Malformed(why) => write!(f, "not an ipop certificate: {why}"),
            CertError::OtherCa(ca) => write!(f, "signed by another CA ({ca})"),
            CertError::BadSignature => f.write_str("its signature does not hold (forged or altered)"),
            CertError::NotYetValid { not_before } => write!(f, "not valid before {not_before} (unix time)"),
            CertError::Expired { not_after } => write!(f, "expired at {not_after} (unix time)"),
            CertError::Revoked { serial } => write!(f, "revoked (serial {serial})"),
        }
    }
}

impl std::error::Error for CertError {}

impl Certificate {
    /// The CA (`ca`, whose public key must be `body.ca`) signs `body`.
    pub fn issue(ca: &NodeKey, body: CertBody) -> Certificate {
        assert_eq!(body.ca, ca.public(), "a certificate names the CA that signs it");
        Certificate(Signed::sign(ca, KIND, body))
    }

    /// The file's text (and what signals carry).
    pub fn to_text(&self) -> String {
        self.0.to_text(KIND)
    }

    /// Reads a certificate; nothing in it is trusted until `verify`.
    pub fn from_text(text: &str) -> Result<Certificate, CertError> {
        Signed::from_text(KIND, text).map(Certificate).map_err(CertError::Malformed)
    }

    /// The body, if `ca` signed it and `now` (unix seconds) is inside its validity.
    pub fn verify(&self, ca: &PublicKey, now: u64) -> Result<&CertBody, CertError> {
        let b = &self.0.body;
        if b.ca != *ca {
            return Err(CertError::OtherCa(b.ca.to_string()));
        }
        if !self.0.signed_by(ca, KIND) {
            return Err(CertError::BadSignature);
        }
        if now < b.not_before {
            return Err(CertError::NotYetValid { not_before: b.not_before });
        }
        if now >= b.not_after {
            return Err(CertError::Expired { not_after: b.not_after });
        }
        Ok(b)
    }

    /// What it says, unverified (to show it, or to say who claimed what).
    pub fn body(&self) -> &CertBody {
        &self.0.body
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn body(ca: &NodeKey, node: &NodeKey, node_id: &str) -> CertBody {
        CertBody {
            serial: "0123456789abcdef".into(),
            node_id: node_id.into(),
            public_key: node.public(),
            ips: vec!["10.0.3.0/28".parse().unwrap()],
            macs: Vec::new(),
            not_before: 1_000,
            not_after: 2_000,
            ca: ca.public(),
        }
    }

    #[test]
    fn a_certificate_reads_back_and_verifies_inside_its_validity() {
        let (ca, node) = (NodeKey::generate(), NodeKey::generate());
        let cert = Certificate::issue(&ca, body(&ca, &node, "host-a"));
        let read = Certificate::from_text(&cert.to_text()).unwrap();
        let b = read.verify(&ca.public(), 1_500).unwrap();
        assert_eq!((b.node_id.as_str(), b.public_key), ("host-a", node.public()));
        assert_eq!(read.verify(&ca.public(), 999), Err(CertError::NotYetValid { not_before: 1_000 }));
        assert_eq!(read.verify(&ca.public(), 2_000), Err(CertError::Expired { not_after: 2_000 }));
    }

    #[test]
    fn another_ca_or_an_altered_body_is_refused() {
        let (ca, node, other) = (NodeKey::generate(), NodeKey::generate(), NodeKey::generate());
        let cert = Certificate::issue(&ca, body(&ca, &node, "host-a"));
        assert_eq!(cert.verify(&other.public(), 1_500), Err(CertError::OtherCa(ca.public().to_string())));
        // The same body claiming another node id, keeping the signature.
        let forged = cert.to_text().replace("host-a", "host-b");
        assert_eq!(Certificate::from_text(&forged).unwrap().verify(&ca.public(), 1_500), Err(CertError::BadSignature));
        // A certificate of the other CA's making that names ours.
        let mut b = body(&other, &node, "host-a");
        b.ca = other.public();
        let text = Certificate::issue(&other, b).to_text();
        let own_ca = ca.public().to_string();
        let swapped = text.replace(&other.public().to_string(), &own_ca);
        assert_eq!(Certificate::from_text(&swapped).unwrap().verify(&ca.public(), 1_500), Err(CertError::BadSignature));
    }

    #[test]
    fn what_is_no_certificate_says_why() {
        let kind = r#""kind": "ipop certificate""#;
        for bad in [
            "".to_owned(),
            "{}".to_owned(),
            format!(r#"{{{kind}, "version": 2, "body": "{{}}", "signature": ""}}"#),
            format!(r#"{{{kind}, "version": 1, "body": "{{}}", "signature": "zz"}}"#),
            r#"{"kind": "ipop revocation list", "version": 1, "body": "{}", "signature": ""}"#.to_owned(),
        ] {
            assert!(matches!(Certificate::from_text(&bad), Err(CertError::Malformed(_))), "{bad}");
        }
    }
}
