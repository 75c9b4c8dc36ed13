//! `lamina`: the appliance from the host.
//!
//! `lamina vm …` runs and drives the VMs themselves ([`vm`]); the top level is left to the
//! container store's verbs, with Docker's names and habits (a table by default, `--json`,
//! non-zero exit on error), each taking `--vm NAME` (default `default`).

mod container;
mod image;
mod network;
mod out;
mod stream;
mod system;
mod thin;
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
    /// Images: load, ls, rm, save.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// Named volumes: create, ls, rm, backup, restore; the pool's thin volumes: snapshot,
    /// send, receive, ls --pool.
    #[command(subcommand)]
    Volume(system::VolumeCmd),
    /// Networks: create, ls, rm, inspect.
    #[command(subcommand)]
    Network(network::NetworkCmd),
    /// The store as a whole: df, prune.
    #[command(subcommand)]
    System(system::SystemCmd),
    /// The store's and the thin pool's Docker fields.
    Info {
        #[command(flatten)]
        vm: image::VmArg,
        #[arg(long)]
        json: bool,
    },
    /// Creates and starts a container.
    Run(container::RunArgs),
    /// Lists containers.
    Ps {
        #[command(flatten)]
        vm: image::VmArg,
        /// Also stopped ones.
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// A container's output.
    Logs {
        #[command(flatten)]
        vm: image::VmArg,
        /// Keep following it.
        #[arg(short, long)]
        follow: bool,
        container: String,
    },
    /// Stops containers (SIGTERM, then SIGKILL after the timeout).
    Stop {
        #[command(flatten)]
        targets: container::Targets,
        /// Seconds before SIGKILL.
        #[arg(short, long, default_value_t = 10)]
        time: u64,
    },
    /// Starts stopped containers.
    Start(container::Targets),
    /// Removes containers.
    Rm {
        #[command(flatten)]
        targets: container::Targets,
        /// Stop a running container first.
        #[arg(short, long)]
        force: bool,
    },
    /// Commits a container's changes as an image.
    Commit {
        #[command(flatten)]
        vm: image::VmArg,
        container: String,
        image: String,
    },
    /// Runs a command inside a running container.
    Exec {
        #[command(flatten)]
        vm: image::VmArg,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
}

fn home(cli: &Option<PathBuf>) -> PathBuf {
    cli.clone()
        .or_else(|| std::env::var_os("LAMINA_HOME").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/lamina"))
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("LAMINA_LOG"))
        .init();
    let cli = Cli::parse();
    let home = home(&cli.home);
    match run(&home, cli.cmd) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line with its causes, as Docker's CLI prints errors.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(home: &std::path::Path, cmd: Cmd) -> Result<()> {
    let home = home.to_owned();
    match cmd {
        Cmd::Vm(c) => vm::main(&home, c),
        Cmd::Image(c) => image::main(&home, c),
        Cmd::Volume(c) => system::volume(&home, c),
        Cmd::System(c) => system::system(&home, c),
        Cmd::Network(c) => network::main(&home, c),
        Cmd::Info { vm, json } => system::info(&home, &vm.name, json),
        Cmd::Run(a) => container::run(&home, a),
        Cmd::Ps { vm, all, json } => container::ps(&home, &vm.name, all, json),
        Cmd::Logs { vm, follow, container } => container::logs(&home, &vm.name, &container, follow),
        Cmd::Stop { targets, time } => {
            targets.each(&home, "container.stop", serde_json::json!({ "timeout_secs": time }))
        }
        Cmd::Start(targets) => targets.each(&home, "container.start", serde_json::json!({})),
        Cmd::Rm { targets, force } => {
            targets.each(&home, "container.rm", serde_json::json!({ "force": force }))
        }
        Cmd::Commit { vm, container, image } => {
            container::commit(&home, &vm.name, &container, &image)
        }
        Cmd::Exec { vm, container, cmd } => container::exec(&home, &vm.name, &container, &cmd),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    #[test]
    fn vm_run_takes_port_forwards() {
        assert_eq!(super::vm::parse_vm_port("18080:8080").unwrap(), (18080, 8080));
        for bad in ["8080", "0:80", "a:80", "80:70000"] {
            let e = super::vm::parse_vm_port(bad).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("HOSTPORT:GUESTPORT"), "{e}");
        }
        assert!(super::Cli::try_parse_from(["lamina", "vm", "run", "--vm-port", "1:2"]).is_ok());
        let Err(e) = super::Cli::try_parse_from(["lamina", "vm", "run", "--vm-port", "x"]) else {
            panic!("--vm-port x accepted");
        };
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("invalid --vm-port \"x\""), "{e}");
    }

    #[test]
    fn run_takes_docker_network_flags() {
        let cli = super::Cli::try_parse_from([
            "lamina",
            "run",
            "-d",
            "-p",
            "8080:80",
            "-p",
            "53:53/udp",
            "--network",
            "appnet",
            "busybox",
            "httpd",
            "-f",
        ])
        .unwrap();
        let super::Cmd::Run(a) = cli.cmd else { panic!("not run") };
        let spec = super::container::spec_of(&a, "web".into()).unwrap();
        assert_eq!(spec["ports"], serde_json::json!(["8080:80", "53:53/udp"]));
        assert_eq!(spec["network"], "appnet");
        assert_eq!(spec["cmd"], serde_json::json!(["httpd", "-f"]));
        let cli = super::Cli::try_parse_from(["lamina", "run", "-p", "80", "busybox"]).unwrap();
        let super::Cmd::Run(a) = cli.cmd else { panic!("not run") };
        let e = super::container::spec_of(&a, "x".into()).unwrap_err().to_string();
        assert!(e.contains("\"80\"") && e.contains("HOSTPORT:PORT"), "{e}");
    }

    #[test]
    fn cli_is_well_formed() {
        super::Cli::command().debug_assert();
    }

    #[test]
    fn every_container_verb_takes_vm() {
        let cli = super::Cli::command();
        for verb in ["run", "ps", "logs", "stop", "start", "rm", "commit", "exec", "info"] {
            let c = cli.find_subcommand(verb).unwrap();
            assert!(c.get_arguments().any(|a| a.get_long() == Some("vm")), "{verb}");
        }
        let volume = cli.find_subcommand("volume").unwrap();
        for verb in ["create", "ls", "rm", "backup", "restore", "snapshot", "send", "receive"] {
            let c = volume.find_subcommand(verb).unwrap();
            assert!(c.get_arguments().any(|a| a.get_long() == Some("vm")), "volume {verb}");
        }
        let image = cli.find_subcommand("image").unwrap();
        for verb in ["load", "ls", "rm", "save"] {
            let c = image.find_subcommand(verb).unwrap();
            assert!(c.get_arguments().any(|a| a.get_long() == Some("vm")), "image {verb}");
        }
        let network = cli.find_subcommand("network").unwrap();
        for verb in ["create", "ls", "rm", "inspect"] {
            let c = network.find_subcommand(verb).unwrap();
            assert!(c.get_arguments().any(|a| a.get_long() == Some("vm")), "network {verb}");
        }
    }
}
