//! VM tier: the power button (QMP system_powerdown) shuts the appliance down in order, and
//! QEMU exits 0 within 20 s.

use std::time::{Duration, Instant};

use anyhow::Result;
use tests::{Opts, TestVm};

#[test]
fn vm_power_button_shuts_down_cleanly() -> Result<()> {
    let mut vm = TestVm::boot("vm_power_button_shuts_down_cleanly", Opts::default())?;
    vm.wait_ready()?;
    let mut qmp = vm.qmp()?;
    assert_eq!(qmp.status()?, "running");
    let t = Instant::now();
    qmp.powerdown()?;
    let shutdown = qmp.wait_event("SHUTDOWN", Duration::from_secs(20))?;
    assert_eq!(shutdown["data"]["reason"], "guest-shutdown", "{shutdown}");
    assert!(qmp.events.iter().all(|e| e["event"] != "GUEST_PANICKED"));
    let st = vm.wait_exit(Duration::from_secs(20))?;
    assert!(st.success(), "QEMU exited with {st}");
    eprintln!(
        "[vm_power_button_shuts_down_cleanly] power button → QEMU exit in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    assert!(t.elapsed() < Duration::from_secs(20));

    let console = vm.console();
    let steps: Vec<&str> = console.lines().filter(|l| l.contains("lamina: shutdown")).collect();
    let want = [
        "shutdown requested by power button",
        "[1/7] stop workloads",
        "[2/7] unmount overlays",
        "[3/7] sync and unmount XFS",
        "[4/7] detach the store",
        "[5/7] stop pool daemon",
        "[6/7] sync",
        "[7/7] power off",
    ];
    assert_eq!(steps.len(), want.len(), "{steps:#?}");
    for (got, want) in steps.iter().zip(want) {
        assert!(got.contains(want), "expected {want:?}, got {got:?}");
    }
    // The pool's steps really ran (not skipped) and the daemon committed and exited 0.
    for (i, step) in steps.iter().enumerate().skip(3).take(3) {
        assert!(step.contains(": ok ("), "step {i} not ok: {step}");
    }
    assert!(steps[5].contains("Code(0)"), "{}", steps[5]);
    Ok(())
}

#[test]
fn vm_lamina_stop_powers_off() -> Result<()> {
    let mut vm = TestVm::boot("vm_lamina_stop_powers_off", Opts::default())?;
    vm.wait_ready()?;
    let t = Instant::now();
    let st = vm.stop(Duration::from_secs(20))?;
    assert!(st.success(), "QEMU exited with {st}");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(vm.console().contains("shutdown [7/7] power off"));
    Ok(())
}
