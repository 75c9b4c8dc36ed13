//! `cargo xtask`: every build, test and check of lamina goes through here, so the README, CI
//! and developers run the same thing.

mod bench;
mod fuzz;
mod image;
mod image_variant;
mod lint;
mod setup;

use std::path::PathBuf;
use std::process::Command;

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
    /// What CI runs: fmt --check, clippy -D warnings, the code-shape check, then every
    /// test (host tier, then VM tier), installing what the tests need first.
    Test {
        /// Skip the VM tier (host tests only).
        #[arg(long)]
        host_only: bool,
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The same as `test` (kept for muscle memory).
    Ci,
    /// Only the static checks: fmt --check, clippy -D warnings, the code-shape check.
    Lint,
    /// Runs benchmarks against the peers and writes JSON, a Markdown table and SVG plots
    /// under target/bench/.
    Bench {
        #[arg(value_enum)]
        suites: Vec<bench::Suite>,
        /// Only redraw the table and plots from the records already in target/bench/.
        #[arg(long)]
        report_only: bool,
    },
    /// Installs the host packages lamina's tests and tools need (apt-get, when missing).
    Setup,
    /// Runs every fuzz target (fuzz/, cargo-fuzz on nightly) on its corpus in the repository.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        time: u64,
        /// Keep the corpus as the run left it (no `cargo fuzz cmin` afterwards).
        #[arg(long)]
        no_cmin: bool,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
    /// Builds the boot artefacts into target/lamina/image (static binaries, kernel, initramfs).
    Image {
        /// Use this kernel .deb instead of the pinned one (also env LAMINA_KERNEL_DEB).
        #[arg(long)]
        kernel_deb: Option<PathBuf>,
        /// Build a test variant into target/lamina/image-VARIANT instead (dm: device-mapper
        /// thin-pool modules and dmsetup).
        #[arg(long)]
        variant: Option<String>,
    },
    /// Builds the image and boots it on target/lamina/disk.raw (8 GiB sparse), console attached.
    Run {
        /// Arguments for `lamina run` (e.g. --debug, --machine q35, --memory 1024).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test { host_only, args } => task_test(host_only, &args),
        Task::Ci => task_test(false, &[]),
        Task::Lint => setup::install_missing().and_then(|()| task_lint()),
        Task::Setup => setup::install_missing(),
        Task::Fuzz { time, no_cmin, targets } => {
            fuzz::task_fuzz(&workspace_root(), time, &targets, !no_cmin)
        }
        Task::Image { kernel_deb, variant: None } => {
            image::task_image(&workspace_root(), kernel_deb).map(drop)
        }
        Task::Image { kernel_deb, variant: Some(v) } => {
            image_variant::task_image_variant(&workspace_root(), &v, kernel_deb).map(drop)
        }
        Task::Run { args } => task_run(&args),
        Task::Bench { report_only: true, .. } => {
            bench::summarize(&workspace_root().join("target/bench"))
        }
        Task::Bench { suites, .. } => {
            setup::install_missing()?;
            bench::run(&workspace_root(), &suites)
        }
    }
}

fn task_test(host_only: bool, args: &[String]) -> Result<()> {
    // Packages first: clippy builds libublk's bindings, which need libclang.
    setup::install_missing()?;
    task_lint()?;
    eprintln!("== host tier");
    cargo(&["test", "--workspace", "--all-targets", "--exclude", "tests"], args)?;
    cargo(&["test", "-p", "tests", "--lib"], args)?;
    if host_only {
        eprintln!("== VM tier skipped (--host-only)");
        return Ok(());
    }
    eprintln!("== VM tier (one VM at a time; builds the image first)");
    image::task_image(&workspace_root(), None)?;
    // vm_dmthin boots the dm variant; a failed variant build stops the tier here.
    image_variant::task_image_variant(&workspace_root(), "dm", None)?;
    cargo(&["test", "-p", "tests", "--test", "vm_*"], args)
}

fn task_lint() -> Result<()> {
    eprintln!("== static checks");
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
    lint::check(&workspace_root())
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
