//! The store key disk: `lamina vm run --encrypt-key FILE` packs the key into a small read-only
//! disk, a ustar archive with one entry `store.key`, attached with the virtio serial
//! [`SERIAL`]. Init unpacks it into tmpfs (root only) and opens, or on first boot formats,
//! the store as LUKS2 with it; the pool never takes the disk.
//!
//! The disk file holds the key: it is created mode 0600, and [`Remove`] deletes it once QEMU
//! has opened it, so no copy of the key stays on the host's disk.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::cmdline::Disk;

/// virtio-blk serial of the key disk (init's `luks::SERIAL`).
pub const SERIAL: &str = "lamina-luks-key";
/// The archive entry (init's `luks::KEY_ENTRY`).
pub const ENTRY: &str = "store.key";
/// cryptsetup's default maximum key file size.
const MAX_KEY: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum KeyDiskError {
    #[error("--encrypt-key {path}: reading")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("--encrypt-key {path}: {why}")]
    Bad { path: PathBuf, why: String },
    #[error("writing {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Checks the key file (a regular file, not empty, at most 8 MiB, not open to group or
/// others) and packs it into `out` (mode 0600); returns the disk to attach.
pub fn build(key: &Path, out: &Path) -> Result<Disk, KeyDiskError> {
    let rerr = |source| KeyDiskError::Read { path: key.to_owned(), source };
    let bad = |why: String| KeyDiskError::Bad { path: key.to_owned(), why };
    let m = std::fs::metadata(key).map_err(rerr)?;
    if !m.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if m.len() == 0 || m.len() > MAX_KEY {
        return Err(bad(format!("{} bytes; a key is 1 byte to 8 MiB", m.len())));
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(bad(format!(
            "readable or writable by group or others (mode {mode:04o}); chmod 600 it"
        )));
    }
    let mut data = Vec::new();
    std::fs::File::open(key).and_then(|f| f.take(MAX_KEY).read_to_end(&mut data)).map_err(rerr)?;
    let werr = |source| KeyDiskError::Write { path: out.to_owned(), source };
    let _ = std::fs::remove_file(out);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(werr)?;
    let mut ar = tar::Builder::new(f);
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o600);
    h.set_cksum();
    ar.append_data(&mut h, ENTRY, data.as_slice()).map_err(werr)?;
    Disk::config_archive(ar, out, SERIAL).map_err(werr)
}

/// Deletes the key disk file when dropped (QEMU keeps its open descriptor).
pub struct Remove(pub PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_the_key_privately_and_refuses_bad_key_files() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k");
        std::fs::write(&key, b"0123456789abcdef").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let out = d.path().join("key.tar");
        let disk = build(&key, &out).unwrap();
        assert_eq!(disk.serial.as_deref(), Some(SERIAL));
        assert!(disk.read_only);
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        let mut ar = tar::Archive::new(std::fs::File::open(&out).unwrap());
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(e.path().unwrap().to_str(), Some(ENTRY));
        let mut got = Vec::new();
        e.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"0123456789abcdef");
        drop(Remove(out.clone()));
        assert!(!out.exists());

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = build(&key, &out).unwrap_err().to_string();
        assert!(e.contains("mode 0644"), "{e}");
        std::fs::write(&key, b"").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = build(&key, &out).unwrap_err().to_string();
        assert!(e.contains("0 bytes"), "{e}");
        // The OS error is the source: once in the chain, never in the message itself.
        let e = build(&d.path().join("none"), &out).unwrap_err();
        let (msg, chain) = (e.to_string(), units::chain(&e));
        assert!(msg.ends_with("none: reading") && !msg.contains("No such file"), "{msg}");
        assert_eq!(chain.matches("No such file").count(), 1, "{chain}");
    }
}
