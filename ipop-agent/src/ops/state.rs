//! The state directory (`/var/lib/ipop/<overlay>/` by default): the node's long-term key,
//! made on the first run and reused on every one after. The directory is made 0700, the key
//! file 0600; a key file others could read, or a directory others could write (and so swap
//! the key), stops the start. The CA's directory (`ipop-agent ca`) keeps its key the same way.

use std::{
    fs::{self, DirBuilder, OpenOptions},
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use ipop_cert::NodeKey;
use tracing::info;

/// Where the state of an agent of `overlay` lives unless `state_dir` says otherwise.
pub fn default_state_dir(overlay: &str) -> PathBuf {
    Path::new("/var/lib/ipop").join(overlay)
}

const KEY_FILE: &str = "node.key";

/// The node's key in `dir`: read, or made and kept there on the first run.
pub fn node_key(dir: &Path) -> Result<NodeKey> {
    match read_key(dir, KEY_FILE)? {
        Some(key) => Ok(key),
        None => make_key(dir, KEY_FILE),
    }
}

/// The key in `dir`/`name`, if there is one; refused if others could read it or swap it.
pub fn read_key(dir: &Path, name: &str) -> Result<Option<NodeKey>> {
    open_dir(dir)?;
    let path = dir.join(name);
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    if mode & 0o077 != 0 {
        bail!(
            "{} can be read by others (mode {mode:03o}): chmod 600 it (and make a new key if it leaked)",
            path.display()
        );
    }
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let key = NodeKey::from_text(&text).with_context(|| format!("{} holds no key", path.display()))?;
    Ok(Some(key))
}

/// The directory, made 0700 if missing (its parents as usual); refused if others may write it.
pub fn open_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        if let Some(parent) = dir.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        match DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {} // made meanwhile
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    let meta = fs::metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() {
        bail!("state directory {} is not a directory", dir.display());
    }
    if mode & 0o022 != 0 {
        bail!("state directory {} can be written by others (mode {mode:03o}): chmod 700 it", dir.display());
    }
    Ok(())
}

/// A new key in `dir`/`name` (never over an existing file), 0600.
pub fn make_key(dir: &Path, name: &str) -> Result<NodeKey> {
    open_dir(dir)?;
    let path = &dir.join(name);
    let key = NodeKey::generate();
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(key.to_text().as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    info!(path = %path.display(), public_key = %key.public(), "made a new key");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipop-state-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_key_is_made_once_kept_private_and_read_back() {
        let dir = scratch("once").join("lab");
        let first = node_key(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(fs::metadata(dir.join(KEY_FILE)).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(node_key(&dir).unwrap().public(), first.public(), "the same key on the next run");
        fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_key_others_can_read_or_a_directory_others_can_write_is_refused() {
        let dir = scratch("open");
        node_key(&dir).unwrap();
        let key = dir.join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!("{:#}", node_key(&dir).unwrap_err());
        assert!(err.contains("can be read by others (mode 644)") && err.contains("chmod 600"), "{err}");
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = format!("{:#}", node_key(&dir).unwrap_err());
        assert!(err.contains("can be written by others (mode 777)"), "{err}");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(&key, "not a key").unwrap();
        let err = format!("{:#}", node_key(&dir).unwrap_err());
        assert!(err.contains("holds no key"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
