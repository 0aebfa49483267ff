//! Replays every file of `fuzz/corpus/smtp_command` and `smtp_reply`
//! through the fuzzing entry points, so that crashes found stay fixed.

use std::path::PathBuf;

fn corpus() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/smtp_command")
}

#[test]
fn replay_smtp_command_corpus() {
    let dir = corpus();
    if !dir.is_dir() {
        return;
    }
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("corpus directory readable") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("readable seed");
            umail_smtp::fuzz_command(&data);
            count += 1;
        }
    }
    assert!(count >= 10, "expected at least 10 seeds, found {count}");
}

#[test]
fn well_formed_seeds_parse() {
    let dir = corpus();
    if !dir.is_dir() {
        return;
    }
    for name in [
        "ehlo",
        "mail_params",
        "mail_null",
        "mail_source_route",
        "rcpt_dsn",
        "rcpt_postmaster",
        "rcpt_utf8",
        "bdat_last",
        "auth_plain",
    ] {
        let data = std::fs::read(dir.join(name)).expect("seed present");
        umail_smtp::parse_command(&data).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["noop_binary", "mail_bad_params"] {
        let data = std::fs::read(dir.join(name)).expect("seed present");
        assert!(
            umail_smtp::parse_command(&data).is_err(),
            "{name} must be refused"
        );
    }
}

#[test]
fn replay_smtp_reply_corpus() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/smtp_reply");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/corpus/smtp_reply readable") {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            umail_smtp::client::reply::fuzz_reply(&std::fs::read(&path).expect("readable seed"));
            count += 1;
        }
    }
    assert!(count >= 7, "expected at least 7 seeds, found {count}");
}
