//! Persisting the two space maps.
//!
//! ```text
//! metadata sm: superblock blob -> index block (255 entries) -> bitmap blocks
//!                              -> overflow btree (block -> u32 count, counts >= 3)
//! data sm:     superblock blob -> index btree (bitmap number -> 16-byte entry) -> bitmaps
//!                              -> overflow btree
//! ```
//!
//! Counts live in memory ([`RefCounts`]); at commit the bitmaps covering changed counts are
//! shadowed and re-rendered, the overflow tree is brought up to date and the index entries are
//! rewritten. The metadata map accounts for its own blocks, so its commit loops until a pass
//! changes no count (each bitmap and the index block move at most once per transaction).

use std::collections::{BTreeSet, HashMap};

use super::btree::{self, Plain};
use super::disk::{self, BlockKind, IndexEntry, SmRoot, ENTRIES_PER_BITMAP, MAX_METADATA_BITMAPS};
use super::sm::{RefCounts, SpaceMap};
use super::tm::Tm;
use super::{Error, Result};
use crate::units::MetaBlock;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmKind {
    Metadata,
    Data,
}

/// Where a space map lives on disk.
#[derive(Clone, Debug)]
pub struct SmDisk {
    pub kind: SmKind,
    /// One entry per bitmap; `blocknr` 0 means "not placed yet" (a bitmap added by a resize).
    pub entries: Vec<IndexEntry>,
    /// Metadata: the index block. Data: the index btree root.
    pub bitmap_root: MetaBlock,
    pub ref_count_root: MetaBlock,
    /// Bitmaps that must be rewritten even if no count in them changed (new ones).
    pending: BTreeSet<usize>,
    /// Mirror of the overflow tree (block -> count), so commits only touch the tree for
    /// blocks that enter, leave or change in it.
    overflow: HashMap<u64, u32>,
}

fn nr_bitmaps(nr_blocks: u64) -> usize {
    nr_blocks.div_ceil(ENTRIES_PER_BITMAP) as usize
}

impl SmDisk {
    /// A fresh metadata space map for `tm` (whose counts are all zero): reserves the superblock
    /// and lays out index, overflow tree and bitmaps in the kernel's order (blocks 1, 2, 3..).
    pub fn format_metadata(tm: &mut Tm) -> Result<Self> {
        let sb = tm.sm.alloc().ok_or(Error::NoSpace("reserving the superblock"))?;
        if sb != 0 {
            return Err(Error::corrupt(MetaBlock(sb), "superblock must be block 0"));
        }
        let index = tm.new_block(BlockKind::Index)?;
        let overflow = btree::empty(tm, 4)?;
        let n = nr_bitmaps(tm.sm.nr_blocks());
        if n > MAX_METADATA_BITMAPS {
            return Err(Error::corrupt(index, "metadata device needs more than 255 bitmaps"));
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let b = tm.new_block(BlockKind::Bitmap)?;
            entries.push(IndexEntry { blocknr: b, ..IndexEntry::default() });
        }
        Ok(SmDisk {
            kind: SmKind::Metadata,
            entries,
            bitmap_root: index,
            ref_count_root: overflow,
            pending: (0..n).collect(),
            overflow: HashMap::new(),
        })
    }

    /// A fresh, empty data space map (grow it with [`SmDisk::extend`]).
    pub fn format_data(tm: &mut Tm) -> Result<Self> {
        let index = btree::empty(tm, IndexEntry::SIZE)?;
        let overflow = btree::empty(tm, 4)?;
        Ok(SmDisk {
            kind: SmKind::Data,
            entries: Vec::new(),
            bitmap_root: index,
            ref_count_root: overflow,
            pending: BTreeSet::new(),
            overflow: HashMap::new(),
        })
    }

    /// Loads the metadata space map described by `root` into `tm.sm` (sized `root.nr_blocks`).
    pub fn open_metadata(tm: &mut Tm, root: &SmRoot) -> Result<Self> {
        let n = nr_bitmaps(root.nr_blocks);
        if n > MAX_METADATA_BITMAPS {
            return Err(Error::corrupt(MetaBlock(0), "metadata space map has over 255 bitmaps"));
        }
        let data = tm.read(root.bitmap_root, BlockKind::Index)?;
        let entries = disk::index_block_decode(&data, root.bitmap_root, n)
            .map_err(|e| Error::corrupt(root.bitmap_root, e.to_string()))?;
        // `tm.sm` stays sized (all zero) while loading, so reads are range-checked.
        let (sm, counts) = Self::load(tm, SmKind::Metadata, entries, root)?;
        tm.sm = counts;
        Ok(sm)
    }

    /// Loads the data space map described by `root`; `tm` must already have its metadata map.
    pub fn open_data(tm: &mut Tm, root: &SmRoot) -> Result<(Self, RefCounts)> {
        let n = nr_bitmaps(root.nr_blocks);
        let mut entries = vec![IndexEntry::default(); n];
        let mut seen = 0usize;
        btree::walk(tm, root.bitmap_root, IndexEntry::SIZE, &mut |k, v| {
            if k != seen as u64 || k >= n as u64 {
                return Err(Error::corrupt(
                    root.bitmap_root,
                    format!("data space-map index has entry {k}, expected {seen} of {n}"),
                ));
            }
            entries[seen] = IndexEntry::decode(v);
            seen += 1;
            Ok(true)
        })?;
        if seen != n {
            return Err(Error::corrupt(
                root.bitmap_root,
                format!("data space-map index has {seen} entries, expected {n}"),
            ));
        }
        Self::load(tm, SmKind::Data, entries, root)
    }

    /// The map `root` describes, over its decoded index `entries`, with the committed counts
    /// read from its bitmaps and overflow tree.
    fn load(
        tm: &mut Tm,
        kind: SmKind,
        entries: Vec<IndexEntry>,
        root: &SmRoot,
    ) -> Result<(Self, RefCounts)> {
        let mut sm = SmDisk {
            kind,
            entries,
            bitmap_root: root.bitmap_root,
            ref_count_root: root.ref_count_root,
            pending: BTreeSet::new(),
            overflow: HashMap::new(),
        };
        let name = match kind {
            SmKind::Metadata => "metadata",
            SmKind::Data => "data",
        };
        let mut counts = RefCounts::new(name, root.nr_blocks);
        sm.load_counts(tm, &mut counts, root)?;
        counts.mark_all_committed();
        Ok((sm, counts))
    }

    fn load_counts(&mut self, tm: &mut Tm, counts: &mut RefCounts, root: &SmRoot) -> Result<()> {
        let nr_blocks = root.nr_blocks;
        let mut overflowed = BTreeSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            let data = tm.read(e.blocknr, BlockKind::Bitmap)?;
            let base = i as u64 * ENTRIES_PER_BITMAP;
            for j in 0..ENTRIES_PER_BITMAP {
                let v = disk::bitmap_get(&data, j);
                if v == 0 {
                    continue;
                }
                if base + j >= nr_blocks {
                    return Err(Error::corrupt(
                        e.blocknr,
                        format!("bitmap counts block {} beyond the map's end", base + j),
                    ));
                }
                if v == 3 {
                    overflowed.insert(base + j);
                }
                counts.load(base + j, u32::from(v))?;
            }
        }
        let mut bad = None;
        let mut mirror = HashMap::new();
        btree::walk(tm, self.ref_count_root, 4, &mut |k, v| {
            let c = disk::get_u32(v, 0);
            if !overflowed.remove(&k) || c < 3 {
                bad = Some(k);
                return Ok(false);
            }
            counts.load(k, c)?;
            mirror.insert(k, c);
            Ok(true)
        })?;
        self.overflow = mirror;
        if let Some(k) = bad {
            return Err(Error::corrupt(
                self.ref_count_root,
                format!("overflow tree entry for block {k} does not match its bitmap"),
            ));
        }
        if let Some(k) = overflowed.first() {
            return Err(Error::corrupt(
                self.ref_count_root,
                format!("block {k} has bitmap count 3 but no overflow entry"),
            ));
        }
        // Other writers use other conventions for the hints (thin_restore 0.9.0 truncates
        // nr_free and may overstate none_free_before, which would make the kernel skip free
        // blocks). Rewrite such bitmaps' entries at the next commit.
        for (i, e) in self.entries.iter().enumerate() {
            if (e.nr_free, e.none_free_before) != hints(counts.counts(), i) {
                self.pending.insert(i);
            }
        }
        if counts.nr_allocated() != root.nr_allocated {
            tracing::warn!(
                map = ?self.kind,
                stored = root.nr_allocated,
                counted = counts.nr_allocated(),
                "space map nr_allocated disagrees with the bitmaps; using the bitmaps"
            );
        }
        Ok(())
    }

    /// Whether some index entries will be rewritten at the next commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Grows the map to `new_nr_blocks` (new bitmaps are placed at the next commit).
    pub fn extend(&mut self, counts: &mut RefCounts, new_nr_blocks: u64) -> Result<()> {
        let n = nr_bitmaps(new_nr_blocks);
        if self.kind == SmKind::Metadata && n > MAX_METADATA_BITMAPS {
            return Err(Error::corrupt(MetaBlock(0), "metadata device beyond 255 bitmaps"));
        }
        counts.extend(new_nr_blocks);
        while self.entries.len() < n {
            self.pending.insert(self.entries.len());
            self.entries.push(IndexEntry::default());
        }
        Ok(())
    }

    fn update_overflow(&mut self, tm: &mut Tm, block: u64, count: u32) -> Result<()> {
        let mut vt = Plain(4);
        if count >= 3 {
            if self.overflow.get(&block) != Some(&count) {
                let (r, _) = btree::insert_raw(
                    tm,
                    &mut vt,
                    self.ref_count_root,
                    block,
                    &count.to_le_bytes(),
                )?;
                self.ref_count_root = r;
                self.overflow.insert(block, count);
            }
        } else if self.overflow.remove(&block).is_some() {
            self.ref_count_root = btree::remove_raw(tm, &mut vt, self.ref_count_root, block)?.0;
        }
        Ok(())
    }

    /// Makes sure bitmap `i` sits in a block this transaction owns. Returns whether it moved.
    fn place_bitmap(&mut self, tm: &mut Tm, i: usize) -> Result<bool> {
        let cur = self.entries[i].blocknr;
        if cur.0 != 0 && tm.is_shadowed(cur) {
            return Ok(false);
        }
        self.entries[i].blocknr = if cur.0 == 0 {
            tm.new_block(BlockKind::Bitmap)?
        } else {
            tm.shadow(cur, BlockKind::Bitmap)?.0
        };
        Ok(true)
    }

    /// Writes bitmap `i` from `counts` and refreshes its index entry.
    fn render_bitmap(&mut self, tm: &mut Tm, counts: &[u32], i: usize) -> Result<()> {
        let loc = self.entries[i].blocknr;
        let base = i * ENTRIES_PER_BITMAP as usize;
        let end = counts.len().min(base + ENTRIES_PER_BITMAP as usize);
        let b = tm.write(loc)?;
        disk::bitmap_init(b, loc);
        let mut nr_free = ENTRIES_PER_BITMAP as u32;
        let mut first_free = None;
        for (j, &c) in counts[base..end].iter().enumerate() {
            if c == 0 {
                first_free.get_or_insert(j as u32);
            } else {
                nr_free -= 1;
                disk::bitmap_set(b, j as u64, c.min(3) as u8);
            }
        }
        // Kernel convention: entries past the end count as free.
        let none_free_before = first_free.unwrap_or((end - base) as u32);
        self.entries[i].nr_free = nr_free;
        self.entries[i].none_free_before = none_free_before;
        Ok(())
    }

    /// Commits the data space map; `counts` must not change until the commit is written.
    pub fn commit_data(&mut self, tm: &mut Tm, counts: &mut RefCounts) -> Result<SmRoot> {
        let dirty = counts.take_dirty();
        let mut touched = std::mem::take(&mut self.pending);
        for &b in &dirty {
            touched.insert((b / ENTRIES_PER_BITMAP) as usize);
            self.update_overflow(tm, b, counts.count(b)?)?;
        }
        let mut vt = Plain(IndexEntry::SIZE);
        for &i in &touched {
            self.place_bitmap(tm, i)?;
            self.render_bitmap(tm, counts.counts(), i)?;
            let bytes = self.entries[i].to_bytes();
            self.bitmap_root =
                btree::insert_raw(tm, &mut vt, self.bitmap_root, i as u64, &bytes)?.0;
        }
        Ok(self.root(counts))
    }

    /// Commits the metadata space map (in `tm.sm`), solving the self-accounting fixpoint.
    pub fn commit_metadata(&mut self, tm: &mut Tm) -> Result<SmRoot> {
        let mut touched = std::mem::take(&mut self.pending);
        loop {
            let dirty = tm.sm.take_dirty();
            for &b in &dirty {
                touched.insert((b / ENTRIES_PER_BITMAP) as usize);
                let c = tm.sm.count(b)?;
                self.update_overflow(tm, b, c)?;
            }
            let mut moved = false;
            for &i in &touched {
                moved |= self.place_bitmap(tm, i)?;
            }
            if !touched.is_empty() && !tm.is_shadowed(self.bitmap_root) {
                self.bitmap_root = tm.shadow(self.bitmap_root, BlockKind::Index)?.0;
                moved = true;
            }
            if !moved && !tm.sm.is_dirty() {
                break;
            }
        }
        let counts = std::mem::replace(&mut tm.sm, RefCounts::new("metadata", 0));
        let mut r = Ok(());
        for &i in &touched {
            r = self.render_bitmap(tm, counts.counts(), i);
            if r.is_err() {
                break;
            }
        }
        tm.sm = counts;
        r?;
        if !touched.is_empty() {
            let idx = disk::index_block_encode(self.bitmap_root, &self.entries);
            *tm.write(self.bitmap_root)? = *idx;
        }
        Ok(self.root(&tm.sm))
    }

    pub fn root(&self, counts: &RefCounts) -> SmRoot {
        SmRoot {
            nr_blocks: counts.nr_blocks(),
            nr_allocated: counts.nr_allocated(),
            bitmap_root: self.bitmap_root,
            ref_count_root: self.ref_count_root,
        }
    }

    /// Every metadata block this space map itself occupies (for reference-count checks).
    pub fn own_blocks(&self, tm: &mut Tm) -> Result<Vec<MetaBlock>> {
        let mut out: Vec<MetaBlock> = self.entries.iter().map(|e| e.blocknr).collect();
        if self.kind == SmKind::Metadata {
            out.push(self.bitmap_root);
        } else {
            tree_nodes(tm, self.bitmap_root, IndexEntry::SIZE, &mut out)?;
        }
        tree_nodes(tm, self.ref_count_root, 4, &mut out)?;
        Ok(out)
    }
}

/// The kernel-convention hints of bitmap `i`: zero entries over the full 16320 range (entries
/// past the end count as free) and the first free entry.
pub fn hints(counts: &[u32], i: usize) -> (u32, u32) {
    let base = i * ENTRIES_PER_BITMAP as usize;
    let end = counts.len().min(base + ENTRIES_PER_BITMAP as usize);
    let slice = &counts[base.min(end)..end];
    let used = slice.iter().filter(|&&c| c > 0).count() as u32;
    let first_free = slice.iter().position(|&c| c == 0).unwrap_or(slice.len()) as u32;
    (ENTRIES_PER_BITMAP as u32 - used, first_free)
}

fn tree_nodes(tm: &mut Tm, root: MetaBlock, vs: usize, out: &mut Vec<MetaBlock>) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    let mut visit = |_: &mut Tm, b: MetaBlock, _: disk::Node<'_>| {
        out.push(b);
        Ok(())
    };
    btree::check(tm, root, vs, &mut btree::CheckCtx { seen: &mut seen, visit: &mut visit })?;
    Ok(())
}

#[cfg(test)]
mod tests;
