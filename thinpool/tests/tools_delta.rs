//! `thinpool delta` against Debian's `thin_delta` 0.9.0, metadata snapshots against
//! `thin_dump --metadata-snap` and `thin_check`, and deltas taken while a writer runs.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thinpool::delta::{self, Change};
use thinpool::io::FileDevice;
use thinpool::pool::{FilePool, Pool};
use thinpool::units::{Bytes, Sectors, ThinId};

mod support;
use support::cli::{ok, serve_unix, thinpool, Daemon};

const BLOCK: u64 = 64 << 10;
const VOL_BLOCKS: u64 = 96;

fn thin_delta(meta: &Path, left: u64, right: u64, snap: bool) -> String {
    support::require_tool("thin_delta");
    let mut c = Command::new("thin_delta");
    if snap {
        c.arg("-m");
    }
    let out = c
        .args(["--snap1", &left.to_string(), "--snap2", &right.to_string()])
        .arg(meta)
        .output()
        .unwrap();
    assert!(out.status.success(), "thin_delta: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A random history of writes (runs of 1..6 blocks), snapshots and discards over a few
/// volumes; returns the volume names.
fn random_history(pool: &Pool, rng: &mut StdRng, steps: usize) -> Vec<String> {
    let mut names = vec!["v0".to_owned()];
    pool.create_volume("v0", Bytes::new(VOL_BLOCKS * BLOCK)).unwrap();
    for step in 0..steps {
        let name = names[rng.gen_range(0..names.len())].clone();
        let id = pool.volume(&name).unwrap().id;
        match rng.gen_range(0..10) {
            0..=5 => {
                let b = rng.gen_range(0..VOL_BLOCKS - 6);
                let n = rng.gen_range(1..=6u64);
                let fill = rng.gen::<u8>() | 1;
                pool.write(id, b * BLOCK, &vec![fill; (n * BLOCK) as usize]).unwrap();
            }
            6..=7 if names.len() < 8 => {
                let snap = format!("s{step}");
                pool.snapshot_volume(&name, &snap).unwrap();
                names.push(snap);
            }
            _ => {
                let b = rng.gen_range(0..VOL_BLOCKS - 4);
                let n = rng.gen_range(1..=4u64);
                pool.discard(id, b * BLOCK, n * BLOCK).unwrap();
            }
        }
        if rng.gen_range(0..4) == 0 {
            pool.commit().unwrap();
        }
    }
    pool.commit().unwrap();
    names
}

#[test]
fn delta_xml_equals_thin_delta_on_random_histories() {
    let mut compared = 0;
    for seed in 1..=6u64 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pool");
        let mut rng = StdRng::seed_from_u64(seed);
        let pool = FilePool::create(&dir, Bytes::new(4096 * BLOCK), None, Sectors(128)).unwrap();
        let names = random_history(&pool, &mut rng, 120);
        let ids: Vec<(String, ThinId)> =
            names.iter().map(|n| (n.clone(), pool.volume(n).unwrap().id)).collect();
        // What each volume holds, to check the delta covers every block whose data differs.
        let mut bytes = Vec::new();
        for (_, id) in &ids {
            let mut b = vec![0u8; (VOL_BLOCKS * BLOCK) as usize];
            pool.read(*id, 0, &mut b).unwrap();
            bytes.push(b);
        }
        drop(pool);
        let d = dir.to_str().unwrap();
        let meta = dir.join(FilePool::METADATA);
        for (i, (ln, lid)) in ids.iter().enumerate() {
            for (j, (rn, rid)) in ids.iter().enumerate() {
                if i == j {
                    continue;
                }
                let ours = ok(&["delta", "--xml", d, ln, rn]);
                assert_eq!(ours, thin_delta(&meta, lid.0, rid.0, false), "seed {seed} {ln} {rn}");
                compared += 1;
                // Every block whose content differs lies in a changed range.
                let json = ok(&["delta", "--json", d, ln, rn]);
                let ranges: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
                let changed = |b: u64| {
                    ranges.iter().any(|r| {
                        let begin = r["begin"].as_u64().unwrap();
                        r["change"] != "same"
                            && begin <= b
                            && b < begin + r["len"].as_u64().unwrap()
                    })
                };
                for b in 0..VOL_BLOCKS {
                    let s = (b * BLOCK) as usize..((b + 1) * BLOCK) as usize;
                    if bytes[i][s.clone()] != bytes[j][s] {
                        assert!(changed(b), "seed {seed}: {ln} vs {rn} block {b} differs");
                    }
                }
            }
        }
        // With a metadata snapshot held, thin_delta -m reads it and agrees with ours.
        ok(&["metadata-snap", d, "reserve"]);
        let (ln, lid) = &ids[0];
        let (rn, rid) = ids.last().unwrap();
        let live = ok(&["delta", "--xml", d, ln, rn]);
        assert!(live.contains(" metadata_snap=\""), "{live}");
        let via_snap = thin_delta(&meta, lid.0, rid.0, true);
        assert_eq!(
            live.lines().skip(1).collect::<Vec<_>>(),
            via_snap.lines().skip(1).collect::<Vec<_>>()
        );
        assert!(support::thin_check_ok(&meta), "thin_check with a metadata snapshot held");
        ok(&["metadata-snap", d, "release"]);
    }
    assert!(compared >= 30, "only {compared} pairs compared");
}

#[test]
fn metadata_snapshot_is_what_thin_dump_reads_and_survives_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let d = dir.to_str().unwrap();
    let meta = dir.join(FilePool::METADATA);
    let pool = FilePool::create(&dir, Bytes::new(1024 * BLOCK), None, Sectors(128)).unwrap();
    let mut rng = StdRng::seed_from_u64(7);
    random_history(&pool, &mut rng, 60);
    drop(pool);
    let before = support::thin_dump(&meta);
    let out = ok(&["metadata-snap", d, "reserve"]);
    let block: u64 = out.trim().rsplit(' ').next().unwrap().parse().unwrap();
    let again = thinpool(&["metadata-snap", d, "reserve"]);
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already held"), "{err}");

    // Change the pool a lot; the snapshot still shows the state it was taken in.
    let pool = FilePool::open(&dir).unwrap();
    random_history_more(&pool, &mut rng);
    drop(pool);
    support::require_tool("thin_dump");
    let snap =
        Command::new("thin_dump").arg(format!("--metadata-snap={block}")).arg(&meta).output();
    let snap = String::from_utf8(snap.unwrap().stdout).unwrap();
    // The snapshot superblock carries no space maps, so 0.9.0 prints nr_data_blocks="0".
    let strip = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
    assert_eq!(strip(&snap), strip(&before));
    assert_ne!(strip(&support::thin_dump(&meta)), strip(&before));
    assert!(support::thin_check_ok(&meta));
    assert!(ok(&["check", d]).contains("clean"));
    assert!(ok(&["metadata-snap", d, "release"]).contains(&format!("block {block}")));
    let none = thinpool(&["metadata-snap", d, "release"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("no metadata snapshot is held"));
    assert!(support::thin_check_ok(&meta));
    assert!(ok(&["check", d]).contains("clean"));
}

fn random_history_more(pool: &Pool, rng: &mut StdRng) {
    let names: Vec<String> = pool.volumes().unwrap().into_iter().map(|v| v.name).collect();
    for _ in 0..40 {
        let id = pool.volume(&names[rng.gen_range(0..names.len())]).unwrap().id;
        let b = rng.gen_range(0..VOL_BLOCKS - 2);
        pool.write(id, b * BLOCK, &vec![0xEE; 2 * BLOCK as usize]).unwrap();
    }
    pool.remove_volume(&names[0]).unwrap();
    pool.commit().unwrap();
}

/// A writer maps blocks 0, 1, 2, ... of `vol` one commit at a time; every delta read
/// through a metadata snapshot meanwhile must be a prefix (never a hole, never a damaged
/// tree).
#[test]
fn delta_through_a_metadata_snapshot_while_a_writer_runs_is_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let pool =
        Arc::new(FilePool::create(&dir, Bytes::new(4096 * BLOCK), None, Sectors(128)).unwrap());
    let vol = pool.create_volume("vol", Bytes::new(2048 * BLOCK)).unwrap();
    pool.write(vol, 0, &vec![1; (2048 * BLOCK) as usize]).unwrap();
    let base = pool.snapshot_volume("vol", "base").unwrap();
    pool.commit().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (pool, stop, written) = (pool.clone(), stop.clone(), written.clone());
        std::thread::spawn(move || {
            for b in 0..2048u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                pool.write(vol, b * BLOCK, &[2u8; 4096]).unwrap();
                pool.commit().unwrap();
                written.store(b + 1, Ordering::SeqCst);
            }
        })
    };
    let meta = FileDevice::open_read_only(&dir.join(FilePool::METADATA)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < 15 && Instant::now() < deadline {
        let floor = written.load(Ordering::SeqCst);
        let s = pool.reserve_metadata_snap().unwrap();
        let input = delta::read(&meta, s, base, vol).unwrap();
        pool.release_metadata_snap().unwrap();
        let ranges = delta::diff(&input.left, &input.right);
        let changed: Vec<_> = ranges.iter().filter(|r| r.change.changed()).collect();
        let n = match changed.as_slice() {
            [] => 0,
            [r] => {
                assert_eq!((r.change, r.begin.0), (Change::Different, 0), "{ranges:?}");
                r.len
            }
            more => panic!("not a prefix: {more:?}"),
        };
        assert!(n >= floor, "delta saw {n} blocks, {floor} were committed before it");
        seen.push(n);
    }
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(seen.len() >= 15, "only {} deltas in time", seen.len());
    assert!(seen.windows(2).any(|w| w[0] != w[1]), "the writer never moved: {seen:?}");
    pool.commit().unwrap();
    assert!(pool.metadata_snap().is_none());
    let r = pool.self_check().unwrap();
    assert_eq!(r.devices, 2);
}

#[test]
fn delta_and_metadata_snap_go_through_a_running_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let d = dir.to_str().unwrap();
    let sock = tmp.path().join("nbd.sock");
    let pool = FilePool::create(&dir, Bytes::new(1024 * BLOCK), None, Sectors(128)).unwrap();
    let vol = pool.create_volume("vol", Bytes::new(VOL_BLOCKS * BLOCK)).unwrap();
    pool.write(vol, 0, &vec![1; (4 * BLOCK) as usize]).unwrap();
    pool.snapshot_volume("vol", "base").unwrap();
    pool.write(vol, 2 * BLOCK, &vec![2; (4 * BLOCK) as usize]).unwrap();
    pool.commit().unwrap();
    drop(pool);
    let _daemon = Daemon(serve_unix(&dir, &sock));
    let out = ok(&["delta", d, "base", "vol"]);
    assert_eq!(out, "different begin=2 length=2\nright_only begin=4 length=2\n");
    // The delta released the snapshot it took; one can be reserved and read while serving.
    let r = ok(&["metadata-snap", d, "reserve"]);
    let block = r.trim().rsplit(' ').next().unwrap();
    let meta = dir.join(FilePool::METADATA);
    let dump = Command::new("thin_dump").arg(format!("-m{block}")).arg(&meta).output().unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    assert!(String::from_utf8_lossy(&dump.stdout).contains("<device dev_id=\"1\""));
    let busy = thinpool(&["delta", d, "base", "vol"]);
    assert!(String::from_utf8_lossy(&busy.stderr).contains("already held"));
    ok(&["metadata-snap", d, "release"]);
}
