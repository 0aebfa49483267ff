//! A POP3 client for remote collection (MultiPOP, DomainPOP).
//!
//! * Sans-IO parts: [`parse_status`] (one `+OK`/`-ERR` line, with its RFC
//!   2449 response code), [`MultiLineDecoder`] (un-stuffing and the
//!   terminator of multi-line responses), [`parse_listing`] (`LIST`/`UIDL`
//!   lines), [`apop_timestamp`] and [`apop_digest`].
//! * [`Pop3Client`]: a tokio driver with implicit TLS or `STLS`
//!   (tokio-rustls), bounded lines and message sizes, and a timeout on
//!   every exchange.
//!
//! Passwords are held in [`Secret`], whose `Debug` prints nothing, and are
//! never logged.

use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::codec::{Line, LineReader};

/// Errors of the POP3 client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection failed or broke.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The server did not answer in time.
    #[error("timed out")]
    Timeout,
    /// The server's reply is not POP3.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered `-ERR`.
    #[error("server refused {command}: {text}")]
    Refused {
        /// The command refused.
        command: &'static str,
        /// The RFC 2449 response code, if any (`AUTH`, `IN-USE`, ...).
        code: Option<String>,
        /// The server's text.
        text: String,
    },
    /// TLS was required but could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The server does not support something needed (UIDL, STLS, APOP).
    #[error("server does not support {0}")]
    Unsupported(&'static str),
    /// A message or line is larger than the configured bound.
    #[error("response exceeds {0} bytes")]
    TooLarge(u64),
}

/// A password that never shows up in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The password itself (to send it to the server).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One `+OK`/`-ERR` status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    /// `+OK` (true) or `-ERR` (false).
    pub ok: bool,
    /// The bracketed response code (RFC 2449 §8), without brackets.
    pub code: Option<String>,
    /// The rest of the line.
    pub text: String,
}

/// Parses a status line (without its CRLF). SASL continuations (`+ `) are
/// reported as `ok` with the base64 text.
pub fn parse_status(line: &[u8]) -> Result<StatusLine, ClientError> {
    let text = String::from_utf8_lossy(line);
    let (ok, rest) = if let Some(r) = text.strip_prefix("+OK") {
        (true, r)
    } else if let Some(r) = text.strip_prefix("-ERR") {
        (false, r)
    } else if let Some(r) = text.strip_prefix("+ ") {
        return Ok(StatusLine {
            ok: true,
            code: None,
            text: r.to_string(),
        });
    } else if text == "+" {
        return Ok(StatusLine {
            ok: true,
            code: None,
            text: String::new(),
        });
    } else {
        let shown: String = text.chars().take(80).collect();
        return Err(ClientError::Protocol(format!(
            "not a status line: {shown:?}"
        )));
    };
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return Err(ClientError::Protocol("malformed status line".into()));
    }
    let rest = rest.trim_start();
    // RFC 2449 §8: an optional [CODE] right after the status indicator.
    if let Some(after) = rest.strip_prefix('[')
        && let Some(end) = after.find(']')
    {
        return Ok(StatusLine {
            ok,
            code: Some(after[..end].to_string()),
            text: after[end + 1..].trim_start().to_string(),
        });
    }
    Ok(StatusLine {
        ok,
        code: None,
        text: rest.to_string(),
    })
}

/// Reassembles the body of a multi-line response: lines are un-stuffed
/// (RFC 1939 §3) and joined with CRLF; the `.` line ends it. The size is
/// bounded.
#[derive(Debug)]
pub struct MultiLineDecoder {
    out: BytesMut,
    max: u64,
    done: bool,
}

impl MultiLineDecoder {
    /// A decoder that fails past `max` bytes of content.
    pub fn new(max: u64) -> MultiLineDecoder {
        MultiLineDecoder {
            out: BytesMut::new(),
            max,
            done: false,
        }
    }

    /// Feeds one line (without CRLF). Returns true at the terminator.
    pub fn push_line(&mut self, line: &[u8]) -> Result<bool, ClientError> {
        if self.done {
            return Ok(true);
        }
        if line == b"." {
            self.done = true;
            return Ok(true);
        }
        let line = line.strip_prefix(b".").unwrap_or(line);
        if (self.out.len() + line.len() + 2) as u64 > self.max {
            return Err(ClientError::TooLarge(self.max));
        }
        self.out.extend_from_slice(line);
        self.out.extend_from_slice(b"\r\n");
        Ok(false)
    }

    /// True once the terminator was seen.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The content.
    pub fn finish(self) -> Bytes {
        self.out.freeze()
    }
}

/// Parses a `LIST` or `UIDL` line: `msg rest`.
pub fn parse_listing(line: &[u8]) -> Option<(u32, String)> {
    let text = std::str::from_utf8(line).ok()?;
    let mut parts = text.split_ascii_whitespace();
    let n = parts.next()?;
    if !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u32 = n.parse().ok()?;
    let rest = parts.next()?.to_string();
    Some((n, rest))
}

/// The APOP timestamp (`<...>`) in a greeting, if any (RFC 1939 §7).
pub fn apop_timestamp(greeting: &str) -> Option<&str> {
    let start = greeting.find('<')?;
    let end = start + greeting[start..].find('>')?;
    let ts = &greeting[start..=end];
    ts.contains('@').then_some(ts)
}

/// `MD5(timestamp || secret)` in lower-case hex (RFC 1939 §7).
pub fn apop_digest(timestamp: &str, secret: &str) -> String {
    let mut h = Md5::new();
    h.update(timestamp.as_bytes());
    h.update(secret.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (port 995).
    Implicit,
    /// `STLS` is required before logging in (port 110).
    StartTls,
    /// No TLS: the password crosses the network in the clear unless APOP
    /// is used. Only for trusted networks.
    None,
}

/// How to log in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoginMethod {
    /// `AUTH PLAIN` when offered, else `USER`/`PASS`.
    #[default]
    Password,
    /// `APOP` (needs a timestamp in the greeting).
    Apop,
}

/// Where and how to connect.
#[derive(Clone)]
pub struct ConnectOptions {
    /// Host name (also the TLS server name).
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub security: Security,
    /// The TLS client configuration (required unless `Security::None`).
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// Timeout of each exchange.
    pub timeout: Duration,
    /// Longest line accepted from the server.
    pub max_line: usize,
}

impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Options with a 60 s timeout and a 64 KiB line bound.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        security: Security,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> ConnectOptions {
        ConnectOptions {
            host: host.into(),
            port,
            security,
            tls,
            timeout: Duration::from_secs(60),
            max_line: 64 * 1024,
        }
    }
}

/// A byte stream the client can run over (TCP, TLS, or a test pipe).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connected POP3 client.
pub struct Pop3Client {
    stream: Box<dyn Io>,
    reader: LineReader,
    timeout: Duration,
    greeting: String,
    tls: bool,
    capabilities: Option<Vec<String>>,
}

impl fmt::Debug for Pop3Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pop3Client")
            .field("greeting", &self.greeting)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Pop3Client {
    /// Connects, performs TLS as asked, and reads the greeting.
    pub async fn connect(options: &ConnectOptions) -> Result<Pop3Client, ClientError> {
        let tcp = tokio::time::timeout(
            options.timeout,
            TcpStream::connect((options.host.as_str(), options.port)),
        )
        .await
        .map_err(|_| ClientError::Timeout)??;
        let name = ServerName::try_from(options.host.clone())
            .map_err(|e| ClientError::Tls(format!("bad server name: {e}")))?;
        let stream: Box<dyn Io> = match options.security {
            Security::Implicit => {
                let connector = options
                    .tls
                    .as_ref()
                    .ok_or_else(|| ClientError::Tls("no TLS configuration".into()))?;
                let tls = tokio::time::timeout(options.timeout, connector.connect(name, tcp))
                    .await
                    .map_err(|_| ClientError::Timeout)??;
                Box::new(tls)
            }
            _ => Box::new(tcp),
        };
        let mut client = Pop3Client::over(
            stream,
            options.timeout,
            options.max_line,
            options.security == Security::Implicit,
        )
        .await?;
        if options.security == Security::StartTls {
            let connector = options
                .tls
                .clone()
                .ok_or_else(|| ClientError::Tls("no TLS configuration".into()))?;
            let name = ServerName::try_from(options.host.clone())
                .map_err(|e| ClientError::Tls(format!("bad server name: {e}")))?;
            client.stls(&connector, name).await?;
        }
        Ok(client)
    }

    /// Runs over an established stream and reads the greeting.
    pub async fn over(
        stream: Box<dyn Io>,
        timeout: Duration,
        max_line: usize,
        tls: bool,
    ) -> Result<Pop3Client, ClientError> {
        let mut c = Pop3Client {
            stream,
            reader: LineReader::new(max_line),
            timeout,
            greeting: String::new(),
            tls,
            capabilities: None,
        };
        let g = c.status("greeting").await?;
        c.greeting = g.text;
        Ok(c)
    }

    /// The greeting text after `+OK`.
    pub fn greeting(&self) -> &str {
        &self.greeting
    }

    /// True when TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    async fn read_line(&mut self) -> Result<Bytes, ClientError> {
        loop {
            match self.reader.next_line() {
                Some(Line::Complete(l)) => return Ok(l),
                Some(Line::TooLong) => {
                    return Err(ClientError::Protocol("line too long".into()));
                }
                None => {}
            }
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(self.reader.buffer()))
                .await
                .map_err(|_| ClientError::Timeout)??;
            if n == 0 {
                return Err(ClientError::Protocol("connection closed by server".into()));
            }
        }
    }

    async fn send(&mut self, line: &str) -> Result<(), ClientError> {
        let mut buf = Vec::with_capacity(line.len() + 2);
        buf.extend_from_slice(line.as_bytes());
        buf.extend_from_slice(b"\r\n");
        tokio::time::timeout(self.timeout, async {
            self.stream.write_all(&buf).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| ClientError::Timeout)??;
        Ok(())
    }

    async fn status(&mut self, command: &'static str) -> Result<StatusLine, ClientError> {
        let line = self.read_line().await?;
        let s = parse_status(&line)?;
        if !s.ok {
            return Err(ClientError::Refused {
                command,
                code: s.code,
                text: s.text,
            });
        }
        Ok(s)
    }

    async fn simple(
        &mut self,
        command: &'static str,
        line: &str,
    ) -> Result<StatusLine, ClientError> {
        self.send(line).await?;
        self.status(command).await
    }

    async fn multiline(&mut self, max: u64) -> Result<Bytes, ClientError> {
        let mut d = MultiLineDecoder::new(max);
        loop {
            let line = self.read_line().await?;
            if d.push_line(&line)? {
                return Ok(d.finish());
            }
        }
    }

    async fn multiline_lines(&mut self, max: u64) -> Result<Vec<Bytes>, ClientError> {
        let body = self.multiline(max).await?;
        Ok(body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| Bytes::copy_from_slice(l.strip_suffix(b"\r").unwrap_or(l)))
            .collect())
    }

    /// `CAPA` (RFC 2449); `None` when the server does not know it.
    pub async fn capa(&mut self) -> Result<Option<Vec<String>>, ClientError> {
        self.send("CAPA").await?;
        let line = self.read_line().await?;
        if !parse_status(&line)?.ok {
            self.capabilities = Some(Vec::new());
            return Ok(None);
        }
        let lines = self.multiline_lines(64 * 1024).await?;
        let caps: Vec<String> = lines
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        self.capabilities = Some(caps.clone());
        Ok(Some(caps))
    }

    /// True when the last `CAPA` listed `name` (case-insensitive).
    pub fn has_capability(&self, name: &str) -> bool {
        self.capabilities.as_ref().is_some_and(|caps| {
            caps.iter().any(|c| {
                c.split_ascii_whitespace()
                    .next()
                    .is_some_and(|k| k.eq_ignore_ascii_case(name))
            })
        })
    }

    fn sasl_offers(&self, mech: &str) -> bool {
        self.capabilities.as_ref().is_some_and(|caps| {
            caps.iter().any(|c| {
                let mut w = c.split_ascii_whitespace();
                w.next().is_some_and(|k| k.eq_ignore_ascii_case("SASL"))
                    && w.any(|m| m.eq_ignore_ascii_case(mech))
            })
        })
    }

    /// `STLS` then the TLS handshake (RFC 2595 §4).
    pub async fn stls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: ServerName<'static>,
    ) -> Result<(), ClientError> {
        if self.tls {
            return Ok(());
        }
        self.simple("STLS", "STLS").await.map_err(|e| match e {
            ClientError::Refused { .. } => ClientError::Unsupported("STLS"),
            e => e,
        })?;
        // Nothing the server sent before the handshake may be trusted.
        self.reader.clear();
        let plain = std::mem::replace(
            &mut self.stream,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let tls = tokio::time::timeout(self.timeout, connector.connect(name, plain))
            .await
            .map_err(|_| ClientError::Timeout)??;
        self.stream = Box::new(tls);
        self.tls = true;
        self.capabilities = None;
        Ok(())
    }

    /// Logs in. The password is sent only over TLS, or in the clear when
    /// the caller chose [`Security::None`] (`allow_plaintext`).
    pub async fn login(
        &mut self,
        username: &str,
        password: &Secret,
        method: LoginMethod,
        allow_plaintext: bool,
    ) -> Result<(), ClientError> {
        if method == LoginMethod::Apop {
            let ts = apop_timestamp(&self.greeting)
                .ok_or(ClientError::Unsupported("APOP"))?
                .to_string();
            let digest = apop_digest(&ts, password.expose());
            self.simple("APOP", &format!("APOP {username} {digest}"))
                .await?;
            return Ok(());
        }
        if !self.tls && !allow_plaintext {
            return Err(ClientError::Tls(
                "refusing to send a password without TLS".into(),
            ));
        }
        if self.capabilities.is_none() {
            self.capa().await?;
        }
        if self.sasl_offers("PLAIN") {
            let ir = B64.encode(format!("\0{username}\0{}", password.expose()));
            self.simple("AUTH", &format!("AUTH PLAIN {ir}")).await?;
            return Ok(());
        }
        self.simple("USER", &format!("USER {username}")).await?;
        self.send(&format!("PASS {}", password.expose())).await?;
        self.status("PASS").await?;
        Ok(())
    }

    /// `STAT`: message count and total size.
    pub async fn stat(&mut self) -> Result<(u32, u64), ClientError> {
        let s = self.simple("STAT", "STAT").await?;
        let mut w = s.text.split_ascii_whitespace();
        let n = w.next().and_then(|v| v.parse().ok());
        let size = w.next().and_then(|v| v.parse().ok());
        match (n, size) {
            (Some(n), Some(size)) => Ok((n, size)),
            _ => Err(ClientError::Protocol("bad STAT reply".into())),
        }
    }

    /// `LIST`: `(msg, size)` pairs.
    pub async fn list(&mut self) -> Result<Vec<(u32, u64)>, ClientError> {
        self.simple("LIST", "LIST").await?;
        let lines = self.multiline_lines(16 * 1024 * 1024).await?;
        lines
            .iter()
            .map(|l| {
                parse_listing(l)
                    .and_then(|(n, s)| s.parse().ok().map(|s| (n, s)))
                    .ok_or_else(|| ClientError::Protocol("bad LIST line".into()))
            })
            .collect()
    }

    /// `UIDL`: `(msg, unique-id)` pairs; [`ClientError::Unsupported`] when
    /// the server refuses it.
    pub async fn uidl(&mut self) -> Result<Vec<(u32, String)>, ClientError> {
        self.simple("UIDL", "UIDL").await.map_err(|e| match e {
            ClientError::Refused { .. } => ClientError::Unsupported("UIDL"),
            e => e,
        })?;
        let lines = self.multiline_lines(16 * 1024 * 1024).await?;
        lines
            .iter()
            .map(|l| parse_listing(l).ok_or_else(|| ClientError::Protocol("bad UIDL line".into())))
            .collect()
    }

    /// `RETR msg`: the message with CRLF line ends, at most `max` bytes.
    pub async fn retr(&mut self, msg: u32, max: u64) -> Result<Bytes, ClientError> {
        self.simple("RETR", &format!("RETR {msg}")).await?;
        self.multiline(max).await
    }

    /// `TOP msg lines`.
    pub async fn top(&mut self, msg: u32, lines: u64, max: u64) -> Result<Bytes, ClientError> {
        self.simple("TOP", &format!("TOP {msg} {lines}")).await?;
        self.multiline(max).await
    }

    /// `DELE msg`.
    pub async fn dele(&mut self, msg: u32) -> Result<(), ClientError> {
        self.simple("DELE", &format!("DELE {msg}")).await.map(drop)
    }

    /// `NOOP`.
    pub async fn noop(&mut self) -> Result<(), ClientError> {
        self.simple("NOOP", "NOOP").await.map(drop)
    }

    /// `RSET`.
    pub async fn rset(&mut self) -> Result<(), ClientError> {
        self.simple("RSET", "RSET").await.map(drop)
    }

    /// `QUIT`: the server commits deletions (UPDATE state).
    pub async fn quit(mut self) -> Result<(), ClientError> {
        self.simple("QUIT", "QUIT").await?;
        let _ = self.stream.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            parse_status(b"+OK 2 320").unwrap(),
            StatusLine {
                ok: true,
                code: None,
                text: "2 320".into()
            }
        );
        assert_eq!(
            parse_status(b"-ERR [IN-USE] busy").unwrap(),
            StatusLine {
                ok: false,
                code: Some("IN-USE".into()),
                text: "busy".into()
            }
        );
        assert_eq!(parse_status(b"+OK").unwrap().text, "");
        assert_eq!(parse_status(b"+ abc=").unwrap().text, "abc=");
        assert!(parse_status(b"* OK imap").is_err());
        assert!(parse_status(b"+OKAY").is_err());
    }

    #[test]
    fn multiline_unstuffs_and_bounds() {
        let mut d = MultiLineDecoder::new(100);
        assert!(!d.push_line(b"a").unwrap());
        assert!(!d.push_line(b"..b").unwrap());
        assert!(!d.push_line(b"").unwrap());
        assert!(d.push_line(b".").unwrap());
        assert_eq!(&d.finish()[..], b"a\r\n.b\r\n\r\n");
        let mut d = MultiLineDecoder::new(5);
        assert!(matches!(
            d.push_line(b"123456"),
            Err(ClientError::TooLarge(5))
        ));
    }

    #[test]
    fn listings_and_apop() {
        assert_eq!(parse_listing(b"1 1712.4"), Some((1, "1712.4".into())));
        assert_eq!(parse_listing(b"x 1"), None);
        assert_eq!(parse_listing(b"1"), None);
        assert_eq!(
            apop_timestamp("POP3 server ready <1896.697170952@dbc.mtview.ca.us>"),
            Some("<1896.697170952@dbc.mtview.ca.us>")
        );
        assert_eq!(apop_timestamp("ready"), None);
        // RFC 1939 §7 example.
        assert_eq!(
            apop_digest("<1896.697170952@dbc.mtview.ca.us>", "tanstaaf"),
            "c4c9334bac560ecc979e58001b3e22fb"
        );
    }

    #[test]
    fn secret_is_not_printed() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
    }
}
