//! `lamina-init`, PID 1 of the appliance.
//!
//! Boot: block signals into a signalfd → panic hook → the boot's named steps ([`steps`] runs
//! the list in `sequence`: early mounts → Ctrl-Alt-Del as SIGINT → config (file +
//! `lamina.KEY=VALUE`) → modules in the image's order → lo/eth0 over rtnetlink → open the
//! power button → guest agent thread → store options → [`pool`] bring-up → containers) →
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
mod sequence;
pub mod shutdown;
pub mod steps;
#[cfg(test)]
mod test_support;
pub mod wait;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

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
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .try_init();
    // cryptsetup's libdevmapper makes the /dev/mapper nodes itself: no udev runs here.
    std::env::set_var("DM_DISABLE_UDEV", "1");
    let sys = sequence::real::RealSystem;
    let mut boot = sequence::Boot::new(&sys);
    let mut sfd = match sfd {
        Ok(s) => Some(s),
        Err(e) => {
            boot.signalfd_error = Some(e);
            None
        }
    };
    steps::run(&sequence::steps(), &mut boot);
    sequence::finish(&mut boot, t0);

    // The loop.
    let trigger =
        event_loop(sfd.as_mut(), boot.button.as_mut(), boot.wake_rx.as_ref(), &boot.reaper);
    let grace = Duration::from_secs(boot.cfg.shutdown.grace_secs);
    // Containers stop (newest first) and the store closes before XFS is unmounted.
    let (images, ctrs) = {
        let s = boot.shared.lock().unwrap_or_else(|p| p.into_inner());
        (s.images.clone(), s.containers.clone())
    };
    if let Some(c) = ctrs.get() {
        c.stop_all(grace, &mut |l| say(&l));
    }
    if let Some(images) = images.get() {
        images.close();
    }
    shutdown::sequence(&trigger, &mut boot.pool, &boot.reaper, grace, &mut |l| say(&l));
    power_off()
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
