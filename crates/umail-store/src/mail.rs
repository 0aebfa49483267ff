//! Mailboxes, messages, single-instance blobs and quota accounting: the
//! `umail_core::MailStore` implementation.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use bytes::Bytes;
use redb::{ReadableTable, TableDefinition, TableError};
use serde::{Deserialize, Serialize};
use umail_core::store::{ContentPart, HIERARCHY_SEPARATOR, INBOX, header_len};
use umail_core::{
    AppendOutcome, ChangeFeed, DeliveryTarget, Flag, FlagOp, FlagUpdate, Flags, MailStore,
    MailboxChange, MailboxId, MailboxInfo, MessageMeta, ModSeq, Quota, QuotaUsage, SpecialUse,
    StoreError, Uid,
};

use crate::Store;
use crate::db::{
    ACCOUNTS, BLOB_REFS, BLOBS, DbErr, MAILBOX_NAMES, MAILBOXES, MESSAGES, SUBSCRIPTIONS, Tx,
};
use crate::directory::get_user;
use crate::split_account;
use crate::writer::{Ctx, Fail};

/// Largest message the store accepts, in bytes.
pub const MAX_MESSAGE_SIZE: u64 = 1 << 30;

/// Longest mailbox name, in bytes.
const MAX_NAME_LEN: usize = 1000;

type R<T> = Result<T, Fail<StoreError>>;

/// Expunge records for QRESYNC (RFC 7162): `(account, mailbox id, uid)` →
/// MODSEQ of the expunge that removed the message. The key with uid `0`
/// (never a message UID) holds the mailbox's *horizon*: every expunge with
/// a MODSEQ above it is recorded. Mailboxes created before these records
/// existed get their horizon at their first expunge; a mailbox without one
/// cannot answer [`MailStore::expunged_since`] exactly.
///
/// The table is created on first write; reads treat a missing table as
/// empty. `db::copy_all` should copy it so backups keep the records (a
/// backup without it restores mailboxes without horizons, which only makes
/// QRESYNC fall back to known-UID resynchronisation).
pub(crate) const EXPUNGED: TableDefinition<(&str, u64, u32), u64> =
    TableDefinition::new("expunged");

/// The key of a mailbox's horizon in [`EXPUNGED`].
const HORIZON_UID: Uid = 0;

fn reject<T>(e: StoreError) -> R<T> {
    Err(Fail::Reject(e))
}

fn io(e: DbErr) -> StoreError {
    StoreError::Io(e.0)
}

/// Per-account record: mailbox id counter and quota usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct AccountRec {
    pub(crate) next_mailbox_id: u64,
    pub(crate) bytes: u64,
    pub(crate) messages: u64,
}

/// A mailbox and its counters.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MailboxRec {
    pub(crate) id: MailboxId,
    pub(crate) name: String,
    pub(crate) special_use: Option<SpecialUse>,
    pub(crate) uid_validity: u32,
    pub(crate) uid_next: Uid,
    pub(crate) highest_modseq: ModSeq,
    pub(crate) messages: u32,
    pub(crate) unseen: u32,
    pub(crate) size: u64,
}

/// One message entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct MessageRec {
    pub(crate) flags: Flags,
    pub(crate) modseq: ModSeq,
    pub(crate) internal_date: i64,
    pub(crate) size: u64,
    pub(crate) blob: String,
}

/// Normalises a mailbox name: INBOX (first component) in upper case, one
/// trailing separator dropped; rejects empty components, wildcards and
/// control characters.
pub(crate) fn normalize_name(name: &str) -> Result<String, StoreError> {
    let bad = |why: &str| StoreError::InvalidName(format!("{name:?}: {why}"));
    let trimmed = name.strip_suffix(HIERARCHY_SEPARATOR).unwrap_or(name);
    if trimmed.is_empty() {
        return Err(bad("empty"));
    }
    if trimmed.len() > MAX_NAME_LEN {
        return Err(bad("too long"));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() || c == '*' || c == '%')
    {
        return Err(bad("control or wildcard character"));
    }
    let mut parts: Vec<&str> = trimmed.split(HIERARCHY_SEPARATOR).collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(bad("empty hierarchy level"));
    }
    if parts[0].eq_ignore_ascii_case(INBOX) {
        parts[0] = INBOX;
    }
    Ok(parts.join("/"))
}

fn normalize_account(account: &str) -> String {
    account.trim().to_lowercase()
}

fn is_seen(flags: &Flags) -> bool {
    flags.contains(&Flag::Seen)
}

pub(crate) fn blob_id(content: &[u8]) -> String {
    blake3::hash(content).to_hex().to_string()
}

// ---------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------

fn get_account(tx: Tx<'_>, account: &str) -> Result<Option<AccountRec>, DbErr> {
    tx.get_json(ACCOUNTS, account)
}

fn get_mailbox(tx: Tx<'_>, account: &str, id: MailboxId) -> Result<Option<MailboxRec>, DbErr> {
    tx.get_json(MAILBOXES, (account, id))
}

fn mailbox_by_name(tx: Tx<'_>, account: &str, name: &str) -> Result<Option<MailboxRec>, DbErr> {
    match tx.get_with(MAILBOX_NAMES, (account, name), Ok)? {
        Some(id) => get_mailbox(tx, account, id),
        None => Ok(None),
    }
}

fn mailboxes_of(tx: Tx<'_>, account: &str) -> Result<Vec<MailboxRec>, DbErr> {
    let mut out = Vec::new();
    tx.scan(MAILBOXES, (account, 0u64)..=(account, u64::MAX), |_, v| {
        out.push(crate::db::dec(v)?);
        Ok(true)
    })?;
    Ok(out)
}

fn messages_of(
    tx: Tx<'_>,
    account: &str,
    mailbox: MailboxId,
) -> Result<Vec<(Uid, MessageRec)>, DbErr> {
    let mut out = Vec::new();
    tx.scan(
        MESSAGES,
        (account, mailbox, 0u32)..=(account, mailbox, u32::MAX),
        |(_, _, uid), v| {
            out.push((uid, crate::db::dec(v)?));
            Ok(true)
        },
    )?;
    Ok(out)
}

/// The entries of a mailbox with a UID above `after`, ascending.
fn messages_after(
    tx: Tx<'_>,
    account: &str,
    mailbox: MailboxId,
    after: Uid,
) -> Result<Vec<(Uid, MessageRec)>, DbErr> {
    let mut out = Vec::new();
    if after == u32::MAX {
        return Ok(out);
    }
    tx.scan(
        MESSAGES,
        (account, mailbox, after + 1)..=(account, mailbox, u32::MAX),
        |(_, _, uid), v| {
            out.push((uid, crate::db::dec(v)?));
            Ok(true)
        },
    )?;
    Ok(out)
}

fn get_message(
    tx: Tx<'_>,
    account: &str,
    mailbox: MailboxId,
    uid: Uid,
) -> Result<Option<MessageRec>, DbErr> {
    tx.get_json(MESSAGES, (account, mailbox, uid))
}

/// The blob id of a message record, decoded without the rest of the
/// record (flags, dates): batch reads need nothing else.
#[derive(Deserialize)]
struct BlobOf<'a> {
    #[serde(borrow)]
    blob: std::borrow::Cow<'a, str>,
}

/// Most header-only messages a batch reads on the calling (async) thread:
/// header blocks are small, and a thread hop per small batch costs more
/// than the read. Larger batches and whole messages go to the blocking pool.
const INLINE_HEADER_READS: usize = 64;

/// The content (or header block) of each of `uids`, in order, `None` for
/// a UID without an entry; the two tables are opened once for the batch.
fn read_contents(
    tx: Tx<'_>,
    account: &str,
    mailbox: MailboxId,
    uids: &[Uid],
    part: ContentPart,
) -> Result<Vec<Option<Bytes>>, DbErr> {
    let copy = |v: &[u8]| match part {
        ContentPart::Full => Bytes::copy_from_slice(v),
        ContentPart::Header => Bytes::copy_from_slice(&v[..header_len(v)]),
    };
    let Tx::Read(r) = tx else {
        // The writer's transaction never serves IMAP reads; kept correct
        // with the per-message helpers.
        let mut out = Vec::with_capacity(uids.len());
        for &uid in uids {
            out.push(match get_message(tx, account, mailbox, uid)? {
                Some(entry) => Some(
                    tx.get_with(BLOBS, entry.blob.as_str(), |v| Ok(copy(v)))?
                        .ok_or_else(|| DbErr(format!("blob {} is missing", entry.blob)))?,
                ),
                None => None,
            });
        }
        return Ok(out);
    };
    let messages = r.open_table(MESSAGES)?;
    let blobs = r.open_table(BLOBS)?;
    let mut out = Vec::with_capacity(uids.len());
    for &uid in uids {
        let Some(entry) = messages.get((account, mailbox, uid))? else {
            out.push(None);
            continue;
        };
        let value = entry.value();
        let rec: BlobOf<'_> = serde_json::from_slice(value)?;
        let Some(blob) = blobs.get(rec.blob.as_ref())? else {
            return Err(DbErr(format!("blob {} is missing", rec.blob)));
        };
        out.push(Some(copy(blob.value())));
    }
    Ok(out)
}

/// A mailbox's expunge horizon (if any) and its `(uid, modseq)` records.
pub(crate) type ExpungeRecords = (Option<ModSeq>, Vec<(Uid, ModSeq)>);

/// The expunge records of one mailbox: its horizon (if it has one) and the
/// `(uid, modseq)` records, ascending by UID. A database that never stored
/// a record has no table yet: that reads as "no horizon, no records".
pub(crate) fn expunge_records(
    tx: Tx<'_>,
    account: &str,
    mailbox: MailboxId,
) -> Result<ExpungeRecords, DbErr> {
    if let Tx::Read(r) = tx {
        match r.open_table(EXPUNGED) {
            Ok(_) => {}
            Err(TableError::TableDoesNotExist(_)) => return Ok((None, Vec::new())),
            Err(e) => return Err(e.into()),
        }
    }
    let mut horizon = None;
    let mut records = Vec::new();
    tx.scan(
        EXPUNGED,
        (account, mailbox, 0u32)..=(account, mailbox, u32::MAX),
        |(_, _, uid), modseq| {
            if uid == HORIZON_UID {
                horizon = Some(modseq);
            } else {
                records.push((uid, modseq));
            }
            Ok(true)
        },
    )?;
    Ok((horizon, records))
}

/// Every expunge record of the database, `(account, mailbox, uid) → modseq`
/// (uid 0 being horizons), for the consistency check.
pub(crate) fn all_expunge_records(
    tx: Tx<'_>,
) -> Result<BTreeMap<(String, MailboxId, Uid), ModSeq>, DbErr> {
    let mut out = BTreeMap::new();
    if let Tx::Read(r) = tx {
        let table = match r.open_table(EXPUNGED) {
            Ok(t) => t,
            Err(TableError::TableDoesNotExist(_)) => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        for item in table.iter()? {
            let (k, v) = item?;
            let (a, m, u) = k.value();
            out.insert((a.to_string(), m, u), v.value());
        }
        return Ok(out);
    }
    tx.scan_all(EXPUNGED, |(a, m, u), v| {
        out.insert((a.to_string(), m, u), v);
        Ok(true)
    })?;
    Ok(out)
}

fn info_of(tx: Tx<'_>, account: &str, rec: MailboxRec) -> Result<MailboxInfo, DbErr> {
    let subscribed = tx.exists(SUBSCRIPTIONS, (account, rec.name.as_str()))?;
    Ok(MailboxInfo {
        id: rec.id,
        name: rec.name,
        special_use: rec.special_use,
        subscribed,
        uid_validity: rec.uid_validity,
        uid_next: rec.uid_next,
        highest_modseq: rec.highest_modseq,
        messages: rec.messages,
        unseen: rec.unseen,
        size: rec.size,
    })
}

fn user_quota(tx: Tx<'_>, account: &str) -> Result<Option<Quota>, DbErr> {
    match split_account(account) {
        Some((d, l)) => Ok(get_user(tx, d, l)?.map(|u| u.quota)),
        None => Ok(None),
    }
}

// ---------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------

/// The next UIDVALIDITY: unique over the database's life and never below
/// the current time, so a mailbox re-created under an old name (even after
/// a restore from an old backup) gets a value no client has cached.
fn next_uid_validity(ctx: &mut Ctx<'_>) -> Result<u32, DbErr> {
    let last = ctx.r().meta("uidvalidity")?;
    let now = u64::try_from(umail_core::unix_now()).unwrap_or(1);
    let next = last
        .saturating_add(1)
        .max(now)
        .clamp(1, u64::from(u32::MAX));
    ctx.set_counter("uidvalidity", next)?;
    Ok(u32::try_from(next).unwrap_or(u32::MAX))
}

fn put_mailbox(ctx: &mut Ctx<'_>, account: &str, rec: &MailboxRec) -> Result<(), DbErr> {
    ctx.put_json(MAILBOXES, (account, rec.id), rec)
}

fn put_account(ctx: &mut Ctx<'_>, account: &str, rec: &AccountRec) -> Result<(), DbErr> {
    ctx.put_json(ACCOUNTS, account, rec)
}

/// Creates one mailbox record (the caller saves `acct`).
fn new_mailbox(
    ctx: &mut Ctx<'_>,
    account: &str,
    acct: &mut AccountRec,
    name: &str,
    special_use: Option<SpecialUse>,
    subscribe: bool,
) -> Result<MailboxRec, DbErr> {
    acct.next_mailbox_id += 1;
    let rec = MailboxRec {
        id: acct.next_mailbox_id,
        name: name.to_string(),
        special_use,
        uid_validity: next_uid_validity(ctx)?,
        uid_next: 1,
        highest_modseq: 1,
        messages: 0,
        unseen: 0,
        size: 0,
    };
    put_mailbox(ctx, account, &rec)?;
    ctx.put(MAILBOX_NAMES, (account, name), rec.id)?;
    // Every expunge of a new mailbox is recorded.
    ctx.put(EXPUNGED, (account, rec.id, HORIZON_UID), 0u64)?;
    if subscribe {
        ctx.put(SUBSCRIPTIONS, (account, name), 1u8)?;
    }
    Ok(rec)
}

/// Creates `name` and its missing parents (the caller checked that `name`
/// does not exist, and saves `acct`).
fn create_with_parents(
    ctx: &mut Ctx<'_>,
    account: &str,
    acct: &mut AccountRec,
    name: &str,
    special_use: Option<SpecialUse>,
) -> Result<MailboxRec, DbErr> {
    let parts: Vec<&str> = name.split(HIERARCHY_SEPARATOR).collect();
    for depth in 1..parts.len() {
        let parent = parts[..depth].join("/");
        if mailbox_by_name(ctx.r(), account, &parent)?.is_none() {
            new_mailbox(ctx, account, acct, &parent, None, false)?;
        }
    }
    new_mailbox(ctx, account, acct, name, special_use, false)
}

/// The account record, creating INBOX and the special-use mailboxes on
/// first use. The account must be a user of the directory.
fn ensure_account(ctx: &mut Ctx<'_>, account: &str) -> R<AccountRec> {
    if let Some(a) = get_account(ctx.r(), account)? {
        return Ok(a);
    }
    if user_quota(ctx.r(), account)?.is_none() {
        return reject(StoreError::NoSuchAccount(account.to_string()));
    }
    let mut acct = AccountRec::default();
    new_mailbox(ctx, account, &mut acct, INBOX, None, true)?;
    for (name, use_) in SpecialUse::DEFAULTS {
        new_mailbox(ctx, account, &mut acct, name, Some(use_), true)?;
    }
    put_account(ctx, account, &acct)?;
    Ok(acct)
}

fn blob_incref(ctx: &mut Ctx<'_>, blob: &str, content: &[u8], n: u64) -> Result<(), DbErr> {
    if n == 0 {
        return Ok(());
    }
    let refs = ctx.r().get_with(BLOB_REFS, blob, Ok)?;
    match refs {
        Some(r) => ctx.put(BLOB_REFS, blob, r.saturating_add(n)),
        None => {
            ctx.put(BLOBS, blob, content)?;
            ctx.put(BLOB_REFS, blob, n)
        }
    }
}

/// Adds references to a blob that is known to exist.
fn blob_addref(ctx: &mut Ctx<'_>, blob: &str, n: u64) -> Result<(), DbErr> {
    let refs = ctx.r().get_with(BLOB_REFS, blob, Ok)?;
    match refs {
        Some(r) => ctx.put(BLOB_REFS, blob, r.saturating_add(n)),
        None => Err(DbErr(format!("blob {blob} has no reference count"))),
    }
}

fn blob_decref(ctx: &mut Ctx<'_>, blob: &str, n: u64) -> Result<(), DbErr> {
    let refs = ctx.r().get_with(BLOB_REFS, blob, Ok)?.unwrap_or(0);
    if refs <= n {
        ctx.del(BLOB_REFS, blob)?;
        ctx.del(BLOBS, blob)?;
    } else {
        ctx.put(BLOB_REFS, blob, refs - n)?;
    }
    Ok(())
}

/// Adds one entry to a mailbox (the caller saves `mbox` and `acct` and
/// takes care of the blob reference).
fn add_entry(
    ctx: &mut Ctx<'_>,
    account: &str,
    mbox: &mut MailboxRec,
    acct: &mut AccountRec,
    entry: MessageRec,
) -> Result<(Uid, ModSeq), DbErr> {
    let uid = mbox.uid_next;
    mbox.uid_next = uid.saturating_add(1);
    mbox.highest_modseq += 1;
    let modseq = mbox.highest_modseq;
    mbox.messages += 1;
    if !is_seen(&entry.flags) {
        mbox.unseen += 1;
    }
    mbox.size += entry.size;
    acct.bytes += entry.size;
    acct.messages += 1;
    let entry = MessageRec { modseq, ..entry };
    ctx.put_json(MESSAGES, (account, mbox.id, uid), &entry)?;
    ctx.publish(account, mbox.id, MailboxChange::Added { uid, modseq });
    Ok((uid, modseq))
}

/// Room for `n` more UIDs?
fn check_uid_space(mbox: &MailboxRec, n: usize) -> R<()> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    if mbox.uid_next.checked_add(n).is_none() {
        return reject(StoreError::NotAllowed(format!(
            "mailbox {} has run out of UIDs",
            mbox.name
        )));
    }
    Ok(())
}

/// Removes the given entries (those that exist) from a mailbox: entries,
/// counters, quota usage and blob references. Saves `mbox` and the account.
fn remove_entries(
    ctx: &mut Ctx<'_>,
    account: &str,
    mbox: &mut MailboxRec,
    uids: &BTreeSet<Uid>,
) -> Result<Vec<Uid>, DbErr> {
    let mut removed = Vec::new();
    let mut freed: BTreeMap<String, u64> = BTreeMap::new();
    let mut bytes = 0u64;
    for &uid in uids {
        let Some(entry) = get_message(ctx.r(), account, mbox.id, uid)? else {
            continue;
        };
        ctx.del(MESSAGES, (account, mbox.id, uid))?;
        mbox.messages = mbox.messages.saturating_sub(1);
        if !is_seen(&entry.flags) {
            mbox.unseen = mbox.unseen.saturating_sub(1);
        }
        mbox.size = mbox.size.saturating_sub(entry.size);
        bytes += entry.size;
        *freed.entry(entry.blob).or_default() += 1;
        removed.push(uid);
    }
    if removed.is_empty() {
        return Ok(removed);
    }
    for (blob, n) in freed {
        blob_decref(ctx, &blob, n)?;
    }
    let key = (account, mbox.id, HORIZON_UID);
    if ctx.r().get_with(EXPUNGED, key, Ok)?.is_none() {
        // A mailbox older than the expunge records: they are complete from now.
        ctx.put(EXPUNGED, key, mbox.highest_modseq)?;
    }
    mbox.highest_modseq += 1;
    for &uid in &removed {
        ctx.put(EXPUNGED, (account, mbox.id, uid), mbox.highest_modseq)?;
    }
    put_mailbox(ctx, account, mbox)?;
    let mut acct = get_account(ctx.r(), account)?.unwrap_or_default();
    acct.bytes = acct.bytes.saturating_sub(bytes);
    acct.messages = acct.messages.saturating_sub(removed.len() as u64);
    put_account(ctx, account, &acct)?;
    ctx.publish(
        account,
        mbox.id,
        MailboxChange::Expunged {
            uids: removed.clone(),
            modseq: mbox.highest_modseq,
        },
    );
    Ok(removed)
}

/// Deletes one mailbox with its messages (not its children).
fn drop_mailbox(ctx: &mut Ctx<'_>, account: &str, mut mbox: MailboxRec) -> Result<(), DbErr> {
    let uids: BTreeSet<Uid> = messages_of(ctx.r(), account, mbox.id)?
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    remove_entries(ctx, account, &mut mbox, &uids)?;
    let mut records = Vec::new();
    ctx.r().scan(
        EXPUNGED,
        (account, mbox.id, 0u32)..=(account, mbox.id, u32::MAX),
        |(_, _, uid), _| {
            records.push(uid);
            Ok(true)
        },
    )?;
    for uid in records {
        ctx.del(EXPUNGED, (account, mbox.id, uid))?;
    }
    ctx.del(MAILBOXES, (account, mbox.id))?;
    ctx.del(MAILBOX_NAMES, (account, mbox.name.as_str()))?;
    ctx.publish(account, mbox.id, MailboxChange::Gone);
    Ok(())
}

/// Deletes every mailbox, message, subscription and the account record of
/// an account (used when a user is removed).
pub(crate) fn purge_account(ctx: &mut Ctx<'_>, account: &str) -> Result<(), DbErr> {
    for mbox in mailboxes_of(ctx.r(), account)? {
        drop_mailbox(ctx, account, mbox)?;
    }
    let mut subs = Vec::new();
    ctx.r()
        .scan(SUBSCRIPTIONS, (account, "").., |(a, name), _| {
            if a != account {
                return Ok(false);
            }
            subs.push(name.to_string());
            Ok(true)
        })?;
    for s in subs {
        ctx.del(SUBSCRIPTIONS, (account, s.as_str()))?;
    }
    ctx.del(ACCOUNTS, account)?;
    Ok(())
}

fn apply_flags(old: &Flags, op: FlagOp, flags: &Flags) -> Flags {
    match op {
        FlagOp::Set => flags.clone(),
        FlagOp::Add => old.union(flags).cloned().collect(),
        FlagOp::Remove => old.difference(flags).cloned().collect(),
    }
}

fn over_quota(tx: Tx<'_>, account: &str, acct: &AccountRec, bytes: u64, n: u64) -> R<()> {
    let quota = user_quota(tx, account)?.unwrap_or_default();
    let usage = QuotaUsage {
        bytes: acct.bytes,
        messages: acct.messages,
    };
    if quota.would_exceed(&usage, bytes, n) {
        return reject(StoreError::OverQuota);
    }
    Ok(())
}

/// Copies entries into `to` (the caller checked quota). Returns the
/// `(old, new)` uid pairs; saves `to` and the account.
fn copy_entries(
    ctx: &mut Ctx<'_>,
    account: &str,
    entries: Vec<(Uid, MessageRec)>,
    to: &mut MailboxRec,
) -> Result<Vec<(Uid, Uid)>, DbErr> {
    let mut acct = get_account(ctx.r(), account)?.unwrap_or_default();
    let mut pairs = Vec::with_capacity(entries.len());
    let mut refs: BTreeMap<String, u64> = BTreeMap::new();
    for (old, entry) in entries {
        *refs.entry(entry.blob.clone()).or_default() += 1;
        let (new, _) = add_entry(ctx, account, to, &mut acct, entry)?;
        pairs.push((old, new));
    }
    for (blob, n) in refs {
        blob_addref(ctx, &blob, n)?;
    }
    put_mailbox(ctx, account, to)?;
    put_account(ctx, account, &acct)?;
    Ok(pairs)
}

/// Stores one delivery target (validation first, then writes).
fn deliver_one(
    ctx: &mut Ctx<'_>,
    target: &DeliveryTarget,
    blob: &str,
    size: u64,
    internal_date: i64,
) -> R<AppendOutcome> {
    let account = normalize_account(&target.account);
    let name = normalize_name(&target.mailbox).map_err(Fail::Reject)?;
    let mut acct = ensure_account(ctx, &account)?;
    over_quota(ctx.r(), &account, &acct, size, 1)?;
    let mut mbox = match mailbox_by_name(ctx.r(), &account, &name)? {
        Some(m) => m,
        None => {
            let use_ = SpecialUse::DEFAULTS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, u)| *u);
            create_with_parents(ctx, &account, &mut acct, &name, use_)?
        }
    };
    check_uid_space(&mbox, 1)?;
    let entry = MessageRec {
        flags: target.flags.clone(),
        modseq: 0,
        internal_date,
        size,
        blob: blob.to_string(),
    };
    let (uid, modseq) = add_entry(ctx, &account, &mut mbox, &mut acct, entry)?;
    put_mailbox(ctx, &account, &mbox)?;
    put_account(ctx, &account, &acct)?;
    Ok(AppendOutcome {
        uid_validity: mbox.uid_validity,
        uid,
        modseq,
    })
}

// ---------------------------------------------------------------------------
// MailStore
// ---------------------------------------------------------------------------

impl Store {
    fn mail_read<T>(&self, f: impl FnOnce(Tx<'_>) -> Result<T, DbErr>) -> Result<T, StoreError> {
        let tx = self.read().map_err(io)?;
        f(Tx::Read(&tx)).map_err(io)
    }

    async fn mail_write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut Ctx<'_>) -> R<T> + Send + 'static,
    {
        self.write(io, f).await
    }

    /// Makes sure the account's default mailboxes exist.
    async fn ensure(&self, account: &str) -> Result<(), StoreError> {
        if self.mail_read(|tx| get_account(tx, account))?.is_some() {
            return Ok(());
        }
        let account = account.to_string();
        self.mail_write(move |ctx| ensure_account(ctx, &account).map(|_| ()))
            .await
    }

    /// Usage computed from the stored entries of an account (used by the
    /// consistency check and available to operators).
    pub fn recount_usage(&self, account: &str) -> Result<QuotaUsage, StoreError> {
        let account = normalize_account(account);
        self.mail_read(|tx| {
            let mut usage = QuotaUsage::default();
            for mbox in mailboxes_of(tx, &account)? {
                for (_, m) in messages_of(tx, &account, mbox.id)? {
                    usage.bytes += m.size;
                    usage.messages += 1;
                }
            }
            Ok(usage)
        })
    }
}

#[async_trait]
impl MailStore for Store {
    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>, StoreError> {
        let account = normalize_account(account);
        self.ensure(&account).await?;
        self.mail_read(|tx| {
            let mut out = mailboxes_of(tx, &account)?
                .into_iter()
                .map(|m| info_of(tx, &account, m))
                .collect::<Result<Vec<_>, _>>()?;
            out.sort_by(|a, b| (a.name != INBOX, &a.name).cmp(&(b.name != INBOX, &b.name)));
            Ok(out)
        })
    }

    async fn mailbox(&self, account: &str, name: &str) -> Result<Option<MailboxInfo>, StoreError> {
        let account = normalize_account(account);
        let Ok(name) = normalize_name(name) else {
            return Ok(None);
        };
        self.ensure(&account).await?;
        self.mail_read(|tx| match mailbox_by_name(tx, &account, &name)? {
            Some(m) => Ok(Some(info_of(tx, &account, m)?)),
            None => Ok(None),
        })
    }

    async fn create_mailbox(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxInfo, StoreError> {
        let account = normalize_account(account);
        let name = normalize_name(name)?;
        self.mail_write(move |ctx| {
            let mut acct = ensure_account(ctx, &account)?;
            if mailbox_by_name(ctx.r(), &account, &name)?.is_some() {
                return reject(StoreError::MailboxExists(name.clone()));
            }
            let rec = create_with_parents(ctx, &account, &mut acct, &name, special_use)?;
            put_account(ctx, &account, &acct)?;
            Ok(info_of(ctx.r(), &account, rec)?)
        })
        .await
    }

    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let account = normalize_account(account);
        let from = normalize_name(from)?;
        let to = normalize_name(to)?;
        self.mail_write(move |ctx| {
            let mut acct = ensure_account(ctx, &account)?;
            let Some(src) = mailbox_by_name(ctx.r(), &account, &from)? else {
                return reject(StoreError::NoSuchMailbox(from.clone()));
            };
            if mailbox_by_name(ctx.r(), &account, &to)?.is_some() {
                return reject(StoreError::MailboxExists(to.clone()));
            }
            if to.starts_with(&format!("{from}/")) {
                return reject(StoreError::InvalidName(format!(
                    "cannot move {from} into itself"
                )));
            }
            if from == INBOX {
                // RFC 9051 §6.3.6: move INBOX's messages to a new mailbox;
                // INBOX stays, empty; its children are not renamed.
                let entries = messages_of(ctx.r(), &account, src.id)?;
                let mut dest = create_with_parents(ctx, &account, &mut acct, &to, None)?;
                put_account(ctx, &account, &acct)?;
                let uids: BTreeSet<Uid> = entries.iter().map(|(u, _)| *u).collect();
                copy_entries(ctx, &account, entries, &mut dest)?;
                let mut src = src;
                remove_entries(ctx, &account, &mut src, &uids)?;
                return Ok(());
            }
            // The mailbox and its children, with their new names.
            let prefix = format!("{from}/");
            let mut moves = Vec::new();
            for m in mailboxes_of(ctx.r(), &account)? {
                let new_name = if m.name == from {
                    to.clone()
                } else if let Some(rest) = m.name.strip_prefix(&prefix) {
                    format!("{to}/{rest}")
                } else {
                    continue;
                };
                if new_name.len() > MAX_NAME_LEN {
                    return reject(StoreError::InvalidName(format!("{new_name}: too long")));
                }
                if mailbox_by_name(ctx.r(), &account, &new_name)?.is_some() {
                    return reject(StoreError::MailboxExists(new_name));
                }
                moves.push((m, new_name));
            }
            let subscribed: Vec<bool> = moves
                .iter()
                .map(|(m, _)| {
                    ctx.r()
                        .exists(SUBSCRIPTIONS, (account.as_str(), m.name.as_str()))
                })
                .collect::<Result<_, _>>()?;
            for ((mut m, new_name), sub) in moves.into_iter().zip(subscribed) {
                ctx.del(MAILBOX_NAMES, (account.as_str(), m.name.as_str()))?;
                if sub {
                    ctx.del(SUBSCRIPTIONS, (account.as_str(), m.name.as_str()))?;
                    ctx.put(SUBSCRIPTIONS, (account.as_str(), new_name.as_str()), 1u8)?;
                }
                ctx.put(MAILBOX_NAMES, (account.as_str(), new_name.as_str()), m.id)?;
                m.name = new_name;
                put_mailbox(ctx, &account, &m)?;
                ctx.publish(&account, m.id, MailboxChange::Gone);
            }
            // Missing parents of the new name.
            let parts: Vec<&str> = to.split(HIERARCHY_SEPARATOR).collect();
            for depth in 1..parts.len() {
                let parent = parts[..depth].join("/");
                if mailbox_by_name(ctx.r(), &account, &parent)?.is_none() {
                    new_mailbox(ctx, &account, &mut acct, &parent, None, false)?;
                }
            }
            put_account(ctx, &account, &acct)?;
            Ok(())
        })
        .await
    }

    async fn delete_mailbox(&self, account: &str, name: &str) -> Result<(), StoreError> {
        let account = normalize_account(account);
        let name = normalize_name(name)?;
        if name == INBOX {
            return Err(StoreError::NotAllowed("INBOX cannot be deleted".into()));
        }
        self.mail_write(move |ctx| {
            ensure_account(ctx, &account)?;
            let Some(mbox) = mailbox_by_name(ctx.r(), &account, &name)? else {
                return reject(StoreError::NoSuchMailbox(name.clone()));
            };
            drop_mailbox(ctx, &account, mbox)?;
            Ok(())
        })
        .await
    }

    async fn set_subscribed(
        &self,
        account: &str,
        name: &str,
        subscribed: bool,
    ) -> Result<(), StoreError> {
        let account = normalize_account(account);
        let name = normalize_name(name)?;
        self.mail_write(move |ctx| {
            ensure_account(ctx, &account)?;
            let key = (account.as_str(), name.as_str());
            if subscribed {
                ctx.put(SUBSCRIPTIONS, key, 1u8)?;
            } else {
                ctx.del(SUBSCRIPTIONS, key)?;
            }
            Ok(())
        })
        .await
    }

    async fn append(
        &self,
        account: &str,
        mailbox: &str,
        message: Bytes,
        flags: Flags,
        internal_date: i64,
    ) -> Result<AppendOutcome, StoreError> {
        let account = normalize_account(account);
        let name = normalize_name(mailbox)?;
        let size = message.len() as u64;
        if size > MAX_MESSAGE_SIZE {
            return Err(StoreError::TooLarge);
        }
        let blob = blob_id(&message);
        self.mail_write(move |ctx| {
            let mut acct = ensure_account(ctx, &account)?;
            let Some(mut mbox) = mailbox_by_name(ctx.r(), &account, &name)? else {
                return reject(StoreError::NoSuchMailbox(name.clone()));
            };
            over_quota(ctx.r(), &account, &acct, size, 1)?;
            check_uid_space(&mbox, 1)?;
            let entry = MessageRec {
                flags: flags.clone(),
                modseq: 0,
                internal_date,
                size,
                blob: blob.clone(),
            };
            let (uid, modseq) = add_entry(ctx, &account, &mut mbox, &mut acct, entry)?;
            blob_incref(ctx, &blob, &message, 1)?;
            put_mailbox(ctx, &account, &mbox)?;
            put_account(ctx, &account, &acct)?;
            Ok(AppendOutcome {
                uid_validity: mbox.uid_validity,
                uid,
                modseq,
            })
        })
        .await
    }

    async fn deliver(
        &self,
        message: Bytes,
        internal_date: i64,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let size = message.len() as u64;
        if size > MAX_MESSAGE_SIZE {
            return Err(StoreError::TooLarge);
        }
        let blob = blob_id(&message);
        let targets = targets.to_vec();
        self.mail_write(move |ctx| {
            let mut results = Vec::with_capacity(targets.len());
            let mut refs = 0u64;
            for target in &targets {
                match deliver_one(ctx, target, &blob, size, internal_date) {
                    Ok(outcome) => {
                        refs += 1;
                        results.push(Ok(outcome));
                    }
                    Err(Fail::Reject(e)) => results.push(Err(e)),
                    Err(Fail::Db(e)) => return Err(Fail::Db(e)),
                }
            }
            blob_incref(ctx, &blob, &message, refs)?;
            Ok(results)
        })
        .await
    }

    async fn messages(
        &self,
        account: &str,
        mailbox: MailboxId,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let account = normalize_account(account);
        self.read_blocking(move |tx| {
            if get_mailbox(tx, &account, mailbox)?.is_none() {
                return Ok(None);
            }
            Ok(Some(
                messages_of(tx, &account, mailbox)?
                    .into_iter()
                    .map(|(uid, m)| MessageMeta {
                        uid,
                        flags: m.flags,
                        modseq: m.modseq,
                        internal_date: m.internal_date,
                        size: m.size,
                        blob_id: m.blob,
                    })
                    .collect(),
            ))
        })
        .await
        .map_err(io)?
        .ok_or_else(|| StoreError::NoSuchMailbox(format!("#{mailbox}")))
    }

    async fn messages_after(
        &self,
        account: &str,
        mailbox: MailboxId,
        after: Uid,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let account = normalize_account(account);
        // Usually the one or two messages just added: read on the calling
        // thread, as the other small reads are.
        self.mail_read(|tx| {
            if get_mailbox(tx, &account, mailbox)?.is_none() {
                return Ok(None);
            }
            Ok(Some(
                messages_after(tx, &account, mailbox, after)?
                    .into_iter()
                    .map(|(uid, m)| MessageMeta {
                        uid,
                        flags: m.flags,
                        modseq: m.modseq,
                        internal_date: m.internal_date,
                        size: m.size,
                        blob_id: m.blob,
                    })
                    .collect(),
            ))
        })?
        .ok_or_else(|| StoreError::NoSuchMailbox(format!("#{mailbox}")))
    }

    async fn message_content(
        &self,
        account: &str,
        mailbox: MailboxId,
        uid: Uid,
    ) -> Result<Option<Bytes>, StoreError> {
        let account = normalize_account(account);
        self.read_blocking(move |tx| {
            let Some(entry) = get_message(tx, &account, mailbox, uid)? else {
                return Ok(None);
            };
            match tx.get_with(BLOBS, entry.blob.as_str(), |v| {
                Ok(Bytes::copy_from_slice(v))
            })? {
                Some(b) => Ok(Some(b)),
                None => Err(DbErr(format!("blob {} is missing", entry.blob))),
            }
        })
        .await
        .map_err(io)
    }

    async fn message_contents(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
        part: ContentPart,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        let account = normalize_account(account);
        if part == ContentPart::Header && uids.len() <= INLINE_HEADER_READS {
            return self.mail_read(|tx| read_contents(tx, &account, mailbox, uids, part));
        }
        let uids = uids.to_vec();
        self.read_blocking(move |tx| read_contents(tx, &account, mailbox, &uids, part))
            .await
            .map_err(io)
    }

    async fn update_flags(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<ModSeq>,
    ) -> Result<FlagUpdate, StoreError> {
        let account = normalize_account(account);
        let uids: BTreeSet<Uid> = uids.iter().copied().collect();
        let flags = flags.clone();
        self.mail_write(move |ctx| {
            let Some(mut mbox) = get_mailbox(ctx.r(), &account, mailbox)? else {
                return reject(StoreError::NoSuchMailbox(format!("#{mailbox}")));
            };
            let mut result = FlagUpdate::default();
            let mut changed = Vec::new();
            let new_modseq = mbox.highest_modseq + 1;
            for &uid in &uids {
                let Some(entry) = get_message(ctx.r(), &account, mailbox, uid)? else {
                    continue;
                };
                if unchanged_since.is_some_and(|since| entry.modseq > since) {
                    // RFC 7162 §3.1.3
                    result.modified.push(uid);
                    continue;
                }
                let new = apply_flags(&entry.flags, op, &flags);
                if new == entry.flags {
                    result.updated.push((uid, entry.flags, entry.modseq));
                } else {
                    result.updated.push((uid, new.clone(), new_modseq));
                    changed.push((uid, entry, new));
                }
            }
            if changed.is_empty() {
                return Ok(result);
            }
            mbox.highest_modseq = new_modseq;
            for (uid, mut entry, new) in changed {
                match (is_seen(&entry.flags), is_seen(&new)) {
                    (true, false) => mbox.unseen += 1,
                    (false, true) => mbox.unseen = mbox.unseen.saturating_sub(1),
                    _ => {}
                }
                entry.flags = new.clone();
                entry.modseq = new_modseq;
                ctx.put_json(MESSAGES, (account.as_str(), mailbox, uid), &entry)?;
                ctx.publish(
                    &account,
                    mailbox,
                    MailboxChange::Flags {
                        uid,
                        flags: new,
                        modseq: new_modseq,
                    },
                );
            }
            put_mailbox(ctx, &account, &mbox)?;
            Ok(result)
        })
        .await
    }

    async fn expunge(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: Option<&[Uid]>,
    ) -> Result<Vec<Uid>, StoreError> {
        let account = normalize_account(account);
        let only: Option<BTreeSet<Uid>> = uids.map(|u| u.iter().copied().collect());
        self.mail_write(move |ctx| {
            let Some(mut mbox) = get_mailbox(ctx.r(), &account, mailbox)? else {
                return reject(StoreError::NoSuchMailbox(format!("#{mailbox}")));
            };
            let doomed: BTreeSet<Uid> = messages_of(ctx.r(), &account, mailbox)?
                .into_iter()
                .filter(|(uid, m)| {
                    m.flags.contains(&Flag::Deleted)
                        && only.as_ref().is_none_or(|o| o.contains(uid))
                })
                .map(|(uid, _)| uid)
                .collect();
            Ok(remove_entries(ctx, &account, &mut mbox, &doomed)?)
        })
        .await
    }

    async fn remove(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> Result<Vec<Uid>, StoreError> {
        let account = normalize_account(account);
        let uids: BTreeSet<Uid> = uids.iter().copied().collect();
        self.mail_write(move |ctx| {
            let Some(mut mbox) = get_mailbox(ctx.r(), &account, mailbox)? else {
                return reject(StoreError::NoSuchMailbox(format!("#{mailbox}")));
            };
            Ok(remove_entries(ctx, &account, &mut mbox, &uids)?)
        })
        .await
    }

    async fn copy(
        &self,
        account: &str,
        from: MailboxId,
        uids: &[Uid],
        to: &str,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError> {
        self.copy_or_move(account, from, uids, to, false).await
    }

    async fn move_messages(
        &self,
        account: &str,
        from: MailboxId,
        uids: &[Uid],
        to: &str,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError> {
        self.copy_or_move(account, from, uids, to, true).await
    }

    async fn quota_usage(&self, account: &str) -> Result<QuotaUsage, StoreError> {
        let account = normalize_account(account);
        self.mail_read(|tx| {
            if let Some(a) = get_account(tx, &account)? {
                return Ok(Some(QuotaUsage {
                    bytes: a.bytes,
                    messages: a.messages,
                }));
            }
            Ok(user_quota(tx, &account)?.map(|_| QuotaUsage::default()))
        })?
        .ok_or(StoreError::NoSuchAccount(account))
    }

    async fn watch(&self, account: &str, mailbox: MailboxId) -> Result<ChangeFeed, StoreError> {
        let account = normalize_account(account);
        if self
            .mail_read(|tx| get_mailbox(tx, &account, mailbox))?
            .is_none()
        {
            return Err(StoreError::NoSuchMailbox(format!("#{mailbox}")));
        }
        Ok(self.inner.feeds.subscribe(&account, mailbox))
    }

    async fn expunged_since(
        &self,
        account: &str,
        mailbox: MailboxId,
        since: ModSeq,
    ) -> Result<Option<Vec<Uid>>, StoreError> {
        let account = normalize_account(account);
        self.mail_read(|tx| {
            if get_mailbox(tx, &account, mailbox)?.is_none() {
                return Ok(Err(StoreError::NoSuchMailbox(format!("#{mailbox}"))));
            }
            let (horizon, records) = expunge_records(tx, &account, mailbox)?;
            // RFC 7162 §3.2.5: exact only if every expunge above `since`
            // is recorded.
            Ok(Ok(horizon.filter(|h| since >= *h).map(|_| {
                records
                    .into_iter()
                    .filter(|(_, m)| *m > since)
                    .map(|(u, _)| u)
                    .collect()
            })))
        })?
    }
}

impl Store {
    async fn copy_or_move(
        &self,
        account: &str,
        from: MailboxId,
        uids: &[Uid],
        to: &str,
        is_move: bool,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError> {
        let account = normalize_account(account);
        let to = normalize_name(to)?;
        let uids: BTreeSet<Uid> = uids.iter().copied().collect();
        self.mail_write(move |ctx| {
            if get_mailbox(ctx.r(), &account, from)?.is_none() {
                return reject(StoreError::NoSuchMailbox(format!("#{from}")));
            }
            let Some(mut dest) = mailbox_by_name(ctx.r(), &account, &to)? else {
                return reject(StoreError::NoSuchMailbox(to.clone()));
            };
            let mut entries = Vec::new();
            for &uid in &uids {
                if let Some(e) = get_message(ctx.r(), &account, from, uid)? {
                    entries.push((uid, e));
                }
            }
            if !is_move {
                let acct = get_account(ctx.r(), &account)?.unwrap_or_default();
                let bytes = entries.iter().map(|(_, e)| e.size).sum();
                over_quota(ctx.r(), &account, &acct, bytes, entries.len() as u64)?;
            }
            check_uid_space(&dest, entries.len())?;
            let moved: BTreeSet<Uid> = entries.iter().map(|(u, _)| *u).collect();
            let pairs = copy_entries(ctx, &account, entries, &mut dest)?;
            if is_move {
                // Re-read: the source may be the destination.
                if let Some(mut src) = get_mailbox(ctx.r(), &account, from)? {
                    remove_entries(ctx, &account, &mut src, &moved)?;
                }
            }
            Ok((dest.uid_validity, pairs))
        })
        .await
    }
}
