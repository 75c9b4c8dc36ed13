//! Restore interop both ways: our restore read by Debian's thin_dump / thin_check, and
//! Debian's thin_restore read by our engine.

mod support;

use std::sync::Arc;

use support::tools::*;
use support::{thin_check_ok, thin_dump};
use thinpool::check::check;
use thinpool::io::FileDevice;
use thinpool::pool::Pool;
use thinpool::xml::{parse, render, restore, XmlErrorKind};

fn cases() -> Vec<(&'static str, String)> {
    let mut seed = 11u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    };
    let mut devices = Vec::new();
    for id in [0u64, 3, 77, 4096] {
        let (mut v, mut d) = (next() % 10, next() % 20_000);
        let mut maps = Vec::new();
        for _ in 0..(next() % 2500) {
            maps.push((v, d, next().is_multiple_of(5) as u32));
            v += if next().is_multiple_of(6) { 2 + next() % 50 } else { 1 };
            d = if next().is_multiple_of(8) { next() % 20_000 } else { (d + 1) % 20_000 };
        }
        devices.push((id, maps));
    }
    let many: Vec<DeviceSpec> = (0..200).map(|id| (id, vec![(id, id, 0)])).collect();
    vec![
        ("empty", pool_xml(0, 0, &[])),
        ("random", pool_xml(2, 20_000, &devices)),
        ("many", pool_xml(0, 1000, &many)),
    ]
}

#[test]
fn our_restore_is_read_by_thin_dump_and_accepted_by_both_checkers() {
    let dir = tempfile::tempdir().unwrap();
    for (name, xml) in cases() {
        let meta_path = dir.path().join(format!("{name}.meta"));
        let meta = Arc::new(FileDevice::create(&meta_path, 8 << 20).unwrap());
        restore(&xml, meta.clone(), None).unwrap();
        assert!(thin_check_ok(&meta_path), "{name}: thin_check rejects our restore");
        let r = check(meta.as_ref());
        assert!(r.is_clean(), "{name}: {:#?}", r.damages);
        assert_eq!(thin_dump(&meta_path), xml, "{name}: thin_dump of our restore differs");
        assert_eq!(thinpool::xml::dump(meta.as_ref()).unwrap(), xml);
    }
}

#[test]
fn thin_restore_output_is_read_by_our_engine() {
    let dir = tempfile::tempdir().unwrap();
    for (name, xml) in cases() {
        let meta_path = thin_restore(dir.path(), name, &xml);
        let md = parse(&xml).unwrap();
        let data_path = dir.path().join(format!("{name}.data"));
        let data = FileDevice::create(&data_path, md.nr_data_blocks * 128 * 512).unwrap();
        let meta = FileDevice::open(&meta_path).unwrap();
        let pool = Pool::open_read_only(Arc::new(meta), Arc::new(data)).unwrap();
        assert_eq!(pool.transaction_id().0, md.transaction);
        assert_eq!(pool.time(), md.time);
        let devs = pool.devices();
        assert_eq!(devs.len(), md.devices.len(), "{name}");
        for d in &md.devices {
            let got: Vec<_> =
                pool.mappings(d.dev_id).unwrap().map(|(vb, bt)| (vb, bt.block, bt.time)).collect();
            let want: Vec<_> = d.blocks().collect();
            assert_eq!(got, want, "{name}: device {}", d.dev_id);
            assert_eq!(pool.device_details(d.dev_id).unwrap().mapped_blocks, d.mapped_blocks);
        }
    }
}

#[test]
fn restore_refuses_bad_xml_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(FileDevice::create(&dir.path().join("m"), 8 << 20).unwrap());
    let (_, xml) = cases().remove(1);
    let bad = xml.replacen("<single_mapping", "<single_mapping colour=\"red\"", 1);
    let err = restore(&bad, meta.clone(), None).unwrap_err();
    assert!(
        matches!(err, thinpool::xml::RestoreError::Xml(ref e) if e.kind == XmlErrorKind::UnknownAttribute)
    );
    assert!(err.to_string().contains("colour"), "{err}");
    // Nothing was formatted.
    assert!(read_block(meta.as_ref(), 0).iter().all(|&b| b == 0));
    // A mapping beyond the data device is refused by the engine, naming the device.
    let small =
        render(&parse(&xml).unwrap()).replace("nr_data_blocks=\"20000\"", "nr_data_blocks=\"10\"");
    let err = restore(&small, meta, None).unwrap_err().to_string();
    assert!(err.contains("device"), "{err}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Any pool the XML model can describe restores to metadata that dumps back to the same
    /// XML and checks exactly clean.
    #[test]
    fn rt_restore_then_dump(
        devs in proptest::collection::btree_map(
            0u64..1000,
            proptest::collection::vec((1u64..4, 0u64..5000, 0u32..3), 0..400),
            0..4,
        ),
        time in 0u32..5,
        trans in 0u64..1000,
    ) {
        use thinpool::units::{DataBlock, ThinId, VirtBlock};
        use thinpool::xml::{Device, Metadata};
        let mut md = Metadata {
            time,
            transaction: trans,
            version: Some(2),
            data_block_size: 128,
            nr_data_blocks: 5000,
            ..Metadata::default()
        };
        for (id, maps) in devs {
            let mut d = Device { dev_id: ThinId(id), transaction: trans, snap_time: time, ..Device::default() };
            let mut v = 0;
            for (gap, data, t) in maps {
                v += gap;
                d.push(VirtBlock(v), DataBlock(data), t);
            }
            d.mapped_blocks = d.nr_mappings();
            md.devices.push(d);
        }
        let xml = render(&md);
        let meta = Arc::new(thinpool::io::MemDevice::new(4 << 20, "meta"));
        restore(&xml, meta.clone(), None).unwrap();
        proptest::prop_assert_eq!(thinpool::xml::dump(meta.as_ref()).unwrap(), xml);
        let r = check(meta.as_ref());
        proptest::prop_assert!(r.is_clean(), "{:#?}", r.damages);
    }
}
