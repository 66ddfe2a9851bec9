//! TURN over TCP or TLS, for networks that block outbound UDP. webrtc-ice speaks TURN over UDP
//! only, so each such server gets a UDP port on loopback here: every client socket that writes
//! to it gets its own stream to the server (one allocation per stream, as TURN over TCP has
//! it), its datagrams go out as messages on the stream, and what the server sends is cut into
//! messages (`core::turn_frame`) and sent back to that socket. Only this host's leg is a
//! stream: peers still reach the allocation over UDP at the server's relay address.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    task::JoinHandle,
};
use tokio_rustls::{TlsConnector, rustls};
use tracing::debug;

use crate::core::turn_frame::{self, HEAD_LEN};

/// How long to wait for the server to take the connection (and the TLS handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A client socket silent this long is gone (its ICE attempt ended): its stream closes, and
/// with it the allocation. A relay in use carries a keepalive a second.
const IDLE: Duration = Duration::from_secs(60);
/// Datagrams queued toward one stream; more are dropped, as UDP would.
const QUEUE: usize = 512;

/// Where the stream goes.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// TLS (`turns:`) with these roots; `None` is plain TCP.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    fn name(&self) -> String {
        let scheme = if self.tls.is_some() { "tls" } else { "tcp" };
        format!("{}:{} over {scheme}", self.host, self.port)
    }
}

/// A running relay: the loopback address webrtc-ice is given instead of the server's, and the
/// last reason a stream could not be opened (for `status`).
pub struct StreamRelay {
    pub local: SocketAddr,
    last_error: Arc<Mutex<Option<String>>>,
    task: JoinHandle<()>,
}

impl Drop for StreamRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StreamRelay {
    /// Binds the loopback port and serves it (from within the runtime).
    pub fn start(target: Target) -> Result<StreamRelay> {
        let std_sock = std::net::UdpSocket::bind("127.0.0.1:0").context("binding the TURN stream relay")?;
        std_sock.set_nonblocking(true)?;
        let sock = Arc::new(UdpSocket::from_std(std_sock)?);
        let local = sock.local_addr()?;
        let last_error = Arc::new(Mutex::new(None));
        let task = tokio::spawn(serve(sock, Arc::new(target), last_error.clone()));
        Ok(StreamRelay { local, last_error, task })
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Hands each client socket's datagrams to its own stream.
async fn serve(sock: Arc<UdpSocket>, target: Arc<Target>, last_error: Arc<Mutex<Option<String>>>) {
    let mut clients: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else { return };
        if clients.get(&from).is_none_or(mpsc::Sender::is_closed) {
            clients.retain(|_, tx| !tx.is_closed());
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(client(sock.clone(), from, target.clone(), rx, last_error.clone()));
            clients.insert(from, tx);
        }
        let _ = clients[&from].try_send(buf[..n].to_vec());
    }
}

/// One client socket's stream, from connecting until either side ends it.
async fn client(
    sock: Arc<UdpSocket>,
    from: SocketAddr,
    target: Arc<Target>,
    rx: mpsc::Receiver<Vec<u8>>,
    last_error: Arc<Mutex<Option<String>>>,
) {
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect(&target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return remember(&last_error, format!("{}: {e:#}", target.name())),
        Err(_) => return remember(&last_error, format!("{}: no connection within {CONNECT_TIMEOUT:?}", target.name())),
    };
    *last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Err(e) = carry(stream, &sock, from, rx).await {
        debug!(server = %target.name(), "TURN stream ended: {e}");
    }
}

fn remember(last_error: &Mutex<Option<String>>, e: String) {
    debug!("TURN stream: {e}");
    *last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn connect(target: &Target) -> Result<Box<dyn Stream>> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await.context("connecting")?;
    tcp.set_nodelay(true)?;
    let Some(tls) = &target.tls else { return Ok(Box::new(tcp)) };
    let name = rustls::pki_types::ServerName::try_from(target.host.clone()).context("the server's name")?;
    let stream = TlsConnector::from(tls.clone()).connect(name, tcp).await.context("TLS")?;
    Ok(Box::new(stream))
}

/// Datagrams from `from` onto the stream, padded; messages from the stream back to `from`.
async fn carry(
    stream: Box<dyn Stream>,
    sock: &UdpSocket,
    from: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
) -> std::io::Result<()> {
    let (mut r, mut w) = tokio::io::split(stream);
    let up = async {
        let mut out = Vec::new();
        while let Ok(Some(dg)) = tokio::time::timeout(IDLE, rx.recv()).await {
            let Ok((msg, frame)) = turn_frame::in_datagram(&dg) else { continue };
            out.clear();
            out.extend_from_slice(msg);
            out.resize(frame.stream_len, 0);
            w.write_all(&out).await?;
        }
        w.shutdown().await
    };
    let down = async {
        let mut buf = vec![0u8; turn_frame::MAX_STREAM_LEN];
        loop {
            r.read_exact(&mut buf[..HEAD_LEN]).await?;
            let frame = turn_frame::frame(buf[..HEAD_LEN].try_into().unwrap())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            r.read_exact(&mut buf[HEAD_LEN..frame.stream_len]).await?;
            // A message too large for one datagram (only a broken server sends one) is lost,
            // as it would be on UDP; the stream goes on.
            if let Err(e) = sock.send_to(&buf[..frame.len], from).await {
                debug!("TURN stream: a {}-byte message not passed on: {e}", frame.len);
            }
        }
    };
    tokio::select! {
        r = up => r,
        r = down => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TCP "TURN server" on loopback that reads one message at a time off the stream, checks
    /// it was padded, and sends it back: what the relay must frame both ways.
    async fn echo_server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 70_000];
            loop {
                if s.read_exact(&mut buf[..HEAD_LEN]).await.is_err() {
                    return;
                }
                let f = turn_frame::frame(buf[..HEAD_LEN].try_into().unwrap()).unwrap();
                s.read_exact(&mut buf[HEAD_LEN..f.stream_len]).await.unwrap();
                seen_tx.send(buf[..f.stream_len].to_vec()).unwrap();
                s.write_all(&buf[..f.stream_len]).await.unwrap();
            }
        });
        (port, seen)
    }

    #[tokio::test]
    async fn datagrams_cross_as_padded_messages_and_come_back_whole() {
        let (port, mut seen) = echo_server().await;
        let relay = StreamRelay::start(Target { host: "127.0.0.1".into(), port, tls: None }).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stun: Vec<u8> =
            [&[0x00, 0x01, 0x00, 0x04][..], &[0x21, 0x12, 0xa4, 0x42], &[7; 12], &[1, 2, 3, 4]].concat();
        let channel_data = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5];
        for msg in [&stun[..], &channel_data] {
            client.send_to(msg, relay.local).await.unwrap();
            let on_stream = seen.recv().await.unwrap();
            assert_eq!(&on_stream[..msg.len()], msg);
            assert_eq!(on_stream.len(), msg.len().next_multiple_of(4), "padded to 4 on the stream");
            let mut back = [0u8; 64];
            let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut back)).await.unwrap().unwrap();
            assert_eq!(&back[..n], msg, "the padding does not come back");
        }
        // Not TURN: dropped, and the stream goes on.
        client.send_to(&[0xc3, 0, 0, 0, 9], relay.local).await.unwrap();
        client.send_to(&channel_data, relay.local).await.unwrap();
        assert_eq!(&seen.recv().await.unwrap()[..9], &channel_data);
        assert!(relay.last_error().is_none());
    }

    #[tokio::test]
    async fn a_server_that_refuses_the_stream_is_remembered_for_status() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = unused.local_addr().unwrap().port();
        drop(unused);
        let relay = StreamRelay::start(Target { host: "127.0.0.1".into(), port, tls: None }).unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.send_to(&[0x40, 0, 0, 0], relay.local).await.unwrap();
        for _ in 0..50 {
            if relay.last_error().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let e = relay.last_error().expect("the refusal is kept");
        assert!(e.starts_with(&format!("127.0.0.1:{port} over tcp: connecting")), "{e}");
    }
}
