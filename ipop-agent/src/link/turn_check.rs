//! Why a TURN server gave no relay candidate, in the server's own words. webrtc-ice only logs
//! a failed allocation, so an attempt that ends without a relay asks here: one Allocate of
//! our own with the turn crate (the client webrtc-ice uses), whose error carries the server's
//! answer (`error 401: Unauthorized`). Answers are kept for a while, so links failing
//! together ask each server once.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{net::UdpSocket, sync::Mutex};
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn as _;

/// How long one check waits for the server.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an answer stands.
const KEEP: Duration = Duration::from_secs(30);

/// One TURN server as webrtc-ice reaches it: `addr` is host:port (the loopback relay's for
/// TURN over a stream).
pub struct CheckTarget<'a> {
    pub addr: String,
    pub username: &'a str,
    pub password: &'a str,
}

/// What a server said: nothing wrong, or its error.
type Answer = Result<(), String>;

/// The answers so far, by server address, with when they came.
#[derive(Default)]
pub struct TurnChecks {
    answers: Mutex<HashMap<String, (Instant, Answer)>>,
}

impl TurnChecks {
    /// Whether `target` allocates now: `Err` with the server's error or the lack of an answer.
    pub async fn check(&self, target: &CheckTarget<'_>) -> Answer {
        // Held across the check: a second link asking meanwhile waits and takes this answer.
        let mut answers = self.answers.lock().await;
        if let Some((at, answer)) = answers.get(&target.addr)
            && at.elapsed() < KEEP
        {
            return answer.clone();
        }
        let answer = allocate(target).await;
        answers.insert(target.addr.clone(), (Instant::now(), answer.clone()));
        answer
    }
}

async fn allocate(target: &CheckTarget<'_>) -> Answer {
    let conn = UdpSocket::bind("0.0.0.0:0").await.map_err(|e| format!("no socket: {e}"))?;
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
    .map_err(|e| e.to_string())?;
    client.listen().await.map_err(|e| e.to_string())?;
    let answer = match tokio::time::timeout(CHECK_TIMEOUT, client.allocate()).await {
        Ok(Ok(relay)) => {
            let _ = relay.close().await; // gives the allocation back
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    };
    let _ = client.close().await;
    answer
}
