//! The queue runner: picks due entries, delivers local recipients through
//! the ingest pipeline and remote ones over SMTP, records every attempt
//! durably, retries on schedule and sends DSNs through the pipeline.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;
use umail_core::config::{DeliveryConfig, DeliveryMode};
use umail_core::ingest::{Incoming, Ingest, RecipientOutcome, Source};
use umail_core::store::INBOX;
use umail_core::{
    AttemptLog, Envelope, QueueEntry, QueueState, Recipient, RecipientStatus, Reply, Resolution,
    ReversePath, Services, Shutdown,
};

use crate::client::{ClientError, ClientSettings, RcptOutcome, SmtpConnection, Timeouts};
use crate::dkim::{DkimKey, DkimKeySource};
use crate::dsn::{DsnAction, DsnInput, DsnRecipient};
use crate::routing::{Hop, RouteError, Router};

/// The queue is polled at least this often (new, flushed and released
/// entries wake the runner at once through
/// [`QueueStore::wait_for_work`](umail_core::QueueStore::wait_for_work)).
pub const POLL: Duration = Duration::from_millis(500);
/// Most due entries one scheduling pass reads when it looks past busy
/// destinations for work.
pub const MAX_SCHEDULING_WINDOW: usize = 4096;
/// DKIM keys are re-read from their [`DkimKeySource`] at most this often.
pub const DKIM_CACHE: Duration = Duration::from_secs(1);
/// Attempt-log lines that marked sent DSNs before `QueueEntry::reported`
/// and `delay_reported` existed; still honoured for entries queued then.
const LEGACY_DELAY_MARK: &str = "delay DSN sent";

fn reported(entry: &QueueEntry, i: usize) -> bool {
    entry.reported.contains(&i)
        || entry.log.iter().any(|l| {
            l.result == format!("dsn-failed {i}") || l.result == format!("dsn-success {i}")
        })
}

fn delay_reported(entry: &QueueEntry) -> bool {
    entry.delay_reported || entry.log.iter().any(|l| l.result == LEGACY_DELAY_MARK)
}

/// The shared state of the runner.
pub(crate) struct Runner {
    services: Services,
    /// Local deliveries and DSNs go through it.
    ingest: Ingest,
    dkim_keys: Option<Arc<dyn DkimKeySource>>,
    router: Router,
    cfg: DeliveryConfig,
    timeouts: Timeouts,
    global: Arc<Semaphore>,
    per_host: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
    pool: Mutex<HashMap<SocketAddr, Vec<(SmtpConnection, Instant)>>>,
    refused: Mutex<HashMap<SocketAddr, Instant>>,
    /// Entries being delivered, with their destination domain.
    in_flight: Mutex<HashMap<u64, String>>,
    /// Signalled when an entry finishes and its connection slot is free.
    slot_freed: tokio::sync::Notify,
    dkim: Mutex<(Instant, HashMap<String, DkimKey>)>,
}

/// An entry being delivered. Dropping it (also when delivery panics) frees
/// the entry for the next pass and the connection slot for the next entry.
struct Slot {
    runner: Arc<Runner>,
    id: u64,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        lock(&self.runner.in_flight).remove(&self.id);
        // Released before the wake-up, so the woken pass sees the free slot.
        drop(self.permit.take());
        self.runner.slot_freed.notify_one();
    }
}

/// The domain of an entry's first undelivered recipient: what the
/// per-destination share of connections is counted by ("" when none).
fn destination(entry: &QueueEntry) -> String {
    entry
        .envelope
        .recipients
        .iter()
        .zip(&entry.status)
        .find(|(_, s)| {
            matches!(
                s,
                RecipientStatus::Pending | RecipientStatus::Deferred { .. }
            )
        })
        .map(|(r, _)| r.address.domain().as_str().to_ascii_lowercase())
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Outcome {
    Delivered(String),
    /// Accepted by a DSN-capable peer: NOTIFY was passed on (RFC 3461 §5.2.2).
    PassedOn(String),
    Deferred(String),
    Failed(String),
}

impl Runner {
    /// A runner over the pipeline's services with the given routing.
    pub(crate) fn new(
        ingest: Ingest,
        router: Router,
        cfg: DeliveryConfig,
        dkim_keys: Option<Arc<dyn DkimKeySource>>,
    ) -> Runner {
        Runner {
            timeouts: Timeouts::from(&cfg.timeouts),
            global: Arc::new(Semaphore::new(cfg.max_connections.max(1))),
            services: ingest.services().clone(),
            ingest,
            dkim_keys,
            router,
            cfg,
            per_host: Mutex::new(HashMap::new()),
            pool: Mutex::new(HashMap::new()),
            refused: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            slot_freed: tokio::sync::Notify::new(),
            dkim: Mutex::new((Instant::now() - Duration::from_secs(3600), HashMap::new())),
        }
    }

    /// Runs until shutdown.
    pub(crate) async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            if shutdown.is_triggered() {
                break;
            }
            self.tick().await;
            tokio::select! {
                _ = self.services.queue.wait_for_work(POLL) => {}
                _ = self.slot_freed.notified() => {}
                _ = shutdown.wait() => break,
            }
        }
        tracing::info!(target: "queue", "queue runner stopped");
    }

    async fn tick(self: &Arc<Self>) {
        {
            let idle_keep = Duration::from_secs(self.cfg.connection_idle_secs);
            let mut pool = lock(&self.pool);
            for conns in pool.values_mut() {
                conns.retain(|(_, t)| t.elapsed() < idle_keep);
            }
            pool.retain(|_, v| !v.is_empty());
        }
        // Take only as many entries as there are free slots, so that the
        // next free slot goes to whatever is most urgent at that moment (a
        // high-priority message queued behind a backlog leaves next).
        let mut window = self.global.available_permits() + lock(&self.in_flight).len();
        let now = umail_core::unix_now();
        loop {
            if self.global.available_permits() == 0 {
                return;
            }
            let due = match self.services.queue.due(now, window).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(target: "queue", error = %e, "cannot read the queue");
                    return;
                }
            };
            let whole_window = due.len() == window;
            let mut skipped = false;
            for entry in due {
                let destination = destination(&entry);
                {
                    let in_flight = lock(&self.in_flight);
                    if in_flight.contains_key(&entry.id.0) {
                        continue;
                    }
                    // One busy destination must not take every connection
                    // and starve the others (its extra entries would only
                    // wait for its per-host limit while holding a slot).
                    let busy_there = in_flight.values().filter(|d| **d == destination).count();
                    if !destination.is_empty()
                        && busy_there >= self.cfg.max_connections_per_host.max(1)
                    {
                        skipped = true;
                        continue;
                    }
                }
                let Ok(permit) = Arc::clone(&self.global).try_acquire_owned() else {
                    return;
                };
                lock(&self.in_flight).insert(entry.id.0, destination);
                let slot = Slot {
                    runner: Arc::clone(self),
                    id: entry.id.0,
                    permit: Some(permit),
                };
                tokio::spawn(async move {
                    slot.runner.process(entry).await;
                    drop(slot);
                });
            }
            // Slots are still free, but the window was all busy destinations:
            // look further down the queue (rare, and only while deliveries to
            // those destinations are slow, so the wider read is affordable).
            if !skipped || !whole_window || window >= MAX_SCHEDULING_WINDOW {
                return;
            }
            window = (window * 8).min(MAX_SCHEDULING_WINDOW);
        }
    }

    async fn reload_dkim(&self) {
        let mut map = HashMap::new();
        if let Some(source) = &self.dkim_keys {
            match source.signing_keys().await {
                Ok(keys) => {
                    for k in keys {
                        map.insert(k.domain.to_ascii_lowercase(), k);
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "queue", error = %e, "cannot read DKIM keys; sending unsigned");
                }
            }
        }
        *lock(&self.dkim) = (Instant::now(), map);
    }

    fn sign(&self, envelope: &Envelope, message: &[u8]) -> Option<Vec<u8>> {
        let from_domain = crate::dkim::signing_domain(message).or_else(|| {
            envelope
                .reverse_path
                .address()
                .map(|a| a.domain().as_str().to_ascii_lowercase())
        })?;
        let key = lock(&self.dkim).1.get(&from_domain).cloned()?;
        match crate::dkim::sign(&key, message) {
            Ok(mut h) => {
                h.extend_from_slice(message);
                Some(h)
            }
            Err(e) => {
                tracing::warn!(target: "queue", domain = %from_domain, error = %e, "DKIM signing failed; sending unsigned");
                None
            }
        }
    }

    async fn process(&self, stale: QueueEntry) {
        let q = &self.services.queue;
        // `due()` read the entry before this slot claimed it: a delivery of
        // the same entry may have finished in between (and freed its
        // claim), leaving this copy showing delivered recipients as still
        // pending. Work only on the entry as it is now.
        let mut entry = match q.get(stale.id).await {
            Ok(Some(e))
                if matches!(e.state, QueueState::Active | QueueState::Deferred)
                    && e.next_attempt <= umail_core::unix_now() =>
            {
                e
            }
            Ok(_) => {
                tracing::debug!(target: "queue", id = %stale.id, "entry changed since it was found due; skipped");
                return;
            }
            Err(e) => {
                tracing::warn!(target: "queue", id = %stale.id, error = %e, "cannot read queue entry");
                return;
            }
        };
        let message = match q.content(entry.id).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::error!(target: "queue", id = %entry.id, "queue entry has no content; removed");
                let _ = q.remove(entry.id).await;
                return;
            }
            Err(e) => {
                tracing::warn!(target: "queue", id = %entry.id, error = %e, "cannot read queued message");
                return;
            }
        };
        // Group pending recipients by domain: one transaction per destination.
        let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
        for (i, st) in entry.status.iter().enumerate() {
            if !matches!(
                st,
                RecipientStatus::Pending | RecipientStatus::Deferred { .. }
            ) {
                continue;
            }
            let Some(r) = entry.envelope.recipients.get(i) else {
                continue;
            };
            let d = r.address.domain().as_str().to_ascii_lowercase();
            match groups.iter_mut().find(|(g, _)| *g == d) {
                Some((_, v)) => v.push(i),
                None => groups.push((d, vec![i])),
            }
        }
        if lock(&self.dkim).0.elapsed() > DKIM_CACHE {
            self.reload_dkim().await;
        }
        let mut signed: Option<Option<Vec<u8>>> = None;
        let mut delivered_remote: HashMap<usize, String> = HashMap::new();
        let mut passed_on: HashSet<usize> = HashSet::new();
        let last_group = groups.len().saturating_sub(1);
        for (g, (domain, idx)) in groups.into_iter().enumerate() {
            let local = match umail_core::Domain::parse(&domain) {
                Ok(d) => self
                    .services
                    .directory
                    .is_local_domain(&d)
                    .await
                    .unwrap_or(false),
                Err(_) => false,
            };
            let (outcomes, host) = if local {
                (self.deliver_local(&entry, &idx, &message).await, None)
            } else {
                let msg = signed
                    .get_or_insert_with(|| self.sign(&entry.envelope, &message))
                    .clone()
                    .map(Bytes::from)
                    .unwrap_or_else(|| message.clone());
                self.deliver_remote(&entry, &domain, &idx, &msg).await
            };
            for (i, o) in idx.iter().zip(outcomes) {
                entry.status[*i] = match o {
                    Outcome::Delivered(reply) => {
                        if let Some(h) = &host {
                            delivered_remote.insert(*i, h.clone());
                        }
                        RecipientStatus::Delivered { reply }
                    }
                    Outcome::PassedOn(reply) => {
                        passed_on.insert(*i);
                        RecipientStatus::Delivered { reply }
                    }
                    Outcome::Deferred(reply) => RecipientStatus::Deferred { reply },
                    Outcome::Failed(reply) => RecipientStatus::Failed { reply },
                };
            }
            entry.log.push(AttemptLog {
                at: umail_core::unix_now(),
                host: host.clone().or_else(|| local.then(|| "local".to_string())),
                result: format!("{domain}: {}", summary(&entry, &idx)),
            });
            // Durable after each destination: a crash re-sends at most one
            // group. After the last one, `finish` writes (or removes) the entry.
            if g < last_group
                && let Err(e) = q.update(&entry).await
            {
                tracing::warn!(target: "queue", id = %entry.id, error = %e, "cannot record delivery status");
            }
        }
        self.finish(entry, &message, &delivered_remote, &passed_on)
            .await;
    }

    async fn finish(
        &self,
        mut entry: QueueEntry,
        message: &Bytes,
        remote_hosts: &HashMap<usize, String>,
        passed_on: &HashSet<usize>,
    ) {
        let q = &self.services.queue;
        let now = umail_core::unix_now();
        let pending = entry.status.iter().any(|s| {
            matches!(
                s,
                RecipientStatus::Pending | RecipientStatus::Deferred { .. }
            )
        });
        entry.attempts += 1;
        // Retrying starts at arrival, or at the release time of scheduled mail.
        let retry_start = entry
            .envelope
            .release_at
            .map_or(entry.created, |t| t.max(entry.created));
        let expired = now - retry_start >= self.cfg.max_queue_age_secs as i64;
        if pending && expired {
            for s in entry.status.iter_mut() {
                if let RecipientStatus::Pending | RecipientStatus::Deferred { .. } = s {
                    let last = match s {
                        RecipientStatus::Deferred { reply } => reply.clone(),
                        _ => String::new(),
                    };
                    // RFC 3463: X.4.7 delivery time expired.
                    *s = RecipientStatus::Failed {
                        reply: format!("550 5.4.7 delivery time expired; last error: {last}"),
                    };
                }
            }
        }
        let pending = pending && !expired;
        // Failure DSNs for recipients that failed in this pass (not before).
        let newly_failed: Vec<usize> = entry
            .status
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(s, RecipientStatus::Failed { .. }))
            .filter(|(i, _)| !reported(&entry, *i))
            .map(|(i, _)| i)
            .collect();
        let mut report = Vec::new();
        for &i in &newly_failed {
            let r = &entry.envelope.recipients[i];
            if r.notify.never || (!r.notify.is_default() && !r.notify.failure) {
                continue;
            }
            let RecipientStatus::Failed { reply } = &entry.status[i] else {
                continue;
            };
            report.push(dsn_rcpt(
                r,
                DsnAction::Failed,
                reply,
                remote_hosts.get(&i).cloned().or_else(|| host_of(&entry, i)),
            ));
        }
        let mut success_reported = Vec::new();
        for (i, r) in entry.envelope.recipients.iter().enumerate() {
            if r.notify.success
                && !passed_on.contains(&i)
                && let Some(RecipientStatus::Delivered { reply }) = entry.status.get(i)
                && (remote_hosts.contains_key(&i) || reply.starts_with("250 local"))
                && !reported(&entry, i)
            {
                // RFC 3461 §5.2.2: "relayed" when the next hop could not
                // take NOTIFY; nothing when it could (it reports itself).
                report.push(dsn_rcpt(
                    r,
                    if remote_hosts.contains_key(&i) {
                        DsnAction::Relayed
                    } else {
                        DsnAction::Delivered
                    },
                    reply,
                    remote_hosts.get(&i).cloned(),
                ));
                success_reported.push(i);
            }
        }
        for (i, kind) in newly_failed
            .iter()
            .map(|i| (*i, "failure"))
            .chain(success_reported.iter().map(|i| (*i, "success")))
        {
            entry.reported.push(i);
            entry.log.push(AttemptLog {
                at: now,
                host: None,
                result: format!(
                    "{kind} DSN for {} queued",
                    entry.envelope.recipients[i].address
                ),
            });
        }
        let delay_after = i64::try_from(self.cfg.delay_notify_secs).unwrap_or(i64::MAX);
        if pending
            && self.cfg.delay_notify_secs != 0
            && now - retry_start >= delay_after
            && !delay_reported(&entry)
        {
            for (i, r) in entry.envelope.recipients.iter().enumerate() {
                let delay_ok = r.notify.delay || r.notify.is_default();
                if let Some(RecipientStatus::Deferred { reply }) = entry.status.get(i)
                    && delay_ok
                    && !r.notify.never
                {
                    let mut delayed = dsn_rcpt(r, DsnAction::Delayed, reply, host_of(&entry, i));
                    delayed.will_retry_until =
                        Some(retry_start.saturating_add_unsigned(self.cfg.max_queue_age_secs));
                    report.push(delayed);
                }
            }
            entry.delay_reported = true;
            entry.log.push(AttemptLog {
                at: now,
                host: None,
                result: "delay DSN queued".into(),
            });
        }
        if !report.is_empty() {
            self.send_dsn(&entry, message, report).await;
        }
        let any_failed = entry
            .status
            .iter()
            .any(|s| matches!(s, RecipientStatus::Failed { .. }));
        if pending {
            let intervals = &self.cfg.retry_intervals_secs;
            let step = intervals
                .get((entry.attempts as usize).saturating_sub(1))
                .or(intervals.last())
                .copied()
                .unwrap_or(300);
            entry.next_attempt = now + step as i64;
            entry.state = QueueState::Deferred;
            // An operator may have held the entry or changed its priority
            // while it was being delivered: their decision stands.
            if let Ok(Some(current)) = q.get(entry.id).await {
                entry.priority = current.priority;
                if current.state == QueueState::Held {
                    entry.state = QueueState::Held;
                }
            }
            if let Err(e) = q.update(&entry).await {
                tracing::warn!(target: "queue", id = %entry.id, error = %e, "cannot reschedule");
            }
        } else if any_failed && entry.envelope.reverse_path != ReversePath::Null {
            // Kept in the failed queue for the operator.
            entry.state = QueueState::Failed;
            if let Err(e) = q.update(&entry).await {
                tracing::warn!(target: "queue", id = %entry.id, error = %e, "cannot record failure");
            }
        } else {
            if any_failed {
                tracing::warn!(target: "queue", id = %entry.id, "bounce (null reverse path) undeliverable; dropped");
            }
            if let Err(e) = q.remove(entry.id).await {
                tracing::warn!(target: "queue", id = %entry.id, error = %e, "cannot remove delivered entry");
            } else {
                tracing::info!(target: "queue", id = %entry.id, "delivered; removed from the queue");
            }
        }
    }

    async fn send_dsn(&self, entry: &QueueEntry, message: &[u8], recipients: Vec<DsnRecipient>) {
        // RFC 3461 §6.2 / RFC 5321 §6.1: never bounce a bounce.
        let Some(to) = entry.envelope.reverse_path.address() else {
            tracing::info!(target: "queue", id = %entry.id, "no DSN for a null reverse path");
            return;
        };
        let dsn = crate::dsn::build(&DsnInput {
            reporting_mta: &self.services.hostname,
            to,
            envid: entry.envelope.envid.as_deref(),
            arrival: entry.created,
            ret: entry.envelope.ret,
            original: message,
            recipients,
        });
        let mut env = Envelope::new(ReversePath::Null);
        env.recipients.push(Recipient::new(to.clone()));
        env.smtputf8 = to.needs_smtputf8();
        // System mail: through the pipeline like every other message (a
        // local sender gets it at once, a remote one is queued).
        let mut dsn = Incoming::new(Source::System, env, dsn);
        // A bounce of bulk mail stays bulk.
        dsn.priority = Some(entry.priority);
        let report = self.ingest.ingest(dsn).await;
        match report.reason().filter(|_| !report.accepted()) {
            None => {
                tracing::info!(target: "queue", id = %entry.id, dsn = %report.id, to = %to, "DSN sent")
            }
            Some(reply) => {
                tracing::warn!(target: "queue", id = %entry.id, dsn = %report.id, to = %to, reply = %reply, "DSN not accepted")
            }
        }
    }

    /// Delivers the local recipients `idx` of `entry` through the ingest
    /// pipeline as a queued copy: the delivery stage of the filter chain
    /// decides, the pipeline commits, and each recipient's result becomes
    /// its outcome here.
    async fn deliver_local(
        &self,
        entry: &QueueEntry,
        idx: &[usize],
        message: &Bytes,
    ) -> Vec<Outcome> {
        let mut envelope = entry.envelope.clone();
        envelope.recipients = idx
            .iter()
            .map(|&i| entry.envelope.recipients[i].clone())
            .collect();
        let mut incoming = Incoming::new(Source::QueueRetry, envelope, message.to_vec());
        incoming.priority = Some(entry.priority);
        incoming.id = Some(entry.id);
        let report = self.ingest.ingest(incoming).await;
        if let Some(reply) = &report.refusal {
            let o = refused_outcome(reply);
            return idx.iter().map(|_| clone_outcome(&o)).collect();
        }
        let mut out = Vec::with_capacity(idx.len());
        for &i in idx {
            let address = &entry.envelope.recipients[i].address;
            // The pipeline reports a local copy under the account's primary
            // address, which may differ from the queued one (case, domain
            // alias): ask the directory when the address alone does not match.
            let mut found = report
                .recipients
                .iter()
                .find(|r| r.recipient.lookup_key() == address.lookup_key());
            if found.is_none()
                && let Ok(Resolution::Local(p)) = self.services.directory.resolve(address).await
            {
                found = report
                    .recipients
                    .iter()
                    .find(|r| r.recipient.lookup_key() == p.address.lookup_key());
            }
            out.push(match found.map(|r| &r.outcome) {
                Some(RecipientOutcome::Stored { mailbox }) if mailbox == INBOX => {
                    Outcome::Delivered("250 local delivery".into())
                }
                Some(RecipientOutcome::Stored { mailbox }) => {
                    Outcome::Delivered(format!("250 local delivery into {mailbox}"))
                }
                Some(RecipientOutcome::Discarded) => {
                    Outcome::Delivered("250 2.0.0 discarded by policy".into())
                }
                Some(RecipientOutcome::Queued | RecipientOutcome::Held) => {
                    Outcome::Delivered(format!("250 2.0.0 queued again as {}", report.id))
                }
                Some(RecipientOutcome::Deferred(reply)) => Outcome::Deferred(reply_line(reply)),
                Some(RecipientOutcome::Refused(reply)) => refused_outcome(reply),
                None => Outcome::Deferred("451 4.3.0 no local delivery result".into()),
            });
        }
        out
    }

    async fn deliver_remote(
        &self,
        entry: &QueueEntry,
        domain: &str,
        idx: &[usize],
        message: &Bytes,
    ) -> (Vec<Outcome>, Option<String>) {
        let mode = self.cfg.mode;
        let mut hops = Vec::new();
        let mut route_err = None;
        if mode != DeliveryMode::Relay {
            match self.router.resolve(domain).await {
                Ok(h) => hops = h,
                Err(e) => route_err = Some(e),
            }
        }
        let (mut outcomes, mut host) = if hops.is_empty() {
            let o = match &route_err {
                Some(RouteError::Permanent { status, text }) => {
                    Outcome::Failed(format!("550 {status} {text}"))
                }
                Some(RouteError::Temporary(t)) => Outcome::Deferred(format!("451 4.4.3 {t}")),
                None => Outcome::Deferred("451 4.4.3 no route".into()),
            };
            (
                idx.iter().map(|_| clone_outcome(&o)).collect::<Vec<_>>(),
                None,
            )
        } else {
            self.try_hops(&hops, entry, idx, message).await
        };
        // Smart host: everything (relay) or what direct delivery left over.
        let needs_relay: Vec<usize> = outcomes
            .iter()
            .enumerate()
            .filter(|(_, o)| match mode {
                DeliveryMode::Relay => true,
                DeliveryMode::DirectThenRelay => {
                    matches!(o, Outcome::Deferred(_))
                        || (route_err.is_some() && matches!(o, Outcome::Failed(_)))
                }
                DeliveryMode::Direct => false,
            })
            .map(|(k, _)| k)
            .collect();
        if !needs_relay.is_empty() {
            match self.router.smart_host().await {
                Ok(Some(hop)) => {
                    let sub: Vec<usize> = needs_relay.iter().map(|k| idx[*k]).collect();
                    let (o2, h2) = self
                        .try_hops(std::slice::from_ref(&hop), entry, &sub, message)
                        .await;
                    for (k, o) in needs_relay.iter().zip(o2) {
                        outcomes[*k] = o;
                    }
                    host = h2.or(host);
                }
                Ok(None) => {
                    if mode == DeliveryMode::Relay {
                        for k in needs_relay {
                            outcomes[k] = Outcome::Deferred(
                                "451 4.3.5 relay mode without [delivery] relay".into(),
                            );
                        }
                    }
                }
                Err(e) => {
                    for k in needs_relay {
                        if mode == DeliveryMode::Relay {
                            outcomes[k] = Outcome::Deferred(format!("451 {e}"));
                        }
                    }
                }
            }
        }
        (outcomes, host)
    }

    fn host_sem(&self, addr: SocketAddr) -> Arc<Semaphore> {
        Arc::clone(
            lock(&self.per_host).entry(addr).or_insert_with(|| {
                Arc::new(Semaphore::new(self.cfg.max_connections_per_host.max(1)))
            }),
        )
    }

    async fn connect(&self, hop: &Hop, addr: SocketAddr) -> Result<SmtpConnection, ClientError> {
        let settings = ClientSettings {
            hello_name: self.services.hostname.clone(),
            server_name: hop.name.clone(),
            tls: hop.tls,
            verify_certificate: hop.verify_certificate,
            auth: hop.auth.clone(),
            timeouts: self.timeouts,
        };
        let r = SmtpConnection::connect(addr, settings).await;
        if let Err(e) = &r {
            if matches!(e, ClientError::Io(_) | ClientError::Timeout("connect")) {
                lock(&self.refused).insert(addr, Instant::now());
            }
            tracing::info!(target: "smtp.out", host = %hop.name, %addr, error = %e, "connection failed");
        }
        r
    }

    async fn try_hops(
        &self,
        hops: &[Hop],
        entry: &QueueEntry,
        idx: &[usize],
        message: &Bytes,
    ) -> (Vec<Outcome>, Option<String>) {
        let mut outcomes: Vec<Outcome> = idx
            .iter()
            .map(|_| Outcome::Deferred("451 4.4.1 no host reachable".into()))
            .collect();
        let mut last_host = None;
        'hops: for hop in hops {
            for &addr in &hop.addrs {
                let todo: Vec<usize> = (0..idx.len())
                    .filter(|k| matches!(outcomes[*k], Outcome::Deferred(_)))
                    .collect();
                if todo.is_empty() {
                    break 'hops;
                }
                if lock(&self.refused).get(&addr).is_some_and(|t| {
                    t.elapsed() < Duration::from_secs(self.cfg.remember_refused_secs)
                }) {
                    for &k in &todo {
                        outcomes[k] = Outcome::Deferred(format!(
                            "451 4.4.1 {} ({addr}) refused connections recently",
                            hop.name
                        ));
                    }
                    continue;
                }
                let Ok(_permit) = self.host_sem(addr).acquire_owned().await else {
                    continue;
                };
                let pooled = lock(&self.pool)
                    .get_mut(&addr)
                    .and_then(|v| v.pop())
                    .map(|(c, _)| c);
                let from_pool = pooled.is_some();
                let mut conn = match pooled {
                    Some(c) => c,
                    None => match self.connect(hop, addr).await {
                        Ok(c) => c,
                        Err(e) => {
                            let r = e.as_reply();
                            for &k in &todo {
                                outcomes[k] = if e.is_permanent() && self.cfg.first_mx_5xx_is_final
                                {
                                    Outcome::Failed(r.one_line())
                                } else {
                                    Outcome::Deferred(r.one_line())
                                };
                            }
                            last_host = Some(hop.name.clone());
                            continue;
                        }
                    },
                };
                last_host = Some(hop.name.clone());
                let rcpts: Vec<&Recipient> = todo
                    .iter()
                    .map(|k| &entry.envelope.recipients[idx[*k]])
                    .collect();
                let mut result = conn.send(&entry.envelope, &rcpts, message).await;
                if from_pool && result.is_err() {
                    // The peer closed the idle connection: one fresh try.
                    result = match self.connect(hop, addr).await {
                        Ok(c) => {
                            conn = c;
                            conn.send(&entry.envelope, &rcpts, message).await
                        }
                        Err(e) => Err(e),
                    };
                }
                let dsn = conn.capabilities().dsn;
                match result {
                    Ok(results) => {
                        for (k, r) in todo.iter().zip(results) {
                            tracing::info!(target: "smtp.out", id = %entry.id, rcpt = %entry.envelope.recipients[idx[*k]].address, host = %hop.name, reply = %r.reply(), "delivery attempt");
                            outcomes[*k] = match r {
                                RcptOutcome::Delivered(r) if dsn => Outcome::PassedOn(r.one_line()),
                                RcptOutcome::Delivered(r) => Outcome::Delivered(r.one_line()),
                                RcptOutcome::Deferred(r) => Outcome::Deferred(r.one_line()),
                                RcptOutcome::Failed(r) if self.cfg.first_mx_5xx_is_final => {
                                    Outcome::Failed(r.one_line())
                                }
                                RcptOutcome::Failed(r) => Outcome::Deferred(r.one_line()),
                            };
                        }
                        let mut pool = lock(&self.pool);
                        let v = pool.entry(addr).or_default();
                        if v.len() < self.cfg.max_connections_per_host.max(1) {
                            v.push((conn, Instant::now()));
                        }
                    }
                    Err(e) => {
                        tracing::info!(target: "smtp.out", id = %entry.id, host = %hop.name, error = %e, "transaction failed");
                        let r = e.as_reply().one_line();
                        for &k in &todo {
                            outcomes[k] = Outcome::Deferred(r.clone());
                        }
                    }
                }
            }
        }
        (outcomes, last_host)
    }
}

/// A reply on one line, as the entry's status and the DSN keep it.
fn reply_line(reply: &Reply) -> String {
    let mut line = reply.to_string().replace(['\r', '\n'], " ");
    line.retain(|c| !c.is_control());
    line
}

/// A refusal from the pipeline: temporary ones are tried again.
fn refused_outcome(reply: &Reply) -> Outcome {
    if reply.is_temporary() {
        Outcome::Deferred(reply_line(reply))
    } else {
        Outcome::Failed(reply_line(reply))
    }
}

fn clone_outcome(o: &Outcome) -> Outcome {
    match o {
        Outcome::Delivered(s) => Outcome::Delivered(s.clone()),
        Outcome::PassedOn(s) => Outcome::PassedOn(s.clone()),
        Outcome::Deferred(s) => Outcome::Deferred(s.clone()),
        Outcome::Failed(s) => Outcome::Failed(s.clone()),
    }
}

fn summary(entry: &QueueEntry, idx: &[usize]) -> String {
    idx.iter()
        .map(|i| {
            let a = &entry.envelope.recipients[*i].address;
            match &entry.status[*i] {
                RecipientStatus::Delivered { reply } => format!("{a} delivered ({reply})"),
                RecipientStatus::Deferred { reply } => format!("{a} deferred ({reply})"),
                RecipientStatus::Failed { reply } => format!("{a} failed ({reply})"),
                RecipientStatus::Pending => format!("{a} pending"),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The host of the latest attempt for recipient `i`'s domain (attempt-log
/// lines start with the destination domain).
fn host_of(entry: &QueueEntry, i: usize) -> Option<String> {
    let domain = entry.envelope.recipients.get(i)?.address.domain().as_str();
    let prefix = format!("{}: ", domain.to_ascii_lowercase());
    entry
        .log
        .iter()
        .rev()
        .find(|l| l.result.starts_with(&prefix))
        .and_then(|l| l.host.clone())
        .filter(|h| h != "local")
}

fn status_of(reply: &str) -> String {
    let mut words = reply.split_whitespace();
    let code = words.next().unwrap_or("");
    let second = words.next().unwrap_or("");
    let valid = second.split('.').count() == 3
        && second
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        second.to_string()
    } else if code.starts_with('2') {
        "2.0.0".into()
    } else if code.starts_with('4') {
        "4.0.0".into()
    } else if second.split('.').count() == 3 {
        second.to_string()
    } else {
        "5.0.0".into()
    }
}

fn dsn_rcpt(r: &Recipient, action: DsnAction, reply: &str, host: Option<String>) -> DsnRecipient {
    let mut status = status_of(reply);
    if action == DsnAction::Failed && !status.starts_with('5') {
        status = format!("5{}", &status[1..]);
    }
    DsnRecipient {
        address: r.address.clone(),
        orcpt: r.orcpt.clone(),
        action,
        status,
        remote_mta: host,
        diagnostic: Some(reply.to_string()),
        will_retry_until: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use umail_core::config::{DeliveryConfig, SecurityConfig};
    use umail_core::ingest::IngestSettings;
    use umail_core::lockout::AuthLockout;
    use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
    use umail_core::{EnqueueOptions, FilterChain, MailStore, Priority, QueueStore};

    use crate::routing::{DnsError, DnsLookup};

    /// Routing is never consulted by these tests (they drive `finish`).
    struct NoDns;

    #[async_trait::async_trait]
    impl DnsLookup for NoDns {
        async fn mx(&self, _: &str) -> Result<Vec<(u16, String)>, DnsError> {
            Err(DnsError::Temporary("no DNS in unit tests".into()))
        }
        async fn ips(&self, _: &str) -> Result<Vec<std::net::IpAddr>, DnsError> {
            Err(DnsError::Temporary("no DNS in unit tests".into()))
        }
    }

    /// A runner over in-memory services with no local domain: every DSN
    /// goes to the queue.
    fn runner(queue: &Arc<MemoryQueue>, cfg: DeliveryConfig) -> Runner {
        let services = Services {
            directory: Arc::new(MemoryDirectory::new()),
            store: Arc::new(MemoryMailStore::new()),
            queue: queue.clone(),
            filter: Arc::new(FilterChain::new()),
            lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
            hostname: "mx.example.com".into(),
        };
        let router = Router::new(Vec::new(), None, Arc::new(NoDns));
        Runner::new(
            Ingest::new(services, IngestSettings::default()),
            router,
            cfg,
            None,
        )
    }

    /// A stale copy of an entry (read by `due()` before an earlier pass
    /// finished with it) must not deliver again what that pass delivered.
    #[tokio::test]
    async fn a_stale_due_copy_never_delivers_twice() {
        let queue = Arc::new(MemoryQueue::new());
        let directory = Arc::new(MemoryDirectory::new());
        directory.add_user("bob@example.com", "pw");
        let store = Arc::new(MemoryMailStore::new());
        let services = Services {
            directory,
            store: store.clone(),
            queue: queue.clone(),
            filter: Arc::new(FilterChain::new()),
            lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
            hostname: "mx.example.com".into(),
        };
        let runner = Runner::new(
            Ingest::new(services, IngestSettings::default()),
            Router::new(Vec::new(), None, Arc::new(NoDns)),
            DeliveryConfig::default(),
            None,
        );
        let mut env = Envelope::new(ReversePath::Address("alice@example.com".parse().unwrap()));
        env.recipients
            .push(Recipient::new("bob@example.com".parse().unwrap()));
        // Remote, and DNS fails temporarily: the entry is rescheduled.
        env.recipients
            .push(Recipient::new("carol@remote.test".parse().unwrap()));
        let now = umail_core::unix_now();
        let id = queue
            .enqueue(env, Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n"), now)
            .await
            .unwrap();
        let stale = queue.get(id).await.unwrap().unwrap();
        runner.process(stale.clone()).await;
        let after = queue.get(id).await.unwrap().unwrap();
        assert!(matches!(after.status[0], RecipientStatus::Delivered { .. }));
        assert_eq!(after.state, QueueState::Deferred);
        // The stale copy still shows bob pending.
        runner.process(stale).await;
        let inbox = store
            .mailbox("bob@example.com", INBOX)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            store
                .messages("bob@example.com", inbox.id)
                .await
                .unwrap()
                .len(),
            1,
            "bob got the message twice"
        );
    }

    /// A queued message from alice with a failed and a deferred recipient
    /// and a long attempt log.
    async fn failed_and_deferred(queue: &MemoryQueue, created: i64) -> QueueEntry {
        let mut env = Envelope::new(ReversePath::Address("alice@example.com".parse().unwrap()));
        env.recipients
            .push(Recipient::new("bob@fail.test".parse().unwrap()));
        env.recipients
            .push(Recipient::new("carol@slow.test".parse().unwrap()));
        let id = queue
            .enqueue(
                env,
                Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n"),
                created,
            )
            .await
            .unwrap();
        let mut e = queue.get(id).await.unwrap().unwrap();
        e.status[0] = RecipientStatus::Failed {
            reply: "550 5.1.1 no such user".into(),
        };
        e.status[1] = RecipientStatus::Deferred {
            reply: "451 4.3.0 later".into(),
        };
        for n in 0..100 {
            e.log.push(AttemptLog {
                at: created + n as i64,
                host: Some("mx.slow.test".into()),
                result: "slow.test: carol@slow.test deferred (451 4.3.0 later)".into(),
            });
        }
        e
    }

    async fn dsns(queue: &MemoryQueue) -> Vec<QueueEntry> {
        queue
            .list(None)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.envelope.reverse_path == ReversePath::Null)
            .collect()
    }

    #[tokio::test]
    async fn a_failure_is_reported_once_however_long_the_log_grows() {
        let queue = Arc::new(MemoryQueue::new());
        let r = runner(&queue, DeliveryConfig::default());
        let now = umail_core::unix_now();
        let mut entry = failed_and_deferred(&queue, now).await;
        entry.priority = Priority::Low;
        let message = Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n");
        r.finish(entry.clone(), &message, &HashMap::new(), &HashSet::new())
            .await;
        let sent = dsns(&queue).await;
        assert_eq!(sent.len(), 1, "the failure is reported");
        assert_eq!(
            sent[0].priority,
            Priority::Low,
            "a bounce of bulk mail stays bulk"
        );
        let stored = queue.get(entry.id).await.unwrap().unwrap();
        assert_eq!(stored.reported, vec![0]);
        // Later passes (the deferred recipient is retried for days): a
        // store that bounds the attempt log has dropped every DSN line by
        // then; the failure stays reported.
        let mut again = stored.clone();
        again.log = entry.log.clone();
        r.finish(again, &message, &HashMap::new(), &HashSet::new())
            .await;
        assert_eq!(dsns(&queue).await.len(), 1, "no second failure DSN");
    }

    #[tokio::test]
    async fn the_delay_notice_is_sent_once() {
        let queue = Arc::new(MemoryQueue::new());
        let cfg = DeliveryConfig {
            delay_notify_secs: 60,
            ..DeliveryConfig::default()
        };
        let r = runner(&queue, cfg);
        let long_ago = umail_core::unix_now() - 3600;
        let mut entry = failed_and_deferred(&queue, long_ago).await;
        entry.reported = vec![0];
        let message = Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n");
        r.finish(entry.clone(), &message, &HashMap::new(), &HashSet::new())
            .await;
        assert_eq!(dsns(&queue).await.len(), 1, "the delay is reported");
        let mut stored = queue.get(entry.id).await.unwrap().unwrap();
        assert!(stored.delay_reported);
        stored.log.clear();
        r.finish(stored, &message, &HashMap::new(), &HashSet::new())
            .await;
        assert_eq!(dsns(&queue).await.len(), 1, "no second delay DSN");
    }

    #[test]
    fn remote_mta_is_the_host_of_the_recipients_own_domain() {
        let mut env = Envelope::new(ReversePath::Null);
        env.recipients
            .push(Recipient::new("a@one.test".parse().unwrap()));
        env.recipients
            .push(Recipient::new("b@two.test".parse().unwrap()));
        let mut e = QueueEntry::new(
            umail_core::QueueId(1),
            env,
            1,
            0,
            &EnqueueOptions::default(),
        );
        for (host, result) in [
            ("mx.one.test", "one.test: a@one.test deferred (451)"),
            ("mx.two.test", "two.test: b@two.test deferred (451)"),
        ] {
            e.log.push(AttemptLog {
                at: 0,
                host: Some(host.into()),
                result: result.into(),
            });
        }
        assert_eq!(host_of(&e, 0).as_deref(), Some("mx.one.test"));
        assert_eq!(host_of(&e, 1).as_deref(), Some("mx.two.test"));
    }
}
