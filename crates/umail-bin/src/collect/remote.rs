//! Running one fetch: the TLS client configuration, the durable
//! [`CollectionState`] over the store's seen sets, the in-process lock that
//! keeps two fetches of the same remote mailbox apart, and the glue that
//! turns stored settings into `umail_pop3::collect` calls.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use umail_core::net::AcceptAnyServerCert;
use umail_core::{Address, Directory, MailStore};
use umail_pop3::client::{ConnectOptions, LoginMethod, Secret, Security};
use umail_pop3::collect::{
    CollectError, CollectionState, DomainPopRouting, FetchReport, RemoteAccount, StateError,
    async_trait, fetch_domainpop, fetch_multipop,
};
use umail_store::collection::DEFAULT_MAX_REMOTE_MESSAGE;
use umail_store::{DomainPopInfo, FetchOutcome, RemoteAccountInfo, RemoteServer, Store, TlsMode};

/// Timeout of each exchange with a remote server.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

/// System CA bundles tried, in order.
const CA_BUNDLES: [&str; 4] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The TLS client for a remote server: the system CA bundle plus the
/// server's `ca_file`, or no verification when `tls_verify` is off.
pub fn tls_connector(server: &RemoteServer) -> Result<tokio_rustls::TlsConnector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?;
    let config = if server.tls_verify {
        let mut roots = rustls::RootCertStore::empty();
        if let Some(bundle) = CA_BUNDLES.iter().find(|p| std::path::Path::new(p).exists())
            && let Ok(iter) = CertificateDer::pem_file_iter(bundle)
        {
            roots.add_parsable_certificates(iter.filter_map(Result::ok));
        }
        if let Some(file) = &server.ca_file {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
                .map_err(|e| format!("reading {file}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("parsing {file}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("no certificate in {file}"));
            }
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("no usable certificate in {file}"));
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

/// A `umail_pop3` account description for stored settings.
pub fn remote_account(
    server: &RemoteServer,
    leave_on_server: bool,
    delete_after_days: u32,
    max_message_size: u64,
    max_messages_per_fetch: u64,
) -> Result<RemoteAccount, String> {
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
    connect.timeout = REMOTE_TIMEOUT;
    Ok(RemoteAccount {
        connect,
        username: server.username.clone(),
        password: Secret::new(server.password.expose()),
        login: if server.apop {
            LoginMethod::Apop
        } else {
            LoginMethod::Password
        },
        leave_on_server,
        max_messages_per_fetch: usize::try_from(max_messages_per_fetch).unwrap_or(usize::MAX),
        max_message_size: if max_message_size == 0 {
            DEFAULT_MAX_REMOTE_MESSAGE
        } else {
            max_message_size
        },
        delete_after_secs: u64::from(delete_after_days) * 86_400,
    })
}

/// A callback run after each id is recorded.
pub type MarkHook = Box<dyn Fn(&str) + Send + Sync>;

/// A durable [`CollectionState`] over the store's seen sets: `source`
/// becomes the set `<prefix><source>`. Message-ID sets (`...#message-id`)
/// are bounded to `max_message_ids`.
pub struct StoreState {
    store: Store,
    prefix: String,
    max_message_ids: u64,
    /// Called after each recorded id (progress display).
    pub on_mark: Option<MarkHook>,
}

impl StoreState {
    /// A state whose sets live under `prefix`.
    pub fn new(store: Store, prefix: String, max_message_ids: u64) -> StoreState {
        StoreState {
            store,
            prefix,
            max_message_ids,
            on_mark: None,
        }
    }

    fn set(&self, source: &str) -> String {
        format!("{}{source}", self.prefix)
    }
}

fn state_err(e: umail_store::AdminError) -> StateError {
    StateError::Backend(e.to_string())
}

#[async_trait]
impl CollectionState for StoreState {
    async fn seen(&self, source: &str) -> Result<HashSet<String>, StateError> {
        self.store.seen_ids(&self.set(source)).map_err(state_err)
    }

    async fn mark_seen(&self, source: &str, id: &str) -> Result<(), StateError> {
        let max = if source.ends_with("#message-id") {
            self.max_message_ids
        } else {
            0
        };
        self.store
            .mark_seen(&self.set(source), id, umail_core::unix_now(), max)
            .await
            .map_err(state_err)?;
        if let Some(f) = &self.on_mark {
            f(id);
        }
        Ok(())
    }

    async fn retain(&self, source: &str, keep: &HashSet<String>) -> Result<(), StateError> {
        self.store
            .retain_seen(&self.set(source), keep)
            .await
            .map(drop)
            .map_err(state_err)
    }

    async fn contains(&self, source: &str, id: &str) -> Result<bool, StateError> {
        self.store
            .seen_contains(&self.set(source), id)
            .map_err(state_err)
    }

    async fn seen_before(&self, source: &str, cutoff: i64) -> Result<HashSet<String>, StateError> {
        self.store
            .seen_before(&self.set(source), cutoff)
            .map_err(state_err)
    }
}

/// Keys of the fetches running in this process.
fn in_flight() -> &'static Mutex<HashSet<String>> {
    static SET: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    SET.get_or_init(Default::default)
}

/// Held while a remote mailbox is being fetched; released on drop.
pub struct FetchGuard(String);

impl FetchGuard {
    /// Claims `key`; `None` when a fetch of it is already running.
    pub fn claim(key: &str) -> Option<FetchGuard> {
        let mut set = in_flight().lock().unwrap_or_else(|e| e.into_inner());
        set.insert(key.to_string())
            .then(|| FetchGuard(key.to_string()))
    }

    /// True when a fetch of `key` runs.
    pub fn busy(key: &str) -> bool {
        in_flight()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }
}

impl Drop for FetchGuard {
    fn drop(&mut self) {
        in_flight()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

/// One-line summary of a fetch.
pub fn summary(r: &FetchReport) -> String {
    let mut s = format!(
        "{} fetched, {} on server, {} seen before",
        r.fetched, r.on_server, r.already_seen
    );
    for (n, what) in [
        (r.deleted, "deleted on server"),
        (r.skipped_too_large, "too large"),
        (r.deferred, "deferred"),
        (r.duplicates, "duplicates"),
        (r.to_fallback, "to fallback"),
        (r.undeliverable, "undeliverable"),
        (r.over_quota, "over quota"),
    ] {
        if n > 0 {
            s.push_str(&format!(", {n} {what}"));
        }
    }
    s
}

/// The error text of a failed fetch (never contains the password: the
/// client's errors carry only the server's replies and i/o errors).
pub fn error_text(e: &CollectError) -> String {
    e.to_string()
}

/// Fetches one MultiPOP account now and records the outcome.
pub async fn run_remote(
    store: &Store,
    mail: &dyn MailStore,
    info: &RemoteAccountInfo,
) -> Result<FetchReport, String> {
    let key = info.seen_prefix();
    let Some(_guard) = FetchGuard::claim(&key) else {
        return Err("a fetch of this account is already running".into());
    };
    let domain = info
        .account
        .rsplit_once('@')
        .and_then(|(_, d)| umail_core::Domain::parse(d).ok());
    let limits = store
        .collect_limits(domain.as_ref())
        .map_err(|e| e.to_string())?;
    let started = umail_core::unix_now();
    let c = &info.config;
    let result = match remote_account(
        &c.server,
        c.leave_on_server,
        c.delete_after_days,
        c.max_message_size,
        limits.max_messages_per_fetch,
    ) {
        Ok(remote) => {
            let state = StoreState::new(store.clone(), key.clone(), 0);
            fetch_multipop(&remote, mail, &info.account, &c.folder, &state)
                .await
                .map_err(|e| error_text(&e))
        }
        Err(e) => Err(e),
    };
    let outcome = FetchOutcome {
        started,
        finished: umail_core::unix_now(),
        ok: result.is_ok(),
        fetched: result.as_ref().map_or(0, |r| r.fetched as u64),
        message: match &result {
            Ok(r) => summary(r),
            Err(e) => e.clone(),
        },
    };
    match &result {
        Ok(r) => tracing::info!(target: "pop3", account = %info.account, id = info.id,
            remote = %c.server.display(), result = %summary(r), "MultiPOP fetch done"),
        Err(e) => tracing::warn!(target: "pop3", account = %info.account, id = info.id,
            remote = %c.server.display(), error = %e, "MultiPOP fetch failed"),
    }
    if let Err(e) = store
        .record_remote_fetch(&info.account, info.id, outcome)
        .await
    {
        tracing::warn!(target: "pop3", account = %info.account, error = %e, "cannot record fetch status");
    }
    result
}

/// Fetches one DomainPOP account now and records the outcome.
pub async fn run_domain(
    store: &Store,
    mail: &dyn MailStore,
    directory: &dyn Directory,
    info: &DomainPopInfo,
) -> Result<FetchReport, String> {
    let key = umail_store::collection::domain_pop_seen_prefix(&info.domain);
    let Some(_guard) = FetchGuard::claim(&key) else {
        return Err("a fetch of this domain is already running".into());
    };
    let domain = umail_core::Domain::parse(&info.domain).ok();
    let limits = store
        .collect_limits(domain.as_ref())
        .map_err(|e| e.to_string())?;
    let started = umail_core::unix_now();
    let c = &info.config;
    let result = async {
        let remote = remote_account(
            &c.server,
            c.leave_on_server,
            c.delete_after_days,
            c.max_message_size,
            limits.max_messages_per_fetch,
        )?;
        let fallback = match &c.fallback {
            Some(f) => Some(Address::parse(f).map_err(|e| format!("fallback {f}: {e}"))?),
            None => None,
        };
        let routing = DomainPopRouting {
            fallback,
            dedupe_message_id: c.dedupe_message_id,
            headers: c.headers.clone(),
            skip_received: c.skip_received as usize,
            ..DomainPopRouting::default()
        };
        let max_ids = if c.max_message_ids == 0 {
            umail_store::collection::DEFAULT_MAX_MESSAGE_IDS
        } else {
            c.max_message_ids
        };
        let state = StoreState::new(store.clone(), key.clone(), max_ids);
        fetch_domainpop(&remote, mail, directory, &routing, &state)
            .await
            .map_err(|e| error_text(&e))
    }
    .await;
    match &result {
        Ok(r) => tracing::info!(target: "pop3", domain = %info.domain,
            remote = %c.server.display(), result = %summary(r), "DomainPOP fetch done"),
        Err(e) => tracing::warn!(target: "pop3", domain = %info.domain,
            remote = %c.server.display(), error = %e, "DomainPOP fetch failed"),
    }
    let outcome = FetchOutcome {
        started,
        finished: umail_core::unix_now(),
        ok: result.is_ok(),
        fetched: result.as_ref().map_or(0, |r| r.fetched as u64),
        message: match &result {
            Ok(r) => summary(r),
            Err(e) => e.clone(),
        },
    };
    if let Err(e) = store.record_domain_pop_fetch(&info.domain, outcome).await {
        tracing::warn!(target: "pop3", domain = %info.domain, error = %e, "cannot record fetch status");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use umail_store::RemotePassword;

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

    #[test]
    fn settings_map_to_the_client() {
        let r = remote_account(&server(TlsMode::Starttls), false, 2, 0, 7).unwrap();
        assert_eq!(r.connect.security, Security::StartTls);
        assert!(r.connect.tls.is_some());
        assert_eq!(r.max_message_size, DEFAULT_MAX_REMOTE_MESSAGE);
        assert_eq!(r.delete_after_secs, 2 * 86_400);
        assert_eq!(r.max_messages_per_fetch, 7);
        assert!(!format!("{r:?}").contains("hunter2"));
        let r = remote_account(&server(TlsMode::None), true, 0, 5, 0).unwrap();
        assert!(r.connect.tls.is_none());
        let mut s = server(TlsMode::Implicit);
        s.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(remote_account(&s, true, 0, 0, 0).is_err());
        s.tls_verify = false;
        assert!(remote_account(&s, true, 0, 0, 0).is_ok());
    }

    #[test]
    fn guard_excludes_a_second_fetch() {
        let g = FetchGuard::claim("k-test").unwrap();
        assert!(FetchGuard::claim("k-test").is_none());
        assert!(FetchGuard::busy("k-test"));
        drop(g);
        assert!(FetchGuard::claim("k-test").is_some());
    }
}
