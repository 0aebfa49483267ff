//! The `Directory` trait: who exists, who may log in, where mail for an address goes.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::address::{Address, Domain};
use crate::model::{DomainStatus, Principal};
use crate::sasl::ScramCredentials;

/// Errors a directory back end reports. Protocol crates turn every variant
/// into a temporary failure (`451`/`NO [UNAVAILABLE]`/`-ERR [SYS/TEMP]`):
/// a directory that cannot answer must never be read as "user unknown".
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The back end is unreachable or failed; retry later.
    #[error("directory unavailable: {0}")]
    Unavailable(String),
    /// Any other back-end error.
    #[error("directory error: {0}")]
    Other(String),
}

/// Where mail for a recipient address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// A local account (after domain-alias rewriting).
    Local(Principal),
    /// An address alias: deliver to each target (local or remote).
    Alias(Vec<Address>),
    /// A mailing list.
    List(MailingList),
    /// The address exists but may not receive mail now.
    Unavailable(Unavailability),
    /// The domain is local but the address is unknown.
    Unknown,
    /// The domain is not hosted here.
    NotLocal,
}

/// Why an existing address may not receive mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unavailability {
    /// The account is frozen.
    FrozenAccount,
    /// The domain is disabled.
    DisabledDomain,
    /// The domain has expired.
    ExpiredDomain,
}

/// Who may post to a mailing list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ListPolicy {
    /// Only members with send permission may post.
    #[default]
    Private,
    /// Anyone may post.
    Public,
}

/// A member of a mailing list with its permissions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListMember {
    /// The member's address (local or remote).
    pub address: Address,
    /// The member may post to the list.
    pub can_send: bool,
    /// The member receives list mail.
    pub can_receive: bool,
}

/// A mailing list, fully expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailingList {
    /// The list address.
    pub address: Address,
    /// Display name.
    pub name: String,
    /// Posting policy.
    pub policy: ListPolicy,
    /// Members.
    pub members: Vec<ListMember>,
}

impl MailingList {
    /// True when `sender` may post to the list under its policy.
    pub fn may_post(&self, sender: Option<&Address>) -> bool {
        match self.policy {
            ListPolicy::Public => true,
            ListPolicy::Private => sender.is_some_and(|s| {
                let key = s.lookup_key();
                self.members
                    .iter()
                    .any(|m| m.can_send && m.address.lookup_key() == key)
            }),
        }
    }

    /// The addresses that receive list mail.
    pub fn receivers(&self) -> impl Iterator<Item = &Address> {
        self.members
            .iter()
            .filter(|m| m.can_receive)
            .map(|m| &m.address)
    }
}

/// Per-domain settings the protocol crates need at run time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DomainSettings {
    /// The domain.
    pub domain: Domain,
    /// Effective status (an expired expiry date reads as `Expired`).
    pub status: DomainStatus,
    /// Largest message accepted for this domain in bytes (0 = the server limit).
    pub max_message_size: u64,
}

/// The directory of domains, accounts, aliases and lists.
///
/// # Contract for implementors
///
/// * Lookups take addresses in any case; implementations compare with
///   [`Address::lookup_key`] and domains in their canonical ASCII form.
/// * Domain aliases are applied by the directory: `resolve` on
///   `bob@old.example` with `old.example → new.example` returns what
///   `bob@new.example` resolves to.
/// * Results may be cached by callers for the duration of one protocol
///   transaction (one SMTP envelope, one IMAP command) and no longer; an
///   implementation may cache internally as long as administrative changes
///   become visible within a few seconds.
/// * Errors mean "cannot answer now": callers reply with a temporary failure.
/// * Passwords never leave the directory: [`Directory::verify_password`]
///   checks them, and SCRAM receives only salted verifiers.
#[async_trait]
pub trait Directory: Send + Sync {
    /// Checks a plaintext password (from PLAIN, LOGIN, USER/PASS, IMAP LOGIN)
    /// for `username` (a full address, or a configured login name).
    /// Returns the principal when the password matches and the account is
    /// enabled; `None` for an unknown user, a wrong password or a frozen
    /// account (callers must not tell these apart to the client).
    async fn verify_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<Principal>, DirectoryError>;

    /// The principal for a login name, without checking credentials (used
    /// after a SCRAM or CRAM-MD5 exchange has proven the secret).
    async fn principal(&self, username: &str) -> Result<Option<Principal>, DirectoryError>;

    /// SCRAM-SHA-256 verifiers for a login name, if the account has them.
    async fn scram_credentials(
        &self,
        username: &str,
    ) -> Result<Option<ScramCredentials>, DirectoryError> {
        let _ = username;
        Ok(None)
    }

    /// The legacy shared secret used by CRAM-MD5 and APOP. Only accounts an
    /// operator explicitly gave one have it; the default is none, which
    /// disables those mechanisms for the account.
    async fn legacy_secret(&self, username: &str) -> Result<Option<String>, DirectoryError> {
        let _ = username;
        Ok(None)
    }

    /// Where mail for `address` goes.
    async fn resolve(&self, address: &Address) -> Result<Resolution, DirectoryError>;

    /// True when `domain` (or a domain alias of it) is hosted here.
    async fn is_local_domain(&self, domain: &Domain) -> Result<bool, DirectoryError>;

    /// Settings of a hosted domain (`None` when not hosted).
    async fn domain_settings(
        &self,
        domain: &Domain,
    ) -> Result<Option<DomainSettings>, DirectoryError> {
        let _ = domain;
        Ok(None)
    }

    /// True when `principal` may use `from` as its envelope sender: by
    /// default only its own address; implementations add its aliases.
    async fn may_send_as(
        &self,
        principal: &Principal,
        from: &Address,
    ) -> Result<bool, DirectoryError> {
        Ok(principal.address.lookup_key() == from.lookup_key())
    }
}
