//! In-memory exports and catalog, for tests and benchmarks. Storage is allocated per 64 KiB
//! chunk on first write, so block status and sparse reads see real holes.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use super::*;

const CHUNK: u64 = 64 << 10;

fn lock_err<T>(e: std::sync::PoisonError<T>) -> T {
    e.into_inner()
}

/// A memory-backed export of a fixed size.
pub struct MemExport {
    size: u64,
    chunks: Vec<RwLock<Option<Box<[u8]>>>>,
    read_only: bool,
}

impl MemExport {
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK) as usize;
        Self { size, chunks: (0..n).map(|_| RwLock::new(None)).collect(), read_only: false }
    }

    pub fn new_read_only(size: u64) -> Self {
        Self { read_only: true, ..Self::new(size) }
    }

    /// Number of allocated chunks (for tests).
    pub fn mapped_chunks(&self) -> usize {
        self.chunks.iter().filter(|c| c.read().unwrap_or_else(lock_err).is_some()).count()
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> ExportResult<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ExportError::new(ErrorKind::OutOfRange, op, offset, len, "beyond the end")),
        }
    }

    fn check_writable(&self, op: &'static str, offset: u64, len: u64) -> ExportResult<()> {
        if self.read_only {
            return Err(ExportError::new(ErrorKind::ReadOnly, op, offset, len, "read-only"));
        }
        self.check(op, offset, len)
    }

    /// Calls `f(chunk index, offset in chunk, range in the caller's buffer)` per chunk piece.
    fn pieces(offset: u64, len: u64, mut f: impl FnMut(usize, usize, std::ops::Range<usize>)) {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let idx = pos / CHUNK;
            let within = pos % CHUNK;
            let n = (CHUNK - within).min(end - pos);
            let b = (pos - offset) as usize;
            f(idx as usize, within as usize, b..b + n as usize);
            pos += n;
        }
    }

    fn zero_range(&self, offset: u64, len: u64, unmap: bool) {
        Self::pieces(offset, len, |idx, within, r| {
            let mut c = self.chunks[idx].write().unwrap_or_else(lock_err);
            let whole = within == 0 && r.len() as u64 == CHUNK;
            if whole && unmap {
                *c = None;
            } else if let Some(data) = c.as_mut() {
                data[within..within + r.len()].fill(0);
            } else if !unmap {
                *c = Some(vec![0u8; CHUNK as usize].into_boxed_slice());
            }
        });
    }
}

impl Export for MemExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> ExportResult<()> {
        self.check("read", offset, buf.len() as u64)?;
        Self::pieces(offset, buf.len() as u64, |idx, within, r| {
            let c = self.chunks[idx].read().unwrap_or_else(lock_err);
            match c.as_ref() {
                Some(data) => buf[r.clone()].copy_from_slice(&data[within..within + r.len()]),
                None => buf[r].fill(0),
            }
        });
        Ok(())
    }

    /// Memory never waits: every write is quick.
    fn write(&self, offset: u64, payload: &Payload<'_>, _how: WriteMode) -> ExportResult<Written> {
        let len = payload.len() as u64;
        self.check_writable("write", offset, len)?;
        payload
            .bytes(|data| {
                Self::pieces(offset, len, |idx, within, r| {
                    let mut c = self.chunks[idx].write().unwrap_or_else(lock_err);
                    let chunk =
                        c.get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
                    chunk[within..within + r.len()].copy_from_slice(&data[r]);
                })
            })
            .map_err(|e| ExportError::from_io("write", offset, len, &e))?;
        Ok(Written::Done)
    }

    fn read_quick(&self, offset: u64, buf: &mut [u8]) -> bool {
        self.read(offset, buf).is_ok()
    }

    fn write_zeroes(&self, offset: u64, len: u64, how: Zeroing) -> ExportResult<()> {
        self.check_writable("write_zeroes", offset, len)?;
        self.zero_range(offset, len, how.may_trim);
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, _fua: bool) -> ExportResult<()> {
        self.check_writable("trim", offset, len)?;
        self.zero_range(offset, len, true);
        Ok(())
    }

    fn flush(&self) -> ExportResult<()> {
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> ExportResult<Vec<Extent>> {
        self.check("extents", offset, len)?;
        let mut runs = Vec::new();
        Self::pieces(offset, len, |idx, _, r| {
            let mapped = self.chunks[idx].read().unwrap_or_else(lock_err).is_some();
            runs.push((r.len() as u64, mapped));
        });
        Ok(extents_of_runs(runs))
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn sparse_reads(&self) -> bool {
        true
    }
}

type Entry = (Arc<dyn Export>, String);

/// A catalog whose exports are added and removed by the caller (tests, benchmarks).
#[derive(Default)]
pub struct MemCatalog {
    exports: RwLock<BTreeMap<String, Entry>>,
}

impl MemCatalog {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, name: &str, description: &str, export: Arc<dyn Export>) {
        self.exports
            .write()
            .unwrap_or_else(lock_err)
            .insert(name.to_owned(), (export, description.to_owned()));
    }

    pub fn remove(&self, name: &str) -> bool {
        self.exports.write().unwrap_or_else(lock_err).remove(name).is_some()
    }
}

impl Catalog for MemCatalog {
    fn list(&self) -> Vec<ExportInfo> {
        self.exports
            .read()
            .unwrap_or_else(lock_err)
            .iter()
            .map(|(n, (_, d))| ExportInfo { name: n.clone(), description: d.clone() })
            .collect()
    }

    fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.exports.read().unwrap_or_else(lock_err).get(name).map(|(e, _)| e.clone())
    }
}
