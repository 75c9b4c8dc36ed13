//! `lamina-init`, PID 1 of the appliance (issue: the bootable appliance).
//!
//! Will hold: early mounts, module loading in dependency order, lo/eth0 bring-up, the pool
//! daemon's supervision, the kernel nbd attach over netlink, XFS format and mount, zombie
//! reaping, orderly shutdown, and the JSON-lines guest agent on virtio-serial.

fn main() {
    eprintln!("lamina-init: not built yet (see the appliance issue)");
    std::process::exit(1);
}
