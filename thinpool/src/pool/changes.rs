//! Which bytes of a volume differ from another thin (a snapshot taken earlier), from the
//! mappings alone: a block mapped to the same data block in both is unchanged (see
//! `crate::delta`); blocks unmapped in both are unchanged too.

use super::error::Result;
use super::Pool;
use crate::delta::{self, Change};
use crate::units::{ThinId, VirtBlock};

impl Pool {
    /// Runs of (bytes, changed) covering `offset..offset+len` of thin `id` compared with
    /// thin `base`, read under one metadata lock so both sides are of one moment.
    pub fn changes_since(
        &self,
        id: ThinId,
        base: ThinId,
        offset: u64,
        len: u64,
    ) -> Result<Vec<(u64, bool)>> {
        self.check_range(id, offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let bs = self.block_bytes;
        let (first, end_vb) = (offset / bs, (offset + len).div_ceil(bs));
        let (l, r) = {
            let mut m = self.meta();
            m.dev(base)?;
            let range = |m: &mut super::meta::Meta, t| {
                m.mappings_in(t, VirtBlock(first), Some(VirtBlock(end_vb)))
                    .map(|v| delta::extents(v.into_iter().map(|(vb, bt)| (vb.0, bt.block.0))))
            };
            (range(&mut m, base)?, range(&mut m, id)?)
        };
        let changed: Vec<(u64, u64)> = delta::diff(&l, &r)
            .into_iter()
            .filter(|d| d.change != Change::Same)
            .map(|d| (d.begin.0, d.begin.0 + d.len))
            .collect();
        // Walk the byte range, block by block run, against the sorted changed block ranges.
        let mut out: Vec<(u64, bool)> = Vec::new();
        let mut push = |n: u64, c: bool| match out.last_mut() {
            Some((l, lc)) if *lc == c => *l += n,
            _ => out.push((n, c)),
        };
        let end = offset + len;
        let mut pos = offset;
        for (b, e) in changed {
            let (s, t) = ((b * bs).max(pos), (e * bs).min(end));
            if s >= t {
                continue;
            }
            if s > pos {
                push(s - pos, false);
            }
            push(t - s, true);
            pos = t;
        }
        if pos < end {
            push(end - pos, false);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use crate::io::MemDevice;
    use crate::pool::Pool;
    use crate::units::{Sectors, ThinId};
    use std::sync::Arc;

    #[test]
    fn changes_since_a_snapshot_are_the_written_blocks() {
        let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
        let data = Arc::new(MemDevice::new(64 * 65536, "data"));
        let p = Pool::format(meta, data, Sectors(128)).unwrap();
        let bs = p.block_bytes();
        p.create_thin(ThinId(0)).unwrap();
        p.write(ThinId(0), 0, &vec![1; (4 * bs) as usize]).unwrap();
        p.create_snap(ThinId(1), ThinId(0)).unwrap();
        p.write(ThinId(0), bs + 5, &[2; 10]).unwrap();
        p.write(ThinId(0), 6 * bs, &[3; 10]).unwrap();
        p.discard(ThinId(0), 3 * bs, bs).unwrap();
        let c = p.changes_since(ThinId(0), ThinId(1), 100, 8 * bs - 100).unwrap();
        assert_eq!(
            c,
            vec![
                (bs - 100, false),
                (bs, true),
                (bs, false),
                (bs, true), // discarded: mapped in the base only
                (2 * bs, false),
                (bs, true),
                (bs, false),
            ]
        );
        let e = p.changes_since(ThinId(0), ThinId(9), 0, bs).unwrap_err();
        assert_eq!(e.kind(), crate::pool::ErrorKind::NotFound);
    }
}
