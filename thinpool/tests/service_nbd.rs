//! The NBD daemon over the service on a device-backed pool (a group directory): writes over
//! NBD wait while autoextend grows the pool, then fail with ENOSPC once the group is full;
//! a volume removed while a client is connected is deleted when it disconnects.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::Client;
use support::service::*;
use support::{thin_check_file, wait_for};
use thinpool::daemon::control::{self, Request};
use thinpool::daemon::{self, ServeConfig};
use thinpool::io::{BlockDevice, FileDevice};
use thinpool::units::Bytes;
use thinpool::vg::autoextend::ExtendAction;
use thinpool::vg::{PoolConfig, VgPool, VolumeGroup};

/// `daemon::serve_until` on a thread, serving NBD on the Unix socket `sock` (no TCP) and control on
/// the pool's socket; returned once both sockets answer.
struct InProcess {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Result<(), daemon::DaemonError>>,
}

impl InProcess {
    fn start(pool: &Path, sock: &Path) -> Self {
        let sock = sock.to_owned();
        let cfg =
            ServeConfig { listen: "none".into(), socket: Some(sock.clone()), ..Default::default() };
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s) = (pool.to_owned(), stop.clone());
        let thread = std::thread::spawn(move || daemon::serve_until(&d, &cfg, s));
        wait_for("the daemon's sockets", Duration::from_secs(30), || {
            std::os::unix::net::UnixStream::connect(&sock).is_ok()
                && control::socket_path(pool).exists()
        });
        Self { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap().unwrap();
    }
}

fn ctl(dir: &Path, req: Request) -> serde_json::Value {
    let r = control::request(dir, &req).unwrap();
    assert!(r.ok, "{req:?}: {:?}", r.error);
    r.data
}

#[test]
fn nbd_over_a_device_backed_pool() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    std::fs::create_dir(&pool).unwrap();
    {
        // data 120, metadata 40, 40 free extents of 64 KiB; writes wait at most 4 s (enough for
        // autoextend on a loaded machine).
        let p = device(&pool, "dev0", 200);
        let opts = ["dm.thinp_percent=60", "dm.thinp_metapercent=20", "dm.min_free_space=0%"];
        let config =
            PoolConfig::from_opts(opts.iter().copied().chain(["lamina.no_space_timeout=4"]))
                .unwrap();
        let dev: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&p).unwrap());
        let vg = VolumeGroup::create_sized(vec![dev], config, false, EXT).unwrap();
        let vp = VgPool::over(vg).unwrap();
        vp.pool().create_volume("a", Bytes::new(1 << 30)).unwrap();
        vp.pool().create_volume("b", Bytes::new(1 << 30)).unwrap();
        vp.pool().commit().unwrap();
    }
    let sock = dir.path().join("nbd.sock");
    let daemon = InProcess::start(&pool, &sock);

    // The CLI goes through the daemon's control socket while it serves the pool.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_thinpool"))
        .args(["status", pool.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["Pool Name"], "lamina-thinpool");
    assert_eq!(st["data_total"], 120 * EXT);

    // Deferred deletion: "b" is removed while a client has it open.
    let mut cb = Client::connect_unix(&sock, "b", false, false);
    assert_eq!(cb.write(0, &pattern(0, 7), 0), 0);
    let r = ctl(&pool, Request::Remove { name: "b".into() });
    assert_eq!(r["deferred"], true);
    let names: Vec<String> = ctl(&pool, Request::List)
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["a"]);
    let st = ctl(&pool, Request::Status);
    assert_eq!(st["devicemapper"]["Deferred Deleted Device Count"], 1);
    assert_eq!(cb.read(0, 8).unwrap(), pattern(0, 7)[..8].to_vec(), "still served");
    cb.disconnect();
    wait_for("the deferred deletion", Duration::from_secs(10), || {
        ctl(&pool, Request::Status)["devicemapper"]["Deferred Deleted Device Count"] == 0
    });

    // Fill "a": writes wait for autoextend (no error) until the group is out of extents,
    // then ENOSPC after no_space_timeout.
    let mut ca = Client::connect_unix(&sock, "a", false, false);
    let mut n = 0;
    let (errno, took) = loop {
        let t = Instant::now();
        let e = ca.write(n * EXT, &pattern(n, 1), 0);
        if e != 0 {
            break (e, t.elapsed());
        }
        n += 1;
        assert!(n < 1000, "never filled");
    };
    assert_eq!(errno, 28, "ENOSPC");
    assert!(took >= Duration::from_secs(4), "{took:?}");
    assert_eq!(n, 160, "120 data extents + 40 grown into");
    let ev = events(&pool);
    assert!(ev.iter().any(|e| e.action == ExtendAction::Extended), "{ev:?}");
    for i in [0, 80, 159] {
        assert_eq!(ca.read(i * EXT, EXT as usize).unwrap(), pattern(i, 1), "block {i}");
    }
    ca.disconnect();
    daemon.stop();

    let vp = VgPool::open(std::slice::from_ref(&pool)).unwrap();
    assert_eq!(vp.pool().volumes().unwrap().len(), 1);
    thin_check_device(vp.vg().metadata_region().as_ref(), dir.path(), &[]);
}

#[test]
fn nbd_metadata_exhaustion_answers_writes_with_eperm_and_keeps_reads() {
    let dir = tempfile::tempdir().unwrap();
    let pool = dir.path().join("pool");
    {
        let p = thinpool::pool::FilePool::create(
            &pool,
            thinpool::units::Bytes::new(1 << 30),
            Some(thinpool::units::Bytes::new(64 * 4096)),
            thinpool::units::Sectors(128),
        )
        .unwrap();
        p.create_volume("v", Bytes::new(1 << 40)).unwrap();
        p.commit().unwrap();
    }
    let sock = dir.path().join("nbd.sock");
    let daemon = InProcess::start(&pool, &sock);
    let mut c = Client::connect_unix(&sock, "v", false, false);
    let mut ok = Vec::new();
    let errno = loop {
        let i = ok.len() as u64 * 7;
        let e = c.write(i * EXT, &i.to_le_bytes(), 0);
        if e != 0 {
            break e;
        }
        ok.push(i);
        assert!(ok.len() < 100_000, "metadata never filled");
    };
    assert_eq!(errno, 1, "EPERM once the pool is read-only");
    let st = ctl(&pool, Request::Status);
    assert!(st["read_only"].as_str().unwrap().contains("metadata"), "{st}");
    for &i in [ok[0], ok[ok.len() / 2], *ok.last().unwrap()].iter() {
        assert_eq!(c.read(i * EXT, 8).unwrap(), i.to_le_bytes().to_vec(), "block {i}");
    }
    let r = control::request(
        &pool,
        &Request::Create {
            name: "w".into(),
            size: Bytes::new(1 << 20),
            export: false,
            encrypted: false,
            luks_header: None,
        },
    )
    .unwrap();
    assert!(!r.ok && r.error.unwrap().contains("read-only"));
    c.disconnect();
    daemon.stop();
    let meta: Arc<dyn BlockDevice> = Arc::new(FileDevice::open(&pool.join("metadata")).unwrap());
    assert!(thinpool::service::needs_check(meta.as_ref()).unwrap());
    thin_check_file(&pool.join("metadata"), &[]);
}
