//! Host tier: real images built with umoci/skopeo are imported, mounted, compared with
//! `umoci unpack`, exported, re-imported and committed.

mod support;

use std::path::Path;

use overlay::{Driver, ExportFormat, Store};
use support::*;

fn assert_same(merged: &Path, reference: &Path) {
    let a = snapshot(merged);
    let b = snapshot(reference);
    // /d is the directory `umoci insert --opaque` replaced (see diff_trees_ignoring).
    let d = diff_trees_ignoring(&a, &b, &["/d"]);
    assert!(d.is_empty(), "merged tree differs from umoci unpack:\n{}", d.join("\n"));
    assert!(a.nodes.len() > 20, "suspiciously small tree: {}", a.nodes.len());
}

fn check_import(store_dir: &Path, driver: Driver, source: &Path, tag: &str, reference: &Path) {
    let store = Store::open(store_dir, driver).unwrap();
    let imgs = store
        .import_image(source, None, Some(tag))
        .or_else(|_| store.import_image(source, Some("final"), Some(tag)))
        .unwrap();
    assert_eq!(imgs.len(), 1);
    store.create(tag, "c", None).unwrap();
    let merged = store.mount("c").unwrap();
    assert_same(&merged, reference);
    store.unmount("c").unwrap();
    store.remove("c").unwrap();
}

#[test]
fn merged_tree_equals_umoci_unpack_for_every_source_format() {
    need("skopeo");
    let t = tmp();
    let img = build_rich_image(t.path());
    let reference = umoci_unpack(&img, "final", &t.path().join("ref"));
    // Sanity: the reference really has the effects we test.
    assert!(
        !reference.join("gone").exists()
            && !reference.join("del").exists()
            && !reference.join("hl2").exists()
    );
    assert_eq!(
        std::fs::read_dir(reference.join("d")).unwrap().count(),
        1,
        "d/ is opaque: only `only`"
    );

    // OCI layout directory (gzip layers, some with umoci's unterminated tars).
    check_import(&t.path().join("s1"), Driver::Overlay, &img, "rich:final", &reference);
    // vfs driver on the same source.
    check_import(&t.path().join("s2"), Driver::Vfs, &img, "rich:final", &reference);
    // zstd layers, as an OCI archive (tar).
    let zst = t.path().join("zst");
    skopeo(&[
        "copy",
        "--dest-compress-format",
        "zstd",
        &format!("oci:{}:final", img.display()),
        &format!("oci:{}:final", zst.display()),
    ]);
    let zst_tar = t.path().join("zst.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:final", zst.display()),
        &format!("oci-archive:{}:final", zst_tar.display()),
    ]);
    let idx = std::fs::read_to_string(zst.join("index.json")).unwrap();
    let m: serde_json::Value = serde_json::from_str(&idx).unwrap();
    let mdig =
        m["manifests"][0]["digest"].as_str().unwrap().trim_start_matches("sha256:").to_string();
    let man = std::fs::read_to_string(zst.join("blobs/sha256").join(mdig)).unwrap();
    assert!(man.contains("tar+zstd"), "skopeo did not produce zstd layers: {man}");
    check_import(&t.path().join("s3"), Driver::Overlay, &zst_tar, "rich:zstd", &reference);
    // Legacy docker-archive (uncompressed <diffid>.tar layers, manifest.json).
    let da = t.path().join("docker.tar");
    skopeo(&[
        "copy",
        &format!("oci:{}:final", img.display()),
        &format!("docker-archive:{}:example/rich:final", da.display()),
    ]);
    check_import(&t.path().join("s4"), Driver::Overlay, &da, "rich:docker", &reference);

    // The sparse file stayed sparse in the layer.
    let store = Store::open(&t.path().join("s1"), Driver::Overlay).unwrap();
    let layer = store
        .layers()
        .unwrap()
        .into_iter()
        .find(|l| store.root().join(&l.cache_id).join("diff/sparse").exists())
        .unwrap();
    let md = std::fs::metadata(store.root().join(&layer.cache_id).join("diff/sparse")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(md.len(), 16 << 20);
    assert!(md.blocks() * 512 < 1 << 20, "sparse file takes {} bytes", md.blocks() * 512);
}

#[test]
fn same_layer_is_stored_once_and_images_share_it() {
    let t = tmp();
    let img = build_rich_image(t.path());
    let store = Store::open(&t.path().join("s"), Driver::Overlay).unwrap();
    store.import(&img, None).unwrap();
    let n = store.layers().unwrap().len();
    let dirs = std::fs::read_dir(store.root())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().len() == 64)
        .count();
    // Tags l1..l5 share a chain: five layers in total, each stored once.
    assert_eq!(n, 5, "layers: {:?}", store.layers().unwrap());
    assert_eq!(dirs, 5);
    store.import(&img, None).unwrap();
    assert_eq!(store.layers().unwrap().len(), 5, "re-import stored nothing new");
    let du = store.du().unwrap();
    let l1 = du.images.iter().find(|i| i.tags.iter().any(|t| t.starts_with("l1"))).unwrap();
    assert!(l1.shared > 0 && l1.exclusive == 0, "{l1:?}");
    // overlay2 contract on disk.
    for l in store.layers().unwrap() {
        let d = store.root().join(&l.cache_id);
        let link = std::fs::read_to_string(d.join("link")).unwrap();
        assert_eq!(link.len(), 26);
        assert_eq!(
            std::fs::read_link(store.root().join("l").join(&link)).unwrap(),
            Path::new("..").join(&l.cache_id).join("diff")
        );
        assert_eq!(d.join("lower").exists(), l.parent.is_some());
        assert_eq!(d.join("work").is_dir(), l.parent.is_some());
    }
}

#[test]
fn export_and_reimport_keep_digests_and_skopeo_accepts_them() {
    need("skopeo");
    let t = tmp();
    let img = build_rich_image(t.path());
    let store = Store::open(&t.path().join("s"), Driver::Overlay).unwrap();
    let orig = store.import_image(&img, Some("final"), Some("rich:final")).unwrap().remove(0);
    let orig_manifest_digest = {
        let idx: serde_json::Value =
            serde_json::from_slice(&std::fs::read(img.join("index.json")).unwrap()).unwrap();
        idx["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "final")
            .unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(orig.manifest.digest.as_str(), orig_manifest_digest);

    let oci = t.path().join("out-oci");
    let info = store.export("rich:final", &oci, ExportFormat::Oci).unwrap();
    assert_eq!(info.manifest.digest, orig.manifest.digest);
    let oci_tar = t.path().join("out-oci.tar");
    store.export("rich:final", &oci_tar, ExportFormat::Oci).unwrap();
    let dock = t.path().join("out-docker.tar");
    let dinfo = store.export("rich:final", &dock, ExportFormat::Docker).unwrap();
    assert_eq!(dinfo.config, orig.id);

    // Deterministic archives.
    let again = t.path().join("again.tar");
    store.export("rich:final", &again, ExportFormat::Docker).unwrap();
    assert_eq!(std::fs::read(&dock).unwrap(), std::fs::read(&again).unwrap());

    // skopeo reads all three and copies them.
    let oci_inspect: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &format!("oci:{}", oci.display())])).unwrap();
    assert_eq!(oci_inspect["Digest"].as_str().unwrap(), orig.manifest.digest.as_str());
    let raw =
        skopeo(&["inspect", "--config", "--raw", &format!("docker-archive:{}", dock.display())]);
    assert_eq!(
        overlay::Digest::of(raw.as_bytes()),
        orig.id,
        "docker-archive config bytes are the original ones"
    );
    skopeo(&["inspect", &format!("oci-archive:{}", oci_tar.display())]);
    skopeo(&[
        "copy",
        &format!("docker-archive:{}", dock.display()),
        &format!("oci:{}:copied", t.path().join("copied").display()),
    ]);
    skopeo(&[
        "copy",
        &format!("oci:{}", oci.display()),
        &format!("dir:{}", t.path().join("dircopy").display()),
    ]);

    // Re-import each into a fresh store: same image id, diff ids and chain.
    for (i, p) in [&oci, &oci_tar, &dock].into_iter().enumerate() {
        let s2 = Store::open(&t.path().join(format!("fresh{i}")), Driver::Overlay).unwrap();
        let back = s2.import(p, None).unwrap().remove(0);
        assert_eq!(back.id, orig.id, "{}", p.display());
        let a: Vec<_> = back.layers.iter().map(|l| (&l.diff_id, &l.chain_id)).collect();
        let b: Vec<_> = orig.layers.iter().map(|l| (&l.diff_id, &l.chain_id)).collect();
        assert_eq!(a, b);
        if i < 2 {
            assert_eq!(
                back.manifest.digest, orig.manifest.digest,
                "OCI export keeps the manifest digest"
            );
        }
        assert!(back.tags.iter().any(|t| t.ends_with("rich:final")), "{:?}", back.tags);
        // And the export of the re-import is byte-identical.
        let o2 = t.path().join(format!("re{i}.tar"));
        s2.export(back.id.as_str(), &o2, ExportFormat::Docker).unwrap();
        let o1 = t.path().join(format!("orig{i}.tar"));
        store.export(orig.id.as_str(), &o1, ExportFormat::Docker).unwrap();
        assert_eq!(std::fs::read(&o1).unwrap(), std::fs::read(&o2).unwrap());
    }
}

#[test]
fn commit_export_import_reproduces_the_container_tree() {
    let t = tmp();
    let img = build_rich_image(t.path());
    for driver in [Driver::Overlay, Driver::Vfs] {
        let sd = t.path().join(format!("s-{}", driver.name()));
        let store = Store::open(&sd, driver).unwrap();
        store.import_image(&img, Some("final"), Some("rich:final")).unwrap();
        store.create("rich:final", "work", None).unwrap();
        let m = store.mount("work").unwrap();
        // Change, add, delete a file, recreate a deleted directory with new content (overlay
        // makes it opaque); and beyond those, delete a whole lower tree and change a mode.
        edit_rich_container(&m);
        std::fs::remove_dir_all(m.join("new")).unwrap();
        std::fs::set_permissions(
            m.join("setuid"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        if driver == Driver::Overlay {
            let upper = store.root().join(store.container("work").unwrap().cache_id).join("diff");
            assert_eq!(
                overlay::fsutil::get_xattr(&upper.join("d"), b"trusted.overlay.opaque")
                    .unwrap()
                    .as_deref(),
                Some(&b"y"[..])
            );
        }
        let want = snapshot(&m);
        let committed = store.commit("work", "rich:committed").unwrap();
        assert_eq!(committed.layers.len(), 6);
        let out = t.path().join(format!("committed-{}.tar", driver.name()));
        store.export("rich:committed", &out, ExportFormat::Docker).unwrap();

        let fresh =
            Store::open(&t.path().join(format!("fresh-{}", driver.name())), Driver::Overlay)
                .unwrap();
        fresh.import(&out, None).unwrap();
        fresh.create("rich:committed", "again", None).unwrap();
        let m2 = fresh.mount("again").unwrap();
        let got = snapshot(&m2);
        let d = diff_trees(&want, &got);
        assert!(d.is_empty(), "{}: committed tree differs:\n{}", driver.name(), d.join("\n"));
        assert!(
            !m2.join("hl1").exists() && !m2.join("new").exists() && m2.join("d/fresh").exists()
        );
        assert!(!m2.join("d/only").exists(), "opaque directory hides the lower content");
        fresh.remove("again").unwrap();
        store.remove("work").unwrap();
    }
}
