//! Orderly shutdown, NBD-aware: the storage daemon outlives the filesystem it
//! backs, so nothing is "killed everywhere" before XFS is unmounted.
//!
//! 1. stop workloads PID 1 started (SIGTERM, grace, SIGKILL)
//! 2. unmount overlays            3. sync + unmount XFS
//! 4. detach the store            5. stop the pool daemon (flushes, commits)
//! 6. sync                        7. reboot(POWER_OFF)

use std::time::{Duration, Instant};

use crate::pool::{Pool, Step};
use crate::reaper::Reaper;

/// What asked for the shutdown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    PowerButton,
    Signal(String),
    Agent,
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::PowerButton => write!(f, "power button"),
            Trigger::Signal(s) => write!(f, "signal {s}"),
            Trigger::Agent => write!(f, "agent shutdown command"),
        }
    }
}

/// SIGTERM to our running children, wait up to `grace`, SIGKILL the rest.
fn stop_workloads(reaper: &Reaper, grace: Duration) -> Step {
    let pids = reaper.running();
    if pids.is_empty() {
        return Step::Done("no workloads".into());
    }
    let signal = |pid: i32, sig| {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, sig);
        }
    };
    for &p in &pids {
        signal(p, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    while !reaper.running().is_empty() && Instant::now() < deadline {
        let _ = reaper.reap();
        std::thread::sleep(Duration::from_millis(20));
    }
    let left = reaper.running();
    for &p in &left {
        signal(p, rustix::process::Signal::KILL);
    }
    let _ = reaper.reap();
    Step::Done(format!("{} stopped, {} killed", pids.len() - left.len(), left.len()))
}

/// Runs steps 1–6, reporting each through `say`. The caller powers off afterwards.
pub fn sequence(
    trigger: &Trigger,
    pool: &mut Pool,
    reaper: &Reaper,
    grace: Duration,
    say: &mut dyn FnMut(String),
) {
    say(format!("shutdown requested by {trigger}"));
    const N: usize = 7;
    let mut report = |i: usize, name: &str, outcome: Step| {
        let text = match outcome {
            Step::Done(s) => format!("ok ({s})"),
            Step::Skipped(why) => format!("skipped ({why})"),
            Step::Failed(e) => format!("FAILED ({e})"),
        };
        say(format!("shutdown [{i}/{N}] {name}: {text}"));
    };
    report(1, "stop workloads", stop_workloads(reaper, grace));
    report(2, "unmount overlays", pool.unmount_overlays());
    report(3, "sync and unmount XFS", pool.unmount_filesystem());
    report(4, "detach the store", pool.detach_store());
    report(5, "stop pool daemon", pool.stop_daemon());
    rustix::fs::sync();
    report(6, "sync", Step::Done("done".into()));
    say(format!("shutdown [{N}/{N}] power off"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_reported_in_order() {
        let mut pool = Pool::default();
        let mut lines = Vec::new();
        sequence(&Trigger::Agent, &mut pool, &Reaper::new(), Duration::from_millis(10), &mut |l| {
            lines.push(l)
        });
        assert_eq!(lines[0], "shutdown requested by agent shutdown command");
        let names: Vec<&str> = lines[1..].iter().map(|l| l.split(": ").next().unwrap()).collect();
        assert_eq!(
            names,
            [
                "shutdown [1/7] stop workloads",
                "shutdown [2/7] unmount overlays",
                "shutdown [3/7] sync and unmount XFS",
                "shutdown [4/7] detach the store",
                "shutdown [5/7] stop pool daemon",
                "shutdown [6/7] sync",
                "shutdown [7/7] power off",
            ]
        );
        assert!(lines[1].ends_with("ok (no workloads)"));
        assert!(lines[4].contains("skipped (not attached)"), "{}", lines[4]);
    }
}
