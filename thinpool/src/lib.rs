//! lamina's thin-provisioning pool.
//!
//! Layered one way, each layer using only the ones before it:
//!
//! ```text
//! io      block-device seam: file, memory, fault-injecting
//! pdata   dm-thin on-disk format: checksummed blocks, btrees, space maps, transactions
//! pool    thin volumes: create, snapshot, delete, map, CoW, discard, commit, names
//! vg      volume group under the pool: devices, extents, tmeta/tdata regions, autoextend
//! service what a daemon runs: handles, deferred deletion, waiting writes, autoextend thread
//! nbd     NBD protocol codec and server over an Export/Catalog seam
//! ```
//!
//! Beside the layers: `check` (an independent metadata checker reading the device bytes),
//! `xml` (thin_dump / thin_restore XML) and `cli` (the `thinpool` command line).

pub mod check;
pub mod cli;
pub mod io;
pub mod nbd;
pub mod pdata;
pub mod pool;
pub mod service;
pub mod units;
pub mod vg;
pub mod xml;
