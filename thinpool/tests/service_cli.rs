//! The CLI verbs on a device-backed pool (and resize on a file pool): init --device, create,
//! status/list through the service, extend, resize, dmsetup-table, events.

mod support;

use std::path::Path;

use support::cli::{ok, thinpool, FilePool};

const MIB: u64 = 1 << 20;

fn fails(args: &[&str], want: &str) {
    let o = thinpool(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(want), "thinpool {args:?}: {err}");
}

fn sparse(p: &Path, size: u64) -> String {
    std::fs::File::create(p).unwrap().set_len(size).unwrap();
    p.to_str().unwrap().to_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).unwrap()
}

#[test]
fn device_backed_pool_through_every_verb() {
    let dir = tempfile::tempdir().unwrap();
    // 4 MiB metadata area + 100 extents of 4 MiB.
    let dev0 = sparse(&dir.path().join("dev0.img"), 404 * MIB);
    let dev1 = sparse(&dir.path().join("dev1.img"), 404 * MIB);
    let pool = dir.path().join("pool");
    let pool = pool.to_str().unwrap();
    let out = ok(&[
        "init",
        pool,
        "--device",
        &dev0,
        "--opt",
        "dm.thinp_percent=50",
        "--opt",
        "dm.thinp_metapercent=10",
    ]);
    assert!(out.contains("created pool"), "{out}");
    assert!(Path::new(pool).join("dev0").exists(), "device linked into the pool directory");
    fails(
        &["init", pool, "--device", &dev0, "--opt", "dm.thinp_percent=60"],
        "changing direct-lvm config is not supported",
    );

    ok(&["create", pool, "v", "--size", "1G"]);
    let st = json(&["status", pool, "--json"]);
    assert_eq!(st["Pool Name"], "lamina-thinpool");
    assert_eq!(st["Udev Sync Supported"], false);
    assert_eq!(st["Data Space Total"], "209.7MB");
    assert_eq!(st["data_total"], 200 * MIB);
    assert!(st.get("Data file").is_none());
    let text = ok(&["status", pool]);
    assert!(text.contains(" Deferred Deletion Enabled: true\n"), "{text}");
    let lvs = ok(&["list", pool, "--lvs"]);
    assert!(
        lvs.contains("Data%") && lvs.contains("Meta%") && lvs.contains("lamina-thinpool"),
        "{lvs}"
    );
    assert_eq!(json(&["list", pool, "--json"])[0]["name"], "v");

    // vgextend then lvextend: the data grows by whole extents into the new device's space.
    ok(&["extend", pool, "--device", &dev1]);
    assert!(Path::new(pool).join("dev1").exists());
    ok(&["resize", pool, "--data", "+40M", "--metadata", "+4M"]);
    let st = json(&["status", pool, "--json"]);
    assert_eq!(st["data_total"], 240 * MIB);
    assert_eq!(st["metadata_total"], 44 * MIB);
    // The pool opens from its device list as well.
    let list = format!("{dev0},{dev1}");
    assert_eq!(json(&["status", &list, "--json"])["data_total"], 240 * MIB);

    let t = ok(&["dmsetup-table", pool]);
    assert!(t.contains(" thin-pool ") && t.contains("# lamina-thinpool-v"), "{t}");
    assert!(ok(&["dmsetup-table", pool, "--script"]).contains("dmsetup create lamina-thinpool"));
    assert_eq!(json(&["events", pool, "--json"]), serde_json::json!([]));
    fails(&["events", &list], "device list");

    ok(&["remove", pool, "v"]);
    assert_eq!(json(&["list", pool, "--json"]), serde_json::json!([]));
}

#[test]
fn file_pool_resize_grows_the_data_file() {
    let dir = FilePool::init("64M");
    let pool = dir.pool();
    ok(&["resize", pool, "--data", "+64M"]);
    assert_eq!(json(&["status", pool, "--json"])["data_total"], 128 * MIB);
    assert_eq!(std::fs::metadata(Path::new(pool).join("data")).unwrap().len(), 128 * MIB);
    ok(&["resize", pool, "--data", "192M"]);
    assert_eq!(json(&["status", pool, "--json"])["data_total"], 192 * MIB);
    fails(&["resize", pool, "--data", "64M"], "never shrink");
    fails(&["dmsetup-table", pool], "file-backed pool");
    fails(&["init", pool, "--data-size", "64M", "--opt", "dm.min_free_space=x"], "min_free_space");

    // Options of a file pool live in DIR/config.toml and reach status.
    let opts = dir.path().join("fp2");
    let opts = opts.to_str().unwrap();
    ok(&[
        "init",
        opts,
        "--data-size",
        "64M",
        "--opt",
        "dm.min_free_space=50%",
        "--opt",
        "dm.use_deferred_deletion=false",
    ]);
    let st = json(&["status", opts, "--json"]);
    assert_eq!(st["Thin Pool Minimum Free Space"], "33.55MB");
    assert_eq!(st["Deferred Deletion Enabled"], false);
    ok(&["create", opts, "a", "--size", "1G"]);
    let st = json(&["status", pool, "--json"]);
    assert!(st["Data file"].as_str().unwrap().ends_with("/pool/data"));
}
