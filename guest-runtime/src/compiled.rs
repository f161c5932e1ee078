//! A small cache of compiled sources, so a cell that runs the same text again (a handler
//! re-sent on every request, a benchmark loop) skips the parser.
//!
//! Sources are compiled without the cell's scope, so a cached AST never embeds a constant
//! folded from an earlier exec: running it is exactly the same as compiling it afresh.
//! The cache is bounded by entry count and by source bytes (an AST's size follows its
//! source's), and least recently used entries go first.

use alloc::{borrow::Cow, string::String, vec::Vec};
use rhai::AST;

/// At most this many sources stay compiled.
const MAX_ENTRIES: usize = 16;
/// Longer sources are compiled every time (they are rarely repeated, and large).
const MAX_SOURCE_LEN: usize = 16 << 10;
/// Total source bytes kept.
const MAX_TOTAL_LEN: usize = 64 << 10;

#[derive(Default)]
pub(crate) struct CompileCache {
    /// Most recently used last.
    entries: Vec<(String, AST)>,
    total_len: usize,
}

impl CompileCache {
    /// The AST of `source`, compiled by `compile` unless it is cached.
    pub(crate) fn get_or_compile<E>(
        &mut self,
        source: &str,
        compile: impl FnOnce(&str) -> Result<AST, E>,
    ) -> Result<Cow<'_, AST>, E> {
        if let Some(pos) = self.entries.iter().position(|(s, _)| s == source) {
            let hit = self.entries.remove(pos);
            self.entries.push(hit);
        } else {
            let ast = compile(source)?;
            if source.len() > MAX_SOURCE_LEN {
                return Ok(Cow::Owned(ast));
            }
            while self.entries.len() >= MAX_ENTRIES || self.total_len + source.len() > MAX_TOTAL_LEN
            {
                let (s, _) = self.entries.remove(0);
                self.total_len -= s.len();
            }
            self.total_len += source.len();
            self.entries.push((String::from(source), ast));
        }
        Ok(Cow::Borrowed(&self.entries.last().expect("present").1))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use rhai::{Engine, ParseError};

    fn compile_counting<'a>(
        engine: &'a Engine,
        count: &'a mut usize,
    ) -> impl FnOnce(&str) -> Result<AST, ParseError> + 'a {
        move |s| {
            *count += 1;
            engine.compile(s)
        }
    }

    #[test]
    fn repeated_source_compiles_once() {
        let engine = Engine::new_raw();
        let mut cache = CompileCache::default();
        let mut n = 0;
        for _ in 0..3 {
            let ast = cache
                .get_or_compile("40 + 2", compile_counting(&engine, &mut n))
                .unwrap();
            assert_eq!(engine.eval_ast::<i64>(&ast).unwrap(), 42);
        }
        assert_eq!(n, 1);
    }

    #[test]
    fn errors_are_not_cached() {
        let engine = Engine::new_raw();
        let mut cache = CompileCache::default();
        let mut n = 0;
        for _ in 0..2 {
            assert!(
                cache
                    .get_or_compile("let = ;", compile_counting(&engine, &mut n))
                    .is_err()
            );
        }
        assert_eq!(n, 2);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn bounded_by_entries_and_bytes_least_recent_first() {
        let engine = Engine::new_raw();
        let mut cache = CompileCache::default();
        let mut n = 0;
        for i in 0..MAX_ENTRIES + 4 {
            cache
                .get_or_compile(&format!("{i}"), compile_counting(&engine, &mut n))
                .unwrap();
            // Keep "0" hot: it must survive the evictions.
            cache
                .get_or_compile("0", compile_counting(&engine, &mut n))
                .unwrap();
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        let before = n;
        cache
            .get_or_compile("0", compile_counting(&engine, &mut n))
            .unwrap();
        assert_eq!(n, before, "the hot entry stayed");
        cache
            .get_or_compile("1", compile_counting(&engine, &mut n))
            .unwrap();
        assert_eq!(n, before + 1, "the cold entry went");

        let big = format!("{}1", " ".repeat(MAX_SOURCE_LEN - 1));
        let mid = format!("{}2", " ".repeat(MAX_SOURCE_LEN - 2));
        for src in [&big, &mid, &mid] {
            cache
                .get_or_compile(src, compile_counting(&engine, &mut n))
                .unwrap();
        }
        assert!(cache.total_len <= MAX_TOTAL_LEN);
        let huge = format!("{}3", " ".repeat(MAX_SOURCE_LEN));
        let ast = cache
            .get_or_compile(&huge, compile_counting(&engine, &mut n))
            .unwrap();
        assert!(matches!(ast, Cow::Owned(_)), "too long to keep");
        assert_eq!(engine.eval_ast::<i64>(&ast).unwrap(), 3);
        assert!(cache.entries.iter().all(|(s, _)| s.len() <= MAX_SOURCE_LEN));
    }
}
