//! The one support module of thinpool's integration tests, included by each test file with
//! `mod support;`. Helpers every kind of test needs live here (Debian's thin tools as judges,
//! waiting for a condition with a deadline); the submodules hold what one family of tests
//! shares:
//!
//! ```text
//! cli      running the built `thinpool` binary
//! client   a raw NBD client over the crate's codecs
//! engine   byte images and thin_dump XML for the engine tests
//! nbd      an in-process NBD server and external tools with a deadline
//! null     a device that reads zeros and forgets writes
//! service  small groups and file pools, block patterns, extension events
//! tools    thin_restore images and surgical corruption of metadata blocks
//! ```
#![allow(dead_code)] // each test file uses its own subset

pub mod cli;
pub mod client;
pub mod engine;
pub mod nbd;
pub mod null;
pub mod service;
pub mod tools;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Fails loudly when a Debian tool the test needs is missing.
pub fn require_tool(name: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed: install thin-provisioning-tools (cargo xtask setup does)"
    );
}

/// Runs Debian's thin_check on a metadata file; panics with its output unless it passes.
pub fn thin_check(meta: &Path) {
    thin_check_file(meta, &[]);
}

/// thin_check with `extra` arguments; panics with its output unless it passes, else returns it.
pub fn thin_check_file(meta: &Path, extra: &[&str]) -> String {
    require_tool("thin_check");
    let out = Command::new("thin_check").args(extra).arg(meta).output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "thin_check {} failed ({}):\n{text}", meta.display(), out.status);
    text
}

/// Whether Debian's thin_check accepts the metadata (for tests that expect a refusal too).
pub fn thin_check_ok(meta: &Path) -> bool {
    require_tool("thin_check");
    Command::new("thin_check").arg("-q").arg(meta).status().unwrap().success()
}

/// thin_dump's XML for a metadata file.
pub fn thin_dump(meta: &Path) -> String {
    require_tool("thin_dump");
    let out = Command::new("thin_dump").arg(meta).output().unwrap();
    assert!(out.status.success(), "thin_dump failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Polls `cond` until it holds; panics naming `what` once `limit` has passed.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until a unix socket accepts connections.
pub fn wait_socket(sock: &Path, limit: Duration) {
    wait_for(&format!("{} to accept", sock.display()), limit, || {
        std::os::unix::net::UnixStream::connect(sock).is_ok()
    });
}
