//! VM tier: `layerstore --driver devicemapper` and `--driver btrfs` on the appliance's real
//! thin pool, in one boot.
//!
//! The guest is booted with `lamina.debug=1` so the agent runs `layerstore`, `crun`,
//! `mkfs.btrfs` and `thinpool` directly: the product verbs (`lamina run`, ...) drive init's own
//! overlay store, not these drivers. An OCI image built on the host with umoci from Debian's
//! busybox-static plus a 32 MiB layer of random bytes (big enough that ten copies of it would
//! show in the pool) rides in read-only on `/dev/vdb`, which the pool leaves alone
//! (`lamina.pool.devices=/dev/vda`).
//!
//! - devicemapper: the store asks the pool daemon (`/run/lamina/pool/control.sock`) for
//!   volumes and snapshots and for a ublk device per mounted layer or container;
//! - btrfs: the store is a thin volume attached through the daemon's ublk attach and
//!   formatted with the image's `mkfs.btrfs`.
//!
//! For each: import, a crun container that changes its tree, commit, export, re-import into
//! a fresh store and export again with the same bytes (and the other driver's export imports
//! and re-exports unchanged); a container's tree busy under a running container: devicemapper
//! refuses `rm` without `dm.use_deferred_removal` and defers it with it (the device and volume
//! go when the container exits), btrfs refuses it while the container runs; ten mounted
//! containers of one image cost far less than ten copies of it in Data Space Used; a deleted
//! file handed back by fstrim, then `rm`, `prune --all` and discard bring the pool's Data
//! Space Used, as the pool daemon's status reports it, back to where it was before the import
//! (for btrfs, also its own volume's mapped blocks back to what mkfs left).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use tests::appliance::{LAYERSTORE, POOL_STATE, STORE_MNT, THINPOOL};
use tests::wait::until;
use tests::{host_run, pool_data_bytes, umoci, BusyboxBundle, Opts, TestVm};

const CRUN: &str = "/usr/bin/crun";
const DM_ROOT: &str = "/var/lib/lamina/dm-store";
const BTRFS_MNT: &str = "/mnt/btrfs";
const BTRFS_ROOT: &str = "/mnt/btrfs/store";
/// The pool volume formatted with btrfs.
const BTRFS_VOLUME: &str = "btrfs";
/// The devicemapper store that imports the btrfs store's export (its blobs and layer
/// database live on the appliance's store XFS, like the other devicemapper stores').
const DM_CROSS: &str = "/var/lib/lamina/dm-cross";
/// The random layer's size.
const PAYLOAD_MIB: u64 = 32;
const MIB: u64 = 1 << 20;

/// Two images sharing two layers (busybox-static, then `/payload`: random bytes): `bb`, whose
/// command writes `/hello` and prints it, and `sleeper`, which sleeps. Returns the OCI layout
/// tar and the manifest digest of `bb`.
fn archive(dir: &Path) -> Result<(PathBuf, String)> {
    let b = BusyboxBundle::new(dir, &["sh"])?;
    let rootfs = b.rootfs();
    b.repack("l1")?;
    host_run(
        Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", rootfs.join("payload").display()))
            .arg("bs=1M")
            .arg(format!("count={PAYLOAD_MIB}")),
    )?;
    b.repack("l2")?;
    let cmd = |tag: &str, script: &str| {
        umoci(&[
            "config",
            "--image",
            &b.tag("l2"),
            "--tag",
            tag,
            "--config.cmd",
            "/bin/sh",
            "--config.cmd",
            "-c",
            "--config.cmd",
            script,
        ])
    };
    cmd("bb", "echo hello from $(/bin/busybox hostname) > /hello && /bin/busybox cat /hello")?;
    cmd("sleeper", "exec /bin/busybox sleep 600")?;
    let index: Value = serde_json::from_slice(&std::fs::read(b.img.join("index.json"))?)?;
    let digest = index["manifests"]
        .as_array()
        .context("index.json without manifests")?
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "bb")
        .and_then(|m| m["digest"].as_str())
        .context("no bb in index.json")?
        .to_owned();
    let tar = dir.join("bb.oci.tar");
    host_run(Command::new("tar").arg("-C").arg(&b.img).arg("-cf").arg(&tar).arg("."))?;
    Ok((tar, digest))
}

/// The pool's Data Space Used in bytes.
fn data_used(vm: &mut TestVm) -> Result<u64> {
    pool_data_bytes(&vm.pool_status()?, "used")
}

/// The bytes pool volume `name` maps, from the daemon's volume list (agent `volume.list`).
fn volume_mapped(vm: &mut TestVm, name: &str) -> Result<u64> {
    let vols = vm.agent()?.call("volume.list", None, Duration::from_secs(30))?;
    let block = vm.pool_status()?["block_bytes"].as_u64().context("no block_bytes")?;
    let v = vols.as_array().and_then(|a| a.iter().find(|v| v["name"] == name));
    let v = v.with_context(|| format!("no volume {name} in {vols}"))?;
    Ok(v["mapped_blocks"].as_u64().with_context(|| format!("no mapped_blocks: {v}"))? * block)
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// One driver's store as the guest's `layerstore` sees it.
struct Driver {
    name: &'static str,
    root: &'static str,
    /// `--storage-opt`s (devicemapper).
    opts: Vec<&'static str>,
}

impl Driver {
    fn argv<'a>(&'a self, root: &'a str, opts: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec![LAYERSTORE, "--driver", self.name, "--root", root];
        for o in opts {
            v.extend(["--storage-opt", o]);
        }
        v.extend_from_slice(args);
        v
    }

    fn ls(&self, vm: &mut TestVm, args: &[&str], secs: u64) -> Result<String> {
        vm.ok(&self.argv(self.root, &self.opts, args), Duration::from_secs(secs))
    }

    /// The same driver with another root (a fresh store).
    fn ls_at(&self, vm: &mut TestVm, root: &str, args: &[&str], secs: u64) -> Result<String> {
        vm.ok(&self.argv(root, &self.opts, args), Duration::from_secs(secs))
    }
}

/// What one driver's run measured.
#[derive(Debug, Default)]
struct Figures {
    ten_containers_growth: u64,
    image_bytes: u64,
    used_before_import: u64,
    used_full: u64,
    used_after_fstrim: u64,
    used_after_rm_prune: u64,
    /// btrfs: what its own volume maps after mkfs, with ten mounted containers, and after
    /// `rm`, `prune --all` and discard.
    volume_after_mkfs: u64,
    volume_ten_containers: u64,
    volume_after_rm_prune: u64,
}

/// Import, run with crun, commit, export, re-import into a fresh store, export again:
/// identical bytes. Returns the committed export's path in the guest.
fn round_trip(vm: &mut TestVm, d: &Driver, orig_digest: &str) -> Result<String> {
    let out = d.ls(vm, &["import", "/dev/vdb", "--ref", "bb", "--tag", "bb:1"], 600)?;
    eprintln!("[vm_drivers] {} import: {}", d.name, out.trim());
    d.ls(vm, &["import", "/dev/vdb", "--ref", "sleeper", "--tag", "sleeper:1"], 600)?;
    let images = d.ls(vm, &["images"], 60)?;
    assert!(images.contains("bb:1") && images.contains("sleeper:1"), "{images}");
    // The export of the imported image keeps its manifest digest.
    let orig = format!("/tmp/{}-orig.tar", d.name);
    d.ls(vm, &["export", "bb:1", &orig, "--format", "oci"], 300)?;
    let index = vm.ok(&["busybox", "tar", "-xOf", &orig, "index.json"], Duration::from_secs(60))?;
    assert!(index.contains(orig_digest), "{} export lost manifest {orig_digest}: {index}", d.name);

    // A container run by crun changes its tree; commit takes the change.
    d.ls(vm, &["create", "bb:1", "c1"], 120)?;
    let bundle = format!("/run/bundle-{}-c1", d.name);
    d.ls(vm, &["bundle", "c1", &bundle], 120)?;
    let r =
        vm.run(&[CRUN, "run", "--no-pivot", "--bundle", &bundle, "c1"], Duration::from_secs(120))?;
    assert_eq!(r["exit_code"], 0, "crun run on {} failed: {r}", d.name);
    assert_eq!(r["stdout"].as_str().unwrap_or("").trim(), "hello from c1", "{r}");
    let committed = d.ls(vm, &["commit", "c1", "bb:committed"], 300)?;
    eprintln!("[vm_drivers] {} commit: {}", d.name, committed.trim());
    let out = format!("/tmp/{}-committed.tar", d.name);
    d.ls(vm, &["export", "bb:committed", &out, "--format", "docker"], 300)?;

    // A fresh store of the same driver imports it as the same image and exports the same
    // bytes, and its container sees the committed change.
    let fresh = format!("{}-fresh", d.root);
    let back = d.ls_at(vm, &fresh, &["import", &out], 600)?;
    let again = format!("/tmp/{}-again.tar", d.name);
    d.ls_at(vm, &fresh, &["export", "bb:committed", &again, "--format", "docker"], 300)?;
    let sums = vm.ok(&["sha256sum", &out, &again], Duration::from_secs(60))?;
    let s: Vec<&str> = sums.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(s.len() == 2 && s[0] == s[1], "{} re-export differs: {sums}", d.name);
    let ids = d.ls(vm, &["images"], 60)?;
    let id = back.split_whitespace().next().context("import printed no id")?;
    let short = id.strip_prefix("sha256:").unwrap_or(id);
    assert!(ids.contains(&short[..12]), "committed image id {id} not in the source store: {ids}");
    d.ls_at(vm, &fresh, &["create", "bb:committed", "check"], 120)?;
    let m = d.ls_at(vm, &fresh, &["mount", "check"], 120)?.trim().to_owned();
    assert_eq!(
        vm.ok(&["cat", &format!("{m}/hello")], Duration::from_secs(30))?.trim(),
        "hello from c1"
    );
    d.ls_at(vm, &fresh, &["unmount", "check"], 120)?;
    d.ls_at(vm, &fresh, &["rm", "check"], 120)?;
    d.ls_at(vm, &fresh, &["prune", "--all"], 300)?;
    d.ls(vm, &["rm", "c1"], 120)?;
    Ok(out)
}

/// A running container (crun, detached) holds its tree. devicemapper: `rm` is refused without
/// deferred removal and done with it, the device and volume going when the container exits.
/// btrfs (no deferred removal in Docker's driver either): refused while it runs, done after.
fn busy_removal(vm: &mut TestVm, d: &Driver) -> Result<()> {
    d.ls(vm, &["create", "sleeper:1", "busy"], 120)?;
    let bundle = format!("/run/bundle-{}-busy", d.name);
    d.ls(vm, &["bundle", "busy", &bundle], 120)?;
    let start = format!(
        "{CRUN} run --no-pivot --detach --bundle {bundle} busy-{} </dev/null >/dev/null 2>&1",
        d.name
    );
    vm.ok(&["sh", "-c", &start], Duration::from_secs(120))?;
    let ctr = format!("busy-{}", d.name);
    let state = vm.ok(&[CRUN, "state", &ctr], Duration::from_secs(30))?;
    assert!(state.contains("\"running\""), "{state}");
    let volume = if d.name == "devicemapper" {
        // The container's device, from the store's layout (ROOT/<cache-id>/device).
        let meta =
            vm.ok(&["cat", &format!("{}/containers/busy.json", d.root)], Duration::from_secs(30))?;
        let m: Value = serde_json::from_str(&meta)?;
        let cache = m["cache_id"].as_str().context("container without cache_id")?;
        let vol = vm
            .ok(&["cat", &format!("{}/{cache}/device", d.root)], Duration::from_secs(30))?
            .trim()
            .to_owned();
        // Without dm.use_deferred_removal the busy device stops the removal, as in Docker.
        let strict = d.argv(d.root, &[], &["rm", "busy"]);
        let r = vm.run(&strict, Duration::from_secs(120))?;
        let err = r["stderr"].as_str().unwrap_or("");
        assert_ne!(r["exit_code"], 0, "rm of a busy container succeeded without deferral: {r}");
        assert!(err.contains("is busy") && err.contains("dm.use_deferred_removal"), "{r}");
        assert!(d.ls(vm, &["ls"], 60)?.contains("busy"), "the refused rm removed it");
        Some(vol)
    } else {
        None
    };
    if volume.is_none() {
        // btrfs: deleting the subvolume would pull the tree, and the mounts crun made inside
        // it (/proc, /dev), from under the running container: refused, as Docker refuses to
        // remove a running container; done once it has exited.
        let r = vm.run(&d.argv(d.root, &[], &["rm", "busy"]), Duration::from_secs(120))?;
        let err = r["stderr"].as_str().unwrap_or("");
        assert_ne!(r["exit_code"], 0, "rm of a subvolume in use succeeded: {r}");
        assert!(err.contains("is in use") && err.contains("pid "), "{r}");
        let r = vm
            .ok(&[CRUN, "exec", &ctr, "/bin/busybox", "ls", "/payload"], Duration::from_secs(60))?;
        assert_eq!(r.trim(), "/payload", "the running container keeps its tree");
        vm.ok(&[CRUN, "delete", "--force", &ctr], Duration::from_secs(60))?;
        d.ls(vm, &["rm", "busy"], 120)?;
        assert!(!d.ls(vm, &["ls"], 60)?.contains("busy"), "rm left the container");
        return Ok(());
    }
    d.ls(vm, &["rm", "busy"], 120)?;
    assert!(!d.ls(vm, &["ls"], 60)?.contains("busy"), "rm left the container");
    // The container still runs on its tree: its mounts (/proc, ...) sit on its own
    // filesystem, which the lazy unmount left alone.
    let r =
        vm.ok(&[CRUN, "exec", &ctr, "/bin/busybox", "ls", "/payload"], Duration::from_secs(60))?;
    assert_eq!(r.trim(), "/payload");
    if let Some(vol) = &volume {
        // Still attached, marked for removal at its last close; the volume is hidden, its
        // deletion deferred.
        let st = vm.pool_status()?;
        let entry = st["ublk"].as_array().and_then(|a| a.iter().find(|e| e["name"] == *vol));
        let entry = entry.with_context(|| format!("{vol} not attached any more: {st}"))?;
        assert_eq!(entry["deferred_removal"], true, "{entry}");
        let vols = vm.agent()?.call("volume.list", None, Duration::from_secs(30))?;
        assert!(!vols.to_string().contains(vol.as_str()), "{vol} still listed: {vols}");
        let count = &st["devicemapper"]["Deferred Deleted Device Count"];
        assert!(count.as_u64().unwrap_or(0) >= 1, "{}", st["devicemapper"]);
    }
    vm.ok(&[CRUN, "delete", "--force", &ctr], Duration::from_secs(60))?;
    if let Some(vol) = &volume {
        // The device goes at its last close, and with it the volume.
        until(Duration::from_secs(120), Duration::from_millis(500), || {
            let st = vm.pool_status()?;
            let attached =
                st["ublk"].as_array().is_some_and(|a| a.iter().any(|e| e["name"] == *vol));
            let count = st["devicemapper"]["Deferred Deleted Device Count"].as_u64();
            Ok(if !attached && count == Some(0) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(format!("deferred removal of {vol} never finished: {st}"))
            })
        })?;
    }
    Ok(())
}

/// Ten mounted containers of one image, then a file written and deleted in one of them, then
/// `rm`, `prune --all` and discard: Data Space Used as the pool daemon reports it.
fn space(
    vm: &mut TestVm,
    d: &Driver,
    f: &mut Figures,
    settle: &[&str],
    trim: &[&str],
) -> Result<()> {
    let before = data_used(vm)?;
    let mut mounts = Vec::new();
    for i in 0..10 {
        let c = format!("s{i}");
        d.ls(vm, &["create", "bb:1", &c], 120)?;
        mounts.push(d.ls(vm, &["mount", &c], 120)?.trim().to_owned());
    }
    vm.ok(&["sync"], Duration::from_secs(60))?;
    let after = data_used(vm)?;
    f.ten_containers_growth = after.saturating_sub(before);
    if d.name == "btrfs" {
        f.volume_ten_containers = volume_mapped(vm, BTRFS_VOLUME)?;
    }
    f.image_bytes = (PAYLOAD_MIB + 2) * MIB;
    eprintln!(
        "[vm_drivers] {}: 10 mounted containers grew Data Space Used by {:.1} MiB (one image: \
         {:.0} MiB)",
        d.name,
        mib(f.ten_containers_growth),
        mib(f.image_bytes)
    );
    // Ten copies would be 340 MiB; a snapshot costs only the blocks its filesystem writes.
    assert!(
        f.ten_containers_growth < f.image_bytes * 10 / 5,
        "{}: ten containers cost {:.1} MiB, not far less than ten copies ({:.0} MiB)",
        d.name,
        mib(f.ten_containers_growth),
        mib(f.image_bytes * 10)
    );
    // 64 MiB of random data in one container, then deleted: fstrim of its filesystem hands
    // the blocks back (discard through the ublk device to the pool).
    let fill = format!("{}/fill", mounts[0]);
    vm.ok(
        &["dd", "if=/dev/urandom", &format!("of={fill}"), "bs=1M", "count=64"],
        Duration::from_secs(300),
    )?;
    vm.ok(&["sync"], Duration::from_secs(60))?;
    f.used_full = data_used(vm)?;
    vm.ok(&["rm", &fill], Duration::from_secs(60))?;
    vm.ok(&["sync"], Duration::from_secs(60))?;
    vm.ok(&["busybox", "fstrim", "-v", &mounts[0]], Duration::from_secs(300))?;
    f.used_after_fstrim = data_used(vm)?;
    eprintln!(
        "[vm_drivers] {}: 64 MiB written: {:.1} MiB used; deleted + fstrim: {:.1} MiB",
        d.name,
        mib(f.used_full),
        mib(f.used_after_fstrim)
    );
    assert!(
        f.used_full >= f.used_after_fstrim + 48 * MIB,
        "{}: fstrim gave back {:.1} MiB of 64",
        d.name,
        mib(f.used_full.saturating_sub(f.used_after_fstrim))
    );
    for i in 0..10 {
        d.ls(vm, &["rm", &format!("s{i}")], 120)?;
    }
    d.ls(vm, &["prune", "--all"], 300)?;
    let images = d.ls(vm, &["images"], 60)?;
    assert!(!images.contains("bb:1"), "prune --all left the image: {images}");
    vm.ok(&["sync"], Duration::from_secs(60))?;
    if !settle.is_empty() {
        vm.ok(settle, Duration::from_secs(300))?;
        // What the cleaner freed is free (and so trimmable) only once its transaction commits.
        vm.ok(&["sync"], Duration::from_secs(60))?;
    }
    for t in trim {
        vm.ok(&["busybox", "fstrim", "-v", t], Duration::from_secs(300))?;
    }
    f.used_after_rm_prune = data_used(vm)?;
    eprintln!(
        "[vm_drivers] {}: Data Space Used {:.1} MiB before the import, {:.1} MiB after rm + \
         prune + discard",
        d.name,
        mib(f.used_before_import),
        mib(f.used_after_rm_prune)
    );
    // Every block the image, its layers and the containers took is back, but for the store
    // XFS's own metadata churn.
    assert!(
        f.used_after_rm_prune <= f.used_before_import + 16 * MIB,
        "{}: {:.1} MiB still used after rm + prune + discard (before the import: {:.1} MiB)",
        d.name,
        mib(f.used_after_rm_prune),
        mib(f.used_before_import)
    );
    if d.name == "btrfs" {
        // The btrfs volume itself is back to what mkfs and the empty store left, give or
        // take where its live trees sit: btrfs copies every changed tree node (16 KiB) to a
        // new place at each commit, so the 64 KiB pool blocks they map move around (measured:
        // 1.19 MiB before, 1.12 MiB after). 2 MiB is 32 such blocks, the image is 34 MiB.
        f.volume_after_rm_prune = volume_mapped(vm, BTRFS_VOLUME)?;
        let df = vm.ok(&["btrfs", "filesystem", "df", BTRFS_MNT], Duration::from_secs(60))?;
        eprintln!(
            "[vm_drivers] btrfs volume maps {:.2} MiB after mkfs, {:.2} MiB with ten \
             containers, {:.2} MiB after rm + prune + discard; btrfs filesystem df:\n{df}",
            mib(f.volume_after_mkfs),
            mib(f.volume_ten_containers),
            mib(f.volume_after_rm_prune)
        );
        assert!(
            f.volume_after_rm_prune <= f.volume_after_mkfs + 2 * MIB,
            "btrfs: its volume still maps {:.2} MiB after rm + prune + discard ({:.2} MiB \
             after mkfs)",
            mib(f.volume_after_rm_prune),
            mib(f.volume_after_mkfs)
        );
    }
    Ok(())
}

#[test]
fn vm_devicemapper_and_btrfs_drivers_on_the_pool() -> Result<()> {
    let host = tempfile::tempdir()?;
    let (archive, digest) = archive(host.path())?;
    let size = std::fs::metadata(&archive)?.len();
    ensure!(size % 512 == 0, "tar size {size} is not a multiple of 512");
    let pool_disk = host.path().join("disk.raw");
    let mut opts = Opts {
        disks: vec![pool_disk, archive.clone()],
        read_only: vec![archive.clone()],
        disk_size: 4 << 30,
        memory_mib: 1024,
        ..Opts::debug()
    };
    opts.append.push("lamina.pool.devices=/dev/vda".into());
    opts.append.push("lamina.agent.max_exec_secs=600".into());
    opts.deadline = Duration::from_secs(2400);
    let mut vm = TestVm::boot("vm_devicemapper_and_btrfs_drivers_on_the_pool", opts)?;
    let ready = vm.wait_ready()?;
    assert!(ready.line.contains("pool: store on /dev/ublkb0"), "{}", ready.line);
    let modules = vm.ok(&["cat", "/proc/filesystems"], Duration::from_secs(30))?;
    assert!(modules.contains("btrfs"), "btrfs is not loaded: {modules}");

    // ---- devicemapper: the store's devices come from the pool daemon ----
    let dm = Driver {
        name: "devicemapper",
        root: DM_ROOT,
        opts: vec!["dm.use_deferred_removal=true", "dm.use_deferred_deletion=true"],
    };
    let mut dmf = Figures::default();
    // Opening the store makes and formats the base device (dm.basesize, 10 GiB thin).
    let info = dm.ls(&mut vm, &["info"], 300)?;
    eprintln!("[vm_drivers] devicemapper info:\n{info}");
    assert!(info.contains("Deferred Removal Enabled: true"), "{info}");
    assert!(info.contains("Base Device Size: 10"), "{info}");
    // The fresh store of the round trip has its own base device, kept (as Docker keeps its
    // base) after its prune: made before the baseline.
    dm.ls_at(&mut vm, &format!("{DM_ROOT}-fresh"), &["info"], 300)?;
    vm.ok(&["sync"], Duration::from_secs(60))?;
    dmf.used_before_import = data_used(&mut vm)?;
    let dm_export = round_trip(&mut vm, &dm, &digest)?;
    busy_removal(&mut vm, &dm)?;
    space(&mut vm, &dm, &mut dmf, &[], &[STORE_MNT])?;

    // ---- btrfs: the store on a thin volume formatted with the image's mkfs.btrfs ----
    let created = vm.agent()?.call(
        "volume.create",
        Some(json!({"name": "btrfs", "size": 4u64 << 30})),
        Duration::from_secs(60),
    )?;
    eprintln!("[vm_drivers] volume.create btrfs: {created}");
    let dev = vm
        .ok(
            &[THINPOOL, "attach", "/dev/vda", "btrfs", "--state-dir", POOL_STATE],
            Duration::from_secs(120),
        )?
        .trim()
        .to_owned();
    assert!(dev.starts_with("/dev/ublkb"), "{dev}");
    let mkfs = vm.ok(&["/sbin/mkfs.btrfs", "-f", &dev], Duration::from_secs(300))?;
    eprintln!("[vm_drivers] mkfs.btrfs: {mkfs}");
    vm.ok(&["busybox", "mkdir", "-p", BTRFS_MNT], Duration::from_secs(30))?;
    vm.ok(&["mount", "-t", "btrfs", &dev, BTRFS_MNT], Duration::from_secs(120))?;
    let bt = Driver { name: "btrfs", root: BTRFS_ROOT, opts: Vec::new() };
    let mut btf = Figures::default();
    let info = bt.ls(&mut vm, &["info"], 120)?;
    assert!(info.contains("Backing Filesystem: btrfs"), "{info}");
    // The devicemapper store the cross check imports into makes its base device (kept after
    // its prune, as Docker keeps its base) before the baseline, as the fresh one did.
    dm.ls_at(&mut vm, DM_CROSS, &["info"], 300)?;
    vm.ok(&["sync"], Duration::from_secs(60))?;
    btf.used_before_import = data_used(&mut vm)?;
    btf.volume_after_mkfs = volume_mapped(&mut vm, BTRFS_VOLUME)?;
    let bt_export = round_trip(&mut vm, &bt, &digest)?;
    // Across drivers: what devicemapper exported imports into btrfs and exports unchanged,
    // and the other way round.
    for (src, into, root) in [(&dm_export, &bt, "/mnt/btrfs/cross"), (&bt_export, &dm, DM_CROSS)] {
        into.ls_at(&mut vm, root, &["import", src], 600)?;
        let again = format!("/tmp/cross-{}.tar", into.name);
        into.ls_at(&mut vm, root, &["export", "bb:committed", &again, "--format", "docker"], 300)?;
        let sums = vm.ok(&["sha256sum", src, &again], Duration::from_secs(60))?;
        let s: Vec<&str> = sums.lines().filter_map(|l| l.split_whitespace().next()).collect();
        assert!(s.len() == 2 && s[0] == s[1], "{} re-export of {src} differs: {sums}", into.name);
        into.ls_at(&mut vm, root, &["prune", "--all"], 300)?;
    }
    busy_removal(&mut vm, &bt)?;
    // Deleted subvolumes are freed by btrfs's cleaner thread in the background: `btrfs
    // subvolume sync` waits for it before the discard. The store XFS is trimmed too: the
    // cross check's devicemapper store kept the btrfs export's blobs there until its prune
    // (XFS is mounted without online discard, so only fstrim hands those blocks back).
    let settle = ["btrfs", "subvolume", "sync", BTRFS_MNT];
    space(&mut vm, &bt, &mut btf, &settle, &[BTRFS_MNT, STORE_MNT])?;

    eprintln!("[vm_drivers] figures: devicemapper {dmf:?}; btrfs {btf:?}");
    vm.ok(&["umount", BTRFS_MNT], Duration::from_secs(120))?;
    vm.ok(
        &[THINPOOL, "detach", "/dev/vda", "btrfs", "--state-dir", POOL_STATE],
        Duration::from_secs(120),
    )?;
    let st = vm.stop(Duration::from_secs(120))?;
    assert!(st.success(), "QEMU exited with {st}");
    Ok(())
}
