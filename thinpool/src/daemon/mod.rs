//! The pool daemon's frame: exclusive pool lock, listeners, control socket, signal-driven
//! shutdown (commit, then exit).
//!
//! ```text
//! DIR/lock          flock(LOCK_EX) held for the daemon's lifetime; contains its pid
//! DIR/control.sock  management verbs (see [`control`])
//! DIR/ublk.json     volumes served as ublk devices (see [`crate::ublk`])
//! ```

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::export::pool::{ExportScope, PoolCatalog};
use crate::export::Catalog;
use crate::nbd::server::allow::{AllowList, Cidr, ExportAllow};
use crate::nbd::server::tls::{self, Tls, TlsMode};
use crate::nbd::server::{Server, ServerOptions};
use handler::PoolControl;

use crate::service::{PoolSource, Service, ServiceOptions};
use crate::ublk::Devices;

pub mod control;
mod handler;
pub mod kernel;
pub mod transfer;

/// What `thinpool serve` runs with (the binary parses its flags into this).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// TCP address to serve NBD on; "none" disables TCP.
    pub listen: String,
    /// Also serve NBD on this unix socket.
    pub socket: Option<PathBuf>,
    /// Volumes exported read-only (comma-separated names).
    pub read_only: Vec<String>,
    /// TCP clients allowed to connect (comma-separated CIDRs; default: everyone). Unix-socket
    /// clients are always allowed.
    pub allow: Vec<Cidr>,
    /// Per export: the only TCP clients that may see it.
    pub export_allow: Vec<ExportAllow>,
    /// Volumes never offered to NBD clients (only to `--kernel-fd` attaches).
    pub local_only: Vec<String>,
    /// Every volume, or only those created for export.
    pub exports: ExportScope,
    /// Most NBD connections served at once.
    pub max_connections: usize,
    /// Most NBD connections one client address may hold.
    pub max_per_address: usize,
    /// STARTTLS: off, on (optional) or require.
    pub tls: TlsMode,
    /// Certificates directory (ca-cert.pem, server-cert.pem, server-key.pem).
    pub tls_certificates: Option<PathBuf>,
    /// Require a client certificate signed by the directory's CA.
    pub tls_verify_peer: bool,
    /// Worker threads per NBD connection.
    pub workers: usize,
    /// Where the lock, control socket and event log live when POOL is a device list (a pool
    /// or group directory keeps them inside itself).
    pub state_dir: Option<PathBuf>,
    /// File pools: let autoextend grow the data file up to this size (e.g. 100G).
    pub data_max: Option<crate::units::Bytes>,
    /// Serve EXPORT to the kernel nbd client on inherited socket FD (no handshake; see
    /// daemon::kernel). Repeatable.
    pub kernel_fd: Vec<kernel::KernelFd>,
    /// Set PR_SET_IO_FLUSHER and mlockall: for a daemon whose clients' filesystems live in
    /// the same machine (the appliance).
    pub io_flusher: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:10809".into(),
            socket: None,
            read_only: Vec::new(),
            allow: Vec::new(),
            export_allow: Vec::new(),
            local_only: Vec::new(),
            exports: ExportScope::All,
            max_connections: 256,
            max_per_address: 32,
            tls: TlsMode::Off,
            tls_certificates: None,
            tls_verify_peer: false,
            workers: 8,
            state_dir: None,
            data_max: None,
            kernel_fd: Vec::new(),
            io_flusher: false,
        }
    }
}

impl ServeConfig {
    /// The server's options; loads the TLS certificates when TLS is on.
    pub fn server_options(&self) -> Result<ServerOptions, DaemonError> {
        let tls = match (self.tls, &self.tls_certificates) {
            (TlsMode::Off, _) => None,
            (mode, Some(dir)) => {
                let config = tls::load(dir, self.tls_verify_peer).map_err(DaemonError::Tls)?;
                Some(Tls { mode, config })
            }
            (_, None) => {
                return Err(DaemonError::Config("--tls needs --tls-certificates DIR".into()))
            }
        };
        // A volume this machine attached itself (its filesystem is mounted here) is never
        // writable to anyone else: a remote write would corrupt it under the kernel's feet.
        let read_only = self.read_only.iter().chain(self.kernel_fd.iter().map(|k| &k.export));
        Ok(ServerOptions {
            read_only: read_only.cloned().collect(),
            hidden: self.local_only.iter().cloned().collect(),
            allow: AllowList(self.allow.clone()),
            export_allow: self
                .export_allow
                .iter()
                .map(|e| (e.export.clone(), e.allow.clone()))
                .collect(),
            max_connections: self.max_connections,
            max_per_address: self.max_per_address,
            workers: self.workers.max(1),
            tls,
            ..ServerOptions::default()
        })
    }

    /// The TCP address, or `None` when TCP is disabled.
    pub fn tcp_addr(&self) -> Result<Option<SocketAddr>, DaemonError> {
        if self.listen == "none" || self.listen.is_empty() {
            return Ok(None);
        }
        self.listen.parse().map(Some).map_err(|_| {
            DaemonError::Config(format!("--listen {:?} is not an address", self.listen))
        })
    }
}

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("pool {dir} is in use by pid {pid}")]
    InUse { dir: PathBuf, pid: u32 },
    #[error("{what} {path}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid configuration: --tls-certificates")]
    Tls(#[source] tls::TlsError),
    #[error("pool")]
    Pool(#[source] crate::service::Error),
    #[error("pool: final commit")]
    FinalCommit(#[source] crate::service::Error),
}

/// An exclusive lock on a pool directory, held while the value lives.
pub struct PoolLock {
    _file: File,
    path: PathBuf,
}

impl PoolLock {
    pub fn lock_path(dir: &Path) -> PathBuf {
        dir.join("lock")
    }

    /// Takes the lock or reports who holds it.
    pub fn acquire(dir: &Path) -> Result<PoolLock, DaemonError> {
        use rustix::fs::{flock, FlockOperation};
        let path = Self::lock_path(dir);
        let io = |what, source| DaemonError::Io { what, path: path.clone(), source };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("opening lock file", e))?;
        if let Err(e) = flock(&file, FlockOperation::NonBlockingLockExclusive) {
            if e == rustix::io::Errno::WOULDBLOCK {
                let pid = read_pid(&mut file).unwrap_or(0);
                return Err(DaemonError::InUse { dir: dir.to_owned(), pid });
            }
            return Err(io("locking", e.into()));
        }
        file.set_len(0).map_err(|e| io("writing pid to", e))?;
        file.rewind().map_err(|e| io("writing pid to", e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| io("writing pid to", e))?;
        Ok(PoolLock { _file: file, path })
    }

    /// The pid holding the lock on `dir`, if any process does (the lock file is not changed).
    pub fn holder(dir: &Path) -> Option<u32> {
        use rustix::fs::{flock, FlockOperation};
        let mut file = File::open(Self::lock_path(dir)).ok()?;
        match flock(&file, FlockOperation::NonBlockingLockShared) {
            Ok(()) => None,
            Err(_) => Some(read_pid(&mut file).unwrap_or(0)),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    s.trim().parse().ok()
}

/// Opens the pool at `pool` (a pool directory, a group directory, or a comma-separated device
/// list) exclusively and serves its volumes over NBD until SIGTERM or SIGINT; then lets
/// clients finish, commits, and returns.
pub fn serve(pool: &Path, cfg: ServeConfig) -> Result<(), DaemonError> {
    if let Err(e) = kernel::unblock_stop_signals() {
        tracing::warn!("nbd: unblocking SIGTERM/SIGINT: {e}");
    }
    if cfg.io_flusher {
        // First, before any thread exists: the flag is inherited by threads created later.
        for w in kernel::protect_from_reclaim() {
            tracing::warn!("nbd: {w}");
        }
    }
    kernel::check_unique(&cfg.kernel_fd)?;
    let stop = Arc::new(AtomicBool::new(false));
    stop_on_signals(&stop)?;
    serve_until(pool, &cfg, stop)
}

/// [`serve`] with the stop condition supplied by the caller (tests, embedding). The pool is
/// run by a [`Service`] with its autoextend thread.
pub fn serve_until(
    pool: &Path,
    cfg: &ServeConfig,
    stop: Arc<AtomicBool>,
) -> Result<(), DaemonError> {
    let src = PoolSource::from_arg(pool);
    let state = match (src.default_state_dir(), &cfg.state_dir) {
        (_, Some(d)) => d.clone(),
        (Some(d), None) => d,
        (None, None) => {
            return Err(DaemonError::Config(format!(
                "{} is a device list: give --state-dir for the lock, control socket and events",
                pool.display()
            )))
        }
    };
    std::fs::create_dir_all(&state).map_err(|source| DaemonError::Io {
        what: "creating",
        path: state.clone(),
        source,
    })?;
    let _lock = PoolLock::acquire(&state)?;
    let opts = ServiceOptions {
        state_dir: Some(state.clone()),
        file_data_max: cfg.data_max,
        ..ServiceOptions::default()
    };
    let svc = Service::open(&src, opts).map_err(DaemonError::Pool)?;
    if let Some(why) = svc.read_only() {
        tracing::warn!("nbd: serving the pool read-only: {why}");
    }
    svc.start_autoextend().map_err(DaemonError::Pool)?;
    let catalog = Arc::new(PoolCatalog::with_scope(Arc::new(svc), cfg.exports));
    // ublk devices a previous daemon of this pool served (it died): take them over before
    // anything else, their users are blocked until then.
    let ublk = Arc::new(Devices::new(catalog.clone(), &state));
    for (volume, r) in ublk.recover() {
        if let Err(e) = r {
            tracing::error!("ublk: could not take over {volume}'s device: {}", units::chain(&e));
        }
    }
    let (c2, u2) = (catalog.clone(), ublk.clone());
    serve_catalog(&state, catalog.clone(), cfg, stop, move |conns| {
        Arc::new(PoolControl::new(c2, conns, u2))
    })?;
    ublk.shutdown();
    catalog.commit().map_err(DaemonError::FinalCommit)?;
    tracing::info!("nbd: pool committed, exiting");
    Ok(())
}

/// Counts the NBD connections being served (TCP, unix and kernel).
pub type ConnectionCount = Box<dyn Fn() -> usize + Send + Sync>;

/// Serves `catalog` as configured until `stop` becomes true, with the control socket at
/// `DIR/control.sock` answered by the handler `make_handler` builds (given a counter of the
/// connections served); then shuts the server down (final commit included).
pub fn serve_catalog(
    dir: &Path,
    catalog: Arc<dyn Catalog>,
    cfg: &ServeConfig,
    stop: Arc<AtomicBool>,
    make_handler: impl FnOnce(ConnectionCount) -> Arc<dyn control::Handler>,
) -> Result<(), DaemonError> {
    let tcp = cfg.tcp_addr()?;
    let catalog_for_kernel = catalog.clone();
    let server = Server::new(catalog, cfg.server_options()?);
    let kernel = kernel::start(&catalog_for_kernel, &cfg.kernel_fd, cfg.workers.max(1), &stop)?;
    let (weak, live) = (Arc::downgrade(&server), kernel.live());
    let handler = make_handler(Box::new(move || {
        weak.upgrade().map(|s| s.connections()).unwrap_or(0) + live.load(Ordering::SeqCst)
    }));
    if let Some(addr) = tcp {
        let bound = server.listen_tcp(addr).map_err(|source| DaemonError::Io {
            what: "listening on",
            path: PathBuf::from(addr.to_string()),
            source,
        })?;
        tracing::info!("nbd: serving on {bound}");
    }
    if let Some(sock) = &cfg.socket {
        server.listen_unix(sock).map_err(|source| DaemonError::Io {
            what: "listening on",
            path: sock.clone(),
            source,
        })?;
        tracing::info!("nbd: serving on {}", sock.display());
    }
    let ctl_stop = Arc::new(AtomicBool::new(false));
    let ctl_path = control::socket_path(dir);
    let ctl = control::serve(&ctl_path, handler, ctl_stop.clone()).map_err(|source| {
        DaemonError::Io { what: "creating control socket", path: ctl_path.clone(), source }
    })?;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::info!("nbd: shutting down");
    ctl_stop.store(true, Ordering::SeqCst);
    let _ = ctl.join();
    server.shutdown(Duration::from_secs(10));
    Ok(())
}

/// Sets `flag` on SIGTERM and SIGINT.
pub fn stop_on_signals(flag: &Arc<AtomicBool>) -> Result<(), DaemonError> {
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, flag.clone()).map_err(|source| DaemonError::Io {
            what: "installing signal handler",
            path: PathBuf::from(format!("signal {sig}")),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_locker_learns_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let lock = PoolLock::acquire(dir.path()).unwrap();
        // flock locks belong to the open file description, so a second open in the same
        // process conflicts just like another process would.
        match PoolLock::acquire(dir.path()) {
            Err(DaemonError::InUse { pid, .. }) => assert_eq!(pid, std::process::id()),
            other => panic!("expected InUse, got {:?}", other.map(|_| ())),
        }
        assert_eq!(PoolLock::holder(dir.path()), Some(std::process::id()));
        let msg = PoolLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(msg.contains("in use by pid"), "{msg}");
        drop(lock);
        assert_eq!(PoolLock::holder(dir.path()), None);
        PoolLock::acquire(dir.path()).unwrap();
    }
}
