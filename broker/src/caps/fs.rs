//! `fs`: files under granted roots.
//!
//! Every path is resolved by the kernel beneath the root's directory descriptor with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: `..`, absolute paths and symlinks that
//! leave the root fail in the kernel, atomically, so a rename or symlink swapped in by someone
//! else mid-request cannot escape either. No path string is ever checked for safety here.
//! Deny rules with `roots` are decided on the opened object (see `fs_object`).

use super::fs_object::{Object, Open, io_err, kind, open_object, open_root};
use crate::capability::{Call, Capability, Payload, PendingDeny, ReadLimit, check_max_bytes};
use crate::error::CapabilityError;
use crate::rules::{Access, Rule, RuleKind};
use abi::{Map, Value};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::io::{Read, Write};
use std::path::Path;

/// Size cap of one read or write when the grant sets no `max_bytes` (1 MiB).
pub const DEFAULT_MAX_BYTES: u64 = 1 << 20;
/// Most entries one `list` returns.
pub const MAX_LIST_ENTRIES: usize = 10_000;
const READ_ACTIONS: &[&str] = &["read", "list", "stat"];

/// `read`, `write`, `list`, `stat`, `remove` under granted roots.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fs;

impl Fs {
    fn max_bytes(rule: &Rule) -> u64 {
        rule.max_bytes.unwrap_or(DEFAULT_MAX_BYTES)
    }

    fn read(
        root: &OwnedFd,
        path: &str,
        limit: ReadLimit,
        denies: &[PendingDeny],
    ) -> Result<Value, CapabilityError> {
        let max = limit.max;
        let how = Open {
            flags: OFlags::RDONLY | OFlags::NONBLOCK,
            mode: Mode::empty(),
            follow: true,
        };
        let fd = open_object(root, path, how, denies, "read")?.fd;
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("read", path, e))?;
        if kind(&st) != "file" {
            return Err(CapabilityError::invalid(format!(
                "`{path}` is not a regular file ({})",
                kind(&st)
            )));
        }
        if st.st_size as u64 > max {
            return Err(limit.exceeded(format!("`{path}` has {} bytes", st.st_size)));
        }
        let mut data = Vec::new();
        std::fs::File::from(fd)
            .take(max + 1)
            .read_to_end(&mut data)
            .map_err(|e| CapabilityError::failed(format!("read `{path}`: {e}")))?;
        if data.len() as u64 > max {
            return Err(limit.exceeded(format!("`{path}` grew past {max} bytes while read")));
        }
        Ok(Value::Bytes(data))
    }

    fn write(
        root: &OwnedFd,
        path: &str,
        data: &[u8],
        max: u64,
        denies: &[PendingDeny],
    ) -> Result<Value, CapabilityError> {
        if data.len() as u64 > max {
            return Err(CapabilityError::TooLarge(format!(
                "a write of {} bytes, the grant allows {max}",
                data.len()
            )));
        }
        let how = Open {
            flags: OFlags::WRONLY | OFlags::CREATE | OFlags::NONBLOCK,
            mode: Mode::from_raw_mode(0o644),
            follow: true,
        };
        let fd = open_object(root, path, how, denies, "write")?.fd;
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

    /// Lists `path`, refused once the listing's encoding would pass `max_reply` bytes (counted
    /// per entry from below: a `#{name, type}` map takes at least 16 bytes besides the two
    /// strings, so a refused listing never fits the reply).
    fn list(
        root: &OwnedFd,
        path: &str,
        max_reply: Option<u64>,
        denies: &[PendingDeny],
    ) -> Result<Value, CapabilityError> {
        let how = Open {
            flags: OFlags::RDONLY | OFlags::DIRECTORY,
            mode: Mode::empty(),
            follow: true,
        };
        let fd = open_object(root, path, how, denies, "list")?.fd;
        let dir = rustix::fs::Dir::read_from(&fd).map_err(|e| io_err("list", path, e))?;
        let mut entries = Vec::new();
        let mut encoded: u64 = 0;
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
            encoded += 16 + (name.len() + kind.len()) as u64;
            if let Some(max) = max_reply
                && encoded > max
            {
                return Err(CapabilityError::ReplyTooLarge {
                    what: format!("the listing of `{path}` passes {max} bytes"),
                    max,
                });
            }
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

    fn stat(root: &OwnedFd, path: &str, denies: &[PendingDeny]) -> Result<Value, CapabilityError> {
        let how = Open {
            flags: OFlags::PATH,
            mode: Mode::empty(),
            follow: true,
        };
        let fd = open_object(root, path, how, denies, "stat")?.fd;
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

    fn remove(
        root: &OwnedFd,
        path: &str,
        denies: &[PendingDeny],
    ) -> Result<Value, CapabilityError> {
        // The entry itself, not what a symlink points to: removing a link leaves its target.
        let how = Open {
            flags: OFlags::PATH,
            mode: Mode::empty(),
            follow: false,
        };
        let Object { dir, name, fd } = open_object(root, path, how, denies, "remove")?;
        let Some(dir) = dir else {
            return Err(CapabilityError::invalid(format!(
                "`{path}` does not end in a file or directory name"
            )));
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err("remove", path, e))?;
        let flags = if kind(&st) == "dir" {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        // `name` is one plain component: unlinkat never follows it, even if it is a symlink.
        rustix::fs::unlinkat(&dir, name.as_str(), flags).map_err(|e| io_err("remove", path, e))?;
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
        if rule.access.unwrap_or(Access::Read) == Access::Read
            && let Some(a) = rule
                .actions
                .iter()
                .find(|a| *a != "*" && !READ_ACTIONS.contains(&a.as_str()))
        {
            return Err(format!(
                "action `{a}` needs `access = \"read-write\"` (the grant is read-only)"
            ));
        }
        check_max_bytes(rule)?;
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
        p.opt_str("path")?;
        if !root.is_absolute() {
            return Err(CapabilityError::invalid(
                "fs: `root` must be an absolute path",
            ));
        }
        if kind == RuleKind::Deny {
            // Without roots a deny covers every root. With roots it covers the objects at or
            // under them, however the request names them: decided in `execute` on the object
            // opened, since a path says nothing about where it leads.
            return Ok(rule.roots.is_empty());
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
                Self::read(&root_fd, p.str("path")?, call.read_limit(max), &call.denies)
            }
            "write" => {
                p.only(&["root", "path", "data"])?;
                Self::write(
                    &root_fd,
                    p.str("path")?,
                    p.bytes("data")?,
                    max,
                    &call.denies,
                )
            }
            "list" => {
                p.only(&["root", "path"])?;
                Self::list(
                    &root_fd,
                    p.opt_str("path")?.unwrap_or("."),
                    call.max_reply_bytes,
                    &call.denies,
                )
            }
            "stat" => {
                p.only(&["root", "path"])?;
                Self::stat(&root_fd, p.opt_str("path")?.unwrap_or("."), &call.denies)
            }
            _ => {
                p.only(&["root", "path"])?;
                Self::remove(&root_fd, p.str("path")?, &call.denies)
            }
        }
    }
}
