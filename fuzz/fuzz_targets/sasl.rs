#![no_main]
//! Feeding arbitrary client messages to every SASL mechanism never panics.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umail_core::sasl::fuzz_exchange(data);
});
