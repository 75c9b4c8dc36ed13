//! import, export: raw images in and out of volumes.

use std::fs::File;
use std::io::{IsTerminal, Read};
use std::os::unix::fs::FileExt;
use std::process::ExitCode;

use anyhow::{bail, Context};

use super::pool::{open_pool, Access};
use super::size::binary_size;
use super::{ExportArgs, ImportArgs};
use thinpool::pool::ErrorKind;
use thinpool::units::Bytes;

/// Bytes moved per read or write.
const CHUNK: usize = 1 << 20;
/// Commit during long imports so the dirty metadata kept in memory stays bounded.
const COMMIT_EVERY: u64 = 256 << 20;

/// Progress on stderr: a bar on a terminal, a plain line per tenth otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    verb: &'static str,
    total: u64,
    next_tenth: u64,
}

impl Progress {
    fn new(verb: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = indicatif::ProgressBar::new(total);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(verb);
            b
        });
        Progress { bar, verb, total, next_tenth: 1 }
    }

    fn set(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
            return;
        }
        // One line per tenth reached; a big step prints only the latest.
        let tenth = done.saturating_mul(10).checked_div(self.total).map_or(10, |t| t.min(10));
        if tenth >= self.next_tenth {
            eprintln!(
                "{}: {}% ({} of {})",
                self.verb,
                tenth * 10,
                binary_size(done),
                binary_size(self.total)
            );
            self.next_tenth = tenth + 1;
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

pub(super) fn import(a: &ImportArgs) -> anyhow::Result<ExitCode> {
    let opened = open_pool(&a.pool.dir, Access::Exclusive)?;
    let pool = opened.pool();
    let mut file =
        File::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let len = file.metadata().with_context(|| format!("cannot stat {}", a.file.display()))?.len();
    if len == 0 {
        bail!("{} is empty", a.file.display());
    }
    let (id, existed) = match pool.volume(&a.name) {
        Ok(v) if v.size.get() < len => bail!(
            "{} ({}) does not fit in volume {} ({})",
            a.file.display(),
            binary_size(len),
            a.name,
            v.size.binary()
        ),
        Ok(v) => (v.id, true),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            (pool.create_volume(&a.name, Bytes::new(len))?, false)
        }
        Err(e) => return Err(e.into()),
    };
    let bs = pool.block_bytes() as usize;
    // Whole blocks per chunk, so zero detection sees whole blocks.
    let chunk = (CHUNK / bs).max(1) * bs;
    let mut buf = vec![0u8; chunk];
    let mut progress = Progress::new("import", len);
    let (mut off, mut since_commit, mut written) = (0u64, 0u64, 0u64);
    while off < len {
        let n = read_full(&mut file, &mut buf[..(len - off).min(chunk as u64) as usize])
            .with_context(|| format!("reading {} at {off}", a.file.display()))?;
        if n == 0 {
            bail!("{} shrank while being imported", a.file.display());
        }
        for (i, block) in buf[..n].chunks(bs).enumerate() {
            let at = off + (i * bs) as u64;
            if block.iter().all(|&b| b == 0) {
                // A zero block stays (or becomes) unmapped.
                if existed {
                    pool.write_zeroes(id, at, block.len() as u64, true)?;
                }
            } else {
                pool.write(id, at, block)?;
                written += block.len() as u64;
            }
        }
        off += n as u64;
        since_commit += n as u64;
        if since_commit >= COMMIT_EVERY {
            pool.commit()?;
            since_commit = 0;
        }
        progress.set(off);
    }
    pool.commit()?;
    progress.finish();
    println!(
        "imported {} into {} ({} written, zero blocks left unmapped)",
        binary_size(len),
        a.name,
        binary_size(written)
    );
    Ok(ExitCode::SUCCESS)
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

pub(super) fn export(a: &ExportArgs) -> anyhow::Result<ExitCode> {
    let opened = open_pool(&a.pool.dir, Access::Shared)?;
    let pool = opened.pool();
    let v = pool.volume(&a.name)?;
    let size = v.size.get();
    let out =
        File::create(&a.file).with_context(|| format!("cannot create {}", a.file.display()))?;
    out.set_len(size).with_context(|| format!("cannot size {}", a.file.display()))?;
    let mut progress = Progress::new("export", size);
    let mut buf = vec![0u8; CHUNK];
    let window = 64 * CHUNK as u64;
    let mut base = 0u64;
    while base < size {
        let len = window.min(size - base);
        let mut pos = base;
        for (run, mapped) in pool.extents(v.id, base, len)? {
            if mapped {
                let mut at = pos;
                while at < pos + run {
                    let n = (pos + run - at).min(CHUNK as u64) as usize;
                    pool.read(v.id, at, &mut buf[..n])?;
                    // Zeros inside mapped blocks stay holes too: the file is new.
                    if buf[..n].iter().any(|&b| b != 0) {
                        out.write_all_at(&buf[..n], at)
                            .with_context(|| format!("writing {} at {at}", a.file.display()))?;
                    }
                    at += n as u64;
                }
            }
            pos += run;
        }
        base += len;
        progress.set(base);
    }
    out.sync_all().with_context(|| format!("syncing {}", a.file.display()))?;
    progress.finish();
    println!("exported {} ({}) to {}", a.name, v.size.binary(), a.file.display());
    Ok(ExitCode::SUCCESS)
}
