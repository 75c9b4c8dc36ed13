//! The store's options, as Docker names them: every `dm.*` option of the pool (Docker's
//! devicemapper options, validated by [`thinpool::vg::PoolConfig`]) and the layer store's own
//! (`driver`, `overlay2.size`: the default size limit of a container's writable layer).
//!
//! Two sources, later wins:
//! 1. a config disk: a virtio disk whose serial is [`CONFIG_DISK_SERIAL`] (`lamina vm run
//!    --config FILE` attaches one), holding the file's text NUL-padded to whole sectors. The
//!    text has the shape of Docker's `daemon.json`:
//!    `{"storage-driver": "overlay2", "storage-opts": ["dm.thinp_percent=90", "overlay2.size=2G"]}`;
//! 2. `lamina.opt.KEY=VALUE` on the kernel command line (`lamina vm run --opt KEY=VALUE`).
//!
//! Pure except [`read_config_disk`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The virtio serial that marks the config disk; the pool never takes that disk.
pub const CONFIG_DISK_SERIAL: &str = "lamina-config";
/// Largest config file read from the disk.
const MAX_FILE: u64 = 1 << 20;

/// A storage driver of the layer store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Overlay2,
    Vfs,
}

/// The store's options after both sources are merged and checked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StoreOptions {
    /// `dm.*` options, in the order given (each `dm.key=value`), for `thinpool init --opt`.
    pub dm: Vec<String>,
    pub driver: Driver,
    /// `overlay2.size`: bytes; `None`: no limit.
    pub overlay2_size: Option<u64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OptionsError {
    #[error("config disk {path}: {why}")]
    File { path: String, why: String },
    #[error("storage option {key}={value}: {why}")]
    Option { key: String, value: String, why: String },
}

/// The `daemon.json` subset the config disk carries.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonJson {
    #[serde(rename = "storage-driver", default)]
    storage_driver: Option<String>,
    #[serde(rename = "storage-opts", default)]
    storage_opts: Vec<String>,
}

impl StoreOptions {
    /// The value given for a `dm.*` key.
    pub fn dm_value(&self, key: &str) -> Option<&str> {
        self.dm.iter().rev().find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
    }

    /// `thinpool init` arguments for the pool: `--opt dm.basesize=<basesize>` (unless given)
    /// and every `dm.*` option; `--force` when `force` or dm.directlvm_device_force says so.
    pub fn init_args(&self, basesize: &str, force: bool) -> Vec<String> {
        let mut v = Vec::new();
        if self.dm_value("dm.basesize").is_none() {
            v.extend(["--opt".to_owned(), format!("dm.basesize={basesize}")]);
        }
        for o in &self.dm {
            v.extend(["--opt".to_owned(), o.clone()]);
        }
        let forced = self
            .dm_value("dm.directlvm_device_force")
            .is_some_and(|f| matches!(f, "1" | "true" | "yes" | "on"));
        if force || forced {
            v.push("--force".into());
        }
        v
    }
}

/// `lamina.opt.KEY=VALUE` pairs of a kernel command line, in order.
pub fn cmdline_opts(cmdline: &str) -> Vec<(String, String)> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("lamina.opt."))
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), String::new()),
        })
        .collect()
}

/// The config file's pairs (`storage-driver` as `driver`, then each `storage-opts` entry).
pub fn parse_file(path: &str, text: &str) -> Result<Vec<(String, String)>, OptionsError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let f: DaemonJson = serde_json::from_str(text)
        .map_err(|e| OptionsError::File { path: path.into(), why: e.to_string() })?;
    let mut out = Vec::new();
    if let Some(d) = f.storage_driver {
        out.push(("driver".to_owned(), d));
    }
    for o in f.storage_opts {
        let (k, v) = o.split_once('=').ok_or_else(|| OptionsError::File {
            path: path.into(),
            why: format!("storage-opts entry {o:?} is not KEY=VALUE"),
        })?;
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(out)
}

/// Merges the pairs (later wins per key) and checks every value; `dm.*` through the pool's
/// own option parser, so a key or range it refuses is refused here, before anything starts.
pub fn merge(pairs: &[(String, String)]) -> Result<StoreOptions, OptionsError> {
    let bad = |k: &str, v: &str, why: String| OptionsError::Option {
        key: k.into(),
        value: v.into(),
        why,
    };
    let mut o = StoreOptions::default();
    let mut dm: Vec<(String, String)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "driver" | "storage-driver" => {
                o.driver = match v.as_str() {
                    "overlay2" | "overlay" => Driver::Overlay2,
                    "vfs" => Driver::Vfs,
                    _ => return Err(bad(k, v, "the drivers are overlay2 and vfs".into())),
                }
            }
            "overlay2.size" => {
                let n = units::parse_size(v)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(k, v, "expected a size such as 2G".into()))?;
                o.overlay2_size = Some(n);
            }
            key if key.starts_with("dm.") => {
                dm.retain(|(k2, _)| k2 != key);
                dm.push((key.to_owned(), v.clone()));
            }
            _ => {
                return Err(bad(
                    k,
                    v,
                    "unknown option (dm.*, driver and overlay2.size are known)".into(),
                ))
            }
        }
    }
    let mut check = thinpool::vg::PoolConfig::default();
    for (k, v) in &dm {
        check.set(k, v).map_err(|e| bad(k, v, units::chain(&e)))?;
    }
    check.validate().map_err(|e| bad("dm.*", "", units::chain(&e)))?;
    o.dm = dm.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    Ok(o)
}

/// The config disk, if one is attached: `/dev/vdX` whose `serial` is [`CONFIG_DISK_SERIAL`].
pub fn config_disk(sys_block: &Path) -> Option<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vd"))
        .collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let serial = std::fs::read_to_string(sys_block.join(&n).join("serial")).ok()?;
        (serial.trim() == CONFIG_DISK_SERIAL).then(|| PathBuf::from("/dev").join(n))
    })
}

/// The file on the config disk: its text up to the first NUL.
pub fn read_config_disk(dev: &Path) -> Result<String, OptionsError> {
    use std::io::Read;
    let err = |why: String| OptionsError::File { path: dev.display().to_string(), why };
    let mut buf = Vec::new();
    std::fs::File::open(dev)
        .and_then(|f| f.take(MAX_FILE).read_to_end(&mut buf))
        .map_err(|e| err(e.to_string()))?;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).map_err(|_| err("not UTF-8 text".into()))
}

/// Everything together: the config disk (when present), then the command line.
pub fn load(sys_block: &Path, cmdline: &str) -> Result<StoreOptions, OptionsError> {
    let mut pairs = Vec::new();
    if let Some(dev) = config_disk(sys_block) {
        let text = read_config_disk(&dev)?;
        pairs.extend(parse_file(&dev.display().to_string(), &text)?);
    }
    pairs.extend(cmdline_opts(cmdline));
    merge(&pairs)
}

/// With `dm.*` options given, runs `thinpool init` over the pool's disks before the daemon
/// starts: it lays the group down on a first boot, updates the runtime options of an existing
/// one, and refuses a changed setup value (dm.thinp_percent, dm.thinp_metapercent, the
/// autoextend policy, dm.blocksize) with Docker's "changing direct-lvm config is not
/// supported", writing nothing. Without options nothing runs (one process start fewer per
/// boot). Returns `thinpool init`'s report.
pub fn check_pool(
    cfg: &crate::config::Config,
    opts: &StoreOptions,
    reaper: &crate::reaper::Reaper,
    devs: &str,
) -> Result<Option<String>, crate::pool::PoolError> {
    use crate::pool::{run, strings, STATE_DIR, THINPOOL};
    if opts.dm.is_empty() {
        return Ok(None);
    }
    let mut argv = strings(&[THINPOOL, "init", STATE_DIR, "--device", devs]);
    argv.extend(opts.init_args(&cfg.pool.basesize, cfg.pool.force));
    let out = run(reaper, &argv, std::time::Duration::from_secs(120))?;
    Ok(Some(out.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn cmdline_opts_are_picked_out() {
        let o = cmdline_opts(
            "console=ttyS0 lamina.debug=1 lamina.opt.dm.thinp_autoextend_threshold=60 \
             lamina.opt.overlay2.size=2G",
        );
        assert_eq!(o, kv(&[("dm.thinp_autoextend_threshold", "60"), ("overlay2.size", "2G")]));
    }

    #[test]
    fn file_then_cmdline_later_wins() {
        let file = parse_file(
            "/dev/vdb",
            r#"{"storage-driver": "vfs", "storage-opts": ["dm.thinp_percent=90", "overlay2.size=1G"]}"#,
        )
        .unwrap();
        let mut pairs = file;
        pairs.extend(cmdline_opts("lamina.opt.dm.thinp_percent=80 lamina.opt.driver=overlay2"));
        let o = merge(&pairs).unwrap();
        assert_eq!(o.dm, ["dm.thinp_percent=80"]);
        assert_eq!(o.driver, Driver::Overlay2);
        assert_eq!(o.overlay2_size, Some(1 << 30));
        assert_eq!(merge(&[]).unwrap(), StoreOptions::default());
        assert!(parse_file("x", "\n").unwrap().is_empty());
    }

    #[test]
    fn bad_options_name_the_key() {
        for (k, v, why) in [
            ("dm.thinp_percent", "100", "dm.thinp_percent"),
            ("dm.nope", "1", "unknown option"),
            ("driver", "devicemapper", "overlay2 and vfs"),
            ("overlay2.size", "big", "a size"),
            ("zfs.fsname", "x", "unknown option"),
        ] {
            let e = merge(&kv(&[(k, v)])).unwrap_err();
            assert!(
                matches!(&e, OptionsError::Option { why: w, .. } if w.contains(why)),
                "{k}={v}: {e}"
            );
        }
        let e =
            merge(&kv(&[("dm.thinp_percent", "95"), ("dm.thinp_metapercent", "10")])).unwrap_err();
        assert!(e.to_string().contains("must not exceed 100"), "{e}");
        assert!(matches!(parse_file("d", "{"), Err(OptionsError::File { .. })));
        assert!(matches!(
            parse_file("d", r#"{"storage-opts": ["dm.x"]}"#),
            Err(OptionsError::File { why, .. }) if why.contains("KEY=VALUE")
        ));
        assert!(matches!(
            parse_file("d", r#"{"debug": true}"#),
            Err(OptionsError::File { why, .. }) if why.contains("unknown field")
        ));
    }

    #[test]
    fn init_args_carry_every_dm_option() {
        let o = merge(&kv(&[("dm.thinp_autoextend_threshold", "60")])).unwrap();
        assert_eq!(
            o.init_args("10G", false),
            ["--opt", "dm.basesize=10G", "--opt", "dm.thinp_autoextend_threshold=60"]
        );
        let o =
            merge(&kv(&[("dm.basesize", "2G"), ("dm.directlvm_device_force", "true")])).unwrap();
        assert_eq!(o.dm_value("dm.basesize"), Some("2G"));
        assert_eq!(
            o.init_args("10G", false),
            ["--opt", "dm.basesize=2G", "--opt", "dm.directlvm_device_force=true", "--force"]
        );
    }

    #[test]
    fn config_disk_is_found_by_serial_and_read_up_to_nul() {
        let d = tempfile::tempdir().unwrap();
        for (n, s) in [("vda", ""), ("vdb", "lamina-config\n")] {
            std::fs::create_dir(d.path().join(n)).unwrap();
            std::fs::write(d.path().join(n).join("serial"), s).unwrap();
        }
        assert_eq!(config_disk(d.path()), Some(PathBuf::from("/dev/vdb")));
        let f = d.path().join("disk");
        let mut bytes = br#"{"storage-opts": ["dm.basesize=2G"]}"#.to_vec();
        bytes.resize(4096, 0);
        std::fs::write(&f, &bytes).unwrap();
        let text = read_config_disk(&f).unwrap();
        assert_eq!(merge(&parse_file("f", &text).unwrap()).unwrap().dm, ["dm.basesize=2G"]);
    }
}
