//! The service's volume rules: dm.min_free_space with Docker's message, deferred deletion
//! (and "device is busy" without it), docker-info status and lvs-like listing, and metadata
//! exhaustion turning the pool read-only with needs_check.

mod support;

use std::time::Duration;
use support::service::*;
use support::thin_check_file;
use thinpool::io::Payload;
use thinpool::io::{BlockDevice, FileDevice};
use thinpool::pool::{ErrorKind as PoolKind, FilePool, Mode};
use thinpool::service::{self, ErrorKind, PoolSource, Service, ServiceOptions};
use thinpool::units::{Bytes, DataBlock, Sectors};
use thinpool::vg::PoolConfig;

fn file_service(
    dir: &std::path::Path,
    blocks: u64,
    opts: &[&str],
) -> (std::path::PathBuf, Service) {
    let pd = dir.join("pool");
    FilePool::create(&pd, Bytes::new(blocks * EXT), None, Sectors(128)).unwrap();
    let config = PoolConfig::from_opts(opts.iter().copied()).unwrap();
    let o = ServiceOptions { config: Some(config), ..Default::default() };
    let svc = Service::open(&PoolSource::Dir(pd.clone()), o).unwrap();
    svc.set_no_space_policy(true, Duration::from_secs(1));
    (pd, svc)
}

#[test]
fn min_free_space_refuses_new_volumes_with_dockers_message() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = file_service(dir.path(), 100, &[]);
    let h = open_new(&svc, "a");
    write_blocks(&h, 0..95, 1);
    let msg = "Thin Pool has 5 free data blocks which is less than minimum required 10 free data \
               blocks. Create more free space in thin pool or use dm.min_free_space option to \
               change behavior";
    let e = svc.create_volume("b", Bytes::new(1 << 20)).unwrap_err();
    assert_eq!((e.kind(), e.context()), (ErrorKind::MinFreeSpace, msg));
    let e = svc.snapshot_volume("a", "s").unwrap_err();
    assert_eq!((e.kind(), e.context()), (ErrorKind::MinFreeSpace, msg));
    let e = svc.volume("b").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(units::chain(&e).contains("volume \"b\" does not exist"), "{e}");
    // Writes inside existing volumes are not gated (Docker's rule).
    h.write(95 * EXT, &Payload::mem(&pattern(95, 1)), Mode::Full).unwrap();
    // Freeing space lifts the refusal.
    h.discard(0, 50 * EXT).unwrap();
    svc.commit().unwrap();
    svc.create_volume("b", Bytes::new(1 << 20)).unwrap();
}

#[test]
fn deferred_deletion_hides_counts_and_deletes_on_last_close() {
    let dir = tempfile::tempdir().unwrap();
    let (pd, svc) = file_service(dir.path(), 100, &[]);
    let h = open_new(&svc, "v");
    let h2 = svc.open_volume("v").unwrap();
    write_blocks(&h, 0..5, 1);
    svc.commit().unwrap();
    assert_eq!(svc.pool().data_usage().used, DataBlock(5));
    assert!(svc.remove_volume("v").unwrap(), "deferred");
    assert!(svc.volumes().unwrap().is_empty());
    assert_eq!(svc.open_volume("v").err().map(|e| e.kind()), Some(ErrorKind::NotFound));
    assert_eq!(svc.status().deferred_deleted_device_count, 1);
    assert!(svc.list().unwrap().iter().all(|r| r.name != "v"));
    let saved = std::fs::read_to_string(pd.join("deferred.json")).unwrap();
    assert_eq!(saved, r#"["v"]"#);
    // Open handles keep working on the data.
    let mut b = vec![0u8; EXT as usize];
    h2.read(EXT, &mut b).unwrap();
    assert_eq!(b, pattern(1, 1));
    drop(h);
    assert_eq!(svc.status().deferred_deleted_device_count, 1, "one handle still open");
    assert!(svc.pool().volume("v").is_ok());
    drop(h2);
    let e = svc.pool().volume("v").unwrap_err();
    assert_eq!(e.kind(), PoolKind::NotFound, "deleted with the last handle: {e}");
    assert_eq!(svc.pool().data_usage().used, DataBlock(0), "space freed after the commit");
    assert_eq!(svc.status().deferred_deleted_device_count, 0);
    assert_eq!(std::fs::read_to_string(pd.join("deferred.json")).unwrap(), "[]");
    // The name can be used again.
    svc.create_volume("v", Bytes::new(1 << 20)).unwrap();
}

#[test]
fn without_deferral_removing_an_open_volume_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let (_, svc) = file_service(dir.path(), 100, &["dm.use_deferred_deletion=false"]);
    let h = open_new(&svc, "v");
    let e = svc.remove_volume("v").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy);
    assert!(e.to_string().contains("device is busy"), "{e}");
    assert!(!svc.status().deferred_deletion_enabled);
    drop(h);
    assert!(!svc.remove_volume("v").unwrap());
    assert!(svc.volumes().unwrap().is_empty());
}

#[test]
fn a_deferred_deletion_interrupted_by_a_restart_finishes_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let (pd, svc) = file_service(dir.path(), 100, &[]);
    svc.create_volume("v", Bytes::new(1 << 30)).unwrap();
    svc.create_volume("keep", Bytes::new(1 << 30)).unwrap();
    let h = svc.open_volume("v").unwrap();
    h.write(0, &Payload::mem(&pattern(0, 1)), Mode::Full).unwrap();
    assert!(svc.remove_volume("v").unwrap());
    // The daemon dies with the handle open.
    std::mem::forget(h);
    drop(svc);
    let svc = Service::open(&PoolSource::Dir(pd.clone()), ServiceOptions::default()).unwrap();
    let e = svc.pool().volume("v").unwrap_err();
    assert_eq!(e.kind(), PoolKind::NotFound, "{e}");
    assert_eq!(
        svc.volumes().unwrap().iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
        ["keep"]
    );
    assert_eq!(svc.pool().data_usage().used, DataBlock(0));
}

#[test]
fn status_has_every_docker_info_field() {
    let dir = tempfile::tempdir().unwrap();
    let svc = group_service(dir.path(), 200, &["dm.thinp_percent=50", "dm.thinp_metapercent=20"]);
    svc.create_volume("base", Bytes::new(10 << 20)).unwrap();
    let h = svc.open_volume("base").unwrap();
    h.write(0, &Payload::mem(b"XFSB"), Mode::Full).unwrap();
    let s = svc.status();
    assert_eq!(s.pool_name, "lamina-thinpool");
    assert_eq!(s.pool_blocksize, "65.54kB");
    assert_eq!(s.base_device_size, "10.74GB");
    assert_eq!(s.backing_filesystem, "xfs");
    assert_eq!(s.data_space_used, "65.54kB");
    assert_eq!(s.data_space_total, "6.554MB");
    assert_eq!(s.data_space_available, "6.488MB");
    assert_eq!(s.metadata_space_total, "2.621MB");
    assert_eq!(s.thin_pool_minimum_free_space, "655.4kB");
    assert_eq!(s.data_file, None);
    assert!(!s.udev_sync_supported);
    assert!(s.deferred_removal_enabled && s.deferred_deletion_enabled);
    assert!(s.library_version.starts_with("lamina thinpool "));
    let json = serde_json::to_value(&s).unwrap();
    let keys: Vec<&str> = json.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    for k in [
        "Pool Name",
        "Pool Blocksize",
        "Base Device Size",
        "Backing Filesystem",
        "Data Space Used",
        "Data Space Total",
        "Data Space Available",
        "Metadata Space Used",
        "Metadata Space Total",
        "Metadata Space Available",
        "Thin Pool Minimum Free Space",
        "Udev Sync Supported",
        "Deferred Removal Enabled",
        "Deferred Deletion Enabled",
        "Deferred Deleted Device Count",
        "Library Version",
    ] {
        assert!(keys.contains(&k), "{k} missing from {keys:?}");
    }
    assert!(!keys.contains(&"Data file"), "omitted for a group, as thinpooldev");
    let text = s.to_string();
    assert!(text.contains(" Pool Blocksize: 65.54kB\n"), "{text}");
    assert!(text.contains(" Udev Sync Supported: false\n"), "{text}");
    let rows = svc.list().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].kind, rows[0].data_percent), ("pool", 1.0));
    assert_eq!((rows[1].name.as_str(), rows[1].open), ("base", 1));
    assert!((rows[1].data_percent - 0.625).abs() < 1e-9, "{}", rows[1].data_percent);

    // A file pool names its files.
    let (pd, fsvc) = file_service(dir.path(), 100, &[]);
    let s = fsvc.status();
    assert_eq!(s.data_file.as_deref(), Some(pd.join("data").to_str().unwrap()));
    assert_eq!(s.metadata_file.as_deref(), Some(pd.join("metadata").to_str().unwrap()));
    assert!(s.to_string().contains(" Data file: "));
    assert_eq!(s.pool_name, "lamina-pool-pool");
}

#[test]
fn metadata_exhaustion_makes_the_pool_read_only_with_needs_check() {
    let dir = tempfile::tempdir().unwrap();
    let pd = dir.path().join("pool");
    // 64 metadata blocks (the smallest the engine formats): a few thousand mappings.
    FilePool::create(&pd, Bytes::new(1 << 30), Some(Bytes::new(64 * 4096)), Sectors(128)).unwrap();
    let svc = Service::open(&PoolSource::Dir(pd.clone()), ServiceOptions::default()).unwrap();
    svc.create_volume("v", Bytes::new(1 << 40)).unwrap();
    let h = svc.open_volume("v").unwrap();
    let mut ok = Vec::new();
    let err = loop {
        // Spread blocks so every leaf gets its share; 4 KiB writes still map whole blocks.
        let i = ok.len() as u64 * 7;
        match h.write(i * EXT, &Payload::mem(&i.to_le_bytes()), Mode::Full) {
            Ok(_) => ok.push(i),
            Err(e) => break e,
        }
        if ok.len() % 256 == 0 {
            h.flush().unwrap();
        }
        assert!(ok.len() < 100_000, "metadata never filled");
    };
    assert_eq!(err.kind(), ErrorKind::ReadOnly, "{err}");
    assert!(err.to_string().contains("metadata"), "{err}");
    assert!(svc.read_only().is_some());
    // Reads go on; every acknowledged write is there.
    let mut b = [0u8; 8];
    for &i in &ok {
        h.read(i * EXT, &mut b).unwrap();
        assert_eq!(u64::from_le_bytes(b), i, "block {i}");
    }
    // Every change is refused, even an overwrite in place.
    let e = h.write(ok[0] * EXT, &Payload::mem(b"x"), Mode::Full).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert_eq!(
        svc.create_volume("w", Bytes::new(1 << 20)).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    h.flush().unwrap();
    let meta: std::sync::Arc<dyn BlockDevice> =
        std::sync::Arc::new(FileDevice::open(&pd.join("metadata")).unwrap());
    assert!(service::needs_check(meta.as_ref()).unwrap());
    drop(h);
    drop(svc);

    // Reopened, the pool serves reads and refuses writes until the metadata is checked.
    let svc = Service::open(&PoolSource::Dir(pd.clone()), ServiceOptions::default()).unwrap();
    assert!(svc.read_only().unwrap().contains("needs_check"), "{:?}", svc.read_only());
    let h = svc.open_volume("v").unwrap();
    h.read(ok[1] * EXT, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), ok[1]);
    assert_eq!(
        h.write(ok[1] * EXT, &Payload::mem(b"no"), Mode::Full).unwrap_err().kind(),
        ErrorKind::ReadOnly
    );
    assert_eq!(svc.remove_volume("v").unwrap_err().kind(), ErrorKind::ReadOnly);
    drop(h);
    drop(svc);
    thin_check_file(&pd.join("metadata"), &[]);
    let data: std::sync::Arc<dyn BlockDevice> =
        std::sync::Arc::new(FileDevice::open(&pd.join("data")).unwrap());
    service::check_and_clear(meta.clone(), data).unwrap();
    assert!(!service::needs_check(meta.as_ref()).unwrap());
    let svc = Service::open(&PoolSource::Dir(pd.clone()), ServiceOptions::default()).unwrap();
    let h = svc.open_volume("v").unwrap();
    let last = *ok.last().unwrap();
    h.read(last * EXT, &mut b).unwrap();
    assert_eq!(u64::from_le_bytes(b), last);
    // Mapped, unshared blocks can be overwritten again (no metadata needed).
    h.write(ok[0] * EXT, &Payload::mem(b"again"), Mode::Full).unwrap();
}
