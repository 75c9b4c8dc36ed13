//! VM tier: the appliance as a user drives it, only through the `lamina` binary and only in
//! production boots (no lamina.debug).
//!
//! One VM, three boots on the same disk:
//! 1. first boot with `--opt dm.thinp_autoextend_threshold=60` and a config disk
//!    (`--config`, daemon.json-shaped, `dm.min_free_space=5%`): both show in the pool's
//!    status; a volume is made; `vm ls`, `vm ctl help` and errors of the `vm` verbs;
//! 2. a boot that changes `dm.thinp_percent` is refused with Docker's message, and the pool's
//!    disk is byte-for-byte what it was;
//! 3. a boot with the first options again comes up with the volume still there, and Debian's
//!    thin_check passes on the metadata.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use sha2::{Digest, Sha256};
use tests::cli::Lamina;

fn sha256(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
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
    let ls = l.json(&["vm", "ls", "--json"])?;
    assert_eq!(ls[0]["name"], "p");
    assert_eq!(ls[0]["state"], "running", "{ls}");
    let table = l.ok(&["vm", "ls"])?;
    assert!(
        table.lines().nth(1).is_some_and(|r| r.starts_with("p ") && r.contains("running")),
        "{table}"
    );
    l.ok(&["vm", "stop", "p"])?;
    assert_eq!(l.json(&["vm", "ls", "--json"])?[0]["state"], "stopped");

    // 2. A changed direct-lvm setting: refused with Docker's message, nothing written.
    let before = sha256(&disk)?;
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
    assert_eq!(sha256(&disk)?, before, "the refused boot wrote to the pool's disk");

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
    l.ok(&["vm", "stop", "p"])?;
    let report = tests::check_pool_disk(&disk)?;
    assert!(report.contains("thin_check"), "{report}");
    Ok(())
}
