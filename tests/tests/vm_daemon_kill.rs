//! VM tier: the in-guest pool daemon is killed with SIGKILL while a writer runs on the store,
//! once per attach:
//! - ublk (the default): the driver quiesces /dev/ublkb0 (user recovery); PID 1 restarts the
//!   daemon, which takes the device over (START/END_USER_RECOVERY) and is reissued the
//!   requests the dead one had taken;
//! - nbd (`lamina.attach=nbd`): PID 1 hands the kernel new sockets (NBD_CMD_RECONFIGURE) and
//!   the requests the dead daemon had read but not answered are resent on them.
//!
//! Either way the kernel kept the I/O queued, so the writer finishes without an error, XFS
//! stays up and the data is intact when read back from the device: the daemon committed
//! every mapping it acknowledged.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use anyhow::Result;
use tests::wait::until;
use tests::{check_pool_disk, Attach, Opts, TestVm};

tests::per_attach! {
    sigkill_under_writes: vm_daemon_sigkill_under_writes_is_survived,
    vm_daemon_sigkill_under_writes_is_survived_over_nbd,
}

fn sigkill_under_writes(name: &str, attach: Attach) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("data.raw");
    let mut opts = Opts { disks: vec![disk.clone()], ..Opts::debug() };
    // Every acknowledged request on the console, for the post-mortem when data goes missing.
    opts.append.push("lamina.pool.log=info,thinpool::export::pool=debug".into());
    attach.apply(&mut opts);
    let mut vm = TestVm::boot(name, opts)?;
    let ready = vm.wait_ready()?;
    match attach {
        Attach::Ublk => {
            assert!(ready.line.contains("store on /dev/ublkb0"), "{}", ready.line);
            let st = vm.status()?;
            assert_eq!(st["pool"]["store"]["device"], "/dev/ublkb0", "{st}");
        }
        Attach::Nbd => {
            assert!(ready.line.contains("store on /dev/nbd0"), "{}", ready.line);
            // Requests in flight at the kill are resent within this period of the block
            // layer's timer, not after a 30 s request timeout.
            let period = vm.exec(&["cat", "/sys/block/nbd0/queue/io_timeout"])?;
            assert_eq!(period.trim(), "2000", "nbd0's timer period (ms)");
        }
    }
    // Source data in tmpfs, then a background writer copying it into the store 6 times with a
    // sync after each copy.
    let sum = vm.exec(&[
        "sh",
        "-c",
        "dd if=/dev/urandom of=/tmp/src bs=1M count=16 2>/dev/null && sha256sum < /tmp/src",
    ])?;
    let writer = "(for i in 1 2 3 4 5 6; do \
                    dd if=/tmp/src of=/var/lib/lamina/w$i bs=64k 2>>/tmp/writer.err || exit 1; \
                    sync || exit 1; \
                  done) && echo ok > /tmp/writer.done || echo fail > /tmp/writer.done";
    vm.exec(&["sh", "-c", &format!("({writer}) </dev/null >/dev/null 2>&1 &")])?;
    // The kill lands once the first copy has bytes on the store, so the writer is mid-stream.
    until(Duration::from_secs(30), Duration::from_millis(100), || {
        let size = vm.exec(&["stat", "-c", "%s", "/var/lib/lamina/w1"]).unwrap_or_default();
        Ok(match size.trim().parse::<u64>() {
            Ok(n) if n > 0 => ControlFlow::Break(()),
            _ => ControlFlow::Continue(format!("the writer has not started: w1 size {size:?}")),
        })
    })?;
    let pid = vm.exec(&["pidof", "thinpool"])?;
    let t = Instant::now();
    vm.exec(&["sh", "-c", "kill -9 $(pidof thinpool)"])?;
    let restarted = match attach {
        Attach::Ublk => "its ublk devices taken over",
        Attach::Nbd => "/dev/nbd0 reconfigured",
    };
    vm.wait_for(restarted, Duration::from_secs(60))?;
    eprintln!("[daemon_kill] killed pid {}; restarted after {:?}", pid.trim(), t.elapsed());
    let done = until(Duration::from_secs(150), Duration::from_secs(1), || {
        Ok(match vm.exec(&["cat", "/tmp/writer.done"]) {
            Ok(s) => ControlFlow::Break(s),
            Err(_) => ControlFlow::Continue("the writer has not finished since the kill".into()),
        })
    })?;
    eprintln!("[daemon_kill] writer finished {:?} after the kill", t.elapsed());
    let errs = vm.exec(&["cat", "/tmp/writer.err"]).unwrap_or_default();
    assert_eq!(done.trim(), "ok", "writer failed: {errs}");
    let dmesg = vm.exec(&["dmesg"])?;
    // "Connection timed out": a request timeout fired (30 s, and it shuts a live socket down).
    for bad in [
        "Filesystem has been shut down",
        "I/O error",
        "metadata I/O error",
        "Connection timed out",
        "error, dev ublkb0",
    ] {
        assert!(!dmesg.contains(bad), "dmesg has {bad:?}:\n{dmesg}");
    }
    // Read back from the device, not the page cache.
    vm.exec(&["sh", "-c", "sync && echo 3 > /proc/sys/vm/drop_caches"])?;
    for i in 1..=6 {
        let got = vm.exec(&["sh", "-c", &format!("sha256sum < /var/lib/lamina/w{i}")])?;
        if got != sum {
            // Which 64 KiB chunks differ, and are they zeroes (a lost mapping) or stale data?
            let script = format!(
                "z=$(dd if=/dev/zero bs=64k count=1 2>/dev/null | sha256sum); \
                 for c in $(seq 0 255); do \
                   a=$(dd if=/tmp/src bs=64k skip=$c count=1 2>/dev/null | sha256sum); \
                   b=$(dd if=/var/lib/lamina/w{i} bs=64k skip=$c count=1 2>/dev/null | sha256sum); \
                   [ \"$a\" = \"$b\" ] || {{ [ \"$b\" = \"$z\" ] && echo \"$c zero\" || echo \"$c other\"; }}; \
                 done"
            );
            let diff = vm.exec(&["sh", "-c", &script]).unwrap_or_else(|e| e.to_string());
            panic!("w{i} differs after the daemon restart; differing 64K chunks:\n{diff}");
        }
    }
    assert_ne!(vm.exec(&["pidof", "thinpool"])?.trim(), pid.trim(), "a new daemon serves");
    let st = vm.stop(Duration::from_secs(30))?;
    assert!(st.success(), "QEMU exited with {st}");
    assert!(vm.console().contains("shutdown [5/7] stop pool daemon: ok"), "{}", vm.console());
    eprintln!("[daemon_kill] {}", check_pool_disk(&disk)?);
    Ok(())
}
