//! Connection plumbing shared by the protocol servers: a stream that may be
//! upgraded to TLS, connection limits, shutdown signalling and the bundle of
//! services a session needs.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_rustls::server::TlsStream;

use crate::directory::Directory;
use crate::filter::Filter;
use crate::lockout::AuthLockout;
use crate::model::TlsInfo;
use crate::queue::QueueStore;
use crate::store::MailStore;

/// Everything a protocol session needs from the rest of the system.
#[derive(Clone)]
pub struct Services {
    /// Accounts, aliases, lists, domains.
    pub directory: Arc<dyn Directory>,
    /// Mailboxes and messages.
    pub store: Arc<dyn MailStore>,
    /// The outbound queue.
    pub queue: Arc<dyn QueueStore>,
    /// The policy chain.
    pub filter: Arc<dyn Filter>,
    /// Failed-authentication accounting shared by all protocols.
    pub lockout: Arc<AuthLockout>,
    /// The server's host name (greetings, `Received`).
    pub hostname: String,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("hostname", &self.hostname)
            .finish_non_exhaustive()
    }
}

/// A server-side stream that is either plain or TLS, so a session can
/// upgrade in place on STARTTLS/STLS.
#[derive(Debug)]
pub enum MaybeTlsStream<S> {
    /// Plain TCP (or any byte stream).
    Plain(S),
    /// TLS over the stream.
    Tls(Box<TlsStream<S>>),
}

impl<S> MaybeTlsStream<S> {
    /// True when TLS is active.
    pub fn is_tls(&self) -> bool {
        matches!(self, MaybeTlsStream::Tls(_))
    }

    /// Protocol version and cipher suite when TLS is active.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match self {
            MaybeTlsStream::Plain(_) => None,
            MaybeTlsStream::Tls(t) => {
                let (_, conn) = t.get_ref();
                Some(TlsInfo {
                    version: conn
                        .protocol_version()
                        .and_then(|v| v.as_str())
                        .unwrap_or("TLS")
                        .replace("TLSv1_", "TLSv1.")
                        .to_string(),
                    cipher: conn
                        .negotiated_cipher_suite()
                        .and_then(|c| c.suite().as_str())
                        .unwrap_or("unknown")
                        .to_string(),
                })
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> MaybeTlsStream<S> {
    /// Performs the TLS handshake on a plain stream. Any bytes the client
    /// sent before the handshake must already have been discarded by the
    /// caller (STARTTLS command injection, RFC 3207 §4).
    pub async fn upgrade(self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<Self> {
        match self {
            MaybeTlsStream::Plain(s) => {
                Ok(MaybeTlsStream::Tls(Box::new(acceptor.accept(s).await?)))
            }
            MaybeTlsStream::Tls(_) => Err(io::Error::other("TLS already active")),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for MaybeTlsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for MaybeTlsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Facts about an accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// Process-unique session id for logs.
    pub session_id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address.
    pub local: SocketAddr,
    /// The listener's name (`smtp`, `submission`, `imaps`, ...).
    pub listener: String,
}

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// A fresh process-unique session id.
pub fn next_session_id() -> u64 {
    NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed)
}

/// Why a connection was refused by the [`ConnectionLimiter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// The global session limit is reached.
    #[error("too many sessions")]
    Global,
    /// This client IP has too many sessions.
    #[error("too many sessions from this address")]
    PerIp,
}

/// Counts concurrent logged-in sessions per account, so that one account
/// (a client gone wild, a stolen password) cannot hold every connection.
/// Shared by the sessions of one protocol server; see
/// [`AccountSessions::try_acquire`].
#[derive(Debug, Default)]
pub struct AccountSessions {
    counts: Mutex<HashMap<String, usize>>,
}

/// A held per-account session slot, released on drop.
#[derive(Debug)]
pub struct AccountSessionSlot {
    registry: Arc<AccountSessions>,
    account: String,
}

impl AccountSessions {
    /// A registry with no sessions.
    pub fn new() -> Arc<AccountSessions> {
        Arc::new(AccountSessions::default())
    }

    /// Takes a slot for `account`, or `None` when it already has `max`
    /// sessions (`0` = unlimited). Keep the slot for the session's life.
    pub fn try_acquire(self: &Arc<Self>, account: &str, max: usize) -> Option<AccountSessionSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.entry(account.to_string()).or_insert(0);
        if max != 0 && *count >= max {
            return None;
        }
        *count += 1;
        Some(AccountSessionSlot {
            registry: Arc::clone(self),
            account: account.to_string(),
        })
    }

    /// Sessions `account` holds now.
    pub fn count(&self, account: &str) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(account)
            .copied()
            .unwrap_or(0)
    }
}

impl Drop for AccountSessionSlot {
    fn drop(&mut self) {
        let mut counts = self
            .registry
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = counts.get_mut(&self.account) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                counts.remove(&self.account);
            }
        }
    }
}

/// Counts concurrent sessions globally and per client IP.
#[derive(Debug)]
pub struct ConnectionLimiter {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnectionLimiter {
    /// A limiter; `0` means unlimited for either bound.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnectionLimiter> {
        Arc::new(ConnectionLimiter {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a slot for `ip`, released when the permit drops.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, LimitExceeded> {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if self.max_total != 0 && self.total.load(Ordering::Relaxed) >= self.max_total {
            return Err(LimitExceeded::Global);
        }
        let count = per_ip.entry(ip).or_insert(0);
        if self.max_per_ip != 0 && *count >= self.max_per_ip {
            return Err(LimitExceeded::PerIp);
        }
        *count += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(ConnectionPermit {
            limiter: Arc::clone(self),
            ip,
        })
    }

    /// Current number of sessions.
    pub fn active(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

/// A held session slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    limiter: Arc<ConnectionLimiter>,
    ip: IpAddr,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self
            .limiter
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(c) = per_ip.get_mut(&self.ip) {
            *c -= 1;
            if *c == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The sending half of the shutdown signal, held by the server.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// The receiving half, cloned into every session. Sessions check it at
/// command boundaries: an in-flight transaction finishes, then the session
/// says goodbye (`421`, `* BYE`, `-ERR`).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and signal.
pub fn shutdown_channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Signals every session to finish.
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// True once shutdown has been signalled.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when shutdown is signalled (immediately if it already was).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }

    /// A signal that never triggers, for tests and simple embeddings.
    pub fn never() -> Shutdown {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so `wait` never returns.
        std::mem::forget(tx);
        Shutdown(rx)
    }
}

/// A client-side certificate verifier that accepts any server certificate,
/// for connections an operator configured without verification
/// (opportunistic STARTTLS per RFC 7435, a remote POP3 server with a
/// self-signed certificate). The connection is encrypted but not
/// authenticated; handshake signatures are still checked.
#[derive(Debug)]
pub struct AcceptAnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl AcceptAnyServerCert {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: Arc<rustls::crypto::CryptoProvider>) -> AcceptAnyServerCert {
        AcceptAnyServerCert(provider)
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_counts_per_ip_and_globally() {
        let l = ConnectionLimiter::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = l.try_acquire(a).unwrap();
        let _p2 = l.try_acquire(a).unwrap();
        assert_eq!(l.try_acquire(a).unwrap_err(), LimitExceeded::PerIp);
        let _p3 = l.try_acquire(b).unwrap();
        assert_eq!(l.try_acquire(b).unwrap_err(), LimitExceeded::Global);
        drop(p1);
        assert_eq!(l.active(), 2);
        assert!(l.try_acquire(a).is_ok());
    }

    #[tokio::test]
    async fn shutdown_signal_reaches_clones() {
        let (trigger, shutdown) = shutdown_channel();
        let mut s2 = shutdown.clone();
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        s2.wait().await;
        assert!(shutdown.is_triggered());
    }
}
