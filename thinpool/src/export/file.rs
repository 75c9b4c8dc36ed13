//! A sparse-file export: pread/pwrite, holes punched for trim and zeroing, allocation read back
//! with SEEK_DATA/SEEK_HOLE. Used by tests and benchmarks (on /tmp or /dev/shm).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, SeekFrom};

use super::*;

/// Most extents returned by one `extents` call; clients ask again for the rest.
const MAX_EXTENTS_PER_CALL: usize = 4096;

pub struct FileExport {
    file: File,
    path: PathBuf,
    size: u64,
    read_only: bool,
}

impl FileExport {
    /// Creates (or truncates) a sparse file of `size` bytes.
    pub fn create(path: &Path, size: u64) -> std::io::Result<Self> {
        let file = crate::io::create_sparse(path, size)?;
        Ok(Self { file, path: path.to_owned(), size, read_only: false })
    }

    /// Opens an existing file; its current length is the export size.
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().read(true).write(!read_only).open(path)?;
        let size = file.metadata()?.len();
        Ok(Self { file, path: path.to_owned(), size, read_only })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(&self, op: &'static str, offset: u64, len: u64, write: bool) -> ExportResult<()> {
        if write && self.read_only {
            return Err(ExportError::new(ErrorKind::ReadOnly, op, offset, len, "read-only"));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(ExportError::new(ErrorKind::OutOfRange, op, offset, len, "beyond the end")),
        }
    }

    fn io(&self, op: &'static str, offset: u64, len: u64, e: std::io::Error) -> ExportError {
        let mut err = ExportError::from_io(op, offset, len, &e);
        err.detail = format!("{}: {}", self.path.display(), err.detail);
        err
    }

    fn sync(&self, op: &'static str, offset: u64, len: u64) -> ExportResult<()> {
        self.file.sync_data().map_err(|e| self.io(op, offset, len, e))
    }

    fn write_zero_bytes(&self, offset: u64, len: u64) -> ExportResult<()> {
        let zeros = vec![0u8; (1usize << 20).min(len as usize)];
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let n = (end - pos).min(zeros.len() as u64) as usize;
            self.file
                .write_all_at(&zeros[..n], pos)
                .map_err(|e| self.io("write_zeroes", offset, len, e))?;
            pos += n as u64;
        }
        Ok(())
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> std::io::Result<()> {
        rustix::fs::fallocate(&self.file, flags, offset, len).map_err(std::io::Error::from)
    }

    fn punch(&self, offset: u64, len: u64) -> std::io::Result<()> {
        self.fallocate(FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE, offset, len)
    }
}

fn unsupported(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::EOPNOTSUPP)
}

impl Export for FileExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> ExportResult<()> {
        self.check("read", offset, buf.len() as u64, false)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io("read", offset, buf.len() as u64, e))
    }

    fn write(&self, offset: u64, payload: &Payload<'_>, how: WriteMode) -> ExportResult<Written> {
        let WriteMode { fua, quick } = how;
        if quick {
            // pwrite on a file may wait for the disk (dirty-page throttling).
            return Ok(Written::Declined);
        }
        let len = payload.len() as u64;
        self.check("write", offset, len, true)?;
        payload
            .bytes(|data| self.file.write_all_at(data, offset))
            .and_then(|r| r)
            .map_err(|e| self.io("write", offset, len, e))?;
        if fua {
            self.sync("write", offset, len)?;
        }
        Ok(Written::Done)
    }

    fn write_zeroes(&self, offset: u64, len: u64, how: Zeroing) -> ExportResult<()> {
        let Zeroing { may_trim, fast, fua } = how;
        self.check("write_zeroes", offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        let res = if may_trim {
            self.punch(offset, len)
        } else {
            // Provisioned zeros: ZERO_RANGE, or (tmpfs) punch then allocate.
            self.fallocate(FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE, offset, len)
                .or_else(|e| {
                    if !unsupported(&e) {
                        return Err(e);
                    }
                    self.punch(offset, len)?;
                    self.fallocate(FallocateFlags::KEEP_SIZE, offset, len)
                })
        };
        match res {
            Ok(()) => {}
            Err(e) if unsupported(&e) && fast => {
                return Err(ExportError::new(
                    ErrorKind::NotSupported,
                    "write_zeroes",
                    offset,
                    len,
                    "zeroing would not be fast",
                ));
            }
            Err(e) if unsupported(&e) => self.write_zero_bytes(offset, len)?,
            Err(e) => return Err(self.io("write_zeroes", offset, len, e)),
        }
        if fua {
            self.sync("write_zeroes", offset, len)?;
        }
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()> {
        self.check("trim", offset, len, true)?;
        if len == 0 {
            return Ok(());
        }
        match self.punch(offset, len) {
            Ok(()) => {}
            // Reads after trim must return zeros, so fall back to writing them.
            Err(e) if unsupported(&e) => self.write_zero_bytes(offset, len)?,
            Err(e) => return Err(self.io("trim", offset, len, e)),
        }
        if fua {
            self.sync("trim", offset, len)?;
        }
        Ok(())
    }

    fn flush(&self) -> ExportResult<()> {
        self.sync("flush", 0, 0)
    }

    fn extents(&self, offset: u64, len: u64) -> ExportResult<Vec<Extent>> {
        self.check("extents", offset, len, false)?;
        let end = offset + len;
        let mut v = Vec::new();
        let mut pos = offset;
        while pos < end && v.len() < MAX_EXTENTS_PER_CALL {
            let data = match rustix::fs::seek(&self.file, SeekFrom::Data(pos)) {
                Ok(d) => d.min(self.size),
                Err(rustix::io::Errno::NXIO) => self.size,
                Err(e) => return Err(self.io("extents", offset, len, e.into())),
            };
            if data > pos {
                push_extent(&mut v, Extent::hole(data.min(end) - pos));
                pos = data;
                continue;
            }
            let hole = match rustix::fs::seek(&self.file, SeekFrom::Hole(pos)) {
                Ok(h) => h.min(self.size),
                Err(rustix::io::Errno::NXIO) => self.size,
                Err(e) => return Err(self.io("extents", offset, len, e.into())),
            };
            // A hole at `pos` right after SEEK_DATA said data: raced with a punch; report data.
            let stop = if hole > pos { hole.min(end) } else { (pos + 1).min(end) };
            push_extent(&mut v, Extent::data(stop - pos));
            pos = stop;
        }
        Ok(v)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }
}
