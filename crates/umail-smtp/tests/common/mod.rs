//! Shared fixtures: in-memory services with a small directory, and a
//! transcript harness that runs a session plus its policy without sockets.
#![allow(dead_code)]

use std::sync::Arc;

use umail_core::config::{SecurityConfig, SmtpConfig};
use umail_core::directory::{ListMember, ListPolicy, MailingList};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::{
    Address, ConnectionInfo, DomainStatus, Filter, FilterChain, MailStore, Quota, Services, TlsInfo,
};
use umail_smtp::ListenerMode;
use umail_smtp::policy::Policy;
use umail_smtp::session::{Event, Session, SessionConfig};

pub const HOST: &str = "mx.example.com";

/// The services and direct handles on the in-memory back ends.
pub struct World {
    pub services: Services,
    pub directory: Arc<MemoryDirectory>,
    pub store: Arc<MemoryMailStore>,
    pub queue: Arc<MemoryQueue>,
}

pub fn addr(s: &str) -> Address {
    s.parse().expect("valid address")
}

/// example.com with alice, bob, carol (quota), frozen; alias sales; private
/// list team (alice may post); public list all; disabled.example domain.
pub fn world_with(filter: Option<Arc<dyn Filter>>, security: SecurityConfig) -> World {
    let directory = Arc::new(MemoryDirectory::new());
    directory.add_domain("example.com");
    directory.add_user("alice@example.com", "alice-pw");
    directory.add_user("bob@example.com", "bob-pw");
    directory.add_user("carol@example.com", "carol-pw");
    directory.add_user("frozen@example.com", "frozen-pw");
    directory.update_user("frozen@example.com", |p| {
        p.status = umail_core::AccountStatus::Frozen
    });
    directory.add_alias(
        "sales@example.com",
        &[
            "alice@example.com",
            "bob@example.com",
            "partner@remote.example",
        ],
    );
    directory.add_alias("alice.smith@example.com", &["alice@example.com"]);
    directory.add_alias("loop1@example.com", &["loop2@example.com"]);
    directory.add_alias(
        "loop2@example.com",
        &["loop1@example.com", "bob@example.com"],
    );
    directory.add_list(MailingList {
        address: addr("team@example.com"),
        name: "Team".into(),
        policy: ListPolicy::Private,
        members: vec![
            ListMember {
                address: addr("alice@example.com"),
                can_send: true,
                can_receive: true,
            },
            ListMember {
                address: addr("bob@example.com"),
                can_send: false,
                can_receive: true,
            },
        ],
    });
    directory.add_domain("disabled.example");
    directory.add_user("dan@disabled.example", "pw");
    directory.set_domain_status("disabled.example", DomainStatus::Disabled);
    let store = Arc::new(MemoryMailStore::new());
    let queue = Arc::new(MemoryQueue::new());
    let filter: Arc<dyn Filter> = filter.unwrap_or_else(|| Arc::new(FilterChain::new()));
    let services = Services {
        directory: directory.clone(),
        store: store.clone(),
        queue: queue.clone(),
        filter,
        lockout: Arc::new(AuthLockout::new(&security)),
        hostname: HOST.into(),
    };
    World {
        services,
        directory,
        store,
        queue,
    }
}

pub fn world() -> World {
    world_with(None, SecurityConfig::default())
}

impl World {
    /// Messages in `account`'s `mailbox`, oldest first.
    pub async fn mailbox(&self, account: &str, mailbox: &str) -> Vec<Vec<u8>> {
        let Some(mb) = self.store.mailbox(account, mailbox).await.expect("store") else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for m in self.store.messages(account, mb.id).await.expect("messages") {
            let c = self
                .store
                .message_content(account, mb.id, m.uid)
                .await
                .expect("content");
            out.push(c.expect("present").to_vec());
        }
        out
    }

    pub async fn inbox(&self, account: &str) -> Vec<Vec<u8>> {
        self.mailbox(account, "INBOX").await
    }

    /// Gives `account` a quota in both the directory and the store.
    pub fn set_quota(&self, account: &str, quota: Quota) {
        self.directory.update_user(account, |p| p.quota = quota);
        self.store.set_quota(account, quota);
    }
}

pub fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_128_GCM_SHA256".into(),
    }
}

/// A session and its policy, driven from byte strings.
pub struct Harness {
    pub session: Session,
    pub policy: Policy,
    pub world: World,
}

impl Harness {
    pub fn new(mode: ListenerMode, smtp: SmtpConfig) -> Harness {
        Harness::with_world(world(), mode, smtp)
    }

    pub fn with_world(world: World, mode: ListenerMode, smtp: SmtpConfig) -> Harness {
        let config = SessionConfig {
            hostname: HOST.into(),
            mode,
            smtp,
            starttls: true,
            implicit_tls: (mode == ListenerMode::Submissions).then(tls_info),
        };
        let conn = ConnectionInfo {
            session_id: 7,
            peer: "192.0.2.10:40000".parse().expect("addr"),
            local: "192.0.2.1:25".parse().expect("addr"),
            listener: mode.name().into(),
        };
        Harness {
            policy: Policy::new(world.services.clone(), &config.smtp),
            session: Session::new(config, conn),
            world,
        }
    }

    /// Runs events until the session needs input; returns the output.
    pub async fn run(&mut self) -> String {
        while let Some(event) = self.session.poll_event() {
            let unhandled = self
                .policy
                .handle(&mut self.session, event)
                .await
                .expect("api");
            if let Some(Event::StartTls) = unhandled {
                self.session
                    .handle_tls_result(Some(tls_info()))
                    .expect("tls pending");
            }
        }
        String::from_utf8_lossy(&self.session.poll_output().unwrap_or_default()).into_owned()
    }

    /// Connects and returns the greeting.
    pub async fn start(&mut self) -> String {
        self.run().await
    }

    /// Sends bytes, returns every reply produced.
    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) -> String {
        self.session.handle_input(bytes.as_ref());
        self.run().await
    }

    /// Greets and sends EHLO; returns the EHLO reply.
    pub async fn ehlo(&mut self) -> String {
        let g = self.start().await;
        assert!(g.starts_with("220 "), "{g}");
        self.send("EHLO client.example\r\n").await
    }
}

/// Reply codes of a transcript, in order.
pub fn codes(out: &str) -> Vec<String> {
    out.split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| l[..3].to_string())
        .collect()
}
