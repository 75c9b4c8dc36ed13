//! Issue acceptance: a scripted pool session through the built `thinpool` binary, checked by
//! Debian's thin_check and our own checker, with every volume exported byte-equal to what
//! was written; corruption and bad input fail with one clear line.

mod support;

use std::path::{Path, PathBuf};

use rand::{Rng, RngCore, SeedableRng};
use support::cli::{ok, text, thinpool, FilePool};
use support::tools::*;
use support::{thin_check_ok, thin_dump};

const MIB: usize = 1 << 20;
const BLOCK: usize = 64 << 10;

/// Runs a verb that must fail with one clear line on stderr naming `needle`.
fn fails(args: &[&str], needle: &str) {
    let out = thinpool(args);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "thinpool {args:?} should fail");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.contains(needle), "stderr lacks {needle:?}: {err}");
}

fn write(path: &Path, bytes: &[u8]) -> String {
    std::fs::write(path, bytes).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Random bytes with some whole zero blocks (which import leaves unmapped).
fn random_image(rng: &mut impl RngCore, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    for b in (0..len / BLOCK).step_by(7) {
        v[b * BLOCK..(b + 1) * BLOCK].fill(0);
    }
    v
}

fn export(pool: &str, name: &str, dir: &Path) -> Vec<u8> {
    let out: PathBuf = dir.join(format!("{name}.out"));
    ok(&["export", pool, name, out.to_str().unwrap()]);
    std::fs::read(out).unwrap()
}

#[test]
fn scripted_session_checks_clean_and_exports_what_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let pool_dir = t.join("pool");
    let pool = pool_dir.to_str().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);

    ok(&["init", pool, "--data-size", "256M", "--block-size", "64K"]);
    ok(&["create", pool, "origin", "--size", "64M"]);
    let data1 = random_image(&mut rng, 64 * MIB);
    let f1 = write(&t.join("data1"), &data1);
    let out = thinpool(&["import", pool, "origin", &f1]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("import: 100%"), "progress lines: {}", text(&out.stderr));

    ok(&["snapshot", pool, "origin", "snap1"]);
    // New data over part of the origin: random ranges, and a zeroed stretch.
    let mut data2 = data1.clone();
    for _ in 0..40 {
        let at = rng.gen_range(0..64 * MIB - 300_000);
        let len = rng.gen_range(1..300_000);
        rng.fill_bytes(&mut data2[at..at + len]);
    }
    data2[10 * MIB..12 * MIB].fill(0);
    let f2 = write(&t.join("data2"), &data2);
    ok(&["import", pool, "origin", &f2]);

    ok(&["snapshot", pool, "origin", "snap2"]);
    ok(&["remove", pool, "snap2"]);

    // More writes: the head of the origin, and a second volume created by import.
    let head = random_image(&mut rng, 3 * MIB + 1234);
    let f3 = write(&t.join("head"), &head);
    ok(&["import", pool, "origin", &f3]);
    let mut origin = data2.clone();
    origin[..head.len()].copy_from_slice(&head);
    let small = random_image(&mut rng, 8 * MIB);
    let f4 = write(&t.join("small"), &small);
    ok(&["import", pool, "small", &f4]);

    let meta = pool_dir.join("metadata");
    assert!(thin_check_ok(&meta), "Debian thin_check rejects the session's metadata");
    let out = ok(&["check", pool]);
    assert!(out.contains("clean"), "{out}");

    assert!(export(pool, "origin", t) == origin, "origin differs from what was written");
    assert!(export(pool, "snap1", t) == data1, "snap1 differs from the origin at snapshot time");
    assert!(export(pool, "small", t) == small, "small differs");
    // Unmapped ranges are holes in the exported file.
    let blocks = std::fs::metadata(t.join("origin.out")).map(|m| {
        use std::os::unix::fs::MetadataExt;
        m.blocks() * 512
    });
    assert!(blocks.unwrap() < 64 * MIB as u64, "export is not sparse");

    let list: serde_json::Value = serde_json::from_str(&ok(&["list", pool, "--json"])).unwrap();
    let names: Vec<&str> =
        list.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["origin", "small", "snap1"]);
    assert_eq!(list[0]["size"], 64 * MIB as u64);
    let table = ok(&["list", pool]);
    assert!(table.starts_with("NAME"), "{table}");
    let status: serde_json::Value = serde_json::from_str(&ok(&["status", pool, "--json"])).unwrap();
    assert_eq!(status["block_size"], BLOCK as u64);
    assert_eq!(status["data_total"], 256 * MIB as u64);
    assert!(status["data_used"].as_u64().unwrap() > 64 * MIB as u64);
    assert!(ok(&["status", pool]).contains("Pool Blocksize: 65.54kB"));

    // Dump equals Debian's; restoring that XML gives metadata both checkers accept.
    let xml = ok(&["dump", pool]);
    assert_eq!(xml, thin_dump(&meta));
    let xml_path = write(&t.join("pool.xml"), xml.as_bytes());
    let restored = t.join("restored");
    ok(&["restore", restored.to_str().unwrap(), "--input", &xml_path]);
    assert!(thin_check_ok(&restored.join("metadata")), "thin_check rejects restored metadata");
    ok(&["check", restored.to_str().unwrap()]);
    assert_eq!(ok(&["dump", restored.to_str().unwrap()]), xml);
    // dm-thin keeps no names: restored devices are named after their ids.
    let restored_list = ok(&["list", restored.to_str().unwrap()]);
    assert_eq!(restored_list.lines().count(), 4, "{restored_list}");
    assert!(restored_list.contains("thin-0 "), "{restored_list}");
    // Restore writes metadata only (like thin_restore): the volume is there with its
    // mappings, sized to its last mapped block, over a fresh data file.
    let small_id = list[1]["id"].as_u64().unwrap();
    let name = format!("thin-{small_id}");
    let rl: serde_json::Value =
        serde_json::from_str(&ok(&["list", restored.to_str().unwrap(), "--json"])).unwrap();
    let row = rl.as_array().unwrap().iter().find(|r| r["name"] == name.as_str()).unwrap();
    assert_eq!(row["size"], small.len() as u64);
    assert_eq!(row["mapped_blocks"], list[1]["mapped_blocks"]);
    assert_eq!(export(restored.to_str().unwrap(), &name, t).len(), small.len());
}

#[test]
fn flipped_byte_in_a_node_fails_every_tool_cleanly() {
    let tmp = FilePool::init("64M");
    let pool = tmp.pool();
    ok(&["create", pool, "vol", "--size", "8M"]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let f = write(&tmp.path().join("img"), &random_image(&mut rng, 2 * MIB));
    ok(&["import", pool, "vol", &f]);
    let meta = tmp.dir().join("metadata");
    assert!(thin_check_ok(&meta));

    // One byte inside the device details tree's root node.
    let dev = open(&meta);
    let details = sb_u64(&dev, DETAILS_ROOT);
    let mut blk = read_block(&dev, details);
    blk[40] ^= 0x04;
    thinpool::io::BlockDevice::write_at(&dev, &blk[..], details * 4096).unwrap();
    drop(dev);

    assert!(!thin_check_ok(&meta), "thin_check missed the flipped byte");
    let out = thinpool(&["check", pool]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains(&format!("damage: block {details}, device details tree")));
    assert!(!text(&out.stderr).contains("panicked"));
    fails(&["list", pool], &format!("block {details}"));
}

#[test]
fn bad_input_fails_with_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let pool_dir = tmp.path().join("pool");
    let pool = pool_dir.to_str().unwrap();
    fails(&["init", pool, "--data-size", "64Z"], "unknown unit");
    fails(&["list", pool], "does not exist");
    fails(&["create", pool, "v", "--size", "1M"], "does not exist");
    fails(&["init", pool, "--data-size", "64M", "--block-size", "100K"], "multiple of 64K");
    // A failed init leaves nothing behind that would block the next one.
    fails(&["init", pool, "--data-size", "64M", "--metadata-size", "64K"], "too small");
    ok(&["init", pool, "--data-size", "64M"]);
    fails(&["init", pool, "--data-size", "64M"], "already");
    ok(&["create", pool, "v", "--size", "1M"]);
    fails(&["create", pool, "v", "--size", "1M"], "already exists");
    fails(&["remove", pool, "nope"], "does not exist");
    fails(&["snapshot", pool, "nope", "s"], "does not exist");
    fails(&["create", pool, "bad/name", "--size", "1M"], "volume name");
    fails(&["import", pool, "v", "/nonexistent/file"], "/nonexistent/file");
    fails(&["export", pool, "nope", "/tmp/x"], "does not exist");
    let bad_xml = write(&tmp.path().join("bad.xml"), b"<superblock uuid=\"\" colour=\"red\">");
    fails(&["restore", tmp.path().join("r").to_str().unwrap(), "--input", &bad_xml], "colour");
}

#[test]
fn a_pool_in_use_by_another_process_is_refused() {
    let lock_file = |dir: &std::path::Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .unwrap()
    };
    let tmp = FilePool::init("16M");
    let pool = tmp.pool();
    // DIR/lock is the file `thinpool serve` holds for as long as it runs.
    let holder = lock_file(tmp.dir());
    rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
    fails(&["create", pool, "v", "--size", "1M"], "in use by another thinpool process");
    fails(&["list", pool], "in use");
    drop(holder);
    ok(&["create", pool, "v", "--size", "1M"]);
    // Readers share: a shared holder lets list run but keeps changes out.
    let reader = lock_file(tmp.dir());
    rustix::fs::flock(&reader, rustix::fs::FlockOperation::LockShared).unwrap();
    assert!(ok(&["list", pool]).contains("v "));
    fails(&["remove", pool, "v"], "in use");
}
