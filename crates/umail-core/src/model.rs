//! The shared data model: principals, envelopes, identifiers.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::address::{Address, Domain, ReversePath};

/// A protocol a principal may be allowed to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// SMTP submission (sending mail).
    Smtp,
    /// IMAP access.
    Imap,
    /// POP3 access.
    Pop3,
    /// A future web front end.
    Webmail,
}

impl Protocol {
    /// Every protocol, in a stable order.
    pub const ALL: [Protocol; 4] = [
        Protocol::Smtp,
        Protocol::Imap,
        Protocol::Pop3,
        Protocol::Webmail,
    ];

    /// Lower-case name as used in configuration and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Imap => "imap",
            Protocol::Pop3 => "pop3",
            Protocol::Webmail => "webmail",
        }
    }

    /// Parses a lower- or upper-case protocol name.
    pub fn parse(s: &str) -> Option<Protocol> {
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an account may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Normal operation.
    #[default]
    Enabled,
    /// Frozen: no login, no sending, no receiving; data is kept.
    Frozen,
}

/// Lifecycle status of a hosted domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DomainStatus {
    /// The domain receives and sends mail.
    #[default]
    Active,
    /// Switched off by an administrator.
    Disabled,
    /// Past its expiry date (set by an administrator or computed from the expiry date).
    Expired,
}

/// An administrative role and its scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum AdminRole {
    /// Manages everything.
    System,
    /// Manages one domain.
    Domain {
        /// The domain managed.
        domain: Domain,
    },
    /// Manages the users of one department within a domain.
    Department {
        /// The domain the department belongs to.
        domain: Domain,
        /// The department's name path, for example `Sales/North`.
        department: String,
    },
}

/// Storage limits of an account. `0` means unlimited, as operators expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Quota {
    /// Maximum stored bytes (0 = unlimited).
    pub bytes: u64,
    /// Maximum stored messages (0 = unlimited).
    pub messages: u64,
}

impl Quota {
    /// True when storing `add_bytes` more in `add_messages` messages on top of
    /// `usage` would exceed this quota.
    pub fn would_exceed(&self, usage: &QuotaUsage, add_bytes: u64, add_messages: u64) -> bool {
        (self.bytes != 0 && usage.bytes.saturating_add(add_bytes) > self.bytes)
            || (self.messages != 0 && usage.messages.saturating_add(add_messages) > self.messages)
    }
}

/// What an account currently stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct QuotaUsage {
    /// Bytes stored over all mailboxes (each message counted at its full size).
    pub bytes: u64,
    /// Messages stored over all mailboxes.
    pub messages: u64,
}

/// An authenticated (or resolved) user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The account's primary address; its [`Address::lookup_key`] is the
    /// account identifier used by [`MailStore`](crate::MailStore).
    pub address: Address,
    /// Display name.
    pub display_name: String,
    /// Storage limits.
    pub quota: Quota,
    /// Protocols the account may use.
    pub protocols: Vec<Protocol>,
    /// Enabled or frozen.
    pub status: AccountStatus,
    /// Department name path, if any.
    pub department: Option<String>,
    /// Administrative roles held by the account.
    pub roles: Vec<AdminRole>,
}

impl Principal {
    /// The account identifier: the lower-cased primary address.
    pub fn account(&self) -> String {
        self.address.lookup_key()
    }

    /// True when the account may use `protocol` now (enabled and allowed).
    pub fn may_use(&self, protocol: Protocol) -> bool {
        self.status == AccountStatus::Enabled && self.protocols.contains(&protocol)
    }

    /// True when the account holds the system administrator role.
    pub fn is_system_admin(&self) -> bool {
        self.roles.contains(&AdminRole::System)
    }
}

/// DSN `NOTIFY` conditions for one recipient (RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Notify {
    /// NOTIFY=NEVER was given.
    pub never: bool,
    /// Report success.
    pub success: bool,
    /// Report failure.
    pub failure: bool,
    /// Report delay.
    pub delay: bool,
}

impl Notify {
    /// True when no NOTIFY parameter was given (the default: failure, maybe delay).
    pub fn is_default(&self) -> bool {
        !self.never && !self.success && !self.failure && !self.delay
    }
}

/// DSN `RET` parameter (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DsnReturn {
    /// Return the full message.
    Full,
    /// Return headers only.
    Headers,
}

/// The declared body type (`BODY=` parameter, RFC 6152 / RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum BodyType {
    /// 7-bit ASCII (the default).
    #[default]
    SevenBit,
    /// 8BITMIME.
    EightBitMime,
    /// BINARYMIME (requires BDAT).
    BinaryMime,
}

/// One envelope recipient with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The forward path.
    pub address: Address,
    /// NOTIFY conditions.
    pub notify: Notify,
    /// ORCPT: the original recipient as `addr-type;xtext`, verbatim.
    pub orcpt: Option<String>,
}

impl Recipient {
    /// A recipient with no DSN parameters.
    pub fn new(address: Address) -> Recipient {
        Recipient {
            address,
            notify: Notify::default(),
            orcpt: None,
        }
    }
}

/// TLS facts of a connection, for `Received` headers and policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Negotiated cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// Facts about the client side of a session, given to filters and policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Unique id for logs.
    pub session_id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server's local address.
    pub local: SocketAddr,
    /// The HELO/EHLO name, once given.
    pub helo: Option<String>,
    /// TLS details, once TLS is active.
    pub tls: Option<TlsInfo>,
    /// Authenticated account, if any.
    pub authenticated: Option<Address>,
    /// Which listener accepted the session (`smtp`, `submission`, ...).
    pub listener: String,
}

/// An SMTP envelope: everything the transaction said about the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// MAIL FROM.
    pub reverse_path: ReversePath,
    /// RCPT TOs, in order.
    pub recipients: Vec<Recipient>,
    /// BODY= parameter.
    pub body: BodyType,
    /// SMTPUTF8 was requested.
    pub smtputf8: bool,
    /// RET= parameter.
    pub ret: Option<DsnReturn>,
    /// ENVID= parameter, verbatim xtext.
    pub envid: Option<String>,
    /// Declared SIZE=.
    pub declared_size: Option<u64>,
    /// Authenticated submitter.
    pub auth: Option<Address>,
    /// Unix time before which the message must not be delivered: the
    /// submitter's `HOLDFOR`/`HOLDUNTIL` (FUTURERELEASE, RFC 4865).
    #[serde(default)]
    pub release_at: Option<i64>,
}

impl Envelope {
    /// A fresh envelope for `reverse_path` with no recipients.
    pub fn new(reverse_path: ReversePath) -> Envelope {
        Envelope {
            reverse_path,
            recipients: Vec::new(),
            body: BodyType::SevenBit,
            smtputf8: false,
            ret: None,
            envid: None,
            declared_size: None,
            auth: None,
            release_at: None,
        }
    }
}

/// A queue identifier, shown to clients in `250 2.0.0 <id>` and to operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

impl QueueId {
    /// Parses the 16-digit hexadecimal form produced by `Display`.
    pub fn parse(s: &str) -> Option<QueueId> {
        u64::from_str_radix(s, 16).ok().map(QueueId)
    }
}
