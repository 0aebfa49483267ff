//! # umail-store
//!
//! The embedded default storage of umail: one [redb] database holding the
//! directory (domains, domain aliases, users, aliases, mailing lists,
//! departments, administrators), every account's mailboxes and messages,
//! and the outbound queue.
//!
//! [`Store`] implements the three storage traits of `umail-core`:
//! [`Directory`](umail_core::Directory), [`MailStore`](umail_core::MailStore)
//! and [`QueueStore`](umail_core::QueueStore), and adds the administration
//! API the CLI and the admin HTTP API call (`add_domain`, `add_user`,
//! `add_alias`, `add_list`, `add_department`, `grant_role`, ...).
//!
//! ## Durability
//!
//! Every method that changes state returns only after the change is
//! committed with `Durability::Immediate`. A single writer thread owns the
//! write path: concurrent callers send their operations over a channel, and
//! the writer runs every pending operation in one write transaction and
//! commits once (group commit), then answers each caller and publishes
//! change-feed events. Readers use redb read transactions (snapshots) and
//! never wait for the writer.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use umail_store::{NewDomain, NewUser, Store};
//! let store = Store::open("/var/lib/umail/umail.redb")?;
//! store.add_domain(NewDomain::new("example.com".parse()?)).await?;
//! store
//!     .add_user(NewUser::new("alice@example.com".parse()?, "s3cret-pass"))
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The tables and the invariants that hold between them are listed in the
//! crate's README and checked by [`Store::check_invariants`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backup;
mod check;
pub mod collection;
mod db;
mod directory;
pub mod dkim;
mod mail;
mod queue;
mod writer;

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;

use redb::{Database, ReadTransaction, ReadableDatabase};

pub use collection::{
    CollectLimits, DomainPopConfig, DomainPopInfo, FetchOutcome, FetchStatus, RemoteAccountConfig,
    RemoteAccountInfo, RemotePassword, RemoteServer, TlsMode,
};
pub use directory::{
    AliasInfo, DepartmentInfo, DepartmentUpdate, DomainInfo, DomainStats, DomainUpdate, EVERYONE,
    NewDepartment, NewDomain, NewUser, UserInfo, UserUpdate,
};
pub use mail::MAX_MESSAGE_SIZE;
pub use queue::MAX_ATTEMPT_LOG;

use db::DbErr;
use writer::{Ctx, Fail, Feeds, Job};

/// Why the database could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process (usually a running server) has the database open.
    #[error("the database is in use by another process (is the server running?)")]
    Locked,
    /// The file could not be created or read.
    #[error("cannot open database: {0}")]
    Io(#[from] std::io::Error),
    /// The database was written by an incompatible version.
    #[error("database format needs an upgrade: {0}")]
    Upgrade(String),
    /// Any other storage failure (corruption, failed repair, ...).
    #[error("storage failure: {0}")]
    Storage(String),
}

/// Errors of the administration API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    /// The named domain, user, alias, list, department or role does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Something with that name already exists.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The request is malformed or contradicts the directory (bad name,
    /// alias to itself, unknown department, ...).
    #[error("invalid: {0}")]
    Invalid(String),
    /// A limit (domain max users, max lists, total quota) would be exceeded.
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// Refused because other things depend on it (users in a domain, child
    /// departments); see the method's documentation for how to force it.
    #[error("in use: {0}")]
    InUse(String),
    /// The storage back end failed; nothing was changed.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl AdminError {
    fn storage(e: DbErr) -> AdminError {
        AdminError::Storage(e.0)
    }
}

/// The embedded umail store. Cheap to clone: clones share one database and
/// one writer thread. The database is closed when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    sender: Option<mpsc::Sender<Box<dyn Job>>>,
    writer: Option<JoinHandle<()>>,
    feeds: Arc<Feeds>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel ends the writer loop after the pending batch;
        // joining makes sure the file is closed when the last clone is gone,
        // so the same process can open it again right away.
        self.sender.take();
        if let Some(handle) = self.writer.take()
            && handle.thread().id() != std::thread::current().id()
        {
            let _ = handle.join();
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// How the database file is opened: see [`Store::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Memory the page cache may grow to, bytes. Default 256 MiB. More
    /// keeps more of a large store's indexes and hot messages in memory;
    /// the operating system's file cache serves the rest.
    pub cache_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 256 * 1024 * 1024,
        }
    }
}

impl StoreOptions {
    /// Default options with the given page-cache size.
    pub fn with_cache_bytes(cache_bytes: usize) -> StoreOptions {
        StoreOptions { cache_bytes }
    }
}

impl Store {
    /// [`Services`](umail_core::Services) backed entirely by this store
    /// (directory, mail store and queue), with an empty filter chain and an
    /// authentication lockout configured from `security`: the embedded
    /// default `umail serve` runs on. Replace any field to plug in your own
    /// directory or filters.
    pub fn services(
        &self,
        hostname: impl Into<String>,
        security: &umail_core::config::SecurityConfig,
    ) -> umail_core::Services {
        umail_core::Services {
            directory: Arc::new(self.clone()),
            store: Arc::new(self.clone()),
            queue: Arc::new(self.clone()),
            filter: Arc::new(umail_core::FilterChain::new()),
            lockout: Arc::new(umail_core::lockout::AuthLockout::new(security)),
            hostname: hostname.into(),
        }
    }

    /// Opens the database file at `path`, creating it (and its parent
    /// directory) when missing. A database already opened by another process
    /// — or by another `Store` in this process — fails with
    /// [`OpenError::Locked`]. After a crash, redb repairs the file on open.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, OpenError> {
        Store::open_with(path, &StoreOptions::default())
    }

    /// [`Store::open`] with explicit options.
    pub fn open_with(path: impl AsRef<Path>, options: &StoreOptions) -> Result<Store, OpenError> {
        let path = path.as_ref();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent)?;
        }
        let db = redb::Builder::new()
            .set_cache_size(options.cache_bytes)
            .create(path)
            .map_err(open_error)?;
        Store::start(db)
    }

    /// Opens a fresh database held in memory (for tests and examples).
    pub fn open_in_memory() -> Result<Store, OpenError> {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(open_error)?;
        Store::start(db)
    }

    fn start(db: Database) -> Result<Store, OpenError> {
        let init = (|| -> Result<(), DbErr> {
            let tx = db.begin_write()?;
            db::create_tables(&tx)?;
            tx.commit()?;
            Ok(())
        })();
        init.map_err(|e| OpenError::Storage(e.0))?;
        let db = Arc::new(db);
        let feeds = Arc::new(Feeds::default());
        let (sender, receiver) = mpsc::channel();
        let writer = {
            let db = Arc::clone(&db);
            let feeds = Arc::clone(&feeds);
            std::thread::Builder::new()
                .name("umail-store-writer".into())
                .spawn(move || writer::writer_loop(db, receiver, feeds))?
        };
        Ok(Store {
            inner: Arc::new(Inner {
                db,
                sender: Some(sender),
                writer: Some(writer),
                feeds,
            }),
        })
    }

    /// Begins a read snapshot.
    fn read(&self) -> Result<ReadTransaction, DbErr> {
        Ok(self.inner.db.begin_read()?)
    }

    /// Runs a larger read (whole mailboxes, message bodies) on tokio's
    /// blocking pool so it does not hold up an async worker thread.
    async fn read_blocking<T, F>(&self, f: F) -> Result<T, DbErr>
    where
        T: Send + 'static,
        F: FnOnce(db::Tx<'_>) -> Result<T, DbErr> + Send + 'static,
    {
        let db = Arc::clone(&self.inner.db);
        tokio::task::spawn_blocking(move || {
            let tx = db.begin_read()?;
            f(db::Tx::Read(&tx))
        })
        .await
        .map_err(|e| DbErr(format!("read task failed: {e}")))?
    }

    /// Sends an operation to the writer and waits for its committed answer.
    async fn write<T, E, F>(&self, to_err: fn(DbErr) -> E, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static,
        F: FnMut(&mut Ctx<'_>) -> Result<T, Fail<E>> + Send + 'static,
    {
        let (job, rx) = writer::job(to_err, f);
        let sent = match &self.inner.sender {
            Some(sender) => sender.send(job).is_ok(),
            None => false,
        };
        if !sent {
            return Err(to_err(DbErr("the store is closed".into())));
        }
        match rx.await {
            Ok(result) => result,
            Err(_) => Err(to_err(DbErr("the store writer stopped".into()))),
        }
    }
}

/// What [`Store::backup`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupStats {
    /// Table entries copied.
    pub entries: u64,
    /// Size of the backup file in bytes.
    pub bytes: u64,
}

impl Store {
    /// Writes a consistent copy of the whole database (one read snapshot,
    /// taken without stopping writers) to a new database file at `dest`,
    /// committed durably. `dest` must not exist. To restore, stop the
    /// server and put the backup file in place of the database file (it is
    /// an ordinary store file; [`Store::check_invariants`] can verify it).
    pub async fn backup(&self, dest: impl AsRef<Path>) -> Result<BackupStats, AdminError> {
        let dest = dest.as_ref().to_path_buf();
        if dest.exists() {
            return Err(AdminError::AlreadyExists(dest.display().to_string()));
        }
        let db = Arc::clone(&self.inner.db);
        tokio::task::spawn_blocking(move || -> Result<BackupStats, AdminError> {
            let fail = |e: DbErr| AdminError::Storage(e.0);
            let snapshot = db.begin_read().map_err(|e| fail(e.into()))?;
            if let Some(parent) = dest.parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| AdminError::Storage(e.to_string()))?;
            }
            let copy = Database::create(&dest).map_err(|e| AdminError::Storage(e.to_string()))?;
            let tx = copy.begin_write().map_err(|e| fail(e.into()))?;
            let entries = db::copy_all(&snapshot, &tx).map_err(fail)?;
            tx.commit().map_err(|e| fail(e.into()))?;
            drop(copy);
            let bytes = std::fs::metadata(&dest)
                .map(|m| m.len())
                .map_err(|e| AdminError::Storage(e.to_string()))?;
            tracing::info!(target: "admin", dest = %dest.display(), entries, bytes, "backup written");
            Ok(BackupStats { entries, bytes })
        })
        .await
        .map_err(|e| AdminError::Storage(format!("backup task failed: {e}")))?
    }
}

fn open_error(e: redb::DatabaseError) -> OpenError {
    match e {
        redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch => {
            OpenError::Locked
        }
        redb::DatabaseError::UpgradeRequired(v) => {
            OpenError::Upgrade(format!("file format version {v}"))
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(io)) => OpenError::Io(io),
        other => OpenError::Storage(other.to_string()),
    }
}

/// Splits an account identifier (`local@domain`, lower case) into the
/// `(domain, local)` key used by the directory tables.
pub(crate) fn split_account(account: &str) -> Option<(&str, &str)> {
    let (local, domain) = account.rsplit_once('@')?;
    if local.is_empty() || domain.is_empty() {
        return None;
    }
    Some((domain, local))
}
