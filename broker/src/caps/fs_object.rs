//! `fs`: opening the object a path names beneath a root, and deciding deny rules on that object.
//!
//! Why one file of about 630 lines: this is the security-critical sequence of the fs capability
//! (open beneath the root, follow a last symlink by hand, compare every ancestor with the denied
//! subtrees), and it is read and reviewed as one piece; its callers in `fs.rs` only decide
//! what to do with the object it returns.
//!
//! Deny rules are decided on what was actually opened, never on the path: the directory that
//! holds the object is opened first (the kernel resolves it beneath the root), a symlink in the
//! last component is followed by hand so the holding directory stays known, and the object is
//! then opened in that directory by its single name with `O_NOFOLLOW`. The object and every
//! ancestor of its directory (walked by `..`) are compared by device and inode number with each
//! denied subtree. What a `..` walk cannot see fails closed: a non-directory with several hard
//! links on the denied subtree's device, and a bind mount of a subdirectory of that device.

use crate::capability::PendingDeny;
use crate::error::CapabilityError;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat, StatxFlags};
use rustix::io::Errno;
use std::path::{Path, PathBuf};

/// Retries of a resolution the kernel asked to repeat (`EAGAIN` while a rename raced it).
const RESOLVE_RETRIES: usize = 16;
/// Symlinks followed by hand in the last component before giving up (the kernel's limit).
const MAX_HOPS: usize = 40;
/// Deepest `..` walk; deeper trees fail closed.
const MAX_DEPTH: usize = 4096;

pub(super) fn io_err(what: &str, path: &str, e: Errno) -> CapabilityError {
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

pub(super) fn open_root(root: &Path) -> Result<OwnedFd, Errno> {
    path_fd(rustix::fs::CWD, root, OFlags::DIRECTORY)
}

/// A path-only (`O_PATH`), close-on-exec descriptor of `name` in `at`: nothing can be read or
/// written through it, and it needs no read permission on what it names. `extra` adds flags
/// (`O_DIRECTORY`).
fn path_fd(at: impl AsFd, name: impl rustix::path::Arg, extra: OFlags) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        at,
        name,
        OFlags::PATH | OFlags::CLOEXEC | extra,
        Mode::empty(),
    )
}

/// Opens `path` beneath `dir`; the kernel refuses any resolution that leaves `dir`.
pub(super) fn beneath(
    dir: impl AsFd,
    path: &str,
    flags: OFlags,
    mode: Mode,
) -> Result<OwnedFd, Errno> {
    let path = if path.is_empty() { "." } else { path };
    retry_again(|| {
        rustix::fs::openat2(
            dir.as_fd(),
            path,
            with_cloexec(flags),
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        )
    })
}

/// Runs `op` again while it fails with `EAGAIN`, at most `RESOLVE_RETRIES` more times.
fn retry_again<T>(mut op: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    let mut tries = 0;
    loop {
        match op() {
            Err(Errno::AGAIN) if tries < RESOLVE_RETRIES => tries += 1,
            other => return other,
        }
    }
}

fn with_cloexec(flags: OFlags) -> OFlags {
    // openat2 refuses flags O_PATH ignores (EINVAL), unlike openat.
    if flags.contains(OFlags::PATH) {
        flags | OFlags::CLOEXEC
    } else {
        flags | OFlags::CLOEXEC | OFlags::NOCTTY
    }
}

pub(super) fn kind(st: &Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "file",
        FileType::Directory => "dir",
        FileType::Symlink => "symlink",
        _ => "other",
    }
}

/// Splits `path` into its parent and last component, which must be a plain name.
pub(super) fn split_last(path: &str) -> Result<(&str, &str), CapabilityError> {
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

/// How to open the object a request names.
#[derive(Clone, Copy)]
pub(super) struct Open {
    pub flags: OFlags,
    pub mode: Mode,
    /// Follow a symlink in the last component (every action but `remove`).
    pub follow: bool,
}

/// An opened object and the directory that holds it (`None` when the path named a directory by
/// `.`, `..` or the root itself: the object is then its own starting point).
pub(super) struct Object {
    pub dir: Option<OwnedFd>,
    pub name: String,
    pub fd: OwnedFd,
}

/// Opens what `path` names beneath `root` and decides `denies` on it. Nothing is created before
/// the holding directory passed the deny rules; a file created by `O_CREAT` is checked again.
pub(super) fn open_object(
    root: &OwnedFd,
    path: &str,
    how: Open,
    denies: &[PendingDeny],
    what: &str,
) -> Result<Object, CapabilityError> {
    open_object_by(root, path, how, denies, what, |dir, name, flags, mode| {
        rustix::fs::openat(dir, name, flags, mode)
    })
}

/// `open_object`, opening the last component with `open_name` (`openat`; a test puts a rename
/// in front of it to stand for one that races the request).
fn open_object_by(
    root: &OwnedFd,
    path: &str,
    how: Open,
    denies: &[PendingDeny],
    what: &str,
    mut open_name: impl FnMut(&OwnedFd, &str, OFlags, Mode) -> Result<OwnedFd, Errno>,
) -> Result<Object, CapabilityError> {
    let denied = DeniedRoots::stat(denies)?;
    let mut current = path.to_string();
    let mut dir_flags = OFlags::empty();
    for _ in 0..MAX_HOPS {
        let trimmed = current.trim_end_matches('/');
        if current.ends_with('/') {
            dir_flags = OFlags::DIRECTORY;
        }
        let last = trimmed.rsplit('/').next().unwrap_or("");
        if trimmed.is_empty() || last == "." || last == ".." {
            // The path names a directory as a whole: the kernel resolves it, and the directory
            // is its own starting point for the walk.
            let fd =
                beneath(root, &current, how.flags, how.mode).map_err(|e| io_err(what, path, e))?;
            denied.check(&fd, None)?;
            return Ok(Object {
                dir: None,
                name: ".".into(),
                fd,
            });
        }
        let (parent, name) = split_last(&current)?;
        let dir = beneath(
            root,
            parent,
            OFlags::PATH | OFlags::DIRECTORY,
            Mode::empty(),
        )
        .map_err(|e| io_err(what, path, e))?;
        denied.check(&dir, None)?;
        match rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if how.follow && kind(&st) == "symlink" => {
                current = follow(&dir, parent, name, path)?;
                continue;
            }
            Ok(_) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io_err(what, path, e)),
        }
        // One plain name in a directory already checked: nothing to resolve, and a symlink
        // swapped in since the stat is refused (ELOOP) and followed on the next round.
        let flags = with_cloexec(how.flags | dir_flags | OFlags::NOFOLLOW);
        let fd = match open_name(&dir, name, flags, how.mode) {
            Err(Errno::LOOP) if how.follow => continue,
            other => other.map_err(|e| io_err(what, path, e))?,
        };
        let st = rustix::fs::fstat(&fd).map_err(|e| io_err(what, path, e))?;
        denied.check(&dir, Some((&fd, &st)))?;
        return Ok(Object {
            dir: Some(dir),
            name: name.to_string(),
            fd,
        });
    }
    Err(io_err(what, path, Errno::LOOP))
}

/// The path a symlink named `name` in `dir` (reached as `parent`) points to, relative to the
/// root. Absolute targets leave the root, as they do for the kernel's own resolution.
fn follow(dir: &OwnedFd, parent: &str, name: &str, path: &str) -> Result<String, CapabilityError> {
    let target =
        rustix::fs::readlinkat(dir, name, Vec::new()).map_err(|e| io_err("resolve", path, e))?;
    let target = target.to_string_lossy().into_owned();
    if target.starts_with('/') {
        return Err(io_err("resolve", path, Errno::XDEV));
    }
    Ok(match parent {
        "." => target,
        parent => format!("{parent}/{target}"),
    })
}

/// A denied subtree as it is on disk now.
struct DeniedRoot<'a> {
    label: &'a str,
    root: &'a Path,
    st: Stat,
}

struct DeniedRoots<'a>(Vec<DeniedRoot<'a>>);

fn refuse(label: &str, reason: String) -> CapabilityError {
    CapabilityError::Denied {
        rule: label.to_string(),
        reason,
    }
}

fn same_file(a: &Stat, b: &Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

impl<'a> DeniedRoots<'a> {
    fn stat(denies: &'a [PendingDeny]) -> Result<Self, CapabilityError> {
        let mut out = Vec::new();
        for deny in denies {
            for root in &deny.rule.roots {
                match rustix::fs::stat(root) {
                    Ok(st) => out.push(DeniedRoot {
                        label: &deny.label,
                        root,
                        st,
                    }),
                    // A denied subtree that does not exist covers nothing (yet).
                    Err(Errno::NOENT) => {}
                    Err(e) => {
                        return Err(refuse(
                            &deny.label,
                            format!(
                                "the denied root `{}` cannot be checked: {e}",
                                root.display()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(DeniedRoots(out))
    }

    /// Refuses when `object` (or, without one, `dir` itself) is a denied root or lies under one.
    fn check(
        &self,
        dir: &OwnedFd,
        object: Option<(&OwnedFd, &Stat)>,
    ) -> Result<(), CapabilityError> {
        if self.0.is_empty() {
            return Ok(());
        }
        if let Some((_, st)) = object {
            for d in &self.0 {
                if same_file(st, &d.st) {
                    return Err(refuse(d.label, self.inside(d)));
                }
                // Another name of a file in the denied subtree may be this one: no `..` walk
                // can tell, so several links on that device fail closed.
                if kind(st) != "dir" && st.st_nlink > 1 && st.st_dev == d.st.st_dev {
                    return Err(refuse(
                        d.label,
                        format!(
                            "the file has {} hard links, and one may lie under the denied root `{}`",
                            st.st_nlink,
                            d.root.display()
                        ),
                    ));
                }
            }
            if kind(st) == "dir" {
                return self.walk(object.map(|(fd, _)| fd).unwrap_or(dir));
            }
        }
        self.walk(dir)
    }

    fn inside(&self, d: &DeniedRoot<'_>) -> String {
        format!(
            "the object lies under the denied root `{}`",
            d.root.display()
        )
    }

    /// Walks up from the directory `start` by `..` to `/`, comparing each directory with the
    /// denied roots. Fails closed when it cannot tell.
    fn walk(&self, start: &OwnedFd) -> Result<(), CapabilityError> {
        let first = self.0.first().map_or("denies", |d| d.label);
        let unsure = |why: String| {
            refuse(
                first,
                format!("cannot tell whether the object lies under a denied root: {why}"),
            )
        };
        let mut cur = path_fd(start, ".", OFlags::DIRECTORY).map_err(|e| unsure(e.to_string()))?;
        let mut cur_st = rustix::fs::fstat(&cur).map_err(|e| unsure(e.to_string()))?;
        for _ in 0..MAX_DEPTH {
            for d in &self.0 {
                if same_file(&cur_st, &d.st) {
                    return Err(refuse(d.label, self.inside(d)));
                }
            }
            let up = path_fd(&cur, "..", OFlags::DIRECTORY).map_err(|e| unsure(e.to_string()))?;
            let up_st = rustix::fs::fstat(&up).map_err(|e| unsure(e.to_string()))?;
            if same_file(&up_st, &cur_st) {
                return Ok(()); // reached `/`
            }
            self.crossing(&cur, &up, &cur_st)?;
            cur = up;
            cur_st = up_st;
        }
        Err(unsure(format!("deeper than {MAX_DEPTH} directories")))
    }

    /// Leaving `cur` for `up` across a mount: when `cur` is the root of a bind mount (a mount
    /// showing one subdirectory of a filesystem), the `..` walk skipped that subdirectory's real
    /// ancestors. The mount table says which subdirectory it is; a denied root on that device
    /// covers it when it is that subdirectory or one of its ancestors, and fails closed when the
    /// table cannot tell.
    fn crossing(&self, cur: &OwnedFd, up: &OwnedFd, cur_st: &Stat) -> Result<(), CapabilityError> {
        let same_dev = || self.0.iter().filter(|d| d.st.st_dev == cur_st.st_dev);
        let Some(first) = same_dev().next() else {
            return Ok(());
        };
        let (Some(here), Some(there)) = (mount_id(cur), mount_id(up)) else {
            return Err(refuse(
                first.label,
                "cannot tell which mount the object is on".into(),
            ));
        };
        if here == there {
            return Ok(());
        }
        let mounts = Mounts::read();
        let Some(shown) = mounts.as_ref().and_then(|m| m.get(here)) else {
            return Err(refuse(
                first.label,
                "cannot read this mount in the mount table".into(),
            ));
        };
        if shown.root == Path::new("/") {
            return Ok(());
        }
        for d in same_dev() {
            let inside = mounts.as_ref().and_then(|m| m.fs_path(d.root));
            match inside {
                Some(denied) if !shown.root.starts_with(&denied) => {}
                _ => {
                    return Err(refuse(
                        d.label,
                        format!(
                            "the object is reached through a bind mount of `{}`, under the denied root `{}`",
                            shown.root.display(),
                            d.root.display()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn mount_id(fd: impl AsFd) -> Option<u64> {
    rustix::fs::statx(fd, "", AtFlags::EMPTY_PATH, StatxFlags::MNT_ID)
        .ok()
        .filter(|x| StatxFlags::from_bits_retain(x.stx_mask).contains(StatxFlags::MNT_ID))
        .map(|x| x.stx_mnt_id)
}

/// One line of `/proc/self/mountinfo`: which directory of its filesystem a mount shows, where.
struct Mount {
    id: u64,
    root: PathBuf,
    point: PathBuf,
}

/// The mount table, read when a walk crosses a mount on a denied root's device.
struct Mounts(Vec<Mount>);

impl Mounts {
    fn read() -> Option<Mounts> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut mounts = Vec::new();
        for line in info.lines() {
            let mut fields = line.split(' ');
            let id = fields.next()?.parse().ok()?;
            let root = unescape(fields.nth(2)?);
            let point = unescape(fields.next()?);
            mounts.push(Mount { id, root, point });
        }
        Some(Mounts(mounts))
    }

    fn get(&self, id: u64) -> Option<&Mount> {
        self.0.iter().find(|m| m.id == id)
    }

    /// Where `path` (a host path, resolved) lies inside its filesystem.
    fn fs_path(&self, path: &Path) -> Option<PathBuf> {
        let canonical = std::fs::canonicalize(path).ok()?;
        let fd = path_fd(rustix::fs::CWD, &canonical, OFlags::empty()).ok()?;
        let mount = self.get(mount_id(&fd)?)?;
        let rest = canonical.strip_prefix(&mount.point).ok()?;
        Some(mount.root.join(rest))
    }
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\134c"), PathBuf::from("/a b\\c"));
        assert_eq!(unescape("/plain\\x"), PathBuf::from("/plain\\x"));
    }

    fn close_on_exec(fd: &OwnedFd) -> bool {
        rustix::io::fcntl_getfd(fd)
            .unwrap()
            .contains(rustix::io::FdFlags::CLOEXEC)
    }

    /// No descriptor the capability opens outlives an `exec` of the host process: the root,
    /// objects opened beneath it, and the last component opened by name.
    #[test]
    fn every_descriptor_opened_is_close_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/f"), b"x").unwrap();
        let root = open_root(dir.path()).unwrap();
        assert!(close_on_exec(&root));
        for (path, flags) in [
            ("sub/f", OFlags::RDONLY),
            ("sub/f", OFlags::WRONLY),
            ("sub/f", OFlags::PATH),
            ("sub", OFlags::RDONLY | OFlags::DIRECTORY),
            (".", OFlags::PATH | OFlags::DIRECTORY),
        ] {
            let fd = beneath(&root, path, flags, Mode::empty()).unwrap();
            assert!(close_on_exec(&fd), "{path} {flags:?}");
            for follow in [true, false] {
                let how = Open {
                    flags,
                    mode: Mode::empty(),
                    follow,
                };
                let object = open_object(&root, path, how, &[], "open").unwrap();
                assert!(close_on_exec(&object.fd), "{path} {flags:?}");
                if let Some(dir) = &object.dir {
                    assert!(close_on_exec(dir), "{path}");
                    assert!(path_only(dir), "{path}");
                }
            }
        }
    }

    fn path_only(fd: &OwnedFd) -> bool {
        rustix::fs::fcntl_getfl(fd).unwrap().contains(OFlags::PATH)
    }

    /// The root and the directories a deny walk passes are held by path-only descriptors: no
    /// data can be read through them and no read permission is needed; a root must be a
    /// directory.
    #[test]
    fn roots_and_walked_directories_are_path_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let root = open_root(dir.path()).unwrap();
        assert!(path_only(&root));
        assert_eq!(open_root(&dir.path().join("f")).unwrap_err(), Errno::NOTDIR);
        let fd = path_fd(&root, "f", OFlags::empty()).unwrap();
        assert!(path_only(&fd) && close_on_exec(&fd));
        assert_eq!(
            path_fd(&root, "f", OFlags::DIRECTORY).unwrap_err(),
            Errno::NOTDIR
        );
    }

    #[test]
    fn eagain_is_retried_a_bounded_number_of_times() {
        let mut calls = 0;
        let result: Result<(), Errno> = retry_again(|| {
            calls += 1;
            assert!(calls <= 2 * RESOLVE_RETRIES, "retried without bound");
            Err(Errno::AGAIN)
        });
        assert_eq!(result, Err(Errno::AGAIN));
        assert_eq!(calls, RESOLVE_RETRIES + 1);
        let mut calls = 0;
        let result = retry_again(|| {
            calls += 1;
            if calls <= RESOLVE_RETRIES {
                Err(Errno::AGAIN)
            } else {
                Ok(calls)
            }
        });
        assert_eq!(result, Ok(RESOLVE_RETRIES + 1));
        assert_eq!(
            retry_again(|| Err::<(), _>(Errno::NOENT)),
            Err(Errno::NOENT)
        );
    }

    /// Opens `path` beneath `root` while a rename, just before the last component is opened,
    /// replaces that component with a symlink to `target`.
    fn open_with_swap(root: &Path, path: &str, target: &str) -> Result<Object, CapabilityError> {
        let root_fd = open_root(root).unwrap();
        let mut swapped = false;
        let how = Open {
            flags: OFlags::RDONLY,
            mode: Mode::empty(),
            follow: true,
        };
        open_object_by(
            &root_fd,
            path,
            how,
            &[],
            "read",
            |dir, name, flags, mode| {
                if !swapped {
                    swapped = true;
                    let link = root.join(format!("{path}.new"));
                    std::os::unix::fs::symlink(target, &link).unwrap();
                    std::fs::rename(&link, root.join(path)).unwrap();
                }
                rustix::fs::openat(dir, name, flags, mode)
            },
        )
    }

    fn contents(object: Object) -> String {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(object.fd), &mut text).unwrap();
        text
    }

    /// A symlink swapped in between the stat and the open of the last component is refused by
    /// the kernel (`O_NOFOLLOW`) and followed by hand on the next round: to its target when
    /// that is beneath the root, to an error when it leads out.
    #[test]
    fn a_symlink_raced_into_the_last_component_is_followed_by_hand() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(dir.path().join("secret"), b"secret").unwrap();
        std::fs::write(root.join("target"), b"target").unwrap();
        std::fs::write(root.join("a"), b"a").unwrap();
        let object = open_with_swap(&root, "a", "target").unwrap();
        assert_eq!(contents(object), "target");
        std::fs::write(root.join("b"), b"b").unwrap();
        let err = open_with_swap(&root, "b", "../secret").err().unwrap();
        assert!(matches!(err, CapabilityError::OutOfScope(_)), "{err:?}");
    }

    #[test]
    fn split_last_needs_a_name() {
        assert_eq!(split_last("a/b/").unwrap(), ("a", "b"));
        assert_eq!(split_last("/b").unwrap(), ("/", "b"));
        assert!(split_last("a/..").is_err());
        assert!(split_last("").is_err());
    }
}
