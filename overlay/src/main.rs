//! `layerstore`: command-line front end of the overlay2-style layer store.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use overlay::{Driver, ExportFormat, Store, VolumeBind};

#[derive(Parser)]
#[command(name = "layerstore", about = "overlay2-style container layer store", version)]
struct Cli {
    /// Store root directory.
    #[arg(long, default_value = "/var/lib/lamina/overlay2", global = true)]
    root: PathBuf,
    /// Storage driver (fixed when the store is created).
    #[arg(long, value_enum, default_value_t = DriverArg::Overlay, global = true)]
    driver: DriverArg,
    /// Driver options, Docker's names (devicemapper: dm.basesize=10G, dm.fs=xfs|ext4,
    /// dm.mkfsarg=, dm.mountopt=, dm.use_deferred_removal=, dm.use_deferred_deletion=,
    /// dm.min_free_space=10%). Repeatable.
    #[arg(long = "storage-opt", global = true)]
    storage_opts: Vec<String>,
    /// State directory of the pool daemon the devicemapper driver asks for volumes.
    #[arg(long, default_value = "/run/lamina/pool", global = true)]
    pool_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Docker's driver names; aufs and zfs are refused with the reason (`Driver::from_name`).
#[derive(Clone, Copy, ValueEnum)]
enum DriverArg {
    #[value(alias = "overlay2")]
    Overlay,
    Vfs,
    Btrfs,
    Devicemapper,
    Aufs,
    Zfs,
}

impl DriverArg {
    fn name(self) -> &'static str {
        match self {
            DriverArg::Overlay => "overlay",
            DriverArg::Vfs => "vfs",
            DriverArg::Btrfs => "btrfs",
            DriverArg::Devicemapper => "devicemapper",
            DriverArg::Aufs => "aufs",
            DriverArg::Zfs => "zfs",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Oci,
    Docker,
}

#[derive(Subcommand)]
enum Cmd {
    /// Import an OCI layout (dir or tar) or a docker-save archive.
    Import {
        path: PathBuf,
        /// Import only the image with this name in the source (OCI ref.name or RepoTags).
        #[arg(long = "ref")]
        reference: Option<String>,
        #[arg(long)]
        tag: Option<String>,
    },
    /// List images.
    Images,
    /// Create a container on an image.
    Create {
        image: String,
        name: String,
        /// Limit the container's own changes (e.g. 10G); needs XFS with prjquota.
        #[arg(long)]
        size: Option<String>,
    },
    /// Mount a container; prints the merged directory.
    Mount { name: String },
    /// Unmount a container.
    Unmount { name: String },
    /// Commit a container's changes as a new image.
    Commit { name: String, tag: String },
    /// Remove a container.
    Rm { name: String },
    /// List containers.
    Ls,
    /// Disk usage: shared vs exclusive bytes per image.
    Du,
    /// Remove unused images, layers and blobs.
    Prune {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        volumes: bool,
    },
    /// Export an image to an OCI layout (dir, or .tar) or a docker-archive tar.
    Export {
        image: String,
        path: PathBuf,
        #[arg(long, value_enum, default_value_t = FormatArg::Oci)]
        format: FormatArg,
    },
    /// Write an OCI runtime bundle (config.json) for a container.
    Bundle {
        name: String,
        dir: PathBuf,
        /// NAME:/path[:ro|:rw], repeatable.
        #[arg(long = "volume")]
        volumes: Vec<String>,
    },
    /// Named volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Write a container's changes as a layer tar (OCI whiteouts) to a file.
    Diff { name: String, out: PathBuf },
    /// The driver and its state, with Docker's `docker info` field names.
    Info,
}

#[derive(Subcommand)]
enum VolumeCmd {
    Create { name: String },
    Ls,
    Rm { name: String },
    Backup { name: String, out: PathBuf },
    Restore { name: String, input: PathBuf },
}

/// A `--size`: the one size grammar of every lamina binary (Docker's `RAMInBytes`); zero is
/// no limit and so refused here.
fn parse_size(s: &str) -> Result<u64> {
    let n = units::parse_size(s)?;
    if n == 0 {
        bail!("size must be positive: {s:?}");
    }
    Ok(n)
}

fn human(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}

fn run(cli: Cli) -> Result<()> {
    let driver = Driver::from_name(cli.driver.name())?;
    let store = match driver {
        Driver::Devicemapper => Store::open_devicemapper(
            &cli.root,
            overlay::devmapper::DmOptions::parse(&cli.storage_opts)?,
            Box::new(overlay::devmapper::PoolDaemon { dir: cli.pool_dir.clone() }),
        ),
        _ if !cli.storage_opts.is_empty() => {
            bail!("--storage-opt: the {} driver takes no options", driver.name())
        }
        _ => Store::open(&cli.root, driver),
    }
    .with_context(|| format!("open store {}", cli.root.display()))?;
    match cli.cmd {
        Cmd::Import { path, reference, tag } => {
            for img in store.import_image(&path, reference.as_deref(), tag.as_deref())? {
                println!("{} {}", img.id, img.tags.join(","));
            }
        }
        Cmd::Images => {
            println!("{:<40} {:<20} {:>7} {:>12}", "TAG", "IMAGE ID", "LAYERS", "SIZE");
            let du = store.du()?;
            for img in store.images()? {
                let size = du.images.iter().find(|u| u.id == img.id).map(|u| u.size).unwrap_or(0);
                let tags =
                    if img.tags.is_empty() { vec!["<none>".to_string()] } else { img.tags.clone() };
                for t in tags {
                    println!(
                        "{:<40} {:<20} {:>7} {:>12}",
                        t,
                        &img.id.hex()[..12],
                        img.layers.len(),
                        human(size)
                    );
                }
            }
        }
        Cmd::Create { image, name, size } => {
            let size = size.as_deref().map(parse_size).transpose()?;
            let c = store.create(&image, &name, size)?;
            println!("{}", c.cache_id);
        }
        Cmd::Mount { name } => println!("{}", store.mount(&name)?.display()),
        Cmd::Unmount { name } => store.unmount(&name)?,
        Cmd::Commit { name, tag } => println!("{}", store.commit(&name, &tag)?.id),
        Cmd::Rm { name } => store.remove(&name)?,
        Cmd::Ls => {
            println!("{:<24} {:<20} {:<12} {:>12}", "NAME", "IMAGE", "MOUNTED", "SIZE LIMIT");
            for c in store.containers()? {
                let merged = store.root().join(&c.cache_id).join("merged");
                let mounted = overlay::mount::is_mountpoint(&merged);
                let limit = c.size_limit.map(human).unwrap_or_else(|| "-".into());
                println!(
                    "{:<24} {:<20} {:<12} {:>12}",
                    c.name,
                    &c.image.hex()[..12],
                    mounted,
                    limit
                );
            }
        }
        Cmd::Du => {
            let du = store.du()?;
            println!("{:<40} {:>12} {:>12} {:>12}", "IMAGE", "SIZE", "SHARED", "EXCLUSIVE");
            for i in &du.images {
                let name = i.tags.first().cloned().unwrap_or_else(|| i.id.hex()[..12].to_string());
                println!(
                    "{:<40} {:>12} {:>12} {:>12}",
                    name,
                    human(i.size),
                    human(i.shared),
                    human(i.exclusive)
                );
            }
            for (n, s) in &du.containers {
                println!("container {n}: {}", human(*s));
            }
            for (n, s) in &du.volumes {
                println!("volume {n}: {}", human(*s));
            }
            println!("layers total: {}", human(du.layers_total));
        }
        Cmd::Prune { all, volumes } => {
            let r = store.prune(all, volumes)?;
            for i in &r.images {
                println!("deleted image {i}");
            }
            for v in &r.volumes {
                println!("deleted volume {v}");
            }
            println!(
                "{} layers, {} blobs removed; reclaimed {}",
                r.layers,
                r.blobs,
                human(r.bytes)
            );
        }
        Cmd::Export { image, path, format } => {
            let f = match format {
                FormatArg::Oci => ExportFormat::Oci,
                FormatArg::Docker => ExportFormat::Docker,
            };
            let info = store.export(&image, &path, f)?;
            println!(
                "{} config {} manifest {}",
                info.path.display(),
                info.config,
                info.manifest.digest
            );
        }
        Cmd::Bundle { name, dir, volumes } => {
            let binds = volumes
                .iter()
                .map(|v| VolumeBind::parse(v))
                .collect::<overlay::Result<Vec<_>>>()?;
            println!("{}", store.bundle(&name, &dir, &binds)?.display());
        }
        Cmd::Diff { name, out } => {
            let f = std::io::BufWriter::new(
                std::fs::File::create(&out).with_context(|| format!("create {}", out.display()))?,
            );
            let (mut w, d, n) = store.container_diff(&name, f)?;
            std::io::Write::flush(&mut w)?;
            println!("{d} {n}");
        }
        Cmd::Info => {
            for (k, v) in store.info()? {
                println!("{k}: {v}");
            }
        }
        Cmd::Volume(v) => match v {
            VolumeCmd::Create { name } => println!("{}", store.volume_create(&name)?.display()),
            VolumeCmd::Ls => {
                for v in store.volumes()? {
                    println!("{v}");
                }
            }
            VolumeCmd::Rm { name } => store.volume_remove(&name)?,
            VolumeCmd::Backup { name, out } => store.volume_backup(&name, &out)?,
            VolumeCmd::Restore { name, input } => store.volume_restore(&name, &input)?,
        },
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LAYERSTORE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("layerstore: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10G").unwrap(), 10 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5GiB").unwrap(), 3 << 29);
        assert!(parse_size("0").unwrap_err().to_string().contains("must be positive"));
        assert!(parse_size("1Q").unwrap_err().to_string().contains("unknown unit"));
    }
}
