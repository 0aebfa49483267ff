//! Replays every seed of `fuzz/corpus/pop3_command` through the fuzzing
//! entry point, so an input once found by fuzzing stays fixed.

use std::path::PathBuf;

#[test]
fn pop3_command_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/pop3_command");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_file() {
            let data = std::fs::read(&path).expect("read seed");
            umail_pop3::fuzz_command(&data);
            let _ = umail_pop3::parse_command(&data);
            count += 1;
        }
    }
    assert!(count >= 10, "corpus has only {count} seeds");
}
