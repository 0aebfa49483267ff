//! Remote collection: MultiPOP (one remote mailbox into one local
//! mailbox), DomainPOP (one remote catch-all mailbox routed to local users
//! by its headers), `import` (a one-time copy from an old server), and the
//! [`Collector`] that schedules them.
//!
//! Every collected or imported message goes through the ingest pipeline
//! ([`umail_core::Ingest`]) as [`Source::Collection`] or
//! [`Source::Import`], so the filter chain sees
//! it like any other mail. Its envelope: the reverse path of its
//! `Return-Path` field (else null), the local targets as recipients.
//!
//! Nothing refused is lost. A message is marked collected (in a
//! [`CollectionState`], by UIDL) and, without "leave on server", deleted
//! from the remote server only after the pipeline reported it durable for
//! every local target (or discarded by a filter on purpose). A message the
//! local side does not take — mailbox full, no local recipient and no
//! DomainPOP fallback, refused by a filter, a mail loop; temporary or
//! permanent — stays on the server, unmarked, and is listed in
//! [`FetchReport::refused`] with its reason. The next fetch tries it again:
//! an operator's fetch at once, a scheduled one after a wait that doubles
//! per refusal ([`REFUSED_RETRY_FIRST_SECS`] up to
//! [`REFUSED_RETRY_MAX_SECS`]), so a message that cannot be taken is not
//! downloaded every few minutes. After a "mailbox full" refusal a MultiPOP
//! fetch stops downloading (the rest is deferred). A DomainPOP message
//! refused for some of its recipients remembers who already has it, and
//! the next attempt delivers only to the others.
//!
//! With deletion on, the remote `DELE`s take effect at `QUIT`; a message
//! whose deletion was lost is deleted (not collected again) on the next
//! fetch.

mod fetch;
mod import;
mod routing;
mod scheduler;
mod settings;
mod state;

/// Re-exported so implementors of [`CollectionState`] and
/// [`CollectionAccounts`] need not depend on `async-trait` themselves.
pub use async_trait::async_trait;
pub use fetch::{
    CollectError, FetchOptions, FetchProgress, FetchReport, ProgressFn, REFUSED_RETRY_FIRST_SECS,
    REFUSED_RETRY_MAX_SECS, RemoteAccount, fetch_domainpop, fetch_multipop, return_path_of,
};
pub use import::ImportRequest;
pub use routing::{
    DomainPopRouting, ROUTING_HEADERS, addresses_in, candidate_addresses, candidate_addresses_in,
    header_values, route,
};
pub use scheduler::{
    CollectionAccounts, CollectionJob, Collector, CollectorSettings, MemoryCollectionAccounts,
    Trigger,
};
pub use settings::{CollectSettings, tls_connector};
pub use state::{CollectionState, MemoryCollectionState, StateError};
/// The plain settings and status types collection works on, shared with
/// the stores that keep them.
pub use umail_core::collection::{
    CollectLimits, DomainPopConfig, DomainPopInfo, FetchOutcome, FetchStatus, RefusedMessage,
    RemoteAccountConfig, RemoteAccountInfo, RemotePassword, RemoteServer, TlsMode,
};

#[cfg(doc)]
use umail_core::Source;
