//! Running the built `thinpool` binary.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_thinpool");

/// `thinpool ARGS..`, output captured.
pub fn thinpool(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("running thinpool")
}

/// Lossy text of captured output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `thinpool ARGS..`, which must succeed without a panic; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = thinpool(args);
    let err = text(&out.stderr);
    assert!(out.status.success(), "thinpool {args:?} failed: {}{err}", text(&out.stdout));
    assert!(!err.contains("panicked"), "thinpool {args:?}: {err}");
    String::from_utf8(out.stdout).unwrap()
}

/// A `thinpool serve` child, killed and reaped when dropped (a failing test leaves no daemon
/// holding its pool's lock).
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `thinpool serve POOL --listen none --socket SOCK`, once the NBD socket accepts and the
/// control socket is there.
pub fn serve_unix(pool: &Path, sock: &Path) -> Child {
    let child = Command::new(BIN)
        .arg("serve")
        .arg(pool)
        .args(["--listen", "none", "--socket"])
        .arg(sock)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning thinpool serve");
    super::wait_for("the daemon's sockets", Duration::from_secs(30), || {
        UnixStream::connect(sock).is_ok() && pool.join("control.sock").exists()
    });
    child
}

/// A file pool made by `thinpool init` at `pool` in a fresh temporary directory, which is
/// removed when this is dropped.
pub struct FilePool {
    tmp: tempfile::TempDir,
    path: String,
}

impl FilePool {
    pub fn init(data_size: &str) -> FilePool {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pool").to_str().unwrap().to_owned();
        ok(&["init", &path, "--data-size", data_size]);
        FilePool { tmp, path }
    }

    /// The pool's path, as the CLI takes it.
    pub fn pool(&self) -> &str {
        &self.path
    }

    /// The pool's directory (metadata, lock, control socket).
    pub fn dir(&self) -> &std::path::Path {
        std::path::Path::new(&self.path)
    }

    /// The temporary directory around the pool, for the test's other files.
    pub fn path(&self) -> &std::path::Path {
        self.tmp.path()
    }
}

/// A Debian tool run with stdin closed; panics naming the package hint if it cannot start.
pub fn tool(prog: &str, args: &[&str]) -> Output {
    let out = Command::new(prog).args(args).stdin(std::process::Stdio::null()).output();
    out.unwrap_or_else(|e| panic!("`{prog}` could not run ({e}); install it (cargo xtask setup)"))
}

/// A tool that must succeed.
pub fn ok_tool(prog: &str, args: &[&str]) {
    let o = tool(prog, args);
    assert!(o.status.success(), "`{prog} {}` failed: {}", args.join(" "), both(&o));
}

/// stdout then stderr of captured output, as text.
pub fn both(o: &Output) -> String {
    text(&o.stdout) + &text(&o.stderr)
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
