//! Remote collection: per-user MultiPOP accounts, per-domain DomainPOP
//! accounts, admin limits, fetch status with backoff, and the "seen" sets
//! (collected UIDLs, delivered Message-IDs) that make collection
//! idempotent.
//!
//! The store knows nothing about POP3 itself: it keeps the configuration
//! (the plain types of [`umail_core::collection`], re-exported here) and
//! generic id sets. The `umail` binary adapts these to the collector's
//! traits (`umail_pop3::collect::CollectionAccounts` and
//! `CollectionState`).
//!
//! Remote passwords must be usable, so they are stored as given (inside the
//! database file, which only the server's user can read). They are wrapped
//! in [`RemotePassword`], whose `Debug` prints `***`, and are never logged.

use std::collections::{BTreeSet, HashSet};

use umail_core::{Address, Domain};

use crate::db::{
    COLLECT_LIMITS, COLLECT_SEEN, COLLECT_SEEN_AGE, COLLECT_SEEN_COUNT, DOMAIN_POP, DbErr,
    REMOTE_ACCOUNTS, Tx, USERS,
};
use crate::writer::{Ctx, Fail};
use crate::{AdminError, Store};

type R<T> = Result<T, Fail<AdminError>>;

fn reject<T>(e: AdminError) -> R<T> {
    Err(Fail::Reject(e))
}

fn storage<T>(r: Result<T, DbErr>) -> Result<T, AdminError> {
    r.map_err(AdminError::storage)
}

pub use umail_core::collection::{
    CollectLimits, DEFAULT_FETCH_INTERVAL_SECS, DEFAULT_MAX_MESSAGE_IDS,
    DEFAULT_MAX_REMOTE_MESSAGE, DomainPopConfig, DomainPopInfo, FetchOutcome, FetchStatus,
    MAX_BACKOFF_SECS, MIN_FETCH_INTERVAL_SECS, RefusedMessage, RemoteAccountConfig,
    RemoteAccountInfo, RemotePassword, RemoteServer, TlsMode, backoff_delay,
};

/// Longest id stored in a seen set (UIDLs are at most 70 characters per
/// RFC 1939; Message-IDs are longer but bounded here).
pub const MAX_SEEN_ID: usize = 998;

/// Prefix of the seen sets of MultiPOP account `id` of `account`.
pub fn remote_seen_prefix(account: &str, id: u64) -> String {
    format!("multipop/{account}/{id}/")
}

/// Prefix of the seen sets of the DomainPOP account of `domain`.
pub fn domain_pop_seen_prefix(domain: &str) -> String {
    format!("domainpop/{domain}/")
}

/// Prefix of the seen sets of `umail import` runs into `account`.
pub fn import_seen_prefix(account: &str) -> String {
    format!("import/{account}/")
}

/// Scope key of the system-wide limits.
const GLOBAL_SCOPE: &str = "*";

fn user_exists(tx: Tx<'_>, a: &Address) -> Result<bool, DbErr> {
    let d = a.domain().as_str().to_string();
    let l = a.local_part().to_lowercase();
    tx.exists(USERS, (d.as_str(), l.as_str()))
}

fn effective_limits(tx: Tx<'_>, domain: Option<&str>) -> Result<CollectLimits, DbErr> {
    if let Some(d) = domain
        && let Some(l) = tx.get_json(COLLECT_LIMITS, d)?
    {
        return Ok(l);
    }
    Ok(tx
        .get_json(COLLECT_LIMITS, GLOBAL_SCOPE)?
        .unwrap_or_default())
}

fn remote_accounts_of(tx: Tx<'_>, account: &str) -> Result<Vec<RemoteAccountInfo>, DbErr> {
    let mut out = Vec::new();
    tx.scan(
        REMOTE_ACCOUNTS,
        (account, 0u64)..=(account, u64::MAX),
        |_, v| {
            out.push(crate::db::dec(v)?);
            Ok(true)
        },
    )?;
    Ok(out)
}

/// Deletes every seen set whose name starts with `prefix`.
fn clear_prefix(ctx: &mut Ctx<'_>, prefix: &str) -> Result<u64, DbErr> {
    let mut keys: Vec<(String, String, i64)> = Vec::new();
    ctx.r().scan(COLLECT_SEEN, (prefix, "").., |(set, id), t| {
        if !set.starts_with(prefix) {
            return Ok(false);
        }
        keys.push((set.to_string(), id.to_string(), t));
        Ok(true)
    })?;
    let mut sets: HashSet<String> = HashSet::new();
    for (set, id, t) in &keys {
        ctx.del(COLLECT_SEEN, (set.as_str(), id.as_str()))?;
        ctx.del(COLLECT_SEEN_AGE, (set.as_str(), *t, id.as_str()))?;
        sets.insert(set.clone());
    }
    for set in sets {
        ctx.del(COLLECT_SEEN_COUNT, set.as_str())?;
    }
    Ok(keys.len() as u64)
}

/// Removes a user's remote accounts and seen sets (called when the user is
/// deleted).
pub(crate) fn purge_user(ctx: &mut Ctx<'_>, account: &str) -> Result<(), DbErr> {
    let ids: Vec<u64> = remote_accounts_of(ctx.r(), account)?
        .iter()
        .map(|a| a.id)
        .collect();
    for id in ids {
        ctx.del(REMOTE_ACCOUNTS, (account, id))?;
    }
    clear_prefix(ctx, &format!("multipop/{account}/"))?;
    clear_prefix(ctx, &import_seen_prefix(account))?;
    Ok(())
}

/// Removes a domain's DomainPOP account, limits and seen sets (called when
/// the domain is deleted).
pub(crate) fn purge_domain(ctx: &mut Ctx<'_>, domain: &str) -> Result<(), DbErr> {
    ctx.del(DOMAIN_POP, domain)?;
    ctx.del(COLLECT_LIMITS, domain)?;
    clear_prefix(ctx, &domain_pop_seen_prefix(domain))?;
    Ok(())
}

/// The invariants of the collection tables (see
/// [`Store::check_invariants`]).
pub(crate) fn check(tx: Tx<'_>, problem: &mut dyn FnMut(String)) -> Result<(), DbErr> {
    use std::collections::BTreeMap;
    let mut owners: Vec<(String, u64)> = Vec::new();
    tx.scan_all(REMOTE_ACCOUNTS, |(account, id), _| {
        owners.push((account.to_string(), id));
        Ok(true)
    })?;
    for (account, id) in owners {
        let exists = match crate::split_account(&account) {
            Some((d, l)) => tx.exists(USERS, (d, l))?,
            None => false,
        };
        if !exists {
            problem(format!(
                "remote account {id} belongs to missing user {account}"
            ));
        }
    }
    let mut domains: Vec<String> = Vec::new();
    tx.scan_all(DOMAIN_POP, |d, _| {
        domains.push(d.to_string());
        Ok(true)
    })?;
    for d in domains {
        if !tx.exists(crate::db::DOMAINS, d.as_str())? {
            problem(format!("DomainPOP account of missing domain {d}"));
        }
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut ids: BTreeSet<(String, i64, String)> = BTreeSet::new();
    tx.scan_all(COLLECT_SEEN, |(set, id), t| {
        *counts.entry(set.to_string()).or_default() += 1;
        ids.insert((set.to_string(), t, id.to_string()));
        Ok(true)
    })?;
    let mut aged: BTreeSet<(String, i64, String)> = BTreeSet::new();
    tx.scan_all(COLLECT_SEEN_AGE, |(set, t, id), _| {
        aged.insert((set.to_string(), t, id.to_string()));
        Ok(true)
    })?;
    if ids != aged {
        problem(format!(
            "seen-set age index disagrees with the ids ({} ids, {} index entries)",
            ids.len(),
            aged.len()
        ));
    }
    let mut stored: BTreeMap<String, u64> = BTreeMap::new();
    tx.scan_all(COLLECT_SEEN_COUNT, |set, n| {
        stored.insert(set.to_string(), n);
        Ok(true)
    })?;
    if stored != counts {
        problem("seen-set counts disagree with the ids".to_string());
    }
    Ok(())
}

fn seen_count(tx: Tx<'_>, set: &str) -> Result<u64, DbErr> {
    Ok(tx.get_with(COLLECT_SEEN_COUNT, set, Ok)?.unwrap_or(0))
}

fn check_seen_id(set: &str, id: &str) -> Result<(), AdminError> {
    if set.is_empty() || set.len() > 2048 {
        return Err(AdminError::Invalid("bad seen-set name".into()));
    }
    if id.is_empty() || id.len() > MAX_SEEN_ID {
        return Err(AdminError::Invalid(format!(
            "ids must be 1 to {MAX_SEEN_ID} bytes"
        )));
    }
    Ok(())
}

impl Store {
    fn c_read<T>(&self, f: impl FnOnce(Tx<'_>) -> Result<T, DbErr>) -> Result<T, AdminError> {
        let tx = storage(self.read())?;
        storage(f(Tx::Read(&tx)))
    }

    // ----- limits -----

    /// Sets the collection limits of `domain`, or the system-wide ones
    /// with `None`. Durable before it returns.
    pub async fn set_collect_limits(
        &self,
        domain: Option<&Domain>,
        limits: CollectLimits,
    ) -> Result<(), AdminError> {
        let scope = domain.map_or(GLOBAL_SCOPE.to_string(), |d| d.as_str().to_string());
        self.write(AdminError::storage, move |ctx| {
            ctx.put_json(COLLECT_LIMITS, scope.as_str(), &limits)?;
            Ok(())
        })
        .await
    }

    /// The limits that apply in `domain` (its own, else the system-wide
    /// ones, else [`CollectLimits::default`]); `None` for the system-wide.
    pub fn collect_limits(&self, domain: Option<&Domain>) -> Result<CollectLimits, AdminError> {
        self.c_read(|tx| effective_limits(tx, domain.map(|d| d.as_str())))
    }

    // ----- MultiPOP accounts -----

    /// Adds a remote account to the user `owner`. Refused with `NotFound`
    /// for an unknown user, `Invalid` for bad settings and `LimitReached`
    /// past `max_accounts_per_user`.
    pub async fn add_remote_account(
        &self,
        owner: &Address,
        config: RemoteAccountConfig,
    ) -> Result<RemoteAccountInfo, AdminError> {
        config.validate().map_err(AdminError::Invalid)?;
        let owner = owner.clone();
        self.write(AdminError::storage, move |ctx| {
            if !user_exists(ctx.r(), &owner)? {
                return reject(AdminError::NotFound(format!("user {owner}")));
            }
            let account = owner.lookup_key();
            let limits = effective_limits(ctx.r(), Some(owner.domain().as_str()))?;
            let existing = remote_accounts_of(ctx.r(), &account)?;
            if limits.max_accounts_per_user != 0
                && existing.len() as u64 >= limits.max_accounts_per_user
            {
                return reject(AdminError::LimitReached(format!(
                    "{account} already has {} remote accounts (the maximum)",
                    existing.len()
                )));
            }
            let key = config.server.display().to_ascii_lowercase();
            if existing
                .iter()
                .any(|e| e.config.server.display().to_ascii_lowercase() == key)
            {
                return reject(AdminError::AlreadyExists(format!(
                    "remote account {} of {account}",
                    config.server.display()
                )));
            }
            let id = ctx.next_counter("remote_account_id")?;
            let info = RemoteAccountInfo {
                account: account.clone(),
                id,
                config: config.clone(),
                status: FetchStatus::default(),
                created: umail_core::unix_now(),
            };
            ctx.put_json(REMOTE_ACCOUNTS, (account.as_str(), id), &info)?;
            tracing::info!(target: "admin", account = %account, id, remote = %info.config.server.display(), "remote account added");
            Ok(info)
        })
        .await
    }

    /// One remote account of `owner`.
    pub fn remote_account(
        &self,
        owner: &Address,
        id: u64,
    ) -> Result<Option<RemoteAccountInfo>, AdminError> {
        let account = owner.lookup_key();
        self.c_read(|tx| tx.get_json(REMOTE_ACCOUNTS, (account.as_str(), id)))
    }

    /// Remote accounts of `owner`, or of every user with `None`, ordered
    /// by owner then id.
    pub fn list_remote_accounts(
        &self,
        owner: Option<&Address>,
    ) -> Result<Vec<RemoteAccountInfo>, AdminError> {
        self.c_read(|tx| match owner {
            Some(o) => remote_accounts_of(tx, &o.lookup_key()),
            None => {
                let mut out = Vec::new();
                tx.scan_all(REMOTE_ACCOUNTS, |_, v| {
                    out.push(crate::db::dec(v)?);
                    Ok(true)
                })?;
                Ok(out)
            }
        })
    }

    /// Replaces the settings of a remote account. Its status stays; its
    /// seen sets stay unless the remote mailbox (user, host or port)
    /// changes, which forgets them (a different mailbox starts afresh).
    pub async fn update_remote_account(
        &self,
        owner: &Address,
        id: u64,
        config: RemoteAccountConfig,
    ) -> Result<RemoteAccountInfo, AdminError> {
        config.validate().map_err(AdminError::Invalid)?;
        let account = owner.lookup_key();
        self.write(AdminError::storage, move |ctx| {
            let Some(mut info) = ctx
                .r()
                .get_json::<_, RemoteAccountInfo>(REMOTE_ACCOUNTS, (account.as_str(), id))?
            else {
                return reject(AdminError::NotFound(format!(
                    "remote account {id} of {account}"
                )));
            };
            let mailbox = |c: &RemoteAccountConfig| c.server.display().to_ascii_lowercase();
            if mailbox(&info.config) != mailbox(&config) {
                clear_prefix(ctx, &remote_seen_prefix(&account, id))?;
            }
            if mailbox(&info.config) != mailbox(&config) {
                info.status.refused.clear();
            }
            info.config = config.clone();
            // A change of settings is worth an immediate attempt.
            info.status.retry_now();
            ctx.put_json(REMOTE_ACCOUNTS, (account.as_str(), id), &info)?;
            Ok(info)
        })
        .await
    }

    /// Removes a remote account and forgets what it collected.
    pub async fn remove_remote_account(&self, owner: &Address, id: u64) -> Result<(), AdminError> {
        let account = owner.lookup_key();
        self.write(AdminError::storage, move |ctx| {
            if !ctx.r().exists(REMOTE_ACCOUNTS, (account.as_str(), id))? {
                return reject(AdminError::NotFound(format!(
                    "remote account {id} of {account}"
                )));
            }
            ctx.del(REMOTE_ACCOUNTS, (account.as_str(), id))?;
            clear_prefix(ctx, &remote_seen_prefix(&account, id))?;
            tracing::info!(target: "admin", account = %account, id, "remote account removed");
            Ok(())
        })
        .await
    }

    /// Records the outcome of a fetch of a remote account and schedules the
    /// next one (interval, or backoff after failures). A vanished account
    /// is ignored.
    pub async fn record_remote_fetch(
        &self,
        account: &str,
        id: u64,
        outcome: FetchOutcome,
    ) -> Result<Option<FetchStatus>, AdminError> {
        let account = account.to_string();
        self.write(AdminError::storage, move |ctx| {
            let Some(mut info) = ctx
                .r()
                .get_json::<_, RemoteAccountInfo>(REMOTE_ACCOUNTS, (account.as_str(), id))?
            else {
                return Ok(None);
            };
            info.status.record(&outcome, info.config.interval_secs);
            ctx.put_json(REMOTE_ACCOUNTS, (account.as_str(), id), &info)?;
            Ok(Some(info.status))
        })
        .await
    }

    // ----- DomainPOP -----

    /// Creates or replaces the DomainPOP account of `domain` (a hosted
    /// domain). Replacing keeps the status and seen sets.
    pub async fn set_domain_pop(
        &self,
        domain: &Domain,
        config: DomainPopConfig,
    ) -> Result<DomainPopInfo, AdminError> {
        config.validate().map_err(AdminError::Invalid)?;
        let domain = domain.as_str().to_string();
        self.write(AdminError::storage, move |ctx| {
            if !ctx.r().exists(crate::db::DOMAINS, domain.as_str())? {
                return reject(AdminError::NotFound(format!("domain {domain}")));
            }
            let old: Option<DomainPopInfo> = ctx.r().get_json(DOMAIN_POP, domain.as_str())?;
            let info = DomainPopInfo {
                domain: domain.clone(),
                config: config.clone(),
                status: old
                    .as_ref()
                    .map(|o| {
                        let mut status = o.status.clone();
                        if !o
                            .config
                            .server
                            .display()
                            .eq_ignore_ascii_case(&config.server.display())
                        {
                            status.refused.clear();
                        }
                        status.retry_now();
                        status
                    })
                    .unwrap_or_default(),
                created: old.map_or_else(umail_core::unix_now, |o| o.created),
            };
            ctx.put_json(DOMAIN_POP, domain.as_str(), &info)?;
            tracing::info!(target: "admin", domain = %domain, remote = %info.config.server.display(), "DomainPOP account set");
            Ok(info)
        })
        .await
    }

    /// The DomainPOP account of `domain`.
    pub fn domain_pop(&self, domain: &Domain) -> Result<Option<DomainPopInfo>, AdminError> {
        self.c_read(|tx| tx.get_json(DOMAIN_POP, domain.as_str()))
    }

    /// Every DomainPOP account, by domain.
    pub fn list_domain_pops(&self) -> Result<Vec<DomainPopInfo>, AdminError> {
        self.c_read(|tx| {
            let mut out = Vec::new();
            tx.scan_all(DOMAIN_POP, |_, v| {
                out.push(crate::db::dec(v)?);
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Removes the DomainPOP account of `domain` and its seen sets.
    pub async fn remove_domain_pop(&self, domain: &Domain) -> Result<(), AdminError> {
        let domain = domain.as_str().to_string();
        self.write(AdminError::storage, move |ctx| {
            if !ctx.r().exists(DOMAIN_POP, domain.as_str())? {
                return reject(AdminError::NotFound(format!("DomainPOP of {domain}")));
            }
            ctx.del(DOMAIN_POP, domain.as_str())?;
            clear_prefix(ctx, &domain_pop_seen_prefix(&domain))?;
            Ok(())
        })
        .await
    }

    /// Records the outcome of a DomainPOP fetch (see
    /// [`Store::record_remote_fetch`]).
    pub async fn record_domain_pop_fetch(
        &self,
        domain: &str,
        outcome: FetchOutcome,
    ) -> Result<Option<FetchStatus>, AdminError> {
        let domain = domain.to_string();
        self.write(AdminError::storage, move |ctx| {
            let Some(mut info) = ctx
                .r()
                .get_json::<_, DomainPopInfo>(DOMAIN_POP, domain.as_str())?
            else {
                return Ok(None);
            };
            info.status.record(&outcome, info.config.interval_secs);
            ctx.put_json(DOMAIN_POP, domain.as_str(), &info)?;
            Ok(Some(info.status))
        })
        .await
    }

    // ----- seen sets -----

    /// Every id of the seen set `set`.
    pub fn seen_ids(&self, set: &str) -> Result<HashSet<String>, AdminError> {
        self.c_read(|tx| {
            let mut out = HashSet::new();
            tx.scan(COLLECT_SEEN, (set, "").., |(s, id), _| {
                if s != set {
                    return Ok(false);
                }
                out.insert(id.to_string());
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// True when `id` is in the seen set `set`.
    pub fn seen_contains(&self, set: &str, id: &str) -> Result<bool, AdminError> {
        self.c_read(|tx| tx.exists(COLLECT_SEEN, (set, id)))
    }

    /// Number of ids in the seen set `set`.
    pub fn seen_len(&self, set: &str) -> Result<u64, AdminError> {
        self.c_read(|tx| seen_count(tx, set))
    }

    /// The ids of `set` recorded before `cutoff` (Unix time).
    pub fn seen_before(&self, set: &str, cutoff: i64) -> Result<HashSet<String>, AdminError> {
        self.c_read(|tx| {
            let mut out = HashSet::new();
            tx.scan(
                COLLECT_SEEN_AGE,
                (set, i64::MIN, "")..(set, cutoff, ""),
                |(_, _, id), _| {
                    out.insert(id.to_string());
                    Ok(true)
                },
            )?;
            Ok(out)
        })
    }

    /// Adds `id` to the seen set `set` (recorded at `now`; an id already
    /// present keeps its first time). With `max > 0` the oldest ids are
    /// forgotten so the set holds at most `max`. Durable before it returns.
    pub async fn mark_seen(
        &self,
        set: &str,
        id: &str,
        now: i64,
        max: u64,
    ) -> Result<(), AdminError> {
        check_seen_id(set, id)?;
        let (set, id) = (set.to_string(), id.to_string());
        self.write(AdminError::storage, move |ctx| {
            if ctx.r().exists(COLLECT_SEEN, (set.as_str(), id.as_str()))? {
                return Ok(());
            }
            ctx.put(COLLECT_SEEN, (set.as_str(), id.as_str()), now)?;
            ctx.put(COLLECT_SEEN_AGE, (set.as_str(), now, id.as_str()), 1u8)?;
            let mut count = seen_count(ctx.r(), &set)?.saturating_add(1);
            if max > 0 && count > max {
                let excess = count - max;
                let mut oldest: Vec<(i64, String)> = Vec::new();
                ctx.r().scan(
                    COLLECT_SEEN_AGE,
                    (set.as_str(), i64::MIN, "")..=(set.as_str(), i64::MAX, "\u{10FFFF}"),
                    |(_, t, old), _| {
                        oldest.push((t, old.to_string()));
                        Ok((oldest.len() as u64) < excess)
                    },
                )?;
                for (t, old) in oldest {
                    ctx.del(COLLECT_SEEN_AGE, (set.as_str(), t, old.as_str()))?;
                    ctx.del(COLLECT_SEEN, (set.as_str(), old.as_str()))?;
                    count -= 1;
                }
            }
            ctx.put(COLLECT_SEEN_COUNT, set.as_str(), count)?;
            Ok(())
        })
        .await
    }

    /// Forgets the ids of `set` not in `keep`.
    pub async fn retain_seen(&self, set: &str, keep: &HashSet<String>) -> Result<u64, AdminError> {
        let set = set.to_string();
        let keep = keep.clone();
        self.write(AdminError::storage, move |ctx| {
            let mut gone: Vec<(String, i64)> = Vec::new();
            let mut total = 0u64;
            ctx.r()
                .scan(COLLECT_SEEN, (set.as_str(), "").., |(s, id), t| {
                    if s != set {
                        return Ok(false);
                    }
                    total += 1;
                    if !keep.contains(id) {
                        gone.push((id.to_string(), t));
                    }
                    Ok(true)
                })?;
            if gone.is_empty() {
                return Ok(0);
            }
            for (id, t) in &gone {
                ctx.del(COLLECT_SEEN, (set.as_str(), id.as_str()))?;
                ctx.del(COLLECT_SEEN_AGE, (set.as_str(), *t, id.as_str()))?;
            }
            let left = total - gone.len() as u64;
            if left == 0 {
                ctx.del(COLLECT_SEEN_COUNT, set.as_str())?;
            } else {
                ctx.put(COLLECT_SEEN_COUNT, set.as_str(), left)?;
            }
            Ok(gone.len() as u64)
        })
        .await
    }

    /// Forgets every seen set whose name starts with `prefix`; returns the
    /// number of ids removed.
    pub async fn clear_seen(&self, prefix: &str) -> Result<u64, AdminError> {
        if prefix.is_empty() {
            return Err(AdminError::Invalid("empty seen-set prefix".into()));
        }
        let prefix = prefix.to_string();
        self.write(AdminError::storage, move |ctx| {
            Ok(clear_prefix(ctx, &prefix)?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NewDomain, NewUser};

    fn server(user: &str) -> RemoteServer {
        RemoteServer {
            host: "pop.example.net".into(),
            port: 995,
            tls: TlsMode::Implicit,
            tls_verify: true,
            ca_file: None,
            username: user.into(),
            password: RemotePassword::new("hunter2"),
            apop: false,
        }
    }

    async fn store() -> Store {
        let s = Store::open_in_memory().unwrap();
        s.add_domain(NewDomain::new("example.com".parse().unwrap()))
            .await
            .unwrap();
        s.add_user(NewUser::new(
            "alice@example.com".parse().unwrap(),
            "pw-123456",
        ))
        .await
        .unwrap();
        s
    }

    #[test]
    fn password_never_in_debug() {
        let cfg = RemoteAccountConfig::new(server("u"));
        assert!(!format!("{cfg:?}").contains("hunter2"));
        // Serialized (stored) it must be usable.
        assert!(serde_json::to_string(&cfg).unwrap().contains("hunter2"));
    }

    #[tokio::test]
    async fn remote_accounts_crud_limits_and_status() {
        let s = store().await;
        let alice: Address = "alice@example.com".parse().unwrap();
        let bob: Address = "bob@example.com".parse().unwrap();
        assert!(matches!(
            s.add_remote_account(&bob, RemoteAccountConfig::new(server("x")))
                .await,
            Err(AdminError::NotFound(_))
        ));
        let mut bad = RemoteAccountConfig::new(server("x"));
        bad.interval_secs = 1;
        assert!(matches!(
            s.add_remote_account(&alice, bad).await,
            Err(AdminError::Invalid(_))
        ));
        s.set_collect_limits(
            Some(alice.domain()),
            CollectLimits {
                max_accounts_per_user: 2,
                max_messages_per_fetch: 10,
            },
        )
        .await
        .unwrap();
        let a = s
            .add_remote_account(&alice, RemoteAccountConfig::new(server("a")))
            .await
            .unwrap();
        assert!(matches!(
            s.add_remote_account(&alice, RemoteAccountConfig::new(server("A")))
                .await,
            Err(AdminError::AlreadyExists(_))
        ));
        let b = s
            .add_remote_account(&alice, RemoteAccountConfig::new(server("b")))
            .await
            .unwrap();
        assert_ne!(a.id, b.id);
        assert!(matches!(
            s.add_remote_account(&alice, RemoteAccountConfig::new(server("c")))
                .await,
            Err(AdminError::LimitReached(_))
        ));
        assert_eq!(s.list_remote_accounts(Some(&alice)).unwrap().len(), 2);
        assert_eq!(s.list_remote_accounts(None).unwrap().len(), 2);
        assert_eq!(
            s.collect_limits(Some(alice.domain()))
                .unwrap()
                .max_messages_per_fetch,
            10
        );
        assert_eq!(s.collect_limits(None).unwrap(), CollectLimits::default());

        // Failure, failure, success: backoff then the interval.
        let fail = FetchOutcome {
            started: 1000,
            finished: 1010,
            ok: false,
            fetched: 0,
            message: "connection refused\r\nx".into(),
            refused: Vec::new(),
        };
        let st = s
            .record_remote_fetch("alice@example.com", a.id, fail.clone())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((st.failures, st.next_attempt), (1, 1010 + 600));
        assert!(!st.last_result.contains('\n'));
        let st = s
            .record_remote_fetch("alice@example.com", a.id, fail)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((st.failures, st.next_attempt), (2, 1010 + 1200));
        let ok = FetchOutcome {
            started: 2000,
            finished: 2005,
            ok: true,
            fetched: 7,
            message: "7 fetched, 1 refused".into(),
            refused: vec![RefusedMessage {
                uidl: "u9".into(),
                reason: "552 5.2.2 Mailbox full".into(),
                attempts: 1,
                retry_after: 9000,
                ..RefusedMessage::default()
            }],
        };
        let st = s
            .record_remote_fetch("alice@example.com", a.id, ok)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(st.failures, 0);
        assert_eq!(st.next_attempt, 2305);
        assert_eq!(st.fetched_total, 7);
        assert_eq!(st.last_success, Some(2005));
        assert_eq!(st.refused.len(), 1, "refused messages are remembered");

        // Changing the password keeps the seen set and the refused
        // messages (due again at once); changing the mailbox forgets both.
        let prefix = remote_seen_prefix(&a.account, a.id);
        s.mark_seen(&format!("{prefix}src"), "u0", 5, 0)
            .await
            .unwrap();
        let mut cfg = a.config.clone();
        cfg.server.password = RemotePassword::new("new-password");
        let updated = s
            .update_remote_account(&alice, a.id, cfg.clone())
            .await
            .unwrap();
        assert_eq!(s.seen_len(&format!("{prefix}src")).unwrap(), 1);
        assert_eq!(updated.status.refused[0].retry_after, 0);
        cfg.server.host = "pop.other.example".into();
        let updated = s.update_remote_account(&alice, a.id, cfg).await.unwrap();
        assert_eq!(updated.status.fetched_total, 7);
        assert!(updated.status.refused.is_empty());
        assert_eq!(s.seen_len(&format!("{prefix}src")).unwrap(), 0);

        // Seen sets go with the account.
        s.mark_seen(&format!("{prefix}src"), "u1", 5, 0)
            .await
            .unwrap();
        s.remove_remote_account(&alice, a.id).await.unwrap();
        assert!(s.seen_ids(&format!("{prefix}src")).unwrap().is_empty());
        assert!(s.remote_account(&alice, a.id).unwrap().is_none());

        // Removing the user removes the rest.
        s.mark_seen(
            &format!("{}src", remote_seen_prefix(&b.account, b.id)),
            "u1",
            5,
            0,
        )
        .await
        .unwrap();
        s.remove_user(&alice).await.unwrap();
        assert!(s.list_remote_accounts(None).unwrap().is_empty());
        assert_eq!(
            s.seen_len(&format!("{}src", remote_seen_prefix(&b.account, b.id)))
                .unwrap(),
            0
        );
        s.check_invariants().unwrap();
    }

    #[tokio::test]
    async fn seen_sets_bounded_retained_and_aged() {
        let s = Store::open_in_memory().unwrap();
        for (i, id) in ["a", "b", "c", "d"].iter().enumerate() {
            s.mark_seen("set", id, 100 + i as i64, 3).await.unwrap();
        }
        // Re-marking keeps the first time and does not grow the set.
        s.mark_seen("set", "d", 500, 3).await.unwrap();
        assert_eq!(
            s.seen_ids("set").unwrap(),
            HashSet::from(["b".into(), "c".into(), "d".into()])
        );
        assert_eq!(s.seen_len("set").unwrap(), 3);
        assert!(s.seen_contains("set", "c").unwrap());
        assert!(!s.seen_contains("set", "a").unwrap());
        assert_eq!(
            s.seen_before("set", 103).unwrap(),
            HashSet::from(["b".into(), "c".into()])
        );
        s.mark_seen("set2", "x", 1, 0).await.unwrap();
        let removed = s
            .retain_seen("set", &HashSet::from(["c".to_string()]))
            .await
            .unwrap();
        assert_eq!(removed, 2);
        assert_eq!(s.seen_ids("set").unwrap(), HashSet::from(["c".into()]));
        assert_eq!(s.seen_len("set").unwrap(), 1);
        assert_eq!(s.seen_ids("set2").unwrap().len(), 1);
        assert_eq!(s.clear_seen("set").await.unwrap(), 2);
        assert!(s.seen_ids("set2").unwrap().is_empty());
        assert!(s.mark_seen("set", "", 1, 0).await.is_err());
        s.mark_seen("set3", "y", 1, 0).await.unwrap();
        s.check_invariants().unwrap();
    }

    #[tokio::test]
    async fn domain_pop_set_show_remove() {
        let s = store().await;
        let d: Domain = "example.com".parse().unwrap();
        let other: Domain = "other.org".parse().unwrap();
        let mut cfg = DomainPopConfig::new(server("catchall"));
        assert!(matches!(
            s.set_domain_pop(&other, cfg.clone()).await,
            Err(AdminError::NotFound(_))
        ));
        cfg.headers = vec!["Bad Header".into()];
        assert!(matches!(
            s.set_domain_pop(&d, cfg.clone()).await,
            Err(AdminError::Invalid(_))
        ));
        cfg.headers = vec!["X-Original-To".into()];
        cfg.fallback = Some("postmaster@example.com".into());
        let info = s.set_domain_pop(&d, cfg.clone()).await.unwrap();
        assert_eq!(info.config, cfg);
        s.record_domain_pop_fetch(
            "example.com",
            FetchOutcome {
                started: 1,
                finished: 2,
                ok: true,
                fetched: 3,
                message: "ok".into(),
                refused: Vec::new(),
            },
        )
        .await
        .unwrap();
        // Replacing the settings keeps the counters.
        let again = s.set_domain_pop(&d, cfg).await.unwrap();
        assert_eq!(again.status.fetched_total, 3);
        assert_eq!(s.list_domain_pops().unwrap().len(), 1);
        s.mark_seen(
            &format!("{}src", domain_pop_seen_prefix("example.com")),
            "1",
            1,
            0,
        )
        .await
        .unwrap();
        s.remove_domain_pop(&d).await.unwrap();
        assert!(s.domain_pop(&d).unwrap().is_none());
        assert_eq!(
            s.seen_len(&format!("{}src", domain_pop_seen_prefix("example.com")))
                .unwrap(),
            0
        );
    }

    #[tokio::test]
    async fn durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.redb");
        {
            let s = Store::open(&path).unwrap();
            s.add_domain(NewDomain::new("example.com".parse().unwrap()))
                .await
                .unwrap();
            s.add_user(NewUser::new(
                "alice@example.com".parse().unwrap(),
                "pw-123456",
            ))
            .await
            .unwrap();
            s.add_remote_account(
                &"alice@example.com".parse().unwrap(),
                RemoteAccountConfig::new(server("u")),
            )
            .await
            .unwrap();
            s.mark_seen("multipop/alice@example.com/1/x", "uidl-1", 9, 0)
                .await
                .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let list = s.list_remote_accounts(None).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].config.server.password.expose(), "hunter2");
        assert!(
            s.seen_contains("multipop/alice@example.com/1/x", "uidl-1")
                .unwrap()
        );
        // The backup copies the new tables too.
        let backup = dir.path().join("backup.redb");
        s.backup(&backup).await.unwrap();
        drop(s);
        let b = Store::open(&backup).unwrap();
        assert_eq!(b.list_remote_accounts(None).unwrap().len(), 1);
    }
}
