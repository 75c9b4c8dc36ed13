//! Pool engine benchmark (not a timed test): `cargo bench -p thinpool --bench pool`.
//!
//! For pools with 10^3 .. 10^6 mapped blocks it measures snapshot creation (must stay flat),
//! lookups, 4 KiB random reads, provisioning writes and commit latency. Metadata lives in
//! memory (MemDevice); the data device is a sparse null device (reads zeros, drops writes), so
//! the figures are the engine's CPU cost, not a disk's. Prints a table; with BENCH_OUT set,
//! appends xtask's JSON-lines records (suite "thinpool", x = mapped blocks) to that file.

#[path = "../tests/support/null.rs"]
mod null;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use thinpool::io::MemDevice;
use thinpool::pool::{FilePool, Pool};
use thinpool::units::{Bytes, DataBlock, Sectors, ThinId, VirtBlock};

use null::NullDevice;

const BS: u64 = 65536;

struct Row {
    mapped: u64,
    build_s: f64,
    snapshot_us: f64,
    snapshot_commit_ms: f64,
    lookups_per_s: f64,
    reads_4k_per_s: f64,
    provision_per_s: f64,
    commit_ms: f64,
    meta_blocks: u64,
}

fn per_sec(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn run(n: u64) -> Row {
    let data_blocks = n * 2 + 100_000;
    let meta_size =
        FilePool::default_metadata_size(Bytes::new(data_blocks * BS), Sectors(BS / 512)).get() * 2;
    let meta = Arc::new(MemDevice::new(meta_size, "meta"));
    let data = Arc::new(NullDevice(data_blocks * BS));
    let pool = Pool::format(meta, data, Sectors(BS / 512)).unwrap();
    pool.create_thin(ThinId(0)).unwrap();
    let t = Instant::now();
    for vb in 0..n {
        pool.insert_mapping(ThinId(0), VirtBlock(vb), DataBlock(vb), 0).unwrap();
        if vb % 100_000 == 99_999 {
            pool.commit().unwrap();
        }
    }
    pool.commit().unwrap();
    let build = t.elapsed();

    // Snapshot creation: O(1) whatever the size.
    let t = Instant::now();
    for s in 1..=20 {
        pool.create_snap(ThinId(s), ThinId(0)).unwrap();
    }
    let snapshot = t.elapsed() / 20;
    let t = Instant::now();
    pool.create_snap(ThinId(100), ThinId(0)).unwrap();
    pool.commit().unwrap();
    let snapshot_commit = t.elapsed();

    let mut rng = rand::rngs::StdRng::seed_from_u64(n);
    let lookups = 1_000_000u64;
    let t = Instant::now();
    for _ in 0..lookups {
        let vb = rng.gen_range(0..n);
        std::hint::black_box(pool.lookup(ThinId(0), VirtBlock(vb)).unwrap());
    }
    let lookup = t.elapsed();

    let reads = 200_000u64;
    let mut buf = vec![0u8; 4096];
    let t = Instant::now();
    for _ in 0..reads {
        let off = rng.gen_range(0..n * BS / 4096) * 4096;
        pool.read(ThinId(0), off, &mut buf).unwrap();
    }
    let read = t.elapsed();

    // Provisioning: 4 KiB writes into unmapped blocks (allocate, zero-fill, map), and the
    // commit that follows.
    pool.create_thin(ThinId(1000)).unwrap();
    buf.fill(0x5A); // all-zero writes would allocate nothing
    let writes = 20_000u64;
    let t = Instant::now();
    let mut commit_total = Duration::ZERO;
    for i in 0..writes {
        pool.write(ThinId(1000), i * BS, &buf).unwrap();
        if i % 1000 == 999 {
            let c = Instant::now();
            pool.commit().unwrap();
            commit_total += c.elapsed();
        }
    }
    let provision = t.elapsed() - commit_total;
    pool.self_check().unwrap();
    Row {
        mapped: n,
        build_s: build.as_secs_f64(),
        snapshot_us: snapshot.as_secs_f64() * 1e6,
        snapshot_commit_ms: snapshot_commit.as_secs_f64() * 1e3,
        lookups_per_s: per_sec(lookups, lookup),
        reads_4k_per_s: per_sec(reads, read),
        provision_per_s: per_sec(writes, provision),
        commit_ms: commit_total.as_secs_f64() * 1e3 / (writes / 1000) as f64,
        meta_blocks: pool.metadata_usage().used.0,
    }
}

fn main() {
    // `cargo test --all-targets` runs bench targets too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run with `cargo bench` or `cargo xtask bench`");
        return;
    }
    let sizes: Vec<u64> = match std::env::var("BENCH_SIZES") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![1_000, 10_000, 100_000, 1_000_000],
    };
    let mut out = std::env::var("BENCH_OUT")
        .ok()
        .map(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).expect("BENCH_OUT"));
    println!(
        "{:>9} {:>8} {:>9} {:>11} {:>12} {:>11} {:>12} {:>10} {:>8}",
        "mapped",
        "build s",
        "snap us",
        "snap+cmt ms",
        "lookups/s",
        "4K reads/s",
        "provision/s",
        "commit ms",
        "md blks"
    );
    for n in sizes {
        let r = run(n);
        println!(
            "{:>9} {:>8.2} {:>9.1} {:>11.2} {:>12.0} {:>11.0} {:>12.0} {:>10.2} {:>8}",
            r.mapped,
            r.build_s,
            r.snapshot_us,
            r.snapshot_commit_ms,
            r.lookups_per_s,
            r.reads_4k_per_s,
            r.provision_per_s,
            r.commit_ms,
            r.meta_blocks
        );
        if let Some(f) = out.as_mut() {
            // xtask's record format: one scaling series per figure, x = mapped blocks.
            let series: [(&str, &str, f64, &str, &str); 6] = [
                ("snapshot", "latency", r.snapshot_us, "us", "lower"),
                ("snapshot + commit", "latency", r.snapshot_commit_ms * 1000.0, "us", "lower"),
                ("commit of 1000 writes", "latency", r.commit_ms * 1000.0, "us", "lower"),
                ("lookup", "rate", r.lookups_per_s, "ops/s", "higher"),
                ("4K read", "rate", r.reads_4k_per_s, "ops/s", "higher"),
                ("provisioning write", "rate", r.provision_per_s, "ops/s", "higher"),
            ];
            let line = series
                .iter()
                .map(|(case, metric, value, unit, better)| {
                    serde_json::json!({
                        "suite": "thinpool", "case": case, "subject": "lamina", "metric": metric,
                        "value": value, "unit": unit, "better": better, "x": r.mapped,
                    })
                    .to_string()
                })
                .collect::<Vec<_>>()
                .join("\n");
            writeln!(f, "{line}").expect("writing BENCH_OUT");
        }
    }
}
