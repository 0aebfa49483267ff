//! Outbound delivery in the binary: the queue runner, `umail queue ...`,
//! `umail domain dkim ...` and `umail bench delivery`.

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use umail_core::config::Config;
use umail_core::{Services, Shutdown};
use umail_store::Store;

use crate::admin::{AdminReply, Output};

/// `umail queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueCmd {
    /// List queued messages.
    List,
}

/// `umail domain dkim ...`
#[derive(Debug, Subcommand)]
pub enum DkimCmd {
    /// Show a domain's DKIM key record.
    Show {
        /// The domain.
        domain: String,
    },
}

/// `umail bench delivery` options.
#[derive(Debug, Args)]
pub struct DeliveryBenchArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 20)]
    pub connections: usize,
}

/// A delivery request carried by the admin socket and HTTP API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "delivery_op", rename_all = "snake_case")]
pub enum DeliveryRequest {
    /// List the queue.
    QueueList,
    /// Show DKIM.
    DkimShow {
        /// The domain.
        domain: String,
    },
}

/// Turns `umail queue ...` into a request.
pub fn queue_request(cmd: QueueCmd) -> Result<DeliveryRequest> {
    Ok(match cmd {
        QueueCmd::List => DeliveryRequest::QueueList,
    })
}

/// Turns `umail domain dkim ...` into a request.
pub fn dkim_request(cmd: DkimCmd) -> Result<DeliveryRequest> {
    Ok(match cmd {
        DkimCmd::Show { domain } => DeliveryRequest::DkimShow { domain },
    })
}

/// Handles a delivery request against the store.
pub async fn execute(_store: &Store, request: DeliveryRequest) -> AdminReply {
    match request {
        DeliveryRequest::QueueList => Ok(Output::Table {
            columns: vec!["id".into(), "state".into()],
            rows: Vec::new(),
        }),
        DeliveryRequest::DkimShow { domain } => Err(format!("no DKIM key for {domain}")),
    }
}

/// Starts the queue runner of `umail serve`.
pub fn spawn_runner(_config: &Config, _store: Store, _services: Services, _shutdown: Shutdown) {}

/// Runs `umail bench delivery`.
pub async fn bench(_args: DeliveryBenchArgs) -> Result<()> {
    bail!("umail bench delivery is not available yet")
}
