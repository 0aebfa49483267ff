//! # umail-pop3
//!
//! A POP3 server (RFC 1939 with CAPA, RESP-CODES and AUTH-RESP-CODE from
//! RFC 2449/3206, STLS from RFC 2595, SASL AUTH from RFC 5034, UTF8 from
//! RFC 6856) over the [`umail_core::MailStore`] and
//! [`umail_core::Directory`] traits.
//!
//! The crate follows the sans-IO shape of the workspace:
//!
//! * [`codec`]: line framing, the command parser ([`codec::parse_command`]
//!   is the fuzzing entry point), response encoding and the byte-stuffing
//!   [`codec::MessageEncoder`];
//! * [`session`]: the state machine ([`session::Session`]): `handle_*` for
//!   input, `poll_*` for requests to the directory/store and for output;
//! * [`server`]: the thin tokio driver ([`Pop3Server`]), whose every write
//!   goes through one [`writer::ResponseWriter`] that keeps status lines
//!   and message bodies in order;
//! * [`client`]: a POP3 client (sans-IO response parsing plus a tokio
//!   driver with implicit TLS or `STLS`);
//! * [`collect`]: MultiPOP, DomainPOP and `import` over that client,
//!   through the ingest pipeline, with UIDL tracking in a
//!   [`collect::CollectionState`], nothing refused ever deleted from the
//!   source, and the scheduler ([`collect::Collector`]) over a
//!   [`collect::CollectionAccounts`].
//!
//! The maildrop is INBOX. A session sees a snapshot of INBOX taken at
//! login; `DELE` only marks, and the marked messages are removed (or moved
//! to Trash) at `QUIT`. Any number of sessions (up to
//! `max_sessions_per_user`) may be open at once: there is no lock to wedge.
//! UIDL is `<uidvalidity>.<uid>`, the IMAP identity of the message.
//!
//! ```no_run
//! # async fn demo(services: umail_core::Services, stream: tokio::net::TcpStream,
//! #               info: umail_core::ConnectionInfo, shutdown: umail_core::Shutdown) {
//! use umail_pop3::{ListenerMode, Pop3Server};
//! let server = Pop3Server::new(services, Default::default(), None);
//! server.serve_connection(stream, info, ListenerMode::Pop3, shutdown).await;
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod collect;
pub mod server;
pub mod session;
pub mod writer;

#[cfg(test)]
mod transcript_tests;

pub use codec::{Command, ParseError, parse_command};
pub use server::{ListenerMode, Pop3Server};
pub use session::Session;

/// Fuzzing entry point: parses `data` as one command line, then feeds it,
/// split into lines, to a [`Session`] whose requests get canned answers
/// (password `pw`, a three-message maildrop). No input may panic.
#[doc(hidden)]
pub fn fuzz_command(data: &[u8]) {
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::Arc;

    use session::{Output, Reply, Request, SessionConfig, Snapshot, SnapshotEntry};
    use umail_core::config::{Pop3DeleteAction, SecurityConfig};
    use umail_core::lockout::AuthLockout;

    let _ = parse_command(data);
    let Ok(address) = umail_core::Address::parse("fuzz@example.com") else {
        return;
    };
    let principal = umail_core::Principal {
        address,
        display_name: String::new(),
        quota: Default::default(),
        protocols: vec![umail_core::Protocol::Pop3],
        status: umail_core::AccountStatus::Enabled,
        department: None,
        roles: Vec::new(),
    };
    let config = SessionConfig {
        hostname: "fuzz.example".into(),
        peer: IpAddr::V4(Ipv4Addr::LOCALHOST),
        tls_active: data.first().is_some_and(|b| b & 1 == 1),
        tls_available: true,
        plaintext_auth_without_tls: true,
        max_auth_failures: 3,
        delete_action: Pop3DeleteAction::Expunge,
    };
    let lockout = Arc::new(AuthLockout::new(&SecurityConfig::default()));
    let mut session = Session::new(config, lockout);
    let mut reader = codec::LineReader::new(codec::MAX_LINE);
    reader.push(data);
    while let Some(line) = reader.next_line() {
        match line {
            codec::Line::Complete(l) => session.handle_line(&l),
            codec::Line::TooLong => session.handle_line_too_long(),
        }
        while let Some(request) = session.poll_request() {
            let reply = match request {
                Request::VerifyPassword { password, .. } => {
                    Reply::Principal(Ok((password == "pw").then(|| principal.clone())))
                }
                Request::Principal { .. } => Reply::Principal(Ok(Some(principal.clone()))),
                Request::ScramCredentials { .. } => Reply::ScramCredentials(Ok(Some(
                    umail_core::sasl::ScramCredentials::derive("pw", b"salt", 1),
                ))),
                Request::LegacySecret { .. } => Reply::LegacySecret(Ok(Some("pw".into()))),
                Request::OpenMaildrop { .. } => Reply::Maildrop(Ok(Snapshot {
                    mailbox: 1,
                    uid_validity: 7,
                    messages: (1..=3).map(|uid| SnapshotEntry { uid, size: 40 }).collect(),
                })),
                Request::Fetch { .. } => Reply::Content(Ok(Some(bytes::Bytes::from_static(
                    b"Subject: x\n\n.line\r\nbody\n.",
                )))),
                Request::Commit { uids, .. } => Reply::Committed(Ok(uids)),
            };
            session.handle_reply(reply);
        }
        while let Some(output) = session.poll_output() {
            if let Output::Message(m) = output {
                m.for_each(drop);
            }
        }
        if session.is_closed() {
            break;
        }
    }
}
