//! The collector: which remote mailboxes to fetch and when.
//!
//! A [`Collector`] runs over a [`CollectionAccounts`] (the configured
//! MultiPOP and DomainPOP accounts, their status and seen sets) and an
//! [`Ingest`] pipeline. Its scheduler ([`Collector::run`]) wakes every
//! [`CollectorSettings::tick`], fetches the enabled accounts whose
//! `next_attempt` has passed on separate tasks, at most
//! [`CollectorSettings::max_concurrent`] at once (the rest wait for the
//! next tick), and records each outcome, which sets the next attempt: the
//! account's interval after a success, a doubling backoff after failures
//! ([`FetchStatus::record`](umail_core::collection::FetchStatus::record)).
//! One remote mailbox is never fetched twice at once, whether the
//! scheduler or an operator ([`Collector::collect_account`]) started it.
//! On shutdown the loop stops and running fetches are dropped: a message
//! stored but not yet marked collected may be fetched again (at least
//! once, never lost).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Semaphore;
use umail_core::collection::{CollectLimits, DomainPopInfo, FetchOutcome, RemoteAccountInfo};
use umail_core::ingest::{Ingest, LocalTarget, Source};
use umail_core::{Address, Domain, Shutdown};

use super::fetch::{
    CollectError, FetchOptions, FetchReport, RemoteAccount, fetch_domainpop, fetch_multipop,
};
use super::routing::DomainPopRouting;
use super::settings::CollectSettings;
use super::state::{CollectionState, MemoryCollectionState, StateError};

/// What a fetch collects for; status and seen sets are kept per job.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CollectionJob {
    /// MultiPOP account `id` of the local `account`.
    MultiPop {
        /// The owner (lower-cased address).
        account: String,
        /// The remote account's number.
        id: u64,
    },
    /// The DomainPOP account of `domain`.
    DomainPop {
        /// The local domain.
        domain: String,
    },
    /// `import` runs into `account` (no schedule, no status).
    Import {
        /// The local account (lower-cased address).
        account: String,
    },
}

impl CollectionJob {
    /// A stable name, for logs and for keeping two fetches of one job
    /// apart.
    pub fn key(&self) -> String {
        match self {
            CollectionJob::MultiPop { account, id } => format!("multipop/{account}/{id}"),
            CollectionJob::DomainPop { domain } => format!("domainpop/{domain}"),
            CollectionJob::Import { account } => format!("import/{account}"),
        }
    }
}

/// The configured remote accounts, as the collector sees them: listed with
/// their settings and status, their outcomes recorded, their seen sets
/// kept. `umail-store` backs it in the reference server (through a thin
/// adapter in the binary); [`MemoryCollectionAccounts`] is the in-memory
/// model.
#[async_trait]
pub trait CollectionAccounts: Send + Sync {
    /// Every MultiPOP account (all users).
    async fn multipop_accounts(&self) -> Result<Vec<RemoteAccountInfo>, StateError>;

    /// Every DomainPOP account.
    async fn domainpop_accounts(&self) -> Result<Vec<DomainPopInfo>, StateError>;

    /// The limits in force in `domain` (`None`: the system-wide ones).
    async fn limits(&self, domain: Option<&Domain>) -> Result<CollectLimits, StateError>;

    /// Records the outcome of a fetch of `job` (which schedules the next
    /// one). An account removed meanwhile is ignored; so is an import.
    async fn record_fetch(
        &self,
        job: &CollectionJob,
        outcome: FetchOutcome,
    ) -> Result<(), StateError>;

    /// The seen sets of `job` (durable before `mark_seen` returns).
    fn state(&self, job: &CollectionJob) -> Arc<dyn CollectionState>;
}

/// A [`CollectionAccounts`] in memory (tests, and a model for stores).
#[derive(Debug, Default)]
pub struct MemoryCollectionAccounts {
    multipop: Mutex<Vec<RemoteAccountInfo>>,
    domainpop: Mutex<Vec<DomainPopInfo>>,
    limits: Mutex<CollectLimits>,
    states: Mutex<HashMap<CollectionJob, Arc<MemoryCollectionState>>>,
}

impl MemoryCollectionAccounts {
    /// No accounts, default limits.
    pub fn new() -> MemoryCollectionAccounts {
        MemoryCollectionAccounts::default()
    }

    /// Adds (or replaces, by owner and id) a MultiPOP account.
    pub fn put_multipop(&self, info: RemoteAccountInfo) {
        let mut list = lock(&self.multipop);
        list.retain(|a| !(a.account == info.account && a.id == info.id));
        list.push(info);
    }

    /// Adds (or replaces, by domain) a DomainPOP account.
    pub fn put_domainpop(&self, info: DomainPopInfo) {
        let mut list = lock(&self.domainpop);
        list.retain(|d| d.domain != info.domain);
        list.push(info);
    }

    /// Sets the limits of every domain.
    pub fn set_limits(&self, limits: CollectLimits) {
        *lock(&self.limits) = limits;
    }

    /// MultiPOP account `id` of `account`, as last recorded.
    pub fn multipop(&self, account: &str, id: u64) -> Option<RemoteAccountInfo> {
        lock(&self.multipop)
            .iter()
            .find(|a| a.account == account && a.id == id)
            .cloned()
    }

    /// The DomainPOP account of `domain`, as last recorded.
    pub fn domainpop(&self, domain: &str) -> Option<DomainPopInfo> {
        lock(&self.domainpop)
            .iter()
            .find(|d| d.domain == domain)
            .cloned()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl CollectionAccounts for MemoryCollectionAccounts {
    async fn multipop_accounts(&self) -> Result<Vec<RemoteAccountInfo>, StateError> {
        Ok(lock(&self.multipop).clone())
    }

    async fn domainpop_accounts(&self) -> Result<Vec<DomainPopInfo>, StateError> {
        Ok(lock(&self.domainpop).clone())
    }

    async fn limits(&self, _domain: Option<&Domain>) -> Result<CollectLimits, StateError> {
        Ok(*lock(&self.limits))
    }

    async fn record_fetch(
        &self,
        job: &CollectionJob,
        outcome: FetchOutcome,
    ) -> Result<(), StateError> {
        match job {
            CollectionJob::MultiPop { account, id } => {
                if let Some(a) = lock(&self.multipop)
                    .iter_mut()
                    .find(|a| &a.account == account && a.id == *id)
                {
                    a.status.record(&outcome, a.config.interval_secs);
                }
            }
            CollectionJob::DomainPop { domain } => {
                if let Some(d) = lock(&self.domainpop)
                    .iter_mut()
                    .find(|d| &d.domain == domain)
                {
                    d.status.record(&outcome, d.config.interval_secs);
                }
            }
            CollectionJob::Import { .. } => {}
        }
        Ok(())
    }

    fn state(&self, job: &CollectionJob) -> Arc<dyn CollectionState> {
        lock(&self.states).entry(job.clone()).or_default().clone()
    }
}

/// Timing and concurrency of a [`Collector`].
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    /// How often due accounts are looked for (default 2 s).
    pub tick: Duration,
    /// Most fetches running at once (default 4).
    pub max_concurrent: usize,
    /// Timeout of each exchange with a remote server (default 60 s).
    pub remote_timeout: Duration,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        CollectorSettings {
            tick: Duration::from_secs(2),
            max_concurrent: 4,
            remote_timeout: Duration::from_secs(60),
        }
    }
}

/// Who asked for a fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The scheduler: refused messages are downloaded again only when
    /// their [`retry_after`](umail_core::collection::RefusedMessage::retry_after)
    /// has passed.
    Schedule,
    /// An operator (`fetch run`): every refused message is tried again now.
    Operator,
}

/// Remote collection over a set of accounts and an ingest pipeline. Cheap
/// to clone; clones share the set of running fetches.
#[derive(Clone)]
pub struct Collector {
    inner: Arc<Inner>,
}

struct Inner {
    accounts: Arc<dyn CollectionAccounts>,
    ingest: Ingest,
    settings: CollectorSettings,
    running: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collector")
            .field("settings", &self.inner.settings)
            .field("running", &*lock(&self.inner.running))
            .finish_non_exhaustive()
    }
}

/// Held while one remote mailbox is fetched; releases it on drop.
pub(super) struct Running {
    inner: Arc<Inner>,
    key: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        lock(&self.inner.running).remove(&self.key);
    }
}

/// An account the scheduler found due.
enum Due {
    MultiPop(RemoteAccountInfo),
    DomainPop(DomainPopInfo),
}

impl Collector {
    /// A collector with the default [`CollectorSettings`].
    pub fn new(accounts: Arc<dyn CollectionAccounts>, ingest: Ingest) -> Collector {
        Collector::with_settings(accounts, ingest, CollectorSettings::default())
    }

    /// A collector with explicit settings.
    pub fn with_settings(
        accounts: Arc<dyn CollectionAccounts>,
        ingest: Ingest,
        settings: CollectorSettings,
    ) -> Collector {
        Collector {
            inner: Arc::new(Inner {
                accounts,
                ingest,
                settings,
                running: Mutex::new(HashSet::new()),
            }),
        }
    }

    /// The accounts collected.
    pub fn accounts(&self) -> &Arc<dyn CollectionAccounts> {
        &self.inner.accounts
    }

    /// The pipeline every collected message goes through.
    pub fn ingest(&self) -> &Ingest {
        &self.inner.ingest
    }

    /// The settings in force.
    pub fn settings(&self) -> &CollectorSettings {
        &self.inner.settings
    }

    /// True while a fetch of `job` runs in this collector.
    pub fn is_running(&self, job: &CollectionJob) -> bool {
        lock(&self.inner.running).contains(&job.key())
    }

    /// Marks `key` as being fetched until the returned guard drops.
    pub(super) fn claim(&self, key: String) -> Result<Running, CollectError> {
        if !lock(&self.inner.running).insert(key.clone()) {
            return Err(CollectError::Busy);
        }
        Ok(Running {
            inner: Arc::clone(&self.inner),
            key,
        })
    }

    /// Starts the scheduler on its own task; it stops at `shutdown`.
    pub fn spawn(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        let collector = self.clone();
        tokio::spawn(async move { collector.run(shutdown).await })
    }

    /// The scheduler loop (see the module docs); returns at `shutdown`.
    pub async fn run(&self, mut shutdown: Shutdown) {
        let permits = Arc::new(Semaphore::new(self.inner.settings.max_concurrent.max(1)));
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                _ = tokio::time::sleep(self.inner.settings.tick) => {}
            }
            for due in self.due().await {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    break;
                };
                let (collector, mut stop) = (self.clone(), shutdown.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = stop.wait() => {}
                        _ = collector.fetch_due_one(due) => {}
                    }
                    drop(permit);
                });
            }
        }
    }

    /// Fetches every account that is due now, one after another, and
    /// returns their results: one scheduler round run to completion (for
    /// embedders that drive the schedule themselves, and for tests).
    pub async fn fetch_due(&self) -> Vec<(CollectionJob, Result<FetchReport, CollectError>)> {
        let mut out = Vec::new();
        for due in self.due().await {
            let job = match &due {
                Due::MultiPop(a) => multipop_job(a),
                Due::DomainPop(d) => domainpop_job(d),
            };
            out.push((job, self.fetch_due_one(due).await));
        }
        out
    }

    async fn fetch_due_one(&self, due: Due) -> Result<FetchReport, CollectError> {
        match due {
            Due::MultiPop(info) => self.collect_account(&info, Trigger::Schedule).await,
            Due::DomainPop(info) => self.collect_domain(&info, Trigger::Schedule).await,
        }
    }

    /// Enabled accounts whose next attempt has come and that are not being
    /// fetched: MultiPOP first, then DomainPOP.
    async fn due(&self) -> Vec<Due> {
        let now = umail_core::unix_now();
        let accounts = &self.inner.accounts;
        let mut out = Vec::new();
        match accounts.multipop_accounts().await {
            Ok(list) => out.extend(
                list.into_iter()
                    .filter(|a| a.config.enabled && a.status.next_attempt <= now)
                    .filter(|a| !self.is_running(&multipop_job(a)))
                    .map(Due::MultiPop),
            ),
            Err(e) => {
                tracing::warn!(target: "pop3", error = %e, "cannot list remote accounts")
            }
        }
        match accounts.domainpop_accounts().await {
            Ok(list) => out.extend(
                list.into_iter()
                    .filter(|d| d.config.enabled && d.status.next_attempt <= now)
                    .filter(|d| !self.is_running(&domainpop_job(d)))
                    .map(Due::DomainPop),
            ),
            Err(e) => {
                tracing::warn!(target: "pop3", error = %e, "cannot list DomainPOP accounts")
            }
        }
        out
    }

    /// Fetches one MultiPOP account now and records the outcome.
    pub async fn collect_account(
        &self,
        info: &RemoteAccountInfo,
        trigger: Trigger,
    ) -> Result<FetchReport, CollectError> {
        let job = multipop_job(info);
        let _running = self.claim(job.key())?;
        let domain = info
            .account
            .rsplit_once('@')
            .and_then(|(_, d)| Domain::parse(d).ok());
        let limits = self.inner.accounts.limits(domain.as_ref()).await?;
        let started = umail_core::unix_now();
        let c = &info.config;
        let result = async {
            let remote = RemoteAccount::from_settings(
                &c.server,
                &CollectSettings {
                    leave_on_server: c.leave_on_server,
                    delete_after_days: c.delete_after_days,
                    max_message_size: c.max_message_size,
                    max_messages_per_fetch: limits.max_messages_per_fetch,
                    timeout: self.inner.settings.remote_timeout,
                },
            )?;
            let address = Address::parse(&info.account)
                .map_err(|e| CollectError::Settings(format!("`{}`: {e}", info.account)))?;
            let target = LocalTarget {
                account: info.account.clone(),
                address,
                mailbox: Some(c.folder.clone()),
            };
            let state = self.inner.accounts.state(&job);
            let options = FetchOptions {
                source: Source::Collection,
                earlier_refusals: &info.status.refused,
                retry_refused_now: trigger == Trigger::Operator,
                progress: None,
            };
            fetch_multipop(
                &remote,
                &self.inner.ingest,
                &target,
                state.as_ref(),
                &options,
            )
            .await
        }
        .await;
        match &result {
            Ok(r) => tracing::info!(target: "pop3", account = %info.account, id = info.id,
                remote = %c.server.display(), result = %r.summary(), "MultiPOP fetch done"),
            Err(e) => tracing::warn!(target: "pop3", account = %info.account, id = info.id,
                remote = %c.server.display(), error = %e, "MultiPOP fetch failed"),
        }
        self.record(&job, started, &result).await;
        result
    }

    /// Fetches one DomainPOP account now and records the outcome.
    pub async fn collect_domain(
        &self,
        info: &DomainPopInfo,
        trigger: Trigger,
    ) -> Result<FetchReport, CollectError> {
        let job = domainpop_job(info);
        let _running = self.claim(job.key())?;
        let domain = Domain::parse(&info.domain).ok();
        let limits = self.inner.accounts.limits(domain.as_ref()).await?;
        let started = umail_core::unix_now();
        let c = &info.config;
        let result = async {
            let remote = RemoteAccount::from_settings(
                &c.server,
                &CollectSettings {
                    leave_on_server: c.leave_on_server,
                    delete_after_days: c.delete_after_days,
                    max_message_size: c.max_message_size,
                    max_messages_per_fetch: limits.max_messages_per_fetch,
                    timeout: self.inner.settings.remote_timeout,
                },
            )?;
            let fallback = match &c.fallback {
                Some(f) => Some(
                    Address::parse(f)
                        .map_err(|e| CollectError::Settings(format!("fallback {f}: {e}")))?,
                ),
                None => None,
            };
            let routing = DomainPopRouting {
                fallback,
                dedupe_message_id: c.dedupe_message_id,
                max_message_ids: if c.max_message_ids == 0 {
                    umail_core::collection::DEFAULT_MAX_MESSAGE_IDS
                } else {
                    c.max_message_ids
                },
                headers: c.headers.clone(),
                skip_received: c.skip_received as usize,
                ..DomainPopRouting::default()
            };
            let state = self.inner.accounts.state(&job);
            let options = FetchOptions {
                source: Source::Collection,
                earlier_refusals: &info.status.refused,
                retry_refused_now: trigger == Trigger::Operator,
                progress: None,
            };
            fetch_domainpop(
                &remote,
                &self.inner.ingest,
                &routing,
                state.as_ref(),
                &options,
            )
            .await
        }
        .await;
        match &result {
            Ok(r) => tracing::info!(target: "pop3", domain = %info.domain,
                remote = %c.server.display(), result = %r.summary(), "DomainPOP fetch done"),
            Err(e) => tracing::warn!(target: "pop3", domain = %info.domain,
                remote = %c.server.display(), error = %e, "DomainPOP fetch failed"),
        }
        self.record(&job, started, &result).await;
        result
    }

    async fn record(
        &self,
        job: &CollectionJob,
        started: i64,
        result: &Result<FetchReport, CollectError>,
    ) {
        let outcome = FetchOutcome {
            started,
            finished: umail_core::unix_now(),
            ok: result.is_ok(),
            fetched: result.as_ref().map_or(0, |r| r.fetched as u64),
            message: match result {
                Ok(r) => r.summary(),
                // Never contains the password: the client's errors carry
                // only the server's replies and i/o errors.
                Err(e) => e.to_string(),
            },
            refused: result
                .as_ref()
                .map(|r| r.refused.clone())
                .unwrap_or_default(),
        };
        if let Err(e) = self.inner.accounts.record_fetch(job, outcome).await {
            tracing::warn!(target: "pop3", job = %job.key(), error = %e, "cannot record fetch status");
        }
    }
}

fn multipop_job(info: &RemoteAccountInfo) -> CollectionJob {
    CollectionJob::MultiPop {
        account: info.account.clone(),
        id: info.id,
    }
}

fn domainpop_job(info: &DomainPopInfo) -> CollectionJob {
    CollectionJob::DomainPop {
        domain: info.domain.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_keys_are_distinct() {
        let keys: HashSet<String> = [
            CollectionJob::MultiPop {
                account: "a@x".into(),
                id: 1,
            },
            CollectionJob::MultiPop {
                account: "a@x".into(),
                id: 2,
            },
            CollectionJob::DomainPop { domain: "x".into() },
            CollectionJob::Import {
                account: "a@x".into(),
            },
        ]
        .iter()
        .map(CollectionJob::key)
        .collect();
        assert_eq!(keys.len(), 4);
    }
}
