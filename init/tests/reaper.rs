//! Zombie reaping, tested in its own process (this binary is a child subreaper, and a global
//! `waitpid(-1)` must not run next to unrelated tests).

use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use init::reaper::{Exit, Reaper};

/// Tests share one reaper; serialise them so one never reaps the other's orphan.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| {
        // Orphans of our children re-parent to us, as they would to PID 1.
        rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
            .expect("PR_SET_CHILD_SUBREAPER");
        Reaper::new()
    })
}

/// PIDs of our children that are zombies.
fn zombies() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // pid (comm) state ppid ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.first() == Some(&"Z") && f.get(1).and_then(|p| p.parse().ok()) == Some(me) {
            out.push(e.file_name().to_string_lossy().parse().unwrap_or(0));
        }
    }
    out
}

#[test]
fn registered_child_gets_its_status() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let r = reaper();
    let s = r.spawn(Command::new("sh").args(["-c", "exit 7"]).stdout(Stdio::null())).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        r.reap();
        if let Ok(e) = s.exit.try_recv() {
            break e;
        }
        assert!(Instant::now() < deadline, "child never reaped");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(exit, Exit::Code(7));
    assert!(!r.running().contains(&s.pid));
}

#[test]
fn orphans_are_reaped_and_leave_no_zombie() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let r = reaper();
    // sh exits at once; its background sleep becomes our orphan and exits 0.2 s later.
    let s = r
        .spawn(Command::new("sh").args(["-c", "sleep 0.2 & echo $!"]).stdout(Stdio::piped()))
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(&mut s.child.stdout.unwrap(), &mut out).unwrap();
    let orphan: i32 = out.trim().parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    while !seen {
        seen = r.reap().iter().any(|(pid, e)| *pid == orphan && *e == Exit::Code(0));
        assert!(Instant::now() < deadline, "orphan {orphan} never reaped; zombies {:?}", zombies());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!zombies().contains(&orphan));
    assert_eq!(s.exit.recv_timeout(Duration::from_secs(5)).unwrap(), Exit::Code(0));
}

/// The agent's `exec` relies on the reaper for exit statuses: run it with a reaping thread.
#[test]
fn agent_exec_collects_output_and_enforces_the_timeout() {
    let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let r = reaper();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let reaping = std::thread::spawn(move || {
        while !s2.load(std::sync::atomic::Ordering::Relaxed) {
            reaper().reap();
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let args = |argv: &[&str], t| init::agent::proto::ExecArgs {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout_secs: Some(t),
    };
    let ok = init::agent::exec(&args(&["sh", "-c", "echo out; echo err >&2; exit 3"], 10), 60, r)
        .unwrap();
    assert_eq!((ok.exit_code, ok.timed_out), (Some(3), false));
    assert_eq!((ok.stdout.as_str(), ok.stderr.as_str()), ("out\n", "err\n"));
    let t = Instant::now();
    let slow = init::agent::exec(&args(&["sleep", "30"], 1), 60, r).unwrap();
    assert!(slow.timed_out && slow.exit_code.is_none() && slow.signal == Some(9), "{slow:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let e = init::agent::exec(&args(&["/nonexistent"], 1), 60, r).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reaping.join().unwrap();
}
