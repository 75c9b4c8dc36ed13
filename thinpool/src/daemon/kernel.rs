//! Serving the kernel nbd client over inherited socket ends (`thinpool serve --kernel-fd
//! FD:EXPORT`), and protecting the daemon from memory-reclaim deadlocks (`--io-flusher`).
//!
//! The appliance's PID 1 makes one `socketpair(AF_UNIX, SOCK_STREAM)` per kernel connection,
//! starts the daemon with one end of each inherited, and hands the other ends to the kernel
//! with generic-netlink NBD_CMD_CONNECT (Linux include/uapi/linux/nbd-netlink.h). The kernel speaks only transmission, so each
//! inherited end is served with [`serve_connected`] on the export opened through the daemon's
//! own catalog: writes go through the pool's Service like any TCP client's.
//!
//! When the filesystem on `/dev/nbdN` lives in the same machine as this daemon, writeback can
//! wait for the daemon while the daemon waits for reclaim (why prctl(2) has PR_SET_IO_FLUSHER,
//! since Linux 5.6, for userspace block drivers):
//! [`protect_from_reclaim`] sets PR_SET_IO_FLUSHER and locks the daemon's memory.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use super::DaemonError;
use crate::export::Catalog;
use crate::nbd::server::serve_connected;

/// One `--kernel-fd FD:EXPORT` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFd {
    pub fd: i32,
    pub export: String,
}

/// Why a `--kernel-fd` argument or its descriptor was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelFdError {
    #[error("--kernel-fd {0:?}: expected FD:EXPORT")]
    Syntax(String),
    #[error("--kernel-fd {0:?}: need a descriptor >= 3 (not stdio) and an export name")]
    Range(String),
    #[error("fd {fd}: {why}")]
    Descriptor { fd: i32, why: &'static str, errno: Option<rustix::io::Errno> },
}

impl FromStr for KernelFd {
    type Err = KernelFdError;

    fn from_str(s: &str) -> Result<Self, KernelFdError> {
        let (fd, export) = s.split_once(':').ok_or_else(|| KernelFdError::Syntax(s.into()))?;
        let fd: i32 = fd.parse().map_err(|_| KernelFdError::Syntax(s.into()))?;
        // 0..2 are stdio: never take them over.
        if fd < 3 || export.is_empty() {
            return Err(KernelFdError::Range(s.into()));
        }
        Ok(Self { fd, export: export.to_owned() })
    }
}

/// The kernel connections being served.
pub struct KernelConnections {
    pub threads: Vec<JoinHandle<()>>,
    live: Arc<AtomicUsize>,
}

impl KernelConnections {
    /// A counter of the connections still served (shared with the serving threads).
    pub fn live(&self) -> Arc<AtomicUsize> {
        self.live.clone()
    }
}

/// Starts one thread per inherited socket end, each serving its export until the kernel
/// disconnects. Every fd is checked (a stream socket we own) before any thread starts.
///
/// When a kernel connection ends, `stop` is set: the daemon exists for that client, so it
/// commits and exits, and its supervisor restarts it and hands the kernel new sockets
/// (NBD_CMD_RECONFIGURE). This covers the kernel dropping a socket after a request timeout
/// as well as the disconnect at shutdown.
pub fn start(
    catalog: &Arc<dyn Catalog>,
    fds: &[KernelFd],
    workers: usize,
    stop: &Arc<AtomicBool>,
) -> Result<KernelConnections, DaemonError> {
    let mut ready = Vec::with_capacity(fds.len());
    for k in fds {
        // The kernel's page cache outlives this process: every acknowledged mapping change
        // must be committed before its reply, or a crash of the daemon loses data the guest
        // already marked clean (see Catalog::open_for_local_client).
        let export = catalog.open_for_local_client(&k.export).ok_or_else(|| {
            DaemonError::Config(format!("--kernel-fd {}: no volume {:?}", k.fd, k.export))
        })?;
        let stream = adopt::unix_stream(k.fd).map_err(|e| {
            let errno = match &e {
                KernelFdError::Descriptor { errno: Some(n), .. } => format!(" ({n})"),
                _ => String::new(),
            };
            DaemonError::Config(format!("--kernel-fd {}: {e}{errno}", k.fd))
        })?;
        ready.push((k.clone(), stream, export));
    }
    let mut threads = Vec::with_capacity(ready.len());
    let live = Arc::new(AtomicUsize::new(ready.len()));
    for (k, stream, export) in ready {
        let name = format!("nbd-kernel-{}", k.fd);
        let stop = stop.clone();
        let live2 = live.clone();
        tracing::info!("nbd: serving {:?} to the kernel on fd {}", k.export, k.fd);
        let t = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                serve_connected(stream, export, false, workers);
                live2.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!("nbd: kernel connection on fd {} ended; stopping", k.fd);
                stop.store(true, Ordering::SeqCst);
            })
            .map_err(|source| DaemonError::Io { what: "spawning", path: name.into(), source })?;
        threads.push(t);
    }
    Ok(KernelConnections { threads, live })
}

/// PR_SET_IO_FLUSHER (allocations never recurse into filesystem/block I/O; dirty throttling
/// only counts our own pages) and mlockall (no page faults into reclaim): what is mapped now
/// is populated and locked (MCL_CURRENT), later mappings lock each page as it is first touched
/// (MCL_FUTURE|MCL_ONFAULT). Plain MCL_FUTURE would populate every new mapping in full, e.g.
/// each thread's whole 2 MiB stack, which costs boot time and memory for pages never used.
/// Call before spawning threads: the flag is per task and inherited by new threads.
/// Failures are returned as warnings: the daemon still works, only less safely.
pub fn protect_from_reclaim() -> Vec<String> {
    use rustix::mm::{mlockall, MlockAllFlags};
    let mut warnings = Vec::new();
    if let Err(e) = rustix::process::configure_io_flusher_behavior(true) {
        warnings.push(format!("prctl(PR_SET_IO_FLUSHER): {e}"));
    }
    // The second call keeps the first one's locks (without MCL_CURRENT it leaves the current
    // mappings alone) and changes only the rule for future mappings.
    if let Err(e) = mlockall(MlockAllFlags::CURRENT) {
        warnings.push(format!("mlockall(MCL_CURRENT): {e}"));
    }
    if let Err(e) = mlockall(MlockAllFlags::FUTURE | MlockAllFlags::ONFAULT) {
        warnings.push(format!("mlockall(MCL_FUTURE|MCL_ONFAULT): {e}"));
    }
    warnings
}

/// Unblocks SIGTERM and SIGINT in the calling thread (threads spawned later inherit it). A
/// parent may hand its children a blocked mask: the appliance's PID 1 blocks every signal
/// into its signalfd and its children inherit that across exec, so without this the daemon
/// never saw the SIGTERM that asks it to commit and exit. Call before spawning threads.
pub fn unblock_stop_signals() -> Result<(), std::io::Error> {
    mask::unblock(&[libc::SIGTERM, libc::SIGINT])
}

mod mask {
    //! pthread_sigmask, which rustix does not offer outside its runtime module.
    #![allow(unsafe_code)]

    pub fn unblock(signals: &[i32]) -> Result<(), std::io::Error> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, exclusively borrowed sigset_t.
        unsafe { libc::sigemptyset(&mut set) };
        for &s in signals {
            // SAFETY: as above; an invalid signal number makes sigaddset fail, checked.
            if unsafe { libc::sigaddset(&mut set, s) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is initialised; a null old-set pointer is allowed.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) };
        if r != 0 {
            return Err(std::io::Error::from_raw_os_error(r));
        }
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        /// Whether `sig` is blocked in the calling thread.
        fn blocked(sig: i32) -> bool {
            // SAFETY: plain data, initialised by pthread_sigmask (a null new set only queries).
            let mut cur: libc::sigset_t = unsafe { std::mem::zeroed() };
            // SAFETY: valid pointers to an exclusively borrowed sigset_t.
            unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut cur) };
            // SAFETY: `cur` was filled in above.
            unsafe { libc::sigismember(&cur, sig) == 1 }
        }

        #[test]
        fn a_blocked_sigterm_is_unblocked() {
            // In a thread of its own: the mask is per thread, the test harness's stays alone.
            std::thread::spawn(|| {
                // SAFETY: as in `unblock`, with SIG_BLOCK.
                let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
                // SAFETY: valid, exclusively borrowed sigset_t; null old set allowed.
                unsafe {
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGTERM);
                    libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                }
                assert!(blocked(libc::SIGTERM));
                super::unblock(&[libc::SIGTERM, libc::SIGINT]).unwrap();
                assert!(!blocked(libc::SIGTERM) && !blocked(libc::SIGINT));
            })
            .join()
            .unwrap();
        }
    }
}

mod adopt {
    //! Taking ownership of a file descriptor inherited from the parent process.
    #![allow(unsafe_code)]

    use std::os::fd::{AsFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;

    use super::KernelFdError;

    /// Adopts inherited `fd` as a Unix stream socket. Checked first with fstat (a socket) and
    /// getsockopt(SO_TYPE) (stream) on a borrowed view, so a wrong number fails cleanly.
    pub fn unix_stream(fd: i32) -> Result<UnixStream, KernelFdError> {
        let bad = |why, errno| KernelFdError::Descriptor { fd, why, errno };
        // SAFETY: `fd` comes from our command line, whose contract is that the parent left it
        // open for us; fcntl(F_GETFD) below fails with EBADF if it is not an open descriptor.
        // The borrow does not outlive this function.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        rustix::io::fcntl_getfd(borrowed).map_err(|e| bad("not an open descriptor", Some(e)))?;
        let st = rustix::fs::fstat(borrowed).map_err(|e| bad("fstat failed", Some(e)))?;
        if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
            return Err(bad("not a socket", None));
        }
        let ty = rustix::net::sockopt::socket_type(borrowed.as_fd())
            .map_err(|e| bad("getsockopt(SO_TYPE) failed", Some(e)))?;
        if ty != rustix::net::SocketType::STREAM {
            return Err(bad("not a stream socket", None));
        }
        // SAFETY: the descriptor is open (checked above) and nothing else in this process
        // owns it: the parent passed it for this one purpose, and start() adopts each fd once
        // (duplicates in the arguments are rejected by the caller's check below).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        rustix::io::fcntl_setfd(&owned, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| bad("fcntl(F_SETFD) failed", Some(e)))?;
        Ok(UnixStream::from(owned))
    }
}

/// Rejects an fd given twice (it would be owned twice).
pub fn check_unique(fds: &[KernelFd]) -> Result<(), DaemonError> {
    let mut seen = std::collections::HashSet::new();
    for k in fds {
        if !seen.insert(k.fd) {
            return Err(DaemonError::Config(format!("--kernel-fd {} given twice", k.fd)));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    use super::*;
    use crate::export::mem::MemCatalog;

    #[test]
    fn parses_fd_and_export() {
        assert_eq!(
            "5:store".parse::<KernelFd>().unwrap(),
            KernelFd { fd: 5, export: "store".into() }
        );
        assert_eq!("1:store".parse::<KernelFd>(), Err(KernelFdError::Range("1:store".into())));
        assert_eq!("x:store".parse::<KernelFd>(), Err(KernelFdError::Syntax("x:store".into())));
        assert_eq!("7:".parse::<KernelFd>(), Err(KernelFdError::Range("7:".into())));
        assert_eq!("7".parse::<KernelFd>(), Err(KernelFdError::Syntax("7".into())));
        let twice =
            [KernelFd { fd: 5, export: "a".into() }, KernelFd { fd: 5, export: "b".into() }];
        assert!(
            matches!(check_unique(&twice), Err(DaemonError::Config(m)) if m.contains("twice")),
            "fd 5 given twice"
        );
    }

    #[test]
    fn a_regular_file_is_refused() {
        let f = tempfile::tempfile().unwrap();
        let e = adopt::unix_stream(f.as_raw_fd()).unwrap_err();
        assert!(
            matches!(e, KernelFdError::Descriptor { why: "not a socket", errno: None, .. }),
            "{e}"
        );
    }

    /// The kernel's side of the protocol by hand: compact request, simple reply.
    #[test]
    fn serves_transmission_on_an_inherited_end() {
        let cat = MemCatalog::new();
        cat.insert("store", "", Arc::new(crate::export::mem::MemExport::new(1 << 20)));
        let catalog: Arc<dyn Catalog> = Arc::new(cat);
        let (ours, mut kernel) = UnixStream::pair().unwrap();
        let fd = ours.into_raw_fd();
        let stop = Arc::new(AtomicBool::new(false));
        let conns = start(&catalog, &[KernelFd { fd, export: "store".into() }], 2, &stop).unwrap();
        let live = conns.live();
        assert_eq!(live.load(Ordering::SeqCst), 1);
        assert!(!stop.load(Ordering::SeqCst));
        // WRITE 4 KiB at 8192, then READ it back.
        let data = vec![0xabu8; 4096];
        kernel.write_all(&request(1, 0, 7, 8192, 4096)).unwrap();
        kernel.write_all(&data).unwrap();
        assert_eq!(reply(&mut kernel), (0, 7));
        kernel.write_all(&request(0, 0, 8, 8192, 4096)).unwrap();
        assert_eq!(reply(&mut kernel), (0, 8));
        let mut back = vec![0u8; 4096];
        kernel.read_exact(&mut back).unwrap();
        assert_eq!(back, data);
        // DISC ends the thread.
        kernel.write_all(&request(2, 0, 9, 0, 0)).unwrap();
        for t in conns.threads {
            t.join().unwrap();
        }
        assert_eq!(live.load(Ordering::SeqCst), 0, "the connection is no longer counted");
        assert!(stop.load(Ordering::SeqCst), "the daemon stops when its kernel client leaves");
        let nope = [KernelFd { fd: 1000, export: "nope".into() }];
        let e = start(&catalog, &nope, 1, &stop).err().expect("an unknown export is refused");
        assert!(
            matches!(&e, DaemonError::Config(m) if m == "--kernel-fd 1000: no volume \"nope\""),
            "{e}"
        );
    }

    fn request(ty: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut b = Vec::with_capacity(28);
        b.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    }

    fn reply(s: &mut UnixStream) -> (u32, u64) {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x6744_6698);
        (
            u32::from_be_bytes(h[4..8].try_into().unwrap()),
            u64::from_be_bytes(h[8..16].try_into().unwrap()),
        )
    }
}
