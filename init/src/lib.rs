//! `lamina-init`, PID 1 of the appliance.
//!
//! Boot: block signals into a signalfd → panic hook → early mounts → Ctrl-Alt-Del as SIGINT →
//! config (file + `lamina.KEY=VALUE`) → modules in the image's order → lo/eth0 over rtnetlink
//! → open the power button → guest agent thread → [`pool`] bring-up (not wired yet) →
//! `LAMINA READY …` on the console. Then one loop owns signals (SIGCHLD → reap;
//! SIGTERM/SIGINT/SIGPWR/SIGUSR2 → shutdown), the power button and the agent's wake pipe.
//! A failed step prints a diagnosis (`LAMINA DEGRADED …`) and the loop still runs: PID 1
//! never exits, so the console, agent and power button stay usable.

pub mod agent;
pub mod attach;
pub mod boot;
pub mod config;
pub mod containers;
pub mod evdev;
pub mod luks;
pub mod nbd;
pub mod nbd_tls;
pub mod netlink;
pub mod options;
pub mod pool;
pub mod reaper;
pub mod shutdown;
pub mod wait;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::boot::{ModuleOutcome, RealKernel};
use crate::config::Config;
use crate::pool::Pool;
use crate::reaper::Reaper;
use crate::shutdown::Trigger;

/// The default config, compiled in as a fallback when the file is missing or broken.
pub const DEFAULT_CONFIG: &str = include_str!("../config.toml");
/// The line the host waits for.
pub const READY: &str = "LAMINA READY";
pub const DEGRADED: &str = "LAMINA DEGRADED";

/// Prints one line on the console (PID 1's stdout is /dev/console).
pub fn say(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "lamina: {msg}");
    let _ = out.flush();
}

fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0)
}

fn power_off() -> ! {
    rustix::fs::sync();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::PowerOff) {
        say(&format!("reboot(POWER_OFF) failed: {e}; halting here"));
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Signals PID 1 blocks and reads from its signalfd (all but synchronous faults).
fn signal_mask() -> SigSet {
    let mut m = SigSet::all();
    for s in [
        Signal::SIGFPE,
        Signal::SIGILL,
        Signal::SIGSEGV,
        Signal::SIGBUS,
        Signal::SIGABRT,
        Signal::SIGTRAP,
        Signal::SIGSYS,
    ] {
        m.remove(s);
    }
    m
}

/// What boot found, for the READY line and the agent.
struct Boot {
    problems: Vec<String>,
    parts: Vec<String>,
}

/// The entry point of the `lamina-init` binary.
pub fn main_pid1() -> ! {
    if rustix::process::getpid().as_raw_nonzero().get() != 1 {
        eprintln!("lamina-init: must run as PID 1 (it mounts, loads modules and powers off)");
        std::process::exit(2);
    }
    // Before any thread exists, so every thread inherits the mask.
    let mask = signal_mask();
    let _ = mask.thread_block();
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK);
    std::panic::set_hook(Box::new(|info| {
        say(&format!("PANIC: {info}"));
    }));
    let _ = std::panic::catch_unwind(|| run(sfd));
    // Only reached if `run` panicked (a bug): PID 1 must not exit, so keep reaping and wait
    // for a shutdown signal; the console shows the panic message above.
    say(&format!("{DEGRADED}: init panicked (see above); waiting for SIGTERM/SIGINT/SIGPWR"));
    fallback_loop(&mask)
}

/// Minimal PID 1 after a panic: reap zombies, power off on a shutdown signal.
fn fallback_loop(mask: &SigSet) -> ! {
    let mut sfd = SignalFd::with_flags(mask, SfdFlags::SFD_CLOEXEC).ok();
    loop {
        match sfd.as_mut().map(|s| s.read_signal()) {
            Some(Ok(Some(si))) => match Signal::try_from(si.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => {
                    while let Ok(st) = nix::sys::wait::waitpid(
                        nix::unistd::Pid::from_raw(-1),
                        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                    ) {
                        if st == nix::sys::wait::WaitStatus::StillAlive {
                            break;
                        }
                    }
                }
                Ok(Signal::SIGTERM | Signal::SIGINT | Signal::SIGPWR | Signal::SIGUSR2) => {
                    say("shutdown after panic: sync, power off");
                    power_off()
                }
                _ => {}
            },
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn run(sfd: nix::Result<SignalFd>) -> ! {
    let t0 = Instant::now();
    let kernel = RealKernel;
    let mut boot = Boot { problems: Vec::new(), parts: Vec::new() };
    for (target, e) in boot::early_mounts(&kernel) {
        boot.problems.push(format!("mount {target}: {e}"));
    }
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    if let Err(e) = rustix::system::reboot(rustix::system::RebootCommand::CadOff) {
        boot.problems.push(format!("reboot(CAD_OFF): {e}"));
    }
    let mut sfd = match sfd {
        Ok(s) => Some(s),
        Err(e) => {
            boot.problems.push(format!("signalfd: {e} (signals cannot be handled)"));
            None
        }
    };

    // Config.
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let overrides = config::cmdline_overrides(&cmdline);
    let file = std::fs::read_to_string(config::PATH).unwrap_or_else(|e| {
        boot.problems.push(format!("{}: {e}; using built-in defaults", config::PATH));
        DEFAULT_CONFIG.to_owned()
    });
    let cfg: Config = config::load(&file, &overrides).unwrap_or_else(|e| {
        boot.problems.push(format!("config: {e}; using built-in defaults"));
        config::load(DEFAULT_CONFIG, &[])
            .unwrap_or_else(|e| panic!("built-in config is broken: {e}"))
    });
    say(&format!("lamina-init {} starting (debug={})", env!("CARGO_PKG_VERSION"), cfg.debug));
    // cryptsetup's libdevmapper makes the /dev/mapper nodes itself: no udev runs here.
    std::env::set_var("DM_DISABLE_UDEV", "1");

    // Modules.
    let order = std::fs::read_to_string("/etc/lamina/modules.order").unwrap_or_else(|e| {
        boot.problems.push(format!("/etc/lamina/modules.order: {e}"));
        String::new()
    });
    let (now, later) = boot::split_modules(boot::parse_module_order(&order), &boot::MOUNT_MODULES);
    let t = Instant::now();
    // The mount's modules load meanwhile; the pool waits for them right before it mounts.
    let later_names: Vec<String> = later.iter().map(|m| m.name.clone()).collect();
    let mut mount_modules = boot::Loading::start(later);
    let mut reports = boot::load_modules(&kernel, &now);
    let modules_took = t.elapsed();

    // Network.
    let find = |name: &str, wait: Duration| {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(i) = boot::ifindex(Path::new("/sys/class/net"), name) {
                return Some(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    match netlink::NlSocket::route()
        .map_err(boot::NetError::from)
        .and_then(|mut nl| boot::bring_up_network(&mut nl, &cfg.network, &find))
    {
        Ok(s) => boot.parts.push(s),
        Err(e) => boot.problems.push(e.to_string()),
    }

    // Power button: open before READY (evdev queues events only for open handles).
    let mut button = None;
    let deadline = Instant::now() + Duration::from_secs(2);
    while button.is_none() {
        if let Some(p) = evdev::find_power_button(Path::new("/sys/class/input")) {
            match std::fs::OpenOptions::new().read(true).custom_flags_nonblock().open(&p) {
                Ok(f) => {
                    boot.parts.push(format!("power button {}", p.display()));
                    button = Some(f);
                }
                Err(e) => {
                    boot.problems.push(format!("power button {}: {e}", p.display()));
                    break;
                }
            }
        } else if Instant::now() >= deadline {
            boot.problems.push("no ACPI power button (button/evdev modules?)".into());
            break;
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // Agent.
    let reaper = Arc::new(Reaper::new());
    let shared = Arc::new(Mutex::new(agent::Shared {
        debug: cfg.debug,
        max_exec_secs: cfg.agent.max_exec_secs,
        ..Default::default()
    }));
    let wake = match rustix::pipe::pipe_with(
        rustix::pipe::PipeFlags::CLOEXEC | rustix::pipe::PipeFlags::NONBLOCK,
    ) {
        Ok(p) => Some(p),
        Err(e) => {
            boot.problems.push(format!("pipe: {e}"));
            None
        }
    };
    let mut wake_rx = None;
    let port =
        agent::find_port(Path::new("/sys/class/virtio-ports"), &cfg.agent.port, wait::DEVICE_WAIT);
    match (port, wake) {
        (Ok((port, waited)), Some((rx, tx))) => {
            boot.parts.push(format!("agent {} ({} ms)", port.display(), waited.as_millis()));
            let (s, r) = (shared.clone(), reaper.clone());
            wake_rx = Some(rx);
            if let Err(e) = std::thread::Builder::new()
                .name("agent".into())
                .spawn(move || agent::serve(port, s, r, tx))
            {
                boot.problems.push(format!("agent thread: {e}"));
            }
        }
        (Err(e), _) => boot.problems.push(e.to_string()),
        _ => {}
    }

    // Pool (the slot the pool bring-up fills).
    let mut background = None;
    let mut wait_modules = || {
        if background.is_none() {
            background = Some(mount_modules.wait());
        }
    };
    let opts = store_options(&cmdline, cfg.pool.enabled);
    let mut pool = match &opts {
        Ok(opts) => match Pool::bring_up(&cfg, opts, &reaper, &mut wait_modules) {
            Ok(p) => p,
            Err(e) => {
                boot.problems.push(e.to_string());
                Pool::default()
            }
        },
        // A bad option leaves the pool alone rather than bringing it up with other settings.
        Err(e) => {
            boot.problems.push(format!("{e}; the pool was not brought up"));
            Pool::default()
        }
    };
    wait_modules();
    match (&opts, pool.is_up(), cfg.containers) {
        (Ok(opts), true, true) => match start_store(opts, &shared, &reaper) {
            Ok(s) => boot.parts.push(s),
            Err(e) => boot.problems.push(e.to_string()),
        },
        (_, _, false) => boot.parts.push("containers off".into()),
        _ => {}
    }
    let (later_reports, later_took) = background.unwrap_or_default();
    reports.extend(later_reports);
    let mut failed = 0;
    for r in &reports {
        if cfg.debug {
            say(&format!("module {} {:?} in {} ms", r.name, r.outcome, r.took.as_millis()));
        }
        if let ModuleOutcome::Failed(e) = &r.outcome {
            failed += 1;
            boot.problems.push(format!("module {}: {e}", r.name));
        }
    }
    boot.parts.insert(
        0,
        format!(
            "modules {}/{} in {:.2}s ({} in the background, done at {:.2}s)",
            reports.len() - failed,
            reports.len(),
            modules_took.as_secs_f64(),
            later_names.join(","),
            later_took.as_secs_f64()
        ),
    );
    boot.parts.push(pool.summary());

    let summary = format!(
        "{} (init {:.2}s, kernel uptime {:.2}s)",
        boot.parts.join("; "),
        t0.elapsed().as_secs_f64(),
        uptime()
    );
    {
        let mut s = shared.lock().unwrap_or_else(|p| p.into_inner());
        s.ready = boot.problems.is_empty();
        s.summary = summary.clone();
        s.pool = pool.status();
    }
    if boot.problems.is_empty() {
        say(&format!("{READY}: {summary}"));
    } else {
        for p in &boot.problems {
            say(&format!("problem: {p}"));
        }
        say(&format!("{DEGRADED}: {} problem(s); {summary}", boot.problems.len()));
    }

    // The loop.
    let trigger = event_loop(sfd.as_mut(), button.as_mut(), wake_rx.as_ref(), &reaper);
    // Containers stop (newest first) and the store closes before XFS is unmounted.
    let (images, ctrs) = {
        let s = shared.lock().unwrap_or_else(|p| p.into_inner());
        (s.images.clone(), s.containers.clone())
    };
    if let Some(c) = ctrs.get() {
        c.stop_all(Duration::from_secs(cfg.shutdown.grace_secs), &mut |l| say(&l));
    }
    if let Some(images) = images.get() {
        images.close();
    }
    shutdown::sequence(
        &trigger,
        &mut pool,
        &reaper,
        Duration::from_secs(cfg.shutdown.grace_secs),
        &mut |l| say(&l),
    );
    power_off()
}

/// Opens the layer store on the pool's XFS and serves the data channel for it.
fn start_store(
    opts: &options::StoreOptions,
    shared: &Mutex<agent::Shared>,
    reaper: &Arc<Reaper>,
) -> Result<String, containers::error::StoreError> {
    use containers::error::{Kind, StoreError};
    let images = containers::Images::open(
        Path::new(containers::STORE_ROOT),
        Path::new(containers::INCOMING),
        opts.driver,
    )
    .map_err(|e| StoreError::new(e.kind, format!("layer store {}: {e}", containers::STORE_ROOT)))?;
    let (cell, ctrs) = {
        let s = shared.lock().unwrap_or_else(|p| p.into_inner());
        (s.images.clone(), s.containers.clone())
    };
    let _ = cell.set(images);
    let _ = ctrs.set(containers::service::Containers::open(cell.clone(), reaper.clone()));
    let (port, _) = agent::find_port(
        Path::new("/sys/class/virtio-ports"),
        containers::DATA_PORT,
        wait::DEVICE_WAIT,
    )
    .map_err(|e| StoreError::new(Kind::Unavailable, e.to_string()))?;
    let msg =
        format!("store {:?} at {}, data {}", opts.driver, containers::STORE_ROOT, port.display());
    std::thread::Builder::new()
        .name("data".into())
        .spawn(move || containers::serve_data(port, cell))
        .map_err(|e| StoreError::io("data thread", e))?;
    Ok(msg)
}

/// The store's options (config disk, then `lamina.opt.*`), once the disks are there.
fn store_options(
    cmdline: &str,
    pool_enabled: bool,
) -> Result<options::StoreOptions, options::OptionsError> {
    if pool_enabled {
        // The config disk is a virtio disk like the pool's: give the disks their deadline.
        let sys_block = Path::new("/sys/block");
        let _ = wait::until(&wait::RealClock, "a virtio disk", wait::DEVICE_WAIT, || {
            if pool::data_disks(sys_block).is_empty() {
                wait::Look::Missing
            } else {
                wait::Look::Found(())
            }
        });
    }
    options::load(Path::new("/sys/block"), cmdline)
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
    }
}

fn event_loop(
    mut sfd: Option<&mut SignalFd>,
    mut button: Option<&mut std::fs::File>,
    wake: Option<&std::os::fd::OwnedFd>,
    reaper: &Reaper,
) -> Trigger {
    use rustix::event::{poll, PollFd, PollFlags};
    loop {
        let mut fds = Vec::with_capacity(3);
        if let Some(s) = sfd.as_deref() {
            fds.push((0, PollFd::new(s, PollFlags::IN)));
        }
        if let Some(b) = button.as_deref() {
            fds.push((1, PollFd::new(b, PollFlags::IN)));
        }
        if let Some(w) = wake {
            fds.push((2, PollFd::new(w, PollFlags::IN)));
        }
        let kinds: Vec<u8> = fds.iter().map(|(k, _)| *k).collect();
        let mut pfds: Vec<PollFd> = fds.into_iter().map(|(_, f)| f).collect();
        if pfds.is_empty() {
            // Nothing to wait on (every source failed): still reap now and then.
            std::thread::sleep(Duration::from_secs(1));
            let _ = reaper.reap();
            continue;
        }
        if poll(&mut pfds, None).is_err() {
            continue;
        }
        let ready: Vec<u8> = kinds
            .iter()
            .zip(&pfds)
            .filter(|(_, p)| !p.revents().is_empty())
            .map(|(k, _)| *k)
            .collect();
        drop(pfds);
        for k in ready {
            match k {
                0 => {
                    while let Some(Ok(Some(si))) = sfd.as_deref_mut().map(|s| s.read_signal()) {
                        let sig = Signal::try_from(si.ssi_signo as i32).ok();
                        match sig {
                            Some(Signal::SIGCHLD) => {
                                for (pid, exit) in reaper.reap() {
                                    tracing::debug!("reaped orphan {pid}: {exit:?}");
                                }
                            }
                            Some(
                                s @ (Signal::SIGTERM
                                | Signal::SIGINT
                                | Signal::SIGPWR
                                | Signal::SIGUSR2),
                            ) => {
                                return Trigger::Signal(s.as_str().to_owned());
                            }
                            other => tracing::info!("ignoring signal {other:?}"),
                        }
                    }
                }
                1 => {
                    let mut buf = [0u8; evdev::EVENT_SIZE * 16];
                    if let Some(b) = button.as_deref_mut() {
                        while let Ok(n) = b.read(&mut buf) {
                            if n == 0 {
                                break;
                            }
                            if evdev::parse_events(&buf[..n]).iter().any(|e| e.is_power_press()) {
                                return Trigger::PowerButton;
                            }
                        }
                    }
                }
                _ => {
                    let mut b = [0u8; 16];
                    if let Some(w) = wake {
                        if rustix::io::read(w.as_fd(), &mut b).is_ok_and(|n| n > 0) {
                            return Trigger::Agent;
                        }
                    }
                }
            }
        }
    }
}
