//! The boot's step list against a recording fake system: order, policy, modes.

use std::cell::{Cell, RefCell};

use super::*;
use crate::boot::MountSpec;
use crate::containers::error::Kind;
use crate::steps::{self, Outcome, Record};

/// Records every call; fails the calls named in `fail`.
struct Fake {
    cmdline: String,
    fail: Vec<&'static str>,
    /// How many times the daemon fails to start before it starts.
    daemon_fails: Cell<u32>,
    contents: Contents,
    volumes: RefCell<Vec<(String, Bytes)>>,
    calls: RefCell<Vec<String>>,
    lines: RefCell<Vec<String>>,
}

impl Default for Fake {
    fn default() -> Self {
        Fake {
            cmdline: "console=ttyS0".into(),
            fail: Vec::new(),
            daemon_fails: Cell::new(0),
            contents: Contents::Xfs,
            volumes: RefCell::new(vec![(pool::STORE.into(), Bytes::GIB * 10)]),
            calls: RefCell::default(),
            lines: RefCell::default(),
        }
    }
}

impl Fake {
    /// Records `call`; true when it is to fail.
    fn call(&self, call: impl Into<String>) -> bool {
        let call = call.into();
        let failing = self.fail.iter().any(|f| call == *f);
        self.calls.borrow_mut().push(call);
        failing
    }

    fn called(&self, name: &str) -> bool {
        self.calls.borrow().iter().any(|c| c == name)
    }

    /// The calls that reach the pool, the daemon and the store, in order.
    fn storage_calls(&self) -> Vec<String> {
        let skip = ["read ", "mount /", "load ", "say"];
        let calls = self.calls.borrow();
        calls.iter().filter(|c| !skip.iter().any(|s| c.starts_with(s))).cloned().collect()
    }

    fn last_line(&self) -> String {
        self.lines.borrow().last().cloned().unwrap_or_default()
    }

    fn said(&self, text: &str) -> bool {
        self.lines.borrow().iter().any(|l| l.contains(text))
    }
}

fn pool_err(what: &str) -> PoolError {
    pool::fail(what)
}

impl Kernel for Fake {
    fn mount(&self, m: &MountSpec) -> std::io::Result<()> {
        self.call(format!("mount {}", m.target));
        Ok(())
    }
    fn load_module(&self, path: &Path, _: &str) -> std::io::Result<()> {
        self.call(format!("load {}", path.display()));
        Ok(())
    }
}

impl System for Fake {
    fn say(&self, line: &str) {
        self.lines.borrow_mut().push(line.to_owned());
    }
    fn kernel(&self) -> &dyn Kernel {
        self
    }
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.call(format!("read {path}"));
        Ok(match path {
            "/proc/cmdline" => self.cmdline.clone(),
            config::PATH => DEFAULT_CONFIG.into(),
            _ => "virtio_net /m/virtio_net.ko\nxfs /m/xfs.ko\n".into(),
        })
    }
    fn cad_off(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn load_later(&self, lines: Vec<ModuleLine>) -> Loading {
        self.call("load_later");
        let names = lines.iter().map(|m| m.name.clone());
        let reports = names.map(|name| ModuleReport {
            name,
            took: Duration::ZERO,
            outcome: ModuleOutcome::Loaded,
        });
        Loading::done(reports.collect())
    }
    fn network(&self, cfg: &config::Network) -> Result<String, NetError> {
        if self.call("network") {
            return Err(NetError::NoInterface(cfg.interface.clone(), Duration::from_secs(5)));
        }
        Ok("lo up; eth0 10.0.2.15/24 via 10.0.2.2".into())
    }
    fn power_button(&self) -> Result<(PathBuf, File), BootError> {
        if self.call("power_button") {
            return Err(BootError::NoPowerButton);
        }
        Ok(("/dev/input/event0".into(), File::open("/dev/null").unwrap()))
    }
    fn start_agent(
        &self,
        _: &config::Agent,
        _: &Arc<Mutex<Shared>>,
        _: &Arc<Reaper>,
    ) -> Result<(PathBuf, Duration, OwnedFd), BootError> {
        self.call("start_agent");
        let (rx, _tx) = rustix::pipe::pipe().unwrap();
        Ok(("/dev/vport1p1".into(), Duration::from_millis(3), rx))
    }
    fn store_options(&self, _: &str, _: bool) -> Result<StoreOptions, OptionsError> {
        if self.call("store_options") {
            let bad = [("driver".to_owned(), "devicemapper".to_owned())];
            return Err(crate::options::merge(&bad).unwrap_err());
        }
        Ok(StoreOptions::default())
    }
    fn start_store(
        &self,
        _: &StoreOptions,
        _: &Mutex<Shared>,
        _: &Arc<Reaper>,
    ) -> Result<String, StoreError> {
        if self.call("start_store") {
            return Err(StoreError::new(Kind::Unavailable, "no data port"));
        }
        Ok("store Overlay2 at /var/lib/lamina/overlay2".into())
    }
    fn pool_disks(&self, _: &config::Pool) -> Result<Vec<PathBuf>, WaitError> {
        self.call("pool_disks");
        Ok(vec!["/dev/vda".into()])
    }
    fn key_disk(&self) -> Result<Option<PathBuf>, PoolError> {
        self.call("key_disk");
        Ok(None)
    }
    fn tls_disk(&self) -> Result<Option<(PathBuf, Vec<String>)>, PoolError> {
        self.call("tls_disk");
        Ok(None)
    }
    fn check_pool(
        &self,
        _: &Config,
        _: &StoreOptions,
        _: &Reaper,
        _: &str,
    ) -> Result<Option<String>, PoolError> {
        self.call("check_pool");
        Ok(None)
    }
    fn helper(&self, _: &Reaper, argv: &[String], _: Duration) -> Result<String, PoolError> {
        let name = Path::new(&argv[0]).file_name().unwrap().to_string_lossy().into_owned();
        let call = format!("{name} {}", argv[1]);
        if self.call(call.clone()) {
            return Err(pool_err(&format!("`{call}` failed (exit 1)")));
        }
        if argv[1] == "create" {
            self.volumes.borrow_mut().push((pool::STORE.into(), Bytes::GIB * 10));
        }
        Ok(if argv[1] == "init" { "created the pool".into() } else { "[]".into() })
    }
    fn start_daemon(&self, _: &Reaper, _: &Daemon) -> Result<Started, PoolError> {
        self.call("start_daemon");
        if self.daemon_fails.get() > 0 {
            self.daemon_fails.set(self.daemon_fails.get() - 1);
            return Err(pool_err("thinpool serve exited at start"));
        }
        Ok(Started { pid: 42, exit: std::sync::mpsc::channel().1, kernel: Vec::new() })
    }
    fn volumes(&self) -> Result<Vec<(String, Bytes)>, PoolError> {
        self.call("volumes");
        Ok(self.volumes.borrow().clone())
    }
    fn create_volume(&self, name: &str, size: Bytes) -> Result<(), PoolError> {
        self.call("create_volume");
        self.volumes.borrow_mut().push((name.into(), size));
        Ok(())
    }
    fn attach_nbd(
        &self,
        _: &Config,
        _: Bytes,
        _: &[OwnedFd],
        _: &dyn Fn(&str),
    ) -> Result<PathBuf, PoolError> {
        self.call("attach_nbd");
        Ok("/dev/nbd0".into())
    }
    fn attach_ublk(&self, volume: &str) -> Result<PathBuf, PoolError> {
        if self.call("attach_ublk") {
            return Err(pool_err(&format!("ublk attach {volume}: no /dev/ublk-control")));
        }
        Ok("/dev/ublkb0".into())
    }
    fn supervise(
        &self,
        _: Arc<Daemon>,
        _: Arc<Reaper>,
        _: Started,
    ) -> Result<JoinHandle<()>, PoolError> {
        self.call("supervise");
        Ok(std::thread::spawn(|| {}))
    }
    fn wait_block_device(&self, name: &str) -> Result<(), PoolError> {
        self.call(format!("wait_block_device {name}"));
        Ok(())
    }
    fn unlock_store(
        &self,
        dev: &Path,
        _: &KeySource,
        _: &Reaper,
        _: &dyn Fn(&str),
    ) -> Result<(PathBuf, bool, bool), PoolError> {
        self.call("unlock_store");
        Ok((dev.to_owned(), false, false))
    }
    fn probe(&self, _: &Path) -> std::io::Result<Contents> {
        self.call("probe");
        Ok(self.contents)
    }
    fn mkdir(&self, _: &Path) -> std::io::Result<()> {
        Ok(())
    }
    fn mount_xfs(&self, _: &Path, prjquota: bool) -> std::io::Result<()> {
        self.call(if prjquota { "mount_xfs prjquota" } else { "mount_xfs" });
        Ok(())
    }
}

/// Boots against `fake` up to READY/DEGRADED.
fn boot(fake: &Fake) -> (Record, Vec<String>, bool) {
    let mut b = Boot::new(fake);
    let record = steps::run(&super::steps(), &mut b);
    finish(&mut b, Instant::now());
    (record, b.problems.clone(), b.pool.is_up())
}

const ALL: [&str; 19] = [
    "early mounts",
    "signals",
    "config",
    "modules",
    "network",
    "power button",
    "agent",
    "store options",
    "pool disks",
    "store key",
    "volume group",
    "daemon",
    "store volume",
    "attach",
    "supervisor",
    "unlock",
    "filesystem",
    "mount XFS",
    "containers",
];

#[test]
fn the_boot_runs_its_steps_in_order_to_ready() {
    let fake = Fake::default();
    let (record, problems, up) = boot(&fake);
    let names: Vec<_> = record.steps.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ALL);
    assert!(record.steps.iter().all(|(_, o)| *o == Outcome::Done), "{record:?}");
    assert!(problems.is_empty() && up, "{problems:?}");
    assert_eq!(
        fake.storage_calls(),
        [
            "load_later",
            "network",
            "power_button",
            "start_agent",
            "store_options",
            "pool_disks",
            "key_disk",
            "check_pool",
            "tls_disk",
            "start_daemon",
            "volumes",
            "attach_ublk",
            "supervise",
            "wait_block_device ublkb0",
            "unlock_store",
            "probe",
            "mount_xfs prjquota",
            "start_store",
        ]
    );
    // Each step on the console with its time; the pool's own lines as the VM tests read them.
    for name in ALL {
        assert!(fake.said(&format!("boot: {name} (")), "{name}: {:?}", fake.lines.borrow());
    }
    assert!(fake.said("pool: found the pool on /dev/vda [+"));
    assert!(fake.said("pool: /dev/ublkb0 holds XFS"));
    let ready = fake.last_line();
    assert!(ready.starts_with("LAMINA READY: modules 2/2 in "), "{ready}");
    assert!(ready.contains("pool: store on /dev/ublkb0 (10 GiB) at /var/lib/lamina"), "{ready}");
    assert!(ready.contains("store Overlay2") && ready.contains("agent /dev/vport1p1"), "{ready}");
}

#[test]
fn a_fatal_failure_stops_the_boot_with_its_error() {
    let fake = Fake { fail: vec!["attach_ublk"], ..Fake::default() };
    let (record, problems, up) = boot(&fake);
    assert_eq!(record.stopped_at, Some("attach"));
    assert_eq!(record.steps.last(), Some(&("attach", Outcome::Failed(Policy::Fatal))));
    assert_eq!(problems, ["pool bring-up: ublk attach store: no /dev/ublk-control"]);
    for later in ["supervise", "unlock_store", "probe", "mount_xfs prjquota", "start_store"] {
        assert!(!fake.called(later), "{later} ran after the failed attach");
    }
    assert!(!up);
    assert!(fake.said("boot: attach failed ("));
    assert!(fake.said("problem: pool bring-up: ublk attach store"));
    let last = fake.last_line();
    assert!(last.starts_with("LAMINA DEGRADED: 1 problem(s); modules"), "{last}");
    assert!(last.contains("pool: not up"), "{last}");
}

#[test]
fn bad_store_options_stop_before_the_pool() {
    let fake = Fake { fail: vec!["store_options"], ..Fake::default() };
    let (record, problems, _) = boot(&fake);
    assert_eq!(record.stopped_at, Some("store options"));
    assert_eq!(problems.len(), 1);
    assert!(problems[0].ends_with("; the pool was not brought up"), "{problems:?}");
    assert!(problems[0].contains("driver"), "{problems:?}");
    assert!(!fake.called("pool_disks"));
}

#[test]
fn a_reported_failure_is_a_problem_and_the_boot_goes_on() {
    let fake = Fake { fail: vec!["network", "start_store"], ..Fake::default() };
    let (record, problems, up) = boot(&fake);
    assert_eq!(record.stopped_at, None);
    assert_eq!(record.steps[4], ("network", Outcome::Failed(Policy::Report)));
    assert_eq!(record.steps[18], ("containers", Outcome::Failed(Policy::Report)));
    assert_eq!(problems, ["network: interface eth0 did not appear within 5s", "no data port"]);
    // Everything after the network still ran, and the pool is up.
    assert!(fake.called("start_agent") && fake.called("mount_xfs prjquota") && up);
    assert!(fake.said("boot: network failed (") && fake.said("the boot goes on"));
    let last = fake.last_line();
    assert!(last.starts_with("LAMINA DEGRADED: 2 problem(s)"), "{last}");
    assert!(last.contains("pool: store on /dev/ublkb0"), "{last}");
}

#[test]
fn storage_only_skips_the_containers() {
    let fake = Fake { cmdline: "console=ttyS0 lamina.containers=0".into(), ..Fake::default() };
    let (record, problems, up) = boot(&fake);
    assert!(problems.is_empty() && up, "{problems:?}");
    assert_eq!(record.steps[18], ("containers", Outcome::Skipped("containers off")));
    assert!(!fake.called("start_store"));
    assert!(fake.said("boot: containers skipped (containers off)"));
    let ready = fake.last_line();
    assert!(ready.starts_with("LAMINA READY") && ready.contains("; containers off; pool: store"));
}

#[test]
fn with_the_pool_off_its_steps_are_skipped() {
    let fake = Fake { cmdline: "lamina.pool.enabled=0".into(), ..Fake::default() };
    let (record, problems, up) = boot(&fake);
    assert!(problems.is_empty() && !up, "{problems:?}");
    let skipped: Vec<_> =
        record.steps.iter().filter(|(_, o)| matches!(o, Outcome::Skipped(_))).collect();
    assert_eq!(skipped.len(), 11, "{record:?}");
    assert_eq!(record.steps[8], ("pool disks", Outcome::Skipped("pool disabled")));
    assert_eq!(record.steps[18], ("containers", Outcome::Skipped("the pool is not up")));
    assert!(!fake.called("pool_disks") && !fake.called("start_store"));
    assert!(fake.last_line().starts_with("LAMINA READY"));
}

#[test]
fn first_boot_lays_the_pool_and_the_filesystem_down() {
    let fake = Fake {
        fail: vec!["thinpool list"],
        daemon_fails: Cell::new(1),
        contents: Contents::Empty,
        volumes: RefCell::default(),
        ..Fake::default()
    };
    let (record, problems, up) = boot(&fake);
    assert!(problems.is_empty() && up && record.stopped_at.is_none(), "{problems:?}");
    let calls = fake.storage_calls();
    let from = calls.iter().position(|c| c == "start_daemon").unwrap();
    assert_eq!(
        calls[from..from + 6],
        [
            "start_daemon",
            "thinpool list",
            "thinpool init",
            "thinpool create",
            "start_daemon",
            "volumes"
        ]
    );
    assert!(calls.contains(&"mkfs.xfs -q".to_owned()), "{calls:?}");
    assert!(fake.said("pool: no pool on /dev/vda"));
    assert!(fake.said("pool: created volume store (10G)"));
    assert!(fake.said("pool: mkfs.xfs /dev/ublkb0 in"));
}

#[test]
fn a_foreign_filesystem_is_not_formatted() {
    let fake = Fake { contents: Contents::Other, ..Fake::default() };
    let (record, problems, _) = boot(&fake);
    assert_eq!(record.stopped_at, Some("filesystem"));
    assert!(problems[0].contains("holds something that is not XFS; refusing"), "{problems:?}");
    assert!(!fake.called("mkfs.xfs -q") && !fake.called("mount_xfs prjquota"));
}
