//! A signed document as it travels: its body's exact JSON bytes, as signed, and the
//! signature over them; the body is read from those bytes. Certificates and revocation lists
//! are both this.
//!
//! ```text
//! {"kind": "<kind>", "version": 1, "body": "<the body's JSON, as a string>", "signature": "<hex>"}
//! ```

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::key::{NodeKey, PublicKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed<T> {
    body_json: String,
    signature: Vec<u8>,
    pub(crate) body: T,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    kind: String,
    version: u32,
    body: String,
    signature: String,
}

impl<T: Serialize + DeserializeOwned> Signed<T> {
    /// `key` signs `body` under `kind` (also the signature's context).
    pub(crate) fn sign(key: &NodeKey, kind: &str, body: T) -> Self {
        let body_json = serde_json::to_string(&body).expect("a body serializes");
        let signature = key.sign(kind, body_json.as_bytes()).to_vec();
        Signed { body_json, signature, body }
    }

    pub(crate) fn to_text(&self, kind: &str) -> String {
        let file = File {
            kind: kind.into(),
            version: 1,
            body: self.body_json.clone(),
            signature: hex::encode(&self.signature),
        };
        serde_json::to_string(&file).expect("a signed document serializes")
    }

    /// Reads a document of `kind`; `Err` says why it is none (nothing in it is trusted yet).
    pub(crate) fn from_text(kind: &str, text: &str) -> Result<Self, String> {
        let file: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if file.kind != kind {
            return Err(format!("a {:?}, not an {kind:?}", file.kind));
        }
        if file.version != 1 {
            return Err(format!("version {} (this agent reads 1)", file.version));
        }
        let signature = hex::decode(&file.signature).map_err(|_| "the signature is not hex".to_owned())?;
        let body = serde_json::from_str(&file.body).map_err(|e| format!("its body: {e}"))?;
        Ok(Signed { body_json: file.body, signature, body })
    }

    /// Whether `key` signed it under `kind`.
    pub(crate) fn signed_by(&self, key: &PublicKey, kind: &str) -> bool {
        key.verify(kind, self.body_json.as_bytes(), &self.signature)
    }
}

/// A public key in JSON as its hex text.
pub(crate) mod as_text {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::key::PublicKey;

    pub fn serialize<S: Serializer>(key: &PublicKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PublicKey, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}
