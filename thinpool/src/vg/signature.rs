//! Recognises what a device already holds, so a group is never laid over a filesystem or a
//! partition table by accident (Docker runs `blkid`/`pvdisplay` for `dm.directlvm_device`).
//! Pure: looks at the first [`PROBE_BYTES`] of the device.

use super::format::Label;
use std::fmt;

/// How much of the device start the probe reads (covers btrfs at 64 KiB and 64 KiB swap pages).
pub const PROBE_BYTES: usize = 128 << 10;

/// A recognised signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signature {
    /// A lamina volume-group label: the device already belongs to a group.
    Lamina,
    Xfs,
    /// ext2, ext3 or ext4.
    Ext,
    Btrfs,
    Lvm2Pv,
    Swap,
    Gpt,
    Mbr,
    Squashfs,
    Iso9660,
    /// A dm-thin metadata superblock (a pool's metadata device).
    DmThinMetadata,
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signature::Lamina => "lamina volume group",
            Signature::Xfs => "xfs",
            Signature::Ext => "ext2/3/4",
            Signature::Btrfs => "btrfs",
            Signature::Lvm2Pv => "LVM2 physical volume",
            Signature::Swap => "swap",
            Signature::Gpt => "GPT partition table",
            Signature::Mbr => "MBR partition table",
            Signature::Squashfs => "squashfs",
            Signature::Iso9660 => "iso9660",
            Signature::DmThinMetadata => "dm-thin pool metadata",
        })
    }
}

fn at(b: &[u8], off: usize, magic: &[u8]) -> bool {
    b.get(off..off + magic.len()) == Some(magic)
}

/// The first signature found in `head` (the device's first bytes), most specific first.
pub fn detect(head: &[u8]) -> Option<Signature> {
    if Label::has_magic(head) && Label::decode(head).is_ok() {
        return Some(Signature::Lamina);
    }
    if at(head, 0, b"XFSB") {
        return Some(Signature::Xfs);
    }
    if at(head, 1080, &0xEF53u16.to_le_bytes()) {
        return Some(Signature::Ext);
    }
    if at(head, 65600, b"_BHRfS_M") {
        return Some(Signature::Btrfs);
    }
    // LVM2 looks for its label in any of the first four sectors.
    for sector in 0..4 {
        let o = sector * 512;
        if at(head, o, b"LABELONE") && at(head, o + 24, b"LVM2 001") {
            return Some(Signature::Lvm2Pv);
        }
    }
    // Swap puts its magic in the last 10 bytes of the first page, whatever the page size.
    for page in [4096usize, 8192, 16384, 65536] {
        if at(head, page - 10, b"SWAPSPACE2") || at(head, page - 10, b"SWAP-SPACE") {
            return Some(Signature::Swap);
        }
    }
    if at(head, 0, b"hsqs") {
        return Some(Signature::Squashfs);
    }
    if at(head, 32769, b"CD001") {
        return Some(Signature::Iso9660);
    }
    // dm-thin superblock: block number 0 at offset 8, magic 27022010 at offset 32.
    if at(head, 32, &27_022_010u64.to_le_bytes()) && at(head, 8, &[0u8; 8]) {
        return Some(Signature::DmThinMetadata);
    }
    if at(head, 512, b"EFI PART") {
        return Some(Signature::Gpt);
    }
    if at(head, 510, &[0x55, 0xAA]) {
        // A boot sector without partitions (plain FAT, a blank MBR) is not a partition table.
        let used = (0..4).any(|i| head.get(446 + 16 * i + 4).is_some_and(|&t| t != 0));
        if used {
            return Some(Signature::Mbr);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vg::format::{Uuid, DEFAULT_EXTENT_SIZE};

    fn with(parts: &[(usize, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; PROBE_BYTES];
        for (off, bytes) in parts {
            b[*off..*off + bytes.len()].copy_from_slice(bytes);
        }
        b
    }

    #[test]
    fn table_of_signatures() {
        let label =
            Label::new(Uuid([1; 16]), Uuid([2; 16]), 0, 1 << 30, DEFAULT_EXTENT_SIZE).encode();
        let thin = 27_022_010u64.to_le_bytes();
        let cases: Vec<(Vec<u8>, Option<Signature>)> = vec![
            (with(&[]), None),
            (with(&[(0, &label)]), Some(Signature::Lamina)),
            (with(&[(0, b"XFSB")]), Some(Signature::Xfs)),
            (with(&[(1080, &[0x53, 0xEF])]), Some(Signature::Ext)),
            (with(&[(65600, b"_BHRfS_M")]), Some(Signature::Btrfs)),
            (with(&[(512, b"LABELONE"), (536, b"LVM2 001")]), Some(Signature::Lvm2Pv)),
            (with(&[(1536, b"LABELONE"), (1560, b"LVM2 001")]), Some(Signature::Lvm2Pv)),
            // LABELONE alone (another label type) is not an LVM2 PV.
            (with(&[(512, b"LABELONE")]), None),
            (with(&[(4086, b"SWAPSPACE2")]), Some(Signature::Swap)),
            (with(&[(65526, b"SWAPSPACE2")]), Some(Signature::Swap)),
            (with(&[(0, b"hsqs")]), Some(Signature::Squashfs)),
            (with(&[(32769, b"CD001")]), Some(Signature::Iso9660)),
            (with(&[(32, &thin)]), Some(Signature::DmThinMetadata)),
            (
                with(&[(510, &[0x55, 0xAA]), (512, b"EFI PART"), (450, &[0xEE])]),
                Some(Signature::Gpt),
            ),
            (with(&[(510, &[0x55, 0xAA]), (446 + 16 + 4, &[0x83])]), Some(Signature::Mbr)),
            // Boot signature with an empty partition table: nothing to protect.
            (with(&[(510, &[0x55, 0xAA])]), None),
            // A label whose checksum is broken is not ours.
            (with(&[(0, b"LAMINAVG")]), None),
        ];
        for (i, (head, want)) in cases.iter().enumerate() {
            assert_eq!(detect(head), *want, "case {i}");
        }
    }

    #[test]
    fn short_heads_do_not_panic() {
        for n in [0, 1, 511, 512, 1081, 4096, 65601] {
            assert_eq!(detect(&vec![0u8; n]), None);
        }
        assert_eq!(detect(b"XFSB"), Some(Signature::Xfs));
    }
}
