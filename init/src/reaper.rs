//! The one owner of `waitpid` in PID 1. Children that PID 1 spawns are registered with a
//! channel for their exit status; everything else (orphans re-parented to PID 1) is reaped and
//! logged. A global `waitpid(-1)` would otherwise steal the statuses `Child::wait` expects.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Mutex;

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// A spawned child: never call `child.wait()`; read the status from `exit`.
pub struct Spawned {
    pub pid: i32,
    pub child: Child,
    pub exit: Receiver<Exit>,
}

#[derive(Default)]
pub struct Reaper {
    waiting: Mutex<HashMap<i32, Sender<Exit>>>,
    /// Storage daemons: not workloads, stopped by their own shutdown step after the
    /// filesystem they back is unmounted (systemd's `@` argv[0] convention, by pid).
    spared: Mutex<std::collections::HashSet<i32>>,
}

impl Reaper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns `cmd` and registers it before the reaper can see its exit (the lock is held
    /// across spawn and registration).
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<Spawned> {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let child = cmd.spawn()?;
        let pid = child.id() as i32;
        let (tx, rx) = channel();
        w.insert(pid, tx);
        Ok(Spawned { pid, child, exit: rx })
    }

    /// Marks `pid` as a storage daemon: [`Reaper::running`] leaves it out.
    pub fn spare(&self, pid: i32) {
        self.spared.lock().unwrap_or_else(|p| p.into_inner()).insert(pid);
    }

    /// PIDs of registered children still running, storage daemons excepted.
    pub fn running(&self) -> Vec<i32> {
        let spared = self.spared.lock().unwrap_or_else(|p| p.into_inner()).clone();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .filter(|p| !spared.contains(p))
            .collect()
    }

    /// Reaps every exited child without blocking. Registered ones get their status; the
    /// others (orphans) are returned.
    pub fn reap(&self) -> Vec<(i32, Exit)> {
        let mut w = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        let mut orphans = Vec::new();
        loop {
            let (pid, exit) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), Exit::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), Exit::Signal(sig as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => break, // nothing more now, or ECHILD
                Ok(_) => continue,                            // stopped/continued: not an exit
            };
            match w.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(exit);
                }
                None => orphans.push((pid, exit)),
            }
        }
        orphans
    }
}
