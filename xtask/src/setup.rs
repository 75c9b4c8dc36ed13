//! Installs the Debian packages lamina's tests and tools need, only those that are missing.
//!
//! Order matters for QEMU: installing `qemu-system-x86` on Debian 12 replaces a newer
//! preinstalled `qemu-utils`, so `qemu-utils` is installed again afterwards.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// (command that proves the package is there, Debian package).
const PACKAGES: &[(&str, &str)] = &[
    ("thin_check", "thin-provisioning-tools"),
    ("nbdinfo", "libnbd-bin"),
    ("nbdkit", "nbdkit"),
    ("fio", "fio"),
    ("umoci", "umoci"),
    ("skopeo", "skopeo"),
    ("mkfs.xfs", "xfsprogs"),
    ("mkfs.btrfs", "btrfs-progs"),
    ("setcap", "libcap2-bin"),
    ("busybox", "busybox-static"),
    ("dmsetup", "dmsetup"),
    ("runc", "runc"),
    ("crun", "crun"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("qemu-io", "qemu-utils"),
    ("qemu-nbd", "qemu-utils"),
    // x509 certificates for the NBD-over-TLS tests.
    ("certtool", "gnutls-bin"),
    // LUKS2 headers read back through NBD.
    ("cryptsetup", "cryptsetup-bin"),
];

/// Build-time libraries, checked by a file they install: (path, Debian package). libclang is
/// what bindgen loads to generate libublk's kernel bindings (`libublk-rs-sys`'s build script).
const LIBRARIES: &[(&str, &str)] = &[("/usr/lib/llvm-14/lib/libclang.so", "libclang-dev")];

/// Python modules, checked by import: (module, Debian package).
const PYTHON: &[(&str, &str)] = &[("nbd", "python3-libnbd")];

fn have_command(cmd: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(cmd).is_file())
}

fn have_python_module(module: &str) -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

pub fn install_missing() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(cmd, _)| !have_command(cmd))
        .map(|(_, pkg)| *pkg)
        .chain(PYTHON.iter().filter(|(m, _)| !have_python_module(m)).map(|(_, p)| *p))
        .chain(LIBRARIES.iter().filter(|(f, _)| !std::path::Path::new(f).exists()).map(|(_, p)| *p))
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-q"]))?;
    // qemu-system-x86 first, qemu-utils again after it (see the module doc).
    let (utils, rest): (Vec<&str>, Vec<&str>) = missing.iter().partition(|p| **p == "qemu-utils");
    if !rest.is_empty() {
        run(apt_install().args(&rest))?;
    }
    if !utils.is_empty() || rest.contains(&"qemu-system-x86") {
        run(apt_install().arg("qemu-utils"))?;
    }
    let still: Vec<&str> =
        PACKAGES.iter().filter(|(cmd, _)| !have_command(cmd)).map(|(c, _)| *c).collect();
    if !still.is_empty() {
        bail!("setup: still missing after apt-get: {}", still.join(", "));
    }
    Ok(())
}

fn apt_install() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive").args(["install", "-y", "-q"]);
    // Another apt run (a second checkout's setup) holds the dpkg lock for a while: wait for it.
    c.args(["-o", "DPkg::Lock::Timeout=600"]);
    c
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status}); lamina's setup needs root and Debian's package archive");
    }
    Ok(())
}
