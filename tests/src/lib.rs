//! Shared helpers for lamina's integration tests.
//!
//! Host-tier tests live in `tests/host_*.rs`, VM-tier tests in `tests/vm_*.rs`. A test whose
//! tool or kernel feature is missing fails loudly (or is skipped with the reason); it never
//! passes silently.
//!
//! VM tests read like scripts (propolis PHD style):
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! let mut vm = tests::TestVm::boot("vm_example", tests::Opts::debug())?;
//! let ready = vm.wait_ready()?;
//! let out = vm.exec(&["cat", "/proc/modules"])?;
//! # Ok(()) }
//! ```
//! Each VM keeps its logs in `target/lamina/test-logs/<name>/` (console.log, the exact QEMU
//! command line in `cmdline`, qemu.log), holds a file lock so VM tests never overlap (the
//! machine has 2 cores and TCG timing is sensitive to starvation), and has a hard deadline
//! after which a watchdog kills QEMU.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output};
use std::sync::mpsc::{channel, Sender};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use qemu::cmdline::{host_tsc_khz, Disk, Machine, VmConfig};
use qemu::vm::{probe_accel, Ready, Vm};
use serde_json::Value;

pub mod appliance;
pub mod cli;
pub mod dmthin;
pub mod wait;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

/// `target/lamina`, or `$LAMINA_HOME`.
pub fn lamina_home() -> PathBuf {
    std::env::var_os("LAMINA_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/lamina"))
}

/// The boot artefacts; fails with the command to build them.
pub fn image_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("LAMINA_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| lamina_home().join("image"));
    for f in ["vmlinux", "initramfs.cpio"] {
        if !dir.join(f).is_file() {
            bail!("VM tier: {} is missing; build the image first: `cargo xtask image` (or run `cargo xtask test`)", dir.join(f).display());
        }
    }
    Ok(dir)
}

/// An exclusive machine-wide lock, held while a VM runs: TCG guests on a small host time out
/// when several boot at once, also when they come from different checkouts. The path is
/// `$LAMINA_VM_LOCK`, else `lamina-vm.lock` in the temporary directory.
pub struct VmLock(#[allow(dead_code)] std::fs::File);

pub fn vm_lock() -> Result<VmLock> {
    let p = std::env::var_os("LAMINA_VM_LOCK")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lamina-vm.lock"));
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
        .with_context(|| format!("locking {}", p.display()))?;
    Ok(VmLock(f))
}

/// How the appliance attaches its store: ublk (the default) or the kernel's nbd client
/// (`lamina.attach=nbd` on the kernel command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Ublk,
    Nbd,
}

impl Attach {
    /// The store's device in the guest.
    pub fn device(self) -> &'static str {
        match self {
            Attach::Ublk => "/dev/ublkb0",
            Attach::Nbd => "/dev/nbd0",
        }
    }

    /// Adds the kernel command line switch for this attach.
    pub fn apply(self, opts: &mut Opts) {
        if self == Attach::Nbd {
            opts.append.push("lamina.attach=nbd".into());
        }
    }
}

/// Declares one VM test per store attach, `$ublk` (the default) and `$nbd`
/// (`lamina.attach=nbd`), each running `$body(its own name, attach)` so that its logs go to
/// `test-logs/<its name>`.
#[macro_export]
macro_rules! per_attach {
    ($body:ident: $(#[$u:meta])* $ublk:ident, $(#[$n:meta])* $nbd:ident $(,)?) => {
        $(#[$u])*
        #[test]
        fn $ublk() -> ::anyhow::Result<()> {
            $body(stringify!($ublk), $crate::Attach::Ublk)
        }

        $(#[$n])*
        #[test]
        fn $nbd() -> ::anyhow::Result<()> {
            $body(stringify!($nbd), $crate::Attach::Nbd)
        }
    };
}

/// How to boot a test VM.
#[derive(Debug, Clone)]
pub struct Opts {
    pub machine: Machine,
    pub append: Vec<String>,
    pub memory_mib: u32,
    /// vCPUs (`-smp`).
    pub cpus: u32,
    /// Hard deadline for the whole VM (the watchdog kills QEMU after it).
    pub deadline: Duration,
    pub ready_timeout: Duration,
    pub disk_size: u64,
    /// Boot artefacts other than [`image_dir`] (e.g. a test variant such as `image-dm`).
    pub image: Option<PathBuf>,
    /// Boot on these disk image files (created sparse at `disk_size` when missing) instead of
    /// a fresh `disk.raw` in the log directory: for tests that reboot on the same disk.
    pub disks: Vec<PathBuf>,
    /// Those of [`Opts::disks`] attached read-only (they must exist).
    pub read_only: Vec<PathBuf>,
    /// Forward host 127.0.0.1:PORT to the guest's NBD port.
    pub nbd_port: Option<u16>,
    /// Attached after the others (config disks, e.g. `qemu::tlsdisk`).
    pub extra_disks: Vec<Disk>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            machine: Machine::Microvm,
            append: Vec::new(),
            memory_mib: 512,
            cpus: 1,
            deadline: Duration::from_secs(180),
            ready_timeout: Duration::from_secs(90),
            disk_size: 1 << 30,
            image: None,
            disks: Vec::new(),
            read_only: Vec::new(),
            nbd_port: None,
            extra_disks: Vec::new(),
        }
    }
}

impl Opts {
    /// Booted with `lamina.debug=1` (agent `exec` allowed).
    pub fn debug() -> Self {
        Self { append: vec!["lamina.debug=1".into()], ..Self::default() }
    }
}

/// A VM owned by one test.
pub struct TestVm {
    pub name: String,
    vm: Vm,
    pub log_dir: PathBuf,
    cancel_watchdog: Option<Sender<()>>,
    _lock: VmLock,
}

impl TestVm {
    /// Takes the VM lock, prepares `target/lamina/test-logs/<name>` and launches QEMU.
    pub fn boot(name: &str, opts: Opts) -> Result<TestVm> {
        let img = match &opts.image {
            Some(d) => d.clone(),
            None => image_dir()?,
        };
        let lock = vm_lock()?;
        let log_dir = lamina_home().join("test-logs").join(name);
        let _ = std::fs::remove_dir_all(&log_dir);
        std::fs::create_dir_all(&log_dir)?;
        let home = lamina_home();
        let cfg = VmConfig {
            machine: opts.machine,
            accel: probe_accel(&img.join("vmlinux"), Some(&home.join("accel-probe"))),
            memory_mib: opts.memory_mib,
            cpus: opts.cpus,
            kernel: img.join("vmlinux"),
            initrd: img.join("initramfs.cpio"),
            append: opts.append.clone(),
            disks: if opts.disks.is_empty() {
                vec![Disk::new(log_dir.join("disk.raw"), opts.disk_size)]
            } else {
                opts.disks
                    .iter()
                    .map(|p| match opts.read_only.contains(p) {
                        true => Disk::read_only(p),
                        false => Disk::new(p, opts.disk_size),
                    })
                    .collect()
            }
            .into_iter()
            .chain(opts.extra_disks.iter().cloned())
            .collect(),
            nbd_port: opts.nbd_port,
            guest_ports: vec![],
            tsc_khz: host_tsc_khz(),
            verbose_kernel: false,
            qemu_version: qemu::vm::qemu_version(),
        };
        let vm = Vm::launch(&cfg, &log_dir).with_context(|| format!("launching VM {name}"))?;
        eprintln!(
            "[{name}] launched {:?} (-accel {}); logs in {}",
            cfg.machine,
            cfg.accel_arg(),
            log_dir.display()
        );
        let (tx, rx) = channel::<()>();
        if let Some(pid) = vm.pid().and_then(|p| rustix::process::Pid::from_raw(p as i32)) {
            let (n, deadline) = (name.to_owned(), opts.deadline);
            std::thread::spawn(move || {
                if rx.recv_timeout(deadline) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    eprintln!("[{n}] hard deadline {deadline:?} passed: killing QEMU");
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            });
        }
        Ok(TestVm { name: name.into(), vm, log_dir, cancel_watchdog: Some(tx), _lock: lock })
    }

    pub fn wait_ready(&mut self) -> Result<Ready> {
        let r = self.vm.wait_ready(Duration::from_secs(90))?;
        eprintln!("[{}] {} — READY {:.2}s after launch", self.name, r.line, r.after.as_secs_f64());
        Ok(r)
    }

    /// Waits for a console line containing `needle`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        Ok(self.vm.wait_for(&[needle], timeout)?.line)
    }

    pub fn status(&mut self) -> Result<Value> {
        Ok(self.vm.agent()?.status()?)
    }

    /// Runs a command in the guest (needs `lamina.debug=1`); fails unless it exits 0.
    pub fn exec(&mut self, argv: &[&str]) -> Result<String> {
        self.ok(argv, Duration::from_secs(30))
    }

    /// Runs `argv` in the guest (needs `lamina.debug=1`) with up to `timeout`, logging the
    /// command, its exit code and how long it took; returns the agent's reply (`exit_code`,
    /// `stdout`, `stderr`) whatever the exit code.
    pub fn run(&mut self, argv: &[&str], timeout: Duration) -> Result<Value> {
        let t = std::time::Instant::now();
        let r = self.vm.agent()?.exec(argv, timeout)?;
        eprintln!(
            "[{}] {argv:?} -> exit {} in {:.1}s",
            self.name,
            r["exit_code"],
            t.elapsed().as_secs_f64()
        );
        Ok(r)
    }

    /// [`TestVm::run`], failing with the reply unless the command exits 0; returns its stdout.
    pub fn ok(&mut self, argv: &[&str], timeout: Duration) -> Result<String> {
        let r = self.run(argv, timeout)?;
        if r["exit_code"] != 0 {
            bail!("{argv:?} in the guest failed: {r}");
        }
        Ok(r["stdout"].as_str().unwrap_or("").to_owned())
    }

    /// The pool daemon's status (agent `pool.status`).
    pub fn pool_status(&mut self) -> Result<Value> {
        Ok(self.vm.agent()?.call("pool.status", None, Duration::from_secs(30))?)
    }

    /// The power button (ACPI through QMP), then waits for QEMU to exit.
    pub fn stop(&mut self, timeout: Duration) -> Result<ExitStatus> {
        Ok(self.vm.stop(timeout)?)
    }

    /// Pulls the plug: SIGKILL to QEMU.
    pub fn kill(&mut self) {
        self.vm.kill();
    }

    /// Waits for QEMU to exit by itself (a shutdown from the guest).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        Ok(self.vm.wait_exit(timeout)?)
    }

    pub fn agent(&self) -> Result<qemu::agent::AgentClient> {
        Ok(self.vm.agent()?)
    }

    pub fn qmp(&self) -> Result<qemu::qmp::Qmp> {
        Ok(self.vm.qmp()?)
    }

    pub fn console(&self) -> String {
        self.vm.console().text()
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "[{}] FAILED; last console lines:\n{}",
                self.name,
                self.vm.console().tail(40)
            );
            eprintln!(
                "[{}] QEMU command line: {}",
                self.name,
                std::fs::read_to_string(self.vm.dir.cmdline()).unwrap_or_default()
            );
        }
        self.vm.kill();
        if let Some(tx) = self.cancel_watchdog.take() {
            let _ = tx.send(());
        }
    }
}

/// The static `thinpool` that went into the image (built by `cargo xtask image`).
pub fn thinpool_bin() -> Result<PathBuf> {
    let p = workspace_root().join("target/static/x86_64-unknown-linux-gnu/release/thinpool");
    if !p.is_file() {
        bail!("{} is missing; build the image first: `cargo xtask image`", p.display());
    }
    Ok(p)
}

/// `out` when its command exited 0; otherwise an error naming `what`, with its output.
pub fn succeeded(what: impl std::fmt::Display, out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Runs a host tool; fails with its output unless it exits 0.
pub fn host_run(cmd: &mut std::process::Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?} (is it installed?)"))?;
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{cmd:?} failed ({}): {text}", out.status);
    }
    Ok(text)
}

/// Checks the pool metadata on a guest's data disk from the host: the metadata region's place
/// comes from `thinpool dmsetup-table` (the `_tmeta` linear target), is copied out, and must
/// pass Debian's `thin_check` and `thinpool check`. Returns both reports.
pub fn check_pool_disk(disk: &Path) -> Result<String> {
    let tables =
        host_run(std::process::Command::new(thinpool_bin()?).arg("dmsetup-table").arg(disk))?;
    let mut lines = tables.lines();
    let (mut len, mut off) = (None, None);
    while let Some(l) = lines.next() {
        if l.starts_with('#') && l.ends_with("_tmeta") {
            let t: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
            // "0 LEN linear DEV OFFSET", in 512-byte sectors.
            if t.len() == 5 && t[2] == "linear" {
                len = t[1].parse::<u64>().ok();
                off = t[4].parse::<u64>().ok();
            }
        }
    }
    let (Some(len), Some(off)) = (len, off) else {
        bail!("no single linear _tmeta table in:\n{tables}");
    };
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(disk)?;
    f.seek(SeekFrom::Start(off * 512))?;
    let mut meta = vec![0u8; (len * 512) as usize];
    f.read_exact(&mut meta)?;
    let dir = tempfile::tempdir()?;
    let m = dir.path().join("tmeta");
    std::fs::write(&m, &meta)?;
    let debian = host_run(std::process::Command::new("thin_check").arg(&m))?;
    let ours = host_run(std::process::Command::new(thinpool_bin()?).arg("check").arg(&m))?;
    Ok(format!("thin_check: {debian}\nthinpool check: {ours}"))
}

/// A pool data figure (`used`, `total`) of a `pool.status` reply, in bytes.
pub fn pool_data_bytes(status: &Value, field: &str) -> Result<u64> {
    let blocks = status["data"][field]
        .as_u64()
        .with_context(|| format!("pool.status without data.{field}: {status}"))?;
    let block = status["block_bytes"]
        .as_u64()
        .with_context(|| format!("pool.status without block_bytes: {status}"))?;
    Ok(blocks * block)
}

/// Runs the host's umoci (Debian package umoci).
pub fn umoci(args: &[&str]) -> Result<String> {
    host_run(std::process::Command::new("umoci").args(args))
        .context("umoci (Debian package umoci) is needed")
}

/// An OCI layout `dir/img` holding an empty image tagged `base`, unpacked into the bundle
/// `dir/unpacked` with busybox (Debian's busybox-static) in its rootfs and `applets` linked to
/// it in `/bin`. Tests repack the bundle into their own tags.
pub struct BusyboxBundle {
    pub img: PathBuf,
    pub bundle: PathBuf,
}

impl BusyboxBundle {
    pub fn new(dir: &Path, applets: &[&str]) -> Result<Self> {
        let busybox = Path::new("/bin/busybox");
        anyhow::ensure!(
            busybox.is_file(),
            "/bin/busybox is missing (Debian package busybox-static)"
        );
        let b = Self { img: dir.join("img"), bundle: dir.join("unpacked") };
        umoci(&["init", "--layout", &b.img.to_string_lossy()])?;
        umoci(&["new", "--image", &b.tag("base")])?;
        umoci(&["unpack", "--image", &b.tag("base"), &b.bundle.to_string_lossy()])?;
        let bin = b.rootfs().join("bin");
        std::fs::create_dir_all(&bin)?;
        std::fs::copy(busybox, bin.join("busybox"))?;
        for applet in applets {
            std::os::unix::fs::symlink("busybox", bin.join(applet))?;
        }
        Ok(b)
    }

    /// `img:tag`, as umoci's `--image` takes it.
    pub fn tag(&self, tag: &str) -> String {
        format!("{}:{tag}", self.img.display())
    }

    pub fn rootfs(&self) -> PathBuf {
        self.bundle.join("rootfs")
    }

    /// Packs the bundle's rootfs as a new layer of the image tagged `tag`.
    pub fn repack(&self, tag: &str) -> Result<String> {
        umoci(&["repack", "--image", &self.tag(tag), &self.bundle.to_string_lossy()])
    }
}

/// busybox as a one-layer OCI image built with umoci in the layout `dir/img`, tagged `bb`,
/// with `applets` linked in `/bin` and `/bin/sh` as its command. Returns the layout packed as
/// a gzip-compressed tar (`dir/bb.oci.tar.gz`); the layout itself stays for other tools
/// (skopeo).
pub fn busybox_oci(dir: &Path, applets: &[&str]) -> Result<PathBuf> {
    use std::process::Command;
    let b = BusyboxBundle::new(dir, applets)?;
    b.repack("bb")?;
    umoci(&["config", "--image", &b.tag("bb"), "--config.cmd", "/bin/sh"])?;
    umoci(&["rm", "--image", &b.tag("base")])?;
    let oci = dir.join("bb.oci.tar");
    host_run(Command::new("tar").arg("-C").arg(&b.img).arg("-cf").arg(&oci).arg("."))?;
    host_run(Command::new("gzip").arg("-1").arg(&oci))?;
    Ok(dir.join("bb.oci.tar.gz"))
}
