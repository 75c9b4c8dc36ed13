//! Running the built `thinpool` binary.

use std::process::{Child, Command, Output};

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
