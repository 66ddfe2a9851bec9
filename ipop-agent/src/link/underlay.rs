//! The agent's own UDP socket for data (the fast path beside ICE's sockets).
//!
//! webrtc-ice reads its sockets itself, one datagram per read, and every send goes through
//! its locks: fine for signalling-sized traffic, the bottleneck for a 64 KiB super-frame cut
//! into dozens of datagrams. This socket sends a whole super-frame's datagrams in one
//! `sendmsg` (UDP GSO) and receives runs of them in one `recvmmsg` (UDP GRO), via quinn-udp.
//! One socket serves every peer: datagrams name their receiver's index (`wire::INDEXED`).
//! A link moves its data here only after a sealed probe made the round trip (`serve`); the
//! reader that opens what arrives is `receive`.
//!
//! The socket is dual-stack (`[::]`, IPv4 peers as IPv4-mapped addresses), so one socket
//! serves IPv4 and IPv6 underlays alike; addresses cross its boundary in their plain form.

use std::{
    io::{self, IoSliceMut},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::{Context as _, Result};
use quinn_udp::{RecvMeta, Transmit, UdpSocketState};
use tokio::{io::Interest, net::UdpSocket};

/// Socket buffer size: room for bursts of 64 KiB super-frames while the agent waits for a
/// core. Measured (two hosts on two cores, TCP 4 streams, three runs each): 4 MiB overflowed
/// 65-366 times a run, each a lost super-frame (2,000-10,000 TCP retransmits); 8 MiB never
/// did. Kernel memory, held only while datagrams wait (wireguard-go takes 7 MiB).
pub const BUFFER: libc::c_int = 8 << 20;
/// The most bytes one GSO send may carry (an IPv4 datagram's limit, less headers).
const GSO_MAX_BYTES: usize = 65_000;

pub struct Underlay {
    socket: UdpSocket,
    state: UdpSocketState,
    port: u16,
    /// Bound to `[::]`: IPv4 destinations are written IPv4-mapped.
    dual: bool,
    /// Datagrams dropped unread: not INDEXED, or for an index no session has.
    unknown: AtomicU64,
}

impl Underlay {
    /// Binds the data socket on every address, IPv6 and IPv4, at `port` (0: any free port);
    /// on IPv4 alone where the host has no IPv6.
    pub fn bind(port: u16) -> Result<Self> {
        match Self::bind_to(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
            Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.raw_os_error() == Some(libc::EAFNOSUPPORT)) => {
                Self::bind_to(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            }
            other => other,
        }
    }

    pub fn bind_to(addr: SocketAddr) -> Result<Self> {
        let std = bind_socket(addr).with_context(|| {
            format!("binding the data socket to UDP port {} (icc_port; is another agent using it?)", addr.port())
        })?;
        let dual = addr.is_ipv6() && addr.ip().is_unspecified();
        let state = UdpSocketState::new((&std).into()).context("configuring the data socket")?;
        force_buffers(std.as_raw_fd());
        let port = std.local_addr()?.port();
        Ok(Self { socket: UdpSocket::from_std(std)?, state, port, dual, unknown: AtomicU64::new(0) })
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
    /// Senders' addresses come back plain (IPv4 as IPv4), as peers' endpoints are known.
    pub fn try_recv(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> io::Result<usize> {
        let n = self.socket.try_io(Interest::READABLE, || self.state.recv((&self.socket).into(), bufs, meta))?;
        for m in &mut meta[..n] {
            m.addr = SocketAddr::new(m.addr.ip().to_canonical(), m.addr.port());
        }
        Ok(n)
    }

    /// `to` as this socket takes it: IPv4-mapped on the dual-stack socket.
    fn destination(&self, to: SocketAddr) -> SocketAddr {
        match to.ip() {
            IpAddr::V4(v4) if self.dual => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), to.port()),
            _ => to,
        }
    }

    /// Sends `datagrams`, laid end to end, each `segment` bytes but the last (which may be
    /// shorter), to `to`: in as few `sendmsg` calls as GSO allows. Never waits: a full socket
    /// buffer is an error (`WouldBlock`), like a full queue anywhere else.
    pub fn send(&self, to: SocketAddr, datagrams: &[u8], segment: usize) -> io::Result<()> {
        let per_send = self.state.max_gso_segments().min(GSO_MAX_BYTES / segment).max(1) * segment;
        let to = self.destination(to);
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

/// A UDP socket bound to `addr`; on `[::]` dual-stack whatever `net.ipv6.bindv6only` says.
fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
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

/// An integer socket option of `fd` at SOL_SOCKET; None if it is not a socket.
pub fn sock_option(fd: libc::c_int, opt: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most one int into `value`, whose size `len` says.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut value).cast(), &mut len) };
    (rc == 0).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One socket for both families: an IPv4 peer and an IPv6 one (loopback of each) reach
    /// it, and their addresses come back as they are known, not IPv4-mapped.
    #[tokio::test]
    async fn the_data_socket_serves_ipv4_and_ipv6_peers() {
        let u = Underlay::bind(0).unwrap();
        for peer in [SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), SocketAddr::from((Ipv6Addr::LOCALHOST, 0))] {
            let p = std::net::UdpSocket::bind(peer).unwrap();
            let here = SocketAddr::new(peer.ip(), u.port());
            p.send_to(b"hello", here).unwrap();
            u.readable().await.unwrap();
            let mut buf = [0u8; 2048];
            let mut meta = [RecvMeta::default()];
            let n = u.try_recv(&mut [IoSliceMut::new(&mut buf)], &mut meta).unwrap();
            assert_eq!((n, meta[0].addr), (1, p.local_addr().unwrap()), "plain {peer}");
            u.send(p.local_addr().unwrap(), b"back", 4).unwrap();
            let mut got = [0u8; 8];
            let (len, from) = p.recv_from(&mut got).unwrap();
            assert_eq!((&got[..len], from.port()), (&b"back"[..], u.port()));
        }
    }

    /// The buffers are `BUFFER` whatever `rmem_max` says (the kernel reports twice what was
    /// set, its bookkeeping included): smaller ones lose super-frames under load.
    #[tokio::test]
    async fn the_data_socket_gets_its_buffers_beyond_the_system_limit() {
        let u = Underlay::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            assert_eq!(sock_option(u.socket.as_raw_fd(), opt), Some(2 * BUFFER), "option {opt}");
        }
    }

    #[test]
    fn a_port_in_use_is_a_clear_error() {
        let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = Underlay::bind_to(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).err().unwrap();
        assert!(format!("{err:#}").contains(&format!("UDP port {port}")), "{err:#}");
    }
}
