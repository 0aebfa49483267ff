//! # umail-core
//!
//! The model and the seams of umail, an embeddable enterprise mail system.
//!
//! Protocol crates (`umail-smtp`, `umail-imap`, `umail-pop3`) depend only on
//! this crate: they talk to storage and policy through the object-safe traits
//! defined here, so an integrator can run them over their own user directory
//! or message store.
//!
//! * [`address`]: RFC 5321 addresses and IDNA domains.
//! * [`model`]: principals, envelopes, identifiers.
//! * [`Directory`], [`MailStore`], [`QueueStore`], [`Filter`]: the traits,
//!   each documenting the guarantees an implementation must keep.
//! * [`ingest`]: the one pipeline every message takes in ([`Ingest`]),
//!   whatever way it came: loop detection, recipient expansion, filters,
//!   actions, one durable commit, one result per recipient.
//! * [`sasl`]: PLAIN, LOGIN, SCRAM-SHA-256 and CRAM-MD5 server mechanisms.
//! * [`config`]: the configuration file, with every default.
//! * [`collection`]: settings and status of remote POP3 collection
//!   (MultiPOP, DomainPOP), shared by the store and the collector.
//! * [`lockout`]: failed-authentication accounting per client IP.
//! * [`memory`]: in-memory implementations of the traits, for tests and as models.
//! * [`message`]: header helpers every ingest source shares.
//! * [`net`]: TLS-upgradable streams, connection limits, shutdown, [`Services`].
//!
//! ```
//! use umail_core::Address;
//! let a: Address = "张三@例子.中国".parse().unwrap();
//! assert_eq!(a.domain().as_str(), "xn--fsqu00a.xn--fiqs8s");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod collection;
pub mod config;
pub mod directory;
pub mod filter;
pub mod ingest;
pub mod lockout;
pub mod memory;
pub mod message;
pub mod model;
pub mod net;
pub mod queue;
pub mod sasl;
pub mod store;

pub use address::{Address, AddressError, Domain, ReversePath};
pub use directory::{
    Directory, DirectoryError, DomainSettings, ListMember, ListPolicy, MailingList, Resolution,
    Unavailability,
};
pub use filter::{Action, Disposition, Filter, FilterChain, MessageData, Reply, Verdict};
pub use ingest::{
    AcceptedRecipient, Expansion, Incoming, Ingest, IngestReport, IngestSettings, LocalTarget,
    PolicyMarks, RecipientOutcome, RecipientReport, Recipients, Source,
};
pub use model::{
    AccountStatus, AdminRole, BodyType, DomainStatus, DsnReturn, Envelope, Notify, Principal,
    Protocol, QueueId, Quota, QuotaUsage, Recipient, SessionInfo, TlsInfo,
};
pub use queue::{
    AttemptLog, EnqueueOptions, Priority, QueueEntry, QueueError, QueueState, QueueStore,
    RecipientStatus,
};
pub use store::{
    AppendOutcome, ChangeFeed, DeliveryTarget, Flag, FlagOp, FlagUpdate, Flags, MailStore,
    MailboxChange, MailboxId, MailboxInfo, MessageMeta, ModSeq, SpecialUse, StoreError, Uid,
};

/// The current time as seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}
pub use net::{ConnectionInfo, ConnectionLimiter, MaybeTlsStream, Services, Shutdown};
