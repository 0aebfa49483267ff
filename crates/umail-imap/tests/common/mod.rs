//! Shared test helpers: in-memory services and a transcript client that
//! drives a `Session` the way the tokio driver does.
#![allow(dead_code)]

use std::sync::Arc;

use umail_core::config::{ImapConfig, SecurityConfig};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::net::AccountSessions;
use umail_core::{ConnectionInfo, FilterChain, Services};
use umail_imap::cache::HeaderCache;
use umail_imap::codec::Framer;
use umail_imap::{InputMode, Session};

pub struct Env {
    pub services: Services,
    pub directory: Arc<MemoryDirectory>,
    pub store: Arc<MemoryMailStore>,
    /// Shared by every client of the environment, as a server shares it.
    pub cache: Arc<HeaderCache>,
    /// Logged-in sessions per account, shared like `cache`.
    pub sessions: Arc<AccountSessions>,
}

pub fn env() -> Env {
    let directory = Arc::new(MemoryDirectory::new());
    directory.add_user("alice@example.com", "secret");
    directory.add_user("bob@example.com", "hunter2");
    let store = Arc::new(MemoryMailStore::new());
    let services = Services {
        directory: directory.clone(),
        store: store.clone(),
        queue: Arc::new(MemoryQueue::new()),
        filter: Arc::new(FilterChain::new()),
        lockout: Arc::new(AuthLockout::new(&SecurityConfig::default())),
        hostname: "mail.example.com".into(),
    };
    Env {
        services,
        directory,
        store,
        cache: Arc::new(HeaderCache::default()),
        sessions: AccountSessions::new(),
    }
}

pub fn info() -> ConnectionInfo {
    ConnectionInfo {
        session_id: 1,
        peer: "192.0.2.10:40000".parse().unwrap(),
        local: "192.0.2.1:143".parse().unwrap(),
        listener: "imap".into(),
    }
}

pub fn plaintext_config() -> ImapConfig {
    ImapConfig {
        plaintext_auth_without_tls: true,
        ..ImapConfig::default()
    }
}

pub struct Client {
    pub session: Session,
    pub framer: Framer,
    pub closed: bool,
}

impl Client {
    pub fn new(env: &Env, config: ImapConfig) -> Client {
        let mut session = Session::new(env.services.clone(), config, info(), true, false)
            .with_header_cache(env.cache.clone())
            .with_account_sessions(env.sessions.clone());
        session.greeting();
        let framer = Framer::new(session.framer_limits());
        Client {
            session,
            framer,
            closed: false,
        }
    }

    /// Output produced so far (the greeting after `new`).
    pub fn output(&mut self) -> String {
        String::from_utf8_lossy(&self.session.take_output()).into_owned()
    }

    /// Sends raw bytes and returns everything the server wrote.
    pub async fn send_bytes(&mut self, data: &[u8]) -> String {
        self.framer.push(data);
        loop {
            let action = match self.session.input_mode() {
                InputMode::Command => match self.framer.next_event() {
                    Some(ev) => self.session.handle_frame(ev).await,
                    None => break,
                },
                InputMode::AuthLine => match self.framer.next_line() {
                    Some(Ok(l)) => self.session.handle_auth_line(&l).await,
                    Some(Err(())) => self.session.handle_auth_line(b"*").await,
                    None => break,
                },
                InputMode::IdleLine => match self.framer.next_line() {
                    Some(Ok(l)) => self.session.handle_idle_line(&l).await,
                    Some(Err(())) => self.session.handle_idle_line(b"").await,
                    None => break,
                },
            };
            if action == umail_imap::Action::Close {
                self.closed = true;
                break;
            }
        }
        self.output()
    }

    pub async fn send(&mut self, line: &str) -> String {
        self.send_bytes(line.as_bytes()).await
    }

    /// Logs in as alice (plaintext config), returns the response.
    pub async fn login(&mut self, user: &str, pass: &str) -> String {
        self.send(&format!("l1 LOGIN {user} {pass}\r\n")).await
    }
}

pub fn sample_message(subject: &str, body: &str) -> String {
    format!(
        "From: Bob <bob@example.org>\r\nTo: alice@example.com\r\nSubject: {subject}\r\nDate: Mon, 5 Feb 2024 10:00:00 +0800\r\nMessage-ID: <{subject}@example.org>\r\n\r\n{body}\r\n"
    )
}

/// APPENDs a message with a synchronizing literal via the client.
pub async fn append(c: &mut Client, mailbox: &str, flags: &str, msg: &str) -> String {
    let flags = if flags.is_empty() {
        String::new()
    } else {
        format!("{flags} ")
    };
    let first = c
        .send(&format!("ap APPEND {mailbox} {flags}{{{}}}\r\n", msg.len()))
        .await;
    assert!(first.starts_with("+ "), "{first}");
    c.send(&format!("{msg}\r\n")).await
}
