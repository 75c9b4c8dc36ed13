//! Layer store benchmark (not a timed test): `cargo bench -p overlay --bench layers`.
//!
//! 1. Import of a multi-layer image built with umoci vs `umoci unpack` of the same image
//!    (goal: import ≥ 2× faster).
//! 2. The drivers (overlay, vfs, btrfs, devicemapper) on the same images (one big file of
//!    20 or 200 MB, and the 10k-file image): import, create+mount (goal: overlay < 50 ms, and
//!    overlay and devicemapper flat in image size), commit of a 1 MiB change, and the space
//!    the 200 MB image plus 10 containers take.
//!
//! Prints a table; with `BENCH_OUT=file`, appends one JSON line per figure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use overlay::{Driver, Store};

// The integration tests' support module: tools, image builders, the loop-device provider.
#[path = "../tests/support/mod.rs"]
mod support;

use support::{layout_with_layers, loopdev, simple_tar, umoci};

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
    let layer = simple_tar(&[("big.bin", &data)]);
    drop(data);
    layout_with_layers(dir, &[layer], &[])
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The drivers compared. devicemapper runs over loop devices whose volumes are reflinked
/// files on btrfs (`tests/support/loopdev.rs`): thin-snapshot-like sharing on the host, where
/// the appliance's pool cannot attach block devices; the VM tier runs it on the pool.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bench {
    Overlay,
    Vfs,
    Btrfs,
    Devicemapper,
}

impl Bench {
    fn name(self) -> &'static str {
        match self {
            Bench::Overlay => "overlay",
            Bench::Vfs => "vfs",
            Bench::Btrfs => "btrfs",
            Bench::Devicemapper => "devicemapper",
        }
    }

    fn subject(self) -> &'static str {
        match self {
            Bench::Overlay => "lamina",
            Bench::Vfs => "vfs driver",
            Bench::Btrfs => "btrfs driver",
            Bench::Devicemapper => "devicemapper driver",
        }
    }

    fn open(self, root: &Path, pool: Option<&Path>) -> Store {
        match self {
            Bench::Overlay => Store::open(root, Driver::Overlay).unwrap(),
            Bench::Vfs => Store::open(root, Driver::Vfs).unwrap(),
            Bench::Btrfs => Store::open(root, Driver::Btrfs).unwrap(),
            Bench::Devicemapper => Store::open_devicemapper(
                root,
                overlay::devmapper::DmOptions::parse(&["dm.basesize=1G", "dm.fs=xfs"]).unwrap(),
                Box::new(loopdev::LoopProvider::new(pool.unwrap(), 8 << 30)),
            )
            .unwrap(),
        }
    }

    /// Bytes in use where the driver keeps its data: the filesystem under the store, or the
    /// pool's data space.
    /// Bytes in use where the driver keeps its data: the filesystem under the store, plus for
    /// devicemapper the btrfs under its reflinked volumes (statvfs counts shared extents once,
    /// as a thin pool's Data Space Used counts shared blocks once).
    fn used(self, _s: &Store, work: &Path, pool: Option<&Path>) -> u64 {
        let used = |p: &Path| {
            rustix::fs::syncfs(std::fs::File::open(p).unwrap()).unwrap();
            let st = rustix::fs::statvfs(p).unwrap();
            (st.f_blocks - st.f_bfree) * st.f_frsize
        };
        match (self, pool) {
            (Bench::Devicemapper, Some(p)) => used(work) + used(p),
            _ => used(work),
        }
    }
}

struct Out {
    rows: Vec<(String, String, f64)>,
    file: Option<std::fs::File>,
}

impl Out {
    /// One measurement in xtask's record format: lamina's overlay store is subject "lamina";
    /// the peers are `umoci unpack` and the vfs driver (Docker's slow baseline).
    /// A time; `fs` names the filesystem in the case, or is empty for the driver cases
    /// (overlay, vfs and devicemapper's store on XFS, btrfs on btrfs).
    fn record(&mut self, case: &str, subject: &str, value_ms: f64, fs: &str) {
        let case = if fs.is_empty() { case.to_string() } else { format!("{case} on {fs}") };
        self.line(serde_json::json!({
            "suite": "layers", "case": case, "subject": subject, "metric": "time",
            "value": value_ms, "unit": "ms", "better": "lower",
        }));
        self.rows.push((case, subject.to_string(), value_ms));
    }

    /// Space in MB (lower is better).
    fn space(&mut self, case: &str, subject: &str, mb: f64) {
        self.line(serde_json::json!({
            "suite": "layers", "case": case, "subject": subject, "metric": "space",
            "value": mb, "unit": "MB", "better": "lower",
        }));
        self.rows.push((case.to_string(), format!("{subject} (MB)"), mb));
    }

    /// A point of a line plot: `value_ms` at image size `x` (MB), one line per driver.
    fn scaling(&mut self, metric: &str, driver: &str, value_ms: f64, x: f64) {
        self.line(serde_json::json!({
            "suite": "layers", "case": driver, "subject": "lamina", "metric": metric,
            "value": value_ms, "unit": "ms", "better": "lower", "x": x,
        }));
    }

    fn line(&mut self, v: serde_json::Value) {
        if let Some(f) = &mut self.file {
            writeln!(f, "{v}").unwrap();
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
    let case = "import 5-layer image (10k files, gzip)";
    out.record(case, "lamina", ms(a), fs);
    out.record(case, "umoci unpack", ms(b), fs);

    // 2. The drivers on the same images: import, create+mount, commit, and the space one
    // image plus 10 containers take. overlay ("lamina", the default) against vfs, btrfs and
    // devicemapper. On XFS (reflink=1, mkfs.xfs's default and the appliance's) the vfs copy
    // shares file data, so its cost grows with the number of files rather than the bytes.
    let btrfs_dir = std::env::var_os("BENCH_BTRFS_DIR").map(PathBuf::from);
    if btrfs_dir.is_none() {
        println!("BENCH_BTRFS_DIR unset: btrfs and devicemapper are left out");
    }
    let mut drivers = vec![Bench::Overlay, Bench::Vfs];
    if btrfs_dir.is_some() {
        drivers.extend([Bench::Btrfs, Bench::Devicemapper]);
    }
    let bt = btrfs_dir.as_ref().map(|d| tempfile::tempdir_in(d).unwrap());
    let images: Vec<(String, PathBuf, u64)> = [20usize, 200]
        .iter()
        .map(|&mb| {
            let dir = t.path().join(format!("big{mb}"));
            (format!("{mb} MB image"), big_file_image(&dir, mb << 20), mb as u64)
        })
        .chain(std::iter::once(("5-layer image (10k files)".to_string(), img.clone(), 0)))
        .collect();
    for d in &drivers {
        for (label, layout, mb) in &images {
            let work = match d {
                Bench::Btrfs => bt.as_ref().unwrap().path().join(format!("s-{mb}")),
                _ => t.path().join(format!("s-{}-{mb}", d.name())),
            };
            let pool = bt.as_ref().map(|b| b.path().join(format!("pool-{}-{mb}", d.name())));
            let s = d.open(&work.join("store"), pool.as_deref());
            let used0 = d.used(&s, &work, pool.as_deref());
            let t0 = Instant::now();
            if *mb == 0 {
                s.import_image(layout, Some("t5"), Some("img:1")).unwrap();
            } else {
                s.import(layout, Some("img:1")).unwrap();
            }
            out.record(&format!("import {label}"), d.subject(), ms(t0.elapsed()), "");
            let mut times = Vec::new();
            for i in 0..3 {
                sync();
                let name = format!("c{i}");
                let t0 = Instant::now();
                s.create("img:1", &name, None).unwrap();
                s.mount(&name).unwrap();
                times.push(t0.elapsed());
                s.unmount(&name).unwrap();
                s.remove(&name).unwrap();
            }
            let create = median(times);
            out.record(&format!("create+mount on {label}"), d.subject(), ms(create), "");
            if *mb > 0 {
                out.scaling("create+mount vs image size", d.name(), ms(create), *mb as f64);
            }
            // Commit of a 1 MiB change.
            s.create("img:1", "w", None).unwrap();
            let m = s.mount("w").unwrap();
            std::fs::write(m.join("change.bin"), vec![7u8; 1 << 20]).unwrap();
            let t0 = Instant::now();
            s.commit("w", "img:2").unwrap();
            out.record(
                &format!("commit 1 MiB change on {label}"),
                d.subject(),
                ms(t0.elapsed()),
                "",
            );
            s.unmount("w").unwrap();
            s.remove("w").unwrap();
            if *mb == 200 {
                for i in 0..10 {
                    s.create("img:1", &format!("ten{i}"), None).unwrap();
                    s.mount(&format!("ten{i}")).unwrap();
                }
                sync();
                let used = d.used(&s, &work, pool.as_deref()).saturating_sub(used0);
                out.space(
                    "space used by the 200 MB image + 10 containers",
                    d.subject(),
                    used as f64 / 1e6,
                );
                for i in 0..10 {
                    s.unmount(&format!("ten{i}")).unwrap();
                }
            }
            drop(s);
            let _ = std::fs::remove_dir_all(&work);
            if let Some(p) = &pool {
                let _ = std::fs::remove_dir_all(p);
            }
        }
    }

    println!("\n{:<48} {:<14} {:>10}", "case", "subject", "ms");
    for (case, subject, v) in &out.rows {
        println!("{case:<48} {subject:<14} {v:>10.1}");
    }
}
