//! The durable outbound queue: the `umail_core::QueueStore` implementation.

use async_trait::async_trait;
use bytes::Bytes;
use umail_core::{
    EnqueueOptions, Envelope, Priority, QueueEntry, QueueError, QueueId, QueueState, QueueStore,
};

use crate::Store;
use redb::TableDefinition;

use crate::db::{DbErr, QUEUE, QUEUE_CONTENT, QUEUE_DUE, QUEUE_DUE_HIGH, QUEUE_DUE_LOW, Tx};
use crate::writer::{Ctx, Fail};

/// Attempt-log lines kept per entry (the oldest are dropped).
pub const MAX_ATTEMPT_LOG: usize = 50;

/// Wakes queue runners waiting in `wait_for_work` when an entry becomes due.
/// Process-wide: several stores in one process only cause spurious wake-ups.
static QUEUE_WORK: std::sync::LazyLock<tokio::sync::Notify> =
    std::sync::LazyLock::new(tokio::sync::Notify::new);

fn is_due_now(entry: &QueueEntry, now: i64) -> bool {
    is_due_state(entry.state) && entry.next_attempt <= now
}

fn qerr(e: DbErr) -> QueueError {
    QueueError::Io(e.0)
}

fn is_due_state(state: QueueState) -> bool {
    matches!(state, QueueState::Active | QueueState::Deferred)
}

fn get_entry(tx: Tx<'_>, id: u64) -> Result<Option<QueueEntry>, DbErr> {
    tx.get_json(QUEUE, id)
}

/// The due index of a priority: `(next_attempt, id)` → 1.
pub(crate) fn due_index(p: Priority) -> TableDefinition<'static, (i64, u64), u8> {
    match p {
        Priority::High => QUEUE_DUE_HIGH,
        Priority::Normal => QUEUE_DUE,
        Priority::Low => QUEUE_DUE_LOW,
    }
}

fn put_entry(ctx: &mut Ctx<'_>, entry: &QueueEntry) -> Result<(), DbErr> {
    ctx.put_json(QUEUE, entry.id.0, entry)?;
    if is_due_state(entry.state) {
        ctx.put(
            due_index(entry.priority),
            (entry.next_attempt, entry.id.0),
            1u8,
        )?;
    }
    Ok(())
}

fn unindex(ctx: &mut Ctx<'_>, entry: &QueueEntry) -> Result<(), DbErr> {
    ctx.del(due_index(entry.priority), (entry.next_attempt, entry.id.0))?;
    Ok(())
}

impl Store {
    fn queue_read<T>(&self, f: impl FnOnce(Tx<'_>) -> Result<T, DbErr>) -> Result<T, QueueError> {
        let tx = self.read().map_err(qerr)?;
        f(Tx::Read(&tx)).map_err(qerr)
    }
}

#[async_trait]
impl QueueStore for Store {
    async fn enqueue_with(
        &self,
        envelope: Envelope,
        message: Bytes,
        now: i64,
        options: &EnqueueOptions,
    ) -> Result<QueueId, QueueError> {
        let options = options.clone();
        self.write(qerr, move |ctx| {
            let id = ctx.next_counter("queue_id")?;
            let entry = QueueEntry::new(
                QueueId(id),
                envelope.clone(),
                message.len() as u64,
                now,
                &options,
            );
            ctx.put(QUEUE_CONTENT, id, message.as_ref())?;
            put_entry(ctx, &entry)?;
            tracing::debug!(target: "queue", id = %entry.id, "queued");
            Ok::<_, Fail<QueueError>>(entry.id)
        })
        .await
        .inspect(|_| QUEUE_WORK.notify_waiters())
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<QueueEntry>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.queue_read(|tx| {
            // Highest priority first; each index is in next-attempt order,
            // so no more keys are read than are returned.
            let mut ids = Vec::new();
            for p in [Priority::High, Priority::Normal, Priority::Low] {
                if ids.len() == limit {
                    break;
                }
                tx.scan(due_index(p), ..=(now, u64::MAX), |(_, id), _| {
                    ids.push(id);
                    Ok(ids.len() < limit)
                })?;
            }
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(e) = get_entry(tx, id)?
                    && is_due_state(e.state)
                {
                    out.push(e);
                }
            }
            Ok(out)
        })
    }

    async fn get(&self, id: QueueId) -> Result<Option<QueueEntry>, QueueError> {
        self.queue_read(|tx| get_entry(tx, id.0))
    }

    async fn content(&self, id: QueueId) -> Result<Option<Bytes>, QueueError> {
        self.read_blocking(move |tx| {
            tx.get_with(QUEUE_CONTENT, id.0, |v| Ok(Bytes::copy_from_slice(v)))
        })
        .await
        .map_err(qerr)
    }

    async fn update(&self, entry: &QueueEntry) -> Result<(), QueueError> {
        let mut entry = entry.clone();
        if entry.log.len() > MAX_ATTEMPT_LOG {
            let excess = entry.log.len() - MAX_ATTEMPT_LOG;
            entry.log.drain(..excess);
        }
        let now = umail_core::unix_now();
        let newly_due = self
            .write(qerr, move |ctx| {
                let Some(old) = get_entry(ctx.r(), entry.id.0)? else {
                    return Err(Fail::Reject(QueueError::NotFound(entry.id)));
                };
                unindex(ctx, &old)?;
                put_entry(ctx, &entry)?;
                Ok(is_due_now(&entry, now) && !is_due_now(&old, now))
            })
            .await?;
        if newly_due {
            // A flush or release: wake the runner.
            QUEUE_WORK.notify_waiters();
        }
        Ok(())
    }

    async fn remove(&self, id: QueueId) -> Result<(), QueueError> {
        self.write(qerr, move |ctx| {
            let Some(old) = get_entry(ctx.r(), id.0)? else {
                return Err(Fail::Reject(QueueError::NotFound(id)));
            };
            unindex(ctx, &old)?;
            ctx.del(QUEUE, id.0)?;
            ctx.del(QUEUE_CONTENT, id.0)?;
            Ok(())
        })
        .await
    }

    async fn wait_for_work(&self, max: std::time::Duration) {
        let _ = tokio::time::timeout(max, QUEUE_WORK.notified()).await;
    }

    async fn list(&self, state: Option<QueueState>) -> Result<Vec<QueueEntry>, QueueError> {
        self.queue_read(|tx| {
            let mut out = Vec::new();
            tx.scan_all(QUEUE, |_, v| {
                let e: QueueEntry = crate::db::dec(v)?;
                if state.is_none_or(|s| s == e.state) {
                    out.push(e);
                }
                Ok(true)
            })?;
            Ok(out)
        })
    }
}
