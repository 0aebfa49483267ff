//! The single writer: group commit of concurrent operations.
//!
//! Callers package an operation as a closure over a [`Ctx`] and send it to
//! the writer thread. The thread takes the first pending operation, drains
//! every other pending one (up to [`MAX_BATCH`]), runs them in order in ONE
//! redb write transaction with `Durability::Immediate`, commits once, then
//! publishes change-feed events and answers each caller. An operation that
//! fails validation returns before writing anything and so does not affect
//! the batch. An operation that fails after writing (a storage error, or a
//! bug) makes the writer abort the transaction and run every operation of
//! the batch again, each in its own transaction, so only that operation
//! fails.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use redb::{Database, Durability, Key, TableDefinition, Value, WriteTransaction};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};
use umail_core::{MailboxChange, MailboxId};

use crate::db::{DbErr, META, Tx, enc};

/// Most operations committed in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Capacity of each mailbox change feed.
const FEED_CAPACITY: usize = 1024;

/// Why an operation did not succeed.
pub(crate) enum Fail<E> {
    /// Refused (validation); nothing was written by this operation.
    Reject(E),
    /// The storage failed.
    Db(DbErr),
}

impl<E> From<DbErr> for Fail<E> {
    fn from(e: DbErr) -> Self {
        Fail::Db(e)
    }
}

/// One change-feed event to publish after commit.
pub(crate) type Effect = (String, MailboxId, MailboxChange);

/// What an operation sees: the write transaction, plus bookkeeping.
pub(crate) struct Ctx<'a> {
    tx: &'a WriteTransaction,
    dirty: bool,
    effects: Vec<Effect>,
}

impl<'a> Ctx<'a> {
    fn new(tx: &'a WriteTransaction) -> Self {
        Ctx {
            tx,
            dirty: false,
            effects: Vec::new(),
        }
    }

    /// Reads through the write transaction.
    pub(crate) fn r(&self) -> Tx<'a> {
        Tx::Write(self.tx)
    }

    /// Records a change-feed event, published only if the batch commits.
    pub(crate) fn publish(&mut self, account: &str, mailbox: MailboxId, change: MailboxChange) {
        self.effects.push((account.to_string(), mailbox, change));
    }

    /// Inserts or replaces a value.
    pub(crate) fn put<'k, 'v, K, V>(
        &mut self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
        value: impl Borrow<V::SelfType<'v>>,
    ) -> Result<(), DbErr>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        self.dirty = true;
        let mut t = self.tx.open_table(def)?;
        t.insert(key, value)?;
        Ok(())
    }

    /// Inserts or replaces a JSON record.
    pub(crate) fn put_json<'k, K, T>(
        &mut self,
        def: TableDefinition<'static, K, &'static [u8]>,
        key: impl Borrow<K::SelfType<'k>>,
        value: &T,
    ) -> Result<(), DbErr>
    where
        K: Key + 'static,
        T: Serialize,
    {
        let bytes = enc(value)?;
        self.put(def, key, bytes.as_slice())
    }

    /// Removes a key; true when it existed.
    pub(crate) fn del<'k, K, V>(
        &mut self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<bool, DbErr>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        self.dirty = true;
        let mut t = self.tx.open_table(def)?;
        let existed = t.remove(key)?.is_some();
        Ok(existed)
    }

    /// Increments a named counter and returns the new value.
    pub(crate) fn next_counter(&mut self, name: &str) -> Result<u64, DbErr> {
        let next = self.r().meta(name)?.saturating_add(1);
        self.put(META, name, next)?;
        Ok(next)
    }

    /// Sets a named counter.
    pub(crate) fn set_counter(&mut self, name: &str, value: u64) -> Result<(), DbErr> {
        self.put(META, name, value)
    }
}

/// Outcome of running one job inside a batch.
pub(crate) enum Run {
    /// Ran (succeeded, or was refused without writing).
    Done,
    /// The transaction must be aborted.
    Abort,
}

/// A type-erased operation.
pub(crate) trait Job: Send {
    fn run(&mut self, tx: &WriteTransaction) -> Run;
    fn finish(self: Box<Self>, committed: Result<(), DbErr>, feeds: &Feeds);
}

struct TypedJob<T, E, F> {
    f: F,
    state: Option<Result<(T, Vec<Effect>), E>>,
    reply: oneshot::Sender<Result<T, E>>,
    to_err: fn(DbErr) -> E,
}

impl<T, E, F> Job for TypedJob<T, E, F>
where
    T: Send,
    E: Send,
    F: FnMut(&mut Ctx<'_>) -> Result<T, Fail<E>> + Send,
{
    fn run(&mut self, tx: &WriteTransaction) -> Run {
        let mut ctx = Ctx::new(tx);
        let result = catch_unwind(AssertUnwindSafe(|| (self.f)(&mut ctx)));
        match result {
            Ok(Ok(value)) => {
                self.state = Some(Ok((value, std::mem::take(&mut ctx.effects))));
                Run::Done
            }
            Ok(Err(Fail::Reject(e))) => {
                let dirty = ctx.dirty;
                self.state = Some(Err(e));
                if dirty { Run::Abort } else { Run::Done }
            }
            Ok(Err(Fail::Db(e))) => {
                tracing::warn!(target: "store", error = %e, "storage operation failed");
                self.state = Some(Err((self.to_err)(e)));
                Run::Abort
            }
            Err(_) => {
                tracing::error!(target: "store", "storage operation panicked");
                self.state = Some(Err((self.to_err)(DbErr(
                    "internal error in storage operation".into(),
                ))));
                Run::Abort
            }
        }
    }

    fn finish(self: Box<Self>, committed: Result<(), DbErr>, feeds: &Feeds) {
        let this = *self;
        let result = match (this.state, committed) {
            (Some(Ok((value, effects))), Ok(())) => {
                feeds.publish(effects);
                Ok(value)
            }
            (Some(Err(e)), _) => Err(e),
            (_, Err(e)) => Err((this.to_err)(e)),
            (None, Ok(())) => Err((this.to_err)(DbErr("operation was not run".into()))),
        };
        // The caller may have gone away; the change is committed regardless.
        let _ = this.reply.send(result);
    }
}

/// Builds a job and the receiver for its answer.
pub(crate) fn job<T, E, F>(
    to_err: fn(DbErr) -> E,
    f: F,
) -> (Box<dyn Job>, oneshot::Receiver<Result<T, E>>)
where
    T: Send + 'static,
    E: Send + 'static,
    F: FnMut(&mut Ctx<'_>) -> Result<T, Fail<E>> + Send + 'static,
{
    let (reply, rx) = oneshot::channel();
    (
        Box::new(TypedJob {
            f,
            state: None,
            reply,
            to_err,
        }),
        rx,
    )
}

/// The per-mailbox change feeds.
#[derive(Default)]
pub(crate) struct Feeds {
    senders: Mutex<HashMap<(String, MailboxId), broadcast::Sender<MailboxChange>>>,
}

impl Feeds {
    /// Subscribes to a mailbox.
    pub(crate) fn subscribe(
        &self,
        account: &str,
        mailbox: MailboxId,
    ) -> broadcast::Receiver<MailboxChange> {
        let mut map = self
            .senders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.entry((account.to_string(), mailbox))
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    fn publish(&self, effects: Vec<Effect>) {
        if effects.is_empty() {
            return;
        }
        let mut map = self
            .senders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (account, mailbox, change) in effects {
            let key = (account, mailbox);
            let gone = matches!(change, MailboxChange::Gone);
            if let Some(sender) = map.get(&key)
                && (sender.send(change).is_err() || gone)
            {
                // No receivers left, or the mailbox is gone: drop the feed.
                map.remove(&key);
            }
        }
    }
}

/// Runs the writer loop until every sender is dropped.
pub(crate) fn writer_loop(db: Arc<Database>, rx: mpsc::Receiver<Box<dyn Job>>, feeds: Arc<Feeds>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(&db, batch, &feeds);
    }
}

fn run_batch(db: &Database, mut batch: Vec<Box<dyn Job>>, feeds: &Feeds) {
    match try_batch(db, &mut batch) {
        Ok(committed) => {
            for job in batch {
                job.finish(committed.clone(), feeds);
            }
        }
        Err(()) if batch.len() > 1 => {
            // Isolate the failing operation: every job again, alone.
            for job in batch {
                run_batch(db, vec![job], feeds);
            }
        }
        Err(()) => {
            for job in batch {
                job.finish(Err(DbErr("transaction aborted".into())), feeds);
            }
        }
    }
}

/// `Ok(commit result)` when every job ran (the commit itself may fail);
/// `Err(())` when a job needs the transaction aborted.
fn try_batch(db: &Database, batch: &mut [Box<dyn Job>]) -> Result<Result<(), DbErr>, ()> {
    let mut tx = match db.begin_write() {
        Ok(tx) => tx,
        Err(e) => return Ok(Err(e.into())),
    };
    if let Err(e) = tx.set_durability(Durability::Immediate) {
        return Ok(Err(e.into()));
    }
    for job in batch.iter_mut() {
        if let Run::Abort = job.run(&tx) {
            if let Err(e) = tx.abort() {
                tracing::warn!(target: "store", error = %e, "abort failed");
            }
            return Err(());
        }
    }
    Ok(tx.commit().map_err(DbErr::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Tx, create_tables};
    use redb::ReadableDatabase;

    fn memory_db() -> Database {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("in-memory database");
        let tx = db.begin_write().expect("write");
        create_tables(&tx).expect("tables");
        tx.commit().expect("commit");
        db
    }

    fn counter(db: &Database, name: &str) -> u64 {
        let tx = db.begin_read().expect("read");
        Tx::Read(&tx).meta(name).expect("meta")
    }

    fn set(
        name: &'static str,
        value: u64,
    ) -> impl FnMut(&mut Ctx<'_>) -> Result<u64, Fail<String>> + Send {
        move |ctx| {
            ctx.set_counter(name, value)?;
            Ok(value)
        }
    }

    fn to_string(e: DbErr) -> String {
        e.0
    }

    #[test]
    fn batch_commits_once_and_answers_everyone() {
        let db = memory_db();
        let feeds = Feeds::default();
        let (a, mut ra) = job(to_string, set("a", 1));
        let (b, mut rb) = job(to_string, set("b", 2));
        run_batch(&db, vec![a, b], &feeds);
        assert_eq!(ra.try_recv().expect("answer a"), Ok(1));
        assert_eq!(rb.try_recv().expect("answer b"), Ok(2));
        assert_eq!((counter(&db, "a"), counter(&db, "b")), (1, 2));
    }

    #[test]
    fn a_clean_rejection_leaves_the_batch_alone() {
        let db = memory_db();
        let feeds = Feeds::default();
        let (a, mut ra) = job(to_string, set("a", 1));
        let (bad, mut rbad) = job(
            to_string,
            |_ctx: &mut Ctx<'_>| -> Result<u64, Fail<String>> {
                Err(Fail::Reject("refused".into()))
            },
        );
        let (c, mut rc) = job(to_string, set("c", 3));
        run_batch(&db, vec![a, bad, c], &feeds);
        assert_eq!(ra.try_recv().expect("a"), Ok(1));
        assert_eq!(rbad.try_recv().expect("bad"), Err("refused".to_string()));
        assert_eq!(rc.try_recv().expect("c"), Ok(3));
        assert_eq!((counter(&db, "a"), counter(&db, "c")), (1, 3));
    }

    #[test]
    fn a_rejection_after_writing_is_isolated_and_rolled_back() {
        let db = memory_db();
        let feeds = Feeds::default();
        let (a, mut ra) = job(to_string, set("a", 1));
        let (bad, mut rbad) = job(
            to_string,
            |ctx: &mut Ctx<'_>| -> Result<u64, Fail<String>> {
                ctx.set_counter("half", 7)?;
                Err(Fail::Reject("refused late".into()))
            },
        );
        let (panics, mut rp) = job(
            to_string,
            |ctx: &mut Ctx<'_>| -> Result<u64, Fail<String>> {
                ctx.set_counter("boom", 9)?;
                panic!("bug in an operation");
            },
        );
        let (c, mut rc) = job(to_string, set("c", 3));
        run_batch(&db, vec![a, bad, panics, c], &feeds);
        assert_eq!(ra.try_recv().expect("a"), Ok(1));
        assert_eq!(
            rbad.try_recv().expect("bad"),
            Err("refused late".to_string())
        );
        assert!(rp.try_recv().expect("panicking job answered").is_err());
        assert_eq!(rc.try_recv().expect("c"), Ok(3));
        assert_eq!(counter(&db, "half"), 0, "the late rejection wrote nothing");
        assert_eq!(
            counter(&db, "boom"),
            0,
            "the panicking operation wrote nothing"
        );
        assert_eq!((counter(&db, "a"), counter(&db, "c")), (1, 3));
    }

    #[test]
    fn feed_events_are_published_only_after_commit() {
        let db = memory_db();
        let feeds = Feeds::default();
        let mut rx = feeds.subscribe("a@example.com", 1);
        let (ok, _r1) = job(to_string, |ctx: &mut Ctx<'_>| -> Result<(), Fail<String>> {
            ctx.set_counter("x", 1)?;
            ctx.publish(
                "a@example.com",
                1,
                MailboxChange::Added { uid: 1, modseq: 2 },
            );
            Ok(())
        });
        let (bad, _r2) = job(to_string, |ctx: &mut Ctx<'_>| -> Result<(), Fail<String>> {
            ctx.publish(
                "a@example.com",
                1,
                MailboxChange::Added { uid: 2, modseq: 3 },
            );
            Err(Fail::Reject("no".into()))
        });
        run_batch(&db, vec![ok, bad], &feeds);
        assert_eq!(
            rx.try_recv().expect("one event"),
            MailboxChange::Added { uid: 1, modseq: 2 }
        );
        assert!(
            rx.try_recv().is_err(),
            "the refused operation published nothing"
        );
    }
}
