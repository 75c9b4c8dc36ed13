//! A flipped byte in any live metadata block (superblock, index block, bitmaps, a node of
//! every tree) makes open or the first access fail with an error naming that block: no panic,
//! no silent acceptance.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use thinpool::io::{BlockDevice, MemDevice};
use thinpool::pdata::disk::{self, BlockKind, Node};
use thinpool::pool::{ErrorKind, Pool};
use thinpool::units::{MetaBlock, Sectors, ThinId};

const BS: u64 = 65536;

/// A pool with every structure present: multi-level bottom trees, shared roots (metadata
/// overflow), data blocks referenced by three leaves (data overflow).
fn build() -> (Vec<u8>, Arc<MemDevice>, Vec<u64>) {
    let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
    let data = Arc::new(MemDevice::new(2000 * BS, "data"));
    let pool = Pool::format(meta.clone(), data.clone(), Sectors(BS / 512)).unwrap();
    pool.create_thin(ThinId(1)).unwrap();
    for b in 0..400 {
        pool.write(ThinId(1), b * BS, &[b as u8 | 1; 512]).unwrap();
    }
    pool.commit().unwrap();
    pool.create_snap(ThinId(2), ThinId(1)).unwrap();
    pool.write(ThinId(1), 0, &[9; 512]).unwrap(); // copies leaf 0: its data blocks count 2
    pool.create_snap(ThinId(3), ThinId(2)).unwrap();
    pool.write(ThinId(2), BS, &[8; 512]).unwrap(); // copies it again: counts 3 (overflow)
    pool.create_snap(ThinId(4), ThinId(3)).unwrap();
    pool.create_snap(ThinId(5), ThinId(3)).unwrap(); // root of 3 shared thrice: overflow
    pool.commit().unwrap();
    pool.self_check().unwrap();
    let used: Vec<u64> =
        (0..1024u64).filter(|&b| pool.metadata_ref_count(MetaBlock(b)).unwrap() > 0).collect();
    (meta.snapshot(), data, used)
}

/// Opens the damaged image and reads everything; returns the first error.
fn open_and_read_all(img: &[u8], data: Arc<MemDevice>) -> Option<thinpool::pool::Error> {
    let meta = Arc::new(MemDevice::new(img.len() as u64, "damaged"));
    meta.write_at(img, 0).unwrap();
    let pool = match Pool::open(meta, data) {
        Ok(p) => p,
        Err(e) => return Some(e),
    };
    for (id, _) in pool.devices() {
        let mut buf = vec![0u8; 512];
        for b in 0..400 {
            if let Err(e) = pool.read(id, b * BS, &mut buf) {
                return Some(e);
            }
        }
    }
    pool.self_check().err()
}

fn label(block: &[u8; 4096]) -> String {
    match disk::identify(block) {
        Some(BlockKind::Node) => {
            let n = Node::new(block).unwrap();
            format!("{} node vs{}", if n.is_leaf() { "leaf" } else { "internal" }, n.value_size())
        }
        Some(k) => k.name().to_owned(),
        None => "unknown".into(),
    }
}

#[test]
fn every_damaged_block_is_named() {
    let (img, data, used) = build();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for &b in &used {
        let block: &[u8; 4096] =
            img[b as usize * 4096..(b as usize + 1) * 4096].try_into().unwrap();
        *kinds.entry(label(block)).or_default() += 1;
        let mut bad = img.clone();
        bad[b as usize * 4096 + 64] ^= 0x10;
        let e = open_and_read_all(&bad, data.clone())
            .unwrap_or_else(|| panic!("damage in block {b} ({}) went unnoticed", label(block)));
        assert_eq!(
            e.kind(),
            ErrorKind::Corrupt { block: MetaBlock(b) },
            "block {b} ({}): {e}",
            label(block)
        );
        assert!(e.to_string().contains(&format!("block {b}")), "{e}");
    }
    // Every structure was present and damaged once.
    for k in [
        "superblock",
        "metadata space-map index",
        "space-map bitmap",
        "internal node vs8",
        "leaf node vs8",
        "leaf node vs24",
        "leaf node vs16",
        "leaf node vs4",
    ] {
        assert!(kinds.contains_key(k), "no {k} among {kinds:?}");
    }
}

#[test]
fn garbage_pointers_are_refused_not_followed() {
    // A superblock pointing outside the device, re-sealed so only the pointer is wrong.
    let (img, data, _) = build();
    let mut bad = img.clone();
    let mut sb: [u8; 4096] = bad[..4096].try_into().unwrap();
    disk::put_u64(&mut sb, 320, 1 << 40); // data_mapping_root
    disk::seal(&mut sb, BlockKind::Superblock);
    bad[..4096].copy_from_slice(&sb);
    let e = open_and_read_all(&bad, data).unwrap();
    assert!(matches!(e.kind(), ErrorKind::Corrupt { .. }), "{e}");
    let line = thinpool::units::chain(&e);
    assert!(line.contains("beyond the metadata device"), "{line}");
}

#[test]
fn pointer_cycles_are_refused() {
    let (img, data, used) = build();
    let mut done = 0;
    for &b in &used {
        let block: [u8; 4096] = img[b as usize * 4096..(b as usize + 1) * 4096].try_into().unwrap();
        if disk::identify(&block) != Some(BlockKind::Node) || Node::new(&block).unwrap().is_leaf() {
            continue;
        }
        // Every child of this internal node now points back at the node itself.
        let mut bad_block = block;
        let n = Node::new(&block).unwrap().nr_entries();
        for i in 0..n {
            disk::put_u64(&mut bad_block, 32 + 8 * 252 + 8 * i, b);
        }
        disk::seal(&mut bad_block, BlockKind::Node);
        let mut bad = img.clone();
        bad[b as usize * 4096..(b as usize + 1) * 4096].copy_from_slice(&bad_block);
        let e = open_and_read_all(&bad, data.clone()).expect("a cycle went unnoticed");
        assert!(matches!(e.kind(), ErrorKind::Corrupt { .. }), "{e}");
        done += 1;
    }
    assert!(done > 0, "the test pool has internal nodes");
}
