//! A container's cgroup v2 home (Documentation/admin-guide/cgroup-v2.rst):
//!
//! ```text
//! /sys/fs/cgroup/lamina/NAME/        limits set by init: memory.max, memory.swap.max, cpu.max
//!                                    memory.events (hierarchical) counts oom_kill
//! /sys/fs/cgroup/lamina/NAME/ctr/    crun's cgroupsPath: the container's processes
//! ```
//! The limits sit on the parent so they, and the OOM count, outlive crun removing `ctr/` when
//! the container exits; init reads `oom_kill` after the exit to tell an OOM kill from a crash.
//! Controllers are enabled top-down through `cgroup.subtree_control` (a cgroup can only hand
//! its children controllers its parent handed it). Paths are parameters, so the logic is
//! tested on a plain directory.

use std::path::{Path, PathBuf};

/// The unified hierarchy's mount.
pub const ROOT: &str = "/sys/fs/cgroup";
/// cpu.max's period (the kernel's default).
const PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
#[error("cgroup {path}: {what}")]
pub struct CgroupError {
    pub path: PathBuf,
    pub what: String,
    pub source: std::io::Error,
}

fn write(path: &Path, what: &str, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError {
        path: path.into(),
        what: format!("{what} {value:?}"),
        source,
    })
}

fn mkdir(path: &Path) -> Result<(), CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(CgroupError { path: path.into(), what: "mkdir".into(), source }),
    }
}

/// `cpu.max` for `nano_cpus` billionths of a CPU: "QUOTA PERIOD" in microseconds.
pub fn cpu_max(nano_cpus: u64) -> String {
    let quota = (u128::from(nano_cpus) * u128::from(PERIOD_US) / 1_000_000_000) as u64;
    format!("{} {PERIOD_US}", quota.max(1000))
}

/// Makes `ROOT/lamina/NAME` with its limits (`max` where none is given) and returns crun's
/// `cgroupsPath` (`/lamina/NAME/ctr`).
pub fn prepare(
    root: &Path,
    name: &str,
    memory: Option<u64>,
    nano_cpus: Option<u64>,
) -> Result<String, CgroupError> {
    let controllers = "+cpu +memory +pids";
    let lamina = root.join("lamina");
    let dir = lamina.join(name);
    write(&root.join("cgroup.subtree_control"), "enable controllers", controllers)?;
    mkdir(&lamina)?;
    write(&lamina.join("cgroup.subtree_control"), "enable controllers", controllers)?;
    mkdir(&dir)?;
    let mem = memory.map_or("max".to_owned(), |m| m.to_string());
    write(&dir.join("memory.max"), "memory limit", &mem)?;
    if memory.is_some() {
        // Docker's --memory without --memory-swap allows as much swap again; the appliance
        // has no swap, so none.
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
    }
    let cpu = nano_cpus.map_or(format!("max {PERIOD_US}"), cpu_max);
    write(&dir.join("cpu.max"), "cpu limit", &cpu)?;
    write(&dir.join("cgroup.subtree_control"), "enable controllers", controllers)?;
    Ok(format!("/lamina/{name}/ctr"))
}

/// How many processes of the container the OOM killer has killed (`memory.events`).
pub fn oom_kills(root: &Path, name: &str) -> u64 {
    std::fs::read_to_string(root.join("lamina").join(name).join("memory.events"))
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
        })
        .unwrap_or(0)
}

/// Removes the container's cgroups (empty ones only: rmdir).
pub fn remove(root: &Path, name: &str) {
    let dir = root.join("lamina").join(name);
    let _ = std::fs::remove_dir(dir.join("ctr"));
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_land_on_the_parent_and_controllers_are_enabled_top_down() {
        let d = tempfile::tempdir().unwrap();
        let path = prepare(d.path(), "web", Some(64 << 20), Some(500_000_000)).unwrap();
        assert_eq!(path, "/lamina/web/ctr");
        let r = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(r("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(r("lamina/cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(r("lamina/web/memory.max"), "67108864");
        assert_eq!(r("lamina/web/memory.swap.max"), "0");
        assert_eq!(r("lamina/web/cpu.max"), "50000 100000");
        prepare(d.path(), "idle", None, None).unwrap();
        assert_eq!(r("lamina/idle/memory.max"), "max");
        assert_eq!(r("lamina/idle/cpu.max"), "max 100000");
    }

    #[test]
    fn oom_kills_are_read_from_memory_events() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(oom_kills(d.path(), "x"), 0);
        std::fs::create_dir_all(d.path().join("lamina/x")).unwrap();
        std::fs::write(
            d.path().join("lamina/x/memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        assert_eq!(oom_kills(d.path(), "x"), 1);
        remove(d.path(), "x");
        assert!(
            d.path().join("lamina/x").exists(),
            "rmdir leaves a non-empty dir (plain dir here)"
        );
    }

    #[test]
    fn a_failed_write_names_the_file() {
        let d = tempfile::tempdir().unwrap();
        let e = prepare(&d.path().join("missing"), "x", None, None).unwrap_err();
        assert!(e.path.ends_with("cgroup.subtree_control"), "{e}");
        // The OS error is the source: printed once, by the chain, never by the line itself.
        let os = e.source.to_string();
        assert!(!e.to_string().contains(&os), "{e}");
        assert_eq!(units::chain(&e), format!("{e}: {os}"));
        // A store error made from it keeps the whole chain, as the agent's reply shows it.
        let msg = crate::containers::error::StoreError::io("cgroup", e).msg;
        assert_eq!(msg.matches(&os).count(), 1, "{msg}");
        assert_eq!(cpu_max(2_000_000_000), "200000 100000");
        assert_eq!(cpu_max(1_000_000), "1000 100000", "the kernel's minimum quota is 1 ms");
    }
}
