//! lamina's thin-provisioning pool.
//!
//! Layered one way, each layer using only the ones before it:
//!
//! ```text
//! io      block-device seam: file, memory, fault-injecting
//! pdata   dm-thin on-disk format: checksummed blocks, btrees, space maps, transactions
//! pool    thin volumes: create, snapshot, delete, map, CoW, discard, commit, names
//! nbd     NBD protocol codec and server over an Export/Catalog seam
//! ```

pub mod io;
pub mod nbd;
pub mod pdata;
pub mod pool;
pub mod units;
