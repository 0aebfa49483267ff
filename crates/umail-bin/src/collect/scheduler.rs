//! The background collector of `umail serve`.
//!
//! Every [`TICK`] it looks for enabled MultiPOP and DomainPOP accounts whose
//! `next_attempt` has passed and fetches them on separate tasks, at most
//! [`MAX_CONCURRENT`] at once (the rest wait for the next tick). Each fetch
//! records its outcome, which sets the next attempt: the account's interval
//! (default 300 s) after a success, a doubling backoff (at most 6 h) after
//! failures. Fetches run on their own tasks and talk to the store through
//! the same group-commit writer as everything else, so local service is
//! never blocked. On shutdown the loop stops and running fetches are
//! dropped: a message stored but not yet marked collected may be fetched
//! again (at least once, never lost).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use umail_core::{Services, Shutdown};
use umail_store::Store;

use super::remote::{self, FetchGuard};

/// How often due accounts are looked for.
pub const TICK: Duration = Duration::from_secs(2);

/// Most fetches running at once.
pub const MAX_CONCURRENT: usize = 4;

/// Starts the scheduler task.
pub fn spawn(store: Store, services: Services, shutdown: Shutdown) {
    tokio::spawn(run(store, services, shutdown));
}

async fn run(store: Store, services: Services, mut shutdown: Shutdown) {
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT));
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let now = umail_core::unix_now();
        let accounts = match store.list_remote_accounts(None) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(target: "pop3", error = %e, "cannot list remote accounts");
                Vec::new()
            }
        };
        for info in accounts {
            if !info.config.enabled
                || info.status.next_attempt > now
                || FetchGuard::busy(&info.seen_prefix())
            {
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                break;
            };
            let (store, mail, mut stop) =
                (store.clone(), Arc::clone(&services.store), shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.wait() => {}
                    _ = remote::run_remote(&store, mail.as_ref(), &info) => {}
                }
                drop(permit);
            });
        }
        let pops = match store.list_domain_pops() {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(target: "pop3", error = %e, "cannot list DomainPOP accounts");
                Vec::new()
            }
        };
        for info in pops {
            let key = umail_store::collection::domain_pop_seen_prefix(&info.domain);
            if !info.config.enabled || info.status.next_attempt > now || FetchGuard::busy(&key) {
                continue;
            }
            let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                break;
            };
            let (store, mail, directory, mut stop) = (
                store.clone(),
                Arc::clone(&services.store),
                Arc::clone(&services.directory),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.wait() => {}
                    _ = remote::run_domain(&store, mail.as_ref(), directory.as_ref(), &info) => {}
                }
                drop(permit);
            });
        }
    }
}
