//! `thinpool create --encrypt`: the volume starts with a LUKS2 header that Debian's cryptsetup
//! wrote, and cryptsetup is the judge: `luksDump` reads it and the same key opens it
//! (`open --test-passphrase`), another key does not. Checked on a pool opened by the verb
//! itself and through a running `thinpool serve` (header read back over NBD), plus the
//! command line's refusals (key file mode, missing key, too small a volume, flags alone).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::cli::{both, free_port, ok, thinpool, tool, Daemon, FilePool, BIN};
use support::wait_for;

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
    assert!(dump.status.success(), "luksDump: {}", both(&dump));
    let open = tool("cryptsetup", &["open", "--test-passphrase", "--key-file", good, img]);
    assert!(open.status.success(), "the key must open the header: {}", both(&open));
    let wrong = tool("cryptsetup", &["open", "--test-passphrase", "--key-file", bad, img]);
    assert_eq!(wrong.status.code(), Some(2), "another key must not open it: {}", both(&wrong));
    assert!(both(&wrong).contains("No key available"), "{}", both(&wrong));
    both(&dump)
}

#[test]
fn encrypted_volume_carries_a_header_cryptsetup_opens_with_the_key() {
    let tmp = FilePool::init("256M");
    let d = tmp.pool();
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
    let tmp = FilePool::init("256M");
    let d = tmp.pool();
    let good = key(tmp.path(), "good.key", &[0x5a; 64], 0o600);
    let bad = key(tmp.path(), "bad.key", &[0xa5; 64], 0o600);
    let port = free_port();
    let child = Command::new(BIN)
        .args(["serve", d, "--listen", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Daemon(child);
    wait_for("thinpool serve to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && tmp.dir().join("control.sock").exists()
    });
    let out = ok(&["create", d, "enc", "--size", "48M", "--encrypt", "--key-file", &good]);
    assert!(out.contains("created encrypted volume enc"), "{out}");
    // The FIFO the header passed through is gone.
    let left: Vec<_> = std::fs::read_dir(tmp.dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".fifo"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let img = tmp.path().join("back.raw");
    let copy = tool("nbdcopy", &[&format!("nbd://127.0.0.1:{port}/enc"), img.to_str().unwrap()]);
    assert!(copy.status.success(), "{}", both(&copy));
    let dump = judge(&img, &good, &bad);
    assert!(dump.contains("Version:       \t2"), "{dump}");

    // A name taken: refused by the daemon, and the header's FIFO does not hang the client.
    let again = thinpool(&["create", d, "enc", "--size", "48M", "--encrypt", "--key-file", &good]);
    assert!(!again.status.success());
    assert!(both(&again).contains("already exists"), "{}", both(&again));
}

#[test]
fn bad_key_files_and_sizes_are_refused_and_nothing_is_created() {
    let tmp = FilePool::init("256M");
    let d = tmp.pool();
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
        assert!(both(&out).contains(want), "{argv:?}: want {want:?} in {}", both(&out));
    }
    let list = ok(&["list", d]);
    assert!(!list.contains(" v "), "no volume may be left behind: {list}");
}
