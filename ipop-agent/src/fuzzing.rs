//! The properties the fuzz targets check, one function per target: the cargo-fuzz harness
//! (fuzz/) calls them on generated inputs, and `tests/fuzz_regressions.rs` replays every
//! input kept under fuzz/regressions/<target>/ (crashes found become regression tests).
//! Each panics when its property breaks.

use std::sync::{Mutex, OnceLock};

use ipop_common::arp::{ArpFrame, build};

use crate::{
    config::Settings,
    core::{
        chunk::{MAX_WHOLE, Reassembly},
        node_id::check_node_id,
        rpc::{self, Incoming},
        turn_frame::{self, HEAD_LEN},
        vnet::{VNET_HDR_LEN, vnet_hdr_ok},
        wire::{Datagram, Inner},
    },
    link::{
        envelope,
        session::{self, Identity, Opener, Sealer},
    },
    signaling::{
        admission::{Secret, secret_proof},
        channel,
        rendezvous::{ClientMsg, ServerMsg},
    },
};

/// A property: panics if `data` breaks it.
pub type Check = fn(&[u8]);

/// Every target, by name (the fuzz crate's target names).
pub const TARGETS: [(&str, Check); 10] = [
    ("arp_frame", arp_frame),
    ("link_datagram", link_datagram),
    ("json_rpc", json_rpc),
    ("config", config),
    ("rendezvous", rendezvous),
    ("chunks", chunks),
    ("turn_stream", turn_stream),
    ("rendezvous_channel", rendezvous_channel),
    ("signal_envelope", signal_envelope),
    ("xmpp_stanza", xmpp_stanza),
];

/// ARP frame parsing never panics; whatever parses rebuilds to the same fields.
pub fn arp_frame(data: &[u8]) {
    if let Ok(frame) = ArpFrame::parse(data) {
        let arp = frame.arp();
        let rebuilt = build(frame.eth_dst(), frame.eth_src(), &arp);
        assert_eq!(ArpFrame::parse(&rebuilt).unwrap().arp(), arp);
        let _ = (arp.is_probe(), arp.is_gratuitous(), arp.reply_from([2, 0, 0, 0, 0, 1]));
    }
}

fn pair() -> &'static Mutex<(Sealer, Opener)> {
    static PAIR: OnceLock<Mutex<(Sealer, Opener)>> = OnceLock::new();
    PAIR.get_or_init(|| {
        let (a, b) = (Identity::generate(), Identity::generate());
        let psk = session::overlay_psk("fuzz", b"fuzz secret");
        let (init, m1) = session::initiate(&a, &b.public, &psk, 1, session::Aead::ChaChaPoly).unwrap();
        let (sb, m2, _) = session::respond(&b, &a.public, &psk, &m1[1..], None, session::Aead::ChaChaPoly).unwrap();
        let sa = init.finish(&m2[1..]).unwrap();
        let (sealer, _) = sa.split();
        let (_, opener) = sb.split();
        Mutex::new((sealer, opener))
    })
}

/// Link datagrams, before and after decryption: parsing never panics, nothing forged
/// authenticates, and what a member seals opens to the same bytes exactly once.
pub fn link_datagram(data: &[u8]) {
    let (sealer, opener) = &mut *pair().lock().unwrap_or_else(|e| e.into_inner());
    let mut out = Vec::new();
    if let Ok(Datagram::Transport { counter, sealed } | Datagram::Indexed { counter, sealed, .. }) =
        Datagram::parse(data)
    {
        assert!(opener.open(counter, sealed, &mut out).is_err(), "a forged datagram authenticated");
    }
    let mut dg = Vec::new();
    if sealer.seal(Inner::Rpc, data, &mut dg).is_ok() {
        let Ok(Datagram::Transport { counter, sealed }) = Datagram::parse(&dg) else {
            panic!("sealed datagram does not parse")
        };
        assert_eq!(opener.open(counter, sealed, &mut out), Ok(Inner::Rpc));
        assert_eq!(out, data);
        assert!(opener.open(counter, sealed, &mut out).is_err(), "replay accepted");
    }
    // The same through the data socket's indexed form, the payload split in two parts.
    dg.clear();
    let (head, tail) = data.split_at(data.len() / 2);
    if sealer.seal_indexed(9, Inner::Ethernet, &[head, tail], &mut dg).is_ok() {
        let Ok(Datagram::Indexed { index: 9, counter, sealed }) = Datagram::parse(&dg) else {
            panic!("sealed indexed datagram does not parse")
        };
        assert_eq!(opener.open(counter, sealed, &mut out), Ok(Inner::Ethernet));
        assert_eq!(out, data);
    }
}

/// The JSON-RPC decoder never panics; accepted methods re-encode to the same method; every
/// refusal that owes an answer has a valid JSON-RPC error answer.
pub fn json_rpc(data: &[u8]) {
    match rpc::decode(data) {
        Ok(Incoming::Notification(m)) | Ok(Incoming::Call { method: m, .. }) => {
            assert_eq!(rpc::decode(&rpc::encode(&m)).unwrap(), Incoming::Notification(m));
        }
        Ok(Incoming::Response { .. }) => {}
        // What was taken is sent on again as a summary that decodes.
        Ok(Incoming::Summary(s)) => assert!(matches!(rpc::decode(&rpc::encode_summary(s)), Ok(Incoming::Summary(_)))),
        Err(rejection) => {
            if let Some(answer) = rejection.answer {
                let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
                assert_eq!(v["error"]["code"], serde_json::json!(rejection.code));
            }
        }
    }
}

/// The config parser and validation never panic, whatever the text.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(settings) = Settings::from_json(text)
    {
        let _ = settings.resolve();
    }
}

/// The rendezvous protocol's messages, as the server and the client read them: never
/// panics; whatever parses serialises back to the same message.
pub fn rendezvous(data: &[u8]) {
    if let Ok(msg) = serde_json::from_slice::<ClientMsg>(data) {
        let again: ClientMsg = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
        assert_eq!(again, msg);
        if let ClientMsg::Join { overlay, node_id, public_key, .. } = &msg {
            static SECRET: OnceLock<Secret> = OnceLock::new();
            let secret = SECRET.get_or_init(|| Secret::stretch("fuzz", "fuzz secret"));
            let _ = (check_node_id(node_id), secret_proof(secret, "nonce", overlay, node_id, public_key));
        }
    }
    if let Ok(msg) = serde_json::from_slice::<ServerMsg>(data) {
        let again: ServerMsg = serde_json::from_str(&serde_json::to_string(&msg).unwrap()).unwrap();
        assert_eq!(again, msg);
    }
}

/// Frame chunks from a peer (the input as length-prefixed chunks): reassembly never panics
/// and never grows past the largest frame.
pub fn chunks(data: &[u8]) {
    let mut r = Reassembly::default();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (chunk, more) = tail.split_at((len as usize).min(tail.len()));
        if let Ok(Some(whole)) = r.push(chunk) {
            assert!(whole.len() <= MAX_WHOLE);
            if let Some((hdr, frame)) = whole.split_first_chunk::<VNET_HDR_LEN>() {
                let _ = vnet_hdr_ok(hdr, frame.len());
            }
        }
        rest = more;
    }
}

/// A TURN server's stream, cut into messages as the stream relay cuts it: never panics; every
/// message is at least its header, padded by at most 3 bytes; a datagram's message is a
/// prefix of it, no longer than it.
pub fn turn_stream(data: &[u8]) {
    let mut rest = data;
    while let Some(head) = rest.first_chunk::<HEAD_LEN>() {
        let Ok(f) = turn_frame::frame(*head) else { break };
        assert!(f.len >= HEAD_LEN && f.len <= f.stream_len && f.stream_len - f.len <= 3, "{f:?}");
        assert!(f.stream_len <= turn_frame::MAX_STREAM_LEN, "{f:?} overflows the stream relay's buffer");
        let Some(next) = rest.get(f.stream_len..) else { break };
        rest = next;
    }
    if let Ok((msg, f)) = turn_frame::in_datagram(data) {
        assert!(msg.len() == f.len && data.starts_with(msg));
    }
}

/// What a client sends to the rendezvous, as frames (length, body): the server's side of the
/// channel's handshake never panics on the first, and no later frame made without the
/// channel's keys opens.
pub fn rendezvous_channel(data: &[u8]) {
    let mut frames = 0;
    let mut rest = data;
    let mut opener = None;
    while let Some((len, more)) = rest.split_first_chunk::<2>() {
        let Some(body) = more.get(..u16::from_be_bytes(*len) as usize) else { break };
        rest = &more[body.len()..];
        frames += 1;
        match opener.as_mut() {
            None => match channel::Handshake::server(body) {
                Ok((_, _, o)) => opener = Some(o),
                Err(_) => break,
            },
            Some(o) => assert!(o.open(body).is_err(), "frame {frames} opened without the channel's keys"),
        }
    }
}

/// A signal as the signaling service hands it over: opening it never panics, and nothing made
/// without the sender's key opens.
pub fn signal_envelope(data: &[u8]) {
    static KEYS: OnceLock<(Identity, Identity)> = OnceLock::new();
    let (me, them) = KEYS.get_or_init(|| (Identity::generate(), Identity::generate()));
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let opened = envelope::open(me, &them.public, ("a", "b"), &v, &mut 0);
        assert!(opened.is_err(), "a signal opened without the sender's key");
    }
}

/// A stanza as an XMPP server passes it on, read by a room this agent has just asked to join:
/// never panics, and no message is a signal (no one is an occupant yet).
pub fn xmpp_stanza(data: &[u8]) {
    use tokio_xmpp::{
        minidom::Element,
        parsers::{message::Message, presence::Presence},
    };

    use crate::signaling::{
        Member,
        muc::{Heard, Room},
    };
    let Some(element) = std::str::from_utf8(data).ok().and_then(|t| t.parse::<Element>().ok()) else { return };
    let me = Member { node_id: "h0".into(), public_key: "ab".repeat(32), certificate: None };
    let mut room = Room::new("lab@conference.xmpp.test".parse().expect("a room JID"), me);
    room.join();
    if let Ok(p) = Presence::try_from(element.clone()) {
        let _ = room.presence(&p);
    }
    if let Ok(m) = Message::try_from(element) {
        assert!(!matches!(room.message(&m), Heard::Event(_)), "a signal from no occupant");
    }
}
