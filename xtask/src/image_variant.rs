//! `cargo xtask image --variant NAME`: the default image plus a test variant's modules and
//! programs (see `image::variant`) into target/lamina/image-NAME.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::image::lamina_dir;

/// Builds variant `name` into `target/lamina/image-<name>`; returns that directory.
pub fn task_image_variant(root: &Path, name: &str, kernel_deb: Option<PathBuf>) -> Result<PathBuf> {
    let variant = image::variant::by_name(name)
        .with_context(|| format!("no image variant {name:?} (known: dm)"))?;
    let t = Instant::now();
    let progress =
        |msg: &str| eprintln!("[image-{name} {:>5.1}s] {msg}", t.elapsed().as_secs_f64());
    let (inputs, cache) = crate::image::inputs(root, kernel_deb, &progress)?;
    let out = lamina_dir(root).join(format!("image-{name}"));
    let mut p = |m: &str| progress(m);
    let a = image::variant::build_variant(&inputs, &variant, &cache, &out, &mut p)
        .with_context(|| format!("building image variant {name}"))?;
    progress(&format!(
        "done: {} modules ({}), initramfs {}",
        a.kernel.modules.len(),
        a.kernel.modules.iter().map(|m| m.0.as_str()).collect::<Vec<_>>().join(" "),
        a.initramfs.display()
    ));
    Ok(out)
}
