//! The byte streams of the transfer verbs (`image load|save`, `volume
//! backup|restore|send|receive`): `-i FILE` or stdin in, `-o FILE` or stdout out, and the
//! progress bar on stderr.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// The flags of a verb that reads a stream and shows its progress.
#[derive(clap::Args)]
pub struct Source {
    /// Read from this file instead of stdin.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// No progress bar or summary on stderr.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Opens `-i FILE`, or stdin: the reader, and its length when it is known (a file, or stdin
/// redirected from one) so the progress bar can show how much is left.
pub fn open_input(input: Option<&Path>) -> Result<(Box<dyn Read>, Option<u64>)> {
    Ok(match input {
        Some(f) => {
            let file =
                std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
            let len = file.metadata().ok().map(|m| m.len());
            (Box::new(file), len)
        }
        None => {
            let len = std::fs::File::open("/proc/self/fd/0")
                .and_then(|f| f.metadata())
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len());
            (Box::new(std::io::stdin().lock()), len)
        }
    })
}

/// Runs `write` on `-o FILE`, or on stdout when that is not a terminal (`what` names the
/// stream in the refusal). When it fails, a file this call created is removed again; never
/// a device such as /dev/null, nor a file that was there before.
pub fn write_output<T>(
    output: Option<&Path>,
    what: &str,
    write: impl FnOnce(&mut dyn Write) -> Result<T>,
) -> Result<T> {
    let Some(f) = output else {
        if std::io::stdout().is_terminal() {
            bail!("refusing to write {what} to a terminal; use -o FILE or redirect");
        }
        return write(&mut std::io::stdout().lock());
    };
    let created = !f.exists();
    let mut file = std::fs::File::create(f).with_context(|| format!("creating {}", f.display()))?;
    let r = write(&mut file);
    if r.is_err() && created && f.is_file() {
        let _ = std::fs::remove_file(f);
    }
    r
}

/// A byte-count progress bar (a spinner when the length is unknown), or a hidden one.
pub fn progress(quiet: bool, len: Option<u64>) -> ProgressBar {
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
