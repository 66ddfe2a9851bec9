//! Ethernet + ARP (IPv4 over Ethernet) as a small typed view over bytes, smoltcp style.
//!
//! The eBPF programs use the offsets in [`field`]; the agent and the tests use
//! [`ArpFrame`] to parse and [`build`] to make frames.

/// EtherType of ARP.
pub const ETHERTYPE_ARP: u16 = 0x0806;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// ARP hardware type of Ethernet.
pub const HTYPE_ETHERNET: u16 = 1;
/// ARP operation: request.
pub const OP_REQUEST: u16 = 1;
/// ARP operation: reply.
pub const OP_REPLY: u16 = 2;
/// Length of the Ethernet header.
pub const ETH_HLEN: usize = 14;
/// Length of an ARP packet for IPv4 over Ethernet.
pub const ARP_LEN: usize = 28;
/// Shortest frame that holds a whole Ethernet + ARP packet (without trailer padding).
pub const FRAME_LEN: usize = ETH_HLEN + ARP_LEN;
/// The broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Byte offsets of each field from the start of the Ethernet frame.
pub mod field {
    pub const ETH_DST: usize = 0;
    pub const ETH_SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
    pub const HTYPE: usize = 14;
    pub const PTYPE: usize = 16;
    pub const HLEN: usize = 18;
    pub const PLEN: usize = 19;
    pub const OP: usize = 20;
    pub const SENDER_MAC: usize = 22;
    pub const SENDER_IP: usize = 28;
    pub const TARGET_MAC: usize = 32;
    pub const TARGET_IP: usize = 38;
}

/// Why bytes are not an Ethernet/IPv4 ARP frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArpError {
    /// Shorter than [`FRAME_LEN`].
    Truncated,
    /// The EtherType is not ARP.
    NotArp,
    /// ARP, but not IPv4 over Ethernet (htype, ptype, hlen or plen differ).
    Unsupported,
    /// An operation other than request or reply.
    BadOp,
}

impl core::fmt::Display for ArpError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            ArpError::Truncated => "frame too short for Ethernet + ARP",
            ArpError::NotArp => "EtherType is not ARP",
            ArpError::Unsupported => "ARP is not IPv4 over Ethernet",
            ArpError::BadOp => "ARP operation is neither request nor reply",
        })
    }
}

/// What an ARP packet says; the same fields the ring buffer events carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
    pub target_mac: [u8; 6],
    pub target_ip: [u8; 4],
}

impl Arp {
    /// A probe (RFC 5227): sender IP 0.0.0.0, used for duplicate address detection.
    pub fn is_probe(&self) -> bool {
        self.sender_ip == [0; 4]
    }

    /// A gratuitous ARP: the sender announces its own address.
    pub fn is_gratuitous(&self) -> bool {
        self.sender_ip == self.target_ip
    }

    /// The reply a host owning `target_ip` at `mac` sends to this request.
    pub fn reply_from(&self, mac: [u8; 6]) -> Arp {
        Arp {
            op: OP_REPLY,
            sender_mac: mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }
}

/// A read-only view of an Ethernet frame that carries IPv4-over-Ethernet ARP.
#[derive(Debug, Clone, Copy)]
pub struct ArpFrame<'a> {
    bytes: &'a [u8],
}

/// The big-endian u16 at `at` (also for `nd`).
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// The `N` bytes at `at` (also for `nd`).
pub(crate) fn array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}

impl<'a> ArpFrame<'a> {
    /// Checks that `bytes` is a whole Ethernet/IPv4 ARP request or reply.
    /// Trailing bytes (Ethernet padding) are allowed.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ArpError> {
        if bytes.len() < ETH_HLEN {
            return Err(ArpError::Truncated);
        }
        if be16(bytes, field::ETHERTYPE) != ETHERTYPE_ARP {
            return Err(ArpError::NotArp);
        }
        if bytes.len() < FRAME_LEN {
            return Err(ArpError::Truncated);
        }
        if be16(bytes, field::HTYPE) != HTYPE_ETHERNET
            || be16(bytes, field::PTYPE) != ETHERTYPE_IPV4
            || bytes[field::HLEN] != 6
            || bytes[field::PLEN] != 4
        {
            return Err(ArpError::Unsupported);
        }
        match be16(bytes, field::OP) {
            OP_REQUEST | OP_REPLY => Ok(Self { bytes }),
            _ => Err(ArpError::BadOp),
        }
    }

    pub fn eth_dst(&self) -> [u8; 6] {
        array(self.bytes, field::ETH_DST)
    }

    pub fn eth_src(&self) -> [u8; 6] {
        array(self.bytes, field::ETH_SRC)
    }

    pub fn arp(&self) -> Arp {
        Arp {
            op: be16(self.bytes, field::OP),
            sender_mac: array(self.bytes, field::SENDER_MAC),
            sender_ip: array(self.bytes, field::SENDER_IP),
            target_mac: array(self.bytes, field::TARGET_MAC),
            target_ip: array(self.bytes, field::TARGET_IP),
        }
    }
}

/// Builds the 42-byte frame carrying `arp` from `eth_src` to `eth_dst`.
pub fn build(eth_dst: [u8; 6], eth_src: [u8; 6], arp: &Arp) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[field::ETH_DST..field::ETH_DST + 6].copy_from_slice(&eth_dst);
    f[field::ETH_SRC..field::ETH_SRC + 6].copy_from_slice(&eth_src);
    f[field::ETHERTYPE..field::ETHERTYPE + 2].copy_from_slice(&ETHERTYPE_ARP.to_be_bytes());
    f[field::HTYPE..field::HTYPE + 2].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
    f[field::PTYPE..field::PTYPE + 2].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    f[field::HLEN] = 6;
    f[field::PLEN] = 4;
    f[field::OP..field::OP + 2].copy_from_slice(&arp.op.to_be_bytes());
    f[field::SENDER_MAC..field::SENDER_MAC + 6].copy_from_slice(&arp.sender_mac);
    f[field::SENDER_IP..field::SENDER_IP + 4].copy_from_slice(&arp.sender_ip);
    f[field::TARGET_MAC..field::TARGET_MAC + 6].copy_from_slice(&arp.target_mac);
    f[field::TARGET_IP..field::TARGET_IP + 4].copy_from_slice(&arp.target_ip);
    f
}

/// The frame a host owning the requested IP at `mac` sends back to `request`
/// (which came from `request_eth_src`). The kernel program writes the same bytes in place.
pub fn build_reply(request_eth_src: [u8; 6], request: &Arp, mac: [u8; 6]) -> [u8; FRAME_LEN] {
    build(request_eth_src, mac, &request.reply_from(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
    const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x68];

    fn request() -> Arp {
        Arp {
            op: OP_REQUEST,
            sender_mac: A_MAC,
            sender_ip: [10, 0, 3, 5],
            target_mac: [0; 6],
            target_ip: [10, 0, 3, 104],
        }
    }

    #[test]
    fn build_then_parse_round_trips() {
        let req = request();
        let bytes = build(BROADCAST, A_MAC, &req);
        let frame = ArpFrame::parse(&bytes).unwrap();
        assert_eq!(frame.arp(), req);
        assert_eq!(frame.eth_dst(), BROADCAST);
        assert_eq!(frame.eth_src(), A_MAC);
    }

    #[test]
    fn request_bytes_match_the_wire_layout() {
        let bytes = build(BROADCAST, A_MAC, &request());
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x05, 0x08, 0x06, // ethernet
            0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // htype ptype hlen plen op
            0x02, 0, 0, 0, 0, 0x05, 10, 0, 3, 5, // sender
            0, 0, 0, 0, 0, 0, 10, 0, 3, 104, // target
        ];
        assert_eq!(bytes, expected);
    }

    #[test]
    fn reply_swaps_roles_and_addresses_the_requester() {
        let req = request();
        let bytes = build_reply(A_MAC, &req, B_MAC);
        let frame = ArpFrame::parse(&bytes).unwrap();
        assert_eq!(frame.eth_dst(), A_MAC);
        assert_eq!(frame.eth_src(), B_MAC);
        let arp = frame.arp();
        assert_eq!(arp.op, OP_REPLY);
        assert_eq!((arp.sender_mac, arp.sender_ip), (B_MAC, [10, 0, 3, 104]));
        assert_eq!((arp.target_mac, arp.target_ip), (A_MAC, [10, 0, 3, 5]));
    }

    #[test]
    fn padded_frames_parse() {
        let mut padded = [0u8; 60];
        padded[..FRAME_LEN].copy_from_slice(&build(BROADCAST, A_MAC, &request()));
        assert_eq!(ArpFrame::parse(&padded).unwrap().arp(), request());
    }

    #[test]
    fn malformed_frames_are_rejected_with_a_reason() {
        let good = build(BROADCAST, A_MAC, &request());
        assert_eq!(ArpFrame::parse(&good[..41]).unwrap_err(), ArpError::Truncated);
        assert_eq!(ArpFrame::parse(&good[..10]).unwrap_err(), ArpError::Truncated);
        let mut ipv4 = good;
        ipv4[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        assert_eq!(ArpFrame::parse(&ipv4).unwrap_err(), ArpError::NotArp);
        let mut ipv6_arp = good;
        ipv6_arp[field::PLEN] = 16;
        assert_eq!(ArpFrame::parse(&ipv6_arp).unwrap_err(), ArpError::Unsupported);
        let mut token_ring = good;
        token_ring[field::HTYPE + 1] = 6;
        assert_eq!(ArpFrame::parse(&token_ring).unwrap_err(), ArpError::Unsupported);
        let mut rarp = good;
        rarp[field::OP + 1] = 3;
        assert_eq!(ArpFrame::parse(&rarp).unwrap_err(), ArpError::BadOp);
    }

    #[test]
    fn probes_and_gratuitous_are_recognised() {
        let mut probe = request();
        probe.sender_ip = [0; 4];
        assert!(probe.is_probe());
        let mut garp = request();
        garp.target_ip = garp.sender_ip;
        assert!(garp.is_gratuitous());
        assert!(!request().is_probe() && !request().is_gratuitous());
    }
}
