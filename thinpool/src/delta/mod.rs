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
//! v0.9.0, `thin-provisioning/thin_delta.cc`), byte for byte, including that version's
//! habit of dropping the unconsumed rest of a run once either side's run list is exhausted
//! (so its output is comparable with Debian's tool; [`diff`] itself does not drop anything).

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

/// The walk both [`diff`] and [`render_xml`] use; `lossy_tail` reproduces 0.9.0's loop,
/// which leaves the outer loop as soon as either side has no further extent to load, so
/// the rest of the extents in hand is never emitted.
fn walk(left: &[Extent], right: &[Extent], lossy_tail: bool) -> Vec<DeltaRange> {
    let mut out = Vec::new();
    let (mut li, mut ri) = (0, 0);
    let mut l = Extent { vbegin: 0, dbegin: 0, len: 0 };
    let mut r = l;
    loop {
        let more = if lossy_tail {
            li < left.len() && ri < right.len()
        } else {
            (l.len > 0 || li < left.len()) && (r.len > 0 || ri < right.len())
        };
        if !more {
            break;
        }
        if l.len == 0 && li < left.len() {
            l = left[li];
            li += 1;
        }
        if r.len == 0 && ri < right.len() {
            r = right[ri];
            ri += 1;
        }
        while l.len > 0 && r.len > 0 {
            if l.vbegin < r.vbegin {
                let n = l.len.min(r.vbegin - l.vbegin);
                push(&mut out, Change::LeftOnly, l.vbegin, n);
                l.consume(n);
            } else if l.vbegin > r.vbegin {
                let n = r.len.min(l.vbegin - r.vbegin);
                push(&mut out, Change::RightOnly, r.vbegin, n);
                r.consume(n);
            } else {
                let n = l.len.min(r.len);
                let c = if l.dbegin != r.dbegin { Change::Different } else { Change::Same };
                push(&mut out, c, l.vbegin, n);
                l.consume(n);
                r.consume(n);
            }
        }
    }
    if !lossy_tail {
        push(&mut out, Change::LeftOnly, l.vbegin, l.len);
        push(&mut out, Change::RightOnly, r.vbegin, r.len);
    }
    for e in &left[li..] {
        push(&mut out, Change::LeftOnly, e.vbegin, e.len);
    }
    for e in &right[ri..] {
        push(&mut out, Change::RightOnly, e.vbegin, e.len);
    }
    out
}

/// Every range where `left` and `right` map differently, and where they map the same
/// (`Same`), in ascending order; blocks unmapped in both appear in no range.
pub fn diff(left: &[Extent], right: &[Extent]) -> Vec<DeltaRange> {
    walk(left, right, false)
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
    for r in walk(left, right, true) {
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
    dev.read_at(&mut raw[..], location.0 * disk::BLOCK_SIZE as u64).map_err(|source| {
        DumpError::Io { dev: dev.describe(), block: location.0, source }
    })?;
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
