//! metadata-snap, delta, send, receive: a pool that may be serving, read consistently and
//! streamed (through its daemon when one serves it).

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::pool::{manage, try_manage_local, try_open_pool, Access, Busy};
use super::{DeltaArgs, MetadataSnapArgs, ReceiveArgs, SendArgs, SnapAction};

use thinpool::daemon::control::{self, MetadataSnapAction};
use thinpool::delta;
use thinpool::delta::send;
use thinpool::pool::Pool;
use thinpool::units::{MetaBlock, ThinId};

pub(super) fn metadata_snap(a: &MetadataSnapArgs) -> anyhow::Result<ExitCode> {
    let m = manage(&a.pool.dir, Access::Exclusive)?;
    let action = match a.action {
        SnapAction::Reserve => MetadataSnapAction::Reserve,
        SnapAction::Release => MetadataSnapAction::Release,
    };
    let b = m.metadata_snap(action)?;
    match a.action {
        SnapAction::Reserve => println!("reserved a metadata snapshot at block {b}"),
        SnapAction::Release => println!("released the metadata snapshot at block {b}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// A volume name, or a thin device id when no volume has that name.
fn thin_id(volumes: &[super::output::VolumeRow], arg: &str) -> anyhow::Result<ThinId> {
    if let Some(v) = volumes.iter().find(|v| v.name == arg) {
        return Ok(ThinId(v.id));
    }
    match arg.parse::<u64>() {
        Ok(id) => Ok(ThinId(id)),
        Err(_) => bail!("no volume {arg:?} in the pool (give a volume name or a thin id)"),
    }
}

pub(super) fn delta(a: &DeltaArgs) -> anyhow::Result<ExitCode> {
    let dir = &a.pool.dir;
    let (m, local) = try_manage_local(dir, Access::Shared)?;
    let rows = m.volumes()?;
    let (left, right) = (thin_id(&rows, &a.thin1)?, thin_id(&rows, &a.thin2)?);
    let (_, dev) = super::meta::open_metadata(dir)?;
    let input = if local {
        // The pool is ours (shared lock held by `m`): its committed metadata is stable.
        delta::read(dev.as_ref(), MetaBlock(0), left, right)
    } else {
        // A daemon serves the pool: read through a metadata snapshot it holds for us.
        let b = m.metadata_snap(MetadataSnapAction::Reserve).with_context(|| {
            "cannot reserve a metadata snapshot to read the running pool (release one still \
             held with `thinpool metadata-snap POOL release`)"
        })?;
        let r = delta::read(dev.as_ref(), MetaBlock(b), left, right);
        m.metadata_snap(MetadataSnapAction::Release)
            .context("releasing the metadata snapshot taken for the delta")?;
        r
    }
    .with_context(|| format!("cannot read the mappings of {} and {}", a.thin1, a.thin2))?;
    let mut out = std::io::stdout().lock();
    if a.xml {
        let x = delta::render_xml(&input.header, left, right, &input.left, &input.right);
        out.write_all(x.as_bytes())?;
    } else {
        let ranges = delta::diff(&input.left, &input.right);
        if a.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&ranges)?)?;
        } else {
            for r in ranges.iter().filter(|r| r.change.changed()) {
                let c = serde_json::to_value(r.change)?;
                writeln!(out, "{} begin={} length={}", c.as_str().unwrap_or("?"), r.begin, r.len)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn send_verb(a: &SendArgs) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        bail!("the stream is binary: redirect stdout to a file or a pipe");
    }
    let from = a.from.as_deref();
    streamed(
        &a.pool.dir,
        Access::Shared,
        "sent",
        &a.snap,
        |pool| {
            let out = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            send::send(pool, &a.snap, from, out)
        },
        |daemon| daemon.send_to(&a.snap, from, &mut std::io::stdout().lock()),
    )
}

pub(super) fn receive_verb(a: &ReceiveArgs) -> anyhow::Result<ExitCode> {
    let base = a.base.as_deref();
    streamed(
        &a.pool.dir,
        Access::Exclusive,
        "received",
        &a.name,
        |pool| {
            let input = std::io::BufReader::with_capacity(1 << 20, std::io::stdin().lock());
            send::receive(pool, &a.name, base, input)
        },
        |daemon| daemon.receive_from(&a.name, base, &mut std::io::stdin().lock()),
    )
}

/// Runs a send or receive in this process when it can open the pool, else through the
/// daemon that serves it (see daemon::transfer), and reports what the stream held.
fn streamed<L, D>(
    dir: &Path,
    access: Access,
    done: &str,
    volume: &str,
    local: impl FnOnce(&Pool) -> Result<send::Stats, L>,
    daemon: impl FnOnce(control::Client) -> Result<send::Stats, D>,
) -> anyhow::Result<ExitCode>
where
    anyhow::Error: From<L> + From<D>,
{
    let s = match try_open_pool(dir, access) {
        Ok(p) => local(p.pool())?,
        Err(Busy::Daemon(state)) => daemon(control::Client::new(state))?,
        Err(Busy::Other(e)) => return Err(e),
    };
    eprintln!(
        "{done} {volume} ({} of data in {} records, stream {} bytes)",
        s.data_bytes, s.records, s.stream_bytes
    );
    Ok(ExitCode::SUCCESS)
}
