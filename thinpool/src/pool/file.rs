//! A pool in a directory, laid out like Docker's loop-lvm files:
//!
//! ```text
//! DIR/metadata        metadata device (4 KiB blocks, dm-thin format)
//! DIR/data            data device (sparse file)
//! DIR/names.{a,b}.json  name table slots (see `names`)
//! ```

use std::path::Path;
use std::sync::Arc;

use super::error::{Error, ErrorKind, Result};
use super::names::DirNameStore;
use super::Pool;
use crate::io::FileDevice;
use crate::pdata::disk::{BLOCK_SIZE, MAX_METADATA_BLOCKS};
use crate::units::{Bytes, Sectors};

pub struct FilePool;

impl FilePool {
    pub const METADATA: &'static str = "metadata";
    pub const DATA: &'static str = "data";

    /// dm-thin's sizing rule: 48 bytes per data block, at least 2 MiB, at most the 255-bitmap
    /// limit (15.875 GiB); rounded up to whole 4 KiB blocks.
    pub fn default_metadata_size(data_size: Bytes, block_size: Sectors) -> Bytes {
        let blocks = data_size.get() / block_size.bytes().max(1);
        let bytes = blocks.saturating_mul(48).max(2 << 20);
        Bytes::new(bytes.div_ceil(BLOCK_SIZE as u64).min(MAX_METADATA_BLOCKS) * BLOCK_SIZE as u64)
    }

    /// Creates DIR (if needed) with new metadata and data files and formats a pool in them.
    pub fn create(
        dir: &Path,
        data_size: Bytes,
        meta_size: Option<Bytes>,
        block_size: Sectors,
    ) -> Result<Pool> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating pool directory {}", dir.display()), e))?;
        let meta_path = dir.join(Self::METADATA);
        if meta_path.exists() {
            return Err(Error::new(
                ErrorKind::Exists,
                format!("{} already holds a pool", dir.display()),
            ));
        }
        let meta_size =
            meta_size.unwrap_or_else(|| Self::default_metadata_size(data_size, block_size));
        let meta = FileDevice::create(&meta_path, meta_size.get())
            .map_err(|e| Error::io(format!("creating {}", meta_path.display()), e))?;
        let data_path = dir.join(Self::DATA);
        let data = FileDevice::create(&data_path, data_size.get())
            .map_err(|e| Error::io(format!("creating {}", data_path.display()), e))?;
        Pool::format_with_names(
            Arc::new(meta),
            Arc::new(data),
            block_size,
            Box::new(DirNameStore::new(dir)),
        )
    }

    /// Opens the pool in DIR.
    pub fn open(dir: &Path) -> Result<Pool> {
        let open = |name: &str| {
            let p = dir.join(name);
            FileDevice::open(&p).map_err(|e| Error::io(format!("opening {}", p.display()), e))
        };
        Pool::open_with_names(
            Arc::new(open(Self::METADATA)?),
            Arc::new(open(Self::DATA)?),
            Box::new(DirNameStore::new(dir)),
        )
    }
}
