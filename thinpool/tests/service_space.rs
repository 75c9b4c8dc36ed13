//! The service under space pressure: autoextend while writing, writes waiting on a full
//! group and released by snapshot removal, discard and a new device; timeouts and
//! error_if_no_space; file pools growing their data file.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::service::*;
use support::wait_for;
use thinpool::io::Payload;
use thinpool::pool::FilePool;
use thinpool::pool::Mode;
use thinpool::service::{ErrorKind, PoolSource, Service, ServiceOptions};
use thinpool::units::{Bytes, DataBlock, Sectors};
use thinpool::vg::autoextend::ExtendAction;

#[test]
fn writer_past_the_threshold_sees_the_data_region_grow_by_20_percent() {
    let dir = tempfile::tempdir().unwrap();
    // 200 extents: data 100, metadata 40, 60 free.
    let svc = group_service(dir.path(), 200, &["dm.thinp_percent=50", "dm.thinp_metapercent=20"]);
    svc.set_no_space_policy(false, Duration::from_secs(30));
    svc.start_autoextend().unwrap();
    assert_eq!(svc.pool().data_usage().total, DataBlock(100));
    let h = open_new(&svc, "v");
    write_blocks(&h, 0..95, 1);
    // The kick at 80 blocks grows the region once by 20 % (95 used never needs more).
    // The log line is appended after the resize: wait for it.
    wait_for("the extension event", Duration::from_secs(10), || !events(dir.path()).is_empty());
    assert_eq!(svc.pool().data_usage().total, DataBlock(120));
    let ev = events(dir.path());
    let ext: Vec<_> = ev.iter().filter(|e| e.action == ExtendAction::Extended).collect();
    assert_eq!(ext.len(), 1, "{ev:?}");
    assert_eq!(
        (ext[0].region.as_str(), ext[0].old_bytes, ext[0].new_bytes),
        ("tdata", Bytes::new(100 * EXT), Bytes::new(120 * EXT))
    );
    assert!(ext[0].used_percent >= 80);
    for i in [0, 50, 94] {
        let mut b = vec![0u8; EXT as usize];
        h.read(i * EXT, &mut b).unwrap();
        assert_eq!(b, pattern(i, 1));
    }
}

/// Writes block `i` on another thread and reports how it went.
fn spawn_write(
    svc: &Arc<Service>,
    i: u64,
) -> std::thread::JoinHandle<thinpool::service::Result<()>> {
    let svc = svc.clone();
    std::thread::spawn(move || {
        let h = svc.open_volume("a")?;
        h.write(i * EXT, &Payload::mem(&pattern(i, 2)), Mode::Full).map(drop)
    })
}

fn check_blocks(svc: &Service, written: &[(u64, u8)]) {
    let h = svc.open_volume("a").unwrap();
    let mut b = vec![0u8; EXT as usize];
    for &(i, gen) in written {
        h.read(i * EXT, &mut b).unwrap();
        assert!(b == pattern(i, gen), "block {i} changed");
    }
}

#[test]
fn full_group_queues_writes_until_space_is_freed_or_added() {
    let dir = tempfile::tempdir().unwrap();
    // data 120, metadata 40, 40 free: autoextend takes the free extents, then the group is full.
    let svc = Arc::new(group_service(
        dir.path(),
        200,
        &["dm.thinp_percent=60", "dm.thinp_metapercent=20", "dm.min_free_space=0%"],
    ));
    svc.start_autoextend().unwrap();
    svc.create_volume("scratch", Bytes::new(1 << 30)).unwrap();
    {
        let h = svc.open_volume("scratch").unwrap();
        write_blocks(&h, 0..10, 9);
    }
    svc.snapshot_volume("scratch", "snap").unwrap();
    svc.remove_volume("scratch").unwrap();
    svc.create_volume("a", Bytes::new(1 << 30)).unwrap();

    // Fill: writes that find the pool full wait (autoextend wakes them) until the group has
    // no extent left; the last one times out after no_space_timeout.
    svc.set_no_space_policy(false, Duration::from_secs(4));
    let h = svc.open_volume("a").unwrap();
    let mut written = Vec::new();
    let mut i = 0;
    let (err, took) = loop {
        let t = Instant::now();
        match h.write(i * EXT, &Payload::mem(&pattern(i, 1)), Mode::Full) {
            Ok(_) => written.push((i, 1u8)),
            Err(e) => break (e, t.elapsed()),
        }
        i += 1;
        assert!(i < 1000, "the pool never filled");
    };
    assert_eq!(err.kind(), ErrorKind::NoSpace, "{err}");
    assert!(err.to_string().contains("no_space_timeout"), "{err}");
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(20), "{took:?}");
    let vg = svc.vg_pool().unwrap();
    assert_eq!(vg.vg().free_extents().0, 0);
    assert_eq!(svc.pool().data_usage().total, DataBlock(160), "120 + 40 free extents");
    assert_eq!(written.len(), 150, "160 blocks less the snapshot's 10");
    let ev = events(dir.path());
    assert!(ev.iter().any(|e| e.action == ExtendAction::NoSpace), "{ev:?}");

    // error_if_no_space: at once.
    svc.set_no_space_policy(true, Duration::from_secs(60));
    let t = Instant::now();
    let e = h.write(i * EXT, &Payload::mem(&pattern(i, 1)), Mode::Full).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoSpace);
    assert!(e.to_string().contains("error_if_no_space"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));

    // Existing data intact; the metadata is clean.
    check_blocks(&svc, &written);
    svc.commit().unwrap();
    thin_check_device(svc.metadata_device().unwrap().as_ref(), dir.path(), &[]);

    // Removing the snapshot frees its 10 blocks: a waiting write completes.
    svc.set_no_space_policy(false, Duration::from_secs(30));
    let w = spawn_write(&svc, i);
    wait_for("a writer to wait for space", Duration::from_secs(10), || svc.waiting_writers() == 1);
    svc.remove_volume("snap").unwrap();
    w.join().unwrap().unwrap();
    written.push((i, 2));
    i += 1;
    for _ in 0..9 {
        h.write(i * EXT, &Payload::mem(&pattern(i, 1)), Mode::Full).unwrap();
        written.push((i, 1));
        i += 1;
    }

    // Discarding blocks 0 and 1 makes room for a waiting write.
    let w = spawn_write(&svc, i);
    wait_for("a writer to wait for space", Duration::from_secs(10), || svc.waiting_writers() == 1);
    h.discard(0, 2 * EXT).unwrap();
    w.join().unwrap().unwrap();
    written.retain(|&(b, _)| b >= 2);
    written.push((i, 2));
    i += 1;
    h.write(i * EXT, &Payload::mem(&pattern(i, 1)), Mode::Full).unwrap();
    written.push((i, 1));
    i += 1;

    // A new device: autoextend grows into it and the waiting write completes.
    let w = spawn_write(&svc, i);
    wait_for("a writer to wait for space", Duration::from_secs(10), || svc.waiting_writers() == 1);
    let dev1 = device(dir.path(), "dev1", 50);
    let ev = svc.extend_device(&dev1).unwrap();
    w.join().unwrap().unwrap();
    written.push((i, 2));
    assert!(
        ev.iter().any(|e| e.action == ExtendAction::Extended)
            || events(dir.path()).iter().filter(|e| e.action == ExtendAction::Extended).count()
                >= 3,
        "no extension into the new device: {ev:?}"
    );
    assert!(svc.pool().data_usage().total.0 > 160);

    check_blocks(&svc, &written);
    let mut b = vec![0u8; 2 * EXT as usize];
    h.read(0, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0), "discarded blocks read as zeros");
    svc.commit().unwrap();
    thin_check_device(svc.metadata_device().unwrap().as_ref(), dir.path(), &[]);
}

#[test]
fn file_pool_grows_its_data_file_up_to_the_maximum() {
    let dir = tempfile::tempdir().unwrap();
    let pd = dir.path().join("pool");
    FilePool::create(&pd, Bytes::new(100 * EXT), None, Sectors(128)).unwrap();
    let opts = ServiceOptions { file_data_max: Some(Bytes::new(130 * EXT)), ..Default::default() };
    let svc = Service::open(&PoolSource::detect(std::slice::from_ref(&pd)), opts).unwrap();
    svc.set_no_space_policy(false, Duration::from_secs(4));
    svc.start_autoextend().unwrap();
    let h = open_new(&svc, "v");
    write_blocks(&h, 0..85, 1);
    wait_for("the data file to grow", Duration::from_secs(10), || {
        svc.pool().data_usage().total.0 == 120
    });
    assert_eq!(std::fs::metadata(pd.join("data")).unwrap().len(), 120 * EXT);
    // Up to the maximum, then writes time out.
    let mut n = 85;
    let err = loop {
        match h.write(n * EXT, &Payload::mem(&pattern(n, 1)), Mode::Full) {
            Ok(_) => n += 1,
            Err(e) => break e,
        }
        assert!(n < 200);
    };
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    assert_eq!((n, svc.pool().data_usage().total.0), (130, 130));
    let ev = events(&pd);
    assert_eq!(ev.iter().filter(|e| e.action == ExtendAction::Extended).count(), 2, "{ev:?}");
    assert!(ev.iter().any(|e| e.action == ExtendAction::NoSpace), "{ev:?}");
}
