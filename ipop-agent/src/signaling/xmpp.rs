//! The XMPP backend, as IPOP signalled: the agent logs into an existing XMPP server (prosody,
//! a clustered ejabberd) with its own account, joins the overlay's members-only room (`muc`:
//! what the stanzas mean), and trades signals there. Links never pass through the server.
//!
//! The connection: TCP to `server` (or the JID's domain by DNS SRV), STARTTLS with the
//! server's certificate checked against the system's roots and `ca_file` for the JID's domain
//! (plaintext only with the lab switch), SASL (SCRAM or PLAIN, tokio-xmpp's), a resource
//! named after the node id. A login the server refuses (a wrong password), or a room that
//! will not have this JID, is fatal; anything else is a lost connection, made again with
//! backoff by `keep`.

use std::{borrow::Cow, path::PathBuf, sync::Arc};

use anyhow::{Context as _, Result, anyhow, bail};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::{io::BufStream, net::TcpStream, sync::mpsc};
use tokio_rustls::{
    TlsConnector,
    rustls::{self, pki_types::ServerName},
};
use tokio_xmpp::{
    connect::{AsyncReadAndWrite, DnsConfig},
    error::AuthError,
    jid::{BareJid, Jid},
    parsers::{
        bind::BindQuery,
        iq::Iq,
        ns,
        ping::Ping,
        stanza_error::{DefinedCondition, ErrorType, StanzaError},
        starttls,
    },
    xmlstream::{
        FallibleStreamElement, ReadError, StreamHeader, Timeouts, XmppStream, XmppStreamElement, initiate_stream,
    },
};
use tracing::{info, warn};

use crate::signaling::{
    muc::{Heard, Room},
    rendezvous::Member,
    service::{Service, SignalEvent},
};

/// What an agent needs to sign in to an XMPP server and find its overlay's room.
#[derive(Clone, PartialEq)]
pub struct XmppConfig {
    /// This agent's account (a bare JID: the resource is its node id).
    pub jid: BareJid,
    pub password: String,
    /// The overlay's members-only room, `name@conference.domain`.
    pub room: BareJid,
    /// `host:port` to connect to; `None`: DNS SRV of the JID's domain (`_xmpp-client._tcp`).
    pub server: Option<(String, u16)>,
    /// PEM certificates the server's may chain to, beside the system's roots.
    pub ca_file: Option<PathBuf>,
    /// No TLS at all: the lab switch (warned about at start).
    pub plaintext: bool,
}

impl std::fmt::Debug for XmppConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XmppConfig")
            .field("jid", &self.jid)
            .field("password", &"***")
            .field("room", &self.room)
            .field("server", &self.server)
            .field("ca_file", &self.ca_file)
            .field("plaintext", &self.plaintext)
            .finish()
    }
}

/// A signed-in session's stream of stanzas.
pub type Stream = XmppStream<Box<dyn AsyncReadAndWrite + Send + 'static>>;

/// Silence before the server is pinged, and then before it counts as gone.
const TIMEOUTS: Timeouts =
    Timeouts { read_timeout: std::time::Duration::from_secs(30), response_timeout: std::time::Duration::from_secs(15) };

/// The XMPP backend of one agent.
pub struct Xmpp {
    cfg: XmppConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    room: Room,
    node_id: String,
}

impl Xmpp {
    /// The backend for `cfg`, announcing `me`; the server's trust is read now (a bad
    /// `ca_file` stops the start).
    pub fn new(cfg: XmppConfig, me: Member) -> Result<Xmpp> {
        let tls = if cfg.plaintext {
            warn!(server = ?cfg.server, "XMPP without TLS (the lab switch): the password and every stanza cross in clear");
            None
        } else {
            Some(super::tls::client_config(cfg.ca_file.as_deref()).context("trusting the XMPP server (xmpp ca_file)")?)
        };
        let node_id = me.node_id.clone();
        Ok(Xmpp { room: Room::new(cfg.room.clone(), me), cfg, tls, node_id })
    }
}

impl Service for Xmpp {
    fn name(&self) -> String {
        match &self.cfg.server {
            Some((host, port)) => format!("XMPP server {host}:{port}"),
            None => format!("XMPP server of {}", self.cfg.jid.domain()),
        }
    }

    fn session(
        &mut self,
        outgoing: &mut mpsc::Receiver<(String, Value)>,
        events: &mpsc::Sender<SignalEvent>,
    ) -> impl std::future::Future<Output = Result<Option<String>>> + Send {
        self.run(outgoing, events)
    }
}

impl Xmpp {
    /// One session: sign in, join the room, then signals out and stanzas in until it ends.
    async fn run(
        &mut self,
        outgoing: &mut mpsc::Receiver<(String, Value)>,
        events: &mpsc::Sender<SignalEvent>,
    ) -> Result<Option<String>> {
        let mut stream = match sign_in(&self.cfg, self.tls.clone(), &self.node_id).await {
            Ok(stream) => stream,
            Err(e) => return refused_login(&self.cfg, e),
        };
        send(&mut stream, self.room.join().into()).await?;
        info!(jid = %self.cfg.jid, room = %self.cfg.room, "signed in to the XMPP server; joining the room");
        loop {
            let heard = tokio::select! {
                out = outgoing.recv() => {
                    let Some((to, data)) = out else { return Ok(None) };
                    if let Some(m) = self.room.signal(&to, &data) {
                        send(&mut stream, m.into()).await?;
                    }
                    continue;
                }
                element = stream.next() => self.received(element, &mut stream).await?,
            };
            match heard {
                Heard::Event(e) => events.send(e).await?,
                Heard::Ignored(why) => events.send(SignalEvent::Ignored(why)).await?,
                Heard::Refused(why) => return Ok(Some(why)),
                Heard::Out(why) => bail!("{why}"),
                Heard::Nothing => {}
            }
        }
    }
}

impl Xmpp {
    /// What one element from the server means; errors end the connection.
    async fn received(
        &mut self,
        element: Option<Result<FallibleStreamElement, ReadError>>,
        stream: &mut Stream,
    ) -> Result<Heard> {
        use tokio_xmpp::Stanza;
        let element = match element {
            None | Some(Err(ReadError::StreamFooterReceived)) => bail!("the XMPP server closed the stream"),
            Some(Err(ReadError::HardError(e))) => return Err(anyhow!(e).context("reading from the XMPP server")),
            Some(Err(ReadError::ParseError(e))) => return Ok(Heard::Ignored(format!("unparsable XML: {e}"))),
            Some(Err(ReadError::SoftTimeout)) => {
                // Silence: ask the server something, so a dead one shows before the hard timeout.
                let ping = Iq::from_get("ipop-ping", Ping).with_to(Jid::from(self.cfg.jid.domain().to_owned()));
                send(stream, ping.into()).await?;
                return Ok(Heard::Nothing);
            }
            Some(Ok(FallibleStreamElement::Err(e))) => return Ok(Heard::Ignored(format!("a malformed stanza: {e}"))),
            Some(Ok(FallibleStreamElement::Ok(element))) => element,
        };
        match element {
            XmppStreamElement::Stanza(Stanza::Presence(p)) => Ok(self.room.presence(&p)),
            XmppStreamElement::Stanza(Stanza::Message(m)) => Ok(self.room.message(&m)),
            XmppStreamElement::Stanza(Stanza::Iq(iq)) => {
                if let Some(answer) = answer(iq) {
                    send(stream, answer.into()).await?;
                }
                Ok(Heard::Nothing)
            }
            XmppStreamElement::StreamError(e) => bail!("the XMPP server ended the stream: {e}"),
            _ => Ok(Heard::Nothing),
        }
    }
}

/// The answer a request from the server (or anyone) is owed: a ping gets a result,
/// anything else "service unavailable" (RFC 6120: requests must be answered).
fn answer(iq: Iq) -> Option<Iq> {
    let (from, id, ping) = match iq {
        Iq::Get { from, id, payload, .. } => (from, id, payload.is("ping", ns::PING)),
        Iq::Set { from, id, .. } => (from, id, false),
        Iq::Result { .. } | Iq::Error { .. } => return None,
    };
    Some(if ping {
        Iq::Result { from: None, to: from, id, payload: None }
    } else {
        let error = StanzaError::new(ErrorType::Cancel, DefinedCondition::ServiceUnavailable, "en", "");
        Iq::Error { from: None, to: from, id, error, payload: None }
    })
}

/// Sends one stanza.
pub async fn send(stream: &mut Stream, stanza: tokio_xmpp::Stanza) -> Result<()> {
    stream.send(&XmppStreamElement::Stanza(stanza)).await.context("writing to the XMPP server")
}

/// A login error: the server's refusal (fatal: `Ok(Some(why))`), or a connection to retry.
fn refused_login(cfg: &XmppConfig, e: anyhow::Error) -> Result<Option<String>> {
    match e.downcast_ref::<tokio_xmpp::Error>() {
        Some(tokio_xmpp::Error::Auth(AuthError::Fail(condition))) => {
            let hint = if format!("{condition:?}") == "NotAuthorized" { ": wrong JID or password" } else { "" };
            Ok(Some(format!("the login of {} was refused: {condition:?}{hint}", cfg.jid)))
        }
        Some(tokio_xmpp::Error::Auth(AuthError::NoMechanism)) => {
            Ok(Some(format!("it offers {} no login this agent can do (SCRAM, PLAIN)", cfg.jid)))
        }
        _ => Err(e),
    }
}

/// Signs in as `cfg.jid` with the resource `resource`: a session ready for stanzas. The
/// server's certificate is checked against `tls` (`None`: plaintext).
pub async fn sign_in(cfg: &XmppConfig, tls: Option<Arc<rustls::ClientConfig>>, resource: &str) -> Result<Stream> {
    let mut stream = login(cfg, tls).await?;
    bind(&mut stream, resource).await?;
    Ok(stream)
}

/// Connects, secures and authenticates: a stream ready for resource binding.
async fn login(cfg: &XmppConfig, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Stream> {
    let domain = cfg.jid.domain().as_str();
    let dns = match &cfg.server {
        Some((host, port)) => DnsConfig::no_srv(host, *port),
        None => DnsConfig::srv_default_client(domain),
    };
    let tcp = tokio::time::timeout(TIMEOUTS.response_timeout, dns.resolve())
        .await
        .context("connecting timed out")?
        .context("connecting")?;
    tcp.set_nodelay(true)?;
    match tls {
        None => authenticate(cfg, BufStream::new(tcp)).await,
        Some(tls) => authenticate(cfg, BufStream::new(starttls(tcp, domain, tls).await?)).await,
    }
}

fn header(domain: &str) -> StreamHeader<'_> {
    StreamHeader { to: Some(Cow::Borrowed(domain)), from: None, id: None }
}

/// STARTTLS on a fresh connection: the TLS stream, the server's certificate checked for
/// `domain`.
async fn starttls(
    tcp: TcpStream,
    domain: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let pending = initiate_stream(BufStream::new(tcp), ns::JABBER_CLIENT, header(domain), TIMEOUTS).await?;
    let (features, mut stream): (_, XmppStream<BufStream<TcpStream>>) = pending.recv_features().await?;
    anyhow::ensure!(features.can_starttls(), "the XMPP server offers no STARTTLS (set plaintext only in a lab)");
    stream.send(&XmppStreamElement::Starttls(starttls::Nonza::Request(starttls::Request))).await?;
    loop {
        match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_))))) => break,
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(e)) => bail!("STARTTLS: {e}"),
            None => bail!("the XMPP server closed the connection during STARTTLS"),
        }
    }
    let name = ServerName::try_from(domain.to_owned()).context("the JID's domain as a TLS name")?;
    let tcp = stream.into_inner().into_inner();
    TlsConnector::from(tls).connect(name, tcp).await.with_context(|| format!("TLS with the XMPP server of {domain}"))
}

/// A stream over `io`, logged in as `cfg.jid`.
async fn authenticate<Io: AsyncReadAndWrite + 'static>(cfg: &XmppConfig, io: Io) -> Result<Stream> {
    let domain = cfg.jid.domain().as_str();
    let pending = initiate_stream(io, ns::JABBER_CLIENT, header(domain), TIMEOUTS).await?;
    let (features, stream): (_, XmppStream<Io>) = pending.recv_features().await?;
    let user = cfg.jid.node().context("the JID has no user part")?;
    let creds = sasl::common::Credentials::default().with_username(user.as_str()).with_password(cfg.password.clone());
    let authed = tokio_xmpp::client_login(stream, features.sasl_mechanisms, creds).await?;
    let (_, stream): (_, XmppStream<Io>) = authed.send_header(header(domain)).await?.recv_features().await?;
    Ok(stream.box_stream())
}

/// Binds the resource `resource` (the node id): the session is ready for stanzas.
async fn bind(stream: &mut Stream, resource: &str) -> Result<()> {
    send(stream, Iq::from_set("ipop-bind", BindQuery::new(Some(resource.to_owned()))).into()).await?;
    loop {
        match stream.next().await {
            Some(Ok(FallibleStreamElement::Ok(XmppStreamElement::Stanza(tokio_xmpp::Stanza::Iq(iq))))) => match iq {
                Iq::Result { id, .. } if id == "ipop-bind" => return Ok(()),
                Iq::Error { id, error, .. } if id == "ipop-bind" => {
                    bail!("the XMPP server refused the resource {resource}: {:?}", error.defined_condition)
                }
                _ => {}
            },
            Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
            Some(Err(e)) => bail!("binding a resource: {e}"),
            None => bail!("the XMPP server closed the stream while binding a resource"),
        }
    }
}
