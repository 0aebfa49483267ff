//! The ingest pipeline over the in-memory services: every source meets the
//! filter chain and has its verdict honoured, and the pipeline's own rules
//! (loops, relaying, quota, holds, queue retries) hold for each.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use umail_core::config::SecurityConfig;
use umail_core::ingest::{
    Incoming, Ingest, IngestSettings, LocalTarget, RecipientOutcome, Recipients, Source,
};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::store::INBOX;
use umail_core::{
    Action, Address, Disposition, Envelope, Filter, MailStore, MessageData, QueueState, QueueStore,
    Quota, Recipient, ReversePath, Services, SessionInfo, Verdict,
};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const MESSAGE: &[u8] = b"From: someone@remote.example\r\nSubject: hello\r\n\r\nbody\r\n";

/// A filter that records what it saw and answers with a fixed verdict.
struct Recorder {
    on_data: Mutex<Option<Verdict>>,
    on_delivery: Mutex<Option<Verdict>>,
    seen: Mutex<Vec<(&'static str, Source, String)>>,
}

impl Recorder {
    fn new(on_data: Option<Verdict>, on_delivery: Option<Verdict>) -> Arc<Recorder> {
        Arc::new(Recorder {
            on_data: Mutex::new(on_data),
            on_delivery: Mutex::new(on_delivery),
            seen: Mutex::new(Vec::new()),
        })
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

    async fn on_data(&self, session: &SessionInfo, _: &Envelope, m: MessageData<'_>) -> Verdict {
        self.seen
            .lock()
            .unwrap()
            .push(("data", m.source, session.listener.clone()));
        assert!(m.raw.ends_with(b"body\r\n"), "the filter sees the message");
        self.on_data
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(Verdict::pass)
    }

    async fn on_delivery(&self, _: &Envelope, rcpt: &Address, m: MessageData<'_>) -> Verdict {
        self.seen
            .lock()
            .unwrap()
            .push(("delivery", m.source, rcpt.to_string()));
        self.on_delivery
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(Verdict::pass)
    }
}

struct World {
    dir: Arc<MemoryDirectory>,
    store: Arc<MemoryMailStore>,
    queue: Arc<MemoryQueue>,
    filter: Arc<Recorder>,
    ingest: Ingest,
}

fn world(filter: Arc<Recorder>) -> World {
    let dir = Arc::new(MemoryDirectory::new());
    dir.add_user(ALICE, "pw");
    dir.add_user(BOB, "pw");
    dir.add_alias("team@example.com", &[ALICE, BOB]);
    dir.add_alias("fwd@example.com", &["carol@partner.example"]);
    let store = Arc::new(MemoryMailStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let services = Services {
        directory: dir.clone(),
        store: store.clone(),
        queue: queue.clone(),
        filter: filter.clone(),
        lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
        hostname: "mx.example.com".into(),
    };
    World {
        dir,
        store,
        queue,
        filter,
        ingest: Ingest::new(services, IngestSettings::default()),
    }
}

fn envelope(from: &str, to: &[&str]) -> Envelope {
    let mut e = Envelope::new(if from.is_empty() {
        ReversePath::Null
    } else {
        ReversePath::Address(from.parse().unwrap())
    });
    e.recipients = to
        .iter()
        .map(|a| Recipient::new(a.parse().unwrap()))
        .collect();
    e
}

async fn mailbox(w: &World, account: &str, name: &str) -> Vec<Vec<u8>> {
    let Some(mb) = w.store.mailbox(account, name).await.unwrap() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in w.store.messages(account, mb.id).await.unwrap() {
        let c = w
            .store
            .message_content(account, mb.id, m.uid)
            .await
            .unwrap()
            .unwrap();
        out.push(c.to_vec());
    }
    out
}

/// Every source but queue retries: the message stage sees the message
/// with the source named, a reject refuses the whole message, a discard
/// accepts it and stores nothing, and an action is applied.
#[tokio::test]
async fn every_source_meets_the_filter_and_its_verdict_is_honoured() {
    let sources = [
        Source::Mx,
        Source::Submission,
        Source::Collection,
        Source::Import,
        Source::System,
    ];
    for source in sources {
        // Reject.
        let w = world(Recorder::new(
            Some(Verdict::reject(550, "5.7.1", "no thanks")),
            None,
        ));
        let report = w
            .ingest
            .ingest(Incoming::new(
                source,
                envelope("someone@remote.example", &[ALICE]),
                MESSAGE.to_vec(),
            ))
            .await;
        assert!(!report.accepted(), "{source}");
        assert_eq!(report.refusal.as_ref().unwrap().code, 550, "{source}");
        assert!(mailbox(&w, ALICE, INBOX).await.is_empty(), "{source}");
        assert_eq!(
            w.filter.seen(),
            vec![("data", source, source.name().to_string())],
            "{source}"
        );

        // Discard.
        let w = world(Recorder::new(Some(Verdict::of(Disposition::Discard)), None));
        let report = w
            .ingest
            .ingest(Incoming::new(
                source,
                envelope("someone@remote.example", &[ALICE]),
                MESSAGE.to_vec(),
            ))
            .await;
        assert!(report.accepted() && report.discarded, "{source}");
        assert!(mailbox(&w, ALICE, INBOX).await.is_empty(), "{source}");

        // Continue with actions: a header and a folder.
        let w = world(Recorder::new(
            Some(Verdict::with_actions(vec![
                Action::AddHeader {
                    name: "X-Checked".into(),
                    value: source.name().into(),
                },
                Action::FileInto("Checked".into()),
            ])),
            None,
        ));
        let report = w
            .ingest
            .ingest(Incoming::new(
                source,
                envelope("someone@remote.example", &[ALICE]),
                MESSAGE.to_vec(),
            ))
            .await;
        assert!(report.accepted(), "{source}");
        let stored = mailbox(&w, ALICE, "Checked").await;
        assert_eq!(stored.len(), 1, "{source}");
        let text = String::from_utf8(stored[0].clone()).unwrap();
        assert!(
            text.contains(&format!("X-Checked: {}\r\n", source.name())),
            "{text}"
        );
        assert_eq!(
            text.starts_with("Return-Path: <someone@remote.example>\r\n"),
            source.adds_return_path(),
            "{source}: {text}"
        );
        let seen = w.filter.seen();
        assert_eq!(seen[0].0, "data");
        assert_eq!(seen[1], ("delivery", source, ALICE.to_string()));
    }
}

#[tokio::test]
async fn queue_retries_skip_the_message_stage_and_defer_temporary_failures() {
    let w = world(Recorder::new(
        Some(Verdict::reject(550, "5.7.1", "must not run")),
        Some(Verdict::tempfail(451, "4.7.1", "scanner busy")),
    ));
    let report = w
        .ingest
        .ingest(Incoming::new(
            Source::QueueRetry,
            envelope("someone@remote.example", &[ALICE]),
            MESSAGE.to_vec(),
        ))
        .await;
    assert_eq!(
        w.filter.seen(),
        vec![("delivery", Source::QueueRetry, ALICE.to_string())]
    );
    assert!(!report.accepted());
    assert!(matches!(
        &report.recipients[0].outcome,
        RecipientOutcome::Deferred(r) if r.code == 451
    ));
    // The entry being retried keeps it: no second queue entry.
    assert!(w.queue.list(None).await.unwrap().is_empty());

    // A retry goes to the final address only: an alias is not followed
    // again.
    let w = world(Recorder::new(None, None));
    let report = w
        .ingest
        .ingest(Incoming::new(
            Source::QueueRetry,
            envelope("", &["team@example.com"]),
            MESSAGE.to_vec(),
        ))
        .await;
    assert!(matches!(
        &report.recipients[0].outcome,
        RecipientOutcome::Refused(r) if r.code == 550
    ));
}

#[tokio::test]
async fn loops_are_refused_for_every_source() {
    let mut looped = Vec::new();
    for i in 0..101 {
        looped.extend_from_slice(format!("Received: from hop{i}\r\n").as_bytes());
    }
    looped.extend_from_slice(MESSAGE);
    for source in [Source::Mx, Source::Collection, Source::System] {
        let w = world(Recorder::new(None, None));
        let report = w
            .ingest
            .ingest(Incoming::new(
                source,
                envelope("a@remote.example", &[ALICE]),
                looped.clone(),
            ))
            .await;
        assert_eq!(report.refusal.unwrap().enhanced.as_deref(), Some("5.4.6"));
        assert!(w.filter.seen().is_empty(), "refused before any filter");
    }
    // A queued copy carries this hop's own Received on top of what was
    // counted when it entered: it is not refused on retry.
    let w = world(Recorder::new(None, None));
    let report = w
        .ingest
        .ingest(Incoming::new(
            Source::QueueRetry,
            envelope("a@remote.example", &[ALICE]),
            looped,
        ))
        .await;
    assert!(report.accepted(), "{report:?}");
}

#[tokio::test]
async fn sources_that_may_not_relay_cannot_reach_remote_addresses() {
    let w = world(Recorder::new(None, None));
    for source in [Source::Mx, Source::Collection, Source::Import] {
        let report = w
            .ingest
            .ingest(Incoming::new(
                source,
                envelope("a@remote.example", &["x@elsewhere.example"]),
                MESSAGE.to_vec(),
            ))
            .await;
        assert!(!report.accepted(), "{source}");
        assert!(matches!(
            &report.recipients[0].outcome,
            RecipientOutcome::Refused(r) if r.enhanced.as_deref() == Some("5.7.1")
        ));
    }
    // A forwarding alias is not relaying; system mail may go anywhere.
    for (source, rcpt) in [
        (Source::Mx, "fwd@example.com"),
        (Source::System, "x@elsewhere.example"),
    ] {
        let report = w
            .ingest
            .ingest(Incoming::new(
                source,
                envelope("", &[rcpt]),
                MESSAGE.to_vec(),
            ))
            .await;
        assert!(report.accepted(), "{source}");
        assert_eq!(report.recipients[0].outcome, RecipientOutcome::Queued);
    }
    assert_eq!(w.queue.list(None).await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_full_mailbox_refuses_a_collected_message_and_keeps_nothing() {
    let w = world(Recorder::new(None, None));
    w.dir.update_user(ALICE, |p| {
        p.quota = Quota {
            bytes: 10,
            messages: 0,
        }
    });
    let target = LocalTarget {
        account: ALICE.into(),
        address: ALICE.parse().unwrap(),
        mailbox: Some("Fetched".into()),
    };
    let report = w
        .ingest
        .ingest(
            Incoming::new(
                Source::Collection,
                envelope("a@remote.example", &[ALICE]),
                MESSAGE.to_vec(),
            )
            .into_mailboxes(vec![target.clone()]),
        )
        .await;
    assert!(!report.accepted());
    assert_eq!(report.reason().unwrap().enhanced.as_deref(), Some("5.2.2"));
    assert!(mailbox(&w, ALICE, "Fetched").await.is_empty());

    // Room again: the same message lands in the named folder.
    w.dir.update_user(ALICE, |p| p.quota = Quota::default());
    let report = w
        .ingest
        .ingest(
            Incoming::new(
                Source::Collection,
                envelope("a@remote.example", &[ALICE]),
                MESSAGE.to_vec(),
            )
            .into_mailboxes(vec![target]),
        )
        .await;
    assert!(report.accepted());
    assert_eq!(mailbox(&w, ALICE, "Fetched").await, vec![MESSAGE.to_vec()]);
}

#[tokio::test]
async fn lists_and_aliases_expand_and_a_hold_queues_every_copy_held() {
    let w = world(Recorder::new(
        Some(Verdict::of(Disposition::Hold("approval".into()))),
        None,
    ));
    let report = w
        .ingest
        .ingest(Incoming::new(
            Source::Submission,
            envelope(ALICE, &["team@example.com"]),
            MESSAGE.to_vec(),
        ))
        .await;
    assert!(report.accepted());
    assert!(
        report
            .recipients
            .iter()
            .all(|r| r.outcome == RecipientOutcome::Held)
    );
    let held = w.queue.list(Some(QueueState::Held)).await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].envelope.recipients.len(), 2);
    assert!(mailbox(&w, BOB, INBOX).await.is_empty());
}

#[tokio::test]
async fn mailbox_targets_are_checked_against_the_directory() {
    let w = world(Recorder::new(None, None));
    let report = w
        .ingest
        .ingest(Incoming {
            recipients: Recipients::Mailboxes(vec![LocalTarget {
                account: "ghost@example.com".into(),
                address: "ghost@example.com".parse().unwrap(),
                mailbox: None,
            }]),
            ..Incoming::new(
                Source::Import,
                envelope("a@remote.example", &[]),
                MESSAGE.to_vec(),
            )
        })
        .await;
    assert!(!report.accepted());
    assert_eq!(report.reason().unwrap().code, 550);
}
