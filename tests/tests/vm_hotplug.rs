//! VM tier: on q35 a disk hot-plugged through QMP (blockdev-add + device_add on the
//! pre-created root port) appears in the guest as /dev/vdb.

use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Result;
use qemu::Machine;
use serde_json::json;
use tests::wait::until;
use tests::{Opts, TestVm};

#[test]
fn vm_q35_disk_hotplug_appears_in_the_guest() -> Result<()> {
    let opts = Opts { machine: Machine::Q35, ..Opts::debug() };
    let mut vm = TestVm::boot("vm_q35_disk_hotplug_appears_in_the_guest", opts)?;
    vm.wait_ready()?;
    let disk = vm.log_dir.join("hotplug.raw");
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    let mut qmp = vm.qmp()?;
    qmp.hotplug_disk("vd1", &disk, Some("rp1"))?;
    drop(qmp); // QEMU serves one QMP client at a time; `stop` opens its own.
    let size = vdb_sectors(&mut vm)?;
    assert_eq!(size.trim(), (64u64 << 20 >> 9).to_string());
    let st = vm.stop(Duration::from_secs(20))?;
    assert!(st.success(), "QEMU exited with {st}");
    Ok(())
}

/// The hot-plugged disk's size in sectors, once the guest shows it (the device appears
/// asynchronously after `device_add`).
fn vdb_sectors(vm: &mut TestVm) -> Result<String> {
    until(Duration::from_secs(30), Duration::from_millis(250), || {
        Ok(match vm.exec(&["cat", "/sys/block/vdb/size"]) {
            Ok(s) => ControlFlow::Break(s),
            Err(e) => ControlFlow::Continue(format!("vdb never appeared: {e:#}")),
        })
    })
}

/// Data Space Total as bytes from the daemon's status (the `data.total` field).
fn data_total(vm: &mut TestVm) -> Result<u64> {
    tests::pool_data_bytes(&vm.pool_status()?, "total")
}

/// A small pool filled past the autoextend threshold has nowhere to grow; after a disk is
/// hot-plugged and added through the agent (`pool.extend`), autoextend grows the pool's data
/// into it at once.
#[test]
fn vm_hotplugged_disk_extends_the_pool() -> Result<()> {
    let opts = Opts { machine: Machine::Q35, disk_size: 256 << 20, ..Opts::debug() };
    let mut vm = TestVm::boot("vm_hotplugged_disk_extends_the_pool", opts)?;
    vm.wait_ready()?;
    let before = data_total(&mut vm)?;
    // ~85% of the data space, incompressible (zero writes would stay thin).
    let mib = (before * 85 / 100) >> 20;
    vm.ok(
        &[
            "sh",
            "-c",
            &format!("dd if=/dev/urandom of=/var/lib/lamina/fill bs=1M count={mib} 2>&1 && sync"),
        ],
        Duration::from_secs(110),
    )?;
    // Autoextend may already have used the group's few free extents; the rest must wait for
    // the new disk.
    let before = data_total(&mut vm)?;
    let disk = vm.log_dir.join("hotplug.raw");
    std::fs::File::create(&disk)?.set_len(256 << 20)?;
    let mut qmp = vm.qmp()?;
    qmp.hotplug_disk("vd1", &disk, Some("rp1"))?;
    drop(qmp);
    vdb_sectors(&mut vm)?;
    let r = vm.agent()?.call(
        "pool.extend",
        Some(json!({"device": "/dev/vdb"})),
        Duration::from_secs(60),
    )?;
    let after = data_total(&mut vm)?;
    eprintln!("[hotplug] data total {before} -> {after}; extend said {r}");
    assert!(after > before, "Data Space Total did not grow: {before} -> {after}; {r}");
    let st = vm.stop(Duration::from_secs(20))?;
    assert!(st.success(), "QEMU exited with {st}");
    Ok(())
}
