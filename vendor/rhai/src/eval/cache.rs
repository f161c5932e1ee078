//! System caches.

use crate::func::{RhaiFunc, StraightHashMap};
use crate::types::BloomFilterU64;
use crate::{ImmutableString, StaticVec};
#[cfg(feature = "no_std")]
use std::prelude::v1::*;

/// _(internals)_ An entry in a function resolution cache.
/// Exported under the `internals` feature only.
#[derive(Debug, Clone)]
pub struct FnResolutionCacheEntry {
    /// Function.
    pub func: RhaiFunc,
    /// Optional source.
    pub source: Option<ImmutableString>,
}

/// _(internals)_ A function resolution cache with a bloom filter.
/// Exported under the `internals` feature only.
///
/// The [bloom filter][`BloomFilterU64`] is used to rapidly check whether a function hash has never been encountered.
/// It enables caching a hash only during the second encounter to avoid "one-hit wonders".
#[derive(Debug, Clone, Default)]
pub struct FnResolutionCache {
    /// Hash map containing cached functions.
    pub dict: StraightHashMap<Option<FnResolutionCacheEntry>>,
    /// Bloom filter to avoid caching "one-hit wonders".
    ///
    /// Default to 64 bytes (512 bits) which hopefully is enough for different function calls in a script.
    pub bloom_filter: BloomFilterU64<64>,
}

impl FnResolutionCache {
    /// Clear the [`FnResolutionCache`].
    #[inline(always)]
    #[allow(dead_code)]
    pub fn clear(&mut self) {
        self.dict.clear();
        self.bloom_filter.clear();
    }
}

/// _(internals)_ A type containing system-wide caches.
/// Exported under the `internals` feature only.
///
/// The following caches are contained inside this type:
/// * A stack of [function resolution caches][FnResolutionCache]
#[derive(Debug, Clone, Default)]
pub struct Caches {
    fn_resolution: StaticVec<FnResolutionCache>,
    /// Patched: the `this` type of the last method call (its type name's address and length)
    /// and the hash of its display name, which a method call mixes into the hash it looks a
    /// script method up by. Finding the display name searches every global module and static
    /// module (a map lookup each), which an engine with several modules paid on every method
    /// call; the name depends only on the engine's modules, which cannot change during an
    /// evaluation.
    #[cfg(not(feature = "no_object"))]
    #[cfg(not(feature = "no_function"))]
    this_type_hash: Option<(usize, usize, u64)>,
}

impl Caches {
    /// Create an empty [`Caches`].
    #[inline(always)]
    #[must_use]
    pub const fn new() -> Self {
        Self {
            fn_resolution: StaticVec::new_const(),
            #[cfg(not(feature = "no_object"))]
            #[cfg(not(feature = "no_function"))]
            this_type_hash: None,
        }
    }
    /// Get the number of function resolution cache(s) in the stack.
    #[inline(always)]
    #[must_use]
    pub fn fn_resolution_caches_len(&self) -> usize {
        self.fn_resolution.len()
    }
    /// Get a mutable reference to the current function resolution cache.
    ///
    /// A new function resolution cache is pushed onto the stack if the stack is empty.
    #[inline]
    #[must_use]
    pub fn fn_resolution_cache_mut(&mut self) -> &mut FnResolutionCache {
        // Push a new function resolution cache if the stack is empty
        if self.fn_resolution.is_empty() {
            self.push_fn_resolution_cache();
        }
        self.fn_resolution.last_mut().unwrap()
    }
    /// Push an empty function resolution cache onto the stack and make it current.
    #[inline(always)]
    pub fn push_fn_resolution_cache(&mut self) {
        self.fn_resolution.push(<_>::default());
    }
    /// Rewind the function resolution caches stack to a particular size.
    #[inline(always)]
    pub fn rewind_fn_resolution_caches(&mut self, len: usize) {
        self.fn_resolution.truncate(len);
    }
    /// Patched: [`calc_typed_method_hash`][crate::calc_typed_method_hash]`(base, display)`, with
    /// `display(this_type)` (the engine's display name of the type) computed only when
    /// `this_type` differs from the last call's.
    #[cfg(not(feature = "no_object"))]
    #[cfg(not(feature = "no_function"))]
    #[inline]
    pub fn typed_method_hash<'a>(
        &mut self,
        base: u64,
        this_type: &'static str,
        display: impl FnOnce(&'static str) -> &'a str,
    ) -> u64 {
        let key = (this_type.as_ptr() as usize, this_type.len());
        let type_hash = match self.this_type_hash {
            Some((ptr, len, hash)) if (ptr, len) == key => hash,
            _ => {
                // The typed hash is the type's hash XOR the base.
                let hash = crate::calc_typed_method_hash(0, display(this_type));
                self.this_type_hash = Some((key.0, key.1, hash));
                hash
            }
        };
        type_hash ^ base
    }
}
