//! Random sequences of pool operations against a model holding every volume's bytes; after
//! each commit the engine's self-check recounts every reference, and a sample of cases runs
//! Debian's thin_check on the metadata.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proptest::prelude::*;
use thinpool::io::MemDevice;
use thinpool::pool::{ErrorKind, Pool};
use thinpool::units::{Sectors, ThinId};

const BS: u64 = 65536;
const VOL_BLOCKS: u64 = 8;
const VOL: u64 = VOL_BLOCKS * BS;
const IDS: u64 = 4;

#[derive(Clone, Debug)]
enum Op {
    Create(u64),
    Snapshot(u64, u64),
    Remove(u64),
    Write { id: u64, off: u64, len: u64, seed: u8 },
    Zeroes { id: u64, off: u64, len: u64, unmap: bool },
    Discard { id: u64, off: u64, len: u64 },
    Commit,
    Reopen,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        // Sector-aligned and arbitrary, inside one block or across several.
        (0..VOL, 1..2 * BS),
        (0..VOL_BLOCKS, 1..4u64).prop_map(|(b, n)| (b * BS, n * BS)),
        (0..VOL / 512, 1..64u64).prop_map(|(s, n)| (s * 512, n * 512)),
    ]
    .prop_map(|(off, len)| (off, len.min(VOL - off).max(1)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..IDS).prop_map(Op::Create),
        2 => (0..IDS, 0..IDS).prop_map(|(a, b)| Op::Snapshot(a, b)),
        1 => (0..IDS).prop_map(Op::Remove),
        8 => (0..IDS, range(), any::<u8>()).prop_map(|(id, (off, len), seed)| Op::Write { id, off, len, seed }),
        2 => (0..IDS, range(), any::<bool>()).prop_map(|(id, (off, len), unmap)| Op::Zeroes { id, off, len, unmap }),
        2 => (0..IDS, range()).prop_map(|(id, (off, len))| Op::Discard { id, off, len }),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn pattern(seed: u8, off: u64, len: u64) -> Vec<u8> {
    if seed == 0 {
        return vec![0; len as usize]; // all-zero writes allocate nothing
    }
    (off..off + len).map(|i| (i / 512) as u8 ^ seed).collect()
}

struct World {
    meta: Arc<MemDevice>,
    data: Arc<MemDevice>,
    pool: Pool,
    model: BTreeMap<u64, Vec<u8>>,
}

static CASES: AtomicUsize = AtomicUsize::new(0);

impl World {
    fn check_all(&self) {
        for (&id, want) in &self.model {
            let mut got = vec![0u8; VOL as usize];
            self.pool.read(ThinId(id), 0, &mut got).unwrap();
            assert!(got == *want, "volume {id} differs from the model");
            let mapped: u64 = self
                .pool
                .extents(ThinId(id), 0, VOL)
                .unwrap()
                .iter()
                .filter(|e| e.1)
                .map(|e| e.0)
                .sum();
            assert_eq!(mapped / BS, self.pool.device_details(ThinId(id)).unwrap().mapped_blocks);
        }
        let ids: Vec<u64> = self.pool.devices().iter().map(|d| d.0 .0).collect();
        assert_eq!(ids, self.model.keys().copied().collect::<Vec<_>>());
    }

    fn commit_and_check(&self) {
        self.pool.commit().unwrap();
        let report = self.pool.self_check().unwrap();
        assert_eq!(report.devices, self.model.len());
    }

    fn apply(&mut self, op: Op) {
        let exists = |m: &BTreeMap<u64, Vec<u8>>, id: u64| m.contains_key(&id);
        match op {
            Op::Create(id) => {
                let r = self.pool.create_thin(ThinId(id));
                if exists(&self.model, id) {
                    assert_eq!(r.unwrap_err().kind(), ErrorKind::Exists);
                } else {
                    r.unwrap();
                    self.model.insert(id, vec![0; VOL as usize]);
                }
            }
            Op::Snapshot(origin, id) => {
                let r = self.pool.create_snap(ThinId(id), ThinId(origin));
                match (exists(&self.model, origin), exists(&self.model, id)) {
                    (true, false) => {
                        r.unwrap();
                        let v = self.model[&origin].clone();
                        self.model.insert(id, v);
                    }
                    (_, true) => assert_eq!(r.unwrap_err().kind(), ErrorKind::Exists),
                    (false, false) => assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound),
                }
            }
            Op::Remove(id) => {
                let r = self.pool.delete(ThinId(id));
                if self.model.remove(&id).is_some() {
                    r.unwrap();
                } else {
                    assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound);
                }
            }
            Op::Write { id, off, len, seed } => {
                let buf = pattern(seed, off, len);
                let r = self.pool.write(ThinId(id), off, &buf);
                match self.model.get_mut(&id) {
                    Some(v) => {
                        r.unwrap();
                        v[off as usize..(off + len) as usize].copy_from_slice(&buf);
                        let mut back = vec![0u8; len as usize];
                        self.pool.read(ThinId(id), off, &mut back).unwrap();
                        assert!(back == buf, "read-after-write differs");
                    }
                    None => assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound),
                }
            }
            Op::Zeroes { id, off, len, unmap } => {
                let r = self.pool.write_zeroes(ThinId(id), off, len, unmap);
                match self.model.get_mut(&id) {
                    Some(v) => {
                        r.unwrap();
                        v[off as usize..(off + len) as usize].fill(0);
                    }
                    None => assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound),
                }
            }
            Op::Discard { id, off, len } => {
                let r = self.pool.discard(ThinId(id), off, len);
                match self.model.get_mut(&id) {
                    Some(v) => {
                        r.unwrap();
                        // Only whole blocks are unmapped; partial blocks keep their bytes.
                        let (a, b) = (off.div_ceil(BS), (off + len) / BS);
                        for blk in a..b.max(a) {
                            v[(blk * BS) as usize..((blk + 1) * BS) as usize].fill(0);
                        }
                    }
                    None => assert_eq!(r.unwrap_err().kind(), ErrorKind::NotFound),
                }
            }
            Op::Commit => self.commit_and_check(),
            Op::Reopen => {
                self.commit_and_check();
                let pool = Pool::open(self.meta.clone(), self.data.clone()).unwrap();
                self.pool = pool;
                self.pool.self_check().unwrap();
                self.check_all();
            }
        }
    }
}

fn run(ops: Vec<Op>) {
    let case = CASES.fetch_add(1, Ordering::SeqCst);
    let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
    let data = Arc::new(MemDevice::new(256 * BS, "data"));
    let pool = Pool::format(meta.clone(), data.clone(), Sectors(BS / 512)).unwrap();
    let mut w = World { meta, data, pool, model: BTreeMap::new() };
    for op in ops {
        w.apply(op);
        w.check_all();
    }
    w.commit_and_check();
    w.check_all();
    if case.is_multiple_of(10) {
        let dir = tempfile::tempdir().unwrap();
        let path = support::engine::image_file(dir.path(), "metadata", &w.meta.snapshot());
        support::thin_check(&path);
    }
}

proptest! {
    // MODEL_CASES=n runs more cases (a longer soak than the default suite).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64),
        ..ProptestConfig::default()
    })]

    #[test]
    fn pool_matches_model(ops in prop::collection::vec(op(), 1..60)) {
        run(ops);
    }
}

/// Deep sharing: a chain of snapshots with writes between them, checked by thin_check.
#[test]
fn snapshot_chain_with_writes_is_clean() {
    let meta = Arc::new(MemDevice::new(8 << 20, "meta"));
    let data = Arc::new(MemDevice::new(2048 * BS, "data"));
    let pool = Pool::format(meta.clone(), data, Sectors(BS / 512)).unwrap();
    pool.create_thin(ThinId(0)).unwrap();
    for b in 0..700u64 {
        pool.write(ThinId(0), b * BS, &[b as u8 | 1; 4096]).unwrap();
    }
    for s in 1..8u64 {
        pool.create_snap(ThinId(s), ThinId(s - 1)).unwrap();
        for b in (s * 37..700).step_by(97) {
            pool.write(ThinId(s), b * BS + 7, &[s as u8; 9]).unwrap();
        }
        pool.commit().unwrap();
        pool.self_check().unwrap();
    }
    pool.delete(ThinId(3)).unwrap();
    pool.discard(ThinId(0), 0, 350 * BS).unwrap();
    pool.commit().unwrap();
    pool.self_check().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = support::engine::image_file(dir.path(), "metadata", &meta.snapshot());
    support::thin_check(&path);
    let mut buf = [0u8; 9];
    pool.read(ThinId(7), 37 * BS + 7, &mut buf).unwrap();
    assert_eq!(buf, [1; 9], "snapshot 7 inherited snapshot 1's write");
    pool.read(ThinId(0), 400 * BS, &mut buf).unwrap();
    assert_eq!(buf, [(400u64 as u8) | 1; 9]);
}

#[test]
fn copy_on_write_keeps_the_snapshot() {
    run(vec![
        Op::Create(0),
        Op::Write { id: 0, off: 0, len: 100, seed: 5 },
        Op::Snapshot(0, 1),
        Op::Write { id: 0, off: 10, len: 10, seed: 9 },
    ]);
}
