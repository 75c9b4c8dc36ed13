//! VM tier: the appliance boots to READY, the agent answers, modules and network are up.

use std::time::Duration;

use anyhow::Result;
use tests::{Opts, TestVm};

#[test]
fn vm_boots_to_ready_and_agent_answers() -> Result<()> {
    let mut vm = TestVm::boot("vm_boots_to_ready_and_agent_answers", Opts::debug())?;
    let ready = vm.wait_ready()?;
    // 6.12 builds virtio_pci and virtio_console in; the rest are loaded from the initramfs,
    // every one of them (the networking modules wait for the first networked container).
    let counts = ready.line.split("modules ").nth(1).and_then(|r| r.split_whitespace().next());
    let (loaded, listed) = counts.and_then(|c| c.split_once('/')).expect("a modules N/M count");
    assert_eq!(loaded, listed, "{}", ready.line);
    assert!(listed.parse::<u32>().is_ok_and(|n| n >= 15), "{}", ready.line);
    assert!(ready.line.contains("pool: store on /dev/ublkb0"), "{}", ready.line);
    assert!(ready.after < Duration::from_secs(60), "READY took {:?}", ready.after);

    let status = vm.status()?;
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(status["kernel"], "6.12.118+deb12-cloud-amd64");
    // The pool is up: daemon answers, XFS of the store is mounted.
    assert_eq!(status["pool"]["volumes"][0]["name"], "store", "{status}");
    assert!(status["pool"]["pool"]["data"]["total"].as_u64().unwrap_or(0) > 0, "{status}");
    assert!(status["pool"]["xfs"]["total_bytes"].as_u64().unwrap_or(0) > 9 << 30, "{status}");
    assert_eq!(status["debug"], true);
    assert!(status["uptime_secs"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(status["memory"]["total_kib"].as_u64().unwrap_or(0) > 100_000);
    let mounts: Vec<&str> =
        status["mounts"].as_array().unwrap().iter().filter_map(|m| m["target"].as_str()).collect();
    let xfs =
        status["mounts"].as_array().unwrap().iter().find(|m| m["target"] == "/var/lib/lamina");
    assert!(xfs.is_some_and(|m| m["source"] == "/dev/ublkb0" && m["fstype"] == "xfs"), "{status}");
    // The store is attached over ublk (the default), and the daemon says so too.
    assert_eq!(status["pool"]["store"]["attach"], "ublk", "{status}");
    assert_eq!(status["pool"]["store"]["device"], "/dev/ublkb0", "{status}");
    assert_eq!(status["pool"]["pool"]["ublk"][0]["device"], "/dev/ublkb0", "{status}");
    for m in ["/proc", "/sys", "/dev", "/run", "/tmp"] {
        assert!(mounts.contains(&m), "{m} not mounted: {mounts:?}");
    }

    // exec (debug boot): nbd, ublk and xfs are loaded (virtio_console is built in; the agent
    // answering above shows it works) ...
    let modules = vm.exec(&["cat", "/proc/modules"])?;
    for m in ["nbd", "ublk_drv", "xfs", "overlay", "virtio_blk", "evdev"] {
        assert!(
            modules.lines().any(|l| l.starts_with(&format!("{m} "))),
            "{m} not loaded:\n{modules}"
        );
    }
    // ... eth0 is up with 10.0.2.15 (no `ip`: the kernel's own tables) ...
    let operstate = vm.exec(&["cat", "/sys/class/net/eth0/operstate"])?;
    assert_eq!(operstate.trim(), "up");
    let fib = vm.exec(&["cat", "/proc/net/fib_trie"])?;
    assert!(fib.contains("10.0.2.15"), "{fib}");
    let route = vm.exec(&["cat", "/proc/net/route"])?;
    // Default route (destination 0) via 10.0.2.2 (0202000A, little-endian hex).
    assert!(route.lines().any(|l| l.starts_with("eth0\t00000000\t0202000A")), "{route}");
    // ... and the virtio disk is there.
    assert!(vm.exec(&["cat", "/sys/block/vda/size"])?.trim() == "2097152");
    Ok(())
}

#[test]
fn vm_exec_is_forbidden_without_debug() -> Result<()> {
    let mut vm = TestVm::boot("vm_exec_is_forbidden_without_debug", Opts::default())?;
    vm.wait_ready()?;
    let err = vm.exec(&["true"]).unwrap_err();
    assert!(format!("{err:#}").contains("forbidden"), "{err:#}");
    assert_eq!(vm.status()?["debug"], false);
    // The agent's shutdown command powers the VM off cleanly.
    vm.agent()?.shutdown()?;
    let st = vm.wait_exit(Duration::from_secs(20))?;
    assert!(st.success(), "QEMU exited with {st}");
    assert!(vm.console().contains("shutdown requested by agent shutdown command"));
    Ok(())
}
