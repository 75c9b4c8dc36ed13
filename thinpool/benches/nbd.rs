//! Loopback NBD throughput: our server vs `nbdkit file` and `qemu-nbd -f raw`, all serving the
//! same tmpfs file over unix sockets, measured with fio's nbd engine, interleaved per round.
//! A sanity check, not a timed test: `cargo bench -p thinpool --bench nbd [-- SECONDS ROUNDS]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use thinpool::nbd::file::FileExport;
use thinpool::nbd::mem::MemCatalog;
use thinpool::nbd::{Server, ServerOptions};

const SIZE: u64 = 512 << 20;

struct Load {
    name: &'static str,
    rw: &'static str,
    bs: &'static str,
    depth: u32,
}

const LOADS: [Load; 4] = [
    Load { name: "4k randread qd16", rw: "randread", bs: "4k", depth: 16 },
    Load { name: "4k randwrite qd16", rw: "randwrite", bs: "4k", depth: 16 },
    Load { name: "1M seq read qd4", rw: "read", bs: "1M", depth: 4 },
    Load { name: "1M seq write qd4", rw: "write", bs: "1M", depth: 4 },
];

fn wait_for(path: &Path) {
    let t0 = Instant::now();
    while !path.exists() {
        assert!(t0.elapsed() < Duration::from_secs(20), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Runs one fio job; returns (IOPS, MiB/s).
fn fio(sock: &Path, export: &str, l: &Load, secs: u32) -> (f64, f64) {
    let uri = format!("--uri=nbd+unix:///{export}?socket={}", sock.display());
    let out = Command::new("fio")
        .args([
            "--name=bench",
            "--ioengine=nbd",
            &uri,
            &format!("--rw={}", l.rw),
            &format!("--bs={}", l.bs),
            &format!("--iodepth={}", l.depth),
            &format!("--size={SIZE}"),
            "--time_based",
            &format!("--runtime={secs}"),
            "--output-format=json",
        ])
        .output()
        .expect("fio must be installed");
    assert!(out.status.success(), "fio failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&text[text.find('{').expect("json")..]).expect("fio json");
    let job = &v["jobs"][0];
    let side = if l.rw.contains("read") { &job["read"] } else { &job["write"] };
    (side["iops"].as_f64().unwrap_or(0.0), side["bw"].as_f64().unwrap_or(0.0) / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let secs: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    // Optional third argument: only loads whose name contains it (e.g. "read").
    let only = args.get(2).cloned().unwrap_or_default();
    let dir = tempfile::tempdir_in("/dev/shm").expect("tmpfs dir");
    let img: PathBuf = dir.path().join("bench.img");
    // Real data everywhere, so no server can win by sending holes.
    {
        let exp = FileExport::create(&img, SIZE).expect("image");
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut buf = vec![0u8; 1 << 20];
        for chunk in 0..(SIZE >> 20) {
            for b in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            thinpool::nbd::Export::write(&exp, chunk << 20, &buf, false).unwrap();
        }
    }
    let ours_sock = dir.path().join("ours.sock");
    let cat = Arc::new(MemCatalog::new());
    cat.insert("disk", "", Arc::new(FileExport::open(&img, false).unwrap()));
    // The same data in a thin volume of a pool on tmpfs (64 KiB blocks), served by the same
    // server, to see what the pool's data path costs on top of the protocol.
    let pool_dir = dir.path().join("pool");
    {
        let pool = thinpool::pool::FilePool::create(
            &pool_dir,
            SIZE + (64 << 20),
            None,
            thinpool::units::Sectors(128),
        )
        .expect("pool");
        pool.create_volume("vol", SIZE).unwrap();
        let id = pool.volume("vol").unwrap().id;
        let src = std::fs::File::open(&img).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for chunk in 0..(SIZE >> 20) {
            std::os::unix::fs::FileExt::read_exact_at(&src, &mut buf, chunk << 20).unwrap();
            pool.write(id, chunk << 20, &buf).unwrap();
        }
        pool.commit().unwrap();
    }
    let svc = thinpool::service::Service::open(
        &thinpool::service::PoolSource::Dir(pool_dir.clone()),
        thinpool::service::ServiceOptions::default(),
    )
    .unwrap();
    let pool_cat = thinpool::nbd::pool::PoolCatalog::new(Arc::new(svc));
    cat.insert("pool", "", thinpool::nbd::Catalog::open(&pool_cat, "vol").unwrap());
    let server = Server::new(cat, ServerOptions::default());
    server.listen_unix(&ours_sock).unwrap();

    let kit_sock = dir.path().join("nbdkit.sock");
    let mut kit =
        spawn(Command::new("nbdkit").args(["-f", "-U"]).arg(&kit_sock).arg("file").arg(&img));
    let qemu_sock = dir.path().join("qemu.sock");
    let mut qemu = spawn(
        Command::new("qemu-nbd")
            .args(["-f", "raw", "-t", "-e", "16", "-x", "disk", "--cache=writeback", "-k"])
            .arg(&qemu_sock)
            .arg(&img),
    );
    wait_for(&kit_sock);
    wait_for(&qemu_sock);
    let servers: [(&str, &Path, &str); 4] = [
        ("lamina", &ours_sock, "disk"),
        ("nbdkit", &kit_sock, ""),
        ("qemu-nbd", &qemu_sock, "disk"),
        ("lamina-pool", &ours_sock, "pool"),
    ];
    // results[load][server] = list of (iops, MiB/s)
    let mut results = vec![vec![Vec::new(); servers.len()]; LOADS.len()];
    for round in 0..rounds {
        for (li, l) in LOADS.iter().enumerate() {
            if !l.name.contains(&only) {
                continue;
            }
            for (si, (name, sock, export)) in servers.iter().enumerate() {
                let r = fio(sock, export, l, secs);
                eprintln!(
                    "round {round} {:18} {:9} {:>9.0} IOPS {:>8.1} MiB/s",
                    l.name, name, r.0, r.1
                );
                results[li][si].push(r);
            }
        }
    }
    println!(
        "\n{:18} | {:>22} | {:>22} | {:>22} | {:>22} | ours/nbdkit | ours/qemu",
        "load (median)", "lamina (file)", "nbdkit", "qemu-nbd", "lamina (thin pool)"
    );
    for (li, l) in LOADS.iter().enumerate() {
        if results[li][0].is_empty() {
            continue;
        }
        let med: Vec<(f64, f64)> = results[li]
            .iter()
            .map(|v| {
                let mut v = v.clone();
                v.sort_by(|a, b| a.0.total_cmp(&b.0));
                let (lo, hi) = (v[(v.len() - 1) / 2], v[v.len() / 2]);
                ((lo.0 + hi.0) / 2.0, (lo.1 + hi.1) / 2.0)
            })
            .collect();
        let cell = |(iops, bw): (f64, f64)| format!("{iops:>8.0} IOPS {bw:>7.1} MiB/s");
        println!(
            "{:18} | {} | {} | {} | {} | {:>11.2} | {:>9.2}",
            l.name,
            cell(med[0]),
            cell(med[1]),
            cell(med[2]),
            cell(med[3]),
            med[0].0 / med[1].0,
            med[0].0 / med[2].0
        );
    }
    let _ = kit.kill();
    let _ = qemu.kill();
    let _ = kit.wait();
    let _ = qemu.wait();
    server.shutdown(Duration::from_secs(5));
}
