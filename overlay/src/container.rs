//! Containers: a read-write layer on an image, mounted as an overlay; commit, removal,
//! disk usage, pruning and OCI runtime bundles.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashWriter};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil;
use crate::mount::{kernel_has_index_param, OverlaySpec};
use crate::quota::{self, ProjectQuota, QuotaCtl, XfsQuota};
use crate::source::{Descriptor, MT_OCI_CONFIG, MT_OCI_LAYER, MT_OCI_MANIFEST};
use crate::store::{
    check_name, layer_users, mkdir, now, read_all, Driver, ImageLayer, ImageMeta, Store, MAX_DEPTH,
};
use crate::store::{normalize_tag, short_tag};

/// One container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerMeta {
    pub name: String,
    pub image: Digest,
    pub cache_id: String,
    pub size_limit: Option<u64>,
    pub project_id: Option<u32>,
    #[serde(default)]
    pub volumes: Vec<String>,
    pub created: u64,
}

/// Disk usage of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageUsage {
    pub id: Digest,
    pub tags: Vec<String>,
    /// All its layers.
    pub size: u64,
    /// Bytes in layers other images use too.
    pub shared: u64,
    /// Bytes only this image uses.
    pub exclusive: u64,
}

/// `du` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    pub images: Vec<ImageUsage>,
    /// Container name and the bytes of its own changes.
    pub containers: Vec<(String, u64)>,
    pub volumes: Vec<(String, u64)>,
    /// Bytes of all layers, each counted once.
    pub layers_total: u64,
}

/// What `prune` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PruneReport {
    pub images: Vec<Digest>,
    pub layers: usize,
    pub blobs: usize,
    pub volumes: Vec<String>,
    pub bytes: u64,
}

/// A named volume bound into a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeBind {
    pub name: String,
    pub dest: String,
    pub read_only: bool,
}

impl VolumeBind {
    /// Parse `NAME:/path[:ro|:rw]`.
    pub fn parse(s: &str) -> Result<VolumeBind> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || {
            Error::new(
                ErrorKind::Invalid,
                format!("volume binding {s:?}: expected NAME:/path[:ro|:rw]"),
            )
        };
        let (name, dest, ro) = match parts.as_slice() {
            [n, d] => (*n, *d, false),
            [n, d, "ro"] => (*n, *d, true),
            [n, d, "rw"] => (*n, *d, false),
            _ => return Err(bad()),
        };
        if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
            return Err(bad());
        }
        check_name("volume", name)?;
        Ok(VolumeBind { name: name.into(), dest: dest.into(), read_only: ro })
    }
}

/// RFC 3339 UTC time of a unix timestamp (civil-from-days, proleptic Gregorian).
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

impl Store {
    fn container_path(&self, name: &str) -> PathBuf {
        self.root.join("containers").join(format!("{name}.json"))
    }

    pub fn container(&self, name: &str) -> Result<ContainerMeta> {
        check_name("container", name)?;
        fsutil::read_json(&self.container_path(name)).map_err(|e| match e.kind() {
            ErrorKind::NotFound => {
                Error::new(ErrorKind::NotFound, format!("no such container: {name}"))
            }
            _ => e,
        })
    }

    pub fn containers(&self) -> Result<Vec<ContainerMeta>> {
        read_all(&self.root.join("containers"))
    }

    fn save_container(&self, c: &ContainerMeta) -> Result<()> {
        fsutil::write_json(&self.root.join("containers"), &format!("{}.json", c.name), c)
    }

    /// Create container `name` on `image`; `size` limits its own changes (XFS project quota).
    pub fn create(&self, image: &str, name: &str, size: Option<u64>) -> Result<ContainerMeta> {
        self.create_with_quota(image, name, size, &XfsQuota)
    }

    /// [`Store::create`] with an explicit quota seam.
    pub fn create_with_quota(
        &self,
        image: &str,
        name: &str,
        size: Option<u64>,
        quota: &dyn ProjectQuota,
    ) -> Result<ContainerMeta> {
        check_name("container", name)?;
        if self.container_path(name).exists() {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("container name {name:?} is already in use"),
            ));
        }
        let img = self.resolve_image(image)?;
        let top = match img.top_chain() {
            Some(c) => Some(self.layer(c)?.ok_or_else(|| {
                Error::new(ErrorKind::NotFound, format!("image {} lacks layer {c}", img.id))
            })?),
            None => None,
        };
        let mut lower = Vec::new();
        if let (Driver::Overlay, Some(t)) = (self.driver, &top) {
            lower.push(format!("l/{}", self.link_of(&t.cache_id)?));
            lower.extend(self.lowers_of(t)?);
            if lower.len() > MAX_DEPTH {
                return Err(Error::new(
                    ErrorKind::Limit,
                    format!(
                        "max depth exceeded: image {} has more than {MAX_DEPTH} layers",
                        img.id
                    ),
                ));
            }
        }
        let staging = tempfile::Builder::new()
            .prefix("container-")
            .tempdir_in(self.root.join("tmp"))
            .ctx("create staging in", &self.root)?;
        rustix::fs::chmod(staging.path(), rustix::fs::Mode::from_raw_mode(0o700))
            .ctx("chmod", staging.path())?;
        let mut project_id = None;
        if let (Some(_), Driver::Devicemapper) = (size, self.driver) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "devmapper: a container's size is its device's, dm.basesize; --size is not \
                 supported per container",
            ));
        }
        if let (Some(bytes), false) = (size, self.driver == Driver::Btrfs) {
            // Before diff/ exists, so everything below inherits the project.
            let q = QuotaCtl::open(quota, &self.root)?;
            let in_use: Vec<u32> = self.containers()?.iter().filter_map(|c| c.project_id).collect();
            let id = quota::allocate_project_id(&self.root, &in_use)?;
            q.limit(staging.path(), id, bytes)?;
            project_id = Some(id);
        }
        let diff = staging.path().join("diff");
        match (self.driver, &top) {
            (Driver::Devicemapper, _) => {
                let origin = match &top {
                    Some(t) => Some(self.dm_volume(&self.layer_dir(&t.cache_id))?),
                    None => None,
                };
                self.dm_new_device(staging.path(), origin.as_deref())?;
            }
            (Driver::Vfs, Some(t)) => {
                fsutil::copy_tree(&self.layer_dir(&t.cache_id).join("diff"), &diff)?
            }
            (Driver::Btrfs, Some(t)) => {
                crate::btrfs::snapshot(&self.layer_dir(&t.cache_id).join("diff"), &diff)?
            }
            (Driver::Btrfs, None) => {
                crate::btrfs::create(&diff)?;
                rustix::fs::chmod(&diff, rustix::fs::Mode::from_raw_mode(0o755))
                    .ctx("chmod", &diff)?;
            }
            _ => mkdir(&diff, 0o755)?,
        }
        if let (Some(bytes), Driver::Btrfs) = (size, self.driver) {
            crate::btrfs::enable_quota(&self.root)?;
            crate::btrfs::limit(&diff, bytes)?;
        }
        let cache_id = fsutil::random_hex(32);
        let link = self.write_overlay_files(staging.path(), &lower)?;
        let dir = self.layer_dir(&cache_id);
        std::fs::rename(staging.keep(), &dir).ctx("move container layer into place", &dir)?;
        if let Some(link) = link {
            let l = self.root.join("l").join(&link);
            std::os::unix::fs::symlink(format!("../{cache_id}/diff"), &l).ctx("symlink", &l)?;
        }
        if let Some(t) = &top {
            self.mark_committed(&t.cache_id)?;
        }
        fsutil::fsync_dir(&self.root)?;
        let c = ContainerMeta {
            name: name.into(),
            image: img.id,
            cache_id,
            size_limit: size,
            project_id,
            volumes: Vec::new(),
            created: now(),
        };
        self.save_container(&c)?;
        Ok(c)
    }

    /// Mount a container's root filesystem; returns the merged directory.
    pub fn mount(&self, name: &str) -> Result<PathBuf> {
        let c = self.container(name)?;
        let dir = self.layer_dir(&c.cache_id);
        if self.driver == Driver::Devicemapper {
            return self.dm_activate(&dir, false);
        }
        if self.driver.full_copies() {
            return Ok(dir.join("diff"));
        }
        let lowers = self.lowers_of_dir(&c.cache_id)?;
        if lowers.is_empty() {
            // Nothing below: the upper dir is the whole tree (as overlay2 does for a base).
            return Ok(dir.join("diff"));
        }
        let merged = dir.join("merged");
        if self.mounter.is_mounted(&merged) {
            return Ok(merged);
        }
        match mkdir(&merged, 0o700) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e),
        }
        let spec = OverlaySpec {
            lowers,
            upper: Some((format!("{}/diff", c.cache_id), format!("{}/work", c.cache_id))),
            index_off: kernel_has_index_param(),
        };
        self.mounter.mount_overlay(&self.root, &spec, &merged)?;
        Ok(merged)
    }

    /// Unmount (lazily, like overlay2) and remove the mount point.
    pub fn unmount(&self, name: &str) -> Result<()> {
        let c = self.container(name)?;
        if self.driver == Driver::Devicemapper {
            return self.dm_deactivate(&self.layer_dir(&c.cache_id));
        }
        let merged = self.layer_dir(&c.cache_id).join("merged");
        if self.mounter.is_mounted(&merged) {
            self.mounter.unmount(&merged)?;
        }
        match std::fs::remove_dir(&merged) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove mount point", &merged, e)),
        }
    }

    /// Write a container's changes as a layer tar with OCI whiteouts; returns the DiffID.
    pub fn container_diff<W: Write>(&self, name: &str, out: W) -> Result<(W, Digest, u64)> {
        let c = self.container(name)?;
        if self.driver == Driver::Devicemapper {
            return self.dm_container_diff(&c, out);
        }
        let diff = self.layer_dir(&c.cache_id).join("diff");
        let hw = HashWriter::new(out);
        let hw = match self.driver {
            Driver::Overlay => {
                crate::diff::write_tree(&diff, hw, crate::diff::DiffMode::OverlayUpper)?
            }
            Driver::Vfs | Driver::Btrfs | Driver::Devicemapper => {
                let img = self.resolve_image(c.image.as_str())?;
                let base = match img.top_chain() {
                    Some(ch) => self
                        .layer_dir(
                            &self
                                .layer(ch)?
                                .ok_or_else(|| {
                                    Error::new(ErrorKind::NotFound, format!("layer {ch}"))
                                })?
                                .cache_id,
                        )
                        .join("diff"),
                    None => self.root.join("tmp"),
                };
                crate::diff::write_changes(&base, &diff, hw)?
            }
        };
        Ok(hw.finish())
    }

    /// Commit a container's changes as a new image tagged `tag`.
    pub fn commit(&self, name: &str, tag: &str) -> Result<ImageMeta> {
        let c = self.container(name)?;
        let img = self.resolve_image(c.image.as_str())?;
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .ctx("create temp file in", &self.root)?;
        let (w, diff_id, size) = self.container_diff(
            name,
            std::io::BufWriter::new(tmp.as_file().try_clone().ctx("dup", tmp.path())?),
        )?;
        let mut w = w;
        w.flush().ctx("write", tmp.path())?;
        drop(w);
        let parent = match img.top_chain() {
            Some(ch) => Some(
                self.layer(ch)?
                    .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("layer {ch}")))?,
            ),
            None => None,
        };
        let layer = self.add_layer(
            parent.as_ref(),
            File::open(tmp.path()).ctx("open", tmp.path())?,
            Some(&diff_id),
        )?;
        let blob = self.blob_path(&diff_id);
        if !blob.exists() {
            tmp.as_file().sync_all().ctx("fsync", tmp.path())?;
            tmp.persist(&blob).map_err(|e| Error::io("store blob", &blob, e.error))?;
        }
        let mut cfg: serde_json::Value = serde_json::from_slice(&self.read_blob(&img.id)?)
            .map_err(|e| {
                Error::with_source(ErrorKind::Invalid, format!("parse config {}", img.id), e)
            })?;
        let when = rfc3339(now());
        cfg["created"] = when.clone().into();
        let ids = cfg["rootfs"]["diff_ids"]
            .as_array_mut()
            .ok_or_else(|| Error::new(ErrorKind::Invalid, "config without rootfs.diff_ids"))?;
        ids.push(diff_id.as_str().into());
        let hist = serde_json::json!({ "created": when, "created_by": format!("layerstore commit {name}") });
        match cfg.get_mut("history").and_then(|h| h.as_array_mut()) {
            Some(h) => h.push(hist),
            None => cfg["history"] = serde_json::json!([hist]),
        }
        let cfg_bytes = serde_json::to_vec(&cfg)
            .map_err(|e| Error::with_source(ErrorKind::Invalid, "serialize config", e))?;
        let cfg_digest = self.put_blob(&cfg_bytes)?;
        let mut layers: Vec<ImageLayer> = img.layers.clone();
        for l in &mut layers {
            l.blob.media_type = oci_layer_type(&l.blob.media_type);
        }
        layers.push(ImageLayer {
            chain_id: layer.chain_id.clone(),
            diff_id: diff_id.clone(),
            blob: Descriptor {
                media_type: MT_OCI_LAYER.into(),
                digest: diff_id.clone(),
                size,
                annotations: None,
                platform: None,
            },
        });
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": { "mediaType": MT_OCI_CONFIG, "digest": cfg_digest, "size": cfg_bytes.len() },
            "layers": layers.iter().map(|l| &l.blob).collect::<Vec<_>>(),
        });
        let mbytes = serde_json::to_vec(&manifest)
            .map_err(|e| Error::with_source(ErrorKind::Invalid, "serialize manifest", e))?;
        let mdigest = self.put_blob(&mbytes)?;
        let meta = ImageMeta {
            id: cfg_digest.clone(),
            config_media_type: MT_OCI_CONFIG.into(),
            config_size: cfg_bytes.len() as u64,
            manifest: Descriptor {
                media_type: MT_OCI_MANIFEST.into(),
                digest: mdigest,
                size: mbytes.len() as u64,
                annotations: None,
                platform: None,
            },
            layers,
            tags: Vec::new(),
            created: now(),
        };
        self.save_image(&meta)?;
        self.tag_image(&cfg_digest, tag)?;
        self.resolve_image(cfg_digest.as_str())
    }

    /// Remove a container: its metadata is renamed to `NAME-removing.json` first and its
    /// layer dir to `<cache-id>-removing`, so a crash part-way is finished at the next open.
    pub fn remove(&self, name: &str) -> Result<()> {
        let c = self.container(name)?;
        if self.driver == Driver::Btrfs {
            crate::btrfs::check_unused(&self.layer_dir(&c.cache_id).join("diff"))?;
        }
        self.unmount(name)?;
        let from = self.container_path(name);
        let to = self.root.join("containers").join(format!("{name}-removing.json"));
        std::fs::rename(&from, &to).ctx("rename", &from)?;
        fsutil::fsync_dir(&self.root.join("containers"))?;
        crate::fault::point("container-removing");
        self.finish_remove(&c)?;
        std::fs::remove_file(&to).ctx("remove", &to)?;
        Ok(())
    }

    pub(crate) fn finish_remove(&self, c: &ContainerMeta) -> Result<()> {
        let dir = self.layer_dir(&c.cache_id);
        let merged = dir.join("merged");
        if self.mounter.is_mounted(&merged) {
            self.mounter.unmount(&merged)?;
        }
        let removing = self.root.join(format!("{}-removing", c.cache_id));
        if dir.exists() {
            if let Ok(link) = std::fs::read_to_string(dir.join("link")) {
                let _ = std::fs::remove_file(self.root.join("l").join(link.trim()));
            }
            std::fs::rename(&dir, &removing).ctx("rename", &dir)?;
            fsutil::fsync_dir(&self.root)?;
        }
        self.remove_layer_tree(&removing)
    }

    /// Disk usage: per image shared vs exclusive bytes, containers, volumes.
    pub fn du(&self) -> Result<DiskUsage> {
        let images = self.images()?;
        let users = layer_users(&images);
        let layers: std::collections::BTreeMap<Digest, u64> =
            self.layers()?.into_iter().map(|l| (l.chain_id, l.size)).collect();
        let mut out = Vec::new();
        for i in &images {
            let mut u = ImageUsage {
                id: i.id.clone(),
                tags: i.tags.clone(),
                size: 0,
                shared: 0,
                exclusive: 0,
            };
            for l in &i.layers {
                let s = layers.get(&l.chain_id).copied().unwrap_or(0);
                u.size += s;
                if users.get(&l.chain_id).copied().unwrap_or(0) > 1 {
                    u.shared += s;
                } else {
                    u.exclusive += s;
                }
            }
            out.push(u);
        }
        let mut containers = Vec::new();
        for c in self.containers()? {
            // A devicemapper container's tree is on its own device: counted while mounted.
            let tree = match self.driver {
                Driver::Devicemapper => self.layer_dir(&c.cache_id).join("mnt/rootfs"),
                _ => self.layer_dir(&c.cache_id).join("diff"),
            };
            let size = if tree.exists() { fsutil::tree_size(&tree)? } else { 0 };
            containers.push((c.name.clone(), size));
        }
        let mut volumes = Vec::new();
        for v in self.volumes()? {
            volumes.push((v.clone(), fsutil::tree_size(&self.volume_dir(&v))?));
        }
        Ok(DiskUsage { images: out, containers, volumes, layers_total: layers.values().sum() })
    }

    /// `docker rmi`: removes an image by tag or id, then the layers and blobs nothing
    /// references any more. An image a container uses is refused (Docker's conflict), naming
    /// the container. A tag of an image that has other tags only loses that tag.
    pub fn remove_image(&self, name: &str) -> Result<ImageMeta> {
        let img = self.resolve_image(name)?;
        if let Some(c) = self.containers()?.into_iter().find(|c| c.image == img.id) {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!(
                    "unable to remove image {name}: image is being used by container {}",
                    c.name
                ),
            ));
        }
        let by_tag = normalize_tag(name)
            .ok()
            .and_then(|t| img.tags.iter().find(|x| short_tag(x) == short_tag(&t)).cloned());
        if let Some(tag) = by_tag.filter(|_| img.tags.len() > 1) {
            let mut left = img.clone();
            left.tags.retain(|t| *t != tag);
            self.save_image(&left)?;
            return Ok(ImageMeta { tags: vec![tag], ..img });
        }
        let meta = self.root.join("imagedb").join(format!("{}.json", img.id.hex()));
        std::fs::remove_file(&meta).ctx("remove image", &meta)?;
        self.prune(false, false)?;
        Ok(img)
    }

    /// Remove unused images (untagged ones; with `all`, every image no container uses), the
    /// layers and blobs nothing references any more, and with `volumes` unused volumes.
    pub fn prune(&self, all: bool, volumes: bool) -> Result<PruneReport> {
        let containers = self.containers()?;
        let used: BTreeSet<Digest> = containers.iter().map(|c| c.image.clone()).collect();
        let mut report = PruneReport::default();
        let mut keep = Vec::new();
        for i in self.images()? {
            if !used.contains(&i.id) && (all || i.tags.is_empty()) {
                std::fs::remove_file(
                    self.root.join("imagedb").join(format!("{}.json", i.id.hex())),
                )
                .ctx("remove image", &self.root)?;
                report.images.push(i.id.clone());
            } else {
                keep.push(i);
            }
        }
        let users = layer_users(&keep);
        for l in self.layers()? {
            if users.contains_key(&l.chain_id) {
                continue;
            }
            let dir = self.layer_dir(&l.cache_id);
            report.bytes += l.size;
            std::fs::remove_file(
                self.root.join("layerdb").join(format!("{}.json", l.chain_id.hex())),
            )
            .ctx("remove layer", &self.root)?;
            if let Ok(link) = std::fs::read_to_string(dir.join("link")) {
                let _ = std::fs::remove_file(self.root.join("l").join(link.trim()));
            }
            let removing = self.root.join(format!("{}-removing", l.cache_id));
            if dir.exists() {
                std::fs::rename(&dir, &removing).ctx("rename", &dir)?;
            }
            self.remove_layer_tree(&removing)?;
            report.layers += 1;
        }
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        for i in &keep {
            blobs.insert(i.id.hex().to_string());
            blobs.insert(i.manifest.digest.hex().to_string());
            for l in &i.layers {
                blobs.insert(l.blob.digest.hex().to_string());
            }
        }
        let bdir = self.root.join("blobs/sha256");
        for e in std::fs::read_dir(&bdir).ctx("read", &bdir)? {
            let e = e.ctx("read", &bdir)?;
            let n = e.file_name().to_string_lossy().into_owned();
            if !blobs.contains(&n) {
                report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(e.path()).ctx("remove blob", &e.path())?;
                report.blobs += 1;
            }
        }
        if volumes {
            let in_use: BTreeSet<String> =
                containers.iter().flat_map(|c| c.volumes.iter().cloned()).collect();
            for v in self.volumes()? {
                if !in_use.contains(&v) {
                    report.bytes += fsutil::tree_size(&self.volume_dir(&v))?;
                    self.volume_remove(&v)?;
                    report.volumes.push(v);
                }
            }
        }
        Ok(report)
    }

    /// Write an OCI runtime bundle for container `name` into `dir`: `config.json` whose
    /// `root.path` is the mounted merged directory and whose process comes from the image
    /// config; named volumes are bind-mounted.
    pub fn bundle(&self, name: &str, dir: &Path, volumes: &[VolumeBind]) -> Result<PathBuf> {
        let mut c = self.container(name)?;
        for v in volumes {
            if !self.volume_dir(&v.name).is_dir() {
                return Err(Error::new(ErrorKind::NotFound, format!("no such volume: {}", v.name)));
            }
        }
        let rootfs = self.mount(name)?;
        let img = self.resolve_image(c.image.as_str())?;
        let cfg: serde_json::Value =
            serde_json::from_slice(&self.read_blob(&img.id)?).map_err(|e| {
                Error::with_source(ErrorKind::Invalid, format!("parse config {}", img.id), e)
            })?;
        let ic = &cfg["config"];
        let strs = |v: &serde_json::Value| -> Vec<String> {
            v.as_array()
                .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let mut args = strs(&ic["Entrypoint"]);
        args.extend(strs(&ic["Cmd"]));
        if args.is_empty() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("image {} has no Entrypoint or Cmd", img.id),
            ));
        }
        let mut env = strs(&ic["Env"]);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
        }
        let cwd =
            ic["WorkingDir"].as_str().filter(|s| s.starts_with('/')).unwrap_or("/").to_string();
        let (uid, gid) = parse_user(ic["User"].as_str().unwrap_or(""))?;
        let mut mounts = vec![
            serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc"}),
            serde_json::json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
            serde_json::json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
            serde_json::json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
            serde_json::json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
            serde_json::json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]}),
        ];
        for v in volumes {
            let mut opts = vec!["rbind", "nosuid", "nodev"];
            opts.push(if v.read_only { "ro" } else { "rw" });
            mounts.push(serde_json::json!({"destination": v.dest, "type": "bind", "source": self.volume_dir(&v.name), "options": opts}));
        }
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": uid, "gid": gid},
                "args": args,
                "env": env,
                "cwd": cwd,
                "capabilities": {
                    "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                    "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": rootfs, "readonly": false},
            "hostname": name,
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
                "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
                "readonlyPaths": ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        });
        std::fs::create_dir_all(dir).ctx("create bundle dir", dir)?;
        let bytes = serde_json::to_vec_pretty(&spec)
            .map_err(|e| Error::with_source(ErrorKind::Invalid, "serialize config.json", e))?;
        fsutil::write_atomic(dir, "config.json", &bytes)?;
        let mut names: Vec<String> = c.volumes.clone();
        names.extend(volumes.iter().map(|v| v.name.clone()));
        names.sort();
        names.dedup();
        if names != c.volumes {
            c.volumes = names;
            self.save_container(&c)?;
        }
        Ok(dir.join("config.json"))
    }
}

/// Docker's deprecated layer media types map onto the OCI ones.
fn oci_layer_type(mt: &str) -> String {
    match mt {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip".into()
        }
        "application/vnd.docker.image.rootfs.diff.tar" => MT_OCI_LAYER.into(),
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            "application/vnd.oci.image.layer.v1.tar+zstd".into()
        }
        other => other.into(),
    }
}

/// `User` of an image config: empty/`root` → 0:0, or numeric `uid[:gid]`.
fn parse_user(u: &str) -> Result<(u32, u32)> {
    if u.is_empty() || u == "root" {
        return Ok((0, 0));
    }
    let (a, b) = u.split_once(':').unwrap_or((u, "0"));
    match (a.parse(), b.parse()) {
        (Ok(x), Ok(y)) => Ok((x, y)),
        _ => Err(Error::new(
            ErrorKind::Unsupported,
            format!("image user {u:?}: only numeric uid[:gid] is supported"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_points() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn volume_binding_parse() {
        assert_eq!(
            VolumeBind::parse("data:/srv:ro").unwrap(),
            VolumeBind { name: "data".into(), dest: "/srv".into(), read_only: true }
        );
        assert!(!VolumeBind::parse("data:/srv").unwrap().read_only);
        let refused = |s: &str| crate::error::err_text(VolumeBind::parse(s), ErrorKind::Invalid);
        assert!(refused("data:srv").contains("expected NAME:/path[:ro|:rw]"));
        assert!(refused("../x:/srv").contains("invalid volume name \"../x\""));
        assert!(refused("d:/a/../b").contains("expected NAME:/path[:ro|:rw]"));
    }

    #[test]
    fn user_parse() {
        assert_eq!(parse_user("").unwrap(), (0, 0));
        assert_eq!(parse_user("1000:100").unwrap(), (1000, 100));
        let e = parse_user("nobody").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        assert!(e.to_string().contains("only numeric uid[:gid]"), "{e}");
    }
}
