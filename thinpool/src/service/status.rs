//! `docker info`'s devicemapper fields and an `lvs`-like listing.
//!
//! Sizes are Docker's `units.HumanSize`: decimal units, four significant digits
//! (64 KiB → "65.54kB", 10 GiB → "10.74GB").

use std::fmt;

use serde::{Deserialize, Serialize};

use super::{lock, Backend, Service};
use crate::pool::FilePool;
pub use crate::units::human_size;
use crate::vg::autoextend::min_free_blocks;

/// Every devicemapper field of `docker info`, named as Docker names them (also in JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    #[serde(rename = "Pool Name")]
    pub pool_name: String,
    #[serde(rename = "Pool Blocksize")]
    pub pool_blocksize: String,
    #[serde(rename = "Base Device Size")]
    pub base_device_size: String,
    /// Probed on the volume named `base` (Docker's base device); empty when there is none.
    #[serde(rename = "Backing Filesystem")]
    pub backing_filesystem: String,
    /// Always false: lamina creates no device nodes and has no udev to synchronise with.
    #[serde(rename = "Udev Sync Supported")]
    pub udev_sync_supported: bool,
    /// File pools: the data file. Omitted for a volume group (Docker's thinpooldev mode).
    #[serde(rename = "Data file", skip_serializing_if = "Option::is_none")]
    pub data_file: Option<String>,
    #[serde(rename = "Metadata file", skip_serializing_if = "Option::is_none")]
    pub metadata_file: Option<String>,
    #[serde(rename = "Data Space Used")]
    pub data_space_used: String,
    #[serde(rename = "Data Space Total")]
    pub data_space_total: String,
    /// Total − used; for a file pool also capped by the host filesystem's free space.
    #[serde(rename = "Data Space Available")]
    pub data_space_available: String,
    #[serde(rename = "Metadata Space Used")]
    pub metadata_space_used: String,
    #[serde(rename = "Metadata Space Total")]
    pub metadata_space_total: String,
    #[serde(rename = "Metadata Space Available")]
    pub metadata_space_available: String,
    #[serde(rename = "Thin Pool Minimum Free Space")]
    pub thin_pool_minimum_free_space: String,
    #[serde(rename = "Deferred Removal Enabled")]
    pub deferred_removal_enabled: bool,
    #[serde(rename = "Deferred Deletion Enabled")]
    pub deferred_deletion_enabled: bool,
    #[serde(rename = "Deferred Deleted Device Count")]
    pub deferred_deleted_device_count: u64,
    #[serde(rename = "Library Version")]
    pub library_version: String,
}

impl fmt::Display for ServiceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut row = |k: &str, v: &dyn fmt::Display| writeln!(f, " {k}: {v}");
        row("Pool Name", &self.pool_name)?;
        row("Pool Blocksize", &self.pool_blocksize)?;
        row("Base Device Size", &self.base_device_size)?;
        row("Backing Filesystem", &self.backing_filesystem)?;
        row("Udev Sync Supported", &self.udev_sync_supported)?;
        if let Some(d) = &self.data_file {
            row("Data file", d)?;
        }
        if let Some(m) = &self.metadata_file {
            row("Metadata file", m)?;
        }
        row("Data Space Used", &self.data_space_used)?;
        row("Data Space Total", &self.data_space_total)?;
        row("Data Space Available", &self.data_space_available)?;
        row("Metadata Space Used", &self.metadata_space_used)?;
        row("Metadata Space Total", &self.metadata_space_total)?;
        row("Metadata Space Available", &self.metadata_space_available)?;
        row("Thin Pool Minimum Free Space", &self.thin_pool_minimum_free_space)?;
        row("Deferred Removal Enabled", &self.deferred_removal_enabled)?;
        row("Deferred Deletion Enabled", &self.deferred_deletion_enabled)?;
        row("Deferred Deleted Device Count", &self.deferred_deleted_device_count)?;
        row("Library Version", &self.library_version)
    }
}

/// One row of [`Service::list`]: the pool itself or a thin volume.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListRow {
    pub name: String,
    /// "pool" or "thin".
    pub kind: &'static str,
    /// Pool: data space in bytes; thin volume: virtual size in bytes.
    pub size: u64,
    /// Pool: used data blocks; thin volume: mapped blocks; as a percentage.
    pub data_percent: f64,
    /// Pool only: used metadata blocks as a percentage.
    pub meta_percent: Option<f64>,
    /// Open handles (thin volumes).
    pub open: u32,
}

/// `lvs`-style table of `rows`.
pub fn format_list(rows: &[ListRow]) -> String {
    let mut out = format!(
        "{:<40} {:<5} {:>10} {:>7} {:>7} {:>4}\n",
        "LV", "Type", "LSize", "Data%", "Meta%", "Open"
    );
    for r in rows {
        let meta = r.meta_percent.map(|m| format!("{m:.2}")).unwrap_or_default();
        out.push_str(&format!(
            "{:<40} {:<5} {:>10} {:>7.2} {:>7} {:>4}\n",
            r.name,
            r.kind,
            human_size(r.size),
            r.data_percent,
            meta,
            r.open
        ));
    }
    out
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Filesystem magic as Docker probes it: XFS at 0, ext4 at 0x438, btrfs at 0x10040.
pub fn probe_filesystem(head: &[u8]) -> Option<&'static str> {
    if head.get(..4) == Some(b"XFSB") {
        return Some("xfs");
    }
    if head.get(0x438..0x43a) == Some(&[0x53, 0xEF]) {
        return Some("ext4");
    }
    if head.get(0x10040..0x10048) == Some(b"_BHRfS_M") {
        return Some("btrfs");
    }
    None
}

impl Service {
    /// `docker info`'s devicemapper section for this pool.
    pub fn status(&self) -> ServiceStatus {
        let pool = self.pool();
        let c = self.config();
        let bs = pool.block_bytes();
        let (d, m) = (pool.data_usage(), pool.metadata_usage());
        let mut data_avail = pool.data_bytes(d.free).get();
        let mut meta_avail = m.free.bytes().get();
        let (data_file, metadata_file) = match &self.shared.backend {
            Backend::File { dir, .. } => {
                // Sparse files: what the host filesystem can still hold caps both.
                if let Ok(s) = rustix::fs::statvfs(dir.as_path()) {
                    let host = s.f_bfree.saturating_mul(s.f_frsize);
                    data_avail = data_avail.min(host);
                    meta_avail = meta_avail.min(host);
                }
                (
                    Some(dir.join(FilePool::DATA).display().to_string()),
                    Some(dir.join(FilePool::METADATA).display().to_string()),
                )
            }
            Backend::Group(_) => (None, None),
        };
        let deferred = lock(&self.shared.vols).deferred.len() as u64;
        ServiceStatus {
            pool_name: self.name().to_owned(),
            pool_blocksize: human_size(bs),
            base_device_size: human_size(c.basesize),
            backing_filesystem: self.base_filesystem().unwrap_or_default().to_owned(),
            udev_sync_supported: false,
            data_file,
            metadata_file,
            data_space_used: pool.data_bytes(d.used).human(),
            data_space_total: pool.data_bytes(d.total).human(),
            data_space_available: human_size(data_avail),
            metadata_space_used: m.used.bytes().human(),
            metadata_space_total: m.total.bytes().human(),
            metadata_space_available: human_size(meta_avail),
            thin_pool_minimum_free_space: pool
                .data_bytes(min_free_blocks(d.total, c.min_free_space))
                .human(),
            deferred_removal_enabled: c.use_deferred_removal,
            deferred_deletion_enabled: c.use_deferred_removal && c.use_deferred_deletion,
            deferred_deleted_device_count: deferred,
            library_version: format!("lamina thinpool {}", env!("CARGO_PKG_VERSION")),
        }
    }

    fn base_filesystem(&self) -> Option<&'static str> {
        let v = self.pool().volume("base").ok()?;
        let mut head = vec![0u8; 0x10048.min(v.size.get()) as usize];
        self.pool().read(v.id, 0, &mut head).ok()?;
        probe_filesystem(&head)
    }

    /// The pool and its visible volumes, like `lvs` (Data% and Meta%).
    pub fn list(&self) -> super::Result<Vec<ListRow>> {
        let pool = self.pool();
        let (d, m) = (pool.data_usage(), pool.metadata_usage());
        let mut rows = vec![ListRow {
            name: self.name().to_owned(),
            kind: "pool",
            size: pool.data_bytes(d.total).get(),
            data_percent: percent(d.used.0, d.total.0),
            meta_percent: Some(percent(m.used.0, m.total.0)),
            open: 0,
        }];
        for v in self.volumes()? {
            rows.push(ListRow {
                open: self.open_count(&v.name),
                kind: "thin",
                size: v.size.get(),
                data_percent: percent(pool.data_bytes(v.mapped()).get(), v.size.get()),
                meta_percent: None,
                name: v.name,
            });
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_filesystem_magic() {
        let mut b = vec![0u8; 0x10048];
        assert_eq!(probe_filesystem(&b), None);
        b[..4].copy_from_slice(b"XFSB");
        assert_eq!(probe_filesystem(&b), Some("xfs"));
        b[..4].fill(0);
        b[0x438..0x43a].copy_from_slice(&[0x53, 0xEF]);
        assert_eq!(probe_filesystem(&b), Some("ext4"));
        b[0x438..0x43a].fill(0);
        b[0x10040..].copy_from_slice(b"_BHRfS_M");
        assert_eq!(probe_filesystem(&b), Some("btrfs"));
        assert_eq!(probe_filesystem(&b[..100]), None);
    }
}
