//! The command syntax tree produced by [`parse_command`](super::parse_command).

/// One parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The client's tag (RFC 9051 §2.2.1).
    pub tag: String,
    /// What the command asks for.
    pub body: CommandBody,
}

/// A message number or `*` (RFC 9051 §9 `seq-number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqNum {
    /// A number (sequence number or UID).
    Value(u32),
    /// `*`: the largest number in use.
    Star,
}

impl SeqNum {
    fn resolve(self, largest: u32) -> u32 {
        match self {
            SeqNum::Value(v) => v,
            SeqNum::Star => largest,
        }
    }
}

/// A range `a:b` (or a single number when both ends are equal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqRange {
    /// One end.
    pub start: SeqNum,
    /// The other end (order does not matter, RFC 9051 §9 `seq-range`).
    pub end: SeqNum,
}

/// A sequence set (RFC 9051 §9 `sequence-set`), or `$` for the saved
/// search result (RFC 5182 / RFC 9051 §6.4.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SequenceSet {
    /// Explicit ranges.
    Ranges(Vec<SeqRange>),
    /// `$`: the result saved by `SEARCH RETURN (SAVE)`.
    Saved,
}

impl SequenceSet {
    /// True when `n` is in the set, with `*` meaning `largest`.
    /// `Saved` never matches here: callers substitute the saved set first.
    pub fn contains(&self, n: u32, largest: u32) -> bool {
        match self {
            SequenceSet::Saved => false,
            SequenceSet::Ranges(ranges) => ranges.iter().any(|r| {
                let a = r.start.resolve(largest);
                let b = r.end.resolve(largest);
                let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
                lo <= n && n <= hi
            }),
        }
    }

    /// A set of explicit numbers, compressed into ranges.
    pub fn from_numbers(numbers: &[u32]) -> SequenceSet {
        let mut sorted: Vec<u32> = numbers.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut ranges: Vec<SeqRange> = Vec::new();
        for n in sorted {
            if let Some(last) = ranges.last_mut()
                && let SeqNum::Value(e) = last.end
                && e.checked_add(1) == Some(n)
            {
                last.end = SeqNum::Value(n);
                continue;
            }
            ranges.push(SeqRange {
                start: SeqNum::Value(n),
                end: SeqNum::Value(n),
            });
        }
        SequenceSet::Ranges(ranges)
    }
}

/// `section-msgtext` / `section-text` (RFC 9051 §6.4.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    /// `HEADER`
    Header,
    /// `HEADER.FIELDS (...)`, names as the client spelled them.
    HeaderFields(Vec<String>),
    /// `HEADER.FIELDS.NOT (...)`
    HeaderFieldsNot(Vec<String>),
    /// `TEXT`
    Text,
    /// `MIME` (only after a part number)
    Mime,
}

/// A body section specifier `[1.2.HEADER]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Section {
    /// Part numbers; empty for the whole message.
    pub part: Vec<u32>,
    /// What of the part.
    pub text: Option<SectionText>,
}

/// A partial range `<origin.length>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partial {
    /// First octet, zero-based.
    pub origin: u32,
    /// Number of octets.
    pub length: u32,
}

/// One FETCH data item (RFC 9051 §6.4.5, RFC 3516, RFC 7162).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAttr {
    /// `ENVELOPE`
    Envelope,
    /// `FLAGS`
    Flags,
    /// `INTERNALDATE`
    InternalDate,
    /// `RFC822` (same as `BODY[]`)
    Rfc822,
    /// `RFC822.HEADER` (same as `BODY.PEEK[HEADER]`)
    Rfc822Header,
    /// `RFC822.SIZE`
    Rfc822Size,
    /// `RFC822.TEXT` (same as `BODY[TEXT]`)
    Rfc822Text,
    /// `BODY` (structure without extension data)
    Body,
    /// `BODYSTRUCTURE`
    BodyStructure,
    /// `UID`
    Uid,
    /// `BODY[section]<partial>` or `BODY.PEEK[...]`
    BodySection {
        /// `.PEEK`: do not set `\Seen`.
        peek: bool,
        /// The section.
        section: Section,
        /// The partial range.
        partial: Option<Partial>,
    },
    /// `BINARY[part]<partial>` or `BINARY.PEEK[...]` (RFC 3516)
    Binary {
        /// `.PEEK`
        peek: bool,
        /// Part numbers.
        part: Vec<u32>,
        /// The partial range.
        partial: Option<Partial>,
    },
    /// `BINARY.SIZE[part]`
    BinarySize {
        /// Part numbers.
        part: Vec<u32>,
    },
    /// `MODSEQ` (RFC 7162 §3.1.4.1)
    ModSeq,
}

/// A SEARCH key (RFC 9051 §6.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    /// `ALL`
    All,
    /// `ANSWERED`
    Answered,
    /// `BCC string`
    Bcc(Vec<u8>),
    /// `BEFORE date` (internal date)
    Before(chrono::NaiveDate),
    /// `BODY string`
    Body(Vec<u8>),
    /// `CC string`
    Cc(Vec<u8>),
    /// `DELETED`
    Deleted,
    /// `DRAFT`
    Draft,
    /// `FLAGGED`
    Flagged,
    /// `FROM string`
    From(Vec<u8>),
    /// `HEADER field string`
    Header(String, Vec<u8>),
    /// `KEYWORD flag`
    Keyword(String),
    /// `LARGER n`
    Larger(u64),
    /// `NEW` (rev1: recent and unseen; never recent here)
    New,
    /// `NOT key`
    Not(Box<SearchKey>),
    /// `OLD`
    Old,
    /// `ON date`
    On(chrono::NaiveDate),
    /// `OR key key`
    Or(Box<SearchKey>, Box<SearchKey>),
    /// `RECENT`
    Recent,
    /// `SEEN`
    Seen,
    /// `SENTBEFORE date`
    SentBefore(chrono::NaiveDate),
    /// `SENTON date`
    SentOn(chrono::NaiveDate),
    /// `SENTSINCE date`
    SentSince(chrono::NaiveDate),
    /// `SINCE date`
    Since(chrono::NaiveDate),
    /// `SMALLER n`
    Smaller(u64),
    /// `SUBJECT string`
    Subject(Vec<u8>),
    /// `TEXT string`
    Text(Vec<u8>),
    /// `TO string`
    To(Vec<u8>),
    /// `UID set`
    Uid(SequenceSet),
    /// `UNANSWERED`
    Unanswered,
    /// `UNDELETED`
    Undeleted,
    /// `UNDRAFT`
    Undraft,
    /// `UNFLAGGED`
    Unflagged,
    /// `UNKEYWORD flag`
    Unkeyword(String),
    /// `UNSEEN`
    Unseen,
    /// A sequence set of message numbers.
    SequenceSet(SequenceSet),
    /// A parenthesised list, or the implicit AND of the top level.
    And(Vec<SearchKey>),
    /// `MODSEQ [entry type] n` (RFC 7162 §3.1.5)
    ModSeq(u64),
}

/// ESEARCH return options (RFC 4731, RFC 9051 §6.4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchReturn {
    /// `MIN`
    Min,
    /// `MAX`
    Max,
    /// `ALL`
    All,
    /// `COUNT`
    Count,
    /// `SAVE` (RFC 5182)
    Save,
}

/// A SORT key (RFC 5256 §3, RFC 5957 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// `ARRIVAL`: the internal date.
    Arrival,
    /// `CC`: addr-mailbox of the first Cc address.
    Cc,
    /// `DATE`: the sent date (Date header, else the internal date).
    Date,
    /// `FROM`: addr-mailbox of the first From address.
    From,
    /// `SIZE`: RFC822.SIZE.
    Size,
    /// `SUBJECT`: the base subject (RFC 5256 §2.1).
    Subject,
    /// `TO`: addr-mailbox of the first To address.
    To,
    /// `DISPLAYFROM`: display name of the first From address, else its
    /// addr-spec (RFC 5957).
    DisplayFrom,
    /// `DISPLAYTO`: the same for the first To address (RFC 5957).
    DisplayTo,
}

/// One `sort-criterion`: an optional `REVERSE` and a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortCriterion {
    /// `REVERSE` applies to this key only.
    pub reverse: bool,
    /// The key.
    pub key: SortKey,
}

/// A THREAD algorithm (RFC 5256 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadAlgorithm {
    /// `ORDEREDSUBJECT`: groups by base subject, flat under the oldest.
    OrderedSubject,
    /// `REFERENCES`: parent/child links from Message-ID, References and
    /// In-Reply-To, then merged by base subject.
    References,
}

/// STATUS data items (RFC 9051 §6.3.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    /// `MESSAGES`
    Messages,
    /// `UIDNEXT`
    UidNext,
    /// `UIDVALIDITY`
    UidValidity,
    /// `UNSEEN`
    Unseen,
    /// `DELETED`
    Deleted,
    /// `SIZE` (STATUS=SIZE)
    Size,
    /// `RECENT` (rev1 only; always 0)
    Recent,
    /// `HIGHESTMODSEQ` (RFC 7162)
    HighestModSeq,
}

/// LIST selection options (RFC 5258 §3.1, RFC 6154).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListSelect {
    /// `SUBSCRIBED`
    Subscribed,
    /// `REMOTE`
    Remote,
    /// `RECURSIVEMATCH`
    RecursiveMatch,
    /// `SPECIAL-USE`
    SpecialUse,
}

/// LIST return options (RFC 5258 §3.2, RFC 5819, RFC 6154).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListReturn {
    /// `SUBSCRIBED`
    Subscribed,
    /// `CHILDREN`
    Children,
    /// `SPECIAL-USE`
    SpecialUse,
    /// `STATUS (items)`
    Status(Vec<StatusItem>),
}

/// How STORE combines flags (RFC 9051 §6.4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// `FLAGS`
    Replace,
    /// `+FLAGS`
    Add,
    /// `-FLAGS`
    Remove,
}

/// Parameters of SELECT/EXAMINE (RFC 7162 §3.1.8, §3.2.5).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SelectParams {
    /// `(CONDSTORE)`
    pub condstore: bool,
    /// `(QRESYNC (uidvalidity modseq [known-uids [seq-match-data]]))`
    pub qresync: Option<QresyncParams>,
}

/// The QRESYNC select parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QresyncParams {
    /// The UIDVALIDITY the client knows.
    pub uid_validity: u32,
    /// The last MODSEQ the client knows.
    pub modseq: u64,
    /// UIDs the client knows, if it said.
    pub known_uids: Option<SequenceSet>,
    /// `seq-match-data`: message sequence numbers the client knows and the
    /// UIDs it has for them, in the same order (RFC 7162 §3.2.5.2).
    pub seq_match: Option<(SequenceSet, SequenceSet)>,
}

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandBody {
    /// `CAPABILITY`
    Capability,
    /// `NOOP`
    Noop,
    /// `LOGOUT`
    Logout,
    /// `STARTTLS`
    StartTls,
    /// `AUTHENTICATE mechanism [initial-response]`
    Authenticate {
        /// Mechanism name, upper-cased.
        mechanism: String,
        /// Initial response (SASL-IR), base64-decoded; `Some(empty)` for `=`.
        initial: Option<Vec<u8>>,
    },
    /// `LOGIN user password`
    Login {
        /// User name.
        username: Vec<u8>,
        /// Password.
        password: Vec<u8>,
    },
    /// `ENABLE cap...`
    Enable(Vec<String>),
    /// `ID (...)` or `ID NIL`
    Id(Option<Vec<(String, Option<String>)>>),
    /// `SELECT` / `EXAMINE`
    Select {
        /// Mailbox name as sent.
        mailbox: Vec<u8>,
        /// True for EXAMINE.
        read_only: bool,
        /// Select parameters.
        params: SelectParams,
    },
    /// `CREATE mailbox`
    Create(Vec<u8>),
    /// `DELETE mailbox`
    Delete(Vec<u8>),
    /// `RENAME from to`
    Rename(Vec<u8>, Vec<u8>),
    /// `SUBSCRIBE mailbox`
    Subscribe(Vec<u8>),
    /// `UNSUBSCRIBE mailbox`
    Unsubscribe(Vec<u8>),
    /// `LIST`, with LIST-EXTENDED options.
    List {
        /// Selection options.
        select: Vec<ListSelect>,
        /// Reference name.
        reference: Vec<u8>,
        /// One or more patterns.
        patterns: Vec<Vec<u8>>,
        /// Return options.
        returns: Vec<ListReturn>,
    },
    /// `LSUB reference pattern`
    Lsub {
        /// Reference name.
        reference: Vec<u8>,
        /// Pattern.
        pattern: Vec<u8>,
    },
    /// `NAMESPACE`
    Namespace,
    /// `STATUS mailbox (items)`
    Status {
        /// Mailbox.
        mailbox: Vec<u8>,
        /// Items.
        items: Vec<StatusItem>,
    },
    /// `APPEND mailbox [flags] [date-time] literal`
    Append {
        /// Mailbox.
        mailbox: Vec<u8>,
        /// Flags given.
        flags: Vec<String>,
        /// Internal date given, as Unix seconds.
        date: Option<i64>,
        /// The message.
        message: Vec<u8>,
    },
    /// `IDLE`
    Idle,
    /// `CHECK`
    Check,
    /// `CLOSE`
    Close,
    /// `UNSELECT`
    Unselect,
    /// `EXPUNGE`
    Expunge,
    /// `UID EXPUNGE set`
    UidExpunge(SequenceSet),
    /// `[UID] SEARCH`
    Search {
        /// UID SEARCH.
        uid: bool,
        /// `RETURN (...)`; `None` when absent (plain SEARCH in rev1).
        returns: Option<Vec<SearchReturn>>,
        /// `CHARSET name`
        charset: Option<String>,
        /// The criteria (an implicit AND).
        criteria: SearchKey,
    },
    /// `[UID] SORT` (RFC 5256), with ESORT return options (RFC 5267).
    Sort {
        /// UID SORT.
        uid: bool,
        /// `RETURN (...)` (ESORT); `None` when absent.
        returns: Option<Vec<SearchReturn>>,
        /// The sort criteria, most significant first.
        sort: Vec<SortCriterion>,
        /// The charset (mandatory in SORT), upper-cased.
        charset: String,
        /// The search criteria (an implicit AND).
        criteria: SearchKey,
    },
    /// `[UID] THREAD` (RFC 5256).
    Thread {
        /// UID THREAD.
        uid: bool,
        /// The threading algorithm.
        algorithm: ThreadAlgorithm,
        /// The charset (mandatory in THREAD), upper-cased.
        charset: String,
        /// The search criteria (an implicit AND).
        criteria: SearchKey,
    },
    /// `[UID] FETCH`
    Fetch {
        /// UID FETCH.
        uid: bool,
        /// Messages.
        set: SequenceSet,
        /// Items.
        attrs: Vec<FetchAttr>,
        /// `(CHANGEDSINCE n)`
        changed_since: Option<u64>,
        /// `(VANISHED)` (QRESYNC)
        vanished: bool,
    },
    /// `[UID] STORE`
    Store {
        /// UID STORE.
        uid: bool,
        /// Messages.
        set: SequenceSet,
        /// `(UNCHANGEDSINCE n)`
        unchanged_since: Option<u64>,
        /// How to combine.
        mode: StoreMode,
        /// `.SILENT`
        silent: bool,
        /// Flags.
        flags: Vec<String>,
    },
    /// `[UID] COPY`
    Copy {
        /// UID COPY.
        uid: bool,
        /// Messages.
        set: SequenceSet,
        /// Target mailbox.
        mailbox: Vec<u8>,
    },
    /// `[UID] MOVE`
    Move {
        /// UID MOVE.
        uid: bool,
        /// Messages.
        set: SequenceSet,
        /// Target mailbox.
        mailbox: Vec<u8>,
    },
    /// `GETQUOTA root`
    GetQuota(Vec<u8>),
    /// `GETQUOTAROOT mailbox`
    GetQuotaRoot(Vec<u8>),
    /// `SETQUOTA ...` (always refused)
    SetQuota,
}

impl CommandBody {
    /// The command name, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            CommandBody::Capability => "CAPABILITY",
            CommandBody::Noop => "NOOP",
            CommandBody::Logout => "LOGOUT",
            CommandBody::StartTls => "STARTTLS",
            CommandBody::Authenticate { .. } => "AUTHENTICATE",
            CommandBody::Login { .. } => "LOGIN",
            CommandBody::Enable(_) => "ENABLE",
            CommandBody::Id(_) => "ID",
            CommandBody::Select {
                read_only: false, ..
            } => "SELECT",
            CommandBody::Select {
                read_only: true, ..
            } => "EXAMINE",
            CommandBody::Create(_) => "CREATE",
            CommandBody::Delete(_) => "DELETE",
            CommandBody::Rename(..) => "RENAME",
            CommandBody::Subscribe(_) => "SUBSCRIBE",
            CommandBody::Unsubscribe(_) => "UNSUBSCRIBE",
            CommandBody::List { .. } => "LIST",
            CommandBody::Lsub { .. } => "LSUB",
            CommandBody::Namespace => "NAMESPACE",
            CommandBody::Status { .. } => "STATUS",
            CommandBody::Append { .. } => "APPEND",
            CommandBody::Idle => "IDLE",
            CommandBody::Check => "CHECK",
            CommandBody::Close => "CLOSE",
            CommandBody::Unselect => "UNSELECT",
            CommandBody::Expunge => "EXPUNGE",
            CommandBody::UidExpunge(_) => "UID EXPUNGE",
            CommandBody::Search { .. } => "SEARCH",
            CommandBody::Sort { .. } => "SORT",
            CommandBody::Thread { .. } => "THREAD",
            CommandBody::Fetch { .. } => "FETCH",
            CommandBody::Store { .. } => "STORE",
            CommandBody::Copy { .. } => "COPY",
            CommandBody::Move { .. } => "MOVE",
            CommandBody::GetQuota(_) => "GETQUOTA",
            CommandBody::GetQuotaRoot(_) => "GETQUOTAROOT",
            CommandBody::SetQuota => "SETQUOTA",
        }
    }
}
