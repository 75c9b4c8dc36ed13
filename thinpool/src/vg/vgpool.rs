//! A thin pool over a volume group: the group's `tmeta` and `tdata` regions carry the pool,
//! the thin-volume name table lives in the group metadata, and the group supplies the
//! resize and autoextend verbs (LVM's `lvextend` of a thin pool, and dmeventd's policy).
//!
//! Name tables are kept in the group metadata beside the layout: the table of the committed
//! pool transaction and the one being written, so a crash between the group commit and the
//! pool's superblock leaves the committed table in place ([`NameStore`] contract). Each pool
//! commit that changes names rewrites the group metadata slot on every device; a slot holds
//! two tables of about 8000 Docker-named volumes (64-hex-digit names).

use super::autoextend::{self, ExtendEvent, MinFreeSpaceError, Policy};
use super::error::{Result, VgError, VgErrorKind};
use super::events::EventLog;
use super::format::{Extents, RegionKind};
use super::monitor::{Grower, Monitor, RegionUsage};
use super::table::{DmTables, ThinSpec};
use super::{PoolConfig, VolumeGroup};
use crate::io::BlockDevice;
use crate::pdata::disk::{BLOCK_SIZE, MAX_METADATA_BLOCKS};
use crate::pool::{NameStore, NameTable, Pool};
use crate::units::{Bytes, DataBlock, MetaBlock, Sectors};
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

/// [`NameStore`] on the group metadata: every store is one double-buffered group commit.
pub struct VgNameStore {
    vg: Arc<VolumeGroup>,
}

impl NameStore for VgNameStore {
    fn load(&self, trans_id: u64) -> io::Result<Option<NameTable>> {
        Ok(self.vg.metadata().names.into_iter().find(|t| t.trans_id == trans_id))
    }

    fn store(&self, table: &NameTable, keep: u64) -> io::Result<()> {
        self.vg.store_names(table, keep).map_err(io::Error::other)
    }

    fn describe(&self) -> String {
        format!("volume group {} metadata", self.vg.uuid())
    }
}

fn pool_err(what: &str) -> impl FnOnce(crate::pool::Error) -> VgError + '_ {
    move |e| VgError::with_source(VgErrorKind::Pool, what, e)
}

/// A pool and the group under it.
pub struct VgPool {
    vg: Arc<VolumeGroup>,
    pool: Arc<Pool>,
    /// Autoextend's back-off and event log.
    monitor: Monitor,
}

impl VgPool {
    /// Creates the group over `devices` and formats a pool on it; over a group that already
    /// exists with the same setup values, opens it instead (Docker's restart behaviour).
    pub fn create(devices: &[PathBuf], config: PoolConfig, force: bool) -> Result<Self> {
        Self::over(VolumeGroup::create(devices, config, force)?)
    }

    /// Opens the group (device paths or one directory) and the pool on it.
    pub fn open(devices: &[PathBuf]) -> Result<Self> {
        Self::over(VolumeGroup::open(devices)?)
    }

    /// Formats a pool on a new group (or on one whose pool was never formatted), or opens the
    /// pool of an existing one, and finishes a resize a crash interrupted (the group grew, the
    /// pool had not yet).
    pub fn over(vg: VolumeGroup) -> Result<Self> {
        let vg = Arc::new(vg);
        let meta: Arc<dyn BlockDevice> = vg.metadata_region();
        let data: Arc<dyn BlockDevice> = vg.data_region();
        let names = Box::new(VgNameStore { vg: vg.clone() });
        // A group whose pool was never formatted (a crash between the two) has a zero
        // superblock: the group zeroed it at creation and the pool writes it last.
        let mut sb = [0u8; BLOCK_SIZE];
        meta.read_at(&mut sb, 0)
            .map_err(|e| VgError::io("reading the pool superblock in tmeta", e))?;
        let pool = if vg.is_new() || sb.iter().all(|&b| b == 0) {
            let bs = vg.config().block_sectors();
            Pool::format_with_names(meta, data, bs, names)
                .map_err(pool_err("formatting the pool"))?
        } else {
            Pool::open_with_names(meta, data, names).map_err(pool_err("opening the pool"))?
        };
        let p = Self { vg, pool: Arc::new(pool), monitor: Monitor::new(None) };
        p.sync_sizes()?;
        Ok(p)
    }

    /// Appends autoextend events to `log`.
    pub fn with_event_log(mut self, log: EventLog) -> Self {
        self.monitor = Monitor::new(Some(log));
        self
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The pool as a shared handle (for the NBD server's connections).
    pub fn shared_pool(&self) -> Arc<Pool> {
        self.pool.clone()
    }

    pub fn vg(&self) -> &VolumeGroup {
        &self.vg
    }

    fn data_blocks_in_region(&self) -> DataBlock {
        self.pool.data_blocks_in(Bytes::new(self.vg.data_region().size()))
    }

    fn meta_blocks_in_region(&self) -> MetaBlock {
        MetaBlock((self.vg.metadata_region().size() / BLOCK_SIZE as u64).min(MAX_METADATA_BLOCKS))
    }

    /// Grows the pool's space maps to what the regions hold (after a resize, or to finish one
    /// a crash cut short) and commits if anything changed.
    fn sync_sizes(&self) -> Result<()> {
        let mut changed = false;
        let data = self.data_blocks_in_region();
        if data > self.pool.data_usage().total {
            self.pool.grow_data(data).map_err(pool_err("growing the pool's data space"))?;
            changed = true;
        }
        let meta = self.meta_blocks_in_region();
        if meta > self.pool.metadata_usage().total {
            self.pool.grow_metadata(meta).map_err(pool_err("growing the pool's metadata space"))?;
            changed = true;
        }
        if changed {
            self.pool.commit().map_err(pool_err("committing a resize"))?;
        }
        Ok(())
    }

    /// lvextend of the pool's data: the group appends `extents` to `tdata` (one group commit),
    /// then the pool's data space map grows to the new size.
    pub fn resize_data(&self, extents: Extents) -> Result<()> {
        self.vg.grow_data(extents)?;
        self.sync_sizes()
    }

    /// lvextend of the pool's metadata (`--poolmetadatasize +N`).
    pub fn resize_metadata(&self, extents: Extents) -> Result<()> {
        self.vg.grow_metadata(extents)?;
        self.sync_sizes()
    }

    /// The device-mapper tables for this pool and every named volume (volume `v` becomes
    /// `POOL-v`), as [`VolumeGroup::dmsetup_table`] renders them.
    pub fn dmsetup_table(&self, pool_name: &str) -> Result<DmTables> {
        let volumes = self.pool.volumes().map_err(pool_err("listing volumes"))?;
        let thins: Vec<ThinSpec> = volumes
            .into_iter()
            .map(|v| ThinSpec {
                name: format!("{pool_name}-{}", v.name),
                id: v.id,
                size: Sectors(v.size.div_ceil(Bytes::new(Sectors::SIZE))),
            })
            .collect();
        Ok(self.vg.dmsetup_table(pool_name, &thins))
    }

    /// Docker's `dm.min_free_space` gate, to run before creating a thin volume.
    pub fn check_min_free_space(&self) -> std::result::Result<(), MinFreeSpaceError> {
        autoextend::check_min_free_space(
            self.pool.data_usage(),
            self.pool.metadata_usage(),
            self.vg.config().min_free_space,
        )
    }

    /// One autoextend check of both regions (the service's autoextend thread runs one every
    /// 10 s): extends what is at or over the threshold and logs each event. Metadata goes
    /// first, running out of it is the worse failure.
    pub fn autoextend_check_all(&self) -> Result<Vec<ExtendEvent>> {
        self.monitor.check_all(self, Policy::of(&self.vg.config()))
    }

    /// [`autoextend_check_all`](Self::autoextend_check_all), returning the first event.
    pub fn autoextend_check(&self) -> Result<Option<ExtendEvent>> {
        Ok(self.autoextend_check_all()?.into_iter().next())
    }
}

/// lvextend of the pool's LVs: the group's free extents are the room, and metadata may take
/// no more than dm-thin's maximum.
impl Grower for VgPool {
    fn usage(&self, kind: RegionKind) -> Option<RegionUsage> {
        let free = self.vg.free_extents();
        let (used, size, free) = match kind {
            RegionKind::Data => (
                self.pool.data_bytes(self.pool.data_usage().used),
                self.vg.data_region().size(),
                free,
            ),
            RegionKind::Metadata => (
                self.pool.metadata_usage().used.bytes(),
                self.vg.metadata_region().size(),
                free.min(self.vg.metadata_headroom()),
            ),
        };
        Some(RegionUsage { used, size: Bytes::new(size), extent_size: self.vg.extent_size(), free })
    }

    fn grow(&self, kind: RegionKind, n: Extents) -> Result<()> {
        match kind {
            RegionKind::Data => self.resize_data(n),
            RegionKind::Metadata => self.resize_metadata(n),
        }
    }

    fn describe(&self) -> String {
        format!("volume group {}", self.vg.uuid())
    }
}
