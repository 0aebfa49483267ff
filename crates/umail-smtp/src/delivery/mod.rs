//! Outbound delivery: the queue runner that takes due entries from a
//! [`QueueStore`](umail_core::QueueStore), delivers them and records every
//! attempt durably.
//!
//! [`QueueRunner`] works over [`Services`] only, so an integrator's own
//! queue, directory and store work with it. Per entry, the recipients still
//! to deliver are grouped by domain:
//!
//! * **Local domains** go through the ingest pipeline
//!   ([`Ingest::ingest`] with [`Source::QueueRetry`](umail_core::Source)):
//!   the delivery stage of the filter chain decides for each copy, and the
//!   pipeline's [`RecipientOutcome`](umail_core::RecipientOutcome) becomes
//!   the recipient's status (stored → delivered, deferred → deferred with
//!   the reply, refused → failed with the reply).
//! * **Every other domain** gets one SMTP transaction for all its
//!   recipients, over the hosts [`Router`] names, DKIM-signed with the key
//!   a [`DkimKeySource`] holds for the `From:` domain.
//!
//! After each group the entry is written back, so a crash repeats at most
//! the transaction in flight. Retries follow `retry_intervals_secs`; after
//! `max_queue_age_secs` the rest fail with `5.4.7`. DSNs (RFC 3464: failed,
//! delayed, delivered/relayed per RFC 3461 NOTIFY) are system mail: they
//! enter through [`Ingest::ingest`] with [`Source::System`](umail_core::Source),
//! so they meet the filter chain, a local sender gets one at once and a
//! remote one is queued by the pipeline.
//!
//! ```no_run
//! # async fn start(services: umail_core::Services, config: umail_core::config::Config) {
//! use umail_smtp::delivery::QueueRunner;
//! let runner = QueueRunner::from_config(services, &config).expect("routing");
//! let task = runner.spawn(umail_core::Shutdown::never());
//! # drop(task);
//! # }
//! ```

mod runner;

use std::sync::Arc;

use umail_core::config::{Config, DeliveryConfig};
use umail_core::ingest::{Ingest, IngestSettings};
use umail_core::{Services, Shutdown};

use crate::dkim::DkimKeySource;
use crate::routing::{Router, RouterConfigError};

pub use runner::{DKIM_CACHE, MAX_SCHEDULING_WINDOW, POLL};

/// The outbound queue runner, configured and not yet started.
///
/// Build it with [`QueueRunner::new`] (or [`QueueRunner::from_config`]),
/// adjust it with the `with_*` methods, then [`spawn`](QueueRunner::spawn)
/// it or [`run`](QueueRunner::run) it in a task of your own. One runner per
/// queue: two runners over the same [`QueueStore`](umail_core::QueueStore)
/// would deliver the same entries twice.
pub struct QueueRunner {
    ingest: Ingest,
    router: Router,
    config: DeliveryConfig,
    dkim: Option<Arc<dyn DkimKeySource>>,
}

impl std::fmt::Debug for QueueRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueRunner")
            .field("router", &self.router)
            .field("config", &self.config)
            .field("dkim", &self.dkim.is_some())
            .finish_non_exhaustive()
    }
}

impl QueueRunner {
    /// A runner over `services` that routes with `router` and follows
    /// `config` (`[delivery]`). Local deliveries and DSNs go through a
    /// pipeline with [`IngestSettings::default`]; mail is sent unsigned
    /// until [`with_dkim_keys`](QueueRunner::with_dkim_keys).
    pub fn new(services: Services, router: Router, config: DeliveryConfig) -> QueueRunner {
        QueueRunner {
            ingest: Ingest::new(services, IngestSettings::default()),
            router,
            config,
            dkim: None,
        }
    }

    /// The runner a whole server configuration describes: routing from
    /// `[delivery]` and `[dns]` ([`Router::from_config`]), the pipeline
    /// settings `[smtp]` implies ([`IngestSettings::from_smtp`]).
    pub fn from_config(
        services: Services,
        config: &Config,
    ) -> Result<QueueRunner, RouterConfigError> {
        let router = Router::from_config(&config.delivery, &config.dns)?;
        Ok(QueueRunner::new(services, router, config.delivery.clone())
            .with_ingest_settings(IngestSettings::from_smtp(&config.smtp)))
    }

    /// Delivers locally (and sends DSNs) through `ingest` and uses its
    /// services for everything else, e.g. to share one pipeline with the
    /// SMTP server.
    pub fn with_ingest(mut self, ingest: Ingest) -> QueueRunner {
        self.ingest = ingest;
        self
    }

    /// Runs the pipeline with `settings` (loop detection, quota replies).
    pub fn with_ingest_settings(mut self, settings: IngestSettings) -> QueueRunner {
        self.ingest = Ingest::new(self.ingest.services().clone(), settings);
        self
    }

    /// Signs outbound mail with the keys `keys` holds (re-read at most
    /// every [`DKIM_CACHE`]).
    pub fn with_dkim_keys(mut self, keys: Arc<dyn DkimKeySource>) -> QueueRunner {
        self.dkim = Some(keys);
        self
    }

    /// The services the runner works on.
    pub fn services(&self) -> &Services {
        self.ingest.services()
    }

    /// Runs until `shutdown` is signalled. Deliveries in flight when it is
    /// go on in their own tasks until they finish (each writes its entry
    /// back), unless the runtime stops first; nothing is lost either way.
    pub async fn run(self, shutdown: Shutdown) {
        let runner = Arc::new(runner::Runner::new(
            self.ingest,
            self.router,
            self.config,
            self.dkim,
        ));
        runner.run(shutdown).await;
    }

    /// Starts [`run`](QueueRunner::run) on the current tokio runtime.
    pub fn spawn(self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run(shutdown))
    }
}
