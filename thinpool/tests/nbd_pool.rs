//! The NBD export over the real thin pool: interop with libnbd tools, qemu-io and fio,
//! management through the control socket, exclusive locking, and a SIGKILL/restart crash test
//! checked with Debian's thin_check.

mod support;

use support::{cli, client};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::nbd::*;
use support::{require_tool, thin_check, wait_for, wait_socket};
use thinpool::daemon::control::{self, Request};
use thinpool::daemon::{self, DaemonError, PoolLock, ServeConfig};
use thinpool::pool::FilePool;
use thinpool::units::{Bytes, Sectors};

const T: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

/// Whether the last commit in a live pool's metadata maps every 64 KiB block of
/// `[offset, offset + len)` in some volume, as Debian's thin_dump reads it (a dump that
/// meets a superblock being rewritten fails, and counts as not yet).
fn committed(meta: &Path, offset: u64, len: u64) -> bool {
    require_tool("thin_dump");
    let out = Command::new("thin_dump").arg(meta).output().unwrap();
    if !out.status.success() {
        return false;
    }
    let maps = support::engine::dump_mappings(&String::from_utf8_lossy(&out.stdout));
    let want = offset / (64 << 10)..(offset + len).div_ceil(64 << 10);
    maps.values().any(|m| want.clone().all(|b| m.iter().any(|&(o, _, _)| o == b)))
}

/// A pool with 64 KiB blocks and the given volumes.
fn make_pool(dir: &Path, data: u64, vols: &[(&str, u64)]) {
    let pool = FilePool::create(dir, Bytes::new(data), None, Sectors(128)).expect("create pool");
    for (n, s) in vols {
        pool.create_volume(n, Bytes::new(*s)).expect("create volume");
    }
    pool.commit().unwrap();
}

fn uri(sock: &Path, name: &str) -> String {
    format!("nbd+unix:///{name}?socket={}", sock.display())
}

struct InProcess {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), DaemonError>>>,
    sock: PathBuf,
}

impl InProcess {
    fn start(dir: &Path) -> Self {
        let sock = dir.join("nbd.sock");
        let cfg = ServeConfig {
            listen: "none".into(),
            socket: Some(sock.clone()),
            read_only: vec!["frozen".into()],
            ..ServeConfig::default()
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (dir.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || daemon::serve_until(&d, &cfg, s));
        wait_socket(&sock, Duration::from_secs(30));
        let ctl = control::socket_path(dir);
        wait_for("the control socket", Duration::from_secs(10), || ctl.exists());
        Self { stop, thread: Some(thread), sock }
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap().expect("daemon returned an error");
    }
}

#[test]
fn pool_exports_work_with_real_clients() {
    let dir = scratch();
    let d = dir.path();
    make_pool(d, 512 * MIB, &[("vol", 128 * MIB), ("half", 64 * MIB), ("frozen", 4 * MIB)]);
    let srv = InProcess::start(d);
    // Only one writer per pool.
    match PoolLock::acquire(d) {
        Err(DaemonError::InUse { pid, .. }) => assert_eq!(pid, std::process::id()),
        other => panic!("second open must fail, got {:?}", other.map(|_| ())),
    }
    let out = ok("nbdinfo", &["--list", "--json", &uri(&srv.sock, "")], T);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<&str> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["frozen", "half", "vol"]);

    // Management through the control socket while serving.
    let create = Request::Create {
        name: "new".into(),
        size: Bytes::new(8 * MIB),
        export: false,
        encrypted: false,
        luks_header: None,
    };
    let r = control::request(d, &create).unwrap();
    assert!(r.ok, "{r:?}");
    let out = ok("nbdinfo", &["--list", "--json", &uri(&srv.sock, "")], T);
    assert!(out.contains("\"new\""), "created volume is exported:\n{out}");
    // The same name again is refused.
    let r = control::request(d, &create).unwrap();
    assert!(!r.ok && r.error.as_deref().unwrap_or("").contains("exists"), "{r:?}");
    let st = control::request(d, &Request::Status).unwrap();
    assert!(st.ok && st.data["volumes"] == 4, "{st:?}");

    // Half-written volume: the map shows holes exactly where nothing was written.
    ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x42 0 8M",
            "-c",
            "write -P 0x43 32M 64k",
            &uri(&srv.sock, "half"),
        ],
        T,
    );
    let got = nbdinfo_map(&uri(&srv.sock, "half"), T);
    assert_eq!(
        got,
        vec![
            (0, 8 * MIB, 0),
            (8 * MIB, 24 * MIB, 3),
            (32 * MIB, 64 << 10, 0),
            (32 * MIB + (64 << 10), 32 * MIB - (64 << 10), 3)
        ]
    );

    // WRITE_ZEROES without NO_HOLE unmaps; with NO_HOLE mapped blocks stay mapped. (Raw
    // client: qemu skips zeroing ranges that block status already reports as zero.)
    {
        use thinpool::nbd::proto::wire::{CMD_FLAG_NO_HOLE, CMD_WRITE_ZEROES};
        let mut c = client::Client::connect_unix(&srv.sock, "half", true, false);
        assert_eq!(c.cmd(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 32 * MIB, 4096).error, 0);
        assert_eq!(c.cmd(CMD_WRITE_ZEROES, 0, 0, 4 * MIB).error, 0);
        assert_eq!(c.read(0, 4 << 20).unwrap(), vec![0; 4 << 20]);
        c.disconnect();
    }

    // qemu-io patterns, zeroes, discard, flush on a pool volume.
    let script = [
        "write -P 0xab 0 1M",
        "read -P 0xab 0 1M",
        "write -f -P 0xcd 4M 100k",
        "read -P 0xcd 4M 100k",
        "write -z 0 512k",
        "read -P 0 0 512k",
        "read -P 0xab 512k 512k",
        "write -P 0x11 8M 2M",
        "discard 8M 1M",
        "read -P 0 8M 1M",
        "read -P 0x11 9M 1M",
        "flush",
    ];
    qemu_io(&uri(&srv.sock, "vol"), &script, T);

    // nbdcopy round trip over 4 connections.
    let size = 64 * MIB as usize;
    let mut src = random_bytes(size, 77);
    src[(16 << 20)..(24 << 20)].fill(0);
    let sp = d.join("src.img");
    std::fs::write(&sp, &src).unwrap();
    ok("nbdcopy", &["--connections=4", "--flush", sp.to_str().unwrap(), &uri(&srv.sock, "vol")], T);
    let bp = d.join("back.img");
    ok("nbdcopy", &["--connections=4", &uri(&srv.sock, "vol"), bp.to_str().unwrap()], T);
    let back = std::fs::read(&bp).unwrap();
    assert!(back[..size] == src[..], "nbdcopy round trip through the pool differs");
    // Again with other data in 1 MiB requests: the blocks are mapped now, so the server
    // splices most payloads from the socket straight to the data file (conn.rs).
    let src = random_bytes(size, 78);
    std::fs::write(&sp, &src).unwrap();
    let req = "--request-size=1048576";
    ok(
        "nbdcopy",
        &["--connections=4", req, "--flush", sp.to_str().unwrap(), &uri(&srv.sock, "vol")],
        T,
    );
    ok("nbdcopy", &["--connections=4", &uri(&srv.sock, "vol"), bp.to_str().unwrap()], T);
    let back = std::fs::read(&bp).unwrap();
    assert!(back[..size] == src[..], "spliced overwrites differ");

    // A spliced payload whose request fails is dropped, and the connection goes on.
    {
        use thinpool::nbd::proto::wire::ENOSPC;
        let mut c = client::Client::connect_unix(&srv.sock, "half", true, false);
        let (a, b) = (random_bytes(1 << 20, 5), random_bytes(1 << 20, 6));
        assert_eq!(c.write(40 * MIB, &a, 0), 0, "allocating write");
        assert_eq!(c.write(64 * MIB - (512 << 10), &a, 0), ENOSPC, "beyond the end");
        assert_eq!(c.write(40 * MIB, &b, 0), 0, "overwrite");
        assert_eq!(c.write(4 * MIB, &a, 0), 0, "overwrite of qemu-io's bytes");
        assert!(c.read(40 * MIB, 1 << 20).unwrap() == b, "overwrite after a failed write");
        assert!(c.read(4 * MIB, 1 << 20).unwrap() == a, "second overwrite");
        c.disconnect();
    }

    // fio with verification, 4 jobs on their own connections.
    let fu = format!("--uri={}", uri(&srv.sock, "vol"));
    let out = ok(
        "fio",
        &[
            "--name=v",
            "--ioengine=nbd",
            &fu,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--size=8M",
            "--numjobs=4",
            "--offset_increment=16M",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=json",
        ],
        T,
    );
    let j: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    for job in j["jobs"].as_array().unwrap() {
        assert_eq!(job["error"], 0, "{job}");
        assert!(job["read"]["io_bytes"].as_u64().unwrap() >= 8 * MIB);
    }

    // The read-only volume refuses writes.
    let out = run("qemu-io", &["-f", "raw", "-c", "write 0 4k", &uri(&srv.sock, "frozen")], T);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        text.contains("ermission") || text.contains("read-only") || text.contains("read only"),
        "write to read-only: {text}"
    );

    // Snapshot and remove through the control socket.
    ok("qemu-io", &["-f", "raw", "-c", "write -P 0x99 100M 64k", &uri(&srv.sock, "vol")], T);
    let snap = Request::Snapshot { origin: "vol".into(), name: "snap".into() };
    assert!(control::request(d, &snap).unwrap().ok);
    // Copy-on-write: the origin changes, the snapshot keeps the old bytes.
    ok("qemu-io", &["-f", "raw", "-c", "write -P 0x98 100M 4k", &uri(&srv.sock, "vol")], T);
    ok("qemu-io", &["-f", "raw", "-c", "read -P 0x99 100M 64k", &uri(&srv.sock, "snap")], T);
    let (a, b) = ("read -P 0x98 100M 4k", "read -P 0x99 102404k 60k");
    ok("qemu-io", &["-f", "raw", "-c", a, "-c", b, &uri(&srv.sock, "vol")], T);
    assert!(control::request(d, &Request::Remove { name: "new".into() }).unwrap().ok);
    let out = ok("nbdinfo", &["--list", "--json", &uri(&srv.sock, "")], T);
    assert!(!out.contains("\"new\"") && out.contains("\"snap\""), "{out}");

    srv.stop();
    thin_check(&d.join(FilePool::METADATA));
    // Everything written is there after a reopen.
    let pool = FilePool::open(d).unwrap();
    let id = pool.volume("vol").unwrap().id;
    let mut buf = vec![0u8; 1 << 20];
    pool.read(id, 60 * MIB, &mut buf).unwrap();
    assert!(buf[..] == src[(60 << 20)..(61 << 20)], "bytes beyond fio's ranges are nbdcopy's");
    let half = pool.volume("half").unwrap().id;
    assert_eq!(pool.extents(half, 32 * MIB, 64 << 10).unwrap(), vec![(64 << 10, true)]);
    assert_eq!(pool.extents(half, 0, 4 * MIB).unwrap(), vec![(4 * MIB, false)]);
    assert!(PoolLock::holder(d).is_none(), "lock released after shutdown");
}

#[test]
fn flushed_data_survives_sigkill_and_metadata_stays_clean() {
    let dir = scratch();
    let d = dir.path();
    make_pool(d, 128 * MIB, &[("v", 32 * MIB)]);
    let sock = d.join("nbd.sock");
    let mut child = cli::serve_unix(d, &sock);
    match PoolLock::acquire(d) {
        Err(e @ DaemonError::InUse { .. }) => {
            assert!(e.to_string().contains(&format!("in use by pid {}", child.id())), "{e}");
        }
        other => panic!("expected InUse, got {:?}", other.map(|_| ())),
    }
    // Write and FLUSH (qemu-io's flush), and some FUA writes, then kill -9.
    qemu_io(&uri(&sock, "v"), &["write -P 0x5a 0 4M", "write -P 0x6b 10M 1M", "flush"], T);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    thin_check(&d.join(FilePool::METADATA));
    let mut child = cli::serve_unix(d, &sock);
    qemu_io(&uri(&sock, "v"), &["read -P 0x5a 0 4M", "read -P 0x6b 10M 1M", "read -P 0 4M 6M"], T);
    // Unflushed writes become durable through the periodic committer within about a second
    // (raw client: no FLUSH, no FUA, and the connection stays open across the kill).
    let mut c = client::Client::connect_unix(&sock, "v", false, false);
    assert_eq!(c.write(20 * MIB, &vec![0x7c; 1 << 20], 0), 0);
    let meta = d.join(FilePool::METADATA);
    wait_for("the periodic commit", Duration::from_secs(30), || committed(&meta, 20 * MIB, MIB));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(c);
    thin_check(&d.join(FilePool::METADATA));
    let mut child = cli::serve_unix(d, &sock);
    ok("qemu-io", &["-f", "raw", "-c", "read -P 0x7c 20M 1M", &uri(&sock, "v")], T);
    // SIGTERM: clean shutdown, exit status 0, lock released, metadata clean.
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let mut status = None;
    wait_for("the daemon to exit on SIGTERM", Duration::from_secs(30), || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    assert!(status.success(), "daemon exit status {status}");
    assert!(PoolLock::holder(d).is_none());
    thin_check(&d.join(FilePool::METADATA));
}
