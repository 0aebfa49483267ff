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
}

/// The durable outbound queue.
///
/// # Contract for implementors
///
/// * `enqueue` returns only after the entry and the message content are
///   durable; a crash afterwards never loses it, and a crash before leaves
///   nothing behind.
/// * `update` replaces the entry atomically; `remove` deletes entry and
///   content together.
/// * Entries in `Held` or `Failed` state are never returned by `due`.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Stores a new message for delivery and returns its id.
    async fn enqueue(
        &self,
        envelope: Envelope,
        message: Bytes,
        now: i64,
    ) -> Result<QueueId, QueueError>;

    /// Entries in `Active` or `Deferred` state whose next attempt is at or
    /// before `now`, oldest first, at most `limit`.
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
