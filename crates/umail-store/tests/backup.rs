//! A backup is a complete copy: every table, including the ones created on
//! first use (expunge records, DKIM keys), survives a restore.

use bytes::Bytes;
use umail_core::{Flag, FlagOp, Flags, MailStore};
use umail_store::dkim::DkimKeyRecord;
use umail_store::{NewDomain, NewUser, Store};

#[tokio::test]
async fn backup_restores_every_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("live.redb")).unwrap();
    store
        .add_domain(NewDomain::new("example.com".parse().unwrap()))
        .await
        .unwrap();
    store
        .add_user(NewUser::new("a@example.com".parse().unwrap(), "pw-123456"))
        .await
        .unwrap();
    let account = "a@example.com";
    let inbox = store.mailbox(account, "INBOX").await.unwrap().unwrap();
    for i in 0..3 {
        store
            .append(
                account,
                "INBOX",
                Bytes::from(format!("Subject: {i}\r\n\r\nx\r\n")),
                Flags::new(),
                0,
            )
            .await
            .unwrap();
    }
    store
        .update_flags(
            account,
            inbox.id,
            &[2],
            FlagOp::Add,
            &Flags::from([Flag::Deleted]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        store.expunge(account, inbox.id, None).await.unwrap(),
        vec![2]
    );
    store
        .put_dkim_key(DkimKeyRecord {
            domain: "example.com".into(),
            selector: "umail".into(),
            algorithm: "rsa".into(),
            private_key: vec![1, 2, 3],
            created: 0,
        })
        .await
        .unwrap();
    let copy = dir.path().join("backup.redb");
    store.backup(&copy).await.unwrap();
    drop(store);

    let restored = Store::open(&copy).unwrap();
    restored.check_invariants().unwrap();
    let inbox = restored.mailbox(account, "INBOX").await.unwrap().unwrap();
    let uids: Vec<u32> = restored
        .messages(account, inbox.id)
        .await
        .unwrap()
        .iter()
        .map(|m| m.uid)
        .collect();
    assert_eq!(uids, vec![1, 3]);
    assert_eq!(
        restored.expunged_since(account, inbox.id, 0).await.unwrap(),
        Some(vec![2]),
        "expunge records are part of the backup"
    );
    assert_eq!(
        restored
            .dkim_key("example.com")
            .await
            .unwrap()
            .map(|k| k.selector),
        Some("umail".to_string())
    );
}
