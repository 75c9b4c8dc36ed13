//! Boot artefacts for the lamina appliance (issue: the bootable appliance).
//!
//! Will hold: fetching the pinned Debian `linux-image-*-cloud-amd64` package, extracting the
//! kernel and modules, ordering modules from `.modinfo` dependencies, bringing `mkfs.xfs` with
//! its libraries, and writing a reproducible cpio newc initramfs.
