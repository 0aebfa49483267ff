//! Remote collection against our own POP3 server on loopback.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{ALICE, Fixture};
use umail_core::config::{Pop3Config, SecurityConfig};
use umail_core::ingest::{Ingest, IngestSettings, LocalTarget};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::store::INBOX;
use umail_core::{Address, FilterChain, MailStore, Services};
use umail_pop3::client::{ClientError, ConnectOptions, LoginMethod, Pop3Client, Secret, Security};
use umail_pop3::collect::{
    CollectError, DomainPopRouting, FetchOptions, MemoryCollectionState, RemoteAccount,
    fetch_domainpop, fetch_multipop,
};

fn remote(f: &Fixture, security: Security) -> RemoteAccount {
    let port = match security {
        Security::Implicit => f.pop3s.port(),
        _ => f.pop3.port(),
    };
    let mut connect = ConnectOptions::new("127.0.0.1", port, security, Some(f.tls_connector()));
    connect.timeout = Duration::from_secs(20);
    RemoteAccount {
        connect,
        username: ALICE.to_string(),
        password: Secret::new("secret"),
        login: LoginMethod::Password,
        leave_on_server: true,
        max_messages_per_fetch: 0,
        max_message_size: 1024 * 1024,
        delete_after_secs: 0,
    }
}

fn msg(i: usize) -> Vec<u8> {
    format!("Subject: m{i}\r\nMessage-ID: <m{i}@remote>\r\n\r\nbody {i}\r\n.dot\r\n").into_bytes()
}

async fn local_inbox(store: &MemoryMailStore, account: &str) -> Vec<Vec<u8>> {
    let Some(mb) = store.mailbox(account, INBOX).await.unwrap() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in store.messages(account, mb.id).await.unwrap() {
        let c = store
            .message_content(account, mb.id, m.uid)
            .await
            .unwrap()
            .unwrap();
        out.push(c.to_vec());
    }
    out
}

const LOCAL: &str = "local@example.org";

/// The local side: a pipeline over `dir` and `store`, no filters.
fn pipeline(dir: Arc<MemoryDirectory>, store: Arc<MemoryMailStore>) -> Ingest {
    let services = Services {
        directory: dir,
        store,
        queue: Arc::new(MemoryQueue::new()),
        filter: Arc::new(FilterChain::new()),
        lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
        hostname: "local.example.org".into(),
    };
    Ingest::new(services, IngestSettings::default())
}

/// A local store with the user `LOCAL`, its pipeline, and `LOCAL`'s INBOX.
fn local_side() -> (Arc<MemoryMailStore>, Ingest, LocalTarget) {
    let dir = Arc::new(MemoryDirectory::new());
    let principal = dir.add_user(LOCAL, "pw");
    let store = Arc::new(MemoryMailStore::new());
    let ingest = pipeline(dir, store.clone());
    let target = LocalTarget {
        mailbox: Some(INBOX.to_string()),
        ..LocalTarget::of(&principal)
    };
    (store, ingest, target)
}

#[tokio::test]
async fn multipop_leave_on_server_tracks_uidl() {
    let f = Fixture::start(Pop3Config::default()).await;
    f.deliver(&msg(1)).await;
    f.deliver(&msg(2)).await;
    let (local, ingest, target) = local_side();
    let state = MemoryCollectionState::new();
    let acct = remote(&f, Security::StartTls);

    let r = fetch_multipop(&acct, &ingest, &target, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (r.on_server, r.fetched, r.already_seen, r.deleted),
        (2, 2, 0, 0)
    );
    let r = fetch_multipop(&acct, &ingest, &target, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!((r.fetched, r.already_seen), (0, 2));
    f.deliver(&msg(3)).await;
    let r = fetch_multipop(&acct, &ingest, &target, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!((r.fetched, r.already_seen), (1, 2));

    let got = local_inbox(&local, LOCAL).await;
    assert_eq!(
        got,
        vec![msg(1), msg(2), msg(3)],
        "byte-exact after un-stuffing"
    );
    assert_eq!(f.inbox_uids().await.len(), 3, "left on server");
}

#[tokio::test]
async fn multipop_delete_from_server_over_implicit_tls() {
    let f = Fixture::start(Pop3Config::default()).await;
    f.deliver(&msg(1)).await;
    f.deliver(&msg(2)).await;
    let (local, ingest, target) = local_side();
    let state = MemoryCollectionState::new();
    let mut acct = remote(&f, Security::Implicit);
    acct.leave_on_server = false;
    let r = fetch_multipop(&acct, &ingest, &target, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!((r.fetched, r.deleted), (2, 2));
    assert!(f.inbox_uids().await.is_empty());
    assert_eq!(local_inbox(&local, LOCAL).await.len(), 2);
}

#[tokio::test]
async fn multipop_limits_count_and_size() {
    let f = Fixture::start(Pop3Config::default()).await;
    for i in 1..=3 {
        f.deliver(&msg(i)).await;
    }
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 5000));
    big.extend_from_slice(b"\r\n");
    f.deliver(&big).await;
    let (local, ingest, target) = local_side();
    let state = MemoryCollectionState::new();
    let mut acct = remote(&f, Security::Implicit);
    acct.max_messages_per_fetch = 2;
    acct.max_message_size = 1000;
    let r = fetch_multipop(&acct, &ingest, &target, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!((r.fetched, r.deferred, r.skipped_too_large), (2, 2, 0));
    let r = fetch_multipop(&acct, &ingest, &target, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!((r.fetched, r.already_seen, r.skipped_too_large), (1, 2, 1));
    assert_eq!(local_inbox(&local, LOCAL).await.len(), 3);
}

#[tokio::test]
async fn apop_login_and_wrong_password() {
    let f = Fixture::start(Pop3Config::default()).await;
    f.dir.set_legacy_secret(ALICE, "tanstaaf");
    let (_, ingest, target) = local_side();
    let state = MemoryCollectionState::new();
    // APOP over a plaintext connection (the secret never crosses the wire).
    let mut acct = remote(&f, Security::None);
    acct.login = LoginMethod::Apop;
    acct.password = Secret::new("tanstaaf");
    f.deliver(&msg(1)).await;
    let r = fetch_multipop(&acct, &ingest, &target, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(r.fetched, 1);

    let mut acct = remote(&f, Security::StartTls);
    acct.password = Secret::new("wrong");
    let e = fetch_multipop(&acct, &ingest, &target, &state, &FetchOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CollectError::Client(ClientError::Refused { code: Some(c), .. }) if c == "AUTH"),
        "{e:?}"
    );
    // The password shows nowhere in the account's debug output.
    assert!(!format!("{acct:?}").contains("wrong"));
}

#[tokio::test]
async fn client_refuses_password_without_tls() {
    let f = Fixture::start(Pop3Config::default()).await;
    let opts = ConnectOptions::new("127.0.0.1", f.pop3.port(), Security::None, None);
    let mut c = Pop3Client::connect(&opts).await.unwrap();
    let e = c
        .login(ALICE, &Secret::new("secret"), LoginMethod::Password, false)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Tls(_)), "{e:?}");
    // Even when the caller allows it, this server refuses plaintext logins.
    let e = c
        .login(ALICE, &Secret::new("secret"), LoginMethod::Password, true)
        .await
        .unwrap_err();
    assert!(matches!(e, ClientError::Refused { .. }), "{e:?}");
}

#[tokio::test]
async fn domainpop_routes_by_headers_dedupes_and_falls_back() {
    let f = Fixture::start(Pop3Config::default()).await;
    let dir = Arc::new(MemoryDirectory::new());
    for u in ["bob", "carol", "dave", "erin", "postmaster"] {
        dir.add_user(&format!("{u}@corp.example"), "pw");
    }
    dir.add_alias(
        "sales@corp.example",
        &["carol@corp.example", "x@remote.example"],
    );
    let m1 = b"To: \"B, Bob\" <bob@corp.example>\r\nCc: sales@corp.example\r\nMessage-ID: <one@x>\r\n\r\nhi\r\n";
    let m1_copy = m1; // the same mail, once per local recipient in the catch-all
    let m2 = b"Received: from a by b\r\n for <erin@corp.example>; Tue\r\nDelivered-To: dave@corp.example\r\nTo: undisclosed-recipients:;\r\nMessage-ID: <two@x>\r\n\r\nhi\r\n";
    let m3 = b"To: stranger@elsewhere.example\r\nMessage-ID: <three@x>\r\n\r\nlost\r\n";
    for m in [&m1[..], &m1_copy[..], &m2[..], &m3[..]] {
        f.deliver(m).await;
    }
    let local = Arc::new(MemoryMailStore::new());
    let ingest = pipeline(dir.clone(), local.clone());
    let state = MemoryCollectionState::new();
    let routing = DomainPopRouting {
        fallback: Some(Address::parse("postmaster@corp.example").unwrap()),
        ..DomainPopRouting::default()
    };
    let acct = remote(&f, Security::Implicit);
    let r = fetch_domainpop(&acct, &ingest, &routing, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (r.fetched, r.duplicates, r.to_fallback, r.refused.len()),
        (4, 1, 1, 0)
    );
    let count = |a: &'static str| {
        let local = &local;
        async move { local_inbox(local, a).await.len() }
    };
    assert_eq!(count("bob@corp.example").await, 1);
    assert_eq!(count("carol@corp.example").await, 1);
    assert_eq!(count("dave@corp.example").await, 1);
    assert_eq!(count("erin@corp.example").await, 1);
    assert_eq!(count("postmaster@corp.example").await, 1);
    // A second fetch collects nothing again.
    let r = fetch_domainpop(&acct, &ingest, &routing, &state, &FetchOptions::default())
        .await
        .unwrap();
    assert_eq!((r.fetched, r.already_seen), (0, 4));
}
