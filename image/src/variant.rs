//! Test image variants: the normal initramfs plus extra kernel modules and Debian programs,
//! written to their own directory so the default image stays minimal.
//!
//! The `dm` variant (`target/lamina/image-dm`) adds device-mapper with the thin-pool target
//! and `dmsetup`, for the interop test that hands a lamina pool to the kernel's dm-thin
//! (`tests/tests/vm_dmthin.rs`). The Debian cloud kernel builds all of dm as modules
//! (`CONFIG_BLK_DEV_DM=m`, `CONFIG_DM_THIN_PROVISIONING=m`, with `dm-persistent-data`,
//! `dm-bio-prison` and `dm-bufio` pulled in from `.modinfo` `depends=`). It also carries
//! Debian's `fio` for `cargo xtask bench guest` (pins in [`crate::pins_fio`]): the closure of
//! its libraries is ~85 MB, so the variant's initramfs is ~100 MB and its VMs want ≥ 768 MiB.

use std::path::Path;

use crate::build::{file_entry, initramfs, write_artefacts, Artefacts, BuildError, Inputs};
use crate::cpio::{Archive, Entry, Kind};
use crate::deb::unpack_cached;
use crate::elf::closure;
use crate::fetch::fetch;
use crate::modules::ModuleTree;
use crate::pins::DebPin;

/// One image variant: what it adds to the default image.
#[derive(Debug, Clone, Copy)]
pub struct Variant {
    /// Directory name under `target/lamina` (`image-<name>`).
    pub name: &'static str,
    /// Kernel modules loaded after the default ones (dependencies added from `.modinfo`).
    pub modules: &'static [(&'static str, &'static str)],
    /// `.deb`s providing the programs and their libraries, in groups (one per purpose).
    pub debs: &'static [&'static [DebPin]],
    /// Dynamically linked programs: (package, path in the package), installed at that path.
    pub programs: &'static [(&'static str, &'static str)],
    /// Kernel options the variant needs (checked against the package's `config-*`).
    pub config: &'static [(&'static str, &'static [&'static str])],
}

/// Device-mapper thin provisioning and `dmsetup` (pinned 2026-11-23 from bookworm).
pub const DM: Variant = Variant {
    name: "dm",
    modules: &[("dm_thin_pool", "")],
    debs: &[DM_DEBS, crate::pins_fio::FIO],
    programs: &[("dmsetup", "sbin/dmsetup"), ("fio", "usr/bin/fio")],
    config: &[("CONFIG_BLK_DEV_DM", &["y", "m"]), ("CONFIG_DM_THIN_PROVISIONING", &["y", "m"])],
};

/// `dmsetup` (its libraries are in the default image: cryptsetup needs them too).
const DM_DEBS: &[DebPin] = &[DebPin {
    package: "dmsetup",
    version: "2:1.02.185-2",
    sha256: "c73fc490b93c83550ed272de69ec96c5da30d4456b889f9e93c7fd8e53860b85",
}];

impl Variant {
    /// Every pinned `.deb` of the variant, groups concatenated.
    pub fn all_debs(&self) -> impl Iterator<Item = &'static DebPin> {
        self.debs.iter().flat_map(|g| g.iter())
    }
}

/// Looks a variant up by name.
pub fn by_name(name: &str) -> Option<Variant> {
    [DM].into_iter().find(|v| v.name == name)
}

/// Builds the default image of `inputs` plus `variant` into `out`.
pub fn build_variant(
    inputs: &Inputs,
    variant: &Variant,
    cache: &Path,
    out: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Artefacts, BuildError> {
    let (base, mut kernel) = initramfs(inputs, cache, progress)?;
    let kerr = |what: String| BuildError::Kernel { deb: inputs.kernel_deb.clone(), what };
    let ktree = unpack_cached(&inputs.kernel_deb, cache)?;
    let config_path = ktree.join(format!("boot/config-{}", kernel.release));
    let config = std::fs::read_to_string(&config_path).map_err(|source| BuildError::Io {
        what: "reading",
        path: config_path.clone(),
        source,
    })?;
    crate::build::check_config(&config, variant.config).map_err(|e| kerr(e.to_string()))?;

    progress(&format!("variant {}: ordering kernel modules", variant.name));
    let tree = ModuleTree::scan(&ktree.join("lib/modules").join(&kernel.release))?;
    let extra: Vec<&str> = variant.modules.iter().map(|(n, _)| *n).collect();
    let mut order_txt = String::new();
    let mut a = Archive::new(0);
    // Default modules first (same lines as the default image), then the variant's new ones.
    for e in base.entries() {
        if e.path == "etc/lamina/modules.order" {
            if let Kind::File(d) = &e.kind {
                order_txt.push_str(&String::from_utf8_lossy(d));
            }
            continue;
        }
        a.add(e.clone())?;
    }
    for name in tree.order(&extra)? {
        if kernel.modules.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let ko = tree.read(&name)?.ok_or_else(|| kerr(format!("module {name} vanished")))?;
        let dest = format!("lib/modules/{}/{name}.ko", kernel.release);
        a.add(Entry { path: dest.clone(), perm: 0o644, kind: Kind::File(ko) })?;
        let params =
            variant.modules.iter().find(|(n, _)| *n == name).map(|(_, p)| *p).unwrap_or("");
        order_txt.push_str(format!("{name} /{dest} {params}").trim_end());
        order_txt.push('\n');
        kernel.modules.push((name, params.to_owned()));
    }
    a.add(Entry {
        path: "etc/lamina/modules.order".into(),
        perm: 0o644,
        kind: Kind::File(order_txt.into_bytes()),
    })?;

    progress(&format!("variant {}: fetching and unpacking packages", variant.name));
    // The default userland comes first so shared libraries (libc) resolve to the same files.
    let mut roots = inputs
        .userland_debs
        .iter()
        .map(|d| unpack_cached(d, cache))
        .collect::<Result<Vec<_>, _>>()?;
    let own = roots.len();
    let pins: Vec<&DebPin> = variant.all_debs().collect();
    for pin in &pins {
        roots.push(unpack_cached(&fetch(pin, cache)?, cache)?);
    }
    let mut programs = Vec::new();
    for (pkg, rel) in variant.programs {
        let i = pins
            .iter()
            .position(|p| p.package == *pkg)
            .ok_or_else(|| kerr(format!("variant {}: {pkg} is not pinned", variant.name)))?;
        let src = roots[own + i].join(rel);
        a.add(file_entry(rel, 0o755, &src)?)?;
        programs.push((src, rel.to_string()));
    }
    let bins: Vec<(&Path, &str)> =
        programs.iter().map(|(p, n)| (p.as_path(), n.as_str())).collect();
    let files = closure(&roots, &bins)?;
    // A pin that provides nothing is stale (a dependency dropped upstream): say so.
    for (pin, root) in pins.iter().zip(&roots[own..]) {
        let used =
            files.values().chain(programs.iter().map(|(p, _)| p)).any(|f| f.starts_with(root));
        if !used {
            return Err(kerr(format!(
                "variant {}: the pinned {} provides nothing the programs load",
                variant.name, pin.package
            )));
        }
    }
    for (dest, src) in files {
        a.add(file_entry(&dest, 0o755, &src)?)?;
    }

    let art = write_artefacts(inputs, &a, kernel, out, progress)?;
    let manifest = out.join("manifest.txt");
    let mut text = std::fs::read_to_string(&manifest).unwrap_or_default();
    text.push_str(&format!("variant {}\n", variant.name));
    for p in &pins {
        text.push_str(&format!("pin {}={} {}\n", p.package, p.version, p.sha256));
    }
    crate::build::write_atomic(&manifest, text.as_bytes())?;
    Ok(art)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pins;

    #[test]
    fn dm_variant_is_named_and_pins_its_program() {
        let v = by_name("dm").unwrap();
        assert!(v.programs.iter().all(|(pkg, _)| v.all_debs().any(|p| p.package == *pkg)));
        assert!(v.all_debs().all(|p| p.sha256.len() == 64));
        // No variant pin duplicates a default pin or another variant pin (the closure would
        // pick either copy).
        assert!(v.all_debs().all(|d| pins::USERLAND.iter().all(|u| u.package != d.package)));
        let mut names: Vec<&str> = v.all_debs().map(|p| p.package).collect();
        names.sort();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "a package is pinned twice");
        assert!(v.programs.contains(&("fio", "usr/bin/fio")), "the guest bench needs fio");
        assert!(by_name("nope").is_none());
    }

    #[test]
    fn option_check_names_what_is_missing() {
        let cfg = "CONFIG_BLK_DEV_DM=m\n# CONFIG_DM_THIN_PROVISIONING is not set\n";
        let crate::build::MissingConfig(bad) =
            crate::build::check_config(cfg, DM.config).unwrap_err();
        assert_eq!(bad, ["CONFIG_DM_THIN_PROVISIONING=unset (need y|m)"]);
        assert_eq!(
            crate::build::check_config(
                "CONFIG_BLK_DEV_DM=y\nCONFIG_DM_THIN_PROVISIONING=m\n",
                DM.config
            ),
            Ok(())
        );
    }
}
