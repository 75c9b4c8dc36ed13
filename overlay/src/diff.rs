//! Writing a directory tree as a deterministic tar: a container's changes (the overlay upper
//! dir, with overlay markers turned into OCI whiteouts) or a plain tree (volume backups).
//!
//! Determinism: entries in depth-first order of their on-disk names sorted bytewise (a
//! whiteout sits where the name it hides would), parents before children; GNU
//! headers with empty user/group names; mtimes in whole seconds; xattrs as sorted PAX
//! `SCHILY.xattr.*` records; hardlinked inodes written once and linked afterwards.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::apply::OPAQUE_XATTR;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil;

/// Which on-disk markers to convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffMode {
    /// Overlay upper dir: 0/0 char device → `.wh.NAME`, opaque xattr → `.wh..wh..opq`.
    OverlayUpper,
    /// Write everything as it is.
    Plain,
}

/// Write the tree below `root` as a tar into `out` and return the writer.
pub fn write_tree<W: Write>(root: &Path, out: W, mode: DiffMode) -> Result<W> {
    let mut b = tar::Builder::new(out);
    let mut links = HashMap::new();
    walk(&mut b, root, Path::new(""), mode, &mut links)?;
    b.into_inner().ctx("finish tar of", root)
}

fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    mode: DiffMode,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = root.join(rel);
    let fd = fsutil::open_dir(&dir)?;
    for name in fsutil::list_dir(&fd).ctx("read directory", &dir)? {
        let r = rel.join(&name);
        let full = root.join(&r);
        let md = std::fs::symlink_metadata(&full).ctx("stat", &full)?;
        if mode == DiffMode::OverlayUpper && is_whiteout(&full, &md)? {
            append_whiteout(b, rel, &name, md.uid(), md.gid(), md.mtime())
                .ctx("write whiteout for", &full)?;
            continue;
        }
        if emit(b, &full, &r, &md, mode, links)? {
            walk(b, root, &r, mode, links)?;
        }
    }
    Ok(())
}

fn append_whiteout<W: Write>(
    b: &mut tar::Builder<W>,
    rel: &Path,
    name: &OsStr,
    uid: u32,
    gid: u32,
    mtime: i64,
) -> io::Result<()> {
    let mut v = b".wh.".to_vec();
    v.extend_from_slice(name.as_bytes());
    let wh = rel.join(OsStr::from_bytes(&v));
    let mut h = header(tar::EntryType::Regular, 0o600, uid, gid, mtime);
    h.set_size(0);
    b.append_data(&mut h, &wh, io::empty())
}

/// Write one entry (not its children). Returns true for a directory.
fn emit<W: Write>(
    b: &mut tar::Builder<W>,
    full: &Path,
    r: &Path,
    md: &std::fs::Metadata,
    mode: DiffMode,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<bool> {
    let ft = md.file_type();
    let (xattrs, opaque) = entry_xattrs(full, mode)?;
    if !xattrs.is_empty() {
        append_pax(b, r, &xattrs).ctx("write xattrs of", full)?;
    }
    let perm = md.mode() & 0o7777;
    if !ft.is_dir() && md.nlink() > 1 {
        if let Some(first) = links.get(&(md.dev(), md.ino())) {
            let mut h = header(tar::EntryType::Link, perm, md.uid(), md.gid(), md.mtime());
            h.set_size(0);
            b.append_link(&mut h, r, first).ctx("write hardlink", full)?;
            return Ok(false);
        }
        links.insert((md.dev(), md.ino()), r.to_path_buf());
    }
    if ft.is_dir() {
        let mut h = header(tar::EntryType::Directory, perm, md.uid(), md.gid(), md.mtime());
        h.set_size(0);
        b.append_data(&mut h, r, io::empty()).ctx("write directory", full)?;
        if opaque {
            let mut h = header(tar::EntryType::Regular, 0o600, md.uid(), md.gid(), md.mtime());
            h.set_size(0);
            b.append_data(&mut h, r.join(".wh..wh..opq"), io::empty())
                .ctx("write opaque marker", full)?;
        }
        return Ok(true);
    }
    if ft.is_file() {
        let mut h = header(tar::EntryType::Regular, perm, md.uid(), md.gid(), md.mtime());
        h.set_size(md.len());
        let f = File::open(full).ctx("open", full)?;
        b.append_data(&mut h, r, io::Read::take(f, md.len())).ctx("write file", full)?;
    } else if ft.is_symlink() {
        let target = std::fs::read_link(full).ctx("readlink", full)?;
        let mut h = header(tar::EntryType::Symlink, perm, md.uid(), md.gid(), md.mtime());
        h.set_size(0);
        b.append_link(&mut h, r, &target).ctx("write symlink", full)?;
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let kind = if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else {
            tar::EntryType::Fifo
        };
        let mut h = header(kind, perm, md.uid(), md.gid(), md.mtime());
        h.set_size(0);
        if kind != tar::EntryType::Fifo {
            let dev = md.rdev();
            h.set_device_major(rustix::fs::major(dev)).ctx("device major of", full)?;
            h.set_device_minor(rustix::fs::minor(dev)).ctx("device minor of", full)?;
        }
        b.append_data(&mut h, r, io::empty()).ctx("write special file", full)?;
    } else {
        tracing::warn!(path = %full.display(), "skipping socket");
    }
    Ok(false)
}

/// Sorted xattrs to record, and whether the overlay opaque marker is set.
/// Extended attributes as (name, value) pairs.
type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

fn entry_xattrs(full: &Path, mode: DiffMode) -> Result<(Xattrs, bool)> {
    let mut xattrs: Xattrs = Vec::new();
    let mut opaque = false;
    for k in fsutil::list_xattrs(full)? {
        if mode == DiffMode::OverlayUpper
            && (k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay."))
        {
            if k == OPAQUE_XATTR.as_bytes() && fsutil::get_xattr(full, &k)?.as_deref() == Some(b"y")
            {
                opaque = true;
            } else if k.ends_with(b".redirect") || k.ends_with(b".metacopy") {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{}: overlay redirect/metacopy entries cannot be exported as a layer",
                        full.display()
                    ),
                ));
            }
            continue;
        }
        if let Some(v) = fsutil::get_xattr(full, &k)? {
            xattrs.push((k, v));
        }
    }
    xattrs.sort();
    Ok((xattrs, opaque))
}

/// The naive differ (vfs driver): compare `new` against `old` and write what changed, with a
/// `.wh.` entry for everything that disappeared. Metadata compared: type, mode, owner, size,
/// mtime, device number, symlink target and xattrs.
pub fn write_changes<W: Write>(old: &Path, new: &Path, out: W) -> Result<W> {
    let mut b = tar::Builder::new(out);
    let mut links = HashMap::new();
    changes(&mut b, old, new, Path::new(""), &mut links)?;
    b.into_inner().ctx("finish tar of", new)
}

fn changes<W: Write>(
    b: &mut tar::Builder<W>,
    old: &Path,
    new: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let ndir = new.join(rel);
    let odir = old.join(rel);
    let nnames = fsutil::list_dir(&fsutil::open_dir(&ndir)?).ctx("read directory", &ndir)?;
    let onames = match fsutil::open_dir(&odir) {
        Ok(fd) => fsutil::list_dir(&fd).ctx("read directory", &odir)?,
        Err(_) => Vec::new(),
    };
    let nset: std::collections::BTreeSet<_> = nnames.iter().collect();
    let mut all: Vec<(&std::ffi::OsString, bool)> = nnames.iter().map(|n| (n, true)).collect();
    all.extend(onames.iter().filter(|n| !nset.contains(n)).map(|n| (n, false)));
    all.sort();
    for (name, present) in all {
        let r = rel.join(name);
        if !present {
            let md = std::fs::symlink_metadata(old.join(&r)).ctx("stat", &old.join(&r))?;
            append_whiteout(b, rel, name, 0, 0, md.mtime())
                .ctx("write whiteout for", &new.join(&r))?;
            continue;
        }
        let nfull = new.join(&r);
        let nmd = std::fs::symlink_metadata(&nfull).ctx("stat", &nfull)?;
        let ofull = old.join(&r);
        let same = match std::fs::symlink_metadata(&ofull) {
            Ok(omd) => {
                omd.file_type() == nmd.file_type()
                    && omd.mode() == nmd.mode()
                    && omd.uid() == nmd.uid()
                    && omd.gid() == nmd.gid()
                    && omd.rdev() == nmd.rdev()
                    && omd.mtime() == nmd.mtime()
                    && (nmd.is_dir() || omd.len() == nmd.len())
                    && (!nmd.file_type().is_symlink()
                        || std::fs::read_link(&ofull).ok() == std::fs::read_link(&nfull).ok())
                    && entry_xattrs(&ofull, DiffMode::Plain)?.0
                        == entry_xattrs(&nfull, DiffMode::Plain)?.0
            }
            Err(_) => false,
        };
        if nmd.is_dir() {
            let replaced_type =
                std::fs::symlink_metadata(&ofull).map(|m| !m.is_dir()).unwrap_or(false);
            if !same || replaced_type {
                emit(b, &nfull, &r, &nmd, DiffMode::Plain, links)?;
            }
            changes(b, old, new, &r, links)?;
        } else if !same {
            emit(b, &nfull, &r, &nmd, DiffMode::Plain, links)?;
        }
    }
    Ok(())
}

/// An overlay whiteout: a 0/0 character device, or (kernel ≥ 6.7 nested form) an empty
/// regular file carrying `trusted.overlay.whiteout`.
fn is_whiteout(path: &Path, md: &std::fs::Metadata) -> Result<bool> {
    if md.file_type().is_char_device() && md.rdev() == 0 {
        return Ok(true);
    }
    if md.file_type().is_file() && md.len() == 0 {
        return Ok(fsutil::get_xattr(path, b"trusted.overlay.whiteout")?.is_some());
    }
    Ok(false)
}

fn header(kind: tar::EntryType, mode: u32, uid: u32, gid: u32, mtime: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(u64::from(uid));
    h.set_gid(u64::from(gid));
    h.set_mtime(mtime.max(0) as u64);
    h
}

/// One PAX extended header ('x') carrying `SCHILY.xattr.*` records for the next entry.
fn append_pax<W: Write>(
    b: &mut tar::Builder<W>,
    path: &Path,
    xattrs: &[(Vec<u8>, Vec<u8>)],
) -> io::Result<()> {
    let mut data = Vec::new();
    for (k, v) in xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(k);
        data.extend_from_slice(&pax_record(&key, v));
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_size(data.len() as u64);
    // The name of a PAX header is informational; keep it short and stable.
    let name = path.file_name().map(|n| n.as_bytes()).unwrap_or(b"root");
    let mut pname = b"PaxHeaders/".to_vec();
    pname.extend_from_slice(&name[..name.len().min(80)]);
    h.as_old_mut().name[..pname.len()].copy_from_slice(&pname);
    h.set_cksum();
    b.append(&h, &data[..])
}

/// `"<len> <key>=<value>\n"` where len counts the whole record including itself.
pub fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let base = key.len() + value.len() + 3; // space, '=', '\n'
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    let mut rec = format!("{len} ").into_bytes();
    rec.extend_from_slice(key);
    rec.push(b'=');
    rec.extend_from_slice(value);
    rec.push(b'\n');
    rec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_pax_record_length_counts_itself() {
        for (k, v) in [
            (&b"a"[..], &b"b"[..]),
            (b"SCHILY.xattr.user.x", &[b'v'; 95][..]),
            (b"k", &[0u8; 1000][..]),
        ] {
            let rec = pax_record(k, v);
            let sp = rec.iter().position(|c| *c == b' ').unwrap();
            let n: usize = std::str::from_utf8(&rec[..sp]).unwrap().parse().unwrap();
            assert_eq!(n, rec.len());
            assert_eq!(&rec[sp + 1..sp + 1 + k.len()], k);
        }
    }

    fn listing(root: &Path) -> Vec<(PathBuf, u32, Option<Vec<u8>>, i64)> {
        let mut out = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            let md = std::fs::symlink_metadata(root.join(&rel)).unwrap();
            let data = md.is_file().then(|| std::fs::read(root.join(&rel)).unwrap());
            out.push((
                rel.clone(),
                md.mode() & 0o7777,
                data,
                if md.is_dir() { 0 } else { md.mtime() },
            ));
            if md.is_dir() {
                for e in std::fs::read_dir(root.join(&rel)).unwrap() {
                    stack.push(rel.join(e.unwrap().file_name()));
                }
            }
        }
        out.sort();
        out.retain(|e| !e.0.as_os_str().is_empty());
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// write_tree → apply_tar reproduces names, modes, contents and mtimes, and writing
        /// the same tree twice gives the same bytes.
        #[test]
        fn rt_tree_through_tar(files in proptest::collection::vec(
            (0usize..3, "[a-z]{1,12}", proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000), 0o400u32..0o777, 0i64..2_000_000_000),
            0..20,
        )) {
            let src = tempfile::tempdir().unwrap();
            for (d, name, data, mode, mtime) in &files {
                let dir = src.path().join(format!("d{d}"));
                std::fs::create_dir_all(&dir).unwrap();
                let p = dir.join(name);
                std::fs::write(&p, data).unwrap();
                std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(*mode)).unwrap();
                let ts = rustix::fs::Timestamps {
                    last_access: rustix::fs::Timespec { tv_sec: *mtime, tv_nsec: 0 },
                    last_modification: rustix::fs::Timespec { tv_sec: *mtime, tv_nsec: 0 },
                };
                rustix::fs::utimensat(rustix::fs::CWD, &p, &ts, rustix::fs::AtFlags::empty()).unwrap();
            }
            let a = write_tree(src.path(), Vec::new(), DiffMode::Plain).unwrap();
            let b = write_tree(src.path(), Vec::new(), DiffMode::Plain).unwrap();
            proptest::prop_assert_eq!(&a, &b);
            let dst = tempfile::tempdir().unwrap();
            crate::apply::apply_tar(&a[..], dst.path(), crate::apply::WhiteoutMode::Plain, crate::apply::Limits::default()).unwrap();
            proptest::prop_assert_eq!(listing(src.path()), listing(dst.path()));
        }

        /// Whatever bytes a tar names, a cleaned path is relative and has no `..`.
        #[test]
        fn clean_path_never_climbs(raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            if let Ok(p) = crate::apply::clean_path(&raw) {
                proptest::prop_assert!(p.is_relative());
                proptest::prop_assert!(p.components().all(|c| matches!(c, std::path::Component::Normal(_))));
            }
        }
    }
}
