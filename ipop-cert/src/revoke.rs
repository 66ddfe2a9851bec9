//! Revocation lists: the serials of certificates the CA no longer vouches for, numbered so an
//! agent takes a list only when it is newer than the one it holds. A `Signed` document of kind
//! "ipop revocation list"; its body: `{"number", "issued", "revoked": [serial, ...], "ca"}`.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    cert::CertError,
    key::{NodeKey, PublicKey},
    signed::{Signed, as_text},
};

const KIND: &str = "ipop revocation list";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationBody {
    /// Grows with every list the CA issues.
    pub number: u64,
    /// Unix seconds.
    pub issued: u64,
    pub revoked: BTreeSet<String>,
    #[serde(with = "as_text")]
    pub ca: PublicKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList(Signed<RevocationBody>);

impl RevocationList {
    /// The CA's first list: nothing revoked.
    pub fn empty(ca: &NodeKey, now: u64) -> RevocationList {
        RevocationList::issue(ca, RevocationBody { number: 0, issued: now, revoked: BTreeSet::new(), ca: ca.public() })
    }

    /// The next list: this one's serials and `serials`, numbered one higher.
    pub fn with(&self, ca: &NodeKey, serials: impl IntoIterator<Item = String>, now: u64) -> RevocationList {
        let b = &self.0.body;
        let mut revoked = b.revoked.clone();
        revoked.extend(serials);
        RevocationList::issue(ca, RevocationBody { number: b.number + 1, issued: now, revoked, ca: ca.public() })
    }

    fn issue(ca: &NodeKey, body: RevocationBody) -> RevocationList {
        RevocationList(Signed::sign(ca, KIND, body))
    }

    pub fn to_text(&self) -> String {
        self.0.to_text(KIND)
    }

    pub fn from_text(text: &str) -> Result<RevocationList, CertError> {
        Signed::from_text(KIND, text).map(RevocationList).map_err(CertError::Malformed)
    }

    /// The body, if `ca` signed it.
    pub fn verify(&self, ca: &PublicKey) -> Result<&RevocationBody, CertError> {
        let b = &self.0.body;
        if b.ca != *ca {
            return Err(CertError::OtherCa(b.ca.to_string()));
        }
        if !self.0.signed_by(ca, KIND) {
            return Err(CertError::BadSignature);
        }
        Ok(b)
    }

    /// Unverified (call `verify` first where it matters).
    pub fn body(&self) -> &RevocationBody {
        &self.0.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_grow_and_verify_only_under_their_ca() {
        let ca = NodeKey::generate();
        let first = RevocationList::empty(&ca, 100);
        let next = first.with(&ca, ["aa".to_owned()], 200);
        let read = RevocationList::from_text(&next.to_text()).unwrap();
        let b = read.verify(&ca.public()).unwrap();
        assert_eq!((b.number, b.revoked.contains("aa"), b.issued), (1, true, 200));
        let other = NodeKey::generate();
        assert_eq!(read.verify(&other.public()), Err(CertError::OtherCa(ca.public().to_string())));
        let forged = next.to_text().replace(r#"\"aa\""#, r#"\"bb\""#);
        assert_eq!(RevocationList::from_text(&forged).unwrap().verify(&ca.public()), Err(CertError::BadSignature));
    }
}
