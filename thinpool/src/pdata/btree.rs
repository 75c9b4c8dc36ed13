//! A copy-on-write btree in dm-thin's node format, generic over the value size (4, 8, 16, 24).
//!
//! Every modification shadows the path from the root down ([`Tm::shadow`]), so the committed
//! tree stays intact and each call returns the (possibly new) root. Reference counts are lazy:
//! sharing a subtree costs one increment on its root; when a shared node is copied, whatever it
//! references gets +1 (child nodes for internal nodes, the values through [`ValueType::inc`]
//! for leaves).
//!
//! Shape rules kept after every operation: all leaves at one depth, keys strictly ascending,
//! internal `keys[i]` <= the first key below child i and > every key below child i-1,
//! canonical `max_entries`, and every non-root node holds at least `max_entries / 3` entries
//! (splits give halves, or 2/3 + 1/3 when appending; removals merge or redistribute).

use std::collections::HashMap;
use std::sync::Arc;

use super::disk::{self, Block, BlockKind, Node, NodeMut};
use super::tm::Tm;
use super::{Error, Result};
use crate::units::MetaBlock;

/// No valid tree is deeper than this (252^9 > 2^64 keys); deeper means a pointer cycle.
const MAX_DEPTH: usize = 12;

fn too_deep(b: MetaBlock, depth: usize) -> Result<()> {
    if depth > MAX_DEPTH {
        return Err(Error::corrupt(b, "btree is deeper than any valid tree (pointer cycle?)"));
    }
    Ok(())
}

/// What the tree's values reference, so sharing can be counted lazily.
pub trait ValueType {
    fn size(&self) -> usize;
    /// A copy of a shared leaf now references `v` too.
    fn inc(&mut self, tm: &mut Tm, v: &[u8]) -> Result<()>;
    /// A reference to `v` is dropped (overwrite, removal, deletion).
    fn dec(&mut self, tm: &mut Tm, v: &[u8]) -> Result<()>;
    /// Whether an overwrite of `a` by `b` keeps the same reference (then nothing is dropped).
    fn equal(&self, a: &[u8], b: &[u8]) -> bool {
        a == b
    }
}

/// Values that reference nothing (details, index entries, reference counts).
pub struct Plain(pub usize);

impl ValueType for Plain {
    fn size(&self) -> usize {
        self.0
    }
    fn inc(&mut self, _: &mut Tm, _: &[u8]) -> Result<()> {
        Ok(())
    }
    fn dec(&mut self, _: &mut Tm, _: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// Loads a node and checks its header against the tree's value size.
pub fn load(tm: &mut Tm, b: MetaBlock, vs: usize) -> Result<Arc<Block>> {
    let data = tm.read(b, BlockKind::Node)?;
    let node = Node::new(&data).map_err(|e| Error::corrupt(b, e.to_string()))?;
    let want = if node.is_leaf() { vs } else { 8 };
    if node.value_size() != want {
        return Err(Error::corrupt(
            b,
            format!("btree node has value size {}, expected {want}", node.value_size()),
        ));
    }
    if node.max_entries() != disk::max_entries(want) {
        return Err(Error::corrupt(
            b,
            format!("btree node has max_entries {}, expected {}", node.max_entries(), {
                disk::max_entries(want)
            }),
        ));
    }
    Ok(data)
}

fn view(data: &Block) -> Node<'_> {
    // Headers were checked by `load`.
    Node::new(data).expect("node header checked on load")
}

fn node_mut(tm: &mut Tm, b: MetaBlock) -> Result<NodeMut<'_>> {
    let data = tm.write(b)?;
    NodeMut::new(data).map_err(|e| Error::corrupt(b, e.to_string()))
}

/// Creates an empty tree (a single empty leaf).
pub fn empty(tm: &mut Tm, vs: usize) -> Result<MetaBlock> {
    let b = tm.new_block(BlockKind::Node)?;
    NodeMut::init(tm.write(b)?, b, true, vs);
    Ok(b)
}

/// What one entry of a node references: a leaf's value or an internal node's child.
enum Ref<'a> {
    Value(&'a [u8]),
    Child(MetaBlock),
}

/// Calls `f` on every reference held by the node at `b`.
fn each_ref(
    tm: &mut Tm,
    b: MetaBlock,
    vs: usize,
    f: &mut dyn FnMut(&mut Tm, Ref<'_>) -> Result<()>,
) -> Result<()> {
    let data = load(tm, b, vs)?;
    let node = view(&data);
    for i in 0..node.nr_entries() {
        let r = if node.is_leaf() {
            Ref::Value(node.value(i))
        } else {
            Ref::Child(MetaBlock(node.value_u64(i)))
        };
        f(tm, r)?;
    }
    Ok(())
}

fn inc_children(tm: &mut Tm, vt: &mut dyn ValueType, b: MetaBlock) -> Result<()> {
    each_ref(tm, b, vt.size(), &mut |tm, r| match r {
        Ref::Value(v) => vt.inc(tm, v),
        Ref::Child(c) => tm.inc(c),
    })
}

/// Shadows a node; if it was shared, the copy's references are incremented.
fn shadow(tm: &mut Tm, vt: &mut dyn ValueType, b: MetaBlock) -> Result<MetaBlock> {
    load(tm, b, vt.size())?;
    let (n, shared) = tm.shadow(b, BlockKind::Node)?;
    if shared {
        inc_children(tm, vt, n)?;
    }
    Ok(n)
}

/// The first step of a change at `depth` below the root: `b` shadowed for writing, and its
/// contents.
fn shadow_at(
    tm: &mut Tm,
    vt: &mut dyn ValueType,
    b: MetaBlock,
    depth: usize,
) -> Result<(MetaBlock, Arc<Block>)> {
    too_deep(b, depth)?;
    let b = shadow(tm, vt, b)?;
    Ok((b, tm.read(b, BlockKind::Node)?))
}

/// The leaf holding `key` and its index there, if the tree has `key`.
fn find(tm: &mut Tm, root: MetaBlock, vs: usize, key: u64) -> Result<Option<(Arc<Block>, usize)>> {
    let mut b = root;
    for depth in 0.. {
        too_deep(b, depth)?;
        let data = load(tm, b, vs)?;
        let node = view(&data);
        let Some(i) = node.lower_bound(key) else { return Ok(None) };
        if node.is_leaf() {
            let hit = node.key(i) == key;
            return Ok(hit.then_some((data, i)));
        }
        b = MetaBlock(node.value_u64(i));
    }
    unreachable!("the depth check ends the loop")
}

/// Looks `key` up.
pub fn lookup(tm: &mut Tm, root: MetaBlock, vs: usize, key: u64) -> Result<Option<Vec<u8>>> {
    Ok(find(tm, root, vs, key)?.map(|(data, i)| view(&data).value(i).to_vec()))
}

/// Looks up an 8-byte value without allocating.
pub fn lookup_u64(tm: &mut Tm, root: MetaBlock, key: u64) -> Result<Option<u64>> {
    Ok(find(tm, root, 8, key)?.map(|(data, i)| view(&data).value_u64(i)))
}

/// The first entry with a key >= `key`.
pub fn next(tm: &mut Tm, root: MetaBlock, vs: usize, key: u64) -> Result<Option<(u64, Vec<u8>)>> {
    next_rec(tm, root, vs, key, 0)
}

fn next_rec(
    tm: &mut Tm,
    root: MetaBlock,
    vs: usize,
    key: u64,
    depth: usize,
) -> Result<Option<(u64, Vec<u8>)>> {
    too_deep(root, depth)?;
    let data = load(tm, root, vs)?;
    let node = view(&data);
    let n = node.nr_entries();
    if node.is_leaf() {
        let i = match node.lower_bound(key) {
            Some(i) if node.key(i) == key => i,
            Some(i) => i + 1,
            None => 0,
        };
        return Ok((i < n).then(|| (node.key(i), node.value(i).to_vec())));
    }
    let start = node.lower_bound(key).unwrap_or(0);
    for i in start..n {
        if let Some(found) = next_rec(tm, MetaBlock(node.value_u64(i)), vs, key, depth + 1)? {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// Visits every entry with `lo <= key < hi` (`hi` None: no upper bound) in key order; `f`
/// returns false to stop. Returns false if stopped.
pub fn walk_range(
    tm: &mut Tm,
    root: MetaBlock,
    vs: usize,
    lo: u64,
    hi: Option<u64>,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<bool>,
) -> Result<bool> {
    RangeWalk { vs, lo, hi, f }.visit(tm, root, 0)
}

/// What stays fixed through one [`walk_range`], so the recursion passes only the node and its
/// depth.
struct RangeWalk<'f> {
    vs: usize,
    lo: u64,
    hi: Option<u64>,
    f: &'f mut dyn FnMut(u64, &[u8]) -> Result<bool>,
}

impl RangeWalk<'_> {
    fn visit(&mut self, tm: &mut Tm, b: MetaBlock, depth: usize) -> Result<bool> {
        too_deep(b, depth)?;
        let data = load(tm, b, self.vs)?;
        let node = view(&data);
        let n = node.nr_entries();
        for i in 0..n {
            let k = node.key(i);
            if self.hi.is_some_and(|hi| k >= hi) {
                break;
            }
            if node.is_leaf() {
                if k >= self.lo && !(self.f)(k, node.value(i))? {
                    return Ok(false);
                }
            } else {
                if i + 1 < n && node.key(i + 1) <= self.lo {
                    continue;
                }
                if !self.visit(tm, MetaBlock(node.value_u64(i)), depth + 1)? {
                    return Ok(false);
                }
            }
        }
        Ok(true)
    }
}

/// Visits every entry in key order.
pub fn walk(
    tm: &mut Tm,
    root: MetaBlock,
    vs: usize,
    f: &mut dyn FnMut(u64, &[u8]) -> Result<bool>,
) -> Result<()> {
    walk_range(tm, root, vs, 0, None, f).map(|_| ())
}

/// Entries of a node as owned arrays (for splits and rebalancing).
struct Entries {
    leaf: bool,
    vs: usize,
    keys: Vec<u64>,
    vals: Vec<u8>,
}

impl Entries {
    fn read(node: Node<'_>) -> Self {
        let vs = node.value_size();
        let n = node.nr_entries();
        let mut vals = Vec::with_capacity(n * vs);
        for i in 0..n {
            vals.extend_from_slice(node.value(i));
        }
        Entries { leaf: node.is_leaf(), vs, keys: node.keys().collect(), vals }
    }

    fn write(&self, tm: &mut Tm, b: MetaBlock, range: std::ops::Range<usize>) -> Result<()> {
        let data = tm.write(b)?;
        let mut n = NodeMut::init(data, b, self.leaf, self.vs);
        for (slot, i) in range.enumerate() {
            n.set_key(slot, self.keys[i]);
            n.set_value(slot, &self.vals[i * self.vs..(i + 1) * self.vs]);
            n.set_nr_entries(slot + 1);
        }
        Ok(())
    }
}

struct Split {
    key: u64,
    right: MetaBlock,
}

/// Inserts an entry at slot `idx` of the shadowed node `b`, splitting it if it is full.
fn insert_entry(
    tm: &mut Tm,
    b: MetaBlock,
    idx: usize,
    key: u64,
    value: &[u8],
) -> Result<Option<Split>> {
    let data = tm.read(b, BlockKind::Node)?;
    let node = view(&data);
    let (n, max) = (node.nr_entries(), node.max_entries());
    if n < max {
        drop(data);
        node_mut(tm, b)?.insert_at(idx, key, value);
        return Ok(None);
    }
    let mut e = Entries::read(node);
    drop(data);
    e.keys.insert(idx, key);
    let vs = e.vs;
    e.vals.splice(idx * vs..idx * vs, value.iter().copied());
    let total = n + 1;
    // Appending (sequential writes) leaves the left node fuller; the right keeps >= max/3.
    let left_n = if idx == n { total - max / 3 } else { total / 2 };
    let right = tm.new_block(BlockKind::Node)?;
    e.write(tm, right, left_n..total)?;
    e.write(tm, b, 0..left_n)?;
    Ok(Some(Split { key: e.keys[left_n], right }))
}

fn insert_rec(
    tm: &mut Tm,
    vt: &mut dyn ValueType,
    b: MetaBlock,
    key: u64,
    value: &[u8],
    old: &mut Option<Vec<u8>>,
    depth: usize,
) -> Result<(MetaBlock, Option<Split>)> {
    let (b, data) = shadow_at(tm, vt, b, depth)?;
    let node = view(&data);
    let pos = node.lower_bound(key);
    if node.is_leaf() {
        if let Some(i) = pos.filter(|&i| node.key(i) == key) {
            *old = Some(node.value(i).to_vec());
            drop(data);
            node_mut(tm, b)?.set_value(i, value);
            return Ok((b, None));
        }
        drop(data);
        let split = insert_entry(tm, b, pos.map_or(0, |i| i + 1), key, value)?;
        return Ok((b, split));
    }
    let i = pos.unwrap_or(0);
    let child = MetaBlock(node.value_u64(i));
    drop(data);
    if pos.is_none() {
        // The kernel lowers keys[0] instead of keeping a separate minimum.
        node_mut(tm, b)?.set_key(0, key);
    }
    let (nc, split) = insert_rec(tm, vt, child, key, value, old, depth + 1)?;
    node_mut(tm, b)?.set_value(i, &nc.0.to_le_bytes());
    match split {
        None => Ok((b, None)),
        Some(s) => Ok((b, insert_entry(tm, b, i + 1, s.key, &s.right.0.to_le_bytes())?)),
    }
}

/// Inserts or overwrites `key`. Returns the new root and the old value; nothing is
/// decremented (see [`insert`] for the kernel's overwrite semantics).
pub fn insert_raw(
    tm: &mut Tm,
    vt: &mut dyn ValueType,
    root: MetaBlock,
    key: u64,
    value: &[u8],
) -> Result<(MetaBlock, Option<Vec<u8>>)> {
    debug_assert_eq!(value.len(), vt.size());
    let mut old = None;
    let (r, split) = insert_rec(tm, vt, root, key, value, &mut old, 0)?;
    if let Some(s) = split {
        // Split beneath: the root keeps its location and becomes internal over two children.
        let left = tm.new_block(BlockKind::Node)?;
        let data = tm.read(r, BlockKind::Node)?;
        let lkey = view(&data).key(0);
        let mut copy: Block = *data;
        drop(data);
        disk::put_u64(&mut copy[..], 8, left.0);
        *tm.write(left)? = copy;
        let mut n = NodeMut::init(tm.write(r)?, r, false, 8);
        n.set_key(0, lkey);
        n.set_value(0, &left.0.to_le_bytes());
        n.set_key(1, s.key);
        n.set_value(1, &s.right.0.to_le_bytes());
        n.set_nr_entries(2);
    }
    Ok((r, old))
}

/// Inserts or overwrites `key`; an overwritten value is decremented unless `equal` to the new
/// one. The new value is not incremented: the caller hands over its reference.
pub fn insert(
    tm: &mut Tm,
    vt: &mut dyn ValueType,
    root: MetaBlock,
    key: u64,
    value: &[u8],
) -> Result<(MetaBlock, Option<Vec<u8>>)> {
    let (r, old) = insert_raw(tm, vt, root, key, value)?;
    if let Some(o) = &old {
        if !vt.equal(o, value) {
            vt.dec(tm, o)?;
        }
    }
    Ok((r, old))
}

fn rebalance(tm: &mut Tm, vt: &mut dyn ValueType, parent: MetaBlock, i: usize) -> Result<()> {
    let data = tm.read(parent, BlockKind::Node)?;
    let pn = view(&data);
    if pn.nr_entries() < 2 {
        return Ok(()); // an only child: the root collapses onto it
    }
    let (l, r) = if i > 0 { (i - 1, i) } else { (0, 1) };
    let (lb, rb) = (MetaBlock(pn.value_u64(l)), MetaBlock(pn.value_u64(r)));
    drop(data);
    let lb = shadow(tm, vt, lb)?;
    let rb = shadow(tm, vt, rb)?;
    {
        let mut p = node_mut(tm, parent)?;
        p.set_value(l, &lb.0.to_le_bytes());
        p.set_value(r, &rb.0.to_le_bytes());
    }
    let ldata = tm.read(lb, BlockKind::Node)?;
    let rdata = tm.read(rb, BlockKind::Node)?;
    let (ln, rn) = (view(&ldata), view(&rdata));
    if ln.is_leaf() != rn.is_leaf() {
        return Err(Error::corrupt(rb, "sibling btree nodes are of different kinds"));
    }
    let max = ln.max_entries();
    let mut e = Entries::read(ln);
    let re = Entries::read(rn);
    drop((ldata, rdata));
    e.keys.extend_from_slice(&re.keys);
    e.vals.extend_from_slice(&re.vals);
    let total = e.keys.len();
    if total <= max {
        e.write(tm, lb, 0..total)?;
        node_mut(tm, parent)?.remove_at(r);
        // The right node's references now live in the left one; only the block is freed.
        tm.dec(rb)?;
    } else {
        let left_n = total / 2;
        e.write(tm, lb, 0..left_n)?;
        e.write(tm, rb, left_n..total)?;
        node_mut(tm, parent)?.set_key(r, e.keys[left_n]);
    }
    Ok(())
}

fn remove_rec(
    tm: &mut Tm,
    vt: &mut dyn ValueType,
    b: MetaBlock,
    key: u64,
    depth: usize,
) -> Result<(MetaBlock, Vec<u8>)> {
    let (b, data) = shadow_at(tm, vt, b, depth)?;
    let node = view(&data);
    let i =
        node.lower_bound(key).ok_or_else(|| Error::corrupt(b, "key vanished during removal"))?;
    if node.is_leaf() {
        if node.key(i) != key {
            return Err(Error::corrupt(b, "key vanished during removal"));
        }
        let v = node.value(i).to_vec();
        drop(data);
        node_mut(tm, b)?.remove_at(i);
        return Ok((b, v));
    }
    let child = MetaBlock(node.value_u64(i));
    drop(data);
    let (nc, v) = remove_rec(tm, vt, child, key, depth + 1)?;
    node_mut(tm, b)?.set_value(i, &nc.0.to_le_bytes());
    let cdata = tm.read(nc, BlockKind::Node)?;
    let cn = view(&cdata);
    let under = cn.nr_entries() < cn.max_entries() / 3;
    drop(cdata);
    if under {
        rebalance(tm, vt, b, i)?;
    }
    Ok((b, v))
}

/// Removes `key` without decrementing its value. Returns the new root and the value.
pub fn remove_raw(
    tm: &mut Tm,
    vt: &mut dyn ValueType,
    root: MetaBlock,
    key: u64,
) -> Result<(MetaBlock, Option<Vec<u8>>)> {
    if lookup(tm, root, vt.size(), key)?.is_none() {
        return Ok((root, None));
    }
    let (r, v) = remove_rec(tm, vt, root, key, 0)?;
    // An internal root with a single child takes over the child's contents.
    loop {
        let data = tm.read(r, BlockKind::Node)?;
        let node = view(&data);
        if node.is_leaf() || node.nr_entries() != 1 {
            break;
        }
        let child = MetaBlock(node.value_u64(0));
        drop(data);
        let cdata = load(tm, child, vt.size())?;
        let shared = tm.count(child)? > 1;
        let mut copy: Block = *cdata;
        drop(cdata);
        disk::put_u64(&mut copy[..], 8, r.0);
        *tm.write(r)? = copy;
        if shared {
            inc_children(tm, vt, r)?;
        }
        tm.dec(child)?;
    }
    Ok((r, Some(v)))
}

/// Removes `key`, decrementing the removed value.
pub fn remove(
    tm: &mut Tm,
    vt: &mut dyn ValueType,
    root: MetaBlock,
    key: u64,
) -> Result<(MetaBlock, Option<Vec<u8>>)> {
    let (r, v) = remove_raw(tm, vt, root, key)?;
    if let Some(v) = &v {
        vt.dec(tm, v)?;
    }
    Ok((r, v))
}

/// Removes every key in `begin..end` (decrementing each value); returns the new root and how
/// many entries went.
pub fn remove_range(
    tm: &mut Tm,
    vt: &mut dyn ValueType,
    root: MetaBlock,
    begin: u64,
    end: u64,
) -> Result<(MetaBlock, u64)> {
    let mut keys = Vec::new();
    walk_range(tm, root, vt.size(), begin, Some(end), &mut |k, _| {
        keys.push(k);
        Ok(true)
    })?;
    let mut r = root;
    for &k in &keys {
        r = remove(tm, vt, r, k)?.0;
    }
    Ok((r, keys.len() as u64))
}

/// Drops a whole tree: shared nodes just lose one reference; unshared ones release their
/// children (and leaf values through `dec`) and are freed.
pub fn del(tm: &mut Tm, vt: &mut dyn ValueType, root: MetaBlock) -> Result<()> {
    del_rec(tm, vt, root, 0)
}

fn del_rec(tm: &mut Tm, vt: &mut dyn ValueType, root: MetaBlock, depth: usize) -> Result<()> {
    too_deep(root, depth)?;
    if tm.count(root)? > 1 {
        return tm.dec(root);
    }
    each_ref(tm, root, vt.size(), &mut |tm, r| match r {
        Ref::Value(v) => vt.dec(tm, v),
        Ref::Child(c) => del_rec(tm, vt, c, depth + 1),
    })?;
    tm.dec(root)
}

/// Shape statistics and per-node callback for the invariant checker.
pub struct CheckCtx<'a> {
    /// Nodes already checked (shared subtrees are checked once), with their height.
    pub seen: &'a mut HashMap<u64, usize>,
    /// Called once per distinct node.
    pub visit: &'a mut dyn FnMut(&mut Tm, MetaBlock, Node<'_>) -> Result<()>,
}

/// Checks every shape rule of the tree at `root`; returns its height (1 = a single leaf).
pub fn check(tm: &mut Tm, root: MetaBlock, vs: usize, ctx: &mut CheckCtx<'_>) -> Result<usize> {
    check_rec(tm, root, vs, 0, u64::MAX, ctx, 0)
}

fn check_rec(
    tm: &mut Tm,
    b: MetaBlock,
    vs: usize,
    lo: u64,
    hi: u64,
    ctx: &mut CheckCtx<'_>,
    depth: usize,
) -> Result<usize> {
    too_deep(b, depth)?;
    let is_root = depth == 0;
    if let Some(&h) = ctx.seen.get(&b.0) {
        return Ok(h);
    }
    let data = load(tm, b, vs)?;
    let node = view(&data);
    let n = node.nr_entries();
    if !is_root && n < node.max_entries() / 3 {
        return Err(Error::corrupt(
            b,
            format!("non-root node has {n} entries, below max/3 = {}", node.max_entries() / 3),
        ));
    }
    let keys: Vec<u64> = node.keys().collect();
    if keys.windows(2).any(|w| w[0] >= w[1]) {
        return Err(Error::corrupt(b, "keys are not strictly ascending"));
    }
    if let (Some(&first), Some(&last)) = (keys.first(), keys.last()) {
        if first < lo || (last >= hi && hi != u64::MAX) {
            return Err(Error::corrupt(
                b,
                format!("keys {first}..={last} escape the parent's range {lo}..{hi}"),
            ));
        }
    }
    let mut height = 1;
    if !node.is_leaf() {
        if n == 0 {
            return Err(Error::corrupt(b, "internal node without entries"));
        }
        let mut child_h = None;
        for i in 0..n {
            let clo = keys[i];
            let chi = if i + 1 < n { keys[i + 1] } else { hi };
            let h = check_rec(tm, MetaBlock(node.value_u64(i)), vs, clo, chi, ctx, depth + 1)?;
            if *child_h.get_or_insert(h) != h {
                return Err(Error::corrupt(b, "children have different heights"));
            }
            // A separator may be lower than the child's first key, never higher: checked by
            // the child against `clo`.
        }
        height = child_h.unwrap_or(0) + 1;
    }
    (ctx.visit)(tm, b, node)?;
    ctx.seen.insert(b.0, height);
    Ok(height)
}

#[cfg(test)]
mod tests;
