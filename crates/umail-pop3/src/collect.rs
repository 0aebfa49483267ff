//! Remote collection: MultiPOP (one remote mailbox into one local mailbox)
//! and DomainPOP (one remote catch-all mailbox routed to local users by
//! its headers).
//!
//! Both keep a set of the remote UIDLs already collected in a
//! [`CollectionState`], so with "leave on server" each message is
//! collected once. A message is marked collected only after the local
//! store acknowledged it (at least once, never lost); with deletion on, the
//! remote `DELE`s take effect at `QUIT`, and a message whose deletion was
//! lost is deleted (not collected again) on the next fetch.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// Re-exported so implementors of [`CollectionState`] need not depend on
/// `async-trait` themselves.
pub use async_trait::async_trait;
use bytes::Bytes;
use tracing::Instrument;
use umail_core::store::INBOX;
use umail_core::{
    Address, DeliveryTarget, Directory, DirectoryError, MailStore, Resolution, StoreError,
};

use crate::client::{ClientError, ConnectOptions, LoginMethod, Pop3Client, Secret, Security};

/// Errors of the state back end.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The back end failed.
    #[error("collection state unavailable: {0}")]
    Backend(String),
}

/// Remembers what was already collected, per source.
///
/// A source is a remote mailbox ([`RemoteAccount::source_key`]); DomainPOP
/// also keeps the Message-IDs it delivered under `<source>#message-id`.
/// Implementations must make [`CollectionState::mark_seen`] durable before
/// returning; the in-tree one is [`MemoryCollectionState`].
#[async_trait]
pub trait CollectionState: Send + Sync {
    /// Every id recorded for `source`.
    async fn seen(&self, source: &str) -> Result<HashSet<String>, StateError>;

    /// Records `id` for `source`.
    async fn mark_seen(&self, source: &str, id: &str) -> Result<(), StateError>;

    /// Forgets the ids of `source` not in `keep` (messages no longer on the
    /// server), so the set stays as small as the remote mailbox.
    async fn retain(&self, source: &str, keep: &HashSet<String>) -> Result<(), StateError>;

    /// True when `id` is recorded for `source`. The default reads the
    /// whole set; stores should answer with one lookup.
    async fn contains(&self, source: &str, id: &str) -> Result<bool, StateError> {
        Ok(self.seen(source).await?.contains(id))
    }

    /// The ids of `source` recorded before `cutoff` (Unix time), for
    /// "delete from the server N days after collecting". The default
    /// (a state that keeps no times) returns none, so nothing is deleted.
    async fn seen_before(&self, source: &str, cutoff: i64) -> Result<HashSet<String>, StateError> {
        let _ = (source, cutoff);
        Ok(HashSet::new())
    }
}

/// A [`CollectionState`] in memory (tests, and a model for stores).
#[derive(Debug, Default)]
pub struct MemoryCollectionState {
    sets: Mutex<HashMap<String, HashSet<String>>>,
}

impl MemoryCollectionState {
    /// An empty state.
    pub fn new() -> MemoryCollectionState {
        MemoryCollectionState::default()
    }
}

#[async_trait]
impl CollectionState for MemoryCollectionState {
    async fn seen(&self, source: &str) -> Result<HashSet<String>, StateError> {
        let sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        Ok(sets.get(source).cloned().unwrap_or_default())
    }

    async fn mark_seen(&self, source: &str, id: &str) -> Result<(), StateError> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        sets.entry(source.to_string())
            .or_default()
            .insert(id.to_string());
        Ok(())
    }

    async fn retain(&self, source: &str, keep: &HashSet<String>) -> Result<(), StateError> {
        let mut sets = self.sets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(set) = sets.get_mut(source) {
            set.retain(|id| keep.contains(id));
        }
        Ok(())
    }
}

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
    /// Most messages collected per fetch (0 = no limit).
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
    /// Messages downloaded and stored.
    pub fetched: usize,
    /// Messages skipped because they were collected before.
    pub already_seen: usize,
    /// Messages skipped because of `max_message_size`.
    pub skipped_too_large: usize,
    /// Messages left for the next fetch because of `max_messages_per_fetch`.
    pub deferred: usize,
    /// Messages marked for deletion on the server.
    pub deleted: usize,
    /// DomainPOP: messages not delivered again because their Message-ID was.
    pub duplicates: usize,
    /// DomainPOP: messages delivered to the fallback recipient.
    pub to_fallback: usize,
    /// Messages no local recipient could take (no route, no fallback).
    pub undeliverable: usize,
    /// Local copies refused for quota.
    pub over_quota: usize,
}

/// Errors of a fetch.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// Talking to the remote server failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The local store failed; the message was not marked collected.
    #[error("local store: {0}")]
    Store(#[from] StoreError),
    /// The collection state failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The directory failed while routing.
    #[error("directory: {0}")]
    Directory(#[from] DirectoryError),
}

/// Where collected messages go.
enum Sink<'a> {
    Mailbox {
        store: &'a dyn MailStore,
        account: &'a str,
        mailbox: &'a str,
    },
    Domain {
        store: &'a dyn MailStore,
        directory: &'a dyn Directory,
        routing: &'a DomainPopRouting,
        state: &'a dyn CollectionState,
        message_id_key: String,
    },
}

/// MultiPOP: collects one remote mailbox into `mailbox` of the local
/// `account`.
pub async fn fetch_multipop(
    remote: &RemoteAccount,
    store: &dyn MailStore,
    account: &str,
    mailbox: &str,
    state: &dyn CollectionState,
) -> Result<FetchReport, CollectError> {
    let sink = Sink::Mailbox {
        store,
        account,
        mailbox,
    };
    collect(remote, state, sink).await
}

/// How DomainPOP routes a collected message.
#[derive(Debug, Clone)]
pub struct DomainPopRouting {
    /// Who gets messages no header routes to a local user (the
    /// postmaster, usually). `None`: such messages are counted as
    /// undeliverable and left alone.
    pub fallback: Option<Address>,
    /// Deliver a Message-ID only once (default on): a message sent to
    /// several local users sits in the catch-all mailbox once per copy.
    pub dedupe_message_id: bool,
    /// Most local recipients one message is delivered to.
    pub max_recipients: usize,
    /// Header fields recipients are read from, in order (case-insensitive;
    /// empty = [`ROUTING_HEADERS`]). The `for` clause of `Received` is
    /// always read last.
    pub headers: Vec<String>,
    /// `Received` fields to ignore, counted from the top (the newest): the
    /// hops added by the catch-all's own provider, whose `for` clause names
    /// the catch-all mailbox rather than the real recipient.
    pub skip_received: usize,
}

impl Default for DomainPopRouting {
    fn default() -> Self {
        DomainPopRouting {
            fallback: None,
            dedupe_message_id: true,
            max_recipients: 100,
            headers: Vec::new(),
            skip_received: 0,
        }
    }
}

/// DomainPOP: collects a domain's catch-all mailbox and delivers each
/// message to the local users its headers name.
pub async fn fetch_domainpop(
    remote: &RemoteAccount,
    store: &dyn MailStore,
    directory: &dyn Directory,
    routing: &DomainPopRouting,
    state: &dyn CollectionState,
) -> Result<FetchReport, CollectError> {
    let sink = Sink::Domain {
        store,
        directory,
        routing,
        state,
        message_id_key: format!("{}#message-id", remote.source_key()),
    };
    collect(remote, state, sink).await
}

async fn collect(
    remote: &RemoteAccount,
    state: &dyn CollectionState,
    sink: Sink<'_>,
) -> Result<FetchReport, CollectError> {
    let source = remote.source_key();
    let span = tracing::info_span!(target: "pop3", "collect", source = %source);
    collect_in_span(remote, state, sink, source)
        .instrument(span)
        .await
}

async fn collect_in_span(
    remote: &RemoteAccount,
    state: &dyn CollectionState,
    sink: Sink<'_>,
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
    let expired = if remote.leave_on_server && remote.delete_after_secs > 0 {
        let age = i64::try_from(remote.delete_after_secs).unwrap_or(i64::MAX);
        state
            .seen_before(&source, umail_core::unix_now().saturating_sub(age))
            .await?
    } else {
        HashSet::new()
    };
    let mut report = FetchReport {
        on_server: uidls.len(),
        ..FetchReport::default()
    };
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
        if remote.max_messages_per_fetch != 0 && report.fetched >= remote.max_messages_per_fetch {
            report.deferred += 1;
            continue;
        }
        let size = sizes.get(n).copied().unwrap_or(0);
        if size > remote.max_message_size {
            tracing::info!(target: "pop3", msg = n, size, "remote message too large; skipped");
            report.skipped_too_large += 1;
            continue;
        }
        let bound = remote
            .max_message_size
            .saturating_add(remote.max_message_size / 8)
            .saturating_add(64 * 1024);
        let message = client.retr(*n, bound).await?;
        sink.deliver(message, &mut report).await?;
        state.mark_seen(&source, uidl).await?;
        report.fetched += 1;
        if !remote.leave_on_server {
            client.dele(*n).await?;
            report.deleted += 1;
            remaining.remove(uidl);
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
        "remote collection done"
    );
    Ok(report)
}

impl Sink<'_> {
    async fn deliver(&self, message: Bytes, report: &mut FetchReport) -> Result<(), CollectError> {
        let now = umail_core::unix_now();
        match self {
            Sink::Mailbox {
                store,
                account,
                mailbox,
            } => match store
                .append(account, mailbox, message, Default::default(), now)
                .await
            {
                Ok(_) => Ok(()),
                Err(StoreError::OverQuota) => {
                    report.over_quota += 1;
                    Ok(())
                }
                Err(e) => Err(e.into()),
            },
            Sink::Domain {
                store,
                directory,
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
                    return Ok(());
                }
                let mut accounts = route(
                    *directory,
                    &candidate_addresses_in(&message, &routing.headers, routing.skip_received),
                    routing.max_recipients,
                )
                .await?;
                if accounts.is_empty() {
                    if let Some(fallback) = &routing.fallback {
                        accounts = route(*directory, std::slice::from_ref(fallback), 1).await?;
                        if !accounts.is_empty() {
                            report.to_fallback += 1;
                        }
                    }
                    if accounts.is_empty() {
                        report.undeliverable += 1;
                        return Ok(());
                    }
                }
                let targets: Vec<DeliveryTarget> = accounts
                    .into_iter()
                    .map(|account| DeliveryTarget {
                        account,
                        mailbox: INBOX.to_string(),
                        flags: Default::default(),
                    })
                    .collect();
                let results = store.deliver(message, now, &targets).await?;
                for r in results {
                    match r {
                        Ok(_) => {}
                        Err(StoreError::OverQuota) => report.over_quota += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
                if let Some(id) = message_id {
                    state.mark_seen(message_id_key, &id).await?;
                }
                Ok(())
            }
        }
    }
}

/// Header fields DomainPOP reads recipients from, most specific first.
pub const ROUTING_HEADERS: [&str; 5] =
    ["delivered-to", "x-original-to", "x-envelope-to", "to", "cc"];

/// The values of every `name` header field (case-insensitive), unfolded.
/// Only the header section is read; it is bounded to 256 KiB.
pub fn header_values(message: &[u8], name: &str) -> Vec<String> {
    const MAX_HEADER: usize = 256 * 1024;
    let head = &message[..message.len().min(MAX_HEADER)];
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for raw in head.split(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some(v) = current.as_mut() {
                v.push(' ');
                v.push_str(String::from_utf8_lossy(line).trim());
            }
            continue;
        }
        if let Some(v) = current.take() {
            out.push(v);
        }
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let field = String::from_utf8_lossy(&line[..colon]);
            if field.trim().eq_ignore_ascii_case(name) {
                current = Some(
                    String::from_utf8_lossy(&line[colon + 1..])
                        .trim()
                        .to_string(),
                );
            }
        }
    }
    if let Some(v) = current {
        out.push(v);
    }
    out
}

/// Addresses found in a header value: `<addr>` forms and bare `a@b`
/// words; display names and comments are ignored.
pub fn addresses_in(value: &str) -> Vec<Address> {
    value
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| w.contains('@'))
        .filter_map(|w| {
            let w = w.trim_matches(|c: char| "<>\"'()[]".contains(c));
            let w = w.trim_end_matches('.');
            Address::parse(w).ok()
        })
        .collect()
}

/// The recipients DomainPOP considers for a message, in order and without
/// duplicates: `Delivered-To`, `X-Original-To`, `X-Envelope-To`, `To`,
/// `Cc`, then the `for <addr>` clause of `Received` fields.
pub fn candidate_addresses(message: &[u8]) -> Vec<Address> {
    candidate_addresses_in(message, &[], 0)
}

/// Like [`candidate_addresses`] with the header list `headers` instead of
/// [`ROUTING_HEADERS`] (empty = the default list), ignoring the first
/// `skip_received` `Received` fields.
pub fn candidate_addresses_in(
    message: &[u8],
    headers: &[String],
    skip_received: usize,
) -> Vec<Address> {
    let mut out: Vec<Address> = Vec::new();
    let mut push = |a: Address| {
        if !out.iter().any(|b| b.lookup_key() == a.lookup_key()) {
            out.push(a);
        }
    };
    let names: Vec<&str> = if headers.is_empty() {
        ROUTING_HEADERS.to_vec()
    } else {
        headers.iter().map(String::as_str).collect()
    };
    for name in names {
        for v in header_values(message, name) {
            addresses_in(&v).into_iter().for_each(&mut push);
        }
    }
    for v in header_values(message, "received")
        .into_iter()
        .skip(skip_received)
    {
        // RFC 5321 §4.4: "for" clause with the envelope recipient.
        let lower = v.to_ascii_lowercase();
        if let Some(i) = lower.find(" for ")
            && let Some(word) = v[i + 5..].split_whitespace().next()
        {
            addresses_in(word).into_iter().for_each(&mut push);
        }
    }
    out
}

/// The local accounts the candidates resolve to (aliases and lists expanded
/// one level to their local members), at most `max`.
pub async fn route(
    directory: &dyn Directory,
    candidates: &[Address],
    max: usize,
) -> Result<Vec<String>, DirectoryError> {
    let mut accounts: Vec<String> = Vec::new();
    let add = |a: String, accounts: &mut Vec<String>| {
        if !accounts.contains(&a) && accounts.len() < max {
            accounts.push(a);
        }
    };
    for c in candidates {
        let expanded: Vec<Address> = match directory.resolve(c).await? {
            Resolution::Local(p) => {
                add(p.account(), &mut accounts);
                continue;
            }
            Resolution::Alias(targets) => targets,
            Resolution::List(list) => list.receivers().cloned().collect(),
            _ => continue,
        };
        for t in expanded.iter().take(max) {
            if let Resolution::Local(p) = directory.resolve(t).await? {
                add(p.account(), &mut accounts);
            }
        }
    }
    Ok(accounts)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] =
        b"Received: from mx by relay\r\n\tfor <erin@example.com>; Mon, 1 Jan 2024\r\n\
Delivered-To: dave@example.com\r\n\
To: \"Doe, John\" <bob@example.com>, carol@example.com\r\n\
Cc: (comment) Frank <frank@other.org>\r\n\
Message-ID: <abc@x>\r\n\
\r\n\
To: body@example.com\r\n";

    #[test]
    fn headers_are_unfolded_and_stop_at_body() {
        assert_eq!(
            header_values(MSG, "received"),
            vec!["from mx by relay for <erin@example.com>; Mon, 1 Jan 2024".to_string()]
        );
        assert_eq!(
            header_values(MSG, "message-id"),
            vec!["<abc@x>".to_string()]
        );
        assert_eq!(header_values(MSG, "to").len(), 1);
    }

    #[test]
    fn provider_received_hops_can_be_skipped() {
        let msg = b"Received: from edge by provider\r\n\tfor <catchall@provider.example>; Mon, 1 Jan 2024\r\n\
Received: from client by mx.example.com for <erin@example.com>; Mon, 1 Jan 2024\r\n\
Subject: x\r\n\r\nbody\r\n";
        let keys = |skip| -> Vec<String> {
            candidate_addresses_in(msg, &[], skip)
                .iter()
                .map(|a| a.lookup_key())
                .collect()
        };
        assert_eq!(
            keys(0),
            vec!["catchall@provider.example", "erin@example.com"]
        );
        assert_eq!(keys(1), vec!["erin@example.com"]);
        assert!(keys(5).is_empty());
    }

    #[test]
    fn candidates_in_order() {
        let got: Vec<String> = candidate_addresses(MSG)
            .iter()
            .map(|a| a.lookup_key())
            .collect();
        assert_eq!(
            got,
            vec![
                "dave@example.com",
                "bob@example.com",
                "carol@example.com",
                "frank@other.org",
                "erin@example.com"
            ]
        );
    }

    #[tokio::test]
    async fn memory_state() {
        let s = MemoryCollectionState::new();
        s.mark_seen("a", "1").await.unwrap();
        s.mark_seen("a", "2").await.unwrap();
        s.retain("a", &HashSet::from(["2".to_string()]))
            .await
            .unwrap();
        assert_eq!(s.seen("a").await.unwrap(), HashSet::from(["2".to_string()]));
        assert!(s.seen("b").await.unwrap().is_empty());
    }
}
