//! Data size checks during evaluation.
#![cfg(not(feature = "unchecked"))]

use super::GlobalRuntimeState;
use crate::types::dynamic::Union;
use crate::{Dynamic, Engine, Position, RhaiResultOf, ERR};
use std::borrow::Borrow;
#[cfg(feature = "no_std")]
use std::prelude::v1::*;

// Patched for the cell runtime (see vendor/README.md): sizes count one value, never the values
// inside it, so a check costs O(1) whatever the value holds. The string limit is one string's
// length in bytes, the array limit one array's element count (a BLOB's byte count), the map
// limit one map's entry count; a nested collection is checked when it is itself changed.

/// Calculate the sizes of an array: its element count (the values inside are not counted).
///
/// Sizes returned are `(` [`Array`][crate::Array], [`Map`][crate::Map] and [`String`] `)`.
#[cfg(not(feature = "no_index"))]
#[inline]
#[must_use]
pub fn calc_array_sizes(array: &crate::Array) -> (usize, usize, usize) {
    (array.len(), 0, 0)
}
/// Calculate the sizes of a map: its entry count (the values inside are not counted).
///
/// Sizes returned are `(` [`Array`][crate::Array], [`Map`][crate::Map] and [`String`] `)`.
#[cfg(not(feature = "no_object"))]
#[inline]
#[must_use]
pub fn calc_map_sizes(map: &crate::Map) -> (usize, usize, usize) {
    (0, map.len(), 0)
}

/// Calculate the sizes of a value: its own length only, in O(1).
///
/// Sizes returned are `(` [`Array`][crate::Array], [`Map`][crate::Map] and [`String`] `)`.
#[inline]
#[must_use]
pub fn calc_data_sizes(value: &Dynamic, _top: bool) -> (usize, usize, usize) {
    match value.0 {
        #[cfg(not(feature = "no_index"))]
        Union::Array(ref arr, ..) => calc_array_sizes(arr),
        #[cfg(not(feature = "no_index"))]
        Union::Blob(ref blob, ..) => (blob.len(), 0, 0),
        #[cfg(not(feature = "no_object"))]
        Union::Map(ref map, ..) => calc_map_sizes(map),
        Union::Str(ref s, ..) => (0, 0, s.len()),
        #[cfg(not(feature = "no_closure"))]
        Union::Shared(..) => value
            .read_lock::<Dynamic>()
            .map_or((0, 0, 0), |v| calc_data_sizes(&v, false)),
        _ => (0, 0, 0),
    }
}

/// Is `value` nested deeper than `max` levels of arrays and maps? Visits at most the part of
/// `value` within `max + 1` levels. Inline, so that a value that is no array or map (most of
/// the values checked) answers without a call.
#[inline]
fn deeper_than(value: &Dynamic, max: usize) -> bool {
    match value.0 {
        #[cfg(not(feature = "no_index"))]
        Union::Array(..) => collection_deeper_than(value, max),
        #[cfg(not(feature = "no_object"))]
        Union::Map(..) => collection_deeper_than(value, max),
        _ => false,
    }
}

/// [`deeper_than`] for an array or a map.
#[inline(never)]
fn collection_deeper_than(value: &Dynamic, max: usize) -> bool {
    match value.0 {
        #[cfg(not(feature = "no_index"))]
        Union::Array(ref a, ..) => max == 0 || a.iter().any(|v| deeper_than(v, max - 1)),
        #[cfg(not(feature = "no_object"))]
        Union::Map(ref m, ..) => max == 0 || m.values().any(|v| deeper_than(v, max - 1)),
        _ => false,
    }
}

impl Engine {
    /// Raise an error if `value` nests arrays and maps deeper than the limit (if any). Patched in.
    #[cfg(not(feature = "unchecked"))]
    #[inline]
    pub(crate) fn check_value_depth(&self, value: &Dynamic, pos: Position) -> RhaiResultOf<()> {
        let Some(max) = self.limits.value_depth else {
            return Ok(());
        };
        let deep = match value.0 {
            #[cfg(not(feature = "no_closure"))]
            Union::Shared(..) => value
                .read_lock::<Dynamic>()
                .map_or(false, |v| deeper_than(&v, max.get())),
            _ => deeper_than(value, max.get()),
        };
        if deep {
            return Err(ERR::ErrorDataTooLarge("Depth of nested value".to_string(), pos).into());
        }
        Ok(())
    }

    /// Raise an error if `value`, nested one level into another value, would make it nest
    /// deeper than the limit (if any). Patched in.
    #[cfg(not(feature = "unchecked"))]
    #[inline]
    pub(crate) fn check_nested_depth(&self, value: &Dynamic, pos: Position) -> RhaiResultOf<()> {
        match self.limits.value_depth {
            Some(max) if max.get() == 1 => match value.0 {
                #[cfg(not(feature = "no_index"))]
                Union::Array(..) => {
                    Err(ERR::ErrorDataTooLarge("Depth of nested value".to_string(), pos).into())
                }
                #[cfg(not(feature = "no_object"))]
                Union::Map(..) => {
                    Err(ERR::ErrorDataTooLarge("Depth of nested value".to_string(), pos).into())
                }
                _ => Ok(()),
            },
            Some(max) => {
                let Some(inner) = std::num::NonZeroUsize::new(max.get() - 1) else {
                    return Ok(());
                };
                let deep = match value.0 {
                    #[cfg(not(feature = "no_closure"))]
                    Union::Shared(..) => value
                        .read_lock::<Dynamic>()
                        .map_or(false, |v| deeper_than(&v, inner.get())),
                    _ => deeper_than(value, inner.get()),
                };
                if deep {
                    return Err(
                        ERR::ErrorDataTooLarge("Depth of nested value".to_string(), pos).into(),
                    );
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Check the size and the nesting of a function's result. Patched in.
    #[cfg(not(feature = "unchecked"))]
    #[inline]
    pub(crate) fn check_result(&self, value: Dynamic, pos: Position) -> RhaiResultOf<Dynamic> {
        self.check_value_depth(&value, pos)?;
        self.check_data_size(value, pos)
    }

    /// Raise an error if any data size exceeds limit.
    ///
    /// [`Position`] in [`EvalAltResult`][crate::EvalAltResult] is always [`NONE`][Position::NONE]
    /// and should be set afterwards.
    #[cfg(not(feature = "unchecked"))]
    pub(crate) fn throw_on_size(&self, (_arr, _map, s): (usize, usize, usize)) -> RhaiResultOf<()> {
        if self.limits.string_len.map_or(false, |max| s > max.get()) {
            return Err(
                ERR::ErrorDataTooLarge("Length of string".to_string(), Position::NONE).into(),
            );
        }

        #[cfg(not(feature = "no_index"))]
        if self.limits.array_size.map_or(false, |max| _arr > max.get()) {
            return Err(
                ERR::ErrorDataTooLarge("Size of array/BLOB".to_string(), Position::NONE).into(),
            );
        }

        #[cfg(not(feature = "no_object"))]
        if self.limits.map_size.map_or(false, |max| _map > max.get()) {
            return Err(
                ERR::ErrorDataTooLarge("Size of object map".to_string(), Position::NONE).into(),
            );
        }

        Ok(())
    }

    /// Check whether the size of a [`Dynamic`] is within limits.
    #[cfg(not(feature = "unchecked"))]
    #[inline]
    pub(crate) fn check_data_size<T: Borrow<Dynamic>>(
        &self,
        value: T,
        pos: Position,
    ) -> RhaiResultOf<T> {
        // If no data size limits, just return
        if !self.has_data_size_limit() {
            return Ok(value);
        }

        let sizes = calc_data_sizes(value.borrow(), true);

        self.throw_on_size(sizes)
            .map_err(|err| err.fill_position(pos))?;

        Ok(value)
    }

    /// Raise an error if the size of a [`Dynamic`] is out of limits (if any).
    ///
    /// Not available under `unchecked`.
    #[cfg(not(feature = "unchecked"))]
    #[inline(always)]
    pub fn ensure_data_size_within_limits(&self, value: &Dynamic) -> RhaiResultOf<()> {
        self.check_data_size(value, Position::NONE).map(|_| ())
    }

    /// Check if the number of operations stay within limit.
    #[inline(always)]
    pub(crate) fn track_operation(
        &self,
        global: &mut GlobalRuntimeState,
        pos: Position,
    ) -> RhaiResultOf<()> {
        let mut num_ops = None;

        let mut num_operations = || {
            *num_ops.get_or_insert_with(|| {
                // Increment operations count
                #[cfg(atomic_ops_count)]
                return global
                    .num_operations
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1;

                #[cfg(not(atomic_ops_count))]
                {
                    global.num_operations += 1;
                    return global.num_operations;
                }
            })
        };

        // Guard against too many operations
        #[cfg(not(feature = "unchecked"))]
        if self.max_operations() > 0 && num_operations() > self.max_operations() {
            return Err(ERR::ErrorTooManyOperations(pos).into());
        }

        if let Some(progress) = self.progress.as_ref() {
            return progress(num_operations())
                .map(|token| Err(ERR::ErrorTerminated(token, pos).into()))
                .unwrap_or(Ok(()));
        }

        Ok(())
    }
}
