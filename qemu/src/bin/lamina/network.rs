//! `lamina network create|ls|rm|inspect`: Docker's network verbs, answered by the guest
//! agent's `network.*` verbs (init's CNI networks).

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;

use crate::image::{call, Listing, VmArg};
use crate::out::{cell, print_rows};

#[derive(Subcommand)]
pub enum NetworkCmd {
    /// Creates a bridge network (a subnet from Docker's pools unless --subnet).
    Create {
        #[command(flatten)]
        vm: VmArg,
        /// e.g. 172.30.0.0/16.
        #[arg(long)]
        subnet: Option<String>,
        name: String,
    },
    /// Lists networks.
    Ls(Listing),
    /// Removes networks no container is on.
    Rm {
        #[command(flatten)]
        vm: VmArg,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// A network's details: subnet, members and their addresses (JSON).
    Inspect {
        #[command(flatten)]
        vm: VmArg,
        name: String,
    },
}

pub fn main(home: &Path, cmd: NetworkCmd) -> Result<()> {
    match cmd {
        NetworkCmd::Create { vm, subnet, name } => {
            let v = call(
                home,
                &vm.name,
                "network.create",
                Some(json!({"name": name, "subnet": subnet})),
            )?;
            println!("{}", cell(&v["id"]));
            Ok(())
        }
        NetworkCmd::Ls(Listing { vm, json }) => {
            let v = call(home, &vm.name, "network.ls", None)?;
            print_rows(json, &v, &["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"], |n| {
                vec![
                    cell(&n["id"]).chars().take(12).collect(),
                    cell(&n["name"]),
                    cell(&n["driver"]),
                    cell(&n["scope"]),
                    cell(&n["subnet"]),
                ]
            })
        }
        NetworkCmd::Rm { vm, names } => {
            crate::container::each(home, &vm.name, "network.rm", &names, json!({}))
        }
        NetworkCmd::Inspect { vm, name } => {
            let v = call(home, &vm.name, "network.inspect", Some(json!({ "name": name })))?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
    }
}
