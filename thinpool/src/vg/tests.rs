//! In-crate tests: the block-device contract run against a region, and regions checked
//! against a flat byte model.

use super::*;
use crate::io::MemDevice;
use format::DATA_START;
use proptest::prelude::*;
use std::io;

/// Regions refuse `grow`; the contract's growth step goes through the volume group instead:
/// with 4 KiB extents, growing by 4096 bytes is `grow_data(1)`.
struct GrowThroughVg {
    vg: VolumeGroup,
    region: Arc<Region>,
}

impl BlockDevice for GrowThroughVg {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.region.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.region.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.region.flush()
    }
    fn size(&self) -> u64 {
        self.region.size()
    }
    fn grow(&self, new_size: u64) -> io::Result<()> {
        let size = self.size();
        if new_size < size {
            return self.region.grow(new_size);
        }
        let ext = self.vg.extent_size();
        self.vg
            .grow_data(Extents((new_size - size).div_ceil(ext.get())))
            .map_err(|e| io::Error::other(e.to_string()))
    }
    fn describe(&self) -> String {
        self.region.describe()
    }
}

fn mem(size: u64, name: &str) -> Arc<dyn BlockDevice> {
    Arc::new(MemDevice::new(size, name))
}

/// A group of two devices whose data region already spans both, with 4 KiB extents.
fn split_group() -> VolumeGroup {
    // 1024 extents: metadata takes 50 % (512 extents = the 2 MiB minimum), data 40 %.
    let config = PoolConfig { thinp_percent: 40, thinp_metapercent: 50, ..PoolConfig::default() };
    let vg =
        VolumeGroup::create_sized(vec![mem(DATA_START + 1024 * 4096, "a")], config, false, 4096)
            .unwrap();
    vg.extend_with(mem(DATA_START + 1024 * 4096, "b"), false).unwrap();
    // 103 extents in place after the data region, then 97 from the second device.
    vg.grow_data(Extents(200)).unwrap();
    vg
}

#[test]
fn region_keeps_the_block_device_contract() {
    let vg = split_group();
    assert_eq!(vg.metadata().tdata.len(), 2, "data spans both devices");
    let region = vg.data_region();
    let dev = GrowThroughVg { vg, region };
    crate::io::contract::check(&dev);
    // The contract's grow came from the second device's free extents.
    assert_eq!(dev.vg.metadata().tdata.last().unwrap().device, 1);
}

#[test]
fn region_grow_is_refused_except_to_its_own_size() {
    let vg = split_group();
    let r = vg.data_region();
    r.grow(r.size()).unwrap();
    let e = r.grow(r.size() + 4096).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::Unsupported);
}

#[test]
fn metadata_region_starts_zeroed_and_capped() {
    let vg = split_group();
    let mut b = vec![1u8; 4096];
    vg.metadata_region().read_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0));
    // With 4 KiB extents the minimum metadata region is 2 MiB = 512 extents; the 160 extents of
    // the group cannot hold it plus 90 % data.
    let err = VolumeGroup::create_sized(
        vec![mem(DATA_START + 160 * 4096, "c")],
        PoolConfig::default(),
        false,
        4096,
    )
    .err()
    .unwrap();
    assert_eq!(err.kind(), VgErrorKind::TooSmall);
}

#[derive(Clone, Debug)]
enum Op {
    Write(u64, Vec<u8>),
    Read(u64, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let size = 700 * 4096u64;
    prop_oneof![
        (0..size, proptest::collection::vec(any::<u8>(), 1..20_000))
            .prop_map(|(o, d)| Op::Write(o, d)),
        (0..size, 1usize..20_000).prop_map(|(o, l)| Op::Read(o, l)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]
    #[test]
    fn region_matches_a_flat_model(ops in proptest::collection::vec(op(), 1..40)) {
        let vg = split_group();
        let r = vg.data_region();
        let size = r.size() as usize;
        let mut model = vec![0u8; size];
        for op in ops {
            match op {
                Op::Write(o, data) => {
                    let o = o as usize;
                    let res = r.write_at(&data, o as u64);
                    if o + data.len() <= size {
                        res.unwrap();
                        model[o..o + data.len()].copy_from_slice(&data);
                    } else {
                        let e = res.unwrap_err();
                        prop_assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{}", e);
                        prop_assert!(e.to_string().contains("is beyond the end"), "{}", e);
                    }
                }
                Op::Read(o, len) => {
                    let o = o as usize;
                    let mut buf = vec![0u8; len];
                    let res = r.read_at(&mut buf, o as u64);
                    if o + len <= size {
                        res.unwrap();
                        prop_assert_eq!(&buf[..], &model[o..o + len]);
                    } else {
                        let e = res.unwrap_err();
                        prop_assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{}", e);
                        prop_assert!(e.to_string().contains("is beyond the end"), "{}", e);
                    }
                }
            }
        }
        r.flush().unwrap();
    }
}
