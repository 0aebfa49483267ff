//! From stored settings ([`RemoteServer`] and friends) to a client
//! connection: the TLS trust (system CA bundle plus the account's own CA
//! file, or no verification when asked) and a [`RemoteAccount`].

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use umail_core::collection::{DEFAULT_MAX_REMOTE_MESSAGE, RemoteServer, TlsMode};
use umail_core::net::AcceptAnyServerCert;

use super::fetch::{CollectError, RemoteAccount};
use crate::client::{ConnectOptions, LoginMethod, Secret, Security};

/// System CA bundles tried, in order.
const CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The TLS client for a remote server: the system CA bundle plus the
/// server's `ca_file`, or no verification when `tls_verify` is off.
pub fn tls_connector(server: &RemoteServer) -> Result<tokio_rustls::TlsConnector, CollectError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| CollectError::Settings(format!("TLS versions: {e}")))?;
    let config = if server.tls_verify {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(bundle) = CA_BUNDLES.iter().find(|p| std::path::Path::new(p).exists())
            && let Ok(iter) = CertificateDer::pem_file_iter(bundle)
        {
            roots.add_parsable_certificates(iter.filter_map(Result::ok));
        }
        if let Some(file) = &server.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                .map_err(|e| CollectError::Settings(format!("reading {file}: {e}")))?
                .collect::<Result<_, _>>()
                .map_err(|e| CollectError::Settings(format!("parsing {file}: {e}")))?;
            if certs.is_empty() {
                return Err(CollectError::Settings(format!("no certificate in {file}")));
            }
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(CollectError::Settings(format!(
                    "no usable certificate in {file}"
                )));
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(provider)))
            .with_no_client_auth()
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// How one remote mailbox is collected, as stored.
#[derive(Debug, Clone, Copy)]
pub struct CollectSettings {
    /// Keep collected messages on the server.
    pub leave_on_server: bool,
    /// With `leave_on_server`: delete this many days after collecting
    /// (0 = never).
    pub delete_after_days: u32,
    /// Larger messages are skipped (0 = [`DEFAULT_MAX_REMOTE_MESSAGE`]).
    pub max_message_size: u64,
    /// Most messages downloaded per fetch (0 = no limit).
    pub max_messages_per_fetch: u64,
    /// Timeout of each exchange with the remote server.
    pub timeout: Duration,
}

impl RemoteAccount {
    /// The account to collect `server` with `settings`. Fails when the TLS
    /// trust cannot be set up (an unreadable CA file).
    pub fn from_settings(
        server: &RemoteServer,
        settings: &CollectSettings,
    ) -> Result<RemoteAccount, CollectError> {
        let security = match server.tls {
            TlsMode::Implicit => Security::Implicit,
            TlsMode::Starttls => Security::StartTls,
            TlsMode::None => Security::None,
        };
        let tls = match security {
            Security::None => None,
            _ => Some(tls_connector(server)?),
        };
        let mut connect = ConnectOptions::new(server.host.clone(), server.port, security, tls);
        connect.timeout = settings.timeout;
        Ok(RemoteAccount {
            connect,
            username: server.username.clone(),
            password: Secret::new(server.password.expose()),
            login: if server.apop {
                LoginMethod::Apop
            } else {
                LoginMethod::Password
            },
            leave_on_server: settings.leave_on_server,
            max_messages_per_fetch: usize::try_from(settings.max_messages_per_fetch)
                .unwrap_or(usize::MAX),
            max_message_size: if settings.max_message_size == 0 {
                DEFAULT_MAX_REMOTE_MESSAGE
            } else {
                settings.max_message_size
            },
            delete_after_secs: u64::from(settings.delete_after_days) * 86_400,
        })
    }
}

#[cfg(test)]
mod tests {
    use umail_core::collection::RemotePassword;

    use super::*;

    fn server(tls: TlsMode) -> RemoteServer {
        RemoteServer {
            host: "pop.example.net".into(),
            port: 995,
            tls,
            tls_verify: true,
            ca_file: None,
            username: "u".into(),
            password: RemotePassword::new("hunter2"),
            apop: false,
        }
    }

    fn settings(leave: bool, days: u32, size: u64, per_fetch: u64) -> CollectSettings {
        CollectSettings {
            leave_on_server: leave,
            delete_after_days: days,
            max_message_size: size,
            max_messages_per_fetch: per_fetch,
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn settings_map_to_the_client() {
        let r = RemoteAccount::from_settings(&server(TlsMode::Starttls), &settings(false, 2, 0, 7))
            .unwrap();
        assert_eq!(r.connect.security, Security::StartTls);
        assert!(r.connect.tls.is_some());
        assert_eq!(r.max_message_size, DEFAULT_MAX_REMOTE_MESSAGE);
        assert_eq!(r.delete_after_secs, 2 * 86_400);
        assert_eq!(r.max_messages_per_fetch, 7);
        assert!(!format!("{r:?}").contains("hunter2"));
        let r =
            RemoteAccount::from_settings(&server(TlsMode::None), &settings(true, 0, 5, 0)).unwrap();
        assert!(r.connect.tls.is_none());
        let mut s = server(TlsMode::Implicit);
        s.ca_file = Some("/nonexistent/ca.pem".into());
        let all = settings(true, 0, 0, 0);
        assert!(matches!(
            RemoteAccount::from_settings(&s, &all),
            Err(CollectError::Settings(_))
        ));
        s.tls_verify = false;
        assert!(RemoteAccount::from_settings(&s, &all).is_ok());
    }
}
