//! How the pool's `store` volume reaches the kernel (`attach` in the config,
//! `lamina.attach=` on the kernel command line):
//!
//! - `ublk` (default): the pool daemon serves the volume as `/dev/ublkbN` over io_uring
//!   (`thinpool attach` through its control socket). A daemon that dies leaves the device
//!   quiesced (user recovery); the restarted daemon takes it over by itself, before its
//!   control socket appears, so init only restarts it.
//! - `nbd`: the kernel nbd client over socketpairs handed to the daemon (see
//!   [`crate::pool`]); a restarted daemon gets fresh sockets via NBD_CMD_RECONFIGURE.
//!
//! What is attached is kept here for `status` (attach kind and device name).

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Value};
use thinpool::daemon::control::ControlError;

pub use crate::config::Attach;

/// The store's attach, once it is up.
static ATTACHED: Mutex<Option<(Attach, PathBuf)>> = Mutex::new(None);

impl Attach {
    pub fn name(self) -> &'static str {
        match self {
            Attach::Ublk => "ublk",
            Attach::Nbd => "nbd",
        }
    }
}

/// Records the store's device for [`status`].
pub fn record(kind: Attach, device: &Path) {
    *ATTACHED.lock().unwrap_or_else(|p| p.into_inner()) = Some((kind, device.to_owned()));
}

/// Forgets the store's device (detached at shutdown).
pub fn forget() {
    *ATTACHED.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

/// `{"attach": "ublk", "device": "/dev/ublkb0"}` (nulls before the store is attached).
pub fn status() -> Value {
    match ATTACHED.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some((kind, dev)) => json!({"attach": kind.name(), "device": dev.display().to_string()}),
        None => json!({"attach": null, "device": null}),
    }
}

/// The name of `dev` under /sys/block (`/dev/ublkb0` → `ublkb0`).
pub fn sys_name(dev: &Path) -> String {
    dev.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Asks the running daemon to serve `volume` as a ublk device; returns `/dev/ublkbN`.
pub fn ublk_attach(volume: &str) -> Result<PathBuf, ControlError> {
    crate::pool::control_client().attach(volume)
}

/// Asks the running daemon to delete `volume`'s ublk device.
pub fn ublk_detach(volume: &str) -> Result<PathBuf, ControlError> {
    crate::pool::control_client().detach(volume)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_names_the_attach_and_the_device() {
        assert_eq!(sys_name(Path::new("/dev/ublkb0")), "ublkb0");
        assert_eq!(sys_name(Path::new("/dev/nbd0")), "nbd0");
        record(Attach::Ublk, Path::new("/dev/ublkb0"));
        assert_eq!(status(), json!({"attach": "ublk", "device": "/dev/ublkb0"}));
        forget();
        assert_eq!(status()["attach"], Value::Null);
    }
}
