//! The embedded rendezvous service (`ipop-agent rendezvous`) and its wire protocol: JSON
//! objects, one per line, in an encrypted channel (`channel`: Noise NN) over TCP.
//!
//! ```text
//! server: {"hello":{"nonce":"<32 random bytes, hex>"}}
//! client: {"join":{"overlay":"lab","node_id":"a","public_key":"<hex>","proof":"<hex>"[,"certificate":"..."]}}
//! server: {"welcome":{"members":[{"node_id":"b","public_key":"<hex>"[,"certificate":"..."]}]}}   or   {"refused":{"reason":"..."}}
//! server: {"joined":{"node_id":"c","public_key":"<hex>"[,...]}}   {"left":{"node_id":"b"}}
//! server: {"revocation":{"list":"<the CA's revocation list>"}}   (with a CA: on joining, and when it changes)
//! client: {"signal":{"to":"b","data":{...}}}     server -> b: {"signal":{"from":"a","data":{...}}}
//! ```
//! `proof` answers the nonce as the overlay's mode asks (`admission`): an HMAC under the
//! overlay secret, or a signature by the key the node's certificate names. A refused client
//! learns nothing about the members. The service relays what links need (ICE credentials and
//! candidates, members' certificates); it never sees link traffic, and links that are up do
//! not need it.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use ipop_cert::CertBody;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore, mpsc},
};
use tracing::{debug, info, warn};

use crate::{
    core::{
        digest::{hex, unhex},
        node_id::check_node_id,
    },
    signaling::{
        admission::{Admission, Join, Proof, unix_now},
        channel,
    },
};

/// Longest line the rendezvous accepts from a client (a join, a signal).
pub const MAX_LINE: usize = 64 * 1024;
/// Longest line a client accepts from the rendezvous: a welcome lists up to `MAX_MEMBERS`
/// members with their certificates.
pub const MAX_SERVER_LINE: usize = 4 * 1024 * 1024;
/// Time a client has to join after connecting.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Members per overlay.
pub const MAX_MEMBERS: usize = 1024;
/// Connections not yet admitted, at most (bounds the work unauthenticated clients cause).
pub const MAX_PENDING: usize = 256;
/// Connections not yet admitted from one IP address, at most: one flooding host cannot take
/// every pending slot and keep members out.
pub const MAX_PENDING_PER_IP: usize = 8;
/// Messages queued toward one member before it is considered stuck and dropped.
const QUEUE: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    pub node_id: String,
    pub public_key: String,
    /// Its certificate, in an overlay with a CA (agents check it themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMsg {
    Hello {
        nonce: String,
    },
    Welcome {
        members: Vec<Member>,
    },
    Refused {
        reason: String,
    },
    Joined(Member),
    Left {
        node_id: String,
    },
    Signal {
        from: String,
        data: Value,
    },
    /// The CA's newest revocation list (agents take it only if the CA signed it and it is newer).
    Revocation {
        list: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    Join {
        overlay: String,
        node_id: String,
        public_key: String,
        proof: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        certificate: Option<String>,
    },
    Signal {
        to: String,
        data: Value,
    },
}

pub type Reader<R> = channel::Reader<R>;
pub type Writer<W> = channel::Writer<W>;

pub async fn write_msg<W: AsyncWrite + Unpin, T: Serialize>(w: &mut Writer<W>, msg: &T) -> Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    w.write_line(&line).await
}

/// A joined member.
struct Seat {
    /// What others are told of it.
    member: Member,
    queue: mpsc::Sender<ServerMsg>,
    /// The connection's number: a replaced connection does not remove its successor.
    conn: u64,
    /// Its certificate as checked when it joined (with a CA), to see it expire or be revoked.
    cert: Option<CertBody>,
}

struct Overlay {
    name: String,
    /// Replaced when a newer revocation list arrives.
    admission: std::sync::RwLock<Admission>,
    members: Mutex<HashMap<String, Seat>>,
    pending: Semaphore,
    pending_by_ip: std::sync::Mutex<HashMap<std::net::IpAddr, usize>>,
    dropped: std::sync::Mutex<Dropped>,
}

/// Signals the rendezvous could not deliver, counted by reason and said at info level at most
/// every `DROP_LOG_EVERY`: agents resend what matters, but an operator should see the losses.
#[derive(Debug, Default)]
struct Dropped {
    /// To a node that is not a member (not yet joined, or gone).
    absent: u64,
    /// To a member whose queue is full (a stuck or slow connection).
    full: u64,
    /// Counts already said, and when.
    said: (u64, u64),
    said_at: Option<std::time::Instant>,
}

const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

impl Dropped {
    fn note(&mut self, full: bool, from: &str, to: &str) {
        if full {
            self.full += 1
        } else {
            self.absent += 1
        }
        if self.said_at.is_some_and(|t| t.elapsed() < DROP_LOG_EVERY) {
            return;
        }
        let (absent, full) = (self.absent - self.said.0, self.full - self.said.1);
        info!(
            absent,
            full,
            total = self.absent + self.full,
            last_from = from,
            last_to = to,
            "signals dropped: to nodes that are not members, or to members whose queue is full"
        );
        self.said = (self.absent, self.full);
        self.said_at = Some(std::time::Instant::now());
    }
}

/// Serves one overlay on `listener` until dropped (which closes every connection).
pub async fn serve(listener: TcpListener, overlay: String, admission: Admission) -> Result<()> {
    serve_with(listener, overlay, admission, None).await
}

/// `serve`, with the CA's revocation list read from `revocations` whenever it changes: newer
/// lists go to every member, and members they revoke are dropped.
pub async fn serve_with(
    listener: TcpListener,
    overlay: String,
    admission: Admission,
    revocations: Option<std::path::PathBuf>,
) -> Result<()> {
    let state = Arc::new(Overlay {
        name: overlay,
        admission: std::sync::RwLock::new(admission),
        members: Mutex::new(HashMap::new()),
        pending: Semaphore::new(MAX_PENDING),
        pending_by_ip: std::sync::Mutex::new(HashMap::new()),
        dropped: Default::default(),
    });
    info!(addr = %listener.local_addr()?, overlay = %state.name, "rendezvous listening");
    let mut next_conn = 0u64;
    // Connections live in this set: when `serve` is dropped, every connection closes.
    let mut conns = tokio::task::JoinSet::new();
    conns.spawn(watch_members(state.clone(), revocations));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = accepted.context("accepting")?;
                next_conn += 1;
                let (state, conn) = (state.clone(), next_conn);
                conns.spawn(async move {
                    if let Err(e) = handle(state, stream, peer, conn).await {
                        debug!(%peer, "rendezvous connection ended: {e:#}");
                    }
                });
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

/// A pending slot of one IP address, given back on drop.
struct PerIp<'a>(&'a Overlay, std::net::IpAddr);

impl Drop for PerIp<'_> {
    fn drop(&mut self) {
        let mut map = self.0.pending_by_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
            }
        }
    }
}

/// One connection: a slot among the pending ones, the join challenge, a seat among the
/// members, then signals relayed until it ends.
async fn handle(state: Arc<Overlay>, stream: TcpStream, peer: SocketAddr, conn: u64) -> Result<()> {
    let Some(per_ip) = pending_slot(&state, peer) else { return Ok(()) };
    let Ok(permit) = state.pending.try_acquire() else {
        warn!(%peer, "too many connections waiting to join: closing");
        return Ok(());
    };
    // Signals are small lines that others wait on: each goes at once, not held by Nagle
    // behind the ACK of the one before (the agents' side does the same).
    stream.set_nodelay(true)?;
    let (r, w) = stream.into_split();
    let (mut r, mut w) = tokio::time::timeout(JOIN_TIMEOUT, channel::accept(r, w, MAX_LINE))
        .await
        .context("the channel's handshake timed out")??;
    let Some((me, cert)) = challenge(&state, &mut r, &mut w, peer).await? else { return Ok(()) };
    drop((permit, per_ip));
    let node_id = me.node_id.clone();
    let Some(rx) = seat(&state, &mut w, me, conn, cert).await? else { return Ok(()) };
    info!(%peer, %node_id, "member joined");
    let result = relay(&state, &mut r, &mut w, rx, &node_id).await;
    leave(&state, &node_id, conn).await;
    result
}

/// A pending slot for `peer`'s address, unless it has `MAX_PENDING_PER_IP` already.
fn pending_slot(state: &Overlay, peer: SocketAddr) -> Option<PerIp<'_>> {
    let mut map = state.pending_by_ip.lock().unwrap_or_else(|e| e.into_inner());
    let n = map.entry(peer.ip()).or_insert(0);
    if *n >= MAX_PENDING_PER_IP {
        debug!(%peer, "too many connections waiting to join from this address: closing");
        return None;
    }
    *n += 1;
    Some(PerIp(state, peer.ip()))
}

fn refuse(reason: &str) -> ServerMsg {
    ServerMsg::Refused { reason: reason.to_owned() }
}

/// Sends a fresh nonce and checks the join that answers it: the member that proved what the
/// overlay asks, or `None` (refused, and told why).
async fn challenge<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    state: &Overlay,
    r: &mut Reader<R>,
    w: &mut Writer<W>,
    peer: SocketAddr,
) -> Result<Option<(Member, Option<CertBody>)>> {
    let mut nonce = [0u8; 32];
    getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let nonce = hex(&nonce);
    write_msg(w, &ServerMsg::Hello { nonce: nonce.clone() }).await?;
    let line = tokio::time::timeout(JOIN_TIMEOUT, r.read_line())
        .await
        .context("join timed out")??
        .context("closed before joining")?;
    let Ok(ClientMsg::Join { overlay, node_id, public_key, proof, certificate }) =
        serde_json::from_str::<ClientMsg>(&line)
    else {
        write_msg(w, &refuse("expected a join message")).await?;
        return Ok(None);
    };
    let join = Join {
        nonce: &nonce,
        overlay: &overlay,
        node_id: &node_id,
        public_key: &public_key,
        proof: &proof,
        certificate: certificate.as_deref(),
    };
    let checked = check_node_id(&node_id)
        .and_then(|()| unhex::<32>(&public_key).ok_or_else(|| "public_key must be 32 bytes of hex".to_owned()))
        .and_then(|_| state.admission.read().unwrap_or_else(|e| e.into_inner()).check(&join, &state.name, unix_now()));
    match checked {
        Err(reason) => {
            warn!(%peer, node_id = %node_id.chars().take(64).collect::<String>(), "refused: {reason}");
            write_msg(w, &refuse(&reason)).await?;
            Ok(None)
        }
        Ok(cert) => Ok(Some((Member { node_id, public_key, certificate }, cert))),
    }
}

/// Seats a member: welcomes it with the member list, announces it to the others, and returns
/// its queue; `None` if the overlay is full.
async fn seat<W: AsyncWrite + Unpin>(
    state: &Overlay,
    w: &mut Writer<W>,
    me: Member,
    conn: u64,
    cert: Option<CertBody>,
) -> Result<Option<mpsc::Receiver<ServerMsg>>> {
    let (tx, rx) = mpsc::channel::<ServerMsg>(QUEUE);
    let mut members = state.members.lock().await;
    let node_id = me.node_id.as_str();
    if members.len() >= MAX_MEMBERS && !members.contains_key(node_id) {
        write_msg(w, &refuse("overlay full")).await?;
        return Ok(None);
    }
    let list = members.iter().filter(|(id, _)| *id != node_id).map(|(_, s)| s.member.clone()).collect();
    write_msg(w, &ServerMsg::Welcome { members: list }).await?;
    if let Some(list) = revocation_text(state) {
        write_msg(w, &ServerMsg::Revocation { list }).await?;
    }
    for (id, other) in members.iter() {
        if id != node_id {
            let _ = other.queue.try_send(ServerMsg::Joined(me.clone()));
        }
    }
    // A node that rejoins (restarted, or reconnecting) replaces its old connection.
    members.insert(me.node_id.clone(), Seat { member: me, queue: tx, conn, cert });
    Ok(Some(rx))
}

/// Relays: what others queue for this member goes out; its signals go to their members.
async fn relay<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    state: &Overlay,
    r: &mut Reader<R>,
    w: &mut Writer<W>,
    mut rx: mpsc::Receiver<ServerMsg>,
    node_id: &str,
) -> Result<()> {
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(msg) => write_msg(w, &msg).await?,
                None => return Ok(()), // replaced by a newer connection
            },
            line = r.read_line() => {
                let Some(line) = line? else { return Ok(()) };
                let Ok(ClientMsg::Signal { to, data }) = serde_json::from_str::<ClientMsg>(&line) else {
                    anyhow::bail!("unexpected message from a member");
                };
                let members = state.members.lock().await;
                let delivered = members.get(&to).map(|target| {
                    target.queue.try_send(ServerMsg::Signal { from: node_id.to_owned(), data }).is_ok()
                });
                if delivered != Some(true) {
                    let mut dropped = state.dropped.lock().unwrap_or_else(|e| e.into_inner());
                    dropped.note(delivered.is_some(), node_id, &to);
                }
            }
        }
    }
}

/// The revocation list in force, as text (with a CA that has one).
fn revocation_text(state: &Overlay) -> Option<String> {
    match &*state.admission.read().unwrap_or_else(|e| e.into_inner()) {
        Admission::Ca(c) => c.revoked.as_ref().map(|r| r.to_text()),
        Admission::Secret(_) => None,
    }
}

/// Every second, with a CA: a newer revocation list in `path` replaces the one in force and
/// goes to every member; members whose certificate is revoked or expired are dropped (the
/// others hear they left).
async fn watch_members(state: Arc<Overlay>, path: Option<std::path::PathBuf>) {
    let mut seen = None;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut news = None;
        if let Some(path) = &path {
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if modified != seen {
                seen = modified;
                match std::fs::read_to_string(path)
                    .map_err(anyhow::Error::from)
                    .and_then(|t| take_list(&state, &t).map(|n| (t, n)))
                {
                    Ok((text, true)) => news = Some(text),
                    Ok((_, false)) => {}
                    Err(e) => warn!(path = %path.display(), "revocation list not taken: {e}"),
                }
            }
        }
        drop_invalid(&state, news).await;
    }
}

/// Drops members whose certificate no longer holds (revoked, expired), and passes `news` (a
/// newer revocation list) on to the rest.
async fn drop_invalid(state: &Overlay, news: Option<String>) {
    let Admission::Ca(certified) = state.admission.read().unwrap_or_else(|e| e.into_inner()).clone() else { return };
    let now = unix_now();
    let mut members = state.members.lock().await;
    let gone: Vec<String> = members
        .iter()
        .filter(|(_, s)| s.cert.as_ref().is_some_and(|c| !certified.still_holds(c, now)))
        .map(|(id, _)| id.clone())
        .collect();
    for id in &gone {
        members.remove(id); // its queue closes: its connection ends
        info!(node_id = %id, "member's certificate no longer holds (revoked or expired): dropped");
    }
    for other in members.values() {
        if let Some(list) = &news {
            let _ = other.queue.try_send(ServerMsg::Revocation { list: list.clone() });
        }
        for id in &gone {
            let _ = other.queue.try_send(ServerMsg::Left { node_id: id.clone() });
        }
    }
}

/// Takes `text` as the revocation list in force if the CA signed it and it is newer.
fn take_list(state: &Overlay, text: &str) -> Result<bool> {
    let list = ipop_cert::RevocationList::from_text(text)?;
    let mut admission = state.admission.write().unwrap_or_else(|e| e.into_inner());
    let Admission::Ca(certified) = &mut *admission else { anyhow::bail!("this overlay has no CA") };
    list.verify(&certified.ca)?;
    if certified.revoked.as_ref().is_some_and(|r| r.body().number >= list.body().number) {
        return Ok(false);
    }
    info!(number = list.body().number, revoked = list.body().revoked.len(), "revocation list in force");
    certified.revoked = Some(list);
    Ok(true)
}

/// The member's connection ended: unless a newer one replaced it, the others hear it left.
async fn leave(state: &Overlay, node_id: &str, conn: u64) {
    let mut members = state.members.lock().await;
    if members.get(node_id).is_some_and(|s| s.conn == conn) {
        members.remove(node_id);
        for other in members.values() {
            let _ = other.queue.try_send(ServerMsg::Left { node_id: node_id.to_owned() });
        }
        info!(%node_id, "member left");
    }
}

/// Joins the overlay over an established channel: reads the hello, answers it with `proof`,
/// returns the members or the refusal.
pub async fn join<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut Reader<R>,
    w: &mut Writer<W>,
    overlay: &str,
    proof: &Proof,
    node_id: &str,
    public_key: &str,
) -> Result<Result<Vec<Member>, String>> {
    let line = r.read_line().await?.context("rendezvous closed before hello")?;
    let ServerMsg::Hello { nonce } = serde_json::from_str(&line).context("bad hello")? else {
        anyhow::bail!("expected hello from the rendezvous");
    };
    let (proof, certificate) = proof.prove(&nonce, overlay, node_id, public_key);
    let join = ClientMsg::Join {
        overlay: overlay.into(),
        node_id: node_id.into(),
        public_key: public_key.into(),
        proof,
        certificate,
    };
    write_msg(w, &join).await?;
    let line = r.read_line().await?.context("rendezvous closed before answering the join")?;
    match serde_json::from_str(&line).context("bad answer to join")? {
        ServerMsg::Welcome { members } => Ok(Ok(members)),
        ServerMsg::Refused { reason } => Ok(Err(reason)),
        other => anyhow::bail!("unexpected answer to join: {other:?}"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tokio::io::AsyncWriteExt as _;

    use super::*;
    use crate::signaling::admission::Secret;

    type Conn = (Reader<tokio::net::tcp::OwnedReadHalf>, Writer<tokio::net::tcp::OwnedWriteHalf>);

    /// A client's channel to the rendezvous at `addr`.
    async fn open(addr: SocketAddr) -> Conn {
        let (r, w) = TcpStream::connect(addr).await.unwrap().into_split();
        channel::connect(r, w, MAX_SERVER_LINE).await.unwrap()
    }

    async fn start(secret: &str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, "lab".into(), Admission::Secret(Secret::stretch("lab", secret))));
        addr
    }

    struct Client {
        r: Reader<tokio::net::tcp::OwnedReadHalf>,
        w: Writer<tokio::net::tcp::OwnedWriteHalf>,
    }

    impl Client {
        async fn join(addr: SocketAddr, secret: &str, id: &str) -> (Client, Result<Vec<Member>, String>) {
            let (mut r, mut w) = open(addr).await;
            let key = hex(&[id.len() as u8; 32]);
            let res =
                join(&mut r, &mut w, "lab", &Proof::Secret(Secret::stretch("lab", secret)), id, &key).await.unwrap();
            (Client { r, w }, res)
        }

        async fn next(&mut self) -> ServerMsg {
            let line =
                tokio::time::timeout(Duration::from_secs(2), self.r.read_line()).await.unwrap().unwrap().unwrap();
            serde_json::from_str(&line).unwrap()
        }
    }

    #[tokio::test]
    async fn members_learn_about_each_other_and_relay_signals() {
        let addr = start("s3cret").await;
        let (mut a, members) = Client::join(addr, "s3cret", "a").await;
        assert_eq!(members.unwrap(), vec![]);
        let (mut b, members) = Client::join(addr, "s3cret", "bb").await;
        assert_eq!(
            members.unwrap(),
            vec![Member { node_id: "a".into(), public_key: hex(&[1; 32]), certificate: None }]
        );
        assert_eq!(
            a.next().await,
            ServerMsg::Joined(Member { node_id: "bb".into(), public_key: hex(&[2; 32]), certificate: None })
        );
        write_msg(&mut a.w, &ClientMsg::Signal { to: "bb".into(), data: serde_json::json!({"type": "offer"}) })
            .await
            .unwrap();
        assert_eq!(b.next().await, ServerMsg::Signal { from: "a".into(), data: serde_json::json!({"type": "offer"}) });
        drop(b);
        assert_eq!(a.next().await, ServerMsg::Left { node_id: "bb".into() });
    }

    #[tokio::test]
    async fn with_a_ca_only_certified_members_join_as_the_node_their_certificate_names() {
        use ipop_cert::{CertBody, Certificate, NodeKey};

        use crate::signaling::admission::Certified;
        let ca = NodeKey::generate();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let admission = Admission::Ca(Certified { ca: ca.public(), revoked: None });
        tokio::spawn(serve(listener, "lab".into(), admission));
        let key = Arc::new(NodeKey::generate());
        let body = CertBody {
            serial: "1".into(),
            node_id: "a".into(),
            public_key: key.public(),
            ips: Vec::new(),
            macs: Vec::new(),
            not_before: 0,
            not_after: u64::MAX,
            ca: ca.public(),
        };
        let proof = Proof::Certificate { certificate: Certificate::issue(&ca, body).to_text(), key: key.clone() };
        let noise = hex(&key.public().x25519());
        let try_join = |id: &'static str, proof: Proof| {
            let noise = noise.clone();
            async move {
                let (mut r, mut w) = open(addr).await;
                join(&mut r, &mut w, "lab", &proof, id, &noise).await.unwrap()
            }
        };
        let members = try_join("a", proof.clone()).await.expect("a joins with its certificate");
        assert!(members.is_empty());
        let refused = try_join("b", proof).await.unwrap_err();
        assert!(refused.contains("b shows the certificate of a"), "{refused}");
        let refused = try_join("c", Proof::Secret(Secret::stretch("lab", "any secret"))).await.unwrap_err();
        assert!(refused.contains("admits by certificate"), "{refused}");
    }

    /// Copies what clients send to the rendezvous at `to`, keeping those bytes: what anyone
    /// on the path can capture.
    async fn tap(to: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, seen) = (listener.local_addr().unwrap(), Arc::new(std::sync::Mutex::new(Vec::new())));
        let kept = seen.clone();
        tokio::spawn(async move {
            let (client, _) = listener.accept().await.unwrap();
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = TcpStream::connect(to).await.unwrap().into_split();
            tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = tokio::io::AsyncReadExt::read(&mut cr, &mut buf).await {
                kept.lock().unwrap().extend_from_slice(&buf[..n]);
                sw.write_all(&buf[..n]).await.unwrap();
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn a_captured_join_shows_nothing_and_cannot_be_replayed() {
        let addr = start("s3cret").await;
        let (mut b, _) = Client::join(addr, "s3cret", "bb").await;
        // h1 joins through a tap, by hand, so the test holds its join in clear as well.
        let (tapped, seen) = tap(addr).await;
        let (mut r, mut w) = open(tapped).await;
        let Some(ServerMsg::Hello { nonce }) = r.read_line().await.unwrap().map(|l| serde_json::from_str(&l).unwrap())
        else {
            panic!("hello")
        };
        let secret = Proof::Secret(Secret::stretch("lab", "s3cret"));
        let (proof, _) = secret.prove(&nonce, "lab", "h1", &hex(&[5; 32]));
        let join = ClientMsg::Join {
            overlay: "lab".into(),
            node_id: "h1".into(),
            public_key: hex(&[5; 32]),
            proof: proof.clone(),
            certificate: None,
        };
        write_msg(&mut w, &join).await.unwrap();
        assert!(matches!(serde_json::from_str(&r.read_line().await.unwrap().unwrap()), Ok(ServerMsg::Welcome { .. })));
        assert!(matches!(b.next().await, ServerMsg::Joined(m) if m.node_id == "h1"));
        drop((r, w));
        assert_eq!(b.next().await, ServerMsg::Left { node_id: "h1".into() });

        // On the wire: neither the join, nor the node, nor the proof.
        let wire = seen.lock().unwrap().clone();
        for clear in [b"join".as_slice(), b"h1", proof.as_bytes(), nonce.as_bytes()] {
            assert!(!wire.windows(clear.len()).any(|w| w == clear), "{:?} in clear", String::from_utf8_lossy(clear));
        }
        // The captured bytes, sent again: the handshake makes new keys, nothing opens.
        let mut replay = TcpStream::connect(addr).await.unwrap();
        replay.write_all(&wire).await.unwrap();
        let mut answer = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read_to_end(&mut replay, &mut answer),
        )
        .await;
        assert!(read.is_ok(), "the rendezvous closed the replayed connection");
        // The join itself, in clear, on a new channel: its nonce is not this channel's.
        let (mut r, mut w) = open(addr).await;
        r.read_line().await.unwrap().unwrap();
        write_msg(&mut w, &join).await.unwrap();
        let answer: ServerMsg = serde_json::from_str(&r.read_line().await.unwrap().unwrap()).unwrap();
        assert_eq!(answer, ServerMsg::Refused { reason: "not admitted: wrong overlay or secret".into() });
        // b heard of no second h1.
        let quiet = tokio::time::timeout(Duration::from_millis(500), b.r.read_line()).await;
        assert!(quiet.is_err(), "nothing more for b: {quiet:?}");
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_and_learns_nothing() {
        let addr = start("s3cret").await;
        let (mut a, _) = Client::join(addr, "s3cret", "a").await;
        let (_, res) = Client::join(addr, "guess", "mallory").await;
        assert_eq!(res, Err("not admitted: wrong overlay or secret".into()));
        // The member was not told about the refused node.
        let (_, _) = Client::join(addr, "s3cret", "c").await;
        assert_eq!(
            a.next().await,
            ServerMsg::Joined(Member { node_id: "c".into(), public_key: hex(&[1; 32]), certificate: None })
        );
    }

    #[tokio::test]
    async fn bad_joins_and_oversized_lines_are_refused() {
        let addr = start("s3cret").await;
        let (_, res) = Client::join(addr, "s3cret", "bad id!").await;
        assert!(res.unwrap_err().contains("node id"));
        let (mut r, mut w) = open(addr).await;
        r.read_line().await.unwrap().unwrap();
        w.write_line(&vec![b'x'; MAX_LINE + 10]).await.unwrap();
        // The server gives up on the line and closes without admitting anyone.
        let end = tokio::time::timeout(Duration::from_secs(2), r.read_line()).await.unwrap();
        assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    }

    /// Writes `line` in fragments cut at pseudo-random places, yielding between them, so the
    /// reader sees partial lines while it has other work.
    pub async fn write_fragmented<W: AsyncWrite + Unpin>(w: &mut W, line: &[u8], seed: &mut u64) {
        let mut rest = line;
        while !rest.is_empty() {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let n = (*seed % 24 + 1).min(rest.len() as u64) as usize;
            w.write_all(&rest[..n]).await.unwrap();
            rest = &rest[n..];
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_writing_in_fragments_while_signals_flow_to_it_loses_nothing() {
        const N: usize = 200;
        let addr = start("s3cret").await;
        let (mut a, _) = Client::join(addr, "s3cret", "a").await;
        let (mut b, _) = Client::join(addr, "s3cret", "bb").await;
        assert!(matches!(a.next().await, ServerMsg::Joined(_)));
        // b writes its signals to a in fragments while a's signals to b keep b's relay busy.
        let writer = tokio::spawn(async move {
            let mut seed = 0x9e37_79b9_7f4a_7c15;
            for i in 0..N {
                let mut line = serde_json::to_vec(&ClientMsg::Signal { to: "a".into(), data: i.into() }).unwrap();
                line.push(b'\n');
                let sealed = b.w.seal(&line).unwrap();
                write_fragmented(b.w.get_mut(), &sealed, &mut seed).await;
            }
            let mut got = Vec::new();
            while got.len() < N {
                match b.next().await {
                    ServerMsg::Signal { data, .. } => got.push(data),
                    other => panic!("unexpected {other:?}"),
                }
            }
            got
        });
        for i in 0..N {
            write_msg(&mut a.w, &ClientMsg::Signal { to: "bb".into(), data: i.into() }).await.unwrap();
        }
        for i in 0..N {
            assert_eq!(a.next().await, ServerMsg::Signal { from: "bb".into(), data: i.into() });
        }
        let to_b = writer.await.unwrap();
        assert_eq!(to_b, (0..N).map(Value::from).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_flood_of_idle_and_bogus_clients_does_not_keep_members_out() {
        let addr = start("s3cret").await;
        let (mut a, _) = Client::join(addr, "s3cret", "a").await;
        // One host opens more connections than there are pending slots and never joins;
        // another sends bogus joins.
        let mut idle = Vec::new();
        for _ in 0..MAX_PENDING + 44 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(c) = s.connect(addr).await {
                idle.push(c);
            }
        }
        let guess = Proof::Secret(Secret::stretch("lab", "guess"));
        for i in 0..100 {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.3:0".parse().unwrap()).unwrap();
            let (r, w) = s.connect(addr).await.unwrap().into_split();
            let (mut r, mut w) = channel::connect(r, w, MAX_SERVER_LINE).await.unwrap();
            let _ = join(&mut r, &mut w, "lab", &guess, &format!("m{i}"), &hex(&[9; 32])).await;
        }
        // A member from elsewhere still joins, and signals still flow.
        let (mut b, members) = Client::join(addr, "s3cret", "bb").await;
        assert_eq!(members.unwrap().len(), 1);
        assert!(matches!(a.next().await, ServerMsg::Joined(m) if m.node_id == "bb"));
        write_msg(&mut a.w, &ClientMsg::Signal { to: "bb".into(), data: serde_json::json!(1) }).await.unwrap();
        assert_eq!(b.next().await, ServerMsg::Signal { from: "a".into(), data: serde_json::json!(1) });
        drop(idle);
    }
}
