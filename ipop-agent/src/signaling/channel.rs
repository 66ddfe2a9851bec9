//! The rendezvous connection's channel: every byte after the first two messages is encrypted,
//! so whoever only listens on the path learns nothing from it: not the join (and so nothing to
//! guess the overlay secret from), not the members, not who signals whom.
//!
//! `Noise_NN_25519_ChaChaPoly_BLAKE2s`: the client sends an ephemeral key, the server answers
//! with its own, and both derive the channel's keys from the two. Neither side is
//! authenticated by the channel itself: a member proves itself inside it (`admission`), and
//! nothing the rendezvous says is trusted without a proof of its own (certificates, sealed
//! signals). Each message is framed by its length (2 bytes, big-endian); lines of JSON are
//! cut into messages of at most 65,519 bytes and put back together on the other side.
//!
//! The handshake and the framing are sans-IO (`Handshake`, `Sealer`, `Opener`); `connect`,
//! `accept`, `Reader` and `Writer` drive them over tokio streams.

use std::sync::Arc;

use anyhow::{Context as _, Result, anyhow};
use bytes::BytesMut;
use futures_util::StreamExt as _;
use snow::{Builder, HandshakeState, StatelessTransportState};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio_util::codec::{Decoder as _, FramedRead, LengthDelimitedCodec, LinesCodec};

const PATTERN: &str = "Noise_NN_25519_ChaChaPoly_BLAKE2s";
/// The longest Noise message, and so the longest frame's body.
pub const MAX_FRAME: usize = 65_535;
const TAG: usize = 16;
/// Plaintext per frame.
const MAX_PLAIN: usize = MAX_FRAME - TAG;

fn noise(e: snow::Error) -> anyhow::Error {
    anyhow!("the rendezvous channel: {e}")
}

/// One side of the channel's handshake.
pub struct Handshake(HandshakeState);

impl Handshake {
    /// The client's side, and its first message.
    pub fn client() -> Result<(Handshake, Vec<u8>)> {
        let mut state = builder().build_initiator().map_err(noise)?;
        let mut first = vec![0u8; 64];
        let n = state.write_message(&[], &mut first).map_err(noise)?;
        first.truncate(n);
        Ok((Handshake(state), first))
    }

    /// The server's side: answers the client's first message; the answer, and the channel.
    pub fn server(first: &[u8]) -> Result<(Vec<u8>, Sealer, Opener)> {
        let mut state = builder().build_responder().map_err(noise)?;
        state.read_message(first, &mut [0u8; 64]).map_err(noise)?;
        let mut answer = vec![0u8; 64];
        let n = state.write_message(&[], &mut answer).map_err(noise)?;
        answer.truncate(n);
        let (sealer, opener) = halves(state)?;
        Ok((answer, sealer, opener))
    }

    /// The client completes the handshake with the server's answer.
    pub fn finish(mut self, answer: &[u8]) -> Result<(Sealer, Opener)> {
        self.0.read_message(answer, &mut [0u8; 64]).map_err(noise)?;
        halves(self.0)
    }
}

fn builder() -> Builder<'static> {
    Builder::new(PATTERN.parse().expect("a valid Noise pattern"))
}

fn halves(state: HandshakeState) -> Result<(Sealer, Opener)> {
    let transport = Arc::new(state.into_stateless_transport_mode().map_err(noise)?);
    Ok((Sealer { transport: transport.clone(), nonce: 0 }, Opener { transport, nonce: 0 }))
}

/// The sending half: seals bytes into frames, in order.
pub struct Sealer {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Appends `plain` to `out` as frames, each its length and one Noise message.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<()> {
        for chunk in plain.chunks(MAX_PLAIN) {
            let start = out.len();
            out.resize(start + 2 + chunk.len() + TAG, 0);
            let n = self.transport.write_message(self.nonce, chunk, &mut out[start + 2..]).map_err(noise)?;
            self.nonce += 1;
            out[start..start + 2].copy_from_slice(&(n as u16).to_be_bytes());
            out.truncate(start + 2 + n);
        }
        Ok(())
    }
}

/// The receiving half: opens frames' bodies, in order; a frame altered, dropped, replayed or
/// reordered does not open.
pub struct Opener {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Opener {
    pub fn open(&mut self, body: &[u8]) -> Result<Vec<u8>> {
        let mut plain = vec![0u8; body.len()];
        let n = self.transport.read_message(self.nonce, body, &mut plain).map_err(noise)?;
        self.nonce += 1;
        plain.truncate(n);
        Ok(plain)
    }
}

/// Frames as they arrive: the partial frame lives in here.
type Frames<R> = FramedRead<R, LengthDelimitedCodec>;

fn frames<R: AsyncRead>(r: R) -> Frames<R> {
    let codec = LengthDelimitedCodec::builder().length_field_length(2).max_frame_length(MAX_FRAME).new_codec();
    FramedRead::new(r, codec)
}

async fn next_frame<R: AsyncRead + Unpin>(frames: &mut Frames<R>) -> Result<Option<BytesMut>> {
    frames.next().await.transpose().context("reading a frame")
}

/// The reading half of a channel, as lines. The partial frame and the partial line live here,
/// not in a future: reading is one branch of a `select!`, and a branch that loses must lose
/// nothing.
pub struct Reader<R> {
    frames: Frames<R>,
    opener: Opener,
    plain: BytesMut,
    lines: LinesCodec,
    max_line: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// The next line of at most `max_line` bytes; `None` at end of stream. Cancel-safe.
    pub async fn read_line(&mut self) -> Result<Option<String>> {
        loop {
            match self.lines.decode(&mut self.plain) {
                Ok(Some(line)) => return Ok(Some(line)),
                Ok(None) => {}
                Err(e) => anyhow::bail!("reading a line: {e} (at most {} bytes)", self.max_line),
            }
            let Some(frame) = next_frame(&mut self.frames).await? else { return Ok(None) };
            let plain = self.opener.open(&frame)?;
            self.plain.extend_from_slice(&plain);
        }
    }
}

/// The writing half of a channel.
pub struct Writer<W> {
    w: W,
    sealer: Sealer,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Sends `line` (its newline included) sealed.
    pub async fn write_line(&mut self, line: &[u8]) -> Result<()> {
        self.buf.clear();
        self.sealer.seal(line, &mut self.buf)?;
        self.w.write_all(&self.buf).await?;
        Ok(())
    }

    /// The bytes `plain` becomes on the wire (for a test that writes them its own way).
    pub fn seal(&mut self, plain: &[u8]) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.sealer.seal(plain, &mut out)?;
        Ok(out)
    }

    /// The stream beneath.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.w
    }
}

fn channel<R, W>(
    frames: Frames<R>,
    w: W,
    (sealer, opener): (Sealer, Opener),
    max_line: usize,
) -> (Reader<R>, Writer<W>) {
    let lines = LinesCodec::new_with_max_length(max_line);
    let reader = Reader { frames, opener, plain: BytesMut::new(), lines, max_line };
    (reader, Writer { w, sealer, buf: Vec::new() })
}

/// The client's side over `r` and `w`, once the handshake is done; lines longer than
/// `max_line` end the channel.
pub async fn connect<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: R,
    mut w: W,
    max_line: usize,
) -> Result<(Reader<R>, Writer<W>)> {
    let (handshake, first) = Handshake::client()?;
    w.write_all(&framed(&first)).await?;
    let mut frames = frames(r);
    let answer = next_frame(&mut frames).await?.context("the rendezvous closed during the handshake")?;
    let halves = handshake.finish(&answer)?;
    Ok(channel(frames, w, halves, max_line))
}

/// The server's side over `r` and `w`, once the handshake is done.
pub async fn accept<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: R,
    mut w: W,
    max_line: usize,
) -> Result<(Reader<R>, Writer<W>)> {
    let mut frames = frames(r);
    let first = next_frame(&mut frames).await?.context("closed before the handshake")?;
    let (answer, sealer, opener) = Handshake::server(&first)?;
    w.write_all(&framed(&answer)).await?;
    Ok(channel(frames, w, (sealer, opener), max_line))
}

/// `body` with its length in front: a handshake message on the wire.
pub fn framed(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both halves of a handshake, without IO.
    fn pair() -> ((Sealer, Opener), (Sealer, Opener)) {
        let (client, first) = Handshake::client().unwrap();
        let (answer, s_seal, s_open) = Handshake::server(&first).unwrap();
        (client.finish(&answer).unwrap(), (s_seal, s_open))
    }

    fn bodies(mut wire: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let n = u16::from_be_bytes([wire[0], wire[1]]) as usize;
            out.push(wire[2..2 + n].to_vec());
            wire = &wire[2 + n..];
        }
        out
    }

    #[test]
    fn what_one_side_seals_the_other_opens_and_nobody_reads_on_the_way() {
        let ((mut c_seal, _), (_, mut s_open)) = pair();
        let line = br#"{"join":{"overlay":"lab","node_id":"h1","proof":"a1b2"}}"#;
        let mut wire = Vec::new();
        c_seal.seal(line, &mut wire).unwrap();
        assert!(!wire.windows(4).any(|w| w == b"join"), "nothing in clear");
        let opened: Vec<u8> = bodies(&wire).iter().flat_map(|b| s_open.open(b).unwrap()).collect();
        assert_eq!(opened, line);
    }

    #[test]
    fn a_line_longer_than_a_frame_crosses_in_several() {
        let ((mut c_seal, _), (_, mut s_open)) = pair();
        let line = vec![b'x'; 3 * MAX_PLAIN + 10];
        let mut wire = Vec::new();
        c_seal.seal(&line, &mut wire).unwrap();
        let frames = bodies(&wire);
        assert_eq!(frames.len(), 4);
        assert!(frames.iter().all(|f| f.len() <= MAX_FRAME));
        let opened: Vec<u8> = frames.iter().flat_map(|b| s_open.open(b).unwrap()).collect();
        assert_eq!(opened, line);
    }

    #[test]
    fn an_altered_replayed_or_foreign_frame_does_not_open() {
        let ((mut c_seal, _), (_, mut s_open)) = pair();
        let mut wire = Vec::new();
        c_seal.seal(b"one\n", &mut wire).unwrap();
        c_seal.seal(b"two\n", &mut wire).unwrap();
        let frames = bodies(&wire);
        let mut altered = frames[0].clone();
        altered[3] ^= 1;
        assert!(s_open.open(&altered).is_err());
        let (_, (_, mut other)) = pair();
        assert!(other.open(&frames[0]).is_err(), "another channel's frame");
        assert!(s_open.open(&frames[1]).is_err(), "out of order");
        assert_eq!(s_open.open(&frames[0]).unwrap(), b"one\n");
        assert!(s_open.open(&frames[0]).is_err(), "replayed");
        assert_eq!(s_open.open(&frames[1]).unwrap(), b"two\n");
    }

    #[tokio::test]
    async fn lines_cross_a_real_connection_in_both_directions() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, w) = stream.into_split();
            let (mut r, mut w) = accept(r, w, 1 << 20).await.unwrap();
            let line = r.read_line().await.unwrap().unwrap();
            w.write_line(format!("{line} back\n").as_bytes()).await.unwrap();
            r.read_line().await.unwrap()
        });
        let (r, w) = tokio::net::TcpStream::connect(addr).await.unwrap().into_split();
        let (mut r, mut w) = connect(r, w, 1 << 20).await.unwrap();
        let long = "y".repeat(200_000);
        w.write_line(format!("{long}\n").as_bytes()).await.unwrap();
        assert_eq!(r.read_line().await.unwrap(), Some(format!("{long} back")));
        drop(w);
        assert_eq!(server.await.unwrap(), None, "end of stream");
    }
}
