//! The store as the collector's account list: [`StoreAccounts`] adapts
//! `umail_store::Store` (settings, fetch status, seen sets) to
//! `umail_pop3::collect::CollectionAccounts` and `CollectionState`.
//! Composition only: the store keeps the data, `umail-pop3` acts on it.

use std::collections::HashSet;
use std::sync::Arc;

use umail_core::Domain;
use umail_pop3::collect::{
    CollectLimits, CollectionAccounts, CollectionJob, CollectionState, DomainPopInfo, FetchOutcome,
    RemoteAccountInfo, StateError, async_trait,
};
use umail_store::Store;
use umail_store::collection::{domain_pop_seen_prefix, import_seen_prefix, remote_seen_prefix};

/// The collector's view of a [`Store`].
pub struct StoreAccounts(pub Store);

fn state_err(e: umail_store::AdminError) -> StateError {
    StateError::Backend(e.to_string())
}

#[async_trait]
impl CollectionAccounts for StoreAccounts {
    async fn multipop_accounts(&self) -> Result<Vec<RemoteAccountInfo>, StateError> {
        self.0.list_remote_accounts(None).map_err(state_err)
    }

    async fn domainpop_accounts(&self) -> Result<Vec<DomainPopInfo>, StateError> {
        self.0.list_domain_pops().map_err(state_err)
    }

    async fn limits(&self, domain: Option<&Domain>) -> Result<CollectLimits, StateError> {
        self.0.collect_limits(domain).map_err(state_err)
    }

    async fn record_fetch(
        &self,
        job: &CollectionJob,
        outcome: FetchOutcome,
    ) -> Result<(), StateError> {
        match job {
            CollectionJob::MultiPop { account, id } => self
                .0
                .record_remote_fetch(account, *id, outcome)
                .await
                .map(drop)
                .map_err(state_err),
            CollectionJob::DomainPop { domain } => self
                .0
                .record_domain_pop_fetch(domain, outcome)
                .await
                .map(drop)
                .map_err(state_err),
            CollectionJob::Import { .. } => Ok(()),
        }
    }

    fn state(&self, job: &CollectionJob) -> Arc<dyn CollectionState> {
        let prefix = match job {
            CollectionJob::MultiPop { account, id } => remote_seen_prefix(account, *id),
            CollectionJob::DomainPop { domain } => domain_pop_seen_prefix(domain),
            CollectionJob::Import { account } => import_seen_prefix(account),
        };
        Arc::new(StoreState {
            store: self.0.clone(),
            prefix,
        })
    }
}

/// The seen sets of one job: `source` is the set `<prefix><source>`.
struct StoreState {
    store: Store,
    prefix: String,
}

impl StoreState {
    fn set(&self, source: &str) -> String {
        format!("{}{source}", self.prefix)
    }
}

#[async_trait]
impl CollectionState for StoreState {
    async fn seen(&self, source: &str) -> Result<HashSet<String>, StateError> {
        self.store.seen_ids(&self.set(source)).map_err(state_err)
    }

    async fn mark_seen(&self, source: &str, id: &str) -> Result<(), StateError> {
        self.mark_seen_bounded(source, id, 0).await
    }

    async fn mark_seen_bounded(&self, source: &str, id: &str, max: u64) -> Result<(), StateError> {
        self.store
            .mark_seen(&self.set(source), id, umail_core::unix_now(), max)
            .await
            .map_err(state_err)
    }

    async fn retain(&self, source: &str, keep: &HashSet<String>) -> Result<(), StateError> {
        self.store
            .retain_seen(&self.set(source), keep)
            .await
            .map(drop)
            .map_err(state_err)
    }

    async fn contains(&self, source: &str, id: &str) -> Result<bool, StateError> {
        self.store
            .seen_contains(&self.set(source), id)
            .map_err(state_err)
    }

    async fn seen_before(&self, source: &str, cutoff: i64) -> Result<HashSet<String>, StateError> {
        self.store
            .seen_before(&self.set(source), cutoff)
            .map_err(state_err)
    }
}
