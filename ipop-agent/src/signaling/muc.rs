//! An overlay as an XMPP multi-user chat room, sans IO: the stanzas an agent sends (its join,
//! its signals) and what the stanzas it receives mean (`SignalEvent`s, or a refusal).
//!
//! - A member's presence in the room carries `<ipop xmlns='urn:ipop:0'>` with its node id,
//!   its Noise key and (with a CA) its certificate; its nick is its node id, which the room
//!   keeps unique. The room's member list is the access list: the server refuses anyone else,
//!   and an occupant without the member (or admin, owner) affiliation is ignored here too.
//! - The occupants' presences that precede this agent's own (status 110) are the member list;
//!   later ones are joins, and `unavailable` ones departures.
//! - Signals are private messages to `room/nick`: the room stamps the sender's nick, so one
//!   occupant cannot send as another; only occupants' signals are taken.
//!
//! Everything else (another room, a nick that is not the node id it announces, a malformed
//! payload) changes nothing and is returned as a refusal to count.

use std::collections::BTreeMap;

use serde_json::Value;
use tokio_xmpp::{
    jid::{BareJid, FullJid, Jid},
    minidom::Element,
    parsers::{
        message::{Message, MessageType},
        muc::Muc,
        ns,
        presence::{Presence, Type as PresenceType},
        stanza_error::{DefinedCondition, StanzaError},
    },
};

use crate::{
    core::{digest::unhex, node_id::check_node_id},
    signaling::{rendezvous::Member, service::SignalEvent},
};

/// ipop's namespace in presences and messages.
pub const NS: &str = "urn:ipop:0";
/// The longest signal taken (as the rendezvous takes).
const MAX_SIGNAL: usize = 64 * 1024;

/// What a received stanza means.
#[derive(Debug, Clone, PartialEq)]
pub enum Heard {
    Event(SignalEvent),
    /// The room will not have this agent (not a member, banned, its node id taken): fatal.
    Refused(String),
    /// This agent is out of the room (kicked, the room gone): join again.
    Out(String),
    /// Ignored, and why (counted).
    Ignored(String),
    Nothing,
}

/// The room, as this agent sees it.
pub struct Room {
    jid: BareJid,
    me: Member,
    /// Occupants by nick (their node id), self excluded.
    occupants: BTreeMap<String, Member>,
    /// This agent's own presence has come back: the member list is complete.
    joined: bool,
}

impl Room {
    pub fn new(jid: BareJid, me: Member) -> Room {
        Room { jid, me, occupants: BTreeMap::new(), joined: false }
    }

    /// This agent's occupant JID: the room with its node id as nick.
    fn my_nick(&self) -> FullJid {
        self.jid.with_resource_str(&self.me.node_id).expect("node ids are valid resources")
    }

    /// The presence that joins the room (again: the occupants are forgotten until it is back).
    pub fn join(&mut self) -> Presence {
        self.occupants.clear();
        self.joined = false;
        let mut p = Presence::available().with_to(self.my_nick()).with_payload(Muc::new());
        p.payloads.push(announce(&self.me));
        p
    }

    /// A signal for the member `to`, as a private message through the room.
    pub fn signal(&self, to: &str, data: &Value) -> Option<Message> {
        let to = self.jid.with_resource_str(to).ok()?;
        let mut m = Message::chat(Some(Jid::from(to)));
        m.payloads.push(Element::builder("signal", NS).append(data.to_string()).build());
        Some(m)
    }

    /// What a presence means.
    pub fn presence(&mut self, p: &Presence) -> Heard {
        let Some(nick) = self.nick_in_room(p.from.as_ref()) else {
            return Heard::Ignored("a presence from outside the room".into());
        };
        let mine = nick == self.me.node_id;
        match p.type_ {
            PresenceType::Error if mine => refusal(&self.jid, &self.me.node_id, p),
            PresenceType::Unavailable if mine => Heard::Out(format!("out of room {}", self.jid)),
            PresenceType::Unavailable => match self.occupants.remove(&nick) {
                Some(_) if self.joined => Heard::Event(SignalEvent::Left(nick)),
                _ => Heard::Nothing,
            },
            PresenceType::None if mine => self.self_presence(p),
            PresenceType::None => self.occupant(nick, p),
            _ => Heard::Nothing,
        }
    }

    /// Our own presence back: with status 110 the member list is complete.
    fn self_presence(&mut self, p: &Presence) -> Heard {
        if self.joined || !muc_user(p).is_some_and(|(statuses, _)| statuses.contains(&110)) {
            return Heard::Nothing;
        }
        self.joined = true;
        Heard::Event(SignalEvent::Members(self.occupants.values().cloned().collect()))
    }

    /// Another occupant's presence: a member (before our own presence) or a join.
    fn occupant(&mut self, nick: String, p: &Presence) -> Heard {
        let member = match member_of(&nick, p) {
            Ok(m) => m,
            Err(why) => return Heard::Ignored(format!("occupant {nick}: {why}")),
        };
        if self.occupants.get(&nick) == Some(&member) {
            return Heard::Nothing;
        }
        self.occupants.insert(nick, member.clone());
        if self.joined { Heard::Event(SignalEvent::Joined(member)) } else { Heard::Nothing }
    }

    /// What a message means: a signal from an occupant, or nothing.
    pub fn message(&self, m: &Message) -> Heard {
        if m.type_ != MessageType::Chat {
            return Heard::Nothing; // the room's subject, history, errors for signals to one gone
        }
        let Some(signal) = m.payloads.iter().find(|e| e.is("signal", NS)) else { return Heard::Nothing };
        let Some(from) = self.nick_in_room(m.from.as_ref()) else {
            return Heard::Ignored("a signal from outside the room".into());
        };
        if !self.occupants.contains_key(&from) {
            return Heard::Ignored(format!("a signal from {from}, not a member in the room"));
        }
        let text = signal.text();
        if text.len() > MAX_SIGNAL {
            return Heard::Ignored(format!("a signal from {from} over {MAX_SIGNAL} bytes"));
        }
        match serde_json::from_str(&text) {
            Ok(data) => Heard::Event(SignalEvent::Signal { from, data }),
            Err(e) => Heard::Ignored(format!("a signal from {from} that is not JSON: {e}")),
        }
    }

    /// The nick of a stanza from this room's occupant `room/nick`.
    fn nick_in_room(&self, from: Option<&Jid>) -> Option<String> {
        let from = from?;
        (from.to_bare() == self.jid).then(|| from.resource().map(|r| r.as_str().to_owned()))?
    }
}

/// This agent's announcement in its presence.
fn announce(me: &Member) -> Element {
    let field = |name: &str, text: &str| Element::builder(name, NS).append(text).build();
    let mut e =
        Element::builder("ipop", NS).append(field("node", &me.node_id)).append(field("key", &me.public_key)).build();
    if let Some(cert) = &me.certificate {
        e.append_child(field("certificate", cert));
    }
    e
}

/// The member an occupant's presence announces, if it is one: a member (or admin, owner) of
/// the room, announcing the node id that is its nick and a key.
fn member_of(nick: &str, p: &Presence) -> Result<Member, String> {
    let affiliation = muc_user(p).and_then(|(_, a)| a);
    if !matches!(affiliation.as_deref(), Some("member" | "admin" | "owner")) {
        return Err(format!("not a member of the room (affiliation {})", affiliation.as_deref().unwrap_or("none")));
    }
    let ipop = p.payloads.iter().find(|e| e.is("ipop", NS)).ok_or("no ipop announcement")?;
    let text = |name: &str| ipop.get_child(name, NS).map(|e| e.text());
    let node_id = text("node").ok_or("no node id")?;
    check_node_id(&node_id)?;
    if node_id != nick {
        return Err(format!("announces node id {node_id}, not its nick"));
    }
    let public_key = text("key").filter(|k| unhex::<32>(k).is_some()).ok_or("no key of 32 bytes of hex")?;
    let certificate = text("certificate").filter(|c| c.len() <= MAX_SIGNAL);
    Ok(Member { node_id, public_key, certificate })
}

/// The MUC user part of a presence: its status codes and the occupant's affiliation. Read by
/// hand: a typed parse fails on status codes it does not know.
fn muc_user(p: &Presence) -> Option<(Vec<u16>, Option<String>)> {
    let x = p.payloads.iter().find(|e| e.is("x", ns::MUC_USER))?;
    let statuses = x.children().filter(|c| c.name() == "status").filter_map(|c| c.attr("code")?.parse().ok());
    let affiliation = x.get_child("item", ns::MUC_USER).and_then(|i| i.attr("affiliation")).map(str::to_owned);
    Some((statuses.collect(), affiliation))
}

/// The room's error answer to our join, in words: fatal where only an operator can change it.
fn refusal(room: &BareJid, nick: &str, p: &Presence) -> Heard {
    let error = p.payloads.iter().find_map(|e| StanzaError::try_from(e.clone()).ok());
    let text = error.as_ref().and_then(|e| e.texts.values().next().cloned()).unwrap_or_default();
    let said = if text.is_empty() { String::new() } else { format!(" ({text})") };
    match error.map(|e| e.defined_condition) {
        Some(DefinedCondition::RegistrationRequired) => {
            Heard::Refused(format!("not a member of room {room}: ask its owner to add this JID{said}"))
        }
        Some(DefinedCondition::Forbidden) => Heard::Refused(format!("banned from room {room}{said}")),
        Some(DefinedCondition::Conflict) => {
            Heard::Refused(format!("node id {nick} is taken in room {room} by another account{said}"))
        }
        Some(DefinedCondition::NotAuthorized) => Heard::Refused(format!("room {room} wants a password{said}")),
        Some(other) => Heard::Out(format!("room {room} refused the join: {other:?}{said}")),
        None => Heard::Out(format!("room {room} refused the join{said}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member { node_id: id.into(), public_key: "ab".repeat(32), certificate: None }
    }

    fn room() -> Room {
        Room::new("lab@conference.xmpp.test".parse().unwrap(), member("h0"))
    }

    /// A presence from `nick` in the room: `affiliation`, status codes, and what it announces.
    fn presence(nick: &str, affiliation: &str, codes: &[u16], announced: Option<&Member>) -> Presence {
        let mut x = Element::builder("x", ns::MUC_USER)
            .append(Element::builder("item", ns::MUC_USER).attr("affiliation".try_into().unwrap(), affiliation).build())
            .build();
        for c in codes {
            x.append_child(
                Element::builder("status", ns::MUC_USER).attr("code".try_into().unwrap(), c.to_string()).build(),
            );
        }
        let from: Jid = format!("lab@conference.xmpp.test/{nick}").parse().unwrap();
        let mut p = Presence::available().with_from(from);
        p.payloads.push(x);
        p.payloads.extend(announced.map(announce));
        p
    }

    fn signal_from(nick: &str, body: &str) -> Message {
        let mut m = Message::chat(None);
        m.from = Some(format!("lab@conference.xmpp.test/{nick}").parse().unwrap());
        m.payloads.push(Element::builder("signal", NS).append(body).build());
        m
    }

    #[test]
    fn occupants_before_our_own_presence_are_the_members_then_joins_and_leaves_follow() {
        let mut r = room();
        let join = r.join();
        assert_eq!(join.to.unwrap().to_string(), "lab@conference.xmpp.test/h0");
        assert!(join.payloads.iter().any(|e| e.is("ipop", NS)));
        assert_eq!(r.presence(&presence("h1", "member", &[], Some(&member("h1")))), Heard::Nothing);
        let mine = presence("h0", "member", &[110], Some(&member("h0")));
        assert_eq!(r.presence(&mine), Heard::Event(SignalEvent::Members(vec![member("h1")])));
        assert_eq!(r.presence(&mine), Heard::Nothing, "said once");
        let h2 = presence("h2", "admin", &[], Some(&member("h2")));
        assert_eq!(r.presence(&h2), Heard::Event(SignalEvent::Joined(member("h2"))));
        assert_eq!(r.presence(&h2), Heard::Nothing, "the same presence again");
        let mut gone = Presence::unavailable().with_from(h2.from.clone().unwrap());
        gone.payloads.push(Element::builder("x", ns::MUC_USER).build());
        assert_eq!(r.presence(&gone), Heard::Event(SignalEvent::Left("h2".into())));
    }

    #[test]
    fn what_is_not_a_member_announcing_itself_changes_nothing() {
        let mut r = room();
        r.join();
        r.presence(&presence("h0", "member", &[110], Some(&member("h0"))));
        let outsider = presence("h9", "none", &[], Some(&member("h9")));
        assert!(matches!(r.presence(&outsider), Heard::Ignored(w) if w.contains("not a member")));
        let liar = presence("h3", "member", &[], Some(&member("h4")));
        assert!(matches!(r.presence(&liar), Heard::Ignored(w) if w.contains("not its nick")));
        let silent = presence("h5", "member", &[], None);
        assert!(matches!(r.presence(&silent), Heard::Ignored(w) if w.contains("no ipop")));
        let mut bad_key = member("h6");
        bad_key.public_key = "zz".into();
        assert!(matches!(r.presence(&presence("h6", "member", &[], Some(&bad_key))), Heard::Ignored(_)));
        let mut elsewhere = presence("h7", "member", &[], Some(&member("h7")));
        elsewhere.from = Some("other@conference.xmpp.test/h7".parse().unwrap());
        assert!(matches!(r.presence(&elsewhere), Heard::Ignored(w) if w.contains("outside")));
        // None of them may signal.
        for nick in ["h9", "h3", "h5", "h7"] {
            assert!(matches!(r.message(&signal_from(nick, "{}")), Heard::Ignored(_)), "{nick}");
        }
    }

    #[test]
    fn signals_go_to_a_nick_and_come_from_members_only() {
        let mut r = room();
        r.join();
        r.presence(&presence("h1", "member", &[], Some(&member("h1"))));
        r.presence(&presence("h0", "member", &[110], Some(&member("h0"))));
        let out = r.signal("h1", &serde_json::json!({"sealed": "00"})).unwrap();
        assert_eq!(out.to.unwrap().to_string(), "lab@conference.xmpp.test/h1");
        assert_eq!(out.type_, MessageType::Chat);
        let heard = r.message(&signal_from("h1", r#"{"sealed":"00"}"#));
        assert_eq!(
            heard,
            Heard::Event(SignalEvent::Signal { from: "h1".into(), data: serde_json::json!({"sealed": "00"}) })
        );
        assert!(matches!(r.message(&signal_from("h1", "not json")), Heard::Ignored(w) if w.contains("not JSON")));
        let long = format!("\"{}\"", "x".repeat(MAX_SIGNAL));
        assert!(matches!(r.message(&signal_from("h1", &long)), Heard::Ignored(w) if w.contains("bytes")));
        let mut groupchat = signal_from("h1", "{}");
        groupchat.type_ = MessageType::Groupchat;
        assert_eq!(r.message(&groupchat), Heard::Nothing);
    }

    #[test]
    fn a_refused_join_says_why() {
        let mut r = room();
        r.join();
        let refused = |condition: DefinedCondition| {
            let mut p = Presence::error().with_from("lab@conference.xmpp.test/h0".parse::<Jid>().unwrap());
            let e = StanzaError::new(tokio_xmpp::parsers::stanza_error::ErrorType::Auth, condition, "en", "nope");
            p.payloads.push(e.into());
            p
        };
        let mut r2 = room();
        assert!(
            matches!(r2.presence(&refused(DefinedCondition::RegistrationRequired)), Heard::Refused(w) if w.contains("not a member of room lab@conference.xmpp.test") && w.contains("nope"))
        );
        assert!(
            matches!(r.presence(&refused(DefinedCondition::Conflict)), Heard::Refused(w) if w.contains("node id h0 is taken"))
        );
        assert!(matches!(r.presence(&refused(DefinedCondition::ServiceUnavailable)), Heard::Out(_)));
        let kicked = Presence::unavailable().with_from("lab@conference.xmpp.test/h0".parse::<Jid>().unwrap());
        assert!(matches!(r.presence(&kicked), Heard::Out(_)));
    }
}
