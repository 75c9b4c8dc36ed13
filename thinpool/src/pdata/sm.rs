//! Reference counts kept in memory, with dm-thin's allocation rule.
//!
//! A block may be handed out only if its count is 0 now *and* was 0 in the last committed
//! state: a block freed in this transaction may still be referenced by the committed trees (or
//! hold data the committed mappings point at), so it stays untouchable until the next commit.
//! While a commit is being written, "committed" means the union of the old and the new state.

use std::collections::{BTreeSet, HashSet};

use super::{Error, Result};

/// The operations every space map offers (metadata and data), so one contract suite covers all.
pub trait SpaceMap {
    fn nr_blocks(&self) -> u64;
    /// Blocks with a reference count above zero.
    fn nr_allocated(&self) -> u64;
    fn nr_free(&self) -> u64 {
        self.nr_blocks() - self.nr_allocated()
    }
    fn count(&self, b: u64) -> Result<u32>;
    fn inc(&mut self, b: u64) -> Result<()>;
    fn dec(&mut self, b: u64) -> Result<()>;
    /// A block free in both the current and the committed map, now with count 1; `None` when
    /// there is none.
    fn alloc(&mut self) -> Option<u64>;
    /// Grows the map; new blocks are free.
    fn extend(&mut self, new_nr_blocks: u64);
}

fn bit(bits: &[u64], b: u64) -> bool {
    bits.get((b / 64) as usize).is_some_and(|w| w & (1 << (b % 64)) != 0)
}

/// Full in-memory reference-count table.
#[derive(Clone, Debug)]
pub struct RefCounts {
    name: &'static str,
    counts: Vec<u32>,
    /// Bit set: non-zero in the committed state (or in the state being committed).
    committed: Vec<u64>,
    /// Bit set: non-zero as of the last `begin_commit` (the state being, or last, committed).
    state: Vec<u64>,
    /// A commit is being written.
    pending: bool,
    /// Blocks whose count changed since the last `begin_commit`: commits touch only these,
    /// so their cost follows the transaction's size, not the map's.
    changed: HashSet<u64>,
    nr_allocated: u64,
    cursor: u64,
    /// Blocks handed out but not yet counted (data blocks being written before their mapping
    /// is inserted). Never allocated twice, never persisted.
    reserved: HashSet<u64>,
    /// Blocks whose count changed since the map was last persisted.
    dirty: BTreeSet<u64>,
    /// Free blocks that still cannot be handed out (committed, or being committed).
    nr_pinned: u64,
}

impl RefCounts {
    pub fn new(name: &'static str, nr_blocks: u64) -> Self {
        RefCounts {
            name,
            counts: vec![0; nr_blocks as usize],
            committed: vec![0; nr_blocks.div_ceil(64) as usize],
            state: vec![0; nr_blocks.div_ceil(64) as usize],
            pending: false,
            changed: HashSet::new(),
            nr_allocated: 0,
            cursor: 0,
            reserved: HashSet::new(),
            dirty: BTreeSet::new(),
            nr_pinned: 0,
        }
    }

    /// Blocks that can be handed out right now (free in both maps, not reserved).
    pub fn free_now(&self) -> u64 {
        (self.nr_blocks() - self.nr_allocated)
            .saturating_sub(self.reserved.len() as u64 + self.nr_pinned)
    }

    fn recount_pinned(&mut self) {
        self.nr_pinned = self
            .counts
            .iter()
            .enumerate()
            .filter(|&(i, &c)| c == 0 && bit(&self.committed, i as u64))
            .count() as u64;
    }

    fn bad(&self, block: u64, what: &'static str) -> Error {
        Error::BadRef { map: self.name, block, what }
    }

    fn check(&self, b: u64) -> Result<usize> {
        if b < self.counts.len() as u64 {
            Ok(b as usize)
        } else {
            Err(self.bad(b, "is beyond the end of the space map"))
        }
    }

    /// Sets a count while loading a persisted map (not marked dirty).
    pub fn load(&mut self, b: u64, count: u32) -> Result<()> {
        let i = self.check(b)?;
        match (self.counts[i], count) {
            (0, c) if c > 0 => self.nr_allocated += 1,
            (c, 0) if c > 0 => self.nr_allocated -= 1,
            _ => {}
        }
        self.counts[i] = count;
        self.changed.insert(b);
        Ok(())
    }

    /// Sets a count (restore, tests); marked dirty.
    pub fn set(&mut self, b: u64, count: u32) -> Result<()> {
        self.load(b, count)?;
        self.dirty.insert(b);
        Ok(())
    }

    /// After loading: everything counted is committed.
    pub fn mark_all_committed(&mut self) {
        self.committed = self.nonzero_bits();
        self.state = self.committed.clone();
        self.dirty.clear();
        self.changed.clear();
        self.nr_pinned = 0;
    }

    fn nonzero_bits(&self) -> Vec<u64> {
        let mut bits = vec![0u64; self.counts.len().div_ceil(64)];
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 {
                bits[i / 64] |= 1 << (i % 64);
            }
        }
        bits
    }

    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes the set of blocks changed since the last call.
    pub fn take_dirty(&mut self) -> BTreeSet<u64> {
        std::mem::take(&mut self.dirty)
    }

    /// Whether `b` is non-zero in the committed state.
    pub fn committed(&self, b: u64) -> bool {
        bit(&self.committed, b)
    }

    /// Hands out a block without counting it yet; see `reserved`.
    pub fn reserve(&mut self) -> Option<u64> {
        let b = self.find_free()?;
        self.reserved.insert(b);
        Some(b)
    }

    /// Gives up a reservation; `counted` turns it into a count of 1.
    pub fn unreserve(&mut self, b: u64, counted: bool) -> Result<()> {
        self.reserved.remove(&b);
        if counted {
            self.inc(b)?;
        }
        Ok(())
    }

    pub fn nr_reserved(&self) -> u64 {
        self.reserved.len() as u64
    }

    fn find_free(&mut self) -> Option<u64> {
        let n = self.counts.len() as u64;
        if n == 0 {
            return None;
        }
        let start = self.cursor.min(n);
        for b in (start..n).chain(0..start) {
            if self.counts[b as usize] == 0
                && !bit(&self.committed, b)
                && !self.reserved.contains(&b)
            {
                self.cursor = b + 1;
                return Some(b);
            }
        }
        None
    }

    /// Starts writing a commit: from now on the state as of this moment is also untouchable.
    pub fn begin_commit(&mut self) {
        for &b in &self.changed {
            let (w, m) = ((b / 64) as usize, 1u64 << (b % 64));
            if self.counts[b as usize] > 0 {
                self.state[w] |= m;
                self.committed[w] |= m;
            } else {
                self.state[w] &= !m;
            }
        }
        self.changed.clear();
        self.pending = true;
    }

    /// The commit is durable: blocks freed before it become allocatable.
    pub fn end_commit(&mut self) {
        if !self.pending {
            return;
        }
        self.pending = false;
        self.committed.clone_from(&self.state);
        self.cursor = 0;
        // Only blocks changed since `begin_commit` can be free yet set in the new state.
        self.nr_pinned = self
            .changed
            .iter()
            .filter(|&&b| self.counts[b as usize] == 0 && bit(&self.state, b))
            .count() as u64;
    }

    /// The commit failed: keep the union, so nothing either state references is reused.
    pub fn abort_commit(&mut self) {
        self.pending = false;
        self.recount_pinned();
    }
}

impl SpaceMap for RefCounts {
    fn nr_blocks(&self) -> u64 {
        self.counts.len() as u64
    }

    fn nr_allocated(&self) -> u64 {
        self.nr_allocated
    }

    fn count(&self, b: u64) -> Result<u32> {
        Ok(self.counts[self.check(b)?])
    }

    fn inc(&mut self, b: u64) -> Result<()> {
        let i = self.check(b)?;
        let c = self.counts[i];
        if c == u32::MAX {
            return Err(self.bad(b, "reference count overflows"));
        }
        if c == 0 {
            self.nr_allocated += 1;
            if bit(&self.committed, b) {
                self.nr_pinned = self.nr_pinned.saturating_sub(1);
            }
        }
        self.counts[i] = c + 1;
        self.dirty.insert(b);
        self.changed.insert(b);
        Ok(())
    }

    fn dec(&mut self, b: u64) -> Result<()> {
        let i = self.check(b)?;
        let c = self.counts[i];
        if c == 0 {
            return Err(self.bad(b, "reference count would drop below zero"));
        }
        if c == 1 {
            self.nr_allocated -= 1;
            if bit(&self.committed, b) {
                self.nr_pinned += 1;
            }
        }
        self.counts[i] = c - 1;
        self.dirty.insert(b);
        self.changed.insert(b);
        Ok(())
    }

    fn alloc(&mut self) -> Option<u64> {
        let b = self.find_free()?;
        self.counts[b as usize] = 1;
        self.nr_allocated += 1;
        self.dirty.insert(b);
        self.changed.insert(b);
        Some(b)
    }

    fn extend(&mut self, new_nr_blocks: u64) {
        if new_nr_blocks <= self.counts.len() as u64 {
            return;
        }
        self.counts.resize(new_nr_blocks as usize, 0);
        let words = new_nr_blocks.div_ceil(64) as usize;
        self.committed.resize(words, 0);
        self.state.resize(words, 0);
    }
}
