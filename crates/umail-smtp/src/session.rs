//! The SMTP server session as a sans-IO state machine.
//!
//! The session owns framing (command lines, DATA and BDAT bodies, AUTH
//! continuation lines), command sequencing and every bound that needs no
//! outside knowledge. Whatever needs the directory, the store or the
//! filters is handed out as an [`Event`]; the embedding code answers it
//! with the matching `handle_*_result` method, and only then does the
//! session read further input. That keeps pipelined replies in order
//! (RFC 2920 §3.1) without any buffering of replies.
//!
//! ```
//! use umail_smtp::session::{Event, Session, SessionConfig, PolicyMarks};
//! use umail_smtp::ListenerMode;
//! let conn = umail_core::ConnectionInfo {
//!     session_id: 1,
//!     peer: "192.0.2.1:4000".parse().unwrap(),
//!     local: "192.0.2.2:25".parse().unwrap(),
//!     listener: "smtp".into(),
//! };
//! let mut s = Session::new(SessionConfig::new("mx.example", ListenerMode::Mx), conn);
//! assert!(matches!(s.poll_event(), Some(Event::Connect)));
//! s.handle_connect_result(Ok(PolicyMarks::default()));
//! assert_eq!(s.poll_output().unwrap(), b"220 mx.example ESMTP umail\r\n");
//! s.handle_input(b"NOOP\r\nQUIT\r\n");
//! assert!(s.poll_event().is_none());
//! assert_eq!(s.poll_output().unwrap(), b"250 2.0.0 OK\r\n221 2.0.0 mx.example Bye\r\n");
//! assert!(s.is_closed());
//! ```

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use umail_core::config::SmtpConfig;
use umail_core::sasl::Mechanism;
use umail_core::{
    Address, BodyType, ConnectionInfo, Domain, Envelope, Principal, Recipient, Reply, ReversePath,
    SessionInfo, TlsInfo,
};

use crate::ListenerMode;
use crate::codec::{
    Command, DataError, DataReceiver, ForwardPath, LineChecker, MailParams, encode_reply,
    parse_command,
};
use crate::message::count_received;

/// The SASL mechanisms offered, in EHLO order.
pub const MECHANISMS: [Mechanism; 3] = [Mechanism::Plain, Mechanism::Login, Mechanism::ScramSha256];

/// Static settings of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Host name for the greeting and EHLO.
    pub hostname: String,
    /// Which listener the session runs on.
    pub mode: ListenerMode,
    /// The `[smtp]` limits and switches.
    pub smtp: SmtpConfig,
    /// STARTTLS can be offered (a TLS acceptor is configured).
    pub starttls: bool,
    /// TLS is already active at the start (implicit TLS, `submissions`).
    pub implicit_tls: Option<TlsInfo>,
}

impl SessionConfig {
    /// Defaults for `hostname` and `mode`: default `[smtp]`, no TLS.
    pub fn new(hostname: &str, mode: ListenerMode) -> SessionConfig {
        SessionConfig {
            hostname: hostname.to_string(),
            mode,
            smtp: SmtpConfig::default(),
            starttls: false,
            implicit_tls: None,
        }
    }
}

pub use umail_core::ingest::{AcceptedRecipient, Expansion, LocalTarget, PolicyMarks};

/// A complete transaction, handed out for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The envelope (recipients in RCPT order).
    pub envelope: Envelope,
    /// Accepted recipients with their expansions, same order.
    pub recipients: Vec<AcceptedRecipient>,
    /// Decisions of the connect, HELO and MAIL stages.
    pub marks: PolicyMarks,
    /// The message as received (CRLF line endings, dot-unstuffed).
    pub message: Vec<u8>,
}

/// Something the session needs the embedding code to decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The client connected; answer with [`Session::handle_connect_result`].
    Connect,
    /// `EHLO`/`HELO`; answer with [`Session::handle_helo_result`].
    Helo {
        /// The name given.
        name: String,
        /// `EHLO` rather than `HELO`.
        extended: bool,
    },
    /// `MAIL FROM` passed the syntax and sequence checks; answer with
    /// [`Session::handle_mail_result`].
    Mail {
        /// Reverse path.
        from: ReversePath,
        /// Parameters.
        params: MailParams,
    },
    /// `RCPT TO` passed the syntax and sequence checks; answer with
    /// [`Session::handle_rcpt_result`].
    Rcpt(Recipient),
    /// `VRFY` (only when enabled); answer with [`Session::handle_lookup_result`].
    Vrfy(String),
    /// `EXPN` (only when enabled); answer with [`Session::handle_lookup_result`].
    Expn(String),
    /// `AUTH` passed the sequence checks; answer with [`Session::handle_auth_result`].
    Auth {
        /// The mechanism.
        mechanism: Mechanism,
        /// The decoded initial response, if any.
        initial: Option<Vec<u8>>,
    },
    /// The client's decoded answer to a 334 challenge; answer with
    /// [`Session::handle_auth_result`].
    AuthResponse(Vec<u8>),
    /// The 220 reply to STARTTLS is queued: flush the output, run the
    /// handshake, then call [`Session::handle_tls_result`].
    StartTls,
    /// A message is complete; deliver it and answer with
    /// [`Session::handle_message_result`].
    Message(Box<Transaction>),
}

/// The result of one AUTH step, from the embedding code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthResult {
    /// Send this challenge (raw bytes; the session base64-encodes it).
    Challenge(Vec<u8>),
    /// Authenticated. `additional` is final server data (SCRAM `v=`),
    /// sent as a last 334 challenge answered by an empty line before the
    /// 235 (RFC 4954 §4).
    Success {
        /// The principal.
        principal: Principal,
        /// Final server data.
        additional: Option<Vec<u8>>,
    },
    /// Failed with this reply (535 5.7.8, 454 4.7.0, ...).
    Failure(Reply),
}

/// Misuse of the session API by the embedding code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// A `handle_*_result` was called that does not match the pending event.
    #[error("no matching event is pending")]
    NotPending,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    Connect,
    Helo {
        name: String,
        extended: bool,
    },
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt(Recipient),
    Lookup,
    Auth,
    Tls,
    Message,
}

#[derive(Debug)]
struct Bdat {
    remaining: u64,
    last: bool,
    /// Reply to give after consuming the chunk instead of accepting it.
    refuse: Option<Reply>,
}

#[derive(Debug)]
enum Input {
    Command,
    DiscardLine,
    Data(DataReceiver),
    Bdat(Bdat),
    AuthResponse,
    /// After SCRAM's final 334: the client must send an empty line.
    AuthFinal(Box<Principal>),
}

#[derive(Debug, Default)]
struct BdatBody {
    body: Vec<u8>,
    checker: LineChecker,
    error: Option<DataError>,
}

#[derive(Debug)]
struct Txn {
    envelope: Envelope,
    recipients: Vec<AcceptedRecipient>,
    marks: PolicyMarks,
    bdat: Option<BdatBody>,
}

/// One SMTP server session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    conn: ConnectionInfo,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    input: Input,
    pending: Option<Pending>,
    greeted: bool,
    refused: bool,
    closed: bool,
    shutdown: bool,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    principal: Option<Principal>,
    session_marks: PolicyMarks,
    txn: Option<Txn>,
    rset_count: usize,
    error_count: usize,
}

impl Session {
    /// A new session; the first [`Session::poll_event`] returns [`Event::Connect`].
    pub fn new(config: SessionConfig, conn: ConnectionInfo) -> Session {
        let tls = config.implicit_tls.clone();
        Session {
            config,
            conn,
            inbuf: Vec::new(),
            out: Vec::new(),
            input: Input::Command,
            pending: None,
            greeted: false,
            refused: false,
            closed: false,
            shutdown: false,
            helo: None,
            esmtp: false,
            tls,
            principal: None,
            session_marks: PolicyMarks::default(),
            txn: None,
            rset_count: 0,
            error_count: 0,
        }
    }

    // ----- getters -----

    /// True once the session is over: flush [`Session::poll_output`] and close.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The session's static configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The connection facts.
    pub fn connection(&self) -> &ConnectionInfo {
        &self.conn
    }

    /// The HELO/EHLO name, once accepted.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// True after EHLO (rather than HELO).
    pub fn is_esmtp(&self) -> bool {
        self.esmtp
    }

    /// TLS facts when TLS is active.
    pub fn tls(&self) -> Option<&TlsInfo> {
        self.tls.as_ref()
    }

    /// The authenticated principal.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The current transaction's envelope (recipients accepted so far).
    pub fn envelope(&self) -> Option<&Envelope> {
        self.txn.as_ref().map(|t| &t.envelope)
    }

    /// Filter decisions of the connect and HELO stages.
    pub fn session_marks(&self) -> &PolicyMarks {
        &self.session_marks
    }

    /// True while a shutdown is pending.
    pub fn is_shutting_down(&self) -> bool {
        self.shutdown
    }

    /// The longest FUTURERELEASE delay, seconds, when offered: on the
    /// submission listeners (where MAIL needs AUTH) and not turned off.
    fn future_release_limit(&self) -> Option<i64> {
        let max = self.config.smtp.max_future_release_secs;
        (self.config.mode != ListenerMode::Mx && max > 0)
            .then(|| i64::try_from(max).unwrap_or(i64::MAX))
    }

    /// When a message with these MAIL parameters may be released: `None`
    /// for at once, an error when it is beyond the longest delay offered.
    fn release_time(&self, params: &MailParams) -> Result<Option<i64>, ()> {
        let now = umail_core::unix_now();
        let at = match (params.hold_for, params.hold_until) {
            (Some(secs), _) => now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)),
            (None, Some(t)) => t,
            (None, None) => return Ok(None),
        };
        let max = self.future_release_limit().ok_or(())?;
        if at > now.saturating_add(max) {
            return Err(());
        }
        // A HOLDUNTIL already past means "at once".
        Ok((at > now).then_some(at))
    }

    /// True when AUTH is offered now (RFC 4954 §4; on submission only after TLS).
    pub fn auth_offered(&self) -> bool {
        self.tls.is_some() && (self.config.mode != ListenerMode::Mx || self.config.smtp.auth_on_mx)
    }

    /// Facts about the session for filters.
    pub fn session_info(&self) -> SessionInfo {
        SessionInfo {
            session_id: self.conn.session_id,
            peer: self.conn.peer,
            local: self.conn.local,
            helo: self.helo.clone(),
            tls: self.tls.clone(),
            authenticated: self.principal.as_ref().map(|p| p.address.clone()),
            listener: self.conn.listener.clone(),
        }
    }

    // ----- input -----

    /// Bytes received from the client.
    pub fn handle_input(&mut self, bytes: &[u8]) {
        if !self.closed {
            self.inbuf.extend_from_slice(bytes);
        }
    }

    /// The client closed its side.
    pub fn handle_eof(&mut self) {
        self.closed = true;
    }

    /// The idle timer fired (RFC 5321 §4.5.3.2.7).
    pub fn handle_timeout(&mut self) {
        if !self.closed {
            self.reply(Reply::new(
                421,
                "4.4.2",
                format!("{} Idle timeout, closing connection", self.config.hostname),
            ));
            self.closed = true;
        }
    }

    /// The server is shutting down: an in-flight transaction finishes,
    /// then the session says `421 4.3.2` at the next command boundary.
    pub fn handle_shutdown(&mut self) {
        self.shutdown = true;
    }

    /// Bytes to send to the client, if any.
    pub fn poll_output(&mut self) -> Option<Vec<u8>> {
        if self.out.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut self.out))
        }
    }

    /// Processes buffered input until something needs a decision (returned)
    /// or more input is needed (`None`). While an event is pending, returns
    /// `None` without reading further input.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.closed || self.pending.is_some() {
            return None;
        }
        if !self.greeted {
            self.greeted = true;
            self.pending = Some(Pending::Connect);
            return Some(Event::Connect);
        }
        loop {
            if self.closed || self.pending.is_some() {
                return None;
            }
            let event = match &mut self.input {
                Input::Command => {
                    if self.shutdown {
                        self.reply(Reply::new(
                            421,
                            "4.3.2",
                            format!(
                                "{} Service shutting down, closing connection",
                                self.config.hostname
                            ),
                        ));
                        self.closed = true;
                        return None;
                    }
                    match self.take_line(self.config.smtp.max_command_line)? {
                        Ok(line) => self.command(&line),
                        Err(reply) => {
                            self.error(reply);
                            None
                        }
                    }
                }
                Input::DiscardLine => {
                    match self.inbuf.iter().position(|&b| b == b'\n') {
                        Some(pos) => {
                            self.inbuf.drain(..=pos);
                            self.input = Input::Command;
                        }
                        None => {
                            self.inbuf.clear();
                            return None;
                        }
                    }
                    None
                }
                Input::Data(rx) => {
                    let used = rx.feed(&self.inbuf);
                    self.inbuf.drain(..used);
                    if !rx.is_done() {
                        return None;
                    }
                    let Input::Data(rx) = std::mem::replace(&mut self.input, Input::Command) else {
                        return None;
                    };
                    self.finish_message(rx.finish())
                }
                Input::Bdat(chunk) => {
                    let take = usize::try_from(chunk.remaining)
                        .unwrap_or(usize::MAX)
                        .min(self.inbuf.len());
                    chunk.remaining -= take as u64;
                    let refused = chunk.refuse.is_some();
                    let done = chunk.remaining == 0;
                    if refused {
                        self.inbuf.drain(..take);
                    } else {
                        let bytes: Vec<u8> = self.inbuf.drain(..take).collect();
                        self.bdat_append(&bytes);
                    }
                    if !done {
                        return None;
                    }
                    let Input::Bdat(chunk) = std::mem::replace(&mut self.input, Input::Command)
                    else {
                        return None;
                    };
                    self.finish_chunk(chunk)
                }
                Input::AuthResponse | Input::AuthFinal(_) => {
                    match self.take_line(self.config.smtp.max_command_line)? {
                        Ok(line) => self.auth_line(&line),
                        Err(reply) => {
                            self.input = Input::Command;
                            self.error(reply);
                            None
                        }
                    }
                }
            };
            if event.is_some() {
                return event;
            }
        }
    }

    /// Takes one CRLF-terminated line (without the CRLF). `None`: need more input.
    fn take_line(&mut self, max: usize) -> Option<Result<Vec<u8>, Reply>> {
        let max = if max == 0 { usize::MAX } else { max };
        match self.inbuf.iter().position(|&b| b == b'\n') {
            Some(pos) => {
                let mut line: Vec<u8> = self.inbuf.drain(..=pos).collect();
                // RFC 5321 §4.5.3.1.4: command lines are bounded.
                if line.len() > max {
                    return Some(Err(crate::codec::ParseError::TooLong.reply()));
                }
                line.pop();
                // RFC 5321 §2.3.8: lines end with CRLF; a bare LF is refused.
                if line.pop() != Some(b'\r') {
                    return Some(Err(Reply::new(
                        500,
                        "5.5.2",
                        "Bare LF in command; lines must end with CRLF",
                    )));
                }
                Some(Ok(line))
            }
            None if self.inbuf.len() > max => {
                self.inbuf.clear();
                self.input = Input::DiscardLine;
                Some(Err(crate::codec::ParseError::TooLong.reply()))
            }
            None => None,
        }
    }

    fn reply(&mut self, reply: Reply) {
        encode_reply(&reply, &mut self.out);
    }

    /// Sends an error reply and counts it; too many close the session.
    fn error(&mut self, reply: Reply) {
        let counts = reply.code >= 500;
        self.reply(reply);
        if counts {
            self.error_count += 1;
            let max = self.config.smtp.max_errors;
            if max != 0 && self.error_count >= max && !self.closed {
                self.reply(Reply::new(
                    421,
                    "4.7.0",
                    format!(
                        "{} Too many errors, closing connection",
                        self.config.hostname
                    ),
                ));
                self.closed = true;
            }
        }
    }

    fn reset_transaction(&mut self) {
        self.txn = None;
    }

    /// The size bound of the current transaction: the server limit, lowered
    /// by any recipient domain's own limit. 0 = unlimited.
    fn max_size(&self) -> u64 {
        let mut max = self.config.smtp.max_message_size;
        for r in self.txn.iter().flat_map(|t| &t.recipients) {
            let m = r.expansion.max_message_size;
            if m != 0 && (max == 0 || m < max) {
                max = m;
            }
        }
        max
    }

    fn command(&mut self, line: &[u8]) -> Option<Event> {
        let cmd = match parse_command(line) {
            Ok(c) => c,
            Err(e) => {
                self.error(e.reply());
                return None;
            }
        };
        // RFC 5321 §3.1: after a 554 greeting only QUIT is served.
        if self.refused && cmd != Command::Quit {
            self.error(Reply::new(503, "5.5.1", "No SMTP service here"));
            return None;
        }
        match cmd {
            Command::Ehlo(name) => self.ask(
                Pending::Helo {
                    name: name.clone(),
                    extended: true,
                },
                Event::Helo {
                    name,
                    extended: true,
                },
            ),
            Command::Helo(name) => self.ask(
                Pending::Helo {
                    name: name.clone(),
                    extended: false,
                },
                Event::Helo {
                    name,
                    extended: false,
                },
            ),
            Command::Mail { from, params } => self.mail(from, params),
            Command::Rcpt { to, params } => self.rcpt(to, params),
            Command::Data => self.data(),
            Command::Bdat { size, last } => {
                self.bdat(size, last);
                None
            }
            Command::Rset => {
                self.rset_count += 1;
                let max = self.config.smtp.max_rset;
                if max != 0 && self.rset_count > max {
                    self.reply(Reply::new(
                        421,
                        "4.7.0",
                        format!(
                            "{} Too many RSET commands, closing connection",
                            self.config.hostname
                        ),
                    ));
                    self.closed = true;
                } else {
                    // RFC 5321 §4.1.1.5: RSET aborts the transaction.
                    self.reset_transaction();
                    self.reply(Reply::new(250, "2.0.0", "Flushed"));
                }
                None
            }
            Command::Noop => {
                self.reply(Reply::new(250, "2.0.0", "OK"));
                None
            }
            Command::Quit => {
                // RFC 5321 §4.1.1.10
                self.reply(Reply::new(
                    221,
                    "2.0.0",
                    format!("{} Bye", self.config.hostname),
                ));
                self.closed = true;
                None
            }
            Command::Vrfy(arg) => {
                if self.config.smtp.allow_vrfy {
                    self.ask(Pending::Lookup, Event::Vrfy(arg))
                } else {
                    // RFC 5321 §3.5.3 allows refusing VRFY; it is off by default.
                    self.error(Reply::new(502, "5.5.1", "VRFY command is disabled"));
                    None
                }
            }
            Command::Expn(arg) => {
                if self.config.smtp.allow_expn {
                    self.ask(Pending::Lookup, Event::Expn(arg))
                } else {
                    // RFC 5321 §3.5.3
                    self.error(Reply::new(502, "5.5.1", "EXPN command is disabled"));
                    None
                }
            }
            Command::Help(_) => {
                self.reply(Reply::new(
                    214,
                    "2.0.0",
                    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP STARTTLS AUTH\nSee RFC 5321",
                ));
                None
            }
            Command::StartTls => self.starttls(),
            Command::Auth { mechanism, initial } => self.auth(&mechanism, initial),
        }
    }

    fn ask(&mut self, pending: Pending, event: Event) -> Option<Event> {
        self.pending = Some(pending);
        Some(event)
    }

    fn mail(&mut self, from: ReversePath, params: MailParams) -> Option<Event> {
        let mode = self.config.mode;
        if self.helo.is_none() {
            // RFC 5321 §4.1.4: a session must start with EHLO/HELO.
            self.error(Reply::new(503, "5.5.1", "Send EHLO/HELO first"));
        } else if self.txn.is_some() {
            // RFC 5321 §4.1.4: MAIL may not be given inside a transaction.
            self.error(Reply::new(503, "5.5.1", "Nested MAIL command"));
        } else if mode == ListenerMode::Submission && self.tls.is_none() {
            // RFC 3207 §4 / RFC 8314 §3.3: submission requires TLS first.
            self.error(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ));
        } else if mode != ListenerMode::Mx && self.principal.is_none() {
            // RFC 4954 §6: 530 5.7.0 Authentication required (RFC 6409 §4.3).
            self.error(Reply::new(530, "5.7.0", "Authentication required"));
        } else if from.address().is_some_and(|a| a.needs_smtputf8()) && !params.smtputf8 {
            // RFC 6531 §3.5: 553 5.6.7 non-ASCII address without SMTPUTF8.
            self.error(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII sender address requires SMTPUTF8",
            ));
        } else if (params.hold_for.is_some() || params.hold_until.is_some())
            && self.future_release_limit().is_none()
        {
            // RFC 5321 §4.1.1.11: a parameter of an extension not offered.
            let name = if params.hold_for.is_some() {
                "HOLDFOR"
            } else {
                "HOLDUNTIL"
            };
            self.error(Reply::new(
                555,
                "5.5.4",
                format!("Parameter not recognized: {name}"),
            ));
        } else if self.release_time(&params).is_err() {
            // RFC 4865 §4: a release too far ahead.
            self.error(Reply::new(
                501,
                "5.5.4",
                "Invalid HOLDFOR or HOLDUNTIL: beyond the longest delay offered",
            ));
        } else if params.size.is_some_and(|s| {
            self.config.smtp.max_message_size != 0 && s > self.config.smtp.max_message_size
        }) {
            // RFC 1870 §6.2: declared size over the limit.
            self.error(Reply::new(
                552,
                "5.3.4",
                "Message size exceeds fixed maximum message size",
            ));
        } else {
            return self.ask(
                Pending::Mail {
                    from: from.clone(),
                    params: params.clone(),
                },
                Event::Mail { from, params },
            );
        }
        None
    }

    fn rcpt(&mut self, to: ForwardPath, params: crate::codec::RcptParams) -> Option<Event> {
        let Some(txn) = &self.txn else {
            // RFC 5321 §4.1.4: RCPT needs MAIL first.
            self.error(Reply::new(503, "5.5.1", "Need MAIL command before RCPT"));
            return None;
        };
        let max = self.config.smtp.max_recipients;
        if max != 0 && txn.recipients.len() >= max {
            // RFC 5321 §4.5.3.1.10: 452 too many recipients.
            self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
            return None;
        }
        let smtputf8 = txn.envelope.smtputf8;
        let address = match to {
            ForwardPath::Address(a) => a,
            // RFC 5321 §4.5.1: <Postmaster> means the postmaster of this host.
            ForwardPath::Postmaster => match Domain::parse(&self.config.hostname)
                .and_then(|d| Address::new("postmaster", d))
            {
                Ok(a) => a,
                Err(_) => {
                    self.error(Reply::new(550, "5.1.1", "No postmaster here"));
                    return None;
                }
            },
        };
        if address.needs_smtputf8() && !smtputf8 {
            // RFC 6531 §3.5
            self.error(Reply::new(
                553,
                "5.6.7",
                "Non-ASCII recipient address requires SMTPUTF8",
            ));
            return None;
        }
        let recipient = Recipient {
            address,
            notify: params.notify,
            orcpt: params.orcpt,
        };
        self.ask(Pending::Rcpt(recipient.clone()), Event::Rcpt(recipient))
    }

    /// Checks common to DATA and BDAT; `Some(reply)` refuses.
    fn body_refusal(&self, bdat: bool) -> Option<Reply> {
        let Some(txn) = &self.txn else {
            // RFC 5321 §4.1.4
            return Some(Reply::new(503, "5.5.1", "Need MAIL command"));
        };
        if txn.recipients.is_empty() {
            // RFC 2920 §3.1 / RFC 5321 §3.3: no valid recipients.
            return Some(Reply::new(554, "5.5.1", "No valid recipients"));
        }
        if !bdat && txn.envelope.body == BodyType::BinaryMime {
            // RFC 3030 §3: BINARYMIME must be sent with BDAT.
            return Some(Reply::new(503, "5.5.1", "BODY=BINARYMIME requires BDAT"));
        }
        if !bdat && txn.bdat.is_some() {
            // RFC 3030 §2: DATA and BDAT may not be mixed.
            return Some(Reply::new(503, "5.5.1", "DATA not allowed after BDAT"));
        }
        None
    }

    fn data(&mut self) -> Option<Event> {
        if let Some(r) = self.body_refusal(false) {
            self.error(r);
            return None;
        }
        // RFC 5321 §4.1.1.4: 354, then the data up to CRLF.CRLF.
        self.reply(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        self.input = Input::Data(DataReceiver::new(
            self.max_size(),
            self.config.smtp.max_data_line,
        ));
        None
    }

    fn bdat(&mut self, size: u64, last: bool) {
        // RFC 3030 §2: a refused BDAT's chunk is still read and discarded.
        let refuse = self.body_refusal(true);
        if refuse.is_none()
            && let Some(txn) = &mut self.txn
        {
            txn.bdat.get_or_insert_with(BdatBody::default);
        }
        self.input = Input::Bdat(Bdat {
            remaining: size,
            last,
            refuse,
        });
    }

    fn bdat_append(&mut self, bytes: &[u8]) {
        let max_size = self.max_size();
        let max_line = self.config.smtp.max_data_line;
        let Some(txn) = &mut self.txn else { return };
        let binary = txn.envelope.body == BodyType::BinaryMime;
        let Some(b) = &mut txn.bdat else { return };
        if b.error.is_some() {
            return;
        }
        if !binary && let Err(e) = b.checker.check(bytes, max_line) {
            b.error = Some(e);
            b.body = Vec::new();
            return;
        }
        // RFC 3030 §4 / RFC 1870: the size bound holds while streaming.
        if max_size != 0 && (b.body.len() + bytes.len()) as u64 > max_size {
            b.error = Some(DataError::TooLarge);
            b.body = Vec::new();
            return;
        }
        b.body.extend_from_slice(bytes);
    }

    fn finish_chunk(&mut self, chunk: Bdat) -> Option<Event> {
        if let Some(reply) = chunk.refuse {
            self.error(reply);
            return None;
        }
        let binary = self
            .txn
            .as_ref()
            .is_some_and(|t| t.envelope.body == BodyType::BinaryMime);
        let Some(b) = self.txn.as_mut().and_then(|t| t.bdat.as_mut()) else {
            self.error(Reply::new(503, "5.5.1", "Need MAIL command"));
            return None;
        };
        if let Some(e) = b.error {
            // The transaction is over; later chunks get 503 and are discarded.
            self.reset_transaction();
            self.reply(e.reply(self.config.smtp.max_data_line));
            return None;
        }
        if !chunk.last {
            let size = b.body.len();
            self.reply(Reply::new(250, "2.0.0", format!("{size} octets received")));
            return None;
        }
        let result = if !binary && let Err(e) = b.checker.finish() {
            Err(e)
        } else {
            Ok(std::mem::take(&mut b.body))
        };
        self.finish_message(result)
    }

    fn finish_message(&mut self, result: Result<Vec<u8>, DataError>) -> Option<Event> {
        let message = match result {
            Ok(m) => m,
            Err(e) => {
                self.reset_transaction();
                self.reply(e.reply(self.config.smtp.max_data_line));
                return None;
            }
        };
        let max = self.config.smtp.max_received_headers;
        if max != 0 && count_received(&message) > max {
            // RFC 5321 §6.3: loop detection by counting Received headers.
            self.reset_transaction();
            self.reply(Reply::new(
                554,
                "5.4.6",
                "Too many Received headers: mail loop detected",
            ));
            return None;
        }
        let txn = self.txn.take()?;
        let mut marks = self.session_marks.clone();
        marks.merge(&txn.marks);
        self.ask(
            Pending::Message,
            Event::Message(Box::new(Transaction {
                envelope: txn.envelope,
                recipients: txn.recipients,
                marks,
                message,
            })),
        )
    }

    fn starttls(&mut self) -> Option<Event> {
        if self.tls.is_some() {
            // RFC 3207 §4: TLS is already active.
            self.error(Reply::new(503, "5.5.1", "TLS already active"));
            return None;
        }
        if !self.config.starttls || self.config.mode == ListenerMode::Submissions {
            self.error(Reply::new(502, "5.5.1", "STARTTLS not available"));
            return None;
        }
        if self.txn.is_some() {
            self.error(Reply::new(
                503,
                "5.5.1",
                "STARTTLS not allowed during a mail transaction",
            ));
            return None;
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        // RFC 3207 §4.2 (and CVE-2011-0411): anything pipelined after
        // STARTTLS in plaintext is discarded, never executed after TLS.
        self.inbuf.clear();
        self.ask(Pending::Tls, Event::StartTls)
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Option<Event> {
        let plain_submission = self.config.mode != ListenerMode::Mx && self.tls.is_none();
        if plain_submission
            || (self.config.mode == ListenerMode::Mx
                && self.config.smtp.auth_on_mx
                && self.tls.is_none())
        {
            // RFC 3207 §4 / RFC 8314: no AUTH before TLS.
            self.error(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ));
            return None;
        }
        if !self.auth_offered() {
            self.error(Reply::new(502, "5.5.1", "AUTH not available"));
            return None;
        }
        if self.helo.is_none() || !self.esmtp {
            // RFC 4954 §4: AUTH is an ESMTP extension.
            self.error(Reply::new(503, "5.5.1", "Send EHLO first"));
            return None;
        }
        if self.principal.is_some() {
            // RFC 4954 §4: only one successful AUTH per session.
            self.error(Reply::new(503, "5.5.1", "Already authenticated"));
            return None;
        }
        if self.txn.is_some() {
            // RFC 4954 §4: AUTH is not permitted during a mail transaction.
            self.error(Reply::new(
                503,
                "5.5.1",
                "AUTH not permitted during a mail transaction",
            ));
            return None;
        }
        let Some(mech) = Mechanism::parse(mechanism).filter(|m| MECHANISMS.contains(m)) else {
            // RFC 4954 §4: 504 unrecognized authentication type.
            self.error(Reply::new(504, "5.5.4", "Unrecognized authentication type"));
            return None;
        };
        let initial = match initial.as_deref() {
            None => None,
            // RFC 4954 §4: "=" is an empty initial response.
            Some("=") => Some(Vec::new()),
            Some(b64) => match B64.decode(b64) {
                Ok(v) => Some(v),
                Err(_) => {
                    // RFC 4954 §4: 501 for undecodable base64.
                    self.error(Reply::new(501, "5.5.2", "Invalid base64 data"));
                    return None;
                }
            },
        };
        self.ask(
            Pending::Auth,
            Event::Auth {
                mechanism: mech,
                initial,
            },
        )
    }

    fn auth_line(&mut self, line: &[u8]) -> Option<Event> {
        let state = std::mem::replace(&mut self.input, Input::Command);
        if line == b"*" {
            // RFC 4954 §4: the client cancels with "*".
            self.error(Reply::new(501, "5.0.0", "Authentication cancelled"));
            return None;
        }
        match state {
            Input::AuthFinal(principal) => {
                if line.is_empty() {
                    self.auth_success(*principal);
                } else {
                    self.error(Reply::new(
                        535,
                        "5.7.8",
                        "Authentication credentials invalid",
                    ));
                }
                None
            }
            _ => match B64.decode(line) {
                Ok(data) => self.ask(Pending::Auth, Event::AuthResponse(data)),
                Err(_) => {
                    self.error(Reply::new(501, "5.5.2", "Invalid base64 data"));
                    None
                }
            },
        }
    }

    fn auth_success(&mut self, principal: Principal) {
        self.principal = Some(principal);
        // RFC 4954 §6: 235 2.7.0 Authentication Succeeded.
        self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
    }

    fn take_pending(&mut self, ok: impl Fn(&Pending) -> bool) -> Result<Pending, SessionError> {
        match &self.pending {
            Some(p) if ok(p) => self.pending.take().ok_or(SessionError::NotPending),
            _ => Err(SessionError::NotPending),
        }
    }

    // ----- answers from the embedding code -----

    /// Answers [`Event::Connect`]: `Err` refuses the client (a temporary
    /// reply becomes 421 and closes; a permanent one 554, then only QUIT
    /// is served, RFC 5321 §3.1).
    pub fn handle_connect_result(
        &mut self,
        result: Result<PolicyMarks, Reply>,
    ) -> Result<(), SessionError> {
        self.take_pending(|p| *p == Pending::Connect)?;
        match result {
            Ok(marks) => {
                self.session_marks = marks;
                // RFC 2034 §3: no enhanced code in the greeting.
                let text = format!("{} {}", self.config.hostname, self.config.smtp.banner);
                self.reply(Reply::new(220, "", text));
            }
            Err(r) if r.is_temporary() => {
                self.reply(Reply { code: 421, ..r });
                self.closed = true;
            }
            Err(r) => {
                self.reply(Reply { code: 554, ..r });
                self.refused = true;
            }
        }
        Ok(())
    }

    /// Answers [`Event::Helo`].
    pub fn handle_helo_result(
        &mut self,
        result: Result<PolicyMarks, Reply>,
    ) -> Result<(), SessionError> {
        let Pending::Helo { name, extended } =
            self.take_pending(|p| matches!(p, Pending::Helo { .. }))?
        else {
            return Err(SessionError::NotPending);
        };
        match result {
            Ok(marks) => {
                // RFC 5321 §4.1.4: EHLO/HELO resets the transaction.
                self.reset_transaction();
                self.session_marks.merge(&marks);
                self.helo = Some(name.clone());
                self.esmtp = extended;
                let host = &self.config.hostname;
                if !extended {
                    self.reply(Reply::new(250, "", format!("{host} Hello {name}")));
                    return Ok(());
                }
                let mut lines = vec![format!("{host} Hello {name}")];
                lines.push("PIPELINING".into()); // RFC 2920
                lines.push(format!("SIZE {}", self.config.smtp.max_message_size)); // RFC 1870
                lines.push("8BITMIME".into()); // RFC 6152
                lines.push("BINARYMIME".into()); // RFC 3030
                lines.push("CHUNKING".into()); // RFC 3030
                lines.push("SMTPUTF8".into()); // RFC 6531
                lines.push("ENHANCEDSTATUSCODES".into()); // RFC 2034
                lines.push("DSN".into()); // RFC 3461
                if let Some(max) = self.future_release_limit() {
                    // RFC 4865 §3: the longest interval and the latest time.
                    let latest = chrono::Utc::now() + chrono::Duration::seconds(max);
                    lines.push(format!(
                        "FUTURERELEASE {max} {}",
                        latest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                    ));
                }
                if self.config.starttls
                    && self.tls.is_none()
                    && self.config.mode != ListenerMode::Submissions
                {
                    lines.push("STARTTLS".into()); // RFC 3207
                }
                if self.auth_offered() && self.principal.is_none() {
                    let names: Vec<&str> = MECHANISMS.iter().map(|m| m.name()).collect();
                    lines.push(format!("AUTH {}", names.join(" "))); // RFC 4954
                }
                lines.push("HELP".into());
                // RFC 2034 §3: no enhanced codes in the EHLO response.
                self.reply(Reply::new(250, "", lines.join("\n")));
            }
            Err(r) => self.error(r),
        }
        Ok(())
    }

    /// Answers [`Event::Mail`].
    pub fn handle_mail_result(
        &mut self,
        result: Result<PolicyMarks, Reply>,
    ) -> Result<(), SessionError> {
        let Pending::Mail { from, params } =
            self.take_pending(|p| matches!(p, Pending::Mail { .. }))?
        else {
            return Err(SessionError::NotPending);
        };
        match result {
            Ok(marks) => {
                let mut envelope = Envelope::new(from);
                envelope.release_at = self.release_time(&params).ok().flatten();
                envelope.body = params.body.unwrap_or_default();
                envelope.smtputf8 = params.smtputf8;
                envelope.ret = params.ret;
                envelope.envid = params.envid;
                envelope.declared_size = params.size;
                envelope.auth = self.principal.as_ref().map(|p| p.address.clone());
                self.txn = Some(Txn {
                    envelope,
                    recipients: Vec::new(),
                    marks,
                    bdat: None,
                });
                self.reply(Reply::new(250, "2.1.0", "Sender OK"));
            }
            Err(r) => self.error(r),
        }
        Ok(())
    }

    /// Answers [`Event::Rcpt`] with where the recipient goes, or a refusal.
    pub fn handle_rcpt_result(
        &mut self,
        result: Result<Expansion, Reply>,
    ) -> Result<(), SessionError> {
        let Pending::Rcpt(recipient) = self.take_pending(|p| matches!(p, Pending::Rcpt(_)))? else {
            return Err(SessionError::NotPending);
        };
        match (result, &mut self.txn) {
            (Ok(expansion), Some(txn)) => {
                txn.envelope.recipients.push(recipient.clone());
                txn.recipients.push(AcceptedRecipient {
                    recipient,
                    expansion,
                });
                self.reply(Reply::new(250, "2.1.5", "Recipient OK"));
            }
            (Ok(_), None) => self.error(Reply::new(503, "5.5.1", "Need MAIL command before RCPT")),
            (Err(r), _) if r.is_temporary() => self.reply(r),
            (Err(r), _) => self.error(r),
        }
        Ok(())
    }

    /// Answers [`Event::Vrfy`] or [`Event::Expn`] with the reply to send.
    pub fn handle_lookup_result(&mut self, reply: Reply) -> Result<(), SessionError> {
        self.take_pending(|p| *p == Pending::Lookup)?;
        if reply.code >= 500 {
            self.error(reply);
        } else {
            self.reply(reply);
        }
        Ok(())
    }

    /// Answers [`Event::Auth`] and [`Event::AuthResponse`].
    pub fn handle_auth_result(&mut self, result: AuthResult) -> Result<(), SessionError> {
        self.take_pending(|p| *p == Pending::Auth)?;
        match result {
            AuthResult::Challenge(data) => {
                // RFC 4954 §4: "334" SP [base64] CRLF, no enhanced code.
                self.reply(Reply::new(334, "", B64.encode(data)));
                self.input = Input::AuthResponse;
            }
            AuthResult::Success {
                principal,
                additional: Some(data),
            } => {
                // RFC 4954 §4: additional data with success goes in a 334
                // challenge; the client answers with an empty line.
                self.reply(Reply::new(334, "", B64.encode(data)));
                self.input = Input::AuthFinal(Box::new(principal));
            }
            AuthResult::Success {
                principal,
                additional: None,
            } => self.auth_success(principal),
            AuthResult::Failure(reply) => self.error(reply),
        }
        Ok(())
    }

    /// Answers [`Event::StartTls`]: `Some` when the handshake succeeded.
    /// All session state is reset; the client must send EHLO again
    /// (RFC 3207 §4.2). `None` closes the session.
    pub fn handle_tls_result(&mut self, tls: Option<TlsInfo>) -> Result<(), SessionError> {
        self.take_pending(|p| *p == Pending::Tls)?;
        match tls {
            Some(info) => {
                self.tls = Some(info);
                self.helo = None;
                self.esmtp = false;
                self.principal = None;
                self.reset_transaction();
                self.inbuf.clear();
                self.input = Input::Command;
            }
            None => self.closed = true,
        }
        Ok(())
    }

    /// Answers [`Event::Message`] with the final reply (250 only after the
    /// message is durably stored or queued).
    pub fn handle_message_result(&mut self, reply: Reply) -> Result<(), SessionError> {
        self.take_pending(|p| *p == Pending::Message)?;
        self.reply(reply);
        Ok(())
    }
}
