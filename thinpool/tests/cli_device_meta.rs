//! The metadata tools on a device-backed pool: `check` and `dump` read the metadata region of
//! the volume group, named by the group directory or by one of its devices.

mod support;
use support::cli::{ok, thinpool};

#[test]
fn check_and_dump_read_a_device_backed_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.img");
    std::fs::File::create(&disk).unwrap().set_len(1 << 30).unwrap();
    let (pool, disk) = (tmp.path().join("pool"), disk.to_str().unwrap().to_owned());
    let p = pool.to_str().unwrap();
    ok(&["init", p, "--device", &disk]);
    ok(&["create", p, "v", "--size", "16M"]);
    let img = tmp.path().join("img");
    std::fs::write(&img, (0..4u32 << 20).map(|i| (i % 251) as u8 + 1).collect::<Vec<u8>>())
        .unwrap();
    ok(&["import", p, "v", img.to_str().unwrap()]);
    for target in [p, disk.as_str()] {
        let report = ok(&["check", target]);
        assert!(report.contains("clean") && report.contains("metadata region"), "{report}");
        let xml = ok(&["dump", target]);
        // 4 MiB in 64 KiB blocks: 64 mapped blocks on thin 0.
        assert!(xml.contains(r#"<device dev_id="0" mapped_blocks="64""#), "{xml}");
    }
    // Restore never creates a file pool inside a group directory (it would hide the group).
    let xml = tmp.path().join("pool.xml");
    std::fs::write(&xml, ok(&["dump", p])).unwrap();
    let out = thinpool(&["restore", p, "--input", xml.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds a device-backed pool"));
    assert!(!pool.join("metadata").exists(), "no file pool was made beside the group");
    assert!(ok(&["list", p]).contains('v'), "the group still opens");
    // A path that is neither a pool nor a group is refused with one clear line.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = thinpool(&["check", empty.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pool directory (no metadata file) nor a volume group"), "{err}");
}
