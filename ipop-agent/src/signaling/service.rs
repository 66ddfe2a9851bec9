//! The interface between an agent and its signaling service, whatever the backend: a handle
//! to send signals (`Signaling`), a channel of `SignalEvent`s, and `keep`, which keeps a
//! session with a `Service` and makes it again with backoff when it is lost.

use std::{future::Future, time::Duration};

use serde_json::Value;
use tokio::sync::mpsc;
use tracing::warn;

use crate::signaling::rendezvous::Member;

/// What the signaling service tells the agent.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalEvent {
    /// Connected (again): the full member list, self excluded.
    Members(Vec<Member>),
    Joined(Member),
    Left(String),
    Signal {
        from: String,
        data: Value,
    },
    /// The connection dropped or could not be made (why, in words); links that are up keep
    /// working; reconnecting.
    Lost(String),
    /// The service refused us (wrong secret, wrong password, not a member), in words: fatal.
    Refused(String),
    /// The CA's revocation list, as the service has it (checked by the agent).
    Revocation(String),
    /// Something the service passed on was not taken (a malformed stanza, a stranger's
    /// signal): why, to count and say.
    Ignored(String),
}

/// Sends signals to peers through the service.
#[derive(Debug, Clone)]
pub struct Signaling {
    tx: mpsc::Sender<(String, Value)>,
}

impl Signaling {
    /// Queues `data` for `to`; dropped (logged) if the service is unreachable for long.
    pub fn send(&self, to: &str, data: Value) {
        if self.tx.try_send((to.to_owned(), data)).is_err() {
            warn!(to, "signal dropped: the signaling connection is backed up or gone");
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(8);

/// A signaling service an agent keeps a session with.
pub trait Service: Send + 'static {
    /// What to call it in messages.
    fn name(&self) -> String;

    /// One session: `Ok(Some(reason))` if the service refused this agent (fatal), `Ok(None)`
    /// if it ended because the agent let go, `Err` if it was lost (and is made again).
    fn session(
        &mut self,
        outgoing: &mut mpsc::Receiver<(String, Value)>,
        events: &mpsc::Sender<SignalEvent>,
    ) -> impl Future<Output = anyhow::Result<Option<String>>> + Send;
}

/// Keeps a session with `service`, reconnecting with backoff, until it refuses this agent or
/// the returned receiver is dropped.
pub fn keep(mut service: impl Service) -> (Signaling, mpsc::Receiver<SignalEvent>) {
    let (tx, mut outgoing) = mpsc::channel::<(String, Value)>(1024);
    let (events, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut backoff = BACKOFF_MIN;
        loop {
            let lost = match service.session(&mut outgoing, &events).await {
                Ok(Some(reason)) => {
                    let refused = format!("the {} refused this agent: {reason}", service.name());
                    let _ = events.send(SignalEvent::Refused(refused)).await;
                    return;
                }
                Ok(None) => {
                    backoff = BACKOFF_MIN;
                    format!("{}: the connection ended", service.name())
                }
                Err(e) => format!("{}: {e:#}", service.name()),
            };
            if events.send(SignalEvent::Lost(lost)).await.is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    });
    (Signaling { tx }, rx)
}
