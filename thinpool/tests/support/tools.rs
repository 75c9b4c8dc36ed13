//! Helpers shared by the tools_* tests: Debian thin tools, images made by thin_restore, and
//! surgical corruption of metadata blocks.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::require_tool;
use thinpool::io::{BlockDevice, FileDevice, MemDevice};
use thinpool::pdata::disk::{self, Block, BlockKind, Node, BLOCK_SIZE};

/// Runs thin_restore on `xml` into a fresh 8 MiB metadata file in `dir`.
pub fn thin_restore(dir: &Path, name: &str, xml: &str) -> PathBuf {
    require_tool("thin_restore");
    let x = dir.join(format!("{name}.xml"));
    std::fs::write(&x, xml).unwrap();
    let meta = dir.join(format!("{name}.meta"));
    std::fs::File::create(&meta).unwrap().set_len(8 << 20).unwrap();
    let out = Command::new("thin_restore").arg("-i").arg(&x).arg("-o").arg(&meta).output().unwrap();
    assert!(
        out.status.success(),
        "thin_restore failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    meta
}

pub fn open(meta: &Path) -> FileDevice {
    FileDevice::open(meta).unwrap()
}

pub fn mem_copy(meta: &Path) -> MemDevice {
    let bytes = std::fs::read(meta).unwrap();
    let dev = MemDevice::new(bytes.len() as u64, "image");
    dev.write_at(&bytes, 0).unwrap();
    dev
}

pub fn read_block(dev: &dyn BlockDevice, b: u64) -> Box<Block> {
    let mut blk = disk::zeroed();
    dev.read_at(&mut blk[..], b * BLOCK_SIZE as u64).unwrap();
    blk
}

/// Changes block `b` with `f` and reseals it as `kind`, so only the semantic damage remains.
pub fn patch(dev: &dyn BlockDevice, b: u64, kind: BlockKind, f: impl FnOnce(&mut Block)) {
    let mut blk = read_block(dev, b);
    f(&mut blk);
    disk::seal(&mut blk, kind);
    dev.write_at(&blk[..], b * BLOCK_SIZE as u64).unwrap();
}

/// Superblock fields as raw integers.
pub fn sb_u64(dev: &dyn BlockDevice, off: usize) -> u64 {
    disk::get_u64(&read_block(dev, 0)[..], off)
}

pub const DETAILS_ROOT: usize = 328;
pub const MAPPING_ROOT: usize = 320;
pub const DATA_SM_ROOT: usize = 64;
pub const META_SM_ROOT: usize = 192;

/// (key, value as u64) of every leaf entry of the tree at `root`, with the leaf's block.
pub fn leaf_entries(dev: &dyn BlockDevice, root: u64) -> Vec<(u64, u64, u64)> {
    let blk = read_block(dev, root);
    let node = Node::new(&blk).unwrap();
    let mut out = Vec::new();
    for i in 0..node.nr_entries() {
        if node.is_leaf() {
            out.push((node.key(i), node.value_u64(i), root));
        } else {
            out.extend(leaf_entries(dev, node.value_u64(i)));
        }
    }
    out
}

/// The bottom-level root of device `id`.
pub fn device_root(dev: &dyn BlockDevice, id: u64) -> u64 {
    let top = sb_u64(dev, MAPPING_ROOT);
    leaf_entries(dev, top).into_iter().find(|e| e.0 == id).expect("device exists").1
}

/// Children of an internal node.
pub fn children(dev: &dyn BlockDevice, b: u64) -> Vec<(u64, u64)> {
    let blk = read_block(dev, b);
    let node = Node::new(&blk).unwrap();
    assert!(!node.is_leaf(), "block {b} is a leaf");
    (0..node.nr_entries()).map(|i| (node.key(i), node.value_u64(i))).collect()
}

/// Sets the 2-bit entry for `block` in the space map whose root starts at `sm_off` in the
/// superblock (metadata sm only: its index is a single block).
pub fn set_metadata_count(dev: &dyn BlockDevice, block: u64, v: u8) {
    let index = sb_u64(dev, META_SM_ROOT + 16);
    let idx = read_block(dev, index);
    let bitmap = disk::get_u64(&idx[..], 16 + 16 * (block / disk::ENTRIES_PER_BITMAP) as usize);
    patch(dev, bitmap, BlockKind::Bitmap, |b| {
        disk::bitmap_set(b, block % disk::ENTRIES_PER_BITMAP, v)
    });
}

/// The data space map's bitmap block for data block `block`.
pub fn data_bitmap_block(dev: &dyn BlockDevice, block: u64) -> u64 {
    let root = sb_u64(dev, DATA_SM_ROOT + 16);
    let i = block / disk::ENTRIES_PER_BITMAP;
    let e = leaf_entries_raw(dev, root, 16).into_iter().find(|(k, _)| *k == i).unwrap();
    disk::get_u64(&e.1, 0)
}

fn leaf_entries_raw(dev: &dyn BlockDevice, root: u64, _vs: usize) -> Vec<(u64, Vec<u8>)> {
    let blk = read_block(dev, root);
    let node = Node::new(&blk).unwrap();
    let mut out = Vec::new();
    for i in 0..node.nr_entries() {
        if node.is_leaf() {
            out.push((node.key(i), node.value(i).to_vec()));
        } else {
            out.extend(leaf_entries_raw(dev, node.value_u64(i), _vs));
        }
    }
    out
}

/// Blocks the metadata space map marks in use.
pub fn used_metadata_blocks(dev: &dyn BlockDevice) -> Vec<u64> {
    let nr = sb_u64(dev, META_SM_ROOT);
    let index = sb_u64(dev, META_SM_ROOT + 16);
    let idx = read_block(dev, index);
    let mut out = Vec::new();
    for i in 0..nr.div_ceil(disk::ENTRIES_PER_BITMAP) {
        let bm = read_block(dev, disk::get_u64(&idx[..], 16 + 16 * i as usize));
        for j in 0..disk::ENTRIES_PER_BITMAP {
            let b = i * disk::ENTRIES_PER_BITMAP + j;
            if b < nr && disk::bitmap_get(&bm, j) != 0 {
                out.push(b);
            }
        }
    }
    out
}

/// A device for [`pool_xml`]: its id and its mappings (virtual block, data block, time).
pub type DeviceSpec = (u64, Vec<(u64, u64, u32)>);

/// XML for a pool with the given devices.
pub fn pool_xml(time: u32, nr_data: u64, devices: &[DeviceSpec]) -> String {
    use thinpool::units::{DataBlock, ThinId, VirtBlock};
    use thinpool::xml::{render, Device, Metadata};
    let mut md = Metadata {
        time,
        transaction: 3,
        version: Some(2),
        data_block_size: 128,
        nr_data_blocks: nr_data,
        ..Metadata::default()
    };
    for (id, maps) in devices {
        let mut d = Device {
            dev_id: ThinId(*id),
            transaction: 1,
            creation_time: 0,
            snap_time: time,
            ..Device::default()
        };
        for &(v, b, t) in maps {
            d.push(VirtBlock(v), DataBlock(b), t);
        }
        d.mapped_blocks = d.nr_mappings();
        md.devices.push(d);
    }
    render(&md)
}
