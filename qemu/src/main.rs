//! `lamina`: run and drive appliance VMs.
//!
//! ```text
//! lamina run [--name NAME] [--disk PATH[,size=8G][,readonly=on]].. [--memory MiB] [--nbd-port 10809] [--detach]
//! lamina ctl VM status | shutdown | exec ARGV..
//! lamina stop VM            power button, wait up to 20 s for QEMU to exit, then quit
//! lamina console VM         attach to the serial console
//! ```
//! A VM is its state dir: `<home>/vms/NAME` (home: --home, $LAMINA_HOME, ./target/lamina).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use qemu::cmdline::{host_tsc_khz, parse_disk, Machine, VmConfig, VmDir};
use qemu::vm::{probe_accel, stop_dir, Vm};
use serde_json::json;

#[derive(Parser)]
#[command(name = "lamina", about = "Run and drive lamina appliance VMs")]
struct Cli {
    /// Where images and VM state live (default: $LAMINA_HOME or ./target/lamina).
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Boots an appliance VM.
    Run(RunArgs),
    /// Sends a guest-agent command: status, shutdown, exec ARGV...
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
    /// Attaches to the serial console (history first, then live).
    Console { vm: String },
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, default_value = "default")]
    name: String,
    /// PATH[,size=8G][,readonly=on]; missing files are created sparse (read-only ones must exist). Default: <home>/disk.raw, 8 GiB.
    #[arg(long)]
    disk: Vec<String>,
    #[arg(long, default_value_t = 512)]
    memory: u32,
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Host port on 127.0.0.1 forwarded to the guest's NBD port 10809.
    #[arg(long, default_value_t = 10809)]
    nbd_port: u16,
    #[arg(long, default_value = "microvm")]
    machine: Machine,
    /// Return once the VM is READY and leave it running.
    #[arg(long)]
    detach: bool,
    /// Boot with lamina.debug=1 (enables `ctl exec`).
    #[arg(long)]
    debug: bool,
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
}

fn home(cli: &Option<PathBuf>) -> PathBuf {
    cli.clone()
        .or_else(|| std::env::var_os("LAMINA_HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/lamina"))
}

fn vm_dir(home: &Path, vm: &str) -> PathBuf {
    if vm.contains('/') {
        PathBuf::from(vm)
    } else {
        home.join("vms").join(vm)
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LAMINA_LOG"))
        .init();
    let cli = Cli::parse();
    let home = home(&cli.home);
    match cli.cmd {
        Cmd::Run(a) => run(&home, a),
        Cmd::Ctl { vm, command, args, timeout } => {
            ctl(&vm_dir(&home, &vm), &command, &args, timeout)
        }
        Cmd::Stop { vm, timeout } => {
            let dir = vm_dir(&home, &vm);
            if stop_dir(&dir, Duration::from_secs(timeout))? {
                eprintln!("lamina: {} powered off", dir.display());
                Ok(())
            } else {
                bail!("{} ignored the power button for {timeout} s; sent quit", dir.display())
            }
        }
        Cmd::Console { vm } => console(&vm_dir(&home, &vm)),
    }
}

fn run(home: &Path, a: RunArgs) -> Result<()> {
    let disks = if a.disk.is_empty() {
        vec![parse_disk(&home.join("disk.raw").display().to_string(), 8 << 30)
            .map_err(anyhow::Error::msg)?]
    } else {
        a.disk
            .iter()
            .map(|d| parse_disk(d, 8 << 30))
            .collect::<Result<_, _>>()
            .map_err(anyhow::Error::msg)?
    };
    let mut disks = disks;
    if let Some(dir) = &a.nbd_tls {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        disks.push(qemu::tlsdisk::build(dir, &home.join(format!("{}-nbd-tls.tar", a.name)))?);
    }
    let mut append = a.append.clone();
    if a.debug {
        append.push("lamina.debug=1".into());
    }
    let kernel = a.kernel.unwrap_or_else(|| home.join("image/vmlinux"));
    let initrd = a.initrd.unwrap_or_else(|| home.join("image/initramfs.cpio"));
    for f in [&kernel, &initrd] {
        if !f.is_file() {
            bail!("{} is missing: build the image first (cargo xtask image)", f.display());
        }
    }
    std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
    let cfg = VmConfig {
        machine: a.machine,
        accel: probe_accel(&kernel, Some(&home.join("accel-probe"))),
        memory_mib: a.memory,
        cpus: a.cpus,
        kernel,
        initrd,
        append,
        disks,
        nbd_port: Some(a.nbd_port),
        tsc_khz: host_tsc_khz(),
        verbose_kernel: a.verbose_kernel,
    };
    let dir = vm_dir(home, &a.name);
    // Block Ctrl-C before QEMU starts; it becomes a power-button press below.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.thread_block().context("blocking SIGINT")?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .context("signalfd")?;
    let mut vm = Vm::launch(&cfg, &dir)?;
    eprintln!(
        "lamina: VM {} starting ({:?}, {:?}); state in {}",
        a.name,
        cfg.machine,
        cfg.accel,
        dir.display()
    );
    if a.detach {
        let r = vm.wait_ready(Duration::from_secs(a.ready_timeout))?;
        eprintln!("lamina: {} after {:.2}s", r.line, r.after.as_secs_f64());
        eprintln!("lamina: stop with `lamina stop {}`; NBD on 127.0.0.1:{}", a.name, a.nbd_port);
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

fn ctl(dir: &Path, command: &str, args: &[String], timeout: u64) -> Result<()> {
    let d = VmDir(dir.to_owned());
    let mut c = qemu::agent::AgentClient::connect(&d.agent(), Duration::from_secs(2))
        .with_context(|| format!("is VM {} running?", dir.display()))?;
    let t = Duration::from_secs(timeout);
    let v = match command {
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
