//! Datagrams on a link, as typed views over bytes.
//!
//! ```text
//! outer:  kind (1) | body
//!   HANDSHAKE_INIT / HANDSHAKE_RESP: body = Noise handshake message
//!   TRANSPORT: body = counter (8, big endian) | AEAD(inner) (ciphertext + 16-byte tag)
//! inner:  type (1) | payload
//!   ETHERNET: a chunk of a frame (`chunk`)   RPC: a JSON-RPC 2.0 message   KEEPALIVE: empty
//! ```
//! Kinds have their top two bits set, so no datagram ever looks like STUN (whose first
//! two bits are zero): webrtc-ice refuses to send payloads that do.

pub const HANDSHAKE_INIT: u8 = 0xc1;
pub const HANDSHAKE_RESP: u8 = 0xc2;
pub const TRANSPORT: u8 = 0xc3;
/// A transport datagram on the agent's own data socket: it names the receiver's index
/// first, because one socket serves every peer and a NAT may change the source address.
pub const INDEXED: u8 = 0xc4;

pub const COUNTER_LEN: usize = 8;
pub const INDEX_LEN: usize = 4;
pub const TAG_LEN: usize = 16;
/// Bytes a transport datagram adds to its payload: kind, counter, inner type, tag.
pub const OVERHEAD: usize = 1 + COUNTER_LEN + 1 + TAG_LEN;
/// Largest datagram a link sends or accepts: webrtc-ice reads at most 8192 bytes a datagram.
/// (On a 1500-byte underlay the kernel sends it as IP fragments.)
pub const MAX_DATAGRAM: usize = 8192;
/// Largest inner payload.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - OVERHEAD;

/// What an authenticated datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inner {
    Ethernet,
    Rpc,
    Keepalive,
    /// Asks whether the data socket path works (sent there, sealed).
    Probe,
    /// Says it does: the sender may move data to the data socket.
    ProbeAck,
}

impl Inner {
    pub fn to_byte(self) -> u8 {
        match self {
            Inner::Ethernet => 0x01,
            Inner::Rpc => 0x02,
            Inner::Keepalive => 0x03,
            Inner::Probe => 0x04,
            Inner::ProbeAck => 0x05,
        }
    }

    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            0x01 => Some(Inner::Ethernet),
            0x02 => Some(Inner::Rpc),
            0x03 => Some(Inner::Keepalive),
            0x04 => Some(Inner::Probe),
            0x05 => Some(Inner::ProbeAck),
            _ => None,
        }
    }
}

/// An outer datagram, split but not yet authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    HandshakeInit(&'a [u8]),
    HandshakeResp(&'a [u8]),
    Transport { counter: u64, sealed: &'a [u8] },
    Indexed { index: u32, counter: u64, sealed: &'a [u8] },
}

/// Why bytes are not a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    Empty,
    UnknownKind(u8),
    Truncated,
    TooLong,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Empty => f.write_str("empty datagram"),
            WireError::UnknownKind(k) => write!(f, "unknown datagram kind {k:#04x}"),
            WireError::Truncated => f.write_str("datagram too short for its kind"),
            WireError::TooLong => f.write_str("datagram longer than the link allows"),
        }
    }
}

impl<'a> Datagram<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, WireError> {
        let (&kind, body) = bytes.split_first().ok_or(WireError::Empty)?;
        if bytes.len() > MAX_DATAGRAM {
            return Err(WireError::TooLong);
        }
        match kind {
            HANDSHAKE_INIT if !body.is_empty() => Ok(Datagram::HandshakeInit(body)),
            HANDSHAKE_RESP if !body.is_empty() => Ok(Datagram::HandshakeResp(body)),
            TRANSPORT if body.len() > COUNTER_LEN + TAG_LEN => {
                let (counter, sealed) = body.split_at(COUNTER_LEN);
                Ok(Datagram::Transport { counter: u64::from_be_bytes(counter.try_into().unwrap()), sealed })
            }
            INDEXED if body.len() > INDEX_LEN + COUNTER_LEN + TAG_LEN => {
                let (index, rest) = body.split_at(INDEX_LEN);
                let (counter, sealed) = rest.split_at(COUNTER_LEN);
                Ok(Datagram::Indexed {
                    index: u32::from_be_bytes(index.try_into().unwrap()),
                    counter: u64::from_be_bytes(counter.try_into().unwrap()),
                    sealed,
                })
            }
            HANDSHAKE_INIT | HANDSHAKE_RESP | TRANSPORT | INDEXED => Err(WireError::Truncated),
            other => Err(WireError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_datagrams_split_into_counter_and_sealed_bytes() {
        let mut d = vec![TRANSPORT];
        d.extend_from_slice(&42u64.to_be_bytes());
        d.extend_from_slice(&[7u8; 17]);
        assert_eq!(Datagram::parse(&d).unwrap(), Datagram::Transport { counter: 42, sealed: &[7u8; 17] });
    }

    #[test]
    fn indexed_datagrams_name_the_receiver_first() {
        let mut d = vec![INDEXED];
        d.extend_from_slice(&7u32.to_be_bytes());
        d.extend_from_slice(&42u64.to_be_bytes());
        d.extend_from_slice(&[9u8; 17]);
        assert_eq!(Datagram::parse(&d).unwrap(), Datagram::Indexed { index: 7, counter: 42, sealed: &[9u8; 17] });
        assert_eq!(Datagram::parse(&d[..d.len() - 1]), Err(WireError::Truncated));
    }

    #[test]
    fn malformed_datagrams_are_refused() {
        assert_eq!(Datagram::parse(&[]), Err(WireError::Empty));
        assert_eq!(Datagram::parse(&[0x00, 1, 2]), Err(WireError::UnknownKind(0)));
        assert_eq!(Datagram::parse(&[HANDSHAKE_INIT]), Err(WireError::Truncated));
        assert_eq!(Datagram::parse(&[TRANSPORT, 0, 0, 0, 0, 0, 0, 0, 1, 9]), Err(WireError::Truncated));
        assert_eq!(Datagram::parse(&vec![TRANSPORT; MAX_DATAGRAM + 1]), Err(WireError::TooLong));
    }

    #[test]
    fn no_kind_looks_like_stun() {
        for kind in [HANDSHAKE_INIT, HANDSHAKE_RESP, TRANSPORT, INDEXED] {
            assert_ne!(kind & 0xc0, 0, "STUN messages start with two zero bits");
        }
    }

    #[test]
    fn inner_types_round_trip() {
        for t in [Inner::Ethernet, Inner::Rpc, Inner::Keepalive, Inner::Probe, Inner::ProbeAck] {
            assert_eq!(Inner::from_byte(t.to_byte()), Some(t));
        }
        assert_eq!(Inner::from_byte(0), None);
    }
}
