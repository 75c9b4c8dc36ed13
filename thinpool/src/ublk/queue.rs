//! One ublk request: decoded from the kernel's I/O descriptor (a pure codec, tested on any
//! host), then served by an [`Export`] with the result the driver expects (bytes done or a
//! negative errno).
//!
//! The descriptor (`struct ublksrv_io_desc`, include/uapi/linux/ublk_cmd.h) carries
//! `op_flags` (operation in the low 8 bits, `UBLK_IO_F_*` flags above), `nr_sectors` and
//! `start_sector`, both in 512-byte sectors whatever the logical block size is.

use crate::export::{ErrorKind, Export, ExportError, Payload, WriteMode, Zeroing};

/// `UBLK_IO_OP_*` (include/uapi/linux/ublk_cmd.h).
const OP_READ: u32 = 0;
const OP_WRITE: u32 = 1;
const OP_FLUSH: u32 = 2;
const OP_DISCARD: u32 = 3;
const OP_WRITE_ZEROES: u32 = 5;
/// `UBLK_IO_F_FUA`: the write must be durable when completed.
const F_FUA: u32 = 1 << 13;
/// `UBLK_IO_F_NOUNMAP`: WRITE_ZEROES must leave the range provisioned.
const F_NOUNMAP: u32 = 1 << 15;

/// A decoded request. Offsets and lengths in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read { offset: u64, len: usize },
    Write { offset: u64, len: usize, fua: bool },
    Flush,
    Discard { offset: u64, len: u64 },
    WriteZeroes { offset: u64, len: u64, may_trim: bool, fua: bool },
}

/// Why a descriptor is refused before it reaches the export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// An operation this device does not advertise (zoned ops, WRITE_SAME).
    Unsupported(u32),
    /// A data transfer larger than the tag's buffer (the driver never sends one; checked
    /// anyway so a bad descriptor cannot index past the buffer).
    TooLarge,
    /// The range ends beyond the device.
    OutOfRange,
}

impl Invalid {
    /// The negative errno the driver completes the request with.
    pub fn errno(self) -> i32 {
        match self {
            Self::Unsupported(_) => -libc::EOPNOTSUPP,
            Self::TooLarge | Self::OutOfRange => -libc::EINVAL,
        }
    }
}

/// Decodes one descriptor for a device of `size` bytes whose tags have `buf_len`-byte buffers.
pub fn decode(
    op_flags: u32,
    start_sector: u64,
    nr_sectors: u32,
    size: u64,
    buf_len: usize,
) -> Result<Request, Invalid> {
    let op = op_flags & 0xff;
    if op == OP_FLUSH {
        // A flush has no range: the block layer's flush request carries whatever sector
        // (often all ones), so it is not looked at.
        return Ok(Request::Flush);
    }
    let offset = start_sector.checked_mul(512).ok_or(Invalid::OutOfRange)?;
    let len = u64::from(nr_sectors) * 512;
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Invalid::OutOfRange);
    }
    let fua = op_flags & F_FUA != 0;
    let transfer = |len: u64| usize::try_from(len).ok().filter(|l| *l <= buf_len);
    Ok(match op {
        OP_READ => Request::Read { offset, len: transfer(len).ok_or(Invalid::TooLarge)? },
        OP_WRITE => Request::Write { offset, len: transfer(len).ok_or(Invalid::TooLarge)?, fua },
        OP_DISCARD => Request::Discard { offset, len },
        OP_WRITE_ZEROES => {
            Request::WriteZeroes { offset, len, may_trim: op_flags & F_NOUNMAP == 0, fua }
        }
        other => return Err(Invalid::Unsupported(other)),
    })
}

/// The negative errno for an export failure, as the block layer maps it back
/// (`errno_to_blk_status`: ENOSPC → BLK_STS_NOSPC, EOPNOTSUPP → BLK_STS_NOTSUPP, ...).
pub fn errno(e: &ExportError) -> i32 {
    match e.kind {
        ErrorKind::NoSpace => -libc::ENOSPC,
        ErrorKind::OutOfRange => -libc::EINVAL,
        ErrorKind::ReadOnly => -libc::EROFS,
        ErrorKind::NotSupported => -libc::EOPNOTSUPP,
        ErrorKind::Io => -libc::EIO,
    }
}

/// Serves `req` on `export` with the tag's buffer `buf`; returns what the request completes
/// with: bytes transferred (0 for the others) or a negative errno.
pub fn serve(export: &dyn Export, req: Request, buf: &mut [u8]) -> i32 {
    let done = |len: usize| i32::try_from(len).unwrap_or(i32::MAX);
    let r = match req {
        Request::Read { offset, len } => export.read(offset, &mut buf[..len]).map(|()| done(len)),
        Request::Write { offset, len, fua } => export
            .write(offset, &Payload::mem(&buf[..len]), WriteMode::full(fua))
            .map(|_| done(len)),
        Request::Flush => export.flush().map(|()| 0),
        Request::Discard { offset, len } => export.trim(offset, len, false).map(|()| 0),
        Request::WriteZeroes { offset, len, may_trim, fua } => {
            export.write_zeroes(offset, len, Zeroing { may_trim, fast: false, fua }).map(|()| 0)
        }
    };
    r.unwrap_or_else(|e| {
        tracing::warn!("ublk: {e}");
        errno(&e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::mem::MemExport;

    const MIB: u64 = 1 << 20;

    #[test]
    fn rt_descriptors_decode_to_requests() {
        let d = |op, start, n| decode(op, start, n, 16 * MIB, 512 << 10);
        assert_eq!(d(OP_READ, 8, 8), Ok(Request::Read { offset: 4096, len: 4096 }));
        assert_eq!(
            d(OP_WRITE | F_FUA, 0, 1024),
            Ok(Request::Write { offset: 0, len: 512 << 10, fua: true })
        );
        assert_eq!(d(OP_FLUSH, 0, 0), Ok(Request::Flush));
        // The block layer's flush request may carry any sector (seen: mkfs.xfs's flush).
        assert_eq!(d(OP_FLUSH, u64::MAX, 0), Ok(Request::Flush));
        assert_eq!(d(OP_DISCARD, 2048, 2048), Ok(Request::Discard { offset: MIB, len: MIB }));
        assert_eq!(
            d(OP_WRITE_ZEROES | F_NOUNMAP, 0, 8),
            Ok(Request::WriteZeroes { offset: 0, len: 4096, may_trim: false, fua: false })
        );
        assert_eq!(
            d(OP_WRITE_ZEROES, 0, 8),
            Ok(Request::WriteZeroes { offset: 0, len: 4096, may_trim: true, fua: false })
        );
    }

    #[test]
    fn bad_descriptors_are_refused_with_their_errno() {
        let d = |op, start, n| decode(op, start, n, 16 * MIB, 512 << 10);
        assert_eq!(d(OP_READ, 0, 1025), Err(Invalid::TooLarge));
        assert_eq!(d(OP_WRITE, 32767, 2), Err(Invalid::OutOfRange));
        assert_eq!(d(OP_DISCARD, u64::MAX / 256, 1), Err(Invalid::OutOfRange));
        assert_eq!(d(13, 0, 8), Err(Invalid::Unsupported(13)));
        assert_eq!(Invalid::Unsupported(4).errno(), -libc::EOPNOTSUPP);
        assert_eq!(Invalid::OutOfRange.errno(), -libc::EINVAL);
        // A descriptor exactly at the end is fine.
        assert_eq!(d(OP_READ, 32760, 8), Ok(Request::Read { offset: 16 * MIB - 4096, len: 4096 }));
    }

    #[test]
    fn requests_reach_the_export() {
        let e = MemExport::new(MIB);
        let mut buf = vec![0xabu8; 8192];
        assert_eq!(
            serve(&e, Request::Write { offset: 4096, len: 8192, fua: true }, &mut buf),
            8192
        );
        let mut back = vec![0u8; 8192];
        assert_eq!(serve(&e, Request::Read { offset: 4096, len: 8192 }, &mut back), 8192);
        assert_eq!(back, buf);
        let z = Request::WriteZeroes { offset: 4096, len: 4096, may_trim: true, fua: false };
        assert_eq!(serve(&e, z, &mut buf), 0);
        assert_eq!(serve(&e, Request::Discard { offset: 8192, len: 4096 }, &mut buf), 0);
        assert_eq!(serve(&e, Request::Flush, &mut buf), 0);
        assert_eq!(serve(&e, Request::Read { offset: 4096, len: 8192 }, &mut back), 8192);
        assert!(back.iter().all(|b| *b == 0));
    }

    #[test]
    fn export_errors_map_to_block_errnos() {
        let e = |kind| ExportError::new(kind, "write", 0, 1, "x");
        assert_eq!(errno(&e(ErrorKind::NoSpace)), -libc::ENOSPC);
        assert_eq!(errno(&e(ErrorKind::ReadOnly)), -libc::EROFS);
        assert_eq!(errno(&e(ErrorKind::NotSupported)), -libc::EOPNOTSUPP);
        assert_eq!(errno(&e(ErrorKind::Io)), -libc::EIO);
    }
}
