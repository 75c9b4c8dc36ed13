//! Our XML dump against Debian's thin_dump 0.9.0, byte for byte, on thin_restore images; and
//! our parser reading what thin_dump prints.

mod support;

use support::thin_dump;
use support::tools::*;
use thinpool::xml::{dump, parse, render};

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    *seed >> 33
}

/// Several pools: empty, coalescable runs broken by time and data jumps, many devices,
/// deep trees, odd superblock fields.
fn cases() -> Vec<(&'static str, String)> {
    let mut seed = 7;
    let mut devices = Vec::new();
    for id in [0u64, 1, 5, 1000, 16_777_215] {
        let mut maps = Vec::new();
        let mut v = lcg(&mut seed) % 10;
        let mut d = lcg(&mut seed) % 50_000;
        for _ in 0..(lcg(&mut seed) % 3000) {
            maps.push((v, d, lcg(&mut seed).is_multiple_of(4) as u32));
            // Mostly consecutive so runs form, sometimes a jump in either block.
            v += if lcg(&mut seed).is_multiple_of(7) { 2 + lcg(&mut seed) % 100 } else { 1 };
            d = if lcg(&mut seed).is_multiple_of(9) {
                lcg(&mut seed) % 50_000
            } else {
                (d + 1) % 50_000
            };
        }
        devices.push((id, maps));
    }
    let many: Vec<_> = (0..300).map(|id| (id, vec![(id, id, 0)])).collect();
    let odd = r#"<superblock uuid="ab" time="3" transaction="1" flags="1" version="2" data_block_size="256" nr_data_blocks="1000">
  <device dev_id="1" mapped_blocks="6" transaction="0" creation_time="0" snap_time="2">
    <single_mapping origin_block="0" data_block="10" time="0"/>
    <range_mapping origin_begin="1" data_begin="11" length="2" time="1"/>
    <single_mapping origin_block="3" data_block="12" time="1"/>
    <single_mapping origin_block="5" data_block="14" time="1"/>
    <single_mapping origin_block="6" data_block="13" time="1"/>
  </device>
</superblock>
"#;
    let unversioned = r#"<superblock uuid="" time="0" transaction="0" data_block_size="128" nr_data_blocks="0">
</superblock>
"#;
    vec![
        ("random", pool_xml(4, 50_000, &devices)),
        ("many", pool_xml(0, 1000, &many)),
        ("odd", odd.to_owned()),
        ("unversioned", unversioned.to_owned()),
    ]
}

#[test]
fn dump_is_byte_identical_to_thin_dump() {
    let dir = tempfile::tempdir().unwrap();
    for (name, xml) in cases() {
        let meta = thin_restore(dir.path(), name, &xml);
        let theirs = thin_dump(&meta);
        let ours = dump(&open(&meta)).unwrap();
        assert_eq!(ours, theirs, "{name}: dump differs from thin_dump");
        // And the parser reads thin_dump's output back to the same model.
        assert_eq!(render(&parse(&theirs).unwrap()), theirs, "{name}");
    }
}

#[test]
fn dump_of_damaged_metadata_is_an_error_naming_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let (_, xml) = cases().remove(0);
    let meta = thin_restore(dir.path(), "random", &xml);
    let dev = open(&meta);
    let root = device_root(&dev, 5);
    let mut blk = read_block(&dev, root);
    blk[40] ^= 0xff;
    thinpool::io::BlockDevice::write_at(&dev, &blk[..], root * 4096).unwrap();
    let err = dump(&dev).unwrap_err().to_string();
    assert!(err.contains(&format!("block {root}")), "{err}");
    assert!(err.contains("device 5"), "{err}");
}
