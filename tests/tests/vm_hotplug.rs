//! VM tier: on q35 a disk hot-plugged through QMP (blockdev-add + device_add on the
//! pre-created root port) appears in the guest as /dev/vdb.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use qemu::Machine;
use tests::{Opts, TestVm};

#[test]
fn vm_q35_disk_hotplug_appears_in_the_guest() -> Result<()> {
    let opts = Opts { machine: Machine::Q35, ..Opts::debug() };
    let mut vm = TestVm::boot("vm_q35_disk_hotplug_appears_in_the_guest", opts)?;
    vm.wait_ready()?;
    let disk = vm.log_dir.join("hotplug.raw");
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    let mut qmp = vm.vm.qmp()?;
    qmp.hotplug_disk("vd1", &disk, Some("rp1"))?;
    drop(qmp); // QEMU serves one QMP client at a time; `stop` opens its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let size = loop {
        // The agent runs `cat` in the guest; the device shows up asynchronously.
        match vm.exec(&["cat", "/sys/block/vdb/size"]) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => bail!("vdb never appeared: {e:#}"),
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    assert_eq!(size.trim(), (64u64 << 20 >> 9).to_string());
    let st = vm.vm.stop(Duration::from_secs(20))?;
    assert!(st.success(), "QEMU exited with {st}");
    Ok(())
}
