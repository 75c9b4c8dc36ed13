//! Reading image archives: OCI image layouts (directory or tar) and `docker save` tars, both
//! the legacy `manifest.json` form and Docker ≥ 25's OCI-layout-with-manifest.json form.
//!
//! Tars are first extracted (plain mode, same hostile-entry checks as layers) into a staging
//! directory of the store; every path named inside an archive is then opened with
//! `RESOLVE_BENEATH` from the layout root, so `"Config": "../../etc/passwd"` cannot escape.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use rustix::fd::OwnedFd;
use rustix::fs::OFlags;
use serde::{Deserialize, Serialize};

use crate::apply::{self, clean_path, Limits, WhiteoutMode};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil::{self, open_beneath};

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANN_IMAGE_NAME: &str = "io.containerd.image.name";

/// Largest JSON document (index, manifest, config) we read into memory.
const MAX_JSON: u64 = 64 << 20;

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

#[derive(Debug, Deserialize)]
struct ConfigHead {
    rootfs: RootFs,
}

#[derive(Debug, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

/// Compression of a layer blob, told by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn detect(head: &[u8]) -> Result<Compression> {
        Ok(match head {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [b'B', b'Z', b'h', ..] => {
                return Err(Error::new(ErrorKind::Unsupported, "bzip2 layers are not supported"))
            }
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => {
                return Err(Error::new(ErrorKind::Unsupported, "xz layers are not supported"))
            }
            _ => Compression::None,
        })
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => MT_OCI_LAYER,
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Wrap a buffered reader of the blob in the right decompressor.
    pub fn reader<'a, R: BufRead + 'a>(self, r: R) -> Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(r)
                    .map_err(|e| Error::with_source(ErrorKind::Io, "start zstd decoder", e))?,
            ),
        })
    }
}

/// One layer of an image in a source.
#[derive(Debug, Clone)]
pub struct SourceLayer {
    /// Path of the blob inside the layout.
    pub rel: PathBuf,
    /// The manifest's descriptor (None for legacy docker archives: computed on import).
    pub descriptor: Option<Descriptor>,
}

/// One image found in a source.
#[derive(Debug, Clone)]
pub struct SourceImage {
    pub tags: Vec<String>,
    /// Original manifest bytes and descriptor (None for legacy docker archives).
    pub manifest: Option<(Descriptor, Vec<u8>)>,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    pub config_media_type: String,
    pub diff_ids: Vec<Digest>,
    pub layers: Vec<SourceLayer>,
}

/// An opened image layout (directory, or a tar extracted to a staging directory).
pub struct Source {
    root: PathBuf,
    fd: OwnedFd,
    _staging: Option<tempfile::TempDir>,
}

impl Source {
    /// Open `path`, a directory or a tar archive (extracted below `staging_parent`).
    pub fn open(path: &Path, staging_parent: &Path, limits: Limits) -> Result<Source> {
        let md = std::fs::metadata(path)
            .map_err(|e| Error::io_or_not_found("open image source", path, e))?;
        if md.is_dir() {
            return Ok(Source {
                root: path.to_path_buf(),
                fd: fsutil::open_dir(path)?,
                _staging: None,
            });
        }
        let staging = tempfile::Builder::new()
            .prefix("source-")
            .tempdir_in(staging_parent)
            .map_err(|e| Error::io("create staging dir in", staging_parent, e))?;
        let f = File::open(path).ctx("open", path)?;
        let mut br = std::io::BufReader::with_capacity(1 << 20, f);
        let head = br.fill_buf().ctx("read", path)?;
        let comp = Compression::detect(head)?;
        let r = comp.reader(br)?;
        apply::apply_tar(r, staging.path(), WhiteoutMode::Plain, limits).map_err(|e| {
            Error::with_source(e.kind(), format!("extract image archive {}", path.display()), e)
        })?;
        Ok(Source {
            root: staging.path().to_path_buf(),
            fd: fsutil::open_dir(staging.path())?,
            _staging: Some(staging),
        })
    }

    /// Open a file named inside the layout, never leaving it.
    pub fn open_file(&self, rel: &str) -> Result<(File, PathBuf)> {
        let clean = clean_path(rel.as_bytes())
            .map_err(|why| Error::new(ErrorKind::Escape, format!("archive path {rel:?}: {why}")))?;
        let fd = open_beneath(&self.fd, &clean, OFlags::RDONLY).map_err(|e| {
            let kind = match e {
                rustix::io::Errno::NOENT => ErrorKind::NotFound,
                rustix::io::Errno::XDEV => ErrorKind::Escape,
                _ => ErrorKind::Io,
            };
            Error::with_source(kind, format!("open {rel:?} in {}", self.root.display()), e)
        })?;
        Ok((File::from(fd), clean))
    }

    fn read_small(&self, rel: &str) -> Result<Vec<u8>> {
        let (f, _) = self.open_file(rel)?;
        let mut buf = Vec::new();
        f.take(MAX_JSON + 1).read_to_end(&mut buf).ctx("read", &self.root.join(rel))?;
        if buf.len() as u64 > MAX_JSON {
            return Err(Error::new(
                ErrorKind::Limit,
                format!("{rel}: larger than {MAX_JSON} bytes"),
            ));
        }
        Ok(buf)
    }

    fn exists(&self, rel: &str) -> bool {
        self.open_file(rel).is_ok()
    }

    fn blob_rel(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }

    /// Read a blob and check its digest (and size when known).
    fn read_blob(&self, d: &Descriptor) -> Result<Vec<u8>> {
        let bytes = self.read_small(&Self::blob_rel(&d.digest))?;
        if Digest::of(&bytes) != d.digest || bytes.len() as u64 != d.size {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "blob {} in {}: content or size does not match its descriptor",
                    d.digest,
                    self.root.display()
                ),
            ));
        }
        Ok(bytes)
    }

    /// Every image in the source.
    pub fn images(&self) -> Result<Vec<SourceImage>> {
        if self.exists("oci-layout") && self.exists("index.json") {
            self.oci_images()
        } else if self.exists("manifest.json") {
            self.docker_images()
        } else {
            Err(Error::new(
                ErrorKind::Invalid,
                format!("{}: neither an OCI layout (oci-layout, index.json) nor a docker archive (manifest.json)", self.root.display()),
            ))
        }
    }

    fn parse<T: serde::de::DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::with_source(
                ErrorKind::Invalid,
                format!("parse {what} in {}", self.root.display()),
                e,
            )
        })
    }

    fn oci_images(&self) -> Result<Vec<SourceImage>> {
        let layout: serde_json::Value =
            self.parse("oci-layout", &self.read_small("oci-layout")?)?;
        if layout.get("imageLayoutVersion").and_then(|v| v.as_str()).is_none() {
            return Err(Error::new(ErrorKind::Invalid, "oci-layout: no imageLayoutVersion"));
        }
        let index: Index = self.parse("index.json", &self.read_small("index.json")?)?;
        let mut out = Vec::new();
        for desc in index.manifests.unwrap_or_default() {
            let mut tags = Vec::new();
            if let Some(a) = &desc.annotations {
                if let Some(n) = a.get(ANN_IMAGE_NAME).or_else(|| a.get(ANN_REF_NAME)) {
                    tags.push(n.clone());
                }
            }
            let mdesc = self.pick_manifest(desc, 0)?;
            let mbytes = self.read_blob(&mdesc)?;
            let m: Manifest = self.parse("manifest", &mbytes)?;
            let config = self.read_blob(&m.config)?;
            let diff_ids =
                self.diff_ids(&config, &format!("manifest {}", mdesc.digest), m.layers.len())?;
            let layers = m
                .layers
                .iter()
                .map(|l| SourceLayer {
                    rel: PathBuf::from(Self::blob_rel(&l.digest)),
                    descriptor: Some(l.clone()),
                })
                .collect();
            let mut mdesc = mdesc;
            mdesc.annotations = None;
            mdesc.platform = None;
            if mdesc.media_type.is_empty() {
                mdesc.media_type = MT_OCI_MANIFEST.into();
            }
            out.push(SourceImage {
                tags,
                manifest: Some((mdesc, mbytes)),
                config_digest: m.config.digest.clone(),
                config_media_type: if m.config.media_type.is_empty() {
                    MT_OCI_CONFIG.into()
                } else {
                    m.config.media_type
                },
                config,
                diff_ids,
                layers,
            });
        }
        Ok(out)
    }

    /// Resolve an index entry to an image manifest, choosing this machine's platform in
    /// nested indexes (first entry otherwise).
    fn pick_manifest(&self, desc: Descriptor, depth: u32) -> Result<Descriptor> {
        if desc.media_type != MT_OCI_INDEX && desc.media_type != MT_DOCKER_LIST {
            return Ok(desc);
        }
        if depth > 4 {
            return Err(Error::new(ErrorKind::Limit, "image indexes nested too deep"));
        }
        let idx: Index = self.parse("image index", &self.read_blob(&desc)?)?;
        let list = idx.manifests.unwrap_or_default();
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            a => a,
        };
        let pick = list
            .iter()
            .position(|d| {
                d.platform.as_ref().is_some_and(|p| p["architecture"] == arch && p["os"] == "linux")
            })
            .unwrap_or(0);
        let d = list.into_iter().nth(pick).ok_or_else(|| {
            Error::new(ErrorKind::Invalid, format!("image index {} is empty", desc.digest))
        })?;
        self.pick_manifest(d, depth + 1)
    }

    /// The config's layer diff_ids, one for each of the `layers` that `manifest` lists.
    fn diff_ids(&self, config: &[u8], manifest: &str, layers: usize) -> Result<Vec<Digest>> {
        let c: ConfigHead = self.parse("image config", config)?;
        if c.rootfs.kind != "layers" {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("image config rootfs.type is {:?}, not \"layers\"", c.rootfs.kind),
            ));
        }
        if c.rootfs.diff_ids.len() != layers {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "{manifest}: {layers} layers but config has {} diff_ids",
                    c.rootfs.diff_ids.len()
                ),
            ));
        }
        Ok(c.rootfs.diff_ids)
    }

    fn docker_images(&self) -> Result<Vec<SourceImage>> {
        let entries: Vec<DockerManifestEntry> =
            self.parse("manifest.json", &self.read_small("manifest.json")?)?;
        let mut out = Vec::new();
        for e in entries {
            let config = self.read_small(&e.config)?;
            let diff_ids = self.diff_ids(&config, "manifest.json", e.layers.len())?;
            let layers = e
                .layers
                .iter()
                .map(|l| {
                    let rel = clean_path(l.as_bytes()).map_err(|why| {
                        Error::new(ErrorKind::Escape, format!("manifest.json layer {l:?}: {why}"))
                    })?;
                    Ok(SourceLayer { rel, descriptor: None })
                })
                .collect::<Result<Vec<_>>>()?;
            out.push(SourceImage {
                tags: e.repo_tags.unwrap_or_default(),
                manifest: None,
                config_digest: Digest::of(&config),
                config_media_type: MT_OCI_CONFIG.into(),
                config,
                diff_ids,
                layers,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8]).unwrap(), Compression::Gzip);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd]).unwrap(), Compression::Zstd);
        assert_eq!(Compression::detect(b"bin/\0\0").unwrap(), Compression::None);
        let err = Compression::detect(b"BZh9").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("bzip2"), "{err}");
    }

    #[test]
    fn archive_paths_cannot_escape() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("manifest.json"),
            br#"[{"Config":"../../etc/passwd","Layers":[]}]"#,
        )
        .unwrap();
        let s = Source::open(d.path(), d.path(), Limits::default()).unwrap();
        let err = s.images().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Escape, "{err}");
    }
}
