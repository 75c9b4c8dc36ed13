//! The storage pool as PID 1 brings it up and tears it down.
//!
//! Bring-up, as boot steps (`steps.rs`; each prints its progress on the console):
//! 1. the data disks are the virtio disks present at boot (`/dev/vd*`; the initramfs is the
//!    root, so the first one is `/dev/vda`); `socketpair(AF_UNIX, SOCK_STREAM)` per kernel
//!    connection; `thinpool serve` starts as a supervised child with the server ends
//!    inherited (`--kernel-fd FD:store`, `--io-flusher`) and opens the pool on them. When it
//!    cannot (first boot), `thinpool init --device` lays the volume group and pool over them
//!    with Docker's direct-lvm defaults (a foreign signature is refused unless `pool.force`)
//!    and the daemon starts again;
//! 2. the base volume `store` of `pool.basesize` is created (`thinpool create`) if absent;
//! 3. the store reaches the kernel ([`crate::attach`]): by default the daemon serves it as
//!    `/dev/ublkb0` (ublk); with `lamina.attach=nbd`, netlink NBD_CMD_CONNECT hands the
//!    socketpairs' client ends to the kernel → `/dev/nbd0`;
//! 4. `mkfs.xfs` only when the device holds no filesystem, mount at /var/lib/lamina with
//!    `prjquota`, `overlay2/` inside.
//!
//! Supervision: when the daemon exits while the pool is up, a thread starts it again. Over
//! ublk the new daemon takes the quiesced /dev/ublkb0 over by itself (user recovery; requests
//! the dead one had taken are reissued to it). Over nbd it gets fresh socketpairs and
//! NBD_CMD_RECONFIGUREs /dev/nbd0; the kernel keeps I/O queued for
//! `dead_conn_timeout_secs` meanwhile, so XFS never sees an error. Requests the dead daemon
//! had read but not answered are resent on the new socket within [`REQUEUE_CHECK_MS`];
//! the daemon commits every mapping change before its reply (`--kernel-fd`), so what it had
//! acknowledged survives its death.
//!
//! Shutdown (driven by [`crate::shutdown`]): sync + unmount XFS → detach the store (ublk:
//! the daemon deletes /dev/ublkb0; nbd: NBD disconnect, the daemon's kernel connection ends,
//! so it commits and exits by itself) → wait for the daemon (SIGTERM if it is still there).

pub(crate) mod steps;

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thinpool::daemon::control::{self, Request};

use crate::attach::{self, Attach};
use crate::config::Config;
use crate::nbd::NbdClient;
use crate::netlink::nbd::Connect;
use crate::reaper::{Exit, Reaper, Spawned};
use units::Bytes;

/// The daemon's lock, control socket and event log (tmpfs: the pool itself is on the disks).
pub const STATE_DIR: &str = "/run/lamina/pool";
/// Where the store's XFS is mounted.
pub const MOUNT: &str = "/var/lib/lamina";
pub const THINPOOL: &str = "/sbin/thinpool";
pub const MKFS_XFS: &str = "/sbin/mkfs.xfs";
/// The base volume attached as /dev/nbd0.
pub const STORE: &str = "store";
/// NBD_ATTR_BACKEND_IDENTIFIER: RECONFIGURE must repeat it.
const BACKEND: &str = "lamina-pool-store";
const NBD_INDEX: u32 = 0;
const BLOCK_SIZE: u64 = 4096;
/// No per-request timeout (NBD_ATTR_TIMEOUT 0): with one connection the 6.1 driver then never
/// fails or drops a slow request; its timer only logs "Possible stuck request" and re-arms,
/// except that a request sent on a socket since replaced by NBD_CMD_RECONFIGURE is requeued
/// onto the new one (nbd_xmit_timeout compares the request's socket cookie). A non-zero
/// timeout would instead shut the live socket down after one slow request (a daemon restart).
const REQUEST_TIMEOUT_SECS: u64 = 0;
/// The block layer's timer period for /dev/nbd0 (`queue/io_timeout`, default 30 s): requests
/// that were in flight when the daemon died are resent this long after their start at most,
/// once the restarted daemon's socket is in place.
const REQUEUE_CHECK_MS: u64 = 2000;

/// Result of one shutdown step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(String),
    Skipped(&'static str),
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool bring-up: {0}")]
    Failed(String),
}

pub(crate) fn fail(msg: impl Into<String>) -> PoolError {
    PoolError::Failed(msg.into())
}

/// What the supervisor and the shutdown steps share.
pub(crate) struct Daemon {
    argv_base: Vec<String>,
    log: String,
    connections: u32,
    dead_conn_timeout_secs: u64,
    /// How the store is attached: nbd needs socketpairs at every (re)start, ublk none.
    attach: Attach,
    pid: AtomicU32,
    stopping: AtomicBool,
    restarts: AtomicU32,
    last_exit: Mutex<Option<Exit>>,
}

/// A daemon just started: its pid, its exit status to come, and the kernel's ends of its
/// socketpairs (nbd attach only).
pub(crate) struct Started {
    pub pid: i32,
    pub exit: std::sync::mpsc::Receiver<Exit>,
    pub kernel: Vec<OwnedFd>,
}

/// The pool as PID 1 sees it.
#[derive(Default)]
pub struct Pool {
    wired: bool,
    devices: Vec<PathBuf>,
    size: Bytes,
    mounted: bool,
    attached: bool,
    /// The store's block device (/dev/ublkb0 or /dev/nbd0) once attached.
    device: Option<PathBuf>,
    /// The store is LUKS2, open as /dev/mapper/lamina-store ([`crate::luks`]).
    crypt: bool,
    created: bool,
    daemon: Option<Arc<Daemon>>,
    supervisor: Option<JoinHandle<()>>,
    reaper: Option<Arc<Reaper>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("wired", &self.wired).field("devices", &self.devices).finish()
    }
}

/// The virtio disks present now, in name order (vda, vdb, …, vdaa).
pub fn data_disks(sys_block: &Path) -> Vec<PathBuf> {
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with("vd") && n[2..].chars().all(|c| c.is_ascii_lowercase()));
    names.retain(|n| !crate::nbd_tls::is_config_disk(sys_block, n));
    names.sort_by(|a, b| (a.len(), a).cmp(&(b.len(), b)));
    names.into_iter().map(|n| PathBuf::from("/dev").join(n)).collect()
}

/// Runs a helper to completion, reaping meanwhile (before READY the main loop does not run;
/// after it, reaping from two threads is harmless: the reaper serialises `waitpid`).
pub(crate) fn run(
    reaper: &Reaper,
    argv: &[String],
    timeout: Duration,
) -> Result<String, PoolError> {
    let args = crate::agent::proto::ExecArgs {
        argv: argv.to_vec(),
        timeout_secs: Some(timeout.as_secs().max(1)),
    };
    let done = AtomicBool::new(false);
    let r = std::thread::scope(|sc| {
        sc.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let _ = reaper.reap();
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let r = crate::agent::exec(&args, timeout.as_secs().max(1), reaper);
        done.store(true, Ordering::SeqCst);
        r
    });
    let r = r.map_err(|e| fail(format!("{}: {e}", argv[0])))?;
    if r.exit_code != Some(0) {
        let how = match (r.exit_code, r.signal, r.timed_out) {
            (_, _, true) => "timed out".to_owned(),
            (Some(c), _, _) => format!("exit {c}"),
            (_, Some(s), _) => format!("signal {s}"),
            _ => "no status".to_owned(),
        };
        return Err(fail(format!("`{}` failed ({how}): {}", argv.join(" "), r.stderr.trim())));
    }
    Ok(r.stdout)
}

pub(crate) fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn dev_list(devices: &[PathBuf]) -> String {
    devices.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(",")
}

/// Starts the daemon with fresh socketpairs; returns it and the kernel's ends.
pub(crate) fn spawn_daemon(
    reaper: &Reaper,
    d: &Daemon,
) -> Result<(Spawned, Vec<OwnedFd>), PoolError> {
    use rustix::io::{fcntl_setfd, FdFlags};
    use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
    let mut ours = Vec::new();
    let mut kernel = Vec::new();
    let n = if d.attach == Attach::Nbd { d.connections.max(1) } else { 0 };
    for _ in 0..n {
        let (k, s) =
            socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
                .map_err(|e| fail(format!("socketpair: {e}")))?;
        kernel.push(k);
        ours.push(s);
    }
    let _ = std::fs::remove_file(control::socket_path(Path::new(STATE_DIR)));
    let mut argv = d.argv_base.clone();
    for s in &ours {
        argv.push("--kernel-fd".into());
        argv.push(format!("{}:{STORE}", s.as_raw_fd()));
    }
    // Only the server ends lose CLOEXEC, just before the spawn; our copies close right after.
    for s in &ours {
        fcntl_setfd(s, FdFlags::empty()).map_err(|e| fail(format!("F_SETFD: {e}")))?;
    }
    let spawned = reaper.spawn(
        Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .env("THINPOOL_LOG", &d.log)
            .env("NO_COLOR", "1"),
    );
    drop(ours);
    let spawned = spawned.map_err(|e| fail(format!("starting {THINPOOL} serve: {e}")))?;
    // Ready when its control socket exists (created after the kernel connections are served).
    let deadline = Instant::now() + Duration::from_secs(60);
    let sock = control::socket_path(Path::new(STATE_DIR));
    while !sock.exists() {
        if let Ok(e) = spawned.exit.try_recv() {
            return Err(fail(format!("{THINPOOL} serve exited at start: {e:?}")));
        }
        if Instant::now() > deadline {
            return Err(fail(format!("{THINPOOL} serve: no {} after 60 s", sock.display())));
        }
        let _ = reaper.reap();
        std::thread::sleep(Duration::from_millis(20));
    }
    d.pid.store(spawned.pid as u32, Ordering::SeqCst);
    reaper.spare(spawned.pid);
    Ok((spawned, kernel))
}

/// The running daemon's control socket.
pub fn control_client() -> control::Client {
    control::Client::new(STATE_DIR)
}

/// One control-socket request, its reply as JSON (the agent passes it on to the host).
pub fn control_request(req: &Request) -> Result<Value, control::ControlError> {
    control_client().call_json(req)
}

/// Starts the daemon again; over nbd, hands the kernel its new sockets (over ublk the daemon
/// has taken its devices over by the time its control socket appears).
fn restart(d: &Daemon, reaper: &Reaper) -> Result<Spawned, PoolError> {
    let (s, kernel) = spawn_daemon(reaper, d)?;
    if d.attach == Attach::Ublk {
        return Ok(s);
    }
    let fds: Vec<_> = kernel.iter().map(|k| k.as_fd()).collect();
    NbdClient::open()
        .and_then(|mut c| c.reconfigure(NBD_INDEX, Some(BACKEND), d.dead_conn_timeout_secs, &fds))
        .map_err(|e| fail(format!("nbd reconfigure: {}", units::chain(&e))))?;
    Ok(s)
}

/// Restarts the daemon whenever it exits while the pool is up.
pub(crate) fn supervise(d: Arc<Daemon>, reaper: Arc<Reaper>, first: Receiver<Exit>) {
    let mut exit_rx = first;
    loop {
        let Ok(exit) = exit_rx.recv() else { return };
        *d.last_exit.lock().unwrap_or_else(|p| p.into_inner()) = Some(exit);
        if d.stopping.load(Ordering::SeqCst) {
            crate::say(&format!("pool: daemon exited ({exit:?})"));
            return;
        }
        let n = d.restarts.fetch_add(1, Ordering::SeqCst) + 1;
        crate::say(&format!("pool: daemon exited unexpectedly ({exit:?}); restart #{n}"));
        let t = Instant::now();
        loop {
            if d.stopping.load(Ordering::SeqCst) {
                return;
            }
            match restart(&d, &reaper) {
                Ok(s) => {
                    let what = match d.attach {
                        Attach::Ublk => "its ublk devices taken over",
                        Attach::Nbd => "/dev/nbd0 reconfigured",
                    };
                    crate::say(&format!(
                        "pool: daemon restarted (pid {}), {what} in {:.2}s",
                        s.pid,
                        t.elapsed().as_secs_f64()
                    ));
                    exit_rx = s.exit;
                    break;
                }
                Err(e) => {
                    crate::say(&format!("pool: restart failed: {e}; retrying in 1 s"));
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }
}

/// The first 64 KiB of `dev`: XFS superblock, all zeroes, or something else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contents {
    Xfs,
    Empty,
    Other,
}

pub(crate) fn probe(dev: &Path) -> std::io::Result<Contents> {
    use std::io::Read;
    let mut buf = vec![0u8; 64 << 10];
    std::fs::File::open(dev)?.read_exact(&mut buf)?;
    Ok(if buf.starts_with(b"XFSB") {
        Contents::Xfs
    } else if buf.iter().all(|&b| b == 0) {
        Contents::Empty
    } else {
        Contents::Other
    })
}

/// XFS usage of the mounted store.
fn xfs_usage() -> Option<Value> {
    let st = rustix::fs::statvfs(MOUNT).ok()?;
    let bs = st.f_frsize;
    Some(json!({
        "mount": MOUNT,
        "total_bytes": st.f_blocks * bs,
        "free_bytes": st.f_bfree * bs,
        "available_bytes": st.f_bavail * bs,
        "files": st.f_files,
        "files_free": st.f_ffree,
    }))
}

/// The agent's `status.pool`, asked live from the daemon and the filesystem.
pub fn live_status() -> Value {
    let ask = |req| control_request(&req).unwrap_or_else(|e| json!({"error": units::chain(&e)}));
    json!({
        "pool": ask(Request::Status),
        "volumes": ask(Request::List),
        "xfs": xfs_usage(),
        "store": attach::status(),
    })
}

impl Pool {
    /// A pool not brought up yet, whose helpers run under `reaper`.
    pub fn new(reaper: Arc<Reaper>) -> Pool {
        Pool { reaper: Some(reaper), ..Pool::default() }
    }

    /// Whether the store's XFS is mounted.
    pub fn is_up(&self) -> bool {
        self.wired
    }

    /// The agent's `status.pool` (`null` when the pool is not up).
    pub fn status(&self) -> Option<Value> {
        self.wired.then(live_status)
    }

    /// For the READY line.
    pub fn summary(&self) -> String {
        if self.wired {
            format!(
                "pool: store on {}{} ({} GiB) at {MOUNT} over {}",
                self.device.as_deref().unwrap_or(Path::new("?")).display(),
                if self.crypt { " (LUKS2)" } else { "" },
                self.size.div_floor(Bytes::GIB),
                dev_list(&self.devices)
            )
        } else {
            "pool: not up".into()
        }
    }

    pub fn unmount_overlays(&mut self) -> Step {
        Step::Skipped("no overlays mounted by init")
    }

    /// syncfs + unmount /var/lib/lamina (fallback: remount read-only).
    pub fn unmount_filesystem(&mut self) -> Step {
        if !self.mounted {
            return Step::Skipped("not mounted");
        }
        use rustix::mount::{mount_remount, unmount, MountFlags, UnmountFlags};
        if let Ok(f) = std::fs::File::open(MOUNT) {
            let _ = rustix::fs::syncfs(&f);
        }
        match unmount(MOUNT, UnmountFlags::empty()) {
            Ok(()) => {
                self.mounted = false;
                Step::Done(format!("{MOUNT} unmounted"))
            }
            // Someone unmounted it already (a debug session, the guest benchmark).
            Err(rustix::io::Errno::INVAL) if !mounted_at(MOUNT) => {
                self.mounted = false;
                Step::Skipped("unmounted already")
            }
            Err(e) => match mount_remount(MOUNT, MountFlags::RDONLY, "") {
                Ok(()) => Step::Failed(format!("unmount {MOUNT}: {e}; remounted read-only")),
                Err(e2) => Step::Failed(format!("unmount {MOUNT}: {e}; remount ro: {e2}")),
            },
        }
    }

    /// Detaches the store: ublk: the daemon deletes its device; nbd: NBD_CMD_DISCONNECT, after
    /// which the daemon commits and exits.
    pub fn detach_store(&mut self) -> Step {
        let Some(d) = self.daemon.clone() else {
            return Step::Skipped("not attached");
        };
        if d.attach == Attach::Nbd {
            d.stopping.store(true, Ordering::SeqCst);
        }
        if !self.attached {
            return Step::Skipped("not attached");
        }
        if self.crypt {
            match self.reaper.as_deref().map(crate::luks::close) {
                Some(Ok(_)) => self.crypt = false,
                Some(Err(e)) => return Step::Failed(e.to_string()),
                None => {}
            }
        }
        let r = match d.attach {
            Attach::Ublk => attach::ublk_detach(STORE)
                .map(|dev| format!("{} deleted", dev.display()))
                .map_err(|e| format!("ublk detach {STORE}: {}", units::chain(&e))),
            Attach::Nbd => NbdClient::open()
                .and_then(|mut c| c.disconnect(NBD_INDEX))
                .map(|()| format!("/dev/nbd{NBD_INDEX} disconnected"))
                .map_err(|e| format!("nbd disconnect: {}", units::chain(&e))),
        };
        match r {
            Ok(done) => {
                self.attached = false;
                attach::forget();
                Step::Done(done)
            }
            Err(e) => Step::Failed(e),
        }
    }

    /// Waits for `thinpool serve` to commit and exit (SIGTERM if it has not begun to).
    pub fn stop_daemon(&mut self) -> Step {
        let (Some(d), Some(reaper)) = (&self.daemon, &self.reaper) else {
            return Step::Skipped("no daemon");
        };
        d.stopping.store(true, Ordering::SeqCst);
        let pid = d.pid.load(Ordering::SeqCst) as i32;
        let t = Instant::now();
        let finished = |s: &Option<JoinHandle<()>>| s.as_ref().is_none_or(|h| h.is_finished());
        // Over nbd, give it a moment to notice the disconnect by itself, then ask.
        let mut termed = false;
        while !finished(&self.supervisor) && t.elapsed() < Duration::from_secs(30) {
            let _ = reaper.reap();
            // Over ublk nothing tells the daemon to go (its device was deleted): ask at once.
            if !termed && (d.attach == Attach::Ublk || t.elapsed() > Duration::from_secs(2)) {
                if let Some(p) = rustix::process::Pid::from_raw(pid) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
                }
                termed = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !finished(&self.supervisor) {
            return Step::Failed(format!("daemon pid {pid} still running after 30 s"));
        }
        if let Some(h) = self.supervisor.take() {
            let _ = h.join();
        }
        let exit = *d.last_exit.lock().unwrap_or_else(|p| p.into_inner());
        let how = format!("pid {pid} exited {exit:?} after {:.2}s", t.elapsed().as_secs_f64());
        match exit {
            Some(Exit::Code(0)) => Step::Done(how),
            _ => Step::Failed(how),
        }
    }
}

/// Hands the socketpairs' client ends to the kernel nbd client (`lamina.attach=nbd`);
/// returns `/dev/nbd0`.
pub(crate) fn attach_nbd(
    cfg: &Config,
    size: Bytes,
    kernel: &[OwnedFd],
    step: &dyn Fn(&str),
) -> Result<PathBuf, PoolError> {
    let flags = thinpool::nbd::transmission_flags(false, false);
    let connect = Connect {
        index: Some(NBD_INDEX),
        size_bytes: size.get(),
        block_size: BLOCK_SIZE,
        server_flags: u64::from(flags),
        timeout_secs: REQUEST_TIMEOUT_SECS,
        dead_conn_timeout_secs: cfg.pool.dead_conn_timeout_secs,
        client_flags: 0,
        backend: Some(BACKEND.into()),
    };
    let fds: Vec<_> = kernel.iter().map(|k| k.as_fd()).collect();
    let index = NbdClient::open()
        .and_then(|mut c| c.connect(&connect, &fds))
        .map_err(|e| fail(format!("nbd connect: {}", units::chain(&e))))?;
    let n_conns = fds.len();
    drop(fds);
    let nbd = PathBuf::from(format!("/dev/nbd{index}"));
    let io_timeout = format!("/sys/block/nbd{index}/queue/io_timeout");
    if let Err(e) = std::fs::write(&io_timeout, REQUEUE_CHECK_MS.to_string()) {
        // Still correct, only slower: requests in flight at a daemon crash wait 30 s.
        step(&format!("writing {io_timeout}: {e}"));
    }
    step(&format!("{} attached ({} bytes, {} connection(s))", nbd.display(), size, n_conns));
    Ok(nbd)
}

/// Whether something is mounted at `dir` (per /proc/mounts; mount points there have no
/// spaces or escapes in the appliance).
fn mounted_at(dir: &str) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split(' ').nth(1) == Some(dir)))
        .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_in_name_order() {
        let d = tempfile::tempdir().unwrap();
        for n in ["vdb", "vda", "vdaa", "loop0", "nbd0", "vda1"] {
            std::fs::create_dir(d.path().join(n)).unwrap();
        }
        let got = data_disks(d.path());
        assert_eq!(got, [Path::new("/dev/vda"), Path::new("/dev/vdb"), Path::new("/dev/vdaa")]);
    }

    #[test]
    fn mount_points_are_told_from_plain_directories() {
        assert!(mounted_at("/proc"));
        let d = tempfile::tempdir().unwrap();
        assert!(!mounted_at(d.path().to_str().unwrap()));
    }

    #[test]
    fn probe_tells_xfs_empty_and_other() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("dev");
        std::fs::write(&f, vec![0u8; 65536]).unwrap();
        assert_eq!(probe(&f).unwrap(), Contents::Empty);
        let mut x = vec![0u8; 65536];
        x[..4].copy_from_slice(b"XFSB");
        std::fs::write(&f, &x).unwrap();
        assert_eq!(probe(&f).unwrap(), Contents::Xfs);
        x[..4].copy_from_slice(b"EXT4");
        std::fs::write(&f, &x).unwrap();
        assert_eq!(probe(&f).unwrap(), Contents::Other);
    }
}
