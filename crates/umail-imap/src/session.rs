//! The IMAP session state machine (RFC 9051 §3): no sockets. The driver
//! feeds it framed input and writes what [`Session::take_output`] returns.
//!
//! Store calls are `async` (the session talks to the [`MailStore`] trait),
//! but nothing here touches the network, so every transcript is testable
//! with byte strings.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use tokio::sync::broadcast::error::TryRecvError;
use umail_core::config::ImapConfig;
use umail_core::net::{AccountSessionSlot, AccountSessions};
use umail_core::sasl::{AuthStep, Authenticator, Mechanism};
use umail_core::store::ContentPart;
use umail_core::{
    ChangeFeed, ConnectionInfo, Flag, FlagOp, Flags, MailboxChange, MailboxId, MailboxInfo,
    MessageMeta, ModSeq, Principal, Protocol, Services, StoreError, Uid,
};

use crate::cache::{HeaderCache, MailboxKey};
use crate::codec::{
    self, CommandBody, FetchAttr, FrameEvent, ListReturn, ListSelect, Partial, ResponseBuf,
    SearchKey, SearchReturn, Section, SectionText, SelectParams, SequenceSet, SortCriterion,
    Status, StatusItem, StoreMode, ThreadAlgorithm, flag_list, utf7,
};
use crate::mime;
use crate::search::{self, HeaderSummary};
use crate::sort;

/// The session's protocol state (RFC 9051 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Before LOGIN/AUTHENTICATE.
    NotAuthenticated,
    /// Logged in, no mailbox selected.
    Authenticated,
    /// A mailbox is selected.
    Selected,
    /// LOGOUT done or the connection is closing.
    Logout,
}

/// What kind of input the session expects next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputMode {
    /// Commands (feed [`FrameEvent`]s).
    Command,
    /// Raw lines answering an AUTHENTICATE challenge.
    AuthLine,
    /// Raw lines during IDLE (`DONE`).
    IdleLine,
}

/// What the driver must do after handing input to the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Write the output and keep reading.
    Continue,
    /// Write the output, discard buffered input, then perform the TLS
    /// handshake and call [`Session::tls_started`] (RFC 9051 §6.2.1).
    StartTls,
    /// Write the output and close the connection.
    Close,
}

#[derive(Debug, Clone)]
struct Msg {
    uid: Uid,
    flags: Flags,
    modseq: ModSeq,
    internal_date: i64,
    size: u64,
    /// Expunged by another session but not yet announced (RFC 9051 §7.5.1).
    expunged: bool,
}

impl From<MessageMeta> for Msg {
    fn from(m: MessageMeta) -> Msg {
        Msg {
            uid: m.uid,
            flags: m.flags,
            modseq: m.modseq,
            internal_date: m.internal_date,
            size: m.size,
            expunged: false,
        }
    }
}

struct Selected {
    id: MailboxId,
    /// UIDVALIDITY at SELECT: with the id, names this incarnation of the
    /// mailbox in the header cache.
    uid_validity: u32,
    name: String,
    read_only: bool,
    /// The session's view: index + 1 is the sequence number.
    msgs: Vec<Msg>,
    feed: ChangeFeed,
    dirty: bool,
    pending_expunge: bool,
    /// During IDLE the view shrinks to its UIDs (`msgs` is emptied): an
    /// idle session may sit for hours, and thousands of them must fit in
    /// little memory. Rebuilt from the store when IDLE ends.
    idle_view: Option<IdleView>,
}

/// The view of a session in IDLE: UIDs in sequence order and the highest
/// MODSEQ the session knows; a message with a higher MODSEQ has changed.
/// Changes are applied from the change feed's events without reading the
/// mailbox (ten thousand idle sessions on one INBOX must not each read it
/// when a message arrives); only a lagging feed forces a re-read.
struct IdleView {
    uids: Vec<Uid>,
    modseq: ModSeq,
    /// Events received by [`Session::changed`], not yet applied.
    events: Vec<MailboxChange>,
    /// The feed lagged or the mailbox went away: re-read it.
    reread: bool,
}

impl Selected {
    fn max_uid(&self) -> Uid {
        self.msgs.last().map(|m| m.uid).unwrap_or(0)
    }

    fn index_of(&self, uid: Uid) -> Option<usize> {
        self.msgs.binary_search_by_key(&uid, |m| m.uid).ok()
    }
}

enum Pending {
    None,
    Auth {
        tag: String,
        auth: Box<Authenticator>,
    },
    AuthFinal {
        tag: String,
        principal: Box<Principal>,
    },
    Idle {
        tag: String,
    },
}

#[derive(Debug, Default, Clone, Copy)]
struct Enabled {
    rev2: bool,
    utf8: bool,
    condstore: bool,
    /// RFC 7162 §3.2.3: VANISHED instead of EXPUNGE, `SELECT (QRESYNC ...)`.
    qresync: bool,
}

/// The result of one command, before the tagged response is written.
struct Done {
    status: Status,
    code: Option<String>,
    text: String,
}

impl Done {
    fn ok(text: &str) -> Done {
        Done {
            status: Status::Ok,
            code: None,
            text: text.into(),
        }
    }
    fn ok_code(code: impl Into<String>, text: &str) -> Done {
        Done {
            status: Status::Ok,
            code: Some(code.into()),
            text: text.into(),
        }
    }
    fn no(code: Option<&str>, text: &str) -> Done {
        Done {
            status: Status::No,
            code: code.map(Into::into),
            text: text.into(),
        }
    }
    fn bad(text: &str) -> Done {
        Done {
            status: Status::Bad,
            code: None,
            text: text.into(),
        }
    }
}

/// One message matched by the search criteria of SEARCH, SORT or THREAD.
struct Hit {
    seq: u32,
    uid: Uid,
    modseq: ModSeq,
    info: sort::SortMessage,
}

/// `* SEARCH` / `* SORT`: the numbers, then `(MODSEQ n)` when a MODSEQ
/// search key asks for it (RFC 7162 §3.1.5). Thousands of numbers are
/// written in place, not one allocation each.
fn numbers_line(name: &str, numbers: &[u32], modseq: Option<ModSeq>) -> String {
    let mut line = String::with_capacity(name.len() + 1 + numbers.len() * 6);
    line.push_str(name);
    for n in numbers {
        let _ = write!(line, " {n}");
    }
    if let Some(m) = modseq {
        let _ = write!(line, " (MODSEQ {m})");
    }
    line
}

/// What an ESEARCH response reports: SEARCH and SORT choose MIN, MAX and
/// the ALL rendering differently (numeric order vs sort order).
struct EsearchResult<F: FnOnce() -> String> {
    min: Option<u32>,
    max: Option<u32>,
    count: usize,
    all: F,
    /// The highest MODSEQ, when a MODSEQ search key asks for it.
    modseq: Option<ModSeq>,
}

/// The `ESEARCH` response (RFC 4731 §3.1, RFC 5267 §3.2) for the requested
/// return options; MIN, MAX and ALL are omitted when nothing matched.
fn esearch_line<F: FnOnce() -> String>(
    tag: &str,
    uid: bool,
    opts: &[SearchReturn],
    result: EsearchResult<F>,
) -> String {
    let mut line = String::from("ESEARCH (TAG ");
    let mut q = ResponseBuf::new();
    q.string(tag.as_bytes());
    line.push_str(&String::from_utf8_lossy(&q.take()));
    line.push(')');
    if uid {
        line.push_str(" UID");
    }
    if opts.contains(&SearchReturn::Min)
        && let Some(m) = result.min
    {
        line.push_str(&format!(" MIN {m}"));
    }
    if opts.contains(&SearchReturn::Max)
        && let Some(m) = result.max
    {
        line.push_str(&format!(" MAX {m}"));
    }
    if opts.contains(&SearchReturn::Count) {
        line.push_str(&format!(" COUNT {}", result.count));
    }
    if opts.contains(&SearchReturn::All) && result.count > 0 {
        line.push_str(&format!(" ALL {}", (result.all)()));
    }
    if let Some(m) = result.modseq {
        line.push_str(&format!(" MODSEQ {m}"));
    }
    line
}

/// RFC 9051 §6.4.4 / RFC 5256 §3: UTF-8 and US-ASCII are supported; any
/// other charset gets `NO [BADCHARSET (...)]` listing them.
fn check_charset(charset: &str) -> Result<(), Done> {
    if matches!(charset, "UTF-8" | "US-ASCII" | "UTF8") {
        Ok(())
    } else {
        Err(Done::no(
            Some("BADCHARSET (UTF-8 US-ASCII)"),
            "Unsupported charset",
        ))
    }
}

// RFC 9051 §7.1: response codes derived from the store's error kinds.
fn store_error(e: &StoreError) -> Done {
    match e {
        StoreError::NoSuchMailbox(_) => Done::no(Some("NONEXISTENT"), "No such mailbox"),
        StoreError::MailboxExists(_) => Done::no(Some("ALREADYEXISTS"), "Mailbox already exists"),
        StoreError::InvalidName(_) => Done::no(Some("CANNOT"), "Invalid mailbox name"),
        StoreError::NotAllowed(_) => Done::no(Some("CANNOT"), "Operation not allowed"),
        StoreError::OverQuota => Done::no(Some("OVERQUOTA"), "Quota exceeded"),
        StoreError::TooLarge => Done::no(Some("TOOBIG"), "Message too large"),
        StoreError::NoSuchAccount(_) => Done::no(Some("NONEXISTENT"), "No such account"),
        StoreError::Io(_) => Done::no(Some("SERVERBUG"), "Storage failure, try again"),
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn format_internal_date(secs: i64) -> String {
    use chrono::{Datelike, Timelike};
    let d = chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default();
    format!(
        "\"{:02}-{}-{:04} {:02}:{:02}:{:02} +0000\"",
        d.day(),
        MONTHS[d.month0() as usize],
        d.year(),
        d.hour(),
        d.minute(),
        d.second()
    )
}

fn section_spec(section: &Section) -> String {
    let mut s: Vec<String> = section.part.iter().map(|p| p.to_string()).collect();
    if let Some(t) = &section.text {
        s.push(match t {
            SectionText::Header => "HEADER".into(),
            SectionText::Text => "TEXT".into(),
            SectionText::Mime => "MIME".into(),
            SectionText::HeaderFields(f) => format!("HEADER.FIELDS ({})", header_names(f)),
            SectionText::HeaderFieldsNot(f) => format!("HEADER.FIELDS.NOT ({})", header_names(f)),
        });
    }
    s.join(".")
}

/// Header names echoed as astrings: atoms when possible, quoted otherwise.
fn header_names(names: &[String]) -> String {
    names
        .iter()
        .map(|n| {
            if !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                n.clone()
            } else {
                let mut r = ResponseBuf::new();
                r.string(n.as_bytes());
                String::from_utf8_lossy(&r.take()).into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn apply_partial(data: Vec<u8>, partial: Option<Partial>) -> (Vec<u8>, String) {
    match partial {
        None => (data, String::new()),
        Some(p) => {
            let start = (p.origin as usize).min(data.len());
            let end = start.saturating_add(p.length as usize).min(data.len());
            (data[start..end].to_vec(), format!("<{}>", p.origin))
        }
    }
}

/// Matches a LIST pattern (`*` any, `%` any but the separator) against a
/// name (RFC 9051 §6.3.9). Dynamic programming: O(pattern × name).
fn pattern_matches(pattern: &[char], name: &[char]) -> bool {
    let mut dp = vec![false; name.len() + 1];
    dp[0] = true;
    for &p in pattern {
        let mut next = vec![false; name.len() + 1];
        match p {
            '*' | '%' => {
                let mut reach = false;
                for j in 0..=name.len() {
                    reach |= dp[j];
                    next[j] = reach;
                    if p == '%' && j < name.len() && name[j] == '/' {
                        reach = false;
                    }
                }
            }
            c => {
                for j in 0..name.len() {
                    if dp[j] && name[j] == c {
                        next[j + 1] = true;
                    }
                }
            }
        }
        dp = next;
    }
    dp[name.len()]
}

fn normalize_inbox(name: &str) -> String {
    match name.split_once('/') {
        Some((first, rest)) if first.eq_ignore_ascii_case("INBOX") => format!("INBOX/{rest}"),
        None if name.eq_ignore_ascii_case("INBOX") => "INBOX".into(),
        _ => name.to_string(),
    }
}

/// One IMAP session.
pub struct Session {
    services: Services,
    config: ImapConfig,
    info: ConnectionInfo,
    tls_available: bool,
    tls_active: bool,
    state: SessionState,
    selected: Option<Selected>,
    principal: Option<Principal>,
    out: ResponseBuf,
    pending: Pending,
    enabled: Enabled,
    auth_failures: usize,
    closing: bool,
    saved_search: Vec<Uid>,
    starttls: bool,
    /// Header summaries shared with the server's other sessions; `None`:
    /// summaries are computed per SEARCH and not kept.
    header_cache: Option<Arc<HeaderCache>>,
    /// Per-account session counting, when the server provides it.
    account_sessions: Option<Arc<AccountSessions>>,
    /// This session's count while logged in.
    session_slot: Option<AccountSessionSlot>,
}

/// Most messages one batch read asks the store for (SEARCH, SORT, THREAD,
/// FETCH): one read transaction and task switch per batch, not per message.
const BATCH_MESSAGES: usize = 256;

/// About the most bytes (by RFC822.SIZE) of whole messages one batch holds:
/// `SEARCH TEXT` or `FETCH 1:* BODY[]` over a large mailbox must not hold
/// all of it in memory at once. A single larger message is a batch alone.
const BATCH_BYTES: u64 = 8 << 20;

/// Splits `items` into batches of at most [`BATCH_MESSAGES`] and, when
/// whole messages are read, about [`BATCH_BYTES`] (`size` of an item).
fn batches<T>(items: &[T], whole: bool, size: impl Fn(&T) -> u64) -> Vec<&[T]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (i, item) in items.iter().enumerate() {
        let s = if whole { size(item) } else { 0 };
        if i > start && (i - start >= BATCH_MESSAGES || bytes.saturating_add(s) > BATCH_BYTES) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes = bytes.saturating_add(s);
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

/// True when `attr` needs at most the message's header block: FETCH then
/// reads only that (ENVELOPE, `BODY[HEADER.FIELDS (...)]`, ...).
fn header_only(attr: &FetchAttr) -> bool {
    match attr {
        FetchAttr::Flags
        | FetchAttr::Uid
        | FetchAttr::InternalDate
        | FetchAttr::Rfc822Size
        | FetchAttr::ModSeq
        | FetchAttr::Envelope
        | FetchAttr::Rfc822Header => true,
        FetchAttr::BodySection { section, .. } => {
            section.part.is_empty()
                && matches!(
                    section.text,
                    Some(
                        SectionText::Header
                            | SectionText::HeaderFields(_)
                            | SectionText::HeaderFieldsNot(_)
                    )
                )
        }
        _ => false,
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("state", &self.state)
            .field("peer", &self.info.peer)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for a new connection. `tls_available`: STARTTLS can be
    /// offered; `tls_active`: the connection is already TLS (IMAPS).
    pub fn new(
        services: Services,
        config: ImapConfig,
        info: ConnectionInfo,
        tls_available: bool,
        tls_active: bool,
    ) -> Session {
        Session {
            services,
            config,
            info,
            tls_available,
            tls_active,
            state: SessionState::NotAuthenticated,
            selected: None,
            principal: None,
            out: ResponseBuf::new(),
            pending: Pending::None,
            enabled: Enabled::default(),
            auth_failures: 0,
            closing: false,
            saved_search: Vec::new(),
            starttls: false,
            header_cache: None,
            account_sessions: None,
            session_slot: None,
        }
    }

    /// Shares `cache` with the session: header-only SEARCH keys are then
    /// answered from summaries kept across commands and sessions.
    /// [`ImapServer`](crate::ImapServer) gives all its sessions one cache.
    pub fn with_header_cache(mut self, cache: Arc<HeaderCache>) -> Session {
        self.header_cache = Some(cache);
        self
    }

    /// Counts this session's login in `sessions` and refuses it when the
    /// account already has `max_sessions_per_user` sessions.
    /// [`ImapServer`](crate::ImapServer) gives all its sessions one registry.
    pub fn with_account_sessions(mut self, sessions: Arc<AccountSessions>) -> Session {
        self.account_sessions = Some(sessions);
        self
    }

    // ----- getters -----

    /// The protocol state.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// What input the session expects next.
    pub fn input_mode(&self) -> InputMode {
        match self.pending {
            Pending::Auth { .. } | Pending::AuthFinal { .. } => InputMode::AuthLine,
            Pending::Idle { .. } => InputMode::IdleLine,
            Pending::None => InputMode::Command,
        }
    }

    /// The logged-in principal.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// True once the session has decided to close the connection.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// The inactivity timeout that applies now (RFC 9051 §5.4).
    pub fn idle_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(if self.state == SessionState::NotAuthenticated {
            self.config.preauth_timeout_secs
        } else {
            self.config.idle_timeout_secs
        })
    }

    /// The framer limits from the configuration.
    pub fn framer_limits(&self) -> codec::FramerLimits {
        codec::FramerLimits {
            max_line: self.config.max_line,
            max_literal: self.config.max_literal,
            append_limit: self.config.append_limit,
        }
    }

    /// Takes the bytes to write to the client.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.out.take()
    }

    fn account(&self) -> String {
        self.principal
            .as_ref()
            .map(|p| p.account())
            .unwrap_or_default()
    }

    fn utf8(&self) -> bool {
        self.enabled.rev2 || self.enabled.utf8
    }

    /// The capability list for the current state (RFC 9051 §7.2.2).
    pub fn capabilities(&self) -> String {
        let mut caps: Vec<String> = vec!["IMAP4rev1".into(), "IMAP4rev2".into()];
        if self.state == SessionState::NotAuthenticated {
            if self.tls_available && !self.tls_active {
                caps.push("STARTTLS".into());
            }
            if self.plaintext_allowed() {
                caps.push("AUTH=PLAIN".into());
            } else {
                // RFC 9051 §6.2.3: LOGIN is disabled before TLS.
                caps.push("LOGINDISABLED".into());
            }
            caps.push("AUTH=SCRAM-SHA-256".into());
            caps.push("SASL-IR".into());
        }
        for c in [
            "ID",
            "ENABLE",
            "IDLE",
            "NAMESPACE",
            "UIDPLUS",
            "MOVE",
            "UNSELECT",
            "CHILDREN",
            "LIST-EXTENDED",
            "LIST-STATUS",
            "SPECIAL-USE",
            "LITERAL+",
            "ESEARCH",
            "SEARCHRES",
            "CONDSTORE",
            "QRESYNC",
            "QUOTA",
            "QUOTA=RES-STORAGE",
            "QUOTA=RES-MESSAGE",
            "UTF8=ACCEPT",
            "BINARY",
            "STATUS=SIZE",
        ] {
            caps.push(c.into());
        }
        // RFC 5256 §1 / RFC 5267 / RFC 5957: only meaningful once a mailbox
        // can be selected, so advertised after authentication only.
        if matches!(
            self.state,
            SessionState::Authenticated | SessionState::Selected
        ) {
            for c in [
                "SORT",
                "SORT=DISPLAY",
                "THREAD=ORDEREDSUBJECT",
                "THREAD=REFERENCES",
                "ESORT",
            ] {
                caps.push(c.into());
            }
        }
        caps.push(format!("APPENDLIMIT={}", self.config.append_limit));
        caps.join(" ")
    }

    fn plaintext_allowed(&self) -> bool {
        self.tls_active || self.config.plaintext_auth_without_tls
    }

    // ----- input -----

    /// Writes the server greeting (RFC 9051 §7.1.1).
    pub fn greeting(&mut self) {
        let caps = format!("CAPABILITY {}", self.capabilities());
        self.out
            .untagged_status(Status::Ok, Some(&caps), "umail IMAP4rev2 server ready");
    }

    /// Refuses the connection at greeting time (`* BYE`).
    pub fn refuse(&mut self, reason: &str) {
        self.out.untagged_status(Status::Bye, None, reason);
        self.closing = true;
        self.state = SessionState::Logout;
    }

    /// The server is shutting down: say goodbye (RFC 9051 §7.1.5).
    pub fn shutdown(&mut self) {
        self.out
            .untagged_status(Status::Bye, None, "Server shutting down");
        self.closing = true;
        self.state = SessionState::Logout;
    }

    /// The inactivity timer fired (RFC 9051 §5.4 autologout).
    pub fn timeout(&mut self) {
        self.out
            .untagged_status(Status::Bye, None, "Autologout; idle for too long");
        self.closing = true;
        self.state = SessionState::Logout;
    }

    /// TLS is now active after STARTTLS.
    pub fn tls_started(&mut self) {
        self.tls_active = true;
    }

    /// Handles one framer event in command mode.
    pub async fn handle_frame(&mut self, ev: FrameEvent) -> Action {
        match ev {
            FrameEvent::Command(bytes) => self.handle_command(&bytes).await,
            FrameEvent::NeedContinuation => {
                self.out.continuation("Ready for literal data");
                Action::Continue
            }
            FrameEvent::LineTooLong { tag } => {
                let text = "Command line too long";
                match tag {
                    Some(t) => self.out.tagged(&t, Status::Bad, Some("TOOBIG"), text),
                    None => self.out.untagged_status(Status::Bad, Some("TOOBIG"), text),
                }
                Action::Continue
            }
            FrameEvent::LiteralTooLarge { tag, append, fatal } => {
                let tag = tag.unwrap_or_else(|| "*".into());
                // RFC 7889 §4: APPEND above APPENDLIMIT gets NO [TOOBIG].
                let status = if append { Status::No } else { Status::Bad };
                self.out
                    .tagged(&tag, status, Some("TOOBIG"), "Literal too large");
                if fatal {
                    // RFC 7888 §4: the non-synchronizing literal is already
                    // on its way; we cannot resynchronise.
                    self.out
                        .untagged_status(Status::Bye, None, "Literal too large");
                    self.closing = true;
                    return Action::Close;
                }
                Action::Continue
            }
        }
    }

    /// Parses and executes one complete command.
    pub async fn handle_command(&mut self, bytes: &[u8]) -> Action {
        let cmd = match codec::parse_command(bytes) {
            Ok(c) => c,
            Err(e) => {
                // RFC 9051 §7.1.3: BAD, and the session continues.
                match &e.tag {
                    Some(t) => self.out.tagged(t, Status::Bad, None, &e.message),
                    None => self.out.untagged_status(Status::Bad, None, &e.message),
                }
                return Action::Continue;
            }
        };
        let tag = cmd.tag.clone();
        tracing::debug!(target: "imap", session = self.info.session_id, command = cmd.body.name(), "command");
        // RFC 9051 §7.5.1: no EXPUNGE during FETCH, STORE or SEARCH (non-UID);
        // SORT and THREAD answer with sequence numbers just like SEARCH.
        let allow_expunge = !matches!(
            cmd.body,
            CommandBody::Fetch { uid: false, .. }
                | CommandBody::Store { uid: false, .. }
                | CommandBody::Search { uid: false, .. }
                | CommandBody::Sort { uid: false, .. }
                | CommandBody::Thread { uid: false, .. }
        );
        let done = self.execute(&tag, cmd.body).await;
        let Some(done) = done else {
            // The command continues (AUTHENTICATE, IDLE) or closed the session.
            if self.starttls {
                self.starttls = false;
                return Action::StartTls;
            }
            return if self.closing {
                Action::Close
            } else {
                Action::Continue
            };
        };
        if self.closing {
            return Action::Close;
        }
        if done.status != Status::Bad {
            self.sync(allow_expunge).await;
        }
        self.out
            .tagged(&tag, done.status, done.code.as_deref(), &done.text);
        if self.closing {
            return Action::Close;
        }
        if self.state == SessionState::Logout {
            self.closing = true;
            return Action::Close;
        }
        Action::Continue
    }

    async fn execute(&mut self, tag: &str, body: CommandBody) -> Option<Done> {
        use SessionState as S;
        let state = self.state;
        let authed = matches!(state, S::Authenticated | S::Selected);
        let selected = state == S::Selected;
        Some(match body {
            CommandBody::Capability => {
                let caps = self.capabilities();
                self.out.untagged(&format!("CAPABILITY {caps}"));
                Done::ok("CAPABILITY completed")
            }
            CommandBody::Noop | CommandBody::Check
                if authed || matches!(body, CommandBody::Noop) =>
            {
                if matches!(body, CommandBody::Check) && !selected {
                    return Some(Done::bad("No mailbox selected"));
                }
                Done::ok("completed")
            }
            CommandBody::Logout => {
                // RFC 9051 §6.1.3
                self.out
                    .untagged_status(Status::Bye, None, "umail IMAP server logging out");
                self.state = S::Logout;
                self.selected = None;
                Done::ok("LOGOUT completed")
            }
            CommandBody::Id(_) => {
                // RFC 2971 §3.1
                self.out.raw("* ID (\"name\" \"umail\" \"version\" ");
                self.out.string(env!("CARGO_PKG_VERSION").as_bytes());
                self.out.raw(")").crlf();
                Done::ok("ID completed")
            }
            CommandBody::StartTls if state == S::NotAuthenticated => {
                if !self.tls_available || self.tls_active {
                    return Some(Done::bad("STARTTLS not available"));
                }
                // RFC 9051 §6.2.1
                self.out
                    .tagged(tag, Status::Ok, None, "Begin TLS negotiation now");
                self.starttls = true;
                return None;
            }
            CommandBody::Login { username, password } if state == S::NotAuthenticated => {
                return self.login(tag, &username, &password).await;
            }
            CommandBody::Authenticate { mechanism, initial } if state == S::NotAuthenticated => {
                return self.authenticate(tag, &mechanism, initial).await;
            }
            CommandBody::Enable(caps) if state == S::Authenticated => self.enable(&caps),
            CommandBody::Enable(_) if selected => {
                // RFC 5161 §3.1: only valid in the authenticated state.
                Done::bad("ENABLE is only valid before SELECT")
            }
            CommandBody::Select {
                mailbox,
                read_only,
                params,
            } if authed => self.select(&mailbox, read_only, params).await,
            CommandBody::Create(name) if authed => self.create(&name).await,
            CommandBody::Delete(name) if authed => self.delete(&name).await,
            CommandBody::Rename(from, to) if authed => self.rename(&from, &to).await,
            CommandBody::Subscribe(name) if authed => self.subscribe(&name, true).await,
            CommandBody::Unsubscribe(name) if authed => self.subscribe(&name, false).await,
            CommandBody::List {
                select,
                reference,
                patterns,
                returns,
            } if authed => {
                self.list(&select, &reference, &patterns, &returns, false)
                    .await
            }
            CommandBody::Lsub { reference, pattern } if authed => {
                self.list(&[ListSelect::Subscribed], &reference, &[pattern], &[], true)
                    .await
            }
            CommandBody::Namespace if authed => {
                // RFC 2342 / RFC 9051 §6.3.10: one personal namespace.
                self.out.untagged("NAMESPACE ((\"\" \"/\")) NIL NIL");
                Done::ok("NAMESPACE completed")
            }
            CommandBody::Status { mailbox, items } if authed => self.status(&mailbox, &items).await,
            CommandBody::Append {
                mailbox,
                flags,
                date,
                message,
            } if authed => self.append(&mailbox, &flags, date, message).await,
            CommandBody::Idle if authed => {
                // RFC 2177 / RFC 9051 §6.3.13
                self.sync(true).await;
                if let Some(sel) = self.selected.as_mut() {
                    // Every expunge was just announced: the view is UIDs only.
                    let modseq = sel.msgs.iter().map(|m| m.modseq).max().unwrap_or(0);
                    let uids = sel.msgs.iter().map(|m| m.uid).collect();
                    sel.msgs = Vec::new();
                    sel.idle_view = Some(IdleView {
                        uids,
                        modseq,
                        events: Vec::new(),
                        reread: false,
                    });
                }
                self.out.continuation("idling");
                self.pending = Pending::Idle { tag: tag.into() };
                return None;
            }
            CommandBody::GetQuota(root) if authed => self.get_quota(&root).await,
            CommandBody::GetQuotaRoot(mailbox) if authed => self.get_quota_root(&mailbox).await,
            CommandBody::SetQuota if authed => {
                Done::no(Some("NOPERM"), "Quotas are set by the administrator")
            }
            CommandBody::Close if selected => {
                // RFC 9051 §6.4.1: silently expunge unless read-only.
                if let Some(sel) = self.selected.take()
                    && !sel.read_only
                    && let Err(e) = self
                        .services
                        .store
                        .expunge(&self.account(), sel.id, None)
                        .await
                {
                    self.state = S::Authenticated;
                    return Some(store_error(&e));
                }
                self.state = S::Authenticated;
                Done::ok("CLOSE completed")
            }
            CommandBody::Unselect if selected => {
                // RFC 3691
                self.selected = None;
                self.state = S::Authenticated;
                Done::ok("UNSELECT completed")
            }
            CommandBody::Expunge if selected => self.expunge(None).await,
            CommandBody::UidExpunge(set) if selected => self.expunge(Some(set)).await,
            CommandBody::Search {
                uid,
                returns,
                charset,
                criteria,
            } if selected => self.search(tag, uid, returns, charset, criteria).await,
            CommandBody::Sort {
                uid,
                returns,
                sort,
                charset,
                criteria,
            } if selected => {
                self.sort(tag, uid, returns, &sort, &charset, criteria)
                    .await
            }
            CommandBody::Thread {
                uid,
                algorithm,
                charset,
                criteria,
            } if selected => self.thread(uid, algorithm, &charset, criteria).await,
            CommandBody::Fetch {
                uid,
                set,
                attrs,
                changed_since,
                vanished,
            } if selected => {
                if vanished {
                    // RFC 7162 §3.2.6
                    if !self.enabled.qresync {
                        return Some(Done::bad("VANISHED requires ENABLE QRESYNC"));
                    }
                    if !uid || changed_since.is_none() {
                        return Some(Done::bad("VANISHED requires UID FETCH with CHANGEDSINCE"));
                    }
                }
                self.fetch(uid, &set, attrs, changed_since, vanished).await
            }
            CommandBody::Store {
                uid,
                set,
                unchanged_since,
                mode,
                silent,
                flags,
            } if selected => {
                self.store(uid, &set, unchanged_since, mode, silent, &flags)
                    .await
            }
            CommandBody::Copy { uid, set, mailbox } if selected => {
                self.copy_move(uid, &set, &mailbox, false).await
            }
            CommandBody::Move { uid, set, mailbox } if selected => {
                self.copy_move(uid, &set, &mailbox, true).await
            }
            other => {
                // RFC 9051 §6: a command not valid in this state gets BAD.
                Done::bad(&format!("{} not allowed now", other.name()))
            }
        })
    }
}

impl Session {
    // ----- authentication -----

    async fn auth_failed(&mut self, tag: &str) -> Option<Done> {
        self.auth_failures += 1;
        self.services.lockout.record_failure(self.info.peer.ip());
        tracing::info!(target: "imap", session = self.info.session_id, peer = %self.info.peer, "authentication failed");
        self.out.tagged(
            tag,
            Status::No,
            Some("AUTHENTICATIONFAILED"),
            "Authentication failed",
        );
        if self.auth_failures >= self.config.max_auth_failures.max(1) {
            self.out
                .untagged_status(Status::Bye, None, "Too many authentication failures");
            self.closing = true;
            self.state = SessionState::Logout;
        }
        None
    }

    fn locked_out(&mut self, tag: &str) -> bool {
        if self.services.lockout.is_locked(self.info.peer.ip()) {
            self.out.tagged(
                tag,
                Status::No,
                Some("UNAVAILABLE"),
                "Too many failed logins from your address; try later",
            );
            return true;
        }
        false
    }

    async fn logged_in(&mut self, tag: &str, principal: Principal) -> Option<Done> {
        // RFC 9051 §6.2.3: the account must be allowed to use IMAP.
        if !principal.may_use(Protocol::Imap) {
            self.out.tagged(
                tag,
                Status::No,
                Some("AUTHORIZATIONFAILED"),
                "IMAP access is not enabled for this account",
            );
            return None;
        }
        if let Some(sessions) = &self.account_sessions {
            match sessions.try_acquire(&principal.account(), self.config.max_sessions_per_user) {
                Some(slot) => self.session_slot = Some(slot),
                None => {
                    // RFC 5530 §3: LIMIT, an implementation limit was hit.
                    tracing::info!(target: "imap", session = self.info.session_id, user = %principal.account(), "too many sessions for the account");
                    self.out.tagged(
                        tag,
                        Status::No,
                        Some("LIMIT"),
                        "Too many concurrent IMAP sessions for this account",
                    );
                    return None;
                }
            }
        }
        self.services.lockout.record_success(self.info.peer.ip());
        tracing::info!(target: "imap", session = self.info.session_id, user = %principal.account(), "logged in");
        self.principal = Some(principal);
        self.state = SessionState::Authenticated;
        let caps = format!("CAPABILITY {}", self.capabilities());
        self.out.tagged(tag, Status::Ok, Some(&caps), "Logged in");
        None
    }

    async fn login(&mut self, tag: &str, username: &[u8], password: &[u8]) -> Option<Done> {
        // RFC 9051 §6.2.3: LOGINDISABLED before TLS.
        if !self.plaintext_allowed() {
            return Some(Done::no(
                Some("PRIVACYREQUIRED"),
                "LOGIN is disabled before STARTTLS",
            ));
        }
        if self.locked_out(tag) {
            return None;
        }
        let user = String::from_utf8_lossy(username);
        let pass = String::from_utf8_lossy(password);
        match self.services.directory.verify_password(&user, &pass).await {
            Ok(Some(p)) => self.logged_in(tag, p).await,
            Ok(None) => self.auth_failed(tag).await,
            Err(_) => Some(Done::no(
                Some("UNAVAILABLE"),
                "Directory unavailable, try later",
            )),
        }
    }

    async fn authenticate(
        &mut self,
        tag: &str,
        mechanism: &str,
        initial: Option<Vec<u8>>,
    ) -> Option<Done> {
        let mech = match Mechanism::parse(mechanism) {
            Some(m @ (Mechanism::Plain | Mechanism::ScramSha256)) => m,
            _ => return Some(Done::no(Some("CANNOT"), "Unsupported mechanism")),
        };
        if mech.is_plaintext() && !self.plaintext_allowed() {
            return Some(Done::no(
                Some("PRIVACYREQUIRED"),
                "Plaintext authentication is disabled before STARTTLS",
            ));
        }
        if self.locked_out(tag) {
            return None;
        }
        let mut auth = Box::new(Authenticator::new(mech, &self.services.hostname));
        // RFC 4959: an initial response; "=" means empty.
        let step = auth
            .step(initial.as_deref(), self.services.directory.as_ref())
            .await;
        self.auth_step(tag.to_string(), auth, step).await
    }

    async fn auth_step(
        &mut self,
        tag: String,
        auth: Box<Authenticator>,
        step: Result<AuthStep, umail_core::DirectoryError>,
    ) -> Option<Done> {
        match step {
            Err(_) => Some(Done::no(
                Some("UNAVAILABLE"),
                "Directory unavailable, try later",
            )),
            Ok(AuthStep::Challenge(c)) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(c);
                self.out.continuation(&b64);
                self.pending = Pending::Auth { tag, auth };
                None
            }
            Ok(AuthStep::Success {
                principal,
                additional: Some(data),
            }) => {
                // RFC 9051 §6.2.2: final server data goes in a last challenge.
                let b64 = base64::engine::general_purpose::STANDARD.encode(data);
                self.out.continuation(&b64);
                self.pending = Pending::AuthFinal {
                    tag,
                    principal: Box::new(principal),
                };
                None
            }
            Ok(AuthStep::Success {
                principal,
                additional: None,
            }) => self.logged_in(&tag, principal).await,
            Ok(AuthStep::Failure(umail_core::sasl::SaslError::Cancelled)) => {
                Some(Done::bad("Authentication cancelled"))
            }
            Ok(AuthStep::Failure(_)) => self.auth_failed(&tag).await,
        }
    }

    /// Handles one raw line of an AUTHENTICATE exchange.
    pub async fn handle_auth_line(&mut self, line: &[u8]) -> Action {
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        let done = match pending {
            Pending::Auth { tag, mut auth } => {
                let done = if line == b"*" {
                    // RFC 9051 §6.2.2: the client cancelled; BAD.
                    auth.cancel();
                    Some(Done::bad("Authentication cancelled"))
                } else {
                    match base64::engine::general_purpose::STANDARD.decode(line) {
                        Ok(data) => {
                            let step = auth
                                .step(Some(&data), self.services.directory.as_ref())
                                .await;
                            self.auth_step(tag.clone(), auth, step).await
                        }
                        Err(_) => Some(Done::bad("Invalid base64")),
                    }
                };
                done.map(|d| (tag, d))
            }
            Pending::AuthFinal { tag, principal } => {
                if line == b"*" {
                    Some((tag, Done::bad("Authentication cancelled")))
                } else {
                    self.logged_in(&tag, *principal).await;
                    None
                }
            }
            other => {
                self.pending = other;
                None
            }
        };
        if let Some((tag, d)) = done {
            self.out.tagged(&tag, d.status, d.code.as_deref(), &d.text);
        }
        if self.closing {
            Action::Close
        } else {
            Action::Continue
        }
    }

    /// Handles one raw line during IDLE (RFC 2177: `DONE` ends it).
    pub async fn handle_idle_line(&mut self, line: &[u8]) -> Action {
        if let Pending::Idle { tag } = std::mem::replace(&mut self.pending, Pending::None) {
            self.sync_idle(true).await;
            if line.eq_ignore_ascii_case(b"DONE") {
                self.out.tagged(&tag, Status::Ok, None, "IDLE terminated");
            } else {
                self.out
                    .tagged(&tag, Status::Bad, None, "Expected DONE to end IDLE");
            }
        }
        Action::Continue
    }

    /// Waits until the selected mailbox's change feed has news. Never
    /// completes when no mailbox is selected. Cancel-safe.
    pub async fn changed(&mut self) {
        match self.selected.as_mut() {
            Some(sel) => {
                let received = sel.feed.recv().await;
                sel.dirty = true;
                match received {
                    Ok(change) => {
                        if let Some(view) = sel.idle_view.as_mut() {
                            view.events.push(change);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(view) = sel.idle_view.as_mut() {
                            view.reread = true;
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                        sel.dirty = true;
                        // The feed is gone; avoid spinning.
                        std::future::pending::<()>().await;
                    }
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// During IDLE: send the updates that [`Session::changed`] announced.
    pub async fn idle_update(&mut self) {
        self.sync(true).await;
    }

    // ----- mailbox state -----

    /// Sends pending mailbox updates: EXISTS, flag changes, and (when
    /// allowed) EXPUNGE (RFC 9051 §5.2, §7.5.1).
    async fn sync(&mut self, allow_expunge: bool) {
        if self
            .selected
            .as_ref()
            .is_some_and(|s| s.idle_view.is_some())
        {
            return self.sync_idle(false).await;
        }
        let account = self.account();
        let condstore = self.enabled.condstore;
        let qresync = self.enabled.qresync;
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        loop {
            match sel.feed.try_recv() {
                Ok(change) => events.push(change),
                Err(TryRecvError::Lagged(_)) => sel.dirty = true,
                Err(_) => break,
            }
        }
        // Flag changes and expunges are applied from the events; new
        // messages (whose metadata the events lack) are read as the range
        // above the last known UID, after the events were applied: every
        // drained event was committed before that read, so the read sees
        // at least their state, and later changes come as later events.
        // Only a lagging feed or a vanished mailbox cost a read of the
        // whole mailbox.
        if events.iter().any(|c| matches!(c, MailboxChange::Gone)) {
            sel.dirty = true;
        }
        let added = events
            .iter()
            .any(|c| matches!(c, MailboxChange::Added { .. }));
        if !sel.dirty {
            for change in events {
                match change {
                    MailboxChange::Flags { uid, flags, modseq } => {
                        let Some(i) = sel.index_of(uid) else {
                            continue;
                        };
                        let m = &mut sel.msgs[i];
                        if m.expunged || modseq <= m.modseq {
                            continue;
                        }
                        m.modseq = modseq;
                        if flags != m.flags {
                            m.flags = flags;
                            let mut line =
                                format!("{} FETCH (FLAGS {} UID {uid}", i + 1, flag_list(&m.flags));
                            if condstore {
                                line.push_str(&format!(" MODSEQ ({modseq})"));
                            }
                            line.push(')');
                            self.out.untagged(&line);
                        }
                    }
                    MailboxChange::Expunged { uids, .. } => {
                        for uid in uids {
                            if let Some(i) = sel.index_of(uid)
                                && !sel.msgs[i].expunged
                            {
                                sel.msgs[i].expunged = true;
                                sel.pending_expunge = true;
                            }
                        }
                    }
                    MailboxChange::Added { .. } | MailboxChange::Gone => {}
                }
            }
            if added {
                match self
                    .services
                    .store
                    .messages_after(&account, sel.id, sel.max_uid())
                    .await
                {
                    Ok(new) if !new.is_empty() => {
                        sel.msgs.extend(new.into_iter().map(Msg::from));
                        self.out.untagged(&format!("{} EXISTS", sel.msgs.len()));
                    }
                    Ok(_) => {}
                    // Fall back to a whole read (just below).
                    Err(_) => sel.dirty = true,
                }
            }
        }
        if sel.dirty {
            sel.dirty = false;
            let Ok(current) = self.services.store.messages(&account, sel.id).await else {
                sel.dirty = true;
                return;
            };
            let current: BTreeMap<Uid, MessageMeta> =
                current.into_iter().map(|m| (m.uid, m)).collect();
            let max_known = sel.max_uid();
            for (i, m) in sel.msgs.iter_mut().enumerate() {
                if m.expunged {
                    continue;
                }
                match current.get(&m.uid) {
                    None => {
                        m.expunged = true;
                        sel.pending_expunge = true;
                    }
                    Some(now) if now.flags != m.flags => {
                        m.flags = now.flags.clone();
                        m.modseq = now.modseq;
                        let mut line = format!(
                            "{} FETCH (FLAGS {} UID {}",
                            i + 1,
                            flag_list(&m.flags),
                            m.uid
                        );
                        if condstore {
                            line.push_str(&format!(" MODSEQ ({})", m.modseq));
                        }
                        line.push(')');
                        self.out.untagged(&line);
                    }
                    Some(now) => m.modseq = now.modseq,
                }
            }
            let before = sel.msgs.len();
            for (uid, meta) in current.range(max_known.saturating_add(1)..) {
                let _ = uid;
                sel.msgs.push(Msg::from(meta.clone()));
            }
            if sel.msgs.len() != before {
                self.out.untagged(&format!("{} EXISTS", sel.msgs.len()));
            }
        }
        if allow_expunge && sel.pending_expunge {
            sel.pending_expunge = false;
            let gone: Vec<Uid> = sel
                .msgs
                .iter()
                .filter(|m| m.expunged)
                .map(|m| m.uid)
                .collect();
            Self::announce_expunged(&mut self.out, sel, &gone, qresync);
        }
    }

    /// Sends pending updates to a session in IDLE (RFC 2177): FETCH FLAGS
    /// for messages whose MODSEQ passed the view's, EXPUNGE or VANISHED at
    /// once (IDLE allows them), EXISTS for new messages. With `finish`
    /// (IDLE ends), rebuilds the full view from the same snapshot, so that
    /// no change falls between the last report and the rebuilt view.
    async fn sync_idle(&mut self, finish: bool) {
        let account = self.account();
        let condstore = self.enabled.condstore;
        let qresync = self.enabled.qresync;
        let Some(sel) = self.selected.as_mut() else {
            return;
        };
        let Some(mut view) = sel.idle_view.take() else {
            return;
        };
        loop {
            match sel.feed.try_recv() {
                Ok(change) => view.events.push(change),
                Err(TryRecvError::Lagged(_)) => view.reread = true,
                Err(_) => break,
            }
        }
        if view.events.iter().any(|c| matches!(c, MailboxChange::Gone)) {
            view.reread = true;
        }
        if !finish && !view.reread {
            // Apply the events in commit order (RFC 2177: report at once).
            sel.dirty = false;
            let mut exists = false;
            for change in std::mem::take(&mut view.events) {
                match change {
                    MailboxChange::Added { uid, modseq } => {
                        if uid > view.uids.last().copied().unwrap_or(0) {
                            // Exact growth: doubling ten thousand idle views
                            // on every new message would cost megabytes.
                            view.uids.reserve_exact(1);
                            view.uids.push(uid);
                            exists = true;
                        }
                        view.modseq = view.modseq.max(modseq);
                    }
                    MailboxChange::Flags { uid, flags, modseq } => {
                        // Not yet in the snapshot the view was made from.
                        if modseq > view.modseq
                            && let Ok(i) = view.uids.binary_search(&uid)
                        {
                            if std::mem::take(&mut exists) {
                                self.out.untagged(&format!("{} EXISTS", view.uids.len()));
                            }
                            let mut line =
                                format!("{} FETCH (FLAGS {} UID {uid}", i + 1, flag_list(&flags));
                            if condstore {
                                line.push_str(&format!(" MODSEQ ({modseq})"));
                            }
                            line.push(')');
                            self.out.untagged(&line);
                        }
                        view.modseq = view.modseq.max(modseq);
                    }
                    MailboxChange::Expunged { uids, .. } => {
                        if std::mem::take(&mut exists) {
                            self.out.untagged(&format!("{} EXISTS", view.uids.len()));
                        }
                        let mut idx: Vec<usize> = uids
                            .iter()
                            .filter_map(|u| view.uids.binary_search(u).ok())
                            .collect();
                        idx.sort_unstable();
                        idx.dedup();
                        if qresync && !idx.is_empty() {
                            let gone: Vec<Uid> = idx.iter().map(|i| view.uids[*i]).collect();
                            self.out
                                .untagged(&format!("VANISHED {}", set_string(&gone)));
                        }
                        for &i in idx.iter().rev() {
                            view.uids.remove(i);
                            if !qresync {
                                self.out.untagged(&format!("{} EXPUNGE", i + 1));
                            }
                        }
                    }
                    MailboxChange::Gone => {}
                }
            }
            if exists {
                self.out.untagged(&format!("{} EXISTS", view.uids.len()));
            }
            sel.idle_view = Some(view);
            return;
        }
        // A re-read (and, at DONE, the full view) from one snapshot.
        view.events.clear();
        view.reread = false;
        let current = match self.services.store.messages(&account, sel.id).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(target: "imap", error = %e, "reading the mailbox failed");
                if finish {
                    // Rebuild from what is known; the next sync re-reads.
                    sel.msgs = view
                        .uids
                        .iter()
                        .map(|&uid| Msg {
                            uid,
                            flags: Flags::new(),
                            modseq: 0,
                            internal_date: 0,
                            size: 0,
                            expunged: false,
                        })
                        .collect();
                    sel.dirty = true;
                } else {
                    view.reread = true;
                    sel.idle_view = Some(view);
                }
                return;
            }
        };
        sel.dirty = false;
        let current: BTreeMap<Uid, MessageMeta> = current.into_iter().map(|m| (m.uid, m)).collect();
        let mut gone = Vec::new();
        for (i, uid) in view.uids.iter().enumerate() {
            match current.get(uid) {
                None => gone.push(i),
                Some(m) if m.modseq > view.modseq => {
                    let mut line =
                        format!("{} FETCH (FLAGS {} UID {uid}", i + 1, flag_list(&m.flags));
                    if condstore {
                        line.push_str(&format!(" MODSEQ ({})", m.modseq));
                    }
                    line.push(')');
                    self.out.untagged(&line);
                }
                Some(_) => {}
            }
        }
        if qresync && !gone.is_empty() {
            let uids: Vec<Uid> = gone.iter().map(|i| view.uids[*i]).collect();
            self.out
                .untagged(&format!("VANISHED {}", set_string(&uids)));
        }
        for &i in gone.iter().rev() {
            view.uids.remove(i);
            if !qresync {
                self.out.untagged(&format!("{} EXPUNGE", i + 1));
            }
        }
        let max_known = view.uids.last().copied().unwrap_or(0);
        let before = view.uids.len();
        view.uids.extend(
            current
                .range(max_known.saturating_add(1)..)
                .map(|(u, _)| *u),
        );
        if view.uids.len() != before {
            self.out.untagged(&format!("{} EXISTS", view.uids.len()));
        }
        view.modseq = current
            .values()
            .map(|m| m.modseq)
            .max()
            .unwrap_or(0)
            .max(view.modseq);
        if finish {
            sel.msgs = view
                .uids
                .iter()
                .filter_map(|u| current.get(u).cloned().map(Msg::from))
                .collect();
        } else {
            sel.idle_view = Some(view);
        }
    }

    /// Removes `uids` from the view and writes `* n EXPUNGE` for each, in
    /// descending order so that every number is right when sent; or, once
    /// QRESYNC is enabled, one `* VANISHED uid-set` (RFC 7162 §3.2.10).
    fn announce_expunged(out: &mut ResponseBuf, sel: &mut Selected, uids: &[Uid], qresync: bool) {
        let mut idx: Vec<usize> = uids.iter().filter_map(|u| sel.index_of(*u)).collect();
        idx.sort_unstable();
        idx.dedup();
        if qresync {
            let gone: Vec<Uid> = idx.iter().map(|i| sel.msgs[*i].uid).collect();
            let gone_set: std::collections::BTreeSet<Uid> = gone.iter().copied().collect();
            sel.msgs.retain(|m| !gone_set.contains(&m.uid));
            if !gone.is_empty() {
                out.untagged(&format!("VANISHED {}", set_string(&gone)));
            }
            return;
        }
        for i in idx.into_iter().rev() {
            sel.msgs.remove(i);
            out.untagged(&format!("{} EXPUNGE", i + 1));
        }
    }

    /// Decodes a client mailbox name to the store form.
    fn mailbox_name(&self, raw: &[u8]) -> Result<String, Done> {
        let name = if self.utf8() || !raw.is_ascii() {
            // RFC 6855 §3 / RFC 9051 §5.1: UTF-8 names; lenient for rev1
            // clients that send 8-bit names.
            String::from_utf8(raw.to_vec()).map_err(|_| Done::bad("Mailbox name is not UTF-8"))?
        } else {
            // RFC 3501 §5.1.3
            utf7::decode(raw).ok_or_else(|| Done::bad("Invalid modified UTF-7 mailbox name"))?
        };
        let name = name.trim_end_matches('/');
        if name.is_empty() || name.chars().any(|c| c.is_control()) {
            return Err(Done::no(Some("CANNOT"), "Invalid mailbox name"));
        }
        Ok(normalize_inbox(name))
    }

    fn enable(&mut self, caps: &[String]) -> Done {
        // RFC 5161 §3.1: list only what this command newly enabled.
        let mut newly = Vec::new();
        for c in caps {
            match c.as_str() {
                "IMAP4REV2" if !self.enabled.rev2 => {
                    self.enabled.rev2 = true;
                    newly.push("IMAP4rev2");
                }
                "UTF8=ACCEPT" if !self.enabled.utf8 => {
                    self.enabled.utf8 = true;
                    newly.push("UTF8=ACCEPT");
                }
                "CONDSTORE" if !self.enabled.condstore => {
                    self.enabled.condstore = true;
                    newly.push("CONDSTORE");
                }
                "QRESYNC" if !self.enabled.qresync => {
                    // RFC 7162 §3.2.3: enabling QRESYNC enables CONDSTORE.
                    self.enabled.qresync = true;
                    self.enabled.condstore = true;
                    newly.push("QRESYNC");
                }
                _ => {}
            }
        }
        self.out.utf8 = self.utf8();
        self.out
            .untagged(format!("ENABLED {}", newly.join(" ")).trim_end());
        Done::ok("ENABLE completed")
    }

    async fn select(&mut self, raw: &[u8], read_only: bool, params: SelectParams) -> Done {
        // RFC 9051 §6.3.2: selecting deselects first; rev2 announces it.
        // RFC 7162 §3.2.11: QRESYNC clients get [CLOSED] too.
        let previous = self.selected.take();
        if previous.is_some() && (self.enabled.rev2 || self.enabled.qresync) {
            self.out
                .untagged_status(Status::Ok, Some("CLOSED"), "Previous mailbox closed");
        }
        self.state = SessionState::Authenticated;
        if params.qresync.is_some() && !self.enabled.qresync {
            // RFC 7162 §3.2.5: BAD unless ENABLE QRESYNC came first.
            return Done::bad("QRESYNC is not enabled");
        }
        if params.condstore {
            self.enabled.condstore = true;
        }
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let account = self.account();
        let store = self.services.store.clone();
        let info = match store.mailbox(&account, &name).await {
            Ok(Some(i)) => i,
            Ok(None) => return Done::no(Some("NONEXISTENT"), "No such mailbox"),
            Err(e) => return store_error(&e),
        };
        // Selecting again the mailbox (same incarnation) that is selected,
        // as clients do to refresh: its view, brought up to date from the
        // change feed (what `sync` does at every command; a lagging feed
        // makes it read the mailbox), is what a fresh read would give,
        // without decoding every message's metadata again. What the update
        // would have announced is dropped: the new view replaces the old.
        let mut reused: Option<(ChangeFeed, Vec<Msg>)> = None;
        if let Some(prev) = previous
            && prev.id == info.id
            && prev.uid_validity == info.uid_validity
            && prev.idle_view.is_none()
        {
            self.selected = Some(prev);
            let shown = std::mem::replace(&mut self.out, ResponseBuf::new());
            self.sync(true).await;
            self.out = shown;
            if let Some(prev) = self.selected.take()
                && !prev.dirty
            {
                let msgs = prev.msgs.into_iter().filter(|m| !m.expunged).collect();
                reused = Some((prev.feed, msgs));
            }
        }
        let (feed, msgs) = match reused {
            Some(r) => r,
            None => {
                // Subscribe before reading so that no change is missed.
                let feed = match store.watch(&account, info.id).await {
                    Ok(f) => f,
                    Err(e) => return store_error(&e),
                };
                let msgs: Vec<Msg> = match store.messages(&account, info.id).await {
                    Ok(m) => m.into_iter().map(Msg::from).collect(),
                    Err(e) => return store_error(&e),
                };
                (feed, msgs)
            }
        };
        let mut keywords: Vec<String> = Vec::new();
        for m in &msgs {
            for f in &m.flags {
                if let Flag::Keyword(k) = f
                    && !keywords.contains(k)
                    && keywords.len() < 256
                {
                    keywords.push(k.clone());
                }
            }
        }
        let kw = if keywords.is_empty() {
            String::new()
        } else {
            format!(" {}", keywords.join(" "))
        };
        // RFC 9051 §6.3.2 required responses
        self.out.untagged(&format!(
            "FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft{kw})"
        ));
        self.out.untagged(&format!("{} EXISTS", msgs.len()));
        if !self.enabled.rev2 {
            // RFC 3501 §6.3.1: RECENT and UNSEEN for IMAP4rev1 clients.
            self.out.untagged("0 RECENT");
            if let Some(i) = msgs.iter().position(|m| !m.flags.contains(&Flag::Seen)) {
                self.out.untagged_status(
                    Status::Ok,
                    Some(&format!("UNSEEN {}", i + 1)),
                    "First unseen",
                );
            }
        }
        let permanent = if read_only {
            "PERMANENTFLAGS ()".to_string()
        } else {
            "PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)".to_string()
        };
        self.out
            .untagged_status(Status::Ok, Some(&permanent), "Flags permitted");
        self.out.untagged_status(
            Status::Ok,
            Some(&format!("UIDVALIDITY {}", info.uid_validity)),
            "UIDs valid",
        );
        self.out.untagged_status(
            Status::Ok,
            Some(&format!("UIDNEXT {}", info.uid_next)),
            "Predicted next UID",
        );
        if self.enabled.condstore {
            // RFC 7162 §3.1.2.1
            let highest = msgs
                .iter()
                .map(|m| m.modseq)
                .max()
                .unwrap_or(0)
                .max(info.highest_modseq);
            self.out.untagged_status(
                Status::Ok,
                Some(&format!("HIGHESTMODSEQ {highest}")),
                "Highest",
            );
        }
        if self.enabled.rev2 {
            self.out.raw("* LIST () \"/\" ");
            self.out.mailbox(&info.name);
            self.out.crlf();
        }
        if let Some(q) = &params.qresync
            && q.uid_validity == info.uid_validity
        {
            // RFC 7162 §3.2.5: a different UIDVALIDITY means a full resync.
            self.qresync_report(&account, &info, &msgs, q).await;
        }
        self.selected = Some(Selected {
            id: info.id,
            uid_validity: info.uid_validity,
            name: info.name.clone(),
            read_only,
            msgs,
            feed,
            dirty: false,
            pending_expunge: false,
            idle_view: None,
        });
        self.state = SessionState::Selected;
        if read_only {
            Done::ok_code("READ-ONLY", "EXAMINE completed")
        } else {
            Done::ok_code("READ-WRITE", "SELECT completed")
        }
    }

    async fn create(&mut self, raw: &[u8]) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        // RFC 9051 §6.3.4: creating INBOX is an error.
        if name == "INBOX" {
            return Done::no(Some("ALREADYEXISTS"), "INBOX always exists");
        }
        match self
            .services
            .store
            .create_mailbox(&self.account(), &name, None)
            .await
        {
            Ok(_) => Done::ok("CREATE completed"),
            Err(e) => store_error(&e),
        }
    }

    async fn delete(&mut self, raw: &[u8]) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        // RFC 9051 §6.3.5: INBOX cannot be deleted.
        if name == "INBOX" {
            return Done::no(Some("CANNOT"), "INBOX cannot be deleted");
        }
        let account = self.account();
        match self.services.store.mailbox(&account, &name).await {
            Ok(None) => return Done::no(Some("NONEXISTENT"), "No such mailbox"),
            Err(e) => return store_error(&e),
            Ok(Some(_)) => {}
        }
        match self.services.store.delete_mailbox(&account, &name).await {
            Ok(()) => {
                if self.selected.as_ref().is_some_and(|s| s.name == name) {
                    self.selected = None;
                    self.state = SessionState::Authenticated;
                }
                Done::ok("DELETE completed")
            }
            Err(e) => store_error(&e),
        }
    }

    async fn rename(&mut self, from: &[u8], to: &[u8]) -> Done {
        let (from, to) = match (self.mailbox_name(from), self.mailbox_name(to)) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(d), _) | (_, Err(d)) => return d,
        };
        if to == "INBOX" {
            return Done::no(Some("ALREADYEXISTS"), "INBOX always exists");
        }
        let account = self.account();
        match self.services.store.mailbox(&account, &from).await {
            Ok(None) => return Done::no(Some("NONEXISTENT"), "No such mailbox"),
            Err(e) => return store_error(&e),
            Ok(Some(_)) => {}
        }
        // RFC 9051 §6.3.6: renaming INBOX moves its messages; the store does it.
        match self
            .services
            .store
            .rename_mailbox(&account, &from, &to)
            .await
        {
            Ok(()) => Done::ok("RENAME completed"),
            Err(e) => store_error(&e),
        }
    }

    async fn subscribe(&mut self, raw: &[u8], on: bool) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        match self
            .services
            .store
            .set_subscribed(&self.account(), &name, on)
            .await
        {
            Ok(()) => Done::ok(if on {
                "SUBSCRIBE completed"
            } else {
                "UNSUBSCRIBE completed"
            }),
            Err(e) => store_error(&e),
        }
    }

    async fn list(
        &mut self,
        select: &[ListSelect],
        reference: &[u8],
        patterns: &[Vec<u8>],
        returns: &[ListReturn],
        lsub: bool,
    ) -> Done {
        let kind = if lsub { "LSUB" } else { "LIST" };
        // RFC 9051 §6.3.9: an empty pattern asks for the delimiter.
        if patterns.len() == 1 && patterns[0].is_empty() && !lsub {
            self.out.untagged("LIST (\\Noselect) \"/\" \"\"");
            return Done::ok("LIST completed");
        }
        let account = self.account();
        let boxes = match self.services.store.list_mailboxes(&account).await {
            Ok(b) => b,
            Err(e) => return store_error(&e),
        };
        let mut compiled: Vec<Vec<char>> = Vec::new();
        for p in patterns {
            let mut full = reference.to_vec();
            full.extend_from_slice(p);
            if full.is_empty() {
                continue;
            }
            let decoded = if self.utf8() || !full.is_ascii() {
                String::from_utf8_lossy(&full).into_owned()
            } else {
                utf7::decode(&full).unwrap_or_else(|| String::from_utf8_lossy(&full).into_owned())
            };
            compiled.push(normalize_inbox(&decoded).chars().collect());
        }
        let sel_subscribed = select.contains(&ListSelect::Subscribed);
        let sel_special = select.contains(&ListSelect::SpecialUse);
        let recursive = select.contains(&ListSelect::RecursiveMatch);
        let ret_subscribed = returns.contains(&ListReturn::Subscribed) || sel_subscribed;
        let ret_special = returns.contains(&ListReturn::SpecialUse);
        let status_items: Option<Vec<StatusItem>> = returns.iter().find_map(|r| match r {
            ListReturn::Status(items) => Some(items.clone()),
            _ => None,
        });
        let names: Vec<&str> = boxes.iter().map(|b| b.name.as_str()).collect();
        let selected_ok = |b: &MailboxInfo| {
            (!sel_subscribed || b.subscribed) && (!sel_special || b.special_use.is_some())
        };
        let mut status_queue: Vec<MailboxInfo> = Vec::new();
        for b in &boxes {
            let chars: Vec<char> = b.name.chars().collect();
            if !compiled.iter().any(|p| pattern_matches(p, &chars)) {
                continue;
            }
            let prefix = format!("{}/", b.name);
            let children: Vec<&MailboxInfo> = boxes
                .iter()
                .filter(|c| c.name.starts_with(&prefix))
                .collect();
            let has_children = !children.is_empty();
            let matched_self = selected_ok(b);
            // RFC 5258 §3.5: RECURSIVEMATCH reports parents of matching children.
            let child_match = recursive && children.iter().any(|c| selected_ok(c));
            if !matched_self && !child_match {
                continue;
            }
            let mut attrs: Vec<&str> = Vec::new();
            if !lsub {
                attrs.push(if has_children {
                    "\\HasChildren"
                } else {
                    "\\HasNoChildren"
                });
            }
            if ret_subscribed && b.subscribed && !lsub {
                attrs.push("\\Subscribed");
            }
            // RFC 6154 §2: special-use attributes.
            if let Some(su) = b.special_use
                && (ret_special || !lsub)
            {
                attrs.push(su.attribute());
            }
            self.out
                .raw(format!("* {kind} ({}) \"/\" ", attrs.join(" ")));
            self.out.mailbox(&b.name);
            if child_match && !matched_self {
                self.out.raw(" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
            }
            self.out.crlf();
            if status_items.is_some() {
                status_queue.push(b.clone());
            }
        }
        let _ = names;
        if let Some(items) = status_items {
            // RFC 5819: STATUS responses follow the LIST responses.
            for b in status_queue {
                self.write_status(&account, &b, &items).await;
            }
        }
        Done::ok(&format!("{kind} completed"))
    }

    async fn write_status(&mut self, account: &str, info: &MailboxInfo, items: &[StatusItem]) {
        let need_msgs = items.contains(&StatusItem::Deleted);
        let deleted = if need_msgs {
            self.services
                .store
                .messages(account, info.id)
                .await
                .map(|m| {
                    m.iter()
                        .filter(|m| m.flags.contains(&Flag::Deleted))
                        .count()
                })
                .unwrap_or(0)
        } else {
            0
        };
        let parts: Vec<String> = items
            .iter()
            .map(|i| match i {
                StatusItem::Messages => format!("MESSAGES {}", info.messages),
                StatusItem::UidNext => format!("UIDNEXT {}", info.uid_next),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", info.uid_validity),
                StatusItem::Unseen => format!("UNSEEN {}", info.unseen),
                StatusItem::Deleted => format!("DELETED {deleted}"),
                StatusItem::Size => format!("SIZE {}", info.size),
                StatusItem::Recent => "RECENT 0".to_string(),
                StatusItem::HighestModSeq => format!("HIGHESTMODSEQ {}", info.highest_modseq),
            })
            .collect();
        self.out.raw("* STATUS ");
        self.out.mailbox(&info.name);
        self.out.raw(format!(" ({})", parts.join(" "))).crlf();
    }

    async fn status(&mut self, raw: &[u8], items: &[StatusItem]) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let account = self.account();
        match self.services.store.mailbox(&account, &name).await {
            Ok(Some(info)) => {
                if items.contains(&StatusItem::HighestModSeq) {
                    self.enabled.condstore = true;
                }
                self.write_status(&account, &info, items).await;
                Done::ok("STATUS completed")
            }
            Ok(None) => Done::no(Some("NONEXISTENT"), "No such mailbox"),
            Err(e) => store_error(&e),
        }
    }

    fn parse_flags(flags: &[String]) -> Result<Flags, Done> {
        let mut out = Flags::new();
        for f in flags {
            if f.eq_ignore_ascii_case("\\Recent") {
                continue;
            }
            match Flag::parse(f) {
                Some(flag) => {
                    out.insert(flag);
                }
                None => return Err(Done::bad(&format!("Invalid flag {f}"))),
            }
        }
        Ok(out)
    }

    async fn append(
        &mut self,
        raw: &[u8],
        flags: &[String],
        date: Option<i64>,
        message: Vec<u8>,
    ) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let flags = match Self::parse_flags(flags) {
            Ok(f) => f,
            Err(d) => return d,
        };
        if message.is_empty() {
            return Done::no(None, "Empty message");
        }
        if message.len() as u64 > self.config.append_limit {
            return Done::no(Some("TOOBIG"), "Message too large");
        }
        let account = self.account();
        match self.services.store.mailbox(&account, &name).await {
            // RFC 9051 §6.3.12: TRYCREATE when the target does not exist.
            Ok(None) => return Done::no(Some("TRYCREATE"), "No such mailbox"),
            Err(e) => return store_error(&e),
            Ok(Some(_)) => {}
        }
        let date = date.unwrap_or_else(umail_core::unix_now);
        match self
            .services
            .store
            .append(&account, &name, bytes::Bytes::from(message), flags, date)
            .await
        {
            // RFC 4315 §3: APPENDUID
            Ok(o) => Done::ok_code(
                format!("APPENDUID {} {}", o.uid_validity, o.uid),
                "APPEND completed",
            ),
            Err(e) => store_error(&e),
        }
    }

    fn quota_line(&mut self, usage: umail_core::QuotaUsage) {
        let quota = self.principal.as_ref().map(|p| p.quota).unwrap_or_default();
        let mut res = Vec::new();
        // RFC 9208 §5.1: STORAGE in units of 1024 octets.
        if quota.bytes != 0 {
            res.push(format!(
                "STORAGE {} {}",
                usage.bytes.div_ceil(1024),
                quota.bytes / 1024
            ));
        }
        if quota.messages != 0 {
            res.push(format!("MESSAGE {} {}", usage.messages, quota.messages));
        }
        self.out
            .untagged(&format!("QUOTA \"\" ({})", res.join(" ")));
    }

    fn has_quota(&self) -> bool {
        self.principal
            .as_ref()
            .is_some_and(|p| p.quota.bytes != 0 || p.quota.messages != 0)
    }

    async fn get_quota(&mut self, root: &[u8]) -> Done {
        if !root.is_empty() || !self.has_quota() {
            return Done::no(Some("NONEXISTENT"), "No such quota root");
        }
        match self.services.store.quota_usage(&self.account()).await {
            Ok(u) => {
                self.quota_line(u);
                Done::ok("GETQUOTA completed")
            }
            Err(e) => store_error(&e),
        }
    }

    async fn get_quota_root(&mut self, raw: &[u8]) -> Done {
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let account = self.account();
        match self.services.store.mailbox(&account, &name).await {
            Ok(None) => return Done::no(Some("NONEXISTENT"), "No such mailbox"),
            Err(e) => return store_error(&e),
            Ok(Some(_)) => {}
        }
        self.out.raw("* QUOTAROOT ");
        self.out.mailbox(&name);
        if self.has_quota() {
            self.out.raw(" \"\"").crlf();
            match self.services.store.quota_usage(&account).await {
                Ok(u) => self.quota_line(u),
                Err(e) => return store_error(&e),
            }
        } else {
            self.out.crlf();
        }
        Done::ok("GETQUOTAROOT completed")
    }

    // ----- selected state -----

    /// Indexes of the messages a set names. `Err` for a sequence number
    /// beyond the mailbox (RFC 9051 §6.4.8 asks for BAD).
    /// The SELECT (QRESYNC ...) report (RFC 7162 §3.2.5): `VANISHED
    /// (EARLIER)` for the known UIDs expunged after the client's MODSEQ,
    /// then `FETCH (UID FLAGS MODSEQ)` for the known messages changed after
    /// it.
    async fn qresync_report(
        &mut self,
        account: &str,
        info: &MailboxInfo,
        msgs: &[Msg],
        q: &codec::QresyncParams,
    ) {
        let live: Vec<Uid> = msgs.iter().map(|m| m.uid).collect();
        let max_uid = info
            .uid_next
            .saturating_sub(1)
            .max(live.last().copied().unwrap_or(0));
        let known = |uid: Uid| {
            q.known_uids
                .as_ref()
                .is_none_or(|k| k.contains(uid, max_uid))
        };
        let recorded = match self
            .services
            .store
            .expunged_since(account, info.id, q.modseq)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "imap", error = %e, "expunged_since failed; falling back");
                None
            }
        };
        let vanished = match recorded {
            Some(uids) => {
                let uids: Vec<Uid> = uids.into_iter().filter(|u| known(*u)).collect();
                set_string(&uids)
            }
            None => {
                // RFC 7162 §3.2.5.2: without expunge records, every known
                // UID that no longer exists (a superset the client ignores
                // where it knows nothing), above the last UID that
                // seq-match-data shows unchanged.
                let floor = q
                    .seq_match
                    .as_ref()
                    .map(|(seqs, uids)| seq_match_floor(seqs, uids, &live))
                    .unwrap_or(0);
                let all = SequenceSet::Ranges(vec![codec::SeqRange {
                    start: codec::SeqNum::Value(1),
                    end: codec::SeqNum::Star,
                }]);
                let candidates = q.known_uids.as_ref().unwrap_or(&all);
                ranges_string(&missing_ranges(candidates, floor, max_uid, &live))
            }
        };
        if !vanished.is_empty() {
            self.out.untagged(&format!("VANISHED (EARLIER) {vanished}"));
        }
        for (i, m) in msgs.iter().enumerate() {
            if m.modseq > q.modseq && known(m.uid) {
                self.out.untagged(&format!(
                    "{} FETCH (UID {} FLAGS {} MODSEQ ({}))",
                    i + 1,
                    m.uid,
                    flag_list(&m.flags),
                    m.modseq
                ));
            }
        }
    }

    /// `UID FETCH ... (CHANGEDSINCE n VANISHED)` (RFC 7162 §3.2.6): `*
    /// VANISHED (EARLIER)` with the UIDs of `set` expunged after `since`
    /// that this session no longer shows.
    async fn vanished_earlier(&mut self, set: &SequenceSet, since: ModSeq) {
        let account = self.account();
        let Some(sel) = self.selected.as_ref() else {
            return;
        };
        let view: Vec<Uid> = sel.msgs.iter().map(|m| m.uid).collect();
        let max_uid = sel.max_uid();
        let set = if *set == SequenceSet::Saved {
            SequenceSet::from_numbers(&self.saved_search)
        } else {
            set.clone()
        };
        let recorded = match self
            .services
            .store
            .expunged_since(&account, sel.id, since)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(target: "imap", error = %e, "expunged_since failed; falling back");
                None
            }
        };
        let vanished = match recorded {
            Some(uids) => {
                let uids: Vec<Uid> = uids
                    .into_iter()
                    .filter(|u| set.contains(*u, max_uid) && view.binary_search(u).is_err())
                    .collect();
                set_string(&uids)
            }
            // Every UID of the set this session does not show, up to the
            // highest it shows (a superset; RFC 7162 §3.2.5.2).
            None => ranges_string(&missing_ranges(&set, 0, max_uid, &view)),
        };
        if !vanished.is_empty() {
            self.out.untagged(&format!("VANISHED (EARLIER) {vanished}"));
        }
    }

    fn resolve_set(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, Done> {
        let Some(sel) = self.selected.as_ref() else {
            return Ok(Vec::new());
        };
        let saved;
        let set = if *set == SequenceSet::Saved {
            // RFC 5182: `$` is the saved result (kept as UIDs).
            saved = SequenceSet::from_numbers(&self.saved_search);
            if !uid {
                let idx: Vec<usize> = self
                    .saved_search
                    .iter()
                    .filter_map(|u| sel.index_of(*u))
                    .collect();
                return Ok(idx);
            }
            &saved
        } else {
            set
        };
        if uid {
            let max = sel.max_uid();
            Ok(sel
                .msgs
                .iter()
                .enumerate()
                .filter(|(_, m)| set.contains(m.uid, max))
                .map(|(i, _)| i)
                .collect())
        } else {
            let n = sel.msgs.len() as u32;
            if let SequenceSet::Ranges(ranges) = set {
                for r in ranges {
                    for e in [r.start, r.end] {
                        if let codec::SeqNum::Value(v) = e
                            && v > n
                        {
                            return Err(Done::bad("Invalid message sequence number"));
                        }
                    }
                }
            }
            Ok((0..sel.msgs.len())
                .filter(|i| set.contains(*i as u32 + 1, n))
                .collect())
        }
    }

    async fn expunge(&mut self, set: Option<SequenceSet>) -> Done {
        let account = self.account();
        let qresync = self.enabled.qresync;
        let uids: Option<Vec<Uid>> = match &set {
            Some(s) => match self.resolve_set(s, true) {
                Ok(idx) => {
                    let sel = self.selected.as_ref();
                    Some(
                        idx.iter()
                            .filter_map(|i| sel.map(|s| s.msgs[*i].uid))
                            .collect(),
                    )
                }
                Err(d) => return d,
            },
            None => None,
        };
        let Some(sel) = self.selected.as_mut() else {
            return Done::bad("No mailbox selected");
        };
        if sel.read_only {
            return Done::no(Some("READ-ONLY"), "Mailbox is read-only");
        }
        match self
            .services
            .store
            .expunge(&account, sel.id, uids.as_deref())
            .await
        {
            Ok(removed) => {
                Self::announce_expunged(&mut self.out, sel, &removed, qresync);
                Done::ok("EXPUNGE completed")
            }
            Err(e) => store_error(&e),
        }
    }

    /// The messages of the selected mailbox matching `criteria`, in
    /// sequence order — the one evaluation loop behind SEARCH, SORT and
    /// THREAD, so all three match identically. With `headers`, each hit
    /// gets the header fields of its [`sort::SortMessage`] from the same
    /// parse when the criteria needed content, and from the header block
    /// otherwise; without, only its metadata (enough for ARRIVAL / SIZE).
    async fn matching(&self, criteria: &SearchKey, headers: bool) -> Vec<Hit> {
        let account = self.account();
        let Some(sel) = self.selected.as_ref() else {
            return Vec::new();
        };
        let prepared = search::prepare(criteria);
        let criteria = &prepared;
        let needs_content = search::needs_content(criteria);
        let ctx = search::SearchContext {
            exists: sel.msgs.len() as u32,
            max_uid: sel.max_uid(),
            saved: &self.saved_search,
        };
        let needs_body = search::needs_body(criteria);
        // Keys of the top-level AND that need no content are checked first,
        // so that `UID 900:* SUBJECT x` loads only the messages it can match.
        let cheap: Vec<&SearchKey> = match criteria {
            SearchKey::And(keys) if needs_content => {
                keys.iter().filter(|k| !search::needs_content(k)).collect()
            }
            _ if !needs_content => vec![criteria],
            _ => Vec::new(),
        };
        let candidate = |i: usize| {
            let m = &sel.msgs[i];
            search::Candidate {
                seq: i as u32 + 1,
                uid: m.uid,
                flags: &m.flags,
                modseq: m.modseq,
                internal_date: m.internal_date,
                size: m.size,
            }
        };
        let hit = |i: usize, parsed: Option<&mail_parser::Message<'_>>| {
            let m = &sel.msgs[i];
            let seq = i as u32 + 1;
            Hit {
                seq,
                uid: m.uid,
                modseq: m.modseq,
                info: sort::SortMessage::new(seq, m.uid, m.internal_date, m.size, parsed),
            }
        };
        let mut cands: Vec<usize> = Vec::new();
        for (i, m) in sel.msgs.iter().enumerate() {
            if m.expunged {
                continue;
            }
            let cand = candidate(i);
            if cheap
                .iter()
                .all(|k| search::matches(k, &cand, &ctx, &mut search::Content::new(None)))
            {
                cands.push(i);
            }
        }
        if !needs_content && !headers {
            return cands.into_iter().map(|i| hit(i, None)).collect();
        }
        // Header-only keys (the common SUBJECT / FROM searches) go through
        // header summaries, kept in the server's cache; the rest reads the
        // candidates in batches (only their header blocks unless a key
        // needs the body) and parses them.
        let summarized =
            needs_content && !needs_body && !headers && search::summary_answers(criteria);
        let part = if needs_body {
            ContentPart::Full
        } else {
            ContentPart::Header
        };
        let mut hits: Vec<Hit> = Vec::new();
        for batch in batches(&cands, needs_body, |&i| sel.msgs[i].size) {
            let uids: Vec<Uid> = batch.iter().map(|&i| sel.msgs[i].uid).collect();
            if summarized {
                let summaries = self.summaries(&account, sel, &uids).await;
                for (&i, summary) in batch.iter().zip(summaries) {
                    if search::matches(
                        criteria,
                        &candidate(i),
                        &ctx,
                        &mut search::Content::summary(summary),
                    ) {
                        hits.push(hit(i, None));
                    }
                }
                continue;
            }
            // A failed read leaves the batch without content, as a
            // message expunged meanwhile: text keys do not match it.
            let contents = self
                .services
                .store
                .message_contents(&account, sel.id, &uids, part)
                .await
                .unwrap_or_else(|_| vec![None; uids.len()]);
            for (&i, raw) in batch.iter().zip(contents) {
                // Header keys alone: parse only the header block.
                let text = raw.as_deref().map(|r| {
                    if needs_body {
                        r
                    } else {
                        search::header_block(r)
                    }
                });
                let mut content = search::Content::new(text);
                if needs_content && !search::matches(criteria, &candidate(i), &ctx, &mut content) {
                    continue;
                }
                hits.push(hit(i, if headers { content.message() } else { None }));
            }
        }
        hits
    }

    /// The header summaries of `uids` (of the selected mailbox `sel`), in
    /// order: from the cache, else from one batch read of the missing
    /// header blocks (then kept). `None` for a message gone from the store.
    async fn summaries(
        &self,
        account: &str,
        sel: &Selected,
        uids: &[Uid],
    ) -> Vec<Option<Arc<HeaderSummary>>> {
        let key = MailboxKey {
            account: account.to_string(),
            mailbox: sel.id,
            uid_validity: sel.uid_validity,
        };
        let mut out = match &self.header_cache {
            Some(c) => c.get_many(&key, uids),
            None => vec![None; uids.len()],
        };
        let missing: Vec<usize> = (0..uids.len()).filter(|&j| out[j].is_none()).collect();
        if missing.is_empty() {
            return out;
        }
        let missing_uids: Vec<Uid> = missing.iter().map(|&j| uids[j]).collect();
        let contents = self
            .services
            .store
            .message_contents(account, sel.id, &missing_uids, ContentPart::Header)
            .await
            .unwrap_or_else(|_| vec![None; missing_uids.len()]);
        let mut fresh = Vec::new();
        for (&j, raw) in missing.iter().zip(contents) {
            if let Some(raw) = raw {
                let summary = Arc::new(HeaderSummary::parse(search::header_block(&raw)));
                fresh.push((uids[j], Arc::clone(&summary)));
                out[j] = Some(summary);
            }
        }
        if let Some(c) = &self.header_cache {
            c.insert_many(&key, &fresh);
        }
        out
    }

    async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        returns: Option<Vec<SearchReturn>>,
        charset: Option<String>,
        criteria: SearchKey,
    ) -> Done {
        if let Some(cs) = &charset
            && let Err(d) = check_charset(cs)
        {
            return d;
        }
        if self.selected.is_none() {
            return Done::bad("No mailbox selected");
        }
        let hits: Vec<(u32, Uid, ModSeq)> = self
            .matching(&criteria, false)
            .await
            .into_iter()
            .map(|h| (h.seq, h.uid, h.modseq))
            .collect();
        let with_modseq = search::uses_modseq(&criteria);
        if with_modseq {
            self.enabled.condstore = true;
        }
        let numbers: Vec<u32> = hits
            .iter()
            .map(|(s, u, _)| if uid { *u } else { *s })
            .collect();
        let max_modseq = hits.iter().map(|h| h.2).max();
        let returns = match returns {
            Some(r) => Some(r),
            // RFC 9051 §6.4.4: IMAP4rev2 answers with ESEARCH ALL.
            None if self.enabled.rev2 => Some(vec![SearchReturn::All]),
            None => None,
        };
        match returns {
            None => {
                let line = numbers_line("SEARCH", &numbers, max_modseq.filter(|_| with_modseq));
                self.out.untagged(&line);
            }
            Some(mut opts) => {
                if opts.is_empty() {
                    opts.push(SearchReturn::All);
                }
                if opts.contains(&SearchReturn::Save) {
                    self.saved_search = hits.iter().map(|h| h.1).collect();
                }
                // RFC 5182 §2.1: SAVE alone returns no ESEARCH.
                if opts.iter().any(|o| *o != SearchReturn::Save) {
                    let line = esearch_line(
                        tag,
                        uid,
                        &opts,
                        EsearchResult {
                            min: numbers.iter().min().copied(),
                            max: numbers.iter().max().copied(),
                            count: numbers.len(),
                            all: || set_string(&numbers),
                            modseq: max_modseq.filter(|_| with_modseq),
                        },
                    );
                    self.out.untagged(&line);
                }
            }
        }
        Done::ok("SEARCH completed")
    }

    /// `[UID] SORT` (RFC 5256 §3) and its ESORT form (RFC 5267 §3).
    async fn sort(
        &mut self,
        tag: &str,
        uid: bool,
        returns: Option<Vec<SearchReturn>>,
        criteria: &[SortCriterion],
        charset: &str,
        search_keys: SearchKey,
    ) -> Done {
        if let Err(d) = check_charset(charset) {
            return d;
        }
        let hits = self
            .matching(&search_keys, sort::needs_header(criteria))
            .await;
        let with_modseq = search::uses_modseq(&search_keys);
        if with_modseq {
            self.enabled.condstore = true;
        }
        let max_modseq = hits.iter().map(|h| h.modseq).max();
        let mut msgs: Vec<sort::SortMessage> = hits.into_iter().map(|h| h.info).collect();
        sort::sort(&mut msgs, criteria);
        let numbers: Vec<u32> = msgs
            .iter()
            .map(|m| if uid { m.uid } else { m.seq })
            .collect();
        match returns {
            None => {
                let line = numbers_line("SORT", &numbers, max_modseq.filter(|_| with_modseq));
                self.out.untagged(&line);
            }
            Some(mut opts) => {
                if opts.is_empty() {
                    opts.push(SearchReturn::All);
                }
                if opts.contains(&SearchReturn::Save) {
                    // RFC 5182 §2.4: the saved result is the set of messages.
                    let mut uids: Vec<Uid> = msgs.iter().map(|m| m.uid).collect();
                    uids.sort_unstable();
                    self.saved_search = uids;
                }
                if opts.iter().any(|o| *o != SearchReturn::Save) {
                    // RFC 5267 §3.2: MIN and MAX are the first and last
                    // message in sort order, ALL lists them in sort order.
                    let line = esearch_line(
                        tag,
                        uid,
                        &opts,
                        EsearchResult {
                            min: numbers.first().copied(),
                            max: numbers.last().copied(),
                            count: numbers.len(),
                            all: || ordered_set_string(&numbers),
                            modseq: max_modseq.filter(|_| with_modseq),
                        },
                    );
                    self.out.untagged(&line);
                }
            }
        }
        Done::ok("SORT completed")
    }

    /// `[UID] THREAD` (RFC 5256 §3, §4).
    async fn thread(
        &mut self,
        uid: bool,
        algorithm: ThreadAlgorithm,
        charset: &str,
        search_keys: SearchKey,
    ) -> Done {
        if let Err(d) = check_charset(charset) {
            return d;
        }
        let hits = self.matching(&search_keys, true).await;
        // Hits come in sequence order, which REFERENCES relies on for
        // duplicate Message-IDs.
        let msgs: Vec<sort::SortMessage> = hits.into_iter().map(|h| h.info).collect();
        let threads = match algorithm {
            ThreadAlgorithm::OrderedSubject => sort::thread_ordered_subject(&msgs),
            ThreadAlgorithm::References => sort::thread_references(&msgs),
        };
        let list = threads.write(&msgs, |m| if uid { m.uid } else { m.seq });
        if list.is_empty() {
            self.out.untagged("THREAD");
        } else {
            self.out.untagged(&format!("THREAD {list}"));
        }
        Done::ok("THREAD completed")
    }

    async fn fetch(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        mut attrs: Vec<FetchAttr>,
        changed_since: Option<u64>,
        vanished: bool,
    ) -> Done {
        let idx = match self.resolve_set(set, uid) {
            Ok(i) => i,
            Err(d) => return d,
        };
        if vanished && let Some(since) = changed_since {
            self.vanished_earlier(set, since).await;
        }
        if changed_since.is_some() || attrs.contains(&FetchAttr::ModSeq) {
            // RFC 7162 §3.1: these enable CONDSTORE.
            self.enabled.condstore = true;
        }
        if changed_since.is_some() && !attrs.contains(&FetchAttr::ModSeq) {
            attrs.push(FetchAttr::ModSeq);
        }
        // RFC 9051 §6.4.8: UID FETCH always returns UID.
        if uid && !attrs.contains(&FetchAttr::Uid) {
            attrs.insert(0, FetchAttr::Uid);
        }
        let account = self.account();
        let needs_content = attrs.iter().any(|a| {
            !matches!(
                a,
                FetchAttr::Flags
                    | FetchAttr::Uid
                    | FetchAttr::InternalDate
                    | FetchAttr::Rfc822Size
                    | FetchAttr::ModSeq
            )
        });
        let sets_seen = attrs.iter().any(|a| match a {
            FetchAttr::BodySection { peek, .. } | FetchAttr::Binary { peek, .. } => !peek,
            FetchAttr::Rfc822 | FetchAttr::Rfc822Text => true,
            _ => false,
        });
        let condstore = self.enabled.condstore;
        let Some(sel) = self.selected.as_ref() else {
            return Done::bad("No mailbox selected");
        };
        let (mbox, read_only) = (sel.id, sel.read_only);
        // Header items alone (the usual message-list FETCH) read only the
        // header blocks; either way the contents come in batches.
        let part = if attrs.iter().all(header_only) {
            ContentPart::Header
        } else {
            ContentPart::Full
        };
        let whole = part == ContentPart::Full;
        let sizes: Vec<u64> = idx.iter().map(|&i| sel.msgs[i].size).collect();
        let mut had_expunged = false;
        let mut done = 0;
        for batch in batches(&sizes, whole, |s| *s) {
            let batch_idx = &idx[done..done + batch.len()];
            done += batch.len();
            let mut contents: HashMap<Uid, Option<Bytes>> = HashMap::new();
            if needs_content && let Some(sel) = self.selected.as_ref() {
                let uids: Vec<Uid> = batch_idx
                    .iter()
                    .map(|&i| &sel.msgs[i])
                    .filter(|m| !m.expunged && changed_since.is_none_or(|cs| m.modseq > cs))
                    .map(|m| m.uid)
                    .collect();
                if !uids.is_empty() {
                    match self
                        .services
                        .store
                        .message_contents(&account, mbox, &uids, part)
                        .await
                    {
                        Ok(c) => contents = uids.into_iter().zip(c).collect(),
                        Err(e) => return store_error(&e),
                    }
                }
            }
            for &i in batch_idx {
                let Some(m) = self.selected.as_ref().map(|s| s.msgs[i].clone()) else {
                    break;
                };
                if m.expunged {
                    had_expunged = true;
                    continue;
                }
                if let Some(cs) = changed_since
                    && m.modseq <= cs
                {
                    continue;
                }
                let content = if needs_content {
                    // `get`, not `remove`: a set naming a message twice
                    // fetches it twice (a `Bytes` clone is a refcount).
                    match contents.get(&m.uid).cloned().flatten() {
                        Some(c) => Some(c),
                        None => {
                            had_expunged = true;
                            continue;
                        }
                    }
                } else {
                    None
                };
                let mut m = m;
                let mut flags_changed = false;
                // RFC 9051 §6.4.5: BODY[...] (not PEEK) sets \Seen.
                if sets_seen && !read_only && !m.flags.contains(&Flag::Seen) {
                    let mut seen = Flags::new();
                    seen.insert(Flag::Seen);
                    if let Ok(upd) = self
                        .services
                        .store
                        .update_flags(&account, mbox, &[m.uid], FlagOp::Add, &seen, None)
                        .await
                        && let Some((_, f, ms)) = upd.updated.into_iter().find(|u| u.0 == m.uid)
                    {
                        m.flags = f;
                        m.modseq = ms;
                        flags_changed = true;
                        if let Some(s) = self.selected.as_mut() {
                            s.msgs[i].flags = m.flags.clone();
                            s.msgs[i].modseq = ms;
                        }
                    }
                }
                let data: &[u8] = content.as_deref().unwrap_or_default();
                let tree = content.as_ref().map(|c| mime::parse(c));
                self.out.raw(format!("* {} FETCH (", i + 1));
                let mut first = true;
                let mut wrote_flags = false;
                let mut sep = |out: &mut ResponseBuf| {
                    if !first {
                        out.raw(" ");
                    }
                    first = false;
                };
                for a in &attrs {
                    sep(&mut self.out);
                    match a {
                        FetchAttr::Uid => {
                            self.out.raw(format!("UID {}", m.uid));
                        }
                        FetchAttr::Flags => {
                            wrote_flags = true;
                            self.out.raw(format!("FLAGS {}", flag_list(&m.flags)));
                        }
                        FetchAttr::InternalDate => {
                            self.out.raw(format!(
                                "INTERNALDATE {}",
                                format_internal_date(m.internal_date)
                            ));
                        }
                        FetchAttr::Rfc822Size => {
                            self.out.raw(format!("RFC822.SIZE {}", m.size));
                        }
                        FetchAttr::ModSeq => {
                            self.out.raw(format!("MODSEQ ({})", m.modseq));
                        }
                        FetchAttr::Envelope => {
                            self.out.raw("ENVELOPE ");
                            if let Some(t) = &tree {
                                mime::write_envelope(&mut self.out, data, t);
                            }
                        }
                        FetchAttr::Body | FetchAttr::BodyStructure => {
                            let ext = *a == FetchAttr::BodyStructure;
                            self.out.raw(if ext { "BODYSTRUCTURE " } else { "BODY " });
                            if let Some(t) = &tree {
                                mime::write_body_structure(&mut self.out, data, t, ext);
                            }
                        }
                        FetchAttr::Rfc822 => {
                            self.out.raw("RFC822 ").literal(data);
                        }
                        FetchAttr::Rfc822Header | FetchAttr::Rfc822Text => {
                            let header = *a == FetchAttr::Rfc822Header;
                            let bytes = tree
                                .as_ref()
                                .and_then(|t| {
                                    mime::section_bytes(
                                        data,
                                        t,
                                        &Section {
                                            part: vec![],
                                            text: Some(if header {
                                                SectionText::Header
                                            } else {
                                                SectionText::Text
                                            }),
                                        },
                                    )
                                })
                                .unwrap_or_default();
                            self.out
                                .raw(if header {
                                    "RFC822.HEADER "
                                } else {
                                    "RFC822.TEXT "
                                })
                                .literal(&bytes);
                        }
                        FetchAttr::BodySection {
                            section, partial, ..
                        } => {
                            let bytes = tree
                                .as_ref()
                                .and_then(|t| mime::section_bytes(data, t, section));
                            let spec = section_spec(section);
                            match bytes {
                                Some(b) => {
                                    let (b, origin) = apply_partial(b, *partial);
                                    self.out.raw(format!("BODY[{spec}]{origin} ")).literal(&b);
                                }
                                // RFC 9051 §6.4.5: a missing part reads as NIL.
                                None => {
                                    self.out.raw(format!("BODY[{spec}] NIL"));
                                }
                            }
                        }
                        FetchAttr::Binary { part, partial, .. } => {
                            let spec = part
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(".");
                            match tree.as_ref().map(|t| mime::binary_bytes(data, t, part)) {
                                Some(Ok(b)) => {
                                    let (b, origin) = apply_partial(b, *partial);
                                    self.out.raw(format!("BINARY[{spec}]{origin} ")).literal(&b);
                                }
                                Some(Err(mime::BinaryError::UnknownCte)) => {
                                    self.out.raw(b"NIL)\r\n");
                                    return Done::no(Some("UNKNOWN-CTE"), "Cannot decode part");
                                }
                                _ => {
                                    self.out.raw(format!("BINARY[{spec}] NIL"));
                                }
                            }
                        }
                        FetchAttr::BinarySize { part } => {
                            let spec = part
                                .iter()
                                .map(|p| p.to_string())
                                .collect::<Vec<_>>()
                                .join(".");
                            match tree.as_ref().map(|t| mime::binary_bytes(data, t, part)) {
                                Some(Ok(b)) => {
                                    self.out.raw(format!("BINARY.SIZE[{spec}] {}", b.len()));
                                }
                                Some(Err(mime::BinaryError::UnknownCte)) => {
                                    self.out.raw(b"NIL)\r\n");
                                    return Done::no(Some("UNKNOWN-CTE"), "Cannot decode part");
                                }
                                _ => {
                                    self.out.raw(format!("BINARY.SIZE[{spec}] 0"));
                                }
                            }
                        }
                    }
                }
                if flags_changed && !wrote_flags {
                    sep(&mut self.out);
                    self.out.raw(format!("FLAGS {}", flag_list(&m.flags)));
                    wrote_flags = true;
                }
                // RFC 7162 §3.1.4.1: with CONDSTORE, FETCH with FLAGS carries MODSEQ.
                if condstore && wrote_flags && !attrs.contains(&FetchAttr::ModSeq) {
                    sep(&mut self.out);
                    self.out.raw(format!("MODSEQ ({})", m.modseq));
                }
                self.out.raw(")").crlf();
            }
        }
        if had_expunged {
            // RFC 9051 §7.5.1 / RFC 5530: some messages were expunged meanwhile.
            return Done::no(Some("EXPUNGEISSUED"), "Some messages were expunged");
        }
        Done::ok("FETCH completed")
    }

    async fn store(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        unchanged_since: Option<u64>,
        mode: StoreMode,
        silent: bool,
        flags: &[String],
    ) -> Done {
        let idx = match self.resolve_set(set, uid) {
            Ok(i) => i,
            Err(d) => return d,
        };
        let flags = match Self::parse_flags(flags) {
            Ok(f) => f,
            Err(d) => return d,
        };
        if unchanged_since.is_some() {
            self.enabled.condstore = true;
        }
        let condstore = self.enabled.condstore;
        let account = self.account();
        let Some(sel) = self.selected.as_mut() else {
            return Done::bad("No mailbox selected");
        };
        if sel.read_only {
            return Done::no(Some("READ-ONLY"), "Mailbox is read-only");
        }
        let uids: Vec<Uid> = idx
            .iter()
            .filter(|i| !sel.msgs[**i].expunged)
            .map(|i| sel.msgs[*i].uid)
            .collect();
        if uids.is_empty() {
            return Done::ok("STORE completed");
        }
        let op = match mode {
            StoreMode::Replace => FlagOp::Set,
            StoreMode::Add => FlagOp::Add,
            StoreMode::Remove => FlagOp::Remove,
        };
        let upd = match self
            .services
            .store
            .update_flags(&account, sel.id, &uids, op, &flags, unchanged_since)
            .await
        {
            Ok(u) => u,
            Err(e) => return store_error(&e),
        };
        for (u, f, ms) in upd.updated {
            let Some(i) = sel.index_of(u) else { continue };
            sel.msgs[i].flags = f;
            sel.msgs[i].modseq = ms;
            // RFC 9051 §6.4.6: untagged FETCH unless .SILENT; RFC 7162
            // §3.1.3: with UNCHANGEDSINCE the MODSEQ is sent even when silent.
            if !silent || unchanged_since.is_some() {
                let m = &sel.msgs[i];
                let mut line = format!("{} FETCH (", i + 1);
                let mut items = Vec::new();
                if uid {
                    items.push(format!("UID {}", m.uid));
                }
                if !silent {
                    items.push(format!("FLAGS {}", flag_list(&m.flags)));
                }
                if condstore {
                    items.push(format!("MODSEQ ({})", m.modseq));
                }
                if items.is_empty() {
                    continue;
                }
                line.push_str(&items.join(" "));
                line.push(')');
                self.out.untagged(&line);
            }
        }
        if !upd.modified.is_empty() {
            // RFC 7162 §3.1.3: MODIFIED lists what failed the condition.
            let nums: Vec<u32> = upd
                .modified
                .iter()
                .filter_map(|u| {
                    if uid {
                        Some(*u)
                    } else {
                        sel.index_of(*u).map(|i| i as u32 + 1)
                    }
                })
                .collect();
            return Done::ok_code(
                format!("MODIFIED {}", set_string(&nums)),
                "Conditional STORE failed",
            );
        }
        Done::ok("STORE completed")
    }

    async fn copy_move(&mut self, uid: bool, set: &SequenceSet, raw: &[u8], is_move: bool) -> Done {
        let idx = match self.resolve_set(set, uid) {
            Ok(i) => i,
            Err(d) => return d,
        };
        let name = match self.mailbox_name(raw) {
            Ok(n) => n,
            Err(d) => return d,
        };
        let account = self.account();
        let qresync = self.enabled.qresync;
        match self.services.store.mailbox(&account, &name).await {
            // RFC 9051 §6.4.7: TRYCREATE.
            Ok(None) => return Done::no(Some("TRYCREATE"), "No such mailbox"),
            Err(e) => return store_error(&e),
            Ok(Some(_)) => {}
        }
        let Some(sel) = self.selected.as_mut() else {
            return Done::bad("No mailbox selected");
        };
        if is_move && sel.read_only {
            return Done::no(Some("READ-ONLY"), "Mailbox is read-only");
        }
        let uids: Vec<Uid> = idx
            .iter()
            .filter(|i| !sel.msgs[**i].expunged)
            .map(|i| sel.msgs[*i].uid)
            .collect();
        let verb = if is_move { "MOVE" } else { "COPY" };
        if uids.is_empty() {
            return Done::ok(&format!("{verb} completed"));
        }
        let result = if is_move {
            self.services
                .store
                .move_messages(&account, sel.id, &uids, &name)
                .await
        } else {
            self.services
                .store
                .copy(&account, sel.id, &uids, &name)
                .await
        };
        let (validity, pairs) = match result {
            Ok(r) => r,
            Err(e) => return store_error(&e),
        };
        // RFC 4315 §3: COPYUID uidvalidity source-uids dest-uids (same order).
        let src: Vec<String> = pairs.iter().map(|p| p.0.to_string()).collect();
        let dst: Vec<String> = pairs.iter().map(|p| p.1.to_string()).collect();
        let code = format!("COPYUID {validity} {} {}", src.join(","), dst.join(","));
        if pairs.is_empty() {
            return Done::ok(&format!("{verb} completed"));
        }
        if is_move {
            // RFC 6851 §4.3: COPYUID goes in an untagged OK before the expunges.
            self.out.untagged_status(Status::Ok, Some(&code), "Moved");
            let moved: Vec<Uid> = pairs.iter().map(|p| p.0).collect();
            Self::announce_expunged(&mut self.out, sel, &moved, qresync);
            Done::ok("MOVE completed")
        } else {
            Done::ok_code(code, "COPY completed")
        }
    }
}

/// The UIDs of `set` above `floor` and at most `max` that are not in
/// `live` (ascending), as inclusive ranges, without enumerating the set.
fn missing_ranges(set: &SequenceSet, floor: Uid, max: Uid, live: &[Uid]) -> Vec<(Uid, Uid)> {
    let SequenceSet::Ranges(ranges) = set else {
        return Vec::new();
    };
    let resolve = |n: codec::SeqNum| match n {
        codec::SeqNum::Value(v) => v,
        codec::SeqNum::Star => max,
    };
    let mut spans: Vec<(Uid, Uid)> = ranges
        .iter()
        .filter_map(|r| {
            let (a, b) = (resolve(r.start), resolve(r.end));
            let lo = a.min(b).max(floor.saturating_add(1)).max(1);
            let hi = a.max(b).min(max);
            (lo <= hi).then_some((lo, hi))
        })
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(Uid, Uid)> = Vec::new();
    for (lo, hi) in spans {
        match merged.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => merged.push((lo, hi)),
        }
    }
    let mut out = Vec::new();
    for (lo, hi) in merged {
        // u64 so that a live UID of u32::MAX cannot wrap.
        let mut next = u64::from(lo);
        let start = live.partition_point(|u| *u < lo);
        for &u in live[start..].iter().take_while(|u| **u <= hi) {
            if u64::from(u) > next {
                out.push((next as Uid, u - 1));
            }
            next = u64::from(u) + 1;
        }
        if next <= u64::from(hi) {
            out.push((next as Uid, hi));
        }
    }
    out
}

/// RFC 7162 §3.2.5.2: the highest UID in `seq-match-data` whose sequence
/// number is unchanged, so that nothing at or below it was expunged. 0 when
/// none matches or the data is malformed or too long to check.
fn seq_match_floor(seqs: &SequenceSet, uids: &SequenceSet, live: &[Uid]) -> Uid {
    const MAX_PAIRS: usize = 4096;
    let expand = |set: &SequenceSet, star: u32| -> Option<Vec<u32>> {
        let SequenceSet::Ranges(ranges) = set else {
            return None;
        };
        let mut out = Vec::new();
        for r in ranges {
            let a = match r.start {
                codec::SeqNum::Value(v) => v,
                codec::SeqNum::Star => star,
            };
            let b = match r.end {
                codec::SeqNum::Value(v) => v,
                codec::SeqNum::Star => star,
            };
            let (lo, hi) = (a.min(b), a.max(b));
            if (hi - lo) as usize >= MAX_PAIRS.saturating_sub(out.len()) {
                return None;
            }
            out.extend(lo..=hi);
        }
        Some(out)
    };
    let count = u32::try_from(live.len()).unwrap_or(u32::MAX);
    let max_uid = live.last().copied().unwrap_or(0);
    let (Some(seqs), Some(uids)) = (expand(seqs, count), expand(uids, max_uid)) else {
        return 0;
    };
    if seqs.len() != uids.len() {
        return 0;
    }
    seqs.iter()
        .zip(&uids)
        .filter(|(s, u)| {
            s.checked_sub(1)
                .and_then(|i| live.get(i as usize))
                .is_some_and(|l| l == *u)
        })
        .map(|(_, u)| *u)
        .max()
        .unwrap_or(0)
}

/// Formats inclusive ranges as a sequence set (`1:3,7`).
fn ranges_string(ranges: &[(Uid, Uid)]) -> String {
    ranges
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}:{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Formats numbers as a sequence set that keeps their order (ESORT `ALL`,
/// RFC 5267 §3.2): only ascending runs of consecutive numbers are joined
/// (`3,1:2,7`), since a range has no order of its own.
fn ordered_set_string(numbers: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < numbers.len() {
        let start = numbers[i];
        let mut end = start;
        while i + 1 < numbers.len() && end.checked_add(1) == Some(numbers[i + 1]) {
            i += 1;
            end = numbers[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Formats numbers as a compact sequence set (`1:3,7`).
fn set_string(numbers: &[u32]) -> String {
    let mut sorted = numbers.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        let mut end = start;
        while i + 1 < sorted.len() && sorted[i + 1] == end + 1 {
            i += 1;
            end = sorted[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_patterns() {
        let m = |p: &str, n: &str| {
            pattern_matches(
                &p.chars().collect::<Vec<_>>(),
                &n.chars().collect::<Vec<_>>(),
            )
        };
        assert!(m("*", "a/b/c"));
        assert!(m("%", "abc"));
        assert!(!m("%", "a/b"));
        assert!(m("a/%", "a/b"));
        assert!(!m("a/%", "a/b/c"));
        assert!(m("客户/*", "客户/2026年"));
        assert!(m("*2026*", "客户/2026年"));
        assert!(!m("b*", "a"));
    }

    #[test]
    fn sets() {
        assert_eq!(set_string(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(set_string(&[]), "");
    }

    fn parse_set(s: &str) -> SequenceSet {
        let cmd = format!("a UID FETCH {s} FLAGS\r\n");
        match codec::parse_command(cmd.as_bytes()).map(|c| c.body) {
            Ok(CommandBody::Fetch { set, .. }) => set,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn missing_ranges_subtracts_live_uids_without_enumerating() {
        let live = [2, 3, 7, 10];
        let r = missing_ranges(&parse_set("1:*"), 0, 10, &live);
        assert_eq!(ranges_string(&r), "1,4:6,8:9");
        let r = missing_ranges(&parse_set("5:1,9,20:30"), 0, 12, &live);
        assert_eq!(ranges_string(&r), "1,4:5,9");
        let r = missing_ranges(&parse_set("1:4294967295"), 3, u32::MAX, &[u32::MAX]);
        assert_eq!(r, vec![(4, u32::MAX - 1)]);
        assert!(missing_ranges(&parse_set("1:10"), 10, 10, &live).is_empty());
    }

    #[test]
    fn seq_match_data_finds_the_unchanged_prefix() {
        let live = [1, 2, 4, 5, 8];
        // The client's 3rd message was UID 4 and still is; its 5th was 6.
        assert_eq!(
            seq_match_floor(&parse_set("3,5"), &parse_set("4,6"), &live),
            4
        );
        assert_eq!(seq_match_floor(&parse_set("3"), &parse_set("3"), &live), 0);
        assert_eq!(
            seq_match_floor(&parse_set("1:2"), &parse_set("1"), &live),
            0
        );
    }
}
