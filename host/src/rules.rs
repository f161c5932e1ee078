//! The limits every frame obeys, in both directions, checked on the host before a frame is
//! handed to a pipe (host → cell) or accepted from one (cell → host). A host frame that breaks a
//! limit never reaches any pipe, so every backend answers alike: with a typed error naming the
//! limit and the direction, and the cell stays usable.

use abi::value::{Lengths, ValueLimitError};
use abi::wire::{self, ABSOLUTE_MAX_FRAME_LEN};
use abi::{ABI_VERSION, CellError, ErrorCode, HOST_MODULES, Hello, HostFrame, SCHEMA_KEY, Value};

/// Which way a frame travels, for messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// A frame the host sends.
    HostToCell,
    /// A frame the cell sends.
    CellToHost,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::HostToCell => "host → cell",
            Direction::CellToHost => "cell → host",
        })
    }
}

/// The frame cap a configured cap really is (never above the absolute one).
pub(crate) fn effective_cap(cap: u32) -> u32 {
    cap.min(ABSOLUTE_MAX_FRAME_LEN)
}

/// "1 MiB" for whole mebibytes, else the bytes.
pub(crate) fn bytes_text(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else {
        format!("{n} bytes")
    }
}

/// What a frame carries, for messages: the noun and whether it takes a plural verb.
#[derive(Clone, Copy)]
pub(crate) struct Subject(pub(crate) &'static str, pub(crate) bool);

impl Subject {
    fn verb(self, singular: &'static str, plural: &'static str) -> &'static str {
        if self.1 { plural } else { singular }
    }
}

/// The error for `what` whose frame encodes to `len` bytes over `cap`.
pub(crate) fn frame_too_large(what: Subject, len: u64, cap: u32, dir: Direction) -> CellError {
    CellError::new(
        ErrorCode::LimitFrameSize,
        format!(
            "{} {} to {len} bytes, over the {} frame cap ({dir})",
            what.0,
            what.verb("encodes", "encode"),
            bytes_text(cap.into())
        ),
    )
}

/// The error for a guest frame whose values take more than `max` bytes of memory, whether the
/// decoder stopped there or an in-process pipe delivered it whole.
pub(crate) fn frame_memory(max: usize) -> CellError {
    CellError::new(
        ErrorCode::LimitValue,
        format!(
            "the cell's frame takes more than {} of memory, over the channel's max_frame_memory ({})",
            bytes_text(max as u64),
            Direction::CellToHost
        ),
    )
}

/// The code of a value limit.
pub(crate) fn value_code(e: &ValueLimitError) -> ErrorCode {
    match e {
        ValueLimitError::StringTooLong { .. } => ErrorCode::LimitStringSize,
        ValueLimitError::ListTooLong { .. } => ErrorCode::LimitArraySize,
        ValueLimitError::MapTooLarge { .. } => ErrorCode::LimitMapSize,
        _ => ErrorCode::LimitValue,
    }
}

fn value_error(what: Subject, e: ValueLimitError, dir: Direction) -> CellError {
    CellError::new(
        value_code(&e),
        format!("{} {} {e} ({dir})", what.0, what.verb("holds", "hold")),
    )
}

/// Refuses a handshake the host must not send: another ABI, or a module no guest runtime of
/// this ABI provides (the list is [`abi::HOST_MODULES`]). Checked before a cell is spawned.
pub fn check_hello(hello: &Hello) -> Result<(), CellError> {
    if !abi::version::compatible(hello.abi_version, &hello.schema) {
        return Err(CellError::new(
            ErrorCode::VersionMismatch,
            format!(
                "the handshake names ABI {} ({}), this host speaks ABI {ABI_VERSION} ({SCHEMA_KEY})",
                hello.abi_version, hello.schema
            ),
        ));
    }
    if let Some(unknown) = hello
        .modules
        .iter()
        .find(|m| !HOST_MODULES.contains(&m.as_str()))
    {
        return Err(CellError::new(
            ErrorCode::InvalidArgument,
            format!(
                "the policy allows module `{unknown}`, which no cell provides (known modules: {})",
                HOST_MODULES.join(", ")
            ),
        ));
    }
    Ok(())
}

/// What a host frame carries, for messages.
fn subject(frame: &HostFrame) -> Subject {
    match frame {
        HostFrame::Hello(_) => Subject("the handshake", false),
        HostFrame::Exec { .. } => Subject("the exec's source", false),
        HostFrame::Call { .. } => Subject("the call's arguments", true),
        HostFrame::Reply { .. } => Subject("the broker's reply", false),
        _ => Subject("the frame", false),
    }
}

/// Checks a host frame against the frame cap, value depth and the engine's lengths before any
/// pipe sees it.
pub(crate) fn outgoing(frame: &HostFrame, cap: u32, lengths: &Lengths) -> Result<(), CellError> {
    let what = subject(frame);
    let dir = Direction::HostToCell;
    match frame {
        HostFrame::Hello(hello) => check_hello(hello)?,
        HostFrame::Call { args, kwargs, .. } => {
            for v in args.iter().chain(kwargs.values()) {
                v.check_limits(lengths)
                    .map_err(|e| value_error(what, e, dir))?;
            }
            // Non-empty kwargs reach the function as one more map.
            if lengths.map != 0 && kwargs.len() > lengths.map {
                return Err(value_error(
                    what,
                    ValueLimitError::MapTooLarge {
                        len: kwargs.len(),
                        max: lengths.map,
                    },
                    dir,
                ));
            }
        }
        HostFrame::Reply {
            result: Ok(value), ..
        } => value
            .check_limits(lengths)
            .map_err(|e| value_error(what, e, dir))?,
        _ => {}
    }
    let cap = effective_cap(cap);
    let len = wire::encoded_len(frame).map_err(|e| {
        CellError::new(
            ErrorCode::Internal,
            format!("{} cannot be encoded: {e}", what.0),
        )
    })?;
    if len as u64 > u64::from(cap) {
        return Err(frame_too_large(what, len as u64, cap, dir));
    }
    Ok(())
}

/// Checks a value a guest sent (`what`: "a post", ...) against depth and the engine's lengths;
/// the guest runtime enforces the same on its way out, so an excess is a forged frame.
pub(crate) fn incoming_value(what: &str, v: &Value, lengths: &Lengths) -> Result<(), CellError> {
    v.check_limits(lengths).map_err(|e| {
        CellError::new(
            ErrorCode::ProtocolViolation,
            format!("{what} holds {e} ({})", Direction::CellToHost),
        )
    })
}

/// The largest byte string a reply to request `id` can carry: the frame cap less the reply's
/// own framing (its byte-string length prefix counted at its longest). The host hands it to the
/// request handler, which clips or refuses reads to it before it allocates. (The engine's
/// lengths are checked on the reply itself, with their own codes.)
pub(crate) fn reply_budget(id: u64, cap: u32) -> usize {
    let empty = HostFrame::Reply {
        id,
        result: Ok(Value::Bytes(Vec::new())),
    };
    // An empty byte string's length takes one byte; the longest a frame allows takes five.
    let framing = wire::encoded_len(&empty).map_or(usize::MAX, |len| len + 4);
    (effective_cap(cap) as usize).saturating_sub(framing)
}

/// The broker's answer to request `id` as it may be sent: a reply over a limit becomes an error
/// reply naming the limit, so the guest's `request` fails and the cell lives on.
pub(crate) fn reply(
    id: u64,
    result: Result<Value, CellError>,
    cap: u32,
    lengths: &Lengths,
) -> HostFrame {
    let frame = HostFrame::Reply { id, result };
    match outgoing(&frame, cap, lengths) {
        Ok(()) => frame,
        Err(limit) => HostFrame::Reply {
            id,
            result: Err(limit),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use abi::{EngineLimits, Map};

    const CAP: u32 = 1 << 20;

    fn call(args: Vec<Value>, kwargs: Map) -> HostFrame {
        HostFrame::Call {
            id: 1,
            function: "f".into(),
            args,
            kwargs,
        }
    }

    /// A call whose encoding is exactly `len` bytes.
    fn call_of_len(len: usize) -> HostFrame {
        let base = wire::encoded_len(&call(vec![Value::Str(String::new())], Map::new())).unwrap();
        // The string's length varint takes 1 to 4 bytes.
        for extra in 0..4 {
            let s = "x".repeat(len - base - extra);
            let f = call(vec![Value::Str(s)], Map::new());
            if wire::encoded_len(&f).unwrap() == len {
                return f;
            }
        }
        unreachable!()
    }

    #[test]
    fn frame_cap_is_exact() {
        let lengths = Lengths::default();
        assert_eq!(outgoing(&call_of_len(CAP as usize), CAP, &lengths), Ok(()));
        let err = outgoing(&call_of_len(CAP as usize + 1), CAP, &lengths).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitFrameSize);
        assert_eq!(
            err.message,
            "the call's arguments encode to 1048577 bytes, over the 1 MiB frame cap (host → cell)"
        );
        // A cap above the absolute one is the absolute one.
        let big = call_of_len(ABSOLUTE_MAX_FRAME_LEN as usize + 1);
        assert_eq!(
            outgoing(&big, u32::MAX, &lengths).unwrap_err().code,
            ErrorCode::LimitFrameSize
        );
        let at = call_of_len(ABSOLUTE_MAX_FRAME_LEN as usize);
        assert_eq!(outgoing(&at, u32::MAX, &lengths), Ok(()));
        assert_eq!(bytes_text(1000), "1000 bytes");
        assert_eq!(bytes_text(0), "0 bytes");
        assert_eq!(bytes_text(3 << 20), "3 MiB");
        assert_eq!(bytes_text((1 << 20) + 1), "1048577 bytes");
    }

    #[test]
    fn exec_and_hello_are_capped_too() {
        let exec = HostFrame::Exec {
            id: 1,
            source: "x".repeat(100),
        };
        let err = outgoing(&exec, 50, &Lengths::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitFrameSize);
        assert!(err.message.contains("exec"), "{}", err.message);
        let hello = HostFrame::Hello(Hello::new("c", EngineLimits::default(), vec![]));
        assert_eq!(
            outgoing(&hello, 10, &Lengths::default()).unwrap_err().code,
            ErrorCode::LimitFrameSize
        );
        assert_eq!(outgoing(&hello, CAP, &Lengths::default()), Ok(()));
    }

    #[test]
    fn argument_depth_and_lengths_are_checked_before_sending() {
        let lengths = Lengths::of(&EngineLimits::default());
        let mut deep = Value::Unit;
        for _ in 1..abi::value::MAX_VALUE_DEPTH {
            deep = Value::List(vec![deep]);
        }
        assert_eq!(
            outgoing(&call(vec![deep.clone()], Map::new()), CAP, &lengths),
            Ok(())
        );
        let deeper = Value::List(vec![deep]);
        let err = outgoing(&call(vec![deeper.clone()], Map::new()), CAP, &lengths).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitValue);
        assert!(err.message.ends_with("(host → cell)"), "{}", err.message);
        let kwargs: Map = [("k".to_string(), deeper)].into_iter().collect();
        assert_eq!(
            outgoing(&call(vec![], kwargs), CAP, &lengths)
                .unwrap_err()
                .code,
            ErrorCode::LimitValue
        );
        let small = Lengths {
            string: 2,
            list: 2,
            map: 1,
        };
        let err = outgoing(
            &call(vec![Value::Str("abc".into())], Map::new()),
            CAP,
            &small,
        );
        assert_eq!(err.unwrap_err().code, ErrorCode::LimitStringSize);
        let err = outgoing(
            &call(vec![Value::List(vec![Value::Unit; 3])], Map::new()),
            CAP,
            &small,
        );
        assert_eq!(err.unwrap_err().code, ErrorCode::LimitArraySize);
        let two: Map = [
            ("a".to_string(), Value::Unit),
            ("b".to_string(), Value::Unit),
        ]
        .into_iter()
        .collect();
        let err = outgoing(&call(vec![], two.clone()), CAP, &small).unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitMapSize);
        assert_eq!(
            err.message,
            "the call's arguments hold a map of 2 entries, over the limit of 1 (host → cell)"
        );
        let one: Map = [("a".to_string(), Value::Unit)].into_iter().collect();
        assert_eq!(outgoing(&call(vec![], one), CAP, &small), Ok(()));
        // Unlimited engine lengths leave only the frame cap.
        assert_eq!(
            outgoing(&call(vec![], two), CAP, &Lengths::default()),
            Ok(())
        );
    }

    #[test]
    fn an_over_cap_reply_becomes_an_error_reply() {
        let lengths = Lengths::default();
        let big = Value::Bytes(vec![0; CAP as usize]);
        let HostFrame::Reply { id, result } = reply(7, Ok(big), CAP, &lengths) else {
            panic!()
        };
        assert_eq!(id, 7);
        let err = result.unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitFrameSize);
        assert!(
            err.message.starts_with("the broker's reply encodes to"),
            "{}",
            err.message
        );
        let fine = reply(7, Ok(Value::Int(1)), CAP, &lengths);
        assert_eq!(
            fine,
            HostFrame::Reply {
                id: 7,
                result: Ok(Value::Int(1))
            }
        );
        let small = Lengths {
            string: 1,
            list: 0,
            map: 0,
        };
        let HostFrame::Reply { result, .. } = reply(1, Ok(Value::Str("ab".into())), CAP, &small)
        else {
            panic!()
        };
        assert_eq!(result.unwrap_err().code, ErrorCode::LimitStringSize);
    }

    /// A byte string of exactly the budget fits the reply frame, for small and large ids and
    /// caps; five bytes more do not (so the budget is the largest, not merely a safe one, up to
    /// the length prefix's growth).
    #[test]
    fn the_reply_budget_is_the_largest_byte_string_a_reply_carries() {
        let unlimited = Lengths::default();
        for cap in [256, 4096, CAP, ABSOLUTE_MAX_FRAME_LEN, u32::MAX] {
            for id in [1, 300, u64::MAX] {
                let budget = reply_budget(id, cap);
                let fits = reply(id, Ok(Value::Bytes(vec![0; budget])), cap, &unlimited);
                assert!(
                    matches!(fits, HostFrame::Reply { result: Ok(_), .. }),
                    "cap {cap} id {id}: {budget} bytes do not fit"
                );
                let over = reply(id, Ok(Value::Bytes(vec![0; budget + 5])), cap, &unlimited);
                assert!(
                    matches!(over, HostFrame::Reply { result: Err(_), .. }),
                    "cap {cap} id {id}: {} bytes fit",
                    budget + 5
                );
            }
        }
    }

    #[test]
    fn hellos_naming_unknown_modules_or_another_abi_are_refused() {
        let ok = Hello::new(
            "c",
            EngineLimits::default(),
            vec!["math".into(), "json".into()],
        );
        assert_eq!(check_hello(&ok), Ok(()));
        let bad = Hello::new(
            "c",
            EngineLimits::default(),
            vec!["math".into(), "nope".into()],
        );
        let err = check_hello(&bad).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert!(err.message.contains("`nope`") && err.message.contains("math, text, json"));
        for (version, schema) in [(ABI_VERSION + 1, SCHEMA_KEY), (ABI_VERSION, "other")] {
            let mut h = ok.clone();
            h.abi_version = version;
            h.schema = schema.into();
            assert_eq!(
                check_hello(&h).unwrap_err().code,
                ErrorCode::VersionMismatch
            );
        }
    }

    #[test]
    fn incoming_excess_is_a_violation_naming_the_direction() {
        let small = Lengths {
            string: 0,
            list: 1,
            map: 0,
        };
        let err = incoming_value("a post", &Value::List(vec![Value::Unit; 2]), &small).unwrap_err();
        assert_eq!(err.code, ErrorCode::ProtocolViolation);
        assert_eq!(
            err.message,
            "a post holds a list of 2 elements, over the limit of 1 (cell → host)"
        );
        assert_eq!(
            incoming_value("a post", &Value::List(vec![Value::Unit]), &small),
            Ok(())
        );
    }
}
