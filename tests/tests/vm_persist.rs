//! VM tier: data written to the store survives a clean stop and a reboot on the same disk, and
//! the pool metadata left on the disk passes Debian's thin_check and thinpool check. The first
//! boot attaches over nbd (`lamina.attach=nbd`), the second over ublk (the default): the store
//! formatted through one frontend is found and read through the other.

use std::time::{Duration, Instant};

use anyhow::Result;
use tests::{check_pool_disk, Opts, TestVm};

#[test]
fn vm_store_survives_reboot_and_metadata_checks_clean() -> Result<()> {
    let t0 = Instant::now();
    let dir = tempfile::tempdir()?;
    let disk = dir.path().join("data.raw");
    let opts = Opts { disks: vec![disk.clone()], ..Opts::debug() };
    let mut over_nbd = opts.clone();
    over_nbd.append.push("lamina.attach=nbd".into());

    // First boot: creates the pool, formats the store, writes and fsyncs.
    let (sum, token) = {
        let mut vm = TestVm::boot("vm_persist_boot1", over_nbd)?;
        vm.wait_ready()?;
        assert!(vm.console().contains("pool: mkfs.xfs /dev/nbd0"), "first boot formats");
        let token = format!("lamina-{}", std::process::id());
        let script = format!(
            "echo {token} > /var/lib/lamina/persist.txt && \
             dd if=/dev/urandom of=/var/lib/lamina/blob bs=1M count=16 2>/dev/null && \
             sync && sha256sum /var/lib/lamina/blob"
        );
        let sum = vm.exec(&["sh", "-c", &script])?;
        let st = vm.stop(Duration::from_secs(20))?;
        assert!(st.success(), "QEMU exited with {st}");
        (sum, token)
    };
    assert_eq!(sum.split_whitespace().count(), 2, "{sum}");

    // Second boot on the same disk: the pool is found, XFS is not formatted again.
    {
        let mut vm = TestVm::boot("vm_persist_boot2", opts)?;
        vm.wait_ready()?;
        let console = vm.console();
        assert!(console.contains("pool: found the pool on /dev/vda"), "{console}");
        assert!(console.contains("pool: /dev/ublkb0 holds XFS"), "{console}");
        assert!(!console.contains("mkfs.xfs"), "formatted again:\n{console}");
        assert_eq!(vm.exec(&["cat", "/var/lib/lamina/persist.txt"])?.trim(), token);
        assert_eq!(vm.exec(&["sha256sum", "/var/lib/lamina/blob"])?, sum);
        let st = vm.stop(Duration::from_secs(20))?;
        assert!(st.success(), "QEMU exited with {st}");
    }

    // From the host: the metadata on the disk image is clean for both checkers.
    let report = check_pool_disk(&disk)?;
    eprintln!("[vm_persist] {report}");
    assert!(t0.elapsed() < Duration::from_secs(240), "took {:?}", t0.elapsed());
    Ok(())
}
