//! Ethernet + IPv6 + ICMPv6 neighbour discovery (RFC 4861: solicitations and advertisements)
//! as a small typed view over bytes, smoltcp style, and the advertisement both the kernel
//! program and the agent write.
//!
//! Only the shape ND has on a link is recognised: no extension headers, hop limit 255, code 0
//! (RFC 4861 7.1.1 and 7.1.2 require the last two; hosts drop anything else). The link-layer
//! option is read when it comes first, where Linux and every common stack put it. The kernel
//! program uses the offsets in [`field`]; [`NdFrame::parse`] applies the same rules, so the
//! agent and the programs agree on which frames are ND.

use crate::arp::{ETH_HLEN, array, be16};

/// EtherType of IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IPv6 next header of ICMPv6.
pub const NEXT_HEADER_ICMPV6: u8 = 58;
/// ICMPv6 type of a neighbour solicitation.
pub const NEIGHBOR_SOLICIT: u8 = 135;
/// ICMPv6 type of a neighbour advertisement.
pub const NEIGHBOR_ADVERT: u8 = 136;
/// Option type: source link-layer address (in solicitations).
pub const OPT_SOURCE_LL: u8 = 1;
/// Option type: target link-layer address (in advertisements).
pub const OPT_TARGET_LL: u8 = 2;
/// Advertisement flags (the first byte of the reserved word).
pub const FLAG_ROUTER: u8 = 0x80;
pub const FLAG_SOLICITED: u8 = 0x40;
pub const FLAG_OVERRIDE: u8 = 0x20;
/// Length of the IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Length of a solicitation or advertisement without options.
pub const ND_LEN: usize = 24;
/// Length of a link-layer address option for Ethernet.
pub const LL_OPT_LEN: usize = 8;
/// Shortest ND frame: Ethernet + IPv6 + the message without options.
pub const MIN_FRAME_LEN: usize = ETH_HLEN + IPV6_HLEN + ND_LEN;
/// An ND frame with one link-layer option, as the agent and the kernel program write them.
pub const FRAME_LEN: usize = MIN_FRAME_LEN + LL_OPT_LEN;
/// The IPv6 packet of an advertisement with its option (header + message).
pub const ADVERT_PACKET_LEN: usize = IPV6_HLEN + ND_LEN + LL_OPT_LEN;
/// ff02::1, all nodes: where an advertisement answering duplicate address detection goes.
pub const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Byte offsets of each field from the start of the Ethernet frame.
pub mod field {
    pub const ETH_DST: usize = 0;
    pub const ETH_SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
    pub const IP6: usize = 14;
    pub const PAYLOAD_LEN: usize = 18;
    pub const NEXT_HEADER: usize = 20;
    pub const HOP_LIMIT: usize = 21;
    pub const SRC: usize = 22;
    pub const DST: usize = 38;
    pub const ICMP_TYPE: usize = 54;
    pub const ICMP_CODE: usize = 55;
    pub const CHECKSUM: usize = 56;
    pub const FLAGS: usize = 58;
    pub const TARGET: usize = 62;
    pub const OPT_TYPE: usize = 78;
    pub const OPT_LEN: usize = 79;
    pub const OPT_LLADDR: usize = 80;
}

/// Why bytes are not an ND frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NdError {
    Truncated,
    /// Not IPv6 carrying ICMPv6 directly.
    NotIcmpv6,
    /// ICMPv6, but not a solicitation or advertisement as RFC 4861 has them on a link.
    NotNd,
}

impl core::fmt::Display for NdError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NdError::Truncated => "frame too short for Ethernet + IPv6 + neighbour discovery",
            NdError::NotIcmpv6 => "not IPv6 carrying ICMPv6",
            NdError::NotNd => "not a neighbour solicitation or advertisement (type, code or hop limit)",
        })
    }
}

/// What a solicitation or advertisement says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nd {
    /// [`NEIGHBOR_SOLICIT`] or [`NEIGHBOR_ADVERT`].
    pub kind: u8,
    /// `FLAG_*` of an advertisement; 0 in a solicitation.
    pub flags: u8,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub target: [u8; 16],
    /// The link-layer address option (source in a solicitation, target in an advertisement).
    pub lladdr: Option<[u8; 6]>,
}

impl Nd {
    /// Duplicate address detection: a solicitation from the unspecified address.
    pub fn is_dad(&self) -> bool {
        self.kind == NEIGHBOR_SOLICIT && self.src == [0; 16]
    }
}

/// The solicited-node multicast address of `target` (ff02::1:ffXX:XXXX), where solicitations
/// for it are sent.
pub fn solicited_node(target: &[u8; 16]) -> [u8; 16] {
    let mut a = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0, 0, 0];
    a[13..].copy_from_slice(&target[13..]);
    a
}

/// The Ethernet multicast address of IPv6 multicast address `ip` (33:33 + its last 4 bytes).
pub fn multicast_mac(ip: &[u8; 16]) -> [u8; 6] {
    [0x33, 0x33, ip[12], ip[13], ip[14], ip[15]]
}

/// A read-only view of an Ethernet frame that carries a neighbour solicitation or
/// advertisement.
#[derive(Debug, Clone, Copy)]
pub struct NdFrame<'a> {
    bytes: &'a [u8],
}

impl<'a> NdFrame<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Self, NdError> {
        if bytes.len() < ETH_HLEN + IPV6_HLEN {
            return Err(if bytes.len() >= ETH_HLEN && be16(bytes, field::ETHERTYPE) != ETHERTYPE_IPV6 {
                NdError::NotIcmpv6
            } else {
                NdError::Truncated
            });
        }
        if be16(bytes, field::ETHERTYPE) != ETHERTYPE_IPV6
            || bytes[field::IP6] >> 4 != 6
            || bytes[field::NEXT_HEADER] != NEXT_HEADER_ICMPV6
        {
            return Err(NdError::NotIcmpv6);
        }
        if bytes.len() < MIN_FRAME_LEN
            || ETH_HLEN + IPV6_HLEN + (be16(bytes, field::PAYLOAD_LEN) as usize) > bytes.len()
        {
            return Err(NdError::Truncated);
        }
        let kind = bytes[field::ICMP_TYPE];
        if (kind != NEIGHBOR_SOLICIT && kind != NEIGHBOR_ADVERT)
            || bytes[field::ICMP_CODE] != 0
            || bytes[field::HOP_LIMIT] != 255
            || (be16(bytes, field::PAYLOAD_LEN) as usize) < ND_LEN
        {
            return Err(NdError::NotNd);
        }
        Ok(Self { bytes })
    }

    pub fn eth_dst(&self) -> [u8; 6] {
        array(self.bytes, field::ETH_DST)
    }

    pub fn eth_src(&self) -> [u8; 6] {
        array(self.bytes, field::ETH_SRC)
    }

    pub fn nd(&self) -> Nd {
        let b = self.bytes;
        let kind = b[field::ICMP_TYPE];
        let opt = if kind == NEIGHBOR_SOLICIT { OPT_SOURCE_LL } else { OPT_TARGET_LL };
        let has_opt = (be16(b, field::PAYLOAD_LEN) as usize) >= ND_LEN + LL_OPT_LEN
            && b[field::OPT_TYPE] == opt
            && b[field::OPT_LEN] == 1;
        Nd {
            kind,
            flags: if kind == NEIGHBOR_ADVERT {
                b[field::FLAGS] & (FLAG_ROUTER | FLAG_SOLICITED | FLAG_OVERRIDE)
            } else {
                0
            },
            src: array(b, field::SRC),
            dst: array(b, field::DST),
            target: array(b, field::TARGET),
            lladdr: has_opt.then(|| array(b, field::OPT_LLADDR)),
        }
    }
}

/// Adds `bytes` to a ones' complement sum as big-endian 16-bit words (even length).
#[inline(always)]
fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u16::from_be_bytes([bytes[i], bytes[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// The ICMPv6 checksum (RFC 4443 2.3) of an IPv6 `packet` (header + message, checksum field
/// zero) that carries ICMPv6: the pseudo-header of its addresses, length and next header, and
/// the message.
#[inline(always)]
pub fn icmpv6_checksum(packet: &[u8]) -> u16 {
    let message = &packet[IPV6_HLEN..];
    let mut sum = sum_words(0, &packet[8..40]);
    sum += message.len() as u32 + NEXT_HEADER_ICMPV6 as u32;
    sum = sum_words(sum, message);
    // Two folds always suffice for a u32 sum; no loop, which the verifier would have to prove
    // finite (and refuses to without CAP_PERFMON).
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// The IPv6 packet (header and message, checksum filled in) of an advertisement from the
/// owner of `target`, at `mac`, to `dst`, with `flags` and the target link-layer option.
pub fn advert_packet(target: &[u8; 16], dst: &[u8; 16], mac: &[u8; 6], flags: u8) -> [u8; ADVERT_PACKET_LEN] {
    let mut p = [0u8; ADVERT_PACKET_LEN];
    write_advert(&mut p, target, dst, mac, flags);
    p
}

/// Writes [`advert_packet`] into `p`, every byte (the kernel program's scratch buffer holds
/// the last one's), one by one: a `fill` would be a memset loop the verifier refuses without
/// CAP_PERFMON.
#[inline(always)]
pub fn write_advert(p: &mut [u8; ADVERT_PACKET_LEN], target: &[u8; 16], dst: &[u8; 16], mac: &[u8; 6], flags: u8) {
    (p[1], p[2], p[3], p[4]) = (0, 0, 0, 0);
    (p[41], p[42], p[43]) = (0, 0, 0);
    (p[45], p[46], p[47]) = (0, 0, 0);
    p[0] = 0x60;
    p[5] = (ND_LEN + LL_OPT_LEN) as u8;
    p[6] = NEXT_HEADER_ICMPV6;
    p[7] = 255;
    p[8..24].copy_from_slice(target);
    p[24..40].copy_from_slice(dst);
    p[40] = NEIGHBOR_ADVERT;
    p[44] = flags;
    p[48..64].copy_from_slice(target);
    p[64] = OPT_TARGET_LL;
    p[65] = 1;
    p[66..72].copy_from_slice(mac);
    let sum = icmpv6_checksum(p);
    p[42..44].copy_from_slice(&sum.to_be_bytes());
}

/// The advertisement frame the owner of `target` at `mac` sends to `dst` at `eth_dst`.
pub fn build_advert(eth_dst: [u8; 6], target: &[u8; 16], dst: &[u8; 16], mac: [u8; 6], flags: u8) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    f[ETH_HLEN..].copy_from_slice(&advert_packet(target, dst, &mac, flags));
    f
}

/// The answer to solicitation `ns` (from `eth_src`) by the owner of its target at `mac`,
/// as the kernel program writes it: to the solicitor, solicited and override set, and the
/// router flag if the owner is a router.
pub fn build_answer(eth_src: [u8; 6], ns: &Nd, mac: [u8; 6], router: bool) -> [u8; FRAME_LEN] {
    let r = if router { FLAG_ROUTER } else { 0 };
    build_advert(eth_src, &ns.target, &ns.src, mac, r | FLAG_SOLICITED | FLAG_OVERRIDE)
}

/// A solicitation for `target` from `src` at `mac`, to the target's solicited-node group.
/// From the unspecified address (duplicate address detection) it carries no option.
pub fn build_solicit(mac: [u8; 6], src: &[u8; 16], target: &[u8; 16]) -> ([u8; FRAME_LEN], usize) {
    let group = solicited_node(target);
    let dad = *src == [0; 16];
    let len = if dad { MIN_FRAME_LEN } else { FRAME_LEN };
    let mut f = [0u8; FRAME_LEN];
    f[..6].copy_from_slice(&multicast_mac(&group));
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
    let mut p = [0u8; ADVERT_PACKET_LEN];
    p[0] = 0x60;
    p[5] = (len - ETH_HLEN - IPV6_HLEN) as u8;
    p[6] = NEXT_HEADER_ICMPV6;
    p[7] = 255;
    p[8..24].copy_from_slice(src);
    p[24..40].copy_from_slice(&group);
    p[40] = NEIGHBOR_SOLICIT;
    p[48..64].copy_from_slice(target);
    if !dad {
        p[64] = OPT_SOURCE_LL;
        p[65] = 1;
        p[66..72].copy_from_slice(&mac);
    }
    let sum = icmpv6_checksum(&p[..len - ETH_HLEN]);
    p[42..44].copy_from_slice(&sum.to_be_bytes());
    f[ETH_HLEN..].copy_from_slice(&p);
    (f, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x05];
    const B_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x68];
    const A: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];
    const B: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x68];

    /// RFC 1071 over the pseudo-header and message, summed independently of the code above:
    /// a packet with a correct checksum sums to 0xffff.
    fn verifies(frame: &[u8]) -> bool {
        let ip = &frame[ETH_HLEN..];
        let len = be16(ip, 4) as usize;
        let mut pseudo = [0u8; 40].to_vec();
        pseudo[..32].copy_from_slice(&ip[8..40]);
        pseudo[32..36].copy_from_slice(&(len as u32).to_be_bytes());
        pseudo[39] = NEXT_HEADER_ICMPV6;
        pseudo.extend_from_slice(&ip[40..40 + len]);
        let mut sum: u64 = pseudo.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]]) as u64).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum == 0xffff
    }

    #[test]
    fn a_solicitation_round_trips_with_a_correct_checksum() {
        let (f, len) = build_solicit(A_MAC, &A, &B);
        assert_eq!(len, FRAME_LEN);
        assert!(verifies(&f[..len]));
        let frame = NdFrame::parse(&f[..len]).unwrap();
        assert_eq!(frame.eth_dst(), [0x33, 0x33, 0xff, 0, 0, 0x68]);
        let nd = frame.nd();
        assert_eq!((nd.kind, nd.src, nd.target, nd.lladdr), (NEIGHBOR_SOLICIT, A, B, Some(A_MAC)));
        assert_eq!(nd.dst, solicited_node(&B));
        assert!(!nd.is_dad());
    }

    #[test]
    fn a_dad_solicitation_has_no_option_and_a_correct_checksum() {
        let (f, len) = build_solicit(A_MAC, &[0; 16], &B);
        assert_eq!(len, MIN_FRAME_LEN);
        assert!(verifies(&f[..len]));
        let nd = NdFrame::parse(&f[..len]).unwrap().nd();
        assert!(nd.is_dad());
        assert_eq!(nd.lladdr, None);
    }

    #[test]
    fn the_answer_is_what_the_owner_would_send() {
        let (ns, len) = build_solicit(A_MAC, &A, &B);
        let request = NdFrame::parse(&ns[..len]).unwrap().nd();
        let f = build_answer(A_MAC, &request, B_MAC, false);
        assert!(verifies(&f));
        let frame = NdFrame::parse(&f).unwrap();
        assert_eq!((frame.eth_dst(), frame.eth_src()), (A_MAC, B_MAC));
        let na = frame.nd();
        assert_eq!((na.kind, na.src, na.dst, na.target), (NEIGHBOR_ADVERT, B, A, B));
        assert_eq!(na.flags, FLAG_SOLICITED | FLAG_OVERRIDE);
        assert_eq!(na.lladdr, Some(B_MAC));
    }

    #[test]
    fn advert_bytes_match_the_wire_layout() {
        let f = build_advert(A_MAC, &B, &A, B_MAC, FLAG_SOLICITED | FLAG_OVERRIDE);
        let head: [u8; 24] = [
            0x02, 0, 0, 0, 0, 0x05, 0x02, 0, 0, 0, 0, 0x68, 0x86, 0xdd, // ethernet
            0x60, 0, 0, 0, 0, 32, 58, 255, // version, payload length, ICMPv6, hop limit
            0xfd, 0, // source fd00::68...
        ];
        assert_eq!(f[..24], head);
        assert_eq!(f[54..56], [136, 0]);
        assert_eq!(f[58..62], [0x60, 0, 0, 0]);
        assert_eq!(f[78..86], [2, 1, 0x02, 0, 0, 0, 0, 0x68]);
    }

    #[test]
    fn what_is_not_nd_is_told_apart() {
        let (good, len) = build_solicit(A_MAC, &A, &B);
        let good = &good[..len];
        assert_eq!(NdFrame::parse(&good[..70]).unwrap_err(), NdError::Truncated);
        let mut hop = good.to_vec();
        hop[field::HOP_LIMIT] = 64;
        assert_eq!(NdFrame::parse(&hop).unwrap_err(), NdError::NotNd);
        let mut echo = good.to_vec();
        echo[field::ICMP_TYPE] = 128;
        assert_eq!(NdFrame::parse(&echo).unwrap_err(), NdError::NotNd);
        let mut udp = good.to_vec();
        udp[field::NEXT_HEADER] = 17;
        assert_eq!(NdFrame::parse(&udp).unwrap_err(), NdError::NotIcmpv6);
        let mut arp = good.to_vec();
        arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(NdFrame::parse(&arp).unwrap_err(), NdError::NotIcmpv6);
        let mut long = good.to_vec();
        long[field::PAYLOAD_LEN + 1] = 200;
        assert_eq!(NdFrame::parse(&long).unwrap_err(), NdError::Truncated);
    }

    #[test]
    fn writing_an_advert_over_an_old_one_leaves_nothing_of_it() {
        let mut scratch = [0xa5u8; ADVERT_PACKET_LEN];
        write_advert(&mut scratch, &B, &A, &B_MAC, FLAG_SOLICITED);
        assert_eq!(scratch, advert_packet(&B, &A, &B_MAC, FLAG_SOLICITED));
    }

    #[test]
    fn multicast_addresses_follow_the_target() {
        assert_eq!(solicited_node(&B)[..13], [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff]);
        assert_eq!(multicast_mac(&ALL_NODES), [0x33, 0x33, 0, 0, 0, 1]);
    }
}
