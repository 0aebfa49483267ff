//! The `QueueStore` trait: the durable outbound queue.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::model::{Envelope, QueueId};

/// Errors a queue store reports.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// No entry with that id.
    #[error("no such queue entry: {0}")]
    NotFound(QueueId),
    /// The storage back end failed; nothing was committed.
    #[error("queue storage failure: {0}")]
    Io(String),
}

/// Which queue an entry is in, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueState {
    /// Waiting for its first or next attempt, due now or soon.
    Active,
    /// A previous attempt failed temporarily; waiting for the retry time.
    Deferred,
    /// Held by an operator or a filter (approval, quarantine); not attempted.
    Held,
    /// Given up; kept for the operator until deleted.
    Failed,
}

/// How urgently a queued message is sent. When more entries are due than
/// there are outbound connections, higher priorities leave first; within a
/// priority the entry waiting longest leaves first.
///
/// Ordered `Low < Normal < High`. Stored queues written before priorities
/// existed read as `Normal`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Bulk mail: list traffic, `Precedence: bulk`, mass mailings.
    Low,
    /// Everything else.
    #[default]
    Normal,
    /// Marked urgent by the sender or an operator.
    High,
}

impl Priority {
    /// The lower-case name used in the CLI, the admin API and the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Parses `low`, `normal` or `high` (any case).
    pub fn parse(s: &str) -> Option<Priority> {
        match s.to_ascii_lowercase().as_str() {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            _ => None,
        }
    }
}

impl std::fmt::Display for Priority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a new entry enters the queue: see [`QueueStore::enqueue_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EnqueueOptions {
    /// Scheduling priority.
    pub priority: Priority,
    /// `Some(reason)` stores the entry in the held queue (outbound approval,
    /// quarantine) in the same commit, with the reason as its first
    /// attempt-log line, so no crash can let it leave unapproved.
    pub hold: Option<String>,
    /// First attempt no earlier than this Unix time (scheduled sending);
    /// `None` or a past time: at once.
    pub not_before: Option<i64>,
}

impl EnqueueOptions {
    /// Default options with the given priority.
    pub fn with_priority(priority: Priority) -> EnqueueOptions {
        EnqueueOptions {
            priority,
            hold: None,
            not_before: None,
        }
    }

    /// Delays the first attempt until `at` (Unix time).
    pub fn not_before(mut self, at: i64) -> EnqueueOptions {
        self.not_before = Some(at);
        self
    }

    /// Sets the entry to be held, with the reason the operator will see.
    pub fn held(mut self, reason: impl Into<String>) -> EnqueueOptions {
        self.hold = Some(reason.into());
        self
    }
}

/// Delivery status of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecipientStatus {
    /// Not yet delivered; will be tried.
    Pending,
    /// Delivered; the remote reply is kept for DSNs.
    Delivered {
        /// The remote server's reply text.
        reply: String,
    },
    /// Failed temporarily; will be retried.
    Deferred {
        /// The last reply or error.
        reply: String,
    },
    /// Failed permanently.
    Failed {
        /// The reply or error.
        reply: String,
    },
}

/// One delivery attempt, for the operator's `queue show`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptLog {
    /// Unix time of the attempt.
    pub at: i64,
    /// Host tried, if any.
    pub host: Option<String>,
    /// What happened.
    pub result: String,
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueEntry {
    /// Identifier.
    pub id: QueueId,
    /// The envelope (recipients in the same order as `status`).
    pub envelope: Envelope,
    /// Per-recipient status, same order as `envelope.recipients`.
    pub status: Vec<RecipientStatus>,
    /// Which queue.
    pub state: QueueState,
    /// Unix time the message was queued.
    pub created: i64,
    /// Unix time of the next attempt.
    pub next_attempt: i64,
    /// Attempts made so far.
    pub attempts: u32,
    /// Message size in bytes.
    pub size: u64,
    /// Attempt history (bounded by the implementation).
    pub log: Vec<AttemptLog>,
    /// Scheduling priority.
    #[serde(default)]
    pub priority: Priority,
    /// Indexes of the recipients whose final DSN (failed, delivered or
    /// relayed) has been queued, so none is reported twice however long
    /// the attempt log grows.
    #[serde(default)]
    pub reported: Vec<usize>,
    /// Whether the "delayed" DSN has been queued.
    #[serde(default)]
    pub delay_reported: bool,
}

impl QueueEntry {
    /// The order in which due entries leave, as [`QueueStore::due`]
    /// returns them: highest priority first, then the earliest next
    /// attempt, then the oldest id.
    pub fn departure_order(&self) -> (std::cmp::Reverse<Priority>, i64, QueueId) {
        (std::cmp::Reverse(self.priority), self.next_attempt, self.id)
    }

    /// A new entry as `enqueue_with` stores it: every recipient pending,
    /// due at `now` (or `options.not_before`), active or (with
    /// `options.hold`) held.
    pub fn new(
        id: QueueId,
        envelope: Envelope,
        size: u64,
        now: i64,
        options: &EnqueueOptions,
    ) -> QueueEntry {
        let (state, log) = match &options.hold {
            Some(reason) => (
                QueueState::Held,
                vec![AttemptLog {
                    at: now,
                    host: None,
                    result: format!("held: {reason}"),
                }],
            ),
            None => (QueueState::Active, Vec::new()),
        };
        QueueEntry {
            id,
            status: vec![RecipientStatus::Pending; envelope.recipients.len()],
            envelope,
            state,
            created: now,
            next_attempt: options.not_before.map_or(now, |t| t.max(now)),
            attempts: 0,
            size,
            log,
            priority: options.priority,
            reported: Vec::new(),
            delay_reported: false,
        }
    }
}

/// The durable outbound queue.
///
/// # Contract for implementors
///
/// * `enqueue_with` returns only after the entry and the message content
///   are durable; a crash afterwards never loses it, and a crash before
///   leaves nothing behind. A held entry is held from its first commit.
/// * `update` replaces the entry atomically; `remove` deletes entry and
///   content together.
/// * Entries in `Held` or `Failed` state are never returned by `due`.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Stores a new message for delivery and returns its id. The entry is
    /// built by [`QueueEntry::new`].
    async fn enqueue_with(
        &self,
        envelope: Envelope,
        message: Bytes,
        now: i64,
        options: &EnqueueOptions,
    ) -> Result<QueueId, QueueError>;

    /// Stores a new message for immediate delivery at normal priority.
    async fn enqueue(
        &self,
        envelope: Envelope,
        message: Bytes,
        now: i64,
    ) -> Result<QueueId, QueueError> {
        self.enqueue_with(envelope, message, now, &EnqueueOptions::default())
            .await
    }

    /// Entries in `Active` or `Deferred` state whose next attempt is at or
    /// before `now`, at most `limit`: highest [`Priority`] first, and within
    /// a priority the earliest next attempt first.
    async fn due(&self, now: i64, limit: usize) -> Result<Vec<QueueEntry>, QueueError>;

    /// One entry.
    async fn get(&self, id: QueueId) -> Result<Option<QueueEntry>, QueueError>;

    /// The message content of an entry.
    async fn content(&self, id: QueueId) -> Result<Option<Bytes>, QueueError>;

    /// Replaces an entry's state (status, attempts, next attempt, log).
    async fn update(&self, entry: &QueueEntry) -> Result<(), QueueError>;

    /// Deletes an entry and its content.
    async fn remove(&self, id: QueueId) -> Result<(), QueueError>;

    /// All entries, optionally only those in one state.
    async fn list(&self, state: Option<QueueState>) -> Result<Vec<QueueEntry>, QueueError>;

    /// Waits until an entry may have become due (a new entry, a flush, a
    /// release), at most `max`. Queue runners call it between passes so new
    /// mail leaves at once. The default cannot tell and simply sleeps `max`.
    async fn wait_for_work(&self, max: std::time::Duration) {
        tokio::time::sleep(max).await;
    }
}
