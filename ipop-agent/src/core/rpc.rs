//! JSON-RPC 2.0 between agents (docs/protocol.md): the methods, their typed parameters, and
//! a decoder that validates everything a peer sends. Pure.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::core::{
    addr::{Mac, parse_host_addr, parse_host_ip, parse_host_ip6, parse_host_mac, parse_ip6},
    topology::Summary,
};

/// Largest message accepted or sent.
pub const MAX_MESSAGE: usize = 4096;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;

/// `arp_request`: a host on the sender's bridge asks who has `target_ip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpRequest {
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// `arp_reply`: `sender_ip` is at `sender_mac` (an answer to `target`, or an announcement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpReply {
    pub sender_mac: Mac,
    pub sender_ip: Ipv4Addr,
    pub target_mac: Mac,
    pub target_ip: Ipv4Addr,
}

/// `host_announce`: `ip` is at `mac` on the sender's bridge. Sent when the sender learns a
/// local host, and for every local host to a peer whose link comes up, so that the first ARP
/// for it anywhere is answered in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostAnnounce {
    pub mac: Mac,
    pub ip: IpAddr,
}

/// `nd_solicit`: a host on the sender's bridge solicits `target_ip` (IPv6). From `::` it is
/// duplicate address detection: the host wants `target_ip` and asks whether anyone has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdSolicit {
    pub sender_mac: Mac,
    pub sender_ip: Ipv6Addr,
    pub target_ip: Ipv6Addr,
}

/// `nd_advert`: `ip` is at `mac` (IPv6), said to `dst_ip` at `dst_mac` (a solicitor, or
/// all nodes), with the advertisement's router, solicited and override flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NdAdvert {
    pub mac: Mac,
    pub ip: Ipv6Addr,
    pub dst_mac: Mac,
    pub dst_ip: Ipv6Addr,
    /// `ipop_common::nd::FLAG_*`.
    pub flags: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ArpRequest(ArpRequest),
    ArpReply(ArpReply),
    HostAnnounce(HostAnnounce),
    NdSolicit(NdSolicit),
    NdAdvert(NdAdvert),
}

/// A message from a peer that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// No id: nothing is sent back.
    Notification(Method),
    /// With an id: answered with a result (`encode_result`).
    Call { id: Value, method: Method },
    /// An answer to something we sent (we only send notifications, so it is only logged).
    Response { id: Value, error: Option<(i64, String)> },
    /// `link_summary`, a notification: what the peer says of its links and hosts, for the
    /// topology page.
    Summary(Summary),
}

/// A message refused; `answer` holds the error response to send back when one is due.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub code: i64,
    pub message: String,
    pub answer: Option<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope {
    jsonrpc: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    params: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    id: Option<Value>,
    #[serde(default, deserialize_with = "present")]
    result: Option<Value>,
    #[serde(default)]
    error: Option<ErrorObject>,
}

/// Distinguishes a present `null` (`"id": null`, `"result": null`) from an absent key.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct ErrorObject {
    code: i64,
    message: String,
    #[serde(default)]
    #[allow(dead_code)]
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArpRequestParams {
    sender_mac: String,
    sender_ip: String,
    target_ip: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ArpReplyParams {
    sender_mac: String,
    sender_ip: String,
    target_mac: String,
    target_ip: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostAnnounceParams {
    mac: String,
    ip: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NdSolicitParams {
    sender_mac: String,
    sender_ip: String,
    target_ip: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NdAdvertParams {
    mac: String,
    ip: String,
    dst_mac: String,
    dst_ip: String,
    router: bool,
    solicited: bool,
    #[serde(rename = "override")]
    overrides: bool,
}

impl NdSolicitParams {
    fn check(self) -> Result<NdSolicit, String> {
        let sender_ip = parse_ip6(&self.sender_ip)?;
        if sender_ip.is_multicast() || sender_ip.is_loopback() {
            return Err(format!("{sender_ip} cannot solicit (multicast or loopback)"));
        }
        Ok(NdSolicit {
            sender_mac: parse_host_mac(&self.sender_mac)?,
            sender_ip,
            target_ip: parse_host_ip6(&self.target_ip)?,
        })
    }
}

impl NdAdvertParams {
    fn check(self) -> Result<NdAdvert, String> {
        use ipop_common::nd::{FLAG_OVERRIDE, FLAG_ROUTER, FLAG_SOLICITED};
        let dst_ip = parse_ip6(&self.dst_ip)?;
        let dst_mac: Mac = self.dst_mac.parse()?;
        if dst_ip.is_unspecified() || dst_mac.is_zero() || dst_ip.is_multicast() != dst_mac.is_multicast() {
            return Err(format!("{dst_ip} at {dst_mac} is no destination of an advertisement"));
        }
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        Ok(NdAdvert {
            mac: parse_host_mac(&self.mac)?,
            ip: parse_host_ip6(&self.ip)?,
            dst_mac,
            dst_ip,
            flags: flag(self.router, FLAG_ROUTER)
                | flag(self.solicited, FLAG_SOLICITED)
                | flag(self.overrides, FLAG_OVERRIDE),
        })
    }
}

fn reject(code: i64, message: impl Into<String>, id: Option<&Value>) -> Rejection {
    let message = message.into();
    Rejection { code, answer: id.map(|id| encode_error(id, code, &message)), message }
}

/// Validates and decodes one message.
pub fn decode(bytes: &[u8]) -> Result<Incoming, Rejection> {
    let null = Value::Null;
    if bytes.len() > MAX_MESSAGE {
        return Err(reject(
            INVALID_REQUEST,
            format!("message of {} bytes exceeds {MAX_MESSAGE}", bytes.len()),
            Some(&null),
        ));
    }
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| reject(PARSE_ERROR, format!("parse error: {e}"), Some(&null)))?;
    let env: Envelope = serde_json::from_value(value)
        .map_err(|e| reject(INVALID_REQUEST, format!("invalid request: {e}"), Some(&null)))?;
    if env.jsonrpc != "2.0" {
        return Err(reject(INVALID_REQUEST, "jsonrpc must be \"2.0\"", Some(env.id.as_ref().unwrap_or(&null))));
    }
    if let Some(id) = &env.id
        && !(id.is_null() || id.is_string() || id.is_i64() || id.is_u64())
    {
        return Err(reject(INVALID_REQUEST, "id must be a string, an integer or null", Some(&null)));
    }
    let Some(method) = env.method else {
        // A response: exactly one of result and error, and an id.
        let id = env.id.ok_or_else(|| reject(INVALID_REQUEST, "neither a method nor an id", Some(&null)))?;
        return match (env.result, env.error) {
            (Some(_), None) => Ok(Incoming::Response { id, error: None }),
            (None, Some(e)) => Ok(Incoming::Response { id, error: Some((e.code, e.message)) }),
            _ => Err(reject(INVALID_REQUEST, "a response has exactly one of result and error", None)),
        };
    };
    if env.result.is_some() || env.error.is_some() {
        return Err(reject(INVALID_REQUEST, "a request has no result or error", env.id.as_ref()));
    }
    let id = env.id.as_ref();
    let params = env.params.unwrap_or(Value::Null);
    let bad = |e: String| reject(INVALID_PARAMS, format!("invalid params for {method}: {e}"), id);
    let parsed = match method.as_str() {
        "link_summary" if id.is_some() => return Err(reject(INVALID_REQUEST, "link_summary is a notification", id)),
        "link_summary" => return Summary::from_params(params).map(Incoming::Summary).map_err(bad),
        "arp_request" => {
            let p: ArpRequestParams = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
            Method::ArpRequest(ArpRequest {
                sender_mac: parse_host_mac(&p.sender_mac).map_err(bad)?,
                sender_ip: parse_host_ip(&p.sender_ip).map_err(bad)?,
                target_ip: parse_host_ip(&p.target_ip).map_err(bad)?,
            })
        }
        "host_announce" => {
            let p: HostAnnounceParams = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
            Method::HostAnnounce(HostAnnounce {
                mac: parse_host_mac(&p.mac).map_err(bad)?,
                ip: parse_host_addr(&p.ip).map_err(bad)?,
            })
        }
        "nd_solicit" => {
            let p: NdSolicitParams = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
            Method::NdSolicit(p.check().map_err(bad)?)
        }
        "nd_advert" => {
            let p: NdAdvertParams = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
            Method::NdAdvert(p.check().map_err(bad)?)
        }
        "arp_reply" => {
            let p: ArpReplyParams = serde_json::from_value(params).map_err(|e| bad(e.to_string()))?;
            Method::ArpReply(ArpReply {
                sender_mac: parse_host_mac(&p.sender_mac).map_err(bad)?,
                sender_ip: parse_host_ip(&p.sender_ip).map_err(bad)?,
                target_mac: p.target_mac.parse().map_err(bad)?,
                target_ip: parse_host_ip(&p.target_ip).map_err(bad)?,
            })
        }
        other => {
            return Err(reject(METHOD_NOT_FOUND, format!("method not found: {other:.64}"), id));
        }
    };
    Ok(match env.id {
        Some(id) => Incoming::Call { id, method: parsed },
        None => Incoming::Notification(parsed),
    })
}

/// The notification carrying `method` (agents send ARP and announcements as notifications: no
/// answer is due).
pub fn encode(method: &Method) -> Vec<u8> {
    let (name, params) = match method {
        Method::ArpRequest(r) => (
            "arp_request",
            json!({"sender_mac": r.sender_mac.to_string(), "sender_ip": r.sender_ip.to_string(), "target_ip": r.target_ip.to_string()}),
        ),
        Method::ArpReply(r) => (
            "arp_reply",
            json!({
                "sender_mac": r.sender_mac.to_string(), "sender_ip": r.sender_ip.to_string(),
                "target_mac": r.target_mac.to_string(), "target_ip": r.target_ip.to_string(),
            }),
        ),
        Method::HostAnnounce(h) => ("host_announce", json!({"mac": h.mac.to_string(), "ip": h.ip.to_string()})),
        Method::NdSolicit(n) => (
            "nd_solicit",
            json!({"sender_mac": n.sender_mac.to_string(), "sender_ip": n.sender_ip.to_string(), "target_ip": n.target_ip.to_string()}),
        ),
        Method::NdAdvert(n) => {
            use ipop_common::nd::{FLAG_OVERRIDE, FLAG_ROUTER, FLAG_SOLICITED};
            let on = |bit: u8| n.flags & bit != 0;
            let params = json!({
                "mac": n.mac.to_string(), "ip": n.ip.to_string(),
                "dst_mac": n.dst_mac.to_string(), "dst_ip": n.dst_ip.to_string(),
                "router": on(FLAG_ROUTER), "solicited": on(FLAG_SOLICITED), "override": on(FLAG_OVERRIDE),
            });
            ("nd_advert", params)
        }
    };
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "method": name, "params": params})).expect("serialisable")
}

/// The `link_summary` notification, shrunk to fit one message.
pub fn encode_summary(mut summary: Summary) -> Vec<u8> {
    let message = |s: &Summary| json!({"jsonrpc": "2.0", "method": "link_summary", "params": s});
    summary.shrink_to(|s| serde_json::to_vec(&message(s)).is_ok_and(|m| m.len() <= MAX_MESSAGE));
    serde_json::to_vec(&message(&summary)).expect("serialisable")
}

pub fn encode_result(id: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "result": null, "id": id})).expect("serialisable")
}

pub fn encode_error(id: &Value, code: i64, message: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "error": {"code": code, "message": message}, "id": id}))
        .expect("serialisable")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Method {
        Method::ArpRequest(ArpRequest {
            sender_mac: "02:00:00:00:00:05".parse().unwrap(),
            sender_ip: Ipv4Addr::new(10, 0, 3, 5),
            target_ip: Ipv4Addr::new(10, 0, 3, 104),
        })
    }

    fn reply() -> Method {
        Method::ArpReply(ArpReply {
            sender_mac: "02:00:00:00:00:68".parse().unwrap(),
            sender_ip: Ipv4Addr::new(10, 0, 3, 104),
            target_mac: "02:00:00:00:00:05".parse().unwrap(),
            target_ip: Ipv4Addr::new(10, 0, 3, 5),
        })
    }

    #[test]
    fn methods_round_trip_as_notifications() {
        for m in [req(), reply()] {
            assert_eq!(decode(&encode(&m)).unwrap(), Incoming::Notification(m));
        }
        let text = String::from_utf8(encode(&req())).unwrap();
        assert!(text.contains(r#""method":"arp_request""#) && text.contains(r#""target_ip":"10.0.3.104""#), "{text}");
    }

    #[test]
    fn calls_keep_their_id_and_responses_are_recognised() {
        let call = br#"{"jsonrpc":"2.0","method":"arp_request","id":7,"params":{"sender_mac":"02:00:00:00:00:05","sender_ip":"10.0.3.5","target_ip":"10.0.3.104"}}"#;
        assert_eq!(decode(call).unwrap(), Incoming::Call { id: json!(7), method: req() });
        assert_eq!(decode(&encode_result(&json!(7))).unwrap(), Incoming::Response { id: json!(7), error: None });
        let err = decode(&encode_error(&json!("x"), METHOD_NOT_FOUND, "nope")).unwrap();
        assert_eq!(err, Incoming::Response { id: json!("x"), error: Some((METHOD_NOT_FOUND, "nope".into())) });
    }

    fn rejected(bytes: &[u8]) -> Rejection {
        decode(bytes).expect_err(&String::from_utf8_lossy(bytes))
    }

    #[test]
    fn garbage_gets_a_parse_error_answer() {
        let r = rejected(b"{not json");
        assert_eq!(r.code, PARSE_ERROR);
        let answer: Value = serde_json::from_slice(&r.answer.unwrap()).unwrap();
        assert_eq!(answer["error"]["code"], json!(PARSE_ERROR));
        assert_eq!(answer["id"], Value::Null);
    }

    #[test]
    fn invalid_requests_are_refused_with_the_right_code() {
        assert_eq!(rejected(br#"{"jsonrpc":"1.0","method":"arp_request","id":1}"#).code, INVALID_REQUEST);
        assert_eq!(rejected(br#"[1,2]"#).code, INVALID_REQUEST);
        assert_eq!(rejected(br#"{"jsonrpc":"2.0","method":"arp_request","id":{"a":1}}"#).code, INVALID_REQUEST);
        assert_eq!(rejected(br#"{"jsonrpc":"2.0","method":"x","extra":1}"#).code, INVALID_REQUEST);
        assert_eq!(rejected(&vec![b' '; MAX_MESSAGE + 1]).code, INVALID_REQUEST);
        let deep = format!("{}{}", "[".repeat(2_000), "]".repeat(2_000));
        assert_eq!(rejected(deep.as_bytes()).code, PARSE_ERROR, "deep nesting is an error, not a stack overflow");
    }

    #[test]
    fn unknown_methods_and_bad_params_are_answered_only_when_an_answer_is_due() {
        let r = rejected(br#"{"jsonrpc":"2.0","method":"format_disk","id":3}"#);
        assert_eq!(r.code, METHOD_NOT_FOUND);
        let answer: Value = serde_json::from_slice(&r.answer.unwrap()).unwrap();
        assert_eq!(answer["id"], json!(3));
        let r = rejected(br#"{"jsonrpc":"2.0","method":"format_disk"}"#);
        assert_eq!((r.code, r.answer), (METHOD_NOT_FOUND, None), "notifications are never answered");
        for params in [
            r#"{"sender_mac":"02:00:00:00:00:05","sender_ip":"10.0.3.5"}"#,
            r#"{"sender_mac":"ff:ff:ff:ff:ff:ff","sender_ip":"10.0.3.5","target_ip":"10.0.3.104"}"#,
            r#"{"sender_mac":"02:00:00:00:00:05","sender_ip":"0.0.0.0","target_ip":"10.0.3.104"}"#,
            r#"{"sender_mac":"02:00:00:00:00:05","sender_ip":"10.0.3.5","target_ip":104}"#,
            r#"{"sender_mac":"02:00:00:00:00:05","sender_ip":"10.0.3.5","target_ip":"10.0.3.104","x":1}"#,
            r#"[1]"#,
        ] {
            let msg = format!(r#"{{"jsonrpc":"2.0","method":"arp_request","id":1,"params":{params}}}"#);
            let r = rejected(msg.as_bytes());
            assert_eq!(r.code, INVALID_PARAMS, "{params}");
            assert!(r.answer.is_some());
        }
    }

    #[test]
    fn a_link_summary_is_a_checked_notification_that_fits_one_message() {
        use crate::core::topology::{HostReport, LinkReport};
        let host = |i: u32| HostReport { ip: format!("10.{}.{}.1", i / 256, i % 256), mac: "02:00:00:00:00:05".into() };
        let link = LinkReport { peer: "h1".into(), up: true, path: Some("direct".into()), rtt_ms: Some(0.4) };
        let big = Summary { links: vec![link], hosts: (0..200).map(host).collect(), conflicts: vec![] };
        let bytes = encode_summary(big);
        assert!(bytes.len() <= MAX_MESSAGE);
        let Ok(Incoming::Summary(s)) = decode(&bytes) else { panic!("{}", String::from_utf8_lossy(&bytes)) };
        assert_eq!(s.links.len(), 1, "links stay, hosts go first");
        let call = br#"{"jsonrpc":"2.0","method":"link_summary","id":1,"params":{"links":[],"hosts":[]}}"#;
        assert_eq!(rejected(call).code, INVALID_REQUEST);
        let bad = br#"{"jsonrpc":"2.0","method":"link_summary","params":{"links":[{"peer":"","up":true}],"hosts":[]}}"#;
        assert_eq!(rejected(bad).code, INVALID_PARAMS);
    }

    #[test]
    fn a_host_announcement_round_trips_and_is_checked() {
        let h = Method::HostAnnounce(HostAnnounce {
            mac: "02:00:00:00:00:05".parse().unwrap(),
            ip: Ipv4Addr::new(10, 0, 3, 5).into(),
        });
        assert_eq!(decode(&encode(&h)).unwrap(), Incoming::Notification(h));
        let text = String::from_utf8(encode(&h)).unwrap();
        assert_eq!(
            text,
            r#"{"jsonrpc":"2.0","method":"host_announce","params":{"ip":"10.0.3.5","mac":"02:00:00:00:00:05"}}"#
        );
        for params in [
            r#"{"mac":"ff:ff:ff:ff:ff:ff","ip":"10.0.3.5"}"#,
            r#"{"mac":"02:00:00:00:00:05","ip":"224.0.0.1"}"#,
            r#"{"ip":"10.0.3.5"}"#,
            r#"{"mac":"02:00:00:00:00:05","ip":"ff02::1"}"#,
            r#"{"mac":"02:00:00:00:00:05","ip":"::"}"#,
        ] {
            let msg = format!(r#"{{"jsonrpc":"2.0","method":"host_announce","id":1,"params":{params}}}"#);
            assert_eq!(rejected(msg.as_bytes()).code, INVALID_PARAMS, "{params}");
        }
        let v6 = Method::HostAnnounce(HostAnnounce { mac: Mac([2, 0, 0, 0, 0, 5]), ip: "fd00::5".parse().unwrap() });
        assert_eq!(decode(&encode(&v6)).unwrap(), Incoming::Notification(v6));
    }

    #[test]
    fn neighbour_discovery_round_trips_and_is_checked() {
        use ipop_common::nd::{FLAG_OVERRIDE, FLAG_SOLICITED};
        let mac = Mac([2, 0, 0, 0, 0, 5]);
        let solicit = Method::NdSolicit(NdSolicit {
            sender_mac: mac,
            sender_ip: "fd00::5".parse().unwrap(),
            target_ip: "fd00::68".parse().unwrap(),
        });
        let dad = Method::NdSolicit(NdSolicit {
            sender_mac: mac,
            sender_ip: Ipv6Addr::UNSPECIFIED,
            target_ip: "fd00::68".parse().unwrap(),
        });
        let advert = Method::NdAdvert(NdAdvert {
            mac,
            ip: "fd00::5".parse().unwrap(),
            dst_mac: Mac([0x33, 0x33, 0, 0, 0, 1]),
            dst_ip: "ff02::1".parse().unwrap(),
            flags: FLAG_SOLICITED | FLAG_OVERRIDE,
        });
        for m in [solicit, dad, advert] {
            assert_eq!(decode(&encode(&m)).unwrap(), Incoming::Notification(m));
        }
        let text = String::from_utf8(encode(&advert)).unwrap();
        assert!(text.contains(r#""override":true"#) && text.contains(r#""router":false"#), "{text}");
        let advert_with = |dst_mac: &str, dst_ip: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","method":"nd_advert","params":{{"mac":"02:00:00:00:00:05","ip":"fd00::5","dst_mac":"{dst_mac}","dst_ip":"{dst_ip}","router":false,"solicited":true,"override":true}}}}"#
            )
        };
        for (dst_mac, dst_ip) in
            [("33:33:00:00:00:01", "fd00::9"), ("02:00:00:00:00:09", "ff02::1"), ("02:00:00:00:00:09", "::")]
        {
            assert_eq!(rejected(advert_with(dst_mac, dst_ip).as_bytes()).code, INVALID_PARAMS, "{dst_mac} {dst_ip}");
        }
        for params in [
            r#"{"sender_mac":"02:00:00:00:00:05","sender_ip":"ff02::1","target_ip":"fd00::68"}"#,
            r#"{"sender_mac":"02:00:00:00:00:05","sender_ip":"fd00::5","target_ip":"::"}"#,
            r#"{"sender_mac":"02:00:00:00:00:05","sender_ip":"fd00::5","target_ip":"10.0.3.5"}"#,
        ] {
            let msg = format!(r#"{{"jsonrpc":"2.0","method":"nd_solicit","params":{params}}}"#);
            assert_eq!(rejected(msg.as_bytes()).code, INVALID_PARAMS, "{params}");
        }
    }
}
