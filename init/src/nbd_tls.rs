//! NBD over TLS for the appliance: the host's `lamina run --nbd-tls DIR` attaches a read-only
//! config disk with the virtio serial `lamina-nbd-tls`, a ustar archive of `ca-cert.pem`,
//! `server-cert.pem` and `server-key.pem` (see the qemu crate's `tlsdisk`). Init unpacks it
//! into [`DIR`] and the pool daemon serves NBD with TLS required and client certificates
//! checked against that CA.

use std::io::Read;
use std::path::{Path, PathBuf};

/// virtio-blk serial of the config disk (the host's `qemu::tlsdisk::SERIAL`).
pub const SERIAL: &str = "lamina-nbd-tls";
/// Where the certificates are unpacked (tmpfs).
pub const DIR: &str = "/run/lamina/nbd-tls";
const FILES: [&str; 3] = ["ca-cert.pem", "server-cert.pem", "server-key.pem"];
/// A certificate file larger than this is not a certificate.
const MAX_FILE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TlsDiskError {
    #[error("NBD TLS disk {dev}")]
    Read { dev: PathBuf, source: std::io::Error },
    #[error("NBD TLS disk {dev}: {file} is missing")]
    Missing { dev: PathBuf, file: &'static str },
    #[error("writing {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Whether a virtio disk is one of lamina's config disks (never a pool disk).
pub fn is_config_disk(sys_block: &Path, name: &str) -> bool {
    serial(sys_block, name).is_some_and(|s| s.starts_with("lamina-"))
}

fn serial(sys_block: &Path, name: &str) -> Option<String> {
    let s = std::fs::read_to_string(sys_block.join(name).join("serial")).ok()?;
    Some(s.trim().to_owned())
}

/// The TLS config disk, if the host attached one.
pub fn find(sys_block: &Path) -> Option<PathBuf> {
    find_disk(sys_block, SERIAL)
}

/// The virtio disk whose serial is `want` (each config disk has its own).
pub fn find_disk(sys_block: &Path, want: &str) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block).ok()?;
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("vd") && serial(sys_block, n).as_deref() == Some(want))
        .map(|n| PathBuf::from("/dev").join(n))
}

/// Unpacks the certificates from `dev` into `dir` (the key readable by root only).
pub fn unpack(dev: &Path, dir: &Path) -> Result<(), TlsDiskError> {
    let rerr = |source| TlsDiskError::Read { dev: dev.to_owned(), source };
    let werr = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsDiskError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    let mut ar = tar::Archive::new(std::fs::File::open(dev).map_err(rerr)?);
    let mut found = [false; 3];
    for entry in ar.entries().map_err(rerr)? {
        let entry = entry.map_err(rerr)?;
        let name = entry.path().map_err(rerr)?.display().to_string();
        // Only the three known names, whatever else the archive claims to hold.
        let Some(i) = FILES.iter().position(|f| *f == name) else { continue };
        let mut data = Vec::new();
        entry.take(MAX_FILE).read_to_end(&mut data).map_err(rerr)?;
        let path = dir.join(FILES[i]);
        std::fs::write(&path, &data).map_err(werr(&path))?;
        if FILES[i] == "server-key.pem" {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::Permissions::from_mode(0o600);
            std::fs::set_permissions(&path, mode).map_err(werr(&path))?;
        }
        found[i] = true;
    }
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(TlsDiskError::Missing { dev: dev.to_owned(), file: FILES[i] });
    }
    Ok(())
}

/// `thinpool serve` flags for certificates in `dir`: TLS required, client certificates
/// signed by the CA.
pub fn serve_args(dir: &Path) -> Vec<String> {
    let dir = dir.display().to_string();
    ["--tls", "require", "--tls-certificates", &dir, "--tls-verify-peer"]
        .map(str::to_owned)
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::ustar;

    #[test]
    fn finds_unpacks_and_refuses_an_incomplete_disk() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("sys");
        for (n, s) in [("vda", "pooldisk"), ("vdb", SERIAL)] {
            std::fs::create_dir_all(sys.join(n)).unwrap();
            std::fs::write(sys.join(n).join("serial"), s).unwrap();
        }
        assert_eq!(find(&sys), Some(PathBuf::from("/dev/vdb")));
        assert!(is_config_disk(&sys, "vdb") && !is_config_disk(&sys, "vda"));
        // A disk as the host packs it, plus a stray entry that must be ignored.
        let tar_path = d.path().join("disk.tar");
        let stray = FILES.iter().chain(&["../evil"]).map(|f| ("x", format!("{f}\n")));
        ustar(&tar_path, 0o644, stray);
        let out = d.path().join("out");
        // Entries were all named "x": nothing known, so the key is missing.
        let err = unpack(&tar_path, &out).unwrap_err().to_string();
        assert!(err.contains("ca-cert.pem is missing"), "{err}");
        ustar(&tar_path, 0o644, FILES.map(|f| (f, format!("{f}\n"))));
        unpack(&tar_path, &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(out.join("server-key.pem")).unwrap(),
            "server-key.pem\n"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("server-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!d.path().join("evil").exists());
        assert_eq!(serve_args(&out)[..2], ["--tls", "require"]);
    }
}
