//! The agent's own UDP socket for data (the fast path beside ICE's sockets).
//!
//! webrtc-ice reads its sockets itself, one datagram per read, and every send goes through
//! its locks: fine for signalling-sized traffic, the bottleneck for a 64 KiB super-frame cut
//! into dozens of datagrams. This socket sends a whole super-frame's datagrams in one
//! `sendmsg` (UDP GSO) and receives runs of them in one `recvmmsg` (UDP GRO), via quinn-udp.
//! One socket serves every peer: datagrams name their receiver's index (`wire::INDEXED`).
//! A link moves its data here only after a sealed probe made the round trip (`serve`); the
//! reader that opens what arrives is `receive`.

use std::{
    io::{self, IoSliceMut},
    net::{Ipv4Addr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::{io::Interest, net::UdpSocket};

/// Socket buffer size: room for bursts of 64 KiB super-frames.
pub const BUFFER: libc::c_int = 4 << 20;
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

    /// Counts a datagram dropped unread.
    pub fn count_unknown(&self) {
        self.unknown.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until the socket may have datagrams.
    pub async fn readable(&self) -> io::Result<()> {
        self.socket.readable().await
    }

    /// Reads runs of datagrams (GRO) into `bufs`, one `recvmmsg`; `WouldBlock` when empty.
    pub fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        self.socket.try_io(Interest::READABLE, || self.state.recv((&self.socket).into(), bufs, meta))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = Underlay::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).err().unwrap();
        assert!(format!("{err:#}").contains(&format!("UDP port {port}")), "{err:#}");
    }
}
