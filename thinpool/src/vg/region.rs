//! A logical volume: a [`BlockDevice`] made of extent segments on the group's devices, mapped
//! linearly like dm-linear. Growth goes through the volume group, which commits new segments
//! and then swaps in the longer map; the region itself refuses `grow`.

use crate::io::{BlockDevice, DirectAt};
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{Arc, RwLock};

/// One stretch of the region: `len` bytes at region offset `start` live at `dev_offset` on
/// `device`.
#[derive(Clone)]
pub struct Piece {
    pub start: u64,
    pub len: u64,
    pub device: Arc<dyn BlockDevice>,
    pub dev_offset: u64,
}

struct Map {
    pieces: Vec<Piece>,
    size: u64,
}

/// The byte-level view of a `tmeta` or `tdata` region.
pub struct Region {
    name: String,
    map: RwLock<Arc<Map>>,
}

impl Region {
    /// Builds a region from pieces in region order (each piece's `start` is ignored and
    /// recomputed, so callers pass lengths and device offsets only).
    pub fn new(name: &str, pieces: Vec<Piece>) -> Self {
        Self { name: name.to_owned(), map: RwLock::new(Arc::new(Self::build(pieces))) }
    }

    fn build(mut pieces: Vec<Piece>) -> Map {
        let mut at = 0u64;
        for p in &mut pieces {
            p.start = at;
            at += p.len;
        }
        Map { pieces, size: at }
    }

    /// Replaces the mapping; the volume group calls this after committing a longer region.
    pub(crate) fn remap(&self, pieces: Vec<Piece>) {
        let map = Arc::new(Self::build(pieces));
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = map;
    }

    fn current(&self) -> Arc<Map> {
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Number of segments (after merging at build time by the group).
    pub fn segments(&self) -> usize {
        self.current().pieces.len()
    }

    /// Calls `f(piece, offset_in_piece, range_in_buf)` for each piece `[offset, offset+len)`
    /// touches, found by binary search.
    fn for_each(
        &self,
        what: &str,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&Piece, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        let map = self.current();
        let end = offset.checked_add(len as u64).filter(|&e| e <= map.size).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{what} {}: range {offset}+{len} is beyond the end {}",
                    self.name, map.size
                ),
            )
        })?;
        let mut i = map.pieces.partition_point(|p| p.start + p.len <= offset);
        let mut pos = offset;
        while pos < end {
            let p = &map.pieces[i];
            let within = pos - p.start;
            let n = (p.len - within).min(end - pos);
            let b = (pos - offset) as usize;
            f(p, p.dev_offset + within, b..b + n as usize)?;
            pos += n;
            i += 1;
        }
        Ok(())
    }
}

impl BlockDevice for Region {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let len = buf.len();
        self.for_each("read", offset, len, |p, at, r| p.device.read_at(&mut buf[r], at))
    }

    fn read_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        let mut all = true;
        self.for_each("read", offset, buf.len(), |p, at, r| {
            all = all && p.device.read_cached(&mut buf[r], at)?;
            Ok(())
        })?;
        Ok(all)
    }

    fn direct_at(&self, offset: u64, len: usize) -> Option<DirectAt> {
        let map = self.current();
        let i = map.pieces.partition_point(|p| p.start + p.len <= offset);
        let p = map.pieces.get(i)?;
        let within = offset - p.start;
        if within + len as u64 > p.len {
            return None;
        }
        let mut at = p.device.direct_at(p.dev_offset + within, len)?;
        // A remap swaps in a new map; this one, and with it the piece's device and its
        // descriptor, stays alive as long as the plan holds it.
        if at.keep.is_none() {
            at.keep = Some(Box::new(map.clone()));
        }
        Some(at)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.for_each("write", offset, buf.len(), |p, at, r| p.device.write_at(&buf[r], at))
    }

    fn splices(&self) -> bool {
        self.current().pieces.iter().all(|p| p.device.splices())
    }

    fn write_from_pipe(&self, src: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<()> {
        // Pieces come in offset order, and the pipe is consumed in that order.
        self.for_each("write", offset, len, |p, at, r| p.device.write_from_pipe(src, r.len(), at))
    }

    fn flush(&self) -> io::Result<()> {
        let map = self.current();
        let mut done: Vec<*const ()> = Vec::new();
        for p in &map.pieces {
            // Flush each underlying device once, however many segments it holds.
            let id = Arc::as_ptr(&p.device) as *const ();
            if !done.contains(&id) {
                done.push(id);
                p.device.flush()?;
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.current().size
    }

    fn grow(&self, new_size: u64) -> io::Result<()> {
        let size = self.size();
        if new_size == size {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!(
                "{}: a region is resized by the volume group (grow_data/grow_metadata), \
                 not to {new_size} bytes directly (now {size})",
                self.name
            ),
        ))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::io::MemDevice;
    use crate::pool::tests::TestData;
    use std::os::fd::AsRawFd;

    #[test]
    fn direct_ranges_map_through_the_pieces_and_keep_them() {
        // Each disk offers the O_DIRECT descriptor of a file of its own; nothing reads
        // through it here, the test only follows which descriptor a range lands on.
        let disk = || {
            let file = tempfile::tempfile().unwrap();
            let fd = file.as_raw_fd();
            let d: Arc<dyn BlockDevice> =
                Arc::new(TestData::with_direct(MemDevice::new(1 << 20, "disk"), file));
            (d, fd)
        };
        let ((a, fd_a), (b, fd_b)) = (disk(), disk());
        let piece = |device: &Arc<dyn BlockDevice>, dev_offset, len| Piece {
            start: 0,
            len,
            device: device.clone(),
            dev_offset,
        };
        let r = Region::new("tdata", vec![piece(&a, 65536, 131072), piece(&b, 8192, 65536)]);
        let on_a = r.direct_at(4096, 8192).unwrap();
        assert_eq!((on_a.fd, on_a.pos), (fd_a, 65536 + 4096));
        drop(on_a);
        let at = r.direct_at(131072 + 4096, 4096).unwrap();
        assert_eq!((at.fd, at.pos), (fd_b, 8192 + 4096));
        assert!(at.keep.is_some(), "the plan keeps the region's map, and its disks, alive");
        assert!(r.direct_at(126976, 8192).is_none(), "a range split over two disks");
        assert!(r.direct_at(196608, 4096).is_none(), "beyond the region");
        // A remap (growth) leaves a plan's map, and so its disks, as they were.
        let before = Arc::strong_count(&b);
        r.remap(vec![piece(&a, 65536, 131072)]);
        assert_eq!(Arc::strong_count(&b), before, "the held map still owns disk b");
        drop(at);
        assert_eq!(Arc::strong_count(&b), before - 1);
    }
}
