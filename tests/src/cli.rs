//! Driving the appliance the way a user does: through the `lamina` binary.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let l = tests::cli::Lamina::new("vm_example", std::time::Duration::from_secs(600))?;
//! l.ok(&["vm", "run", "--name", "a", "--detach"])?;
//! let status = l.json(&["vm", "ctl", "a", "status"])?;
//! # Ok(()) }
//! ```
//! A `Lamina` holds the VM lock, has its own home (`test-logs/<name>/home`, with the built
//! image linked in), builds the binary once per test process, and on drop (or after its hard
//! deadline) kills every QEMU its VMs left running.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::{image_dir, lamina_home, succeeded, vm_lock, workspace_root, VmLock};

/// `target/debug/lamina`, built (once per process) from this checkout so it is never stale,
/// and copied to `test-bin/lamina.PID`.
pub fn lamina_bin() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let out = Command::new(cargo)
                .args(["build", "-p", "qemu", "--bin", "lamina"])
                .current_dir(workspace_root())
                .output()
                .map_err(|e| format!("running cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build -p qemu --bin lamina failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            // A copy of its own, so a rebuild while the test runs does not swap it.
            let dir = lamina_home().join("test-bin");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            // Copies of test processes that are gone.
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let pid = e
                    .file_name()
                    .to_string_lossy()
                    .strip_prefix("lamina.")
                    .and_then(|p| p.parse::<u32>().ok());
                if pid.is_some_and(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let copy = dir.join(format!("lamina.{}", std::process::id()));
            let built = workspace_root().join("target/debug/lamina");
            // A hard link keeps this inode even when cargo replaces the file; a copy otherwise.
            let _ = std::fs::remove_file(&copy);
            std::fs::hard_link(&built, &copy)
                .or_else(|_| std::fs::copy(&built, &copy).map(drop))
                .map_err(|e| format!("copying lamina to {}: {e}", copy.display()))?;
            Ok(copy)
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The `lamina` binary with a home of its own.
pub struct Lamina {
    pub name: String,
    pub home: PathBuf,
    bin: PathBuf,
    cancel_watchdog: Option<Sender<()>>,
    _lock: VmLock,
}

/// QEMU pids of the VMs under `home` that still run: from their pid files, kept only when
/// the process's command line names the VM's directory (a pid may have been reused).
fn qemu_pids(home: &Path) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir(home.join("vms")) else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 =
                std::fs::read_to_string(e.path().join("pid")).ok()?.trim().parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let dir = e.path().display().to_string();
            String::from_utf8_lossy(&cmdline).contains(&dir).then_some(pid)
        })
        .collect()
}

fn kill_all(home: &Path) {
    for pid in qemu_pids(home) {
        if let Some(p) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
        }
    }
}

impl Lamina {
    /// Takes the VM lock and prepares `test-logs/<name>/home` (fresh), with a hard deadline
    /// after which every VM of this home is killed.
    pub fn new(name: &str, deadline: Duration) -> Result<Lamina> {
        let img = image_dir()?;
        let bin = lamina_bin()?;
        let lock = vm_lock()?;
        let home = lamina_home().join("test-logs").join(name).join("home");
        let _ = std::fs::remove_dir_all(&home);
        std::fs::create_dir_all(&home)?;
        std::os::unix::fs::symlink(&img, home.join("image"))
            .with_context(|| format!("linking {} into {}", img.display(), home.display()))?;
        let (tx, rx) = channel::<()>();
        let (n, h) = (name.to_owned(), home.clone());
        std::thread::spawn(move || {
            if rx.recv_timeout(deadline) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                eprintln!("[{n}] hard deadline {deadline:?} passed: killing its VMs");
                kill_all(&h);
            }
        });
        Ok(Lamina { name: name.into(), home, bin, cancel_watchdog: Some(tx), _lock: lock })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--home").arg(&self.home).args(args).current_dir(workspace_root());
        c
    }

    /// Runs `lamina --home HOME ARGS..` (stdin from `stdin` when given).
    pub fn run(&self, args: &[&str], stdin: Option<&Path>) -> Result<Output> {
        let mut c = self.command(args);
        if let Some(f) = stdin {
            c.stdin(std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?);
        }
        let out = c.output().with_context(|| format!("running lamina {args:?}"))?;
        eprintln!(
            "[{}] lamina {} -> {}",
            self.name,
            args.join(" "),
            out.status.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into())
        );
        Ok(out)
    }

    /// Runs a verb that must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = succeeded(format!("lamina {args:?}"), self.run(args, None)?)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a verb that must fail with a non-zero exit; its stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args, None)?;
        if out.status.success() {
            bail!(
                "lamina {args:?} succeeded but should have failed:\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs a verb that must succeed and print JSON.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let text = self.ok(args)?;
        serde_json::from_str(&text).with_context(|| format!("lamina {args:?} printed {text:?}"))
    }

    /// `lamina run --vm VM -d --name NAME ARGS..` (options, image, command), which must succeed.
    pub fn run_detached(&self, vm: &str, name: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["run", "--vm", vm, "-d", "--name", name];
        all.extend_from_slice(args);
        self.ok(&all)
    }

    /// The container's entry in `ps -a --json`.
    pub fn ps(&self, vm: &str, name: &str) -> Result<Value> {
        let all = self.json(&["ps", "--vm", vm, "-a", "--json"])?;
        all.as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .cloned()
            .with_context(|| format!("{name} not in {all}"))
    }

    /// Starts `lamina ARGS` (a verb that streams stdin into VM `vm`), feeds it the first half
    /// of `bytes` and kills it, then waits (60 s) until the guest logs `dropped`.
    pub fn killed_mid_stream(
        &self,
        vm: &str,
        args: &[&str],
        bytes: &[u8],
        dropped: &str,
    ) -> Result<()> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting lamina {args:?}"))?;
        let mut stdin = child.stdin.take().context("stdin")?;
        // write_all returns once the client has taken all but a pipe's worth (64 KiB) of the
        // half: the rest is in the guest, the transfer is under way.
        stdin.write_all(&bytes[..bytes.len() / 2])?;
        stdin.flush()?;
        child.kill()?;
        child.wait()?;
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.console(vm).contains(dropped) {
            ensure!(Instant::now() < deadline, "the guest never logged {dropped:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// A VM's console log so far.
    pub fn console(&self, vm: &str) -> String {
        std::fs::read_to_string(self.home.join("vms").join(vm).join("console.log"))
            .unwrap_or_default()
    }
}

impl Drop for Lamina {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(rd) = std::fs::read_dir(self.home.join("vms")) {
                for e in rd.flatten() {
                    let log =
                        std::fs::read_to_string(e.path().join("console.log")).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(40).collect();
                    eprintln!(
                        "[{}] FAILED; VM {:?} console tail:\n{}",
                        self.name,
                        e.file_name(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        kill_all(&self.home);
        if let Some(tx) = self.cancel_watchdog.take() {
            let _ = tx.send(());
        }
    }
}

/// The pool's used data blocks from a `lamina vm ctl NAME status` reply.
pub fn status_data_used(status: &Value) -> Result<u64> {
    status["pool"]["pool"]["data"]["used"]
        .as_u64()
        .with_context(|| format!("no data.used in {status}"))
}
