//! DKIM signing keys, one per domain, in their own table.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::writer::Fail;
use crate::{AdminError, Store};

/// domain (lower case) → JSON [`DkimKeyRecord`].
const DKIM_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("dkim_keys");

/// A stored DKIM key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimKeyRecord {
    /// The signing domain.
    pub domain: String,
    /// The selector published in DNS.
    pub selector: String,
    /// Key algorithm (`rsa`).
    pub algorithm: String,
    /// Private key, DER (PKCS#1 for RSA).
    pub private_key: Vec<u8>,
    /// Unix time of creation.
    pub created: i64,
}

impl Store {
    /// Stores (or replaces) a domain's DKIM key.
    pub async fn put_dkim_key(&self, record: DkimKeyRecord) -> Result<(), AdminError> {
        self.write(AdminError::storage, move |ctx| {
            let key = record.domain.to_ascii_lowercase();
            ctx.put_json(DKIM_KEYS, key.as_str(), &record)?;
            Ok::<_, Fail<AdminError>>(())
        })
        .await
    }

    /// A domain's DKIM key, if it has one.
    pub async fn dkim_key(&self, domain: &str) -> Result<Option<DkimKeyRecord>, AdminError> {
        let key = domain.to_ascii_lowercase();
        // Through the writer so the table exists even before the first key.
        self.write(AdminError::storage, move |ctx| {
            let r: Option<DkimKeyRecord> = ctx.r().get_json(DKIM_KEYS, key.as_str())?;
            Ok::<_, Fail<AdminError>>(r)
        })
        .await
    }

    /// Every stored DKIM key.
    pub async fn dkim_keys(&self) -> Result<Vec<DkimKeyRecord>, AdminError> {
        self.write(AdminError::storage, move |ctx| {
            let mut out = Vec::new();
            ctx.r().scan_all(DKIM_KEYS, |_, v| {
                out.push(crate::db::dec(v)?);
                Ok(true)
            })?;
            Ok::<_, Fail<AdminError>>(out)
        })
        .await
    }

    /// Deletes a domain's DKIM key; true if there was one.
    pub async fn remove_dkim_key(&self, domain: &str) -> Result<bool, AdminError> {
        let key = domain.to_ascii_lowercase();
        self.write(AdminError::storage, move |ctx| {
            let had = ctx.del(DKIM_KEYS, key.as_str())?;
            Ok::<_, Fail<AdminError>>(had)
        })
        .await
    }
}
