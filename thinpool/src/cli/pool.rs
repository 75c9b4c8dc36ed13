//! init, create, snapshot, remove, list, status: the management verbs.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};

use super::output::{list_table, status_text, to_json, PoolStatus, VolumeRow};
use super::size::binary_size;
use super::{
    AttachArgs, CreateArgs, InitArgs, ListArgs, OfferArgs, RemoveArgs, SnapshotArgs, StatusArgs,
};
use rustix::fs::FlockOperation;
use thinpool::daemon::control;
use thinpool::daemon::PoolLock;
use thinpool::pool::{FilePool, Pool};
use thinpool::service::{PoolSource, Service, ServiceOptions};
use thinpool::units::{Bytes, MetaBlock, Sectors};

/// What `thinpool create` asks for.
pub(super) struct NewVolume<'a> {
    pub(super) name: &'a str,
    pub(super) size: Bytes,
    /// Marked as created for export (see `thinpool offer`).
    pub(super) export: bool,
    /// The LUKS2 header an encrypted volume starts with.
    pub(super) header: Option<&'a thinpool::luks::Header>,
}

/// The management operations. Today they open the pool files directly ([`LocalPool`]); a
/// client that forwards them to a running `thinpool serve` implements the same trait.
pub(super) trait Manage {
    /// Creates a volume and returns its thin id.
    fn create_volume(&self, v: &NewVolume) -> anyhow::Result<u64>;
    /// Marks a volume as created for export, or takes the mark away.
    fn set_export(&self, name: &str, export: bool) -> anyhow::Result<()>;
    fn snapshot_volume(&self, origin: &str, name: &str) -> anyhow::Result<u64>;
    fn remove_volume(&self, name: &str) -> anyhow::Result<()>;
    fn volumes(&self) -> anyhow::Result<Vec<VolumeRow>>;
    fn status(&self) -> anyhow::Result<PoolStatus>;
    /// Reserves or releases the metadata snapshot; returns its metadata block.
    fn metadata_snap(&self, action: control::MetadataSnapAction) -> anyhow::Result<u64>;
}

/// A pool (directory, group directory or device list) opened in this process through the
/// [`Service`], so the verbs follow the daemon's rules (min_free_space, deferred deletion).
/// Every change is committed before returning.
pub(super) struct LocalPool {
    pub(super) svc: Service,
    pub(super) dir: PathBuf,
    /// Advisory lock on STATE/lock (the file `thinpool serve` holds) or, for a bare device
    /// list, its first device; released when the verb ends.
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

/// Why a pool could not be opened in this process.
pub(super) enum Busy {
    /// A `thinpool serve` daemon owns the pool: management verbs go through its control socket.
    Daemon(PathBuf),
    Other(anyhow::Error),
}

/// Opens the pool at `dir` under an advisory lock, so two thinpool processes never change
/// one pool at once (a daemon serving the pool holds the same lock for as long as it runs).
pub(super) fn open_pool(dir: &Path, access: Access) -> anyhow::Result<LocalPool> {
    match try_open_pool(dir, access) {
        Ok(p) => Ok(p),
        Err(Busy::Daemon(state)) => {
            let pid = PoolLock::holder(&state).unwrap_or(0);
            bail!(
                "the pool in {} is served by thinpool serve (pid {pid}); this verb needs the pool \
                 to itself: stop the daemon first",
                dir.display()
            )
        }
        Err(Busy::Other(e)) => Err(e),
    }
}

/// The management verbs' way in: the daemon when one serves the pool, else the files.
pub(super) fn manage(dir: &Path, access: Access) -> anyhow::Result<Box<dyn Manage>> {
    Ok(try_manage_local(dir, access)?.0)
}

/// As [`manage`], and whether the pool was opened in this process (true) or a daemon
/// serves it (false).
pub(super) fn try_manage_local(
    dir: &Path,
    access: Access,
) -> anyhow::Result<(Box<dyn Manage>, bool)> {
    match try_open_pool(dir, access) {
        Ok(p) => Ok((Box::new(p), true)),
        Err(Busy::Daemon(state)) => {
            Ok((Box::new(DaemonPool { dir: dir.to_owned(), state }), false))
        }
        Err(Busy::Other(e)) => Err(e),
    }
}

pub(super) fn try_open_pool(dir: &Path, access: Access) -> Result<LocalPool, Busy> {
    let other = |e: anyhow::Error| Busy::Other(e);
    let src = source(dir);
    match &src {
        PoolSource::Dir(d) => {
            if !d.join(FilePool::METADATA).exists() && !d.exists() {
                return Err(other(anyhow!("pool directory {} does not exist", d.display())));
            }
        }
        PoolSource::Group(paths) => {
            for p in paths {
                if !p.exists() {
                    return Err(other(anyhow!(
                        "pool directory or device {} does not exist",
                        p.display()
                    )));
                }
            }
            if let [d] = paths.as_slice() {
                if d.is_dir() && !has_devices(d) {
                    return Err(other(anyhow!(
                        "{} is not a pool directory (no {} file and no lamina devices)",
                        d.display(),
                        FilePool::METADATA
                    )));
                }
            }
        }
    }
    // The daemon locks STATE/lock (a pool or group directory is its own state directory); a
    // bare device list has none, so its first device is the lock.
    let state = src.default_state_dir();
    let lock_path = match (&state, &src) {
        (Some(s), _) => PoolLock::lock_path(s),
        (None, PoolSource::Group(paths)) => paths[0].clone(),
        (None, PoolSource::Dir(d)) => PoolLock::lock_path(d),
    };
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(state.is_some())
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| other(anyhow!("cannot open {}: {e}", lock_path.display())))?;
    let op = match access {
        Access::Shared => FlockOperation::NonBlockingLockShared,
        Access::Exclusive => FlockOperation::NonBlockingLockExclusive,
    };
    match rustix::fs::flock(&lock, op) {
        Ok(()) => {}
        Err(rustix::io::Errno::WOULDBLOCK) => {
            if let Some(s) = state.filter(|s| control::socket_path(s).exists()) {
                return Err(Busy::Daemon(s));
            }
            return Err(other(anyhow!(
                "the pool in {} is in use by another thinpool process",
                dir.display()
            )));
        }
        Err(e) => return Err(other(anyhow!("cannot lock {}: {e}", lock_path.display()))),
    }
    let svc = Service::open(&src, ServiceOptions::default())
        .with_context(|| format!("cannot open the pool in {}", dir.display()))
        .map_err(other)?;
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
    fn create_volume(&self, v: &NewVolume) -> anyhow::Result<u64> {
        let id = match v.header {
            Some(h) => self.svc.create_encrypted_volume(v.name, v.size, h, v.export)?,
            None => self.svc.create_volume_for(v.name, v.size, v.export)?,
        };
        Ok(id.0)
    }

    fn set_export(&self, name: &str, export: bool) -> anyhow::Result<()> {
        Ok(self.svc.set_export(name, export)?)
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
            .map(|v| {
                let mapped = v.mapped().0;
                VolumeRow::new(v.name, v.id.0, v.size, mapped, bs).exported(v.export)
            })
            .collect())
    }

    fn status(&self) -> anyhow::Result<PoolStatus> {
        let pool = self.pool();
        let bs = pool.block_bytes();
        let data = pool.data_usage();
        let meta = pool.metadata_usage();
        let file = matches!(source(&self.dir), PoolSource::Dir(_));
        let cap = if file { fs_available(&self.dir).unwrap_or(u64::MAX) } else { u64::MAX };
        let docker = self.svc.status();
        Ok(PoolStatus {
            pool_dir: self.dir.display().to_string(),
            data_file: docker.data_file.clone().unwrap_or_default(),
            metadata_file: docker.metadata_file.clone().unwrap_or_default(),
            block_size: bs,
            data_used: pool.data_bytes(data.used).get(),
            data_total: pool.data_bytes(data.total).get(),
            data_available: pool.data_bytes(data.free).get().min(cap),
            metadata_used: meta.used.bytes().get(),
            metadata_total: meta.total.bytes().get(),
            metadata_available: meta.free.bytes().get().min(cap),
            transaction_id: pool.transaction_id().0,
            volumes: self.svc.volumes()?.len(),
            docker: Some(docker),
        })
    }

    fn metadata_snap(&self, action: control::MetadataSnapAction) -> anyhow::Result<u64> {
        let pool = self.pool();
        let b = match action {
            control::MetadataSnapAction::Reserve => pool.reserve_metadata_snap()?,
            control::MetadataSnapAction::Release => pool.release_metadata_snap()?,
        };
        Ok(b.0)
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
    if !Pool::valid_block_bytes(a.block_size) {
        bail!("block size {}: dm-thin needs a multiple of 64K from 64K to 1G", a.block_size);
    }
    // Options are checked before anything is created.
    let config_text = super::group::file_pool_config(a)?;
    let files = [dir.join(FilePool::METADATA), dir.join(FilePool::DATA)];
    let existed = files.clone().map(|f| f.exists());
    let pool = match FilePool::create(
        dir,
        Bytes::new(data_size),
        a.metadata_size.map(Bytes::new),
        sectors,
    ) {
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
    if let Some(text) = config_text {
        let p = dir.join("config.toml");
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let meta = pool.metadata_usage();
    println!(
        "created pool in {}: data {}, metadata {}, block size {}",
        dir.display(),
        pool.data_bytes(pool.data_usage().total).binary(),
        meta.total.bytes().binary(),
        binary_size(pool.block_bytes())
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn create(a: &CreateArgs) -> anyhow::Result<ExitCode> {
    let m = manage(&a.pool.dir, Access::Exclusive)?;
    let how = if a.export { ", for export" } else { "" };
    let size = Bytes::new(a.size);
    let plain = NewVolume { name: &a.name, size, export: a.export, header: None };
    let Some(key) = a.key_file.as_deref().filter(|_| a.encrypt) else {
        let id = m.create_volume(&plain)?;
        println!("created volume {} (id {id}, {}{how})", a.name, binary_size(a.size));
        return Ok(ExitCode::SUCCESS);
    };
    // The header is cryptsetup's own output; the key never leaves this process's cryptsetup
    // child (a daemon gets only the header).
    let opts = thinpool::luks::FormatOptions { iter_time_ms: a.iter_time, ..Default::default() };
    let header = thinpool::luks::format(key, a.size, &opts)
        .with_context(|| format!("cannot make a LUKS2 header for {}", a.name))?;
    let id = m.create_volume(&NewVolume { header: Some(&header), ..plain })?;
    println!(
        "created encrypted volume {} (id {id}, {}, LUKS2 header {}{how})",
        a.name,
        binary_size(a.size),
        binary_size(header.len())
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn offer(a: &OfferArgs) -> anyhow::Result<ExitCode> {
    let m = manage(&a.pool.dir, Access::Exclusive)?;
    m.set_export(&a.name, !a.off)?;
    let how = if a.off { "no longer offered" } else { "offered" };
    println!("volume {} is {how} to NBD clients under --exports flagged", a.name);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn snapshot(a: &SnapshotArgs) -> anyhow::Result<ExitCode> {
    let m = manage(&a.pool.dir, Access::Exclusive)?;
    let id = m.snapshot_volume(&a.origin, &a.name)?;
    println!("created snapshot {} of {} (id {id})", a.name, a.origin);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn remove(a: &RemoveArgs) -> anyhow::Result<ExitCode> {
    let m = manage(&a.pool.dir, Access::Exclusive)?;
    m.remove_volume(&a.name)?;
    println!("removed volume {}", a.name);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn list(a: &ListArgs) -> anyhow::Result<ExitCode> {
    if a.lvs {
        // lvs-like: the pool row (Data%, Meta%) and every visible volume.
        let rows = open_pool(&a.pool.dir, Access::Shared)?.svc.list()?;
        let text = thinpool::service::status::format_list(&rows);
        print!("{}", if a.json { to_json(&rows) } else { text });
        return Ok(ExitCode::SUCCESS);
    }
    let rows = manage(&a.pool.dir, Access::Shared)?.volumes()?;
    print!("{}", if a.json { to_json(&rows) } else { list_table(&rows) });
    Ok(ExitCode::SUCCESS)
}

pub(super) fn status(a: &StatusArgs) -> anyhow::Result<ExitCode> {
    let st = manage(&a.pool.dir, Access::Shared)?.status()?;
    print!("{}", if a.json { to_json(&st) } else { status_text(&st) });
    Ok(ExitCode::SUCCESS)
}

/// The control client of the daemon serving `a`'s pool: a ublk device needs a server process,
/// so attach and detach only work through a running `thinpool serve`.
fn serving_daemon(a: &AttachArgs) -> anyhow::Result<control::Client> {
    let state = a.state_dir.clone().or_else(|| source(&a.pool.dir).default_state_dir());
    let Some(state) = state else {
        anyhow::bail!(
            "{} is a device list: give --state-dir (the daemon's, as passed to thinpool serve)",
            a.pool.dir.display()
        );
    };
    let client = control::Client::new(&state);
    if PoolLock::holder(&state).is_none() || !client.socket_exists() {
        anyhow::bail!(
            "no thinpool serve is running for {} (state directory {}): ublk devices are served \
             by the daemon; start it first",
            a.pool.dir.display(),
            state.display()
        );
    }
    Ok(client)
}

pub(super) fn attach(a: &AttachArgs) -> anyhow::Result<ExitCode> {
    let dev = serving_daemon(a)?.attach(&a.name)?;
    println!("{}", dev.display());
    Ok(ExitCode::SUCCESS)
}

pub(super) fn detach(a: &AttachArgs) -> anyhow::Result<ExitCode> {
    let dev = serving_daemon(a)?.detach(&a.name)?;
    println!("detached {} from {}", a.name, dev.display());
    Ok(ExitCode::SUCCESS)
}

/// Management verbs sent to the `thinpool serve` daemon that owns the pool.
struct DaemonPool {
    dir: PathBuf,
    /// The daemon's state directory (its lock and control socket).
    state: PathBuf,
}

impl DaemonPool {
    fn client(&self) -> control::Client {
        control::Client::new(&self.state)
    }
}

impl Manage for DaemonPool {
    fn create_volume(&self, v: &NewVolume) -> anyhow::Result<u64> {
        let c = self.client();
        Ok(match v.header {
            Some(h) => c.create_encrypted(v.name, v.size, h, v.export)?,
            None if v.export => c.create_for_export(v.name, v.size)?,
            None => c.create(v.name, v.size)?,
        })
    }

    fn set_export(&self, name: &str, export: bool) -> anyhow::Result<()> {
        Ok(self.client().set_export(name, export)?)
    }

    fn snapshot_volume(&self, origin: &str, name: &str) -> anyhow::Result<u64> {
        Ok(self.client().snapshot(origin, name)?)
    }

    fn remove_volume(&self, name: &str) -> anyhow::Result<()> {
        self.client().remove(name)?;
        Ok(())
    }

    fn volumes(&self) -> anyhow::Result<Vec<VolumeRow>> {
        let c = self.client();
        let bs = c.status()?.block_bytes;
        Ok(c.list()?
            .into_iter()
            .map(|v| {
                VolumeRow::new(v.name, v.thin_id, v.size, v.mapped_blocks, bs).exported(v.export)
            })
            .collect())
    }

    fn status(&self) -> anyhow::Result<PoolStatus> {
        let st = self.client().status()?;
        let bs = st.block_bytes;
        // The control protocol's counts are plain numbers of blocks.
        let mb = MetaBlock::SIZE;
        Ok(PoolStatus {
            pool_dir: self.dir.display().to_string(),
            data_file: self.dir.join(FilePool::DATA).display().to_string(),
            metadata_file: self.dir.join(FilePool::METADATA).display().to_string(),
            block_size: bs,
            data_used: st.data.used * bs,
            data_total: st.data.total * bs,
            data_available: st.data.free * bs,
            metadata_used: st.metadata.used * mb,
            metadata_total: st.metadata.total * mb,
            metadata_available: st.metadata.free * mb,
            transaction_id: st.transaction_id,
            volumes: st.volumes,
            docker: Some(st.devicemapper),
        })
    }

    fn metadata_snap(&self, action: control::MetadataSnapAction) -> anyhow::Result<u64> {
        Ok(self.client().metadata_snap(action)?)
    }
}
