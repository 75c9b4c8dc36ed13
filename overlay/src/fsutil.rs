//! Small filesystem helpers: atomic metadata writes, beneath-the-root resolution, fd-relative
//! recursive removal, tree copies for the vfs driver, sizes, random names.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rand::Rng;
use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use serde::Serialize;

use crate::error::{Error, ErrorKind, IoContext, Result};

/// Resolution flags for every path taken from untrusted input: stay below the start directory
/// and never follow /proc magic links.
pub const BENEATH: ResolveFlags = ResolveFlags::BENEATH.union(ResolveFlags::NO_MAGICLINKS);

/// Open a directory by absolute or cwd-relative path (trusted paths only).
pub fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
        .ctx("open directory", path)
}

/// Open `rel` below `dirfd` without leaving it. `rel` must already be validated as relative.
pub fn open_beneath(dirfd: impl AsFd, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let rel = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    rustix::fs::openat2(dirfd, rel, flags | OFlags::CLOEXEC, Mode::empty(), BENEATH)
}

/// Write `bytes` to `dir/name` atomically: temp file, fsync, rename, fsync of the directory.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!(".{name}.tmp-{}", random_hex(8)));
    let target = dir.join(name);
    let res = (|| {
        let mut f = File::create(&tmp).ctx("create", &tmp)?;
        f.write_all(bytes).ctx("write", &tmp)?;
        f.sync_all().ctx("fsync", &tmp)?;
        std::fs::rename(&tmp, &target).ctx("rename into place", &target)?;
        fsync_dir(dir)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Serialize `value` as pretty JSON and write it atomically.
pub fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| {
        Error::with_source(ErrorKind::Invalid, format!("serialize {}", dir.join(name).display()), e)
    })?;
    write_atomic(dir, name, &bytes)
}

/// Write the file at `path` by `fill` (given a buffered temporary beside it, and that
/// temporary's path for error context), then flush, fsync and rename it into place: a reader
/// sees the old file or the whole new one, and a failure leaves no temporary behind.
pub fn replace_file(
    path: &Path,
    fill: impl FnOnce(BufWriter<File>, &Path) -> Result<BufWriter<File>>,
) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", random_hex(4)));
    let res = (|| {
        let out = BufWriter::with_capacity(1 << 20, File::create(&tmp).ctx("create", &tmp)?);
        let mut out = fill(out, &tmp)?;
        out.flush().ctx("write", &tmp)?;
        out.get_ref().sync_all().ctx("fsync", &tmp)?;
        std::fs::rename(&tmp, path).ctx("rename into place", path)
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res
}

/// Read and parse a JSON metadata file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::io_or_not_found("read", path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::with_source(ErrorKind::Invalid, format!("parse {}", path.display()), e))
}

pub fn fsync_dir(dir: &Path) -> Result<()> {
    let fd = open_dir(dir)?;
    rustix::fs::fsync(&fd).ctx("fsync directory", dir)
}

/// Random lowercase hex of `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill(&mut b[..]);
    hex::encode(b)
}

/// A 26-character short link id: base32 (A–Z, 2–7) of 16 random bytes, as overlay2 uses.
pub fn short_id() -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut b = [0u8; 17];
    rand::thread_rng().fill(&mut b[..16]);
    // 26 symbols × 5 bits = 130 bits, taken from the 128 random bits (the last 2 are zero pad).
    let mut out = String::with_capacity(26);
    for i in 0..26 {
        let bit = i * 5;
        let (byte, off) = (bit / 8, bit % 8);
        let word = (u16::from(b[byte]) << 8) | u16::from(b[byte + 1]);
        let idx = (word >> (11 - off)) & 0x1f;
        out.push(ALPHABET[idx as usize] as char);
    }
    out
}

/// Remove `name` in `dirfd` whatever it is, recursing into directories through fds only
/// (never following symlinks), so a hostile tree cannot redirect the removal.
pub fn remove_at(dirfd: impl AsFd, name: &OsStr) -> rustix::io::Result<()> {
    let dirfd = dirfd.as_fd();
    let st = rustix::fs::statat(dirfd, name, AtFlags::SYMLINK_NOFOLLOW)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) == rustix::fs::FileType::Directory {
        let sub = rustix::fs::openat(
            dirfd,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        clear_dir(&sub)?;
        rustix::fs::unlinkat(dirfd, name, AtFlags::REMOVEDIR)
    } else {
        rustix::fs::unlinkat(dirfd, name, AtFlags::empty())
    }
}

/// Remove every entry of the open directory.
pub fn clear_dir(dirfd: &OwnedFd) -> rustix::io::Result<()> {
    for name in list_dir(dirfd)? {
        remove_at(dirfd, &name)?;
    }
    Ok(())
}

/// Flush the whole filesystem holding `dir` (syncfs(2)).
pub fn syncfs(dir: &Path) -> Result<()> {
    let fd = open_dir(dir)?;
    rustix::fs::syncfs(&fd).ctx("syncfs", dir)
}

/// Whether the directory at `path` has no entries.
pub fn dir_is_empty(path: &Path) -> Result<bool> {
    let mut rd = std::fs::read_dir(path).ctx("read directory", path)?;
    Ok(rd.next().is_none())
}

/// Names in an open directory (without `.`/`..`), sorted bytewise.
pub fn list_dir(dirfd: &OwnedFd) -> rustix::io::Result<Vec<std::ffi::OsString>> {
    let dup = rustix::fs::openat(
        dirfd,
        ".",
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut dir = rustix::fs::Dir::read_from(&dup)?;
    let mut names = Vec::new();
    while let Some(ent) = dir.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// `remove_dir_all` that tolerates a missing path.
pub fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("stat", path, e)),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).ctx("remove", path),
        Ok(_) => std::fs::remove_file(path).ctx("remove", path),
    }
}

/// Apparent size in bytes of regular files below `path`, counting each inode once.
pub fn tree_size(path: &Path) -> Result<u64> {
    let mut seen = std::collections::HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let md = std::fs::symlink_metadata(&p).ctx("stat", &p)?;
        if md.is_dir() {
            for e in std::fs::read_dir(&p).ctx("read directory", &p)? {
                stack.push(e.ctx("read directory", &p)?.path());
            }
        } else if md.is_file() && (md.nlink() == 1 || seen.insert((md.dev(), md.ino()))) {
            total += md.size();
        }
    }
    Ok(total)
}

/// List extended attribute names of `path` (not following symlinks).
pub fn list_xattrs(path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut buf) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(Error::io("list xattrs of", path, e)),
        }
    };
    Ok(buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()).map(<[u8]>::to_vec).collect())
}

/// Read one extended attribute (not following symlinks); None when absent.
pub fn get_xattr(path: &Path, name: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 4096];
    loop {
        match rustix::fs::lgetxattr(path, OsStr::from_bytes(name), &mut buf) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::RANGE) => buf.resize(buf.len() * 4, 0),
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(Error::io("get xattr of", path, e)),
        }
    }
}

/// Copy a tree preserving types, owners, modes, mtimes, xattrs and hardlinks: the vfs driver's
/// "each layer is a full copy of its parent". Data goes through copy_file_range so XFS reflink
/// and server-side copies apply where the kernel can.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    let mut links = std::collections::HashMap::new();
    let mut dirs = Vec::new();
    copy_entry(src, dst, &mut links, &mut dirs)?;
    // Directory mtimes last, deepest first, because creating children touched them.
    for (p, md) in dirs.into_iter().rev() {
        set_times(&p, &md)?;
    }
    Ok(())
}

fn set_times(p: &Path, md: &std::fs::Metadata) -> Result<()> {
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec { tv_sec: md.atime(), tv_nsec: md.atime_nsec() as _ },
        last_modification: rustix::fs::Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec() as _,
        },
    };
    rustix::fs::utimensat(rustix::fs::CWD, p, &ts, AtFlags::SYMLINK_NOFOLLOW).ctx("set times of", p)
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
    dirs: &mut Vec<(PathBuf, std::fs::Metadata)>,
) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::symlink_metadata(src).ctx("stat", src)?;
    let ft = md.file_type();
    if !ft.is_dir() && md.nlink() > 1 {
        if let Some(first) = links.get(&(md.dev(), md.ino())) {
            return std::fs::hard_link(first, dst).ctx("hard link", dst);
        }
        links.insert((md.dev(), md.ino()), dst.to_path_buf());
    }
    let mode = Mode::from_raw_mode(md.mode() & 0o7777);
    if ft.is_dir() {
        if !dst.exists() {
            rustix::fs::mkdir(dst, Mode::from_raw_mode(0o700)).ctx("mkdir", dst)?;
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src).ctx("readlink", src)?;
        std::os::unix::fs::symlink(&target, dst).ctx("symlink", dst)?;
    } else if ft.is_file() {
        let mut from = File::open(src).ctx("open", src)?;
        let mut to = File::create(dst).ctx("create", dst)?;
        copy_data(&mut from, &mut to, md.len()).ctx("copy data to", dst)?;
    } else {
        let kind = if ft.is_char_device() {
            rustix::fs::FileType::CharacterDevice
        } else if ft.is_block_device() {
            rustix::fs::FileType::BlockDevice
        } else if ft.is_fifo() {
            rustix::fs::FileType::Fifo
        } else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("copy socket {}", src.display()),
            ));
        };
        rustix::fs::mknodat(rustix::fs::CWD, dst, kind, mode, md.rdev()).ctx("mknod", dst)?;
    }
    rustix::fs::chownat(
        rustix::fs::CWD,
        dst,
        Some(rustix::fs::Uid::from_raw(md.uid())),
        Some(rustix::fs::Gid::from_raw(md.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .ctx("chown", dst)?;
    // After the chown, which drops `security.capability`.
    for name in list_xattrs(src)? {
        if let Some(v) = get_xattr(src, &name)? {
            rustix::fs::lsetxattr(
                dst,
                OsStr::from_bytes(&name),
                &v,
                rustix::fs::XattrFlags::empty(),
            )
            .ctx("set xattr on", dst)?;
        }
    }
    if !ft.is_symlink() {
        rustix::fs::chmod(dst, mode).ctx("chmod", dst)?;
    }
    if ft.is_dir() {
        let fd = open_dir(src)?;
        for name in list_dir(&fd).ctx("read directory", src)? {
            copy_entry(&src.join(&name), &dst.join(&name), links, dirs)?;
        }
        dirs.push((dst.to_path_buf(), md));
    } else {
        set_times(dst, &md)?;
    }
    Ok(())
}

/// Copy `len` bytes with copy_file_range, falling back to read/write across filesystems.
pub fn copy_data(from: &mut File, to: &mut File, len: u64) -> std::io::Result<()> {
    let mut left = len;
    while left > 0 {
        let chunk = left.min(1 << 30) as usize;
        match rustix::fs::copy_file_range(&*from, None, &*to, None, chunk) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(rustix::io::Errno::XDEV)
            | Err(rustix::io::Errno::NOSYS)
            | Err(rustix::io::Errno::INVAL) => {
                std::io::copy(from, to)?;
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Runs `prog ARGS` to completion; its stdout. Errors name the command as `shown` and the
/// Debian `package` that provides it: a program that is not there is `Unsupported`, a
/// non-zero exit is `Io` with the program's stderr.
pub fn run_tool(prog: &Path, args: &[&OsStr], shown: &str, package: &str) -> Result<String> {
    let out = std::process::Command::new(prog).args(args).output().map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::Unsupported
        } else {
            ErrorKind::Io
        };
        Error::with_source(kind, format!("run `{shown}` ({package})"), e)
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::new(
            ErrorKind::Io,
            format!("`{shown}` failed ({}): {}", out.status, stderr.trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_26_base32_chars() {
        for _ in 0..100 {
            let id = short_id();
            assert_eq!(id.len(), 26);
            assert!(
                id.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
                "{id}"
            );
        }
        assert_ne!(short_id(), short_id());
    }

    #[test]
    fn write_atomic_replaces_whole_file() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "x.json", b"one").unwrap();
        write_atomic(d.path(), "x.json", b"two").unwrap();
        assert_eq!(std::fs::read(d.path().join("x.json")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp files left behind");
    }

    #[test]
    fn remove_at_does_not_follow_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let inside = d.path().join("inside");
        std::fs::create_dir_all(inside.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, inside.join("sub/link")).unwrap();
        let fd = open_dir(d.path()).unwrap();
        remove_at(&fd, OsStr::new("inside")).unwrap();
        assert!(!inside.exists());
        assert!(outside.join("keep").exists());
    }
}
