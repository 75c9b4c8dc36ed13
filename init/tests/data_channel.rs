//! Host tier: the data channel's image load and save, over a socketpair standing in for the
//! virtio-serial port (both read 0 once the other side is gone), into a real layer store.
//! The image is built with umoci from a real file.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;

use init::containers::data::frame;
use init::containers::Images;
use init::options::Driver;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (is umoci installed?)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// An OCI layout tar with one layer (`/hello`), tagged `t1`.
fn image_tar(dir: &Path) -> PathBuf {
    let img = dir.join("img");
    let b = dir.join("bundle");
    let i = |t: &str| format!("{}:{t}", img.display());
    run(Command::new("umoci").args(["init", "--layout", img.to_str().unwrap()]));
    run(Command::new("umoci").args(["new", "--image", &i("t1")]));
    run(Command::new("umoci").args(["unpack", "--image", &i("t1"), b.to_str().unwrap()]));
    std::fs::write(b.join("rootfs/hello"), "hi").unwrap();
    run(Command::new("umoci").args(["repack", "--image", &i("t1"), b.to_str().unwrap()]));
    let tar = dir.join("img.tar");
    run(Command::new("tar").arg("-C").arg(&img).arg("-cf").arg(&tar).arg("."));
    tar
}

fn store(dir: &Path) -> Images {
    Images::open(&dir.join("store"), &dir.join("incoming"), Driver::Vfs).unwrap()
}

/// Runs one session on a thread; the host side gets the stream.
fn session(images: &Images, host: impl FnOnce(UnixStream) + Send) -> Result<(), String> {
    let (mut guest, h) = UnixStream::pair().unwrap();
    std::thread::scope(|s| {
        let t = s.spawn(move || host(h));
        let r = images.session(&mut guest).map_err(|e| e.to_string());
        drop(guest);
        t.join().unwrap();
        r
    })
}

/// Sends `header`, then `bytes` as frames (a load or a restore): the result line.
fn upload(images: &Images, header: &str, bytes: &[u8]) -> serde_json::Value {
    let mut reply = None;
    session(images, |mut h| {
        writeln!(h, "{header}").unwrap();
        let mut r = BufReader::new(h.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert_eq!(line, "{\"ready\":true}\n");
        for c in bytes.chunks(1000) {
            h.write_all(&frame(c)).unwrap();
        }
        h.write_all(&frame(b"")).unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        reply = Some(serde_json::from_str(&line).unwrap());
    })
    .unwrap();
    reply.unwrap()
}

fn load(images: &Images, bytes: &[u8]) -> serde_json::Value {
    upload(images, r#"{"op":"image.load"}"#, bytes)
}

/// Sends `header` (a save or a backup): the `size` bytes after the `ok` line.
fn download(images: &Images, header: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    session(images, |mut h| {
        writeln!(h, "{header}").unwrap();
        let mut r = BufReader::new(h);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        let n = v["size"].as_u64().unwrap();
        r.take(n).read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, n);
    })
    .unwrap();
    bytes
}

/// Sends `header` naming something unknown: the refusal names `unknown`.
fn refused(images: &Images, header: &str, unknown: &str) {
    session(images, |mut h| {
        writeln!(h, "{header}").unwrap();
        let mut line = String::new();
        BufReader::new(h).read_line(&mut line).unwrap();
        assert!(line.contains("\"ok\":false") && line.contains(unknown), "{line}");
    })
    .unwrap();
}

#[test]
fn load_plain_and_gzip_list_and_remove() {
    let d = tempfile::tempdir().unwrap();
    let tar = std::fs::read(image_tar(d.path())).unwrap();
    let images = store(d.path());
    let r = load(&images, &tar);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["result"][0]["tags"][0], "t1:latest", "{r}");
    let list = images.list().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert!(list[0]["size"].as_u64().unwrap() > 0, "{list}");
    // The same archive gzip-compressed as a whole.
    images.remove("t1").unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let r = load(&images, &gz.finish().unwrap());
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(images.list().unwrap().as_array().unwrap().len(), 1);
    // Errors name what is unknown.
    let e = images.remove("nope:1").unwrap_err();
    assert_eq!(e.kind, init::containers::error::Kind::NotFound);
    assert!(e.to_string().contains("nope:1"), "{e}");
    // Not an archive: the reply says so, nothing is left behind.
    let r = load(&images, b"this is not a tar file at all");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(std::fs::read_dir(d.path().join("incoming")).unwrap().count(), 0);
}

#[test]
fn interrupted_load_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    let tar = std::fs::read(image_tar(d.path())).unwrap();
    let images = store(d.path());
    let e = session(&images, |mut h| {
        h.write_all(b"{\"op\":\"image.load\"}\n").unwrap();
        let mut line = String::new();
        BufReader::new(h.try_clone().unwrap()).read_line(&mut line).unwrap();
        h.write_all(&frame(&tar[..tar.len() / 2])).unwrap();
        h.write_all(&frame(&tar[tar.len() / 2..])[..100]).unwrap();
        // The host goes away in the middle of a frame.
    })
    .unwrap_err();
    assert!(e.contains("host went away"), "{e}");
    assert_eq!(images.list().unwrap(), serde_json::json!([]));
    assert_eq!(std::fs::read_dir(d.path().join("incoming")).unwrap().count(), 0);
}

#[test]
fn save_sends_an_archive_that_loads_again() {
    let d = tempfile::tempdir().unwrap();
    let images = store(d.path());
    assert_eq!(load(&images, &std::fs::read(image_tar(d.path())).unwrap())["ok"], true);
    let saved = download(&images, r#"{"op":"image.save","image":"t1"}"#);
    // A docker-archive: manifest.json at the top.
    let mut a = tar::Archive::new(&saved[..]);
    assert!(a
        .entries()
        .unwrap()
        .any(|e| e.unwrap().path().unwrap().as_os_str() == "manifest.json"));
    let other = tempfile::tempdir().unwrap();
    let again = store(other.path());
    let r = load(&again, &saved);
    assert_eq!(r["ok"], true, "{r}");
    // An unknown image is named.
    refused(&images, r#"{"op":"image.save","image":"ghost:9"}"#, "ghost:9");
}

#[test]
fn volume_backup_and_restore_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let images = store(d.path());
    // A volume with a file, made through the store, then backed up over the channel.
    init::containers::system::volume_create(&images, "v").unwrap();
    let vdir = d.path().join("store/volumes/v/_data");
    assert!(vdir.is_dir(), "the store's volume layout");
    std::fs::create_dir_all(vdir.join("sub")).unwrap();
    std::fs::write(vdir.join("sub/f"), "two").unwrap();
    let tar = download(&images, r#"{"op":"volume.backup","name":"v"}"#);
    // Restored into a new volume through the channel, the file is back.
    let r = upload(&images, r#"{"op":"volume.restore","name":"w"}"#, &tar);
    assert_eq!(r["ok"], true, "{r}");
    let w = d.path().join("store/volumes/w/_data/sub/f");
    assert_eq!(std::fs::read_to_string(w).unwrap(), "two");
    // An unknown volume is named.
    refused(&images, r#"{"op":"volume.backup","name":"ghost"}"#, "ghost");
}
