//! Property tests: random sequences of mailbox operations keep the store's
//! invariants (UIDs strictly increase per mailbox, MODSEQ never goes back,
//! quota usage equals the stored messages, blob reference counts equal the
//! entries pointing at them and unreferenced blobs are gone). Also checks
//! that the consistency check itself detects damage.

use std::collections::BTreeMap;

use bytes::Bytes;
use proptest::prelude::*;
use umail_core::{DeliveryTarget, Flag, FlagOp, Flags, MailStore, MailboxId, StoreError, Uid};
use umail_store::{NewDomain, NewUser, Store, UserUpdate};

const ACCOUNTS: [&str; 2] = ["alice@example.com", "bob@example.com"];
const NAMES: [&str; 6] = ["INBOX", "A", "A/B", "C", "Trash", "inbox/x"];
const FLAGS: [Flag; 4] = [Flag::Seen, Flag::Deleted, Flag::Flagged, Flag::Draft];

#[derive(Debug, Clone)]
enum Op {
    Append {
        acct: usize,
        mbox: usize,
        content: u8,
        seen: bool,
    },
    Deliver {
        targets: Vec<(usize, usize)>,
        content: u8,
    },
    Copy {
        acct: usize,
        from: usize,
        to: usize,
        sel: Vec<u8>,
        is_move: bool,
    },
    Flags {
        acct: usize,
        mbox: usize,
        sel: Vec<u8>,
        op: u8,
        flag: usize,
        unchanged_since: bool,
    },
    Expunge {
        acct: usize,
        mbox: usize,
        sel: Option<Vec<u8>>,
    },
    Remove {
        acct: usize,
        mbox: usize,
        sel: Vec<u8>,
    },
    Create {
        acct: usize,
        mbox: usize,
    },
    Delete {
        acct: usize,
        mbox: usize,
    },
    Rename {
        acct: usize,
        from: usize,
        to: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let acct = 0..ACCOUNTS.len();
    let mbox = || 0..NAMES.len();
    let sel = || prop::collection::vec(any::<u8>(), 0..5);
    prop_oneof![
        4 => (acct.clone(), mbox(), 0u8..12, any::<bool>())
            .prop_map(|(acct, mbox, content, seen)| Op::Append { acct, mbox, content, seen }),
        2 => (prop::collection::vec((0..ACCOUNTS.len(), mbox()), 1..4), 0u8..12)
            .prop_map(|(targets, content)| Op::Deliver { targets, content }),
        2 => (acct.clone(), mbox(), mbox(), sel(), any::<bool>())
            .prop_map(|(acct, from, to, sel, is_move)| Op::Copy { acct, from, to, sel, is_move }),
        3 => (acct.clone(), mbox(), sel(), 0u8..3, 0..FLAGS.len(), any::<bool>())
            .prop_map(|(acct, mbox, sel, op, flag, unchanged_since)| Op::Flags {
                acct, mbox, sel, op, flag, unchanged_since
            }),
        2 => (acct.clone(), mbox(), prop::option::of(sel()))
            .prop_map(|(acct, mbox, sel)| Op::Expunge { acct, mbox, sel }),
        1 => (acct.clone(), mbox(), sel()).prop_map(|(acct, mbox, sel)| Op::Remove { acct, mbox, sel }),
        1 => (acct.clone(), mbox()).prop_map(|(acct, mbox)| Op::Create { acct, mbox }),
        1 => (acct.clone(), mbox()).prop_map(|(acct, mbox)| Op::Delete { acct, mbox }),
        1 => (acct, mbox(), mbox()).prop_map(|(acct, from, to)| Op::Rename { acct, from, to }),
    ]
}

fn content(n: u8) -> Bytes {
    // A small pool of contents so that blobs are shared; sizes differ.
    Bytes::from(format!(
        "Subject: {n}\r\n\r\n{}\r\n",
        "x".repeat(usize::from(n) * 7)
    ))
}

/// What the test has seen per mailbox id: the highest UID handed out and
/// the highest MODSEQ observed.
#[derive(Default)]
struct Seen {
    last_uid: BTreeMap<(usize, MailboxId), Uid>,
    modseq: BTreeMap<(usize, MailboxId), u64>,
}

impl Seen {
    fn new_uid(&mut self, acct: usize, mbox: MailboxId, uid: Uid) -> Result<(), String> {
        let last = self.last_uid.entry((acct, mbox)).or_insert(0);
        if uid <= *last {
            return Err(format!("mailbox #{mbox}: uid {uid} after {last}"));
        }
        *last = uid;
        Ok(())
    }
}

async fn mailbox_id(store: &Store, acct: usize, name: &str) -> Option<MailboxId> {
    store
        .mailbox(ACCOUNTS[acct], name)
        .await
        .expect("mailbox lookup")
        .map(|m| m.id)
}

async fn pick(store: &Store, acct: usize, mbox: MailboxId, sel: &[u8]) -> Vec<Uid> {
    let uids: Vec<Uid> = store
        .messages(ACCOUNTS[acct], mbox)
        .await
        .expect("messages")
        .into_iter()
        .map(|m| m.uid)
        .collect();
    sel.iter()
        .map(|&s| {
            if uids.is_empty() || s == 255 {
                9999 // a UID that does not exist
            } else {
                uids[usize::from(s) % uids.len()]
            }
        })
        .collect()
}

fn acceptable(e: &StoreError) -> bool {
    matches!(
        e,
        StoreError::NoSuchMailbox(_)
            | StoreError::MailboxExists(_)
            | StoreError::OverQuota
            | StoreError::NotAllowed(_)
            | StoreError::InvalidName(_)
    )
}

async fn apply(store: &Store, seen: &mut Seen, op: &Op) -> Result<(), String> {
    let fail = |e: StoreError| -> Result<(), String> {
        if acceptable(&e) {
            Ok(())
        } else {
            Err(format!("{op:?}: unexpected {e}"))
        }
    };
    match op {
        Op::Append {
            acct,
            mbox,
            content: c,
            seen: s,
        } => {
            let flags: Flags = if *s {
                [Flag::Seen].into()
            } else {
                Flags::new()
            };
            match store
                .append(ACCOUNTS[*acct], NAMES[*mbox], content(*c), flags, 0)
                .await
            {
                Ok(out) => {
                    let id = mailbox_id(store, *acct, NAMES[*mbox])
                        .await
                        .ok_or("vanished")?;
                    seen.new_uid(*acct, id, out.uid)?;
                }
                Err(e) => fail(e)?,
            }
        }
        Op::Deliver {
            targets,
            content: c,
        } => {
            let ts: Vec<DeliveryTarget> = targets
                .iter()
                .map(|(a, m)| DeliveryTarget {
                    account: ACCOUNTS[*a].into(),
                    mailbox: NAMES[*m].into(),
                    flags: Flags::new(),
                })
                .collect();
            let results = store
                .deliver(content(*c), 0, &ts)
                .await
                .map_err(|e| format!("deliver: {e}"))?;
            if results.len() != ts.len() {
                return Err("one result per target".into());
            }
            for ((a, m), r) in targets.iter().zip(results) {
                match r {
                    Ok(out) => {
                        let id = mailbox_id(store, *a, NAMES[*m]).await.ok_or("vanished")?;
                        seen.new_uid(*a, id, out.uid)?;
                    }
                    Err(e) => fail(e)?,
                }
            }
        }
        Op::Copy {
            acct,
            from,
            to,
            sel,
            is_move,
        } => {
            let Some(src) = mailbox_id(store, *acct, NAMES[*from]).await else {
                return Ok(());
            };
            let uids = pick(store, *acct, src, sel).await;
            let r = if *is_move {
                store
                    .move_messages(ACCOUNTS[*acct], src, &uids, NAMES[*to])
                    .await
            } else {
                store.copy(ACCOUNTS[*acct], src, &uids, NAMES[*to]).await
            };
            match r {
                Ok((_, pairs)) => {
                    let dest = mailbox_id(store, *acct, NAMES[*to])
                        .await
                        .ok_or("vanished")?;
                    for (_, new) in pairs {
                        seen.new_uid(*acct, dest, new)?;
                    }
                }
                Err(e) => fail(e)?,
            }
        }
        Op::Flags {
            acct,
            mbox,
            sel,
            op: o,
            flag,
            unchanged_since,
        } => {
            let Some(id) = mailbox_id(store, *acct, NAMES[*mbox]).await else {
                return Ok(());
            };
            let uids = pick(store, *acct, id, sel).await;
            let fop = [FlagOp::Set, FlagOp::Add, FlagOp::Remove][usize::from(*o)];
            let since = if *unchanged_since {
                Some(seen.modseq.get(&(*acct, id)).copied().unwrap_or(0) / 2)
            } else {
                None
            };
            let flags: Flags = [FLAGS[*flag].clone()].into();
            match store
                .update_flags(ACCOUNTS[*acct], id, &uids, fop, &flags, since)
                .await
            {
                Ok(up) => {
                    for (uid, f, _) in &up.updated {
                        let expected_has = fop != FlagOp::Remove;
                        if f.contains(&FLAGS[*flag]) != expected_has {
                            return Err(format!("uid {uid}: flags {f:?} after {fop:?}"));
                        }
                    }
                }
                Err(e) => fail(e)?,
            }
        }
        Op::Expunge { acct, mbox, sel } => {
            let Some(id) = mailbox_id(store, *acct, NAMES[*mbox]).await else {
                return Ok(());
            };
            let uids = match sel {
                Some(s) => Some(pick(store, *acct, id, s).await),
                None => None,
            };
            let before = store
                .messages(ACCOUNTS[*acct], id)
                .await
                .map_err(|e| e.to_string())?;
            match store.expunge(ACCOUNTS[*acct], id, uids.as_deref()).await {
                Ok(removed) => {
                    let expected: Vec<Uid> = before
                        .iter()
                        .filter(|m| {
                            m.flags.contains(&Flag::Deleted)
                                && uids.as_ref().is_none_or(|u| u.contains(&m.uid))
                        })
                        .map(|m| m.uid)
                        .collect();
                    if removed != expected {
                        return Err(format!("expunged {removed:?}, expected {expected:?}"));
                    }
                }
                Err(e) => fail(e)?,
            }
        }
        Op::Remove { acct, mbox, sel } => {
            let Some(id) = mailbox_id(store, *acct, NAMES[*mbox]).await else {
                return Ok(());
            };
            let uids = pick(store, *acct, id, sel).await;
            if let Err(e) = store.remove(ACCOUNTS[*acct], id, &uids).await {
                fail(e)?;
            }
        }
        Op::Create { acct, mbox } => {
            if let Err(e) = store
                .create_mailbox(ACCOUNTS[*acct], NAMES[*mbox], None)
                .await
            {
                fail(e)?;
            }
        }
        Op::Delete { acct, mbox } => {
            if let Err(e) = store.delete_mailbox(ACCOUNTS[*acct], NAMES[*mbox]).await {
                fail(e)?;
            }
        }
        Op::Rename { acct, from, to } => {
            if let Err(e) = store
                .rename_mailbox(ACCOUNTS[*acct], NAMES[*from], NAMES[*to])
                .await
            {
                fail(e)?;
            }
        }
    }
    Ok(())
}

/// Checks after every operation.
async fn check(store: &Store, seen: &mut Seen) -> Result<(), String> {
    store.check_invariants()?;
    for (acct, account) in ACCOUNTS.iter().enumerate() {
        let usage = store
            .quota_usage(account)
            .await
            .map_err(|e| e.to_string())?;
        let recount = store.recount_usage(account).map_err(|e| e.to_string())?;
        if usage != recount {
            return Err(format!(
                "{account}: usage {usage:?} but messages {recount:?}"
            ));
        }
        let quota = store
            .get_user(&account.parse().map_err(|_| "address")?)
            .map_err(|e| e.to_string())?
            .ok_or("user vanished")?
            .quota;
        if quota.would_exceed(&usage, 0, 0) {
            return Err(format!("{account}: usage {usage:?} above quota {quota:?}"));
        }
        for m in store
            .list_mailboxes(account)
            .await
            .map_err(|e| e.to_string())?
        {
            let key = (acct, m.id);
            let prev = seen.modseq.insert(key, m.highest_modseq).unwrap_or(0);
            if m.highest_modseq < prev {
                return Err(format!(
                    "{account} {}: HIGHESTMODSEQ went back from {prev} to {}",
                    m.name, m.highest_modseq
                ));
            }
            if let Some(&last) = seen.last_uid.get(&key)
                && m.uid_next <= last
            {
                return Err(format!(
                    "{account} {}: UIDNEXT {} not above {last}",
                    m.name, m.uid_next
                ));
            }
            let metas = store
                .messages(account, m.id)
                .await
                .map_err(|e| e.to_string())?;
            if !metas.windows(2).all(|w| w[0].uid < w[1].uid) {
                return Err(format!("{account} {}: UIDs not ascending", m.name));
            }
            if metas.iter().any(|x| x.modseq > m.highest_modseq) {
                return Err(format!(
                    "{account} {}: a MODSEQ above HIGHESTMODSEQ",
                    m.name
                ));
            }
        }
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), String> {
    let store = Store::open_in_memory().map_err(|e| e.to_string())?;
    store
        .add_domain(NewDomain::new("example.com".parse().map_err(|_| "domain")?))
        .await
        .map_err(|e| e.to_string())?;
    for a in ACCOUNTS {
        store
            .add_user(NewUser::new(a.parse().map_err(|_| "address")?, "pw"))
            .await
            .map_err(|e| e.to_string())?;
    }
    // Bob has a small quota so that OverQuota paths are exercised.
    store
        .update_user(
            &ACCOUNTS[1].parse().map_err(|_| "address")?,
            UserUpdate {
                quota_bytes: Some(400),
                max_messages: Some(6),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut seen = Seen::default();
    check(&store, &mut seen).await?;
    for (i, op) in ops.iter().enumerate() {
        apply(&store, &mut seen, op)
            .await
            .map_err(|e| format!("op {i}: {e}"))?;
        check(&store, &mut seen)
            .await
            .map_err(|e| format!("after op {i} {op:?}: {e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_keep_invariants(ops in prop::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = rt.block_on(run(ops));
        prop_assert!(result.is_ok(), "{}", result.err().unwrap_or_default());
    }
}

/// The consistency check is not vacuous: damage made directly in the file
/// is reported.
#[tokio::test]
async fn check_invariants_detects_damage() {
    use redb::{ReadableDatabase, ReadableTable, TableDefinition};
    const BLOB_REFS: TableDefinition<&str, u64> = TableDefinition::new("blob_refs");
    const ACCOUNTS_T: TableDefinition<&str, &[u8]> = TableDefinition::new("accounts");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("damaged.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .add_domain(NewDomain::new("example.com".parse().unwrap()))
            .await
            .unwrap();
        store
            .add_user(NewUser::new(ACCOUNTS[0].parse().unwrap(), "pw"))
            .await
            .unwrap();
        store
            .append(ACCOUNTS[0], "INBOX", content(3), Flags::new(), 0)
            .await
            .unwrap();
        store.check_invariants().unwrap();
    }
    // Bump a reference count behind the store's back.
    {
        let db = redb::Database::open(&path).unwrap();
        let blob = {
            let r = db.begin_read().unwrap();
            let t = r.open_table(BLOB_REFS).unwrap();
            let first = t.first().unwrap().unwrap();
            first.0.value().to_string()
        };
        let w = db.begin_write().unwrap();
        w.open_table(BLOB_REFS)
            .unwrap()
            .insert(blob.as_str(), 5u64)
            .unwrap();
        w.commit().unwrap();
    }
    {
        let store = Store::open(&path).unwrap();
        let err = store.check_invariants().unwrap_err();
        assert!(err.contains("reference count"), "{err}");
    }
    // Damage the quota usage instead.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(ACCOUNTS_T).unwrap();
            let raw = t.get(ACCOUNTS[0]).unwrap().unwrap().value().to_vec();
            let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
            v["bytes"] = serde_json::json!(1);
            let bytes = serde_json::to_vec(&v).unwrap();
            t.insert(ACCOUNTS[0], bytes.as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let store = Store::open(&path).unwrap();
    let err = store.check_invariants().unwrap_err();
    assert!(err.contains("quota usage"), "{err}");
}
