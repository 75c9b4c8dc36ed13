//! The initramfs built from the pinned packages is reproducible: same inputs → same bytes, and
//! its content matches the checked-in listing (`initramfs.listing`, first line = SHA-256).
//! The lamina binaries are replaced by fixed placeholders so only the pins shape the result.
//! After changing pins or the image layout, regenerate explicitly:
//! `LAMINA_UPDATE_LISTING=1 cargo test -p image --test listing`.
//!
//! Needs the pinned .debs (downloaded with apt-get into target/lamina/cache on first run).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

fn cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lamina/cache")
}

fn inputs(dir: &Path) -> image::Inputs {
    let (kernel_deb, userland_debs) = image::fetch_pinned(&cache(), None).unwrap_or_else(|e| {
        panic!("the listing test needs the pinned packages (apt-get download must work): {e}")
    });
    let init = dir.join("lamina-init");
    std::fs::write(&init, b"placeholder for the static lamina-init\n").unwrap();
    let thinpool = dir.join("thinpool");
    std::fs::write(&thinpool, b"placeholder for thinpool\n").unwrap();
    let layerstore = dir.join("layerstore");
    std::fs::write(&layerstore, b"placeholder for layerstore\n").unwrap();
    image::Inputs {
        kernel_deb,
        userland_debs,
        init,
        extra_binaries: vec![("thinpool".into(), thinpool), ("layerstore".into(), layerstore)],
        config: b"# placeholder config\n".to_vec(),
    }
}

fn build(dir: &Path) -> (String, String) {
    let (archive, kernel) = image::initramfs(&inputs(dir), &cache(), &mut |_| {}).unwrap();
    assert_eq!(kernel.release, "6.12.118+deb12-cloud-amd64");
    let digest = hex::encode(Sha256::digest(archive.encode()));
    (digest, archive.listing())
}

#[test]
fn initramfs_is_reproducible_and_matches_the_listing() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (d1, l1) = build(a.path());
    let (d2, l2) = build(b.path());
    assert_eq!(d1, d2, "same inputs at different paths gave different archives");
    assert_eq!(l1, l2);
    let got = format!("sha256 {d1}\n{l1}");
    let snap = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/initramfs.listing");
    if std::env::var_os("LAMINA_UPDATE_LISTING").is_some() {
        std::fs::write(&snap, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&snap).unwrap_or_default();
    assert!(
        want == got,
        "initramfs differs from {} (if intended: LAMINA_UPDATE_LISTING=1 cargo test -p image --test listing)\n--- diff (want → got) ---\n{}",
        snap.display(),
        diff(&want, &got)
    );
}

fn diff(want: &str, got: &str) -> String {
    let w: std::collections::BTreeSet<&str> = want.lines().collect();
    let g: std::collections::BTreeSet<&str> = got.lines().collect();
    let mut out = String::new();
    for l in w.difference(&g) {
        out.push_str(&format!("- {l}\n"));
    }
    for l in g.difference(&w) {
        out.push_str(&format!("+ {l}\n"));
    }
    out
}
