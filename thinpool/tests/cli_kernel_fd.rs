//! `thinpool serve --kernel-fd`: the daemon serving the appliance's kernel nbd client dies by
//! SIGKILL right after acknowledging requests. The kernel's page cache has already marked
//! those pages clean, so a restarted daemon must find every acknowledged change: writes,
//! all-zero writes (which unmap) and trims. The test speaks the kernel's side of the
//! protocol (compact requests, simple replies) over a socketpair, as the kernel does.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod support;
use support::cli::{ok, thinpool, BIN};
use support::wait_for;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;

/// A daemon serving `vol` of pool `dir` on one inherited socket end; the other end is ours.
struct Daemon {
    child: Child,
    kernel: UnixStream,
    cookie: u64,
}

impl Daemon {
    fn start(dir: &Path, vol: &str) -> Daemon {
        let (kernel, ours) = UnixStream::pair().unwrap();
        // Only the daemon's end is inherited; std creates it close-on-exec.
        rustix::io::fcntl_setfd(&ours, rustix::io::FdFlags::empty()).unwrap();
        let fd = ours.as_raw_fd();
        let child = Command::new(BIN)
            .args(["serve", dir.to_str().unwrap(), "--listen", "none"])
            .args(["--kernel-fd", &format!("{fd}:{vol}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        drop(ours);
        let ctl = dir.join("control.sock");
        wait_for("the daemon's control socket", Duration::from_secs(20), || ctl.exists());
        Daemon { child, kernel, cookie: 1 }
    }

    /// Sends one request and waits for its reply; returns the reply's error and read data.
    fn request(&mut self, ty: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        self.cookie += 1;
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&self.cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.kernel.write_all(&b).unwrap();
        let mut h = [0u8; 16];
        self.kernel.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x6744_6698);
        assert_eq!(u64::from_be_bytes(h[8..16].try_into().unwrap()), self.cookie);
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let mut data = Vec::new();
        if ty == CMD_READ && err == 0 {
            data = vec![0u8; len as usize];
            self.kernel.read_exact(&mut data).unwrap();
        }
        (err, data)
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (err, _) = self.request(CMD_WRITE, offset, data.len() as u32, data);
        assert_eq!(err, 0, "write at {offset}");
    }

    fn read(&mut self, offset: u64, len: u32) -> Vec<u8> {
        let (err, data) = self.request(CMD_READ, offset, len, &[]);
        assert_eq!(err, 0, "read at {offset}");
        data
    }

    fn kill(mut self) {
        self.child.kill().unwrap(); // SIGKILL: no final commit
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn acknowledged_changes_survive_a_sigkilled_daemon() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pool");
    let d = dir.to_str().unwrap();
    ok(&["init", d, "--data-size", "64M", "--block-size", "64k"]);
    ok(&["create", d, "store", "--size", "32M"]);
    const BLK: u64 = 64 << 10;
    let pattern = |i: u64| vec![(i as u8).wrapping_mul(37) | 1; 8192];

    // Round 1: first writes into unmapped blocks (each allocates), acknowledged, then SIGKILL.
    let mut dm = Daemon::start(&dir, "store");
    // The daemon's status counts its kernel connection.
    let st = thinpool::daemon::control::request(&dir, &thinpool::daemon::control::Request::Status)
        .expect("status through the control socket");
    assert!(st.ok, "{:?}", st.error);
    assert_eq!(st.data["nbd_connections"], 1, "{}", st.data);
    for i in 0..8 {
        dm.write(i * 3 * BLK + 4096, &pattern(i));
    }
    dm.kill();

    // Round 2: every write is there; flush, then unmap some of them by trim and by an
    // all-zero write (zero detection), acknowledged, then SIGKILL again.
    let mut dm = Daemon::start(&dir, "store");
    for i in 0..8 {
        assert_eq!(dm.read(i * 3 * BLK + 4096, 8192), pattern(i), "write {i} lost");
    }
    assert_eq!(dm.request(CMD_FLUSH, 0, 0, &[]).0, 0);
    let (err, _) = dm.request(CMD_TRIM, 0, BLK as u32, &[]);
    assert_eq!(err, 0);
    dm.write(3 * BLK, &vec![0u8; BLK as usize]);
    dm.kill();

    let mut dm = Daemon::start(&dir, "store");
    assert_eq!(dm.read(4096, 8192), vec![0u8; 8192], "trimmed block came back");
    assert_eq!(dm.read(3 * BLK + 4096, 8192), vec![0u8; 8192], "zeroed block came back");
    for i in 2..8 {
        assert_eq!(dm.read(i * 3 * BLK + 4096, 8192), pattern(i), "write {i} lost");
    }
    drop(dm);
    let check = thinpool(&["check", d]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
}
