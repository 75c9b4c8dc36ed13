//! `lamina volume snapshot | send | receive | ls --pool`: the pool's thin volumes (the NBD
//! exports), as opposed to the named volumes of the container store.
//!
//! `send` and `receive` carry thinpool's send stream (versioned, checksummed extents, a final
//! digest) over the data channel ([`qemu::data`]) between the host and the pool daemon in
//! the guest, which makes and applies it; the host only passes bytes through, so a stream
//! sent from one appliance is received by another (`send > s; receive < s`, or a pipe).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::image::call;
use crate::out::{cell, human, print_rows};
use crate::system::data;

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

fn progress(quiet: bool, len: Option<u64>) -> ProgressBar {
    // indicatif draws on stderr only when it is a terminal.
    if quiet {
        return ProgressBar::hidden();
    }
    let (b, template) = match len {
        Some(n) => (
            ProgressBar::new(n),
            "{spinner} {bytes}/{total_bytes} {wide_bar} {bytes_per_sec} {eta}",
        ),
        None => (ProgressBar::new_spinner(), "{spinner} {bytes} {bytes_per_sec} {elapsed}"),
    };
    b.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    b
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
pub fn send(
    home: &Path,
    vm: &str,
    name: &str,
    from: Option<&str>,
    output: Option<&PathBuf>,
    quiet: bool,
) -> Result<()> {
    if output.is_none() && std::io::stdout().is_terminal() {
        bail!("refusing to write a send stream to a terminal; use -o FILE or redirect");
    }
    let mut c = data(home, vm)?;
    // Only a file this call creates is removed again on failure.
    let created = output.is_some_and(|f| !f.exists());
    let sink: Box<dyn Write> = match output {
        Some(f) => {
            Box::new(std::fs::File::create(f).with_context(|| format!("creating {}", f.display()))?)
        }
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = std::io::BufWriter::with_capacity(1 << 20, sink);
    let b = progress(quiet, None);
    let r = c.send(name, from, &mut sink, &mut |n| b.set_position(n));
    b.finish_and_clear();
    drop(sink);
    if r.is_err() && created {
        if let Some(f) = output.filter(|f| f.is_file()) {
            let _ = std::fs::remove_file(f);
        }
    }
    let what = match from {
        Some(f) => format!("sending {name} (from {f}) out of VM {vm}"),
        None => format!("sending {name} out of VM {vm}"),
    };
    let v = r.context(what)?;
    if !quiet {
        eprintln!("sent {name} ({})", summary(&v));
    }
    Ok(())
}

/// `lamina volume receive NAME [--base BASE] [-i FILE]`.
pub fn receive(
    home: &Path,
    vm: &str,
    name: &str,
    base: Option<&str>,
    input: Option<&PathBuf>,
    quiet: bool,
    json: bool,
) -> Result<()> {
    let (mut src, len): (Box<dyn std::io::Read>, Option<u64>) = match input {
        Some(f) => {
            let file =
                std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
            let len = file.metadata().ok().map(|m| m.len());
            (Box::new(file), len)
        }
        None => {
            if std::io::stdin().is_terminal() {
                bail!("refusing to read a send stream from a terminal; use -i FILE or redirect");
            }
            let len = std::fs::File::open("/proc/self/fd/0")
                .and_then(|f| f.metadata())
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            (Box::new(std::io::stdin().lock()), len)
        }
    };
    let mut c = data(home, vm)?;
    let b = progress(quiet, len);
    let r = c.receive(name, base, &mut src, &mut |n| b.set_position(n));
    b.finish_and_clear();
    let v = r.with_context(|| format!("receiving {name} into VM {vm}"))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{name}");
        if !quiet {
            eprintln!("received {name} ({})", summary(&v));
        }
    }
    Ok(())
}
