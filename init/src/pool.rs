//! The slot where the storage pool comes up. Not wired yet: the lead connects `thinpool` here.
//!
//! Bring-up, once wired (appliance.md §0, nbd.md §2.8), in this order:
//! 1. open or create the volume group on the data disks (`/dev/vd*`) and the thin pool,
//!    base volume `store`;
//! 2. start `thinpool serve` as a supervised child via [`crate::reaper::Reaper::spawn`]
//!    (restart on exit, then [`crate::nbd::NbdClient::reconfigure`] with new sockets);
//! 3. `socketpair(AF_UNIX, SOCK_STREAM)` per connection, handshake, then
//!    [`crate::nbd::NbdClient::connect`] → `/dev/nbdN`;
//! 4. `mkfs.xfs -f -q -K` on first boot only (no XFS superblock), mount at /var/lib/lamina with
//!    `prjquota`;
//! 5. report through [`Pool::status`] (the agent's `status.pool`) and [`Pool::summary`] (the
//!    READY line).
//!
//! Shutdown calls the `stop_*`/`unmount_*` steps in the order [`crate::shutdown`] documents.

use serde_json::Value;

use crate::config::Config;
use crate::reaper::Reaper;

/// Result of one shutdown step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Done(String),
    Skipped(&'static str),
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool bring-up: {0}")]
    Failed(String),
}

/// The pool as PID 1 sees it.
#[derive(Debug, Default)]
pub struct Pool {
    wired: bool,
}

const NOT_WIRED: &str = "pool not wired yet";

impl Pool {
    /// Brings the pool up (today: records that it is not wired).
    pub fn bring_up(cfg: &Config, _reaper: &Reaper) -> Result<Pool, PoolError> {
        if cfg.pool.enabled {
            tracing::warn!("pool.enabled is set but this build has no pool bring-up yet");
        }
        Ok(Pool { wired: false })
    }

    /// The agent's `status.pool` (`null` until wired).
    pub fn status(&self) -> Option<Value> {
        None
    }

    /// For the READY line.
    pub fn summary(&self) -> String {
        if self.wired {
            "pool: up".into()
        } else {
            format!("pool: {NOT_WIRED}")
        }
    }

    pub fn unmount_overlays(&mut self) -> Step {
        Step::Skipped(NOT_WIRED)
    }

    /// syncfs + unmount /var/lib/lamina (fallback: remount read-only).
    pub fn unmount_filesystem(&mut self) -> Step {
        Step::Skipped(NOT_WIRED)
    }

    /// NBD_CMD_DISCONNECT of the pool's device.
    pub fn detach_nbd(&mut self) -> Step {
        Step::Skipped(NOT_WIRED)
    }

    /// Stop `thinpool serve` so it flushes and commits its metadata.
    pub fn stop_daemon(&mut self) -> Step {
        Step::Skipped(NOT_WIRED)
    }
}
