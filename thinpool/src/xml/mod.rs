//! The thin_dump / thin_restore XML format (0.9.0 flavour: flat, no `<def>`/`<ref>`).
//!
//! ```text
//! <superblock uuid="" time="T" transaction="X" flags="F" version="V" data_block_size="S" nr_data_blocks="N">
//!   <device dev_id="ID" mapped_blocks="M" transaction="X" creation_time="T" snap_time="T">
//!     <range_mapping origin_begin="V" data_begin="D" length="L" time="T"/>
//!     <single_mapping origin_block="V" data_block="D" time="T"/>
//!   </device>
//! </superblock>
//! ```
//!
//! [`Metadata`] is the in-memory form shared by both directions: [`dump`] reads metadata into
//! it and [`render`]s it exactly as `thin_dump` 0.9.0 prints it (two-space indents, attribute
//! order, runs of consecutive virtual and data blocks with one time coalesced into a
//! `range_mapping`); [`parse`] reads XML into it, refusing anything it does not know.

mod parse;
mod read;
mod restore;

pub use parse::{parse, XmlError, XmlErrorKind};
pub use read::{dump, read_metadata, read_metadata_at, DumpError};
pub use restore::{restore, restore_into, restore_metadata, RestoreError};

use std::fmt::Write as _;

use crate::units::{DataBlock, ThinId, VirtBlock};

/// The whole pool as the XML describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    pub uuid: String,
    pub time: u32,
    pub transaction: u64,
    pub flags: u32,
    /// The on-disk metadata version; absent in some hand-written XML.
    pub version: Option<u32>,
    /// Data block size in sectors.
    pub data_block_size: u32,
    pub nr_data_blocks: u64,
    /// Block of a held metadata snapshot (informational; restore does not recreate it).
    pub metadata_snap: Option<u64>,
    pub devices: Vec<Device>,
}

/// One thin device and its mappings, in ascending virtual-block order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Device {
    pub dev_id: ThinId,
    pub mapped_blocks: u64,
    pub transaction: u64,
    pub creation_time: u32,
    pub snap_time: u32,
    pub mappings: Vec<Run>,
}

/// `len` consecutive virtual blocks mapped to consecutive data blocks, all written at `time`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    pub origin: VirtBlock,
    pub data: DataBlock,
    pub len: u64,
    pub time: u32,
}

impl Device {
    /// Appends one mapping, extending the last run when it continues it (as thin_dump does).
    /// Mappings must come in ascending virtual-block order.
    pub fn push(&mut self, origin: VirtBlock, data: DataBlock, time: u32) {
        if let Some(last) = self.mappings.last_mut() {
            if last.time == time
                && last.origin.0.checked_add(last.len) == Some(origin.0)
                && last.data.0.checked_add(last.len) == Some(data.0)
            {
                last.len += 1;
                return;
            }
        }
        self.mappings.push(Run { origin, data, len: 1, time });
    }

    /// Every mapping, one by one: (virtual block, data block, time).
    pub fn blocks(&self) -> impl Iterator<Item = (VirtBlock, DataBlock, u32)> + '_ {
        self.mappings.iter().flat_map(|r| {
            (0..r.len).map(move |i| (VirtBlock(r.origin.0 + i), DataBlock(r.data.0 + i), r.time))
        })
    }

    /// Number of mapped blocks the runs describe.
    pub fn nr_mappings(&self) -> u64 {
        self.mappings.iter().map(|r| r.len).sum()
    }
}

/// Prints `md` byte-for-byte as thin_dump 0.9.0 does.
pub fn render(md: &Metadata) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<superblock uuid=\"{}\" time=\"{}\" transaction=\"{}\" flags=\"{}\" version=\"{}\" \
         data_block_size=\"{}\" nr_data_blocks=\"{}\"",
        escape(&md.uuid),
        md.time,
        md.transaction,
        md.flags,
        md.version.unwrap_or(1),
        md.data_block_size,
        md.nr_data_blocks
    );
    if let Some(b) = md.metadata_snap {
        let _ = write!(s, " metadata_snap=\"{b}\"");
    }
    s.push_str(">\n");
    for d in &md.devices {
        let _ = writeln!(
            s,
            "  <device dev_id=\"{}\" mapped_blocks=\"{}\" transaction=\"{}\" creation_time=\"{}\" \
             snap_time=\"{}\">",
            d.dev_id, d.mapped_blocks, d.transaction, d.creation_time, d.snap_time
        );
        for r in &d.mappings {
            if r.len == 1 {
                let _ = writeln!(
                    s,
                    "    <single_mapping origin_block=\"{}\" data_block=\"{}\" time=\"{}\"/>",
                    r.origin, r.data, r.time
                );
            } else {
                let _ = writeln!(
                    s,
                    "    <range_mapping origin_begin=\"{}\" data_begin=\"{}\" length=\"{}\" \
                     time=\"{}\"/>",
                    r.origin, r.data, r.len, r.time
                );
            }
        }
        s.push_str("  </device>\n");
    }
    s.push_str("</superblock>\n");
    s
}

fn escape(v: &str) -> String {
    v.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests;
