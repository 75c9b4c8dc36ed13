//! NBD throughput, lamina against the userspace peers, all on the same tmpfs, measured with fio's
//! nbd engine over unix sockets and interleaved round by round (`cargo xtask bench nbd`, or
//! `cargo bench -p thinpool --bench nbd [-- SECONDS ROUNDS]`).
//!
//! Subjects: lamina = the real `thinpool serve` daemon serving a thin volume of a pool on tmpfs;
//! `nbdkit file` and `qemu-nbd raw` serve a raw file; `qemu-nbd qcow2` a qcow2 image.
//! Cases:
//! - 4k randread qd16, 4k randwrite qd16, 1M read qd4, 1M write qd4 on an allocated volume
//!   (every block holds random data, so nobody wins by sending holes);
//! - 1M write qd4 into a fresh volume (provisioning: thin blocks, sparse raw, qcow2 clusters);
//! - the CoW case: 4k random writes into a volume that was just snapshotted (every first write
//!   to a block copies it), against writes into a qcow2 overlay on a raw backing file.
//!
//! With BENCH_OUT set, appends `xtask`'s JSON-lines records (suite "nbd") to that file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SIZE: u64 = 512 << 20;
/// I/O per CoW run: enough to touch most 64 KiB blocks of the volume once.
const COW_IO: &str = "96M";

struct Load {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    depth: u32,
}

const LOADS: [Load; 4] = [
    Load { name: "4k randread qd16", rw: "randread", bs: "4k", depth: 16 },
    Load { name: "4k randwrite qd16", rw: "randwrite", bs: "4k", depth: 16 },
    Load { name: "1M read qd4", rw: "read", bs: "1M", depth: 4 },
    Load { name: "1M write qd4", rw: "write", bs: "1M", depth: 4 },
];

fn wait_for(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, sock: &Path) -> Server {
    let _ = std::fs::remove_file(sock);
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (cargo xtask setup installs the peers)"));
    wait_for(sock);
    Server(child)
}

fn nbdkit(sock: &Path, file: &Path) -> Server {
    spawn(Command::new("nbdkit").args(["-f", "-U"]).arg(sock).arg("file").arg(file), sock)
}

fn qemu_nbd(sock: &Path, format: &str, file: &Path) -> Server {
    // -e 16: as many clients as fio may open; writeback cache as qemu-nbd users run it.
    spawn(
        Command::new("qemu-nbd")
            .args(["-f", format, "-t", "-e", "16", "--cache=writeback", "--aio=threads", "-k"])
            .arg(sock)
            .arg(file),
        sock,
    )
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn thinpool(args: &[&str]) {
    run(Command::new(env!("CARGO_BIN_EXE_thinpool")).args(args));
}

fn qemu_img(args: &[&str]) {
    run(Command::new("qemu-img").args(args));
}

/// How a fio job is bounded: by time, or by an amount of I/O.
enum Bound<'a> {
    Seconds(u32),
    Bytes(&'a str),
}

/// Runs one fio job; returns IOPS for 4k loads, MiB/s for 1M loads.
fn fio(sock: &Path, export: &str, l: &Load, bound: Bound<'_>) -> f64 {
    let uri = format!("--uri=nbd+unix:///{export}?socket={}", sock.display());
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=bench",
        "--ioengine=nbd",
        &uri,
        &format!("--rw={}", l.rw),
        &format!("--bs={}", l.bs),
        &format!("--iodepth={}", l.depth),
        &format!("--size={SIZE}"),
        "--randrepeat=0",
        "--output-format=json",
    ]);
    match bound {
        Bound::Seconds(s) => cmd.args(["--time_based", &format!("--runtime={s}")]),
        Bound::Bytes(b) => cmd.arg(format!("--io_size={b}")),
    };
    let out = cmd.output().expect("fio must be installed (cargo xtask setup)");
    assert!(out.status.success(), "fio failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&text[text.find('{').expect("fio json")..]).expect("fio json");
    let job = &v["jobs"][0];
    let side = if l.rw.contains("read") { &job["read"] } else { &job["write"] };
    if l.bs == "4k" {
        side["iops"].as_f64().unwrap_or(0.0)
    } else {
        side["bw"].as_f64().unwrap_or(0.0) / 1024.0
    }
}

fn fill_random(path: &Path) {
    let mut f = std::fs::File::create(path).expect("image");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..(SIZE >> 20) {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
}

struct Results {
    out: Option<std::fs::File>,
    rows: Vec<(String, String, f64, &'static str)>,
}

impl Results {
    fn add(&mut self, case: &str, subject: &str, value: f64, unit: &'static str) {
        eprintln!("  {case:22} {subject:14} {value:>10.1} {unit}");
        if let Some(f) = self.out.as_mut() {
            let rec = serde_json::json!({
                "suite": "nbd", "case": case, "subject": subject, "metric": "throughput",
                "value": value, "unit": unit, "better": "higher",
            });
            writeln!(f, "{rec}").expect("writing BENCH_OUT");
        }
        self.rows.push((case.into(), subject.into(), value, unit));
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run with `cargo bench` or `cargo xtask bench`");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(4);
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let dir = tempfile::tempdir_in("/dev/shm").expect("a tmpfs directory in /dev/shm");
    let d = |name: &str| -> PathBuf { dir.path().join(name) };
    let mut res = Results {
        out: std::env::var("BENCH_OUT").ok().map(|p| {
            std::fs::OpenOptions::new().create(true).append(true).open(p).expect("BENCH_OUT")
        }),
        rows: Vec::new(),
    };

    eprintln!("nbd bench: preparing {} MiB images on tmpfs", SIZE >> 20);
    let raw = d("disk.raw");
    fill_random(&raw);
    let qcow = d("disk.qcow2");
    qemu_img(&["convert", "-O", "qcow2", raw.to_str().unwrap(), qcow.to_str().unwrap()]);
    let pool = d("pool");
    let p = pool.to_str().unwrap();
    thinpool(&["init", p, "--data-size", &format!("{}", 6 * SIZE)]);
    thinpool(&["import", p, "vol", raw.to_str().unwrap()]);
    // The CoW case snapshots its own volume: after a snapshot every older block of the origin
    // counts as shared (dm-thin's time rule) until rewritten, even once the snapshot is gone,
    // so snapshotting `vol` would turn later rounds' overwrites into copy-on-write.
    thinpool(&["import", p, "cow", raw.to_str().unwrap()]);
    let lamina_sock = d("lamina.sock");
    let _lamina = spawn(
        Command::new(env!("CARGO_BIN_EXE_thinpool")).args([
            "serve",
            p,
            "--listen",
            "none",
            "--socket",
            lamina_sock.to_str().unwrap(),
        ]),
        &lamina_sock,
    );
    let (kit_sock, qraw_sock, qcow_sock) = (d("nbdkit.sock"), d("qraw.sock"), d("qcow.sock"));
    let _kit = nbdkit(&kit_sock, &raw);
    let _qraw = qemu_nbd(&qraw_sock, "raw", &raw);
    let _qcow = qemu_nbd(&qcow_sock, "qcow2", &qcow);
    let allocated: [(&str, &Path, &str); 4] = [
        ("lamina", &lamina_sock, "vol"),
        ("nbdkit file", &kit_sock, ""),
        ("qemu-nbd raw", &qraw_sock, ""),
        ("qemu-nbd qcow2", &qcow_sock, ""),
    ];
    let fresh_load = &LOADS[3];
    let cow_load = &LOADS[1];
    for round in 1..=rounds {
        eprintln!("nbd bench: round {round}/{rounds}");
        for l in &LOADS {
            for (subject, sock, export) in &allocated {
                let v = fio(sock, export, l, Bound::Seconds(secs));
                res.add(l.name, subject, v, if l.bs == "4k" { "IOPS" } else { "MiB/s" });
            }
        }
        // Fresh volumes: every write provisions.
        let fresh = format!("fresh{round}");
        thinpool(&["create", p, &fresh, "--size", &SIZE.to_string()]);
        let v = fio(&lamina_sock, &fresh, fresh_load, Bound::Bytes("512M"));
        res.add("1M write, fresh volume", "lamina", v, "MiB/s");
        thinpool(&["remove", p, &fresh]);
        let fsock = d("fresh.sock");
        for subject in ["nbdkit file", "qemu-nbd raw", "qemu-nbd qcow2"] {
            let image = d("fresh.img");
            let _ = std::fs::remove_file(&image);
            let server = match subject {
                "nbdkit file" | "qemu-nbd raw" => {
                    std::fs::File::create(&image).unwrap().set_len(SIZE).unwrap();
                    if subject == "nbdkit file" {
                        nbdkit(&fsock, &image)
                    } else {
                        qemu_nbd(&fsock, "raw", &image)
                    }
                }
                _ => {
                    let img = image.to_str().unwrap();
                    qemu_img(&["create", "-q", "-f", "qcow2", img, &SIZE.to_string()]);
                    qemu_nbd(&fsock, "qcow2", &image)
                }
            };
            let v = fio(&fsock, "", fresh_load, Bound::Bytes("512M"));
            res.add("1M write, fresh volume", subject, v, "MiB/s");
            drop(server);
        }

        // CoW: a fresh snapshot of the filled volume, then random writes to the origin.
        let snap = format!("snap{round}");
        thinpool(&["snapshot", p, "cow", &snap]);
        let v = fio(&lamina_sock, "cow", cow_load, Bound::Bytes(COW_IO));
        res.add("4k randwrite after snapshot", "lamina", v, "IOPS");
        thinpool(&["remove", p, &snap]);
        let overlay = d("overlay.qcow2");
        let _ = std::fs::remove_file(&overlay);
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            raw.to_str().unwrap(),
            overlay.to_str().unwrap(),
        ]);
        let server = qemu_nbd(&fsock, "qcow2", &overlay);
        let v = fio(&fsock, "", cow_load, Bound::Bytes(COW_IO));
        res.add("4k randwrite after snapshot", "qemu-nbd qcow2", v, "IOPS");
        drop(server);
    }
    println!(
        "\nnbd bench: {} measurements (medians and ratios: cargo xtask bench nbd)",
        res.rows.len()
    );
}
