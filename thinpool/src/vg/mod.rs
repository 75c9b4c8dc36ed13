//! The volume group under the pool: one or more devices (or files) cut into extents, with two
//! logical volumes, `tmeta` and `tdata`, handed to the pool as [`Region`]s. This is the layout
//! Docker's direct-lvm guide builds with LVM (data 95 %, metadata 1 %, the rest kept free for
//! autoextend), done in-process so the appliance needs neither LVM nor device-mapper.
//!
//! ```text
//! device 0: [label|slot0|slot1][tmeta][tdata ..................................][free]
//! device 1: [label|slot0|slot1][tdata (grown) ........][free ........................]
//!            └ 4 MiB metadata ┘└ extents of extent_size (default 4 MiB) ─────────────┘
//! ```
//!
//! The byte layout of labels and metadata slots is drawn in [`format`](mod@format). Group metadata is
//! replicated on every device and double-buffered: a change writes seq+1 into the slot not
//! holding the current copy on each device, flushing each, so a crash at any write leaves every
//! device with at least one valid copy, and the newest valid copy on any device is the group.
//!
//! `tmeta` is allocated before `tdata` so the data region ends next to the free extents and
//! autoextend can usually grow it in place (one longer segment instead of a new one).

pub mod autoextend;
pub mod config;
pub mod error;
pub mod events;
pub mod format;
pub mod monitor;
pub mod region;
pub mod signature;
pub mod table;
pub mod vgpool;

pub use autoextend::{AutoextendDecision, ExtendEvent, Policy};
pub use config::PoolConfig;
pub use error::{Result, VgError, VgErrorKind};
pub use events::EventLog;
pub use format::{Extents, GroupMeta, RegionKind, Segment, Uuid};
pub use region::Region;
pub use signature::Signature;
pub use table::{DmTables, ThinSpec};
pub use vgpool::{VgNameStore, VgPool};

use crate::io::{BlockDevice, FileDevice};
use crate::pdata::disk::MAX_METADATA_BLOCKS;
use crate::pool::NameTable;
use crate::units::Bytes;
use format::{DeviceEntry, Label, Slot, DATA_START, DEFAULT_EXTENT_SIZE, LABEL_SIZE};
use region::Piece;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{info, warn};

/// The largest metadata region dm-thin uses: 255 bitmaps × 16320 blocks × 4 KiB ≈ 15.875 GiB.
pub const MAX_METADATA_BYTES: u64 = MAX_METADATA_BLOCKS * 4096;
/// The smallest metadata region LVM creates for a thin pool.
pub const MIN_METADATA_BYTES: u64 = 2 << 20;

struct Dev {
    device: Arc<dyn BlockDevice>,
    label: Label,
}

struct Inner {
    devs: Vec<Dev>,
    meta: GroupMeta,
    seq: u64,
}

/// An open volume group. All methods take `&self`; changes are serialised inside.
pub struct VolumeGroup {
    inner: Mutex<Inner>,
    /// True when this handle laid the group out (rather than opening an existing one).
    fresh: bool,
    tmeta: Arc<Region>,
    tdata: Arc<Region>,
}

/// One device in [`VgStatus`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeviceStatus {
    pub name: String,
    pub uuid: Uuid,
    pub extents: Extents,
    pub free: Extents,
}

/// One region in [`VgStatus`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RegionStatus {
    pub extents: Extents,
    pub bytes: u64,
    pub segments: Vec<Segment>,
}

/// What `vgs`/`lvs` would show.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct VgStatus {
    pub uuid: Uuid,
    pub seq: u64,
    pub extent_size: u64,
    pub total: Extents,
    pub free: Extents,
    pub devices: Vec<DeviceStatus>,
    pub metadata: RegionStatus,
    pub data: RegionStatus,
    pub config: PoolConfig,
}

fn io_err(dev: &dyn BlockDevice, what: &str, offset: u64, e: std::io::Error) -> VgError {
    VgError::io(format!("{what} {} at byte {offset}", dev.describe()), e)
}

fn read_head(dev: &dyn BlockDevice, len: usize) -> Result<Vec<u8>> {
    let n = (dev.size().min(len as u64)) as usize;
    let mut b = vec![0u8; n];
    dev.read_at(&mut b, 0).map_err(|e| io_err(dev, "reading the start of", 0, e))?;
    Ok(b)
}

fn read_label(dev: &dyn BlockDevice) -> Result<Option<Label>> {
    let head = read_head(dev, LABEL_SIZE)?;
    if !Label::has_magic(&head) {
        return Ok(None);
    }
    Label::decode(&head).map(Some).map_err(|e| {
        VgError::new(VgErrorKind::Corrupt, format!("label of {}: {e}", dev.describe()))
    })
}

/// Reads both slots of a device; returns the valid one with the highest seq.
fn read_best_slot(dev: &dyn BlockDevice, label: &Label) -> Result<Option<Slot>> {
    let mut best: Option<Slot> = None;
    for (i, &off) in label.slots.iter().enumerate() {
        let mut header = [0u8; format::SLOT_HEADER_SIZE];
        dev.read_at(&mut header, off)
            .map_err(|e| io_err(dev, "reading metadata slot of", off, e))?;
        let Some(total) = Slot::total_len(&header) else { continue };
        if total as u64 > label.slot_size {
            warn!(device = %dev.describe(), slot = i, "metadata slot length out of range");
            continue;
        }
        let mut b = vec![0u8; total];
        dev.read_at(&mut b, off).map_err(|e| io_err(dev, "reading metadata slot of", off, e))?;
        match Slot::decode(&b) {
            Ok(s) if s.meta.vg_uuid == label.vg_uuid => {
                if best.as_ref().is_none_or(|b| s.seq > b.seq) {
                    best = Some(s);
                }
            }
            Ok(_) => warn!(device = %dev.describe(), slot = i, "metadata slot of another group"),
            Err(e) => warn!(device = %dev.describe(), slot = i, "metadata slot invalid: {e}"),
        }
    }
    Ok(best)
}

/// Writes seq's slot on one device and flushes it.
fn write_slot(dev: &dyn BlockDevice, label: &Label, slot: &Slot) -> Result<()> {
    let bytes = slot.encode(label.slot_size).map_err(|e| {
        VgError::new(VgErrorKind::Limit, format!("group metadata for {}: {e}", dev.describe()))
    })?;
    let off = label.slots[(slot.seq % 2) as usize];
    dev.write_at(&bytes, off).map_err(|e| io_err(dev, "writing metadata slot of", off, e))?;
    dev.flush().map_err(|e| io_err(dev, "flushing", off, e))
}

/// Zeroes the metadata area (wiping older signatures) and writes the label last, so a device
/// is never labelled without a metadata copy behind it.
fn label_device(dev: &dyn BlockDevice, label: &Label, slot: &Slot) -> Result<()> {
    let zeros = vec![0u8; DATA_START as usize];
    dev.write_at(&zeros, 0).map_err(|e| io_err(dev, "wiping the metadata area of", 0, e))?;
    write_slot(dev, label, slot)?;
    dev.write_at(&label.encode(), 0).map_err(|e| io_err(dev, "writing the label of", 0, e))?;
    dev.flush().map_err(|e| io_err(dev, "flushing", 0, e))
}

fn check_signature(dev: &dyn BlockDevice, force: bool) -> Result<Option<Signature>> {
    let head = read_head(dev, signature::PROBE_BYTES)?;
    let sig = signature::detect(&head);
    match sig {
        Some(Signature::Lamina) | None => Ok(sig),
        Some(s) if force => {
            warn!(device = %dev.describe(), signature = %s, "overwriting an existing signature (forced)");
            Ok(None)
        }
        Some(s) => Err(VgError::new(
            VgErrorKind::Signature,
            format!(
                "{} holds {s}; refusing to overwrite it without dm.directlvm_device_force=true",
                dev.describe()
            ),
        )),
    }
}

fn open_files(paths: &[PathBuf]) -> Result<Vec<Arc<dyn BlockDevice>>> {
    paths
        .iter()
        .map(|p| {
            FileDevice::open(p)
                .map(|d| Arc::new(d) as Arc<dyn BlockDevice>)
                .map_err(|e| VgError::io(format!("opening {}", p.display()), e))
        })
        .collect()
}

/// Takes `n` extents for `kind` from the free runs: first right after the region's last
/// segment (so it stays one segment), then from the free runs in device order.
fn allocate(meta: &mut GroupMeta, kind: RegionKind, n: u64) -> Result<()> {
    let free = meta.free_extents().0;
    if free < n {
        return Err(VgError::new(
            VgErrorKind::NoSpace,
            format!("{} needs {n} extents, the group has {free} free", kind.name()),
        ));
    }
    let mut need = n;
    let runs = meta.free_runs();
    if let Some(last) = meta.region(kind).last().copied() {
        if let Some(run) = runs.iter().find(|r| r.device == last.device && r.start.0 == last.end())
        {
            let take = need.min(run.len.0);
            if let Some(l) = meta.region_mut(kind).last_mut() {
                l.len.0 += take;
            }
            need -= take;
        }
    }
    for run in meta.free_runs() {
        if need == 0 {
            break;
        }
        let take = need.min(run.len.0);
        let region = meta.region_mut(kind);
        match region.last_mut() {
            Some(l) if l.device == run.device && l.end() == run.start.0 => l.len.0 += take,
            _ => region.push(Segment { device: run.device, start: run.start, len: Extents(take) }),
        }
        need -= take;
    }
    Ok(())
}

fn max_metadata_extents(extent_size: u64) -> u64 {
    MAX_METADATA_BYTES / extent_size
}

fn pieces(devs: &[Dev], meta: &GroupMeta, kind: RegionKind) -> Vec<Piece> {
    meta.region(kind)
        .iter()
        .map(|s| {
            let d = &devs[s.device as usize];
            Piece {
                start: 0,
                len: s.len.0 * meta.extent_size,
                device: d.device.clone(),
                dev_offset: d.label.data_start + s.start.0 * meta.extent_size,
            }
        })
        .collect()
}

/// Regular files and block devices directly inside `dir`, sorted by name.
fn list_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd =
        std::fs::read_dir(dir).map_err(|e| VgError::io(format!("listing {}", dir.display()), e))?;
    let mut out = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| VgError::io(format!("listing {}", dir.display()), e))?;
        let path = entry.path();
        let Ok(md) = std::fs::metadata(&path) else { continue };
        use std::os::unix::fs::FileTypeExt;
        if md.is_file() || md.file_type().is_block_device() {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

impl VolumeGroup {
    /// Lays a new group over `devices` (files or block devices) and allocates the pool's
    /// regions from `config`. If the devices already hold a lamina group with the same setup
    /// values it is opened instead (Docker's restart behaviour); different values fail with
    /// "changing direct-lvm config is not supported". Devices holding other signatures are
    /// refused unless `force` or `dm.directlvm_device_force`.
    pub fn create(devices: &[PathBuf], config: PoolConfig, force: bool) -> Result<Self> {
        let mut seen = Vec::new();
        for p in devices {
            let c = std::fs::canonicalize(p)
                .map_err(|e| VgError::io(format!("resolving {}", p.display()), e))?;
            if seen.contains(&c) {
                return Err(VgError::new(
                    VgErrorKind::Usage,
                    format!("{} given twice", p.display()),
                ));
            }
            seen.push(c);
        }
        Self::create_with(open_files(devices)?, config, force)
    }

    /// [`create`](Self::create) over already-open devices (tests use memory or faulty ones).
    pub fn create_with(
        devs: Vec<Arc<dyn BlockDevice>>,
        config: PoolConfig,
        force: bool,
    ) -> Result<Self> {
        Self::create_sized(devs, config, force, DEFAULT_EXTENT_SIZE)
    }

    /// [`create_with`](Self::create_with) with a chosen extent size (a multiple of 4 KiB).
    pub fn create_sized(
        devs: Vec<Arc<dyn BlockDevice>>,
        config: PoolConfig,
        force: bool,
        extent_size: u64,
    ) -> Result<Self> {
        config.validate()?;
        if devs.is_empty() {
            return Err(VgError::new(VgErrorKind::Usage, "no devices given"));
        }
        if extent_size < 4096 || !extent_size.is_multiple_of(4096) {
            return Err(VgError::new(
                VgErrorKind::Usage,
                format!("extent size {extent_size} is not a multiple of 4 KiB"),
            ));
        }
        let force = force || config.directlvm_device_force;
        let mut sigs = Vec::new();
        for d in &devs {
            sigs.push(check_signature(d.as_ref(), force)?);
        }
        if sigs.contains(&Some(Signature::Lamina)) {
            return Self::reopen_for_create(devs, config);
        }
        let vg_uuid = Uuid::random().map_err(|e| VgError::io("reading /dev/urandom", e))?;
        let mut labels = Vec::new();
        for (i, d) in devs.iter().enumerate() {
            let uuid = Uuid::random().map_err(|e| VgError::io("reading /dev/urandom", e))?;
            let label = Label::new(vg_uuid, uuid, i as u32, d.size(), extent_size);
            if label.extents().0 == 0 {
                return Err(VgError::new(
                    VgErrorKind::TooSmall,
                    format!(
                        "{} has {} bytes; a group device needs at least {} (metadata area + one extent)",
                        d.describe(),
                        d.size(),
                        DATA_START + extent_size
                    ),
                ));
            }
            labels.push(label);
        }
        let mut meta = GroupMeta {
            vg_uuid,
            extent_size,
            devices: labels
                .iter()
                .map(|l| DeviceEntry { uuid: l.device_uuid, extents: l.extents() })
                .collect(),
            tmeta: Vec::new(),
            tdata: Vec::new(),
            config: config.clone(),
            names: Vec::new(),
        };
        let total = meta.total_extents().0;
        let min_meta = MIN_METADATA_BYTES.div_ceil(extent_size);
        let max_meta = max_metadata_extents(extent_size);
        let meta_ext = (total as u128 * config.thinp_metapercent as u128 / 100) as u64;
        let meta_ext = meta_ext.clamp(min_meta, max_meta.max(min_meta));
        let data_ext = (total as u128 * config.thinp_percent as u128 / 100) as u64;
        if data_ext == 0 || meta_ext + data_ext > total {
            return Err(VgError::new(
                VgErrorKind::TooSmall,
                format!(
                    "{total} extents of {extent_size} bytes cannot hold {meta_ext} metadata and \
                     {data_ext} data extents"
                ),
            ));
        }
        allocate(&mut meta, RegionKind::Metadata, meta_ext)?;
        allocate(&mut meta, RegionKind::Data, data_ext)?;
        meta.validate().map_err(|e| VgError::new(VgErrorKind::Corrupt, e.to_string()))?;
        let slot = Slot { seq: 1, meta };
        for (d, l) in devs.iter().zip(&labels) {
            label_device(d.as_ref(), l, &slot)?;
        }
        let devs: Vec<Dev> =
            devs.into_iter().zip(labels).map(|(device, label)| Dev { device, label }).collect();
        let mut vg = Self::assemble(devs, slot.meta, 1);
        vg.fresh = true;
        // A stale dm-thin superblock in the new metadata region must not be mistaken for a pool.
        vg.tmeta
            .write_at(&[0u8; 4096], 0)
            .and_then(|()| vg.tmeta.flush())
            .map_err(|e| VgError::io("clearing the start of tmeta", e))?;
        info!(uuid = %vg_uuid, total, meta_ext, data_ext, "created volume group");
        Ok(vg)
    }

    fn reopen_for_create(devs: Vec<Arc<dyn BlockDevice>>, config: PoolConfig) -> Result<Self> {
        let given = devs.len();
        let vg = Self::open_with(devs)?;
        let existing = vg.config();
        if !existing.same_setup(&config) {
            warn!(?existing, requested = ?config, "direct-lvm setup values differ from the group's");
            return Err(VgError::new(VgErrorKind::ConfigChanged, ""));
        }
        if vg.lock().devs.len() != given {
            return Err(VgError::new(
                VgErrorKind::Usage,
                "some devices belong to an existing lamina group and some do not; extend the group instead",
            ));
        }
        if existing != config {
            vg.update(|m| {
                m.config = config.clone();
                Ok(())
            })?;
        }
        Ok(vg)
    }

    /// Opens a group from its device paths, or from one directory holding them.
    pub fn open(devices: &[PathBuf]) -> Result<Self> {
        if let [dir] = devices {
            if dir.is_dir() {
                return Self::open_dir(dir);
            }
        }
        Self::open_with(open_files(devices)?)
    }

    /// Opens the group whose devices are the files or block devices inside `dir`; files
    /// without a lamina label are ignored.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let mut devs = Vec::new();
        for p in list_dir(dir)? {
            let d = open_files(std::slice::from_ref(&p))?;
            if read_label(d[0].as_ref()).ok().flatten().is_some() {
                devs.extend(d);
            }
        }
        if devs.is_empty() {
            return Err(VgError::new(
                VgErrorKind::NotAGroup,
                format!("no labelled devices in {}", dir.display()),
            ));
        }
        Self::open_with(devs)
    }

    /// Opens a group over already-open devices.
    pub fn open_with(devs: Vec<Arc<dyn BlockDevice>>) -> Result<Self> {
        let mut labelled = Vec::new();
        for d in devs {
            let label = read_label(d.as_ref())?.ok_or_else(|| {
                VgError::new(
                    VgErrorKind::NotAGroup,
                    format!("{} has no lamina label", d.describe()),
                )
            })?;
            labelled.push(Dev { device: d, label });
        }
        let Some(first) = labelled.first() else {
            return Err(VgError::new(VgErrorKind::Usage, "no devices given"));
        };
        let vg_uuid = first.label.vg_uuid;
        if let Some(other) = labelled.iter().find(|d| d.label.vg_uuid != vg_uuid) {
            return Err(VgError::new(
                VgErrorKind::Usage,
                format!(
                    "{} belongs to group {}, not {vg_uuid}",
                    other.device.describe(),
                    other.label.vg_uuid
                ),
            ));
        }
        let mut best: Option<Slot> = None;
        let mut per_dev = Vec::new();
        for d in &labelled {
            let s = read_best_slot(d.device.as_ref(), &d.label)?;
            per_dev.push(s.as_ref().map(|s| s.seq));
            if let Some(s) = s {
                if best.as_ref().is_none_or(|b| s.seq > b.seq) {
                    best = Some(s);
                }
            }
        }
        let Some(best) = best else {
            return Err(VgError::new(
                VgErrorKind::Corrupt,
                format!("no valid metadata copy for group {vg_uuid}"),
            ));
        };
        let meta = best.meta;
        let mut ordered = Vec::new();
        let mut in_sync = true;
        for entry in &meta.devices {
            let Some(pos) = labelled.iter().position(|d| d.label.device_uuid == entry.uuid) else {
                return Err(VgError::new(
                    VgErrorKind::MissingDevice,
                    format!("device {} of group {vg_uuid} was not given", entry.uuid),
                ));
            };
            if per_dev[pos] != Some(best.seq) {
                in_sync = false;
            }
            per_dev.remove(pos);
            let d = labelled.remove(pos);
            if d.label.extent_size != meta.extent_size || d.label.extents() < entry.extents {
                return Err(VgError::new(
                    VgErrorKind::Corrupt,
                    format!("{}: label disagrees with the group metadata", d.device.describe()),
                ));
            }
            ordered.push(d);
        }
        for extra in &labelled {
            // Labelled by a vgextend that crashed before its commit: free to be added again.
            warn!(device = %extra.device.describe(), "labelled for this group but not part of it; ignored");
        }
        let vg = Self::assemble(ordered, meta, best.seq);
        if !in_sync {
            info!(seq = best.seq, "metadata copies disagree after a crash; rewriting every device");
            vg.update(|_| Ok(()))?;
        }
        Ok(vg)
    }

    fn assemble(devs: Vec<Dev>, meta: GroupMeta, seq: u64) -> Self {
        let tmeta = Arc::new(Region::new("tmeta", pieces(&devs, &meta, RegionKind::Metadata)));
        let tdata = Arc::new(Region::new("tdata", pieces(&devs, &meta, RegionKind::Data)));
        Self { inner: Mutex::new(Inner { devs, meta, seq }), fresh: false, tmeta, tdata }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `change` to a copy of the metadata, commits it as seq+1 on every device, then
    /// makes it current and remaps the regions. On failure nothing changes in memory; the
    /// burned sequence number is skipped so two different bodies never share one.
    fn update(&self, change: impl FnOnce(&mut GroupMeta) -> Result<()>) -> Result<()> {
        let mut inner = self.lock();
        let mut meta = inner.meta.clone();
        change(&mut meta)?;
        meta.validate().map_err(|e| VgError::new(VgErrorKind::Corrupt, e.to_string()))?;
        let slot = Slot { seq: inner.seq + 1, meta };
        inner.seq += 1;
        for d in &inner.devs {
            write_slot(d.device.as_ref(), &d.label, &slot)?;
        }
        inner.meta = slot.meta;
        self.tmeta.remap(pieces(&inner.devs, &inner.meta, RegionKind::Metadata));
        self.tdata.remap(pieces(&inner.devs, &inner.meta, RegionKind::Data));
        Ok(())
    }

    /// True when this call laid out a new group; false when it opened an existing one
    /// (including `create` over a group with the same setup values).
    pub fn is_new(&self) -> bool {
        self.fresh
    }

    /// The pool's metadata device (LVM's `_tmeta`).
    pub fn metadata_region(&self) -> Arc<Region> {
        self.tmeta.clone()
    }

    /// The pool's data device (LVM's `_tdata`).
    pub fn data_region(&self) -> Arc<Region> {
        self.tdata.clone()
    }

    pub fn config(&self) -> PoolConfig {
        self.lock().meta.config.clone()
    }

    pub fn uuid(&self) -> Uuid {
        self.lock().meta.vg_uuid
    }

    pub fn extent_size(&self) -> Bytes {
        Bytes::new(self.lock().meta.extent_size)
    }

    pub fn free_extents(&self) -> Extents {
        self.lock().meta.free_extents()
    }

    /// A copy of the current group metadata.
    pub fn metadata(&self) -> GroupMeta {
        self.lock().meta.clone()
    }

    /// vgextend: labels a new device and adds its extents to the group as free. Signatures
    /// are refused unless `dm.directlvm_device_force` is set in the group's config.
    pub fn extend(&self, device: &Path) -> Result<()> {
        let d = open_files(&[device.to_owned()])?;
        let force = self.config().directlvm_device_force;
        self.extend_with(d.into_iter().next().expect("one path gives one device"), force)
    }

    /// [`extend`](Self::extend) with an open device and an explicit force flag.
    pub fn extend_with(&self, device: Arc<dyn BlockDevice>, force: bool) -> Result<()> {
        let mut inner = self.lock();
        if let Some(Signature::Lamina) = check_signature(device.as_ref(), force)? {
            let label = read_label(device.as_ref())?;
            let ours = label.as_ref().is_some_and(|l| l.vg_uuid == inner.meta.vg_uuid);
            let member = label
                .as_ref()
                .is_some_and(|l| inner.meta.devices.iter().any(|e| e.uuid == l.device_uuid));
            if !ours || member {
                return Err(VgError::new(
                    VgErrorKind::Usage,
                    format!("{} already belongs to a lamina group", device.describe()),
                ));
            }
        }
        let dev_uuid = Uuid::random().map_err(|e| VgError::io("reading /dev/urandom", e))?;
        let index = inner.devs.len() as u32;
        let label =
            Label::new(inner.meta.vg_uuid, dev_uuid, index, device.size(), inner.meta.extent_size);
        if label.extents().0 == 0 {
            return Err(VgError::new(
                VgErrorKind::TooSmall,
                format!(
                    "{} is too small for one extent after the metadata area",
                    device.describe()
                ),
            ));
        }
        let mut meta = inner.meta.clone();
        meta.devices.push(DeviceEntry { uuid: dev_uuid, extents: label.extents() });
        meta.validate().map_err(|e| VgError::new(VgErrorKind::Corrupt, e.to_string()))?;
        let slot = Slot { seq: inner.seq + 1, meta };
        inner.seq += 1;
        // The new device first carries the new layout, then the old devices switch to it: a
        // crash between the two leaves either layout readable, depending on the devices given.
        label_device(device.as_ref(), &label, &slot)?;
        for d in &inner.devs {
            write_slot(d.device.as_ref(), &d.label, &slot)?;
        }
        inner.devs.push(Dev { device, label });
        inner.meta = slot.meta;
        info!(extents = %inner.devs[index as usize].label.extents(), "extended volume group");
        Ok(())
    }

    /// lvextend of `tdata` by `extents`, in one metadata commit.
    pub fn grow_data(&self, extents: Extents) -> Result<()> {
        self.update(|m| allocate(m, RegionKind::Data, extents.0))
    }

    /// lvextend of `tmeta` by `extents`; refuses to pass dm-thin's 15.875 GiB.
    pub fn grow_metadata(&self, extents: Extents) -> Result<()> {
        self.update(|m| {
            let max = max_metadata_extents(m.extent_size);
            let now = m.region_extents(RegionKind::Metadata).0;
            if now + extents.0 > max {
                return Err(VgError::new(
                    VgErrorKind::Limit,
                    format!("tmeta of {now}+{extents} extents would pass dm-thin's {MAX_METADATA_BYTES}-byte maximum"),
                ));
            }
            allocate(m, RegionKind::Metadata, extents.0)
        })
    }

    /// Extents the metadata region may still grow by before reaching dm-thin's maximum.
    pub fn metadata_headroom(&self) -> Extents {
        let m = self.metadata();
        Extents(
            max_metadata_extents(m.extent_size)
                .saturating_sub(m.region_extents(RegionKind::Metadata).0),
        )
    }

    /// Stores the pool's name table for a new transaction, keeping only the table stamped
    /// `keep` (the committed transaction's) beside it; one group commit.
    pub fn store_names(&self, table: &NameTable, keep: u64) -> Result<()> {
        self.update(|m| {
            m.names.retain(|t| t.trans_id == keep && t.trans_id != table.trans_id);
            m.names.push(table.clone());
            Ok(())
        })
    }

    pub fn status(&self) -> VgStatus {
        let inner = self.lock();
        let m = &inner.meta;
        let free_runs = m.free_runs();
        let region = |kind| {
            let ext = m.region_extents(kind);
            RegionStatus {
                extents: ext,
                bytes: ext.0 * m.extent_size,
                segments: m.region(kind).to_vec(),
            }
        };
        VgStatus {
            uuid: m.vg_uuid,
            seq: inner.seq,
            extent_size: m.extent_size,
            total: m.total_extents(),
            free: m.free_extents(),
            devices: inner
                .devs
                .iter()
                .zip(&m.devices)
                .enumerate()
                .map(|(i, (d, e))| DeviceStatus {
                    name: d.device.describe(),
                    uuid: e.uuid,
                    extents: e.extents,
                    free: Extents(
                        free_runs.iter().filter(|r| r.device as usize == i).map(|r| r.len.0).sum(),
                    ),
                })
                .collect(),
            metadata: region(RegionKind::Metadata),
            data: region(RegionKind::Data),
            config: m.config.clone(),
        }
    }

    /// The device-mapper tables that would present this pool through the kernel's dm-thin:
    /// linear `POOL_tmeta`/`POOL_tdata`, the `POOL` thin-pool and one thin table per volume.
    /// Devices are named as they were opened (their paths).
    pub fn dmsetup_table(&self, pool_name: &str, thins: &[ThinSpec]) -> DmTables {
        let inner = self.lock();
        let names: Vec<String> = inner.devs.iter().map(|d| d.device.describe()).collect();
        let starts: Vec<u64> = inner.devs.iter().map(|d| d.label.data_start).collect();
        table::render(pool_name, &inner.meta, &names, &starts, thins)
    }
}

#[cfg(test)]
mod tests;
