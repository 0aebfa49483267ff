//! The whole umail server (SMTP, submission, IMAP, POP3, each with TLS; the
//! queue runner; the admin API) started from an application's own `main`,
//! with users from the application's own directory: here an in-memory one,
//! and mailboxes in memory too. The outbound queue stays on the embedded
//! store in the data directory.
//!
//! ```sh
//! cargo run --example embedded_server -- [umail.toml]
//! ```
//!
//! It prints every listener, then serves until Ctrl-C. The user is
//! `demo@example.com` with the password `demo-password`.

use std::sync::Arc;

use async_trait::async_trait;
use umail_core::config::Config;
use umail_core::memory::{MemoryDirectory, MemoryMailStore};
use umail_core::{Action, Envelope, Filter, MessageData, SessionInfo, Verdict};

/// The application marks every message it received, whatever way it came.
struct StampFilter;

#[async_trait]
impl Filter for StampFilter {
    fn name(&self) -> &str {
        "stamp"
    }

    async fn on_data(&self, _: &SessionInfo, _: &Envelope, m: MessageData<'_>) -> Verdict {
        Verdict::with_actions(vec![Action::AddHeader {
            name: "X-Received-By-App".into(),
            value: m.source.name().into(),
        }])
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config: Config = match std::env::args().nth(1) {
        Some(path) => toml::from_str(&std::fs::read_to_string(path)?)?,
        None => Config::default(),
    };

    let directory = Arc::new(MemoryDirectory::new());
    directory.add_user("demo@example.com", "demo-password");

    let server = umail_bin::ServerBuilder::new(config)
        .directory(directory)
        .mail_store(Arc::new(MemoryMailStore::new()))
        .filter(Arc::new(StampFilter))
        .start()
        .await?;
    for (name, addr) in server.listeners() {
        println!("listening {name} {addr}");
    }
    println!("ready");
    server.run_until_signal().await;
    Ok(())
}
