//! Driving lamina appliance VMs: the QEMU command line ([`cmdline`]), the serial console log
//! with deadline waits ([`console`]), QMP ([`qmp`]), the guest agent ([`agent`]) and the VM
//! lifecycle ([`vm`]). The `lamina` binary is the CLI over these.

pub mod agent;
pub mod cmdline;
pub mod console;
pub mod data;
pub mod keydisk;
pub mod qmp;
#[cfg(test)]
mod test_support;
pub mod tlsdisk;
pub mod vm;

pub use cmdline::{Accel, Disk, Machine, VmConfig, VmDir};
pub use vm::{Ready, Vm, VmError};

/// Connects to a Unix socket that QEMU (or the guest behind a chardev) may not have created
/// yet: retries every 25 ms until `timeout`, then returns the last error.
pub(crate) fn connect_retrying(
    path: &std::path::Path,
    timeout: std::time::Duration,
) -> std::io::Result<std::os::unix::net::UnixStream> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::trace!("connect {}: {e}", path.display());
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
            Err(e) => return Err(e),
        }
    }
}
