//! Pool behaviour beyond the model test: concurrency, names tied to transactions, resizing,
//! zeroes and extents, FilePool.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use thinpool::io::{FaultPlan, FaultyDevice, MemDevice};
use thinpool::pool::{DirNameStore, ErrorKind, FilePool, Pool};
use thinpool::units::{Bytes, DataBlock, MetaBlock, Sectors, ThinId, VirtBlock};

const BS: u64 = 65536;

fn mem_pool(meta_mib: u64, data_blocks: u64) -> (Arc<MemDevice>, Arc<MemDevice>, Pool) {
    let meta = Arc::new(MemDevice::new(meta_mib << 20, "meta"));
    let data = Arc::new(MemDevice::new(data_blocks * BS, "data"));
    let pool = Pool::format(meta.clone(), data.clone(), Sectors(BS / 512)).unwrap();
    (meta, data, pool)
}

#[test]
fn concurrent_writers_lose_nothing_and_leak_nothing() {
    let (meta, _data, pool) = mem_pool(8, 4096);
    let pool = Arc::new(pool);
    pool.create_thin(ThinId(0)).unwrap();
    const THREADS: u64 = 6;
    const BLOCKS: u64 = 24;
    let stop = Arc::new(AtomicBool::new(false));
    // Background: commits and snapshots (which force copy-on-write under the writers).
    let bg = {
        let (pool, stop) = (pool.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut snap = 1;
            while !stop.load(Ordering::Relaxed) {
                pool.commit().unwrap();
                if snap < 40 {
                    pool.create_snap(ThinId(snap), ThinId(0)).unwrap();
                    snap += 1;
                }
                let mut buf = vec![0u8; 4096];
                pool.read(ThinId(0), 0, &mut buf).unwrap();
            }
        })
    };
    // Every thread owns one 512-byte slot in every block and writes it 300 times.
    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                for round in 0..300u64 {
                    let b = (round * 7 + t) % BLOCKS;
                    let v = (t as u8 + 1) ^ ((round as u8) << 3);
                    pool.write(ThinId(0), b * BS + t * 512, &[v; 512]).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    bg.join().unwrap();
    pool.commit().unwrap();
    pool.self_check().unwrap();
    // The last write of each thread to each block is what reads back.
    for t in 0..THREADS {
        for b in 0..BLOCKS {
            let last = (0..300u64).filter(|r| (r * 7 + t) % BLOCKS == b).max().unwrap();
            let v = (t as u8 + 1) ^ ((last as u8) << 3);
            let mut buf = [0u8; 512];
            pool.read(ThinId(0), b * BS + t * 512, &mut buf).unwrap();
            assert_eq!(buf, [v; 512], "thread {t} block {b}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    support::thin_check(&support::engine::image_file(dir.path(), "m", &meta.snapshot()));
}

#[test]
#[allow(clippy::single_range_in_vec_init)]
fn names_follow_the_durable_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(FaultyDevice::new(
        Arc::new(MemDevice::new(4 << 20, "meta")),
        FaultPlan::default(),
    ));
    let data = Arc::new(MemDevice::new(64 * BS, "data"));
    let store = || Box::new(DirNameStore::new(dir.path()));
    let pool = Pool::format_with_names(meta.clone(), data.clone(), Sectors(128), store()).unwrap();
    let base = pool.create_volume("base", Bytes::new(10 * BS)).unwrap();
    pool.write(base, 0, b"hello").unwrap();
    pool.commit().unwrap();
    let t1 = pool.transaction_id();
    pool.snapshot_volume("base", "snap-1").unwrap();
    pool.remove_volume("base").unwrap();
    // The commit writes its blocks and its name table, then the superblock write fails: the
    // durable state is still t1, and so must be the names.
    meta.set_plan(FaultPlan { fail_writes: vec![0..4096], ..FaultPlan::default() });
    let e = pool.commit().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert_eq!(pool.create_volume("x", Bytes::new(BS)).unwrap_err().kind(), ErrorKind::ReadOnly);
    drop(pool);
    meta.set_plan(FaultPlan::default());
    let pool = Pool::open_with_names(meta.clone(), data.clone(), store()).unwrap();
    assert_eq!(pool.transaction_id(), t1);
    let names: Vec<String> = pool.volumes().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["base"]);
    let mut buf = [0u8; 5];
    pool.read(base, 0, &mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    // A successful commit moves both on together.
    pool.snapshot_volume("base", "snap-1").unwrap();
    pool.commit().unwrap();
    drop(pool);
    let pool = Pool::open_with_names(meta, data, store()).unwrap();
    assert!(pool.transaction_id() > t1);
    assert_eq!(pool.volumes().unwrap().len(), 2);
    pool.self_check().unwrap();
}

#[test]
fn file_pool_names_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let pool = FilePool::create(dir.path(), Bytes::new(256 * BS), None, Sectors(128)).unwrap();
    assert_eq!(std::fs::metadata(dir.path().join("metadata")).unwrap().len(), 2 << 20);
    let a = pool.create_volume("a", Bytes::new(8 * BS)).unwrap();
    pool.write(a, 3, b"abc").unwrap();
    let b = pool.snapshot_volume("a", "b").unwrap();
    pool.write(b, 3, b"xyz").unwrap();
    assert_eq!(pool.create_volume("a", Bytes::new(BS)).unwrap_err().kind(), ErrorKind::Exists);
    assert_eq!(pool.create_volume("-bad", Bytes::new(BS)).unwrap_err().kind(), ErrorKind::Invalid);
    assert_eq!(pool.write(a, 8 * BS - 1, b"zz").unwrap_err().kind(), ErrorKind::OutOfRange);
    pool.flush().unwrap();
    pool.create_volume("never-committed", Bytes::new(BS)).unwrap();
    drop(pool);
    let e = FilePool::create(dir.path(), Bytes::new(BS), None, Sectors(128))
        .err()
        .expect("no overwrite");
    assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
    assert!(e.to_string().contains("already holds a pool"), "{e}");

    let pool = FilePool::open(dir.path()).unwrap();
    let vols = pool.volumes().unwrap();
    let names: Vec<&str> = vols.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "uncommitted names vanish with their transaction");
    assert_eq!(vols[0].size, Bytes::new(8 * BS));
    assert_eq!(vols[1].id, b);
    let mut buf = [0u8; 3];
    pool.read(pool.volume("b").unwrap().id, 3, &mut buf).unwrap();
    assert_eq!(&buf, b"xyz");
    pool.remove_volume("a").unwrap();
    pool.flush().unwrap();
    pool.self_check().unwrap();
    drop(pool);
    let pool = FilePool::open(dir.path()).unwrap();
    assert_eq!(pool.volumes().unwrap().len(), 1);
    assert_eq!(pool.volume("a").unwrap_err().kind(), ErrorKind::NotFound);
    support::thin_check(&dir.path().join("metadata"));
}

#[test]
fn default_metadata_size_follows_dm_thin() {
    let s = Sectors(128);
    assert_eq!(FilePool::default_metadata_size(Bytes::ZERO, s), Bytes::new(2 << 20));
    // 48 bytes per 64 KiB block: 1 TiB of data -> 768 MiB of metadata.
    assert_eq!(FilePool::default_metadata_size(Bytes::new(1 << 40), s), Bytes::new(768 << 20));
    assert_eq!(
        FilePool::default_metadata_size(Bytes::new(1 << 50), s),
        Bytes::new(4_161_600 * 4096)
    );
}

#[test]
fn zeroes_discard_and_extents() {
    let (_m, _d, pool) = mem_pool(4, 64);
    pool.create_thin(ThinId(1)).unwrap();
    pool.write(ThinId(1), 0, &vec![0u8; 3 * BS as usize]).unwrap();
    assert_eq!(pool.data_usage().used, DataBlock(0), "all-zero writes allocate nothing");
    pool.write(ThinId(1), BS + 10, &[5u8; 10]).unwrap();
    let mut blk = vec![1u8; BS as usize];
    pool.read(ThinId(1), BS, &mut blk).unwrap();
    assert!(blk[..10].iter().all(|&b| b == 0) && blk[20..].iter().all(|&b| b == 0));
    pool.write(ThinId(1), 3 * BS, &vec![7u8; 2 * BS as usize]).unwrap();
    assert_eq!(
        pool.extents(ThinId(1), 0, 6 * BS).unwrap(),
        vec![(BS, false), (BS, true), (BS, false), (2 * BS, true), (BS, false)]
    );
    assert_eq!(pool.extents(ThinId(1), BS / 2, BS).unwrap(), vec![(BS / 2, false), (BS / 2, true)]);
    // Partial zeroing writes zeros; full blocks are unmapped when allowed.
    pool.write_zeroes(ThinId(1), 3 * BS + 100, BS, true).unwrap();
    let mut buf = vec![1u8; BS as usize];
    pool.read(ThinId(1), 3 * BS + 100, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    assert_eq!(pool.device_details(ThinId(1)).unwrap().mapped_blocks, 3, "no block was whole");
    pool.write_zeroes(ThinId(1), 3 * BS, 2 * BS, false).unwrap();
    assert_eq!(pool.device_details(ThinId(1)).unwrap().mapped_blocks, 3, "kept mapped");
    pool.write_zeroes(ThinId(1), 3 * BS, 2 * BS, true).unwrap();
    assert_eq!(pool.device_details(ThinId(1)).unwrap().mapped_blocks, 1);
    pool.discard(ThinId(1), BS + 1, BS).unwrap();
    assert_eq!(pool.device_details(ThinId(1)).unwrap().mapped_blocks, 1, "partial: kept");
    pool.discard(ThinId(1), BS, BS).unwrap();
    assert!(pool.lookup(ThinId(1), VirtBlock(1)).unwrap().is_none());
    pool.commit().unwrap();
    pool.self_check().unwrap();
    assert_eq!(pool.data_usage().used, DataBlock(0));
}

#[test]
fn grow_data_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, data, pool) = mem_pool(2, 4);
    pool.create_thin(ThinId(1)).unwrap();
    let err = pool.write(ThinId(1), 0, &vec![1u8; 5 * BS as usize]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoSpace);
    pool.grow_data(DataBlock(20_000)).unwrap(); // crosses into a second data bitmap
    pool.grow_metadata(MetaBlock(20_000)).unwrap(); // and a second metadata bitmap
    pool.write(ThinId(1), 0, &vec![1u8; 5 * BS as usize]).unwrap();
    pool.write(ThinId(1), 19_999 * BS, &[2u8; 1]).unwrap();
    pool.commit().unwrap();
    pool.self_check().unwrap();
    assert_eq!(pool.data_usage().total, DataBlock(20_000));
    assert_eq!(pool.metadata_usage().total, MetaBlock(20_000));
    support::thin_check(&support::engine::image_file(dir.path(), "m", &meta.snapshot()));
    drop(pool);
    let pool = Pool::open(meta, data).unwrap();
    pool.self_check().unwrap();
    let mut b = [0u8; 1];
    pool.read(ThinId(1), 19_999 * BS, &mut b).unwrap();
    assert_eq!(b, [2]);
}

#[test]
fn read_only_and_needs_check_are_refused_for_writing() {
    let (meta, data, pool) = mem_pool(4, 8);
    pool.create_thin(ThinId(1)).unwrap();
    pool.commit().unwrap();
    drop(pool);
    let ro = Pool::open_read_only(meta.clone(), data.clone()).unwrap();
    assert_eq!(ro.create_thin(ThinId(2)).unwrap_err().kind(), ErrorKind::ReadOnly);
    assert_eq!(ro.write(ThinId(1), 0, &[1]).unwrap_err().kind(), ErrorKind::ReadOnly);
    drop(ro);
    // Set needs_check (flags bit 0) and re-seal the superblock.
    use thinpool::io::BlockDevice;
    use thinpool::pdata::disk;
    let mut sb = [0u8; 4096];
    meta.read_at(&mut sb, 0).unwrap();
    disk::put_u32(&mut sb, 4, 1);
    disk::seal(&mut sb, disk::BlockKind::Superblock);
    meta.write_at(&sb, 0).unwrap();
    let e = Pool::open(meta.clone(), data.clone()).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::ReadOnly);
    assert!(e.to_string().contains("needs_check"), "{e}");
    Pool::open_read_only(meta, data).unwrap();
}

#[test]
#[allow(clippy::single_range_in_vec_init)]
fn io_errors_are_reported_and_never_corrupt() {
    let meta = Arc::new(FaultyDevice::new(
        Arc::new(MemDevice::new(4 << 20, "meta")),
        FaultPlan::default(),
    ));
    let data = Arc::new(FaultyDevice::new(
        Arc::new(MemDevice::new(64 * BS, "data")),
        FaultPlan::default(),
    ));
    let pool = Pool::format(meta.clone(), data.clone(), Sectors(BS / 512)).unwrap();
    pool.create_thin(ThinId(1)).unwrap();
    pool.write(ThinId(1), 0, &[3u8; 4096]).unwrap();
    pool.commit().unwrap();
    let block = pool.lookup(ThinId(1), VirtBlock(0)).unwrap().unwrap().block.0;
    // A failing data read: Io with the block and device in the message; the pool carries on.
    data.set_plan(FaultPlan {
        fail_reads: vec![block * BS..(block + 1) * BS],
        ..FaultPlan::default()
    });
    let e = pool.read(ThinId(1), 0, &mut [0u8; 512]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Io);
    assert!(e.to_string().contains(&format!("data block {block}")), "{e}");
    // A failing data write of a new block: Io, nothing mapped, nothing leaked.
    data.set_plan(FaultPlan { fail_writes: vec![0..64 * BS], ..FaultPlan::default() });
    assert_eq!(pool.write(ThinId(1), BS, &[4u8; 100]).unwrap_err().kind(), ErrorKind::Io);
    assert!(pool.lookup(ThinId(1), VirtBlock(1)).unwrap().is_none());
    data.set_plan(FaultPlan::default());
    pool.write(ThinId(1), 2 * BS, &[5u8; 100]).unwrap();
    pool.commit().unwrap();
    pool.self_check().unwrap();
    // Metadata writes failing during a commit: Io, the pool turns read-only, and the device
    // still holds the previous commit.
    pool.write(ThinId(1), 3 * BS, &[6u8; 100]).unwrap();
    meta.set_plan(FaultPlan { fail_writes: vec![4096..4 << 20], ..FaultPlan::default() });
    assert_eq!(pool.commit().unwrap_err().kind(), ErrorKind::Io);
    assert_eq!(pool.write(ThinId(1), 0, &[1]).unwrap_err().kind(), ErrorKind::ReadOnly);
    drop(pool);
    meta.set_plan(FaultPlan::default());
    let pool = Pool::open(meta, data).unwrap();
    pool.self_check().unwrap();
    assert!(pool.lookup(ThinId(1), VirtBlock(2)).unwrap().is_some());
    assert!(pool.lookup(ThinId(1), VirtBlock(3)).unwrap().is_none(), "uncommitted");
}

#[test]
fn resize_volume_unmaps_past_the_new_end() {
    let dir = tempfile::tempdir().unwrap();
    let pool = FilePool::create(dir.path(), Bytes::new(64 * BS), None, Sectors(128)).unwrap();
    let v = pool.create_volume("v", Bytes::new(4 * BS)).unwrap();
    pool.write(v, 0, &vec![9u8; 4 * BS as usize]).unwrap();
    pool.resize_volume("v", Bytes::new(2 * BS + 10)).unwrap();
    assert_eq!(pool.volume("v").unwrap().mapped(), DataBlock(3), "the partial last block stays");
    assert_eq!(pool.write(v, 3 * BS, &[1]).unwrap_err().kind(), ErrorKind::OutOfRange);
    pool.resize_volume("v", Bytes::new(4 * BS)).unwrap();
    let mut buf = vec![1u8; BS as usize];
    pool.read(v, 3 * BS, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "grown space reads as zeros");
    pool.flush().unwrap();
    pool.self_check().unwrap();
    drop(pool);
    assert_eq!(FilePool::open(dir.path()).unwrap().volume("v").unwrap().size, Bytes::new(4 * BS));
}
