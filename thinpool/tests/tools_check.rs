//! The checker against images made by Debian's thin_restore: clean ones check clean (and
//! thin_check agrees), and each deliberate corruption is reported with its kind and place.

mod support;

use std::sync::OnceLock;

use proptest::prelude::*;
use support::thin_check_ok;
use support::tools::*;
use thinpool::check::{check, DamageKind, Report, Tree};
use thinpool::io::{BlockDevice, MemDevice};
use thinpool::pdata::disk::{self, BlockKind};
use thinpool::units::{MetaBlock, ThinId};

fn run(xs: impl IntoIterator<Item = (u64, u64, u32)>) -> Vec<(u64, u64, u32)> {
    xs.into_iter().collect()
}

/// Two devices of 300 mappings each over the same data blocks (unshared trees, data counts 2);
/// each bottom tree is an internal root over two leaves.
fn two_devices_xml() -> String {
    let a = run((0..300).map(|i| (i, i, 0)));
    let b = run((0..300).map(|i| (i, i, 1)).chain([(5000, 400, 1)]));
    pool_xml(1, 100_000, &[(1, a), (2, b)])
}

fn image(name: &str, xml: &str) -> (tempfile::TempDir, MemDevice, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let meta = thin_restore(dir.path(), name, xml);
    let dev = mem_copy(&meta);
    (dir, dev, meta)
}

fn describe(r: &Report) -> String {
    r.damages.iter().map(|d| format!("{:?} {d}\n", d.kind)).collect()
}

/// Clean but for the space-map hints thin_restore 0.9.0 itself leaves off by one (it counts a
/// node it wrote and dropped in `nr_allocated` and `none_free_before`).
fn assert_restore_clean(r: &Report, name: &str) {
    assert!(r.is_consistent(), "{name}: damage in a clean image:\n{}", describe(r));
    for d in &r.damages {
        let quirk = (d.kind == DamageKind::NrAllocated && d.message.starts_with("metadata"))
            || (d.kind == DamageKind::IndexHint && d.message.contains("none free before"));
        assert!(quirk, "{name}: unexpected hint {d}");
    }
}

fn assert_damage(r: &Report, kind: DamageKind, block: Option<u64>) {
    let hit = r.of_kind(kind).any(|d| block.is_none_or(|b| d.place.block == Some(MetaBlock(b))));
    assert!(hit, "expected {kind:?} at {block:?}; got:\n{}", describe(r));
}

#[test]
fn thin_restore_images_check_clean() {
    let overflow: Vec<_> = (1..=3).map(|id| (id, run((0..50).map(|i| (i, i, 0))))).collect();
    let many: Vec<_> = (0..200).map(|id| (id * 3, run([(id, id, 0)]))).collect();
    let mut rng = 12345u64;
    let mut big = Vec::new();
    let mut v = 0;
    for i in 0..40_000u64 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        v += 1 + (rng >> 60) % 3;
        big.push((v, i * 2 % 99_000, ((rng >> 40) % 2) as u32));
    }
    let cases = [
        ("empty", pool_xml(0, 0, &[])),
        ("two", two_devices_xml()),
        ("overflow", pool_xml(0, 1000, &overflow)),
        ("many", pool_xml(0, 1000, &many)),
        ("big", pool_xml(1, 100_000, &[(7, big)])),
    ];
    for (name, xml) in cases {
        let (_dir, dev, meta) = image(name, &xml);
        assert!(thin_check_ok(&meta), "{name}: thin_check rejects the restored image");
        let r = check(&dev);
        assert_restore_clean(&r, name);
        assert!(r.stats.metadata_blocks_used > 0);
    }
}

#[test]
fn stats_describe_the_pool() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let r = check(&dev);
    assert_restore_clean(&r, "two");
    assert_eq!(r.stats.devices, 2);
    assert_eq!(r.stats.mappings, 601);
    assert_eq!(r.stats.data_blocks, 100_000);
    assert_eq!(r.stats.data_blocks_used, 301);
    assert_eq!(r.stats.transaction_id, 3);
}

#[test]
fn flipped_byte_in_a_leaf_is_a_checksum_damage_at_that_block() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let leaf = children(&dev, device_root(&dev, 1))[1].1;
    let mut blk = read_block(&dev, leaf);
    blk[100] ^= 0x10;
    dev.write_at(&blk[..], leaf * 4096).unwrap();
    let r = check(&dev);
    let d = r.of_kind(DamageKind::Checksum).next().unwrap_or_else(|| panic!("{}", describe(&r)));
    assert_eq!(d.place.block, Some(MetaBlock(leaf)));
    assert_eq!(d.place.tree, Some(Tree::Device(ThinId(1))));
    assert_eq!(d.place.path.first(), Some(&MetaBlock(device_root(&dev, 1))));
}

#[test]
fn wrong_metadata_and_data_counts_are_reported_with_the_block() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let root = device_root(&dev, 1);
    set_metadata_count(&dev, root, 2);
    let bm = data_bitmap_block(&dev, 5);
    patch(&dev, bm, BlockKind::Bitmap, |b| disk::bitmap_set(b, 5, 1));
    let r = check(&dev);
    assert!(
        r.of_kind(DamageKind::MetadataRefCount).any(|d| d.place.key == Some(root)),
        "{}",
        describe(&r)
    );
    assert!(
        r.of_kind(DamageKind::DataRefCount).any(|d| d.place.key == Some(5)),
        "{}",
        describe(&r)
    );
    assert!(r.has(DamageKind::NrAllocated) || r.of_kind(DamageKind::DataRefCount).count() == 1);
}

#[test]
fn wrong_mapped_blocks_is_reported_for_the_device() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let details = sb_u64(&dev, DETAILS_ROOT);
    patch(&dev, details, BlockKind::Node, |b| {
        let off = 32 + 8 * disk::max_entries(24) + 24; // second entry: device 2
        disk::put_u64(&mut b[..], off, 300);
    });
    let r = check(&dev);
    let d: Vec<_> = r.of_kind(DamageKind::MappedBlocks).collect();
    assert_eq!(d.len(), 1, "{}", describe(&r));
    assert_eq!(d[0].place.tree, Some(Tree::Device(ThinId(2))));
    assert!(d[0].message.contains("300") && d[0].message.contains("301"), "{}", d[0].message);
    assert_eq!(r.fatal().count(), 1, "{}", describe(&r));
}

#[test]
fn separator_above_the_childs_first_key_is_a_key_range_damage() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let root = device_root(&dev, 1);
    let kids = children(&dev, root);
    patch(&dev, root, BlockKind::Node, |b| disk::put_u64(&mut b[..], 32 + 8, kids[1].0 + 1));
    let r = check(&dev);
    assert_damage(&r, DamageKind::KeyRange, Some(kids[1].1));
    let d = r.of_kind(DamageKind::KeyRange).next().unwrap();
    assert_eq!(d.place.keys, Some((Some(kids[1].0 + 1), None)));
}

#[test]
fn under_full_bottom_leaf_is_reported() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let leaf = children(&dev, device_root(&dev, 2))[0].1;
    patch(&dev, leaf, BlockKind::Node, |b| disk::put_u32(&mut b[..], 16, 83));
    let r = check(&dev);
    assert_damage(&r, DamageKind::Underfull, Some(leaf));
    assert_damage(&r, DamageKind::MappedBlocks, None);
}

#[test]
fn cycle_is_reported_not_followed() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let root = device_root(&dev, 1);
    patch(&dev, root, BlockKind::Node, |b| {
        disk::put_u64(&mut b[..], 32 + 8 * 252 + 8, root);
    });
    let r = check(&dev);
    assert_damage(&r, DamageKind::Revisit, Some(root));
    let err = thinpool::xml::dump(&dev).unwrap_err().to_string();
    assert!(err.contains("twice"), "{err}");
}

#[test]
fn space_map_header_damage_is_reported() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    patch(&dev, 0, BlockKind::Superblock, |b| {
        let n = disk::get_u64(&b[..], META_SM_ROOT + 8);
        disk::put_u64(&mut b[..], META_SM_ROOT + 8, n + 1);
    });
    let index = sb_u64(&dev, META_SM_ROOT + 16);
    patch(&dev, index, BlockKind::Index, |b| disk::put_u32(&mut b[..], 16 + 12, 2000));
    let r = check(&dev);
    assert_damage(&r, DamageKind::NrAllocated, None);
    assert_damage(&r, DamageKind::IndexHint, None);
}

#[test]
fn mapping_beyond_the_data_device_is_reported() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    patch(&dev, 0, BlockKind::Superblock, |b| disk::put_u64(&mut b[..], DATA_SM_ROOT, 300));
    let r = check(&dev);
    let d =
        r.of_kind(DamageKind::DataBlockRange).next().unwrap_or_else(|| panic!("{}", describe(&r)));
    assert_eq!(d.place.key, Some(5000));
    assert_damage(&r, DamageKind::BitmapTail, None);
}

#[test]
fn overflow_tree_must_match_the_bitmap() {
    let overflow: Vec<_> = (1..=3).map(|id| (id, run((0..50).map(|i| (i, i, 0))))).collect();
    let (_dir, dev, _) = image("overflow", &pool_xml(0, 1000, &overflow));
    let bm = data_bitmap_block(&dev, 7);
    patch(&dev, bm, BlockKind::Bitmap, |b| disk::bitmap_set(b, 7, 2));
    let r = check(&dev);
    assert!(r.of_kind(DamageKind::Overflow).any(|d| d.place.key == Some(7)), "{}", describe(&r));
    assert!(
        r.of_kind(DamageKind::DataRefCount).any(|d| d.place.key == Some(7)),
        "{}",
        describe(&r)
    );
}

#[test]
fn superblock_damage() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    patch(&dev, 0, BlockKind::Superblock, |b| disk::put_u64(&mut b[..], 32, 1234));
    let r = check(&dev);
    assert_damage(&r, DamageKind::Superblock, Some(0));
    let mut blk = read_block(&dev, 0);
    blk[50] ^= 1;
    dev.write_at(&blk[..], 0).unwrap();
    let r = check(&dev);
    assert_damage(&r, DamageKind::Checksum, Some(0));
    assert_eq!(r.damages.len(), 1, "{}", describe(&r));
    assert!(!r.is_consistent());
}

/// The clean two-device image and the blocks in use, made once for all proptest cases.
fn pristine() -> &'static (Vec<u8>, Vec<u64>) {
    static IMG: OnceLock<(Vec<u8>, Vec<u64>)> = OnceLock::new();
    IMG.get_or_init(|| {
        let (_dir, dev, meta) = image("two", &two_devices_xml());
        (std::fs::read(meta).unwrap(), used_metadata_blocks(&dev))
    })
}

fn mem(bytes: &[u8]) -> MemDevice {
    let dev = MemDevice::new(bytes.len() as u64, "flipped");
    dev.write_at(bytes, 0).unwrap();
    dev
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Any change inside a block in use breaks its checksum, so damage must be reported.
    #[test]
    fn flips_in_used_blocks_are_always_found(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), 0usize..4096, 1u8..=255), 1..4)
    ) {
        let (bytes, used) = pristine();
        let mut img = bytes.clone();
        for (i, off, x) in &flips {
            let b = used[i.index(used.len())] as usize;
            img[b * 4096 + off] ^= x;
        }
        let r = check(&mem(&img));
        prop_assert!(!r.is_consistent(), "flips {:?} went unnoticed", flips);
    }

    /// Flips anywhere never make the checker panic or hang.
    #[test]
    fn flips_anywhere_never_panic(
        flips in proptest::collection::vec((0usize..(16 * 4096), any::<u8>()), 1..16)
    ) {
        let (bytes, _) = pristine();
        let mut img = bytes.clone();
        for (off, x) in &flips {
            img[*off] ^= x;
        }
        let dev = mem(&img);
        let _ = check(&dev);
        let _ = thinpool::xml::dump(&dev);
    }

    /// Blocks overwritten with resealed garbage nodes must not panic the walk either.
    #[test]
    fn resealed_garbage_nodes_never_panic(
        block in 0u64..16, words in proptest::collection::vec((0usize..512, any::<u64>()), 1..40)
    ) {
        let (bytes, _) = pristine();
        let dev = mem(bytes);
        patch(&dev, block, BlockKind::Node, |b| {
            disk::put_u32(&mut b[..], 4, 1 + (words[0].1 % 2) as u32);
            for (w, v) in &words {
                if *w >= 1 { disk::put_u64(&mut b[..], w * 8, *v % 64); }
            }
            disk::put_u64(&mut b[..], 8, block);
        });
        let _ = check(&dev);
        let _ = thinpool::xml::dump(&dev);
    }
}

/// Adds a held metadata snapshot by hand, the way the kernel's reserve_metadata_snap leaves
/// it: a superblock copy at a free block with zeroed space-map roots, +1 on both tree roots.
fn add_held_root(dev: &dyn BlockDevice) -> u64 {
    let used = used_metadata_blocks(dev);
    let h = used.iter().max().unwrap() + 5;
    let mut copy = read_block(dev, 0);
    disk::put_u64(&mut copy[..], 8, h);
    copy[64..320].fill(0);
    disk::seal(&mut copy, BlockKind::Superblock);
    dev.write_at(&copy[..], h * 4096).unwrap();
    patch(dev, 0, BlockKind::Superblock, |b| {
        disk::put_u64(&mut b[..], 56, h);
        let n = disk::get_u64(&b[..], META_SM_ROOT + 8);
        disk::put_u64(&mut b[..], META_SM_ROOT + 8, n + 1);
    });
    set_metadata_count(dev, h, 1);
    set_metadata_count(dev, sb_u64(dev, MAPPING_ROOT), 2);
    set_metadata_count(dev, sb_u64(dev, DETAILS_ROOT), 2);
    let index = sb_u64(dev, META_SM_ROOT + 16);
    patch(dev, index, BlockKind::Index, |b| {
        let free = disk::get_u32(&b[..], 16 + 8);
        disk::put_u32(&mut b[..], 16 + 8, free - 1);
    });
    h
}

#[test]
fn held_metadata_snapshot_is_walked_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let meta = thin_restore(dir.path(), "held", &two_devices_xml());
    let dev = open(&meta);
    let h = add_held_root(&dev);
    assert!(thin_check_ok(&meta), "thin_check rejects the hand-made metadata snapshot");
    let r = check(&dev);
    assert_restore_clean(&r, "held");
    assert_eq!(r.stats.held_root, Some(MetaBlock(h)));

    // Forgetting the snapshot's reference on the mapping root is caught.
    set_metadata_count(&dev, sb_u64(&dev, MAPPING_ROOT), 1);
    let r = check(&dev);
    let root = sb_u64(&dev, MAPPING_ROOT);
    assert!(
        r.of_kind(DamageKind::MetadataRefCount).any(|d| d.place.key == Some(root)),
        "{}",
        describe(&r)
    );
    assert!(!thin_check_ok(&meta), "thin_check should agree the count is wrong");
}

#[test]
fn a_bitmap_named_twice_is_a_conflict_and_scanned_once() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let index_root = sb_u64(&dev, DATA_SM_ROOT + 16);
    let vals = 32 + 8 * disk::max_entries(16);
    patch(&dev, index_root, BlockKind::Node, |b| {
        let first = disk::get_u64(&b[..], vals);
        disk::put_u64(&mut b[..], vals + 16, first);
    });
    let r = check(&dev);
    let first = disk::get_u64(&read_block(&dev, index_root)[..], vals);
    assert_damage(&r, DamageKind::Conflict, Some(first));
    assert_eq!(r.stats.data_blocks, 100_000);
}

#[test]
fn a_root_reused_as_an_under_full_child_is_reported() {
    // Device 0: a five-entry root leaf; device 1: an internal root over two full leaves.
    let small = run((126..131).map(|i| (i, 1000 + i, 0)));
    let big = run((0..300).map(|i| (i, i, 0)));
    let (_dir, dev, _) = image("reuse", &pool_xml(0, 10_000, &[(0, small), (1, big)]));
    let small_root = device_root(&dev, 0);
    let big_root = device_root(&dev, 1);
    patch(&dev, big_root, BlockKind::Node, |b| {
        disk::put_u64(&mut b[..], 32 + 8, 126);
        disk::put_u64(&mut b[..], 32 + 8 * 252 + 8, small_root);
    });
    let r = check(&dev);
    let d = r
        .of_kind(DamageKind::Underfull)
        .find(|d| d.place.block == Some(MetaBlock(small_root)))
        .unwrap_or_else(|| panic!("{}", describe(&r)));
    assert_eq!(d.place.tree, Some(Tree::Device(ThinId(1))));
}

#[test]
fn damaged_details_tree_does_not_hide_mapping_tree_damage() {
    let (_dir, dev, _) = image("two", &two_devices_xml());
    let details = sb_u64(&dev, DETAILS_ROOT);
    let mut blk = read_block(&dev, details);
    blk[64] ^= 0x80;
    dev.write_at(&blk[..], details * 4096).unwrap();
    let root = device_root(&dev, 2);
    let kids = children(&dev, root);
    patch(&dev, root, BlockKind::Node, |b| disk::put_u64(&mut b[..], 32 + 8, kids[1].0 + 1));
    let r = check(&dev);
    assert_damage(&r, DamageKind::Checksum, Some(details));
    assert_damage(&r, DamageKind::KeyRange, Some(kids[1].1));
    assert!(!r.has(DamageKind::DeviceSets), "{}", describe(&r));
}
