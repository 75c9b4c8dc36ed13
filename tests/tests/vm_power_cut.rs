//! VM tier: QEMU is killed (SIGKILL, a power cut) while a writer runs on the store (over
//! ublk, the default). The next boot on the same disk, over nbd (`lamina.attach=nbd`: one boot
//! checks that the other attach reads the same XFS), reaches READY, data synced before the cut
//! is intact, and the pool metadata on the disk passes thin_check and thinpool check.

use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Result;
use tests::wait::until;
use tests::{check_pool_disk, Opts, TestVm};

#[test]
fn vm_power_cut_keeps_synced_data_and_clean_metadata() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("data.raw");
    let opts = Opts { disks: vec![disk.clone()], ..Opts::debug() };
    let sum = {
        let mut vm = TestVm::boot("vm_power_cut_boot1", opts.clone())?;
        let ready = vm.wait_ready()?;
        assert!(ready.line.contains("pool: store on /dev/ublkb0"), "{}", ready.line);
        let sum = vm.exec(&[
            "sh",
            "-c",
            "dd if=/dev/urandom of=/var/lib/lamina/synced bs=1M count=8 2>/dev/null && sync && \
             sha256sum < /var/lib/lamina/synced",
        ])?;
        // A writer that is still going when the power goes.
        vm.exec(&[
            "sh",
            "-c",
            "(i=0; while true; do dd if=/dev/urandom of=/var/lib/lamina/busy bs=64k count=64 \
             2>/dev/null; sync; i=$((i+1)); echo $i > /tmp/rounds; done) \
             </dev/null >/dev/null 2>&1 &",
        ])?;
        // The cut comes after two rounds have reached the pool, in the middle of the next.
        until(Duration::from_secs(60), Duration::from_millis(200), || {
            let rounds = vm.exec(&["cat", "/tmp/rounds"]).unwrap_or_default();
            Ok(match rounds.trim().parse::<u32>() {
                Ok(n) if n >= 2 => ControlFlow::Break(()),
                _ => ControlFlow::Continue(format!("writer rounds so far: {rounds:?}")),
            })
        })?;
        vm.kill();
        sum
    };
    let mut opts = opts;
    opts.append.push("lamina.attach=nbd".into());
    let mut vm = TestVm::boot("vm_power_cut_boot2", opts)?;
    let ready = vm.wait_ready()?;
    assert!(ready.line.contains("pool: store on /dev/nbd0"), "{}", ready.line);
    assert!(vm.console().contains("pool: /dev/nbd0 holds XFS"));
    assert_eq!(vm.exec(&["sh", "-c", "sha256sum < /var/lib/lamina/synced"])?, sum);
    let dmesg = vm.exec(&["dmesg"])?;
    assert!(!dmesg.contains("Corruption"), "{dmesg}");
    let st = vm.stop(Duration::from_secs(20))?;
    assert!(st.success(), "QEMU exited with {st}");
    eprintln!("[power_cut] {}", check_pool_disk(&disk)?);
    Ok(())
}
