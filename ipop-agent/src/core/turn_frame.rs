//! TURN messages on a stream (TCP or TLS; RFC 8656 §12.5), as a view over their first bytes.
//!
//! ```text
//! STUN message:  00.. type (2, first two bits 0) | length (2) | cookie, id (16) | attributes (length)
//! ChannelData:   01.. channel (2, first two bits 01) | length (2) | data (length) | padding to 4 on a stream
//! ```
//! A stream carries them back to back; datagrams carry one each and may leave the padding out.

/// Bytes that tell a message's kind and length.
pub const HEAD_LEN: usize = 4;
/// A STUN header: type, length, magic cookie, transaction id.
const STUN_HEADER: usize = 20;
/// The most one message takes on a stream: a STUN header and the longest 4-aligned body
/// (ChannelData, 4 + 65535 padded, is less).
pub const MAX_STREAM_LEN: usize = STUN_HEADER + 65532;

/// One message's sizes: its own bytes, and what it takes on a stream (with padding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub len: usize,
    pub stream_len: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than a header, or shorter than its header says.
    Truncated,
    /// First two bits neither 00 (STUN) nor 01 (ChannelData), or a STUN length not a multiple
    /// of 4: not TURN.
    NotTurn,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FrameError::Truncated => "truncated TURN message",
            FrameError::NotTurn => "not a TURN message",
        })
    }
}

/// The sizes of the message that starts with `head`.
pub fn frame(head: [u8; HEAD_LEN]) -> Result<Frame, FrameError> {
    let body = usize::from(u16::from_be_bytes([head[2], head[3]]));
    match head[0] >> 6 {
        0b00 if body % 4 == 0 => Ok(Frame { len: STUN_HEADER + body, stream_len: STUN_HEADER + body }),
        0b01 => Ok(Frame { len: HEAD_LEN + body, stream_len: (HEAD_LEN + body).next_multiple_of(4) }),
        _ => Err(FrameError::NotTurn),
    }
}

/// The message a datagram carries (trailing padding or junk cut off), and its size on a stream.
pub fn in_datagram(dg: &[u8]) -> Result<(&[u8], Frame), FrameError> {
    let head: [u8; HEAD_LEN] = dg.get(..HEAD_LEN).ok_or(FrameError::Truncated)?.try_into().unwrap();
    let f = frame(head)?;
    let msg = dg.get(..f.len).ok_or(FrameError::Truncated)?;
    Ok((msg, f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stun_messages_are_header_and_body_with_no_padding() {
        // An Allocate request with 8 bytes of attributes.
        let f = frame([0x00, 0x03, 0x00, 0x08]).unwrap();
        assert_eq!(f, Frame { len: 28, stream_len: 28 });
        assert_eq!(frame([0x01, 0x01, 0x00, 0x06]), Err(FrameError::NotTurn), "STUN bodies are 4-aligned");
    }

    #[test]
    fn channel_data_is_padded_to_four_on_a_stream() {
        assert_eq!(frame([0x40, 0x00, 0x00, 0x05]).unwrap(), Frame { len: 9, stream_len: 12 });
        assert_eq!(frame([0x7f, 0xff, 0x00, 0x08]).unwrap(), Frame { len: 12, stream_len: 12 });
        assert_eq!(frame([0x40, 0x00, 0x00, 0x00]).unwrap(), Frame { len: 4, stream_len: 4 });
    }

    #[test]
    fn no_message_is_longer_on_a_stream_than_the_longest() {
        for head in [[0x00, 0x01, 0xff, 0xfc], [0x7f, 0xff, 0xff, 0xff], [0x40, 0x00, 0xff, 0xfd]] {
            let f = frame(head).unwrap();
            assert!(f.stream_len <= MAX_STREAM_LEN, "{head:?}: {f:?}");
        }
        assert_eq!(frame([0x00, 0x01, 0xff, 0xfc]).unwrap().stream_len, MAX_STREAM_LEN);
    }

    #[test]
    fn other_first_bits_are_not_turn() {
        for b in [0x80, 0xc3, 0xff] {
            assert_eq!(frame([b, 0, 0, 4]), Err(FrameError::NotTurn));
        }
    }

    #[test]
    fn a_datagram_gives_its_message_without_padding_and_refuses_short_ones() {
        let dg = [0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0];
        let (msg, f) = in_datagram(&dg).unwrap();
        assert_eq!((msg, f.stream_len), (&dg[..7], 8));
        assert_eq!(in_datagram(&dg[..6]), Err(FrameError::Truncated));
        assert_eq!(in_datagram(&[0x40]), Err(FrameError::Truncated));
        assert_eq!(in_datagram(&[0x00, 0x01, 0x00, 0x00]), Err(FrameError::Truncated), "STUN needs 20 bytes");
    }
}
