//! Metadata snapshots: dm-thin's `reserve_metadata_snap` / `release_metadata_snap`
//! (Linux drivers/md/dm-thin-metadata.c, `__reserve_metadata_snap`,
//! `__release_metadata_snap`).
//!
//! ```text
//! block 0 (live superblock)           block S (the held copy, never published)
//!   held_root ─────────────────────►   blocknr S, held_root 0, both sm roots zeroed
//!   data_mapping_root ─► T'            data_mapping_root ─► T  (+1)
//!   device_details_root ─► D           device_details_root ─► D (+1)
//! ```
//!
//! Reserving commits, copies the committed superblock into a new block S, and adds a
//! reference to the committed mapping and details roots, so nothing the copy reaches is
//! freed or rewritten in place while it is held: the live transaction shadows shared nodes
//! as it does for thin snapshots. Readers (`thin_dump --metadata-snap`, `thinpool delta`)
//! then read a consistent view while the pool serves. Releasing drops the copy's trees
//! (blocks only it still reached become free at the next commit) and the block itself.

use super::error::{Error, ErrorKind, Result};
use super::meta::{Meta, SubtreeRefs};
use super::Pool;
use crate::pdata::btree::{self, Plain};
use crate::pdata::disk::{BlockKind, DeviceDetails, Superblock};
use crate::units::MetaBlock;

/// Commits that may slip in between reserving's first commit and its metadata lock (a
/// create through the control socket, say) before it gives up.
const CLEAN_ATTEMPTS: usize = 16;

fn pd(doing: &'static str) -> impl FnOnce(crate::pdata::Error) -> Error {
    move |e| Error::pdata(doing, e)
}

impl Meta {
    /// Copies the committed superblock into a new block and holds its trees. The transaction
    /// must be clean (the copy must describe exactly the committed trees).
    fn reserve_snap(&mut self) -> Result<MetaBlock> {
        if self.sb.held_root.0 != 0 {
            return Err(Error::new(
                ErrorKind::Exists,
                format!(
                    "a metadata snapshot is already held (block {}); release it first",
                    self.sb.held_root
                ),
            ));
        }
        let doing = "reserving a metadata snapshot";
        let s = self.tm.new_block(BlockKind::Superblock).map_err(pd(doing))?;
        let copy = Superblock {
            blocknr: s,
            held_root: MetaBlock(0),
            // Not published: the copy's space maps are the live ones (the kernel wipes them).
            data_sm_root: Default::default(),
            metadata_sm_root: Default::default(),
            ..self.sb.clone()
        };
        self.tm.write(s).map_err(pd(doing))?.copy_from_slice(&copy.encode()[..]);
        self.tm.inc(self.sb.data_mapping_root).map_err(pd(doing))?;
        self.tm.inc(self.sb.device_details_root).map_err(pd(doing))?;
        // The kernel always reaches a device's bottom-level tree through the top level, so
        // shadowing the (now shared) top level first gives every bottom root its second
        // reference before that root is shadowed. Here each device caches its root, so the
        // top level is unshared now: re-inserting every root shadows each top-level node once
        // and increments the roots it holds.
        let mut top = self.top_root;
        for (&id, d) in &self.devices {
            top = btree::insert_raw(
                &mut self.tm,
                &mut SubtreeRefs(&mut self.data),
                top,
                id,
                &d.root.0.to_le_bytes(),
            )
            .map_err(pd(doing))?
            .0;
        }
        self.top_root = top;
        self.sb.held_root = s;
        Ok(s)
    }

    /// Drops the held copy's trees and block.
    fn release_snap(&mut self) -> Result<MetaBlock> {
        let h = self.sb.held_root;
        if h.0 == 0 {
            return Err(Error::new(ErrorKind::NotFound, "no metadata snapshot is held"));
        }
        let doing = "releasing the metadata snapshot";
        let raw = self.tm.read(h, BlockKind::Superblock).map_err(pd(doing))?;
        let copy = Superblock::decode(&raw, h).map_err(|e| {
            Error::new(
                ErrorKind::Corrupt { block: h },
                format!("metadata snapshot (block {h}): {e}"),
            )
        })?;
        btree::del(&mut self.tm, &mut SubtreeRefs(&mut self.data), copy.data_mapping_root)
            .map_err(pd(doing))?;
        btree::del(&mut self.tm, &mut Plain(DeviceDetails::SIZE), copy.device_details_root)
            .map_err(pd(doing))?;
        self.tm.dec(h).map_err(pd(doing))?;
        self.sb.held_root = MetaBlock(0);
        Ok(h)
    }
}

impl Pool {
    /// Reserves a metadata snapshot of the committed state and commits; returns its block.
    /// Only one may be held at a time (an `Exists` error otherwise), as in dm-thin.
    pub fn reserve_metadata_snap(&self) -> Result<MetaBlock> {
        // No data write may run while the snapshot is taken: it must describe the data as
        // committed, and the live tree must be unshared before anyone writes through it.
        let _g = self.gate.write().unwrap_or_else(|e| e.into_inner());
        for _ in 0..CLEAN_ATTEMPTS {
            self.commit()?;
            let mut m = self.meta();
            if m.uncommitted() {
                continue;
            }
            let s = m.change(|m| m.reserve_snap())?;
            drop(m);
            self.commit()?;
            return Ok(s);
        }
        Err(Error::new(
            ErrorKind::Invalid,
            "the pool kept changing between commits; could not reserve a metadata snapshot",
        ))
    }

    /// Releases the held metadata snapshot and commits; returns the block it was in.
    pub fn release_metadata_snap(&self) -> Result<MetaBlock> {
        let h = self.meta().change(|m| m.release_snap())?;
        self.commit()?;
        Ok(h)
    }

    /// The block of the held metadata snapshot, if any (as committed or about to be).
    pub fn metadata_snap(&self) -> Option<MetaBlock> {
        let h = self.meta().sb.held_root;
        (h.0 != 0).then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemDevice;
    use crate::units::{DataBlock, Sectors, ThinId};
    use std::sync::Arc;

    fn pool() -> Pool {
        let meta = Arc::new(MemDevice::new(4 << 20, "meta"));
        let data = Arc::new(MemDevice::new(64 * 65536, "data"));
        Pool::format(meta, data, Sectors(128)).unwrap()
    }

    #[test]
    fn reserve_holds_a_consistent_view_and_release_frees_it() {
        let p = pool();
        p.create_thin(ThinId(0)).unwrap();
        let bs = p.block_bytes() as usize;
        p.write(ThinId(0), 0, &vec![1u8; bs * 3]).unwrap();
        p.commit().unwrap();
        let used_before = p.data_usage().used;
        let s = p.reserve_metadata_snap().unwrap();
        assert_eq!(p.metadata_snap(), Some(s));
        let e = p.reserve_metadata_snap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Exists, "{e}");
        // Overwrite and discard through the live tree. As in dm-thin, the held copy keeps
        // mappings, not data: the overwrite goes in place (the device was not snapshotted),
        // the discarded block stays allocated while the copy still maps it.
        p.write(ThinId(0), 0, &vec![2u8; bs]).unwrap();
        p.discard(ThinId(0), bs as u64, bs as u64).unwrap();
        p.commit().unwrap();
        assert_eq!(p.data_usage().used, used_before, "discarded block kept by the snapshot");
        let r = crate::check::check(p.meta_dev.as_ref());
        assert!(r.is_clean(), "{:?}", r.damages);
        assert_eq!(p.release_metadata_snap().unwrap(), s);
        assert_eq!(p.metadata_snap(), None);
        // The block only the snapshot held is free once released.
        assert_eq!(p.data_usage().used, used_before - DataBlock(1));
        let r = crate::check::check(p.meta_dev.as_ref());
        assert!(r.is_clean(), "{:?}", r.damages);
        let e = p.release_metadata_snap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    }
}
