//! Collection and import through the ingest pipeline, against our own
//! POP3 server on loopback: filters see collected and imported mail with
//! its source and their verdicts are honoured, and nothing the local side
//! refuses is lost (left on the remote server, reported, tried again), with
//! "leave on server" off throughout.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::{ALICE, Fixture};
use umail_core::collection::{
    FetchStatus, RemoteAccountConfig, RemoteAccountInfo, RemotePassword, RemoteServer, TlsMode,
};
use umail_core::config::{Pop3Config, SecurityConfig};
use umail_core::ingest::{Ingest, IngestSettings, LocalTarget, Source};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::store::INBOX;
use umail_core::{
    Action, Address, Envelope, Filter, MailStore, MessageData, Quota, Services, SessionInfo,
    Verdict,
};
use umail_pop3::client::{ConnectOptions, LoginMethod, Secret, Security};
use umail_pop3::collect::{
    CollectError, CollectionJob, Collector, DomainPopRouting, FetchOptions, FetchProgress,
    ImportRequest, MemoryCollectionAccounts, MemoryCollectionState, RemoteAccount, Trigger,
    fetch_domainpop, fetch_multipop,
};

const LOCAL: &str = "local@example.org";

/// Rejects messages whose subject says "spam" (while `reject_spam`);
/// otherwise adds `X-Seen: <source>` and files into `Filtered` (while
/// `file_into`). Records the source of every message it sees.
#[derive(Default)]
struct TestFilter {
    reject_spam: AtomicBool,
    file_into: AtomicBool,
    seen: Mutex<Vec<Source>>,
}

#[async_trait]
impl Filter for TestFilter {
    fn name(&self) -> &str {
        "test"
    }

    async fn on_data(&self, _: &SessionInfo, _: &Envelope, m: MessageData<'_>) -> Verdict {
        self.seen.lock().unwrap().push(m.source);
        let spam = m
            .parsed
            .subject()
            .is_some_and(|s| s.to_ascii_lowercase().contains("spam"));
        if spam && self.reject_spam.load(Ordering::SeqCst) {
            return Verdict::reject(550, "5.7.1", "Spam refused by policy");
        }
        if self.file_into.load(Ordering::SeqCst) {
            return Verdict::with_actions(vec![
                Action::AddHeader {
                    name: "X-Seen".into(),
                    value: m.source.name().into(),
                },
                Action::FileInto("Filtered".into()),
            ]);
        }
        Verdict::pass()
    }
}

/// The local side of a test: directory, store and the pipeline over them.
struct Local {
    dir: Arc<MemoryDirectory>,
    store: Arc<MemoryMailStore>,
    filter: Arc<TestFilter>,
    ingest: Ingest,
}

impl Local {
    fn new(users: &[&str]) -> Local {
        let dir = Arc::new(MemoryDirectory::new());
        for u in users {
            dir.add_user(u, "pw");
        }
        let store = Arc::new(MemoryMailStore::new());
        let filter = Arc::new(TestFilter::default());
        let services = Services {
            directory: dir.clone(),
            store: store.clone(),
            queue: Arc::new(MemoryQueue::new()),
            filter: filter.clone(),
            lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
            hostname: "local.example.org".into(),
        };
        Local {
            dir,
            store,
            filter,
            ingest: Ingest::new(services, IngestSettings::default()),
        }
    }

    fn target(&self, account: &str, mailbox: &str) -> LocalTarget {
        LocalTarget {
            account: account.into(),
            address: account.parse().unwrap(),
            mailbox: Some(mailbox.into()),
        }
    }

    fn set_quota_bytes(&self, account: &str, bytes: u64) {
        self.dir
            .update_user(account, |p| p.quota = Quota { bytes, messages: 0 });
    }

    async fn mailbox(&self, account: &str, name: &str) -> Vec<String> {
        let Some(mb) = self.store.mailbox(account, name).await.unwrap() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in self.store.messages(account, mb.id).await.unwrap() {
            let c = self
                .store
                .message_content(account, mb.id, m.uid)
                .await
                .unwrap()
                .unwrap();
            out.push(String::from_utf8(c.to_vec()).unwrap());
        }
        out
    }
}

/// Alice's mailbox on the fixture, collected over implicit TLS, deleting
/// what is collected.
fn remote(f: &Fixture) -> RemoteAccount {
    let mut connect = ConnectOptions::new(
        "127.0.0.1",
        f.pop3s.port(),
        Security::Implicit,
        Some(f.tls_connector()),
    );
    connect.timeout = Duration::from_secs(20);
    RemoteAccount {
        connect,
        username: ALICE.to_string(),
        password: Secret::new("secret"),
        login: LoginMethod::Password,
        leave_on_server: false,
        max_messages_per_fetch: 0,
        max_message_size: 1024 * 1024,
        delete_after_secs: 0,
    }
}

/// The same mailbox as stored settings.
fn remote_server(f: &Fixture) -> RemoteServer {
    RemoteServer {
        host: "127.0.0.1".into(),
        port: f.pop3s.port(),
        tls: TlsMode::Implicit,
        tls_verify: true,
        ca_file: Some(f.ca_file.path().display().to_string()),
        username: ALICE.into(),
        password: RemotePassword::new("secret"),
        apop: false,
    }
}

fn msg(subject: &str) -> Vec<u8> {
    format!(
        "Return-Path: <sender@remote.example>\r\nFrom: sender@remote.example\r\n\
Subject: {subject}\r\nMessage-ID: <{subject}@remote.example>\r\n\r\nbody of {subject}\r\n"
    )
    .into_bytes()
}

async fn remote_count(f: &Fixture) -> usize {
    f.inbox_uids().await.len()
}

#[tokio::test]
async fn collected_and_imported_mail_meets_the_filter_with_its_source() {
    let f = Fixture::start(Pop3Config::default()).await;
    let local = Local::new(&[LOCAL]);
    local.filter.file_into.store(true, Ordering::SeqCst);

    // Collection: Source::Collection, header added, filed into the folder.
    f.deliver(&msg("collected")).await;
    let state = MemoryCollectionState::new();
    let r = fetch_multipop(
        &remote(&f),
        &local.ingest,
        &local.target(LOCAL, INBOX),
        &state,
        &FetchOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((r.fetched, r.deleted, r.refused.len()), (1, 1, 0));
    assert_eq!(*local.filter.seen.lock().unwrap(), vec![Source::Collection]);
    let filed = local.mailbox(LOCAL, "Filtered").await;
    assert_eq!(filed.len(), 1);
    assert!(
        filed[0].starts_with("X-Seen: collect\r\nReturn-Path: <sender@remote.example>\r\n"),
        "{}",
        filed[0]
    );
    assert!(local.mailbox(LOCAL, INBOX).await.is_empty());

    // Import through the collector: Source::Import, progress reported.
    f.deliver(&msg("imported-1")).await;
    f.deliver(&msg("imported-2")).await;
    let collector = Collector::new(
        Arc::new(MemoryCollectionAccounts::new()),
        local.ingest.clone(),
    );
    let request = ImportRequest {
        server: remote_server(&f),
        to: LOCAL.parse().unwrap(),
        folder: "Old mail".into(),
        leave_on_server: false,
        max_message_size: 1 << 20,
    };
    let steps: Mutex<Vec<FetchProgress>> = Mutex::new(Vec::new());
    let progress = |p: &FetchProgress| steps.lock().unwrap().push(*p);
    let r = collector.import(&request, Some(&progress)).await.unwrap();
    assert_eq!((r.fetched, r.deleted), (2, 2));
    let steps = steps.into_inner().unwrap();
    assert_eq!(steps.len(), 2);
    let last = steps[1];
    assert_eq!((last.messages_done, last.messages_total), (2, 2));
    assert_eq!(last.bytes_done, last.bytes_total);
    assert!(last.bytes_total > 0 && steps[0].bytes_done < last.bytes_total);
    assert_eq!(
        *local.filter.seen.lock().unwrap(),
        vec![Source::Collection, Source::Import, Source::Import]
    );
    let filed = local.mailbox(LOCAL, "Filtered").await;
    assert_eq!(
        filed.len(),
        3,
        "the filter's folder wins over the import folder"
    );
    assert!(filed[1].starts_with("X-Seen: import\r\n"), "{}", filed[1]);
    assert_eq!(remote_count(&f).await, 0);

    // An unknown local account is an error, and nothing is touched.
    f.deliver(&msg("kept")).await;
    let e = collector
        .import(
            &ImportRequest {
                to: "nobody@example.org".parse().unwrap(),
                ..request
            },
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, CollectError::UnknownAccount(_)), "{e:?}");
    assert_eq!(remote_count(&f).await, 1);
}

#[tokio::test]
async fn a_filter_rejected_message_stays_on_the_server_and_is_tried_again() {
    let f = Fixture::start(Pop3Config::default()).await;
    let local = Local::new(&[LOCAL]);
    local.filter.reject_spam.store(true, Ordering::SeqCst);
    f.deliver(&msg("hello")).await;
    f.deliver(&msg("spam offer")).await;
    let state = MemoryCollectionState::new();
    let target = local.target(LOCAL, INBOX);
    let acct = remote(&f);

    let r = fetch_multipop(
        &acct,
        &local.ingest,
        &target,
        &state,
        &FetchOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((r.fetched, r.deleted, r.refused.len()), (1, 1, 1));
    let refused = r.refused[0].clone();
    assert_eq!(refused.reason, "550 5.7.1 Spam refused by policy");
    assert_eq!((refused.number, refused.attempts), (2, 1));
    assert!(!refused.temporary && refused.size > 0);
    assert_eq!(
        remote_count(&f).await,
        1,
        "the refused message is still there"
    );
    assert_eq!(local.mailbox(LOCAL, INBOX).await.len(), 1);
    assert_eq!(local.filter.seen.lock().unwrap().len(), 2);

    // A scheduled fetch before the retry time reports it without
    // downloading it again.
    let earlier = vec![refused];
    let scheduled = FetchOptions {
        earlier_refusals: &earlier,
        ..FetchOptions::default()
    };
    let r = fetch_multipop(&acct, &local.ingest, &target, &state, &scheduled)
        .await
        .unwrap();
    assert_eq!(r.refused.len(), 1);
    assert_eq!(
        r.refused[0].number, 1,
        "renumbered: the first message is gone"
    );
    assert_eq!(r.refused[0].attempts, 1);
    assert_eq!(r.refused[0].retry_after, earlier[0].retry_after);
    assert_eq!(local.filter.seen.lock().unwrap().len(), 2, "not downloaded");
    assert_eq!(remote_count(&f).await, 1);

    // An operator's fetch tries it at once; still refused, one more attempt.
    let now = FetchOptions {
        earlier_refusals: &earlier,
        retry_refused_now: true,
        ..FetchOptions::default()
    };
    let r = fetch_multipop(&acct, &local.ingest, &target, &state, &now)
        .await
        .unwrap();
    assert_eq!(r.refused.len(), 1);
    assert_eq!(r.refused[0].attempts, 2);
    assert_eq!(r.refused[0].first_refused, earlier[0].first_refused);
    assert_eq!(remote_count(&f).await, 1);

    // Policy relaxed: collected, and only now deleted.
    local.filter.reject_spam.store(false, Ordering::SeqCst);
    let r = fetch_multipop(&acct, &local.ingest, &target, &state, &now)
        .await
        .unwrap();
    assert_eq!((r.fetched, r.deleted, r.refused.len()), (1, 1, 0));
    assert_eq!(remote_count(&f).await, 0);
    assert_eq!(local.mailbox(LOCAL, INBOX).await.len(), 2);
}

#[tokio::test]
async fn a_full_mailbox_stops_the_fetch_and_keeps_everything_on_the_server() {
    let f = Fixture::start(Pop3Config::default()).await;
    let local = Local::new(&[LOCAL]);
    local.set_quota_bytes(LOCAL, 50);
    for s in ["q1", "q2", "q3"] {
        f.deliver(&msg(s)).await;
    }
    let state = MemoryCollectionState::new();
    let target = local.target(LOCAL, INBOX);
    let acct = remote(&f);
    let r = fetch_multipop(
        &acct,
        &local.ingest,
        &target,
        &state,
        &FetchOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        (r.fetched, r.deleted, r.deferred, r.refused.len()),
        (0, 0, 2, 1)
    );
    assert_eq!(r.refused[0].reason, "552 5.2.2 Mailbox full");
    assert_eq!(
        local.filter.seen.lock().unwrap().len(),
        0,
        "refused before the filters"
    );
    assert_eq!(remote_count(&f).await, 3);

    local.set_quota_bytes(LOCAL, 0);
    let r = fetch_multipop(
        &acct,
        &local.ingest,
        &target,
        &state,
        &FetchOptions {
            earlier_refusals: &r.refused,
            retry_refused_now: true,
            ..FetchOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((r.fetched, r.deleted, r.refused.len()), (3, 3, 0));
    assert_eq!(remote_count(&f).await, 0);
    assert_eq!(local.mailbox(LOCAL, INBOX).await.len(), 3);
}

#[tokio::test]
async fn domainpop_refusals_stay_and_each_recipient_gets_one_copy() {
    let f = Fixture::start(Pop3Config::default()).await;
    let local = Local::new(&[
        "bob@corp.example",
        "carol@corp.example",
        "postmaster@corp.example",
    ]);
    local.set_quota_bytes("bob@corp.example", 50);
    // Two copies of one message (one per local recipient at the provider)
    // and one message no header routes.
    let shared =
        b"Return-Path: <x@remote.example>\r\nTo: bob@corp.example\r\nCc: carol@corp.example\r\n\
Message-ID: <shared@x>\r\nSubject: for both\r\n\r\nhi\r\n";
    let stray = b"To: stranger@elsewhere.example\r\nMessage-ID: <stray@x>\r\n\r\nlost?\r\n";
    f.deliver(shared).await;
    f.deliver(shared).await;
    f.deliver(stray).await;
    let state = MemoryCollectionState::new();
    let mut routing = DomainPopRouting::default();
    let acct = remote(&f);

    let r = fetch_domainpop(
        &acct,
        &local.ingest,
        &routing,
        &state,
        &FetchOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((r.fetched, r.deleted, r.refused.len()), (0, 0, 3));
    for copy in &r.refused[..2] {
        assert_eq!(copy.reason, "552 5.2.2 Mailbox full");
        assert_eq!(copy.delivered_to, vec!["carol@corp.example".to_string()]);
        assert_eq!(copy.message_id.as_deref(), Some("<shared@x>"));
    }
    assert_eq!(
        r.refused[2].reason,
        "550 5.1.1 No header names a local recipient and no fallback address is set"
    );
    assert_eq!(remote_count(&f).await, 3);
    assert_eq!(local.mailbox("carol@corp.example", INBOX).await.len(), 1);
    assert!(local.mailbox("bob@corp.example", INBOX).await.is_empty());

    // Room for bob: he gets it once, carol not again; both copies go.
    local.set_quota_bytes("bob@corp.example", 0);
    let r = fetch_domainpop(
        &acct,
        &local.ingest,
        &routing,
        &state,
        &FetchOptions {
            earlier_refusals: &r.refused,
            retry_refused_now: true,
            ..FetchOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (r.fetched, r.duplicates, r.deleted, r.refused.len()),
        (2, 1, 2, 1)
    );
    assert_eq!(local.mailbox("bob@corp.example", INBOX).await.len(), 1);
    assert_eq!(local.mailbox("carol@corp.example", INBOX).await.len(), 1);
    assert_eq!(remote_count(&f).await, 1);

    // A fallback takes the stray message.
    routing.fallback = Some(Address::parse("postmaster@corp.example").unwrap());
    let r = fetch_domainpop(
        &acct,
        &local.ingest,
        &routing,
        &state,
        &FetchOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!((r.fetched, r.to_fallback, r.refused.len()), (1, 1, 0));
    assert_eq!(
        local.mailbox("postmaster@corp.example", INBOX).await.len(),
        1
    );
    assert_eq!(remote_count(&f).await, 0);
}

#[tokio::test]
async fn the_scheduler_fetches_due_accounts_records_refusals_and_never_runs_one_twice() {
    let f = Fixture::start(Pop3Config::default()).await;
    let local = Local::new(&[LOCAL]);
    local.set_quota_bytes(LOCAL, 50);
    f.deliver(&msg("s1")).await;
    let accounts = Arc::new(MemoryCollectionAccounts::new());
    let mut config = RemoteAccountConfig::new(remote_server(&f));
    config.leave_on_server = false;
    accounts.put_multipop(RemoteAccountInfo {
        account: LOCAL.into(),
        id: 1,
        config,
        status: FetchStatus::default(),
        created: 0,
    });
    let collector = Collector::new(accounts.clone(), local.ingest.clone());

    let done = collector.fetch_due().await;
    assert_eq!(done.len(), 1);
    assert_eq!(
        done[0].0,
        CollectionJob::MultiPop {
            account: LOCAL.into(),
            id: 1
        }
    );
    assert_eq!(done[0].1.as_ref().unwrap().refused.len(), 1);
    let info = accounts.multipop(LOCAL, 1).unwrap();
    assert_eq!(info.status.failures, 0);
    assert_eq!(info.status.refused.len(), 1);
    assert!(
        info.status.last_result.contains("1 refused"),
        "{}",
        info.status.last_result
    );
    assert!(info.status.next_attempt > umail_core::unix_now());
    assert!(collector.fetch_due().await.is_empty(), "not due again yet");
    assert_eq!(remote_count(&f).await, 1);

    // Two fetches of one account at once: the second is refused.
    local.set_quota_bytes(LOCAL, 0);
    let (a, b) = tokio::join!(
        collector.collect_account(&info, Trigger::Operator),
        collector.collect_account(&info, Trigger::Operator)
    );
    assert!(matches!(b, Err(CollectError::Busy)), "{b:?}");
    assert_eq!(a.unwrap().fetched, 1);
    assert!(
        accounts
            .multipop(LOCAL, 1)
            .unwrap()
            .status
            .refused
            .is_empty()
    );
    assert_eq!(remote_count(&f).await, 0);
    assert_eq!(local.mailbox(LOCAL, INBOX).await.len(), 1);
}
