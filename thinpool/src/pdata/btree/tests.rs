//! The btree against a `BTreeMap` model, with the shape invariants and exact lazy reference
//! counts checked after every operation, including trees that share nodes.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use proptest::prelude::*;

use super::*;
use crate::io::MemDevice;
use crate::pdata::sm::{RefCounts, SpaceMap};

/// Values whose first 8 bytes name a "data block" counted in a separate map, so the inc/dec
/// hooks are exercised exactly like the mapping tree's.
struct Counted {
    vs: usize,
    data: RefCounts,
}

impl ValueType for Counted {
    fn size(&self) -> usize {
        self.vs
    }
    fn inc(&mut self, _: &mut Tm, v: &[u8]) -> Result<()> {
        self.data.inc(target(v))
    }
    fn dec(&mut self, _: &mut Tm, v: &[u8]) -> Result<()> {
        self.data.dec(target(v))
    }
}

const DATA_BLOCKS: u64 = 1 << 16;

fn target(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_le_bytes(b) % DATA_BLOCKS
}

fn value(vs: usize, x: u64) -> Vec<u8> {
    let mut v = x.to_le_bytes().to_vec();
    v.resize(vs, 0xEE);
    v.truncate(vs);
    v
}

struct Harness {
    tm: Tm,
    vt: Counted,
    /// Tree roots and their models; tree 0 is the one operated on, the others are snapshots.
    trees: Vec<(MetaBlock, BTreeMap<u64, Vec<u8>>)>,
}

impl Harness {
    fn new(vs: usize) -> Self {
        let dev = Arc::new(MemDevice::new(16 << 20, "meta"));
        let mut tm = Tm::new(dev, RefCounts::new("metadata", 4096));
        let root = empty(&mut tm, vs).unwrap();
        Harness {
            tm,
            vt: Counted { vs, data: RefCounts::new("data", DATA_BLOCKS) },
            trees: vec![(root, BTreeMap::new())],
        }
    }

    fn vs(&self) -> usize {
        self.vt.vs
    }

    fn insert(&mut self, k: u64, x: u64) {
        let v = value(self.vs(), x);
        // The caller owns one reference to the value's target, as with a fresh data block.
        self.vt.data.inc(target(&v)).unwrap();
        let (r, old) = insert(&mut self.tm, &mut self.vt, self.trees[0].0, k, &v).unwrap();
        let model_old = self.trees[0].1.insert(k, v.clone());
        assert_eq!(old, model_old);
        // `insert` drops the old reference only when the target differs; balance the books.
        if let Some(o) = old {
            if self.vt.equal(&o, &v) {
                self.vt.data.dec(target(&v)).unwrap();
            }
        }
        self.trees[0].0 = r;
    }

    fn remove(&mut self, k: u64) {
        let (r, old) = remove(&mut self.tm, &mut self.vt, self.trees[0].0, k).unwrap();
        assert_eq!(old, self.trees[0].1.remove(&k));
        self.trees[0].0 = r;
    }

    fn remove_range(&mut self, a: u64, b: u64) {
        let (r, n) = remove_range(&mut self.tm, &mut self.vt, self.trees[0].0, a, b).unwrap();
        let keys: Vec<u64> = self.trees[0].1.range(a..b).map(|(&k, _)| k).collect();
        assert_eq!(n, keys.len() as u64);
        for k in keys {
            self.trees[0].1.remove(&k);
        }
        self.trees[0].0 = r;
    }

    fn snapshot(&mut self) {
        let (root, model) = self.trees[0].clone();
        self.tm.inc(root).unwrap();
        self.trees.push((root, model));
    }

    fn drop_snapshot(&mut self, i: usize) {
        if self.trees.len() > 1 {
            let i = 1 + i % (self.trees.len() - 1);
            let (root, _) = self.trees.remove(i);
            del(&mut self.tm, &mut self.vt, root).unwrap();
        }
    }

    fn commit(&mut self) {
        let blocks = self.tm.prepare_commit();
        blocks.write(self.tm.device().as_ref()).unwrap();
        self.tm.finish_commit(true);
        self.tm.drop_clean_cache();
    }

    /// Shape, contents, lookups and exact metadata and data reference counts.
    fn check(&mut self) {
        let vs = self.vs();
        let mut meta = vec![0u32; self.tm.sm.nr_blocks() as usize];
        let mut data = vec![0u32; DATA_BLOCKS as usize];
        let mut seen = HashMap::new();
        for (root, model) in self.trees.clone() {
            meta[root.0 as usize] += 1;
            let mut visit = |_: &mut Tm, _: MetaBlock, n: Node<'_>| {
                for i in 0..n.nr_entries() {
                    if n.is_leaf() {
                        data[target(n.value(i)) as usize] += 1;
                    } else {
                        meta[n.value_u64(i) as usize] += 1;
                    }
                }
                Ok(())
            };
            check(&mut self.tm, root, vs, &mut CheckCtx { seen: &mut seen, visit: &mut visit })
                .unwrap();
            let mut got = BTreeMap::new();
            walk(&mut self.tm, root, vs, &mut |k, v| {
                got.insert(k, v.to_vec());
                Ok(true)
            })
            .unwrap();
            assert_eq!(got, model);
            for k in model.keys().take(5).chain(model.keys().rev().take(5)) {
                assert_eq!(lookup(&mut self.tm, root, vs, *k).unwrap().as_ref(), model.get(k));
                let nk = k + 1;
                let want = model.range(nk..).next().map(|(k, v)| (*k, v.clone()));
                assert_eq!(next(&mut self.tm, root, vs, nk).unwrap(), want);
            }
        }
        for (b, &c) in meta.iter().enumerate() {
            assert_eq!(self.tm.sm.count(b as u64).unwrap(), c, "metadata block {b}");
        }
        // Data: every leaf holds one reference per value (the model's extra references were
        // handed over on insert).
        for (b, &c) in data.iter().enumerate() {
            assert_eq!(self.vt.data.count(b as u64).unwrap(), c, "data block {b}");
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u64, u64),
    InsertRun(u64, u16),
    Remove(u64),
    RemoveRun(u64, u16),
    Snapshot,
    DropSnapshot(usize),
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3000u64, any::<u64>()).prop_map(|(k, v)| Op::Insert(k, v)),
        2 => (0..3000u64, 1..600u16).prop_map(|(k, n)| Op::InsertRun(k, n)),
        3 => (0..3000u64).prop_map(Op::Remove),
        2 => (0..3000u64, 1..800u16).prop_map(|(k, n)| Op::RemoveRun(k, n)),
        1 => Just(Op::Snapshot),
        1 => any::<usize>().prop_map(Op::DropSnapshot),
        1 => Just(Op::Commit),
    ]
}

fn run(vs: usize, ops: Vec<Op>) {
    let mut h = Harness::new(vs);
    for op in ops {
        match op {
            Op::Insert(k, v) => h.insert(k, v),
            Op::InsertRun(k, n) => {
                for i in 0..u64::from(n) {
                    h.insert(k + i, k ^ i);
                }
            }
            Op::Remove(k) => h.remove(k),
            Op::RemoveRun(k, n) => h.remove_range(k, k + u64::from(n)),
            Op::Snapshot => h.snapshot(),
            Op::DropSnapshot(i) => h.drop_snapshot(i),
            Op::Commit => h.commit(),
        }
        h.check();
    }
    // Deleting every tree frees every node and every value reference.
    for (root, _) in std::mem::take(&mut h.trees) {
        del(&mut h.tm, &mut h.vt, root).unwrap();
    }
    assert_eq!(h.tm.sm.nr_allocated(), 0, "every metadata block is free again");
    assert_eq!(h.vt.data.nr_allocated(), 0, "every value reference is dropped");
}

proptest! {
    // BTREE_CASES=n runs more cases (a longer soak than the default suite).
    #![proptest_config(ProptestConfig {
        cases: std::env::var("BTREE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24),
        ..ProptestConfig::default()
    })]

    // Every value size the pool uses (refcounts, mappings, index entries, details) runs each
    // case's operations.
    #[test]
    fn btree_matches_model(ops in prop::collection::vec(op(), 1..40)) {
        for vs in [4, 8, 16, 24] {
            run(vs, ops.clone());
        }
    }
}

#[test]
fn sequential_fill_then_drain_keeps_the_invariants() {
    let mut h = Harness::new(8);
    for k in 0..60_000 {
        h.insert(k, k);
    }
    h.check();
    let root = h.trees[0].0;
    let mut seen = HashMap::new();
    let height =
        check(&mut h.tm, root, 8, &mut CheckCtx { seen: &mut seen, visit: &mut |_, _, _| Ok(()) })
            .unwrap();
    assert_eq!(height, 3, "60000 entries need three levels");
    // Appends leave leaves about 2/3 full, not half.
    assert!(seen.len() < 60_000 / 150, "{} nodes for 60000 entries", seen.len());
    h.commit();
    for k in (0..60_000).step_by(3) {
        h.remove(k);
    }
    h.check();
    h.remove_range(0, 55_000);
    h.check();
    h.remove_range(0, 60_000);
    h.check();
    let r = h.trees[0].0;
    assert!(load(&mut h.tm, r, 8).map(|d| view(&d).is_leaf()).unwrap(), "collapsed to a leaf");
}

#[test]
fn root_split_keeps_the_root_block() {
    let mut h = Harness::new(24);
    for k in 0..126 {
        h.insert(k, k);
    }
    let before = h.trees[0].0;
    h.insert(1000, 1);
    assert_eq!(h.trees[0].0, before, "split beneath keeps the root where it is");
    let data = load(&mut h.tm, before, 24).unwrap();
    let n = view(&data);
    assert!(!n.is_leaf());
    assert_eq!((n.max_entries(), n.value_size()), (252, 8), "internal root uses vs 8");
    h.check();
}
