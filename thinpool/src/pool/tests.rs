//! Pool unit tests: the golden fresh image, the basic lifecycle, reopen, errors.
#![allow(clippy::unwrap_used)]

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use super::*;
use crate::io::{BlockDevice, DirectAt, MemDevice, Payload, Written};
use crate::units::{DataBlock, MetaBlock, ThinId, VirtBlock};

pub(crate) fn mem_pool(meta_mib: u64, data_blocks: u64) -> (Arc<MemDevice>, Arc<MemDevice>, Pool) {
    let meta = Arc::new(MemDevice::new(meta_mib << 20, "meta"));
    let data = Arc::new(MemDevice::new(data_blocks * 65536, "data"));
    let pool = Pool::format(meta.clone(), data.clone(), Sectors(128)).unwrap();
    (meta, data, pool)
}

/// A memory pool of 64 blocks with one empty thin; returns it, the thin and the block size.
fn pool_with_thin() -> (Pool, ThinId, u64) {
    let (_meta, _data, pool) = mem_pool(4, 64);
    let id = ThinId(1);
    pool.create_thin(id).unwrap();
    let bs = pool.block_bytes();
    (pool, id, bs)
}

fn block(dev: &MemDevice, b: u64) -> Vec<u8> {
    let mut out = vec![0u8; 4096];
    dev.read_at(&mut out, b * 4096).unwrap();
    out
}

#[test]
fn fresh_pool_matches_the_golden_image() {
    let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
    let data = Arc::new(MemDevice::new(0, "data"));
    Pool::format(meta.clone(), data, Sectors(128)).unwrap();
    let want = [
        0xCAFF_9186u32,
        0x18E0_660A,
        0xC360_E452,
        0xA19F_6375,
        0x787F_52C8,
        0x41BF_AA04,
        0xCB3D_DA35,
        0xB1C8_1346,
    ];
    for (b, csum) in want.into_iter().enumerate() {
        let got = disk::get_u32(&block(&meta, b as u64), 0);
        assert_eq!(got, csum, "block {b}: checksum {got:#010x}, want {csum:#010x}");
    }
    assert!(block(&meta, 8).iter().all(|&x| x == 0), "nothing beyond block 7");
}

#[test]
fn write_snapshot_write_read_reopen() {
    let (meta, data, pool) = mem_pool(4, 64);
    let bs = pool.block_bytes();
    pool.create_thin(ThinId(1)).unwrap();
    let a = vec![0xA1u8; 3 * bs as usize];
    pool.write(ThinId(1), 1000, &a).unwrap();
    let mut back = vec![0u8; a.len() + 2000];
    pool.read(ThinId(1), 0, &mut back).unwrap();
    assert!(back[..1000].iter().all(|&b| b == 0));
    assert_eq!(&back[1000..1000 + a.len()], &a[..]);
    assert!(back[1000 + a.len()..].iter().all(|&b| b == 0));
    assert_eq!(pool.device_details(ThinId(1)).unwrap().mapped_blocks, 4);
    pool.commit().unwrap();
    pool.self_check().unwrap();

    pool.create_snap(ThinId(2), ThinId(1)).unwrap();
    assert_eq!(pool.time(), 1);
    pool.write(ThinId(1), 0, &[0xB2; 10]).unwrap();
    pool.write(ThinId(2), bs, &[0xC3; 10]).unwrap();
    let mut x = [0u8; 10];
    pool.read(ThinId(1), 0, &mut x).unwrap();
    assert_eq!(x, [0xB2; 10]);
    pool.read(ThinId(2), 0, &mut x).unwrap();
    assert_eq!(x, [0; 10], "the snapshot keeps the old contents");
    pool.read(ThinId(2), bs, &mut x).unwrap();
    assert_eq!(x, [0xC3; 10]);
    pool.read(ThinId(1), bs, &mut x).unwrap();
    assert_eq!(x, [0xA1; 10], "the origin does not see the snapshot's write");
    pool.commit().unwrap();
    let report = pool.self_check().unwrap();
    assert_eq!(report.devices, 2);
    assert_eq!(report.data_blocks_used, 6, "4 original + 2 copies");
    drop(pool);

    let pool = Pool::open(meta, data).unwrap();
    pool.self_check().unwrap();
    pool.read(ThinId(2), bs, &mut x).unwrap();
    assert_eq!(x, [0xC3; 10]);
    pool.read(ThinId(1), 0, &mut x).unwrap();
    assert_eq!(x, [0xB2; 10]);
    pool.delete(ThinId(1)).unwrap();
    pool.commit().unwrap();
    let report = pool.self_check().unwrap();
    assert_eq!(report.devices, 1);
    assert_eq!(report.data_blocks_used, 4, "blocks only the origin used are gone");
}

#[test]
fn errors_have_kinds() {
    let (_m, _d, pool) = mem_pool(4, 4);
    assert_eq!(pool.create_snap(ThinId(2), ThinId(1)).unwrap_err().kind(), ErrorKind::NotFound);
    pool.create_thin(ThinId(1)).unwrap();
    assert_eq!(pool.create_thin(ThinId(1)).unwrap_err().kind(), ErrorKind::Exists);
    let big = vec![1u8; 5 * 65536];
    assert_eq!(pool.write(ThinId(1), 0, &big).unwrap_err().kind(), ErrorKind::NoSpace);
    // Nothing is corrupted: the blocks written before running out are mapped and counted.
    pool.commit().unwrap();
    pool.self_check().unwrap();
    assert_eq!(pool.data_usage().free, DataBlock(0));
    pool.discard(ThinId(1), 0, 4 * 65536).unwrap();
    pool.commit().unwrap();
    assert_eq!(pool.data_usage().free, DataBlock(4));
    pool.self_check().unwrap();
}

#[test]
fn corrupt_superblock_is_named() {
    let (meta, data, pool) = mem_pool(4, 4);
    drop(pool);
    let mut b = block(&meta, 0);
    b[100] ^= 1;
    meta.write_at(&b, 0).unwrap();
    let e = Pool::open(meta, data).err().unwrap();
    assert_eq!(e.kind(), ErrorKind::Corrupt { block: MetaBlock(0) });
    assert!(e.to_string().contains("block 0"), "{e}");
}

#[test]
fn pool_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Pool>();
}

#[test]
fn raw_restore_api_keeps_counts_exact() {
    let (meta, data, pool) = mem_pool(4, 64);
    pool.create_thin(ThinId(7)).unwrap();
    pool.create_thin(ThinId(8)).unwrap();
    pool.set_time(3).unwrap();
    for vb in 0..10 {
        pool.insert_mapping(ThinId(7), VirtBlock(vb), DataBlock(vb + 5), 2).unwrap();
        // Two unshared trees mapping the same blocks: data counts 2 (as thin_restore 0.9.0).
        pool.insert_mapping(ThinId(8), VirtBlock(vb), DataBlock(vb + 5), 1).unwrap();
    }
    pool.insert_mapping(ThinId(7), VirtBlock(3), DataBlock(8), 2).unwrap(); // same again
    pool.insert_mapping(ThinId(8), VirtBlock(100), DataBlock(60), 1).unwrap();
    assert_eq!(pool.remove_range(ThinId(8), VirtBlock(50), VirtBlock(200)).unwrap(), 1);
    pool.insert_mapping(ThinId(7), VirtBlock(4), DataBlock(40), 3).unwrap(); // replaced
    assert_eq!(
        pool.insert_mapping(ThinId(7), VirtBlock(4), DataBlock(64), 3).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    let d = DeviceDetails {
        mapped_blocks: 10,
        transaction_id: 4,
        creation_time: 1,
        snapshotted_time: 2,
    };
    pool.set_details(ThinId(7), d).unwrap();
    pool.commit().unwrap();
    let report = pool.self_check().unwrap();
    assert_eq!(report.data_blocks_used, 11);
    let maps: Vec<_> = pool.mappings(ThinId(7)).unwrap().collect();
    assert_eq!(maps.len(), 10);
    assert_eq!(maps[4].1, BlockTime { block: DataBlock(40), time: 3 });
    drop(pool);
    let pool = Pool::open(meta, data).unwrap();
    assert_eq!(pool.device_details(ThinId(7)).unwrap(), d);
    assert_eq!(pool.time(), 3);
    pool.self_check().unwrap();
}

/// The data device of pool tests: counts its flushes and, given an O_DIRECT descriptor of
/// the same file, offers it for plans (as `FileDevice` has for block devices).
pub(crate) struct TestData<D> {
    pub(crate) inner: D,
    flushes: AtomicU64,
    pub(crate) direct: Option<std::fs::File>,
}

impl<D: BlockDevice> TestData<D> {
    pub(crate) fn new(inner: D) -> Self {
        Self { inner, flushes: 0.into(), direct: None }
    }

    pub(crate) fn with_direct(inner: D, direct: std::fs::File) -> Self {
        Self { direct: Some(direct), ..Self::new(inner) }
    }

    /// How many times the device was flushed while `f` ran.
    pub(crate) fn flushes_during(&self, f: impl FnOnce()) -> u64 {
        let before = self.flushes.load(SeqCst);
        f();
        self.flushes.load(SeqCst) - before
    }
}

impl<D: BlockDevice> BlockDevice for TestData<D> {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, SeqCst);
        self.inner.flush()
    }
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn grow(&self, new_size: u64) -> std::io::Result<()> {
        self.inner.grow(new_size)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn direct_at(&self, offset: u64, _len: usize) -> Option<DirectAt> {
        let fd = self.direct.as_ref()?.as_raw_fd();
        Some(DirectAt { fd, pos: offset, keep: None })
    }
}

#[test]
fn flush_syncs_overwrites_that_change_no_mapping() {
    let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
    let data = Arc::new(TestData::new(MemDevice::new(64 << 16, "data")));
    let pool = Pool::format(meta, data.clone(), Sectors(128)).unwrap();
    let id = ThinId(1);
    pool.create_thin(id).unwrap();
    pool.write(id, 0, &[1u8; 65536]).unwrap();
    pool.flush().unwrap();
    // Overwriting a mapped, unshared block changes no metadata, so a commit has nothing to
    // write; FLUSH must still make the new bytes durable.
    pool.write(id, 0, &[2u8; 65536]).unwrap();
    let commit = data.flushes_during(|| pool.commit().unwrap());
    assert_eq!(commit, 0, "a commit with nothing to commit does no I/O");
    let flush = data.flushes_during(|| pool.flush().unwrap());
    assert_eq!(flush, 1, "flush syncs the data device");
}

/// The kernel deletes thins by id (`dmsetup message POOL 0 "delete ID"`) and commits without
/// changing the transaction id, so the name table still matches but names a missing thin.
#[test]
fn name_of_a_thin_deleted_outside_lamina_is_dropped_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = || Box::new(names::DirNameStore::new(dir.path()));
    let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
    let data = Arc::new(MemDevice::new(64 * 65536, "data"));
    let pool = Pool::format_with_names(meta.clone(), data.clone(), Sectors(128), store()).unwrap();
    pool.create_volume("keep", Bytes::new(1 << 20)).unwrap();
    let gone = pool.create_volume("gone", Bytes::new(1 << 20)).unwrap();
    pool.commit().unwrap();
    drop(pool);

    // What dm-thin does: delete by id, commit under the same trans_id, names untouched.
    let raw = Pool::open(meta.clone(), data.clone()).unwrap();
    let tid = raw.transaction_id();
    raw.delete(gone).unwrap();
    raw.commit().unwrap();
    assert_eq!(raw.transaction_id(), tid);
    drop(raw);

    let ro = Pool::open_read_only_with_names(meta.clone(), data.clone(), store()).unwrap();
    let names: Vec<String> = ro.volumes().unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["keep"]);
    drop(ro);
    let pool = Pool::open_with_names(meta.clone(), data.clone(), store()).unwrap();
    let e = pool.volume("gone").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("volume \"gone\" does not exist"), "{e}");
    pool.commit().unwrap();
    assert!(pool.transaction_id() > tid, "the cleaned name table is committed");
    drop(pool);
    let pool = Pool::open_with_names(meta, data, store()).unwrap();
    assert_eq!(pool.volumes().unwrap().len(), 1);
    // The name is free again.
    pool.create_volume("gone", Bytes::new(1 << 20)).unwrap();
}

#[test]
fn overwrite_modes_only_overwrite_unshared_committed_blocks() {
    let (pool, id, bs) = pool_with_thin();
    let over = |id, off, data: &[u8], committed| {
        let mode = if committed { Mode::OverwriteCommitted } else { Mode::Overwrite };
        pool.write_with(id, off, &Payload::mem(data), mode).map(|w| w == Written::Done)
    };
    // Unmapped: declined, nothing written, no mapping made.
    assert!(!over(id, 0, &[1u8; 512], false).unwrap());
    assert_eq!(pool.lookup(id, VirtBlock(0)).unwrap(), None);
    pool.write(id, 0, &vec![2u8; bs as usize]).unwrap();
    // The mapping is not committed yet: a local client's write must take the full way.
    assert!(!over(id, 512, &[3u8; 512], true).unwrap());
    assert!(over(id, 512, &[3u8; 512], false).unwrap());
    pool.commit().unwrap();
    assert!(over(id, 1024, &[4u8; 512], true).unwrap());
    // Into an unmapped neighbouring block: declined as a whole, the mapped part untouched.
    assert!(!over(id, bs - 512, &[5u8; 1024], false).unwrap());
    let mut back = vec![0u8; 2048];
    pool.read(id, 0, &mut back).unwrap();
    assert_eq!(&back[..512], &[2u8; 512][..]);
    assert_eq!(&back[512..1024], &[3u8; 512][..]);
    assert_eq!(&back[1024..1536], &[4u8; 512][..]);
    pool.read(id, bs - 512, &mut back[..512]).unwrap();
    assert_eq!(&back[..512], &[2u8; 512][..]);
    // Shared after a snapshot: declined (copy-on-write needed), the snapshot keeps its data.
    pool.create_snap(ThinId(2), id).unwrap();
    assert!(!over(id, 0, &[6u8; 512], false).unwrap());
    pool.write(id, 0, &[6u8; 512]).unwrap();
    assert!(over(id, 0, &[7u8; 512], false).unwrap());
    pool.read(ThinId(2), 0, &mut back).unwrap();
    assert_eq!(&back[..512], &[2u8; 512][..]);
    pool.read(id, 0, &mut back).unwrap();
    assert_eq!(&back[..512], &[7u8; 512][..]);
    // Unknown devices are errors, as for a full write.
    let e = over(ThinId(9), 0, &[1u8; 512], false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("thin device 9 does not exist"), "{e}");
    pool.commit().unwrap();
    pool.self_check().unwrap();
}

#[test]
fn cached_reads_match_reads() {
    let (pool, id, bs) = pool_with_thin();
    pool.write(id, bs, &vec![9u8; bs as usize]).unwrap();
    let mut buf = vec![1u8; 4096];
    assert!(pool.read_cached(id, 0, &mut buf).unwrap(), "unmapped reads are quick");
    assert!(buf.iter().all(|&b| b == 0));
    assert!(pool.read_cached(id, bs + 100, &mut buf).unwrap(), "memory device");
    assert!(buf.iter().all(|&b| b == 9));
    let mut two = vec![0u8; 4096];
    assert!(!pool.read_cached(id, bs - 100, &mut two).unwrap(), "spans two blocks");
    let e = pool.read_cached(ThinId(9), 0, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("thin device 9 does not exist"), "{e}");
}

/// Volumes 1 and 2: blocks 0..6 of volume 1 hold 1s, and every other one of them was
/// allocated just before a block of volume 2 (9s), so volume 1's data blocks form several
/// runs on the device. Returns the ids and the block size in bytes.
fn interleaved_volumes(pool: &Pool) -> (ThinId, ThinId, usize) {
    let (id, other) = (ThinId(1), ThinId(2));
    let bs = pool.block_bytes() as usize;
    pool.create_thin(id).unwrap();
    pool.create_thin(other).unwrap();
    for vb in 0..6u64 {
        pool.write(id, vb * bs as u64, &vec![1u8; bs]).unwrap();
        if vb % 2 == 0 {
            pool.write(other, vb * bs as u64, &vec![9u8; bs]).unwrap();
        }
    }
    (id, other, bs)
}

#[test]
fn multi_block_overwrites_keep_every_block_and_every_snapshot() {
    let (_meta, _data, pool) = mem_pool(4, 64);
    let (id, other, bs) = interleaved_volumes(&pool);
    let snap = ThinId(3);
    // All mapped and unshared, unaligned at both ends: the whole-request path.
    let pattern = |n: usize, seed: u8| -> Vec<u8> {
        (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
    };
    let a = pattern(4 * bs, 3);
    pool.write(id, 512, &a).unwrap();
    // Some blocks shared after a snapshot: copy-on-write for those, the snapshot unchanged.
    pool.create_snap(snap, id).unwrap();
    pool.write(id, 3 * bs as u64, &vec![5u8; bs]).unwrap();
    let b = pattern(3 * bs, 7);
    pool.write(id, 2 * bs as u64 + 100, &b).unwrap();
    let mut want = vec![1u8; 6 * bs];
    want[512..512 + 4 * bs].copy_from_slice(&a);
    let want_snap = want.clone();
    want[3 * bs..4 * bs].fill(5);
    want[2 * bs + 100..2 * bs + 100 + 3 * bs].copy_from_slice(&b);
    let mut got = vec![0u8; 6 * bs];
    pool.read(id, 0, &mut got).unwrap();
    assert!(got == want, "origin differs");
    pool.read(snap, 0, &mut got).unwrap();
    assert!(got == want_snap, "snapshot changed");
    pool.read(other, 0, &mut got[..bs]).unwrap();
    assert_eq!(got[..bs], vec![9u8; bs][..], "a neighbouring volume changed");
    pool.commit().unwrap();
    pool.self_check().unwrap();
}

#[test]
fn piped_payloads_are_spliced_when_overwriting_and_read_once_otherwise() {
    use crate::io::FileDevice;
    use rustix::pipe::{fcntl_setpipe_size, pipe_with, PipeFlags};
    let dir = tempfile::tempdir().unwrap();
    let meta = Arc::new(FileDevice::create(&dir.path().join("meta"), 4 << 20).unwrap());
    let data = Arc::new(FileDevice::create(&dir.path().join("data"), 64 * 65536).unwrap());
    let pool = Pool::format(meta, data, Sectors(128)).unwrap();
    let (id, other, bs) = interleaved_volumes(&pool);
    let snap = ThinId(3);
    let (r, w) = pipe_with(PipeFlags::NONBLOCK).unwrap();
    fcntl_setpipe_size(&w, 1 << 20).unwrap();
    let fill = |bytes: &[u8]| assert_eq!(rustix::io::write(&w, bytes).unwrap(), bytes.len());
    let pending = |r: &rustix::fd::OwnedFd| rustix::io::ioctl_fionread(r).unwrap() as usize;
    let payload: Vec<u8> =
        (0..4 * bs).map(|i| (i as u8).wrapping_mul(31).wrapping_add(3)).collect();
    // Unaligned at both ends; the head ends inside the second run.
    let (at, head) = (bs as u64 + 512, bs + 1000);
    let mut buf = vec![0u8; 4 * bs];
    let piped = |buf: &mut Vec<u8>| {
        fill(&payload[head..]);
        buf.copy_from_slice(&payload);
        buf[head..].fill(0xee); // what is not read from the pipe stays as it is
    };
    piped(&mut buf);
    let p = Payload::piped(&mut buf, head, r.as_fd());
    assert_eq!(pool.write_with(id, at, &p, Mode::Overwrite).unwrap(), Written::Done);
    assert!(p.in_pipe(), "an overwrite splices: nothing was read into memory");
    assert_eq!(pending(&r), 0, "the whole rest came out of the pipe");
    let mut want = vec![1u8; 6 * bs];
    want[at as usize..at as usize + 4 * bs].copy_from_slice(&payload);
    let mut got = vec![0u8; 6 * bs];
    pool.read(id, 0, &mut got).unwrap();
    assert!(got == want, "origin differs after a spliced overwrite");
    pool.read(other, 0, &mut got[..bs]).unwrap();
    assert_eq!(got[..bs], vec![9u8; bs][..], "a neighbouring volume changed");

    // Shared after a snapshot: an overwrite-only write declines and leaves the pipe alone;
    // the full write then reads the pipe once and copies on write.
    pool.create_snap(snap, id).unwrap();
    piped(&mut buf);
    let p = Payload::piped(&mut buf, head, r.as_fd());
    assert_eq!(pool.write_with(id, 0, &p, Mode::Overwrite).unwrap(), Written::Declined);
    assert_eq!(pending(&r), 4 * bs - head, "the pipe was left alone");
    assert_eq!(pool.write_with(id, 0, &p, Mode::Full).unwrap(), Written::Done);
    assert!(!p.in_pipe());
    assert_eq!(pending(&r), 0);
    pool.read(id, 0, &mut got[..4 * bs]).unwrap();
    assert!(got[..4 * bs] == payload[..], "the full write of a piped payload differs");
    pool.read(snap, 0, &mut got).unwrap();
    assert!(got == want, "the snapshot changed");
    pool.commit().unwrap();
    pool.self_check().unwrap();

    // A device that cannot splice: the pipe is read into memory for an overwrite too.
    let (_m, _d, mem) = mem_pool(4, 8);
    mem.create_thin(id).unwrap();
    mem.write(id, 0, &vec![1u8; 2 * bs]).unwrap();
    let mut buf = vec![0u8; bs];
    fill(&payload[1000..bs]);
    buf[..1000].copy_from_slice(&payload[..1000]);
    let p = Payload::piped(&mut buf, 1000, r.as_fd());
    assert_eq!(mem.write_with(id, 0, &p, Mode::Overwrite).unwrap(), Written::Done);
    assert!(!p.in_pipe());
    mem.read(id, 0, &mut got[..bs]).unwrap();
    assert!(got[..bs] == payload[..bs]);
}
