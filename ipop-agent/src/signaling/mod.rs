//! How an agent finds its peers and trades what links need: a small interface (a handle to
//! send, a channel of events) with two backends, the embedded rendezvous over TCP
//! (`rendezvous`, `channel`) and an XMPP server's members-only room (`xmpp`, `muc`). Each is
//! a `Service` that `keep` keeps a session with, reconnecting with backoff.

use std::{future::Future, time::Duration};

use serde_json::Value;
use tokio::{net::TcpStream, sync::mpsc};
use tracing::info;

pub mod admission;
pub mod channel;
pub mod muc;
pub mod rendezvous;
pub mod service;
pub mod tls;
pub mod xmpp;

pub use service::{Service, SignalEvent, Signaling, keep};

pub use rendezvous::Member;
use rendezvous::{ClientMsg, ServerMsg};

/// Who we are to the rendezvous, and how we prove it.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub overlay: String,
    pub proof: admission::Proof,
    pub node_id: String,
    pub public_key: String,
}

/// The embedded rendezvous at `addr`, as this agent joins it.
struct Rendezvous {
    addr: String,
    creds: Credentials,
}

impl Service for Rendezvous {
    fn name(&self) -> String {
        format!("rendezvous {}", self.addr)
    }

    fn session(
        &mut self,
        outgoing: &mut mpsc::Receiver<(String, Value)>,
        events: &mpsc::Sender<SignalEvent>,
    ) -> impl Future<Output = anyhow::Result<Option<String>>> + Send {
        session(&self.addr, &self.creds, outgoing, events)
    }
}

/// Connects to the rendezvous at `addr` and keeps reconnecting with backoff until refused
/// or until the returned receiver is dropped.
pub fn connect_rendezvous(addr: String, creds: Credentials) -> (Signaling, mpsc::Receiver<SignalEvent>) {
    keep(Rendezvous { addr, creds })
}

/// The service an agent is configured with, made (and its settings checked) before anything
/// else is; `connect` starts it.
pub enum Backend {
    Rendezvous { addr: String, creds: Credentials },
    Xmpp(xmpp::Xmpp),
}

impl Backend {
    pub fn connect(self) -> (Signaling, mpsc::Receiver<SignalEvent>) {
        match self {
            Backend::Rendezvous { addr, creds } => connect_rendezvous(addr, creds),
            Backend::Xmpp(x) => keep(x),
        }
    }

    pub fn name(&self) -> String {
        match self {
            Backend::Rendezvous { addr, .. } => format!("rendezvous {addr}"),
            Backend::Xmpp(x) => x.name(),
        }
    }
}

/// One connection: `Ok(Some(reason))` if refused, `Ok(None)` if it ended after joining.
async fn session(
    addr: &str,
    creds: &Credentials,
    outgoing: &mut mpsc::Receiver<(String, Value)>,
    events: &mpsc::Sender<SignalEvent>,
) -> anyhow::Result<Option<String>> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr)).await??;
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let (mut r, mut w) =
        tokio::time::timeout(Duration::from_secs(5), channel::connect(r, w, rendezvous::MAX_SERVER_LINE)).await??;
    let joined = tokio::time::timeout(
        rendezvous::JOIN_TIMEOUT,
        rendezvous::join(&mut r, &mut w, &creds.overlay, &creds.proof, &creds.node_id, &creds.public_key),
    )
    .await??;
    let members = match joined {
        Ok(members) => members,
        Err(reason) => return Ok(Some(reason)),
    };
    info!(%addr, members = members.len(), "joined the overlay at the rendezvous");
    events.send(SignalEvent::Members(members)).await?;
    loop {
        tokio::select! {
            out = outgoing.recv() => {
                let Some((to, data)) = out else { return Ok(None) };
                rendezvous::write_msg(&mut w, &ClientMsg::Signal { to, data }).await?;
            }
            line = r.read_line() => {
                let Some(line) = line? else { anyhow::bail!("the rendezvous closed the connection") };
                let event = match serde_json::from_str(&line)? {
                    ServerMsg::Joined(m) => SignalEvent::Joined(m),
                    ServerMsg::Left { node_id } => SignalEvent::Left(node_id),
                    ServerMsg::Signal { from, data } => SignalEvent::Signal { from, data },
                    ServerMsg::Revocation { list } => SignalEvent::Revocation(list),
                    other => anyhow::bail!("unexpected message from the rendezvous: {other:?}"),
                };
                events.send(event).await?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;
    use crate::core::digest::hex;

    fn creds(id: &str, secret: &str) -> Credentials {
        let proof = admission::Proof::Secret(admission::Secret::stretch("lab", secret));
        Credentials { overlay: "lab".into(), proof, node_id: id.into(), public_key: hex(&[7; 32]) }
    }

    async fn next(rx: &mut mpsc::Receiver<SignalEvent>) -> SignalEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("event in time").expect("open")
    }

    #[tokio::test]
    async fn clients_reconnect_when_the_rendezvous_returns() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(rendezvous::serve(
            listener,
            "lab".into(),
            admission::Admission::Secret(admission::Secret::stretch("lab", "s")),
        ));
        let (_a, mut a_rx) = connect_rendezvous(addr.to_string(), creds("a", "s"));
        assert_eq!(next(&mut a_rx).await, SignalEvent::Members(vec![]));
        let (b, mut b_rx) = connect_rendezvous(addr.to_string(), creds("b", "s"));
        assert!(matches!(next(&mut b_rx).await, SignalEvent::Members(m) if m.len() == 1));
        assert!(matches!(next(&mut a_rx).await, SignalEvent::Joined(m) if m.node_id == "b"));
        b.send("a", serde_json::json!({"hi": 1}));
        assert_eq!(next(&mut a_rx).await, SignalEvent::Signal { from: "b".into(), data: serde_json::json!({"hi": 1}) });

        server.abort();
        let _ = server.await;
        let lost = next(&mut a_rx).await;
        assert!(
            matches!(&lost, SignalEvent::Lost(why) if why.starts_with(&format!("rendezvous {addr}: "))),
            "{lost:?}"
        );
        let listener = TcpListener::bind(addr).await.unwrap();
        tokio::spawn(rendezvous::serve(
            listener,
            "lab".into(),
            admission::Admission::Secret(admission::Secret::stretch("lab", "s")),
        ));
        // Both come back; whichever joins second sees the other.
        let mut seen = false;
        for _ in 0..6 {
            match next(&mut a_rx).await {
                SignalEvent::Members(m) if m.iter().any(|m| m.node_id == "b") => seen = true,
                SignalEvent::Joined(m) if m.node_id == "b" => seen = true,
                _ => {}
            }
            if seen {
                break;
            }
        }
        assert!(seen, "a and b found each other again after the restart");
    }

    /// A rendezvous that writes every line in fragments while the agent sends signals as fast
    /// as it can: nothing is lost and the connection holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lines_split_at_random_places_lose_nothing_while_signals_go_out() {
        const N: usize = 300;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, w) = stream.into_split();
            let (mut r, mut w) = channel::accept(r, w, rendezvous::MAX_LINE).await.unwrap();
            rendezvous::write_msg(&mut w, &ServerMsg::Hello { nonce: "00".into() }).await.unwrap();
            r.read_line().await.unwrap().unwrap();
            rendezvous::write_msg(&mut w, &ServerMsg::Welcome { members: vec![] }).await.unwrap();
            let reader = tokio::spawn(async move {
                let mut n = 0;
                while n < N {
                    r.read_line().await.unwrap().expect("the agent stays connected");
                    n += 1;
                }
            });
            let mut seed = 0x2545_f491_4f6c_dd1d;
            for i in 0..N {
                let mut line = serde_json::to_vec(&ServerMsg::Signal { from: "b".into(), data: i.into() }).unwrap();
                line.push(b'\n');
                let sealed = w.seal(&line).unwrap();
                rendezvous::tests::write_fragmented(w.get_mut(), &sealed, &mut seed).await;
            }
            reader.await.unwrap();
            w
        });
        let (sig, mut rx) = connect_rendezvous(addr.to_string(), creds("a", "s"));
        assert_eq!(next(&mut rx).await, SignalEvent::Members(vec![]));
        let sender = tokio::spawn(async move {
            for i in 0..N {
                sig.send("b", serde_json::json!({"n": i}));
                tokio::task::yield_now().await;
            }
            sig
        });
        for i in 0..N {
            assert_eq!(next(&mut rx).await, SignalEvent::Signal { from: "b".into(), data: i.into() });
        }
        let _sig = sender.await.unwrap();
        let _w = server.await.unwrap();
        assert!(rx.try_recv().is_err(), "no reconnect");
    }

    #[tokio::test]
    async fn a_wrong_secret_is_a_fatal_refusal() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(rendezvous::serve(
            listener,
            "lab".into(),
            admission::Admission::Secret(admission::Secret::stretch("lab", "s")),
        ));
        let (_m, mut rx) = connect_rendezvous(addr.to_string(), creds("m", "guess"));
        assert!(matches!(next(&mut rx).await, SignalEvent::Refused(r) if r.contains("not admitted")));
    }
}
