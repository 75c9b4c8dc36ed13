//! The guest agent: JSON lines on the virtio-serial port `org.lamina.agent.0` (wire format in
//! [`proto`]). Runs on its own thread; asks the main loop to shut down through a wake pipe.

pub mod proto;

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use self::proto::{Command as Cmd, ErrorCode, ExecArgs, ExecResult, Memory, Mount, Reply, Status};
use crate::reaper::{Exit, Reaper};

/// State the agent reports; updated by the main thread.
#[derive(Debug, Default)]
pub struct Shared {
    pub ready: bool,
    pub summary: String,
    pub debug: bool,
    pub max_exec_secs: u64,
    pub pool: Option<Value>,
    /// The layer store, once the pool's XFS is up.
    pub images: Arc<std::sync::OnceLock<crate::containers::Images>>,
    /// The containers, once the store is open.
    pub containers: Arc<std::sync::OnceLock<Arc<crate::containers::service::Containers>>>,
}

/// Finds `/dev/<vportNpM>` whose port name is `name` (no udev, so no /dev/virtio-ports links),
/// waiting up to `timeout` for the port and its name to appear.
pub fn find_port(
    sys_class_virtio_ports: &Path,
    name: &str,
    timeout: Duration,
) -> Result<(PathBuf, Duration), crate::wait::WaitError> {
    crate::wait::until(&crate::wait::RealClock, &format!("agent port {name}"), timeout, || {
        crate::wait::look_port(sys_class_virtio_ports, name)
    })
}

/// The agent's code for a container-store error.
fn store_code(e: &crate::containers::error::StoreError) -> ErrorCode {
    use crate::containers::error::Kind;
    match e.kind {
        Kind::NotFound => ErrorCode::NotFound,
        Kind::Conflict | Kind::State => ErrorCode::Conflict,
        Kind::Invalid => ErrorCode::BadRequest,
        Kind::Unavailable | Kind::Io => ErrorCode::ExecFailed,
    }
}

type StoreResult = crate::containers::error::Result<Value>;

fn store_not_up() -> crate::containers::error::StoreError {
    use crate::containers::error::{Kind, StoreError};
    StoreError::new(Kind::Unavailable, "the store is not up")
}

/// The reply to a container-store request.
fn store_reply(id: Option<Value>, r: StoreResult) -> Reply {
    match r {
        Ok(v) => Reply::ok(id, v),
        Err(e) => Reply::err(id, store_code(&e), e.to_string()),
    }
}

fn system_request(
    req: proto::SystemRequest,
    images: &crate::containers::Images,
    ctrs: &crate::containers::service::Containers,
    reaper: &Reaper,
) -> StoreResult {
    use crate::containers::system;
    use proto::SystemRequest as S;
    match req {
        S::VolumeCreate { name } => system::volume_create(images, &name),
        S::VolumeList => system::volume_list(images, ctrs),
        S::VolumeRemove { name } => system::volume_remove(images, ctrs, &name),
        S::Df => system::df(images),
        S::Prune { all, volumes } => system::prune(images, ctrs, reaper, all, volumes),
    }
}

fn container_request(
    req: proto::ContainerRequest,
    c: &Arc<crate::containers::service::Containers>,
) -> StoreResult {
    use proto::ContainerRequest as C;
    match req {
        C::Run { spec } => c.run(spec),
        C::Start { name } => c.start(&name),
        C::Stop { name, timeout_secs } => {
            c.stop(&name, Duration::from_secs(timeout_secs.unwrap_or(10)))
        }
        C::Remove { name, force } => c.remove(&name, force),
        C::List { all } => Ok(c.list(all)),
        C::Logs { name, offset } => c.logs(&name, offset),
        C::Exec { name, argv, timeout_secs } => c.exec(&name, &argv, timeout_secs.unwrap_or(30)),
        C::Commit { name, image } => c.commit(&name, &image),
    }
}

fn network_request(
    req: proto::NetworkRequest,
    c: &crate::containers::service::Containers,
) -> StoreResult {
    use proto::NetworkRequest as N;
    match req {
        N::Create { name, subnet } => c.net.create(&name, subnet.as_deref()),
        N::List => Ok(c.net.list()),
        N::Remove { name } => c.network_remove(&name),
        N::Inspect { name } => c.net.inspect(&name),
    }
}

/// Answers one request. The bool is true when the caller must start the shutdown (after the
/// reply went out).
pub fn handle(
    cmd: Cmd,
    id: Option<Value>,
    shared: &Mutex<Shared>,
    reaper: &Reaper,
) -> (Reply, bool) {
    match cmd {
        Cmd::Help => (Reply::ok(id, proto::help()), false),
        Cmd::Status => {
            let s = shared.lock().unwrap_or_else(|p| p.into_inner());
            let st = status(&s);
            drop(s);
            match serde_json::to_value(st) {
                Ok(v) => (Reply::ok(id, v), false),
                Err(e) => (Reply::err(id, ErrorCode::Internal, e.to_string()), false),
            }
        }
        Cmd::Shutdown => (Reply::ok(id, serde_json::json!({"shutting_down": true})), true),
        Cmd::Unlock(p) => match crate::luks::accept_passphrase(&p.passphrase) {
            Ok(()) => (Reply::ok(id, serde_json::json!({"accepted": true})), false),
            Err(e) => (Reply::err(id, ErrorCode::ExecFailed, units::chain(&e)), false),
        },
        Cmd::System(req) => {
            let (images, ctrs) = {
                let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                (s.images.clone(), s.containers.clone())
            };
            let r = match (images.get(), ctrs.get()) {
                (Some(images), Some(ctrs)) => system_request(req, images, ctrs, reaper),
                _ => Err(store_not_up()),
            };
            (store_reply(id, r), false)
        }
        Cmd::Container(req) => {
            let c = shared.lock().unwrap_or_else(|p| p.into_inner()).containers.clone();
            let r = c.get().ok_or_else(store_not_up).and_then(|c| container_request(req, c));
            (store_reply(id, r), false)
        }
        Cmd::Network(req) => {
            let c = shared.lock().unwrap_or_else(|p| p.into_inner()).containers.clone();
            let r = c.get().ok_or_else(store_not_up).and_then(|c| network_request(req, c));
            (store_reply(id, r), false)
        }
        Cmd::Image(req) => {
            let images = shared.lock().unwrap_or_else(|p| p.into_inner()).images.clone();
            let r = images.get().ok_or_else(store_not_up).and_then(|images| match req {
                proto::ImageRequest::List => images.list(),
                proto::ImageRequest::Remove { name } => images.remove(&name),
            });
            (store_reply(id, r), false)
        }
        Cmd::Pool(req) => {
            let up = shared.lock().unwrap_or_else(|p| p.into_inner()).pool.is_some();
            if !up {
                return (Reply::err(id, ErrorCode::ExecFailed, "the pool is not up"), false);
            }
            use thinpool::daemon::control::Request as R;
            // An encrypted volume's LUKS2 header is made here, by cryptsetup with the
            // appliance's key; the daemon only gets the header.
            if let R::Create { name, size, export, encrypted: true, luks_header: None } = &req {
                let r = crate::luks::volume_header(size.get(), reaper)
                    .map_err(|e| units::chain(&e))
                    .and_then(|h| {
                        crate::pool::control_client()
                            .create_encrypted(name, *size, &h, *export)
                            .map_err(|e| units::chain(&e))
                    });
                return match r {
                    Ok(thin_id) => {
                        (Reply::ok(id, serde_json::json!({ "thin_id": thin_id })), false)
                    }
                    Err(e) => (Reply::err(id, ErrorCode::ExecFailed, e), false),
                };
            }
            match crate::pool::control_request(&req) {
                Ok(v) => (Reply::ok(id, v), false),
                Err(e) => (Reply::err(id, ErrorCode::ExecFailed, units::chain(&e)), false),
            }
        }
        Cmd::Exec(args) => {
            let (debug, max) = {
                let s = shared.lock().unwrap_or_else(|p| p.into_inner());
                (s.debug, s.max_exec_secs)
            };
            if !debug {
                return (
                    Reply::err(
                        id,
                        ErrorCode::Forbidden,
                        "exec is only available when booted with lamina.debug=1",
                    ),
                    false,
                );
            }
            match exec(&args, max, reaper) {
                Ok(r) => (Reply::ok(id, serde_json::to_value(r).unwrap_or(Value::Null)), false),
                Err(e) => {
                    (Reply::err(id, ErrorCode::ExecFailed, format!("{}: {e}", args.argv[0])), false)
                }
            }
        }
    }
}

fn status(s: &Shared) -> Status {
    let uptime_secs = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next().and_then(|x| x.parse().ok()))
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|r| {
                r.trim_start_matches(':').split_whitespace().next().and_then(|v| v.parse().ok())
            })
            .unwrap_or(0)
    };
    let mounts = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(Mount {
                source: f.first()?.to_string(),
                target: f.get(1)?.to_string(),
                fstype: f.get(2)?.to_string(),
            })
        })
        .collect();
    Status {
        uptime_secs,
        cpus: std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(0),
        kernel,
        memory: Memory { total_kib: kib("MemTotal"), available_kib: kib("MemAvailable") },
        mounts,
        pool: s.pool.as_ref().map(|_| crate::pool::live_status()),
        ready: s.ready,
        // Before READY the summary is empty; say what the boot waits for, if anything.
        summary: match crate::luks::waiting() {
            Some(w) if s.summary.is_empty() => w,
            _ => s.summary.clone(),
        },
        debug: s.debug,
    }
}

/// Output kept per stream.
const MAX_OUTPUT: u64 = 1 << 20;

/// Runs a command with a timeout (debug sessions only).
pub fn exec(args: &ExecArgs, max_secs: u64, reaper: &Reaper) -> std::io::Result<ExecResult> {
    let timeout = Duration::from_secs(args.timeout_secs.unwrap_or(10).min(max_secs.max(1)));
    let mut s = reaper.spawn(
        Command::new(&args.argv[0])
            .args(&args.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let reader = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(r) = r {
                let _ = r.take(MAX_OUTPUT).read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = reader(s.child.stdout.take().map(|x| Box::new(x) as Box<dyn Read + Send>));
    let err = reader(s.child.stderr.take().map(|x| Box::new(x) as Box<dyn Read + Send>));
    let (exit, timed_out) = match s.exit.recv_timeout(timeout) {
        Ok(e) => (Some(e), false),
        Err(_) => {
            if let Some(p) = rustix::process::Pid::from_raw(s.pid) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
            (s.exit.recv_timeout(Duration::from_secs(5)).ok(), true)
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let (exit_code, signal) = match exit {
        Some(Exit::Code(c)) => (Some(c), None),
        Some(Exit::Signal(s)) => (None, Some(s)),
        None => (None, None),
    };
    Ok(ExecResult { exit_code, signal, timed_out, stdout, stderr })
}

/// Serves the port forever. `wake` gets one byte when a shutdown was requested.
pub fn serve(port: PathBuf, shared: Arc<Mutex<Shared>>, reaper: Arc<Reaper>, wake: OwnedFd) {
    let mut file = loop {
        match std::fs::OpenOptions::new().read(true).write(true).open(&port) {
            Ok(f) => break f,
            Err(e) => {
                tracing::error!("agent: cannot open {}: {e}; retrying", port.display());
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    };
    tracing::info!("agent: serving on {}", port.display());
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // While no host is connected the port reports POLLHUP and reads return 0: wait a bit
        // instead of spinning (the port does not signal the connect through poll).
        let mut fds = [rustix::event::PollFd::new(&file, rustix::event::PollFlags::IN)];
        let _ =
            rustix::event::poll(&mut fds, Some(&rustix::event::Timespec { tv_sec: 1, tv_nsec: 0 }));
        let revents = fds[0].revents();
        if !revents.contains(rustix::event::PollFlags::IN) {
            if revents.contains(rustix::event::PollFlags::HUP) {
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        }
        let n = match file.read(&mut buf) {
            Ok(0) => {
                pending.clear(); // host went away: drop its half line
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Ok(n) => n,
            Err(e) => {
                tracing::warn!("agent: read: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).trim().to_owned();
            if line.is_empty() {
                continue;
            }
            let (reply, shutdown) = match proto::parse_request(&line) {
                Ok((id, cmd)) => handle(cmd, id, &shared, &reaper),
                Err(reply) => (reply, false),
            };
            if let Err(e) = file.write_all(reply.to_line().as_bytes()) {
                tracing::warn!("agent: write: {e}");
            }
            if shutdown {
                let _ = rustix::io::write(wake.as_fd(), b"s");
            }
        }
        if pending.len() > proto::MAX_LINE {
            let reply = Reply::err(None, ErrorCode::BadRequest, "request line too long");
            let _ = file.write_all(reply.to_line().as_bytes());
            pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(debug: bool) -> Mutex<Shared> {
        Mutex::new(Shared {
            ready: true,
            summary: "s".into(),
            debug,
            max_exec_secs: 5,
            ..Default::default()
        })
    }

    #[test]
    fn exec_is_forbidden_without_debug() {
        let args = ExecArgs { argv: vec!["true".into()], timeout_secs: None };
        let (r, stop) = handle(Cmd::Exec(args), Some(1.into()), &shared(false), &Reaper::new());
        assert!(!stop);
        assert_eq!(r.error.unwrap().code, ErrorCode::Forbidden);
    }

    #[test]
    fn status_reports_host_facts_and_null_pool() {
        let (r, stop) = handle(Cmd::Status, None, &shared(false), &Reaper::new());
        assert!(!stop);
        let v = r.ret.unwrap();
        assert_eq!(v["pool"], Value::Null);
        assert!(v["memory"]["total_kib"].as_u64().unwrap() > 0);
        assert!(v["mounts"].as_array().unwrap().iter().any(|m| m["target"] == "/"));
        assert!(!v["kernel"].as_str().unwrap().is_empty());
    }

    #[test]
    fn shutdown_asks_the_main_loop() {
        let (r, stop) = handle(Cmd::Shutdown, Some("x".into()), &shared(false), &Reaper::new());
        assert!(stop);
        assert_eq!(r.id, Some("x".into()));
    }

    #[test]
    fn finds_port_by_name() {
        let d = tempfile::tempdir().unwrap();
        for (p, n) in [("vport0p0", "org.qemu.guest_agent.0"), ("vport0p1", "org.lamina.agent.0")] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
            std::fs::write(d.path().join(p).join("name"), format!("{n}\n")).unwrap();
        }
        let found = find_port(d.path(), "org.lamina.agent.0", Duration::ZERO).unwrap();
        assert_eq!(found.0, PathBuf::from("/dev/vport0p1"));
        let e = find_port(d.path(), "nope", Duration::from_millis(30)).unwrap_err();
        assert_eq!(e.what, "agent port nope");
    }
}
