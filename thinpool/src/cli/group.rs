//! Verbs for device-backed pools (Docker's direct-lvm layout on lamina's volume group):
//! `init --device`, `extend`, `resize`, `events`, `dmsetup-table`.
//!
//! A device-backed pool is named by a directory holding links to its devices plus the
//! service's state (`events`, `deferred.json`), so every verb takes POOL as for a file pool:
//!
//! ```text
//! POOL/dev0 -> /dev/vdb     links made by init and extend (the group finds its devices here)
//! POOL/dev1 -> /dev/vdc
//! POOL/events               autoextend event log
//! ```

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::output::to_json;
use super::pool::{open_pool, source, Access};
use super::size::{binary_size, parse_size};
use super::{DmsetupTableArgs, EventsArgs, ExtendArgs, InitArgs, ResizeArgs};
use thinpool::service::PoolSource;
use thinpool::units::Bytes;
use thinpool::vg::{EventLog, PoolConfig, VgPool};

/// The options: the TOML file (if any), then each `--opt` over it, parsed once.
pub(super) fn config(a: &InitArgs) -> anyhow::Result<PoolConfig> {
    let file = match &a.config {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?;
            PoolConfig::from_toml(&text).with_context(|| format!("in {}", f.display()))?
        }
        None => PoolConfig::default(),
    };
    Ok(file.with_opts(a.opt.iter().map(String::as_str))?)
}

/// A file pool's options as DIR/config.toml, when any were given: the one parsed
/// configuration written out whole.
pub(super) fn file_pool_config(a: &InitArgs) -> anyhow::Result<Option<String>> {
    if a.opt.is_empty() && a.config.is_none() {
        return Ok(None);
    }
    Ok(Some(config(a)?.to_toml()))
}

/// Links `device` into the pool directory as the next free `devN` (once per device).
fn link_device(dir: &Path, device: &Path) -> anyhow::Result<()> {
    let target = std::fs::canonicalize(device)
        .with_context(|| format!("cannot resolve {}", device.display()))?;
    let mut n = 0;
    loop {
        let link = dir.join(format!("dev{n}"));
        match std::fs::read_link(&link) {
            Ok(t) if t == target => return Ok(()),
            Ok(_) => n += 1,
            Err(_) if link.exists() => n += 1,
            Err(_) => {
                return std::os::unix::fs::symlink(&target, &link)
                    .with_context(|| format!("cannot link {}", link.display()));
            }
        }
    }
}

/// `init POOL --device DEV[,DEV..]`: lays the group over the devices (or opens it if they
/// already hold one with the same setup values) and links them into POOL.
pub(super) fn init(a: &InitArgs) -> anyhow::Result<ExitCode> {
    let dir = &a.pool.dir;
    let c = config(a)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let p = VgPool::create(&a.device, c, a.force)
        .with_context(|| format!("cannot set up a volume group on {:?}", a.device))?;
    for d in &a.device {
        link_device(dir, d)?;
    }
    let st = p.vg().status();
    println!(
        "{} pool in {} on {} device(s): data {}, metadata {}, free {} extents of {}",
        if p.vg().is_new() { "created" } else { "opened existing" },
        dir.display(),
        a.device.len(),
        binary_size(st.data.bytes),
        binary_size(st.metadata.bytes),
        st.free.0,
        binary_size(st.extent_size)
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) fn extend(a: &ExtendArgs) -> anyhow::Result<ExitCode> {
    let m = open_pool(&a.pool.dir, Access::Exclusive)?;
    let events = m.svc.extend_device(&a.device)?;
    if m.dir.is_dir() {
        link_device(&m.dir, &a.device)?;
    }
    println!("added {} to the pool's volume group", a.device.display());
    for e in events {
        println!("{e}");
    }
    Ok(ExitCode::SUCCESS)
}

/// "+SIZE" grows by SIZE; "SIZE" asks for that total (never smaller than now).
fn growth(arg: &str, current: Bytes) -> anyhow::Result<Bytes> {
    if let Some(rel) = arg.strip_prefix('+') {
        return Ok(Bytes::new(parse_size(rel)?));
    }
    let total = Bytes::new(parse_size(arg)?);
    if total < current {
        bail!("{arg} is smaller than the current {}; pools never shrink", current.binary());
    }
    Ok(total - current)
}

pub(super) fn resize(a: &ResizeArgs) -> anyhow::Result<ExitCode> {
    if a.data.is_none() && a.metadata.is_none() {
        bail!("give --data and/or --metadata");
    }
    let m = open_pool(&a.pool.dir, Access::Exclusive)?;
    let pool = m.pool();
    if let Some(d) = &a.data {
        let cur = pool.data_bytes(pool.data_usage().total);
        m.svc.resize_data(growth(d, cur)?)?;
    }
    if let Some(md) = &a.metadata {
        let cur = pool.metadata_usage().total.bytes();
        m.svc.resize_metadata(growth(md, cur)?)?;
    }
    println!(
        "data {}, metadata {}",
        pool.data_bytes(pool.data_usage().total).binary(),
        pool.metadata_usage().total.bytes().binary()
    );
    Ok(ExitCode::SUCCESS)
}

fn events_path(pool: &Path) -> anyhow::Result<PathBuf> {
    match source(pool) {
        PoolSource::Dir(d) => Ok(d.join("events")),
        PoolSource::Group(p) if p.len() == 1 && p[0].is_dir() => Ok(p[0].join("events")),
        PoolSource::Group(_) => {
            bail!("a pool given as a device list keeps no event log; name its directory")
        }
    }
}

pub(super) fn events(a: &EventsArgs) -> anyhow::Result<ExitCode> {
    let path = events_path(&a.pool.dir)?;
    if !a.pool.dir.exists() {
        bail!("pool directory {} does not exist", a.pool.dir.display());
    }
    let ev = EventLog::new(&path).read()?;
    if a.json {
        print!("{}", to_json(&ev));
    } else {
        for e in ev {
            println!("{e}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn dmsetup_table(a: &DmsetupTableArgs) -> anyhow::Result<ExitCode> {
    let m = open_pool(&a.pool.dir, Access::Shared)?;
    let Some(vg) = m.svc.vg_pool() else {
        bail!(
            "{} is a file-backed pool: its files become devices through losetup, not a \
             volume-group table",
            a.pool.dir.display()
        );
    };
    let t = vg.dmsetup_table(m.svc.name())?;
    print!("{}", if a.script { t.to_script() } else { t.to_string() });
    Ok(ExitCode::SUCCESS)
}
