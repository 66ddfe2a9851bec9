//! The ICE path (webrtc-ice): the agent for one attempt, remote candidates, and the reader of
//! an ICE connection.

use std::{
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::sync::mpsc;
use tracing::debug;
use webrtc_ice::{
    agent::{Agent, agent_config::AgentConfig},
    candidate::{Candidate, CandidateType, candidate_base::unmarshal_candidate},
    mdns::MulticastDnsMode,
    network_type::NetworkType,
    url::Url,
};
use webrtc_util::Conn;

use crate::{
    core::{
        chunk::Reassembly,
        switch::PeerId,
        wire::{self, Datagram, Inner},
    },
    link::{
        echo::EchoClock,
        event::LinkEvent,
        ice_server::{IceServer, Transport},
        session::Openers,
        timers::{ICE_CHECKING, ICE_CONSENT, clock_ms, clock_us},
        turn_check::{CHECK_TIMEOUT, CheckTarget, Problem, TurnChecks},
        turn_stream::{StreamRelay, Target},
        underlay::{BUFFER, force_buffers, sock_option},
    },
    signaling::tls,
};

/// The STUN and TURN servers as links use them: as configured (to say why an attempt failed),
/// as webrtc-ice is given them (TURN over TCP or TLS through its stream relay), and the
/// checks that ask a TURN server why it gave no relay.
pub struct IceConfig {
    pub servers: Vec<IceServer>,
    urls: Vec<Url>,
    /// Beside `servers`: the stream relay of each TCP or TLS one.
    relays: Vec<Option<StreamRelay>>,
    checks: TurnChecks,
}

impl IceConfig {
    /// Starts a stream relay for each TURN server over TCP or TLS (`turns:` certificates
    /// checked against the system's roots and `ca_file`'s).
    pub fn start(servers: Vec<IceServer>, ca_file: Option<&Path>) -> Result<IceConfig> {
        let needs_tls = servers.iter().any(|s| s.transport == Transport::Tls);
        let tls = if needs_tls {
            Some(tls::client_config(ca_file).context("trusting turns: servers (turn_ca_file)")?)
        } else {
            None
        };
        let (mut urls, mut relays) = (Vec::new(), Vec::new());
        for s in &servers {
            let relay = match s.transport {
                Transport::Udp => None,
                Transport::Tcp | Transport::Tls => {
                    let tls = (s.transport == Transport::Tls).then(|| tls.clone().expect("made above"));
                    Some(StreamRelay::start(Target { host: s.host.clone(), port: s.port, tls })?)
                }
            };
            urls.push(s.to_url(relay.as_ref().map(|r| r.local)));
            relays.push(relay);
        }
        Ok(IceConfig { servers, urls, relays, checks: TurnChecks::default() })
    }

    /// What each TURN server says when asked for an allocation now, for those that refuse or
    /// do not answer (in words, naming the server); empty when every one allocates. The
    /// servers are asked side by side.
    pub async fn turn_problems(&self) -> Vec<String> {
        let asks = self.servers.iter().zip(&self.urls).zip(&self.relays).filter(|((s, _), _)| s.is_turn()).map(
            |((s, url), relay)| async move {
                let target = CheckTarget {
                    addr: format!("{}:{}", url.host, url.port),
                    username: &s.username,
                    password: &s.password,
                };
                let problem = self.checks.check(&target).await.err()?;
                // Through a stream relay, silence most often means no stream: say why.
                let why = match (problem, relay.as_ref().and_then(StreamRelay::last_error)) {
                    (Problem::Silent, Some(stream)) => format!("could not be reached: {stream}"),
                    (Problem::Silent, None) => format!("did not answer within {CHECK_TIMEOUT:?}"),
                    (Problem::Refused(e), _) => format!("refused: {e}"),
                };
                Some(format!("TURN server {} {why}", s.url))
            },
        );
        futures_util::future::join_all(asks).await.into_iter().flatten().collect()
    }
}

/// An ICE agent for one attempt: UDP host candidates, IPv4 and IPv6, on every interface but
/// loopback and `exclude` (the overlay must not run over itself; IPv6 link-local addresses
/// are left out too: they need an interface to mean anything), plus server-reflexive and relay ones
/// when STUN/TURN servers are configured. Only the `controlling` side sends ICE's consent
/// checks once connected: its request and the answer hold both sides' NAT mappings, and an
/// idle link need not pay for two.
pub async fn new_agent(ice: &IceConfig, exclude: &[String], controlling: bool) -> Result<Arc<Agent>> {
    let urls = ice.urls.clone();
    let mut candidate_types = vec![CandidateType::Host];
    if !urls.is_empty() {
        candidate_types.extend([CandidateType::ServerReflexive, CandidateType::Relay]);
    }
    let exclude = exclude.to_vec();
    let config = AgentConfig {
        urls,
        network_types: vec![NetworkType::Udp4, NetworkType::Udp6],
        candidate_types,
        multicast_dns_mode: MulticastDnsMode::Disabled,
        interface_filter: Arc::new(Some(Box::new(move |name: &str| {
            name != "lo" && !exclude.iter().any(|e| e == name)
        }))),
        ip_filter: Arc::new(Some(Box::new(
            |ip: std::net::IpAddr| !matches!(ip, std::net::IpAddr::V6(v6) if v6.is_unicast_link_local()),
        ))),
        // While checking, ICE gives up after `ICE_CHECKING`; once connected it never declares
        // the pair failed (the link's own keepalives judge liveness, and ICE stays quiet while
        // data takes the data socket).
        disconnected_timeout: Some(ICE_CHECKING),
        failed_timeout: Some(Duration::ZERO),
        keepalive_interval: Some(if controlling { ICE_CONSENT } else { Duration::ZERO }),
        check_interval: Duration::from_millis(100),
        ..Default::default()
    };
    Ok(Arc::new(Agent::new(config).await.context("creating the ICE agent")?))
}

/// Reads the ICE connection: once a session is up it opens transport datagrams and hands
/// them straight to the agent; handshakes go to the link task.
pub async fn read_datagrams(
    peer: PeerId,
    conn: Arc<dyn Conn + Send + Sync>,
    events: mpsc::Sender<LinkEvent>,
    handshakes: mpsc::Sender<Vec<u8>>,
    mut openers: mpsc::UnboundedReceiver<Arc<Mutex<Openers>>>,
    last_rx: Arc<AtomicU64>,
    echo: Arc<EchoClock>,
) {
    let mut buf = vec![0u8; wire::MAX_DATAGRAM + 64];
    let mut rx = IceRx { peer, opener: None, plain: Vec::new(), frames: Default::default(), last_rx, echo };
    // The responder may send as soon as its side is up, before this side has finished the
    // handshake: transport datagrams that arrive before the first session are held (a few).
    let mut early: Vec<Vec<u8>> = Vec::new();
    loop {
        let n = tokio::select! {
            o = openers.recv() => match o {
                Some(o) => {
                    rx.opener = Some(o);
                    for dg in std::mem::take(&mut early) {
                        if let Some(ev) = rx.open(&dg)
                            && events.send(ev).await.is_err()
                        {
                            return;
                        }
                    }
                    continue;
                }
                None => return,
            },
            n = conn.recv(&mut buf) => match n { Ok(n) => n, Err(_) => return },
        };
        let dg = &buf[..n];
        match Datagram::parse(dg) {
            Ok(Datagram::Transport { .. }) if rx.opener.is_none() => {
                if early.len() < EARLY_MAX {
                    early.push(dg.to_vec());
                }
            }
            Ok(Datagram::Transport { .. }) => {
                if let Some(ev) = rx.open(dg)
                    && events.send(ev).await.is_err()
                {
                    return;
                }
            }
            Ok(_) => {
                if handshakes.send(dg.to_vec()).await.is_err() {
                    return;
                }
            }
            Err(e) => debug!(peer, "bad datagram: {e}"),
        }
    }
}

/// Transport datagrams held until the first session is known.
const EARLY_MAX: usize = 256;

/// The ICE reader's side of a session.
struct IceRx {
    peer: PeerId,
    opener: Option<Arc<Mutex<Openers>>>,
    plain: Vec<u8>,
    frames: Reassembly,
    last_rx: Arc<AtomicU64>,
    /// Keepalives here carry clocks: the ICE path's round trip.
    echo: Arc<EchoClock>,
}

impl IceRx {
    /// Opens a transport datagram: what to tell the agent, if anything.
    fn open(&mut self, dg: &[u8]) -> Option<LinkEvent> {
        let (Ok(Datagram::Transport { counter, sealed }), Some(o)) = (Datagram::parse(dg), &self.opener) else {
            return None;
        };
        let opened = o.lock().unwrap_or_else(|e| e.into_inner()).open(counter, sealed, &mut self.plain);
        let inner = match opened {
            Ok(inner) => inner,
            Err(e) => return Some(LinkEvent::Dropped(self.peer, e)),
        };
        self.last_rx.store(clock_ms(), Ordering::Relaxed);
        match inner {
            Inner::Keepalive => {
                self.echo.heard(&self.plain, clock_us());
                None
            }
            // Probes belong on the data socket only.
            Inner::Probe | Inner::ProbeAck => None,
            Inner::Rpc => Some(LinkEvent::Received(self.peer, inner, std::mem::take(&mut self.plain))),
            Inner::Ethernet => match self.frames.push(&self.plain) {
                Ok(Some(whole)) => Some(LinkEvent::Received(self.peer, inner, whole)),
                Ok(None) => None,
                Err(_) => Some(LinkEvent::FrameLost(self.peer)),
            },
        }
    }
}

/// Gives every UDP socket of this process that lacks them `underlay::BUFFER` bytes of buffer
/// (`force_buffers`). webrtc-ice opens its sockets itself and does not expose them, so they
/// are found through /proc/self/fd. Each link calls it when its ICE connects, and so meets
/// every earlier link's sockets again: those cost one getsockopt each. Forcing every socket
/// every time (and reading each fd's link) was a tenth of the CPU a 64-host mesh took to form.
pub fn enlarge_udp_buffers() {
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else { return };
    for fd in fds.flatten().filter_map(|e| e.file_name().to_str()?.parse::<libc::c_int>().ok()) {
        if lacks_buffers(fd) {
            force_buffers(fd);
        }
    }
}

/// An IPv4 or IPv6 UDP socket whose receive buffer is below `BUFFER` (the kernel reports
/// twice what was set). Anything that is not a socket fails the first getsockopt.
fn lacks_buffers(fd: libc::c_int) -> bool {
    sock_option(fd, libc::SO_RCVBUF).is_some_and(|b| b < 2 * BUFFER)
        && sock_option(fd, libc::SO_TYPE) == Some(libc::SOCK_DGRAM)
        && matches!(sock_option(fd, libc::SO_DOMAIN), Some(libc::AF_INET | libc::AF_INET6))
}

/// Whether a candidate's address is reachable from the internet: not private (RFC 1918,
/// shared CGNAT space, unique-local), loopback or link-local.
pub fn is_public(address: &str) -> bool {
    match address.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            let cgnat = ip.octets()[0] == 100 && (ip.octets()[1] & 0xc0) == 64;
            !(ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || cgnat)
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            !(ip.is_loopback() || ip.is_unspecified() || ip.is_unique_local() || ip.is_unicast_link_local())
        }
        Err(_) => false,
    }
}

/// A candidate as webrtc-ice shares it.
pub type IceCandidate = Arc<dyn Candidate + Send + Sync>;

/// A remote candidate from a signal; a bad one is logged and skipped.
pub fn parse_candidate(c: &str) -> Option<IceCandidate> {
    match unmarshal_candidate(c) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            debug!("unparsable remote candidate: {e}");
            None
        }
    }
}

/// Gives the agent a remote candidate; one it refuses is logged.
pub fn add_candidate(agent: &Agent, c: &IceCandidate) {
    if let Err(e) = agent.add_remote_candidate(c) {
        debug!("remote candidate refused: {e}");
    }
}

/// A candidate in words: its type and address (`"srflx 203.0.113.2:4000"`).
pub fn describe(kind: CandidateType, c: &(dyn Candidate + Send + Sync)) -> String {
    format!("{kind} {}:{}", c.address(), c.port())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    /// Needs CAP_NET_ADMIN, as the agent has (the buffers go past rmem_max).
    #[test]
    fn udp_sockets_get_the_buffers_and_nothing_else_is_touched() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (unix, _other) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let before = |fd| sock_option(fd, libc::SO_RCVBUF).unwrap();
        let (tcp_before, unix_before) = (before(tcp.as_raw_fd()), before(unix.as_raw_fd()));
        assert!(lacks_buffers(udp.as_raw_fd()));
        enlarge_udp_buffers();
        for opt in [libc::SO_RCVBUF, libc::SO_SNDBUF] {
            assert_eq!(sock_option(udp.as_raw_fd(), opt), Some(2 * BUFFER), "option {opt}");
        }
        assert!(!lacks_buffers(udp.as_raw_fd()), "the next link's call passes it by");
        assert_eq!(before(tcp.as_raw_fd()), tcp_before, "a TCP socket keeps its buffers");
        assert_eq!(before(unix.as_raw_fd()), unix_before, "a Unix socket keeps its buffers");
        assert!(!lacks_buffers(std::fs::File::open("/proc/self/status").unwrap().as_raw_fd()), "not a socket");
    }
}
