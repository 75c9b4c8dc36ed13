//! Per-driver test environments for the contract suite: a scratch directory and a store
//! root on a filesystem the driver can use.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use crate::common::{tmp, TestDir};
use overlay::{Driver, Store};

pub struct Env {
    t: TestDir,
    pub driver: Driver,
}

pub fn driver_of(name: &str) -> Driver {
    match name {
        "overlay" => Driver::Overlay,
        "vfs" => Driver::Vfs,
        other => panic!("no test environment for driver {other}"),
    }
}

impl Env {
    pub fn new(name: &str) -> Env {
        let driver = driver_of(name);
        Env { t: tmp(), driver }
    }

    /// Scratch space for sources and references.
    pub fn dir(&self) -> &Path {
        self.t.path()
    }

    pub fn store_root(&self) -> PathBuf {
        self.t.path().join("store")
    }

    pub fn open(&self) -> Store {
        Store::open(&self.store_root(), self.driver).unwrap()
    }

    /// A file of a stored layer's own content.
    pub fn layer_file(&self, store: &Store, cache_id: &str, rel: &str) -> PathBuf {
        store.root().join(cache_id).join("diff").join(rel)
    }
}
