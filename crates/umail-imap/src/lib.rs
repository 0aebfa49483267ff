//! # umail-imap
//!
//! An IMAP4rev2 (RFC 9051) and IMAP4rev1 (RFC 3501) server over the
//! [`umail_core::MailStore`] and [`umail_core::Directory`] traits.
//!
//! The crate follows the sans-IO shape of the workspace:
//!
//! * [`codec`]: framer (lines, literals, continuation requests, bounds),
//!   command parser and response encoder; no IO. [`codec::fuzz_command`]
//!   is the fuzzing entry point.
//! * [`session`]: the protocol state machine. It takes framed input and
//!   produces output bytes; it calls the store and directory traits but
//!   never a socket.
//! * [`mime`]: BODYSTRUCTURE, ENVELOPE and body sections of stored messages;
//!   [`fuzz_mime`] is the fuzzing entry point, checking the output with
//!   [`grammar`] (the RFC 9051 `body` and `envelope` productions).
//! * [`search`]: SEARCH evaluation on MIME-decoded text (GB2312/GBK/Big5
//!   aware through mail-parser).
//! * [`cache`]: the bounded per-server cache of header summaries that
//!   header-only SEARCH keys are answered from.
//! * [`sort`]: SORT / THREAD ordering and threading (RFC 5256, RFC 5957).
//! * [`server`]: the tokio driver — [`ImapServer::serve_connection`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cache;
pub mod codec;
pub mod grammar;
pub mod mime;
pub mod search;
pub mod server;
pub mod session;
pub mod sort;

pub use mime::fuzz_mime;
pub use server::{ImapServer, ListenerMode};
pub use session::{Action, InputMode, Session, SessionState};
