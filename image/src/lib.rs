//! Boot artefacts for the lamina appliance: the pinned Debian kernel (bzImage and the extracted
//! PVH `vmlinux`), kernel modules in dependency order, `mkfs.xfs` with its libraries, and a
//! reproducible cpio newc initramfs around the static `lamina-init`.
//!
//! Layers: [`pins`] (what) → [`fetch`] (apt-get download + SHA-256) → [`deb`] (ar/tar unpack)
//! → [`modules`], [`elf`], [`vmlinux`] (pure readers) → [`cpio`] (pure codec) → [`build`].

pub mod build;
pub mod cpio;
pub mod deb;
pub mod elf;
pub mod fetch;
pub mod modules;
pub mod net;
pub mod pins;
pub mod pins_fio;
pub mod variant;
pub mod vmlinux;

pub use build::{build, fetch_pinned, initramfs, Artefacts, BuildError, Inputs, KernelInfo};
