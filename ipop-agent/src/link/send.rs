//! The send side of an up link: the agent seals and sends itself, on the data socket once
//! its path is proven, else on the ICE connection, without a hop through the link task.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use webrtc_util::Conn;

use crate::{
    core::{
        chunk,
        switch::PeerId,
        wire::{self, Inner},
    },
    link::{echo::EchoClock, session::Sealer, underlay::Underlay},
};

/// The agent's direct line to a peer once a link is up.
#[derive(Clone)]
pub struct DataTx {
    pub(crate) sealer: Sealer,
    pub(crate) conn: Arc<dyn Conn + Send + Sync>,
    pub(crate) direct: Option<Direct>,
    /// The pair ICE selected for this session.
    pub(crate) pair: Arc<IcePair>,
    /// The data socket path's round trip (probe to answer), microseconds; 0: not measured.
    pub(crate) rtt: Arc<AtomicU64>,
    /// The ICE path's, from its keepalives.
    pub(crate) echo: Arc<EchoClock>,
    /// Rekeys of this link so far.
    pub(crate) rekeys: Arc<AtomicU64>,
    /// When the current session's handshake completed (`clock_ms`).
    pub(crate) handshake_ms: Arc<AtomicU64>,
    /// When anything authentic last arrived from the peer on the ICE path and on the data
    /// socket (`clock_ms`).
    pub(crate) rx_ms: [Arc<AtomicU64>; 2],
}

/// The candidate pair ICE selected: each side's type and address (`"srflx 203.0.113.2:4000"`),
/// and whether it goes through a TURN relay (either side's candidate is a relay).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IcePair {
    pub local: String,
    pub remote: String,
    pub relayed: bool,
    /// This host's address as a STUN server saw it, if the attempt gathered one.
    pub public: Option<String>,
}

/// A proven path on the data socket: where the peer's socket is, and its receiver index.
#[derive(Clone)]
pub(crate) struct Direct {
    pub(crate) underlay: Arc<Underlay>,
    pub(crate) to: SocketAddr,
    pub(crate) index: u32,
    /// Set when full-size data goes out: the link proves the path's size again (once a
    /// minute) only on a link that carries data, so an idle one stays quiet.
    pub(crate) carried: Arc<AtomicBool>,
}

impl std::fmt::Debug for DataTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataTx({})", self.path())
    }
}

impl DataTx {
    /// Whether data goes on the data socket (else on the ICE connection).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The pair ICE selected (the ICE path, and where probing the data socket started).
    pub fn ice_pair(&self) -> &IcePair {
        &self.pair
    }

    /// How often the link has renewed its session keys.
    pub fn rekeys(&self) -> u64 {
        self.rekeys.load(Ordering::Relaxed)
    }

    /// When the current session's keys were agreed, and when the peer was last heard on any
    /// path (`timers::clock_ms`).
    pub fn handshake_and_heard_ms(&self) -> (u64, u64) {
        let heard = self.rx_ms.iter().map(|t| t.load(Ordering::Relaxed)).max().unwrap_or(0);
        (self.handshake_ms.load(Ordering::Relaxed), heard)
    }

    /// The last measured round trip of the path data takes.
    pub fn rtt(&self) -> Option<std::time::Duration> {
        let us = if self.is_direct() { self.rtt.load(Ordering::Relaxed) } else { self.echo.rtt_us() };
        (us > 0).then(|| std::time::Duration::from_micros(us))
    }

    /// Where data to the peer goes: its data socket's address, or ICE's remote candidate.
    pub fn endpoint(&self) -> String {
        match &self.direct {
            Some(d) => d.to.to_string(),
            None => self.pair.remote.clone(),
        }
    }

    /// What `status` calls the path: `direct` (the data socket), `relay` (ICE through a TURN
    /// server), `ice` (the ICE connection, peer to peer).
    pub fn path(&self) -> &'static str {
        match (self.is_direct(), self.pair.relayed) {
            (true, _) => "direct",
            (false, true) => "relay",
            (false, false) => "ice",
        }
    }

    /// Seals and sends `payload` now if the socket takes it at once (it almost always does);
    /// false if it would have to wait, so the caller queues it to the link task instead.
    pub fn try_send(&self, inner: Inner, payload: &[u8], scratch: &mut Vec<u8>) -> bool {
        use futures_util::FutureExt as _;
        scratch.clear();
        if let Some(d) = &self.direct {
            if self.sealer.seal_indexed(d.index, inner, &[payload], scratch).is_err() {
                return true; // too long: nothing to queue either
            }
            return d.underlay.send(d.to, scratch, scratch.len()).is_ok();
        }
        if self.sealer.seal(inner, payload, scratch).is_err() {
            return true;
        }
        matches!(self.conn.send(scratch).now_or_never(), Some(Ok(_)))
    }
}

/// The most bytes a run holds before a frame that would overflow it sends it first.
const RUN_MAX: usize = 64 * 1024;

/// Frames for one peer's data socket path, cut into chunks and sealed end to end while the
/// TAP still has frames queued, to leave in one GSO send when it has none: a burst of small
/// frames costs one `sendmsg` instead of one each (wireguard-go batches its TUN reads so).
/// A GSO send's datagrams are all one size but the last, so a frame joins the run only if
/// its datagrams keep that shape; else the run goes first. Nothing waits longer than the
/// TAP read that finds the queue empty.
#[derive(Default)]
pub struct Run {
    peer: PeerId,
    to: Option<(Arc<Underlay>, SocketAddr)>,
    buf: Vec<u8>,
    /// The size of every datagram in the run but maybe the last.
    segment: usize,
    /// The last datagram is `segment` long, so one more of that size may follow.
    open: bool,
    frames: u64,
    bytes: u64,
}

/// What sending a run did: whose frames, how many and their bytes, and whether the socket
/// took them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSent {
    pub peer: PeerId,
    pub frames: u64,
    pub bytes: u64,
    pub ok: bool,
}

impl Run {
    /// Seals a whole frame (virtio header and frame) for `peer`'s data socket path `d` onto
    /// the run. If the frame cannot leave in the same send as the run (another peer, another
    /// size), the run is sent first, and what that did is returned.
    pub(crate) fn push(&mut self, sealer: &Sealer, d: &Direct, peer: PeerId, id: u32, whole: &[u8]) -> Option<RunSent> {
        let first = whole.len().min(chunk::DIRECT_DATA) + chunk::HEADER + wire::OVERHEAD + wire::INDEX_LEN;
        let same_path =
            self.peer == peer && self.to.as_ref().is_some_and(|(u, to)| Arc::ptr_eq(u, &d.underlay) && *to == d.to);
        let joins = same_path && self.open && first == self.segment && self.buf.len() + whole.len() <= RUN_MAX;
        let sent = if joins { None } else { self.send() };
        if self.buf.is_empty() {
            (self.peer, self.to, self.segment) = (peer, Some((d.underlay.clone(), d.to)), first);
        }
        let start = self.buf.len();
        let mut last = 0;
        for (header, data) in chunk::pieces(id, whole, chunk::DIRECT_DATA) {
            let before = self.buf.len();
            if sealer.seal_indexed(d.index, Inner::Ethernet, &[&header, data], &mut self.buf).is_err() {
                self.buf.truncate(start); // cannot happen for a whole the TAP gave
                return sent;
            }
            last = self.buf.len() - before;
            debug_assert!(before > start || last == first, "the first datagram's size is foreseen");
        }
        self.open = last == self.segment;
        self.frames += 1;
        self.bytes += whole.len() as u64;
        d.carried.store(true, Ordering::Relaxed);
        sent
    }

    /// Hands the run to the kernel (in as few `sendmsg` as GSO allows), if it holds any.
    /// Never waits: a socket that does not take it at once loses the whole run (counted by
    /// the caller, like a full queue anywhere else).
    pub fn send(&mut self) -> Option<RunSent> {
        let (underlay, to) = self.to.take()?;
        if self.buf.is_empty() {
            return None;
        }
        let ok = underlay.send(to, &self.buf, self.segment).is_ok();
        self.buf.clear();
        self.open = false;
        let (frames, bytes) = (std::mem::take(&mut self.frames), std::mem::take(&mut self.bytes));
        Some(RunSent { peer: self.peer, frames, bytes, ok })
    }
}
