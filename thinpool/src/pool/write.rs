//! The write path: one entry, [`Pool::write_with`], which decides once what a write needs.
//!
//! 1. The range is checked (once: the frontends' codecs have checked it against the export's
//!    size; this is the pool's own bound, the volume's virtual size).
//! 2. **Overwrite**: when every block the range touches is mapped and not shared, the bytes go
//!    to the data device in runs of consecutive data blocks, from memory or straight from the
//!    payload's pipe, and no metadata changes.
//! 3. Otherwise, unless the [`Mode`] allows only an overwrite ([`Written::Declined`]), each
//!    block is written the full way, from the payload in memory: an unmapped block gets a new
//!    data block (zeros around the new bytes; all-zero bytes for an unmapped block are
//!    skipped, it reads as zeros already), a shared block (the kernel's time rule:
//!    `snapshotted_time > mapping.time`) gets a copy of the old one, then the mapping is
//!    inserted. New blocks are *reserved* while being written, so a concurrent commit never
//!    records a counted block that no mapping references yet.
//!
//! A write within one block with its bytes in memory skips step 2: step 3 does the same
//! lookup and writes in place when it can.

use super::data::{segments, Seg};
use super::error::{Error, ErrorKind, Result};
use super::{lock, Pool};
use crate::io::{Payload, Written};
use crate::pdata::disk::BlockTime;
use crate::pdata::sm::SpaceMap;
use crate::units::{DataBlock, ThinId, VirtBlock};

/// What a write may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Allocate and copy as needed.
    Full,
    /// Only an overwrite: no allocation, copy or metadata change.
    Overwrite,
    /// Only an overwrite of blocks whose mappings are already committed (nothing uncommitted,
    /// no commit under way, which it does not wait for), so the caller may acknowledge the
    /// write without committing.
    OverwriteCommitted,
}

/// How an overwrite attempt ended.
enum Attempt {
    Done,
    /// A block needs allocation or copy-on-write.
    NeedsFullWrite,
    /// Mappings are uncommitted, or a commit is under way ([`Mode::OverwriteCommitted`]).
    Uncommitted,
}

impl Pool {
    /// Writes `buf` into volume `id` at `offset`, allocating and copying as needed: shorthand
    /// for [`Pool::write_with`] with the bytes in memory and [`Mode::Full`].
    pub fn write(&self, id: ThinId, offset: u64, buf: &[u8]) -> Result<()> {
        self.write_with(id, offset, &Payload::mem(buf), Mode::Full).map(|_| ())
    }

    /// The pool's write entry (see the module doc). [`Written::Declined`] only when `mode`
    /// allows less than the write needs; then nothing was written.
    pub fn write_with(
        &self,
        id: ThinId,
        offset: u64,
        payload: &Payload<'_>,
        mode: Mode,
    ) -> Result<Written> {
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let len = payload.len();
        self.check_range(id, offset, len as u64)?;
        if len == 0 {
            return Ok(Written::Done);
        }
        let bs = self.block_bytes;
        let one_block = offset % bs + len as u64 <= bs;
        if !(one_block && mode == Mode::Full && !payload.in_pipe()) {
            let committed = mode == Mode::OverwriteCommitted;
            match self.overwrite(id, offset, payload, committed)? {
                Attempt::Done => return Ok(Written::Done),
                Attempt::Uncommitted => return Ok(Written::Declined),
                Attempt::NeedsFullWrite if mode != Mode::Full => return Ok(Written::Declined),
                Attempt::NeedsFullWrite => {}
            }
        }
        payload
            .bytes(|buf| {
                segments(offset, len, bs)
                    .try_for_each(|s| self.write_block(id, s.vb, s.off, &buf[s.at..s.at + s.len]))
            })
            .map_err(|e| Error::io("reading a write's payload from its pipe", e))??;
        Ok(Written::Done)
    }

    /// Step 2 of the module doc: one stripe pass and one metadata lock for all the blocks,
    /// then one device write per physically contiguous run, in payload order.
    fn overwrite(
        &self,
        id: ThinId,
        offset: u64,
        payload: &Payload<'_>,
        committed: bool,
    ) -> Result<Attempt> {
        let segs: Vec<Seg> = segments(offset, payload.len(), self.block_bytes).collect();
        // Same order as reads: stripes sorted, then (commit lock,) metadata.
        let mut idx: Vec<usize> = segs.iter().map(|s| self.stripe(id, s.vb)).collect();
        idx.sort_unstable();
        idx.dedup();
        let _stripes: Vec<_> = idx.iter().map(|&i| lock(&self.stripes[i])).collect();
        let mut blocks = Vec::with_capacity(segs.len());
        {
            // Same order as a commit: commit lock, then metadata.
            let _c = if committed {
                match self.commit_lock.try_lock() {
                    Ok(c) => Some(c),
                    Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => return Ok(Attempt::Uncommitted),
                }
            } else {
                None
            };
            let mut m = self.meta();
            m.writable()?;
            if committed && m.uncommitted() {
                return Ok(Attempt::Uncommitted);
            }
            for s in &segs {
                match m.lookup(id, s.vb)? {
                    Some(bt) if !m.shared(id, &bt)? => blocks.push(bt.block),
                    _ => return Ok(Attempt::NeedsFullWrite),
                }
            }
        }
        // Runs of consecutive data blocks are contiguous on the device and in the payload.
        let mut i = 0;
        while i < segs.len() {
            let mut j = i + 1;
            while j < segs.len() && blocks[j].0 == blocks[j - 1].0 + 1 {
                j += 1;
            }
            let (first, last) = (&segs[i], &segs[j - 1]);
            payload
                .write_run(
                    self.data_dev.as_ref(),
                    self.data_offset(blocks[i], first.off),
                    first.at..last.at + last.len,
                )
                .map_err(|e| self.data_io("writing", blocks[i], e))?;
            i = j;
        }
        Ok(Attempt::Done)
    }

    /// Hands out a data block that is free in both maps, committing once to release blocks
    /// freed in this transaction if that is what stands in the way.
    fn reserve_data(&self) -> Result<DataBlock> {
        let mut committed = false;
        loop {
            {
                let mut m = self.meta();
                m.writable()?;
                if let Some(b) = m.data.reserve() {
                    self.data_allocations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(DataBlock(b));
                }
                let free = m.data.nr_blocks() - m.data.nr_allocated() - m.data.nr_reserved();
                if committed || free == 0 {
                    return Err(Error::new(
                        ErrorKind::NoSpace,
                        format!("all {} data blocks are in use", m.data.nr_blocks()),
                    ));
                }
            }
            self.commit()?;
            committed = true;
        }
    }

    /// Step 3 of the module doc for one block's share of a write.
    pub(super) fn write_block(
        &self,
        id: ThinId,
        vb: VirtBlock,
        off: u64,
        data: &[u8],
    ) -> Result<()> {
        let bs = self.block_bytes;
        let _s = lock(&self.stripes[self.stripe(id, vb)]);
        let (map, shared) = {
            let mut m = self.meta();
            m.writable()?;
            let map = m.lookup(id, vb)?;
            let shared = match &map {
                Some(bt) => m.shared(id, bt)?,
                None => false,
            };
            (map, shared)
        };
        match map {
            Some(bt) if !shared => {
                return self
                    .data_dev
                    .write_at(data, self.data_offset(bt.block, off))
                    .map_err(|e| self.data_io("writing", bt.block, e));
            }
            None if data.iter().all(|&b| b == 0) => return Ok(()),
            _ => {}
        }
        let new = self.reserve_data()?;
        let r = self.fill_new_block(new, map, off, data, bs);
        let mut m = self.meta();
        if let Err(e) = r.and_then(|_| {
            m.writable()?;
            m.meta_space()
        }) {
            let _ = m.data.unreserve(new.0, false);
            return Err(e);
        }
        m.change(|m| {
            m.data.unreserve(new.0, true).map_err(|e| Error::pdata("counting a data block", e))?;
            let time = m.time;
            m.insert_owned(id, vb, new, time)
        })
    }

    /// Writes the new block's full contents: the old block (copy-on-write) or zeros, with
    /// `data` at `off`.
    fn fill_new_block(
        &self,
        new: DataBlock,
        old: Option<BlockTime>,
        off: u64,
        data: &[u8],
        bs: u64,
    ) -> Result<()> {
        if off == 0 && data.len() as u64 == bs {
            return self
                .data_dev
                .write_at(data, self.data_offset(new, 0))
                .map_err(|e| self.data_io("writing", new, e));
        }
        let mut block = vec![0u8; bs as usize];
        if let Some(bt) = old {
            self.data_dev
                .read_at(&mut block, self.data_offset(bt.block, 0))
                .map_err(|e| self.data_io("copying", bt.block, e))?;
        }
        block[off as usize..off as usize + data.len()].copy_from_slice(data);
        self.data_dev
            .write_at(&block, self.data_offset(new, 0))
            .map_err(|e| self.data_io("writing", new, e))
    }
}
