//! The queue runner as a library: a [`QueueRunner`] over the in-memory
//! services (an integrator's own `QueueStore`: `MemoryQueue`) delivers to
//! a real SMTP peer (an `SmtpServer` of this crate on 127.0.0.1:0, over
//! its own in-memory services), signs with DKIM keys from a
//! `DkimKeySource`, delivers queued local copies through the ingest
//! pipeline (whose delivery-stage filter verdicts it honours) and sends
//! DSNs through the pipeline as system mail.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use common::World;
use tokio::net::TcpListener;
use umail_core::config::{DeliveryConfig, DnsConfig, RouteConfig, SecurityConfig};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::net::{ShutdownTrigger, shutdown_channel};
use umail_core::{
    Address, ConnectionInfo, Envelope, Filter, MailStore, MessageData, Notify, QueueEntry, QueueId,
    QueueState, QueueStore, Recipient, RecipientStatus, ReversePath, Services, SessionInfo,
    Shutdown, Source, Verdict,
};
use umail_smtp::delivery::QueueRunner;
use umail_smtp::dkim::{DkimKey, DkimKeySource};
use umail_smtp::routing::Router;
use umail_smtp::{ListenerMode, SmtpServer};

#[path = "../../../tests/common/dns.rs"]
mod dns;

const SENDER_DOMAIN: &str = "sender.test";
const ALICE: &str = "alice@sender.test";
const BOB: &str = "bob@sender.test";
const MESSAGE: &[u8] = b"From: alice@sender.test\r\nTo: bob@example.com\r\nSubject: hello\r\nMessage-ID: <1@sender.test>\r\n\r\nbody\r\n";

/// A filter that records what it saw. Each queued local copy
/// (`Source::QueueRetry`) gets the next scripted delivery verdict (pass
/// when none is left); everything else passes.
#[derive(Default)]
struct Recorder {
    queued_copy_verdicts: Mutex<VecDeque<Verdict>>,
    seen: Mutex<Vec<(&'static str, Source, String)>>,
}

impl Recorder {
    fn script(&self, verdict: Verdict) {
        self.queued_copy_verdicts.lock().unwrap().push_back(verdict);
    }

    fn seen(&self) -> Vec<(&'static str, Source, String)> {
        self.seen.lock().unwrap().clone()
    }
}

#[async_trait]
impl Filter for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn on_data(&self, _: &SessionInfo, envelope: &Envelope, m: MessageData<'_>) -> Verdict {
        let to = envelope
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect::<Vec<_>>()
            .join(",");
        self.seen.lock().unwrap().push(("data", m.source, to));
        Verdict::pass()
    }

    async fn on_delivery(&self, _: &Envelope, rcpt: &Address, m: MessageData<'_>) -> Verdict {
        self.seen
            .lock()
            .unwrap()
            .push(("delivery", m.source, rcpt.to_string()));
        if m.source == Source::QueueRetry
            && let Some(v) = self.queued_copy_verdicts.lock().unwrap().pop_front()
        {
            return v;
        }
        Verdict::pass()
    }
}

/// The sending side: sender.test with alice and bob, an in-memory queue
/// and the recording filter.
struct Sender {
    services: Services,
    store: Arc<MemoryMailStore>,
    queue: Arc<MemoryQueue>,
    filter: Arc<Recorder>,
}

fn sender() -> Sender {
    let directory = Arc::new(MemoryDirectory::new());
    directory.add_domain(SENDER_DOMAIN);
    directory.add_user(ALICE, "pw");
    directory.add_user(BOB, "pw");
    directory.add_domain_alias("alias.test", SENDER_DOMAIN);
    let store = Arc::new(MemoryMailStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let filter = Arc::new(Recorder::default());
    let services = Services {
        directory,
        store: store.clone(),
        queue: queue.clone(),
        filter: filter.clone(),
        lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
        hostname: "mx.sender.test".into(),
    };
    Sender {
        services,
        store,
        queue,
        filter,
    }
}

impl Sender {
    async fn inbox(&self, account: &str) -> Vec<Vec<u8>> {
        let Some(mb) = self.store.mailbox(account, "INBOX").await.unwrap() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in self.store.messages(account, mb.id).await.unwrap() {
            let c = self.store.message_content(account, mb.id, m.uid).await;
            out.push(c.unwrap().unwrap().to_vec());
        }
        out
    }

    async fn enqueue(&self, from: &str, to: &[&str], notify: Notify) -> QueueId {
        let mut envelope = Envelope::new(ReversePath::Address(from.parse().unwrap()));
        for t in to {
            let mut r = Recipient::new(t.parse().unwrap());
            r.notify = notify;
            envelope.recipients.push(r);
        }
        self.queue
            .enqueue(
                envelope,
                Bytes::from_static(MESSAGE),
                umail_core::unix_now(),
            )
            .await
            .unwrap()
    }

    async fn entry(&self, id: QueueId) -> Option<QueueEntry> {
        self.queue.get(id).await.unwrap()
    }

    /// Makes a deferred entry due now, as `umail queue flush` does.
    async fn flush(&self, id: QueueId) {
        let mut e = self.entry(id).await.expect("queued");
        e.next_attempt = umail_core::unix_now();
        e.state = QueueState::Active;
        self.queue.update(&e).await.unwrap();
    }
}

/// An MX listener of `SmtpServer` over `world`'s services.
async fn peer(world: &World) -> SocketAddr {
    let server = Arc::new(SmtpServer::new(
        world.services.clone(),
        Default::default(),
        None,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let server = server.clone();
            tokio::spawn(async move {
                let info = ConnectionInfo {
                    session_id: umail_core::net::next_session_id(),
                    peer,
                    local,
                    listener: "smtp".into(),
                };
                server
                    .serve_connection(stream, info, ListenerMode::Mx, Shutdown::never())
                    .await;
            });
        }
    });
    local
}

/// Routes example.com to `peer`; every DNS question is answered NXDOMAIN
/// by a loopback responder, so nothing leaves the machine.
fn router(config: &DeliveryConfig) -> Router {
    let nameserver = dns::start(|_, _| dns::Answer::NxDomain);
    Router::from_config(
        config,
        &DnsConfig {
            nameservers: vec![nameserver],
            timeout_secs: 2,
        },
    )
    .expect("router")
}

fn delivery_config(peer: SocketAddr) -> DeliveryConfig {
    DeliveryConfig {
        route: vec![RouteConfig {
            domain: "example.com".into(),
            host: peer.to_string(),
            require_tls: false,
            verify_certificate: false,
            user: None,
            password: None,
        }],
        // A retry waits for the test's flush, never for the clock.
        retry_intervals_secs: vec![3600],
        ..DeliveryConfig::default()
    }
}

fn start(runner: QueueRunner) -> ShutdownTrigger {
    let (trigger, shutdown) = shutdown_channel();
    runner.spawn(shutdown);
    trigger
}

/// Waits (up to a minute, for slow machines) until `done` holds.
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_integrators_queue_is_delivered_to_an_smtp_peer_and_signed() {
    let receiver = common::world();
    let config = delivery_config(peer(&receiver).await);
    let s = sender();
    let (private_key, _txt) = umail_smtp::dkim::generate().unwrap();
    let keys: Arc<dyn DkimKeySource> = Arc::new(vec![DkimKey {
        domain: SENDER_DOMAIN.into(),
        selector: "sel".into(),
        private_key,
    }]);
    let id = s
        .enqueue(ALICE, &["bob@example.com"], Notify::default())
        .await;
    let _stop =
        start(QueueRunner::new(s.services.clone(), router(&config), config).with_dkim_keys(keys));
    until("the queue to empty", || async {
        s.entry(id).await.is_none()
    })
    .await;
    let inbox = receiver.inbox("bob@example.com").await;
    assert_eq!(inbox.len(), 1, "delivered once");
    let text = String::from_utf8_lossy(&inbox[0]);
    assert!(
        text.starts_with("Return-Path: <alice@sender.test>\r\n"),
        "{text}"
    );
    assert!(text.contains("DKIM-Signature:"), "{text}");
    assert!(text.contains("d=sender.test"), "{text}");
    assert!(text.contains("s=sel"), "{text}");
    assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text}");
    assert!(
        s.queue.list(None).await.unwrap().is_empty(),
        "no DSN: nothing asked for one"
    );
}

#[tokio::test]
async fn a_refused_remote_recipient_fails_and_the_dsn_meets_the_filters() {
    let receiver = common::world();
    let config = delivery_config(peer(&receiver).await);
    let s = sender();
    let id = s
        .enqueue(
            ALICE,
            &["nobody@example.com", "bob@example.com"],
            Notify::default(),
        )
        .await;
    let _stop = start(QueueRunner::new(
        s.services.clone(),
        router(&config),
        config,
    ));
    until("the DSN", || async { !s.inbox(ALICE).await.is_empty() }).await;
    let entry = s.entry(id).await.expect("kept in the failed queue");
    assert_eq!(entry.state, QueueState::Failed);
    assert!(
        matches!(&entry.status[0], RecipientStatus::Failed { reply } if reply.starts_with("550 5.1.1")),
        "{:?}",
        entry.status
    );
    assert!(matches!(entry.status[1], RecipientStatus::Delivered { .. }));
    assert_eq!(receiver.inbox("bob@example.com").await.len(), 1);
    let dsn = String::from_utf8_lossy(&s.inbox(ALICE).await[0]).into_owned();
    assert!(dsn.starts_with("Return-Path: <>\r\n"), "{dsn}");
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(
        dsn.contains("Final-Recipient: rfc822; nobody@example.com"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
    // The DSN is system mail: the message stage saw it, then the
    // delivery stage for the local sender.
    let seen = s.filter.seen();
    assert!(
        seen.contains(&("data", Source::System, ALICE.to_string())),
        "{seen:?}"
    );
    assert!(
        seen.contains(&("delivery", Source::System, ALICE.to_string())),
        "{seen:?}"
    );
    assert_eq!(
        s.queue.list(None).await.unwrap().len(),
        1,
        "only the failed entry: the DSN was delivered at once, not queued"
    );
}

#[tokio::test]
async fn a_queued_local_copy_obeys_the_delivery_stage_of_the_filters() {
    let s = sender();
    // No remote destination in this test; the router is never asked.
    let config = DeliveryConfig {
        retry_intervals_secs: vec![3600],
        ..DeliveryConfig::default()
    };
    // Temp-fail once, then pass.
    s.filter
        .script(Verdict::tempfail(451, "4.7.1", "greylisted"));
    let id = s
        .enqueue("someone@remote.test", &[BOB], Notify::default())
        .await;
    let _stop = start(QueueRunner::new(
        s.services.clone(),
        router(&config),
        config,
    ));
    until("the temporary failure", || async {
        s.entry(id)
            .await
            .is_some_and(|e| e.state == QueueState::Deferred)
    })
    .await;
    let entry = s.entry(id).await.unwrap();
    assert_eq!(
        entry.status[0],
        RecipientStatus::Deferred {
            reply: "451 4.7.1 greylisted".into()
        },
        "the copy stays in the entry, deferred with the filter's reply"
    );
    assert!(s.inbox(BOB).await.is_empty());
    s.flush(id).await;
    until("the delivery", || async { s.entry(id).await.is_none() }).await;
    let inbox = s.inbox(BOB).await;
    assert_eq!(inbox.len(), 1, "delivered exactly once");
    assert!(inbox[0].starts_with(b"Return-Path: <someone@remote.test>\r\n"));
    let seen = s.filter.seen();
    assert_eq!(
        seen,
        vec![
            ("delivery", Source::QueueRetry, BOB.to_string()),
            ("delivery", Source::QueueRetry, BOB.to_string()),
        ],
        "only the delivery stage: the message stage ran when it was queued"
    );
}

#[tokio::test]
async fn a_queued_local_copy_the_filters_reject_fails_with_a_dsn() {
    let s = sender();
    let config = DeliveryConfig::default();
    s.filter
        .script(Verdict::reject(550, "5.7.1", "content refused"));
    let id = s.enqueue(ALICE, &[BOB], Notify::default()).await;
    let _stop = start(QueueRunner::new(
        s.services.clone(),
        router(&config),
        config,
    ));
    until("the DSN", || async { !s.inbox(ALICE).await.is_empty() }).await;
    let entry = s.entry(id).await.expect("kept in the failed queue");
    assert_eq!(entry.state, QueueState::Failed);
    assert_eq!(
        entry.status[0],
        RecipientStatus::Failed {
            reply: "550 5.7.1 content refused".into()
        }
    );
    assert!(s.inbox(BOB).await.is_empty(), "nothing stored for bob");
    let dsn = String::from_utf8_lossy(&s.inbox(ALICE).await[0]).into_owned();
    assert!(
        dsn.contains("Final-Recipient: rfc822; bob@sender.test"),
        "{dsn}"
    );
    assert!(dsn.contains("Status: 5.7.1"), "{dsn}");
    assert!(dsn.contains("550 5.7.1 content refused"), "{dsn}");
}

#[tokio::test]
async fn a_queued_copy_for_another_spelling_of_a_local_address_is_delivered() {
    let s = sender();
    let config = DeliveryConfig::default();
    // The pipeline reports bob under his primary address; the entry names
    // him through a domain alias, in other case.
    let id = s
        .enqueue(
            "someone@remote.test",
            &["Bob@ALIAS.test"],
            Notify::default(),
        )
        .await;
    let _stop = start(QueueRunner::new(
        s.services.clone(),
        router(&config),
        config,
    ));
    until("the delivery", || async { s.entry(id).await.is_none() }).await;
    assert_eq!(s.inbox(BOB).await.len(), 1, "delivered exactly once");
    assert!(
        s.queue.list(None).await.unwrap().is_empty(),
        "no DSN, no retry"
    );
}
