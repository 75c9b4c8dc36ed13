//! The NBD TLS config disk: `lamina vm run --nbd-tls DIR` packs the guest NBD server's
//! certificates into a small read-only disk, a ustar archive of
//!
//! ```text
//! ca-cert.pem      CA whose client certificates the guest accepts (verify-peer)
//! server-cert.pem  the guest server's certificate chain
//! server-key.pem   its key
//! ```
//!
//! attached with the virtio serial [`SERIAL`], which init looks for: it unpacks the files and
//! starts `thinpool serve --tls require --tls-verify-peer` with them, and the pool never takes
//! the disk.

use std::path::{Path, PathBuf};

use crate::cmdline::Disk;

/// virtio-blk serial of the config disk.
pub const SERIAL: &str = "lamina-nbd-tls";
/// Files the directory must hold, in nbdkit's and qemu's layout.
pub const FILES: [&str; 3] = ["ca-cert.pem", "server-cert.pem", "server-key.pem"];

#[derive(Debug, thiserror::Error)]
pub enum TlsDiskError {
    #[error("--nbd-tls {dir}: {file} is missing")]
    Missing { dir: PathBuf, file: &'static str },
    #[error("writing {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Packs `dir`'s certificates into `out` and returns the disk to attach.
pub fn build(dir: &Path, out: &Path) -> Result<Disk, TlsDiskError> {
    for file in FILES {
        if !dir.join(file).is_file() {
            return Err(TlsDiskError::Missing { dir: dir.to_owned(), file });
        }
    }
    let werr = |source| TlsDiskError::Write { path: out.to_owned(), source };
    let f = std::fs::File::create(out).map_err(werr)?;
    let mut ar = tar::Builder::new(f);
    ar.mode(tar::HeaderMode::Deterministic);
    for file in FILES {
        ar.append_path_with_name(dir.join(file), file).map_err(werr)?;
    }
    Disk::config_archive(ar, out, SERIAL).map_err(werr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_the_three_files_and_refuses_an_incomplete_directory() {
        let d = tempfile::tempdir().unwrap();
        for f in FILES {
            std::fs::write(d.path().join(f), format!("-----{f}-----\n")).unwrap();
        }
        let out = d.path().join("tls.tar");
        let disk = build(d.path(), &out).unwrap();
        assert_eq!(disk.serial.as_deref(), Some(SERIAL));
        assert!(disk.read_only);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, FILES);
        std::fs::remove_file(d.path().join("server-key.pem")).unwrap();
        let err = build(d.path(), &out).unwrap_err().to_string();
        assert!(err.contains("server-key.pem is missing"), "{err}");
    }
}
