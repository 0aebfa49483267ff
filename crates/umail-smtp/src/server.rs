//! The tokio driver: owns the socket, feeds the [`Session`], answers its
//! events through [`Policy`], performs the TLS handshakes and watches the
//! idle timer and the shutdown signal.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;
use umail_core::config::SmtpConfig;
use umail_core::net::LimitExceeded;
use umail_core::{ConnectionInfo, MaybeTlsStream, Reply, Services, Shutdown};

use crate::ListenerMode;
use crate::codec::encode_reply;
use crate::policy::Policy;
use crate::session::{Event, Session, SessionConfig};
use umail_core::ingest::{Ingest, IngestSettings};

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The SMTP server: shared by every connection of every SMTP listener.
#[derive(Clone)]
pub struct SmtpServer {
    services: Services,
    ingest: Ingest,
    config: SmtpConfig,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("services", &self.services)
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl SmtpServer {
    /// A server over `services` with the `[smtp]` settings; `tls` enables
    /// STARTTLS and is required for the `submissions` listener.
    pub fn new(
        services: Services,
        config: SmtpConfig,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> SmtpServer {
        SmtpServer {
            ingest: Ingest::new(services.clone(), IngestSettings::from_smtp(&config)),
            services,
            config,
            tls,
        }
    }

    /// The session configuration for `mode`.
    fn session_config(&self, mode: ListenerMode) -> SessionConfig {
        SessionConfig {
            hostname: self.services.hostname.clone(),
            mode,
            smtp: self.config.clone(),
            starttls: self.tls.is_some(),
            implicit_tls: None,
        }
    }

    /// Runs one session to completion (implicit TLS handshake first for
    /// [`ListenerMode::Submissions`]).
    pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        info: ConnectionInfo,
        mode: ListenerMode,
        shutdown: Shutdown,
    ) {
        let span = tracing::info_span!(
            target: "smtp.in",
            "smtp",
            session = info.session_id,
            peer = %info.peer,
            listener = %info.listener
        );
        self.run(stream, info, mode, shutdown)
            .instrument(span)
            .await
    }

    async fn run<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        info: ConnectionInfo,
        mode: ListenerMode,
        mut shutdown: Shutdown,
    ) {
        let idle = Duration::from_secs(self.config.idle_timeout_secs.max(1));
        let mut stream = MaybeTlsStream::Plain(stream);
        let mut config = self.session_config(mode);
        if mode == ListenerMode::Submissions {
            let Some(acceptor) = &self.tls else {
                tracing::error!(target: "smtp.in", "submissions listener without TLS configuration");
                return;
            };
            // RFC 8314 §3: implicit TLS, the handshake comes first.
            match tokio::time::timeout(idle, stream.upgrade(acceptor)).await {
                Ok(Ok(s)) => stream = s,
                Ok(Err(e)) => {
                    tracing::debug!(target: "smtp.in", error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            }
            config.implicit_tls = stream.tls_info();
        }
        tracing::debug!(target: "smtp.in", "session started");
        let mut session = Session::new(config, info);
        let mut policy = Policy::with_ingest(self.ingest.clone());
        let mut buf = vec![0u8; READ_CHUNK];
        let mut shutdown_seen = false;
        loop {
            if !shutdown_seen && shutdown.is_triggered() {
                shutdown_seen = true;
                session.handle_shutdown();
            }
            while let Some(event) = session.poll_event() {
                let unhandled = match policy.handle(&mut session, event).await {
                    Ok(u) => u,
                    Err(e) => {
                        tracing::error!(target: "smtp.in", error = %e, "session API misuse");
                        return;
                    }
                };
                if let Some(Event::StartTls) = unhandled {
                    if let Some(out) = session.poll_output()
                        && write_all(&mut stream, &out).await.is_err()
                    {
                        return;
                    }
                    let Some(acceptor) = &self.tls else {
                        let _ = session.handle_tls_result(None);
                        break;
                    };
                    // RFC 3207 §4.2: the handshake starts right after the 220.
                    match tokio::time::timeout(idle, stream.upgrade(acceptor)).await {
                        Ok(Ok(s)) => {
                            stream = s;
                            let _ = session.handle_tls_result(stream.tls_info());
                        }
                        _ => {
                            tracing::debug!(target: "smtp.in", "STARTTLS handshake failed");
                            return;
                        }
                    }
                }
            }
            if let Some(out) = session.poll_output()
                && write_all(&mut stream, &out).await.is_err()
            {
                return;
            }
            if session.is_closed() {
                let _ = stream.shutdown().await;
                tracing::debug!(target: "smtp.in", "session closed");
                return;
            }
            tokio::select! {
                biased;
                _ = shutdown.wait(), if !shutdown_seen => {
                    shutdown_seen = true;
                    session.handle_shutdown();
                }
                r = tokio::time::timeout(idle, stream.read(&mut buf)) => match r {
                    Err(_) => session.handle_timeout(),
                    Ok(Ok(0)) | Ok(Err(_)) => session.handle_eof(),
                    Ok(Ok(n)) => session.handle_input(&buf[..n]),
                },
            }
        }
    }

    /// Writes `421 4.7.0 ...` and closes, for a connection over the session limit.
    pub async fn refuse_connection<S: AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        reason: LimitExceeded,
    ) {
        let mut out = Vec::new();
        // RFC 5321 §3.1 / §4.2.3: 421 service not available, closing.
        encode_reply(
            &Reply::new(
                421,
                "4.7.0",
                format!("{} {reason}, try again later", self.services.hostname),
            ),
            &mut out,
        );
        let _ = stream.write_all(&out).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    }
}

async fn write_all<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}
