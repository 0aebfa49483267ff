#![no_main]
//! The SMTP client's reply parser and EHLO capability parser never panic on
//! whatever a remote server sends.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    umail_smtp::client::reply::fuzz_reply(data);
});
