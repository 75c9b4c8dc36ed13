//! An independent, read-only checker for dm-thin pool metadata.
//!
//! It walks every structure reachable from the superblock straight from the device bytes (no
//! engine state), recounts every reference and compares with the space maps. It checks the
//! union of what `thin_check` 0.9.0 and 1.x verify plus what both skip
//! (thin-provisioning-tools' src/thin/check.rs, and the kernel's own checks in
//! drivers/md/persistent-data/dm-btree.c and dm-space-map-common.c):
//!
//! ```text
//! superblock ── details tree ─────────────────────────── device details (mapped_blocks, …)
//!     │      ── mapping tree (top level, key = dev id) ── bottom-level root per device
//!     │                                                     └─ mappings vblock → data block|time
//!     │      ── held root (metadata snapshot copy) ── its own details + mapping roots
//!     ├─ data sm root ── index btree (key = bitmap#) ── bitmaps;  overflow btree (block → count)
//!     └─ metadata sm root ── index block (255 entries) ── bitmaps;  overflow btree
//! ```
//!
//! Every damage is recorded with its place and the walk goes on; nothing stops at the first
//! problem. Hostile bytes cannot make it panic or loop: depth is bounded and a node met twice
//! within one tree (a cycle or an overlap) is reported instead of followed.

mod sm;
mod walk;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use crate::io::BlockDevice;
use crate::pdata::disk::{
    self, Block, BlockKind, SmRoot, Superblock, BLOCK_SIZE, MAX_METADATA_BLOCKS,
    METADATA_BLOCK_SECTORS, SUPERBLOCK_MAGIC,
};
use crate::units::{MetaBlock, ThinId};

use walk::{NodeSummary, Role};

/// How many damages of one kind are listed before the rest are only counted.
const LIST_LIMIT: usize = 1000;

/// What is wrong, in a small matchable form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum DamageKind {
    /// A block could not be read from the device.
    Io,
    /// A superblock field dm-thin relies on is wrong (magic, version, block sizes, flags).
    Superblock,
    /// A block's checksum does not match its contents.
    Checksum,
    /// A block's self-reported number differs from where it was read.
    Location,
    /// A pointer leads beyond the metadata device or the metadata space map.
    OutOfRange,
    /// A node header is impossible or non-canonical (flags, max_entries, value_size, nr_entries).
    NodeHeader,
    /// Keys in a node are not strictly ascending.
    KeyOrder,
    /// A node's keys fall outside the range its parent's separators give it.
    KeyRange,
    /// A non-root node holds fewer than max_entries / 3 entries.
    Underfull,
    /// Leaves of one tree are at different depths, or a tree is deeper than possible.
    Unbalanced,
    /// A node is reached twice within one tree (a cycle or overlapping subtrees).
    Revisit,
    /// One block is used as two different kinds of structure.
    Conflict,
    /// The details tree and the mapping tree disagree on which devices exist.
    DeviceSets,
    /// A device's `mapped_blocks` differs from the number of mappings in its tree.
    MappedBlocks,
    /// A mapping points at a data block beyond the data space map.
    DataBlockRange,
    /// A metadata block's reference count differs from the references found.
    MetadataRefCount,
    /// A data block's reference count differs from the references found.
    DataRefCount,
    /// The overflow tree and the bitmap disagree (entry iff 3, counts >= 3).
    Overflow,
    /// A bitmap entry beyond the space map's `nr_blocks` is not zero.
    BitmapTail,
    /// A space map's `nr_allocated` differs from the number of blocks in use.
    NrAllocated,
    /// An index entry's `nr_free` / `none_free_before` would hide free blocks from the kernel.
    IndexHint,
    /// The data space map's index tree does not hold one entry per bitmap.
    IndexTree,
}

impl DamageKind {
    /// Hints are space-map bookkeeping that neither thin_check version verifies and the kernel
    /// only uses to find free blocks quickly (`nr_allocated`, `nr_free`, `none_free_before`).
    /// Debian's thin_restore 0.9.0 itself leaves them slightly off (it counts a node it wrote
    /// and then dropped), so they are told apart from real inconsistencies.
    pub fn is_hint(self) -> bool {
        matches!(self, DamageKind::NrAllocated | DamageKind::IndexHint)
    }
}

/// Which structure a damage concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Tree {
    Superblock,
    Details,
    /// The top level of the mapping tree (key = device id).
    Mapping,
    /// A device's bottom-level mapping tree.
    Device(ThinId),
    DataIndex,
    DataOverflow,
    MetadataIndex,
    MetadataOverflow,
    /// Bitmap number n of the data space map.
    DataBitmap(u64),
    /// Bitmap number n of the metadata space map.
    MetadataBitmap(u64),
}

impl fmt::Display for Tree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tree::Superblock => write!(f, "superblock"),
            Tree::Details => write!(f, "device details tree"),
            Tree::Mapping => write!(f, "top-level mapping tree"),
            Tree::Device(id) => write!(f, "mapping tree of device {id}"),
            Tree::DataIndex => write!(f, "data space map index tree"),
            Tree::DataOverflow => write!(f, "data space map overflow tree"),
            Tree::MetadataIndex => write!(f, "metadata space map index block"),
            Tree::MetadataOverflow => write!(f, "metadata space map overflow tree"),
            Tree::DataBitmap(n) => write!(f, "data space map bitmap {n}"),
            Tree::MetadataBitmap(n) => write!(f, "metadata space map bitmap {n}"),
        }
    }
}

/// Where a damage is: the metadata block, the structure, the key range and the path of node
/// blocks from the tree's root.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Place {
    pub block: Option<MetaBlock>,
    pub tree: Option<Tree>,
    /// True for structures reached through the held metadata snapshot.
    pub snapshot: bool,
    /// Keys the node may hold: `[lo, hi)`, either end open.
    pub keys: Option<(Option<u64>, Option<u64>)>,
    /// A single key (a mapping's virtual block, a space-map entry's block).
    pub key: Option<u64>,
    pub path: Vec<MetaBlock>,
}

impl Place {
    pub fn block(b: u64) -> Self {
        Place { block: Some(MetaBlock(b)), ..Place::default() }
    }

    pub fn tree(tree: Tree) -> Self {
        Place { tree: Some(tree), ..Place::default() }
    }

    fn with_block(mut self, b: u64) -> Self {
        self.block = Some(MetaBlock(b));
        self
    }

    fn with_key(mut self, k: u64) -> Self {
        self.key = Some(k);
        self
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(b) = self.block {
            parts.push(format!("block {b}"));
        }
        if let Some(t) = self.tree {
            let snap = if self.snapshot { " (metadata snapshot)" } else { "" };
            parts.push(format!("{t}{snap}"));
        }
        if let Some((lo, hi)) = self.keys {
            let lo = lo.map_or("-inf".to_owned(), |k| k.to_string());
            let hi = hi.map_or("+inf".to_owned(), |k| k.to_string());
            parts.push(format!("keys [{lo}, {hi})"));
        }
        if let Some(k) = self.key {
            parts.push(format!("key {k}"));
        }
        if !self.path.is_empty() {
            let p: Vec<String> = self.path.iter().map(|b| b.to_string()).collect();
            parts.push(format!("path {}", p.join("/")));
        }
        if parts.is_empty() {
            parts.push("metadata".to_owned());
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// One thing found wrong.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Damage {
    pub kind: DamageKind,
    pub place: Place,
    pub message: String,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// Figures gathered while checking.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub transaction_id: u64,
    pub time: u32,
    pub needs_check: bool,
    pub data_block_size: u32,
    pub devices: u64,
    /// Sum of the devices' mapping counts as found in their trees.
    pub mappings: u64,
    pub metadata_blocks: u64,
    pub metadata_blocks_used: u64,
    pub data_blocks: u64,
    pub data_blocks_used: u64,
    pub nodes: u64,
    pub held_root: Option<MetaBlock>,
}

/// The outcome of a check.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Report {
    pub damages: Vec<Damage>,
    /// Damages found beyond [`LIST_LIMIT`] per kind: counted, not listed.
    pub unlisted: BTreeMap<DamageKind, u64>,
    pub stats: Stats,
}

impl Report {
    /// Nothing at all is wrong, hints included. What metadata written by lamina must meet.
    pub fn is_clean(&self) -> bool {
        self.damages.is_empty() && self.unlisted.is_empty()
    }

    /// Nothing is wrong except hints (see [`DamageKind::is_hint`]).
    pub fn is_consistent(&self) -> bool {
        self.damages.iter().all(|d| d.kind.is_hint()) && self.unlisted.keys().all(|k| k.is_hint())
    }

    /// Damages that are not hints.
    pub fn fatal(&self) -> impl Iterator<Item = &Damage> {
        self.damages.iter().filter(|d| !d.kind.is_hint())
    }

    /// Whether some damage of `kind` was found.
    pub fn has(&self, kind: DamageKind) -> bool {
        self.damages.iter().any(|d| d.kind == kind) || self.unlisted.contains_key(&kind)
    }

    pub fn of_kind(&self, kind: DamageKind) -> impl Iterator<Item = &Damage> {
        self.damages.iter().filter(move |d| d.kind == kind)
    }
}

/// Checks the metadata on `dev`. Never fails: problems reading the device are damages too.
pub fn check(dev: &dyn BlockDevice) -> Report {
    let mut c = Checker::new(dev);
    c.run();
    c.finish()
}

/// The state of one check run.
pub(crate) struct Checker<'a> {
    dev: &'a dyn BlockDevice,
    dev_blocks: u64,
    /// Blocks a pointer may reach: min(device blocks, metadata sm nr_blocks, the format's max).
    bound: u64,
    /// References found to each metadata block below `bound`.
    meta_refs: Vec<u32>,
    /// References found to each data block (one per bottom-level leaf entry, §8.6).
    data_refs: Counts,
    data_nr_blocks: u64,
    nodes: HashMap<u64, NodeSummary>,
    roles: HashMap<u64, Role>,
    next_tree: u32,
    /// Some structure could not be walked, so found reference counts may be short.
    partial: bool,
    report: Report,
    listed: HashMap<DamageKind, usize>,
}

impl<'a> Checker<'a> {
    fn new(dev: &'a dyn BlockDevice) -> Self {
        Checker {
            dev,
            dev_blocks: dev.size() / BLOCK_SIZE as u64,
            bound: 0,
            meta_refs: Vec::new(),
            data_refs: Counts::default(),
            data_nr_blocks: 0,
            nodes: HashMap::new(),
            roles: HashMap::new(),
            next_tree: 0,
            partial: false,
            report: Report::default(),
            listed: HashMap::new(),
        }
    }

    pub(crate) fn damage(&mut self, kind: DamageKind, place: Place, message: impl Into<String>) {
        let n = self.listed.entry(kind).or_insert(0);
        if *n < LIST_LIMIT {
            *n += 1;
            self.report.damages.push(Damage { kind, place, message: message.into() });
        } else {
            *self.report.unlisted.entry(kind).or_insert(0) += 1;
        }
    }

    /// Reads metadata block `b`, reporting a failure as damage at `place`.
    pub(crate) fn read(&mut self, b: u64, place: &Place) -> Option<Box<Block>> {
        let mut block = disk::zeroed();
        let res = match b.checked_mul(BLOCK_SIZE as u64) {
            Some(off) => self.dev.read_at(&mut block[..], off),
            None => Err(std::io::Error::other("offset overflows")),
        };
        match res {
            Ok(()) => Some(block),
            Err(e) => {
                self.damage(DamageKind::Io, place.clone(), format!("cannot read block {b}: {e}"));
                None
            }
        }
    }

    /// Reads block `b` and checks its checksum and location as a block of `kind`.
    pub(crate) fn read_verified(
        &mut self,
        b: u64,
        kind: BlockKind,
        place: &Place,
    ) -> Option<Box<Block>> {
        let block = self.read(b, place)?;
        match disk::verify(&block, kind, MetaBlock(b)) {
            Ok(()) => Some(block),
            Err(e) => {
                let dk = match e {
                    disk::DecodeError::Location { .. } => DamageKind::Location,
                    _ => DamageKind::Checksum,
                };
                self.damage(dk, place.clone(), e.to_string());
                None
            }
        }
    }

    /// Counts one on-disk reference to metadata block `b`. False (with damage) when `b` is out
    /// of reach, in which case it must not be read.
    pub(crate) fn reference(&mut self, b: u64, place: &Place) -> bool {
        if b >= self.bound {
            self.damage(
                DamageKind::OutOfRange,
                place.clone(),
                format!("points at block {b}, beyond the {} usable metadata blocks", self.bound),
            );
            return false;
        }
        let r = &mut self.meta_refs[b as usize];
        *r = r.saturating_add(1);
        true
    }

    /// Claims block `b` for a non-node role. False (with damage) when it already has one, so
    /// a block is never scanned twice however often hostile pointers name it.
    pub(crate) fn claim(&mut self, b: u64, role: Role, place: &Place) -> bool {
        if let Some(s) = self.nodes.get(&b) {
            let was = s.kind.name();
            self.damage(
                DamageKind::Conflict,
                place.clone(),
                format!("block {b} is used as {} and as a {was} btree node", role.name()),
            );
            return false;
        }
        if let Some(old) = self.roles.get(&b).copied() {
            self.damage(
                DamageKind::Conflict,
                place.clone(),
                format!("block {b} is used as {} and as {}", old.name(), role.name()),
            );
            return false;
        }
        self.roles.insert(b, role);
        true
    }

    fn run(&mut self) {
        let sb_place = Place { tree: Some(Tree::Superblock), ..Place::block(0) };
        if self.dev_blocks == 0 {
            self.damage(DamageKind::Io, sb_place, "the metadata device is smaller than one block");
            return;
        }
        let Some(block) = self.read_verified(0, BlockKind::Superblock, &sb_place) else {
            return;
        };
        let sb = raw_superblock(&block);
        for msg in raw_superblock_damages(&block) {
            self.damage(DamageKind::Superblock, sb_place.clone(), msg);
        }
        self.check_superblock_fields(&sb, &sb_place);
        self.report.stats.transaction_id = sb.trans_id;
        self.report.stats.time = sb.time;
        self.report.stats.needs_check = sb.needs_check();
        self.report.stats.data_block_size = sb.data_block_size;

        let mnr = sb.metadata_sm_root.nr_blocks;
        self.report.stats.metadata_blocks = mnr;
        if mnr > self.dev_blocks {
            self.damage(
                DamageKind::Superblock,
                sb_place.clone(),
                format!(
                    "metadata space map covers {mnr} blocks but the device has {}",
                    self.dev_blocks
                ),
            );
        }
        if mnr > MAX_METADATA_BLOCKS {
            self.damage(
                DamageKind::Superblock,
                sb_place.clone(),
                format!("metadata space map covers {mnr} blocks, more than {MAX_METADATA_BLOCKS}"),
            );
        }
        self.bound = mnr.min(self.dev_blocks).min(MAX_METADATA_BLOCKS);
        self.meta_refs = vec![0; self.bound as usize];
        self.data_nr_blocks = sb.data_sm_root.nr_blocks;
        self.data_refs = Counts::for_blocks(self.data_nr_blocks);
        self.report.stats.data_blocks = self.data_nr_blocks;
        if self.reference(0, &sb_place) {
            self.claim(0, Role::Superblock, &sb_place);
        }

        // The live trees, then the held metadata snapshot's, which share most nodes.
        let live = self.check_trees(&sb, false);
        self.report.stats.devices = live.devices;
        self.report.stats.mappings = live.mappings;
        if sb.held_root.0 != 0 {
            self.report.stats.held_root = Some(sb.held_root);
            self.check_held_root(sb.held_root.0);
        }

        self.check_data_sm(&sb.data_sm_root);
        self.check_metadata_sm(&sb.metadata_sm_root);
        self.report.stats.nodes = self.nodes.len() as u64;
    }

    fn check_superblock_fields(&mut self, sb: &Superblock, place: &Place) {
        if sb.blocknr.0 != 0 {
            self.damage(
                DamageKind::Location,
                place.clone(),
                format!("superblock claims to be block {}", sb.blocknr),
            );
        }
        if !(1..=2).contains(&sb.version) {
            self.damage(
                DamageKind::Superblock,
                place.clone(),
                format!("metadata version is {}, expected 1 or 2", sb.version),
            );
        }
        if !disk::valid_data_block_size(sb.data_block_size) {
            self.damage(
                DamageKind::Superblock,
                place.clone(),
                format!(
                    "data block size {} sectors is not a multiple of 128 in 128..=2097152",
                    sb.data_block_size
                ),
            );
        }
        if sb.incompat_flags != 0 {
            self.damage(
                DamageKind::Superblock,
                place.clone(),
                format!("incompatible feature flags {:#x} are set", sb.incompat_flags),
            );
        }
    }

    /// Checks the details and mapping trees reached from one superblock (live or held copy).
    fn check_trees(&mut self, sb: &Superblock, snapshot: bool) -> TreeTotals {
        let (details, details_whole) = self.walk_details(sb.device_details_root.0, snapshot);
        let (tops, tops_whole) = self.walk_top(sb.data_mapping_root.0, snapshot);
        // A device missing from one tree counts only when that tree was read whole; the
        // bottom trees that were found are checked either way.
        let mut totals = TreeTotals { devices: details.len() as u64, mappings: 0 };
        let missing: Vec<u64> = if tops_whole {
            details.keys().filter(|id| !tops.contains_key(id)).copied().collect()
        } else {
            Vec::new()
        };
        for id in missing {
            self.damage(
                DamageKind::DeviceSets,
                Place { tree: Some(Tree::Details), snapshot, ..Place::default() }.with_key(id),
                format!("device {id} has details but no mapping tree"),
            );
        }
        for (&id, &root) in &tops {
            let count = self.walk_bottom(ThinId(id), root, snapshot);
            let place =
                Place { tree: Some(Tree::Device(ThinId(id))), snapshot, ..Place::default() }
                    .with_block(root);
            let Some(d) = details.get(&id) else {
                if details_whole {
                    self.damage(
                        DamageKind::DeviceSets,
                        place,
                        format!("device {id} has a mapping tree but no details"),
                    );
                }
                continue;
            };
            if let Some(count) = count {
                totals.mappings += count;
                if d.mapped_blocks != count {
                    self.damage(
                        DamageKind::MappedBlocks,
                        place,
                        format!(
                            "device {id} records {} mapped blocks but its tree maps {count}",
                            d.mapped_blocks
                        ),
                    );
                }
            }
        }
        totals
    }

    fn check_held_root(&mut self, h: u64) {
        let place = Place { tree: Some(Tree::Superblock), snapshot: true, ..Place::block(h) };
        if !self.reference(h, &place) || !self.claim(h, Role::Superblock, &place) {
            return;
        }
        let Some(block) = self.read_verified(h, BlockKind::Superblock, &place) else {
            return;
        };
        let copy = raw_superblock(&block);
        if disk::get_u64(&block[..], 32) != SUPERBLOCK_MAGIC {
            self.damage(DamageKind::Superblock, place.clone(), "metadata snapshot has a bad magic");
        }
        if copy.held_root.0 != 0 {
            self.damage(
                DamageKind::Superblock,
                place.clone(),
                "metadata snapshot itself holds a metadata snapshot",
            );
        }
        self.check_trees(&copy, true);
    }

    fn finish(mut self) -> Report {
        self.report.stats.metadata_blocks_used =
            self.meta_refs.iter().filter(|&&r| r > 0).count() as u64;
        self.report.stats.data_blocks_used = self.data_refs.nonzero();
        self.report
    }
}

/// Reference counts per data block: a dense table up to 16 Mi blocks (64 MiB of counts, 1 TiB
/// of 64 KiB blocks; also the most a hostile superblock can make us allocate up front), a
/// map beyond.
pub(crate) enum Counts {
    Dense(Vec<u32>),
    Sparse(HashMap<u64, u32>),
}

impl Default for Counts {
    fn default() -> Self {
        Counts::Sparse(HashMap::new())
    }
}

impl Counts {
    const DENSE_LIMIT: u64 = 1 << 24;

    fn for_blocks(n: u64) -> Self {
        if n <= Self::DENSE_LIMIT {
            Counts::Dense(vec![0; n as usize])
        } else {
            Counts::default()
        }
    }

    /// Counts one reference to `b`, which the caller has checked is below nr_blocks.
    pub(crate) fn inc(&mut self, b: u64) {
        let r = match self {
            Counts::Dense(v) => match v.get_mut(b as usize) {
                Some(r) => r,
                None => return,
            },
            Counts::Sparse(m) => m.entry(b).or_insert(0),
        };
        *r = r.saturating_add(1);
    }

    pub(crate) fn get(&self, b: u64) -> u32 {
        match self {
            Counts::Dense(v) => v.get(b as usize).copied().unwrap_or(0),
            Counts::Sparse(m) => m.get(&b).copied().unwrap_or(0),
        }
    }

    fn nonzero(&self) -> u64 {
        match self {
            Counts::Dense(v) => v.iter().filter(|&&c| c > 0).count() as u64,
            Counts::Sparse(m) => m.len() as u64,
        }
    }
}

#[derive(Default)]
struct TreeTotals {
    devices: u64,
    mappings: u64,
}

/// Decodes superblock fields without judging them (the checker reports each problem itself).
fn raw_superblock(b: &Block) -> Superblock {
    Superblock {
        flags: disk::get_u32(b, 4),
        blocknr: MetaBlock(disk::get_u64(b, 8)),
        uuid: b[16..32].try_into().unwrap_or([0; 16]),
        version: disk::get_u32(b, 40),
        time: disk::get_u32(b, 44),
        trans_id: disk::get_u64(b, 48),
        held_root: MetaBlock(disk::get_u64(b, 56)),
        data_sm_root: SmRoot::decode(&b[64..96]),
        metadata_sm_root: SmRoot::decode(&b[192..224]),
        data_mapping_root: MetaBlock(disk::get_u64(b, 320)),
        device_details_root: MetaBlock(disk::get_u64(b, 328)),
        data_block_size: disk::get_u32(b, 336),
        metadata_nr_blocks: disk::get_u64(b, 344),
        compat_flags: disk::get_u32(b, 352),
        compat_ro_flags: disk::get_u32(b, 356),
        incompat_flags: disk::get_u32(b, 360),
    }
}

/// Superblock checks that need the raw block (magic, metadata block size).
fn raw_superblock_damages(b: &Block) -> Vec<String> {
    let mut out = Vec::new();
    let magic = disk::get_u64(b, 32);
    if magic != SUPERBLOCK_MAGIC {
        out.push(format!("magic is {magic}, expected {SUPERBLOCK_MAGIC}"));
    }
    let mbs = disk::get_u32(b, 340);
    if mbs != METADATA_BLOCK_SECTORS {
        out.push(format!(
            "metadata block size is {mbs} sectors, expected {METADATA_BLOCK_SECTORS}"
        ));
    }
    out
}

#[cfg(test)]
mod tests;
