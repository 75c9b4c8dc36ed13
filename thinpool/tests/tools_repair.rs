//! `thinpool repair` against Debian's `thin_repair` 0.9.0 on metadata damaged several ways:
//! ours salvages at least the mappings thin_repair salvages, the result passes thin_check,
//! and the salvaged mappings read back the data they held.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use thinpool::io::{BlockDevice, FileDevice};
use thinpool::pdata::disk::BlockKind;
use thinpool::pool::{FilePool, Pool};
use thinpool::units::{Bytes, Sectors, ThinId};

mod support;
use support::cli::{ok, thinpool};
use support::tools::*;
use support::{require_tool, thin_check_ok, thin_dump};

const BLOCK: u64 = 64 << 10;
const BLOCKS: u64 = 600;

/// (device, virtual block, data block) of every mapping in some metadata.
type Mappings = BTreeSet<(u64, u64, u64)>;

fn mappings(meta: &Path) -> Mappings {
    let md = thinpool::xml::parse(&thin_dump(meta)).unwrap();
    md.devices
        .iter()
        .flat_map(|d| d.blocks().map(move |(v, b, _)| (d.dev_id.0, v.0, b.0)))
        .collect()
}

/// A pool whose two devices have two-level bottom trees sharing leaves: `vol` (id 0) with
/// 600 written blocks, `snap` (id 1) a snapshot, then 100 blocks of `vol` rewritten.
/// Returns every block's content per device.
fn make(dir: &Path) -> BTreeMap<u64, Vec<Vec<u8>>> {
    let p = FilePool::create(dir, Bytes::new(2048 * BLOCK), None, Sectors(128)).unwrap();
    let v = p.create_volume("vol", Bytes::new(BLOCKS * BLOCK)).unwrap();
    for b in 0..BLOCKS {
        p.write(v, b * BLOCK, &vec![(b % 251) as u8 + 1; BLOCK as usize]).unwrap();
    }
    let s = p.snapshot_volume("vol", "snap").unwrap();
    for b in (0..BLOCKS).step_by(6) {
        p.write(v, b * BLOCK, &vec![0xAA; BLOCK as usize]).unwrap();
    }
    p.commit().unwrap();
    let mut out = BTreeMap::new();
    for id in [v, s] {
        let blocks = (0..BLOCKS)
            .map(|b| {
                let mut buf = vec![0u8; BLOCK as usize];
                p.read(id, b * BLOCK, &mut buf).unwrap();
                buf
            })
            .collect();
        out.insert(id.0, blocks);
    }
    out
}

/// Runs Debian's thin_repair; its salvaged mappings, or None when it gives up.
fn debian_repair(damaged: &Path, out: &Path) -> Option<Mappings> {
    require_tool("thin_repair");
    std::fs::File::create(out).unwrap().set_len(std::fs::metadata(damaged).unwrap().len()).unwrap();
    let r = Command::new("thin_repair").arg("-i").arg(damaged).arg("-o").arg(out).output().unwrap();
    r.status.success().then(|| mappings(out))
}

#[test]
fn repair_salvages_at_least_what_thin_repair_does() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let content = make(&dir);
    let meta = dir.join(FilePool::METADATA);
    let all = mappings(&meta);
    let pristine = std::fs::read(&meta).unwrap();
    type Damage = Box<dyn Fn(&dyn BlockDevice)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "bit flip in a bottom-level leaf",
            Box::new(|d| {
                let root = device_root(d, 0);
                let leaf = children(d, root)[1].1;
                flip(d, leaf, 2000);
            }),
        ),
        ("bit flip in a bottom-level internal node", Box::new(|d| flip(d, device_root(d, 1), 100))),
        (
            "bit flip in the top-level mapping tree",
            Box::new(|d| flip(d, sb_u64(d, MAPPING_ROOT), 300)),
        ),
        (
            "lost metadata space-map bitmap",
            Box::new(|d| {
                let index = sb_u64(d, META_SM_ROOT + 16);
                let bitmap = thinpool::pdata::disk::get_u64(&read_block(d, index)[..], 16);
                d.write_at(&[0u8; 4096], bitmap * 4096).unwrap();
            }),
        ),
        (
            "lost data space-map bitmap",
            Box::new(|d| {
                let b = data_bitmap_block(d, 0);
                d.write_at(&[0u8; 4096], b * 4096).unwrap();
            }),
        ),
        (
            "superblock's details root points at a mapping leaf",
            Box::new(|d| {
                let leaf = children(d, device_root(d, 0))[0].1;
                patch(d, 0, BlockKind::Superblock, |b| {
                    b[DETAILS_ROOT..DETAILS_ROOT + 8].copy_from_slice(&leaf.to_le_bytes())
                });
            }),
        ),
        (
            "superblock's mapping root points at a bottom-level root",
            Box::new(|d| {
                let r = device_root(d, 0);
                patch(d, 0, BlockKind::Superblock, |b| {
                    b[MAPPING_ROOT..MAPPING_ROOT + 8].copy_from_slice(&r.to_le_bytes())
                });
            }),
        ),
    ];
    let data = Arc::new(FileDevice::open_read_only(&dir.join(FilePool::DATA)).unwrap());
    let mut report = Vec::new();
    for (name, damage) in &cases {
        let damaged = tmp.path().join("damaged");
        std::fs::write(&damaged, &pristine).unwrap();
        damage(&open(&damaged));
        let deb = debian_repair(&damaged, &tmp.path().join("deb.meta"));
        let ours_path = tmp.path().join("ours.meta");
        let _ = std::fs::remove_file(&ours_path);
        let out = thinpool(&[
            "repair",
            damaged.to_str().unwrap(),
            "--output",
            ours_path.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(thin_check_ok(&ours_path), "{name}: thin_check fails on the repaired metadata");
        assert!(ok(&["check", ours_path.to_str().unwrap()]).contains("clean"), "{name}");
        let ours = mappings(&ours_path);
        assert!(ours.is_subset(&all), "{name}: repair invented mappings");
        if name.contains("mapping root points") {
            // Found by searching the allocated blocks for the lost top level.
            assert_eq!(ours, all, "{name}");
        }
        if let Some(deb) = &deb {
            let missing: Vec<_> = deb.difference(&ours).take(5).collect();
            assert!(missing.is_empty(), "{name}: thin_repair salvaged {missing:?}, we did not");
        }
        // The salvaged mappings read back what they held.
        let p = Pool::open_read_only(Arc::new(open(&ours_path)), data.clone()).unwrap();
        let mut buf = vec![0u8; BLOCK as usize];
        for &(dev, vb, _) in &ours {
            p.read(ThinId(dev), vb * BLOCK, &mut buf).unwrap();
            assert!(buf == content[&dev][vb as usize], "{name}: device {dev} block {vb}");
        }
        report.push(format!(
            "{name}: ours {} of {} mappings, thin_repair {}",
            ours.len(),
            all.len(),
            deb.map_or("failed".to_owned(), |d| d.len().to_string())
        ));
    }
    println!("{}", report.join("\n"));
}

fn flip(d: &dyn BlockDevice, block: u64, byte: usize) {
    let mut b = read_block(d, block);
    b[byte] ^= 0x10;
    d.write_at(&b[..], block * 4096).unwrap();
}

#[test]
fn dump_repair_and_clear_needs_check() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    make(&dir);
    let d = dir.to_str().unwrap();
    let meta = dir.join(FilePool::METADATA);
    let dev = open(&meta);
    // needs_check set (as the kernel sets it after a failed metadata operation).
    patch(&dev, 0, BlockKind::Superblock, |b| b[4] |= 1);
    let out = ok(&["check", d, "--clear-needs-check-flag"]);
    assert!(out.contains("clean"), "{out}");
    assert_eq!(sb_u64(&dev, 0) >> 32 & 1, 0, "needs_check still set");
    FilePool::open(&dir).unwrap();
    // A damaged leaf: dump fails, dump --repair prints what survives.
    let leaf = children(&dev, device_root(&dev, 0))[0].1;
    flip(&dev, leaf, 1000);
    let plain = thinpool(&["dump", d]);
    assert!(!plain.status.success());
    let salvaged = ok(&["dump", "--repair", d]);
    let md = thinpool::xml::parse(&salvaged).unwrap();
    assert_eq!(md.devices.len(), 2);
    assert!(md.devices[0].nr_mappings() < BLOCKS && md.devices[1].nr_mappings() == BLOCKS);
    // A damaged pool keeps its flag.
    patch(&dev, 0, BlockKind::Superblock, |b| b[4] |= 1);
    let r = thinpool(&["check", d, "--clear-needs-check-flag"]);
    assert!(!r.status.success());
    assert_eq!(sb_u64(&dev, 0) >> 32 & 1, 1, "needs_check cleared on damaged metadata");
}
