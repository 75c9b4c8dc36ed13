//! The `thinpool` command line. See `thinpool --help`.

use std::process::ExitCode;

use clap::Parser;
use thinpool::cli::{run, Cli};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THINPOOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: the error and its causes, joined.
            eprintln!("thinpool: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
