//! A volume handle: the data path of one open volume, through the service's out-of-space
//! and read-only rules. Dropping the last handle of a volume removed meanwhile deletes it.

use std::sync::Arc;

use super::error::{Error, Result};
use super::Shared;
use crate::io::{Direct, Payload, Written};
use crate::pool::Mode;
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
        Ok(v.size.get())
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

    /// A plan to read with the caller's own I/O ([`crate::pool::Pool::direct_read`]).
    pub fn direct_read(&self, offset: u64, len: usize) -> Option<Direct<'_>> {
        self.shared.pool().direct_read(self.id, offset, len)
    }

    /// A plan to overwrite in place with the caller's own I/O
    /// ([`crate::pool::Pool::direct_overwrite`]), under the read-only rule like the
    /// overwrites of [`VolumeHandle::write`]: the plan keeps the pool writable until dropped.
    pub fn direct_overwrite(&self, offset: u64, len: usize, committed: bool) -> Option<Direct<'_>> {
        let g = self.shared.try_writable()?;
        Some(self.shared.pool().direct_overwrite(self.id, offset, len, committed)?.hold(g))
    }

    /// The volume's write entry: [`crate::pool::Pool::write_with`] through the service's
    /// rules. A [`Mode::Full`] write may need data space, so it waits for space when the pool
    /// is full (see the module doc of [`service`](super)) and is retried from the start (the
    /// payload keeps what it read from a pipe); an overwrite allocates nothing and never
    /// waits.
    pub fn write(&self, offset: u64, payload: &Payload<'_>, mode: Mode) -> Result<Written> {
        let doing = || format!("writing {} bytes of {:?} at {offset}", payload.len(), self.name);
        if mode == Mode::Full {
            return self
                .shared
                .with_space(&doing, &|p| p.write_with(self.id, offset, payload, mode));
        }
        let _g = self.shared.writable()?;
        self.shared
            .pool()
            .write_with(self.id, offset, payload, mode)
            .map_err(|e| Error::pool(&doing(), e))
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
