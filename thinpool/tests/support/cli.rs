//! Running the `thinpool` binary from the CLI tests.
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_thinpool");

/// `thinpool ARGS..`, output captured.
pub fn thinpool(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("running thinpool")
}

/// `thinpool ARGS..`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = thinpool(args);
    assert!(out.status.success(), "thinpool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
