//! A rendezvous that misbehaves the way real networks and servers do: a TCP proxy in the
//! underlay's namespace, in front of the real rendezvous, that ends each member's encrypted
//! channel and opens its own to the rendezvous (as anyone on the path can: the channel hides
//! lines from listeners, it does not authenticate the rendezvous; the test gives the channel,
//! [`Channel`]), and in between cuts every line it forwards
//! into fragments at random places (as TCP may deliver them), or drops the first signal
//! between every two nodes (as a server with a full queue, or a member not yet joined, does),
//! or lies: hands each member the other members' keys swapped (as a hostile rendezvous would,
//! to put itself in the middle), or rewrites the signals it relays. It keeps what it relayed,
//! so a test can see what a rendezvous reads. Agents point `--rendezvous` at it instead of the
//! real one.

use std::{
    collections::HashSet,
    fs::File,
    io::{BufRead as _, BufReader, Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::Duration,
};

use crate::underlay::Underlay;

/// A reader and a writer of a channel's plaintext.
pub type Plain = (Box<dyn Read + Send>, Box<dyn Write + Send>);

/// How the proxy speaks the rendezvous's encrypted channel (the lab does not know it; the
/// tests give ipop's own).
pub trait Channel: Send + Sync + 'static {
    /// The rendezvous's side of a member's connection.
    fn accept(&self, s: TcpStream) -> std::io::Result<Plain>;
    /// A member's side of a connection to the rendezvous.
    fn connect(&self, s: TcpStream) -> std::io::Result<Plain>;
}

/// What the proxy does to the lines it forwards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// Write every line (both ways) in pieces of 1 to 24 bytes, a short pause between them.
    pub fragment: bool,
    /// Drop the first signal each node sends to each other node.
    pub drop_first_signal: bool,
    /// Announce every member with another member's key (the first other key seen joining).
    pub swap_keys: bool,
    /// Change one character of every signal a member sends (the last of its first string).
    pub tamper_signals: bool,
}

#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    dropped: AtomicU64,
    connections: AtomicU64,
    /// (from, to) pairs whose first signal is gone.
    seen: Mutex<HashSet<(String, String)>>,
    /// The keys members joined with, in order.
    keys: Mutex<Vec<String>>,
    /// Every signal members sent, as the rendezvous saw it (before any tampering).
    signals: Mutex<Vec<String>>,
    streams: Mutex<Vec<TcpStream>>,
}

pub struct SignalingProxy {
    /// Where agents connect: "<underlay>.254:<port>".
    pub addr: String,
    shared: Arc<Shared>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SignalingProxy {
    /// Listens on `port` at the underlay's server address and forwards to the rendezvous
    /// there, through `channel` on both sides, with `faults`.
    pub fn start(underlay: &Underlay, port: u16, faults: Faults, channel: Arc<dyn Channel>) -> SignalingProxy {
        let addr = format!("{}:{port}", underlay.addr);
        let upstream = underlay.rendezvous();
        let netns = File::open(format!("/run/netns/{}", underlay.ns)).expect("the underlay's namespace");
        let shared = Arc::new(Shared::default());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (s, listen) = (shared.clone(), addr.clone());
        let thread = thread::spawn(move || {
            // Sockets belong to the namespace of the thread that makes them; threads spawned
            // from here inherit it.
            assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            let listener = TcpListener::bind(&listen).expect("the proxy's port");
            listener.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            accept_loop(&listener, &upstream, faults, &s, &channel);
        });
        ready_rx.recv().expect("the proxy started");
        SignalingProxy { addr, shared, thread: Some(thread) }
    }

    /// Signals dropped so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The data of every signal members sent through the proxy, as JSON text.
    pub fn signals(&self) -> Vec<String> {
        self.shared.signals.lock().unwrap().clone()
    }

    /// Connections accepted so far (one per agent, unless agents reconnected).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl Drop for SignalingProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for s in self.shared.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, upstream: &str, faults: Faults, s: &Arc<Shared>, channel: &Arc<dyn Channel>) {
    while !s.stop.load(Ordering::Relaxed) {
        let Ok((client, _)) = listener.accept() else {
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        let Ok(server) = TcpStream::connect(upstream) else { continue };
        client.set_nonblocking(false).unwrap();
        s.connections.fetch_add(1, Ordering::Relaxed);
        for stream in [&client, &server] {
            stream.set_nodelay(true).unwrap();
            s.streams.lock().unwrap().push(stream.try_clone().unwrap());
        }
        let (s, channel) = (s.clone(), channel.clone());
        // Handshakes on a thread of their own: a member that never completes one blocks nobody.
        thread::spawn(move || {
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (Ok((c_read, c_write)), Ok((s_read, s_write))) = (channel.accept(client), channel.connect(server))
            else {
                return;
            };
            let s1 = s.clone();
            thread::spawn(move || pump(c_read, (s_write, s2), faults, &s1, true));
            pump(s_read, (c_write, c2), faults, &s, false);
        });
    }
}

/// Forwards lines from `from` to `to` (its writer, and its stream to shut down at the end).
/// Lines from a member are where signals can be dropped and keys learnt; lines to a member
/// are where keys can be swapped.
fn pump(
    from: Box<dyn Read + Send>,
    to: (Box<dyn Write + Send>, TcpStream),
    faults: Faults,
    s: &Shared,
    from_member: bool,
) {
    let (mut to, stream) = to;
    let mut rng = Xorshift::seeded();
    let mut node = String::new();
    for line in BufReader::new(from).split(b'\n') {
        let Ok(mut line) = line else { break };
        if from_member && faults.drop_first_signal && drop_signal(s, &mut node, &line) {
            continue;
        }
        if faults.swap_keys {
            line = if from_member { learn_key(s, line) } else { swap_keys(s, line) };
        }
        if from_member {
            line = keep_signal(s, line, faults.tamper_signals);
        }
        line.push(b'\n');
        let sent = if faults.fragment { write_fragmented(&mut to, &line, &mut rng) } else { to.write_all(&line) };
        if sent.is_err() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Learns the member's node id from its join; true for the first signal to each node.
fn drop_signal(s: &Shared, node: &mut String, line: &[u8]) -> bool {
    let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else { return false };
    if let Some(id) = msg["join"]["node_id"].as_str() {
        *node = id.to_owned();
    }
    let Some(to) = msg["signal"]["to"].as_str() else { return false };
    let first = s.seen.lock().unwrap().insert((node.clone(), to.to_owned()));
    if first {
        s.dropped.fetch_add(1, Ordering::Relaxed);
    }
    first
}

/// Notes the key a member joins with; the line goes on unchanged.
fn learn_key(s: &Shared, line: Vec<u8>) -> Vec<u8> {
    if let Ok(msg) = serde_json::from_slice::<serde_json::Value>(&line)
        && let Some(key) = msg["join"]["public_key"].as_str()
    {
        s.keys.lock().unwrap().push(key.to_owned());
    }
    line
}

/// Keeps a member's signal as it came, and with `tamper` changes it on the way.
fn keep_signal(s: &Shared, line: Vec<u8>, tamper: bool) -> Vec<u8> {
    let Ok(mut msg) = serde_json::from_slice::<serde_json::Value>(&line) else { return line };
    let Some(data) = msg.get_mut("signal").and_then(|m| m.get_mut("data")) else { return line };
    s.signals.lock().unwrap().push(data.to_string());
    if !tamper || !change_first_string(data) {
        return line;
    }
    serde_json::to_vec(&msg).unwrap()
}

/// Changes the last character of the first string in `v` (depth first); false if it has none.
fn change_first_string(v: &mut serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(text) => {
            let last = if text.ends_with('0') { '1' } else { '0' };
            text.pop();
            text.push(last);
            true
        }
        serde_json::Value::Array(items) => items.iter_mut().any(change_first_string),
        serde_json::Value::Object(fields) => fields.values_mut().any(change_first_string),
        _ => false,
    }
}

/// Every member announced in a welcome or a join gets another member's key.
fn swap_keys(s: &Shared, line: Vec<u8>) -> Vec<u8> {
    let Ok(mut msg) = serde_json::from_slice::<serde_json::Value>(&line) else { return line };
    let keys = s.keys.lock().unwrap().clone();
    let swap = |m: &mut serde_json::Value| {
        let own = m["public_key"].as_str().unwrap_or_default().to_owned();
        if let Some(other) = keys.iter().find(|k| **k != own) {
            m["public_key"] = other.clone().into();
        }
    };
    if let Some(members) = msg["welcome"]["members"].as_array_mut() {
        members.iter_mut().for_each(swap);
    } else if msg.get("joined").is_some() {
        swap(&mut msg["joined"]);
    } else {
        return line;
    }
    serde_json::to_vec(&msg).unwrap()
}

/// Writes `line` in pieces (each its own message of the channel, so lines cross in pieces).
fn write_fragmented(to: &mut dyn Write, line: &[u8], rng: &mut Xorshift) -> std::io::Result<()> {
    let mut rest = line;
    while !rest.is_empty() {
        let n = (rng.next() % 24 + 1).min(rest.len() as u64) as usize;
        to.write_all(&rest[..n])?;
        rest = &rest[n..];
        thread::sleep(Duration::from_micros(300));
    }
    Ok(())
}

struct Xorshift(u64);

impl Xorshift {
    fn seeded() -> Xorshift {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Xorshift(t.as_nanos() as u64 | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
