//! DKIM signing keys, one per domain, in their own table.

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::db::{DbErr, Tx};
use crate::writer::Fail;
use crate::{AdminError, Store};

/// domain (lower case) → JSON [`DkimKeyRecord`].
pub(crate) const DKIM_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("dkim_keys");

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

/// The table is created by the first `put_dkim_key`; before that a read
/// transaction cannot open it, which simply means "no keys".
fn missing_table(e: &DbErr) -> bool {
    e.0.contains("does not exist")
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
        let tx = self.read().map_err(AdminError::storage)?;
        match Tx::Read(&tx).get_json(DKIM_KEYS, key.as_str()) {
            Ok(r) => Ok(r),
            Err(e) if missing_table(&e) => Ok(None),
            Err(e) => Err(AdminError::storage(e)),
        }
    }

    /// Every stored DKIM key (a read transaction: the runner calls it often).
    pub async fn dkim_keys(&self) -> Result<Vec<DkimKeyRecord>, AdminError> {
        let tx = self.read().map_err(AdminError::storage)?;
        let mut out = Vec::new();
        match Tx::Read(&tx).scan_all(DKIM_KEYS, |_, v| {
            out.push(crate::db::dec(v)?);
            Ok(true)
        }) {
            Ok(()) => Ok(out),
            Err(e) if missing_table(&e) => Ok(Vec::new()),
            Err(e) => Err(AdminError::storage(e)),
        }
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
