//! Fuzzes "arbitrary MIME in → BODYSTRUCTURE/ENVELOPE out": no panic, and
//! the output must match the RFC 9051 `body` and `envelope` grammar
//! (`umail_imap::fuzz_mime` panics when it does not).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umail_imap::fuzz_mime(data);
});
