//! Bounds on the metric series a cell makes the host re-emit.
//!
//! The host re-emits each guest metric through the `metrics` facade as `cell.guest.<name>` with
//! one label per tag, and a recorder keeps every distinct name and label set it ever saw. A cell
//! choosing fresh names or tag values per metric would grow the recorder without bound, so each
//! cell may introduce at most [`MAX_SERIES`] series, with at most [`MAX_TAGS`] tags, tag keys up
//! to [`MAX_TAG_KEY`] bytes and values up to [`MAX_TAG_VALUE`] bytes. A metric past these bounds
//! is still queued for `recv` (the cell's own channel, bounded by the event queue) but is not
//! re-emitted: the host counts it (`Stats::metrics_dropped`, counter
//! `cell.guest_metrics_dropped`) and logs one warning per cell.

use std::collections::{BTreeMap, BTreeSet};

/// Distinct (name, tags) series one cell may re-emit.
pub const MAX_SERIES: usize = 256;
/// Tags on one re-emitted metric.
pub const MAX_TAGS: usize = 8;
/// Bytes in a re-emitted tag key.
pub const MAX_TAG_KEY: usize = 64;
/// Bytes in a re-emitted tag value.
pub const MAX_TAG_VALUE: usize = 128;

/// Why a metric is not re-emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Excess {
    Series,
    Tags,
    TagKey,
    TagValue,
}

impl Excess {
    pub(crate) const fn describe(self) -> &'static str {
        match self {
            Excess::Series => "the cell already has the most metric series a cell may have",
            Excess::Tags => "a metric has more tags than a cell may re-emit",
            Excess::TagKey => "a tag key is longer than a cell may re-emit",
            Excess::TagValue => "a tag value is longer than a cell may re-emit",
        }
    }
}

/// The series one cell has re-emitted so far.
#[derive(Default)]
pub(crate) struct Series {
    seen: BTreeSet<(String, Vec<(String, String)>)>,
}

impl Series {
    /// Admits a metric for re-emission, or says why not. A series seen before is always admitted.
    pub(crate) fn admit(
        &mut self,
        name: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(), Excess> {
        if tags.len() > MAX_TAGS {
            return Err(Excess::Tags);
        }
        for (k, v) in tags {
            if k.len() > MAX_TAG_KEY {
                return Err(Excess::TagKey);
            }
            if v.len() > MAX_TAG_VALUE {
                return Err(Excess::TagValue);
            }
        }
        let key = (
            name.to_owned(),
            tags.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>(),
        );
        if self.seen.contains(&key) {
            return Ok(());
        }
        if self.seen.len() >= MAX_SERIES {
            return Err(Excess::Series);
        }
        self.seen.insert(key);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn series_are_capped_and_known_ones_stay_admitted() {
        let mut s = Series::default();
        for i in 0..MAX_SERIES {
            assert_eq!(s.admit(&format!("m{i}"), &tags(&[])), Ok(()));
        }
        assert_eq!(s.admit("m0", &tags(&[])), Ok(()));
        assert_eq!(s.admit("new", &tags(&[])), Err(Excess::Series));
        // A new label set of a known name is a new series too.
        assert_eq!(s.admit("m0", &tags(&[("k", "v")])), Err(Excess::Series));
    }

    #[test]
    fn tag_bounds_are_exact() {
        let mut s = Series::default();
        let many: Vec<(String, String)> = (0..=MAX_TAGS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let at: BTreeMap<_, _> = many[..MAX_TAGS].iter().cloned().collect();
        let over: BTreeMap<_, _> = many.iter().cloned().collect();
        assert_eq!(s.admit("a", &at), Ok(()));
        assert_eq!(s.admit("a", &over), Err(Excess::Tags));
        let key = "k".repeat(MAX_TAG_KEY);
        assert_eq!(s.admit("b", &tags(&[(&key, "v")])), Ok(()));
        let key = "k".repeat(MAX_TAG_KEY + 1);
        assert_eq!(s.admit("b", &tags(&[(&key, "v")])), Err(Excess::TagKey));
        let value = "v".repeat(MAX_TAG_VALUE);
        assert_eq!(s.admit("c", &tags(&[("k", &value)])), Ok(()));
        let value = "v".repeat(MAX_TAG_VALUE + 1);
        assert_eq!(s.admit("c", &tags(&[("k", &value)])), Err(Excess::TagValue));
        assert_eq!(s.seen.len(), 3);
    }
}
