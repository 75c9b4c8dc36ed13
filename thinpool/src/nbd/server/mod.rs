//! Listeners, connection admission (allowlist, connection caps, handshake deadline), the
//! periodic committer, and shutdown.
//!
//! Threads: one accept thread per listener, one thread per connection for the handshake that
//! then becomes the first of the connection's workers (see [`super::conn`]), and one committer.
//!
//! Admission: a TCP address holds at most `max_per_address` connections. When all
//! `max_connections` slots are taken, a newcomer takes the slot of the connection that has been
//! in its handshake longest (if any is): a client in transmission is never evicted, and clients
//! that trickle their handshake cannot keep a well-behaved one out, since each has at most the
//! handshake deadline (one total deadline, not per read) and is the first to go when slots run
//! out.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::export::{Catalog, Export};
use allow::AllowList;

pub mod allow;
mod conn;
mod contexts;
mod negotiate;
mod reply;
mod splice;
pub mod tls;

pub use negotiate::{transmission_flags, BASE_ALLOCATION, BASE_ALLOCATION_ID};

/// Cap on one option's payload. Options carry at most a name and a few context queries
/// (each string ≤ 4096 bytes); 64 KiB is generous, and a larger claim is a disconnect.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Options accepted in one handshake before the client is judged abusive and dropped.
pub const MAX_OPTIONS: u32 = 1024;

/// Tunables of a server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Exports served read-only whatever the backend says.
    pub read_only: BTreeSet<String>,
    /// Exports not offered at all: not listed, and opening them fails as for an unknown name
    /// (volumes only local clients use, such as the appliance's own store).
    pub hidden: BTreeSet<String>,
    /// TCP clients allowed to connect (empty: all). Unix-socket clients are always allowed.
    pub allow: AllowList,
    /// Per export: the TCP clients that may see it (others find it unknown, and it is not
    /// listed for them). Exports not named here follow `allow` alone.
    pub export_allow: BTreeMap<String, AllowList>,
    /// Connections served at once. When all are taken, a newcomer evicts the connection that
    /// has been in its handshake longest, or is closed right after accept if none is.
    pub max_connections: usize,
    /// Connections one TCP client address may hold at once (in handshake or transmission).
    pub max_per_address: usize,
    /// Time a client has to finish the whole handshake (one deadline, not per read).
    pub handshake_timeout: Duration,
    /// Worker threads per connection (each reads, executes and answers one request at a time).
    pub workers: usize,
    /// How often the committer asks the catalog to commit pending changes.
    pub commit_interval: Duration,
    /// STARTTLS (see [`tls`]); `None` answers it with `ERR_POLICY`.
    pub tls: Option<tls::Tls>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            read_only: BTreeSet::new(),
            hidden: BTreeSet::new(),
            allow: AllowList::default(),
            export_allow: BTreeMap::new(),
            max_connections: 256,
            max_per_address: 32,
            handshake_timeout: Duration::from_secs(10),
            workers: 8,
            commit_interval: Duration::from_millis(500),
            tls: None,
        }
    }
}

/// A connected socket of either family.
pub(crate) enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    pub fn shutdown(&self, how: Shutdown) {
        // Errors mean the socket is already gone, which is what we want.
        let _ = match self {
            Self::Tcp(s) => s.shutdown(how),
            Self::Unix(s) => s.shutdown(how),
        };
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(t),
            Self::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_write_timeout(t),
            Self::Unix(s) => s.set_write_timeout(t),
        }
    }
}

impl AsFd for Sock {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Sock::Tcp(s) => s.as_fd(),
            Sock::Unix(s) => s.as_fd(),
        }
    }
}

impl Read for &Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).read(buf),
            Sock::Unix(s) => (&*s).read(buf),
        }
    }
}

impl Write for &Sock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).write(buf),
            Sock::Unix(s) => (&*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => (&*s).write_vectored(bufs),
            Sock::Unix(s) => (&*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Logs at most a burst of client-triggerable warnings per second, then counts the rest.
pub(crate) struct RateLog {
    state: Mutex<(Instant, u32, u64)>,
}

impl RateLog {
    const BURST: u32 = 20;

    pub fn new() -> Self {
        Self { state: Mutex::new((Instant::now(), 0, 0)) }
    }

    pub fn warn(&self, args: std::fmt::Arguments<'_>) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.0.elapsed() >= Duration::from_secs(1) {
            if st.2 > 0 {
                tracing::warn!(suppressed = st.2, "nbd: client errors suppressed by rate limit");
            }
            *st = (Instant::now(), 0, 0);
        }
        if st.1 < Self::BURST {
            st.1 += 1;
            tracing::warn!("nbd: {args}");
        } else {
            st.2 += 1;
        }
    }
}

/// One open connection as admission sees it.
struct Slot {
    sock: Arc<Sock>,
    /// TCP peer address (none for unix-socket clients).
    ip: Option<IpAddr>,
    /// When its handshake started; `None` once it is in transmission.
    handshaking: Option<Instant>,
}

/// State shared by all connections of a server.
pub(crate) struct Shared {
    pub catalog: Arc<dyn Catalog>,
    pub opts: ServerOptions,
    pub shutting_down: AtomicBool,
    pub log: RateLog,
    conns: Mutex<HashMap<u64, Slot>>,
    next_id: AtomicU64,
}

impl Shared {
    /// Marks connection `id` as in transmission, never to be evicted; false when it was
    /// evicted while its handshake ran. Called before the reply that ends the handshake, as
    /// a client may open its next connection the moment it reads that reply.
    pub(crate) fn start_transmission(&self, id: u64) -> bool {
        let mut conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        conns.get_mut(&id).map(|slot| slot.handshaking = None).is_some()
    }

    pub fn is_read_only(&self, name: &str, export: &dyn Export) -> bool {
        export.read_only() || self.opts.read_only.contains(name)
    }

    /// Whether the export policy offers `name` to a client at `peer` (None: unix socket).
    pub fn visible(&self, name: &str, peer: Option<IpAddr>) -> bool {
        if self.opts.hidden.contains(name) {
            return false;
        }
        match (self.opts.export_allow.get(name), peer) {
            (Some(list), Some(ip)) => list.allows(ip),
            _ => true,
        }
    }
}

/// A running NBD server: listeners, connections and the committer.
pub struct Server {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    unix_paths: Mutex<Vec<PathBuf>>,
}

impl Server {
    /// Creates a server and starts its committer thread.
    pub fn new(catalog: Arc<dyn Catalog>, opts: ServerOptions) -> Arc<Self> {
        let shared = Arc::new(Shared {
            catalog,
            opts,
            shutting_down: AtomicBool::new(false),
            log: RateLog::new(),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        });
        let server = Arc::new(Self {
            shared: shared.clone(),
            threads: Mutex::new(Vec::new()),
            unix_paths: Mutex::new(Vec::new()),
        });
        let committer = std::thread::Builder::new()
            .name("nbd-commit".into())
            .spawn(move || committer(&shared))
            .expect("spawning the committer thread");
        server.threads.lock().unwrap_or_else(|e| e.into_inner()).push(committer);
        server
    }

    /// Binds `addr` (port 0 picks one) and serves it on a background thread.
    pub fn listen_tcp(self: &Arc<Self>, addr: SocketAddr) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        let shared = self.shared.clone();
        let t = std::thread::Builder::new().name("nbd-accept-tcp".into()).spawn(move || {
            accept_loop(&shared, &listener, |l| {
                let (s, peer) = l.accept()?;
                Ok((Sock::Tcp(s), Some(peer)))
            })
        })?;
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).push(t);
        Ok(local)
    }

    /// Binds a unix socket at `path` (replacing a stale one) and serves it.
    pub fn listen_unix(self: &Arc<Self>, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let listener = UnixListener::bind(path)?;
        self.unix_paths.lock().unwrap_or_else(|e| e.into_inner()).push(path.to_owned());
        let shared = self.shared.clone();
        let t = std::thread::Builder::new().name("nbd-accept-unix".into()).spawn(move || {
            accept_loop(&shared, &listener, |l| {
                let (s, _) = l.accept()?;
                Ok((Sock::Unix(s), None))
            })
        })?;
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).push(t);
        Ok(())
    }

    /// Serves one already-connected unix-socket client from the handshake on, as a listener
    /// would (socket activation, an embedding that accepts itself, the handshake fuzzer).
    /// Returns the connection's thread (dropping it detaches it), `None` when refused.
    pub fn serve_unix(self: &Arc<Self>, stream: UnixStream) -> Option<JoinHandle<()>> {
        spawn_connection(&self.shared, Sock::Unix(stream), None, "unix".to_owned())
    }

    /// Number of connections currently open.
    pub fn connections(&self) -> usize {
        self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Stops accepting, lets every connection finish its in-flight requests (new options get
    /// `ERR_SHUTDOWN`), waits up to `grace` for them to close, then commits once more.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.shutting_down.store(true, Ordering::SeqCst);
        for s in self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).values() {
            s.sock.shutdown(Shutdown::Read);
        }
        let deadline = Instant::now() + grace;
        while self.connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for s in self.shared.conns.lock().unwrap_or_else(|e| e.into_inner()).values() {
            s.sock.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
        if let Err(e) = self.shared.catalog.commit_if_dirty() {
            tracing::error!("nbd: final commit failed: {}", crate::units::chain(&e));
        }
        for p in self.unix_paths.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn committer(shared: &Shared) {
    let mut failing = false;
    let mut last = Instant::now();
    while !shared.shutting_down.load(Ordering::SeqCst) {
        // Sleep in short steps so shutdown is prompt; commit at the configured interval.
        std::thread::sleep(shared.opts.commit_interval.min(Duration::from_millis(100)));
        if last.elapsed() < shared.opts.commit_interval {
            continue;
        }
        last = Instant::now();
        match shared.catalog.commit_if_dirty() {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                tracing::error!("nbd: periodic commit failed: {}", crate::units::chain(&e));
                failing = true;
            }
            Err(_) => {}
        }
    }
}

fn accept_loop<L: AsFd>(
    shared: &Arc<Shared>,
    listener: &L,
    accept: impl Fn(&L) -> io::Result<(Sock, Option<SocketAddr>)>,
) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let tick = Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
    while !shared.shutting_down.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::error!("nbd: poll on listener failed: {e}");
                return;
            }
        }
        let (sock, peer) = match accept(listener) {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                shared.log.warn(format_args!("accept failed: {e}"));
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if let Some(peer) = peer {
            if !shared.opts.allow.allows(peer.ip()) {
                shared.log.warn(format_args!("refused {peer}: not in the allowlist"));
                continue;
            }
        }
        let who = peer.map(|p| p.to_string()).unwrap_or_else(|| "unix".to_owned());
        // Detached: the connection ends on its own (the registry tracks it).
        drop(spawn_connection(shared, sock, peer.map(|p| p.ip()), who));
    }
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    PerAddress,
    Full,
}

/// Takes a slot for a new connection (see the module doc), evicting the longest handshake
/// when the server is full.
fn admit(shared: &Shared, id: u64, sock: &Arc<Sock>, ip: Option<IpAddr>) -> Result<(), Refusal> {
    let mut conns = shared.conns.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(ip) = ip {
        let same = conns.values().filter(|s| s.ip == Some(ip)).count();
        if same >= shared.opts.max_per_address {
            return Err(Refusal::PerAddress);
        }
    }
    if conns.len() >= shared.opts.max_connections {
        let oldest = conns
            .iter()
            .filter_map(|(id, s)| s.handshaking.map(|t| (t, *id)))
            .min()
            .map(|(_, id)| id);
        let Some(victim) = oldest.and_then(|id| conns.remove(&id)) else {
            return Err(Refusal::Full);
        };
        // Its thread sees the socket fail and ends; removing its slot again is harmless.
        victim.sock.shutdown(Shutdown::Both);
        shared.log.warn(format_args!("server full: evicted a connection still in its handshake"));
    }
    let slot = Slot { sock: sock.clone(), ip, handshaking: Some(Instant::now()) };
    conns.insert(id, slot);
    Ok(())
}

/// Admits and starts a connection; its thread, or `None` when refused or not started.
fn spawn_connection(
    shared: &Arc<Shared>,
    sock: Sock,
    ip: Option<IpAddr>,
    who: String,
) -> Option<JoinHandle<()>> {
    let sock = Arc::new(sock);
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    if let Err(why) = admit(shared, id, &sock, ip) {
        let why = match why {
            Refusal::PerAddress => "connection limit per address reached",
            Refusal::Full => "connection limit reached",
        };
        shared.log.warn(format_args!("refused {who}: {why}"));
        sock.shutdown(Shutdown::Both);
        return None;
    }
    let shared2 = shared.clone();
    let res = std::thread::Builder::new().name("nbd-conn".into()).spawn(move || {
        serve_client(&shared2, id, &sock, ip, &who);
        sock.shutdown(Shutdown::Both);
        shared2.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    });
    match res {
        Ok(t) => Some(t),
        Err(e) => {
            shared.log.warn(format_args!("cannot spawn a connection thread: {e}"));
            shared.conns.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            None
        }
    }
}

fn serve_client(shared: &Arc<Shared>, id: u64, sock: &Arc<Sock>, peer: Option<IpAddr>, who: &str) {
    if let Sock::Tcp(t) = &**sock {
        let _ = t.set_nodelay(true);
    }
    let deadline = Instant::now() + shared.opts.handshake_timeout;
    let hs = match negotiate::negotiate(shared, id, sock, peer, deadline) {
        Ok(Some(hs)) => hs,
        Ok(None) => return,
        Err(e) => {
            shared.log.warn(format_args!("{who}: handshake ended: {}", crate::units::chain(&e)));
            return;
        }
    };
    // Transmission has no deadline: a client may pause, or stop reading replies for a while.
    if sock.set_read_timeout(None).is_err() || sock.set_write_timeout(None).is_err() {
        return;
    }
    tracing::debug!("nbd: {who} serving export {:?}", hs.neg.name);
    let Some(tls) = hs.tls else {
        conn::serve(sock.clone(), hs.neg, shared.opts.workers, &shared.log);
        return;
    };
    // Over TLS, transmission runs on a socketpair that the relay connects to the session.
    let (outer, inner) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            shared.log.warn(format_args!("{who}: cannot make a socketpair for TLS: {e}"));
            return;
        }
    };
    std::thread::scope(|s| {
        let inner_sock = Arc::new(Sock::Unix(inner));
        let workers = shared.opts.workers;
        let log = &shared.log;
        s.spawn(move || conn::serve(inner_sock, hs.neg, workers, log));
        if let Err(e) = tls::relay(sock, tls, &outer) {
            shared.log.warn(format_args!("{who}: TLS session ended: {e}"));
        }
        // However the relay ended, the transmission side must see EOF.
        let _ = outer.shutdown(Shutdown::Both);
    });
}

/// Serves `export` on an already-connected socket with no handshake: the peer (the Linux
/// kernel after an ioctl/netlink attach) speaks transmission with compact requests and simple
/// replies. Returns when the peer disconnects. `read_only` forces EPERM on writes.
pub fn serve_connected(
    stream: UnixStream,
    export: Arc<dyn Export>,
    read_only: bool,
    workers: usize,
) {
    let log = RateLog::new();
    let ro = read_only || export.read_only();
    let neg = negotiate::Negotiated::kernel(export, ro);
    let sock = Arc::new(Sock::Unix(stream));
    conn::serve(sock.clone(), neg, workers, &log);
    sock.shutdown(Shutdown::Both);
}

/// Transmission flags a kernel attach must pass (NBD_ATTR_SERVER_FLAGS) for `export` served by
/// [`serve_connected`].
pub fn kernel_flags(export: &dyn Export, read_only: bool) -> u16 {
    negotiate::transmission_flags(read_only || export.read_only(), false)
}
