//! VM tier: production boots (no lamina.debug) with 1, 2 and 4 vCPUs all reach READY. With
//! several vCPUs the virtio probes race PID 1 (the agent port's name arrives after its
//! directory), so init must wait for each device with a deadline rather than look once. And
//! several vCPUs must survive the kernel rewriting its own code under TCG.

use anyhow::{bail, Result};
use std::time::Duration;
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
        let st = vm.wait_exit(Duration::from_secs(30))?;
        assert!(st.success(), "{cpus} vCPUs: QEMU exited with {st}");
    }
    Ok(())
}

/// Linux rewrites its own code while other vCPUs run it (static keys, patched through an int3
/// by `text_poke_bp`). Multi-threaded TCG before QEMU 8.1 can keep executing the old bytes on
/// another vCPU, and the guest dies on an int3 that is no longer there; the launcher runs such
/// a QEMU's vCPUs on one thread. Flipping a scheduler static key (`sched_schedstats`) while
/// every vCPU is busy in the scheduler makes that race hot: with multi-threaded TCG on QEMU
/// 7.2 the guest died within 2 s of this loop; with one thread it lives through all of it.
#[test]
fn vm_with_4_vcpus_survives_live_kernel_code_patching() -> Result<()> {
    let mut opts = Opts { cpus: 4, ..Opts::debug() };
    // The loop takes about 10 s on a quiet host; the guest's own limit on one command (120 s)
    // and the VM's deadline are raised so a slower or busier host does not cut it short.
    opts.append.push("lamina.agent.max_exec_secs=600".into());
    opts.deadline = Duration::from_secs(600);
    let mut vm = TestVm::boot("vm_smp_code_patching", opts)?;
    vm.wait_ready()?;
    let busy = "for i in 1 2 3 4; do (while :; do :; done) </dev/null >/dev/null 2>&1 & done";
    vm.exec(&["sh", "-c", busy])?;
    // set -e: a write that fails (no such key in this kernel) fails the test instead of
    // counting as a flip.
    let flips = "set -e; k=/proc/sys/kernel/sched_schedstats; test -w $k; i=0; \
                 while [ $i -lt 300 ]; do echo 1 > $k; echo 0 > $k; i=$((i+1)); done; echo $i";
    let out = match vm.ok(&["sh", "-c", flips], Duration::from_secs(300)) {
        Ok(out) => out,
        Err(e) => {
            // A guest that dies here takes the agent's connection with it: show whether QEMU
            // exited, and the console's last lines.
            let qemu = vm.wait_exit(Duration::from_secs(5));
            let text = vm.console();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(40)..].join("\n");
            bail!("the flips failed ({e:#}); QEMU after 5 s: {qemu:?}; console:\n{tail}");
        }
    };
    let text = vm.console();
    assert!(!text.contains("Oops"), "the guest oopsed:\n{text}");
    assert_eq!(out.trim(), "300", "every flip ran");
    let status = vm.status()?;
    assert_eq!(status["cpus"], 4, "{status}");
    assert_eq!(status["ready"], true, "{status}");
    vm.agent()?.shutdown()?;
    let st = vm.wait_exit(Duration::from_secs(30))?;
    assert!(st.success(), "QEMU exited with {st}");
    Ok(())
}
