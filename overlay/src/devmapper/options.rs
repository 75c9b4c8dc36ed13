//! Docker's devicemapper storage options (`--storage-opt dm.*`), with Docker's names,
//! defaults and parsing (moby `daemon/graphdriver/devmapper/deviceset.go` before its removal
//! in 25.0, and `docs/reference/commandline/dockerd.md` of that time).

use crate::error::{Error, ErrorKind, Result};

/// The filesystem made on the base device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Xfs,
    Ext4,
}

impl Fs {
    pub fn name(self) -> &'static str {
        match self {
            Fs::Xfs => "xfs",
            Fs::Ext4 => "ext4",
        }
    }
}

/// The devicemapper driver's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmOptions {
    /// `dm.basesize`: size of the base device, hence of every image and container (10 GiB).
    pub basesize: u64,
    /// `dm.fs`: xfs (Docker's default when mkfs.xfs is there) or ext4.
    pub fs: Fs,
    /// `dm.mkfsarg`: extra mkfs arguments, repeatable.
    pub mkfsargs: Vec<String>,
    /// `dm.mountopt`: extra mount options, comma-separated.
    pub mountopt: String,
    /// `dm.use_deferred_removal`: a busy device is removed when its last user closes it.
    pub deferred_removal: bool,
    /// `dm.use_deferred_deletion`: a device that cannot be deleted now is deleted later.
    pub deferred_deletion: bool,
    /// `dm.min_free_space`: percent of the pool's data space that must stay free for a new
    /// device to be created (10 %).
    pub min_free_space_percent: u32,
}

impl Default for DmOptions {
    fn default() -> Self {
        DmOptions {
            basesize: 10 << 30,
            fs: Fs::Xfs,
            mkfsargs: Vec::new(),
            mountopt: String::new(),
            deferred_removal: false,
            deferred_deletion: false,
            min_free_space_percent: 10,
        }
    }
}

fn bad(opt: &str, why: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Invalid, format!("devmapper: invalid option {opt:?}: {why}"))
}

fn parse_bool(opt: &str, v: &str) -> Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Ok(true),
        "0" | "f" | "false" => Ok(false),
        _ => Err(bad(opt, "expected true or false")),
    }
}

impl DmOptions {
    /// Parse `key=value` options. Docker's devicemapper options this driver has no use for
    /// (pool devices, loop files, udev, blkdiscard: the pool daemon owns the pool) are
    /// refused by name rather than ignored.
    pub fn parse<S: AsRef<str>>(opts: &[S]) -> Result<DmOptions> {
        let mut o = DmOptions::default();
        for opt in opts {
            let opt = opt.as_ref();
            let (k, v) = opt.split_once('=').ok_or_else(|| bad(opt, "expected key=value"))?;
            match k.trim().to_ascii_lowercase().as_str() {
                "dm.basesize" => {
                    // Docker's `units.RAMInBytes` grammar (binary units), lamina's one.
                    let size = units::parse_size(v).map_err(|e| bad(opt, e))?;
                    // The base filesystem needs room for its own metadata.
                    if size < 16 << 20 {
                        return Err(bad(opt, "the base device must be at least 16 MiB"));
                    }
                    o.basesize = size;
                }
                "dm.fs" => {
                    o.fs = match v {
                        "xfs" => Fs::Xfs,
                        "ext4" => Fs::Ext4,
                        _ => return Err(bad(opt, "Unsupported filesystem; use xfs or ext4")),
                    }
                }
                "dm.mkfsarg" => o.mkfsargs.push(v.to_string()),
                "dm.mountopt" => {
                    if !o.mountopt.is_empty() {
                        o.mountopt.push(',');
                    }
                    o.mountopt.push_str(v);
                }
                "dm.use_deferred_removal" => o.deferred_removal = parse_bool(opt, v)?,
                "dm.use_deferred_deletion" => o.deferred_deletion = parse_bool(opt, v)?,
                "dm.min_free_space" => {
                    let pct = v.strip_suffix('%').unwrap_or(v);
                    let n: u32 = pct.parse().map_err(|_| bad(opt, "expected a percentage"))?;
                    if n >= 100 {
                        return Err(bad(opt, "Invalid value for dm.min_free_space: must be < 100"));
                    }
                    o.min_free_space_percent = n;
                }
                other => {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "devmapper: unknown or unsupported option {other:?} (the pool daemon \
                             owns the pool; supported: dm.basesize, dm.fs, dm.mkfsarg, \
                             dm.mountopt, dm.use_deferred_removal, dm.use_deferred_deletion, \
                             dm.min_free_space)"
                        ),
                    ))
                }
            }
        }
        Ok(o)
    }

    /// Mount options of a layer or container filesystem: the user's, plus `nouuid` on XFS
    /// (every snapshot of the base has the base's UUID, which XFS would refuse twice), as
    /// Docker does.
    pub fn mount_data(&self, read_only: bool) -> String {
        let mut v: Vec<&str> = Vec::new();
        if self.fs == Fs::Xfs {
            v.push("nouuid");
        }
        if !self.mountopt.is_empty() {
            v.push(&self.mountopt);
        }
        let _ = read_only;
        v.join(",")
    }

    /// The mkfs command line for `dev`.
    pub fn mkfs_argv(&self, dev: &str) -> Vec<String> {
        let mut v: Vec<String> = match self.fs {
            Fs::Xfs => vec!["mkfs.xfs".into(), "-q".into(), "-f".into()],
            // Docker's ext4 flags: no discard pass over the fresh thin device, inode tables and
            // journal written at once rather than by a background thread later.
            Fs::Ext4 => vec![
                "mkfs.ext4".into(),
                "-q".into(),
                "-E".into(),
                "nodiscard,lazy_itable_init=0,lazy_journal_init=0".into(),
            ],
        };
        v.extend(self.mkfsargs.iter().cloned());
        v.push(dev.into());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_dockers() {
        let o = DmOptions::parse::<&str>(&[]).unwrap();
        assert_eq!(o.basesize, 10 << 30);
        assert_eq!(o.fs, Fs::Xfs);
        assert_eq!(o.min_free_space_percent, 10);
        assert!(!o.deferred_removal && !o.deferred_deletion);
    }

    #[test]
    fn options_parse_like_docker() {
        let o = DmOptions::parse(&[
            "dm.basesize=20G",
            "dm.fs=ext4",
            "dm.mkfsarg=-O ^has_journal",
            "dm.mountopt=noatime",
            "dm.mountopt=discard",
            "dm.use_deferred_removal=true",
            "dm.use_deferred_deletion=1",
            "dm.min_free_space=5%",
        ])
        .unwrap();
        assert_eq!(o.basesize, 20 << 30);
        assert_eq!(o.fs, Fs::Ext4);
        assert_eq!(o.mkfsargs, vec!["-O ^has_journal"]);
        assert_eq!(o.mount_data(false), "noatime,discard");
        assert!(o.deferred_removal && o.deferred_deletion);
        assert_eq!(o.min_free_space_percent, 5);
        assert_eq!(DmOptions::default().mount_data(false), "nouuid");
        let e = DmOptions::parse(&["dm.fs=btrfs"]).unwrap_err();
        assert!(e.to_string().contains("Unsupported filesystem"), "{e}");
        let e = DmOptions::parse(&["dm.min_free_space=100%"]).unwrap_err();
        assert!(e.to_string().contains("must be < 100"), "{e}");
        let e = DmOptions::parse(&["dm.thinpooldev=/dev/mapper/x"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unsupported);
        let e = DmOptions::parse(&["dm.basesize=x"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        assert!(e.to_string().contains("\"dm.basesize=x\": size \"x\": unknown unit"), "{e}");
        assert_eq!(DmOptions::parse(&["dm.basesize=1.5GiB"]).unwrap().basesize, 3 << 29);
    }
}
