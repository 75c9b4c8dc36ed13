//! Importing OCI layouts and docker-save archives: every image's layers are extracted
//! while their blobs are copied (one read of the source), then its config and manifest.

use super::*;

impl Store {
    /// Import every image of an OCI layout (dir or tar) or docker-save archive at `path`.
    /// `tag` names the image (only allowed when the source holds exactly one).
    pub fn import(&self, path: &Path, tag: Option<&str>) -> Result<Vec<ImageMeta>> {
        self.import_image(path, None, tag)
    }

    /// Import from `path`; with `select`, only the image whose name in the source (OCI
    /// `ref.name`, containerd image name, or docker `RepoTags` entry) equals it.
    pub fn import_image(
        &self,
        path: &Path,
        select: Option<&str>,
        tag: Option<&str>,
    ) -> Result<Vec<ImageMeta>> {
        let src = Source::open(path, &self.root.join("tmp"), self.limits)?;
        let mut images = src.images()?;
        if let Some(sel) = select {
            images.retain(|i| {
                i.tags.iter().any(|t| {
                    t == sel || normalize_tag(sel).is_ok_and(|n| short_tag(&n) == short_tag(t))
                })
            });
            if images.is_empty() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no image named {sel:?} in {}", path.display()),
                ));
            }
        }
        if tag.is_some() && images.len() != 1 {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "--tag needs a source with one image; {} has {}",
                    path.display(),
                    images.len()
                ),
            ));
        }
        let mut out = Vec::new();
        for img in images {
            let meta = self.import_one(&src, img, tag)?;
            out.push(meta);
        }
        Ok(out)
    }

    fn import_one(&self, src: &Source, img: SourceImage, tag: Option<&str>) -> Result<ImageMeta> {
        // A container's mount stacks every image layer below its own (overlay2's `lower` of
        // the container layer), so an image of more than MAX_DEPTH layers would import and
        // then fail at `create`. Refuse it before anything is extracted, with the words
        // Docker's overlay2 uses (moby `daemon/graphdriver/overlay2`, `maxDepth = 128`).
        if img.layers.len() > MAX_DEPTH {
            return Err(Error::new(
                ErrorKind::Limit,
                format!(
                    "max depth exceeded: image {} has {} layers; a container can stack at most \
                     {MAX_DEPTH}",
                    img.config_digest,
                    img.layers.len()
                ),
            ));
        }
        let chain_ids = Digest::chain_ids(&img.diff_ids);
        let mut layers = Vec::with_capacity(img.layers.len());
        let mut parent: Option<LayerMeta> = None;
        for (i, l) in img.layers.iter().enumerate() {
            let existing = self.layer(&chain_ids[i])?;
            let have_blob =
                l.descriptor.as_ref().is_some_and(|d| self.blob_path(&d.digest).exists());
            let (layer, blob) = match existing {
                Some(layer) if have_blob => (layer, l.descriptor.clone().expect("checked above")),
                Some(layer) => {
                    let blob = self.copy_blob(src, l, None)?;
                    (layer, blob)
                }
                None => {
                    let mut layer = None;
                    let blob = self.copy_blob(
                        src,
                        l,
                        Some((&mut layer, parent.as_ref(), &img.diff_ids[i])),
                    )?;
                    (layer.expect("set by copy_blob"), blob)
                }
            };
            if layer.chain_id != chain_ids[i] {
                return Err(Error::new(
                    ErrorKind::DigestMismatch,
                    format!("layer {i}: chain id {} != {}", layer.chain_id, chain_ids[i]),
                ));
            }
            layers.push(crate::store::ImageLayer {
                chain_id: layer.chain_id.clone(),
                diff_id: layer.diff_id.clone(),
                blob,
            });
            parent = Some(layer);
        }
        let config_digest = self.put_blob(&img.config)?;
        if config_digest != img.config_digest {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!("config {} hashes to {config_digest}", img.config_digest),
            ));
        }
        let manifest = match img.manifest {
            Some((desc, bytes)) => {
                self.put_blob(&bytes)?;
                desc
            }
            None => {
                let m = serde_json::json!({
                    "schemaVersion": 2,
                    "mediaType": MT_OCI_MANIFEST,
                    "config": { "mediaType": img.config_media_type, "digest": config_digest, "size": img.config.len() },
                    "layers": layers.iter().map(|l| &l.blob).collect::<Vec<_>>(),
                });
                let bytes = serde_json::to_vec(&m)
                    .map_err(|e| Error::with_source(ErrorKind::Invalid, "serialize manifest", e))?;
                let digest = self.put_blob(&bytes)?;
                Descriptor {
                    media_type: MT_OCI_MANIFEST.into(),
                    digest,
                    size: bytes.len() as u64,
                    annotations: None,
                    platform: None,
                }
            }
        };
        let id = config_digest;
        let prev = self.images()?.into_iter().find(|i| i.id == id);
        let meta = match prev {
            Some(p) => p,
            None => ImageMeta {
                id: id.clone(),
                config_media_type: img.config_media_type,
                config_size: img.config.len() as u64,
                manifest,
                layers,
                tags: Vec::new(),
                created: now(),
            },
        };
        self.save_image(&meta)?;
        let tags: Vec<String> = match tag {
            Some(t) => vec![t.to_string()],
            None => img.tags,
        };
        for t in tags {
            self.tag_image(&id, &t)?;
        }
        self.resolve_image(id.as_str())
    }

    /// Copy a layer blob into `blobs/`, hashing it; when `extract` is given, decompress and
    /// apply it at the same time (one read of the source).
    fn copy_blob(
        &self,
        src: &Source,
        l: &crate::source::SourceLayer,
        extract: Option<(&mut Option<LayerMeta>, Option<&LayerMeta>, &Digest)>,
    ) -> Result<Descriptor> {
        let rel = l.rel.to_string_lossy().into_owned();
        let (file, _) = src.open_file(&rel)?;
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .ctx("create temp blob in", &self.root.join("tmp"))?;
        let out = tmp.as_file().try_clone().ctx("dup", tmp.path())?;
        let tee =
            Tee { r: file, w: HashWriter::new(std::io::BufWriter::with_capacity(1 << 20, out)) };
        let mut br = BufReader::with_capacity(1 << 20, tee);
        let head = br.fill_buf().ctx("read layer", Path::new(&rel))?.to_vec();
        let comp = Compression::detect(&head)?;
        if let Some((slot, parent, expect)) = extract {
            let dec = comp.reader(&mut br)?;
            let layer = self
                .add_layer(parent, dec, Some(expect))
                .map_err(|e| Error::with_source(e.kind(), format!("import layer {rel}"), e))?;
            *slot = Some(layer);
        }
        std::io::copy(&mut br, &mut std::io::sink()).ctx("read layer", Path::new(&rel))?;
        let tee = br.into_inner();
        let (mut w, digest, size) = tee.w.finish();
        w.flush().ctx("write", tmp.path())?;
        drop(w);
        if let Some(d) = &l.descriptor {
            if d.digest != digest || d.size != size {
                return Err(Error::new(ErrorKind::DigestMismatch, format!("layer blob {rel}: got {digest} ({size} bytes), manifest says {} ({} bytes)", d.digest, d.size)));
            }
        }
        let target = self.blob_path(&digest);
        if !target.exists() {
            tmp.as_file().sync_all().ctx("fsync", tmp.path())?;
            tmp.persist(&target).map_err(|e| Error::io("store blob", &target, e.error))?;
        }
        Ok(match &l.descriptor {
            Some(d) => {
                let mut d = d.clone();
                d.annotations = None;
                d.platform = None;
                d
            }
            None => Descriptor {
                media_type: comp.media_type().into(),
                digest,
                size,
                annotations: None,
                platform: None,
            },
        })
    }
}

/// A reader that copies everything it reads into a writer.
struct Tee<R, W: Write> {
    r: R,
    w: HashWriter<W>,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.r.read(buf)?;
        self.w.write_all(&buf[..n])?;
        Ok(n)
    }
}
