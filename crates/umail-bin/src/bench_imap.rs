//! `umail bench imap`: IMAP load and IDLE-connection benchmarks.

use anyhow::{Result, bail};
use clap::Args;

/// Options of `umail bench imap`.
#[derive(Debug, Args)]
pub struct ImapBenchArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
}

/// Runs the IMAP benchmark.
pub async fn run(_args: ImapBenchArgs) -> Result<()> {
    bail!("umail bench imap is not available yet")
}
