//! ABI version and schema key.
//!
//! Compatibility rules (see SPEC.md): enums are append-only, existing structs never change shape,
//! and any change to the bytes of an existing frame bumps [`ABI_VERSION`]. Both sides refuse a
//! handshake whose version differs from their own.

/// The ABI version carried in the handshake.
pub const ABI_VERSION: u32 = 1;

/// A key naming the schema of this version: the operation set and the frame layout generation.
pub const SCHEMA_KEY: &str =
    "cell-abi/1;ops=exec,call,post,recv,log,metric,request;wire=postcard-le32";

/// Whether a peer announcing `abi_version` and `schema` in its handshake speaks this ABI. Both
/// sides refuse a handshake for which this is false.
pub fn compatible(abi_version: u32, schema: &str) -> bool {
    abi_version == ABI_VERSION && schema == SCHEMA_KEY
}

/// Optional features this build speaks, advertised in `Hello` and `Ready` (see SPEC.md,
/// "Evolution"). A side uses a feature only when the peer advertised it too, so a newer minor
/// keeps working with an older one. None is defined yet: every v1 peer speaks exactly the base
/// protocol, and a handshake without features is byte-identical to the first v1 frames.
pub const FEATURES: &[&str] = &[];

/// Whether both sides of a handshake speak `feature`.
pub fn negotiated(ours: &[&str], theirs: &[impl AsRef<str>], feature: &str) -> bool {
    ours.contains(&feature) && theirs.iter().any(|f| f.as_ref() == feature)
}

const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

// Tripwires: changing either constant must be a deliberate, reviewed edit of these lines too.
const _: () = assert!(ABI_VERSION == 1);
const _: () = assert!(str_eq(
    SCHEMA_KEY,
    "cell-abi/1;ops=exec,call,post,recv,log,metric,request;wire=postcard-le32"
));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compatible_needs_both_the_version_and_the_schema() {
        assert!(compatible(ABI_VERSION, SCHEMA_KEY));
        assert!(!compatible(ABI_VERSION + 1, SCHEMA_KEY));
        assert!(!compatible(ABI_VERSION, "cell-abi/1"));
        assert!(negotiated(&["a", "b"], &["b"], "b"));
        assert!(!negotiated(&["a"], &["b"], "b"));
        assert!(!negotiated(&["b"], &["a"], "b"));
    }

    /// The schema tripwire compares whole strings: a different byte or length is a difference.
    #[test]
    fn tripwire_compares_every_byte_and_the_length() {
        assert!(str_eq(SCHEMA_KEY, SCHEMA_KEY));
        assert!(str_eq("", ""));
        assert!(!str_eq("cell-abi/1", "cell-abi/2"));
        assert!(!str_eq("abc", "abd"));
        assert!(!str_eq("xbc", "abc"));
        assert!(!str_eq("ab", "abc"));
        assert!(!str_eq("abc", "ab"));
    }
}
