//! `thinpool send` / `receive` between two pools: a full stream and a chain of incrementals
//! reproduce every snapshot; streams are as large as the change, not the volume; cut,
//! flipped and misapplied streams are refused with the receiving pool unchanged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thinpool::delta::send::volume_sha256;
use thinpool::pool::FilePool;
use thinpool::units::{Bytes, Sectors};

mod support;
use support::cli::{ok, serve_unix, Daemon, BIN};

const BLOCK: u64 = 64 << 10;
const VOL: u64 = 256 * BLOCK; // 16 MiB

fn send(pool: &Path, snap: &str, from: Option<&str>, out: &Path) -> Output {
    let mut c = Command::new(BIN);
    c.arg("send").arg(pool).arg(snap);
    if let Some(f) = from {
        c.args(["--from", f]);
    }
    let o = c.stdout(std::fs::File::create(out).unwrap()).output().unwrap();
    assert!(o.status.success(), "send {snap}: {}", String::from_utf8_lossy(&o.stderr));
    o
}

fn receive(pool: &Path, name: &str, stream: &[u8]) -> Output {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), stream).unwrap();
    Command::new(BIN)
        .arg("receive")
        .arg(pool)
        .arg(name)
        .stdin(Stdio::from(std::fs::File::open(f.path()).unwrap()))
        .output()
        .unwrap()
}

fn sha(pool_dir: &Path, name: &str) -> [u8; 32] {
    let p = FilePool::open(pool_dir).unwrap();
    let v = p.volume(name).unwrap();
    volume_sha256(&p, v.id, v.size.get()).unwrap()
}

/// What must not change when a stream is refused: the metadata as thin_dump prints it and
/// the volume list.
fn state(pool: &Path) -> (String, String) {
    (support::thin_dump(&pool.join(FilePool::METADATA)), ok(&["list", pool.to_str().unwrap()]))
}

/// Pools `tmp/a` and `tmp/b`: `a` holds volume "vol" with snapshot s0 taken after `first`
/// (offset, bytes) was written and s1 after `second`; `b` is empty.
fn two_snapshots(tmp: &Path, first: (u64, &[u8]), second: (u64, &[u8])) -> (PathBuf, PathBuf) {
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    {
        let p = FilePool::create(&a, Bytes::new(1024 * BLOCK), None, Sectors(128)).unwrap();
        let v = p.create_volume("vol", Bytes::new(64 * BLOCK)).unwrap();
        for (snap, (at, bytes)) in [("s0", first), ("s1", second)] {
            p.write(v, at, bytes).unwrap();
            p.snapshot_volume("vol", snap).unwrap();
        }
        p.commit().unwrap();
    }
    FilePool::create(&b, Bytes::new(1024 * BLOCK), None, Sectors(128)).unwrap();
    (a, b)
}

#[test]
fn full_and_five_incrementals_reproduce_every_snapshot() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let mut rng = StdRng::seed_from_u64(17);
    {
        let p = FilePool::create(&a, Bytes::new(2048 * BLOCK), None, Sectors(128)).unwrap();
        let v = p.create_volume("vol", Bytes::new(VOL)).unwrap();
        let mut data = vec![0u8; (4 << 20) as usize];
        rng.fill(&mut data[..]);
        p.write(v, 0, &data).unwrap();
        p.snapshot_volume("vol", "s0").unwrap();
        p.commit().unwrap();
    }
    FilePool::create(&b, Bytes::new(2048 * BLOCK), None, Sectors(128)).unwrap();
    let full = tmp.path().join("s0.stream");
    send(&a, "s0", None, &full);
    let r = receive(&b, "s0", &std::fs::read(&full).unwrap());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(sha(&b, "s0"), sha(&a, "s0"));
    let full_len = std::fs::metadata(&full).unwrap().len();
    eprintln!("s0 (full): stream {full_len} bytes, 4 MiB written of a {VOL}-byte volume");
    // The full stream carries the 4 MiB written, not the 16 MiB volume.
    assert!((4 << 20..(4 << 20) + 64 * 1024).contains(&full_len), "full stream {full_len}");

    for i in 1..=5 {
        let changed_blocks;
        {
            let p = FilePool::open(&a).unwrap();
            let v = p.volume("vol").unwrap().id;
            let mut blocks = std::collections::BTreeSet::new();
            for _ in 0..(3 + i) {
                let blk = rng.gen_range(0..VOL / BLOCK - 1);
                let off = blk * BLOCK + rng.gen_range(0..BLOCK / 2);
                let mut d = vec![0u8; rng.gen_range(1..BLOCK as usize)];
                rng.fill(&mut d[..]);
                p.write(v, off, &d).unwrap();
                blocks.insert(off / BLOCK);
                blocks.insert((off + d.len() as u64 - 1) / BLOCK);
            }
            if i == 3 {
                // A discard travels as a zero record.
                p.discard(v, 0, BLOCK).unwrap();
                blocks.insert(0);
            }
            changed_blocks = blocks.len() as u64;
            p.snapshot_volume("vol", &format!("s{i}")).unwrap();
            p.commit().unwrap();
        }
        let (snap, base) = (format!("s{i}"), format!("s{}", i - 1));
        let inc = tmp.path().join(format!("{snap}.stream"));
        send(&a, &snap, Some(&base), &inc);
        let len = std::fs::metadata(&inc).unwrap().len();
        eprintln!("{snap}: {changed_blocks} changed blocks, stream {len} bytes (volume {VOL})");
        assert!(
            len <= changed_blocks * BLOCK + 4096 && len < VOL / 8,
            "incremental {snap}: {len} bytes for {changed_blocks} changed blocks"
        );
        let r = receive(&b, &snap, &std::fs::read(&inc).unwrap());
        assert!(r.status.success(), "{snap}: {}", String::from_utf8_lossy(&r.stderr));
    }
    for i in 0..=5 {
        let s = format!("s{i}");
        assert_eq!(sha(&b, &s), sha(&a, &s), "{s} differs after the chain");
    }
    assert!(support::thin_check_ok(&b.join(FilePool::METADATA)));
    assert!(ok(&["check", b.to_str().unwrap()]).contains("clean"));
}

#[test]
fn cut_flipped_and_misapplied_streams_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = two_snapshots(
        tmp.path(),
        (0, &vec![3u8; (8 * BLOCK) as usize]),
        (2 * BLOCK, &vec![4u8; (3 * BLOCK) as usize]),
    );
    let (s0, s1) = (tmp.path().join("s0"), tmp.path().join("s1"));
    send(&a, "s0", None, &s0);
    send(&a, "s1", Some("s0"), &s1);
    let full = std::fs::read(&s0).unwrap();
    let inc = std::fs::read(&s1).unwrap();

    // No base yet: the incremental is refused for that reason.
    let before = state(&b);
    let r = receive(&b, "s1", &inc);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("finding the base volume \"s0\""));
    assert_eq!(state(&b), before);

    assert!(receive(&b, "s0", &full).status.success());
    let before = state(&b);
    let mut rng = StdRng::seed_from_u64(5);
    let mut cuts: Vec<usize> = (0..12).map(|_| rng.gen_range(0..inc.len())).collect();
    cuts.extend([0, 10, inc.len() - 1]);
    for cut in cuts {
        let r = receive(&b, "s1", &inc[..cut]);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "cut at {cut} accepted");
        assert!(err.contains("ends early") || err.contains("bad magic"), "cut at {cut}: {err}");
        assert_eq!(state(&b), before, "cut at {cut} changed the pool");
    }
    for _ in 0..12 {
        let mut c = inc.clone();
        let i = rng.gen_range(0..c.len());
        c[i] ^= 1 << rng.gen_range(0..8);
        let r = receive(&b, "s1", &c);
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(!r.status.success(), "flip at {i} accepted");
        assert!(
            [
                "checksum",
                "digest",
                "bad magic",
                "version",
                "ends early",
                "unknown",
                "does not hold"
            ]
            .iter()
            .any(|w| err.contains(w)),
            "flip at {i}: {err}"
        );
        assert_eq!(state(&b), before, "flip at {i} changed the pool");
    }
    // The incremental onto a base with other content is refused by the base's digest.
    {
        let p = FilePool::open(&b).unwrap();
        let v = p.volume("s0").unwrap().id;
        p.write(v, 0, &[9u8; 512]).unwrap();
        p.commit().unwrap();
    }
    let before = state(&b);
    let r = receive(&b, "s1", &inc);
    assert!(String::from_utf8_lossy(&r.stderr).contains("does not hold the content"));
    assert_eq!(state(&b), before);
    // An existing name is refused before anything is read.
    let r = receive(&b, "s0", &full);
    assert!(String::from_utf8_lossy(&r.stderr).contains("already exists"));
}

#[test]
fn send_and_receive_go_through_running_daemons() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) =
        two_snapshots(tmp.path(), (0, &vec![5u8; (6 * BLOCK) as usize]), (BLOCK, &[6; 100]));
    let _da = Daemon(serve_unix(&a, &tmp.path().join("a.sock")));
    let _db = Daemon(serve_unix(&b, &tmp.path().join("b.sock")));
    let (s0, s1) = (tmp.path().join("s0"), tmp.path().join("s1"));
    send(&a, "s0", None, &s0);
    send(&a, "s1", Some("s0"), &s1);
    // Refused before the daemon opens the stream: a clear error, no hang.
    let missing = Command::new(BIN)
        .arg("send")
        .arg(&a)
        .arg("nope")
        .stdout(std::fs::File::create(tmp.path().join("x")).unwrap())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("\"nope\" does not exist"));
    let inc = std::fs::read(&s1).unwrap();
    let r = receive(&b, "s1", &inc);
    assert!(String::from_utf8_lossy(&r.stderr).contains("finding the base volume"));
    let r = receive(&b, "s0", &std::fs::read(&s0).unwrap());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let before = ok(&["list", b.to_str().unwrap()]);
    let r = receive(&b, "s1", &inc[..inc.len() / 2]);
    assert!(String::from_utf8_lossy(&r.stderr).contains("ends early"));
    assert_eq!(ok(&["list", b.to_str().unwrap()]), before);
    let r = receive(&b, "s1", &inc);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    drop((_da, _db));
    for s in ["s0", "s1"] {
        assert_eq!(sha(&b, s), sha(&a, s), "{s}");
    }
}
