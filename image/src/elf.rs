//! "ldd without executing": reads PT_INTERP, DT_NEEDED and DT_RUNPATH/DT_RPATH from ELF files
//! and resolves the libraries inside unpacked package trees (never on the host).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use object::elf::{FileHeader64, DT_NEEDED, DT_RPATH, DT_RUNPATH, PT_INTERP};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ElfError {
    #[error("{path}: {what}")]
    Bad { path: PathBuf, what: String },
    #[error("reading {path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{needed} (needed by {by}) is in none of the pinned packages")]
    Unresolved { needed: String, by: String },
}

/// The dynamic-linking facts of one ELF file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Dynamic {
    pub interp: Option<String>,
    pub needed: Vec<String>,
    /// DT_RUNPATH and DT_RPATH directories (e.g. librados' `/usr/lib/x86_64-linux-gnu/ceph`).
    pub runpath: Vec<String>,
}

pub fn read_dynamic(path: &Path, data: &[u8]) -> Result<Dynamic, ElfError> {
    let bad = |what: String| ElfError::Bad { path: path.to_owned(), what };
    let hdr = FileHeader64::<Endianness>::parse(data)
        .map_err(|e| bad(format!("not a 64-bit ELF: {e}")))?;
    let endian = hdr.endian().map_err(|e| bad(e.to_string()))?;
    let mut out = Dynamic::default();
    for ph in hdr.program_headers(endian, data).map_err(|e| bad(e.to_string()))? {
        if ph.p_type(endian) == PT_INTERP {
            let raw = ph.data(endian, data).map_err(|_| bad("PT_INTERP out of bounds".into()))?;
            let s = raw.split(|b| *b == 0).next().unwrap_or_default();
            out.interp = Some(String::from_utf8_lossy(s).into_owned());
        }
    }
    let sections = hdr.sections(endian, data).map_err(|e| bad(e.to_string()))?;
    if let Some((dyns, link)) = sections.dynamic(endian, data).map_err(|e| bad(e.to_string()))? {
        let strings = sections.strings(endian, data, link).map_err(|e| bad(e.to_string()))?;
        for d in dyns {
            let tag = d.tag32(endian);
            if tag == Some(DT_NEEDED) {
                let name = d.string(endian, strings).map_err(|e| bad(e.to_string()))?;
                out.needed.push(String::from_utf8_lossy(name).into_owned());
            } else if tag == Some(DT_RUNPATH) || tag == Some(DT_RPATH) {
                let dirs = d.string(endian, strings).map_err(|e| bad(e.to_string()))?;
                let dirs = String::from_utf8_lossy(dirs);
                out.runpath.extend(dirs.split(':').filter(|s| !s.is_empty()).map(str::to_owned));
            }
        }
    }
    Ok(out)
}

const LIB_DIRS: &[&str] =
    &["lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib64", "lib", "usr/lib"];

/// Follows symlinks of `rel` inside `root` (absolute targets are taken relative to `root`).
fn resolve_in(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut cur = root.join(rel.trim_start_matches('/'));
    for _ in 0..16 {
        let meta = std::fs::symlink_metadata(&cur).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(cur);
        }
        let target = std::fs::read_link(&cur).ok()?;
        cur = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            cur.parent()?.join(target)
        };
    }
    None
}

/// Files to copy for running `binaries` (paths inside `roots`): archive path → source file.
/// Libraries go to `lib/x86_64-linux-gnu/<soname>`, the loader to its PT_INTERP path. A
/// library is looked up in the needing file's absolute RUNPATH directories first, then in the
/// standard ones; it is installed in the standard directory either way, where the loader falls
/// back to when the RUNPATH directory does not exist in the image.
pub fn closure(
    roots: &[PathBuf],
    binaries: &[(&Path, &str)],
) -> Result<BTreeMap<String, PathBuf>, ElfError> {
    let mut out = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<(PathBuf, String)> =
        binaries.iter().map(|(p, n)| (p.to_path_buf(), n.to_string())).collect();
    while let Some((path, label)) = todo.pop() {
        let data =
            std::fs::read(&path).map_err(|source| ElfError::Io { path: path.clone(), source })?;
        let dynamic = read_dynamic(&path, &data)?;
        if let Some(interp) = dynamic.interp {
            let src = roots.iter().find_map(|r| resolve_in(r, &interp)).ok_or_else(|| {
                ElfError::Unresolved { needed: interp.clone(), by: label.clone() }
            })?;
            out.insert(interp.trim_start_matches('/').to_owned(), src);
        }
        for soname in dynamic.needed {
            if !seen.insert(soname.clone()) {
                continue;
            }
            let sn = soname.as_str();
            let dirs: Vec<&str> = dynamic
                .runpath
                .iter()
                .filter(|d| d.starts_with('/'))
                .map(|d| d.trim_start_matches('/'))
                .chain(LIB_DIRS.iter().copied())
                .collect();
            let src = roots
                .iter()
                .flat_map(|r| dirs.iter().map(move |d| (r, format!("{d}/{sn}"))))
                .find_map(|(r, rel)| resolve_in(r, &rel))
                .ok_or_else(|| ElfError::Unresolved {
                    needed: soname.clone(),
                    by: label.clone(),
                })?;
            out.insert(format!("lib/x86_64-linux-gnu/{soname}"), src.clone());
            todo.push((src, soname));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_binary_has_no_needs() {
        // The test binary itself is dynamic on the host: it needs libc.
        let me = std::env::current_exe().unwrap();
        let d = read_dynamic(&me, &std::fs::read(&me).unwrap()).unwrap();
        assert!(d.needed.iter().any(|n| n.starts_with("libc.so")), "{d:?}");
        assert!(d.interp.as_deref().is_some_and(|i| i.contains("ld-linux")), "{d:?}");
    }

    /// librados (Debian's fio pulls it in) finds libceph-common through its RUNPATH only.
    /// Needs librados2, which `cargo xtask setup` installs with fio.
    #[test]
    fn runpath_directories_are_searched() {
        let lib = Path::new("/usr/lib/x86_64-linux-gnu/librados.so.2");
        assert!(lib.exists(), "{} is missing: run `cargo xtask setup` (fio)", lib.display());
        let d = read_dynamic(lib, &std::fs::read(lib).unwrap()).unwrap();
        assert!(d.runpath.iter().any(|p| p.ends_with("/ceph")), "{d:?}");
        let files = closure(&[PathBuf::from("/")], &[(lib, "librados.so.2")]).unwrap();
        let ceph = &files["lib/x86_64-linux-gnu/libceph-common.so.2"];
        assert!(ceph.to_string_lossy().contains("/ceph/"), "{ceph:?}");
    }

    #[test]
    fn garbage_is_an_error() {
        for junk in [&b"\x7fELF junk"[..], b""] {
            let e = read_dynamic(Path::new("x"), junk).unwrap_err();
            assert!(
                matches!(&e, ElfError::Bad { path, what } if path == Path::new("x")
                    && what.starts_with("not a 64-bit ELF")),
                "{}",
                units::chain(&e)
            );
        }
    }

    #[test]
    fn resolves_absolute_symlinks_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("lib/x86_64-linux-gnu")).unwrap();
        std::fs::create_dir_all(d.path().join("lib64")).unwrap();
        std::fs::write(d.path().join("lib/x86_64-linux-gnu/ld.so"), b"x").unwrap();
        std::os::unix::fs::symlink("/lib/x86_64-linux-gnu/ld.so", d.path().join("lib64/ld.so"))
            .unwrap();
        assert_eq!(
            resolve_in(d.path(), "/lib64/ld.so").unwrap(),
            d.path().join("lib/x86_64-linux-gnu/ld.so")
        );
        assert!(resolve_in(d.path(), "/lib64/none").is_none());
    }
}
