//! `cargo xtask`: every build, test and check of lamina goes through here, so the README, CI
//! and developers run the same thing.

mod bench;
mod setup;

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
    /// Installs what the tests need, then runs every test (host tier, then VM tier).
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// What CI runs: fmt --check, clippy -D warnings, then `test`.
    Ci,
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
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Test { args } => task_test(&args),
        Task::Ci => task_ci(),
        Task::Setup => setup::install_missing(),
        Task::Bench { report_only: true, .. } => {
            bench::summarize(&workspace_root().join("target/bench"))
        }
        Task::Bench { suites, .. } => {
            setup::install_missing()?;
            bench::run(&workspace_root(), &suites)
        }
    }
}

fn task_test(args: &[String]) -> Result<()> {
    setup::install_missing()?;
    cargo(&["test", "--workspace", "--all-targets"], args)
}

fn task_ci() -> Result<()> {
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"], &[])?;
    task_test(&[])
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
