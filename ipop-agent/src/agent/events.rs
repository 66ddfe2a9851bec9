//! Link and signaling events, and the RPCs links carry, handed to the switch.

use tracing::{debug, info, warn};

use crate::{
    agent::shell::Shell,
    core::{
        addr::Mac,
        rpc,
        switch::{Allowed, PeerId},
        wire::Inner,
    },
    kernel::maps::monotonic_ns,
    link::event::LinkEvent,
    signaling::SignalEvent,
};

/// Refused RPCs are logged at most this often per peer (the rest are counted).
const REFUSAL_LOG_INTERVAL_NS: u64 = 10_000_000_000;

impl Shell {
    /// What a link reports: up (with the way to send), down, data, losses.
    pub fn link_event(&mut self, ev: LinkEvent) {
        let now = monotonic_ns();
        match ev {
            LinkEvent::Up(id, data) => {
                if let Some(p) = self.peers.as_mut() {
                    p.set_up(id, Some(data));
                }
                // A peer that just came up (maybe restarted) has no summary of ours yet.
                self.sharing.reset();
                let announce = self.switch.peer_up(id);
                self.apply(announce);
                if let Some(p) = self.peers.as_ref() {
                    self.switch.adopt(p.tag(id), id);
                    if let Some(allowed) = p.certificate(id).and_then(allowed) {
                        self.switch.set_allowed(id, allowed);
                    }
                }
            }
            LinkEvent::Down(id) => {
                if let Some(p) = self.peers.as_mut() {
                    info!(peer = %p.name(id), "link down: its entries are no longer answered");
                    p.set_up(id, None);
                }
                self.rpc_refused_logged.remove(&id);
                let out = self.switch.peer_down(id);
                self.apply(out);
            }
            LinkEvent::Received(id, Inner::Ethernet, whole) => self.frame_from_peer(now, id, &whole),
            LinkEvent::FrameLost(_) => self.frames_dropped += 1,
            LinkEvent::Failed(id, reason) => {
                if let Some(p) = self.peers.as_mut() {
                    p.set_reason(id, reason);
                }
            }
            LinkEvent::Received(id, Inner::Rpc, bytes) => self.rpc(now, id, &bytes),
            LinkEvent::Received(_, Inner::Keepalive | Inner::Probe | Inner::ProbeAck, _) => {}
            LinkEvent::Dropped(id, e) => {
                self.datagrams_refused += 1;
                let name = self.peers.as_ref().map(|p| p.name(id).to_owned()).unwrap_or_default();
                debug!(peer = %name, "datagram dropped: {e}");
            }
        }
    }

    /// An RPC from a peer: a call or notification for the switch, a response, or garbage.
    fn rpc(&mut self, now: u64, id: PeerId, bytes: &[u8]) {
        match rpc::decode(bytes) {
            Ok(rpc::Incoming::Notification(method)) => {
                let out = self.switch.handle_rpc(now, id, &method);
                self.apply(out);
            }
            Ok(rpc::Incoming::Call { id: call, method }) => {
                let out = self.switch.handle_rpc(now, id, &method);
                self.apply(out);
                if let Some(p) = self.peers.as_mut() {
                    p.send(id, Inner::Rpc, rpc::encode_result(&call));
                }
            }
            Ok(rpc::Incoming::Summary(summary)) => {
                if let Some(p) = self.peers.as_ref() {
                    self.topology.heard(p.name(id), summary, now);
                }
            }
            Ok(rpc::Incoming::Response { error, .. }) => {
                if let Some((code, message)) = error {
                    debug!(peer = id, code, %message, "error response from a peer");
                }
            }
            Err(rejection) => {
                self.rpc_refused += 1;
                // Once per peer per interval: a hostile peer must not flood the log.
                let last = self.rpc_refused_logged.entry(id).or_insert((0, 0));
                last.1 += 1;
                if last.0 == 0 || now.saturating_sub(last.0) >= REFUSAL_LOG_INTERVAL_NS {
                    let name = self.peers.as_ref().map(|p| p.name(id).to_owned()).unwrap_or_default();
                    warn!(peer = %name, code = rejection.code, refused = last.1, "refused RPC: {}", rejection.message);
                    *last = (now.max(1), 0);
                }
                if let (Some(answer), Some(p)) = (rejection.answer, self.peers.as_mut()) {
                    p.send(id, Inner::Rpc, answer);
                }
            }
        }
    }

    /// What signaling reports: members, joins, leaves, signals for links.
    pub fn signal_event(&mut self, ev: SignalEvent) {
        let Some(peers) = self.peers.as_mut() else {
            return;
        };
        let replaced = match ev {
            SignalEvent::Members(members) => {
                peers.set_signaling(None);
                members.iter().filter_map(|m| peers.ensure(m)).collect()
            }
            SignalEvent::Joined(m) => peers.ensure(&m).into_iter().collect(),
            SignalEvent::Left(node) => {
                peers.left(&node);
                Vec::new()
            }
            SignalEvent::Signal { from, data } => {
                peers.signal(&from, data);
                Vec::new()
            }
            SignalEvent::Lost(why) => {
                // Said once per change: a rendezvous that stays away is not news every retry.
                if peers.set_signaling(Some(why.clone())) {
                    warn!("signaling unreachable ({why}): links that are up keep working; reconnecting");
                }
                Vec::new()
            }
            SignalEvent::Refused(_) => Vec::new(),
            SignalEvent::Revocation(list) => {
                self.revoke(&list, "the rendezvous");
                Vec::new()
            }
            SignalEvent::Ignored(why) => {
                if peers.signaling_ignored(monotonic_ns()) {
                    warn!("signaling: ignored {why} (counted in status; said at most every 10 s)");
                }
                Vec::new()
            }
        };
        for old in replaced {
            let out = self.switch.peer_down(old);
            self.apply(out);
        }
    }
}

impl Shell {
    /// A revocation list from `source`: the links of revoked members close (and their entries
    /// leave the kernel's table when their links report down).
    pub fn revoke(&mut self, list: &str, source: &str) {
        let Some(peers) = self.peers.as_mut() else { return };
        match peers.revoke(list) {
            Ok(gone) => {
                for node in gone {
                    warn!(%node, "revoked by the CA: its link is closed");
                }
            }
            Err(e) => warn!("a revocation list from {source} not taken: {e}"),
        }
    }

    /// Members whose certificate expired lose their links, as revoked ones do.
    pub fn expire_certificates(&mut self) {
        let Some(peers) = self.peers.as_mut() else { return };
        for node in peers.expire_certificates(crate::signaling::admission::unix_now()) {
            warn!(%node, "its certificate expired: its link is closed");
        }
    }
}

/// What a certificate lets its node claim, if it lists anything (else: today's first-owner rule).
fn allowed(cert: &ipop_cert::CertBody) -> Option<Allowed> {
    let macs: Vec<Mac> = cert.macs.iter().filter_map(|m| m.parse().ok()).collect();
    (!cert.ips.is_empty() || !macs.is_empty()).then(|| Allowed { ips: cert.ips.clone(), macs })
}
