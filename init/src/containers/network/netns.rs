//! A container's network namespace, made before the container so the CNI plugins can set it
//! up and crun can join it (the OCI config's `network` namespace `path`): a thread unshares
//! a new one and bind-mounts its `/proc/thread-self/ns/net` on a file, as `ip netns add`
//! does, so it outlives the thread and every restart of the container's processes.
//!
//! ```text
//! /run/lamina/netns/NAME      the bind mount (nsfs); removed with the container's network
//! ```

use std::path::{Path, PathBuf};

pub const DIR: &str = "/run/lamina/netns";

#[derive(Debug, thiserror::Error)]
#[error("network namespace {path}: {what}")]
pub struct NetnsError {
    pub path: PathBuf,
    pub what: &'static str,
    pub source: std::io::Error,
}

/// The namespace file of container `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(DIR).join(name)
}

/// Whether `p` is a namespace bind mount (nsfs), not just the empty file under it.
pub fn is_mounted(p: &Path) -> bool {
    rustix::fs::statfs(p).is_ok_and(|s| s.f_type == 0x6e73_6673) // NSFS_MAGIC
}

/// Makes the namespace file of `name` (an existing one is kept).
pub fn create(name: &str) -> Result<PathBuf, NetnsError> {
    let p = path(name);
    if is_mounted(&p) {
        return Ok(p);
    }
    let err = |what, source| NetnsError { path: p.clone(), what, source };
    std::fs::create_dir_all(DIR).map_err(|e| err("mkdir", e))?;
    std::fs::File::create(&p).map_err(|e| err("create", e))?;
    let target = p.clone();
    // unshare(CLONE_NEWNET) moves only the calling thread: a thread of its own, thrown away.
    let r = std::thread::spawn(move || -> Result<(), (&'static str, std::io::Error)> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| ("unshare", std::io::Error::from(e)))?;
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)
            .map_err(|e| ("bind mount", e.into()))
    })
    .join()
    .unwrap_or_else(|_| Err(("thread", std::io::Error::other("panicked"))));
    r.map(|()| p.clone()).map_err(|(what, e)| {
        let _ = std::fs::remove_file(&p);
        err(what, e)
    })
}

/// Unmounts and removes the namespace file (the namespace goes once nothing uses it).
pub fn remove(name: &str) {
    let p = path(name);
    let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_file(&p);
}
