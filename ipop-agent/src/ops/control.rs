//! The agent's control socket: `ipop-agent status` reads what only the running agent knows
//! (peers, link states, the switch's counters) as JSON. One unix socket per agent in
//! /run/ipop, named after its pin directory, mode 0660 (root and its group); each connection
//! gets one status document.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde_json::Value;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};

use crate::ops::lock::{LOCK_DIR, pin_dir_key};

pub fn socket_path(pin_dir: &Path) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("agent-{}.sock", pin_dir_key(pin_dir)))
}

/// The listening socket; removed on drop.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ControlSocket {
    /// Binds the socket. The caller holds the pin directory's lock, so a file already there
    /// belongs to a dead agent.
    pub fn bind(pin_dir: &Path) -> Result<Self> {
        let path = socket_path(pin_dir);
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
        // Connecting takes write permission: root and its group, whatever the umask was.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
        Ok(Self { listener, path })
    }

    /// Waits for a client and sends it `status`.
    pub async fn serve_one(&self, status: impl FnOnce() -> Value) -> Result<()> {
        let (mut stream, _) = self.listener.accept().await?;
        let mut doc = serde_json::to_vec(&status())?;
        doc.push(b'\n');
        tokio::spawn(async move {
            let _ = stream.write_all(&doc).await;
        });
        Ok(())
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Asks the agent of `pin_dir` for its status.
pub async fn query(pin_dir: &Path) -> Result<Value> {
    let path = socket_path(pin_dir);
    let mut stream = UnixStream::connect(&path).await.with_context(|| {
        format!("no ipop agent answers on {} (is it running with this pin directory?)", path.display())
    })?;
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .context("the agent did not answer")??;
    serde_json::from_slice(&buf).context("the agent's status is not JSON")
}
