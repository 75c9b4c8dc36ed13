//! A [`DeviceProvider`] for the host tests: each thin volume is a sparse file, a snapshot a
//! copy of it (`cp --reflink=auto --sparse=always`), a block device a loop device. It keeps
//! the contract the driver relies on (snapshots hold their origin's content, a volume still
//! attached is deleted only when released: the pool's deferred deletion), so the driver's
//! logic runs on the host with real block devices, mkfs and mounts; the pool daemon behind
//! the real provider runs in the VM tier.

use std::path::{Path, PathBuf};
use std::process::Command;

use overlay::devmapper::{DeviceProvider, PoolUsage};
use overlay::{Error, ErrorKind, Result};

pub struct LoopProvider {
    pub dir: PathBuf,
    /// The pretend pool's data size.
    pub total: u64,
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out =
        cmd.output().map_err(|e| Error::with_source(ErrorKind::Io, format!("run {cmd:?}"), e))?;
    if !out.status.success() {
        return Err(Error::new(
            ErrorKind::Io,
            format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl LoopProvider {
    pub fn new(dir: &Path, total: u64) -> LoopProvider {
        std::fs::create_dir_all(dir).unwrap();
        LoopProvider { dir: dir.to_path_buf(), total }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.img"))
    }

    fn attached(&self, file: &Path) -> Result<bool> {
        Ok(!sh(Command::new("losetup").arg("-j").arg(file))?.trim().is_empty())
    }

    /// Deletions the pool deferred, finished once their volume is no longer attached.
    fn reap(&self) -> Result<()> {
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "deferred") {
                let img = p.with_extension("img");
                if !self.attached(&img)? {
                    let _ = std::fs::remove_file(&img);
                    std::fs::remove_file(&p).unwrap();
                }
            }
        }
        Ok(())
    }

    /// Names of the volumes, without those whose deletion is deferred (a loop device that
    /// something, e.g. udev's probe, still held when it was detached).
    pub fn volumes(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().into_owned();
                n.strip_suffix(".img").map(str::to_string)
            })
            .filter(|n| !self.dir.join(format!("{n}.deferred")).exists())
            .collect();
        v.sort();
        v
    }

    pub fn deferred(&self) -> usize {
        std::fs::read_dir(&self.dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "deferred"))
            .count()
    }
}

impl DeviceProvider for LoopProvider {
    fn create(&self, name: &str, size: u64) -> Result<()> {
        self.reap()?;
        let f =
            std::fs::File::options().write(true).create_new(true).open(self.file(name)).map_err(
                |e| Error::with_source(ErrorKind::Conflict, format!("volume {name}"), e),
            )?;
        f.set_len(size).map_err(|e| Error::with_source(ErrorKind::Io, "size volume", e))
    }

    fn snapshot(&self, origin: &str, name: &str) -> Result<()> {
        self.reap()?;
        if self.file(name).exists() {
            return Err(Error::new(ErrorKind::Conflict, format!("volume {name} exists")));
        }
        sh(Command::new("cp")
            .args(["--reflink=auto", "--sparse=always"])
            .arg(self.file(origin))
            .arg(self.file(name)))
        .map(drop)
    }

    fn remove(&self, name: &str) -> Result<bool> {
        let f = self.file(name);
        if !f.exists() {
            return Err(Error::new(ErrorKind::NotFound, format!("not found: volume {name}")));
        }
        if self.attached(&f)? {
            std::fs::write(f.with_extension("deferred"), b"").unwrap();
            return Ok(true);
        }
        std::fs::remove_file(&f).unwrap();
        Ok(false)
    }

    fn attach(&self, name: &str) -> Result<PathBuf> {
        let out = sh(Command::new("losetup").args(["-f", "--show"]).arg(self.file(name)))?;
        Ok(PathBuf::from(out.trim()))
    }

    fn detach(&self, name: &str, device: &Path, deferred: bool) -> Result<bool> {
        // Held (mounted, or a lazily unmounted filesystem not yet released): the exclusive
        // open a mount also takes fails with EBUSY, as the pool daemon's detach checks.
        let held = matches!(
            rustix::fs::open(
                device,
                rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::EXCL,
                0.into()
            ),
            Err(rustix::io::Errno::BUSY)
        );
        if held && !deferred {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("loop detach {name}: {} is in use", device.display()),
            ));
        }
        // Of a device still open the kernel only sets autoclear: it goes when released, like
        // dm's deferred remove.
        sh(Command::new("losetup").arg("-d").arg(device)).map(drop)?;
        self.reap()?;
        Ok(held)
    }

    fn usage(&self) -> Result<PoolUsage> {
        use std::os::unix::fs::MetadataExt;
        self.reap()?;
        let used: u64 = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
            .sum();
        Ok(PoolUsage {
            data_used: used,
            data_total: self.total,
            fields: vec![
                ("Pool Name".into(), "loop-test-pool".into()),
                ("Data Space Used".into(), used.to_string()),
                ("Deferred Deleted Device Count".into(), self.deferred().to_string()),
            ],
        })
    }
}
