//! `thinpool check`, `thinpool dump` and argument handling, driving the built binary on
//! metadata made by Debian's thin_restore.

mod support;

use std::path::Path;
use std::process::Output;

use support::cli::{text, thinpool};
use support::tools::*;
use support::{thin_check_ok, thin_dump};

/// A failed run: non-zero, one clear line on stderr, no panic.
fn assert_clear_failure(out: &Output, needle: &str) {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn restored(dir: &Path) -> std::path::PathBuf {
    let devices: Vec<DeviceSpec> =
        vec![(1, (0..400).map(|i| (i, i, 0)).collect()), (4, vec![(10, 3, 1), (11, 500, 1)])];
    thin_restore(dir, "cli", &pool_xml(1, 10_000, &devices))
}

#[test]
fn check_reports_clean_metadata_and_hints() {
    let dir = tempfile::tempdir().unwrap();
    let meta = restored(dir.path());
    let p = meta.to_str().unwrap();
    let out = thinpool(&["check", "--allow-hints", p]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains("clean (2 devices, 402 mappings"), "{}", text(&out.stdout));
    // Strict by default: thin_restore 0.9.0's own off-by-one nr_allocated is a hint.
    let out = thinpool(&["check", p]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("hint: "), "{}", text(&out.stdout));
    let out = thinpool(&["check", "--json", "--allow-hints", p]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stats"]["devices"], 2);
}

#[test]
fn check_fails_on_a_flipped_byte_and_names_the_block() {
    let dir = tempfile::tempdir().unwrap();
    let meta = restored(dir.path());
    let dev = open(&meta);
    let leaf = children(&dev, device_root(&dev, 1))[0].1;
    let mut blk = read_block(&dev, leaf);
    blk[300] ^= 0x01;
    thinpool::io::BlockDevice::write_at(&dev, &blk[..], leaf * 4096).unwrap();
    let out = thinpool(&["check", "--allow-hints", meta.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("damage: block {leaf}, mapping tree of device 1")),
        "{stdout}"
    );
    assert!(stdout.contains("DAMAGED"), "{stdout}");
    assert!(!text(&out.stderr).contains("panicked"));
    assert!(!thin_check_ok(&meta));
    let out = thinpool(&["dump", meta.to_str().unwrap()]);
    assert_clear_failure(&out, &format!("block {leaf}"));
}

#[test]
fn dump_matches_thin_dump() {
    let dir = tempfile::tempdir().unwrap();
    let meta = restored(dir.path());
    let out = thinpool(&["dump", meta.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), thin_dump(&meta));
}

#[test]
fn bad_arguments_fail_clearly() {
    assert_clear_failure(
        &thinpool(&["init", "/tmp/x", "--data-size", "10Q"]),
        "unknown unit \"Q\"",
    );
    assert_clear_failure(&thinpool(&["check", "/nonexistent/pool"]), "/nonexistent/pool");
    assert_clear_failure(&thinpool(&["list", "/nonexistent/pool"]), "/nonexistent/pool");
    let dir = tempfile::tempdir().unwrap();
    assert_clear_failure(
        &thinpool(&["dump", dir.path().to_str().unwrap()]),
        "not a pool directory",
    );
    assert_clear_failure(&thinpool(&["frobnicate"]), "unrecognized subcommand");
}

#[test]
fn every_verb_has_help() {
    for verb in [
        "init", "create", "snapshot", "remove", "list", "status", "import", "export", "check",
        "dump", "restore",
    ] {
        let out = thinpool(&[verb, "--help"]);
        assert!(out.status.success(), "{verb} --help failed");
        assert!(text(&out.stdout).contains("Usage: thinpool"), "{verb}");
    }
}
