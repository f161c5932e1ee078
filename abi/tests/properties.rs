//! Property tests of the wire format: values round-trip bit-exactly; no byte sequence panics.

use cell_abi::wire::{self, DEFAULT_MAX_FRAME_LEN};
use cell_abi::{GuestFrame, HostFrame, Value};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Unit),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::Int),
        any::<f64>().prop_map(Value::Float),
        ".{0,16}".prop_map(Value::Str),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            proptest::collection::btree_map(".{0,8}", inner, 0..6).prop_map(Value::Map),
        ]
    })
}

proptest! {
    #[test]
    fn values_round_trip_bit_exactly(v in value()) {
        let frame = GuestFrame::Post(v.clone());
        let bytes = wire::encode(&frame, DEFAULT_MAX_FRAME_LEN).unwrap();
        let GuestFrame::Post(back) = wire::decode::<GuestFrame>(&bytes, DEFAULT_MAX_FRAME_LEN).unwrap() else {
            panic!("kind changed");
        };
        prop_assert!(back.bit_eq(&v));
    }

    #[test]
    fn arbitrary_bytes_decode_to_a_frame_or_a_typed_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode::<GuestFrame>(&bytes, DEFAULT_MAX_FRAME_LEN);
        let _ = wire::decode::<HostFrame>(&bytes, DEFAULT_MAX_FRAME_LEN);
        let _ = wire::decode_body::<GuestFrame>(&bytes);
        let _ = wire::decode_body::<HostFrame>(&bytes);
    }

    #[test]
    fn mutated_valid_frames_never_panic(v in value(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = wire::encode(&GuestFrame::Post(v), DEFAULT_MAX_FRAME_LEN).unwrap();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let _ = wire::decode::<GuestFrame>(&bytes, DEFAULT_MAX_FRAME_LEN);
    }

    #[test]
    fn a_ceiling_changes_nothing_but_the_memory_a_decode_may_take(v in value(), max in 0usize..4096) {
        let body = wire::encode(&GuestFrame::Post(v), DEFAULT_MAX_FRAME_LEN).unwrap()[wire::HEADER_LEN..].to_vec();
        // Bit-exact, so NaNs compare equal.
        let same = |a: &Result<GuestFrame, wire::WireError>, b: &Result<GuestFrame, wire::WireError>| match (a, b) {
            (Ok(GuestFrame::Post(x)), Ok(GuestFrame::Post(y))) => x.bit_eq(y),
            _ => false,
        };
        let free = wire::decode_body::<GuestFrame>(&body);
        prop_assert!(same(&wire::decode_body_within::<GuestFrame>(&body, usize::MAX), &free));
        match wire::decode_body_within::<GuestFrame>(&body, max) {
            Err(wire::WireError::OverMemory { max: m }) => prop_assert_eq!(m, max),
            other => prop_assert!(same(&other, &free)),
        }
    }
}

proptest! {
    /// Frames written one after another come back out of the batch one by one, in order.
    #[test]
    fn a_batch_of_frames_splits_into_the_frames(values in proptest::collection::vec(value(), 1..8)) {
        let mut batch = Vec::new();
        for v in &values {
            batch.extend(wire::encode(&GuestFrame::Post(v.clone()), wire::DEFAULT_MAX_FRAME_LEN).unwrap());
        }
        let mut rest = &batch[..];
        for v in &values {
            let (body, after) = wire::split_first(rest, wire::DEFAULT_MAX_FRAME_LEN).unwrap();
            prop_assert_eq!(wire::decode_body::<GuestFrame>(body).unwrap(), GuestFrame::Post(v.clone()));
            rest = after;
        }
        prop_assert!(rest.is_empty());
    }

    /// Any bytes at all: a typed error or a body and a rest that together are exactly the
    /// bytes after the prefix, never a panic or a read past the end.
    #[test]
    fn splitting_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0u32..64) {
        if let Ok((body, rest)) = wire::split_first(&bytes, max) {
            prop_assert!(body.len() as u32 <= max && !body.is_empty());
            prop_assert_eq!(wire::HEADER_LEN + body.len() + rest.len(), bytes.len());
        }
    }
}
