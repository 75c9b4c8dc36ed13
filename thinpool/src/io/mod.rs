//! The block-device seam: everything above this module reads and writes bytes through
//! [`BlockDevice`], so the pool runs the same on a file, on memory, and on a device that fails
//! on purpose in tests.
//!
//! Implementations must allow concurrent calls from many threads (`&self` everywhere): the NBD
//! server issues reads and writes from several connections at once.

use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

mod direct;
mod faulty;
mod payload;
pub use direct::{Direct, DirectAt, Held, Run};
pub use faulty::{FaultPlan, FaultyDevice, Power};
pub use payload::{Payload, Written};

/// A byte-addressed device with an explicit durability barrier.
pub trait BlockDevice: Send + Sync {
    /// Fills `buf` from `offset`. Reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`. Writing past the end is an error.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every completed write durable (fdatasync for files).
    fn flush(&self) -> io::Result<()>;
    /// Current size in bytes.
    fn size(&self) -> u64;
    /// Grows the device to `new_size` bytes (files are extended sparsely). Shrinking is refused.
    fn grow(&self, new_size: u64) -> io::Result<()>;
    /// A name for error messages: the path, or what the device stands for.
    fn describe(&self) -> String;
    /// As [`BlockDevice::read_at`], but only if that cannot wait for the device (the data is
    /// in memory): `Ok(false)`, `buf` then unspecified, when it would wait or the device
    /// cannot tell. Lets the NBD server serve cached reads inline. Default: never.
    fn read_cached(&self, _buf: &mut [u8], _offset: u64) -> io::Result<bool> {
        Ok(false)
    }
    /// Where `offset..offset + len` lives for a caller's own asynchronous O_DIRECT I/O
    /// ([`Direct`]): one descriptor and a position on it; `None` when the range has no such
    /// place (no O_DIRECT descriptor, unaligned, or split over devices). Default: none.
    fn direct_at(&self, _offset: u64, _len: usize) -> Option<DirectAt> {
        None
    }
    /// Whether [`BlockDevice::write_from_pipe`] works here. Default: no.
    fn splices(&self) -> bool {
        false
    }
    /// Writes the next `len` bytes waiting in the pipe `src` at `offset`, moved by the kernel
    /// (splice) instead of copied through user space: the NBD server splices large WRITE
    /// payloads from the socket into a pipe. The bytes must all be in the pipe already. Only
    /// called where [`BlockDevice::splices`]; after an error, an unknown part was consumed.
    fn write_from_pipe(&self, _src: BorrowedFd<'_>, _len: usize, _offset: u64) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{}: cannot write from a pipe", self.describe()),
        ))
    }
}

fn out_of_range(what: &str, offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{what}: range {offset}+{len} is beyond the device end {size}"),
    )
}

/// `what` is only called for the error (naming a file allocates, and this runs per I/O).
fn check_range(
    what: impl FnOnce() -> String,
    offset: u64,
    len: usize,
    size: u64,
) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(out_of_range(&what(), offset, len, size)),
    }
}

/// A regular file (or a block device node) used through pread/pwrite/fdatasync.
pub struct FileDevice {
    file: File,
    /// The same block device opened with O_DIRECT, for reads and writes whose buffer, offset
    /// and length are [`DIRECT_ALIGN`]-aligned (the ublk queues' buffers are): the device
    /// DMAs into or out of the caller's buffer, with no copy through a second page cache of
    /// the data device. Others use `file`; the kernel keeps the two coherent (a direct read
    /// writes back dirty cached pages of its range first, a direct write invalidates them).
    /// `None` for regular files and for devices that refuse O_DIRECT.
    direct: Option<File>,
    path: PathBuf,
    size: RwLock<u64>,
    /// On tmpfs/ramfs: every read is a memory copy.
    in_memory: bool,
    /// preadv2(RWF_NOWAIT) answered EOPNOTSUPP once: do not ask again.
    no_nowait: AtomicBool,
}

impl FileDevice {
    /// Opens an existing file read-write (a block device also with O_DIRECT, see `direct`).
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        let mut dev = Self::from_file(file, path)?;
        // Block devices only (a node on devtmpfs, so `in_memory` says nothing about them).
        if dev.file.metadata()?.file_type().is_block_device() {
            dev.direct = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok();
        }
        Ok(dev)
    }

    /// Opens an existing file read-only; writes then fail with EBADF from the kernel.
    pub fn open_read_only(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        Self::from_file(file, path)
    }

    /// Creates (or truncates) a sparse file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        Self::from_file(create_sparse(path, size)?, path)
    }

    fn from_file(file: File, path: &Path) -> io::Result<Self> {
        let size = device_size(&file)?;
        let in_memory = rustix::fs::fstatfs(&file).is_ok_and(|st| {
            // Magic numbers are 32-bit; f_type's width varies by platform.
            let t = st.f_type as u32;
            // ramfs has no libc constant: 0x858458f6 (linux/magic.h).
            t == libc::TMPFS_MAGIC as u32 || t == 0x8584_58f6
        });
        Ok(Self {
            file,
            direct: None,
            path: path.to_owned(),
            size: RwLock::new(size),
            in_memory,
            no_nowait: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether aligned I/O goes through an O_DIRECT descriptor.
    pub fn direct_io(&self) -> bool {
        self.direct.is_some()
    }

    /// The O_DIRECT descriptor when `buf` (at `offset`) meets its alignment.
    fn direct_for(&self, buf: &[u8], offset: u64) -> Option<&File> {
        let aligned = |v: u64| v.is_multiple_of(DIRECT_ALIGN);
        let ok = aligned(buf.as_ptr() as u64) && aligned(offset) && aligned(buf.len() as u64);
        self.direct.as_ref().filter(|_| ok && !buf.is_empty())
    }
}

/// Alignment of buffer address, offset and length for O_DIRECT (covers every logical block
/// size up to 4 KiB).
pub const DIRECT_ALIGN: u64 = 4096;

/// Creates (or truncates) `path` as a sparse file of `size` bytes, open for reading and
/// writing.
pub fn create_sparse(path: &Path, size: u64) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    file.set_len(size)?;
    Ok(file)
}

/// Size of a regular file, or of a block device (whose metadata length is 0).
fn device_size(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices report their size through seeking to the end.
    let mut f = file;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

impl BlockDevice for FileDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(|| self.describe(), offset, buf.len(), self.size())?;
        match self.direct_for(buf, offset) {
            Some(d) => d.read_exact_at(buf, offset),
            None => self.file.read_exact_at(buf, offset),
        }
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(|| self.describe(), offset, buf.len(), self.size())?;
        match self.direct_for(buf, offset) {
            Some(d) => d.write_all_at(buf, offset),
            None => self.file.write_all_at(buf, offset),
        }
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn splices(&self) -> bool {
        true
    }

    fn write_from_pipe(&self, src: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<()> {
        use rustix::pipe::SpliceFlags;
        check_range(|| self.describe(), offset, len, self.size())?;
        let (mut at, mut left) = (offset, len);
        while left > 0 {
            // NONBLOCK on the pipe side: an empty pipe is a caller's bug, and must fail
            // rather than hang. The kernel advances `at`.
            let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
            match rustix::pipe::splice(src, None, &self.file, Some(&mut at), left, flags) {
                Ok(0) | Err(rustix::io::Errno::AGAIN) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{}: pipe ran dry {left} bytes short", self.describe()),
                    ))
                }
                Ok(n) => left -= n.min(left),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn direct_at(&self, offset: u64, len: usize) -> Option<DirectAt> {
        use std::os::fd::AsRawFd;
        let aligned = |v: u64| v.is_multiple_of(DIRECT_ALIGN);
        let inside = offset.checked_add(len as u64).is_some_and(|end| end <= self.size());
        if len == 0 || !aligned(offset) || !aligned(len as u64) || !inside {
            return None;
        }
        // The descriptor lives as long as this device.
        self.direct.as_ref().map(|f| DirectAt { fd: f.as_raw_fd(), pos: offset, keep: None })
    }

    fn read_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        if self.in_memory {
            self.read_at(buf, offset)?;
            return Ok(true);
        }
        if self.no_nowait.load(Ordering::Relaxed) {
            return Ok(false);
        }
        check_range(|| self.describe(), offset, buf.len(), self.size())?;
        // RWF_NOWAIT: page-cache hits only; a short read means part of it is not cached.
        let flags = rustix::io::ReadWriteFlags::NOWAIT;
        match rustix::io::preadv2(&self.file, &mut [io::IoSliceMut::new(buf)], offset, flags) {
            Ok(n) => Ok(n == buf.len()),
            Err(rustix::io::Errno::OPNOTSUPP) => {
                self.no_nowait.store(true, Ordering::Relaxed);
                Ok(false)
            }
            Err(_) => Ok(false),
        }
    }

    fn size(&self) -> u64 {
        *self.size.read().unwrap_or_else(|e| e.into_inner())
    }

    fn grow(&self, new_size: u64) -> io::Result<()> {
        let mut size = self.size.write().unwrap_or_else(|e| e.into_inner());
        if new_size < *size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: cannot shrink from {} to {new_size} bytes", self.describe(), *size),
            ));
        }
        if self.file.metadata()?.is_file() {
            self.file.set_len(new_size)?;
        } else if device_size(&self.file)? < new_size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: block device is smaller than {new_size} bytes", self.describe()),
            ));
        }
        *size = new_size;
        Ok(())
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

/// An in-memory device, for unit tests and the model checks.
pub struct MemDevice {
    bytes: RwLock<Vec<u8>>,
    name: String,
}

impl MemDevice {
    pub fn new(size: u64, name: &str) -> Self {
        Self { bytes: RwLock::new(vec![0; size as usize]), name: name.to_owned() }
    }

    /// A copy of the whole contents (for crash tests and comparisons).
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl BlockDevice for MemDevice {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let bytes = self.bytes.read().unwrap_or_else(|e| e.into_inner());
        check_range(|| self.name.clone(), offset, buf.len(), bytes.len() as u64)?;
        let start = offset as usize;
        buf.copy_from_slice(&bytes[start..start + buf.len()]);
        Ok(())
    }

    fn read_cached(&self, buf: &mut [u8], offset: u64) -> io::Result<bool> {
        self.read_at(buf, offset)?;
        Ok(true)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        check_range(|| self.name.clone(), offset, buf.len(), bytes.len() as u64)?;
        let start = offset as usize;
        bytes[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn size(&self) -> u64 {
        self.bytes.read().unwrap_or_else(|e| e.into_inner()).len() as u64
    }

    fn grow(&self, new_size: u64) -> io::Result<()> {
        let mut bytes = self.bytes.write().unwrap_or_else(|e| e.into_inner());
        if new_size < bytes.len() as u64 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot shrink"));
        }
        bytes.resize(new_size as usize, 0);
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

#[cfg(test)]
pub(crate) mod contract {
    #![allow(clippy::unwrap_used)]
    //! The contract every [`BlockDevice`] keeps, written once and run for each implementation.
    use super::*;

    pub fn check(dev: &dyn BlockDevice) {
        let size = dev.size();
        assert!(size >= 8192, "contract needs at least 8 KiB");
        let mut buf = vec![0xAAu8; 4096];
        dev.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "a new device reads as zeros");
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        dev.write_at(&data, 1000).unwrap();
        let mut back = vec![0u8; 5000];
        dev.read_at(&mut back, 1000).unwrap();
        assert_eq!(back, data);
        let mut cached = vec![0u8; 5000];
        if dev.read_cached(&mut cached, 1000).unwrap() {
            assert_eq!(cached, data, "a cached read returns the data");
        }
        let past = dev.read_cached(&mut buf, size - 100);
        assert!(!matches!(past, Ok(true)), "cached reads past the end do not succeed");
        dev.flush().unwrap();
        let past_end = |e: io::Error| {
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
            assert!(e.to_string().contains("is beyond the"), "{e}");
        };
        past_end(dev.read_at(&mut buf, size - 100).unwrap_err());
        past_end(dev.write_at(&buf, u64::MAX - 10).unwrap_err());
        dev.grow(size + 4096).unwrap();
        assert_eq!(dev.size(), size + 4096);
        dev.read_at(&mut buf, size).unwrap();
        assert!(buf.iter().all(|&b| b == 0), "grown space reads as zeros");
        // Refused as a bad size (devices), or as not the way to resize (volume group regions).
        let e = dev.grow(size).unwrap_err();
        assert!(
            matches!(e.kind(), io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported),
            "shrinking is refused: {e}"
        );
        assert!(!dev.describe().is_empty());
    }

    #[test]
    fn mem_device_keeps_the_contract() {
        check(&MemDevice::new(1 << 16, "mem"));
    }

    #[test]
    fn file_device_on_tmpfs_reads_cached() {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let dev = FileDevice::create(&dir.path().join("dev"), 1 << 16).unwrap();
        dev.write_at(&[7u8; 4096], 4096).unwrap();
        let mut buf = vec![0u8; 4096];
        assert!(dev.read_cached(&mut buf, 4096).unwrap(), "tmpfs data is always in memory");
        assert!(buf.iter().all(|&b| b == 7));
        let e = dev.read_cached(&mut buf, (1 << 16) - 100).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "past the end: {e}");
    }

    #[test]
    fn file_device_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        check(&FileDevice::create(&dir.path().join("dev"), 1 << 16).unwrap());
    }
}
