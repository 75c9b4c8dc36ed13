//! Host tier: the devicemapper driver's provider against a real pool daemon (thinpool's
//! `serve_until`, in this process, on a file pool): volumes, snapshots, removal and Docker's
//! status fields through the control socket. A block device per volume comes from the
//! daemon's ublk `attach`, which the host kernel cannot do: the driver says so and leaves
//! nothing behind. The whole driver over loop devices is in `contract.rs`.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use overlay::devmapper::{DeviceProvider, DmOptions, PoolDaemon};
use overlay::{ErrorKind, Store};

struct Daemon {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn start_daemon(dir: &std::path::Path) -> Daemon {
    thinpool::pool::FilePool::create(
        dir,
        thinpool::units::Bytes::new(1 << 30),
        None,
        thinpool::units::Sectors(128),
    )
    .unwrap()
    .commit()
    .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (d, s) = (dir.to_path_buf(), stop.clone());
    let thread = std::thread::spawn(move || {
        let cfg = thinpool::daemon::ServeConfig { listen: "none".into(), ..Default::default() };
        thinpool::daemon::serve_until(&d, &cfg, s).unwrap();
    });
    let sock = dir.join("control.sock");
    support::wait_for("the control socket", Duration::from_secs(20), || sock.exists());
    Daemon { stop, thread: Some(thread) }
}

#[test]
fn pool_daemon_provider_speaks_the_control_protocol() {
    let t = support::tmp();
    let pool = t.path().join("pool");
    let _d = start_daemon(&pool);
    let p = PoolDaemon { dir: pool.clone() };
    p.create("base", 64 << 20).unwrap();
    p.snapshot("base", "layer1").unwrap();
    p.snapshot("layer1", "c1").unwrap();
    let err = p.create("base", 64 << 20).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let err = p.snapshot("nope", "x").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    let u = p.usage().unwrap();
    assert_eq!(u.data_total, 1 << 30, "the data size in bytes");
    let field = |k: &str| u.fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
    assert!(field("Pool Name").is_some(), "{:?}", u.fields);
    assert!(field("Data Space Used").is_some(), "{:?}", u.fields);
    assert!(!p.remove("c1").unwrap(), "not open: deleted now");
    assert_eq!(p.remove("c1").unwrap_err().kind(), ErrorKind::NotFound);
    // The daemon's attach makes a ublk device, which the host kernel lacks (the VM has it).
    let err = p.attach("layer1").unwrap_err();
    assert!(
        err.to_string().contains("refused `attach`") && err.to_string().contains("ublk"),
        "{err}"
    );
}

#[test]
fn devicemapper_store_whose_attach_fails_says_why_and_leaves_no_base() {
    let t = support::tmp();
    let pool = t.path().join("pool");
    let _d = start_daemon(&pool);
    let root = t.path().join("store");
    let opts = DmOptions::parse(&["dm.basesize=64M"]).unwrap();
    let err = Store::open_devicemapper(&root, opts, Box::new(PoolDaemon { dir: pool.clone() }))
        .err()
        .expect("no ublk on the host");
    assert!(err.to_string().contains("attach"), "{err}");
    let left = thinpool::daemon::control::request(&pool, &thinpool::daemon::control::Request::List)
        .unwrap();
    assert_eq!(left.data, serde_json::json!([]), "the base volume was taken back");
}
