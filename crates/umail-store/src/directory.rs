//! The directory: domains, domain aliases, users, address aliases, mailing
//! lists, departments and administrator roles; the administration API and
//! the `umail_core::Directory` implementation.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use umail_core::sasl::ScramCredentials;
use umail_core::{
    AccountStatus, Address, AdminRole, Directory, DirectoryError, Domain, DomainSettings,
    DomainStatus, ListMember, ListPolicy, MailingList, Principal, Protocol, Quota, QuotaUsage,
    Resolution, Unavailability,
};

use crate::db::{
    ACCOUNTS, ADMINS, ALIASES, DEPARTMENTS, DOMAIN_ALIASES, DOMAINS, DbErr, LISTS, Tx, USERS,
};
use crate::mail::{AccountRec, purge_account};
use crate::writer::{Ctx, Fail};
use crate::{AdminError, Store};

/// The local part of the automatic list of every user of a domain.
pub const EVERYONE: &str = "everyone";

/// Longest accepted password, in bytes.
const MAX_PASSWORD_LEN: usize = 1024;

/// Longest display name, department name or list name, in characters.
const MAX_NAME_LEN: usize = 256;

type R<T> = Result<T, Fail<AdminError>>;

/// Moves and/or renames a department inside a write transaction (see
/// [`Store::move_department`]); returns its new state.
fn relocate_department(
    ctx: &mut Ctx<'_>,
    domain: &Domain,
    path: &str,
    new_parent: Option<Option<String>>,
    new_name: Option<String>,
) -> R<DepartmentInfo> {
    if let Some(n) = &new_name
        && let Err(e) = validate_dept_name(n)
    {
        return reject(e);
    }
    let path = path.to_string();
    let d = domain.as_str();
    let Some(rec) = ctx
        .r()
        .get_json::<_, DeptRec>(DEPARTMENTS, (d, path.as_str()))?
    else {
        return reject(AdminError::NotFound(format!(
            "department {path} in {domain}"
        )));
    };
    let parent = match &new_parent {
        Some(p) => p.clone(),
        None => rec.parent.clone(),
    };
    let new_name = new_name.clone().unwrap_or_else(|| rec.name.clone());
    if let Some(p) = &parent {
        if *p == path || p.starts_with(&format!("{path}/")) {
            return reject(AdminError::Invalid(format!(
                "cannot move department {path} under itself ({p})"
            )));
        }
        if !department_exists(ctx.r(), d, p)? {
            return reject(AdminError::NotFound(format!("department {p} in {domain}")));
        }
    }
    let new_path = match &parent {
        Some(p) => format!("{p}/{new_name}"),
        None => new_name.clone(),
    };
    if new_path == path {
        return Ok(dept_info(domain, path.clone(), rec));
    }
    if department_exists(ctx.r(), d, &new_path)? {
        return reject(AdminError::AlreadyExists(format!(
            "department {new_path} in {domain}"
        )));
    }
    let child_prefix = format!("{path}/");
    let repath = |p: &str| -> Option<String> {
        if p == path {
            Some(new_path.clone())
        } else {
            p.strip_prefix(&child_prefix)
                .map(|rest| format!("{new_path}/{rest}"))
        }
    };
    let moved: Vec<(String, DeptRec)> = ctx
        .r()
        .prefix_json::<DeptRec>(DEPARTMENTS, d)?
        .into_iter()
        .filter(|(p, _)| repath(p).is_some())
        .collect();
    for (old, _) in &moved {
        ctx.del(DEPARTMENTS, (d, old.as_str()))?;
    }
    let mut renamed = None;
    for (old, mut r) in moved {
        let Some(new) = repath(&old) else { continue };
        if old == path {
            r.name = new_name.clone();
            r.parent = parent.clone();
        } else {
            r.parent = r.parent.as_deref().and_then(&repath);
        }
        ctx.put_json(DEPARTMENTS, (d, new.as_str()), &r)?;
        if old == path {
            renamed = Some(dept_info(domain, new, r));
        }
    }
    for mut u in users_of(ctx.r(), d)? {
        if let Some(new) = u.department.as_deref().and_then(&repath) {
            u.department = Some(new);
            put_user(ctx, &u)?;
        }
    }
    let mut roles = Vec::new();
    ctx.r().scan_all(ADMINS, |k, v| {
        roles.push((k.to_string(), crate::db::dec::<Vec<AdminRole>>(v)?));
        Ok(true)
    })?;
    for (account, r) in roles {
        let mut changed = false;
        let r: BTreeSet<AdminRole> = r
            .into_iter()
            .map(|x| match x {
                AdminRole::Department {
                    domain: rd,
                    department,
                } if rd == *domain => match repath(&department) {
                    Some(new) => {
                        changed = true;
                        AdminRole::Department {
                            domain: rd,
                            department: new,
                        }
                    }
                    None => AdminRole::Department {
                        domain: rd,
                        department,
                    },
                },
                other => other,
            })
            .collect();
        if changed {
            let r: Vec<AdminRole> = r.into_iter().collect();
            ctx.put_json(ADMINS, account.as_str(), &r)?;
        }
    }
    match renamed {
        Some(info) => Ok(info),
        None => Err(Fail::Db(DbErr("moved department vanished".into()))),
    }
}

fn reject<T>(e: AdminError) -> R<T> {
    Err(Fail::Reject(e))
}

fn now() -> i64 {
    umail_core::unix_now()
}

// ---------------------------------------------------------------------------
// Public record types
// ---------------------------------------------------------------------------

/// A new hosted domain and its limits (`0` means unlimited everywhere).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDomain {
    /// The domain.
    pub domain: Domain,
    /// Initial status.
    pub status: DomainStatus,
    /// Unix time after which the domain reads as expired.
    pub expires: Option<i64>,
    /// Most users (0 = unlimited).
    pub max_users: u64,
    /// Total storage the domain may allocate to its users, in bytes
    /// (0 = unlimited). When set, every user needs a non-zero quota and the
    /// users' quotas may not add up to more than this.
    pub quota_bytes: u64,
    /// Quota given to a new user created without one (0 = unlimited).
    pub default_user_quota: u64,
    /// Most mailing lists (0 = unlimited).
    pub max_lists: u64,
    /// Largest message accepted for the domain (0 = the server limit).
    pub max_message_size: u64,
    /// Free text for operators.
    pub description: String,
}

impl NewDomain {
    /// An active domain without limits.
    pub fn new(domain: Domain) -> NewDomain {
        NewDomain {
            domain,
            status: DomainStatus::Active,
            expires: None,
            max_users: 0,
            quota_bytes: 0,
            default_user_quota: 0,
            max_lists: 0,
            max_message_size: 0,
            description: String::new(),
        }
    }
}

/// A hosted domain as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainInfo {
    /// The domain.
    pub domain: Domain,
    /// Status as set by an administrator (see [`DomainInfo::effective_status`]).
    pub status: DomainStatus,
    /// Unix time after which the domain reads as expired.
    pub expires: Option<i64>,
    /// Most users (0 = unlimited).
    pub max_users: u64,
    /// Total storage allocatable to users in bytes (0 = unlimited).
    pub quota_bytes: u64,
    /// Quota of a new user created without one (0 = unlimited).
    pub default_user_quota: u64,
    /// Most mailing lists (0 = unlimited).
    pub max_lists: u64,
    /// Largest message accepted (0 = the server limit).
    pub max_message_size: u64,
    /// Free text for operators.
    pub description: String,
    /// Unix time of creation.
    pub created: i64,
}

impl DomainInfo {
    /// The status at `now`: a past expiry reads as `Expired`.
    pub fn effective_status(&self, now: i64) -> DomainStatus {
        match self.status {
            DomainStatus::Active if self.expires.is_some_and(|e| e <= now) => DomainStatus::Expired,
            s => s,
        }
    }
}

/// Changes to a domain; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainUpdate {
    /// New status.
    pub status: Option<DomainStatus>,
    /// New expiry (`Some(None)` clears it).
    pub expires: Option<Option<i64>>,
    /// New user limit.
    pub max_users: Option<u64>,
    /// New total quota.
    pub quota_bytes: Option<u64>,
    /// New default user quota.
    pub default_user_quota: Option<u64>,
    /// New list limit.
    pub max_lists: Option<u64>,
    /// New message size limit.
    pub max_message_size: Option<u64>,
    /// New description.
    pub description: Option<String>,
}

/// What a domain holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainStats {
    /// Number of users.
    pub users: u64,
    /// Number of address aliases.
    pub aliases: u64,
    /// Number of mailing lists.
    pub lists: u64,
    /// Number of departments.
    pub departments: u64,
    /// Sum of the users' byte quotas.
    pub allocated_quota: u64,
    /// What the users store.
    pub usage: QuotaUsage,
}

/// A new user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// The primary address; its domain must be hosted (not an alias domain).
    pub address: Address,
    /// The initial password (stored only as an argon2id hash and SCRAM verifiers).
    pub password: String,
    /// Display name.
    pub display_name: String,
    /// Byte quota; `None` takes the domain's default user quota. 0 = unlimited.
    pub quota_bytes: Option<u64>,
    /// Most stored messages (0 = unlimited).
    pub max_messages: u64,
    /// Department path within the domain (must exist).
    pub department: Option<String>,
    /// Protocols the user may use.
    pub protocols: Vec<Protocol>,
}

impl NewUser {
    /// A user with every protocol, the domain's default quota and no department.
    pub fn new(address: Address, password: impl Into<String>) -> NewUser {
        NewUser {
            address,
            password: password.into(),
            display_name: String::new(),
            quota_bytes: None,
            max_messages: 0,
            department: None,
            protocols: Protocol::ALL.to_vec(),
        }
    }
}

/// A user as the administration API shows it (never the password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    /// The primary address.
    pub address: Address,
    /// Display name.
    pub display_name: String,
    /// Limits.
    pub quota: Quota,
    /// Current usage.
    pub usage: QuotaUsage,
    /// Allowed protocols.
    pub protocols: Vec<Protocol>,
    /// Enabled or frozen (the account's own status, not the domain's).
    pub status: AccountStatus,
    /// Department path.
    pub department: Option<String>,
    /// Administrative roles.
    pub roles: Vec<AdminRole>,
    /// Unix time of creation.
    pub created: i64,
    /// True when a legacy CRAM-MD5/APOP secret is set.
    pub has_legacy_secret: bool,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUpdate {
    /// New display name.
    pub display_name: Option<String>,
    /// New byte quota (0 = unlimited).
    pub quota_bytes: Option<u64>,
    /// New message limit (0 = unlimited).
    pub max_messages: Option<u64>,
    /// New protocols.
    pub protocols: Option<Vec<Protocol>>,
    /// New department (`Some(None)` clears it).
    pub department: Option<Option<String>>,
    /// New status.
    pub status: Option<AccountStatus>,
}

/// An address alias.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AliasInfo {
    /// The alias address.
    pub address: Address,
    /// Where its mail goes.
    pub targets: Vec<Address>,
}

/// A new department.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewDepartment {
    /// The name (no `/`).
    pub name: String,
    /// The parent's path, for a sub-department.
    pub parent: Option<String>,
    /// Display order among siblings (ascending).
    pub order: i64,
    /// The department leader, a user of the domain.
    pub leader: Option<Address>,
}

/// A department.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartmentInfo {
    /// The domain.
    pub domain: Domain,
    /// The full path, for example `Sales/North`.
    pub path: String,
    /// The last path component.
    pub name: String,
    /// The parent's path.
    pub parent: Option<String>,
    /// Display order among siblings.
    pub order: i64,
    /// Leader.
    pub leader: Option<Address>,
}

/// Changes to a department; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepartmentUpdate {
    /// New display order.
    pub order: Option<i64>,
    /// New leader (`Some(None)` clears it).
    pub leader: Option<Option<Address>>,
    /// New parent (`Some(None)` moves it to the top level); the subtree,
    /// users and roles follow as in [`Store::move_department`].
    pub parent: Option<Option<String>>,
    /// New name (the last path component).
    pub name: Option<String>,
}

// ---------------------------------------------------------------------------
// Stored records
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserRec {
    pub(crate) address: Address,
    pub(crate) display_name: String,
    pub(crate) password_hash: String,
    pub(crate) scram: String,
    pub(crate) legacy_secret: Option<String>,
    pub(crate) quota: Quota,
    pub(crate) protocols: Vec<Protocol>,
    pub(crate) status: AccountStatus,
    pub(crate) department: Option<String>,
    pub(crate) created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AliasRec {
    address: Address,
    targets: Vec<Address>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ListRec {
    address: Address,
    name: String,
    policy: ListPolicy,
    members: Vec<ListMember>,
    created: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeptRec {
    name: String,
    parent: Option<String>,
    order: i64,
    leader: Option<Address>,
}

/// `(domain, lower-cased local part)`.
fn akey(a: &Address) -> (String, String) {
    (
        a.domain().as_str().to_string(),
        a.local_part().to_lowercase(),
    )
}

// ---------------------------------------------------------------------------
// Password hashing
// ---------------------------------------------------------------------------

fn hash_password(password: &str) -> Result<String, AdminError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AdminError::Invalid(format!("cannot hash password: {e}")))
}

/// Argon2 working memory kept for reuse (at most this many buffers).
const MAX_POOLED_MEMORY: usize = 4;

/// Runs `f` over `count` argon2 blocks taken from a small pool. Argon2's
/// own allocation (19 MiB per verification with the default parameters)
/// freed and re-made by many blocking threads fragments the allocator's
/// heaps: 50 concurrent POP3 logins grew the server past 900 MiB. Reusing
/// a few buffers keeps that memory fixed.
fn with_argon2_memory<R>(count: usize, f: impl FnOnce(&mut [argon2::Block]) -> R) -> R {
    static POOL: OnceLock<std::sync::Mutex<Vec<Vec<argon2::Block>>>> = OnceLock::new();
    let pool = POOL.get_or_init(Default::default);
    let mut blocks = pool
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .unwrap_or_default();
    blocks.resize(count, argon2::Block::default());
    let result = f(&mut blocks[..count]);
    let mut free = pool.lock().unwrap_or_else(|e| e.into_inner());
    if free.len() < MAX_POOLED_MEMORY {
        free.push(blocks);
    }
    result
}

/// Checks `password` against a PHC argon2 hash (any algorithm, version and
/// parameters the hash names), with pooled working memory. The comparison
/// of the outputs is constant-time.
fn verify_hash(hash: &str, password: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    let (Some(expected), Some(salt)) = (parsed.hash, parsed.salt) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let count = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let computed = with_argon2_memory(count, |blocks| {
        argon
            .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, blocks)
            .is_ok()
    });
    computed && argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

/// A hash to verify against when the user does not exist, so that unknown
/// users take as long as wrong passwords.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("umail-dummy-password").unwrap_or_default())
}

fn validate_password(password: &str) -> Result<(), AdminError> {
    if password.is_empty() {
        return Err(AdminError::Invalid("the password is empty".into()));
    }
    if password.len() > MAX_PASSWORD_LEN {
        return Err(AdminError::Invalid("the password is too long".into()));
    }
    if password.chars().any(|c| c.is_control()) {
        return Err(AdminError::Invalid(
            "the password contains control characters".into(),
        ));
    }
    Ok(())
}

fn validate_text(what: &str, s: &str) -> Result<(), AdminError> {
    if s.chars().count() > MAX_NAME_LEN {
        return Err(AdminError::Invalid(format!("{what} is too long")));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(AdminError::Invalid(format!(
            "{what} contains control characters"
        )));
    }
    Ok(())
}

/// Hashes a password off the async executor: argon2id PHC string and SCRAM
/// storage form.
///
/// Argon2 with the default parameters needs 19 MiB and a core for each
/// computation, so a burst of logins (50 POP3 clients at once, or an
/// attacker's unauthenticated attempts) would otherwise cost 19 MiB each
/// concurrently; at most [`hashing_permit`]'s bound run at once.
async fn hash_credentials(password: String) -> Result<(String, String), AdminError> {
    validate_password(&password)?;
    let _permit = hashing_permit().await;
    tokio::task::spawn_blocking(move || {
        let hash = hash_password(&password)?;
        let scram = ScramCredentials::generate(&password).to_storage();
        Ok((hash, scram))
    })
    .await
    .map_err(|e| AdminError::Storage(format!("hashing task failed: {e}")))?
}

/// Waits for one of the process-wide argon2 slots (as many as CPUs, at
/// least 2): bounds the memory of concurrent password hashing.
async fn hashing_permit() -> Option<tokio::sync::SemaphorePermit<'static>> {
    static SLOTS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(n.max(2))
    });
    // The semaphore is never closed; `None` would only mean "unbounded".
    slots.acquire().await.ok()
}

// ---------------------------------------------------------------------------
// Read helpers shared by the read and write paths
// ---------------------------------------------------------------------------

fn get_domain(tx: Tx<'_>, domain: &str) -> Result<Option<DomainInfo>, DbErr> {
    tx.get_json(DOMAINS, domain)
}

fn get_domain_alias(tx: Tx<'_>, domain: &str) -> Result<Option<String>, DbErr> {
    tx.get_with(DOMAIN_ALIASES, domain, |v| Ok(v.to_string()))
}

/// Applies a domain alias to an address.
fn canonical(tx: Tx<'_>, address: &Address) -> Result<Address, DbErr> {
    match get_domain_alias(tx, address.domain().as_str())? {
        Some(target) => match Domain::parse(&target) {
            Ok(d) => Ok(address.with_domain(d)),
            Err(_) => Ok(address.clone()),
        },
        None => Ok(address.clone()),
    }
}

pub(crate) fn get_user(tx: Tx<'_>, domain: &str, local: &str) -> Result<Option<UserRec>, DbErr> {
    tx.get_json(USERS, (domain, local))
}

fn get_user_by(tx: Tx<'_>, a: &Address) -> Result<Option<UserRec>, DbErr> {
    let (d, l) = akey(a);
    get_user(tx, &d, &l)
}

fn get_alias(tx: Tx<'_>, a: &Address) -> Result<Option<AliasRec>, DbErr> {
    let (d, l) = akey(a);
    tx.get_json(ALIASES, (d.as_str(), l.as_str()))
}

fn get_list(tx: Tx<'_>, a: &Address) -> Result<Option<ListRec>, DbErr> {
    let (d, l) = akey(a);
    tx.get_json(LISTS, (d.as_str(), l.as_str()))
}

fn roles_of(tx: Tx<'_>, account: &str) -> Result<Vec<AdminRole>, DbErr> {
    Ok(tx.get_json(ADMINS, account)?.unwrap_or_default())
}

fn usage_of(tx: Tx<'_>, account: &str) -> Result<QuotaUsage, DbErr> {
    Ok(tx
        .get_json::<_, AccountRec>(ACCOUNTS, account)?
        .map(|a| QuotaUsage {
            bytes: a.bytes,
            messages: a.messages,
        })
        .unwrap_or_default())
}

/// The effective status of the user's domain (Active when not hosted).
fn domain_status(tx: Tx<'_>, domain: &str) -> Result<Option<DomainStatus>, DbErr> {
    Ok(get_domain(tx, domain)?.map(|d| d.effective_status(now())))
}

/// The principal of a user record; `status` is the effective status:
/// frozen when the account is frozen or its domain is not active.
fn principal_of(tx: Tx<'_>, rec: &UserRec) -> Result<Principal, DbErr> {
    let account = rec.address.lookup_key();
    let domain_ok = domain_status(tx, rec.address.domain().as_str())? == Some(DomainStatus::Active);
    Ok(Principal {
        address: rec.address.clone(),
        display_name: rec.display_name.clone(),
        quota: rec.quota,
        protocols: rec.protocols.clone(),
        status: if domain_ok {
            rec.status
        } else {
            AccountStatus::Frozen
        },
        department: rec.department.clone(),
        roles: roles_of(tx, &account)?,
    })
}

fn user_info(tx: Tx<'_>, rec: &UserRec) -> Result<UserInfo, DbErr> {
    let account = rec.address.lookup_key();
    Ok(UserInfo {
        address: rec.address.clone(),
        display_name: rec.display_name.clone(),
        quota: rec.quota,
        usage: usage_of(tx, &account)?,
        protocols: rec.protocols.clone(),
        status: rec.status,
        department: rec.department.clone(),
        roles: roles_of(tx, &account)?,
        created: rec.created,
        has_legacy_secret: rec.legacy_secret.is_some(),
    })
}

fn users_of(tx: Tx<'_>, domain: &str) -> Result<Vec<UserRec>, DbErr> {
    Ok(tx
        .prefix_json::<UserRec>(USERS, domain)?
        .into_iter()
        .map(|(_, u)| u)
        .collect())
}

fn everyone_list(tx: Tx<'_>, domain: &Domain) -> Result<MailingList, DbErr> {
    let members = users_of(tx, domain.as_str())?
        .into_iter()
        .filter(|u| u.status == AccountStatus::Enabled)
        .map(|u| ListMember {
            address: u.address,
            can_send: true,
            can_receive: true,
        })
        .collect();
    let address = Address::new(EVERYONE, domain.clone())
        .map_err(|e| DbErr(format!("everyone address: {e}")))?;
    Ok(MailingList {
        address,
        name: "Everyone".into(),
        policy: ListPolicy::Private,
        members,
    })
}

fn to_list(rec: ListRec) -> MailingList {
    MailingList {
        address: rec.address,
        name: rec.name,
        policy: rec.policy,
        members: rec.members,
    }
}

/// Resolution of an address (the `Directory::resolve` semantics).
fn resolve_in(tx: Tx<'_>, address: &Address) -> Result<Resolution, DbErr> {
    let address = canonical(tx, address)?;
    let Some(domain) = get_domain(tx, address.domain().as_str())? else {
        return Ok(Resolution::NotLocal);
    };
    match domain.effective_status(now()) {
        DomainStatus::Active => {}
        DomainStatus::Disabled => {
            return Ok(Resolution::Unavailable(Unavailability::DisabledDomain));
        }
        DomainStatus::Expired => {
            return Ok(Resolution::Unavailable(Unavailability::ExpiredDomain));
        }
    }
    if let Some(user) = get_user_by(tx, &address)? {
        if user.status == AccountStatus::Frozen {
            return Ok(Resolution::Unavailable(Unavailability::FrozenAccount));
        }
        return Ok(Resolution::Local(principal_of(tx, &user)?));
    }
    if let Some(alias) = get_alias(tx, &address)? {
        return Ok(Resolution::Alias(alias.targets));
    }
    if let Some(list) = get_list(tx, &address)? {
        return Ok(Resolution::List(to_list(list)));
    }
    if address.local_part().eq_ignore_ascii_case(EVERYONE) {
        return Ok(Resolution::List(everyone_list(tx, address.domain())?));
    }
    Ok(Resolution::Unknown)
}

/// True when an address is taken by a user, alias or list.
fn address_taken(tx: Tx<'_>, a: &Address) -> Result<Option<&'static str>, DbErr> {
    if get_user_by(tx, a)?.is_some() {
        return Ok(Some("user"));
    }
    if get_alias(tx, a)?.is_some() {
        return Ok(Some("alias"));
    }
    if get_list(tx, a)?.is_some() {
        return Ok(Some("mailing list"));
    }
    Ok(None)
}

/// The hosted (non-alias) domain record of an address, or an error.
fn hosted_domain(tx: Tx<'_>, domain: &Domain) -> R<DomainInfo> {
    match get_domain(tx, domain.as_str())? {
        Some(d) => Ok(d),
        None => {
            if get_domain_alias(tx, domain.as_str())?.is_some() {
                reject(AdminError::Invalid(format!(
                    "{domain} is a domain alias; use its target domain"
                )))
            } else {
                reject(AdminError::NotFound(format!("domain {domain}")))
            }
        }
    }
}

fn department_exists(tx: Tx<'_>, domain: &str, path: &str) -> Result<bool, DbErr> {
    tx.exists(DEPARTMENTS, (domain, path))
}

fn validate_department_ref(tx: Tx<'_>, domain: &Domain, dept: &Option<String>) -> R<()> {
    if let Some(path) = dept
        && !department_exists(tx, domain.as_str(), path)?
    {
        return reject(AdminError::Invalid(format!(
            "no department {path} in {domain}"
        )));
    }
    Ok(())
}

/// Sum of the byte quotas of a domain's users, except `skip`.
fn allocated_quota(users: &[UserRec], skip: Option<&str>) -> u64 {
    users
        .iter()
        .filter(|u| Some(u.address.local_part().to_lowercase().as_str()) != skip)
        .map(|u| u.quota.bytes)
        .fold(0u64, u64::saturating_add)
}

/// Checks a user quota against the domain's total quota.
fn check_domain_quota(
    domain: &DomainInfo,
    users: &[UserRec],
    skip: Option<&str>,
    bytes: u64,
) -> R<()> {
    if domain.quota_bytes == 0 {
        return Ok(());
    }
    if bytes == 0 {
        return reject(AdminError::Invalid(format!(
            "{} has a total quota; a user quota must be set",
            domain.domain
        )));
    }
    let total = allocated_quota(users, skip).saturating_add(bytes);
    if total > domain.quota_bytes {
        return reject(AdminError::LimitReached(format!(
            "the users' quotas would add up to {total} bytes, more than the {} bytes of {}",
            domain.quota_bytes, domain.domain
        )));
    }
    Ok(())
}

fn check_domain_name(domain: &Domain) -> Result<(), AdminError> {
    if domain.is_literal() {
        return Err(AdminError::Invalid(
            "an address literal cannot be hosted".into(),
        ));
    }
    // A single-label name is only hosted as `localhost` (the first domain of a
    // development server with no FQDN).
    if !domain.as_str().contains('.') && domain.as_str() != "localhost" {
        return Err(AdminError::Invalid(format!(
            "{domain} is not a fully qualified domain"
        )));
    }
    Ok(())
}

fn validate_dept_name(name: &str) -> Result<(), AdminError> {
    validate_text("the department name", name)?;
    if name.trim().is_empty() || name.contains('/') || name.trim() != name {
        return Err(AdminError::Invalid(format!(
            "bad department name {name:?} (empty, `/` or surrounding spaces)"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Write helpers
// ---------------------------------------------------------------------------

fn put_user(ctx: &mut Ctx<'_>, rec: &UserRec) -> Result<(), DbErr> {
    let (d, l) = akey(&rec.address);
    ctx.put_json(USERS, (d.as_str(), l.as_str()), rec)
}

/// Deletes a user, its mail, roles, memberships and leaderships.
fn delete_user(ctx: &mut Ctx<'_>, rec: &UserRec) -> Result<(), DbErr> {
    let account = rec.address.lookup_key();
    let (d, l) = akey(&rec.address);
    purge_account(ctx, &account)?;
    crate::collection::purge_user(ctx, &account)?;
    ctx.del(ADMINS, account.as_str())?;
    ctx.del(USERS, (d.as_str(), l.as_str()))?;
    // Alias targets and list memberships pointing at the user.
    let mut aliases = Vec::new();
    ctx.r().scan_all(ALIASES, |_, v| {
        let a: AliasRec = crate::db::dec(v)?;
        if a.targets.iter().any(|t| t.lookup_key() == account) {
            aliases.push(a);
        }
        Ok(true)
    })?;
    for mut a in aliases {
        a.targets.retain(|t| t.lookup_key() != account);
        let (ad, al) = akey(&a.address);
        if a.targets.is_empty() {
            ctx.del(ALIASES, (ad.as_str(), al.as_str()))?;
        } else {
            ctx.put_json(ALIASES, (ad.as_str(), al.as_str()), &a)?;
        }
    }
    let mut lists = Vec::new();
    ctx.r().scan_all(LISTS, |_, v| {
        let list: ListRec = crate::db::dec(v)?;
        if list
            .members
            .iter()
            .any(|m| m.address.lookup_key() == account)
        {
            lists.push(list);
        }
        Ok(true)
    })?;
    for mut list in lists {
        list.members.retain(|m| m.address.lookup_key() != account);
        let (ld, ll) = akey(&list.address);
        ctx.put_json(LISTS, (ld.as_str(), ll.as_str()), &list)?;
    }
    for (path, mut dept) in ctx.r().prefix_json::<DeptRec>(DEPARTMENTS, &d)? {
        if dept
            .leader
            .as_ref()
            .is_some_and(|x| x.lookup_key() == account)
        {
            dept.leader = None;
            ctx.put_json(DEPARTMENTS, (d.as_str(), path.as_str()), &dept)?;
        }
    }
    Ok(())
}

fn domain_of_role(role: &AdminRole) -> Option<&Domain> {
    match role {
        AdminRole::System => None,
        AdminRole::Domain { domain } | AdminRole::Department { domain, .. } => Some(domain),
    }
}

// ---------------------------------------------------------------------------
// The administration API
// ---------------------------------------------------------------------------

fn storage<T>(r: Result<T, DbErr>) -> Result<T, AdminError> {
    r.map_err(AdminError::storage)
}

impl Store {
    fn admin_read<T>(&self, f: impl FnOnce(Tx<'_>) -> Result<T, DbErr>) -> Result<T, AdminError> {
        let tx = storage(self.read())?;
        storage(f(Tx::Read(&tx)))
    }

    async fn admin_write<T, F>(&self, f: F) -> Result<T, AdminError>
    where
        T: Send + 'static,
        F: FnMut(&mut Ctx<'_>) -> R<T> + Send + 'static,
    {
        self.write(AdminError::storage, f).await
    }

    // ----- domains -----

    /// Hosts a new domain. Fails with `AlreadyExists` when it is hosted or
    /// is a domain alias.
    pub async fn add_domain(&self, spec: NewDomain) -> Result<DomainInfo, AdminError> {
        check_domain_name(&spec.domain)?;
        validate_text("the description", &spec.description)?;
        self.admin_write(move |ctx| {
            let name = spec.domain.as_str();
            if get_domain(ctx.r(), name)?.is_some() {
                return reject(AdminError::AlreadyExists(format!("domain {name}")));
            }
            if get_domain_alias(ctx.r(), name)?.is_some() {
                return reject(AdminError::AlreadyExists(format!(
                    "{name} is a domain alias"
                )));
            }
            let info = DomainInfo {
                domain: spec.domain.clone(),
                status: spec.status,
                expires: spec.expires,
                max_users: spec.max_users,
                quota_bytes: spec.quota_bytes,
                default_user_quota: spec.default_user_quota,
                max_lists: spec.max_lists,
                max_message_size: spec.max_message_size,
                description: spec.description.clone(),
                created: now(),
            };
            ctx.put_json(DOMAINS, name, &info)?;
            tracing::info!(target: "admin", domain = name, "domain added");
            Ok(info)
        })
        .await
    }

    /// A hosted domain.
    pub fn get_domain(&self, domain: &Domain) -> Result<Option<DomainInfo>, AdminError> {
        self.admin_read(|tx| get_domain(tx, domain.as_str()))
    }

    /// Every hosted domain, by name.
    pub fn list_domains(&self) -> Result<Vec<DomainInfo>, AdminError> {
        self.admin_read(|tx| {
            let mut out = Vec::new();
            tx.scan_all(DOMAINS, |_, v| {
                out.push(crate::db::dec(v)?);
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Counts of what a domain holds.
    pub fn domain_stats(&self, domain: &Domain) -> Result<DomainStats, AdminError> {
        let d = domain.as_str();
        let tx = storage(self.read())?;
        let tx = Tx::Read(&tx);
        if storage(get_domain(tx, d))?.is_none() {
            return Err(AdminError::NotFound(format!("domain {domain}")));
        }
        storage((|| {
            let users = users_of(tx, d)?;
            let mut usage = QuotaUsage::default();
            for u in &users {
                let x = usage_of(tx, &u.address.lookup_key())?;
                usage.bytes += x.bytes;
                usage.messages += x.messages;
            }
            Ok(DomainStats {
                users: users.len() as u64,
                aliases: tx.prefix_json::<AliasRec>(ALIASES, d)?.len() as u64,
                lists: tx.prefix_json::<ListRec>(LISTS, d)?.len() as u64,
                departments: tx.prefix_json::<DeptRec>(DEPARTMENTS, d)?.len() as u64,
                allocated_quota: allocated_quota(&users, None),
                usage,
            })
        })())
    }

    /// Changes a domain. Lowering a limit below what the domain already
    /// holds fails with `LimitReached`.
    pub async fn update_domain(
        &self,
        domain: &Domain,
        update: DomainUpdate,
    ) -> Result<DomainInfo, AdminError> {
        if let Some(d) = &update.description {
            validate_text("the description", d)?;
        }
        let domain = domain.clone();
        self.admin_write(move |ctx| {
            let Some(mut info) = get_domain(ctx.r(), domain.as_str())? else {
                return reject(AdminError::NotFound(format!("domain {domain}")));
            };
            let u = update.clone();
            if let Some(v) = u.status {
                info.status = v;
            }
            if let Some(v) = u.expires {
                info.expires = v;
            }
            if let Some(v) = u.max_users {
                info.max_users = v;
            }
            if let Some(v) = u.quota_bytes {
                info.quota_bytes = v;
            }
            if let Some(v) = u.default_user_quota {
                info.default_user_quota = v;
            }
            if let Some(v) = u.max_lists {
                info.max_lists = v;
            }
            if let Some(v) = u.max_message_size {
                info.max_message_size = v;
            }
            if let Some(v) = u.description {
                info.description = v;
            }
            let users = users_of(ctx.r(), domain.as_str())?;
            if info.max_users != 0 && users.len() as u64 > info.max_users {
                return reject(AdminError::LimitReached(format!(
                    "{domain} already has {} users",
                    users.len()
                )));
            }
            if info.quota_bytes != 0 {
                if users.iter().any(|u| u.quota.bytes == 0) {
                    return reject(AdminError::Invalid(format!(
                        "{domain} has users with unlimited quota; give them a quota first"
                    )));
                }
                let allocated = allocated_quota(&users, None);
                if allocated > info.quota_bytes {
                    return reject(AdminError::LimitReached(format!(
                        "the users of {domain} already have {allocated} bytes of quota"
                    )));
                }
            }
            let lists = ctx
                .r()
                .prefix_json::<ListRec>(LISTS, domain.as_str())?
                .len() as u64;
            if info.max_lists != 0 && lists > info.max_lists {
                return reject(AdminError::LimitReached(format!(
                    "{domain} already has {lists} mailing lists"
                )));
            }
            ctx.put_json(DOMAINS, domain.as_str(), &info)?;
            tracing::info!(target: "admin", domain = domain.as_str(), "domain updated");
            Ok(info)
        })
        .await
    }

    /// Removes a domain with its aliases, lists, departments, domain aliases
    /// pointing to it and roles scoped to it. While it has users this fails
    /// with `InUse` unless `force` is set, which deletes the users and all
    /// their mail too.
    pub async fn remove_domain(&self, domain: &Domain, force: bool) -> Result<(), AdminError> {
        let domain = domain.clone();
        self.admin_write(move |ctx| {
            let d = domain.as_str();
            if get_domain(ctx.r(), d)?.is_none() {
                return reject(AdminError::NotFound(format!("domain {domain}")));
            }
            let users = users_of(ctx.r(), d)?;
            if !users.is_empty() && !force {
                return reject(AdminError::InUse(format!(
                    "{domain} has {} users (use force to delete them)",
                    users.len()
                )));
            }
            for u in &users {
                delete_user(ctx, u)?;
            }
            for table in [ALIASES, LISTS, DEPARTMENTS] {
                let keys: Vec<String> = ctx
                    .r()
                    .prefix_json::<serde_json::Value>(table, d)?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                for k in keys {
                    ctx.del(table, (d, k.as_str()))?;
                }
            }
            let mut aliases = Vec::new();
            ctx.r().scan_all(DOMAIN_ALIASES, |k, v| {
                if v == d {
                    aliases.push(k.to_string());
                }
                Ok(true)
            })?;
            for a in aliases {
                ctx.del(DOMAIN_ALIASES, a.as_str())?;
            }
            let mut roles = Vec::new();
            ctx.r().scan_all(ADMINS, |k, v| {
                let r: Vec<AdminRole> = crate::db::dec(v)?;
                if r.iter().any(|x| domain_of_role(x) == Some(&domain)) {
                    roles.push((k.to_string(), r));
                }
                Ok(true)
            })?;
            for (account, mut r) in roles {
                r.retain(|x| domain_of_role(x) != Some(&domain));
                if r.is_empty() {
                    ctx.del(ADMINS, account.as_str())?;
                } else {
                    ctx.put_json(ADMINS, account.as_str(), &r)?;
                }
            }
            ctx.del(DOMAINS, d)?;
            crate::collection::purge_domain(ctx, d)?;
            tracing::info!(target: "admin", domain = d, users = users.len(), "domain removed");
            Ok(())
        })
        .await
    }

    // ----- domain aliases -----

    /// Makes `alias` an alias of the hosted domain `target`: mail for
    /// `x@alias` goes to `x@target`.
    pub async fn add_domain_alias(
        &self,
        alias: &Domain,
        target: &Domain,
    ) -> Result<(), AdminError> {
        check_domain_name(alias)?;
        if alias == target {
            return Err(AdminError::Invalid("a domain cannot alias itself".into()));
        }
        let (alias, target) = (alias.clone(), target.clone());
        self.admin_write(move |ctx| {
            if get_domain(ctx.r(), alias.as_str())?.is_some() {
                return reject(AdminError::AlreadyExists(format!(
                    "{alias} is a hosted domain"
                )));
            }
            if get_domain_alias(ctx.r(), alias.as_str())?.is_some() {
                return reject(AdminError::AlreadyExists(format!("domain alias {alias}")));
            }
            hosted_domain(ctx.r(), &target)?;
            ctx.put(DOMAIN_ALIASES, alias.as_str(), target.as_str())?;
            tracing::info!(target: "admin", alias = alias.as_str(), target = target.as_str(), "domain alias added");
            Ok(())
        })
        .await
    }

    /// Every domain alias as `(alias, target)`.
    pub fn list_domain_aliases(&self) -> Result<Vec<(Domain, Domain)>, AdminError> {
        self.admin_read(|tx| {
            let mut out = Vec::new();
            tx.scan_all(DOMAIN_ALIASES, |k, v| {
                if let (Ok(a), Ok(t)) = (Domain::parse(k), Domain::parse(v)) {
                    out.push((a, t));
                }
                Ok(true)
            })?;
            Ok(out)
        })
    }

    /// Removes a domain alias.
    pub async fn remove_domain_alias(&self, alias: &Domain) -> Result<(), AdminError> {
        let alias = alias.clone();
        self.admin_write(move |ctx| {
            if get_domain_alias(ctx.r(), alias.as_str())?.is_none() {
                return reject(AdminError::NotFound(format!("domain alias {alias}")));
            }
            ctx.del(DOMAIN_ALIASES, alias.as_str())?;
            Ok(())
        })
        .await
    }

    // ----- users -----

    /// Creates a user: stores an argon2id hash and SCRAM-SHA-256 verifiers
    /// of the password. The domain must be hosted; its user limit and total
    /// quota are enforced; the address must not be taken by a user, alias
    /// or list.
    pub async fn add_user(&self, user: NewUser) -> Result<UserInfo, AdminError> {
        validate_text("the display name", &user.display_name)?;
        if user.address.local_part().eq_ignore_ascii_case("postmaster") {
            // Allowed: postmaster may be a real user. (RFC 5321 §4.5.1 only
            // requires that it exists, by alias or account.)
        }
        let (hash, scram) = hash_credentials(user.password.clone()).await?;
        self.admin_write(move |ctx| {
            let domain = hosted_domain(ctx.r(), user.address.domain())?;
            if let Some(kind) = address_taken(ctx.r(), &user.address)? {
                return reject(AdminError::AlreadyExists(format!(
                    "{} is a {kind}",
                    user.address
                )));
            }
            let users = users_of(ctx.r(), domain.domain.as_str())?;
            if domain.max_users != 0 && users.len() as u64 >= domain.max_users {
                return reject(AdminError::LimitReached(format!(
                    "{} may have at most {} users",
                    domain.domain, domain.max_users
                )));
            }
            let bytes = user.quota_bytes.unwrap_or(domain.default_user_quota);
            check_domain_quota(&domain, &users, None, bytes)?;
            validate_department_ref(ctx.r(), &domain.domain, &user.department)?;
            let mut protocols = user.protocols.clone();
            protocols.sort();
            protocols.dedup();
            let rec = UserRec {
                address: user.address.clone(),
                display_name: user.display_name.clone(),
                password_hash: hash.clone(),
                scram: scram.clone(),
                legacy_secret: None,
                quota: Quota {
                    bytes,
                    messages: user.max_messages,
                },
                protocols,
                status: AccountStatus::Enabled,
                department: user.department.clone(),
                created: now(),
            };
            put_user(ctx, &rec)?;
            tracing::info!(target: "admin", user = %rec.address, "user added");
            Ok(user_info(ctx.r(), &rec)?)
        })
        .await
    }

    /// One user (domain aliases are not applied: give the primary address).
    pub fn get_user(&self, address: &Address) -> Result<Option<UserInfo>, AdminError> {
        self.admin_read(|tx| match get_user_by(tx, address)? {
            Some(rec) => Ok(Some(user_info(tx, &rec)?)),
            None => Ok(None),
        })
    }

    /// Users of one domain, or of every domain, by address.
    pub fn list_users(&self, domain: Option<&Domain>) -> Result<Vec<UserInfo>, AdminError> {
        self.admin_read(|tx| {
            let recs = match domain {
                Some(d) => users_of(tx, d.as_str())?,
                None => {
                    let mut out = Vec::new();
                    tx.scan_all(USERS, |_, v| {
                        out.push(crate::db::dec::<UserRec>(v)?);
                        Ok(true)
                    })?;
                    out
                }
            };
            recs.iter().map(|r| user_info(tx, r)).collect()
        })
    }

    /// Changes a user's settings.
    pub async fn update_user(
        &self,
        address: &Address,
        update: UserUpdate,
    ) -> Result<UserInfo, AdminError> {
        if let Some(n) = &update.display_name {
            validate_text("the display name", n)?;
        }
        let address = address.clone();
        self.admin_write(move |ctx| {
            let Some(mut rec) = get_user_by(ctx.r(), &address)? else {
                return reject(AdminError::NotFound(format!("user {address}")));
            };
            let u = update.clone();
            if let Some(bytes) = u.quota_bytes {
                let domain = hosted_domain(ctx.r(), address.domain())?;
                let users = users_of(ctx.r(), domain.domain.as_str())?;
                let local = address.local_part().to_lowercase();
                check_domain_quota(&domain, &users, Some(&local), bytes)?;
                rec.quota.bytes = bytes;
            }
            if let Some(dept) = &u.department {
                validate_department_ref(ctx.r(), address.domain(), dept)?;
                rec.department = dept.clone();
            }
            if let Some(v) = u.display_name {
                rec.display_name = v;
            }
            if let Some(v) = u.max_messages {
                rec.quota.messages = v;
            }
            if let Some(mut v) = u.protocols {
                v.sort();
                v.dedup();
                rec.protocols = v;
            }
            if let Some(v) = u.status {
                rec.status = v;
            }
            put_user(ctx, &rec)?;
            tracing::info!(target: "admin", user = %rec.address, "user updated");
            Ok(user_info(ctx.r(), &rec)?)
        })
        .await
    }

    /// Replaces a user's password (argon2id hash and SCRAM verifiers).
    pub async fn set_password(&self, address: &Address, password: &str) -> Result<(), AdminError> {
        let (hash, scram) = hash_credentials(password.to_string()).await?;
        let address = address.clone();
        self.admin_write(move |ctx| {
            let Some(mut rec) = get_user_by(ctx.r(), &address)? else {
                return reject(AdminError::NotFound(format!("user {address}")));
            };
            rec.password_hash = hash.clone();
            rec.scram = scram.clone();
            put_user(ctx, &rec)?;
            tracing::info!(target: "admin", user = %rec.address, "password changed");
            Ok(())
        })
        .await
    }

    /// Sets or clears the legacy shared secret used by CRAM-MD5 and APOP.
    /// It is stored as given (those mechanisms need the plaintext), so only
    /// set one for accounts that really need the old mechanisms.
    pub async fn set_legacy_secret(
        &self,
        address: &Address,
        secret: Option<&str>,
    ) -> Result<(), AdminError> {
        if let Some(s) = secret {
            validate_password(s)?;
        }
        let secret = secret.map(str::to_string);
        let address = address.clone();
        self.admin_write(move |ctx| {
            let Some(mut rec) = get_user_by(ctx.r(), &address)? else {
                return reject(AdminError::NotFound(format!("user {address}")));
            };
            rec.legacy_secret = secret.clone();
            put_user(ctx, &rec)?;
            Ok(())
        })
        .await
    }

    /// Freezes an account: no login, no mail in or out; data is kept.
    pub async fn freeze_user(&self, address: &Address) -> Result<(), AdminError> {
        self.update_user(
            address,
            UserUpdate {
                status: Some(AccountStatus::Frozen),
                ..UserUpdate::default()
            },
        )
        .await
        .map(|_| ())
    }

    /// Unfreezes an account.
    pub async fn unfreeze_user(&self, address: &Address) -> Result<(), AdminError> {
        self.update_user(
            address,
            UserUpdate {
                status: Some(AccountStatus::Enabled),
                ..UserUpdate::default()
            },
        )
        .await
        .map(|_| ())
    }

    /// Deletes a user with all its mailboxes and messages, its roles, its
    /// list memberships and alias targets (an alias left without targets is
    /// removed) and department leaderships.
    pub async fn remove_user(&self, address: &Address) -> Result<(), AdminError> {
        let address = address.clone();
        self.admin_write(move |ctx| {
            let Some(rec) = get_user_by(ctx.r(), &address)? else {
                return reject(AdminError::NotFound(format!("user {address}")));
            };
            delete_user(ctx, &rec)?;
            tracing::info!(target: "admin", user = %rec.address, "user removed");
            Ok(())
        })
        .await
    }

    // ----- aliases -----

    /// Adds targets to an address alias, creating it when missing. The
    /// alias's domain must be hosted and the address must not be a user or
    /// list. Targets may be local or remote; an alias cannot target itself.
    pub async fn add_alias(
        &self,
        address: &Address,
        targets: &[Address],
    ) -> Result<AliasInfo, AdminError> {
        if targets.is_empty() {
            return Err(AdminError::Invalid("an alias needs a target".into()));
        }
        let key = address.lookup_key();
        if targets.iter().any(|t| t.lookup_key() == key) {
            return Err(AdminError::Invalid("an alias cannot target itself".into()));
        }
        let address = address.clone();
        let targets = targets.to_vec();
        self.admin_write(move |ctx| {
            hosted_domain(ctx.r(), address.domain())?;
            if get_user_by(ctx.r(), &address)?.is_some() {
                return reject(AdminError::AlreadyExists(format!("{address} is a user")));
            }
            if get_list(ctx.r(), &address)?.is_some() {
                return reject(AdminError::AlreadyExists(format!(
                    "{address} is a mailing list"
                )));
            }
            let mut rec = get_alias(ctx.r(), &address)?.unwrap_or(AliasRec {
                address: address.clone(),
                targets: Vec::new(),
            });
            // A set, not a scan per target: an alias of 20,000 targets
            // took minutes.
            let mut present: std::collections::HashSet<String> =
                rec.targets.iter().map(Address::lookup_key).collect();
            for t in &targets {
                if present.insert(t.lookup_key()) {
                    rec.targets.push(t.clone());
                }
            }
            let (d, l) = akey(&address);
            ctx.put_json(ALIASES, (d.as_str(), l.as_str()), &rec)?;
            tracing::info!(target: "admin", alias = %address, "alias updated");
            Ok(AliasInfo {
                address: rec.address,
                targets: rec.targets,
            })
        })
        .await
    }

    /// One alias.
    pub fn get_alias(&self, address: &Address) -> Result<Option<AliasInfo>, AdminError> {
        self.admin_read(|tx| {
            Ok(get_alias(tx, address)?.map(|a| AliasInfo {
                address: a.address,
                targets: a.targets,
            }))
        })
    }

    /// Aliases of one domain, or of all.
    pub fn list_aliases(&self, domain: Option<&Domain>) -> Result<Vec<AliasInfo>, AdminError> {
        self.admin_read(|tx| {
            let mut out = Vec::new();
            let mut push = |v: &[u8]| -> Result<(), DbErr> {
                let a: AliasRec = crate::db::dec(v)?;
                out.push(AliasInfo {
                    address: a.address,
                    targets: a.targets,
                });
                Ok(())
            };
            match domain {
                Some(d) => tx.scan(ALIASES, (d.as_str(), "").., |(k, _), v| {
                    if k != d.as_str() {
                        return Ok(false);
                    }
                    push(v)?;
                    Ok(true)
                })?,
                None => tx.scan_all(ALIASES, |_, v| {
                    push(v)?;
                    Ok(true)
                })?,
            }
            Ok(out)
        })
    }

    /// Removes one target of an alias (`Some`), or the whole alias (`None`).
    /// An alias left without targets is removed.
    pub async fn remove_alias(
        &self,
        address: &Address,
        target: Option<&Address>,
    ) -> Result<(), AdminError> {
        let address = address.clone();
        let target = target.cloned();
        self.admin_write(move |ctx| {
            let Some(mut rec) = get_alias(ctx.r(), &address)? else {
                return reject(AdminError::NotFound(format!("alias {address}")));
            };
            let (d, l) = akey(&address);
            if let Some(t) = &target {
                let before = rec.targets.len();
                rec.targets.retain(|x| x.lookup_key() != t.lookup_key());
                if rec.targets.len() == before {
                    return reject(AdminError::NotFound(format!(
                        "{t} is not a target of {address}"
                    )));
                }
            } else {
                rec.targets.clear();
            }
            if rec.targets.is_empty() {
                ctx.del(ALIASES, (d.as_str(), l.as_str()))?;
            } else {
                ctx.put_json(ALIASES, (d.as_str(), l.as_str()), &rec)?;
            }
            Ok(())
        })
        .await
    }

    // ----- mailing lists -----

    /// Creates a mailing list. The domain's list limit is enforced; the
    /// address must not be taken.
    pub async fn add_list(
        &self,
        address: &Address,
        name: &str,
        policy: ListPolicy,
    ) -> Result<MailingList, AdminError> {
        validate_text("the list name", name)?;
        let address = address.clone();
        let name = name.to_string();
        self.admin_write(move |ctx| {
            let domain = hosted_domain(ctx.r(), address.domain())?;
            if let Some(kind) = address_taken(ctx.r(), &address)? {
                return reject(AdminError::AlreadyExists(format!("{address} is a {kind}")));
            }
            let count = ctx
                .r()
                .prefix_json::<ListRec>(LISTS, domain.domain.as_str())?
                .len() as u64;
            if domain.max_lists != 0 && count >= domain.max_lists {
                return reject(AdminError::LimitReached(format!(
                    "{} may have at most {} mailing lists",
                    domain.domain, domain.max_lists
                )));
            }
            let rec = ListRec {
                address: address.clone(),
                name: name.clone(),
                policy,
                members: Vec::new(),
                created: now(),
            };
            let (d, l) = akey(&address);
            ctx.put_json(LISTS, (d.as_str(), l.as_str()), &rec)?;
            tracing::info!(target: "admin", list = %address, "list added");
            Ok(to_list(rec))
        })
        .await
    }

    /// Changes a list's name and/or policy.
    pub async fn update_list(
        &self,
        address: &Address,
        name: Option<&str>,
        policy: Option<ListPolicy>,
    ) -> Result<MailingList, AdminError> {
        if let Some(n) = name {
            validate_text("the list name", n)?;
        }
        let address = address.clone();
        let name = name.map(str::to_string);
        self.admin_write(move |ctx| {
            let Some(mut rec) = get_list(ctx.r(), &address)? else {
                return reject(AdminError::NotFound(format!("list {address}")));
            };
            if let Some(n) = &name {
                rec.name = n.clone();
            }
            if let Some(p) = policy {
                rec.policy = p;
            }
            let (d, l) = akey(&address);
            ctx.put_json(LISTS, (d.as_str(), l.as_str()), &rec)?;
            Ok(to_list(rec))
        })
        .await
    }

    /// Deletes a mailing list.
    pub async fn remove_list(&self, address: &Address) -> Result<(), AdminError> {
        let address = address.clone();
        self.admin_write(move |ctx| {
            let (d, l) = akey(&address);
            if !ctx.del(LISTS, (d.as_str(), l.as_str()))? {
                return reject(AdminError::NotFound(format!("list {address}")));
            }
            tracing::info!(target: "admin", list = %address, "list removed");
            Ok(())
        })
        .await
    }

    /// One list (stored lists only; `everyone@` is resolved, not stored).
    pub fn get_list(&self, address: &Address) -> Result<Option<MailingList>, AdminError> {
        self.admin_read(|tx| Ok(get_list(tx, address)?.map(to_list)))
    }

    /// The stored lists of one domain, or of all.
    pub fn list_lists(&self, domain: Option<&Domain>) -> Result<Vec<MailingList>, AdminError> {
        self.admin_read(|tx| {
            let recs: Vec<ListRec> = match domain {
                Some(d) => tx
                    .prefix_json(LISTS, d.as_str())?
                    .into_iter()
                    .map(|(_, v)| v)
                    .collect(),
                None => {
                    let mut out = Vec::new();
                    tx.scan_all(LISTS, |_, v| {
                        out.push(crate::db::dec(v)?);
                        Ok(true)
                    })?;
                    out
                }
            };
            Ok(recs.into_iter().map(to_list).collect())
        })
    }

    /// Adds a member to a list, or changes its permissions when present.
    pub async fn add_list_member(
        &self,
        list: &Address,
        member: ListMember,
    ) -> Result<(), AdminError> {
        if member.address.lookup_key() == list.lookup_key() {
            return Err(AdminError::Invalid("a list cannot contain itself".into()));
        }
        let list = list.clone();
        self.admin_write(move |ctx| {
            let Some(mut rec) = get_list(ctx.r(), &list)? else {
                return reject(AdminError::NotFound(format!("list {list}")));
            };
            let key = member.address.lookup_key();
            match rec
                .members
                .iter_mut()
                .find(|m| m.address.lookup_key() == key)
            {
                Some(m) => {
                    m.can_send = member.can_send;
                    m.can_receive = member.can_receive;
                }
                None => rec.members.push(member.clone()),
            }
            let (d, l) = akey(&list);
            ctx.put_json(LISTS, (d.as_str(), l.as_str()), &rec)?;
            Ok(())
        })
        .await
    }

    /// Removes a member from a list.
    pub async fn remove_list_member(
        &self,
        list: &Address,
        member: &Address,
    ) -> Result<(), AdminError> {
        let list = list.clone();
        let member = member.clone();
        self.admin_write(move |ctx| {
            let Some(mut rec) = get_list(ctx.r(), &list)? else {
                return reject(AdminError::NotFound(format!("list {list}")));
            };
            let key = member.lookup_key();
            let before = rec.members.len();
            rec.members.retain(|m| m.address.lookup_key() != key);
            if rec.members.len() == before {
                return reject(AdminError::NotFound(format!(
                    "{member} is not a member of {list}"
                )));
            }
            let (d, l) = akey(&list);
            ctx.put_json(LISTS, (d.as_str(), l.as_str()), &rec)?;
            Ok(())
        })
        .await
    }

    /// The members of a list.
    pub fn list_members(&self, list: &Address) -> Result<Vec<ListMember>, AdminError> {
        match self.get_list(list)? {
            Some(l) => Ok(l.members),
            None => Err(AdminError::NotFound(format!("list {list}"))),
        }
    }

    // ----- departments -----

    /// Creates a department (under `parent` when given) and returns it.
    pub async fn add_department(
        &self,
        domain: &Domain,
        dept: NewDepartment,
    ) -> Result<DepartmentInfo, AdminError> {
        validate_dept_name(&dept.name)?;
        let domain = domain.clone();
        self.admin_write(move |ctx| {
            hosted_domain(ctx.r(), &domain)?;
            let d = domain.as_str();
            let path = match &dept.parent {
                Some(p) => {
                    if !department_exists(ctx.r(), d, p)? {
                        return reject(AdminError::NotFound(format!("department {p} in {domain}")));
                    }
                    format!("{p}/{}", dept.name)
                }
                None => dept.name.clone(),
            };
            if department_exists(ctx.r(), d, &path)? {
                return reject(AdminError::AlreadyExists(format!(
                    "department {path} in {domain}"
                )));
            }
            if let Some(leader) = &dept.leader {
                check_leader(ctx.r(), &domain, leader)?;
            }
            let rec = DeptRec {
                name: dept.name.clone(),
                parent: dept.parent.clone(),
                order: dept.order,
                leader: dept.leader.clone(),
            };
            ctx.put_json(DEPARTMENTS, (d, path.as_str()), &rec)?;
            Ok(dept_info(&domain, path, rec))
        })
        .await
    }

    /// The departments of a domain in tree order: each department followed
    /// by its sub-departments, siblings by display order then name.
    pub fn list_departments(&self, domain: &Domain) -> Result<Vec<DepartmentInfo>, AdminError> {
        self.admin_read(|tx| {
            let all = tx.prefix_json::<DeptRec>(DEPARTMENTS, domain.as_str())?;
            let mut children: BTreeMap<Option<String>, Vec<(String, DeptRec)>> = BTreeMap::new();
            for (path, rec) in all {
                children
                    .entry(rec.parent.clone())
                    .or_default()
                    .push((path, rec));
            }
            for v in children.values_mut() {
                v.sort_by(|a, b| (a.1.order, &a.1.name).cmp(&(b.1.order, &b.1.name)));
            }
            let mut out = Vec::new();
            let mut stack: Vec<(String, DeptRec)> = children
                .remove(&None)
                .unwrap_or_default()
                .into_iter()
                .rev()
                .collect();
            while let Some((path, rec)) = stack.pop() {
                if let Some(kids) = children.remove(&Some(path.clone())) {
                    stack.extend(kids.into_iter().rev());
                }
                out.push(dept_info(domain, path, rec));
            }
            Ok(out)
        })
    }

    /// Changes a department's display order, leader, parent or name, all in
    /// one commit.
    pub async fn update_department(
        &self,
        domain: &Domain,
        path: &str,
        update: DepartmentUpdate,
    ) -> Result<DepartmentInfo, AdminError> {
        let domain = domain.clone();
        let path = path.to_string();
        self.admin_write(move |ctx| {
            let d = domain.as_str();
            let Some(mut rec) = ctx
                .r()
                .get_json::<_, DeptRec>(DEPARTMENTS, (d, path.as_str()))?
            else {
                return reject(AdminError::NotFound(format!(
                    "department {path} in {domain}"
                )));
            };
            if let Some(order) = update.order {
                rec.order = order;
            }
            if let Some(leader) = &update.leader {
                if let Some(l) = leader {
                    check_leader(ctx.r(), &domain, l)?;
                }
                rec.leader = leader.clone();
            }
            ctx.put_json(DEPARTMENTS, (d, path.as_str()), &rec)?;
            if update.parent.is_some() || update.name.is_some() {
                // Same commit: all of the update applies or none of it.
                return relocate_department(
                    ctx,
                    &domain,
                    &path,
                    update.parent.clone(),
                    update.name.clone(),
                );
            }
            Ok(dept_info(&domain, path.clone(), rec))
        })
        .await
    }

    /// Renames a department (its last path component). Sub-departments,
    /// users' department paths and department-administrator roles follow.
    pub async fn rename_department(
        &self,
        domain: &Domain,
        path: &str,
        new_name: &str,
    ) -> Result<DepartmentInfo, AdminError> {
        self.move_department(domain, path, None, Some(new_name))
            .await
    }

    /// Moves a department under another parent (`new_parent`:
    /// `Some(Some(path))`, or `Some(None)` for the top level) and/or gives
    /// it a new name; `None` keeps the current one. Sub-departments, users'
    /// department paths and department-administrator roles follow, in one
    /// commit. A department cannot move under itself or its descendants.
    pub async fn move_department(
        &self,
        domain: &Domain,
        path: &str,
        new_parent: Option<Option<&str>>,
        new_name: Option<&str>,
    ) -> Result<DepartmentInfo, AdminError> {
        let domain = domain.clone();
        let path = path.to_string();
        let new_parent = new_parent.map(|p| p.map(str::to_string));
        let new_name = new_name.map(str::to_string);
        self.admin_write(move |ctx| {
            relocate_department(ctx, &domain, &path, new_parent.clone(), new_name.clone())
        })
        .await
    }

    /// Removes a department: its users stay and lose their department, and
    /// department-administrator roles for it are revoked. Refused with
    /// `InUse` while it has sub-departments.
    pub async fn remove_department(&self, domain: &Domain, path: &str) -> Result<(), AdminError> {
        let domain = domain.clone();
        let path = path.to_string();
        self.admin_write(move |ctx| {
            let d = domain.as_str();
            if !department_exists(ctx.r(), d, &path)? {
                return reject(AdminError::NotFound(format!(
                    "department {path} in {domain}"
                )));
            }
            let child_prefix = format!("{path}/");
            let has_children = ctx
                .r()
                .prefix_json::<DeptRec>(DEPARTMENTS, d)?
                .iter()
                .any(|(p, _)| p.starts_with(&child_prefix));
            if has_children {
                return reject(AdminError::InUse(format!(
                    "department {path} has sub-departments"
                )));
            }
            for mut u in users_of(ctx.r(), d)? {
                if u.department.as_deref() == Some(path.as_str()) {
                    u.department = None;
                    put_user(ctx, &u)?;
                }
            }
            let mut roles = Vec::new();
            ctx.r().scan_all(ADMINS, |k, v| {
                let r: Vec<AdminRole> = crate::db::dec(v)?;
                roles.push((k.to_string(), r));
                Ok(true)
            })?;
            for (account, mut r) in roles {
                let before = r.len();
                r.retain(|x| {
                    !matches!(x, AdminRole::Department { domain: rd, department }
                        if rd == &domain && department == &path)
                });
                if r.len() != before {
                    if r.is_empty() {
                        ctx.del(ADMINS, account.as_str())?;
                    } else {
                        ctx.put_json(ADMINS, account.as_str(), &r)?;
                    }
                }
            }
            ctx.del(DEPARTMENTS, (d, path.as_str()))?;
            Ok(())
        })
        .await
    }

    // ----- administrators -----

    /// Grants a role to a user. Domain and department roles need the domain
    /// (and department) to exist. Granting a role held already is a no-op.
    pub async fn grant_role(&self, user: &Address, role: AdminRole) -> Result<(), AdminError> {
        let user = user.clone();
        self.admin_write(move |ctx| {
            let Some(rec) = get_user_by(ctx.r(), &user)? else {
                return reject(AdminError::NotFound(format!("user {user}")));
            };
            match &role {
                AdminRole::System => {}
                AdminRole::Domain { domain } => {
                    hosted_domain(ctx.r(), domain)?;
                }
                AdminRole::Department { domain, department } => {
                    hosted_domain(ctx.r(), domain)?;
                    if !department_exists(ctx.r(), domain.as_str(), department)? {
                        return reject(AdminError::NotFound(format!(
                            "department {department} in {domain}"
                        )));
                    }
                }
            }
            let account = rec.address.lookup_key();
            let mut roles: BTreeSet<AdminRole> = roles_of(ctx.r(), &account)?.into_iter().collect();
            roles.insert(role.clone());
            let roles: Vec<AdminRole> = roles.into_iter().collect();
            ctx.put_json(ADMINS, account.as_str(), &roles)?;
            tracing::info!(target: "admin", user = %rec.address, role = ?role, "role granted");
            Ok(())
        })
        .await
    }

    /// Revokes a role; `NotFound` when the user does not hold it.
    pub async fn revoke_role(&self, user: &Address, role: &AdminRole) -> Result<(), AdminError> {
        let user = user.clone();
        let role = role.clone();
        self.admin_write(move |ctx| {
            let account = user.lookup_key();
            let mut roles = roles_of(ctx.r(), &account)?;
            let before = roles.len();
            roles.retain(|r| r != &role);
            if roles.len() == before {
                return reject(AdminError::NotFound(format!(
                    "{user} does not hold {role:?}"
                )));
            }
            if roles.is_empty() {
                ctx.del(ADMINS, account.as_str())?;
            } else {
                ctx.put_json(ADMINS, account.as_str(), &roles)?;
            }
            Ok(())
        })
        .await
    }

    /// The roles a user holds.
    pub fn roles(&self, user: &Address) -> Result<Vec<AdminRole>, AdminError> {
        self.admin_read(|tx| roles_of(tx, &user.lookup_key()))
    }

    /// Every user holding a role, with the roles.
    pub fn list_admins(&self) -> Result<Vec<(Address, Vec<AdminRole>)>, AdminError> {
        self.admin_read(|tx| {
            let mut accounts = Vec::new();
            tx.scan_all(ADMINS, |k, v| {
                accounts.push((k.to_string(), crate::db::dec::<Vec<AdminRole>>(v)?));
                Ok(true)
            })?;
            let mut out = Vec::new();
            for (account, roles) in accounts {
                if let Some((d, l)) = crate::split_account(&account)
                    && let Some(u) = get_user(tx, d, l)?
                {
                    out.push((u.address, roles));
                }
            }
            Ok(out)
        })
    }

    /// Resolves an address like [`Directory::resolve`], synchronously.
    pub fn resolve_address(&self, address: &Address) -> Result<Resolution, AdminError> {
        self.admin_read(|tx| resolve_in(tx, address))
    }
}

fn check_leader(tx: Tx<'_>, domain: &Domain, leader: &Address) -> R<()> {
    if leader.domain() != domain || get_user_by(tx, leader)?.is_none() {
        return reject(AdminError::Invalid(format!(
            "the leader {leader} is not a user of {domain}"
        )));
    }
    Ok(())
}

fn dept_info(domain: &Domain, path: String, rec: DeptRec) -> DepartmentInfo {
    DepartmentInfo {
        domain: domain.clone(),
        path,
        name: rec.name,
        parent: rec.parent,
        order: rec.order,
        leader: rec.leader,
    }
}

// ---------------------------------------------------------------------------
// umail_core::Directory
// ---------------------------------------------------------------------------

fn dir_err(e: DbErr) -> DirectoryError {
    DirectoryError::Unavailable(e.0)
}

impl Store {
    fn dir_read<T>(&self, f: impl FnOnce(Tx<'_>) -> Result<T, DbErr>) -> Result<T, DirectoryError> {
        let tx = self.read().map_err(dir_err)?;
        f(Tx::Read(&tx)).map_err(dir_err)
    }

    /// The user record behind a login name (an address; domain aliases apply).
    fn login_user(&self, username: &str) -> Result<Option<(UserRec, Principal)>, DirectoryError> {
        let Ok(address) = Address::parse(username.trim()) else {
            return Ok(None);
        };
        self.dir_read(|tx| {
            let address = canonical(tx, &address)?;
            match get_user_by(tx, &address)? {
                Some(rec) => {
                    let p = principal_of(tx, &rec)?;
                    Ok(Some((rec, p)))
                }
                None => Ok(None),
            }
        })
    }
}

#[async_trait]
impl Directory for Store {
    async fn verify_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Principal>, DirectoryError> {
        let found = self.login_user(username)?;
        let hash = match &found {
            Some((rec, _)) => rec.password_hash.clone(),
            None => dummy_hash().to_string(),
        };
        let password = password.to_string();
        let _permit = hashing_permit().await;
        let ok = tokio::task::spawn_blocking(move || verify_hash(&hash, &password))
            .await
            .map_err(|e| DirectoryError::Other(format!("verification task failed: {e}")))?;
        Ok(match found {
            Some((_, p)) if ok && p.status == AccountStatus::Enabled => Some(p),
            _ => None,
        })
    }

    async fn principal(&self, username: &str) -> Result<Option<Principal>, DirectoryError> {
        Ok(self.login_user(username)?.map(|(_, p)| p))
    }

    async fn scram_credentials(
        &self,
        username: &str,
    ) -> Result<Option<ScramCredentials>, DirectoryError> {
        Ok(match self.login_user(username)? {
            Some((rec, p)) if p.status == AccountStatus::Enabled => {
                ScramCredentials::from_storage(&rec.scram)
            }
            _ => None,
        })
    }

    async fn legacy_secret(&self, username: &str) -> Result<Option<String>, DirectoryError> {
        Ok(match self.login_user(username)? {
            Some((rec, p)) if p.status == AccountStatus::Enabled => rec.legacy_secret,
            _ => None,
        })
    }

    async fn resolve(&self, address: &Address) -> Result<Resolution, DirectoryError> {
        self.dir_read(|tx| resolve_in(tx, address))
    }

    async fn is_local_domain(&self, domain: &Domain) -> Result<bool, DirectoryError> {
        self.dir_read(|tx| {
            Ok(get_domain(tx, domain.as_str())?.is_some()
                || get_domain_alias(tx, domain.as_str())?.is_some())
        })
    }

    async fn domain_settings(
        &self,
        domain: &Domain,
    ) -> Result<Option<DomainSettings>, DirectoryError> {
        self.dir_read(|tx| {
            let name = get_domain_alias(tx, domain.as_str())?
                .unwrap_or_else(|| domain.as_str().to_string());
            Ok(get_domain(tx, &name)?.map(|d| DomainSettings {
                domain: d.domain.clone(),
                status: d.effective_status(now()),
                max_message_size: d.max_message_size,
            }))
        })
    }

    async fn may_send_as(
        &self,
        principal: &Principal,
        from: &Address,
    ) -> Result<bool, DirectoryError> {
        let account = principal.address.lookup_key();
        self.dir_read(|tx| {
            let from = canonical(tx, from)?;
            if from.lookup_key() == account {
                return Ok(true);
            }
            Ok(get_alias(tx, &from)?
                .is_some_and(|a| a.targets.iter().any(|t| t.lookup_key() == account)))
        })
    }
}
