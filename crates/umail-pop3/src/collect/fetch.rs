//! One fetch of one remote mailbox: log in, list, download what is new,
//! hand each message to the ingest pipeline, and mark collected (and
//! delete, without "leave on server") only what the pipeline stored.

use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tracing::Instrument;
use umail_core::collection::RefusedMessage;
use umail_core::ingest::{Incoming, Ingest, IngestReport, LocalTarget, Source};
use umail_core::{Address, DirectoryError, Envelope, Recipient, Reply, ReversePath};

use super::routing::{DomainPopRouting, candidate_addresses_in, header_values, route};
use super::state::{CollectionState, StateError};
use crate::client::{ClientError, ConnectOptions, LoginMethod, Pop3Client, Secret, Security};

/// How long a scheduled fetch waits before it downloads a refused message
/// again, after its first refusal (seconds); the wait doubles with each
/// refusal in a row, up to [`REFUSED_RETRY_MAX_SECS`].
pub const REFUSED_RETRY_FIRST_SECS: i64 = 15 * 60;

/// The longest wait between two downloads of a refused message by
/// scheduled fetches (seconds).
pub const REFUSED_RETRY_MAX_SECS: i64 = 24 * 3600;

/// One remote POP3 mailbox to collect from.
#[derive(Debug, Clone)]
pub struct RemoteAccount {
    /// Server, port, TLS.
    pub connect: ConnectOptions,
    /// Remote login name.
    pub username: String,
    /// Remote password (never logged).
    pub password: Secret,
    /// Password login or APOP.
    pub login: LoginMethod,
    /// Keep messages on the server (tracked by UIDL). Operators are advised
    /// to keep this on.
    pub leave_on_server: bool,
    /// Most messages downloaded per fetch (0 = no limit).
    pub max_messages_per_fetch: usize,
    /// Messages larger than this (by `LIST`) are skipped and left on the
    /// server.
    pub max_message_size: u64,
    /// With `leave_on_server`: delete a message from the server once it
    /// was collected this many seconds ago (0 = never). Needs a
    /// [`CollectionState`] that keeps times ([`CollectionState::seen_before`]).
    pub delete_after_secs: u64,
}

impl RemoteAccount {
    /// The key under which this mailbox's state is kept.
    pub fn source_key(&self) -> String {
        format!(
            "pop3://{}@{}:{}",
            self.username.to_ascii_lowercase(),
            self.connect.host.to_ascii_lowercase(),
            self.connect.port
        )
    }
}

/// What a fetch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchReport {
    /// Messages on the server at login.
    pub on_server: usize,
    /// Messages durably stored here (or discarded by a filter, or found to
    /// be duplicates) and marked collected.
    pub fetched: usize,
    /// Messages skipped because they were collected before.
    pub already_seen: usize,
    /// Messages skipped because of `max_message_size`.
    pub skipped_too_large: usize,
    /// Messages left for the next fetch: past `max_messages_per_fetch`, or
    /// after the local mailbox was found full.
    pub deferred: usize,
    /// Messages marked for deletion on the server.
    pub deleted: usize,
    /// DomainPOP: messages not delivered again because their Message-ID was.
    pub duplicates: usize,
    /// DomainPOP: messages delivered to the fallback recipient.
    pub to_fallback: usize,
    /// Messages the local side refused (mailbox full, no local recipient,
    /// a filter, a mail loop): left on the server, not marked collected,
    /// tried again by the next fetch.
    pub refused: Vec<RefusedMessage>,
}

impl FetchReport {
    /// One line: what was fetched, seen, deleted, skipped and refused.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} fetched, {} on server, {} seen before",
            self.fetched, self.on_server, self.already_seen
        );
        for (n, what) in [
            (self.deleted, "deleted on server"),
            (self.skipped_too_large, "too large"),
            (self.deferred, "deferred"),
            (self.duplicates, "duplicates"),
            (self.to_fallback, "to fallback"),
            (self.refused.len(), "refused (left on server)"),
        ] {
            if n > 0 {
                s.push_str(&format!(", {n} {what}"));
            }
        }
        s
    }
}

/// How far a fetch has come, reported after each new message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchProgress {
    /// New (not yet collected) messages handled so far: stored, refused
    /// or skipped.
    pub messages_done: usize,
    /// New messages on the server at login.
    pub messages_total: usize,
    /// Listed size of the messages handled so far.
    pub bytes_done: u64,
    /// Listed size of all new messages.
    pub bytes_total: u64,
}

/// A progress callback (a progress bar, a counter).
pub type ProgressFn<'a> = dyn Fn(&FetchProgress) + Send + Sync + 'a;

/// Choices of one fetch beyond the remote account's settings.
#[derive(Clone, Copy)]
pub struct FetchOptions<'a> {
    /// The source the pipeline and its filters see:
    /// [`Source::Collection`] (the default) or [`Source::Import`].
    pub source: Source,
    /// The messages refused by the previous fetch
    /// ([`FetchStatus::refused`](umail_core::collection::FetchStatus::refused)):
    /// their attempt counts go on, and DomainPOP does not deliver again to
    /// the accounts that already have them.
    pub earlier_refusals: &'a [RefusedMessage],
    /// Download refused messages again even before their
    /// [`RefusedMessage::retry_after`] (an operator asked for this fetch).
    pub retry_refused_now: bool,
    /// Called after each new message.
    pub progress: Option<&'a ProgressFn<'a>>,
}

impl Default for FetchOptions<'_> {
    fn default() -> Self {
        FetchOptions {
            source: Source::Collection,
            earlier_refusals: &[],
            retry_refused_now: false,
            progress: None,
        }
    }
}

impl std::fmt::Debug for FetchOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FetchOptions")
            .field("source", &self.source)
            .field("earlier_refusals", &self.earlier_refusals.len())
            .field("retry_refused_now", &self.retry_refused_now)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// Errors of a fetch. Nothing not yet stored was marked collected or
/// deleted when one is returned.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// Talking to the remote server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The collection state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The directory failed while routing.
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
    /// The settings cannot be used (an unreadable CA file, a bad address).
    #[error("{0}")]
    Settings(String),
    /// A fetch of the same remote mailbox is already running.
    #[error("a fetch of this remote mailbox is already running")]
    Busy,
    /// The local account to import into does not exist.
    #[error("not found: user {0}")]
    UnknownAccount(String),
}

/// MultiPOP (and import): collects one remote mailbox into `target` (an
/// account and a folder) through the ingest pipeline.
pub async fn fetch_multipop(
    remote: &RemoteAccount,
    ingest: &Ingest,
    target: &LocalTarget,
    state: &dyn CollectionState,
    options: &FetchOptions<'_>,
) -> Result<FetchReport, CollectError> {
    let sink = Sink::Mailbox { ingest, target };
    collect(remote, state, sink, options).await
}

/// DomainPOP: collects a domain's catch-all mailbox and delivers each
/// message, through the ingest pipeline, to the local users its headers
/// name (or to the fallback).
pub async fn fetch_domainpop(
    remote: &RemoteAccount,
    ingest: &Ingest,
    routing: &DomainPopRouting,
    state: &dyn CollectionState,
    options: &FetchOptions<'_>,
) -> Result<FetchReport, CollectError> {
    let sink = Sink::Domain {
        ingest,
        routing,
        state,
        message_id_key: format!("{}#message-id", remote.source_key()),
    };
    collect(remote, state, sink, options).await
}

/// Where collected messages go.
enum Sink<'a> {
    Mailbox {
        ingest: &'a Ingest,
        target: &'a LocalTarget,
    },
    Domain {
        ingest: &'a Ingest,
        routing: &'a DomainPopRouting,
        state: &'a dyn CollectionState,
        message_id_key: String,
    },
}

/// What became of one downloaded message.
enum Delivery {
    /// Durable here (or discarded on purpose, or a duplicate): mark it
    /// collected.
    Done,
    /// Not accepted: leave it on the server.
    Refused(Refusal),
}

struct Refusal {
    reply: Reply,
    message_id: Option<String>,
    delivered_to: Vec<String>,
}

async fn collect(
    remote: &RemoteAccount,
    state: &dyn CollectionState,
    sink: Sink<'_>,
    options: &FetchOptions<'_>,
) -> Result<FetchReport, CollectError> {
    let source = remote.source_key();
    let span = tracing::info_span!(target: "pop3", "collect", source = %source);
    collect_in_span(remote, state, sink, options, source)
        .instrument(span)
        .await
}

async fn collect_in_span(
    remote: &RemoteAccount,
    state: &dyn CollectionState,
    sink: Sink<'_>,
    options: &FetchOptions<'_>,
    source: String,
) -> Result<FetchReport, CollectError> {
    let mut client = Pop3Client::connect(&remote.connect).await?;
    let allow_plaintext = remote.connect.security == Security::None;
    client
        .login(
            &remote.username,
            &remote.password,
            remote.login,
            allow_plaintext,
        )
        .await?;
    let sizes: HashMap<u32, u64> = client.list().await?.into_iter().collect();
    let uidls = match client.uidl().await {
        Ok(u) => u,
        Err(ClientError::Unsupported(_)) if !remote.leave_on_server => {
            // Without UIDL nothing can be tracked; deleting everything
            // collected still never collects a message twice.
            let mut all: Vec<u32> = sizes.keys().copied().collect();
            all.sort_unstable();
            all.into_iter().map(|n| (n, format!("#{n}"))).collect()
        }
        Err(e) => return Err(e.into()),
    };
    let seen = state.seen(&source).await?;
    let now = umail_core::unix_now();
    let expired = if remote.leave_on_server && remote.delete_after_secs > 0 {
        let age = i64::try_from(remote.delete_after_secs).unwrap_or(i64::MAX);
        state.seen_before(&source, now.saturating_sub(age)).await?
    } else {
        HashSet::new()
    };
    let earlier: HashMap<&str, &RefusedMessage> = options
        .earlier_refusals
        .iter()
        .map(|r| (r.uidl.as_str(), r))
        .collect();
    let mut pending = PendingCopies::from_refusals(options.earlier_refusals);
    let mut report = FetchReport {
        on_server: uidls.len(),
        ..FetchReport::default()
    };
    let mut progress = FetchProgress::default();
    for (n, uidl) in &uidls {
        if !seen.contains(uidl) {
            progress.messages_total += 1;
            progress.bytes_total += sizes.get(n).copied().unwrap_or(0);
        }
    }
    let mut downloaded = 0usize;
    let mut mailbox_full = false;
    let mut remaining: HashSet<String> = HashSet::new();
    for (n, uidl) in &uidls {
        if seen.contains(uidl) {
            report.already_seen += 1;
            if remote.leave_on_server && !expired.contains(uidl) {
                remaining.insert(uidl.clone());
            } else {
                client.dele(*n).await?;
                report.deleted += 1;
            }
            continue;
        }
        remaining.insert(uidl.clone());
        let size = sizes.get(n).copied().unwrap_or(0);
        let before = earlier.get(uidl.as_str()).copied();
        if mailbox_full
            || (remote.max_messages_per_fetch != 0 && downloaded >= remote.max_messages_per_fetch)
        {
            report.deferred += 1;
        } else if size > remote.max_message_size {
            tracing::info!(target: "pop3", msg = n, size, "remote message too large; skipped");
            report.skipped_too_large += 1;
        } else if let Some(before) =
            before.filter(|b| !options.retry_refused_now && b.retry_after > now)
        {
            // Refused before and not due again: reported, not downloaded.
            report.refused.push(RefusedMessage {
                number: *n,
                size,
                ..before.clone()
            });
        } else {
            let bound = remote
                .max_message_size
                .saturating_add(remote.max_message_size / 8)
                .saturating_add(64 * 1024);
            let message = client.retr(*n, bound).await?;
            downloaded += 1;
            match sink
                .deliver(message, options.source, before, &mut pending, &mut report)
                .await?
            {
                Delivery::Done => {
                    state.mark_seen(&source, uidl).await?;
                    report.fetched += 1;
                    if !remote.leave_on_server {
                        client.dele(*n).await?;
                        report.deleted += 1;
                        remaining.remove(uidl);
                    }
                }
                Delivery::Refused(refusal) => {
                    tracing::warn!(target: "pop3", msg = n, uidl = %uidl, reason = %refusal.reply,
                        "collected message refused locally; left on the server");
                    // RFC 3463: X.2.2 mailbox full. The messages after it
                    // would only be downloaded to be refused too.
                    mailbox_full |= sink.is_single_mailbox()
                        && refusal
                            .reply
                            .enhanced
                            .as_deref()
                            .is_some_and(|e| e.ends_with(".2.2"));
                    report
                        .refused
                        .push(refused_entry(uidl, *n, size, refusal, before, now));
                }
            }
        }
        progress.messages_done += 1;
        progress.bytes_done += size;
        if let Some(callback) = options.progress {
            callback(&progress);
        }
    }
    client.quit().await?;
    state.retain(&source, &remaining).await?;
    tracing::info!(
        target: "pop3",
        fetched = report.fetched,
        seen = report.already_seen,
        deleted = report.deleted,
        too_large = report.skipped_too_large,
        deferred = report.deferred,
        refused = report.refused.len(),
        "remote collection done"
    );
    Ok(report)
}

/// The wait before a scheduled fetch downloads a message refused
/// `attempts` times in a row again.
fn refused_retry_delay(attempts: u32) -> i64 {
    let doublings = attempts.saturating_sub(1).min(16);
    REFUSED_RETRY_FIRST_SECS
        .saturating_mul(1 << doublings)
        .min(REFUSED_RETRY_MAX_SECS)
}

fn refused_entry(
    uidl: &str,
    number: u32,
    size: u64,
    refusal: Refusal,
    before: Option<&RefusedMessage>,
    now: i64,
) -> RefusedMessage {
    let attempts = before.map_or(0, |b| b.attempts).saturating_add(1);
    RefusedMessage {
        uidl: uidl.to_string(),
        number,
        size,
        reason: refusal.reply.to_string(),
        temporary: refusal.reply.is_temporary(),
        attempts,
        first_refused: before.map_or(now, |b| b.first_refused),
        last_tried: now,
        retry_after: now.saturating_add(refused_retry_delay(attempts)),
        message_id: refusal.message_id,
        delivered_to: refusal.delivered_to,
    }
}

/// DomainPOP: per Message-ID, the accounts that already have a message
/// whose delivery is not complete, so that another attempt (of the same
/// copy, or of another copy of it in the catch-all mailbox) delivers only
/// to the others.
struct PendingCopies(HashMap<String, Vec<String>>);

impl PendingCopies {
    fn from_refusals(refusals: &[RefusedMessage]) -> PendingCopies {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for r in refusals {
            if let Some(id) = &r.message_id {
                let accounts = map.entry(id.clone()).or_default();
                for a in &r.delivered_to {
                    if !accounts.contains(a) {
                        accounts.push(a.clone());
                    }
                }
            }
        }
        PendingCopies(map)
    }
}

/// The envelope of a collected message: the reverse path from its
/// `Return-Path` field (added by the final delivery that put it in the
/// remote mailbox, RFC 5321 §4.4), else null; the recipients are the
/// local targets.
fn envelope_for(message: &[u8], targets: &[LocalTarget]) -> Envelope {
    let mut envelope = Envelope::new(return_path_of(message));
    envelope.recipients = targets
        .iter()
        .map(|t| Recipient::new(t.address.clone()))
        .collect();
    envelope
}

/// The reverse path in a message's first `Return-Path` field; `<>`, a
/// missing field and an unparsable one are the null path.
pub fn return_path_of(message: &[u8]) -> ReversePath {
    let Some(value) = header_values(message, "return-path").into_iter().next() else {
        return ReversePath::Null;
    };
    let value = value.trim();
    let inner = match (value.find('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value,
    };
    match Address::parse(inner.trim()) {
        Ok(a) => ReversePath::Address(a),
        Err(_) => ReversePath::Null,
    }
}

/// The accounts among `targets` whose copy the pipeline took: stored,
/// queued or held durably, or dropped on purpose by a filter.
fn taken(report: &IngestReport, targets: &[LocalTarget]) -> Vec<String> {
    if report.refusal.is_some() {
        return Vec::new();
    }
    targets
        .iter()
        .filter(|t| {
            report.discarded
                || report.recipients.iter().any(|r| {
                    r.recipient.lookup_key() == t.address.lookup_key() && r.outcome.is_taken()
                })
        })
        .map(|t| t.account.clone())
        .collect()
}

/// Why a message whose targets did not all take it was refused.
fn reason_of(report: &IngestReport) -> Reply {
    report
        .reason()
        .cloned()
        .unwrap_or_else(|| Reply::new(451, "4.3.0", "Not stored locally"))
}

impl Sink<'_> {
    /// True when every message goes to the same one mailbox (so a full
    /// mailbox refuses the rest too).
    fn is_single_mailbox(&self) -> bool {
        matches!(self, Sink::Mailbox { .. })
    }

    async fn deliver(
        &self,
        message: Bytes,
        source: Source,
        before: Option<&RefusedMessage>,
        pending: &mut PendingCopies,
        report: &mut FetchReport,
    ) -> Result<Delivery, CollectError> {
        match self {
            Sink::Mailbox { ingest, target } => {
                let targets = std::slice::from_ref(*target);
                let envelope = envelope_for(&message, targets);
                let result = ingest
                    .ingest(
                        Incoming::new(source, envelope, Vec::from(message))
                            .into_mailboxes(targets.to_vec()),
                    )
                    .await;
                if taken(&result, targets).len() == targets.len() {
                    return Ok(Delivery::Done);
                }
                Ok(Delivery::Refused(Refusal {
                    reply: reason_of(&result),
                    message_id: None,
                    delivered_to: Vec::new(),
                }))
            }
            Sink::Domain {
                ingest,
                routing,
                state,
                message_id_key,
            } => {
                let message_id = routing
                    .dedupe_message_id
                    .then(|| header_values(&message, "message-id").into_iter().next())
                    .flatten()
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty());
                if let Some(id) = &message_id
                    && state.contains(message_id_key, id).await?
                {
                    report.duplicates += 1;
                    return Ok(Delivery::Done);
                }
                let directory = ingest.services().directory.as_ref();
                let mut targets = route(
                    directory,
                    &candidate_addresses_in(&message, &routing.headers, routing.skip_received),
                    routing.max_recipients,
                )
                .await?;
                let mut to_fallback = false;
                if targets.is_empty() {
                    if let Some(fallback) = &routing.fallback {
                        targets = route(directory, std::slice::from_ref(fallback), 1).await?;
                        to_fallback = !targets.is_empty();
                    }
                    if targets.is_empty() {
                        let reply = match &routing.fallback {
                            Some(f) => Reply::new(
                                550,
                                "5.1.1",
                                format!(
                                    "No header names a local recipient and the fallback {f} is not a local user"
                                ),
                            ),
                            None => Reply::new(
                                550,
                                "5.1.1",
                                "No header names a local recipient and no fallback address is set",
                            ),
                        };
                        return Ok(Delivery::Refused(Refusal {
                            reply,
                            message_id,
                            delivered_to: Vec::new(),
                        }));
                    }
                }
                // Accounts that already have it: an earlier attempt of this
                // copy, or of another copy with the same Message-ID.
                let mut delivered: Vec<String> =
                    before.map(|b| b.delivered_to.clone()).unwrap_or_default();
                if let Some(accounts) = message_id.as_ref().and_then(|id| pending.0.get(id)) {
                    for a in accounts {
                        if !delivered.contains(a) {
                            delivered.push(a.clone());
                        }
                    }
                }
                let todo: Vec<LocalTarget> = targets
                    .into_iter()
                    .filter(|t| !delivered.contains(&t.account))
                    .collect();
                let mut refusal = None;
                if !todo.is_empty() {
                    let envelope = envelope_for(&message, &todo);
                    let result = ingest
                        .ingest(
                            Incoming::new(source, envelope, Vec::from(message))
                                .into_mailboxes(todo.clone()),
                        )
                        .await;
                    let took = taken(&result, &todo);
                    if took.len() < todo.len() {
                        refusal = Some(reason_of(&result));
                    }
                    delivered.extend(took);
                }
                match refusal {
                    None => {
                        if to_fallback {
                            report.to_fallback += 1;
                        }
                        if let Some(id) = &message_id {
                            pending.0.remove(id);
                            state
                                .mark_seen_bounded(message_id_key, id, routing.max_message_ids)
                                .await?;
                        }
                        Ok(Delivery::Done)
                    }
                    Some(reply) => {
                        if let Some(id) = &message_id {
                            pending.0.insert(id.clone(), delivered.clone());
                        }
                        Ok(Delivery::Refused(Refusal {
                            reply,
                            message_id,
                            delivered_to: delivered,
                        }))
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_path_becomes_the_reverse_path() {
        let rp = |m: &str| return_path_of(m.as_bytes()).to_string();
        assert_eq!(
            rp("Return-Path: <a@example.com>\r\nSubject: x\r\n\r\n"),
            "<a@example.com>"
        );
        assert_eq!(rp("Return-Path: <>\r\n\r\n"), "<>");
        assert_eq!(rp("Subject: none\r\n\r\nReturn-Path: <b@x.y>\r\n"), "<>");
        assert_eq!(rp("Return-Path: garbage <<\r\n\r\n"), "<>");
        assert_eq!(
            rp("return-path:   c@example.org  \r\n\r\n"),
            "<c@example.org>"
        );
    }

    #[test]
    fn refused_retries_back_off_and_are_bounded() {
        assert_eq!(refused_retry_delay(1), REFUSED_RETRY_FIRST_SECS);
        assert_eq!(refused_retry_delay(2), 2 * REFUSED_RETRY_FIRST_SECS);
        assert_eq!(refused_retry_delay(40), REFUSED_RETRY_MAX_SECS);
    }
}
