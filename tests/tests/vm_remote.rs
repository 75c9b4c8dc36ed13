//! VM tier: a volume created through the agent is filled from the host with `nbdcopy` over the
//! forwarded NBD port and read back the same way. This proves the in-guest daemon's TCP path
//! (handshake, writes, commits, reads); the kernel attach path is covered by vm_boot/vm_persist.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tests::{host_run, Opts, TestVm};

#[test]
fn vm_remote_volume_over_nbd() -> Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let opts = Opts { nbd_port: Some(port), ..Opts::default() };
    let mut vm = TestVm::boot("vm_remote_volume_over_nbd", opts)?;
    vm.wait_ready()?;
    let size: u64 = 64 << 20;
    let mut agent = vm.agent()?;
    let t = Duration::from_secs(30);
    agent.call("volume.create", Some(json!({"name": "remote", "size": size})), t)?;
    let list = agent.call("volume.list", None, t)?;
    assert!(list.as_array().unwrap().iter().any(|v| v["name"] == "remote"), "{list}");

    let dir = tempfile::tempdir()?;
    let src = dir.path().join("src.raw");
    let mut data = vec![0u8; size as usize];
    // Deterministic, non-zero, not repeating at block granularity.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for c in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        c.copy_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&src, &data)?;
    let url = format!("nbd://127.0.0.1:{port}/remote");
    host_run(Command::new("nbdcopy").arg(&src).arg(&url))?;
    let back = dir.path().join("back.raw");
    host_run(Command::new("nbdcopy").arg(&url).arg(&back))?;
    assert!(std::fs::read(&back)? == data, "read back through the daemon differs");

    // The pool accounts for the written blocks.
    let list = agent.call("volume.list", None, t)?;
    let v = list.as_array().unwrap().iter().find(|v| v["name"] == "remote").cloned().unwrap();
    assert!(v["mapped_blocks"].as_u64().unwrap_or(0) * 65536 >= size, "{v}");
    agent.call("volume.remove", Some(json!({"name": "remote"})), t)?;
    let st = vm.stop(Duration::from_secs(20))?;
    assert!(st.success(), "QEMU exited with {st}");
    Ok(())
}
