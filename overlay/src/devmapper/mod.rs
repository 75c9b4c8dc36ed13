//! The devicemapper driver: Docker's devicemapper graph driver over lamina's thin pool.
//!
//! ```text
//! ROOT/devicemapper/prefix       volume-name prefix of this store (random, fixed at creation)
//! ROOT/devicemapper/base         present once the base device is made and formatted
//! ROOT/<cache-id>/device         the layer's or container's thin volume in the pool
//! ROOT/<cache-id>/attached       its block device while attached
//! ROOT/<cache-id>/mnt/           where that device is mounted; the tree is mnt/rootfs
//! ```
//!
//! As in Docker (moby `daemon/graphdriver/devmapper`, removed in 25.0): a base volume of
//! `dm.basesize` is formatted with `dm.fs` once, with an empty `rootfs/`; every layer is a
//! thin snapshot of its parent's volume (the base for the first layer) with the layer tar
//! applied to its mounted `rootfs`, after which it is only ever mounted read-only; a
//! container is a snapshot of its image's top layer, mounted from its own block device; a
//! commit diffs the container's tree against its top layer's and stores that as a new layer.
//! Unmounting a busy device fails, or with `dm.use_deferred_removal` is done lazily and the
//! device released when its last user leaves; the pool defers deleting a volume still open.
//! Volumes come from a [`DeviceProvider`]: the pool daemon in the appliance, loop devices in
//! the host tests.

pub mod options;
pub mod provider;

use std::path::{Path, PathBuf};

use rustix::mount::{MountFlags, UnmountFlags};

pub use options::{DmOptions, Fs};
pub use provider::{DeviceProvider, PoolDaemon, PoolUsage};

use crate::apply::{self, WhiteoutMode};
use crate::digest::{Digest, HashReader};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil;
use crate::mount::is_mountpoint;
use crate::store::{Driver, LayerMeta, Store};

/// The driver's state inside a [`Store`].
pub struct Dm {
    pub opts: DmOptions,
    pub provider: Box<dyn DeviceProvider>,
    prefix: String,
}

impl Dm {
    pub fn new(opts: DmOptions, provider: Box<dyn DeviceProvider>) -> Dm {
        Dm { opts, provider, prefix: String::new() }
    }

    fn base(&self) -> String {
        format!("{}-base", self.prefix)
    }
}

/// Runs the mkfs command line `argv`. The program is looked up on `PATH` and then in the sbin
/// directories, which a minimal `PATH` (the appliance's agent and init pass none) leaves out.
fn run_mkfs(argv: &[String]) -> Result<()> {
    let package = if argv[0].starts_with("mkfs.xfs") { "xfsprogs" } else { "e2fsprogs" };
    let prog = crate::quota::find_program(
        &argv[0],
        package,
        "the devicemapper base device",
        std::env::var_os("PATH"),
    )?;
    let args: Vec<&std::ffi::OsStr> = argv[1..].iter().map(|a| a.as_ref()).collect();
    crate::fsutil::run_tool(&prog, &args, &argv.join(" "), package).map(drop)
}

/// Unmount, retrying EBUSY for up to a second: a process forking at that moment holds our
/// own fds into the mount until it execs (Docker's devicemapper retried a busy removal the
/// same way, up to 200 times). Still busy after that: really in use.
fn unmount_retrying(mnt: &Path) -> rustix::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match rustix::mount::unmount(mnt, UnmountFlags::empty()) {
            Err(rustix::io::Errno::BUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            r => return r,
        }
    }
}

/// A device that cannot be removed because it is in use, with Docker's remedy.
fn busy(
    volume: &str,
    dir: &Path,
    source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
) -> Error {
    Error::with_source(
        ErrorKind::Conflict,
        format!(
            "devmapper: device {volume} is busy (mounted at {} and in use, or held by a running \
             container's mount namespace); stop its users, or set dm.use_deferred_removal=true \
             to remove it when the last one leaves",
            dir.join("mnt").display()
        ),
        source,
    )
}

impl Store {
    pub(crate) fn dm(&self) -> Result<&Dm> {
        self.dm.as_ref().ok_or_else(|| {
            Error::new(ErrorKind::Invalid, "devicemapper store opened without a device provider")
        })
    }

    /// At open: the volume prefix, and the base device (made and formatted once).
    pub(crate) fn dm_init(&mut self) -> Result<()> {
        let dir = self.root.join("devicemapper");
        std::fs::create_dir_all(&dir).ctx("create", &dir)?;
        let prefix = match std::fs::read_to_string(dir.join("prefix")) {
            Ok(p) => p.trim().to_string(),
            Err(_) => {
                let p = format!("lamina-{}", &fsutil::random_hex(4));
                fsutil::write_atomic(&dir, "prefix", p.as_bytes())?;
                p
            }
        };
        let dm = self.dm.as_mut().ok_or_else(|| {
            Error::new(ErrorKind::Invalid, "devicemapper store opened without a device provider")
        })?;
        dm.prefix = prefix;
        if dir.join("base").exists() {
            return Ok(());
        }
        let dm = self.dm()?;
        let base = dm.base();
        // A previous attempt may have died part-way: start the base afresh.
        let _ = dm.provider.remove(&base);
        dm.provider.create(&base, dm.opts.basesize)?;
        let staging = tempfile::Builder::new()
            .prefix("base-")
            .tempdir_in(self.root.join("tmp"))
            .ctx("create staging in", &self.root)?
            .keep();
        std::fs::write(staging.join("device"), &base).ctx("write device in", &staging)?;
        let dev = match self.dm_attach(&staging) {
            Ok(dev) => dev,
            Err(e) => {
                let _ = dm.provider.remove(&base);
                let _ = fsutil::remove_tree(&staging);
                return Err(e);
            }
        };
        let made = run_mkfs(&dm.opts.mkfs_argv(&dev.to_string_lossy()))
            .and_then(|()| self.dm_mount(&staging, &dev, false))
            .and_then(|tree| crate::store::mkdir(&tree, 0o755));
        let done = self.dm_deactivate(&staging);
        made?;
        done?;
        fsutil::remove_tree(&staging)?;
        fsutil::write_atomic(&dir, "base", base.as_bytes())
    }

    /// The volume of a layer or container directory.
    pub(crate) fn dm_volume(&self, dir: &Path) -> Result<String> {
        let p = dir.join("device");
        Ok(std::fs::read_to_string(&p).ctx("read", &p)?.trim().to_string())
    }

    /// A new volume for `dir`: a snapshot of `origin` (a layer's volume) or of the base.
    /// Refused, as Docker does, when the pool has less than `dm.min_free_space` free.
    pub(crate) fn dm_new_device(&self, dir: &Path, origin: Option<&str>) -> Result<String> {
        let dm = self.dm()?;
        let u = dm.provider.usage()?;
        let min_free = u.data_total / 100 * u64::from(dm.opts.min_free_space_percent);
        let free = u.data_total.saturating_sub(u.data_used);
        if u.data_total > 0 && free < min_free {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "devmapper: Thin Pool has {free} free data bytes which is less than minimum \
                     required {min_free} free data bytes. Create more free space in thin pool or \
                     use dm.min_free_space option to change behavior"
                ),
            ));
        }
        let name = format!("{}-{}", dm.prefix, fsutil::random_hex(8));
        let from = origin.map(str::to_string).unwrap_or_else(|| dm.base());
        dm.provider.snapshot(&from, &name)?;
        std::fs::write(dir.join("device"), &name).ctx("write device in", dir)?;
        Ok(name)
    }

    fn dm_attach(&self, dir: &Path) -> Result<PathBuf> {
        let vol = self.dm_volume(dir)?;
        let dev = self.dm()?.provider.attach(&vol)?;
        std::fs::write(dir.join("attached"), dev.as_os_str().as_encoded_bytes())
            .ctx("write attached in", dir)?;
        Ok(dev)
    }

    fn dm_mount(&self, dir: &Path, dev: &Path, read_only: bool) -> Result<PathBuf> {
        let opts = &self.dm()?.opts;
        let mnt = dir.join("mnt");
        match std::fs::create_dir(&mnt) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io("create mount point", &mnt, e)),
        }
        let flags = if read_only { MountFlags::RDONLY } else { MountFlags::empty() };
        let data = std::ffi::CString::new(opts.mount_data(read_only))
            .map_err(|e| Error::with_source(ErrorKind::Invalid, "dm.mountopt with NUL", e))?;
        rustix::mount::mount(dev, &mnt, opts.fs.name(), flags, data.as_c_str()).map_err(|e| {
            Error::io(&format!("mount {} ({}) on", dev.display(), opts.fs.name()), &mnt, e)
        })?;
        Ok(mnt.join("rootfs"))
    }

    /// Attach and mount the volume of `dir` (if it is not already); returns its tree.
    pub(crate) fn dm_activate(&self, dir: &Path, read_only: bool) -> Result<PathBuf> {
        let mnt = dir.join("mnt");
        if is_mountpoint(&mnt) {
            return Ok(mnt.join("rootfs"));
        }
        let dev = self.dm_attach(dir)?;
        match self.dm_mount(dir, &dev, read_only) {
            Ok(tree) => Ok(tree),
            Err(e) => {
                let _ = self.dm_detach(dir);
                Err(e)
            }
        }
    }

    fn dm_detach(&self, dir: &Path) -> Result<()> {
        let p = dir.join("attached");
        let dev = match std::fs::read(&p) {
            Ok(b) => {
                PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Error::io("read", &p, e)),
        };
        let dm = self.dm()?;
        let vol = self.dm_volume(dir)?;
        match dm.provider.detach(&vol, &dev, dm.opts.deferred_removal) {
            Ok(false) => {}
            Ok(true) => tracing::info!(volume = %vol, "device in use: removed at its last close"),
            // Unmounted here, but still open: another mount namespace (a running container's,
            // which copied our mounts when it started) holds the filesystem.
            Err(e) if e.kind() == ErrorKind::Conflict => return Err(busy(&vol, dir, e)),
            Err(e) => return Err(e),
        }
        std::fs::remove_file(&p).ctx("remove", &p)
    }

    /// Unmount and detach the volume of `dir`. A busy mount fails, or with
    /// `dm.use_deferred_removal` is detached lazily: the filesystem and its device go when
    /// the last user leaves (Docker's deferred removal).
    pub(crate) fn dm_deactivate(&self, dir: &Path) -> Result<()> {
        let mnt = dir.join("mnt");
        if is_mountpoint(&mnt) {
            match unmount_retrying(&mnt) {
                Ok(()) => {}
                Err(rustix::io::Errno::BUSY) if self.dm()?.opts.deferred_removal => {
                    tracing::info!(dir = %dir.display(), "device busy: deferred removal");
                    rustix::mount::unmount(&mnt, UnmountFlags::DETACH)
                        .ctx("lazily unmount", &mnt)?;
                }
                Err(rustix::io::Errno::BUSY) => {
                    return Err(busy(&self.dm_volume(dir)?, dir, rustix::io::Errno::BUSY))
                }
                Err(e) => return Err(Error::io("unmount", &mnt, e)),
            }
        }
        self.dm_detach(dir)?;
        match std::fs::remove_dir(&mnt) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove mount point", &mnt, e)),
        }
    }

    /// Remove a layer or container directory and its volume. The pool defers deleting a
    /// volume that is still open (a lazily unmounted container whose user has not left).
    pub(crate) fn dm_remove_dir(&self, dir: &Path) -> Result<()> {
        if dir.join("device").exists() {
            self.dm_deactivate(dir)?;
            let vol = self.dm_volume(dir)?;
            match self.dm()?.provider.remove(&vol) {
                Ok(true) if !self.dm()?.opts.deferred_deletion => {
                    // The pool daemon always defers deleting an open volume (its Service's
                    // deferred deletion); Docker without dm.use_deferred_deletion would have
                    // failed the removal instead.
                    tracing::warn!(volume = %vol, "volume still open: the pool deletes it when released");
                }
                Ok(true) => tracing::info!(volume = %vol, "volume busy: deletion deferred"),
                Ok(false) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        fsutil::remove_tree(dir)
    }

    /// [`Store::add_layer`] for devicemapper: snapshot the parent's volume, apply the layer to
    /// it, and keep it (read-only from then on) once it is recorded.
    pub(crate) fn dm_add_layer(
        &self,
        parent: Option<&LayerMeta>,
        tar: impl std::io::Read,
        expect: Option<&Digest>,
    ) -> Result<LayerMeta> {
        let staging = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(|e| Error::io("create staging dir in", &self.root.join("tmp"), e))?
            .keep();
        let origin = match parent {
            Some(p) => Some(self.dm_volume(&self.layer_dir(&p.cache_id))?),
            None => None,
        };
        let applied = self.dm_new_device(&staging, origin.as_deref()).and_then(|_| {
            let tree = self.dm_activate(&staging, false)?;
            let mut hr = HashReader::new(tar);
            apply::apply_tar_over(
                apply::PadTail::new(&mut hr),
                &tree,
                &[],
                WhiteoutMode::Vfs,
                self.limits,
            )?;
            let (diff_id, _) = hr.finish().ctx("read layer stream for", &tree)?;
            let size = fsutil::tree_size(&tree)?;
            fsutil::syncfs(&tree)?;
            Ok((diff_id, size))
        });
        let deactivated = self.dm_deactivate(&staging);
        let (diff_id, size) = match applied.and_then(|v| deactivated.map(|()| v)) {
            Ok(v) => v,
            Err(e) => {
                let _ = self.dm_remove_dir(&staging);
                return Err(e);
            }
        };
        if let Err(e) = crate::store::check_diff_id(expect, &diff_id) {
            self.dm_remove_dir(&staging)?;
            return Err(e);
        }
        let chain_id = Digest::chain(parent.map(|p| &p.chain_id), &diff_id);
        if let Some(existing) = self.layer(&chain_id)? {
            self.dm_remove_dir(&staging)?;
            return Ok(existing);
        }
        let cache_id = fsutil::random_hex(32);
        let dir = self.layer_dir(&cache_id);
        std::fs::rename(&staging, &dir).ctx("move layer into place", &dir)?;
        self.record_layer(LayerMeta::new(chain_id, diff_id, parent, cache_id, size), parent)
    }

    /// Docker's `info` for this store: the driver, and for devicemapper the pool's fields with
    /// the driver's own settings.
    pub fn info(&self) -> Result<Vec<(String, String)>> {
        let mut v = vec![("Storage Driver".to_string(), self.driver.name().to_string())];
        if self.driver != Driver::Devicemapper {
            v.push(("Backing Filesystem".into(), crate::backing::fs_name(&self.root)?.to_string()));
            return Ok(v);
        }
        let dm = self.dm()?;
        let u = dm.provider.usage()?;
        let ours: Vec<(String, String)> = vec![
            ("Base Device Size".into(), units::human_size(dm.opts.basesize)),
            ("Backing Filesystem".into(), dm.opts.fs.name().into()),
            (
                "Thin Pool Minimum Free Space".into(),
                units::human_size(u.data_total / 100 * u64::from(dm.opts.min_free_space_percent)),
            ),
            ("Deferred Removal Enabled".into(), dm.opts.deferred_removal.to_string()),
            ("Deferred Deletion Enabled".into(), dm.opts.deferred_deletion.to_string()),
        ];
        for (k, val) in u.fields {
            match ours.iter().find(|(ok, _)| *ok == k) {
                Some((_, mine)) => v.push((k, mine.clone())),
                None => v.push((k, val)),
            }
        }
        for (k, val) in ours {
            if !v.iter().any(|(vk, _)| *vk == k) {
                v.push((k, val));
            }
        }
        Ok(v)
    }
}

impl Store {
    /// The naive diff of a devicemapper container: its tree against its top layer's, both
    /// mounted (the layer read-only) for the walk.
    pub(crate) fn dm_container_diff<W: std::io::Write>(
        &self,
        c: &crate::container::ContainerMeta,
        out: W,
    ) -> Result<(W, Digest, u64)> {
        let cdir = self.layer_dir(&c.cache_id);
        let was_mounted = is_mountpoint(&cdir.join("mnt"));
        let tree = self.dm_activate(&cdir, false)?;
        let img = self.resolve_image(c.image.as_str())?;
        let top = match img.top_chain() {
            Some(ch) => Some(
                self.layer(ch)?
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("layer {ch}")))?,
            ),
            None => None,
        };
        let ldir = top.as_ref().map(|t| self.layer_dir(&t.cache_id));
        let written = (|| {
            let base = match &ldir {
                Some(d) => self.dm_activate(d, true)?,
                None => self.root.join("tmp"),
            };
            let hw = crate::digest::HashWriter::new(out);
            Ok(crate::diff::write_changes(&base, &tree, hw)?.finish())
        })();
        if let Some(d) = &ldir {
            self.dm_deactivate(d)?;
        }
        if !was_mounted {
            self.dm_deactivate(&cdir)?;
        }
        written
    }
}
