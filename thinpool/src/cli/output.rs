//! What `list` and `status` print: plain tables for people, JSON for scripts. Pure functions
//! of the rows, so the formats are tested without a pool.

use serde::Serialize;

use super::size::{binary_size, human_size};
use thinpool::units::Bytes;

/// One volume, as `thinpool list` shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VolumeRow {
    pub name: String,
    pub id: u64,
    /// Virtual size in bytes.
    pub size: u64,
    pub mapped_blocks: u64,
    pub mapped_bytes: u64,
    /// Mapped bytes as a percentage of the virtual size (lvs `Data%`).
    pub data_percent: f64,
    /// Created for export (offered by `thinpool serve --exports flagged`).
    pub export: bool,
}

impl VolumeRow {
    pub fn new(name: String, id: u64, size: Bytes, mapped_blocks: u64, block_bytes: u64) -> Self {
        let size = size.get();
        let mapped_bytes = mapped_blocks.saturating_mul(block_bytes);
        let data_percent =
            if size == 0 { 0.0 } else { (mapped_bytes as f64 / size as f64 * 100.0).min(100.0) };
        VolumeRow { name, id, size, mapped_blocks, mapped_bytes, data_percent, export: false }
    }

    pub fn exported(self, export: bool) -> Self {
        Self { export, ..self }
    }
}

/// Pool-wide figures, named after `docker info`'s devicemapper section.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoolStatus {
    pub pool_dir: String,
    pub data_file: String,
    pub metadata_file: String,
    /// Data block size in bytes.
    pub block_size: u64,
    pub data_used: u64,
    pub data_total: u64,
    pub data_available: u64,
    pub metadata_used: u64,
    pub metadata_total: u64,
    pub metadata_available: u64,
    pub transaction_id: u64,
    pub volumes: usize,
    /// `docker info`'s devicemapper fields (their own names in JSON, beside the raw numbers).
    #[serde(flatten)]
    pub docker: Option<thinpool::service::ServiceStatus>,
}

pub fn list_table(rows: &[VolumeRow]) -> String {
    let header = ["NAME", "ID", "VSIZE", "MAPPED", "DATA%", "EXPORT"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.id.to_string(),
                binary_size(r.size),
                binary_size(r.mapped_bytes),
                format!("{:.2}", r.data_percent),
                if r.export { "yes" } else { "-" }.to_owned(),
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: [&str; 6]| {
        let mut s = format!("{:<w$}", cols[0], w = width[0]);
        for (i, c) in cols.iter().enumerate().skip(1) {
            s.push_str(&format!("  {c:>w$}", w = width[i]));
        }
        s.push('\n');
        s
    };
    let mut out = line(header);
    for row in &cells {
        out.push_str(&line(row.each_ref().map(String::as_str)));
    }
    out
}

pub fn status_text(s: &PoolStatus) -> String {
    if let Some(d) = &s.docker {
        // docker info's section, then what lamina adds.
        return format!("{d} Transaction Id: {}\n Volumes: {}\n", s.transaction_id, s.volumes);
    }
    let rows = [
        ("Pool Directory", s.pool_dir.clone()),
        ("Pool Blocksize", human_size(s.block_size)),
        ("Data file", s.data_file.clone()),
        ("Metadata file", s.metadata_file.clone()),
        ("Data Space Used", human_size(s.data_used)),
        ("Data Space Total", human_size(s.data_total)),
        ("Data Space Available", human_size(s.data_available)),
        ("Metadata Space Used", human_size(s.metadata_used)),
        ("Metadata Space Total", human_size(s.metadata_total)),
        ("Metadata Space Available", human_size(s.metadata_available)),
        ("Transaction Id", s.transaction_id.to_string()),
        ("Volumes", s.volumes.to_string()),
    ];
    rows.iter().map(|(k, v)| format!("{k}: {v}\n")).collect()
}

pub fn to_json<T: Serialize>(v: &T) -> String {
    // Serializing these plain structs cannot fail.
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<VolumeRow> {
        vec![
            VolumeRow::new("base".into(), 0, Bytes::new(64 << 20), 512, 64 << 10),
            VolumeRow::new("snap-of-base".into(), 1, Bytes::new(64 << 20), 1024, 64 << 10)
                .exported(true),
        ]
    }

    #[test]
    fn list_is_an_aligned_table() {
        let t = list_table(&rows());
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAME          ID   VSIZE  MAPPED   DATA%  EXPORT");
        assert_eq!(lines[1], "base           0  64.00m  32.00m   50.00       -");
        assert_eq!(lines[2], "snap-of-base   1  64.00m  64.00m  100.00     yes");
    }

    #[test]
    fn list_json_carries_raw_numbers() {
        let v: serde_json::Value = serde_json::from_str(&to_json(&rows())).unwrap();
        assert_eq!(v[0]["name"], "base");
        assert_eq!(v[0]["mapped_bytes"], 32u64 << 20);
        assert_eq!(v[1]["data_percent"], 100.0);
        assert_eq!((v[0]["export"].as_bool(), v[1]["export"].as_bool()), (Some(false), Some(true)));
    }

    #[test]
    fn status_uses_docker_info_names_and_units() {
        let s = PoolStatus {
            pool_dir: "/p".into(),
            data_file: "/p/data".into(),
            metadata_file: "/p/metadata".into(),
            block_size: 65536,
            data_used: 65536 * 10,
            data_total: 10 << 30,
            data_available: (10 << 30) - 65536 * 10,
            metadata_used: 4096 * 30,
            metadata_total: 2 << 20,
            metadata_available: (2 << 20) - 4096 * 30,
            transaction_id: 4,
            volumes: 2,
            docker: None,
        };
        let t = status_text(&s);
        assert!(t.contains("Pool Blocksize: 65.54kB\n"), "{t}");
        assert!(t.contains("Data Space Total: 10.74GB\n"), "{t}");
        assert!(t.contains("Metadata file: /p/metadata\n"), "{t}");
        assert!(t.contains("Transaction Id: 4\n"), "{t}");
        let v: serde_json::Value = serde_json::from_str(&to_json(&s)).unwrap();
        assert_eq!(v["data_used"], 655360);
    }
}
