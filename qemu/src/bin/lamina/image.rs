//! `lamina image load | ls | rm | save`: the appliance's images, with Docker's habits.
//! Bytes travel over the data channel ([`qemu::data`]), listings over the agent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use qemu::cmdline::VmDir;
use qemu::data::DataClient;
use serde_json::{json, Value};

use crate::out::{cell, cells, human, print, print_rows, Table};
use crate::stream::{open_input, progress, write_output, Source};
use crate::vm::vm_dir;

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Loads an image archive from stdin (or -i FILE): OCI layout tar, oci-archive or
    /// docker-archive; gzip, zstd or uncompressed.
    Load {
        #[command(flatten)]
        vm: VmArg,
        #[command(flatten)]
        src: Source,
        #[arg(long)]
        json: bool,
    },
    /// Lists images.
    Ls(Listing),
    /// Removes images (by tag or id) and the layers only they used.
    Rm {
        #[command(flatten)]
        vm: VmArg,
        #[arg(required = true)]
        images: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Writes an image archive to stdout (or -o FILE).
    Save {
        #[command(flatten)]
        vm: VmArg,
        image: String,
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// docker (docker-archive, as `docker save`) or oci (oci-archive).
        #[arg(long, default_value = "docker")]
        format: String,
    },
}

/// The VM a container verb talks to.
#[derive(clap::Args)]
pub struct VmArg {
    /// The appliance VM.
    #[arg(long = "vm", id = "vm", value_name = "NAME", default_value = "default")]
    pub name: String,
}

/// A listing verb's arguments: the VM, and JSON instead of a table.
#[derive(clap::Args)]
pub struct Listing {
    #[command(flatten)]
    pub vm: VmArg,
    #[arg(long)]
    pub json: bool,
}

/// The agent of a running VM, or an error naming the VM.
pub fn agent(home: &Path, vm: &str) -> Result<qemu::agent::AgentClient> {
    let d = VmDir(vm_dir(home, vm));
    qemu::agent::AgentClient::connect(&d.agent(), Duration::from_secs(2))
        .with_context(|| format!("VM {vm} is not running (`lamina vm run --name {vm}`)"))
}

/// Calls an agent verb with a timeout fit for store work.
pub fn call(home: &Path, vm: &str, verb: &str, args: Option<Value>) -> Result<Value> {
    Ok(agent(home, vm)?.call(verb, args, Duration::from_secs(120))?)
}

/// The data channel of a running VM, for bulk transfers.
pub fn data(home: &Path, vm: &str) -> Result<DataClient> {
    let d = VmDir(vm_dir(home, vm));
    if !d.agent().exists() {
        bail!("VM {vm} is not running (`lamina vm run --name {vm}`)");
    }
    DataClient::connect(&d.data(), Duration::from_secs(2))
        .with_context(|| format!("VM {vm}: no data channel"))
}

/// `REPOSITORY` and `TAG` of a tag (the tag is after the last ':' that follows the last '/').
fn split_tag(t: &str) -> (&str, &str) {
    // Docker Hub's official images are shown by their short name.
    let t = t.strip_prefix("docker.io/library/").unwrap_or(t);
    match t.rfind(':').filter(|i| !t[*i..].contains('/')) {
        Some(i) => (&t[..i], &t[i + 1..]),
        None => (t, "latest"),
    }
}

fn ago(unix: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let s = now.saturating_sub(unix);
    match s {
        0..=59 => format!("{s} seconds ago"),
        60..=3599 => format!("{} minutes ago", s / 60),
        3600..=86399 => format!("{} hours ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

fn short_id(id: &Value) -> String {
    let id = cell(id);
    id.strip_prefix("sha256:").unwrap_or(&id).chars().take(12).collect()
}

pub fn main(home: &Path, cmd: ImageCmd) -> Result<()> {
    match cmd {
        ImageCmd::Load { vm, src, json } => {
            let mut c = data(home, &vm.name)?;
            let (mut r, len) = open_input(src.input.as_deref())?;
            let b = progress(src.quiet, len);
            let v = c.load(&mut r, &mut |n| b.set_position(n));
            b.finish_and_clear();
            let v = v?;
            print_rows(json, &v, &["LOADED IMAGE", "IMAGE ID"], |i| {
                let tag = i["tags"].get(0).map(cell).unwrap_or_else(|| "<none>".into());
                vec![tag, short_id(&i["id"])]
            })
        }
        ImageCmd::Ls(Listing { vm, json }) => {
            let v = call(home, &vm.name, "image.ls", None)?;
            print(json, &v, |v| {
                let mut t = Table::new(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]);
                for i in v.as_array().into_iter().flatten() {
                    let mut tags = cells(&i["tags"]);
                    if tags.is_empty() {
                        tags.push("<none>:<none>".into());
                    }
                    for tag in tags {
                        let (repo, t2) = split_tag(&tag);
                        t.row(vec![
                            repo.into(),
                            t2.into(),
                            short_id(&i["id"]),
                            ago(i["created"].as_u64().unwrap_or(0)),
                            human(i["size"].as_u64().unwrap_or(0)),
                        ]);
                    }
                }
                t
            })
        }
        ImageCmd::Rm { vm, images, json } => {
            let mut done = Vec::new();
            let mut failed = Vec::new();
            for i in &images {
                match call(home, &vm.name, "image.rm", Some(json!({"name": i}))) {
                    Ok(v) => done.push(v),
                    Err(e) => failed.push(format!("{i}: {e:#}")),
                }
            }
            print_rows(json, &json!(done), &["DELETED", "UNTAGGED"], |r| {
                vec![cell(&r["removed"]), cells(&r["tags"]).join(",")]
            })?;
            if !failed.is_empty() {
                bail!("{}", failed.join("\n"));
            }
            Ok(())
        }
        ImageCmd::Save { vm, image, output, format } => {
            write_output(output.as_deref(), "an archive", |sink| {
                let mut c = data(home, &vm.name)?;
                let b = progress(output.is_none(), Some(0));
                let r = c.save(&image, &format, sink, &mut |n, total| {
                    b.set_length(total);
                    b.set_position(n);
                });
                b.finish_and_clear();
                Ok(r?)
            })?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_split_like_docker_images() {
        assert_eq!(split_tag("busybox:1"), ("busybox", "1"));
        assert_eq!(split_tag("docker.io/library/bb2:latest"), ("bb2", "latest"));
        assert_eq!(split_tag("localhost:5000/bb"), ("localhost:5000/bb", "latest"));
        assert_eq!(split_tag("localhost:5000/bb:2"), ("localhost:5000/bb", "2"));
    }
}
