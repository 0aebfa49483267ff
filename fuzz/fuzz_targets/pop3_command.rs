#![no_main]
//! The POP3 command parser and session never panic: the input is parsed as
//! one command line, then fed line by line to a session with canned
//! directory and store answers.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umail_pop3::fuzz_command(data);
});
