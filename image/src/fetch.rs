//! Fetches pinned `.deb` files with `apt-get download` into a cache and verifies their SHA-256.
//!
//! ```text
//! <cache>/debs/<package>_<version>.deb      verified downloads (re-verified on every use)
//! <cache>/debs/.tmp-<package>/              apt-get's working dir for one download
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::pins::DebPin;

#[derive(Debug, Error)]
pub enum FetchError {
    #[error("fetching {what}: I/O on {path}")]
    Io { what: String, path: PathBuf, source: std::io::Error },
    #[error(
        "the pinned {package}={version} is no longer in the Debian archive (apt-get said: {apt}).\n\
         Currently available: {available}\n\
         Pin the newest: {repin}\n\
         or pass a local .deb: --kernel-deb PATH (env LAMINA_KERNEL_DEB=PATH)"
    )]
    Gone { package: String, version: String, apt: String, available: String, repin: String },
    #[error("apt-get download {package}={version} failed: {apt}")]
    Apt { package: String, version: String, apt: String },
    #[error("{path}: SHA-256 is {actual}, the pin says {expected}")]
    Digest { path: PathBuf, expected: String, actual: String },
}

/// SHA-256 of a file, hex-encoded.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let bytes = std::fs::read(path).map_err(|source| FetchError::Io {
        what: "hashing".into(),
        path: path.to_owned(),
        source,
    })?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Returns the path of the verified `.deb` for `pin`, downloading it when the cache lacks it.
pub fn fetch(pin: &DebPin, cache: &Path) -> Result<PathBuf, FetchError> {
    let io = |what: &str, path: &Path| {
        let (what, path) = (what.to_owned(), path.to_owned());
        move |source| FetchError::Io { what, path, source }
    };
    let dir = cache.join("debs");
    std::fs::create_dir_all(&dir).map_err(io("creating the cache", &dir))?;
    let dest = dir.join(format!("{}_{}.deb", pin.package, pin.version.replace(':', "%3a")));
    if dest.is_file() && sha256_file(&dest)? == pin.sha256 {
        return Ok(dest);
    }
    let tmp = dir.join(format!(".tmp-{}", pin.package));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io("creating", &tmp))?;
    tracing::info!(package = pin.package, version = pin.version, "apt-get download");
    let spec = format!("{}={}", pin.package, pin.version);
    let out = Command::new("apt-get")
        .args(["download", "-q", &spec])
        .current_dir(&tmp)
        .output()
        .map_err(io("running apt-get download", &tmp))?;
    if !out.status.success() {
        let apt = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let _ = std::fs::remove_dir_all(&tmp);
        if apt.contains("not found")
            || apt.contains("Unable to locate")
            || apt.contains("has no installation candidate")
        {
            return Err(gone(pin, apt));
        }
        return Err(FetchError::Apt {
            package: pin.package.into(),
            version: pin.version.into(),
            apt,
        });
    }
    let got = std::fs::read_dir(&tmp)
        .map_err(io("listing", &tmp))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| FetchError::Apt {
            package: pin.package.into(),
            version: pin.version.into(),
            apt: "apt-get reported success but wrote no .deb".into(),
        })?;
    let actual = sha256_file(&got)?;
    if actual != pin.sha256 {
        return Err(FetchError::Digest { path: got, expected: pin.sha256.into(), actual });
    }
    std::fs::rename(&got, &dest).map_err(io("moving into the cache", &got))?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(dest)
}

fn gone(pin: &DebPin, apt: String) -> FetchError {
    let kernel = pin.package.starts_with("linux-image-");
    let available = if kernel {
        let out = Command::new("apt-cache")
            .args(["search", "--names-only", r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64$"])
            .output();
        let mut names: Vec<String> = out
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter_map(|l| l.split(' ').next().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        names.sort_by_key(|n| abi_number(n));
        names.join(", ")
    } else {
        let out = Command::new("apt-cache").args(["madison", pin.package]).output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(|l| l.split('|').nth(1).unwrap_or("").trim().to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
    };
    let repin = if kernel {
        "apt-get update && apt-cache show linux-image-6.12.NN+deb12-cloud-amd64 | grep -E '^(Package|Version|SHA256):' \
         (NN = the highest above), then edit image/src/pins.rs"
            .to_owned()
    } else {
        format!("apt-get update && apt-cache show {} | grep -E '^(Version|SHA256):', then edit image/src/pins.rs", pin.package)
    };
    FetchError::Gone {
        package: pin.package.into(),
        version: pin.version.into(),
        apt,
        available: if available.is_empty() {
            "(apt-cache knows none; run apt-get update)".into()
        } else {
            available
        },
        repin,
    }
}

/// The patch level NN of `linux-image-6.12.NN+deb12-cloud-amd64` (0 when the name has another
/// shape).
fn abi_number(name: &str) -> u32 {
    name.strip_prefix("linux-image-6.12.")
        .and_then(|r| r.split('+').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_numbers_sort_numerically() {
        let mut v = vec![
            "linux-image-6.12.118+deb12-cloud-amd64",
            "linux-image-6.12.9+deb12-cloud-amd64",
            "x",
        ];
        v.sort_by_key(|n| abi_number(n));
        assert_eq!(
            v,
            ["x", "linux-image-6.12.9+deb12-cloud-amd64", "linux-image-6.12.118+deb12-cloud-amd64"]
        );
    }

    #[test]
    fn gone_error_tells_how_to_repin() {
        let pin =
            DebPin { package: "linux-image-6.12.1+deb12-cloud-amd64", version: "0", sha256: "00" };
        let msg = gone(&pin, "E: Version '0' not found".into()).to_string();
        assert!(msg.contains("apt-cache show linux-image-6.12.NN+deb12-cloud-amd64"), "{msg}");
        assert!(msg.contains("--kernel-deb PATH"), "{msg}");
        assert!(msg.contains("LAMINA_KERNEL_DEB"), "{msg}");
    }

    #[test]
    fn digest_of_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            sha256_file(&p).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn io_errors_keep_the_os_error_as_the_source() {
        let d = tempfile::tempdir().unwrap();
        let e = sha256_file(&d.path().join("none")).unwrap_err();
        let msg = e.to_string();
        assert_eq!(msg, format!("fetching hashing: I/O on {}", d.path().join("none").display()));
        assert_eq!(units::chain(&e), format!("{msg}: No such file or directory (os error 2)"));
    }
}
