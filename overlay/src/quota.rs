//! Per-container size limits with XFS project quotas (Docker's `overlay2.size` semantics: the
//! limit covers the container's own layer directory, not the whole filesystem).
//!
//! Sequence for a new container layer dir, before `diff/` is created so children inherit:
//! 1. the filesystem must support enforced project quotas (else Docker's error wording);
//! 2. allocate a project id from the store's metadata (`ROOT/quota.json` holds the next id;
//!    ids are never reused, and one above every container's recorded id is the floor, so a
//!    lost or stale counter cannot hand out an id in use);
//! 3. set the project id and the inherit flag on the layer dir;
//! 4. set the block hard and soft limit of that project.
//!
//! Steps 3 and 4 sit behind [`ProjectQuota`]. The real implementation, [`XfsQuota`], runs
//! Debian's `xfs_quota` (xfsprogs, which the appliance image ships), so the crate needs no
//! unsafe ioctl or quotactl calls:
//!
//! ```text
//! xfs_quota -D /dev/null -P /dev/null -x -c 'project -s -p DIR ID' MOUNTPOINT
//! xfs_quota -D /dev/null -P /dev/null -x -c 'limit -p bsoft=BYTES bhard=BYTES ID' MOUNTPOINT
//! ```
//!
//! `-D`/`-P /dev/null` keep the host's `/etc/projects` and `/etc/projid` out of it. xfs_quota
//! exits 0 on some failures (a missing path, a mount it cannot use) and only complains on
//! stderr, and skips a filesystem that is not XFS without a word; so any stderr output counts as
//! failure, the directory must be on XFS, and `project -s` must report the tree it set up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::fsutil;

/// Docker's per-container wording when the backing filesystem cannot enforce a size.
pub const SIZE_UNSUPPORTED: &str =
    "--storage-opt is supported only for overlay over xfs with 'pquota' mount option";

/// The store metadata file holding the next project id.
pub const STATE_FILE: &str = "quota.json";

/// The first project id handed out (0 is "no project").
pub const FIRST_PROJECT_ID: u32 = 1;

/// The quota edge of the store.
pub trait ProjectQuota {
    /// Whether the filesystem holding `dir` enforces project quotas.
    fn supported(&self, dir: &Path) -> Result<bool>;
    /// Set `id` and the inherit flag on `dir`.
    fn set_project(&self, dir: &Path, id: u32) -> Result<()>;
    /// Set the block hard/soft limit for project `id` on the filesystem of `dir`.
    fn set_limit(&self, dir: &Path, id: u32, bytes: u64) -> Result<()>;
}

/// `ROOT/quota.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct QuotaState {
    next_project_id: u32,
}

/// The id to hand out given the saved counter and the ids containers hold now.
pub fn next_project_id(saved_next: Option<u32>, in_use: &[u32]) -> Result<u32> {
    let exhausted = || Error::new(ErrorKind::Limit, "project id space exhausted");
    let floor = match in_use.iter().max() {
        Some(m) => m.checked_add(1).ok_or_else(exhausted)?,
        None => FIRST_PROJECT_ID,
    };
    let id = floor.max(saved_next.unwrap_or(FIRST_PROJECT_ID)).max(FIRST_PROJECT_ID);
    // The counter stores id + 1.
    if id == u32::MAX {
        return Err(exhausted());
    }
    Ok(id)
}

/// Allocates a project id for the store at `root` and records the next one (atomically, before
/// the id is used, so a crash cannot lead to reuse).
pub fn allocate_project_id(root: &Path, in_use: &[u32]) -> Result<u32> {
    let saved = match fsutil::read_json::<QuotaState>(&root.join(STATE_FILE)) {
        Ok(s) => Some(s.next_project_id),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let id = next_project_id(saved, in_use)?;
    fsutil::write_json(root, STATE_FILE, &QuotaState { next_project_id: id + 1 })?;
    Ok(id)
}

/// Applies limits through a [`ProjectQuota`] once the filesystem is known to enforce them.
pub struct QuotaCtl<'a> {
    ops: &'a dyn ProjectQuota,
}

impl<'a> QuotaCtl<'a> {
    /// Checks that the filesystem holding the store at `home` enforces project quotas.
    pub fn open(ops: &'a dyn ProjectQuota, home: &Path) -> Result<QuotaCtl<'a>> {
        if !ops.supported(home)? {
            return Err(Error::new(ErrorKind::Unsupported, SIZE_UNSUPPORTED));
        }
        Ok(QuotaCtl { ops })
    }

    /// Puts the layer directory `dir` in project `id` and limits that project to `bytes`.
    pub fn limit(&self, dir: &Path, id: u32, bytes: u64) -> Result<()> {
        self.ops.set_project(dir, id)?;
        self.ops.set_limit(dir, id, bytes)
    }
}

/// Real project quotas via xfsprogs' `xfs_quota`.
#[derive(Debug, Default)]
pub struct XfsQuota;

/// Where `xfs_quota` is looked for after `PATH` (PID 1 in the appliance passes no `PATH`, and
/// the default search path of the C library leaves out the sbin directories).
const SBIN_DIRS: &[&str] = &["/usr/sbin", "/sbin"];

/// The `xfs_quota` program: the first executable one on `path_var` (a `PATH` value) or in
/// [`SBIN_DIRS`].
pub fn find_xfs_quota(path_var: Option<OsString>) -> Result<PathBuf> {
    find_program("xfs_quota", "xfsprogs", "--size", path_var)
}

/// An administration program (`name`, from Debian package `package`, needed for `purpose`):
/// the first executable one on `path_var` (a `PATH` value) or in [`SBIN_DIRS`].
pub fn find_program(
    name: &str,
    package: &str,
    purpose: &str,
    path_var: Option<OsString>,
) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        path_var.map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(SBIN_DIRS.iter().map(PathBuf::from));
    find_in(&dirs, name, package, purpose)
}

fn find_in(dirs: &[PathBuf], name: &str, package: &str, purpose: &str) -> Result<PathBuf> {
    dirs.iter()
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{name} (Debian package {package}) is needed for {purpose} and was not found \
                     in {}",
                    dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
                ),
            )
        })
}

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

/// A path as one word of an xfs_quota command (its parser splits on blanks).
fn command_word(p: &Path) -> Result<String> {
    match p.to_str() {
        Some(s)
            if !s.is_empty() && !s.contains(|c: char| c.is_whitespace() || "'\"\\".contains(c)) =>
        {
            Ok(s.to_owned())
        }
        _ => Err(Error::new(
            ErrorKind::Unsupported,
            format!("xfs_quota cannot take the path {p:?} (blanks, quotes or non-UTF-8)"),
        )),
    }
}

/// The xfs_quota command that puts `dir` (and what will be created under it) in project `id`.
pub fn project_command(dir: &Path, id: u32) -> Result<String> {
    Ok(format!("project -s -p {} {id}", command_word(dir)?))
}

/// The xfs_quota command that sets project `id`'s block soft and hard limit to `bytes`.
pub fn limit_command(id: u32, bytes: u64) -> String {
    format!("limit -p bsoft={bytes} bhard={bytes} {id}")
}

impl XfsQuota {
    /// Runs `xfs_quota -x -c CMD` on the filesystem holding `dir`.
    fn run(&self, dir: &Path, cmd: &str) -> Result<String> {
        // xfs_quota silently skips a mount point that is not XFS (exit 0, no output).
        if !is_xfs(dir)? {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{} is not on XFS: no project quotas", dir.display()),
            ));
        }
        let prog = find_xfs_quota(std::env::var_os("PATH"))?;
        let (mountpoint, _, _) = mount_of(dir)?;
        let mp = command_word(&mountpoint)?;
        let shown = format!("{} -x -c '{cmd}' {mp}", prog.display());
        tracing::debug!(command = %shown, "xfs_quota");
        let out = Command::new(&prog)
            .args(["-D", "/dev/null", "-P", "/dev/null", "-x", "-c", cmd, &mp])
            .output()
            .map_err(|e| Error::with_source(ErrorKind::Io, format!("run `{shown}`"), e))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() || !stderr.trim().is_empty() {
            return Err(Error::new(
                ErrorKind::Io,
                format!("`{shown}` failed ({}): {}", out.status, stderr.trim()),
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn is_xfs(dir: &Path) -> Result<bool> {
    Ok(crate::backing::fs_name(dir)? == "xfs")
}

impl ProjectQuota for XfsQuota {
    fn supported(&self, dir: &Path) -> Result<bool> {
        if !is_xfs(dir)? {
            return Ok(false);
        }
        let (_, fstype, opts) = mount_of(dir)?;
        // The kernel shows enforced project quota as `prjquota` (or `pquota`), accounting-only as `pqnoenforce`.
        Ok(fstype == "xfs" && opts.split(',').any(|o| o == "prjquota" || o == "pquota"))
    }

    fn set_project(&self, dir: &Path, id: u32) -> Result<()> {
        let cmd = project_command(dir, id)?;
        let out = self.run(dir, &cmd)?;
        // It reports each tree it set up; no report means the path was skipped.
        if !out.contains(&format!("Setting up project {id} ")) {
            return Err(Error::new(
                ErrorKind::Io,
                format!("xfs_quota -c '{cmd}' did not set up {}: {}", dir.display(), out.trim()),
            ));
        }
        Ok(())
    }

    fn set_limit(&self, dir: &Path, id: u32, bytes: u64) -> Result<()> {
        self.run(dir, &limit_command(id, bytes)).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    struct Recorder {
        supported: bool,
        log: RefCell<Vec<String>>,
    }

    impl ProjectQuota for Recorder {
        fn supported(&self, dir: &Path) -> Result<bool> {
            self.log.borrow_mut().push(format!("probe {}", dir.display()));
            Ok(self.supported)
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
    fn sequence_probes_then_sets_project_before_limit() {
        let r = Recorder { supported: true, ..Default::default() };
        let q = QuotaCtl::open(&r, Path::new("/home")).unwrap();
        q.limit(Path::new("/home/c"), 5, 1 << 20).unwrap();
        q.limit(Path::new("/home/d"), 6, 4096).unwrap();
        assert_eq!(
            *r.log.borrow(),
            vec![
                "probe /home".to_string(),
                "setproj /home/c 5".into(),
                "limit /home/c 5 1048576".into(),
                "setproj /home/d 6".into(),
                "limit /home/d 6 4096".into(),
            ]
        );
    }

    #[test]
    fn unsupported_filesystem_uses_dockers_wording() {
        let r = Recorder::default();
        let err = QuotaCtl::open(&r, Path::new("/x")).err().expect("must fail");
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains(SIZE_UNSUPPORTED), "{err}");
        assert_eq!(*r.log.borrow(), vec!["probe /x".to_string()]);
    }

    #[test]
    fn next_id_is_above_the_counter_and_every_id_in_use() {
        assert_eq!(next_project_id(None, &[]).unwrap(), FIRST_PROJECT_ID);
        assert_eq!(next_project_id(Some(7), &[]).unwrap(), 7);
        assert_eq!(next_project_id(Some(7), &[3, 9]).unwrap(), 10);
        assert_eq!(next_project_id(None, &[4]).unwrap(), 5);
        assert_eq!(next_project_id(Some(0), &[]).unwrap(), FIRST_PROJECT_ID);
        let full = next_project_id(None, &[u32::MAX - 1]).unwrap_err();
        assert_eq!(full.kind(), ErrorKind::Limit);
        assert_eq!(next_project_id(None, &[u32::MAX]).unwrap_err().kind(), ErrorKind::Limit);
    }

    #[test]
    fn allocation_is_persisted_and_never_reused() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(allocate_project_id(d.path(), &[]).unwrap(), 1);
        assert_eq!(allocate_project_id(d.path(), &[1]).unwrap(), 2);
        // The containers holding 1 and 2 are gone: their ids still are not handed out again.
        assert_eq!(allocate_project_id(d.path(), &[]).unwrap(), 3);
        let saved: QuotaState = fsutil::read_json(&d.path().join(STATE_FILE)).unwrap();
        assert_eq!(saved, QuotaState { next_project_id: 4 });
        // A container recorded with a higher id (e.g. the counter was lost) raises the floor.
        assert_eq!(allocate_project_id(d.path(), &[40]).unwrap(), 41);
        std::fs::write(d.path().join(STATE_FILE), "{").unwrap();
        let bad = allocate_project_id(d.path(), &[]).unwrap_err();
        assert_eq!(bad.kind(), ErrorKind::Invalid, "{bad}");
    }

    #[test]
    fn commands_follow_xfs_quota_syntax() {
        assert_eq!(
            project_command(Path::new("/var/lib/lamina/overlay2/tmp/container-x"), 5).unwrap(),
            "project -s -p /var/lib/lamina/overlay2/tmp/container-x 5"
        );
        assert_eq!(limit_command(5, 64 << 20), "limit -p bsoft=67108864 bhard=67108864 5");
        for bad in ["/a b", "/a'b", "/a\"b", "/a\\b", ""] {
            let e = project_command(Path::new(bad), 1).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{bad:?}");
        }
    }

    /// The devicemapper driver's mkfs under a PATH without the sbin directories (the
    /// appliance's agent passes none): found there, as `xfs_quota` is. Before, the driver ran
    /// a bare `mkfs.xfs` and failed with ENOENT in the VM.
    #[test]
    fn mkfs_is_found_in_sbin_without_path() {
        let empty = tempfile::tempdir().unwrap();
        for (name, pkg) in [("mkfs.xfs", "xfsprogs"), ("mkfs.ext4", "e2fsprogs")] {
            let p = empty.path().as_os_str().to_owned();
            let found = find_program(name, pkg, "the base device", Some(p))
                .unwrap_or_else(|e| panic!("{name} (Debian {pkg}) is needed on the host: {e}"));
            assert!(found.starts_with("/usr/sbin") || found.starts_with("/sbin"), "{found:?}");
        }
        let e = find_program("mkfs.nope", "nopeprogs", "the base device", None).unwrap_err();
        assert!(e.to_string().contains("mkfs.nope (Debian package nopeprogs) is needed"), "{e}");
    }

    #[test]
    fn xfs_quota_is_found_in_sbin_without_path_and_missing_is_clear() {
        // Debian's xfsprogs installs /usr/sbin/xfs_quota (`cargo xtask setup`).
        let found = find_xfs_quota(None).expect("xfs_quota from xfsprogs is needed on the host");
        assert!(found.ends_with("xfs_quota"), "{}", found.display());
        let empty = tempfile::tempdir().unwrap();
        let via_path = find_xfs_quota(Some(empty.path().as_os_str().to_owned())).unwrap();
        assert_eq!(via_path, found, "falls back to the sbin dirs");
        // A PATH entry comes first.
        let bin = empty.path().join("xfs_quota");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        rustix::fs::chmod(&bin, rustix::fs::Mode::from_raw_mode(0o755)).unwrap();
        assert_eq!(find_xfs_quota(Some(empty.path().as_os_str().to_owned())).unwrap(), bin);
        let none = tempfile::tempdir().unwrap();
        let e = find_in(&[none.path().to_owned()], "xfs_quota", "xfsprogs", "--size").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("xfs_quota (Debian package xfsprogs) is needed"), "{e}");
    }

    #[test]
    fn real_probe_says_no_on_a_plain_directory() {
        // This host's kernel has no XFS quota support (CONFIG_XFS_QUOTA is off), so this must say "no".
        let d = tempfile::tempdir().unwrap();
        assert!(!XfsQuota.supported(d.path()).unwrap());
    }

    #[test]
    fn real_xfs_quota_refuses_a_filesystem_other_than_xfs() {
        // xfs_quota would exit 0 having done nothing; the edge must say so instead.
        let d = tempfile::tempdir().unwrap();
        assert!(!is_xfs(d.path()).unwrap(), "the host's temp dir is expected on ext4/tmpfs");
        for e in [
            XfsQuota.set_limit(d.path(), 7, 1 << 20).unwrap_err(),
            XfsQuota.set_project(d.path(), 7).unwrap_err(),
        ] {
            assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
            assert!(e.to_string().contains("is not on XFS"), "{e}");
        }
    }
}
