//! `lamina`: the appliance from the host.
//!
//! `lamina vm …` runs and drives the VMs themselves ([`vm`]); the top level is left to the
//! container store's verbs, with Docker's names and habits (a table by default, `--json`,
//! non-zero exit on error), each taking `--vm NAME` (default `default`).

mod out;
mod vm;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lamina", about = "Run lamina appliance VMs and drive their container store")]
struct Cli {
    /// Where images and VM state live (default: $LAMINA_HOME or ./target/lamina).
    #[arg(long, global = true)]
    home: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The appliance VMs: run, stop, console, ctl, ls.
    #[command(subcommand)]
    Vm(vm::VmCmd),
}

fn home(cli: &Option<PathBuf>) -> PathBuf {
    cli.clone()
        .or_else(|| std::env::var_os("LAMINA_HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/lamina"))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LAMINA_LOG"))
        .init();
    let cli = Cli::parse();
    let home = home(&cli.home);
    match cli.cmd {
        Cmd::Vm(c) => vm::main(&home, c),
    }
}
