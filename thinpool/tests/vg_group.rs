//! Volume groups on sparse files: create/open, config changes, signatures, extend and grow,
//! dm tables.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use thinpool::io::{BlockDevice, FileDevice};
use thinpool::units::{Sectors, ThinId};
use thinpool::vg::format::DATA_START;
use thinpool::vg::{
    Extents, PoolConfig, Signature, ThinSpec, VgErrorKind, VolumeGroup, MAX_METADATA_BYTES,
};

const MIB: u64 = 1 << 20;

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// 4 MiB of group metadata plus `extents` extents of 4 MiB.
fn dev_size(extents: u64) -> u64 {
    DATA_START + extents * 4 * MIB
}

#[test]
fn create_then_open_round_trips_layout_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let a = sparse(dir.path(), "a", dev_size(100));
    let vg = VolumeGroup::create(std::slice::from_ref(&a), PoolConfig::default(), false).unwrap();
    assert!(vg.is_new());
    let st = vg.status();
    assert_eq!(st.total, Extents(100));
    assert_eq!(st.metadata.extents, Extents(1), "1 % of 100 extents");
    assert_eq!(st.data.extents, Extents(95));
    assert_eq!(st.free, Extents(4));
    assert_eq!(vg.data_region().size(), 95 * 4 * MIB);
    assert_eq!(vg.metadata_region().size(), 4 * MIB);
    vg.data_region().write_at(b"hello data", 7 * 4 * MIB - 3).unwrap();
    vg.metadata_region().write_at(b"hello meta", 4096).unwrap();
    vg.data_region().flush().unwrap();
    let meta = vg.metadata();
    drop(vg);

    for vg in [
        VolumeGroup::open(std::slice::from_ref(&a)).unwrap(),
        VolumeGroup::open_dir(dir.path()).unwrap(),
    ] {
        assert_eq!(vg.metadata(), meta);
        let mut b = [0u8; 10];
        vg.data_region().read_at(&mut b, 7 * 4 * MIB - 3).unwrap();
        assert_eq!(&b, b"hello data");
        vg.metadata_region().read_at(&mut b, 4096).unwrap();
        assert_eq!(&b, b"hello meta");
    }
    // The data region sits right after tmeta on the device: extent 1, after the 4 MiB area.
    let raw = FileDevice::open(&a).unwrap();
    let mut b = [0u8; 10];
    raw.read_at(&mut b, DATA_START + 4 * MIB + 7 * 4 * MIB - 3).unwrap();
    assert_eq!(&b, b"hello data");
}

#[test]
fn changing_setup_values_is_refused_and_same_values_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let a = sparse(dir.path(), "a", dev_size(50));
    let first =
        VolumeGroup::create(std::slice::from_ref(&a), PoolConfig::default(), false).unwrap();
    let uuid = first.uuid();
    drop(first);

    for opt in [
        "dm.thinp_percent=90",
        "dm.thinp_metapercent=2",
        "dm.blocksize=512K",
        "dm.thinp_autoextend_threshold=90",
    ] {
        let changed = PoolConfig::from_opts([opt]).unwrap();
        let err = VolumeGroup::create(std::slice::from_ref(&a), changed, false).err().unwrap();
        assert_eq!(err.kind(), VgErrorKind::ConfigChanged, "{opt}");
        assert_eq!(err.to_string(), "changing direct-lvm config is not supported");
    }
    let again =
        VolumeGroup::create(std::slice::from_ref(&a), PoolConfig::default(), false).unwrap();
    assert_eq!(again.uuid(), uuid, "same values open the existing group");
    assert!(!again.is_new());
    drop(again);
    // Runtime options may change; the new values are kept.
    let runtime =
        PoolConfig::from_opts(["dm.min_free_space=5%", "lamina.error_if_no_space=true"]).unwrap();
    let vg = VolumeGroup::create(std::slice::from_ref(&a), runtime.clone(), false).unwrap();
    assert_eq!(vg.uuid(), uuid);
    drop(vg);
    assert_eq!(VolumeGroup::open(std::slice::from_ref(&a)).unwrap().config(), runtime);
}

/// The first 128 KiB of a file, what the signature probe looks at.
fn head(path: &Path) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; 128 << 10];
    std::fs::File::open(path).unwrap().read_exact(&mut b).unwrap();
    b
}

fn mkfs_xfs(path: &Path) {
    let out = Command::new("mkfs.xfs")
        .arg("-f")
        .arg(path)
        .output()
        .expect("mkfs.xfs is required for this test (apt-get install xfsprogs)");
    assert!(out.status.success(), "mkfs.xfs failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn xfs_device_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let a = sparse(dir.path(), "xfs", 512 * MIB);
    mkfs_xfs(&a);
    assert_eq!(thinpool::vg::signature::detect(&head(&a)), Some(Signature::Xfs));

    let err =
        VolumeGroup::create(std::slice::from_ref(&a), PoolConfig::default(), false).err().unwrap();
    assert_eq!(err.kind(), VgErrorKind::Signature);
    assert!(err.to_string().contains("xfs"), "{err}");
    assert!(err.to_string().contains("dm.directlvm_device_force"), "{err}");
    // Nothing was written: the filesystem is still there.
    assert_eq!(&head(&a)[0..4], b"XFSB");

    let forced = PoolConfig::from_opts(["dm.directlvm_device_force=true"]).unwrap();
    let vg = VolumeGroup::create(std::slice::from_ref(&a), forced, false).unwrap();
    assert_eq!(vg.status().total, Extents(127));
    drop(vg);
    assert_eq!(thinpool::vg::signature::detect(&head(&a)), Some(Signature::Lamina));

    // The force argument works the same as the option.
    let b = sparse(dir.path(), "xfs2", 512 * MIB);
    mkfs_xfs(&b);
    VolumeGroup::create(&[b], PoolConfig::default(), true).unwrap();
}

#[test]
fn extend_then_grow_data_from_the_new_device() {
    let dir = tempfile::tempdir().unwrap();
    let a = sparse(dir.path(), "a", dev_size(100));
    let b = sparse(dir.path(), "b", dev_size(50));
    let vg = VolumeGroup::create(std::slice::from_ref(&a), PoolConfig::default(), false).unwrap();
    vg.data_region().write_at(&[0xA5; 4096], 90 * 4 * MIB).unwrap();
    assert_eq!(vg.free_extents(), Extents(4));
    let err = vg.grow_data(Extents(5)).unwrap_err();
    assert_eq!(err.kind(), VgErrorKind::NoSpace);
    assert_eq!(vg.status().data.extents, Extents(95), "a failed grow changes nothing");

    vg.extend(&b).unwrap();
    assert_eq!(vg.free_extents(), Extents(54));
    vg.grow_data(Extents(10)).unwrap();
    let st = vg.status();
    assert_eq!(st.data.extents, Extents(105));
    assert_eq!(st.data.segments.len(), 2, "{:?}", st.data.segments);
    assert_eq!(
        (st.data.segments[0].device, st.data.segments[0].len),
        (0, Extents(99)),
        "grew in place first"
    );
    assert_eq!((st.data.segments[1].device, st.data.segments[1].len), (1, Extents(6)));
    assert_eq!(st.devices[1].free, Extents(44));
    assert_eq!(vg.data_region().size(), 105 * 4 * MIB);
    // The new space is usable across the device boundary.
    let end = 105 * 4 * MIB;
    vg.data_region().write_at(&[7u8; 8192], end - 8192 - 6 * 4 * MIB + 4096).unwrap();
    vg.grow_metadata(Extents(2)).unwrap();
    let meta = vg.metadata();
    drop(vg);

    let vg = VolumeGroup::open_dir(dir.path()).unwrap();
    assert_eq!(vg.metadata(), meta);
    let mut buf = [0u8; 4096];
    vg.data_region().read_at(&mut buf, 90 * 4 * MIB).unwrap();
    assert_eq!(buf, [0xA5; 4096]);
    // Missing the second device: the group cannot be assembled.
    let err = VolumeGroup::open(std::slice::from_ref(&a)).err().unwrap();
    assert_eq!(err.kind(), VgErrorKind::MissingDevice);
    // Extending with a member again is refused.
    assert_eq!(vg.extend(&b).unwrap_err().kind(), VgErrorKind::Usage);
}

#[test]
fn extend_refuses_a_filesystem_unless_the_group_is_forced() {
    let dir = tempfile::tempdir().unwrap();
    let a = sparse(dir.path(), "a", dev_size(20));
    let x = sparse(dir.path(), "x", 512 * MIB);
    mkfs_xfs(&x);
    let vg = VolumeGroup::create(std::slice::from_ref(&a), PoolConfig::default(), false).unwrap();
    assert_eq!(vg.extend(&x).unwrap_err().kind(), VgErrorKind::Signature);
    vg.extend_with(Arc::new(FileDevice::open(&x).unwrap()), true).unwrap();
    assert_eq!(vg.status().devices.len(), 2);
}

#[test]
fn metadata_is_capped_at_the_dm_thin_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let a = sparse(dir.path(), "big", dev_size(10_000)); // ~39 GiB, sparse
    let cap = MAX_METADATA_BYTES / (4 * MIB);
    assert_eq!(cap, 4064);
    let config = PoolConfig::from_opts(["dm.thinp_percent=40", "dm.thinp_metapercent=50"]).unwrap();
    let vg = VolumeGroup::create(std::slice::from_ref(&a), config, false).unwrap();
    assert_eq!(vg.status().metadata.extents, Extents(cap), "50 % would be 5000 extents");
    assert_eq!(vg.metadata_headroom(), Extents(0));
    assert_eq!(vg.grow_metadata(Extents(1)).unwrap_err().kind(), VgErrorKind::Limit);

    let b = sparse(dir.path(), "b", dev_size(10_000));
    let half = PoolConfig::from_opts(["dm.thinp_percent=50"]).unwrap();
    let vg = VolumeGroup::create(std::slice::from_ref(&b), half, false).unwrap();
    assert_eq!(vg.status().metadata.extents, Extents(100));
    vg.grow_metadata(Extents(cap - 100)).unwrap();
    assert_eq!(vg.grow_metadata(Extents(1)).unwrap_err().kind(), VgErrorKind::Limit);
}

#[test]
fn tiny_and_unlabelled_devices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let small = sparse(dir.path(), "small", 4 * MIB);
    let err = VolumeGroup::create(std::slice::from_ref(&small), PoolConfig::default(), false)
        .err()
        .unwrap();
    assert_eq!(err.kind(), VgErrorKind::TooSmall);
    let err = VolumeGroup::open(std::slice::from_ref(&small)).err().unwrap();
    assert_eq!(err.kind(), VgErrorKind::NotAGroup);
    assert_eq!(VolumeGroup::open_dir(dir.path()).err().unwrap().kind(), VgErrorKind::NotAGroup);
    let a = sparse(dir.path(), "a", dev_size(20));
    let err = VolumeGroup::create(&[a.clone(), a], PoolConfig::default(), false).err().unwrap();
    assert_eq!(err.kind(), VgErrorKind::Usage);
}

/// Presents a file under a stable name, so tables do not carry the tempdir path.
struct Named(FileDevice, &'static str);

impl BlockDevice for Named {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn grow(&self, new_size: u64) -> std::io::Result<()> {
        self.0.grow(new_size)
    }
    fn describe(&self) -> String {
        self.1.to_owned()
    }
}

#[test]
fn dmsetup_tables_golden() {
    let dir = tempfile::tempdir().unwrap();
    let named = |name: &str, dev: &'static str, ext| -> Arc<dyn BlockDevice> {
        Arc::new(Named(FileDevice::open(&sparse(dir.path(), name, dev_size(ext))).unwrap(), dev))
    };
    let vg =
        VolumeGroup::create_with(vec![named("a", "/dev/vdb", 100)], PoolConfig::default(), false)
            .unwrap();
    vg.extend_with(named("b", "/dev/vdc", 50), false).unwrap();
    vg.grow_data(Extents(10)).unwrap();
    let thins = [
        ThinSpec { name: "lamina-base".into(), id: ThinId(1), size: Sectors(20_971_520) },
        ThinSpec { name: "lamina-c1".into(), id: ThinId(7), size: Sectors(41_943_040) },
    ];
    let t = vg.dmsetup_table("lamina", &thins);
    let golden = "\
# lamina_tmeta
0 8192 linear /dev/vdb 8192
# lamina_tdata
0 811008 linear /dev/vdb 16384
811008 49152 linear /dev/vdc 8192
# lamina
0 860160 thin-pool /dev/mapper/lamina_tmeta /dev/mapper/lamina_tdata 128 1344 1 skip_block_zeroing
# lamina-base
0 20971520 thin /dev/mapper/lamina 1
# lamina-c1
0 41943040 thin /dev/mapper/lamina 7
";
    assert_eq!(t.to_string(), golden);
    assert!(t.to_script().starts_with(
        "dmsetup create lamina_tmeta <<'TABLE'\n0 8192 linear /dev/vdb 8192\nTABLE\n"
    ));
    drop(vg);

    // 512 KiB blocks and error_if_no_space: the pool length stays a whole number of blocks.
    let config = PoolConfig::from_opts([
        "dm.blocksize=512K",
        "lamina.error_if_no_space=true",
        "dm.thinp_autoextend_threshold=100",
    ])
    .unwrap();
    let vg = VolumeGroup::create_with(vec![named("c", "/dev/vdd", 100)], config, false).unwrap();
    let t = vg.dmsetup_table("p", &[]);
    assert_eq!(
        t.tables[2].lines,
        ["0 778240 thin-pool /dev/mapper/p_tmeta /dev/mapper/p_tdata 1024 0 2 skip_block_zeroing error_if_no_space"]
    );
}

fn run(tool: &str, args: &[&str], path: &Path) {
    let out = Command::new(tool).args(args).arg(path).output().unwrap_or_else(|e| {
        panic!("{tool} is required for this test (e2fsprogs, util-linux): {e}")
    });
    assert!(out.status.success(), "{tool} failed: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn real_ext4_swap_and_thin_metadata_are_detected_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ext4 = sparse(dir.path(), "ext4", 64 * MIB);
    run("mkfs.ext4", &["-F", "-q"], &ext4);
    let swap = sparse(dir.path(), "swap", 64 * MIB);
    run("mkswap", &[], &swap);
    // The metadata device of a pool formatted by the engine.
    let meta = sparse(dir.path(), "tmeta", 8 * MIB);
    let data = sparse(dir.path(), "tdata", 64 * MIB);
    let m: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&meta).unwrap());
    let d: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&data).unwrap());
    drop(thinpool::pool::Pool::format(m, d, Sectors(128)).unwrap());
    for (path, sig) in
        [(&ext4, Signature::Ext), (&swap, Signature::Swap), (&meta, Signature::DmThinMetadata)]
    {
        assert_eq!(thinpool::vg::signature::detect(&head(path)), Some(sig), "{}", path.display());
        let err = VolumeGroup::create(std::slice::from_ref(path), PoolConfig::default(), false)
            .err()
            .unwrap();
        assert_eq!(err.kind(), VgErrorKind::Signature, "{}", path.display());
    }
    assert_eq!(thinpool::vg::signature::detect(&head(&data)), None);
}
