//! The tokio driver: owns the socket, feeds the [`Session`], writes its
//! output, handles STARTTLS, IDLE wake-ups, timeouts and shutdown.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;
use umail_core::config::ImapConfig;
use umail_core::net::{AccountSessions, LimitExceeded};
use umail_core::{ConnectionInfo, MaybeTlsStream, Services, Shutdown};

use std::sync::Arc;

use crate::cache::HeaderCache;
use crate::codec::Framer;
use crate::session::{Action, InputMode, Session};

/// Which kind of listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Plain IMAP (port 143) with STARTTLS when a certificate is configured.
    Imap,
    /// Implicit TLS (port 993, RFC 8314).
    Imaps,
}

/// An IMAP server: services, configuration, the TLS acceptor and the
/// header cache its sessions share (clones share it too).
#[derive(Clone)]
pub struct ImapServer {
    services: Services,
    config: ImapConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_cache: Arc<HeaderCache>,
    /// Logged-in sessions per account (`max_sessions_per_user`).
    account_sessions: Arc<AccountSessions>,
}

impl std::fmt::Debug for ImapServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapServer")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

const READ_CHUNK: usize = 16 * 1024;
/// The read buffer of a connection in IDLE, where only `DONE` is expected:
/// thousands of idle connections must not each hold a full chunk.
const IDLE_READ_CHUNK: usize = 64;

impl ImapServer {
    /// A server over `services` with `config`; `tls` enables STARTTLS and IMAPS.
    pub fn new(
        services: Services,
        config: ImapConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> ImapServer {
        ImapServer {
            services,
            config,
            tls,
            header_cache: Arc::new(HeaderCache::default()),
            account_sessions: AccountSessions::new(),
        }
    }

    /// Says `* BYE` to a connection refused by the connection limiter.
    pub async fn refuse_connection<S: AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        reason: LimitExceeded,
    ) {
        let line = format!("* BYE {reason}\r\n");
        let _ = stream.write_all(line.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// Serves one connection until LOGOUT, error, timeout or shutdown.
    pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        info: ConnectionInfo,
        mode: ListenerMode,
        shutdown: Shutdown,
    ) {
        let span = tracing::info_span!(target: "imap", "imap", session = info.session_id, peer = %info.peer);
        self.serve_inner(stream, info, mode, shutdown)
            .instrument(span)
            .await
    }

    async fn serve_inner<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        info: ConnectionInfo,
        mode: ListenerMode,
        shutdown: Shutdown,
    ) {
        let mut stream = MaybeTlsStream::Plain(stream);
        if mode == ListenerMode::Imaps {
            let Some(acceptor) = &self.tls else {
                tracing::warn!(target: "imap", "IMAPS listener without TLS configuration");
                return;
            };
            stream = match stream.upgrade(acceptor).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(target: "imap", error = %e, "TLS handshake failed");
                    return;
                }
            };
        }
        let tls_active = stream.is_tls();
        let session = Session::new(
            self.services.clone(),
            self.config.clone(),
            info,
            self.tls.is_some(),
            tls_active,
        )
        .with_header_cache(Arc::clone(&self.header_cache))
        .with_account_sessions(Arc::clone(&self.account_sessions));
        if let Err(e) = self.run(stream, session, shutdown).await {
            tracing::debug!(target: "imap", error = %e, "connection ended");
        }
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        mut stream: MaybeTlsStream<S>,
        mut session: Session,
        mut shutdown: Shutdown,
    ) -> std::io::Result<()> {
        let mut framer = Framer::new(session.framer_limits());
        let mut buf = vec![0u8; READ_CHUNK];
        session.greeting();
        if shutdown.is_triggered() {
            session.shutdown();
        }
        loop {
            let out = session.take_output();
            if !out.is_empty() {
                stream.write_all(&out).await?;
                stream.flush().await?;
            }
            if session.is_closing() {
                let _ = stream.shutdown().await;
                return Ok(());
            }
            // Process what is already buffered before reading more.
            if let Some(action) = self.process_buffered(&mut framer, &mut session).await {
                match action {
                    Action::Continue => continue,
                    Action::Close => continue,
                    Action::StartTls => {
                        let out = session.take_output();
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        // RFC 9051 §6.2.1: drop anything pipelined after STARTTLS.
                        framer.discard_buffered();
                        let Some(acceptor) = &self.tls else {
                            return Ok(());
                        };
                        stream = stream.upgrade(acceptor).await?;
                        session.tls_started();
                        continue;
                    }
                }
            }
            let idling = session.input_mode() == InputMode::IdleLine;
            let want = if idling { IDLE_READ_CHUNK } else { READ_CHUNK };
            if buf.len() != want {
                buf = vec![0u8; want];
                if idling {
                    framer.shrink();
                }
            }
            let timeout = session.idle_timeout();
            tokio::select! {
                r = stream.read(&mut buf) => {
                    let n = r?;
                    if n == 0 {
                        return Ok(());
                    }
                    framer.push(&buf[..n]);
                }
                _ = session.changed(), if idling => {
                    Box::pin(session.idle_update()).await;
                }
                _ = tokio::time::sleep(timeout) => {
                    session.timeout();
                }
                _ = shutdown.wait() => {
                    session.shutdown();
                }
            }
        }
    }

    /// Runs the session on one buffered unit of input, if any. The command
    /// futures are boxed: their state exists only while a command runs,
    /// instead of enlarging every connection's task (idle ones included).
    async fn process_buffered(&self, framer: &mut Framer, session: &mut Session) -> Option<Action> {
        match session.input_mode() {
            InputMode::Command => {
                let ev = framer.next_event()?;
                Some(Box::pin(session.handle_frame(ev)).await)
            }
            InputMode::AuthLine => {
                let line = framer.next_line()?.unwrap_or_else(|()| b"*".to_vec());
                Some(Box::pin(session.handle_auth_line(&line)).await)
            }
            InputMode::IdleLine => {
                let line = framer.next_line()?.unwrap_or_default();
                Some(Box::pin(session.handle_idle_line(&line)).await)
            }
        }
    }
}
