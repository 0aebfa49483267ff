//! Expunge records for QRESYNC (RFC 7162): random operations keep every
//! record's MODSEQ at most HIGHESTMODSEQ, never name a live UID, and
//! `expunged_since` returns exactly the UIDs removed after a given MODSEQ;
//! records survive a reopen, go away with their mailbox, and damage to them
//! is reported by `check_invariants`. A mailbox without a horizon (made
//! by an older version) answers `None` instead of lying.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use proptest::prelude::*;
use umail_core::{Flag, FlagOp, Flags, MailStore, MailboxId, ModSeq, Uid};
use umail_store::{NewDomain, NewUser, Store};

const ACCOUNT: &str = "alice@example.com";
const EXPUNGED: redb::TableDefinition<(&str, u64, u32), u64> =
    redb::TableDefinition::new("expunged");

#[derive(Debug, Clone)]
enum Op {
    Append(u8),
    Delete(Vec<u8>),
    Expunge,
    UidExpunge(Vec<u8>),
    Remove(Vec<u8>),
    MoveOut(Vec<u8>),
    MoveIn,
    RenameInbox,
}

fn op() -> impl Strategy<Value = Op> {
    let sel = || prop::collection::vec(any::<u8>(), 0..4);
    prop_oneof![
        5 => any::<u8>().prop_map(Op::Append),
        3 => sel().prop_map(Op::Delete),
        2 => Just(Op::Expunge),
        1 => sel().prop_map(Op::UidExpunge),
        2 => sel().prop_map(Op::Remove),
        1 => sel().prop_map(Op::MoveOut),
        1 => Just(Op::MoveIn),
        1 => Just(Op::RenameInbox),
    ]
}

async fn new_store(store: &Store) -> Result<(), String> {
    store
        .add_domain(NewDomain::new("example.com".parse().map_err(|_| "domain")?))
        .await
        .map_err(|e| e.to_string())?;
    store
        .add_user(NewUser::new(ACCOUNT.parse().map_err(|_| "address")?, "pw"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

async fn inbox(store: &Store) -> Result<(MailboxId, ModSeq), String> {
    let i = store
        .mailbox(ACCOUNT, "INBOX")
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no INBOX")?;
    Ok((i.id, i.highest_modseq))
}

async fn live(store: &Store, id: MailboxId) -> Result<Vec<Uid>, String> {
    Ok(store
        .messages(ACCOUNT, id)
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|m| m.uid)
        .collect())
}

fn pick(uids: &[Uid], sel: &[u8]) -> Vec<Uid> {
    if uids.is_empty() {
        return Vec::new();
    }
    sel.iter()
        .map(|b| uids[usize::from(*b) % uids.len()])
        .collect()
}

/// What the model expects: INBOX's mailbox id and its expunged UIDs with
/// the HIGHESTMODSEQ after the expunge that removed them.
#[derive(Default)]
struct Model {
    expunged: BTreeMap<Uid, ModSeq>,
}

async fn apply(store: &Store, model: &mut Model, op: &Op) -> Result<(), String> {
    let (id, _) = inbox(store).await?;
    let uids = live(store, id).await?;
    let e = |e: umail_core::StoreError| e.to_string();
    let removed: Vec<Uid> = match op {
        Op::Append(n) => {
            store
                .append(
                    ACCOUNT,
                    "INBOX",
                    Bytes::from(vec![b'a' + n % 5; 3]),
                    Flags::new(),
                    0,
                )
                .await
                .map_err(e)?;
            Vec::new()
        }
        Op::Delete(sel) => {
            let flags: Flags = [Flag::Deleted].into();
            store
                .update_flags(ACCOUNT, id, &pick(&uids, sel), FlagOp::Add, &flags, None)
                .await
                .map_err(e)?;
            Vec::new()
        }
        Op::Expunge => store.expunge(ACCOUNT, id, None).await.map_err(e)?,
        Op::UidExpunge(sel) => store
            .expunge(ACCOUNT, id, Some(&pick(&uids, sel)))
            .await
            .map_err(e)?,
        Op::Remove(sel) => store
            .remove(ACCOUNT, id, &pick(&uids, sel))
            .await
            .map_err(e)?,
        Op::MoveOut(sel) => {
            let picked = pick(&uids, sel);
            let (_, pairs) = store
                .move_messages(ACCOUNT, id, &picked, "Archive")
                .await
                .map_err(e)?;
            pairs.into_iter().map(|p| p.0).collect()
        }
        Op::MoveIn => {
            let archive = store
                .mailbox(ACCOUNT, "Archive")
                .await
                .map_err(e)?
                .ok_or("no Archive")?;
            let there = live(store, archive.id).await?;
            store
                .move_messages(ACCOUNT, archive.id, &there, "INBOX")
                .await
                .map_err(e)?;
            Vec::new()
        }
        Op::RenameInbox => {
            let name = format!("Old{}", model.expunged.len() + uids.len());
            if store.mailbox(ACCOUNT, &name).await.map_err(e)?.is_some() {
                return Ok(());
            }
            store
                .rename_mailbox(ACCOUNT, "INBOX", &name)
                .await
                .map_err(e)?;
            uids.clone()
        }
    };
    let (_, highest) = inbox(store).await?;
    for uid in removed {
        model.expunged.insert(uid, highest);
    }
    Ok(())
}

async fn check(store: &Store, model: &Model) -> Result<(), String> {
    store.check_invariants()?;
    let (id, highest) = inbox(store).await?;
    let live: BTreeSet<Uid> = live(store, id).await?.into_iter().collect();
    let all = store
        .expunged_since(ACCOUNT, id, 0)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("a new mailbox must answer exactly")?;
    let expected: Vec<Uid> = model.expunged.keys().copied().collect();
    if all != expected {
        return Err(format!("expunged {all:?}, expected {expected:?}"));
    }
    if let Some(u) = all.iter().find(|u| live.contains(u)) {
        return Err(format!("uid {u} is both live and expunged"));
    }
    // Every record's MODSEQ is at most HIGHESTMODSEQ: nothing is reported
    // as expunged after HIGHESTMODSEQ ...
    let after = store
        .expunged_since(ACCOUNT, id, highest)
        .await
        .map_err(|e| e.to_string())?;
    if after != Some(Vec::new()) {
        return Err(format!("expunged after HIGHESTMODSEQ {highest}: {after:?}"));
    }
    // ... and each cut-off returns exactly the later expunges.
    for cut in model.expunged.values().map(|m| m - 1) {
        let got = store
            .expunged_since(ACCOUNT, id, cut)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("exact answer expected")?;
        let want: Vec<Uid> = model
            .expunged
            .iter()
            .filter(|(_, m)| **m > cut)
            .map(|(u, _)| *u)
            .collect();
        if got != want {
            return Err(format!("since {cut}: {got:?}, expected {want:?}"));
        }
    }
    Ok(())
}

async fn run(ops: Vec<Op>) -> Result<(), String> {
    let store = Store::open_in_memory().map_err(|e| e.to_string())?;
    new_store(&store).await?;
    let mut model = Model::default();
    check(&store, &model).await?;
    for (i, op) in ops.iter().enumerate() {
        apply(&store, &mut model, op)
            .await
            .map_err(|e| format!("op {i} {op:?}: {e}"))?;
        check(&store, &model)
            .await
            .map_err(|e| format!("after op {i} {op:?}: {e}"))?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn expunge_records_stay_exact_and_consistent(ops in prop::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let result = rt.block_on(run(ops));
        prop_assert!(result.is_ok(), "{}", result.err().unwrap_or_default());
    }
}

#[tokio::test]
async fn records_persist_leave_with_their_mailbox_and_damage_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mail.redb");
    let (id, after_expunge) = {
        let store = Store::open(&path).unwrap();
        new_store(&store).await.unwrap();
        store.create_mailbox(ACCOUNT, "Box", None).await.unwrap();
        for _ in 0..3 {
            store
                .append(ACCOUNT, "Box", Bytes::from_static(b"x"), Flags::new(), 0)
                .await
                .unwrap();
        }
        let b = store.mailbox(ACCOUNT, "Box").await.unwrap().unwrap();
        assert_eq!(store.remove(ACCOUNT, b.id, &[2]).await.unwrap(), vec![2]);
        let after = store.mailbox(ACCOUNT, "Box").await.unwrap().unwrap();
        (b.id, after.highest_modseq)
    };
    {
        let store = Store::open(&path).unwrap();
        store.check_invariants().unwrap();
        assert_eq!(
            store.expunged_since(ACCOUNT, id, 0).await.unwrap(),
            Some(vec![2])
        );
        assert_eq!(
            store
                .expunged_since(ACCOUNT, id, after_expunge)
                .await
                .unwrap(),
            Some(vec![])
        );
    }
    // A record naming a live UID, and one above HIGHESTMODSEQ.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(EXPUNGED).unwrap();
            t.insert((ACCOUNT, id, 1u32), after_expunge).unwrap();
            t.insert((ACCOUNT, id, 2u32), after_expunge + 100).unwrap();
        }
        w.commit().unwrap();
    }
    {
        let store = Store::open(&path).unwrap();
        let err = store.check_invariants().unwrap_err();
        assert!(err.contains("both live and expunged"), "{err}");
        assert!(err.contains("above HIGHESTMODSEQ"), "{err}");
    }
    // A mailbox without a horizon (as written by an older version) cannot
    // answer exactly, and records without a horizon are reported.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(EXPUNGED).unwrap();
            t.remove((ACCOUNT, id, 0u32)).unwrap();
            t.remove((ACCOUNT, id, 1u32)).unwrap();
            t.insert((ACCOUNT, id, 2u32), after_expunge).unwrap();
        }
        w.commit().unwrap();
    }
    {
        let store = Store::open(&path).unwrap();
        assert_eq!(store.expunged_since(ACCOUNT, id, 0).await.unwrap(), None);
        let err = store.check_invariants().unwrap_err();
        assert!(err.contains("no horizon"), "{err}");
    }
    // No horizon and no records: a mailbox from before the records.
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(EXPUNGED)
            .unwrap()
            .remove((ACCOUNT, id, 2u32))
            .unwrap();
        w.commit().unwrap();
    }
    {
        let store = Store::open(&path).unwrap();
        store.check_invariants().unwrap();
        assert_eq!(store.expunged_since(ACCOUNT, id, 0).await.unwrap(), None);
        // The next expunge sets a horizon from then on.
        let b = store.mailbox(ACCOUNT, "Box").await.unwrap().unwrap();
        store.remove(ACCOUNT, id, &[3]).await.unwrap();
        assert_eq!(
            store
                .expunged_since(ACCOUNT, id, b.highest_modseq)
                .await
                .unwrap(),
            Some(vec![3])
        );
        assert_eq!(store.expunged_since(ACCOUNT, id, 0).await.unwrap(), None);
        store.check_invariants().unwrap();
        // Deleting the mailbox deletes its records.
        store.delete_mailbox(ACCOUNT, "Box").await.unwrap();
        store.check_invariants().unwrap();
    }
    let db = redb::Database::open(&path).unwrap();
    let r = redb::ReadableDatabase::begin_read(&db).unwrap();
    let t = r.open_table(EXPUNGED).unwrap();
    let left = redb::ReadableTable::range(&t, (ACCOUNT, id, 0u32)..=(ACCOUNT, id, u32::MAX))
        .unwrap()
        .count();
    assert_eq!(left, 0);
}
