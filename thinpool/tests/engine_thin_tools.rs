//! Debian's thin_check 0.9.0 and thin_dump accept what the engine writes, and see the
//! mappings and times the engine meant.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;

use support::engine::*;
use support::null::NullDevice;
use support::{thin_check, thin_dump};
use thinpool::io::FileDevice;
use thinpool::pool::Pool;
use thinpool::units::{Sectors, ThinId, VirtBlock};

#[test]
fn thin_check_accepts_snapshots_and_dump_shows_times() {
    let dir = tempfile::tempdir().unwrap();
    let meta_path = dir.path().join("metadata");
    let meta = Arc::new(FileDevice::create(&meta_path, 8 << 20).unwrap());
    let data = Arc::new(FileDevice::create(&dir.path().join("data"), 1000 * 65536).unwrap());
    let pool = Pool::format(meta, data, Sectors(128)).unwrap();
    let bs = pool.block_bytes() as usize;
    pool.create_thin(ThinId(1)).unwrap();
    // 600 blocks: enough for a two-level bottom tree.
    for vb in 0..600u64 {
        pool.write(ThinId(1), vb * bs as u64, &vec![vb as u8 | 1; bs]).unwrap();
    }
    pool.commit().unwrap();
    thin_check(&meta_path);
    pool.create_snap(ThinId(2), ThinId(1)).unwrap();
    pool.create_snap(ThinId(3), ThinId(2)).unwrap();
    pool.commit().unwrap();
    thin_check(&meta_path);
    // Origin overwrites block 5 (CoW, time 2); snapshot 2 overwrites block 7 (CoW, time 2).
    pool.write(ThinId(1), 5 * bs as u64, &[9u8; 512]).unwrap();
    pool.write(ThinId(2), 7 * bs as u64 + 100, &[8u8; 100]).unwrap();
    pool.write(ThinId(2), 7 * bs as u64 + 300, &[8u8; 100]).unwrap();
    pool.create_thin(ThinId(4)).unwrap();
    pool.write(ThinId(4), 0, &[1u8; 4096]).unwrap();
    pool.commit().unwrap();
    pool.self_check().unwrap();
    thin_check(&meta_path);

    let xml = thin_dump(&meta_path);
    let maps = dump_mappings(&xml);
    assert_eq!(maps.len(), 4, "{xml}");
    let d1 = &maps[&1];
    let d2 = &maps[&2];
    let d3 = &maps[&3];
    assert_eq!(d1.len(), 600);
    assert_eq!(d2.len(), 600);
    assert_eq!(d3.len(), 600);
    let get = |d: &Vec<(u64, u64, u64)>, vb: u64| *d.iter().find(|m| m.0 == vb).unwrap();
    // Untouched blocks are shared by all three and stamped time 0.
    assert_eq!(get(d1, 0), get(d3, 0));
    assert_eq!(get(d1, 0).2, 0);
    // Copied blocks carry the pool time at the write and a new data block.
    assert_eq!(get(d1, 5).2, 2);
    assert_ne!(get(d1, 5).1, get(d3, 5).1);
    assert_eq!(get(d2, 7).2, 2);
    assert_ne!(get(d2, 7).1, get(d3, 7).1);
    assert_eq!(get(d2, 5), get(d3, 5), "snapshot 2 still shares block 5 with snapshot 3");
    for line in xml.lines().filter(|l| l.trim_start().starts_with("<device ")) {
        let id = attr(line, "dev_id").unwrap();
        let details = pool.device_details(ThinId(id)).unwrap();
        assert_eq!(attr(line, "mapped_blocks").unwrap(), details.mapped_blocks);
        assert_eq!(attr(line, "snap_time").unwrap(), u64::from(details.snapshotted_time));
        assert_eq!(attr(line, "creation_time").unwrap(), u64::from(details.creation_time));
    }
    let sb = xml.lines().next().unwrap();
    assert_eq!(attr(sb, "time"), Some(2));
    assert_eq!(attr(sb, "nr_data_blocks"), Some(1000));
    // The engine's own view agrees with thin_dump.
    for (vb, bt) in pool.mappings(ThinId(2)).unwrap() {
        assert_eq!(get(d2, vb.0), (vb.0, bt.block.0, u64::from(bt.time)));
    }
    assert_eq!(pool.lookup(ThinId(4), VirtBlock(0)).unwrap().unwrap().time, 2);
    let mut buf = vec![0u8; 512];
    pool.read(ThinId(3), 5 * bs as u64, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 5 | 1), "snapshot 3 keeps the original block 5");
    pool.read(ThinId(2), 7 * bs as u64 + 200, &mut buf[..100]).unwrap();
    assert!(buf[..100].iter().all(|&b| b == 7 | 1), "CoW copied the untouched middle");
}

/// The engine opens what Debian's thin_restore writes, keeps working on it, and the result
/// still passes thin_check.
#[test]
fn engine_opens_and_extends_thin_restore_output() {
    let dir = tempfile::tempdir().unwrap();
    let xml = r#"<superblock uuid="" time="1" transaction="5" flags="0" version="2" data_block_size="128" nr_data_blocks="20000">
  <device dev_id="7" mapped_blocks="301" transaction="2" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="300" time="0"/>
    <single_mapping origin_block="5000" data_block="400" time="1"/>
  </device>
  <device dev_id="9" mapped_blocks="300" transaction="3" creation_time="1" snap_time="1">
    <range_mapping origin_begin="0" data_begin="0" length="300" time="0"/>
  </device>
</superblock>
"#;
    let xml_path = dir.path().join("in.xml");
    std::fs::write(&xml_path, xml).unwrap();
    let meta_path = dir.path().join("metadata");
    FileDevice::create(&meta_path, 8 << 20).unwrap();
    let restore = "/usr/sbin/thin_restore";
    assert!(std::path::Path::new(restore).exists(), "{restore} is missing");
    let out = std::process::Command::new(restore)
        .arg("-i")
        .arg(&xml_path)
        .arg("-o")
        .arg(&meta_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "thin_restore: {}", String::from_utf8_lossy(&out.stderr));
    let meta = Arc::new(FileDevice::open(&meta_path).unwrap());
    let data = Arc::new(FileDevice::create(&dir.path().join("data"), 20_000 * 65536).unwrap());
    let pool = Pool::open(meta, data).unwrap();
    assert_eq!(pool.transaction_id().0, 5);
    assert_eq!(pool.time(), 1);
    let d7 = pool.device_details(ThinId(7)).unwrap();
    assert_eq!((d7.mapped_blocks, d7.transaction_id), (301, 2));
    let m7: Vec<_> = pool.mappings(ThinId(7)).unwrap().collect();
    assert_eq!(m7.len(), 301);
    assert_eq!((m7[300].0 .0, m7[300].1.block.0, m7[300].1.time), (5000, 400, 1));
    // Unshared trees restored from flat XML: blocks 0..300 are referenced by two leaves.
    pool.commit().unwrap(); // rewrites thin_restore's index hints in the kernel's convention
    pool.self_check().unwrap();
    // Device 9 maps the same blocks with time 0 < snap_time 1: a write must copy.
    pool.write(ThinId(9), 0, &[1u8; 512]).unwrap();
    assert_ne!(pool.lookup(ThinId(9), VirtBlock(0)).unwrap().unwrap().block.0, 0);
    pool.delete(ThinId(7)).unwrap();
    pool.commit().unwrap();
    pool.self_check().unwrap();
    thin_check(&meta_path);
}

/// 3.2 million data blocks need 197 data bitmaps: the data space map's index btree grows an
/// internal root (168 entries per leaf), which both the engine and thin_check must accept.
#[test]
fn large_data_device_index_tree() {
    let dir = tempfile::tempdir().unwrap();
    let meta_path = dir.path().join("metadata");
    let meta = Arc::new(FileDevice::create(&meta_path, 16 << 20).unwrap());
    let nr = 3_200_000u64;
    let data = Arc::new(NullDevice(nr * 65536));
    let pool = Pool::format(meta.clone(), data.clone(), Sectors(128)).unwrap();
    assert_eq!(pool.data_usage().total.0, nr);
    pool.create_thin(ThinId(1)).unwrap();
    for vb in [0u64, 1, 2_000_000, 3_199_999] {
        pool.write(ThinId(1), vb * 65536, &[1u8; 512]).unwrap();
    }
    // Fill the first bitmap completely and spill into the second.
    for vb in 10..16_400u64 {
        pool.insert_mapping(ThinId(1), VirtBlock(vb), thinpool::units::DataBlock(vb), 0).unwrap();
    }
    pool.commit().unwrap();
    pool.self_check().unwrap();
    thin_check(&meta_path);
    drop(pool);
    let pool = Pool::open(meta, data).unwrap();
    pool.self_check().unwrap();
    assert_eq!(pool.device_details(ThinId(1)).unwrap().mapped_blocks, 4 + 16_390);
}
