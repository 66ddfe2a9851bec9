//! The agent's own UDP socket for data (the fast path beside ICE's sockets).
//!
//! webrtc-ice reads its sockets itself, one datagram per read, and every send goes through
//! its locks: fine for signalling-sized traffic, the bottleneck for a 64 KiB super-frame cut
//! into dozens of datagrams. This socket sends a whole super-frame's datagrams in one
//! `sendmsg` (UDP GSO) and receives runs of them in one `recvmmsg` (UDP GRO), via quinn-udp.
//! One socket serves every peer: datagrams name their receiver's index (`wire::INDEXED`).
//! A link moves its data here only after a sealed probe made the round trip (`link`).

use std::{
    collections::HashMap,
    io::{self, IoSliceMut},
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use anyhow::{Context as _, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::{io::Interest, net::UdpSocket, sync::mpsc};
use tracing::debug;

use crate::{
    chunk::Reassembly,
    link::{LinkEvent, clock_ms},
    session::Opener,
    switch::PeerId,
    wire::{Datagram, Inner},
};

/// Socket buffer size: room for bursts of 64 KiB super-frames.
pub const BUFFER: libc::c_int = 4 << 20;
/// GRO hands over up to 64 KiB per datagram run; a few runs per `recvmmsg`.
const RUN: usize = 64 * 1024;
const RUNS: usize = 4;
/// The most bytes one GSO send may carry (an IPv4 datagram's limit, less headers).
const GSO_MAX_BYTES: usize = 65_000;

pub struct Underlay {
    socket: UdpSocket,
    state: UdpSocketState,
    port: u16,
    /// Datagrams dropped unread: not INDEXED, or for an index no session has.
    unknown: AtomicU64,
}

impl Underlay {
    /// Binds the data socket on every IPv4 address at `port` (0: any free port).
    pub fn bind(port: u16) -> Result<Self> {
        Self::bind_to(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
    }

    pub fn bind_to(addr: SocketAddr) -> Result<Self> {
        let std = std::net::UdpSocket::bind(addr).with_context(|| {
            format!("binding the data socket to UDP port {} (icc_port; is another agent using it?)", addr.port())
        })?;
        let state = UdpSocketState::new((&std).into()).context("configuring the data socket")?;
        force_buffers(std.as_raw_fd());
        let port = std.local_addr()?.port();
        Ok(Self { socket: UdpSocket::from_std(std)?, state, port, unknown: AtomicU64::new(0) })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Datagrams dropped unread so far (see `unknown`).
    pub fn unknown(&self) -> u64 {
        self.unknown.load(Ordering::Relaxed)
    }

    /// Sends `datagrams`, laid end to end, each `segment` bytes but the last (which may be
    /// shorter), to `to`: in as few `sendmsg` calls as GSO allows. Never waits: a full socket
    /// buffer is an error (`WouldBlock`), like a full queue anywhere else.
    pub fn send(&self, to: SocketAddr, datagrams: &[u8], segment: usize) -> io::Result<()> {
        let per_send = self.state.max_gso_segments().min(GSO_MAX_BYTES / segment).max(1) * segment;
        for batch in datagrams.chunks(per_send) {
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents: batch,
                segment_size: (batch.len() > segment).then_some(segment),
                src_ip: None,
            };
            // Straight to the kernel, not through tokio's readiness: nothing ever waits to
            // send here, and a fresh socket has no readiness recorded yet.
            self.state.try_send((&self.socket).into(), &transmit)?;
        }
        Ok(())
    }
}

/// Gives a socket `BUFFER` bytes of send and receive buffer. `SO_*BUFFORCE` (CAP_NET_ADMIN,
/// which the agent has) ignores rmem_max, whose default (about 200 KiB) overflows under a
/// burst of super-frames.
pub fn force_buffers(fd: libc::c_int) {
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        // SAFETY: setsockopt with a pointer to an int that outlives the call; a bad fd fails.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&BUFFER as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
}

/// Where the data reader delivers what one receiver index opens.
pub struct Receiver {
    pub peer: PeerId,
    /// Shared with the link's ICE reader: one replay window per session, whichever path a
    /// datagram took.
    pub opener: Arc<Mutex<Opener>>,
    /// When anything authentic last arrived on either path (`clock_ms`).
    pub last_rx: Arc<AtomicU64>,
    /// Probes and their answers go to the link task, with the address they came from.
    pub probes: mpsc::UnboundedSender<(Inner, SocketAddr)>,
}

pub enum Registration {
    Add(u32, Receiver),
    Remove(u32),
}

/// Reads the data socket until the agent drops `registrations`' sender: opens each datagram
/// with its receiver's session, puts frames back together and hands them to the agent.
pub async fn read(
    underlay: Arc<Underlay>,
    mut registrations: mpsc::UnboundedReceiver<Registration>,
    events: mpsc::Sender<LinkEvent>,
) {
    let mut receivers: HashMap<u32, (Receiver, Reassembly)> = HashMap::new();
    let mut bufs: [Vec<u8>; RUNS] = std::array::from_fn(|_| vec![0u8; RUN]);
    let mut meta = [RecvMeta::default(); RUNS];
    let mut plain = Vec::with_capacity(RUN);
    let mut out = Vec::new();
    loop {
        let n = tokio::select! {
            r = registrations.recv() => {
                match r {
                    Some(Registration::Add(index, rx)) => { receivers.insert(index, (rx, Reassembly::default())); }
                    Some(Registration::Remove(index)) => { receivers.remove(&index); }
                    None => return,
                }
                continue;
            }
            r = underlay.socket.readable() => {
                if r.is_err() { return }
                // On the stack: no allocation per read.
                let mut slices = bufs.each_mut().map(|b| IoSliceMut::new(b));
                match underlay.socket.try_io(Interest::READABLE, || {
                    underlay.state.recv((&underlay.socket).into(), &mut slices, &mut meta)
                }) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => { debug!("data socket: {e}"); continue }
                }
            }
        };
        for (buf, m) in bufs.iter().zip(&meta).take(n) {
            let stride = m.stride.max(1);
            for dg in buf[..m.len].chunks(stride) {
                if !open_one(dg, m.addr, &mut receivers, &mut plain, &mut out) {
                    underlay.unknown.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        for ev in out.drain(..) {
            if events.send(ev).await.is_err() {
                return;
            }
        }
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
        Inner::Keepalive => {}
        Inner::Probe | Inner::ProbeAck => {
            let _ = rx.probes.send((inner, from));
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

    use super::*;
    use crate::{
        chunk,
        session::{self, Identity, Sealer, Session},
        wire::Datagram,
    };

    fn sessions() -> (Session, Session) {
        let (a, b, psk) = (Identity::generate(), Identity::generate(), session::overlay_psk("lab", "s3cret"));
        let (init, msg1) = session::initiate(&a, &b.public, &psk, 1, session::Aead::ChaChaPoly).unwrap();
        let Ok(Datagram::HandshakeInit(body)) = Datagram::parse(&msg1) else { panic!() };
        let (sb, msg2, _) = session::respond(&b, &a.public, &psk, body, None, session::Aead::ChaChaPoly).unwrap();
        let Ok(Datagram::HandshakeResp(body)) = Datagram::parse(&msg2) else { panic!() };
        (init.finish(body).unwrap(), sb)
    }

    fn loopback() -> Arc<Underlay> {
        Arc::new(Underlay::bind_to("127.0.0.1:0".parse().unwrap()).unwrap())
    }

    /// A whole frame sealed chunk by chunk, end to end, as `DataTx::send_frame` does.
    fn sealed_frame(sealer: &Sealer, index: u32, whole: &[u8]) -> (Vec<u8>, usize) {
        let mut out = Vec::new();
        let mut segment = 0;
        for (header, data) in chunk::pieces(5, whole, chunk::DIRECT_DATA) {
            sealer.seal_indexed(index, Inner::Ethernet, &[&header, data], &mut out).unwrap();
            segment = if segment == 0 { out.len() } else { segment };
        }
        (out, segment)
    }

    #[tokio::test]
    async fn a_super_frame_crosses_in_one_gso_send_and_strangers_are_ignored() {
        let (a, b) = sessions();
        let (sealer, _) = a.split();
        let (_, opener) = b.split();
        let (tx, rx) = (loopback(), loopback());
        let to = SocketAddr::from((Ipv4Addr::LOCALHOST, rx.port()));
        let (reg_tx, reg_rx) = mpsc::unbounded_channel();
        let (ev_tx, mut ev_rx) = mpsc::channel(16);
        let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read(rx.clone(), reg_rx, ev_tx));
        let last_rx = Arc::new(AtomicU64::new(0));
        let receiver =
            Receiver { peer: 3, opener: Arc::new(Mutex::new(opener)), last_rx: last_rx.clone(), probes: probe_tx };
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
        let ev = tokio::time::timeout(Duration::from_secs(5), ev_rx.recv()).await.unwrap().unwrap();
        let LinkEvent::Received(3, Inner::Ethernet, got) = ev else { panic!("unexpected {ev:?}") };
        assert!(got == whole, "the frame arrives whole and unchanged");
        assert_eq!(rx.unknown(), 2, "the stranger's bytes and the unknown index, counted");

        // A forged datagram for the right index is refused and reported; a probe reaches the
        // link with the address it came from.
        let mut forged = datagrams[..segment].to_vec();
        forged[20] ^= 0xff;
        tx.send(to, &forged, forged.len()).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), ev_rx.recv()).await.unwrap().unwrap();
        assert!(matches!(ev, LinkEvent::Dropped(3, _)), "{ev:?}");
        let mut probe = Vec::new();
        sealer.seal_indexed(77, Inner::Probe, &[], &mut probe).unwrap();
        tx.send(to, &probe, probe.len()).unwrap();
        let (inner, from) = tokio::time::timeout(Duration::from_secs(5), probe_rx.recv()).await.unwrap().unwrap();
        assert_eq!((inner, from), (Inner::Probe, SocketAddr::from((Ipv4Addr::LOCALHOST, tx.port()))));
        drop(reg_tx);
        reader.await.unwrap();
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = Underlay::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).err().unwrap();
        assert!(format!("{err:#}").contains(&format!("UDP port {port}")), "{err:#}");
    }
}
