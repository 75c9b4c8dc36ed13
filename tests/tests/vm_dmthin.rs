//! VM tier, kernel interop: a pool written by lamina over NBD is handed to the guest kernel's
//! dm-thin (`dmsetup create` from `thinpool dmsetup-table`), which reads every volume and
//! snapshot back, writes new blocks, breaks sharing with a snapshot (CoW) and deletes a thin;
//! lamina then opens what the kernel committed, and `thinpool check` and Debian's `thin_check`
//! find it clean.
//!
//! Boots the `dm` image variant (`cargo xtask image --variant dm`). Logs, the disk image and
//! the guest's `dmesg` are kept in `target/lamina/test-logs/vm_dmthin_interop/`.

use std::ops::ControlFlow;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use tests::dmthin::{
    dm_image_dir, parse_tables, pattern, run, seq_bytes, sha256_file, sha256_hex, thinpool_bin,
    DmDevice,
};
use tests::wait::until;
use tests::{lamina_home, Opts, TestVm};

const NAME: &str = "vm_dmthin_interop";
const MIB: usize = 1 << 20;
const VOL: usize = 16 * MIB;
/// The guest sees the one attached disk as the first virtio-blk device.
const GUEST_DISK: &str = "/dev/vda";
const BB: &str = "/bin/busybox";

struct Server(Child);

impl Server {
    fn start(tp: &Path, pool: &Path, sock: &Path) -> Result<Server> {
        let _ = std::fs::remove_file(sock);
        let child = Command::new(tp)
            .arg("serve")
            .arg(pool)
            .args(["--listen", "none", "--socket"])
            .arg(sock)
            .stdout(Stdio::null())
            .spawn()
            .context("starting thinpool serve")?;
        let mut s = Server(child);
        until(Duration::from_secs(20), Duration::from_millis(50), || {
            if let Some(st) = s.0.try_wait()? {
                bail!("thinpool serve exited early: {st}");
            }
            Ok(if sock.exists() {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue("thinpool serve: no socket yet".into())
            })
        })?;
        Ok(s)
    }

    /// nbdcopy (flushes at the end) from a host file into a volume at offset 0.
    fn write(&self, sock: &Path, vol: &str, data: &[u8], dir: &Path) -> Result<()> {
        let src = dir.join(format!("{vol}.in"));
        std::fs::write(&src, data)?;
        let uri = format!("nbd+unix:///{vol}?socket={}", sock.display());
        run(Command::new("nbdcopy").arg("--flush").arg(&src).arg(&uri))?;
        Ok(())
    }

    /// SIGTERM, and the server must exit 0 (it commits on the way out).
    fn stop(mut self) -> Result<()> {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).context("server pid")?;
        rustix::process::kill_process(pid, rustix::process::Signal::TERM)?;
        let st = self.0.wait()?;
        ensure!(st.success(), "thinpool serve exited with {st} after SIGTERM");
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Runs `argv` in the guest with a generous timeout (TCG), keeping the command and its output
/// in `log`.
fn gexec(vm: &mut TestVm, log: &mut String, argv: &[&str]) -> Result<String> {
    let t = Instant::now();
    let r = vm.run(argv, Duration::from_secs(100))?;
    let out = r["stdout"].as_str().unwrap_or("").to_owned();
    let err = r["stderr"].as_str().unwrap_or("");
    log.push_str(&format!(
        "$ {} ({:.2}s, exit {})\n{out}{err}",
        argv.join(" "),
        t.elapsed().as_secs_f64(),
        r["exit_code"]
    ));
    if r["exit_code"] != 0 {
        bail!("{argv:?} in the guest: {r}");
    }
    Ok(out)
}

fn guest_sha(vm: &mut TestVm, log: &mut String, dev: &str) -> Result<String> {
    let out = gexec(vm, log, &[BB, "sha256sum", dev])?;
    out.split_whitespace().next().map(str::to_owned).context("sha256sum printed nothing")
}

fn create(vm: &mut TestVm, log: &mut String, d: &DmDevice) -> Result<()> {
    let table = d.table.join("\n");
    gexec(vm, log, &["/sbin/dmsetup", "create", "--noudevsync", &d.name, "--table", &table])?;
    // No udev in the appliance: /dev/mapper/NAME (which the thin-pool and thin tables name)
    // is made by dmsetup itself.
    gexec(vm, log, &["/sbin/dmsetup", "mknodes", &d.name])?;
    Ok(())
}

#[test]
fn vm_dmthin_interop() -> Result<()> {
    let t0 = Instant::now();
    let image = dm_image_dir()?;
    let tp = thinpool_bin()?;
    let dir = lamina_home().join("test-logs").join(format!("{NAME}.host"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let tpc = |args: &[&str]| -> Result<String> {
        let out = run(Command::new(&tp).args(args).current_dir(&dir))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    // HOST: a direct-lvm pool on a sparse 1 GiB file, volumes written over NBD.
    let disk = dir.join("disk.img");
    std::fs::File::create(&disk)?.set_len(1 << 30)?;
    let disk_s = disk.to_str().context("utf-8 path")?;
    tpc(&["init", "pool", "--device", disk_s])?;
    for v in ["a", "b", "c"] {
        tpc(&["create", "pool", v, "--size", "16M"])?;
    }
    let a0 = pattern(1, 8 * MIB);
    let b0 = pattern(2, VOL);
    let c0 = pattern(3, 4 * MIB);
    let b1 = pattern(4, 4 * MIB);
    let sock = dir.join("nbd.sock");
    let srv = Server::start(&tp, &dir.join("pool"), &sock)?;
    srv.write(&sock, "a", &a0, &dir)?;
    srv.write(&sock, "b", &b0, &dir)?;
    srv.write(&sock, "c", &c0, &dir)?;
    srv.stop()?;
    tpc(&["snapshot", "pool", "b", "b-snap"])?;
    // The origin diverges from its snapshot in its first 4 MiB and shares the rest.
    let srv = Server::start(&tp, &dir.join("pool"), &sock)?;
    srv.write(&sock, "b", &b1, &dir)?;
    srv.stop()?;
    eprintln!(
        "[{NAME}] host: pool written over NBD and stopped ({:.1}s)",
        t0.elapsed().as_secs_f64()
    );

    let zeros = |n: usize| vec![0u8; n];
    let exp_a = concat(&[&a0, &zeros(VOL - 8 * MIB)]);
    let exp_b = concat(&[&b1, &b0[4 * MIB..]]);
    let exp_snap = b0.clone();
    let exp_c = concat(&[&c0, &zeros(VOL - 4 * MIB)]);
    // Kernel writes: 1 MiB into a's unmapped tail at 12 MiB; 1 MiB into b at 8 MiB, a range
    // b still shares with b-snap.
    let ka = seq_bytes(1, 400_000, MIB);
    let kb = seq_bytes(1_000_000, 1_400_000, MIB);
    let exp_a2 = concat(&[&exp_a[..12 * MIB], &ka, &exp_a[13 * MIB..]]);
    let exp_b2 = concat(&[&exp_b[..8 * MIB], &kb, &exp_b[9 * MIB..]]);

    let tables = parse_tables(&tpc(&["dmsetup-table", "pool"])?);
    std::fs::write(dir.join("tables.txt"), format!("{tables:#?}"))?;
    let find = |suffix: &str| -> Result<DmDevice> {
        tables
            .iter()
            .find(|d| d.name.ends_with(suffix))
            .cloned()
            .with_context(|| format!("no {suffix} device in {tables:?}"))
    };
    let (tmeta, tdata) = (find("_tmeta")?, find("_tdata")?);
    let pool =
        tables.iter().find(|d| d.target() == "thin-pool").cloned().context("no thin-pool")?;
    let thins: Vec<(String, DmDevice)> = ["a", "b", "b-snap", "c"]
        .iter()
        .map(|v| Ok((v.to_string(), find(&format!("{}-{v}", pool.name))?)))
        .collect::<Result<_>>()?;
    let c_id = thins[3].1.thin_id().context("c has no thin id")?;

    // thin_check on the metadata region as lamina left it (baseline).
    let (meta_start, meta_len) = tmeta.linear_extent().context("tmeta is not one segment")?;
    let thin_check = |tag: &str| -> Result<String> {
        let meta = dir.join(format!("meta-{tag}.bin"));
        let bytes = std::fs::read(&disk)?;
        let (s, l) = ((meta_start * 512) as usize, (meta_len * 512) as usize);
        std::fs::write(&meta, bytes.get(s..s + l).context("metadata region outside the disk")?)?;
        let out = run(Command::new("thin_check").arg(&meta))?;
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    thin_check("before")?;

    // GUEST: the kernel's dm-thin over the same bytes.
    let mut opts = Opts::debug();
    opts.image = Some(image);
    opts.disks = vec![disk.clone()];
    opts.disk_size = 1 << 30;
    opts.deadline = Duration::from_secs(600);
    opts.memory_mib = 512;
    opts.append.push("lamina.pool.enabled=0".into());
    let mut vm = TestVm::boot(NAME, opts)?;
    vm.wait_ready()?;
    let mut log = String::new();
    let guest = run_guest(
        &mut vm,
        &mut log,
        &tmeta,
        &tdata,
        &pool,
        &thins,
        c_id,
        &[
            ("a", sha256_hex(&exp_a), sha256_hex(&exp_a2)),
            ("b", sha256_hex(&exp_b), sha256_hex(&exp_b2)),
            ("b-snap", sha256_hex(&exp_snap), sha256_hex(&exp_snap)),
            ("c", sha256_hex(&exp_c), String::new()),
        ],
    );
    let dmesg = gexec(&mut vm, &mut log, &[BB, "dmesg"]).unwrap_or_else(|e| format!("{e:#}"));
    std::fs::write(vm.log_dir.join("dmesg.txt"), &dmesg)?;
    std::fs::write(vm.log_dir.join("guest.log"), &log)?;
    let dm_lines: Vec<&str> =
        dmesg.lines().filter(|l| l.contains("device-mapper") || l.contains("thin")).collect();
    eprintln!("[{NAME}] kernel said:\n{}", dm_lines.join("\n"));
    guest.with_context(|| format!("guest steps (log: {})", vm.log_dir.display()))?;
    let st = vm.stop(Duration::from_secs(30))?;
    ensure!(st.success(), "QEMU exited with {st}");
    drop(vm);
    eprintln!("[{NAME}] guest done, VM stopped ({:.1}s)", t0.elapsed().as_secs_f64());

    // HOST again: lamina reads what the kernel committed.
    let list = run(Command::new(&tp).args(["list", "pool"]).current_dir(&dir))?;
    let list_out = String::from_utf8_lossy(&list.stdout);
    let names: Vec<&str> =
        list_out.lines().skip(1).filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(names, ["a", "b", "b-snap"], "thinpool list after the kernel:\n{list_out}");
    assert!(
        String::from_utf8_lossy(&list.stderr).contains("no longer exists"),
        "the dropped name is warned about: {}",
        String::from_utf8_lossy(&list.stderr)
    );
    for (v, want) in [("a", &exp_a2), ("b", &exp_b2), ("b-snap", &exp_snap)] {
        let out = dir.join(format!("{v}.out"));
        tpc(&["export", "pool", v, out.to_str().context("utf-8")?])?;
        assert_eq!(sha256_file(&out)?, sha256_hex(want), "volume {v} as lamina reads it");
    }
    // `thinpool check` takes a pool directory of files or a metadata file: it is given the
    // same copy of the metadata region as thin_check.
    let tc = thin_check("after")?;
    tpc(&["check", "meta-after.bin"])?;
    // The kernel's delete reached the metadata (not just lamina's name table).
    let xml = tpc(&["dump", "meta-after.bin"])?;
    let devs = xml.matches("<device ").count();
    assert_eq!(devs, 3, "three thins left after the kernel's delete:\n{xml}");
    assert!(!xml.contains(&format!("dev_id=\"{c_id}\"")), "thin {c_id} still in:\n{xml}");
    eprintln!("[{NAME}] thinpool check clean; thin_check: {}", tc.trim());
    eprintln!("[{NAME}] PASS in {:.1}s", t0.elapsed().as_secs_f64());
    let _ = std::fs::remove_file(&disk);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn run_guest(
    vm: &mut TestVm,
    log: &mut String,
    tmeta: &DmDevice,
    tdata: &DmDevice,
    pool: &DmDevice,
    thins: &[(String, DmDevice)],
    c_id: u64,
    sums: &[(&str, String, String)],
) -> Result<()> {
    let t = Instant::now();
    gexec(vm, log, &[BB, "grep", "dm_thin_pool", "/proc/modules"])
        .context("dm_thin_pool is not loaded")?;
    create(vm, log, &tmeta.on_device(GUEST_DISK))?;
    create(vm, log, &tdata.on_device(GUEST_DISK))?;
    create(vm, log, pool)?;
    for (_, d) in thins {
        create(vm, log, d)?;
    }
    gexec(vm, log, &["/sbin/dmsetup", "status"])?;
    gexec(vm, log, &["/sbin/dmsetup", "table"])?;
    let dev = |v: &str| -> Result<String> {
        let d = &thins.iter().find(|(n, _)| n == v).context("no such thin")?.1;
        Ok(format!("/dev/mapper/{}", d.name))
    };
    for (v, before, _) in sums {
        let got = guest_sha(vm, log, &dev(v)?)?;
        ensure!(&got == before, "kernel reads {v} as {got}, lamina wrote {before}");
    }
    eprintln!(
        "[{NAME}] kernel reads every volume as lamina wrote it ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    // 64 KiB blocks: a 8 MiB + b 16 MiB + c 4 MiB + b's 4 MiB after the snapshot.
    let blocks = |mib: usize| (mib * MIB / (64 << 10)) as u64;
    let used0 = pool_data_used(vm, log, &pool.name)?;
    ensure!(used0 == blocks(8 + 16 + 4 + 4), "pool data used {used0} blocks as lamina left it");

    // (a) new blocks, (b) a write into shared blocks (CoW), then (c) a thin delete.
    let a = dev("a")?;
    let b = dev("b")?;
    gexec(
        vm,
        log,
        &[
            BB,
            "sh",
            "-c",
            &format!(
        "{BB} seq 1 400000 | {BB} head -c 1048576 | {BB} dd of={a} bs=65536 seek=192 conv=fsync"
    ),
        ],
    )?;
    gexec(vm, log, &[BB, "sh", "-c", &format!(
        "{BB} seq 1000000 1400000 | {BB} head -c 1048576 | {BB} dd of={b} bs=65536 seek=128 conv=fsync"
    )])?;
    gexec(vm, log, &[BB, "sync"])?;
    for (v, _, after) in sums.iter().filter(|s| !s.2.is_empty()) {
        let got = guest_sha(vm, log, &dev(v)?)?;
        ensure!(&got == after, "after the kernel's writes {v} reads {got}, expected {after}");
    }
    let c = &thins.iter().find(|(n, _)| n == "c").context("no c")?.1;
    gexec(vm, log, &["/sbin/dmsetup", "remove", "--noudevsync", &c.name])?;
    gexec(vm, log, &["/sbin/dmsetup", "message", &pool.name, "0", &format!("delete {c_id}")])?;
    // 1 MiB new in a, 1 MiB copied out of b's shared range, c's 4 MiB freed.
    let used1 = pool_data_used(vm, log, &pool.name)?;
    ensure!(used1 == used0 + blocks(2) - blocks(4), "pool data used {used1} after writes+delete");
    for (v, d) in thins.iter().filter(|(n, _)| n != "c") {
        gexec(vm, log, &["/sbin/dmsetup", "remove", "--noudevsync", &d.name])
            .with_context(|| format!("removing {v}"))?;
    }
    // Removing the pool device commits the kernel's metadata transaction.
    for d in [pool, tdata, tmeta] {
        gexec(vm, log, &["/sbin/dmsetup", "remove", "--noudevsync", &d.name])?;
    }
    gexec(vm, log, &[BB, "sync"])?;
    eprintln!(
        "[{NAME}] kernel writes, CoW, delete and teardown done ({:.1}s)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Used data blocks from the thin-pool status line (`… thin-pool TID m/M d/D …`).
fn pool_data_used(vm: &mut TestVm, log: &mut String, pool: &str) -> Result<u64> {
    let st = gexec(vm, log, &["/sbin/dmsetup", "status", pool])?;
    st.split_whitespace()
        .nth(5)
        .and_then(|f| f.split('/').next())
        .and_then(|u| u.parse().ok())
        .with_context(|| format!("unexpected thin-pool status {st:?}"))
}
