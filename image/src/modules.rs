//! Kernel module selection and load order, computed at image-build time from each module's
//! `.modinfo` section (NUL-separated `key=value` strings: `name=`, `depends=a,b`,
//! `softdep=pre: x post: y`), so the guest needs neither `modules.dep` nor kmod.
//!
//! Debian's 6.12 kernels ship modules as `.ko.xz` (`CONFIG_MODULE_COMPRESS_XZ`). They are
//! decompressed here, at build time, and stored as plain `.ko` in the initramfs: the guest then
//! loads them with a plain `finit_module` and spends no boot time in the kernel's xz decoder
//! (slow under TCG), at the price of a larger (uncompressed) initramfs that QEMU copies once.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ModuleError {
    #[error("module {name}: not in {dir} and not built in")]
    Missing { name: String, dir: PathBuf },
    #[error("module {path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error("module dependency cycle through {name}")]
    Cycle { name: String },
    #[error("scanning modules under {dir}")]
    Io { dir: PathBuf, source: std::io::Error },
}

/// What `.modinfo` says about one module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub name: String,
    pub depends: Vec<String>,
    /// `softdep=pre:` modules; optional (skipped when built in or absent).
    pub softdep_pre: Vec<String>,
}

/// Canonical module name: `-` and `_` are interchangeable in module names.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Parses the raw bytes of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for field in section.split(|b| *b == 0) {
        let Ok(s) = std::str::from_utf8(field) else { continue };
        let Some((k, v)) = s.split_once('=') else { continue };
        match k {
            "name" => info.name = canonical(v),
            "depends" => {
                info.depends = v.split(',').filter(|d| !d.is_empty()).map(canonical).collect()
            }
            "softdep" => {
                // "pre: a b post: c"
                let mut pre = false;
                for tok in v.split_whitespace() {
                    match tok {
                        "pre:" => pre = true,
                        "post:" => pre = false,
                        t if pre => info.softdep_pre.push(canonical(t)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    info
}

/// Reads the `.modinfo` section of a `.ko` file.
pub fn read_modinfo(path: &Path, bytes: &[u8]) -> Result<ModInfo, ModuleError> {
    use object::{Object, ObjectSection};
    let bad = |what: String| ModuleError::Bad { path: path.to_owned(), what };
    let file = object::File::parse(bytes).map_err(|e| bad(format!("not an ELF object: {e}")))?;
    let sec = file.section_by_name(".modinfo").ok_or_else(|| bad("no .modinfo section".into()))?;
    let data = sec.data().map_err(|e| bad(format!(".modinfo unreadable: {e}")))?;
    let mut info = parse_modinfo(data);
    if info.name.is_empty() {
        // Older modules lack name=; the file name is the name.
        let file = path.file_name().and_then(|s| s.to_str()).unwrap_or_default();
        info.name = canonical(module_stem(file).map_or(file, |(stem, _)| stem));
    }
    Ok(info)
}

/// Splits a module file name into its stem and whether it is xz-compressed (`None` for any
/// other file).
fn module_stem(file: &str) -> Option<(&str, bool)> {
    if let Some(stem) = file.strip_suffix(".ko.xz") {
        Some((stem, true))
    } else {
        file.strip_suffix(".ko").map(|stem| (stem, false))
    }
}

/// The modules of one kernel tree: `.ko`/`.ko.xz` files by canonical name, plus the built-in list.
pub struct ModuleTree {
    pub dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Scans `lib/modules/<release>` (the `.ko`/`.ko.xz` files and `modules.builtin`).
    pub fn scan(dir: &Path) -> Result<Self, ModuleError> {
        let io = |source| ModuleError::Io { dir: dir.to_owned(), source };
        let mut files = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).map_err(io)? {
                let p = e.map_err(io)?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Some((stem, _)) =
                    p.file_name().and_then(|f| f.to_str()).and_then(module_stem)
                {
                    files.insert(canonical(stem), p);
                }
            }
        }
        let builtin = std::fs::read_to_string(dir.join("modules.builtin"))
            .map_err(io)?
            .lines()
            .filter_map(|l| l.rsplit('/').next())
            .map(|f| canonical(module_stem(f).map_or(f, |(stem, _)| stem)))
            .collect();
        Ok(Self { dir: dir.to_owned(), files, builtin })
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&canonical(name))
    }

    pub fn path(&self, name: &str) -> Option<&Path> {
        self.files.get(&canonical(name)).map(PathBuf::as_path)
    }

    /// The uncompressed ELF object of module `name` (`None` when the tree has no such file).
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, ModuleError> {
        let Some(p) = self.path(name) else { return Ok(None) };
        let raw =
            std::fs::read(p).map_err(|source| ModuleError::Io { dir: p.to_owned(), source })?;
        let file = p.file_name().and_then(|f| f.to_str()).unwrap_or_default();
        if !module_stem(file).is_some_and(|(_, xz)| xz) {
            return Ok(Some(raw));
        }
        let mut out = Vec::with_capacity(raw.len() * 4);
        std::io::Read::read_to_end(&mut xz2::read::XzDecoder::new(raw.as_slice()), &mut out)
            .map_err(|e| ModuleError::Bad { path: p.to_owned(), what: format!("xz: {e}") })?;
        Ok(Some(out))
    }

    fn info(&self, name: &str) -> Result<Option<ModInfo>, ModuleError> {
        let Some(bytes) = self.read(name)? else { return Ok(None) };
        let p = self.path(name).unwrap_or(&self.dir);
        read_modinfo(p, &bytes).map(Some)
    }

    /// Load order for `wanted` and everything it depends on; see [`order`].
    pub fn order(&self, wanted: &[&str]) -> Result<Vec<String>, ModuleError> {
        let mut infos = BTreeMap::new();
        let mut todo: Vec<String> = wanted.iter().map(|w| canonical(w)).collect();
        while let Some(n) = todo.pop() {
            if infos.contains_key(&n) || self.is_builtin(&n) {
                continue;
            }
            match self.info(&n)? {
                Some(i) => {
                    todo.extend(i.depends.iter().cloned());
                    todo.extend(i.softdep_pre.iter().cloned());
                    infos.insert(n, i);
                }
                None => {
                    // Hard dependencies must exist; soft ones are optional (checked in `order`).
                    infos.insert(n.clone(), ModInfo { name: n, ..Default::default() });
                }
            }
        }
        let present = |n: &str| self.path(n).is_some();
        let missing: Vec<String> = infos.keys().filter(|n| !present(n)).cloned().collect();
        order(wanted, &infos, |n| self.is_builtin(n), |n| missing.iter().any(|m| m == n)).map_err(
            |e| match e {
                ModuleError::Missing { name, .. } => {
                    ModuleError::Missing { name, dir: self.dir.clone() }
                }
                e => e,
            },
        )
    }
}

/// Deterministic topological order: each wanted module (in the given order) after its
/// dependencies (depth first, dependencies in name order). Built-in modules are dropped; a
/// missing hard dependency is an error, a missing soft dependency is skipped.
pub fn order(
    wanted: &[&str],
    infos: &BTreeMap<String, ModInfo>,
    builtin: impl Fn(&str) -> bool,
    missing: impl Fn(&str) -> bool,
) -> Result<Vec<String>, ModuleError> {
    #[derive(PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        n: &str,
        soft: bool,
        infos: &BTreeMap<String, ModInfo>,
        builtin: &dyn Fn(&str) -> bool,
        missing: &dyn Fn(&str) -> bool,
        marks: &mut BTreeMap<String, Mark>,
        out: &mut Vec<String>,
    ) -> Result<(), ModuleError> {
        if builtin(n) {
            return Ok(());
        }
        if missing(n) || !infos.contains_key(n) {
            return if soft {
                Ok(())
            } else {
                Err(ModuleError::Missing { name: n.into(), dir: PathBuf::new() })
            };
        }
        match marks.get(n) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::Visiting) => return Err(ModuleError::Cycle { name: n.into() }),
            None => {}
        }
        marks.insert(n.into(), Mark::Visiting);
        let info = &infos[n];
        let mut hard = info.depends.clone();
        hard.sort();
        let mut softs = info.softdep_pre.clone();
        softs.sort();
        for d in &softs {
            visit(d, true, infos, builtin, missing, marks, out)?;
        }
        for d in &hard {
            visit(d, false, infos, builtin, missing, marks, out)?;
        }
        marks.insert(n.into(), Mark::Done);
        out.push(n.into());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut out = Vec::new();
    for w in wanted {
        visit(&canonical(w), false, infos, &builtin, &missing, &mut marks, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, deps: &[&str], soft: &[&str]) -> (String, ModInfo) {
        (
            name.into(),
            ModInfo {
                name: name.into(),
                depends: deps.iter().map(|s| s.to_string()).collect(),
                softdep_pre: soft.iter().map(|s| s.to_string()).collect(),
            },
        )
    }

    #[test]
    fn parses_modinfo_fields() {
        let sec = b"license=GPL\0depends=virtio_ring,virtio-pci-modern-dev,\0softdep=pre: crc32c post: x\0name=virtio_pci\0vermagic=6.1\0";
        let i = parse_modinfo(sec);
        assert_eq!(i.name, "virtio_pci");
        assert_eq!(i.depends, ["virtio_ring", "virtio_pci_modern_dev"]);
        assert_eq!(i.softdep_pre, ["crc32c"]);
        assert_eq!(parse_modinfo(b"depends=\0"), ModInfo::default());
    }

    #[test]
    fn orders_dependencies_first_deterministically() {
        let infos: BTreeMap<_, _> = [
            info("virtio_pci", &["virtio_ring", "virtio", "virtio_pci_modern_dev"], &[]),
            info("virtio_pci_modern_dev", &[], &[]),
            info("virtio_ring", &[], &[]),
            info("virtio", &[], &[]),
            info("virtio_blk", &["virtio", "virtio_ring"], &[]),
            info("xfs", &["libcrc32c"], &[]),
            info("libcrc32c", &[], &["crc32c"]),
        ]
        .into_iter()
        .collect();
        let got = order(&["virtio_pci", "virtio_blk", "xfs"], &infos, |n| n == "crc32c", |_| false)
            .unwrap();
        assert_eq!(
            got,
            [
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio_pci",
                "virtio_blk",
                "libcrc32c",
                "xfs"
            ]
        );
    }

    #[test]
    fn missing_hard_dep_is_an_error_soft_is_not() {
        let infos: BTreeMap<_, _> =
            [info("a", &["b"], &[]), info("c", &[], &["zz"])].into_iter().collect();
        assert!(
            matches!(order(&["a"], &infos, |_| false, |_| false), Err(ModuleError::Missing { name, .. }) if name == "b")
        );
        assert_eq!(order(&["c"], &infos, |_| false, |_| false).unwrap(), ["c"]);
        assert_eq!(order(&["a"], &infos, |n| n == "a", |_| false).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn xz_modules_are_found_and_decompressed() {
        use std::io::Write;
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("kernel/drivers/block");
        std::fs::create_dir_all(&dir).unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(b"\x7fELF pretend object").unwrap();
        std::fs::write(dir.join("ublk_drv.ko.xz"), xz.finish().unwrap()).unwrap();
        std::fs::write(dir.join("plain.ko"), b"plain").unwrap();
        std::fs::write(d.path().join("modules.builtin"), "kernel/fs/ext4/ext4.ko\n").unwrap();
        let tree = ModuleTree::scan(d.path()).unwrap();
        assert_eq!(tree.read("ublk-drv").unwrap().unwrap(), b"\x7fELF pretend object");
        assert_eq!(tree.read("plain").unwrap().unwrap(), b"plain");
        assert_eq!(tree.read("absent").unwrap(), None);
        assert!(tree.is_builtin("ext4"));
        assert_eq!(module_stem("a.ko.xz"), Some(("a", true)));
        assert_eq!(module_stem("a.ko.zst"), None);
    }

    #[test]
    fn cycles_are_reported() {
        let infos: BTreeMap<_, _> =
            [info("a", &["b"], &[]), info("b", &["a"], &[])].into_iter().collect();
        assert!(matches!(
            order(&["a"], &infos, |_| false, |_| false),
            Err(ModuleError::Cycle { .. })
        ));
    }
}
