//! The storage pool as PID 1 brings it up and tears it down.
//!
//! Bring-up, each step on the console:
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

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use thinpool::daemon::control::{self, Request};

use crate::attach::{self, Attach};
use crate::config::Config;
use crate::nbd::NbdClient;
use crate::netlink::nbd::Connect;
use crate::options::StoreOptions;
use crate::reaper::{Exit, Reaper, Spawned};

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

fn fail(msg: impl Into<String>) -> PoolError {
    PoolError::Failed(msg.into())
}

/// What the supervisor and the shutdown steps share.
struct Daemon {
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

/// The pool as PID 1 sees it.
#[derive(Default)]
pub struct Pool {
    wired: bool,
    devices: Vec<PathBuf>,
    size: u64,
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

/// The pool's volumes through the CLI (before the daemon runs).
fn cli_volumes(reaper: &Reaper, devs: &str) -> Result<Vec<Value>, PoolError> {
    let out = run(reaper, &strings(&[THINPOOL, "list", devs, "--json"]), Duration::from_secs(60))?;
    match serde_json::from_str::<Value>(&out) {
        Ok(Value::Array(v)) => Ok(v),
        _ => Err(fail(format!("`thinpool list --json` printed {out:?}"))),
    }
}

/// Starts the daemon with fresh socketpairs; returns it and the kernel's ends.
fn spawn_daemon(reaper: &Reaper, d: &Daemon) -> Result<(Spawned, Vec<OwnedFd>), PoolError> {
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
        .map_err(|e| fail(format!("nbd reconfigure: {e}")))?;
    Ok(s)
}

/// Restarts the daemon whenever it exits while the pool is up.
fn supervise(d: Arc<Daemon>, reaper: Arc<Reaper>, first: Spawned) {
    let mut exit_rx = first.exit;
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
#[derive(Debug, PartialEq, Eq)]
enum Contents {
    Xfs,
    Empty,
    Other,
}

fn probe(dev: &Path) -> std::io::Result<Contents> {
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
    json!({
        "pool": control_request(&Request::Status).unwrap_or_else(|e| json!({"error": e.to_string()})),
        "volumes": control_request(&Request::List).unwrap_or_else(|e| json!({"error": e.to_string()})),
        "xfs": xfs_usage(),
        "store": attach::status(),
    })
}

impl Pool {
    /// Brings the pool up; each step is printed on the console.
    /// `before_mount` is called before the XFS mount (it waits for the filesystem modules).
    pub fn bring_up(
        cfg: &Config,
        opts: &StoreOptions,
        reaper: &Arc<Reaper>,
        before_mount: &mut dyn FnMut(),
    ) -> Result<Pool, PoolError> {
        let mut pool = Pool { reaper: Some(reaper.clone()), ..Pool::default() };
        if !cfg.pool.enabled {
            return Ok(pool);
        }
        let t = Instant::now();
        // Each step with the time since bring-up began, for boot-time analysis.
        let step = |m: &str| crate::say(&format!("pool: {m} [+{:.2}s]", t.elapsed().as_secs_f64()));
        // 1. Disks, volume group, pool.
        let devices = crate::wait::pool_disks(&cfg.pool).map_err(|e| fail(e.to_string()))?;
        let devs = dev_list(&devices);
        pool.devices = devices;
        let key = match crate::luks::find(Path::new("/sys/block")) {
            Some(dev) => {
                let key = PathBuf::from(crate::luks::KEY);
                crate::luks::unpack(&dev, &key).map_err(|e| fail(e.to_string()))?;
                step(&format!("store key from {}", dev.display()));
                crate::luks::KeySource::File(key)
            }
            None if cfg.pool.passphrase_wait_secs > 0 => {
                crate::luks::KeySource::Agent(Duration::from_secs(cfg.pool.passphrase_wait_secs))
            }
            None => crate::luks::KeySource::None,
        };
        let mut argv_base = strings(&[
            THINPOOL,
            "serve",
            &devs,
            "--state-dir",
            STATE_DIR,
            "--listen",
            &format!("0.0.0.0:{}", cfg.pool.nbd_port),
            "--io-flusher",
            // Only volumes created for export reach the network: the store and a storage
            // driver's devices are the appliance's own.
            "--exports",
            "flagged",
        ]);
        if let Some(dev) = crate::nbd_tls::find(Path::new("/sys/block")) {
            let dir = Path::new(crate::nbd_tls::DIR);
            crate::nbd_tls::unpack(&dev, dir).map_err(|e| fail(e.to_string()))?;
            argv_base.extend(crate::nbd_tls::serve_args(dir));
            step(&format!("NBD over TLS only, client certificates checked ({})", dev.display()));
        }
        let d = Arc::new(Daemon {
            argv_base,
            log: cfg.pool.log.clone(),
            connections: cfg.pool.connections.max(1),
            dead_conn_timeout_secs: cfg.pool.dead_conn_timeout_secs,
            attach: cfg.attach,
            pid: AtomicU32::new(0),
            stopping: AtomicBool::new(false),
            restarts: AtomicU32::new(0),
            last_exit: Mutex::new(None),
        });
        // dm.* options given: `thinpool init` checks them against the group (Docker's refusal
        // of a changed direct-lvm setting) before the daemon opens it.
        if let Some(out) = crate::options::check_pool(cfg, opts, reaper, &devs)? {
            step(&out);
            pool.created = out.starts_with("created");
        }
        // Every boot after the first: the daemon opens the pool itself (one process start
        // fewer than asking the CLI first). When it cannot (first boot: no pool, or no
        // `store`), the CLI tells why and lays down what is missing.
        let (spawned, kernel) = match spawn_daemon(reaper, &d) {
            Ok(s) => {
                step(&format!("found the pool on {devs}"));
                s
            }
            Err(first) => {
                let volumes = match cli_volumes(reaper, &devs) {
                    Ok(v) => {
                        step(&format!("found the pool on {devs} ({} volume(s))", v.len()));
                        v
                    }
                    Err(why) => {
                        step(&format!(
                            "no pool on {devs} ({why}); creating one (direct-lvm defaults)"
                        ));
                        let mut argv = strings(&[THINPOOL, "init", STATE_DIR, "--device", &devs]);
                        argv.extend(opts.init_args(&cfg.pool.basesize, cfg.pool.force));
                        let out = run(reaper, &argv, Duration::from_secs(120))?;
                        step(out.trim());
                        pool.created = true;
                        Vec::new()
                    }
                };
                // 2. The base volume.
                if volumes.iter().any(|v| v["name"] == STORE) {
                    step(&format!("daemon did not start ({first}); trying again"));
                } else {
                    let basesize = opts.dm_value("dm.basesize").unwrap_or(&cfg.pool.basesize);
                    let size = units::parse_size(basesize)
                        .map_err(|e| fail(format!("pool.basesize {basesize:?}: {e}")))?;
                    let size = size.to_string();
                    run(
                        reaper,
                        &strings(&[THINPOOL, "create", &devs, STORE, "--size", &size]),
                        Duration::from_secs(60),
                    )?;
                    step(&format!("created volume {STORE} ({basesize})"));
                }
                spawn_daemon(reaper, &d)?
            }
        };
        step(&format!("daemon started (pid {}, NBD on port {})", spawned.pid, cfg.pool.nbd_port));
        pool.daemon = Some(d.clone());
        let mut list = control_client().list().map_err(|e| fail(format!("list: {e}")))?;
        if !list.iter().any(|v| v.name == STORE) {
            // The daemon opened a pool without `store`: `thinpool init` just laid the pool
            // down (dm.* options checked above), and a ublk attach needs nothing at start.
            let basesize = opts.dm_value("dm.basesize").unwrap_or(&cfg.pool.basesize);
            let size = units::parse_size(basesize)
                .map_err(|e| fail(format!("pool.basesize {basesize:?}: {e}")))?;
            control_client()
                .create(STORE, size)
                .map_err(|e| fail(format!("creating volume {STORE}: {}", units::chain(&e))))?;
            step(&format!("created volume {STORE} ({basesize})"));
            list = control_client().list().map_err(|e| fail(format!("list: {e}")))?;
        }
        pool.size = list
            .iter()
            .find(|v| v.name == STORE)
            .map(|v| v.size)
            .ok_or_else(|| fail(format!("volume {STORE} missing from the daemon's list")))?;
        // 3. The store's block device.
        let dev = match cfg.attach {
            Attach::Nbd => {
                let dev = attach_nbd(cfg, &pool, &kernel, &step)?;
                drop(kernel);
                dev
            }
            Attach::Ublk => {
                drop(kernel);
                let dev = attach::ublk_attach(STORE)
                    .map_err(|e| fail(format!("ublk attach {STORE}: {e}")))?;
                step(&format!("{} attached over ublk ({} bytes)", dev.display(), pool.size));
                dev
            }
        };
        pool.attached = true;
        attach::record(cfg.attach, &dev);
        pool.device = Some(dev.clone());
        let nbd = dev;
        let sys = attach::sys_name(&nbd);
        let (d2, r2) = (d.clone(), reaper.clone());
        pool.supervisor = Some(
            std::thread::Builder::new()
                .name("pool-supervisor".into())
                .spawn(move || supervise(d2, r2, spawned))
                .map_err(|e| fail(format!("supervisor thread: {e}")))?,
        );
        // 4. XFS.
        crate::wait::block_device(&sys).map_err(|e| fail(e.to_string()))?;
        if key != crate::luks::KeySource::None {
            // dm-crypt and its crypto modules load in the background with the mount's.
            before_mount();
        }
        let (nbd, crypt, fresh) = crate::luks::unlock_store(&nbd, &key, reaper, &step)?;
        pool.crypt = crypt;
        // A store just formatted LUKS2 decrypts its unwritten blocks to noise: it is new.
        let contents = if fresh {
            Contents::Empty
        } else {
            probe(&nbd).map_err(|e| fail(format!("reading {}: {e}", nbd.display())))?
        };
        match contents {
            Contents::Xfs => step(&format!("{} holds XFS", nbd.display())),
            c @ (Contents::Empty | Contents::Other) => {
                if c == Contents::Other && !cfg.pool.force {
                    return Err(fail(format!(
                        "{} holds something that is not XFS; refusing to format it \
                         (lamina.pool.force=1 overrides)",
                        nbd.display()
                    )));
                }
                let t = Instant::now();
                let nbd_s = nbd.display().to_string();
                let mut argv = strings(&[MKFS_XFS, "-q", "-K", "-n", "ftype=1", "-m", "crc=1"]);
                if c == Contents::Other {
                    argv.push("-f".into());
                }
                argv.push(nbd_s);
                run(reaper, &argv, Duration::from_secs(300))?;
                step(&format!("mkfs.xfs {} in {:.2}s", nbd.display(), t.elapsed().as_secs_f64()));
            }
        }
        std::fs::create_dir_all(MOUNT).map_err(|e| fail(format!("mkdir {MOUNT}: {e}")))?;
        before_mount();
        use rustix::mount::{mount, MountFlags};
        let quota = match mount(&nbd, MOUNT, "xfs", MountFlags::NOATIME, Some(c"prjquota")) {
            Ok(()) => "prjquota",
            Err(e) => {
                step(&format!("mount with prjquota failed ({e}); mounting without quotas"));
                mount(&nbd, MOUNT, "xfs", MountFlags::NOATIME, None)
                    .map_err(|e| fail(format!("mount {} on {MOUNT}: {e}", nbd.display())))?;
                "no quota"
            }
        };
        pool.mounted = true;
        let overlay = Path::new(MOUNT).join("overlay2");
        std::fs::create_dir_all(&overlay)
            .map_err(|e| fail(format!("mkdir {}: {e}", overlay.display())))?;
        step(&format!("XFS on {} mounted at {MOUNT} ({quota})", nbd.display()));
        pool.wired = true;
        step(&format!("up in {:.2}s", t.elapsed().as_secs_f64()));
        Ok(pool)
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
                self.size >> 30,
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
                .map_err(|e| format!("ublk detach {STORE}: {e}")),
            Attach::Nbd => NbdClient::open()
                .and_then(|mut c| c.disconnect(NBD_INDEX))
                .map(|()| format!("/dev/nbd{NBD_INDEX} disconnected"))
                .map_err(|e| format!("nbd disconnect: {e}")),
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
fn attach_nbd(
    cfg: &Config,
    pool: &Pool,
    kernel: &[OwnedFd],
    step: &dyn Fn(&str),
) -> Result<PathBuf, PoolError> {
    let flags = thinpool::nbd::transmission_flags(false, false);
    let connect = Connect {
        index: Some(NBD_INDEX),
        size_bytes: pool.size,
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
        .map_err(|e| fail(format!("nbd connect: {e}")))?;
    let n_conns = fds.len();
    drop(fds);
    let nbd = PathBuf::from(format!("/dev/nbd{index}"));
    let io_timeout = format!("/sys/block/nbd{index}/queue/io_timeout");
    if let Err(e) = std::fs::write(&io_timeout, REQUEUE_CHECK_MS.to_string()) {
        // Still correct, only slower: requests in flight at a daemon crash wait 30 s.
        step(&format!("writing {io_timeout}: {e}"));
    }
    step(&format!("{} attached ({} bytes, {} connection(s))", nbd.display(), pool.size, n_conns));
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
