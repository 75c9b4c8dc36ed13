//! Differences between two thin devices, read from their mapping trees.
//!
//! Two thins share exactly the data blocks that did not change between them (a snapshot
//! starts as the origin's tree; every later write to either side maps a new block), so the
//! delta is a walk of both mappings in virtual-block order:
//!
//! ```text
//! left   0:d7 1:d8 2:d9 .    .    5:d20
//! right  0:d7 1:d8 2:d30 3:d31    .
//!        same same diff  right    left_only
//! ```
//!
//! Equal data block means unchanged, whatever the time stamps say. [`diff`] gives the
//! ranges; [`render_xml`] prints them as `thin_delta` 0.9.0 does (thin-provisioning-tools
//! v0.9.0, `thin-provisioning/thin_delta.cc`: runs of consecutive virtual and data blocks,
//! compared pairwise, neighbouring ranges of one kind merged), byte for byte.

pub mod send;
pub mod stream;

use std::fmt::Write as _;

use crate::io::BlockDevice;
use crate::pdata::disk::{self, Superblock};
use crate::units::{MetaBlock, ThinId, VirtBlock};
use crate::xml::{self, DumpError};

/// How a range of virtual blocks differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// Mapped only in the left device.
    LeftOnly,
    /// Mapped only in the right device.
    RightOnly,
    /// Mapped in both, to different data blocks.
    Different,
    /// Mapped in both to the same data block.
    Same,
}

impl Change {
    /// Whether the right side's content may differ from the left's here.
    pub fn changed(self) -> bool {
        self != Change::Same
    }

    fn tag(self) -> &'static str {
        match self {
            Change::LeftOnly => "left_only",
            Change::RightOnly => "right_only",
            Change::Different => "different",
            Change::Same => "same",
        }
    }
}

/// `len` virtual blocks from `begin` that differ the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DeltaRange {
    pub change: Change,
    pub begin: VirtBlock,
    pub len: u64,
}

/// Consecutive virtual blocks mapped to consecutive data blocks (times ignored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub vbegin: u64,
    pub dbegin: u64,
    pub len: u64,
}

impl Extent {
    fn consume(&mut self, n: u64) {
        let n = n.min(self.len);
        self.vbegin += n;
        self.dbegin += n;
        self.len -= n;
    }
}

/// Coalesces mappings (virtual block, data block), in ascending virtual order, into extents.
pub fn extents(mappings: impl IntoIterator<Item = (u64, u64)>) -> Vec<Extent> {
    let mut out: Vec<Extent> = Vec::new();
    for (v, d) in mappings {
        if let Some(l) = out.last_mut() {
            if l.vbegin + l.len == v && l.dbegin + l.len == d {
                l.len += 1;
                continue;
            }
        }
        out.push(Extent { vbegin: v, dbegin: d, len: 1 });
    }
    out
}

/// Appends a range, merging it into the last one when it continues it.
fn push(out: &mut Vec<DeltaRange>, change: Change, begin: u64, len: u64) {
    if len == 0 {
        return;
    }
    if let Some(l) = out.last_mut() {
        if l.change == change && l.begin.0 + l.len == begin {
            l.len += len;
            return;
        }
    }
    out.push(DeltaRange { change, begin: VirtBlock(begin), len });
}

/// Every range where `left` and `right` map differently, and where they map the same
/// (`Same`), in ascending order; blocks unmapped in both appear in no range.
pub fn diff(left: &[Extent], right: &[Extent]) -> Vec<DeltaRange> {
    let mut out = Vec::new();
    let (mut li, mut ri) = (0, 0);
    let mut l = left.first().copied();
    let mut r = right.first().copied();
    // Takes `n` blocks off the head of one side, moving to its next extent when used up.
    fn take(e: &mut Option<Extent>, i: &mut usize, all: &[Extent], n: u64) {
        if let Some(x) = e {
            x.consume(n);
            if x.len == 0 {
                *i += 1;
                *e = all.get(*i).copied();
            }
        }
    }
    while let (Some(a), Some(b)) = (l, r) {
        if a.vbegin < b.vbegin {
            let n = a.len.min(b.vbegin - a.vbegin);
            push(&mut out, Change::LeftOnly, a.vbegin, n);
            take(&mut l, &mut li, left, n);
        } else if a.vbegin > b.vbegin {
            let n = b.len.min(a.vbegin - b.vbegin);
            push(&mut out, Change::RightOnly, b.vbegin, n);
            take(&mut r, &mut ri, right, n);
        } else {
            let n = a.len.min(b.len);
            let c = if a.dbegin != b.dbegin { Change::Different } else { Change::Same };
            push(&mut out, c, a.vbegin, n);
            take(&mut l, &mut li, left, n);
            take(&mut r, &mut ri, right, n);
        }
    }
    while let Some(a) = l {
        push(&mut out, Change::LeftOnly, a.vbegin, a.len);
        take(&mut l, &mut li, left, a.len);
    }
    while let Some(b) = r {
        push(&mut out, Change::RightOnly, b.vbegin, b.len);
        take(&mut r, &mut ri, right, b.len);
    }
    out
}

/// The superblock fields `thin_delta` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub time: u32,
    pub trans_id: u64,
    pub data_block_size: u32,
    pub nr_data_blocks: u64,
    pub metadata_snap: Option<u64>,
}

/// Prints the delta as `thin_delta --snap1 LEFT --snap2 RIGHT` 0.9.0 does (without
/// `--verbose`).
pub fn render_xml(
    h: &Header,
    left_id: ThinId,
    right_id: ThinId,
    left: &[Extent],
    right: &[Extent],
) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<superblock uuid=\"\" time=\"{}\" transaction=\"{}\" data_block_size=\"{}\" \
         nr_data_blocks=\"{}",
        h.time, h.trans_id, h.data_block_size, h.nr_data_blocks
    );
    if let Some(m) = h.metadata_snap {
        let _ = write!(s, "\" metadata_snap=\"{m}");
    }
    s.push_str("\">\n");
    let _ = writeln!(s, "  <diff left=\"{left_id}\" right=\"{right_id}\">");
    for r in diff(left, right) {
        let _ = writeln!(s, "    <{} begin=\"{}\" length=\"{}\"/>", r.change.tag(), r.begin, r.len);
    }
    s.push_str("  </diff>\n</superblock>\n");
    s
}

/// The two devices' extents and the header, read from the metadata whose superblock is at
/// `location` (0, or a held metadata snapshot).
pub struct DeltaInput {
    pub header: Header,
    pub left: Vec<Extent>,
    pub right: Vec<Extent>,
}

/// Why a delta could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error(transparent)]
    Read(#[from] DumpError),
    #[error("no thin device {0} in the metadata")]
    NoDevice(ThinId),
}

/// Reads the mappings of `left` and `right` from the metadata on `dev` at `location`.
pub fn read(
    dev: &dyn BlockDevice,
    location: MetaBlock,
    left: ThinId,
    right: ThinId,
) -> Result<DeltaInput, DeltaError> {
    let md = xml::read_metadata_at(dev, location, &|id| id == left || id == right)?;
    let mut raw = disk::zeroed();
    dev.read_at(&mut raw[..], location.0 * disk::BLOCK_SIZE as u64)
        .map_err(|source| DumpError::Io { dev: dev.describe(), block: location.0, source })?;
    // Decoded once more by read_metadata_at; this cannot fail where that succeeded.
    let sb = Superblock::decode(&raw, location).map_err(|e| DumpError::Damaged {
        dev: dev.describe(),
        block: location.0,
        what: "superblock".into(),
        problem: e.to_string(),
    })?;
    let of = |id: ThinId| {
        md.devices
            .iter()
            .find(|d| d.dev_id == id)
            .map(|d| extents(d.blocks().map(|(v, b, _)| (v.0, b.0))))
            .ok_or(DeltaError::NoDevice(id))
    };
    Ok(DeltaInput {
        header: Header {
            time: sb.time,
            trans_id: sb.trans_id,
            data_block_size: sb.data_block_size,
            // A held copy's space-map roots are zeroed: 0.9.0 then knows no data size.
            nr_data_blocks: sb.data_sm_root.nr_blocks,
            metadata_snap: (sb.held_root.0 != 0).then_some(sb.held_root.0),
        },
        left: of(left)?,
        right: of(right)?,
    })
}

#[cfg(test)]
mod tests;
