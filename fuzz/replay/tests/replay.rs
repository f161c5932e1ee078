//! Replays every committed fuzz corpus through its target's check: a crash the fuzzer found
//! stays fixed.

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
    cell_fuzz_replay::release_fixture();
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

#[test]
fn broker_seeds_are_requests_the_fixture_decides() {
    // The seeds are real requests, and enough of them are allowed, refused by the deny rule and
    // refused for leaving a grant, or the replay would exercise only the decoder.
    use abi::{ErrorCode, GuestFrame};
    let fixture = cell_fuzz_replay::BrokerFixture::new();
    let (mut allowed, mut denied) = (0, 0);
    for (name, data) in corpus("broker_payload") {
        let Ok(GuestFrame::Request {
            capability,
            action,
            payload,
            ..
        }) = abi::wire::decode_body::<GuestFrame>(&data)
        else {
            continue;
        };
        match fixture.request(&capability, &action, payload) {
            Ok(_) => allowed += 1,
            Err(e) if e.code == ErrorCode::Denied => denied += 1,
            Err(e) => eprintln!("{name}: {capability}.{action}: {e:?}"),
        }
    }
    assert!(allowed >= 5, "only {allowed} broker seeds are allowed");
    assert!(denied >= 3, "only {denied} broker seeds are denied");
}

#[test]
fn the_broker_fixture_holds_its_deny_rule() {
    // The check's own assertion can fire: a read through the symlink into the denied subtree
    // is refused, and the fixture's marker is what that file holds.
    use abi::{ErrorCode, Map, Value};
    let fixture = cell_fuzz_replay::BrokerFixture::new();
    let read = |path: &str| {
        let mut p = Map::new();
        p.insert(
            "root".into(),
            Value::Str(format!("{}/ro", cell_fuzz_replay::FIXTURE_ROOT)),
        );
        p.insert("path".into(), Value::Str(path.into()));
        fixture.request("fs", "read", Value::Map(p))
    };
    assert_eq!(read("hello.txt"), Ok(Value::Bytes(b"hello".to_vec())));
    assert_eq!(read("link").unwrap_err().code, ErrorCode::Denied);
    assert_eq!(read("denied/key").unwrap_err().code, ErrorCode::Denied);
    // Past the reply limit (below the grant's cap): refused, naming the reply's limit.
    assert_eq!(read("mid").unwrap_err().code, ErrorCode::LimitFrameSize);
}
