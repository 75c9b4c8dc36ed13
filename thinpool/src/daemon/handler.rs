//! The daemon's answers to control verbs, executed on its pool through the service (so every
//! change passes the same gates as NBD and ublk I/O: read-only, deferred deletion, space).

use std::sync::Arc;

use super::control::{
    self, AttachEntry, DaemonStatus, Refusal, RefusalKind, Reply, SpaceEntry, VolumeEntry,
};
use crate::export::pool::PoolCatalog;
use crate::service;
use crate::ublk;

/// Management verbs executed by the daemon on its pool.
pub struct PoolControl {
    catalog: Arc<PoolCatalog>,
    /// NBD connections being served: TCP and unix clients and the kernel's socketpairs.
    connections: Box<dyn Fn() -> usize + Send + Sync>,
    /// The volumes served as ublk devices.
    ublk: Arc<ublk::Devices>,
}

impl PoolControl {
    pub fn new(
        catalog: Arc<PoolCatalog>,
        connections: Box<dyn Fn() -> usize + Send + Sync>,
        ublk: Arc<ublk::Devices>,
    ) -> Self {
        Self { catalog, connections, ublk }
    }
}

/// The refusal a client sees for a ublk attach/detach error.
fn ublk_refusal(e: ublk::AttachError) -> Refusal {
    use ublk::AttachErrorKind as K;
    let kind = match (e.kind, e.op) {
        (K::NotFound, _) => RefusalKind::NotFound,
        (K::State, "attach") => RefusalKind::Exists,
        (K::State, _) => RefusalKind::Invalid,
        (K::Busy, _) => RefusalKind::Busy,
        (K::Kernel | K::Io, _) => RefusalKind::Failed,
    };
    Refusal::new(kind, units::chain(&e))
}

/// The refusal a client sees for a service error.
fn refusal(e: service::Error) -> Refusal {
    use service::ErrorKind as K;
    let kind = match e.kind() {
        K::NotFound => RefusalKind::NotFound,
        K::Exists => RefusalKind::Exists,
        K::NoSpace => RefusalKind::NoSpace,
        K::MinFreeSpace => RefusalKind::MinFreeSpace,
        K::ReadOnly => RefusalKind::ReadOnly,
        K::Busy => RefusalKind::Busy,
        K::Invalid | K::OutOfRange => RefusalKind::Invalid,
        K::Corrupt | K::Io | K::Group(_) => RefusalKind::Failed,
    };
    Refusal::new(kind, units::chain(&e))
}

/// Streams pass through a FIFO the client made: the daemon never writes or reads a
/// regular file or device a client names.
fn only_fifo(path: &str) -> Result<(), Refusal> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_fifo() => Ok(()),
        Ok(_) => Err(Refusal::new(RefusalKind::Invalid, format!("{path} is not a FIFO"))),
        Err(e) => Err(Refusal::new(RefusalKind::Invalid, format!("{path}: {e}"))),
    }
}

/// Reads a LUKS2 header from the FIFO a `create` names (at most [`crate::luks::HEADER_MAX`]
/// bytes) and checks that it is one.
fn read_luks_header(path: &str) -> Result<crate::luks::Header, Refusal> {
    use std::io::Read;
    only_fifo(path)?;
    let f = std::fs::File::open(path)
        .map_err(|e| Refusal::new(RefusalKind::Invalid, format!("opening {path}: {e}")))?;
    let mut bytes = Vec::new();
    f.take(crate::luks::HEADER_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Refusal::new(RefusalKind::Invalid, format!("reading {path}: {e}")))?;
    crate::luks::Header::from_bytes(bytes)
        .map_err(|e| Refusal::new(RefusalKind::Invalid, format!("luks_header: {e}")))
}

/// The reply (or refusal) of a send or receive.
fn streamed(
    r: Result<crate::delta::send::Stats, crate::delta::send::SendError>,
) -> Result<Reply, Refusal> {
    use crate::delta::send::SendError as E;
    match r {
        Ok(s) => Ok(Reply::Streamed {
            stream_bytes: s.stream_bytes,
            data_bytes: s.data_bytes,
            records: s.records,
        }),
        Err(e) => {
            let kind = match &e {
                E::Exists(_) => RefusalKind::Exists,
                E::Pool { source, .. } if source.kind() == crate::pool::ErrorKind::NotFound => {
                    RefusalKind::NotFound
                }
                E::Pool { .. } | E::Write(_) => RefusalKind::Failed,
                E::Stream(_)
                | E::BaseMismatch { .. }
                | E::Invalid(_)
                | E::ContentMismatch { .. } => RefusalKind::Invalid,
            };
            Err(Refusal::new(kind, units::chain(&e)))
        }
    }
}

impl control::Handler for PoolControl {
    fn handle(&self, req: control::Request) -> Result<Reply, Refusal> {
        use control::Request as R;
        let svc = self.catalog.service();
        let pool = svc.pool();
        // The service commits each change before returning (one Docker transaction).
        Ok(match req {
            R::Create { name, size, export, encrypted: false, luks_header: None } => {
                Reply::Created {
                    thin_id: svc.create_volume_for(&name, size, export).map_err(refusal)?.0,
                }
            }
            R::Export { name, export } => {
                svc.set_export(&name, export).map_err(refusal)?;
                Reply::Exported { name, export }
            }
            R::Create { name, size, export, encrypted: true, luks_header: Some(path) } => {
                let header = read_luks_header(&path)?;
                let id = svc.create_encrypted_volume(&name, size, &header, export);
                Reply::Created { thin_id: id.map_err(refusal)?.0 }
            }
            R::Create { .. } => {
                return Err(Refusal::new(
                    RefusalKind::Invalid,
                    "an encrypted volume needs its LUKS2 header (written by cryptsetup) through \
                     luks_header, and luks_header goes only with encrypted",
                ))
            }
            R::Snapshot { origin, name } => {
                Reply::Created { thin_id: svc.snapshot_volume(&origin, &name).map_err(refusal)?.0 }
            }
            R::Remove { name } => {
                Reply::Removed { deferred: svc.remove_volume(&name).map_err(refusal)? }
            }
            R::List => Reply::Volumes(
                svc.volumes()
                    .map_err(refusal)?
                    .iter()
                    .map(|v| VolumeEntry {
                        name: v.name.clone(),
                        thin_id: v.id.0,
                        size: v.size,
                        mapped_blocks: v.mapped().0,
                        export: v.export,
                    })
                    .collect(),
            ),
            R::Attach { name } => Reply::Attached {
                device: self.ublk.attach(&name).map_err(ublk_refusal)?.display().to_string(),
            },
            R::Detach { name, deferred: false } => Reply::Detached {
                device: self.ublk.detach(&name).map_err(ublk_refusal)?.display().to_string(),
                deferred: false,
            },
            R::Detach { name, deferred: true } => {
                let d = self.ublk.detach_deferred(&name).map_err(ublk_refusal)?;
                Reply::Detached { device: d.device.display().to_string(), deferred: d.deferred }
            }
            R::Extend { device } => {
                let events = svc.extend_device(std::path::Path::new(&device)).map_err(refusal)?;
                Reply::Extended { device, events }
            }
            R::MetadataSnap { action } => {
                let b = match action {
                    control::MetadataSnapAction::Reserve => pool.reserve_metadata_snap(),
                    control::MetadataSnapAction::Release => pool.release_metadata_snap(),
                }
                .map_err(|e| refusal(service::Error::pool("metadata snapshot", e)))?;
                Reply::MetadataSnap { metadata_snap: b.0 }
            }
            R::Send { snap, from, path } => {
                only_fifo(&path)?;
                let out = std::fs::OpenOptions::new().write(true).open(&path).map_err(|e| {
                    Refusal::new(RefusalKind::Invalid, format!("opening {path}: {e}"))
                })?;
                let w = std::io::BufWriter::with_capacity(1 << 20, out);
                streamed(crate::delta::send::send(pool, &snap, from.as_deref(), w))?
            }
            R::Receive { name, base, path } => {
                only_fifo(&path)?;
                let input = std::fs::File::open(&path).map_err(|e| {
                    Refusal::new(RefusalKind::Invalid, format!("opening {path}: {e}"))
                })?;
                let r = std::io::BufReader::with_capacity(1 << 20, input);
                streamed(crate::delta::send::receive(pool, &name, base.as_deref(), r))?
            }
            R::Status => {
                let marked = self.ublk.deferred();
                // The wire carries plain block counts (`block_bytes` tells the data's unit).
                fn space<B: Into<u64>>(u: crate::pool::SpaceUsage<B>) -> SpaceEntry {
                    SpaceEntry { total: u.total.into(), used: u.used.into(), free: u.free.into() }
                }
                Reply::Status(Box::new(DaemonStatus {
                    pid: std::process::id(),
                    transaction_id: pool.transaction_id().0,
                    block_bytes: pool.block_bytes(),
                    data: space(pool.data_usage()),
                    metadata: space(pool.metadata_usage()),
                    volumes: svc.volumes().map_err(refusal)?.len(),
                    nbd_connections: (self.connections)(),
                    read_only: svc.read_only(),
                    devicemapper: svc.status(),
                    options: svc.config(),
                    ublk: self
                        .ublk
                        .list()
                        .into_iter()
                        .map(|(name, dev)| AttachEntry {
                            deferred_removal: marked.contains(&name),
                            device: dev.display().to_string(),
                            name,
                        })
                        .collect(),
                }))
            }
        })
    }
}
