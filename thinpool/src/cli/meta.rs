//! check, dump, restore: the metadata tools.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::output::to_json;
use super::{CheckArgs, DumpArgs};
use std::sync::Arc;

use thinpool::io::{BlockDevice, FileDevice};
use thinpool::vg::VolumeGroup;

/// The metadata of POOL, read-only: a pool directory's metadata file, the metadata region of
/// a device-backed pool (its group directory, a device of the group, or a comma-separated
/// device list), or a bare metadata file or device as thin_check takes it.
pub(super) fn open_metadata(p: &Path) -> anyhow::Result<(String, Arc<dyn BlockDevice>)> {
    let arg = p.to_string_lossy();
    let is_pool_dir = p.join(thinpool::pool::FilePool::METADATA).exists();
    if !is_pool_dir && (arg.contains(',') || p.is_dir()) {
        let vg = if p.is_dir() {
            VolumeGroup::open_dir(p)
        } else {
            VolumeGroup::open(&arg.split(',').map(PathBuf::from).collect::<Vec<_>>())
        }
        .with_context(|| {
            format!("{} is not a pool directory (no metadata file) nor a volume group", p.display())
        })?;
        return Ok((format!("{} (metadata region)", p.display()), vg.metadata_region()));
    }
    if !is_pool_dir {
        // A single device or image: a volume group member, or a bare metadata file.
        if let Ok(vg) = VolumeGroup::open(&[p.to_owned()]) {
            return Ok((format!("{} (metadata region)", p.display()), vg.metadata_region()));
        }
    }
    let path = metadata_path(p)?;
    let dev = FileDevice::open_read_only(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    Ok((path.display().to_string(), Arc::new(dev)))
}

/// The metadata file of a pool directory, or the path itself when it is a file or device.
pub(super) fn metadata_path(p: &Path) -> anyhow::Result<PathBuf> {
    let meta = std::fs::metadata(p).with_context(|| format!("cannot open {}", p.display()))?;
    if meta.is_dir() {
        let m = p.join(thinpool::pool::FilePool::METADATA);
        if !m.exists() {
            bail!("{} is not a pool directory: it has no {}", p.display(), m.display());
        }
        Ok(m)
    } else {
        Ok(p.to_owned())
    }
}

pub(super) fn check(a: &CheckArgs) -> anyhow::Result<ExitCode> {
    // Clearing the flag writes the superblock: the pool must be ours alone.
    let _lock = if a.clear_needs_check_flag { Some(lock_for_writing(&a.dir)?) } else { None };
    let (path, dev) = open_metadata(&a.dir)?;
    let report = thinpool::check::check(dev.as_ref());
    let ok = if a.allow_hints { report.is_consistent() } else { report.is_clean() };
    if ok && a.clear_needs_check_flag {
        clear_needs_check(&a.dir)?;
    }
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
            path,
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
    let (_, dev) = open_metadata(&a.dir)?;
    let xml = if a.repair {
        thinpool::repair::dump(dev.as_ref())?
    } else {
        thinpool::xml::dump(dev.as_ref())?
    };
    match &a.output {
        Some(o) => {
            std::fs::write(o, xml).with_context(|| format!("cannot write {}", o.display()))?
        }
        None => std::io::stdout().lock().write_all(xml.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn restore(a: &super::RestoreArgs) -> anyhow::Result<ExitCode> {
    use std::sync::Arc;

    use thinpool::pool::{names::NameEntry, DirNameStore, FilePool, NameStore, NameTable};
    use thinpool::units::Sectors;

    let dir = &a.pool.dir;
    let xml = std::fs::read_to_string(&a.input)
        .with_context(|| format!("cannot read {}", a.input.display()))?;
    let md = thinpool::xml::parse(&xml).with_context(|| a.input.display().to_string())?;
    let meta_path = dir.join(FilePool::METADATA);
    if meta_path.exists() {
        bail!("{} already holds a pool; restore into a new directory", dir.display());
    }
    // A group directory holds device links, not pool files: restoring here would create a
    // file pool beside the group that hides it. Restoring onto a group's metadata region is
    // not supported yet.
    if dir.is_dir() && VolumeGroup::open_dir(dir).is_ok() {
        bail!(
            "{} holds a device-backed pool; restore writes a new pool directory (DIR/metadata, \
             DIR/data): give a new directory",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let bs = Sectors(u64::from(md.data_block_size));
    let data_size = md.nr_data_blocks.checked_mul(bs.bytes()).with_context(|| {
        format!("{} data blocks of {} bytes overflow", md.nr_data_blocks, bs.bytes())
    })?;
    let meta_size = a.metadata_size.unwrap_or_else(|| {
        FilePool::default_metadata_size(thinpool::units::Bytes::new(data_size), bs).get()
    });
    let data_path = dir.join(FilePool::DATA);
    let result = (|| -> anyhow::Result<()> {
        let meta = FileDevice::create(&meta_path, meta_size)
            .with_context(|| format!("cannot create {}", meta_path.display()))?;
        let data = FileDevice::create(&data_path, data_size)
            .with_context(|| format!("cannot create {}", data_path.display()))?;
        thinpool::xml::restore_into(&md, Arc::new(meta), Arc::new(data))?;
        // dm-thin keeps no names or virtual sizes: name each device after its id and size it
        // to its last mapped block.
        let volumes = md
            .devices
            .iter()
            .map(|d| {
                let end = d.mappings.last().map_or(1, |r| r.origin.0 + r.len);
                NameEntry {
                    name: format!("thin-{}", d.dev_id),
                    id: d.dev_id.0,
                    size: end.saturating_mul(bs.bytes()),
                    export: false,
                }
            })
            .collect();
        let table = NameTable { trans_id: md.transaction, volumes };
        DirNameStore::new(dir)
            .store(&table, u64::MAX)
            .with_context(|| format!("cannot write the name table in {}", dir.display()))
    })();
    if let Err(e) = result {
        // Leave no half-made pool behind.
        let _ = std::fs::remove_file(&meta_path);
        let _ = std::fs::remove_file(&data_path);
        return Err(e);
    }
    println!(
        "restored {} devices from {} into {}",
        md.devices.len(),
        a.input.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The pool lock of a pool directory (refusing while a daemon holds it); nothing for a bare
/// metadata file, whose user vouches that nothing else writes it.
fn lock_for_writing(p: &Path) -> anyhow::Result<Option<thinpool::daemon::PoolLock>> {
    if !p.join(thinpool::pool::FilePool::METADATA).exists() {
        return Ok(None);
    }
    let l = thinpool::daemon::PoolLock::acquire(p)
        .with_context(|| format!("{} is in use (stop thinpool serve first)", p.display()))?;
    Ok(Some(l))
}

/// Clears needs_check in the superblock (nothing else changes), as
/// `thin_check --clear-needs-check-flag` does once the metadata is clean.
fn clear_needs_check(p: &Path) -> anyhow::Result<()> {
    use thinpool::pdata::superblock::{needs_check, set_needs_check};
    let path = metadata_path(p)?;
    let dev = FileDevice::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let what = || format!("superblock of {}", path.display());
    if needs_check(&dev).with_context(what)? {
        set_needs_check(&dev, false).with_context(what)?;
        eprintln!("cleared needs_check in {}", path.display());
    }
    Ok(())
}

pub(super) fn repair(a: &super::RepairArgs) -> anyhow::Result<ExitCode> {
    let (path, input) = open_metadata(&a.dir)?;
    if std::fs::canonicalize(&a.output).ok() == std::fs::canonicalize(&path).ok() {
        bail!("--output must not be the damaged metadata itself ({path})");
    }
    let out: Arc<dyn BlockDevice> = if a.output.exists() {
        Arc::new(
            FileDevice::open(&a.output)
                .with_context(|| format!("cannot open {}", a.output.display()))?,
        )
    } else {
        Arc::new(
            FileDevice::create(&a.output, input.size())
                .with_context(|| format!("cannot create {}", a.output.display()))?,
        )
    };
    let s = thinpool::repair::repair(input.as_ref(), out)?;
    println!(
        "repaired {path} into {}: {} devices, {} mappings salvaged ({} damaged nodes skipped, \
         {} impossible mappings dropped, {} devices given new details)",
        a.output.display(),
        s.devices,
        s.mappings,
        s.damaged_nodes,
        s.dropped_mappings,
        s.invented_details
    );
    Ok(ExitCode::SUCCESS)
}
