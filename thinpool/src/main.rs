//! The `thinpool` command line. See `thinpool --help`.

use std::process::ExitCode;

use clap::Parser;
use cli::{error_line, run, Cli};

mod cli;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("THINPOOL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message is several lines (error, the arguments concerned indented below
            // it, blank, hint): keep the error and its arguments, on one line.
            let msg = e.to_string();
            let line: Vec<&str> =
                msg.lines().take_while(|l| !l.trim().is_empty()).map(str::trim).collect();
            let line = if line.is_empty() { "bad arguments".to_owned() } else { line.join(" ") };
            eprintln!("thinpool: {} (see --help)", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("thinpool: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}
