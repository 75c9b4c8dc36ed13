//! Driving lamina appliance VMs (issue: the bootable appliance).
//!
//! Will hold: the QEMU command line (TCG or KVM when it works), the serial console log with
//! wait-for-string deadlines, a QMP client (power button, hot-plug), the guest-agent client, and
//! the `lamina` host CLI (`run`, `ctl`, `stop`, `console`).
