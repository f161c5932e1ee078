//! Bounded reads of the files a host is configured with (scripts, policies, tenants,
//! secrets): one reader for every crate that reads one, so a path such as `/dev/zero` is refused
//! the same way wherever it is given.

use abi::wire::ABSOLUTE_MAX_FRAME_LEN;
use std::path::Path;

/// The largest script, policy, tenants or secrets file read: the largest frame a cell takes (no longer
/// script could be sent), far above any real policy, and a bound on what a path such as
/// `/dev/zero` or a pipe that never ends can make the reader hold.
pub const MAX_FILE_BYTES: u64 = ABSOLUTE_MAX_FRAME_LEN as u64;

/// Reads the UTF-8 text of `path`, at most `max` bytes: a larger file (or a device or pipe that
/// does not end) is an error of kind `FileTooLarge` instead of memory taken until it runs out.
pub fn read_text(path: &Path, max: u64) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(max + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::FileTooLarge,
            format!("larger than {max} bytes"),
        ));
    }
    Ok(text)
}
