//! The pool's metadata state for one transaction, always used under the pool's metadata lock.
//!
//! Device details and bottom-level roots are cached per device (as the kernel caches details)
//! and written into the details tree and the top level of the mapping tree at commit. The
//! cached root of a device holds the reference its top-level slot will hold.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::error::{Error, ErrorKind, Result};
use super::names::NameTable;
use crate::io::BlockDevice;
use crate::pdata::btree::{self, Plain, ValueType};
use crate::pdata::disk::{
    self, BlockTime, DeviceDetails, Superblock, MAX_DATA_BLOCK, METADATA_VERSION, TIME_MASK,
};
use crate::pdata::sm::{RefCounts, SpaceMap};
use crate::pdata::sm_disk::SmDisk;
use crate::pdata::tm::{CommitBlocks, Tm};
use crate::pdata::{self, disk::BLOCK_SIZE};
use crate::units::{DataBlock, MetaBlock, ThinId, VirtBlock};

/// Metadata blocks kept back so an operation never runs out half-way.
pub(crate) const META_RESERVE: u64 = 48;

/// Bottom-level leaves reference data blocks.
pub(crate) struct DataRefs<'a>(pub &'a mut RefCounts);

impl ValueType for DataRefs<'_> {
    fn size(&self) -> usize {
        8
    }
    fn inc(&mut self, _: &mut Tm, v: &[u8]) -> pdata::Result<()> {
        self.0.inc(BlockTime::unpack(disk::get_u64(v, 0)).block.0)
    }
    fn dec(&mut self, _: &mut Tm, v: &[u8]) -> pdata::Result<()> {
        self.0.dec(BlockTime::unpack(disk::get_u64(v, 0)).block.0)
    }
    fn equal(&self, a: &[u8], b: &[u8]) -> bool {
        BlockTime::unpack(disk::get_u64(a, 0)).block == BlockTime::unpack(disk::get_u64(b, 0)).block
    }
}

/// Top-level leaves reference bottom-level roots.
pub(crate) struct SubtreeRefs<'a>(pub &'a mut RefCounts);

impl ValueType for SubtreeRefs<'_> {
    fn size(&self) -> usize {
        8
    }
    fn inc(&mut self, tm: &mut Tm, v: &[u8]) -> pdata::Result<()> {
        tm.inc(MetaBlock(disk::get_u64(v, 0)))
    }
    fn dec(&mut self, tm: &mut Tm, v: &[u8]) -> pdata::Result<()> {
        btree::del(tm, &mut DataRefs(self.0), MetaBlock(disk::get_u64(v, 0)))
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Dev {
    pub root: MetaBlock,
    pub details: DeviceDetails,
    pub dirty: bool,
}

pub(crate) struct Meta {
    pub tm: Tm,
    pub data: RefCounts,
    pub data_disk: SmDisk,
    pub meta_disk: SmDisk,
    pub sb: Superblock,
    pub time: u32,
    pub trans_id: u64,
    pub committed_trans_id: u64,
    pub top_root: MetaBlock,
    pub details_root: MetaBlock,
    pub devices: BTreeMap<u64, Dev>,
    pub deleted: BTreeSet<u64>,
    /// Anything changed since the last commit.
    pub changed: bool,
    pub names: Option<NameTable>,
    pub names_dirty: bool,
    /// Set when a metadata operation or commit failed half-way: the pool refuses writes.
    pub failed: Option<String>,
    pub read_only: bool,
}

/// A commit ready to be written outside the lock.
pub(crate) struct Prepared {
    pub blocks: CommitBlocks,
    pub superblock: Box<disk::Block>,
    pub names: Option<NameTable>,
    pub committed_trans_id: u64,
}

fn pd(doing: &str) -> impl FnOnce(pdata::Error) -> Error + '_ {
    move |e| Error::pdata(doing, e)
}

impl Meta {
    /// Formats a new pool's metadata in the kernel's block order, with the data space map
    /// sized to `nr_data_blocks` (committing is left to the caller).
    pub fn format(
        dev: Arc<dyn BlockDevice>,
        nr_meta_blocks: u64,
        data_block_sectors: u32,
        nr_data_blocks: u64,
    ) -> Result<Self> {
        let doing = "formatting the metadata";
        let mut tm = Tm::new(dev, RefCounts::new("metadata", nr_meta_blocks));
        let meta_disk = SmDisk::format_metadata(&mut tm).map_err(pd(doing))?;
        let mut data_disk = SmDisk::format_data(&mut tm).map_err(pd(doing))?;
        let top_root = btree::empty(&mut tm, 8).map_err(pd(doing))?;
        let details_root = btree::empty(&mut tm, DeviceDetails::SIZE).map_err(pd(doing))?;
        let mut data = RefCounts::new("data", 0);
        data_disk.extend(&mut data, nr_data_blocks).map_err(pd(doing))?;
        let sb = Superblock {
            flags: 0,
            blocknr: MetaBlock(0),
            uuid: [0; 16],
            version: METADATA_VERSION,
            time: 0,
            trans_id: 0,
            held_root: MetaBlock(0),
            data_sm_root: Default::default(),
            metadata_sm_root: Default::default(),
            data_mapping_root: top_root,
            device_details_root: details_root,
            data_block_size: data_block_sectors,
            metadata_nr_blocks: nr_meta_blocks,
            compat_flags: 0,
            compat_ro_flags: 0,
            incompat_flags: 0,
        };
        Ok(Meta {
            tm,
            data,
            data_disk,
            meta_disk,
            sb,
            time: 0,
            trans_id: 0,
            committed_trans_id: 0,
            top_root,
            details_root,
            devices: BTreeMap::new(),
            deleted: BTreeSet::new(),
            changed: true,
            names: None,
            names_dirty: false,
            failed: None,
            read_only: false,
        })
    }

    /// Loads committed metadata: superblock, both space maps, details and top-level roots.
    pub fn open(dev: Arc<dyn BlockDevice>, read_only: bool) -> Result<Self> {
        let mut raw = disk::zeroed();
        dev.read_at(&mut raw[..], 0).map_err(|e| {
            Error::io(format!("reading the superblock (block 0) of {}", dev.describe()), e)
        })?;
        let sb = Superblock::decode(&raw, MetaBlock(0)).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt { block: MetaBlock(0) },
                format!("superblock (block 0) of {}: {e}", dev.describe()),
            )
        })?;
        if sb.incompat_flags != 0 {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("superblock (block 0) has incompat_flags {:#x}", sb.incompat_flags),
            ));
        }
        if !read_only && sb.compat_ro_flags != 0 {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!(
                    "superblock (block 0) has compat_ro_flags {:#x}; open read-only",
                    sb.compat_ro_flags
                ),
            ));
        }
        if !read_only && sb.needs_check() {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                "superblock (block 0) has needs_check set; run a check before writing",
            ));
        }
        let nr_meta = sb.metadata_sm_root.nr_blocks;
        let dev_blocks = dev.size() / BLOCK_SIZE as u64;
        if nr_meta > dev_blocks || nr_meta > disk::MAX_METADATA_BLOCKS || nr_meta == 0 {
            return Err(Error::new(
                ErrorKind::Corrupt { block: MetaBlock(0) },
                format!(
                    "superblock (block 0): metadata space map has {nr_meta} blocks, device {} \
                     has {dev_blocks}",
                    dev.describe()
                ),
            ));
        }
        let doing = "opening the metadata";
        let mut tm = Tm::new(dev, RefCounts::new("metadata", nr_meta));
        let meta_disk = SmDisk::open_metadata(&mut tm, &sb.metadata_sm_root).map_err(pd(doing))?;
        let (data_disk, data) = SmDisk::open_data(&mut tm, &sb.data_sm_root).map_err(pd(doing))?;
        let data_disk_pending = meta_disk.has_pending() || data_disk.has_pending();
        let mut details = BTreeMap::new();
        btree::walk(&mut tm, sb.device_details_root, DeviceDetails::SIZE, &mut |k, v| {
            details.insert(k, DeviceDetails::decode(v));
            Ok(true)
        })
        .map_err(pd("reading the device details tree"))?;
        let mut devices = BTreeMap::new();
        let mut stray = None;
        btree::walk(&mut tm, sb.data_mapping_root, 8, &mut |k, v| {
            match details.remove(&k) {
                Some(d) => {
                    devices.insert(
                        k,
                        Dev { root: MetaBlock(disk::get_u64(v, 0)), details: d, dirty: false },
                    );
                }
                None => stray = Some(k),
            }
            Ok(true)
        })
        .map_err(pd("reading the top level of the mapping tree"))?;
        if let Some(k) = stray.or_else(|| details.keys().next().copied()) {
            return Err(Error::new(
                ErrorKind::Corrupt { block: sb.data_mapping_root },
                format!("device {k} is in only one of the mapping and details trees"),
            ));
        }
        Ok(Meta {
            tm,
            data,
            data_disk,
            meta_disk,
            time: sb.time,
            trans_id: sb.trans_id,
            committed_trans_id: sb.trans_id,
            top_root: sb.data_mapping_root,
            details_root: sb.device_details_root,
            sb,
            devices,
            deleted: BTreeSet::new(),
            changed: data_disk_pending,
            names: None,
            names_dirty: false,
            failed: None,
            read_only,
        })
    }

    /// Refuses changes on a read-only or failed pool, and when metadata space runs low.
    pub fn writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::new(ErrorKind::ReadOnly, "the pool is open read-only"));
        }
        if let Some(why) = &self.failed {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("the pool stopped taking changes after a failure: {why}"),
            ));
        }
        Ok(())
    }

    /// Whether a commit has anything to write.
    pub fn uncommitted(&self) -> bool {
        self.changed || self.names_dirty || self.trans_id != self.committed_trans_id
    }

    pub fn meta_space(&self) -> Result<()> {
        if self.tm.sm.free_now() < META_RESERVE {
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "metadata device is full ({} of {} blocks free)",
                    self.tm.sm.free_now(),
                    self.tm.sm.nr_blocks()
                ),
            ));
        }
        Ok(())
    }

    /// Runs a metadata change; a failure half-way leaves the transaction inconsistent, so the
    /// pool stops taking changes (as the kernel's fail mode) unless the change was refused
    /// before it started.
    pub fn change<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.writable()?;
        self.meta_space()?;
        match f(self) {
            Ok(v) => {
                self.changed = true;
                Ok(v)
            }
            Err(e) => {
                if !matches!(e.kind(), ErrorKind::NotFound | ErrorKind::Exists)
                    && !matches!(e.kind(), ErrorKind::OutOfRange | ErrorKind::Invalid)
                {
                    let why = units::chain(&e);
                    tracing::error!(error = %why, "metadata change failed; pool is now read-only");
                    self.failed = Some(why);
                }
                Err(e)
            }
        }
    }

    pub fn dev(&self, id: ThinId) -> Result<&Dev> {
        self.devices.get(&id.0).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("thin device {id} does not exist"))
        })
    }

    fn dev_mut(&mut self, id: ThinId) -> Result<&mut Dev> {
        self.devices.get_mut(&id.0).ok_or_else(|| {
            Error::new(ErrorKind::NotFound, format!("thin device {id} does not exist"))
        })
    }

    fn check_new(&self, id: ThinId) -> Result<()> {
        if self.devices.contains_key(&id.0) {
            return Err(Error::new(ErrorKind::Exists, format!("thin device {id} already exists")));
        }
        if id.0 > crate::units::MAX_THIN_ID {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("thin device id {id} is above the kernel's limit 2^24-1"),
            ));
        }
        Ok(())
    }

    pub fn create_thin(&mut self, id: ThinId) -> Result<()> {
        self.check_new(id)?;
        let root = btree::empty(&mut self.tm, 8).map_err(pd("creating a thin device"))?;
        let details = DeviceDetails {
            mapped_blocks: 0,
            transaction_id: self.trans_id,
            creation_time: self.time,
            snapshotted_time: self.time,
        };
        self.deleted.remove(&id.0);
        self.devices.insert(id.0, Dev { root, details, dirty: true });
        Ok(())
    }

    /// O(1): the snapshot shares the origin's bottom-level root (+1 on that root only).
    pub fn create_snap(&mut self, id: ThinId, origin: ThinId) -> Result<()> {
        self.check_new(id)?;
        let o = self.dev(origin)?.clone();
        if self.time >= TIME_MASK {
            return Err(Error::new(ErrorKind::OutOfRange, "pool time would exceed 24 bits"));
        }
        self.tm.inc(o.root).map_err(pd("sharing the origin's mapping tree"))?;
        self.time += 1;
        let details = DeviceDetails {
            mapped_blocks: o.details.mapped_blocks,
            transaction_id: self.trans_id,
            creation_time: self.time,
            snapshotted_time: self.time,
        };
        let time = self.time;
        let od = self.dev_mut(origin)?;
        od.details.snapshotted_time = time;
        od.dirty = true;
        self.deleted.remove(&id.0);
        self.devices.insert(id.0, Dev { root: o.root, details, dirty: true });
        Ok(())
    }

    pub fn delete(&mut self, id: ThinId) -> Result<()> {
        let d = self.dev(id)?.clone();
        btree::del(&mut self.tm, &mut DataRefs(&mut self.data), d.root)
            .map_err(pd("deleting a thin device"))?;
        self.devices.remove(&id.0);
        self.deleted.insert(id.0);
        Ok(())
    }

    pub fn lookup(&mut self, id: ThinId, vb: VirtBlock) -> Result<Option<BlockTime>> {
        let root = self.dev(id)?.root;
        let v = btree::lookup_u64(&mut self.tm, root, vb.0).map_err(pd("looking up a mapping"))?;
        Ok(v.map(BlockTime::unpack))
    }

    /// Whether writing through mapping `bt` of device `id` must copy (the kernel's time rule).
    pub fn shared(&self, id: ThinId, bt: &BlockTime) -> Result<bool> {
        Ok(self.dev(id)?.details.snapshotted_time > bt.time)
    }

    /// Maps `vb` to `block` (whose reference the caller hands over) stamped with `time`.
    /// Overwriting a different block drops the old one.
    pub fn insert_owned(
        &mut self,
        id: ThinId,
        vb: VirtBlock,
        block: DataBlock,
        time: u32,
    ) -> Result<()> {
        if block.0 > MAX_DATA_BLOCK || block.0 >= self.data.nr_blocks() {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("data block {block} is beyond the data device"),
            ));
        }
        let root = self.dev(id)?.root;
        let v = BlockTime { block, time: time & TIME_MASK }.pack();
        let (root, old) = btree::insert(
            &mut self.tm,
            &mut DataRefs(&mut self.data),
            root,
            vb.0,
            &v.to_le_bytes(),
        )
        .map_err(pd("inserting a mapping"))?;
        if let Some(o) = &old {
            // Re-mapping the same block: the mapping already holds its reference, so the one
            // handed over is dropped (`insert` drops the old value only for other blocks).
            if BlockTime::unpack(disk::get_u64(o, 0)).block == block {
                self.data.dec(block.0).map_err(pd("re-inserting a mapping"))?;
            }
        }
        let d = self.dev_mut(id)?;
        d.root = root;
        d.dirty = true;
        if old.is_none() {
            d.details.mapped_blocks += 1;
        }
        Ok(())
    }

    /// Removes the mappings in `begin..end`; returns how many there were.
    pub fn remove_range(&mut self, id: ThinId, begin: VirtBlock, end: VirtBlock) -> Result<u64> {
        let root = self.dev(id)?.root;
        let (root, n) =
            btree::remove_range(&mut self.tm, &mut DataRefs(&mut self.data), root, begin.0, end.0)
                .map_err(pd("removing mappings"))?;
        let d = self.dev_mut(id)?;
        d.root = root;
        if n > 0 {
            d.dirty = true;
            d.details.mapped_blocks -= n;
        }
        Ok(n)
    }

    pub fn mappings_in(
        &mut self,
        id: ThinId,
        begin: VirtBlock,
        end: Option<VirtBlock>,
    ) -> Result<Vec<(VirtBlock, BlockTime)>> {
        let root = self.dev(id)?.root;
        let mut out = Vec::new();
        btree::walk_range(&mut self.tm, root, 8, begin.0, end.map(|e| e.0), &mut |k, v| {
            out.push((VirtBlock(k), BlockTime::unpack(disk::get_u64(v, 0))));
            Ok(true)
        })
        .map_err(pd("walking mappings"))?;
        Ok(out)
    }

    pub fn grow_data(&mut self, total: DataBlock) -> Result<()> {
        let new_nr_blocks = total.0;
        if new_nr_blocks < self.data.nr_blocks() {
            return Err(Error::new(ErrorKind::Invalid, "the data device cannot shrink"));
        }
        if new_nr_blocks > MAX_DATA_BLOCK + 1 {
            return Err(Error::new(ErrorKind::OutOfRange, "data blocks beyond 40 bits"));
        }
        self.data_disk.extend(&mut self.data, new_nr_blocks).map_err(pd("growing the data map"))
    }

    pub fn grow_metadata(&mut self, total: MetaBlock) -> Result<()> {
        let new_nr_blocks = total.0;
        if new_nr_blocks < self.tm.sm.nr_blocks() {
            return Err(Error::new(ErrorKind::Invalid, "the metadata device cannot shrink"));
        }
        if new_nr_blocks > disk::MAX_METADATA_BLOCKS {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("metadata beyond {} blocks", disk::MAX_METADATA_BLOCKS),
            ));
        }
        self.meta_disk
            .extend(&mut self.tm.sm, new_nr_blocks)
            .map_err(pd("growing the metadata map"))
    }

    /// Writes the cached device state into the trees and commits both space maps; returns
    /// the blocks and superblock to write. On error the pool must be failed by the caller.
    pub fn prepare_commit(&mut self) -> Result<Prepared> {
        let doing = "preparing a commit";
        if self.names_dirty && self.trans_id == self.committed_trans_id {
            // Names and mappings change together: a new name table needs a new trans_id.
            self.trans_id += 1;
        }
        let names = match &mut self.names {
            Some(t) if self.trans_id != self.committed_trans_id || self.names_dirty => {
                t.trans_id = self.trans_id;
                Some(t.clone())
            }
            _ => None,
        };
        let mut top_vt = SubtreeRefs(&mut self.data);
        let mut det_vt = Plain(DeviceDetails::SIZE);
        for &id in &self.deleted {
            if self.devices.contains_key(&id) {
                continue;
            }
            self.top_root = btree::remove_raw(&mut self.tm, &mut top_vt, self.top_root, id)
                .map_err(pd(doing))?
                .0;
            self.details_root = btree::remove_raw(&mut self.tm, &mut det_vt, self.details_root, id)
                .map_err(pd(doing))?
                .0;
        }
        self.deleted.clear();
        for (&id, d) in self.devices.iter_mut().filter(|(_, d)| d.dirty) {
            let root = d.root.0.to_le_bytes();
            self.top_root = btree::insert_raw(&mut self.tm, &mut top_vt, self.top_root, id, &root)
                .map_err(pd(doing))?
                .0;
            let det = d.details.to_bytes();
            self.details_root =
                btree::insert_raw(&mut self.tm, &mut det_vt, self.details_root, id, &det)
                    .map_err(pd(doing))?
                    .0;
            d.dirty = false;
        }
        let data_root =
            self.data_disk.commit_data(&mut self.tm, &mut self.data).map_err(pd(doing))?;
        let meta_root = self.meta_disk.commit_metadata(&mut self.tm).map_err(pd(doing))?;
        self.sb.time = self.time;
        self.sb.trans_id = self.trans_id;
        self.sb.data_sm_root = data_root;
        self.sb.metadata_sm_root = meta_root;
        // The kernel leaves this stale after a resize; the tools ignore it. Keep it truthful.
        self.sb.metadata_nr_blocks = meta_root.nr_blocks;
        self.sb.data_mapping_root = self.top_root;
        self.sb.device_details_root = self.details_root;
        self.sb.version = METADATA_VERSION;
        let superblock = self.sb.encode();
        let blocks = self.tm.prepare_commit();
        self.data.begin_commit();
        let prev = self.committed_trans_id;
        self.committed_trans_id = self.trans_id;
        self.names_dirty = false;
        self.changed = false;
        Ok(Prepared { blocks, superblock, names, committed_trans_id: prev })
    }

    pub fn finish_commit(&mut self, ok: bool) {
        self.tm.finish_commit(ok);
        if ok {
            self.data.end_commit();
        } else {
            self.data.abort_commit();
        }
    }
}
