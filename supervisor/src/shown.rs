//! Caller-supplied text quoted back in an error: bounded and escaped, so a hostile name or policy
//! entry can neither make every error (and log line) as large as itself nor write control
//! characters to a terminal.

/// Characters of caller text an error quotes at most.
const MAX_SHOWN_CHARS: usize = 64;

/// `text` as an error quotes it: escaped like a Rust string literal's contents, cut after
/// [`MAX_SHOWN_CHARS`] characters with `…`.
pub fn shown(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(MAX_SHOWN_CHARS).is_some() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn short_text_is_quoted_whole_and_long_text_is_cut() {
        assert_eq!(shown("cell-1"), "cell-1");
        assert_eq!(shown(&"x".repeat(64)), "x".repeat(64));
        assert_eq!(shown(&"x".repeat(100_000)), format!("{}…", "x".repeat(64)));
        assert_eq!(shown("é".repeat(65).as_str()).chars().count(), 65);
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(shown("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
    }
}
