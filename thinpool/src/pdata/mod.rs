//! Persistent data: the dm-thin on-disk structures and the machinery that keeps them
//! (checksummed blocks, copy-on-write btrees, space maps, transactions). Knows nothing about
//! thin volumes; the pool above gives the trees their meaning.

pub mod disk;
