//! The export seam: what a frontend (the NBD server, the ublk queues) needs from a volume
//! ([`Export`]) and from the set of volumes ([`Catalog`]), and its backends.
//!
//! ```text
//! mod.rs   Export, Catalog, ExportError (a kind a frontend maps to its errno), Extent
//! mem      memory-backed exports (tests, benchmarks)
//! file     sparse-file exports (tests, benchmarks, the peers' bench setup)
//! pool     every volume of the thin pool, through the service's gates
//! ```
//!
//! Frontends know nothing else about the pool; the protocol's error numbers and status bits
//! are theirs (see `nbd::server`), so this room has no NBD in it.

use std::fmt;
use std::sync::Arc;

use thiserror::Error;

pub use crate::io::{Direct, Payload, Written};

/// How [`Export::write_zeroes`] may zero a range: NBD_CMD_WRITE_ZEROES's flags (NBD spec,
/// "Request types"), or ublk's WRITE_ZEROES with its `UBLK_IO_F_NOUNMAP` and `FUA` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Zeroing {
    /// Unmapping is allowed (no `NBD_CMD_FLAG_NO_HOLE`); else the range stays provisioned.
    pub may_trim: bool,
    /// `NBD_CMD_FLAG_FAST_ZERO`: fail with [`ErrorKind::NotSupported`], changing nothing,
    /// unless this is faster than writing zeros.
    pub fast: bool,
    /// Durable before the reply.
    pub fua: bool,
}

/// How [`Export::write`] is to be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteMode {
    /// Force unit access (`NBD_CMD_FLAG_FUA`, ublk's `UBLK_IO_F_FUA`): the data, and whatever
    /// maps it, is durable on return.
    pub fua: bool,
    /// Only if that cannot block for long; [`Written::Declined`] otherwise.
    pub quick: bool,
}

impl WriteMode {
    /// A full write (it may allocate, copy or wait), durable on return with `fua`.
    pub fn full(fua: bool) -> Self {
        WriteMode { fua, quick: false }
    }

    /// A quick write, never FUA (that commits).
    pub const QUICK: WriteMode = WriteMode { fua: false, quick: true };
}

pub mod file;
pub mod mem;
pub mod pool;

/// What went wrong, as far as an NBD client can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The pool (or file system) is out of space.
    NoSpace,
    /// The range is outside the export.
    OutOfRange,
    /// The export is read-only.
    ReadOnly,
    /// The operation cannot be done the requested way (FAST_ZERO that would not be fast).
    NotSupported,
    /// Anything else.
    Io,
}

/// A backend failure: a kind the protocol edge maps to an errno, plus context for the log.
#[derive(Debug, Error)]
#[error("{kind:?} during {op} at {offset}+{len}: {detail}")]
pub struct ExportError {
    pub kind: ErrorKind,
    pub op: &'static str,
    pub offset: u64,
    pub len: u64,
    pub detail: String,
}

impl ExportError {
    pub fn new(
        kind: ErrorKind,
        op: &'static str,
        offset: u64,
        len: u64,
        detail: impl fmt::Display,
    ) -> Self {
        Self { kind, op, offset, len, detail: detail.to_string() }
    }

    /// Wraps an I/O error, keeping ENOSPC/EDQUOT/EFBIG apart as [`ErrorKind::NoSpace`].
    pub fn from_io(op: &'static str, offset: u64, len: u64, e: &std::io::Error) -> Self {
        let kind = match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG) => ErrorKind::NoSpace,
            Some(libc::EOPNOTSUPP) => ErrorKind::NotSupported,
            Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::EBADF) => ErrorKind::ReadOnly,
            _ => ErrorKind::Io,
        };
        Self::new(kind, op, offset, len, e)
    }
}

pub type ExportResult<T> = Result<T, ExportError>;

/// A run of bytes with one allocation state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    /// Not allocated in the backing store (reads as zeros for every export we serve).
    pub hole: bool,
    /// Known to read as zeros.
    pub zero: bool,
}

impl Extent {
    pub fn data(len: u64) -> Self {
        Self { len, hole: false, zero: false }
    }

    pub fn hole(len: u64) -> Self {
        Self { len, hole: true, zero: true }
    }
}

/// Appends `e` to `v`, merging it into the last extent when the state is equal.
pub fn push_extent(v: &mut Vec<Extent>, e: Extent) {
    if e.len == 0 {
        return;
    }
    match v.last_mut() {
        Some(last) if last.hole == e.hole && last.zero == e.zero => last.len += e.len,
        _ => v.push(e),
    }
}

/// The extents of runs of `(length, mapped)` bytes: data where mapped, holes elsewhere,
/// neighbours of one state merged.
pub fn extents_of_runs(runs: impl IntoIterator<Item = (u64, bool)>) -> Vec<Extent> {
    let mut v = Vec::new();
    for (n, mapped) in runs {
        push_extent(&mut v, if mapped { Extent::data(n) } else { Extent::hole(n) });
    }
    v
}

/// A run of bytes that differs, or not, from the same bytes of a base volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Changed {
    pub len: u64,
    pub changed: bool,
}

/// Largest request payload a frontend passes to an export (the NBD server's limit too; the
/// spec lets a server refuse more than 32 MiB).
pub const MAX_PAYLOAD: u32 = 32 << 20;

/// Block-size constraints advertised with `NBD_INFO_BLOCK_SIZE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSize {
    pub minimum: u32,
    pub preferred: u32,
    pub maximum: u32,
}

impl Default for BlockSize {
    fn default() -> Self {
        Self { minimum: 1, preferred: 4096, maximum: MAX_PAYLOAD }
    }
}

/// One served volume. All methods take `&self` and are called from many threads at once;
/// ranges have been checked against [`Export::size`] by the server.
pub trait Export: Send + Sync {
    fn size(&self) -> u64;
    fn read(&self, offset: u64, buf: &mut [u8]) -> ExportResult<()>;
    /// The write entry of every frontend (NBD connection, kernel nbd, ublk): writes
    /// `payload` at `offset`; with `how.fua` the data (and whatever maps it) is durable on
    /// return. With `how.quick`, only if that cannot block for long (no allocation, copy,
    /// commit or wait for space, so never with `fua`): [`Written::Declined`], nothing
    /// changed, otherwise, and errors may be answered that way too (the full write reports
    /// them). The NBD server serves quick writes inline on the thread that read them. A full
    /// write answers [`Written::Done`] or an error.
    fn write(&self, offset: u64, payload: &Payload<'_>, how: WriteMode) -> ExportResult<Written>;
    /// Reads only if that is quick and cannot block for long (the data is in memory);
    /// returns false, `buf` then unspecified, when [`Export::read`] is needed (errors are
    /// left to it too). Quick reads are served inline like quick writes.
    fn read_quick(&self, _offset: u64, _buf: &mut [u8]) -> bool {
        false
    }
    /// A plan to read `len` bytes at `offset` with the caller's own asynchronous I/O (a ublk
    /// queue's io_uring), under the same conditions as a quick read: nothing to wait for;
    /// `None` when [`Export::read`] is needed. See [`Direct`].
    fn direct_read(&self, _offset: u64, _len: usize) -> Option<Direct<'_>> {
        None
    }
    /// A plan to write `data` at `offset` with the caller's own asynchronous I/O, under the
    /// same conditions as a quick write (so never with `fua`); `None` when [`Export::write`]
    /// is needed. The write counts as done once the caller's I/O completed and the plan is
    /// dropped.
    fn direct_write(&self, _offset: u64, _data: &[u8], _fua: bool) -> Option<Direct<'_>> {
        None
    }
    /// Whether large WRITE payloads should be spliced into a pipe (a [`Payload::piped`])
    /// rather than read into memory. Default: no.
    fn splices_writes(&self) -> bool {
        false
    }
    /// Makes the range read as zeros, as `how` allows.
    fn write_zeroes(&self, offset: u64, len: u64, how: Zeroing) -> ExportResult<()>;
    /// Discards the range; later reads return zeros.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()>;
    /// Makes every completed write durable, for every connection.
    fn flush(&self) -> ExportResult<()>;
    /// Allocation state from `offset`, covering at least one byte and at most up to the end
    /// of the export; may stop before `offset + len`.
    fn extents(&self, offset: u64, len: u64) -> ExportResult<Vec<Extent>>;
    /// Prefetch hint.
    fn cache(&self, _offset: u64, _len: u64) -> ExportResult<()> {
        Ok(())
    }
    fn read_only(&self) -> bool {
        false
    }
    /// Whether [`Export::extents`] is cheap enough to call on every read, so structured READ
    /// replies can skip holes (`OFFSET_HOLE`). False for files: SEEK_HOLE on tmpfs walks the
    /// page cache to the next hole, which made every 4 KiB read scan the whole file.
    fn sparse_reads(&self) -> bool {
        false
    }
    fn block_size(&self) -> BlockSize {
        BlockSize::default()
    }
    /// Names of the volumes [`Export::changes_since`] can compare this export with (the
    /// other volumes of its pool). Default: none.
    fn change_bases(&self) -> Vec<String> {
        Vec::new()
    }
    /// Which bytes from `offset` differ from volume `base` (a snapshot taken earlier, say),
    /// covering at least one byte and at most `len`; `Ok(None)` when `base` is not a volume
    /// this export can be compared with. Default: none can.
    fn changes_since(
        &self,
        _base: &str,
        _offset: u64,
        _len: u64,
    ) -> ExportResult<Option<Vec<Changed>>> {
        Ok(None)
    }
}

/// Name and description of an export, as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
}

/// The set of exports. Looked up at every handshake, so volumes created or removed while the
/// server runs appear and disappear.
pub trait Catalog: Send + Sync {
    fn list(&self) -> Vec<ExportInfo>;
    fn open(&self, name: &str) -> Option<Arc<dyn Export>>;
    /// The export for a client in the same machine whose page cache outlives this server
    /// process (the kernel nbd client of the appliance). Such a client marks data clean once
    /// a write is acknowledged; if the server dies before committing, the mapping of that
    /// write would be lost while nothing above notices. So every acknowledged change must
    /// survive the process dying (data and metadata written to the backing devices; a FLUSH
    /// still decides durability against power loss). Default: [`Catalog::open`].
    fn open_for_local_client(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.open(name)
    }
    /// The export an empty name refers to, if any.
    fn default_name(&self) -> Option<String> {
        None
    }
    /// Called periodically by the server; commits pending metadata so that every mapping
    /// change is durable within about a second even if no client flushes (data written in
    /// place waits for the client's FLUSH or FUA, as dm-thin's periodic commit leaves it).
    fn commit_if_dirty(&self) -> ExportResult<()> {
        Ok(())
    }
}
