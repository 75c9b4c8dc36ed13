//! Driving lamina appliance VMs: the QEMU command line ([`cmdline`]), the serial console log
//! with deadline waits ([`console`]), QMP ([`qmp`]), the guest agent ([`agent`]) and the VM
//! lifecycle ([`vm`]). The `lamina` binary is the CLI over these.

pub mod agent;
pub mod cmdline;
pub mod console;
pub mod data;
pub mod keydisk;
pub mod qmp;
pub mod tlsdisk;
pub mod vm;

pub use cmdline::{Accel, Disk, Machine, VmConfig, VmDir};
pub use vm::{Ready, Vm, VmError};
