use super::*;
use crate::io::{BlockDevice, MemDevice};
use crate::pdata::disk::tests::{fresh_superblock, sm};

#[test]
fn empty_device_is_an_io_damage() {
    let r = check(&MemDevice::new(100, "tiny"));
    assert!(r.has(DamageKind::Io));
    assert!(!r.is_consistent());
}

#[test]
fn zeroed_device_has_a_bad_superblock_checksum() {
    let r = check(&MemDevice::new(1 << 20, "zeros"));
    assert_eq!(r.damages.len(), 1);
    assert_eq!(r.damages[0].kind, DamageKind::Checksum);
    assert_eq!(r.damages[0].place.block, Some(MetaBlock(0)));
}

#[test]
fn superblock_pointing_everywhere_beyond_the_device_is_reported_not_followed() {
    let dev = MemDevice::new(64 * 4096, "sb");
    let sb = Superblock {
        held_root: MetaBlock(u64::MAX),
        data_sm_root: sm(u64::MAX, 0, 1 << 40, 7),
        metadata_sm_root: sm(64, 1, 99, 0),
        data_mapping_root: MetaBlock(0),
        device_details_root: MetaBlock(63),
        data_block_size: 100,
        metadata_nr_blocks: 64,
        incompat_flags: 1,
        ..fresh_superblock()
    };
    dev.write_at(&sb.encode()[..], 0).unwrap();
    let r = check(&dev);
    for kind in
        [DamageKind::Superblock, DamageKind::OutOfRange, DamageKind::Conflict, DamageKind::Checksum]
    {
        assert!(r.has(kind), "{kind:?} missing: {:#?}", r.damages);
    }
    for d in &r.damages {
        assert!(!d.to_string().is_empty());
    }
}

#[test]
fn place_prints_every_part() {
    let p = Place {
        block: Some(MetaBlock(17)),
        tree: Some(Tree::Device(ThinId(3))),
        snapshot: true,
        keys: Some((Some(100), None)),
        key: Some(150),
        path: vec![MetaBlock(6), MetaBlock(17)],
    };
    assert_eq!(
        p.to_string(),
        "block 17, mapping tree of device 3 (metadata snapshot), keys [100, +inf), key 150, path 6/17"
    );
}

#[test]
fn data_space_map_of_nearly_two_to_the_64_blocks_does_not_overflow() {
    // A valid-looking pool whose data sm claims u64::MAX blocks and whose index tree names
    // the last possible bitmap.
    let dev = MemDevice::new(64 * 4096, "huge");
    let nb = u64::MAX.div_ceil(disk::ENTRIES_PER_BITMAP);
    let mut leaf = disk::zeroed();
    {
        let mut n = disk::NodeMut::init(&mut leaf, MetaBlock(2), true, 16);
        let e = disk::IndexEntry { blocknr: MetaBlock(3), nr_free: 1, none_free_before: 0 };
        n.insert_at(0, nb - 1, &e.to_bytes());
    }
    disk::seal(&mut leaf, BlockKind::Node);
    dev.write_at(&leaf[..], 2 * 4096).unwrap();
    let mut bm = disk::zeroed();
    disk::bitmap_init(&mut bm, MetaBlock(3));
    disk::seal(&mut bm, BlockKind::Bitmap);
    dev.write_at(&bm[..], 3 * 4096).unwrap();
    let sb = Superblock {
        data_sm_root: sm(u64::MAX, 0, 2, 9),
        metadata_sm_root: sm(64, 1, 1, 8),
        data_mapping_root: MetaBlock(5),
        device_details_root: MetaBlock(6),
        metadata_nr_blocks: 64,
        ..fresh_superblock()
    };
    dev.write_at(&sb.encode()[..], 0).unwrap();
    let r = check(&dev);
    assert!(r.has(DamageKind::IndexTree), "{:#?}", r.damages);
}

#[test]
fn counts_are_dense_for_sane_sizes_and_sparse_for_huge_ones() {
    for n in [10, 1 << 40] {
        let mut c = Counts::for_blocks(n);
        assert_eq!(matches!(c, Counts::Dense(_)), n == 10);
        c.inc(3);
        c.inc(3);
        c.inc(9);
        assert_eq!((c.get(3), c.get(9), c.get(4), c.nonzero()), (2, 1, 0, 2));
    }
}
