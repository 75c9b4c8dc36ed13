//! Reading pool metadata into [`Metadata`] for dumping. Strict: the first damaged structure
//! stops the dump with an error naming it (run the checker for a full list).

use std::collections::{BTreeMap, HashSet};

use super::{render, Device, Metadata};
use crate::io::BlockDevice;
use crate::pdata::disk::{self, Block, BlockKind, BlockTime, DeviceDetails, Node, Superblock};
use crate::units::{MetaBlock, ThinId, VirtBlock};

/// Deeper than any valid btree; guards against hostile pointers.
const MAX_DEPTH: usize = 12;

/// Why metadata could not be dumped.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{dev}: cannot read metadata block {block}")]
    Io {
        dev: String,
        block: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{dev}: metadata block {block} ({what}): {problem}")]
    Damaged { dev: String, block: u64, what: String, problem: String },
}

/// Called with each leaf entry (key, value bytes) in key order.
type Visit<'f> = dyn FnMut(u64, &[u8]) -> Result<(), DumpError> + 'f;

struct Reader<'a> {
    dev: &'a dyn BlockDevice,
}

impl Reader<'_> {
    fn damaged(&self, block: u64, what: &str, problem: impl ToString) -> DumpError {
        DumpError::Damaged {
            dev: self.dev.describe(),
            block,
            what: what.to_owned(),
            problem: problem.to_string(),
        }
    }

    fn read(&self, block: u64) -> Result<Box<Block>, DumpError> {
        let mut b = disk::zeroed();
        let off = block.saturating_mul(disk::BLOCK_SIZE as u64);
        self.dev.read_at(&mut b[..], off).map_err(|source| DumpError::Io {
            dev: self.dev.describe(),
            block,
            source,
        })?;
        Ok(b)
    }

    /// Visits every leaf entry of the tree at `root` in key order.
    fn walk(
        &self,
        root: u64,
        value_size: usize,
        what: &str,
        f: &mut Visit<'_>,
    ) -> Result<(), DumpError> {
        let mut seen = HashSet::new();
        self.walk_node(root, value_size, what, 0, &mut seen, f)
    }

    fn walk_node(
        &self,
        b: u64,
        value_size: usize,
        what: &str,
        depth: usize,
        seen: &mut HashSet<u64>,
        f: &mut Visit<'_>,
    ) -> Result<(), DumpError> {
        if depth > MAX_DEPTH {
            return Err(self.damaged(b, what, "tree is deeper than any valid btree"));
        }
        if !seen.insert(b) {
            return Err(self.damaged(b, what, "node is reached twice (a cycle)"));
        }
        let block = self.read(b)?;
        disk::verify(&block, BlockKind::Node, MetaBlock(b))
            .map_err(|e| self.damaged(b, what, e))?;
        let node = Node::new(&block).map_err(|e| self.damaged(b, what, e))?;
        if node.is_leaf() && node.value_size() != value_size {
            return Err(self.damaged(b, what, "leaf has the wrong value size"));
        }
        let mut prev = None;
        for i in 0..node.nr_entries() {
            let k = node.key(i);
            if prev.is_some_and(|p| p >= k) {
                return Err(self.damaged(b, what, "keys are out of order"));
            }
            prev = Some(k);
            if node.is_leaf() {
                f(k, node.value(i))?;
            } else {
                self.walk_node(node.value_u64(i), value_size, what, depth + 1, seen, f)?;
            }
        }
        Ok(())
    }
}

/// Reads the live metadata on `dev` into the XML model.
pub fn read_metadata(dev: &dyn BlockDevice) -> Result<Metadata, DumpError> {
    read_metadata_at(dev, MetaBlock(0), &|_| true)
}

/// Reads the metadata whose superblock is at `location` (0, or a held metadata snapshot's
/// block) into the XML model, with the mappings of the devices `want` selects (the others
/// keep their details and no mappings).
pub fn read_metadata_at(
    dev: &dyn BlockDevice,
    location: MetaBlock,
    want: &dyn Fn(ThinId) -> bool,
) -> Result<Metadata, DumpError> {
    let r = Reader { dev };
    let sb_block = r.read(location.0)?;
    let sb = Superblock::decode(&sb_block, location)
        .map_err(|e| r.damaged(location.0, "superblock", e))?;

    let mut details = BTreeMap::new();
    r.walk(sb.device_details_root.0, DeviceDetails::SIZE, "device details tree", &mut |k, v| {
        details.insert(k, DeviceDetails::decode(v));
        Ok(())
    })?;
    let mut roots = BTreeMap::new();
    r.walk(sb.data_mapping_root.0, 8, "top-level mapping tree", &mut |k, v| {
        roots.insert(k, disk::get_u64(v, 0));
        Ok(())
    })?;

    let mut md = Metadata {
        // thin_dump 0.9.0 prints an empty uuid whatever the superblock holds.
        uuid: String::new(),
        time: sb.time,
        transaction: sb.trans_id,
        flags: sb.flags,
        version: Some(sb.version),
        data_block_size: sb.data_block_size,
        nr_data_blocks: sb.data_sm_root.nr_blocks,
        // 0.9.0 does not print the held metadata snapshot either.
        metadata_snap: None,
        devices: Vec::with_capacity(details.len()),
    };
    for (&id, d) in &details {
        let Some(&root) = roots.get(&id) else {
            return Err(r.damaged(
                sb.data_mapping_root.0,
                "top-level mapping tree",
                format!("device {id} has details but no mapping tree"),
            ));
        };
        let mut dev = Device {
            dev_id: ThinId(id),
            mapped_blocks: d.mapped_blocks,
            transaction: d.transaction_id,
            creation_time: d.creation_time,
            snap_time: d.snapshotted_time,
            mappings: Vec::new(),
        };
        if !want(ThinId(id)) {
            md.devices.push(dev);
            continue;
        }
        let what = format!("mapping tree of device {id}");
        r.walk(root, 8, &what, &mut |k, v| {
            let bt = BlockTime::unpack(disk::get_u64(v, 0));
            dev.push(VirtBlock(k), bt.block, bt.time);
            Ok(())
        })?;
        md.devices.push(dev);
    }
    Ok(md)
}

/// The metadata on `dev` as thin_dump 0.9.0 prints it.
pub fn dump(dev: &dyn BlockDevice) -> Result<String, DumpError> {
    Ok(render(&read_metadata(dev)?))
}
