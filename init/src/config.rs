//! Runtime configuration: `/etc/lamina/config.toml` plus `lamina.KEY=VALUE` overrides from the
//! kernel command line. Pure: parsing and merging take strings.

use serde::{Deserialize, Serialize};

/// Where the image installs the config file.
pub const PATH: &str = "/etc/lamina/config.toml";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub debug: bool,
    /// How the store volume reaches the kernel (see [`crate::attach`]).
    #[serde(default)]
    pub attach: Attach,
    /// The container service and its layer store (false: storage only).
    #[serde(default = "yes")]
    pub containers: bool,
    pub network: Network,
    pub agent: Agent,
    pub shutdown: Shutdown,
    pub pool: Pool,
}

fn yes() -> bool {
    true
}

/// `attach = "ublk" | "nbd"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attach {
    /// `/dev/ublkbN`, served by the pool daemon's ublk queues.
    #[default]
    Ublk,
    /// `/dev/nbd0`, the kernel nbd client over socketpairs to the pool daemon.
    Nbd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub enabled: bool,
    pub interface: String,
    /// `a.b.c.d/prefix`.
    pub address: String,
    pub gateway: String,
    pub wait_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub port: String,
    pub max_exec_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shutdown {
    pub grace_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    pub enabled: bool,
    pub nbd_port: u16,
    /// Size of the base volume `store` (dm.basesize), e.g. "10G".
    pub basesize: String,
    /// dm.directlvm_device_force: overwrite disks that hold a foreign signature, and format
    /// a store volume that holds a foreign filesystem.
    pub force: bool,
    /// Kernel nbd connections (socketpairs) to the daemon.
    pub connections: u32,
    /// Seconds the kernel keeps I/O queued while the daemon restarts.
    pub dead_conn_timeout_secs: u64,
    /// The daemon's THINPOOL_LOG filter.
    pub log: String,
    /// dm.directlvm_device: the pool's disks, comma-separated (`/dev/vda,/dev/vdb`); empty:
    /// every virtio disk present at boot. Other disks stay untouched (e.g. a read-only disk
    /// carrying an image archive).
    #[serde(default)]
    pub devices: String,
    /// Seconds an encrypted store without a key disk waits for its passphrase through the
    /// agent (`store.unlock`); 0: no wait (see [`crate::luks`]).
    #[serde(default)]
    pub passphrase_wait_secs: u64,
}

impl Pool {
    /// The configured pool disks, or `None` when every virtio disk at boot is the pool's.
    pub fn device_list(&self) -> Option<Vec<std::path::PathBuf>> {
        let list: Vec<std::path::PathBuf> = self
            .devices
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .collect();
        (!list.is_empty()).then_some(list)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("config file: {0}")]
    Parse(String),
    #[error("kernel command line lamina.{key}={value}: {why}")]
    Override { key: String, value: String, why: String },
}

/// `lamina.KEY=VALUE` pairs from a kernel command line, in order.
pub fn cmdline_overrides(cmdline: &str) -> Vec<(String, String)> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("lamina."))
        // lamina.opt.KEY=VALUE are the store's options (crate::options), not config keys.
        .filter(|kv| !kv.starts_with("opt."))
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.to_owned(), "1".to_owned()), // bare flag: lamina.debug
        })
        .collect()
}

/// Parses the file and applies the overrides. An override's value is typed after the value it
/// replaces (bool accepts 1/0/true/false/yes/no/on/off); unknown keys are errors.
pub fn load(file: &str, overrides: &[(String, String)]) -> Result<Config, ConfigError> {
    let mut root: toml::Table =
        toml::from_str(file).map_err(|e| ConfigError::Parse(e.to_string()))?;
    for (key, value) in overrides {
        let err = |why: &str| ConfigError::Override {
            key: key.clone(),
            value: value.clone(),
            why: why.into(),
        };
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().ok_or_else(|| err("empty key"))?;
        let mut table = &mut root;
        for p in parts {
            table = table
                .get_mut(p)
                .and_then(|v| v.as_table_mut())
                .ok_or_else(|| err("no such table"))?;
        }
        let slot = table.get_mut(last).ok_or_else(|| err("no such key"))?;
        *slot = match slot {
            toml::Value::Boolean(_) => toml::Value::Boolean(match value.as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(err("expected a boolean")),
            }),
            toml::Value::Integer(_) => {
                toml::Value::Integer(value.parse().map_err(|_| err("expected an integer"))?)
            }
            toml::Value::String(_) => toml::Value::String(value.clone()),
            _ => return Err(err("only booleans, integers and strings can be overridden")),
        };
    }
    root.try_into().map_err(|e: toml::de::Error| ConfigError::Parse(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = include_str!("../config.toml");

    #[test]
    fn shipped_file_parses() {
        let c = load(FILE, &[]).unwrap();
        assert!(!c.debug);
        assert_eq!(c.network.address, "10.0.2.15/24");
        assert_eq!(c.agent.port, "org.lamina.agent.0");
        assert!(c.pool.enabled);
        assert_eq!(c.pool.basesize, "10G");
        assert!(!c.pool.force, "never overwrite foreign data by default");
        assert!(c.containers, "the container service is on by default");
        assert!(!load(FILE, &cmdline_overrides("lamina.containers=0")).unwrap().containers);
        let c =
            load(FILE, &cmdline_overrides("lamina.pool.force=1 lamina.pool.basesize=2G")).unwrap();
        assert!(c.pool.force);
        assert_eq!(c.pool.basesize, "2G");
    }

    #[test]
    fn pool_devices_default_to_every_disk_and_can_be_named() {
        let c = load(FILE, &[]).unwrap();
        assert_eq!(c.pool.device_list(), None);
        let c = load(FILE, &cmdline_overrides("lamina.pool.devices=/dev/vda,/dev/vdc")).unwrap();
        assert_eq!(
            c.pool.device_list(),
            Some(vec!["/dev/vda".into(), "/dev/vdc".into()]),
            "{:?}",
            c.pool.devices
        );
        let c = load(FILE, &cmdline_overrides("lamina.pool.devices=,")).unwrap();
        assert_eq!(c.pool.device_list(), None);
    }

    #[test]
    fn cmdline_overrides_apply_typed() {
        let o = cmdline_overrides("console=ttyS0 lamina.debug=1 quiet lamina.network.address=10.0.2.16/24 lamina.shutdown.grace_secs=3");
        assert_eq!(o.len(), 3);
        let c = load(FILE, &o).unwrap();
        assert!(c.debug);
        assert_eq!(c.network.address, "10.0.2.16/24");
        assert_eq!(c.shutdown.grace_secs, 3);
        assert_eq!(cmdline_overrides("lamina.debug"), [("debug".to_string(), "1".to_string())]);
        assert!(cmdline_overrides("lamina.opt.dm.thinp_percent=90").is_empty());
    }

    #[test]
    fn attach_defaults_to_ublk_and_nbd_is_one_override_away() {
        assert_eq!(load(FILE, &[]).unwrap().attach, Attach::Ublk);
        let c = load(FILE, &cmdline_overrides("quiet lamina.attach=nbd")).unwrap();
        assert_eq!(c.attach, Attach::Nbd);
        let bad = load(FILE, &cmdline_overrides("lamina.attach=iscsi")).unwrap_err();
        assert!(matches!(bad, ConfigError::Parse(ref m) if m.contains("iscsi")), "{bad:?}");
    }

    #[test]
    fn bad_overrides_are_errors() {
        for (k, v) in [
            ("nope", "1"),
            ("debug", "maybe"),
            ("shutdown.grace_secs", "x"),
            ("network", "1"),
            ("x.y", "1"),
        ] {
            let r = load(FILE, &[(k.into(), v.into())]);
            assert!(matches!(r, Err(ConfigError::Override { .. })), "{k}={v}: {r:?}");
        }
        assert!(matches!(load("debug = [", &[]), Err(ConfigError::Parse(_))));
        assert!(matches!(load("debug = true\n", &[]), Err(ConfigError::Parse(_))));
    }
}
