//! init's boot as a list of named steps ([`steps`]), each a function over the boot's state
//! ([`Boot`]) that reaches the kernel, the pool daemon and the filesystem only through one
//! seam ([`System`]; the real one is [`real::RealSystem`], a recording fake drives the list in
//! this module's tests). [`crate::steps::run`] runs the list; [`finish`] then prints
//! `LAMINA READY` or `LAMINA DEGRADED` with every problem.
//!
//! | step | policy | runs when |
//! |------|--------|-----------|
//! | early mounts, signals, config, modules, network, power button, agent | report | always |
//! | store options | fatal | always |
//! | pool disks … mount XFS ([`crate::pool::steps`]) | fatal | `pool.enabled` |
//! | containers | report | `containers` and the pool is up |
//!
//! A reported failure leaves its part out (no network, no agent…) and the boot goes on; a
//! fatal one ends the list: the pool is not brought up and the containers need its XFS.
//! Either way PID 1 goes on to its loop, so the console, agent and power button stay usable.

pub(crate) mod real;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::agent::Shared;
use crate::boot::{self, Kernel, Loading, ModuleLine, ModuleOutcome, ModuleReport, NetError};
use crate::config::{self, Config};
use crate::containers::error::StoreError;
use crate::luks::KeySource;
use crate::options::{OptionsError, StoreOptions};
use crate::pool::{self, Contents, Daemon, Pool, PoolError, Started};
use crate::reaper::Reaper;
use crate::steps::{always, Context, Policy, Step};
use crate::wait::WaitError;
use crate::{DEFAULT_CONFIG, DEGRADED, READY};
use units::Bytes;

/// Why a boot step failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("signalfd: {0} (signals cannot be handled)")]
    Signalfd(nix::Error),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("no ACPI power button (button/evdev modules?)")]
    NoPowerButton,
    #[error("power button {}", path.display())]
    PowerButton { path: PathBuf, source: std::io::Error },
    #[error("{what}")]
    Io { what: &'static str, source: std::io::Error },
    #[error(transparent)]
    Wait(#[from] WaitError),
    /// A bad option leaves the pool alone rather than bringing it up with other settings.
    #[error("{0}; the pool was not brought up")]
    Options(OptionsError),
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything the boot steps do to the world outside PID 1's memory.
pub(crate) trait System {
    /// One console line (`lamina: …`).
    fn say(&self, line: &str);
    /// Mounts and module loading.
    fn kernel(&self) -> &dyn Kernel;
    fn read(&self, path: &str) -> std::io::Result<String>;
    /// Ctrl-Alt-Del as SIGINT to PID 1 instead of an immediate reboot.
    fn cad_off(&self) -> std::io::Result<()>;
    /// Starts loading `lines` in the background.
    fn load_later(&self, lines: Vec<ModuleLine>) -> Loading;
    fn network(&self, cfg: &config::Network) -> Result<String, NetError>;
    fn power_button(&self) -> Result<(PathBuf, File), BootError>;
    /// Finds the agent's port and serves it on a thread: the port, how long it took to
    /// appear, and the read end of the agent's wake pipe.
    fn start_agent(
        &self,
        cfg: &config::Agent,
        shared: &Arc<Mutex<Shared>>,
        reaper: &Arc<Reaper>,
    ) -> Result<(PathBuf, Duration, OwnedFd), BootError>;
    fn store_options(
        &self,
        cmdline: &str,
        pool_enabled: bool,
    ) -> Result<StoreOptions, OptionsError>;
    /// Opens the layer store on the mounted XFS and serves its data channel.
    fn start_store(
        &self,
        opts: &StoreOptions,
        shared: &Mutex<Shared>,
        reaper: &Arc<Reaper>,
    ) -> Result<String, StoreError>;

    // The pool (see [`crate::pool::steps`]).
    fn pool_disks(&self, cfg: &config::Pool) -> Result<Vec<PathBuf>, WaitError>;
    /// Unpacks the store's key from a key disk; the disk, or `None` without one.
    fn key_disk(&self) -> Result<Option<PathBuf>, PoolError>;
    /// Unpacks the NBD TLS disk: the disk and the daemon's TLS arguments.
    fn tls_disk(&self) -> Result<Option<(PathBuf, Vec<String>)>, PoolError>;
    /// `thinpool init` against the group when `dm.*` options are given.
    fn check_pool(
        &self,
        cfg: &Config,
        opts: &StoreOptions,
        reaper: &Reaper,
        devs: &str,
    ) -> Result<Option<String>, PoolError>;
    /// Runs a helper to completion: its stdout.
    fn helper(
        &self,
        reaper: &Reaper,
        argv: &[String],
        timeout: Duration,
    ) -> Result<String, PoolError>;
    fn start_daemon(&self, reaper: &Reaper, d: &Daemon) -> Result<Started, PoolError>;
    /// The daemon's volumes: (name, size in bytes).
    fn volumes(&self) -> Result<Vec<(String, Bytes)>, PoolError>;
    fn create_volume(&self, name: &str, size: Bytes) -> Result<(), PoolError>;
    fn attach_nbd(
        &self,
        cfg: &Config,
        size: Bytes,
        kernel: &[OwnedFd],
        step: &dyn Fn(&str),
    ) -> Result<PathBuf, PoolError>;
    fn attach_ublk(&self, volume: &str) -> Result<PathBuf, PoolError>;
    /// Starts the thread that restarts the daemon whenever it exits.
    fn supervise(
        &self,
        d: Arc<Daemon>,
        reaper: Arc<Reaper>,
        started: Started,
    ) -> Result<JoinHandle<()>, PoolError>;
    fn wait_block_device(&self, name: &str) -> Result<(), PoolError>;
    /// Opens an encrypted store ([`crate::luks::unlock_store`]).
    fn unlock_store(
        &self,
        dev: &Path,
        key: &KeySource,
        reaper: &Reaper,
        step: &dyn Fn(&str),
    ) -> Result<(PathBuf, bool, bool), PoolError>;
    fn probe(&self, dev: &Path) -> std::io::Result<Contents>;
    fn mkdir(&self, path: &Path) -> std::io::Result<()>;
    /// Mounts the store's XFS at [`pool::MOUNT`], with project quotas or without.
    fn mount_xfs(&self, dev: &Path, prjquota: bool) -> std::io::Result<()>;
}

/// The module loading: the batch loaded in line, the one loading in the background.
#[derive(Default)]
pub(crate) struct Modules {
    pub reports: Vec<ModuleReport>,
    pub took: Duration,
    pub later_names: Vec<String>,
    pub loading: Option<Loading>,
    pub background: Option<(Vec<ModuleReport>, Duration)>,
}

impl Modules {
    /// Waits for the background modules (XFS and overlay; once).
    pub fn join(&mut self) {
        if self.background.is_none() {
            self.background = self.loading.as_mut().map(Loading::wait);
        }
    }
}

/// What the pool steps hand each other.
#[derive(Default)]
pub(crate) struct BringUp {
    /// When the pool's bring-up began (its console lines say the time since).
    pub t0: Option<Instant>,
    /// The pool's disks, comma-separated.
    pub devs: String,
    pub key: Option<KeySource>,
    pub daemon: Option<Arc<Daemon>>,
    pub started: Option<Started>,
    /// The store's device: the attached one, then the one the filesystem lives on.
    pub dev: Option<PathBuf>,
    /// A store just formatted LUKS2.
    pub fresh: bool,
}

/// The boot's state, from the first step to READY.
pub(crate) struct Boot<'s> {
    pub sys: &'s dyn System,
    pub cmdline: String,
    pub cfg: Config,
    pub opts: Option<StoreOptions>,
    pub problems: Vec<String>,
    /// What came up, for the READY line.
    pub parts: Vec<String>,
    /// A signalfd that could not be made (reported by the `signals` step).
    pub signalfd_error: Option<nix::Error>,
    pub button: Option<File>,
    pub wake_rx: Option<OwnedFd>,
    pub reaper: Arc<Reaper>,
    pub shared: Arc<Mutex<Shared>>,
    pub modules: Modules,
    pub pool: Pool,
    pub up: BringUp,
    /// A fatal step failed.
    pub stopped: bool,
}

impl<'s> Boot<'s> {
    pub fn new(sys: &'s dyn System) -> Self {
        let reaper = Arc::new(Reaper::new());
        Boot {
            sys,
            cmdline: String::new(),
            cfg: builtin_config(),
            opts: None,
            problems: Vec::new(),
            parts: Vec::new(),
            signalfd_error: None,
            button: None,
            wake_rx: None,
            pool: Pool::new(reaper.clone()),
            reaper,
            shared: Arc::default(),
            modules: Modules::default(),
            up: BringUp::default(),
            stopped: false,
        }
    }

    /// A line of the pool's bring-up, with the time since it began.
    pub fn pool_say(&self, msg: &str) {
        let t = self.up.t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        self.sys.say(&format!("pool: {msg} [+{t:.2}s]"));
    }
}

impl Context<BootError> for Boot<'_> {
    fn say(&mut self, line: String) {
        self.sys.say(&line);
    }

    fn failed(&mut self, _step: &'static str, policy: Policy, error: BootError) {
        self.problems.push(units::chain(&error));
        if policy == Policy::Fatal {
            self.stopped = true;
        }
    }
}

fn builtin_config() -> Config {
    config::load(DEFAULT_CONFIG, &[]).unwrap_or_else(|e| panic!("built-in config is broken: {e}"))
}

/// Skips a pool step when the pool is off.
fn pool_on(b: &Boot) -> Option<&'static str> {
    (!b.cfg.pool.enabled).then_some("pool disabled")
}

fn containers_on(b: &Boot) -> Option<&'static str> {
    if !b.cfg.containers {
        Some("containers off")
    } else if !b.pool.is_up() {
        Some("the pool is not up")
    } else {
        None
    }
}

/// The boot, in order.
pub(crate) fn steps<'s>() -> Vec<Step<Boot<'s>, BootError>> {
    use pool::steps as p;
    let report = |name, run| Step { name, policy: Policy::Report, skip: always, run };
    let pool = |name, run| Step { name, policy: Policy::Fatal, skip: pool_on, run };
    vec![
        report("early mounts", early_mounts),
        report("signals", signals),
        report("config", read_config),
        report("modules", modules),
        report("network", network),
        report("power button", power_button),
        report("agent", agent),
        Step { name: "store options", policy: Policy::Fatal, skip: always, run: store_options },
        pool("pool disks", p::disks),
        pool("store key", p::store_key),
        pool("volume group", p::volume_group),
        pool("daemon", p::daemon),
        pool("store volume", p::store_volume),
        pool("attach", p::attach),
        pool("supervisor", p::supervisor),
        pool("unlock", p::unlock),
        pool("filesystem", p::filesystem),
        pool("mount XFS", p::mount),
        Step { name: "containers", policy: Policy::Report, skip: containers_on, run: containers },
    ]
}

/// Mounts that fail are problems; the boot goes on (a missing /dev/pts is not fatal; missing
/// /proc or /sys shows up in later steps with a clearer message).
fn early_mounts(b: &mut Boot) -> Result<(), BootError> {
    for (target, e) in boot::early_mounts(b.sys.kernel()) {
        b.problems.push(format!("mount {target}: {e}"));
    }
    Ok(())
}

fn signals(b: &mut Boot) -> Result<(), BootError> {
    if let Err(e) = b.sys.cad_off() {
        b.problems.push(format!("reboot(CAD_OFF): {e}"));
    }
    b.signalfd_error.take().map_or(Ok(()), |e| Err(BootError::Signalfd(e)))
}

/// The config file with the kernel command line's overrides; the built-in defaults when
/// either is broken (a problem, not a failure: the boot goes on with known settings).
fn read_config(b: &mut Boot) -> Result<(), BootError> {
    b.cmdline = b.sys.read("/proc/cmdline").unwrap_or_default();
    let overrides = config::cmdline_overrides(&b.cmdline);
    let file = b.sys.read(config::PATH).unwrap_or_else(|e| {
        b.problems.push(format!("{}: {e}; using built-in defaults", config::PATH));
        DEFAULT_CONFIG.to_owned()
    });
    b.cfg = config::load(&file, &overrides).unwrap_or_else(|e| {
        b.problems.push(format!("config: {e}; using built-in defaults"));
        builtin_config()
    });
    {
        let mut s = b.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.debug = b.cfg.debug;
        s.max_exec_secs = b.cfg.agent.max_exec_secs;
    }
    b.sys.say(&format!(
        "lamina-init {} starting (debug={})",
        env!("CARGO_PKG_VERSION"),
        b.cfg.debug
    ));
    Ok(())
}

/// Modules in the image's order; the mount's modules load in the background meanwhile (the
/// pool waits for them right before it mounts).
fn modules(b: &mut Boot) -> Result<(), BootError> {
    let order = b.sys.read("/etc/lamina/modules.order").unwrap_or_else(|e| {
        b.problems.push(format!("/etc/lamina/modules.order: {e}"));
        String::new()
    });
    let (now, later) = boot::split_modules(boot::parse_module_order(&order), &boot::MOUNT_MODULES);
    let t = Instant::now();
    b.modules.later_names = later.iter().map(|m| m.name.clone()).collect();
    b.modules.loading = Some(b.sys.load_later(later));
    b.modules.reports = boot::load_modules(b.sys.kernel(), &now);
    b.modules.took = t.elapsed();
    Ok(())
}

fn network(b: &mut Boot) -> Result<(), BootError> {
    let s = b.sys.network(&b.cfg.network)?;
    b.parts.push(s);
    Ok(())
}

/// Opened before READY: evdev queues events only for open handles.
fn power_button(b: &mut Boot) -> Result<(), BootError> {
    let (path, f) = b.sys.power_button()?;
    b.parts.push(format!("power button {}", path.display()));
    b.button = Some(f);
    Ok(())
}

fn agent(b: &mut Boot) -> Result<(), BootError> {
    let (port, waited, wake) = b.sys.start_agent(&b.cfg.agent, &b.shared, &b.reaper)?;
    b.parts.push(format!("agent {} ({} ms)", port.display(), waited.as_millis()));
    b.wake_rx = Some(wake);
    Ok(())
}

fn store_options(b: &mut Boot) -> Result<(), BootError> {
    let opts = b.sys.store_options(&b.cmdline, b.cfg.pool.enabled).map_err(BootError::Options)?;
    b.opts = Some(opts);
    Ok(())
}

fn containers(b: &mut Boot) -> Result<(), BootError> {
    let opts = b.opts.clone().unwrap_or_default();
    let s = b.sys.start_store(&opts, &b.shared, &b.reaper)?;
    b.parts.push(s);
    Ok(())
}

/// After the list: waits for the background modules, then prints `LAMINA READY` (or each
/// problem and `LAMINA DEGRADED`) with what came up, and hands the summary to the agent.
pub(crate) fn finish(b: &mut Boot, t0: Instant) {
    if b.stopped {
        // As before the list existed: a pool that failed part-way is left as it stands
        // (daemon, attach) and shutdown does not touch it.
        b.pool = Pool::default();
    }
    b.modules.join();
    let (later, later_took) = b.modules.background.take().unwrap_or_default();
    let mut reports = std::mem::take(&mut b.modules.reports);
    reports.extend(later);
    let mut failed = 0;
    for r in &reports {
        if b.cfg.debug {
            b.sys.say(&format!("module {} {:?} in {} ms", r.name, r.outcome, r.took.as_millis()));
        }
        if let ModuleOutcome::Failed(e) = &r.outcome {
            failed += 1;
            b.problems.push(format!("module {}: {e}", r.name));
        }
    }
    b.parts.insert(
        0,
        format!(
            "modules {}/{} in {:.2}s ({} in the background, done at {:.2}s)",
            reports.len() - failed,
            reports.len(),
            b.modules.took.as_secs_f64(),
            b.modules.later_names.join(","),
            later_took.as_secs_f64()
        ),
    );
    if !b.cfg.containers {
        b.parts.push("containers off".into());
    }
    b.parts.push(b.pool.summary());
    let summary = format!(
        "{} (init {:.2}s, kernel uptime {:.2}s)",
        b.parts.join("; "),
        t0.elapsed().as_secs_f64(),
        uptime()
    );
    {
        let mut s = b.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.ready = b.problems.is_empty();
        s.summary = summary.clone();
        s.pool = b.pool.status();
    }
    if b.problems.is_empty() {
        b.sys.say(&format!("{READY}: {summary}"));
    } else {
        for p in &b.problems {
            b.sys.say(&format!("problem: {p}"));
        }
        b.sys.say(&format!("{DEGRADED}: {} problem(s); {summary}", b.problems.len()));
    }
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}
