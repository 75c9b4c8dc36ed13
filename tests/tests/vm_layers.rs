//! VM tier: the layer store inside the appliance, on the pool's XFS (`prjquota`) at
//! /var/lib/lamina, once with the store attached over ublk (the default) and once over the
//! kernel's nbd client (`lamina.attach=nbd`).
//!
//! An OCI image built on the host with umoci from real files (Debian's busybox-static) rides
//! into the guest as a raw tar on a second, read-only virtio disk, which the pool leaves alone because
//! it is booted with `lamina.pool.devices=/dev/vda`. In the guest: `layerstore import` reads
//! the archive straight from the block device, `create` + `bundle`, and crun runs the
//! container; `create --size` is enforced by an XFS project quota; `rm` + `prune` + `fstrim`
//! hand the freed blocks back to the thin pool; a store on XFS V4 with ftype=0 (which the host
//! kernel cannot mount) is refused with Docker's wording.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use serde_json::Value;
use tests::appliance::{LAYERSTORE, STORE_MNT};
use tests::{host_run, pool_data_bytes, umoci, Attach, BusyboxBundle, Opts, TestVm};

/// The store this test drives with the `layerstore` CLI. Init keeps the appliance's own store
/// (`/var/lib/lamina/overlay2`) open for `lamina run`, and a store has one writer at a time,
/// so the CLI works on a second store on the same XFS (same project quotas, same trims).
const ROOT: &str = "/var/lib/lamina/cli-store";
const CRUN: &str = "/usr/bin/crun";

/// A one-layer OCI image with busybox (static) whose command prints a line naming the
/// container's hostname, packed as an OCI layout tar; returns the tar.
fn busybox_archive(dir: &Path) -> Result<PathBuf> {
    let b = BusyboxBundle::new(dir, &["sh"])?;
    b.repack("bb1")?;
    umoci(&[
        "config",
        "--image",
        &b.tag("bb1"),
        "--tag",
        "bb",
        "--config.cmd",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hello from $(/bin/busybox hostname) pid $$",
    ])?;
    let tar = dir.join("bb.oci.tar");
    host_run(Command::new("tar").arg("-C").arg(&b.img).arg("-cf").arg(&tar).arg("."))?;
    Ok(tar)
}

/// The pool's Data Space Used in bytes, and the docker-info string for the log.
fn data_used(vm: &mut TestVm) -> Result<(u64, String)> {
    let s = vm.pool_status()?;
    let docker = s["devicemapper"]["Data Space Used"].as_str().unwrap_or("?").to_owned();
    Ok((pool_data_bytes(&s, "used")?, docker))
}

/// Whole 1 MiB blocks `dd` wrote: busybox prints "FULL+PARTIAL records out" on stderr (also
/// after a write error).
fn dd_mib(r: &Value) -> u64 {
    let err = r["stderr"].as_str().unwrap_or("");
    err.lines()
        .filter_map(|l| l.strip_suffix(" records out"))
        .filter_map(|n| n.split('+').next()?.trim().parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// Mounts container `c` and writes 100 MiB of random bytes into its merged directory: `dd`'s
/// result, failed or not.
fn fill_100_mib(vm: &mut TestVm, c: &str) -> Result<Value> {
    let merged = vm.ok(&[LAYERSTORE, "--root", ROOT, "mount", c], Duration::from_secs(30))?;
    vm.run(
        &["dd", "if=/dev/urandom", &format!("of={}/fill", merged.trim()), "bs=1M", "count=100"],
        Duration::from_secs(120),
    )
}

tests::per_attach! {
    layer_store: vm_layer_store_runs_quotas_and_trims,
    /// The same with the store on the kernel's nbd client (`lamina.attach=nbd`): quotas, and
    /// trims that reach the pool through NBD_CMD_TRIM instead of ublk's DISCARD.
    vm_layer_store_runs_quotas_and_trims_over_nbd,
}

fn layer_store(name: &str, attach: Attach) -> Result<()> {
    let host = tempfile::tempdir()?;
    let archive = busybox_archive(host.path())?;
    let archive_size = std::fs::metadata(&archive)?.len();
    ensure!(archive_size % 512 == 0, "tar size {archive_size} is not a multiple of 512");
    let pool_disk = host.path().join("disk.raw");
    // vdc: scratch disk for an XFS V4 (ftype=0) filesystem, which the host kernel cannot mount.
    let v4_disk = host.path().join("v4.raw");
    let mut opts = Opts {
        disks: vec![pool_disk, archive.clone(), v4_disk],
        read_only: vec![archive.clone()],
        ..Opts::debug()
    };
    opts.append.push("lamina.pool.devices=/dev/vda".into());
    attach.apply(&mut opts);
    opts.deadline = Duration::from_secs(600);
    let mut vm = TestVm::boot(name, opts)?;
    let ready = vm.wait_ready()?;
    let store = format!("pool: store on {}", attach.device());
    assert!(ready.line.contains(&store), "{}", ready.line);
    // The pool took only vda; vdb is the archive, byte for byte.
    assert_eq!(
        vm.ok(&["cat", "/sys/block/vdb/size"], Duration::from_secs(30))?.trim(),
        (archive_size / 512).to_string()
    );
    // …attached read-only: the guest cannot change the host's tar.
    assert_eq!(vm.ok(&["cat", "/sys/block/vdb/ro"], Duration::from_secs(30))?.trim(), "1");
    let console = vm.console();
    assert!(
        !console.contains("/dev/vda,/dev/vdb"),
        "the pool claimed the archive disk:\n{console}"
    );

    // 1. import from the block device, create, bundle, run under crun.
    let imported = vm.ok(
        &[LAYERSTORE, "--root", ROOT, "import", "/dev/vdb", "--ref", "bb", "--tag", "bb:1"],
        Duration::from_secs(120),
    )?;
    eprintln!("[vm_layers] import: {imported}");
    let images = vm.ok(&[LAYERSTORE, "--root", ROOT, "images"], Duration::from_secs(30))?;
    assert!(images.contains("bb:1"), "{images}");
    vm.ok(&[LAYERSTORE, "--root", ROOT, "create", "bb:1", "c1"], Duration::from_secs(30))?;
    vm.ok(
        &[LAYERSTORE, "--root", ROOT, "bundle", "c1", "/run/bundle-c1"],
        Duration::from_secs(30),
    )?;
    // The appliance's root is the initramfs (rootfs), which pivot_root(2) refuses (EINVAL);
    // like Docker on a ramdisk (DOCKER_RAMDISK), the runtime moves the rootfs and chroots.
    let r = vm.run(
        &[CRUN, "run", "--no-pivot", "--bundle", "/run/bundle-c1", "c1"],
        Duration::from_secs(60),
    )?;
    let stdout = r["stdout"].as_str().unwrap_or("");
    assert_eq!(r["exit_code"], 0, "crun run failed: {r}");
    // Hostname is the container's (bundle sets it to the container name), pid 1 of its own
    // pid namespace.
    assert_eq!(stdout.trim(), "hello from c1 pid 1", "{r}");

    // 2. --size: a writer in the merged directory stops at the quota; without it, it does not.
    // Random data: the pool keeps all-zero blocks unmapped, and step 3 needs mapped ones.
    vm.ok(
        &[LAYERSTORE, "--root", ROOT, "create", "bb:1", "q", "--size", "64M"],
        Duration::from_secs(30),
    )?;
    // The first project id, kept in the container's metadata (set through xfs_quota).
    let meta_q =
        vm.ok(&["cat", "/var/lib/lamina/cli-store/containers/q.json"], Duration::from_secs(30))?;
    assert!(meta_q.contains("\"project_id\": 1"), "{meta_q}");
    let r = fill_100_mib(&mut vm, "q")?;
    let err = r["stderr"].as_str().unwrap_or("");
    assert_ne!(r["exit_code"], 0, "dd past --size 64M succeeded: {r}");
    assert!(
        err.contains("Disk quota exceeded") || err.contains("No space left"),
        "dd failed for another reason: {r}"
    );
    let written = dd_mib(&r);
    assert!((56..=64).contains(&written), "wrote {written} MiB under a 64M limit: {r}");
    vm.ok(&[LAYERSTORE, "--root", ROOT, "create", "bb:1", "free"], Duration::from_secs(30))?;
    let r = fill_100_mib(&mut vm, "free")?;
    assert_eq!(r["exit_code"], 0, "dd without --size failed: {r}");
    assert_eq!(dd_mib(&r), 100, "{r}");
    vm.ok(&["sync"], Duration::from_secs(60))?;

    // 3. rm + prune, then fstrim: the pool's Data Space Used drops.
    let (before, before_s) = data_used(&mut vm)?;
    for c in ["c1", "q", "free"] {
        vm.ok(&[LAYERSTORE, "--root", ROOT, "rm", c], Duration::from_secs(60))?;
    }
    vm.ok(&[LAYERSTORE, "--root", ROOT, "prune", "--all"], Duration::from_secs(60))?;
    let images = vm.ok(&[LAYERSTORE, "--root", ROOT, "images"], Duration::from_secs(30))?;
    assert!(!images.contains("bb:1"), "prune --all left the image: {images}");
    vm.ok(&["sync"], Duration::from_secs(60))?;
    let (mid, _) = data_used(&mut vm)?;
    let trimmed = vm.ok(&["busybox", "fstrim", "-v", STORE_MNT], Duration::from_secs(120))?;
    let (after, after_s) = data_used(&mut vm)?;
    eprintln!(
        "[vm_layers] Data Space Used: {before_s} ({before}) before rm, {mid} after rm+prune, \
         {after_s} ({after}) after fstrim; fstrim said {}",
        trimmed.trim()
    );
    // ~164 MiB of container data went away; at least 100 MiB must come back to the pool.
    assert!(
        before >= after + (100 << 20),
        "Data Space Used did not drop by 100 MiB: {before} -> {after} ({before_s} -> {after_s})"
    );

    // 4. A store on XFS without d_type (V4, ftype=0) is refused with Docker's wording.
    vm.ok(
        &["/sbin/mkfs.xfs", "-f", "-q", "-K", "-m", "crc=0", "-n", "ftype=0", "/dev/vdc"],
        Duration::from_secs(120),
    )?;
    vm.ok(&["mount", "-t", "xfs", "/dev/vdc", "/mnt"], Duration::from_secs(60))?;
    let r = vm.run(&[LAYERSTORE, "--root", "/mnt/overlay2", "images"], Duration::from_secs(60))?;
    let err = r["stderr"].as_str().unwrap_or("");
    assert_ne!(r["exit_code"], 0, "a store on ftype=0 XFS was accepted: {r}");
    assert!(
        err.contains("overlay2: the backing xfs filesystem is formatted without d_type support")
            && err.contains("Reformat the filesystem with ftype=1 to enable d_type support"),
        "{r}"
    );
    vm.ok(&["umount", "/mnt"], Duration::from_secs(60))?;

    let st = vm.stop(Duration::from_secs(60))?;
    assert!(st.success(), "QEMU exited with {st}");
    Ok(())
}
