//! Space-map checks: every bitmap entry is compared with the references the tree walk found;
//! overflow trees, `nr_allocated` and the index hints are checked on the way.

use std::collections::{HashMap, HashSet};

use super::walk::{Kind, Role};
use super::{Checker, DamageKind, Place, Tree};
use crate::pdata::disk::{
    self, Block, BlockKind, IndexEntry, SmRoot, ENTRIES_PER_BITMAP, MAX_METADATA_BITMAPS,
};
use crate::units::MetaBlock;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sm {
    Data,
    Metadata,
}

impl Sm {
    fn bitmap_tree(self, i: u64) -> Tree {
        match self {
            Sm::Data => Tree::DataBitmap(i),
            Sm::Metadata => Tree::MetadataBitmap(i),
        }
    }

    fn count_kind(self) -> DamageKind {
        match self {
            Sm::Data => DamageKind::DataRefCount,
            Sm::Metadata => DamageKind::MetadataRefCount,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Sm::Data => "data",
            Sm::Metadata => "metadata",
        }
    }
}

fn bitmaps_for(nr_blocks: u64) -> u64 {
    nr_blocks.div_ceil(ENTRIES_PER_BITMAP)
}

/// What a whole space map comparison accumulates.
struct Scan<'e> {
    sm: Sm,
    nr_blocks: u64,
    overflow: HashMap<u64, u32>,
    expected: &'e dyn Fn(u64) -> u32,
    /// Blocks whose bitmap entry is 3.
    threes: HashSet<u64>,
    /// Bitmaps that were read and compared.
    scanned: HashSet<u64>,
    allocated: u64,
}

impl<'e> Scan<'e> {
    fn new(
        sm: Sm,
        nr_blocks: u64,
        overflow: HashMap<u64, u32>,
        expected: &'e dyn Fn(u64) -> u32,
    ) -> Self {
        let (threes, scanned) = (HashSet::new(), HashSet::new());
        Scan { sm, nr_blocks, overflow, expected, threes, scanned, allocated: 0 }
    }
}

impl Checker<'_> {
    /// Walks an overflow tree into a map; None when it could not be walked completely.
    fn walk_overflow(&mut self, root: u64, tree: Tree) -> Option<HashMap<u64, u32>> {
        let out = self.walk_tree(root, Kind::Overflow, tree, false, true)?;
        let complete = out.complete;
        let map = out
            .collected
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| (*k, disk::get_u32(v, 0)))
            .collect();
        complete.then_some(map)
    }

    pub(super) fn check_data_sm(&mut self, root: &SmRoot) {
        let overflow = self.walk_overflow(root.ref_count_root.0, Tree::DataOverflow);
        let index =
            self.walk_tree(root.bitmap_root.0, Kind::DataIndex, Tree::DataIndex, false, true);
        let nb = bitmaps_for(root.nr_blocks);
        let Some(index) = index else { return };
        let entries = index.collected.clone().unwrap_or_default();
        let mut bitmaps = Vec::new();
        for (k, v) in entries.iter() {
            if *k >= nb {
                self.damage(
                    DamageKind::IndexTree,
                    Place::tree(Tree::DataIndex).with_key(*k),
                    format!(
                        "entry for bitmap {k}, but {} data blocks need only {nb}",
                        root.nr_blocks
                    ),
                );
            } else {
                bitmaps.push((*k, IndexEntry::decode(v)));
            }
        }
        if index.complete && (bitmaps.len() as u64) < nb {
            self.damage(
                DamageKind::IndexTree,
                Place::tree(Tree::DataIndex).with_block(root.bitmap_root.0),
                format!(
                    "{} data blocks need {nb} bitmaps but the index tree lists {}",
                    root.nr_blocks,
                    bitmaps.len()
                ),
            );
        }
        let Some(overflow) = overflow else { return };
        let refs = std::mem::take(&mut self.data_refs);
        let expected = |b: u64| refs.get(b);
        let mut scan = Scan::new(Sm::Data, root.nr_blocks, overflow, &expected);
        let complete = index.complete && bitmaps.len() as u64 == nb;
        for (i, e) in bitmaps {
            // Data bitmaps are compared one by one as they are read: there can be many.
            if let Some(block) = self.load_bitmap(Sm::Data, i, e.blocknr.0) {
                self.scan_bitmap(&mut scan, i, &e, &block);
            }
        }
        self.finish_scan(&scan, root, complete);
        drop(scan);
        self.data_refs = refs;
    }

    pub(super) fn check_metadata_sm(&mut self, root: &SmRoot) {
        let overflow = self.walk_overflow(root.ref_count_root.0, Tree::MetadataOverflow);
        let mut nb = bitmaps_for(root.nr_blocks);
        if nb > MAX_METADATA_BITMAPS as u64 {
            nb = MAX_METADATA_BITMAPS as u64; // already reported with the superblock
        }
        let ib = root.bitmap_root.0;
        let place = Place::tree(Tree::MetadataIndex).with_block(ib);
        if !self.reference(ib, &place) || !self.claim(ib, Role::Index, &place) {
            return;
        }
        let Some(index) = self.read_verified(ib, BlockKind::Index, &place) else { return };
        let entries = match disk::index_block_decode(&index, MetaBlock(ib), nb as usize) {
            Ok(e) => e,
            Err(e) => {
                self.damage(DamageKind::Checksum, place, e.to_string());
                return;
            }
        };
        // Read (and count) every bitmap before comparing: they are metadata blocks too.
        let mut loaded = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let i = i as u64;
            if e.blocknr.0 == 0 {
                self.damage(
                    DamageKind::IndexTree,
                    place.clone().with_key(i),
                    format!("no bitmap for metadata blocks from {}", i * ENTRIES_PER_BITMAP),
                );
                continue;
            }
            if let Some(block) = self.load_bitmap(Sm::Metadata, i, e.blocknr.0) {
                loaded.push((i, *e, block));
            }
        }
        let Some(overflow) = overflow else { return };
        let refs = std::mem::take(&mut self.meta_refs);
        let expected = |b: u64| refs.get(b as usize).copied().unwrap_or(0);
        let mut scan = Scan::new(Sm::Metadata, root.nr_blocks, overflow, &expected);
        let complete = loaded.len() as u64 == nb;
        for (i, e, block) in &loaded {
            self.scan_bitmap(&mut scan, *i, e, block);
        }
        self.finish_scan(&scan, root, complete);
        drop(scan);
        self.meta_refs = refs;
    }

    fn load_bitmap(&mut self, sm: Sm, i: u64, b: u64) -> Option<Box<Block>> {
        let place = Place::tree(sm.bitmap_tree(i)).with_block(b);
        if !self.reference(b, &place) || !self.claim(b, Role::Bitmap, &place) {
            return None;
        }
        self.read_verified(b, BlockKind::Bitmap, &place)
    }

    fn scan_bitmap(&mut self, scan: &mut Scan<'_>, i: u64, entry: &IndexEntry, block: &Block) {
        scan.scanned.insert(i);
        let place = Place::tree(scan.sm.bitmap_tree(i)).with_block(entry.blocknr.0);
        let base = i * ENTRIES_PER_BITMAP;
        let (mut free, mut first_free, mut tail) = (0u64, None, 0u64);
        for j in 0..ENTRIES_PER_BITMAP {
            // Only a hostile nr_blocks near 2^64 gets here without room for every entry.
            let Some(b) = base.checked_add(j) else { break };
            let v = disk::bitmap_get(block, j);
            if b >= scan.nr_blocks {
                tail += u64::from(v != 0);
                continue;
            }
            let actual = if v == 3 {
                scan.threes.insert(b);
                match scan.overflow.get(&b) {
                    Some(&c) => c,
                    None => {
                        self.damage(
                            DamageKind::Overflow,
                            place.clone().with_key(b),
                            format!(
                                "{} block {b} has bitmap value 3 but no overflow entry",
                                scan.sm.name()
                            ),
                        );
                        3
                    }
                }
            } else {
                u32::from(v)
            };
            if actual == 0 {
                free += 1;
                first_free.get_or_insert(j);
            } else {
                scan.allocated += 1;
            }
            let want = (scan.expected)(b);
            // With part of the metadata unwalkable, a count above what was found may be a
            // reference from the unwalked part: only a shortfall is certain then.
            if actual != want && !(self.partial && actual > want) {
                self.damage(
                    scan.sm.count_kind(),
                    place.clone().with_key(b),
                    format!(
                        "{} block {b} has reference count {actual} but {want} references were found",
                        scan.sm.name()
                    ),
                );
            }
        }
        if tail > 0 {
            self.damage(
                DamageKind::BitmapTail,
                place.clone(),
                format!(
                    "{tail} entries beyond the {} blocks of the space map are not zero",
                    scan.nr_blocks
                ),
            );
        }
        if free > 0 && entry.nr_free == 0 {
            self.damage(
                DamageKind::IndexHint,
                place.clone(),
                format!("index says no free entries but {free} are free"),
            );
        }
        if let Some(ff) = first_free {
            if u64::from(entry.none_free_before) > ff {
                self.damage(
                    DamageKind::IndexHint,
                    place,
                    format!(
                        "index says none free before entry {} but entry {ff} is free",
                        entry.none_free_before
                    ),
                );
            }
        }
    }

    fn finish_scan(&mut self, scan: &Scan<'_>, root: &SmRoot, complete: bool) {
        let tree = match scan.sm {
            Sm::Data => Tree::DataOverflow,
            Sm::Metadata => Tree::MetadataOverflow,
        };
        let mut keys: Vec<(u64, u32)> = scan.overflow.iter().map(|(k, v)| (*k, *v)).collect();
        keys.sort_unstable();
        for (b, c) in keys {
            let place = Place::tree(tree).with_key(b);
            if c < 3 {
                self.damage(
                    DamageKind::Overflow,
                    place.clone(),
                    format!("overflow entry for block {b} holds count {c}, below 3"),
                );
            }
            if b >= scan.nr_blocks {
                self.damage(
                    DamageKind::Overflow,
                    place,
                    format!("overflow entry for block {b}, beyond the {} blocks", scan.nr_blocks),
                );
            } else if scan.scanned.contains(&(b / ENTRIES_PER_BITMAP)) && !scan.threes.contains(&b)
            {
                self.damage(
                    DamageKind::Overflow,
                    place,
                    format!("overflow entry for block {b} whose bitmap value is not 3"),
                );
            }
        }
        if complete && scan.allocated != root.nr_allocated {
            self.damage(
                DamageKind::NrAllocated,
                Place::default(),
                format!(
                    "{} space map records {} allocated blocks but {} are in use",
                    scan.sm.name(),
                    root.nr_allocated,
                    scan.allocated
                ),
            );
        }
    }
}
