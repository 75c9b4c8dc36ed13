//! Per-container size limits with XFS project quotas (Docker's `overlay2.size` semantics: the
//! limit covers the container's own layer directory, not the whole filesystem).
//!
//! Sequence for a new container layer dir, before `diff/` is created so children inherit:
//! 1. the filesystem must support enforced project quotas (else Docker's error wording);
//! 2. allocate a project id: the store root's id + 1 for the first, then increasing, never
//!    reused (ids already on layer dirs are scanned at open);
//! 3. set the project id and the PROJINHERIT flag on the layer dir (FS_IOC_FSSETXATTR);
//! 4. set the block hard and soft limit of that project (Q_XSETQLIM).
//!
//! The kernel calls sit behind [`ProjectQuota`]; the real implementation makes them directly
//! (see [`crate::quota_sys`]), so the appliance needs neither `xfs_io` nor `xfs_quota`.

use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

/// Docker's per-container wording when the backing filesystem cannot enforce a size.
pub const SIZE_UNSUPPORTED: &str =
    "--storage-opt is supported only for overlay over xfs with 'pquota' mount option";

/// The quota edge of the store.
pub trait ProjectQuota {
    /// Whether the filesystem holding `dir` enforces project quotas.
    fn supported(&self, dir: &Path) -> Result<bool>;
    /// The project id currently set on `dir`.
    fn project_id(&self, dir: &Path) -> Result<u32>;
    /// Set `id` and the inherit flag on `dir`.
    fn set_project(&self, dir: &Path, id: u32) -> Result<()>;
    /// Set the block hard/soft limit for project `id` on the filesystem of `dir`.
    fn set_limit(&self, dir: &Path, id: u32, bytes: u64) -> Result<()>;
}

/// Allocates ids and applies limits through a [`ProjectQuota`].
pub struct QuotaCtl<'a> {
    ops: &'a dyn ProjectQuota,
    next_id: u32,
}

impl<'a> QuotaCtl<'a> {
    /// Prepare quotas for a store at `home`, whose existing layer dirs are `layer_dirs`.
    pub fn open(
        ops: &'a dyn ProjectQuota,
        home: &Path,
        layer_dirs: &[PathBuf],
    ) -> Result<QuotaCtl<'a>> {
        if !ops.supported(home)? {
            return Err(Error::new(ErrorKind::Unsupported, SIZE_UNSUPPORTED));
        }
        let base = ops.project_id(home)?;
        let mut next = base
            .checked_add(1)
            .ok_or_else(|| Error::new(ErrorKind::Limit, "project id space exhausted"))?;
        for d in layer_dirs {
            let id = ops.project_id(d)?;
            if id != 0 && id != base && id >= next {
                next = id + 1;
            }
        }
        Ok(QuotaCtl { ops, next_id: next })
    }

    /// Limit the layer directory `dir` to `bytes`; returns the project id used.
    pub fn limit(&mut self, dir: &Path, bytes: u64) -> Result<u32> {
        let id = self.next_id;
        self.ops.set_project(dir, id)?;
        self.ops.set_limit(dir, id, bytes)?;
        self.next_id += 1;
        Ok(id)
    }
}

/// Real project quotas via xfsprogs.
#[derive(Debug, Default)]
pub struct XfsQuota;

const XFS_SUPER_MAGIC: i64 = 0x5846_5342;

/// Mount point and options of the filesystem holding `dir`, from /proc/self/mountinfo.
fn mount_of(dir: &Path) -> Result<(PathBuf, String, String)> {
    let dir = std::fs::canonicalize(dir).map_err(|e| Error::io("resolve", dir, e))?;
    let info = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read", Path::new("/proc/self/mountinfo"), e))?;
    let mut best: Option<(PathBuf, String, String)> = None;
    for line in info.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        if f.len() < sep + 4 || f.len() < 6 {
            continue;
        }
        let mp = PathBuf::from(f[4].replace("\\040", " "));
        if dir.starts_with(&mp)
            && best.as_ref().is_none_or(|b| mp.as_os_str().len() >= b.0.as_os_str().len())
        {
            best = Some((mp, f[sep + 1].to_string(), f[sep + 3].to_string()));
        }
    }
    best.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no mount holds {}", dir.display())))
}

impl ProjectQuota for XfsQuota {
    fn supported(&self, dir: &Path) -> Result<bool> {
        let st = rustix::fs::statfs(dir).map_err(|e| Error::io("statfs", dir, e))?;
        if st.f_type as i64 != XFS_SUPER_MAGIC {
            return Ok(false);
        }
        let (_, fstype, opts) = mount_of(dir)?;
        // The kernel shows enforced project quota as `prjquota` (or `pquota`), accounting-only as `pqnoenforce`.
        Ok(fstype == "xfs" && opts.split(',').any(|o| o == "prjquota" || o == "pquota"))
    }

    fn project_id(&self, dir: &Path) -> Result<u32> {
        crate::quota_sys::project_id(dir).map_err(|e| Error::io("read the project id of", dir, e))
    }

    fn set_project(&self, dir: &Path, id: u32) -> Result<()> {
        crate::quota_sys::set_project(dir, id)
            .map_err(|e| Error::io(&format!("set project {id} on"), dir, e))
    }

    fn set_limit(&self, dir: &Path, id: u32, bytes: u64) -> Result<()> {
        crate::quota_sys::set_limit(dir, id, bytes)
            .map_err(|e| Error::io(&format!("set the block limit of project {id} below"), dir, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Recorder {
        supported: bool,
        ids: std::collections::HashMap<PathBuf, u32>,
        log: RefCell<Vec<String>>,
    }

    impl ProjectQuota for Recorder {
        fn supported(&self, dir: &Path) -> Result<bool> {
            self.log.borrow_mut().push(format!("probe {}", dir.display()));
            Ok(self.supported)
        }
        fn project_id(&self, dir: &Path) -> Result<u32> {
            Ok(*self.ids.get(dir).unwrap_or(&0))
        }
        fn set_project(&self, dir: &Path, id: u32) -> Result<()> {
            self.log.borrow_mut().push(format!("setproj {} {id}", dir.display()));
            Ok(())
        }
        fn set_limit(&self, dir: &Path, id: u32, bytes: u64) -> Result<()> {
            self.log.borrow_mut().push(format!("limit {} {id} {bytes}", dir.display()));
            Ok(())
        }
    }

    #[test]
    fn sequence_allocates_after_home_and_existing_ids() {
        let mut r = Recorder { supported: true, ..Default::default() };
        r.ids.insert(PathBuf::from("/home"), 100);
        r.ids.insert(PathBuf::from("/home/a"), 104);
        r.ids.insert(PathBuf::from("/home/b"), 100);
        let dirs = vec![PathBuf::from("/home/a"), PathBuf::from("/home/b")];
        let mut q = QuotaCtl::open(&r, Path::new("/home"), &dirs).unwrap();
        assert_eq!(q.limit(Path::new("/home/c"), 1 << 20).unwrap(), 105);
        assert_eq!(q.limit(Path::new("/home/d"), 4096).unwrap(), 106);
        assert_eq!(
            *r.log.borrow(),
            vec![
                "probe /home".to_string(),
                "setproj /home/c 105".into(),
                "limit /home/c 105 1048576".into(),
                "setproj /home/d 106".into(),
                "limit /home/d 106 4096".into(),
            ]
        );
    }

    #[test]
    fn unsupported_filesystem_uses_dockers_wording() {
        let r = Recorder::default();
        let err = QuotaCtl::open(&r, Path::new("/x"), &[]).err().expect("must fail");
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains(SIZE_UNSUPPORTED), "{err}");
    }

    #[test]
    fn real_probe_says_no_on_a_plain_directory() {
        // The host has no XFS project quotas (docker-storage.md §0), so this must say "no".
        let d = tempfile::tempdir().unwrap();
        assert!(!XfsQuota.supported(d.path()).unwrap());
    }
}
