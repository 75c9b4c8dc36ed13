//! VM tier: the appliance as a user drives it, only through the `lamina` binary and only in
//! production boots (no lamina.debug).
//!
//! One VM, three boots on the same disk:
//! 1. first boot with `--opt dm.thinp_autoextend_threshold=60` and a config disk
//!    (`--config`, daemon.json-shaped, `dm.min_free_space=5%`): both show in the pool's
//!    status; a volume is made; `vm ls`, `vm ctl help` and errors of the `vm` verbs;
//! 2. a boot that changes `dm.thinp_percent` is refused with Docker's message, and the pool's
//!    disk is byte-for-byte what it was;
//! 3. a boot with the first options again comes up with the volume and the images still
//!    there, and Debian's thin_check passes on the metadata.
//!
//! Images (first boot): a busybox image built with umoci from Debian's busybox-static is
//! loaded as a gzip-compressed OCI layout tar; a load killed half-way leaves `image ls` as it
//! was; the same image as a zstd-compressed docker-archive (skopeo) loads from stdin after
//! it; `image save` writes a docker-archive; `image rm` names an unknown image.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tests::cli::{status_data_used, Lamina};
use tests::dmthin::sha256_file;
use tests::host_run;
use tests::wait::until;

/// busybox (Debian's busybox-static) in a one-layer OCI image built with umoci, tagged `bb`;
/// returns (OCI layout tar gzip-compressed, docker-archive tar zstd-compressed); the
/// uncompressed docker-archive stays beside them as `bb.docker.tar`.
fn busybox_archives(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let applets = ["sh", "cat", "sleep", "hostname", "httpd", "wget", "nslookup", "ping"];
    let oci = tests::busybox_oci(dir, &applets)?;
    let img = dir.join("img");
    let docker = dir.join("bb.docker.tar");
    host_run(Command::new("skopeo").args([
        "copy",
        &format!("oci:{}:bb", img.display()),
        &format!("docker-archive:{}:bb2:latest", docker.display()),
    ]))
    .context("skopeo (Debian package skopeo)")?;
    host_run(Command::new("zstd").arg("-q").arg("-k").arg(&docker)).context("zstd")?;
    Ok((oci, dir.join("bb.docker.tar.zst")))
}

/// The tags `image ls --json` shows.
fn tags(l: &Lamina, vm: &str) -> Result<Vec<String>> {
    let v = l.json(&["image", "ls", "--vm", vm, "--json"])?;
    let mut t: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["tags"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    t.sort();
    Ok(t)
}

/// Starts `lamina image load`, feeds it half of `archive` and kills it; waits until the
/// guest has dropped the transfer.
fn interrupted_load(l: &Lamina, vm: &str, archive: &Path) -> Result<()> {
    let bytes = std::fs::read(archive)?;
    // Half of it, less a pipe's worth (64 KiB), must be more than a socket's buffer so that
    // the guest is mid-transfer when the client dies.
    ensure!(bytes.len() / 2 > 512 << 10, "archive too small to cut: {} bytes", bytes.len());
    l.killed_mid_stream(vm, &["image", "load", "--vm", vm, "-q"], &bytes, "image load interrupted")
}

/// Named volumes (backup/restore round trip, in-use refusal), `system df` and `info`.
fn volumes_and_info(l: &Lamina, vm: &str) -> Result<()> {
    l.ok(&["volume", "create", "--vm", vm, "v2"])?;
    l.ok(&[
        "run",
        "--vm",
        vm,
        "--rm",
        "-v",
        "v2:/d",
        "bb",
        "sh",
        "-c",
        "echo one > /d/a; mkdir /d/sub; echo two > /d/sub/b",
    ])?;
    let ls = l.json(&["volume", "ls", "--vm", vm, "--json"])?;
    let names: Vec<&str> =
        ls.as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["data", "v2"], "{ls}");
    let backup = l.home.join("v2.tar");
    l.ok(&["volume", "backup", "--vm", vm, "v2", "-o", &backup.display().to_string()])?;
    let listing = host_run(Command::new("tar").arg("-tvf").arg(&backup))?;
    assert!(listing.contains("sub/b"), "{listing}");
    l.ok(&["volume", "rm", "--vm", vm, "v2"])?;
    let e = l.fails(&["volume", "rm", "--vm", vm, "v2"])?;
    assert!(e.contains("v2"), "{e}");
    l.ok(&["volume", "restore", "--vm", vm, "v2", "-i", &backup.display().to_string()])?;
    let out =
        l.ok(&["run", "--vm", vm, "--rm", "-v", "v2:/d", "bb", "sh", "-c", "cat /d/a /d/sub/b"])?;
    assert_eq!(out, "one\ntwo\n", "backup/restore round trip");
    // A volume a container uses is refused, naming the container.
    l.run_detached(vm, "holder", &["-v", "v2:/d", "bb", "sleep", "600"])?;
    let e = l.fails(&["volume", "rm", "--vm", vm, "v2"])?;
    assert!(e.contains("volume is in use") && e.contains("holder"), "{e}");
    l.ok(&["rm", "--vm", vm, "-f", "holder"])?;
    l.ok(&["volume", "rm", "--vm", vm, "v2"])?;

    let df = l.ok(&["system", "df", "--vm", vm])?;
    assert!(
        df.starts_with("TYPE") && df.contains("Images") && df.contains("Local Volumes"),
        "{df}"
    );
    let info = l.ok(&["info", "--vm", vm])?;
    assert!(info.contains("Storage Driver: overlay2"), "{info}");
    assert!(info.contains("dm.thinp_autoextend_threshold: 60"), "{info}");
    assert!(info.contains("Data Space Used:"), "{info}");
    let j = l.json(&["info", "--vm", vm, "--json"])?;
    assert_eq!(j["Thin Pool Options"]["dm.thinp_autoextend_threshold"], 60, "{j}");
    assert_eq!(j["Images"], 2, "{j}");
    Ok(())
}

/// Waits (deadline 60 s) until `ok` holds for the container's `ps` entry.
fn wait_ps(
    l: &Lamina,
    vm: &str,
    name: &str,
    what: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    until(Duration::from_secs(60), Duration::from_millis(250), || {
        let c = l.ps(vm, name)?;
        Ok(if ok(&c) {
            ControlFlow::Break(c)
        } else {
            ControlFlow::Continue(format!("{name}: never {what}: {c}"))
        })
    })
}

/// Containers as services, on the `bb` image (first boot).
fn containers(l: &Lamina, vm: &str) -> Result<()> {
    // Unknown names are named.
    let e = l.fails(&["logs", "--vm", vm, "ghost"])?;
    assert!(e.contains("no such container: ghost"), "{e}");
    let e = l.fails(&["run", "--vm", vm, "-d", "ghost:1"])?;
    assert!(e.contains("ghost:1"), "{e}");
    let e = l.fails(&["run", "--vm", vm, "--restart", "sometimes", "bb"])?;
    assert!(e.contains("invalid restart policy"), "{e}");

    // A volume keeps its data across the container's rm (and, below, a reboot).
    let out = l.ok(&[
        "run",
        "--vm",
        vm,
        "--name",
        "w",
        "-v",
        "data:/data",
        "bb",
        "sh",
        "-c",
        "echo persisted > /data/f",
    ])?;
    assert_eq!(out, "");
    l.ok(&["rm", "--vm", vm, "w"])?;
    let out = l.ok(&["run", "--vm", vm, "--rm", "-v", "data:/data:ro", "bb", "cat", "/data/f"])?;
    assert_eq!(out, "persisted\n");
    // A foreground run exits with the container's code.
    let out = l.run(&["run", "--vm", vm, "--rm", "bb", "sh", "-c", "echo out; exit 7"], None)?;
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");

    // logs -f follows until the container exits.
    l.run_detached(
        vm,
        "ticker",
        &["bb", "sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 1; done"],
    )?;
    let out = l.ok(&["logs", "--vm", vm, "-f", "ticker"])?;
    assert_eq!(out, "tick 1\ntick 2\ntick 3\n");
    assert_eq!(l.ps(vm, "ticker")?["state"]["exit_code"], 0);

    // --restart on-failure brings a crashing container back.
    l.run_detached(
        vm,
        "crash",
        &["--restart", "on-failure", "bb", "sh", "-c", "echo up; sleep 1; exit 3"],
    )?;
    let c =
        wait_ps(l, vm, "crash", "restarted twice", |c| c["state"]["restarts"].as_u64() >= Some(2))?;
    assert_eq!(c["restart"], "on-failure", "{c}");
    l.ok(&["stop", "--vm", vm, "-t", "1", "crash"])?;
    let c = l.ps(vm, "crash")?;
    assert_eq!(c["state"]["status"], "exited", "stop ends the restarts: {c}");
    let e = l.fails(&["rm", "--vm", vm, "ticker", "ghost2"])?;
    assert!(e.contains("no such container: ghost2"), "{e}");

    // A memory hog is OOM-killed; its neighbour keeps running, and so does the appliance.
    l.run_detached(vm, "nb", &["bb", "sh", "-c", "while true; do sleep 1; done"])?;
    l.run_detached(
        vm,
        "hog",
        &["--memory", "24m", "bb", "sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"],
    )?;
    let hog = wait_ps(l, vm, "hog", "OOM-killed", |c| c["state"]["status"] == "exited")?;
    assert_eq!(hog["state"]["oom_killed"], true, "{hog}");
    assert_eq!(hog["state"]["exit_code"], 137, "{hog}");
    let table = l.ok(&["ps", "--vm", vm, "-a"])?;
    assert!(
        table.lines().any(|r| r.starts_with("hog ") && r.contains("Exited (137) OOMKilled")),
        "{table}"
    );
    assert_eq!(l.ps(vm, "nb")?["state"]["status"], "running");
    let running = l.ok(&["ps", "--vm", vm])?;
    assert!(running.lines().any(|r| r.starts_with("nb ") && r.contains("Up")), "{running}");
    assert!(!running.contains("hog"), "ps without -a lists running ones only: {running}");
    let st = l.json(&["vm", "ctl", vm, "status"])?;
    assert_eq!(st["ready"], true, "the appliance after the OOM kill: {st}");

    // exec runs inside the container (a production boot); commit makes an image of it.
    let out = l.ok(&[
        "exec",
        "--vm",
        vm,
        "nb",
        "sh",
        "-c",
        "echo inside $(hostname) > /mark; cat /mark",
    ])?;
    assert_eq!(out, "inside nb\n");
    l.ok(&["commit", "--vm", vm, "nb", "bb:committed"])?;
    let e = l.fails(&["rm", "--vm", vm, "nb"])?;
    assert!(e.contains("container is running"), "{e}");
    // `rm ticker ghost2` above removed ticker and named ghost2.
    l.ok(&["rm", "--vm", vm, "-f", "nb", "hog", "crash"])?;
    assert_eq!(l.json(&["ps", "--vm", vm, "-a", "--json"])?, serde_json::json!([]));
    let out = l.ok(&["run", "--vm", vm, "--rm", "bb:committed", "cat", "/mark"])?;
    assert_eq!(out, "inside nb\n");
    Ok(())
}

#[test]
fn vm_product_options_are_applied_and_a_changed_setup_is_refused() -> Result<()> {
    let l = Lamina::new("vm_product_options", Duration::from_secs(600))?;
    let disk = l.home.join("pool.raw");
    let disk_arg = format!("{},size=2G", disk.display());
    let cfg = l.home.join("daemon.json");
    std::fs::write(
        &cfg,
        r#"{"storage-driver": "overlay2", "storage-opts": ["dm.min_free_space=5%"]}"#,
    )?;
    let cfg_s = cfg.display().to_string();
    let first = [
        "vm",
        "run",
        "--name",
        "p",
        "--detach",
        "--nbd-port",
        "0",
        "--disk",
        &disk_arg,
        "--config",
        &cfg_s,
        "--opt",
        "dm.thinp_autoextend_threshold=60",
    ];

    // Bad input is refused before anything boots, naming what is wrong.
    let e = l.fails(&["vm", "run", "--name", "p", "--opt", "dm.thinp_percent"])?;
    assert!(e.contains("--opt dm.thinp_percent: expected KEY=VALUE"), "{e}");
    let e = l.fails(&["vm", "ctl", "nope", "status"])?;
    assert!(e.contains("is VM") && e.contains("nope"), "{e}");

    // 1. First boot.
    l.ok(&first)?;
    let st = l.json(&["vm", "ctl", "p", "status"])?;
    let used_first_boot = status_data_used(&st)?;
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(st["debug"], false, "production boot expected: {st}");
    let opts = &st["pool"]["pool"]["options"];
    assert_eq!(opts["autoextend_threshold"], 60, "{st}");
    assert_eq!(opts["min_free_space"], 5, "config disk option lost: {st}");
    assert_eq!(opts["thinp_percent"], 95, "{st}");
    assert_eq!(
        st["pool"]["pool"]["devicemapper"]["Thin Pool Minimum Free Space"]
            .as_str()
            .map(|s| !s.is_empty()),
        Some(true),
        "{st}"
    );
    // The config disk is not taken into the pool.
    let volumes = st["pool"]["volumes"].as_array().cloned().unwrap_or_default();
    assert_eq!(volumes.len(), 1, "{st}");
    l.json(&["vm", "ctl", "p", "volume.create", r#"{"name":"keep","size":1048576}"#])?;
    let help = l.ok(&["vm", "ctl", "p", "help"])?;
    assert!(help.starts_with("VERB"), "{help}");
    for verb in ["status", "shutdown", "volume.create", "pool.extend", "help"] {
        assert!(help.lines().any(|r| r.starts_with(verb)), "{verb} missing:\n{help}");
    }
    let e = l.fails(&["vm", "ctl", "p", "frobnicate"])?;
    assert!(e.contains("unknown command") && e.contains("frobnicate"), "{e}");
    // Images.
    let (oci_gz, docker_zst) = busybox_archives(&l.home)?;
    assert_eq!(tags(&l, "p")?, Vec::<String>::new());
    let e = l.fails(&["image", "ls", "--vm", "nope"])?;
    assert!(e.contains("VM nope is not running"), "{e}");
    let out = l.ok(&["image", "load", "--vm", "p", "-q", "-i", &oci_gz.display().to_string()])?;
    assert!(out.starts_with("LOADED IMAGE") && out.contains("bb:latest"), "{out}");
    interrupted_load(&l, "p", &l.home.join("bb.docker.tar"))?;
    assert_eq!(tags(&l, "p")?, ["bb:latest"], "an interrupted load changed image ls");
    let out = l.run(&["image", "load", "--vm", "p", "--json"], Some(&docker_zst))?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let loaded: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    // The same image: its second tag, as docker-archive names it.
    assert!(
        loaded[0]["tags"]
            .as_array()
            .is_some_and(|t| t.contains(&"docker.io/library/bb2:latest".into())),
        "{loaded}"
    );
    assert_eq!(tags(&l, "p")?, ["bb:latest", "docker.io/library/bb2:latest"]);
    let table = l.ok(&["image", "ls", "--vm", "p"])?;
    assert!(table.starts_with("REPOSITORY"), "{table}");
    assert!(table.lines().any(|r| r.starts_with("bb ") && r.contains("latest")), "{table}");
    assert!(
        table.lines().any(|r| r.starts_with("bb2 ")),
        "docker.io/library/ is not shown: {table}"
    );
    let saved = l.home.join("saved.tar");
    l.ok(&["image", "save", "--vm", "p", "bb", "-o", &saved.display().to_string()])?;
    let listing = host_run(Command::new("tar").arg("-tf").arg(&saved))?;
    assert!(listing.lines().any(|f| f == "manifest.json"), "{listing}");
    let e = l.fails(&["image", "rm", "--vm", "p", "ghost:1"])?;
    assert!(e.contains("ghost:1"), "{e}");
    let ghost = l.home.join("ghost.tar");
    let e =
        l.fails(&["image", "save", "--vm", "p", "ghost:1", "-o", &ghost.display().to_string()])?;
    assert!(e.contains("ghost:1"), "{e}");
    assert!(!ghost.exists(), "a failed save leaves its output behind");
    l.ok(&["image", "rm", "--vm", "p", "bb2"])?;
    assert_eq!(tags(&l, "p")?, ["bb:latest"]);

    containers(&l, "p")?;
    volumes_and_info(&l, "p")?;
    // A service left running: shutdown stops it before XFS goes; `always` brings it back.
    l.run_detached("p", "svc", &["--restart", "always", "bb", "sleep", "3600"])?;

    let ls = l.json(&["vm", "ls", "--json"])?;
    assert_eq!(ls[0]["name"], "p");
    assert_eq!(ls[0]["state"], "running", "{ls}");
    let table = l.ok(&["vm", "ls"])?;
    assert!(
        table.lines().nth(1).is_some_and(|r| r.starts_with("p ") && r.contains("running")),
        "{table}"
    );
    // svc (sleep as PID 1 ignores SIGTERM) takes the grace period to go.
    l.ok(&["vm", "stop", "p", "--timeout", "60"])?;
    assert_eq!(l.json(&["vm", "ls", "--json"])?[0]["state"], "stopped");
    let console = l.console("p");
    let stopped = console.find("container svc stopped").context("svc was not stopped")?;
    let unmounted = console.find("/var/lib/lamina unmounted").context("XFS not unmounted")?;
    assert!(stopped < unmounted, "containers stop before XFS is unmounted:\n{console}");

    // 2. A changed direct-lvm setting: refused with Docker's message, nothing written.
    let before = sha256_file(&disk)?;
    let mut changed = first.to_vec();
    changed.extend(["--opt", "dm.thinp_percent=90"]);
    let e = l.fails(&changed)?;
    assert!(e.contains("degraded"), "{e}");
    assert!(e.contains("changing direct-lvm config is not supported"), "{e}");
    assert!(!l.console("p").contains("LAMINA READY"));
    let st = l.json(&["vm", "ctl", "p", "status"])?;
    assert_eq!(st["ready"], false, "{st}");
    assert_eq!(st["pool"], serde_json::Value::Null, "the pool must not be up: {st}");
    l.ok(&["vm", "stop", "p"])?;
    assert_eq!(sha256_file(&disk)?, before, "the refused boot wrote to the pool's disk");

    // 3. The original options again: the volume is there, the metadata checks clean.
    l.ok(&first)?;
    let st = l.json(&["vm", "ctl", "p", "status"])?;
    let names: Vec<&str> = st["pool"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(names.contains(&"keep") && names.contains(&"store"), "{st}");
    assert_eq!(st["pool"]["pool"]["options"]["autoextend_threshold"], 60, "{st}");
    assert_eq!(tags(&l, "p")?, ["bb:committed", "bb:latest"], "images must survive reboots");
    let svc =
        wait_ps(&l, "p", "svc", "running after the reboot", |c| c["state"]["status"] == "running")?;
    assert_eq!(svc["restart"], "always", "{svc}");
    l.ok(&["rm", "--vm", "p", "-f", "svc"])?;
    let out = l.ok(&["run", "--vm", "p", "--rm", "-v", "data:/data", "bb", "cat", "/data/f"])?;
    assert_eq!(out, "persisted\n", "the volume lost its data across the reboot");
    // prune -a --volumes, ending with fstrim, gives the pool its blocks back.
    let before = status_data_used(&l.json(&["vm", "ctl", "p", "status"])?)?;
    let out = l.ok(&["system", "prune", "--vm", "p", "-a", "--volumes"])?;
    assert!(out.contains("Deleted image: sha256:"), "{out}");
    assert!(out.contains("Deleted volume: data"), "{out}");
    assert!(out.contains("trimmed"), "fstrim's report: {out}");
    assert_eq!(tags(&l, "p")?, Vec::<String>::new());
    let after = status_data_used(&l.json(&["vm", "ctl", "p", "status"])?)?;
    eprintln!(
        "[vm_product] Data Space Used: first boot {used_first_boot}, before prune {before}, \
         after prune {after}"
    );
    assert!(after < before, "prune freed nothing: {before} -> {after}");
    assert!(
        after <= used_first_boot + (16 << 20),
        "Data Space Used {after} not back near the first boot's {used_first_boot}"
    );
    l.ok(&["vm", "stop", "p"])?;
    let report = tests::check_pool_disk(&disk)?;
    assert!(report.contains("thin_check"), "{report}");
    Ok(())
}
