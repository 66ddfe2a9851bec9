//! The `xmpp` settings: signaling through an XMPP server's members-only room instead of the
//! rendezvous. Pure: parsing and checks (its password file is read with the others, by
//! `Settings::with_password_file`).

use std::path::PathBuf;

use serde::Deserialize;
use tokio_xmpp::jid::BareJid;

use crate::signaling::xmpp::XmppConfig;

/// The `xmpp` object as given, in the file or on the command line (`--xmpp-*`).
#[derive(Default, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XmppSettings {
    /// This agent's account, `user@domain`.
    pub jid: Option<String>,
    pub password: Option<String>,
    /// A file holding the password (its one line), instead of `password`.
    pub password_file: Option<PathBuf>,
    /// The overlay's room, `name@conference.domain`.
    pub room: Option<String>,
    /// `host:port` of the server (default: DNS SRV of the JID's domain).
    pub server: Option<String>,
    /// PEM certificates the server's may chain to, beside the system's.
    pub ca_file: Option<PathBuf>,
    /// No TLS: for labs only (warned about).
    pub plaintext: Option<bool>,
}

impl std::fmt::Debug for XmppSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmppSettings")
            .field("jid", &self.jid)
            .field("room", &self.room)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl XmppSettings {
    /// `self` with every key `over` gives replaced; the password and its file are one setting.
    pub fn overridden_by(self, over: XmppSettings) -> XmppSettings {
        let (password, password_file) = if over.password.is_some() || over.password_file.is_some() {
            (over.password, over.password_file)
        } else {
            (self.password, self.password_file)
        };
        XmppSettings {
            jid: over.jid.or(self.jid),
            password,
            password_file,
            room: over.room.or(self.room),
            server: over.server.or(self.server),
            ca_file: over.ca_file.or(self.ca_file),
            plaintext: over.plaintext.or(self.plaintext),
        }
    }

    /// Whether nothing is set (the command line's `--xmpp-*` all absent).
    pub fn is_empty(&self) -> bool {
        *self == XmppSettings::default()
    }

    /// Checks the settings together.
    pub fn resolve(self) -> Result<XmppConfig, String> {
        if self.password_file.is_some() {
            return Err("xmpp password_file must be read before the settings are resolved".into());
        }
        let jid = bare_jid("jid", self.jid.as_deref().ok_or("xmpp needs jid (user@domain)")?)?;
        let room = bare_jid("room", self.room.as_deref().ok_or("xmpp needs room (name@conference.domain)")?)?;
        let password = self
            .password
            .filter(|p| !p.is_empty())
            .ok_or("xmpp needs a password: password, password_file or IPOP_XMPP_PASSWORD")?;
        let plaintext = self.plaintext.unwrap_or(false);
        if plaintext && self.ca_file.is_some() {
            return Err("xmpp ca_file is for TLS, and plaintext has none: drop one".into());
        }
        let server = self.server.map(|s| host_port(&s)).transpose()?;
        Ok(XmppConfig { jid, password, room, server, ca_file: self.ca_file, plaintext })
    }
}

/// A bare JID with a user (or room) part.
fn bare_jid(key: &str, text: &str) -> Result<BareJid, String> {
    let jid: BareJid = text.parse().map_err(|e| format!("xmpp {key} {text:?}: {e} (expected name@domain)"))?;
    if jid.node().is_none() {
        return Err(format!("xmpp {key} {text:?} has no name@ part"));
    }
    Ok(jid)
}

fn host_port(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("xmpp server {text:?} must be host:port");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = port.parse::<u16>().ok().filter(|&p| p != 0).ok_or_else(bad)?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> XmppSettings {
        XmppSettings {
            jid: Some("host-a@xmpp.test".into()),
            password: Some("pw".into()),
            room: Some("lab@conference.xmpp.test".into()),
            server: Some("203.0.113.254:5222".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_complete_xmpp_setting_resolves() {
        let c = full().resolve().unwrap();
        assert_eq!(
            (c.jid.to_string(), c.room.to_string()),
            ("host-a@xmpp.test".into(), "lab@conference.xmpp.test".into())
        );
        assert_eq!(c.server, Some(("203.0.113.254".into(), 5222)));
        assert!(!c.plaintext);
        let srv = XmppSettings { server: None, ..full() }.resolve().unwrap();
        assert_eq!(srv.server, None, "DNS SRV");
        assert!(!format!("{:?} {:?}", full(), c).contains("pw"), "the password stays out of logs");
    }

    #[test]
    fn what_is_missing_or_wrong_is_named() {
        let err = |s: XmppSettings| s.resolve().unwrap_err();
        assert!(err(XmppSettings { jid: None, ..full() }).contains("needs jid"));
        assert!(err(XmppSettings { jid: Some("xmpp.test".into()), ..full() }).contains("no name@ part"));
        assert!(err(XmppSettings { jid: Some("a@b@c".into()), ..full() }).contains("xmpp jid"));
        assert!(err(XmppSettings { room: None, ..full() }).contains("needs room"));
        assert!(err(XmppSettings { password: None, ..full() }).contains("IPOP_XMPP_PASSWORD"));
        assert!(err(XmppSettings { server: Some("nohost".into()), ..full() }).contains("host:port"));
        assert!(err(XmppSettings { server: Some("h:0".into()), ..full() }).contains("host:port"));
        let both = XmppSettings { plaintext: Some(true), ca_file: Some("/ca.pem".into()), ..full() };
        assert!(err(both).contains("plaintext"));
    }

    #[test]
    fn the_password_and_its_file_are_one_setting() {
        let over = full().overridden_by(XmppSettings { password_file: Some("/pw".into()), ..Default::default() });
        assert_eq!((over.password, over.password_file), (None, Some("/pw".into())));
        let unread = XmppSettings { password: None, password_file: Some("/pw".into()), ..full() };
        assert!(unread.resolve().unwrap_err().contains("must be read"));
    }
}
