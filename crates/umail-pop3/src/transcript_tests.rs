//! Byte-transcript tests of the session state machine, with requests
//! performed against the in-memory services (no sockets).

use std::sync::Arc;

use bytes::Bytes;
use umail_core::config::{Pop3Config, Pop3DeleteAction, SecurityConfig};
use umail_core::lockout::AuthLockout;
use umail_core::memory::{MemoryDirectory, MemoryMailStore, MemoryQueue};
use umail_core::store::INBOX;
use umail_core::{ConnectionInfo, FilterChain, MailStore, Protocol, Services};

use crate::server::{Pop3Server, SessionSlot};
use crate::session::{Output, Session};

pub(crate) struct Env {
    pub dir: Arc<MemoryDirectory>,
    pub store: Arc<MemoryMailStore>,
    pub server: Pop3Server,
    pub lockout: Arc<AuthLockout>,
}

pub(crate) const ALICE: &str = "alice@example.com";

impl Env {
    pub fn new(config: Pop3Config) -> Env {
        Env::with_security(
            config,
            SecurityConfig {
                auth_failure_limit: 100,
                ..SecurityConfig::default()
            },
        )
    }

    pub fn with_security(config: Pop3Config, security: SecurityConfig) -> Env {
        let dir = Arc::new(MemoryDirectory::new());
        dir.add_user(ALICE, "secret");
        let store = Arc::new(MemoryMailStore::new());
        let lockout = Arc::new(AuthLockout::new(&security));
        let services = Services {
            directory: dir.clone(),
            store: store.clone(),
            queue: Arc::new(MemoryQueue::new()),
            filter: Arc::new(FilterChain::new()),
            lockout: lockout.clone(),
            hostname: "pop.example.com".to_string(),
        };
        // A TLS acceptor is never used by the harness; `tls_available`
        // comes from this flag instead.
        let server = Pop3Server::new(services, config, None);
        Env {
            dir,
            store,
            server,
            lockout,
        }
    }

    pub async fn deliver(&self, account: &str, message: &[u8]) -> u32 {
        self.store
            .append(
                account,
                INBOX,
                Bytes::copy_from_slice(message),
                Default::default(),
                0,
            )
            .await
            .expect("append")
            .uid
    }

    pub async fn inbox_uids(&self, account: &str) -> Vec<u32> {
        let mb = self.store.mailbox(account, INBOX).await.unwrap().unwrap();
        self.store
            .messages(account, mb.id)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.uid)
            .collect()
    }

    pub fn client(&self, tls_active: bool, tls_available: bool) -> Client<'_> {
        self.client_from("192.0.2.1:40000", tls_active, tls_available)
    }

    pub fn client_from(&self, peer: &str, tls_active: bool, tls_available: bool) -> Client<'_> {
        let info = ConnectionInfo {
            session_id: 1,
            peer: peer.parse().unwrap(),
            local: "192.0.2.2:110".parse().unwrap(),
            listener: "pop3".into(),
        };
        let mut config = self.server.session_config(&info, tls_active);
        config.tls_available = tls_available;
        let session = Session::new(config, self.lockout.clone());
        let mut c = Client {
            env: self,
            session,
            slot: None,
            closed: false,
            tls_started: false,
        };
        let greeting = c.drain_sync();
        assert!(
            greeting.starts_with("+OK umail POP3 server ready <"),
            "{greeting}"
        );
        c
    }
}

pub(crate) struct Client<'a> {
    env: &'a Env,
    pub session: Session,
    slot: Option<SessionSlot>,
    pub closed: bool,
    pub tls_started: bool,
}

impl Client<'_> {
    fn drain_sync(&mut self) -> String {
        let mut out = Vec::new();
        while let Some(o) = self.session.poll_output() {
            match o {
                Output::Data(d) => out.extend_from_slice(&d),
                Output::Message(m) => out.extend_from_slice(&m.to_vec()),
                Output::StartTls => {
                    self.tls_started = true;
                    self.session.handle_tls_established();
                }
                Output::Close => self.closed = true,
            }
        }
        String::from_utf8(out).expect("utf8 output")
    }

    async fn drain(&mut self) -> String {
        while let Some(r) = self.session.poll_request() {
            let reply = self.env.server.execute(r, &mut self.slot).await;
            self.session.handle_reply(reply);
        }
        self.drain_sync()
    }

    /// Sends one line (without CRLF) and returns everything the server wrote.
    pub async fn send(&mut self, line: &[u8]) -> String {
        assert!(!self.closed, "session already closed");
        self.session.handle_line(line);
        self.drain().await
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(line.as_bytes()).await
    }

    pub async fn login(&mut self) {
        assert_eq!(
            self.cmd(&format!("USER {ALICE}")).await,
            "+OK send PASS\r\n"
        );
        let r = self.cmd("PASS secret").await;
        assert!(r.starts_with("+OK maildrop has"), "{r}");
    }

    /// Drops the connection without QUIT.
    pub fn drop_connection(self) {}
}

fn plain_config() -> Pop3Config {
    Pop3Config {
        plaintext_auth_without_tls: true,
        ..Pop3Config::default()
    }
}

const MSG1: &[u8] = b"From: a@example.org\r\nSubject: one\r\n\r\nHello\r\n.dot line\r\nbye\r\n";
const MSG2: &[u8] = b"Subject: two\n\nbare\nlf\n";

async fn env_with_two() -> Env {
    let env = Env::new(plain_config());
    env.deliver(ALICE, MSG1).await;
    env.deliver(ALICE, MSG2).await;
    env
}

#[tokio::test]
async fn full_transaction_transcript() {
    let env = env_with_two().await;
    let mut c = env.client(false, false);
    c.login().await;
    let s1 = MSG1.len();
    let s2 = MSG2.len();
    assert_eq!(c.cmd("STAT").await, format!("+OK 2 {}\r\n", s1 + s2));
    assert_eq!(
        c.cmd("LIST").await,
        format!(
            "+OK 2 messages ({} octets)\r\n1 {s1}\r\n2 {s2}\r\n.\r\n",
            s1 + s2
        )
    );
    assert_eq!(c.cmd("LIST 2").await, format!("+OK 2 {s2}\r\n"));
    assert_eq!(c.cmd("list 3").await, "-ERR no such message\r\n");
    assert_eq!(c.cmd("LIST 0").await, "-ERR no such message\r\n");
    let mb = env.store.mailbox(ALICE, INBOX).await.unwrap().unwrap();
    let v = mb.uid_validity;
    assert_eq!(
        c.cmd("UIDL").await,
        format!("+OK unique-id listing follows\r\n1 {v}.1\r\n2 {v}.2\r\n.\r\n")
    );
    assert_eq!(c.cmd("UIDL 2").await, format!("+OK 2 {v}.2\r\n"));
    // RETR: byte-stuffing of ".dot line".
    assert_eq!(
        c.cmd("RETR 1").await,
        format!(
            "+OK {s1} octets\r\nFrom: a@example.org\r\nSubject: one\r\n\r\nHello\r\n..dot line\r\nbye\r\n.\r\n"
        )
    );
    // Bare LF normalised to CRLF.
    assert_eq!(
        c.cmd("RETR 2").await,
        format!("+OK {s2} octets\r\nSubject: two\r\n\r\nbare\r\nlf\r\n.\r\n")
    );
    assert_eq!(c.cmd("NOOP").await, "+OK\r\n");
    assert_eq!(c.cmd("QUIT").await, "+OK umail POP3 server signing off\r\n");
    assert!(c.closed);
    assert_eq!(env.inbox_uids(ALICE).await, vec![1, 2]);
}

#[tokio::test]
async fn top_variants() {
    let env = env_with_two().await;
    let mut c = env.client(false, false);
    c.login().await;
    assert_eq!(
        c.cmd("TOP 1 0").await,
        "+OK top of message follows\r\nFrom: a@example.org\r\nSubject: one\r\n\r\n.\r\n"
    );
    assert_eq!(
        c.cmd("TOP 1 2").await,
        "+OK top of message follows\r\nFrom: a@example.org\r\nSubject: one\r\n\r\nHello\r\n..dot line\r\n.\r\n"
    );
    assert_eq!(
        c.cmd("TOP 1 100").await,
        "+OK top of message follows\r\nFrom: a@example.org\r\nSubject: one\r\n\r\nHello\r\n..dot line\r\nbye\r\n.\r\n"
    );
    assert_eq!(c.cmd("TOP 3 1").await, "-ERR no such message\r\n");
    assert_eq!(c.cmd("TOP 1").await, "-ERR invalid arguments for TOP\r\n");
}

#[tokio::test]
async fn dele_rset_and_errors() {
    let env = env_with_two().await;
    let mut c = env.client(false, false);
    c.login().await;
    assert_eq!(c.cmd("DELE 1").await, "+OK message 1 deleted\r\n");
    assert_eq!(c.cmd("DELE 1").await, "-ERR message 1 already deleted\r\n");
    assert_eq!(c.cmd("RETR 1").await, "-ERR message 1 already deleted\r\n");
    assert_eq!(c.cmd("LIST 1").await, "-ERR message 1 already deleted\r\n");
    assert_eq!(c.cmd("UIDL 1").await, "-ERR message 1 already deleted\r\n");
    let s2 = MSG2.len();
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {s2}\r\n"));
    assert_eq!(
        c.cmd("LIST").await,
        format!("+OK 1 messages ({s2} octets)\r\n2 {s2}\r\n.\r\n")
    );
    let total = MSG1.len() + s2;
    assert_eq!(
        c.cmd("RSET").await,
        format!("+OK maildrop has 2 messages ({total} octets)\r\n")
    );
    assert_eq!(c.cmd("STAT").await, format!("+OK 2 {total}\r\n"));
    assert_eq!(c.cmd("DELE 2").await, "+OK message 2 deleted\r\n");
    assert_eq!(c.cmd("DELE 0").await, "-ERR no such message\r\n");
    assert_eq!(c.cmd("DELE x").await, "-ERR invalid arguments for DELE\r\n");
    assert_eq!(c.cmd("RETR").await, "-ERR invalid arguments for RETR\r\n");
    assert_eq!(c.cmd("FOO").await, "-ERR unknown command\r\n");
    assert_eq!(c.cmd("").await, "-ERR unknown command\r\n");
    assert_eq!(
        c.cmd("USER x").await,
        "-ERR not allowed after authentication\r\n"
    );
    assert_eq!(
        c.cmd("STLS").await,
        "-ERR not allowed after authentication\r\n"
    );
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK umail POP3 server signing off (1 messages deleted)\r\n"
    );
    assert_eq!(env.inbox_uids(ALICE).await, vec![1]);
}

#[tokio::test]
async fn dropped_connection_deletes_nothing() {
    let env = env_with_two().await;
    let mut c = env.client(false, false);
    c.login().await;
    c.cmd("DELE 1").await;
    c.cmd("DELE 2").await;
    assert_eq!(env.server.sessions_of(ALICE), 1);
    c.drop_connection();
    assert_eq!(env.server.sessions_of(ALICE), 0);
    assert_eq!(env.inbox_uids(ALICE).await, vec![1, 2]);
}

#[tokio::test]
async fn timeout_and_shutdown_delete_nothing() {
    let env = env_with_two().await;
    let mut c = env.client(false, false);
    c.login().await;
    c.cmd("DELE 1").await;
    c.session.handle_timeout();
    assert_eq!(c.drain().await, "-ERR autologout; idle for too long\r\n");
    assert!(c.closed);
    let mut c = env.client(false, false);
    c.login().await;
    c.cmd("DELE 1").await;
    c.session.handle_shutdown();
    assert_eq!(c.drain().await, "-ERR [SYS/TEMP] server shutting down\r\n");
    assert!(c.closed);
    assert_eq!(env.inbox_uids(ALICE).await, vec![1, 2]);
}

#[tokio::test]
async fn wrong_state_commands() {
    let env = env_with_two().await;
    let mut c = env.client(false, false);
    for cmd in [
        "STAT", "LIST", "RETR 1", "DELE 1", "NOOP", "RSET", "TOP 1 1", "UIDL",
    ] {
        assert_eq!(
            c.cmd(cmd).await,
            "-ERR command not valid in this state; log in first\r\n",
            "{cmd}"
        );
    }
    assert!(!c.closed);
    assert_eq!(c.cmd("XYZ").await, "-ERR unknown command\r\n");
    assert_eq!(
        c.cmd("UIDL 1").await,
        "-ERR command not valid in this state; log in first\r\n-ERR too many errors\r\n"
    );
    assert!(c.closed, "10 errors close the session");
    let mut c = env.client(false, false);
    assert_eq!(c.cmd("PASS secret").await, "-ERR USER first\r\n");
    assert_eq!(c.cmd("QUIT").await, "+OK umail POP3 server signing off\r\n");
    assert!(c.closed);
}

#[tokio::test]
async fn too_many_errors_close() {
    let env = Env::new(plain_config());
    let mut c = env.client(false, false);
    for i in 0..crate::session::MAX_ERRORS {
        let r = c.cmd("BOGUS").await;
        if i + 1 < crate::session::MAX_ERRORS {
            assert_eq!(r, "-ERR unknown command\r\n");
        } else {
            assert_eq!(r, "-ERR unknown command\r\n-ERR too many errors\r\n");
        }
    }
    assert!(c.closed);
}

#[tokio::test]
async fn oversized_line_is_an_error_and_session_continues() {
    let env = Env::new(plain_config());
    let mut c = env.client(false, false);
    c.session.handle_line_too_long();
    assert_eq!(c.drain().await, "-ERR line too long\r\n");
    let long = vec![b'A'; crate::codec::MAX_LINE + 10];
    assert_eq!(c.send(&long).await, "-ERR line too long\r\n");
    assert!(
        c.cmd("CAPA")
            .await
            .starts_with("+OK Capability list follows\r\n")
    );
}

#[tokio::test]
async fn capa_before_and_after_tls() {
    let env = Env::new(Pop3Config::default());
    let mut c = env.client(false, true);
    assert_eq!(
        c.cmd("CAPA").await,
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUTF8 USER\r\nSASL SCRAM-SHA-256\r\nSTLS\r\nIMPLEMENTATION umail\r\n.\r\n"
    );
    assert_eq!(
        c.cmd("USER alice@example.com").await,
        "-ERR [AUTH] plaintext authentication disallowed without TLS; use STLS\r\n"
    );
    assert_eq!(
        c.cmd("PASS secret").await,
        "-ERR [AUTH] plaintext authentication disallowed without TLS; use STLS\r\n"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==")
            .await,
        "-ERR [AUTH] plaintext authentication disallowed without TLS; use STLS\r\n"
    );
    assert_eq!(c.cmd("AUTH").await, "+OK\r\nSCRAM-SHA-256\r\n.\r\n");
    assert_eq!(c.cmd("STLS").await, "+OK begin TLS negotiation\r\n");
    assert!(c.tls_started);
    assert_eq!(
        c.cmd("CAPA").await,
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUTF8 USER\r\nUSER\r\nSASL PLAIN SCRAM-SHA-256\r\nIMPLEMENTATION umail\r\n.\r\n"
    );
    assert_eq!(
        c.cmd("STLS").await,
        "-ERR command not permitted when TLS active\r\n"
    );
    c.login().await;
    assert_eq!(
        c.cmd("CAPA").await,
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nUTF8 USER\r\nIMPLEMENTATION umail\r\n.\r\n"
    );
}

#[tokio::test]
async fn stls_unavailable_without_certificate() {
    let env = Env::new(Pop3Config::default());
    let mut c = env.client(false, false);
    assert_eq!(c.cmd("STLS").await, "-ERR TLS is not available\r\n");
    assert!(!c.cmd("CAPA").await.contains("STLS"));
}

#[tokio::test]
async fn stls_forgets_user() {
    let env = Env::new(plain_config());
    let mut c = env.client(false, true);
    assert_eq!(c.cmd("USER alice@example.com").await, "+OK send PASS\r\n");
    assert_eq!(c.cmd("STLS").await, "+OK begin TLS negotiation\r\n");
    assert_eq!(c.cmd("PASS secret").await, "-ERR USER first\r\n");
}

#[tokio::test]
async fn wrong_password_then_lockout() {
    let env = Env::with_security(
        Pop3Config {
            max_auth_failures: 2,
            ..plain_config()
        },
        SecurityConfig {
            auth_failure_limit: 3,
            ..SecurityConfig::default()
        },
    );
    // First connection: two failures close it.
    let mut c = env.client(false, false);
    c.cmd("USER alice@example.com").await;
    assert_eq!(
        c.cmd("PASS wrong").await,
        "-ERR [AUTH] authentication failed\r\n"
    );
    assert!(!c.closed);
    c.cmd("USER alice@example.com").await;
    assert_eq!(
        c.cmd("PASS wrong").await,
        "-ERR [AUTH] authentication failed\r\n"
    );
    assert!(c.closed);
    // Second connection: the third failure from this IP locks it out.
    let mut c = env.client(false, false);
    c.cmd("USER nobody@example.com").await;
    assert_eq!(
        c.cmd("PASS x").await,
        "-ERR [AUTH] authentication failed\r\n"
    );
    assert!(c.closed);
    // Now even the right password is refused.
    let mut c = env.client(false, false);
    c.cmd("USER alice@example.com").await;
    assert_eq!(
        c.cmd("PASS secret").await,
        "-ERR [SYS/TEMP] too many failed logins from your address; try again later\r\n"
    );
    assert!(c.closed);
    // Another IP is not affected.
    let mut c = env.client_from("198.51.100.9:1234", false, false);
    c.login().await;
}

#[tokio::test]
async fn pop3_not_allowed_and_frozen() {
    let env = Env::new(plain_config());
    env.dir
        .update_user(ALICE, |p| p.protocols.retain(|p| *p != Protocol::Pop3));
    let mut c = env.client(false, false);
    c.cmd("USER alice@example.com").await;
    assert_eq!(
        c.cmd("PASS secret").await,
        "-ERR [AUTH] POP3 access is not enabled for this account\r\n"
    );
    assert!(!c.session.is_authenticated());
    env.dir
        .update_user(ALICE, |p| p.status = umail_core::AccountStatus::Frozen);
    let mut c = env.client(false, false);
    c.cmd("USER alice@example.com").await;
    assert_eq!(
        c.cmd("PASS secret").await,
        "-ERR [AUTH] authentication failed\r\n"
    );
    assert!(!c.session.is_authenticated());
}

/// Deterministic mutations of the corpus seeds through the fuzzing entry
/// point: no input may panic the parser or the state machine.
#[test]
fn fuzz_smoke_mutations() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/pop3_command");
    let seeds: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .expect("corpus")
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    assert!(!seeds.is_empty());
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..3000 {
        let mut data = seeds[i % seeds.len()].clone();
        for _ in 0..(next() % 8) {
            let r = next();
            if data.is_empty() {
                data.push(r as u8);
                continue;
            }
            let at = (r >> 8) as usize % data.len();
            match r % 4 {
                0 => data[at] = (r >> 32) as u8,
                1 => data.insert(at, {
                    let alphabet = b"\r\n. *=+";
                    alphabet[(r >> 40) as usize % alphabet.len()]
                }),
                2 => {
                    data.remove(at);
                }
                _ => {
                    let other = &seeds[(r >> 16) as usize % seeds.len()];
                    data.extend_from_slice(other);
                }
            }
        }
        crate::fuzz_command(&data);
    }
}

#[tokio::test]
async fn per_user_session_limit() {
    let env = Env::new(Pop3Config {
        max_sessions_per_user: 2,
        ..plain_config()
    });
    let mut a = env.client(false, false);
    a.login().await;
    let mut b = env.client(false, false);
    b.login().await;
    let mut c = env.client(false, false);
    c.cmd("USER alice@example.com").await;
    assert_eq!(
        c.cmd("PASS secret").await,
        "-ERR [IN-USE] too many sessions for this account\r\n"
    );
    a.cmd("QUIT").await;
    drop(a);
    c.cmd("USER alice@example.com").await;
    assert!(c.cmd("PASS secret").await.starts_with("+OK maildrop has 0"));
    drop(b);
}

#[tokio::test]
async fn concurrent_sessions_and_removed_elsewhere() {
    let env = env_with_two().await;
    let mut a = env.client(false, false);
    a.login().await;
    let mut b = env.client(false, false);
    b.login().await;
    // A new message after login is not in either snapshot.
    env.deliver(ALICE, b"Subject: three\r\n\r\nx\r\n").await;
    assert!(a.cmd("STAT").await.starts_with("+OK 2 "));
    a.cmd("DELE 1").await;
    b.cmd("DELE 1").await;
    b.cmd("DELE 2").await;
    assert_eq!(
        a.cmd("QUIT").await,
        "+OK umail POP3 server signing off (1 messages deleted)\r\n"
    );
    // B marked 1 (already gone: skipped silently) and 2.
    assert!(
        b.cmd("RETR 1")
            .await
            .starts_with("-ERR message 1 already deleted")
    );
    assert_eq!(
        b.cmd("QUIT").await,
        "+OK umail POP3 server signing off (2 messages deleted)\r\n"
    );
    assert_eq!(env.inbox_uids(ALICE).await, vec![3]);
}

#[tokio::test]
async fn retr_of_message_removed_by_another_session() {
    let env = env_with_two().await;
    let mut a = env.client(false, false);
    a.login().await;
    let mb = env.store.mailbox(ALICE, INBOX).await.unwrap().unwrap();
    env.store.remove(ALICE, mb.id, &[1]).await.unwrap();
    assert_eq!(
        a.cmd("RETR 1").await,
        "-ERR message was removed by another session\r\n"
    );
}

#[tokio::test]
async fn delete_to_trash() {
    let env = Env::new(Pop3Config {
        delete_action: Pop3DeleteAction::Trash,
        ..plain_config()
    });
    env.deliver(ALICE, MSG1).await;
    let mut c = env.client(false, false);
    c.login().await;
    c.cmd("DELE 1").await;
    c.cmd("QUIT").await;
    assert!(env.inbox_uids(ALICE).await.is_empty());
    let trash = env.store.mailbox(ALICE, "Trash").await.unwrap().unwrap();
    assert_eq!(trash.messages, 1);
}

#[tokio::test]
async fn auth_plain_and_cancel() {
    let env = Env::new(Pop3Config::default());
    let mut c = env.client(true, false);
    // Initial response.
    let r = c
        .cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==")
        .await;
    assert_eq!(r, "+OK maildrop has 0 messages (0 octets)\r\n");
    // Without initial response, then cancel.
    let mut c = env.client(true, false);
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ \r\n");
    assert_eq!(c.cmd("*").await, "-ERR authentication cancelled\r\n");
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ \r\n");
    assert_eq!(
        c.cmd("AGFsaWNlQGV4YW1wbGUuY29tAHdyb25n").await,
        "-ERR [AUTH] authentication failed\r\n"
    );
    assert_eq!(c.cmd("AUTH PLAIN").await, "+ \r\n");
    assert_eq!(
        c.cmd("not base64!").await,
        "-ERR invalid base64 in authentication response\r\n"
    );
    assert_eq!(
        c.cmd("AUTH X-UNKNOWN").await,
        "-ERR unrecognized authentication type\r\n"
    );
    assert_eq!(
        c.cmd("AUTH CRAM-MD5").await,
        "-ERR unrecognized authentication type\r\n"
    );
    assert_eq!(
        c.cmd("AUTH PLAIN =").await,
        "-ERR [AUTH] authentication failed: malformed SASL message: PLAIN needs authzid NUL authcid NUL password\r\n"
    );
}

fn scram_client_final(
    password: &str,
    client_first_bare: &str,
    server_first: &str,
) -> (String, Vec<u8>) {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    use hmac_sha256::{hmac, pbkdf2};
    let mut salt = Vec::new();
    let mut iter = 0;
    let mut nonce = "";
    for attr in server_first.split(',') {
        if let Some(v) = attr.strip_prefix("s=") {
            salt = B64.decode(v).unwrap();
        } else if let Some(v) = attr.strip_prefix("i=") {
            iter = v.parse().unwrap();
        } else if let Some(v) = attr.strip_prefix("r=") {
            nonce = v;
        }
    }
    let salted = pbkdf2(password.as_bytes(), &salt, iter);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = umail_core::sasl::ScramCredentials::derive(password, &salt, iter).stored_key;
    let without_proof = format!("c=biws,r={nonce}");
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let sig = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
    let server_key = hmac(&salted, b"Server Key");
    let server_sig = hmac(&server_key, auth_message.as_bytes());
    (
        format!("{without_proof},p={}", B64.encode(proof)),
        format!("v={}", B64.encode(server_sig)).into_bytes(),
    )
}

mod hmac_sha256 {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }
    pub fn pbkdf2(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut out = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out);
        out
    }
}

#[tokio::test]
async fn auth_scram_sha256() {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD as B64;
    let env = Env::new(Pop3Config::default());
    let mut c = env.client(false, false);
    let bare = "n=alice@example.com,r=clientnonce123";
    let first = B64.encode(format!("n,,{bare}"));
    let r = c.cmd(&format!("AUTH SCRAM-SHA-256 {first}")).await;
    let challenge = r.strip_prefix("+ ").unwrap().trim_end();
    let server_first = String::from_utf8(B64.decode(challenge).unwrap()).unwrap();
    let (final_msg, expected_v) = scram_client_final("secret", bare, &server_first);
    let r = c.cmd(&B64.encode(final_msg)).await;
    let v = B64
        .decode(r.strip_prefix("+ ").unwrap().trim_end())
        .unwrap();
    assert_eq!(v, expected_v);
    assert_eq!(
        c.cmd("").await,
        "+OK maildrop has 0 messages (0 octets)\r\n"
    );
}

#[tokio::test]
async fn apop_only_with_legacy_secret() {
    use md5::{Digest, Md5};
    let env = Env::new(Pop3Config::default());
    let digest = |ts: &str, secret: &str| -> String {
        let mut h = Md5::new();
        h.update(ts.as_bytes());
        h.update(secret.as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    };
    // No legacy secret: APOP fails even with the password.
    let mut c = env.client(false, false);
    let d = digest(c.session.apop_timestamp(), "secret");
    assert_eq!(
        c.cmd(&format!("APOP {ALICE} {d}")).await,
        "-ERR [AUTH] authentication failed\r\n"
    );
    env.dir.set_legacy_secret(ALICE, "tanstaaf");
    let mut c = env.client(false, false);
    let d = digest(c.session.apop_timestamp(), "tanstaaf");
    assert_eq!(
        c.cmd(&format!("APOP {ALICE} {d}")).await,
        "+OK maildrop has 0 messages (0 octets)\r\n"
    );
    let mut c = env.client(false, false);
    assert_eq!(
        c.cmd(&format!("APOP {ALICE} {}", "0".repeat(32))).await,
        "-ERR [AUTH] authentication failed\r\n"
    );
}

#[tokio::test]
async fn utf8_and_pipelined_lines() {
    let env = Env::new(plain_config());
    env.dir.add_user("张三@example.com", "密码 with space");
    let mut c = env.client(false, false);
    assert_eq!(c.cmd("UTF8").await, "+OK UTF8 enabled\r\n");
    assert_eq!(c.cmd("USER 张三@example.com").await, "+OK send PASS\r\n");
    assert_eq!(
        c.cmd("PASS 密码 with space").await,
        "+OK maildrop has 0 messages (0 octets)\r\n"
    );
    assert_eq!(
        c.cmd("UTF8").await,
        "-ERR not allowed after authentication\r\n"
    );
}
