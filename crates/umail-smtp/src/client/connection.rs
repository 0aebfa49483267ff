//! The tokio driver of the SMTP client: one connection to one peer, reused
//! for several transactions.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use umail_core::net::AcceptAnyServerCert;
use umail_core::{Envelope, Recipient};

use super::protocol::{self, Capabilities};
use super::reply::{ReplyParser, ServerReply};

/// Timeouts of one client session. The defaults are those of
/// `[delivery.timeouts]` (RFC 5321 §4.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Initial 220 greeting (§4.5.3.2.1: 5 minutes).
    pub greeting: Duration,
    /// EHLO, STARTTLS, AUTH, RSET and other commands (5 minutes).
    pub command: Duration,
    /// MAIL (§4.5.3.2.2: 5 minutes).
    pub mail: Duration,
    /// RCPT (§4.5.3.2.3: 5 minutes).
    pub rcpt: Duration,
    /// DATA initiation (§4.5.3.2.4: 2 minutes).
    pub data_init: Duration,
    /// Each block of data written (§4.5.3.2.5: 3 minutes).
    pub data_block: Duration,
    /// Reply to the final dot (§4.5.3.2.6: 10 minutes).
    pub data_term: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::from(&umail_core::config::ClientTimeoutsConfig::default())
    }
}

impl From<&umail_core::config::ClientTimeoutsConfig> for Timeouts {
    /// The `[delivery.timeouts]` settings; a zero is raised to one second
    /// so that no operation waits forever or fails at once.
    fn from(c: &umail_core::config::ClientTimeoutsConfig) -> Timeouts {
        let secs = |s: u64| Duration::from_secs(s.max(1));
        Timeouts {
            connect: secs(c.connect_secs),
            greeting: secs(c.greeting_secs),
            command: secs(c.command_secs),
            mail: secs(c.mail_secs),
            rcpt: secs(c.rcpt_secs),
            data_init: secs(c.data_init_secs),
            data_block: secs(c.data_block_secs),
            data_term: secs(c.data_term_secs),
        }
    }
}

impl Timeouts {
    /// Every timeout set to `d` (tests, benches).
    pub fn uniform(d: Duration) -> Timeouts {
        Timeouts {
            connect: d,
            greeting: d,
            command: d,
            mail: d,
            rcpt: d,
            data_init: d,
            data_block: d,
            data_term: d,
        }
    }
}

/// How TLS is used on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsPolicy {
    /// STARTTLS when offered; plain text otherwise or if the handshake fails.
    #[default]
    Opportunistic,
    /// STARTTLS must succeed, or the attempt fails temporarily.
    Required,
    /// TLS from the first byte (port 465, RFC 8314).
    Implicit,
    /// Never use TLS.
    Disabled,
}

/// Settings for one connection.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Our name in EHLO/HELO.
    pub hello_name: String,
    /// The peer's host name, for SNI and certificate checks.
    pub server_name: String,
    /// TLS use.
    pub tls: TlsPolicy,
    /// Check the peer's certificate against the system's roots.
    pub verify_certificate: bool,
    /// AUTH credentials (smart hosts); sent only over TLS.
    pub auth: Option<(String, String)>,
    /// Timeouts.
    pub timeouts: Timeouts,
}

/// How one recipient fared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// Accepted by the peer after DATA.
    Delivered(ServerReply),
    /// Temporary failure: retry later (or try another host).
    Deferred(ServerReply),
    /// Permanent failure.
    Failed(ServerReply),
}

impl RcptOutcome {
    fn from_reply(r: ServerReply) -> RcptOutcome {
        if r.is_positive() {
            RcptOutcome::Delivered(r)
        } else if r.is_transient() {
            RcptOutcome::Deferred(r)
        } else {
            RcptOutcome::Failed(r)
        }
    }

    /// The reply behind the outcome.
    pub fn reply(&self) -> &ServerReply {
        match self {
            RcptOutcome::Delivered(r) | RcptOutcome::Deferred(r) | RcptOutcome::Failed(r) => r,
        }
    }
}

/// Client-side failures that end a connection or an attempt.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer did not answer in time.
    #[error("timeout waiting for {0}")]
    Timeout(&'static str),
    /// The peer closed the connection.
    #[error("connection closed by peer during {0}")]
    Closed(&'static str),
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(#[from] super::reply::ReplyError),
    /// TLS failed or was required and not offered.
    #[error("TLS: {0}")]
    Tls(String),
    /// AUTH failed or was not possible.
    #[error("authentication: {0}")]
    Auth(ServerReply),
    /// The peer refused the session (greeting, EHLO/HELO, MAIL, DATA ...).
    #[error("{stage}: {reply}")]
    Rejected {
        /// Where it happened.
        stage: &'static str,
        /// The reply.
        reply: ServerReply,
    },
}

impl ClientError {
    /// The reply that best describes this error, as a DSN diagnostic.
    pub fn as_reply(&self) -> ServerReply {
        match self {
            ClientError::Rejected { reply, .. } | ClientError::Auth(reply) => reply.clone(),
            ClientError::Tls(t) => ServerReply::new(451, format!("4.7.5 TLS: {t}")),
            ClientError::Timeout(s) => {
                ServerReply::new(451, format!("4.4.2 timeout waiting for {s}"))
            }
            ClientError::Closed(s) => {
                ServerReply::new(451, format!("4.4.2 connection closed during {s}"))
            }
            ClientError::Protocol(e) => ServerReply::new(451, format!("4.5.0 {e}")),
            ClientError::Io(e) => ServerReply::new(451, format!("4.4.1 {e}")),
        }
    }

    /// True when the failure is the peer's permanent verdict (5xx).
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Rejected { reply, .. } if reply.is_permanent())
    }
}

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Closed,
}

impl Stream {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
            Stream::Closed => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }
}

async fn read_reply<S: AsyncRead + Unpin>(
    s: &mut S,
    parser: &mut ReplyParser,
    stage: &'static str,
) -> Result<ServerReply, ClientError> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(r) = parser.next_reply()? {
            return Ok(r);
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(ClientError::Closed(stage));
        }
        parser.feed(&buf[..n]);
    }
}

/// A TLS client configuration for the given verification policy.
pub fn tls_config(verify: bool) -> Result<Arc<ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?;
    let config = if verify {
        let v = rustls_platform_verifier::Verifier::new(provider)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(v))
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert::new(provider)))
            .with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// An open, greeted SMTP connection.
#[derive(Debug)]
pub struct SmtpConnection {
    stream: Stream,
    parser: ReplyParser,
    caps: Capabilities,
    settings: ClientSettings,
    peer: SocketAddr,
    tls: bool,
    dirty: bool,
    transactions: usize,
}

impl SmtpConnection {
    /// Connects, reads the greeting, says EHLO (HELO as a fallback),
    /// upgrades with STARTTLS per the policy and authenticates if asked.
    pub async fn connect(
        addr: SocketAddr,
        settings: ClientSettings,
    ) -> Result<SmtpConnection, ClientError> {
        let t = settings.timeouts;
        let tcp = tokio::time::timeout(t.connect, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout("connect"))??;
        let _ = tcp.set_nodelay(true);
        let mut conn = SmtpConnection {
            stream: Stream::Plain(tcp),
            parser: ReplyParser::new(),
            caps: Capabilities::default(),
            settings,
            peer: addr,
            tls: false,
            dirty: false,
            transactions: 0,
        };
        if conn.settings.tls == TlsPolicy::Implicit {
            conn.handshake().await?;
        }
        let greeting = conn.read(t.greeting, "greeting").await?;
        // RFC 5321 §3.1: a 554 greeting means no service here.
        if greeting.code != 220 {
            return Err(ClientError::Rejected {
                stage: "greeting",
                reply: greeting,
            });
        }
        conn.hello().await?;
        if !conn.tls && conn.settings.tls != TlsPolicy::Disabled {
            if conn.caps.starttls {
                // RFC 3207 §4.
                conn.write(b"STARTTLS\r\n", t.command).await?;
                let r = conn.read(t.command, "STARTTLS").await?;
                if r.code == 220 {
                    // RFC 3207 §4.2: discard anything read before the handshake.
                    conn.parser.clear();
                    conn.handshake().await?;
                    // RFC 3207 §4.2: forget what we knew and say EHLO again.
                    conn.hello().await?;
                } else if conn.settings.tls == TlsPolicy::Required {
                    return Err(ClientError::Tls(format!("STARTTLS refused: {r}")));
                }
            } else if conn.settings.tls == TlsPolicy::Required {
                return Err(ClientError::Tls("STARTTLS not offered".into()));
            }
        }
        if conn.settings.auth.is_some() {
            conn.authenticate().await?;
        }
        Ok(conn)
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The peer's capabilities (after the last EHLO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// True once TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Transactions completed on this connection.
    pub fn transactions(&self) -> usize {
        self.transactions
    }

    async fn handshake(&mut self) -> Result<(), ClientError> {
        let config = tls_config(self.settings.verify_certificate)?;
        let name = ServerName::try_from(self.settings.server_name.clone())
            .or_else(|_| ServerName::try_from(self.peer.ip().to_string()))
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Closed) else {
            return Err(ClientError::Tls("already TLS".into()));
        };
        let tls = tokio::time::timeout(
            self.settings.timeouts.command,
            TlsConnector::from(config).connect(name, tcp),
        )
        .await
        .map_err(|_| ClientError::Timeout("TLS handshake"))?
        .map_err(|e| ClientError::Tls(e.to_string()))?;
        self.stream = Stream::Tls(Box::new(tls));
        self.tls = true;
        Ok(())
    }

    async fn hello(&mut self) -> Result<(), ClientError> {
        let t = self.settings.timeouts.command;
        let name = self.settings.hello_name.clone();
        self.write(format!("EHLO {name}\r\n").as_bytes(), t).await?;
        let r = self.read(t, "EHLO").await?;
        if r.code == 250 {
            self.caps = Capabilities::from_ehlo(&r);
            return Ok(());
        }
        // RFC 5321 §3.2: fall back to HELO when EHLO is not understood.
        self.write(format!("HELO {name}\r\n").as_bytes(), t).await?;
        let r = self.read(t, "HELO").await?;
        if r.code != 250 {
            return Err(ClientError::Rejected {
                stage: "HELO",
                reply: r,
            });
        }
        self.caps = Capabilities::default();
        Ok(())
    }

    async fn authenticate(&mut self) -> Result<(), ClientError> {
        let Some((user, pass)) = self.settings.auth.clone() else {
            return Ok(());
        };
        let t = self.settings.timeouts.command;
        // Credentials never travel in clear text.
        if !self.tls {
            return Err(ClientError::Tls(
                "AUTH requires TLS and TLS is not active".into(),
            ));
        }
        if self.caps.auth.iter().any(|m| m == "PLAIN") {
            self.write(&protocol::auth_plain(&user, &pass), t).await?;
            let r = self.read(t, "AUTH").await?;
            return if r.code == 235 {
                Ok(())
            } else {
                Err(ClientError::Auth(r))
            };
        }
        if self.caps.auth.iter().any(|m| m == "LOGIN") {
            self.write(b"AUTH LOGIN\r\n", t).await?;
            for secret in [user, pass] {
                let r = self.read(t, "AUTH").await?;
                if r.code != 334 {
                    return Err(ClientError::Auth(r));
                }
                self.write(&protocol::base64_line(&secret), t).await?;
            }
            let r = self.read(t, "AUTH").await?;
            return if r.code == 235 {
                Ok(())
            } else {
                Err(ClientError::Auth(r))
            };
        }
        Err(ClientError::Auth(ServerReply::new(
            530,
            "5.7.0 the server offers no supported AUTH mechanism",
        )))
    }

    async fn write(&mut self, bytes: &[u8], t: Duration) -> Result<(), ClientError> {
        tokio::time::timeout(t, self.stream.write_all(bytes))
            .await
            .map_err(|_| ClientError::Timeout("write"))??;
        Ok(())
    }

    async fn read(&mut self, t: Duration, stage: &'static str) -> Result<ServerReply, ClientError> {
        let parser = &mut self.parser;
        let fut = async {
            match &mut self.stream {
                Stream::Plain(s) => read_reply(s, parser, stage).await,
                Stream::Tls(s) => read_reply(s.as_mut(), parser, stage).await,
                Stream::Closed => Err(ClientError::Closed(stage)),
            }
        };
        tokio::time::timeout(t, fut)
            .await
            .map_err(|_| ClientError::Timeout(stage))?
    }

    /// Sends one message to `recipients`. Returns one outcome per
    /// recipient, in order. An `Err` means the connection is unusable and
    /// nothing is known to have been delivered.
    pub async fn send(
        &mut self,
        envelope: &Envelope,
        recipients: &[&Recipient],
        message: &[u8],
    ) -> Result<Vec<RcptOutcome>, ClientError> {
        let t = self.settings.timeouts;
        if self.dirty {
            // A previous transaction on this connection: start clean.
            self.write(b"RSET\r\n", t.command).await?;
            let r = self.read(t.command, "RSET").await?;
            if r.code != 250 {
                return Err(ClientError::Rejected {
                    stage: "RSET",
                    reply: r,
                });
            }
            self.dirty = false;
        }
        let size = message.len() as u64;
        if let Err(refusal) = protocol::preflight(&self.caps, envelope, recipients, size) {
            let code = if refusal.permanent { 554 } else { 451 };
            let r = ServerReply::new(code, format!("{} {}", refusal.status, refusal.text));
            return Ok(recipients
                .iter()
                .map(|_| RcptOutcome::from_reply(r.clone()))
                .collect());
        }
        self.dirty = true;
        let eight = protocol::has_eight_bit(message);
        let mail = protocol::mail_from(&self.caps, envelope, size, eight);
        let rcpts: Vec<Vec<u8>> = recipients
            .iter()
            .map(|r| protocol::rcpt_to(&self.caps, r))
            .collect();
        let chunking = self.caps.chunking;
        let mut rcpt_replies = Vec::with_capacity(recipients.len());
        let mail_reply;
        if self.caps.pipelining {
            // RFC 2920 §3.1: MAIL, RCPTs (and DATA) in one group.
            let mut batch = mail.clone();
            for r in &rcpts {
                batch.extend_from_slice(r);
            }
            self.write(&batch, t.mail).await?;
            mail_reply = self.read(t.mail, "MAIL").await?;
            for _ in &rcpts {
                rcpt_replies.push(self.read(t.rcpt, "RCPT").await?);
            }
        } else {
            self.write(&mail, t.mail).await?;
            mail_reply = self.read(t.mail, "MAIL").await?;
            if mail_reply.is_positive() {
                for r in &rcpts {
                    self.write(r, t.rcpt).await?;
                    rcpt_replies.push(self.read(t.rcpt, "RCPT").await?);
                }
            }
        }
        if !mail_reply.is_positive() {
            // The sender was refused: every recipient shares that verdict.
            return Ok(recipients
                .iter()
                .map(|_| RcptOutcome::from_reply(mail_reply.clone()))
                .collect());
        }
        let accepted: Vec<usize> = rcpt_replies
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_positive())
            .map(|(i, _)| i)
            .collect();
        let mut out: Vec<RcptOutcome> = rcpt_replies
            .into_iter()
            .map(RcptOutcome::from_reply)
            .collect();
        if accepted.is_empty() {
            return Ok(out);
        }
        let final_reply = if chunking {
            // RFC 3030 §2: one BDAT LAST chunk carries the whole message.
            let mut m = message.to_vec();
            if !m.ends_with(b"\r\n") {
                m.extend_from_slice(b"\r\n");
            }
            let mut cmd = format!("BDAT {} LAST\r\n", m.len()).into_bytes();
            cmd.extend_from_slice(&m);
            self.write(&cmd, t.data_block.max(t.data_term)).await?;
            self.read(t.data_term, "BDAT").await?
        } else {
            self.write(b"DATA\r\n", t.data_init).await?;
            let r = self.read(t.data_init, "DATA").await?;
            if r.code != 354 {
                for i in &accepted {
                    out[*i] = RcptOutcome::from_reply(r.clone());
                }
                return Ok(out);
            }
            let body = protocol::dot_stuff(message);
            for chunk in body.chunks(64 * 1024) {
                self.write(chunk, t.data_block).await?;
            }
            self.read(t.data_term, "end of data").await?
        };
        for i in accepted {
            out[i] = RcptOutcome::from_reply(final_reply.clone());
        }
        self.transactions += 1;
        Ok(out)
    }

    /// Says QUIT and closes (errors are ignored: the work is done).
    pub async fn quit(mut self) {
        let t = Duration::from_secs(5).min(self.settings.timeouts.command);
        if self.write(b"QUIT\r\n", t).await.is_ok() {
            let _ = self.read(t, "QUIT").await;
        }
    }
}
