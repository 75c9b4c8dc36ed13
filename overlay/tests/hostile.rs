//! Host tier: hostile layer tars are rejected with an error naming the entry, nothing is
//! written outside the store (a canary directory next to it stays untouched), and a failed
//! import leaves no half layer.

mod support;

use support::tmp;

use std::path::{Path, PathBuf};

use overlay::apply::Limits;
use overlay::{Digest, Driver, ErrorKind, Store};

/// A raw GNU tar header: the tar crate's builder refuses `..` and absolute names, which is
/// exactly what these tests need to write.
fn header(name: &[u8], kind: tar::EntryType, size: u64, link: &[u8], dev: (u32, u32)) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_000_000_000);
    h.set_size(size);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(dev.0).unwrap();
        h.set_device_minor(dev.1).unwrap();
    }
    h.set_cksum();
    h.as_bytes().to_vec()
}

enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    Char(&'a str, u32, u32),
    /// A header claiming `size` bytes with no data after it.
    Huge(&'a str, u64),
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        match e {
            E::File(n, data) => {
                out.extend(header(
                    n.as_bytes(),
                    tar::EntryType::Regular,
                    data.len() as u64,
                    b"",
                    (0, 0),
                ));
                out.extend_from_slice(data);
                out.resize(out.len().div_ceil(512) * 512, 0);
            }
            E::Dir(n) => {
                out.extend(header(n.as_bytes(), tar::EntryType::Directory, 0, b"", (0, 0)))
            }
            E::Symlink(n, t) => {
                out.extend(header(n.as_bytes(), tar::EntryType::Symlink, 0, t.as_bytes(), (0, 0)))
            }
            E::Hardlink(n, t) => {
                out.extend(header(n.as_bytes(), tar::EntryType::Link, 0, t.as_bytes(), (0, 0)))
            }
            E::Char(n, ma, mi) => {
                out.extend(header(n.as_bytes(), tar::EntryType::Char, 0, b"", (*ma, *mi)))
            }
            E::Huge(n, size) => {
                out.extend(header(n.as_bytes(), tar::EntryType::Regular, *size, b"", (0, 0)))
            }
        }
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// An OCI layout holding one image whose single layer is `layer` (uncompressed).
fn layout_with_layer(dir: &Path, layer: &[u8]) -> PathBuf {
    support::layout_with_layers(dir, &[layer.to_vec()], &[])
}

/// Everything below `p` (paths, sizes, link targets), to prove nothing changed.
fn listing(p: &Path) -> Vec<(PathBuf, u64, Option<PathBuf>)> {
    let mut v = Vec::new();
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            v.push((e.path(), md.len(), std::fs::read_link(e.path()).ok()));
            if md.is_dir() {
                stack.push(e.path());
            }
        }
    }
    v.sort();
    v
}

#[test]
fn hostile_layers_are_rejected_and_nothing_escapes() {
    let t = tmp();
    let canary = t.path().join("canary");
    std::fs::create_dir_all(canary.join("sub")).unwrap();
    std::fs::write(canary.join("keep"), "canary").unwrap();
    let c = canary.to_str().unwrap().to_string();
    let cx = format!("{c}/x");

    // (name, entries, expected kind, text the error must contain)
    let cases: Vec<(&str, Vec<E>, ErrorKind, &str)> = vec![
        ("dotdot", vec![E::File("../x", b"evil")], ErrorKind::Escape, "../x"),
        (
            "deep dotdot",
            vec![E::Dir("a"), E::File("a/../../x", b"evil")],
            ErrorKind::Escape,
            "a/../../x",
        ),
        ("absolute", vec![E::File(&cx, b"evil")], ErrorKind::Escape, "canary/x"),
        (
            "symlink to / then through it",
            vec![E::Symlink("a", "/"), E::File("a/x", b"evil")],
            ErrorKind::Escape,
            "a/x",
        ),
        (
            "symlink to canary then through it",
            vec![E::Symlink("a", &c), E::File("a/x", b"evil")],
            ErrorKind::Escape,
            "a/x",
        ),
        (
            "symlink to .. then through it",
            vec![E::Symlink("a", ".."), E::File("a/x", b"evil")],
            ErrorKind::Escape,
            "a/x",
        ),
        (
            "relative symlink climbing out",
            vec![E::Dir("d"), E::Symlink("d/up", "../../.."), E::File("d/up/x", b"evil")],
            ErrorKind::Escape,
            "d/up/x",
        ),
        (
            "hardlink to ../../etc/passwd",
            vec![E::Hardlink("h", "../../etc/passwd")],
            ErrorKind::Escape,
            "h",
        ),
        (
            "hardlink via escaping symlink",
            vec![E::Symlink("a", &c), E::Hardlink("h", "a/keep")],
            ErrorKind::Escape,
            "h",
        ),
        (
            "hardlink to absolute path",
            vec![E::Hardlink("h", "/etc/passwd")],
            ErrorKind::Escape,
            "h",
        ),
        (
            "whiteout through escaping symlink",
            vec![E::Symlink("a", &c), E::File("a/.wh.keep", b"")],
            ErrorKind::Escape,
            "a/.wh.keep",
        ),
        ("whiteout of ..", vec![E::File(".wh...", b"")], ErrorKind::Invalid, ".wh..."),
        (
            "nested whiteout of ..",
            vec![E::Dir("a"), E::File("a/.wh...", b"")],
            ErrorKind::Invalid,
            "a/.wh...",
        ),
        ("empty whiteout", vec![E::File(".wh.", b"")], ErrorKind::Invalid, ".wh."),
        ("absurd size", vec![E::Huge("big", 1 << 50)], ErrorKind::Limit, "big"),
        ("raw 0/0 char device", vec![E::Char("wh", 0, 0)], ErrorKind::Invalid, "wh"),
        (
            "file below a device node",
            vec![E::Char("null", 1, 3), E::File("null/x", b"evil")],
            ErrorKind::Io,
            "null/x",
        ),
        ("truncated data", vec![E::Huge("short", 4096)], ErrorKind::Io, "short"),
    ];
    for (i, (what, entries, kind, needle)) in cases.into_iter().enumerate() {
        let before = listing(&canary);
        let dir = t.path().join(format!("case{i}"));
        let layout = layout_with_layer(&dir, &tar_of(&entries));
        let store_root = dir.join("store");
        let store = Store::open(&store_root, Driver::Overlay).unwrap();
        let err = store.import(&layout, None).expect_err(what);
        assert_eq!(err.kind(), kind, "{what}: {err}");
        assert!(
            format!("{err:#}").contains(needle) || units::chain(&err).contains(needle),
            "{what}: error does not name the entry: {}",
            units::chain(&err)
        );
        assert_eq!(listing(&canary), before, "{what}: canary changed");
        assert!(
            !Path::new("/etc/x").exists()
                && !t.path().join("x").exists()
                && !dir.join("x").exists(),
            "{what}: wrote outside"
        );
        assert!(store.layers().unwrap().is_empty(), "{what}: a layer was registered");
        assert!(store.images().unwrap().is_empty(), "{what}: an image was registered");
        drop(store);
        // Reopening cleans staging: no half layer anywhere.
        let store = Store::open(&store_root, Driver::Overlay).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(store.root())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.len() >= 64)
            .collect();
        assert!(leftovers.is_empty(), "{what}: {leftovers:?}");
        assert_eq!(
            std::fs::read_dir(store.root().join("tmp")).unwrap().count(),
            0,
            "{what}: staging left behind"
        );
    }
}

#[test]
fn benign_tricks_are_applied_safely() {
    let t = tmp();
    let canary = t.path().join("canary");
    std::fs::create_dir_all(&canary).unwrap();
    std::fs::write(canary.join("keep"), "canary").unwrap();
    let c = canary.join("keep");
    // A symlink to a file outside, then a regular file of the same name: the link is
    // replaced, never written through. An in-root relative symlink may be traversed.
    let entries = vec![
        E::Symlink("s", c.to_str().unwrap()),
        E::File("s", b"replaced"),
        E::Dir("real"),
        E::Symlink("alias", "real"),
        E::File("alias/f", b"inside"),
        E::File("real/.wh.nothing", b""),
    ];
    let layout = layout_with_layer(t.path(), &tar_of(&entries));
    let store = Store::open(&t.path().join("store"), Driver::Overlay).unwrap();
    store.import(&layout, Some("benign")).unwrap();
    assert_eq!(std::fs::read(&c).unwrap(), b"canary");
    let layer = store.layers().unwrap().remove(0);
    let diff = store.root().join(&layer.cache_id).join("diff");
    assert_eq!(std::fs::read(diff.join("s")).unwrap(), b"replaced");
    assert!(std::fs::symlink_metadata(diff.join("s")).unwrap().is_file());
    assert_eq!(std::fs::read(diff.join("real/f")).unwrap(), b"inside");
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let wh = std::fs::symlink_metadata(diff.join("real/nothing")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "whiteout became a 0/0 char device");
}

#[test]
fn entry_count_limit_is_enforced() {
    let t = tmp();
    let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| E::File(n, b"x")).collect();
    let layout = layout_with_layer(t.path(), &tar_of(&entries));
    let mut store = Store::open(&t.path().join("store"), Driver::Overlay).unwrap();
    store.set_limits(Limits { max_entries: 10, ..Limits::default() });
    let err = store.import(&layout, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Limit, "{err}");
    assert!(units::chain(&err).contains("f10"), "{}", units::chain(&err));
}

#[test]
fn hostile_outer_archive_is_rejected() {
    let t = tmp();
    let outer = tar_of(&[E::File("manifest.json", b"[]"), E::File("../escape", b"evil")]);
    let p = t.path().join("evil.tar");
    std::fs::write(&p, outer).unwrap();
    let store = Store::open(&t.path().join("store"), Driver::Overlay).unwrap();
    let err = store.import(&p, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Escape, "{err}");
    assert!(!t.path().join("escape").exists());
    assert!(!t.path().join("store/escape").exists());
}

#[test]
fn diff_id_mismatch_is_refused() {
    let t = tmp();
    let layout = layout_with_layer(t.path(), &tar_of(&[E::File("a", b"a")]));
    // Point the config at a different diff id (re-hash config, manifest and index).
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let md =
        idx["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&md)).unwrap())
            .unwrap();
    let bogus = serde_json::to_vec(
        &serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [Digest::of(b"other")]}}),
    )
    .unwrap();
    let bd = Digest::of(&bogus);
    std::fs::write(layout.join("blobs/sha256").join(bd.hex()), &bogus).unwrap();
    m["config"]["digest"] = bd.as_str().into();
    m["config"]["size"] = bogus.len().into();
    let mb = serde_json::to_vec(&m).unwrap();
    let mdg = Digest::of(&mb);
    std::fs::write(layout.join("blobs/sha256").join(mdg.hex()), &mb).unwrap();
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdg, "size": mb.len()}]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    let store = Store::open(&t.path().join("store"), Driver::Overlay).unwrap();
    let err = store.import(&layout, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::DigestMismatch, "{err}");
    assert!(store.layers().unwrap().is_empty());
}
