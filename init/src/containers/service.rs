//! Containers as services: crun runs each one (`crun run --no-pivot`: the guest's root is the
//! initramfs, which pivot_root refuses) as a child of PID 1; a thread per container waits
//! for its exit, records it, and applies the restart policy. A crash or an OOM kill is one
//! container's exit: the limits live in its own cgroup ([`super::cgroup`]), its output goes
//! through a pipe into a log file on the store's XFS, rotated by size.
//!
//! ```text
//! /var/lib/lamina/containers/NAME/
//! ├── spec.json       RunSpec (what `lamina run` asked)
//! ├── state.json      State (status, exit code, OOM, restarts)
//! ├── bundle/         the OCI bundle (config.json; the rootfs is the store's merged dir)
//! ├── log, log.1      stdout and stderr, LOG_MAX bytes each at most
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::cgroup;
use super::network::{self, Networks};
use super::spec::{Restart, RunSpec, State, Status};
use super::Images;
use crate::reaper::{Exit, Reaper};

pub const DIR: &str = "/var/lib/lamina/containers";
pub const CRUN: &str = "/usr/bin/crun";
/// A log file's size before it is rotated to `log.1`.
pub const LOG_MAX: u64 = 4 << 20;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

struct Entry {
    spec: RunSpec,
    state: State,
    /// When it was last started (shutdown stops the newest first).
    seq: u64,
    /// Set by stop/rm/shutdown: the exit that follows is not restarted.
    stopping: bool,
    /// A `--rm` container that exited and is being removed: `logs` still says running, so
    /// a foreground `run` returns only once the container (and its volumes) are free.
    removing: bool,
    /// A start is between its checks and crun's spawn (bundle, cgroup, CNI ADD: about a
    /// second): a stop waits for it rather than missing the container it starts.
    launching: bool,
}

impl Entry {
    fn new(spec: RunSpec, state: State) -> Entry {
        Entry { spec, state, seq: 0, stopping: false, removing: false, launching: false }
    }
}

/// Clears [`Entry::launching`] when a start ends, however it ends.
struct Launching<'a> {
    containers: &'a Containers,
    name: &'a str,
}

impl Drop for Launching<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.containers.lock().get_mut(self.name) {
            e.launching = false;
        }
    }
}

/// Every container of the store.
pub struct Containers {
    dir: PathBuf,
    cgroot: PathBuf,
    images: Arc<OnceLock<Images>>,
    reaper: Arc<Reaper>,
    map: Mutex<BTreeMap<String, Entry>>,
    seq: std::sync::atomic::AtomicU64,
    /// Shutdown began: nothing starts any more.
    down: std::sync::atomic::AtomicBool,
    /// Exit codes of `--rm` containers already removed (the last [`GONE_KEPT`]), so a
    /// foreground `run` that polls after the removal still learns how it ended.
    gone: Mutex<Vec<(String, i32, Vec<u8>)>>,
    /// The networks containers join ([`super::network`]).
    pub net: Networks,
}

const GONE_KEPT: usize = 64;

impl std::fmt::Debug for Containers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containers").field("dir", &self.dir).finish()
    }
}

use super::error::{Kind, Result as R, StoreError};

fn no_such(name: &str) -> StoreError {
    StoreError::no_such_container(name)
}

impl Containers {
    /// Loads the containers kept on the store; those with `--restart always` start again.
    pub fn open(images: Arc<OnceLock<Images>>, reaper: Arc<Reaper>) -> Arc<Containers> {
        let c = Arc::new(Containers {
            dir: PathBuf::from(DIR),
            cgroot: PathBuf::from(cgroup::ROOT),
            images,
            reaper,
            map: Mutex::new(BTreeMap::new()),
            seq: Default::default(),
            down: Default::default(),
            gone: Mutex::new(Vec::new()),
            net: Networks::open(Path::new(network::DIR), Path::new(network::RUN)),
        });
        let _ = std::fs::create_dir_all(&c.dir);
        let mut again = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&c.dir) {
            for e in rd.flatten() {
                let p = e.path();
                let spec: Option<RunSpec> = std::fs::read(p.join("spec.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let Some(spec) = spec else { continue };
                let mut state: State = std::fs::read(p.join("state.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                if matches!(state.status, Status::Running | Status::Restarting) {
                    // Running when the appliance went down.
                    state.status = Status::Exited;
                    state.pid = None;
                }
                if spec.restart == Restart::Always {
                    again.push(spec.name.clone());
                }
                c.lock().insert(spec.name.clone(), Entry::new(spec, state));
            }
        }
        for n in again {
            if let Err(e) = c.start_inner(&n, false) {
                crate::say(&format!("container {n}: restart at boot failed: {e}"));
            }
        }
        c
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn images(&self) -> R<&Images> {
        self.images.get().ok_or_else(|| StoreError::new(Kind::Unavailable, "the store is not up"))
    }

    fn cdir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn save(&self, name: &str, e: &Entry) {
        let d = self.cdir(name);
        let _ = std::fs::create_dir_all(&d);
        for (f, v) in [
            ("spec.json", serde_json::to_vec(&e.spec)),
            ("state.json", serde_json::to_vec(&e.state)),
        ] {
            if let Ok(b) = v {
                let tmp = d.join(format!("{f}.tmp"));
                if std::fs::write(&tmp, b).is_ok() {
                    let _ = std::fs::rename(&tmp, d.join(f));
                }
            }
        }
    }

    /// `lamina run`: creates the container on its image and starts it.
    pub fn run(self: &Arc<Self>, spec: RunSpec) -> R<Value> {
        spec.check().map_err(|e| StoreError::new(Kind::Invalid, e.to_string()))?;
        if spec.network_name() != network::NONE {
            self.net.get(spec.network_name())?;
            self.net.check_ports(&spec.name, &spec.port_maps())?;
        }
        if self.lock().contains_key(&spec.name) {
            return Err(StoreError::new(
                Kind::Conflict,
                format!("Conflict. The container name \"{}\" is already in use", spec.name),
            ));
        }
        let images = self.images()?;
        images.with(|s| {
            s.resolve_image(&spec.image)?;
            for v in spec.volume_binds() {
                if !s.volume_dir(&v.name).is_dir() {
                    s.volume_create(&v.name)?;
                }
            }
            s.create(&spec.image, &spec.name, spec.size).map(drop)
        })?;
        let name = spec.name.clone();
        self.gone.lock().unwrap_or_else(|p| p.into_inner()).retain(|(n, ..)| *n != name);
        let e = Entry::new(spec, State::default());
        self.save(&name, &e);
        self.lock().insert(name.clone(), e);
        self.start(&name)?;
        Ok(json!({"name": name}))
    }

    /// `lamina start`: starts a created or exited container.
    pub fn start(self: &Arc<Self>, name: &str) -> R<Value> {
        self.start_inner(name, true)
    }

    /// A user's start clears an earlier stop; a restart gives way to one.
    fn start_inner(self: &Arc<Self>, name: &str, user: bool) -> R<Value> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::new(Kind::Unavailable, "the appliance is shutting down"));
        }
        let spec = {
            let mut m = self.lock();
            let e = m.get_mut(name).ok_or_else(|| no_such(name))?;
            if e.state.status == Status::Running {
                return Ok(json!({"name": name, "already": "running"}));
            }
            if user {
                e.stopping = false;
            } else if e.stopping {
                e.state.status = Status::Exited;
                self.save(name, e);
                return Ok(json!({"name": name, "stopped": true}));
            }
            e.launching = true;
            e.spec.clone()
        };
        let _launching = Launching { containers: self, name };
        let bundle = self.cdir(name).join("bundle");
        let images = self.images()?;
        images.with(|s| s.bundle(name, &bundle, &spec.volume_binds()).map(drop))?;
        let cg = cgroup::prepare(&self.cgroot, name, spec.memory, spec.nano_cpus)
            .map_err(|e| StoreError::io("cgroup", e))?;
        let cfg_path = bundle.join("config.json");
        let mut cfg: Value = std::fs::read(&cfg_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                StoreError::new(Kind::Io, format!("{}: unreadable", cfg_path.display()))
            })?;
        spec.apply(&mut cfg, &cg);
        if spec.network_name() != network::NONE {
            let (ns, hosts, resolv) =
                self.net.attach(&self.reaper, name, spec.network_name(), &spec.port_maps())?;
            network::apply_oci(&mut cfg, &ns, &hosts, &resolv);
        }
        std::fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg).unwrap_or_default())
            .map_err(|e| StoreError::io(cfg_path.display(), e))?;
        // A container of that name left in crun's state by a crash would make `run` fail.
        let _ = Command::new(CRUN).args(["delete", "-f", name]).output();
        let oom_before = cgroup::oom_kills(&self.cgroot, name);
        let mut s = self
            .reaper
            .spawn(
                Command::new(CRUN)
                    .args(["run", "--no-pivot", "--bundle"])
                    .arg(&bundle)
                    .arg(name)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped()),
            )
            .map_err(|e| {
                let _ = self.net.detach(&self.reaper, name);
                StoreError::io(format!("starting {CRUN}"), e)
            })?;
        let log = self.cdir(name).join("log");
        for r in [
            s.child.stdout.take().map(|x| Box::new(x) as Box<dyn Read + Send>),
            s.child.stderr.take().map(|x| Box::new(x) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let log = log.clone();
            let _ = std::thread::Builder::new().name("log".into()).spawn(move || copy_log(r, &log));
        }
        {
            let mut m = self.lock();
            if let Some(e) = m.get_mut(name) {
                e.state.status = Status::Running;
                e.state.pid = Some(s.pid);
                e.state.exit_code = None;
                e.state.oom_killed = false;
                e.state.started_at = now();
                e.seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                self.save(name, e);
            }
        }
        let (me, n) = (self.clone(), name.to_owned());
        let exit = s.exit;
        std::thread::Builder::new()
            .name(format!("ctr-{name}"))
            .spawn(move || {
                let code = match exit.recv() {
                    Ok(Exit::Code(c)) => c,
                    Ok(Exit::Signal(sig)) => 128 + sig,
                    Err(_) => 255,
                };
                me.exited(&n, code, cgroup::oom_kills(&me.cgroot, &n) > oom_before);
            })
            .map_err(|e| StoreError::io("supervisor thread", e))?;
        Ok(json!({"name": name}))
    }

    /// The exit of a container's crun: record it, then restart, remove or leave it.
    fn exited(self: &Arc<Self>, name: &str, code: i32, oom: bool) {
        let (restart, rm) = {
            let mut m = self.lock();
            let Some(e) = m.get_mut(name) else { return };
            e.state.status = Status::Exited;
            e.state.pid = None;
            e.state.exit_code = Some(code);
            e.state.oom_killed = oom;
            e.state.finished_at = now();
            let down = self.down.load(std::sync::atomic::Ordering::SeqCst);
            let restart = !e.stopping
                && !down
                && match e.spec.restart {
                    Restart::No => false,
                    Restart::OnFailure => code != 0,
                    Restart::Always => true,
                };
            if restart {
                e.state.status = Status::Restarting;
                e.state.restarts += 1;
            }
            let rm = e.spec.rm && !restart && !down;
            e.removing = rm;
            self.save(name, e);
            (restart, rm)
        };
        crate::say(&format!(
            "container {name} exited with {code}{}{}",
            if oom { " (OOM-killed)" } else { "" },
            if restart { "; restarting" } else { "" }
        ));
        let _ = self.images().and_then(|i| i.with(|s| s.unmount(name)));
        cgroup::remove(&self.cgroot, name);
        // Off its network (its address freed) unless it restarts, or the appliance is
        // going down (attachments live in /run and end with the boot).
        if !restart && !self.down.load(std::sync::atomic::Ordering::SeqCst) {
            if let Err(e) = self.net.detach(&self.reaper, name) {
                crate::say(&format!("container {name}: leaving its network: {e}"));
            }
        }
        if restart {
            // Docker waits 100 ms before the first restart (doubling after that).
            std::thread::sleep(Duration::from_millis(100));
            if let Err(e) = self.start_inner(name, false) {
                crate::say(&format!("container {name}: restart failed: {e}"));
                let mut m = self.lock();
                if let Some(e) = m.get_mut(name) {
                    e.state.status = Status::Exited;
                    self.save(name, e);
                }
            }
        } else if rm {
            // Its output too (the tail), for a `run` that had not read it all yet.
            let log = self.cdir(name).join("log");
            let mut text = std::fs::read(&log).unwrap_or_default();
            let cut = text.len().saturating_sub(64 << 10);
            text.drain(..cut);
            let mut gone = self.gone.lock().unwrap_or_else(|p| p.into_inner());
            gone.push((name.to_owned(), code, text));
            let extra = gone.len().saturating_sub(GONE_KEPT);
            gone.drain(..extra);
            drop(gone);
            if let Err(e) = self.remove(name, false) {
                crate::say(&format!("container {name}: --rm removal failed: {e}"));
                if let Some(e) = self.lock().get_mut(name) {
                    e.removing = false;
                }
            }
        }
    }

    /// `lamina stop`: SIGTERM, `timeout`, SIGKILL; waits for the exit.
    pub fn stop(&self, name: &str, timeout: Duration) -> R<Value> {
        let launch_deadline = Instant::now() + Duration::from_secs(60);
        let running = loop {
            let mut m = self.lock();
            let e = m.get_mut(name).ok_or_else(|| no_such(name))?;
            e.stopping = true;
            if e.launching && Instant::now() < launch_deadline {
                // A start (often a restart) is spawning it: wait, then stop what it started.
                drop(m);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            if e.state.status == Status::Restarting {
                // Between a crash and its restart: the restart sees `stopping` and gives way.
                e.state.status = Status::Exited;
                self.save(name, e);
            }
            break e.state.status == Status::Running;
        };
        if !running {
            return Ok(json!({"name": name, "was": "not running"}));
        }
        // Reap while waiting: at shutdown the main loop, which reaps on SIGCHLD, has ended.
        let alive = || {
            let _ = self.reaper.reap();
            self.lock().get(name).is_some_and(|e| e.state.status == Status::Running)
        };
        let kill = |sig: &str| {
            let _ = Command::new(CRUN).args(["kill", name, sig]).output();
        };
        kill("TERM");
        let t = Instant::now();
        while alive() && t.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(50));
        }
        let killed = alive();
        if killed {
            kill("KILL");
            let t = Instant::now();
            while alive() && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if alive() {
            return Err(StoreError::new(Kind::Io, format!("container {name}: did not stop")));
        }
        Ok(json!({"name": name, "killed": killed}))
    }

    /// `lamina rm [-f]`.
    pub fn remove(&self, name: &str, force: bool) -> R<Value> {
        let status = self.lock().get(name).map(|e| e.state.status).ok_or_else(|| no_such(name))?;
        if matches!(status, Status::Running | Status::Restarting) {
            if !force {
                return Err(StoreError::new(
                    Kind::State,
                    format!(
                        "cannot remove container {name}: container is running: stop the \
                         container before removing or force remove"
                    ),
                ));
            }
            self.stop(name, Duration::ZERO)?;
        }
        let _ = Command::new(CRUN).args(["delete", "-f", name]).output();
        if let Err(e) = self.net.detach(&self.reaper, name) {
            crate::say(&format!("container {name}: leaving its network: {e}"));
        }
        self.images()?.with(|s| {
            let _ = s.unmount(name);
            s.remove(name)
        })?;
        cgroup::remove(&self.cgroot, name);
        self.lock().remove(name);
        let _ = std::fs::remove_dir_all(self.cdir(name));
        Ok(json!({"removed": name}))
    }

    /// `lamina ps [-a]`.
    pub fn list(&self, all: bool) -> Value {
        let m = self.lock();
        Value::Array(
            m.iter()
                .filter(|(_, e)| all || e.state.status == Status::Running)
                .map(|(n, e)| {
                    let ip = self.net.address(n).map(|(_, ip)| ip.to_string());
                    json!({"name": n, "image": e.spec.image, "command": e.spec.cmd,
                           "restart": e.spec.restart, "state": e.state,
                           "network": e.spec.network_name(), "ip": ip, "ports": e.spec.ports})
                })
                .collect(),
        )
    }

    /// `lamina logs`: the log from byte `from` on (both files when `from` is 0).
    pub fn logs(&self, name: &str, from: u64) -> R<Value> {
        let gone = {
            let g = self.gone.lock().unwrap_or_else(|p| p.into_inner());
            g.iter().rev().find(|(n, ..)| n == name).map(|(_, c, t)| (*c, t.clone()))
        };
        if let (Some((code, text)), false) = (gone, self.lock().contains_key(name)) {
            let at = (from as usize).min(text.len());
            return Ok(json!({"text": String::from_utf8_lossy(&text[at..]),
                             "offset": text.len(), "running": false, "exit_code": code}));
        }
        let running = {
            let m = self.lock();
            let e = m.get(name).ok_or_else(|| no_such(name))?;
            (
                matches!(e.state.status, Status::Running | Status::Restarting) || e.removing,
                e.state.exit_code,
            )
        };
        let (running, exit_code) = running;
        let log = self.cdir(name).join("log");
        let mut text = Vec::new();
        if from == 0 {
            let _ = std::fs::File::open(log.with_extension("1"))
                .and_then(|mut f| f.read_to_end(&mut text));
        }
        let mut end = 0;
        if let Ok(mut f) = std::fs::File::open(&log) {
            use std::io::Seek;
            end = f.metadata().map(|m| m.len()).unwrap_or(0);
            // Rotated since the caller's offset: start the new file from its beginning.
            let at = if from > end { 0 } else { from };
            let _ = f.seek(std::io::SeekFrom::Start(at));
            let _ = f.take(1 << 20).read_to_end(&mut text);
            end = at + (text.len() as u64).min(end - at.min(end));
        }
        Ok(json!({"text": String::from_utf8_lossy(&text), "offset": end, "running": running,
                  "exit_code": exit_code}))
    }

    /// `lamina exec`: a command inside the running container (`crun exec`).
    pub fn exec(&self, name: &str, argv: &[String], timeout_secs: u64) -> R<Value> {
        let running = self.lock().get(name).map(|e| e.state.status).ok_or_else(|| no_such(name))?;
        if running != Status::Running {
            return Err(StoreError::new(Kind::State, format!("container {name} is not running")));
        }
        let mut full = vec![CRUN.to_owned(), "exec".into(), name.to_owned()];
        full.extend(argv.iter().cloned());
        let args = crate::agent::proto::ExecArgs { argv: full, timeout_secs: Some(timeout_secs) };
        let r = crate::agent::exec(&args, timeout_secs.max(1), &self.reaper)
            .map_err(|e| StoreError::io(format!("{CRUN} exec"), e))?;
        serde_json::to_value(r).map_err(|e| StoreError::io("exec result", e))
    }

    /// `lamina commit C IMAGE`.
    pub fn commit(&self, name: &str, tag: &str) -> R<Value> {
        if !self.lock().contains_key(name) {
            return Err(no_such(name));
        }
        let img = self.images()?.with(|s| s.commit(name, tag))?;
        Ok(json!({"id": img.id.to_string(), "tags": img.tags}))
    }

    /// The containers (running or not) on `network`.
    pub fn network_users(&self, network: &str) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.spec.network_name() == network)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// `network rm`: refused while a container is on it.
    pub fn network_remove(&self, name: &str) -> R<Value> {
        self.net.remove(name, &self.network_users(name))
    }

    /// (volume, container) for every named volume a container (running or not) binds.
    pub fn volumes_in_use(&self) -> Vec<(String, String)> {
        self.lock()
            .iter()
            .flat_map(|(n, e)| e.spec.volume_binds().into_iter().map(|v| (v.name, n.clone())))
            .collect()
    }

    /// Removes every container that is not running; their names.
    pub fn prune_stopped(&self) -> Vec<String> {
        let stopped: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, e)| matches!(e.state.status, Status::Exited | Status::Created))
            .map(|(n, _)| n.clone())
            .collect();
        stopped.into_iter().filter(|n| self.remove(n, false).is_ok()).collect()
    }

    /// At shutdown: every running container stopped, newest first; then none starts again.
    pub fn stop_all(&self, grace: Duration, say: &mut dyn FnMut(String)) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut running: Vec<(u64, String)> = self
            .lock()
            .iter()
            .filter(|(_, e)| e.state.status == Status::Running)
            .map(|(n, e)| (e.seq, n.clone()))
            .collect();
        running.sort_by(|a, b| b.cmp(a));
        for (_, n) in running {
            match self.stop(&n, grace) {
                Ok(v) => say(format!(
                    "container {n} stopped{}",
                    if v["killed"] == true { " (killed)" } else { "" }
                )),
                Err(e) => say(format!("container {n}: {e}")),
            }
            let _ = self.images().and_then(|i| i.with(|s| s.unmount(&n)));
        }
    }
}

/// Copies a container's output into its log, rotating at [`LOG_MAX`].
fn copy_log(mut r: Box<dyn Read + Send>, log: &Path) {
    static ROTATE: Mutex<()> = Mutex::new(());
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // stdout and stderr share the file: one writer at a time, and one rotation.
        let _g = ROTATE.lock().unwrap_or_else(|p| p.into_inner());
        if std::fs::metadata(log).is_ok_and(|m| m.len() + n as u64 > LOG_MAX) {
            let _ = std::fs::rename(log, log.with_extension("1"));
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = f.write_all(&buf[..n]);
        }
    }
}
