//! Pure codecs for dm-thin metadata blocks: bytes in, structures out, no I/O.
//!
//! The metadata device is an array of 4096-byte blocks, all integers little-endian. Every block
//! starts with a CRC-32C checksum of bytes 4..4096 XORed with a per-type salt, and carries its
//! own block number at offset 8 so a block read from the wrong place is caught.
//!
//! ```text
//! superblock (block 0)          btree node                    space-map bitmap
//! 0   csum    (salt 160774)     0   csum (salt 121107)        0   csum (salt 240779)
//! 4   flags   (bit0 needs_check)4   flags 1=internal 2=leaf   4   unused
//! 8   blocknr (= 0)             8   blocknr                   8   blocknr
//! 16  uuid[16]                  16  nr_entries                16  510 u64 words, 2 bits per
//! 32  magic 27022010            20  max_entries                   entry (bit p = value 2,
//! 40  version 2                 24  value_size                    bit p+1 = value 1)
//! 44  time                      28  padding
//! 48  trans_id                  32  keys[max_entries] u64     metadata-sm index block
//! 56  held_root                 ..  values[max_entries]       0   csum (salt 160478)
//! 64  data sm root (128)                                      8   blocknr
//! 192 metadata sm root (128)                                  16  255 index entries of 16 bytes
//! 320 data_mapping_root
//! 328 device_details_root       index entry: blocknr u64, nr_free u32, none_free_before u32
//! 336 data_block_size (sectors) sm root:     nr_blocks, nr_allocated, bitmap_root, ref_count_root
//! 340 metadata_block_size (8)   details:     mapped_blocks, transaction_id, creation_time u32,
//! 344 metadata_nr_blocks                     snapshotted_time u32
//! 352 compat, compat_ro, incompat flags      mapping: data_block << 24 | time (24 bits)
//! ```
//!
//! Field meanings and the rules the kernel and `thin_check` apply: Linux
//! drivers/md/dm-thin-metadata.c and drivers/md/persistent-data/, and thin-provisioning-tools
//! (src/thin/superblock.rs, src/pdata/); the tests below carry golden vectors made with
//! Debian's thin_restore.

use crate::units::{DataBlock, MetaBlock};

pub const BLOCK_SIZE: usize = 4096;
pub type Block = [u8; BLOCK_SIZE];

pub const SUPERBLOCK_MAGIC: u64 = 27_022_010;
pub const METADATA_VERSION: u32 = 2;
/// `metadata_block_size` in sectors.
pub const METADATA_BLOCK_SECTORS: u32 = 8;
pub const NEEDS_CHECK: u32 = 1;

pub const SALT_SUPERBLOCK: u32 = 160_774;
pub const SALT_NODE: u32 = 121_107;
pub const SALT_BITMAP: u32 = 240_779;
pub const SALT_INDEX: u32 = 160_478;

pub const NODE_HEADER_SIZE: usize = 32;
pub const INTERNAL_NODE: u32 = 1;
pub const LEAF_NODE: u32 = 2;

pub const BITMAP_HEADER_SIZE: usize = 16;
/// Reference-count entries in one bitmap block: (4096 - 16) * 4.
pub const ENTRIES_PER_BITMAP: u64 = ((BLOCK_SIZE - BITMAP_HEADER_SIZE) * 4) as u64;
/// Bitmaps the metadata space map's single index block can describe.
pub const MAX_METADATA_BITMAPS: usize = 255;
/// The largest metadata device dm-thin uses, in 4 KiB blocks.
pub const MAX_METADATA_BLOCKS: u64 = MAX_METADATA_BITMAPS as u64 * ENTRIES_PER_BITMAP;

/// Smallest and largest data block sizes, in sectors; sizes must be multiples of the minimum.
pub const MIN_DATA_BLOCK_SECTORS: u32 = 128;
pub const MAX_DATA_BLOCK_SECTORS: u32 = 2_097_152;

/// Largest data block number a mapping can hold (40 bits) and largest time (24 bits).
pub const MAX_DATA_BLOCK: u64 = (1 << 40) - 1;
pub const TIME_MASK: u32 = (1 << 24) - 1;

/// Which kind of metadata block a decode failure concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockKind {
    Superblock,
    Node,
    Bitmap,
    Index,
}

impl BlockKind {
    pub fn salt(self) -> u32 {
        match self {
            BlockKind::Superblock => SALT_SUPERBLOCK,
            BlockKind::Node => SALT_NODE,
            BlockKind::Bitmap => SALT_BITMAP,
            BlockKind::Index => SALT_INDEX,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Superblock => "superblock",
            BlockKind::Node => "btree node",
            BlockKind::Bitmap => "space-map bitmap",
            BlockKind::Index => "metadata space-map index",
        }
    }
}

/// Why a block did not decode. The caller adds where it was read from and what for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{} checksum mismatch (stored {stored:#010x}, computed {computed:#010x})", kind.name())]
    Checksum { kind: BlockKind, stored: u32, computed: u32 },
    #[error("{} claims to be block {found}", kind.name())]
    Location { kind: BlockKind, found: u64 },
    #[error("superblock magic is {0}, expected {SUPERBLOCK_MAGIC}")]
    Magic(u64),
    #[error("btree node {0}")]
    Node(&'static str),
    #[error("superblock {0}")]
    Superblock(&'static str),
}

/// CRC-32C of bytes 4..4096 with the kernel's convention (seed ~0, no final inversion), salted.
pub fn checksum(block: &Block, salt: u32) -> u32 {
    crc32c::crc32c(&block[4..]) ^ 0xFFFF_FFFF ^ salt
}

/// Stores the block's checksum at offset 0.
pub fn seal(block: &mut Block, kind: BlockKind) {
    let csum = checksum(block, kind.salt());
    block[0..4].copy_from_slice(&csum.to_le_bytes());
}

/// Checks the checksum and the self-reported location of a block read from `location`.
pub fn verify(block: &Block, kind: BlockKind, location: MetaBlock) -> Result<(), DecodeError> {
    let stored = get_u32(block, 0);
    let computed = checksum(block, kind.salt());
    if stored != computed {
        return Err(DecodeError::Checksum { kind, stored, computed });
    }
    let found = get_u64(block, 8);
    if found != location.0 {
        return Err(DecodeError::Location { kind, found });
    }
    Ok(())
}

/// Which block type a checksummed block is, judged by its salt (as the Rust thin tools do).
pub fn identify(block: &Block) -> Option<BlockKind> {
    let raw = crc32c::crc32c(&block[4..]) ^ 0xFFFF_FFFF;
    let stored = get_u32(block, 0);
    [BlockKind::Superblock, BlockKind::Node, BlockKind::Bitmap, BlockKind::Index]
        .into_iter()
        .find(|k| raw ^ k.salt() == stored)
}

pub fn get_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

pub fn get_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// A zero-filled block on the heap.
pub fn zeroed() -> Box<Block> {
    Box::new([0; BLOCK_SIZE])
}

// ---------------------------------------------------------------------------------------------
// Space-map root

/// The 32-byte root of a space map, stored in the superblock's 128-byte blobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SmRoot {
    pub nr_blocks: u64,
    pub nr_allocated: u64,
    /// Data sm: root of the index btree. Metadata sm: the index block.
    pub bitmap_root: MetaBlock,
    /// Root of the overflow (reference count >= 3) btree.
    pub ref_count_root: MetaBlock,
}

impl SmRoot {
    pub const SIZE: usize = 32;

    pub fn encode(&self, out: &mut [u8]) {
        put_u64(out, 0, self.nr_blocks);
        put_u64(out, 8, self.nr_allocated);
        put_u64(out, 16, self.bitmap_root.0);
        put_u64(out, 24, self.ref_count_root.0);
    }

    pub fn decode(b: &[u8]) -> Self {
        SmRoot {
            nr_blocks: get_u64(b, 0),
            nr_allocated: get_u64(b, 8),
            bitmap_root: MetaBlock(get_u64(b, 16)),
            ref_count_root: MetaBlock(get_u64(b, 24)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Superblock

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub flags: u32,
    /// Where this superblock lives: 0, or the block of a metadata-snapshot copy.
    pub blocknr: MetaBlock,
    pub uuid: [u8; 16],
    pub version: u32,
    pub time: u32,
    pub trans_id: u64,
    /// Block of the held metadata-snapshot superblock copy, 0 if none.
    pub held_root: MetaBlock,
    pub data_sm_root: SmRoot,
    pub metadata_sm_root: SmRoot,
    pub data_mapping_root: MetaBlock,
    pub device_details_root: MetaBlock,
    /// Data block size in 512-byte sectors.
    pub data_block_size: u32,
    pub metadata_nr_blocks: u64,
    pub compat_flags: u32,
    pub compat_ro_flags: u32,
    pub incompat_flags: u32,
}

impl Superblock {
    pub fn needs_check(&self) -> bool {
        self.flags & NEEDS_CHECK != 0
    }

    /// Encodes into a sealed block. Bytes past the structure are zero, as the checksum covers them.
    pub fn encode(&self) -> Box<Block> {
        let mut b = zeroed();
        put_u32(&mut b[..], 4, self.flags);
        put_u64(&mut b[..], 8, self.blocknr.0);
        b[16..32].copy_from_slice(&self.uuid);
        put_u64(&mut b[..], 32, SUPERBLOCK_MAGIC);
        put_u32(&mut b[..], 40, self.version);
        put_u32(&mut b[..], 44, self.time);
        put_u64(&mut b[..], 48, self.trans_id);
        put_u64(&mut b[..], 56, self.held_root.0);
        self.data_sm_root.encode(&mut b[64..64 + SmRoot::SIZE]);
        self.metadata_sm_root.encode(&mut b[192..192 + SmRoot::SIZE]);
        put_u64(&mut b[..], 320, self.data_mapping_root.0);
        put_u64(&mut b[..], 328, self.device_details_root.0);
        put_u32(&mut b[..], 336, self.data_block_size);
        put_u32(&mut b[..], 340, METADATA_BLOCK_SECTORS);
        put_u64(&mut b[..], 344, self.metadata_nr_blocks);
        put_u32(&mut b[..], 352, self.compat_flags);
        put_u32(&mut b[..], 356, self.compat_ro_flags);
        put_u32(&mut b[..], 360, self.incompat_flags);
        seal(&mut b, BlockKind::Superblock);
        b
    }

    /// Decodes and validates what the kernel validates: checksum, location, magic, and a data
    /// block size dm-thin accepts. Feature flags are left to the caller (read-only opens may
    /// tolerate compat_ro bits).
    pub fn decode(b: &Block, location: MetaBlock) -> Result<Self, DecodeError> {
        verify(b, BlockKind::Superblock, location)?;
        let magic = get_u64(b, 32);
        if magic != SUPERBLOCK_MAGIC {
            return Err(DecodeError::Magic(magic));
        }
        let sb = Superblock {
            flags: get_u32(b, 4),
            blocknr: MetaBlock(get_u64(b, 8)),
            uuid: b[16..32].try_into().expect("16 bytes"),
            version: get_u32(b, 40),
            time: get_u32(b, 44),
            trans_id: get_u64(b, 48),
            held_root: MetaBlock(get_u64(b, 56)),
            data_sm_root: SmRoot::decode(&b[64..96]),
            metadata_sm_root: SmRoot::decode(&b[192..224]),
            data_mapping_root: MetaBlock(get_u64(b, 320)),
            device_details_root: MetaBlock(get_u64(b, 328)),
            data_block_size: get_u32(b, 336),
            metadata_nr_blocks: get_u64(b, 344),
            compat_flags: get_u32(b, 352),
            compat_ro_flags: get_u32(b, 356),
            incompat_flags: get_u32(b, 360),
        };
        if !valid_data_block_size(sb.data_block_size) {
            return Err(DecodeError::Superblock("has a data block size dm-thin does not accept"));
        }
        Ok(sb)
    }
}

/// dm-thin accepts 128..=2097152 sectors in multiples of 128.
pub fn valid_data_block_size(sectors: u32) -> bool {
    (MIN_DATA_BLOCK_SECTORS..=MAX_DATA_BLOCK_SECTORS).contains(&sectors)
        && sectors.is_multiple_of(MIN_DATA_BLOCK_SECTORS)
}

// ---------------------------------------------------------------------------------------------
// Btree nodes

/// Entries a node holds for a value size: the largest multiple of 3 that fits in the block.
pub const fn max_entries(value_size: usize) -> usize {
    let fit = (BLOCK_SIZE - NODE_HEADER_SIZE) / (8 + value_size);
    fit / 3 * 3
}

/// A read-only view of a btree node inside a block. `check` must pass before the accessors are
/// used on untrusted bytes; after it, no accessor can index out of the block.
#[derive(Clone, Copy)]
pub struct Node<'a> {
    b: &'a Block,
}

impl<'a> Node<'a> {
    /// Wraps a block and checks the header is self-consistent (what the kernel's validator and
    /// thin_check check before trusting a node). The checksum is checked separately by
    /// [`verify`].
    pub fn new(b: &'a Block) -> Result<Self, DecodeError> {
        let n = Node { b };
        let flags = n.flags();
        if flags != INTERNAL_NODE && flags != LEAF_NODE {
            return Err(DecodeError::Node("flags are neither internal nor leaf"));
        }
        let max = n.max_entries();
        let vs = n.value_size();
        if vs == 0 || vs > BLOCK_SIZE {
            return Err(DecodeError::Node("value size is impossible"));
        }
        if max == 0 || !max.is_multiple_of(3) || NODE_HEADER_SIZE + max * (8 + vs) > BLOCK_SIZE {
            return Err(DecodeError::Node("max_entries does not fit the block"));
        }
        if n.nr_entries() > max {
            return Err(DecodeError::Node("nr_entries exceeds max_entries"));
        }
        if flags == INTERNAL_NODE && vs != 8 {
            return Err(DecodeError::Node("internal node value size is not 8"));
        }
        Ok(n)
    }

    pub fn flags(&self) -> u32 {
        get_u32(self.b, 4)
    }
    pub fn is_leaf(&self) -> bool {
        self.flags() == LEAF_NODE
    }
    pub fn blocknr(&self) -> MetaBlock {
        MetaBlock(get_u64(self.b, 8))
    }
    pub fn nr_entries(&self) -> usize {
        get_u32(self.b, 16) as usize
    }
    pub fn max_entries(&self) -> usize {
        get_u32(self.b, 20) as usize
    }
    pub fn value_size(&self) -> usize {
        get_u32(self.b, 24) as usize
    }
    pub fn key(&self, i: usize) -> u64 {
        get_u64(self.b, NODE_HEADER_SIZE + 8 * i)
    }
    pub fn value(&self, i: usize) -> &'a [u8] {
        let vs = self.value_size();
        let off = NODE_HEADER_SIZE + 8 * self.max_entries() + i * vs;
        &self.b[off..off + vs]
    }
    /// The value as a u64 (internal-node children, mapping values, bottom-level roots).
    pub fn value_u64(&self, i: usize) -> u64 {
        get_u64(self.value(i), 0)
    }
    pub fn keys(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.nr_entries()).map(|i| self.key(i))
    }
    /// Index of the last key <= `key` (the child to descend into, or the leaf slot holding it).
    pub fn lower_bound(&self, key: u64) -> Option<usize> {
        let n = self.nr_entries();
        let (mut lo, mut hi) = (0, n);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.key(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }
}

/// A mutable view of a btree node inside a block.
pub struct NodeMut<'a> {
    b: &'a mut Block,
}

impl<'a> NodeMut<'a> {
    /// Formats `b` as an empty node. Internal nodes always use value size 8.
    pub fn init(b: &'a mut Block, location: MetaBlock, leaf: bool, value_size: usize) -> Self {
        b.fill(0);
        let vs = if leaf { value_size } else { 8 };
        put_u32(&mut b[..], 4, if leaf { LEAF_NODE } else { INTERNAL_NODE });
        put_u64(&mut b[..], 8, location.0);
        put_u32(&mut b[..], 20, max_entries(vs) as u32);
        put_u32(&mut b[..], 24, vs as u32);
        NodeMut { b }
    }

    /// Wraps a block that already holds a valid node.
    pub fn new(b: &'a mut Block) -> Result<Self, DecodeError> {
        Node::new(b)?;
        Ok(NodeMut { b })
    }

    pub fn view(&self) -> Node<'_> {
        Node { b: self.b }
    }
    pub fn set_blocknr(&mut self, location: MetaBlock) {
        put_u64(&mut self.b[..], 8, location.0);
    }
    pub fn set_nr_entries(&mut self, n: usize) {
        put_u32(&mut self.b[..], 16, n as u32);
    }
    pub fn set_key(&mut self, i: usize, key: u64) {
        put_u64(&mut self.b[..], NODE_HEADER_SIZE + 8 * i, key);
    }
    pub fn value_mut(&mut self, i: usize) -> &mut [u8] {
        let (max, vs) = (self.view().max_entries(), self.view().value_size());
        let off = NODE_HEADER_SIZE + 8 * max + i * vs;
        &mut self.b[off..off + vs]
    }
    pub fn set_value(&mut self, i: usize, v: &[u8]) {
        self.value_mut(i).copy_from_slice(v);
    }

    /// Inserts `key -> value` at slot `i`, shifting later entries right. The node must have room.
    pub fn insert_at(&mut self, i: usize, key: u64, value: &[u8]) {
        let view = self.view();
        let (n, max, vs) = (view.nr_entries(), view.max_entries(), view.value_size());
        assert!(n < max && i <= n && value.len() == vs, "insert_at on a full node or bad slot");
        let keys = NODE_HEADER_SIZE;
        self.b.copy_within(keys + 8 * i..keys + 8 * n, keys + 8 * (i + 1));
        let vals = NODE_HEADER_SIZE + 8 * max;
        self.b.copy_within(vals + vs * i..vals + vs * n, vals + vs * (i + 1));
        self.set_key(i, key);
        self.set_value(i, value);
        self.set_nr_entries(n + 1);
    }

    /// Removes slot `i`, shifting later entries left and zeroing the freed slot.
    pub fn remove_at(&mut self, i: usize) {
        let view = self.view();
        let (n, max, vs) = (view.nr_entries(), view.max_entries(), view.value_size());
        assert!(i < n, "remove_at past the end");
        let keys = NODE_HEADER_SIZE;
        self.b.copy_within(keys + 8 * (i + 1)..keys + 8 * n, keys + 8 * i);
        self.b[keys + 8 * (n - 1)..keys + 8 * n].fill(0);
        let vals = NODE_HEADER_SIZE + 8 * max;
        self.b.copy_within(vals + vs * (i + 1)..vals + vs * n, vals + vs * i);
        self.b[vals + vs * (n - 1)..vals + vs * n].fill(0);
        self.set_nr_entries(n - 1);
    }

    /// Keeps the first `n` entries, zeroing the rest so stale bytes never reach the disk.
    pub fn truncate(&mut self, n: usize) {
        let view = self.view();
        let (old, max, vs) = (view.nr_entries(), view.max_entries(), view.value_size());
        assert!(n <= old);
        let keys = NODE_HEADER_SIZE;
        self.b[keys + 8 * n..keys + 8 * old].fill(0);
        let vals = NODE_HEADER_SIZE + 8 * max;
        self.b[vals + vs * n..vals + vs * old].fill(0);
        self.set_nr_entries(n);
    }
}

// ---------------------------------------------------------------------------------------------
// Space-map bitmaps and index entries

/// Reads entry `j` (0..16320) of a bitmap block: 0 free, 1, 2, or 3 meaning "see the overflow
/// tree". Note the bit order: bit `2*(j%32)` carries value 2, the next bit value 1.
pub fn bitmap_get(b: &Block, j: u64) -> u8 {
    let word = get_u64(b, BITMAP_HEADER_SIZE + 8 * (j / 32) as usize);
    let p = 2 * (j % 32);
    let hi = ((word >> p) & 1) as u8;
    let lo = ((word >> (p + 1)) & 1) as u8;
    (hi << 1) | lo
}

/// Sets entry `j` of a bitmap block to `v` (0..=3).
pub fn bitmap_set(b: &mut Block, j: u64, v: u8) {
    debug_assert!(v <= 3);
    let off = BITMAP_HEADER_SIZE + 8 * (j / 32) as usize;
    let p = 2 * (j % 32);
    let mut word = get_u64(&b[..], off);
    word &= !(3 << p);
    word |= (((v >> 1) & 1) as u64) << p;
    word |= ((v & 1) as u64) << (p + 1);
    put_u64(&mut b[..], off, word);
}

/// Formats `b` as an empty bitmap at `location` (unsealed; seal before writing).
pub fn bitmap_init(b: &mut Block, location: MetaBlock) {
    b.fill(0);
    put_u64(&mut b[..], 8, location.0);
}

/// One 16-byte index entry describing a bitmap block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexEntry {
    pub blocknr: MetaBlock,
    /// Zero entries in the bitmap (kernel convention: the last bitmap counts its whole range).
    pub nr_free: u32,
    /// Every entry below this one is in use.
    pub none_free_before: u32,
}

impl IndexEntry {
    pub const SIZE: usize = 16;

    pub fn encode(&self, out: &mut [u8]) {
        put_u64(out, 0, self.blocknr.0);
        put_u32(out, 8, self.nr_free);
        put_u32(out, 12, self.none_free_before);
    }

    pub fn decode(b: &[u8]) -> Self {
        IndexEntry {
            blocknr: MetaBlock(get_u64(b, 0)),
            nr_free: get_u32(b, 8),
            none_free_before: get_u32(b, 12),
        }
    }

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0; Self::SIZE];
        self.encode(&mut out);
        out
    }
}

/// Encodes the metadata space map's index block (up to 255 entries) into a sealed block.
pub fn index_block_encode(location: MetaBlock, entries: &[IndexEntry]) -> Box<Block> {
    assert!(entries.len() <= MAX_METADATA_BITMAPS, "metadata index holds at most 255 bitmaps");
    let mut b = zeroed();
    put_u64(&mut b[..], 8, location.0);
    for (i, e) in entries.iter().enumerate() {
        e.encode(&mut b[16 + i * IndexEntry::SIZE..16 + (i + 1) * IndexEntry::SIZE]);
    }
    seal(&mut b, BlockKind::Index);
    b
}

/// Decodes the first `count` entries of a metadata index block read from `location`.
pub fn index_block_decode(
    b: &Block,
    location: MetaBlock,
    count: usize,
) -> Result<Vec<IndexEntry>, DecodeError> {
    verify(b, BlockKind::Index, location)?;
    let count = count.min(MAX_METADATA_BITMAPS);
    Ok((0..count)
        .map(|i| IndexEntry::decode(&b[16 + i * IndexEntry::SIZE..16 + (i + 1) * IndexEntry::SIZE]))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Values of the pool's trees

/// Per-device details, the 24-byte value of the details tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceDetails {
    pub mapped_blocks: u64,
    pub transaction_id: u64,
    pub creation_time: u32,
    pub snapshotted_time: u32,
}

impl DeviceDetails {
    pub const SIZE: usize = 24;

    pub fn to_bytes(&self) -> [u8; Self::SIZE] {
        let mut out = [0; Self::SIZE];
        put_u64(&mut out, 0, self.mapped_blocks);
        put_u64(&mut out, 8, self.transaction_id);
        put_u32(&mut out, 16, self.creation_time);
        put_u32(&mut out, 20, self.snapshotted_time);
        out
    }

    pub fn decode(b: &[u8]) -> Self {
        DeviceDetails {
            mapped_blocks: get_u64(b, 0),
            transaction_id: get_u64(b, 8),
            creation_time: get_u32(b, 16),
            snapshotted_time: get_u32(b, 20),
        }
    }
}

/// A bottom-level mapping value: the data block and the pool time it was written at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockTime {
    pub block: DataBlock,
    pub time: u32,
}

impl BlockTime {
    pub fn pack(&self) -> u64 {
        debug_assert!(self.block.0 <= MAX_DATA_BLOCK);
        (self.block.0 << 24) | u64::from(self.time & TIME_MASK)
    }

    pub fn unpack(v: u64) -> Self {
        BlockTime { block: DataBlock(v >> 24), time: (v & u64::from(TIME_MASK)) as u32 }
    }
}

#[cfg(test)]
pub(crate) mod tests;
