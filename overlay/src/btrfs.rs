//! The btrfs driver's kernel edge: subvolumes, snapshots and qgroups through btrfs-progs'
//! `btrfs` command (the crate has no unsafe code, so no ioctls of its own; the appliance
//! ships `btrfs` with its libraries).
//!
//! Like Docker's btrfs graph driver (moby `daemon/graphdriver/btrfs`): every layer's `diff/`
//! is a subvolume, a snapshot of its parent's with the layer applied, then made read-only;
//! a container's `diff/` is a writable snapshot of its image's top layer; `--size` is a
//! qgroup limit on the container's subvolume (its referenced bytes: the whole filesystem
//! the container sees, as with Docker's btrfs `size`, not only its own changes).

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, IoContext, Result};

/// The objectid of every subvolume's root directory (`BTRFS_FIRST_FREE_OBJECTID`, Linux
/// `include/uapi/linux/btrfs_tree.h`): a directory with this inode number on btrfs is a
/// subvolume.
const SUBVOL_ROOT_INO: u64 = 256;

/// Find `btrfs` on PATH, or in the sbin dirs a minimal PATH may lack.
fn program() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into(), "/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join("btrfs"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("btrfs"))
}

/// Run `btrfs ARGS`; a failure names the command and carries its stderr.
fn btrfs(args: &[&std::ffi::OsStr]) -> Result<String> {
    let prog = program();
    let shown = || {
        let mut s = String::from("btrfs");
        for a in args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    };
    crate::fsutil::run_tool(&prog, args, &shown(), "btrfs-progs")
}

/// A new empty subvolume at `path`.
pub fn create(path: &Path) -> Result<()> {
    btrfs(&["subvolume".as_ref(), "create".as_ref(), path.as_os_str()]).map(drop)
}

/// A writable snapshot of subvolume `src` at `dst`.
pub fn snapshot(src: &Path, dst: &Path) -> Result<()> {
    btrfs(&["subvolume".as_ref(), "snapshot".as_ref(), src.as_os_str(), dst.as_os_str()]).map(drop)
}

/// Make a subvolume read-only (a finished layer) or writable again.
pub fn set_readonly(path: &Path, ro: bool) -> Result<()> {
    let v = if ro { "true" } else { "false" };
    btrfs(&["property".as_ref(), "set".as_ref(), path.as_os_str(), "ro".as_ref(), v.as_ref()])
        .map(drop)
}

/// Whether `path` is the root of a subvolume.
pub fn is_subvolume(path: &Path) -> Result<bool> {
    match rustix::fs::lstat(path) {
        Ok(st) => Ok(st.st_ino == SUBVOL_ROOT_INO
            && rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory
            && crate::backing::fs_name(path)? == "btrfs"),
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => Ok(false),
        Err(e) => Err(Error::io("stat", path, e)),
    }
}

/// Delete subvolume `path` and the subvolumes a container may have made below it (deepest
/// first: btrfs refuses to delete a subvolume that still holds others). A read-only one is
/// deleted as it is. The space is freed by the filesystem's cleaner in the background.
pub fn delete(path: &Path) -> Result<()> {
    let mut nested = Vec::new();
    find_nested(path, &mut nested)?;
    for p in nested.iter().rev() {
        if is_subvolume(p)? {
            btrfs(&["subvolume".as_ref(), "delete".as_ref(), p.as_os_str()])?;
        }
    }
    btrfs(&["subvolume".as_ref(), "delete".as_ref(), path.as_os_str()]).map(drop)
}

/// Subvolume roots below `dir`, parents before children.
fn find_nested(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(dir).ctx("read", dir)? {
        let e = e.ctx("read", dir)?;
        if !e.file_type().ctx("stat", &e.path())?.is_dir() {
            continue;
        }
        let p = e.path();
        if is_subvolume(&p)? {
            out.push(p.clone());
        }
        find_nested(&p, out)?;
    }
    Ok(())
}

/// Turn quota accounting on for the filesystem holding `path` (idempotent).
pub fn enable_quota(path: &Path) -> Result<()> {
    btrfs(&["quota".as_ref(), "enable".as_ref(), path.as_os_str()]).map(drop)
}

/// Limit subvolume `path`'s referenced bytes.
pub fn limit(path: &Path, bytes: u64) -> Result<()> {
    let b = bytes.to_string();
    btrfs(&["qgroup".as_ref(), "limit".as_ref(), b.as_ref(), path.as_os_str()]).map(drop)
}

/// One line of `/proc/PID/mountinfo` (proc(5)): the mount's device (`major:minor`), the path
/// of its root inside that filesystem, its mount point and its type. Paths are unescaped
/// (`\040` and the other octal escapes).
pub fn parse_mountinfo_line(line: &str) -> Option<(String, String, String, String)> {
    let (left, right) = line.split_once(" - ")?;
    let f: Vec<&str> = left.split(' ').collect();
    let fstype = right.split(' ').next()?;
    Some((f.get(2)?.to_string(), unescape(f.get(3)?), unescape(f.get(4)?), fstype.to_string()))
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts in any mount namespace whose root lies inside subvolume `path`, as "pid P: mount
/// point": a running container's root (crun bind-mounts its rootfs) and whatever it mounted
/// there. Deleting the subvolume would take its tree, and every mount made inside it, away
/// from under it (the kernel detaches them), so `rm` refuses.
pub fn users(path: &Path) -> Result<Vec<String>> {
    let path = &std::fs::canonicalize(path).ctx("resolve", path)?;
    let own = std::fs::read_to_string("/proc/self/mountinfo")
        .ctx("read", Path::new("/proc/self/mountinfo"))?;
    // The btrfs mount holding `path` here: the longest mount point that is a prefix of it.
    let (dev, rel) = own
        .lines()
        .filter_map(parse_mountinfo_line)
        .filter(|(_, _, mnt, fs)| fs == "btrfs" && path.starts_with(mnt))
        .max_by_key(|(_, _, mnt, _)| mnt.len())
        .map(|(dev, root, mnt, _)| {
            let below = path.strip_prefix(&mnt).unwrap_or(path);
            (dev, Path::new(&root).join(below))
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Invalid,
                format!("btrfs: {} is on no btrfs mount", path.display()),
            )
        })?;
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").ctx("read", Path::new("/proc"))?.flatten() {
        let pid = e.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|c| c.is_ascii_digit()) {
            continue;
        }
        // A process that exits meanwhile has nothing to say.
        let Ok(text) = std::fs::read_to_string(e.path().join("mountinfo")) else { continue };
        for (d, root, mnt, _) in text.lines().filter_map(parse_mountinfo_line) {
            if d == dev && Path::new(&root).starts_with(&rel) {
                let user = format!("pid {pid}: {mnt}");
                if !found.contains(&user) {
                    found.push(user);
                }
            }
        }
    }
    Ok(found)
}

/// Refuse to delete subvolume `path` while a mount uses it (see [`users`]).
pub fn check_unused(path: &Path) -> Result<()> {
    if !is_subvolume(path)? {
        return Ok(());
    }
    let users = users(path)?;
    if users.is_empty() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Conflict,
        format!(
            "btrfs: subvolume {} is in use ({}): deleting it would pull the tree from under a \
             running container; stop it first (Docker refuses to remove a running container too)",
            path.display(),
            users.join(", ")
        ),
    ))
}

/// Remove a layer or container directory whose `diff/` may be a (read-only) subvolume.
pub fn remove_layer_dir(dir: &Path) -> Result<()> {
    let diff = dir.join("diff");
    if is_subvolume(&diff)? {
        delete(&diff)?;
    }
    crate::fsutil::remove_tree(dir)
}

/// Refuse a store that is not on btrfs.
pub fn check_backing(root: &Path) -> Result<()> {
    match crate::backing::fs_name(root)? {
        "btrfs" => Ok(()),
        other => Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "btrfs: the store {} is on {other}, not btrfs: the btrfs driver needs its root \
                 on a btrfs filesystem (mkfs.btrfs, then mount it there)",
                root.display()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines_parse_with_escapes() {
        let l = "36 35 0:41 /store/ab\\040c/diff /run/rootfs rw,relatime shared:1 - btrfs /dev/ublkb1 rw";
        let (dev, root, mnt, fs) = parse_mountinfo_line(l).unwrap();
        assert_eq!((dev.as_str(), fs.as_str()), ("0:41", "btrfs"));
        assert_eq!(root, "/store/ab c/diff");
        assert_eq!(mnt, "/run/rootfs");
        assert_eq!(parse_mountinfo_line("garbage"), None);
    }
}
