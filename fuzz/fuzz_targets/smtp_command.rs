#![no_main]
//! SMTP command parsing and the DATA receiver never panic; the receiver only
//! ever ends at a real CRLF.CRLF.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umail_smtp::fuzz_command(data);
});
