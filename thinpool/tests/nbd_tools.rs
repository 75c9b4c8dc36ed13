//! The NBD server against real clients: nbdinfo, nbdcopy, qemu-io/qemu-img, fio.

mod support;

use std::sync::Arc;
use std::time::Duration;
use thinpool::export::{Payload, WriteMode};

use support::nbd::*;
use thinpool::export::mem::{MemCatalog, MemExport};
use thinpool::nbd::Export;

const T: Duration = Duration::from_secs(60);

/// `nbdinfo --list --json`: the exports' JSON objects and their names, in the server's order.
fn list_exports(uri: &str) -> (Vec<serde_json::Value>, Vec<String>) {
    let out = ok("nbdinfo", &["--list", "--json", uri], T);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json output");
    let exports = v["exports"].as_array().expect("exports array").clone();
    let names = exports.iter().map(|e| e["export-name"].as_str().unwrap().to_owned()).collect();
    (exports, names)
}

#[test]
fn nbdinfo_list_shows_exports() {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("alpha", "first volume", Arc::new(MemExport::new(1 << 20)));
    cat.insert("beta", "", Arc::new(MemExport::new(2 << 20)));
    let srv = start_mem(cat.clone());
    let (exports, names) = list_exports(&srv.uri(""));
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(exports[0]["description"], "first volume");
    assert_eq!(exports[1]["export-size"], 2 << 20);
    // A volume added while serving shows up; a removed one disappears.
    cat.insert("gamma", "", Arc::new(MemExport::new(1 << 20)));
    assert!(cat.remove("alpha"));
    assert_eq!(list_exports(&srv.unix_uri("")).1, ["beta", "gamma"]);
}

#[test]
fn nbdinfo_map_shows_holes_where_nothing_was_written() {
    let cat = Arc::new(MemCatalog::new());
    let exp = Arc::new(MemExport::new(16 << 20));
    // Write 1 MiB at 2 MiB and 64 KiB at 10 MiB; everything else stays a hole.
    exp.write(2 << 20, &Payload::mem(&vec![0xab; 1 << 20]), WriteMode::default()).unwrap();
    exp.write(10 << 20, &Payload::mem(&vec![0xcd; 64 << 10]), WriteMode::default()).unwrap();
    cat.insert("vol", "", exp);
    let srv = start_mem(cat);
    let got = nbdinfo_map(&srv.uri("vol"), T);
    let want = vec![
        (0, 2 << 20, 3),
        (2 << 20, 1 << 20, 0),
        (3 << 20, 7 << 20, 3),
        (10 << 20, 64 << 10, 0),
        ((10 << 20) + (64 << 10), (6 << 20) - (64 << 10), 3),
    ];
    assert_eq!(got, want);
    // The --can checks a CI gate would use.
    for can in ["flush", "fua", "trim", "zero", "fast-zero", "multi-conn", "cache", "df"] {
        let st = run("nbdinfo", &["--can", can, &srv.uri("vol")], T).status;
        assert!(st.success(), "nbdinfo --can {can} failed");
    }
}

#[test]
fn nbdcopy_round_trip_256mib_over_4_connections() {
    use thinpool::export::file::FileExport;
    let dir = scratch();
    let size = 256usize << 20;
    let mut src = random_bytes(size, 0x5eed);
    // A zero run in the middle so nbdcopy also sends zero requests.
    src[(100 << 20)..(132 << 20)].fill(0);
    let src_path = dir.path().join("src.img");
    std::fs::write(&src_path, &src).unwrap();
    let exp_path = dir.path().join("export.img");
    let exp = Arc::new(FileExport::create(&exp_path, size as u64).unwrap());
    let cat = Arc::new(MemCatalog::new());
    cat.insert("disk", "", exp);
    let srv = start_mem(cat);
    let t = Duration::from_secs(180);
    let src_s = src_path.to_str().unwrap();
    ok("nbdcopy", &["--connections=4", "--flush", src_s, &srv.uri("disk")], t);
    let back = dir.path().join("back.img");
    ok("nbdcopy", &["--connections=4", &srv.unix_uri("disk"), back.to_str().unwrap()], t);
    let on_export = std::fs::read(&exp_path).unwrap();
    assert!(on_export == src, "export contents differ from the source");
    let got = std::fs::read(&back).unwrap();
    assert!(got == src, "copied-back image differs from the source");
}

#[test]
fn qemu_io_patterns_zeroes_discard_flush_fua() {
    let cat = Arc::new(MemCatalog::new());
    let probe = Arc::new(Probe::new(Arc::new(MemExport::new(64 << 20))));
    cat.insert("q", "", probe.clone());
    let srv = start_mem(cat);
    let uri = srv.uri("q");
    let script = [
        "write -P 0xab 0 1M",
        "read -P 0xab 0 1M",
        "write -f -P 0xcd 4M 64k",
        "read -P 0xcd 4M 64k",
        "write -z 0 512k",
        "read -P 0 0 512k",
        "read -P 0xab 512k 512k",
        "write -z -u 4M 64k",
        "read -P 0 4M 64k",
        "write -P 0x11 8M 2M",
        "discard 8M 1M",
        "read -P 0 8M 1M",
        "read -P 0x11 9M 1M",
        "flush",
        "aio_write -P 0x22 16M 64k",
        "aio_write -P 0x33 17M 64k",
        "aio_flush",
        "read -P 0x22 16M 64k",
        "read -P 0x33 17M 64k",
    ];
    let text = qemu_io(&uri, &script, T);
    assert_eq!(text.matches("read ").count(), 9, "every read ran:\n{text}");
    assert!(Probe::get(&probe.fua_writes) >= 1, "write -f must arrive with FUA");
    assert!(Probe::get(&probe.flushes) >= 1, "flush must reach the export");
    assert!(Probe::get(&probe.trims) >= 1, "discard must arrive as TRIM");
    assert!(Probe::get(&probe.zeroes_no_hole) >= 1, "write -z must arrive as WRITE_ZEROES+NO_HOLE");
    assert!(Probe::get(&probe.zeroes_may_trim) >= 1, "write -z -u must allow unmapping");

    // qemu-img compare against a file with the same contents.
    let dir = scratch();
    let img = dir.path().join("cmp.img");
    let mut want = vec![0u8; 64 << 20];
    let data = random_bytes(3 << 20, 9);
    want[(20 << 20)..(23 << 20)].copy_from_slice(&data);
    std::fs::write(&img, &want).unwrap();
    probe.inner.trim(0, 64 << 20, false).unwrap();
    probe.inner.write(20 << 20, &Payload::mem(&data), WriteMode::default()).unwrap();
    ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", img.to_str().unwrap(), &srv.unix_uri("q")],
        T,
    );
    probe.inner.write(30 << 20, &Payload::mem(&[1]), WriteMode::default()).unwrap();
    let st =
        run("qemu-img", &["compare", "-f", "raw", "-F", "raw", img.to_str().unwrap(), &uri], T);
    assert_eq!(st.status.code(), Some(1), "qemu-img compare must see the differing byte");
}

#[test]
fn fio_verify_4_jobs() {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("fio", "", Arc::new(MemExport::new(128 << 20)));
    let srv = start_mem(cat);
    let uri = format!("--uri={}", srv.uri("fio"));
    let out = ok(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &uri,
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=32",
            "--size=32M",
            "--numjobs=4",
            "--offset_increment=32M",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=json",
        ],
        Duration::from_secs(180),
    );
    let v: serde_json::Value =
        serde_json::from_str(&out[out.find('{').unwrap()..]).expect("fio json");
    for job in v["jobs"].as_array().unwrap() {
        assert_eq!(job["error"], 0, "fio job failed: {job}");
        assert!(job["write"]["io_bytes"].as_u64().unwrap() >= 32 << 20);
        assert!(job["read"]["io_bytes"].as_u64().unwrap() >= 32 << 20, "verify phase read back");
    }
}
