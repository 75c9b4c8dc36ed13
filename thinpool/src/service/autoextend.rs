//! The autoextend thread: dmeventd's monitoring loop inside the service. It checks every
//! interval and whenever kicked (an allocation crossed the threshold, a write found the pool
//! full, a device was added); each growth wakes writers waiting for space.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Backend, Shared};
use crate::vg::autoextend::{self as policy, AutoextendDecision, AutoextendInput, ExtendAction};
use crate::vg::format::{Extents, RegionKind};
use crate::vg::ExtendEvent;
use tracing::{info, warn};

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
        let events = match &self.backend {
            Backend::Group(g) => match g.autoextend_check_all() {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "autoextend check failed");
                    Vec::new()
                }
            },
            Backend::File { .. } => self.file_autoextend().into_iter().collect(),
        };
        drop(_g);
        if events.iter().any(|e| e.action == ExtendAction::Extended) {
            self.notify_space();
        }
        events
    }

    /// File pools: the data file grows with LVM's policy, in block-sized steps, up to
    /// `file_data_max`.
    fn file_autoextend(&self) -> Option<ExtendEvent> {
        let max = self.file_data_max?;
        let pool = self.pool();
        let c = lock(&self.config).clone();
        let bs = pool.block_bytes();
        let d = pool.data_usage();
        let size = d.total * bs;
        let input = AutoextendInput {
            used: d.used * bs,
            size,
            extent_size: bs,
            free: Extents(max.saturating_sub(size) / bs),
            threshold: c.autoextend_threshold,
            percent: c.autoextend_percent,
        };
        let event = match policy::data_decision(&input) {
            AutoextendDecision::Disabled | AutoextendDecision::Below => return None,
            AutoextendDecision::Grow(n) => {
                let grown = pool.grow_data(d.total + n.0).and_then(|()| pool.commit());
                if let Err(e) = grown {
                    warn!(error = %e, "growing the data file failed");
                    lock(&self.file_backoff).failed();
                    return None;
                }
                lock(&self.file_backoff).succeeded();
                let e = ExtendEvent::new(RegionKind::Data, ExtendAction::Extended, &input, n);
                info!(region = "data file", blocks = n.0, "{}", e.message);
                e
            }
            AutoextendDecision::NoSpace { wanted } => {
                let mut b = lock(&self.file_backoff);
                if !b.ready() {
                    return None;
                }
                b.failed();
                let e = ExtendEvent::new(RegionKind::Data, ExtendAction::NoSpace, &input, wanted);
                warn!(region = "data file", "{} (data file at its maximum {max})", e.message);
                e
            }
        };
        if let Some(log) = &self.events {
            if let Err(e) = log.append(&event) {
                warn!(error = %e, "could not append to the event log");
            }
        }
        Some(event)
    }
}
