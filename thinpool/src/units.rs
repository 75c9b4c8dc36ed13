//! A type for every unit, so a metadata block number is never passed where a data block or a
//! byte count is meant.

use std::fmt;

macro_rules! unit {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[derive(serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }

        impl From<u64> for $name {
            fn from(v: u64) -> Self {
                Self(v)
            }
        }
    };
}

unit!(
    /// A 4 KiB block of the metadata device.
    MetaBlock
);
unit!(
    /// A block of the data device, `data_block_size` sectors long.
    DataBlock
);
unit!(
    /// A block of a thin volume's virtual address space, in units of the data block size.
    VirtBlock
);
unit!(
    /// 512-byte sectors.
    Sectors
);
unit!(
    /// A thin device id as stored in the metadata (dm-thin accepts at most 2^24 - 1).
    ThinId
);
unit!(
    /// The pool's userspace transaction id (superblock `trans_id`).
    TransactionId
);

impl Sectors {
    pub const SIZE: u64 = 512;

    pub fn bytes(self) -> u64 {
        self.0 * Self::SIZE
    }
}

/// Largest thin id the kernel's message interface accepts.
pub const MAX_THIN_ID: u64 = (1 << 24) - 1;

pub use units::{chain, human_size, parse_size, Bytes, SizeError};
