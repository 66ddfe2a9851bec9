//! Certificates for the lab's TLS servers (coturn's `turns:`, the XMPP servers), made with
//! the openssl command for each run: a CA of the run's own, and server certificates it signs.

use std::path::Path;

use crate::command::ok;

const EC: [&str; 5] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];

/// `openssl req` with a new P-256 key.
fn req(first: &[&str], rest: &[&str]) {
    ok(&[&["openssl", "req"][..], first, &EC, rest].concat());
}

/// Makes a CA of its own (`ca`, key `ca_key`), PEM, valid for a day: one that signed nothing
/// is also a stranger to trust instead of the right one.
pub fn make_ca(ca: &Path, ca_key: &Path) {
    let (ca, ca_key) = (ca.to_str().unwrap(), ca_key.to_str().unwrap());
    req(&["-x509", "-days", "1"], &["-subj", "/CN=ipop lab CA", "-keyout", ca_key, "-out", ca]);
}

/// Makes a CA (`ca`, key `ca_key`) and a certificate for `ip` signed by it (`cert`, `key`),
/// all PEM, valid for a day.
pub fn issue(ip: &str, ca: &Path, cert: &Path, key: &Path, ca_key: &Path) {
    make_ca(ca, ca_key);
    sign(&[format!("IP:{ip}")], "1", (ca, ca_key), cert, key);
}

/// Makes a CA (`ca`, its key beside it) and a certificate for `names` (`DNS:...`, `IP:...`)
/// signed by it (`cert`, `key`): valid for a day, or `expired` (valid for no time at all).
pub fn issue_for(names: &[String], expired: bool, ca: &Path, cert: &Path, key: &Path) {
    let ca_key = ca.with_extension("key");
    make_ca(ca, &ca_key);
    sign(names, if expired { "0" } else { "1" }, (ca, &ca_key), cert, key);
    if expired {
        std::thread::sleep(std::time::Duration::from_millis(1100)); // past its one second
    }
}

/// A certificate for `names`, valid for `days`, signed by `ca` (certificate, key).
fn sign(names: &[String], days: &str, (ca, ca_key): (&Path, &Path), cert: &Path, key: &Path) {
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let (ca, cert, key, ca_key) = (p(ca), p(cert), p(key), p(ca_key));
    let csr = format!("{cert}.csr");
    let ext = format!("{cert}.ext");
    let first = names[0].split_once(':').map_or(names[0].as_str(), |(_, n)| n);
    std::fs::write(&ext, format!("subjectAltName={}\nbasicConstraints=CA:FALSE\n", names.join(","))).unwrap();
    req(&["-new"], &["-subj", &format!("/CN={first}"), "-keyout", &key, "-out", &csr]);
    ok(&[
        "openssl",
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        days,
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
}
