//! Text that native functions of ours build from script values, stopped as the engine's own
//! printers stop it.

use alloc::string::String;
use core::fmt::{self, Display, Write};
use rhai::{NativeCallContext, TextWatch};

/// The text of values written one after another, as `{}` writes them, which stops growing once
/// the engine says so: past the string limit, or once the cell is stopped or past its memory
/// (asked each MiB; see `rhai::TextWatch`), or past `cap` bytes. A value's text can be far
/// larger than the memory it holds, its strings being shared: `text::join` of an array holding
/// one 1 MiB string 10,000 times made an in-process cell's host allocate 10 GB, where a process
/// or microVM cell ran out of memory.
pub(crate) struct Text<'a> {
    text: String,
    watch: TextWatch<'a>,
    cap: usize,
    stopped: bool,
}

impl<'a> Text<'a> {
    /// An empty text for the native function called with `ctx`, stopped past `cap` bytes too.
    pub(crate) fn new(ctx: &'a NativeCallContext, cap: usize) -> Self {
        Text {
            text: String::new(),
            watch: TextWatch::new(ctx),
            cap,
            stopped: false,
        }
    }

    /// Appends the text of `value`; false once the text has stopped growing.
    pub(crate) fn push(&mut self, value: &dyn Display) -> bool {
        let _ = write!(self, "{value}");
        !self.stopped
    }

    pub(crate) fn into_string(self) -> String {
        self.text
    }
}

impl Write for Text<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.stopped {
            return Err(fmt::Error);
        }
        self.text.push_str(s);
        if self.text.len() > self.cap || self.watch.must_stop(self.text.len()) {
            // Ends the value's rendering: every `Display` of the engine's values passes it on.
            self.stopped = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}
