//! The `MailStore` trait: mailboxes, messages, flags and the change feed.

use std::collections::BTreeSet;
use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::model::QuotaUsage;

/// A message's unique identifier within one mailbox (RFC 9051 §2.3.1.1).
pub type Uid = u32;

/// A modification sequence number (RFC 7162).
pub type ModSeq = u64;

/// Errors a mail store reports.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The mailbox does not exist.
    #[error("no such mailbox: {0}")]
    NoSuchMailbox(String),
    /// A mailbox with that name already exists.
    #[error("mailbox already exists: {0}")]
    MailboxExists(String),
    /// The mailbox name is not acceptable (empty, bad hierarchy, reserved).
    #[error("invalid mailbox name: {0}")]
    InvalidName(String),
    /// The operation is not allowed on this mailbox (e.g. deleting INBOX).
    #[error("not allowed: {0}")]
    NotAllowed(String),
    /// The account's quota would be exceeded.
    #[error("quota exceeded")]
    OverQuota,
    /// The message is larger than the store accepts.
    #[error("message too large")]
    TooLarge,
    /// The account does not exist in the store.
    #[error("no such account: {0}")]
    NoSuchAccount(String),
    /// The storage back end failed; nothing was committed.
    #[error("storage failure: {0}")]
    Io(String),
}

/// A message flag (RFC 9051 §2.3.2). `\Recent` is not stored: it is a
/// per-session notion that IMAP4rev2 removed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Flag {
    /// `\Seen`
    Seen,
    /// `\Answered`
    Answered,
    /// `\Flagged`
    Flagged,
    /// `\Deleted`
    Deleted,
    /// `\Draft`
    Draft,
    /// A keyword such as `$Forwarded` or `$Junk` (case-insensitive in IMAP;
    /// stored as given).
    Keyword(String),
}

impl Flag {
    /// Parses the IMAP spelling (`\Seen`, `$Junk`, ...). Returns `None` for
    /// `\Recent` and unknown system flags.
    pub fn parse(s: &str) -> Option<Flag> {
        if let Some(system) = s.strip_prefix('\\') {
            return match system.to_ascii_lowercase().as_str() {
                "seen" => Some(Flag::Seen),
                "answered" => Some(Flag::Answered),
                "flagged" => Some(Flag::Flagged),
                "deleted" => Some(Flag::Deleted),
                "draft" => Some(Flag::Draft),
                _ => None,
            };
        }
        if s.is_empty() {
            return None;
        }
        Some(Flag::Keyword(s.to_string()))
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Flag::Seen => f.write_str("\\Seen"),
            Flag::Answered => f.write_str("\\Answered"),
            Flag::Flagged => f.write_str("\\Flagged"),
            Flag::Deleted => f.write_str("\\Deleted"),
            Flag::Draft => f.write_str("\\Draft"),
            Flag::Keyword(k) => f.write_str(k),
        }
    }
}

/// A set of flags.
pub type Flags = BTreeSet<Flag>;

/// Special-use attributes (RFC 6154).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SpecialUse {
    /// `\Sent`
    Sent,
    /// `\Drafts`
    Drafts,
    /// `\Trash`
    Trash,
    /// `\Junk`
    Junk,
    /// `\Archive`
    Archive,
    /// `\All`
    All,
    /// `\Flagged`
    Flagged,
}

impl SpecialUse {
    /// The IMAP attribute spelling.
    pub fn attribute(self) -> &'static str {
        match self {
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Trash => "\\Trash",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Archive => "\\Archive",
            SpecialUse::All => "\\All",
            SpecialUse::Flagged => "\\Flagged",
        }
    }

    /// The mailboxes every account gets on first use, with their names.
    pub const DEFAULTS: [(&'static str, SpecialUse); 5] = [
        ("Sent", SpecialUse::Sent),
        ("Drafts", SpecialUse::Drafts),
        ("Trash", SpecialUse::Trash),
        ("Junk", SpecialUse::Junk),
        ("Archive", SpecialUse::Archive),
    ];
}

/// The hierarchy separator of mailbox names in the store.
pub const HIERARCHY_SEPARATOR: char = '/';

/// The name of the inbox; matched case-insensitively (RFC 9051 §5.1).
pub const INBOX: &str = "INBOX";

/// A mailbox identifier, unique within an account and never reused.
pub type MailboxId = u64;

/// A mailbox and its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxInfo {
    /// Stable identifier.
    pub id: MailboxId,
    /// Full name with `/` as the hierarchy separator; the inbox is `INBOX`.
    pub name: String,
    /// Special-use attribute, if any.
    pub special_use: Option<SpecialUse>,
    /// Subscribed (LSUB / LIST (SUBSCRIBED)).
    pub subscribed: bool,
    /// UIDVALIDITY: changes only if UIDs were reassigned (new mailbox with an old name).
    pub uid_validity: u32,
    /// The UID the next message will get.
    pub uid_next: Uid,
    /// The highest MODSEQ of any change in this mailbox.
    pub highest_modseq: ModSeq,
    /// Number of messages.
    pub messages: u32,
    /// Number of messages without `\Seen`.
    pub unseen: u32,
    /// Sum of message sizes.
    pub size: u64,
}

/// Metadata of one message in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageMeta {
    /// UID within the mailbox.
    pub uid: Uid,
    /// Current flags.
    pub flags: Flags,
    /// MODSEQ of the last change to this message.
    pub modseq: ModSeq,
    /// Internal date, seconds since the Unix epoch (UTC).
    pub internal_date: i64,
    /// Size of the stored message in bytes.
    pub size: u64,
    /// Content hash of the message blob (stable identity across mailboxes
    /// and sessions, used for POP3 UIDL and deduplication).
    pub blob_id: String,
}

/// Where one copy of a delivered message goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryTarget {
    /// Account identifier (lower-cased address).
    pub account: String,
    /// Mailbox name; missing mailboxes other than special-use ones are created.
    pub mailbox: String,
    /// Initial flags.
    pub flags: Flags,
}

/// Result of storing one message in one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendOutcome {
    /// The mailbox's UIDVALIDITY.
    pub uid_validity: u32,
    /// The UID given to the message.
    pub uid: Uid,
    /// The MODSEQ of the append.
    pub modseq: ModSeq,
}

/// How a flag update combines with the existing flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlagOp {
    /// Replace the flags.
    Set,
    /// Add flags.
    Add,
    /// Remove flags.
    Remove,
}

/// Result of a flag update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagUpdate {
    /// Messages whose flags are now as listed, with their new MODSEQ.
    /// Messages whose flags did not change are listed too, with their
    /// unchanged MODSEQ.
    pub updated: Vec<(Uid, Flags, ModSeq)>,
    /// Messages not changed because their MODSEQ was above UNCHANGEDSINCE
    /// (RFC 7162 §3.1.3).
    pub modified: Vec<Uid>,
}

/// One change to a mailbox, as published on its change feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxChange {
    /// A message was added.
    Added {
        /// Its UID.
        uid: Uid,
        /// The MODSEQ of the change.
        modseq: ModSeq,
    },
    /// Flags changed.
    Flags {
        /// The message.
        uid: Uid,
        /// Its new flags.
        flags: Flags,
        /// The MODSEQ of the change.
        modseq: ModSeq,
    },
    /// Messages were expunged.
    Expunged {
        /// The UIDs removed.
        uids: Vec<Uid>,
        /// The MODSEQ of the change.
        modseq: ModSeq,
    },
    /// The mailbox was deleted or renamed away.
    Gone,
}

/// How much of each message [`MailStore::message_contents`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentPart {
    /// The whole message.
    Full,
    /// Only the header block, as [`header_len`] delimits it: enough for
    /// header-only work (IMAP `SEARCH SUBJECT`, `FETCH ENVELOPE`,
    /// `BODY[HEADER.FIELDS (...)]`) without copying the body.
    Header,
}

/// The length of a message's header block: up to and including the blank
/// line that ends it (CRLF or bare LF line ends), or all of `raw` when
/// there is no blank line. A message that starts with a blank line has an
/// empty header, and the blank line belongs to it.
///
/// This is the one definition of "the header" shared by the stores'
/// [`ContentPart::Header`] reads and the IMAP server's `BODY[HEADER]`, so
/// that a header-only read always holds everything those need.
pub fn header_len(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 2;
    }
    if raw.starts_with(b"\n") {
        return 1;
    }
    let mut i = 0;
    while let Some(p) = raw[i..].iter().position(|b| *b == b'\n') {
        let nl = i + p;
        let rest = &raw[nl + 1..];
        if rest.starts_with(b"\r\n") {
            return nl + 3;
        }
        if rest.starts_with(b"\n") {
            return nl + 2;
        }
        i = nl + 1;
    }
    raw.len()
}

/// A subscription to one mailbox's changes. Changes are published after
/// they are durable. A receiver that falls behind gets
/// `RecvError::Lagged` and must re-read the mailbox state.
pub type ChangeFeed = broadcast::Receiver<MailboxChange>;

/// The message store.
///
/// # Contract for implementors
///
/// * **Durability**: every method that changes state returns only after the
///   change is durably committed; a crash at any instant leaves either the
///   old or the new state.
/// * **UIDs** strictly increase within a mailbox and are never reused while
///   its UIDVALIDITY stays the same; **MODSEQ** values strictly increase per
///   mailbox with every change.
/// * **Quota**: [`MailStore::quota_usage`] always equals the sum of the sizes
///   and count of the messages stored for the account; appends and
///   deliveries that would exceed the account's quota fail with
///   [`StoreError::OverQuota`] and store nothing for that target.
/// * **Change feed**: every committed change is published on the mailbox's
///   feed after it is durable, in commit order.
/// * Accounts are identified by their lower-cased address
///   ([`Principal::account`](crate::Principal::account)); a store creates an
///   account's INBOX and special-use mailboxes on first use.
/// * **Expunge records** (optional, [`MailStore::expunged_since`]): an
///   expunged UID is remembered with the MODSEQ of its expunge, which is at
///   most HIGHESTMODSEQ; a remembered UID is never a live message's UID.
/// * Callers must not cache mailbox state across commands except through
///   the change feed.
#[async_trait]
pub trait MailStore: Send + Sync {
    /// All mailboxes of an account (creating the default set on first use).
    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>, StoreError>;

    /// One mailbox by name (INBOX case-insensitively), or `None`.
    async fn mailbox(&self, account: &str, name: &str) -> Result<Option<MailboxInfo>, StoreError>;

    /// Creates a mailbox (and missing parents).
    async fn create_mailbox(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxInfo, StoreError>;

    /// Renames a mailbox and its children. Renaming INBOX moves its messages
    /// to a new mailbox and leaves INBOX empty (RFC 9051 §6.3.6).
    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<(), StoreError>;

    /// Deletes a mailbox and its messages (children stay). INBOX cannot be deleted.
    async fn delete_mailbox(&self, account: &str, name: &str) -> Result<(), StoreError>;

    /// Sets or clears the subscription of a name (which need not exist).
    async fn set_subscribed(
        &self,
        account: &str,
        name: &str,
        subscribed: bool,
    ) -> Result<(), StoreError>;

    /// Stores a message in one mailbox (IMAP APPEND), checking quota.
    async fn append(
        &self,
        account: &str,
        mailbox: &str,
        message: Bytes,
        flags: Flags,
        internal_date: i64,
    ) -> Result<AppendOutcome, StoreError>;

    /// Delivers one message to many mailboxes: the content is stored once,
    /// one entry is added per target, all in one durable commit. Each
    /// target gets its own result (a target over quota fails alone).
    async fn deliver(
        &self,
        message: Bytes,
        internal_date: i64,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError>;

    /// Metadata of every message in a mailbox, in UID order.
    async fn messages(
        &self,
        account: &str,
        mailbox: MailboxId,
    ) -> Result<Vec<MessageMeta>, StoreError>;

    /// Metadata of the messages whose UID is above `after`, in UID order:
    /// what an IMAP session told of new messages (`MailboxChange::Added`)
    /// needs, without reading the whole mailbox again.
    ///
    /// The default body reads the whole mailbox with
    /// [`MailStore::messages`] and keeps the tail: correct, but a store
    /// should read only the range.
    async fn messages_after(
        &self,
        account: &str,
        mailbox: MailboxId,
        after: Uid,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let mut all = self.messages(account, mailbox).await?;
        all.retain(|m| m.uid > after);
        Ok(all)
    }

    /// The full content of one message, or `None` if it was expunged.
    async fn message_content(
        &self,
        account: &str,
        mailbox: MailboxId,
        uid: Uid,
    ) -> Result<Option<Bytes>, StoreError>;

    /// The content of several messages of one mailbox at once, one entry
    /// per requested UID in the order given (duplicates included): `None`
    /// for a UID that is not (or no longer) in the mailbox. With
    /// [`ContentPart::Header`] each entry holds only the header block
    /// ([`header_len`]).
    ///
    /// Callers bound the batch (number of UIDs and their total size); a
    /// store should read the batch from one consistent snapshot and
    /// without a task switch per message. Errors are those of
    /// [`MailStore::message_content`].
    ///
    /// The default body calls [`MailStore::message_content`] per UID:
    /// correct, but slower for IMAP SEARCH and FETCH over many messages.
    async fn message_contents(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
        part: ContentPart,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let mut out = Vec::with_capacity(uids.len());
        for &uid in uids {
            let content = self.message_content(account, mailbox, uid).await?;
            out.push(content.map(|c| match part {
                ContentPart::Full => c,
                ContentPart::Header => c.slice(..header_len(&c)),
            }));
        }
        Ok(out)
    }

    /// Changes flags of the given messages. `unchanged_since` applies the
    /// CONDSTORE rule: messages with a higher MODSEQ are not changed.
    async fn update_flags(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<ModSeq>,
    ) -> Result<FlagUpdate, StoreError>;

    /// Removes the messages flagged `\Deleted`, restricted to `uids` when
    /// given (UID EXPUNGE). Returns the UIDs removed, ascending.
    async fn expunge(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: Option<&[Uid]>,
    ) -> Result<Vec<Uid>, StoreError>;

    /// Removes exactly the given messages regardless of flags (POP3 QUIT,
    /// MOVE). Returns the UIDs removed, ascending.
    async fn remove(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> Result<Vec<Uid>, StoreError>;

    /// Copies messages to another mailbox of the same account, keeping flags
    /// and internal dates. Returns `(source uid, new uid)` pairs and the
    /// target's UIDVALIDITY.
    async fn copy(
        &self,
        account: &str,
        from: MailboxId,
        uids: &[Uid],
        to: &str,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError>;

    /// Moves messages (copy then remove, in one commit).
    async fn move_messages(
        &self,
        account: &str,
        from: MailboxId,
        uids: &[Uid],
        to: &str,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError>;

    /// What the account stores now.
    async fn quota_usage(&self, account: &str) -> Result<QuotaUsage, StoreError>;

    /// Subscribes to a mailbox's change feed.
    async fn watch(&self, account: &str, mailbox: MailboxId) -> Result<ChangeFeed, StoreError>;

    /// The UIDs expunged from a mailbox by changes whose MODSEQ is above
    /// `since`, ascending (IMAP QRESYNC, RFC 7162 §3.2.5 and §3.2.6).
    ///
    /// Returns `Ok(None)` when the store cannot answer exactly: it keeps
    /// no record of expunged UIDs, or no longer remembers (or never knew)
    /// every expunge above `since` — for example after pruning old records
    /// or for a mailbox that predates the records. Callers then fall back
    /// to a superset computed from the UIDs they know (RFC 7162 §3.2.5.2
    /// lets a server report UIDs that were already gone). A store must
    /// never return `Some` with a UID missing.
    ///
    /// The default body returns `Ok(None)`: correct, but IMAP clients that
    /// resynchronise with QRESYNC then receive more UIDs than needed.
    async fn expunged_since(
        &self,
        account: &str,
        mailbox: MailboxId,
        since: ModSeq,
    ) -> Result<Option<Vec<Uid>>, StoreError> {
        let _ = (account, mailbox, since);
        Ok(None)
    }
}
