//! The `virtio_net_hdr` that precedes every frame on the TAP (opened with `IFF_VNET_HDR`): how
//! the kernel should segment and checksum a super-frame. A typed check of the one a peer sends.

/// `sizeof(struct virtio_net_hdr)`.
pub const VNET_HDR_LEN: usize = 10;
/// Largest frame the kernel hands a TAP with TSO (IP's 64 KiB plus the Ethernet header).
pub const MAX_FRAME: usize = 65_550;

pub const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
pub const VIRTIO_NET_HDR_F_DATA_VALID: u8 = 2;
pub const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
pub const VIRTIO_NET_HDR_GSO_TCPV4: u8 = 1;
pub const VIRTIO_NET_HDR_GSO_TCPV6: u8 = 4;
pub const VIRTIO_NET_HDR_GSO_ECN: u8 = 0x80;

/// Whether a `virtio_net_hdr` from a peer describes something this agent will hand its
/// kernel: known flags and GSO types only, a segment size when segmenting, offsets inside
/// the frame. (The kernel checks again; this keeps a peer from probing it.)
pub fn vnet_hdr_ok(hdr: &[u8; VNET_HDR_LEN], frame_len: usize) -> bool {
    let flags = hdr[0];
    let gso = hdr[1] & !VIRTIO_NET_HDR_GSO_ECN;
    let le = |i: usize| u16::from_le_bytes([hdr[i], hdr[i + 1]]) as usize;
    let (hdr_len, gso_size, csum_start, csum_offset) = (le(2), le(4), le(6), le(8));
    flags & !(VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) == 0
        && matches!(gso, VIRTIO_NET_HDR_GSO_NONE | VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_TCPV6)
        && (gso == VIRTIO_NET_HDR_GSO_NONE || (gso_size > 0 && hdr_len <= frame_len))
        && (flags & VIRTIO_NET_HDR_F_NEEDS_CSUM == 0 || csum_start + csum_offset + 2 <= frame_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(flags: u8, gso: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16) -> [u8; VNET_HDR_LEN] {
        let mut h = [0u8; VNET_HDR_LEN];
        h[0] = flags;
        h[1] = gso;
        for (i, v) in [hdr_len, gso_size, start, off].into_iter().enumerate() {
            h[2 + 2 * i..4 + 2 * i].copy_from_slice(&v.to_le_bytes());
        }
        h
    }

    #[test]
    fn headers_the_kernel_produces_are_accepted() {
        assert!(vnet_hdr_ok(&[0; VNET_HDR_LEN], 60));
        assert!(vnet_hdr_ok(&hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 66, 1448, 34, 16), 65_000));
        assert!(vnet_hdr_ok(
            &hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV6 | VIRTIO_NET_HDR_GSO_ECN, 86, 1428, 54, 16),
            9000
        ));
    }

    #[test]
    fn headers_a_peer_could_forge_are_refused() {
        assert!(!vnet_hdr_ok(&hdr(0x40, 0, 0, 0, 0, 0), 60), "unknown flag");
        assert!(!vnet_hdr_ok(&hdr(0, 3, 0, 1400, 0, 0), 60), "UDP fragmentation offload");
        assert!(!vnet_hdr_ok(&hdr(0, VIRTIO_NET_HDR_GSO_TCPV4, 66, 0, 0, 0), 9000), "segmenting by 0");
        assert!(!vnet_hdr_ok(&hdr(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 58, 16), 60), "checksum beyond the frame");
    }
}
