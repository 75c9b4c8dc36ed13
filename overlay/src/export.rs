//! Exporting images: an OCI image layout (directory, or tar when the path ends in `.tar`) with
//! the stored manifest, config and layer blobs byte-for-byte, or a `docker save`-style archive
//! in Docker ≥ 25's shape (an OCI layout with uncompressed layers named by DiffID, plus
//! `manifest.json` and `repositories` for legacy loaders). Config digest and DiffIDs are always
//! the imported ones; the OCI export also keeps the manifest digest.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, HashReader};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::fsutil;
use crate::source::{
    Compression, Descriptor, ANN_IMAGE_NAME, ANN_REF_NAME, MT_OCI_INDEX, MT_OCI_LAYER,
    MT_OCI_MANIFEST,
};
use crate::store::{ImageMeta, Store};

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFormat {
    Oci,
    Docker,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub path: PathBuf,
    pub manifest: Descriptor,
    pub config: Digest,
    pub diff_ids: Vec<Digest>,
}

/// A file to put in the output: bytes in memory or a file on disk.
enum Content {
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn index_json(img: &ImageMeta, manifest: &Descriptor) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    for t in &img.tags {
        let reference = t
            .rsplit_once(':')
            .filter(|(_, r)| !r.contains('/'))
            .map(|(_, r)| r)
            .unwrap_or("latest");
        entries.push(serde_json::json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": { ANN_IMAGE_NAME: t, ANN_REF_NAME: reference },
        }));
    }
    if entries.is_empty() {
        entries.push(serde_json::json!({ "mediaType": manifest.media_type, "digest": manifest.digest, "size": manifest.size }));
    }
    let idx =
        serde_json::json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries });
    serde_json::to_vec(&idx)
        .map_err(|e| Error::with_source(ErrorKind::Invalid, "serialize index.json", e))
}

impl Store {
    /// Export `image` to `path`.
    pub fn export(&self, image: &str, path: &Path, format: ExportFormat) -> Result<ExportInfo> {
        let img = self.resolve_image(image)?;
        let mut files: Vec<(String, Content)> = Vec::new();
        let _tmpdir = tempfile::Builder::new()
            .prefix("export-")
            .tempdir_in(self.root.join("tmp"))
            .ctx("create temp dir in", &self.root)?;
        let manifest = match format {
            ExportFormat::Oci => {
                files.push((
                    format!("blobs/sha256/{}", img.manifest.digest.hex()),
                    Content::File(self.blob_path(&img.manifest.digest)),
                ));
                files.push((
                    format!("blobs/sha256/{}", img.id.hex()),
                    Content::File(self.blob_path(&img.id)),
                ));
                for l in &img.layers {
                    files.push((
                        format!("blobs/sha256/{}", l.blob.digest.hex()),
                        Content::File(self.blob_path(&l.blob.digest)),
                    ));
                }
                img.manifest.clone()
            }
            ExportFormat::Docker => {
                let mut layer_descs = Vec::new();
                let mut legacy_layers = Vec::new();
                for l in &img.layers {
                    let name = format!("blobs/sha256/{}", l.diff_id.hex());
                    let src = self.blob_path(&l.blob.digest);
                    let content = if l.blob.digest == l.diff_id {
                        Content::File(src)
                    } else {
                        let out = _tmpdir.path().join(l.diff_id.hex());
                        let size = decompress_to(&src, &out, &l.diff_id)?;
                        let _ = size;
                        Content::File(out)
                    };
                    let size = match &content {
                        Content::File(p) => std::fs::metadata(p).ctx("stat", p)?.len(),
                        Content::Bytes(b) => b.len() as u64,
                    };
                    layer_descs.push(serde_json::json!({ "mediaType": MT_OCI_LAYER, "digest": l.diff_id, "size": size }));
                    legacy_layers.push(name.clone());
                    files.push((name, content));
                }
                let all_plain = img.layers.iter().all(|l| l.blob.digest == l.diff_id);
                let manifest = if all_plain {
                    files.push((
                        format!("blobs/sha256/{}", img.manifest.digest.hex()),
                        Content::File(self.blob_path(&img.manifest.digest)),
                    ));
                    img.manifest.clone()
                } else {
                    let m = serde_json::json!({
                        "schemaVersion": 2,
                        "mediaType": MT_OCI_MANIFEST,
                        "config": { "mediaType": img.config_media_type, "digest": img.id, "size": img.config_size },
                        "layers": layer_descs,
                    });
                    let bytes = serde_json::to_vec(&m).map_err(|e| {
                        Error::with_source(ErrorKind::Invalid, "serialize manifest", e)
                    })?;
                    let d = Descriptor {
                        media_type: MT_OCI_MANIFEST.into(),
                        digest: Digest::of(&bytes),
                        size: bytes.len() as u64,
                        annotations: None,
                        platform: None,
                    };
                    files.push((format!("blobs/sha256/{}", d.digest.hex()), Content::Bytes(bytes)));
                    d
                };
                files.push((
                    format!("blobs/sha256/{}", img.id.hex()),
                    Content::File(self.blob_path(&img.id)),
                ));
                let legacy = serde_json::json!([{
                    "Config": format!("blobs/sha256/{}", img.id.hex()),
                    "RepoTags": img.tags,
                    "Layers": legacy_layers,
                }]);
                files.push((
                    "manifest.json".into(),
                    Content::Bytes(serde_json::to_vec(&legacy).map_err(|e| {
                        Error::with_source(ErrorKind::Invalid, "serialize manifest.json", e)
                    })?),
                ));
                let mut repos = serde_json::Map::new();
                if let Some(top) = img.top_chain() {
                    for t in &img.tags {
                        if let Some((repo, tag)) = t.rsplit_once(':') {
                            let e = repos
                                .entry(repo.to_string())
                                .or_insert_with(|| serde_json::json!({}));
                            e[tag] = serde_json::Value::String(top.hex().to_string());
                        }
                    }
                }
                files.push((
                    "repositories".into(),
                    Content::Bytes(serde_json::to_vec(&repos).map_err(|e| {
                        Error::with_source(ErrorKind::Invalid, "serialize repositories", e)
                    })?),
                ));
                manifest
            }
        };
        files.push((
            "oci-layout".into(),
            Content::Bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
        ));
        files.push(("index.json".into(), Content::Bytes(index_json(&img, &manifest)?)));
        files.sort_by(|a, b| a.0.cmp(&b.0));
        files.dedup_by(|a, b| a.0 == b.0);

        let as_tar = format == ExportFormat::Docker || path.extension().is_some_and(|e| e == "tar");
        if as_tar {
            write_tar(path, &files)?;
        } else {
            write_dir(path, &files)?;
        }
        Ok(ExportInfo {
            path: path.to_path_buf(),
            manifest,
            config: img.id.clone(),
            diff_ids: img.layers.iter().map(|l| l.diff_id.clone()).collect(),
        })
    }
}

/// Decompress a stored layer blob to `out`, checking it against its DiffID.
fn decompress_to(src: &Path, out: &Path, diff_id: &Digest) -> Result<u64> {
    let f = File::open(src).ctx("open", src)?;
    let mut br = BufReader::with_capacity(1 << 20, f);
    let comp = Compression::detect(br.fill_buf().ctx("read", src)?)?;
    let mut hr = HashReader::new(comp.reader(br)?);
    let mut o = std::io::BufWriter::new(File::create(out).ctx("create", out)?);
    std::io::copy(&mut hr, &mut o).ctx("decompress", src)?;
    o.flush().ctx("write", out)?;
    let (d, n) = hr.finish().ctx("decompress", src)?;
    if &d != diff_id {
        return Err(Error::new(
            ErrorKind::DigestMismatch,
            format!("stored layer {} decompresses to {d}, not {diff_id}", src.display()),
        ));
    }
    Ok(n)
}

fn write_dir(path: &Path, files: &[(String, Content)]) -> Result<()> {
    if path.exists() && std::fs::read_dir(path).ctx("read", path)?.next().is_some() {
        return Err(Error::new(
            ErrorKind::Conflict,
            format!("{} exists and is not empty", path.display()),
        ));
    }
    for (name, c) in files {
        let dst = path.join(name);
        if let Some(p) = dst.parent() {
            std::fs::create_dir_all(p).ctx("create", p)?;
        }
        match c {
            Content::Bytes(b) => std::fs::write(&dst, b).ctx("write", &dst)?,
            Content::File(src) => {
                let mut from = File::open(src).ctx("open", src)?;
                let len = from.metadata().ctx("stat", src)?.len();
                let mut to = File::create(&dst).ctx("create", &dst)?;
                fsutil::copy_data(&mut from, &mut to, len).ctx("copy to", &dst)?;
            }
        }
    }
    Ok(())
}

/// Deterministic archive: sorted names, parents first, mode 0644/0755, uid/gid 0, mtime 0.
fn write_tar(path: &Path, files: &[(String, Content)]) -> Result<()> {
    fsutil::replace_file(path, |out, tmp| {
        let mut b = tar::Builder::new(out);
        let mut dirs_done = std::collections::BTreeSet::new();
        for (name, c) in files {
            let mut acc = String::new();
            let parts: Vec<&str> = name.split('/').collect();
            for p in &parts[..parts.len() - 1] {
                acc.push_str(p);
                acc.push('/');
                if dirs_done.insert(acc.clone()) {
                    let mut h = fixed_header(tar::EntryType::Directory, 0o755, 0);
                    b.append_data(&mut h, &acc, std::io::empty()).ctx("write", tmp)?;
                }
            }
            match c {
                Content::Bytes(bytes) => {
                    let mut h = fixed_header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
                    b.append_data(&mut h, name, &bytes[..]).ctx("write", tmp)?;
                }
                Content::File(src) => {
                    let f = File::open(src).ctx("open", src)?;
                    let len = f.metadata().ctx("stat", src)?.len();
                    let mut h = fixed_header(tar::EntryType::Regular, 0o644, len);
                    b.append_data(&mut h, name, f.take(len)).ctx("write", tmp)?;
                }
            }
        }
        b.into_inner().ctx("finish", tmp)
    })
}

fn fixed_header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    h
}

/// Read everything from `r`, for callers that want an exported stream's digest.
pub fn digest_of(mut r: impl Read) -> std::io::Result<Digest> {
    let mut hr = HashReader::new(&mut r);
    std::io::copy(&mut hr, &mut std::io::sink())?;
    Ok(hr.finish()?.0)
}
