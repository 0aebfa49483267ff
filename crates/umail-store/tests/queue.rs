//! `QueueStore` semantics.

use bytes::Bytes;
use umail_core::{
    Address, AttemptLog, EnqueueOptions, Envelope, Priority, QueueError, QueueId, QueueState,
    QueueStore, Recipient, RecipientStatus, ReversePath,
};
use umail_store::{MAX_ATTEMPT_LOG, Store};

fn envelope(rcpts: &[&str]) -> Envelope {
    let mut e = Envelope::new(ReversePath::Address("sender@example.com".parse().unwrap()));
    for r in rcpts {
        e.recipients
            .push(Recipient::new(r.parse::<Address>().unwrap()));
    }
    e
}

#[tokio::test]
async fn enqueue_get_content_due_update_remove() {
    let store = Store::open_in_memory().unwrap();
    let body = Bytes::from_static(b"Subject: q\r\n\r\nbody\r\n");
    let a = store
        .enqueue(
            envelope(&["x@remote.example", "y@remote.example"]),
            body.clone(),
            100,
        )
        .await
        .unwrap();
    let b = store
        .enqueue(
            envelope(&["z@remote.example"]),
            Bytes::from_static(b"2"),
            50,
        )
        .await
        .unwrap();
    assert!(b > a, "ids are monotonic");

    let entry = store.get(a).await.unwrap().unwrap();
    assert_eq!(entry.state, QueueState::Active);
    assert_eq!(entry.status, vec![RecipientStatus::Pending; 2]);
    assert_eq!(entry.size, body.len() as u64);
    assert_eq!(
        (entry.created, entry.next_attempt, entry.attempts),
        (100, 100, 0)
    );
    assert_eq!(store.content(a).await.unwrap(), Some(body));

    // Due: by next attempt, bounded by now and limit.
    let ids = |v: Vec<umail_core::QueueEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(ids(store.due(49, 10).await.unwrap()), Vec::<QueueId>::new());
    assert_eq!(ids(store.due(100, 10).await.unwrap()), vec![b, a]);
    assert_eq!(ids(store.due(100, 1).await.unwrap()), vec![b]);
    assert_eq!(ids(store.due(100, 0).await.unwrap()), Vec::<QueueId>::new());

    // Deferred to later: not due now.
    let mut deferred = entry.clone();
    deferred.state = QueueState::Deferred;
    deferred.next_attempt = 500;
    deferred.attempts = 1;
    deferred.status[0] = RecipientStatus::Delivered {
        reply: "250 ok".into(),
    };
    deferred.status[1] = RecipientStatus::Deferred {
        reply: "451 later".into(),
    };
    deferred.log.push(AttemptLog {
        at: 100,
        host: Some("mx.remote.example".into()),
        result: "451 later".into(),
    });
    store.update(&deferred).await.unwrap();
    assert_eq!(ids(store.due(100, 10).await.unwrap()), vec![b]);
    assert_eq!(ids(store.due(500, 10).await.unwrap()), vec![b, a]);
    assert_eq!(store.get(a).await.unwrap().unwrap(), deferred);

    // Held: never due.
    let mut held = store.get(b).await.unwrap().unwrap();
    held.state = QueueState::Held;
    store.update(&held).await.unwrap();
    assert_eq!(ids(store.due(1000, 10).await.unwrap()), vec![a]);
    assert_eq!(
        ids(store.list(Some(QueueState::Held)).await.unwrap()),
        vec![b]
    );
    assert_eq!(ids(store.list(None).await.unwrap()), vec![a, b]);
    store.check_invariants().unwrap();

    store.remove(a).await.unwrap();
    assert!(store.get(a).await.unwrap().is_none());
    assert!(store.content(a).await.unwrap().is_none());
    assert!(matches!(
        store.remove(a).await,
        Err(QueueError::NotFound(_))
    ));
    assert!(matches!(
        store.update(&deferred).await,
        Err(QueueError::NotFound(_))
    ));
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn attempt_log_is_bounded() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .enqueue(envelope(&["x@remote.example"]), Bytes::from_static(b"m"), 0)
        .await
        .unwrap();
    let mut e = store.get(id).await.unwrap().unwrap();
    for i in 0..(MAX_ATTEMPT_LOG + 10) {
        e.log.push(AttemptLog {
            at: i as i64,
            host: None,
            result: format!("try {i}"),
        });
    }
    store.update(&e).await.unwrap();
    let stored = store.get(id).await.unwrap().unwrap();
    assert_eq!(stored.log.len(), MAX_ATTEMPT_LOG);
    assert_eq!(stored.log[0].at, 10, "the oldest lines are dropped");
}

#[tokio::test]
async fn queue_survives_reopen_and_ids_keep_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q.redb");
    let first = {
        let store = Store::open(&path).unwrap();
        store
            .enqueue(envelope(&["x@remote.example"]), Bytes::from_static(b"m"), 0)
            .await
            .unwrap()
    };
    let store = Store::open(&path).unwrap();
    assert!(store.get(first).await.unwrap().is_some());
    let second = store
        .enqueue(envelope(&["x@remote.example"]), Bytes::from_static(b"n"), 0)
        .await
        .unwrap();
    assert!(second > first);
}

#[tokio::test]
async fn due_orders_by_priority_then_age_even_behind_a_backlog() {
    let store = Store::open_in_memory().unwrap();
    let mut normal = Vec::new();
    for at in 0..20 {
        normal.push(
            store
                .enqueue(
                    envelope(&["x@remote.example"]),
                    Bytes::from_static(b"n"),
                    at,
                )
                .await
                .unwrap(),
        );
    }
    let low = store
        .enqueue_with(
            envelope(&["x@remote.example"]),
            Bytes::from_static(b"l"),
            0,
            &EnqueueOptions::with_priority(Priority::Low),
        )
        .await
        .unwrap();
    let high_late = store
        .enqueue_with(
            envelope(&["x@remote.example"]),
            Bytes::from_static(b"h"),
            90,
            &EnqueueOptions::with_priority(Priority::High),
        )
        .await
        .unwrap();
    let high_early = store
        .enqueue_with(
            envelope(&["x@remote.example"]),
            Bytes::from_static(b"h"),
            80,
            &EnqueueOptions::with_priority(Priority::High),
        )
        .await
        .unwrap();
    let ids = |v: Vec<umail_core::QueueEntry>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    // Twenty older normal entries do not hide the urgent ones.
    assert_eq!(
        ids(store.due(100, 3).await.unwrap()),
        vec![high_early, high_late, normal[0]]
    );
    let all = ids(store.due(100, 100).await.unwrap());
    assert_eq!(all.len(), 23);
    assert_eq!(all.last(), Some(&low), "low priority leaves last");
    // Not yet due stays out whatever its priority.
    assert_eq!(
        ids(store.due(50, 2).await.unwrap()),
        vec![normal[0], normal[1]]
    );

    // An operator lowers an entry: the index follows.
    let mut e = store.get(high_early).await.unwrap().unwrap();
    e.priority = Priority::Low;
    store.update(&e).await.unwrap();
    assert_eq!(ids(store.due(100, 1).await.unwrap()), vec![high_late]);
    store.check_invariants().unwrap();
}

#[tokio::test]
async fn held_at_enqueue_is_held_from_the_first_commit() {
    let store = Store::open_in_memory().unwrap();
    let id = store
        .enqueue_with(
            envelope(&["x@remote.example"]),
            Bytes::from_static(b"m"),
            7,
            &EnqueueOptions::default().held("awaiting approval"),
        )
        .await
        .unwrap();
    let e = store.get(id).await.unwrap().unwrap();
    assert_eq!(e.state, QueueState::Held);
    assert_eq!(e.priority, Priority::Normal);
    assert_eq!(e.log.len(), 1);
    assert_eq!(e.log[0].result, "held: awaiting approval");
    assert!(store.due(i64::MAX, 10).await.unwrap().is_empty());
    store.check_invariants().unwrap();
}

#[test]
fn entries_stored_before_priorities_read_as_normal() {
    // A record as written before the field existed: today's encoding
    // without "priority".
    let mut record = serde_json::to_value(umail_core::QueueEntry::new(
        QueueId(5),
        envelope(&["x@remote.example"]),
        1,
        1,
        &EnqueueOptions::with_priority(Priority::High),
    ))
    .unwrap();
    assert!(record.as_object_mut().unwrap().remove("priority").is_some());
    let e: umail_core::QueueEntry = serde_json::from_value(record).unwrap();
    assert_eq!(e.priority, Priority::Normal);
}
