//! Golden vectors (superblock, node and bitmap bytes as Debian's thin_restore writes them), plus
//! round trips.

use super::*;
use proptest::prelude::*;

pub(crate) fn sm(
    nr_blocks: u64,
    nr_allocated: u64,
    bitmap_root: u64,
    ref_count_root: u64,
) -> SmRoot {
    SmRoot {
        nr_blocks,
        nr_allocated,
        bitmap_root: MetaBlock(bitmap_root),
        ref_count_root: MetaBlock(ref_count_root),
    }
}

/// The superblock of the §16.1 fresh pool image (other tests change the fields they are
/// about).
pub(crate) fn fresh_superblock() -> Superblock {
    Superblock {
        flags: 0,
        blocknr: MetaBlock(0),
        uuid: [0; 16],
        version: 2,
        time: 0,
        trans_id: 0,
        held_root: MetaBlock(0),
        data_sm_root: sm(0, 0, 4, 5),
        metadata_sm_root: sm(1024, 8, 1, 2),
        data_mapping_root: MetaBlock(6),
        device_details_root: MetaBlock(7),
        data_block_size: 128,
        metadata_nr_blocks: 1024,
        compat_flags: 0,
        compat_ro_flags: 0,
        incompat_flags: 0,
    }
}

#[test]
fn crc_of_zero_block_matches_the_spec() {
    let b = zeroed();
    assert_eq!(checksum(&b, 0), 0x58CD_A791);
    assert_eq!(checksum(&b, SALT_SUPERBLOCK), 0x58CF_D397);
    assert_eq!(checksum(&b, SALT_NODE), 0x58CC_7E82);
    assert_eq!(checksum(&b, SALT_BITMAP), 0x58CE_0B1A);
    assert_eq!(checksum(&b, SALT_INDEX), 0x58CF_D54F);
    assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
}

#[test]
fn fresh_superblock_is_byte_exact() {
    let b = fresh_superblock().encode();
    assert_eq!(get_u32(&b[..], 0), 0xCAFF_9186);
    let expect_0x140 = [
        0x06, 0, 0, 0, 0, 0, 0, 0, 0x07, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0, 0x08, 0, 0, 0, 0,
        0x04, 0, 0, 0, 0, 0, 0,
    ];
    assert_eq!(&b[0x140..0x160], &expect_0x140);
    assert_eq!(&b[0x20..0x28], &[0xba, 0x52, 0x9c, 0x01, 0, 0, 0, 0]);
    assert!(b[364..].iter().all(|&x| x == 0));
    assert_eq!(Superblock::decode(&b, MetaBlock(0)).unwrap(), fresh_superblock());
}

#[test]
fn fresh_pool_blocks_have_the_spec_checksums() {
    let mut index = vec![IndexEntry::default(); 1];
    index[0] = IndexEntry { blocknr: MetaBlock(3), nr_free: 16312, none_free_before: 8 };
    let b = index_block_encode(MetaBlock(1), &index);
    assert_eq!(get_u32(&b[..], 0), 0x18E0_660A);
    assert_eq!(index_block_decode(&b, MetaBlock(1), 1).unwrap(), index);

    let mut bm = zeroed();
    bitmap_init(&mut bm, MetaBlock(3));
    for j in 0..8 {
        bitmap_set(&mut bm, j, 1);
    }
    assert_eq!(get_u64(&bm[..], 16), 0xAAAA);
    seal(&mut bm, BlockKind::Bitmap);
    assert_eq!(get_u32(&bm[..], 0), 0xA19F_6375);

    let leaves = [(2, 4, 0xC360_E452), (4, 16, 0x787F_52C8), (5, 4, 0x41BF_AA04)];
    let more = [(6, 8, 0xCB3D_DA35u32), (7, 24, 0xB1C8_1346)];
    for (loc, vs, csum) in leaves.into_iter().chain(more) {
        let mut b = zeroed();
        NodeMut::init(&mut b, MetaBlock(loc), true, vs);
        seal(&mut b, BlockKind::Node);
        assert_eq!(get_u32(&b[..], 0), csum, "empty leaf at {loc} with value size {vs}");
        verify(&b, BlockKind::Node, MetaBlock(loc)).unwrap();
        assert_eq!(identify(&b), Some(BlockKind::Node));
    }
}

#[test]
fn max_entries_match_the_kernel() {
    assert_eq!(max_entries(8), 252);
    assert_eq!(max_entries(24), 126);
    assert_eq!(max_entries(16), 168);
    assert_eq!(max_entries(4), 336);
}

#[test]
fn bitmap_bit_order_is_high_bit_first() {
    let mut b = zeroed();
    bitmap_set(&mut b, 0, 1);
    assert_eq!(b[16], 0x02);
    bitmap_set(&mut b, 0, 2);
    assert_eq!(b[16], 0x01);
    bitmap_set(&mut b, 0, 3);
    assert_eq!(b[16], 0x03);
    bitmap_set(&mut b, 16319, 2);
    assert_eq!(bitmap_get(&b, 16319), 2);
}

#[test]
fn mapping_value_packing() {
    let v = BlockTime { block: DataBlock(400), time: 1 };
    assert_eq!(v.pack(), 0x0000_0001_9000_0001);
    assert_eq!(BlockTime::unpack(v.pack()), v);
}

#[test]
fn corrupt_blocks_are_refused() {
    let mut b = fresh_superblock().encode();
    b[100] ^= 1;
    assert!(matches!(
        Superblock::decode(&b, MetaBlock(0)),
        Err(DecodeError::Checksum { kind: BlockKind::Superblock, .. })
    ));
    let b = fresh_superblock().encode();
    assert!(matches!(Superblock::decode(&b, MetaBlock(5)), Err(DecodeError::Location { .. })));

    let mut n = zeroed();
    NodeMut::init(&mut n, MetaBlock(9), true, 8);
    put_u32(&mut n[..], 4, 3);
    let why = |n: &Block| Node::new(n).err();
    let flags = DecodeError::Node("flags are neither internal nor leaf");
    assert_eq!(why(&n), Some(flags), "flags 3 is neither internal nor leaf");
    NodeMut::init(&mut n, MetaBlock(9), true, 8);
    put_u32(&mut n[..], 16, 253);
    let over = DecodeError::Node("nr_entries exceeds max_entries");
    assert_eq!(why(&n), Some(over), "nr_entries above max");
    NodeMut::init(&mut n, MetaBlock(9), true, 8);
    put_u32(&mut n[..], 20, 4000);
    let max = DecodeError::Node("max_entries does not fit the block");
    assert_eq!(why(&n), Some(max), "max_entries beyond the block");
    put_u32(&mut n[..], 20, 0);
    put_u32(&mut n[..], 24, u32::MAX);
    let vs = DecodeError::Node("value size is impossible");
    assert_eq!(why(&n), Some(vs), "value size beyond the block");
}

#[test]
fn node_insert_remove_keep_order_and_zero_slots() {
    let mut b = zeroed();
    let mut n = NodeMut::init(&mut b, MetaBlock(1), true, 8);
    for k in [5u64, 1, 3] {
        let at = n.view().lower_bound(k).map_or(0, |i| i + 1);
        n.insert_at(at, k, &(k * 10).to_le_bytes());
    }
    assert_eq!(n.view().keys().collect::<Vec<_>>(), vec![1, 3, 5]);
    assert_eq!(n.view().value_u64(1), 30);
    n.remove_at(0);
    assert_eq!(n.view().keys().collect::<Vec<_>>(), vec![3, 5]);
    n.truncate(1);
    let mut fresh = zeroed();
    let mut m = NodeMut::init(&mut fresh, MetaBlock(1), true, 8);
    m.insert_at(0, 3, &30u64.to_le_bytes());
    assert_eq!(b[..], fresh[..], "removed slots are zeroed");
}

proptest! {
    #[test]
    fn rt_superblock(time: u32, trans: u64, roots in proptest::array::uniform8(any::<u64>()),
                     flags in 0u32..2, bs in 1u32..=16384) {
        let sb = Superblock {
            flags, time, trans_id: trans,
            data_sm_root: sm(roots[0], roots[1], roots[2], roots[3]),
            metadata_sm_root: sm(roots[4], roots[5], roots[6], roots[7]),
            data_block_size: bs * 128,
            ..fresh_superblock()
        };
        prop_assert_eq!(Superblock::decode(&sb.encode(), MetaBlock(0)).unwrap(), sb);
    }

    #[test]
    fn rt_bitmap_entries(entries in proptest::collection::vec((0u64..ENTRIES_PER_BITMAP, 0u8..4), 1..200)) {
        let mut b = zeroed();
        let mut model = std::collections::BTreeMap::new();
        for (j, v) in entries {
            bitmap_set(&mut b, j, v);
            model.insert(j, v);
        }
        for (j, v) in model {
            prop_assert_eq!(bitmap_get(&b, j), v);
        }
    }

    #[test]
    fn rt_index_entry_details_blocktime(a: u64, b: u32, c: u32, d: u64, blk in 0u64..=MAX_DATA_BLOCK, t in 0u32..=TIME_MASK) {
        let e = IndexEntry { blocknr: MetaBlock(a), nr_free: b, none_free_before: c };
        prop_assert_eq!(IndexEntry::decode(&e.to_bytes()), e);
        let det = DeviceDetails { mapped_blocks: a, transaction_id: d, creation_time: b, snapshotted_time: c };
        prop_assert_eq!(DeviceDetails::decode(&det.to_bytes()), det);
        let bt = BlockTime { block: DataBlock(blk), time: t };
        prop_assert_eq!(BlockTime::unpack(bt.pack()), bt);
    }

    /// Decoding arbitrary bytes never panics.
    #[test]
    fn decoders_survive_garbage(bytes in proptest::collection::vec(any::<u8>(), BLOCK_SIZE)) {
        let b: Block = bytes.try_into().unwrap();
        let _ = Superblock::decode(&b, MetaBlock(0));
        if let Ok(n) = Node::new(&b) {
            for i in 0..n.nr_entries() {
                let _ = (n.key(i), n.value(i));
            }
            let _ = n.lower_bound(42);
        }
        let _ = index_block_decode(&b, MetaBlock(0), 255);
        let _ = identify(&b);
    }
}
