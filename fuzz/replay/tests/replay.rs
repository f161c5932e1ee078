//! Replays every committed fuzz corpus through its target's check (and policies through the
//! supervisor's whole policy parser too): a crash the fuzzer found stays fixed.

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(target);
    let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("read corpus input");
            (path.display().to_string(), data)
        })
        .collect();
    inputs.sort();
    inputs
}

#[test]
fn every_corpus_replays_cleanly() {
    for (target, check) in cell_fuzz_replay::TARGETS {
        let inputs = corpus(target);
        assert!(!inputs.is_empty(), "the corpus of `{target}` is empty");
        for (name, data) in inputs {
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {name} panicked");
        }
    }
}

#[test]
fn policies_replay_through_the_supervisor_parser() {
    for (_, data) in corpus("policy") {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = supervisor::Policy::from_toml(text);
        }
    }
}

#[test]
fn golden_frames_decode_in_the_corpus() {
    // The seeds are real frames: a decoder that refused them all would make the replay vacuous.
    let decoded = corpus("guest_frame")
        .iter()
        .filter(|(_, d)| abi::wire::decode_body::<abi::GuestFrame>(d).is_ok())
        .count();
    assert!(decoded >= 8, "only {decoded} guest seeds decode");
    let decoded = corpus("host_frame")
        .iter()
        .filter(|(_, d)| runtime::decode_frame(d).is_ok())
        .count();
    assert!(decoded >= 6, "only {decoded} host seeds decode");
}
