//! Remote collection settings: the plain configuration and status types
//! of MultiPOP accounts (a user's remote POP3 mailbox), DomainPOP accounts
//! (a domain's catch-all remote mailbox) and the admin limits.
//!
//! They live here, beside the other configuration types, so that the store
//! that keeps them (`umail-store`) and the collector that acts on them
//! (`umail-pop3`) share one definition without depending on each other.
//! Nothing in this module talks to a network or a database.
//!
//! Remote passwords must be usable, so they are kept as given, wrapped in
//! [`RemotePassword`], whose `Debug` prints `***`; they are never logged.

use serde::{Deserialize, Serialize};

use crate::address::Address;

/// Default poll interval of a remote account, in seconds.
pub const DEFAULT_FETCH_INTERVAL_SECS: u64 = 300;
/// Shortest accepted poll interval, in seconds.
pub const MIN_FETCH_INTERVAL_SECS: u64 = 5;
/// Longest delay between attempts after repeated failures, in seconds.
pub const MAX_BACKOFF_SECS: u64 = 6 * 3600;
/// Default bound of a DomainPOP Message-ID de-duplication set.
pub const DEFAULT_MAX_MESSAGE_IDS: u64 = 10_000;
/// Default largest message collected (bytes).
pub const DEFAULT_MAX_REMOTE_MESSAGE: u64 = 50 * 1024 * 1024;
/// Longest text kept as the result of the last fetch.
const MAX_RESULT_TEXT: usize = 512;
/// A remote password. `Debug` never shows it; serialized as a plain string
/// (it must be usable to log in).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RemotePassword(String);

impl RemotePassword {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> RemotePassword {
        RemotePassword(s.into())
    }

    /// The password itself, to send it to the remote server.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for RemotePassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RemotePassword(***)")
    }
}

/// How the connection to the remote server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TlsMode {
    /// TLS from the first byte (POP3S, port 995).
    #[default]
    Implicit,
    /// `STLS` required before logging in (port 110).
    Starttls,
    /// No TLS (trusted networks only; the password crosses in the clear
    /// unless APOP is used).
    None,
}

impl TlsMode {
    /// The name an operator types (`implicit`, `starttls`, `none`).
    pub fn name(self) -> &'static str {
        match self {
            TlsMode::Implicit => "implicit",
            TlsMode::Starttls => "starttls",
            TlsMode::None => "none",
        }
    }

    /// Parses `implicit`/`tls`/`ssl`, `starttls`/`stls`, `none`/`plain`.
    pub fn parse(s: &str) -> Option<TlsMode> {
        match s.to_ascii_lowercase().as_str() {
            "implicit" | "tls" | "ssl" | "pop3s" => Some(TlsMode::Implicit),
            "starttls" | "stls" => Some(TlsMode::Starttls),
            "none" | "plain" => Some(TlsMode::None),
            _ => None,
        }
    }
}

/// Where a remote mailbox lives and how to log in to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteServer {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// TLS mode.
    pub tls: TlsMode,
    /// Verify the server's certificate (default on). Off only for
    /// self-signed servers on trusted networks.
    #[serde(default = "yes")]
    pub tls_verify: bool,
    /// Extra trusted certificate(s), PEM file (e.g. the old server's
    /// self-signed certificate).
    #[serde(default)]
    pub ca_file: Option<String>,
    /// Remote login name.
    pub username: String,
    /// Remote password.
    pub password: RemotePassword,
    /// Log in with APOP instead of a password login.
    #[serde(default)]
    pub apop: bool,
}

fn yes() -> bool {
    true
}

impl RemoteServer {
    /// `user@host:port`, for listings and logs (no password).
    pub fn display(&self) -> String {
        format!("{}@{}:{}", self.username, self.host, self.port)
    }

    /// Checks the settings an operator typed: a host name, a port, a
    /// user name and a password without control characters.
    pub fn validate(&self) -> Result<(), String> {
        if self.host.is_empty()
            || self.host.len() > 255
            || self
                .host
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("`{}` is not a host name", self.host));
        }
        if self.port == 0 {
            return Err("the port cannot be 0".into());
        }
        let bad = |s: &str| s.is_empty() || s.len() > 1024 || s.chars().any(|c| c.is_control());
        if bad(&self.username) || self.username.contains(' ') {
            return Err("bad remote user name".into());
        }
        if bad(self.password.expose()) {
            return Err("the remote password is empty or has control characters".into());
        }
        Ok(())
    }
}

/// What happened at the last fetches of a remote account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchStatus {
    /// When the last fetch started (Unix time).
    pub last_attempt: Option<i64>,
    /// When the last successful fetch ended.
    pub last_success: Option<i64>,
    /// A one-line result of the last fetch (never contains the password).
    pub last_result: String,
    /// Failures in a row (0 after a success).
    pub failures: u32,
    /// Earliest time of the next scheduled fetch (0 = as soon as possible).
    pub next_attempt: i64,
    /// Messages collected over the account's life.
    pub fetched_total: u64,
    /// Messages the local side refused at the last successful fetch: they
    /// are still on the remote server, and each is tried again (see
    /// [`RefusedMessage::retry_after`]).
    #[serde(default)]
    pub refused: Vec<RefusedMessage>,
}

/// A remote message the local side did not accept (mailbox full, no local
/// recipient, refused by a filter, mail loop). It is neither marked
/// collected nor deleted from the remote server: it waits there, is
/// reported, and is tried again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RefusedMessage {
    /// The message's UIDL on the remote server (`#N` for a server without
    /// UIDL).
    pub uidl: String,
    /// Its message number in the remote mailbox at the last fetch (numbers
    /// change between sessions; the UIDL does not).
    pub number: u32,
    /// Its size as the remote server lists it.
    pub size: u64,
    /// The local reply, e.g. `552 5.2.2 Mailbox full`.
    pub reason: String,
    /// True when the refusal was temporary (a 4xx reply).
    pub temporary: bool,
    /// Refusals in a row.
    pub attempts: u32,
    /// When it was first refused (Unix time).
    pub first_refused: i64,
    /// When it was last downloaded and offered.
    pub last_tried: i64,
    /// Scheduled fetches do not download it again before this time (Unix
    /// time); a fetch an operator asks for tries it at once.
    pub retry_after: i64,
    /// Its `Message-ID` (DomainPOP de-duplication: other copies of the same
    /// message wait for this one).
    pub message_id: Option<String>,
    /// DomainPOP: the local accounts that already have it; the next attempt
    /// delivers only to the others.
    pub delivered_to: Vec<String>,
}

impl RefusedMessage {
    /// One line for listings: number, UIDL, size, reason and attempts.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "#{} uidl {} ({} bytes): {}",
            self.number, self.uidl, self.size, self.reason
        );
        if self.attempts > 1 {
            s.push_str(&format!(" ({} attempts)", self.attempts));
        }
        if !self.delivered_to.is_empty() {
            s.push_str(&format!(
                "; already delivered to {}",
                self.delivered_to.join(", ")
            ));
        }
        s
    }
}

/// The result of one fetch, as a store records it into the account's
/// [`FetchStatus`] ([`FetchStatus::record`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchOutcome {
    /// When the fetch started.
    pub started: i64,
    /// When it ended.
    pub finished: i64,
    /// Success or failure.
    pub ok: bool,
    /// Messages collected.
    pub fetched: u64,
    /// One-line summary or error (must not contain the password).
    pub message: String,
    /// The messages refused at this fetch (with `ok`): they replace
    /// [`FetchStatus::refused`].
    pub refused: Vec<RefusedMessage>,
}

/// The delay before the next attempt: the interval after a success,
/// doubled per failure in a row, at most [`MAX_BACKOFF_SECS`] (but never
/// below the interval).
pub fn backoff_delay(interval_secs: u64, failures: u32) -> u64 {
    if failures == 0 {
        return interval_secs;
    }
    let factor = 1u64 << failures.min(16);
    interval_secs
        .saturating_mul(factor)
        .min(MAX_BACKOFF_SECS)
        .max(interval_secs)
}

/// Most refused messages kept in a [`FetchStatus`]; the rest are still
/// left on the server and tried at every fetch, but not listed.
pub const MAX_REFUSED_KEPT: usize = 500;

impl FetchStatus {
    /// Records the outcome of a fetch and schedules the next one: the
    /// interval after a success, a doubling backoff after failures
    /// ([`backoff_delay`]). A failed fetch keeps the earlier list of
    /// refused messages (it did not look at them).
    pub fn record(&mut self, outcome: &FetchOutcome, interval_secs: u64) {
        self.last_attempt = Some(outcome.started);
        let mut text = outcome.message.replace(['\r', '\n'], " ");
        if text.len() > MAX_RESULT_TEXT {
            let mut cut = MAX_RESULT_TEXT;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        self.last_result = text;
        self.fetched_total = self.fetched_total.saturating_add(outcome.fetched);
        if outcome.ok {
            self.last_success = Some(outcome.finished);
            self.failures = 0;
            self.refused = outcome.refused.clone();
            self.refused.truncate(MAX_REFUSED_KEPT);
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        let delay = backoff_delay(interval_secs, self.failures);
        self.next_attempt = outcome
            .finished
            .saturating_add(i64::try_from(delay).unwrap_or(i64::MAX));
    }

    /// After a change of settings: the next scheduled fetch comes at once
    /// and tries every refused message again (a new fallback address, say,
    /// may route them now).
    pub fn retry_now(&mut self) {
        self.next_attempt = 0;
        self.failures = 0;
        for r in &mut self.refused {
            r.retry_after = 0;
        }
    }
}

/// Settings of one MultiPOP account (a user's remote mailbox).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteAccountConfig {
    /// The remote server and login.
    pub server: RemoteServer,
    /// Local mailbox the messages go to (default `INBOX`).
    pub folder: String,
    /// Keep collected messages on the remote server (tracked by UIDL).
    pub leave_on_server: bool,
    /// With `leave_on_server`: delete a collected message from the server
    /// this many days after it was collected (0 = never).
    pub delete_after_days: u32,
    /// Larger messages are skipped and left on the server (0 = the default,
    /// [`DEFAULT_MAX_REMOTE_MESSAGE`]).
    pub max_message_size: u64,
    /// Collected on schedule.
    pub enabled: bool,
    /// Poll interval in seconds (at least [`MIN_FETCH_INTERVAL_SECS`]).
    pub interval_secs: u64,
}

impl RemoteAccountConfig {
    /// Defaults: INBOX, leave on server, never delete, 50 MiB, enabled,
    /// every 300 s.
    pub fn new(server: RemoteServer) -> RemoteAccountConfig {
        RemoteAccountConfig {
            server,
            folder: crate::store::INBOX.to_string(),
            leave_on_server: true,
            delete_after_days: 0,
            max_message_size: DEFAULT_MAX_REMOTE_MESSAGE,
            enabled: true,
            interval_secs: DEFAULT_FETCH_INTERVAL_SECS,
        }
    }

    /// Checks the settings: the server, a folder name, the interval.
    pub fn validate(&self) -> Result<(), String> {
        self.server.validate()?;
        if self.folder.trim().is_empty() || self.folder.chars().any(|c| c.is_control()) {
            return Err("bad target folder name".into());
        }
        if self.interval_secs < MIN_FETCH_INTERVAL_SECS {
            return Err(format!(
                "the interval must be at least {MIN_FETCH_INTERVAL_SECS} seconds"
            ));
        }
        Ok(())
    }
}

/// A stored MultiPOP account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteAccountInfo {
    /// Local account (lower-cased address) that owns it.
    pub account: String,
    /// Number of the remote account, unique in the database.
    pub id: u64,
    /// Settings.
    pub config: RemoteAccountConfig,
    /// Fetch status.
    pub status: FetchStatus,
    /// When it was added.
    pub created: i64,
}

/// Settings of a domain's DomainPOP account (a catch-all remote mailbox
/// routed to local users by its headers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainPopConfig {
    /// The remote server and login.
    pub server: RemoteServer,
    /// Keep collected messages on the remote server.
    pub leave_on_server: bool,
    /// With `leave_on_server`: delete after this many days (0 = never).
    pub delete_after_days: u32,
    /// Larger messages are skipped (0 = [`DEFAULT_MAX_REMOTE_MESSAGE`]).
    pub max_message_size: u64,
    /// Collected on schedule.
    pub enabled: bool,
    /// Poll interval in seconds.
    pub interval_secs: u64,
    /// Header fields to take recipients from, in order (empty = the
    /// default list: Delivered-To, X-Original-To, X-Envelope-To, To, Cc).
    pub headers: Vec<String>,
    /// Who gets messages no header routes (usually the postmaster).
    pub fallback: Option<String>,
    /// Deliver each Message-ID only once (default on).
    pub dedupe_message_id: bool,
    /// Most Message-IDs remembered for de-duplication; the oldest are
    /// forgotten first (0 = [`DEFAULT_MAX_MESSAGE_IDS`]).
    pub max_message_ids: u64,
    /// `Received` fields ignored from the top when reading `for` clauses
    /// (the provider's own hops). Default 0.
    #[serde(default)]
    pub skip_received: u32,
}

impl DomainPopConfig {
    /// Defaults: leave on server, 50 MiB, enabled, every 300 s, default
    /// headers, no fallback, de-duplication on with 10 000 ids.
    pub fn new(server: RemoteServer) -> DomainPopConfig {
        DomainPopConfig {
            server,
            leave_on_server: true,
            delete_after_days: 0,
            max_message_size: DEFAULT_MAX_REMOTE_MESSAGE,
            enabled: true,
            interval_secs: DEFAULT_FETCH_INTERVAL_SECS,
            headers: Vec::new(),
            fallback: None,
            dedupe_message_id: true,
            max_message_ids: DEFAULT_MAX_MESSAGE_IDS,
            skip_received: 0,
        }
    }

    /// Checks the settings: the server, the interval, header names,
    /// the fallback address.
    pub fn validate(&self) -> Result<(), String> {
        self.server.validate()?;
        if self.interval_secs < MIN_FETCH_INTERVAL_SECS {
            return Err(format!(
                "the interval must be at least {MIN_FETCH_INTERVAL_SECS} seconds"
            ));
        }
        for h in &self.headers {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                return Err(format!("`{h}` is not a header name"));
            }
        }
        if let Some(f) = &self.fallback {
            Address::parse(f).map_err(|e| format!("fallback `{f}`: {e}"))?;
        }
        Ok(())
    }
}

/// A stored DomainPOP account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainPopInfo {
    /// The local domain it delivers to.
    pub domain: String,
    /// Settings.
    pub config: DomainPopConfig,
    /// Fetch status.
    pub status: FetchStatus,
    /// When it was configured.
    pub created: i64,
}

/// Admin limits on remote collection, system-wide or per domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectLimits {
    /// Most MultiPOP accounts per user (0 = unlimited).
    pub max_accounts_per_user: u64,
    /// Most messages collected per remote mailbox per fetch (0 =
    /// unlimited); the rest waits for the next fetch.
    pub max_messages_per_fetch: u64,
}

impl Default for CollectLimits {
    /// 5 accounts per user, 500 messages per fetch.
    fn default() -> Self {
        CollectLimits {
            max_accounts_per_user: 5,
            max_messages_per_fetch: 500,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> RemoteServer {
        RemoteServer {
            host: "pop.example.net".into(),
            port: 995,
            tls: TlsMode::Implicit,
            tls_verify: true,
            ca_file: None,
            username: "u".into(),
            password: RemotePassword::new("hunter2"),
            apop: false,
        }
    }

    #[test]
    fn password_never_in_debug() {
        let cfg = RemoteAccountConfig::new(server());
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff_delay(300, 0), 300);
        assert_eq!(backoff_delay(300, 1), 600);
        assert_eq!(backoff_delay(300, 3), 2400);
        assert_eq!(backoff_delay(300, 30), MAX_BACKOFF_SECS);
        assert_eq!(backoff_delay(100_000, 2), 100_000);
    }

    #[test]
    fn a_failed_fetch_keeps_the_refused_list_and_a_success_replaces_it() {
        let refused = RefusedMessage {
            uidl: "u1".into(),
            number: 1,
            size: 10,
            reason: "552 5.2.2 Mailbox full".into(),
            attempts: 1,
            retry_after: 5000,
            ..RefusedMessage::default()
        };
        let mut status = FetchStatus::default();
        let ok = |refused: Vec<RefusedMessage>| FetchOutcome {
            started: 1,
            finished: 2,
            ok: true,
            fetched: 0,
            message: "ok".into(),
            refused,
        };
        status.record(&ok(vec![refused.clone()]), 300);
        assert_eq!(status.refused, vec![refused.clone()]);
        status.record(
            &FetchOutcome {
                ok: false,
                ..ok(Vec::new())
            },
            300,
        );
        assert_eq!(status.refused.len(), 1);
        status.retry_now();
        assert_eq!((status.next_attempt, status.refused[0].retry_after), (0, 0));
        status.record(&ok(Vec::new()), 300);
        assert!(status.refused.is_empty());
        // Stored before the list existed: still reads.
        let old: FetchStatus = toml::from_str(
            "last_result = \"\"\nfailures = 0\nnext_attempt = 0\nfetched_total = 3\n",
        )
        .unwrap();
        assert_eq!(old.fetched_total, 3);
    }
}
