//! # umail-imap
//!
//! An IMAP4rev2 (RFC 9051) and IMAP4rev1 (RFC 3501) server over
//! [`umail_core::MailStore`].
//!
//! * [`codec`]: the sans-IO framer, command parser and response encoder.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod codec;
