//! This file is automatically recreated during build time by `build.rs` from `build.template`.

/// Patched: a fixed seed rather than none. Without one, hashes (and with them the names the
/// parser gives closures, `anon$<hash>`, which scripts can print) come from `ahash`'s default
/// keys, which its `compile-time-rng` feature draws anew for every build: each backend's guest
/// is a build of its own, so the same script printed a different closure name on each.
pub const HASHING_SEED: Option<[u64; 4]> = Some([
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
]);
