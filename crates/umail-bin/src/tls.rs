//! TLS server configuration: the operator's certificate, or a self-signed
//! one generated once in the data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use umail_core::config::TlsConfig;

/// Builds the acceptor shared by every TLS listener.
pub fn load_acceptor(
    config: &TlsConfig,
    data_dir: &Path,
    hostname: &str,
) -> Result<(tokio_rustls::TlsAcceptor, PathBuf)> {
    let (cert_path, key_path) = match (&config.cert, &config.key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        (None, None) => ensure_self_signed(data_dir, hostname)?,
        _ => bail!("[tls] needs both `cert` and `key`, or neither"),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing certificate {}", cert_path.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .with_context(|| format!("reading private key {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(server)), cert_path))
}

/// Generates `tls/cert.pem` and `tls/key.pem` under `data_dir` on first use.
fn ensure_self_signed(data_dir: &Path, hostname: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if cert_path.exists() && key_path.exists() {
        return Ok((cert_path, key_path));
    }
    crate::create_private_dir(&dir)?;
    let mut names = vec![hostname.to_string()];
    if hostname != "localhost" {
        names.push("localhost".to_string());
    }
    let certified = rcgen::generate_simple_self_signed(names).context("generating certificate")?;
    write_private(&key_path, certified.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, certified.cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    tracing::info!(target: "admin", path = %cert_path.display(), "generated a self-signed certificate");
    Ok((cert_path, key_path))
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents)?;
    f.sync_all()?;
    Ok(())
}
