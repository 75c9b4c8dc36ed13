//! The ublk frontend: thin volumes as `/dev/ublkbN` block devices of the machine the daemon
//! runs in (Linux ≥ 6.0, `ublk_drv`), served by the daemon that owns the pool.
//!
//! ```text
//! mod.rs    Devices: attach / detach / recover / shutdown, the records file
//! serve.rs  a queue at work: its thread commits, its workers serve requests concurrently
//! queue.rs  one request: descriptor → export call → result (pure decode, host-tested)
//! ```
//!
//! Each device has one queue per CPU (the block layer maps each CPU's submissions to one
//! queue), [`DEPTH`] tags per queue, one thread per queue that owns its io_uring and
//! [`serve::WORKERS`] workers per queue that serve its requests, concurrently, through the
//! same [`Export`] the NBD server uses, opened with [`Catalog::open_for_local_client`]:
//! the machine's page cache outlives this process, so every acknowledged write is committed
//! before it completes; FLUSH (the device advertises a volatile cache) decides durability
//! against power loss, FUA makes one write durable before it completes.
//!
//! Crash recovery: devices are created with `UBLK_F_USER_RECOVERY` and
//! `UBLK_F_USER_RECOVERY_REISSUE`. When the daemon dies the driver quiesces the device and
//! keeps `/dev/ublkbN` (its users block instead of failing); requests the dead daemon had
//! taken are queued again. The next daemon reads which volume each device served from
//! `DIR/ublk.json` and takes the devices over (`START_USER_RECOVERY`, new queues,
//! `END_USER_RECOVERY`), after which the reissued requests are served by it.
//!
//! Deferred removal (Docker's `dm.use_deferred_removal`, which sets dm's deferred-remove flag
//! so the kernel removes a device at its last close): [`Devices::detach_deferred`] of a device
//! still open (a lazily unmounted filesystem whose last user has not left) marks it, and a
//! watcher thread detaches it once nobody holds it. ublk tells its server nothing about
//! opens and closes, so the watcher tries the exclusive open `detach` does, every
//! [`DEFERRED_POLL`], while something is marked. Detaching drops the device's handle on the
//! volume, which completes a deletion the pool deferred for it.
//!
//! ```text
//! DIR/ublk.json            {"store":0}   volume → ublk device id, rewritten on every attach/detach
//! DIR/ublk-deferred.json   ["v1"]        devices to detach at their last close (kept across a
//!                                        daemon restart: the successor takes them over and
//!                                        watches them again)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::io::UblkDev;
use libublk::UblkFlags;
use thiserror::Error;

use crate::export::{Catalog, Export};

pub mod queue;
mod serve;

/// Tags (requests in flight) per queue.
pub const DEPTH: u16 = 64;
/// Largest request, and the buffer each tag owns. With mlockall(MCL_ONFAULT) a buffer is
/// locked once touched, so a queue pins at most DEPTH × this (32 MiB).
pub const BUF_BYTES: u32 = 512 << 10;
/// Logical block size: the same 4 KiB the kernel nbd path uses, so an XFS made over either
/// attach mounts over the other.
const BLOCK_SHIFT: u8 = 12;
/// How long attach waits for the kernel to bring a device up.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the deferred-removal watcher looks whether a marked device was released.
pub const DEFERRED_POLL: Duration = Duration::from_millis(200);

/// The `ctrl_flags` of every device: user recovery with reissue (see the module doc).
fn ctrl_flags() -> u64 {
    u64::from(libublk::sys::UBLK_F_USER_RECOVERY | libublk::sys::UBLK_F_USER_RECOVERY_REISSUE)
}

/// What went wrong, for a caller to match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachErrorKind {
    /// No such volume.
    NotFound,
    /// The volume is already attached (attach) or not attached (detach).
    State,
    /// The device is open by someone (mounted): detach refused.
    Busy,
    /// The ublk driver refused or failed.
    Kernel,
    /// Reading or writing the records file.
    Io,
}

#[derive(Debug, Error)]
#[error("ublk {op} {volume}: {detail}")]
pub struct AttachError {
    pub kind: AttachErrorKind,
    pub op: &'static str,
    pub volume: String,
    pub detail: String,
}

impl AttachError {
    fn new(kind: AttachErrorKind, op: &'static str, volume: &str, detail: impl ToString) -> Self {
        Self { kind, op, volume: volume.into(), detail: detail.to_string() }
    }
}

/// The block device of ublk device `id`.
pub fn device_path(id: u32) -> PathBuf {
    PathBuf::from(format!("/dev/ublkb{id}"))
}

/// The records file in a daemon's state directory.
pub fn records_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ublk.json")
}

/// The deferred-removal list in a daemon's state directory.
pub fn deferred_path(state_dir: &Path) -> PathBuf {
    state_dir.join("ublk-deferred.json")
}

/// What [`Devices::detach_deferred`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// The device the volume had.
    pub device: PathBuf,
    /// Still open: it goes when its last user closes it.
    pub deferred: bool,
}

struct Device {
    id: u32,
    thread: JoinHandle<()>,
}

/// The ublk devices a daemon serves.
pub struct Devices {
    catalog: Arc<dyn Catalog>,
    records: PathBuf,
    devices: Mutex<BTreeMap<String, Device>>,
    /// Volumes whose device is detached at its last close, and whether a watcher runs.
    deferred: Mutex<(BTreeSet<String>, bool)>,
    deferred_file: PathBuf,
    /// Set by [`Devices::shutdown`]: the watcher leaves what is marked to the next daemon.
    stopping: AtomicBool,
}

impl Devices {
    pub fn new(catalog: Arc<dyn Catalog>, state_dir: &Path) -> Self {
        Self {
            catalog,
            records: records_path(state_dir),
            devices: Mutex::new(BTreeMap::new()),
            deferred: Mutex::new((BTreeSet::new(), false)),
            deferred_file: deferred_path(state_dir),
            stopping: AtomicBool::new(false),
        }
    }

    /// Volumes whose device waits for its last close to be detached.
    pub fn deferred(&self) -> BTreeSet<String> {
        self.deferred.lock().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Volume → device path of every attached volume.
    pub fn list(&self) -> Vec<(String, PathBuf)> {
        let d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        d.iter().map(|(v, dev)| (v.clone(), device_path(dev.id))).collect()
    }

    /// Attaches `volume` as a new ublk device; returns `/dev/ublkbN`.
    pub fn attach(&self, volume: &str) -> Result<PathBuf, AttachError> {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dev) = d.get(volume) {
            let msg = format!("already attached as {}", device_path(dev.id).display());
            return Err(AttachError::new(AttachErrorKind::State, "attach", volume, msg));
        }
        let export = self.catalog.open_for_local_client(volume).ok_or_else(|| {
            AttachError::new(AttachErrorKind::NotFound, "attach", volume, "no such volume")
        })?;
        let dev = start(volume, export, None)?;
        let path = device_path(dev.id);
        d.insert(volume.into(), dev);
        self.save(&d, "attach", volume)?;
        tracing::info!("ublk: {volume} attached as {}", path.display());
        Ok(path)
    }

    /// Detaches `volume`: stops and deletes its device, unless someone has it open.
    pub fn detach(&self, volume: &str) -> Result<PathBuf, AttachError> {
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        let id = d.get(volume).map(|dev| dev.id).ok_or_else(|| {
            AttachError::new(AttachErrorKind::State, "detach", volume, "not attached")
        })?;
        let path = device_path(id);
        // O_EXCL on a block device fails with EBUSY while it is mounted or opened exclusively.
        if let Err(e) =
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_EXCL).open(&path)
        {
            if e.raw_os_error() == Some(libc::EBUSY) {
                let msg = format!("{} is in use (mounted?)", path.display());
                return Err(AttachError::new(AttachErrorKind::Busy, "detach", volume, msg));
            }
        }
        let kernel = |e: libublk::UblkError| {
            AttachError::new(AttachErrorKind::Kernel, "detach", volume, format!("{e:?}"))
        };
        UblkCtrl::new_simple(id as i32).and_then(|c| c.kill_dev()).map_err(kernel)?;
        let dev = d.remove(volume).expect("looked up above");
        let _ = dev.thread.join();
        // A device taken over from a dead daemon is not deleted by its control's drop (it
        // was not added by this process); deleting twice is harmless (ENOENT).
        if let Ok(c) = UblkCtrl::new_simple(id as i32) {
            let _ = c.del_dev();
        }
        self.save(&d, "detach", volume)?;
        tracing::info!("ublk: {volume} detached from {}", path.display());
        Ok(path)
    }

    /// Detaches `volume`'s device, or, when it is still open, marks it to be detached as soon
    /// as nobody holds it (deferred removal).
    pub fn detach_deferred(self: &Arc<Self>, volume: &str) -> Result<Detached, AttachError> {
        match self.detach(volume) {
            Ok(device) => Ok(Detached { device, deferred: false }),
            Err(e) if e.kind == AttachErrorKind::Busy => {
                let device = self
                    .list()
                    .into_iter()
                    .find(|(v, _)| v == volume)
                    .map(|(_, d)| d)
                    .ok_or_else(|| {
                        AttachError::new(AttachErrorKind::State, "detach", volume, "not attached")
                    })?;
                self.defer(volume)?;
                tracing::info!("ublk: {} is in use: detached at its last close", device.display());
                Ok(Detached { device, deferred: true })
            }
            Err(e) => Err(e),
        }
    }

    /// Marks `volume` for deferred removal and makes sure the watcher runs.
    fn defer(self: &Arc<Self>, volume: &str) -> Result<(), AttachError> {
        let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
        d.0.insert(volume.to_owned());
        self.save_deferred(&d.0, volume)?;
        if !d.1 {
            let me = self.clone();
            std::thread::Builder::new()
                .name("ublk-deferred".into())
                .spawn(move || me.watch_deferred())
                .map_err(|e| {
                    let msg = format!("starting the deferred-removal watcher: {e}");
                    AttachError::new(AttachErrorKind::Io, "detach", volume, msg)
                })?;
            d.1 = true;
        }
        Ok(())
    }

    /// The watcher: detaches each marked device once it is no longer open; ends when none
    /// is left (or the daemon stops).
    fn watch_deferred(&self) {
        loop {
            std::thread::sleep(DEFERRED_POLL);
            let marked = self.deferred();
            let mut done = Vec::new();
            for volume in &marked {
                if self.stopping.load(Ordering::SeqCst) {
                    break;
                }
                match self.detach(volume) {
                    Ok(dev) => {
                        tracing::info!("ublk: deferred removal of {} done", dev.display());
                        done.push(volume.clone());
                    }
                    Err(e) if e.kind == AttachErrorKind::Busy => {}
                    // Detached meanwhile by someone else, or failing for good: stop watching.
                    Err(e) => {
                        if e.kind != AttachErrorKind::State {
                            tracing::error!("ublk: deferred removal: {}", crate::units::chain(&e));
                        }
                        done.push(volume.clone());
                    }
                }
            }
            let mut d = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
            if !done.is_empty() {
                d.0.retain(|v| !done.contains(v));
                if let Err(e) = self.save_deferred(&d.0, "") {
                    tracing::error!("{}", crate::units::chain(&e));
                }
            }
            if d.0.is_empty() || self.stopping.load(Ordering::SeqCst) {
                d.1 = false;
                return;
            }
        }
    }

    fn save_deferred(&self, set: &BTreeSet<String>, volume: &str) -> Result<(), AttachError> {
        let io = |e: std::io::Error| {
            let msg = format!("writing {}: {e}", self.deferred_file.display());
            AttachError::new(AttachErrorKind::Io, "detach", volume, msg)
        };
        let tmp = self.deferred_file.with_extension("json.tmp");
        let body = serde_json::to_vec(set).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, &self.deferred_file).map_err(io)
    }

    /// Takes over the devices a previous daemon recorded (after it died); records whose
    /// device is gone are dropped, and those it was to detach at their last close are
    /// watched again. Returns what was recovered and what failed.
    pub fn recover(self: &Arc<Self>) -> Vec<(String, Result<PathBuf, AttachError>)> {
        let recorded: BTreeMap<String, u32> = std::fs::read(&self.records)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut out = Vec::new();
        let mut d = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        for (volume, id) in recorded {
            if !Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists() {
                continue;
            }
            let r = self
                .catalog
                .open_for_local_client(&volume)
                .ok_or_else(|| {
                    AttachError::new(
                        AttachErrorKind::NotFound,
                        "recover",
                        &volume,
                        "no such volume",
                    )
                })
                .and_then(|export| start(&volume, export, Some(id)));
            match r {
                Ok(dev) => {
                    tracing::info!("ublk: {volume} taken over on {}", device_path(id).display());
                    d.insert(volume.clone(), dev);
                    out.push((volume, Ok(device_path(id))));
                }
                Err(e) => {
                    tracing::error!("{}", crate::units::chain(&e));
                    out.push((volume, Err(e)));
                }
            }
        }
        if let Err(e) = self.save(&d, "recover", "") {
            tracing::error!("{}", crate::units::chain(&e));
        }
        drop(d);
        let marked: BTreeSet<String> = std::fs::read(&self.deferred_file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        for volume in marked {
            if out.iter().any(|(v, r)| *v == volume && r.is_ok()) {
                if let Err(e) = self.defer(&volume) {
                    tracing::error!("{}", crate::units::chain(&e));
                }
            }
        }
        if self.deferred().is_empty() {
            let _ = std::fs::remove_file(&self.deferred_file);
        }
        out
    }

    /// Detaches every device nobody uses; devices in use (a mounted file system) are left to
    /// a successor daemon to take over.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for (volume, path) in self.list() {
            match self.detach(&volume) {
                Ok(_) => {}
                Err(e) if e.kind == AttachErrorKind::Busy => {
                    tracing::warn!("ublk: {} stays for the next daemon: {e}", path.display())
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    fn save(
        &self,
        d: &BTreeMap<String, Device>,
        op: &'static str,
        volume: &str,
    ) -> Result<(), AttachError> {
        let map: BTreeMap<&str, u32> = d.iter().map(|(v, dev)| (v.as_str(), dev.id)).collect();
        let io = |e: std::io::Error| {
            let msg = format!("writing {}: {e}", self.records.display());
            AttachError::new(AttachErrorKind::Io, op, volume, msg)
        };
        let tmp = self.records.with_extension("json.tmp");
        let body = serde_json::to_vec(&map).map_err(|e| io(std::io::Error::other(e)))?;
        std::fs::write(&tmp, body).map_err(io)?;
        std::fs::rename(&tmp, &self.records).map_err(io)
    }
}

use std::os::unix::fs::OpenOptionsExt;

/// What a device thread reports once the kernel started its device (or why it could not).
enum Started {
    Id(u32),
    Failed(String),
}

/// Creates (or, with `recover`, takes over) a device serving `export` and returns once the
/// kernel has started it. The device's thread runs until the device is stopped.
fn start(
    volume: &str,
    export: Arc<dyn Export>,
    recover: Option<u32>,
) -> Result<Device, AttachError> {
    let op = if recover.is_some() { "recover" } else { "attach" };
    let kernel = |what: &str, e: &dyn std::fmt::Debug| {
        AttachError::new(AttachErrorKind::Kernel, op, volume, format!("{what}: {e:?}"))
    };
    let (tx, rx) = mpsc::channel::<Started>();
    let queues = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16) as u16;
    let name = format!("ublk-{volume}");
    let vol = volume.to_owned();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let b = UblkCtrlBuilder::default()
                .name("lamina")
                .nr_queues(queues)
                .depth(DEPTH)
                .io_buf_bytes(BUF_BYTES)
                .ctrl_flags(ctrl_flags());
            let b = match recover {
                Some(id) => b.id(id as i32).dev_flags(UblkFlags::UBLK_DEV_F_RECOVER_DEV),
                None => b.id(-1).dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV),
            };
            let ctrl = match b.build() {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Started::Failed(format!("creating the device: {e:?}")));
                    return;
                }
            };
            if recover.is_some() {
                if let Err(e) = ctrl.start_user_recover() {
                    let _ = tx.send(Started::Failed(format!("START_USER_RECOVERY: {e:?}")));
                    return;
                }
            }
            let size = export.size();
            let tgt_init = move |dev: &mut UblkDev| {
                set_params(dev, size);
                Ok(())
            };
            let ex = export.clone();
            let q_fn = move |qid: u16, dev: &UblkDev| serve::serve_queue(qid, dev, ex.as_ref());
            let started = tx.clone();
            let r = ctrl.run_target(tgt_init, q_fn, move |c: &UblkCtrl| {
                let _ = started.send(Started::Id(c.dev_info().dev_id));
            });
            match r {
                Ok(_) => tracing::info!("ublk: {vol}: device served until it stopped"),
                Err(e) => {
                    let _ = tx.send(Started::Failed(format!("starting the device: {e:?}")));
                }
            }
        })
        .map_err(|e| kernel("spawning the device thread", &e))?;
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Started::Id(id)) => Ok(Device { id, thread }),
        Ok(Started::Failed(why)) => {
            let _ = thread.join();
            Err(AttachError::new(AttachErrorKind::Kernel, op, volume, why))
        }
        Err(e) => Err(kernel("waiting for the device to start", &e)),
    }
}

/// Block-layer limits of a device of `size` bytes: 4 KiB blocks, a volatile cache with FUA
/// (FLUSH and FUA reach the export), discard and write-zeroes up to 1 GiB per request.
fn set_params(dev: &mut UblkDev, size: u64) {
    use libublk::sys;
    dev.set_default_params(size);
    let p = &mut dev.tgt.params;
    p.types |= sys::UBLK_PARAM_TYPE_DISCARD;
    p.basic.attrs = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
    p.basic.logical_bs_shift = BLOCK_SHIFT;
    p.basic.physical_bs_shift = BLOCK_SHIFT;
    p.basic.io_min_shift = BLOCK_SHIFT;
    p.basic.io_opt_shift = BLOCK_SHIFT;
    p.discard = sys::ublk_param_discard {
        discard_granularity: 1 << BLOCK_SHIFT,
        max_discard_sectors: (1 << 30) >> 9,
        max_write_zeroes_sectors: (1 << 30) >> 9,
        max_discard_segments: 1,
        ..Default::default()
    };
}
