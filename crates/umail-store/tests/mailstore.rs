//! `MailStore` semantics, the change feed and concurrent appends.

use std::collections::BTreeSet;

use bytes::Bytes;
use umail_core::{
    DeliveryTarget, Flag, FlagOp, Flags, MailStore, MailboxChange, SpecialUse, StoreError,
};
use umail_store::{NewDomain, NewUser, Store, UserUpdate};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";

async fn setup() -> Store {
    let store = Store::open_in_memory().expect("open");
    store
        .add_domain(NewDomain::new("example.com".parse().unwrap()))
        .await
        .unwrap();
    for u in [ALICE, BOB] {
        store
            .add_user(NewUser::new(u.parse().unwrap(), "pw"))
            .await
            .unwrap();
    }
    store
}

fn msg(s: &str) -> Bytes {
    Bytes::from(format!("Subject: {s}\r\n\r\n{s}\r\n"))
}

fn flags(f: &[Flag]) -> Flags {
    f.iter().cloned().collect()
}

fn target(account: &str, mailbox: &str) -> DeliveryTarget {
    DeliveryTarget {
        account: account.into(),
        mailbox: mailbox.into(),
        flags: Flags::new(),
    }
}

async fn set_quota(store: &Store, account: &str, bytes: u64, messages: u64) {
    store
        .update_user(
            &account.parse().unwrap(),
            UserUpdate {
                quota_bytes: Some(bytes),
                max_messages: Some(messages),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn default_mailboxes_on_first_use() {
    let store = setup().await;
    let boxes = store.list_mailboxes("Alice@Example.com").await.unwrap();
    let names: Vec<&str> = boxes.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(
        names,
        ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    );
    assert!(boxes.iter().all(|b| b.subscribed));
    let sent = boxes.iter().find(|b| b.name == "Sent").unwrap();
    assert_eq!(sent.special_use, Some(SpecialUse::Sent));
    let validities: BTreeSet<u32> = boxes.iter().map(|b| b.uid_validity).collect();
    assert_eq!(validities.len(), boxes.len(), "distinct UIDVALIDITY values");
    assert!(boxes.iter().all(|b| b.uid_next == 1 && b.messages == 0));
    assert!(matches!(
        store.list_mailboxes("ghost@example.com").await,
        Err(StoreError::NoSuchAccount(_))
    ));
    assert!(store.mailbox(ALICE, "inbox").await.unwrap().is_some());
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn append_fetch_and_counters() {
    let store = setup().await;
    let one = store
        .append(ALICE, "INBOX", msg("one"), flags(&[Flag::Seen]), 1000)
        .await
        .unwrap();
    let two = store
        .append(ALICE, "inbox", msg("two"), Flags::new(), 2000)
        .await
        .unwrap();
    assert_eq!((one.uid, two.uid), (1, 2));
    assert!(two.modseq > one.modseq);
    assert_eq!(one.uid_validity, two.uid_validity);
    let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    assert_eq!(inbox.messages, 2);
    assert_eq!(inbox.unseen, 1);
    assert_eq!(inbox.uid_next, 3);
    assert_eq!(inbox.highest_modseq, two.modseq);
    assert_eq!(inbox.size, (msg("one").len() + msg("two").len()) as u64);
    let metas = store.messages(ALICE, inbox.id).await.unwrap();
    assert_eq!(metas.len(), 2);
    assert_eq!(metas[0].internal_date, 1000);
    assert_eq!(metas[0].flags, flags(&[Flag::Seen]));
    assert_eq!(metas[1].blob_id.len(), 64);
    assert_eq!(
        store.message_content(ALICE, inbox.id, 2).await.unwrap(),
        Some(msg("two"))
    );
    assert_eq!(
        store.message_content(ALICE, inbox.id, 9).await.unwrap(),
        None
    );
    assert!(matches!(
        store.append(ALICE, "Nope", msg("x"), Flags::new(), 0).await,
        Err(StoreError::NoSuchMailbox(_))
    ));
    assert!(matches!(
        store.messages(ALICE, 999).await,
        Err(StoreError::NoSuchMailbox(_))
    ));
    let usage = store.quota_usage(ALICE).await.unwrap();
    assert_eq!(usage.messages, 2);
    assert_eq!(usage.bytes, inbox.size);
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn quota_refuses_append_deliver_and_copy() {
    let store = setup().await;
    set_quota(&store, ALICE, 100, 2).await;
    let big = Bytes::from(vec![b'x'; 101]);
    assert!(matches!(
        store
            .append(ALICE, "INBOX", big.clone(), Flags::new(), 0)
            .await,
        Err(StoreError::OverQuota)
    ));
    store
        .append(ALICE, "INBOX", msg("a"), Flags::new(), 0)
        .await
        .unwrap();
    store
        .append(ALICE, "INBOX", msg("b"), Flags::new(), 0)
        .await
        .unwrap();
    assert!(matches!(
        store
            .append(ALICE, "INBOX", msg("c"), Flags::new(), 0)
            .await,
        Err(StoreError::OverQuota)
    ));
    // Deliver: Alice's target fails alone; Bob gets his copy.
    let results = store
        .deliver(msg("d"), 0, &[target(ALICE, "INBOX"), target(BOB, "INBOX")])
        .await
        .unwrap();
    assert!(matches!(results[0], Err(StoreError::OverQuota)));
    assert!(results[1].is_ok());
    // Copy that would exceed is refused whole.
    let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    assert!(matches!(
        store.copy(ALICE, inbox.id, &[1, 2], "Archive").await,
        Err(StoreError::OverQuota)
    ));
    // Move does not change usage, so it is allowed.
    let (_, pairs) = store
        .move_messages(ALICE, inbox.id, &[1, 2], "Archive")
        .await
        .unwrap();
    assert_eq!(pairs, vec![(1, 1), (2, 2)]);
    assert_eq!(store.quota_usage(ALICE).await.unwrap().messages, 2);
    assert_eq!(store.recount_usage(ALICE).unwrap().messages, 2);
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn deliver_stores_one_blob_for_many_targets() {
    let store = setup().await;
    let results = store
        .deliver(
            msg("list post"),
            42,
            &[
                target(ALICE, "INBOX"),
                target(BOB, "INBOX"),
                target(BOB, "Lists/Team"),
                target("ghost@example.com", "INBOX"),
                target(ALICE, "bad//name"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 5);
    assert!(results[0].is_ok() && results[1].is_ok() && results[2].is_ok());
    assert!(matches!(results[3], Err(StoreError::NoSuchAccount(_))));
    assert!(matches!(results[4], Err(StoreError::InvalidName(_))));
    // The missing mailbox and its parent were created.
    assert!(store.mailbox(BOB, "Lists").await.unwrap().is_some());
    let team = store.mailbox(BOB, "Lists/Team").await.unwrap().unwrap();
    assert_eq!(team.messages, 1);
    let blob = store.messages(BOB, team.id).await.unwrap()[0]
        .blob_id
        .clone();
    let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    assert_eq!(
        store.messages(ALICE, inbox.id).await.unwrap()[0].blob_id,
        blob
    );
    store.check_invariants().unwrap();
    // Removing two of three references keeps the blob; the last frees it.
    store.remove(ALICE, inbox.id, &[1]).await.unwrap();
    store.delete_mailbox(BOB, "Lists/Team").await.unwrap();
    store.check_invariants().unwrap();
    let bob_inbox = store.mailbox(BOB, "INBOX").await.unwrap().unwrap();
    assert_eq!(
        store.message_content(BOB, bob_inbox.id, 1).await.unwrap(),
        Some(msg("list post"))
    );
    store.remove(BOB, bob_inbox.id, &[1]).await.unwrap();
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn create_rename_delete_hierarchy() {
    let store = setup().await;
    let created = store
        .create_mailbox(ALICE, "Work/2024/Q1", None)
        .await
        .unwrap();
    assert_eq!(created.name, "Work/2024/Q1");
    assert!(store.mailbox(ALICE, "Work").await.unwrap().is_some());
    assert!(store.mailbox(ALICE, "Work/2024").await.unwrap().is_some());
    assert!(matches!(
        store.create_mailbox(ALICE, "Work", None).await,
        Err(StoreError::MailboxExists(_))
    ));
    assert!(matches!(
        store.create_mailbox(ALICE, "inbox", None).await,
        Err(StoreError::MailboxExists(_))
    ));
    for bad in ["", "/", "a//b", "/a", "a*", "a%b", "a\nb"] {
        assert!(
            matches!(
                store.create_mailbox(ALICE, bad, None).await,
                Err(StoreError::InvalidName(_))
            ),
            "{bad:?}"
        );
    }
    // A trailing separator is tolerated (RFC 9051 §6.3.4).
    store
        .create_mailbox(ALICE, "Trailing/", None)
        .await
        .unwrap();
    assert!(store.mailbox(ALICE, "Trailing").await.unwrap().is_some());

    store
        .append(ALICE, "Work/2024/Q1", msg("q1"), Flags::new(), 0)
        .await
        .unwrap();
    let q1 = store.mailbox(ALICE, "Work/2024/Q1").await.unwrap().unwrap();
    store
        .rename_mailbox(ALICE, "Work", "Old/Work")
        .await
        .unwrap();
    assert!(store.mailbox(ALICE, "Work").await.unwrap().is_none());
    assert!(
        store
            .mailbox(ALICE, "Work/2024/Q1")
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.mailbox(ALICE, "Old").await.unwrap().is_some());
    let moved = store
        .mailbox(ALICE, "Old/Work/2024/Q1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(moved.id, q1.id);
    assert_eq!(moved.uid_validity, q1.uid_validity);
    assert_eq!(moved.messages, 1);
    assert!(matches!(
        store.rename_mailbox(ALICE, "Old", "Old/Work/Inner").await,
        Err(StoreError::InvalidName(_))
    ));
    assert!(matches!(
        store.rename_mailbox(ALICE, "Missing", "X").await,
        Err(StoreError::NoSuchMailbox(_))
    ));
    assert!(matches!(
        store.rename_mailbox(ALICE, "Old", "Sent").await,
        Err(StoreError::MailboxExists(_))
    ));

    // Deleting keeps children; re-creating a name gives a new UIDVALIDITY.
    store
        .delete_mailbox(ALICE, "Old/Work/2024/Q1")
        .await
        .unwrap();
    assert!(
        store
            .mailbox(ALICE, "Old/Work/2024")
            .await
            .unwrap()
            .is_some()
    );
    let again = store
        .create_mailbox(ALICE, "Old/Work/2024/Q1", None)
        .await
        .unwrap();
    assert_ne!(again.uid_validity, q1.uid_validity);
    assert_ne!(again.id, q1.id);
    assert_eq!(again.uid_next, 1);
    store.delete_mailbox(ALICE, "Old").await.unwrap();
    assert!(store.mailbox(ALICE, "Old/Work").await.unwrap().is_some());
    assert!(matches!(
        store.delete_mailbox(ALICE, "INBOX").await,
        Err(StoreError::NotAllowed(_))
    ));
    assert!(matches!(
        store.delete_mailbox(ALICE, "Missing").await,
        Err(StoreError::NoSuchMailbox(_))
    ));
    assert_eq!(store.quota_usage(ALICE).await.unwrap().messages, 0);
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn renaming_inbox_moves_its_messages() {
    let store = setup().await;
    for s in ["a", "b", "c"] {
        store
            .append(ALICE, "INBOX", msg(s), flags(&[Flag::Flagged]), 7)
            .await
            .unwrap();
    }
    store
        .create_mailbox(ALICE, "INBOX/Child", None)
        .await
        .unwrap();
    let inbox_before = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    store.rename_mailbox(ALICE, "inbox", "Saved").await.unwrap();
    let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    assert_eq!(inbox.messages, 0);
    assert_eq!(inbox.id, inbox_before.id);
    assert_eq!(inbox.uid_validity, inbox_before.uid_validity);
    assert_eq!(inbox.uid_next, 4, "INBOX UIDs are not reused");
    let saved = store.mailbox(ALICE, "Saved").await.unwrap().unwrap();
    assert_eq!(saved.messages, 3);
    let metas = store.messages(ALICE, saved.id).await.unwrap();
    assert!(
        metas
            .iter()
            .all(|m| m.flags == flags(&[Flag::Flagged]) && m.internal_date == 7)
    );
    assert!(store.mailbox(ALICE, "INBOX/Child").await.unwrap().is_some());
    assert_eq!(store.quota_usage(ALICE).await.unwrap().messages, 3);
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn flags_modseq_and_condstore() {
    let store = setup().await;
    for s in ["a", "b", "c"] {
        store
            .append(ALICE, "INBOX", msg(s), Flags::new(), 0)
            .await
            .unwrap();
    }
    let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    let m0 = inbox.highest_modseq;
    let up = store
        .update_flags(
            ALICE,
            inbox.id,
            &[1, 2, 99],
            FlagOp::Add,
            &flags(&[Flag::Seen]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(up.updated.len(), 2, "missing UIDs are skipped");
    let m1 = up.updated[0].2;
    assert!(m1 > m0);
    let after = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    assert_eq!(after.highest_modseq, m1);
    assert_eq!(after.unseen, 1);

    // No change: MODSEQ stays.
    let same = store
        .update_flags(
            ALICE,
            inbox.id,
            &[1],
            FlagOp::Add,
            &flags(&[Flag::Seen]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(same.updated, vec![(1, flags(&[Flag::Seen]), m1)]);
    assert_eq!(
        store
            .mailbox(ALICE, "INBOX")
            .await
            .unwrap()
            .unwrap()
            .highest_modseq,
        m1
    );

    // UNCHANGEDSINCE below message 1's MODSEQ: 1 is reported modified, 3 changes.
    let cond = store
        .update_flags(
            ALICE,
            inbox.id,
            &[1, 3],
            FlagOp::Set,
            &flags(&[Flag::Keyword("$Work".into())]),
            Some(m0),
        )
        .await
        .unwrap();
    assert_eq!(cond.modified, vec![1]);
    assert_eq!(cond.updated.len(), 1);
    assert_eq!(cond.updated[0].0, 3);
    assert!(cond.updated[0].2 > m1);

    let removed = store
        .update_flags(
            ALICE,
            inbox.id,
            &[1, 2],
            FlagOp::Remove,
            &flags(&[Flag::Seen]),
            None,
        )
        .await
        .unwrap();
    assert!(removed.updated.iter().all(|(_, f, _)| f.is_empty()));
    assert_eq!(
        store.mailbox(ALICE, "INBOX").await.unwrap().unwrap().unseen,
        3
    );
    assert!(matches!(
        store
            .update_flags(ALICE, 999, &[1], FlagOp::Add, &Flags::new(), None)
            .await,
        Err(StoreError::NoSuchMailbox(_))
    ));
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn expunge_remove_copy_move() {
    let store = setup().await;
    for s in ["a", "b", "c", "d"] {
        store
            .append(ALICE, "INBOX", msg(s), Flags::new(), 0)
            .await
            .unwrap();
    }
    let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    store
        .update_flags(
            ALICE,
            inbox.id,
            &[1, 2, 3],
            FlagOp::Add,
            &flags(&[Flag::Deleted]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.expunge(ALICE, inbox.id, Some(&[2, 4])).await.unwrap(),
        vec![2],
        "UID EXPUNGE only removes the given deleted messages"
    );
    assert_eq!(
        store.expunge(ALICE, inbox.id, None).await.unwrap(),
        vec![1, 3]
    );
    assert_eq!(
        store.expunge(ALICE, inbox.id, None).await.unwrap(),
        Vec::<u32>::new()
    );

    let (validity, pairs) = store
        .copy(ALICE, inbox.id, &[4, 77], "Archive")
        .await
        .unwrap();
    let archive = store.mailbox(ALICE, "Archive").await.unwrap().unwrap();
    assert_eq!(validity, archive.uid_validity);
    assert_eq!(pairs, vec![(4, 1)]);
    assert_eq!(store.quota_usage(ALICE).await.unwrap().messages, 2);
    assert!(matches!(
        store.copy(ALICE, inbox.id, &[4], "Nope").await,
        Err(StoreError::NoSuchMailbox(_))
    ));

    let (_, pairs) = store
        .move_messages(ALICE, inbox.id, &[4], "Trash")
        .await
        .unwrap();
    assert_eq!(pairs, vec![(4, 1)]);
    assert_eq!(
        store
            .mailbox(ALICE, "INBOX")
            .await
            .unwrap()
            .unwrap()
            .messages,
        0
    );
    // Move within the same mailbox renumbers.
    let trash = store.mailbox(ALICE, "Trash").await.unwrap().unwrap();
    let (_, pairs) = store
        .move_messages(ALICE, trash.id, &[1], "Trash")
        .await
        .unwrap();
    assert_eq!(pairs, vec![(1, 2)]);
    assert_eq!(
        store.remove(ALICE, trash.id, &[2, 5]).await.unwrap(),
        vec![2]
    );
    assert_eq!(store.quota_usage(ALICE).await.unwrap().messages, 1);
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn subscriptions() {
    let store = setup().await;
    store.create_mailbox(ALICE, "Projects", None).await.unwrap();
    assert!(
        !store
            .mailbox(ALICE, "Projects")
            .await
            .unwrap()
            .unwrap()
            .subscribed
    );
    store.set_subscribed(ALICE, "Projects", true).await.unwrap();
    assert!(
        store
            .mailbox(ALICE, "Projects")
            .await
            .unwrap()
            .unwrap()
            .subscribed
    );
    store
        .rename_mailbox(ALICE, "Projects", "Done")
        .await
        .unwrap();
    assert!(
        store
            .mailbox(ALICE, "Done")
            .await
            .unwrap()
            .unwrap()
            .subscribed
    );
    store.set_subscribed(ALICE, "Done", false).await.unwrap();
    assert!(
        !store
            .mailbox(ALICE, "Done")
            .await
            .unwrap()
            .unwrap()
            .subscribed
    );
    store
        .set_subscribed(ALICE, "Not/There", true)
        .await
        .unwrap();
}

#[tokio::test]
async fn change_feed_reports_committed_changes_in_order() {
    let store = setup().await;
    let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    let mut feed = store.watch(ALICE, inbox.id).await.unwrap();
    let a = store
        .append(ALICE, "INBOX", msg("a"), Flags::new(), 0)
        .await
        .unwrap();
    let f = store
        .update_flags(
            ALICE,
            inbox.id,
            &[a.uid],
            FlagOp::Add,
            &flags(&[Flag::Deleted]),
            None,
        )
        .await
        .unwrap();
    store.expunge(ALICE, inbox.id, None).await.unwrap();
    // A refused operation publishes nothing.
    set_quota(&store, ALICE, 1, 0).await;
    assert!(
        store
            .append(ALICE, "INBOX", msg("b"), Flags::new(), 0)
            .await
            .is_err()
    );

    assert_eq!(
        feed.try_recv().unwrap(),
        MailboxChange::Added {
            uid: a.uid,
            modseq: a.modseq
        }
    );
    assert_eq!(
        feed.try_recv().unwrap(),
        MailboxChange::Flags {
            uid: a.uid,
            flags: flags(&[Flag::Deleted]),
            modseq: f.updated[0].2
        }
    );
    match feed.try_recv().unwrap() {
        MailboxChange::Expunged { uids, modseq } => {
            assert_eq!(uids, vec![a.uid]);
            assert!(modseq > f.updated[0].2);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(feed.try_recv().is_err(), "nothing else was published");

    let trash = store.mailbox(ALICE, "Trash").await.unwrap().unwrap();
    let mut trash_feed = store.watch(ALICE, trash.id).await.unwrap();
    store.delete_mailbox(ALICE, "Trash").await.unwrap();
    assert_eq!(trash_feed.try_recv().unwrap(), MailboxChange::Gone);
    assert!(matches!(
        store.watch(ALICE, trash.id).await,
        Err(StoreError::NoSuchMailbox(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_get_distinct_increasing_uids() {
    let store = setup().await;
    store.list_mailboxes(ALICE).await.unwrap();
    const TASKS: usize = 16;
    const PER_TASK: usize = 20;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut uids = Vec::new();
            for i in 0..PER_TASK {
                let out = store
                    .append(ALICE, "INBOX", msg(&format!("{t}-{i}")), Flags::new(), 0)
                    .await
                    .unwrap();
                uids.push((out.uid, format!("{t}-{i}")));
            }
            uids
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        let uids = h.await.unwrap();
        // Within one task, later appends get higher UIDs.
        assert!(uids.windows(2).all(|w| w[0].0 < w[1].0));
        all.extend(uids);
    }
    let distinct: BTreeSet<u32> = all.iter().map(|(u, _)| *u).collect();
    assert_eq!(distinct.len(), TASKS * PER_TASK);
    assert_eq!(
        distinct.iter().next_back().copied(),
        Some((TASKS * PER_TASK) as u32)
    );
    let inbox = store.mailbox(ALICE, "INBOX").await.unwrap().unwrap();
    assert_eq!(inbox.messages as usize, TASKS * PER_TASK);
    for (uid, body) in &all {
        assert_eq!(
            store.message_content(ALICE, inbox.id, *uid).await.unwrap(),
            Some(msg(body))
        );
    }
    store.check_invariants().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_operation_does_not_affect_its_batch() {
    let store = setup().await;
    set_quota(&store, BOB, 10, 0).await;
    let mut handles = Vec::new();
    for i in 0..40 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            if i % 2 == 0 {
                store
                    .append(ALICE, "INBOX", msg(&format!("ok {i}")), Flags::new(), 0)
                    .await
                    .map(|_| ())
            } else {
                store
                    .append(BOB, "INBOX", msg(&format!("too big {i}")), Flags::new(), 0)
                    .await
                    .map(|_| ())
            }
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap();
        if i % 2 == 0 {
            r.unwrap();
        } else {
            assert!(matches!(r, Err(StoreError::OverQuota)));
        }
    }
    assert_eq!(store.quota_usage(ALICE).await.unwrap().messages, 20);
    assert_eq!(store.quota_usage(BOB).await.unwrap().messages, 0);
    store.check_invariants().unwrap();
}

/// An operation that wrote (first-use mailbox creation) and then failed is
/// rolled back alone; the operations batched with it commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failure_after_first_use_setup_is_rolled_back_alone() {
    let store = setup().await;
    store.list_mailboxes(ALICE).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..30 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            if i == 15 {
                // Bob has never been used: the store creates his mailboxes,
                // then finds no mailbox "Nope".
                store
                    .append(BOB, "Nope", msg("lost"), Flags::new(), 0)
                    .await
                    .map(|_| ())
            } else {
                store
                    .append(ALICE, "INBOX", msg(&format!("m{i}")), Flags::new(), 0)
                    .await
                    .map(|_| ())
            }
        }));
    }
    for (i, h) in handles.into_iter().enumerate() {
        let r = h.await.unwrap();
        if i == 15 {
            assert!(matches!(r, Err(StoreError::NoSuchMailbox(_))), "{r:?}");
        } else {
            r.unwrap();
        }
    }
    assert_eq!(store.quota_usage(ALICE).await.unwrap().messages, 29);
    store.check_invariants().unwrap();
    // Bob's first use still works afterwards.
    assert_eq!(store.list_mailboxes(BOB).await.unwrap().len(), 6);
    store.check_invariants().unwrap();
}
