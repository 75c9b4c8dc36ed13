//! A type for every unit, so a metadata block number is never passed where a data block or a
//! byte count is meant. Each type is both an index and a count (`DataBlock(5)` is the sixth
//! data block, or five of them: a space map's `total`), as a sector number and a length in
//! sectors are one type in device-mapper tables. They add and subtract within their unit only;
//! crossing units goes through a method that names the conversion ([`MetaBlock::bytes`],
//! `Pool::data_bytes`).

use std::fmt;
use std::ops::{Add, AddAssign, Sub, SubAssign};

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

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0
            }
        }

        impl Add for $name {
            type Output = $name;
            fn add(self, o: $name) -> $name {
                $name(self.0 + o.0)
            }
        }

        impl AddAssign for $name {
            fn add_assign(&mut self, o: $name) {
                self.0 += o.0;
            }
        }

        impl Sub for $name {
            type Output = $name;
            fn sub(self, o: $name) -> $name {
                $name(self.0 - o.0)
            }
        }

        impl SubAssign for $name {
            fn sub_assign(&mut self, o: $name) {
                self.0 -= o.0;
            }
        }

        impl $name {
            pub fn saturating_sub(self, o: $name) -> $name {
                $name(self.0.saturating_sub(o.0))
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

impl MetaBlock {
    /// dm-thin's fixed metadata block size.
    pub const SIZE: u64 = 4096;

    /// The bytes this many metadata blocks take.
    pub fn bytes(self) -> Bytes {
        Bytes::new(self.0 * Self::SIZE)
    }

    /// Whole metadata blocks in `b` (rounded down).
    pub fn in_bytes(b: Bytes) -> MetaBlock {
        MetaBlock(b.div_floor(Bytes::new(Self::SIZE)))
    }
}

/// Largest thin id the kernel's message interface accepts.
pub const MAX_THIN_ID: u64 = (1 << 24) - 1;

pub use units::{chain, human_size, parse_size, Bytes, SizeError};
