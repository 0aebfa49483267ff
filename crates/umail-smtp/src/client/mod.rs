//! The SMTP client: what the queue runner uses to hand mail to other
//! servers.
//!
//! * [`reply`]: sans-IO reply parser (multiline replies, enhanced codes).
//! * [`protocol`]: sans-IO capability parsing, command encoding, dot
//!   stuffing and the pre-flight checks (SIZE, SMTPUTF8, BINARYMIME).
//! * [`connection`]: the tokio driver, [`SmtpConnection`]: EHLO with HELO
//!   fallback, STARTTLS (opportunistic, required or implicit) with a
//!   per-route certificate policy, AUTH PLAIN/LOGIN, PIPELINING, CHUNKING,
//!   DSN parameters, per-recipient outcomes and the RFC 5321 §4.5.3.2
//!   timeouts.

pub mod connection;
pub mod protocol;
pub mod reply;

pub use connection::{
    ClientError, ClientSettings, RcptOutcome, SmtpConnection, Timeouts, TlsPolicy,
};
pub use protocol::Capabilities;
pub use reply::{ReplyParser, ServerReply};
