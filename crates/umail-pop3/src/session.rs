//! The POP3 session state machine, sans IO.
//!
//! A [`Session`] takes input through `handle_*` methods (a command line, a
//! reply to one of its requests, a timer, a shutdown) and hands back what
//! to do through `poll_*` methods:
//!
//! * [`Session::poll_request`]: work for the directory or the store
//!   ([`Request`]); the driver performs it and answers with
//!   [`Session::handle_reply`] before feeding more input;
//! * [`Session::poll_output`]: bytes to write, a message to stream, the
//!   `STLS` upgrade, or the end of the connection ([`Output`]).
//!
//! States follow RFC 1939 §3: AUTHORIZATION, TRANSACTION and UPDATE (the
//! commit performed on `QUIT`). The maildrop is INBOX, seen as a snapshot
//! taken at login; deletions are only marks until `QUIT`.

use std::collections::VecDeque;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use md5::{Digest, Md5};
use umail_core::config::Pop3DeleteAction;
use umail_core::lockout::AuthLockout;
use umail_core::sasl::{Mechanism, SaslError, SaslServer, ScramCredentials, Step};
use umail_core::{AccountStatus, DirectoryError, MailboxId, Principal, Protocol, StoreError, Uid};

use crate::codec::{self, Command, MessageEncoder, ParseError, RespCode, err, ok};

/// Most protocol errors (unknown commands, bad arguments, oversized
/// lines) tolerated in one session before it is closed.
pub const MAX_ERRORS: usize = 10;

/// Most commands accepted before a successful login.
pub const MAX_UNAUTHENTICATED_COMMANDS: usize = 50;

/// The name sent in the `IMPLEMENTATION` capability.
pub const IMPLEMENTATION: &str = "umail";

/// The SASL mechanisms this server offers (PLAIN only where plaintext
/// authentication is allowed).
const SASL_MECHANISMS: [Mechanism; 2] = [Mechanism::Plain, Mechanism::ScramSha256];

/// Fixed facts and limits of one session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Host name for the greeting and the APOP timestamp.
    pub hostname: String,
    /// The client's IP address (for the shared lockout).
    pub peer: IpAddr,
    /// TLS is active from the start (`pop3s`).
    pub tls_active: bool,
    /// `STLS` can be offered (a TLS acceptor is configured).
    pub tls_available: bool,
    /// Allow USER/PASS and AUTH PLAIN without TLS.
    pub plaintext_auth_without_tls: bool,
    /// Failed logins before the connection is closed.
    pub max_auth_failures: usize,
    /// What DELE + QUIT does.
    pub delete_action: Pop3DeleteAction,
}

/// Work the session needs from the directory or the store.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// Check a password; answer with [`Reply::Principal`].
    VerifyPassword {
        /// Login name.
        username: String,
        /// The password (never logged: `Debug` hides it).
        password: String,
    },
    /// SCRAM verifiers; answer with [`Reply::ScramCredentials`].
    ScramCredentials {
        /// Login name.
        username: String,
    },
    /// The legacy secret (APOP); answer with [`Reply::LegacySecret`].
    LegacySecret {
        /// Login name.
        username: String,
    },
    /// The principal of a login name whose secret was proven; answer with
    /// [`Reply::Principal`].
    Principal {
        /// Login name.
        username: String,
    },
    /// Take a per-account session slot and snapshot INBOX; answer with
    /// [`Reply::Maildrop`].
    OpenMaildrop {
        /// The store account (lower-cased address).
        account: String,
    },
    /// One message's content; answer with [`Reply::Content`].
    Fetch {
        /// The store account.
        account: String,
        /// INBOX's id.
        mailbox: MailboxId,
        /// The message.
        uid: Uid,
    },
    /// UPDATE state (RFC 1939 §6): remove or move to Trash the messages
    /// marked deleted, skipping any already gone; answer with
    /// [`Reply::Committed`].
    Commit {
        /// The store account.
        account: String,
        /// INBOX's id.
        mailbox: MailboxId,
        /// The messages marked deleted, ascending.
        uids: Vec<Uid>,
        /// Remove or move to Trash.
        action: Pop3DeleteAction,
    },
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::VerifyPassword { username, .. } => f
                .debug_struct("VerifyPassword")
                .field("username", username)
                .finish_non_exhaustive(),
            Request::ScramCredentials { username } => f
                .debug_struct("ScramCredentials")
                .field("username", username)
                .finish(),
            Request::LegacySecret { username } => f
                .debug_struct("LegacySecret")
                .field("username", username)
                .finish(),
            Request::Principal { username } => f
                .debug_struct("Principal")
                .field("username", username)
                .finish(),
            Request::OpenMaildrop { account } => f
                .debug_struct("OpenMaildrop")
                .field("account", account)
                .finish(),
            Request::Fetch {
                account,
                mailbox,
                uid,
            } => f
                .debug_struct("Fetch")
                .field("account", account)
                .field("mailbox", mailbox)
                .field("uid", uid)
                .finish(),
            Request::Commit {
                account,
                mailbox,
                uids,
                action,
            } => f
                .debug_struct("Commit")
                .field("account", account)
                .field("mailbox", mailbox)
                .field("uids", uids)
                .field("action", action)
                .finish(),
        }
    }
}

/// A message in the snapshot taken at login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotEntry {
    /// UID in INBOX.
    pub uid: Uid,
    /// Size in octets.
    pub size: u64,
}

/// INBOX as seen at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// INBOX's id.
    pub mailbox: MailboxId,
    /// INBOX's UIDVALIDITY (part of every UIDL).
    pub uid_validity: u32,
    /// The messages, in UID order; message number n is entry n-1.
    pub messages: Vec<SnapshotEntry>,
}

/// Why the maildrop could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The account already has `max_sessions_per_user` sessions.
    #[error("too many sessions for this account")]
    InUse,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The answer to a [`Request`].
#[derive(Debug)]
pub enum Reply {
    /// For [`Request::VerifyPassword`] and [`Request::Principal`].
    Principal(Result<Option<Principal>, DirectoryError>),
    /// For [`Request::ScramCredentials`].
    ScramCredentials(Result<Option<ScramCredentials>, DirectoryError>),
    /// For [`Request::LegacySecret`].
    LegacySecret(Result<Option<String>, DirectoryError>),
    /// For [`Request::OpenMaildrop`].
    Maildrop(Result<Snapshot, OpenError>),
    /// For [`Request::Fetch`]; `None` when the message is gone.
    Content(Result<Option<Bytes>, StoreError>),
    /// For [`Request::Commit`]: the UIDs actually removed or moved.
    Committed(Result<Vec<Uid>, StoreError>),
}

/// What the driver must do next.
#[derive(Debug)]
pub enum Output {
    /// Write these bytes.
    Data(Vec<u8>),
    /// Stream this message body (already framed as a multi-line response
    /// body, terminator included).
    Message(MessageEncoder),
    /// Flush, discard every buffered input byte, then perform the TLS
    /// handshake and call [`Session::handle_tls_established`] (RFC 2595 §4).
    StartTls,
    /// Flush and close the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    uid: Uid,
    size: u64,
    deleted: bool,
}

#[derive(Debug)]
struct Maildrop {
    account: String,
    mailbox: MailboxId,
    uid_validity: u32,
    messages: Vec<Message>,
}

impl Maildrop {
    // RFC 1939 §5: a message number may not refer to a deleted message.
    fn get(&self, n: u32) -> Result<(usize, Message), Vec<u8>> {
        let idx = (n as usize).wrapping_sub(1);
        match self.messages.get(idx) {
            None => Err(err(None, "no such message")),
            Some(m) if m.deleted => Err(err(None, &format!("message {n} already deleted"))),
            Some(m) => Ok((idx, *m)),
        }
    }

    fn live(&self) -> impl Iterator<Item = (usize, &Message)> {
        self.messages.iter().enumerate().filter(|(_, m)| !m.deleted)
    }

    fn uidl(&self, m: &Message) -> String {
        // The IMAP identity of the message: same message, same UIDL, in
        // every session and after restarts (see the crate README).
        format!("{}.{}", self.uid_validity, m.uid)
    }
}

#[derive(Debug)]
enum State {
    /// RFC 1939 §4; `user` is the argument of an accepted USER.
    Authorization { user: Option<String> },
    /// Inside an AUTH exchange, waiting for the client's next line.
    Sasl(SaslServer),
    /// The SCRAM server-final data was sent as a challenge; waiting for the
    /// client's empty line (RFC 5034 §4).
    SaslFinal { authcid: String },
    /// RFC 1939 §5.
    Transaction(Maildrop),
    /// Closed; nothing more is processed.
    Closed,
}

#[derive(Debug)]
enum Pending {
    /// USER/PASS or SASL PLAIN: the directory checks the password.
    Password { username: String },
    /// A SASL mechanism is waiting for a lookup.
    Sasl(SaslServer),
    /// APOP: the legacy secret is being looked up.
    Apop { username: String, digest: String },
    /// The secret was proven; the principal is being looked up.
    Principal { username: String },
    /// The slot and snapshot are being taken.
    Open { principal: Box<Principal> },
    /// RETR or TOP.
    Fetch { size: u64, top: Option<u64> },
    /// QUIT in TRANSACTION.
    Commit { marked: usize },
}

/// One POP3 session.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    lockout: Arc<AuthLockout>,
    state: State,
    pending: Option<Pending>,
    requests: VecDeque<Request>,
    outputs: VecDeque<Output>,
    tls_active: bool,
    utf8: bool,
    apop_timestamp: String,
    auth_failures: usize,
    errors: usize,
    unauthenticated_commands: usize,
    principal: Option<Principal>,
}

impl Session {
    /// A new session; the greeting is queued (RFC 1939 §4). The greeting
    /// carries the APOP timestamp (RFC 1939 §7).
    pub fn new(config: SessionConfig, lockout: Arc<AuthLockout>) -> Session {
        let nonce: u64 = rand::random();
        let apop_timestamp = format!("<{}.{}@{}>", nonce, umail_core::unix_now(), config.hostname);
        let tls_active = config.tls_active;
        let mut s = Session {
            config,
            lockout,
            state: State::Authorization { user: None },
            pending: None,
            requests: VecDeque::new(),
            outputs: VecDeque::new(),
            tls_active,
            utf8: false,
            apop_timestamp,
            auth_failures: 0,
            errors: 0,
            unauthenticated_commands: 0,
            principal: None,
        };
        let greeting = format!("{} POP3 server ready {}", IMPLEMENTATION, s.apop_timestamp);
        s.send(ok(&greeting));
        s
    }

    // ---- getters ----

    /// The APOP timestamp from the greeting, brackets included.
    pub fn apop_timestamp(&self) -> &str {
        &self.apop_timestamp
    }

    /// True once the session has ended (after [`Output::Close`]).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// True while a request is outstanding.
    pub fn is_waiting(&self) -> bool {
        self.pending.is_some()
    }

    /// True in TRANSACTION state.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.state, State::Transaction(_))
    }

    /// The logged-in principal.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// True after the client sent `UTF8` (RFC 6856 §2).
    pub fn is_utf8(&self) -> bool {
        self.utf8
    }

    /// True when TLS is active.
    pub fn is_tls(&self) -> bool {
        self.tls_active
    }

    // ---- poll ----

    /// The next request to perform, if any.
    pub fn poll_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    // ---- input ----

    /// One command line from the client, without its line end.
    pub fn handle_line(&mut self, line: &[u8]) {
        if self.is_closed() {
            return;
        }
        if self.pending.is_some() {
            // The driver must answer requests before feeding input.
            self.send(err(Some(RespCode::SysTemp), "internal error: busy"));
            return self.close();
        }
        match std::mem::replace(&mut self.state, State::Closed) {
            State::Sasl(server) => return self.sasl_line(server, line),
            State::SaslFinal { authcid } => {
                self.state = State::Authorization { user: None };
                if line == b"*" {
                    self.send(err(None, "authentication cancelled"));
                    return;
                }
                return self.lookup_principal(authcid);
            }
            other => self.state = other,
        }
        if matches!(self.state, State::Authorization { .. }) {
            self.unauthenticated_commands += 1;
            if self.unauthenticated_commands > MAX_UNAUTHENTICATED_COMMANDS {
                self.send(err(None, "too many commands without authentication"));
                return self.close();
            }
        }
        match codec::parse_command(line) {
            Ok(cmd) => self.command(cmd),
            Err(e) => {
                let reply = match e {
                    ParseError::Empty | ParseError::Unknown => err(None, "unknown command"),
                    ParseError::TooLong => err(None, "line too long"),
                    ParseError::BadArguments(k) => err(None, &format!("invalid arguments for {k}")),
                    ParseError::NotUtf8(k) => err(None, &format!("{k}: arguments must be UTF-8")),
                };
                self.protocol_error(reply);
            }
        }
    }

    /// A command line longer than the bound was received and discarded.
    pub fn handle_line_too_long(&mut self) {
        if self.is_closed() {
            return;
        }
        if matches!(self.state, State::Sasl(_) | State::SaslFinal { .. }) {
            self.state = State::Authorization { user: None };
            self.send(err(None, "authentication response too long"));
            self.count_error();
            return;
        }
        self.protocol_error(err(None, "line too long"));
    }

    /// The answer to the last request.
    pub fn handle_reply(&mut self, reply: Reply) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        match (pending, reply) {
            (Pending::Password { username }, Reply::Principal(r)) => match r {
                Ok(Some(p)) => self.login(p),
                Ok(None) => self.auth_failed(&username),
                Err(e) => self.directory_failed(e),
            },
            (Pending::Principal { username }, Reply::Principal(r)) => match r {
                Ok(Some(p)) if p.status == AccountStatus::Enabled => self.login(p),
                Ok(_) => self.auth_failed(&username),
                Err(e) => self.directory_failed(e),
            },
            (Pending::Sasl(mut server), Reply::ScramCredentials(r)) => match r {
                Ok(creds) => {
                    let step = server.provide_scram(creds);
                    self.sasl_step(server, step);
                }
                Err(e) => self.directory_failed(e),
            },
            (Pending::Sasl(mut server), Reply::LegacySecret(r)) => match r {
                Ok(secret) => {
                    let step = server.provide_secret(secret.as_deref());
                    self.sasl_step(server, step);
                }
                Err(e) => self.directory_failed(e),
            },
            (Pending::Apop { username, digest }, Reply::LegacySecret(r)) => match r {
                Ok(Some(secret)) => {
                    // RFC 1939 §7: MD5(timestamp || secret) in lower-case hex.
                    let mut h = Md5::new();
                    h.update(self.apop_timestamp.as_bytes());
                    h.update(secret.as_bytes());
                    let expected: String =
                        h.finalize().iter().map(|b| format!("{b:02x}")).collect();
                    if constant_time_eq(expected.as_bytes(), digest.as_bytes()) {
                        self.lookup_principal(username);
                    } else {
                        self.auth_failed(&username);
                    }
                }
                Ok(None) => self.auth_failed(&username),
                Err(e) => self.directory_failed(e),
            },
            (Pending::Open { principal }, Reply::Maildrop(r)) => match r {
                Ok(snapshot) => {
                    let account = principal.account();
                    let messages: Vec<Message> = snapshot
                        .messages
                        .iter()
                        .map(|m| Message {
                            uid: m.uid,
                            size: m.size,
                            deleted: false,
                        })
                        .collect();
                    let total: u64 = messages.iter().map(|m| m.size).sum();
                    tracing::info!(target: "pop3", user = %account, messages = messages.len(), "logged in");
                    self.send(ok(&format!(
                        "maildrop has {} messages ({} octets)",
                        messages.len(),
                        total
                    )));
                    self.state = State::Transaction(Maildrop {
                        account,
                        mailbox: snapshot.mailbox,
                        uid_validity: snapshot.uid_validity,
                        messages,
                    });
                    self.principal = Some(*principal);
                }
                Err(OpenError::InUse) => {
                    // RFC 2449 §8.1.1: [IN-USE].
                    self.state = State::Authorization { user: None };
                    self.send(err(
                        Some(RespCode::InUse),
                        "too many sessions for this account",
                    ));
                }
                Err(OpenError::Store(e)) => {
                    tracing::warn!(target: "pop3", error = %e, "cannot open maildrop");
                    self.state = State::Authorization { user: None };
                    self.send(err(Some(RespCode::SysTemp), "cannot open the maildrop"));
                }
            },
            (Pending::Fetch { size, top }, Reply::Content(r)) => match r {
                Ok(Some(content)) => {
                    match top {
                        None => self.send(ok(&format!("{size} octets"))),
                        Some(_) => self.send(ok("top of message follows")),
                    }
                    let encoder = match top {
                        None => MessageEncoder::retr(content),
                        Some(n) => MessageEncoder::top(content, n),
                    };
                    self.outputs.push_back(Output::Message(encoder));
                }
                Ok(None) => self.send(err(None, "message was removed by another session")),
                Err(e) => {
                    tracing::warn!(target: "pop3", error = %e, "cannot read message");
                    self.send(err(Some(RespCode::SysTemp), "cannot read the message"));
                }
            },
            (Pending::Commit { marked }, Reply::Committed(r)) => {
                match r {
                    Ok(removed) => {
                        tracing::info!(target: "pop3", marked, removed = removed.len(), "update state committed");
                        self.send(ok(&format!(
                            "{} POP3 server signing off ({} messages deleted)",
                            IMPLEMENTATION, marked
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(target: "pop3", error = %e, "update state failed");
                        // RFC 1939 §6.
                        self.send(err(
                            Some(RespCode::SysTemp),
                            "some deleted messages not removed",
                        ));
                    }
                }
                self.close();
            }
            (_, reply) => {
                tracing::error!(target: "pop3", ?reply, "reply does not match the request");
                self.send(err(Some(RespCode::SysTemp), "internal error"));
                self.close();
            }
        }
    }

    /// The TLS handshake after `STLS` succeeded. RFC 2595 §4: the session
    /// starts over in AUTHORIZATION state with no USER remembered.
    pub fn handle_tls_established(&mut self) {
        self.tls_active = true;
        if !self.is_closed() {
            self.state = State::Authorization { user: None };
        }
    }

    /// The idle timer fired. RFC 1939 §3: the session ends without
    /// entering UPDATE state, so nothing is deleted.
    pub fn handle_timeout(&mut self) {
        if self.is_closed() {
            return;
        }
        self.send(err(None, "autologout; idle for too long"));
        self.close();
    }

    /// The server is shutting down: the current command has finished; say
    /// goodbye without entering UPDATE state.
    pub fn handle_shutdown(&mut self) {
        if self.is_closed() {
            return;
        }
        self.send(err(Some(RespCode::SysTemp), "server shutting down"));
        self.close();
    }

    // ---- internals ----

    fn send(&mut self, bytes: Vec<u8>) {
        self.outputs.push_back(Output::Data(bytes));
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.outputs.push_back(Output::Close);
    }

    fn request(&mut self, pending: Pending, request: Request) {
        self.pending = Some(pending);
        self.requests.push_back(request);
    }

    fn count_error(&mut self) {
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            self.send(err(None, "too many errors"));
            self.close();
        }
    }

    fn protocol_error(&mut self, reply: Vec<u8>) {
        self.send(reply);
        self.count_error();
    }

    fn plaintext_allowed(&self) -> bool {
        self.tls_active || self.config.plaintext_auth_without_tls
    }

    fn mechanism_allowed(&self, m: Mechanism) -> bool {
        SASL_MECHANISMS.contains(&m) && (!m.is_plaintext() || self.plaintext_allowed())
    }

    fn capabilities(&self) -> Vec<String> {
        let mut caps = vec![
            "TOP".to_string(),
            "UIDL".to_string(),
            "RESP-CODES".to_string(),
            "AUTH-RESP-CODE".to_string(),
            "PIPELINING".to_string(),
            // RFC 6856 §2: USER means UTF-8 user names and passwords work.
            "UTF8 USER".to_string(),
        ];
        if !self.is_authenticated() {
            if self.plaintext_allowed() {
                caps.push("USER".to_string());
            }
            let mechs: Vec<&str> = SASL_MECHANISMS
                .iter()
                .filter(|m| self.mechanism_allowed(**m))
                .map(|m| m.name())
                .collect();
            caps.push(format!("SASL {}", mechs.join(" ")));
            if self.config.tls_available && !self.tls_active {
                caps.push("STLS".to_string());
            }
        }
        caps.push(format!("IMPLEMENTATION {IMPLEMENTATION}"));
        caps
    }

    // Refuses an IP that is locked out; true when refused.
    fn locked_out(&mut self) -> bool {
        if self.lockout.is_locked(self.config.peer) {
            tracing::info!(target: "pop3", peer = %self.config.peer, "login refused: address locked out");
            self.send(err(
                Some(RespCode::SysTemp),
                "too many failed logins from your address; try again later",
            ));
            self.close();
            return true;
        }
        false
    }

    fn command(&mut self, cmd: Command) {
        // Commands valid in every state.
        match cmd {
            Command::Capa => {
                // RFC 2449 §5.
                let caps = self.capabilities();
                self.send(codec::multiline("Capability list follows", caps));
                return;
            }
            Command::Quit if !self.is_authenticated() => {
                // RFC 1939 §4: QUIT in AUTHORIZATION does not enter UPDATE.
                self.send(ok(&format!("{IMPLEMENTATION} POP3 server signing off")));
                return self.close();
            }
            _ => {}
        }
        let authenticated = self.is_authenticated();
        match cmd {
            Command::Stls
            | Command::User(_)
            | Command::Pass(_)
            | Command::Apop { .. }
            | Command::Auth { .. }
            | Command::Utf8
                if authenticated =>
            {
                self.protocol_error(err(None, "not allowed after authentication"));
            }
            Command::Stls => {
                // RFC 2595 §4.
                if self.tls_active {
                    self.protocol_error(err(None, "command not permitted when TLS active"));
                } else if !self.config.tls_available {
                    self.protocol_error(err(None, "TLS is not available"));
                } else {
                    self.send(ok("begin TLS negotiation"));
                    self.outputs.push_back(Output::StartTls);
                }
            }
            Command::Utf8 => {
                // RFC 6856 §2.
                self.utf8 = true;
                self.send(ok("UTF8 enabled"));
            }
            Command::User(name) => {
                if !self.plaintext_allowed() {
                    return self.protocol_error(err(
                        Some(RespCode::Auth),
                        "plaintext authentication disallowed without TLS; use STLS",
                    ));
                }
                // Any name is accepted here so USER does not reveal which
                // accounts exist (RFC 1939 §13).
                self.state = State::Authorization { user: Some(name) };
                self.send(ok("send PASS"));
            }
            Command::Pass(password) => {
                if !self.plaintext_allowed() {
                    return self.protocol_error(err(
                        Some(RespCode::Auth),
                        "plaintext authentication disallowed without TLS; use STLS",
                    ));
                }
                let State::Authorization { user } =
                    std::mem::replace(&mut self.state, State::Authorization { user: None })
                else {
                    return;
                };
                let Some(username) = user else {
                    return self.protocol_error(err(None, "USER first"));
                };
                if self.locked_out() {
                    return;
                }
                self.request(
                    Pending::Password {
                        username: username.clone(),
                    },
                    Request::VerifyPassword { username, password },
                );
            }
            Command::Apop { name, digest } => {
                self.state = State::Authorization { user: None };
                if self.locked_out() {
                    return;
                }
                self.request(
                    Pending::Apop {
                        username: name.clone(),
                        digest,
                    },
                    Request::LegacySecret { username: name },
                );
            }
            Command::Auth {
                mechanism,
                initial_response,
            } => self.auth(mechanism, initial_response),
            _ if !authenticated => {
                self.protocol_error(err(None, "command not valid in this state; log in first"))
            }
            cmd => self.transaction(cmd),
        }
    }

    fn auth(&mut self, mechanism: Option<String>, initial_response: Option<String>) {
        self.state = State::Authorization { user: None };
        let Some(mechanism) = mechanism else {
            // RFC 1734 practice: list the mechanisms.
            let mechs: Vec<&str> = SASL_MECHANISMS
                .iter()
                .filter(|m| self.mechanism_allowed(**m))
                .map(|m| m.name())
                .collect();
            self.send(codec::multiline("", mechs));
            return;
        };
        let mech = match Mechanism::parse(&mechanism) {
            Some(m) if SASL_MECHANISMS.contains(&m) => m,
            _ => {
                return self.protocol_error(err(None, "unrecognized authentication type"));
            }
        };
        if !self.mechanism_allowed(mech) {
            return self.protocol_error(err(
                Some(RespCode::Auth),
                "plaintext authentication disallowed without TLS; use STLS",
            ));
        }
        // RFC 5034 §4: "=" is an empty initial response.
        let initial = match initial_response.as_deref() {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(b64) => match B64.decode(b64) {
                Ok(v) => Some(v),
                Err(_) => {
                    return self.protocol_error(err(None, "invalid base64 in initial response"));
                }
            },
        };
        if self.locked_out() {
            return;
        }
        let mut server = SaslServer::new(mech, &self.config.hostname);
        let step = server.handle_client(initial.as_deref());
        self.sasl_step(server, step);
    }

    fn sasl_line(&mut self, mut server: SaslServer, line: &[u8]) {
        self.state = State::Authorization { user: None };
        // RFC 5034 §4: "*" cancels the exchange.
        if line == b"*" {
            let _ = server.cancel();
            self.send(err(None, "authentication cancelled"));
            return;
        }
        let Ok(data) = B64.decode(line) else {
            self.send(err(None, "invalid base64 in authentication response"));
            self.count_error();
            return;
        };
        let step = server.handle_client(Some(&data));
        self.sasl_step(server, step);
    }

    fn sasl_step(&mut self, server: SaslServer, step: Step) {
        match step {
            Step::Challenge(c) => {
                let mut line = b"+ ".to_vec();
                line.extend_from_slice(B64.encode(c).as_bytes());
                line.extend_from_slice(b"\r\n");
                self.send(line);
                self.state = State::Sasl(server);
            }
            Step::VerifyPassword { authcid, password } => self.request(
                Pending::Password {
                    username: authcid.clone(),
                },
                Request::VerifyPassword {
                    username: authcid,
                    password,
                },
            ),
            Step::NeedScramCredentials { username } => self.request(
                Pending::Sasl(server),
                Request::ScramCredentials { username },
            ),
            Step::NeedLegacySecret { username } => {
                self.request(Pending::Sasl(server), Request::LegacySecret { username })
            }
            Step::Success {
                authcid,
                additional,
            } => match additional {
                Some(data) => {
                    // RFC 5034 §4: server data on success goes in a final
                    // challenge that the client answers with an empty line.
                    let mut line = b"+ ".to_vec();
                    line.extend_from_slice(B64.encode(data).as_bytes());
                    line.extend_from_slice(b"\r\n");
                    self.send(line);
                    self.state = State::SaslFinal { authcid };
                }
                None => self.lookup_principal(authcid),
            },
            Step::Failure(e) => match e {
                SaslError::InvalidCredentials | SaslError::MechanismUnavailable => {
                    self.auth_failed("(sasl)")
                }
                SaslError::Cancelled => self.send(err(None, "authentication cancelled")),
                SaslError::Malformed(_) | SaslError::Unsupported(_) => {
                    self.send(err(
                        Some(RespCode::Auth),
                        &format!("authentication failed: {e}"),
                    ));
                    self.count_auth_failure();
                }
            },
        }
    }

    fn lookup_principal(&mut self, username: String) {
        self.request(
            Pending::Principal {
                username: username.clone(),
            },
            Request::Principal { username },
        );
    }

    fn login(&mut self, principal: Principal) {
        if !principal.may_use(Protocol::Pop3) {
            tracing::info!(target: "pop3", user = %principal.account(), "login refused: POP3 not allowed");
            self.send(err(
                Some(RespCode::Auth),
                "POP3 access is not enabled for this account",
            ));
            return;
        }
        self.lockout.record_success(self.config.peer);
        let account = principal.account();
        self.request(
            Pending::Open {
                principal: Box::new(principal),
            },
            Request::OpenMaildrop { account },
        );
    }

    fn auth_failed(&mut self, username: &str) {
        tracing::info!(target: "pop3", user = %username, peer = %self.config.peer, "authentication failed");
        // RFC 3206 §5: [AUTH] for a credentials problem.
        self.send(err(Some(RespCode::Auth), "authentication failed"));
        self.count_auth_failure();
    }

    fn count_auth_failure(&mut self) {
        let locked = self.lockout.record_failure(self.config.peer);
        self.auth_failures += 1;
        if locked || self.auth_failures >= self.config.max_auth_failures.max(1) {
            self.close();
        }
    }

    fn directory_failed(&mut self, e: DirectoryError) {
        tracing::warn!(target: "pop3", error = %e, "directory unavailable");
        self.state = State::Authorization { user: None };
        // A directory that cannot answer is never read as "wrong password".
        self.send(err(
            Some(RespCode::SysTemp),
            "authentication service unavailable; try again later",
        ));
    }

    fn transaction(&mut self, cmd: Command) {
        let State::Transaction(drop) = &mut self.state else {
            return;
        };
        let reply = match cmd {
            Command::Stat => {
                // RFC 1939 §5: deleted messages are not counted.
                let (n, size) = drop
                    .live()
                    .fold((0usize, 0u64), |(n, s), (_, m)| (n + 1, s + m.size));
                ok(&format!("{n} {size}"))
            }
            Command::List(None) => {
                let n = drop.live().count();
                let size: u64 = drop.live().map(|(_, m)| m.size).sum();
                let lines: Vec<String> = drop
                    .live()
                    .map(|(i, m)| format!("{} {}", i + 1, m.size))
                    .collect();
                codec::multiline(&format!("{n} messages ({size} octets)"), lines)
            }
            Command::List(Some(n)) => match drop.get(n) {
                Ok((_, m)) => ok(&format!("{n} {}", m.size)),
                Err(e) => e,
            },
            Command::Uidl(None) => {
                let lines: Vec<String> = drop
                    .live()
                    .map(|(i, m)| format!("{} {}", i + 1, drop.uidl(m)))
                    .collect();
                codec::multiline("unique-id listing follows", lines)
            }
            Command::Uidl(Some(n)) => match drop.get(n) {
                Ok((_, m)) => ok(&format!("{n} {}", drop.uidl(&m))),
                Err(e) => e,
            },
            Command::Retr(n) | Command::Top { msg: n, .. } => {
                let top = match cmd {
                    Command::Top { lines, .. } => Some(lines),
                    _ => None,
                };
                match drop.get(n) {
                    Ok((_, m)) => {
                        let request = Request::Fetch {
                            account: drop.account.clone(),
                            mailbox: drop.mailbox,
                            uid: m.uid,
                        };
                        return self.request(Pending::Fetch { size: m.size, top }, request);
                    }
                    Err(e) => e,
                }
            }
            Command::Dele(n) => match drop.get(n) {
                Ok((i, _)) => {
                    drop.messages[i].deleted = true;
                    ok(&format!("message {n} deleted"))
                }
                Err(e) => e,
            },
            Command::Noop => ok(""),
            Command::Rset => {
                // RFC 1939 §5: unmark every message marked deleted.
                for m in &mut drop.messages {
                    m.deleted = false;
                }
                let n = drop.messages.len();
                let size: u64 = drop.messages.iter().map(|m| m.size).sum();
                ok(&format!("maildrop has {n} messages ({size} octets)"))
            }
            Command::Quit => {
                // RFC 1939 §6: UPDATE state.
                let uids: Vec<Uid> = drop
                    .messages
                    .iter()
                    .filter(|m| m.deleted)
                    .map(|m| m.uid)
                    .collect();
                if uids.is_empty() {
                    self.send(ok(&format!("{IMPLEMENTATION} POP3 server signing off")));
                    return self.close();
                }
                let marked = uids.len();
                let request = Request::Commit {
                    account: drop.account.clone(),
                    mailbox: drop.mailbox,
                    uids,
                    action: self.config.delete_action,
                };
                return self.request(Pending::Commit { marked }, request);
            }
            _ => return self.protocol_error(err(None, "command not valid in this state")),
        };
        self.send(reply);
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
