//! `fs`: files under granted roots.
//!
//! Every path is resolved by the kernel beneath the root's directory descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: `..`, absolute paths and symlinks that
//! leave the root fail in the kernel, atomically, so a rename or symlink swapped in by someone
//! else mid-request cannot escape either. No path string is ever checked for safety here.

use crate::capability::{Call, Capability, Payload};
use crate::error::CapabilityError;
use crate::rules::{Access, Rule, RuleKind};
use abi::{Map, Value};
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;
use std::io::{Read, Write};
use std::path::Path;

/// Size cap of one read or write when the grant sets no `max_bytes` (1 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// Most entries one `list` returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;
/// Retries of a resolution the kernel asked to repeat (`EAGAIN` while a rename raced it).
const RESOLVE_RETRIES: usize = 16;

const READ_ACTIONS: &[&str] = &["read", "list", "stat"];

/// `read`, `write`, `list`, `stat`, `remove` under granted roots.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fs;

fn io_err(what: &str, path: &str, e: Errno) -> CapabilityError {
    match e {
        Errno::XDEV | Errno::LOOP => {
            CapabilityError::OutOfScope(format!("path `{path}` resolves outside the granted root"))
        }
        Errno::NOENT => CapabilityError::NotFound(format!("`{path}` does not exist")),
        Errno::ISDIR => CapabilityError::invalid(format!("`{path}` is a directory")),
        Errno::NOTDIR => {
            CapabilityError::invalid(format!("a component of `{path}` is not a directory"))
        }
        Errno::NOTEMPTY => {
            CapabilityError::failed(format!("{what} `{path}`: the directory is not empty"))
        }
        e => CapabilityError::failed(format!("{what} `{path}`: {e}")),
    }
}

fn open_root(root: &Path) -> Result<OwnedFd, Errno> {
    rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens `path` beneath `dir`; the kernel refuses any resolution that leaves `dir`.
fn beneath(dir: impl AsFd, path: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    let path = if path.is_empty() { "." } else { path };
    // openat2 refuses flags O_PATH ignores (EINVAL), unlike openat.
    let flags = if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOCTTY
    };
    let mut tries = 0;
    loop {
        match rustix::fs::openat2(
            dir.as_fd(),
            path,
            flags,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::AGAIN) if tries < RESOLVE_RETRIES => tries += 1,
            other => return other,
        }
    }
}

fn kind(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        _ => "other",
    }
}

/// Splits `path` into its parent and last component, which must be a plain name.
fn split_last(path: &str) -> Result<(&str, &str), CapabilityError> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = match trimmed.rfind('/') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (".", trimmed),
    };
    if name.is_empty() || name == "." || name == ".." {
        return Err(CapabilityError::invalid(format!(
            "`{path}` does not end in a file or directory name"
        )));
    }
    Ok((if parent.is_empty() { "/" } else { parent }, name))
}

fn same_file(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// Whether the file `path` names beneath `root` is `deny_root` or lies under it: walks up from
/// the resolved file by `..` comparing device and inode numbers (no path strings). Fails closed:
/// when it cannot tell, the deny rule covers the request.
fn lies_under(root: &Path, path: &str, deny_root: &Path) -> bool {
    let Ok(deny) = rustix::fs::stat(deny_root) else {
        return false; // a deny root that does not exist covers nothing
    };
    let Ok(root_fd) = open_root(root) else {
        return true;
    };
    let parent_of = |path: &str| match split_last(path) {
        Ok((parent, _)) => beneath(
            &root_fd,
            parent,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .ok(),
        Err(_) => None,
    };
    let mut cur = match beneath(&root_fd, path, OFlags::PATH, Mode::empty()) {
        Ok(fd) => {
            let Ok(st) = rustix::fs::fstat(&fd) else {
                return true;
            };
            if same_file(&st, &deny) {
                return true;
            }
            if kind(&st) == "dir" {
                fd
            } else {
                match parent_of(path) {
                    Some(fd) => fd,
                    None => return true,
                }
            }
        }
        // A file about to be created: its directory decides.
        Err(Errno::NOENT) => match parent_of(path) {
            Some(fd) => fd,
            None => return true,
        },
        Err(_) => return true,
    };
    for _ in 0..4096 {
        let Ok(st) = rustix::fs::fstat(&cur) else {
            return true;
        };
        if same_file(&st, &deny) {
            return true;
        }
        let Ok(up) = rustix::fs::openat(
            &cur,
            "..",
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            return true;
        };
        let Ok(up_st) = rustix::fs::fstat(&up) else {
            return true;
        };
        if same_file(&up_st, &st) {
            return false; // reached `/`
        }
        cur = up;
    }
    true
}

impl Fs {
    fn max_bytes(rule: &Rule) -> u64 {
        rule.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)
    }

    fn read(root: &OwnedFd, path: &str, max: u64) -> Result<Value, CapabilityError> {
        let fd = beneath(root, path, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())
            .map_err(|e| io_err("read", path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("read", path, e))?;
        if kind(&st) != "file" {
            return Err(CapabilityError::invalid(format!(
                "`{path}` is not a regular file ({})",
                kind(&st)
            )));
        }
        if st.st_size as u64 > max {
            return Err(CapabilityError::TooLarge(format!(
                "`{path}` has {} bytes, the grant allows reads of {max}",
                st.st_size
            )));
        }
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut data)
            .map_err(|e| CapabilityError::failed(format!("read `{path}`: {e}")))?;
        if data.len() as u64 > max {
            return Err(CapabilityError::TooLarge(format!(
                "`{path}` grew past the read cap of {max} bytes"
            )));
        }
        Ok(Value::Bytes(data))
    }

    fn write(root: &OwnedFd, path: &str, data: &[u8], max: u64) -> Result<Value, CapabilityError> {
        if data.len() as u64 > max {
            return Err(CapabilityError::TooLarge(format!(
                "a write of {} bytes, the grant allows {max}",
                data.len()
            )));
        }
        let fd = beneath(
            root,
            path,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NONBLOCK,
            Mode::from_raw_mode(0o644),
        )
        .map_err(|e| io_err("write", path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("write", path, e))?;
        if kind(&st) != "file" {
            return Err(CapabilityError::invalid(format!(
                "`{path}` is not a regular file ({})",
                kind(&st)
            )));
        }
        rustix::fs::ftruncate(&fd, 0).map_err(|e| io_err("write", path, e))?;
        let mut file = std::fs::File::from(fd);
        file.write_all(data)
            .map_err(|e| CapabilityError::failed(format!("write `{path}`: {e}")))?;
        Ok(Value::Int(data.len() as i64))
    }

    fn list(root: &OwnedFd, path: &str) -> Result<Value, CapabilityError> {
        let fd = beneath(
            root,
            path,
            OFlags::RDONLY | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| io_err("list", path, e))?;
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| io_err("list", path, e))?;
        let mut entries = Vec::new();
        for entry in dir {
            let entry = entry.map_err(|e| io_err("list", path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == "." || name == ".." {
                continue;
            }
            if entries.len() >= MAX_LIST_ENTRIES {
                return Err(CapabilityError::TooLarge(format!(
                    "`{path}` has more than {MAX_LIST_ENTRIES} entries"
                )));
            }
            let kind = match rustix::fs::statat(&fd, entry.file_name(), AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => kind(&st),
                Err(_) => "other",
            };
            entries.push((name, kind));
        }
        entries.sort();
        Ok(Value::List(
            entries
                .into_iter()
                .map(|(name, kind)| {
                    let mut map = Map::new();
                    map.insert("name".into(), Value::Str(name));
                    map.insert("type".into(), Value::Str(kind.into()));
                    Value::Map(map)
                })
                .collect(),
        ))
    }

    fn stat(root: &OwnedFd, path: &str) -> Result<Value, CapabilityError> {
        let fd = beneath(root, path, OFlags::PATH, Mode::empty())
            .map_err(|e| io_err("stat", path, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("stat", path, e))?;
        let mut map = Map::new();
        map.insert("type".into(), Value::Str(kind(&st).into()));
        map.insert("size".into(), Value::Int(st.st_size));
        map.insert(
            "modified_ms".into(),
            Value::Int(st.st_mtime.saturating_mul(1000) + st.st_mtime_nsec as i64 / 1_000_000),
        );
        map.insert("mode".into(), Value::Int((st.st_mode & 0o7777) as i64));
        Ok(Value::Map(map))
    }

    fn remove(root: &OwnedFd, path: &str) -> Result<Value, CapabilityError> {
        let (parent, name) = split_last(path)?;
        let dir = beneath(
            root,
            parent,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| io_err("remove", path, e))?;
        // `name` is one plain component: unlinkat never follows it, even if it is a symlink.
        let st = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_err("remove", path, e))?;
        let flags = if kind(&st) == "dir" {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        rustix::fs::unlinkat(&dir, name, flags).map_err(|e| io_err("remove", path, e))?;
        Ok(Value::Unit)
    }
}

impl Capability for Fs {
    fn name(&self) -> &str {
        "fs"
    }

    fn actions(&self) -> &[&str] {
        &["read", "write", "list", "stat", "remove"]
    }

    fn scope_fields(&self) -> &[&str] {
        &["roots", "access", "max_bytes"]
    }

    fn check_shape(&self, rule: &Rule, kind: RuleKind) -> Result<(), String> {
        for root in &rule.roots {
            if !root.is_absolute() {
                return Err(format!("root `{}` is not an absolute path", root.display()));
            }
        }
        if kind == RuleKind::Deny {
            if rule.access.is_some() || rule.max_bytes.is_some() {
                return Err("`access` and `max_bytes` mean nothing on a deny rule".into());
            }
            return Ok(());
        }
        if rule.roots.is_empty() {
            return Err("an `fs` grant must list its `roots`".into());
        }
        if rule.access.unwrap_or(Access::Read) == Access::Read {
            if let Some(a) = rule
                .actions
                .iter()
                .find(|a| *a != "*" && !READ_ACTIONS.contains(&a.as_str()))
            {
                return Err(format!(
                    "action `{a}` needs `access = \"read-write\"` (the grant is read-only)"
                ));
            }
        }
        if rule.max_bytes == Some(0) {
            return Err("`max_bytes` must be positive".into());
        }
        Ok(())
    }

    fn check_rule(&self, rule: &Rule, kind: RuleKind) -> Result<(), String> {
        if kind == RuleKind::Grant {
            for root in &rule.roots {
                let st = rustix::fs::stat(root)
                    .map_err(|e| format!("root `{}` is unusable: {e}", root.display()))?;
                if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
                    return Err(format!("root `{}` is not a directory", root.display()));
                }
            }
        }
        Ok(())
    }

    fn covers(
        &self,
        rule: &Rule,
        kind: RuleKind,
        action: &str,
        payload: &Value,
    ) -> Result<bool, CapabilityError> {
        let p = Payload::new(payload, "fs")?;
        let root = Path::new(p.str("root")?);
        let path = p.opt_str("path")?.unwrap_or("");
        if !root.is_absolute() {
            return Err(CapabilityError::invalid(
                "fs: `root` must be an absolute path",
            ));
        }
        if kind == RuleKind::Deny {
            // Without roots a deny covers every root; with roots, the files at or under them,
            // however the request names them.
            return Ok(
                rule.roots.is_empty() || rule.roots.iter().any(|d| lies_under(root, path, d))
            );
        }
        if !READ_ACTIONS.contains(&action)
            && rule.access.unwrap_or(Access::Read) != Access::ReadWrite
        {
            return Ok(false);
        }
        // Root selection: the payload names one of the grant's roots (component-wise equality).
        // Safety does not rest on it; resolution beneath that root does.
        Ok(rule.roots.iter().any(|r| r.as_path() == root))
    }

    fn execute(&self, call: &Call) -> Result<Value, CapabilityError> {
        let p = Payload::new(&call.payload, "fs")?;
        let root = Path::new(p.str("root")?);
        let max = Self::max_bytes(&call.rule);
        let root_fd = open_root(root)
            .map_err(|e| CapabilityError::failed(format!("the granted root is unusable: {e}")))?;
        match call.action.as_str() {
            "read" => {
                p.only(&["root", "path"])?;
                Self::read(&root_fd, p.str("path")?, max)
            }
            "write" => {
                p.only(&["root", "path", "data"])?;
                Self::write(&root_fd, p.str("path")?, p.bytes("data")?, max)
            }
            "list" => {
                p.only(&["root", "path"])?;
                Self::list(&root_fd, p.opt_str("path")?.unwrap_or("."))
            }
            "stat" => {
                p.only(&["root", "path"])?;
                Self::stat(&root_fd, p.opt_str("path")?.unwrap_or("."))
            }
            _ => {
                p.only(&["root", "path"])?;
                Self::remove(&root_fd, p.str("path")?)
            }
        }
    }
}
