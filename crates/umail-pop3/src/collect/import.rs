//! `import`: copies a remote POP3 mailbox into a local account once
//! (migration from an old server).
//!
//! Every message goes through the ingest pipeline as
//! [`Source::Import`]. The UIDLs already imported are kept in the
//! account's seen sets ([`CollectionJob::Import`]), so running the import
//! again copies only new messages. Without `leave_on_server` each message
//! is deleted from the old server once it is durably stored here; a
//! message the local side refuses stays there and is named in the report.

use umail_core::collection::RemoteServer;
use umail_core::ingest::{LocalTarget, Source};
use umail_core::{Address, Resolution};

use super::fetch::{
    CollectError, FetchOptions, FetchReport, ProgressFn, RemoteAccount, fetch_multipop,
};
use super::scheduler::{CollectionJob, Collector};
use super::settings::CollectSettings;

/// One remote mailbox to import.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// The old server and login.
    pub server: RemoteServer,
    /// The local account.
    pub to: Address,
    /// The local folder.
    pub folder: String,
    /// Keep the messages on the old server.
    pub leave_on_server: bool,
    /// Larger messages are skipped and left on the old server.
    pub max_message_size: u64,
}

impl Collector {
    /// Imports one remote mailbox into a local account, calling `progress`
    /// after each new message. Refused messages stay on the old server and
    /// are listed in [`FetchReport::refused`]; an import runs again tries
    /// them again.
    pub async fn import(
        &self,
        request: &ImportRequest,
        progress: Option<&ProgressFn<'_>>,
    ) -> Result<FetchReport, CollectError> {
        let principal = match self
            .ingest()
            .services()
            .directory
            .resolve(&request.to)
            .await?
        {
            Resolution::Local(p) => p,
            _ => return Err(CollectError::UnknownAccount(request.to.to_string())),
        };
        let target = LocalTarget {
            mailbox: Some(request.folder.clone()),
            ..LocalTarget::of(&principal)
        };
        let remote = RemoteAccount::from_settings(
            &request.server,
            &CollectSettings {
                leave_on_server: request.leave_on_server,
                delete_after_days: 0,
                max_message_size: request.max_message_size,
                max_messages_per_fetch: 0,
                timeout: self.settings().remote_timeout,
            },
        )?;
        let job = CollectionJob::Import {
            account: target.account.clone(),
        };
        let _running = self.claim(format!("{}/{}", job.key(), remote.source_key()))?;
        let state = self.accounts().state(&job);
        let options = FetchOptions {
            source: Source::Import,
            earlier_refusals: &[],
            retry_refused_now: true,
            progress,
        };
        let remote_name = request.server.display();
        tracing::info!(target: "pop3", to = %target.account, remote = %remote_name, "import started");
        let result =
            fetch_multipop(&remote, self.ingest(), &target, state.as_ref(), &options).await;
        match &result {
            Ok(r) => {
                tracing::info!(target: "pop3", to = %target.account, remote = %remote_name, result = %r.summary(), "import done")
            }
            Err(e) => {
                tracing::warn!(target: "pop3", to = %target.account, remote = %remote_name, error = %e, "import failed")
            }
        }
        result
    }
}
