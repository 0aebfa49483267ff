//! An SMTP receiver with a custom `Filter`: refuses executable attachments
//! at DATA, tags mail from outside the company, and files it into a folder.
//!
//! ```sh
//! cargo run --example custom_filter -- 127.0.0.1:2525
//! ```
//!
//! Mail for `staff@corp.example` is accepted; try attaching a `.exe`.

use std::sync::Arc;

use async_trait::async_trait;
use mail_parser::MimeHeaders;
use tokio::net::TcpListener;
use umail_core::config::{SecurityConfig, SmtpConfig};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::net::{next_session_id, shutdown_channel};
use umail_core::{
    Action, ConnectionInfo, Envelope, Filter, FilterChain, MessageData, Services, SessionInfo,
    Verdict,
};
use umail_smtp::{ListenerMode, SmtpServer};

/// The company's own policy.
struct CorpPolicy {
    internal_domain: String,
}

const BLOCKED_EXTENSIONS: &[&str] = &[".exe", ".scr", ".bat", ".cmd", ".js", ".vbs"];

#[async_trait]
impl Filter for CorpPolicy {
    fn name(&self) -> &str {
        "corp-policy"
    }

    async fn on_data(
        &self,
        _session: &SessionInfo,
        envelope: &Envelope,
        message: MessageData<'_>,
    ) -> Verdict {
        for attachment in message.parsed.attachments() {
            let name = attachment
                .attachment_name()
                .unwrap_or_default()
                .to_lowercase();
            if BLOCKED_EXTENSIONS.iter().any(|ext| name.ends_with(ext)) {
                return Verdict::reject(554, "5.7.1", format!("attachment {name} is not allowed"));
            }
        }
        let external = envelope
            .reverse_path
            .address()
            .is_none_or(|a| a.domain().as_str() != self.internal_domain);
        if external {
            return Verdict::with_actions(vec![
                Action::TagSubject("[External]".to_string()),
                Action::AddHeader {
                    name: "X-Corp-External".to_string(),
                    value: "yes".to_string(),
                },
            ]);
        }
        Verdict::pass()
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bind = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:2525".to_string());
    let directory = Arc::new(MemoryDirectory::new());
    directory.add_user("staff@corp.example", "unused-here");

    let mut chain = FilterChain::new();
    chain.push(Arc::new(CorpPolicy {
        internal_domain: "corp.example".to_string(),
    }));
    let services = Services {
        directory,
        store: Arc::new(MemoryMailStore::new()),
        queue: Arc::new(MemoryQueue::new()),
        filter: Arc::new(chain),
        lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
        hostname: "mx.corp.example".to_string(),
    };
    let server = Arc::new(SmtpServer::new(services, SmtpConfig::default(), None));
    let listener = TcpListener::bind(&bind).await?;
    println!("SMTP (MX) on {}", listener.local_addr()?);
    let (_trigger, shutdown) = shutdown_channel();
    loop {
        let (stream, peer) = listener.accept().await?;
        let info = ConnectionInfo {
            session_id: next_session_id(),
            peer,
            local: stream.local_addr()?,
            listener: "smtp".to_string(),
        };
        let (server, shutdown) = (Arc::clone(&server), shutdown.clone());
        tokio::spawn(async move {
            server
                .serve_connection(stream, info, ListenerMode::Mx, shutdown)
                .await;
        });
    }
}
