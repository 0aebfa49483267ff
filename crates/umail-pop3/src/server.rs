//! The tokio driver: owns the socket, feeds lines to a [`Session`], performs
//! its requests against [`Services`] and writes its outputs.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;
use umail_core::config::{Pop3Config, Pop3DeleteAction};
use umail_core::net::LimitExceeded;
use umail_core::store::INBOX;
use umail_core::{
    ConnectionInfo, MailboxId, MaybeTlsStream, Services, Shutdown, SpecialUse, StoreError, Uid,
};

use crate::codec::{Line, LineReader, MAX_LINE};
use crate::session::{
    OpenError, Output, Reply, Request, Session, SessionConfig, Snapshot, SnapshotEntry,
};
use crate::writer::ResponseWriter;

/// Which listener accepted the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerMode {
    /// Plain POP3 (port 110) with `STLS` when TLS is configured.
    Pop3,
    /// POP3 over implicit TLS (port 995).
    Pop3s,
}

/// A held per-account session slot (`max_sessions_per_user`).
pub(crate) type SessionSlot = umail_core::net::AccountSessionSlot;

/// The POP3 server: shared by every connection of the `pop3` and `pop3s`
/// listeners.
#[derive(Clone)]
pub struct Pop3Server {
    services: Services,
    config: Pop3Config,
    tls: Option<tokio_rustls::TlsAcceptor>,
    sessions: Arc<umail_core::net::AccountSessions>,
}

impl std::fmt::Debug for Pop3Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pop3Server")
            .field("hostname", &self.services.hostname)
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Pop3Server {
    /// A server over `services`. Without `tls`, `STLS` is not offered and
    /// `pop3s` connections are refused.
    pub fn new(
        services: Services,
        config: Pop3Config,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> Pop3Server {
        Pop3Server {
            services,
            config,
            tls,
            sessions: umail_core::net::AccountSessions::new(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &Pop3Config {
        &self.config
    }

    /// Sessions currently logged in to `account`.
    pub fn sessions_of(&self, account: &str) -> usize {
        self.sessions.count(account)
    }

    /// Tells a client that the connection limits are reached and closes.
    /// On `pop3s` the reply is sent before any TLS handshake, which TLS
    /// clients see as a failed handshake: the connection still ends.
    pub async fn refuse_connection<S: AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        reason: LimitExceeded,
    ) {
        tracing::info!(target: "pop3", %reason, "connection refused");
        let reply = crate::codec::err(
            Some(crate::codec::RespCode::SysTemp),
            &format!("{reason}; try again later"),
        );
        let _ = stream.write_all(&reply).await;
        let _ = stream.shutdown().await;
    }

    /// Runs one connection to its end.
    pub async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
        &self,
        stream: S,
        info: ConnectionInfo,
        mode: ListenerMode,
        shutdown: Shutdown,
    ) {
        let span = tracing::info_span!(
            target: "pop3",
            "pop3",
            session = info.session_id,
            peer = %info.peer,
            listener = %info.listener
        );
        self.run(stream, info, mode, shutdown)
            .instrument(span)
            .await;
    }

    pub(crate) fn session_config(&self, info: &ConnectionInfo, tls_active: bool) -> SessionConfig {
        SessionConfig {
            hostname: self.services.hostname.clone(),
            peer: info.peer.ip(),
            tls_active,
            tls_available: self.tls.is_some(),
            plaintext_auth_without_tls: self.config.plaintext_auth_without_tls,
            max_auth_failures: self.config.max_auth_failures,
            delete_action: self.config.delete_action,
        }
    }

    pub(crate) fn new_session(&self, info: &ConnectionInfo, tls_active: bool) -> Session {
        Session::new(
            self.session_config(info, tls_active),
            Arc::clone(&self.services.lockout),
        )
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
        if mode == ListenerMode::Pop3s {
            let Some(acceptor) = &self.tls else {
                tracing::warn!(target: "pop3", "pop3s connection but no TLS configured");
                return;
            };
            stream = match tokio::time::timeout(idle, stream.upgrade(acceptor)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(target: "pop3", error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(target: "pop3", "TLS handshake timed out");
                    return;
                }
            };
        }
        tracing::debug!(target: "pop3", tls = stream.is_tls(), "session started");
        let mut session = self.new_session(&info, stream.is_tls());
        let mut reader = LineReader::new(MAX_LINE);
        let mut slot: Option<SessionSlot> = None;
        // Every byte to the client goes through `out`, which keeps the
        // order of status lines and message bodies.
        let mut out = ResponseWriter::new();
        loop {
            while let Some(request) = session.poll_request() {
                let reply = self.execute(request, &mut slot).await;
                session.handle_reply(reply);
            }
            let mut start_tls = false;
            let mut close = false;
            while let Some(output) = session.poll_output() {
                let r = match output {
                    Output::Data(bytes) => {
                        out.push(&bytes);
                        Ok(())
                    }
                    Output::Message(encoder) => out.write_message(&mut stream, encoder).await,
                    Output::StartTls => {
                        start_tls = true;
                        Ok(())
                    }
                    Output::Close => {
                        close = true;
                        Ok(())
                    }
                };
                if r.is_err() {
                    return;
                }
            }
            if close {
                let _ = out.flush(&mut stream).await;
                let _ = stream.shutdown().await;
                tracing::debug!(target: "pop3", "session closed");
                return;
            }
            if start_tls {
                if out.flush(&mut stream).await.is_err() {
                    return;
                }
                // RFC 2595 §4: anything pipelined after STLS is discarded.
                reader.clear();
                let Some(acceptor) = &self.tls else {
                    return;
                };
                stream = match tokio::time::timeout(idle, stream.upgrade(acceptor)).await {
                    Ok(Ok(s)) => s,
                    _ => {
                        tracing::debug!(target: "pop3", "STLS handshake failed");
                        return;
                    }
                };
                session.handle_tls_established();
                continue;
            }
            match reader.next_line() {
                Some(Line::Complete(line)) => {
                    session.handle_line(&line);
                    continue;
                }
                Some(Line::TooLong) => {
                    session.handle_line_too_long();
                    continue;
                }
                None => {}
            }
            if shutdown.is_triggered() {
                session.handle_shutdown();
                continue;
            }
            if out.flush(&mut stream).await.is_err() {
                return;
            }
            tokio::select! {
                r = tokio::time::timeout(idle, stream.read_buf(reader.buffer())) => match r {
                    Err(_) => session.handle_timeout(),
                    Ok(Ok(0)) | Ok(Err(_)) => {
                        // Dropped without QUIT: no UPDATE state, nothing deleted.
                        tracing::debug!(target: "pop3", "connection dropped");
                        return;
                    }
                    Ok(Ok(_)) => {}
                },
                _ = shutdown.wait() => session.handle_shutdown(),
            }
        }
    }

    /// Performs one session request against the services.
    pub(crate) async fn execute(&self, request: Request, slot: &mut Option<SessionSlot>) -> Reply {
        let dir = &self.services.directory;
        let store = &self.services.store;
        match request {
            Request::VerifyPassword { username, password } => {
                Reply::Principal(dir.verify_password(&username, &password).await)
            }
            Request::Principal { username } => Reply::Principal(dir.principal(&username).await),
            Request::ScramCredentials { username } => {
                Reply::ScramCredentials(dir.scram_credentials(&username).await)
            }
            Request::LegacySecret { username } => {
                Reply::LegacySecret(dir.legacy_secret(&username).await)
            }
            Request::OpenMaildrop { account } => {
                *slot = None;
                let Some(s) = self
                    .sessions
                    .try_acquire(&account, self.config.max_sessions_per_user)
                else {
                    return Reply::Maildrop(Err(OpenError::InUse));
                };
                match self.snapshot(&account).await {
                    Ok(snap) => {
                        *slot = Some(s);
                        Reply::Maildrop(Ok(snap))
                    }
                    Err(e) => Reply::Maildrop(Err(OpenError::Store(e))),
                }
            }
            Request::Fetch {
                account,
                mailbox,
                uid,
            } => Reply::Content(store.message_content(&account, mailbox, uid).await),
            Request::Commit {
                account,
                mailbox,
                uids,
                action,
            } => Reply::Committed(self.commit(&account, mailbox, &uids, action).await),
        }
    }

    async fn snapshot(&self, account: &str) -> Result<Snapshot, StoreError> {
        let store = &self.services.store;
        let inbox = match store.mailbox(account, INBOX).await? {
            Some(m) => m,
            None => {
                // First use: listing creates the default mailboxes.
                store.list_mailboxes(account).await?;
                store
                    .mailbox(account, INBOX)
                    .await?
                    .ok_or_else(|| StoreError::NoSuchMailbox(INBOX.to_string()))?
            }
        };
        let messages = store
            .messages(account, inbox.id)
            .await?
            .into_iter()
            .map(|m| SnapshotEntry {
                uid: m.uid,
                size: m.size,
            })
            .collect();
        Ok(Snapshot {
            mailbox: inbox.id,
            uid_validity: inbox.uid_validity,
            messages,
        })
    }

    // RFC 1939 §6: UPDATE state. Messages another session already removed
    // are skipped silently.
    async fn commit(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
        action: Pop3DeleteAction,
    ) -> Result<Vec<Uid>, StoreError> {
        let store = &self.services.store;
        let present: std::collections::BTreeSet<Uid> = store
            .messages(account, mailbox)
            .await?
            .into_iter()
            .map(|m| m.uid)
            .collect();
        let victims: Vec<Uid> = uids
            .iter()
            .copied()
            .filter(|u| present.contains(u))
            .collect();
        if victims.is_empty() {
            return Ok(Vec::new());
        }
        match action {
            Pop3DeleteAction::Expunge => store.remove(account, mailbox, &victims).await,
            Pop3DeleteAction::Trash => {
                let trash = store
                    .list_mailboxes(account)
                    .await?
                    .into_iter()
                    .find(|m| m.special_use == Some(SpecialUse::Trash))
                    .map(|m| m.name);
                let trash = match trash {
                    Some(name) => name,
                    None => {
                        store
                            .create_mailbox(account, "Trash", Some(SpecialUse::Trash))
                            .await?
                            .name
                    }
                };
                let (_, moved) = store
                    .move_messages(account, mailbox, &victims, &trash)
                    .await?;
                Ok(moved.into_iter().map(|(from, _)| from).collect())
            }
        }
    }
}
