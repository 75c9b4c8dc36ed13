//! The NBD server against real clients: nbdinfo, nbdcopy, qemu-io/qemu-img, fio.

#[path = "nbd/common.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use thinpool::nbd::mem::{MemCatalog, MemExport};
use thinpool::nbd::Export;

const T: Duration = Duration::from_secs(60);

#[test]
fn nbdinfo_list_shows_exports() {
    let cat = Arc::new(MemCatalog::new());
    cat.insert("alpha", "first volume", Arc::new(MemExport::new(1 << 20)));
    cat.insert("beta", "", Arc::new(MemExport::new(2 << 20)));
    let srv = start_mem(cat.clone());
    let out = ok("nbdinfo", &["--list", "--json", &srv.uri("")], T);
    let v: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json output");
    let exports = v["exports"].as_array().expect("exports array");
    let names: Vec<&str> = exports.iter().map(|e| e["export-name"].as_str().unwrap()).collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(exports[0]["description"], "first volume");
    assert_eq!(exports[1]["export-size"], 2 << 20);
    // A volume added while serving shows up; a removed one disappears.
    cat.insert("gamma", "", Arc::new(MemExport::new(1 << 20)));
    assert!(cat.remove("alpha"));
    let out = ok("nbdinfo", &["--list", "--json", &srv.unix_uri("")], T);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let names: Vec<String> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["beta", "gamma"]);
}

#[test]
fn nbdinfo_map_shows_holes_where_nothing_was_written() {
    let cat = Arc::new(MemCatalog::new());
    let exp = Arc::new(MemExport::new(16 << 20));
    // Write 1 MiB at 2 MiB and 64 KiB at 10 MiB; everything else stays a hole.
    exp.write(2 << 20, &vec![0xab; 1 << 20], false).unwrap();
    exp.write(10 << 20, &vec![0xcd; 64 << 10], false).unwrap();
    cat.insert("vol", "", exp);
    let srv = start_mem(cat);
    let out = ok("nbdinfo", &["--map", "--json", &srv.uri("vol")], T);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json map");
    let got: Vec<(u64, u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().unwrap(),
                e["length"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect();
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
