//! Encryption at rest for the store: LUKS2 through Debian's `cryptsetup` and the kernel's
//! dm-crypt.
//!
//! The key comes from a small read-only config disk the host attaches (`lamina vm run
//! --encrypt-key FILE`, virtio serial [`SERIAL`]): a ustar archive holding `store.key`,
//! unpacked into [`KEY`] (tmpfs, mode 0600 in a 0700 directory). Without a key disk and with
//! `pool.passphrase_wait_secs` set (`lamina vm run --unlock-wait SECS`), the boot waits that
//! long for a passphrase through the agent (`store.unlock`, `lamina vm unlock NAME`), which
//! is kept the same way; a wrong one is reported and another awaited until the deadline; the
//! agent's `status` says what the boot waits for. With the store attached:
//!
//! ```text
//! store holds      key given                          no key
//! zeroes (new)     luksFormat, open, mkfs.xfs          plain XFS (as without encryption)
//! LUKS2            open (wrong key: stop)              stop: nothing is written
//! XFS / other      stop: the store is not encrypted    plain XFS
//! ```
//!
//! "stop" is a failed bring-up: the boot ends `LAMINA DEGRADED` naming the cause, and the
//! store is only read (its first 64 KiB, to tell which case it is). The volume opens as
//! `/dev/mapper/lamina-store` with discards allowed (`--allow-discards`, also stored in the
//! header with `--persistent`), so fstrim and prune still hand blocks back to the pool; that
//! reveals which blocks are in use, as cryptsetup(8) warns.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::pool::{run, strings, PoolError};
use crate::reaper::Reaper;

/// virtio-blk serial of the key disk (the host's `qemu::keydisk::SERIAL`).
pub const SERIAL: &str = "lamina-luks-key";
/// The entry of the key disk's archive that holds the key.
pub const KEY_ENTRY: &str = "store.key";
/// Where the key is kept while the appliance runs (tmpfs, root only).
pub const KEY_DIR: &str = "/run/lamina/luks";
pub const KEY: &str = "/run/lamina/luks/store.key";
pub const CRYPTSETUP: &str = "/sbin/cryptsetup";
/// The dm-crypt mapping of the store.
pub const MAPPING: &str = "lamina-store";
/// A key larger than this is refused (cryptsetup's own default maximum is 8 MiB).
const MAX_KEY: u64 = 8 << 20;
/// argon2id under TCG is slow: formatting benchmarks for `--iter-time` (2 s by default) and
/// opening takes as long again, plus the emulation's overhead.
const CRYPTSETUP_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key disk {dev}")]
    Read { dev: PathBuf, source: std::io::Error },
    #[error("key disk {dev}: no {KEY_ENTRY} in it")]
    Missing { dev: PathBuf },
    #[error("key disk {dev}: {KEY_ENTRY} is empty")]
    Empty { dev: PathBuf },
    #[error("writing {path}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The key disk, if the host attached one.
pub fn find(sys_block: &Path) -> Option<PathBuf> {
    crate::nbd_tls::find_disk(sys_block, SERIAL)
}

/// Writes `data` to `path` (mode 0600, its directory 0700, created if needed).
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, data)
}

/// Unpacks the key from the key disk `dev` into `out`.
pub fn unpack(dev: &Path, out: &Path) -> Result<(), KeyError> {
    let rerr = |source| KeyError::Read { dev: dev.to_owned(), source };
    let mut ar = tar::Archive::new(std::fs::File::open(dev).map_err(rerr)?);
    for entry in ar.entries().map_err(rerr)? {
        let entry = entry.map_err(rerr)?;
        if entry.path().map_err(rerr)?.as_os_str() != KEY_ENTRY {
            continue;
        }
        let mut key = Vec::new();
        entry.take(MAX_KEY).read_to_end(&mut key).map_err(rerr)?;
        if key.is_empty() {
            return Err(KeyError::Empty { dev: dev.to_owned() });
        }
        return write_private(out, &key)
            .map_err(|source| KeyError::Write { path: out.to_owned(), source });
    }
    Err(KeyError::Missing { dev: dev.to_owned() })
}

/// Why the agent's `store.unlock` or an encrypted `volume.create` failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentKeyError {
    #[error("the boot is not waiting for a passphrase")]
    NotWaiting,
    #[error("empty passphrase")]
    Empty,
    #[error(
        "encrypted volumes use the appliance's key, and it was booted without one \
         (`lamina vm run --encrypt-key FILE` or `--unlock-wait`)"
    )]
    NoKey,
    #[error("writing {KEY}: {0}")]
    Write(std::io::Error),
    #[error(transparent)]
    Luks(#[from] thinpool::luks::LuksError),
    #[error(transparent)]
    Run(#[from] PoolError),
}

/// What the store's first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Luks2,
    Zeroes,
    Other,
}

pub fn classify(first: &[u8]) -> Found {
    if thinpool::luks::is_luks2(first) {
        Found::Luks2
    } else if first.iter().all(|&b| b == 0) {
        Found::Zeroes
    } else {
        Found::Other
    }
}

/// What to do with the attached store, per the table in the module doc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Use the device as it is (no encryption).
    Plain,
    /// `luksFormat` first, then open.
    Format,
    Open,
    /// Stop the bring-up with this reason.
    Refuse(String),
}

pub fn plan(found: Found, key: bool, dev: &Path) -> Plan {
    match (found, key) {
        (Found::Luks2, true) => Plan::Open,
        (Found::Luks2, false) => Plan::Refuse(format!(
            "the store ({}) is encrypted (LUKS2) and no key was given: boot with its key \
             (`lamina vm run --encrypt-key FILE`); nothing was written to it",
            dev.display()
        )),
        (Found::Zeroes, true) => Plan::Format,
        (Found::Zeroes, false) => Plan::Plain,
        (Found::Other, true) => Plan::Refuse(format!(
            "a key was given but the store ({}) is not encrypted (no LUKS2 header); \
             refusing to format over it; nothing was written to it",
            dev.display()
        )),
        (Found::Other, false) => Plan::Plain,
    }
}

/// cryptsetup's lock directory (its default, `/run/cryptsetup`): without it cryptsetup warns
/// and cannot take its per-device locks.
fn lock_dir() {
    let mut b = std::fs::DirBuilder::new();
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    let _ = b.recursive(true).create("/run/cryptsetup");
}

fn read_first(dev: &Path) -> Result<Vec<u8>, PoolError> {
    let mut buf = vec![0u8; 64 << 10];
    std::fs::File::open(dev)
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| PoolError::Failed(format!("reading {}: {e}", dev.display())))?;
    Ok(buf)
}

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    None,
    /// A key file (unpacked from the key disk).
    File(PathBuf),
    /// A passphrase through the agent, awaited this long.
    Agent(Duration),
}

/// What the boot waits for, while it waits (the agent's `status` shows it).
static WAITING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

pub fn waiting() -> Option<String> {
    WAITING.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set_waiting(w: Option<String>) {
    *WAITING.lock().unwrap_or_else(|p| p.into_inner()) = w;
}

/// Takes a passphrase from the agent: kept in [`KEY`] for the waiting boot. Refused when no
/// boot waits for one.
pub fn accept_passphrase(passphrase: &str) -> Result<(), AgentKeyError> {
    if waiting().is_none() {
        return Err(AgentKeyError::NotWaiting);
    }
    if passphrase.is_empty() {
        return Err(AgentKeyError::Empty);
    }
    write_private(Path::new(KEY), passphrase.as_bytes()).map_err(AgentKeyError::Write)
}

/// Waits until the agent left a passphrase in [`KEY`] or `deadline` passes.
fn await_passphrase(deadline: std::time::Instant, dev: &Path) -> Result<PathBuf, PoolError> {
    let key = PathBuf::from(KEY);
    loop {
        if key.is_file() {
            return Ok(key);
        }
        if std::time::Instant::now() >= deadline {
            set_waiting(None);
            return Err(PoolError::Failed(format!(
                "no passphrase for the encrypted store ({}) came through the agent in time; \
                 nothing was written to it",
                dev.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `cryptsetup open` of `dev` with `key`, discards allowed; `Ok(false)` for a wrong key
/// (cryptsetup's exit 2, "No key available with this passphrase").
fn open(dev: &str, key: &str, reaper: &Reaper) -> Result<bool, PoolError> {
    // --persistent records allow-discards in the LUKS2 header, so any later open (the
    // host's, another tool's) passes discards too.
    let argv = [
        CRYPTSETUP,
        "open",
        "--type",
        "luks2",
        "--key-file",
        key,
        "--allow-discards",
        "--persistent",
        dev,
        MAPPING,
    ];
    match run(reaper, &strings(&argv), CRYPTSETUP_TIMEOUT) {
        Ok(_) => Ok(true),
        Err(PoolError::Failed(e)) if e.contains("(exit 2)") => Ok(false),
        Err(PoolError::Failed(e)) => {
            Err(PoolError::Failed(format!("cannot open the encrypted store: {e}")))
        }
    }
}

/// Opens (formatting it first when new) the store on `dev` when the plan says so; returns
/// the device the filesystem lives on, whether a mapping was opened and whether it was just
/// formatted.
pub fn unlock_store(
    dev: &Path,
    key: &KeySource,
    reaper: &Reaper,
    step: &dyn Fn(&str),
) -> Result<(PathBuf, bool, bool), PoolError> {
    let found = classify(&read_first(dev)?);
    lock_dir();
    let dev_s = dev.display().to_string();
    let plan = plan(found, *key != KeySource::None, dev);
    let format = match plan {
        Plan::Plain => return Ok((dev.to_owned(), false, false)),
        Plan::Refuse(why) => return Err(PoolError::Failed(why)),
        Plan::Format => true,
        Plan::Open => false,
    };
    let deadline = match key {
        KeySource::Agent(wait) => {
            let _ = std::fs::remove_file(KEY);
            let what = format!(
                "the store ({dev_s}) is encrypted (LUKS2){}: waiting up to {} s for its \
                 passphrase through the agent (`lamina vm unlock NAME`, agent store.unlock)",
                if format { ", new" } else { "" },
                wait.as_secs()
            );
            step(&what);
            set_waiting(Some(what));
            Some(std::time::Instant::now() + *wait)
        }
        _ => None,
    };
    loop {
        let key_path = match (key, deadline) {
            (KeySource::File(p), _) => p.clone(),
            (_, Some(d)) => await_passphrase(d, dev)?,
            _ => return Err(PoolError::Failed("no key".into())),
        };
        let key_s = key_path.display().to_string();
        if format {
            let t = std::time::Instant::now();
            let argv = [CRYPTSETUP, "luksFormat", "--type", "luks2", "--batch-mode", "--key-file"];
            let mut argv = strings(&argv);
            argv.extend([key_s.clone(), dev_s.clone()]);
            run(reaper, &argv, CRYPTSETUP_TIMEOUT)?;
            step(&format!(
                "cryptsetup luksFormat {dev_s} (LUKS2) in {:.2}s",
                t.elapsed().as_secs_f64()
            ));
        }
        let t = std::time::Instant::now();
        if open(&dev_s, &key_s, reaper)? {
            set_waiting(None);
            let mapped = PathBuf::from("/dev/mapper").join(MAPPING);
            step(&format!(
                "{dev_s} opened as {} (dm-crypt, discards allowed) in {:.2}s",
                mapped.display(),
                t.elapsed().as_secs_f64()
            ));
            return Ok((mapped, true, format));
        }
        if deadline.is_none() {
            return Err(PoolError::Failed(format!(
                "cannot open the encrypted store ({dev_s}): the key does not open it \
                 (cryptsetup: no key available with this passphrase); nothing was written to it"
            )));
        }
        // A wrong passphrase from the agent: say so and wait for another.
        let _ = std::fs::remove_file(&key_path);
        step("the passphrase does not open the store; waiting for another");
    }
}

/// `cryptsetup close` of the store's mapping (after XFS is unmounted).
pub fn close(reaper: &Reaper) -> Result<String, PoolError> {
    run(reaper, &strings(&[CRYPTSETUP, "close", MAPPING]), Duration::from_secs(60))?;
    Ok(format!("{MAPPING} closed"))
}

/// Makes a LUKS2 header with the appliance's key for `volume.create {"encrypted": true}`
/// (cryptsetup runs under PID 1's reaper, which would otherwise take its exit status).
pub fn volume_header(size: u64, reaper: &Reaper) -> Result<thinpool::luks::Header, AgentKeyError> {
    let key = Path::new(KEY);
    if !key.is_file() {
        return Err(AgentKeyError::NoKey);
    }
    let opts = thinpool::luks::FormatOptions {
        cryptsetup: Some(PathBuf::from(CRYPTSETUP)),
        ..Default::default()
    };
    lock_dir();
    let (f, argv) = thinpool::luks::start(key, size, &opts)?;
    run(reaper, &argv, CRYPTSETUP_TIMEOUT)?;
    Ok(f.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_the_table() {
        let d = Path::new("/dev/ublkb0");
        let mut luks = vec![0u8; 4096];
        luks[..6].copy_from_slice(thinpool::luks::MAGIC);
        luks[7] = 2;
        assert_eq!(classify(&luks), Found::Luks2);
        assert_eq!(classify(&[0; 512]), Found::Zeroes);
        assert_eq!(classify(b"XFSB\0\0"), Found::Other);
        assert_eq!(plan(Found::Luks2, true, d), Plan::Open);
        assert_eq!(plan(Found::Zeroes, true, d), Plan::Format);
        assert_eq!(plan(Found::Zeroes, false, d), Plan::Plain);
        assert_eq!(plan(Found::Other, false, d), Plan::Plain);
        let Plan::Refuse(why) = plan(Found::Luks2, false, d) else { panic!() };
        assert!(why.contains("encrypted (LUKS2) and no key was given"), "{why}");
        let Plan::Refuse(why) = plan(Found::Other, true, d) else { panic!() };
        assert!(why.contains("is not encrypted"), "{why}");
    }

    #[test]
    fn key_is_unpacked_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let disk = d.path().join("key.tar");
        crate::test_support::ustar(&disk, 0o600, [(KEY_ENTRY, "secret")]);
        let out = d.path().join("luks/store.key");
        unpack(&disk, &out).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"secret");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), 0o600);
        assert_eq!(mode(out.parent().unwrap()), 0o700);
        let empty = d.path().join("empty.tar");
        tar::Builder::new(std::fs::File::create(&empty).unwrap()).finish().unwrap();
        assert!(matches!(unpack(&empty, &out), Err(KeyError::Missing { .. })));
        // An unreadable disk: the line names the disk, the chain adds why it failed.
        let absent = d.path().join("absent.tar");
        let e = unpack(&absent, &out).unwrap_err();
        assert_eq!(e.to_string(), format!("key disk {}", absent.display()));
        let line = units::chain(&e);
        assert!(line.starts_with(&format!("{e}: ")) && line.contains("No such file"), "{line}");
    }
}
