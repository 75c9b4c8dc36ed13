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
//! export  the frontend seam: Export (one volume), Catalog (the set); memory, file and pool backends
//! nbd     the NBD frontend: pure protocol codecs, then the server (handshake, transmission)
//! ublk    the ublk frontend: volumes as /dev/ublkbN in the daemon's own machine (io_uring)
//! daemon  `thinpool serve`: pool lock, listeners, kernel handoff, signals, the control socket
//! ```
//!
//! Beside the layers: `check` (an independent metadata checker reading the device bytes),
//! `xml` (thin_dump / thin_restore XML), `delta` (the differences between two thins, and the
//! send/receive stream built on them), `repair` (thin_repair's salvage), and `luks` (LUKS2
//! headers for encrypted volumes, written by Debian's cryptsetup). The `thinpool` command line
//! lives in the binary.

pub mod check;
pub mod daemon;
pub mod delta;
pub mod export;
pub mod io;
pub mod luks;
pub mod nbd;
pub mod pdata;
pub mod pool;
pub mod repair;
pub mod service;
pub mod ublk;
pub mod units;
pub mod vg;
pub mod xml;
