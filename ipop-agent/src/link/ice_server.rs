//! STUN and TURN servers as the config names them, checked when the config is read:
//! `stun:host:port`, `turn:host:port?transport=udp|tcp`, `turns:host:port` (TLS), with TURN's
//! credentials in the url (`turn:user:pass@host:port`) or given apart (`turn_user`,
//! `turn_password`). webrtc-ice's own url parser drops credentials, so they are taken out here
//! and handed over in its fields.

use std::fmt;

use webrtc_ice::url::{ProtoType, SchemeType, Url};

/// One checked server: its url without credentials, where it is, how it is reached, and
/// TURN's credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct IceServer {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub transport: Transport,
    pub username: String,
    pub password: String,
}

/// How this host reaches a server. webrtc-ice itself speaks UDP only; TCP and TLS go through
/// a stream relay (`link::turn_stream`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// Never print a password (config dumps, debug logs).
impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = if self.username.is_empty() { String::new() } else { format!("{}:***@", self.username) };
        let (scheme, rest) = self.url.split_once(':').unwrap_or((&self.url, ""));
        write!(f, "{scheme}:{user}{rest}")
    }
}

impl IceServer {
    /// Parses `text` (from key `key`, named in errors). `fallback` are the credentials given
    /// apart, used by a TURN url that carries none.
    pub fn parse(key: &str, text: &str, fallback: Option<(&str, &str)>) -> Result<IceServer, String> {
        let bad = |why: String| format!("{key} url {:?}: {why}", redact(text));
        let (scheme, rest) = text.split_once(':').ok_or_else(|| bad("expected scheme:host:port".into()))?;
        if rest.starts_with("//") {
            return Err(bad(format!("no // after the scheme: {scheme}:host:port")));
        }
        let (userinfo, hostpart) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let url_text = format!("{scheme}:{hostpart}");
        let url = Url::parse_url(&url_text).map_err(|e| bad(e.to_string()))?;
        let turn = matches!(url.scheme, SchemeType::Turn | SchemeType::Turns);
        match (key, turn) {
            ("stun", true) => return Err(bad("a turn url under stun".into())),
            ("turn", false) => return Err(bad("a stun url under turn".into())),
            _ => {}
        }
        let transport = match (url.scheme, url.proto) {
            (SchemeType::Stun | SchemeType::Turn, ProtoType::Udp) => Transport::Udp,
            (SchemeType::Turn, ProtoType::Tcp) => Transport::Tcp,
            (SchemeType::Turns, ProtoType::Tcp) => Transport::Tls,
            (SchemeType::Stuns, _) => return Err(bad("STUN over TLS is not supported: use stun:".into())),
            _ => return Err(bad("TURN over DTLS is not supported: use turns: (TLS over TCP)".into())),
        };
        let server = |username: &str, password: &str| IceServer {
            url: url_text.clone(),
            host: url.host.clone(),
            port: url.port,
            transport,
            username: username.to_owned(),
            password: password.to_owned(),
        };
        if !turn {
            if userinfo.is_some() {
                return Err(bad("a STUN url takes no credentials".into()));
            }
            return Ok(server("", ""));
        }
        let (username, password) = match userinfo {
            Some(u) => u.split_once(':').ok_or_else(|| bad("credentials must be user:password".into()))?,
            None => fallback.ok_or_else(|| {
                bad("no credentials: give them in the url (turn:user:pass@host:port) or as turn_user and turn_password"
                    .into())
            })?,
        };
        if username.is_empty() || password.is_empty() {
            return Err(bad("empty user name or password".into()));
        }
        Ok(server(username, password))
    }

    pub fn is_turn(&self) -> bool {
        self.url.starts_with("turn")
    }

    /// The url for webrtc-ice, credentials in its fields; `via` is the loopback address of the
    /// stream relay that stands in for a TCP or TLS server (webrtc-ice reaches it over UDP).
    pub fn to_url(&self, via: Option<std::net::SocketAddr>) -> Url {
        let mut url = Url::parse_url(&self.url).expect("checked when the config was read");
        if let Some(local) = via {
            (url.scheme, url.proto) = (SchemeType::Turn, ProtoType::Udp);
            (url.host, url.port) = (local.ip().to_string(), local.port());
        }
        url.username.clone_from(&self.username);
        url.password.clone_from(&self.password);
        url
    }
}

/// `text` with any password replaced, for error messages.
fn redact(text: &str) -> String {
    match text.rsplit_once('@') {
        // "scheme:user:password" before the host: everything after the last ':' goes.
        Some((userinfo, host)) => {
            let before = userinfo.rsplit_once(':').map_or(userinfo, |(before, _)| before);
            format!("{before}:***@{host}")
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(key: &str, text: &str, fallback: Option<(&str, &str)>) -> IceServer {
        IceServer::parse(key, text, fallback).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn credentials_come_from_the_url_or_apart_and_reach_the_ice_library() {
        let s = ok("turn", "turn:ipop:s3cret@203.0.113.254:3478?transport=udp", None);
        assert_eq!(s.url, "turn:203.0.113.254:3478?transport=udp");
        let url = s.to_url(None);
        assert_eq!((url.username.as_str(), url.password.as_str(), url.port), ("ipop", "s3cret", 3478));
        assert_eq!((s.host.as_str(), s.port, s.transport), ("203.0.113.254", 3478, Transport::Udp));
        let apart = ok("turn", "turn:203.0.113.254:3478", Some(("ipop", "s3cret")));
        assert_eq!((apart.username.as_str(), apart.password.as_str()), ("ipop", "s3cret"));
        let own = ok("turn", "turn:a:b@203.0.113.254", Some(("ipop", "s3cret")));
        assert_eq!(own.username, "a", "the url's own credentials win");
        let stun = ok("stun", "stun:192.0.2.1:3478", None);
        assert_eq!((stun.url.as_str(), stun.to_url(None).username.as_str()), ("stun:192.0.2.1:3478", ""));
    }

    #[test]
    fn turn_over_tcp_and_tls_reach_the_ice_library_through_a_local_relay() {
        let tcp = ok("turn", "turn:u:p@turn.example.org:3478?transport=tcp", None);
        assert_eq!((tcp.host.as_str(), tcp.port, tcp.transport), ("turn.example.org", 3478, Transport::Tcp));
        let tls = ok("turn", "turns:u:p@turn.example.org", None);
        assert_eq!((tls.port, tls.transport), (5349, Transport::Tls), "turns: defaults to 5349");
        let url = tls.to_url(Some("127.0.0.1:40000".parse().unwrap()));
        assert_eq!((url.scheme, url.proto), (SchemeType::Turn, ProtoType::Udp));
        assert_eq!((url.host.as_str(), url.port, url.username.as_str()), ("127.0.0.1", 40000, "u"));
    }

    #[test]
    fn bad_urls_are_refused_naming_key_and_url_and_never_the_password() {
        for (key, text, why) in [
            ("turn", "turn://u:p@host:3478", "no //"),
            ("turn", "turn:host:3478", "no credentials"),
            ("turn", "turn:u@host:3478", "user:password"),
            ("turn", "turn::p@host:3478", "empty"),
            ("turn", "turns:u:p@host:5349?transport=udp", "DTLS is not supported"),
            ("turn", "turn:u:p@host:3478?transport=sctp", "turn url"),
            ("stun", "stuns:host:5349", "STUN over TLS"),
            ("turn", "stun:host:3478", "a stun url under turn"),
            ("stun", "turn:u:p@host", "a turn url under stun"),
            ("stun", "stun:u:p@host", "no credentials"),
            ("stun", "host:3478", "stun url"),
            ("stun", "stun:", "stun url"),
        ] {
            let err = IceServer::parse(key, text, None).unwrap_err();
            assert!(err.starts_with(&format!("{key} url")) && err.contains(why), "{text}: {err}");
            assert!(!err.contains(":p@"), "{err}");
        }
    }

    #[test]
    fn debug_output_hides_the_password() {
        let s = ok("turn", "turn:ipop:s3cret@203.0.113.254:3478", None);
        let shown = format!("{s:?}");
        assert!(!shown.contains("s3cret") && shown.contains("ipop:***@203.0.113.254"), "{shown}");
    }
}
