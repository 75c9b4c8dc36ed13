//! The one support module of overlay's integration tests (and of the layers bench), included
//! with `mod support;`. Here: real tools (umoci, skopeo) that fail loudly when missing, image
//! builders, a tree snapshot used to compare a mounted container with `umoci unpack`, waiting
//! for a condition with a deadline, and a scratch directory that leaves no mounts or loop
//! devices behind. The submodules hold what the driver tests share:
//!
//! ```text
//! drivers  a store root per driver on a filesystem it can use (btrfs on a loop device)
//! loopdev  the devicemapper driver's DeviceProvider over sparse files and loop devices
//! ```
#![allow(dead_code)] // each test file uses its own subset

pub mod drivers;
pub mod loopdev;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// Fail (never skip) when a tool the test needs is missing.
pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "this test needs `{tool}` on PATH (Debian package; `cargo xtask setup` installs it)"
    );
}

/// Run a command, panicking with its output on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn umoci(args: &[&str]) -> String {
    run(Command::new("umoci").args(args))
}

pub fn skopeo(args: &[&str]) -> String {
    run(Command::new("skopeo").args(args))
}

fn set_owner(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mknod(p: &Path, kind: rustix::fs::FileType, dev: u64) {
    rustix::fs::mknodat(rustix::fs::CWD, p, kind, rustix::fs::Mode::from_raw_mode(0o644), dev)
        .unwrap();
}

/// `umoci init` a layout at `img` with an empty image `base`, unpacked into the bundle `b`,
/// and put busybox (with `/bin/sh` linked to it) into its rootfs; returns the rootfs, where
/// the caller builds the rest of the first layer.
fn umoci_busybox_base(img: &Path, b: &Path) -> PathBuf {
    need("umoci");
    let base = format!("{}:base", img.display());
    umoci(&["init", "--layout", img.to_str().unwrap()]);
    umoci(&["new", "--image", &base]);
    umoci(&["unpack", "--image", &base, b.to_str().unwrap()]);
    let r = b.join("rootfs");
    std::fs::create_dir_all(r.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", r.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", r.join("bin/sh")).unwrap();
    r
}

/// Build a multi-layer OCI image at `dir/img` with umoci from real files. Tags:
/// `l1` (base), `l2` (deletions), `l3` (changes), `final` (opaque dir + whiteout via umoci
/// insert, plus a Cmd). Returns the layout path.
pub fn build_rich_image(dir: &Path) -> PathBuf {
    let img = dir.join("img");
    let b = dir.join("bundle");
    let ib = |t: &str| format!("{}:{t}", img.display());
    // Layer 1: a real static binary and a zoo of file kinds.
    let r = umoci_busybox_base(&img, &b);
    std::os::unix::fs::symlink("/bin/busybox", r.join("bin/ls")).unwrap();
    std::fs::create_dir_all(r.join("etc")).unwrap();
    std::fs::write(r.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::create_dir_all(r.join("d/sub")).unwrap();
    std::fs::write(r.join("d/x"), "x").unwrap();
    std::fs::write(r.join("d/y"), "y").unwrap();
    std::fs::write(r.join("d/sub/z"), "z").unwrap();
    std::fs::create_dir_all(r.join("del/inner")).unwrap();
    std::fs::write(r.join("del/inner/f"), "f").unwrap();
    std::fs::write(r.join("gone"), "gone").unwrap();
    std::fs::write(r.join("hl1"), "hardlinked").unwrap();
    std::fs::hard_link(r.join("hl1"), r.join("hl2")).unwrap();
    std::fs::write(r.join("xattr-file"), "x").unwrap();
    rustix::fs::setxattr(
        r.join("xattr-file").as_path(),
        "user.test",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    rustix::fs::setxattr(r.join("d").as_path(), "user.dir", b"dv", rustix::fs::XattrFlags::empty())
        .unwrap();
    mknod(&r.join("fifo"), rustix::fs::FileType::Fifo, 0);
    std::fs::create_dir_all(r.join("dev")).unwrap();
    mknod(&r.join("dev/null"), rustix::fs::FileType::CharacterDevice, rustix::fs::makedev(1, 3));
    let long_dir = r.join("l".repeat(120)).join("m".repeat(90));
    std::fs::create_dir_all(&long_dir).unwrap();
    std::fs::write(long_dir.join("n".repeat(200)), "long").unwrap();
    {
        let f = std::fs::File::create(r.join("sparse")).unwrap();
        f.set_len(16 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"middle", 8 << 20).unwrap();
    }
    std::fs::write(r.join("setuid"), "s").unwrap();
    set_mode(&r.join("setuid"), 0o4755);
    std::fs::write(r.join("nomode"), "n").unwrap();
    set_mode(&r.join("nomode"), 0o000);
    std::fs::create_dir_all(r.join("tmp")).unwrap();
    set_mode(&r.join("tmp"), 0o1777);
    std::fs::write(r.join("owned"), "o").unwrap();
    set_owner(&r.join("owned"), 1000, 1001);
    set_owner(&r.join("d/sub"), 65534, 65534);
    umoci(&["repack", "--image", &ib("l1"), b.to_str().unwrap()]);

    // Layer 2: deletions (a file, a whole directory tree).
    let b2 = dir.join("bundle2");
    umoci(&["unpack", "--image", &ib("l1"), b2.to_str().unwrap()]);
    let r = b2.join("rootfs");
    std::fs::remove_file(r.join("gone")).unwrap();
    std::fs::remove_dir_all(r.join("del")).unwrap();
    std::fs::remove_file(r.join("d/y")).unwrap();
    umoci(&["repack", "--image", &ib("l2"), b2.to_str().unwrap()]);

    // Layer 3: changes of content, mode and owner; a new deep file; a replaced symlink.
    let b3 = dir.join("bundle3");
    umoci(&["unpack", "--image", &ib("l2"), b3.to_str().unwrap()]);
    let r = b3.join("rootfs");
    std::fs::write(
        r.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home:/bin/sh\n",
    )
    .unwrap();
    set_mode(&r.join("d/x"), 0o600);
    set_owner(&r.join("d/x"), 7, 8);
    std::fs::create_dir_all(r.join("new/deep/er")).unwrap();
    std::fs::write(r.join("new/deep/er/file"), "deep").unwrap();
    std::fs::remove_file(r.join("bin/ls")).unwrap();
    std::os::unix::fs::symlink("busybox", r.join("bin/ls")).unwrap();
    umoci(&["repack", "--image", &ib("l3"), b3.to_str().unwrap()]);

    // Layer 4 and 5: an opaque directory and an explicit whiteout (umoci insert).
    let src = dir.join("opaque-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("only"), "only this").unwrap();
    umoci(&[
        "insert",
        "--image",
        &ib("l3"),
        "--tag",
        "l4",
        "--opaque",
        src.to_str().unwrap(),
        "/d",
    ]);
    umoci(&["insert", "--image", &ib("l4"), "--tag", "l5", "--whiteout", "/hl2"]);
    umoci(&[
        "config",
        "--image",
        &ib("l5"),
        "--tag",
        "final",
        "--config.cmd",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hello from lamina",
    ]);
    img
}

/// The edits to a container of `build_rich_image` that a commit must carry: a file changed,
/// one added, one deleted, and the directory `d` deleted and made again with new content
/// (overlay makes it opaque: the image's `d/only` must stay hidden).
pub fn edit_rich_container(m: &Path) {
    std::fs::write(m.join("etc/passwd"), "changed\n").unwrap();
    std::fs::write(m.join("added"), "added").unwrap();
    std::fs::remove_file(m.join("hl1")).unwrap();
    std::fs::remove_dir_all(m.join("d")).unwrap();
    std::fs::create_dir(m.join("d")).unwrap();
    std::fs::write(m.join("d/fresh"), "fresh").unwrap();
}

/// A small image with busybox only, tagged `bb`.
pub fn build_busybox_image(dir: &Path) -> PathBuf {
    let img = dir.join("bbimg");
    let b = dir.join("bbbundle");
    let ib = |t: &str| format!("{}:{t}", img.display());
    let r = umoci_busybox_base(&img, &b);
    std::fs::create_dir_all(r.join("data")).unwrap();
    std::fs::write(r.join("data/keep"), "keep").unwrap();
    std::fs::write(r.join("data/drop"), "drop").unwrap();
    umoci(&["repack", "--image", &ib("bb1"), b.to_str().unwrap()]);
    umoci(&["config", "--image", &ib("bb1"), "--tag", "bb", "--config.cmd", "/bin/sh"]);
    img
}

/// One file's observable state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub content: Option<String>,
    pub link: Option<String>,
    pub rdev: u64,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Snapshot of a tree: every path with its node, and the hardlink groups.
#[derive(Debug)]
pub struct Tree {
    pub nodes: BTreeMap<String, Node>,
    pub hardlinks: Vec<Vec<String>>,
}

/// Walk `root`. Overlay's own xattrs (`trusted.overlay.*`) are left out: they are the
/// store's markers, not image content.
pub fn snapshot(root: &Path) -> Tree {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let full = root.join(&rel);
        let md = std::fs::symlink_metadata(&full).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else if ft.is_block_device() {
            "blockdev"
        } else {
            "other"
        };
        let content =
            ft.is_file().then(|| hex::encode(Sha256::digest(std::fs::read(&full).unwrap())));
        let link = ft
            .is_symlink()
            .then(|| std::fs::read_link(&full).unwrap().to_string_lossy().into_owned());
        let mut xattrs = BTreeMap::new();
        if !ft.is_symlink() {
            for name in overlay::fsutil::list_xattrs(&full).unwrap() {
                let n = String::from_utf8_lossy(&name).into_owned();
                if n.starts_with("trusted.overlay.") {
                    continue;
                }
                xattrs.insert(
                    n,
                    overlay::fsutil::get_xattr(&full, &name).unwrap().unwrap_or_default(),
                );
            }
        }
        let key = format!("/{}", rel.display());
        if ft.is_file() && md.nlink() > 1 {
            inodes.entry((md.dev(), md.ino())).or_default().push(key.clone());
        }
        nodes.insert(
            key,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime(),
                content,
                link,
                rdev: md.rdev(),
                xattrs,
            },
        );
        if ft.is_dir() {
            for e in std::fs::read_dir(&full).unwrap() {
                let e = e.unwrap();
                let _ = e.file_name().as_bytes();
                stack.push(rel.join(e.file_name()));
            }
        }
    }
    let mut hardlinks: Vec<Vec<String>> = inodes.into_values().filter(|v| v.len() > 1).collect();
    for g in &mut hardlinks {
        g.sort();
    }
    hardlinks.sort();
    Tree { nodes, hardlinks }
}

/// Compare two trees and list every difference.
///
/// Not compared, and why:
/// - the root directory's own mode, owner and mtime: the merged root is the container's
///   fresh upper dir (created by the store, 0755 root:root, mtime = creation time) while
///   `umoci unpack` takes them from the image's `./` entry; overlay legitimately shows the
///   upper dir's attributes there;
/// - the mtime of the directories in `ignore_mtime`: used for a directory an opaque marker
///   cleared; `umoci unpack` 0.4.7 leaves its mtime at the time of unpacking, while the layer
///   tar's `d/` entry (which we apply) carries the source directory's mtime.
pub fn diff_trees_ignoring(a: &Tree, b: &Tree, ignore_mtime: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (k, na) in &a.nodes {
        match b.nodes.get(k) {
            None => out.push(format!("only in left: {k}")),
            Some(nb) if k == "/" && na.kind != nb.kind => out.push("root kind differs".to_string()),
            Some(_) if k == "/" => {}
            Some(nb) if ignore_mtime.contains(&k.as_str()) => {
                let mut na = na.clone();
                na.mtime = nb.mtime;
                if &na != nb {
                    out.push(format!("{k}: {na:?} != {nb:?}"));
                }
            }
            Some(nb) if na != nb => out.push(format!("{k}: {na:?} != {nb:?}")),
            _ => {}
        }
    }
    for k in b.nodes.keys() {
        if !a.nodes.contains_key(k) {
            out.push(format!("only in right: {k}"));
        }
    }
    if a.hardlinks != b.hardlinks {
        out.push(format!("hardlink groups differ: {:?} != {:?}", a.hardlinks, b.hardlinks));
    }
    out
}

/// [`diff_trees_ignoring`] with nothing extra ignored.
pub fn diff_trees(a: &Tree, b: &Tree) -> Vec<String> {
    diff_trees_ignoring(a, b, &[])
}

/// `umoci unpack` of `layout:tag` into `dir`; returns its rootfs.
pub fn umoci_unpack(layout: &Path, tag: &str, dir: &Path) -> PathBuf {
    umoci(&["unpack", "--image", &format!("{}:{tag}", layout.display()), dir.to_str().unwrap()]);
    dir.join("rootfs")
}

/// A tar holding `files` (name, content), built with the tar crate.
pub fn simple_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (n, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_000_000_000);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, n, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// `n` layer tars: layer `i` adds `fi` and rewrites `top`, both holding `i`.
pub fn many_layers(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            simple_tar(&[
                (&format!("f{i}"), format!("{i}").as_bytes()),
                ("top", format!("{i}").as_bytes()),
            ])
        })
        .collect()
}

/// The image of [`many_layers`]`(n)` with `Cmd` `/bin/sh`, as an OCI layout under `dir`.
pub fn stacked_image(dir: &Path, n: usize) -> PathBuf {
    layout_with_layers(dir, &many_layers(n), &["/bin/sh"])
}

/// An OCI layout at `dir/layout` with one image (ref `t`) made of `layers` (uncompressed
/// tars, base first) and a `Cmd`.
pub fn layout_with_layers(dir: &Path, layers: &[Vec<u8>], cmd: &[&str]) -> PathBuf {
    use overlay::Digest;
    let l = dir.join("layout");
    std::fs::create_dir_all(l.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| -> Digest {
        let d = Digest::of(bytes);
        std::fs::write(l.join("blobs/sha256").join(d.hex()), bytes).unwrap();
        d
    };
    let ids: Vec<Digest> = layers.iter().map(|x| put(x)).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd},
        "rootfs": {"type": "layers", "diff_ids": ids},
    }))
    .unwrap();
    let cd = put(&config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": ids.iter().zip(layers).map(|(d, x)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": x.len()})).collect::<Vec<_>>(),
    }))
    .unwrap();
    let md = put(&manifest);
    std::fs::write(l.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
        "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    std::fs::write(l.join("index.json"), serde_json::to_vec(&idx).unwrap()).unwrap();
    l
}

/// A child process that is killed and reaped however the test ends.
pub struct Reaped(pub std::process::Child);

impl Reaped {
    /// `sh -c script` in a private copy of every mount (a running container's view: unmounting
    /// here does not propagate into it), returned once the script has printed `up`.
    pub fn in_private_mount_namespace(script: &str) -> Self {
        need("unshare");
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut held = Self(child);
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(held.0.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "up", "{script}");
        held
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `cond` until it holds; panics naming `what` once `limit` has passed.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A temporary directory that first detaches every mount below it, then every loop device
/// backed by a file in it, so a failing test (a panic skips `unmount`) leaves neither overlay
/// mounts nor loop devices behind (the kernel frees a still busy loop device when it is
/// released).
pub struct TestDir(Option<tempfile::TempDir>);

impl TestDir {
    pub fn path(&self) -> &Path {
        self.0.as_ref().expect("live").path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let root = self.path().to_path_buf();
        if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
            let mut points: Vec<PathBuf> = info
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .map(|p| PathBuf::from(p.replace("\\040", " ")))
                .filter(|p| p.starts_with(&root))
                .collect();
            points.sort();
            for p in points.into_iter().rev() {
                let _ = rustix::mount::unmount(&p, rustix::mount::UnmountFlags::DETACH);
            }
        }
        if let Ok(out) = Command::new("losetup").arg("-a").output() {
            for l in String::from_utf8_lossy(&out.stdout).lines() {
                let (dev, rest) = l.split_once(':').unwrap_or((l, ""));
                if rest.contains(root.to_string_lossy().as_ref()) {
                    let _ = Command::new("losetup").arg("-d").arg(dev).status();
                }
            }
        }
        drop(self.0.take());
    }
}

pub fn tmp() -> TestDir {
    TestDir(Some(tempfile::tempdir().unwrap()))
}
