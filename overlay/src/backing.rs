//! Checks on the filesystem under the store (Docker's OverlayFS driver documentation, "Prerequisites";
//! moby daemon/graphdriver/overlay2 `supportsDType`): it must report file types in directory
//! entries (`d_type`; XFS ftype=1), or overlay whiteouts break.

use std::path::Path;

use crate::error::{Error, ErrorKind, IoContext, Result};

/// Name of the backing filesystem as Docker prints it, from the statfs magic.
pub fn fs_name(dir: &Path) -> Result<&'static str> {
    let st = rustix::fs::statfs(dir).ctx("statfs", dir)?;
    Ok(match st.f_type as i64 {
        0x5846_5342 => "xfs",
        0xEF53 => "extfs",
        0x0102_1994 => "tmpfs",
        0x9123_683E => "btrfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        _ => "unknown",
    })
}

/// Whether `dir` returns real `d_type` values: create a file, read it back with getdents.
pub fn supports_dtype(dir: &Path) -> Result<bool> {
    let probe = tempfile::Builder::new()
        .prefix(".dtype-probe")
        .tempdir_in(dir)
        .map_err(|e| Error::io("create d_type probe in", dir, e))?;
    std::fs::write(probe.path().join("f"), b"").ctx("create d_type probe file in", probe.path())?;
    let fd = crate::fsutil::open_dir(probe.path())?;
    let mut d = rustix::fs::Dir::read_from(&fd).ctx("read", probe.path())?;
    while let Some(e) = d.read() {
        let e = e.ctx("read", probe.path())?;
        if e.file_name().to_bytes() == b"f" {
            return Ok(e.file_type() != rustix::fs::FileType::Unknown);
        }
    }
    Err(Error::new(
        ErrorKind::Io,
        format!("d_type probe file vanished in {}", probe.path().display()),
    ))
}

/// Docker's refusal for a backing filesystem without d_type (moby overlayutils wording).
pub fn dtype_error(driver: &str, backing: &str) -> Error {
    let mut msg = format!(
        "{driver}: the backing {backing} filesystem is formatted without d_type support, which leads to incorrect behavior."
    );
    if backing == "xfs" {
        msg.push_str(" Reformat the filesystem with ftype=1 to enable d_type support.");
    } else if backing == "extfs" {
        msg.push_str(" Reformat the filesystem (or use tune2fs) with -O filetype flag to enable d_type support.");
    }
    msg.push_str(" Backing filesystems without d_type support are not supported.");
    Error::new(ErrorKind::Unsupported, msg)
}

/// Refuse a store whose filesystem lacks d_type; `probe` is the seam (real: [`supports_dtype`]).
pub fn check(dir: &Path, probe: impl Fn(&Path) -> Result<bool>) -> Result<()> {
    if !probe(dir)? {
        return Err(dtype_error("overlay2", fs_name(dir)?));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_tmp_has_dtype() {
        let d = tempfile::tempdir().unwrap();
        assert!(supports_dtype(d.path()).unwrap());
        check(d.path(), supports_dtype).unwrap();
    }

    #[test]
    fn no_dtype_is_refused_with_dockers_wording() {
        let err = dtype_error("overlay2", "xfs");
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains(
            "overlay2: the backing xfs filesystem is formatted without d_type support, which leads to incorrect behavior. \
             Reformat the filesystem with ftype=1 to enable d_type support."
        ));
        let d = tempfile::tempdir().unwrap();
        let err = check(d.path(), |_| Ok(false)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("formatted without d_type support"), "{err}");
    }
}
