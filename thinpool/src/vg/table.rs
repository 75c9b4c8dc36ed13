//! device-mapper tables for the group's pool, as `dmsetup create NAME` reads them: one line per
//! target, `start length target args`, every length and offset in 512-byte sectors.
//!
//! ```text
//! NAME_tmeta   0 LEN linear DEV OFFSET          one line per metadata segment
//! NAME_tdata   0 LEN linear DEV OFFSET          one line per data segment
//! NAME         0 LEN thin-pool /dev/mapper/NAME_tmeta /dev/mapper/NAME_tdata BLOCK LOWWATER N FEATURES..
//! volume       0 LEN thin /dev/mapper/NAME ID   one table per thin volume
//! ```
//!
//! The pool length is the data region rounded down to whole data blocks (the kernel derives the
//! data block count from it). The low-water mark follows LVM: pool_blocks × (100 − threshold)
//! / 100 with the threshold raised to at least 50; threshold 100 gives 0 (no event).

use super::config::PoolConfig;
use super::format::{GroupMeta, RegionKind};
use crate::units::{Sectors, ThinId};
use std::fmt;

/// One device-mapper device: its name and table lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmTable {
    pub name: String,
    pub lines: Vec<String>,
}

/// Every table the pool needs, in creation order: tmeta, tdata, pool, thin volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmTables {
    pub tables: Vec<DmTable>,
}

impl fmt::Display for DmTables {
    /// `# name` followed by its lines, for each table.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for t in &self.tables {
            writeln!(f, "# {}", t.name)?;
            for l in &t.lines {
                writeln!(f, "{l}")?;
            }
        }
        Ok(())
    }
}

impl DmTables {
    /// A shell script that creates every device with `dmsetup create NAME` and a here-document.
    pub fn to_script(&self) -> String {
        let mut s = String::new();
        for t in &self.tables {
            s.push_str(&format!("dmsetup create {} <<'TABLE'\n", t.name));
            for l in &t.lines {
                s.push_str(l);
                s.push('\n');
            }
            s.push_str("TABLE\n");
        }
        s
    }
}

/// A thin volume to activate: its device name, pool device id and size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThinSpec {
    pub name: String,
    pub id: ThinId,
    pub size: Sectors,
}

/// The data low-water mark in blocks, as LVM computes it from the autoextend threshold.
pub fn low_water_mark(pool_blocks: u64, threshold: u32) -> u64 {
    let t = u128::from(super::autoextend::effective_threshold(threshold));
    (pool_blocks as u128 * (100 - t) / 100) as u64
}

/// Pool feature arguments: no zeroing of new blocks (what Docker and direct-lvm `--zero n`
/// choose) and, when asked, failing I/O at once when the data region is full.
pub fn pool_features(config: &PoolConfig) -> Vec<&'static str> {
    let mut f = vec!["skip_block_zeroing"];
    if config.error_if_no_space {
        f.push("error_if_no_space");
    }
    f
}

/// Renders the tables. `devices[i]` is the path dmsetup should use for group device `i`, and
/// `data_start[i]` where its extents begin, in bytes.
pub fn render(
    pool: &str,
    meta: &GroupMeta,
    devices: &[String],
    data_start: &[u64],
    thins: &[ThinSpec],
) -> DmTables {
    let ext_sectors = meta.extent_size / Sectors::SIZE;
    let linear = |kind: RegionKind| {
        let mut at = 0u64;
        let lines = meta
            .region(kind)
            .iter()
            .map(|s| {
                let i = s.device as usize;
                let dev = devices.get(i).map(String::as_str).unwrap_or("?");
                let base = data_start.get(i).copied().unwrap_or(0) / Sectors::SIZE;
                let len = s.len.0 * ext_sectors;
                let line = format!("{at} {len} linear {dev} {}", base + s.start.0 * ext_sectors);
                at += len;
                line
            })
            .collect();
        DmTable { name: format!("{pool}_{}", kind.name()), lines }
    };
    let block = meta.config.block_sectors().0.max(1);
    let data_sectors = meta.region_extents(RegionKind::Data).0 * ext_sectors;
    let blocks = data_sectors / block;
    let features = pool_features(&meta.config);
    let pool_line = format!(
        "0 {} thin-pool /dev/mapper/{pool}_tmeta /dev/mapper/{pool}_tdata {block} {} {} {}",
        blocks * block,
        low_water_mark(blocks, meta.config.autoextend_threshold),
        features.len(),
        features.join(" ")
    );
    let mut tables = vec![
        linear(RegionKind::Metadata),
        linear(RegionKind::Data),
        DmTable { name: pool.to_owned(), lines: vec![pool_line] },
    ];
    for t in thins {
        tables.push(DmTable {
            name: t.name.clone(),
            lines: vec![format!("0 {} thin /dev/mapper/{pool} {}", t.size.0, t.id.0)],
        });
    }
    DmTables { tables }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_water_mark_follows_lvm() {
        assert_eq!(low_water_mark(1000, 80), 200);
        assert_eq!(low_water_mark(1000, 30), 500, "threshold below 50 counts as 50");
        assert_eq!(low_water_mark(1000, 100), 0);
        assert_eq!(low_water_mark(u64::MAX, 50), u64::MAX / 2);
    }

    #[test]
    fn features_follow_config() {
        let mut c = PoolConfig::default();
        assert_eq!(pool_features(&c), ["skip_block_zeroing"]);
        c.error_if_no_space = true;
        assert_eq!(pool_features(&c), ["skip_block_zeroing", "error_if_no_space"]);
    }
}
