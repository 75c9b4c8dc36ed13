//! The data path: byte-granular reads, zeroing and discards on thin volumes, and the ranges
//! and segments every request is cut into. Writes are in [`super::write`].

use super::error::{Error, ErrorKind, Result};
use super::meta::Meta;
use super::{lock, Pool};
use crate::units::{DataBlock, ThinId, VirtBlock};

/// One block's share of a byte range.
#[derive(Clone, Copy, Debug)]
pub(super) struct Seg {
    pub(super) vb: VirtBlock,
    /// Offset inside the block.
    pub(super) off: u64,
    pub(super) len: usize,
    /// Offset inside the caller's buffer.
    pub(super) at: usize,
}

pub(super) fn segments(offset: u64, len: usize, bs: u64) -> impl Iterator<Item = Seg> {
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
    pub(super) fn check_range_in(&self, m: &Meta, id: ThinId, offset: u64, len: u64) -> Result<()> {
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

    pub(super) fn data_offset(&self, b: DataBlock, off: u64) -> u64 {
        b.0 * self.block_bytes + off
    }

    pub(super) fn data_io(&self, what: &str, b: DataBlock, e: std::io::Error) -> Error {
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
        let end = offset + len;
        // After the unmap, only the partial blocks at either end are left to zero.
        let parts = if may_unmap && first_full < end_full {
            [(offset, first_full * bs), (end_full * bs, end)]
        } else {
            [(offset, end), (end, end)]
        };
        let zeros = vec![0u8; bs as usize];
        for (from, to) in parts {
            for s in segments(from, (to - from) as usize, bs) {
                // Unmapped blocks already read as zeros.
                if self.meta().lookup(id, s.vb)?.is_some() {
                    self.write_block(id, s.vb, s.off, &zeros[..s.len])?;
                }
            }
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
        for s in segments(offset, len as usize, bs) {
            let (n, m) = (s.len as u64, mapped.contains(&s.vb.0));
            match out.last_mut() {
                Some((l, lm)) if *lm == m => *l += n,
                _ => out.push((n, m)),
            }
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
