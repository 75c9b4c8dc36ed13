//! Superblock flags changed outside a transaction: `needs_check`, which dm-thin sets when the
//! metadata failed (the pool goes read-only) and `thin_check --clear-needs-check-flag` clears
//! once the metadata is clean. Everything else in the superblock only changes at a commit.

use super::disk::{self, Superblock};
use super::{Error, Result};
use crate::io::BlockDevice;
use crate::units::MetaBlock;

const SB: MetaBlock = MetaBlock(0);

fn read(dev: &dyn BlockDevice) -> Result<Superblock> {
    let mut raw = disk::zeroed();
    dev.read_at(&mut raw[..], 0).map_err(|source| Error::Io { block: SB, op: "read", source })?;
    Superblock::decode(&raw, SB).map_err(|e| Error::corrupt(SB, e.to_string()))
}

/// Sets or clears needs_check in the superblock of `dev`, re-sealing its checksum, and
/// flushes.
pub fn set_needs_check(dev: &dyn BlockDevice, on: bool) -> Result<()> {
    let mut sb = read(dev)?;
    if on {
        sb.flags |= disk::NEEDS_CHECK;
    } else {
        sb.flags &= !disk::NEEDS_CHECK;
    }
    let out = sb.encode();
    dev.write_at(&out[..], 0).map_err(|source| Error::Io { block: SB, op: "write", source })?;
    dev.flush().map_err(|source| Error::Io { block: SB, op: "flush", source })
}

/// Whether the superblock of `dev` has needs_check set.
pub fn needs_check(dev: &dyn BlockDevice) -> Result<bool> {
    Ok(read(dev)?.needs_check())
}
