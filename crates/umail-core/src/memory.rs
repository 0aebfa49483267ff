//! In-memory implementations of [`Directory`], [`MailStore`] and
//! [`QueueStore`], for tests and for integrators who want to see the
//! smallest complete implementation of each trait.
//!
//! They keep every guarantee of the traits except durability: nothing
//! survives the process. Passwords are kept only as SCRAM verifiers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::broadcast;

use crate::address::{Address, Domain};
use crate::directory::{
    Directory, DirectoryError, DomainSettings, MailingList, Resolution, Unavailability,
};
use crate::model::{AccountStatus, DomainStatus, Principal, Protocol, QueueId, Quota, QuotaUsage};
use crate::queue::{EnqueueOptions, QueueEntry, QueueError, QueueState, QueueStore};
use crate::sasl::ScramCredentials;
use crate::store::{
    AppendOutcome, ChangeFeed, ContentPart, DeliveryTarget, Flag, FlagOp, FlagUpdate, Flags,
    HIERARCHY_SEPARATOR, INBOX, MailStore, MailboxChange, MailboxId, MailboxInfo, MessageMeta,
    ModSeq, SpecialUse, StoreError, Uid,
};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Debug, Clone)]
struct UserEntry {
    principal: Principal,
    scram: ScramCredentials,
    legacy_secret: Option<String>,
}

#[derive(Debug, Default)]
struct DirectoryData {
    domains: HashMap<Domain, DomainStatus>,
    domain_aliases: HashMap<Domain, Domain>,
    users: HashMap<String, UserEntry>,
    aliases: HashMap<String, Vec<Address>>,
    lists: HashMap<String, MailingList>,
}

/// A directory held in memory.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    data: Mutex<DirectoryData>,
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> MemoryDirectory {
        MemoryDirectory::default()
    }

    /// Hosts a domain.
    pub fn add_domain(&self, domain: &str) -> Domain {
        let d = Domain::parse(domain).expect("valid domain");
        lock(&self.data)
            .domains
            .insert(d.clone(), DomainStatus::Active);
        d
    }

    /// Sets a domain's status.
    pub fn set_domain_status(&self, domain: &str, status: DomainStatus) {
        let d = Domain::parse(domain).expect("valid domain");
        lock(&self.data).domains.insert(d, status);
    }

    /// Makes `alias` a domain alias of `target`.
    pub fn add_domain_alias(&self, alias: &str, target: &str) {
        let a = Domain::parse(alias).expect("valid domain");
        let t = Domain::parse(target).expect("valid domain");
        lock(&self.data).domain_aliases.insert(a, t);
    }

    /// Adds an account with every protocol allowed and no quota; hosts its
    /// domain if needed.
    pub fn add_user(&self, address: &str, password: &str) -> Principal {
        let address = Address::parse(address).expect("valid address");
        let principal = Principal {
            address: address.clone(),
            display_name: address.local_part().to_string(),
            quota: Quota::default(),
            protocols: Protocol::ALL.to_vec(),
            status: AccountStatus::Enabled,
            department: None,
            roles: Vec::new(),
        };
        let mut data = lock(&self.data);
        data.domains
            .entry(address.domain().clone())
            .or_insert(DomainStatus::Active);
        data.users.insert(
            address.lookup_key(),
            UserEntry {
                principal: principal.clone(),
                scram: ScramCredentials::generate(password),
                legacy_secret: None,
            },
        );
        principal
    }

    /// Changes an account with `f`.
    pub fn update_user(&self, address: &str, f: impl FnOnce(&mut Principal)) {
        let key = Address::parse(address).expect("valid address").lookup_key();
        if let Some(u) = lock(&self.data).users.get_mut(&key) {
            f(&mut u.principal);
        }
    }

    /// Gives an account a legacy secret (CRAM-MD5/APOP).
    pub fn set_legacy_secret(&self, address: &str, secret: &str) {
        let key = Address::parse(address).expect("valid address").lookup_key();
        if let Some(u) = lock(&self.data).users.get_mut(&key) {
            u.legacy_secret = Some(secret.to_string());
        }
    }

    /// Adds an address alias.
    pub fn add_alias(&self, alias: &str, targets: &[&str]) {
        let key = Address::parse(alias).expect("valid address").lookup_key();
        let targets = targets
            .iter()
            .map(|t| Address::parse(t).expect("valid address"))
            .collect();
        lock(&self.data).aliases.insert(key, targets);
    }

    /// Adds a mailing list.
    pub fn add_list(&self, list: MailingList) {
        lock(&self.data)
            .lists
            .insert(list.address.lookup_key(), list);
    }

    fn canonical(&self, address: &Address) -> Address {
        let data = lock(&self.data);
        match data.domain_aliases.get(address.domain()) {
            Some(target) => address.with_domain(target.clone()),
            None => address.clone(),
        }
    }

    fn user_for_login(&self, username: &str) -> Option<UserEntry> {
        let address = Address::parse(username).ok()?;
        let key = self.canonical(&address).lookup_key();
        lock(&self.data).users.get(&key).cloned()
    }
}

#[async_trait]
impl Directory for MemoryDirectory {
    async fn verify_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Principal>, DirectoryError> {
        let Some(user) = self.user_for_login(username) else {
            return Ok(None);
        };
        let candidate = ScramCredentials::derive(password, &user.scram.salt, user.scram.iterations);
        let matches =
            subtle::ConstantTimeEq::ct_eq(&candidate.stored_key[..], &user.scram.stored_key[..]);
        Ok(
            (bool::from(matches) && user.principal.status == AccountStatus::Enabled)
                .then_some(user.principal),
        )
    }

    async fn principal(&self, username: &str) -> Result<Option<Principal>, DirectoryError> {
        Ok(self.user_for_login(username).map(|u| u.principal))
    }

    async fn scram_credentials(
        &self,
        username: &str,
    ) -> Result<Option<ScramCredentials>, DirectoryError> {
        Ok(self.user_for_login(username).map(|u| u.scram))
    }

    async fn legacy_secret(&self, username: &str) -> Result<Option<String>, DirectoryError> {
        Ok(self.user_for_login(username).and_then(|u| u.legacy_secret))
    }

    async fn resolve(&self, address: &Address) -> Result<Resolution, DirectoryError> {
        let address = self.canonical(address);
        let data = lock(&self.data);
        let Some(status) = data.domains.get(address.domain()) else {
            return Ok(Resolution::NotLocal);
        };
        match status {
            DomainStatus::Disabled => {
                return Ok(Resolution::Unavailable(Unavailability::DisabledDomain));
            }
            DomainStatus::Expired => {
                return Ok(Resolution::Unavailable(Unavailability::ExpiredDomain));
            }
            DomainStatus::Active => {}
        }
        let key = address.lookup_key();
        if let Some(u) = data.users.get(&key) {
            if u.principal.status == AccountStatus::Frozen {
                return Ok(Resolution::Unavailable(Unavailability::FrozenAccount));
            }
            return Ok(Resolution::Local(u.principal.clone()));
        }
        if let Some(targets) = data.aliases.get(&key) {
            return Ok(Resolution::Alias(targets.clone()));
        }
        if let Some(list) = data.lists.get(&key) {
            return Ok(Resolution::List(list.clone()));
        }
        Ok(Resolution::Unknown)
    }

    async fn is_local_domain(&self, domain: &Domain) -> Result<bool, DirectoryError> {
        let data = lock(&self.data);
        Ok(data.domains.contains_key(domain) || data.domain_aliases.contains_key(domain))
    }

    async fn domain_settings(
        &self,
        domain: &Domain,
    ) -> Result<Option<DomainSettings>, DirectoryError> {
        Ok(lock(&self.data)
            .domains
            .get(domain)
            .map(|status| DomainSettings {
                domain: domain.clone(),
                status: *status,
                max_message_size: 0,
            }))
    }

    async fn may_send_as(
        &self,
        principal: &Principal,
        from: &Address,
    ) -> Result<bool, DirectoryError> {
        let own = principal.address.lookup_key();
        let from = self.canonical(from).lookup_key();
        if own == from {
            return Ok(true);
        }
        let data = lock(&self.data);
        Ok(data
            .aliases
            .get(&from)
            .is_some_and(|targets| targets.iter().any(|t| t.lookup_key() == own)))
    }
}

#[derive(Debug, Clone)]
struct StoredMessage {
    meta: MessageMeta,
    content: Bytes,
}

#[derive(Debug)]
struct Mailbox {
    info: MailboxInfo,
    messages: BTreeMap<Uid, StoredMessage>,
    /// Expunged UIDs with the MODSEQ of their expunge (QRESYNC).
    expunged: BTreeMap<Uid, ModSeq>,
    feed: broadcast::Sender<MailboxChange>,
}

impl Mailbox {
    fn new(
        id: MailboxId,
        name: &str,
        special_use: Option<SpecialUse>,
        uid_validity: u32,
    ) -> Mailbox {
        Mailbox {
            info: MailboxInfo {
                id,
                name: name.to_string(),
                special_use,
                subscribed: true,
                uid_validity,
                uid_next: 1,
                highest_modseq: 1,
                messages: 0,
                unseen: 0,
                size: 0,
            },
            messages: BTreeMap::new(),
            expunged: BTreeMap::new(),
            feed: broadcast::channel(1024).0,
        }
    }

    fn refresh_counts(&mut self) {
        self.info.messages = self.messages.len() as u32;
        self.info.unseen = self
            .messages
            .values()
            .filter(|m| !m.meta.flags.contains(&Flag::Seen))
            .count() as u32;
        self.info.size = self.messages.values().map(|m| m.meta.size).sum();
    }

    fn next_modseq(&mut self) -> ModSeq {
        self.info.highest_modseq += 1;
        self.info.highest_modseq
    }

    fn add(&mut self, content: Bytes, flags: Flags, internal_date: i64) -> AppendOutcome {
        let uid = self.info.uid_next;
        self.info.uid_next += 1;
        let modseq = self.next_modseq();
        let meta = MessageMeta {
            uid,
            flags,
            modseq,
            internal_date,
            size: content.len() as u64,
            blob_id: blake_like_id(&content),
        };
        self.messages.insert(uid, StoredMessage { meta, content });
        self.refresh_counts();
        let _ = self.feed.send(MailboxChange::Added { uid, modseq });
        AppendOutcome {
            uid_validity: self.info.uid_validity,
            uid,
            modseq,
        }
    }
}

fn blake_like_id(content: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(content)
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Default)]
struct Account {
    mailboxes: BTreeMap<String, Mailbox>,
    subscriptions: std::collections::BTreeSet<String>,
}

#[derive(Debug, Default)]
struct StoreData {
    accounts: HashMap<String, Account>,
    quotas: HashMap<String, Quota>,
    next_mailbox_id: MailboxId,
    next_uid_validity: u32,
}

impl StoreData {
    fn account(&mut self, account: &str) -> &mut Account {
        if !self.accounts.contains_key(account) {
            let mut acc = Account::default();
            let mut names = vec![(INBOX, None)];
            names.extend(SpecialUse::DEFAULTS.iter().map(|(n, s)| (*n, Some(*s))));
            for (name, special) in names {
                self.next_mailbox_id += 1;
                self.next_uid_validity += 1;
                acc.mailboxes.insert(
                    name.to_string(),
                    Mailbox::new(self.next_mailbox_id, name, special, self.next_uid_validity),
                );
                acc.subscriptions.insert(name.to_string());
            }
            self.accounts.insert(account.to_string(), acc);
        }
        self.accounts.get_mut(account).expect("just inserted")
    }

    fn usage(&self, account: &str) -> QuotaUsage {
        let mut usage = QuotaUsage::default();
        if let Some(acc) = self.accounts.get(account) {
            for mb in acc.mailboxes.values() {
                usage.messages += mb.messages.len() as u64;
                usage.bytes += mb.info.size;
            }
        }
        usage
    }

    fn check_quota(&self, account: &str, bytes: u64, messages: u64) -> Result<(), StoreError> {
        let quota = self.quotas.get(account).copied().unwrap_or_default();
        if quota.would_exceed(&self.usage(account), bytes, messages) {
            return Err(StoreError::OverQuota);
        }
        Ok(())
    }

    fn create(
        &mut self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxInfo, StoreError> {
        let name = normalize_name(name)?;
        self.account(account);
        let mut created = None;
        let parts: Vec<&str> = name.split(HIERARCHY_SEPARATOR).collect();
        for i in 1..=parts.len() {
            let prefix = parts[..i].join("/");
            let exists = self.accounts[account].mailboxes.contains_key(&prefix);
            if exists {
                if i == parts.len() {
                    return Err(StoreError::MailboxExists(prefix));
                }
                continue;
            }
            self.next_mailbox_id += 1;
            self.next_uid_validity += 1;
            let mb = Mailbox::new(
                self.next_mailbox_id,
                &prefix,
                if i == parts.len() { special_use } else { None },
                self.next_uid_validity,
            );
            created = Some(mb.info.clone());
            let acc = self.accounts.get_mut(account).expect("created above");
            acc.mailboxes.insert(prefix, mb);
        }
        created.ok_or(StoreError::MailboxExists(name))
    }

    fn mailbox_by_id(&mut self, account: &str, id: MailboxId) -> Result<&mut Mailbox, StoreError> {
        self.account(account)
            .mailboxes
            .values_mut()
            .find(|m| m.info.id == id)
            .ok_or_else(|| StoreError::NoSuchMailbox(id.to_string()))
    }
}

fn normalize_name(name: &str) -> Result<String, StoreError> {
    if name.is_empty()
        || name.starts_with(HIERARCHY_SEPARATOR)
        || name.ends_with(HIERARCHY_SEPARATOR)
        || name.contains("//")
    {
        return Err(StoreError::InvalidName(name.to_string()));
    }
    if name.eq_ignore_ascii_case(INBOX) {
        return Ok(INBOX.to_string());
    }
    Ok(name.to_string())
}

/// A mail store held in memory.
#[derive(Debug, Default)]
pub struct MemoryMailStore {
    data: Mutex<StoreData>,
}

impl MemoryMailStore {
    /// An empty store.
    pub fn new() -> MemoryMailStore {
        MemoryMailStore::default()
    }

    /// Sets an account's quota (default: unlimited).
    pub fn set_quota(&self, account: &str, quota: Quota) {
        lock(&self.data).quotas.insert(account.to_string(), quota);
    }
}

#[async_trait]
impl MailStore for MemoryMailStore {
    async fn list_mailboxes(&self, account: &str) -> Result<Vec<MailboxInfo>, StoreError> {
        let mut data = lock(&self.data);
        let acc = data.account(account);
        Ok(acc
            .mailboxes
            .values()
            .map(|m| {
                let mut info = m.info.clone();
                info.subscribed = acc.subscriptions.contains(&info.name);
                info
            })
            .collect())
    }

    async fn mailbox(&self, account: &str, name: &str) -> Result<Option<MailboxInfo>, StoreError> {
        let Ok(name) = normalize_name(name) else {
            return Ok(None);
        };
        let mut data = lock(&self.data);
        let acc = data.account(account);
        Ok(acc.mailboxes.get(&name).map(|m| {
            let mut info = m.info.clone();
            info.subscribed = acc.subscriptions.contains(&name);
            info
        }))
    }

    async fn create_mailbox(
        &self,
        account: &str,
        name: &str,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxInfo, StoreError> {
        lock(&self.data).create(account, name, special_use)
    }

    async fn rename_mailbox(&self, account: &str, from: &str, to: &str) -> Result<(), StoreError> {
        let from = normalize_name(from)?;
        let to = normalize_name(to)?;
        let mut data = lock(&self.data);
        let acc = data.account(account);
        if !acc.mailboxes.contains_key(&from) {
            return Err(StoreError::NoSuchMailbox(from));
        }
        if acc.mailboxes.contains_key(&to) {
            return Err(StoreError::MailboxExists(to));
        }
        if from == INBOX {
            // RFC 9051 §6.3.6: messages move to the new mailbox; INBOX stays, empty.
            let info = data.create(account, &to, None)?;
            let acc = data.account(account);
            let inbox = acc.mailboxes.get_mut(INBOX).expect("INBOX exists");
            let moved: Vec<StoredMessage> =
                std::mem::take(&mut inbox.messages).into_values().collect();
            inbox.refresh_counts();
            let uids: Vec<Uid> = moved.iter().map(|m| m.meta.uid).collect();
            let modseq = inbox.next_modseq();
            inbox.expunged.extend(uids.iter().map(|u| (*u, modseq)));
            let _ = inbox.feed.send(MailboxChange::Expunged { uids, modseq });
            let target = acc.mailboxes.get_mut(&info.name).expect("created");
            for m in moved {
                target.add(m.content, m.meta.flags, m.meta.internal_date);
            }
            return Ok(());
        }
        let prefix = format!("{from}/");
        let names: Vec<String> = acc
            .mailboxes
            .keys()
            .filter(|n| **n == from || n.starts_with(&prefix))
            .cloned()
            .collect();
        for old in names {
            let new = format!("{to}{}", &old[from.len()..]);
            if let Some(mut mb) = acc.mailboxes.remove(&old) {
                let _ = mb.feed.send(MailboxChange::Gone);
                mb.info.name = new.clone();
                acc.mailboxes.insert(new, mb);
            }
        }
        Ok(())
    }

    async fn delete_mailbox(&self, account: &str, name: &str) -> Result<(), StoreError> {
        let name = normalize_name(name)?;
        if name == INBOX {
            return Err(StoreError::NotAllowed("INBOX cannot be deleted".into()));
        }
        let mut data = lock(&self.data);
        let acc = data.account(account);
        let mb = acc
            .mailboxes
            .remove(&name)
            .ok_or(StoreError::NoSuchMailbox(name))?;
        let _ = mb.feed.send(MailboxChange::Gone);
        Ok(())
    }

    async fn set_subscribed(
        &self,
        account: &str,
        name: &str,
        subscribed: bool,
    ) -> Result<(), StoreError> {
        let name = normalize_name(name)?;
        let mut data = lock(&self.data);
        let acc = data.account(account);
        if subscribed {
            acc.subscriptions.insert(name);
        } else {
            acc.subscriptions.remove(&name);
        }
        Ok(())
    }

    async fn append(
        &self,
        account: &str,
        mailbox: &str,
        message: Bytes,
        flags: Flags,
        internal_date: i64,
    ) -> Result<AppendOutcome, StoreError> {
        let name = normalize_name(mailbox)?;
        let mut data = lock(&self.data);
        data.account(account);
        data.check_quota(account, message.len() as u64, 1)?;
        let mb = data
            .account(account)
            .mailboxes
            .get_mut(&name)
            .ok_or(StoreError::NoSuchMailbox(name))?;
        Ok(mb.add(message, flags, internal_date))
    }

    async fn deliver(
        &self,
        message: Bytes,
        internal_date: i64,
        targets: &[DeliveryTarget],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let mut data = lock(&self.data);
        let mut results = Vec::with_capacity(targets.len());
        for t in targets {
            let result = (|| {
                let name = normalize_name(&t.mailbox)?;
                data.account(&t.account);
                data.check_quota(&t.account, message.len() as u64, 1)?;
                if !data.accounts[&t.account].mailboxes.contains_key(&name) {
                    data.create(&t.account, &name, None)?;
                }
                let mb = data
                    .account(&t.account)
                    .mailboxes
                    .get_mut(&name)
                    .ok_or(StoreError::NoSuchMailbox(name))?;
                Ok(mb.add(message.clone(), t.flags.clone(), internal_date))
            })();
            results.push(result);
        }
        Ok(results)
    }

    async fn messages(
        &self,
        account: &str,
        mailbox: MailboxId,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let mut data = lock(&self.data);
        let mb = data.mailbox_by_id(account, mailbox)?;
        Ok(mb.messages.values().map(|m| m.meta.clone()).collect())
    }

    async fn message_content(
        &self,
        account: &str,
        mailbox: MailboxId,
        uid: Uid,
    ) -> Result<Option<Bytes>, StoreError> {
        let mut data = lock(&self.data);
        let mb = data.mailbox_by_id(account, mailbox)?;
        Ok(mb.messages.get(&uid).map(|m| m.content.clone()))
    }

    async fn messages_after(
        &self,
        account: &str,
        mailbox: MailboxId,
        after: Uid,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let mut data = lock(&self.data);
        let mb = data.mailbox_by_id(account, mailbox)?;
        Ok(mb
            .messages
            .range(after.saturating_add(1)..)
            .filter(|(uid, _)| **uid > after)
            .map(|(_, m)| m.meta.clone())
            .collect())
    }

    async fn message_contents(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
        part: ContentPart,
    ) -> Result<Vec<Option<Bytes>>, StoreError> {
        // One lock for the whole batch: a consistent view, as a snapshot
        // store gives. `Bytes` clones and slices share the stored content.
        let mut data = lock(&self.data);
        let mb = data.mailbox_by_id(account, mailbox)?;
        Ok(uids
            .iter()
            .map(|uid| {
                mb.messages.get(uid).map(|m| match part {
                    ContentPart::Full => m.content.clone(),
                    ContentPart::Header => m.content.slice(..crate::store::header_len(&m.content)),
                })
            })
            .collect())
    }

    async fn update_flags(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
        op: FlagOp,
        flags: &Flags,
        unchanged_since: Option<ModSeq>,
    ) -> Result<FlagUpdate, StoreError> {
        let mut data = lock(&self.data);
        let mb = data.mailbox_by_id(account, mailbox)?;
        let mut update = FlagUpdate::default();
        for uid in uids {
            let Some(current) = mb.messages.get(uid).map(|m| m.meta.clone()) else {
                continue;
            };
            // RFC 7162 §3.1.3
            if unchanged_since.is_some_and(|since| current.modseq > since) {
                update.modified.push(*uid);
                continue;
            }
            let mut new_flags = current.flags.clone();
            match op {
                FlagOp::Set => new_flags = flags.clone(),
                FlagOp::Add => new_flags.extend(flags.iter().cloned()),
                FlagOp::Remove => new_flags.retain(|f| !flags.contains(f)),
            }
            if new_flags == current.flags {
                update.updated.push((*uid, new_flags, current.modseq));
                continue;
            }
            let modseq = mb.next_modseq();
            let m = mb.messages.get_mut(uid).expect("present");
            m.meta.flags = new_flags.clone();
            m.meta.modseq = modseq;
            let _ = mb.feed.send(MailboxChange::Flags {
                uid: *uid,
                flags: new_flags.clone(),
                modseq,
            });
            update.updated.push((*uid, new_flags, modseq));
        }
        mb.refresh_counts();
        Ok(update)
    }

    async fn expunge(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: Option<&[Uid]>,
    ) -> Result<Vec<Uid>, StoreError> {
        let mut data = lock(&self.data);
        let mb = data.mailbox_by_id(account, mailbox)?;
        let victims: Vec<Uid> = mb
            .messages
            .values()
            .filter(|m| m.meta.flags.contains(&Flag::Deleted))
            .map(|m| m.meta.uid)
            .filter(|u| uids.is_none_or(|set| set.contains(u)))
            .collect();
        remove_uids(mb, &victims);
        Ok(victims)
    }

    async fn remove(
        &self,
        account: &str,
        mailbox: MailboxId,
        uids: &[Uid],
    ) -> Result<Vec<Uid>, StoreError> {
        let mut data = lock(&self.data);
        let mb = data.mailbox_by_id(account, mailbox)?;
        let mut victims: Vec<Uid> = uids
            .iter()
            .copied()
            .filter(|u| mb.messages.contains_key(u))
            .collect();
        victims.sort_unstable();
        victims.dedup();
        remove_uids(mb, &victims);
        Ok(victims)
    }

    async fn copy(
        &self,
        account: &str,
        from: MailboxId,
        uids: &[Uid],
        to: &str,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError> {
        copy_or_move(&self.data, account, from, uids, to, false)
    }

    async fn move_messages(
        &self,
        account: &str,
        from: MailboxId,
        uids: &[Uid],
        to: &str,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError> {
        copy_or_move(&self.data, account, from, uids, to, true)
    }

    async fn quota_usage(&self, account: &str) -> Result<QuotaUsage, StoreError> {
        Ok(lock(&self.data).usage(account))
    }

    async fn watch(&self, account: &str, mailbox: MailboxId) -> Result<ChangeFeed, StoreError> {
        let mut data = lock(&self.data);
        Ok(data.mailbox_by_id(account, mailbox)?.feed.subscribe())
    }

    async fn expunged_since(
        &self,
        account: &str,
        mailbox: MailboxId,
        since: ModSeq,
    ) -> Result<Option<Vec<Uid>>, StoreError> {
        let mut data = lock(&self.data);
        let mb = data.mailbox_by_id(account, mailbox)?;
        // Every expunge of this mailbox is remembered, so the answer is exact.
        Ok(Some(
            mb.expunged
                .iter()
                .filter(|(_, m)| **m > since)
                .map(|(u, _)| *u)
                .collect(),
        ))
    }
}

fn remove_uids(mb: &mut Mailbox, victims: &[Uid]) {
    let removed: Vec<Uid> = victims
        .iter()
        .copied()
        .filter(|uid| mb.messages.remove(uid).is_some())
        .collect();
    if removed.is_empty() {
        return;
    }
    mb.refresh_counts();
    let modseq = mb.next_modseq();
    mb.expunged.extend(removed.iter().map(|u| (*u, modseq)));
    let _ = mb.feed.send(MailboxChange::Expunged {
        uids: removed,
        modseq,
    });
}

fn copy_or_move(
    data: &Mutex<StoreData>,
    account: &str,
    from: MailboxId,
    uids: &[Uid],
    to: &str,
    remove_source: bool,
) -> Result<(u32, Vec<(Uid, Uid)>), StoreError> {
    let to = normalize_name(to)?;
    let mut data = lock(data);
    let source: Vec<StoredMessage> = {
        let mb = data.mailbox_by_id(account, from)?;
        let mut picked: Vec<StoredMessage> = uids
            .iter()
            .filter_map(|u| mb.messages.get(u).cloned())
            .collect();
        picked.sort_by_key(|m| m.meta.uid);
        picked.dedup_by_key(|m| m.meta.uid);
        picked
    };
    if !remove_source {
        let bytes: u64 = source.iter().map(|m| m.meta.size).sum();
        data.check_quota(account, bytes, source.len() as u64)?;
    }
    let target = data
        .account(account)
        .mailboxes
        .get_mut(&to)
        .ok_or_else(|| StoreError::NoSuchMailbox(to.clone()))?;
    let uid_validity = target.info.uid_validity;
    let mut pairs = Vec::with_capacity(source.len());
    for m in &source {
        let out = target.add(
            m.content.clone(),
            m.meta.flags.clone(),
            m.meta.internal_date,
        );
        pairs.push((m.meta.uid, out.uid));
    }
    if remove_source {
        let mb = data.mailbox_by_id(account, from)?;
        let victims: Vec<Uid> = source.iter().map(|m| m.meta.uid).collect();
        remove_uids(mb, &victims);
    }
    Ok((uid_validity, pairs))
}

#[derive(Debug, Default)]
struct QueueData {
    next_id: u64,
    entries: BTreeMap<QueueId, (QueueEntry, Bytes)>,
}

/// An outbound queue held in memory.
#[derive(Debug, Default)]
pub struct MemoryQueue {
    data: Mutex<QueueData>,
}

impl MemoryQueue {
    /// An empty queue.
    pub fn new() -> MemoryQueue {
        MemoryQueue::default()
    }
}

#[async_trait]
impl QueueStore for MemoryQueue {
    async fn enqueue_with(
        &self,
        envelope: crate::model::Envelope,
        message: Bytes,
        now: i64,
        options: &EnqueueOptions,
    ) -> Result<QueueId, QueueError> {
        let mut data = lock(&self.data);
        data.next_id += 1;
        let id = QueueId(data.next_id);
        let entry = QueueEntry::new(id, envelope, message.len() as u64, now, options);
        data.entries.insert(id, (entry, message));
        Ok(id)
    }

    async fn due(&self, now: i64, limit: usize) -> Result<Vec<QueueEntry>, QueueError> {
        let data = lock(&self.data);
        let mut due: Vec<QueueEntry> = data
            .entries
            .values()
            .map(|(e, _)| e)
            .filter(|e| {
                matches!(e.state, QueueState::Active | QueueState::Deferred)
                    && e.next_attempt <= now
            })
            .cloned()
            .collect();
        due.sort_by_key(QueueEntry::departure_order);
        due.truncate(limit);
        Ok(due)
    }

    async fn get(&self, id: QueueId) -> Result<Option<QueueEntry>, QueueError> {
        Ok(lock(&self.data).entries.get(&id).map(|(e, _)| e.clone()))
    }

    async fn content(&self, id: QueueId) -> Result<Option<Bytes>, QueueError> {
        Ok(lock(&self.data).entries.get(&id).map(|(_, c)| c.clone()))
    }

    async fn update(&self, entry: &QueueEntry) -> Result<(), QueueError> {
        let mut data = lock(&self.data);
        let slot = data
            .entries
            .get_mut(&entry.id)
            .ok_or(QueueError::NotFound(entry.id))?;
        slot.0 = entry.clone();
        Ok(())
    }

    async fn remove(&self, id: QueueId) -> Result<(), QueueError> {
        lock(&self.data)
            .entries
            .remove(&id)
            .map(|_| ())
            .ok_or(QueueError::NotFound(id))
    }

    async fn list(&self, state: Option<QueueState>) -> Result<Vec<QueueEntry>, QueueError> {
        Ok(lock(&self.data)
            .entries
            .values()
            .map(|(e, _)| e)
            .filter(|e| state.is_none_or(|s| e.state == s))
            .cloned()
            .collect())
    }
}

/// A [`MailStore`] that forwards every required method to the store it
/// wraps and keeps the trait's default bodies for the optional ones
/// (`expunged_since`, `messages_after`, `message_contents`): how a minimal
/// third-party store behaves. Tests of those defaults, and of how callers
/// fall back when a store offers only the minimum, use it.
pub struct RequiredOnly(pub std::sync::Arc<dyn MailStore>);

impl std::fmt::Debug for RequiredOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequiredOnly")
    }
}

#[async_trait]
impl MailStore for RequiredOnly {
    async fn list_mailboxes(&self, a: &str) -> Result<Vec<MailboxInfo>, StoreError> {
        self.0.list_mailboxes(a).await
    }
    async fn mailbox(&self, a: &str, n: &str) -> Result<Option<MailboxInfo>, StoreError> {
        self.0.mailbox(a, n).await
    }
    async fn create_mailbox(
        &self,
        a: &str,
        n: &str,
        u: Option<SpecialUse>,
    ) -> Result<MailboxInfo, StoreError> {
        self.0.create_mailbox(a, n, u).await
    }
    async fn rename_mailbox(&self, a: &str, f: &str, t: &str) -> Result<(), StoreError> {
        self.0.rename_mailbox(a, f, t).await
    }
    async fn delete_mailbox(&self, a: &str, n: &str) -> Result<(), StoreError> {
        self.0.delete_mailbox(a, n).await
    }
    async fn set_subscribed(&self, a: &str, n: &str, s: bool) -> Result<(), StoreError> {
        self.0.set_subscribed(a, n, s).await
    }
    async fn append(
        &self,
        a: &str,
        m: &str,
        msg: Bytes,
        f: Flags,
        d: i64,
    ) -> Result<AppendOutcome, StoreError> {
        self.0.append(a, m, msg, f, d).await
    }
    async fn deliver(
        &self,
        msg: Bytes,
        d: i64,
        t: &[DeliveryTarget],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        self.0.deliver(msg, d, t).await
    }
    async fn messages(&self, a: &str, m: MailboxId) -> Result<Vec<MessageMeta>, StoreError> {
        self.0.messages(a, m).await
    }
    async fn message_content(
        &self,
        a: &str,
        m: MailboxId,
        u: Uid,
    ) -> Result<Option<Bytes>, StoreError> {
        self.0.message_content(a, m, u).await
    }
    async fn update_flags(
        &self,
        a: &str,
        m: MailboxId,
        u: &[Uid],
        op: FlagOp,
        f: &Flags,
        s: Option<ModSeq>,
    ) -> Result<FlagUpdate, StoreError> {
        self.0.update_flags(a, m, u, op, f, s).await
    }
    async fn expunge(
        &self,
        a: &str,
        m: MailboxId,
        u: Option<&[Uid]>,
    ) -> Result<Vec<Uid>, StoreError> {
        self.0.expunge(a, m, u).await
    }
    async fn remove(&self, a: &str, m: MailboxId, u: &[Uid]) -> Result<Vec<Uid>, StoreError> {
        self.0.remove(a, m, u).await
    }
    async fn copy(
        &self,
        a: &str,
        f: MailboxId,
        u: &[Uid],
        t: &str,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError> {
        self.0.copy(a, f, u, t).await
    }
    async fn move_messages(
        &self,
        a: &str,
        f: MailboxId,
        u: &[Uid],
        t: &str,
    ) -> Result<(u32, Vec<(Uid, Uid)>), StoreError> {
        self.0.move_messages(a, f, u, t).await
    }
    async fn quota_usage(&self, a: &str) -> Result<QuotaUsage, StoreError> {
        self.0.quota_usage(a).await
    }
    async fn watch(&self, a: &str, m: MailboxId) -> Result<ChangeFeed, StoreError> {
        self.0.watch(a, m).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn directory_resolves_users_aliases_and_domain_aliases() {
        let d = MemoryDirectory::new();
        d.add_user("alice@example.com", "pw");
        d.add_alias("sales@example.com", &["alice@example.com"]);
        d.add_domain_alias("old.example", "example.com");
        let r = d
            .resolve(&"Alice@OLD.example".parse().unwrap())
            .await
            .unwrap();
        assert!(matches!(r, Resolution::Local(p) if p.address.lookup_key() == "alice@example.com"));
        assert!(matches!(
            d.resolve(&"sales@example.com".parse().unwrap())
                .await
                .unwrap(),
            Resolution::Alias(_)
        ));
        assert_eq!(
            d.resolve(&"bob@example.com".parse().unwrap())
                .await
                .unwrap(),
            Resolution::Unknown
        );
        assert_eq!(
            d.resolve(&"bob@elsewhere.net".parse().unwrap())
                .await
                .unwrap(),
            Resolution::NotLocal
        );
        assert!(
            d.verify_password("alice@example.com", "pw")
                .await
                .unwrap()
                .is_some()
        );
        assert!(
            d.verify_password("alice@example.com", "nope")
                .await
                .unwrap()
                .is_none()
        );
        d.update_user("alice@example.com", |p| p.status = AccountStatus::Frozen);
        assert!(
            d.verify_password("alice@example.com", "pw")
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn store_keeps_uid_and_quota_rules() {
        let s = MemoryMailStore::new();
        s.set_quota(
            "a@x.org",
            Quota {
                bytes: 10,
                messages: 0,
            },
        );
        let boxes = s.list_mailboxes("a@x.org").await.unwrap();
        assert_eq!(boxes.len(), 6);
        let r = s
            .append(
                "a@x.org",
                "INBOX",
                Bytes::from_static(b"12345"),
                Flags::new(),
                0,
            )
            .await
            .unwrap();
        assert_eq!(r.uid, 1);
        assert!(matches!(
            s.append(
                "a@x.org",
                "INBOX",
                Bytes::from_static(b"123456"),
                Flags::new(),
                0
            )
            .await,
            Err(StoreError::OverQuota)
        ));
        let inbox = s.mailbox("a@x.org", "inbox").await.unwrap().unwrap();
        let mut feed = s.watch("a@x.org", inbox.id).await.unwrap();
        s.update_flags(
            "a@x.org",
            inbox.id,
            &[1],
            FlagOp::Add,
            &[Flag::Deleted].into(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(s.expunge("a@x.org", inbox.id, None).await.unwrap(), vec![1]);
        assert!(matches!(
            feed.recv().await.unwrap(),
            MailboxChange::Flags { uid: 1, .. }
        ));
        assert!(matches!(
            feed.recv().await.unwrap(),
            MailboxChange::Expunged { .. }
        ));
        let r = s
            .append(
                "a@x.org",
                "INBOX",
                Bytes::from_static(b"x"),
                Flags::new(),
                0,
            )
            .await
            .unwrap();
        assert_eq!(r.uid, 2, "UIDs are never reused");
        assert_eq!(
            s.quota_usage("a@x.org").await.unwrap(),
            QuotaUsage {
                bytes: 1,
                messages: 1
            }
        );
    }

    #[tokio::test]
    async fn store_remembers_expunged_uids_with_their_modseq() {
        let s = MemoryMailStore::new();
        s.list_mailboxes("a@x.org").await.unwrap();
        for _ in 0..4 {
            s.append(
                "a@x.org",
                "INBOX",
                Bytes::from_static(b"m"),
                Flags::new(),
                0,
            )
            .await
            .unwrap();
        }
        let inbox = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        let before = inbox.highest_modseq;
        assert_eq!(
            s.expunged_since("a@x.org", inbox.id, 0).await.unwrap(),
            Some(vec![])
        );
        assert_eq!(
            s.remove("a@x.org", inbox.id, &[2, 3, 99]).await.unwrap(),
            vec![2, 3]
        );
        let after = s.mailbox("a@x.org", "INBOX").await.unwrap().unwrap();
        assert!(after.highest_modseq > before);
        assert_eq!(
            s.expunged_since("a@x.org", inbox.id, before).await.unwrap(),
            Some(vec![2, 3])
        );
        assert_eq!(
            s.expunged_since("a@x.org", inbox.id, after.highest_modseq)
                .await
                .unwrap(),
            Some(vec![])
        );
    }
}
