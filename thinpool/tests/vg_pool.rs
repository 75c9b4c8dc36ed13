//! A thin pool on a volume group: format/open, names in the group metadata, resize and
//! autoextend, the free-space gate, thin_check on the metadata region.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use thinpool::io::{BlockDevice, FileDevice};
use thinpool::units::{Bytes, DataBlock};
use thinpool::vg::autoextend::ExtendAction;
use thinpool::vg::format::DATA_START;
use thinpool::vg::{EventLog, Extents, PoolConfig, VgPool, VolumeGroup};

const MIB: u64 = 1 << 20;
const EXT: u64 = 64 << 10;

fn sparse(dir: &Path, name: &str, size: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::File::create(&p).unwrap().set_len(size).unwrap();
    p
}

/// A group of one file with `extents` extents of 64 KiB (the pool's block size), so a test
/// can fill it quickly.
fn small_group(dir: &Path, extents: u64, opts: &[&str]) -> VolumeGroup {
    let p = sparse(dir, "dev0", DATA_START + extents * EXT);
    let config = PoolConfig::from_opts(opts.iter().copied()).unwrap();
    let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&p).unwrap());
    VolumeGroup::create_sized(vec![dev], config, false, EXT).unwrap()
}

fn fill(p: &VgPool, name: &str, blocks: u64) {
    let id = p.pool().volume(name).unwrap().id;
    let block = vec![0x5Au8; 64 << 10];
    for b in 0..blocks {
        p.pool().write(id, b * (64 << 10), &block).unwrap();
    }
    p.pool().commit().unwrap();
}

#[test]
fn pool_on_a_group_round_trips_volumes_and_data() {
    let dir = tempfile::tempdir().unwrap();
    let a = sparse(dir.path(), "a", DATA_START + 100 * 4 * MIB);
    let p = VgPool::create(std::slice::from_ref(&a), PoolConfig::default(), false).unwrap();
    assert_eq!(p.pool().data_usage().total.0, 95 * 4 * MIB / (64 << 10));
    let id = p.pool().create_volume("base", Bytes::new(10 << 30)).unwrap();
    p.pool().write(id, 12345, b"on a volume group").unwrap();
    p.pool().commit().unwrap();
    drop(p);

    // Re-creating with the same values opens; the volume and its bytes are there.
    let p = VgPool::create(std::slice::from_ref(&a), PoolConfig::default(), false).unwrap();
    let v = p.pool().volume("base").unwrap();
    assert_eq!((v.id, v.size), (id, Bytes::new(10 << 30)));
    let mut b = [0u8; 17];
    p.pool().read(id, 12345, &mut b).unwrap();
    assert_eq!(&b, b"on a volume group");
    let tables = p.vg().metadata().names;
    assert!(tables
        .iter()
        .any(|t| t.trans_id == p.pool().transaction_id().0 && t.get("base").is_some()));
    drop(p);
    let p = VgPool::open(&[dir.path().to_owned()]).unwrap();
    assert_eq!(p.pool().volume("base").unwrap().id, id);
    let tables = p.dmsetup_table("lamina").unwrap();
    let last = tables.tables.last().unwrap();
    assert_eq!(last.name, "lamina-base");
    assert_eq!(last.lines, [format!("0 20971520 thin /dev/mapper/lamina {}", id.0)]);

    // The metadata region is a dm-thin metadata device thin_check accepts.
    let tmeta = p.vg().metadata_region();
    let copy = dir.path().join("tmeta.bin");
    let mut bytes = vec![0u8; tmeta.size() as usize];
    tmeta.read_at(&mut bytes, 0).unwrap();
    std::fs::write(&copy, &bytes).unwrap();
    let out = Command::new("thin_check")
        .arg(&copy)
        .output()
        .expect("thin_check is required (apt-get install thin-provisioning-tools)");
    assert!(
        out.status.success(),
        "thin_check: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn resize_grows_region_and_pool_together() {
    let dir = tempfile::tempdir().unwrap();
    let vg = small_group(dir.path(), 200, &["dm.thinp_percent=50", "dm.thinp_metapercent=20"]);
    let p = VgPool::over(vg).unwrap();
    let before = p.pool().data_usage().total.0;
    assert_eq!(before, 100);
    p.resize_data(Extents(30)).unwrap();
    assert_eq!(p.pool().data_usage().total, DataBlock(130));
    let meta_before = p.pool().metadata_usage().total.0;
    p.resize_metadata(Extents(4)).unwrap();
    assert_eq!(p.pool().metadata_usage().total.0, meta_before + 4 * EXT / 4096);
    drop(p);

    // A crash after the group grew but before the pool did: opening finishes the resize.
    let vg = VolumeGroup::open_dir(dir.path()).unwrap();
    vg.grow_data(Extents(10)).unwrap();
    drop(vg);
    let p = VgPool::over(VolumeGroup::open_dir(dir.path()).unwrap()).unwrap();
    assert_eq!(p.pool().data_usage().total, DataBlock(140));
}

#[test]
fn autoextend_grows_data_over_the_threshold_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let vg = small_group(dir.path(), 200, &["dm.thinp_percent=50", "dm.thinp_metapercent=20"]);
    let log = EventLog::new(&dir.path().join("events.jsonl"));
    let p = VgPool::over(vg).unwrap().with_event_log(EventLog::new(log.path()));
    p.pool().create_volume("v", Bytes::new(100 << 20)).unwrap();
    fill(&p, "v", 79);
    assert_eq!(p.autoextend_check().unwrap(), None, "79 % is under 80 %");
    fill(&p, "v", 80);
    let e = p.autoextend_check().unwrap().expect("80 % triggers");
    assert_eq!(
        (e.region.as_str(), e.action, e.extents),
        ("tdata", ExtendAction::Extended, Extents(20))
    );
    assert_eq!(p.pool().data_usage().total, DataBlock(120));
    assert_eq!(p.vg().data_region().size(), 120 * EXT);
    assert_eq!(p.autoextend_check().unwrap(), None, "80/120 is under the threshold");
    let logged = log.read().unwrap();
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0].extents, Extents(20));
}

#[test]
fn a_full_group_reports_no_space_with_backoff_and_the_free_space_gate_refuses() {
    let dir = tempfile::tempdir().unwrap();
    // 166 data + 34 metadata extents: nothing left to grow into.
    let vg = small_group(dir.path(), 200, &["dm.thinp_percent=83", "dm.thinp_metapercent=17"]);
    assert_eq!(vg.free_extents(), Extents(0));
    let p = VgPool::over(vg).unwrap();
    p.pool().create_volume("v", Bytes::new(100 << 20)).unwrap();
    p.check_min_free_space().unwrap();
    fill(&p, "v", 151);
    let e = p.autoextend_check().unwrap().expect("over the threshold");
    assert_eq!(e.action, ExtendAction::NoSpace);
    assert!(e.message.contains("insufficient free space"), "{}", e.message);
    assert_eq!(p.autoextend_check().unwrap(), None, "backing off one check");
    assert_eq!(p.autoextend_check().unwrap().map(|e| e.action), Some(ExtendAction::NoSpace));
    let err = p.check_min_free_space().unwrap_err();
    assert_eq!(
        err.to_string(),
        "Thin Pool has 15 free data blocks which is less than minimum required 16 free data \
         blocks. Create more free space in thin pool or use dm.min_free_space option to change \
         behavior"
    );
}
