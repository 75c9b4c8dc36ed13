//! One space-map contract, run against every implementation: the bare in-memory counts, the
//! persisted metadata space map and the persisted data space map.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use super::*;
use crate::io::{BlockDevice, MemDevice};

trait Harness {
    fn sm(&mut self) -> &mut dyn SpaceMap;
    fn commit(&mut self);
    /// Forgets everything in memory and loads the last commit from the device.
    fn reopen(&mut self);
    fn extend(&mut self, new_nr_blocks: u64);
}

struct Mem(RefCounts);

impl Harness for Mem {
    fn sm(&mut self) -> &mut dyn SpaceMap {
        &mut self.0
    }
    fn commit(&mut self) {
        self.0.begin_commit();
        self.0.end_commit();
    }
    fn reopen(&mut self) {}
    fn extend(&mut self, n: u64) {
        self.0.extend(n);
    }
}

struct Metadata {
    dev: Arc<MemDevice>,
    tm: Tm,
    disk: SmDisk,
    root: SmRoot,
}

impl Metadata {
    fn new(nr_blocks: u64) -> Self {
        let dev = Arc::new(MemDevice::new(128 << 20, "meta"));
        let mut tm = Tm::new(dev.clone(), RefCounts::new("metadata", nr_blocks));
        let disk = SmDisk::format_metadata(&mut tm).unwrap();
        let mut h = Metadata { dev, tm, disk, root: SmRoot::default() };
        h.commit();
        h
    }
}

fn write_out(tm: &mut Tm) {
    let blocks = tm.prepare_commit();
    blocks.write(tm.device().as_ref()).unwrap();
    tm.finish_commit(true);
}

impl Harness for Metadata {
    fn sm(&mut self) -> &mut dyn SpaceMap {
        &mut self.tm.sm
    }
    fn commit(&mut self) {
        self.root = self.disk.commit_metadata(&mut self.tm).unwrap();
        write_out(&mut self.tm);
    }
    fn reopen(&mut self) {
        let dev: Arc<dyn BlockDevice> = self.dev.clone();
        self.tm = Tm::new(dev, RefCounts::new("metadata", self.root.nr_blocks));
        self.disk = SmDisk::open_metadata(&mut self.tm, &self.root).unwrap();
    }
    fn extend(&mut self, n: u64) {
        self.disk.extend(&mut self.tm.sm, n).unwrap();
    }
}

struct Data {
    meta: Metadata,
    disk: SmDisk,
    counts: RefCounts,
    root: SmRoot,
}

impl Data {
    fn new(nr_blocks: u64) -> Self {
        let mut meta = Metadata::new(4096);
        let mut disk = SmDisk::format_data(&mut meta.tm).unwrap();
        let mut counts = RefCounts::new("data", 0);
        disk.extend(&mut counts, nr_blocks).unwrap();
        let mut h = Data { meta, disk, counts, root: SmRoot::default() };
        h.commit();
        h
    }
}

impl Harness for Data {
    fn sm(&mut self) -> &mut dyn SpaceMap {
        &mut self.counts
    }
    fn commit(&mut self) {
        self.root = self.disk.commit_data(&mut self.meta.tm, &mut self.counts).unwrap();
        self.counts.begin_commit();
        self.meta.commit();
        self.counts.end_commit();
    }
    fn reopen(&mut self) {
        self.meta.reopen();
        let (disk, counts) = SmDisk::open_data(&mut self.meta.tm, &self.root).unwrap();
        self.disk = disk;
        self.counts = counts;
    }
    fn extend(&mut self, n: u64) {
        self.disk.extend(&mut self.counts, n).unwrap();
    }
}

/// The contract. Only blocks the test allocated itself are asserted on exactly: the metadata
/// map also allocates for its own bitmaps and trees at commit.
fn contract(h: &mut dyn Harness) {
    let n = h.sm().nr_blocks();
    let free0 = h.sm().nr_free();
    assert_eq!(h.sm().nr_free() + h.sm().nr_allocated(), n);
    let a: Vec<u64> = (0..100).map(|_| h.sm().alloc().unwrap()).collect();
    assert_eq!(a.iter().collect::<HashSet<_>>().len(), 100, "allocations are distinct");
    assert!(a.iter().all(|&b| b < n && h.sm().count(b).unwrap() == 1));
    assert_eq!(h.sm().nr_free(), free0 - 100);
    for _ in 0..4 {
        h.sm().inc(a[0]).unwrap(); // 5: past the bitmap's 2 bits, into the overflow tree
    }
    h.sm().inc(a[1]).unwrap(); // 2
    h.sm().inc(a[3]).unwrap();
    h.sm().inc(a[3]).unwrap(); // 3: exactly the overflow threshold
    h.commit();
    h.reopen();
    assert_eq!(h.sm().count(a[0]).unwrap(), 5);
    assert_eq!(h.sm().count(a[1]).unwrap(), 2);
    assert_eq!(h.sm().count(a[3]).unwrap(), 3);
    assert!(a[4..].iter().all(|&b| h.sm().count(b).unwrap() == 1));

    // Freed in this transaction: not reusable until the commit.
    h.sm().dec(a[2]).unwrap();
    h.sm().dec(a[3]).unwrap(); // 3 -> 2 leaves the overflow tree
    assert_eq!(h.sm().count(a[2]).unwrap(), 0);
    let mut grabbed = Vec::new();
    while let Some(b) = h.sm().alloc() {
        assert_ne!(b, a[2], "a block freed in this transaction was handed out");
        grabbed.push(b);
    }
    // Blocks allocated and freed within one transaction are reusable at once.
    for &b in &grabbed {
        h.sm().dec(b).unwrap();
    }
    let again = h.sm().alloc().unwrap();
    assert!(grabbed.contains(&again), "only this transaction's own frees are reusable");
    h.sm().dec(again).unwrap();
    let bad_ref = |e: Error, block: u64, why: &str| {
        assert!(
            matches!(e, Error::BadRef { block: b, what, .. } if b == block && what == why),
            "{e}"
        );
    };
    bad_ref(h.sm().dec(a[2]).unwrap_err(), a[2], "reference count would drop below zero");
    let beyond = "is beyond the end of the space map";
    bad_ref(h.sm().count(n + 5).unwrap_err(), n + 5, beyond);
    bad_ref(h.sm().inc(n + 5).unwrap_err(), n + 5, beyond);
    h.commit();
    let mut found = false;
    while let Some(b) = h.sm().alloc() {
        found |= b == a[2];
        if found {
            break;
        }
    }
    assert!(found, "after the commit the freed block is allocatable again");
    h.sm().dec(a[2]).unwrap();
    h.commit();
    h.reopen();
    assert_eq!(h.sm().count(a[3]).unwrap(), 2);
    assert_eq!(h.sm().count(a[2]).unwrap(), 0);
    assert_eq!(h.sm().nr_free() + h.sm().nr_allocated(), h.sm().nr_blocks());

    // Growing adds free blocks that survive a reopen.
    h.extend(n + 20_000);
    assert_eq!(h.sm().nr_blocks(), n + 20_000);
    h.sm().inc(n + 19_999).unwrap();
    h.commit();
    h.reopen();
    assert_eq!(h.sm().nr_blocks(), n + 20_000);
    assert_eq!(h.sm().count(n + 19_999).unwrap(), 1);
    assert_eq!(h.sm().count(n + 10).unwrap(), 0);
}

#[test]
fn in_memory_counts_keep_the_contract() {
    contract(&mut Mem(RefCounts::new("mem", 3000)));
}

#[test]
fn metadata_space_map_keeps_the_contract() {
    contract(&mut Metadata::new(3000));
}

#[test]
fn data_space_map_keeps_the_contract() {
    contract(&mut Data::new(20_000));
}

#[test]
fn metadata_space_map_accounts_for_itself() {
    let mut h = Metadata::new(40_000); // three bitmaps
    let mut blocks = Vec::new();
    for _ in 0..5000 {
        let b = h.tm.sm.alloc().unwrap();
        blocks.push(b);
        h.tm.sm.inc(b).unwrap();
        h.tm.sm.inc(b).unwrap(); // every block overflowed: a big overflow tree
    }
    h.commit();
    // Every block the map itself uses is counted exactly once, and nothing else is.
    let own = h.disk.own_blocks(&mut h.tm).unwrap();
    let mut want = vec![0u32; 40_000];
    want[0] = 1;
    for b in &own {
        want[b.0 as usize] += 1;
    }
    for &b in &blocks {
        want[b as usize] += 3;
    }
    assert_eq!(h.tm.sm.counts(), &want[..]);
    h.reopen();
    assert_eq!(h.tm.sm.counts(), &want[..]);
    assert_eq!(h.root.nr_allocated, want.iter().filter(|&&c| c > 0).count() as u64);
}

#[test]
fn free_now_excludes_blocks_pinned_by_the_commit() {
    let mut c = RefCounts::new("mem", 100);
    let a: Vec<u64> = (0..10).map(|_| c.alloc().unwrap()).collect();
    c.begin_commit();
    c.end_commit();
    assert_eq!(c.free_now(), 90);
    c.dec(a[0]).unwrap();
    c.dec(a[1]).unwrap();
    assert_eq!((c.nr_free(), c.free_now()), (92, 90), "freed this transaction: pinned");
    let r = c.reserve().unwrap();
    assert_eq!(c.free_now(), 89);
    c.begin_commit();
    c.dec(a[2]).unwrap(); // freed while the commit is being written
    assert_eq!(c.free_now(), 89);
    c.end_commit();
    assert_eq!(c.free_now(), 91, "a[0], a[1] released; a[2] pinned by the new commit");
    c.unreserve(r, true).unwrap();
    c.begin_commit();
    c.end_commit();
    assert_eq!(c.free_now(), 92, "a[2] released; the reservation became a count");
    assert_eq!(c.free_now(), c.nr_free());
}
