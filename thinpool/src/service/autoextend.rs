//! The autoextend thread: dmeventd's monitoring loop inside the service. It checks every
//! interval and whenever kicked (an allocation crossed the threshold, a write found the pool
//! full, a device was added); each growth wakes writers waiting for space. The check itself
//! is [`crate::vg::monitor`]'s, over the group's LVs or a file pool's data file.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Backend, Shared};
use crate::pool::Pool;
use crate::units::{Bytes, DataBlock};
use crate::vg::autoextend::ExtendAction;
use crate::vg::monitor::{Grower, RegionUsage};
use crate::vg::{self, ExtendEvent, Extents, Policy, RegionKind, VgError, VgErrorKind};
use tracing::warn;

pub(crate) fn run(shared: Arc<Shared>, interval: Duration) {
    loop {
        {
            let mut k = lock(&shared.kick);
            let deadline = Instant::now() + interval;
            while !k.kicked && !k.stop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                k = shared
                    .kick_cv
                    .wait_timeout(k, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if k.stop {
                return;
            }
            k.kicked = false;
        }
        shared.autoextend_once();
    }
}

impl Shared {
    /// One check of the pool's regions; extends what is over the threshold.
    pub(crate) fn autoextend_once(&self) -> Vec<ExtendEvent> {
        let Ok(_g) = self.writable() else { return Vec::new() };
        let checked = match &self.backend {
            Backend::Group(g) => g.autoextend_check_all(),
            Backend::File { pool, .. } => match self.file_data_max {
                Some(max) => {
                    let policy = Policy::of(&lock(&self.config));
                    self.file_monitor.check_all(&DataFile { pool, max }, policy)
                }
                None => Ok(Vec::new()),
            },
        };
        drop(_g);
        let events = checked.unwrap_or_else(|e| {
            warn!(error = %crate::units::chain(&e), "autoextend check failed");
            Vec::new()
        });
        if events.iter().any(|e| e.action == ExtendAction::Extended) {
            self.notify_space();
        }
        events
    }
}

/// A file pool's data file as autoextend grows it: in block-sized steps, up to `max`
/// ([`super::ServiceOptions::file_data_max`]). Its metadata file is never grown by policy.
struct DataFile<'a> {
    pool: &'a Pool,
    max: Bytes,
}

impl Grower for DataFile<'_> {
    fn usage(&self, kind: RegionKind) -> Option<RegionUsage> {
        if kind != RegionKind::Data {
            return None;
        }
        let d = self.pool.data_usage();
        let size = self.pool.data_bytes(d.total);
        let block = Bytes::new(self.pool.block_bytes());
        Some(RegionUsage {
            used: self.pool.data_bytes(d.used),
            size,
            extent_size: block,
            free: Extents(self.max.saturating_sub(size).div_floor(block)),
        })
    }

    fn grow(&self, _: RegionKind, n: Extents) -> vg::Result<()> {
        let total = self.pool.data_usage().total + DataBlock(n.0);
        self.pool
            .grow_data(total)
            .and_then(|()| self.pool.commit())
            .map_err(|e| VgError::with_source(VgErrorKind::Pool, "growing the data file", e))
    }

    fn describe(&self) -> String {
        format!("data file (at most {} bytes)", self.max)
    }
}
