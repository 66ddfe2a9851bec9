//! Frames on a link: a frame from the TAP (its virtio header, then up to 64 KiB of
//! super-frame) is cut into chunks that each fit one datagram, and put back together on the
//! other side. Pure.
//!
//! ```text
//! chunk: id (4, big endian) | index (1) | count (1) | bytes of (virtio header ‖ frame)
//! ```
//! Chunks of one frame share an id and are sent in order; the receiver keeps one frame in
//! progress per peer. A gap (a lost or reordered chunk) drops that frame, as a lost packet
//! would be dropped: TCP resends it.

use bytes::{BufMut as _, Bytes, BytesMut};

use crate::core::{vnet, wire};

pub const HEADER: usize = 6;
/// Frame bytes per chunk on the ICE path (datagrams up to `wire::MAX_DATAGRAM`).
pub const DATA: usize = wire::MAX_PAYLOAD - HEADER;
/// Frame bytes per chunk on the data socket, whose datagrams must fit a 1500-byte underlay
/// MTU unfragmented (IPv6 and UDP headers: 48 bytes) because GSO cuts them at that size.
pub const DIRECT_DATAGRAM: usize = 1452;
pub const DIRECT_DATA: usize = DIRECT_DATAGRAM - wire::OVERHEAD - wire::INDEX_LEN - HEADER;
/// Largest whole (virtio header + frame) accepted.
pub const MAX_WHOLE: usize = vnet::VNET_HDR_LEN + vnet::MAX_FRAME;
const MAX_COUNT: usize = MAX_WHOLE.div_ceil(DIRECT_DATA);

/// The chunks carrying `whole` (virtio header followed by the frame) under `id`.
pub fn split(id: u32, whole: &[u8]) -> impl Iterator<Item = Bytes> + '_ {
    pieces(id, whole, DATA).map(|(header, data)| {
        let mut b = BytesMut::with_capacity(HEADER + data.len());
        b.put_slice(&header);
        b.put_slice(data);
        b.freeze()
    })
}

/// The chunks of `whole` with `data` frame bytes each, as (header, data) without copying.
pub fn pieces(id: u32, whole: &[u8], data: usize) -> impl Iterator<Item = ([u8; HEADER], &[u8])> + '_ {
    let count = whole.len().div_ceil(data).max(1);
    debug_assert!(count <= MAX_COUNT);
    whole.chunks(data).enumerate().map(move |(i, data)| {
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(&id.to_be_bytes());
        header[4] = i as u8;
        header[5] = count as u8;
        (header, data)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    Malformed,
    /// Not the next chunk of the frame in progress: that frame is lost.
    Gap,
    TooLong,
}

/// One frame in progress from one peer.
#[derive(Debug, Default)]
pub struct Reassembly {
    id: u32,
    next: u8,
    count: u8,
    buf: Vec<u8>,
}

impl Reassembly {
    /// Adds a chunk; returns the whole (virtio header + frame) when it is complete, handing
    /// over the buffer rather than copying it.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<Vec<u8>>, ChunkError> {
        if chunk.len() <= HEADER {
            return Err(ChunkError::Malformed);
        }
        let id = u32::from_be_bytes(chunk[..4].try_into().unwrap());
        let (index, count, data) = (chunk[4], chunk[5], &chunk[HEADER..]);
        if count == 0 || index >= count || count as usize > MAX_COUNT {
            return Err(ChunkError::Malformed);
        }
        if index == 0 {
            self.id = id;
            self.count = count;
            self.next = 0;
            self.buf.clear();
        } else if id != self.id || index != self.next || count != self.count {
            self.next = 0;
            self.count = 0;
            return Err(ChunkError::Gap);
        }
        if self.buf.len() + data.len() > MAX_WHOLE {
            self.count = 0;
            return Err(ChunkError::TooLong);
        }
        self.buf.extend_from_slice(data);
        self.next = index + 1;
        if self.next == count {
            self.count = 0;
            return Ok(Some(std::mem::take(&mut self.buf)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn small_and_super_frames_survive_the_trip() {
        for len in [vnet::VNET_HDR_LEN + 60, DATA, DATA + 1, MAX_WHOLE] {
            let w = whole(len);
            let chunks: Vec<Bytes> = split(7, &w).collect();
            assert_eq!(chunks.len(), len.div_ceil(DATA));
            assert!(chunks.iter().all(|c| c.len() <= wire::MAX_PAYLOAD));
            let mut r = Reassembly::default();
            let mut out = None;
            for c in &chunks {
                out = r.push(c).unwrap();
            }
            assert_eq!(out.as_deref(), Some(&w[..]), "length {len}");
        }
    }

    #[test]
    fn direct_pieces_fit_one_unfragmented_datagram_and_reassemble() {
        let w = whole(MAX_WHOLE);
        let mut r = Reassembly::default();
        let mut out = None;
        for (header, data) in pieces(9, &w, DIRECT_DATA) {
            assert!(HEADER + data.len() + wire::OVERHEAD + wire::INDEX_LEN <= DIRECT_DATAGRAM);
            out = r.push(&[&header[..], data].concat()).unwrap();
        }
        assert_eq!(out.as_deref(), Some(&w[..]));
    }

    #[test]
    fn a_lost_chunk_drops_its_frame_not_the_next() {
        let a: Vec<Bytes> = split(1, &whole(3 * DATA)).collect();
        let b: Vec<Bytes> = split(2, &whole(2 * DATA)).collect();
        let mut r = Reassembly::default();
        assert_eq!(r.push(&a[0]), Ok(None));
        assert_eq!(r.push(&a[2]), Err(ChunkError::Gap));
        assert_eq!(r.push(&a[1]), Err(ChunkError::Gap), "the broken frame stays broken");
        assert_eq!(r.push(&b[0]), Ok(None));
        assert_eq!(r.push(&b[1]).unwrap().map(|w| w.len()), Some(2 * DATA));
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let mut r = Reassembly::default();
        assert_eq!(r.push(&[0; HEADER]), Err(ChunkError::Malformed));
        assert_eq!(r.push(&[0, 0, 0, 1, 0, 0, 9]), Err(ChunkError::Malformed), "count 0");
        assert_eq!(r.push(&[0, 0, 0, 1, 2, 2, 9]), Err(ChunkError::Malformed), "index past count");
        assert_eq!(r.push(&[0, 0, 0, 1, 0, 200, 9]), Err(ChunkError::Malformed), "more chunks than any frame needs");
    }
}
