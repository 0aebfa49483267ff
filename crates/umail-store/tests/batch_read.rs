//! `MailStore::message_contents`: one entry per requested UID in the
//! order asked (duplicates too), `None` for UIDs never stored, expunged or
//! moved away, header-only reads ending where `header_len` says, and the
//! same answers from the redb store (small inline batches and large
//! blocking-pool batches), the memory store and the trait's default body.
//! `MailStore::messages_after`: exactly the tail of `messages`.

use std::sync::Arc;

use bytes::Bytes;
use umail_core::memory::{MemoryMailStore, RequiredOnly};
use umail_core::store::{ContentPart, header_len};
use umail_core::{Flags, MailStore, Uid};
use umail_store::{NewDomain, NewUser, Store};

const ACCOUNT: &str = "alice@example.com";

fn message(i: usize) -> Bytes {
    let mut m = format!(
        "From: s{i}@example.com\r\nSubject: message {i}\r\nMessage-ID: <{i}@example.com>\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..(i % 7) {
        m.extend_from_slice(b"body line\r\n\r\nanother paragraph\r\n");
    }
    Bytes::from(m)
}

async fn redb_store() -> Store {
    let store = Store::open_in_memory().unwrap();
    store
        .add_domain(NewDomain::new("example.com".parse().unwrap()))
        .await
        .unwrap();
    store
        .add_user(NewUser::new(ACCOUNT.parse().unwrap(), "pw"))
        .await
        .unwrap();
    store
}

/// Fills INBOX and Work, expunges and moves some, then checks every batch
/// answer against `message_content` and the expected content.
async fn check(store: &dyn MailStore) {
    let inbox = store.mailbox(ACCOUNT, "INBOX").await.unwrap().unwrap().id;
    store.create_mailbox(ACCOUNT, "Work", None).await.unwrap();
    let work = store.mailbox(ACCOUNT, "Work").await.unwrap().unwrap().id;
    let mut uids = Vec::new();
    for i in 0..150 {
        let o = store
            .append(ACCOUNT, "INBOX", message(i), Flags::new(), 0)
            .await
            .unwrap();
        uids.push(o.uid);
    }
    // Work's UID 1 is a different message from INBOX's UID 1.
    let w = store
        .append(ACCOUNT, "Work", message(999), Flags::new(), 0)
        .await
        .unwrap();
    assert_eq!(w.uid, uids[0]);
    // Expunge UIDs 3 and 4, move 5 away.
    store
        .remove(ACCOUNT, inbox, &[uids[3], uids[4]])
        .await
        .unwrap();
    store
        .move_messages(ACCOUNT, inbox, &[uids[5]], "Work")
        .await
        .unwrap();
    let gone = |uid: Uid| [uids[3], uids[4], uids[5]].contains(&uid);

    // Small batch (inline in the redb store), with duplicates, unknown
    // UIDs, expunged and moved ones, out of order.
    let ask = vec![
        uids[9], 9_999, uids[3], uids[0], uids[5], uids[0], uids[4], 0,
    ];
    for part in [ContentPart::Full, ContentPart::Header] {
        let got = store
            .message_contents(ACCOUNT, inbox, &ask, part)
            .await
            .unwrap();
        assert_eq!(got.len(), ask.len());
        for (uid, content) in ask.iter().zip(&got) {
            let expect = if *uid == 0 || *uid == 9_999 || gone(*uid) {
                None
            } else {
                let i = uids.iter().position(|u| u == uid).unwrap();
                let full = message(i);
                Some(match part {
                    ContentPart::Full => full.clone(),
                    ContentPart::Header => full.slice(..header_len(&full)),
                })
            };
            assert_eq!(content.as_ref(), expect.as_ref(), "uid {uid} {part:?}");
        }
    }

    // Large batches (the redb store's blocking-pool path): every UID, both
    // parts, agree with message_content.
    for part in [ContentPart::Full, ContentPart::Header] {
        let got = store
            .message_contents(ACCOUNT, inbox, &uids, part)
            .await
            .unwrap();
        assert_eq!(got.len(), uids.len());
        for (uid, content) in uids.iter().zip(got) {
            let single = store.message_content(ACCOUNT, inbox, *uid).await.unwrap();
            assert_eq!(single.is_none(), gone(*uid));
            let want = single.map(|s| match part {
                ContentPart::Full => s,
                ContentPart::Header => s.slice(..header_len(&s)),
            });
            assert_eq!(content, want, "uid {uid} {part:?}");
            if let (ContentPart::Header, Some(c)) = (part, &content) {
                assert!(c.ends_with(b"\r\n\r\n"));
            }
        }
    }

    // messages_after: the tail above a UID, expunged and moved ones left
    // out, the same records as `messages`.
    let all = store.messages(ACCOUNT, inbox).await.unwrap();
    for after in [0, uids[2], uids[4], uids[100], uids[149], u32::MAX] {
        let tail = store.messages_after(ACCOUNT, inbox, after).await.unwrap();
        let want: Vec<_> = all.iter().filter(|m| m.uid > after).cloned().collect();
        assert_eq!(tail, want, "after {after}");
    }
    assert_eq!(
        store.messages_after(ACCOUNT, inbox, uids[2]).await.unwrap()[0].uid,
        uids[6]
    );
    assert!(store.messages_after(ACCOUNT, 9_999, 0).await.is_err());

    // The other mailbox answers for its own UID 1, not INBOX's.
    let got = store
        .message_contents(ACCOUNT, work, &[w.uid], ContentPart::Full)
        .await
        .unwrap();
    assert_eq!(got, vec![Some(message(999))]);
    let empty = store
        .message_contents(ACCOUNT, work, &[], ContentPart::Header)
        .await
        .unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn redb_store_batches() {
    check(&redb_store().await).await;
}

#[tokio::test]
async fn memory_store_batches() {
    check(&MemoryMailStore::new()).await;
}

#[tokio::test]
async fn default_body_batches() {
    check(&RequiredOnly(Arc::new(MemoryMailStore::new()))).await;
}

#[test]
fn header_len_finds_the_blank_line() {
    assert_eq!(header_len(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"), 14);
    assert_eq!(header_len(b"A: 1\n\nbody"), 6);
    assert_eq!(header_len(b"A: 1\r\n"), 6);
    assert_eq!(header_len(b""), 0);
    assert_eq!(header_len(b"\r\nbody"), 2);
    assert_eq!(header_len(b"\nbody"), 1);
    // Folded lines and a bare LF before CRLF.
    assert_eq!(header_len(b"A: 1\r\n 2\r\n\r\nx"), 12);
    assert_eq!(header_len(b"A: 1\n\r\nx"), 7);
}
