//! Waiting for devices with a deadline.
//!
//! Nothing in the appliance announces a device (no udev): a virtio-serial port's directory in
//! `/sys/class/virtio-ports` can exist before its `name` attribute is filled in (the host
//! sends the name in a separate control message, `VIRTIO_CONSOLE_PORT_NAME`, after
//! `VIRTIO_CONSOLE_PORT_ADD`; drivers/char/virtio_console.c), and with several vCPUs the
//! virtio probes run concurrently with PID 1. So every device init needs is polled until it
//! is there or a deadline passes, never looked for once.
//!
//! The time source is a seam ([`Clock`]) so the policy is tested on the host with a clock that
//! only moves when the waiter sleeps.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long init waits for a device the boot needs.
pub const DEVICE_WAIT: Duration = Duration::from_secs(15);
/// The first poll interval; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(100);

/// The time source of a wait.
pub trait Clock {
    fn now(&self) -> Instant;
    fn sleep(&self, d: Duration);
}

/// The real clock.
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{what} did not appear within {waited:?}{}", last.as_ref().map(|l| format!(" (last seen: {l})")).unwrap_or_default())]
pub struct WaitError {
    pub what: String,
    pub waited: Duration,
    /// What the last look found, when it found something incomplete.
    pub last: Option<String>,
}

/// What one look found.
pub enum Look<T> {
    Found(T),
    /// Not there (yet).
    Missing,
    /// Partly there: the text says what was seen (kept for the error).
    Partial(String),
}

/// Looks with `probe` until it finds something or `timeout` has passed; always looks at least
/// once, and once more at the deadline.
pub fn until<T>(
    clock: &dyn Clock,
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Look<T>,
) -> Result<(T, Duration), WaitError> {
    let start = clock.now();
    let mut poll = FIRST_POLL;
    let mut last = None;
    loop {
        match probe() {
            Look::Found(t) => return Ok((t, clock.now().saturating_duration_since(start))),
            Look::Missing => {}
            Look::Partial(s) => last = Some(s),
        }
        let waited = clock.now().saturating_duration_since(start);
        if waited >= timeout {
            return Err(WaitError { what: what.to_owned(), waited, last });
        }
        clock.sleep(poll.min(timeout - waited));
        poll = (poll * 2).min(MAX_POLL);
    }
}

/// One look for the virtio-serial port named `name` under `/sys/class/virtio-ports`: a port
/// whose `name` is still empty counts as partial.
pub fn look_port(sys_class_virtio_ports: &Path, name: &str) -> Look<PathBuf> {
    let Ok(dir) = std::fs::read_dir(sys_class_virtio_ports) else { return Look::Missing };
    let mut entries: Vec<_> = dir.flatten().map(|e| e.file_name()).collect();
    entries.sort();
    let mut unnamed = Vec::new();
    for e in entries {
        match std::fs::read_to_string(sys_class_virtio_ports.join(&e).join("name")) {
            Ok(n) if n.trim() == name => return Look::Found(PathBuf::from("/dev").join(e)),
            Ok(n) if n.trim().is_empty() => unnamed.push(e.to_string_lossy().into_owned()),
            Ok(_) => {}
            Err(_) => unnamed.push(e.to_string_lossy().into_owned()),
        }
    }
    if unnamed.is_empty() {
        Look::Missing
    } else {
        Look::Partial(format!("port(s) without a name yet: {}", unnamed.join(",")))
    }
}

/// One look for the pool's disks: the named ones must all be in `sys_block` (by their
/// `/dev` name); with none named, at least one virtio disk other than the config disk
/// ([`crate::options::CONFIG_DISK_SERIAL`]) must be.
pub fn look_disks(sys_block: &Path, named: Option<&[PathBuf]>) -> Look<Vec<PathBuf>> {
    match named {
        None => {
            let config = crate::options::config_disk(sys_block);
            let mut found = crate::pool::data_disks(sys_block);
            found.retain(|d| Some(d) != config.as_ref());
            if found.is_empty() {
                Look::Missing
            } else {
                Look::Found(found)
            }
        }
        Some(list) => {
            let missing: Vec<String> = list
                .iter()
                .filter(|d| {
                    let name = d.file_name().unwrap_or_default();
                    !sys_block.join(name).exists()
                })
                .map(|d| d.display().to_string())
                .collect();
            if missing.is_empty() {
                Look::Found(list.to_vec())
            } else if missing.len() < list.len() {
                Look::Partial(format!("still missing {}", missing.join(",")))
            } else {
                Look::Missing
            }
        }
    }
}

/// One look for a block device's size in sectors (`/sys/block/NAME/size`): found once it is
/// non-zero (an nbd or ublk device exists before its size is set).
pub fn look_block_size(sys_block: &Path, name: &str) -> Look<u64> {
    match std::fs::read_to_string(sys_block.join(name).join("size")) {
        Ok(s) => match s.trim().parse::<u64>() {
            Ok(0) => Look::Partial(format!("{name} has size 0")),
            Ok(n) => Look::Found(n),
            Err(_) => Look::Partial(format!("{name}/size reads {s:?}")),
        },
        Err(_) => Look::Missing,
    }
}

/// The pool's disks (`pool.devices`, or every virtio disk), waited for.
pub fn pool_disks(cfg: &crate::config::Pool) -> Result<Vec<PathBuf>, WaitError> {
    let named = cfg.device_list();
    let what = match &named {
        Some(l) => format!(
            "pool disk(s) {}",
            l.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(",")
        ),
        None => "a virtio data disk (/dev/vd*)".to_owned(),
    };
    until(&RealClock, &what, DEVICE_WAIT, || look_disks(Path::new("/sys/block"), named.as_deref()))
        .map(|(d, _)| d)
}

/// A block device (`nbd0`, `ublkb0`) with a non-zero size and its `/dev` node, waited for.
pub fn block_device(name: &str) -> Result<u64, WaitError> {
    let dev = Path::new("/dev").join(name);
    until(&RealClock, &format!("/dev/{name} with a size"), DEVICE_WAIT, || {
        match look_block_size(Path::new("/sys/block"), name) {
            Look::Found(_) if !dev.exists() => Look::Partial(format!("no {}", dev.display())),
            other => other,
        }
    })
    .map(|(n, _)| n)
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;

    /// Moves only when slept on; records each sleep.
    struct FakeClock {
        start: Instant,
        at: Cell<Duration>,
        sleeps: RefCell<Vec<Duration>>,
    }

    impl FakeClock {
        fn new() -> Self {
            Self {
                start: Instant::now(),
                at: Cell::new(Duration::ZERO),
                sleeps: RefCell::default(),
            }
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> Instant {
            self.start + self.at.get()
        }
        fn sleep(&self, d: Duration) {
            self.at.set(self.at.get() + d);
            self.sleeps.borrow_mut().push(d);
        }
    }

    #[test]
    fn found_later_reports_the_time_waited() {
        let c = FakeClock::new();
        let mut n = 0;
        let (v, waited) = until(&c, "thing", Duration::from_secs(1), || {
            n += 1;
            if n == 4 {
                Look::Found(7)
            } else {
                Look::Missing
            }
        })
        .unwrap();
        assert_eq!(v, 7);
        // 5 + 10 + 20 ms of back-off before the fourth look.
        assert_eq!(waited, Duration::from_millis(35));
        assert_eq!(*c.sleeps.borrow(), [5, 10, 20].map(Duration::from_millis));
    }

    #[test]
    fn gives_up_at_the_deadline_with_what_it_last_saw() {
        let c = FakeClock::new();
        let mut looks = 0;
        let e = until::<()>(&c, "agent port x", Duration::from_secs(2), || {
            looks += 1;
            Look::Partial("vport0p1 without a name".into())
        })
        .unwrap_err();
        assert_eq!(e.what, "agent port x");
        assert_eq!(e.waited, Duration::from_secs(2));
        assert_eq!(e.last.as_deref(), Some("vport0p1 without a name"));
        assert!(e.to_string().contains("did not appear within 2s"), "{e}");
        // The poll interval is capped, so the deadline is checked often, and the last
        // sleep is cut to land on it.
        assert!(c.sleeps.borrow().iter().all(|s| *s <= MAX_POLL));
        assert!(looks > 20, "{looks}");
    }

    #[test]
    fn zero_timeout_still_looks_once() {
        let c = FakeClock::new();
        assert_eq!(until(&c, "x", Duration::ZERO, || Look::Found(1)).unwrap().0, 1);
        let e = until::<()>(&c, "x", Duration::ZERO, || Look::Missing).unwrap_err();
        assert_eq!((e.waited, e.last), (Duration::ZERO, None));
        assert!(c.sleeps.borrow().is_empty());
    }

    fn port(dir: &Path, p: &str, name: Option<&str>) {
        std::fs::create_dir_all(dir.join(p)).unwrap();
        if let Some(n) = name {
            std::fs::write(dir.join(p).join("name"), format!("{n}\n")).unwrap();
        }
    }

    #[test]
    fn port_is_partial_until_its_name_arrives() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(look_port(&d.path().join("nope"), "a"), Look::Missing));
        assert!(matches!(look_port(d.path(), "a"), Look::Missing));
        port(d.path(), "vport0p0", Some("org.qemu.guest_agent.0"));
        port(d.path(), "vport0p1", None);
        match look_port(d.path(), "org.lamina.agent.0") {
            Look::Partial(s) => assert!(s.contains("vport0p1"), "{s}"),
            _ => panic!("expected partial"),
        }
        std::fs::write(d.path().join("vport0p1/name"), "\n").unwrap();
        assert!(matches!(look_port(d.path(), "org.lamina.agent.0"), Look::Partial(_)));
        std::fs::write(d.path().join("vport0p1/name"), "org.lamina.agent.0\n").unwrap();
        match look_port(d.path(), "org.lamina.agent.0") {
            Look::Found(p) => assert_eq!(p, Path::new("/dev/vport0p1")),
            _ => panic!("expected found"),
        }
    }

    /// The real clock: the name is written by another thread once the waiter has seen the
    /// unnamed port (a look that came back empty), so it is found only by looking again.
    #[test]
    fn waits_for_a_port_named_late() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let d = tempfile::tempdir().unwrap();
        port(d.path(), "vport1p1", None);
        let misses = AtomicUsize::new(0);
        let (p, _) = std::thread::scope(|s| {
            s.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(10);
                while misses.load(Ordering::SeqCst) < 1 && Instant::now() < deadline {
                    std::thread::yield_now();
                }
                std::fs::write(d.path().join("vport1p1/name"), "org.lamina.agent.0\n").unwrap();
            });
            until(&RealClock, "agent port", Duration::from_secs(10), || {
                let look = look_port(d.path(), "org.lamina.agent.0");
                if !matches!(look, Look::Found(_)) {
                    misses.fetch_add(1, Ordering::SeqCst);
                }
                look
            })
            .unwrap()
        });
        assert_eq!(p, Path::new("/dev/vport1p1"));
        assert!(misses.load(Ordering::SeqCst) >= 1, "found before the name was written?");
    }

    #[test]
    fn disks_named_or_any() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(look_disks(d.path(), None), Look::Missing));
        let named = [PathBuf::from("/dev/vda"), PathBuf::from("/dev/vdb")];
        assert!(matches!(look_disks(d.path(), Some(&named)), Look::Missing));
        std::fs::create_dir(d.path().join("vda")).unwrap();
        match look_disks(d.path(), Some(&named)) {
            Look::Partial(s) => assert_eq!(s, "still missing /dev/vdb"),
            _ => panic!("expected partial"),
        }
        match look_disks(d.path(), None) {
            Look::Found(v) => assert_eq!(v, [PathBuf::from("/dev/vda")]),
            _ => panic!("expected found"),
        }
        std::fs::create_dir(d.path().join("vdb")).unwrap();
        assert!(matches!(look_disks(d.path(), Some(&named)), Look::Found(v) if v == named));
    }

    #[test]
    fn block_size_waits_for_non_zero() {
        let d = tempfile::tempdir().unwrap();
        assert!(matches!(look_block_size(d.path(), "nbd0"), Look::Missing));
        std::fs::create_dir(d.path().join("nbd0")).unwrap();
        std::fs::write(d.path().join("nbd0/size"), "0\n").unwrap();
        assert!(
            matches!(look_block_size(d.path(), "nbd0"), Look::Partial(s) if s.contains("size 0"))
        );
        std::fs::write(d.path().join("nbd0/size"), "20971520\n").unwrap();
        assert!(matches!(look_block_size(d.path(), "nbd0"), Look::Found(20971520)));
    }
}
