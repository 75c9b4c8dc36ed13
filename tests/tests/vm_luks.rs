//! VM tier: encryption at rest, driven through the `lamina` binary in production boots.
//!
//! 1. `lamina vm run --encrypt-key FILE` on a new disk: init formats the store LUKS2 with
//!    Debian's cryptsetup, opens it with the kernel's dm-crypt (discards allowed) and puts
//!    XFS on the mapping; the key disk's file is gone from the host once QEMU has it.
//!    On the host, cryptsetup is the judge through NBD: `luksDump` reads the store's header
//!    (copied out of the export with qemu-img), the key opens it and another does not. An
//!    encrypted volume from `volume.create {"encrypted": true}` is judged the same way.
//!    Discards pass through dm-crypt: a deleted volume's blocks return to the pool after the
//!    prune's fstrim.
//! 2. Without the key, then with a wrong one: the boot stops (`LAMINA DEGRADED`, naming the
//!    cause) and the pool's disk is byte for byte what it was.
//! 3. Reboot waiting for the passphrase through the agent (`--unlock-wait`): `status` says
//!    what the boot waits for, a wrong passphrase is reported and another awaited, the key
//!    (given as the passphrase) opens the store and the data is intact.

use std::ops::ControlFlow;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tests::cli::{lamina_bin, status_data_used, Lamina};
use tests::dmthin::sha256_file;
use tests::host_run;
use tests::wait::until;

fn random_file(p: &Path, len: usize, seed: u64) -> Result<()> {
    let mut x = seed | 1;
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            // xorshift64: incompressible enough that XFS and the pool store every byte.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(p, bytes)?;
    Ok(())
}

/// The first 16 MiB of an export (the LUKS2 header by cryptsetup's defaults), via qemu-img.
fn header_over_nbd(port: u16, export: &str, out: &Path) -> Result<()> {
    host_run(Command::new("qemu-img").args([
        "dd",
        "-f",
        "raw",
        "-O",
        "raw",
        &format!("if=nbd://127.0.0.1:{port}/{export}"),
        &format!("of={}", out.display()),
        "bs=1M",
        "count=16",
    ]))?;
    Ok(())
}

/// cryptsetup's verdict on a header: its luksDump; `key` must open it, `wrong` must not.
fn judge(hdr: &Path, key: &Path, wrong: &Path) -> Result<String> {
    let dump = host_run(Command::new("cryptsetup").arg("luksDump").arg(hdr))?;
    ensure!(dump.contains("Version:       \t2"), "not LUKS2: {dump}");
    host_run(
        Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(key)
            .arg(hdr),
    )
    .context("the key must open the header")?;
    let bad = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--key-file"])
        .arg(wrong)
        .arg(hdr)
        .output()?;
    ensure!(bad.status.code() == Some(2), "a wrong key must not open it: {bad:?}");
    Ok(dump)
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn vm_luks_store_reboot_refusal_host_judge_volume_and_discards() -> Result<()> {
    let l = Lamina::new("vm_luks", Duration::from_secs(1800))?;
    let work = tempfile::tempdir()?;
    let key = work.path().join("store.key");
    let wrong = work.path().join("wrong.key");
    // Printable keys, so the same bytes also serve as a passphrase through the agent.
    std::fs::write(&key, "a3f1c9e07b5d42d8916e0c7fb2a45d13e8c0f6b29a7d41e5")?;
    std::fs::write(&wrong, "0000111122223333444455556666777788889999aaaabbbb")?;
    for k in [&key, &wrong] {
        std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600))?;
    }
    let (key_s, wrong_s) = (key.display().to_string(), wrong.display().to_string());
    let disk = l.home.join("pool.raw");
    let disk_arg = format!("{},size=2G", disk.display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
    let run = |k: Option<&str>| {
        let mut v = vec!["vm", "run", "--name", "c", "--detach", "--nbd-port", &port];
        v.extend(["--disk", &disk_arg, "--ready-timeout", "400"]);
        if let Some(k) = k {
            v.extend(["--encrypt-key", k]);
        }
        v.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let port_n: u16 = port.parse()?;

    // 0. A key file others can read is refused before anything starts.
    let open_key = work.path().join("open.key");
    std::fs::copy(&key, &open_key)?;
    std::fs::set_permissions(&open_key, std::fs::Permissions::from_mode(0o644))?;
    let e = l.fails(&args(&run(Some(open_key.to_str().unwrap()))))?;
    ensure!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
    ensure!(!disk.exists(), "the refused run must not create the disk");

    // 1. First boot: formatted, opened, XFS on the mapping.
    l.ok(&args(&run(Some(&key_s))))?;
    let console = l.console("c");
    ensure!(console.contains("cryptsetup luksFormat /dev/ublkb0 (LUKS2)"), "{console}");
    ensure!(
        console.contains("opened as /dev/mapper/lamina-store (dm-crypt, discards allowed)"),
        "{console}"
    );
    ensure!(console.contains("mkfs.xfs /dev/mapper/lamina-store"), "{console}");
    ensure!(console.contains("(LUKS2)") && console.contains("LAMINA READY"), "{console}");
    ensure!(!l.home.join("vms/c/key.disk").exists(), "the key disk file must be gone");
    let data = work.path().join("data");
    std::fs::create_dir(&data)?;
    random_file(&data.join("hello.bin"), 1 << 20, 42)?;
    let data_tar = work.path().join("data.tar");
    host_run(Command::new("tar").arg("-cf").arg(&data_tar).arg("-C").arg(&data).arg("."))?;
    l.ok(&["volume", "restore", "--vm", "c", "keep", "-i", data_tar.to_str().unwrap()])?;

    // The host judges the store's header through NBD. The store is the appliance's own, so
    // it is not offered until marked (and then read-only: the guest has it attached).
    let hdr = work.path().join("store.hdr");
    let gone = Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{port_n}/store")).output()?;
    ensure!(!gone.status.success(), "the store must not be offered unmarked");
    l.ok(&["vm", "ctl", "c", "volume.export", r#"{"name":"store","export":true}"#])?;
    header_over_nbd(port_n, "store", &hdr)?;
    l.ok(&["vm", "ctl", "c", "volume.export", r#"{"name":"store","export":false}"#])?;
    let dump = judge(&hdr, &key, &wrong)?;
    ensure!(dump.contains("allow-discards"), "the persistent discard flag: {dump}");

    // volume.create {"encrypted": true}: a LUKS2 volume with the appliance's key.
    let req = r#"{"name":"encvol","size":67108864,"encrypted":true}"#;
    let out = l.ok(&["vm", "ctl", "--timeout", "300", "c", "volume.create", req])?;
    ensure!(out.contains("thin_id"), "{out}");
    let vhdr = work.path().join("encvol.hdr");
    header_over_nbd(port_n, "encvol", &vhdr)?;
    judge(&vhdr, &key, &wrong)?;
    let plain = l.fails(&[
        "vm",
        "ctl",
        "--timeout",
        "300",
        "c",
        "volume.create",
        r#"{"name":"x","size":1048576,"encrypted":true}"#,
    ])?;
    ensure!(plain.contains("too small"), "{plain}");

    // Discards pass through dm-crypt: a deleted volume's blocks go back to the pool.
    let big = work.path().join("big");
    std::fs::create_dir(&big)?;
    random_file(&big.join("big.bin"), 48 << 20, 7)?;
    let big_tar = work.path().join("big.tar");
    host_run(Command::new("tar").arg("-cf").arg(&big_tar).arg("-C").arg(&big).arg("."))?;
    let st = l.json(&["vm", "ctl", "c", "status"])?;
    let before = status_data_used(&st)?;
    let block = st["pool"]["pool"]["block_bytes"].as_u64().context("block_bytes")?;
    l.ok(&["volume", "restore", "--vm", "c", "big", "-i", big_tar.to_str().unwrap()])?;
    let filled = status_data_used(&l.json(&["vm", "ctl", "c", "status"])?)?;
    ensure!((filled - before) * block >= 40 << 20, "48 MiB written: {before} -> {filled} blocks");
    l.ok(&["volume", "rm", "--vm", "c", "big"])?;
    // Not --volumes: that would take `keep` too.
    l.ok(&["system", "prune", "--vm", "c"])?;
    let trimmed = status_data_used(&l.json(&["vm", "ctl", "c", "status"])?)?;
    eprintln!("[vm_luks] pool data blocks: {before} -> {filled} -> {trimmed} after fstrim");
    ensure!(
        (filled - trimmed.min(filled)) * block >= 32 << 20,
        "fstrim through dm-crypt must return the blocks: {before} -> {filled} -> {trimmed}"
    );
    l.ok(&["vm", "stop", "c"])?;

    // 2. Without the key, then with a wrong one: stopped, nothing written.
    let digest = sha256_file(&disk)?;
    for (k, why) in [
        (None, "is encrypted (LUKS2) and no key was given"),
        (Some(wrong_s.as_str()), "cannot open the encrypted store"),
    ] {
        let e = l.fails(&args(&run(k)))?;
        ensure!(e.contains("degraded"), "{e}");
        let console = l.console("c");
        ensure!(console.contains(why), "want {why:?}: {console}");
        ensure!(console.contains("LAMINA DEGRADED") && !console.contains("LAMINA READY"));
        let st = l.json(&["vm", "ctl", "c", "status"])?;
        ensure!(st["ready"] == false && st["pool"].is_null(), "{st}");
        l.ok(&["vm", "stop", "c"])?;
        ensure!(sha256_file(&disk)? == digest, "the refused boot ({why}) wrote to the pool's disk");
    }

    // 3. The passphrase through the agent: a wrong one, then the right one.
    let mut wait_run = run(None);
    wait_run.extend(["--unlock-wait".to_owned(), "300".to_owned()]);
    let bin = lamina_bin()?;
    let home = l.home.clone();
    let booting = std::thread::spawn(move || {
        Command::new(bin).arg("--home").arg(&home).args(&wait_run).output()
    });
    let wait_console = |needle: &str| -> Result<()> {
        until(Duration::from_secs(300), Duration::from_millis(200), || {
            let console = l.console("c");
            Ok(if console.contains(needle) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("no {needle:?} on the console: {console}"))
            })
        })
    };
    wait_console("waiting up to 300 s for its passphrase")?;
    let st = l.json(&["vm", "ctl", "c", "status"])?;
    ensure!(st["ready"] == false, "{st}");
    ensure!(st["summary"].as_str().is_some_and(|s| s.contains("waiting up to")), "{st}");
    let out = l.run(&["vm", "unlock", "c"], Some(&wrong))?;
    ensure!(out.status.success(), "unlock: {out:?}");
    wait_console("the passphrase does not open the store; waiting for another")?;
    let out = l.run(&["vm", "unlock", "c"], Some(&key))?;
    ensure!(out.status.success(), "unlock: {out:?}");
    let booted = booting.join().map_err(|_| anyhow::anyhow!("the run thread panicked"))??;
    ensure!(booted.status.success(), "vm run --unlock-wait: {booted:?}");
    let console = l.console("c");
    ensure!(!console.contains("luksFormat"), "formatted again: {console}");
    ensure!(console.contains("opened as /dev/mapper/lamina-store"), "{console}");
    // A boot that does not wait refuses a passphrase.
    let out = l.run(&["vm", "unlock", "c"], Some(&key))?;
    ensure!(!out.status.success(), "unlock after the boot must fail");
    ensure!(String::from_utf8_lossy(&out.stderr).contains("not waiting for a passphrase"));
    // The data is intact.
    let back = work.path().join("back.tar");
    l.ok(&["volume", "backup", "--vm", "c", "keep", "-o", back.to_str().unwrap()])?;
    let out = work.path().join("out");
    std::fs::create_dir(&out)?;
    host_run(Command::new("tar").arg("-xf").arg(&back).arg("-C").arg(&out))?;
    ensure!(
        std::fs::read(out.join("hello.bin"))? == std::fs::read(data.join("hello.bin"))?,
        "data changed across the reboot"
    );
    l.ok(&["vm", "stop", "c"])?;

    Ok(())
}
