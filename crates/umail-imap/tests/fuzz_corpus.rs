//! Replays every file of `fuzz/corpus/imap_command` through the codec's
//! fuzzing entry point and every file of `fuzz/corpus/imap_mime` through
//! [`umail_imap::fuzz_mime`] (BODYSTRUCTURE/ENVELOPE checked against the
//! RFC 9051 grammar), so that crashes found by fuzzing stay fixed.

use std::path::PathBuf;

#[test]
fn replay_imap_command_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/imap_command");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("readable seed");
            umail_imap::codec::fuzz_command(&data);
            count += 1;
        }
    }
    assert!(count >= 15, "expected at least 15 seeds, found {count}");
}

#[test]
fn well_formed_seeds_parse() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/imap_command");
    for name in [
        "fetch_sections",
        "search_nested",
        "list_extended",
        "append_date",
    ] {
        let data = std::fs::read(dir.join(name)).expect("seed present");
        umail_imap::codec::parse_command(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn replay_imap_mime_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/imap_mime");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("readable seed");
            let run = std::panic::catch_unwind(|| umail_imap::fuzz_mime(&data));
            assert!(run.is_ok(), "{} fails", path.display());
            count += 1;
        }
    }
    assert!(count >= 20, "expected at least 20 seeds, found {count}");
}

/// The checker is not vacuous on the seeds: their output has the parts
/// the seeds were written for, and damaged output is refused.
#[test]
fn mime_seeds_produce_checked_structures() {
    use umail_imap::codec::ResponseBuf;
    use umail_imap::{grammar, mime};
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/imap_mime");
    let bodystructure = |name: &str| {
        let data = std::fs::read(dir.join(name)).expect("seed present");
        let mut r = ResponseBuf::new();
        mime::write_body_structure(&mut r, &data, &mime::parse(&data), true);
        r.take()
    };
    let nested = bodystructure("nested");
    grammar::check_body(&nested, true, false).expect("nested seed");
    let text = String::from_utf8_lossy(&nested);
    assert!(text.contains("\"MESSAGE\" \"RFC822\""), "{text}");
    assert!(text.contains("\"ALTERNATIVE\""), "{text}");
    assert!(grammar::check_body(&nested[..nested.len() - 1], true, false).is_err());
    // Beyond the depth limit, parts stay valid: the innermost message is
    // shown as an opaque part, not as a message without an envelope.
    let deep = bodystructure("deep_message");
    grammar::check_body(&deep, true, false).expect("deep seed");
    assert!(String::from_utf8_lossy(&deep).contains("\"APPLICATION\" \"OCTET-STREAM\""));
    // NULs in headers are dropped, never sent as literal8.
    let nul = bodystructure("nul_headers");
    assert!(!nul.contains(&0) && !nul.contains(&b'~'));
}

mod common;

/// Every seed, fed to a logged-in session with a selected mailbox, must
/// leave the session answering commands (no panic, no wedge).
#[tokio::test]
async fn corpus_through_a_live_session() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/imap_command");
    let env = common::env();
    for entry in std::fs::read_dir(&dir).expect("corpus directory exists") {
        let path = entry.expect("dir entry").path();
        let data = std::fs::read(&path).expect("readable seed");
        let mut c = common::Client::new(&env, common::plaintext_config());
        c.output();
        c.login("alice@example.com", "secret").await;
        common::append(&mut c, "INBOX", "", &common::sample_message("seed", "x")).await;
        c.send("s SELECT INBOX\r\n").await;
        c.send_bytes(&data).await;
        if c.closed {
            continue;
        }
        // Leave any IDLE or AUTHENTICATE exchange, then check the session answers.
        c.send("DONE\r\n").await;
        let mut r = c.send("zz NOOP\r\n").await;
        if !r.contains("zz ") {
            // The seed announced a literal longer than what followed: the
            // session is rightly waiting for its data. Complete it.
            c.send(&format!("{}\r\n", "x".repeat(200))).await;
            r = c.send("zz NOOP\r\n").await;
        }
        assert!(
            r.contains("zz OK") || r.contains("zz BAD"),
            "{}: {r}",
            path.display()
        );
    }
}
