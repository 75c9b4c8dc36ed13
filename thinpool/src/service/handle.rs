//! A volume handle: the data path of one open volume, through the service's out-of-space
//! and read-only rules. Dropping the last handle of a volume removed meanwhile deletes it.

use std::os::fd::BorrowedFd;
use std::sync::Arc;

use super::error::{Error, Result};
use super::Shared;
use crate::units::ThinId;

/// One open volume. Cheap to share between the threads of one connection (`&self`).
pub struct VolumeHandle {
    shared: Arc<Shared>,
    name: String,
    id: ThinId,
}

impl VolumeHandle {
    pub(crate) fn new(shared: Arc<Shared>, name: String, id: ThinId) -> Self {
        Self { shared, name, id }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> ThinId {
        self.id
    }

    /// The volume's virtual size in bytes.
    pub fn size(&self) -> Result<u64> {
        let v = self
            .shared
            .pool()
            .volume(&self.name)
            .map_err(|e| Error::pool(&format!("sizing volume {:?}", self.name), e))?;
        Ok(v.size)
    }

    /// Data block size in bytes.
    pub fn block_bytes(&self) -> u64 {
        self.shared.pool().block_bytes()
    }

    /// Reads work in read-only mode too.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.shared.pool().read(self.id, offset, buf).map_err(|e| {
            Error::pool(&format!("reading {} bytes of {:?} at {offset}", buf.len(), self.name), e)
        })
    }

    /// Reads only if that cannot wait for the data device (see
    /// [`crate::pool::Pool::read_cached`]); `Ok(false)` otherwise.
    pub fn read_cached(&self, offset: u64, buf: &mut [u8]) -> Result<bool> {
        self.shared.pool().read_cached(self.id, offset, buf).map_err(|e| {
            Error::pool(&format!("reading {} bytes of {:?} at {offset}", buf.len(), self.name), e)
        })
    }

    /// Writes, waiting for data space when the pool is full (see the module doc of
    /// [`service`](super)).
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<()> {
        let doing = || format!("writing {} bytes of {:?} at {offset}", buf.len(), self.name);
        self.shared.with_space(&doing, &|p| p.write(self.id, offset, buf))
    }

    /// Overwrites in place when that needs no allocation, copy or wait (see
    /// [`crate::pool::Pool::write_in_place`]); `Ok(false)`, with nothing written, otherwise.
    /// Never waits for space, so it does not go through the out-of-space rules.
    pub fn write_in_place(&self, offset: u64, buf: &[u8], committed_only: bool) -> Result<bool> {
        let _g = self.shared.writable()?;
        self.shared.pool().write_in_place(self.id, offset, buf, committed_only).map_err(|e| {
            Error::pool(&format!("writing {} bytes of {:?} at {offset}", buf.len(), self.name), e)
        })
    }

    /// Overwrites from a payload partly waiting in a pipe (see
    /// [`crate::pool::Pool::overwrite_spliced`]); `Ok(false)`, with nothing consumed, when
    /// [`VolumeHandle::write`] is needed. Allocates nothing, so it never waits for space.
    pub fn write_spliced(
        &self,
        offset: u64,
        head: &[u8],
        pipe: BorrowedFd<'_>,
        rest: usize,
    ) -> Result<bool> {
        let _g = self.shared.writable()?;
        self.shared.pool().overwrite_spliced(self.id, offset, head, pipe, rest).map_err(|e| {
            let len = head.len() + rest;
            Error::pool(&format!("writing {len} bytes of {:?} at {offset}", self.name), e)
        })
    }

    /// Zeroes a range; without `may_unmap` mapped blocks are overwritten (which may need
    /// copy-on-write space, so it waits like a write).
    pub fn write_zeroes(&self, offset: u64, len: u64, may_unmap: bool) -> Result<()> {
        let doing = || format!("zeroing {len} bytes of {:?} at {offset}", self.name);
        self.shared.with_space(&doing, &|p| p.write_zeroes(self.id, offset, len, may_unmap))?;
        if may_unmap {
            self.shared.notify_space();
        }
        Ok(())
    }

    /// Discards a range; freed blocks wake writers waiting for space (they become
    /// allocatable at the commit the waiting write's allocation makes).
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        let doing = || format!("discarding {len} bytes of {:?} at {offset}", self.name);
        self.shared.with_space(&doing, &|p| p.discard(self.id, offset, len))?;
        self.shared.notify_space();
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.shared.flush()
    }

    /// Runs of (length, mapped) bytes, for NBD block status.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<(u64, bool)>> {
        self.shared.pool().extents(self.id, offset, len).map_err(|e| {
            Error::pool(&format!("mapping {len} bytes of {:?} at {offset}", self.name), e)
        })
    }
}

impl Drop for VolumeHandle {
    fn drop(&mut self) {
        self.shared.release(&self.name);
    }
}
