//! An IMAP server over the in-memory store: the smallest complete embedding
//! of `umail-imap`.
//!
//! ```sh
//! cargo run --example imap_memory -- 127.0.0.1:1143
//! # then, for example:
//! python3 -c "import imaplib; m = imaplib.IMAP4('127.0.0.1', 1143); \
//!   m.enable('UTF8=ACCEPT') if False else None; print(m.capability())"
//! ```
//!
//! There is no TLS here, so plaintext LOGIN is enabled explicitly; a real
//! deployment passes a `tokio_rustls::TlsAcceptor` instead of `None`.
//! The demo account is `demo@example.com` / `demo-password`.

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpListener;
use umail_core::config::{ImapConfig, SecurityConfig};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::net::{next_session_id, shutdown_channel};
use umail_core::{ConnectionInfo, FilterChain, Flag, Flags, MailStore, Services};
use umail_imap::{ImapServer, ListenerMode};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:1143".to_string());

    let directory = Arc::new(MemoryDirectory::new());
    directory.add_user("demo@example.com", "demo-password");
    let store = Arc::new(MemoryMailStore::new());
    // A welcome message so the client has something to show.
    store
        .append(
            "demo@example.com",
            "INBOX",
            Bytes::from_static(
                b"From: umail <postmaster@example.com>\r\nTo: demo@example.com\r\n\
                  Subject: Welcome\r\n\r\nThis mailbox lives in memory.\r\n",
            ),
            Flags::from([Flag::Flagged]),
            umail_core::unix_now(),
        )
        .await?;

    let services = Services {
        directory,
        store,
        queue: Arc::new(MemoryQueue::new()),
        filter: Arc::new(FilterChain::new()),
        lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
        hostname: "imap.example.com".to_string(),
    };
    let config = ImapConfig {
        plaintext_auth_without_tls: true,
        ..ImapConfig::default()
    };
    let server = Arc::new(ImapServer::new(services, config, None));

    let listener = TcpListener::bind(&bind).await?;
    println!(
        "IMAP on {}; log in as demo@example.com / demo-password",
        listener.local_addr()?
    );
    let (trigger, shutdown) = shutdown_channel();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                trigger.trigger();
                return Ok(());
            }
            accepted = listener.accept() => {
                let (stream, peer) = accepted?;
                let info = ConnectionInfo {
                    session_id: next_session_id(),
                    peer,
                    local: stream.local_addr()?,
                    listener: "imap".to_string(),
                };
                let (server, shutdown) = (Arc::clone(&server), shutdown.clone());
                tokio::spawn(async move {
                    server.serve_connection(stream, info, ListenerMode::Imap, shutdown).await;
                });
            }
        }
    }
}
