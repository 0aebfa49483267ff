#![no_main]
//! Address and domain parsing never panics, and whatever parses prints
//! back to something that parses to the same value.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umail_core::address::fuzz_address(data);
});
