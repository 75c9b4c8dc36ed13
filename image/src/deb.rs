//! Unpacks a Debian binary package in-process: an `ar` archive holding `debian-binary`,
//! `control.tar.*` and `data.tar.{xz,zst,gz,}`; only the data member is extracted.
//!
//! ```text
//! <cache>/unpacked/<sha256 of the .deb>/      the package's file tree
//! <cache>/unpacked/<sha256 of the .deb>.done  written last: the tree is complete
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::fetch::{sha256_file, FetchError};

#[derive(Debug, Error)]
pub enum DebError {
    #[error("unpacking {deb}: {what}")]
    Io { deb: PathBuf, what: &'static str, source: std::io::Error },
    #[error("unpacking {deb}: no data.tar member (is it a .deb?)")]
    NoData { deb: PathBuf },
    #[error("unpacking {deb}: unsupported data member {member}")]
    Compression { deb: PathBuf, member: String },
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// Unpacks `deb` (once; keyed by its digest) under `cache/unpacked` and returns the tree's root.
pub fn unpack_cached(deb: &Path, cache: &Path) -> Result<PathBuf, DebError> {
    let digest = sha256_file(deb)?;
    let base = cache.join("unpacked");
    let root = base.join(&digest);
    let done = base.join(format!("{digest}.done"));
    if done.is_file() && root.is_dir() {
        return Ok(root);
    }
    let io = |what| move |source| DebError::Io { deb: deb.to_owned(), what, source };
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(io("creating the unpack dir"))?;
    unpack(deb, &root)?;
    std::fs::write(&done, deb.display().to_string()).map_err(io("marking the unpack complete"))?;
    Ok(root)
}

/// Extracts the data member of `deb` into `dest` (the tar crate refuses paths escaping `dest`).
pub fn unpack(deb: &Path, dest: &Path) -> Result<(), DebError> {
    let io = |what| move |source| DebError::Io { deb: deb.to_owned(), what, source };
    let file = std::fs::File::open(deb).map_err(io("opening"))?;
    let mut ar = ar::Archive::new(file);
    while let Some(entry) = ar.next_entry() {
        let entry = entry.map_err(io("reading the ar archive"))?;
        let name =
            String::from_utf8_lossy(entry.header().identifier()).trim_end_matches('/').to_owned();
        if !name.starts_with("data.tar") {
            continue;
        }
        let reader: Box<dyn Read + '_> = match name.as_str() {
            "data.tar" => Box::new(entry),
            "data.tar.xz" => Box::new(xz2::read::XzDecoder::new(entry)),
            "data.tar.zst" => {
                Box::new(zstd::stream::read::Decoder::new(entry).map_err(io("starting zstd"))?)
            }
            _ => return Err(DebError::Compression { deb: deb.to_owned(), member: name }),
        };
        let mut tar = tar::Archive::new(reader);
        tar.set_preserve_permissions(true);
        tar.set_preserve_mtime(false);
        tar.unpack(dest).map_err(io("extracting data.tar"))?;
        return Ok(());
    }
    Err(DebError::NoData { deb: deb.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a minimal .deb in memory: ar { debian-binary, control.tar, data.tar.xz }.
    fn make_deb(dir: &Path, files: &[(&str, &[u8])]) -> PathBuf {
        let mut data = tar::Builder::new(Vec::new());
        for (p, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            data.append_data(&mut h, p, *d).unwrap();
        }
        let data = data.into_inner().unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut xz, &data).unwrap();
        let xz = xz.finish().unwrap();
        let path = dir.join("t.deb");
        let mut ar = ar::Builder::new(std::fs::File::create(&path).unwrap());
        for (name, body) in [
            ("debian-binary", b"2.0\n".to_vec()),
            ("control.tar", vec![0u8; 1024]),
            ("data.tar.xz", xz),
        ] {
            let h = ar::Header::new(name.as_bytes().to_vec(), body.len() as u64);
            ar.append(&h, body.as_slice()).unwrap();
        }
        path
    }

    #[test]
    fn unpacks_data_member_once() {
        let d = tempfile::tempdir().unwrap();
        let deb =
            make_deb(d.path(), &[("./boot/vmlinuz-x", b"kernel"), ("./lib/modules/x/a.ko", b"ko")]);
        let cache = d.path().join("cache");
        let root = unpack_cached(&deb, &cache).unwrap();
        assert_eq!(std::fs::read(root.join("boot/vmlinuz-x")).unwrap(), b"kernel");
        assert_eq!(std::fs::read(root.join("lib/modules/x/a.ko")).unwrap(), b"ko");
        // Second call reuses the tree (a marker file we drop into it survives).
        std::fs::write(root.join("marker"), b"").unwrap();
        assert_eq!(unpack_cached(&deb, &cache).unwrap(), root);
        assert!(root.join("marker").exists());
    }

    #[test]
    fn rejects_non_deb() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.deb");
        std::fs::write(&p, b"not an ar archive").unwrap();
        let e = unpack(&p, d.path()).unwrap_err();
        assert!(
            matches!(e, DebError::Io { what: "reading the ar archive", .. }),
            "{}",
            units::chain(&e)
        );
        // The ar reader's complaint is the source: the chain prints it once, the message not.
        let cause = std::error::Error::source(&e).unwrap().to_string();
        assert!(!e.to_string().contains(&cause), "{e}");
        assert_eq!(units::chain(&e), format!("{e}: {cause}"));
    }
}
