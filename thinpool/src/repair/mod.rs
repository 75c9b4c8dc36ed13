//! Salvaging damaged metadata, as `thin_repair` does: walk every tree from the superblock,
//! skip each node that cannot be trusted (bad checksum or location, impossible header,
//! keys out of order or outside what its parent allows, a cycle), keep every mapping of the
//! nodes that can, and build fresh metadata from them. Space maps are not read at all: the
//! new ones are computed from the salvaged mappings, so a lost or damaged space-map block
//! costs nothing. A held metadata snapshot is dropped.
//!
//! ```text
//! superblock ──► details tree ──► (id → details)          read leaf by leaf
//!            └─► mapping tree ──► (id → bottom root) ──► (block → data block, time)
//!                                              │
//! salvaged Metadata (the XML model) ──► engine restore ──► new metadata device
//! ```
//!
//! When the top level of the mapping tree cannot be reached (a wrong root in the superblock),
//! the allocated blocks are searched for it (see [`find_top_level`]): this salvages what
//! thin_repair 0.9.0 gives up on.
//!
//! A device whose details are lost but whose mappings survive gets details made up so that
//! nothing is lost and nothing is shared unsafely: `snap_time` is the pool's time, so every
//! write to a block it maps copies it first. A device with details but no mapping tree is
//! kept, empty. Mappings past the data device or stamped after the pool's time are dropped.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use crate::io::BlockDevice;
use crate::pdata::disk::{self, BlockKind, BlockTime, DeviceDetails, Node, Superblock};
use crate::units::{MetaBlock, ThinId, VirtBlock};
use crate::xml::{self, Device, Metadata};

/// Deeper than any valid btree.
const MAX_DEPTH: usize = 12;

/// Why nothing could be salvaged.
#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{dev}: the superblock (block 0) is unusable: {why}")]
    Superblock { dev: String, why: String },
    #[error("{dev}: reading metadata block 0")]
    Io {
        dev: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the repaired metadata")]
    Restore(#[from] xml::RestoreError),
}

/// What the salvage found.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Salvage {
    pub devices: usize,
    pub mappings: u64,
    /// Nodes skipped as damaged (each costs the entries below it).
    pub damaged_nodes: u64,
    /// Mappings dropped as impossible (past the data device, time in the future).
    pub dropped_mappings: u64,
    /// Devices whose details were made up (lost from the details tree).
    pub invented_details: usize,
    /// The block of a top-level mapping leaf found by scanning, when the superblock's
    /// mapping root led nowhere usable.
    pub found_top_level: Option<u64>,
}

struct Walker<'a> {
    dev: &'a dyn BlockDevice,
    nr_meta: u64,
    seen: HashSet<u64>,
    stats: Salvage,
}

impl Walker<'_> {
    fn node(&mut self, b: u64) -> Option<Box<disk::Block>> {
        if b == 0 || b >= self.nr_meta || !self.seen.insert(b) {
            return None;
        }
        let mut blk = disk::zeroed();
        self.dev.read_at(&mut blk[..], b * disk::BLOCK_SIZE as u64).ok()?;
        disk::verify(&blk, BlockKind::Node, MetaBlock(b)).ok()?;
        Node::new(&blk).ok()?;
        Some(blk)
    }

    /// Whether `b` holds a node that passes the checks (without marking it seen).
    fn readable(&mut self, b: u64) -> bool {
        let fresh = !self.seen.contains(&b);
        let ok = self.node(b).is_some();
        if fresh {
            self.seen.remove(&b);
        }
        ok
    }

    /// Visits every leaf entry reachable through trustworthy nodes, keys within `lo..hi`.
    fn walk(
        &mut self,
        b: u64,
        vs: usize,
        (lo, hi): (u64, Option<u64>),
        depth: usize,
        f: &mut dyn FnMut(u64, &[u8]),
    ) {
        let Some(blk) = (depth <= MAX_DEPTH).then(|| self.node(b)).flatten() else {
            self.stats.damaged_nodes += 1;
            return;
        };
        let n = Node::new(&blk).expect("checked by node()");
        let keys: Vec<u64> = (0..n.nr_entries()).map(|i| n.key(i)).collect();
        let in_bounds = |k: u64| k >= lo && hi.is_none_or(|h| k < h);
        // An internal node's first key may sit below its first child's keys, never above.
        let ordered = keys.windows(2).all(|w| w[0] < w[1]);
        let bounded = keys.iter().skip(usize::from(!n.is_leaf())).all(|&k| in_bounds(k));
        if !ordered || !bounded || (n.is_leaf() && n.value_size() != vs) {
            self.stats.damaged_nodes += 1;
            return;
        }
        for (i, &k) in keys.iter().enumerate() {
            if n.is_leaf() {
                f(k, n.value(i));
            } else {
                let upper = keys.get(i + 1).copied().or(hi);
                self.walk(n.value_u64(i), vs, (k.max(lo), upper), depth + 1, f);
            }
        }
    }
}

/// Reads everything that can be trusted from the metadata on `dev`.
pub fn salvage(dev: &dyn BlockDevice) -> Result<(Metadata, Salvage), RepairError> {
    let mut raw = disk::zeroed();
    dev.read_at(&mut raw[..], 0)
        .map_err(|source| RepairError::Io { dev: dev.describe(), source })?;
    let sb = Superblock::decode(&raw, MetaBlock(0))
        .map_err(|e| RepairError::Superblock { dev: dev.describe(), why: e.to_string() })?;
    let nr_meta = (dev.size() / disk::BLOCK_SIZE as u64).min(disk::MAX_METADATA_BLOCKS);
    let mut w = Walker { dev, nr_meta, seen: HashSet::new(), stats: Salvage::default() };
    let mut details = BTreeMap::new();
    w.walk(sb.device_details_root.0, DeviceDetails::SIZE, (0, None), 0, &mut |k, v| {
        details.insert(k, DeviceDetails::decode(v));
    });
    let mut roots = BTreeMap::new();
    w.walk(sb.data_mapping_root.0, 8, (0, None), 0, &mut |k, v| {
        roots.insert(k, disk::get_u64(v, 0));
    });
    // Every device with details should reach a sound bottom-level root; when some do not,
    // the top level may be what is lost (a wrong root in the superblock, say).
    let lost = |w: &mut Walker<'_>, roots: &BTreeMap<u64, u64>| {
        !details.keys().all(|k| roots.get(k).is_some_and(|&r| w.readable(r)))
    };
    if !details.is_empty() && lost(&mut w, &roots) {
        let allocated = metadata_allocated(dev, &sb, nr_meta);
        if let Some(found) = allocated.and_then(|a| find_top_level(&mut w, &details, &a)) {
            w.stats.found_top_level = Some(found.0);
            roots = found.1;
        }
    }
    let nr_data = sb.data_sm_root.nr_blocks;
    let mut md = Metadata {
        uuid: String::new(),
        time: sb.time,
        transaction: sb.trans_id,
        flags: 0,
        version: Some(disk::METADATA_VERSION),
        data_block_size: sb.data_block_size,
        nr_data_blocks: nr_data,
        metadata_snap: None,
        devices: Vec::new(),
    };
    let ids: std::collections::BTreeSet<u64> = details
        .keys()
        .chain(roots.keys())
        .copied()
        .filter(|&k| k <= crate::units::MAX_THIN_ID)
        .collect();
    for id in ids {
        // A top-level entry without details counts only if it leads to a readable node:
        // a wrong root read as the top level yields keys that are no device ids and values
        // that are no blocks.
        if !details.contains_key(&id) && roots.get(&id).is_none_or(|&r| !w.readable(r)) {
            continue;
        }
        let d = details.get(&id).copied().unwrap_or_else(|| {
            w.stats.invented_details += 1;
            DeviceDetails {
                mapped_blocks: 0,
                transaction_id: sb.trans_id,
                creation_time: 0,
                snapshotted_time: sb.time,
            }
        });
        let mut dev = Device {
            dev_id: ThinId(id),
            mapped_blocks: 0,
            transaction: d.transaction_id,
            creation_time: d.creation_time.min(sb.time),
            snap_time: d.snapshotted_time.clamp(d.creation_time.min(sb.time), sb.time),
            mappings: Vec::new(),
        };
        if let Some(&root) = roots.get(&id) {
            // Bottom trees may share subtrees (snapshots): each device walks its own.
            w.seen.clear();
            let mut dropped = 0;
            w.walk(root, 8, (0, None), 0, &mut |k, v| {
                let bt = BlockTime::unpack(disk::get_u64(v, 0));
                if bt.block.0 >= nr_data || bt.time > sb.time {
                    dropped += 1;
                } else {
                    dev.push(VirtBlock(k), bt.block, bt.time);
                }
            });
            w.stats.dropped_mappings += dropped;
        }
        dev.mapped_blocks = dev.nr_mappings();
        w.stats.mappings += dev.mapped_blocks;
        md.devices.push(dev);
    }
    w.stats.devices = md.devices.len();
    Ok((md, w.stats))
}

/// Which metadata blocks the metadata space map marks in use, if it can be read whole
/// (checksums and locations verified); None otherwise (then nothing is searched for).
fn metadata_allocated(dev: &dyn BlockDevice, sb: &Superblock, nr_meta: u64) -> Option<Vec<bool>> {
    let read = |b: u64, kind| {
        let mut blk = disk::zeroed();
        dev.read_at(&mut blk[..], b.checked_mul(disk::BLOCK_SIZE as u64)?).ok()?;
        disk::verify(&blk, kind, MetaBlock(b)).ok()?;
        Some(blk)
    };
    let root = &sb.metadata_sm_root;
    let nr = root.nr_blocks.min(nr_meta);
    let index = read(root.bitmap_root.0, BlockKind::Index)?;
    let mut out = vec![false; nr as usize];
    for i in 0..nr.div_ceil(disk::ENTRIES_PER_BITMAP) {
        let e = disk::IndexEntry::decode(&index[16 + 16 * i as usize..32 + 16 * i as usize]);
        let bm = read(e.blocknr.0, BlockKind::Bitmap)?;
        for j in 0..disk::ENTRIES_PER_BITMAP {
            let b = i * disk::ENTRIES_PER_BITMAP + j;
            if b < nr {
                out[b as usize] = disk::bitmap_get(&bm, j) != 0;
            }
        }
    }
    Some(out)
}

/// Counts the mappings of the tree at `root` (None if any node on the way is untrustworthy).
fn count_mappings(w: &mut Walker<'_>, root: u64) -> Option<u64> {
    w.seen.clear();
    let before = w.stats.damaged_nodes;
    let mut n = 0;
    w.walk(root, 8, (0, None), 0, &mut |_, _| n += 1);
    let ok = w.stats.damaged_nodes == before;
    w.stats.damaged_nodes = before;
    ok.then_some(n)
}

/// When the top level of the mapping tree is lost, looks for it: a leaf (so at most 252
/// devices) keyed by exactly the devices the details tree holds, each value the root of a
/// sound tree with exactly the `mapped_blocks` its details record. Copy-on-write leaves
/// stale copies of earlier top levels in free blocks; they are told apart by those counts,
/// and if more than one candidate still fits, none is trusted.
fn find_top_level(
    w: &mut Walker<'_>,
    details: &BTreeMap<u64, DeviceDetails>,
    allocated: &[bool],
) -> Option<(u64, BTreeMap<u64, u64>)> {
    let mut found = None;
    for b in 1..w.nr_meta {
        // Only blocks in use: freed ones hold stale copies of earlier trees.
        if !allocated.get(b as usize).copied().unwrap_or(false) {
            continue;
        }
        let mut blk = disk::zeroed();
        if w.dev.read_at(&mut blk[..], b * disk::BLOCK_SIZE as u64).is_err()
            || disk::verify(&blk, BlockKind::Node, MetaBlock(b)).is_err()
        {
            continue;
        }
        let Ok(n) = Node::new(&blk) else { continue };
        if !n.is_leaf() || n.value_size() != 8 || n.nr_entries() != details.len() {
            continue;
        }
        let entries: Vec<(u64, u64)> =
            (0..n.nr_entries()).map(|i| (n.key(i), n.value_u64(i))).collect();
        if !entries.iter().map(|e| e.0).eq(details.keys().copied()) {
            continue;
        }
        let fits = entries.iter().all(|&(id, root)| {
            allocated.get(root as usize).copied().unwrap_or(false)
                && count_mappings(w, root) == Some(details[&id].mapped_blocks)
        });
        if fits {
            if found.is_some() {
                return None;
            }
            found = Some((b, entries.into_iter().collect()));
        }
    }
    found
}

/// Salvages `input` and writes fresh metadata for it onto `output` (committed, checked
/// clean by construction: the engine builds it).
pub fn repair(
    input: &dyn BlockDevice,
    output: Arc<dyn BlockDevice>,
) -> Result<Salvage, RepairError> {
    let (md, stats) = salvage(input)?;
    xml::restore_metadata(&md, output)?;
    Ok(stats)
}

/// The salvaged metadata as thin_dump XML (`thinpool dump --repair`).
pub fn dump(input: &dyn BlockDevice) -> Result<String, RepairError> {
    Ok(xml::render(&salvage(input)?.0))
}
