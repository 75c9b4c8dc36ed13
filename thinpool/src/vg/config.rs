//! The pool's configuration, named and defaulted as Docker's devicemapper `dm.*` options, plus
//! lamina's out-of-space behaviour. Parsed from `--opt dm.key=value` flags or a TOML file:
//!
//! ```toml
//! [dm]
//! thinp_percent = 95
//! blocksize = "512K"
//! min_free_space = "10%"
//! [lamina]
//! error_if_no_space = false
//! no_space_timeout = "60s"
//! ```
//!
//! The setup values (those fixed when the group is laid out: percentages, autoextend policy and
//! block size) are compared on re-initialisation; the rest are runtime options that may change.

use super::error::{Result, VgError, VgErrorKind};
use crate::units::Sectors;
use serde::{Deserialize, Serialize};

const KIB: u64 = 1024;
const GIB: u64 = 1024 * 1024 * 1024;

/// Every option a lamina pool understands. Sizes are in bytes, percentages 0..=100.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// `dm.thinp_percent`: share of the group given to the data region at creation.
    pub thinp_percent: u32,
    /// `dm.thinp_metapercent`: share of the group given to the metadata region at creation.
    pub thinp_metapercent: u32,
    /// `dm.thinp_autoextend_threshold`: usage % at which a region grows (100 = never).
    pub autoextend_threshold: u32,
    /// `dm.thinp_autoextend_percent`: growth step, % of the current region size.
    pub autoextend_percent: u32,
    /// `dm.blocksize`: pool data block (chunk) size in bytes.
    pub blocksize: u64,
    /// `dm.basesize`: size of the base thin volume in bytes.
    pub basesize: u64,
    /// `dm.min_free_space`: % of pool blocks that must stay free for a new thin volume.
    pub min_free_space: u32,
    /// `dm.use_deferred_removal`.
    pub use_deferred_removal: bool,
    /// `dm.use_deferred_deletion`.
    pub use_deferred_deletion: bool,
    /// `dm.directlvm_device_force`: lay the group over devices that hold other signatures.
    pub directlvm_device_force: bool,
    /// lamina: fail writes at once when the data region is full instead of queueing them.
    pub error_if_no_space: bool,
    /// lamina: how long full-pool writes queue before failing, in seconds (0 = forever).
    pub no_space_timeout: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            thinp_percent: 95,
            thinp_metapercent: 1,
            autoextend_threshold: 80,
            autoextend_percent: 20,
            blocksize: 64 * KIB,
            basesize: 10 * GIB,
            min_free_space: 10,
            use_deferred_removal: true,
            use_deferred_deletion: true,
            directlvm_device_force: false,
            error_if_no_space: false,
            no_space_timeout: 60,
        }
    }
}

fn invalid(key: &str, value: &str, why: &str) -> VgError {
    VgError::new(VgErrorKind::InvalidConfig, format!("{key}={value}: {why}"))
}

impl PoolConfig {
    /// The data block size in sectors, as the thin-pool table and superblock carry it.
    pub fn block_sectors(&self) -> Sectors {
        Sectors(self.blocksize / Sectors::SIZE)
    }

    /// True when `other` has the same setup values (the ones fixed at creation).
    pub fn same_setup(&self, other: &PoolConfig) -> bool {
        self.thinp_percent == other.thinp_percent
            && self.thinp_metapercent == other.thinp_metapercent
            && self.autoextend_threshold == other.autoextend_threshold
            && self.autoextend_percent == other.autoextend_percent
            && self.blocksize == other.blocksize
    }

    /// Applies `dm.key=value` options (the `dm.` prefix is optional; lamina's own options may
    /// be written `lamina.key=value`) over the defaults and validates the result.
    pub fn from_opts<'a>(opts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        Self::default().with_opts(opts)
    }

    /// Applies `dm.key=value` options over `self` (a file's settings, say) and validates the
    /// result.
    pub fn with_opts<'a>(mut self, opts: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        for opt in opts {
            let (key, value) =
                opt.split_once('=').ok_or_else(|| invalid(opt, "", "expected dm.key=value"))?;
            self.set(key.trim(), value.trim())?;
        }
        self.validate()?;
        Ok(self)
    }

    /// The whole configuration as the TOML [`PoolConfig::from_toml`] reads (Docker's option
    /// names in `[dm]`, lamina's in `[lamina]`), for a file pool's `config.toml`.
    pub fn to_toml(&self) -> String {
        format!(
            "[dm]\n\
             thinp_percent = {}\n\
             thinp_metapercent = {}\n\
             thinp_autoextend_threshold = {}\n\
             thinp_autoextend_percent = {}\n\
             blocksize = {}\n\
             basesize = {}\n\
             min_free_space = \"{}%\"\n\
             use_deferred_removal = {}\n\
             use_deferred_deletion = {}\n\
             directlvm_device_force = {}\n\
             [lamina]\n\
             error_if_no_space = {}\n\
             no_space_timeout = \"{}s\"\n",
            self.thinp_percent,
            self.thinp_metapercent,
            self.autoextend_threshold,
            self.autoextend_percent,
            self.blocksize,
            self.basesize,
            self.min_free_space,
            self.use_deferred_removal,
            self.use_deferred_deletion,
            self.directlvm_device_force,
            self.error_if_no_space,
            self.no_space_timeout,
        )
    }

    /// Parses a TOML file's text: `[dm]` and `[lamina]` tables (or top-level keys, or quoted
    /// `"dm.key"` keys) whose values are numbers, booleans or strings such as "512K" and "10%".
    pub fn from_toml(text: &str) -> Result<Self> {
        let table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| invalid("toml", "", e.message()))?;
        let mut config = Self::default();
        for (key, value) in &table {
            match value {
                toml::Value::Table(inner) if key == "dm" || key == "lamina" => {
                    for (k, v) in inner {
                        config.set(&format!("{key}.{k}"), &toml_scalar(k, v)?)?;
                    }
                }
                v => config.set(key, &toml_scalar(key, v)?)?,
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Sets one option from its text form, without cross-field validation.
    pub fn set(&mut self, key: &str, value: &str) -> Result<()> {
        let name = key.strip_prefix("dm.").or_else(|| key.strip_prefix("lamina.")).unwrap_or(key);
        match name {
            "thinp_percent" => self.thinp_percent = parse_percent(key, value, false)?,
            "thinp_metapercent" => self.thinp_metapercent = parse_percent(key, value, false)?,
            "thinp_autoextend_threshold" => {
                self.autoextend_threshold = parse_percent(key, value, false)?
            }
            "thinp_autoextend_percent" => {
                self.autoextend_percent = parse_percent(key, value, false)?
            }
            "blocksize" => self.blocksize = parse_size(key, value)?,
            "basesize" => self.basesize = parse_size(key, value)?,
            // Docker insists on the '%' here; accept a bare number too, it is unambiguous.
            "min_free_space" => self.min_free_space = parse_percent(key, value, true)?,
            "use_deferred_removal" => self.use_deferred_removal = parse_bool(key, value)?,
            "use_deferred_deletion" => self.use_deferred_deletion = parse_bool(key, value)?,
            "directlvm_device_force" => self.directlvm_device_force = parse_bool(key, value)?,
            "error_if_no_space" => self.error_if_no_space = parse_bool(key, value)?,
            "no_space_timeout" => self.no_space_timeout = parse_seconds(key, value)?,
            _ => return Err(invalid(key, value, "unknown option")),
        }
        Ok(())
    }

    /// Checks ranges and combinations, with Docker's rules where Docker has one.
    pub fn validate(&self) -> Result<()> {
        let pct = |key: &str, v: u32, lo: u32, hi: u32| {
            if v < lo || v > hi {
                Err(invalid(key, &v.to_string(), &format!("must be between {lo} and {hi}")))
            } else {
                Ok(())
            }
        };
        pct("dm.thinp_percent", self.thinp_percent, 1, 99)?;
        pct("dm.thinp_metapercent", self.thinp_metapercent, 1, 99)?;
        if self.thinp_percent + self.thinp_metapercent > 100 {
            return Err(invalid(
                "dm.thinp_percent+dm.thinp_metapercent",
                &(self.thinp_percent + self.thinp_metapercent).to_string(),
                "must not exceed 100",
            ));
        }
        pct("dm.thinp_autoextend_threshold", self.autoextend_threshold, 0, 100)?;
        pct("dm.thinp_autoextend_percent", self.autoextend_percent, 0, 100)?;
        pct("dm.min_free_space", self.min_free_space, 0, 99)?;
        if self.autoextend_threshold < 100 && self.autoextend_percent == 0 {
            return Err(invalid(
                "dm.thinp_autoextend_percent",
                "0",
                "must be positive when autoextend is enabled (threshold below 100)",
            ));
        }
        let b = self.blocksize;
        if !(64 * KIB..=GIB).contains(&b) || !b.is_multiple_of(64 * KIB) {
            return Err(invalid(
                "dm.blocksize",
                &b.to_string(),
                "must be a multiple of 64K between 64K and 1G",
            ));
        }
        if self.basesize == 0 || !self.basesize.is_multiple_of(Sectors::SIZE) {
            return Err(invalid(
                "dm.basesize",
                &self.basesize.to_string(),
                "must be a positive multiple of 512 bytes",
            ));
        }
        Ok(())
    }
}

fn toml_scalar(key: &str, value: &toml::Value) -> Result<String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        other => Err(invalid(key, &other.to_string(), "expected a string, integer or boolean")),
    }
}

fn parse_percent(key: &str, value: &str, allow_sign: bool) -> Result<u32> {
    let digits = if allow_sign { value.strip_suffix('%').unwrap_or(value) } else { value };
    let v: u32 =
        digits.trim().parse().map_err(|_| invalid(key, value, "expected a whole percentage"))?;
    if v > 100 {
        return Err(invalid(key, value, "a percentage cannot exceed 100"));
    }
    Ok(v)
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(invalid(key, value, "expected true or false")),
    }
}

/// A dm.* size, in the one grammar every lamina binary reads (Docker's `RAMInBytes`).
fn parse_size(key: &str, value: &str) -> Result<u64> {
    units::parse_size(value).map_err(|e| invalid(key, value, &e.to_string()))
}

fn parse_seconds(key: &str, value: &str) -> Result<u64> {
    let v = value.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix('s') {
        (n, 1)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600)
    } else {
        (v, 1)
    };
    let n: u64 =
        num.trim().parse().map_err(|_| invalid(key, value, "expected seconds such as 60s"))?;
    n.checked_mul(mult).ok_or_else(|| invalid(key, value, "duration overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dockers() {
        let c = PoolConfig::default();
        c.validate().unwrap();
        assert_eq!((c.thinp_percent, c.thinp_metapercent), (95, 1));
        assert_eq!((c.autoextend_threshold, c.autoextend_percent), (80, 20));
        assert_eq!(c.block_sectors(), Sectors(128));
        assert_eq!(c.basesize, 10 << 30);
        assert_eq!(c.min_free_space, 10);
        assert!(c.use_deferred_removal && c.use_deferred_deletion && !c.directlvm_device_force);
        assert!(!c.error_if_no_space);
        assert_eq!(c.no_space_timeout, 60);
    }

    #[test]
    fn opts_parse_docker_spellings() {
        let c = PoolConfig::from_opts([
            "dm.thinp_percent=90",
            "dm.thinp_metapercent=2",
            "dm.blocksize=512K",
            "dm.basesize=20G",
            "dm.min_free_space=5%",
            "dm.use_deferred_removal=false",
            "dm.directlvm_device_force=true",
            "lamina.error_if_no_space=true",
            "no_space_timeout=2m",
        ])
        .unwrap();
        assert_eq!((c.thinp_percent, c.thinp_metapercent), (90, 2));
        assert_eq!(c.blocksize, 512 * 1024);
        assert_eq!(c.block_sectors(), Sectors(1024));
        assert_eq!(c.basesize, 20 << 30);
        assert_eq!(c.min_free_space, 5);
        assert!(!c.use_deferred_removal && c.directlvm_device_force && c.error_if_no_space);
        assert_eq!(c.no_space_timeout, 120);
    }

    #[test]
    fn invalid_values_are_refused_with_the_key_named() {
        let cases: &[(&[&str], &str)] = &[
            (&["dm.thinp_percent=100"], "dm.thinp_percent"),
            (&["dm.thinp_percent=0"], "dm.thinp_percent"),
            (&["dm.thinp_percent=95", "dm.thinp_metapercent=10"], "must not exceed 100"),
            (&["dm.thinp_autoextend_threshold=101"], "cannot exceed 100"),
            (&["dm.thinp_autoextend_percent=0"], "must be positive"),
            (&["dm.blocksize=32K"], "dm.blocksize"),
            (&["dm.blocksize=96K"], "multiple of 64K"),
            (&["dm.blocksize=2G"], "dm.blocksize"),
            (&["dm.blocksize=12Q"], "unknown unit"),
            (&["dm.basesize=0"], "dm.basesize"),
            (&["dm.min_free_space=100%"], "dm.min_free_space"),
            (&["dm.use_deferred_removal=maybe"], "expected true or false"),
            (&["dm.nonsense=1"], "unknown option"),
            (&["dm.thinp_percent"], "expected dm.key=value"),
        ];
        for (opts, needle) in cases {
            let err = PoolConfig::from_opts(opts.iter().copied()).unwrap_err();
            assert_eq!(err.kind(), VgErrorKind::InvalidConfig, "{opts:?}");
            assert!(err.to_string().contains(needle), "{opts:?}: {err}");
        }
        // 100 disables autoextend; percent 0 is then fine.
        PoolConfig::from_opts([
            "dm.thinp_autoextend_threshold=100",
            "dm.thinp_autoextend_percent=0",
        ])
        .unwrap();
    }

    #[test]
    fn toml_file_parses_tables_and_quoted_keys() {
        let c = PoolConfig::from_toml(
            "[dm]\nthinp_percent = 90\nblocksize = \"512K\"\nmin_free_space = \"20%\"\n\
             use_deferred_deletion = false\n[lamina]\nerror_if_no_space = true\nno_space_timeout = 0\n",
        )
        .unwrap();
        assert_eq!(c.thinp_percent, 90);
        assert_eq!(c.blocksize, 512 << 10);
        assert_eq!(c.min_free_space, 20);
        assert!(!c.use_deferred_deletion && c.error_if_no_space);
        assert_eq!(c.no_space_timeout, 0);
        let q = PoolConfig::from_toml("\"dm.basesize\" = \"1G\"\n").unwrap();
        assert_eq!(q.basesize, 1 << 30);
        let e = PoolConfig::from_toml("[dm]\nblocksize = [1]\n").unwrap_err();
        assert_eq!(e.kind(), VgErrorKind::InvalidConfig);
        assert!(
            e.to_string().contains("blocksize=[1]: expected a string, integer or boolean"),
            "{e}"
        );
        let e = PoolConfig::from_toml("not toml =").unwrap_err();
        assert_eq!(e.kind(), VgErrorKind::InvalidConfig);
        assert!(e.to_string().contains("toml=: "), "{e}");
    }

    #[test]
    fn sizes_follow_binary_units() {
        for (s, v) in [("64K", 64 << 10), ("64k", 64 << 10), ("64KiB", 64 << 10), ("1gb", 1 << 30)]
        {
            assert_eq!(parse_size("k", s).unwrap(), v, "{s}");
        }
        let e = parse_size("k", "99999999999P").unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        let e = parse_size("k", "").unwrap_err().to_string();
        assert!(e.contains("empty size"), "{e}");
    }

    #[test]
    fn same_setup_ignores_runtime_options() {
        let a = PoolConfig::default();
        let b = PoolConfig { min_free_space: 0, error_if_no_space: true, ..a.clone() };
        assert!(a.same_setup(&b));
        let c = PoolConfig { thinp_percent: 90, ..a.clone() };
        assert!(!a.same_setup(&c));
        let d = PoolConfig { blocksize: 512 << 10, ..a.clone() };
        assert!(!a.same_setup(&d));
    }

    #[test]
    fn to_toml_reads_back_as_the_same_config() {
        let c = PoolConfig::default();
        assert_eq!(PoolConfig::from_toml(&c.to_toml()).unwrap(), c);
        let c = PoolConfig::from_opts([
            "dm.thinp_percent=90",
            "dm.thinp_autoextend_threshold=100",
            "dm.blocksize=512K",
            "dm.basesize=3G",
            "dm.min_free_space=0%",
            "dm.use_deferred_removal=false",
            "lamina.error_if_no_space=true",
            "lamina.no_space_timeout=2m",
        ])
        .unwrap();
        assert_eq!(PoolConfig::from_toml(&c.to_toml()).unwrap(), c);
        assert!(c.to_toml().contains("blocksize = 524288\n"), "{}", c.to_toml());
    }
}
