//! check, dump, restore: the metadata tools.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::output::to_json;
use super::{CheckArgs, DumpArgs};
use crate::io::FileDevice;

/// The metadata file inside a pool directory.
const METADATA_FILE: &str = "metadata";

/// The metadata file of a pool directory, or the path itself when it is a file or device.
pub(super) fn metadata_path(p: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(p).with_context(|| format!("cannot open {}", p.display()))?;
    if meta.is_dir() {
        let m = p.join(METADATA_FILE);
        if !m.exists() {
            bail!("{} is not a pool directory: it has no {}", p.display(), m.display());
        }
        Ok(m)
    } else {
        Ok(p.to_owned())
    }
}

pub(super) fn check(a: &CheckArgs) -> anyhow::Result<ExitCode> {
    let path = metadata_path(&a.dir)?;
    let dev = FileDevice::open_read_only(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let report = crate::check::check(&dev);
    let ok = if a.allow_hints { report.is_consistent() } else { report.is_clean() };
    let mut out = std::io::stdout().lock();
    if a.json {
        write!(out, "{}", to_json(&report))?;
    } else {
        for d in &report.damages {
            let tag = if d.kind.is_hint() { "hint" } else { "damage" };
            writeln!(out, "{tag}: {d}")?;
        }
        for (kind, n) in &report.unlisted {
            writeln!(out, "damage: {n} more of kind {kind:?} not listed")?;
        }
        let s = &report.stats;
        writeln!(
            out,
            "{}: {} ({} devices, {} mappings, metadata {}/{} blocks, data {}/{} blocks)",
            path.display(),
            if ok { "clean" } else { "DAMAGED" },
            s.devices,
            s.mappings,
            s.metadata_blocks_used,
            s.metadata_blocks,
            s.data_blocks_used,
            s.data_blocks
        )?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub(super) fn dump(a: &DumpArgs) -> anyhow::Result<ExitCode> {
    let path = metadata_path(&a.dir)?;
    let dev = FileDevice::open_read_only(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let xml = crate::xml::dump(&dev)?;
    match &a.output {
        Some(o) => {
            std::fs::write(o, xml).with_context(|| format!("cannot write {}", o.display()))?
        }
        None => std::io::stdout().lock().write_all(xml.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn restore(_a: &super::RestoreArgs) -> anyhow::Result<ExitCode> {
    bail!("restore needs the pool engine, which is not merged yet")
}
