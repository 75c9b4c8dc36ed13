//! The layer store: an overlay2-compatible directory tree plus JSON metadata.
//!
//! ```text
//! ROOT/                         (0710) e.g. /var/lib/lamina/overlay2
//! ├── driver                    "overlay" or "vfs": fixed when the store is created
//! ├── .lock                     flock held by the one process using the store
//! ├── l/                        (0700) short links, so mount options stay short
//! │   └── <26 × A-Z2-7>  ->  ../<cache-id>/diff
//! ├── <cache-id>/               one per image layer and per container (64 random hex)
//! │   ├── diff/                 this layer's content = overlay upperdir
//! │   │                         (vfs: a full copy of the parent plus this layer)
//! │   ├── link                  its short id (overlay only)
//! │   ├── lower                 "l/AAA:l/BBB:…", uppermost first (only with a parent)
//! │   ├── work/                 overlay workdir (only with a parent)
//! │   ├── merged/               mount point while mounted (removed on unmount)
//! │   └── committed             empty; set once a child is created on this layer
//! ├── <cache-id>-removing/      a container mid-removal; finished at the next open
//! ├── layerdb/<chain-hex>.json  LayerMeta: chain id, diff id, parent, cache id, size
//! ├── imagedb/<config-hex>.json ImageMeta: config/manifest/layer blobs and tags
//! ├── containers/<name>.json    ContainerMeta ( <name>-removing.json while removing )
//! ├── quota.json                next XFS project id for `create --size` (never reused); each
//! │                             container's id is in its ContainerMeta
//! ├── blobs/sha256/<hex>        original manifest, config and layer blobs, byte-exact,
//! │                             so exports reproduce every digest
//! ├── volumes/<name>/_data      named volumes
//! └── tmp/                      staging for imports and exports; emptied at open
//! ```
//!
//! Every JSON file is written with temp file + fsync + rename + fsync of the directory. A
//! layer is staged under `tmp/` and renamed into place only when complete, the filesystem is
//! flushed once (syncfs), and its `layerdb` entry — written last — is what makes it exist.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fd::OwnedFd;
use serde::{Deserialize, Serialize};

use crate::apply::{self, Limits, WhiteoutMode};
use crate::digest::{Digest, HashReader, HashWriter};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil;
use crate::mount::{KernelMounter, Mounter};
use crate::source::{Compression, Descriptor, Source, SourceImage, MT_OCI_MANIFEST};

/// overlay2's limit on lower layers per mount (moby `maxDepth`).
pub const MAX_DEPTH: usize = 128;

/// Storage driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Layers are overlay diffs stacked at mount time.
    Overlay,
    /// Every layer and container is a full copy of its parent (Docker's slow baseline).
    Vfs,
    /// Every layer is a read-only btrfs subvolume snapshot of its parent plus the layer;
    /// a container is a writable snapshot (see [`crate::btrfs`]).
    Btrfs,
    /// Every layer is a thin snapshot of its parent's volume in lamina's pool with the layer
    /// applied; a container a snapshot mounted from its own block device (see
    /// [`crate::devmapper`]).
    Devicemapper,
}

impl Driver {
    pub fn name(self) -> &'static str {
        match self {
            Driver::Overlay => "overlay",
            Driver::Vfs => "vfs",
            Driver::Btrfs => "btrfs",
            Driver::Devicemapper => "devicemapper",
        }
    }

    /// A driver by the name Docker gives it. aufs and zfs are Docker drivers lamina cannot
    /// offer: they are refused with the reason.
    pub fn from_name(name: &str) -> Result<Driver> {
        match name {
            "overlay" | "overlay2" => Ok(Driver::Overlay),
            "vfs" => Ok(Driver::Vfs),
            "btrfs" => Ok(Driver::Btrfs),
            "devicemapper" => Ok(Driver::Devicemapper),
            "aufs" => Err(Error::new(
                ErrorKind::Unsupported,
                "aufs: the aufs driver needs the aufs filesystem, which was never merged into \
                 mainline Linux (Docker removed the driver in 24.0); use overlay (overlay2)",
            )),
            "zfs" => Err(Error::new(
                ErrorKind::Unsupported,
                "zfs: the zfs driver needs the ZFS kernel module, which is not part of Debian's \
                 kernel (OpenZFS is CDDL-licensed and built out of tree by zfs-dkms); use btrfs \
                 for subvolume snapshots",
            )),
            other => Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "unknown storage driver {other:?}: use overlay, vfs, btrfs or devicemapper"
                ),
            )),
        }
    }

    /// Whether every layer holds the whole tree (whiteouts delete, diffs are computed by
    /// comparing trees) rather than only its own changes.
    pub(crate) fn full_copies(self) -> bool {
        matches!(self, Driver::Vfs | Driver::Btrfs | Driver::Devicemapper)
    }
}

/// One stored layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerMeta {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub parent: Option<Digest>,
    pub cache_id: String,
    /// Bytes of regular files in `diff/`.
    pub size: u64,
}

impl LayerMeta {
    pub(crate) fn new(
        chain_id: Digest,
        diff_id: Digest,
        parent: Option<&LayerMeta>,
        cache_id: String,
        size: u64,
    ) -> Self {
        LayerMeta { chain_id, diff_id, parent: parent.map(|p| p.chain_id.clone()), cache_id, size }
    }
}

/// A layer whose content does not hash to the diffID the image names is refused, as Docker
/// refuses it.
pub(crate) fn check_diff_id(expect: Option<&Digest>, got: &Digest) -> Result<()> {
    match expect {
        Some(e) if e != got => Err(Error::new(
            ErrorKind::DigestMismatch,
            format!("invalid diffID for layer: expected {e}, got {got}"),
        )),
        _ => Ok(()),
    }
}

/// A layer of an image: where its content is and which blob it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageLayer {
    pub chain_id: Digest,
    pub diff_id: Digest,
    pub blob: Descriptor,
}

/// One stored image; its id is the digest of its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub id: Digest,
    pub config_media_type: String,
    pub config_size: u64,
    pub manifest: Descriptor,
    pub layers: Vec<ImageLayer>,
    pub tags: Vec<String>,
    pub created: u64,
}

impl ImageMeta {
    pub fn top_chain(&self) -> Option<&Digest> {
        self.layers.last().map(|l| &l.chain_id)
    }
}

/// The store. One process uses a store at a time (an exclusive flock on `ROOT/.lock`).
pub struct Store {
    pub(crate) root: PathBuf,
    pub(crate) driver: Driver,
    pub(crate) mounter: Box<dyn Mounter>,
    pub(crate) limits: Limits,
    /// The devicemapper driver's options and device provider.
    pub(crate) dm: Option<crate::devmapper::Dm>,
    _lock: OwnedFd,
}

pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Docker's name rule for containers and volumes: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    let ok = name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !name.ends_with("-removing");
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Invalid,
            format!("invalid {what} name {name:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]*"),
        ))
    }
}

/// `name` → `name:latest`; `host:5000/a/b:tag` stays.
pub fn normalize_tag(tag: &str) -> Result<String> {
    if tag.is_empty()
        || tag.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        || tag.contains('@')
    {
        return Err(Error::new(ErrorKind::Invalid, format!("invalid image reference {tag:?}")));
    }
    let last = tag.rsplit('/').next().unwrap_or(tag);
    Ok(if last.contains(':') { tag.to_string() } else { format!("{tag}:latest") })
}

/// Tags compare equal with or without the implicit `docker.io/` and `docker.io/library/`.
pub(crate) fn short_tag(t: &str) -> &str {
    t.strip_prefix("docker.io/library/").or_else(|| t.strip_prefix("docker.io/")).unwrap_or(t)
}

impl Store {
    /// Open (creating if needed) a store with the real kernel mounter.
    pub fn open(root: &Path, driver: Driver) -> Result<Store> {
        Store::open_with(root, driver, Box::new(KernelMounter::default()))
    }

    /// Open with a given mount seam.
    pub fn open_with(root: &Path, driver: Driver, mounter: Box<dyn Mounter>) -> Result<Store> {
        if driver == Driver::Devicemapper {
            return Err(Error::new(
                ErrorKind::Invalid,
                "the devicemapper driver needs its options and pool: use Store::open_devicemapper",
            ));
        }
        Store::open_inner(root, driver, mounter, None)
    }

    /// Open (creating if needed) a devicemapper store whose volumes come from `provider`.
    /// At creation the base device is made and formatted.
    pub fn open_devicemapper(
        root: &Path,
        opts: crate::devmapper::DmOptions,
        provider: Box<dyn crate::devmapper::DeviceProvider>,
    ) -> Result<Store> {
        Store::open_inner(
            root,
            Driver::Devicemapper,
            Box::new(KernelMounter::default()),
            Some(crate::devmapper::Dm::new(opts, provider)),
        )
    }

    fn open_inner(
        root: &Path,
        driver: Driver,
        mounter: Box<dyn Mounter>,
        dm: Option<crate::devmapper::Dm>,
    ) -> Result<Store> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o710)
            .create(root)
            .ctx("create store root", root)?;
        let root = std::fs::canonicalize(root).ctx("resolve", root)?;
        let lockf = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join(".lock"))
            .ctx("open lock file in", &root)?;
        let lock = OwnedFd::from(lockf);
        // A flock belongs to the open file, and a child being spawned holds a copy of every
        // descriptor from its fork until its exec closes the CLOEXEC ones: a store closed by
        // a process that spawns children can stay locked for that instant. So wait briefly
        // before calling the store busy; a real second user still gets Conflict.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(500);
        loop {
            match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => {
                    return Err(Error::with_source(
                        ErrorKind::Conflict,
                        format!("store {} is in use by another process", root.display()),
                        e,
                    ))
                }
            }
        }
        for (d, mode) in [
            ("l", 0o700),
            ("layerdb", 0o700),
            ("imagedb", 0o700),
            ("containers", 0o700),
            ("blobs/sha256", 0o700),
            ("volumes", 0o701),
            ("tmp", 0o700),
        ] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(root.join(d))
                .ctx("create", &root.join(d))?;
        }
        match std::fs::read_to_string(root.join("driver")) {
            Ok(s) if s.trim() == driver.name() => {}
            Ok(s) => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "store {} was created with driver {:?}, not {}",
                        root.display(),
                        s.trim(),
                        driver.name()
                    ),
                ))
            }
            Err(_) => fsutil::write_atomic(&root, "driver", driver.name().as_bytes())?,
        }
        match driver {
            Driver::Overlay => crate::backing::check(&root, crate::backing::supports_dtype)?,
            Driver::Btrfs => crate::btrfs::check_backing(&root)?,
            Driver::Vfs | Driver::Devicemapper => {}
        }
        let mut store = Store { root, driver, mounter, limits: Limits::default(), dm, _lock: lock };
        // Recovery first: a base device whose making was interrupted is dropped with its
        // staging directory, then made afresh.
        store.recover()?;
        if driver == Driver::Devicemapper {
            store.dm_init()?;
        }
        Ok(store)
    }

    /// Override the hostile-archive limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn driver(&self) -> Driver {
        self.driver
    }

    /// Finish interrupted removals, drop staging leftovers, repair missing `l/` links.
    fn recover(&self) -> Result<()> {
        let tmp = self.root.join("tmp");
        for e in std::fs::read_dir(&tmp).ctx("read", &tmp)? {
            self.remove_layer_tree(&e.ctx("read", &tmp)?.path())?;
        }
        let cdir = self.root.join("containers");
        for e in std::fs::read_dir(&cdir).ctx("read", &cdir)? {
            let p = e.ctx("read", &cdir)?.path();
            if p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with("-removing.json"))
            {
                if let Ok(c) = fsutil::read_json::<crate::container::ContainerMeta>(&p) {
                    tracing::info!(container = %c.name, "finishing interrupted removal");
                    self.finish_remove(&c)?;
                }
                std::fs::remove_file(&p).ctx("remove", &p)?;
            }
        }
        self.remove_orphans()?;
        let mut linked = BTreeSet::new();
        for e in std::fs::read_dir(&self.root).ctx("read", &self.root)? {
            let e = e.ctx("read", &self.root)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with("-removing") {
                self.remove_layer_tree(&e.path())?;
            } else if name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
                if let Ok(link) = std::fs::read_to_string(e.path().join("link")) {
                    let l = self.root.join("l").join(link.trim());
                    if std::fs::symlink_metadata(&l).is_err() {
                        tracing::warn!(layer = %name, "recreating missing short link");
                        std::os::unix::fs::symlink(format!("../{name}/diff"), &l)
                            .ctx("symlink", &l)?;
                    }
                    linked.insert(link.trim().to_string());
                }
            }
        }
        // Links whose layer is gone (a removal interrupted before it unlinked them).
        let ldir = self.root.join("l");
        for e in std::fs::read_dir(&ldir).ctx("read", &ldir)? {
            let e = e.ctx("read", &ldir)?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !linked.contains(&name) {
                tracing::warn!(link = %name, "removing dangling short link");
                std::fs::remove_file(e.path()).ctx("remove", &e.path())?;
            }
        }
        Ok(())
    }

    /// Layer directories nothing records: a crash after a layer (or container) was moved into
    /// place but before its layerdb entry (or container metadata) was written leaves a whole
    /// tree that no removal would ever find. The record is written last, so a directory
    /// without one never existed as far as the store is concerned; its `l/` link goes with
    /// the dangling-link pass.
    fn remove_orphans(&self) -> Result<()> {
        let mut known: BTreeSet<String> = self.layers()?.into_iter().map(|l| l.cache_id).collect();
        known.extend(self.containers()?.into_iter().map(|c| c.cache_id));
        for e in std::fs::read_dir(&self.root).ctx("read", &self.root)? {
            let e = e.ctx("read", &self.root)?;
            let name = e.file_name().to_string_lossy().into_owned();
            let is_layer_dir = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
            if is_layer_dir && !known.contains(&name) {
                tracing::warn!(dir = %name, "removing a layer directory no record names");
                let removing = self.root.join(format!("{name}-removing"));
                std::fs::rename(e.path(), &removing).ctx("rename", &e.path())?;
                self.remove_layer_tree(&removing)?;
            }
        }
        Ok(())
    }

    /// Remove a layer or container directory (already renamed `-removing`).
    pub(crate) fn remove_layer_tree(&self, dir: &Path) -> Result<()> {
        match self.driver {
            Driver::Btrfs => crate::btrfs::remove_layer_dir(dir),
            Driver::Devicemapper => self.dm_remove_dir(dir),
            _ => fsutil::remove_tree(dir),
        }
    }

    // ---- paths and metadata ------------------------------------------------------------

    /// overlay2's per-layer files in a layer being built at `dir`: `link` (a fresh short id,
    /// returned) and, above other layers, `lower` (their `l/` links, nearest first) and `work/`.
    /// Nothing with the vfs driver.
    pub(crate) fn write_overlay_files(
        &self,
        dir: &Path,
        lower: &[String],
    ) -> Result<Option<String>> {
        if self.driver != Driver::Overlay {
            return Ok(None);
        }
        let link = fsutil::short_id();
        std::fs::write(dir.join("link"), &link).ctx("write link in", dir)?;
        if !lower.is_empty() {
            std::fs::write(dir.join("lower"), lower.join(":")).ctx("write lower in", dir)?;
            mkdir(&dir.join("work"), 0o700)?;
        }
        Ok(Some(link))
    }

    pub(crate) fn layer_dir(&self, cache_id: &str) -> PathBuf {
        self.root.join(cache_id)
    }

    fn layer_meta_path(&self, chain: &Digest) -> PathBuf {
        self.root.join("layerdb").join(format!("{}.json", chain.hex()))
    }

    pub fn layer(&self, chain: &Digest) -> Result<Option<LayerMeta>> {
        match fsutil::read_json(&self.layer_meta_path(chain)) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub fn layers(&self) -> Result<Vec<LayerMeta>> {
        read_all(&self.root.join("layerdb"))
    }

    pub(crate) fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }

    /// Store bytes as a blob; returns its digest.
    pub(crate) fn put_blob(&self, bytes: &[u8]) -> Result<Digest> {
        let d = Digest::of(bytes);
        if !self.blob_path(&d).exists() {
            fsutil::write_atomic(&self.root.join("blobs/sha256"), d.hex(), bytes)?;
        }
        Ok(d)
    }

    /// Number of stored blobs.
    pub fn blob_count(&self) -> usize {
        std::fs::read_dir(self.root.join("blobs/sha256")).map(|r| r.count()).unwrap_or(0)
    }

    pub(crate) fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        std::fs::read(self.blob_path(d)).ctx("read blob", &self.blob_path(d))
    }

    pub fn images(&self) -> Result<Vec<ImageMeta>> {
        let mut v: Vec<ImageMeta> = read_all(&self.root.join("imagedb"))?;
        v.sort_by(|a, b| a.tags.cmp(&b.tags).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    pub(crate) fn save_image(&self, img: &ImageMeta) -> Result<()> {
        fsutil::write_json(&self.root.join("imagedb"), &format!("{}.json", img.id.hex()), img)
    }

    /// Find an image by tag, `sha256:` id, or id prefix (≥ 4 hex digits).
    pub fn resolve_image(&self, name: &str) -> Result<ImageMeta> {
        let images = self.images()?;
        if let Ok(tag) = normalize_tag(name) {
            if let Some(i) =
                images.iter().find(|i| i.tags.iter().any(|t| short_tag(t) == short_tag(&tag)))
            {
                return Ok(i.clone());
            }
        }
        let hex = name.strip_prefix("sha256:").unwrap_or(name);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<&ImageMeta> =
                images.iter().filter(|i| i.id.hex().starts_with(hex)).collect();
            if hits.len() == 1 {
                return Ok(hits[0].clone());
            }
            if hits.len() > 1 {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!("image id prefix {name:?} is ambiguous"),
                ));
            }
        }
        Err(Error::new(ErrorKind::NotFound, format!("no such image: {name}")))
    }

    /// Point `tag` at `id`, removing it from any other image.
    pub fn tag_image(&self, id: &Digest, tag: &str) -> Result<()> {
        let tag = normalize_tag(tag)?;
        for mut img in self.images()? {
            let before = img.tags.len();
            if &img.id == id {
                if !img.tags.iter().any(|t| short_tag(t) == short_tag(&tag)) {
                    img.tags.push(tag.clone());
                    img.tags.sort();
                    self.save_image(&img)?;
                }
            } else {
                img.tags.retain(|t| short_tag(t) != short_tag(&tag));
                if img.tags.len() != before {
                    self.save_image(&img)?;
                }
            }
        }
        Ok(())
    }

    // ---- layers ------------------------------------------------------------------------

    /// Create a layer on `parent` from an uncompressed tar stream. The DiffID is the sha256 of
    /// the stream exactly as read (including bytes after the end-of-archive marker); when
    /// `expect` is given it must match. Nothing is visible unless everything succeeded.
    pub(crate) fn add_layer(
        &self,
        parent: Option<&LayerMeta>,
        tar: impl Read,
        expect: Option<&Digest>,
    ) -> Result<LayerMeta> {
        if self.driver == Driver::Devicemapper {
            return self.dm_add_layer(parent, tar, expect);
        }
        let parent_lowers: Vec<String> = match (self.driver, parent) {
            (Driver::Overlay, Some(p)) => self.lowers_of(p)?,
            _ => Vec::new(),
        };
        let parent_link = match (self.driver, parent) {
            (Driver::Overlay, Some(p)) => Some(self.link_of(&p.cache_id)?),
            _ => None,
        };
        if parent_link.is_some() && parent_lowers.len() + 1 > MAX_DEPTH {
            return Err(Error::new(
                ErrorKind::Limit,
                format!("max depth exceeded: a layer may have at most {MAX_DEPTH} lower layers"),
            ));
        }
        let staging = tempfile::Builder::new()
            .prefix("layer-")
            .tempdir_in(self.root.join("tmp"))
            .map_err(|e| Error::io("create staging dir in", &self.root.join("tmp"), e))?;
        let diff = staging.path().join("diff");
        let mode = match (self.driver, parent) {
            (Driver::Vfs, Some(p)) => {
                fsutil::copy_tree(&self.layer_dir(&p.cache_id).join("diff"), &diff)?;
                WhiteoutMode::Vfs
            }
            (Driver::Vfs, None) => {
                mkdir(&diff, 0o755)?;
                WhiteoutMode::Vfs
            }
            (Driver::Btrfs, Some(p)) => {
                crate::btrfs::snapshot(&self.layer_dir(&p.cache_id).join("diff"), &diff)?;
                WhiteoutMode::Vfs
            }
            (Driver::Btrfs, None) => {
                crate::btrfs::create(&diff)?;
                rustix::fs::chmod(&diff, rustix::fs::Mode::from_raw_mode(0o755))
                    .ctx("chmod", &diff)?;
                WhiteoutMode::Vfs
            }
            (Driver::Devicemapper, _) => unreachable!("dm_add_layer"),
            (Driver::Overlay, _) => {
                mkdir(&diff, 0o755)?;
                WhiteoutMode::Overlay
            }
        };
        let lower_dirs: Vec<PathBuf> = match (self.driver, parent) {
            (Driver::Overlay, Some(p)) => {
                let mut v = vec![self.layer_dir(&p.cache_id).join("diff")];
                v.extend(parent_lowers.iter().map(|l| self.root.join(l)));
                v
            }
            _ => Vec::new(),
        };
        let mut hr = HashReader::new(tar);
        let stats = apply::apply_tar_over(
            apply::PadTail::new(&mut hr),
            &diff,
            &lower_dirs,
            mode,
            self.limits,
        )?;
        let (diff_id, _) = hr.finish().ctx("read layer stream for", &diff)?;
        check_diff_id(expect, &diff_id)?;
        let chain_id = Digest::chain(parent.map(|p| &p.chain_id), &diff_id);
        if let Some(existing) = self.layer(&chain_id)? {
            return Ok(existing);
        }
        let cache_id = fsutil::random_hex(32);
        let lower: Vec<String> = match &parent_link {
            Some(pl) => std::iter::once(format!("l/{pl}")).chain(parent_lowers).collect(),
            None => Vec::new(),
        };
        if self.driver == Driver::Btrfs {
            // A finished layer is never written again (its children are snapshots).
            crate::btrfs::set_readonly(&diff, true)?;
        }
        let link = self.write_overlay_files(staging.path(), &lower)?;
        let size = match stats.file_bytes {
            Some(b) => b,
            None => fsutil::tree_size(&diff)?,
        };
        let staged = staging.keep();
        let dir = self.layer_dir(&cache_id);
        std::fs::rename(&staged, &dir).ctx("move layer into place", &dir)?;
        if let Some(link) = &link {
            let l = self.root.join("l").join(link);
            std::os::unix::fs::symlink(format!("../{cache_id}/diff"), &l).ctx("symlink", &l)?;
        }
        self.record_layer(LayerMeta::new(chain_id, diff_id, parent, cache_id, size), parent)
    }

    /// The last steps of placing a layer, for every driver: its parent becomes committed, one
    /// flush of the filesystem makes the layer's files, its rename and links durable before
    /// the layerdb entry says it exists (no fsync per file while extracting), then the entry.
    pub(crate) fn record_layer(
        &self,
        meta: LayerMeta,
        parent: Option<&LayerMeta>,
    ) -> Result<LayerMeta> {
        if let Some(p) = parent {
            self.mark_committed(&p.cache_id)?;
        }
        fsutil::syncfs(&self.root)?;
        crate::fault::point("layer-placed");
        fsutil::write_json(
            &self.root.join("layerdb"),
            &format!("{}.json", meta.chain_id.hex()),
            &meta,
        )?;
        Ok(meta)
    }

    /// A stored layer's tree, for reading: its own changes (overlay) or the whole tree
    /// (vfs, btrfs; devicemapper mounts its device read-only until
    /// [`Store::release_layer_tree`]).
    pub fn layer_tree(&self, layer: &LayerMeta) -> Result<PathBuf> {
        let dir = self.layer_dir(&layer.cache_id);
        match self.driver {
            Driver::Devicemapper => self.dm_activate(&dir, true),
            _ => Ok(dir.join("diff")),
        }
    }

    /// Done with [`Store::layer_tree`].
    pub fn release_layer_tree(&self, layer: &LayerMeta) -> Result<()> {
        match self.driver {
            Driver::Devicemapper => self.dm_deactivate(&self.layer_dir(&layer.cache_id)),
            _ => Ok(()),
        }
    }

    pub(crate) fn mark_committed(&self, cache_id: &str) -> Result<()> {
        let p = self.layer_dir(cache_id).join("committed");
        if !p.exists() {
            File::create(&p).ctx("create", &p)?;
            rustix::fs::chmod(&p, rustix::fs::Mode::from_raw_mode(0o600)).ctx("chmod", &p)?;
        }
        Ok(())
    }

    pub(crate) fn link_of(&self, cache_id: &str) -> Result<String> {
        let p = self.layer_dir(cache_id).join("link");
        let s = std::fs::read_to_string(&p).ctx("read", &p)?;
        let s = s.trim();
        if s.len() != 26 || !s.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("{}: bad short link {s:?}", p.display()),
            ));
        }
        Ok(s.to_string())
    }

    /// The `lower` entries of a layer dir (empty for a base layer).
    pub(crate) fn lowers_of(&self, layer: &LayerMeta) -> Result<Vec<String>> {
        self.lowers_of_dir(&layer.cache_id)
    }

    pub(crate) fn lowers_of_dir(&self, cache_id: &str) -> Result<Vec<String>> {
        let p = self.layer_dir(cache_id).join("lower");
        match std::fs::read_to_string(&p) {
            Ok(s) => {
                let v: Vec<String> =
                    s.trim().split(':').filter(|x| !x.is_empty()).map(str::to_string).collect();
                for l in &v {
                    let ok = l.strip_prefix("l/").is_some_and(|id| {
                        id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric())
                    });
                    if !ok {
                        return Err(Error::new(
                            ErrorKind::Invalid,
                            format!("{}: bad lower entry {l:?}", p.display()),
                        ));
                    }
                }
                Ok(v)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(Error::io("read", &p, e)),
        }
    }
}

pub(crate) fn mkdir(p: &Path, mode: u32) -> Result<()> {
    rustix::fs::mkdir(p, rustix::fs::Mode::from_raw_mode(mode)).ctx("mkdir", p)?;
    rustix::fs::chmod(p, rustix::fs::Mode::from_raw_mode(mode)).ctx("chmod", p)
}

pub(crate) fn read_all<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<Vec<T>> {
    let mut out = Vec::new();
    let mut names: Vec<PathBuf> = Vec::new();
    for e in std::fs::read_dir(dir).ctx("read", dir)? {
        let p = e.ctx("read", dir)?.path();
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if n.ends_with(".json") && !n.starts_with('.') && !n.ends_with("-removing.json") {
            names.push(p);
        }
    }
    names.sort();
    for p in names {
        out.push(fsutil::read_json(&p)?);
    }
    Ok(out)
}

/// Map of chain id → number of images using it (for du and prune).
pub(crate) fn layer_users(images: &[ImageMeta]) -> BTreeMap<Digest, usize> {
    let mut m = BTreeMap::new();
    for i in images {
        for l in &i.layers {
            *m.entry(l.chain_id.clone()).or_insert(0) += 1;
        }
    }
    m
}

mod import;
#[cfg(test)]
mod tests;
