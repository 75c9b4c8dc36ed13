//! VM tier: production boots (no lamina.debug) with 1, 2 and 4 vCPUs all reach READY. With
//! several vCPUs the virtio probes race PID 1 (the agent port's name arrives after its
//! directory), so init must wait for each device with a deadline rather than look once.

use anyhow::Result;
use tests::{Opts, TestVm};

#[test]
fn vm_boots_ready_with_1_2_and_4_vcpus() -> Result<()> {
    for cpus in [1u32, 2, 4] {
        let name = format!("vm_boots_ready_with_{cpus}_vcpus");
        let mut vm = TestVm::boot(&name, Opts { cpus, ..Opts::default() })?;
        let ready = vm.wait_ready()?;
        assert!(ready.line.contains("LAMINA READY"), "{cpus} vCPUs: {}", ready.line);
        assert!(ready.line.contains("agent /dev/vport"), "{cpus} vCPUs: {}", ready.line);
        // ublk is the default attach; its queues are one per vCPU.
        assert!(ready.line.contains("pool: store on /dev/ublkb0"), "{cpus} vCPUs: {}", ready.line);
        let status = vm.status()?;
        assert_eq!(status["cpus"], cpus, "{status}");
        assert_eq!(status["ready"], true, "{status}");
        assert_eq!(status["debug"], false, "{status}");
        vm.agent()?.shutdown()?;
        let st = vm.wait_exit(std::time::Duration::from_secs(30))?;
        assert!(st.success(), "{cpus} vCPUs: QEMU exited with {st}");
    }
    Ok(())
}
