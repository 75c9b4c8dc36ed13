//! `lamina volume snapshot | send | receive | ls --pool`: the pool's thin volumes (the NBD
//! exports), as opposed to the named volumes of the container store.
//!
//! `send` and `receive` carry thinpool's send stream (versioned, checksummed extents, a final
//! digest) over the data channel ([`qemu::data`]) between the host and the pool daemon in
//! the guest, which makes and applies it; the host only passes bytes through, so a stream
//! sent from one appliance is received by another (`send > s; receive < s`, or a pipe).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::image::{call, data, VmArg};
use crate::out::{cell, human, print_rows};
use crate::stream::{open_input, progress, write_output, Source};

/// `lamina volume snapshot VOLUME SNAPSHOT`.
pub fn snapshot(home: &Path, vm: &str, volume: &str, snapshot: &str) -> Result<()> {
    call(home, vm, "volume.snapshot", Some(json!({"origin": volume, "name": snapshot})))
        .with_context(|| format!("snapshotting {volume} as {snapshot}"))?;
    println!("{snapshot}");
    Ok(())
}

/// `lamina volume ls --pool`: the pool's volumes and snapshots.
pub fn ls(home: &Path, vm: &str, json: bool) -> Result<()> {
    let v = call(home, vm, "volume.list", None)?;
    let block = call(home, vm, "pool.status", None)?["block_bytes"].as_u64().unwrap_or(0);
    print_rows(json, &v, &["VOLUME NAME", "SIZE", "MAPPED"], |x| {
        vec![
            cell(&x["name"]),
            human(x["size"].as_u64().unwrap_or(0)),
            human(x["mapped_blocks"].as_u64().unwrap_or(0) * block),
        ]
    })
}

/// What a finished transfer carried, for the summary line.
fn summary(v: &Value) -> String {
    format!(
        "{} of data in {} records, stream {} bytes",
        human(v["data_bytes"].as_u64().unwrap_or(0)),
        cell(&v["records"]),
        cell(&v["stream_bytes"])
    )
}

/// `lamina volume send NAME [--from BASE] [-o FILE]`.
#[derive(clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    vm: VmArg,
    /// The snapshot (or volume) to send; a volume written meanwhile gives a stream the
    /// receiver refuses.
    name: String,
    /// Send only what differs from this older snapshot (the receiver must hold it).
    #[arg(long, value_name = "BASE")]
    from: Option<String>,
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// No progress bar or summary on stderr.
    #[arg(short, long)]
    quiet: bool,
}

/// `lamina volume receive NAME [--base BASE] [-i FILE]`.
#[derive(clap::Args)]
pub struct ReceiveArgs {
    #[command(flatten)]
    vm: VmArg,
    /// Name of the new volume.
    name: String,
    /// For an incremental stream: the volume here it applies to (default: the base name
    /// the stream carries).
    #[arg(long)]
    base: Option<String>,
    #[command(flatten)]
    src: Source,
    #[arg(long)]
    json: bool,
}

pub fn send(home: &Path, a: &SendArgs) -> Result<()> {
    let (vm, name) = (&a.vm.name, &a.name);
    let what = match &a.from {
        Some(f) => format!("sending {name} (from {f}) out of VM {vm}"),
        None => format!("sending {name} out of VM {vm}"),
    };
    let v = write_output(a.output.as_deref(), "a send stream", |sink| {
        let mut c = data(home, vm)?;
        let mut sink = std::io::BufWriter::with_capacity(1 << 20, sink);
        let b = progress(a.quiet, None);
        let r = c.send(name, a.from.as_deref(), &mut sink, &mut |n| b.set_position(n));
        b.finish_and_clear();
        r.context(what)
    })?;
    if !a.quiet {
        eprintln!("sent {name} ({})", summary(&v));
    }
    Ok(())
}

pub fn receive(home: &Path, a: &ReceiveArgs) -> Result<()> {
    let (vm, name) = (&a.vm.name, &a.name);
    if a.src.input.is_none() && std::io::stdin().is_terminal() {
        bail!("refusing to read a send stream from a terminal; use -i FILE or redirect");
    }
    let (mut src, len) = open_input(a.src.input.as_deref())?;
    let mut c = data(home, vm)?;
    let b = progress(a.src.quiet, len);
    let r = c.receive(name, a.base.as_deref(), &mut src, &mut |n| b.set_position(n));
    b.finish_and_clear();
    let v = r.with_context(|| format!("receiving {name} into VM {vm}"))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{name}");
        if !a.src.quiet {
            eprintln!("received {name} ({})", summary(&v));
        }
    }
    Ok(())
}
