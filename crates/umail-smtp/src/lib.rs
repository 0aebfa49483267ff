//! # umail-smtp
//!
//! umail's SMTP server side: MX (`smtp`), submission with STARTTLS
//! (`submission`) and submission over implicit TLS (`submissions`).
//!
//! * [`codec`]: the nom command parser ([`codec::parse_command`]), reply
//!   encoding and the DATA/BDAT body receivers (dot-unstuffing, bare CR/LF
//!   refusal, streaming size bound). Pure and fuzzable.
//! * [`session`]: the sans-IO state machine. Bytes in, replies out, and
//!   [`session::Event`]s for everything that needs the directory, the
//!   store or the filters.
//! * [`policy`]: answers those events with [`umail_core::Services`]:
//!   recipient resolution, quotas, filters, SASL, delivery.
//! * [`server`]: the tokio driver, [`SmtpServer`].
//!
//! Outbound:
//!
//! * [`client`]: the SMTP client (sans-IO reply parser and protocol
//!   helpers, tokio driver [`client::SmtpConnection`]).
//! * [`routing`]: static routes, smart host and MX resolution.
//! * [`dsn`]: RFC 3464 delivery status notifications.
//! * [`dkim`]: DKIM key generation and signing, and where the runner
//!   finds the keys ([`dkim::DkimKeySource`]).
//! * [`delivery`]: the queue runner, [`delivery::QueueRunner`]: takes due
//!   entries from any [`umail_core::QueueStore`], delivers local copies
//!   through the ingest pipeline and the rest over SMTP, retries on
//!   schedule and sends DSNs.
//!
//! See the crate README for RFC coverage, configuration keys and the
//! per-recipient failure policy.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod codec;
pub mod delivery;
pub mod dkim;
pub mod dsn;
pub mod message;
pub mod policy;
pub mod routing;
pub mod server;
pub mod session;

pub use codec::{Command, ParseError, fuzz_command, parse_command};
pub use server::SmtpServer;

/// Which kind of SMTP listener a connection arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerMode {
    /// Port 25: mail for local recipients; relaying only when authenticated
    /// (AUTH is offered only with `auth_on_mx`, after STARTTLS).
    Mx,
    /// Port 587: STARTTLS, then AUTH, required before MAIL (RFC 6409).
    Submission,
    /// Port 465: implicit TLS, AUTH required before MAIL (RFC 8314).
    Submissions,
}

impl ListenerMode {
    /// The listener's configuration name.
    pub fn name(self) -> &'static str {
        match self {
            ListenerMode::Mx => "smtp",
            ListenerMode::Submission => "submission",
            ListenerMode::Submissions => "submissions",
        }
    }
}
