//! Overlay mounts behind a small seam.
//!
//! Kernels ≥ 6.8 take one lower layer per `fsconfig("lowerdir+", …)` call on an `fsopen`
//! context, so the option string never has to fit in a page. Older kernels get a classic
//! `mount(2)` whose data names every layer by its short link relative to the store root
//! (`lowerdir=l/AAA:l/BBB,upperdir=<id>/diff,workdir=<id>/work`) after `chdir` into the root,
//! which fits 128 layers into one page. Both add `index=off` when the kernel knows it.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

use crate::error::{Error, ErrorKind, IoContext, Result};

/// One overlay mount, with paths relative to the store root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlaySpec {
    /// Lower layers, uppermost first, e.g. `l/ABC…`.
    pub lowers: Vec<String>,
    /// `<id>/diff` and `<id>/work` of a read-write mount; None for a read-only view.
    pub upper: Option<(String, String)>,
    /// Add `index=off` (set when /sys/module/overlay/parameters/index exists).
    pub index_off: bool,
}

impl OverlaySpec {
    /// The classic `mount(2)` data string with relative paths.
    pub fn data(&self) -> String {
        let mut s = String::new();
        if self.index_off {
            s.push_str("index=off,");
        }
        s.push_str("lowerdir=");
        s.push_str(&self.lowers.join(":"));
        if let Some((u, w)) = &self.upper {
            s.push_str(&format!(",upperdir={u},workdir={w}"));
        }
        s
    }
}

/// The kernel edge of the store.
pub trait Mounter: Send + Sync {
    /// Mount `spec` (paths relative to `root`) on `target`.
    fn mount_overlay(&self, root: &Path, spec: &OverlaySpec, target: &Path) -> Result<()>;
    /// Detach the mount on `target`.
    fn unmount(&self, target: &Path) -> Result<()>;
    /// Whether something is mounted on `target`.
    fn is_mounted(&self, target: &Path) -> bool;
}

/// Real mounts through rustix.
#[derive(Debug, Default)]
pub struct KernelMounter {
    /// Force the classic `mount(2)` path (tests of the fallback).
    pub force_classic: bool,
}

/// cwd is process-wide: classic relative mounts are serialized and restore it afterwards.
static CWD_LOCK: Mutex<()> = Mutex::new(());

/// The mount data page. 4096 is the smallest page size of the targets we build for, so the
/// check is conservative on larger-page kernels.
pub fn page_size() -> usize {
    4096
}

impl KernelMounter {
    fn mount_new_api(
        &self,
        root: &Path,
        spec: &OverlaySpec,
        target: &Path,
    ) -> rustix::io::Result<()> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        if spec.index_off {
            rustix::mount::fsconfig_set_string(&fs, "index", "off")?;
        }
        for l in &spec.lowers {
            rustix::mount::fsconfig_set_string(&fs, "lowerdir+", root.join(l))?;
        }
        if let Some((u, w)) = &spec.upper {
            rustix::mount::fsconfig_set_string(&fs, "upperdir", root.join(u))?;
            rustix::mount::fsconfig_set_string(&fs, "workdir", root.join(w))?;
        }
        rustix::mount::fsconfig_create(&fs)?;
        let mnt =
            rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
        rustix::mount::move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
    }

    fn mount_classic(&self, root: &Path, spec: &OverlaySpec, target: &Path) -> Result<()> {
        let data = spec.data();
        if data.len() > page_size() - 1 {
            return Err(Error::new(
                ErrorKind::Limit,
                format!("cannot mount layer, mount label too large ({} bytes > page)", data.len()),
            ));
        }
        let cdata = std::ffi::CString::new(data)
            .map_err(|e| Error::with_source(ErrorKind::Invalid, "mount data with NUL", e))?;
        let target = std::path::absolute(target).ctx("absolute path of", target)?;
        let _g = CWD_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let old = std::env::current_dir().ctx("get cwd for", root)?;
        rustix::process::chdir(root).ctx("chdir into", root)?;
        let r = rustix::mount::mount(
            "overlay",
            &target,
            "overlay",
            MountFlags::empty(),
            cdata.as_c_str(),
        );
        let back = rustix::process::chdir(&old);
        r.ctx("mount overlay on", &target)?;
        back.ctx("chdir back to", &old)
    }
}

impl Mounter for KernelMounter {
    fn mount_overlay(&self, root: &Path, spec: &OverlaySpec, target: &Path) -> Result<()> {
        if !self.force_classic {
            match self.mount_new_api(root, spec, target) {
                Ok(()) => return Ok(()),
                // No new mount API, or a kernel without `lowerdir+` (< 6.8): classic path.
                Err(rustix::io::Errno::NOSYS) | Err(rustix::io::Errno::INVAL) => {
                    tracing::debug!("fsconfig lowerdir+ unavailable, using mount(2)");
                }
                Err(e) => return Err(Error::io("mount overlay on", target, e)),
            }
        }
        self.mount_classic(root, spec, target)
    }

    fn unmount(&self, target: &Path) -> Result<()> {
        rustix::mount::unmount(target, UnmountFlags::DETACH).ctx("unmount", target)
    }

    fn is_mounted(&self, target: &Path) -> bool {
        is_mountpoint(target)
    }
}

/// A mount point has a different device than its parent directory.
pub fn is_mountpoint(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent: PathBuf = p.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("/"));
    match (std::fs::symlink_metadata(p), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Whether the overlay module knows `index=` (Docker adds `index=off` only then).
pub fn kernel_has_index_param() -> bool {
    Path::new("/sys/module/overlay/parameters/index").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_options_for_128_layers_fit_one_page() {
        let spec = OverlaySpec {
            lowers: (0..128).map(|_| format!("l/{}", crate::fsutil::short_id())).collect(),
            upper: Some((format!("{}/diff", "a".repeat(64)), format!("{}/work", "a".repeat(64)))),
            index_off: true,
        };
        let data = spec.data();
        assert!(data.len() < 4096, "{} bytes", data.len());
        // The same with absolute 64-hex paths would not.
        let abs: Vec<String> =
            (0..128).map(|_| format!("/var/lib/lamina/overlay2/{}/diff", "b".repeat(64))).collect();
        assert!(abs.join(":").len() > 4096);
    }

    #[test]
    fn data_string_shape() {
        let spec = OverlaySpec {
            lowers: vec!["l/A".into(), "l/B".into()],
            upper: Some(("x/diff".into(), "x/work".into())),
            index_off: true,
        };
        assert_eq!(spec.data(), "index=off,lowerdir=l/A:l/B,upperdir=x/diff,workdir=x/work");
        let ro = OverlaySpec { lowers: vec!["l/A".into()], upper: None, index_off: false };
        assert_eq!(ro.data(), "lowerdir=l/A");
    }
}
