//! Memory readings: from `/proc`, a process's PSS, a process tree's, the system's available and
//! total memory; from the C heap, the bytes in use. Shared by the benchmarks and the density test
//! (no criterion in here).
#![allow(dead_code)]

/// PSS of one process, in bytes (0 once it is gone).
pub fn pss_of(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    kib_field(&text, "Pss:")
}

/// The value of a `Name:   123 kB` line, in bytes.
fn kib_field(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Children of `pid` (of each of its threads).
pub fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// PSS summed over this process and all its descendants, in bytes, and how many processes that
/// is.
pub fn tree_pss() -> (u64, usize) {
    let mut todo = vec![std::process::id()];
    let (mut pss, mut count) = (0, 0);
    while let Some(pid) = todo.pop() {
        pss += pss_of(pid);
        count += 1;
        todo.extend(children_of(pid));
    }
    (pss, count)
}

/// System-wide `MemAvailable`, in bytes.
pub fn mem_available() -> u64 {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "MemAvailable:",
    )
}

/// System-wide `MemTotal`, in bytes.
pub fn mem_total() -> u64 {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").unwrap_or_default(),
        "MemTotal:",
    )
}

/// Bytes the C heap holds in use (glibc's `mallinfo2`: arena and mmapped blocks). The global
/// allocator sits on it, so this moves with every live in-process cell, where PSS may not (a
/// cell fits in heap pages that earlier frees left resident).
pub fn heap_in_use() -> u64 {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    let info = unsafe { nix::libc::mallinfo2() };
    (info.uordblks + info.hblkhd) as u64
}
