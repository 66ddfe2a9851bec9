//! Whom a TLS client trusts: the system's roots and the certificates of a CA file the operator
//! gives. Shared by the XMPP backend and TURN over TLS.

use std::{path::Path, sync::Arc};

use anyhow::{Context as _, Result};
use tokio_rustls::rustls;

/// A client configuration that verifies servers against the system's roots and `ca_file`'s
/// (PEM), with ring's cryptography.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert); // the system's store may hold certificates rustls cannot use
    }
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path).with_context(|| format!("reading {}", path.display()))?;
        let mut any = false;
        for cert in certs {
            let cert = cert.with_context(|| format!("reading {}", path.display()))?;
            roots.add(cert).with_context(|| format!("a certificate in {}", path.display()))?;
            any = true;
        }
        anyhow::ensure!(any, "{} holds no PEM certificate", path.display());
    }
    anyhow::ensure!(!roots.is_empty(), "no trusted certificates (the system has none): give a CA file");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
