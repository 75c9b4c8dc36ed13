//! overlay2-style container layer store (issue: "Container layer store: overlay crate and
//! `layerstore` CLI").
//!
//! [`Store`] keeps Docker overlay2's on-disk contract (see [`store`] for the layout), imports
//! OCI layouts and `docker save` archives ([`source`], [`apply`]), exports them back with
//! identical digests ([`export`]), creates, mounts, commits and removes containers
//! ([`container`]), and keeps named volumes ([`volume`]). Kernel edges sit behind seams:
//! [`mount::Mounter`], [`quota::ProjectQuota`] and the d_type probe in [`backing`]. No unsafe
//! code: mounts go through rustix, project quotas through xfsprogs' `xfs_quota`.
#![forbid(unsafe_code)]

pub mod apply;
pub mod backing;
pub mod btrfs;
pub mod container;
pub mod devmapper;
pub mod diff;
pub mod digest;
pub mod error;
pub mod export;
pub mod fault;
pub mod fsutil;
pub mod mount;
pub mod quota;
pub mod source;
pub mod sparse;
pub mod store;
pub mod volume;

pub use container::{ContainerMeta, DiskUsage, ImageUsage, PruneReport, VolumeBind};
pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use export::{ExportFormat, ExportInfo};
pub use store::{Driver, ImageLayer, ImageMeta, LayerMeta, Store, MAX_DEPTH};
