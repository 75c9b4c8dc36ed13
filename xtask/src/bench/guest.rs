//! `bench guest`: block I/O inside one appliance VM (the `dm` image variant, which carries
//! `dmsetup` and Debian's `fio`), on one fresh sparse virtio disk, four ways, once with 1 vCPU
//! and once with 2 (one VM each; cases are named with the vCPU count):
//!
//! - **lamina** (over ublk, the appliance's default): the base volume `store` as
//!   `/dev/ublkbN`, attached by `thinpool attach` through the daemon's control socket;
//! - **lamina over nbd**: the same volume through the kernel's nbd driver (`/dev/nbd0`),
//!   attached by init exactly as the appliance runs it with `lamina.attach=nbd` (socketpairs,
//!   `--io-flusher`, supervised daemon). The VM boots that way so both frontends of the one
//!   daemon serve the same volume. Init has no setting that attaches without mounting, so its
//!   XFS is unmounted first (the VM runs storage-only, `lamina.containers=0`, so nothing
//!   holds it);
//! - **kernel dm-thin**: the same pool, handed to the guest kernel: lamina's daemon is stopped
//!   (flush, so it commits, then SIGKILL: see [`Guest::stop_lamina`]) and `dmsetup create` activates the tables of
//!   `thinpool dmsetup-table`, so the very same thin (same mapped blocks) is measured;
//! - **raw virtio**: `/dev/vda` itself, in the free tail that the volume group leaves unused
//!   (direct-lvm keeps ~4 % of the disk for autoextend).
//!
//! Workloads are the host `nbd` suite's (thinpool/benches/nbd.rs): 4k randread qd16, 4k
//! randwrite qd16, 1M read qd4, 1M write qd4 on an allocated region (written once before
//! measuring, for all three), with `ioengine=libaio`, `direct=1` and a fixed runtime. Rounds
//! are interleaved (ublk, nbd, dm-thin, raw, ublk, …) so drift hits every subject alike.
//!
//! Switching between lamina and dm-thin inside one boot: init's supervisor restarts the daemon
//! whenever it exits. While dm-thin owns the pool, `/sbin/thinpool` is renamed away, so each
//! restart attempt fails at once (one failed spawn a second, nothing executes); renaming it
//! back lets the next attempt open the pool as the kernel committed it, reconfigure
//! `/dev/nbd0` and take the quiesced ublk device over (user recovery). That also checks, every
//! round, that lamina reads what dm-thin wrote.

use std::path::Path;
use std::time::{Duration, Instant};

use ::tests::appliance::{POOL_STATE, STORE_MNT, THINPOOL};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::record::{Better, Record};
use crate::image;

pub const SUITE: &str = "guest";
pub const LAMINA: &str = super::report::LAMINA;
pub const OVER_NBD: &str = "lamina over nbd";
pub const DM_THIN: &str = "kernel dm-thin";
pub const RAW: &str = "raw virtio";

/// Interleaved rounds (each subject runs every load once per round).
const ROUNDS: usize = 3;
/// Seconds per measured job, after one second of ramp-up.
const RUNTIME_SECS: u32 = 6;
/// The region every subject is measured on (allocated before measuring).
const REGION: u64 = 256 << 20;
/// The sparse data disk; 4 % of it (~650 MiB) stays outside the volume group.
const DISK: u64 = 16 << 30;
const MEMORY_MIB: u32 = 1024;
const BB: &str = "/bin/busybox";
/// Where `/sbin/thinpool` waits while the kernel owns the pool.
const PARKED: &str = "/sbin/thinpool.bench";
const DAEMON_LOCK: &str = "/run/lamina/pool/lock";
const GUEST_DISK: &str = "/dev/vda";
const NBD: &str = "/dev/nbd0";
/// vCPU counts measured, one VM each (`LAMINA_BENCH_GUEST_CPUS=1` limits a development run
/// to the listed counts).
const CPUS: [u32; 2] = [1, 2];

fn cpu_counts() -> Vec<u32> {
    match std::env::var("LAMINA_BENCH_GUEST_CPUS") {
        Ok(v) => v.split(',').filter_map(|c| c.trim().parse().ok()).collect(),
        Err(_) => CPUS.to_vec(),
    }
}

/// One fio workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// The case name, shared with the host `nbd` suite.
    pub name: &'static str,
    /// fio job name (no spaces).
    pub job: &'static str,
    pub rw: &'static str,
    pub bs: &'static str,
    pub depth: u32,
}

pub const LOADS: [Load; 4] = [
    Load { name: "4k randread qd16", job: "randread4k", rw: "randread", bs: "4k", depth: 16 },
    Load { name: "4k randwrite qd16", job: "randwrite4k", rw: "randwrite", bs: "4k", depth: 16 },
    Load { name: "1M read qd4", job: "read1m", rw: "read", bs: "1M", depth: 4 },
    Load { name: "1M write qd4", job: "write1m", rw: "write", bs: "1M", depth: 4 },
];

impl Load {
    fn is_read(&self) -> bool {
        self.rw.contains("read")
    }

    /// IOPS for 4k loads, MiB/s for 1M loads (as the host suite reports them).
    pub fn unit(&self) -> &'static str {
        if self.bs == "4k" {
            "IOPS"
        } else {
            "MiB/s"
        }
    }
}

/// One fio invocation running every load in turn (`stonewall`) on `dev` at `offset`.
pub fn fio_argv(dev: &str, offset: u64, size: u64, runtime: u32, loads: &[Load]) -> Vec<String> {
    let mut v: Vec<String> = [
        "/usr/bin/fio",
        "--output-format=json",
        "--ioengine=libaio",
        "--direct=1",
        "--randrepeat=0",
        "--time_based",
        "--ramp_time=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("--runtime={runtime}"));
    v.push(format!("--filename={dev}"));
    v.push(format!("--offset={offset}"));
    v.push(format!("--size={size}"));
    for l in loads {
        v.push(format!("--name={}", l.job));
        v.push(format!("--rw={}", l.rw));
        v.push(format!("--bs={}", l.bs));
        v.push(format!("--iodepth={}", l.depth));
        v.push("--stonewall".into());
    }
    v
}

/// Writes the region once, so every later job runs on allocated blocks.
pub fn fill_argv(dev: &str, offset: u64, size: u64) -> Vec<String> {
    [
        "/usr/bin/fio",
        "--output-format=json",
        "--name=fill",
        "--ioengine=libaio",
        "--direct=1",
        "--rw=write",
        "--bs=1M",
        "--iodepth=4",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--filename={dev}"), format!("--offset={offset}"), format!("--size={size}")])
    .collect()
}

/// Parses fio's JSON report (anything fio printed before the JSON is skipped) and returns each
/// load's result in its unit; a job missing, failed or without I/O is an error.
pub fn parse_fio(text: &str, loads: &[Load]) -> Result<Vec<f64>> {
    let start = text.find('{').context("fio printed no JSON")?;
    let v: Value = serde_json::from_str(&text[start..]).context("fio's JSON does not parse")?;
    let jobs = v["jobs"].as_array().context("fio's JSON has no jobs array")?;
    loads
        .iter()
        .map(|l| {
            let job = jobs
                .iter()
                .find(|j| j["jobname"] == l.job)
                .with_context(|| format!("fio's JSON has no job {}", l.job))?;
            let err = job["error"].as_i64().unwrap_or(0);
            ensure!(err == 0, "fio job {} failed with error {err}", l.job);
            let side = if l.is_read() { &job["read"] } else { &job["write"] };
            let value = if l.unit() == "IOPS" {
                side["iops"].as_f64()
            } else {
                side["bw"].as_f64().map(|kib| kib / 1024.0)
            }
            .with_context(|| format!("fio job {} reports no {} result", l.job, l.rw))?;
            ensure!(value > 0.0, "fio job {} did no I/O", l.job);
            Ok(value)
        })
        .collect()
}

/// The records of one subject's run of every load with `cpus` vCPUs.
pub fn records(subject: &str, loads: &[Load], values: &[f64], cpus: u32) -> Vec<Record> {
    loads
        .iter()
        .zip(values)
        .map(|(l, v)| Record {
            suite: SUITE.into(),
            case: format!("{} ({cpus} vCPU)", l.name),
            subject: subject.into(),
            metric: "throughput".into(),
            value: *v,
            unit: l.unit().into(),
            better: Better::Higher,
            x: None,
        })
        .collect()
}

/// First byte past every linear segment of `thinpool dmsetup-table` output, rounded up to
/// 1 MiB: where the disk's unused tail starts.
pub fn free_tail(tables: &str) -> Result<u64> {
    let mut end = 0u64;
    let mut any = false;
    for l in tables.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(2) == Some(&"linear") {
            let len: u64 = f.get(1).and_then(|s| s.parse().ok()).context("linear length")?;
            let off: u64 = f.get(4).and_then(|s| s.parse().ok()).context("linear offset")?;
            end = end.max((off + len) * 512);
            any = true;
        }
    }
    ensure!(any, "no linear segment in:\n{tables}");
    Ok(end.div_ceil(1 << 20) << 20)
}

/// (busy, total) CPU ticks between two `cpu ...` lines of /proc/stat (idle and iowait count
/// as idle).
pub fn cpu_ticks(before: &str, after: &str) -> Option<(u64, u64)> {
    let parse = |l: &str| -> Option<Vec<u64>> {
        let f = l.trim().strip_prefix("cpu ")?;
        f.split_whitespace().map(|x| x.parse().ok()).collect()
    };
    let (a, b) = (parse(before)?, parse(after)?);
    let d: Vec<u64> = b.iter().zip(&a).map(|(b, a)| b.saturating_sub(*a)).collect();
    let total: u64 = d.iter().sum();
    let idle = d.get(3)? + d.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// utime + stime of a `/proc/PID/stat` line (fields 14 and 15; the name may hold spaces).
pub fn proc_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// utime + stime per thread of `cat /proc/PID/task/*/stat`: (tid, name, ticks).
pub fn thread_ticks(dump: &str) -> Vec<(u64, String, u64)> {
    dump.lines()
        .filter_map(|l| {
            let tid = l.split_whitespace().next()?.parse().ok()?;
            let name = l.get(l.find('(')? + 1..l.rfind(')')?)?.to_owned();
            Some((tid, name, proc_ticks(l)?))
        })
        .collect()
}

/// The thread that took the most CPU between two [`thread_ticks`] samples, as its name and
/// its share of one vCPU (`total` ticks over `cpus` vCPUs).
pub fn busiest_thread(
    before: &[(u64, String, u64)],
    after: &[(u64, String, u64)],
    total: u64,
    cpus: u32,
) -> Option<(String, f64)> {
    let per_cpu = total as f64 / f64::from(cpus.max(1));
    after
        .iter()
        .map(|(tid, name, t)| {
            let t0 = before.iter().find(|b| b.0 == *tid).map_or(0, |b| b.2);
            (name, t.saturating_sub(t0))
        })
        .max_by_key(|(_, d)| *d)
        .filter(|_| per_cpu > 0.0)
        .map(|(name, d)| (name.clone(), d as f64 / per_cpu))
}

/// The CPU the daemon's ublk workers (threads `ublk<dev>q<queue>w<n>`) took between two
/// [`thread_ticks`] samples, as a share of one vCPU: requests the queue thread could not
/// serve on its own ring.
pub fn ublk_worker_share(
    before: &[(u64, String, u64)],
    after: &[(u64, String, u64)],
    total: u64,
    cpus: u32,
) -> Option<f64> {
    let is_worker = |n: &str| {
        n.strip_prefix("ublk")
            .and_then(|r| r.split_once('q'))
            .and_then(|(_, r)| r.split_once('w'))
            .is_some_and(|(q, w)| {
                [q, w].iter().all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            })
    };
    let per_cpu = total as f64 / f64::from(cpus.max(1));
    let ticks: u64 = after
        .iter()
        .filter(|(_, name, _)| is_worker(name))
        .map(|(tid, _, t)| t.saturating_sub(before.iter().find(|b| b.0 == *tid).map_or(0, |b| b.2)))
        .sum();
    (per_cpu > 0.0).then(|| ticks as f64 / per_cpu)
}

/// Where the guest's CPU time went during one load.
struct Usage {
    /// Share of non-idle guest CPU time.
    busy: f64,
    /// Share of all guest CPU time spent in lamina's daemon (lamina runs only).
    daemon_share: Option<f64>,
    /// The daemon's busiest thread and its share of one vCPU (lamina runs only): with more
    /// vCPUs than busy threads, one saturated thread is the limit.
    busiest: Option<(String, f64)>,
    /// The ublk workers' share of one vCPU (lamina runs only).
    workers: Option<f64>,
    /// Flushes the guest's data disk completed, and the milliseconds they took.
    disk_flushes: Option<(u64, u64)>,
    /// Requests in flight at the guest's data disk, on average (its `time_in_queue` over the
    /// wall time): how much of the submitter's depth reaches virtio.
    disk_depth: Option<f64>,
}

/// One subject's run of every load: its result and CPU usage, per load.
struct Run {
    values: Vec<f64>,
    usage: Vec<Usage>,
}

/// What [`Guest::sample`] reads before and after a run.
struct Sample {
    stat: String,
    /// `/sys/block/vda/stat`.
    disk: String,
    ticks: Option<u64>,
    threads: Vec<(u64, String, u64)>,
}

/// The CPU usage between two samples.
fn usage(before: &Sample, after: &Sample, cpus: u32) -> Usage {
    let ticks = cpu_ticks(&before.stat, &after.stat).filter(|t| t.1 > 0);
    let daemon_share = match (before.ticks, after.ticks, ticks) {
        (Some(a), Some(b), Some((_, total))) => Some(b.saturating_sub(a) as f64 / total as f64),
        _ => None,
    };
    let busiest =
        ticks.and_then(|(_, total)| busiest_thread(&before.threads, &after.threads, total, cpus));
    let busy = ticks.map_or(f64::NAN, |(busy, total)| busy as f64 / total as f64);
    let disk_flushes = match (disk_flushes(&before.disk), disk_flushes(&after.disk)) {
        (Some(a), Some(b)) => Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1))),
        _ => None,
    };
    // Wall time from the CPU ticks (USER_HZ = 100 on Linux: 10 ms a tick per vCPU).
    let wall_ms = ticks.map(|(_, total)| total as f64 * 10.0 / f64::from(cpus.max(1)));
    let disk_depth = match (disk_queue_ms(&before.disk), disk_queue_ms(&after.disk), wall_ms) {
        (Some(a), Some(b), Some(w)) if w > 0.0 => Some(b.saturating_sub(a) as f64 / w),
        _ => None,
    };
    let workers = ticks
        .filter(|_| before.ticks.is_some())
        .and_then(|(_, total)| ublk_worker_share(&before.threads, &after.threads, total, cpus));
    Usage { busy, daemon_share, busiest, workers, disk_flushes, disk_depth }
}

/// The milliseconds requests spent in flight, summed over requests (`time_in_queue`, field
/// 11 of a block device's `stat` file, Linux Documentation/block/stat.rst).
pub fn disk_queue_ms(stat: &str) -> Option<u64> {
    stat.split_whitespace().nth(10)?.parse().ok()
}

/// Flush requests completed and the milliseconds spent on them, from a block device's
/// `stat` file (fields 16 and 17, Linux Documentation/block/stat.rst).
pub fn disk_flushes(stat: &str) -> Option<(u64, u64)> {
    let f: Vec<u64> = stat.split_whitespace().map(|x| x.parse().ok()).collect::<Option<_>>()?;
    Some((*f.get(15)?, *f.get(16)?))
}

/// The guest-side steps, over the agent; every command is logged.
struct Guest<'a> {
    vm: &'a mut ::tests::TestVm,
    log: String,
}

impl Guest<'_> {
    fn exec(&mut self, argv: &[&str], timeout: Duration) -> Result<String> {
        let t = Instant::now();
        let r = self.vm.agent()?.exec(argv, timeout)?;
        let out = r["stdout"].as_str().unwrap_or("").to_owned();
        let err = r["stderr"].as_str().unwrap_or("");
        self.log.push_str(&format!(
            "$ {} ({:.2}s, exit {})\n{}{err}\n",
            argv.join(" "),
            t.elapsed().as_secs_f64(),
            r["exit_code"],
            if out.len() > 4000 { "(output kept in the records)\n" } else { out.as_str() },
        ));
        if r["exit_code"] != 0 {
            bail!("{argv:?} in the guest: exit {}: {err}", r["exit_code"]);
        }
        Ok(out)
    }

    fn sh(&mut self, script: &str) -> Result<String> {
        self.exec(&[BB, "sh", "-c", script], Duration::from_secs(120))
    }

    /// `/proc/stat`'s `cpu` line and, for `pid`, its utime + stime in ticks, in all and per
    /// thread.
    fn sample(&mut self, pid: Option<&str>) -> Result<Sample> {
        let stat = self.exec(&[BB, "head", "-n1", "/proc/stat"], Duration::from_secs(30))?;
        let disk = self.exec(&[BB, "cat", "/sys/block/vda/stat"], Duration::from_secs(30))?;
        let Some(p) = pid else {
            return Ok(Sample { stat, disk, ticks: None, threads: Vec::new() });
        };
        let ticks = proc_ticks(
            &self.exec(&[BB, "cat", &format!("/proc/{p}/stat")], Duration::from_secs(30))?,
        );
        let threads = thread_ticks(&self.sh(&format!("{BB} cat /proc/{p}/task/*/stat"))?);
        Ok(Sample { stat, disk, ticks, threads })
    }

    /// Runs every load on `dev`, one fio each; also measures, per load, how busy the guest's
    /// CPU was and, for lamina, which share of all CPU time its daemon took and its busiest
    /// thread: under TCG every path is CPU-bound, so these say where the time goes.
    fn fio(&mut self, dev: &str, offset: u64, daemon: bool, cpus: u32) -> Result<Run> {
        let budget = Duration::from_secs(60 + 4 * u64::from(RUNTIME_SECS + 1));
        let pid = if daemon {
            Some(self.exec(&[BB, "cat", DAEMON_LOCK], Duration::from_secs(30))?.trim().to_owned())
        } else {
            None
        };
        let mut run = Run { values: Vec::new(), usage: Vec::new() };
        for load in &LOADS {
            let argv = fio_argv(dev, offset, REGION, RUNTIME_SECS, std::slice::from_ref(load));
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let before = self.sample(pid.as_deref())?;
            let out = self.exec(&argv, budget)?;
            let after = self.sample(pid.as_deref())?;
            let value = parse_fio(&out, std::slice::from_ref(load))
                .with_context(|| format!("fio on {dev}"))?;
            run.values.extend(value);
            run.usage.push(usage(&before, &after, cpus));
        }
        Ok(run)
    }

    /// Stops lamina's daemon with `/sbin/thinpool` parked so init's supervisor cannot start it
    /// again. SIGTERM would not do: the daemon serves the kernel's connection until the kernel
    /// disconnects, and only init can disconnect /dev/nbd0. So: an fsync of /dev/nbd0 (NBD
    /// FLUSH: the daemon commits and syncs the data disk), two seconds more than its commit
    /// interval, SIGKILL, and the guest's page cache of /dev/vda dropped (dm-thin writes
    /// below it).
    fn stop_lamina(&mut self, ublk: &str) -> Result<()> {
        self.sh(&format!(
            "set -e; p=$({BB} cat {DAEMON_LOCK}); {BB} sync -d {NBD}; {BB} sync -d {ublk}; \
             {BB} sleep 2; \
             {BB} mv {THINPOOL} {PARKED}; kill -KILL $p; n=0; \
             while [ -e /proc/$p ] && ! {BB} grep -q '^State:.*Z' /proc/$p/status; do \
             n=$((n+1)); [ $n -lt 600 ] || exit 9; {BB} usleep 50000; done; \
             {BB} blockdev --flushbufs {GUEST_DISK}"
        ))?;
        Ok(())
    }

    /// Drops the page cache of /dev/vda (dm-thin wrote below it), unparks `/sbin/thinpool`
    /// and waits for the supervisor's `restarted` line number `n` and for /dev/nbd0 and the
    /// ublk device (taken over by the new daemon) to answer.
    fn start_lamina(&mut self, n: usize, ublk: &str) -> Result<()> {
        self.sh(&format!("{BB} blockdev --flushbufs {GUEST_DISK}; {BB} mv {PARKED} {THINPOOL}"))?;
        let t = Instant::now();
        while self.vm.console().matches("daemon restarted").count() < n {
            ensure!(t.elapsed() < Duration::from_secs(90), "lamina's daemon did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
        self.sh(&format!("{BB} dd if={NBD} of=/dev/null bs=4096 count=1 iflag=direct"))?;
        self.sh(&format!("{BB} dd if={ublk} of=/dev/null bs=4096 count=1 iflag=direct"))?;
        Ok(())
    }

    fn dm_create(&mut self, d: &::tests::dmthin::DmDevice) -> Result<()> {
        let table = d.table.join("\n");
        self.exec(
            &["/sbin/dmsetup", "create", "--noudevsync", &d.name, "--table", &table],
            Duration::from_secs(60),
        )?;
        // No udev: dmsetup makes /dev/mapper/NAME itself.
        self.exec(&["/sbin/dmsetup", "mknodes", &d.name], Duration::from_secs(60))?;
        Ok(())
    }

    fn dm_remove(&mut self, name: &str) -> Result<()> {
        self.exec(&["/sbin/dmsetup", "remove", "--noudevsync", name], Duration::from_secs(60))?;
        Ok(())
    }
}

/// The dm devices for `store`, in creation order, mapped onto the guest's disk.
fn dm_stack(tables: &str) -> Result<Vec<::tests::dmthin::DmDevice>> {
    let all = ::tests::dmthin::parse_tables(tables);
    let find = |pred: &dyn Fn(&::tests::dmthin::DmDevice) -> bool, what: &str| {
        all.iter().find(|d| pred(d)).cloned().with_context(|| format!("no {what} in:\n{tables}"))
    };
    let tmeta = find(&|d| d.name.ends_with("_tmeta"), "_tmeta")?;
    let tdata = find(&|d| d.name.ends_with("_tdata"), "_tdata")?;
    let pool = find(&|d| d.target() == "thin-pool", "thin-pool")?;
    let store = find(&|d| d.name == format!("{}-store", pool.name), "store thin")?;
    Ok(vec![tmeta.on_device(GUEST_DISK), tdata.on_device(GUEST_DISK), pool, store])
}

pub fn run(root: &Path, jsonl: &Path) -> Result<()> {
    let t0 = Instant::now();
    let say = |m: &str| eprintln!("bench guest [{:6.1}s] {m}", t0.elapsed().as_secs_f64());
    say("building the dm image variant (dmsetup, fio) if it is out of date");
    let img = crate::image_variant::task_image_variant(root, "dm", None)?;
    let home = image::lamina_dir(root);
    let dir = home.join("bench");
    std::fs::create_dir_all(&dir)?;
    let disk = dir.join("guest-disk.raw");
    let mut records = Vec::new();
    for cpus in cpu_counts() {
        let _ = std::fs::remove_file(&disk);
        let mut opts = ::tests::Opts::debug();
        opts.image = Some(img.clone());
        opts.disks = vec![disk.clone()];
        opts.disk_size = DISK;
        opts.memory_mib = MEMORY_MIB;
        opts.cpus = cpus;
        opts.deadline = Duration::from_secs(40 * 60);
        opts.append.extend([
            "lamina.pool.basesize=1G".into(),
            "lamina.agent.max_exec_secs=600".into(),
            "lamina.attach=nbd".into(),
            // Storage only: the container service would hold its layer store's lock on the
            // store's XFS, which the measurement unmounts.
            "lamina.containers=0".into(),
        ]);
        say(&format!("waiting for the VM lock, then booting the dm variant ({cpus} vCPU)"));
        let mut vm = ::tests::TestVm::boot(&format!("bench_guest_{cpus}cpu"), opts)?;
        let ready = vm.wait_ready()?;
        say(&format!("READY after {:.1}s", ready.after.as_secs_f64()));
        let log_dir = vm.log_dir.clone();
        let mut g = Guest { vm: &mut vm, log: String::new() };
        let result = measure(&mut g, cpus, &say);
        std::fs::write(log_dir.join("guest.log"), &g.log)?;
        if result.is_err() {
            // Whether QEMU itself went away (and how) tells a guest failure from a host one.
            match vm.wait_exit(Duration::from_secs(1)) {
                Ok(st) => say(&format!("QEMU had exited: {st:?}")),
                Err(e) => say(&format!("QEMU still running ({e:#})")),
            }
        }
        records
            .extend(result.with_context(|| format!("guest steps (log: {})", log_dir.display()))?);
        let st = vm.stop(Duration::from_secs(60));
        say(&format!("VM stopped ({st:?})"));
        drop(vm);
    }
    let _ = std::fs::remove_file(&disk);
    let text: Vec<String> = records.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
    std::fs::write(jsonl, text.join("\n") + "\n")
        .with_context(|| format!("writing {}", jsonl.display()))
}

fn measure(g: &mut Guest<'_>, cpus: u32, say: &dyn Fn(&str)) -> Result<Vec<Record>> {
    g.sh(&format!("{BB} umount {STORE_MNT}"))?;
    say("XFS unmounted; writing the measured region of the lamina volume once");
    let fill = |g: &mut Guest<'_>, dev: &str, off: u64| -> Result<()> {
        let argv = fill_argv(dev, off, REGION);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        g.exec(&argv, Duration::from_secs(600))?;
        Ok(())
    };
    fill(g, NBD, 0)?;
    // The same volume through the daemon's ublk frontend as well.
    let ublk = g
        .exec(
            &[THINPOOL, "attach", GUEST_DISK, "store", "--state-dir", POOL_STATE],
            Duration::from_secs(60),
        )?
        .trim()
        .to_owned();
    ensure!(ublk.starts_with("/dev/ublkb"), "thinpool attach printed {ublk:?}");
    say(&format!("store attached over ublk as {ublk} too"));
    g.stop_lamina(&ublk)?;
    let tables = g.exec(&[PARKED, "dmsetup-table", GUEST_DISK], Duration::from_secs(60))?;
    let stack = dm_stack(&tables)?;
    let raw_off = free_tail(&tables)? + (1 << 20);
    let size: u64 = g
        .exec(&[BB, "cat", "/sys/block/vda/size"], Duration::from_secs(30))?
        .trim()
        .parse::<u64>()
        .context("/sys/block/vda/size")?
        * 512;
    ensure!(raw_off + REGION <= size, "no {REGION}-byte free tail on the disk ({tables})");
    say(&format!("raw region at {} MiB of {} MiB; writing it once", raw_off >> 20, size >> 20));
    fill(g, GUEST_DISK, raw_off)?;
    let mut restarts = 1;
    g.start_lamina(restarts, &ublk)?;

    let mut out = Vec::new();
    for round in 1..=ROUNDS {
        let v = g.fio(&ublk, 0, true, cpus)?;
        report(say, round, LAMINA, &v);
        out.extend(records(LAMINA, &LOADS, &v.values, cpus));

        let v = g.fio(NBD, 0, true, cpus)?;
        report(say, round, OVER_NBD, &v);
        out.extend(records(OVER_NBD, &LOADS, &v.values, cpus));

        g.stop_lamina(&ublk)?;
        for d in &stack {
            g.dm_create(d)?;
        }
        let thin = format!("/dev/mapper/{}", stack[3].name);
        let v = g.fio(&thin, 0, false, cpus);
        for d in stack.iter().rev() {
            g.dm_remove(&d.name)?;
        }
        let v = v?;
        report(say, round, DM_THIN, &v);
        out.extend(records(DM_THIN, &LOADS, &v.values, cpus));
        restarts += 1;
        g.start_lamina(restarts, &ublk)?;

        let v = g.fio(GUEST_DISK, raw_off, false, cpus)?;
        report(say, round, RAW, &v);
        out.extend(records(RAW, &LOADS, &v.values, cpus));
    }
    Ok(out)
}

fn report(say: &dyn Fn(&str), round: usize, subject: &str, r: &Run) {
    let cells: Vec<String> = LOADS
        .iter()
        .zip(&r.values)
        .zip(&r.usage)
        .map(|((l, v), u)| {
            let mut cpu = format!("CPU {:.0}%", u.busy * 100.0);
            if let Some(d) = u.daemon_share {
                cpu.push_str(&format!(", daemon {:.0}%", d * 100.0));
            }
            if let Some((name, share)) = &u.busiest {
                cpu.push_str(&format!(", {name} {:.0}% of a vCPU", share * 100.0));
            }
            if let Some(w) = u.workers {
                cpu.push_str(&format!(", ublk workers {:.0}%", w * 100.0));
            }
            if let Some(d) = u.disk_depth {
                cpu.push_str(&format!(", vda depth {d:.1}"));
            }
            if let Some((n, ms)) = u.disk_flushes {
                cpu.push_str(&format!(", vda flushes {n} in {ms} ms"));
            }
            format!("{} {v:.0} {} ({cpu})", l.name, l.unit())
        })
        .collect();
    say(&format!("round {round}/{ROUNDS} {subject}: {}", cells.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_flushes_are_fields_16_and_17() {
        let stat = "  4770  0  215618  1399  21553  0  1305032  19203  0  9396  20603  \
                    0  0  0  0  2118  1235";
        assert_eq!(disk_flushes(stat), Some((2118, 1235)));
        assert_eq!(disk_queue_ms(stat), Some(20603));
        // A kernel before 5.5 has no flush fields.
        assert_eq!(disk_flushes("1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"), None);
        assert_eq!(disk_flushes("garbage"), None);
    }

    /// The shape of `fio --output-format=json` 3.33 (trimmed to the fields read here).
    fn fio_json(jobs: &[(&str, f64, f64, f64, f64)]) -> String {
        let jobs: Vec<Value> = jobs
            .iter()
            .map(|(name, riops, rbw, wiops, wbw)| {
                serde_json::json!({
                    "jobname": name, "groupid": 0, "error": 0,
                    "read": {"io_bytes": 1, "bw": rbw, "iops": riops},
                    "write": {"io_bytes": 1, "bw": wbw, "iops": wiops},
                })
            })
            .collect();
        format!(
            "fio: note: something fio warns about\n{}",
            serde_json::json!({"fio version": "fio-3.33", "jobs": jobs})
        )
    }

    #[test]
    fn fio_json_gives_iops_for_4k_and_mib_for_1m() {
        let text = fio_json(&[
            ("randread4k", 5000.5, 20002.0, 0.0, 0.0),
            ("randwrite4k", 0.0, 0.0, 3000.0, 12000.0),
            ("read1m", 200.0, 204800.0, 0.0, 0.0),
            ("write1m", 0.0, 0.0, 100.0, 102400.0),
        ]);
        let v = parse_fio(&text, &LOADS).unwrap();
        assert_eq!(v, [5000.5, 3000.0, 200.0, 100.0]);
        let recs = records(DM_THIN, &LOADS, &v, 1);
        assert_eq!(recs.len(), 4);
        assert_eq!(recs[0].case, "4k randread qd16 (1 vCPU)");
        assert_eq!(recs[0].unit, "IOPS");
        assert_eq!(recs[2].unit, "MiB/s");
        assert!(recs.iter().all(|r| r.suite == "guest" && r.subject == DM_THIN));
        assert!(recs.iter().all(|r| r.better == Better::Higher && r.x.is_none()));
    }

    #[test]
    fn fio_json_errors_are_reported() {
        assert_eq!(
            parse_fio("no json here", &LOADS).unwrap_err().to_string(),
            "fio printed no JSON"
        );
        let one = fio_json(&[("randread4k", 10.0, 40.0, 0.0, 0.0)]);
        let e = parse_fio(&one, &LOADS).unwrap_err().to_string();
        assert!(e.contains("randwrite4k"), "{e}");
        let idle = fio_json(&[("read1m", 0.0, 0.0, 0.0, 0.0)]);
        let e = parse_fio(&idle, &LOADS[2..3]).unwrap_err().to_string();
        assert_eq!(e, "fio job read1m did no I/O", "a job without I/O is an error");
        let failed =
            fio_json(&[("read1m", 1.0, 1024.0, 0.0, 0.0)]).replace("\"error\":0", "\"error\":5");
        assert!(parse_fio(&failed, &LOADS[2..3]).unwrap_err().to_string().contains("error 5"));
    }

    #[test]
    fn one_fio_run_holds_every_load_in_turn() {
        let a = fio_argv("/dev/nbd0", 0, REGION, 6, &LOADS);
        assert!(a.contains(&"--ioengine=libaio".to_string()) && a.contains(&"--direct=1".into()));
        assert!(a.contains(&"--runtime=6".to_string()) && a.contains(&"--time_based".into()));
        assert_eq!(a.iter().filter(|s| s.starts_with("--name=")).count(), 4);
        assert_eq!(a.iter().filter(|s| *s == "--stonewall").count(), 4);
        // Global options precede the first job.
        let first_job = a.iter().position(|s| s.starts_with("--name=")).unwrap();
        let filename = a.iter().position(|s| s == "--filename=/dev/nbd0").unwrap();
        assert!(filename < first_job);
        let f = fill_argv("/dev/vda", 1 << 30, REGION);
        assert!(f.contains(&"--offset=1073741824".to_string()) && f.contains(&"--rw=write".into()));
        assert!(!f.contains(&"--time_based".to_string()), "the fill writes the region once");
    }

    #[test]
    fn the_busiest_thread_is_named_with_its_share_of_one_vcpu() {
        let before = "7 (thinpool) S 1 7 7 0 -1 0 0 0 0 0 10 5 0 0\n\
                      9 (ublk0q0w1) S 1 7 7 0 -1 0 0 0 0 0 0 0 0 0\n";
        let after = "7 (thinpool) S 1 7 7 0 -1 0 0 0 0 0 90 15 0 0\n\
                     9 (ublk0q0w1) S 1 7 7 0 -1 0 0 0 0 0 20 0 0 0\n\
                     11 (control x) S 1 7 7 0 -1 0 0 0 0 0 1 0 0 0\n";
        let (b, a) = (thread_ticks(before), thread_ticks(after));
        assert_eq!(a[2], (11, "control x".to_owned(), 1));
        // 90 of 200 ticks over 2 vCPUs: 90 % of one.
        let (name, share) = busiest_thread(&b, &a, 200, 2).unwrap();
        assert_eq!(name, "thinpool");
        assert!((share - 0.9).abs() < 1e-9, "{share}");
        assert_eq!(busiest_thread(&b, &a, 0, 2), None);
        // Only ublk0q0w1 is a ublk worker: 20 of 100 ticks per vCPU.
        let w = ublk_worker_share(&b, &a, 200, 2).unwrap();
        assert!((w - 0.2).abs() < 1e-9, "{w}");
    }

    #[test]
    fn cpu_ticks_count_idle_and_iowait_as_idle() {
        let a = "cpu  100 0 100 800 0 0 0 0 0 0\n";
        let b = "cpu  175 0 125 850 50 0 0 0 0 0";
        // Δ user 75 + system 25 busy, Δ idle 50 + iowait 50.
        assert_eq!(cpu_ticks(a, b), Some((100, 200)));
        assert_eq!(cpu_ticks("intr 1", b), None);
        let stat = "166 (thin pool) S 1 166 0 0 -1 4194624 900 0 0 0 250 130 0 0 20 0 9 0";
        assert_eq!(proc_ticks(stat), Some(380));
        assert_eq!(proc_ticks("166 (x) S 1"), None);
    }

    #[test]
    fn free_tail_is_past_every_linear_segment() {
        let t = "# lamina-thinpool_tmeta\n0 16384 linear /dev/vda 8192\n\
                 # lamina-thinpool_tdata\n0 1982464 linear /dev/vda 24576\n\
                 # lamina-thinpool\n0 1982464 thin-pool /dev/mapper/a /dev/mapper/b 128 3097 1\n";
        // (24576 + 1982464) sectors = 1027604480 bytes, rounded up to a MiB.
        assert_eq!(free_tail(t).unwrap(), 980 << 20);
        let e = free_tail("# x\n0 8 thin-pool a b 128 1 1\n").unwrap_err().to_string();
        assert!(e.starts_with("no linear segment in:"), "{e}");
        let stack = dm_stack(&format!(
            "{t}# lamina-thinpool-store\n0 2097152 thin /dev/mapper/lamina-thinpool 1\n"
        ))
        .unwrap();
        assert_eq!(stack.len(), 4);
        assert_eq!(stack[3].thin_id(), Some(1));
        let e = dm_stack(t).unwrap_err().to_string();
        assert!(e.starts_with("no store thin in:"), "{e}");
    }
}
