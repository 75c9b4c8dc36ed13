//! The QEMU command line for an appliance VM (pure: config in, argv out).

use std::path::{Path, PathBuf};

/// Machine model. microvm boots fastest (no PCI, no firmware) but has no hot-plug and no
/// keyboard; q35 has PCIe hot-plug (through a pre-created root port) and Ctrl-Alt-Del.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Machine {
    Microvm,
    Q35,
    Pc,
}

impl std::str::FromStr for Machine {
    type Err = ArgError;
    fn from_str(s: &str) -> Result<Self, ArgError> {
        match s {
            "microvm" => Ok(Machine::Microvm),
            "q35" => Ok(Machine::Q35),
            "pc" => Ok(Machine::Pc),
            _ => Err(ArgError::Machine(s.to_owned())),
        }
    }
}

impl Machine {
    fn virtio(self, dev: &str) -> String {
        match self {
            Machine::Microvm => format!("virtio-{dev}-device"),
            Machine::Q35 | Machine::Pc => format!("virtio-{dev}-pci"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Tcg,
    Kvm,
}

/// A QEMU release, `major.minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct QemuVersion {
    pub major: u32,
    pub minor: u32,
}

impl QemuVersion {
    /// From `qemu-system-x86_64 --version`: "QEMU emulator version 7.2.22 (Debian …)".
    pub fn parse(text: &str) -> Option<Self> {
        let v = text.lines().next()?.split("version ").nth(1)?.split_whitespace().next()?;
        let mut parts = v.split('.').map(str::parse::<u32>);
        Some(Self { major: parts.next()?.ok()?, minor: parts.next()?.ok()? })
    }

    /// Whether this QEMU's multi-threaded TCG can keep running a stale translation of guest
    /// code. Before 8.1, a vCPU translated a page without holding its lock, so a translation
    /// made while another vCPU was rewriting that page survived the rewrite (fixed by QEMU
    /// commit deba78709ae8, "accel/tcg: Always lock pages before translation", 8.1.0). Linux
    /// rewrites its own text on SMP machines (static keys through `text_poke_bp`, which plants
    /// an int3 first), so a guest with several vCPUs can later execute an int3 that is no
    /// longer in memory and die in the int3 handler. Debian 12 ships QEMU 7.2, and its 6.12
    /// cloud kernel died this way booting with 4 vCPUs.
    pub fn mttcg_runs_stale_code(self) -> bool {
        self < Self { major: 8, minor: 1 }
    }
}

/// A raw disk image attached as virtio-blk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    /// Size for creating a missing file (sparse).
    pub size: u64,
    /// Attach read-only (`readonly=on`): the guest cannot write, and a missing file is an error
    /// rather than created.
    pub read_only: bool,
    /// virtio-blk serial the guest reads from /sys/block/vdX/serial (config disks say what
    /// they are this way, so the pool never takes them).
    pub serial: Option<String>,
}

/// The serial that marks the config disk of the store's options.
pub const CONFIG_DISK_SERIAL: &str = "lamina-config";

impl Disk {
    /// A read-write disk.
    pub fn new(path: impl Into<PathBuf>, size: u64) -> Disk {
        Disk { path: path.into(), size, read_only: false, serial: None }
    }

    /// A read-only disk (an existing file).
    pub fn read_only(path: impl Into<PathBuf>) -> Disk {
        Disk { path: path.into(), size: 0, read_only: true, serial: None }
    }

    /// A small read-only config disk from the archive `ar` writes to `out`: padded to whole
    /// sectors (a raw disk's size is its file's) and attached with the virtio `serial` that
    /// init looks for.
    pub fn config_archive(
        ar: tar::Builder<std::fs::File>,
        out: &Path,
        serial: &str,
    ) -> std::io::Result<Disk> {
        let f = ar.into_inner()?;
        let len = f.metadata()?.len();
        f.set_len(len.div_ceil(512) * 512)?;
        Ok(Disk { serial: Some(serial.to_owned()), ..Disk::read_only(out) })
    }
}

/// Parses `PATH[,size=8G][,readonly=on|off]`.
pub fn parse_disk(spec: &str, default_size: u64) -> Result<Disk, ArgError> {
    let mut parts = spec.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or(ArgError::EmptyPath)?;
    let mut disk = Disk::new(path, default_size);
    for p in parts {
        match p.split_once('=') {
            Some(("size", v)) => disk.size = units::parse_size(v)?,
            Some(("readonly", "on")) => disk.read_only = true,
            Some(("readonly", "off")) => disk.read_only = false,
            _ => return Err(ArgError::DiskOption(p.to_owned())),
        }
    }
    Ok(disk)
}

/// Why a command-line value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("empty disk path")]
    EmptyPath,
    #[error("invalid disk size")]
    Size(#[from] units::SizeError),
    #[error("unknown disk option {0:?} (want size=N[KMGT] or readonly=on|off)")]
    DiskOption(String),
    #[error("unknown machine {0:?} (want microvm, q35 or pc)")]
    Machine(String),
}

/// Everything that shapes one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub machine: Machine,
    pub accel: Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `vmlinux` (PVH) or `vmlinuz`.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Extra kernel arguments (`lamina.debug=1`, …).
    pub append: Vec<String>,
    pub disks: Vec<Disk>,
    /// Host port forwarded (127.0.0.1) to the guest's NBD port 10809; `None`: no forward.
    pub nbd_port: Option<u16>,
    /// Further TCP forwards (host port on 127.0.0.1, guest port): `--vm-port`, e.g. to a
    /// port a container publishes on the guest (`lamina run -p`).
    pub guest_ports: Vec<(u16, u16)>,
    /// Guest TSC frequency hint for microvm under TCG (kHz).
    pub tsc_khz: Option<u64>,
    /// Keep kernel messages (drop `quiet`).
    pub verbose_kernel: bool,
    /// The QEMU that runs it, if known: decides how TCG runs several vCPUs.
    pub qemu_version: Option<QemuVersion>,
}

/// Paths inside a VM's state directory.
#[derive(Debug, Clone)]
pub struct VmDir(pub PathBuf);

impl VmDir {
    pub fn qmp(&self) -> PathBuf {
        self.0.join("qmp.sock")
    }
    pub fn agent(&self) -> PathBuf {
        self.0.join("agent.sock")
    }
    /// The data channel's chardev (bulk transfers: `image load`, `image save`).
    pub fn data(&self) -> PathBuf {
        self.0.join("data.sock")
    }
    pub fn console_sock(&self) -> PathBuf {
        self.0.join("console.sock")
    }
    pub fn console_log(&self) -> PathBuf {
        self.0.join("console.log")
    }
    pub fn pid(&self) -> PathBuf {
        self.0.join("pid")
    }
    pub fn cmdline(&self) -> PathBuf {
        self.0.join("cmdline")
    }
    pub fn qemu_log(&self) -> PathBuf {
        self.0.join("qemu.log")
    }
}

pub const AGENT_PORT: &str = "org.lamina.agent.0";
/// The data channel's virtio-serial port.
pub const DATA_PORT: &str = "org.lamina.data.0";
pub const GUEST_NBD_PORT: u16 = 10809;

fn p(path: &Path) -> String {
    path.display().to_string()
}

impl VmConfig {
    /// Kernel command line.
    pub fn kernel_append(&self) -> String {
        let mut a = vec!["console=ttyS0".to_owned(), "panic=-1".into()];
        if !self.verbose_kernel {
            a.push("quiet".into());
        }
        if self.machine == Machine::Microvm {
            // TCG cannot calibrate the TSC on microvm (no PIT/HPET reference): give it. TCG's
            // TSC follows the host clock, but the clocksource watchdog compares it with
            // jiffies, which lag whenever the vCPU thread is descheduled, marks the TSC
            // unstable and falls back to refined-jiffies (a slow, coarse guest clock):
            // tsc=reliable skips that watchdog.
            if let Some(khz) = self.tsc_khz {
                a.push(format!("tsc_early_khz={khz}"));
                a.push("tsc=reliable".into());
            }
        }
        a.extend(self.append.iter().cloned());
        a.join(" ")
    }

    /// `-accel`'s value. Several vCPUs under TCG take one host thread each, unless this QEMU
    /// can run stale guest code that way ([`QemuVersion::mttcg_runs_stale_code`]): then
    /// they take turns on one thread, slower but correct.
    pub fn accel_arg(&self) -> &'static str {
        match self.accel {
            Accel::Kvm => "kvm",
            Accel::Tcg
                if self.cpus > 1
                    && self.qemu_version.is_some_and(QemuVersion::mttcg_runs_stale_code) =>
            {
                "tcg,thread=single"
            }
            Accel::Tcg => "tcg",
        }
    }

    /// Arguments after the program name.
    pub fn args(&self, dir: &VmDir) -> Vec<String> {
        let m = self.machine;
        let mut v: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| v.extend(xs.iter().map(|s| s.to_string()));
        let machine = match m {
            Machine::Microvm => "microvm,acpi=on,pit=off,pic=off,rtc=on",
            Machine::Q35 => "q35",
            Machine::Pc => "pc",
        };
        push(&["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"]);
        push(&["-machine", machine, "-accel", self.accel_arg()]);
        push(&["-m", &self.memory_mib.to_string(), "-smp", &self.cpus.to_string()]);
        if self.accel == Accel::Kvm {
            push(&["-cpu", "host"]);
        }
        push(&[
            "-kernel",
            &p(&self.kernel),
            "-initrd",
            &p(&self.initrd),
            "-append",
            &self.kernel_append(),
        ]);
        // Serial console: a socket for `lamina console`, plus QEMU's own log file of it.
        let ser = format!(
            "socket,id=ser0,path={},server=on,wait=off,logfile={}",
            p(&dir.console_sock()),
            p(&dir.console_log())
        );
        push(&["-chardev", &ser, "-serial", "chardev:ser0"]);
        push(&["-qmp", &format!("unix:{},server=on,wait=off", p(&dir.qmp()))]);
        push(&["-pidfile", &p(&dir.pid())]);
        // Panic → QEMU exits non-zero instead of a silent reset.
        push(&["-device", "pvpanic", "-action", "panic=exit-failure"]);
        if m == Machine::Q35 {
            // A free root port makes later device_add (hot-plug) possible.
            push(&["-device", "pcie-root-port,id=rp1,chassis=1,slot=1"]);
        }
        for (i, d) in self.disks.iter().enumerate() {
            // A read-only drive has nothing to discard.
            let mode = if d.read_only { "readonly=on" } else { "discard=unmap" };
            let drive =
                format!("if=none,id=d{i},file={},format=raw,{mode},cache=writeback", p(&d.path));
            let mut dev = format!("{},drive=d{i}", m.virtio("blk"));
            if let Some(serial) = &d.serial {
                dev.push_str(&format!(",serial={serial}"));
            }
            push(&["-drive", &drive, "-device", &dev]);
        }
        let mut net = "user,id=net0".to_owned();
        if let Some(port) = self.nbd_port {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{port}-:{GUEST_NBD_PORT}"));
        }
        // QEMU's user network (docs: "-netdev user,hostfwd="): connections to the host's
        // port reach the guest's address on the guest port.
        for (host, guest) in &self.guest_ports {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        push(&["-netdev", &net, "-device", &format!("{},netdev=net0", m.virtio("net"))]);
        let agent = format!("socket,id=agent0,path={},server=on,wait=off", p(&dir.agent()));
        push(&["-chardev", &agent, "-device", &format!("{},id=vser0", m.virtio("serial"))]);
        push(&["-device", &format!("virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}")]);
        let data = format!("socket,id=data0,path={},server=on,wait=off", p(&dir.data()));
        push(&["-chardev", &data]);
        push(&["-device", &format!("virtserialport,bus=vser0.0,chardev=data0,name={DATA_PORT}")]);
        v
    }
}

/// The host's TSC frequency in kHz, from /proc/cpuinfo ("cpu MHz"); the guest only needs a
/// plausible value to get past calibration (QEMU's `tsc-frequency` CPU property; Linux
/// arch/x86/kernel/tsc.c skips calibration when the frequency is known).
pub fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 =
        info.lines().find(|l| l.starts_with("cpu MHz"))?.split(':').nth(1)?.trim().parse().ok()?;
    Some((mhz * 1000.0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(machine: Machine) -> VmConfig {
        VmConfig {
            machine,
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 1,
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initramfs.cpio".into(),
            append: vec!["lamina.debug=1".into()],
            disks: vec![Disk::new("/d/disk.raw", 8 << 30)],
            nbd_port: Some(10810),
            guest_ports: vec![(8080, 80)],
            tsc_khz: Some(2_445_406),
            verbose_kernel: false,
            qemu_version: None,
        }
    }

    #[test]
    fn microvm_uses_mmio_devices_and_tsc_hint() {
        let a = cfg(Machine::Microvm).args(&VmDir("/s".into()));
        let s = a.join(" ");
        assert!(s.contains("-machine microvm"), "{s}");
        assert!(s.contains("virtio-blk-device,drive=d0"));
        assert!(s.contains("virtio-serial-device,id=vser0"));
        assert!(s.contains("hostfwd=tcp:127.0.0.1:10810-:10809"));
        assert!(s.contains("-:10809,hostfwd=tcp:127.0.0.1:8080-:80 "), "{s}");
        assert!(!s.contains("pcie-root-port"));
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert_eq!(
            append,
            "console=ttyS0 panic=-1 quiet tsc_early_khz=2445406 tsc=reliable lamina.debug=1"
        );
    }

    #[test]
    fn qemu_version_is_read_from_its_banner() {
        let banner = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\n\
                      Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n";
        assert_eq!(QemuVersion::parse(banner), Some(QemuVersion { major: 7, minor: 2 }));
        assert_eq!(
            QemuVersion::parse("QEMU emulator version 10.0.0"),
            Some(QemuVersion { major: 10, minor: 0 })
        );
        assert_eq!(QemuVersion::parse("qemu-system-x86_64: not found"), None);
        assert_eq!(QemuVersion::parse("QEMU emulator version x.y"), None);
    }

    #[test]
    fn smp_under_tcg_shares_one_thread_only_where_qemu_needs_it() {
        let accel = |accel, cpus, major, minor| {
            let qemu_version = Some(QemuVersion { major, minor });
            VmConfig { accel, cpus, qemu_version, ..cfg(Machine::Microvm) }.accel_arg()
        };
        assert_eq!(accel(Accel::Tcg, 4, 7, 2), "tcg,thread=single");
        assert_eq!(accel(Accel::Tcg, 2, 8, 0), "tcg,thread=single");
        assert_eq!(accel(Accel::Tcg, 1, 7, 2), "tcg", "one vCPU has no other thread to race");
        assert_eq!(accel(Accel::Tcg, 4, 8, 1), "tcg");
        assert_eq!(accel(Accel::Tcg, 4, 9, 2), "tcg");
        assert_eq!(accel(Accel::Kvm, 4, 7, 2), "kvm");
        let unknown = VmConfig { cpus: 4, qemu_version: None, ..cfg(Machine::Microvm) };
        assert_eq!(unknown.accel_arg(), "tcg");
        let a = VmConfig {
            cpus: 4,
            qemu_version: QemuVersion::parse("QEMU emulator version 7.2.22"),
            ..cfg(Machine::Microvm)
        }
        .args(&VmDir("/s".into()));
        let at = a.iter().position(|x| x == "-accel").unwrap();
        assert_eq!(a[at + 1], "tcg,thread=single");
    }

    #[test]
    fn q35_has_pci_devices_and_a_root_port() {
        let c = VmConfig {
            nbd_port: None,
            guest_ports: vec![],
            verbose_kernel: true,
            ..cfg(Machine::Q35)
        };
        let a = c.args(&VmDir("/s".into()));
        let s = a.join(" ");
        assert!(s.contains("virtio-blk-pci,drive=d0") && s.contains("pcie-root-port,id=rp1"));
        assert!(!s.contains("hostfwd"));
        assert!(
            !c.kernel_append().contains("tsc_early_khz") && !c.kernel_append().contains("quiet")
        );
        assert!(
            s.contains("logfile=/s/console.log")
                && s.contains("unix:/s/qmp.sock,server=on,wait=off")
        );
    }

    #[test]
    fn read_only_disk_gets_readonly_drive() {
        let c = VmConfig {
            disks: vec![Disk::new("/d/pool.raw", 1 << 30), Disk::read_only("/d/image.tar")],
            ..cfg(Machine::Microvm)
        };
        let a = c.args(&VmDir("/s".into()));
        let drives: Vec<&String> = a
            .iter()
            .enumerate()
            .filter(|(i, _)| *i > 0 && a[i - 1] == "-drive")
            .map(|(_, x)| x)
            .collect();
        assert_eq!(
            drives,
            [
                "if=none,id=d0,file=/d/pool.raw,format=raw,discard=unmap,cache=writeback",
                "if=none,id=d1,file=/d/image.tar,format=raw,readonly=on,cache=writeback",
            ]
        );
        assert!(a.join(" ").contains("virtio-blk-device,drive=d1"));
    }

    #[test]
    fn config_disk_carries_its_serial() {
        let mut c = cfg(Machine::Microvm);
        let mut d = Disk::read_only("/d/config.disk");
        d.serial = Some(CONFIG_DISK_SERIAL.into());
        c.disks.push(d);
        let a = c.args(&VmDir("/d".into())).join(" ");
        assert!(a.contains("virtio-blk-device,drive=d1,serial=lamina-config"), "{a}");
        assert!(a.contains("file=/d/config.disk,format=raw,readonly=on"), "{a}");
    }

    #[test]
    fn disk_specs_and_sizes() {
        assert_eq!(parse_disk("a.raw", 5).unwrap(), Disk::new("a.raw", 5));
        assert_eq!(
            parse_disk("a.tar,readonly=on", 5).unwrap(),
            Disk { path: "a.tar".into(), size: 5, read_only: true, serial: None }
        );
        assert!(!parse_disk("a.raw,readonly=on,readonly=off", 5).unwrap().read_only);
        assert_eq!(
            parse_disk("a.raw,readonly=yes", 5),
            Err(ArgError::DiskOption("readonly=yes".into()))
        );
        assert_eq!(parse_disk("a.raw,size=8G", 5).unwrap().size, 8 << 30);
        assert_eq!(parse_disk("a.raw,size=10GiB", 5).unwrap().size, 10 << 30);
        assert_eq!(parse_disk(",size=1G", 1), Err(ArgError::EmptyPath));
        assert_eq!(parse_disk("a,bogus=1", 1), Err(ArgError::DiskOption("bogus=1".into())));
        let e = parse_disk("a,size=xG", 1).unwrap_err();
        assert!(matches!(e, ArgError::Size(_)));
        // The size's own complaint is the source, printed by the chain alone.
        assert_eq!(e.to_string(), "invalid disk size");
        assert!(units::chain(&e).starts_with(r#"invalid disk size: size "xG": unknown unit"#));
        assert!(matches!(parse_disk("a,size=99999999999T", 1), Err(ArgError::Size(_))));
        assert_eq!("q35".parse::<Machine>(), Ok(Machine::Q35));
        assert_eq!("arm".parse::<Machine>(), Err(ArgError::Machine("arm".into())));
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub fn config() -> VmConfig {
        VmConfig {
            machine: Machine::Microvm,
            accel: Accel::Tcg,
            memory_mib: 512,
            cpus: 1,
            kernel: "k".into(),
            initrd: "i".into(),
            append: vec![],
            disks: vec![],
            nbd_port: None,
            guest_ports: vec![],
            tsc_khz: None,
            verbose_kernel: false,
            qemu_version: None,
        }
    }
}
