//! Per-driver test environments for the contract suite: a scratch directory and a store
//! root on a filesystem the driver can use.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{need, run, tmp, TestDir};
use overlay::{Driver, Store};

pub struct Env {
    // Declared first: dropped (unmounted) before the directory holding the image goes.
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
        Store::open(&self.store_root(), self.driver).unwrap()
    }

    /// A second store of the same driver on the same filesystem.
    pub fn open_other(&self, name: &str) -> Store {
        Store::open(&self.store_root().with_file_name(name), self.driver).unwrap()
    }

    /// A file of a stored layer's own content.
    pub fn layer_file(&self, store: &Store, cache_id: &str, rel: &str) -> PathBuf {
        store.root().join(cache_id).join("diff").join(rel)
    }
}
