//! A scratch XFS for the layers suite: lamina's store lives on XFS in the appliance, so both
//! lamina and `umoci unpack` are measured there rather than on whatever the host's temp
//! directory is (here ext4 without a journal, whose inode allocator re-reads every recently
//! deleted inode on each create and makes both tools cost ~1 ms per file after a big delete).
//!
//! A sparse file is formatted with `mkfs.xfs` and loop-mounted; dropping the guard unmounts it
//! and removes both, also when the bench fails. A mount left by a killed run is unmounted
//! before the next one starts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A loop-mounted XFS, unmounted and deleted on drop.
pub struct ScratchXfs {
    image: PathBuf,
    mnt: PathBuf,
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn is_mounted(mnt: &Path) -> bool {
    let Ok(mnt) = std::fs::canonicalize(mnt) else { return false };
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| Path::new(m) == mnt))
}

impl ScratchXfs {
    /// Formats `<dir>/NAME.img` (sparse, `size` bytes) and mounts it at `<dir>/NAME`.
    pub fn create(dir: &Path, name: &str, size: u64) -> Result<ScratchXfs> {
        ScratchXfs::create_with(dir, name, size, &["mkfs.xfs", "-q", "-f"])
    }

    /// [`ScratchXfs::create`] with another mkfs (the drivers comparison also needs btrfs).
    pub fn create_with(dir: &Path, name: &str, size: u64, mkfs: &[&str]) -> Result<ScratchXfs> {
        let image = dir.join(format!("{name}.img"));
        let mnt = dir.join(name);
        if is_mounted(&mnt) {
            run(Command::new("umount").arg(&mnt)).context("unmounting a stale scratch XFS")?;
        }
        let _ = std::fs::remove_file(&image);
        std::fs::create_dir_all(&mnt).with_context(|| format!("creating {}", mnt.display()))?;
        let f = std::fs::File::create(&image)
            .with_context(|| format!("creating {}", image.display()))?;
        f.set_len(size).with_context(|| format!("sizing {}", image.display()))?;
        drop(f);
        // From here on, drop cleans up whatever was made.
        let x = ScratchXfs { image, mnt };
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&x.image))
            .with_context(|| format!("{} (xfsprogs / btrfs-progs) is needed", mkfs[0]))?;
        run(Command::new("mount").args(["-o", "loop"]).arg(&x.image).arg(&x.mnt))
            .context("loop-mounting the scratch XFS needs root and the loop and xfs modules")?;
        Ok(x)
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for ScratchXfs {
    fn drop(&mut self) {
        if is_mounted(&self.mnt) {
            if let Err(e) = run(Command::new("umount").arg(&self.mnt)) {
                eprintln!("bench: {e:#}; detaching lazily");
                let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
            }
        }
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = std::fs::remove_file(&self.image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_xfs_is_mounted_then_gone() {
        let d = tempfile::tempdir().unwrap();
        let x = ScratchXfs::create(d.path(), "xfs", 512 << 20).expect("host has XFS and loop");
        let mnt = x.path().to_owned();
        assert!(is_mounted(&mnt));
        let st = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let canon = std::fs::canonicalize(&mnt).unwrap();
        let line = st.lines().find(|l| l.contains(canon.to_str().unwrap())).unwrap();
        assert!(line.contains(" - xfs "), "{line}");
        std::fs::write(mnt.join("f"), "x").unwrap();
        // A run killed before its drop leaves the mount; the next one takes it down first.
        std::mem::forget(x);
        let x = ScratchXfs::create(d.path(), "xfs", 512 << 20).unwrap();
        assert!(!mnt.join("f").exists(), "a fresh filesystem");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(mounts.matches(canon.to_str().unwrap()).count(), 1, "{mounts}");
        drop(x);
        assert!(!is_mounted(&mnt));
        assert!(!mnt.exists() && !d.path().join("xfs.img").exists());
    }
}
