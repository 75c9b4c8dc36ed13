//! Per-driver test environments for the contract suite: a scratch directory and a store
//! root on a filesystem the driver can use. Dropping one detaches what it left mounted or
//! attached ([`TestDir`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{loopdev, need, run, tmp, TestDir};
use overlay::{Driver, Store};

pub struct Env {
    // Declared first: unmounted before the directory holding the image is cleaned up.
    fs: Option<LoopFs>,
    t: TestDir,
    pub driver: Driver,
}

pub fn driver_of(name: &str) -> Driver {
    Driver::from_name(name).unwrap()
}

/// A filesystem image on a loop device, mounted at `mnt` until dropped.
pub struct LoopFs {
    pub mnt: PathBuf,
}

impl LoopFs {
    /// `mkfs` (e.g. `mkfs.btrfs -q`) a sparse file of `size` bytes under `dir`, loop-mount it.
    pub fn new(dir: &Path, mkfs: &[&str], size: u64) -> LoopFs {
        need(mkfs[0]);
        let img = dir.join("fs.img");
        std::fs::File::create(&img).unwrap().set_len(size).unwrap();
        run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&img));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        run(Command::new("mount").arg("-o").arg("loop").arg(&img).arg(&mnt));
        LoopFs { mnt }
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// The devicemapper test options: ext4 (quick to make on a small device), a 96 MiB base.
pub const DM_OPTS: &[&str] = &["dm.fs=ext4", "dm.basesize=96M", "dm.use_deferred_removal=true"];

/// Open an existing store of `driver` at `root` (also from a crash child): devicemapper's
/// volumes are in `pool/` next to the root.
pub fn open_store(driver: Driver, root: &Path) -> Store {
    open_store_with(driver, root, DM_OPTS)
}

/// [`open_store`] with other devicemapper options.
pub fn open_store_with(driver: Driver, root: &Path, dm_opts: &[&str]) -> Store {
    match driver {
        Driver::Devicemapper => Store::open_devicemapper(
            root,
            overlay::devmapper::DmOptions::parse(dm_opts).unwrap(),
            Box::new(loopdev::LoopProvider::new(&root.with_file_name("pool"), 8 << 30)),
        )
        .unwrap(),
        d => Store::open(root, d).unwrap(),
    }
}

impl Env {
    pub fn new(name: &str) -> Env {
        let driver = driver_of(name);
        let t = tmp();
        let fs = match driver {
            Driver::Btrfs => Some(LoopFs::new(t.path(), &["mkfs.btrfs", "-q"], 512 << 20)),
            _ => None,
        };
        Env { fs, t, driver }
    }

    /// Scratch space for sources and references.
    pub fn dir(&self) -> &Path {
        self.t.path()
    }

    pub fn store_root(&self) -> PathBuf {
        match &self.fs {
            Some(fs) => fs.mnt.join("store"),
            None => self.t.path().join("store"),
        }
    }

    pub fn open(&self) -> Store {
        open_store(self.driver, &self.store_root())
    }

    /// A second store of the same driver on the same filesystem (devicemapper: its own pool).
    pub fn open_other(&self, name: &str) -> Store {
        let d = self.store_root().with_file_name(name);
        std::fs::create_dir_all(&d).unwrap();
        open_store(self.driver, &d.join("store"))
    }

    /// The devicemapper volumes of the main store's pool (`None` for other drivers).
    pub fn volumes(&self) -> Option<Vec<String>> {
        (self.driver == Driver::Devicemapper).then(|| {
            loopdev::LoopProvider::new(&self.store_root().with_file_name("pool"), 0).volumes()
        })
    }
}
