//! `thinpool serve` as users run it: the daemon owns the pool, the management verbs keep
//! working through its control socket, volumes appear and disappear as NBD exports, and verbs
//! that need the pool files to themselves are refused with a clear message.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

mod support;
use support::cli::{ok, serve_unix, thinpool, Daemon, FilePool, BIN};
use support::wait_for;

fn nbdinfo_list(sock: &Path) -> String {
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let out = Command::new("nbdinfo")
        .args(["--list", "--json", &uri])
        .output()
        .expect("nbdinfo is needed (libnbd-bin); cargo xtask setup installs it");
    assert!(out.status.success(), "nbdinfo: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn management_verbs_go_through_the_running_daemon() {
    let tmp = FilePool::init("256M");
    let d = tmp.pool();
    let sock = tmp.path().join("nbd.sock");
    ok(&["create", d, "before", "--size", "64M"]);
    let daemon = Daemon(serve_unix(tmp.dir(), &sock));
    assert!(nbdinfo_list(&sock).contains("\"before\""));

    // Changes go to the daemon, which commits them and exports the new volume at once.
    assert!(ok(&["create", d, "during", "--size", "32M"]).contains("created volume during"));
    ok(&["snapshot", d, "during", "snap"]);
    let listed = nbdinfo_list(&sock);
    assert!(listed.contains("\"during\"") && listed.contains("\"snap\""), "{listed}");
    let table = ok(&["list", d]);
    assert!(table.contains("during") && table.contains("snap"), "{table}");
    assert!(ok(&["status", d]).contains("Pool Blocksize"));
    ok(&["remove", d, "snap"]);
    assert!(!nbdinfo_list(&sock).contains("\"snap\""));

    // Errors from the daemon come back as one clear line.
    let dup = thinpool(&["create", d, "during", "--size", "1M"]);
    assert!(!dup.status.success());
    let err = String::from_utf8_lossy(&dup.stderr);
    assert!(err.contains("during") && !err.contains("panicked"), "{err}");

    // Raw image I/O needs the pool files to itself while the daemon owns them.
    let img = tmp.path().join("img");
    std::fs::write(&img, vec![1u8; 4096]).unwrap();
    let busy = thinpool(&["import", d, "during", img.to_str().unwrap()]);
    assert!(!busy.status.success());
    let err = String::from_utf8_lossy(&busy.stderr);
    assert!(err.contains("served by thinpool serve"), "{err}");

    // A second daemon on the same pool is refused.
    let second = thinpool(&["serve", d, "--listen", "none"]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("in use"), "second daemon refused");

    drop(daemon);
    // With the daemon gone the verbs open the files directly again, and everything persisted.
    let table = ok(&["list", d]);
    assert!(table.contains("before") && table.contains("during") && !table.contains("snap"));
    let check = thinpool(&["check", d]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}

/// attach/detach go to the daemon (a ublk device needs a server process). Without a daemon
/// they are refused with a clear line; with one, on a kernel without ublk (this host tier)
/// attach fails naming the control device, and the VM tier (`vm_boot`) attaches for real.
#[test]
fn attach_goes_through_the_daemon() {
    let tmp = FilePool::init("256M");
    let d = tmp.pool();
    ok(&["create", d, "vol", "--size", "64M"]);
    let no_daemon = thinpool(&["attach", d, "vol"]);
    assert!(!no_daemon.status.success());
    let err = String::from_utf8_lossy(&no_daemon.stderr);
    assert!(err.contains("no thinpool serve is running"), "{err}");

    let _daemon = Daemon(
        Command::new(BIN)
            .args(["serve", d, "--listen", "none"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for("the control socket", Duration::from_secs(20), || {
        tmp.dir().join("control.sock").exists()
    });
    let missing = thinpool(&["attach", d, "nope"]);
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && err.contains("no such volume"), "{err}");
    let not_attached = thinpool(&["detach", d, "vol"]);
    let err = String::from_utf8_lossy(&not_attached.stderr);
    assert!(!not_attached.status.success() && err.contains("not attached"), "{err}");
    if Path::new("/dev/ublk-control").exists() {
        let dev = ok(&["attach", d, "vol"]);
        assert!(dev.trim().starts_with("/dev/ublkb"), "{dev}");
        assert!(ok(&["detach", d, "vol"]).contains(dev.trim()));
    } else {
        let out = thinpool(&["attach", d, "vol"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "attach without ublk_drv succeeded");
        assert!(err.contains("ublk attach vol") && err.contains("creating the device"), "{err}");
    }
}
