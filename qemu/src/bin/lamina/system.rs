//! `lamina volume create|ls|rm|backup|restore`, `lamina system df|prune`, `lamina info`.
//! (Named volumes live in the layer store; the pool's thin volumes, the NBD exports, have
//! `volume snapshot|send|receive` and `volume ls --pool`, see [`crate::thin`].)

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Subcommand;
use serde_json::{json, Value};

use crate::image::{call, data, VmArg};
use crate::out::{cell, cells, human, print, print_rows, Table};
use crate::stream::{open_input, write_output};
use crate::thin::{ReceiveArgs, SendArgs};

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Creates a named volume.
    Create {
        #[command(flatten)]
        vm: VmArg,
        name: String,
    },
    /// Lists named volumes (--pool: the pool's thin volumes and snapshots, the NBD exports).
    Ls {
        #[command(flatten)]
        vm: VmArg,
        #[arg(long)]
        json: bool,
        /// The thin pool's volumes and snapshots instead of the named volumes.
        #[arg(long)]
        pool: bool,
    },
    /// Removes named volumes no container uses.
    Rm {
        #[command(flatten)]
        vm: VmArg,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Writes a volume's content as a tar to stdout (or -o FILE).
    Backup {
        #[command(flatten)]
        vm: VmArg,
        name: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Replaces a volume's content with a tar from stdin (or -i FILE); creates it if needed.
    Restore {
        #[command(flatten)]
        vm: VmArg,
        name: String,
        #[arg(short, long)]
        input: Option<PathBuf>,
    },
    /// Snapshots one of the pool's thin volumes (an NBD export), like `lvcreate --snapshot`:
    /// instant, sharing every block until either side changes it.
    Snapshot {
        #[command(flatten)]
        vm: VmArg,
        /// The thin volume (or snapshot) to snapshot.
        volume: String,
        /// Name of the new snapshot.
        snapshot: String,
    },
    /// Writes a thin volume of the pool (normally a snapshot) as a send stream to stdout (or
    /// -o FILE): whole, or with --from only what changed since an older snapshot.
    /// `lamina volume receive` recreates it in another appliance.
    Send(SendArgs),
    /// Creates thin volume NAME in the pool from a send stream on stdin (or -i FILE); kept
    /// only when all of it checks out (a cut or corrupt stream is refused, nothing changes).
    Receive(ReceiveArgs),
}

#[derive(Subcommand)]
pub enum SystemCmd {
    /// Space taken by images, containers and volumes.
    Df {
        #[command(flatten)]
        vm: VmArg,
        #[arg(long)]
        json: bool,
    },
    /// Removes stopped containers and dangling images (-a: every unused image; --volumes:
    /// unused volumes too), then trims the store so the pool gets the blocks back.
    Prune {
        #[command(flatten)]
        vm: VmArg,
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        volumes: bool,
        #[arg(long)]
        json: bool,
    },
}

pub fn volume(home: &Path, cmd: VolumeCmd) -> Result<()> {
    match cmd {
        VolumeCmd::Create { vm, name } => {
            call(home, &vm.name, "store.volume.create", Some(json!({ "name": name })))?;
            println!("{name}");
            Ok(())
        }
        VolumeCmd::Ls { vm, json, pool: true } => crate::thin::ls(home, &vm.name, json),
        VolumeCmd::Ls { vm, json, pool: false } => {
            let v = call(home, &vm.name, "store.volume.ls", None)?;
            print_rows(json, &v, &["DRIVER", "VOLUME NAME", "SIZE", "CONTAINERS"], |x| {
                vec![
                    cell(&x["driver"]),
                    cell(&x["name"]),
                    human(x["size"].as_u64().unwrap_or(0)),
                    cells(&x["containers"]).join(","),
                ]
            })
        }
        VolumeCmd::Rm { vm, names } => {
            crate::container::each(home, &vm.name, "store.volume.rm", &names, json!({}))
        }
        VolumeCmd::Backup { vm, name, output } => {
            write_output(output.as_deref(), "a tar", |sink| {
                Ok(data(home, &vm.name)?.backup(&name, sink, &mut |_, _| {})?)
            })?;
            Ok(())
        }
        VolumeCmd::Restore { vm, name, input } => {
            let (mut src, _) = open_input(input.as_deref())?;
            data(home, &vm.name)?.restore(&name, &mut src, &mut |_| {})?;
            println!("{name}");
            Ok(())
        }
        VolumeCmd::Snapshot { vm, volume, snapshot } => {
            crate::thin::snapshot(home, &vm.name, &volume, &snapshot)
        }
        VolumeCmd::Send(a) => crate::thin::send(home, &a),
        VolumeCmd::Receive(a) => crate::thin::receive(home, &a),
    }
}

pub fn system(home: &Path, cmd: SystemCmd) -> Result<()> {
    match cmd {
        SystemCmd::Df { vm, json } => {
            let v = call(home, &vm.name, "system.df", None)?;
            print(json, &v, |v| {
                let mut t = Table::new(&["TYPE", "TOTAL", "SIZE"]);
                for (k, label) in [
                    ("images", "Images"),
                    ("containers", "Containers"),
                    ("volumes", "Local Volumes"),
                ] {
                    t.row(vec![
                        label.into(),
                        cell(&v[k]["count"]),
                        human(v[k]["size"].as_u64().unwrap_or(0)),
                    ]);
                }
                t
            })
        }
        SystemCmd::Prune { vm, all, volumes, json } => {
            let v = call(
                home,
                &vm.name,
                "system.prune",
                Some(json!({"all": all, "volumes": volumes})),
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for (k, what) in
                    [("containers", "container"), ("images", "image"), ("volumes", "volume")]
                {
                    for x in v[k].as_array().into_iter().flatten() {
                        println!("Deleted {what}: {}", cell(x));
                    }
                }
                println!("Total reclaimed space: {}", human(v["reclaimed"].as_u64().unwrap_or(0)));
                println!("{}", cell(&v["fstrim"]));
            }
            Ok(())
        }
    }
}

/// `lamina info`: Docker's `info` fields for the store and its devicemapper pool.
pub fn info(home: &Path, vm: &str, json: bool) -> Result<()> {
    let st = call(home, vm, "status", None)?;
    let ctrs = call(home, vm, "container.ls", Some(json!({"all": true})))?;
    let imgs = call(home, vm, "image.ls", None)?;
    let list = ctrs.as_array().cloned().unwrap_or_default();
    let running = list.iter().filter(|c| c["state"]["status"] == "running").count();
    let pool = &st["pool"]["pool"];
    let o = &pool["options"];
    let v = json!({
        "Containers": list.len(),
        "Running": running,
        "Stopped": list.len() - running,
        "Images": imgs.as_array().map_or(0, Vec::len),
        "Storage Driver": "overlay2",
        "Backing Filesystem": "xfs",
        "Supports d_type": true,
        "Kernel Version": st["kernel"],
        "Total Memory": st["memory"]["total_kib"].as_u64().unwrap_or(0) * 1024,
        "CPUs": st["cpus"],
        "Thin Pool": pool["devicemapper"],
        "Thin Pool Options": {
            "dm.thinp_percent": o["thinp_percent"],
            "dm.thinp_metapercent": o["thinp_metapercent"],
            "dm.thinp_autoextend_threshold": o["autoextend_threshold"],
            "dm.thinp_autoextend_percent": o["autoextend_percent"],
            "dm.min_free_space": o["min_free_space"],
            "dm.basesize": o["basesize"],
            "dm.blocksize": o["blocksize"],
        },
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let line = |k: &str, x: &Value| println!("{k}: {}", cell(x));
    for k in ["Containers", "Running", "Stopped", "Images", "Storage Driver"] {
        line(k, &v[k]);
    }
    for k in ["Backing Filesystem", "Supports d_type"] {
        println!(" {k}: {}", cell(&v[k]));
    }
    println!(" Thin Pool:");
    if let Some(m) = v["Thin Pool"].as_object() {
        for (k, x) in m {
            println!("  {k}: {}", cell(x));
        }
    }
    if let Some(m) = v["Thin Pool Options"].as_object() {
        for (k, x) in m {
            println!("  {k}: {}", cell(x));
        }
    }
    for k in ["Kernel Version", "CPUs", "Total Memory"] {
        line(k, &v[k]);
    }
    Ok(())
}
