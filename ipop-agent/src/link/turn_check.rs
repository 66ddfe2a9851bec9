//! Why a TURN server gave no relay candidate, in the server's own words. webrtc-ice only logs
//! a failed allocation, so an attempt that ends without a relay asks here: one Allocate of
//! our own with the turn crate (the client webrtc-ice uses), whose error carries the server's
//! answer (`error 401: Unauthorized`). Answers are kept for a while, so links failing
//! together ask each server once; servers are asked side by side.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, sync::Mutex};
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn as _;

/// How long one check waits for the server.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer stands.
const KEEP: Duration = Duration::from_secs(30);

/// One TURN server as webrtc-ice reaches it: `addr` is host:port (the loopback relay's for
/// TURN over a stream).
pub struct CheckTarget<'a> {
    pub addr: String,
    pub username: &'a str,
    pub password: &'a str,
}

/// What a server said: nothing wrong, or why not.
pub type Answer = Result<(), Problem>;

/// Why a server gave no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Nothing came back within `CHECK_TIMEOUT`.
    Silent,
    /// The server answered, and not with an allocation (its error, e.g. `error 401: Unauthorized`).
    Refused(String),
}

/// One server's last answer and when it came, behind the lock its checks take.
type Slot = Arc<Mutex<Option<(Instant, Answer)>>>;

/// The answers so far, one slot per server address.
#[derive(Default)]
pub struct TurnChecks {
    slots: std::sync::Mutex<HashMap<String, Slot>>,
}

impl TurnChecks {
    /// Whether `target` allocates now.
    pub async fn check(&self, target: &CheckTarget<'_>) -> Answer {
        let slot = self.slots.lock().unwrap_or_else(|e| e.into_inner()).entry(target.addr.clone()).or_default().clone();
        // Held across the check: a second link asking about this server waits and takes
        // this answer; other servers are asked meanwhile.
        let mut slot = slot.lock().await;
        if let Some((at, answer)) = &*slot
            && at.elapsed() < KEEP
        {
            return answer.clone();
        }
        let answer = tokio::time::timeout(CHECK_TIMEOUT, allocate(target)).await.unwrap_or(Err(Problem::Silent));
        *slot = Some((Instant::now(), answer.clone()));
        answer
    }
}

/// One Allocate, given back at once if granted; every step is under the caller's timeout.
async fn allocate(target: &CheckTarget<'_>) -> Answer {
    let refused = |e: turn::Error| Problem::Refused(e.to_string());
    let conn = UdpSocket::bind("0.0.0.0:0").await.map_err(|e| Problem::Refused(format!("no socket: {e}")))?;
    let client = Client::new(ClientConfig {
        stun_serv_addr: String::new(),
        turn_serv_addr: target.addr.clone(),
        username: target.username.to_owned(),
        password: target.password.to_owned(),
        realm: String::new(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .map_err(refused)?;
    client.listen().await.map_err(refused)?;
    let answer = match client.allocate().await {
        Ok(relay) => {
            let _ = relay.close().await; // gives the allocation back
            Ok(())
        }
        Err(e) => Err(refused(e)),
    };
    let _ = client.close().await;
    answer
}
