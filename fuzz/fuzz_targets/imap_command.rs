//! Fuzzes the IMAP framer and command parser: any bytes, no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umail_imap::codec::fuzz_command(data);
});
