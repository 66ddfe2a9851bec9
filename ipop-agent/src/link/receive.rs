//! The data socket's reader: opens each datagram with the session its receiver index names,
//! puts frames back together and hands them to the agent; probes go to their link.

use std::{
    collections::HashMap,
    io::{self, IoSliceMut},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use quinn_udp::RecvMeta;
use tokio::sync::mpsc;
use tracing::debug;

use crate::{
    core::{
        chunk::Reassembly,
        switch::PeerId,
        wire::{Datagram, Inner},
    },
    link::{
        event::LinkEvent,
        session::Openers,
        timers::{PROBE_PADDING, clock_ms},
        underlay::Underlay,
    },
};

/// GRO hands over up to 64 KiB per datagram run; a few runs per `recvmmsg`.
const RUN: usize = 64 * 1024;
const RUNS: usize = 4;

/// Where the data reader delivers what one receiver index opens.
pub struct Receiver {
    pub peer: PeerId,
    /// Shared with the link's ICE reader: one replay window per session, whichever path a
    /// datagram took.
    pub opener: Arc<Mutex<Openers>>,
    /// When anything authentic last arrived on either path (`clock_ms`).
    pub last_rx: Arc<AtomicU64>,
    /// When the peer last heard us on this path (`clock_ms`), from its keepalives.
    pub confirmed: Arc<AtomicU64>,
    /// Probes, their answers and keepalives go to the link task, with the address they came
    /// from (a peer that moves is followed).
    pub probes: mpsc::UnboundedSender<PathMsg>,
    /// Where the last keepalive handed to the link task came from: one from there again
    /// tells it nothing (its atomics above are already fed), so it is not woken for it.
    pub keepalive_from: Option<SocketAddr>,
}

/// A probe, an answer or a keepalive from the data socket, for the link task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathMsg {
    pub inner: Inner,
    pub from: SocketAddr,
    /// A full-size probe or answer (it proves the path carries the largest data datagram).
    pub full: bool,
}

/// A keepalive on the data socket says, in 4 bytes, how many milliseconds ago its sender
/// last heard us there (`u32::MAX`: not yet). That tells each side its own direction works,
/// with no answer to send.
pub fn heard_age(last_rx_ms: u64) -> [u8; 4] {
    let age =
        if last_rx_ms == 0 { u32::MAX } else { clock_ms().saturating_sub(last_rx_ms).min(u32::MAX as u64 - 1) as u32 };
    age.to_be_bytes()
}

/// When the peer last heard us, from a keepalive's payload; `None` if it never did (or the
/// payload is not one).
pub fn heard_at(payload: &[u8]) -> Option<u64> {
    let age = u32::from_be_bytes(payload.try_into().ok()?);
    (age != u32::MAX).then(|| clock_ms().saturating_sub(age as u64))
}

pub enum Registration {
    Add(u32, Receiver),
    Remove(u32),
}

/// The data socket's reader, driven by the agent's loop (a frame reaches the TAP without a
/// hop between tasks): opens each datagram with its receiver's session and puts frames back
/// together.
pub struct Reader {
    underlay: Arc<Underlay>,
    registrations: mpsc::UnboundedReceiver<Registration>,
    receivers: HashMap<u32, (Receiver, Reassembly)>,
    bufs: [Vec<u8>; RUNS],
    plain: Vec<u8>,
    out: Vec<LinkEvent>,
}

impl Reader {
    pub fn new(underlay: Arc<Underlay>, registrations: mpsc::UnboundedReceiver<Registration>) -> Self {
        Reader {
            underlay,
            registrations,
            receivers: HashMap::new(),
            bufs: std::array::from_fn(|_| vec![0u8; RUN]),
            plain: Vec::with_capacity(RUN),
            out: Vec::new(),
        }
    }

    /// Waits until the socket may have datagrams, taking links' registrations meanwhile;
    /// false once the links' side is gone (the agent is stopping) or the socket failed.
    pub async fn readable(&mut self) -> bool {
        loop {
            tokio::select! {
                r = self.registrations.recv() => match r {
                    Some(Registration::Add(index, rx)) => { self.receivers.insert(index, (rx, Reassembly::default())); }
                    Some(Registration::Remove(index)) => { self.receivers.remove(&index); }
                    None => return false,
                },
                r = self.underlay.readable() => return r.is_ok(),
            }
        }
    }

    /// What one `recvmmsg` brought, opened: frames, RPCs and refusals for the agent, in the
    /// order they came (probes and keepalives went to their links).
    pub fn read(&mut self) -> std::vec::Drain<'_, LinkEvent> {
        let mut meta = [RecvMeta::default(); RUNS];
        // On the stack: no allocation per read.
        let mut slices = self.bufs.each_mut().map(|b| IoSliceMut::new(b));
        let n = match self.underlay.try_recv(&mut slices, &mut meta) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => {
                debug!("data socket: {e}");
                0
            }
        };
        for (buf, m) in self.bufs.iter().zip(&meta).take(n) {
            let stride = m.stride.max(1);
            for dg in buf[..m.len].chunks(stride) {
                if !open_one(dg, m.addr, &mut self.receivers, &mut self.plain, &mut self.out) {
                    self.underlay.count_unknown();
                }
            }
        }
        self.out.drain(..)
    }
}

fn open_one(
    dg: &[u8],
    from: SocketAddr,
    receivers: &mut HashMap<u32, (Receiver, Reassembly)>,
    plain: &mut Vec<u8>,
    out: &mut Vec<LinkEvent>,
) -> bool {
    // Anything else on this socket (a stranger's bytes, an unknown index) is dropped
    // unread: it names no session that could open it. False for those.
    let Ok(Datagram::Indexed { index, counter, sealed }) = Datagram::parse(dg) else { return false };
    let Some((rx, frames)) = receivers.get_mut(&index) else { return false };
    let opened = rx.opener.lock().unwrap_or_else(|e| e.into_inner()).open(counter, sealed, plain);
    let inner = match opened {
        Ok(inner) => inner,
        Err(e) => {
            out.push(LinkEvent::Dropped(rx.peer, e));
            return true;
        }
    };
    rx.last_rx.store(clock_ms(), Ordering::Relaxed);
    match inner {
        Inner::Keepalive => {
            if let Some(at) = heard_at(plain) {
                rx.confirmed.fetch_max(at, Ordering::Relaxed);
            }
            if rx.keepalive_from != Some(from) {
                rx.keepalive_from = Some(from);
                let _ = rx.probes.send(PathMsg { inner, from, full: false });
            }
        }
        Inner::Probe | Inner::ProbeAck => {
            let full = plain.len() == PROBE_PADDING.len();
            let _ = rx.probes.send(PathMsg { inner, from, full });
        }
        Inner::Rpc => out.push(LinkEvent::Received(rx.peer, inner, std::mem::take(plain))),
        Inner::Ethernet => match frames.push(plain) {
            Ok(Some(whole)) => out.push(LinkEvent::Received(rx.peer, inner, whole)),
            Ok(None) => {}
            Err(_) => out.push(LinkEvent::FrameLost(rx.peer)),
        },
    }
    true
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use std::net::Ipv4Addr;

    use super::*;
    use crate::{
        core::{chunk, wire::Datagram},
        link::{
            send::{Direct, Run, RunSent},
            session::{self, Identity, Sealer, Session},
        },
    };

    fn sessions() -> (Session, Session) {
        let (a, b, psk) = (Identity::generate(), Identity::generate(), session::overlay_psk("lab", b"s3cret"));
        let (init, msg1) = session::initiate(&a, &b.public, &psk, 1, session::Aead::ChaChaPoly).unwrap();
        let Ok(Datagram::HandshakeInit(body)) = Datagram::parse(&msg1) else { panic!() };
        let (sb, msg2, _) = session::respond(&b, &a.public, &psk, body, None, session::Aead::ChaChaPoly).unwrap();
        let Ok(Datagram::HandshakeResp(body)) = Datagram::parse(&msg2) else { panic!() };
        (init.finish(body).unwrap(), sb)
    }

    fn loopback() -> Arc<Underlay> {
        Arc::new(Underlay::bind_to("127.0.0.1:0".parse().unwrap()).unwrap())
    }

    /// A whole frame sealed chunk by chunk, end to end, as `send::Run` does.
    fn sealed_frame(sealer: &Sealer, index: u32, whole: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut segment = 0;
        for (header, data) in chunk::pieces(5, whole, chunk::DIRECT_DATA) {
            sealer.seal_indexed(index, Inner::Ethernet, &[&header, data], &mut out).unwrap();
            segment = if segment == 0 { out.len() } else { segment };
        }
        (out, segment)
    }

    /// The next event the reader has for the agent, as the agent's loop drives it.
    async fn next_event(reader: &mut Reader) -> LinkEvent {
        loop {
            assert!(reader.readable().await);
            let mut events: Vec<LinkEvent> = reader.read().collect();
            assert!(events.len() <= 1, "one at a time here: {events:?}");
            if let Some(ev) = events.pop() {
                return ev;
            }
        }
    }

    /// The next message for the link (probes and keepalives), as the agent's loop drives the
    /// reader.
    async fn next_path_msg(reader: &mut Reader, probes: &mut mpsc::UnboundedReceiver<PathMsg>) -> PathMsg {
        loop {
            if let Ok(msg) = probes.try_recv() {
                return msg;
            }
            assert!(reader.readable().await);
            assert_eq!(reader.read().count(), 0, "nothing for the agent");
        }
    }

    #[tokio::test]
    async fn a_super_frame_crosses_in_one_gso_send_and_strangers_are_ignored() {
        let (a, b) = sessions();
        let (sealer, _) = a.split();
        let (_, opener) = b.split();
        let (tx, rx) = (loopback(), loopback());
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, rx.port()));
        let (reg_tx, reg_rx) = mpsc::unbounded_channel();
        let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
        let mut reader = Reader::new(rx.clone(), reg_rx);
        let last_rx = Arc::new(AtomicU64::new(0));
        let confirmed = Arc::new(AtomicU64::new(0));
        let opener = Arc::new(Mutex::new(Openers::new(opener)));
        let receiver = Receiver {
            peer: 3,
            opener,
            last_rx: last_rx.clone(),
            confirmed: confirmed.clone(),
            probes: probe_tx,
            keepalive_from: None,
        };
        reg_tx.send(Registration::Add(77, receiver)).unwrap();

        // A stranger's bytes and a datagram for an unknown index come first: dropped unread.
        tx.send(to, b"not ours at all", 15).unwrap();
        let mut other = Vec::new();
        sealer.seal_indexed(78, Inner::Rpc, &[b"{}"], &mut other).unwrap();
        tx.send(to, &other, other.len()).unwrap();
        // (Both are counted once the reader got that far: it reads in order.)

        let whole: Vec<u8> = (0..chunk::MAX_WHOLE).map(|i| (i % 253) as u8).collect();
        let (datagrams, segment) = sealed_frame(&sealer, 77, &whole);
        assert_eq!(segment, chunk::DIRECT_DATAGRAM);
        tx.send(to, &datagrams, segment).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), next_event(&mut reader)).await.unwrap();
        let LinkEvent::Received(3, Inner::Ethernet, got) = ev else { panic!("unexpected {ev:?}") };
        assert!(got == whole, "the frame arrives whole and unchanged");
        assert_eq!(rx.unknown(), 2, "the stranger's bytes and the unknown index, counted");

        // A forged datagram for the right index is refused and reported; a probe reaches the
        // link with the address it came from.
        let mut forged = datagrams[..segment].to_vec();
        forged[20] ^= 0xff;
        tx.send(to, &forged, forged.len()).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), next_event(&mut reader)).await.unwrap();
        assert!(matches!(ev, LinkEvent::Dropped(3, _)), "{ev:?}");
        let mut probe = Vec::new();
        sealer.seal_indexed(77, Inner::Probe, &[], &mut probe).unwrap();
        tx.send(to, &probe, probe.len()).unwrap();
        let from = SocketAddr::from((Ipv4Addr::LOCALHOST, tx.port()));
        let msg =
            tokio::time::timeout(Duration::from_secs(5), next_path_msg(&mut reader, &mut probe_rx)).await.unwrap();
        assert_eq!(msg, PathMsg { inner: Inner::Probe, from, full: false });
        // A keepalive saying the peer heard us just now: this side's direction is confirmed.
        let mut keepalive = Vec::new();
        sealer.seal_indexed(77, Inner::Keepalive, &[&0u32.to_be_bytes()], &mut keepalive).unwrap();
        clock_ms();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let before = clock_ms();
        tx.send(to, &keepalive, keepalive.len()).unwrap();
        let msg =
            tokio::time::timeout(Duration::from_secs(5), next_path_msg(&mut reader, &mut probe_rx)).await.unwrap();
        assert_eq!(msg, PathMsg { inner: Inner::Keepalive, from, full: false });
        let at = confirmed.load(Ordering::Relaxed);
        assert!(before > 0 && at >= before && at <= clock_ms(), "confirmed {at}, sent at {before}");
        drop(reg_tx);
        let stops = async {
            while reader.readable().await {
                assert_eq!(reader.read().count(), 0, "nothing more came");
            }
        };
        tokio::time::timeout(Duration::from_secs(5), stops)
            .await
            .expect("the reader stops once the links' side is gone");
    }

    /// A burst of small frames for one peer leaves in one GSO send (the receiver's GRO hands
    /// it over as one run of equal datagrams) and arrives whole and in order; a frame of
    /// another size sends the run first.
    #[tokio::test]
    async fn a_burst_of_small_frames_leaves_in_one_send_in_order() {
        let (a, b) = sessions();
        let ((sealer, _), (_, opener)) = (a.split(), b.split());
        let (tx, rx) = (loopback(), loopback());
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, rx.port()));
        let direct = Direct { underlay: tx.clone(), to, index: 77, carried: Default::default() };
        let frames: Vec<Vec<u8>> = (0..10u8).map(|i| vec![i; 100]).collect();
        let mut run = Run::default();
        for (i, f) in frames.iter().enumerate() {
            assert_eq!(run.push(&sealer, &direct, 3, i as u32, f), None, "frame {i} joins the run");
        }
        let big = vec![0xee; 300];
        let first = run.push(&sealer, &direct, 3, 10, &big);
        assert_eq!(first, Some(RunSent { peer: 3, frames: 10, bytes: 1000, ok: true }), "the ten go first");
        let whole: Vec<u8> = (0..chunk::MAX_WHOLE).map(|i| (i % 251) as u8).collect();
        let second = run.push(&sealer, &direct, 3, 11, &whole);
        assert_eq!(
            second,
            Some(RunSent { peer: 3, frames: 1, bytes: 300, ok: true }),
            "a super-frame's chunks are larger"
        );
        assert_eq!(run.send().map(|s| (s.frames, s.ok)), Some((1, true)));
        assert_eq!(run.send(), None, "nothing is left");

        let (probes, _) = mpsc::unbounded_channel();
        let opener = Arc::new(Mutex::new(Openers::new(opener)));
        let receiver = Receiver {
            peer: 3,
            opener,
            last_rx: Default::default(),
            confirmed: Default::default(),
            probes,
            keepalive_from: None,
        };
        let mut receivers = HashMap::from([(77, (receiver, Reassembly::default()))]);
        let (mut plain, mut out, mut runs) = (Vec::new(), Vec::new(), Vec::new());
        let mut bufs: [Vec<u8>; RUNS] = std::array::from_fn(|_| vec![0u8; RUN]);
        while out.len() < 12 {
            tokio::time::timeout(Duration::from_secs(5), rx.readable()).await.unwrap().unwrap();
            let mut meta = [RecvMeta::default(); RUNS];
            let mut slices = bufs.each_mut().map(|b| IoSliceMut::new(b));
            let Ok(n) = rx.try_recv(&mut slices, &mut meta) else { continue };
            for (buf, m) in bufs.iter().zip(&meta).take(n) {
                runs.push(m.len.div_ceil(m.stride.max(1)));
                for dg in buf[..m.len].chunks(m.stride.max(1)) {
                    assert!(open_one(dg, m.addr, &mut receivers, &mut plain, &mut out));
                }
            }
        }
        let chunks = chunk::MAX_WHOLE.div_ceil(chunk::DIRECT_DATA);
        assert_eq!(runs[..2], [10, 1], "the ten small frames arrive as one run");
        assert_eq!(
            runs[2..].iter().sum::<usize>(),
            chunks,
            "then the super-frame's chunks (GSO sends of 64 KiB at most)"
        );
        let got: Vec<Vec<u8>> = out
            .into_iter()
            .map(|ev| match ev {
                LinkEvent::Received(3, Inner::Ethernet, whole) => whole,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(got[..10], frames[..], "whole and in order");
        assert_eq!(got[10], big);
        assert!(got[11] == whole, "the super-frame whole");
    }
}
