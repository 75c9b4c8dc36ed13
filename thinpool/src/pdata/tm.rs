//! The transaction manager: a block cache over the metadata device, copy-on-write shadowing,
//! and the metadata space map's in-memory counts.
//!
//! Committed blocks are never written in place. A block is modified only after it was
//! *shadowed* in this transaction: allocated fresh (zeroed) or copied from its committed
//! version into a new location. The shadow set remembers which blocks this transaction owns;
//! it is cleared when a commit starts. Checksums are filled in when dirty blocks are handed
//! out for writing, so in-memory blocks need not carry valid ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::disk::{self, Block, BlockKind, BLOCK_SIZE};
use super::sm::{RefCounts, SpaceMap};
use super::{Error, Result};
use crate::io::BlockDevice;
use crate::units::MetaBlock;

/// Blocks kept in the cache by default (64 MiB): enough for the upper levels of every tree
/// and the leaves in use, so lookups rarely touch the device.
pub const DEFAULT_CACHE_BLOCKS: usize = 16_384;

struct Cached {
    data: Arc<Block>,
    kind: BlockKind,
    dirty: bool,
}

/// Blocks of one commit, sealed and ready to write (superblock excluded).
pub struct CommitBlocks {
    pub blocks: Vec<(MetaBlock, Arc<Block>)>,
}

impl CommitBlocks {
    /// Writes every block, then flushes: step 5 of the commit.
    pub fn write(&self, dev: &dyn BlockDevice) -> Result<()> {
        for (b, data) in &self.blocks {
            dev.write_at(&data[..], b.0 * BLOCK_SIZE as u64).map_err(|source| Error::Io {
                block: *b,
                op: "write",
                source,
            })?;
        }
        dev.flush().map_err(|source| Error::Io { block: MetaBlock(0), op: "flush", source })
    }
}

pub struct Tm {
    dev: Arc<dyn BlockDevice>,
    cache: HashMap<u64, Cached>,
    shadows: HashSet<u64>,
    /// Metadata space map counts (every metadata block, the superblock included).
    pub sm: RefCounts,
    cache_limit: usize,
    /// A commit is being written from the cache's blocks: nothing may be evicted and re-read.
    pinned: bool,
}

impl Tm {
    pub fn new(dev: Arc<dyn BlockDevice>, sm: RefCounts) -> Self {
        Tm {
            dev,
            cache: HashMap::new(),
            shadows: HashSet::new(),
            sm,
            cache_limit: DEFAULT_CACHE_BLOCKS,
            pinned: false,
        }
    }

    pub fn device(&self) -> &Arc<dyn BlockDevice> {
        &self.dev
    }

    pub fn set_cache_limit(&mut self, blocks: usize) {
        self.cache_limit = blocks.max(64);
    }

    /// Reads and validates a block (checksum and self-reported location) through the cache.
    pub fn read(&mut self, b: MetaBlock, kind: BlockKind) -> Result<Arc<Block>> {
        if let Some(c) = self.cache.get(&b.0) {
            if c.kind != kind {
                return Err(Error::corrupt(
                    b,
                    format!("read as a {} but it is a {}", kind.name(), c.kind.name()),
                ));
            }
            return Ok(c.data.clone());
        }
        if b.0 >= self.sm.nr_blocks() {
            return Err(Error::corrupt(
                b,
                format!(
                    "{} pointer is beyond the metadata device ({} blocks)",
                    kind.name(),
                    self.sm.nr_blocks()
                ),
            ));
        }
        let data = self.read_raw(b)?;
        disk::verify(&data, kind, b).map_err(|e| Error::corrupt(b, e.to_string()))?;
        self.evict();
        let data: Arc<Block> = Arc::from(data);
        self.cache.insert(b.0, Cached { data: data.clone(), kind, dirty: false });
        Ok(data)
    }

    /// Reads a block from the device, bypassing the cache and validation.
    pub fn read_raw(&self, b: MetaBlock) -> Result<Box<Block>> {
        let mut data = disk::zeroed();
        self.dev.read_at(&mut data[..], b.0 * BLOCK_SIZE as u64).map_err(|source| Error::Io {
            block: b,
            op: "read",
            source,
        })?;
        Ok(data)
    }

    fn evict(&mut self) {
        if self.pinned || self.cache.len() < self.cache_limit {
            return;
        }
        let target = self.cache_limit * 3 / 4;
        let victims: Vec<u64> = self
            .cache
            .iter()
            .filter(|(_, c)| !c.dirty)
            .map(|(&b, _)| b)
            .take(self.cache.len().saturating_sub(target))
            .collect();
        for b in victims {
            self.cache.remove(&b);
        }
    }

    /// Forgets every cached block (tests use this to force re-reads).
    pub fn drop_clean_cache(&mut self) {
        if !self.pinned {
            self.cache.retain(|_, c| c.dirty);
        }
    }

    fn alloc(&mut self, what: &'static str) -> Result<MetaBlock> {
        self.sm.alloc().map(MetaBlock).ok_or(Error::NoSpace(what))
    }

    /// A new zeroed block with count 1, owned by this transaction. Its `blocknr` field is set.
    pub fn new_block(&mut self, kind: BlockKind) -> Result<MetaBlock> {
        let b = self.alloc("allocating a metadata block")?;
        let mut data = disk::zeroed();
        disk::put_u64(&mut data[..], 8, b.0);
        self.cache.insert(b.0, Cached { data: Arc::from(data), kind, dirty: true });
        self.shadows.insert(b.0);
        Ok(b)
    }

    /// Whether this transaction may modify `b` in place.
    pub fn is_shadowed(&self, b: MetaBlock) -> bool {
        self.shadows.contains(&b.0) && self.sm.count(b.0).ok() == Some(1)
    }

    /// Shadows `b`: returns a block this transaction may modify holding `b`'s contents, and
    /// whether `b` was shared (count > 1), in which case the caller must increment whatever
    /// the copy references.
    pub fn shadow(&mut self, b: MetaBlock, kind: BlockKind) -> Result<(MetaBlock, bool)> {
        if self.is_shadowed(b) {
            return Ok((b, false));
        }
        let count = self.sm.count(b.0)?;
        if count == 0 {
            return Err(Error::corrupt(b, format!("{} is referenced but free", kind.name())));
        }
        let src = self.read(b, kind)?;
        let n = self.alloc("shadowing a metadata block")?;
        let mut data: Box<Block> = Box::new(*src);
        disk::put_u64(&mut data[..], 8, n.0);
        self.cache.insert(n.0, Cached { data: Arc::from(data), kind, dirty: true });
        self.shadows.insert(n.0);
        self.sm.dec(b.0)?;
        Ok((n, count > 1))
    }

    /// Mutable access to a block this transaction owns.
    pub fn write(&mut self, b: MetaBlock) -> Result<&mut Block> {
        if !self.shadows.contains(&b.0) {
            return Err(Error::corrupt(b, "written without being shadowed (engine bug)"));
        }
        let c = self
            .cache
            .get_mut(&b.0)
            .ok_or_else(|| Error::corrupt(b, "shadowed block missing from the cache"))?;
        c.dirty = true;
        Ok(Arc::make_mut(&mut c.data))
    }

    pub fn inc(&mut self, b: MetaBlock) -> Result<()> {
        self.sm.inc(b.0)
    }

    pub fn dec(&mut self, b: MetaBlock) -> Result<()> {
        self.sm.dec(b.0)
    }

    pub fn count(&self, b: MetaBlock) -> Result<u32> {
        self.sm.count(b.0)
    }

    /// Seals every dirty, still referenced block and hands them out for writing; clears the
    /// shadow set and starts the space map's commit. The cache is pinned until
    /// [`Tm::finish_commit`].
    pub fn prepare_commit(&mut self) -> CommitBlocks {
        let mut blocks = Vec::new();
        for (&b, c) in self.cache.iter_mut() {
            if !c.dirty {
                continue;
            }
            c.dirty = false;
            if self.sm.count(b).unwrap_or(0) == 0 {
                continue; // allocated and freed within the transaction
            }
            let data = Arc::make_mut(&mut c.data);
            disk::put_u64(&mut data[..], 8, b);
            disk::seal(data, c.kind);
            blocks.push((MetaBlock(b), c.data.clone()));
        }
        blocks.sort_by_key(|(b, _)| *b);
        // Freed-in-transaction blocks that were dirty are dropped: their contents are stale.
        let sm = &self.sm;
        self.cache.retain(|&b, _| sm.count(b).unwrap_or(0) > 0);
        self.shadows.clear();
        self.pinned = true;
        self.sm.begin_commit();
        CommitBlocks { blocks }
    }

    /// The commit is durable (`ok`) or failed.
    pub fn finish_commit(&mut self, ok: bool) {
        self.pinned = false;
        if ok {
            self.sm.end_commit();
        } else {
            self.sm.abort_commit();
        }
        self.evict();
    }

    /// Extends the metadata space map (the device must already be large enough).
    pub fn extend(&mut self, new_nr_blocks: u64) {
        self.sm.extend(new_nr_blocks);
    }
}
