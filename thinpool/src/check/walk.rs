//! Walking the btrees: every node is validated once, references are counted per on-disk
//! pointer, and nodes shared between trees (snapshots, the held metadata snapshot) are walked
//! once and remembered, which is exactly the "lazy" counting dm-thin uses (§8.6).

use std::collections::BTreeMap;
use std::rc::Rc;

use super::{Checker, DamageKind, Place, Tree};
use crate::pdata::disk::{self, BlockKind, BlockTime, DeviceDetails, Node};
use crate::units::{MetaBlock, ThinId};

/// Deeper than any btree that fits in the largest metadata device (fan-out >= 84).
const MAX_DEPTH: usize = 12;

/// What a tree's leaves hold; decides value size and what is done with each value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Details,
    Top,
    Bottom,
    DataIndex,
    Overflow,
}

impl Kind {
    fn value_size(self) -> usize {
        match self {
            Kind::Details => DeviceDetails::SIZE,
            Kind::Top | Kind::Bottom => 8,
            Kind::DataIndex => disk::IndexEntry::SIZE,
            Kind::Overflow => 4,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Details => "device details",
            Kind::Top => "top-level mapping",
            Kind::Bottom => "bottom-level mapping",
            Kind::DataIndex => "data space map index",
            Kind::Overflow => "reference count overflow",
        }
    }
}

/// Non-node uses of a metadata block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Superblock,
    Index,
    Bitmap,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Superblock => "a superblock",
            Role::Index => "a metadata space map index block",
            Role::Bitmap => "a space map bitmap",
        }
    }
}

/// Leaf entries of a small tree (everything but bottom-level mappings), in key order.
pub(crate) type Entries = Rc<Vec<(u64, Vec<u8>)>>;

/// What is remembered about a node after its first visit.
#[derive(Clone)]
pub(crate) struct NodeSummary {
    pub(crate) kind: Kind,
    /// The last tree that used this node; a second use within one tree is a revisit.
    tree: u32,
    in_progress: bool,
    /// False when the node itself could not be used (unreadable, bad header).
    usable: bool,
    out: Outcome,
}

#[derive(Clone, Default)]
pub(crate) struct Outcome {
    height: u32,
    /// The node's own entries and the fewest a non-root node of its kind may hold.
    fill: (usize, usize),
    first: Option<u64>,
    last: Option<u64>,
    /// Leaf entries in the subtree.
    pub(crate) entries: u64,
    /// False when some part of the subtree could not be walked.
    pub(crate) complete: bool,
    pub(crate) collected: Option<Entries>,
}

struct Ctx {
    tree_id: u32,
    kind: Kind,
    tree: Tree,
    snapshot: bool,
}

/// Where a node is met: its block, the key range its parent gives it, and whether it is the
/// tree's root (exempt from the fill rule).
#[derive(Clone, Copy)]
struct At {
    b: u64,
    lo: Option<u64>,
    hi: Option<u64>,
    is_root: bool,
}

impl Checker<'_> {
    /// Walks the tree rooted at `root`. `count_ref` is false for bottom-level roots, whose
    /// references are counted by the top-level leaves that hold them.
    pub(crate) fn walk_tree(
        &mut self,
        root: u64,
        kind: Kind,
        tree: Tree,
        snapshot: bool,
        count_ref: bool,
    ) -> Option<Outcome> {
        self.next_tree += 1;
        let ctx = Ctx { tree_id: self.next_tree, kind, tree, snapshot };
        let mut path = Vec::new();
        let at = At { b: root, lo: None, hi: None, is_root: true };
        let out = self.walk_node(&ctx, at, &mut path, count_ref);
        if out.as_ref().is_none_or(|o| !o.complete) {
            self.partial = true;
        }
        out
    }

    /// The device details found, and whether the whole tree could be read.
    pub(crate) fn walk_details(
        &mut self,
        root: u64,
        snapshot: bool,
    ) -> (BTreeMap<u64, DeviceDetails>, bool) {
        let Some(out) = self.walk_tree(root, Kind::Details, Tree::Details, snapshot, true) else {
            return (BTreeMap::new(), false);
        };
        let entries = out.collected.unwrap_or_default();
        (entries.iter().map(|(k, v)| (*k, DeviceDetails::decode(v))).collect(), out.complete)
    }

    /// The bottom-level roots found, and whether the whole top level could be read.
    pub(crate) fn walk_top(&mut self, root: u64, snapshot: bool) -> (BTreeMap<u64, u64>, bool) {
        let Some(out) = self.walk_tree(root, Kind::Top, Tree::Mapping, snapshot, true) else {
            return (BTreeMap::new(), false);
        };
        let entries = out.collected.unwrap_or_default();
        (entries.iter().map(|(k, v)| (*k, disk::get_u64(v, 0))).collect(), out.complete)
    }

    /// Walks a device's bottom-level tree; the number of mappings when it could be counted.
    pub(crate) fn walk_bottom(&mut self, id: ThinId, root: u64, snapshot: bool) -> Option<u64> {
        let out = self.walk_tree(root, Kind::Bottom, Tree::Device(id), snapshot, false)?;
        out.complete.then_some(out.entries)
    }

    fn place(&self, ctx: &Ctx, at: At, path: &[MetaBlock]) -> Place {
        let At { b, lo, hi, .. } = at;
        Place {
            block: Some(MetaBlock(b)),
            tree: Some(ctx.tree),
            snapshot: ctx.snapshot,
            keys: (lo.is_some() || hi.is_some()).then_some((lo, hi)),
            key: None,
            path: path.iter().copied().chain([MetaBlock(b)]).collect(),
        }
    }

    fn walk_node(
        &mut self,
        ctx: &Ctx,
        at: At,
        path: &mut Vec<MetaBlock>,
        count_ref: bool,
    ) -> Option<Outcome> {
        let b = at.b;
        let place = self.place(ctx, at, path);
        if count_ref {
            if !self.reference(b, &place) {
                return None;
            }
        } else if b >= self.bound {
            return None; // already reported where the pointer was counted
        }
        if path.len() >= MAX_DEPTH {
            self.damage(DamageKind::Unbalanced, place, "tree is deeper than any valid btree");
            return None;
        }
        if let Some(role) = self.roles.get(&b).copied() {
            self.damage(
                DamageKind::Conflict,
                place,
                format!("block {b} is used as {} and as a {} node", role.name(), ctx.kind.name()),
            );
            return None;
        }
        if self.nodes.contains_key(&b) {
            return self.revisit(ctx, at, place);
        }
        self.nodes.insert(
            b,
            NodeSummary {
                kind: ctx.kind,
                tree: ctx.tree_id,
                in_progress: true,
                usable: false,
                out: Outcome::default(),
            },
        );
        let out = self.visit_fresh(ctx, at, path, &place);
        if let Some(s) = self.nodes.get_mut(&b) {
            s.in_progress = false;
            if let Some(o) = &out {
                s.usable = true;
                s.out = o.clone();
            }
        }
        out
    }

    /// A node met before: fine when shared between trees (snapshots), damage within one tree.
    fn revisit(&mut self, ctx: &Ctx, at: At, place: Place) -> Option<Outcome> {
        let At { b, lo, hi, is_root } = at;
        let s = self.nodes.get(&b)?.clone();
        if s.kind != ctx.kind {
            self.damage(
                DamageKind::Conflict,
                place,
                format!("node is used in a {} tree and a {} tree", s.kind.name(), ctx.kind.name()),
            );
            return None;
        }
        if s.in_progress || s.tree == ctx.tree_id {
            let what =
                if s.in_progress { "a cycle leads back to" } else { "the tree reaches twice" };
            self.damage(DamageKind::Revisit, place, format!("{what} block {b}"));
            return None;
        }
        if let Some(n) = self.nodes.get_mut(&b) {
            n.tree = ctx.tree_id;
        }
        if !s.usable {
            return None;
        }
        // A node first met as a root may be a child here: the fill rule applies now.
        let (n, min) = s.out.fill;
        if !is_root && n < min {
            self.damage(
                DamageKind::Underfull,
                place.clone(),
                format!("non-root node holds {n} entries, fewer than {min}"),
            );
        }
        self.check_range(&s.out, lo, hi, place);
        Some(s.out)
    }

    fn check_range(&mut self, out: &Outcome, lo: Option<u64>, hi: Option<u64>, place: Place) {
        if let (Some(lo), Some(first)) = (lo, out.first) {
            if first < lo {
                self.damage(
                    DamageKind::KeyRange,
                    place.clone(),
                    format!("first key {first} is below the parent's separator {lo}"),
                );
            }
        }
        if let (Some(hi), Some(last)) = (hi, out.last) {
            if last >= hi {
                self.damage(
                    DamageKind::KeyRange,
                    place,
                    format!("key {last} is not below the next separator {hi}"),
                );
            }
        }
    }

    fn visit_fresh(
        &mut self,
        ctx: &Ctx,
        at: At,
        path: &mut Vec<MetaBlock>,
        place: &Place,
    ) -> Option<Outcome> {
        let At { b, lo, hi, is_root } = at;
        let block = self.read_verified(b, BlockKind::Node, place)?;
        let node = match Node::new(&block) {
            Ok(n) => n,
            Err(e) => {
                self.damage(DamageKind::NodeHeader, place.clone(), e.to_string());
                return None;
            }
        };
        let (n, max, vs) = (node.nr_entries(), node.max_entries(), node.value_size());
        if node.is_leaf() && vs != ctx.kind.value_size() {
            self.damage(
                DamageKind::NodeHeader,
                place.clone(),
                format!(
                    "leaf value size is {vs}, a {} tree needs {}",
                    ctx.kind.name(),
                    ctx.kind.value_size()
                ),
            );
            return None;
        }
        let canonical = disk::max_entries(vs);
        if max != canonical {
            self.damage(
                DamageKind::NodeHeader,
                place.clone(),
                format!(
                    "max_entries is {max}, the canonical value for {vs}-byte values is {canonical}"
                ),
            );
        }
        if !is_root && n < canonical / 3 {
            self.damage(
                DamageKind::Underfull,
                place.clone(),
                format!("non-root node holds {n} entries, fewer than {}", canonical / 3),
            );
        }
        if !node.is_leaf() && n == 0 {
            self.damage(DamageKind::NodeHeader, place.clone(), "internal node has no entries");
            return None;
        }
        let keys: Vec<u64> = node.keys().collect();
        if let Some(i) = keys.windows(2).position(|w| w[0] >= w[1]) {
            self.damage(
                DamageKind::KeyOrder,
                place.clone(),
                format!(
                    "key {} at slot {} is not above key {} before it",
                    keys[i + 1],
                    i + 1,
                    keys[i]
                ),
            );
        }
        let own = Outcome {
            first: keys.first().copied(),
            last: keys.last().copied(),
            ..Outcome::default()
        };
        self.check_range(&own, lo, hi, place.clone());

        let fill = (n, canonical / 3);
        if node.is_leaf() {
            return Some(Outcome { fill, ..self.visit_leaf(ctx, &node, &keys, place) });
        }
        let mut out = Outcome { complete: true, fill, ..Outcome::default() };
        let mut heights = Vec::with_capacity(n);
        let mut collected: Vec<(u64, Vec<u8>)> = Vec::new();
        path.push(MetaBlock(b));
        for i in 0..n {
            let child = node.value_u64(i);
            let child_hi = keys.get(i + 1).copied().or(hi);
            let at = At { b: child, lo: Some(keys[i]), hi: child_hi, is_root: false };
            match self.walk_node(ctx, at, path, true) {
                Some(c) => {
                    heights.push(c.height);
                    out.first = out.first.or(c.first);
                    out.last = c.last.or(out.last);
                    out.entries += c.entries;
                    out.complete &= c.complete;
                    if let Some(entries) = &c.collected {
                        // Keep the list strictly ascending even across damaged children.
                        let floor = collected.last().map(|(k, _)| *k);
                        collected.extend(
                            entries.iter().filter(|(k, _)| floor.is_none_or(|f| *k > f)).cloned(),
                        );
                    }
                }
                None => out.complete = false,
            }
        }
        path.pop();
        if heights.windows(2).any(|w| w[0] != w[1]) {
            self.damage(
                DamageKind::Unbalanced,
                place.clone(),
                format!("children have leaves at different depths {heights:?}"),
            );
        }
        out.height = heights.iter().copied().max().unwrap_or(0) + 1;
        if ctx.kind != Kind::Bottom {
            out.collected = Some(Rc::new(collected));
        }
        Some(out)
    }

    fn visit_leaf(&mut self, ctx: &Ctx, node: &Node<'_>, keys: &[u64], place: &Place) -> Outcome {
        let mut out = Outcome {
            height: 0,
            fill: (0, 0),
            first: keys.first().copied(),
            last: keys.last().copied(),
            entries: keys.len() as u64,
            complete: true,
            collected: None,
        };
        match ctx.kind {
            Kind::Bottom => {
                for (i, &vblock) in keys.iter().enumerate() {
                    let bt = BlockTime::unpack(node.value_u64(i));
                    if bt.block.0 >= self.data_nr_blocks {
                        self.damage(
                            DamageKind::DataBlockRange,
                            place.clone().with_key(vblock),
                            format!(
                                "maps data block {}, beyond the {} data blocks",
                                bt.block, self.data_nr_blocks
                            ),
                        );
                    } else {
                        self.data_refs.inc(bt.block.0);
                    }
                }
            }
            Kind::Top => {
                for (i, &dev) in keys.iter().enumerate() {
                    let root = node.value_u64(i);
                    let p = Place { tree: Some(Tree::Device(ThinId(dev))), ..place.clone() }
                        .with_key(dev);
                    self.reference(root, &p);
                }
                out.collected = Some(collect(node, keys));
            }
            Kind::Details | Kind::DataIndex | Kind::Overflow => {
                out.collected = Some(collect(node, keys));
            }
        }
        out
    }
}

fn collect(node: &Node<'_>, keys: &[u64]) -> Entries {
    Rc::new(keys.iter().enumerate().map(|(i, &k)| (k, node.value(i).to_vec())).collect())
}
