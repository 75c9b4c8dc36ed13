//! Thin volumes on dm-thin-compatible metadata: create, snapshot, delete, map, copy-on-write,
//! discard, commit, resize, names.
//!
//! Locking (the NBD server calls in from many threads; every method takes `&self`):
//!
//! ```text
//! gate     RwLock  shared: reads and writes of volume data
//!                  exclusive: snapshot, delete, discard/unmap (nothing in flight may write
//!                  into a block these change the sharing or ownership of)
//! stripes  Mutex[] one per hash of (volume, virtual block): a block's read-modify-write and
//!                  allocation are not interleaved with another writer of the same block
//! commit   Mutex   one commit at a time
//! meta     Mutex   the metadata (btrees, space maps); held only for metadata work, never
//!                  across data-device I/O or the commit's writes and flushes
//! ```
//!
//! A commit prepares its blocks under `meta`, then flushes the data device, writes the
//! metadata, flushes, writes the superblock and flushes without it; blocks freed before the
//! commit become allocatable only once it is durable.

mod changes;
mod data;
mod direct;
pub mod error;
mod file;
mod meta;
mod metasnap;
pub mod names;
mod verify;
mod write;

#[cfg(test)]
pub(crate) mod tests;

use std::sync::{Arc, Mutex, MutexGuard, RwLock};

pub use error::{Error, ErrorKind, Result};
pub use file::FilePool;
pub use names::{DirNameStore, NameStore, NameTable};
pub use verify::CheckReport;
pub use write::Mode;

use crate::io::BlockDevice;
use crate::pdata::disk::{self, BlockTime, DeviceDetails, BLOCK_SIZE};
use crate::pdata::sm::SpaceMap;
use crate::units::{Bytes, DataBlock, MetaBlock, Sectors, ThinId, TransactionId, VirtBlock};
use meta::Meta;

/// Stripe locks: enough that requests in flight rarely share one (16 random blocks in flight
/// meet a held stripe ~0.4 % of the time with 4096, ~6 % with 256), since a ublk request
/// that finds its stripe taken leaves the queue's ring for a worker.
const STRIPES: usize = 4096;
const _: () = assert!(STRIPES.is_power_of_two(), "stripe() takes the hash's top bits");

/// Block counts of one space map: [`DataBlock`]s for the data device
/// ([`Pool::data_usage`]), [`MetaBlock`]s for the metadata device ([`Pool::metadata_usage`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpaceUsage<B> {
    pub total: B,
    pub used: B,
    pub free: B,
}

/// A named volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    pub id: ThinId,
    /// Virtual size.
    pub size: Bytes,
    pub details: DeviceDetails,
    /// Created for export (see [`names::NameEntry::export`]).
    pub export: bool,
}

impl VolumeInfo {
    /// The data blocks the volume maps (its details' `mapped_blocks`).
    pub fn mapped(&self) -> DataBlock {
        DataBlock(self.details.mapped_blocks)
    }
}

/// A thin pool over a metadata device and a data device.
pub struct Pool {
    meta: Mutex<Meta>,
    meta_dev: Arc<dyn BlockDevice>,
    data_dev: Arc<dyn BlockDevice>,
    names: Option<Box<dyn NameStore>>,
    gate: RwLock<()>,
    stripes: Box<[Mutex<()>]>,
    commit_lock: Mutex<()>,
    block_bytes: u64,
    /// Data blocks handed out so far: lets callers tell, without taking the metadata lock,
    /// whether a write allocated (and so whether space thresholds need looking at).
    data_allocations: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// Whether dm-thin accepts a data block of `bytes` (64 KiB to 1 GiB, multiples of 64 KiB).
    pub fn valid_block_bytes(bytes: u64) -> bool {
        bytes.is_multiple_of(Sectors::SIZE)
            && u32::try_from(bytes / Sectors::SIZE).is_ok_and(disk::valid_data_block_size)
    }

    fn new(
        meta: Meta,
        meta_dev: Arc<dyn BlockDevice>,
        data_dev: Arc<dyn BlockDevice>,
        names: Option<Box<dyn NameStore>>,
    ) -> Self {
        let block_bytes = Sectors(u64::from(meta.sb.data_block_size)).bytes();
        Pool {
            meta: Mutex::new(meta),
            meta_dev,
            data_dev,
            names,
            gate: RwLock::new(()),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            commit_lock: Mutex::new(()),
            block_bytes,
            data_allocations: 0.into(),
        }
    }

    /// Formats a new pool and commits it. The data space map covers the whole data device.
    pub fn format(
        meta: Arc<dyn BlockDevice>,
        data: Arc<dyn BlockDevice>,
        data_block_size: Sectors,
    ) -> Result<Pool> {
        Self::format_inner(meta, data, data_block_size, None)
    }

    /// As [`Pool::format`], with a name table (see [`names`]).
    pub fn format_with_names(
        meta: Arc<dyn BlockDevice>,
        data: Arc<dyn BlockDevice>,
        data_block_size: Sectors,
        names: Box<dyn NameStore>,
    ) -> Result<Pool> {
        Self::format_inner(meta, data, data_block_size, Some(names))
    }

    fn format_inner(
        meta_dev: Arc<dyn BlockDevice>,
        data_dev: Arc<dyn BlockDevice>,
        data_block_size: Sectors,
        names: Option<Box<dyn NameStore>>,
    ) -> Result<Pool> {
        let sectors = u32::try_from(data_block_size.0).unwrap_or(0);
        if !disk::valid_data_block_size(sectors) {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "data block size {} sectors: dm-thin needs 128..=2097152 in multiples of 128",
                    data_block_size.0
                ),
            ));
        }
        let nr_meta = (meta_dev.size() / BLOCK_SIZE as u64).min(disk::MAX_METADATA_BLOCKS);
        if nr_meta < 64 {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("metadata device {} is too small ({nr_meta} blocks)", meta_dev.describe()),
            ));
        }
        let nr_data = data_dev.size() / data_block_size.bytes();
        let mut m = Meta::format(meta_dev.clone(), nr_meta, sectors, nr_data)?;
        if names.is_some() {
            m.names = Some(NameTable::default());
            m.names_dirty = true;
        }
        let pool = Pool::new(m, meta_dev, data_dev, names);
        pool.commit()?;
        Ok(pool)
    }

    /// Opens an existing pool for writing.
    pub fn open(meta: Arc<dyn BlockDevice>, data: Arc<dyn BlockDevice>) -> Result<Pool> {
        Self::open_inner(meta, data, None, false)
    }

    /// Opens an existing pool that refuses every change.
    pub fn open_read_only(meta: Arc<dyn BlockDevice>, data: Arc<dyn BlockDevice>) -> Result<Pool> {
        Self::open_inner(meta, data, None, true)
    }

    /// Opens an existing pool with its name table.
    pub fn open_with_names(
        meta: Arc<dyn BlockDevice>,
        data: Arc<dyn BlockDevice>,
        names: Box<dyn NameStore>,
    ) -> Result<Pool> {
        Self::open_inner(meta, data, Some(names), false)
    }

    /// Opens an existing pool with its name table, refusing every change (a pool with
    /// needs_check set is served this way until it is checked, as dm-thin activates it).
    pub fn open_read_only_with_names(
        meta: Arc<dyn BlockDevice>,
        data: Arc<dyn BlockDevice>,
        names: Box<dyn NameStore>,
    ) -> Result<Pool> {
        Self::open_inner(meta, data, Some(names), true)
    }

    fn open_inner(
        meta_dev: Arc<dyn BlockDevice>,
        data_dev: Arc<dyn BlockDevice>,
        names: Option<Box<dyn NameStore>>,
        read_only: bool,
    ) -> Result<Pool> {
        let mut m = Meta::open(meta_dev.clone(), read_only)?;
        let bs = Sectors(u64::from(m.sb.data_block_size)).bytes();
        let dev_blocks = data_dev.size() / bs;
        if dev_blocks < m.data.nr_blocks() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "data device {} holds {dev_blocks} blocks, the pool maps {}",
                    data_dev.describe(),
                    m.data.nr_blocks()
                ),
            ));
        }
        if let Some(store) = &names {
            let t = store
                .load(m.trans_id)
                .map_err(|e| {
                    Error::io(format!("reading the name table in {}", store.describe()), e)
                })?
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Corrupt { block: crate::units::MetaBlock(0) },
                        format!(
                            "no name table in {} matches the pool's transaction id {}",
                            store.describe(),
                            m.trans_id
                        ),
                    )
                })?;
            // dm-thin knows only ids: a thin deleted by the kernel (`dmsetup message POOL 0
            // "delete ID"`) leaves its name behind, under the same trans_id since the kernel
            // commits without changing it. Such names are dropped with a warning (and the
            // table is rewritten at the next commit), as `lvs` would no longer show the LV.
            let mut t = t;
            let before = t.volumes.len();
            t.volumes.retain(|v| {
                let keep = m.devices.contains_key(&v.id);
                if !keep {
                    tracing::warn!(
                        volume = %v.name,
                        thin_id = v.id,
                        names = %store.describe(),
                        "volume names a thin device that no longer exists (deleted outside \
                         lamina?); dropping the name"
                    );
                }
                keep
            });
            m.names_dirty = !read_only && t.volumes.len() != before;
            m.names = Some(t);
        }
        Ok(Pool::new(m, meta_dev, data_dev, names))
    }

    fn meta(&self) -> MutexGuard<'_, Meta> {
        lock(&self.meta)
    }

    fn stripe(&self, id: ThinId, vb: VirtBlock) -> usize {
        // Fibonacci hashing: cheap, and spreads neighbouring blocks over the stripes.
        const K: u64 = 0x9e37_79b9_7f4a_7c15;
        let h = (id.0.wrapping_mul(K) ^ vb.0).wrapping_mul(K);
        (h >> (64 - STRIPES.trailing_zeros())) as usize
    }

    /// Data block size in sectors.
    /// How many data blocks this pool has handed out since it was opened (never decreases).
    pub fn data_allocations(&self) -> u64 {
        self.data_allocations.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn data_block_size(&self) -> Sectors {
        Sectors(self.block_bytes / Sectors::SIZE)
    }

    /// Data block size in bytes.
    pub fn block_bytes(&self) -> u64 {
        self.block_bytes
    }

    pub fn create_thin(&self, id: ThinId) -> Result<()> {
        self.meta().change(|m| m.create_thin(id))
    }

    /// Snapshots `origin` as `id` in O(1); works for snapshots of snapshots.
    pub fn create_snap(&self, id: ThinId, origin: ThinId) -> Result<()> {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.meta().change(|m| m.create_snap(id, origin))
    }

    /// Deletes a thin device; its unshared blocks are free after the next commit.
    pub fn delete(&self, id: ThinId) -> Result<()> {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut m = self.meta();
        m.change(|m| m.delete(id))?;
        if let Some(t) = m.names.as_mut() {
            if let Some(i) = t.volumes.iter().position(|v| v.id == id.0) {
                t.volumes.remove(i);
                m.names_dirty = true;
            }
        }
        Ok(())
    }

    pub fn lookup(&self, id: ThinId, vb: VirtBlock) -> Result<Option<BlockTime>> {
        self.meta().lookup(id, vb)
    }

    pub fn device_details(&self, id: ThinId) -> Result<DeviceDetails> {
        Ok(self.meta().dev(id)?.details)
    }

    /// Every thin device with its details, by id.
    pub fn devices(&self) -> Vec<(ThinId, DeviceDetails)> {
        self.meta().devices.iter().map(|(&id, d)| (ThinId(id), d.details)).collect()
    }

    pub fn transaction_id(&self) -> TransactionId {
        TransactionId(self.meta().trans_id)
    }

    /// Compare-and-swap of the transaction id (dm-thin's `set_transaction_id` message).
    pub fn set_transaction_id(&self, current: TransactionId, new: TransactionId) -> Result<()> {
        let mut m = self.meta();
        m.writable()?;
        if m.trans_id != current.0 {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("transaction id is {}, not {}", m.trans_id, current.0),
            ));
        }
        m.trans_id = new.0;
        m.changed = true;
        Ok(())
    }

    /// The pool's snapshot counter.
    pub fn time(&self) -> u32 {
        self.meta().time
    }

    /// Sets the pool time (XML restore).
    pub fn set_time(&self, time: u32) -> Result<()> {
        if time > disk::TIME_MASK {
            return Err(Error::new(ErrorKind::OutOfRange, "pool time is limited to 24 bits"));
        }
        let mut m = self.meta();
        m.writable()?;
        m.time = time;
        m.changed = true;
        Ok(())
    }

    /// Raw mapping insert for XML restore: `vb -> block` stamped `time`; takes a reference on
    /// `block` and drops one on a different block it replaces.
    pub fn insert_mapping(
        &self,
        id: ThinId,
        vb: VirtBlock,
        block: DataBlock,
        time: u32,
    ) -> Result<()> {
        if time > disk::TIME_MASK {
            return Err(Error::new(ErrorKind::OutOfRange, "mapping time is limited to 24 bits"));
        }
        self.meta().change(|m| {
            m.dev(id)?;
            if block.0 >= m.data.nr_blocks() {
                return Err(Error::new(
                    ErrorKind::OutOfRange,
                    format!("data block {block} is beyond the data device"),
                ));
            }
            m.data.inc(block.0).map_err(|e| Error::pdata("restoring a mapping", e))?;
            m.insert_owned(id, vb, block, time)
        })
    }

    /// Raw details update for XML restore (written verbatim, as thin_restore does).
    pub fn set_details(&self, id: ThinId, details: DeviceDetails) -> Result<()> {
        let mut m = self.meta();
        m.writable()?;
        let d = m.devices.get_mut(&id.0).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("thin device {id} does not exist"))
        })?;
        d.details = details;
        d.dirty = true;
        m.changed = true;
        Ok(())
    }

    /// Every mapping of a device in virtual-block order.
    pub fn mappings(&self, id: ThinId) -> Result<std::vec::IntoIter<(VirtBlock, BlockTime)>> {
        Ok(self.meta().mappings_in(id, VirtBlock(0), None)?.into_iter())
    }

    /// Commits the transaction (flushing the data device first). A no-op when nothing changed.
    pub fn commit(&self) -> Result<()> {
        self.commit_inner(false)
    }

    /// Commits; with `sync_data`, the data device is flushed even when no metadata changed
    /// (an overwrite of a mapped block changes no mapping, yet FLUSH must make it durable).
    pub(crate) fn commit_inner(&self, sync_data: bool) -> Result<()> {
        let _c = lock(&self.commit_lock);
        let prepared = {
            let mut m = self.meta();
            if !m.uncommitted() {
                drop(m);
                return if sync_data { self.flush_data() } else { Ok(()) };
            }
            m.writable()?;
            match m.prepare_commit() {
                Ok(p) => p,
                Err(e) => {
                    m.failed = Some(units::chain(&e));
                    return Err(e);
                }
            }
        };
        let r = self.write_commit(&prepared);
        let mut m = self.meta();
        m.finish_commit(r.is_ok());
        if let Err(e) = &r {
            let why = units::chain(e);
            tracing::error!(error = %why, "commit failed; pool is now read-only");
            m.failed = Some(why);
        }
        r
    }

    fn flush_data(&self) -> Result<()> {
        self.data_dev
            .flush()
            .map_err(|e| Error::io(format!("flushing data device {}", self.data_dev.describe()), e))
    }

    fn write_commit(&self, p: &meta::Prepared) -> Result<()> {
        self.flush_data()?;
        p.blocks
            .write(self.meta_dev.as_ref())
            .map_err(|e| Error::pdata("writing metadata blocks", e))?;
        if let (Some(t), Some(store)) = (&p.names, &self.names) {
            store.store(t, p.committed_trans_id).map_err(|e| {
                Error::io(format!("writing the name table in {}", store.describe()), e)
            })?;
        }
        let what = || format!("superblock (block 0) of {}", self.meta_dev.describe());
        self.meta_dev
            .write_at(&p.superblock[..], 0)
            .map_err(|e| Error::io(format!("writing the {}", what()), e))?;
        self.meta_dev.flush().map_err(|e| Error::io(format!("flushing after the {}", what()), e))
    }

    /// Grows the data space map to `total` blocks (growing the data device if needed).
    pub fn grow_data(&self, total: DataBlock) -> Result<()> {
        let bytes = total.0.saturating_mul(self.block_bytes);
        if self.data_dev.size() < bytes {
            self.data_dev.grow(bytes).map_err(|e| {
                Error::io(format!("growing data device {}", self.data_dev.describe()), e)
            })?;
        }
        self.meta().change(|m| m.grow_data(total))
    }

    /// Grows the metadata space map to `total` blocks (growing the device if needed).
    pub fn grow_metadata(&self, total: MetaBlock) -> Result<()> {
        let bytes = total.0.saturating_mul(MetaBlock::SIZE);
        if self.meta_dev.size() < bytes {
            self.meta_dev.grow(bytes).map_err(|e| {
                Error::io(format!("growing metadata device {}", self.meta_dev.describe()), e)
            })?;
        }
        let mut m = self.meta();
        m.writable()?;
        m.grow_metadata(total)?;
        m.changed = true;
        Ok(())
    }

    pub fn data_usage(&self) -> SpaceUsage<DataBlock> {
        let m = self.meta();
        let total = m.data.nr_blocks();
        let used = m.data.nr_allocated() + m.data.nr_reserved();
        SpaceUsage { total: DataBlock(total), used: DataBlock(used), free: DataBlock(total - used) }
    }

    pub fn metadata_usage(&self) -> SpaceUsage<MetaBlock> {
        let m = self.meta();
        let total = m.tm.sm.nr_blocks();
        let used = m.tm.sm.nr_allocated();
        SpaceUsage { total: MetaBlock(total), used: MetaBlock(used), free: MetaBlock(total - used) }
    }

    /// The bytes `n` data blocks take.
    pub fn data_bytes(&self, n: DataBlock) -> Bytes {
        Bytes::new(n.0 * self.block_bytes)
    }

    /// Whole data blocks in `b` (rounded down).
    pub fn data_blocks_in(&self, b: Bytes) -> DataBlock {
        DataBlock(b.div_floor(Bytes::new(self.block_bytes)))
    }

    /// Reference count of a metadata block in the current transaction (tools and tests).
    pub fn metadata_ref_count(&self, b: crate::units::MetaBlock) -> Result<u32> {
        self.meta().tm.count(b).map_err(|e| Error::pdata("reading a metadata reference count", e))
    }

    /// Drops clean cached metadata blocks (tests and benchmarks measure cold lookups).
    pub fn drop_caches(&self) {
        self.meta().tm.drop_clean_cache();
    }

    // -- named volumes ---------------------------------------------------------------------

    fn no_names() -> Error {
        Error::new(ErrorKind::Invalid, "this pool has no name table")
    }

    /// Creates an empty thin volume called `name` of `size` bytes.
    pub fn create_volume(&self, name: &str, size: Bytes) -> Result<ThinId> {
        check_name(name)?;
        if size == Bytes::ZERO {
            return Err(Error::new(ErrorKind::Invalid, "a volume needs a size above zero"));
        }
        let mut m = self.meta();
        let t = m.names.as_ref().ok_or_else(Self::no_names)?;
        if t.get(name).is_some() {
            return Err(Error::new(ErrorKind::Exists, format!("volume {name:?} already exists")));
        }
        let id = free_id(&m)?;
        m.change(|m| m.create_thin(id))?;
        push_name(&mut m, name, id, size, false);
        Ok(id)
    }

    /// Snapshots volume `origin` as a new volume `name` of the same size.
    pub fn snapshot_volume(&self, origin: &str, name: &str) -> Result<ThinId> {
        check_name(name)?;
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        let mut m = self.meta();
        let t = m.names.as_ref().ok_or_else(Self::no_names)?;
        let o = t.get(origin).cloned().ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("volume {origin:?} does not exist"))
        })?;
        if t.get(name).is_some() {
            return Err(Error::new(ErrorKind::Exists, format!("volume {name:?} already exists")));
        }
        let id = free_id(&m)?;
        m.change(|m| m.create_snap(id, ThinId(o.id)))?;
        // A snapshot holds its origin's data, so it is offered to exactly the clients the
        // origin is.
        push_name(&mut m, name, id, Bytes::new(o.size), o.export);
        Ok(id)
    }

    /// Deletes volume `name`.
    pub fn remove_volume(&self, name: &str) -> Result<()> {
        let id = self.volume(name)?.id;
        self.delete(id)
    }

    /// Changes a volume's virtual size (shrinking unmaps the blocks past the new end).
    pub fn resize_volume(&self, name: &str, size: Bytes) -> Result<()> {
        let v = self.volume(name)?;
        if size < v.size {
            let first = size.div_ceil(Bytes::new(self.block_bytes));
            let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
            self.meta().change(|m| m.remove_range(v.id, VirtBlock(first), VirtBlock(u64::MAX)))?;
        }
        let mut m = self.meta();
        let t = m.names.as_mut().ok_or_else(Self::no_names)?;
        if let Some(e) = t.volumes.iter_mut().find(|e| e.name == name) {
            e.size = size.get();
        }
        m.names_dirty = true;
        Ok(())
    }

    /// Marks a volume as created for export, or not; takes effect with the next commit.
    pub fn set_export(&self, name: &str, export: bool) -> Result<()> {
        let mut m = self.meta();
        m.writable()?;
        let t = m.names.as_mut().ok_or_else(Self::no_names)?;
        let e = t.volumes.iter_mut().find(|e| e.name == name).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("volume {name:?} does not exist"))
        })?;
        if e.export != export {
            e.export = export;
            m.names_dirty = true;
        }
        Ok(())
    }

    /// Renames volume `from` to `to` (which must not exist); takes effect with the next
    /// commit, like every name change.
    pub fn rename_volume(&self, from: &str, to: &str) -> Result<()> {
        check_name(to)?;
        let mut m = self.meta();
        m.writable()?;
        let t = m.names.as_mut().ok_or_else(Self::no_names)?;
        if t.get(to).is_some() {
            return Err(Error::new(ErrorKind::Exists, format!("volume {to:?} already exists")));
        }
        let e = t.volumes.iter_mut().find(|e| e.name == from).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("volume {from:?} does not exist"))
        })?;
        e.name = to.to_owned();
        m.names_dirty = true;
        Ok(())
    }

    pub fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let m = self.meta();
        let t = m.names.as_ref().ok_or_else(Self::no_names)?;
        let e = t.get(name).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("volume {name:?} does not exist"))
        })?;
        volume_info(&m, e)
    }

    /// Every named volume, by name.
    pub fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let m = self.meta();
        let t = m.names.as_ref().ok_or_else(Self::no_names)?;
        let mut out = t.volumes.iter().map(|e| volume_info(&m, e)).collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

fn check_name(name: &str) -> Result<()> {
    if names::valid_name(name) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Invalid,
            format!("volume name {name:?}: use 1..=128 of [A-Za-z0-9._-], not starting with '-'"),
        ))
    }
}

fn free_id(m: &Meta) -> Result<ThinId> {
    let next = m.devices.keys().next_back().map_or(0, |&k| k + 1);
    if next <= crate::units::MAX_THIN_ID {
        return Ok(ThinId(next));
    }
    (0..=crate::units::MAX_THIN_ID)
        .find(|k| !m.devices.contains_key(k))
        .map(ThinId)
        .ok_or_else(|| Error::new(ErrorKind::NoSpace, "every thin device id is in use"))
}

fn push_name(m: &mut Meta, name: &str, id: ThinId, size: Bytes, export: bool) {
    if let Some(t) = m.names.as_mut() {
        let size = size.get();
        t.volumes.push(names::NameEntry { name: name.to_owned(), id: id.0, size, export });
        m.names_dirty = true;
    }
}

fn volume_info(m: &Meta, e: &names::NameEntry) -> Result<VolumeInfo> {
    let d = m.dev(ThinId(e.id))?;
    Ok(VolumeInfo {
        name: e.name.clone(),
        id: ThinId(e.id),
        size: Bytes::new(e.size),
        details: d.details,
        export: e.export,
    })
}
