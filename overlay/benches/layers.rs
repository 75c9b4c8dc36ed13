//! Layer store benchmark (not a timed test): `cargo bench -p overlay --bench layers`.
//!
//! 1. Import of a multi-layer image built with umoci vs `umoci unpack` of the same image
//!    (goal: import ≥ 2× faster).
//! 2. Container create (+ mount) on an image holding one big file, overlay vs vfs, for two
//!    file sizes, and on the 10k-file image (goal: overlay < 50 ms and flat in image size).
//!
//! Prints a table; with `BENCH_OUT=file`, appends one JSON line per figure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use overlay::{Driver, Store};

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn umoci(args: &[&str]) {
    run(Command::new("umoci").args(args));
}

/// Five layers of small files (a source tree's worth) plus the busybox binary.
fn build_image(dir: &Path) -> PathBuf {
    let img = dir.join("img");
    let ib = |t: &str| format!("{}:{t}", img.display());
    umoci(&["init", "--layout", img.to_str().unwrap()]);
    umoci(&["new", "--image", &ib("t0")]);
    for layer in 1..=5 {
        let b = dir.join(format!("b{layer}"));
        umoci(&["unpack", "--image", &ib(&format!("t{}", layer - 1)), b.to_str().unwrap()]);
        let r = b.join("rootfs");
        if layer == 1 {
            std::fs::create_dir_all(r.join("bin")).unwrap();
            std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
        }
        for d in 0..20 {
            let dd = r.join(format!("layer{layer}/dir{d}"));
            std::fs::create_dir_all(&dd).unwrap();
            for f in 0..100 {
                std::fs::write(
                    dd.join(format!("file{f}.txt")),
                    format!("layer {layer} dir {d} file {f}\n").repeat(40),
                )
                .unwrap();
            }
        }
        if layer > 1 {
            std::fs::remove_dir_all(r.join(format!("layer{}/dir0", layer - 1))).unwrap();
        }
        umoci(&["repack", "--image", &ib(&format!("t{layer}")), b.to_str().unwrap()]);
        std::fs::remove_dir_all(&b).unwrap();
    }
    img
}

/// An OCI layout with one uncompressed layer holding `size` bytes of incompressible data.
fn big_file_image(dir: &Path, size: usize) -> PathBuf {
    let mut data = vec![0u8; size];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let mut b = tar::Builder::new(Vec::with_capacity(size + 4096));
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_000_000_000);
    h.set_size(size as u64);
    b.append_data(&mut h, "big.bin", &data[..]).unwrap();
    let layer = b.into_inner().unwrap();
    drop(data);
    let l = dir.join("layout");
    std::fs::create_dir_all(l.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| {
        let d = overlay::Digest::of(bytes);
        std::fs::write(l.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    };
    let ld = put(&layer);
    let config = serde_json::to_vec(&serde_json::json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [ld]}})).unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]})).unwrap();
    let md = put(&manifest);
    std::fs::write(l.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        l.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len()}]})).unwrap(),
    )
    .unwrap();
    l
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Out {
    rows: Vec<(String, String, f64)>,
    file: Option<std::fs::File>,
}

impl Out {
    /// One measurement in xtask's record format: lamina's overlay store is subject "lamina";
    /// the peers are `umoci unpack` and the vfs driver (Docker's slow baseline).
    fn record(&mut self, case: &str, subject: &str, value_ms: f64) {
        self.rows.push((case.to_string(), subject.to_string(), value_ms));
        if let Some(f) = &mut self.file {
            let line = serde_json::json!({
                "suite": "layers", "case": case, "subject": subject, "metric": "time",
                "value": value_ms, "unit": "ms", "better": "lower",
            });
            writeln!(f, "{line}").unwrap();
        }
    }
}

fn sync() {
    rustix::fs::sync();
}

fn main() {
    // `cargo test --all-targets` runs bench targets too; measure only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        println!("benchmark: run with `cargo bench` or `cargo xtask bench`");
        return;
    }
    // `cargo bench` passes flags like --bench; nothing to parse.
    // `cargo xtask bench layers` points BENCH_DIR at a scratch XFS (the store's filesystem in
    // the appliance); the filesystem is named in every case.
    let base = std::env::var_os("BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let fs = overlay::backing::fs_name(&base).unwrap_or("unknown fs");
    println!("layers bench in {} ({fs})", base.display());
    let t = tempfile::tempdir_in(&base).unwrap();
    let mut out = Out {
        rows: Vec::new(),
        file: std::env::var_os("BENCH_OUT")
            .map(|p| std::fs::OpenOptions::new().create(true).append(true).open(p).unwrap()),
    };

    // 1. import vs umoci unpack
    let img = build_image(t.path());
    let runs = 3;
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..runs {
        // Alternate which tool goes first: the machine's page cache and writeback state
        // otherwise favour one of them.
        for turn in 0..2 {
            sync();
            if (i + turn) % 2 == 0 {
                let root = t.path().join(format!("store{i}"));
                let s = Store::open(&root, Driver::Overlay).unwrap();
                let t0 = Instant::now();
                s.import_image(&img, Some("t5"), Some("bench:5")).unwrap();
                ours.push(t0.elapsed());
                drop(s);
                std::fs::remove_dir_all(&root).unwrap();
            } else {
                let dst = t.path().join(format!("unpack{i}"));
                let t0 = Instant::now();
                umoci(&[
                    "unpack",
                    "--image",
                    &format!("{}:t5", img.display()),
                    dst.to_str().unwrap(),
                ]);
                theirs.push(t0.elapsed());
                std::fs::remove_dir_all(&dst).unwrap();
            }
        }
    }
    let (a, b) = (median(ours), median(theirs));
    let case = format!("import 5-layer image (10k files, gzip) on {fs}");
    out.record(&case, "lamina", ms(a));
    out.record(&case, "umoci unpack", ms(b));

    // 2. container create: overlay vs vfs, two sizes of a one-file image, then the 10k-file
    // image. On XFS (reflink=1, mkfs.xfs's default and the appliance's) the vfs copy shares
    // file data, so its cost grows with the number of files rather than the bytes.
    let create_mount = |out: &mut Out, s: &Store, image: &str, case: &str, subject: &str| {
        let mut times = Vec::new();
        for i in 0..3 {
            sync();
            let name = format!("c{i}");
            let t0 = Instant::now();
            s.create(image, &name, None).unwrap();
            s.mount(&name).unwrap();
            times.push(t0.elapsed());
            s.remove(&name).unwrap();
        }
        out.record(case, subject, ms(median(times)));
    };
    let subject_of = |d: Driver| if d == Driver::Overlay { "lamina" } else { "vfs driver" };
    for size_mb in [20usize, 200] {
        let dir = t.path().join(format!("big{size_mb}"));
        let layout = big_file_image(&dir, size_mb << 20);
        for driver in [Driver::Overlay, Driver::Vfs] {
            let root = dir.join(format!("store-{}", driver.name()));
            let s = Store::open(&root, driver).unwrap();
            let t0 = Instant::now();
            s.import(&layout, Some("big:1")).unwrap();
            let imp = t0.elapsed();
            out.record(&format!("import {size_mb} MB image on {fs}"), subject_of(driver), ms(imp));
            let case = format!("create+mount on {size_mb} MB image on {fs}");
            create_mount(&mut out, &s, "big:1", &case, subject_of(driver));
            drop(s);
            std::fs::remove_dir_all(&root).unwrap();
        }
    }
    for driver in [Driver::Overlay, Driver::Vfs] {
        let root = t.path().join(format!("files-{}", driver.name()));
        let s = Store::open(&root, driver).unwrap();
        s.import_image(&img, Some("t5"), Some("bench:5")).unwrap();
        let case = format!("create+mount on 5-layer image (10k files) on {fs}");
        create_mount(&mut out, &s, "bench:5", &case, subject_of(driver));
    }

    println!("\n{:<48} {:<14} {:>10}", "case", "subject", "ms");
    for (case, subject, v) in &out.rows {
        println!("{case:<48} {subject:<14} {v:>10.1}");
    }
}
