//! `lamina vm`: the appliance VMs themselves.
//!
//! ```text
//! lamina vm run [--name NAME] [--disk PATH[,size=8G][,readonly=on]].. [--memory MiB] [--cpus N]
//!               [--nbd-port 10809] [--detach] [--encrypt-key FILE | --unlock-wait SECS]
//! lamina vm ctl NAME help | status | shutdown | exec ARGV.. | VERB [JSON]
//! lamina vm stop NAME       power button, wait up to 20 s for QEMU to exit, then quit
//! lamina vm unlock NAME     the encrypted store's passphrase (stdin) for a waiting boot
//! lamina vm console NAME    attach to the serial console
//! lamina vm ls [--json]
//! ```
//! A VM is its state dir: `<home>/vms/NAME` (home: --home, $LAMINA_HOME, ./target/lamina).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use qemu::cmdline::{host_tsc_khz, parse_disk, Machine, VmConfig, VmDir};
use qemu::vm::{probe_accel, stop_dir, Vm};
use serde_json::json;

#[derive(Subcommand)]
pub enum VmCmd {
    /// Boots an appliance VM.
    Run(RunArgs),
    /// Sends a guest-agent command (`help` lists them): status, shutdown, exec ARGV..,
    /// volume.list, VERB 'JSON-ARGUMENTS'.
    Ctl {
        vm: String,
        command: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
        /// exec timeout in seconds.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Presses the power button and waits for the VM to exit (then `quit`).
    Stop {
        vm: String,
        #[arg(long, default_value_t = 20)]
        timeout: u64,
    },
    /// Gives a boot that waits for it (`run --unlock-wait`) the encrypted store's passphrase,
    /// read from stdin (one line; the newline is not part of it).
    Unlock { vm: String },
    /// Attaches to the serial console (history first, then live).
    Console { vm: String },
    /// Lists the VMs under the home directory and whether they run.
    Ls {
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct RunArgs {
    #[arg(long, default_value = "default")]
    name: String,
    /// PATH[,size=8G][,readonly=on]; missing files are created sparse (read-only ones must exist). Default: <home>/disk.raw, 8 GiB.
    #[arg(long)]
    disk: Vec<String>,
    #[arg(long, default_value_t = 512)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Host port on 127.0.0.1 forwarded to the guest's NBD port 10809 (0: none).
    #[arg(long, default_value_t = 10809)]
    nbd_port: u16,
    /// HOSTPORT:GUESTPORT, repeatable: 127.0.0.1:HOSTPORT reaches the guest's GUESTPORT
    /// (TCP), e.g. a port a container publishes with `lamina run -p`.
    #[arg(long = "vm-port", value_name = "HOSTPORT:GUESTPORT", value_parser = parse_vm_port)]
    vm_ports: Vec<(u16, u16)>,
    #[arg(long, default_value = "microvm")]
    machine: Machine,
    /// Return once the VM is READY and leave it running.
    #[arg(long)]
    detach: bool,
    /// Boot with lamina.debug=1 (enables `ctl exec`).
    #[arg(long)]
    debug: bool,
    /// A store option: Docker's dm.KEY=VALUE of the pool, driver=overlay2|vfs, or
    /// overlay2.size=SIZE (passed as lamina.opt.KEY=VALUE on the kernel command line).
    #[arg(long = "opt", value_name = "KEY=VALUE")]
    opts: Vec<String>,
    /// A daemon.json-shaped file of store options ({"storage-driver": …, "storage-opts":
    /// […]}), attached as the VM's small config disk.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Extra kernel arguments (e.g. lamina.network.enabled=0).
    #[arg(long)]
    append: Vec<String>,
    /// Kernel (default <home>/image/vmlinux) and initramfs (default <home>/image/initramfs.cpio).
    #[arg(long)]
    kernel: Option<PathBuf>,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Show kernel messages (no `quiet`).
    #[arg(long)]
    verbose_kernel: bool,
    /// Seconds to wait for READY.
    #[arg(long, default_value_t = 120)]
    ready_timeout: u64,
    /// Serve NBD over TLS only, with client certificates checked: DIR holds ca-cert.pem,
    /// server-cert.pem and server-key.pem (packed into a read-only config disk).
    #[arg(long, value_name = "DIR")]
    nbd_tls: Option<PathBuf>,
    /// Encrypt the store (LUKS2, dm-crypt in the guest) with the key in FILE (mode 0600):
    /// a new store is formatted with it, an encrypted one opened. Attached as a read-only
    /// key disk that is deleted from the host once QEMU has opened it.
    #[arg(long, value_name = "FILE")]
    encrypt_key: Option<PathBuf>,
    /// Without --encrypt-key: an encrypted store waits this long for its passphrase through
    /// the agent (`lamina vm unlock NAME`); a new store is then formatted with it.
    #[arg(long, value_name = "SECS", conflicts_with = "encrypt_key")]
    unlock_wait: Option<u64>,
}

/// Where a VM's state lives: `<home>/vms/NAME`, or NAME itself when it is a path.
/// `--vm-port HOSTPORT:GUESTPORT`.
pub fn parse_vm_port(s: &str) -> Result<(u16, u16)> {
    let port = |p: &str| p.parse::<u16>().ok().filter(|n| *n > 0);
    match s.split_once(':').map(|(h, g)| (port(h), port(g))) {
        Some((Some(h), Some(g))) => Ok((h, g)),
        _ => bail!("invalid --vm-port {s:?} (want HOSTPORT:GUESTPORT, ports 1-65535)"),
    }
}

pub fn vm_dir(home: &Path, vm: &str) -> PathBuf {
    if vm.contains('/') {
        PathBuf::from(vm)
    } else {
        home.join("vms").join(vm)
    }
}

pub fn main(home: &Path, cmd: VmCmd) -> Result<()> {
    match cmd {
        VmCmd::Run(a) => run(home, a),
        VmCmd::Ctl { vm, command, args, timeout } => {
            ctl(&vm_dir(home, &vm), &command, &args, timeout)
        }
        VmCmd::Stop { vm, timeout } => {
            let dir = vm_dir(home, &vm);
            if stop_dir(&dir, Duration::from_secs(timeout))? {
                // QMP closes while QEMU is still tearing down: wait for the process itself.
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while running_pid(&dir).is_some() && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Some(pid) = running_pid(&dir) {
                    bail!("{}: QEMU (pid {pid}) still runs 10 s after powering off", dir.display());
                }
                eprintln!("lamina: {} powered off", dir.display());
                Ok(())
            } else {
                bail!("{} ignored the power button for {timeout} s; sent quit", dir.display())
            }
        }
        VmCmd::Unlock { vm } => unlock(&vm_dir(home, &vm)),
        VmCmd::Console { vm } => console(&vm_dir(home, &vm)),
        VmCmd::Ls { json } => ls(home, json),
    }
}

/// The QEMU pid of a VM dir when that process still exists.
fn running_pid(dir: &Path) -> Option<i32> {
    let pid: i32 =
        std::fs::read_to_string(VmDir(dir.to_owned()).pid()).ok()?.trim().parse().ok()?;
    // The pid must still be this VM's QEMU (its command line names the VM's directory; a
    // zombie's is empty, a reused pid's is another program's).
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    String::from_utf8_lossy(&cmdline).contains(&*dir.to_string_lossy()).then_some(pid)
}

fn ls(home: &Path, json: bool) -> Result<()> {
    let mut vms = Vec::new();
    if let Ok(rd) = std::fs::read_dir(home.join("vms")) {
        let mut names: Vec<String> =
            rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        for name in names {
            let dir = vm_dir(home, &name);
            let pid = running_pid(&dir);
            let ready = pid.is_some()
                && std::fs::read_to_string(VmDir(dir.clone()).console_log())
                    .is_ok_and(|c| c.contains("LAMINA READY"));
            let state = match (pid, ready) {
                (Some(_), true) => "running",
                (Some(_), false) => "starting",
                (None, _) => "stopped",
            };
            vms.push(json!({"name": name, "state": state, "pid": pid, "dir": dir}));
        }
    }
    crate::out::print_rows(json, &json!(vms), &["NAME", "STATE", "PID", "DIR"], |vm| {
        ["name", "state", "pid", "dir"].map(|k| crate::out::cell(&vm[k])).to_vec()
    })
}

fn run(home: &Path, a: RunArgs) -> Result<()> {
    // `?` keeps the ArgError (and its source) in the chain that main prints.
    let disks = if a.disk.is_empty() {
        vec![parse_disk(&home.join("disk.raw").display().to_string(), 8 << 30)?]
    } else {
        a.disk.iter().map(|d| parse_disk(d, 8 << 30)).collect::<Result<_, _>>()?
    };
    let mut disks = disks;
    if let Some(dir) = &a.nbd_tls {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        disks.push(qemu::tlsdisk::build(dir, &home.join(format!("{}-nbd-tls.tar", a.name)))?);
    }
    let mut key_disk = None;
    if let Some(key) = &a.encrypt_key {
        let dir = vm_dir(home, &a.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let out = dir.join("key.disk");
        disks.push(qemu::keydisk::build(key, &out)?);
        key_disk = Some(qemu::keydisk::Remove(out));
    }
    let mut append = a.append.clone();
    for o in &a.opts {
        let (k, v) = o.split_once('=').with_context(|| format!("--opt {o}: expected KEY=VALUE"))?;
        if k.is_empty() || v.is_empty() || o.contains(char::is_whitespace) {
            bail!("--opt {o:?}: expected KEY=VALUE without spaces");
        }
        append.push(format!("lamina.opt.{o}"));
    }
    if a.debug {
        append.push("lamina.debug=1".into());
    }
    if let Some(secs) = a.unlock_wait {
        append.push(format!("lamina.pool.passphrase_wait_secs={secs}"));
    }
    let kernel = a.kernel.unwrap_or_else(|| home.join("image/vmlinux"));
    let initrd = a.initrd.unwrap_or_else(|| home.join("image/initramfs.cpio"));
    for f in [&kernel, &initrd] {
        if !f.is_file() {
            bail!("{} is missing: build the image first (cargo xtask image)", f.display());
        }
    }
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let dir = vm_dir(home, &a.name);
    if let Some(f) = &a.config {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .with_context(|| format!("{} is not JSON", f.display()))?;
        disks.push(qemu::vm::write_config_disk(&dir.join("config.disk"), &text)?);
    }
    let cfg = VmConfig {
        machine: a.machine,
        accel: probe_accel(&kernel, Some(&home.join("accel-probe"))),
        memory_mib: a.memory,
        cpus: a.cpus,
        kernel,
        initrd,
        append,
        disks,
        nbd_port: (a.nbd_port != 0).then_some(a.nbd_port),
        guest_ports: a.vm_ports.clone(),
        tsc_khz: host_tsc_khz(),
        verbose_kernel: a.verbose_kernel,
        qemu_version: qemu::vm::qemu_version(),
    };
    // Block Ctrl-C before QEMU starts; it becomes a power-button press below.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("blocking SIGINT")?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    let mut vm = Vm::launch(&cfg, &dir)?;
    if key_disk.is_some() {
        // QMP greets once QEMU's main loop runs, i.e. after it opened every drive: then the
        // host's copy of the key can go.
        let _ = vm.qmp();
        drop(key_disk);
    }
    eprintln!(
        "lamina: VM {} starting ({:?}, -accel {}, {} vCPU); state in {}",
        a.name,
        cfg.machine,
        cfg.accel_arg(),
        cfg.cpus,
        dir.display()
    );
    if a.detach {
        let r = match vm.wait_ready(Duration::from_secs(a.ready_timeout)) {
            Ok(r) => r,
            // Left running, so `vm console` and `vm ctl status` can show what went wrong.
            Err(e @ qemu::VmError::Degraded { .. }) => {
                vm.detach();
                bail!("VM {} is up but degraded (`lamina vm stop {}`): {e}", a.name, a.name);
            }
            Err(e) => return Err(e.into()),
        };
        eprintln!("lamina: {} after {:.2}s", r.line, r.after.as_secs_f64());
        let nbd = match cfg.nbd_port {
            Some(port) => format!("NBD on 127.0.0.1:{port}"),
            None => "no NBD port on the host".into(),
        };
        eprintln!("lamina: stop with `lamina vm stop {}`; {nbd}", a.name);
        vm.detach();
        return Ok(());
    }
    follow(&mut vm, &sfd)
}

/// Streams the console to stdout until QEMU exits; Ctrl-C presses the power button, a second
/// one quits QEMU.
fn follow(vm: &mut Vm, sfd: &SignalFd) -> Result<()> {
    let mut f = std::fs::File::open(vm.dir.console_log())?;
    let mut presses = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n > 0 {
            std::io::stdout().write_all(&buf[..n])?;
            std::io::stdout().flush()?;
            continue;
        }
        if !vm.alive() {
            let st = vm.wait_exit(Duration::from_secs(1));
            eprintln!("lamina: QEMU exited ({st:?})");
            return Ok(());
        }
        if let Ok(Some(_)) = sfd.read_signal() {
            presses += 1;
            let mut q = vm.qmp()?;
            if presses == 1 {
                eprintln!("\nlamina: power button pressed (Ctrl-C again quits QEMU)");
                q.powerdown()?;
            } else {
                q.quit()?;
            }
        }
        let mut fds = [rustix::event::PollFd::new(sfd, rustix::event::PollFlags::IN)];
        let _ = rustix::event::poll(
            &mut fds,
            Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 100_000_000 }),
        );
    }
}

/// `store.unlock` with a passphrase read from stdin (never from the command line, where
/// other users' `ps` would see it).
fn unlock(dir: &Path) -> Result<()> {
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).context("reading the passphrase from stdin")?;
    let passphrase = line.strip_suffix('\n').unwrap_or(&line);
    let passphrase = passphrase.strip_suffix('\r').unwrap_or(passphrase);
    if passphrase.is_empty() {
        bail!("no passphrase on stdin");
    }
    let d = VmDir(dir.to_owned());
    let mut c = qemu::agent::AgentClient::connect(&d.agent(), Duration::from_secs(2))
        .with_context(|| format!("is VM {} running?", dir.display()))?;
    c.call("store.unlock", Some(json!({ "passphrase": passphrase })), Duration::from_secs(10))?;
    eprintln!("lamina: passphrase given to {}", dir.display());
    Ok(())
}

fn ctl(dir: &Path, command: &str, args: &[String], timeout: u64) -> Result<()> {
    let d = VmDir(dir.to_owned());
    let mut c = qemu::agent::AgentClient::connect(&d.agent(), Duration::from_secs(2))
        .with_context(|| format!("is VM {} running?", dir.display()))?;
    let t = Duration::from_secs(timeout);
    let v = match command {
        "help" => {
            let v = c.call("help", None, t)?;
            return crate::out::print(false, &v, |v| {
                let mut tb = crate::out::Table::new(&["VERB", "ARGUMENTS", "DESCRIPTION"]);
                for verb in v.as_array().into_iter().flatten() {
                    tb.row(
                        ["verb", "arguments", "description"]
                            .map(|k| crate::out::cell(&verb[k]))
                            .to_vec(),
                    );
                }
                tb
            });
        }
        "status" => c.status()?,
        "shutdown" => c.shutdown()?,
        "exec" => {
            if args.is_empty() {
                bail!("exec needs a command");
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let r = c.exec(&argv, t)?;
            print!("{}", r["stdout"].as_str().unwrap_or(""));
            eprint!("{}", r["stderr"].as_str().unwrap_or(""));
            let code = r["exit_code"].as_i64().unwrap_or(255);
            std::process::exit(code as i32);
        }
        other => {
            c.call(other, args.first().map(|a| serde_json::from_str(a).unwrap_or(json!(a))), t)?
        }
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn console(dir: &Path) -> Result<()> {
    let d = VmDir(dir.to_owned());
    let mut log = std::fs::File::open(d.console_log())
        .with_context(|| format!("no console log in {}", dir.display()))?;
    let mut hist = Vec::new();
    log.read_to_end(&mut hist)?;
    std::io::stdout().write_all(&hist)?;
    let sock = std::os::unix::net::UnixStream::connect(d.console_sock())
        .with_context(|| format!("is VM {} running?", dir.display()))?;
    let mut out = sock.try_clone()?;
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut out);
    });
    let mut sock = sock;
    let _ = log.seek(SeekFrom::End(0));
    std::io::copy(&mut sock, &mut std::io::stdout())?;
    Ok(())
}
