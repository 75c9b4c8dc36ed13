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

/// Docker's `units.HumanSize`: decimal units, four significant digits (`65.54kB`, `10.74GB`),
/// as `docker info` prints sizes.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 9] = ["B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", g4(v), UNITS[i])
}

/// C's `%.4g` for 0 <= v < 10000: four significant digits, trailing zeros dropped.
fn g4(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let digits = v.abs().log10().floor() as i32 + 1;
    let decimals = (4 - digits).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}
