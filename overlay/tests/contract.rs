//! Host tier: one contract, every driver the host can run (overlay and vfs on the test
//! directory, btrfs on a loop-mounted btrfs). Each case is written once against a store and
//! instantiated per driver by `contract!` at the bottom. devicemapper runs the same cases in
//! the VM tier (`tests/tests/vm_drivers.rs`).
//!
//! The cases: the merged tree equals `umoci unpack`; commit then export keeps every digest;
//! a removal killed part-way is finished at the next open; `--size` is enforced where the
//! driver has quotas; and the five import defects of issue "devicemapper and btrfs drivers":
//! file capabilities, PAX 1.0 sparse files, a SIGKILL between placing a layer and recording
//! it, an image deeper than overlay can stack, a hard link into a lower layer.

mod common;
mod drivers;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use common::*;
use drivers::Env;
use overlay::{ErrorKind, Store};

fn err_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(" <- ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// 64-hex directories in the store root (layers and containers).
fn layer_dirs(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()))
        .collect();
    v.sort();
    v
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

/// A tar of `dir`'s contents made by GNU tar with `extra` options (numeric owners, POSIX
/// format, so xattrs and sparse maps travel as PAX records).
fn gnu_tar(dir: &Path, out: &Path, extra: &[&str]) -> Vec<u8> {
    run(Command::new("tar")
        .args(["--format=posix", "--numeric-owner", "--sort=name", "--mtime=@1000000000"])
        .args(extra)
        .arg("-C")
        .arg(dir)
        .arg("-cf")
        .arg(out)
        .arg("."));
    std::fs::read(out).unwrap()
}

// ---- the five import defects ----------------------------------------------------------

/// `security.capability` survives: Linux drops it on every chown, so it must be set after.
fn file_capabilities_survive_import(env: Env) {
    need("setcap");
    need("getcap");
    let src = env.dir().join("src");
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::copy("/bin/true", src.join("bin/ping")).unwrap();
    run(Command::new("setcap").arg("cap_net_raw+ep").arg(src.join("bin/ping")));
    let want = overlay::fsutil::get_xattr(&src.join("bin/ping"), b"security.capability")
        .unwrap()
        .expect("setcap wrote the xattr");
    let layer = gnu_tar(&src, &env.dir().join("l.tar"), &["--xattrs", "--xattrs-include=*"]);
    let img = layout_with_layers(&env.dir().join("img"), &[layer], &["/bin/ping"]);
    let store = env.open();
    store.import(&img, Some("cap:1")).unwrap();
    store.create("cap:1", "c", None).unwrap();
    let m = store.mount("c").unwrap();
    let got = overlay::fsutil::get_xattr(&m.join("bin/ping"), b"security.capability").unwrap();
    assert_eq!(got.as_deref(), Some(&want[..]), "security.capability in the container");
    let caps = run(Command::new("getcap").arg(m.join("bin/ping")));
    assert!(caps.contains("cap_net_raw=ep"), "getcap: {caps}");
    store.unmount("c").unwrap();
    store.remove("c").unwrap();
}

/// GNU tar `--sparse --format=posix` (PAX 1.0 sparse) unpacks as the real sparse file.
fn pax_sparse_files_unpack_as_sparse_files(env: Env) {
    let src = env.dir().join("src");
    std::fs::create_dir_all(src.join("var/lib")).unwrap();
    let real = src.join("var/lib/db");
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::create(&real).unwrap();
        f.set_len(48 << 20).unwrap();
        f.write_all_at(b"in the middle", 5 << 20).unwrap();
        f.write_all_at(&[7u8; 70_000], 20 << 20).unwrap();
        f.write_all_at(b"tail", (48 << 20) - 4).unwrap();
    }
    let layer = gnu_tar(&src, &env.dir().join("l.tar"), &["--sparse"]);
    assert!(
        layer.windows(18).any(|w| w == b"GNU.sparse.major=1"),
        "GNU tar wrote a PAX 1.0 sparse entry"
    );
    assert!(layer.len() < 1 << 20, "the tar itself is small: {}", layer.len());
    let img = layout_with_layers(&env.dir().join("img"), &[layer], &["/bin/sh"]);
    let store = env.open();
    store.import(&img, Some("sparse:1")).unwrap();
    // The stored layer: the real name, the real size, holes kept.
    let l = &store.layers().unwrap()[0];
    let stored = env.layer_file(&store, &l.cache_id, "var/lib/db");
    let md = std::fs::metadata(&stored).unwrap();
    assert_eq!(md.len(), 48 << 20);
    assert!(md.blocks() * 512 < 2 << 20, "still sparse: {} bytes allocated", md.blocks() * 512);
    assert!(
        !env.layer_file(&store, &l.cache_id, "var/lib").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("GNUSparseFile")),
        "no raw GNUSparseFile directory"
    );
    assert!(!env.layer_file(&store, &l.cache_id, "GNUSparseFile.0").exists());
    store.create("sparse:1", "c", None).unwrap();
    let m = store.mount("c").unwrap();
    assert_eq!(std::fs::read(m.join("var/lib/db")).unwrap(), std::fs::read(&real).unwrap());
    assert_eq!(l.size, 48 << 20, "the layer's size counts the real size");
    store.unmount("c").unwrap();
    store.remove("c").unwrap();
}

const CRASH_ENV: &str = "LAMINA_CONTRACT_CRASH_CHILD";

/// The child half of [`sigkill_during_import_leaks_nothing`]: import with a hook that
/// SIGKILLs this process right after the layer is in place and flushed, before its layerdb
/// entry is written.
fn crash_child(driver: overlay::Driver, spec: &str) -> ! {
    fn kill_at(point: &str) {
        if point == "layer-placed" {
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
                .expect("SIGKILL self");
        }
    }
    let (root, img) = spec.split_once('\n').expect("root\\nimage");
    overlay::fault::set_hook(kill_at);
    let store = Store::open(Path::new(root), driver).unwrap();
    store.import(Path::new(img), Some("crash:1")).unwrap();
    panic!("the crash point was never reached");
}

/// A SIGKILL after a layer was moved into place but before it was recorded leaves its whole
/// directory and `l/` link; the next open removes both.
fn sigkill_during_import_leaks_nothing(driver: &str, test_name: &str) {
    if let Ok(spec) = std::env::var(CRASH_ENV) {
        // In the child: the parent's store (and its mount) is used, no new environment.
        crash_child(drivers::driver_of(driver), &spec);
    }
    let env = Env::new(driver);
    let img = layout_with_layers(
        &env.dir().join("img"),
        &[simple_tar(&[("a", b"1")]), simple_tar(&[("b", b"2")])],
        &["/bin/sh"],
    );
    let root = env.store_root();
    drop(env.open());
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, format!("{}\n{}", root.display(), img.display()))
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the child died of SIGKILL at the crash point: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    // The window was hit: a complete layer directory that no record names.
    let leaked = layer_dirs(&root);
    assert_eq!(leaked.len(), 1, "one placed layer: {leaked:?}");
    assert!(root.join(&leaked[0]).join("diff/a").exists());
    assert_eq!(count(&root.join("layerdb")), 0, "no layerdb entry yet");
    let store = env.open();
    assert!(layer_dirs(&root).is_empty(), "the leaked layer is gone: {:?}", layer_dirs(&root));
    assert_eq!(count(&root.join("l")), 0, "its short link is gone");
    assert_eq!(count(&root.join("tmp")), 0);
    // And the store still works: the import succeeds from scratch.
    store.import(&img, Some("crash:1")).unwrap();
    assert_eq!(store.layers().unwrap().len(), 2);
    assert_eq!(layer_dirs(&root).len(), 2);
}

/// An image deeper than a container can stack is refused at import, before extraction.
fn image_of_129_layers_is_refused_at_import(env: Env) {
    let layers: Vec<Vec<u8>> =
        (0..129).map(|i| simple_tar(&[(&format!("f{i}"), format!("{i}").as_bytes())])).collect();
    let img = layout_with_layers(&env.dir().join("img"), &layers, &["/bin/sh"]);
    let store = env.open();
    let err = store.import(&img, Some("deep:129")).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Limit, "{err}");
    assert!(err.to_string().contains("max depth exceeded"), "Docker's words: {err}");
    assert!(err.to_string().contains("129 layers"), "{err}");
    assert!(store.layers().unwrap().is_empty(), "nothing extracted");
    assert!(layer_dirs(store.root()).is_empty());
    assert!(store.images().unwrap().is_empty());
}

/// A hard link to a file that only a lower layer has fails, naming the entry and why.
fn hardlink_into_a_lower_layer_is_refused_with_a_reason(env: Env) {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(1_000_000_000);
    h.set_uid(0);
    h.set_gid(0);
    b.append_link(&mut h, "etc/alias", "etc/base").unwrap();
    let upper = b.into_inner().unwrap();
    let img = layout_with_layers(
        &env.dir().join("img"),
        &[simple_tar(&[("etc/base", b"lower")]), upper],
        &["/bin/sh"],
    );
    let store = env.open();
    let err = store.import(&img, Some("hl:1")).unwrap_err();
    let chain = err_chain(&err);
    assert!(chain.contains("tar entry \"etc/alias\""), "names the entry: {chain}");
    assert!(
        chain.contains("hard link to \"etc/base\", which exists only in a lower layer"),
        "says why: {chain}"
    );
    assert_eq!(store.layers().unwrap().len(), 1, "only the lower layer was stored");
    assert_eq!(layer_dirs(store.root()).len(), 1);
    assert_eq!(count(&store.root().join("tmp")), 0, "no staging left");
}

macro_rules! contract {
    ($module:ident, $driver:literal) => {
        mod $module {
            use super::*;

            fn env() -> Env {
                Env::new($driver)
            }

            #[test]
            fn file_capabilities_survive_import() {
                super::file_capabilities_survive_import(env())
            }

            #[test]
            fn pax_sparse_files_unpack_as_sparse_files() {
                super::pax_sparse_files_unpack_as_sparse_files(env())
            }

            #[test]
            fn sigkill_during_import_leaks_nothing() {
                super::sigkill_during_import_leaks_nothing(
                    $driver,
                    concat!(stringify!($module), "::sigkill_during_import_leaks_nothing"),
                )
            }

            #[test]
            fn image_of_129_layers_is_refused_at_import() {
                super::image_of_129_layers_is_refused_at_import(env())
            }

            #[test]
            fn hardlink_into_a_lower_layer_is_refused_with_a_reason() {
                super::hardlink_into_a_lower_layer_is_refused_with_a_reason(env())
            }
        }
    };
}

contract!(overlay2, "overlay");
contract!(vfs, "vfs");
contract!(btrfs, "btrfs");
