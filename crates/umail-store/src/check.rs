//! The consistency check over every table.

use std::collections::{BTreeMap, BTreeSet};

use umail_core::{Priority, QueueEntry, QueueState};

use crate::Store;
use crate::db::{
    ACCOUNTS, ADMINS, ALIASES, BLOB_REFS, BLOBS, DEPARTMENTS, DOMAIN_ALIASES, DOMAINS, DbErr,
    LISTS, MAILBOX_NAMES, MAILBOXES, MESSAGES, QUEUE, QUEUE_CONTENT, Tx, USERS, dec,
};
use crate::directory::UserRec;
use crate::mail::{AccountRec, MailboxRec, MessageRec, all_expunge_records, blob_id};

/// Most problems listed in one report.
const MAX_PROBLEMS: usize = 50;

#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, p: String) {
        if self.0.len() < MAX_PROBLEMS {
            self.0.push(p);
        }
    }
}

#[derive(Default)]
struct Counted {
    messages: u32,
    unseen: u32,
    size: u64,
}

impl Store {
    /// Checks every invariant the store keeps, reading one consistent
    /// snapshot (it never blocks writers). Operators can run it at any time,
    /// for example after restoring a backup; its cost is a full scan that
    /// also re-hashes every message blob.
    ///
    /// Checked: each account's quota usage equals the sum of its messages'
    /// sizes and count; each mailbox's message/unseen/size counters match its
    /// entries, every UID is below UIDNEXT and every MODSEQ at most
    /// HIGHESTMODSEQ; every expunge record (QRESYNC) belongs to an existing
    /// mailbox that has a horizon, names a UID below UIDNEXT that no live
    /// message has, and carries a MODSEQ above the horizon and at most
    /// HIGHESTMODSEQ; the name index and the mailbox records agree; every
    /// entry's blob exists, every blob's reference count equals the number
    /// of entries pointing to it, no blob is unreferenced and each blob's
    /// content matches its blake3 id; every queue entry has its content, one
    /// status per recipient, and is in the due index exactly when active or
    /// deferred; directory records point at existing domains, departments
    /// and users; remote accounts belong to users and DomainPOP accounts to
    /// hosted domains; each seen set's count and age index match its ids.
    ///
    /// Returns `Err` with a description of the problems found (at most 50).
    pub fn check_invariants(&self) -> Result<(), String> {
        let tx = self.read().map_err(|e| e.0)?;
        let mut p = Problems::default();
        check_mail(Tx::Read(&tx), &mut p).map_err(|e| e.0)?;
        check_queue(Tx::Read(&tx), &mut p).map_err(|e| e.0)?;
        check_directory(Tx::Read(&tx), &mut p).map_err(|e| e.0)?;
        crate::collection::check(Tx::Read(&tx), &mut |problem| p.add(problem)).map_err(|e| e.0)?;
        if p.0.is_empty() {
            Ok(())
        } else {
            Err(p.0.join("\n"))
        }
    }
}

fn check_mail(tx: Tx<'_>, p: &mut Problems) -> Result<(), DbErr> {
    let mut accounts: BTreeMap<String, AccountRec> = BTreeMap::new();
    tx.scan_all(ACCOUNTS, |k, v| {
        accounts.insert(k.to_string(), dec(v)?);
        Ok(true)
    })?;
    let mut mailboxes: BTreeMap<(String, u64), MailboxRec> = BTreeMap::new();
    tx.scan_all(MAILBOXES, |(a, id), v| {
        mailboxes.insert((a.to_string(), id), dec(v)?);
        Ok(true)
    })?;
    let mut names: BTreeMap<(String, String), u64> = BTreeMap::new();
    tx.scan_all(MAILBOX_NAMES, |(a, n), id| {
        names.insert((a.to_string(), n.to_string()), id);
        Ok(true)
    })?;

    for ((account, id), m) in &mailboxes {
        if m.id != *id {
            p.add(format!("{account}: mailbox #{id} records id {}", m.id));
        }
        match accounts.get(account) {
            None => p.add(format!("{account}: mailbox {} without account", m.name)),
            Some(a) if *id > a.next_mailbox_id => p.add(format!(
                "{account}: mailbox #{id} above the id counter {}",
                a.next_mailbox_id
            )),
            _ => {}
        }
        if names.get(&(account.clone(), m.name.clone())) != Some(id) {
            p.add(format!(
                "{account}: name index misses mailbox {} #{id}",
                m.name
            ));
        }
        if m.uid_validity == 0 || m.uid_next == 0 {
            p.add(format!(
                "{account}: mailbox {} has a zero UIDVALIDITY or UIDNEXT",
                m.name
            ));
        }
    }
    for ((account, name), id) in &names {
        match mailboxes.get(&(account.clone(), *id)) {
            Some(m) if &m.name == name => {}
            _ => p.add(format!(
                "{account}: name {name} points at a wrong mailbox #{id}"
            )),
        }
    }

    let mut live: BTreeSet<(String, u64, u32)> = BTreeSet::new();
    let mut counted: BTreeMap<(String, u64), Counted> = BTreeMap::new();
    let mut usage: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut refs: BTreeMap<String, u64> = BTreeMap::new();
    tx.scan_all(MESSAGES, |(account, id, uid), v| {
        let m: MessageRec = dec(v)?;
        let key = (account.to_string(), id);
        match mailboxes.get(&key) {
            None => p.add(format!("{account}: message {uid} in missing mailbox #{id}")),
            Some(mb) => {
                if uid == 0 || uid >= mb.uid_next {
                    p.add(format!(
                        "{account}: {} uid {uid} not below UIDNEXT {}",
                        mb.name, mb.uid_next
                    ));
                }
                if m.modseq > mb.highest_modseq || m.modseq == 0 {
                    p.add(format!(
                        "{account}: {} uid {uid} MODSEQ {} above HIGHESTMODSEQ {}",
                        mb.name, m.modseq, mb.highest_modseq
                    ));
                }
            }
        }
        live.insert((account.to_string(), id, uid));
        let c = counted.entry(key).or_default();
        c.messages += 1;
        if !m.flags.contains(&umail_core::Flag::Seen) {
            c.unseen += 1;
        }
        c.size += m.size;
        let u = usage.entry(account.to_string()).or_default();
        u.0 += m.size;
        u.1 += 1;
        *refs.entry(m.blob).or_default() += 1;
        Ok(true)
    })?;
    for (key, m) in &mailboxes {
        let zero = Counted::default();
        let c = counted.get(key).unwrap_or(&zero);
        if (c.messages, c.unseen, c.size) != (m.messages, m.unseen, m.size) {
            p.add(format!(
                "{}: {} counters (messages {}, unseen {}, size {}) but entries (messages {}, unseen {}, size {})",
                key.0, m.name, m.messages, m.unseen, m.size, c.messages, c.unseen, c.size
            ));
        }
    }
    for (account, a) in &accounts {
        let (bytes, messages) = usage.get(account).copied().unwrap_or_default();
        if (a.bytes, a.messages) != (bytes, messages) {
            p.add(format!(
                "{account}: quota usage {} bytes / {} messages but entries hold {bytes} / {messages}",
                a.bytes, a.messages
            ));
        }
    }
    for account in usage.keys() {
        if !accounts.contains_key(account) {
            p.add(format!("{account}: messages without an account record"));
        }
    }

    check_expunge_records(tx, &mailboxes, &live, p)?;

    let mut stored_refs: BTreeMap<String, u64> = BTreeMap::new();
    tx.scan_all(BLOB_REFS, |k, v| {
        stored_refs.insert(k.to_string(), v);
        Ok(true)
    })?;
    let mut blobs: BTreeSet<String> = BTreeSet::new();
    tx.scan_all(BLOBS, |k, v| {
        if blob_id(v) != k {
            p.add(format!("blob {k}: content does not match its id"));
        }
        blobs.insert(k.to_string());
        Ok(true)
    })?;
    for (blob, n) in &refs {
        if stored_refs.get(blob) != Some(n) {
            p.add(format!(
                "blob {blob}: {n} entries but reference count {:?}",
                stored_refs.get(blob)
            ));
        }
        if !blobs.contains(blob) {
            p.add(format!("blob {blob}: referenced but missing"));
        }
    }
    for (blob, n) in &stored_refs {
        if !refs.contains_key(blob) {
            p.add(format!("blob {blob}: reference count {n} but no entries"));
        }
    }
    for blob in &blobs {
        if !refs.contains_key(blob) {
            p.add(format!("blob {blob}: stored but unreferenced"));
        }
    }
    Ok(())
}

/// QRESYNC expunge records against the mailboxes and live messages.
fn check_expunge_records(
    tx: Tx<'_>,
    mailboxes: &BTreeMap<(String, u64), MailboxRec>,
    live: &BTreeSet<(String, u64, u32)>,
    p: &mut Problems,
) -> Result<(), DbErr> {
    let records = all_expunge_records(tx)?;
    for ((account, id, uid), modseq) in &records {
        let Some(mb) = mailboxes.get(&(account.clone(), *id)) else {
            p.add(format!(
                "{account}: expunge record {uid} of missing mailbox #{id}"
            ));
            continue;
        };
        if *modseq > mb.highest_modseq {
            p.add(format!(
                "{account}: {} expunge record {uid} MODSEQ {modseq} above HIGHESTMODSEQ {}",
                mb.name, mb.highest_modseq
            ));
        }
        if *uid == 0 {
            continue;
        }
        match records.get(&(account.clone(), *id, 0)) {
            None => p.add(format!(
                "{account}: {} has expunge records but no horizon",
                mb.name
            )),
            Some(h) if modseq <= h => p.add(format!(
                "{account}: {} expunge record {uid} MODSEQ {modseq} not above the horizon {h}",
                mb.name
            )),
            Some(_) => {}
        }
        if *uid >= mb.uid_next {
            p.add(format!(
                "{account}: {} expunge record {uid} not below UIDNEXT {}",
                mb.name, mb.uid_next
            ));
        }
        if live.contains(&(account.clone(), *id, *uid)) {
            p.add(format!(
                "{account}: {} uid {uid} is both live and expunged",
                mb.name
            ));
        }
    }
    Ok(())
}

fn check_queue(tx: Tx<'_>, p: &mut Problems) -> Result<(), DbErr> {
    let mut entries: BTreeMap<u64, QueueEntry> = BTreeMap::new();
    tx.scan_all(QUEUE, |k, v| {
        entries.insert(k, dec(v)?);
        Ok(true)
    })?;
    let mut content: BTreeSet<u64> = BTreeSet::new();
    tx.scan_all(QUEUE_CONTENT, |k, _| {
        content.insert(k);
        Ok(true)
    })?;
    // (next attempt, id) → the priorities whose index holds it.
    let mut due: BTreeMap<(i64, u64), Vec<Priority>> = BTreeMap::new();
    for p in [Priority::High, Priority::Normal, Priority::Low] {
        tx.scan_all(crate::queue::due_index(p), |k, _| {
            due.entry(k).or_default().push(p);
            Ok(true)
        })?;
    }
    let last = tx.meta("queue_id")?;
    for (id, e) in &entries {
        if e.id.0 != *id {
            p.add(format!("queue {id}: records id {}", e.id));
        }
        if *id > last {
            p.add(format!("queue {id}: above the id counter {last}"));
        }
        if !content.contains(id) {
            p.add(format!("queue {id}: content missing"));
        }
        if e.status.len() != e.envelope.recipients.len() {
            p.add(format!("queue {id}: status count differs from recipients"));
        }
        let indexed = due.get(&(e.next_attempt, *id));
        let should = matches!(e.state, QueueState::Active | QueueState::Deferred);
        if indexed.is_some() != should {
            p.add(format!(
                "queue {id}: due index {}, state {:?}",
                indexed.is_some(),
                e.state
            ));
        }
        if let Some(found) = indexed
            && found.as_slice() != [e.priority]
        {
            p.add(format!(
                "queue {id}: in the due indexes of {found:?}, priority {}",
                e.priority
            ));
        }
    }
    for id in &content {
        if !entries.contains_key(id) {
            p.add(format!("queue {id}: content without entry"));
        }
    }
    for (at, id) in due.keys() {
        if entries.get(id).is_none_or(|e| e.next_attempt != *at) {
            p.add(format!("queue {id}: stale due index at {at}"));
        }
    }
    Ok(())
}

fn check_directory(tx: Tx<'_>, p: &mut Problems) -> Result<(), DbErr> {
    let mut domains: BTreeSet<String> = BTreeSet::new();
    tx.scan_all(DOMAINS, |k, _| {
        domains.insert(k.to_string());
        Ok(true)
    })?;
    tx.scan_all(DOMAIN_ALIASES, |k, v| {
        if domains.contains(k) {
            p.add(format!("domain alias {k} is also hosted"));
        }
        if !domains.contains(v) {
            p.add(format!("domain alias {k} points at missing {v}"));
        }
        Ok(true)
    })?;
    let mut depts: BTreeSet<(String, String)> = BTreeSet::new();
    tx.scan_all(DEPARTMENTS, |(d, path), _| {
        depts.insert((d.to_string(), path.to_string()));
        Ok(true)
    })?;
    for (d, path) in &depts {
        if !domains.contains(d) {
            p.add(format!("department {path} in missing domain {d}"));
        }
        if let Some((parent, _)) = path.rsplit_once('/')
            && !depts.contains(&(d.clone(), parent.to_string()))
        {
            p.add(format!("department {path} in {d} has no parent"));
        }
    }
    let mut users: BTreeSet<String> = BTreeSet::new();
    tx.scan_all(USERS, |(d, l), v| {
        let u: UserRec = dec(v)?;
        if !domains.contains(d) {
            p.add(format!("user {l}@{d} in missing domain"));
        }
        if u.address.lookup_key() != format!("{l}@{d}") {
            p.add(format!("user {l}@{d} records address {}", u.address));
        }
        if let Some(dept) = &u.department
            && !depts.contains(&(d.to_string(), dept.clone()))
        {
            p.add(format!("user {l}@{d} in missing department {dept}"));
        }
        users.insert(format!("{l}@{d}"));
        Ok(true)
    })?;
    for (table, what) in [(ALIASES, "alias"), (LISTS, "list")] {
        tx.scan_all(table, |(d, l), _| {
            if !domains.contains(d) {
                p.add(format!("{what} {l}@{d} in missing domain"));
            }
            if users.contains(&format!("{l}@{d}")) {
                p.add(format!("{what} {l}@{d} shadows a user"));
            }
            Ok(true)
        })?;
    }
    tx.scan_all(ADMINS, |k, _| {
        if !users.contains(k) {
            p.add(format!("roles for missing user {k}"));
        }
        Ok(true)
    })?;
    let mut accounts = Vec::new();
    tx.scan_all(ACCOUNTS, |k, _| {
        accounts.push(k.to_string());
        Ok(true)
    })?;
    for a in accounts {
        if !users.contains(&a) {
            p.add(format!("mail account {a} without a user"));
        }
    }
    Ok(())
}
