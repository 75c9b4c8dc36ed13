//! Boot steps behind a small kernel seam: early mounts, module loading, network bring-up.
//! The sequencing and error policy run in host tests against a recording fake.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::MountFlags;

use crate::config::Network;
use crate::netlink::codec::{add_ipv4, default_route, link_up};
use crate::netlink::{Netlink, NetlinkError};

/// The kernel calls the boot steps need.
pub trait Kernel {
    fn mount(&self, m: &MountSpec) -> std::io::Result<()>;
    fn load_module(&self, path: &Path, params: &str) -> std::io::Result<()>;
}

/// One early mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountSpec {
    pub source: &'static str,
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: &'static str,
}

const NSD: MountFlags = MountFlags::NOSUID.union(MountFlags::NODEV);

/// In order: devtmpfs is not auto-mounted by the Debian kernel (DEVTMPFS_MOUNT is off).
pub const EARLY_MOUNTS: &[MountSpec] = &[
    MountSpec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NSD.union(MountFlags::NOEXEC),
        data: "",
    },
    MountSpec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NSD.union(MountFlags::NOEXEC),
        data: "",
    },
    MountSpec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: "mode=0755",
    },
    MountSpec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: "newinstance,ptmxmode=0666,mode=0620",
    },
    // POSIX shared memory for containers (OCI runtimes bind it into their mount namespace).
    MountSpec {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NSD,
        data: "mode=1777",
    },
    // The unified cgroup hierarchy: crun puts each container in a cgroup of its own.
    MountSpec {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NSD.union(MountFlags::NOEXEC),
        data: "",
    },
    MountSpec { source: "tmpfs", target: "/run", fstype: "tmpfs", flags: NSD, data: "mode=0755" },
    MountSpec { source: "tmpfs", target: "/tmp", fstype: "tmpfs", flags: NSD, data: "mode=1777" },
];

/// The real kernel.
pub struct RealKernel;

impl Kernel for RealKernel {
    fn mount(&self, m: &MountSpec) -> std::io::Result<()> {
        std::fs::create_dir_all(m.target)?;
        let data = std::ffi::CString::new(m.data).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        rustix::mount::mount(m.source, m.target, m.fstype, m.flags, Some(data.as_c_str()))?;
        Ok(())
    }

    fn load_module(&self, path: &Path, params: &str) -> std::io::Result<()> {
        let f = std::fs::File::open(path)?;
        let params =
            std::ffi::CString::new(params).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        rustix::system::finit_module(&f, &params, 0)?;
        Ok(())
    }
}

/// Mounts [`EARLY_MOUNTS`]; returns the failures (boot goes on: a missing /dev/pts is not fatal,
/// missing /proc or /sys shows up in later steps with a clearer message).
pub fn early_mounts(k: &dyn Kernel) -> Vec<(String, std::io::Error)> {
    EARLY_MOUNTS.iter().filter_map(|m| k.mount(m).err().map(|e| (m.target.to_owned(), e))).collect()
}

/// One line of `/etc/lamina/modules.order`: `name path [params…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleLine {
    pub name: String,
    pub path: PathBuf,
    pub params: String,
}

pub fn parse_module_order(text: &str) -> Vec<ModuleLine> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            Some(ModuleLine {
                name: it.next()?.into(),
                path: it.next()?.into(),
                params: it.next().unwrap_or("").trim().into(),
            })
        })
        .collect()
}

/// Modules only the mount needs (XFS and its crc32c helper, overlay): loaded by a background
/// thread while the rest of boot (network, agent, pool daemon, nbd attach) goes on. xfs.ko is
/// by far the slowest module to load (about a second under TCG).
pub const MOUNT_MODULES: [&str; 3] = ["libcrc32c", "xfs", "overlay"];

/// Splits the image's order into (now, later) at the first module named in `names`: the order
/// lists dependencies first, so nothing before that point needs anything after it, while a
/// module after it may (the dm variant's dm_persistent_data needs libcrc32c), so the whole tail
/// loads later, in order.
pub fn split_modules(
    mut lines: Vec<ModuleLine>,
    names: &[&str],
) -> (Vec<ModuleLine>, Vec<ModuleLine>) {
    let at = lines.iter().position(|m| names.contains(&m.name.as_str())).unwrap_or(lines.len());
    let later = lines.split_off(at);
    (lines, later)
}

/// The reports of a batch of modules and when the batch was done.
type Loaded = (Vec<ModuleReport>, Duration);

/// Modules loading on a background thread.
pub struct Loading {
    /// The thread, or the reports when no thread could be made (loaded inline).
    state: Option<Result<std::thread::JoinHandle<Loaded>, Vec<ModuleReport>>>,
    started: Instant,
}

impl Loading {
    /// Starts loading `lines` in order on a thread (inline if no thread can be made).
    pub fn start(lines: Vec<ModuleLine>) -> Loading {
        let started = Instant::now();
        let mine = lines.clone();
        let spawned = std::thread::Builder::new()
            .name("modules".into())
            .spawn(move || (load_modules(&RealKernel, &mine), started.elapsed()));
        let state = spawned.map_err(|_| load_modules(&RealKernel, &lines));
        Loading { state: Some(state), started }
    }

    /// Modules already loaded (or none): `wait` returns `reports` at once.
    pub fn done(reports: Vec<ModuleReport>) -> Loading {
        Loading { state: Some(Err(reports)), started: Instant::now() }
    }

    /// Waits for the modules: their reports and when they were done, counted from `start`.
    /// Only the first call returns reports.
    pub fn wait(&mut self) -> (Vec<ModuleReport>, Duration) {
        match self.state.take() {
            Some(Ok(h)) => h.join().unwrap_or_else(|_| (Vec::new(), self.started.elapsed())),
            Some(Err(r)) => (r, Duration::ZERO),
            None => (Vec::new(), Duration::ZERO),
        }
    }
}

#[derive(Debug)]
pub enum ModuleOutcome {
    Loaded,
    /// EEXIST: already loaded (or built in).
    AlreadyLoaded,
    Failed(std::io::Error),
}

#[derive(Debug)]
pub struct ModuleReport {
    pub name: String,
    pub took: Duration,
    pub outcome: ModuleOutcome,
}

/// Loads modules in the image's order. A failure does not stop the others: the report says
/// which failed, and steps that need them fail with their own diagnosis.
pub fn load_modules(k: &dyn Kernel, lines: &[ModuleLine]) -> Vec<ModuleReport> {
    lines
        .iter()
        .map(|m| {
            let t = Instant::now();
            let outcome = match k.load_module(&m.path, &m.params) {
                Ok(()) => ModuleOutcome::Loaded,
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::EXIST.raw_os_error()) => {
                    ModuleOutcome::AlreadyLoaded
                }
                Err(e) => ModuleOutcome::Failed(e),
            };
            ModuleReport { name: m.name.clone(), took: t.elapsed(), outcome }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network: bad address {0:?} (want a.b.c.d/prefix)")]
    BadAddress(String),
    #[error("network: bad gateway {0:?}")]
    BadGateway(String),
    #[error("network: interface {0} did not appear within {1:?}")]
    NoInterface(String, Duration),
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), NetError> {
    let bad = || NetError::BadAddress(s.to_owned());
    let (a, p) = s.split_once('/').ok_or_else(bad)?;
    let addr = a.parse().map_err(|_| bad())?;
    let prefix: u8 = p.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((addr, prefix))
}

/// `ifindex` of an interface from sysfs.
pub fn ifindex(sys_class_net: &Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(sys_class_net.join(name).join("ifindex")).ok()?.trim().parse().ok()
}

/// `lo` up, then (if enabled) the interface up with its address and default route.
/// `find` returns the interface index, waiting for it as needed.
pub fn bring_up_network(
    nl: &mut dyn Netlink,
    cfg: &Network,
    find: &dyn Fn(&str, Duration) -> Option<u32>,
) -> Result<String, NetError> {
    let lo = find("lo", Duration::ZERO).unwrap_or(1);
    let seq = nl.next_seq();
    nl.request("lo up", &link_up(seq, lo))?;
    if !cfg.enabled {
        return Ok("lo up; network disabled".into());
    }
    let (addr, prefix) = parse_cidr(&cfg.address)?;
    let gw: Ipv4Addr =
        cfg.gateway.parse().map_err(|_| NetError::BadGateway(cfg.gateway.clone()))?;
    let wait = Duration::from_secs(cfg.wait_secs);
    let idx = find(&cfg.interface, wait)
        .ok_or_else(|| NetError::NoInterface(cfg.interface.clone(), wait))?;
    let seq = nl.next_seq();
    nl.request("link up", &link_up(seq, idx))?;
    let seq = nl.next_seq();
    nl.request("add address", &add_ipv4(seq, idx, addr, prefix))?;
    let seq = nl.next_seq();
    nl.request("add default route", &default_route(seq, idx, gw))?;
    Ok(format!("lo up; {} {addr}/{prefix} via {gw}", cfg.interface))
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::netlink::codec::{parse_msgs, RTM_NEWADDR, RTM_NEWLINK, RTM_NEWROUTE};
    use crate::netlink::socket::FakeNetlink;

    #[derive(Default)]
    struct Recorder {
        calls: RefCell<Vec<String>>,
        fail: Vec<(&'static str, i32)>,
    }

    impl Kernel for Recorder {
        fn mount(&self, m: &MountSpec) -> std::io::Result<()> {
            self.calls.borrow_mut().push(format!("mount {}", m.target));
            match self.fail.iter().find(|(n, _)| *n == m.target) {
                Some((_, e)) => Err(std::io::Error::from_raw_os_error(*e)),
                None => Ok(()),
            }
        }
        fn load_module(&self, path: &Path, params: &str) -> std::io::Result<()> {
            let name = path.file_stem().unwrap().to_str().unwrap();
            self.calls.borrow_mut().push(format!("load {name} {params}").trim_end().to_owned());
            match self.fail.iter().find(|(n, _)| *n == name) {
                Some((_, e)) => Err(std::io::Error::from_raw_os_error(*e)),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn early_mounts_in_order_and_failures_reported() {
        let k = Recorder { fail: vec![("/dev/pts", 19)], ..Default::default() };
        let failed = early_mounts(&k);
        assert_eq!(
            *k.calls.borrow(),
            [
                "mount /proc",
                "mount /sys",
                "mount /dev",
                "mount /dev/pts",
                "mount /dev/shm",
                "mount /sys/fs/cgroup",
                "mount /run",
                "mount /tmp"
            ]
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].0, "/dev/pts");
    }

    #[test]
    fn modules_load_in_order_eexist_is_fine() {
        let order = parse_module_order("# comment\nvirtio /lib/modules/r/virtio.ko\nnbd /lib/modules/r/nbd.ko nbds_max=2\n\nxfs /lib/modules/r/xfs.ko\n");
        assert_eq!(order.len(), 3);
        assert_eq!(order[1].params, "nbds_max=2");
        let k = Recorder { fail: vec![("virtio", 17), ("xfs", 8)], ..Default::default() };
        let r = load_modules(&k, &order);
        assert_eq!(*k.calls.borrow(), ["load virtio", "load nbd nbds_max=2", "load xfs"]);
        assert!(matches!(r[0].outcome, ModuleOutcome::AlreadyLoaded));
        assert!(matches!(r[1].outcome, ModuleOutcome::Loaded));
        assert!(matches!(&r[2].outcome, ModuleOutcome::Failed(e) if e.raw_os_error() == Some(8)));
    }

    #[test]
    fn mount_modules_and_what_follows_them_load_later_in_order() {
        let names = |v: &[ModuleLine]| v.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        let order = parse_module_order(
            "virtio a\nnbd b\nlibcrc32c c\nxfs e\noverlay f\ndm_mod g\ndm_persistent_data h\n",
        );
        let (now, later) = split_modules(order, &MOUNT_MODULES);
        assert_eq!(names(&now), ["virtio", "nbd"]);
        // dm_persistent_data needs libcrc32c: it must not race ahead of it.
        assert_eq!(names(&later), ["libcrc32c", "xfs", "overlay", "dm_mod", "dm_persistent_data"]);
        let (now, later) = split_modules(parse_module_order("virtio a\nnbd b\n"), &MOUNT_MODULES);
        assert_eq!((names(&now).len(), later.len()), (2, 0));
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("10.0.2.15/24").unwrap(), (Ipv4Addr::new(10, 0, 2, 15), 24));
        for bad in ["10.0.2.15", "10.0.2/24", "10.0.2.15/33", "x/1"] {
            let e = parse_cidr(bad).unwrap_err();
            assert!(matches!(&e, NetError::BadAddress(s) if s == bad), "{bad}: {e}");
        }
    }

    fn net() -> Network {
        Network {
            enabled: true,
            interface: "eth0".into(),
            address: "10.0.2.15/24".into(),
            gateway: "10.0.2.2".into(),
            wait_secs: 1,
        }
    }

    #[test]
    fn network_sends_link_addr_route() {
        let mut nl = FakeNetlink::new(vec![]);
        let s =
            bring_up_network(&mut nl, &net(), &|n, _| if n == "lo" { Some(1) } else { Some(2) })
                .unwrap();
        assert_eq!(s, "lo up; eth0 10.0.2.15/24 via 10.0.2.2");
        let types: Vec<u16> = nl.sent.iter().map(|m| parse_msgs(m).unwrap()[0].ty).collect();
        assert_eq!(types, [RTM_NEWLINK, RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE]);
    }

    #[test]
    fn network_errors() {
        let mut nl = FakeNetlink::new(vec![]);
        assert!(matches!(
            bring_up_network(&mut nl, &net(), &|n, _| (n == "lo").then_some(1)),
            Err(NetError::NoInterface(..))
        ));
        let mut nl = FakeNetlink::new(vec![Ok(vec![]), Err(1)]);
        let e = bring_up_network(&mut nl, &net(), &|_, _| Some(2)).unwrap_err();
        assert!(matches!(e, NetError::Netlink(NetlinkError::Kernel { errno: 1, .. })), "{e}");
        let mut nl = FakeNetlink::new(vec![]);
        let off = Network { enabled: false, ..net() };
        assert_eq!(
            bring_up_network(&mut nl, &off, &|_, _| None).unwrap(),
            "lo up; network disabled"
        );
        assert_eq!(nl.sent.len(), 1);
    }
}
