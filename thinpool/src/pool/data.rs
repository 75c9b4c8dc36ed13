//! The data path: byte-granular reads and writes on thin volumes.
//!
//! A write to an unmapped block allocates a data block, writes the whole block (zeros around
//! the new bytes) and then inserts the mapping; a write to a shared block (the kernel's time
//! rule: `snapshotted_time > mapping.time`) does the same starting from a copy of the old
//! block. Writes to unshared mapped blocks go straight to the data device. New blocks are
//! *reserved* while being written, so a concurrent commit never records a counted block that
//! no mapping references yet.

use super::error::{Error, ErrorKind, Result};
use super::meta::Meta;
use super::{lock, Pool};
use crate::pdata::disk::BlockTime;
use crate::pdata::sm::SpaceMap;
use crate::units::{DataBlock, ThinId, VirtBlock};
use std::ops::Range;
use std::os::fd::BorrowedFd;

/// One block's share of a byte range.
#[derive(Clone, Copy, Debug)]
struct Seg {
    vb: VirtBlock,
    /// Offset inside the block.
    off: u64,
    len: usize,
    /// Offset inside the caller's buffer.
    at: usize,
}

fn segments(offset: u64, len: usize, bs: u64) -> impl Iterator<Item = Seg> {
    let end = offset + len as u64;
    let mut pos = offset;
    std::iter::from_fn(move || {
        if pos >= end {
            return None;
        }
        let vb = pos / bs;
        let off = pos % bs;
        let n = (bs - off).min(end - pos);
        let s = Seg { vb: VirtBlock(vb), off, len: n as usize, at: (pos - offset) as usize };
        pos += n;
        Some(s)
    })
}

impl Pool {
    /// Checks that `id` exists and `offset + len` fits its virtual size (named volumes) or the
    /// address space (raw thin ids).
    pub(super) fn check_range(&self, id: ThinId, offset: u64, len: u64) -> Result<()> {
        self.check_range_in(&self.meta(), id, offset, len)
    }

    /// [`Pool::check_range`] under a metadata lock the caller holds.
    fn check_range_in(&self, m: &Meta, id: ThinId, offset: u64, len: u64) -> Result<()> {
        m.dev(id)?;
        let end = offset.checked_add(len).ok_or_else(|| {
            Error::new(ErrorKind::OutOfRange, format!("range {offset}+{len} overflows"))
        })?;
        let limit = match m.names.as_ref().and_then(|t| t.by_id(id.0)) {
            Some(v) => v.size,
            None => (1u64 << 40).saturating_mul(self.block_bytes),
        };
        if end > limit {
            return Err(Error::new(
                ErrorKind::OutOfRange,
                format!("thin device {id}: range {offset}+{len} is beyond its size {limit}"),
            ));
        }
        Ok(())
    }

    fn data_offset(&self, b: DataBlock, off: u64) -> u64 {
        b.0 * self.block_bytes + off
    }

    fn data_io(&self, what: &str, b: DataBlock, e: std::io::Error) -> Error {
        Error::io(format!("{what} data block {b} of {}", self.data_dev.describe()), e)
    }

    /// Reads `buf.len()` bytes of volume `id` at `offset`; unmapped ranges read as zeros.
    pub fn read(&self, id: ThinId, offset: u64, buf: &mut [u8]) -> Result<()> {
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = self.read_one_block(id, offset, buf, false) {
            return r.map(|_| ());
        }
        self.check_range(id, offset, buf.len() as u64)?;
        let segs: Vec<Seg> = segments(offset, buf.len(), self.block_bytes).collect();
        // Hold the blocks' stripes so a concurrent copy-on-write cannot free and recycle a
        // block between the lookup and the read.
        let mut idx: Vec<usize> = segs.iter().map(|s| self.stripe(id, s.vb)).collect();
        idx.sort_unstable();
        idx.dedup();
        let _stripes: Vec<_> = idx.iter().map(|&i| lock(&self.stripes[i])).collect();
        let maps = {
            let mut m = self.meta();
            segs.iter().map(|s| m.lookup(id, s.vb)).collect::<Result<Vec<_>>>()?
        };
        // Runs of consecutive data blocks are contiguous on the device and in the buffer: one
        // read each (a volume written sequentially is mostly such runs).
        let mut i = 0;
        while i < segs.len() {
            let Some(first) = maps[i] else {
                let s = &segs[i];
                buf[s.at..s.at + s.len].fill(0);
                i += 1;
                continue;
            };
            let mut j = i + 1;
            while j < segs.len()
                && maps[j].is_some_and(|bt| bt.block.0 == first.block.0 + (j - i) as u64)
            {
                j += 1;
            }
            let (s, last) = (&segs[i], &segs[j - 1]);
            self.data_dev
                .read_at(&mut buf[s.at..last.at + last.len], self.data_offset(first.block, s.off))
                .map_err(|e| self.data_io("reading", first.block, e))?;
            i = j;
        }
        Ok(())
    }

    /// A read within one block (the common small read): one stripe, one metadata lock, no
    /// allocation. None if the range spans blocks. With `cached`, the data device is only
    /// read if that cannot wait ([`crate::io::BlockDevice::read_cached`]), else `Ok(false)`.
    fn read_one_block(
        &self,
        id: ThinId,
        offset: u64,
        buf: &mut [u8],
        cached: bool,
    ) -> Option<Result<bool>> {
        let bs = self.block_bytes;
        if buf.is_empty() || offset % bs + buf.len() as u64 > bs {
            return None;
        }
        let vb = VirtBlock(offset / bs);
        let _s = lock(&self.stripes[self.stripe(id, vb)]);
        let map = {
            let mut m = self.meta();
            self.check_range_in(&m, id, offset, buf.len() as u64).and_then(|()| m.lookup(id, vb))
        };
        Some(match map {
            Err(e) => Err(e),
            Ok(None) => {
                buf.fill(0);
                Ok(true)
            }
            Ok(Some(bt)) => {
                let at = self.data_offset(bt.block, offset % bs);
                let r = if cached {
                    self.data_dev.read_cached(buf, at)
                } else {
                    self.data_dev.read_at(buf, at).map(|()| true)
                };
                r.map_err(|e| self.data_io("reading", bt.block, e))
            }
        })
    }

    /// Reads within one block only if that cannot wait for the data device (the data is in
    /// memory, or the block is unmapped); `Ok(false)` otherwise, `buf` then unspecified.
    pub fn read_cached(&self, id: ThinId, offset: u64, buf: &mut [u8]) -> Result<bool> {
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.read_one_block(id, offset, buf, true).unwrap_or(Ok(false))
    }

    /// Writes `buf` into volume `id` at `offset`, allocating and copying as needed.
    pub fn write(&self, id: ThinId, offset: u64, buf: &[u8]) -> Result<()> {
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        self.check_range(id, offset, buf.len() as u64)?;
        // Within one block the per-block path below does the same lookup.
        if offset % self.block_bytes + buf.len() as u64 > self.block_bytes
            && self.overwrite_blocks(id, offset, buf.len(), &mut |at, r| {
                self.data_dev.write_at(&buf[r], at)
            })?
        {
            return Ok(());
        }
        for s in segments(offset, buf.len(), self.block_bytes) {
            self.write_block(id, s.vb, s.off, &buf[s.at..s.at + s.len])?;
        }
        Ok(())
    }

    /// The overwrite of [`Pool::write`] for a payload whose first bytes are `head` and whose
    /// other `rest` bytes wait in the pipe `pipe` (spliced there from a client's socket): the
    /// data device takes them straight from the pipe, with no copy through user space.
    /// `Ok(false)`, with nothing written or consumed, when a block needs allocation or
    /// copy-on-write or the data device cannot splice; the caller then drains the pipe and
    /// calls [`Pool::write`]. After an error the pipe holds an unknown part of `rest`.
    pub fn overwrite_spliced(
        &self,
        id: ThinId,
        offset: u64,
        head: &[u8],
        pipe: BorrowedFd<'_>,
        rest: usize,
    ) -> Result<bool> {
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let len = head.len() + rest;
        self.check_range(id, offset, len as u64)?;
        if len == 0 || !self.data_dev.splices() {
            return Ok(false);
        }
        self.overwrite_blocks(id, offset, len, &mut |at, r| {
            // The runs come in payload order: the head first, then the pipe.
            let from_head = r.start.min(head.len())..r.end.min(head.len());
            if !from_head.is_empty() {
                self.data_dev.write_at(&head[from_head.clone()], at)?;
            }
            let n = r.len() - from_head.len();
            if n > 0 {
                self.data_dev.write_from_pipe(pipe, n, at + from_head.len() as u64)?;
            }
            Ok(())
        })
    }

    /// An overwrite of `len` bytes at `offset` whose blocks are all mapped and unshared: one
    /// stripe pass and one metadata lock for all of them, then `write_run(device offset,
    /// range of the payload)` once per physically contiguous run, in payload order.
    /// `Ok(false)`, with nothing written, when any block needs allocation or copy-on-write.
    fn overwrite_blocks(
        &self,
        id: ThinId,
        offset: u64,
        len: usize,
        write_run: &mut dyn FnMut(u64, Range<usize>) -> std::io::Result<()>,
    ) -> Result<bool> {
        let bs = self.block_bytes;
        let segs: Vec<Seg> = segments(offset, len, bs).collect();
        // Same order as reads: stripes sorted, then metadata.
        let mut idx: Vec<usize> = segs.iter().map(|s| self.stripe(id, s.vb)).collect();
        idx.sort_unstable();
        idx.dedup();
        let _stripes: Vec<_> = idx.iter().map(|&i| lock(&self.stripes[i])).collect();
        let mut blocks = Vec::with_capacity(segs.len());
        {
            let mut m = self.meta();
            m.writable()?;
            for s in &segs {
                match m.lookup(id, s.vb)? {
                    Some(bt) if !m.shared(id, &bt)? => blocks.push(bt.block),
                    _ => return Ok(false),
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
            write_run(self.data_offset(blocks[i], first.off), first.at..last.at + last.len)
                .map_err(|e| self.data_io("writing", blocks[i], e))?;
            i = j;
        }
        Ok(true)
    }

    /// Writes `buf` only if that is an overwrite inside one mapped, unshared block: no
    /// allocation, copy or metadata change. `Ok(false)`, with nothing written, when the full
    /// [`Pool::write`] is needed. With `committed_only` the block's mapping must also be
    /// durable already (nothing uncommitted, no commit under way), so the caller may
    /// acknowledge without committing; a commit in progress makes this answer `Ok(false)`
    /// rather than wait for it.
    pub fn write_in_place(
        &self,
        id: ThinId,
        offset: u64,
        buf: &[u8],
        committed_only: bool,
    ) -> Result<bool> {
        let bs = self.block_bytes;
        if buf.is_empty() || offset % bs + buf.len() as u64 > bs {
            return Ok(false);
        }
        let _g = self.gate.read().unwrap_or_else(|e| e.into_inner());
        let vb = VirtBlock(offset / bs);
        let _s = lock(&self.stripes[self.stripe(id, vb)]);
        let bt = {
            // Same order as a commit: commit lock, then metadata.
            let _c = if committed_only {
                match self.commit_lock.try_lock() {
                    Ok(c) => Some(c),
                    Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
                    Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
                }
            } else {
                None
            };
            let mut m = self.meta();
            m.writable()?;
            if committed_only && m.uncommitted() {
                return Ok(false);
            }
            self.check_range_in(&m, id, offset, buf.len() as u64)?;
            match m.lookup(id, vb)? {
                Some(bt) if !m.shared(id, &bt)? => bt,
                _ => return Ok(false),
            }
        };
        self.data_dev
            .write_at(buf, self.data_offset(bt.block, offset % bs))
            .map_err(|e| self.data_io("writing", bt.block, e))?;
        Ok(true)
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

    fn write_block(&self, id: ThinId, vb: VirtBlock, off: u64, data: &[u8]) -> Result<()> {
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

    /// Unmaps the fully covered blocks in `begin..end` (virtual blocks).
    fn unmap(&self, id: ThinId, begin: u64, end: u64) -> Result<u64> {
        if begin >= end {
            return Ok(0);
        }
        self.meta().change(|m| m.remove_range(id, VirtBlock(begin), VirtBlock(end)))
    }

    /// Unmaps virtual blocks `begin..end` of device `id` (raw form of discard); returns how
    /// many were mapped. Unshared data blocks are free after the next commit.
    pub fn remove_range(&self, id: ThinId, begin: VirtBlock, end: VirtBlock) -> Result<u64> {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.meta().dev(id)?;
        self.unmap(id, begin.0, end.0)
    }

    /// Zeroes a byte range. With `may_unmap`, fully covered blocks are unmapped; otherwise
    /// (and for partial blocks) mapped blocks get zeros written and unmapped ones stay so.
    pub fn write_zeroes(&self, id: ThinId, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let _g = if may_unmap {
            Gate::Excl(self.gate.write().unwrap_or_else(|e| e.into_inner()))
        } else {
            Gate::Shared(self.gate.read().unwrap_or_else(|e| e.into_inner()))
        };
        self.check_range(id, offset, len)?;
        let bs = self.block_bytes;
        let (first_full, end_full) = (offset.div_ceil(bs), (offset + len) / bs);
        if may_unmap && first_full < end_full {
            self.unmap(id, first_full, end_full)?;
        }
        let zeros = vec![0u8; bs as usize];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let vb = pos / bs;
            let off = pos % bs;
            let n = (bs - off).min(end - pos);
            if may_unmap && vb >= first_full && vb < end_full {
                pos = end_full * bs;
                continue;
            }
            let mapped = self.meta().lookup(id, VirtBlock(vb))?.is_some();
            // Unmapped blocks already read as zeros.
            if mapped {
                self.write_block(id, VirtBlock(vb), off, &zeros[..n as usize])?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Discards a byte range: fully covered blocks are unmapped (freed after the next commit
    /// unless shared); partial blocks are left alone, as discard is advisory.
    pub fn discard(&self, id: ThinId, offset: u64, len: u64) -> Result<()> {
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        self.check_range(id, offset, len)?;
        let bs = self.block_bytes;
        self.unmap(id, offset.div_ceil(bs), (offset + len) / bs)?;
        Ok(())
    }

    /// Makes every completed write durable: flushes data and commits the metadata.
    pub fn flush(&self) -> Result<()> {
        self.commit_inner(true)
    }

    /// Runs of mapped and unmapped bytes in `offset..offset+len` (for NBD block status).
    pub fn extents(&self, id: ThinId, offset: u64, len: u64) -> Result<Vec<(u64, bool)>> {
        self.check_range(id, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = self.block_bytes;
        let (first, last) = (offset / bs, (offset + len - 1) / bs);
        let mapped: std::collections::BTreeSet<u64> = self
            .meta()
            .mappings_in(id, VirtBlock(first), Some(VirtBlock(last + 1)))?
            .into_iter()
            .map(|(vb, _)| vb.0)
            .collect();
        let mut out: Vec<(u64, bool)> = Vec::new();
        let end = offset + len;
        let mut pos = offset;
        while pos < end {
            let vb = pos / bs;
            let n = (bs - pos % bs).min(end - pos);
            let m = mapped.contains(&vb);
            match out.last_mut() {
                Some((l, lm)) if *lm == m => *l += n,
                _ => out.push((n, m)),
            }
            pos += n;
        }
        Ok(out)
    }
}

enum Gate<'a> {
    Excl(#[allow(dead_code)] std::sync::RwLockWriteGuard<'a, ()>),
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'a, ()>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_cover_the_range() {
        let segs: Vec<Seg> = segments(100, 300, 128).collect();
        let got: Vec<(u64, u64, usize, usize)> =
            segs.iter().map(|s| (s.vb.0, s.off, s.len, s.at)).collect();
        assert_eq!(got, vec![(0, 100, 28, 0), (1, 0, 128, 28), (2, 0, 128, 156), (3, 0, 16, 284)]);
        assert_eq!(segments(0, 0, 128).count(), 0);
    }
}
