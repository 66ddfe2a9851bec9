//! `ipop-agent ca`: the overlay's certificate authority, kept offline by the operator in a
//! directory of its own: `ca.key` (0600, in a 0700 directory), `ca.pub`, and `revoked.json`,
//! the latest revocation list. Certificates and lists are `ipop_cert` documents.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use clap::{Args, Subcommand};
use ipnet::IpNet;
use ipop_cert::{CertBody, Certificate, NodeKey, PublicKey, RevocationList};

use crate::{
    core::{addr::parse_host_mac, digest::hex},
    ops::state,
    signaling::admission::unix_now,
};

const KEY: &str = "ca.key";
const PUBLIC: &str = "ca.pub";
const REVOKED: &str = "revoked.json";

#[derive(Args, Debug)]
pub struct CaArgs {
    /// The CA's directory.
    #[arg(long, global = true, default_value = "ipop-ca")]
    pub dir: PathBuf,
    #[command(subcommand)]
    pub command: CaCommand,
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Make the CA: its key, its public half (`ca.pub`, for every agent) and an empty
    /// revocation list.
    Init,
    /// Issue a node certificate (to stdout, or `--out`).
    Sign(Box<SignArgs>),
    /// Revoke certificates by serial or file: writes the next revocation list.
    Revoke {
        /// Serials to revoke.
        #[arg(long, value_delimiter = ',')]
        serial: Vec<String>,
        /// Certificate files whose serials to revoke.
        #[arg(long)]
        cert: Vec<PathBuf>,
    },
    /// Print what a certificate or revocation list says, and whether this CA signed it.
    Show { file: PathBuf },
}

#[derive(Args, Debug)]
pub struct SignArgs {
    #[arg(long)]
    pub node_id: String,
    /// The node's public key (`ipop-agent key show` on the node).
    #[arg(long)]
    pub public_key: PublicKey,
    /// Addresses it may claim, e.g. 10.0.3.0/28,fd00::/64 [default: any].
    #[arg(long, value_delimiter = ',')]
    pub ips: Vec<IpNet>,
    /// MAC addresses its hosts may use [default: any].
    #[arg(long, value_delimiter = ',', value_parser = parse_host_mac)]
    pub macs: Vec<crate::core::addr::Mac>,
    /// Validity from now: 365d, 12h, 30m, 90s.
    #[arg(long, default_value = "365d", value_parser = parse_duration)]
    pub expires: Duration,
    /// Where to write it [default: stdout].
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn run(args: CaArgs) -> Result<()> {
    let dir = &args.dir;
    match args.command {
        CaCommand::Init => init(dir),
        CaCommand::Sign(s) => sign(dir, *s),
        CaCommand::Revoke { serial, cert } => revoke(dir, serial, &cert),
        CaCommand::Show { file } => show(dir, &file),
    }
}

fn init(dir: &Path) -> Result<()> {
    if state::read_key(dir, KEY)?.is_some() {
        bail!("{} already holds a CA key: a second `ca init` would orphan every certificate", dir.display());
    }
    let ca = state::make_key(dir, KEY)?;
    fs::write(dir.join(PUBLIC), format!("{}\n", ca.public()))?;
    fs::write(dir.join(REVOKED), RevocationList::empty(&ca, unix_now()).to_text())?;
    println!("{}", ca.public());
    eprintln!("CA made in {}: give {PUBLIC} to every agent (`ca_public_key`), keep {KEY} offline", dir.display());
    Ok(())
}

fn ca_key(dir: &Path) -> Result<NodeKey> {
    state::read_key(dir, KEY)?.with_context(|| format!("no CA in {} (ipop-agent ca init --dir ...)", dir.display()))
}

fn sign(dir: &Path, s: SignArgs) -> Result<()> {
    let ca = ca_key(dir)?;
    crate::core::node_id::check_node_id(&s.node_id).map_err(anyhow::Error::msg)?;
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| anyhow::anyhow!("getrandom: {e}"))?;
    let t = unix_now();
    let body = CertBody {
        serial: hex(&serial),
        node_id: s.node_id,
        public_key: s.public_key,
        ips: s.ips,
        macs: s.macs.iter().map(ToString::to_string).collect(),
        not_before: t,
        not_after: t + s.expires.as_secs(),
        ca: ca.public(),
    };
    let text = Certificate::issue(&ca, body).to_text();
    match s.out {
        Some(path) => fs::write(&path, format!("{text}\n")).with_context(|| format!("writing {}", path.display()))?,
        None => println!("{text}"),
    }
    Ok(())
}

fn revoke(dir: &Path, serials: Vec<String>, certs: &[PathBuf]) -> Result<()> {
    let ca = ca_key(dir)?;
    let mut all = serials;
    for path in certs {
        let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        all.push(Certificate::from_text(&text).with_context(|| path.display().to_string())?.body().serial.clone());
    }
    if all.is_empty() {
        bail!("nothing to revoke: give --serial or --cert");
    }
    let path = dir.join(REVOKED);
    let current = match fs::read_to_string(&path) {
        Ok(text) => RevocationList::from_text(&text).with_context(|| path.display().to_string())?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => RevocationList::empty(&ca, unix_now()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    current.verify(&ca.public()).with_context(|| format!("{} is not this CA's", path.display()))?;
    let next = current.with(&ca, all, unix_now());
    fs::write(&path, next.to_text()).with_context(|| format!("writing {}", path.display()))?;
    eprintln!(
        "revocation list {} written to {}: give it to every agent (`revocation_list`)",
        next.body().number,
        path.display()
    );
    Ok(())
}

fn show(dir: &Path, file: &Path) -> Result<()> {
    let text = fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let ca: Option<PublicKey> = fs::read_to_string(dir.join(PUBLIC)).ok().and_then(|t| t.trim().parse().ok());
    let revoked = fs::read_to_string(dir.join(REVOKED)).ok().and_then(|t| RevocationList::from_text(&t).ok());
    let (body, verdict) = match Certificate::from_text(&text) {
        Ok(cert) => {
            let serial = &cert.body().serial;
            let check = |ca: PublicKey| match cert.verify(&ca, unix_now()) {
                Err(e) => Err(e),
                Ok(_) if revoked.as_ref().is_some_and(|r| r.body().revoked.contains(serial)) => {
                    Err(ipop_cert::CertError::Revoked { serial: serial.clone() })
                }
                Ok(_) => Ok(()),
            };
            (serde_json::to_value(cert.body())?, ca.map(check))
        }
        Err(_) => {
            let list = RevocationList::from_text(&text).context("neither a certificate nor a revocation list")?;
            (serde_json::to_value(list.body())?, ca.map(|ca| list.verify(&ca).map(|_| ())))
        }
    };
    println!("{}", serde_json::to_string_pretty(&body)?);
    match verdict {
        Some(Ok(())) => eprintln!("valid: signed by the CA in {}", dir.display()),
        Some(Err(e)) => eprintln!("not valid for the CA in {}: {e}", dir.display()),
        None => eprintln!("no CA in {} to check it against", dir.display()),
    }
    Ok(())
}

/// `365d`, `12h`, `30m`, `90s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?}: a number and d, h, m or s (365d)");
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).filter(|&t| t > 0).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_operators_write_them() {
        assert_eq!(parse_duration("365d"), Ok(Duration::from_secs(365 * 86_400)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        for bad in ["", "d", "10", "10w", "0d", "-1d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
