//! A small, bounds-checked ELF64 loader for the guest image.
//!
//! Every field is checked before use with checked arithmetic: a corrupt or hostile image yields
//! [`ElfError`], never a panic or an out-of-bounds access.

/// One loadable segment: bytes `file[offset..offset+filesz]` go to guest address `vaddr`,
/// followed by `memsz - filesz` zero bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the segment's bytes in the image file.
    pub offset: usize,
    /// Bytes taken from the file.
    pub filesz: usize,
    /// Guest address the segment loads at.
    pub vaddr: u64,
    /// Bytes the segment takes in guest memory (the rest past `filesz` zeroed).
    pub memsz: u64,
}

/// A parsed, checked guest image: where to enter it and what to load where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Guest address of the entry point, inside a segment.
    pub entry: u64,
    /// The `PT_LOAD` segments, checked not to overlap.
    pub segments: Vec<Segment>,
    /// Lowest and highest (exclusive) guest address covered by a segment.
    pub start: u64,
    /// See `start`.
    pub end: u64,
}

/// Why bytes are not a loadable guest image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElfError {
    /// The file ends before a header it needs.
    #[error("image shorter than its headers")]
    Truncated,
    /// Wrong magic, class, byte order, machine or type.
    #[error("not a little-endian ELF64 x86-64 executable")]
    NotElf64,
    /// The program header table is out of the file or its entry size is wrong.
    #[error("program header table out of bounds or malformed")]
    BadProgramHeaders,
    /// A segment reaches past the file, or its file size exceeds its memory size.
    #[error("segment out of the file or with filesz > memsz")]
    BadSegment,
    /// A segment lies outside the range the guest may load into.
    #[error("segment outside the allowed guest range")]
    SegmentOutOfRange,
    /// No `PT_LOAD` segment.
    #[error("no loadable segment")]
    NoSegments,
    /// The entry point is in no loaded segment.
    #[error("entry point outside the loaded image")]
    BadEntry,
    /// Two segments share guest memory.
    #[error("overlapping segments")]
    Overlap,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    let s = b
        .get(off..off.checked_add(2).ok_or(ElfError::Truncated)?)
        .ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let s = b
        .get(off..off.checked_add(4).ok_or(ElfError::Truncated)?)
        .ok_or(ElfError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let s = b
        .get(off..off.checked_add(8).ok_or(ElfError::Truncated)?)
        .ok_or(ElfError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

const PT_LOAD: u32 = 1;
const MAX_SEGMENTS: usize = 64;

/// Parse `file`, accepting only segments inside `[min_addr, max_addr)`.
pub fn parse(file: &[u8], min_addr: u64, max_addr: u64) -> Result<Image, ElfError> {
    if file.len() < 64 {
        return Err(ElfError::Truncated);
    }
    // magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT
    if file[0..4] != [0x7f, b'E', b'L', b'F'] || file[4] != 2 || file[5] != 1 || file[6] != 1 {
        return Err(ElfError::NotElf64);
    }
    let e_type = u16_at(file, 16)?;
    let e_machine = u16_at(file, 18)?;
    if e_type != 2 || e_machine != 62 {
        return Err(ElfError::NotElf64);
    }
    let entry = u64_at(file, 24)?;
    let phoff = usize::try_from(u64_at(file, 32)?).map_err(|_| ElfError::BadProgramHeaders)?;
    let phentsize = u16_at(file, 54)? as usize;
    let phnum = u16_at(file, 56)? as usize;
    if phentsize != 56 || phnum == 0 || phnum > MAX_SEGMENTS * 4 {
        return Err(ElfError::BadProgramHeaders);
    }
    let table_end = phnum
        .checked_mul(phentsize)
        .and_then(|n| n.checked_add(phoff))
        .ok_or(ElfError::BadProgramHeaders)?;
    if table_end > file.len() {
        return Err(ElfError::BadProgramHeaders);
    }
    let mut segments: Vec<Segment> = Vec::new();
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(file, ph)? != PT_LOAD {
            continue;
        }
        let offset = u64_at(file, ph + 8)?;
        let vaddr = u64_at(file, ph + 16)?;
        let filesz = u64_at(file, ph + 32)?;
        let memsz = u64_at(file, ph + 40)?;
        if filesz > memsz {
            return Err(ElfError::BadSegment);
        }
        let file_end = offset.checked_add(filesz).ok_or(ElfError::BadSegment)?;
        if file_end > file.len() as u64 {
            return Err(ElfError::BadSegment);
        }
        let mem_end = vaddr
            .checked_add(memsz)
            .ok_or(ElfError::SegmentOutOfRange)?;
        if vaddr < min_addr || mem_end > max_addr {
            return Err(ElfError::SegmentOutOfRange);
        }
        if memsz == 0 {
            continue;
        }
        if segments.len() == MAX_SEGMENTS {
            return Err(ElfError::BadProgramHeaders);
        }
        for s in &segments {
            if vaddr < s.vaddr + s.memsz && s.vaddr < mem_end {
                return Err(ElfError::Overlap);
            }
        }
        segments.push(Segment {
            offset: offset as usize,
            filesz: filesz as usize,
            vaddr,
            memsz,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    let start = segments.iter().map(|s| s.vaddr).min().unwrap_or(min_addr);
    let end = segments
        .iter()
        .map(|s| s.vaddr + s.memsz)
        .max()
        .unwrap_or(min_addr);
    if !segments
        .iter()
        .any(|s| entry >= s.vaddr && entry < s.vaddr + s.memsz)
    {
        return Err(ElfError::BadEntry);
    }
    Ok(Image {
        entry,
        segments,
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(entry: u64, vaddr: u64, filesz: u64, memsz: u64, offset: u64) -> Vec<u8> {
        let mut f = vec![0u8; 64 + 56 + 16];
        f[0..4].copy_from_slice(&[0x7f, b'E', b'L', b'F']);
        f[4] = 2;
        f[5] = 1;
        f[6] = 1;
        f[16..18].copy_from_slice(&2u16.to_le_bytes());
        f[18..20].copy_from_slice(&62u16.to_le_bytes());
        f[24..32].copy_from_slice(&entry.to_le_bytes());
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&1u16.to_le_bytes());
        let ph = 64;
        f[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        f[ph + 8..ph + 16].copy_from_slice(&offset.to_le_bytes());
        f[ph + 16..ph + 24].copy_from_slice(&vaddr.to_le_bytes());
        f[ph + 32..ph + 40].copy_from_slice(&filesz.to_le_bytes());
        f[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        f
    }

    #[test]
    fn accepts_well_formed() {
        let f = minimal(0x200000, 0x200000, 16, 4096, 120);
        let img = parse(&f, 0x200000, 0x400000).unwrap();
        assert_eq!(img.entry, 0x200000);
        assert_eq!(img.end, 0x201000);
    }

    #[test]
    fn rejects_hostile_headers() {
        assert_eq!(parse(&[0u8; 10], 0, u64::MAX), Err(ElfError::Truncated));
        let f = minimal(0x200000, 0x200000, 16, 8, 120);
        assert_eq!(parse(&f, 0x200000, 0x400000), Err(ElfError::BadSegment));
        let f = minimal(0x200000, 0x200000, 1 << 40, 1 << 41, 120);
        assert_eq!(parse(&f, 0x200000, u64::MAX), Err(ElfError::BadSegment));
        let f = minimal(0x200000, u64::MAX - 10, 16, 4096, 120);
        assert_eq!(
            parse(&f, 0x200000, u64::MAX),
            Err(ElfError::SegmentOutOfRange)
        );
        let f = minimal(0x200000, 0x100000, 16, 4096, 120);
        assert_eq!(
            parse(&f, 0x200000, 0x400000),
            Err(ElfError::SegmentOutOfRange)
        );
        let f = minimal(0x900000, 0x200000, 16, 4096, 120);
        assert_eq!(parse(&f, 0x200000, 0x400000), Err(ElfError::BadEntry));
        let mut f = minimal(0x200000, 0x200000, 16, 4096, 120);
        f[56..58].copy_from_slice(&u16::MAX.to_le_bytes());
        assert_eq!(
            parse(&f, 0x200000, 0x400000),
            Err(ElfError::BadProgramHeaders)
        );
        let mut f = minimal(0x200000, 0x200000, 16, 4096, 120);
        f[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse(&f, 0x200000, 0x400000).is_err());
    }

    #[test]
    fn never_panics_on_truncations() {
        let f = minimal(0x200000, 0x200000, 16, 4096, 120);
        for n in 0..f.len() {
            let _ = parse(&f[..n], 0x200000, 0x400000);
        }
        for i in 0..f.len() {
            let mut g = f.clone();
            g[i] ^= 0xff;
            let _ = parse(&g, 0x200000, 0x400000);
        }
    }
}
