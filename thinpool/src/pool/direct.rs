//! Plans for requests the caller submits itself ([`crate::io::Direct`]): a read, or an
//! overwrite of blocks that are mapped and not shared (step 2 of [`super::write`]'s module
//! doc). The same checks and locks as [`Pool::read`] and the overwrite, in the same order
//! (gate, stripes sorted, commit lock, metadata), but each only tried: `None` whenever
//! something would have to wait or the request needs more than a plan can say (allocation,
//! copy-on-write, an unaligned range, a data device without O_DIRECT), and the caller then
//! takes the blocking path, which also produces the error if there is one.

use std::sync::{Mutex, MutexGuard, TryLockError};

use super::data::{segments, Seg};
use super::Pool;
use crate::io::{Direct, Run, DIRECT_ALIGN};
use crate::units::ThinId;

/// At most this many device I/Os per plan: each is an entry on the caller's ring; a request
/// scattered wider is served the blocking way.
pub const MAX_DEVICE_RUNS: usize = 4;

fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl Pool {
    /// A plan to read `len` bytes of volume `id` at `offset`: device runs for mapped blocks,
    /// zeros for unmapped ones.
    pub fn direct_read(&self, id: ThinId, offset: u64, len: usize) -> Option<Direct<'_>> {
        self.plan(id, offset, len, Need::Read)
    }

    /// A plan to overwrite `len` bytes of volume `id` at `offset` in place; `None` unless
    /// every block is mapped and not shared. With `committed`, also only when no mapping is
    /// uncommitted and no commit is under way ([`super::Mode::OverwriteCommitted`]).
    pub fn direct_overwrite(
        &self,
        id: ThinId,
        offset: u64,
        len: usize,
        committed: bool,
    ) -> Option<Direct<'_>> {
        self.plan(id, offset, len, Need::Overwrite { committed })
    }

    fn plan(&self, id: ThinId, offset: u64, len: usize, need: Need) -> Option<Direct<'_>> {
        let aligned = |v: u64| v.is_multiple_of(DIRECT_ALIGN);
        if len == 0 || !aligned(offset) || !aligned(len as u64) {
            return None;
        }
        let gate = match self.gate.try_read() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        let segs: Vec<Seg> = segments(offset, len, self.block_bytes).collect();
        let mut idx: Vec<usize> = segs.iter().map(|s| self.stripe(id, s.vb)).collect();
        idx.sort_unstable();
        idx.dedup();
        let stripes =
            idx.iter().map(|&i| try_lock(&self.stripes[i])).collect::<Option<Vec<_>>>()?;
        let maps = {
            let _c = match need {
                Need::Overwrite { committed: true } => Some(try_lock(&self.commit_lock)?),
                _ => None,
            };
            let mut m = try_lock(&self.meta)?;
            self.check_range_in(&m, id, offset, len as u64).ok()?;
            if let Need::Overwrite { committed } = need {
                m.writable().ok()?;
                if committed && m.uncommitted() {
                    return None;
                }
            }
            let mut maps = Vec::with_capacity(segs.len());
            for s in &segs {
                let bt = m.lookup(id, s.vb).ok()?;
                if need != Need::Read && !matches!(&bt, Some(b) if !m.shared(id, b).ok()?) {
                    return None;
                }
                maps.push(bt);
            }
            maps
        };
        // Runs in the pool's data address space first: neighbouring blocks that are
        // neighbours on the data device too are one I/O (a volume written sequentially is
        // mostly such runs).
        let mut runs: Vec<Run> = Vec::new();
        for (s, map) in segs.iter().zip(&maps) {
            let next = match map {
                None => Run::Zeros { at: s.at, len: s.len },
                Some(bt) => Run::Device {
                    at: s.at,
                    len: s.len,
                    fd: -1,
                    pos: self.data_offset(bt.block, s.off),
                },
            };
            match (runs.last_mut(), next) {
                (Some(Run::Zeros { len, .. }), Run::Zeros { len: n, .. }) => *len += n,
                (Some(Run::Device { len, pos, .. }), Run::Device { len: n, pos: p, .. })
                    if *pos + *len as u64 == p =>
                {
                    *len += n
                }
                _ => runs.push(next),
            }
        }
        if runs.iter().filter(|r| matches!(r, Run::Device { .. })).count() > MAX_DEVICE_RUNS {
            return None;
        }
        // Then where each lies on a real device (the data device may be a volume group's
        // region over several disks).
        let mut keep = Vec::new();
        for r in &mut runs {
            if let Run::Device { len, fd, pos, .. } = r {
                let at = self.data_dev.direct_at(*pos, *len)?;
                (*fd, *pos) = (at.fd, at.pos);
                keep.extend(at.keep);
            }
        }
        Some(Direct::new(runs).hold(gate).hold(stripes).hold(keep))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Overwrite { committed: bool },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::Arc;

    use super::*;
    use crate::io::{FileDevice, MemDevice};
    use crate::pool::tests::TestData;
    use crate::units::Sectors;

    /// A data file used the buffered way by the pool, with an O_DIRECT descriptor of the same
    /// file for the plans.
    type WithDirect = TestData<FileDevice>;

    /// 4 KiB-aligned buffers, as O_DIRECT (and the ublk queues) have them.
    #[repr(align(4096))]
    #[derive(Clone, Copy)]
    struct Page([u8; 4096]);

    fn pages(n: usize) -> Vec<Page> {
        vec![Page([0; 4096]); n]
    }

    /// Carries out a plan the way the ublk queue does, one page at a time: device runs with
    /// `pread`/`pwrite` on the plan's O_DIRECT descriptor, zeros filled in.
    fn carry_out(plan: &Direct<'_>, buf: &mut [Page], write: bool, dev: &WithDirect) {
        let direct = dev.direct.as_ref().expect("an O_DIRECT descriptor");
        for r in &plan.runs {
            match *r {
                Run::Zeros { at, len } => {
                    assert!(!write, "a write plan has no zeros");
                    buf[at / 4096..(at + len) / 4096].iter_mut().for_each(|p| p.0 = [0; 4096]);
                }
                Run::Device { at, len, fd, pos } => {
                    assert_eq!(fd, direct.as_raw_fd(), "the data file's O_DIRECT descriptor");
                    for k in 0..len / 4096 {
                        let (page, at) = (&mut buf[at / 4096 + k].0, pos + (k * 4096) as u64);
                        let n = if write {
                            rustix::io::pwrite(direct, page, at)
                        } else {
                            rustix::io::pread(direct, page, at)
                        };
                        assert_eq!(n.unwrap(), 4096);
                    }
                }
            }
        }
    }

    fn flat(buf: &[Page]) -> Vec<u8> {
        buf.iter().flat_map(|p| p.0).collect()
    }

    /// A pool on a data file with O_DIRECT plans, holding one empty thin.
    fn pool() -> (tempfile::TempDir, Arc<WithDirect>, Pool, ThinId) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let file = FileDevice::create(&path, 64 * 65536).unwrap();
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
            .unwrap();
        let data = Arc::new(WithDirect::with_direct(file, direct));
        let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
        let pool = Pool::format(meta, data.clone(), Sectors(128)).unwrap();
        let id = ThinId(1);
        pool.create_thin(id).unwrap();
        (dir, data, pool, id)
    }

    const BS: usize = 65536;

    #[test]
    fn read_plans_read_what_reads_read() {
        let (_d, dev, pool, id) = pool();
        // Blocks 0 and 1 are neighbours on the device, block 2 is a hole, block 3 maps after
        // a block of another volume.
        pool.write(id, 0, &vec![0xA1; 2 * BS]).unwrap();
        pool.create_thin(ThinId(2)).unwrap();
        pool.write(ThinId(2), 0, &vec![0xB2; BS]).unwrap();
        pool.write(id, 3 * BS as u64, &vec![0xC3; BS]).unwrap();
        let plan = pool.direct_read(id, 4096, 4 * BS - 8192).unwrap();
        let kinds: Vec<bool> = plan.runs.iter().map(|r| matches!(r, Run::Device { .. })).collect();
        assert_eq!(kinds, [true, false, true], "{plan:?}");
        let mut buf = pages((4 * BS - 8192) / 4096);
        carry_out(&plan, &mut buf, false, &dev);
        drop(plan);
        let mut want = vec![0u8; 4 * BS - 8192];
        pool.read(id, 4096, &mut want).unwrap();
        assert!(flat(&buf) == want, "the planned read differs from the pool's read");
    }

    #[test]
    fn overwrite_plans_only_for_mapped_unshared_committed_blocks() {
        let (_d, dev, pool, id) = pool();
        pool.write(id, 0, &vec![1; BS]).unwrap();
        assert!(pool.direct_overwrite(id, BS as u64, 4096, false).is_none(), "unmapped");
        assert!(pool.direct_overwrite(id, 0, 4096, true).is_none(), "mapping uncommitted");
        assert!(pool.direct_overwrite(id, 4096 + 512, 4096, false).is_none(), "unaligned");
        let plan = pool.direct_overwrite(id, 8192, 8192, false).unwrap();
        let mut buf = pages(2);
        buf.iter_mut().for_each(|p| p.0 = [7; 4096]);
        carry_out(&plan, &mut buf, true, &dev);
        drop(plan);
        let mut back = vec![0u8; BS];
        pool.read(id, 0, &mut back).unwrap();
        assert!(back[..8192].iter().all(|&b| b == 1) && back[8192..16384].iter().all(|&b| b == 7));
        pool.commit().unwrap();
        assert!(pool.direct_overwrite(id, 0, 4096, true).is_some(), "committed now");
        pool.create_snap(ThinId(2), id).unwrap();
        assert!(pool.direct_overwrite(id, 0, 4096, false).is_none(), "shared with a snapshot");
        assert!(pool.direct_read(id, 0, 4096).is_some(), "reads of shared blocks are fine");
    }

    #[test]
    fn a_plan_holds_its_blocks_until_dropped() {
        let (_d, _dev, pool, id) = pool();
        pool.write(id, 0, &vec![1; BS]).unwrap();
        let plan = pool.direct_read(id, 0, 4096).unwrap();
        // The block's stripe is held: a second plan of it is not offered, it would wait.
        assert!(pool.direct_overwrite(id, 4096, 4096, false).is_none());
        // A snapshot (which makes the block shared, so the next write copies it) waits for
        // the plan: the read cannot see a recycled block.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                pool.create_snap(ThinId(2), id).unwrap();
                tx.send(()).unwrap();
            });
            let early = rx.recv_timeout(std::time::Duration::from_millis(300));
            let waited = Err(std::sync::mpsc::RecvTimeoutError::Timeout);
            assert_eq!(early, waited, "the snapshot did not wait for the plan");
            drop(plan);
            rx.recv().unwrap();
        });
        assert!(pool.direct_overwrite(id, 4096, 4096, false).is_none(), "shared now");
    }
}
