//! Table definitions, record encodings and small typed helpers over redb
//! read and write transactions.
//!
//! Every value that is a structured record is stored as JSON bytes
//! (`&[u8]`); counters are `u64`; message content is raw bytes.

use std::borrow::Borrow;
use std::ops::RangeBounds;

use redb::{
    Key, ReadTransaction, ReadableTable, TableDefinition, TableHandle, Value, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// `domain` → [`crate::DomainInfo`] (JSON).
pub(crate) const DOMAINS: TableDefinition<&str, &[u8]> = TableDefinition::new("domains");
/// `alias domain` → `target domain`.
pub(crate) const DOMAIN_ALIASES: TableDefinition<&str, &str> =
    TableDefinition::new("domain_aliases");
/// `(domain, lower-cased local part)` → user record (JSON).
pub(crate) const USERS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("users");
/// `(domain, lower-cased local part)` → alias record (JSON).
pub(crate) const ALIASES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("aliases");
/// `(domain, lower-cased local part)` → list record (JSON).
pub(crate) const LISTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("lists");
/// `(domain, department path)` → department record (JSON).
pub(crate) const DEPARTMENTS: TableDefinition<(&str, &str), &[u8]> =
    TableDefinition::new("departments");
/// `account` → roles (JSON list of `AdminRole`).
pub(crate) const ADMINS: TableDefinition<&str, &[u8]> = TableDefinition::new("admins");

/// `account` → account record (JSON: mailbox id counter, quota usage).
pub(crate) const ACCOUNTS: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");
/// `(account, mailbox id)` → mailbox record (JSON).
pub(crate) const MAILBOXES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("mailboxes");
/// `(account, mailbox name)` → mailbox id.
pub(crate) const MAILBOX_NAMES: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("mailbox_names");
/// `(account, mailbox name)` → 1 for subscribed names.
pub(crate) const SUBSCRIPTIONS: TableDefinition<(&str, &str), u8> =
    TableDefinition::new("subscriptions");
/// `(account, mailbox id, uid)` → message record (JSON).
pub(crate) const MESSAGES: TableDefinition<(&str, u64, u32), &[u8]> =
    TableDefinition::new("messages");
/// `blob id` (blake3 hex) → content.
pub(crate) const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// `blob id` → number of message entries pointing to it.
pub(crate) const BLOB_REFS: TableDefinition<&str, u64> = TableDefinition::new("blob_refs");

/// `queue id` → queue entry (JSON).
pub(crate) const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
/// `queue id` → message content.
pub(crate) const QUEUE_CONTENT: TableDefinition<u64, &[u8]> = TableDefinition::new("queue_content");
/// `(next attempt, queue id)` → 1 for `Normal`-priority entries in
/// `Active` or `Deferred` state.
pub(crate) const QUEUE_DUE: TableDefinition<(i64, u64), u8> = TableDefinition::new("queue_due");
/// The same for `High`-priority entries: one index per priority, so that
/// `due` reads only as many keys as it returns, however large the backlog.
pub(crate) const QUEUE_DUE_HIGH: TableDefinition<(i64, u64), u8> =
    TableDefinition::new("queue_due_high");
/// The same for `Low`-priority entries.
pub(crate) const QUEUE_DUE_LOW: TableDefinition<(i64, u64), u8> =
    TableDefinition::new("queue_due_low");

/// `(account, remote account id)` → MultiPOP account (JSON).
pub(crate) const REMOTE_ACCOUNTS: TableDefinition<(&str, u64), &[u8]> =
    TableDefinition::new("remote_accounts");
/// `domain` → DomainPOP account (JSON).
pub(crate) const DOMAIN_POP: TableDefinition<&str, &[u8]> = TableDefinition::new("domain_pop");
/// `domain` or `*` (system-wide) → collection limits (JSON).
pub(crate) const COLLECT_LIMITS: TableDefinition<&str, &[u8]> =
    TableDefinition::new("collect_limits");
/// `(seen set, id)` → time the id was first recorded.
pub(crate) const COLLECT_SEEN: TableDefinition<(&str, &str), i64> =
    TableDefinition::new("collect_seen");
/// `(seen set, first recorded, id)` → 1: age order, to bound sets and to
/// find ids older than a cutoff.
pub(crate) const COLLECT_SEEN_AGE: TableDefinition<(&str, i64, &str), u8> =
    TableDefinition::new("collect_seen_age");
/// `seen set` → number of ids in it.
pub(crate) const COLLECT_SEEN_COUNT: TableDefinition<&str, u64> =
    TableDefinition::new("collect_seen_count");

/// Named counters: `uidvalidity`, `queue_id`, `remote_account_id`, `schema`.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// A storage-level failure (redb or encoding), as text.
#[derive(Debug, Clone)]
pub(crate) struct DbErr(pub String);

impl std::fmt::Display for DbErr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! db_err_from {
    ($($t:ty),*) => {$(
        impl From<$t> for DbErr {
            fn from(e: $t) -> DbErr {
                DbErr(e.to_string())
            }
        }
    )*};
}
db_err_from!(
    redb::Error,
    redb::TableError,
    redb::StorageError,
    redb::TransactionError,
    redb::CommitError,
    redb::SetDurabilityError,
    serde_json::Error
);

/// Encodes a record.
pub(crate) fn enc<T: Serialize>(value: &T) -> Result<Vec<u8>, DbErr> {
    Ok(serde_json::to_vec(value)?)
}

/// Decodes a record.
pub(crate) fn dec<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DbErr> {
    Ok(serde_json::from_slice(bytes)?)
}

/// A transaction to read from: a read transaction, or the writer's write
/// transaction (which sees its own uncommitted changes).
#[derive(Clone, Copy)]
pub(crate) enum Tx<'a> {
    /// A snapshot.
    Read(&'a ReadTransaction),
    /// The current write transaction.
    Write(&'a WriteTransaction),
}

macro_rules! with_table {
    ($tx:expr, $def:expr, |$t:ident| $body:expr) => {
        match $tx {
            Tx::Read(r) => {
                let $t = r.open_table($def)?;
                $body
            }
            Tx::Write(w) => {
                let $t = w.open_table($def)?;
                $body
            }
        }
    };
}

impl<'a> Tx<'a> {
    /// Reads one value and maps it while the guard is alive.
    pub(crate) fn get_with<'k, K, V, R>(
        self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
        f: impl FnOnce(V::SelfType<'_>) -> Result<R, DbErr>,
    ) -> Result<Option<R>, DbErr>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        with_table!(self, def, |t| match t.get(key)? {
            Some(guard) => Ok(Some(f(guard.value())?)),
            None => Ok(None),
        })
    }

    /// Reads one JSON record.
    pub(crate) fn get_json<'k, K, T>(
        self,
        def: TableDefinition<'static, K, &'static [u8]>,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<Option<T>, DbErr>
    where
        K: Key + 'static,
        T: DeserializeOwned,
    {
        self.get_with(def, key, |v| dec(v))
    }

    /// True when the key exists.
    pub(crate) fn exists<'k, K, V>(
        self,
        def: TableDefinition<'static, K, V>,
        key: impl Borrow<K::SelfType<'k>>,
    ) -> Result<bool, DbErr>
    where
        K: Key + 'static,
        V: Value + 'static,
    {
        Ok(self.get_with(def, key, |_| Ok(()))?.is_some())
    }

    /// Visits the entries of a key range in order until `f` returns `false`.
    pub(crate) fn scan<'r, K, V, KR, F>(
        self,
        def: TableDefinition<'static, K, V>,
        range: impl RangeBounds<KR> + 'r,
        mut f: F,
    ) -> Result<(), DbErr>
    where
        K: Key + 'static,
        V: Value + 'static,
        KR: Borrow<K::SelfType<'r>> + 'r,
        F: FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<bool, DbErr>,
    {
        with_table!(self, def, |t| {
            for item in t.range(range)? {
                let (k, v) = item?;
                if !f(k.value(), v.value())? {
                    break;
                }
            }
            Ok(())
        })
    }

    /// Visits every entry of a table in key order until `f` returns `false`.
    pub(crate) fn scan_all<K, V, F>(
        self,
        def: TableDefinition<'static, K, V>,
        mut f: F,
    ) -> Result<(), DbErr>
    where
        K: Key + 'static,
        V: Value + 'static,
        F: FnMut(K::SelfType<'_>, V::SelfType<'_>) -> Result<bool, DbErr>,
    {
        with_table!(self, def, |t| {
            for item in t.iter()? {
                let (k, v) = item?;
                if !f(k.value(), v.value())? {
                    break;
                }
            }
            Ok(())
        })
    }

    /// All records whose key starts with `prefix` (a 2-tuple table keyed by
    /// `(prefix, name)`), with the second key component.
    pub(crate) fn prefix_json<T: DeserializeOwned>(
        self,
        def: TableDefinition<'static, (&'static str, &'static str), &'static [u8]>,
        prefix: &str,
    ) -> Result<Vec<(String, T)>, DbErr> {
        let mut out = Vec::new();
        self.scan(def, (prefix, "").., |(p, name), v| {
            if p != prefix {
                return Ok(false);
            }
            out.push((name.to_string(), dec(v)?));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Reads a named counter (0 when never set).
    pub(crate) fn meta(self, name: &str) -> Result<u64, DbErr> {
        Ok(self.get_with(META, name, Ok)?.unwrap_or(0))
    }
}

/// Creates every table so read transactions never meet a missing one.
pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), DbErr> {
    tx.open_table(DOMAINS)?;
    tx.open_table(DOMAIN_ALIASES)?;
    tx.open_table(USERS)?;
    tx.open_table(ALIASES)?;
    tx.open_table(LISTS)?;
    tx.open_table(DEPARTMENTS)?;
    tx.open_table(ADMINS)?;
    tx.open_table(ACCOUNTS)?;
    tx.open_table(MAILBOXES)?;
    tx.open_table(MAILBOX_NAMES)?;
    tx.open_table(SUBSCRIPTIONS)?;
    tx.open_table(MESSAGES)?;
    tx.open_table(BLOBS)?;
    tx.open_table(BLOB_REFS)?;
    tx.open_table(QUEUE)?;
    tx.open_table(QUEUE_CONTENT)?;
    tx.open_table(QUEUE_DUE)?;
    tx.open_table(QUEUE_DUE_HIGH)?;
    tx.open_table(QUEUE_DUE_LOW)?;
    tx.open_table(REMOTE_ACCOUNTS)?;
    tx.open_table(DOMAIN_POP)?;
    tx.open_table(COLLECT_LIMITS)?;
    tx.open_table(COLLECT_SEEN)?;
    tx.open_table(COLLECT_SEEN_AGE)?;
    tx.open_table(COLLECT_SEEN_COUNT)?;
    let mut meta = tx.open_table(META)?;
    if meta.get("schema")?.is_none() {
        meta.insert("schema", 1u64)?;
    }
    Ok(())
}

fn copy_table<K, V>(
    src: &ReadTransaction,
    dst: &WriteTransaction,
    def: TableDefinition<'static, K, V>,
    copied: &mut Vec<String>,
) -> Result<u64, DbErr>
where
    K: Key + 'static,
    V: Value + 'static,
{
    copied.push(def.name().to_string());
    // Tables created on first use (e.g. expunge records) may not exist yet.
    let from = match src.open_table(def) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut to = dst.open_table(def)?;
    let mut n = 0;
    for item in from.iter()? {
        let (k, v) = item?;
        to.insert(k.value(), v.value())?;
        n += 1;
    }
    Ok(n)
}

/// Copies every table of a snapshot into an (empty) write transaction;
/// returns the number of entries copied. A table in the snapshot that this
/// function does not know is an error, so a backup never silently leaves
/// data behind when a table is added without being listed here.
pub(crate) fn copy_all(src: &ReadTransaction, dst: &WriteTransaction) -> Result<u64, DbErr> {
    let mut copied = Vec::new();
    let c = &mut copied;
    let n = copy_table(src, dst, DOMAINS, c)?
        + copy_table(src, dst, DOMAIN_ALIASES, c)?
        + copy_table(src, dst, USERS, c)?
        + copy_table(src, dst, ALIASES, c)?
        + copy_table(src, dst, LISTS, c)?
        + copy_table(src, dst, DEPARTMENTS, c)?
        + copy_table(src, dst, ADMINS, c)?
        + copy_table(src, dst, ACCOUNTS, c)?
        + copy_table(src, dst, MAILBOXES, c)?
        + copy_table(src, dst, MAILBOX_NAMES, c)?
        + copy_table(src, dst, SUBSCRIPTIONS, c)?
        + copy_table(src, dst, MESSAGES, c)?
        + copy_table(src, dst, crate::mail::EXPUNGED, c)?
        + copy_table(src, dst, BLOBS, c)?
        + copy_table(src, dst, BLOB_REFS, c)?
        + copy_table(src, dst, QUEUE, c)?
        + copy_table(src, dst, QUEUE_CONTENT, c)?
        + copy_table(src, dst, QUEUE_DUE, c)?
        + copy_table(src, dst, QUEUE_DUE_HIGH, c)?
        + copy_table(src, dst, QUEUE_DUE_LOW, c)?
        + copy_table(src, dst, REMOTE_ACCOUNTS, c)?
        + copy_table(src, dst, DOMAIN_POP, c)?
        + copy_table(src, dst, COLLECT_LIMITS, c)?
        + copy_table(src, dst, COLLECT_SEEN, c)?
        + copy_table(src, dst, COLLECT_SEEN_AGE, c)?
        + copy_table(src, dst, COLLECT_SEEN_COUNT, c)?
        + copy_table(src, dst, crate::dkim::DKIM_KEYS, c)?
        + copy_table(src, dst, META, c)?;
    for table in src.list_tables()? {
        if !copied.iter().any(|name| name == table.name()) {
            return Err(DbErr(format!(
                "table {} is not copied by backups; refusing an incomplete backup",
                table.name()
            )));
        }
    }
    Ok(n)
}
