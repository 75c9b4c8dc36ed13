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

mod support;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use overlay::ErrorKind;
use support::drivers::Env;
use support::*;

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

/// An image at `env`'s `img` of two layers: `a` ("1") in the base, `b` ("2") above it.
fn two_layer_image(env: &Env) -> PathBuf {
    let layers = [simple_tar(&[("a", b"1")]), simple_tar(&[("b", b"2")])];
    layout_with_layers(&env.dir().join("img"), &layers, &["/bin/sh"])
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
    let tree = store.layer_tree(l).unwrap();
    let stored = tree.join("var/lib/db");
    let md = std::fs::metadata(&stored).unwrap();
    assert_eq!(md.len(), 48 << 20);
    assert!(md.blocks() * 512 < 2 << 20, "still sparse: {} bytes allocated", md.blocks() * 512);
    assert!(
        !tree.join("var/lib").read_dir().unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("GNUSparseFile")),
        "no raw GNUSparseFile directory"
    );
    assert!(!tree.join("GNUSparseFile.0").exists());
    store.release_layer_tree(l).unwrap();
    store.create("sparse:1", "c", None).unwrap();
    let m = store.mount("c").unwrap();
    assert_eq!(std::fs::read(m.join("var/lib/db")).unwrap(), std::fs::read(&real).unwrap());
    assert_eq!(l.size, 48 << 20, "the layer's size counts the real size");
    store.unmount("c").unwrap();
    store.remove("c").unwrap();
}

const CRASH_ENV: &str = "LAMINA_CONTRACT_CRASH_CHILD";

/// The child half of the crash cases: run `action` on the parent's store with a hook that
/// SIGKILLs this process at crash point `point`.
///
/// `spec` is `point\nroot\naction\narg`: actions `import` (arg: an image layout) and `rm`
/// (arg: a container name).
fn crash_child(driver: overlay::Driver, spec: &str) -> ! {
    static POINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    fn kill_at(point: &str) {
        if POINT.get().is_some_and(|p| p == point) {
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL)
                .expect("SIGKILL self");
        }
    }
    let parts: Vec<&str> = spec.split('\n').collect();
    let [point, root, action, arg] = parts[..] else { panic!("bad crash spec {spec:?}") };
    POINT.set(point.to_string()).unwrap();
    overlay::fault::set_hook(kill_at);
    let store = drivers::open_store(driver, Path::new(root));
    match action {
        "import" => drop(store.import(Path::new(arg), Some("crash:1")).unwrap()),
        "rm" => store.remove(arg).unwrap(),
        other => panic!("unknown crash action {other}"),
    }
    panic!("the crash point {point} was never reached");
}

/// Run this test binary's `test_name` again as a child that crashes at `point` while doing
/// `action arg` on the store at `root`; assert it died of SIGKILL.
fn crash_in_child(test_name: &str, point: &str, root: &Path, action: &str, arg: &Path) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CRASH_ENV, format!("{point}\n{}\n{action}\n{}", root.display(), arg.display()))
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the child died of SIGKILL at {point}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The start of a crash case. In the re-run child: crash as the parent asked (the parent's
/// store, and its mount, is used; no new environment). In the parent: (a fresh environment,
/// its two-layer image, the store root).
fn crash_case(driver: &str) -> (Env, PathBuf, PathBuf) {
    if let Ok(spec) = std::env::var(CRASH_ENV) {
        crash_child(drivers::driver_of(driver), &spec);
    }
    let env = Env::new(driver);
    let img = two_layer_image(&env);
    let root = env.store_root();
    (env, img, root)
}

/// A SIGKILL after a layer was moved into place but before it was recorded leaves its whole
/// directory and `l/` link; the next open removes both.
fn sigkill_during_import_leaks_nothing(driver: &str, test_name: &str) {
    let (env, img, root) = crash_case(driver);
    drop(env.open());
    crash_in_child(test_name, "layer-placed", &root, "import", &img);
    // The window was hit: a complete layer directory that no record names.
    let leaked = layer_dirs(&root);
    assert_eq!(leaked.len(), 1, "one placed layer: {leaked:?}");
    let vols_before = env.volumes();
    if let Some(v) = &vols_before {
        assert_eq!(v.len(), 2, "base and the placed layer's volume: {v:?}");
        assert!(root.join(&leaked[0]).join("device").exists());
    } else {
        assert!(root.join(&leaked[0]).join("diff/a").exists());
    }
    assert_eq!(count(&root.join("layerdb")), 0, "no layerdb entry yet");
    let store = env.open();
    assert!(layer_dirs(&root).is_empty(), "the leaked layer is gone: {:?}", layer_dirs(&root));
    if let Some(v) = env.volumes() {
        assert_eq!(v.len(), 1, "its volume is gone from the pool, the base stays: {v:?}");
    }
    assert_eq!(count(&root.join("l")), 0, "its short link is gone");
    assert_eq!(count(&root.join("tmp")), 0);
    // And the store still works: the import succeeds from scratch.
    store.import(&img, Some("crash:1")).unwrap();
    assert_eq!(store.layers().unwrap().len(), 2);
    assert_eq!(layer_dirs(&root).len(), 2);
}

/// `rm` killed after it marked the container as removing is finished at the next open.
fn sigkill_during_remove_is_finished_at_open(driver: &str, test_name: &str) {
    let (env, img, root) = crash_case(driver);
    let cache_id = {
        let store = env.open();
        store.import(&img, Some("x:1")).unwrap();
        let c = store.create("x:1", "victim", None).unwrap();
        let m = store.mount("victim").unwrap();
        std::fs::write(m.join("written"), "by the container").unwrap();
        store.unmount("victim").unwrap();
        c.cache_id
    };
    crash_in_child(test_name, "container-removing", &root, "rm", Path::new("victim"));
    assert!(root.join("containers/victim-removing.json").exists(), "killed mid-removal");
    assert!(root.join(&cache_id).exists());
    let store = env.open();
    assert!(!root.join(&cache_id).exists() && !root.join(format!("{cache_id}-removing")).exists());
    assert!(!root.join("containers/victim-removing.json").exists());
    assert_eq!(store.container("victim").unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(layer_dirs(&root).len(), 2, "the image's layers stay");
    // The name is free again and the image intact.
    store.create("x:1", "victim", None).unwrap();
    let m = store.mount("victim").unwrap();
    assert!(!m.join("written").exists());
    assert_eq!(std::fs::read_to_string(m.join("b")).unwrap(), "2");
    store.unmount("victim").unwrap();
    store.remove("victim").unwrap();
}

/// An image deeper than a container can stack is refused at import, before extraction.
fn image_of_129_layers_is_refused_at_import(env: Env) {
    let img = stacked_image(&env.dir().join("img"), 129);
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
    let chain = units::chain(&err);
    assert!(chain.contains("tar entry \"etc/alias\""), "names the entry: {chain}");
    assert!(
        chain.contains("hard link to \"etc/base\", which exists only in a lower layer"),
        "says why: {chain}"
    );
    assert_eq!(store.layers().unwrap().len(), 1, "only the lower layer was stored");
    assert_eq!(layer_dirs(store.root()).len(), 1);
    assert_eq!(count(&store.root().join("tmp")), 0, "no staging left");
}

// ---- the driver contract -----------------------------------------------------------

/// The merged tree of a container equals `umoci unpack` of the same image.
fn merged_tree_equals_umoci_unpack(env: Env) {
    need("umoci");
    let img = build_rich_image(env.dir());
    let reference = umoci_unpack(&img, "final", &env.dir().join("ref"));
    let store = env.open();
    store.import_image(&img, Some("final"), Some("rich:final")).unwrap();
    store.create("rich:final", "c", None).unwrap();
    let merged = store.mount("c").unwrap();
    let a = snapshot(&merged);
    let b = snapshot(&reference);
    // /d is the directory `umoci insert --opaque` replaced (see diff_trees_ignoring).
    let d = diff_trees_ignoring(&a, &b, &["/d"]);
    assert!(d.is_empty(), "merged tree differs from umoci unpack:\n{}", d.join("\n"));
    assert!(a.nodes.len() > 20, "suspiciously small tree: {}", a.nodes.len());
    store.unmount("c").unwrap();
    store.remove("c").unwrap();
}

/// Commit, export, import into a fresh store of the same driver, export again: the same
/// bytes, and the committed tree comes back.
fn commit_then_export_keeps_digests(env: Env) {
    let img = build_rich_image(env.dir());
    let store = env.open();
    let orig = store.import_image(&img, Some("final"), Some("rich:final")).unwrap().remove(0);
    let first = env.dir().join("orig.tar");
    let info = store.export("rich:final", &first, overlay::ExportFormat::Oci).unwrap();
    assert_eq!(info.manifest.digest, orig.manifest.digest, "export keeps the manifest digest");
    store.create("rich:final", "work", None).unwrap();
    let m = store.mount("work").unwrap();
    edit_rich_container(&m);
    let want = snapshot(&m);
    let committed = store.commit("work", "rich:committed").unwrap();
    assert_eq!(committed.layers.len(), orig.layers.len() + 1);
    let out = env.dir().join("committed.tar");
    let info = store.export("rich:committed", &out, overlay::ExportFormat::Docker).unwrap();
    assert_eq!(info.config, committed.id);

    let fresh = env.open_other("fresh");
    let back = fresh.import(&out, None).unwrap().remove(0);
    assert_eq!(back.id, committed.id, "same image id after the round trip");
    let ids = |i: &overlay::ImageMeta| -> Vec<(String, String)> {
        i.layers.iter().map(|l| (l.diff_id.to_string(), l.chain_id.to_string())).collect()
    };
    assert_eq!(ids(&back), ids(&committed), "same diff and chain ids");
    let again = env.dir().join("again.tar");
    fresh.export(back.id.as_str(), &again, overlay::ExportFormat::Docker).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap(), "identical export");
    fresh.create("rich:committed", "again", None).unwrap();
    let m2 = fresh.mount("again").unwrap();
    let d = diff_trees(&want, &snapshot(&m2));
    assert!(d.is_empty(), "committed tree differs:\n{}", d.join("\n"));
    assert!(!m2.join("d/only").exists(), "the recreated directory hides the lower content");
    fresh.unmount("again").unwrap();
    store.unmount("work").unwrap();
}

/// `--size`: enforced where the driver has quotas on this filesystem, refused with Docker's
/// reason where it has none (overlay and vfs need XFS project quotas, which the host kernel
/// lacks; the VM tier enforces them).
fn size_is_enforced_or_refused(env: Env) {
    let img = layout_with_layers(&env.dir().join("img"), &[simple_tar(&[("a", b"1")])], &["/x"]);
    let store = env.open();
    store.import(&img, Some("q:1")).unwrap();
    match env.driver {
        overlay::Driver::Btrfs => {
            store.create("q:1", "small", Some(32 << 20)).unwrap();
            let (written, err) = fill(&store.mount("small").unwrap(), 64 << 20);
            assert_eq!(err.raw_os_error(), Some(122), "EDQUOT, not {err}");
            assert!(written >= 16 << 20, "the limit is 32 MiB, stopped at {written}");
            store.unmount("small").unwrap();
            store.remove("small").unwrap();
        }
        overlay::Driver::Devicemapper => {
            // The size of a container is its device's: dm.basesize (96 MiB here).
            let err = store.create("q:1", "sized", Some(32 << 20)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
            assert!(err.to_string().contains("dm.basesize"), "{err}");
            store.create("q:1", "small", None).unwrap();
            let (written, err) = fill(&store.mount("small").unwrap(), 128 << 20);
            assert_eq!(err.raw_os_error(), Some(28), "ENOSPC, not {err}");
            assert!(written >= 48 << 20, "the base is 96 MiB, stopped at {written}");
            store.unmount("small").unwrap();
            store.remove("small").unwrap();
        }
        _ => {
            let err = store.create("q:1", "small", Some(32 << 20)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
            assert!(err.to_string().contains("pquota"), "{err}");
            assert!(store.containers().unwrap().is_empty(), "nothing half-created");
        }
    }
}

/// Write 1 MiB chunks (each synced) into `dir/fill` until a write fails; never past `cap`.
fn fill(dir: &Path, cap: u64) -> (u64, std::io::Error) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("fill")).unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    loop {
        match f.write_all(&chunk).and_then(|()| f.sync_data()) {
            Ok(()) => written += chunk.len() as u64,
            Err(e) => return (written, e),
        }
        assert!(written <= cap, "wrote {written} bytes past the limit");
    }
}

/// One module of tests per driver. The cases taking an `Env` get a fresh environment; the crash
/// cases get the driver's name and their own full test name, which the child re-run selects.
macro_rules! contract {
    ($module:ident, $driver:literal) => {
        contract!(
            $module,
            $driver,
            env: [
                file_capabilities_survive_import,
                pax_sparse_files_unpack_as_sparse_files,
                merged_tree_equals_umoci_unpack,
                commit_then_export_keeps_digests,
                size_is_enforced_or_refused,
                image_of_129_layers_is_refused_at_import,
                hardlink_into_a_lower_layer_is_refused_with_a_reason,
            ],
            crash: [sigkill_during_import_leaks_nothing, sigkill_during_remove_is_finished_at_open],
        );
    };
    ($module:ident, $driver:literal, env: [$($case:ident),* $(,)?], crash: [$($crash:ident),* $(,)?] $(,)?) => {
        mod $module {
            use super::*;

            $(
                #[test]
                fn $case() {
                    super::$case(Env::new($driver))
                }
            )*

            $(
                #[test]
                fn $crash() {
                    super::$crash($driver, concat!(stringify!($module), "::", stringify!($crash)))
                }
            )*
        }
    };
}

contract!(overlay2, "overlay");
contract!(vfs, "vfs");
contract!(btrfs, "btrfs");
contract!(devicemapper, "devicemapper");

/// btrfs's own shape: every layer a read-only subvolume snapshotted from its parent's, the
/// container a writable snapshot of the top layer.
#[test]
fn btrfs_layers_are_readonly_snapshots_of_their_parents() {
    let env = Env::new("btrfs");
    let img = two_layer_image(&env);
    let store = env.open();
    store.import(&img, Some("x:1")).unwrap();
    let c = store.create("x:1", "c", None).unwrap();
    let show = |cache_id: &str| -> (String, String) {
        let diff = store.root().join(cache_id).join("diff");
        assert!(overlay::btrfs::is_subvolume(&diff).unwrap(), "{} is a subvolume", diff.display());
        let out = run(Command::new("btrfs").args(["subvolume", "show"]).arg(&diff));
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
                .unwrap_or_else(|| panic!("no {name} in {out}"))
        };
        (field("UUID:"), format!("{} {}", field("Parent UUID:"), field("Flags:")))
    };
    let layers = store.layers().unwrap();
    let base = layers.iter().find(|l| l.parent.is_none()).unwrap();
    let top = layers.iter().find(|l| l.parent.is_some()).unwrap();
    let (base_uuid, base_rest) = show(&base.cache_id);
    let (top_uuid, top_rest) = show(&top.cache_id);
    let (_, c_rest) = show(&c.cache_id);
    assert_eq!(base_rest, "- readonly", "the base layer is a new read-only subvolume");
    assert_eq!(top_rest, format!("{base_uuid} readonly"), "snapshot of the base, read-only");
    assert_eq!(c_rest, format!("{top_uuid} -"), "the container: a writable snapshot of the top");
    let err = std::fs::write(store.root().join(&top.cache_id).join("diff/x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS writing into a layer: {err}");
    // Removal deletes the container's subvolume.
    store.remove("c").unwrap();
    assert!(!store.root().join(&c.cache_id).exists());
}

/// `rm` of a container whose subvolume a running container uses (here: a private mount
/// namespace with the subvolume bind-mounted, as crun does with a rootfs) is refused: deleting
/// the subvolume would have pulled the tree, and every mount made inside it, from under the
/// running container (seen in the VM: its /proc vanished). Once it exits, `rm` works.
#[test]
fn btrfs_rm_of_a_subvolume_in_use_is_refused() {
    let env = Env::new("btrfs");
    let img = layout_with_layers(&env.dir().join("img"), &[simple_tar(&[("a", b"1")])], &["/x"]);
    let store = env.open();
    store.import(&img, Some("x:1")).unwrap();
    let c = store.create("x:1", "held", None).unwrap();
    let diff = store.root().join(&c.cache_id).join("diff");
    assert!(overlay::btrfs::users(&diff).unwrap().is_empty(), "nobody uses it yet");
    let script = format!("mount --bind {0} {0} && echo up && exec sleep 600", diff.display());
    let holder = Reaped::in_private_mount_namespace(&script);
    let users = overlay::btrfs::users(&diff).unwrap();
    assert!(users.iter().any(|u| u.starts_with(&format!("pid {}", holder.0.id()))), "{users:?}");
    let err = store.remove("held").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("is in use"), "{err}");
    assert!(store.container("held").is_ok(), "still there");
    assert!(diff.join("a").exists(), "its tree is untouched");
    drop(holder);
    store.remove("held").unwrap();
    assert!(!store.root().join(&c.cache_id).exists());
}

// ---- devicemapper's own shape (host: loop devices stand in for the pool's) --------------

/// (source device, filesystem type, mount options + super options) of the mount at `path`.
fn mounted_source(path: &Path) -> Option<(String, String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let sep = f.iter().position(|x| *x == "-")?;
        (Path::new(f[4]) == path).then(|| {
            (f[sep + 2].to_string(), f[sep + 1].to_string(), format!("{},{}", f[5], f[sep + 3]))
        })
    })
}

/// Layers are snapshots kept read-only, a container is mounted from its own block device.
#[test]
fn devicemapper_layers_are_snapshots_and_containers_have_their_own_device() {
    let env = Env::new("devicemapper");
    let img = two_layer_image(&env);
    let store = env.open();
    assert_eq!(env.volumes().unwrap().len(), 1, "the base device");
    store.import(&img, Some("x:1")).unwrap();
    assert_eq!(env.volumes().unwrap().len(), 3, "base + one per layer");
    let c1 = store.create("x:1", "c1", None).unwrap();
    store.create("x:1", "c2", None).unwrap();
    assert_eq!(env.volumes().unwrap().len(), 5, "and one per container");
    let m1 = store.mount("c1").unwrap();
    let m2 = store.mount("c2").unwrap();
    let (dev1, fs1, opts1) = mounted_source(m1.parent().unwrap()).expect("c1 mounted");
    let (dev2, _, _) = mounted_source(m2.parent().unwrap()).expect("c2 mounted");
    assert!(dev1.starts_with("/dev/loop") && dev1 != dev2, "own devices: {dev1} {dev2}");
    assert_eq!(fs1, "ext4");
    assert!(opts1.starts_with("rw"), "{opts1}");
    assert_eq!(std::fs::read_to_string(m1.join("a")).unwrap(), "1");
    std::fs::write(m1.join("only-c1"), "x").unwrap();
    assert!(!m2.join("only-c1").exists(), "containers do not share writes");
    assert!(store.root().join(&c1.cache_id).join("device").exists());
    // A layer is mounted read-only when it is read.
    let top = store.layers().unwrap().into_iter().find(|l| l.parent.is_some()).unwrap();
    let tree = store.layer_tree(&top).unwrap();
    assert_eq!(std::fs::read_to_string(tree.join("b")).unwrap(), "2");
    let err = std::fs::write(tree.join("x"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(30), "EROFS: {err}");
    store.release_layer_tree(&top).unwrap();
    for c in ["c1", "c2"] {
        store.unmount(c).unwrap();
        store.remove(c).unwrap();
    }
    assert_eq!(env.volumes().unwrap().len(), 3, "the containers' volumes are deleted");
    store.prune(true, false).unwrap();
    assert_eq!(env.volumes().unwrap().len(), 1, "prune deletes the layers' volumes");
}

/// `rm` of a container whose mount is busy: refused without dm.use_deferred_removal, done
/// lazily with it (the device and volume go once the last user leaves).
#[test]
fn devicemapper_busy_rm_is_refused_or_deferred() {
    let (env, root, store, m) = mounted_without_deferral("busy");
    // The container's user.
    let mut user = Reaped(Command::new("sleep").arg("600").current_dir(&m).spawn().unwrap());
    let (store, provider) =
        busy_rm_refused_then_deferred(&env, &root, store, "busy", "dm.use_deferred_removal");
    assert_eq!(provider.deferred(), 1, "the volume's deletion waits for its user");
    let cwd = format!("/proc/{}/cwd/a", user.0.id());
    assert_eq!(std::fs::read_to_string(cwd).unwrap(), "1", "the user still sees its tree");
    assert!(!m.join("a").exists(), "detached from the store");
    user.0.kill().unwrap();
    user.0.wait().unwrap();
    deferred_deletion_done(&env, &store, &provider);
}

/// A container's filesystem that another mount namespace still holds (a running container
/// copied the store's mounts when it started): unmounting here succeeds, but the device is
/// still open. `rm` is refused with the driver's busy error without dm.use_deferred_removal
/// (the pool daemon refuses the detach), and with it the device is detached at its last close
/// (the daemon's deferred detach; before, `rm` failed on the daemon's refusal even with
/// deferral on).
#[test]
fn devicemapper_rm_of_a_mount_another_namespace_holds() {
    let (env, root, store, m) = mounted_without_deferral("held");
    let holder = Reaped::in_private_mount_namespace("echo up; exec sleep 600");
    let (store, provider) =
        busy_rm_refused_then_deferred(&env, &root, store, "held", "mount namespace");
    assert!(!m.exists(), "gone from the store");
    // Whether the stand-in sees the deletion as deferred depends on the host kernel: on some
    // (6.18 here) `losetup -j` stops listing a device once `losetup -d` has set autoclear,
    // though the other namespace still has it mounted, so the stand-in deletes at once. The
    // pool daemon's deferred deletion is shown on the real pool in tests/tests/vm_drivers.rs.
    assert!(provider.deferred() <= 1, "one deletion at most is waiting");
    drop(holder);
    deferred_deletion_done(&env, &store, &provider);
}

/// A devicemapper store opened without dm.use_deferred_removal, holding image `x:1` and the
/// container `name` created from it and mounted: (env, store root, store, mount point).
fn mounted_without_deferral(name: &str) -> (Env, PathBuf, overlay::Store, PathBuf) {
    let env = Env::new("devicemapper");
    let img = layout_with_layers(&env.dir().join("img"), &[simple_tar(&[("a", b"1")])], &["/x"]);
    let root = env.store_root();
    let store = drivers::open_store_with(env.driver, &root, &["dm.fs=ext4", "dm.basesize=96M"]);
    store.import(&img, Some("x:1")).unwrap();
    store.create("x:1", name, None).unwrap();
    let m = store.mount(name).unwrap();
    (env, root, store, m)
}

/// `rm name` of a busy container on `store` (opened without dm.use_deferred_removal) is
/// refused as busy, saying `why`, and the container stays; reopened with it, `rm` succeeds.
/// Returns the reopened store and the loop provider behind its pool.
fn busy_rm_refused_then_deferred(
    env: &Env,
    root: &Path,
    store: overlay::Store,
    name: &str,
    why: &str,
) -> (overlay::Store, support::loopdev::LoopProvider) {
    let err = store.remove(name).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("is busy"), "{err}");
    assert!(err.to_string().contains(why), "{err}");
    assert!(store.container(name).is_ok(), "still there");
    drop(store);

    let store = env.open(); // with dm.use_deferred_removal=true
    store.remove(name).unwrap();
    assert_eq!(store.container(name).unwrap_err().kind(), ErrorKind::NotFound);
    (store, support::loopdev::LoopProvider::new(&root.with_file_name("pool"), 0))
}

/// Waits for the pool's deferred deletion once the last user has gone (the kernel releases the
/// loop device when the lazily unmounted filesystem is), leaving the base and the layer.
fn deferred_deletion_done(
    env: &Env,
    store: &overlay::Store,
    provider: &support::loopdev::LoopProvider,
) {
    wait_for("the deferred deletion", std::time::Duration::from_secs(30), || {
        store.info().unwrap();
        provider.deferred() == 0
    });
    assert_eq!(env.volumes().unwrap().len(), 2, "base + the layer");
}

/// `info` shows Docker's devicemapper fields, the driver's settings over the pool's.
#[test]
fn devicemapper_info_has_dockers_fields() {
    let env = Env::new("devicemapper");
    let store = env.open();
    let info = store.info().unwrap();
    let get = |k: &str| {
        info.iter()
            .find(|(ik, _)| ik == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {info:?}"))
    };
    assert_eq!(get("Storage Driver"), "devicemapper");
    assert_eq!(get("Pool Name"), "loop-test-pool");
    assert_eq!(get("Base Device Size"), "100.7MB", "96 MiB, printed like Docker");
    assert_eq!(get("Backing Filesystem"), "ext4");
    assert_eq!(get("Deferred Removal Enabled"), "true");
    assert_eq!(get("Deferred Deletion Enabled"), "false");
    assert_eq!(get("Thin Pool Minimum Free Space"), "859MB", "10 % of the 8 GiB pool");
    assert!(get("Data Space Used").parse::<u64>().unwrap() > 0);
}

/// dm.fs=xfs: every snapshot carries the base's XFS UUID, so two containers mount at once
/// only with `nouuid` (Docker adds it too).
#[test]
fn devicemapper_xfs_containers_mount_side_by_side() {
    let env = Env::new("devicemapper");
    let root = env.store_root();
    let store = drivers::open_store_with(env.driver, &root, &["dm.fs=xfs", "dm.basesize=320M"]);
    let img = layout_with_layers(&env.dir().join("img"), &[simple_tar(&[("a", b"1")])], &["/x"]);
    store.import(&img, Some("x:1")).unwrap();
    store.create("x:1", "c1", None).unwrap();
    store.create("x:1", "c2", None).unwrap();
    let m1 = store.mount("c1").unwrap();
    let m2 = store.mount("c2").unwrap();
    let (_, fs, opts) = mounted_source(m2.parent().unwrap()).unwrap();
    assert_eq!(fs, "xfs");
    assert!(opts.split(',').any(|o| o == "nouuid"), "{opts}");
    assert_eq!(std::fs::read_to_string(m1.join("a")).unwrap(), "1");
    assert_eq!(std::fs::read_to_string(m2.join("a")).unwrap(), "1");
    for c in ["c1", "c2"] {
        store.unmount(c).unwrap();
        store.remove(c).unwrap();
    }
}
