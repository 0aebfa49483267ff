//! Replays every file of `fuzz/corpus/imap_command` through the codec's
//! fuzzing entry point, so that crashes found by fuzzing stay fixed.

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
