//! `thinpool create --encrypt`: the volume starts with a LUKS2 header that Debian's cryptsetup
//! wrote, and cryptsetup is the judge: `luksDump` reads it and the same key opens it
//! (`open --test-passphrase`), another key does not. Checked on a pool opened by the verb
//! itself and through a running `thinpool serve` (header read back over NBD), plus the
//! command line's refusals (key file mode, missing key, too small a volume, flags alone).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

mod support;
use support::cli::{ok, thinpool, BIN};
use support::wait_for;

struct Serve(Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(prog: &str, args: &[&str]) -> Output {
    let out = Command::new(prog).args(args).stdin(Stdio::null()).output();
    out.unwrap_or_else(|e| panic!("`{prog}` could not run ({e}); install it (cargo xtask setup)"))
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn key(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p.display().to_string()
}

/// cryptsetup's verdict on `img`: luksDump's text, and whether `good` opens it and `bad`
/// does not (exit 2: "No key available with this passphrase").
fn judge(img: &Path, good: &str, bad: &str) -> String {
    let img = img.to_str().unwrap();
    let dump = tool("cryptsetup", &["luksDump", img]);
    assert!(dump.status.success(), "luksDump: {}", text(&dump));
    let open = tool("cryptsetup", &["open", "--test-passphrase", "--key-file", good, img]);
    assert!(open.status.success(), "the key must open the header: {}", text(&open));
    let wrong = tool("cryptsetup", &["open", "--test-passphrase", "--key-file", bad, img]);
    assert_eq!(wrong.status.code(), Some(2), "another key must not open it: {}", text(&wrong));
    assert!(text(&wrong).contains("No key available"), "{}", text(&wrong));
    text(&dump)
}

#[test]
fn encrypted_volume_carries_a_header_cryptsetup_opens_with_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let d = dir.to_str().unwrap();
    ok(&["init", d, "--data-size", "256M"]);
    let good = key(tmp.path(), "good.key", b"correct horse battery staple", 0o600);
    let bad = key(tmp.path(), "bad.key", b"wrong horse", 0o600);
    let out = ok(&["create", d, "enc", "--size", "64M", "--encrypt", "--key-file", &good]);
    assert!(
        out.contains("created encrypted volume enc") && out.contains("LUKS2 header 16"),
        "{out}"
    );
    let img = tmp.path().join("enc.raw");
    ok(&["export", d, "enc", img.to_str().unwrap()]);
    let bytes = std::fs::read(&img).unwrap();
    assert_eq!(bytes.len(), 64 << 20);
    assert_eq!(&bytes[..6], b"LUKS\xba\xbe", "LUKS2 magic at offset 0");
    // Nothing below the data segment is left to chance, nothing past it is written.
    assert!(bytes[16 << 20..].iter().all(|&b| b == 0), "data area must be untouched");
    let dump = judge(&img, &good, &bad);
    assert!(dump.contains("Version:       \t2"), "{dump}");
    assert!(dump.contains("offset: 16777216 [bytes]"), "{dump}");
    assert!(dump.contains("cipher: aes-xts-plain64"), "{dump}");
    // The header is the volume's only mapped data: 16 MiB of 64K blocks.
    let list = ok(&["list", d, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let enc = v.as_array().unwrap().iter().find(|r| r["name"] == "enc").unwrap().clone();
    assert_eq!(enc["mapped_blocks"], 256, "{enc}");
}

#[test]
fn through_a_running_daemon_the_header_reads_back_over_nbd() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let d = dir.to_str().unwrap();
    ok(&["init", d, "--data-size", "256M"]);
    let good = key(tmp.path(), "good.key", &[0x5a; 64], 0o600);
    let bad = key(tmp.path(), "bad.key", &[0xa5; 64], 0o600);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(BIN)
        .args(["serve", d, "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Serve(child);
    wait_for("thinpool serve to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && dir.join("control.sock").exists()
    });
    let out = ok(&["create", d, "enc", "--size", "48M", "--encrypt", "--key-file", &good]);
    assert!(out.contains("created encrypted volume enc"), "{out}");
    // The FIFO the header passed through is gone.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".fifo"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let img = tmp.path().join("back.raw");
    let copy = tool("nbdcopy", &[&format!("nbd://127.0.0.1:{port}/enc"), img.to_str().unwrap()]);
    assert!(copy.status.success(), "{}", text(&copy));
    let dump = judge(&img, &good, &bad);
    assert!(dump.contains("Version:       \t2"), "{dump}");

    // A name taken: refused by the daemon, and the header's FIFO does not hang the client.
    let again = thinpool(&["create", d, "enc", "--size", "48M", "--encrypt", "--key-file", &good]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already exists"), "{}", text(&again));
}

#[test]
fn bad_key_files_and_sizes_are_refused_and_nothing_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let d = dir.to_str().unwrap();
    ok(&["init", d, "--data-size", "256M"]);
    let open = key(tmp.path(), "open.key", b"secret", 0o644);
    let empty = key(tmp.path(), "empty.key", b"", 0o600);
    let good = key(tmp.path(), "good.key", b"secret", 0o600);
    let none = tmp.path().join("none.key").display().to_string();
    let cases: [(&[&str], &str); 6] = [
        (&["--size", "64M", "--encrypt", "--key-file", &open], "mode 0644); chmod 600 it"),
        (&["--size", "64M", "--encrypt", "--key-file", &empty], "is empty"),
        (&["--size", "64M", "--encrypt", "--key-file", &none], "No such file or directory"),
        (&["--size", "16M", "--encrypt", "--key-file", &good], "too small for a LUKS2 header"),
        (&["--size", "64M", "--encrypt"], "not provided: --key-file <KEY_FILE>"),
        (&["--size", "64M", "--key-file", &good], "not provided: --encrypt"),
    ];
    for (args, want) in cases {
        let mut argv = vec!["create", d, "v"];
        argv.extend_from_slice(args);
        let out = thinpool(&argv);
        assert!(!out.status.success(), "{argv:?} must fail");
        assert!(text(&out).contains(want), "{argv:?}: want {want:?} in {}", text(&out));
    }
    let list = ok(&["list", d]);
    assert!(!list.contains(" v "), "no volume may be left behind: {list}");
}
