//! `cargo xtask image`: static binaries + pinned kernel + initramfs into target/lamina/image.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// The static binaries go through their own target dir, so the host build is not invalidated
/// by the different RUSTFLAGS.
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-gnu";

pub fn lamina_dir(root: &Path) -> PathBuf {
    root.join("target/lamina")
}

/// Builds the static `lamina-init`, `thinpool` and `layerstore`; returns their paths (init
/// first, then the binaries installed under `sbin/`).
pub fn build_static(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = root.join("target/static");
    let mut cmd = Command::new(&cargo);
    cmd.args(["build", "--release", "-p", "init", "-p", "thinpool", "-p", "overlay"])
        .args(["--bin", "lamina-init", "--bin", "thinpool", "--bin", "layerstore"])
        .args(["--target", STATIC_TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // PID 1 needs no debug info in the initramfs (18 MB → ~2 MB).
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .current_dir(root);
    let status = cmd.status().context("running cargo build for the static binaries")?;
    if !status.success() {
        bail!("static build failed ({status})");
    }
    let init = target_dir.join(STATIC_TARGET).join("release/lamina-init");
    let thinpool = target_dir.join(STATIC_TARGET).join("release/thinpool");
    let layerstore = target_dir.join(STATIC_TARGET).join("release/layerstore");
    for b in [&init, &thinpool, &layerstore] {
        check_static(b)?;
    }
    Ok(vec![
        ("lamina-init".into(), init),
        ("thinpool".into(), thinpool),
        ("layerstore".into(), layerstore),
    ])
}

/// A static binary has no PT_INTERP and no DT_NEEDED.
fn check_static(path: &Path) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let d = image::elf::read_dynamic(path, &data)?;
    if d.interp.is_some() || !d.needed.is_empty() {
        bail!("{} is not static: interp {:?}, needs {:?}", path.display(), d.interp, d.needed);
    }
    Ok(())
}

/// What every image is built from: the static binaries, the pinned Debian packages (in the
/// cache, which is returned too) and init's config. `kernel_deb` overrides the pinned kernel
/// (also env LAMINA_KERNEL_DEB).
pub fn inputs(
    root: &Path,
    kernel_deb: Option<PathBuf>,
    progress: &dyn Fn(&str),
) -> Result<(image::Inputs, PathBuf)> {
    progress("building static lamina-init (release, crt-static)");
    let bins = build_static(root)?;
    let cache = lamina_dir(root).join("cache");
    let kernel_deb =
        kernel_deb.or_else(|| std::env::var_os("LAMINA_KERNEL_DEB").map(PathBuf::from));
    progress("fetching pinned Debian packages");
    let (kdeb, userland) = image::fetch_pinned(&cache, kernel_deb.as_deref())?;
    let config =
        std::fs::read(root.join("init/config.toml")).context("reading init/config.toml")?;
    let inputs = image::Inputs {
        kernel_deb: kdeb,
        userland_debs: userland,
        init: bins[0].1.clone(),
        extra_binaries: bins[1..].to_vec(),
        config,
    };
    Ok((inputs, cache))
}

/// The whole image. `kernel_deb` overrides the pinned kernel (also env LAMINA_KERNEL_DEB).
pub fn task_image(root: &Path, kernel_deb: Option<PathBuf>) -> Result<image::Artefacts> {
    let t = Instant::now();
    let progress = |msg: &str| eprintln!("[image {:>5.1}s] {msg}", t.elapsed().as_secs_f64());
    let (inputs, cache) = inputs(root, kernel_deb, &progress)?;
    let out = lamina_dir(root).join("image");
    let mut p = |m: &str| progress(m);
    let a = image::build(&inputs, &cache, &out, &mut p)?;
    progress(&format!(
        "done: kernel {}, {} modules, initramfs {} ({:.1} MiB, sha256 {})",
        a.kernel.release,
        a.kernel.modules.len(),
        a.initramfs.display(),
        std::fs::metadata(&a.initramfs).map(|m| m.len()).unwrap_or(0) as f64 / (1 << 20) as f64,
        &a.initramfs_sha256[..16]
    ));
    Ok(a)
}
