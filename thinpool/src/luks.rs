//! Encrypted volumes: a LUKS2 header written by Debian's `cryptsetup luksFormat`.
//!
//! lamina does not write LUKS2 itself. [`format`] runs `cryptsetup luksFormat --type luks2` on
//! a sparse scratch file (in a private 0700 directory, removed afterwards) and returns the
//! header it wrote, which the pool then writes at the start of a new volume; the guest opens
//! the volume with the same `cryptsetup` and the kernel's dm-crypt. The key stays in its key
//! file: only cryptsetup reads it, and nothing here logs or copies it.
//!
//! Layout of what cryptsetup 2.6 writes (LUKS2 On-Disk Format Specification, §2-3):
//!
//! ```text
//! 0        binary header (4 KiB: magic "LUKS\xba\xbe", version 2, hdr_size, …) + JSON area
//! hdr_size secondary binary header + JSON area (a copy)
//! 2×hdr    keyslots area: the key slot's anti-forensic stripes, the rest random fill
//! offset   data segment (`segments."0".offset` in the JSON, 16 MiB by default):
//!          "dynamic" size, i.e. to the end of the device; nothing below it is data
//! ```
//!
//! [`Header`] is everything below the data segment, so a volume that starts with it is what
//! `cryptsetup luksFormat` would have left on a device of that size.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// LUKS2 binary header magic (spec §2.1).
pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// The scratch file cryptsetup formats is at most this large (sparse): enough for any header
/// cryptsetup's defaults lay down, and no more than the volume itself.
const SCRATCH_MAX: u64 = 256 << 20;
/// A header whose data segment starts beyond this is refused (cryptsetup's own maximum
/// metadata + keyslots size is 128 MiB + 2×4 MiB).
pub const HEADER_MAX: u64 = 144 << 20;

#[derive(Debug, Error)]
pub enum LuksError {
    #[error("key file {path}")]
    KeyIo { path: PathBuf, source: std::io::Error },
    #[error("key file {path} is not a regular file")]
    KeyNotFile { path: PathBuf },
    #[error("key file {path} is empty")]
    KeyEmpty { path: PathBuf },
    #[error(
        "key file {path} is readable or writable by group or others (mode {mode:04o}); \
         chmod 600 it"
    )]
    KeyOpen { path: PathBuf, mode: u32 },
    #[error("volume size {size} is too small for a LUKS2 header: need more than {need} bytes")]
    TooSmall { size: u64, need: u64 },
    #[error("cannot run {program} (Debian's cryptsetup-bin)")]
    Spawn { program: PathBuf, source: std::io::Error },
    #[error("cryptsetup luksFormat failed ({status}): {stderr}")]
    Cryptsetup { status: String, stderr: String },
    #[error("{what} {path}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("not a LUKS2 header: {0}")]
    NotLuks2(String),
}

/// cryptsetup's key-derivation knobs; `None` leaves cryptsetup's own benchmark-based choice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormatOptions {
    /// `--iter-time` (ms spent deriving the key when opening).
    pub iter_time_ms: Option<u32>,
    /// `--pbkdf-memory` (KiB of memory argon2id uses).
    pub pbkdf_memory_kib: Option<u32>,
    /// The cryptsetup binary; `None` finds `cryptsetup` on PATH, then in /sbin and /usr/sbin.
    pub cryptsetup: Option<PathBuf>,
}

/// The bytes cryptsetup wrote below the data segment; written at offset 0 of a volume.
#[derive(Clone, PartialEq, Eq)]
pub struct Header(Vec<u8>);

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Header({} bytes)", self.0.len())
    }
}

impl Header {
    /// Checks that `bytes` is a LUKS2 header cut at its data segment.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, LuksError> {
        let offset = data_offset(&bytes)?;
        if offset != bytes.len() as u64 {
            return Err(LuksError::NotLuks2(format!(
                "{} bytes given, the data segment starts at {offset}",
                bytes.len()
            )));
        }
        Ok(Self(bytes))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (= the data segment's offset).
    pub fn len(&self) -> u64 {
        self.0.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Whether `first` (a volume's first bytes) starts with a LUKS2 binary header.
pub fn is_luks2(first: &[u8]) -> bool {
    first.len() >= 8 && &first[..6] == MAGIC && first[6..8] == [0, 2]
}

/// The data segment's offset of the LUKS2 header at the start of `bytes` (the lowest
/// `segments.*.offset` of its JSON area): the header's length. A pure decoder.
pub fn data_offset(bytes: &[u8]) -> Result<u64, LuksError> {
    let bad = |why: &str| LuksError::NotLuks2(why.to_owned());
    if bytes.len() < 4096 || !is_luks2(bytes) {
        return Err(bad("no LUKS2 magic and version at offset 0"));
    }
    let hdr_size = u64::from_be_bytes(bytes[8..16].try_into().unwrap_or_default());
    // Spec §2.1: hdr_size is 16 KiB … 4 MiB, a power of two; the JSON area follows the 4 KiB
    // binary header.
    if !(16384..=4 << 20).contains(&hdr_size) || !hdr_size.is_power_of_two() {
        return Err(bad("hdr_size out of range"));
    }
    let json = bytes.get(4096..hdr_size as usize).ok_or_else(|| bad("JSON area cut short"))?;
    let end = json.iter().position(|b| *b == 0).unwrap_or(json.len());
    let v: serde_json::Value =
        serde_json::from_slice(&json[..end]).map_err(|e| bad(&format!("JSON area: {e}")))?;
    let segments =
        v.get("segments").and_then(|s| s.as_object()).ok_or_else(|| bad("no segments"))?;
    let offset = segments
        .values()
        .filter_map(|s| s.get("offset")?.as_str()?.parse::<u64>().ok())
        .min()
        .ok_or_else(|| bad("no segment offset"))?;
    if offset < 2 * hdr_size || offset > HEADER_MAX {
        return Err(bad("data segment offset out of range"));
    }
    Ok(offset)
}

/// Refuses a key file that is missing, empty, not a regular file, or open to group or
/// others (as ssh refuses such private keys): the key must not leak through its mode.
pub fn check_key_file(path: &Path) -> Result<(), LuksError> {
    let m = std::fs::metadata(path)
        .map_err(|source| LuksError::KeyIo { path: path.to_owned(), source })?;
    if !m.is_file() {
        return Err(LuksError::KeyNotFile { path: path.to_owned() });
    }
    if m.len() == 0 {
        return Err(LuksError::KeyEmpty { path: path.to_owned() });
    }
    let mode = m.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(LuksError::KeyOpen { path: path.to_owned(), mode });
    }
    Ok(())
}

/// The cryptsetup binary to run.
pub fn cryptsetup_path(opts: &FormatOptions) -> PathBuf {
    if let Some(p) = &opts.cryptsetup {
        return p.clone();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin"].map(PathBuf::from))
        .map(|d| d.join("cryptsetup"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("cryptsetup"))
}

/// A private directory, removed with everything in it on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn scratch_dir() -> Result<Scratch, LuksError> {
    let base = std::env::temp_dir();
    for n in 0..100u32 {
        let p = base.join(format!("lamina-luks.{}.{n}", std::process::id()));
        let mut b = std::fs::DirBuilder::new();
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        match b.create(&p) {
            Ok(()) => return Ok(Scratch(p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(LuksError::Io { what: "creating", path: p, source });
            }
        }
    }
    Err(LuksError::Io {
        what: "creating a scratch directory in",
        path: base,
        source: std::io::ErrorKind::AlreadyExists.into(),
    })
}

/// A `cryptsetup luksFormat` under way: the scratch file it formats, removed on drop.
pub struct Formatting {
    _scratch: Scratch,
    img: PathBuf,
    size: u64,
}

/// Prepares `cryptsetup luksFormat --type luks2` with `key_file` on a sparse scratch file
/// standing for a volume of `size` bytes; returns the command line to run (by the caller, so
/// a PID 1 can run it under its own reaper) and what reads the result.
pub fn start(
    key_file: &Path,
    size: u64,
    opts: &FormatOptions,
) -> Result<(Formatting, Vec<String>), LuksError> {
    check_key_file(key_file)?;
    let scratch = scratch_dir()?;
    let img = scratch.0.join("header.img");
    let io = |what, source| LuksError::Io { what, path: img.clone(), source };
    let f = std::fs::File::create(&img).map_err(|e| io("creating", e))?;
    f.set_len(size.min(SCRATCH_MAX)).map_err(|e| io("sizing", e))?;
    drop(f);
    let mut argv = vec![cryptsetup_path(opts).display().to_string()];
    argv.extend(["luksFormat", "--type", "luks2", "--batch-mode", "--key-file"].map(String::from));
    argv.push(key_file.display().to_string());
    if let Some(ms) = opts.iter_time_ms {
        argv.extend(["--iter-time".to_owned(), ms.to_string()]);
    }
    if let Some(kib) = opts.pbkdf_memory_kib {
        argv.extend(["--pbkdf-memory".to_owned(), kib.to_string()]);
    }
    argv.push(img.display().to_string());
    Ok((Formatting { _scratch: scratch, img, size }, argv))
}

impl Formatting {
    /// The header cryptsetup wrote (after the command of [`start`] succeeded).
    pub fn finish(self) -> Result<Header, LuksError> {
        let bytes = std::fs::read(&self.img).map_err(|source| LuksError::Io {
            what: "reading",
            path: self.img.clone(),
            source,
        })?;
        let offset = data_offset(&bytes)?;
        // cryptsetup warns but succeeds when no data would fit ("too small for activation").
        if self.size <= offset {
            return Err(LuksError::TooSmall { size: self.size, need: offset });
        }
        let mut bytes = bytes;
        bytes.truncate(offset as usize);
        Header::from_bytes(bytes)
    }
}

/// Runs `cryptsetup luksFormat --type luks2` with `key_file` on a scratch file standing for a
/// volume of `size` bytes and returns the header it wrote.
pub fn format(key_file: &Path, size: u64, opts: &FormatOptions) -> Result<Header, LuksError> {
    let (f, argv) = start(key_file, size, opts)?;
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .output()
        .map_err(|source| LuksError::Spawn { program: PathBuf::from(&argv[0]), source })?;
    if !out.status.success() {
        return Err(LuksError::Cryptsetup {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    f.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal LUKS2 header: binary header, JSON with one segment at `offset`.
    fn fake(offset: u64) -> Vec<u8> {
        let mut b = vec![0u8; offset as usize];
        b[..6].copy_from_slice(MAGIC);
        b[6..8].copy_from_slice(&2u16.to_be_bytes());
        b[8..16].copy_from_slice(&16384u64.to_be_bytes());
        let json = format!(r#"{{"segments":{{"0":{{"type":"crypt","offset":"{offset}"}}}}}}"#);
        b[4096..4096 + json.len()].copy_from_slice(json.as_bytes());
        b
    }

    #[test]
    fn data_offset_reads_the_segment() {
        assert_eq!(data_offset(&fake(1 << 20)).unwrap(), 1 << 20);
        let h = Header::from_bytes(fake(1 << 20)).unwrap();
        assert_eq!(h.len(), 1 << 20);
        assert!(is_luks2(h.bytes()));
    }

    #[test]
    fn not_luks2_is_refused_with_the_reason() {
        let mut b = fake(1 << 20);
        b[6..8].copy_from_slice(&1u16.to_be_bytes());
        assert!(data_offset(&b).unwrap_err().to_string().contains("magic and version"));
        let mut b = fake(1 << 20);
        b[4096] = b'x';
        assert!(data_offset(&b).unwrap_err().to_string().contains("JSON area"));
        // Cut short or longer than the header: refused.
        let e = Header::from_bytes(fake(1 << 20)[..1 << 19].to_vec()).unwrap_err();
        assert!(e.to_string().contains("data segment starts at"), "{e}");
        let e = data_offset(&fake(16384)).unwrap_err();
        assert!(e.to_string().contains("offset out of range"), "{e}");
    }

    #[test]
    fn key_file_mode_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("k");
        std::fs::write(&k, b"secret").unwrap();
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_key_file(&k).unwrap_err();
        assert!(e.to_string().contains("mode 0644"), "{e}");
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_key_file(&k).unwrap();
        let empty = d.path().join("e");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(check_key_file(&empty), Err(LuksError::KeyEmpty { .. })));
        assert!(matches!(check_key_file(d.path()), Err(LuksError::KeyNotFile { .. })));
        assert!(matches!(check_key_file(&d.path().join("none")), Err(LuksError::KeyIo { .. })));
    }

    #[test]
    fn the_os_error_prints_once_in_the_chain_and_not_in_display() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("none");
        let e = check_key_file(&missing).unwrap_err();
        assert_eq!(e.to_string(), format!("key file {}", missing.display()));
        let line = crate::units::chain(&e);
        assert_eq!(line.matches("No such file or directory").count(), 1, "{line}");
        assert!(line.starts_with(&e.to_string()), "{line}");
    }
}
