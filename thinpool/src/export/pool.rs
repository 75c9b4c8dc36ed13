//! The NBD seam over the thin pool: every named volume is an export.
//!
//! Durability: FLUSH and FUA flush the pool (data device synced, then metadata committed);
//! otherwise the server's committer calls [`Catalog::commit_if_dirty`] twice a second, so
//! every mapping change is committed within about a second, as dm-thin's periodic commit
//! does. Like that commit, it flushes the data device only ahead of changed metadata: data
//! written in place is durable at the client's FLUSH or FUA, as on any disk with a volatile
//! write cache.
//!
//! Zero detection: the Linux 6.1 nbd client never sends WRITE_ZEROES (`blkdiscard -z`
//! becomes WRITEs of zero pages), so an all-zero WRITE is turned into an unmapping zero
//! request and stays thin.
//!
//! Volumes are opened through the [`Service`]: each export holds a [`VolumeHandle`], so a
//! volume removed while connected is deleted when its last connection closes (deferred
//! deletion); writes that find the pool full wait for autoextend or freed space (up to
//! `no_space_timeout`, then ENOSPC); a pool gone read-only (metadata exhausted) answers
//! writes with EPERM and keeps serving reads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::*;
use crate::pool::{Mode, Pool};
use crate::service::{self, Service, VolumeHandle};

fn kind(e: &service::Error) -> ErrorKind {
    match e.kind() {
        service::ErrorKind::NoSpace => ErrorKind::NoSpace,
        service::ErrorKind::OutOfRange | service::ErrorKind::Invalid => ErrorKind::OutOfRange,
        service::ErrorKind::ReadOnly => ErrorKind::ReadOnly,
        _ => ErrorKind::Io,
    }
}

fn err(op: &'static str, offset: u64, len: u64, e: service::Error) -> ExportError {
    ExportError::new(kind(&e), op, offset, len, units::chain(&e))
}

/// Shared by the catalog and its exports.
struct Inner {
    svc: Arc<Service>,
    /// Set by every change; cleared by a commit.
    dirty: AtomicBool,
    /// Volumes open for a client of this machine (ublk, kernel nbd) and how many times: the
    /// guest's own filesystem sits on them, so other clients get them read-only.
    local: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl Inner {
    /// Commits the pool and syncs its data device (see the module doc).
    fn commit(&self) -> Result<(), service::Error> {
        self.clearing_dirty(|| self.svc.flush())
    }

    /// The periodic commit (see the module doc): the mapping changes since the last commit,
    /// without a flush of the data device when there are none.
    fn commit_changes(&self) -> Result<(), service::Error> {
        self.clearing_dirty(|| {
            self.svc.pool().commit().map_err(|e| service::Error::pool("committing", e))
        })
    }

    /// Runs a commit with the dirty flag cleared first (a change meanwhile sets it again);
    /// a failed commit sets it back.
    fn clearing_dirty(
        &self,
        commit: impl FnOnce() -> Result<(), service::Error>,
    ) -> Result<(), service::Error> {
        let was = self.dirty.swap(false, Ordering::SeqCst);
        let r = commit();
        tracing::debug!("commit (dirty: {was}): {}", if r.is_ok() { "ok" } else { "failed" });
        if r.is_err() && was {
            self.dirty.store(true, Ordering::SeqCst);
        }
        r
    }
}

/// Which volumes are offered to NBD clients (`thinpool serve --exports`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ExportScope {
    /// Every volume (a pool served on its own, as nbdkit serves its files).
    #[default]
    All,
    /// Only volumes created for export (see [`crate::pool::names::NameEntry::export`]): in an
    /// appliance, the volumes it makes for itself (its store, a storage driver's devices) are
    /// no one else's business. The machine's own clients (ublk, kernel nbd) see every volume.
    Flagged,
}

/// The pool's volumes as NBD exports.
pub struct PoolCatalog {
    inner: Arc<Inner>,
    scope: ExportScope,
}

impl PoolCatalog {
    pub fn new(svc: Arc<Service>) -> Self {
        Self::with_scope(svc, ExportScope::All)
    }

    pub fn with_scope(svc: Arc<Service>, scope: ExportScope) -> Self {
        Self {
            inner: Arc::new(Inner {
                svc,
                dirty: AtomicBool::new(false),
                local: std::sync::Mutex::new(std::collections::HashMap::new()),
            }),
            scope,
        }
    }

    /// Whether a remote client may see a volume with this mark.
    fn offered(&self, export: bool) -> bool {
        export || self.scope == ExportScope::All
    }

    pub fn service(&self) -> &Arc<Service> {
        &self.inner.svc
    }

    pub fn pool(&self) -> &Pool {
        self.inner.svc.pool()
    }

    /// Commits now (used after management verbs and at shutdown).
    pub fn commit(&self) -> Result<(), service::Error> {
        self.inner.commit()
    }
}

impl PoolCatalog {
    /// `local`: the client is in this machine (see [`Catalog::open_for_local_client`]). A
    /// remote client of a volume that a local client has open gets it read-only, so nothing
    /// over the network writes under the feet of the filesystem mounted on it.
    fn open_volume(&self, name: &str, local: bool) -> Option<Arc<dyn Export>> {
        if !local && !self.offered(self.inner.svc.volume(name).ok()?.export) {
            return None;
        }
        let handle = self.inner.svc.open_volume(name).ok()?;
        let size = handle.size().ok()?;
        let mut attached = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        let read_only = !local && attached.get(name).is_some_and(|n| *n > 0);
        if local {
            *attached.entry(name.to_owned()).or_insert(0) += 1;
        }
        drop(attached);
        Some(Arc::new(VolumeExport {
            inner: self.inner.clone(),
            handle,
            size,
            commit_mappings: local,
            read_only,
        }))
    }
}

impl Catalog for PoolCatalog {
    fn list(&self) -> Vec<ExportInfo> {
        match self.inner.svc.volumes() {
            Ok(v) => v
                .into_iter()
                .filter(|v| self.offered(v.export))
                .map(|v| ExportInfo {
                    description: format!("thin volume {} ({} bytes)", v.id, v.size),
                    name: v.name,
                })
                .collect(),
            Err(e) => {
                tracing::error!("nbd: listing volumes failed: {}", crate::units::chain(&e));
                Vec::new()
            }
        }
    }

    fn open(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.open_volume(name, false)
    }

    fn open_for_local_client(&self, name: &str) -> Option<Arc<dyn Export>> {
        self.open_volume(name, true)
    }

    fn commit_if_dirty(&self) -> ExportResult<()> {
        if !self.inner.dirty.load(Ordering::SeqCst) {
            return Ok(());
        }
        self.inner.commit_changes().map_err(|e| err("commit", 0, 0, e))
    }
}

/// One thin volume served over NBD: one service handle per connection.
pub struct VolumeExport {
    inner: Arc<Inner>,
    handle: VolumeHandle,
    size: u64,
    /// Commit every mapping change before acknowledging it (see
    /// [`Catalog::open_for_local_client`]); also marks the export as a local client's.
    commit_mappings: bool,
    /// A remote client's export of a volume the machine itself has attached.
    read_only: bool,
}

impl Drop for VolumeExport {
    fn drop(&mut self) {
        if !self.commit_mappings {
            return;
        }
        let mut attached = self.inner.local.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = attached.get_mut(self.handle.name()) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                attached.remove(self.handle.name());
            }
        }
    }
}

/// Marks its export dirty when dropped: a direct write's plan holds one, so the write counts
/// once its I/O has completed, as a quick write counts once it returned.
struct MarkDirty<'a>(&'a VolumeExport);

impl Drop for MarkDirty<'_> {
    fn drop(&mut self) {
        self.0.mark_dirty();
    }
}

impl VolumeExport {
    fn mark_dirty(&self) {
        // Most writes find the flag set already: a load keeps the cache line shared. A load
        // that sees it set happened before the commit that will clear it, so that commit
        // covers this change.
        if !self.inner.dirty.load(Ordering::SeqCst) {
            self.inner.dirty.store(true, Ordering::SeqCst);
        }
    }

    fn changed(&self, fua: bool, op: &'static str, offset: u64, len: u64) -> ExportResult<()> {
        self.mark_dirty();
        if fua {
            self.inner.commit().map_err(|e| err(op, offset, len, e))?;
        } else if self.commit_mappings {
            // A no-op unless this request changed a mapping. Concurrent requests share the
            // commit (the pool serialises commits and each includes every change so far).
            self.inner
                .svc
                .pool()
                .commit()
                .map_err(|e| err(op, offset, len, service::Error::pool("committing", e)))?;
        }
        // Request tracing for crash analysis (`THINPOOL_LOG=thinpool::export::pool=debug`): what
        // was acknowledged, and whether its mapping was committed first.
        tracing::debug!(
            "ack {op} {offset}+{len} fua={fua} committed={}",
            fua || self.commit_mappings
        );
        Ok(())
    }
}

impl Export for VolumeExport {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> ExportResult<()> {
        let len = buf.len() as u64;
        self.handle.read(offset, buf).map_err(|e| err("read", offset, len, e))
    }

    fn write(&self, offset: u64, payload: &Payload<'_>, how: WriteMode) -> ExportResult<Written> {
        let WriteMode { fua, quick } = how;
        let len = payload.len() as u64;
        if quick && fua {
            return Ok(Written::Declined);
        }
        // A write of whole blocks of zeros unmaps them (as WRITE_ZEROES may): it frees space
        // rather than taking it. Unmapping changes metadata, so it is never quick.
        let zeros = len >= self.handle.block_bytes()
            && payload.is_zeros().map_err(|e| ExportError::from_io("write", offset, len, &e))?;
        if zeros {
            if quick {
                return Ok(Written::Declined);
            }
            self.write_zeroes(offset, len, Zeroing { may_trim: true, fast: false, fua })?;
            return Ok(Written::Done);
        }
        // Quick: an overwrite; a local client acknowledges only committed mappings, so the
        // blocks it lands in must not be mapped by a change still uncommitted.
        let mode = match (quick, self.commit_mappings) {
            (false, _) => Mode::Full,
            (true, false) => Mode::Overwrite,
            (true, true) => Mode::OverwriteCommitted,
        };
        match self.handle.write(offset, payload, mode).map_err(|e| err("write", offset, len, e))? {
            Written::Declined => Ok(Written::Declined),
            Written::Done if quick => {
                self.mark_dirty();
                Ok(Written::Done)
            }
            Written::Done => {
                self.changed(fua, "write", offset, len)?;
                Ok(Written::Done)
            }
        }
    }

    fn read_quick(&self, offset: u64, buf: &mut [u8]) -> bool {
        matches!(self.handle.read_cached(offset, buf), Ok(true))
    }

    fn direct_read(&self, offset: u64, len: usize) -> Option<Direct<'_>> {
        self.handle.direct_read(offset, len)
    }

    fn direct_write(&self, offset: u64, data: &[u8], fua: bool) -> Option<Direct<'_>> {
        // As a quick write: never FUA (that commits), never whole blocks of zeros (they
        // unmap), and for a local client only blocks whose mappings are committed.
        let zeros = data.len() as u64 >= self.handle.block_bytes() && data.iter().all(|&b| b == 0);
        if fua || zeros {
            return None;
        }
        let plan = self.handle.direct_overwrite(offset, data.len(), self.commit_mappings)?;
        Some(plan.hold(MarkDirty(self)))
    }

    fn splices_writes(&self) -> bool {
        true
    }

    fn write_zeroes(&self, offset: u64, len: u64, how: Zeroing) -> ExportResult<()> {
        let Zeroing { may_trim, fast, fua } = how;
        // Zeroing fast means unmapping; provisioned zeros are written block by block.
        if fast && !may_trim {
            return Err(ExportError::new(
                ErrorKind::NotSupported,
                "write_zeroes",
                offset,
                len,
                "provisioned zeroing is not faster than writing",
            ));
        }
        self.handle
            .write_zeroes(offset, len, may_trim)
            .map_err(|e| err("write_zeroes", offset, len, e))?;
        // NO_HOLE keeps mapped blocks mapped (zeros are written into them), but the pool has
        // no way to provision an unmapped block with zeros (it keeps all-zero writes thin), so
        // such blocks stay holes; block status reports them as HOLE|ZERO, which is consistent.
        self.changed(fua, "write_zeroes", offset, len)
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> ExportResult<()> {
        // Reads after trim must return zeros, partial blocks included: zero with unmapping
        // rather than the pool's advisory discard, which leaves partial blocks alone.
        self.handle.write_zeroes(offset, len, true).map_err(|e| err("trim", offset, len, e))?;
        self.changed(fua, "trim", offset, len)
    }

    fn flush(&self) -> ExportResult<()> {
        self.inner.commit().map_err(|e| err("flush", 0, 0, e))?;
        tracing::debug!("ack flush");
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64) -> ExportResult<Vec<Extent>> {
        let runs = self.handle.extents(offset, len).map_err(|e| err("extents", offset, len, e))?;
        Ok(extents_of_runs(runs))
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn sparse_reads(&self) -> bool {
        true
    }

    fn change_bases(&self) -> Vec<String> {
        let own = self.handle.name();
        match self.inner.svc.pool().volumes() {
            Ok(v) => v.into_iter().map(|v| v.name).filter(|n| n != own).collect(),
            Err(_) => Vec::new(),
        }
    }

    fn changes_since(
        &self,
        base: &str,
        offset: u64,
        len: u64,
    ) -> ExportResult<Option<Vec<Changed>>> {
        let pool = self.inner.svc.pool();
        // Resolved at every request: a base removed meanwhile is an error, never another
        // thin that reused its id.
        let b = match pool.volume(base) {
            Ok(b) => b,
            Err(e) if e.kind() == crate::pool::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ExportError::new(ErrorKind::Io, "changes", offset, len, e)),
        };
        let runs = pool
            .changes_since(self.handle.id(), b.id, offset, len)
            .map_err(|e| err("changes", offset, len, service::Error::pool("comparing", e)))?;
        Ok(Some(runs.into_iter().map(|(len, changed)| Changed { len, changed }).collect()))
    }

    fn block_size(&self) -> BlockSize {
        let pref = u32::try_from(self.handle.block_bytes()).unwrap_or(1 << 20);
        BlockSize { minimum: 1, preferred: pref.clamp(512, 1 << 20), maximum: MAX_PAYLOAD }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::pool::FilePool;
    use crate::service::ServiceOptions;
    use crate::units::{Bytes, Sectors};
    use std::path::Path;

    /// A fresh 16 MiB file pool in `dir` with 8 MiB volumes `names`, committed.
    fn file_pool(dir: &Path, names: &[&str]) -> Pool {
        let pool = FilePool::create(dir, Bytes::new(16 << 20), None, Sectors(128)).unwrap();
        for name in names {
            pool.create_volume(name, Bytes::new(8 << 20)).unwrap();
        }
        pool.commit().unwrap();
        pool
    }

    fn service(dir: &Path, pool: Pool) -> Arc<Service> {
        Arc::new(Service::from_file_pool(dir, pool, ServiceOptions::default()).unwrap())
    }

    /// The committer's periodic commit, like dm-thin's: a mapping change is committed, with
    /// the data device flushed ahead of it; data written in place waits for the client's
    /// FLUSH (it used to flush the data device twice a second under any write).
    #[test]
    fn periodic_commit_flushes_data_only_ahead_of_mapping_changes() {
        use crate::io::MemDevice;
        use crate::pool::tests::TestData;
        let dir = tempfile::tempdir().unwrap();
        let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
        let data = Arc::new(TestData::new(MemDevice::new(64 << 16, "data")));
        let names = Box::new(crate::pool::DirNameStore::new(dir.path()));
        let pool = Pool::format_with_names(meta, data.clone(), Sectors(128), names).unwrap();
        pool.create_volume("v", Bytes::new(1 << 20)).unwrap();
        pool.commit().unwrap();
        let cat = PoolCatalog::new(service(dir.path(), pool));
        let e = cat.open("v").unwrap();
        let write = |byte: u8| {
            let done = e.write(0, &Payload::mem(&[byte; 4096]), WriteMode::default()).unwrap();
            assert_eq!(done, Written::Done);
        };
        let commit = || data.flushes_during(|| cat.commit_if_dirty().unwrap());
        write(1); // allocates
        assert!(commit() > 0, "the data is flushed before the mapping");
        write(2); // in place
        assert_eq!(commit(), 0, "no mapping changed: nothing to flush");
        let flush = data.flushes_during(|| e.flush().unwrap());
        assert_eq!(flush, 1, "the client's FLUSH syncs the data");
    }

    #[test]
    fn quick_writes_of_a_local_client_need_committed_mappings() {
        let dir = tempfile::tempdir().unwrap();
        let cat = PoolCatalog::new(service(dir.path(), file_pool(dir.path(), &["v"])));
        let remote = cat.open("v").unwrap();
        let local = cat.open_for_local_client("v").unwrap();
        let quick = |e: &Arc<dyn Export>, off, data: &[u8]| {
            e.write(off, &Payload::mem(data), WriteMode::QUICK).unwrap() == Written::Done
        };
        let full = |e: &Arc<dyn Export>, off, data: &[u8]| {
            assert_eq!(
                e.write(off, &Payload::mem(data), WriteMode::default()).unwrap(),
                Written::Done
            )
        };
        // Unmapped: never quick (a write there allocates).
        assert!(!quick(&remote, 0, &[1; 4096]));
        assert!(!quick(&local, 0, &[1; 4096]));
        // A remote client's allocation stays uncommitted until the committer runs.
        full(&remote, 0, &[2; 4096]);
        assert!(quick(&remote, 4096, &[3; 4096]), "overwrite of a mapped block");
        assert!(!quick(&local, 8192, &[4; 4096]), "its mapping is not durable yet");
        cat.commit_if_dirty().unwrap();
        assert!(quick(&local, 8192, &[4; 4096]));
        // A local client's own allocation commits before it is acknowledged.
        full(&local, 1 << 20, &[5; 4096]);
        assert!(quick(&local, (1 << 20) + 4096, &[6; 4096]));
        // All-zero whole blocks are unmapped by a full write, never written in place; FUA is
        // never quick.
        assert!(!quick(&remote, 0, &[0; 65536]));
        assert_eq!(
            remote
                .write(4096, &Payload::mem(&[3; 4096]), WriteMode { fua: true, quick: true })
                .unwrap(),
            Written::Declined
        );
        let mut back = vec![0u8; 3 * 4096];
        local.read(0, &mut back).unwrap();
        assert_eq!(&back[..4096], &[2; 4096][..]);
        assert_eq!(&back[4096..8192], &[3; 4096][..]);
        assert_eq!(&back[8192..], &[4; 4096][..]);
    }

    #[test]
    fn a_volume_the_machine_has_attached_is_read_only_to_other_clients() {
        let dir = tempfile::tempdir().unwrap();
        let cat = PoolCatalog::new(service(dir.path(), file_pool(dir.path(), &["store"])));
        assert!(!cat.open("store").unwrap().read_only(), "nothing local yet");
        let local = cat.open_for_local_client("store").unwrap();
        assert!(!local.read_only(), "the machine's own client writes");
        let remote = cat.open("store").unwrap();
        assert!(remote.read_only(), "a remote client of an attached volume must not write");
        drop(local);
        assert!(!cat.open("store").unwrap().read_only(), "detached: writable again");
        drop(remote);
    }

    #[test]
    fn flagged_scope_offers_only_volumes_created_for_export() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path(), file_pool(dir.path(), &[]));
        svc.create_volume("store", Bytes::new(8 << 20)).unwrap();
        svc.create_volume_for("shared", Bytes::new(8 << 20), true).unwrap();
        svc.snapshot_volume("shared", "shared-snap").unwrap();
        svc.snapshot_volume("store", "store-snap").unwrap();
        let names = |c: &PoolCatalog| c.list().into_iter().map(|e| e.name).collect::<Vec<_>>();
        let all = PoolCatalog::with_scope(svc.clone(), ExportScope::All);
        assert_eq!(names(&all), ["shared", "shared-snap", "store", "store-snap"]);
        let cat = PoolCatalog::with_scope(svc.clone(), ExportScope::Flagged);
        assert_eq!(names(&cat), ["shared", "shared-snap"], "a snapshot inherits the mark");
        assert!(cat.open("store").is_none() && cat.open("store-snap").is_none());
        assert!(cat.open("shared").is_some());
        // The machine's own attach reaches every volume.
        assert!(cat.open_for_local_client("store").is_some());
        // The mark is persistent and can be changed while serving.
        svc.set_export("store", true).unwrap();
        assert!(cat.open("store").is_some());
        svc.set_export("shared", false).unwrap();
        assert_eq!(names(&cat), ["shared-snap", "store"]);
        let e = svc.set_export("nope", true).unwrap_err();
        assert_eq!(e.kind(), service::ErrorKind::NotFound, "{e}");
    }
}
