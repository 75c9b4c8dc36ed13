//! `cargo xtask`: every build, test and check of lamina goes through here, so the README, CI
//! and developers run the same thing.

mod image;
mod setup;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "lamina's build, test and check tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Installs what the tests need, then runs every test: host tier, then VM tier.
    Test {
        /// Skip the VM tier (host tests only).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// What CI runs: fmt --check, clippy -D warnings, then `test`.
    Ci,
    /// Installs the host packages lamina's tests and tools need (apt-get, when missing).
    Setup,
    /// Builds the boot artefacts into target/lamina/image (static binaries, kernel, initramfs).
    Image {
        /// Use this kernel .deb instead of the pinned one (also env LAMINA_KERNEL_DEB).
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
    },
    /// Builds the image and boots it on target/lamina/disk.raw (8 GiB sparse), console attached.
    Run {
        /// Arguments for `lamina run` (e.g. --debug, --machine q35, --memory 1024).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Measurements: `bench boot` = median time to READY over 5 boots after a warm-up boot.
    Bench {
        what: String,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value = "microvm")]
        machine: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test { host_only, args } => task_test(host_only, &args),
        Task::Ci => task_ci(),
        Task::Setup => setup::install_missing(),
        Task::Image { kernel_deb } => image::task_image(&workspace_root(), kernel_deb).map(drop),
        Task::Run { args } => task_run(&args),
        Task::Bench { what, runs, machine } => match what.as_str() {
            "boot" => bench_boot(runs, &machine),
            other => bail!("unknown bench {other:?} (boot)"),
        },
    }
}

fn task_test(host_only: bool, args: &[String]) -> Result<()> {
    setup::install_missing()?;
    eprintln!("== host tier");
    cargo(&["test", "--workspace", "--all-targets", "--exclude", "tests"], args)?;
    cargo(&["test", "-p", "tests", "--lib"], args)?;
    if host_only {
        eprintln!("== VM tier skipped (--host-only)");
        return Ok(());
    }
    eprintln!("== VM tier (one VM at a time; builds the image first)");
    image::task_image(&workspace_root(), None)?;
    cargo(&["test", "-p", "tests", "--test", "vm_*"], args)
}

fn task_ci() -> Result<()> {
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
    task_test(false, &[])
}

fn task_run(args: &[String]) -> Result<()> {
    setup::install_missing()?;
    let root = workspace_root();
    image::task_image(&root, None)?;
    cargo(&["build", "-p", "qemu", "--bin", "lamina"], &[])?;
    let lamina = root.join("target/debug/lamina");
    let home = image::lamina_dir(&root);
    let status = Command::new(&lamina)
        .arg("--home")
        .arg(&home)
        .arg("run")
        .args(args)
        .current_dir(&root)
        .status()
        .with_context(|| format!("running {}", lamina.display()))?;
    if !status.success() {
        bail!("lamina run failed ({status})");
    }
    Ok(())
}

fn bench_boot(runs: usize, machine: &str) -> Result<()> {
    let root = workspace_root();
    let home = image::lamina_dir(&root);
    let img = home.join("image");
    if !img.join("initramfs.cpio").is_file() {
        image::task_image(&root, None)?;
    }
    let machine: qemu::Machine = machine.parse().map_err(anyhow::Error::msg)?;
    let cfg = qemu::VmConfig {
        machine,
        accel: qemu::vm::probe_accel(&img.join("vmlinux"), Some(&home.join("accel-probe"))),
        memory_mib: 512,
        cpus: 1,
        kernel: img.join("vmlinux"),
        initrd: img.join("initramfs.cpio"),
        append: vec![],
        disks: vec![qemu::Disk { path: home.join("bench/disk.raw"), size: 8 << 30 }],
        nbd_port: None,
        tsc_khz: qemu::cmdline::host_tsc_khz(),
        verbose_kernel: false,
    };
    let mut times = Vec::new();
    for i in 0..=runs {
        let mut vm = qemu::Vm::launch(&cfg, &home.join("bench/vm"))?;
        let r = vm.wait_ready(Duration::from_secs(120))?;
        vm.stop(Duration::from_secs(20))?;
        let label = if i == 0 { "warm-up".to_owned() } else { format!("run {i}") };
        eprintln!(
            "[bench boot {machine:?} {:?}] {label}: READY after {:.2}s ({})",
            cfg.accel,
            r.after.as_secs_f64(),
            r.line.rsplit_once('(').map(|(_, t)| t.trim_end_matches(')')).unwrap_or("")
        );
        if i > 0 {
            times.push(r.after.as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "boot {machine:?} {:?}: median {median:.2}s over {runs} boots (min {:.2}s, max {:.2}s)",
        cfg.accel,
        times[0],
        times[times.len() - 1]
    );
    Ok(())
}

fn cargo(base: &[&str], extra: &[String]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(&cargo)
        .args(base)
        .args(extra)
        .current_dir(workspace_root())
        .status()
        .with_context(|| format!("running {cargo} {}", base.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", base.join(" "));
    }
    Ok(())
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is in the workspace")
        .to_owned()
}
