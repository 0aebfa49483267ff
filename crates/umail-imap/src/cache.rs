//! A bounded, process-wide cache of [`HeaderSummary`]s for header-only
//! SEARCH keys (SUBJECT, FROM, ...), shared by the sessions of one
//! [`ImapServer`](crate::ImapServer).
//!
//! Stored messages never change, so a summary stays right for as long as
//! its key names the same message. The key is the message's identity in
//! the store: `(account, mailbox id, UIDVALIDITY, UID)`. A mailbox id is
//! never reused within an account and UIDs are never reused while the
//! UIDVALIDITY stays the same (the [`MailStore`](umail_core::MailStore)
//! contract); UIDVALIDITY is in the key as well so that a store that
//! reassigns UIDs (and says so by a new UIDVALIDITY) is never answered
//! from old entries. The cache belongs to one server, and so to one store:
//! two stores in one process never share entries.
//!
//! Entries are not removed on expunge: an expunged UID is never asked for
//! again, and the entry leaves with the oldest ones. Memory is bounded by
//! an approximate byte count; the oldest entries go first (FIFO), which
//! costs nothing to maintain on hits.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use umail_core::{MailboxId, Uid};

use crate::search::HeaderSummary;

/// Default bound of a server's cache, in (approximate) bytes: room for
/// the summaries of some tens of thousands of messages.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// A summary larger than this is used but not kept (a hostile header with
/// thousands of `To` fields must not push out everything else).
const MAX_ENTRY_BYTES: usize = 64 << 10;

/// Per-entry bookkeeping counted against the bound (map slots, order
/// queue, `Arc` header).
const ENTRY_OVERHEAD: usize = 96;

/// One mailbox incarnation: the part of the key shared by its messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MailboxKey {
    /// The account, as the session names it to the store.
    pub account: String,
    /// The mailbox id.
    pub mailbox: MailboxId,
    /// The mailbox's UIDVALIDITY when the session selected it.
    pub uid_validity: u32,
}

#[derive(Debug, Default)]
struct Inner {
    mailboxes: HashMap<Arc<MailboxKey>, HashMap<Uid, Arc<HeaderSummary>>>,
    /// Insertion order, oldest first, with each entry's cost.
    order: VecDeque<(Arc<MailboxKey>, Uid, usize)>,
    bytes: usize,
}

/// The cache; see the module documentation.
#[derive(Debug)]
pub struct HeaderCache {
    inner: Mutex<Inner>,
    limit: usize,
}

impl Default for HeaderCache {
    fn default() -> HeaderCache {
        HeaderCache::new(DEFAULT_CACHE_BYTES)
    }
}

impl HeaderCache {
    /// A cache holding about `limit` bytes of summaries at most.
    pub fn new(limit: usize) -> HeaderCache {
        HeaderCache {
            inner: Mutex::new(Inner::default()),
            limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent map (every
        // update is a single insert/remove), so a poisoned lock is usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached summaries of `uids` in `mailbox`, in order (`None` for
    /// a miss). One lock for the whole batch.
    pub fn get_many(&self, mailbox: &MailboxKey, uids: &[Uid]) -> Vec<Option<Arc<HeaderSummary>>> {
        let inner = self.lock();
        match inner.mailboxes.get(mailbox) {
            Some(map) => uids.iter().map(|u| map.get(u).cloned()).collect(),
            None => vec![None; uids.len()],
        }
    }

    /// Keeps the summaries of `entries` (UIDs of `mailbox`), evicting the
    /// oldest entries beyond the bound.
    pub fn insert_many(&self, mailbox: &MailboxKey, entries: &[(Uid, Arc<HeaderSummary>)]) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let key = match inner.mailboxes.get_key_value(mailbox) {
            Some((k, _)) => Arc::clone(k),
            None => Arc::new(mailbox.clone()),
        };
        for (uid, summary) in entries {
            let cost = summary.cost() + ENTRY_OVERHEAD;
            if cost > MAX_ENTRY_BYTES || cost > self.limit {
                continue;
            }
            let map = inner.mailboxes.entry(Arc::clone(&key)).or_default();
            if map.contains_key(uid) {
                continue;
            }
            map.insert(*uid, Arc::clone(summary));
            inner.order.push_back((Arc::clone(&key), *uid, cost));
            inner.bytes += cost;
            while inner.bytes > self.limit {
                let Some((k, u, c)) = inner.order.pop_front() else {
                    break;
                };
                inner.bytes -= c;
                if let Some(map) = inner.mailboxes.get_mut(&k) {
                    map.remove(&u);
                    if map.is_empty() {
                        inner.mailboxes.remove(&k);
                    }
                }
            }
        }
    }

    /// Number of summaries kept.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate bytes kept (never above the bound).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::SearchKey;
    use crate::search::{Candidate, Content, SearchContext, matches};
    use umail_core::Flags;

    fn key(account: &str, mailbox: MailboxId, uid_validity: u32) -> MailboxKey {
        MailboxKey {
            account: account.into(),
            mailbox,
            uid_validity,
        }
    }

    fn summary(subject: &str) -> Arc<HeaderSummary> {
        Arc::new(HeaderSummary::parse(
            format!("Subject: {subject}\r\nFrom: a@example.com\r\n\r\n").as_bytes(),
        ))
    }

    fn subject_is(s: &Option<Arc<HeaderSummary>>, needle: &str) -> bool {
        let flags = Flags::new();
        let cand = Candidate {
            seq: 1,
            uid: 1,
            flags: &flags,
            modseq: 1,
            internal_date: 0,
            size: 1,
        };
        let ctx = SearchContext {
            exists: 1,
            max_uid: 1,
            saved: &[],
        };
        matches(
            &SearchKey::Subject(needle.as_bytes().to_vec()),
            &cand,
            &ctx,
            &mut Content::summary(s.clone()),
        )
    }

    #[test]
    fn same_uid_in_other_mailboxes_and_incarnations_never_mixes() {
        let cache = HeaderCache::new(1 << 20);
        let inbox = key("alice@example.com", 1, 100);
        let other = key("alice@example.com", 2, 100);
        let recreated = key("alice@example.com", 1, 101);
        let bob = key("bob@example.com", 1, 100);
        cache.insert_many(&inbox, &[(7, summary("apples"))]);
        cache.insert_many(&other, &[(7, summary("pears"))]);
        cache.insert_many(&bob, &[(7, summary("plums"))]);
        assert!(subject_is(&cache.get_many(&inbox, &[7])[0], "apples"));
        assert!(!subject_is(&cache.get_many(&inbox, &[7])[0], "pears"));
        assert!(subject_is(&cache.get_many(&other, &[7])[0], "pears"));
        assert!(subject_is(&cache.get_many(&bob, &[7])[0], "plums"));
        // A new UIDVALIDITY is a different mailbox: a miss, not "apples".
        assert!(cache.get_many(&recreated, &[7])[0].is_none());
        cache.insert_many(&recreated, &[(7, summary("cherries"))]);
        assert!(subject_is(&cache.get_many(&recreated, &[7])[0], "cherries"));
        assert!(subject_is(&cache.get_many(&inbox, &[7])[0], "apples"));
        // A second insert for a kept key does not replace it.
        cache.insert_many(&inbox, &[(7, summary("figs"))]);
        assert!(subject_is(&cache.get_many(&inbox, &[7])[0], "apples"));
        assert_eq!(cache.len(), 4);
    }

    #[test]
    fn memory_stays_under_the_bound_and_oldest_go_first() {
        let one = summary("x").cost() + ENTRY_OVERHEAD;
        let cache = HeaderCache::new(one * 10);
        let mbox = key("a", 1, 1);
        for uid in 1..=100u32 {
            cache.insert_many(&mbox, &[(uid, summary("x"))]);
            assert!(cache.bytes() <= one * 10);
        }
        assert_eq!(cache.len(), 10);
        let got = cache.get_many(&mbox, &[1, 90, 91, 100]);
        assert!(got[0].is_none() && got[1].is_none());
        assert!(got[2].is_some() && got[3].is_some());
        // An entry larger than the per-entry bound is not kept.
        let big = Arc::new(HeaderSummary::parse(
            format!("To: {}\r\n\r\n", "b@example.com, ".repeat(10_000)).as_bytes(),
        ));
        let cache = HeaderCache::default();
        cache.insert_many(&mbox, &[(1, big)]);
        assert!(cache.is_empty());
    }
}
