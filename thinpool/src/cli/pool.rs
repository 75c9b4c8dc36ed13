//! init, create, snapshot, remove, list, status: the management verbs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::output::{list_table, status_text, to_json, PoolStatus, VolumeRow};
use super::size::binary_size;
use super::{CreateArgs, InitArgs, ListArgs, RemoveArgs, SnapshotArgs, StatusArgs};
use crate::pool::{FilePool, Pool};
use crate::units::Sectors;
use rustix::fs::FlockOperation;

/// The management operations. Today they open the pool files directly ([`LocalPool`]); a
/// client that forwards them to a running `thinpool serve` implements the same trait.
pub(super) trait Manage {
    /// Creates a volume and returns its thin id.
    fn create_volume(&self, name: &str, size: u64) -> anyhow::Result<u64>;
    fn snapshot_volume(&self, origin: &str, name: &str) -> anyhow::Result<u64>;
    fn remove_volume(&self, name: &str) -> anyhow::Result<()>;
    fn volumes(&self) -> anyhow::Result<Vec<VolumeRow>>;
    fn status(&self) -> anyhow::Result<PoolStatus>;
}

/// A pool directory opened in this process. Every change is committed before returning.
pub(super) struct LocalPool {
    pub(super) pool: Pool,
    pub(super) dir: PathBuf,
    /// Advisory lock on DIR/metadata, released when the verb ends.
    _lock: File,
}

/// How a verb uses the pool: changes need it alone, reads may share it with other readers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Shared,
    Exclusive,
}

/// Opens the pool in `dir` under an advisory lock, so two thinpool processes never change
/// one pool at once (a daemon serving the pool holds the lock too).
pub(super) fn open_pool(dir: &Path, access: Access) -> anyhow::Result<LocalPool> {
    let meta = dir.join(FilePool::METADATA);
    if !meta.exists() {
        if !dir.exists() {
            bail!("pool directory {} does not exist", dir.display());
        }
        bail!("{} is not a pool directory (no {} file)", dir.display(), FilePool::METADATA);
    }
    let lock = File::open(&meta).with_context(|| format!("cannot open {}", meta.display()))?;
    let op = match access {
        Access::Shared => FlockOperation::NonBlockingLockShared,
        Access::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    match rustix::fs::flock(&lock, op) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            bail!("the pool in {} is in use by another thinpool process", dir.display())
        }
        Err(e) => bail!("cannot lock {}: {e}", meta.display()),
    }
    let pool = FilePool::open(dir)
        .with_context(|| format!("cannot open the pool in {}", dir.display()))?;
    Ok(LocalPool { pool, dir: dir.to_owned(), _lock: lock })
}

impl LocalPool {
    fn commit(&self) -> anyhow::Result<()> {
        self.pool.commit().with_context(|| format!("committing the pool in {}", self.dir.display()))
    }
}

/// Bytes free on the filesystem holding `path` (Docker caps loop-file space by it).
fn fs_available(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Manage for LocalPool {
    fn create_volume(&self, name: &str, size: u64) -> anyhow::Result<u64> {
        let id = self.pool.create_volume(name, size)?;
        self.commit()?;
        Ok(id.0)
    }

    fn snapshot_volume(&self, origin: &str, name: &str) -> anyhow::Result<u64> {
        let id = self.pool.snapshot_volume(origin, name)?;
        self.commit()?;
        Ok(id.0)
    }

    fn remove_volume(&self, name: &str) -> anyhow::Result<()> {
        self.pool.remove_volume(name)?;
        self.commit()
    }

    fn volumes(&self) -> anyhow::Result<Vec<VolumeRow>> {
        let bs = self.pool.block_bytes();
        Ok(self
            .pool
            .volumes()?
            .into_iter()
            .map(|v| VolumeRow::new(v.name, v.id.0, v.size, v.mapped_blocks, bs))
            .collect())
    }

    fn status(&self) -> anyhow::Result<PoolStatus> {
        let bs = self.pool.block_bytes();
        let data = self.pool.data_usage();
        let meta = self.pool.metadata_usage();
        let cap = fs_available(&self.dir).unwrap_or(u64::MAX);
        let mb = crate::pdata::disk::BLOCK_SIZE as u64;
        Ok(PoolStatus {
            pool_dir: self.dir.display().to_string(),
            data_file: self.dir.join(FilePool::DATA).display().to_string(),
            metadata_file: self.dir.join(FilePool::METADATA).display().to_string(),
            block_size: bs,
            data_used: data.used * bs,
            data_total: data.total * bs,
            data_available: (data.free * bs).min(cap),
            metadata_used: meta.used * mb,
            metadata_total: meta.total * mb,
            metadata_available: (meta.free * mb).min(cap),
            transaction_id: self.pool.transaction_id().0,
            volumes: self.pool.volumes()?.len(),
        })
    }
}

pub(super) fn init(a: &InitArgs) -> anyhow::Result<ExitCode> {
    let dir = &a.pool.dir;
    if !a.block_size.is_multiple_of(Sectors::SIZE) {
        bail!("block size {} is not a whole number of 512-byte sectors", a.block_size);
    }
    if a.data_size < a.block_size {
        bail!("data size {} is smaller than one block ({})", a.data_size, a.block_size);
    }
    let sectors = Sectors(a.block_size / Sectors::SIZE);
    if !u32::try_from(sectors.0).is_ok_and(crate::pdata::disk::valid_data_block_size) {
        bail!("block size {}: dm-thin needs a multiple of 64K from 64K to 1G", a.block_size);
    }
    let files = [dir.join(FilePool::METADATA), dir.join(FilePool::DATA)];
    let existed = files.clone().map(|f| f.exists());
    let pool = match FilePool::create(dir, a.data_size, a.metadata_size, sectors) {
        Ok(p) => p,
        Err(e) => {
            // Leave no half-made pool behind (it would block the next init).
            for (f, existed) in files.iter().zip(existed) {
                if !existed {
                    let _ = std::fs::remove_file(f);
                }
            }
            return Err(e).with_context(|| format!("cannot create a pool in {}", dir.display()));
        }
    };
    let meta = pool.metadata_usage();
    println!(
        "created pool in {}: data {}, metadata {}, block size {}",
        dir.display(),
        binary_size(pool.data_usage().total * pool.block_bytes()),
        binary_size(meta.total * crate::pdata::disk::BLOCK_SIZE as u64),
        binary_size(pool.block_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn create(a: &CreateArgs) -> anyhow::Result<ExitCode> {
    let m = open_pool(&a.pool.dir, Access::Exclusive)?;
    let id = m.create_volume(&a.name, a.size)?;
    println!("created volume {} (id {id}, {})", a.name, binary_size(a.size));
    Ok(ExitCode::SUCCESS)
}

pub(super) fn snapshot(a: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    let m = open_pool(&a.pool.dir, Access::Exclusive)?;
    let id = m.snapshot_volume(&a.origin, &a.name)?;
    println!("created snapshot {} of {} (id {id})", a.name, a.origin);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn remove(a: &RemoveArgs) -> anyhow::Result<ExitCode> {
    let m = open_pool(&a.pool.dir, Access::Exclusive)?;
    m.remove_volume(&a.name)?;
    println!("removed volume {}", a.name);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn list(a: &ListArgs) -> anyhow::Result<ExitCode> {
    let rows = open_pool(&a.pool.dir, Access::Shared)?.volumes()?;
    print!("{}", if a.json { to_json(&rows) } else { list_table(&rows) });
    Ok(ExitCode::SUCCESS)
}

pub(super) fn status(a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let st = open_pool(&a.pool.dir, Access::Shared)?.status()?;
    print!("{}", if a.json { to_json(&st) } else { status_text(&st) });
    Ok(ExitCode::SUCCESS)
}
