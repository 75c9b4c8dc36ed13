//! `bench boot`: time from QEMU launch to the `LAMINA READY` line, first boot (fresh data disk:
//! the pool is created) against second boot (the pool is opened), median over several pairs.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use super::record::{Better, Record};
use crate::image;

/// Boot pairs measured; the median of each column is reported.
const PAIRS: usize = 5;

pub fn run(root: &Path, jsonl: &Path) -> Result<()> {
    let home = image::lamina_dir(root);
    let img = image::task_image(root, None)?;
    let cfg = |disk: &Path| qemu::VmConfig {
        machine: qemu::Machine::Microvm,
        accel: qemu::vm::probe_accel(&img.vmlinux, Some(&home.join("accel-probe"))),
        memory_mib: 512,
        cpus: 1,
        kernel: img.vmlinux.clone(),
        initrd: img.initramfs.clone(),
        append: vec![],
        disks: vec![qemu::Disk::new(disk, 8 << 30)],
        nbd_port: None,
        guest_ports: vec![],
        tsc_khz: qemu::cmdline::host_tsc_khz(),
        verbose_kernel: false,
        qemu_version: qemu::vm::qemu_version(),
    };
    let dir = home.join("bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let disk = dir.join("disk.raw");
    // A boot measured while another VM runs measures the other VM too.
    let _lock = ::tests::vm_lock()?;
    let mut records = Vec::new();
    for pair in 1..=PAIRS {
        let _ = std::fs::remove_file(&disk);
        for case in ["first boot", "second boot"] {
            let c = cfg(&disk);
            let mut vm = qemu::Vm::launch(&c, &dir.join("vm"))?;
            let ready = vm.wait_ready(Duration::from_secs(180))?;
            vm.stop(Duration::from_secs(20))?;
            let secs = ready.after.as_secs_f64();
            let (init, uptime) = split(&ready.line);
            eprintln!(
                "bench boot: pair {pair}/{PAIRS} {case} ({:?}): READY after {secs:.2}s \
                 (before the kernel's clock: {:.2}s, kernel to init: {:.2}s, init: {init:.2}s)",
                c.accel,
                secs - uptime,
                uptime - init,
            );
            records.push(Record {
                suite: "boot".into(),
                case: case.into(),
                subject: super::report::LAMINA.into(),
                metric: "time to READY".into(),
                value: secs,
                unit: "s".into(),
                better: Better::Lower,
                x: None,
            });
        }
    }
    let text: Vec<String> = records.iter().map(serde_json::to_string).collect::<Result<_, _>>()?;
    std::fs::write(jsonl, text.join("\n") + "\n")
        .with_context(|| format!("writing {}", jsonl.display()))
}

/// `(init, kernel uptime)` seconds from a READY line's "(init 1.65s, kernel uptime 2.91s)".
fn split(line: &str) -> (f64, f64) {
    let num = |key: &str| {
        line.split(key)
            .nth(1)
            .and_then(|r| r.trim_start().split('s').next())
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    (num("(init "), num("kernel uptime "))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_line_splits_into_init_and_uptime() {
        let l = "LAMINA READY: modules 20/20 in 1.01s; pool: x (init 1.65s, kernel uptime 2.91s)";
        assert_eq!(super::split(l), (1.65, 2.91));
        assert!(super::split("LAMINA READY: nothing").0.is_nan());
    }
}
