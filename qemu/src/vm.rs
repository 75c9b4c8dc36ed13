//! One running appliance VM: launch, wait for the console, QMP and agent, graceful stop.
//!
//! ```text
//! <state dir>/cmdline      the exact QEMU command line (shell-quoted, copy-paste ready)
//!             console.log  serial console (QEMU's chardev logfile)
//!             console.sock serial console socket (`lamina console`)
//!             qmp.sock     QMP            agent.sock  guest agent (virtio-serial)
//!             pid          QEMU's pid     qemu.log    QEMU's own stdout/stderr
//! ```

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::agent::{AgentClient, AgentError};
use crate::cmdline::{Accel, QemuVersion, VmConfig, VmDir};
use crate::console::{ConsoleError, ConsoleLog, Match};
use crate::qmp::{Qmp, QmpError};

pub const QEMU: &str = "qemu-system-x86_64";
pub const READY: &str = "LAMINA READY";
pub const DEGRADED: &str = "LAMINA DEGRADED";

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{what} {path}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("starting {QEMU} (is qemu-system-x86 installed? `cargo xtask setup`): {0}")]
    Spawn(std::io::Error),
    #[error(transparent)]
    Console(#[from] ConsoleError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("boot degraded: {line}\n{tail}")]
    Degraded { line: String, tail: String },
    #[error("VM {dir} did not stop within {waited:?}")]
    StopTimeout { dir: PathBuf, waited: Duration },
    #[error("no VM at {dir}: {why}")]
    NotRunning { dir: PathBuf, why: String },
}

/// Shell-quotes argv for the `cmdline` file.
pub fn shell_quote(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Creates missing disk images as sparse files of their configured size.
pub fn ensure_disks(cfg: &VmConfig) -> Result<(), VmError> {
    for d in &cfg.disks {
        if d.read_only && !d.path.exists() {
            return Err(VmError::Io {
                what: "opening read-only disk",
                path: d.path.clone(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
        if !d.path.exists() {
            if let Some(parent) = d.path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| VmError::Io {
                    what: "creating",
                    path: parent.into(),
                    source,
                })?;
            }
            let f = std::fs::File::create(&d.path).map_err(|source| VmError::Io {
                what: "creating disk",
                path: d.path.clone(),
                source,
            })?;
            f.set_len(d.size).map_err(|source| VmError::Io {
                what: "sizing disk",
                path: d.path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Writes the config disk: `text` NUL-padded to whole 4 KiB blocks (the guest reads up to the
/// first NUL), attached read-only with the config serial.
pub fn write_config_disk(path: &Path, text: &str) -> Result<crate::Disk, VmError> {
    let io = |what| move |source| VmError::Io { what, path: path.to_owned(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io("creating"))?;
    }
    let mut bytes = text.as_bytes().to_vec();
    bytes.resize(bytes.len().div_ceil(4096).max(1) * 4096, 0);
    std::fs::write(path, bytes).map_err(io("writing config disk"))?;
    let mut d = crate::Disk::read_only(path);
    d.serial = Some(crate::cmdline::CONFIG_DISK_SERIAL.to_owned());
    Ok(d)
}

/// A VM this process started (or found through its state dir).
pub struct Vm {
    pub dir: VmDir,
    pub argv: Vec<String>,
    pub started: Instant,
    child: Option<Child>,
    console: ConsoleLog,
}

/// Ready line and how long after launch it appeared.
#[derive(Debug, Clone)]
pub struct Ready {
    pub line: String,
    pub after: Duration,
}

impl Vm {
    /// Starts QEMU for `cfg` with its state in `dir` (created; stale sockets removed).
    pub fn launch(cfg: &VmConfig, dir: &Path) -> Result<Vm, VmError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| VmError::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let d = VmDir(dir.to_owned());
        for f in [d.qmp(), d.agent(), d.data(), d.console_sock(), d.pid()] {
            let _ = std::fs::remove_file(f);
        }
        std::fs::write(d.console_log(), b"").map_err(io("truncating", &d.console_log()))?;
        ensure_disks(cfg)?;
        let console = ConsoleLog::open(&d.console_log())?;
        let mut argv = vec![QEMU.to_owned()];
        argv.extend(cfg.args(&d));
        std::fs::write(d.cmdline(), shell_quote(&argv) + "\n")
            .map_err(io("writing", &d.cmdline()))?;
        let log = std::fs::File::create(d.qemu_log()).map_err(io("creating", &d.qemu_log()))?;
        let log2 = log.try_clone().map_err(io("cloning", &d.qemu_log()))?;
        let started = Instant::now();
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Own process group: a terminal Ctrl-C goes to `lamina`, which powers down gracefully.
            .process_group(0)
            .spawn()
            .map_err(VmError::Spawn)?;
        Ok(Vm { dir: d, argv, started, child: Some(child), console })
    }

    pub fn console(&self) -> &ConsoleLog {
        &self.console
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Still running? (Reaps QEMU if it exited.)
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits for a console line containing one of `needles`.
    pub fn wait_for(&mut self, needles: &[&str], timeout: Duration) -> Result<Match, VmError> {
        let mut child = self.child.take();
        let mut alive = || child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        let r = self.console.wait_for(needles, timeout, &mut alive);
        self.child = child;
        Ok(r?)
    }

    /// Waits for `LAMINA READY`; `LAMINA DEGRADED` or QEMU exiting fails at once.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Ready, VmError> {
        let m = self.wait_for(&[READY, DEGRADED], timeout)?;
        if m.needle == 1 {
            return Err(VmError::Degraded { line: m.line, tail: self.console.tail(40) });
        }
        Ok(Ready { line: m.line, after: m.at.duration_since(self.started) })
    }

    /// A QMP connection. QEMU serves one QMP client at a time: drop it before [`Vm::stop`].
    pub fn qmp(&self) -> Result<Qmp, VmError> {
        Ok(Qmp::connect(&self.dir.qmp(), Duration::from_secs(10))?)
    }

    pub fn agent(&self) -> Result<AgentClient, VmError> {
        Ok(AgentClient::connect(&self.dir.agent(), Duration::from_secs(10))?)
    }

    /// Waits for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let deadline = Instant::now() + timeout;
        let Some(child) = self.child.as_mut() else {
            return Err(VmError::NotRunning {
                dir: self.dir.0.clone(),
                why: "already reaped".into(),
            });
        };
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() >= deadline {
                return Err(VmError::StopTimeout { dir: self.dir.0.clone(), waited: timeout });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Power button (re-sent every 3 s, since a guest still booting may miss it), then waits
    /// for QEMU to exit; after `timeout` falls back to `quit`. Returns QEMU's exit status.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus, VmError> {
        let mut qmp = self.qmp()?;
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Err(e) = qmp.powerdown() {
                tracing::debug!("system_powerdown: {}", units::chain(&e));
            }
            let slice = (deadline - Instant::now()).min(Duration::from_secs(3));
            if qmp.wait_closed(slice) {
                return self.wait_exit(Duration::from_secs(10));
            }
        }
        tracing::warn!(
            "VM {} ignored the power button for {timeout:?}; sending quit",
            self.dir.0.display()
        );
        let _ = qmp.quit();
        let _ = self.wait_exit(Duration::from_secs(10));
        Err(VmError::StopTimeout { dir: self.dir.0.clone(), waited: timeout })
    }

    /// Kills QEMU (tests' last resort).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Leaves QEMU running after this process exits (`lamina run --detach`).
    pub fn detach(mut self) {
        self.child = None;
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Stops a VM known only by its state dir (another process started it): power button until
/// QEMU closes QMP (it exited), else `quit` after `timeout`.
pub fn stop_dir(dir: &Path, timeout: Duration) -> Result<bool, VmError> {
    let d = VmDir(dir.to_owned());
    let mut qmp = Qmp::connect(&d.qmp(), Duration::from_secs(2))
        .map_err(|e| VmError::NotRunning { dir: dir.into(), why: units::chain(&e) })?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let _ = qmp.powerdown();
        if qmp.wait_closed((deadline - Instant::now()).min(Duration::from_secs(3))) {
            return Ok(true);
        }
    }
    let _ = qmp.quit();
    Ok(false)
}

/// The installed QEMU's release, read once from `--version`; `None` if it does not run.
pub fn qemu_version() -> Option<QemuVersion> {
    static VERSION: std::sync::OnceLock<Option<QemuVersion>> = std::sync::OnceLock::new();
    *VERSION.get_or_init(|| {
        let out = Command::new(QEMU).arg("--version").output().ok()?;
        QemuVersion::parse(&String::from_utf8_lossy(&out.stdout))
    })
}

/// Uses KVM only if it actually boots `kernel`: a kernel under working KVM prints its first
/// console line within milliseconds; here (nested, broken CPUID) KVM runs real-mode code but a
/// kernel boot hangs silently, so a tiny real-mode probe is not enough. `LAMINA_ACCEL=tcg|kvm`
/// overrides; the answer is cached per host boot in `cache` (a file path).
pub fn probe_accel(kernel: &Path, cache: Option<&Path>) -> Accel {
    match std::env::var("LAMINA_ACCEL").as_deref() {
        Ok("tcg") => return Accel::Tcg,
        Ok("kvm") => return Accel::Kvm,
        _ => {}
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        return Accel::Tcg;
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    if let Some(c) = cache {
        if let Ok(text) = std::fs::read_to_string(c) {
            match text.split_once(' ') {
                Some((id, "kvm")) if id == boot_id.trim() => return Accel::Kvm,
                Some((id, "tcg")) if id == boot_id.trim() => return Accel::Tcg,
                _ => {}
            }
        }
    }
    let works = kvm_boots(kernel);
    if let Some(c) = cache {
        let _ =
            std::fs::write(c, format!("{} {}", boot_id.trim(), if works { "kvm" } else { "tcg" }));
    }
    if works {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

fn kvm_boots(kernel: &Path) -> bool {
    use std::io::Read;
    let child = Command::new(QEMU)
        .args([
            "-accel",
            "kvm",
            "-M",
            "pc",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-m",
            "256",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1", "-serial", "stdio"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let Some(mut out) = child.stdout.take() else { return false };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 64];
        let _ = tx.send(out.read(&mut b).map(|n| n > 0).unwrap_or(false));
    });
    let ok = rx.recv_timeout(Duration::from_secs(5)).unwrap_or(false);
    let _ = child.kill();
    let _ = child.wait();
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_is_copy_paste_safe() {
        let argv =
            vec!["qemu".to_string(), "-append".into(), "console=ttyS0 quiet".into(), "it's".into()];
        assert_eq!(shell_quote(&argv), r"qemu -append 'console=ttyS0 quiet' 'it'\''s'");
    }

    #[test]
    fn missing_disks_are_created_sparse() {
        let d = tempfile::tempdir().unwrap();
        let mut cfg = crate::cmdline::tests_support::config();
        cfg.disks = vec![crate::cmdline::Disk::new(d.path().join("sub/disk.raw"), 8 << 30)];
        ensure_disks(&cfg).unwrap();
        let m = std::fs::metadata(d.path().join("sub/disk.raw")).unwrap();
        assert_eq!(m.len(), 8 << 30);
        use std::os::unix::fs::MetadataExt;
        assert!(m.blocks() < 1024, "not sparse: {} blocks", m.blocks());
        cfg.disks = vec![crate::cmdline::Disk::read_only(d.path().join("absent.tar"))];
        let err = ensure_disks(&cfg).unwrap_err();
        let (msg, chain) = (err.to_string(), units::chain(&err));
        assert!(msg.contains("absent.tar") && !msg.contains("not found"), "{msg}");
        assert_eq!(chain, format!("{msg}: entity not found"));
        assert!(!d.path().join("absent.tar").exists(), "a read-only disk is never created");
    }
}
