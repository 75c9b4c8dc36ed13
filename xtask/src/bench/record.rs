//! The one record format every benchmark writes: JSON lines, one measurement per line, so
//! benches in different crates (and inside the VM) feed one report.
//!
//! ```json
//! {"suite":"nbd","case":"4k randread qd16","subject":"lamina","metric":"throughput",
//!  "value":51234.0,"unit":"IOPS","better":"higher"}
//! ```
//! `x` is set for scaling series (e.g. mapped blocks) and drawn as a line plot instead of bars.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub suite: String,
    pub case: String,
    /// What was measured: "lamina", or a peer such as "nbdkit file" or "kernel dm-thin".
    pub subject: String,
    pub metric: String,
    pub value: f64,
    pub unit: String,
    pub better: Better,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<f64>,
}

/// Reads every record of a JSON-lines file; a malformed line is an error naming the line.
pub fn load(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: bad record", path.display(), i + 1))
        })
        .collect()
}
