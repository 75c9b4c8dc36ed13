//! A structural self-check of committed metadata: recounts every metadata and data reference
//! from the superblock down (with dm-thin's lazy sharing rules) and compares with the space
//! maps, checks every tree's shape, `mapped_blocks`, time stamps and index entries.
//! (The full `thinpool check` with repair hints lives elsewhere; this is the engine's own
//! invariant check used by its tests.)

use std::collections::{BTreeMap, HashMap};

use super::error::{Error, ErrorKind, Result};
use super::meta::Meta;
use super::Pool;
use crate::pdata::btree::{self, CheckCtx};
use crate::pdata::disk::{BlockTime, DeviceDetails, Node};
use crate::pdata::sm::SpaceMap;
use crate::pdata::sm_disk::{hints, SmDisk};
use crate::pdata::tm::Tm;
use crate::units::MetaBlock;

/// What the self-check saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub devices: usize,
    /// Mappings summed over devices (a shared mapping counts once per device).
    pub mappings: u64,
    pub metadata_blocks_used: u64,
    pub data_blocks_used: u64,
}

fn corrupt(block: MetaBlock, what: String) -> Error {
    Error::new(ErrorKind::Corrupt { block }, what)
}

fn pd(e: crate::pdata::Error) -> Error {
    Error::pdata("self-check", e)
}

fn bump(counts: &mut [u32], b: u64, what: &str) -> Result<()> {
    match counts.get_mut(b as usize) {
        Some(c) => {
            *c += 1;
            Ok(())
        }
        None => Err(corrupt(MetaBlock(b), format!("{what} {b} is beyond its space map"))),
    }
}

fn children(meta: &mut [u32], node: &Node<'_>) -> Result<()> {
    if !node.is_leaf() {
        for i in 0..node.nr_entries() {
            bump(meta, node.value_u64(i), "btree child")?;
        }
    }
    Ok(())
}

fn check_index(sm: &SmDisk, counts: &[u32], what: &str) -> Result<()> {
    for (i, e) in sm.entries.iter().enumerate() {
        let (nr_free, nfb) = hints(counts, i);
        if e.nr_free != nr_free || e.none_free_before != nfb {
            return Err(corrupt(
                e.blocknr,
                format!(
                    "{what} index entry {i}: nr_free {} none_free_before {}, expected {nr_free} {nfb}",
                    e.nr_free, e.none_free_before
                ),
            ));
        }
    }
    Ok(())
}

fn tree(
    tm: &mut Tm,
    root: MetaBlock,
    vs: usize,
    visit: &mut dyn FnMut(&mut Tm, MetaBlock, Node<'_>) -> crate::pdata::Result<()>,
) -> Result<()> {
    let mut seen = HashMap::new();
    btree::check(tm, root, vs, &mut CheckCtx { seen: &mut seen, visit }).map_err(pd)?;
    Ok(())
}

fn check_meta(m: &mut Meta) -> Result<CheckReport> {
    if m.changed || m.devices.values().any(|d| d.dirty) || !m.deleted.is_empty() {
        return Err(Error::new(ErrorKind::Invalid, "self-check needs a committed pool"));
    }
    if m.sb.held_root.0 != 0 {
        // The held copy's trees add references this recount does not follow.
        return Err(Error::new(
            ErrorKind::Invalid,
            "self-check does not count a held metadata snapshot (crate::check does)",
        ));
    }
    let nr_meta = m.tm.sm.nr_blocks() as usize;
    let mut meta = vec![0u32; nr_meta];
    let mut data = vec![0u32; m.data.nr_blocks() as usize];
    bump(&mut meta, 0, "superblock")?;
    for b in m.meta_disk.own_blocks(&mut m.tm).map_err(pd)? {
        bump(&mut meta, b.0, "metadata space-map block")?;
    }
    for b in m.data_disk.own_blocks(&mut m.tm).map_err(pd)? {
        bump(&mut meta, b.0, "data space-map block")?;
    }
    bump(&mut meta, m.details_root.0, "details root")?;
    bump(&mut meta, m.top_root.0, "mapping root")?;

    let mut details: BTreeMap<u64, DeviceDetails> = BTreeMap::new();
    tree(&mut m.tm, m.details_root, DeviceDetails::SIZE, &mut |_, _, n| {
        children(&mut meta, &n)
            .map_err(|e| crate::pdata::Error::corrupt(n.blocknr(), e.to_string()))?;
        if n.is_leaf() {
            for i in 0..n.nr_entries() {
                details.insert(n.key(i), DeviceDetails::decode(n.value(i)));
            }
        }
        Ok(())
    })?;
    let mut roots: BTreeMap<u64, MetaBlock> = BTreeMap::new();
    tree(&mut m.tm, m.top_root, 8, &mut |_, _, n| {
        children(&mut meta, &n)
            .map_err(|e| crate::pdata::Error::corrupt(n.blocknr(), e.to_string()))?;
        if n.is_leaf() {
            for i in 0..n.nr_entries() {
                roots.insert(n.key(i), MetaBlock(n.value_u64(i)));
            }
        }
        Ok(())
    })?;
    if !details.keys().eq(roots.keys()) || !details.keys().eq(m.devices.keys()) {
        return Err(corrupt(m.top_root, "details and mapping trees hold different devices".into()));
    }
    let time = m.time;
    let mut seen = HashMap::new();
    let mut mappings = 0;
    for (&id, &root) in &roots {
        let dev = &m.devices[&id];
        if dev.root != root || dev.details != details[&id] {
            return Err(corrupt(root, format!("device {id}: cached state differs from disk")));
        }
        let d = details[&id];
        if d.creation_time > d.snapshotted_time || d.snapshotted_time > time {
            return Err(corrupt(m.details_root, format!("device {id}: times out of order")));
        }
        bump(&mut meta, root.0, "bottom-level root")?;
        let mut bad = None;
        btree::check(
            &mut m.tm,
            root,
            8,
            &mut CheckCtx {
                seen: &mut seen,
                visit: &mut |_, _, n| {
                    if n.is_leaf() {
                        for i in 0..n.nr_entries() {
                            let bt = BlockTime::unpack(n.value_u64(i));
                            if bt.time > time || bump(&mut data, bt.block.0, "data block").is_err()
                            {
                                bad = Some(n.blocknr());
                            }
                        }
                    } else if children(&mut meta, &n).is_err() {
                        bad = Some(n.blocknr());
                    }
                    Ok(())
                },
            },
        )
        .map_err(pd)?;
        if let Some(b) = bad {
            return Err(corrupt(
                b,
                "mapping beyond the data device or stamped in the future".into(),
            ));
        }
        let mut n = 0u64;
        btree::walk(&mut m.tm, root, 8, &mut |_, _| {
            n += 1;
            Ok(true)
        })
        .map_err(pd)?;
        if n != d.mapped_blocks {
            return Err(corrupt(
                root,
                format!("device {id}: mapped_blocks is {} but it maps {n}", d.mapped_blocks),
            ));
        }
        mappings += n;
    }
    for (b, (&want, &have)) in meta.iter().zip(m.tm.sm.counts()).enumerate() {
        if want != have {
            return Err(corrupt(
                MetaBlock(b as u64),
                format!("metadata block {b}: {want} references, space map says {have}"),
            ));
        }
    }
    for (b, (&want, &have)) in data.iter().zip(m.data.counts()).enumerate() {
        if want != have {
            return Err(corrupt(
                MetaBlock(0),
                format!("data block {b}: {want} references, space map says {have}"),
            ));
        }
    }
    let used_meta = meta.iter().filter(|&&c| c > 0).count() as u64;
    let used_data = data.iter().filter(|&&c| c > 0).count() as u64;
    if used_meta != m.tm.sm.nr_allocated() || used_data != m.data.nr_allocated() {
        return Err(corrupt(MetaBlock(0), "nr_allocated differs from the counts".into()));
    }
    check_index(&m.meta_disk, m.tm.sm.counts(), "metadata")?;
    check_index(&m.data_disk, m.data.counts(), "data")?;
    Ok(CheckReport {
        devices: roots.len(),
        mappings,
        metadata_blocks_used: used_meta,
        data_blocks_used: used_data,
    })
}

impl Pool {
    /// Recounts and checks the committed metadata (call after [`Pool::commit`]).
    pub fn self_check(&self) -> Result<CheckReport> {
        check_meta(&mut self.meta())
    }
}
