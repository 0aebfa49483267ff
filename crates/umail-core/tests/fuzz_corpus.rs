//! Replays the cargo-fuzz corpora of umail-core's targets, so a crash found
//! by fuzzing and added to the corpus stays fixed.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).expect("read corpus file");
            (p, data)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

#[test]
fn address_corpus_replays() {
    for (_, data) in corpus("address") {
        umail_core::address::fuzz_address(&data);
    }
}

#[test]
fn sasl_corpus_replays() {
    for (_, data) in corpus("sasl") {
        umail_core::sasl::fuzz_exchange(&data);
    }
}
