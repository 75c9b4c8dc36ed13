//! Persistent data: the dm-thin on-disk structures and the machinery that keeps them
//! (checksummed blocks, copy-on-write btrees, space maps, transactions). Knows nothing about
//! thin volumes; the pool above gives the trees their meaning.
//!
//! ```text
//! disk     pure codecs (superblock, node, bitmap, index block)
//! sm       in-memory reference counts with the "free in both maps" allocation rule
//! tm       transaction manager: block cache, shadowing, metadata space map, write-out
//! btree    copy-on-write btree over value sizes 4/8/16/24 with inc/dec/equal hooks
//! sm_disk  persisting both space maps: bitmaps, index block / index btree, overflow trees
//! superblock  flags set outside a transaction (needs_check)
//! ```

pub mod btree;
pub mod disk;
pub mod sm;
pub mod sm_disk;
pub mod superblock;
pub mod tm;

use crate::units::MetaBlock;

/// What went wrong in the persistent-data layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A block failed validation or a structure is inconsistent.
    #[error("metadata block {block}: {what}")]
    Corrupt { block: MetaBlock, what: String },
    /// The device failed.
    #[error("metadata block {block}: {op} failed")]
    Io {
        block: MetaBlock,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A reference count would go below zero or a block number is out of range.
    #[error("{map} space map, block {block}: {what}")]
    BadRef { map: &'static str, block: u64, what: &'static str },
    /// No free metadata block is left (free in both the current and the committed map).
    #[error("metadata space exhausted while {0}")]
    NoSpace(&'static str),
}

impl Error {
    pub fn corrupt(block: MetaBlock, what: impl Into<String>) -> Self {
        Error::Corrupt { block, what: what.into() }
    }
}

pub type Result<T> = std::result::Result<T, Error>;
