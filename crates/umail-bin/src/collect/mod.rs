//! Remote mail collection in the binary: per-user MultiPOP and per-domain
//! DomainPOP accounts, their schedule, `umail import pop3`, and
//! `umail bench pop3`.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use umail_core::config::Config;
use umail_core::{Services, Shutdown};
use umail_store::Store;

use crate::admin::{AdminReply, Output};

/// `umail import ...`
#[derive(Debug, Subcommand)]
pub enum ImportCmd {
    /// Copy every message of a remote POP3 mailbox into a local account.
    Pop3(ImportPop3Args),
}

/// `umail import pop3` options.
#[derive(Debug, Args)]
pub struct ImportPop3Args {
    /// The remote server, `host:port`.
    #[arg(long)]
    pub from: Option<String>,
}

/// `umail fetch ...`: remote accounts collected on a schedule.
#[derive(Debug, Subcommand)]
pub enum FetchCmd {
    /// List configured remote accounts.
    List,
}

/// `umail bench pop3` options.
#[derive(Debug, Args)]
pub struct Pop3BenchArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
}

/// A collection request carried by the admin socket and HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "collect_op", rename_all = "snake_case")]
pub enum CollectRequest {
    /// List remote accounts.
    List,
}

/// Turns a `umail fetch` command into a request.
pub fn fetch_request(cmd: FetchCmd) -> Result<CollectRequest> {
    Ok(match cmd {
        FetchCmd::List => CollectRequest::List,
    })
}

/// Handles a collection request against the store.
pub async fn execute(_store: &Store, request: CollectRequest) -> AdminReply {
    match request {
        CollectRequest::List => Ok(Output::Table {
            columns: vec!["account".into(), "remote".into()],
            rows: Vec::new(),
        }),
    }
}

/// Runs `umail import ...`.
pub async fn run_import(cmd: ImportCmd, _config: &Config) -> Result<()> {
    match cmd {
        ImportCmd::Pop3(_) => bail!("umail import pop3 is not available yet"),
    }
}

/// Runs `umail bench pop3`.
pub async fn bench_pop3(_args: Pop3BenchArgs) -> Result<()> {
    bail!("umail bench pop3 is not available yet")
}

/// Starts the background collector of `umail serve`.
pub fn spawn_scheduler(_store: Store, _services: Services, _shutdown: Shutdown) {}
