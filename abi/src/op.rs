//! The seven operations of the minimal cell ABI. Frozen: the set never grows.

/// One operation of the cell ABI. The discriminants are part of the contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Op {
    /// host → cell: run source text inside the cell runtime.
    Exec = 0,
    /// host → cell: invoke `module.func` inside the cell and return its value.
    Call = 1,
    /// cell → host: send one serializable message to the supervisor channel.
    Post = 2,
    /// host reads: receive the next item (post, log, metric) from the cell channel.
    Recv = 3,
    /// cell → host: structured log event.
    Log = 4,
    /// cell → host: numeric metric event.
    Metric = 5,
    /// cell → host → cell: ask the broker for a privileged action through a capability.
    Request = 6,
}

/// Who starts an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The host starts it and the cell completes it (`exec`, `call`).
    HostToCell,
    /// The cell emits it and the host takes it without answering (`post`, `log`, `metric`).
    CellToHost,
    /// The host reads what the cell posted (`recv`); nothing crosses on its own.
    HostReads,
    /// The cell asks, the host (broker) answers (`request`).
    CellToHostToCell,
}

impl Op {
    /// Every operation, in discriminant order.
    pub const ALL: [Op; 7] = [
        Op::Exec,
        Op::Call,
        Op::Post,
        Op::Recv,
        Op::Log,
        Op::Metric,
        Op::Request,
    ];

    /// The operation's name as it appears in the ABI and, for guest operations, in scripts.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Exec => "exec",
            Op::Call => "call",
            Op::Post => "post",
            Op::Recv => "recv",
            Op::Log => "log",
            Op::Metric => "metric",
            Op::Request => "request",
        }
    }

    /// Who starts the operation and who answers it.
    pub const fn direction(self) -> Direction {
        match self {
            Op::Exec | Op::Call => Direction::HostToCell,
            Op::Post | Op::Log | Op::Metric => Direction::CellToHost,
            Op::Recv => Direction::HostReads,
            Op::Request => Direction::CellToHostToCell,
        }
    }

    /// Whether a guest script may invoke this operation (the rest are driven by the host).
    pub const fn guest_callable(self) -> bool {
        matches!(
            self.direction(),
            Direction::CellToHost | Direction::CellToHostToCell
        )
    }

    /// Answers whether `name` is an operation of the ABI (`import`, `eval`, `print` are not).
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// The operation whose wire discriminant is `raw`, if there is one.
    pub const fn from_u8(raw: u8) -> Option<Op> {
        if (raw as usize) < Op::ALL.len() {
            Some(Op::ALL[raw as usize])
        } else {
            None
        }
    }
}

/// Names that are commonly mistaken for operations, with what to use instead.
/// The runtime uses this to reject them with a helpful message.
pub const OUT_OF_MODEL: &[(&str, &str)] = &[
    (
        "eval",
        "define functions with exec and invoke them with call",
    ),
    (
        "print",
        "use post(value) to send data or log(level, message) to log",
    ),
    ("debug", "use log(\"debug\", message)"),
    ("import", "imports resolve only modules the policy allows"),
    (
        "sleep",
        "use request(\"clock\", ...) through a granted capability",
    ),
    (
        "timestamp",
        "use request(\"clock\", \"wall\") through a granted capability",
    ),
];

/// What to use instead of an out-of-model name, if it is a known one.
pub fn out_of_model_hint(name: &str) -> Option<&'static str> {
    OUT_OF_MODEL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, hint)| *hint)
}

// Tripwires: the operation set and its discriminants are frozen.
const _: () = assert!(Op::ALL.len() == 7);
const _: () = assert!(Op::Exec as u8 == 0);
const _: () = assert!(Op::Call as u8 == 1);
const _: () = assert!(Op::Post as u8 == 2);
const _: () = assert!(Op::Recv as u8 == 3);
const _: () = assert!(Op::Log as u8 == 4);
const _: () = assert!(Op::Metric as u8 == 5);
const _: () = assert!(Op::Request as u8 == 6);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_non_ops_are_refused() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.name()), Some(op));
            assert_eq!(Op::from_u8(op as u8), Some(op));
        }
        for not_op in ["import", "eval", "print", "debug", "spawn", ""] {
            assert_eq!(
                Op::from_name(not_op),
                None,
                "{not_op} must not be an operation"
            );
        }
        assert_eq!(Op::from_u8(7), None);
    }

    #[test]
    fn only_guest_ops_are_script_callable() {
        let callable: [bool; 7] = Op::ALL.map(Op::guest_callable);
        assert_eq!(callable, [false, false, true, false, true, true, true]);
        assert!(out_of_model_hint("print").unwrap().contains("post"));
        assert!(out_of_model_hint("post").is_none());
    }
}
