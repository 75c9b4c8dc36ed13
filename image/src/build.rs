//! Assembles the boot artefacts from the pinned packages and our static binaries.
//!
//! ```text
//! <out>/vmlinuz            the Debian bzImage (SeaBIOS/qboot boot path)
//! <out>/vmlinux            uncompressed ELF with the PVH note (direct boot, faster under TCG)
//! <out>/initramfs.cpio     uncompressed newc archive (see below)
//! <out>/initramfs.listing  one line per entry (mode, size, path)
//! <out>/manifest.txt       kernel release, package pins and artefact SHA-256s
//!
//! initramfs:  init                         static lamina-init (PID 1)
//!             etc/lamina/config.toml       runtime config (kernel cmdline lamina.KEY=V overrides)
//!             etc/lamina/modules.order     "name path params" per line, load order
//!             lib/modules/<release>/*.ko   the selected modules, flattened, uncompressed
//!             sbin/mkfs.xfs + lib/x86_64-linux-gnu/*.so* + lib64/ld-linux-x86-64.so.2
//!             usr/sbin/xfs_quota           project quotas for `layerstore create --size`
//!             usr/bin/crun                 the OCI runtime for `layerstore bundle` (its libraries
//!                                          join mkfs.xfs's in lib/x86_64-linux-gnu)
//!             bin/btrfs, sbin/mkfs.btrfs   btrfs-progs, for `layerstore --driver btrfs`
//!             bin/busybox + applet links   debug sessions only (exec needs lamina.debug=1)
//!             usr/lib/cni, usr/sbin/ipt…   container networking (see [`crate::net`]),
//!             etc/lamina/modules.network   its modules, loaded on first use
//!             sbin/<extra>                 further static binaries (thinpool, layerstore)
//!             dev/console, dev proc sys run tmp mnt root var/lib/lamina
//! ```

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::cpio::{Archive, CpioError, Entry, Kind};
use crate::deb::{unpack_cached, DebError};
use crate::elf::{closure, ElfError};
use crate::fetch::{fetch, FetchError};
use crate::modules::{ModuleError, ModuleTree};
use crate::net;
use crate::pins;
use crate::vmlinux::{self, VmlinuxError};

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Deb(#[from] DebError),
    #[error(transparent)]
    Module(#[from] ModuleError),
    #[error(transparent)]
    Elf(#[from] ElfError),
    #[error(transparent)]
    Cpio(#[from] CpioError),
    #[error(transparent)]
    Vmlinux(#[from] VmlinuxError),
    #[error("{what} {path}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("kernel package {deb}: {what}")]
    Kernel { deb: PathBuf, what: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Io { what, path, source }
}

/// Dynamically linked programs shipped from Debian packages: (package, path in the package).
pub(crate) const DYNAMIC_PROGRAMS: &[(&str, &str)] = &[
    ("xfsprogs", "sbin/mkfs.xfs"),
    ("xfsprogs", "usr/sbin/xfs_quota"),
    ("crun", "usr/bin/crun"),
    // LUKS2 at rest (init's `luks`): format and open the store and encrypted volumes.
    ("cryptsetup-bin", "sbin/cryptsetup"),
    // The btrfs driver's tools (Debian 12 installs them under /bin and /sbin).
    ("btrfs-progs", "bin/btrfs"),
    ("btrfs-progs", "sbin/mkfs.btrfs"),
];
/// The networking programs ([`net`]): (package, path in the package), resolved like
/// [`DYNAMIC_PROGRAMS`]; the xtables extensions go through the same DT_NEEDED closure.
fn net_programs() -> impl Iterator<Item = (&'static str, String)> {
    let plugins =
        net::PLUGINS.iter().map(|p| ("containernetworking-plugins", format!("usr/lib/cni/{p}")));
    let xt = net::XTABLES.iter().map(|x| ("iptables", format!("{}/{x}", net::XTABLES_DIR)));
    plugins.chain(std::iter::once(("iptables", "usr/sbin/xtables-nft-multi".to_owned()))).chain(xt)
}

/// busybox applets linked in `bin/` for debug sessions.
const BUSYBOX_APPLETS: &[&str] = &[
    "cat",
    "dd",
    "df",
    "dmesg",
    "echo",
    "free",
    "grep",
    "head",
    "kill",
    "ls",
    "mount",
    "pidof",
    "ps",
    "rm",
    "sh",
    "sha256sum",
    "sleep",
    "stat",
    "sync",
    "tail",
    "true",
    "umount",
];

/// What goes into the image besides the pinned packages.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The kernel `.deb` (pinned download or `--kernel-deb`).
    pub kernel_deb: PathBuf,
    /// The userland `.deb`s, in [`pins::USERLAND`] order.
    pub userland_debs: Vec<PathBuf>,
    /// Static `lamina-init`.
    pub init: PathBuf,
    /// Further static binaries: (name under `sbin/`, file).
    pub extra_binaries: Vec<(String, PathBuf)>,
    /// Contents of `etc/lamina/config.toml`.
    pub config: Vec<u8>,
}

/// Kernel facts found while building.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    pub release: String,
    pub bzimage: PathBuf,
    /// Modules in load order with their `finit_module` parameters.
    pub modules: Vec<(String, String)>,
}

/// The written artefacts.
#[derive(Debug, Clone)]
pub struct Artefacts {
    pub kernel: KernelInfo,
    pub vmlinuz: PathBuf,
    pub vmlinux: PathBuf,
    pub initramfs: PathBuf,
    pub initramfs_sha256: String,
    pub listing: String,
}

/// Downloads (or reuses) every pinned package; `kernel_deb` overrides the kernel pin.
pub fn fetch_pinned(
    cache: &Path,
    kernel_deb: Option<&Path>,
) -> Result<(PathBuf, Vec<PathBuf>), BuildError> {
    let kernel = match kernel_deb {
        Some(p) => p.to_owned(),
        None => fetch(&pins::KERNEL, cache)?,
    };
    let userland = pins::USERLAND.iter().map(|p| fetch(p, cache)).collect::<Result<Vec<_>, _>>()?;
    Ok((kernel, userland))
}

pub(crate) fn file_entry(path: &str, perm: u32, src: &Path) -> Result<Entry, BuildError> {
    let data = std::fs::read(src).map_err(io("reading", src))?;
    Ok(Entry { path: path.into(), perm, kind: Kind::File(data) })
}

fn dir(path: &str, perm: u32) -> Entry {
    Entry { path: path.into(), perm, kind: Kind::Dir }
}

/// Builds the initramfs archive in memory (no artefact is written).
pub fn initramfs(
    inputs: &Inputs,
    cache: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(Archive, KernelInfo), BuildError> {
    progress("unpacking the kernel package");
    let ktree = unpack_cached(&inputs.kernel_deb, cache)?;
    let kerr = |what: String| BuildError::Kernel { deb: inputs.kernel_deb.clone(), what };
    let mods_root = ktree.join("lib/modules");
    let mut releases: Vec<String> = std::fs::read_dir(&mods_root)
        .map_err(io("listing", &mods_root))?
        .filter_map(|e| e.ok().and_then(|e| e.file_name().into_string().ok()))
        .collect();
    releases.sort();
    let [release] = releases.as_slice() else {
        return Err(kerr(format!("expected one lib/modules/<release>, found {releases:?}")));
    };
    let config_path = ktree.join(format!("boot/config-{release}"));
    let config = std::fs::read_to_string(&config_path).map_err(io("reading", &config_path))?;
    check_config(&config, pins::REQUIRED_CONFIG).map_err(|e| kerr(e.to_string()))?;

    progress("ordering kernel modules");
    let tree = ModuleTree::scan(&mods_root.join(release))?;
    let wanted: Vec<&str> = pins::MODULES.iter().map(|(n, _)| *n).collect();
    let order = tree.order(&wanted)?;
    let mut a = Archive::new(0);
    let mut order_txt = String::new();
    let mut modules = Vec::new();
    for name in &order {
        let ko = tree.read(name)?.ok_or_else(|| kerr(format!("module {name} vanished")))?;
        let dest = format!("lib/modules/{release}/{name}.ko");
        a.add(Entry { path: dest.clone(), perm: 0o644, kind: Kind::File(ko) })?;
        let params = pins::MODULES.iter().find(|(n, _)| n == name).map(|(_, p)| *p).unwrap_or("");
        order_txt.push_str(format!("{name} /{dest} {params}").trim_end());
        order_txt.push('\n');
        modules.push((name.clone(), params.to_owned()));
    }
    a.add(Entry {
        path: "etc/lamina/modules.order".into(),
        perm: 0o644,
        kind: Kind::File(order_txt.into_bytes()),
    })?;
    // Networking's modules, in their own order file: init loads them when the first
    // container joins a network. Those the boot order already has are listed, not copied.
    let mut net_txt = String::new();
    for name in tree.order(net::MODULES)? {
        let dest = format!("lib/modules/{release}/{name}.ko");
        if !order.contains(&name) {
            let ko = tree.read(&name)?.ok_or_else(|| kerr(format!("module {name} vanished")))?;
            a.add(Entry { path: dest.clone(), perm: 0o644, kind: Kind::File(ko) })?;
        }
        net_txt.push_str(&format!("{name} /{dest}\n"));
    }
    a.add(Entry {
        path: net::MODULES_FILE.into(),
        perm: 0o644,
        kind: Kind::File(net_txt.into_bytes()),
    })?;

    progress("unpacking userland packages");
    let roots = inputs
        .userland_debs
        .iter()
        .map(|d| unpack_cached(d, cache))
        .collect::<Result<Vec<_>, _>>()?;
    let pkg_root = |pkg: &str| -> Result<&PathBuf, BuildError> {
        let i = pins::USERLAND
            .iter()
            .position(|p| p.package == pkg)
            .ok_or_else(|| kerr(format!("{pkg} is not pinned")))?;
        roots.get(i).ok_or_else(|| kerr(format!("no .deb given for {pkg}")))
    };
    let mut programs = Vec::new();
    for (pkg, rel) in
        DYNAMIC_PROGRAMS.iter().map(|(p, r)| (*p, r.to_string())).chain(net_programs())
    {
        let src = pkg_root(pkg)?.join(&rel);
        a.add(file_entry(&rel, 0o755, &src)?)?;
        programs.push((src, rel));
    }
    for link in net::IPTABLES_LINKS {
        a.add(Entry {
            path: (*link).into(),
            perm: 0o777,
            kind: Kind::Symlink("xtables-nft-multi".into()),
        })?;
    }
    let bins: Vec<(&Path, &str)> =
        programs.iter().map(|(p, n)| (p.as_path(), n.as_str())).collect();
    for (dest, src) in closure(&roots, &bins)? {
        a.add(file_entry(&dest, 0o755, &src)?)?;
    }
    a.add(file_entry("bin/busybox", 0o755, &pkg_root("busybox-static")?.join("bin/busybox"))?)?;
    for applet in BUSYBOX_APPLETS {
        a.add(Entry {
            path: format!("bin/{applet}"),
            perm: 0o777,
            kind: Kind::Symlink("busybox".into()),
        })?;
    }

    progress("adding lamina binaries and config");
    a.add(file_entry("init", 0o755, &inputs.init)?)?;
    for (name, src) in &inputs.extra_binaries {
        a.add(file_entry(&format!("sbin/{name}"), 0o755, src)?)?;
    }
    a.add(Entry {
        path: "etc/lamina/config.toml".into(),
        perm: 0o644,
        kind: Kind::File(inputs.config.clone()),
    })?;
    for (d, perm) in [
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("run", 0o755),
        ("tmp", 0o1777),
        ("mnt", 0o755),
        ("root", 0o700),
        ("var/lib/lamina", 0o755),
    ] {
        a.add(dir(d, perm))?;
    }
    a.add(Entry {
        path: "dev/console".into(),
        perm: 0o600,
        kind: Kind::CharDev { major: 5, minor: 1 },
    })?;
    let bzimage = ktree.join(format!("boot/vmlinuz-{release}"));
    Ok((a, KernelInfo { release: release.clone(), bzimage, modules }))
}

/// Kernel options a build needs but the kernel's `config-*` does not have, each as
/// `CONFIG_X=value (need a|b)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel config lacks: {}", .0.join(", "))]
pub struct MissingConfig(pub Vec<String>);

/// Checks a kernel's `config-*` text for options (`(name, allowed values)`): the default
/// image's [`pins::REQUIRED_CONFIG`], or a variant's own.
pub fn check_config(config: &str, wanted: &[(&str, &[&str])]) -> Result<(), MissingConfig> {
    let bad: Vec<String> = wanted
        .iter()
        .filter_map(|(opt, allowed)| {
            let val =
                config.lines().find_map(|l| l.strip_prefix(opt).and_then(|r| r.strip_prefix('=')));
            match val {
                Some(v) if allowed.contains(&v) => None,
                other => {
                    Some(format!("{opt}={} (need {})", other.unwrap_or("unset"), allowed.join("|")))
                }
            }
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(MissingConfig(bad))
    }
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BuildError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))
}

/// Builds everything into `out`.
pub fn build(
    inputs: &Inputs,
    cache: &Path,
    out: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Artefacts, BuildError> {
    std::fs::create_dir_all(out).map_err(io("creating", out))?;
    let (archive, kernel) = initramfs(inputs, cache, progress)?;
    write_artefacts(inputs, &archive, kernel, out, progress)
}

/// Writes an assembled initramfs, the kernel images and the manifest into `out`.
pub fn write_artefacts(
    inputs: &Inputs,
    archive: &Archive,
    kernel: KernelInfo,
    out: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Artefacts, BuildError> {
    std::fs::create_dir_all(out).map_err(io("creating", out))?;
    progress("writing initramfs.cpio");
    let cpio = archive.encode();
    let initramfs_sha256 = hex::encode(Sha256::digest(&cpio));
    let initramfs = out.join("initramfs.cpio");
    write_atomic(&initramfs, &cpio)?;
    let listing = archive.listing();
    write_atomic(&out.join("initramfs.listing"), listing.as_bytes())?;

    progress("extracting vmlinux from the bzImage");
    let bz = std::fs::read(&kernel.bzimage).map_err(io("reading", &kernel.bzimage))?;
    let vmlinux_bytes = vmlinux::extract(&bz)?;
    let vmlinuz = out.join("vmlinuz");
    let vmlinux = out.join("vmlinux");
    write_atomic(&vmlinuz, &bz)?;
    write_atomic(&vmlinux, &vmlinux_bytes)?;

    let mut manifest = format!("kernel-release {}\n", kernel.release);
    manifest.push_str(&format!("kernel-deb {}\n", inputs.kernel_deb.display()));
    for p in pins::USERLAND {
        manifest.push_str(&format!("pin {}={} {}\n", p.package, p.version, p.sha256));
    }
    manifest.push_str(&format!("initramfs.cpio {initramfs_sha256}\n"));
    manifest.push_str(&format!("vmlinux {}\n", hex::encode(Sha256::digest(&vmlinux_bytes))));
    manifest.push_str(&format!(
        "modules {}\n",
        kernel.modules.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(" ")
    ));
    write_atomic(&out.join("manifest.txt"), manifest.as_bytes())?;
    Ok(Artefacts { kernel, vmlinuz, vmlinux, initramfs, initramfs_sha256, listing })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_check_reports_every_missing_option() {
        let ok: String =
            pins::REQUIRED_CONFIG.iter().map(|(o, v)| format!("{o}={}\n", v[0])).collect();
        assert_eq!(check_config(&ok, pins::REQUIRED_CONFIG), Ok(()));
        let broken = ok
            .replace("CONFIG_PVH=y", "# CONFIG_PVH is not set")
            .replace("CONFIG_XFS_FS=y", "CONFIG_XFS_FS=n");
        let MissingConfig(bad) = check_config(&broken, pins::REQUIRED_CONFIG).unwrap_err();
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].starts_with("CONFIG_PVH=unset") || bad[1].starts_with("CONFIG_PVH=unset"));
        assert!(bad.iter().any(|b| b.starts_with("CONFIG_XFS_FS=n (need")), "{bad:?}");
    }
}
