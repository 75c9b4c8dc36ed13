//! Export policy of `thinpool serve`, checked with nbdinfo and qemu-io: a volume the machine
//! attached itself (`--kernel-fd`) is listed read-only and refuses writes; `--local-only`
//! volumes are neither listed nor opened; `--export-allow` hides an export from addresses
//! outside its list (over TCP) while unix-socket clients still see it; `--exports flagged`
//! offers only volumes created for export (`create --export`, `offer`).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::cli::{both, free_port, ok, ok_tool, tool, Daemon, FilePool, BIN};
use support::wait_for;

#[test]
fn attached_volumes_are_read_only_local_only_hidden_and_allowlists_per_export() {
    let tmp = FilePool::init("64M");
    let d = tmp.pool();
    for v in ["store", "vol1", "secret", "lan"] {
        ok(&["create", d, v, "--size", "16M"]);
    }
    let (_kernel, ours) = UnixStream::pair().unwrap();
    rustix::io::fcntl_setfd(&ours, rustix::io::FdFlags::empty()).unwrap();
    let port = free_port();
    let sock = tmp.path().join("nbd.sock");
    let child = Command::new(BIN)
        .args(["serve", d, "--listen", &format!("127.0.0.1:{port}")])
        .args(["--socket", sock.to_str().unwrap()])
        .args(["--kernel-fd", &format!("{}:store", ours.as_raw_fd())])
        .args(["--local-only", "secret", "--export-allow", "lan=10.0.0.0/8"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Daemon(child);
    drop(ours);
    wait_for("thinpool serve to listen", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && sock.exists()
    });
    let tcp = |name: &str| format!("nbd://127.0.0.1:{port}/{name}");
    let unix = |name: &str| format!("nbd+unix:///{name}?socket={}", sock.display());

    // Listed over TCP: store (read-only) and vol1; not secret, not lan (wrong address).
    let list = tool("nbdinfo", &["--list", "--json", &tcp("")]);
    let l = both(&list);
    assert!(list.status.success(), "{l}");
    assert!(l.contains("\"store\"") && l.contains("\"vol1\""), "{l}");
    assert!(!l.contains("\"secret\"") && !l.contains("\"lan\""), "{l}");
    let info = tool("nbdinfo", &["--json", &tcp("store")]);
    assert!(both(&info).contains("\"is_read_only\": true"), "{}", both(&info));
    let info = tool("nbdinfo", &["--json", &tcp("vol1")]);
    assert!(both(&info).contains("\"is_read_only\": false"), "{}", both(&info));
    // qemu will not even open the attached volume writable (the export says read-only).
    let w = tool("qemu-io", &["-f", "raw", "-c", "write -P 0x55 0 64k", &tcp("store")]);
    let t = both(&w);
    assert!(!w.status.success(), "{t}");
    assert!(t.contains("Could not open image: Permission denied"), "{t}");
    // Hidden and not-allowed exports are unknown, over TCP.
    for name in ["secret", "lan"] {
        let o = tool("nbdinfo", &[&tcp(name)]);
        assert!(!o.status.success(), "{name} must not open over TCP: {}", both(&o));
        assert!(both(&o).contains("unknown") || both(&o).contains("No such"), "{}", both(&o));
    }
    // The unix socket has no address: the per-export allowlist does not apply, local-only does.
    ok_tool("nbdinfo", &[&unix("lan")]);
    assert!(!tool("nbdinfo", &[&unix("secret")]).status.success());
    // Unaffected volumes stay writable.
    ok_tool("qemu-io", &["-f", "raw", "-c", "write -P 0x55 0 64k", &tcp("vol1")]);
}

#[test]
fn exports_flagged_offers_only_volumes_created_for_export() {
    let tmp = FilePool::init("64M");
    let d = tmp.pool();
    ok(&["create", d, "store", "--size", "16M"]);
    let made = ok(&["create", d, "shared", "--size", "16M", "--export"]);
    assert!(made.contains("for export"), "{made}");
    let list = ok(&["list", d, "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&list).unwrap();
    let flags: Vec<_> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r["export"].as_bool().unwrap()))
        .collect();
    assert_eq!(flags, [("shared".to_owned(), true), ("store".to_owned(), false)]);
    let sock = tmp.path().join("nbd.sock");
    let child = Command::new(BIN)
        .args(["serve", d, "--listen", "none", "--exports", "flagged"])
        .args(["--socket", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let _serve = Daemon(child);
    wait_for("thinpool serve to listen", Duration::from_secs(20), || sock.exists());
    let unix = |name: &str| format!("nbd+unix:///{name}?socket={}", sock.display());
    let listed = || both(&tool("nbdinfo", &["--list", "--json", &unix("")]));
    let l = listed();
    assert!(l.contains("\"shared\"") && !l.contains("\"store\""), "{l}");
    let o = tool("nbdinfo", &[&unix("store")]);
    assert!(!o.status.success(), "store must not open: {}", both(&o));
    assert!(both(&o).contains("unknown") || both(&o).contains("No such"), "{}", both(&o));
    ok_tool("qemu-io", &["-f", "raw", "-c", "write -P 0x55 0 64k", &unix("shared")]);
    // Marked through the running daemon's control socket, then unmarked.
    ok(&["offer", d, "store"]);
    let l = listed();
    assert!(l.contains("\"store\""), "{l}");
    ok(&["offer", d, "shared", "--off"]);
    let l = listed();
    assert!(!l.contains("\"shared\"") && l.contains("\"store\""), "{l}");
    let bad = Command::new(BIN).args(["offer", d, "nope"]).output().unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("\"nope\" does not exist"), "{err}");
}
