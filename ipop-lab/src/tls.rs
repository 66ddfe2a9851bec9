//! Certificates for the lab's TLS servers (coturn's `turns:`), made with the openssl command
//! for each run: a CA of the run's own, and a server certificate it signs for one IP address.

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
    let p = |path: &Path| path.to_str().unwrap().to_owned();
    let (ca, cert, key, ca_key) = (p(ca), p(cert), p(key), p(ca_key));
    let csr = format!("{cert}.csr");
    let ext = format!("{cert}.ext");
    std::fs::write(&ext, format!("subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n")).unwrap();
    req(&["-new"], &["-subj", &format!("/CN={ip}"), "-keyout", &key, "-out", &csr]);
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
        "1",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
}
