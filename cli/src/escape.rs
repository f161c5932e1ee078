//! Guest text on the terminal: a script's log message or error may hold a newline, a carriage
//! return or an escape sequence, and printed raw it would forge a line of the host's own output
//! (or drive the terminal). Everything that is not plain printable text is written as an escape.

use std::borrow::Cow;
use std::fmt::Write;

/// `text` with every control character, line or paragraph separator and bidirectional
/// override written as an escape (`\n`, `\r`, `\t`, `\\u{1b}`, ...), so that it prints on one
/// line and cannot change how the text around it reads.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `text` cut to its first `max` characters, saying how many were left out: a user's input
/// quoted in a message (an argument that is not JSON may be megabytes long).
pub fn shorten(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some((end, _)) => Cow::Owned(format!(
            "{}… ({} more characters)",
            &text[..end],
            text[end..].chars().count()
        )),
    }
}

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{061c}'
        )
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

#[cfg(test)]
mod tests {
    use super::{escape, shorten};

    #[test]
    fn long_input_is_shortened_and_says_by_how_much() {
        assert_eq!(shorten("[1, 2]", 6), "[1, 2]");
        assert_eq!(shorten("[[[[", 2), "[[… (2 more characters)");
        assert_eq!(shorten("ééé", 1), "é… (2 more characters)");
    }

    #[test]
    fn plain_text_is_borrowed_unchanged() {
        assert!(matches!(
            escape("héllo, wörld"),
            std::borrow::Cow::Borrowed(_)
        ));
    }

    #[test]
    fn line_breaks_escapes_and_overrides_are_escaped() {
        assert_eq!(
            escape("a\nb\r\x1b[31mc\u{202e}d\u{2028}\u{7f}"),
            "a\\nb\\r\\u{1b}[31mc\\u{202e}d\\u{2028}\\u{7f}"
        );
    }
}
