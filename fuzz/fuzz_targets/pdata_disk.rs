//! dm-thin metadata decoders (thinpool::pdata::disk): the fuzz bytes fill a 4 KiB block that
//! is then sealed with a valid checksum for the kind the first byte picks, so the decoders see
//! past the checksum. A superblock that decodes must re-encode to one that decodes equal; a
//! node that passes its header check must answer every accessor without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use thinpool::pdata::disk::*;
use thinpool::units::MetaBlock;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let mut b = zeroed();
    let n = rest.len().min(BLOCK_SIZE);
    b[..n].copy_from_slice(&rest[..n]);
    let kind = [BlockKind::Superblock, BlockKind::Node, BlockKind::Bitmap, BlockKind::Index]
        [usize::from(pick % 4)];
    if pick & 0x80 == 0 {
        seal(&mut b, kind);
    }
    let loc = MetaBlock(get_u64(&b[..], 8));
    let _ = identify(&b);
    let _ = verify(&b, kind, loc);
    if let Ok(sb) = Superblock::decode(&b, loc) {
        let again = Superblock::decode(&sb.encode(), loc).expect("own superblock decodes");
        assert_eq!(sb, again, "superblock round trip");
    }
    if let Ok(node) = Node::new(&b) {
        let count = node.nr_entries();
        let _ = node.is_leaf();
        let _ = node.blocknr();
        for i in 0..count {
            let k = node.key(i);
            assert_eq!(node.value(i).len(), node.value_size());
            if node.value_size() == 8 {
                let _ = node.value_u64(i);
            }
            let _ = node.lower_bound(k);
        }
        let _ = node.keys().count();
        let _ = node.lower_bound(u64::MAX);
        let _ = node.lower_bound(0);
    }
    let _ = index_block_decode(&b, loc, usize::from(pick));
    for j in [0u64, 1, 1000, ENTRIES_PER_BITMAP - 1] {
        let _ = bitmap_get(&b, j);
    }
    if rest.len() >= 24 {
        let _ = DeviceDetails::decode(&rest[..24]);
        let v = get_u64(rest, 0);
        let bt = BlockTime::unpack(v);
        assert_eq!(BlockTime::unpack(bt.pack()), bt, "block-time round trip");
    }
});
