//! Applying a layer tar to a directory, safely.
//!
//! Every path in the tar is validated (relative, no `..`), and every file operation is done
//! relative to a directory fd opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`
//! from the layer root, so neither `../x`, `/etc/x`, nor a symlink planted by an earlier entry
//! (`a -> /`, `a -> ..`) can make us write outside. Existing entries are unlinked before a
//! non-directory is created (`O_CREAT|O_EXCL|O_NOFOLLOW`), so nothing is written through a link.
//!
//! Whiteouts (OCI image-spec layer.md) are converted per [`WhiteoutMode`]:
//! overlay keeps them as overlay markers (0/0 character device, `trusted.overlay.opaque=y`),
//! vfs performs the deletions on the full copy, plain keeps `.wh.` files literally.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use rustix::fd::{AsFd, OwnedFd};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};

use crate::error::{Error, ErrorKind, Result};
use crate::fsutil::{self, open_beneath};
use crate::sparse::{self, PaxSparse};

/// How `.wh.` entries are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Layer diff for overlayfs: `.wh.x` → char device 0/0 `x`; `.wh..wh..opq` → opaque xattr.
    Overlay,
    /// Full-copy layer (vfs driver): whiteouts delete from the copy of the parent.
    Vfs,
    /// No conversion (volume backups, outer image archives).
    Plain,
}

/// Bounds against hostile archives.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entry_size: u64,
    pub max_entries: u64,
    pub max_total_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_entry_size: 64 << 30, max_entries: 4_000_000, max_total_bytes: 1 << 40 }
    }
}

/// What an application wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub entries: u64,
    pub bytes: u64,
    /// Bytes of the regular files now in the tree (hard links counted once), when the
    /// application started from an empty root and could keep count; else `None`.
    pub file_bytes: Option<u64>,
}

pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";
/// File data is copied in chunks of this size (all-zero chunks become holes).
const COPY_BUF: usize = 256 * 1024;

/// Validate a tar path: relative, no `..`, no NUL; `./` prefixes and `.` components dropped.
/// Returns the normalized path (empty for the root itself).
pub fn clean_path(raw: &[u8]) -> std::result::Result<PathBuf, &'static str> {
    if raw.contains(&0) {
        return Err("NUL byte in path");
    }
    let p = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
            Component::ParentDir => return Err("`..` component"),
            Component::CurDir => {}
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

fn entry_err(kind: ErrorKind, path: &[u8], what: impl std::fmt::Display) -> Error {
    Error::new(kind, format!("tar entry {:?}: {what}", String::from_utf8_lossy(path)))
}

fn entry_io(
    path: &[u8],
    what: &str,
    e: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    let e = e.into();
    let kind = match e.downcast_ref::<rustix::io::Errno>() {
        Some(&rustix::io::Errno::XDEV) => ErrorKind::Escape,
        Some(&rustix::io::Errno::LOOP) => ErrorKind::Escape,
        _ => ErrorKind::Io,
    };
    Error::with_source(kind, format!("tar entry {:?}: {what}", String::from_utf8_lossy(path)), e)
}

struct Applier {
    root: OwnedFd,
    mode: WhiteoutMode,
    limits: Limits,
    /// Paths written by this layer: whiteouts and opaque markers never remove these.
    written: HashSet<PathBuf>,
    /// Directory mtimes, applied at the end (children first) because later entries touch
    /// them: from the tar's own entries, or else the time a directory had before this layer
    /// added or removed entries in it.
    dir_times: std::collections::BTreeMap<PathBuf, Timestamps>,
    /// The last parent directory opened, reused while entries stay in one directory.
    /// Shared, not dup'ed: handing it out costs no syscall per entry.
    cached_parent: Option<(PathBuf, Rc<OwnedFd>)>,
    /// Roots of the layers below (uppermost first): a directory this layer only implies
    /// takes its attributes from there, as an overlay copy-up would.
    lowers: Vec<OwnedFd>,
    stats: ApplyStats,
    /// Copy buffer for file data, reused across entries.
    buf: Vec<u8>,
    /// This process's umask (all bits when unknown: every file then gets its chmod).
    umask: u32,
    /// Bytes of each regular file (and hard link) this application created, so the layer's
    /// size needs no walk afterwards; `None` once that bookkeeping cannot be exact (a
    /// directory was replaced, or the root held files before: vfs copies, restores).
    sizes: Option<std::collections::HashMap<PathBuf, u64>>,
    size_total: u64,
}

/// What [`Applier::create`] did.
enum Made {
    /// Created; the open fd for files and directories.
    Node(Option<OwnedFd>),
    /// A hard link to this (clean) target path.
    Hardlink(PathBuf),
    /// The name is taken.
    Exists,
}

/// Apply an uncompressed tar stream to `root` (which must exist). Returns counts; on error the
/// caller discards `root` (imports always extract into a staging directory).
pub fn apply_tar<R: Read>(
    reader: R,
    root: &Path,
    mode: WhiteoutMode,
    limits: Limits,
) -> Result<ApplyStats> {
    apply_tar_over(reader, root, &[], mode, limits)
}

/// [`apply_tar`] for a layer whose lower layers are at `lowers` (uppermost first).
pub fn apply_tar_over<R: Read>(
    reader: R,
    root: &Path,
    lowers: &[PathBuf],
    mode: WhiteoutMode,
    limits: Limits,
) -> Result<ApplyStats> {
    let lowers = lowers.iter().map(|p| fsutil::open_dir(p)).collect::<Result<Vec<_>>>()?;
    let mut archive = tar::Archive::new(reader);
    let mut ap = Applier {
        root: fsutil::open_dir(root)?,
        mode,
        limits,
        written: HashSet::new(),
        dir_times: std::collections::BTreeMap::new(),
        cached_parent: None,
        lowers,
        stats: ApplyStats::default(),
        buf: vec![0u8; COPY_BUF],
        umask: process_umask(),
        sizes: (mode != WhiteoutMode::Vfs && fsutil::dir_is_empty(root)?)
            .then(std::collections::HashMap::new),
        size_total: 0,
    };
    let entries = archive.entries().map_err(|e| {
        Error::with_source(ErrorKind::Invalid, format!("read tar for {}", root.display()), e)
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| {
            Error::with_source(
                ErrorKind::Invalid,
                format!(
                    "read tar header after {} entries for {}",
                    ap.stats.entries,
                    root.display()
                ),
                e,
            )
        })?;
        ap.stats.entries += 1;
        if ap.stats.entries > ap.limits.max_entries {
            let p = entry.path_bytes().into_owned();
            return Err(entry_err(
                ErrorKind::Limit,
                &p,
                format!("more than {} entries", ap.limits.max_entries),
            ));
        }
        ap.entry(&mut entry)?;
    }
    // Deepest first, so setting a parent's mtime is not undone by a child.
    for (p, ts) in std::mem::take(&mut ap.dir_times).into_iter().rev() {
        // Reverse path order visits children before their parents.
        rustix::fs::utimensat(
            &ap.root,
            if p.as_os_str().is_empty() { Path::new(".") } else { &p },
            &ts,
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io("set mtime of", &root.join(&p), e))?;
    }
    let mut stats = ap.stats;
    stats.file_bytes = ap.sizes.is_some().then_some(ap.size_total);
    Ok(stats)
}

struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// A GNU PAX sparse file (regular entries only).
    sparse: Option<PaxSparse>,
}

impl Applier {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<()> {
        let mut raw = entry.path_bytes().into_owned();
        let etype = entry.header().entry_type();
        if matches!(etype, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let meta = self.meta(entry, &raw)?;
        if let Some(name) = meta.sparse.as_ref().and_then(|s| s.name.clone()) {
            // A PAX sparse file's header name is GNU tar's `GNUSparseFile.NNN/name`.
            raw = name;
        }
        let path = clean_path(&raw).map_err(|why| {
            let kind =
                if why == "NUL byte in path" { ErrorKind::Invalid } else { ErrorKind::Escape };
            entry_err(kind, &raw, why)
        })?;
        let size = entry.size();
        if size > self.limits.max_entry_size {
            return Err(entry_err(
                ErrorKind::Limit,
                &raw,
                format!("size {size} exceeds the limit of {}", self.limits.max_entry_size),
            ));
        }
        self.stats.bytes = self.stats.bytes.saturating_add(size);
        if self.stats.bytes > self.limits.max_total_bytes {
            return Err(entry_err(
                ErrorKind::Limit,
                &raw,
                format!("layer exceeds {} bytes", self.limits.max_total_bytes),
            ));
        }

        let name = path.file_name().map(|n| n.as_bytes().to_vec());
        if let (Some(name), true) = (&name, self.mode != WhiteoutMode::Plain) {
            if name.starts_with(WH_PREFIX) {
                return self.whiteout(&raw, &path, name, &meta);
            }
        }
        if path.as_os_str().is_empty() {
            // The layer root itself ("./"): only a directory may describe it.
            if etype != tar::EntryType::Directory {
                return Err(entry_err(ErrorKind::Invalid, &raw, "root entry is not a directory"));
            }
            let root = rustix::fs::openat(
                &self.root,
                ".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| entry_io(&raw, "open root", e))?;
            self.finish_meta(
                &raw,
                &self.root.try_clone().map_err(|e| entry_io(&raw, "dup", e))?,
                OsStr::new("."),
                Some(&root),
                &meta,
                true,
            )?;
            self.dir_times.insert(PathBuf::new(), times(&meta));
            return Ok(());
        }
        let name = path.file_name().expect("non-empty path has a name").to_os_string();
        let parent_rel = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let parent = self.parent(&raw, &parent_rel)?;
        let is_dir = etype == tar::EntryType::Directory;

        // Most entries are new: create first and look at what is in the way only on EEXIST
        // (saves a stat per entry). Dir over dir keeps the directory (attributes replaced);
        // anything else is removed and the creation retried once.
        let mut dir_over_dir = false;
        let mut retried = false;
        let own_fd = loop {
            match self.create(entry, etype, &parent, &name, &raw, size, dir_over_dir, &meta)? {
                Made::Node(fd) => break fd,
                Made::Hardlink(target) => {
                    // A hardlink shares the target's inode and metadata: nothing more to set.
                    // The new name records the target's bytes (counted once, see forget_size).
                    if let Some(sizes) = &mut self.sizes {
                        let target_size = sizes.get(&target).copied().unwrap_or(0);
                        sizes.insert(path.clone(), target_size);
                    }
                    self.written.insert(path);
                    return Ok(());
                }
                Made::Exists if !retried => {
                    retried = true;
                    let st = rustix::fs::statat(&parent, &name, AtFlags::SYMLINK_NOFOLLOW)
                        .map_err(|e| entry_io(&raw, "stat existing entry", e))?;
                    let existing_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
                    dir_over_dir = is_dir && existing_dir;
                    if !dir_over_dir {
                        self.forget_size(&path, &st);
                        fsutil::remove_at(&parent, &name)
                            .map_err(|e| entry_io(&raw, "remove existing entry", e))?;
                        self.cached_parent = None;
                    }
                }
                Made::Exists => {
                    return Err(entry_err(
                        ErrorKind::Io,
                        &raw,
                        "entry reappeared while replacing it",
                    ))
                }
            }
        };
        if let (true, Some(fd)) = (dir_over_dir, &own_fd) {
            drop_stale_xattrs(fd, &meta)
                .map_err(|e| entry_io(&raw, "replace directory xattrs", e))?;
        }
        if let Some(sizes) = &mut self.sizes {
            if matches!(
                etype,
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
            ) {
                let real = meta.sparse.as_ref().map_or(size, |sp| sp.real_size);
                sizes.insert(path.clone(), real);
                self.size_total += real;
            }
        }
        let is_file = matches!(
            etype,
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
        );
        // A new file already has its mode when it has no set-id bits and the umask kept all
        // of them (chown does not touch plain permission bits).
        let mode_done = is_file && !retried && meta.mode & (0o7000 | self.umask) == 0;
        self.finish_meta(
            &raw,
            &parent,
            &name,
            own_fd.as_ref(),
            &meta,
            etype != tar::EntryType::Symlink && !mode_done,
        )?;
        if is_dir {
            self.dir_times.insert(path.clone(), times(&meta));
        }
        self.written.insert(path);
        Ok(())
    }

    /// An entry about to be removed no longer counts towards the layer's size; removing a
    /// directory (or a vfs copy) makes the running total unreliable, so the caller walks.
    fn forget_size(&mut self, path: &Path, st: &rustix::fs::Stat) {
        let Some(sizes) = &mut self.sizes else { return };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {
                let recorded = sizes.remove(path).unwrap_or(0);
                // Another link keeps the inode (and its bytes) alive.
                if st.st_nlink <= 1 {
                    self.size_total = self.size_total.saturating_sub(recorded);
                }
            }
            FileType::Directory => self.sizes = None,
            _ => {}
        }
    }

    /// Creates the node for one entry under `parent`; `Made::Exists` when the name is taken.
    #[allow(clippy::too_many_arguments)]
    fn create<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        etype: tar::EntryType,
        parent: &OwnedFd,
        name: &OsStr,
        raw: &[u8],
        size: u64,
        dir_over_dir: bool,
        meta: &Meta,
    ) -> Result<Made> {
        let mode = meta.mode;
        let exists = |r: rustix::io::Result<()>, what: &str| -> Result<Option<Made>> {
            match r {
                Ok(()) => Ok(None),
                Err(rustix::io::Errno::EXIST) => Ok(Some(Made::Exists)),
                Err(e) => Err(entry_io(raw, what, e)),
            }
        };
        match etype {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let fd = match rustix::fs::openat(
                    parent,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    // The final permission bits when the umask leaves them alone (then no
                    // chmod follows, see `entry`); set-id bits always go through chmod.
                    Mode::from_raw_mode(mode & 0o777),
                ) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::EXIST) => return Ok(Made::Exists),
                    Err(e) => return Err(entry_io(raw, "create file", e)),
                };
                match &meta.sparse {
                    Some(sp) => write_pax_sparse(entry, &fd, size, sp, &mut self.buf, raw)?,
                    None => write_sparse(entry, &fd, size, &mut self.buf)
                        .map_err(|e| entry_io(raw, "write data", e))?,
                }
                Ok(Made::Node(Some(fd)))
            }
            tar::EntryType::Directory => {
                match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
                    Ok(()) => {}
                    Err(rustix::io::Errno::EXIST) if dir_over_dir => {}
                    Err(rustix::io::Errno::EXIST) => return Ok(Made::Exists),
                    Err(e) => return Err(entry_io(raw, "mkdir", e)),
                }
                let fd = rustix::fs::openat(
                    parent,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| entry_io(raw, "open directory", e))?;
                Ok(Made::Node(Some(fd)))
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(ErrorKind::Invalid, raw, "symlink without target"))?
                    .into_owned();
                if target.is_empty() || target.contains(&0) {
                    return Err(entry_err(ErrorKind::Invalid, raw, "empty or NUL symlink target"));
                }
                let r = rustix::fs::symlinkat(OsStr::from_bytes(&target), parent, name);
                Ok(exists(r, "symlink")?.unwrap_or(Made::Node(None)))
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| entry_err(ErrorKind::Invalid, raw, "hardlink without target"))?
                    .into_owned();
                let tpath = clean_path(&target).map_err(|why| {
                    entry_err(
                        ErrorKind::Escape,
                        raw,
                        format!("hardlink target {:?}: {why}", String::from_utf8_lossy(&target)),
                    )
                })?;
                let tname = tpath.file_name().ok_or_else(|| {
                    entry_err(ErrorKind::Invalid, raw, "hardlink to the layer root")
                })?;
                // A layer's hard links point at files of the same layer (a tar links to an
                // earlier entry of itself). One to a file of a lower layer cannot be made on
                // overlay (the file is not in this layer's diff) and Docker refuses it too;
                // refuse it the same way on every driver, saying why.
                let tparent = match open_beneath(
                    &self.root,
                    tpath.parent().unwrap_or(Path::new("")),
                    OFlags::PATH | OFlags::DIRECTORY,
                ) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::NOENT) => {
                        return Err(self.foreign_link(raw, &target, &tpath))
                    }
                    Err(e) => return Err(entry_io(raw, "resolve hardlink target", e)),
                };
                if self.mode != WhiteoutMode::Plain && !self.written.contains(&tpath) {
                    return Err(self.foreign_link(raw, &target, &tpath));
                }
                let r = rustix::fs::linkat(&tparent, tname, parent, name, AtFlags::empty());
                if r == Err(rustix::io::Errno::NOENT) {
                    return Err(self.foreign_link(raw, &target, &tpath));
                }
                Ok(exists(r, "hard link")?.unwrap_or(Made::Hardlink(tpath)))
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                if etype == tar::EntryType::Char && major == 0 && minor == 0 {
                    // Indistinguishable from an overlay whiteout once on disk; layers must use `.wh.`.
                    return Err(entry_err(
                        ErrorKind::Invalid,
                        raw,
                        "character device 0/0 (raw whiteout) in a layer tar",
                    ));
                }
                let ft = if etype == tar::EntryType::Char {
                    FileType::CharacterDevice
                } else {
                    FileType::BlockDevice
                };
                let r = rustix::fs::mknodat(
                    parent,
                    name,
                    ft,
                    Mode::from_raw_mode(0o600),
                    rustix::fs::makedev(major, minor),
                );
                Ok(exists(r, "mknod")?.unwrap_or(Made::Node(None)))
            }
            tar::EntryType::Fifo => {
                let r = rustix::fs::mknodat(
                    parent,
                    name,
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                );
                Ok(exists(r, "mkfifo")?.unwrap_or(Made::Node(None)))
            }
            other => {
                Err(entry_err(ErrorKind::Invalid, raw, format!("unsupported entry type {other:?}")))
            }
        }
    }

    /// The error for a hard link whose target is not a file of this layer.
    fn foreign_link(&self, raw: &[u8], target: &[u8], tpath: &Path) -> Error {
        let in_lower = match self.mode {
            // The full copy holds the lower layers' files.
            WhiteoutMode::Vfs => {
                open_beneath(&self.root, tpath, OFlags::PATH | OFlags::NOFOLLOW).is_ok()
            }
            _ => self
                .lowers
                .iter()
                .any(|l| open_beneath(l, tpath, OFlags::PATH | OFlags::NOFOLLOW).is_ok()),
        };
        let t = String::from_utf8_lossy(target);
        let why = if in_lower {
            format!(
                "hard link to {t:?}, which exists only in a lower layer: a layer's hard links \
                 must point at files of the same layer"
            )
        } else {
            format!(
                "hard link to {t:?}, which is not in the archive before it (a hard link's \
                 target must be an earlier entry of the same layer)"
            )
        };
        entry_err(ErrorKind::Invalid, raw, why)
    }

    /// Open (creating missing directories, mode 0755 like Docker) the parent of an entry,
    /// never leaving the root.
    fn parent(&mut self, raw: &[u8], rel: &Path) -> Result<Rc<OwnedFd>> {
        if let Some((p, fd)) = &self.cached_parent {
            if p == rel {
                return Ok(fd.clone());
            }
        }
        let fd = match open_beneath(&self.root, rel, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                let mut cur = self.root.try_clone().map_err(|e| entry_io(raw, "dup root fd", e))?;
                let mut sofar = PathBuf::new();
                for comp in rel.components() {
                    sofar.push(comp);
                    let created = match rustix::fs::mkdirat(
                        &cur,
                        comp.as_os_str(),
                        Mode::from_raw_mode(0o755),
                    ) {
                        Ok(()) => true,
                        Err(rustix::io::Errno::EXIST) => false,
                        Err(e) => {
                            return Err(entry_io(
                                raw,
                                &format!("create parent {}", sofar.display()),
                                e,
                            ))
                        }
                    };
                    cur = open_beneath(&self.root, &sofar, OFlags::RDONLY | OFlags::DIRECTORY)
                        .map_err(|e| {
                            entry_io(raw, &format!("open parent {}", sofar.display()), e)
                        })?;
                    if created {
                        self.inherit(raw, &sofar, &cur)?;
                    }
                }
                cur
            }
            Err(e) => {
                return Err(entry_io(
                    raw,
                    &format!("open parent {:?}", rel.display().to_string()),
                    e,
                ))
            }
        };
        if !self.dir_times.contains_key(rel) {
            let st = rustix::fs::fstat(&fd).map_err(|e| entry_io(raw, "stat parent", e))?;
            let t = Timespec { tv_sec: st.st_mtime as _, tv_nsec: st.st_mtime_nsec as _ };
            self.dir_times
                .insert(rel.to_path_buf(), Timestamps { last_access: t, last_modification: t });
        }
        let fd = Rc::new(fd);
        self.cached_parent = Some((rel.to_path_buf(), fd.clone()));
        Ok(fd)
    }

    /// Give an implied directory the attributes it has in the nearest lower layer.
    fn inherit(&mut self, raw: &[u8], rel: &Path, fd: &OwnedFd) -> Result<()> {
        let mut found = None;
        for l in &self.lowers {
            match open_beneath(l, rel, OFlags::PATH | OFlags::NOFOLLOW) {
                Ok(lfd) => {
                    found = Some(lfd);
                    break;
                }
                Err(_) => continue,
            }
        }
        let Some(lfd) = found else { return Ok(()) };
        let st = rustix::fs::fstat(&lfd).map_err(|e| entry_io(raw, "stat lower directory", e))?;
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            return Ok(());
        }
        let ldir = rustix::fs::openat(
            &lfd,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| entry_io(raw, "open lower directory", e))?;
        let proc_path =
            PathBuf::from(format!("/proc/self/fd/{}", rustix::fd::AsRawFd::as_raw_fd(&ldir)));
        for name in fsutil::list_xattrs(&proc_path)? {
            if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                continue;
            }
            if let Some(v) = fsutil::get_xattr(&proc_path, &name)? {
                rustix::fs::fsetxattr(fd, OsStr::from_bytes(&name), &v, XattrFlags::empty())
                    .map_err(|e| entry_io(raw, "copy lower xattr", e))?;
            }
        }
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )
        .map_err(|e| entry_io(raw, "chown implied directory", e))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777))
            .map_err(|e| entry_io(raw, "chmod implied directory", e))?;
        let mtime = Timespec { tv_sec: st.st_mtime as _, tv_nsec: st.st_mtime_nsec as _ };
        self.dir_times
            .insert(rel.to_path_buf(), Timestamps { last_access: mtime, last_modification: mtime });
        Ok(())
    }

    fn finish_meta(
        &self,
        raw: &[u8],
        parent: &OwnedFd,
        name: &OsStr,
        fd: Option<&OwnedFd>,
        m: &Meta,
        chmod: bool,
    ) -> Result<()> {
        let (uid, gid) =
            (Some(rustix::fs::Uid::from_raw(m.uid)), Some(rustix::fs::Gid::from_raw(m.gid)));
        // Through the open fd when there is one: no second path lookup.
        match fd {
            Some(fd) => rustix::fs::fchown(fd, uid, gid),
            None => rustix::fs::chownat(parent, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW),
        }
        .map_err(|e| entry_io(raw, "chown", e))?;
        // xattrs after the chown: the kernel drops `security.capability` on every chown
        // (even to the same owner), so setting it first loses `ping`'s file capability.
        // Docker's go-archive `createTarFile` orders Lchown, Lsetxattr, then chmod.
        if let Some(fd) = fd {
            for (k, v) in &m.xattrs {
                if k.starts_with(b"trusted.overlay.") || k.starts_with(b"user.overlay.") {
                    // Overlay's own markers only ever come from whiteout conversion.
                    tracing::warn!(entry = %String::from_utf8_lossy(raw), "dropping overlay xattr from layer tar");
                    continue;
                }
                rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, XattrFlags::empty()).map_err(
                    |e| entry_io(raw, &format!("set xattr {}", String::from_utf8_lossy(k)), e),
                )?;
            }
        }
        if chmod {
            // After chown, which clears set-id bits.
            match fd {
                Some(fd) => rustix::fs::fchmod(fd, Mode::from_raw_mode(m.mode)),
                None => {
                    rustix::fs::chmodat(parent, name, Mode::from_raw_mode(m.mode), AtFlags::empty())
                }
            }
            .map_err(|e| entry_io(raw, "chmod", e))?;
        }
        match fd {
            Some(fd) => rustix::fs::futimens(fd, &times(m)),
            None => rustix::fs::utimensat(parent, name, &times(m), AtFlags::SYMLINK_NOFOLLOW),
        }
        .map_err(|e| entry_io(raw, "set mtime", e))?;
        Ok(())
    }
}

/// Dir over dir replaces attributes: xattrs the entry does not carry go (overlay's own stay).
fn drop_stale_xattrs(fd: &OwnedFd, m: &Meta) -> rustix::io::Result<()> {
    let mut buf = vec![0u8; 65536];
    let n = match rustix::fs::flistxattr(fd, &mut buf) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(e) => return Err(e),
    };
    for name in buf[..n].split(|b| *b == 0).filter(|s| !s.is_empty()) {
        let keep = name.starts_with(b"trusted.overlay.") || m.xattrs.iter().any(|(k, _)| k == name);
        if !keep {
            rustix::fs::fremovexattr(fd, OsStr::from_bytes(name))?;
        }
    }
    Ok(())
}

fn times(m: &Meta) -> Timestamps {
    Timestamps { last_access: m.mtime, last_modification: m.mtime }
}

mod data;
mod meta;
#[cfg(test)]
mod tests;
mod whiteout;

pub use data::PadTail;
use data::{parse_num, parse_pax_time, process_umask, write_pax_sparse, write_sparse};
