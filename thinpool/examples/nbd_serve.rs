//! Runs the pool daemon the way `thinpool serve` will: `nbd_serve DIR [--listen ADDR]
//! [--socket PATH] [--read-only A,B] [--allow CIDR,..]`. Used by the crash/restart tests.

use std::path::PathBuf;

use clap::Parser;
use thinpool::nbd::daemon::{self, ServeConfig};

#[derive(Parser)]
struct Args {
    /// Pool directory (FilePool layout).
    dir: PathBuf,
    #[command(flatten)]
    serve: ServeConfig,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    daemon::serve(&args.dir, args.serve)?;
    Ok(())
}
