//! What a running daemon owns: one pool (a [`FilePool`] directory or a [`VgPool`] on a volume
//! group) shared by every NBD connection and the control socket, with Docker devicemapper's
//! runtime behaviour around it:
//!
//! - volume handles with deferred removal/deletion (`dm.use_deferred_removal`/`_deletion`);
//! - `dm.min_free_space` before every new volume, with Docker's message;
//! - writes that find the data space full wait for room (dm-thin's queue_if_no_space, up to
//!   `no_space_timeout`) or fail at once (`error_if_no_space`);
//! - an autoextend thread with LVM's policy (every 10 s, and at once when an allocation
//!   crosses the threshold or a write finds the pool full);
//! - metadata exhaustion turns the pool read-only with needs_check set, as dm-thin does;
//! - `docker info`'s devicemapper fields ([`ServiceStatus`]) and an `lvs`-like listing.
//!
//! State kept beside the pool (the pool directory, or `state_dir` for a group given as a
//! device list; a group given as a directory keeps it in that directory):
//!
//! ```text
//! DIR/events         autoextend event log (JSON lines, see vg::events)
//! DIR/deferred.json  volumes whose deletion waits for their last handle: ["name", ...]
//!                    (a restart deletes them before serving, as Docker's startup worker)
//! DIR/config.toml    file pools only, optional: the dm.* options (vg::config format)
//! ```
//!
//! File-backed pools autoextend only when [`ServiceOptions::file_data_max`] is set: the data
//! file then grows with LVM's policy (block-sized steps) up to that size. Without it a file
//! pool is like Docker's loop-lvm, whose sparse file never grows by itself; `resize_data`
//! grows it on request.
//!
//! Locking: `vols` (handle counts, deferred set) is taken before `ro` (shared by every pool
//! change, exclusive only to enter read-only mode). Nothing waits for space while holding
//! either.

mod autoextend;
mod deferred;
pub mod error;
mod handle;
mod space;
pub mod status;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use error::{Error, ErrorKind, Result};
pub use handle::VolumeHandle;
pub use status::{human_size, ListRow, ServiceStatus};

/// Superblock flag I/O lives with the format (pdata); re-exported for the service's callers.
pub use crate::pdata::superblock::{needs_check, set_needs_check};

use crate::io::{BlockDevice, FileDevice, Payload};
use crate::pool::{FilePool, Pool, VolumeInfo};
use crate::units::{Bytes, MetaBlock, ThinId};
use crate::vg::autoextend as policy;
use crate::vg::format::RegionKind;
use crate::vg::monitor::Monitor;
use crate::vg::{EventLog, ExtendEvent, PoolConfig, VgPool};
use tracing::{info, warn};

/// How often the autoextend thread checks without being kicked (dmeventd's 10 s timeout).
pub const AUTOEXTEND_INTERVAL: Duration = Duration::from_secs(10);

/// Where the pool is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolSource {
    /// A [`FilePool`] directory (metadata + data files).
    Dir(PathBuf),
    /// A volume group: its device paths, or one directory holding them.
    Group(Vec<PathBuf>),
}

impl PoolSource {
    /// One directory with a `metadata` file is a file pool; anything else is a group.
    pub fn detect(paths: &[PathBuf]) -> PoolSource {
        match paths {
            [p] if p.is_dir() && p.join(FilePool::METADATA).is_file() => PoolSource::Dir(p.clone()),
            _ => PoolSource::Group(paths.to_vec()),
        }
    }

    /// What a POOL argument names: a comma-separated device list, or one path (see
    /// [`PoolSource::detect`]).
    pub fn from_arg(pool: &Path) -> PoolSource {
        let text = pool.to_string_lossy();
        if text.contains(',') {
            return PoolSource::Group(text.split(',').map(PathBuf::from).collect());
        }
        PoolSource::detect(&[pool.to_owned()])
    }

    /// Where the service keeps its state for this source, if it has a natural place.
    pub fn default_state_dir(&self) -> Option<PathBuf> {
        match self {
            PoolSource::Dir(d) => Some(d.clone()),
            PoolSource::Group(p) => match p.as_slice() {
                [d] if d.is_dir() => Some(d.clone()),
                _ => None,
            },
        }
    }
}

/// Choices made by whoever starts the service.
#[derive(Clone, Debug)]
pub struct ServiceOptions {
    /// Where `events` and `deferred.json` live (see the module doc for the default).
    pub state_dir: Option<PathBuf>,
    pub autoextend_interval: Duration,
    /// File pools: grow the data file by autoextend up to this size (None: never).
    pub file_data_max: Option<Bytes>,
    /// File pools: the options (default: DIR/config.toml, else Docker's defaults).
    pub config: Option<PoolConfig>,
    /// `docker info`'s Pool Name (default: `lamina-<dir name>-pool`, or `lamina-thinpool`).
    pub pool_name: Option<String>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        Self {
            state_dir: None,
            autoextend_interval: AUTOEXTEND_INTERVAL,
            file_data_max: None,
            config: None,
            pool_name: None,
        }
    }
}

pub(crate) enum Backend {
    File { dir: PathBuf, pool: Arc<Pool> },
    Group(Arc<VgPool>),
}

impl Backend {
    fn pool(&self) -> &Pool {
        match self {
            Backend::File { pool, .. } => pool,
            Backend::Group(g) => g.pool(),
        }
    }
}

#[derive(Default)]
struct Volumes {
    /// Open handles per volume name.
    open: HashMap<String, (ThinId, u32)>,
    /// Removed while open: hidden, deleted when the last handle drops.
    deferred: BTreeSet<String>,
}

/// Why the pool stopped taking changes.
#[derive(Clone, Debug)]
struct ReadOnly {
    why: String,
    /// Everything written before the switch was committed (so flush can succeed).
    durable: bool,
}

#[derive(Default)]
struct Kick {
    kicked: bool,
    stop: bool,
}

pub(crate) struct Shared {
    backend: Backend,
    config: Mutex<PoolConfig>,
    name: String,
    state_dir: Option<PathBuf>,
    file_data_max: Option<Bytes>,
    /// File pools: autoextend's back-off and event log (a group pool keeps its own).
    file_monitor: Monitor,
    vols: Mutex<Volumes>,
    ro: RwLock<Option<ReadOnly>>,
    /// Bumped (under `space`, with `space_cv` notified) whenever data space may have become
    /// available; read without the lock on the write path.
    space_gen: AtomicU64,
    space: Mutex<()>,
    space_cv: Condvar,
    waiting: AtomicUsize,
    kick: Mutex<Kick>,
    kick_cv: Condvar,
    /// Data size at the last threshold kick: the kick is edge-triggered per size, as the
    /// kernel's low-water-mark event is per table load.
    kicked_at_total: AtomicU64,
    kicked_at_meta: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running pool. Dropping it stops the autoextend thread; handles keep the pool alive.
pub struct Service {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    interval: Duration,
}

impl Service {
    /// Opens the pool at `source` and deletes volumes whose deferred deletion a restart
    /// interrupted. The autoextend thread is not started ([`Service::start_autoextend`]).
    pub fn open(source: &PoolSource, opts: ServiceOptions) -> Result<Service> {
        match source {
            PoolSource::Dir(dir) => {
                let doing = || format!("opening the pool in {}", dir.display());
                match FilePool::open(dir) {
                    Ok(pool) => Self::from_file_pool(dir, pool, opts),
                    // needs_check (or compat_ro flags): serve it read-only, as dm-thin does.
                    Err(e) if e.kind() == crate::pool::ErrorKind::ReadOnly => {
                        warn!(pool = %dir.display(), error = %units::chain(&e), "opening the pool read-only");
                        let pool = open_dir_read_only(dir).map_err(|e| Error::pool(&doing(), e))?;
                        let svc = Self::from_file_pool(dir, pool, opts)?;
                        *svc.shared.ro.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(ReadOnly {
                                why: format!(
                                    "{}; check it (thinpool check, or thin_check \
                                 --clear-needs-check-flag) before writing",
                                    units::chain(&e)
                                ),
                                durable: true,
                            });
                        Ok(svc)
                    }
                    Err(e) => Err(Error::pool(&doing(), e)),
                }
            }
            PoolSource::Group(paths) => {
                let state = opts.state_dir.clone().or_else(|| source.default_state_dir());
                let mut vg =
                    VgPool::open(paths).map_err(|e| Error::vg("opening the volume group", e))?;
                if let Some(d) = &state {
                    vg = vg.with_event_log(EventLog::new(&d.join("events")));
                }
                Self::from_vg_pool(vg, ServiceOptions { state_dir: state, ..opts })
            }
        }
    }

    /// A service over an open file pool in `dir`.
    pub fn from_file_pool(dir: &Path, pool: Pool, opts: ServiceOptions) -> Result<Service> {
        let config = match opts.config.clone() {
            Some(c) => c,
            None => load_dir_config(dir)?,
        };
        let state_dir = opts.state_dir.clone().unwrap_or_else(|| dir.to_owned());
        let base = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let name = opts.pool_name.clone().unwrap_or_else(|| format!("lamina-{base}-pool"));
        let backend = Backend::File { dir: dir.to_owned(), pool: Arc::new(pool) };
        Self::start(backend, config, name, Some(state_dir), opts)
    }

    /// A service over a pool on a volume group. Autoextend events go to the group pool's own
    /// log ([`VgPool::with_event_log`]); `opts.state_dir` holds the deferred list.
    pub fn from_vg_pool(vg: VgPool, opts: ServiceOptions) -> Result<Service> {
        let config = vg.vg().config();
        let name = opts.pool_name.clone().unwrap_or_else(|| "lamina-thinpool".to_owned());
        let state_dir = opts.state_dir.clone();
        Self::start(Backend::Group(Arc::new(vg)), config, name, state_dir, opts)
    }

    fn start(
        backend: Backend,
        config: PoolConfig,
        name: String,
        state_dir: Option<PathBuf>,
        opts: ServiceOptions,
    ) -> Result<Service> {
        let file_log = match &backend {
            Backend::File { .. } => state_dir.as_ref().map(|d| EventLog::new(&d.join("events"))),
            Backend::Group(_) => None,
        };
        let shared = Arc::new(Shared {
            backend,
            config: Mutex::new(config),
            name,
            state_dir,
            file_data_max: opts.file_data_max,
            file_monitor: Monitor::new(file_log),
            vols: Mutex::new(Volumes::default()),
            ro: RwLock::new(None),
            space_gen: AtomicU64::new(0),
            space: Mutex::new(()),
            space_cv: Condvar::new(),
            waiting: AtomicUsize::new(0),
            kick: Mutex::new(Kick::default()),
            kick_cv: Condvar::new(),
            kicked_at_total: AtomicU64::new(0),
            kicked_at_meta: AtomicU64::new(0),
        });
        shared.finish_deferred()?;
        Ok(Service { shared, thread: Mutex::new(None), interval: opts.autoextend_interval })
    }

    /// Starts the autoextend thread (idempotent): a check every
    /// [`ServiceOptions::autoextend_interval`], and at once when kicked.
    pub fn start_autoextend(&self) -> Result<()> {
        let interval = self.interval;
        let mut t = lock(&self.thread);
        if t.is_some() {
            return Ok(());
        }
        let shared = self.shared.clone();
        let h = std::thread::Builder::new()
            .name("autoextend".into())
            .spawn(move || autoextend::run(shared, interval))
            .map_err(|e| Error::io("starting the autoextend thread", e))?;
        *t = Some(h);
        Ok(())
    }

    /// One autoextend check now, on the calling thread; returns what it did.
    pub fn autoextend_now(&self) -> Vec<ExtendEvent> {
        self.shared.autoextend_once()
    }

    pub fn pool(&self) -> &Pool {
        self.shared.backend.pool()
    }

    /// The group pool, for group-backed services.
    pub fn vg_pool(&self) -> Option<&VgPool> {
        match &self.shared.backend {
            Backend::Group(g) => Some(g),
            Backend::File { .. } => None,
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn config(&self) -> PoolConfig {
        lock(&self.shared.config).clone()
    }

    /// Changes the out-of-space behaviour at run time (`lvchange --errorwhenfull`, and the
    /// dm-thin module's `no_space_timeout`; 0 s = wait forever).
    pub fn set_no_space_policy(&self, error_if_no_space: bool, timeout: Duration) {
        let mut c = lock(&self.shared.config);
        c.error_if_no_space = error_if_no_space;
        c.no_space_timeout = timeout.as_secs();
    }

    /// The event log, if the service has one.
    pub fn event_log(&self) -> Option<EventLog> {
        match &self.shared.backend {
            Backend::File { .. } => self.shared.file_monitor.log().map(|e| EventLog::new(e.path())),
            Backend::Group(_) => {
                self.shared.state_dir.as_ref().map(|d| EventLog::new(&d.join("events")))
            }
        }
    }

    /// The metadata device (for copying it out to thin_check).
    pub fn metadata_device(&self) -> Result<Arc<dyn BlockDevice>> {
        self.shared.metadata_device()
    }

    /// Writers currently waiting for data space.
    pub fn waiting_writers(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// Why the pool is read-only, if it is.
    pub fn read_only(&self) -> Option<String> {
        self.shared.ro_state().map(|r| r.why)
    }

    // -- volumes ---------------------------------------------------------------------------

    /// Every volume except those waiting for deferred deletion, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let v = lock(&self.shared.vols);
        let all = self.pool().volumes().map_err(|e| Error::pool("listing volumes", e))?;
        Ok(all.into_iter().filter(|i| !v.deferred.contains(&i.name)).collect())
    }

    pub fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let v = lock(&self.shared.vols);
        self.shared.visible(&v, name)
    }

    /// Creates a volume of `size` bytes and commits (one Docker transaction).
    pub fn create_volume(&self, name: &str, size: Bytes) -> Result<ThinId> {
        self.create_volume_for(name, size, false)
    }

    /// Creates a volume, marked as created for export when `export` (see
    /// [`crate::pool::names::NameEntry::export`]), in one commit: a crash never leaves it half-marked.
    pub fn create_volume_for(&self, name: &str, size: Bytes, export: bool) -> Result<ThinId> {
        let v = lock(&self.shared.vols);
        let _g = self.shared.writable()?;
        deferred::refuse_deferred(&v, name)?;
        self.shared.check_min_free_space()?;
        let doing = format!("creating volume {name:?}");
        let id = self.pool().create_volume(name, size).map_err(|e| Error::pool(&doing, e))?;
        if export {
            self.pool().set_export(name, true).map_err(|e| Error::pool(&doing, e))?;
        }
        self.pool().commit().map_err(|e| Error::pool(&doing, e))?;
        Ok(id)
    }

    /// Marks a volume as created for export, or not, and commits.
    pub fn set_export(&self, name: &str, export: bool) -> Result<()> {
        let v = lock(&self.shared.vols);
        self.shared.visible(&v, name)?;
        let _g = self.shared.writable()?;
        let doing = format!("marking {name:?} for export");
        self.pool().set_export(name, export).map_err(|e| Error::pool(&doing, e))?;
        self.pool().commit().map_err(|e| Error::pool(&doing, e))
    }

    /// Creates a volume that starts with `header` (a LUKS2 header cryptsetup wrote, see
    /// [`crate::luks`]) and commits; a volume the header does not fit in, or a failed write,
    /// leaves no volume behind.
    pub fn create_encrypted_volume(
        &self,
        name: &str,
        size: Bytes,
        header: &crate::luks::Header,
        export: bool,
    ) -> Result<ThinId> {
        if size.get() <= header.len() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "creating encrypted volume {name:?}: {size} bytes leave no room for data \
                     after the {}-byte LUKS2 header",
                    header.len()
                ),
            ));
        }
        let id = self.create_volume_for(name, size, export)?;
        let written = self.open_volume(name).and_then(|h| {
            h.write(0, &Payload::mem(header.bytes()), crate::pool::Mode::Full)?;
            self.commit()
        });
        if let Err(e) = written {
            let _ = self.remove_volume(name);
            return Err(e);
        }
        Ok(id)
    }

    /// Snapshots `origin` as `name` and commits. A volume waiting for deletion cannot be a
    /// parent (Docker's rule for deleted devices).
    pub fn snapshot_volume(&self, origin: &str, name: &str) -> Result<ThinId> {
        let v = lock(&self.shared.vols);
        self.shared.visible(&v, origin)?;
        let _g = self.shared.writable()?;
        deferred::refuse_deferred(&v, name)?;
        self.shared.check_min_free_space()?;
        let doing = format!("snapshotting {origin:?} as {name:?}");
        let id = self.pool().snapshot_volume(origin, name).map_err(|e| Error::pool(&doing, e))?;
        self.pool().commit().map_err(|e| Error::pool(&doing, e))?;
        Ok(id)
    }

    /// Removes a volume. With open handles it is hidden and deleted when the last one drops
    /// (deferred deletion), or refused as busy when deferral is off. Returns true when the
    /// deletion was deferred.
    pub fn remove_volume(&self, name: &str) -> Result<bool> {
        let mut v = lock(&self.shared.vols);
        self.shared.visible(&v, name)?;
        // A read-only pool cannot delete later either: refuse now.
        drop(self.shared.writable()?);
        let open = v.open.get(name).map_or(0, |o| o.1);
        if open > 0 {
            let c = self.config();
            if !(c.use_deferred_removal && c.use_deferred_deletion) {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "removing volume {name:?}: device is busy ({open} open handle(s)); close \
                         it first or enable dm.use_deferred_removal and dm.use_deferred_deletion"
                    ),
                ));
            }
            v.deferred.insert(name.to_owned());
            self.shared.save_deferred(&v)?;
            info!(volume = name, open, "deletion deferred until the last handle closes");
            return Ok(true);
        }
        self.shared.delete_now(name)?;
        Ok(false)
    }

    /// Opens a handle on a volume (the NBD catalog takes one per connection).
    pub fn open_volume(&self, name: &str) -> Result<VolumeHandle> {
        let mut v = lock(&self.shared.vols);
        let info = self.shared.visible(&v, name)?;
        let e = v.open.entry(name.to_owned()).or_insert((info.id, 0));
        e.1 += 1;
        Ok(VolumeHandle::new(self.shared.clone(), name.to_owned(), info.id))
    }

    /// Open handles of a volume.
    pub fn open_count(&self, name: &str) -> u32 {
        lock(&self.shared.vols).open.get(name).map_or(0, |o| o.1)
    }

    /// Volumes waiting for deferred deletion.
    pub fn deferred(&self) -> Vec<String> {
        lock(&self.shared.vols).deferred.iter().cloned().collect()
    }

    // -- space -----------------------------------------------------------------------------

    /// lvextend of the data: a group's data region grows by `by` (rounded up to extents),
    /// a file pool's data file grows by `by` (rounded down to blocks). Waiting writers
    /// are woken.
    pub fn resize_data(&self, by: Bytes) -> Result<()> {
        self.resize(RegionKind::Data, by)
    }

    /// lvextend of the metadata by `by` (rounded up to extents for a group, down to 4 KiB
    /// blocks for a file pool).
    pub fn resize_metadata(&self, by: Bytes) -> Result<()> {
        self.resize(RegionKind::Metadata, by)
    }

    fn resize(&self, region: RegionKind, by: Bytes) -> Result<()> {
        let _g = self.shared.writable()?;
        let what = match region {
            RegionKind::Data => "data",
            RegionKind::Metadata => "metadata",
        };
        match &self.shared.backend {
            Backend::Group(g) => {
                let ext = crate::vg::Extents(by.div_ceil(g.vg().extent_size()));
                match region {
                    RegionKind::Data => g.resize_data(ext),
                    RegionKind::Metadata => g.resize_metadata(ext),
                }
                .map_err(|e| Error::vg(&format!("growing the {what} region"), e))?;
            }
            Backend::File { pool, .. } => {
                match region {
                    RegionKind::Data => {
                        pool.grow_data(pool.data_usage().total + pool.data_blocks_in(by))
                    }
                    RegionKind::Metadata => {
                        pool.grow_metadata(pool.metadata_usage().total + MetaBlock::in_bytes(by))
                    }
                }
                .map_err(|e| Error::pool(&format!("growing the {what} file"), e))?;
                pool.commit()
                    .map_err(|e| Error::pool(&format!("committing the {what} resize"), e))?;
            }
        }
        self.shared.notify_space();
        Ok(())
    }

    /// vgextend: adds a device to the group, then runs an autoextend check so a pool over its
    /// threshold (or full, with writers waiting) grows into it at once.
    pub fn extend_device(&self, device: &Path) -> Result<Vec<ExtendEvent>> {
        let Backend::Group(g) = &self.shared.backend else {
            return Err(Error::new(
                ErrorKind::Invalid,
                "a file-backed pool has no volume group to extend; use resize --data",
            ));
        };
        g.vg()
            .extend(device)
            .map_err(|e| Error::vg(&format!("adding {} to the group", device.display()), e))?;
        info!(device = %device.display(), "device added to the volume group");
        self.shared.notify_space();
        Ok(self.shared.autoextend_once())
    }

    /// Commits everything written so far and syncs the data device.
    pub fn commit(&self) -> Result<()> {
        self.shared.flush()
    }

    /// NBD FLUSH: the same as [`Service::commit`].
    pub fn flush(&self) -> Result<()> {
        self.shared.flush()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        {
            let mut k = lock(&self.shared.kick);
            k.stop = true;
            self.shared.kick_cv.notify_all();
        }
        if let Some(h) = lock(&self.thread).take() {
            let _ = h.join();
        }
    }
}

/// The pool in `dir`, refusing changes (its files are opened read-only too).
fn open_dir_read_only(dir: &Path) -> crate::pool::Result<Pool> {
    let open = |name: &str| {
        let p = dir.join(name);
        FileDevice::open_read_only(&p)
            .map(|d| Arc::new(d) as Arc<dyn BlockDevice>)
            .map_err(|e| crate::pool::Error::io(format!("opening {}", p.display()), e))
    };
    Pool::open_read_only_with_names(
        open(FilePool::METADATA)?,
        open(FilePool::DATA)?,
        Box::new(crate::pool::DirNameStore::new(dir)),
    )
}

fn load_dir_config(dir: &Path) -> Result<PoolConfig> {
    let p = dir.join("config.toml");
    match std::fs::read_to_string(&p) {
        Ok(text) => PoolConfig::from_toml(&text)
            .map_err(|e| Error::vg(&format!("reading {}", p.display()), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PoolConfig::default()),
        Err(e) => Err(Error::io(format!("reading {}", p.display()), e)),
    }
}

impl Shared {
    fn pool(&self) -> &Pool {
        self.backend.pool()
    }

    fn ro_state(&self) -> Option<ReadOnly> {
        self.ro.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A shared guard that keeps the pool out of read-only mode while a change runs; fails
    /// when the pool is read-only already.
    fn writable(&self) -> Result<RwLockReadGuard<'_, Option<ReadOnly>>> {
        let g = self.ro.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = &*g {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("pool {} is read-only: {}", self.name, r.why),
            ));
        }
        Ok(g)
    }

    /// [`Shared::writable`] without waiting: `None` when the pool is read-only or is being
    /// switched to it.
    fn try_writable(&self) -> Option<RwLockReadGuard<'_, Option<ReadOnly>>> {
        let g = match self.ro.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        g.is_none().then_some(g)
    }

    fn visible(&self, v: &Volumes, name: &str) -> Result<VolumeInfo> {
        if v.deferred.contains(name) {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("volume {name:?} was removed (deletion deferred until it is closed)"),
            ));
        }
        self.pool().volume(name).map_err(|e| Error::pool("looking up a volume", e))
    }

    fn check_min_free_space(&self) -> Result<()> {
        let pct = lock(&self.config).min_free_space;
        policy::check_min_free_space(self.pool().data_usage(), self.pool().metadata_usage(), pct)
            .map_err(|e| Error::new(ErrorKind::MinFreeSpace, e.to_string()))
    }

    fn metadata_device(&self) -> Result<Arc<dyn BlockDevice>> {
        match &self.backend {
            Backend::Group(g) => Ok(g.vg().metadata_region()),
            Backend::File { dir, .. } => {
                let p = dir.join(FilePool::METADATA);
                let d = FileDevice::open(&p)
                    .map_err(|e| Error::io(format!("opening {}", p.display()), e))?;
                Ok(Arc::new(d))
            }
        }
    }
}

/// Checks a pool whose superblock has needs_check set (the engine's full metadata check,
/// read-only) and clears the flag if it is clean, like `thin_check --clear-needs-check-flag`.
pub fn check_and_clear(meta: Arc<dyn BlockDevice>, data: Arc<dyn BlockDevice>) -> Result<()> {
    let pool = Pool::open_read_only(meta.clone(), data)
        .map_err(|e| Error::pool("opening the pool read-only to check it", e))?;
    let report = pool.self_check().map_err(|e| Error::pool("checking the metadata", e))?;
    info!(?report, "metadata check clean; clearing needs_check");
    drop(pool);
    set_needs_check(meta.as_ref(), false).map_err(|e| {
        Error::pool("clearing needs_check", crate::pool::Error::pdata("clearing needs_check", e))
    })
}
