//! Docker's container verbs at the top level: `run`, `ps`, `logs`, `stop`, `start`, `rm`,
//! `commit`, `exec`. Each goes to the guest agent's `container.*` verbs.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::image::{call, VmArg};
use crate::out::{cell, cells, print_rows};

#[derive(clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    vm: VmArg,
    /// The container's name (default: the image's name and a number).
    #[arg(long)]
    name: Option<String>,
    /// Run in the background and print the container's name.
    #[arg(short, long)]
    detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    rm: bool,
    /// KEY=VALUE, repeatable.
    #[arg(short, long = "env")]
    env: Vec<String>,
    /// VOLUME:/path[:ro], repeatable; missing named volumes are created.
    #[arg(short, long = "volume")]
    volume: Vec<String>,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short, long)]
    memory: Option<String>,
    /// CPUs (e.g. 0.5).
    #[arg(long)]
    cpus: Option<f64>,
    /// Size limit of the container's writable layer (XFS project quota).
    #[arg(long)]
    size: Option<String>,
    /// no, on-failure or always.
    #[arg(long, default_value = "no")]
    restart: String,
    /// HOSTPORT:PORT[/tcp|/udp], repeatable: published on the guest's addresses (forward
    /// it to this machine with `lamina vm run --vm-port`).
    #[arg(short = 'p', long = "publish")]
    publish: Vec<String>,
    /// The network to join (default: bridge; none: no network).
    #[arg(long)]
    network: Option<String>,
    /// The image.
    image: String,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

fn size(what: &str, s: &str) -> Result<u64> {
    units::parse_size(s).map_err(|e| anyhow::anyhow!("invalid {what} {s:?}: {e}"))
}

fn status_text(st: &Value) -> String {
    match st["status"].as_str().unwrap_or("") {
        "running" => "Up".into(),
        "restarting" => "Restarting".into(),
        "exited" => format!(
            "Exited ({}){}",
            cell(&st["exit_code"]),
            if st["oom_killed"] == true { " OOMKilled" } else { "" }
        ),
        other => other.into(),
    }
}

/// The container's state, or an error naming it.
fn state(home: &Path, vm: &str, name: &str) -> Result<Value> {
    let all = call(home, vm, "container.ls", Some(json!({"all": true})))?;
    all.as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .map(|c| c["state"].clone())
        .with_context(|| format!("no such container: {name}"))
}

/// Prints a container's log from `offset`; with `follow`, until it stops running (or, run
/// with `--rm`, is gone). Returns the last exit code seen.
fn follow_logs(home: &Path, vm: &str, name: &str, follow: bool) -> Result<Option<i64>> {
    let mut offset = 0u64;
    let mut code = None;
    loop {
        let args = Some(json!({"name": name, "offset": offset}));
        let v = match call(home, vm, "container.logs", args) {
            Ok(v) => v,
            // Removed (`--rm`) after we saw it: its exit code came with the last reply.
            Err(_) if code.is_some() => return Ok(code),
            Err(e) => return Err(e),
        };
        code = v["exit_code"].as_i64().or(code);
        let text = v["text"].as_str().unwrap_or("");
        print!("{text}");
        std::io::stdout().flush()?;
        offset = v["offset"].as_u64().unwrap_or(offset);
        if !follow || (v["running"] != true && text.is_empty()) {
            return Ok(code);
        }
        if text.is_empty() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

pub fn run(home: &Path, a: RunArgs) -> Result<()> {
    let name = match a.name.clone() {
        Some(n) => n,
        None => {
            let base: String = a
                .image
                .rsplit('/')
                .next()
                .unwrap_or("c")
                .split(':')
                .next()
                .unwrap_or("c")
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() % 100_000)
                .unwrap_or(0);
            format!("{base}-{t}")
        }
    };
    let spec = spec_of(&a, name.clone())?;
    call(home, &a.vm.name, "container.run", Some(json!({ "spec": spec })))?;
    if a.detach {
        println!("{name}");
        return Ok(());
    }
    let seen = follow_logs(home, &a.vm.name, &name, true)?;
    // Docker's `run` exits with the container's exit code.
    let code = match state(home, &a.vm.name, &name) {
        Ok(st) => st["exit_code"].as_i64().unwrap_or(0),
        Err(_) => seen.unwrap_or(0), // --rm removed it
    };
    if code != 0 {
        std::process::exit(code.clamp(1, 255) as i32);
    }
    Ok(())
}

/// `-p` as Docker writes it: HOSTPORT:PORT[/tcp|/udp] (no host address, no ranges).
fn check_publish(p: &str) -> Result<()> {
    let (ports, proto) = p.split_once('/').unwrap_or((p, "tcp"));
    let ok = matches!(proto, "tcp" | "udp")
        && ports
            .split_once(':')
            .is_some_and(|(h, c)| [h, c].iter().all(|x| x.parse::<u16>().is_ok_and(|n| n > 0)));
    if !ok {
        bail!("invalid port mapping {p:?} (want HOSTPORT:PORT[/tcp|/udp], ports 1-65535)");
    }
    Ok(())
}

/// The agent's `RunSpec` for `run`'s flags.
pub fn spec_of(a: &RunArgs, name: String) -> Result<Value> {
    let restart = match a.restart.as_str() {
        "no" | "on-failure" | "always" => a.restart.clone(),
        other => bail!("invalid restart policy {other:?} (no, on-failure, always)"),
    };
    for p in &a.publish {
        check_publish(p)?;
    }
    Ok(json!({
        "name": name,
        "image": a.image,
        "cmd": a.cmd,
        "env": a.env,
        "volumes": a.volume,
        "memory": a.memory.as_deref().map(|m| size("memory", m)).transpose()?,
        "nano_cpus": a.cpus.map(|c| (c * 1e9) as u64),
        "size": a.size.as_deref().map(|s| size("size", s)).transpose()?,
        "restart": restart,
        "rm": a.rm,
        "network": a.network,
        "ports": a.publish,
    }))
}

pub fn ps(home: &Path, vm: &str, all: bool, json: bool) -> Result<()> {
    let v = call(home, vm, "container.ls", Some(json!({ "all": all })))?;
    print_rows(json, &v, &["NAME", "IMAGE", "COMMAND", "STATUS", "RESTARTS"], |c| {
        vec![
            cell(&c["name"]),
            cell(&c["image"]),
            format!("\"{}\"", cells(&c["command"]).join(" ")),
            status_text(&c["state"]),
            cell(&c["state"]["restarts"]),
        ]
    })
}

pub fn logs(home: &Path, vm: &str, name: &str, follow: bool) -> Result<()> {
    follow_logs(home, vm, name, follow).map(drop)
}

/// The containers a bulk verb (`stop`, `start`, `rm`) acts on.
#[derive(clap::Args)]
pub struct Targets {
    #[command(flatten)]
    vm: VmArg,
    #[arg(required = true)]
    containers: Vec<String>,
}

impl Targets {
    /// Calls `verb` for each container (see [`each`]).
    pub fn each(&self, home: &Path, verb: &str, extra: Value) -> Result<()> {
        each(home, &self.vm.name, verb, &self.containers, extra)
    }
}

/// Runs one verb per name; every failure is reported, the exit is non-zero if any failed.
pub fn each(home: &Path, vm: &str, verb: &str, names: &[String], extra: Value) -> Result<()> {
    let mut failed = Vec::new();
    for n in names {
        let mut args = extra.clone();
        args["name"] = json!(n);
        match call(home, vm, verb, Some(args)) {
            Ok(_) => println!("{n}"),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("\n"));
    }
    Ok(())
}

pub fn commit(home: &Path, vm: &str, name: &str, image: &str) -> Result<()> {
    let v = call(home, vm, "container.commit", Some(json!({"name": name, "image": image})))?;
    println!("{}", cell(&v["id"]));
    Ok(())
}

pub fn exec(home: &Path, vm: &str, name: &str, argv: &[String]) -> Result<()> {
    let v = call(home, vm, "container.exec", Some(json!({"name": name, "argv": argv})))?;
    print!("{}", v["stdout"].as_str().unwrap_or(""));
    eprint!("{}", v["stderr"].as_str().unwrap_or(""));
    let code = v["exit_code"].as_i64().unwrap_or(126);
    if code != 0 {
        std::process::exit(code.clamp(1, 255) as i32);
    }
    Ok(())
}
