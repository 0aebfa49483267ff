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
