//! init, create, snapshot, remove, list, status: the management verbs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::output::{list_table, status_text, to_json, PoolStatus, VolumeRow};
use super::size::binary_size;
use super::{CreateArgs, InitArgs, ListArgs, RemoveArgs, SnapshotArgs, StatusArgs};
use crate::pool::{FilePool, Pool};
use crate::service::{PoolSource, Service, ServiceOptions};
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

/// A pool (directory, group directory or device list) opened in this process through the
/// [`Service`], so the verbs follow the daemon's rules (min_free_space, deferred deletion).
/// Every change is committed before returning.
pub(super) struct LocalPool {
    pub(super) svc: Service,
    pub(super) dir: PathBuf,
    /// Advisory lock on DIR/metadata (file pools) or the first device or group directory,
    /// released when the verb ends.
    _lock: File,
}

/// How a verb uses the pool: changes need it alone, reads may share it with other readers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Shared,
    Exclusive,
}

/// What POOL names: a pool directory, a group directory, or a comma-separated device list.
pub(super) fn source(pool: &Path) -> PoolSource {
    PoolSource::from_arg(pool)
}

/// Opens the pool at `dir` under an advisory lock, so two thinpool processes never change
/// one pool at once (a daemon serving the pool holds the lock too).
pub(super) fn open_pool(dir: &Path, access: Access) -> anyhow::Result<LocalPool> {
    let src = source(dir);
    let lock_path = match &src {
        PoolSource::Dir(d) => d.join(FilePool::METADATA),
        PoolSource::Group(paths) => {
            for p in paths {
                if !p.exists() {
                    bail!("pool directory or device {} does not exist", p.display());
                }
            }
            if let [d] = paths.as_slice() {
                if d.is_dir() && !has_devices(d) {
                    bail!(
                        "{} is not a pool directory (no {} file and no lamina devices)",
                        d.display(),
                        FilePool::METADATA
                    );
                }
            }
            paths[0].clone()
        }
    };
    // A running `thinpool serve` owns the pool: opening it here too could write beside it
    // (finishing deferred deletions, rewriting group metadata), so go through its control
    // socket instead.
    if let Some(state) = src.default_state_dir() {
        if let Some(pid) = crate::nbd::daemon::PoolLock::holder(&state) {
            bail!(
                "the pool in {} is in use by another thinpool process (pid {pid} is serving it)",
                dir.display()
            );
        }
    }
    let lock =
        File::open(&lock_path).with_context(|| format!("cannot open {}", lock_path.display()))?;
    let op = match access {
        Access::Shared => FlockOperation::NonBlockingLockShared,
        Access::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    match rustix::fs::flock(&lock, op) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            bail!("the pool in {} is in use by another thinpool process", dir.display())
        }
        Err(e) => bail!("cannot lock {}: {e}", lock_path.display()),
    }
    let svc = Service::open(&src, ServiceOptions::default())
        .with_context(|| format!("cannot open the pool in {}", dir.display()))?;
    Ok(LocalPool { svc, dir: dir.to_owned(), _lock: lock })
}

/// True when `dir` holds at least one file or block device (a group's device links).
fn has_devices(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(e.path())
                .is_ok_and(|m| (m.is_file() && m.len() > 0) || m.file_type().is_block_device())
        })
    })
}

impl LocalPool {
    pub(super) fn pool(&self) -> &Pool {
        self.svc.pool()
    }
}

/// Bytes free on the filesystem holding `path` (Docker caps loop-file space by it).
fn fs_available(path: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(path).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

impl Manage for LocalPool {
    fn create_volume(&self, name: &str, size: u64) -> anyhow::Result<u64> {
        Ok(self.svc.create_volume(name, size)?.0)
    }

    fn snapshot_volume(&self, origin: &str, name: &str) -> anyhow::Result<u64> {
        Ok(self.svc.snapshot_volume(origin, name)?.0)
    }

    fn remove_volume(&self, name: &str) -> anyhow::Result<()> {
        self.svc.remove_volume(name)?;
        Ok(())
    }

    fn volumes(&self) -> anyhow::Result<Vec<VolumeRow>> {
        let bs = self.pool().block_bytes();
        Ok(self
            .svc
            .volumes()?
            .into_iter()
            .map(|v| VolumeRow::new(v.name, v.id.0, v.size, v.mapped_blocks, bs))
            .collect())
    }

    fn status(&self) -> anyhow::Result<PoolStatus> {
        let pool = self.pool();
        let bs = pool.block_bytes();
        let data = pool.data_usage();
        let meta = pool.metadata_usage();
        let file = matches!(source(&self.dir), PoolSource::Dir(_));
        let cap = if file { fs_available(&self.dir).unwrap_or(u64::MAX) } else { u64::MAX };
        let mb = crate::pdata::disk::BLOCK_SIZE as u64;
        let docker = self.svc.status();
        Ok(PoolStatus {
            pool_dir: self.dir.display().to_string(),
            data_file: docker.data_file.clone().unwrap_or_default(),
            metadata_file: docker.metadata_file.clone().unwrap_or_default(),
            block_size: bs,
            data_used: data.used * bs,
            data_total: data.total * bs,
            data_available: (data.free * bs).min(cap),
            metadata_used: meta.used * mb,
            metadata_total: meta.total * mb,
            metadata_available: (meta.free * mb).min(cap),
            transaction_id: pool.transaction_id().0,
            volumes: self.svc.volumes()?.len(),
            docker: Some(docker),
        })
    }
}

pub(super) fn init(a: &InitArgs) -> anyhow::Result<ExitCode> {
    if !a.device.is_empty() {
        return super::group::init(a);
    }
    let dir = &a.pool.dir;
    let Some(data_size) = a.data_size else { bail!("give --data-size (or --device)") };
    if !a.block_size.is_multiple_of(Sectors::SIZE) {
        bail!("block size {} is not a whole number of 512-byte sectors", a.block_size);
    }
    if data_size < a.block_size {
        bail!("data size {} is smaller than one block ({})", data_size, a.block_size);
    }
    let sectors = Sectors(a.block_size / Sectors::SIZE);
    if !u32::try_from(sectors.0).is_ok_and(crate::pdata::disk::valid_data_block_size) {
        bail!("block size {}: dm-thin needs a multiple of 64K from 64K to 1G", a.block_size);
    }
    let files = [dir.join(FilePool::METADATA), dir.join(FilePool::DATA)];
    let existed = files.clone().map(|f| f.exists());
    let pool = match FilePool::create(dir, data_size, a.metadata_size, sectors) {
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
    let m = open_pool(&a.pool.dir, Access::Shared)?;
    if a.lvs {
        // lvs-like: the pool row (Data%, Meta%) and every visible volume.
        let rows = m.svc.list()?;
        let text = crate::service::status::format_list(&rows);
        print!("{}", if a.json { to_json(&rows) } else { text });
        return Ok(ExitCode::SUCCESS);
    }
    let rows = m.volumes()?;
    print!("{}", if a.json { to_json(&rows) } else { list_table(&rows) });
    Ok(ExitCode::SUCCESS)
}

pub(super) fn status(a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let st = open_pool(&a.pool.dir, Access::Shared)?.status()?;
    print!("{}", if a.json { to_json(&st) } else { status_text(&st) });
    Ok(ExitCode::SUCCESS)
}
