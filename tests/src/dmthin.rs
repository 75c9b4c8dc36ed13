//! Helpers for the kernel interop test (`tests/vm_dmthin.rs`): the `dm` image variant, the
//! host `thinpool` binary, deterministic test data and `thinpool dmsetup-table` parsing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::{lamina_home, succeeded, workspace_root};

/// `target/lamina/image-dm`; fails with the command that builds it.
pub fn dm_image_dir() -> Result<PathBuf> {
    let dir = lamina_home().join("image-dm");
    for f in ["vmlinux", "initramfs.cpio"] {
        if !dir.join(f).is_file() {
            bail!(
                "VM tier: {} is missing; build the dm test image first: \
                 `cargo xtask image --variant dm` (or run `cargo xtask test`)",
                dir.join(f).display()
            );
        }
    }
    Ok(dir)
}

/// Builds (if stale) and returns the host `thinpool` binary. Cargo's build lock is free while
/// tests run, so this is an ordinary incremental build.
pub fn thinpool_bin() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = workspace_root();
    let st = Command::new(cargo)
        .args(["build", "-q", "-p", "thinpool", "--bin", "thinpool"])
        .current_dir(&root)
        .status()
        .context("running cargo build -p thinpool")?;
    if !st.success() {
        bail!("cargo build -p thinpool failed ({st})");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("debug/thinpool"))
}

/// Runs a host command; fails with its output unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    succeeded(format!("{cmd:?}"), out)
}

/// `len` deterministic pseudo-random bytes (xorshift64*; incompressible enough for a pool).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What `seq FROM TO | head -c LEN` prints (the guest writes this with busybox; `yes` would
/// never end there, since PID 1 leaves SIGPIPE ignored for its children).
pub fn seq_bytes(from: u64, to: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    for n in from..=to {
        if out.len() >= len {
            break;
        }
        out.extend_from_slice(format!("{n}\n").as_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SHA-256 of a file, read in a stream (disk images are gigabytes, mostly sparse).
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// One device of `thinpool dmsetup-table`: its dm name and table lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmDevice {
    pub name: String,
    pub table: Vec<String>,
}

impl DmDevice {
    /// The target type of the first line (`linear`, `thin-pool`, `thin`).
    pub fn target(&self) -> &str {
        self.table.first().and_then(|l| l.split_whitespace().nth(2)).unwrap_or("")
    }

    /// A thin device's id (last field of its `thin` line).
    pub fn thin_id(&self) -> Option<u64> {
        let l = self.table.first()?;
        (self.target() == "thin").then(|| l.split_whitespace().nth(4)?.parse().ok())?
    }

    /// `linear` segments as the guest sees them: every segment's device replaced by `dev`.
    pub fn on_device(&self, dev: &str) -> DmDevice {
        let table = self
            .table
            .iter()
            .map(|l| {
                let mut f: Vec<&str> = l.split_whitespace().collect();
                if f.get(2) == Some(&"linear") && f.len() == 5 {
                    f[3] = dev;
                }
                f.join(" ")
            })
            .collect();
        DmDevice { name: self.name.clone(), table }
    }

    /// (start, length) in sectors of a one-segment linear device on its device.
    pub fn linear_extent(&self) -> Option<(u64, u64)> {
        let [l] = self.table.as_slice() else { return None };
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"linear"))
            .then(|| Some((f.get(4)?.parse().ok()?, f.get(1)?.parse().ok()?)))?
    }
}

/// Parses `thinpool dmsetup-table` output (`# NAME` followed by table lines), in order.
pub fn parse_tables(text: &str) -> Vec<DmDevice> {
    let mut out: Vec<DmDevice> = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(name) = line.strip_prefix("# ") {
            out.push(DmDevice { name: name.trim().into(), table: Vec::new() });
        } else if let Some(d) = out.last_mut() {
            d.table.push(line.into());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# lamina-thinpool_tmeta\n0 16384 linear pool/dev0 8192\n\
        # lamina-thinpool_tdata\n0 1982464 linear pool/dev0 24576\n# lamina-thinpool\n\
        0 1982464 thin-pool /dev/mapper/lamina-thinpool_tmeta /dev/mapper/lamina-thinpool_tdata 128 3097 1 skip_block_zeroing\n\
        # lamina-thinpool-a\n0 131072 thin /dev/mapper/lamina-thinpool 7\n";

    #[test]
    fn tables_parse_and_map_to_the_guest_device() {
        let t = parse_tables(SAMPLE);
        assert_eq!(t.len(), 4);
        assert_eq!(t[0].linear_extent(), Some((8192, 16384)));
        assert_eq!(t[1].on_device("/dev/vda").table, ["0 1982464 linear /dev/vda 24576"]);
        assert_eq!(t[2].target(), "thin-pool");
        assert_eq!(t[2].on_device("/dev/vda"), t[2]);
        assert_eq!(t[3].thin_id(), Some(7));
        assert_eq!(t[2].thin_id(), None);
    }

    #[test]
    fn patterns_are_deterministic() {
        assert_eq!(pattern(1, 100), pattern(1, 100));
        assert_ne!(pattern(1, 100), pattern(2, 100));
        assert_eq!(seq_bytes(9, 11, 7), b"9\n10\n11");
    }
}
