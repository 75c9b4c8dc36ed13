//! Shared helpers for the NBD interop tests: an in-process server on loopback and a unix
//! socket, and a runner for external tools with a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thinpool::export::mem::MemCatalog;
use thinpool::nbd::{Catalog, Server, ServerOptions};

pub struct Running {
    pub server: Arc<Server>,
    pub addr: SocketAddr,
    pub sock: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Running {
    pub fn uri(&self, name: &str) -> String {
        format!("nbd://{}/{}", self.addr, name)
    }

    pub fn unix_uri(&self, name: &str) -> String {
        format!("nbd+unix:///{}?socket={}", name, self.sock.display())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.server.shutdown(Duration::from_secs(5));
    }
}

pub fn start(catalog: Arc<dyn Catalog>, opts: ServerOptions) -> Running {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::new(catalog, opts);
    let addr = server.listen_tcp("127.0.0.1:0".parse().unwrap()).expect("bind tcp");
    let sock = dir.path().join("nbd.sock");
    server.listen_unix(&sock).expect("bind unix");
    Running { server, addr, sock, dir }
}

pub fn start_mem(catalog: Arc<MemCatalog>) -> Running {
    start(catalog, ServerOptions::default())
}

/// Runs `prog args` with a deadline; panics (test failure) if the tool is missing or hangs.
pub fn run(prog: &str, args: &[&str], deadline: Duration) -> Output {
    run_in(prog, args, deadline, None)
}

pub fn run_in(prog: &str, args: &[&str], deadline: Duration, stdin: Option<&Path>) -> Output {
    let mut cmd = Command::new(prog);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(p) = stdin {
        cmd.stdin(std::fs::File::open(p).expect("stdin file"));
    } else {
        cmd.stdin(Stdio::null());
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "required tool `{prog}` could not be started ({e}); install it (cargo xtask setup)"
        ),
    };
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => break,
            None if start.elapsed() > deadline => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "`{prog} {}` did not finish within {deadline:?}\nstdout: {}\nstderr: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    child.wait_with_output().expect("output")
}

/// `nbdinfo --map --json URI`: the export's (offset, length, type) extents, type being the
/// NBD base:allocation flags (1 hole, 2 zero).
pub fn nbdinfo_map(uri: &str, deadline: Duration) -> Vec<(u64, u64, u64)> {
    let out = ok("nbdinfo", &["--map", "--json", uri], deadline);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --map --json output");
    let field = |e: &serde_json::Value, k: &str| e[k].as_u64().expect("a number in the map");
    let rows = v.as_array().expect("a JSON array of extents");
    rows.iter().map(|e| (field(e, "offset"), field(e, "length"), field(e, "type"))).collect()
}

/// Like [`run`] but the command must succeed; returns stdout.
pub fn ok(prog: &str, args: &[&str], deadline: Duration) -> String {
    let out = run(prog, args, deadline);
    assert!(
        out.status.success(),
        "`{prog} {}` failed: {}\nstdout: {}\nstderr: {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs qemu-io's `script` (one `-c` each) on the raw export at `uri`; it must exit 0 with no
/// command reporting "failed". Returns stdout then stderr.
pub fn qemu_io(uri: &str, script: &[&str], deadline: Duration) -> String {
    let mut args = vec!["-f", "raw"];
    for c in script {
        args.extend(["-c", c]);
    }
    args.push(uri);
    let out = run("qemu-io", &args, deadline);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "qemu-io failed:\n{text}");
    assert!(!text.contains("failed"), "qemu-io reported a failure:\n{text}");
    text
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Counts what a client asked of an export, so tests can assert FUA/flush/zero semantics.
pub struct Probe {
    pub inner: Arc<dyn thinpool::nbd::Export>,
    pub fua_writes: std::sync::atomic::AtomicU64,
    pub flushes: std::sync::atomic::AtomicU64,
    pub trims: std::sync::atomic::AtomicU64,
    pub zeroes_no_hole: std::sync::atomic::AtomicU64,
    pub zeroes_may_trim: std::sync::atomic::AtomicU64,
}

impl Probe {
    pub fn new(inner: Arc<dyn thinpool::nbd::Export>) -> Self {
        Self {
            inner,
            fua_writes: Default::default(),
            flushes: Default::default(),
            trims: Default::default(),
            zeroes_no_hole: Default::default(),
            zeroes_may_trim: Default::default(),
        }
    }

    pub fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
        c.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
}

impl thinpool::nbd::Export for Probe {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> thinpool::nbd::ExportResult<()> {
        self.inner.read(offset, buf)
    }
    fn write(
        &self,
        offset: u64,
        payload: &thinpool::export::Payload<'_>,
        how: thinpool::export::WriteMode,
    ) -> thinpool::nbd::ExportResult<thinpool::export::Written> {
        if how.fua {
            bump(&self.fua_writes);
        }
        self.inner.write(offset, payload, how)
    }
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        how: thinpool::export::Zeroing,
    ) -> thinpool::nbd::ExportResult<()> {
        bump(if how.may_trim { &self.zeroes_may_trim } else { &self.zeroes_no_hole });
        self.inner.write_zeroes(offset, len, how)
    }
    fn trim(&self, offset: u64, len: u64, fua: bool) -> thinpool::nbd::ExportResult<()> {
        bump(&self.trims);
        self.inner.trim(offset, len, fua)
    }
    fn flush(&self) -> thinpool::nbd::ExportResult<()> {
        bump(&self.flushes);
        self.inner.flush()
    }
    fn extents(
        &self,
        offset: u64,
        len: u64,
    ) -> thinpool::nbd::ExportResult<Vec<thinpool::nbd::Extent>> {
        self.inner.extents(offset, len)
    }
    fn read_only(&self) -> bool {
        self.inner.read_only()
    }
}

/// A scratch directory on tmpfs when available (fast for 256 MiB images), else /tmp.
pub fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().expect("tempdir")
}
