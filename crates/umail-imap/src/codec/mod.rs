//! The sans-IO IMAP codec: framing, command parsing and response encoding.
//!
//! * [`Framer`] turns a byte stream into complete commands (lines plus
//!   inline literals) and says when a synchronizing literal needs a `+`
//!   continuation request.
//! * [`parse_command`] parses one complete command.
//! * [`ResponseBuf`] writes responses with the session's string rules.
//! * [`utf7`] converts mailbox names for IMAP4rev1 clients.

mod encode;
mod framer;
mod parser;
mod types;
pub mod utf7;

pub use encode::{ResponseBuf, Status, flag_list};
pub use framer::{FrameEvent, Framer, FramerLimits};
pub use parser::{MAX_SEARCH_DEPTH, ParseError, parse_command, parse_date_time};
pub use types::*;

/// The fuzzing entry point: frames `data` as client input and parses every
/// complete command found. Never panics.
pub fn fuzz_command(data: &[u8]) {
    let mut framer = Framer::new(FramerLimits {
        max_line: 8192,
        max_literal: 65536,
        append_limit: 65536,
    });
    framer.push(data);
    while let Some(ev) = framer.next_event() {
        if let FrameEvent::Command(cmd) = ev {
            let _ = parse_command(&cmd);
        }
    }
    // The parser alone, on the raw bytes.
    let _ = parse_command(data);
}
