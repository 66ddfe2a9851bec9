//! The agent's control socket: `ipop-agent status` (and anything else that asks) reads what
//! only the running agent knows. One unix socket per agent in the run directory (/run/ipop), named after its pin
//! directory, mode 0660, its group the config's `control_group` (`ipop`) when that group
//! exists, so that group's members need no root.
//!
//! Request and response, one JSON line each, versioned: `{"v":1,"get":"status"}` (or
//! `peers`, `hosts`, `counters`, `topology`) is answered `{"v":1,"status":{...}}`; anything else gets
//! `{"v":1,"error":"..."}`. A connection that sends nothing within 2 s is closed. Each
//! connection is read by a task of its own; the agent's loop only answers (`Query`).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use crate::ops::lock::{pin_dir_key, run_dir};

/// The protocol's version.
pub const VERSION: u64 = 1;
/// What may be asked.
pub const REQUESTS: [&str; 5] = ["status", "peers", "hosts", "counters", "topology"];
/// The longest request taken.
const MAX_REQUEST: u64 = 1024;

pub fn socket_path(pin_dir: &Path) -> PathBuf {
    run_dir().join(format!("agent-{}.sock", pin_dir_key(pin_dir)))
}

/// A request the agent's loop answers: what was asked (one of `REQUESTS`), and where the
/// answer goes.
pub struct Query {
    pub get: String,
    answer: oneshot::Sender<Value>,
}

impl Query {
    pub fn answer(self, doc: Value) {
        let _ = self.answer.send(doc);
    }
}

/// The listening socket and its accepting task; the socket file is removed on drop.
pub struct ControlSocket {
    path: PathBuf,
    task: JoinHandle<()>,
}

impl ControlSocket {
    /// Binds the socket and starts accepting; the queries go to `queries`. The caller holds
    /// the pin directory's lock, so a file already there belongs to a dead agent.
    pub fn bind(pin_dir: &Path, group: &str, queries: mpsc::Sender<Query>) -> Result<Self> {
        let path = socket_path(pin_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        // Connecting takes write permission: root and its group, whatever the umask was.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        give_to_group(&path, group)?;
        let task = tokio::spawn(accept(listener, queries));
        Ok(Self { path, task })
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Gives the socket to `group` if it exists (the package makes it), else leaves it root's.
fn give_to_group(path: &Path, group: &str) -> Result<()> {
    let name = std::ffi::CString::new(group).context("a group name")?;
    // SAFETY: getgrnam reads a NUL-terminated name; the record it returns is read at once.
    let gid = unsafe { libc::getgrnam(name.as_ptr()).as_ref().map(|g| g.gr_gid) };
    let Some(gid) = gid else { return Ok(()) };
    match std::os::unix::fs::chown(path, None, Some(gid)) {
        // An agent run as its own user may only give its files to its own groups: the socket
        // keeps the agent's group (under ipop@.service that is `ipop` anyway).
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            tracing::warn!(%group, "the control socket stays with the agent's own group: this user is not in {group}");
            Ok(())
        }
        r => r.with_context(|| format!("giving {} to group {group}", path.display())),
    }
}

async fn accept(listener: UnixListener, queries: mpsc::Sender<Query>) {
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(serve(stream, queries.clone()));
    }
}

/// One connection: its request, the loop's answer, written back.
async fn serve(mut stream: UnixStream, queries: mpsc::Sender<Query>) {
    let (r, mut w) = stream.split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let read = reader.read_line(&mut line);
    let doc = match tokio::time::timeout(Duration::from_secs(2), read).await {
        Ok(Ok(_)) => match parse(&line) {
            Ok(get) => match ask(&queries, get.clone()).await {
                Some(doc) => Value::Object([("v".to_owned(), Value::from(VERSION)), (get, doc)].into_iter().collect()),
                None => json!({"v": VERSION, "error": "the agent is stopping"}),
            },
            Err(e) => json!({"v": VERSION, "error": e}),
        },
        _ => return,
    };
    let mut out = serde_json::to_vec(&doc).unwrap_or_default();
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}

/// Asks the agent's loop for `get` (one of `REQUESTS`); `None` if it is stopping.
pub async fn ask(queries: &mpsc::Sender<Query>, get: String) -> Option<Value> {
    let (answer, rx) = oneshot::channel();
    queries.send(Query { get, answer }).await.ok()?;
    rx.await.ok()
}

/// The request on a line: what it asks for, or why it is not one.
pub fn parse(line: &str) -> Result<String, String> {
    let v: Value = serde_json::from_str(line.trim()).map_err(|e| format!("not a JSON request: {e}"))?;
    if v.get("v").and_then(Value::as_u64) != Some(VERSION) {
        return Err(format!("this agent speaks version {VERSION} (\"v\":{VERSION})"));
    }
    match v.get("get").and_then(Value::as_str) {
        Some(get) if REQUESTS.contains(&get) => Ok(get.to_owned()),
        _ => Err(format!("\"get\" must be one of {}", REQUESTS.join(", "))),
    }
}

/// Asks the agent of `pin_dir` for `get`: the document.
pub async fn query(pin_dir: &Path, get: &str) -> Result<Value> {
    let path = socket_path(pin_dir);
    let mut stream = UnixStream::connect(&path).await.with_context(|| {
        format!("no ipop agent answers on {} (is it running with this pin directory?)", path.display())
    })?;
    let mut request = serde_json::to_vec(&json!({"v": VERSION, "get": get}))?;
    request.push(b'\n');
    stream.write_all(&request).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .context("the agent did not answer")??;
    let mut doc: Value = serde_json::from_slice(&buf).context("the agent's answer is not JSON")?;
    if let Some(e) = doc.get("error").and_then(Value::as_str) {
        anyhow::bail!("the agent refused the request: {e}");
    }
    doc.get_mut(get).map(Value::take).context("the agent's answer lacks what was asked")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_versioned_and_named() {
        assert_eq!(parse(r#"{"v":1,"get":"peers"}"#), Ok("peers".into()));
        assert!(parse(r#"{"v":2,"get":"peers"}"#).unwrap_err().contains("version 1"));
        assert!(parse(r#"{"v":1,"get":"secrets"}"#).unwrap_err().contains("status, peers, hosts, counters"));
        assert!(parse("status").unwrap_err().contains("not a JSON request"));
    }

    #[tokio::test]
    async fn a_query_is_answered_by_the_loop_and_garbage_gets_an_error() {
        let dir = std::env::temp_dir().join(format!("ipop-control-test-{}", std::process::id()));
        let sock = dir.join("s.sock");
        std::fs::create_dir_all(&dir).unwrap();
        let listener = UnixListener::bind(&sock).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let task = tokio::spawn(accept(listener, tx));
        tokio::spawn(async move {
            while let Some(q) = rx.recv().await {
                let doc = json!({"asked": q.get});
                q.answer(doc);
            }
        });
        let roundtrip = |line: &'static str| {
            let sock = sock.clone();
            async move {
                let mut s = UnixStream::connect(&sock).await.unwrap();
                s.write_all(line.as_bytes()).await.unwrap();
                let mut buf = String::new();
                s.read_to_string(&mut buf).await.unwrap();
                serde_json::from_str::<Value>(&buf).unwrap()
            }
        };
        assert_eq!(
            roundtrip("{\"v\":1,\"get\":\"counters\"}\n").await,
            json!({"v": 1, "counters": {"asked": "counters"}})
        );
        let err = roundtrip("hello\n").await;
        assert!(err["error"].as_str().unwrap().contains("not a JSON request"), "{err}");
        task.abort();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
