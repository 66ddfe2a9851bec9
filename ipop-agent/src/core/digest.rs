//! Hex and HMAC-SHA256: the keyed digests behind the rendezvous's join proof and the overlay
//! PSK, and the hex that carries keys in logs and on the signaling wire.

use hmac::{Hmac, Mac as _};
use sha2::Sha256;

/// Lower-case hex, for keys in logs and on the rendezvous wire.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lower- or upper-case hex of exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    unhex_vec(s)?.try_into().ok()
}

/// Parses hex of any even length (bytes of unknown size: sealed signals).
pub fn unhex_vec(s: &str) -> Option<Vec<u8>> {
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let pairs = s.as_bytes().chunks(2);
    pairs.map(|p| Some(nibble(p[0])? << 4 | nibble(*p.get(1)?)?)).collect()
}

/// HMAC-SHA256 of `parts` (length-prefixed, so no two part lists collide) under `key`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <Hmac<Sha256>>::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(&(p.len() as u32).to_be_bytes());
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let key = [0xa5u8; 32];
        assert_eq!(unhex::<32>(&hex(&key)), Some(key));
        assert_eq!(unhex::<2>("0g00"), None);
        assert_eq!(unhex::<2>("000"), None);
        assert_eq!(unhex::<2>("é0"), None);
        assert_eq!(unhex_vec(&hex(&[1, 2, 255])), Some(vec![1, 2, 255]));
        assert_eq!(unhex_vec("abc"), None);
        assert_eq!(unhex_vec("+1"), None);
    }

    #[test]
    fn macs_separate_their_parts() {
        assert_ne!(mac(b"k", &[b"ab", b"c"]), mac(b"k", &[b"a", b"bc"]));
    }
}
